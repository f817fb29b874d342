//! Layers and locations of real objects inside them.
//!
//! A [`Loc`] names one real object in one layer: either a directory we hold an `O_PATH` fd for,
//! or `(parent directory fd, one name)`. Every operation on a `Loc` is fd-relative with
//! `O_NOFOLLOW`/`AT_SYMLINK_NOFOLLOW` semantics, so a symlink stored in a layer is never followed
//! (the kernel resolves symlinks itself, through `readlink` and new lookups). This is what keeps
//! a hostile layer (`etc -> /`, `x -> ../../..`) from making layerfs touch anything outside it.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::fs::dirfd::DirFd;
use crate::sys::{self, SetTime, Stat};
use crate::whiteout::{self, OpaqueValue};

/// A layer: the upper (index 0 when present) or one lower.
#[derive(Debug)]
pub struct Layer {
    pub root: Arc<OwnedFd>,
    pub dev: u64,
    /// Added to real inode numbers to keep inode numbers of different filesystems apart.
    pub ino_base: u64,
    pub is_upper: bool,
    /// True for the bottom-most layer: its directories' opaqueness never matters.
    pub is_bottom: bool,
    /// Its filesystem's UUID, as `overlay.origin` records it ([`crate::origin`]); None where
    /// the kernel does not tell (before Linux 6.8, or a filesystem without one).
    pub uuid: Option<[u8; 16]>,
    /// A descriptor of its root that `open_by_handle_at` takes, where the origins that name
    /// objects of its filesystem are read (see [`origin_decoder`]); shared by the layers of
    /// one filesystem.
    pub decoder: Option<Arc<OwnedFd>>,
}

/// Whether origins naming objects of a lower layer's filesystem are read, as kernel overlayfs
/// reads them (`ovl_lower_uuid_ok`, with `index=off`): always on the upper's filesystem; on
/// another only where its UUID is known, not null (a re-made filesystem may reuse the handles
/// a null one recorded) and no other lower filesystem has it.
pub fn origin_decoder(
    dev: u64,
    uuid: Option<[u8; 16]>,
    upper_dev: Option<u64>,
    others: &[(u64, Option<[u8; 16]>)],
) -> bool {
    let Some(u) = uuid else { return false };
    upper_dev == Some(dev) || (u != [0; 16] && !others.iter().any(|&(d, o)| d != dev && o == Some(u)))
}

/// Where a real object lives.
#[derive(Clone, Debug)]
pub enum Loc {
    /// A directory, by its own `O_PATH` fd (closed and opened again on use when many are open,
    /// see [`DirFd`]).
    Dir(DirFd),
    /// A non-directory, by its parent directory's fd and its name.
    At(DirFd, Arc<CStr>),
    /// A non-directory whose name went away while the kernel still holds it (open files, other
    /// hard links), by an `O_PATH` fd of its own.
    Pinned(Arc<OwnedFd>),
}

/// A [`Loc`] with its descriptors open, for the length of one operation.
#[derive(Clone, Debug)]
pub enum Live {
    Dir(Arc<OwnedFd>),
    At(Arc<OwnedFd>, Arc<CStr>),
    Pinned(Arc<OwnedFd>),
}

impl Loc {
    /// A directory that stays open (layer roots, workdir entries).
    pub fn fixed_dir(fd: Arc<OwnedFd>) -> Loc {
        Loc::Dir(DirFd::fixed(fd))
    }

    /// The location with its descriptors open.
    pub fn live(&self) -> io::Result<Live> {
        Ok(match self {
            Loc::Dir(d) => Live::Dir(d.get()?),
            Loc::At(d, name) => Live::At(d.get()?, name.clone()),
            Loc::Pinned(fd) => Live::Pinned(fd.clone()),
        })
    }

    pub fn stat(&self) -> io::Result<Stat> {
        self.live()?.stat()
    }

    /// Opens the object for I/O. Never follows a symlink.
    pub fn open(&self, flags: i32) -> io::Result<OwnedFd> {
        self.live()?.open(flags)
    }

