//! Differential runner shared by `diff_write.rs`, `prop_write.rs` and `regressions.rs`.
//!
//! A scenario is written once against a mount root ([`Ctx`]) and run on a kernel overlayfs
//! mount and on a layerfs mount built from byte-identical copies of the same layers
//! ([`Stack`]). The runner then compares, in this order:
//! 1. the step logs: every step's description (which includes what it read back) and errno;
//! 2. the merged trees (kind, mode, owner, size, content hash, user xattrs, mtimes);
//! 3. after unmounting, the canonical upper directories (whiteout forms and opaque markers
//!    normalised, private xattrs dropped) and the hard-link structure of the uppers;
//! 4. that no lower layer changed (strict snapshot, private xattrs and directory mtimes
//!    included), and that layerfs left `WORKDIR/work` empty.
//!
//! Anything not in [`TOLERATED`] that differs fails the test with a readable diff.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::common::*;

pub mod prop;

/// Differences the comparison deliberately does not look at, each with the reason. Nothing
/// else is tolerated.
pub const TOLERATED: &[(&str, &str)] = &[
    (
        "st_ino values",
        "inode numbers are implementation specific (kernel with xino=off vs layerfs's own numbering); only inode identity between names (same_ino steps) and st_nlink of non-directories are compared",
    ),
    (
        "directory st_nlink",
        "both report 1 for merged directories, but the count for pure upper/lower directories depends on subdirectory bookkeeping nobody relies on",
    ),
    ("atime", "layerfs mounts noatime by default; the kernel mount uses relatime"),
    ("ctime", "always the wall clock of the change"),
    (
        "directory mtimes in the upper",
        "the canonical upper leaves them out; the merged view compares them by the next rule",
    ),
    (
        "mtime of files and directories changed during the scenario",
        "the two mounts run one after the other, so wall-clock times differ; mtimes are compared exactly when either side shows a time from before the scenario started (copy-up must keep the lower mtime, and a copy-up into a directory must not change the directory's)",
    ),
    (
        "private xattrs in upper (trusted.overlay.*, user.overlay.*, user.fuseoverlayfs.*)",
        "origin/impure/etc. are index/bookkeeping data of each implementation; opaque markers are normalised instead",
    ),
    (
        "whiteout and opaque forms in upper",
        "char 0/0 vs .wh.NAME and trusted/user opaque xattr vs .wh..wh..opq are equivalent; canonical_upper normalises them",
    ),
    (
        "kernel whiteouts share one inode",
        "the kernel makes every whiteout a hard link of one shared 0/0 device; whiteouts are left out of the upper hard-link groups",
    ),
    ("st_blocks, st_blksize, st_dev", "storage details"),
    (
        "merged hard-link groups the kernel splits in a user namespace",
        "there the kernel shows a copied-up file's lower number under its old name and its upper number under a new link; layerfs's groups must contain the kernel's",
    ),
    (
        "the kernel's ESTALE for a rename between two links of one file in a user namespace",
        "the kernel takes them for two inodes there (above); layerfs does nothing and succeeds, as POSIX and the kernel as root do; the trees must still match",
    ),
    (
        "kernel WORKDIR contents",
        "the kernel keeps its own scratch entries; only layerfs's WORKDIR/work must be empty",
    ),
];

/// Behaviour where layerfs deliberately differs from the kernel; tested one-sidedly.
pub const KNOWN_DIVERGENCES: &[(&str, &str)] = &[(
    ".wh.* names through the mount",
    "layerfs refuses to create entries named .wh.* (EINVAL) since such a name would be read back as a whiteout by fuse-overlayfs-style layers; kernel overlayfs stores them as ordinary files",
)];

// ---- fixtures --------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Item {
    Dir(String, u32),
    File(String, Vec<u8>, u32),
    Symlink(String, String),
    HardLink(String, String),
    Fifo(String),
    CharDev(String, u32, u32),
    /// Kernel form: char device 0/0.
    Whiteout(String),
    /// trusted.overlay.opaque=y (user.overlay.opaque in a user namespace) on an existing
    /// directory (creates it if missing).
    Opaque(String),
    Xattr(String, String, Vec<u8>),
    Owner(String, u32, u32),
    Mtime(String, i64),
}

/// The content of one layer (or of the initial upper), in creation order.
#[derive(Clone, Debug, Default)]
pub struct Layer {
    items: Vec<Item>,
}

impl Layer {
    pub fn new() -> Self {
        Layer::default()
    }
    pub fn dir(mut self, p: &str) -> Self {
        self.items.push(Item::Dir(p.into(), 0o755));
        self
    }
    pub fn dir_mode(mut self, p: &str, mode: u32) -> Self {
        self.items.push(Item::Dir(p.into(), mode));
        self
    }
    pub fn file(mut self, p: &str, data: &str) -> Self {
        self.items.push(Item::File(p.into(), data.as_bytes().to_vec(), 0o644));
        self
    }
    pub fn file_mode(mut self, p: &str, data: &str, mode: u32) -> Self {
        self.items.push(Item::File(p.into(), data.as_bytes().to_vec(), mode));
        self
    }
    pub fn symlink(mut self, p: &str, target: &str) -> Self {
        self.items.push(Item::Symlink(p.into(), target.into()));
        self
    }
    pub fn hardlink(mut self, p: &str, existing: &str) -> Self {
        self.items.push(Item::HardLink(p.into(), existing.into()));
        self
    }
    pub fn fifo(mut self, p: &str) -> Self {
        self.items.push(Item::Fifo(p.into()));
        self
    }
    pub fn chardev(mut self, p: &str, major: u32, minor: u32) -> Self {
        self.items.push(Item::CharDev(p.into(), major, minor));
        self
    }
    pub fn whiteout(mut self, p: &str) -> Self {
        self.items.push(Item::Whiteout(p.into()));
        self
    }
    pub fn opaque(mut self, p: &str) -> Self {
        self.items.push(Item::Opaque(p.into()));
        self
    }
    pub fn xattr(mut self, p: &str, name: &str, value: &str) -> Self {
        self.items.push(Item::Xattr(p.into(), name.into(), value.as_bytes().to_vec()));
        self
    }
    pub fn owner(mut self, p: &str, uid: u32, gid: u32) -> Self {
        self.items.push(Item::Owner(p.into(), uid, gid));
        self
    }
    pub fn mtime(mut self, p: &str, secs: i64) -> Self {
        self.items.push(Item::Mtime(p.into(), secs));
        self
    }

    fn build(&self, root: &Path) {
        fs::create_dir_all(root).unwrap();
        let mut mtimes = Vec::new();
        for it in &self.items {
            match it {
                Item::Dir(p, mode) => {
                    let q = root.join(p);
                    fs::create_dir_all(&q).unwrap();
                    chmod_raw(&q, *mode);
                }
                Item::File(p, data, mode) => {
                    let q = root.join(p);
                    mkparent(&q);
                    fs::write(&q, data).unwrap();
                    chmod_raw(&q, *mode);
                }
                Item::Symlink(p, t) => {
                    let q = root.join(p);
                    mkparent(&q);
                    std::os::unix::fs::symlink(t, &q).unwrap();
                }
                Item::HardLink(p, e) => {
                    let q = root.join(p);
                    mkparent(&q);
                    fs::hard_link(root.join(e), &q).unwrap();
                }
                Item::Fifo(p) => {
                    let q = root.join(p);
                    mkparent(&q);
                    assert_eq!(unsafe { libc::mknod(cpath(&q).as_ptr(), libc::S_IFIFO | 0o644, 0) }, 0);
                }
                Item::CharDev(p, ma, mi) => {
                    let q = root.join(p);
                    mkparent(&q);
                    let dev = libc::makedev(*ma, *mi);
                    assert_eq!(unsafe { libc::mknod(cpath(&q).as_ptr(), libc::S_IFCHR | 0o600, dev) }, 0);
                }
                Item::Whiteout(p) => {
                    let q = root.join(p);
                    mkparent(&q);
                    assert_eq!(
                        unsafe { libc::mknod(cpath(&q).as_ptr(), libc::S_IFCHR, 0) },
                        0,
                        "whiteout {p}"
                    );
                }
                Item::Opaque(p) => {
                    let q = root.join(p);
                    fs::create_dir_all(&q).unwrap();
                    // In a user namespace the kernel (`userxattr`) reads the user form.
                    let name =
                        if in_user_namespace() { "user.overlay.opaque" } else { "trusted.overlay.opaque" };
                    set_xattr_raw(&q, name, b"y");
                }
                Item::Xattr(p, n, v) => set_xattr_raw(&root.join(p), n, v),
                Item::Owner(p, u, g) => {
                    let r = unsafe { libc::lchown(cpath(&root.join(p)).as_ptr(), *u, *g) };
                    assert_eq!(r, 0);
                }
                Item::Mtime(p, s) => mtimes.push((root.join(p), *s)),
            }
        }
        // Fixed times for everything (so "copy-up keeps mtime" is visible), then explicit ones.
        set_all_mtimes(root, 1_600_000_000);
        for (p, s) in mtimes {
            set_mtime_raw(&p, s);
        }
    }
}

