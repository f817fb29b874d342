//! The only place in the mount side of layerfs with `unsafe` and raw syscalls.
//!
//! Every function here is a small safe wrapper around one syscall. The rules that keep a layer
//! (untrusted input) from reaching outside itself are enforced by the callers' shape, and these
//! wrappers make the safe shape the easy one:
//! - objects below a layer root are always addressed as `(directory fd, single name)`, and the
//!   open wrappers always add `O_NOFOLLOW`, so a symlink stored in a layer is never followed;
//! - a name is one path component (checked by [`crate::name`]), so `..` and `/` never reach here
//!   from the union code;
//! - paths through `/proc/self/fd/N` only ever name a descriptor this process opened itself.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};

pub use libc::stat as Stat;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn cvt_l(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
}

/// Turns a name or path into a C string; an interior NUL is EINVAL.
pub fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC, mode)`.
pub fn openat(dir: BorrowedFd, name: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let open = || -> io::Result<OwnedFd> {
        // SAFETY: `name` is a valid NUL-terminated string; the returned fd is owned by us.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        };
        let fd = cvt(fd)?;
        // SAFETY: `fd` was just returned by openat and is owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    match open() {
        Err(e) if e.raw_os_error() == Some(libc::EMFILE) => match FD_RELIEF.get() {
            Some(relieve) if relieve() > 0 => open(),
            _ => Err(e),
        },
        r => r,
    }
}

/// What frees descriptors when the process has run out of them ([`on_fd_shortage`]).
static FD_RELIEF: std::sync::OnceLock<fn() -> usize> = std::sync::OnceLock::new();

/// Registers `relieve`, which closes descriptors that can be opened again and answers how
/// many it closed: an [`openat`] that fails with EMFILE calls it and, if it closed any,
/// tries once more.
pub fn on_fd_shortage(relieve: fn() -> usize) {
    let _ = FD_RELIEF.set(relieve);
}

/// Opens a trusted absolute path (layer roots at mount time, `/proc/self/fd/N` of our own fds).
/// Unlike [`openat`] the final component is followed unless `flags` has `O_NOFOLLOW`.
pub fn open_trusted(path: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: `path` is NUL-terminated; the returned fd is owned by us.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) };
    let fd = cvt(fd)?;
    // SAFETY: fresh fd from open(2).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A detached copy of the mount at `path` without the mounts below it (`open_tree` with
/// OPEN_TREE_CLONE, not recursive), as an `O_PATH` fd of its root: walks from it stay on the
/// filesystem `path` is on, seeing what mounts inside it cover, as kernel overlayfs's layers
/// do. Needs CAP_SYS_ADMIN in the mount namespace's user namespace.
pub fn open_tree_clone(path: &CStr) -> io::Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    // SAFETY: plain syscall; `path` is NUL-terminated; the returned fd is owned by us.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    let fd = cvt(fd as libc::c_int)?;
    // SAFETY: a fresh fd from open_tree(2).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes a detached mount (from [`open_tree_clone`]) `noatime`, and read-only with
/// `read_only`, as kernel overlayfs makes its private lower mounts: reading a layer through
/// it changes nothing in the layer, not even access times, and no write can reach it by
/// mistake.
pub fn seal_mount(fd: BorrowedFd, read_only: bool) -> io::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    const MOUNT_ATTR_ATIME_MASK: u64 = 0x70;
    const MOUNT_ATTR_NOATIME: u64 = 0x10;
    let attr = MountAttr {
        attr_set: if read_only { MOUNT_ATTR_RDONLY } else { 0 } | MOUNT_ATTR_NOATIME,
        attr_clr: MOUNT_ATTR_ATIME_MASK,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: plain syscall on a live fd, an empty NUL-terminated path and a struct of the
    // size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    cvt(r as libc::c_int).map(drop)
}

/// Opens the object `fd` stands for again, as seen through the mount `mount` (a mount of the
/// same filesystem, such as an [`open_tree_clone`] of it): by its file handle
/// (`name_to_handle_at`, `open_by_handle_at`), which needs CAP_DAC_READ_SEARCH. The new
/// descriptor's path is on `mount`, and takes that mount's attributes.
pub fn reopen_on_mount(fd: BorrowedFd, mount: BorrowedFd, flags: i32) -> io::Result<OwnedFd> {
    const MAX_HANDLE: usize = 128; // MAX_HANDLE_SZ
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        data: [u8; MAX_HANDLE],
    }
    let mut h = Handle { bytes: MAX_HANDLE as u32, kind: 0, data: [0; MAX_HANDLE] };
    let mut mount_id: libc::c_int = 0;
    let hp = (&mut h as *mut Handle).cast::<libc::file_handle>();
    // SAFETY: `h` has the layout of `struct file_handle` with MAX_HANDLE_SZ bytes of room,
    // as `bytes` says; the path is an empty NUL-terminated string.
    cvt(unsafe {
        libc::name_to_handle_at(fd.as_raw_fd(), c"".as_ptr(), hp, &mut mount_id, libc::AT_EMPTY_PATH)
    })?;
    // SAFETY: the handle just filled in; the returned fd is owned by us.
    let nfd = cvt(unsafe { libc::open_by_handle_at(mount.as_raw_fd(), hp, flags | libc::O_CLOEXEC) })?;
    // SAFETY: fresh fd from open_by_handle_at.
    Ok(unsafe { OwnedFd::from_raw_fd(nfd) })
}

/// The read-ahead window, in KiB, of the block device `dev` (a partition's is its disk's), when
/// sysfs has one: none for filesystems without a disk of their own (tmpfs, overlay, FUSE).
pub fn disk_read_ahead_kb(dev: u64) -> Option<u64> {
    let (maj, min) = (libc::major(dev), libc::minor(dev));
    ["queue", "../queue"].iter().find_map(|q| {
        std::fs::read_to_string(format!("/sys/dev/block/{maj}:{min}/{q}/read_ahead_kb"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    })
}

/// Re-opens an object we hold an `O_PATH` fd for, with real access flags.
pub fn reopen(fd: BorrowedFd, flags: i32) -> io::Result<OwnedFd> {
    let p = proc_fd_path(fd.as_raw_fd(), None);
    open_trusted(&p, flags & !libc::O_NOFOLLOW & !libc::O_CREAT & !libc::O_EXCL, 0)
}

/// Opens a directory we hold an `O_PATH` fd for, for reading its entries: as its own "." (half
/// the cost of a walk of `/proc/self/fd`, 2.0 against 4.2 µs here), or through `/proc` where
/// the directory refuses search to the server ("." needs it, reading does not).
///
/// With `noatime`, reading it leaves its access time alone where the kernel allows
/// ([`open_noatime`]).
pub fn reopen_dir(fd: BorrowedFd, noatime: bool) -> io::Result<OwnedFd> {
    let open = |flags: i32| match openat(fd, c".", flags, 0) {
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => reopen(fd, flags),
        r => r,
    };
    let flags = libc::O_RDONLY | libc::O_DIRECTORY;
    if noatime { open_noatime(flags, open) } else { open(flags) }
}

/// Opens with `open(flags | O_NOATIME)`, as kernel overlayfs opens its layers' objects, so that
/// reads through the descriptor give the object no new access time. The kernel allows
/// O_NOATIME to the object's owner and to CAP_FOWNER; elsewhere (EPERM) this opens without it,
/// and reads update the access time as the object's mount decides.
pub fn open_noatime(flags: i32, open: impl Fn(i32) -> io::Result<OwnedFd>) -> io::Result<OwnedFd> {
    match open(flags | libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && flags & libc::O_NOATIME == 0 => open(flags),
        r => r,
    }
}

/// `/proc/self/fd/N` or `/proc/self/fd/N/name`.
pub fn proc_fd_path(fd: RawFd, name: Option<&CStr>) -> CString {
    let mut v = format!("/proc/self/fd/{fd}").into_bytes();
    if let Some(n) = name {
        v.push(b'/');
        v.extend_from_slice(n.to_bytes());
    }
    // A decimal number and a checked name never contain NUL.
    CString::new(v).unwrap_or_default()
}

fn zeroed_stat() -> MaybeUninit<libc::stat> {
    MaybeUninit::zeroed()
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub fn fstatat(dir: BorrowedFd, name: &CStr) -> io::Result<Stat> {
    let mut st = zeroed_stat();
    // SAFETY: `st` points to writable memory of the right size; `name` is NUL-terminated.
    cvt(unsafe {
        libc::fstatat(dir.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW)
    })?;
    // SAFETY: fstatat succeeded, so it filled the whole struct.
    Ok(unsafe { st.assume_init() })
}

/// statx's `stx_attributes` bits for append-only and immutable objects.
pub const STATX_ATTR_IMMUTABLE: u64 = 0x10;
pub const STATX_ATTR_APPEND: u64 = 0x20;

/// Room for a file handle (the kernel's MAX_HANDLE_SZ).
const MAX_HANDLE_SZ: usize = 128;

/// `struct file_handle` with room for the largest handle.
#[repr(C)]
struct FileHandle {
    handle_bytes: u32,
    handle_type: libc::c_int,
    f_handle: [u8; MAX_HANDLE_SZ],
}

/// The file handle of `name` in `dir` (an empty name: `dir` itself), without following a
/// symlink: its type and bytes. EOPNOTSUPP where the filesystem has none.
pub fn name_to_handle_at(dir: BorrowedFd, name: &CStr) -> io::Result<(i32, Vec<u8>)> {
    let mut h =
        FileHandle { handle_bytes: MAX_HANDLE_SZ as u32, handle_type: 0, f_handle: [0; MAX_HANDLE_SZ] };
    let mut mount_id: libc::c_int = 0;
    let flags = if name.is_empty() { libc::AT_EMPTY_PATH } else { 0 };
    // SAFETY: `h` is a file_handle whose handle_bytes says how much room follows it; `name` is
    // NUL-terminated; `mount_id` is writable.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut h as *mut FileHandle,
            &mut mount_id as *mut libc::c_int,
            flags,
        ) as libc::c_int
    })?;
    let n = (h.handle_bytes as usize).min(MAX_HANDLE_SZ);
    Ok((h.handle_type, h.f_handle[..n].to_vec()))
}

/// Opens the object a file handle names on the filesystem of `mount` (needs
/// CAP_DAC_READ_SEARCH), as an `O_PATH` descriptor that does not follow a symlink.
pub fn open_by_handle_at(mount: BorrowedFd, handle_type: i32, handle: &[u8]) -> io::Result<OwnedFd> {
    if handle.len() > MAX_HANDLE_SZ {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut h = FileHandle { handle_bytes: handle.len() as u32, handle_type, f_handle: [0; MAX_HANDLE_SZ] };
    h.f_handle[..handle.len()].copy_from_slice(handle);
    // SAFETY: `h` is a valid file_handle; the returned fd is owned by us.
    let fd = cvt(unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            &mut h as *mut FileHandle,
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        ) as libc::c_int
    })?;
    // SAFETY: `fd` was just returned by open_by_handle_at and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The UUID of the filesystem `fd` is on (FS_IOC_GETFSUUID, Linux 6.8+); None where it has
/// none or the kernel cannot tell.
pub fn fs_uuid(fd: BorrowedFd) -> Option<[u8; 16]> {
    #[repr(C)]
    struct FsUuid2 {
        len: u8,
        uuid: [u8; 16],
    }
    // _IOR(0x15, 0, struct fsuuid2)
    const FS_IOC_GETFSUUID: libc::c_ulong = 0x8011_1500;
    let mut u = FsUuid2 { len: 0, uuid: [0; 16] };
    // The ioctl needs a descriptor that is not O_PATH.
    let f = reopen(fd, libc::O_RDONLY | libc::O_DIRECTORY).ok()?;
    // SAFETY: `u` is a writable struct fsuuid2, as the ioctl expects.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_GETFSUUID as _, &mut u as *mut FsUuid2) };
    (r == 0 && usize::from(u.len) <= 16).then(|| {
        let mut out = [0u8; 16];
        out[..usize::from(u.len)].copy_from_slice(&u.uuid[..usize::from(u.len)]);
        out
    })
}

/// The `stx_attributes` of `name` in `dir` (an empty name: `dir` itself), without following a
/// symlink (append-only, immutable and the like; filled whatever the mask asks).
pub fn statx_attributes(dir: BorrowedFd, name: &CStr) -> io::Result<u64> {
    // SAFETY: statx is plain data, zeroed is a valid value.
    let mut sx: libc::statx = unsafe { std::mem::zeroed() };
    let empty = if name.is_empty() { libc::AT_EMPTY_PATH } else { 0 };
    let flags = libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_DONT_SYNC | empty;
    // SAFETY: a NUL-terminated name and a writable statx buffer.
    cvt(unsafe { libc::statx(dir.as_raw_fd(), name.as_ptr(), flags, 0, &mut sx) })?;
    Ok(sx.stx_attributes)
}

/// The birth time of an open object (statx `STATX_BTIME`), where the filesystem keeps one.
pub fn btime(fd: BorrowedFd) -> io::Result<(i64, u32)> {
    // SAFETY: statx is plain data, zeroed is a valid value.
    let mut sx: libc::statx = unsafe { std::mem::zeroed() };
    let flags = libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW;
    // SAFETY: an empty NUL-terminated name, a live fd and a writable statx buffer.
    cvt(unsafe { libc::statx(fd.as_raw_fd(), c"".as_ptr(), flags, libc::STATX_BTIME, &mut sx) })?;
    if sx.stx_mask & libc::STATX_BTIME == 0 {
        return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
    }
    Ok((sx.stx_btime.tv_sec, sx.stx_btime.tv_nsec))
}

/// `fstat(fd)`; works on `O_PATH` descriptors.
pub fn fstat(fd: BorrowedFd) -> io::Result<Stat> {
    let mut st = zeroed_stat();
    // SAFETY: as in fstatat.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded.
    Ok(unsafe { st.assume_init() })
}

pub fn mkdirat(dir: BorrowedFd, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall on valid arguments.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) })?;
    Ok(())
}

pub fn mknodat(dir: BorrowedFd, name: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
    // SAFETY: plain syscall on valid arguments.
    cvt(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t, rdev as libc::dev_t) })?;
    Ok(())
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd, name: &CStr) -> io::Result<()> {
    // SAFETY: plain syscall on valid arguments.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })?;
    Ok(())
}

/// Hard-links the object behind `fd` (any fd we own, `O_PATH` included) as `dir/name`, through
/// `/proc/self/fd`, which needs no capability (unlike `AT_EMPTY_PATH`).
pub fn link_fd(fd: BorrowedFd, dir: BorrowedFd, name: &CStr) -> io::Result<()> {
    let p = proc_fd_path(fd.as_raw_fd(), None);
    // SAFETY: plain syscall on valid arguments.
    cvt(unsafe {
        libc::linkat(libc::AT_FDCWD, p.as_ptr(), dir.as_raw_fd(), name.as_ptr(), libc::AT_SYMLINK_FOLLOW)
    })?;
    Ok(())
}

pub fn linkat(odir: BorrowedFd, oname: &CStr, ndir: BorrowedFd, nname: &CStr) -> io::Result<()> {
    // SAFETY: plain syscall on valid arguments; no AT_SYMLINK_FOLLOW.
    cvt(unsafe { libc::linkat(odir.as_raw_fd(), oname.as_ptr(), ndir.as_raw_fd(), nname.as_ptr(), 0) })?;
    Ok(())
}

pub fn unlinkat(dir: BorrowedFd, name: &CStr, rmdir: bool) -> io::Result<()> {
    let flags = if rmdir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: plain syscall on valid arguments.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
    Ok(())
}

pub const RENAME_NOREPLACE: u32 = libc::RENAME_NOREPLACE;
pub const RENAME_EXCHANGE: u32 = libc::RENAME_EXCHANGE;
pub const RENAME_WHITEOUT: u32 = libc::RENAME_WHITEOUT;

pub fn renameat2(
    odir: BorrowedFd,
    oname: &CStr,
    ndir: BorrowedFd,
    nname: &CStr,
    flags: u32,
) -> io::Result<()> {
    // SAFETY: plain syscall on valid arguments.
    cvt(unsafe {
        libc::renameat2(odir.as_raw_fd(), oname.as_ptr(), ndir.as_raw_fd(), nname.as_ptr(), flags)
    })?;
    Ok(())
}

pub fn readlinkat(dir: BorrowedFd, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: `buf` is writable for its whole length.
    let n = cvt_l(unsafe {
        libc::readlinkat(dir.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// `fchownat(dir, name, uid, gid, AT_SYMLINK_NOFOLLOW)`; `u32::MAX` leaves an id unchanged.
pub fn fchownat(dir: BorrowedFd, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain syscall on valid arguments.
    cvt(unsafe { libc::fchownat(dir.as_raw_fd(), name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(())
}

/// chown of the object behind an fd we own (`O_PATH` included), without following symlinks.
pub fn fchown_fd(fd: BorrowedFd, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: empty path with AT_EMPTY_PATH operates on `fd` itself.
    cvt(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(())
}

/// Set once the kernel turned fchmodat2 (6.6+) down with ENOSYS.
static NO_FCHMODAT2: AtomicBool = AtomicBool::new(false);

/// chmod of `name` in `dir`, or of the object `dir` itself (possibly an `O_PATH` fd), never
/// following a symlink at the end: fchmodat2 where the kernel has it, else through
/// `/proc/self/fd`, which costs a walk of procfs (the caller checked `name` is no symlink).
fn chmod_at(dir: BorrowedFd, name: Option<&CStr>, mode: u32) -> io::Result<()> {
    if !NO_FCHMODAT2.load(Ordering::Relaxed) {
        let (path, flags) = match name {
            Some(n) => (n, libc::AT_SYMLINK_NOFOLLOW),
            None => (c"", libc::AT_EMPTY_PATH),
        };
        // SAFETY: fchmodat2 on our own fd and a NUL-terminated name.
        let r = unsafe { libc::syscall(libc::SYS_fchmodat2, dir.as_raw_fd(), path.as_ptr(), mode, flags) };
        match cvt_l(r as libc::ssize_t) {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => NO_FCHMODAT2.store(true, Ordering::Relaxed),
            // (A seccomp filter that does not know the call may refuse it with EPERM.)
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
            Err(e) => return Err(e),
        }
    }
    let p = proc_fd_path(dir.as_raw_fd(), name);
    // SAFETY: chmod on a path through our own fd.
    cvt(unsafe { libc::chmod(p.as_ptr(), mode as libc::mode_t) })?;
    Ok(())
}

/// chmod of `dir/name`; symlinks have no mode of their own, so EOPNOTSUPP there is the caller's.
pub fn fchmodat(dir: BorrowedFd, name: &CStr, mode: u32) -> io::Result<()> {
    chmod_at(dir, Some(name), mode)
}

pub fn fchmod(fd: BorrowedFd, mode: u32) -> io::Result<()> {
    chmod_at(fd, None, mode)
}

/// A time for [`utimensat`]: unchanged, now, or a given time.
#[derive(Clone, Copy, Debug)]
pub enum SetTime {
    Omit,
    Now,
    At(i64, i64),
}

fn ts(t: SetTime) -> libc::timespec {
    match t {
        SetTime::Omit => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        SetTime::Now => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
        SetTime::At(s, n) => libc::timespec { tv_sec: s, tv_nsec: n },
    }
}

/// `utimensat(dir, name, times, AT_SYMLINK_NOFOLLOW)`.
pub fn utimensat(dir: BorrowedFd, name: &CStr, atime: SetTime, mtime: SetTime) -> io::Result<()> {
    let t = [ts(atime), ts(mtime)];
    // SAFETY: `t` is a valid two-element array.
    cvt(unsafe { libc::utimensat(dir.as_raw_fd(), name.as_ptr(), t.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(())
}

/// utimes of the object behind an fd we own (a directory `O_PATH` fd, or an open file).
pub fn futimens_path(fd: BorrowedFd, atime: SetTime, mtime: SetTime) -> io::Result<()> {
    let p = proc_fd_path(fd.as_raw_fd(), None);
    let t = [ts(atime), ts(mtime)];
    // SAFETY: `t` is a valid array; the path is our own fd's magic link.
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), t.as_ptr(), 0) })?;
    Ok(())
}

// ---- xattrs -------------------------------------------------------------------------------
// Xattrs are reached through [`XattrAt`] (getxattrat/listxattrat where the kernel has them) or
// through a path: `/proc/self/fd/DIR/NAME` (the l* variants, so a symlink in a layer is never
// followed) or `/proc/self/fd/FD` (followed: the magic link is our own fd).

/// Reads a variable-length xattr value or list: `f` fills the buffer it is given (a size
/// query when empty) and returns the length.
fn xattr_buf_loop(mut f: impl FnMut(&mut [u8]) -> io::Result<usize>) -> io::Result<Vec<u8>> {
    let mut size = 256usize;
    loop {
        let mut buf = vec![0u8; size];
        match f(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) && size < (1 << 20) => {
                // Ask for the real size, then retry with room to spare.
                size = match f(&mut []) {
                    Ok(need) if need > 0 => need + 64,
                    _ => size * 4,
                };
            }
            Err(e) => return Err(e),
        }
    }
}

/// An object whose xattrs are read: a directory by its own `O_PATH` fd, a non-directory by
/// its directory's fd and its name, or a non-directory by an `O_PATH` fd of its own.
#[derive(Clone, Copy, Debug)]
pub enum XattrAt<'a> {
    Dir(RawFd),
    Name(RawFd, &'a CStr),
    Pinned(RawFd),
}

/// Set once the kernel turned getxattrat/listxattrat (6.13+) down with ENOSYS. Only read on
/// every call after that: no shared cache line is written per call.
static NO_XATTRAT: AtomicBool = AtomicBool::new(false);

/// `struct xattr_args` of getxattrat(2).
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;

impl XattrAt<'_> {
    /// The `/proc/self/fd` path that reaches the object, and whether to follow it.
    fn proc_path(&self) -> (CString, bool) {
        match *self {
            XattrAt::Dir(fd) | XattrAt::Pinned(fd) => (proc_fd_path(fd, None), true),
            XattrAt::Name(dir, name) => (proc_fd_path(dir, Some(name)), false),
        }
    }

    /// Runs `at(dirfd, path, at_flags)` where the *xattrat calls reach the object (not an
    /// `O_PATH` fd of a non-directory: they refuse those), else `proc(path, follow)` through
    /// `/proc/self/fd`, which costs a walk of procfs per call. A directory reached by "." needs
    /// search permission on itself, which `/proc` does not: that refusal is retried there.
    fn call(
        &self,
        at: impl FnOnce(RawFd, &CStr, libc::c_int) -> libc::ssize_t,
        proc: impl FnOnce(&CStr, bool) -> libc::ssize_t,
    ) -> io::Result<usize> {
        let via_at = match *self {
            XattrAt::Dir(fd) => Some((fd, c".", 0)),
            XattrAt::Name(dir, name) => Some((dir, name, libc::AT_SYMLINK_NOFOLLOW)),
            XattrAt::Pinned(_) => None,
        };
        if let Some((fd, path, flags)) = via_at.filter(|_| !NO_XATTRAT.load(Ordering::Relaxed)) {
            match cvt_l(at(fd, path, flags)) {
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => NO_XATTRAT.store(true, Ordering::Relaxed),
                Err(e) if e.raw_os_error() == Some(libc::EACCES) && matches!(self, XattrAt::Dir(_)) => {}
                r => return r,
            }
        }
        let (p, follow) = self.proc_path();
        cvt_l(proc(&p, follow))
    }

    /// getxattr into `buf` (a size query when empty); returns the value's length.
    pub fn get_into(&self, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
        let (ptr, len) =
            if buf.is_empty() { (std::ptr::null_mut(), 0) } else { (buf.as_mut_ptr().cast(), buf.len()) };
        self.call(
            |fd, path, flags| {
                let mut args = XattrArgs { value: ptr as u64, size: len as u32, flags: 0 };
                // SAFETY: valid C strings; `args` points to `len` writable bytes or none.
                unsafe {
                    libc::syscall(
                        SYS_GETXATTRAT,
                        fd,
                        path.as_ptr(),
                        flags,
                        name.as_ptr(),
                        &mut args as *mut XattrArgs,
                        std::mem::size_of::<XattrArgs>(),
                    ) as libc::ssize_t
                }
            },
            |p, follow| {
                // SAFETY: as above.
                unsafe {
                    if follow {
                        libc::getxattr(p.as_ptr(), name.as_ptr(), ptr, len)
                    } else {
                        libc::lgetxattr(p.as_ptr(), name.as_ptr(), ptr, len)
                    }
                }
            },
        )
    }

    /// The whole value of an xattr.
    pub fn get(&self, name: &CStr) -> io::Result<Vec<u8>> {
        xattr_buf_loop(|buf| self.get_into(name, buf))
    }

    /// The object's xattr names (NUL-separated raw list).
    pub fn list(&self) -> io::Result<Vec<u8>> {
        xattr_buf_loop(|buf| {
            let (ptr, len): (*mut libc::c_char, usize) =
                if buf.is_empty() { (std::ptr::null_mut(), 0) } else { (buf.as_mut_ptr().cast(), buf.len()) };
            self.call(
                // SAFETY: valid C string; `ptr` points to `len` writable bytes or is null.
                |fd, path, flags| unsafe {
                    libc::syscall(SYS_LISTXATTRAT, fd, path.as_ptr(), flags, ptr, len) as libc::ssize_t
                },
                // SAFETY: as above.
                |p, follow| unsafe {
                    if follow {
                        libc::listxattr(p.as_ptr(), ptr, len)
                    } else {
                        libc::llistxattr(p.as_ptr(), ptr, len)
                    }
                },
            )
        })
    }
}

/// Gets an xattr; `follow` chooses getxattr (for `/proc/self/fd/N`) or lgetxattr.
pub fn getxattr(path: &CStr, name: &CStr, follow: bool) -> io::Result<Vec<u8>> {
    xattr_buf_loop(|buf| {
        let (p, l) =
            if buf.is_empty() { (std::ptr::null_mut(), 0) } else { (buf.as_mut_ptr().cast(), buf.len()) };
        // SAFETY: `p` is null with length 0, or points to `l` writable bytes.
        cvt_l(unsafe {
            if follow {
                libc::getxattr(path.as_ptr(), name.as_ptr(), p, l)
            } else {
                libc::lgetxattr(path.as_ptr(), name.as_ptr(), p, l)
            }
        })
    })
}

/// Sets an xattr through an open (not `O_PATH`) descriptor: no path walk.
pub fn fsetxattr(fd: BorrowedFd, name: &CStr, value: &[u8], flags: i32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; `value` is readable for its length.
    cvt(unsafe { libc::fsetxattr(fd.as_raw_fd(), name.as_ptr(), value.as_ptr().cast(), value.len(), flags) })
        .map(drop)
}

/// The length of an xattr's value, read through an open (not `O_PATH`) descriptor.
pub fn fgetxattr_len(fd: BorrowedFd, name: &CStr) -> io::Result<usize> {
    // SAFETY: a size query: no buffer.
    cvt_l(unsafe { libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), std::ptr::null_mut(), 0) })
}

/// Size-probe only: does the xattr exist, and how long is it. Cheaper than [`getxattr`].
pub fn getxattr_into(path: &CStr, name: &CStr, follow: bool, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its whole length.
    let r = unsafe {
        if follow {
            libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        } else {
            libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        }
    };
    cvt_l(r)
}

/// Lists xattr names (NUL-separated raw list).
pub fn listxattr(path: &CStr, follow: bool) -> io::Result<Vec<u8>> {
    xattr_buf_loop(|buf| {
        let (p, l) =
            if buf.is_empty() { (std::ptr::null_mut(), 0) } else { (buf.as_mut_ptr().cast(), buf.len()) };
        // SAFETY: as in getxattr.
        cvt_l(unsafe {
            if follow { libc::listxattr(path.as_ptr(), p, l) } else { libc::llistxattr(path.as_ptr(), p, l) }
        })
    })
}

pub fn setxattr(path: &CStr, name: &CStr, value: &[u8], flags: i32, follow: bool) -> io::Result<()> {
    // SAFETY: `value` is readable for its length.
    cvt(unsafe {
        if follow {
            libc::setxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), flags)
        } else {
            libc::lsetxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), flags)
        }
    })?;
    Ok(())
}

pub fn removexattr(path: &CStr, name: &CStr, follow: bool) -> io::Result<()> {
    // SAFETY: plain syscall on valid arguments.
    cvt(unsafe {
        if follow {
            libc::removexattr(path.as_ptr(), name.as_ptr())
        } else {
            libc::lremovexattr(path.as_ptr(), name.as_ptr())
        }
    })?;
    Ok(())
}

// ---- directories --------------------------------------------------------------------------

/// One raw directory entry.
#[derive(Clone, Debug)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    pub dtype: u8,
}

/// Reads a whole directory (skipping `.` and `..`) from a directory fd opened for reading.
pub fn read_dir_all(fd: BorrowedFd) -> io::Result<Vec<DirEntry>> {
    thread_local! {
        // One buffer per thread, kept: a fresh 64 KiB per directory read was zeroed and
        // faulted in each time (a few percent of a cached tree walk).
        static BUF: std::cell::RefCell<Box<[u8]>> = std::cell::RefCell::new(vec![0u8; 64 * 1024].into());
    }
    BUF.with_borrow_mut(|buf| read_dir_into(fd, buf))
}

fn read_dir_into(fd: BorrowedFd, buf: &mut [u8]) -> io::Result<Vec<DirEntry>> {
    let mut out = Vec::new();
    loop {
        // SAFETY: getdents64 writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, fd.as_raw_fd(), buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(out);
        }
        let n = n as usize;
        let mut off = 0usize;
        // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
        while off + 19 <= n {
            let ino = u64::from_ne_bytes(buf[off..off + 8].try_into().unwrap_or([0; 8]));
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            let dtype = buf[off + 18];
            if reclen == 0 || off + reclen > n {
                break;
            }
            let name_bytes = &buf[off + 19..off + reclen];
            let len = name_bytes.iter().position(|&b| b == 0).unwrap_or(name_bytes.len());
            let name = &name_bytes[..len];
            if name != b"." && name != b".." {
                out.push(DirEntry { name: name.to_vec(), ino, dtype });
            }
            off += reclen;
        }
    }
}

/// Gives the allocator's free memory back to the system (glibc keeps freed blocks mapped,
/// and can return only the top of each heap by itself).
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free pages of the allocator's own heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Makes every large allocation (128 KiB and up) a mapping of its own, returned to the system
/// when freed. glibc otherwise raises that threshold each time such a block is freed, and from
/// then on serves blocks of that size from its heap, where they stay resident once free: the
/// node table doubled as it grew, and each table it outgrew stayed (6 MiB of 15 after a
/// 100k-file walk, when it was one table; its shards reach that size past a million nodes).
pub fn fix_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes the allocator's tuning; a fixed threshold is a valid setting.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

// ---- data ---------------------------------------------------------------------------------

pub const SEEK_DATA: i32 = libc::SEEK_DATA;
pub const SEEK_HOLE: i32 = libc::SEEK_HOLE;

pub fn lseek(fd: BorrowedFd, off: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: plain syscall.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), off, whence) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

pub fn fallocate(fd: BorrowedFd, mode: i32, off: i64, len: i64) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::fallocate(fd.as_raw_fd(), mode, off, len) })?;
    Ok(())
}

/// Starts writeback of a byte range without waiting for it (`SYNC_FILE_RANGE_WRITE`).
pub fn start_writeback(fd: BorrowedFd, off: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed fd.
    cvt(unsafe { libc::sync_file_range(fd.as_raw_fd(), off as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE) })
        .map(drop)
}

/// Whether the filesystem holding `fd` commits a rename only after every metadata change made
/// before it, a finished data write-back's included (block allocation, unwritten extents
/// marked written, the on-disk size), and flushes the disk's write cache, with that
/// write-back's data in it, before the commit: XFS without a realtime device, and ext4 (ext3)
/// with a journal inside the filesystem and without `journal_async_commit`. There a copy-up
/// need not fsync its copy before renaming it into place: once the copy's data write-back has
/// finished ([`wait_written`]), a power loss can leave the name on the lower file or on the
/// whole copy, never on a short one (the fsync's journal commit is what it saves). Any other
/// filesystem or setup, or one this cannot tell: false.
///
/// An external ext4 journal flushes only its own device before a commit (the filesystem's
/// device only when ordered data joined the transaction, which unwritten extents do not), an
/// asynchronous commit writes its record before the flush, and XFS flushes a realtime device
/// only in an fsync: in each the rename could reach the disk before the copy's data.
pub fn journal_orders_rename(fd: BorrowedFd) -> bool {
    const XFS_SUPER_MAGIC: i64 = 0x5846_5342;
    const EXT4_SUPER_MAGIC: i64 = 0xEF53;
    let mut s = MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `s` is writable.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), s.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: filled on success.
    #[allow(clippy::unnecessary_cast)] // f_type's type depends on the architecture
    let ftype = unsafe { s.assume_init() }.f_type as i64;
    if ftype != XFS_SUPER_MAGIC && ftype != EXT4_SUPER_MAGIC {
        return false;
    }
    let Ok(st) = fstat(fd) else { return false };
    let Some(options) = super_options(st.st_dev) else { return false };
    let has = |name: &str| options.split(',').any(|o| o.split('=').next() == Some(name));
    if ftype == XFS_SUPER_MAGIC {
        !has("rtdev")
    } else {
        !has("journal_async_commit") && ext4_journal_inside(st.st_dev)
    }
}

/// The super-block options `/proc/self/mountinfo` shows for the filesystem on device `dev`.
fn super_options(dev: u64) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    super_options_in(&info, libc::major(dev), libc::minor(dev)).map(str::to_string)
}

/// The super-block options of the first line of a mountinfo text for device `maj:min`.
fn super_options_in(info: &str, maj: u32, min: u32) -> Option<&str> {
    let want = format!("{maj}:{min}");
    info.lines().find_map(|l| {
        if l.split(' ').nth(2) != Some(want.as_str()) {
            return None;
        }
        // After the separator: filesystem type, source, super-block options.
        l.split_once(" - ")?.1.split(' ').nth(2)
    })
}

/// Whether the ext4 filesystem on device `dev` runs a journal inside itself (jbd2 names such a
/// journal after the filesystem's device and the journal's inode, `loop0-8`; an external one
/// after its own device). Unreadable: false.
fn ext4_journal_inside(dev: u64) -> bool {
    let (maj, min) = (libc::major(dev), libc::minor(dev));
    let Ok(link) = std::fs::read_link(format!("/sys/dev/block/{maj}:{min}")) else { return false };
    let Some(name) = link.file_name().and_then(|n| n.to_str()) else { return false };
    let Ok(journals) = std::fs::read_dir("/proc/fs/jbd2") else { return false };
    journals.flatten().any(|e| e.file_name().to_str().is_some_and(|j| journal_inside(j, name)))
}

/// Whether jbd2's name `journal` (a `/proc/fs/jbd2` entry) is a journal inside the
/// filesystem on device `dev_name`: `<device>-<journal inode>`.
fn journal_inside(journal: &str, dev_name: &str) -> bool {
    journal
        .strip_prefix(dev_name)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|ino| !ino.is_empty() && ino.bytes().all(|b| b.is_ascii_digit()))
}

/// Writes back a file's dirty data and waits until the write-back has finished (on ext4 and
/// XFS that includes marking the written extents and the size on the disk), without the
/// journal commit of an fsync.
pub fn wait_written(fd: BorrowedFd) -> io::Result<()> {
    let how =
        libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: plain syscall on a borrowed fd; offset 0 and length 0 mean the whole file.
    cvt(unsafe { libc::sync_file_range(fd.as_raw_fd(), 0, 0, how) }).map(drop)
}

/// `copy_file_range` with explicit offsets; returns bytes copied (0 at EOF).
pub fn copy_file_range(
    fd_in: BorrowedFd,
    off_in: u64,
    fd_out: BorrowedFd,
    off_out: u64,
    len: usize,
) -> io::Result<usize> {
    let mut oi = off_in as i64;
    let mut oo = off_out as i64;
    // SAFETY: offsets point to live stack variables.
    cvt_l(unsafe { libc::copy_file_range(fd_in.as_raw_fd(), &mut oi, fd_out.as_raw_fd(), &mut oo, len, 0) }
        as libc::ssize_t)
}

/// The inode-attribute ioctls (`chattr`/`lsattr`, `xfs_io`'s fsxattr): FS_IOC_GETFLAGS,
/// FS_IOC_SETFLAGS (an int, whatever the command's encoded size), FS_IOC_FSGETXATTR and
/// FS_IOC_FSSETXATTR (`struct fsxattr`, 28 bytes). (command, argument size, sets).
pub const FILEATTR_IOCTLS: [(u32, usize, bool); 4] =
    [(0x8008_6601, 4, false), (0x4008_6602, 4, true), (0x801c_581f, 28, false), (0x401c_5820, 28, true)];

/// An ioctl whose argument points at `arg` (read and/or written by the kernel).
pub fn ioctl_buf(fd: BorrowedFd, cmd: u32, arg: &mut [u8]) -> io::Result<()> {
    // SAFETY: `arg` is a live buffer of the size the command's argument has (the caller
    // checks it against FILEATTR_IOCTLS).
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), cmd as _, arg.as_mut_ptr()) })?;
    Ok(())
}

/// `ioctl(FICLONE)`: make `dst` share `src`'s extents (reflink).
pub fn ficlone(dst: BorrowedFd, src: BorrowedFd) -> io::Result<()> {
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: FICLONE takes the source fd as its integer argument.
    cvt(unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) })?;
    Ok(())
}

pub fn fsync(fd: BorrowedFd, datasync: bool) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { if datasync { libc::fdatasync(fd.as_raw_fd()) } else { libc::fsync(fd.as_raw_fd()) } })?;
    Ok(())
}

pub fn pread(fd: BorrowedFd, buf: &mut [u8], off: u64) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length.
    cvt_l(unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), off as i64) })
}

/// A read-only shared mapping of a range of a regular file's page cache, unmapped on drop.
///
/// It lets a READ reply be written to `/dev/fuse` straight from the file's page cache: one
/// copy (page cache to the FUSE page cache) instead of two (`pread` into a buffer, then the
/// buffer to the FUSE page cache).
///
/// Only the kernel may read the bytes, as the source of a write(2) or writev(2). If another
/// process truncates the file meanwhile, a userspace access to a page past the new end would
/// raise SIGBUS; the kernel's copy fails with EFAULT instead.
pub struct FileView {
    map: *mut libc::c_void,
    map_len: usize,
    skip: usize,
    len: usize,
}

impl FileView {
    /// Maps the bytes `[off, off + len)` of `fd`, cut at the file's end (`size`, from an
    /// `fstat` just before), with their pages faulted in (`MAP_POPULATE`, which reads them
    /// from disk if they are not cached). `None` when `off` is at or past the end.
    pub fn map(fd: BorrowedFd, off: u64, len: usize, size: u64) -> io::Result<Option<FileView>> {
        if off >= size || len == 0 {
            return Ok(None);
        }
        let len = (size - off).min(len as u64) as usize;
        let skip = (off % page_size() as u64) as usize;
        let map_len = skip + len;
        // SAFETY: a fresh mapping chosen by the kernel; nothing else refers to that range.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                (off - skip as u64) as libc::off_t,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Some(FileView { map, map_len, skip, len }))
    }

    /// The mapped bytes, to hand to a write(2) (see the type's note).
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping covers `skip + len` bytes and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.map.cast::<u8>().add(self.skip), self.len) }
    }
}

impl Drop for FileView {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`, which no slice outlives.
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

