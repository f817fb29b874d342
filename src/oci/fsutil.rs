//! fd-relative, never-following filesystem helpers for the OCI tools.
//!
//! This is the only file under `src/oci` with `unsafe`; every block carries a
//! `// SAFETY:` comment. Everything else in the module works with directory
//! fds and single path components, never with path strings that the kernel
//! could resolve through a symlink.
//!
//! Hard parts:
//! - every open of an existing name uses `O_NOFOLLOW`; directories are walked
//!   one component at a time with `O_DIRECTORY|O_NOFOLLOW`;
//! - final-component operations use the `*at` calls with
//!   `AT_SYMLINK_NOFOLLOW` (or calls that never follow: `mkdirat`, `mknodat`,
//!   `symlinkat`, `unlinkat`, `linkat` without `AT_SYMLINK_FOLLOW`);
//! - xattrs of objects that cannot be opened for reading (fifos, devices) go
//!   through `/proc/self/fd/N` of an `O_PATH|O_NOFOLLOW` fd, which names the
//!   exact inode (the magic link cannot be redirected), after checking the
//!   object is not a symlink;
//! - `readdir` works on a fresh `openat(fd, ".")` so the caller's fd offset is
//!   untouched.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn cvt_ssize(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
}

/// A NUL-terminated copy of a name; refuses embedded NULs.
pub fn cstr(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"))
}

fn openat_raw(
    dir: BorrowedFd<'_>,
    name: &[u8],
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    loop {
        // SAFETY: `c` is a valid NUL-terminated string that outlives the call;
        // `dir` is a live fd borrowed for the call. The returned fd is fresh
        // and owned by nobody else, so wrapping it in OwnedFd is sound.
        let r = unsafe {
            libc::openat(dir.as_raw_fd(), c.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint)
        };
        if r >= 0 {
            // SAFETY: r is a freshly opened fd we exclusively own.
            return Ok(unsafe { OwnedFd::from_raw_fd(r) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Opens an existing directory by absolute or relative path (the user-given
/// roots; following symlinks there is the user's choice).
pub fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    let c = cstr(path.as_os_str().as_bytes())?;
    // SAFETY: valid C string; a fresh fd is returned on success.
    let r = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    let r = cvt(r)?;
    // SAFETY: r is a freshly opened fd we exclusively own.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// Opens the directory `name` inside `dir`, refusing symlinks (ELOOP) and
/// non-directories (ENOTDIR).
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    openat_raw(dir, name, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)
}

/// `O_PATH|O_NOFOLLOW` handle on `name` (may be a symlink itself).
pub fn open_path_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    openat_raw(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)
}

/// Creates a new regular file (`O_EXCL|O_NOFOLLOW`), write-only.
pub fn create_file_at(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> io::Result<File> {
    let fd = openat_raw(
        dir,
        name,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
        mode as libc::mode_t,
    )?;
    Ok(File::from(fd))
}

/// Opens an existing regular file read-only without following a symlink and
/// without blocking on a fifo.
pub fn open_file_ro_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<File> {
    let fd = openat_raw(dir, name, libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY, 0)?;
    Ok(File::from(fd))
}

pub fn mkdir_at(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string and live fd for the duration of the call.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) }).map(drop)
}

pub fn mknod_at(dir: BorrowedFd<'_>, name: &[u8], mode: u32, dev: u64) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string and live fd for the duration of the call.
    cvt(unsafe { libc::mknodat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t, dev as libc::dev_t) })
        .map(drop)
}

pub fn symlink_at(target: &[u8], dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let t = cstr(target)?;
    let c = cstr(name)?;
    // SAFETY: both C strings are valid for the call; `dir` is live.
    cvt(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) }).map(drop)
}

/// `linkat` without `AT_SYMLINK_FOLLOW`: links the object itself.
pub fn link_at(odir: BorrowedFd<'_>, oname: &[u8], ndir: BorrowedFd<'_>, nname: &[u8]) -> io::Result<()> {
    let o = cstr(oname)?;
    let n = cstr(nname)?;
    // SAFETY: valid C strings, live fds.
    cvt(unsafe { libc::linkat(odir.as_raw_fd(), o.as_ptr(), ndir.as_raw_fd(), n.as_ptr(), 0) }).map(drop)
}

pub fn unlink_at(dir: BorrowedFd<'_>, name: &[u8], is_dir: bool) -> io::Result<()> {
    let c = cstr(name)?;
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: valid C string, live fd.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) }).map(drop)
}

/// `renameat2`; with `noreplace` the call fails with EEXIST instead of
/// replacing the destination.
pub fn rename_at(
    odir: BorrowedFd<'_>,
    oname: &[u8],
    ndir: BorrowedFd<'_>,
    nname: &[u8],
    noreplace: bool,
) -> io::Result<()> {
    let o = cstr(oname)?;
    let n = cstr(nname)?;
    let flags = if noreplace { libc::RENAME_NOREPLACE } else { 0 };
    // SAFETY: valid C strings, live fds.
    cvt(unsafe { libc::renameat2(odir.as_raw_fd(), o.as_ptr(), ndir.as_raw_fd(), n.as_ptr(), flags) })
        .map(drop)
}