    pub fn readlink(&self) -> io::Result<Vec<u8>> {
        self.live()?.readlink()
    }

    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        self.live()?.chmod(mode)
    }

    pub fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        self.live()?.chown(uid, gid)
    }

    pub fn utimes(&self, atime: SetTime, mtime: SetTime) -> io::Result<()> {
        self.live()?.utimes(atime, mtime)
    }

    pub fn getxattr(&self, name: &CStr) -> io::Result<Vec<u8>> {
        self.live()?.xattr_at().get(name)
    }

    pub fn listxattr(&self) -> io::Result<Vec<u8>> {
        self.live()?.xattr_at().list()
    }

    pub fn setxattr(&self, name: &CStr, value: &[u8], flags: i32) -> io::Result<()> {
        self.live()?.with_xattr_path(|p, follow| sys::setxattr(p, name, value, flags, follow))
    }

    pub fn removexattr(&self, name: &CStr) -> io::Result<()> {
        self.live()?.with_xattr_path(|p, follow| sys::removexattr(p, name, follow))
    }

    /// The directory's handle, for a directory location.
    pub fn dir_fd(&self) -> Option<&DirFd> {
        match self {
            Loc::Dir(fd) => Some(fd),
            Loc::At(..) | Loc::Pinned(_) => None,
        }
    }
}

impl Live {
    pub fn stat(&self) -> io::Result<Stat> {
        match self {
            Live::Dir(fd) | Live::Pinned(fd) => sys::fstat(fd.as_fd()),
            Live::At(dir, name) => sys::fstatat(dir.as_fd(), name),
        }
    }

    /// statx's attribute bits of the object ([`sys::statx_attributes`]).
    pub fn attributes(&self) -> io::Result<u64> {
        match self {
            Live::Dir(fd) | Live::Pinned(fd) => sys::statx_attributes(fd.as_fd(), c""),
            Live::At(dir, name) => sys::statx_attributes(dir.as_fd(), name),
        }
    }

    /// Opens the object for I/O. Never follows a symlink.
    pub fn open(&self, flags: i32) -> io::Result<OwnedFd> {
        match self {
            Live::Dir(fd) | Live::Pinned(fd) => sys::reopen(fd.as_fd(), flags),
            Live::At(dir, name) => sys::openat(dir.as_fd(), name, flags, 0),
        }
    }

    /// Calls `f` with the path and follow mode for xattr syscalls on this object. The path
    /// names a descriptor of `self` (`/proc/self/fd/N`), so it is only handed out while `self`
    /// is borrowed: were the descriptor closed first, its number could be reused by another
    /// thread's open, and the call would reach another object (a lower layer's).
    pub fn with_xattr_path<R>(&self, f: impl FnOnce(&CStr, bool) -> R) -> R {
        let (p, follow) = match self {
            Live::Dir(fd) | Live::Pinned(fd) => (sys::proc_fd_path(fd.as_raw_fd(), None), true),
            Live::At(dir, name) => (sys::proc_fd_path(dir.as_raw_fd(), Some(name)), false),
        };
        f(&p, follow)
    }

    pub fn readlink(&self) -> io::Result<Vec<u8>> {
        match self {
            Live::Dir(_) => Err(io::Error::from_raw_os_error(libc::EINVAL)),
            // readlinkat with an empty path reads the link an O_PATH fd refers to.
            Live::Pinned(fd) => sys::readlinkat(fd.as_fd(), c""),
            Live::At(dir, name) => sys::readlinkat(dir.as_fd(), name),
        }
    }

    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        match self {
            Live::Dir(fd) | Live::Pinned(fd) => sys::fchmod(fd.as_fd(), mode),
            Live::At(dir, name) => sys::fchmodat(dir.as_fd(), name, mode),
        }
    }

    pub fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        match self {
            Live::Dir(fd) | Live::Pinned(fd) => sys::fchown_fd(fd.as_fd(), uid, gid),
            Live::At(dir, name) => sys::fchownat(dir.as_fd(), name, uid, gid),
        }
    }

    pub fn utimes(&self, atime: SetTime, mtime: SetTime) -> io::Result<()> {
        match self {
            Live::Dir(fd) | Live::Pinned(fd) => sys::futimens_path(fd.as_fd(), atime, mtime),
            Live::At(dir, name) => sys::utimensat(dir.as_fd(), name, atime, mtime),
        }
    }

    /// The object's file handle ([`sys::name_to_handle_at`]).
    pub fn handle(&self) -> io::Result<(i32, Vec<u8>)> {
        match self {
            Live::Dir(fd) | Live::Pinned(fd) => sys::name_to_handle_at(fd.as_fd(), c""),
            Live::At(dir, name) => sys::name_to_handle_at(dir.as_fd(), name),
        }
    }

    /// Where the object's xattrs are read from (valid while `self` lives).
    pub fn xattr_at(&self) -> sys::XattrAt<'_> {
        match self {
            Live::Dir(fd) => sys::XattrAt::Dir(fd.as_raw_fd()),
            Live::At(dir, name) => sys::XattrAt::Name(dir.as_raw_fd(), name),
            Live::Pinned(fd) => sys::XattrAt::Pinned(fd.as_raw_fd()),
        }
    }
}