/// A page-aligned anonymous buffer (an io_uring entry's payload buffer) over whose first pages
/// a private mapping of a file's range can be laid for a while, so that the kernel, copying a
/// READ reply out of the buffer, copies it straight from the file's page cache: one copy where
/// `pread` into the buffer made two. [`PayloadBuf::restore`] puts anonymous memory back.
///
/// The file's pages are mapped private and writable: a kernel write into them (the next
/// request's payload) copies the page first and never reaches the file. Only the kernel reads
/// them (a fault in its copy is EFAULT, where a userspace read of a page the file no longer
/// reaches would raise SIGBUS), so [`PayloadBuf::bytes`] is only for a buffer with no file laid
/// over it.
pub struct PayloadBuf {
    base: *mut u8,
    len: usize,
    /// Bytes at the start mapped from a file (a multiple of the page size), 0 when none.
    laid: usize,
}

// SAFETY: the buffer is plain memory owned by the value; moving it to another thread moves
// that ownership.
unsafe impl Send for PayloadBuf {}

impl PayloadBuf {
    pub fn new(len: usize) -> io::Result<PayloadBuf> {
        let len = len.next_multiple_of(page_size());
        // SAFETY: a fresh anonymous mapping chosen by the kernel.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(PayloadBuf { base: base.cast(), len, laid: 0 })
    }

