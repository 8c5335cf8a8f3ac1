//! Paths typed by the operator (flags of `mcproxyctl routes add`, fields of the console's
//! form), made into what the daemon takes.
//!
//! I/O: reads the working directory. The daemon resolves paths in its own working directory
//! and refuses relative ones; a path typed here means "relative to where I am", so it is made
//! absolute here, the same way for the CLI and the console.

use mc_proxy_shared::text::clip;

/// A path that cannot be made absolute.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// The working directory could not be read.
    #[error("cannot resolve the path {path}: {source}")]
    Resolve {
        /// The path as typed (clipped, quoted).
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The absolute path is not UTF-8 (the admin API carries strings).
    #[error("the path {0} is not valid UTF-8")]
    NotUtf8(String),
}

/// `path` made absolute against the working directory; empty stays empty (no file).
pub fn absolute_path(path: &str) -> Result<String, PathError> {
    if path.is_empty() {
        return Ok(String::new());
    }
    let abs = std::path::absolute(path).map_err(|source| PathError::Resolve {
        path: clip(path),
        source,
    })?;
    abs.into_os_string()
        .into_string()
        .map_err(|_| PathError::NotUtf8(clip(path)))
}
