//! The thin adapter from fuser's `Filesystem` trait to [`OverlayFs`]: each method logs the
//! request at debug level (`-d`), calls the façade, and replies. No union logic lives here.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, BsdFileFlags, CopyFileRangeFlags, Errno, FileHandle, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::error::Error;
use crate::fs::{Caller, Opened, OverlayFs, SetAttr};
use crate::sys::SetTime;
use crate::trace::{Args, Hooks, Op, Outcome};

/// The fuser `Filesystem` for one mount.
pub struct Fuse {
    pub fs: Arc<OverlayFs>,
    pub ttl: Duration,
    pub writeback: bool,
    /// Try FUSE passthrough (kernel 6.9+, needs CAP_SYS_ADMIN); switched off for good at the
    /// first refusal.
    pub passthrough: AtomicBool,
    /// FUSE_HANDLE_KILLPRIV_V2 is on: the server drops setuid/setgid/capabilities on writes
    /// and truncation by unprivileged callers (and the kernel, which then marks an inode
    /// S_NOSEC once it has found nothing to drop, asks for `security.capability` at an
    /// inode's first write only, not before every write).
    killpriv: AtomicBool,
    backing: Mutex<Backing>,
    /// Signalled when an inode leaves [`InoMode::Storing`].
    stored: Condvar,
    /// Sends FUSE_NOTIFY_STORE; set once the session exists (`None` before, and in tests that
    /// drive a `Fuse` without a session: opens are then answered without storing).
    pub notifier: Arc<OnceLock<fuser::Notifier>>,
    /// Exit the process when the session ends (the `layerfs` server), instead of returning.
    pub exit_on_destroy: bool,
    /// Trace and fault injection (`-o trace=`, `-o faults=`); None costs one check per request.
    pub hooks: Option<Arc<Hooks>>,
}

/// How the open handles of each inode are served. The kernel requires every open of an inode
/// to agree: all passthrough with one backing file, or none passthrough (mixing fails the open).
/// So an inode's first open decides until its last handle closes: passthrough when the real
/// file cannot change under it (an upper file, or any file of a read-only mount), otherwise
/// served here (a lower file may be copied up while open, which would change the backing file).
/// A small file opened read-only first is served here too, its data stored into the page cache
/// at open ([`STORE_MAX`]).
#[derive(Default)]
struct Backing {
    by_ino: HashMap<u64, InoMode>,
    by_fh: HashMap<u64, u64>,
    /// Truncations under way per inode (an O_TRUNC open, a SETATTR of the size): no store of
    /// the inode's data starts meanwhile, and none starts while a store is under way.
    truncating: HashMap<u64, usize>,
}

/// Marks a truncation of an inode under way until dropped ([`Fuse::truncation`]).
struct Truncation<'a> {
    fuse: &'a Fuse,
    ino: u64,
}

impl Drop for Truncation<'_> {
    fn drop(&mut self) {
        let mut b = self.fuse.backing.lock();
        if let Some(n) = b.truncating.get_mut(&self.ino) {
            *n -= 1;
            if *n == 0 {
                b.truncating.remove(&self.ino);
            }
        }
    }
}

enum InoMode {
    Cached(usize),
    Passthrough(Arc<BackingId>, usize),
    /// The inode's first open, read-only, of a small file whose data is being put into the
    /// kernel's page cache before the open is answered. Other opens and truncations of the
    /// inode wait for it: a write landing between the server's read of the data and the store
    /// would be overwritten in the cache by the older data.
    Storing(usize),
}

/// How an open is answered.
enum OpenMode {
    Cached,
    Passthrough(Arc<BackingId>),
    /// Cached, with the whole file stored into the kernel's page cache first.
    Store,
}

/// Files up to this size opened read-only while no other handle is open are stored into the
/// kernel's page cache (FUSE_NOTIFY_STORE) before the OPEN is answered, so the reads that
/// follow are page-cache hits: no READ, and, with no READ or passthrough read to invalidate
/// the cached atime, no GETATTR for the `fstat` after them either (`tar`, `cp`, `cat`).
pub const STORE_MAX: u64 = 64 << 10;