    /// The buffer's address, for the kernel.
    pub fn as_ptr(&self) -> *mut u8 {
        self.base
    }

    /// The buffer's length (a multiple of the page size).
    pub fn capacity(&self) -> usize {
        self.len
    }

    /// Bytes at the start that are a file's pages now (see [`PayloadBuf::lay_file`]).
    pub fn laid(&self) -> usize {
        self.laid
    }

    /// The buffer; it must have no file laid over it (call [`PayloadBuf::restore`] first).
    pub fn bytes(&mut self) -> &mut [u8] {
        assert_eq!(self.laid, 0, "payload buffer read while a file is laid over it");
        // SAFETY: `len` bytes of anonymous memory owned by `self`, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.base, self.len) }
    }

    /// Lays the pages holding `[off, off + len)` of `fd` over the start of the buffer (`off` a
    /// multiple of the page size, `len` at most the buffer's length, and within the file's
    /// size as last seen, so that every page laid is one the file has). Nothing is read here:
    /// the kernel's copy faults the pages in, reading around them as any fault on the file does.
    pub fn lay_file(&mut self, fd: BorrowedFd, off: u64, len: usize) -> io::Result<()> {
        let ps = page_size();
        if off % ps as u64 != 0 || len > self.len {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let map_len = len.next_multiple_of(ps);
        if map_len == 0 {
            return Ok(());
        }
        // SAFETY: replaces pages of this buffer only (MAP_FIXED within [base, base + len));
        // no slice of the buffer is alive (`bytes` needs `&mut self`).
        let r = unsafe {
            libc::mmap(
                self.base.cast(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                fd.as_raw_fd(),
                off as libc::off_t,
            )
        };
        if r == libc::MAP_FAILED {
            // The range holds what it held before, or nothing mapped: make it anonymous again.
            let e = io::Error::last_os_error();
            self.laid = self.laid.max(map_len);
            self.restore(0)?;
            return Err(e);
        }
        self.laid = self.laid.max(map_len);
        Ok(())
    }

    /// Puts anonymous memory back where a file was laid, keeping the first `keep` bytes (the
    /// payload the kernel wrote since: those pages are private copies already, safe to read).
    pub fn restore(&mut self, keep: usize) -> io::Result<()> {
        if self.laid == 0 {
            return Ok(());
        }
        let keep = keep.min(self.laid);
        let mut saved = Vec::new();
        if keep > 0 {
            // SAFETY: the first `keep` bytes were written by the kernel into private copies.
            saved.extend_from_slice(unsafe { std::slice::from_raw_parts(self.base, keep) });
        }
        // SAFETY: replaces this buffer's laid pages only, with fresh anonymous memory.
        let r = unsafe {
            libc::mmap(
                self.base.cast(),
                self.laid,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if r == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        self.laid = 0;
        // SAFETY: anonymous memory of at least `keep` bytes, owned by `self`.
        unsafe { std::ptr::copy_nonoverlapping(saved.as_ptr(), self.base, keep) };
        Ok(())
    }
}

impl Drop for PayloadBuf {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the buffer's range, which no slice outlives.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// The system's page size.
pub fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // SAFETY: plain libc call.
    *PAGE.get_or_init(|| unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize)
}

/// Starts reading `len` bytes at `off` into the page cache, without waiting for them
/// (POSIX_FADV_WILLNEED).
pub fn will_need(fd: BorrowedFd, off: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall.
    let r = unsafe { libc::posix_fadvise(fd.as_raw_fd(), off as i64, len as i64, libc::POSIX_FADV_WILLNEED) };
    if r == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(r)) }
}

pub fn pwrite(fd: BorrowedFd, buf: &[u8], off: u64) -> io::Result<usize> {
    // SAFETY: `buf` is readable for its length.
    cvt_l(unsafe { libc::pwrite(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), off as i64) })
}

pub fn ftruncate(fd: BorrowedFd, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len as i64) })?;
    Ok(())
}

