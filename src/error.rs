//! One error type for the union filesystem: an errno, plus what was being done.

use std::fmt;
use std::io;

/// An error that maps to one errno for the kernel.
#[derive(Debug)]
pub struct Error {
    pub errno: i32,
    pub context: &'static str,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(errno: i32, context: &'static str) -> Self {
        Error { errno, context }
    }
    pub fn errno(errno: i32) -> Self {
        Error { errno, context: "" }
    }
    /// Attaches context to an io::Error (keeps its errno; EIO if it has none).
    pub fn io(e: io::Error, context: &'static str) -> Self {
        Error { errno: e.raw_os_error().unwrap_or(libc::EIO), context }
    }
    /// Whether this errno is an expected outcome (not worth logging above debug).
    pub fn is_expected(&self) -> bool {
        matches!(
            self.errno,
            libc::ENOENT
                | libc::EEXIST
                | libc::ENOTEMPTY
                | libc::ENODATA
                | libc::ENOTDIR
                | libc::EISDIR
                | libc::EXDEV
                | libc::EINVAL
                | libc::EROFS
                | libc::ERANGE
                | libc::ENOTSUP
                | libc::EPERM
                | libc::EACCES
                | libc::ENAMETOOLONG
                | libc::ENOSPC
                | libc::ENOSYS
                | libc::ELOOP
        )
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::io(e, "")
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let msg = io::Error::from_raw_os_error(self.errno);
        if self.context.is_empty() { write!(f, "{msg}") } else { write!(f, "{}: {msg}", self.context) }
    }
}

impl std::error::Error for Error {}

/// Shorthand: `Err(Error::errno(libc::X))`.
#[macro_export]
macro_rules! bail {
    ($e:expr) => {
        return Err($crate::error::Error::errno($e))
    };
}
