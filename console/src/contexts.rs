//! Contexts: named admin sockets, so one `mcproxyctl` reaches every node of a fleet as kubectl
//! reaches clusters. A context names a socket: the node's own, or a local end that `ssh -L`
//! forwards to a remote node's (README "Contexts").
//!
//! Owns the contexts file, a small TOML in the user's config directory
//! (`$MCPROXYCTL_CONFIG`, else `$XDG_CONFIG_HOME/mcproxyctl/contexts.toml`, else
//! `~/.config/mcproxyctl/contexts.toml`), and which socket a command talks to
//! ([`Target::resolve`]): `--socket`, else `--context`, else `$MCPROXY_SOCKET`, else
//! `$MCPROXY_CONTEXT`, else the file's current context, else `srv/mc-proxy.sock`.
//!
//! I/O: reads and writes that one file (written aside and renamed, mode 0600). Invariants:
//! names are 1 to 32 of `A-Z a-z 0-9 . _ -` and unique; the current context, when set, is one
//! of them; a file that does not parse is an error naming it, never silently replaced.

use std::path::{Path, PathBuf};

use mc_proxy_shared::text::clip;
use serde::{Deserialize, Serialize};

/// The socket used when nothing names one: the development config's.
pub const DEFAULT_SOCKET: &str = "srv/mc-proxy.sock";

/// Why a context could not be used or changed.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The contexts file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid contexts TOML.
    #[error("{path}: {message}")]
    Parse {
        /// The contexts file.
        path: String,
        /// What is wrong, as the TOML parser says it.
        message: String,
    },
    /// No such context.
    #[error("no context {name} in {path} (contexts: {known})")]
    Unknown {
        /// The name asked for (clipped).
        name: String,
        /// The contexts file.
        path: String,
        /// The names there are.
        known: String,
    },
    /// A name or socket that cannot be used.
    #[error("{0}")]
    Invalid(String),
}

/// One context: a name for an admin socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// What `--context` and the console's status line call it.
    pub name: String,
    /// The admin socket (absolute).
    pub socket: PathBuf,
}

/// The contexts file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contexts {
    /// The context used when a command names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Every context, in the order they were added.
    #[serde(default)]
    pub contexts: Vec<Context>,
}

/// Where the contexts file is (see the module docs).
pub fn file_path() -> PathBuf {
    if let Some(p) = std::env::var_os("MCPROXYCTL_CONFIG") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from(".config"));
    base.join("mcproxyctl").join("contexts.toml")
}

/// Checks a context name.
pub fn check_name(name: &str) -> Result<(), ContextError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ContextError::Invalid(format!(
            "context name {} is not 1 to 32 of A-Z a-z 0-9 . _ -",
            clip(name)
        )))
    }
}

impl Contexts {
    /// The file at `path`; a missing file is no contexts.
    pub fn load(path: &Path) -> Result<Contexts, ContextError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Contexts::default()),
            Err(source) => {
                return Err(ContextError::Io {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        let parsed: Contexts = toml::from_str(&text).map_err(|e| ContextError::Parse {
            path: path.display().to_string(),
            message: e.message().to_owned(),
        })?;
        for c in &parsed.contexts {
            check_name(&c.name).map_err(|e| ContextError::Parse {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        }
        Ok(parsed)
    }

    /// Writes the file at `path` (its directory made if missing), aside then renamed, 0600.
    pub fn save(&self, path: &Path) -> Result<(), ContextError> {
        let io = |source| ContextError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let text = toml::to_string(self).map_err(|e| ContextError::Invalid(e.to_string()))?;
        let aside = path.with_extension("toml.new");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&aside)
                .map_err(io)?;
            f.write_all(text.as_bytes()).map_err(io)?;
        }
        std::fs::rename(&aside, path).map_err(io)
    }

    /// The context called `name`.
    pub fn get(&self, name: &str, path: &Path) -> Result<&Context, ContextError> {
        self.contexts
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| ContextError::Unknown {
                name: clip(name),
                path: path.display().to_string(),
                known: match self.contexts.len() {
                    0 => "none: mcproxyctl config add-context NAME --socket PATH".to_owned(),
                    _ => self
                        .contexts
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                },
            })
    }

    /// Adds `name` for `socket` (made absolute), or points an existing one at it.
    pub fn add(&mut self, name: &str, socket: &Path) -> Result<(), ContextError> {
        check_name(name)?;
        let socket = std::path::absolute(socket)
            .map_err(|e| ContextError::Invalid(format!("socket {}: {e}", socket.display())))?;
        match self.contexts.iter_mut().find(|c| c.name == name) {
            Some(c) => c.socket = socket,
            None => self.contexts.push(Context {
                name: name.to_owned(),
                socket,
            }),
        }
        Ok(())
    }

    /// Makes `name` the current context.
    pub fn use_context(&mut self, name: &str, path: &Path) -> Result<(), ContextError> {
        self.get(name, path)?;
        self.current = Some(name.to_owned());
        Ok(())
    }

    /// Removes `name` (and makes no context current if it was).
    pub fn delete(&mut self, name: &str, path: &Path) -> Result<(), ContextError> {
        self.get(name, path)?;
        self.contexts.retain(|c| c.name != name);
        if self.current.as_deref() == Some(name) {
            self.current = None;
        }
        Ok(())
    }
}