pub fn fstatvfs(fd: BorrowedFd) -> io::Result<libc::statvfs> {
    let mut s = MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `s` is writable.
    cvt(unsafe { libc::fstatvfs(fd.as_raw_fd(), s.as_mut_ptr()) })?;
    // SAFETY: filled on success.
    Ok(unsafe { s.assume_init() })
}

/// `faccessat(dir, name, mode, AT_EACCESS)` is not used: permissions are checked by the kernel
/// (`default_permissions`). This only checks existence.
pub fn exists_at(dir: BorrowedFd, name: &CStr) -> io::Result<bool> {
    match fstatat(dir, name) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

// ---- process ------------------------------------------------------------------------------

pub fn geteuid() -> u32 {
    // SAFETY: always safe.
    unsafe { libc::geteuid() }
}

pub fn getegid() -> u32 {
    // SAFETY: always safe.
    unsafe { libc::getegid() }
}

pub fn umask(mask: u32) -> u32 {
    // SAFETY: always safe.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}

/// Grows this process's descriptor table to `n` slots, within the open-file limit `limit`, by
/// taking a descriptor at slot `n - 1` and closing it again (a table never shrinks). Returns
/// the slots asked for (0 when `n` or `limit` leave nothing to do). Meant for a process that
/// has one thread: the kernel waits for an RCU grace period at each growth of a table that
/// threads share (see `mount::FD_TABLE_MIN`).
pub fn reserve_fd_table(n: u64, limit: u64) -> io::Result<u64> {
    let n = n.min(limit).min(libc::c_int::MAX as u64);
    if n < 2 {
        return Ok(0);
    }
    let root = open_trusted(c"/", libc::O_PATH | libc::O_CLOEXEC, 0)?;
    // SAFETY: plain fcntl on a descriptor this function owns.
    let r = unsafe { libc::fcntl(root.as_raw_fd(), libc::F_DUPFD_CLOEXEC, (n - 1) as libc::c_int) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `r` was just returned by fcntl and is owned by nothing else.
    drop(unsafe { OwnedFd::from_raw_fd(r) });
    Ok(n)
}

/// Raises RLIMIT_NOFILE's soft limit as far as allowed (the hard limit, or nr_open as root).
pub fn raise_nofile_limit() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `r` is writable.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 0;
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(r.rlim_max);
    // Try to raise the hard limit too (works as root); fall back to the current hard limit.
    let want = libc::rlimit { rlim_cur: nr_open, rlim_max: nr_open.max(r.rlim_max) };
    // SAFETY: `want` is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
        return nr_open;
    }
    let soft = libc::rlimit { rlim_cur: r.rlim_max, rlim_max: r.rlim_max };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) } == 0 { r.rlim_max } else { r.rlim_cur }
}