fn mkparent(p: &Path) {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).unwrap();
    }
}

pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn chmod_raw(p: &Path, mode: u32) {
    assert_eq!(unsafe { libc::chmod(cpath(p).as_ptr(), mode) }, 0);
}

fn set_xattr_raw(p: &Path, n: &str, v: &[u8]) {
    let cn = CString::new(n).unwrap();
    let r = unsafe { libc::lsetxattr(cpath(p).as_ptr(), cn.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    assert_eq!(r, 0, "setxattr {} {n}: {}", p.display(), std::io::Error::last_os_error());
}

fn set_mtime_raw(p: &Path, s: i64) {
    let ts = [libc::timespec { tv_sec: s, tv_nsec: 0 }, libc::timespec { tv_sec: s, tv_nsec: 0 }];
    let r =
        unsafe { libc::utimensat(libc::AT_FDCWD, cpath(p).as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    assert_eq!(r, 0);
}

fn set_all_mtimes(root: &Path, s: i64) {
    // Children first so directory times are not bumped afterwards.
    if let Ok(rd) = fs::read_dir(root) {
        for e in rd.flatten() {
            if e.file_type().unwrap().is_dir() {
                set_all_mtimes(&e.path(), s);
            } else {
                set_mtime_raw(&e.path(), s);
            }
        }
    }
    set_mtime_raw(root, s);
}

/// Lower layers (top first) and an optional initial upper. `read_only` mounts without upper.
#[derive(Clone, Debug, Default)]
pub struct Stack {
    pub lowers: Vec<Layer>,
    pub upper: Layer,
    pub read_only: bool,
}

impl Stack {
    pub fn new(lowers: Vec<Layer>) -> Self {
        Stack { lowers, upper: Layer::new(), read_only: false }
    }
    pub fn with_upper(mut self, u: Layer) -> Self {
        self.upper = u;
        self
    }
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }
    /// Writes the layers as `root/l0..lN` and `root/u`.
    pub fn build(&self, root: &Path) {
        for (i, l) in self.lowers.iter().enumerate() {
            l.build(&root.join(format!("l{i}")));
        }
        self.upper.build(&root.join("u"));
    }
}

// ---- the two sides ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    Kernel,
    Layerfs,
}

impl Impl {
    pub fn name(self) -> &'static str {
        match self {
            Impl::Kernel => "kernel",
            Impl::Layerfs => "layerfs",
        }
    }
}

/// One implementation's copy of the layers, and its mount.
pub struct Side {
    pub imp: Impl,
    pub base: PathBuf,
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
    pub read_only: bool,
    pub mounted: Option<Mounted>,
    pub extra: String,
}

impl Side {
    /// Copies the built stack at `src` into `base` (fresh) for implementation `imp`.
    pub fn prepare(imp: Impl, src: &Path, base: &Path, nlowers: usize, read_only: bool) -> Side {
        let _ = fs::remove_dir_all(base);
        fs::create_dir_all(base).unwrap();
        let mut lowers = Vec::new();
        for i in 0..nlowers {
            let d = base.join(format!("l{i}"));
            fs::create_dir_all(&d).unwrap();
            copy_tree(&src.join(format!("l{i}")), &d);
            lowers.push(d);
        }
        let upper = base.join("u");
        fs::create_dir_all(&upper).unwrap();
        copy_tree(&src.join("u"), &upper);
        let work = base.join("w");
        fs::create_dir_all(&work).unwrap();
        let mnt = base.join("m");
        fs::create_dir_all(&mnt).unwrap();
        Side {
            imp,
            base: base.to_path_buf(),
            lowers,
            upper,
            work,
            mnt,
            read_only,
            mounted: None,
            extra: String::new(),
        }
    }

    pub fn mount(&mut self) {
        assert!(self.mounted.is_none());
        let uw = if self.read_only { None } else { Some((self.upper.as_path(), self.work.as_path())) };
        self.mounted = Some(match self.imp {
            Impl::Kernel => mount_overlay(&self.lowers, uw, &self.mnt),
            Impl::Layerfs => mount_layerfs(&self.lowers, uw, &self.mnt, &self.extra),
        });
    }

    pub fn unmount(&mut self) {
        if let Some(mut m) = self.mounted.take() {
            m.unmount();
        }
        assert!(!is_mounted(&self.mnt), "{} still mounted at {}", self.imp.name(), self.mnt.display());
        if self.imp == Impl::Layerfs {
            // The next mount at this path starts once the old server is gone (a server still
            // exiting once took a new mount down with it: regressions.rs,
            // regression_quick_remount_keeps_new_mount, fixed since).
            wait_server_exit(&self.mnt);
        }
    }
}

/// Pids of processes whose command line has `mnt` as an argument (layerfs servers for it).
pub fn servers_for(mnt: &Path) -> Vec<i32> {
    let want = mnt.as_os_str().as_bytes();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else { continue };
        if cmd.split(|&b| b == 0).any(|a| a == want)
            && cmd.split(|&b| b == 0).next().is_some_and(|a| a.ends_with(b"layerfs"))
        {
            out.push(pid);
        }
    }
    out
}

