//! The scripted subcommands: one admin API call each (a few for `routes update` and
//! `connections close`), printed as a table or JSON.
//!
//! This module owns the dispatch ([`run`]), the errors ([`CtlError`], whose exit code tells a
//! script what kind of failure it was) and the output: everything printed goes through
//! [`emit`], so a reader that stops early (`| head`) ends the command quietly instead of
//! panicking on a closed pipe; [`print_out`] picks JSON or an aligned [`table`]. One module
//! per concern does the rest: `routes`, `listeners`, `firewall`, `connections`, `status`
//! (status and backends), `reload`, `events`. Values are written through `crate::format`, as
//! the console writes them. Table rows come in a stable order (routes by listener then
//! hostname, rules by kind then value), so shell loops can rely on it.
//!
//! I/O: the admin socket, stdout and stderr.

mod apply;
mod certs;
mod cluster;
pub mod config;
mod connections;
mod events;
mod firewall;
mod listeners;
mod reload;
mod routes;
mod status;
mod talkers;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use mc_proxy_shared::client::{AdminClient, ClientError};
use serde::Serialize;

use crate::cli::{Command, ConnectionsCommand, TableArgs};

pub use events::{EVENT_TYPES, event_type};
pub use routes::check_from;

/// A failed subcommand.
#[derive(Debug)]
pub enum CtlError {
    /// No daemon on the socket, or it went away during the call.
    Unreachable(ClientError),
    /// The socket exists but this user may not use it.
    Denied(ClientError),
    /// The daemon said no, or answered oddly.
    Daemon(ClientError),
    /// A cluster node: another change to the same object won; nothing was applied.
    Conflict(ClientError),
    /// A cluster node: the fleet's store is away; nothing was applied.
    StoreAway(ClientError),
    /// A reload left some routes failed (they were printed): how many still serve the
    /// certificate they had, and how many are not served.
    ReloadFailed {
        /// Failed, still serving the certificate loaded before.
        kept: usize,
        /// Failed, and not served (left out at start or at an earlier reload).
        not_served: usize,
        /// The config file did not load, so no `[proxy]` setting was re-read.
        settings: bool,
    },
    /// The route named is not there (or is on several listeners and none was given).
    NoRoute(String),
    /// The daemon refused part of a request made of several calls; its reasons, joined.
    Refused(String),
    /// The arguments make no sense.
    Usage(String),
    /// Whoever reads stdout went away (`| head`): not an error, the command just ends.
    ClosedPipe,
    /// Stdout could not be written for another reason.
    Output(std::io::Error),
}

impl std::fmt::Display for CtlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CtlError::Unreachable(e)
            | CtlError::Denied(e)
            | CtlError::Daemon(e)
            | CtlError::Conflict(e)
            | CtlError::StoreAway(e) => {
                write!(f, "{e}")
            }
            CtlError::ReloadFailed {
                kept,
                not_served,
                settings,
            } => {
                let n = kept + not_served;
                match (kept, not_served) {
                    (0, 0) if *settings => {
                        write!(f, "the config file did not load: settings unchanged")
                    }
                    (_, 0) => write!(
                        f,
                        "{n} route(s) failed to reload and keep the certificate they had"
                    ),
                    (0, _) => write!(f, "{n} route(s) failed to reload and are not served"),
                    _ => write!(
                        f,
                        "{n} route(s) failed to reload: {kept} keep the certificate they had, \
                         {not_served} not served"
                    ),
                }
            }
            CtlError::Usage(m) | CtlError::NoRoute(m) | CtlError::Refused(m) => f.write_str(m),
            CtlError::ClosedPipe => f.write_str("stdout closed"),
            CtlError::Output(e) => write!(f, "cannot write the output: {e}"),
        }
    }
}

impl CtlError {
    /// 0: a closed pipe; 1: the daemon refused (or a reload failed somewhere); 2: usage;
    /// 3: no daemon, or it went away during the call; 4: the socket is not accessible to this
    /// user; 5 (cluster): changed concurrently on another node, nothing applied (list and
    /// retry); 6 (cluster): the fleet's store is away, nothing applied.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::ClosedPipe => 0,
            CtlError::Daemon(_)
            | CtlError::ReloadFailed { .. }
            | CtlError::NoRoute(_)
            | CtlError::Refused(_)
            | CtlError::Output(_) => 1,
            CtlError::Usage(_) => 2,
            CtlError::Unreachable(_) => 3,
            CtlError::Denied(_) => 4,
            CtlError::Conflict(_) => 5,
            CtlError::StoreAway(_) => 6,
        }
    }
}

impl From<crate::paths::PathError> for CtlError {
    fn from(e: crate::paths::PathError) -> Self {
        CtlError::Usage(e.to_string())
    }
}

impl From<ClientError> for CtlError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Connect { .. } | ClientError::Gone { .. } => CtlError::Unreachable(e),
            ClientError::PermissionDenied { .. } => CtlError::Denied(e),
            _ if e.is_conflict() => CtlError::Conflict(e),
            _ if e.is_store_away() => CtlError::StoreAway(e),
            other => CtlError::Daemon(other),
        }
    }
}

/// Writes `text` to stdout and flushes it, so each event line reaches a pipe as it happens.
pub fn emit(text: &str) -> Result<(), CtlError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => CtlError::ClosedPipe,
            _ => CtlError::Output(e),
        })
}