/// Result of [`fork`].
pub enum Fork {
    Parent(i32),
    Child,
}

/// fork(2). Must be called while the process has a single thread.
pub fn fork() -> io::Result<Fork> {
    // SAFETY: the caller guarantees no other thread exists, so the child is consistent.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Fork::Child),
        p => Ok(Fork::Parent(p)),
    }
}

pub fn setsid() {
    // SAFETY: always safe.
    unsafe {
        libc::setsid();
    }
}

/// A pipe (read end, write end), close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for two fds.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both fds are fresh and owned by us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Points stdin, stdout and stderr at /dev/null (stderr only when `keep_stderr` is false).
pub fn redirect_stdio_to_null(keep_stderr: bool) {
    if let Ok(null) = open_trusted(c"/dev/null", libc::O_RDWR, 0) {
        for fd in [0, 1, 2] {
            if fd == 2 && keep_stderr {
                continue;
            }
            // SAFETY: dup2 onto a standard descriptor.
            unsafe {
                libc::dup2(null.as_raw_fd(), fd);
            }
        }
    }
}

/// The signals the server's signal thread takes: SIGTERM, SIGINT and SIGHUP (unmount), and
/// SIGUSR1 (statistics, as fuse-overlayfs; its default action would end the server and leave
/// its mount dead).
const SERVER_SIGNALS: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1];