impl Fuse {
    pub fn new(fs: Arc<OverlayFs>, ttl: Duration, writeback: bool, passthrough: bool) -> Fuse {
        Fuse {
            fs,
            ttl,
            writeback,
            passthrough: AtomicBool::new(passthrough),
            killpriv: AtomicBool::new(false),
            backing: Mutex::new(Backing::default()),
            stored: Condvar::new(),
            notifier: Arc::new(OnceLock::new()),
            exit_on_destroy: false,
            hooks: None,
        }
    }

    /// Runs `f` through the hooks when there are any; without, this is one `Option` check.
    /// `name`: the entry an operation works on; `len`: bytes written.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn hook<T: Outcome>(
        &self,
        req: &Request,
        op: Op,
        ino: u64,
        name: Option<&OsStr>,
        len: u64,
        args: impl FnOnce(&mut Args),
        f: impl FnOnce() -> crate::error::Result<T>,
    ) -> crate::error::Result<T> {
        match &self.hooks {
            None => f(),
            Some(h) => h.run(req.pid(), op, ino, name, len, args, f),
        }
    }

    /// Picks the mode of a new open handle. `register` turns a real fd into a backing id
    /// (ReplyOpen and ReplyCreate each have one). `may_store`: a read-only open that could be
    /// answered by storing the file into the kernel's page cache ([`STORE_MAX`]).
    fn open_mode(
        &self,
        ino: u64,
        fh: u64,
        may_store: bool,
        register: impl FnOnce(&OwnedFd) -> io::Result<BackingId>,
    ) -> OpenMode {
        // Sized before the lock, which every open and release takes: the size only picks the
        // mode, the store reads whatever the file holds by then.
        let small =
            may_store && self.stores() && self.fs.handle_size(fh).is_ok_and(|n| n > 0 && n <= STORE_MAX);
        let mut b = self.backing.lock();
        self.wait_stored(&mut b, ino);
        b.by_fh.insert(fh, ino);
        match b.by_ino.get_mut(&ino) {
            Some(InoMode::Cached(n)) => {
                *n += 1;
                return OpenMode::Cached;
            }
            Some(InoMode::Passthrough(id, n)) => {
                *n += 1;
                return OpenMode::Passthrough(id.clone());
            }
            Some(InoMode::Storing(_)) | None => {}
        }
        if small && !b.truncating.contains_key(&ino) {
            b.by_ino.insert(ino, InoMode::Storing(1));
            return OpenMode::Store;
        }
        let mut mode = OpenMode::Cached;
        if self.passthrough.load(Ordering::Relaxed) {
            match self.fs.backing_file(fh) {
                Ok((fd, upper))
                    if (upper || self.fs.is_read_only())
                        && !(self.killpriv.load(Ordering::Relaxed) && self.fs.carries_privs(&fd)) =>
                {
                    match register(&fd) {
                        Ok(id) => mode = OpenMode::Passthrough(Arc::new(id)),
                        Err(e) => {
                            log::info!(
                                "FUSE passthrough not available ({e}); serving file data in userspace"
                            );
                            self.passthrough.store(false, Ordering::Relaxed);
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => log::debug!("passthrough: no backing file for {ino}: {e}"),
            }
        }
        let m = match &mode {
            OpenMode::Cached | OpenMode::Store => InoMode::Cached(1),
            OpenMode::Passthrough(id) => InoMode::Passthrough(id.clone(), 1),
        };
        b.by_ino.insert(ino, m);
        mode
    }

    /// Puts the data of a file opened with [`OpenMode::Store`] into the kernel's page cache,
    /// then lets the opens and truncations waiting on the inode go on. A failed read or store
    /// only costs the reads that follow a READ each.
    fn store(&self, ino: u64, fh: u64) {
        READ_BUF.with_borrow_mut(|buf| match self.fs.read(fh, 0, STORE_MAX as u32, buf) {
            Ok(d) => {
                if let Some(n) = self.notifier.get() {
                    if let Err(e) = n.store(INodeNo(ino), 0, d.bytes()) {
                        log::debug!("store of {ino} into the page cache: {e}");
                    }
                }
            }
            Err(e) => log::debug!("store of {ino}: read: {e}"),
        });
        let mut b = self.backing.lock();
        if let Some(m) = b.by_ino.get_mut(&ino) {
            if let InoMode::Storing(n) = *m {
                *m = InoMode::Cached(n);
            }
        }
        self.stored.notify_all();
    }

    /// Whether opens may be answered by storing the file ([`STORE_MAX`]): not on traced or
    /// faulted mounts, which must see every READ, nor before the session exists.
    fn stores(&self) -> bool {
        self.hooks.is_none() && self.notifier.get().is_some()
    }

    /// Waits, with the lock held in `b`, until no store of `ino`'s data is under way.
    fn wait_stored(&self, b: &mut parking_lot::MutexGuard<'_, Backing>, ino: u64) {
        while matches!(b.by_ino.get(&ino), Some(InoMode::Storing(_))) {
            self.stored.wait(b);
        }
    }

    /// Waits until no store of `ino`'s data is under way, then keeps new ones from starting
    /// until the returned guard is dropped: taken around anything that changes the size.
    /// Mounts that never store take no guard.
    fn truncation(&self, ino: u64) -> Option<Truncation<'_>> {
        if !self.stores() {
            return None;
        }
        let mut b = self.backing.lock();
        self.wait_stored(&mut b, ino);
        *b.truncating.entry(ino).or_default() += 1;
        Some(Truncation { fuse: self, ino })
    }

    /// Whether the server must drop privileges for this caller's truncation or write (the
    /// kernel's flag for that is not passed on by fuser for setattr and open: a caller other
    /// than root stands for "without CAP_FSETID").
    fn kills_privs(&self, req: &Request) -> bool {
        self.killpriv.load(Ordering::Relaxed) && req.uid() != 0
    }

    fn drop_backing(&self, fh: u64) {
        let mut b = self.backing.lock();
        let Some(ino) = b.by_fh.remove(&fh) else { return };
        let last = match b.by_ino.get_mut(&ino) {
            Some(InoMode::Cached(n)) | Some(InoMode::Passthrough(_, n)) | Some(InoMode::Storing(n)) => {
                *n -= 1;
                *n == 0
            }
            None => false,
        };
        if last {
            b.by_ino.remove(&ino);
        }
    }
}

thread_local! {
    /// Each worker thread's read buffer: grown to the largest read once, then reused.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

macro_rules! reply_err {
    ($reply:expr, $op:expr, $e:expr) => {{
        let e: Error = $e;
        if e.is_expected() {
            log::debug!("{} -> {}", $op, e);
        } else {
            log::warn!("{} -> {}", $op, e);
        }
        $reply.error(Errno::from_i32(e.errno))
    }};
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(st) => match st.duration_since(UNIX_EPOCH) {
            Ok(d) => SetTime::At(d.as_secs() as i64, d.subsec_nanos() as i64),
            Err(e) => {
                let d = e.duration();
                let (s, n) = (d.as_secs() as i64, d.subsec_nanos() as i64);
                if n == 0 { SetTime::At(-s, 0) } else { SetTime::At(-s - 1, 1_000_000_000 - n) }
            }
        },
    })
}