/// Waits (up to 10 s) until no layerfs server for `mnt` is running.
pub fn wait_server_exit(mnt: &Path) {
    let t = std::time::Instant::now();
    while !servers_for(mnt).is_empty() {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "layerfs server for {} did not exit",
            mnt.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

// ---- scenario context ------------------------------------------------------------------------

/// What a scenario acts through: paths are relative to the mount root; every step is logged
/// with its description and errno (0 on success), never unwrapped.
pub struct Ctx<'a> {
    pub side: &'a mut Side,
    pub log: Vec<(String, i32)>,
    fds: BTreeMap<u32, fs::File>,
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
}

fn rc(r: libc::c_int) -> i32 {
    if r < 0 { last_errno() } else { 0 }
}

/// A raw call's result (negative: `errno`) as an `io::Result`.
fn io_rc(r: libc::c_int) -> std::io::Result<()> {
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

fn short(data: &[u8]) -> String {
    if data.len() <= 64 {
        format!("{:?}", String::from_utf8_lossy(data))
    } else {
        use sha2::Digest;
        let h = sha2::Sha256::digest(data);
        format!("<{} bytes sha {:02x}{:02x}{:02x}{:02x}>", data.len(), h[0], h[1], h[2], h[3])
    }
}

/// The entries of directory descriptor `fd` from its start, as `name:type` (the `d_type`
/// letter), sorted, without `.` and `..`.
fn list_fd(fd: i32) -> std::io::Result<Vec<String>> {
    if unsafe { libc::lseek(fd, 0, libc::SEEK_SET) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 32 << 10];
    let mut out = Vec::new();
    loop {
        let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if n == 0 {
            break;
        }
        let mut off = 0usize;
        while off < n as usize {
            // struct linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name.
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            let ty = buf[off + 18];
            let name = &buf[off + 19..off + reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if name != b"." && name != b".." {
                let t = match ty {
                    libc::DT_REG => 'f',
                    libc::DT_DIR => 'd',
                    libc::DT_LNK => 'l',
                    libc::DT_CHR => 'c',
                    libc::DT_FIFO => 'p',
                    libc::DT_UNKNOWN => '?',
                    _ => 'o',
                };
                out.push(format!("{}:{t}", String::from_utf8_lossy(name)));
            }
            off += reclen;
        }
    }
    out.sort();
    Ok(out)
}

/// The names of a `listxattr` answer other than `security.*` and `system.*`, sorted and
/// joined with commas.
fn xattr_names(list: &[u8]) -> String {
    let mut names: Vec<String> = list
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).to_string())
        .filter(|n| !n.starts_with("security.") && !n.starts_with("system."))
        .collect();
    names.sort();
    names.join(",")
}

impl<'a> Ctx<'a> {
    pub fn new(side: &'a mut Side) -> Self {
        Ctx { side, log: Vec::new(), fds: BTreeMap::new() }
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        if rel.is_empty() || rel == "." { self.side.mnt.clone() } else { self.side.mnt.join(rel) }
    }

    fn c(&self, rel: &str) -> CString {
        cpath(&self.p(rel))
    }

    pub fn rec(&mut self, step: String, e: i32) -> i32 {
        self.log.push((step, e));
        e
    }

    /// A free-form note (errno 0), e.g. a value computed by the scenario.
    pub fn note(&mut self, s: String) {
        self.log.push((s, 0));
    }

    // -- files

    /// open(O_WRONLY|O_CREAT|O_TRUNC, 0644) and write.
    pub fn create(&mut self, rel: &str, data: &str) -> i32 {
        let r = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(libc::O_NONBLOCK)
            .open(self.p(rel));
        let r = r.and_then(|mut f| std::io::Write::write_all(&mut f, data.as_bytes()));
        self.rec(format!("create {rel} {data:?}"), errno(&r))
    }

    pub fn create_excl(&mut self, rel: &str) -> i32 {
        let r = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NONBLOCK)
            .open(self.p(rel));
        self.rec(format!("create_excl {rel}"), errno(&r))
    }

    pub fn append(&mut self, rel: &str, data: &str) -> i32 {
        let r = fs::OpenOptions::new().append(true).custom_flags(libc::O_NONBLOCK).open(self.p(rel));
        let r = r.and_then(|mut f| std::io::Write::write_all(&mut f, data.as_bytes()));
        self.rec(format!("append {rel} {data:?}"), errno(&r))
    }

    pub fn write_at(&mut self, rel: &str, off: u64, data: &str) -> i32 {
        use std::os::unix::fs::FileExt;
        let r = fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(self.p(rel));
        let r = r.and_then(|f| f.write_all_at(data.as_bytes(), off));
        self.rec(format!("pwrite {rel} @{off} {data:?}"), errno(&r))
    }

    /// open(O_WRONLY|O_TRUNC) without writing.
    pub fn open_trunc(&mut self, rel: &str) -> i32 {
        let r = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(self.p(rel));
        self.rec(format!("open O_TRUNC {rel}"), errno(&r))
    }

    /// open with raw flags, then close.
    pub fn open_flags(&mut self, rel: &str, flags: i32, what: &str) -> i32 {
        let fd =
            unsafe { libc::open(self.c(rel).as_ptr(), flags | libc::O_CLOEXEC | libc::O_NONBLOCK, 0o644) };
        let e = rc(fd);
        if fd >= 0 {
            unsafe { libc::close(fd) };
        }
        self.rec(format!("open {what} {rel}"), e)
    }

    pub fn read(&mut self, rel: &str) -> i32 {
        // O_NONBLOCK everywhere: a fifo must never block a scenario.
        let r = fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(self.p(rel)).and_then(
            |mut f| {
                let mut v = Vec::new();
                std::io::Read::read_to_end(&mut f, &mut v).map(|_| v)
            },
        );
        let s = match &r {
            Ok(d) => short(d),
            Err(_) => String::new(),
        };
        self.rec(format!("read {rel} -> {s}"), errno(&r))
    }

    pub fn truncate(&mut self, rel: &str, len: i64) -> i32 {
        let e = rc(unsafe { libc::truncate(self.c(rel).as_ptr(), len) });
        self.rec(format!("truncate {rel} {len}"), e)
    }

    pub fn fallocate(&mut self, rel: &str, mode: i32, off: i64, len: i64) -> i32 {
        let r = fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(self.p(rel));
        let e = match r {
            Ok(f) => rc(unsafe { libc::fallocate(f.as_raw_fd(), mode, off, len) }),
            Err(e) => e.raw_os_error().unwrap_or(-1),
        };
        self.rec(format!("fallocate {rel} mode={mode:#x} {off}+{len}"), e)
    }

    /// open O_RDWR, mmap MAP_SHARED the first `len` bytes, copy `data` at `off`, msync,
    /// munmap, close.
    pub fn mmap_write(&mut self, rel: &str, len: usize, off: usize, data: &str) -> i32 {
        let e = (|| -> i32 {
            let fd = unsafe {
                libc::open(self.c(rel).as_ptr(), libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK)
            };
            if fd < 0 {
                return last_errno();
            }
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                let e = last_errno();
                unsafe { libc::close(fd) };
                return e;
            }
            unsafe {
                std::ptr::copy_nonoverlapping(data.as_ptr(), (p as *mut u8).add(off), data.len());
                let r = libc::msync(p, len, libc::MS_SYNC);
                let e = rc(r);
                libc::munmap(p, len);
                libc::close(fd);
                e
            }
        })();
        self.rec(format!("mmap_write {rel} len={len} @{off} {data:?}"), e)
    }

    // -- handles kept open across steps

    pub fn open_keep(&mut self, h: u32, rel: &str, write: bool) -> i32 {
        let r =
            fs::OpenOptions::new().read(true).write(write).custom_flags(libc::O_NONBLOCK).open(self.p(rel));
        let e = errno(&r);
        if let Ok(f) = r {
            self.fds.insert(h, f);
        }
        self.rec(format!("open#{h} {rel} write={write}"), e)
    }

    /// The descriptor held in slot `h`; EBADF for an empty slot.
    fn held(&self, h: u32) -> std::io::Result<&fs::File> {
        self.fds.get(&h).ok_or_else(|| std::io::Error::from_raw_os_error(libc::EBADF))
    }

    pub fn fd_write_at(&mut self, h: u32, off: u64, data: &str) -> i32 {
        use std::os::unix::fs::FileExt;
        let r = self.held(h).and_then(|f| f.write_all_at(data.as_bytes(), off));
        self.rec(format!("fd#{h} pwrite @{off} {data:?}"), errno(&r))
    }

    /// Reads what the held descriptor shows from offset 0, up to 256 KiB.
    pub fn fd_read(&mut self, h: u32) -> i32 {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; 256 << 10];
        let r = self.held(h).and_then(|f| {
            let mut n = 0;
            while n < buf.len() {
                match f.read_at(&mut buf[n..], n as u64)? {
                    0 => break,
                    k => n += k,
                }
            }
            Ok(n)
        });
        let s = match &r {
            Ok(n) => short(&buf[..*n]),
            Err(_) => String::new(),
        };
        self.rec(format!("fd#{h} pread -> {s}"), errno(&r))
    }

    pub fn fd_stat(&mut self, h: u32) -> i32 {
        let r = self.held(h).and_then(|f| f.metadata());
        let s = match &r {
            Ok(m) => format!("size={} nlink={} mode={:o}", m.size(), m.nlink(), m.mode()),
            Err(_) => String::new(),
        };
        self.rec(format!("fd#{h} fstat -> {s}"), errno(&r))
    }

    /// Lists a held directory from its start (`lseek` to 0, the rewinddir that POSIX says
    /// shows the directory as it is now, then `getdents64` to the end): the names other than
    /// `.` and `..` with their `d_type`, sorted.
    pub fn fd_list(&mut self, h: u32) -> i32 {
        let r = self.held(h).and_then(|f| list_fd(f.as_raw_fd()));
        let s = match &r {
            Ok(v) => v.join(","),
            Err(_) => String::new(),
        };
        self.rec(format!("fd#{h} getdents -> [{s}]"), errno(&r))
    }

    /// `openat(O_WRONLY|O_CREAT|O_TRUNC)` of `leaf` relative to a held directory descriptor,
    /// and a write: the directory as it is now, wherever a rename moved it.
    pub fn fd_create_at(&mut self, h: u32, leaf: &str, data: &str) -> i32 {
        let name = CString::new(leaf).unwrap();
        let r = self.held(h).and_then(|d| {
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC | libc::O_NONBLOCK;
            let fd = unsafe { libc::openat(d.as_raw_fd(), name.as_ptr(), flags, 0o644) };
            io_rc(fd)?;
            let f = unsafe { <fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            std::io::Write::write_all(&mut &f, data.as_bytes())
        });
        self.rec(format!("fd#{h} openat {leaf} create {data:?}"), errno(&r))
    }

    /// `unlinkat` of `leaf` relative to a held directory descriptor.
    pub fn fd_unlink_at(&mut self, h: u32, leaf: &str) -> i32 {
        let name = CString::new(leaf).unwrap();
        let r = self.held(h).and_then(|d| io_rc(unsafe { libc::unlinkat(d.as_raw_fd(), name.as_ptr(), 0) }));
        self.rec(format!("fd#{h} unlinkat {leaf}"), errno(&r))
    }

    /// `renameat` from `la` in held directory `a` to `lb` in held directory `b`.
    pub fn fd_rename_at(&mut self, a: u32, la: &str, b: u32, lb: &str) -> i32 {
        let (na, nb) = (CString::new(la).unwrap(), CString::new(lb).unwrap());
        let r = self.held(a).and_then(|da| {
            let db = self.held(b)?;
            io_rc(unsafe { libc::renameat(da.as_raw_fd(), na.as_ptr(), db.as_raw_fd(), nb.as_ptr()) })
        });
        self.rec(format!("renameat fd#{a}/{la} fd#{b}/{lb}"), errno(&r))
    }

    /// `linkat(fd, "", AT_FDCWD, rel, AT_EMPTY_PATH)`: a new name for what a held descriptor
    /// has open.
    pub fn fd_link(&mut self, h: u32, rel: &str) -> i32 {
        let (empty, to) = (CString::new("").unwrap(), self.c(rel));
        let r = self.held(h).and_then(|f| {
            let (fd, how) = (f.as_raw_fd(), libc::AT_EMPTY_PATH);
            io_rc(unsafe { libc::linkat(fd, empty.as_ptr(), libc::AT_FDCWD, to.as_ptr(), how) })
        });
        self.rec(format!("fd#{h} linkat {rel}"), errno(&r))
    }

    /// `fsetxattr` through a held descriptor (a copy-up where the file is lower).
    pub fn fd_setxattr(&mut self, h: u32, name: &str, val: &str) -> i32 {
        let n = CString::new(name).unwrap();
        let r = self.held(h).and_then(|f| {
            io_rc(unsafe { libc::fsetxattr(f.as_raw_fd(), n.as_ptr(), val.as_ptr().cast(), val.len(), 0) })
        });
        self.rec(format!("fd#{h} fsetxattr {name}={val:?}"), errno(&r))
    }

    /// `fgetxattr` of `name` and `flistxattr` (without `security.*` and `system.*`) through a
    /// held descriptor.
    pub fn fd_xattrs(&mut self, h: u32, name: &str) -> i32 {
        let n = CString::new(name).unwrap();
        let (e, s) = match self.held(h) {
            Ok(f) => {
                let fd = f.as_raw_fd();
                let mut v = vec![0u8; 4096];
                let r = unsafe { libc::fgetxattr(fd, n.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
                let got = if r < 0 { ename(last_errno()) } else { short(&v[..r as usize]) };
                let mut buf = vec![0u8; 8192];
                let r = unsafe { libc::flistxattr(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if r < 0 {
                    (last_errno(), got)
                } else {
                    (0, format!("{got} [{}]", xattr_names(&buf[..r as usize])))
                }
            }
            Err(e) => (e.raw_os_error().unwrap_or(-1), String::new()),
        };
        self.rec(format!("fd#{h} fgetxattr {name} -> {s}"), e)
    }

    pub fn fd_truncate(&mut self, h: u32, len: u64) -> i32 {
        let r = self.held(h).and_then(|f| f.set_len(len));
        self.rec(format!("fd#{h} ftruncate {len}"), errno(&r))
    }

    pub fn fd_chmod(&mut self, h: u32, mode: u32) -> i32 {
        let r = self.held(h).and_then(|f| io_rc(unsafe { libc::fchmod(f.as_raw_fd(), mode) }));
        self.rec(format!("fd#{h} fchmod {mode:o}"), errno(&r))
    }

    /// A raw call on the descriptor held in slot `h`, then its `fstat`.
    fn held_call_then_stat(
        &self,
        h: u32,
        call: impl FnOnce(i32) -> libc::c_int,
    ) -> std::io::Result<fs::Metadata> {
        self.held(h).and_then(|f| {
            io_rc(call(f.as_raw_fd()))?;
            f.metadata()
        })
    }

    /// `fchown` through a held descriptor (a copy-up where the file is lower), then its
    /// `fstat`'s owner and mode (a chown of a file drops its setuid and setgid bits).
    pub fn fd_chown(&mut self, h: u32, uid: u32, gid: u32) -> i32 {
        let r = self.held_call_then_stat(h, |fd| unsafe { libc::fchown(fd, uid, gid) });
        let s = r.as_ref().map_or(String::new(), |m| format!(" -> {}:{} {:o}", m.uid(), m.gid(), m.mode()));
        self.rec(format!("fd#{h} fchown {uid}:{gid}{s}"), errno(&r))
    }

    /// `futimens` with explicit times through a held descriptor, then its `fstat`'s times.
    pub fn fd_utimes(&mut self, h: u32, atime: (i64, i64), mtime: (i64, i64)) -> i32 {
        let ts = [
            libc::timespec { tv_sec: atime.0, tv_nsec: atime.1 },
            libc::timespec { tv_sec: mtime.0, tv_nsec: mtime.1 },
        ];
        let r = self.held_call_then_stat(h, |fd| unsafe { libc::futimens(fd, ts.as_ptr()) });
        let s = r.as_ref().map_or(String::new(), |m| {
            format!(" -> a={}.{:09} m={}.{:09}", m.atime(), m.atime_nsec(), m.mtime(), m.mtime_nsec())
        });
        self.rec(format!("fd#{h} futimens a={atime:?} m={mtime:?}{s}"), errno(&r))
    }

    pub fn fd_fsync(&mut self, h: u32) -> i32 {
        let r = self.held(h).and_then(|f| f.sync_all());
        self.rec(format!("fd#{h} fsync"), errno(&r))
    }

    /// Closes slot `h` if it holds a descriptor, recording nothing.
    pub fn close_quiet(&mut self, h: u32) {
        self.fds.remove(&h);
    }

    pub fn close(&mut self, h: u32) -> i32 {
        let e = if self.fds.remove(&h).is_some() { 0 } else { libc::EBADF };
        self.rec(format!("close#{h}"), e)
    }

    // -- namespace

    pub fn mkdir(&mut self, rel: &str) -> i32 {
        self.mkdir_mode(rel, 0o755)
    }

    pub fn mkdir_mode(&mut self, rel: &str, mode: u32) -> i32 {
        let e = rc(unsafe { libc::mkdir(self.c(rel).as_ptr(), mode) });
        self.rec(format!("mkdir {rel} {mode:o}"), e)
    }

    pub fn rmdir(&mut self, rel: &str) -> i32 {
        let e = rc(unsafe { libc::rmdir(self.c(rel).as_ptr()) });
        self.rec(format!("rmdir {rel}"), e)
    }

    pub fn unlink(&mut self, rel: &str) -> i32 {
        let e = rc(unsafe { libc::unlink(self.c(rel).as_ptr()) });
        self.rec(format!("unlink {rel}"), e)
    }

    pub fn symlink(&mut self, target: &str, rel: &str) -> i32 {
        let t = CString::new(target).unwrap();
        let e = rc(unsafe { libc::symlink(t.as_ptr(), self.c(rel).as_ptr()) });
        self.rec(format!("symlink {rel} -> {target}"), e)
    }

    pub fn link(&mut self, old: &str, new: &str) -> i32 {
        let e = rc(unsafe { libc::link(self.c(old).as_ptr(), self.c(new).as_ptr()) });
        self.rec(format!("link {old} {new}"), e)
    }

    pub fn mkfifo(&mut self, rel: &str) -> i32 {
        let e = rc(unsafe { libc::mknod(self.c(rel).as_ptr(), libc::S_IFIFO | 0o640, 0) });
        self.rec(format!("mkfifo {rel}"), e)
    }

    pub fn mknod_chr(&mut self, rel: &str, major: u32, minor: u32) -> i32 {
        let e = rc(unsafe {
            libc::mknod(self.c(rel).as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(major, minor))
        });
        self.rec(format!("mknod c {rel} {major}:{minor}"), e)
    }

    pub fn rename(&mut self, a: &str, b: &str) -> i32 {
        let e = rc(unsafe { libc::rename(self.c(a).as_ptr(), self.c(b).as_ptr()) });
        self.rec(format!("rename {a} {b}"), e)
    }

    pub fn rename2(&mut self, a: &str, b: &str, flags: u32) -> i32 {
        let e = rc(unsafe {
            libc::renameat2(libc::AT_FDCWD, self.c(a).as_ptr(), libc::AT_FDCWD, self.c(b).as_ptr(), flags)
        });
        let f = match flags {
            libc::RENAME_NOREPLACE => "NOREPLACE".to_string(),
            libc::RENAME_EXCHANGE => "EXCHANGE".to_string(),
            f => format!("{f:#x}"),
        };
        self.rec(format!("renameat2 {a} {b} {f}"), e)
    }

    // -- attributes

    pub fn chmod(&mut self, rel: &str, mode: u32) -> i32 {
        let e = rc(unsafe { libc::chmod(self.c(rel).as_ptr(), mode) });
        self.rec(format!("chmod {rel} {mode:o}"), e)
    }

    pub fn chown(&mut self, rel: &str, uid: u32, gid: u32) -> i32 {
        let e = rc(unsafe { libc::chown(self.c(rel).as_ptr(), uid, gid) });
        self.rec(format!("chown {rel} {uid}:{gid}"), e)
    }

    pub fn lchown(&mut self, rel: &str, uid: u32, gid: u32) -> i32 {
        let e = rc(unsafe { libc::lchown(self.c(rel).as_ptr(), uid, gid) });
        self.rec(format!("lchown {rel} {uid}:{gid}"), e)
    }

    /// utimensat with explicit atime/mtime (seconds, nanoseconds).
    pub fn utimes(&mut self, rel: &str, atime: (i64, i64), mtime: (i64, i64), nofollow: bool) -> i32 {
        let ts = [
            libc::timespec { tv_sec: atime.0, tv_nsec: atime.1 },
            libc::timespec { tv_sec: mtime.0, tv_nsec: mtime.1 },
        ];
        let fl = if nofollow { libc::AT_SYMLINK_NOFOLLOW } else { 0 };
        let e = rc(unsafe { libc::utimensat(libc::AT_FDCWD, self.c(rel).as_ptr(), ts.as_ptr(), fl) });
        self.rec(format!("utimensat {rel} a={atime:?} m={mtime:?} nofollow={nofollow}"), e)
    }

    pub fn setxattr(&mut self, rel: &str, name: &str, val: &str, flags: i32) -> i32 {
        let n = CString::new(name).unwrap();
        let e = rc(unsafe {
            libc::lsetxattr(self.c(rel).as_ptr(), n.as_ptr(), val.as_ptr().cast(), val.len(), flags)
        });
        self.rec(format!("setxattr {rel} {name}={val:?} flags={flags}"), e)
    }

    pub fn removexattr(&mut self, rel: &str, name: &str) -> i32 {
        let n = CString::new(name).unwrap();
        let e = rc(unsafe { libc::lremovexattr(self.c(rel).as_ptr(), n.as_ptr()) });
        self.rec(format!("removexattr {rel} {name}"), e)
    }

    pub fn getxattr(&mut self, rel: &str, name: &str) -> i32 {
        let n = CString::new(name).unwrap();
        let mut buf = vec![0u8; 4096];
        let r =
            unsafe { libc::lgetxattr(self.c(rel).as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        let (e, s) = if r < 0 { (last_errno(), String::new()) } else { (0, short(&buf[..r as usize])) };
        self.rec(format!("getxattr {rel} {name} -> {s}"), e)
    }

    /// listxattr, user.* names only (security.* may be added by LSMs).
    pub fn listxattr(&mut self, rel: &str) -> i32 {
        let mut buf = vec![0u8; 8192];
        let r = unsafe { libc::llistxattr(self.c(rel).as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        let (e, s) = if r < 0 { (last_errno(), String::new()) } else { (0, xattr_names(&buf[..r as usize])) };
        self.rec(format!("listxattr {rel} -> [{s}]"), e)
    }

    // -- observation

    /// lstat: kind, mode, owner, size, and nlink for non-directories.
    pub fn lstat(&mut self, rel: &str) -> i32 {
        let r = fs::symlink_metadata(self.p(rel));
        let s = match &r {
            Ok(m) => describe(m),
            Err(_) => String::new(),
        };
        self.rec(format!("lstat {rel} -> {s}"), errno(&r))
    }

    /// stat with mtime (for explicit utimensat checks; also on directories).
    pub fn stat_times(&mut self, rel: &str) -> i32 {
        let r = fs::symlink_metadata(self.p(rel));
        let s = match &r {
            Ok(m) => format!("mtime={}.{:09}", m.mtime(), m.mtime_nsec()),
            Err(_) => String::new(),
        };
        self.rec(format!("stat_times {rel} -> {s}"), errno(&r))
    }

    pub fn readdir(&mut self, rel: &str) -> i32 {
        let r = fs::read_dir(self.p(rel)).and_then(|rd| {
            let mut v = Vec::new();
            for e in rd {
                v.push(e?.file_name().to_string_lossy().to_string());
            }
            v.sort();
            Ok(v)
        });
        let s = match &r {
            Ok(v) => v.join(","),
            Err(_) => String::new(),
        };
        self.rec(format!("readdir {rel} -> [{s}]"), errno(&r))
    }

    pub fn readlink(&mut self, rel: &str) -> i32 {
        let r = fs::read_link(self.p(rel));
        let s = match &r {
            Ok(t) => t.to_string_lossy().to_string(),
            Err(_) => String::new(),
        };
        self.rec(format!("readlink {rel} -> {s}"), errno(&r))
    }

    /// Whether two names show the same inode, with both nlinks.
    /// Link counts of two names, without comparing their inode numbers: two names of one
    /// lower hard link have one st_ino on the kernel and two on layerfs (README, "Differences
    /// from kernel overlayfs"); what they hold and their link counts must still agree.
    pub fn lower_links(&mut self, a: &str, b: &str) -> i32 {
        let ra = fs::symlink_metadata(self.p(a));
        let rb = fs::symlink_metadata(self.p(b));
        match (&ra, &rb) {
            (Ok(x), Ok(y)) => self.rec(format!("nlink {a} {b} -> {} {}", x.nlink(), y.nlink()), 0),
            _ => {
                let e = if ra.is_err() { errno(&ra) } else { errno(&rb) };
                self.rec(format!("nlink {a} {b}"), e)
            }
        }
    }

    pub fn same_ino(&mut self, a: &str, b: &str) -> i32 {
        let ra = fs::symlink_metadata(self.p(a));
        let rb = fs::symlink_metadata(self.p(b));
        match (&ra, &rb) {
            (Ok(x), Ok(y)) => {
                let same = x.ino() == y.ino() && x.dev() == y.dev();
                self.rec(format!("same_ino {a} {b} -> {same} nlink {} {}", x.nlink(), y.nlink()), 0)
            }
            _ => {
                let e = if ra.is_err() { errno(&ra) } else { errno(&rb) };
                self.rec(format!("same_ino {a} {b}"), e)
            }
        }
    }

    // -- compound (as the shell tools do them)

    /// `rm -rf`: depth first through the mount; errno of the first failure.
    pub fn rm_rf(&mut self, rel: &str) -> i32 {
        let e = rm_rf_at(&self.p(rel));
        self.rec(format!("rm -rf {rel}"), e)
    }

    /// `cp -r` (data, modes and symlinks; new inodes) through the mount.
    pub fn cp_r(&mut self, src: &str, dst: &str) -> i32 {
        let e = cp_r_at(&self.p(src), &self.p(dst));
        self.rec(format!("cp -r {src} {dst}"), e)
    }

    /// Runs `sh -c script` with the mount as cwd (`in_upper`: the upper directory); records its
    /// exit status and output (the side's base directory written as `$BASE`).
    pub fn sh(&mut self, script: &str, in_upper: bool) -> i32 {
        let cwd = if in_upper { self.side.upper.clone() } else { self.side.mnt.clone() };
        let o = std::process::Command::new("sh")
            .args(["-c", script])
            .current_dir(&cwd)
            .env("LC_ALL", "C")
            .output()
            .expect("sh");
        let base = self.side.base.to_string_lossy().to_string();
        let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
            .replace(&base, "$BASE");
        let code = o.status.code().unwrap_or(-1);
        let where_ = if in_upper { "upper" } else { "mnt" };
        self.rec(format!("sh[{where_}] {script} -> {code}\n{out}"), 0)
    }

    /// Unmounts and mounts again on the same layers (both implementations).
    pub fn remount(&mut self) -> i32 {
        self.fds.clear();
        self.side.unmount();
        self.side.mount();
        self.rec("remount".into(), 0)
    }
}

pub fn describe(m: &fs::Metadata) -> String {
    let ft = m.file_type();
    use std::os::unix::fs::FileTypeExt;
    let k = if ft.is_dir() {
        'd'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_file() {
        'f'
    } else if ft.is_fifo() {
        'p'
    } else if ft.is_char_device() {
        'c'
    } else {
        '?'
    };
    let mut s = format!("{k} {:o} {}:{}", m.mode() & 0o7777, m.uid(), m.gid());
    if k == 'f' || k == 'l' {
        s.push_str(&format!(" size={}", m.size()));
    }
    if k == 'c' {
        s.push_str(&format!(" rdev={}:{}", libc::major(m.rdev()), libc::minor(m.rdev())));
    }
    if k != 'd' {
        s.push_str(&format!(" nlink={}", m.nlink()));
    }
    s
}

fn rm_rf_at(p: &Path) -> i32 {
    let md = match fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) => return e.raw_os_error().unwrap_or(-1),
    };
    if md.is_dir() {
        let names: Vec<_> = match fs::read_dir(p) {
            Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
            Err(e) => return e.raw_os_error().unwrap_or(-1),
        };
        for c in names {
            let e = rm_rf_at(&c);
            if e != 0 {
                return e;
            }
        }
        errno(&fs::remove_dir(p))
    } else {
        errno(&fs::remove_file(p))
    }
}

fn cp_r_at(src: &Path, dst: &Path) -> i32 {
    let md = match fs::symlink_metadata(src) {
        Ok(m) => m,
        Err(e) => return e.raw_os_error().unwrap_or(-1),
    };
    let ft = md.file_type();
    if ft.is_dir() {
        let e = errno(&fs::create_dir(dst));
        if e != 0 {
            return e;
        }
        let mut names: Vec<_> = match fs::read_dir(src) {
            Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect(),
            Err(e) => return e.raw_os_error().unwrap_or(-1),
        };
        names.sort();
        for n in names {
            let e = cp_r_at(&src.join(&n), &dst.join(&n));
            if e != 0 {
                return e;
            }
        }
        errno(&fs::set_permissions(dst, std::os::unix::fs::PermissionsExt::from_mode(md.mode() & 0o7777)))
    } else if ft.is_symlink() {
        match fs::read_link(src) {
            Ok(t) => errno(&std::os::unix::fs::symlink(t, dst)),
            Err(e) => e.raw_os_error().unwrap_or(-1),
        }
    } else if ft.is_file() {
        match fs::read(src) {
            Ok(d) => {
                let r =
                    fs::OpenOptions::new().write(true).create_new(true).mode(md.mode() & 0o7777).open(dst);
                let r = r.and_then(|mut f| std::io::Write::write_all(&mut f, &d));
                errno(&r)
            }
            Err(e) => e.raw_os_error().unwrap_or(-1),
        }
    } else {
        // Special files: recreate with the same type.

        rc(unsafe { libc::mknod(cpath(dst).as_ptr(), md.mode(), md.rdev()) })
    }
}

// ---- comparison ------------------------------------------------------------------------------

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Side-by-side listing of two step logs, marking the differing steps.
pub fn diff_logs(a: &[(String, i32)], b: &[(String, i32)]) -> Option<String> {
    let userns = in_user_namespace();
    if a.len() == b.len()
        && a.iter().zip(b).all(|(k, f)| k == f || (userns && kernel_userns_rename_quirk(k, f)))
    {
        return None;
    }
    let mut out = String::from("step logs differ (kernel | layerfs):\n");
    let n = a.len().max(b.len());
    for i in 0..n {
        let fa = a.get(i).map(|(s, e)| format!("{s} = {}", ename(*e))).unwrap_or_else(|| "<none>".into());
        let fb = b.get(i).map(|(s, e)| format!("{s} = {}", ename(*e))).unwrap_or_else(|| "<none>".into());
        if fa == fb {
            out.push_str(&format!("   {i:3}  {fa}\n"));
        } else {
            out.push_str(&format!("!! {i:3}  kernel:  {fa}\n          layerfs: {fb}\n"));
        }
    }
    Some(out)
}

/// In a user namespace the kernel gives ESTALE for a rename between two hard links of one
/// copied-up file (it shows them as two inodes there, see [`compare_sides`]), where POSIX
/// and the kernel as root do nothing and succeed, as layerfs does. The trees compared after
/// the steps show whether layerfs really did nothing.
fn kernel_userns_rename_quirk(k: &(String, i32), f: &(String, i32)) -> bool {
    k.0 == f.0 && k.0.starts_with("rename") && k.1 == libc::ESTALE && f.1 == 0
}

pub fn ename(e: i32) -> String {
    let n = match e {
        0 => "ok",
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENODATA => "ENODATA",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ESTALE => "ESTALE",
        libc::ELOOP => "ELOOP",
        libc::EBUSY => "EBUSY",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ETXTBSY => "ETXTBSY",
        _ => return format!("errno {e}"),
    };
    n.to_string()
}

/// Merged-tree comparison with the mtime rule from [`TOLERATED`].
fn diff_merged(k: &BTreeMap<String, Entry>, kt0: i64, f: &BTreeMap<String, Entry>, ft0: i64) -> Vec<String> {
    let strip = |m: &BTreeMap<String, Entry>, other: &BTreeMap<String, Entry>, t0: i64, ot0: i64| {
        let mut m = m.clone();
        for (p, e) in m.iter_mut() {
            if let (Some(a), Some(o)) = (e.mtime, other.get(p).and_then(|x| x.mtime)) {
                // Both written during the run: wall-clock times, not comparable.
                if a >= t0 && o >= ot0 {
                    e.mtime = None;
                }
            }
        }
        m
    };
    let k2 = strip(k, f, kt0, ft0);
    let f2 = strip(f, k, ft0, kt0);
    diff_snapshots("kernel", &k2, "layerfs", &f2)
}

/// Groups of paths sharing an inode (hard-link structure), as sorted path lists.
pub fn link_groups(root: &Path) -> Vec<Vec<String>> {
    let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    use std::os::unix::fs::FileTypeExt;
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<u64, Vec<String>>) {
        let Ok(rd) = fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = fs::symlink_metadata(&p) else { continue };
            if m.is_dir() {
                walk(root, &p, out);
            } else if m.nlink() > 1 && !(m.file_type().is_char_device() && m.rdev() == 0) {
                out.entry(m.ino())
                    .or_default()
                    .push(p.strip_prefix(root).unwrap().to_string_lossy().to_string());
            }
        }
    }
    walk(root, root, &mut by_ino);
    let mut v: Vec<Vec<String>> = by_ino
        .into_values()
        .map(|mut g| {
            g.sort();
            g
        })
        .filter(|g| g.len() > 1)
        .collect();
    v.sort();
    v
}

/// Everything about a lower layer: snapshot with mtimes, private xattrs, directory mtimes,
/// link counts.
pub fn strict_snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let snap = snapshot(root, true);
    for (k, e) in snap {
        let p = root.join(&k);
        let m = fs::symlink_metadata(&p).unwrap();
        out.insert(
            k,
            format!(
                "{e:?} priv={:?} mtime={}.{} nlink={}",
                xattrs(&p, true),
                m.mtime(),
                m.mtime_nsec(),
                if m.is_dir() { 0 } else { m.nlink() }
            ),
        );
    }
    let m = fs::symlink_metadata(root).unwrap();
    out.insert(
        ".".into(),
        format!("mtime={}.{} mode={:o} priv={:?}", m.mtime(), m.mtime_nsec(), m.mode(), xattrs(root, true)),
    );
    out
}

fn diff_strict(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    let mut d = Vec::new();
    for (k, va) in a {
        match b.get(k) {
            None => d.push(format!("removed: {k}")),
            Some(vb) if vb != va => d.push(format!("changed: {k}\n  before: {va}\n  after:  {vb}")),
            _ => {}
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            d.push(format!("added: {k}"));
        }
    }
    d
}

/// What one side produced.
pub struct Outcome {
    pub log: Vec<(String, i32)>,
    pub merged: BTreeMap<String, Entry>,
    /// Names of the merged tree that show one inode number ([`link_groups`]).
    pub merged_links: Vec<Vec<String>>,
    pub t0: i64,
}

/// Runs `scenario` on one side: mount, scenario, snapshot of the merged tree, unmount.
pub fn run_side(side: &mut Side, scenario: &dyn Fn(&mut Ctx)) -> Outcome {
    side.mount();
    // A second early: file times come from the kernel's coarse clock, which may still show the
    // previous second just after `now` has passed into the next.
    let t0 = now_secs() - 1;
    let mut c = Ctx::new(side);
    scenario(&mut c);
    let log = std::mem::take(&mut c.log);
    drop(c);
    let merged = snapshot_all_mtimes(&side.mnt);
    let merged_links = link_groups(&side.mnt);
    side.unmount();
    Outcome { log, merged, merged_links, t0 }
}

/// All differences between the two sides after a run, as readable text (empty when equal).
pub fn compare_sides(
    k: &Side,
    ko: &Outcome,
    f: &Side,
    fo: &Outcome,
    pristine: &Path,
    nlowers: usize,
) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(d) = diff_logs(&ko.log, &fo.log) {
        problems.push(d);
    }
    let d = diff_merged(&ko.merged, ko.t0, &fo.merged, fo.t0);
    if !d.is_empty() {
        problems.push(format!("merged trees differ:\n{}", d.join("\n")));
    }
    // In a user namespace the kernel records no usable origin, so a copied-up file shows its
    // lower inode number under the name it was looked up by and its upper number under a new
    // hard link (until the dentry is evicted; checked by hand with `ln`): it splits one inode
    // into two numbers, where layerfs shows one. There, every group the kernel shows must lie
    // within one of layerfs's; the uppers' hard-link structure is compared in full below.
    let links_agree = if in_user_namespace() {
        ko.merged_links.iter().all(|g| fo.merged_links.iter().any(|h| g.iter().all(|n| h.contains(n))))
    } else {
        ko.merged_links == fo.merged_links
    };
    if !links_agree {
        problems.push(format!(
            "merged hard-link groups (one inode number) differ:\n  kernel:  {:?}\n  layerfs: {:?}",
            ko.merged_links, fo.merged_links
        ));
    }
    if !k.read_only {
        let (cu_k, cu_f) = (canonical_upper(&k.upper), canonical_upper(&f.upper));
        let d = diff_snapshots("kernel", &cu_k, "layerfs", &cu_f);
        if !d.is_empty() {
            problems.push(format!("canonical uppers differ:\n{}", d.join("\n")));
        }
        let (lk, lf) = (link_groups(&k.upper), link_groups(&f.upper));
        if lk != lf {
            problems.push(format!("upper hard-link groups differ:\n  kernel:  {lk:?}\n  layerfs: {lf:?}"));
        }
        let work = f.work.join("work");
        let left: Vec<_> = fs::read_dir(&work)
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect())
            .unwrap_or_default();
        if !left.is_empty() {
            problems.push(format!("layerfs left entries in {}: {left:?}", work.display()));
        }
    } else {
        let u: Vec<_> = fs::read_dir(&f.upper)
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        if !u.is_empty() {
            problems.push(format!("read-only layerfs mount wrote to the unused upper dir: {u:?}"));
        }
    }
    for i in 0..nlowers {
        let before = strict_snapshot(&pristine.join(format!("l{i}")));
        for s in [k, f] {
            let after = strict_snapshot(&s.lowers[i]);
            let d = diff_strict(&before, &after);
            if !d.is_empty() {
                problems.push(format!("{} changed lower layer l{i}:\n{}", s.imp.name(), d.join("\n")));
            }
        }
    }
    problems
}

/// Builds `stack`, runs `scenario` on kernel overlayfs and on layerfs, and panics with a
/// readable report on any difference. Returns the (equal) step log.
pub fn run_both(stack: &Stack, scenario: impl Fn(&mut Ctx)) -> Vec<(String, i32)> {
    let s = Scratch::new();
    run_both_in(s.dir.path(), stack, &scenario, "")
}

/// As [`run_both`], in a given scratch directory (reused across property-test cases).
pub fn run_both_in(
    dir: &Path,
    stack: &Stack,
    scenario: &dyn Fn(&mut Ctx),
    extra: &str,
) -> Vec<(String, i32)> {
    match try_run_both_in(dir, stack, scenario, extra) {
        Ok(log) => log,
        Err(report) => panic!("\n{report}"),
    }
}

pub fn try_run_both_in(
    dir: &Path,
    stack: &Stack,
    scenario: &dyn Fn(&mut Ctx),
    extra: &str,
) -> Result<Vec<(String, i32)>, String> {
    let src = dir.join("src");
    let _ = fs::remove_dir_all(&src);
    stack.build(&src);
    let n = stack.lowers.len();
    let mut k = Side::prepare(Impl::Kernel, &src, &dir.join("k"), n, stack.read_only);
    let mut f = Side::prepare(Impl::Layerfs, &src, &dir.join("f"), n, stack.read_only);
    f.extra = extra.to_string();
    let ko = run_side(&mut k, scenario);
    let fo = run_side(&mut f, scenario);
    let problems = compare_sides(&k, &ko, &f, &fo, &src, n);
    if problems.is_empty() {
        Ok(ko.log)
    } else {
        let mut r = problems.join("\n\n");
        r.push_str("\n\n(tolerated, not compared: ");
        r.push_str(&TOLERATED.iter().map(|(n, _)| *n).collect::<Vec<_>>().join("; "));
        r.push(')');
        Err(r)
    }
}

/// True when both kinds of mounts can be made (or CI demands them).
pub fn available() -> bool {
    can_mount() && can_kernel_overlay()
}

// ---- operation model for the property test and its pinned regressions ------------------------

/// The small name space the property test works in.
pub const NAMES: &[&str] = &["a", "b", "c", "d", "d/x", "d/y", "d/x/q", "e", "e/f", "d/big", "e/h"];

/// The content of the property fixture's `d/big`: 1 MiB and 3 bytes of numbered lines, more
/// than the 64 KiB a read-only open stores into the page cache at once, so its reads go
/// through READ requests (and passthrough once copied up, as root).
pub fn big_content() -> String {
    let mut s = String::with_capacity((1 << 20) + 64);
    let mut i = 0u32;
    while s.len() < (1 << 20) + 3 {
        s.push_str(&format!("big line {i:08}\n"));
        i += 1;
    }
    s.truncate((1 << 20) + 3);
    s
}

/// One generated operation. Written so that `{:?}` output pastes back as Rust
/// (`use Op::*;` in scope).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// open(O_CREAT|O_TRUNC) and write `"<name>-<n>\n"`.
    Write(&'static str, u8),
    Append(&'static str, u8),
    Truncate(&'static str, u16),
    Chmod(&'static str, u16),
    Mkdir(&'static str),
    Rmdir(&'static str),
    Unlink(&'static str),
    Rename(&'static str, &'static str),
    /// symlink(target, name)
    Symlink(&'static str, &'static str),
    Link(&'static str, &'static str),
    SetXattr(&'static str, u8),
    /// Unmount and mount again on the same upper (both implementations).
    Remount,
    /// renameat2(RENAME_EXCHANGE)
    Exchange(&'static str, &'static str),
    /// renameat2(RENAME_NOREPLACE)
    NoReplace(&'static str, &'static str),
    RmRf(&'static str),
    Mkfifo(&'static str),
    RemoveXattr(&'static str),
    /// utimensat with fixed times (mtime = 1_500_000_000 + n)
    Utimes(&'static str, u8),
    /// Observations (no change): they make lookups/readdirs happen between changes.
    Readdir(&'static str),
    Lstat(&'static str),
    /// Descriptors kept open across later steps (slot, name, read-write): what a held
    /// descriptor reads, writes and `fstat`s after copy-ups, renames, unlinks and truncations
    /// through other opens. A remount closes them.
    Hold(u8, &'static str, bool),
    /// pwrite `"<slot>:<n>"` at the offset through a held descriptor.
    HeldWrite(u8, u64, u8),
    HeldRead(u8),
    HeldStat(u8),
    Release(u8),
    /// lchown to the uid and gid.
    Chown(&'static str, u32),
    /// Reads the whole file through a new descriptor.
    Read(&'static str),
    /// fallocate(PUNCH_HOLE|KEEP_SIZE) of its first 8 KiB.
    Punch(&'static str),
    /// Through a held descriptor: list the directory from its start (rewind, then
    /// `getdents64`), `ftruncate`, `fchmod` and `fsync`.
    HeldList(u8),
    HeldTruncate(u8, u16),
    HeldChmod(u8, u16),
    HeldSync(u8),
    /// Relative to a held directory: create (and write) a name, remove one.
    HeldCreate(u8, &'static str, u8),
    HeldUnlink(u8, &'static str),
    /// `renameat` between (names relative to) two held directories.
    HeldRename(u8, &'static str, u8, &'static str),
    /// `linkat` with `AT_EMPTY_PATH`: a new name for a held descriptor's file.
    HeldLink(u8, &'static str),
    /// `fsetxattr` of `user.p`, and `fgetxattr` of `user.k` with `flistxattr`, through a
    /// held descriptor.
    HeldSetXattr(u8, u8),
    HeldXattrs(u8),
    /// `fchown` to the uid and gid, and `futimens` with fixed times (mtime = 1_600_000_000 +
    /// n), through a held descriptor.
    HeldChown(u8, u32),
    HeldUtimes(u8, u8),
}

/// The fixed two-lower fixture of the property test. `e/h` is a hard link to `d/x` in the
/// bottom layer: a copy-up of one name leaves the other on the lower file, whose count still
/// says 2.
pub fn prop_stack() -> Stack {
    let bottom = Layer::new()
        .file("a", "a-bottom\n")
        .xattr("a", "user.k", "bottom")
        .symlink("b", "a")
        .file("d/x", "x-bottom\n")
        .file("d/y", "y-bottom\n")
        .file("d/big", &big_content())
        .dir("e")
        .hardlink("e/h", "d/x")
        .file("c", "c-bottom\n");
    let top = Layer::new()
        .file("a", "a-top\n")
        .dir("d")
        .whiteout("d/y")
        .file("d/z", "z-top\n")
        .file_mode("c", "c-top\n", 0o600)
        .xattr("c", "user.k", "top");
    Stack::new(vec![top, bottom])
}

/// The property test's fixture with 16 layers between its top and bottom, so that the root, `d`
/// and `e` merge 16 to 18 lower directories: lookups there go through the merged name index
/// and the parallel opening of lower directories that only stacks of many layers use. The
/// middle layers add a file each to `d` (one of them whited out further down the stack) and
/// `e/f`, and the lowest of them makes `e` opaque, hiding the bottom's `e/g`.
pub fn prop_stack_many() -> Stack {
    let mut layers = prop_stack().lowers;
    let bottom = layers.pop().expect("bottom layer").file("e/g", "g-bottom\n");
    for i in 1..=16 {
        let mut l = Layer::new().dir("d").file(&format!("d/m{i}"), &format!("m{i}\n")).dir("e");
        match i {
            4 => l = l.file("e/f", "f-mid\n"),
            9 => l = l.whiteout("d/m12"),
            16 => l = l.opaque("e"),
            _ => {}
        }
        layers.push(l);
    }
    layers.push(bottom);
    Stack::new(layers)
}

/// Known layerfs bugs the property test steers around (each is pinned as an ignored test in
/// `regressions.rs`; delete the entry here when the bug is fixed). Set `LAYERFS_PROPTEST_ALL=1`
/// to generate them anyway.
pub const AVOIDED_BUGS: &[(&str, &str)] = &[];

pub fn avoid_known_bugs() -> bool {
    std::env::var_os("LAYERFS_PROPTEST_ALL").is_none()
}

/// Applies one op; with `avoid`, ops that would hit an [`AVOIDED_BUGS`] entry are recorded as
/// skipped instead (the decision is taken from what the mount shows, so a difference between
/// the two sides still shows in the log).
pub fn apply_with(c: &mut Ctx, op: &Op, avoid: bool) {
    let _ = avoid; // no op is steered around a known bug at the moment
    match *op {
        Op::Write(n, v) => {
            c.create(n, &format!("{n}-{v}\n"));
        }
        Op::Append(n, v) => {
            c.append(n, &format!("+{v}\n"));
        }
        Op::Truncate(n, l) => {
            c.truncate(n, l as i64);
        }
        Op::Chmod(n, m) => {
            c.chmod(n, m as u32);
        }
        Op::Mkdir(n) => {
            c.mkdir(n);
        }
        Op::Rmdir(n) => {
            c.rmdir(n);
        }
        Op::Unlink(n) => {
            c.unlink(n);
        }
        Op::Rename(a, b) => {
            c.rename(a, b);
        }
        Op::Symlink(t, n) => {
            c.symlink(t, n);
        }
        Op::Link(a, b) => {
            c.link(a, b);
        }
        Op::SetXattr(n, v) => {
            c.setxattr(n, "user.p", &format!("v{v}"), 0);
        }
        Op::Remount => {
            c.remount();
        }
        Op::Exchange(a, b) => {
            c.rename2(a, b, libc::RENAME_EXCHANGE);
        }
        Op::NoReplace(a, b) => {
            c.rename2(a, b, libc::RENAME_NOREPLACE);
        }
        Op::RmRf(n) => {
            c.rm_rf(n);
        }
        Op::Mkfifo(n) => {
            c.mkfifo(n);
        }
        Op::RemoveXattr(n) => {
            c.removexattr(n, "user.k");
        }
        Op::Utimes(n, v) => {
            c.utimes(n, (1_400_000_000, 0), (1_500_000_000 + v as i64, 0), false);
        }
        Op::Readdir(n) => {
            c.readdir(n);
        }
        Op::Lstat(n) => {
            c.lstat(n);
        }
        Op::Hold(h, n, write) => {
            c.close_quiet(h as u32);
            c.open_keep(h as u32, n, write);
        }
        Op::HeldWrite(h, off, v) => {
            c.fd_write_at(h as u32, off, &format!("{h}:{v}"));
        }
        Op::HeldRead(h) => {
            c.fd_read(h as u32);
        }
        Op::HeldStat(h) => {
            c.fd_stat(h as u32);
        }
        Op::Release(h) => {
            c.close(h as u32);
        }
        Op::Chown(n, id) => {
            c.lchown(n, id, id);
        }
        Op::Read(n) => {
            c.read(n);
        }
        Op::Punch(n) => {
            c.fallocate(n, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, 0, 8192);
        }
        Op::HeldList(h) => {
            c.fd_list(h as u32);
        }
        Op::HeldTruncate(h, l) => {
            c.fd_truncate(h as u32, l as u64);
        }
        Op::HeldChmod(h, m) => {
            c.fd_chmod(h as u32, m as u32);
        }
        Op::HeldSync(h) => {
            c.fd_fsync(h as u32);
        }
        Op::HeldCreate(h, leaf, v) => {
            c.fd_create_at(h as u32, leaf, &format!("{leaf}@{h}-{v}\n"));
        }
        Op::HeldUnlink(h, leaf) => {
            c.fd_unlink_at(h as u32, leaf);
        }
        Op::HeldRename(a, la, b, lb) => {
            c.fd_rename_at(a as u32, la, b as u32, lb);
        }
        Op::HeldLink(h, n) => {
            c.fd_link(h as u32, n);
        }
        Op::HeldSetXattr(h, v) => {
            c.fd_setxattr(h as u32, "user.p", &format!("f{v}"));
        }
        Op::HeldXattrs(h) => {
            c.fd_xattrs(h as u32, "user.k");
        }
        Op::HeldChown(h, id) => {
            c.fd_chown(h as u32, id, id);
        }
        Op::HeldUtimes(h, v) => {
            c.fd_utimes(h as u32, (1_450_000_000, 0), (1_600_000_000 + v as i64, 0));
        }
    }
}

/// Runs `ops` (then observes every name) on kernel overlayfs and layerfs over `stack`, in `dir`
/// (cleared first); `Err` holds the report. `avoid`: steer around [`AVOIDED_BUGS`].
pub fn run_ops_on(dir: &Path, stack: &Stack, ops: &[Op], avoid: bool) -> Result<(), String> {
    run_ops_with(dir, stack, ops, avoid, "")
}

/// [`run_ops_on`] with `extra` mount options for layerfs (such as `passthrough=0`).
pub fn run_ops_with(dir: &Path, stack: &Stack, ops: &[Op], avoid: bool, extra: &str) -> Result<(), String> {
    let ops = ops.to_vec();
    let scenario = move |c: &mut Ctx| {
        for op in &ops {
            apply_with(c, op, avoid);
        }
        // Final observations of every name, so state differences show as step differences.
        for n in NAMES {
            c.lstat(n);
        }
        c.readdir("");
        c.readdir("d");
    };
    try_run_both_in(dir, stack, &scenario, extra).map(|_| ())
}

/// [`run_ops_on`] the property test's two-lower stack in a fresh scratch directory; panics
/// with the report. Pinned regressions run every op as written (no [`AVOIDED_BUGS`] steering).
pub fn check_ops(ops: &[Op]) {
    check_ops_on(&prop_stack(), ops);
}

/// [`check_ops`] on another stack (such as [`prop_stack_many`]).
pub fn check_ops_on(stack: &Stack, ops: &[Op]) {
    check_ops_with(stack, ops, "");
}

/// [`check_ops_on`] with `extra` mount options for layerfs.
pub fn check_ops_with(stack: &Stack, ops: &[Op], extra: &str) {
    let s = Scratch::new();
    if let Err(r) = run_ops_with(s.dir.path(), stack, ops, false, extra) {
        panic!("ops {ops:?} ({extra})\n{r}");
    }
}