fn server_sigset() -> MaybeUninit<libc::sigset_t> {
    let mut set = MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: sigset manipulation on a local set.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for s in SERVER_SIGNALS {
            libc::sigaddset(set.as_mut_ptr(), s);
        }
    }
    set
}

/// Blocks the server's signals in this thread (and threads it spawns later).
pub fn block_term_signals() {
    let set = server_sigset();
    // SAFETY: a valid, initialised set.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut());
    }
}

/// Blocks, in this thread and those it spawns later, the server's signals whose disposition is
/// not SIG_IGN; those stay ignored (a process started by `nohup`, or in the background by a
/// shell without job control, is to ignore them, and a blocked signal would be kept pending
/// and taken by a `sigwait` instead).
fn block_term_signals_not_ignored() {
    let mut set = server_sigset();
    for s in SERVER_SIGNALS {
        let mut old = MaybeUninit::<libc::sigaction>::zeroed();
        // SAFETY: sigaction(2) only reads the disposition into a local; sigdelset on a local
        // set.
        unsafe {
            if libc::sigaction(s, std::ptr::null(), old.as_mut_ptr()) == 0
                && old.assume_init_ref().sa_sigaction == libc::SIG_IGN
            {
                libc::sigdelset(set.as_mut_ptr(), s);
            }
        }
    }
    // SAFETY: a valid, initialised set.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut());
    }
}

/// For the command-line tools (the server has its own signal thread, `mount::run`): takes
/// the termination signals not ignored at start ([`block_term_signals_not_ignored`]) on a
/// thread named `signals`, which calls `on` with each (SIGUSR1 is passed over). Where the
/// thread cannot start, they keep their default actions.
pub fn take_term_signals(mut on: impl FnMut(i32) + Send + 'static) {
    block_term_signals_not_ignored();
    let spawned = std::thread::Builder::new().name("signals".into()).spawn(move || {
        loop {
            let sig = wait_term_signal();
            if sig != libc::SIGUSR1 {
                on(sig);
            }
        }
    });
    if let Err(e) = spawned {
        log::warn!("signal thread: {e}; a signal ends the process at once");
        unblock_term_signals();
    }
}

/// Unblocks what [`block_term_signals`] blocked, in this thread.
pub fn unblock_term_signals() {
    let set = server_sigset();
    // SAFETY: a valid, initialised set.
    unsafe {
        libc::pthread_sigmask(libc::SIG_UNBLOCK, set.as_ptr(), std::ptr::null_mut());
    }
}

/// Waits for one of the blocked server signals; returns its number.
pub fn wait_term_signal() -> i32 {
    let set = server_sigset();
    let mut sig = 0;
    // SAFETY: sigwait on a valid set of blocked signals.
    unsafe {
        libc::sigwait(set.as_ptr(), &mut sig);
    }
    sig
}

/// Waits at most `limit` for one of the blocked server signals; returns its number, or None
/// when the time ran out.
pub fn wait_term_signal_for(limit: std::time::Duration) -> Option<i32> {
    let set = server_sigset();
    let ts = libc::timespec { tv_sec: limit.as_secs() as libc::time_t, tv_nsec: limit.subsec_nanos() as _ };
    loop {
        // SAFETY: sigtimedwait on a valid set of blocked signals; no siginfo asked for.
        let r = unsafe { libc::sigtimedwait(set.as_ptr(), std::ptr::null_mut(), &ts) };
        if r > 0 {
            return Some(r);
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return None;
        }
    }
}

/// `makedev(major, minor)`.
pub fn makedev(major: u32, minor: u32) -> u64 {
    libc::makedev(major, minor)
}

pub fn major(dev: u64) -> u32 {
    libc::major(dev)
}

pub fn minor(dev: u64) -> u32 {
    libc::minor(dev)
}

/// Borrow helper for code that holds `Arc<OwnedFd>`.
pub fn bfd<T: AsFd>(f: &T) -> BorrowedFd<'_> {
    f.as_fd()
}

