//! `mcproxyctl config`: the contexts file (`crate::contexts`) listed and edited. No daemon is
//! asked anything.
//!
//! I/O: the contexts file and stdout.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{CtlError, emit, print_out, table};
use crate::cli::ConfigCommand;
use crate::contexts::{ContextError, Contexts};

impl From<ContextError> for CtlError {
    fn from(e: ContextError) -> Self {
        CtlError::Usage(e.to_string())
    }
}

/// A context as `get-contexts --json` prints it.
#[derive(Debug, Serialize)]
struct Row<'a> {
    name: &'a str,
    socket: &'a Path,
    current: bool,
}

/// Runs one `config` subcommand on the file at `path`; `socket` is the global `--socket`.
pub fn run(path: &Path, socket: Option<PathBuf>, command: ConfigCommand) -> Result<(), CtlError> {
    let mut contexts = Contexts::load(path)?;
    match command {
        ConfigCommand::AddContext { name, use_it } => {
            let socket = socket.ok_or_else(|| {
                CtlError::Usage("add-context needs the socket: --socket PATH".into())
            })?;
            contexts.add(&name, &socket)?;
            if use_it {
                contexts.use_context(&name, path)?;
            }
            contexts.save(path)?;
            let socket = &contexts.get(&name, path)?.socket;
            emit(&format!(
                "context {name} is {}{}\n",
                socket.display(),
                if use_it { " (current)" } else { "" }
            ))
        }
        ConfigCommand::UseContext { name } => {
            contexts.use_context(&name, path)?;
            contexts.save(path)?;
            emit(&format!("current context: {name}\n"))
        }
        ConfigCommand::DeleteContext { name } => {
            contexts.delete(&name, path)?;
            contexts.save(path)?;
            emit(&format!("deleted context {name}\n"))
        }
        ConfigCommand::CurrentContext => match &contexts.current {
            Some(name) => emit(&format!("{name}\n")),
            None => Err(CtlError::Usage(format!(
                "no current context in {} (mcproxyctl config use-context NAME)",
                path.display()
            ))),
        },
        ConfigCommand::GetContexts { table: how } => {
            let rows: Vec<Row<'_>> = contexts
                .contexts
                .iter()
                .map(|c| Row {
                    name: &c.name,
                    socket: &c.socket,
                    current: contexts.current.as_deref() == Some(c.name.as_str()),
                })
                .collect();
            print_out(&how, &rows[..], |rows, headers| {
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        vec![
                            if r.current { "*" } else { "" }.to_owned(),
                            r.name.to_owned(),
                            r.socket.display().to_string(),
                        ]
                    })
                    .collect();
                table(
                    headers.then_some(&["CURRENT", "NAME", "SOCKET"][..]),
                    &cells,
                )
            })
        }
    }
}