impl Fuse {
    /// Open-reply flags of a file handle.
    fn fopen(&self, o: &Opened) -> FopenFlags {
        let mut f = self.noflush();
        if o.keep_cache {
            f |= FopenFlags::FOPEN_KEEP_CACHE;
        }
        if o.direct_io {
            f |= FopenFlags::FOPEN_DIRECT_IO;
        }
        f
    }

    /// A close needs no FLUSH request (the server keeps nothing to flush, and the kernel
    /// still writes back its own cache first): one round trip less per open file. Hooked
    /// mounts keep it, so traces and fault rules still see every close.
    fn noflush(&self) -> FopenFlags {
        if self.hooks.is_none() { FopenFlags::FOPEN_NOFLUSH } else { FopenFlags::empty() }
    }
}

fn caller(req: &Request, umask: u32) -> Caller {
    Caller { uid: req.uid(), gid: req.gid(), umask }
}

impl Filesystem for Fuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        let want = InitFlags::FUSE_ASYNC_DIO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO;
        let _ = config.add_capabilities(want & config.capabilities());
        // Owners and modes kept in override xattrs would need the privilege drop applied there
        // too: such mounts leave it to the kernel.
        if config.capabilities().contains(InitFlags::FUSE_HANDLE_KILLPRIV_V2)
            && !self.fs.reads_override_xattrs()
            && config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2).is_ok()
        {
            self.killpriv.store(true, Ordering::Relaxed);
        }
        // The umask is applied by layerfs (not under a default ACL), as POSIX ACLs need.
        if config.capabilities().contains(InitFlags::FUSE_DONT_MASK) {
            let _ = config.add_capabilities(InitFlags::FUSE_DONT_MASK);
        }
        if self.fs.acl_enabled() {
            if config.capabilities().contains(InitFlags::FUSE_POSIX_ACL) {
                let _ = config.add_capabilities(InitFlags::FUSE_POSIX_ACL);
            } else {
                self.fs.disable_acl("the kernel does not offer FUSE_POSIX_ACL");
            }
        }
        if self.passthrough.load(Ordering::Relaxed) {
            let caps = config.capabilities();
            if caps.contains(InitFlags::FUSE_PASSTHROUGH) {
                let _ = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH);
                // Backing files may themselves sit on a stacked filesystem (overlayfs).
                let _ = config.set_max_stack_depth(2);
            } else {
                self.passthrough.store(false, Ordering::Relaxed);
            }
        }
        if self.writeback
            && !self.passthrough.load(Ordering::Relaxed)
            && config.capabilities().contains(InitFlags::FUSE_WRITEBACK_CACHE)
            && config.add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE).is_ok()
        {
            self.fs.set_writeback_cache();
            log::info!("FUSE writeback cache on");
        }
        Ok(())
    }

    fn destroy(&mut self) {
        log::debug!("destroy: the mount is gone");
        if let Some(h) = &self.hooks {
            h.shutdown();
        }
        if self.exit_on_destroy {
            // fuser would now unmount the mountpoint *by path* (its "still mounted?" check reads
            // an aborted connection as mounted), which takes down a new mount made at the same
            // path meanwhile. Our mount is already gone when we get here, so stop right away.
            std::process::exit(0);
        }
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        log::debug!("lookup(parent={}, name={:?})", parent.0, name);
        match self.hook(req, Op::Lookup, parent.0, Some(name), 0, |_| {}, || self.fs.lookup(parent.0, name)) {
            Ok(attr) => reply.entry(&self.ttl, &attr, Generation(0)),
            Err(e) => reply_err!(reply, "lookup", e),
        }
    }

    fn forget(&self, req: &Request, ino: INodeNo, nlookup: u64) {
        log::debug!("forget(ino={}, n={nlookup})", ino.0);
        let _ = self.hook(
            req,
            Op::Forget,
            ino.0,
            None,
            0,
            |a| _ = a.n("n", nlookup),
            || {
                self.fs.forget(ino.0, nlookup);
                Ok(())
            },
        );
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        log::debug!("getattr(ino={}, fh={:?})", ino.0, fh.map(|f| f.0));
        let args = |a: &mut Args| {
            if let Some(f) = fh {
                a.n("fh", f.0);
            }
        };
        let r = self.hook(req, Op::Getattr, ino.0, None, 0, args, || match fh {
            Some(fh) => self.fs.getattr_fh(ino.0, fh.0).or_else(|_| self.fs.getattr(ino.0)),
            None => self.fs.getattr(ino.0),
        });
        match r {
            Ok(attr) => reply.attr(&self.ttl, &attr),
            Err(e) => reply_err!(reply, "getattr", e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        log::debug!("setattr(ino={}, mode={mode:?}, uid={uid:?}, gid={gid:?}, size={size:?})", ino.0);
        let _truncation = size.and_then(|_| self.truncation(ino.0));
        let sa = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
            fh: fh.map(|f| f.0),
        };
        let args = |a: &mut Args| {
            if let Some(m) = mode {
                a.o("mode", m);
            }
            for (k, v) in [("uid", uid.map(u64::from)), ("gid", gid.map(u64::from)), ("size", size)] {
                if let Some(v) = v {
                    a.n(k, v);
                }
            }
            if atime.is_some() || mtime.is_some() {
                a.n("times", 1);
            }
        };
        // Under KILLPRIV_V2 the kernel asks for the privilege drop of a write by a caller
        // without CAP_FSETID as a setattr that carries nothing else (fuser does not pass the
        // FATTR_KILL_SUIDGID bit itself).
        let empty = [mode, uid, gid].iter().all(Option::is_none)
            && size.is_none()
            && atime.is_none()
            && mtime.is_none()
            && ctime.is_none();
        let kill = self.killpriv.load(Ordering::Relaxed) && empty
            || size.is_some() && mode.is_none() && self.kills_privs(req);
        let f = || {
            let attr = self.fs.setattr(ino.0, sa)?;
            if !kill {
                return Ok(attr);
            }
            self.fs.kill_privs(ino.0, req.gid())?;
            self.fs.getattr(ino.0)
        };
        match self.hook(req, Op::Setattr, ino.0, None, 0, args, f) {
            Ok(attr) => reply.attr(&self.ttl, &attr),
            Err(e) => reply_err!(reply, "setattr", e),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        log::debug!("readlink(ino={})", ino.0);
        match self.hook(req, Op::Readlink, ino.0, None, 0, |_| {}, || self.fs.readlink(ino.0)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply_err!(reply, "readlink", e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        log::debug!("mknod(parent={}, name={name:?}, mode={mode:o}, rdev={rdev})", parent.0);
        let args = |a: &mut Args| _ = a.o("mode", mode).n("rdev", rdev);
        let f = || self.fs.mknod(parent.0, name, mode, rdev as u64, caller(req, umask));
        match self.hook(req, Op::Mknod, parent.0, Some(name), 0, args, f) {
            Ok(attr) => reply.entry(&self.ttl, &attr, Generation(0)),
            Err(e) => reply_err!(reply, "mknod", e),
        }
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        log::debug!("mkdir(parent={}, name={name:?}, mode={mode:o})", parent.0);
        let args = |a: &mut Args| _ = a.o("mode", mode);
        let f = || self.fs.mkdir(parent.0, name, mode, caller(req, umask));
        match self.hook(req, Op::Mkdir, parent.0, Some(name), 0, args, f) {
            Ok(attr) => reply.entry(&self.ttl, &attr, Generation(0)),
            Err(e) => reply_err!(reply, "mkdir", e),
        }
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        log::debug!("unlink(parent={}, name={name:?})", parent.0);
        let f = || self.fs.remove(parent.0, name, false);
        match self.hook(req, Op::Unlink, parent.0, Some(name), 0, |_| {}, f) {
            Ok(()) => reply.ok(),
            Err(e) => reply_err!(reply, "unlink", e),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        log::debug!("rmdir(parent={}, name={name:?})", parent.0);
        let f = || self.fs.remove(parent.0, name, true);
        match self.hook(req, Op::Rmdir, parent.0, Some(name), 0, |_| {}, f) {
            Ok(()) => reply.ok(),
            Err(e) => reply_err!(reply, "rmdir", e),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        log::debug!("symlink(parent={}, name={link_name:?}, target={target:?})", parent.0);
        let args = |a: &mut Args| _ = a.s("target", target.as_os_str());
        let f = || self.fs.symlink(parent.0, link_name, target.as_os_str(), caller(req, 0));
        match self.hook(req, Op::Symlink, parent.0, Some(link_name), 0, args, f) {
            Ok(attr) => reply.entry(&self.ttl, &attr, Generation(0)),
            Err(e) => reply_err!(reply, "symlink", e),
        }
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        log::debug!("rename({}/{name:?} -> {}/{newname:?}, flags={})", parent.0, newparent.0, flags.bits());
        let args = |a: &mut Args| _ = a.path("newpath", newparent.0, newname).n("flags", flags.bits());
        let f = || self.fs.rename(parent.0, name, newparent.0, newname, flags.bits());
        match self.hook(req, Op::Rename, parent.0, Some(name), 0, args, f) {
            Ok(()) => reply.ok(),
            Err(e) => reply_err!(reply, "rename", e),
        }
    }

    fn link(&self, req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        log::debug!("link(ino={}, newparent={}, newname={newname:?})", ino.0, newparent.0);
        let args = |a: &mut Args| _ = a.n("target_ino", ino.0);
        let f = || self.fs.link(ino.0, newparent.0, newname);
        match self.hook(req, Op::Link, newparent.0, Some(newname), 0, args, f) {
            Ok(attr) => reply.entry(&self.ttl, &attr, Generation(0)),
            Err(e) => reply_err!(reply, "link", e),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        log::debug!("open(ino={}, flags={:#x})", ino.0, flags.0);
        let args = |a: &mut Args| _ = a.x("flags", flags.0 as u32);
        let kill = flags.0 & libc::O_TRUNC != 0 && self.kills_privs(req);
        let _truncation = (flags.0 & libc::O_TRUNC != 0).then(|| self.truncation(ino.0)).flatten();
        let f = || {
            let o = self.fs.open(ino.0, flags.0)?;
            if kill {
                if let Err(e) = self.fs.kill_privs(ino.0, req.gid()) {
                    self.fs.release(o.fh);
                    return Err(e);
                }
            }
            Ok(o)
        };
        match self.hook(req, Op::Open, ino.0, None, 0, args, f) {
            Ok(o) => {
                let read_only = flags.0 & libc::O_ACCMODE == libc::O_RDONLY;
                let may_store = read_only && o.keep_cache && flags.0 & libc::O_TRUNC == 0;
                match self.open_mode(ino.0, o.fh, may_store, |fd| reply.open_backing(fd)) {
                    OpenMode::Passthrough(id) => {
                        reply.opened_passthrough(FileHandle(o.fh), self.noflush(), &id)
                    }
                    OpenMode::Cached => reply.opened(FileHandle(o.fh), self.fopen(&o)),
                    OpenMode::Store => {
                        self.store(ino.0, o.fh);
                        reply.opened(FileHandle(o.fh), self.fopen(&o))
                    }
                }
                if read_only {
                    self.fs.opened(ino.0);
                }
            }
            Err(e) => reply_err!(reply, "open", e),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        log::debug!("read(ino={}, fh={}, off={offset}, size={size})", ino.0, fh.0);
        let args = |a: &mut Args| _ = a.n("fh", fh.0).n("off", offset).n("size", size);
        READ_BUF.with_borrow_mut(|buf| {
            match self.hook(req, Op::Read, ino.0, None, 0, args, || self.fs.read(fh.0, offset, size, buf)) {
                Ok(d) => reply.data(d.bytes()),
                Err(e) => reply_err!(reply, "read", e),
            }
        })
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let kill = self.killpriv.load(Ordering::Relaxed)
            && write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        log::debug!("write(ino={}, fh={}, off={offset}, len={})", ino.0, fh.0, data.len());
        let (len, args) =
            (data.len() as u64, |a: &mut Args| _ = a.n("fh", fh.0).n("off", offset).n("len", data.len()));
        let f = || {
            if kill {
                self.fs.kill_privs(ino.0, req.gid())?;
            }
            self.fs.write(fh.0, offset, data)
        };
        match self.hook(req, Op::Write, ino.0, None, len, args, f) {
            Ok(n) => reply.written(n),
            Err(e) => reply_err!(reply, "write", e),
        }
    }

    fn flush(&self, req: &Request, ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        log::debug!("flush(ino={}, fh={})", ino.0, fh.0);
        match self.hook(req, Op::Flush, ino.0, None, 0, |a| _ = a.n("fh", fh.0), || Ok(())) {
            Ok(()) => reply.ok(),
            Err(e) => reply_err!(reply, "flush", e),
        }
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        log::debug!("release(ino={}, fh={})", ino.0, fh.0);
        let _ = self.hook(
            req,
            Op::Release,
            ino.0,
            None,
            0,
            |a| _ = a.n("fh", fh.0),
            || {
                self.drop_backing(fh.0);
                self.fs.release(fh.0);
                Ok(())
            },
        );
        reply.ok();
    }

    fn fsync(&self, req: &Request, ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        log::debug!("fsync(ino={}, fh={}, datasync={datasync})", ino.0, fh.0);
        let args = |a: &mut Args| _ = a.n("fh", fh.0).n("datasync", datasync);
        match self.hook(req, Op::Fsync, ino.0, None, 0, args, || self.fs.fsync(fh.0, datasync)) {
            Ok(()) => reply.ok(),
            Err(e) => reply_err!(reply, "fsync", e),
        }
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        log::debug!("opendir(ino={})", ino.0);
        if self.hooks.is_none() && !self.ttl.is_zero() {
            // No OPENDIR/RELEASEDIR round trips: after this ENOSYS the kernel opens directories
            // itself, caching listings (FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE) and dropping them
            // on every change through the mount, and reads with fh 0 (`OverlayFs::readdir`).
            // Hooked mounts keep OPENDIR to trace it; `timeout=0` keeps it to cache nothing.
            return reply.error(Errno::ENOSYS);
        }
        match self.hook(req, Op::Opendir, ino.0, None, 0, |_| {}, || self.fs.opendir(ino.0)) {
            // The kernel may cache listings: every change to a directory goes through it, and
            // it drops its cache on each of them.
            Ok(fh) if !self.ttl.is_zero() => {
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE)
            }
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply_err!(reply, "opendir", e),
        }
    }

    fn readdir(&self, req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        log::debug!("readdir(ino={}, fh={}, offset={offset})", ino.0, fh.0);
        let args = |a: &mut Args| _ = a.n("fh", fh.0).n("off", offset);
        match self.hook(req, Op::Readdir, ino.0, None, 0, args, || self.fs.readdir(ino.0, fh.0, offset)) {
            Ok((entries, start)) => {
                for e in &entries[start..] {
                    if reply.add(INodeNo(e.ino), e.cookie, e.kind, &e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply_err!(reply, "readdir", e),
        }
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        log::debug!("readdirplus(ino={}, fh={}, offset={offset})", ino.0, fh.0);
        let args = |a: &mut Args| _ = a.n("fh", fh.0).n("off", offset);
        let (entries, start) = match self
            .hook(req, Op::Readdirplus, ino.0, None, 0, args, || self.fs.readdir(ino.0, fh.0, offset))
        {
            Ok(e) => e,
            Err(e) => return reply_err!(reply, "readdirplus", e),
        };
        // What the read-ahead is told of (nothing is collected without it).
        let ahead = self.fs.reads_ahead();
        let mut subdirs = Vec::new();
        let mut files = Vec::new();
        for e in &entries[start..] {
            let off = e.cookie;
            if e.name == "." || e.name == ".." {
                // The kernel takes no reference for these two.
                let attr = match self.fs.getattr(e.ino).or_else(|_| self.fs.getattr(ino.0)) {
                    Ok(a) => a,
                    Err(e) => return reply_err!(reply, "readdirplus", e),
                };
                if reply.add(attr.ino, off, &e.name, &self.ttl, &attr, Generation(0)) {
                    break;
                }
                continue;
            }
            // Each entry returned counts as a lookup; one that does not fit is given back.
            match self.fs.lookup(ino.0, &e.name) {
                Ok(attr) => {
                    if reply.add(attr.ino, off, &e.name, &self.ttl, &attr, Generation(0)) {
                        self.fs.forget(attr.ino.0, 1);
                        break;
                    }
                    if ahead {
                        match attr.kind {
                            fuser::FileType::Directory => subdirs.push(attr.ino.0),
                            fuser::FileType::RegularFile if attr.size > 0 => {
                                files.push((attr.ino.0, attr.size))
                            }
                            _ => {}
                        }
                    }
                }
                Err(err) => log::debug!("readdirplus: {:?} vanished: {err}", e.name),
            }
        }
        reply.ok();
        if ahead {
            self.fs.listed(ino.0, offset, subdirs, files);
        }
    }

    fn releasedir(&self, req: &Request, ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        log::debug!("releasedir(ino={}, fh={})", ino.0, fh.0);
        let _ = self.hook(
            req,
            Op::Releasedir,
            ino.0,
            None,
            0,
            |a| _ = a.n("fh", fh.0),
            || {
                self.fs.releasedir(fh.0);
                Ok(())
            },
        );
        reply.ok();
    }

    fn fsyncdir(&self, req: &Request, ino: INodeNo, _fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        log::debug!("fsyncdir(ino={})", ino.0);
        let args = |a: &mut Args| _ = a.n("datasync", datasync);
        match self.hook(req, Op::Fsyncdir, ino.0, None, 0, args, || self.fs.fsyncdir(ino.0, datasync)) {
            Ok(()) => reply.ok(),
            Err(e) => reply_err!(reply, "fsyncdir", e),
        }
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        log::debug!("statfs()");
        match self.hook(req, Op::Statfs, ino.0, None, 0, |_| {}, || self.fs.statfs()) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply_err!(reply, "statfs", e),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        log::debug!("setxattr(ino={}, name={name:?}, len={})", ino.0, value.len());
        let args = |a: &mut Args| _ = a.s("name", name).n("len", value.len()).n("flags", flags);
        let f = || self.fs.setxattr(ino.0, name, value, flags);
        match self.hook(req, Op::Setxattr, ino.0, None, 0, args, f) {
            Ok(()) => reply.ok(),
            Err(e) => reply_err!(reply, "setxattr", e),
        }
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        log::debug!("getxattr(ino={}, name={name:?}, size={size})", ino.0);
        let args = |a: &mut Args| _ = a.s("name", name).n("size", size);
        match self.hook(req, Op::Getxattr, ino.0, None, 0, args, || self.fs.getxattr(ino.0, name)) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::from_i32(libc::ERANGE)),
            Ok(v) => reply.data(&v),
            Err(e) => reply_err!(reply, "getxattr", e),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        log::debug!("listxattr(ino={}, size={size})", ino.0);
        let args = |a: &mut Args| _ = a.n("size", size);
        match self.hook(req, Op::Listxattr, ino.0, None, 0, args, || self.fs.listxattr(ino.0)) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::from_i32(libc::ERANGE)),
            Ok(v) => reply.data(&v),
            Err(e) => reply_err!(reply, "listxattr", e),
        }
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        log::debug!("removexattr(ino={}, name={name:?})", ino.0);
        let args = |a: &mut Args| _ = a.s("name", name);
        match self.hook(req, Op::Removexattr, ino.0, None, 0, args, || self.fs.removexattr(ino.0, name)) {
            Ok(()) => reply.ok(),
            Err(e) => reply_err!(reply, "removexattr", e),
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        log::debug!("access(ino={}, mask={})", ino.0, mask.bits());
        let args = |a: &mut Args| _ = a.n("mask", mask.bits());
        match self.hook(req, Op::Access, ino.0, None, 0, args, || self.fs.access(ino.0, mask.bits())) {
            Ok(()) => reply.ok(),
            Err(e) => reply_err!(reply, "access", e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        log::debug!("create(parent={}, name={name:?}, mode={mode:o}, flags={flags:#x})", parent.0);
        let args = |a: &mut Args| _ = a.o("mode", mode).x("flags", flags as u32);
        let f = || self.fs.create(parent.0, name, mode, flags, caller(req, umask));
        match self.hook(req, Op::Create, parent.0, Some(name), 0, args, f) {
            Ok((attr, o)) => {
                let (ttl, g, fh) = (&self.ttl, Generation(0), FileHandle(o.fh));
                match self.open_mode(attr.ino.0, o.fh, false, |fd| reply.open_backing(fd)) {
                    OpenMode::Passthrough(id) => {
                        reply.created_passthrough(ttl, &attr, g, fh, self.noflush(), &id)
                    }
                    // Not asked for by create (may_store is false).
                    OpenMode::Cached | OpenMode::Store => reply.created(ttl, &attr, g, fh, self.fopen(&o)),
                }
            }
            Err(e) => reply_err!(reply, "create", e),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        log::debug!("fallocate(ino={}, off={offset}, len={length}, mode={mode})", ino.0);
        let args = |a: &mut Args| _ = a.n("fh", fh.0).n("off", offset).n("len", length).n("mode", mode);
        let kill = self.kills_privs(req);
        let f = || {
            if kill {
                self.fs.kill_privs(ino.0, req.gid())?;
            }
            self.fs.fallocate(fh.0, offset, length, mode)
        };
        match self.hook(req, Op::Fallocate, ino.0, None, 0, args, f) {
            Ok(()) => reply.ok(),
            Err(e) => reply_err!(reply, "fallocate", e),
        }
    }

    fn lseek(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        log::debug!("lseek(ino={}, off={offset}, whence={whence})", ino.0);
        let args = |a: &mut Args| _ = a.n("fh", fh.0).n("off", offset).n("whence", whence);
        match self.hook(req, Op::Lseek, ino.0, None, 0, args, || self.fs.lseek(fh.0, offset, whence)) {
            Ok(o) => reply.offset(o),
            Err(e) => reply_err!(reply, "lseek", e),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        log::debug!("copy_file_range({} -> {}, len={len})", ino_in.0, ino_out.0);
        let args = |a: &mut Args| {
            a.n("fh_in", fh_in.0).n("off_in", offset_in).n("ino_out", ino_out.0);
            a.n("fh_out", fh_out.0).n("off_out", offset_out).n("len", len);
        };
        let kill = self.kills_privs(req);
        let f = || {
            if kill {
                self.fs.kill_privs(ino_out.0, req.gid())?;
            }
            self.fs.copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
        };
        match self.hook(req, Op::CopyFileRange, ino_in.0, None, len, args, f) {
            Ok(n) => reply.written(n),
            Err(e) => reply_err!(reply, "copy_file_range", e),
        }
    }
}