/// FUSE_DEV_IOC_BACKING_CLOSE: unregisters a passthrough backing file from a FUSE connection.
pub fn fuse_backing_close(dev: &OwnedFd, id: u32) -> io::Result<()> {
    // _IOW(229, 2, uint32_t)
    const FUSE_DEV_IOC_BACKING_CLOSE: libc::c_ulong = (1 << 30) | (4 << 16) | (229 << 8) | 2;
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), FUSE_DEV_IOC_BACKING_CLOSE as _, &id) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// The time slice server threads ask the scheduler for (EEVDF's custom slice, Linux 6.12+;
/// 100 µs is the least it takes), where the default is 0.7 ms times 1 + log2 of the CPUs
/// (1.4 ms on 2). A task whose slice is shorter than the running task's may take its CPU when
/// it wakes up; otherwise the running task keeps it until its own slice ends, which the
/// scheduler notices at its next tick (4 ms at `HZ=250`). A server thread that waits in the
/// middle of a request (an `fsync`, a disk read) and wakes up on a CPU busy with another task
/// then made its requester wait that tick too: beside two busy loops, `fdatasync` of a 4 KiB
/// write through layerfs took 3.97 ms (median of 500; `perf sched timehist`: the queue thread
/// waited 3.4-3.7 ms for its CPU after each disk write), against 0.13 ms on kernel overlayfs;
/// with this slice 0.19-0.27 ms (200 µs: 0.21-0.26, 300 µs: 0.16; 700 µs no longer helped:
/// 90th percentile 2.4 ms). The share of CPU a thread gets does not change, only how soon it
/// gets it; a thread that runs long is switched out more often while others wait.
pub const SERVER_SLICE_NS: u64 = 100_000;

/// `struct sched_attr` up to `sched_period` (`SCHED_ATTR_SIZE_VER0`).
#[repr(C)]
struct SchedAttr {
    size: u32,
    sched_policy: u32,
    sched_flags: u64,
    sched_nice: i32,
    sched_priority: u32,
    sched_runtime: u64,
    sched_deadline: u64,
    sched_period: u64,
}

/// Sets the calling thread to `SCHED_OTHER` with the [`SERVER_SLICE_NS`] slice, its nice value
/// unchanged. Kernels before 6.12 take the call and keep their own slice.
pub fn set_server_slice() -> io::Result<()> {
    // getpriority may return -1 as a value: errno tells.
    // SAFETY: plain libc calls on the calling thread.
    let nice = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, 0)
    };
    if nice == -1 && io::Error::last_os_error().raw_os_error() != Some(0) {
        return Err(io::Error::last_os_error());
    }
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        sched_policy: libc::SCHED_OTHER as u32,
        sched_flags: 0,
        sched_nice: nice,
        sched_priority: 0,
        sched_runtime: SERVER_SLICE_NS,
        sched_deadline: 0,
        sched_period: 0,
    };
    // SAFETY: sched_setattr(2) on the calling thread (pid 0) with a valid attribute struct.
    cvt_l(
        unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) } as libc::ssize_t
    )?;
    Ok(())
}

/// Gives the calling thread the [`SERVER_SLICE_NS`] slice if it runs as `SCHED_OTHER` (a
/// policy the user chose, such as `SCHED_BATCH` through `chrt`, is left alone); threads
/// started afterwards inherit it. Returns whether it was set.
pub fn take_server_slice() -> bool {
    // SAFETY: plain syscall on the calling thread.
    if unsafe { libc::sched_getscheduler(0) } != libc::SCHED_OTHER {
        return false;
    }
    match set_server_slice() {
        Ok(()) => true,
        Err(e) => {
            log::debug!("scheduler slice not set: {e}");
            false
        }
    }
}

/// Sets the calling thread's scheduling policy to `SCHED_IDLE`, or back to `SCHED_OTHER` (its
/// nice value unchanged, with the [`SERVER_SLICE_NS`] slice where the kernel has
/// `sched_setattr`). Leaving `SCHED_IDLE` takes `CAP_SYS_NICE` or a `RLIMIT_NICE` that allows
/// the thread's nice value; entering it is always allowed.
pub fn set_sched_idle(idle: bool) -> io::Result<()> {
    // Where sched_setattr fails (no such call, a seccomp filter refusing it by number), the
    // older call decides: it fails too where leaving SCHED_IDLE is not allowed.
    if !idle && set_server_slice().is_ok() {
        return Ok(());
    }
    let param = libc::sched_param { sched_priority: 0 };
    let policy = if idle { libc::SCHED_IDLE } else { libc::SCHED_OTHER };
    // SAFETY: plain syscall on the calling thread (pid 0) with a valid parameter struct.
    cvt(unsafe { libc::sched_setscheduler(0, policy, &param) })?;
    Ok(())
}

/// Runs `f` with the calling thread at `SCHED_IDLE` (`idle`) or at normal priority, and puts
/// the other policy back after, where the switch was made.
pub fn with_sched_idle<T>(idle: bool, f: impl FnOnce() -> T) -> T {
    let switched = set_sched_idle(idle).is_ok();
    let r = f();
    if switched {
        let _ = set_sched_idle(!idle);
    }
    r
}

const IOPRIO_WHO_PROCESS: libc::c_int = 1;
const IOPRIO_CLASS_SHIFT: u32 = 13;
const IOPRIO_CLASS_BE: libc::c_int = 2;

/// Makes the calling thread's I/O priority explicit where it is implied (class "none"): the
/// best-effort class at the level its nice value implies, which is what it has now. Threads
/// started after inherit it. An implied I/O priority follows the CPU policy, and a thread in
/// `SCHED_IDLE` gets the idle I/O class, whose reads mq-deadline serves after everyone else's,
/// even when nobody else reads. An I/O priority set by the user (`ionice`) is kept.
pub fn pin_io_priority() -> io::Result<()> {
    // SAFETY: plain syscalls on the calling thread (who = 0).
    let cur = cvt(unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0) } as libc::c_int)?;
    if cur >> IOPRIO_CLASS_SHIFT != 0 {
        return Ok(());
    }
    // SAFETY: as above; getpriority may return -1 legitimately, which clamps below.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let level = ((nice.clamp(-20, 19) + 20) / 5) as libc::c_int;
    let prio = (IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT) | level;
    // SAFETY: as above.
    cvt(unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, prio) } as libc::c_int)?;
    Ok(())
}

/// Restricts the calling thread to one CPU.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    pin_to_cpus(&[cpu])
}

/// Lets the calling thread run on `cpus` only; one it runs on now that is not among them
/// moves off it at once.
pub fn pin_to_cpus(cpus: &[usize]) -> io::Result<()> {
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Lets the calling thread run on every CPU again (undoes [`pin_to_cpu`], also inherited).
pub fn unpin() -> io::Result<()> {
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // Read once: threads started per many-layer lookup call this each.
    static POSSIBLE: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();
    for &cpu in POSSIBLE.get_or_init(|| cpu_list("possible")) {
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// The CPUs the calling thread may run on (`sched_getaffinity`); the online CPUs where the
/// kernel does not say.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills the set it is given, of the size it is told.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    let cpus: Vec<usize> = if r == 0 {
        (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
    } else {
        Vec::new()
    };
    if cpus.is_empty() { cpu_list("online") } else { cpus }
}

/// `FUSE_DEV_IOC_CLONE`: `_IOR(229, 0, uint32_t)`.
const FUSE_DEV_IOC_CLONE: libc::c_ulong = 0x8004_e500;

/// A clone of a FUSE session's `/dev/fuse` descriptor (`FUSE_DEV_IOC_CLONE`), non-blocking
/// with `nonblock`: it reads from the same connection, and a reply must be written to the
/// clone its request was read from.
pub fn fuse_dev_clone(session: BorrowedFd, nonblock: bool) -> io::Result<OwnedFd> {
    let flags = libc::O_RDWR | libc::O_CLOEXEC | if nonblock { libc::O_NONBLOCK } else { 0 };
    // SAFETY: plain open of a constant NUL-terminated path.
    let fd = cvt(unsafe { libc::open(c"/dev/fuse".as_ptr(), flags) })?;
    // SAFETY: fd was just opened and is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut src = session.as_raw_fd() as u32;
    // SAFETY: FUSE_DEV_IOC_CLONE reads one u32 (the descriptor to clone) through the pointer.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), FUSE_DEV_IOC_CLONE as _, &mut src) })?;
    Ok(fd)
}

/// Sets or clears `O_NONBLOCK` on the open file `fd` refers to (shared by its duplicates).
pub fn set_nonblocking(fd: BorrowedFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on a valid descriptor.
    let fl = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    let fl = if on { fl | libc::O_NONBLOCK } else { fl & !libc::O_NONBLOCK };
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl) })?;
    Ok(())
}

/// `read(2)` into `buf`.
pub fn read(fd: BorrowedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: read into a buffer we own, of its length.
    cvt_l(unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
}

/// Waits until `fd` is readable (or in error). An interrupted wait returns as well.
pub fn wait_readable(fd: BorrowedFd) {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, -1) };
}

/// `writev(2)` of `bufs` (`IoSlice` has `struct iovec`'s layout).
pub fn writev(fd: BorrowedFd, bufs: &[io::IoSlice]) -> io::Result<usize> {
    // SAFETY: IoSlice is guaranteed ABI-compatible with iovec; the slices outlive the call.
    cvt_l(unsafe { libc::writev(fd.as_raw_fd(), bufs.as_ptr().cast(), bufs.len() as libc::c_int) })
}