/// Opens a directory entry as an `O_PATH` directory fd, refusing symlinks.
pub fn open_dir_at(dir: BorrowedFd, name: &CStr) -> io::Result<OwnedFd> {
    sys::openat(dir, name, libc::O_PATH | libc::O_DIRECTORY, 0)
}

/// What a directory's overlay xattrs and marker say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirMarks {
    pub opaque: bool,
    /// `overlay.opaque=x`: entries may be xattr whiteouts.
    pub xattr_whiteouts: bool,
    /// `overlay.impure`: entries may have been copied up, and carry an `overlay.origin`
    /// (see [`crate::origin`]).
    pub impure: bool,
}

/// Reads the opaque xattrs of a directory fd and looks for a `.wh..wh..opq` entry.
pub fn dir_marks(fd: &OwnedFd) -> DirMarks {
    let mut m = xattr_marks(fd);
    if !m.opaque {
        let marker = CString::new(crate::name::OPAQUE_MARKER).unwrap_or_default();
        if sys::exists_at(fd.as_fd(), &marker).unwrap_or(false) {
            m.opaque = true;
        }
    }
    m
}

/// What the opaque xattrs of a directory fd say (not the `.wh..wh..opq` entry).
pub fn xattr_marks(fd: &OwnedFd) -> DirMarks {
    let mut m = DirMarks::default();
    let at = sys::XattrAt::Dir(fd.as_raw_fd());
    // One listxattr tells whether any overlay xattr is there at all (the common case: none).
    if let Ok(list) = at.list() {
        for n in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if whiteout::IMPURE_XATTRS.contains(&n) {
                m.impure = true;
            } else if whiteout::OPAQUE_XATTRS.contains(&n) {
                let Ok(cn) = CString::new(n) else { continue };
                let mut buf = [0u8; 8];
                if let Ok(len) = at.get_into(&cn, &mut buf) {
                    match whiteout::opaque_value(&buf[..len.min(buf.len())]) {
                        OpaqueValue::Opaque => m.opaque = true,
                        OpaqueValue::XattrWhiteouts => m.xattr_whiteouts = true,
                        OpaqueValue::None => {}
                    }
                }
            }
        }
    }
    m
}

/// Whether entry `name` of `dir`, which `st` describes, is a whiteout in a directory with
/// `marks`: a char device 0/0, or, where the directory says its entries may be
/// (`opaque=x`), a zero-size regular file with the whiteout xattr.
pub fn is_whiteout_entry(dir: &OwnedFd, name: &CStr, st: &Stat, marks: DirMarks) -> bool {
    whiteout::is_chardev_whiteout(st.st_mode, st.st_rdev)
        || (marks.xattr_whiteouts
            && st.st_mode & libc::S_IFMT == libc::S_IFREG
            && st.st_size == 0
            && has_whiteout_xattr(dir, name))
}

/// True if a zero-size regular file carries an xattr whiteout mark.
pub fn has_whiteout_xattr(dir: &OwnedFd, name: &CStr) -> bool {
    let at = sys::XattrAt::Name(dir.as_raw_fd(), name);
    let mut buf = [0u8; 4];
    [whiteout::TRUSTED_WHITEOUT, whiteout::USER_WHITEOUT]
        .iter()
        .any(|x| CString::new(*x).ok().is_some_and(|cx| at.get_into(&cx, &mut buf).is_ok()))
}

#[cfg(test)]
mod tests {
    use super::origin_decoder;

    /// As `ovl_lower_uuid_ok` with `index=off`: the upper's filesystem always; another with a
    /// known UUID, not null, that no other lower filesystem shares.
    #[test]
    fn origins_are_read_where_the_kernel_reads_them() {
        let (a, b, z) = (Some([1u8; 16]), Some([2u8; 16]), Some([0u8; 16]));
        let lowers = [(10, a), (11, b), (12, z), (13, a)];
        assert!(origin_decoder(12, z, Some(12), &lowers), "the upper's filesystem, null UUID");
        assert!(origin_decoder(11, b, Some(1), &lowers), "a unique UUID");
        assert!(!origin_decoder(12, z, Some(1), &lowers), "a null UUID elsewhere");
        assert!(!origin_decoder(10, a, Some(1), &lowers), "a UUID two lower filesystems share");
        assert!(origin_decoder(10, a, Some(10), &lowers), "shared, but the upper's own");
        assert!(!origin_decoder(11, None, Some(11), &lowers), "no UUID known (before Linux 6.8)");
        assert!(origin_decoder(11, b, None, &[(11, b)]));
    }
}
