//! OCI/Docker layer tar tooling: `layerfs unpack`, `diff`, `digest`, `store`.
//!
//! Module map:
//! - [`paths`]: pure rules: entry path sanitising, whiteout classification.
//! - [`digest`]: DiffID/ChainID math, decompression by magic bytes, hashing
//!   adapters.
//! - [`unpack`]: applying layer tars to a new directory (safely: fd-relative,
//!   no symlink following, all-or-nothing via a temporary sibling).
//! - [`export`]: an overlay upper directory to a deterministic OCI layer tar.
//! - [`store`]: a content-addressed layer store laid out like Docker's
//!   layerdb.
//! - [`cli`]: the subcommand front end (`pub fn main(args) -> i32`).
//! - [`stop`]: termination signals, taken so that the writers unwind and clean up.
//! - `fsutil` (private): the only `unsafe` code (raw `*at` syscalls).
//!
//! Hard parts, in one place: a layer is untrusted input (see `unpack`); the
//! OCI whiteout rules (a whiteout hides only lower layers, an opaque marker
//! applies before the layer's own entries in its directory); DiffIDs hash the
//! exact uncompressed bytes; `diff` output must be byte-for-byte reproducible.

pub mod cli;
pub mod digest;
pub mod error;
pub mod export;
mod fsutil;
pub mod paths;
pub mod paxtap;
pub mod progress;
pub mod stop;
pub mod store;
pub mod unpack;

pub use digest::{chain_id, chain_ids};
pub use error::{Error, Result};
pub use export::{ExportReport, export, export_to_file};
pub use store::lowerdirs_for;
pub use unpack::{UnpackOptions, UnpackReport, WhiteoutMode, unpack};

/// All xattrs of `path` (sorted), without following a final symlink. A helper for tests and
/// tools.
pub fn xattrs_nofollow(path: &std::path::Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    with_path_fd(path, |x| {
        let mut out = Vec::new();
        for n in fsutil::list_xattrs(x)? {
            if let Some(v) = fsutil::get_xattr(x, &n)? {
                out.push((n, v));
            }
        }
        out.sort();
        Ok(out)
    })
    .map(|o| o.unwrap_or_default())
}

/// Sets an xattr on `path` without following a final symlink. A helper for tests and tools.
pub fn set_xattr_nofollow(path: &std::path::Path, name: &str, value: &[u8]) -> Result<()> {
    with_path_fd(path, |x| fsutil::set_xattr(x, name.as_bytes(), value))?
        .ok_or_else(|| Error::new(format!("{}: xattrs on symlinks are not supported", path.display())))
}

fn with_path_fd<T>(
    path: &std::path::Path,
    f: impl FnOnce(fsutil::XattrFd<'_>) -> std::io::Result<T>,
) -> Result<Option<T>> {
    use std::os::fd::AsFd;
    use std::os::unix::ffi::OsStrExt;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let dfd = fsutil::open_dir_path(parent).map_err(|e| Error::from(e).context(parent.display()))?;
    let name = path.file_name().map(|n| n.as_bytes()).unwrap_or(b".");
    let fd = fsutil::open_path_at(dfd.as_fd(), name).map_err(|e| Error::from(e).context(path.display()))?;
    let st = fsutil::fstat(fd.as_fd())?;
    let x = if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        fsutil::XattrFd::Link(dfd.as_fd(), name)
    } else {
        fsutil::XattrFd::Proc(fd.as_fd())
    };
    Ok(Some(f(x).map_err(|e| Error::from(e).context(path.display()))?))
}