/// `fstatat(AT_SYMLINK_NOFOLLOW)`.
pub fn stat_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<libc::stat> {
    let c = cstr(name)?;
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string, live fd, `st` is a valid out-pointer.
    cvt(unsafe { libc::fstatat(dir.as_raw_fd(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: live fd, valid out-pointer.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a live fd.
    cvt(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) }).map(drop)
}

pub fn chown_at(dir: BorrowedFd<'_>, name: &[u8], uid: u32, gid: u32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string, live fd.
    cvt(unsafe { libc::fchownat(dir.as_raw_fd(), c.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) }).map(drop)
}

pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a live fd.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) }).map(drop)
}

/// chmod of a non-symlink through an `O_PATH|O_NOFOLLOW` fd and its
/// `/proc/self/fd` magic link (which names exactly that inode).
pub fn chmod_at(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> io::Result<()> {
    let fd = open_path_at(dir, name)?;
    let st = fstat(fd.as_fd())?;
    if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        return Ok(()); // symlink modes are meaningless on Linux
    }
    let p = proc_path(fd.as_raw_fd());
    // SAFETY: valid C string; the magic link resolves to the O_PATH inode.
    cvt(unsafe { libc::chmod(p.as_ptr(), mode as libc::mode_t) }).map(drop)
}

fn timespecs(sec: i64, nsec: u32) -> [libc::timespec; 2] {
    let t = libc::timespec { tv_sec: sec as libc::time_t, tv_nsec: nsec.min(999_999_999) as _ };
    [t, t]
}

pub fn futimens(fd: BorrowedFd<'_>, sec: i64, nsec: u32) -> io::Result<()> {
    let ts = timespecs(sec, nsec);
    // SAFETY: live fd; `ts` points at two valid timespecs.
    cvt(unsafe { libc::futimens(fd.as_raw_fd(), ts.as_ptr()) }).map(drop)
}

pub fn utimes_at(dir: BorrowedFd<'_>, name: &[u8], sec: i64, nsec: u32) -> io::Result<()> {
    let c = cstr(name)?;
    let ts = timespecs(sec, nsec);
    // SAFETY: valid C string, live fd, two valid timespecs.
    cvt(unsafe { libc::utimensat(dir.as_raw_fd(), c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
        .map(drop)
}

pub fn readlink_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Vec<u8>> {
    let c = cstr(name)?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: valid C string, live fd, `buf` is writable for buf.len() bytes.
        let n = cvt_ssize(unsafe {
            libc::readlinkat(dir.as_raw_fd(), c.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        })?;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        if buf.len() >= 1 << 20 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "symlink target too long"));
        }
        buf.resize(buf.len() * 4, 0);
    }
}

fn proc_path(fd: RawFd) -> CString {
    CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in a formatted number")
}

/// How to reach an object's xattrs.
#[derive(Clone, Copy)]
pub enum XattrFd<'a> {
    /// A real (non-O_PATH) fd: f*xattr calls.
    Fd(BorrowedFd<'a>),
    /// An O_PATH fd of a non-symlink: the `/proc/self/fd/N` path.
    Proc(BorrowedFd<'a>),
    /// A symlink, by its directory and name: l*xattr calls on `/proc/self/fd/N/NAME`.
    Link(BorrowedFd<'a>, &'a [u8]),
}

/// The path an [`XattrFd`] is reached by, and whether its last component is not to be
/// followed; `None` for an fd.
fn xattr_path(x: XattrFd<'_>) -> io::Result<Option<(CString, bool)>> {
    Ok(match x {
        XattrFd::Fd(_) => None,
        XattrFd::Proc(fd) => Some((proc_path(fd.as_raw_fd()), false)),
        XattrFd::Link(dir, name) => {
            if name.is_empty() || name.contains(&b'/') {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
            p.extend_from_slice(name);
            Some((cstr(&p)?, true))
        }
    })
}

pub fn set_xattr(x: XattrFd<'_>, name: &[u8], value: &[u8]) -> io::Result<()> {
    let n = cstr(name)?;
    let (ptr, len) = (value.as_ptr().cast(), value.len());
    // SAFETY (all three): a live fd or a valid C path, a valid C name, and a pointer and length
    // describing the value slice.
    match (x, xattr_path(x)?) {
        (XattrFd::Fd(fd), _) => cvt(unsafe { libc::fsetxattr(fd.as_raw_fd(), n.as_ptr(), ptr, len, 0) }),
        (_, Some((p, true))) => cvt(unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), ptr, len, 0) }),
        (_, Some((p, false))) => cvt(unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), ptr, len, 0) }),
        (_, None) => unreachable!("only an fd has no path"),
    }
    .map(drop)
}