/// The socket a command talks to, and the context it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The admin socket.
    pub socket: PathBuf,
    /// The context that named it, if one did.
    pub context: Option<String>,
}

impl Target {
    /// The socket for `--socket` / `--context` as given (see the module docs for the order;
    /// the environment comes after the flags). Both flags at once is a usage error.
    pub fn resolve(
        socket: Option<PathBuf>,
        context: Option<String>,
        path: &Path,
    ) -> Result<Target, ContextError> {
        if socket.is_some() && context.is_some() {
            return Err(ContextError::Invalid(
                "--socket and --context name the daemon twice: give one".into(),
            ));
        }
        if let Some(socket) = socket {
            return Ok(Target {
                socket,
                context: None,
            });
        }
        let env = |key| std::env::var_os(key).filter(|v| !v.is_empty());
        let named = match context {
            Some(name) => Some(name),
            None => {
                if let Some(socket) = env("MCPROXY_SOCKET") {
                    return Ok(Target {
                        socket: PathBuf::from(socket),
                        context: None,
                    });
                }
                env("MCPROXY_CONTEXT").map(|v| v.to_string_lossy().into_owned())
            }
        };
        let contexts = Contexts::load(path)?;
        let name = match named.or_else(|| contexts.current.clone()) {
            Some(name) => name,
            None => {
                return Ok(Target {
                    socket: PathBuf::from(DEFAULT_SOCKET),
                    context: None,
                });
            }
        };
        let context = contexts.get(&name, path)?;
        Ok(Target {
            socket: context.socket.clone(),
            context: Some(context.name.clone()),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn contexts_are_added_used_and_deleted_and_the_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/contexts.toml");
        let mut c = Contexts::load(&path).unwrap();
        assert_eq!(c, Contexts::default(), "a missing file is no contexts");
        c.add("edge-1", Path::new("/run/a.sock")).unwrap();
        c.add("edge-2", Path::new("/run/b.sock")).unwrap();
        c.use_context("edge-2", &path).unwrap();
        c.save(&path).unwrap();
        let back = Contexts::load(&path).unwrap();
        assert_eq!(back, c);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let target = Target::resolve(None, Some("edge-1".into()), &path).unwrap();
        assert_eq!(target.socket, PathBuf::from("/run/a.sock"));
        assert_eq!(target.context.as_deref(), Some("edge-1"));
        let mut c = back;
        c.delete("edge-2", &path).unwrap();
        assert_eq!(c.current, None);
        let err = c.get("edge-2", &path).unwrap_err().to_string();
        assert!(
            err.contains("no context \"edge-2\"") && err.contains("edge-1"),
            "{err}"
        );
    }

    #[test]
    fn bad_names_files_and_both_flags_are_refused() {
        for bad in ["", "a b", "x/y", &"n".repeat(33)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("contexts.toml");
        std::fs::write(&path, "current = \"x\"\nsurprise = 1\n").unwrap();
        let err = Contexts::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("contexts.toml") && err.contains("surprise"),
            "{err}"
        );
        let err = Target::resolve(Some("/a".into()), Some("x".into()), &path).unwrap_err();
        assert!(err.to_string().contains("give one"), "{err}");
    }
}