/// Writes a line to stderr; a closed stderr is ignored (there is nobody left to tell).
pub fn warn(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// Runs one subcommand against the daemon at `socket`: connects, then hands over to the
/// module that owns the subcommand.
pub async fn run(socket: &Path, command: Command) -> Result<(), CtlError> {
    let mut client = AdminClient::connect(socket).await?;
    match command {
        Command::Status { table } => status::status(&mut client, &table).await,
        Command::Backends { table } => status::backends(&mut client, &table).await,
        Command::Routes(command) => routes::run(&mut client, command).await,
        Command::Listeners(command) => listeners::run(&mut client, command).await,
        Command::Firewall(command) => firewall::run(&mut client, command).await,
        Command::Certs(command) => certs::run(&mut client, command).await,
        Command::Talkers { limit, table } => talkers::run(&mut client, limit, &table).await,
        Command::Connections {
            action: Some(ConnectionsCommand::Close { ids }),
            ..
        } => connections::close(&mut client, ids).await,
        Command::Connections {
            action: None,
            limit,
            table,
        } => connections::list(&mut client, limit, &table).await,
        Command::Cluster(crate::cli::ClusterCommand::Status { table }) => {
            cluster::status(&mut client, &table).await
        }
        Command::Export => export(&mut client, socket).await,
        Command::Reload { table } => reload::run(&mut client, &table).await,
        Command::Events { json, stats, types } => {
            events::follow(&mut client, json, stats, &types).await
        }
        Command::Diff(args) => apply::diff(&mut client, &args).await,
        Command::Apply { args, dry_run } => apply::apply(&mut client, &args, dry_run).await,
        Command::Console { .. } | Command::Completions { .. } | Command::Config(_) => Err(
            CtlError::Usage("this subcommand runs from main, not against the daemon".into()),
        ),
    }
}

/// `export`: the daemon's state as config TOML (`crate::export` writes it).
async fn export(client: &mut AdminClient, socket: &Path) -> Result<(), CtlError> {
    let status = client.status().await?;
    let routes = client.list_routes(None).await?;
    let mut rules = client.firewall_rules().await?;
    rules.sort_by_cached_key(firewall::rule_order);
    emit(&crate::export::to_toml(
        &status.listeners,
        &routes,
        &rules,
        &socket.display().to_string(),
    ))
}

pub(super) fn print_warnings(warnings: &[String]) -> Result<(), CtlError> {
    for w in warnings {
        warn(&format!("warning: {w}"));
    }
    Ok(())
}

pub(super) fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<(), CtlError> {
    let text = serde_json::to_string(value)
        .map_err(|e| CtlError::Output(std::io::Error::other(format!("JSON: {e}"))))?;
    emit(&format!("{text}\n"))
}

/// JSON, or the table `format` makes (with its header lines unless `--no-headers`).
pub(super) fn print_out<T: Serialize + ?Sized>(
    how: &TableArgs,
    value: &T,
    format: impl FnOnce(&T, bool) -> String,
) -> Result<(), CtlError> {
    if how.json {
        return print_json(value);
    }
    emit(&format(value, !how.no_headers))
}

/// Aligned columns; the last column is not padded. `header: None` prints the rows alone
/// (`--no-headers`), aligned the same way.
pub(super) fn table(header: Option<&[&str]>, rows: &[Vec<String>]) -> String {
    let columns = header.map_or_else(|| rows.first().map_or(0, Vec::len), <[&str]>::len);
    let mut widths: Vec<usize> = match header {
        Some(header) => header.iter().map(|h| h.chars().count()).collect(),
        None => vec![0; columns],
    };
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let cells: Vec<&str> = cells.collect();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push('\n');
    };
    if let Some(header) = header {
        line(&mut header.iter().copied());
    }
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::human_bytes;
    use mc_proxy_shared::RouteBackend;

    #[test]
    fn tables_align_columns() {
        let rows = [vec!["xxxx".into(), "y".into(), "z".into()]];
        let t = table(Some(&["A", "LONG HEADER", "C"]), &rows);
        assert_eq!(t, "A     LONG HEADER  C\nxxxx  y            z\n");
        assert_eq!(table(None, &rows), "xxxx  y  z\n");
    }

    #[test]
    fn bytes_are_human_sized() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1536), "1.5K");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0M");
    }

    #[test]
    fn backend_flags_take_both_weight_spellings() {
        use crate::cli::parse_backend;
        let three = RouteBackend::new("10.0.0.1:443").with_weight(3);
        assert_eq!(parse_backend("10.0.0.1:443,weight=3"), Ok(three.clone()));
        assert_eq!(parse_backend("10.0.0.1:443 weight=3"), Ok(three));
        assert_eq!(
            parse_backend("[::1]:443"),
            Ok(RouteBackend::new("[::1]:443"))
        );
        assert!(parse_backend("a:1,weight=x").is_err());
        assert!(parse_backend("a:1 w=2").is_err());
        // 0 is passed on as 0, for the daemon to refuse as the TOML's validation does.
        assert_eq!(
            parse_backend("a:1,weight=0"),
            Ok(RouteBackend::new("a:1").with_weight(0))
        );
        assert_eq!(
            parse_backend("a:1,wieght=3").unwrap_err(),
            "invalid backend \"a:1,wieght=3\": unknown option \"wieght\": expected weight=N"
        );
        for stray in ["a:1, weight=3", "a:1,", ", weight=3"] {
            let err = parse_backend(stray).unwrap_err();
            assert!(err.contains(": stray \",\": expected"), "{stray:?}: {err}");
            assert!(!err.contains("port must"), "{err}");
        }
    }
}