/// Returns `Ok(None)` when the attribute does not exist (or xattrs are not
/// supported).
pub fn get_xattr(x: XattrFd<'_>, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let n = cstr(name)?;
    let path = xattr_path(x)?;
    let call = |buf: &mut [u8]| -> io::Result<usize> {
        let (ptr, len) =
            if buf.is_empty() { (std::ptr::null_mut(), 0) } else { (buf.as_mut_ptr().cast(), buf.len()) };
        // SAFETY (all three): a live fd or a valid C path, a valid C name, and ptr/len
        // describing writable memory (or null/0 to query the size).
        match (x, &path) {
            (XattrFd::Fd(fd), _) => {
                cvt_ssize(unsafe { libc::fgetxattr(fd.as_raw_fd(), n.as_ptr(), ptr, len) })
            }
            (_, Some((p, true))) => cvt_ssize(unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), ptr, len) }),
            (_, Some((p, false))) => cvt_ssize(unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), ptr, len) }),
            (_, None) => unreachable!("only an fd has no path"),
        }
    };
    read_sized(call).map(Some).or_else(|e| match e.raw_os_error() {
        Some(libc::ENODATA) | Some(libc::ENOTSUP) => Ok(None),
        _ => Err(e),
    })
}

/// Removes an xattr of an open (non-`O_PATH`) file; a missing one is no error.
pub fn remove_xattr_fd(fd: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let n = cstr(name)?;
    // SAFETY: a live fd and a valid C string.
    match cvt(unsafe { libc::fremovexattr(fd.as_raw_fd(), n.as_ptr()) }) {
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
        r => r.map(drop),
    }
}

/// Names of all xattrs (empty when unsupported).
pub fn list_xattrs(x: XattrFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let path = xattr_path(x)?;
    let call = |buf: &mut [u8]| -> io::Result<usize> {
        let (ptr, len) =
            if buf.is_empty() { (std::ptr::null_mut(), 0) } else { (buf.as_mut_ptr().cast(), buf.len()) };
        // SAFETY (all three): a live fd or a valid C path, and ptr/len describing writable
        // memory (or null/0 to query the size).
        match (x, &path) {
            (XattrFd::Fd(fd), _) => cvt_ssize(unsafe { libc::flistxattr(fd.as_raw_fd(), ptr, len) }),
            (_, Some((p, true))) => cvt_ssize(unsafe { libc::llistxattr(p.as_ptr(), ptr, len) }),
            (_, Some((p, false))) => cvt_ssize(unsafe { libc::listxattr(p.as_ptr(), ptr, len) }),
            (_, None) => unreachable!("only an fd has no path"),
        }
    };
    let raw = match read_sized(call) {
        Ok(v) => v,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(raw.split(|b| *b == 0).filter(|s| !s.is_empty()).map(|s| s.to_vec()).collect())
}

/// Calls a size-query-then-fill xattr function, retrying on ERANGE races.
fn read_sized(call: impl Fn(&mut [u8]) -> io::Result<usize>) -> io::Result<Vec<u8>> {
    for _ in 0..8 {
        let size = call(&mut [])?;
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        match call(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from_raw_os_error(libc::ERANGE))
}

/// Directory entry: name and `d_type` (may be `DT_UNKNOWN`).
pub struct DirEntry {
    pub name: Vec<u8>,
    pub d_type: u8,
}

/// Lists a directory (without `.` and `..`) through a fresh fd on `dir`.
pub fn read_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<DirEntry>> {
    let fd = openat_raw(dir, b".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
    // SAFETY: `raw` is a directory fd we own; fdopendir takes ownership of it
    // on success (closedir closes it). On failure we still own it and close it.
    let dirp = unsafe { libc::fdopendir(raw) };
    if dirp.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `raw` is still ours to close.
        unsafe { libc::close(raw) };
        return Err(e);
    }
    struct Closer(*mut libc::DIR);
    impl Drop for Closer {
        fn drop(&mut self) {
            // SAFETY: the DIR* came from a successful fdopendir and is closed once.
            unsafe { libc::closedir(self.0) };
        }
    }
    let guard = Closer(dirp);
    let mut out = Vec::new();
    loop {
        // SAFETY: errno is thread-local; resetting it distinguishes end-of-dir from errors.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: guard.0 is a live DIR* used by this thread only.
        let ent = unsafe { libc::readdir64(guard.0) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            if e.raw_os_error().unwrap_or(0) != 0 {
                return Err(e);
            }
            break;
        }
        // SAFETY: a non-null dirent64 from readdir64 is valid until the next
        // readdir call; d_name is NUL-terminated. We copy the bytes out now.
        let (name, d_type) = unsafe {
            let e = &*ent;
            (CStr::from_ptr(e.d_name.as_ptr()).to_bytes().to_vec(), e.d_type)
        };
        if name == b"." || name == b".." {
            continue;
        }
        out.push(DirEntry { name, d_type });
    }
    Ok(out)
}

pub fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Blocking exclusive `flock` on an open file (released when it is closed).
pub fn flock_exclusive(f: &File) -> io::Result<()> {
    loop {
        // SAFETY: plain syscall on a live fd.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Is this fd a terminal?
pub fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the fd number.
    unsafe { libc::isatty(fd) == 1 }
}
