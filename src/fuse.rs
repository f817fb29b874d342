//! The thin adapter from fuser's `Filesystem` trait to [`OverlayFs`]: each method logs the
//! request at debug level (`-d`), calls the façade, and replies. No union logic lives here.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
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

/// The fuser `Filesystem` for one mount.
pub struct Fuse {
    pub fs: Arc<OverlayFs>,
    pub ttl: Duration,
    pub writeback: bool,
    /// Try FUSE passthrough (kernel 6.9+, needs CAP_SYS_ADMIN); switched off for good at the
    /// first refusal.
    pub passthrough: AtomicBool,
    backing: Mutex<Backing>,
    /// Exit the process when the session ends (the `layerfs` server), instead of returning.
    pub exit_on_destroy: bool,
}

/// How the open handles of each inode are served. The kernel requires every open of an inode
/// to agree: all passthrough with one backing file, or none passthrough (mixing fails the open).
/// So an inode's first open decides until its last handle closes: passthrough when the real
/// file cannot change under it (an upper file, or any file of a read-only mount), otherwise
/// served here (a lower file may be copied up while open, which would change the backing file).
#[derive(Default)]
struct Backing {
    by_ino: HashMap<u64, InoMode>,
    by_fh: HashMap<u64, u64>,
}

enum InoMode {
    Cached(usize),
    Passthrough(Arc<BackingId>, usize),
}

/// How an open is answered.
enum OpenMode {
    Cached,
    Passthrough(Arc<BackingId>),
}

impl Fuse {
    pub fn new(fs: Arc<OverlayFs>, ttl: Duration, writeback: bool, passthrough: bool) -> Fuse {
        Fuse {
            fs,
            ttl,
            writeback,
            passthrough: AtomicBool::new(passthrough),
            backing: Mutex::new(Backing::default()),
            exit_on_destroy: false,
        }
    }