/// Frees a thread started by a server thread from what it inherited: the CPU the server
/// thread is pinned to and its `SCHED_IDLE` policy (see `uring::Placement`). For threads doing
/// work of their own (read-ahead, parallel probes), which should run wherever a CPU is free.
pub fn free_thread() {
    let _ = unpin();
    // SAFETY: plain syscall on the calling thread.
    if unsafe { libc::sched_getscheduler(0) } == libc::SCHED_IDLE {
        let _ = set_sched_idle(false);
    }
}

/// A CPU list as the kernel prints it ("0-3,8,10-11").
pub fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b) = (a.trim().parse::<usize>().ok()?, b.trim().parse::<usize>().ok()?);
        cpus.extend(a..=b.max(a));
    }
    Some(cpus)
}

/// The CPUs of `/sys/devices/system/cpu/{possible,online}` (`which`).
pub fn cpu_list(which: &str) -> Vec<usize> {
    std::fs::read_to_string(format!("/sys/devices/system/cpu/{which}"))
        .ok()
        .and_then(|s| parse_cpu_list(&s))
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect())
}

/// A close-on-exec duplicate of `fd`.
pub fn dup_cloexec(fd: BorrowedFd) -> io::Result<OwnedFd> {
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(unsafe { OwnedFd::from_raw_fd(r) }) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    /// The `FDSize` line of /proc/self/status: the slots of this process's descriptor table.
    fn fd_table_size() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("FDSize:")).unwrap();
        line["FDSize:".len()..].trim().parse().unwrap()
    }

    #[test]
    fn reserving_descriptor_slots_grows_the_table_and_leaves_the_slot_free() {
        let limit = raise_nofile_limit();
        let before = fd_table_size();
        let want = (before * 4).max(1 << 14);
        assert!(limit >= want, "open-file limit {limit}: cannot test a table of {want}");
        assert_eq!(reserve_fd_table(want, limit).unwrap(), want);
        assert!(fd_table_size() >= want, "{} slots after asking for {want}", fd_table_size());
        // SAFETY: F_GETFD only asks whether the descriptor is open.
        assert_eq!(unsafe { libc::fcntl((want - 1) as libc::c_int, libc::F_GETFD) }, -1, "slot left open");
        assert_eq!(reserve_fd_table(want * 4, want).unwrap(), want, "capped at the limit given");
        assert_eq!(reserve_fd_table(8, 1).unwrap(), 0);
    }

    #[test]
    fn fuse_clone_ioctl_is_ior_229_0_u32() {
        // _IOR(type, nr, size) = (2 << 30) | (size << 16) | (type << 8) | nr
        assert_eq!(FUSE_DEV_IOC_CLONE, (2 << 30) | (4 << 16) | (229 << 8));
    }

    /// What the kernel reads from the first `n` bytes of `buf` (through a pipe).
    fn kernel_reads(buf: &PayloadBuf, n: usize) -> Vec<u8> {
        let (mut r, w) = std::io::pipe().unwrap();
        // SAFETY: the kernel reads `n` bytes at the buffer's address, which has at least `n`.
        let wrote = unsafe { libc::write(w.as_raw_fd(), buf.as_ptr().cast(), n) };
        assert_eq!(wrote, n as isize);
        drop(w);
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut r, &mut out).unwrap();
        out
    }

    #[test]
    fn payload_buffer_lends_its_start_to_a_files_pages_and_takes_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let ps = page_size();
        let data: Vec<u8> = (0..3 * ps + 100).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("f"), &data).unwrap();
        let f = std::fs::File::open(dir.path().join("f")).unwrap();
        let mut buf = PayloadBuf::new(8 * ps).unwrap();
        buf.bytes().fill(7);
        // The file's pages from its second page on: what the kernel reads there is the file's.
        buf.lay_file(f.as_fd(), ps as u64, 2 * ps + 100).unwrap();
        assert_eq!(buf.laid(), 3 * ps);
        assert_eq!(kernel_reads(&buf, 2 * ps + 100), &data[ps..]);
        // Past the laid pages the buffer is still its own.
        assert_eq!(kernel_reads(&buf, 4 * ps)[3 * ps..], vec![7u8; ps]);
        // The kernel writing into laid pages (the next request) writes private copies.
        let (r, mut w) = std::io::pipe().unwrap();
        std::io::Write::write_all(&mut w, b"next request").unwrap();
        // SAFETY: the kernel writes at most 12 bytes at the buffer's address.
        assert_eq!(unsafe { libc::read(r.as_raw_fd(), buf.as_ptr().cast(), 12) }, 12);
        buf.restore(12).unwrap();
        assert_eq!(buf.laid(), 0);
        assert_eq!(&buf.bytes()[..12], b"next request");
        // Where the file was: fresh memory after what was kept.
        assert!(buf.bytes()[12..3 * ps].iter().all(|&b| b == 0));
        assert_eq!(buf.bytes()[3 * ps..4 * ps], vec![7u8; ps]);
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), data, "the file changed");
        // Unaligned offsets and lengths past the buffer are refused, and leave it whole.
        assert!(buf.lay_file(f.as_fd(), 1, ps).is_err());
        assert!(buf.lay_file(f.as_fd(), 0, 9 * ps).is_err());
        assert_eq!(buf.laid(), 0);
        assert_eq!(&buf.bytes()[..12], b"next request");
    }

    #[test]
    fn allowed_cpus_are_some() {
        assert!(!allowed_cpus().is_empty());
    }

    fn set(path: &std::path::Path, name: &CStr, v: &[u8]) {
        let p = CString::new(path.as_os_str().as_bytes()).unwrap();
        setxattr(&p, name, v, 0, false).unwrap();
    }

    #[test]
    fn xattrs_read_by_directory_name_and_pinned_fd_as_through_proc() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        std::os::unix::fs::symlink("f", t.path().join("s")).unwrap();
        let long = vec![b'v'; 1000]; // past the first 256-byte try
        set(t.path(), c"user.a", b"1");
        set(&f, c"user.b", &long);
        use std::os::unix::fs::OpenOptionsExt;
        let dir: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(t.path())
            .unwrap()
            .into();
        let pinned = openat(dir.as_fd(), c"f", libc::O_PATH, 0).unwrap();
        let d = XattrAt::Dir(dir.as_raw_fd());
        assert_eq!(d.get(c"user.a").unwrap(), b"1");
        assert!(d.list().unwrap().split(|&b| b == 0).any(|n| n == b"user.a"));
        let n = XattrAt::Name(dir.as_raw_fd(), c"f");
        assert_eq!(n.get(c"user.b").unwrap(), long);
        assert_eq!(n.get_into(c"user.b", &mut []).unwrap(), 1000);
        assert_eq!(n.get(c"user.none").unwrap_err().raw_os_error(), Some(libc::ENODATA));
        assert_eq!(XattrAt::Pinned(pinned.as_raw_fd()).get(c"user.b").unwrap(), long);
        // A symlink is not followed: its own (no) xattrs, not its target's.
        assert!(XattrAt::Name(dir.as_raw_fd(), c"s").get(c"user.b").is_err());
        assert!(XattrAt::Name(dir.as_raw_fd(), c"missing").get(c"user.b").is_err());
        // The same answers through /proc.
        let (p, follow) = n.proc_path();
        assert_eq!(getxattr(&p, c"user.b", follow).unwrap(), long);
        assert_eq!(listxattr(&p, follow).unwrap(), n.list().unwrap());
    }

    #[test]
    fn an_internal_journal_is_told_by_its_jbd2_name() {
        assert!(journal_inside("loop0-8", "loop0"));
        assert!(journal_inside("dm-1-8", "dm-1"));
        assert!(journal_inside("nvme0n1p2-12", "nvme0n1p2"));
        // Another device's journal, and an external journal (named after its own device).
        assert!(!journal_inside("loop10-8", "loop1"));
        assert!(!journal_inside("dm-12-8", "dm-1"));
        assert!(!journal_inside("loop2", "loop2"));
        assert!(!journal_inside("loop2-", "loop2"));
        assert!(!journal_inside("loop2-8x", "loop2"));
    }

    #[test]
    fn super_block_options_are_read_from_the_device_s_mountinfo_line() {
        let info = "22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/dm-0 rw,data=ordered\n\
                    40 22 7:1 /sub /mnt/a\\040b rw master:3 - xfs /dev/loop1 rw,attr2,rtdev=/dev/loop2,noquota\n\
                    41 22 7:1 / /mnt/c rw - xfs /dev/loop1 rw,attr2,rtdev=/dev/loop2,noquota\n";
        assert_eq!(super_options_in(info, 253, 0), Some("rw,data=ordered"));
        assert_eq!(super_options_in(info, 7, 1), Some("rw,attr2,rtdev=/dev/loop2,noquota"));
        assert_eq!(super_options_in(info, 7, 10), None);
        assert_eq!(super_options_in("garbage\n", 7, 1), None);
    }
}
