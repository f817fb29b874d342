//! The error type of the OCI tools: a one-line message with context.
//!
//! Hard parts: messages must stay on one line when displayed (the CLI prints
//! `layerfs: <message>`), so any newline coming from a lower layer (clap, io)
//! is folded into a space.

use std::fmt;
use std::io;

/// One-line error with context, e.g.
/// `unpack layer.tar: entry "../evil": path escapes the layer ('..' component)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    msg: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(msg: impl Into<String>) -> Self {
        let msg: String = msg.into();
        let msg = if msg.contains('\n') { msg.split_whitespace().collect::<Vec<_>>().join(" ") } else { msg };
        Error { msg }
    }

    /// Prefixes the message with `ctx: `.
    pub fn context(self, ctx: impl fmt::Display) -> Self {
        Error::new(format!("{ctx}: {}", self.msg))
    }

    pub fn message(&self) -> &str {
        &self.msg
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::new(e.to_string())
    }
}

/// `.ctx(|| format!(...))` on any result whose error converts into [`Error`].
pub trait Context<T> {
    fn ctx<C: fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn ctx<C: fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| e.into().context(f()))
    }
}

/// Shows raw path bytes readably and on one line (`"a/b\n"` -> `"a/b\n"` escaped).
pub fn show(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    format!("{:?}", s.as_ref())
}