    /// Picks the mode of a new open handle. `register` turns a real fd into a backing id
    /// (ReplyOpen and ReplyCreate each have one).
    fn open_mode(
        &self,
        ino: u64,
        fh: u64,
        register: impl FnOnce(&OwnedFd) -> io::Result<BackingId>,
    ) -> OpenMode {
        let mut b = self.backing.lock();
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
            None => {}
        }
        let mut mode = OpenMode::Cached;
        if self.passthrough.load(Ordering::Relaxed) {
            match self.fs.backing_file(fh) {
                Ok((fd, upper)) if upper || self.fs.is_read_only() => match register(&fd) {
                    Ok(id) => mode = OpenMode::Passthrough(Arc::new(id)),
                    Err(e) => {
                        log::info!("FUSE passthrough not available ({e}); serving file data in userspace");
                        self.passthrough.store(false, Ordering::Relaxed);
                    }
                },
                Ok(_) => {}
                Err(e) => log::debug!("passthrough: no backing file for {ino}: {e}"),
            }
        }
        let m = match &mode {
            OpenMode::Cached => InoMode::Cached(1),
            OpenMode::Passthrough(id) => InoMode::Passthrough(id.clone(), 1),
        };
        b.by_ino.insert(ino, m);
        mode
    }

    fn drop_backing(&self, fh: u64) {
        let mut b = self.backing.lock();
        let Some(ino) = b.by_fh.remove(&fh) else { return };
        let last = match b.by_ino.get_mut(&ino) {
            Some(InoMode::Cached(n)) | Some(InoMode::Passthrough(_, n)) => {
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

fn fopen(o: &Opened) -> FopenFlags {
    let mut f = FopenFlags::empty();
    if o.keep_cache {
        f |= FopenFlags::FOPEN_KEEP_CACHE;
    }
    if o.direct_io {
        f |= FopenFlags::FOPEN_DIRECT_IO;
    }
    f
}

fn caller(req: &Request) -> Caller {
    Caller { uid: req.uid(), gid: req.gid() }
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
        {
            let _ = config.add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE);
        }
        Ok(())
    }

    fn destroy(&mut self) {
        log::debug!("destroy: the mount is gone");
        if self.exit_on_destroy {
            // fuser would now unmount the mountpoint *by path* (its "still mounted?" check reads
            // an aborted connection as mounted), which takes down a new mount made at the same
            // path meanwhile. Our mount is already gone when we get here, so stop right away.
            std::process::exit(0);
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        log::debug!("lookup(parent={}, name={:?})", parent.0, name);
        match self.fs.lookup(parent.0, name) {
            Ok(attr) => reply.entry(&self.ttl, &attr, Generation(0)),
            Err(e) => reply_err!(reply, "lookup", e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        log::debug!("forget(ino={}, n={nlookup})", ino.0);
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        log::debug!("getattr(ino={}, fh={:?})", ino.0, fh.map(|f| f.0));
        let r = match fh {
            Some(fh) => self.fs.getattr_fh(ino.0, fh.0).or_else(|_| self.fs.getattr(ino.0)),
            None => self.fs.getattr(ino.0),
        };
        match r {
            Ok(attr) => reply.attr(&self.ttl, &attr),
            Err(e) => reply_err!(reply, "getattr", e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        log::debug!("setattr(ino={}, mode={mode:?}, uid={uid:?}, gid={gid:?}, size={size:?})", ino.0);
        let sa = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
            fh: fh.map(|f| f.0),
        };
        match self.fs.setattr(ino.0, sa) {
            Ok(attr) => reply.attr(&self.ttl, &attr),
            Err(e) => reply_err!(reply, "setattr", e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        log::debug!("readlink(ino={})", ino.0);
        match self.fs.readlink(ino.0) {
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
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        log::debug!("mknod(parent={}, name={name:?}, mode={mode:o}, rdev={rdev})", parent.0);
        match self.fs.mknod(parent.0, name, mode, rdev as u64, caller(req)) {
            Ok(attr) => reply.entry(&self.ttl, &attr, Generation(0)),
            Err(e) => reply_err!(reply, "mknod", e),
        }
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        log::debug!("mkdir(parent={}, name={name:?}, mode={mode:o})", parent.0);
        match self.fs.mkdir(parent.0, name, mode, caller(req)) {
            Ok(attr) => reply.entry(&self.ttl, &attr, Generation(0)),
            Err(e) => reply_err!(reply, "mkdir", e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        log::debug!("unlink(parent={}, name={name:?})", parent.0);
        match self.fs.remove(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply_err!(reply, "unlink", e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        log::debug!("rmdir(parent={}, name={name:?})", parent.0);
        match self.fs.remove(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply_err!(reply, "rmdir", e),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        log::debug!("symlink(parent={}, name={link_name:?}, target={target:?})", parent.0);
        match self.fs.symlink(parent.0, link_name, target.as_os_str(), caller(req)) {
            Ok(attr) => reply.entry(&self.ttl, &attr, Generation(0)),
            Err(e) => reply_err!(reply, "symlink", e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        log::debug!("rename({}/{name:?} -> {}/{newname:?}, flags={})", parent.0, newparent.0, flags.bits());
        match self.fs.rename(parent.0, name, newparent.0, newname, flags.bits()) {
            Ok(()) => reply.ok(),
            Err(e) => reply_err!(reply, "rename", e),
        }
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        log::debug!("link(ino={}, newparent={}, newname={newname:?})", ino.0, newparent.0);
        match self.fs.link(ino.0, newparent.0, newname) {
            Ok(attr) => reply.entry(&self.ttl, &attr, Generation(0)),
            Err(e) => reply_err!(reply, "link", e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        log::debug!("open(ino={}, flags={:#x})", ino.0, flags.0);
        match self.fs.open(ino.0, flags.0) {
            Ok(o) => match self.open_mode(ino.0, o.fh, |fd| reply.open_backing(fd)) {
                OpenMode::Passthrough(id) => {
                    reply.opened_passthrough(FileHandle(o.fh), FopenFlags::empty(), &id)
                }
                OpenMode::Cached => reply.opened(FileHandle(o.fh), fopen(&o)),
            },
            Err(e) => reply_err!(reply, "open", e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        log::debug!("read(ino={}, fh={}, off={offset}, size={size})", ino.0, fh.0);
        match self.fs.read(fh.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply_err!(reply, "read", e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        log::debug!("write(ino={}, fh={}, off={offset}, len={})", ino.0, fh.0, data.len());
        match self.fs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply_err!(reply, "write", e),
        }
    }

    fn flush(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        log::debug!("flush(ino={}, fh={})", ino.0, fh.0);
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        log::debug!("release(ino={}, fh={})", ino.0, fh.0);
        self.drop_backing(fh.0);
        self.fs.release(fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        log::debug!("fsync(ino={}, fh={}, datasync={datasync})", ino.0, fh.0);
        match self.fs.fsync(fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply_err!(reply, "fsync", e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        log::debug!("opendir(ino={})", ino.0);
        match self.fs.opendir(ino.0) {
            // The kernel may cache listings: every change to a directory goes through it, and
            // it drops its cache on each of them.
            Ok(fh) if !self.ttl.is_zero() => {
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE)
            }
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply_err!(reply, "opendir", e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        log::debug!("readdir(ino={}, fh={}, offset={offset})", ino.0, fh.0);
        match self.fs.readdir(ino.0, fh.0, offset) {
            Ok(entries) => {
                for (i, e) in entries.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(e.ino), (i + 1) as u64, e.kind, &e.name) {
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
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        log::debug!("readdirplus(ino={}, fh={}, offset={offset})", ino.0, fh.0);
        let entries = match self.fs.readdir(ino.0, fh.0, offset) {
            Ok(e) => e,
            Err(e) => return reply_err!(reply, "readdirplus", e),
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            let off = (i + 1) as u64;
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
                }
                Err(err) => log::debug!("readdirplus: {:?} vanished: {err}", e.name),
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        log::debug!("releasedir(ino={}, fh={})", ino.0, fh.0);
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        log::debug!("fsyncdir(ino={})", ino.0);
        match self.fs.fsyncdir(ino.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply_err!(reply, "fsyncdir", e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        log::debug!("statfs()");
        match self.fs.statfs() {
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
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        log::debug!("setxattr(ino={}, name={name:?}, len={})", ino.0, value.len());
        match self.fs.setxattr(ino.0, name, value, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply_err!(reply, "setxattr", e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        log::debug!("getxattr(ino={}, name={name:?}, size={size})", ino.0);
        match self.fs.getxattr(ino.0, name) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::from_i32(libc::ERANGE)),
            Ok(v) => reply.data(&v),
            Err(e) => reply_err!(reply, "getxattr", e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        log::debug!("listxattr(ino={}, size={size})", ino.0);
        match self.fs.listxattr(ino.0) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::from_i32(libc::ERANGE)),
            Ok(v) => reply.data(&v),
            Err(e) => reply_err!(reply, "listxattr", e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        log::debug!("removexattr(ino={}, name={name:?})", ino.0);
        match self.fs.removexattr(ino.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply_err!(reply, "removexattr", e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        log::debug!("access(ino={}, mask={})", ino.0, mask.bits());
        match self.fs.access(ino.0, mask.bits()) {
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
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        log::debug!("create(parent={}, name={name:?}, mode={mode:o}, flags={flags:#x})", parent.0);
        match self.fs.create(parent.0, name, mode, flags, caller(req)) {
            Ok((attr, o)) => {
                let (ttl, g, fh) = (&self.ttl, Generation(0), FileHandle(o.fh));
                match self.open_mode(attr.ino.0, o.fh, |fd| reply.open_backing(fd)) {
                    OpenMode::Passthrough(id) => {
                        reply.created_passthrough(ttl, &attr, g, fh, FopenFlags::empty(), &id)
                    }
                    OpenMode::Cached => reply.created(ttl, &attr, g, fh, fopen(&o)),
                }
            }
            Err(e) => reply_err!(reply, "create", e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        log::debug!("fallocate(ino={}, off={offset}, len={length}, mode={mode})", ino.0);
        match self.fs.fallocate(fh.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply_err!(reply, "fallocate", e),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        log::debug!("lseek(ino={}, off={offset}, whence={whence})", ino.0);
        match self.fs.lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply_err!(reply, "lseek", e),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
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
        match self.fs.copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len) {
            Ok(n) => reply.written(n),
            Err(e) => reply_err!(reply, "copy_file_range", e),
        }
    }
}
