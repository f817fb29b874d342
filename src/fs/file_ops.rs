//! File data and metadata operations: open/create, read/write, setattr, fsync, fallocate,
//! lseek, copy_file_range, and the xattr writes.
//!
//! Hard parts, and where they are handled:
//! 1. Opening a lower file for writing (or with O_TRUNC) copies it up first; O_TRUNC copies no
//!    data. Read-only opens of lower files read the lower file directly.
//! 2. A descriptor opened read-only on a lower file switches to the upper copy on its next read
//!    once the file has been copied up, so every reader sees the new data (as the kernel's
//!    overlayfs does).
//! 3. The server's own descriptors never carry O_APPEND or O_DIRECT: the kernel sends explicit
//!    offsets, and buffers are not aligned.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use fuser::FileType;
use parking_lot::RwLock;

use super::dir_ops::{Caller, NewObj};
use super::{Attr, FileHandle, Node, OverlayFs, PROT_APPEND, PROT_IMMUTABLE, PROT_UNKNOWN, cname};
use crate::error::{Error, Result};
use crate::layer::Loc;
use crate::ovr;
use crate::sys::{self, SetTime};
use crate::whiteout;

/// The reply to an open.
#[derive(Clone, Copy, Debug)]
pub struct Opened {
    pub fh: u64,
    pub keep_cache: bool,
    pub direct_io: bool,
}

/// The fields of a setattr that were set.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    pub fh: Option<u64>,
    /// Who asks: a chown's dropping of setgid depends on it.
    pub caller: super::Caller,
}

/// File capabilities: dropped by writes, as setuid is.
const CAPS_XATTR: &std::ffi::CStr = c"security.capability";

fn real_flags(flags: i32) -> i32 {
    flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_TRUNC | libc::O_APPEND | libc::O_DIRECT)
}

/// Whether a file's mode makes writes to it drop privileges: setuid, or setgid with group
/// execute (the kernel's `should_remove_suid`).
pub fn privileged_mode(mode: u32) -> bool {
    mode & libc::S_ISUID != 0 || mode & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP
}

fn is_write(flags: i32) -> bool {
    let acc = flags & libc::O_ACCMODE;
    acc == libc::O_WRONLY || acc == libc::O_RDWR || flags & libc::O_TRUNC != 0
}

/// Reads of at least this many bytes are answered from a mapping of the file (one copy fewer
/// than `pread` into a buffer); below it, the mapping's set-up costs more than the copy.
pub const MAP_READ_MIN: usize = 128 << 10;

/// How far past a sequential mapped read the file's data is asked for (see `ask_ahead`).
pub const READ_AHEAD: u64 = 8 << 20;

/// The bytes a READ answers with.
pub enum ReadData<'b> {
    /// Read into the caller's buffer.
    Copied(&'b [u8]),
    /// A mapping of the file's pages: only the kernel may read it (see [`sys::FileView`]).
    Mapped(sys::FileView),
}

impl ReadData<'_> {
    pub fn bytes(&self) -> &[u8] {
        match self {
            ReadData::Copied(b) => b,
            ReadData::Mapped(v) => v.bytes(),
        }
    }
}

impl OverlayFs {
    /// Registers a handle of `fd`, opened with `flags`; `write_only`: the caller opened it so
    /// (CREATE opens the real file read-write even then).
    fn register_file(
        &self,
        node: Arc<Node>,
        fd: OwnedFd,
        from_lower: bool,
        flags: i32,
        write_only: bool,
    ) -> Opened {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.files.write().insert(
            fh,
            Arc::new(FileHandle {
                node,
                fd: RwLock::new(Arc::new(fd)),
                from_lower: AtomicBool::new(from_lower),
                next_read: AtomicU64::new(0),
                ahead_to: AtomicU64::new(0),
                writable: flags & libc::O_ACCMODE != libc::O_RDONLY,
                plain_rw: flags & libc::O_ACCMODE == libc::O_RDWR
                    && flags
                        & (libc::O_APPEND | libc::O_DIRECT | libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME)
                        == 0,
            }),
        );
        let o_direct = flags & libc::O_DIRECT != 0;
        Opened {
            fh,
            keep_cache: !o_direct && !self.opts.timeout.is_zero(),
            direct_io: o_direct || self.writes_direct(write_only),
        }
    }

    /// Whether a handle's writes skip FUSE's page cache (`FOPEN_DIRECT_IO`) though the caller
    /// did not ask for O_DIRECT: a write-only handle when the writeback cache is off. Without
    /// it each write is copied into FUSE's own cache on its way to the server, which copies
    /// it again into the upper file's cache: twice the copies into fresh pages, and the data
    /// cached twice. The handle cannot read, nor be mapped, so nothing it could see changes;
    /// the kernel drops cached pages of the range before each such write, so other handles
    /// read the new data. Only what the server serves is affected: a handle passed through
    /// to its backing file (as root) takes neither path.
    fn writes_direct(&self, write_only: bool) -> bool {
        write_only && !self.writeback_cache.load(Ordering::Relaxed)
    }

    /// Opens a real file for a handle. Under the writeback cache a write-only open becomes
    /// read-write where permissions allow, since the kernel may read through any handle.
    fn open_loc(&self, loc: &Loc, flags: i32, lower: bool) -> std::io::Result<OwnedFd> {
        if self.writeback_cache.load(Ordering::Relaxed) && flags & libc::O_ACCMODE == libc::O_WRONLY {
            match self.open_real(loc, (flags & !libc::O_ACCMODE) | libc::O_RDWR, lower) {
                Err(e) if e.raw_os_error() == Some(libc::EACCES) => {}
                r => return r,
            }
        }
        self.open_real(loc, flags, lower)
    }

    /// Opens a real file that reads through the mount will read: a lower file, and an upper
    /// one under `noatime`, gets no new access time from them ([`sys::open_noatime`]).
    fn open_real(&self, loc: &Loc, flags: i32, lower: bool) -> std::io::Result<OwnedFd> {
        if lower || self.opts.noatime { sys::open_noatime(flags, |f| loc.open(f)) } else { loc.open(flags) }
    }

    pub(crate) fn file(&self, fh: u64) -> Result<Arc<FileHandle>> {
        self.files.read().get(&fh).cloned().ok_or(Error::errno(libc::EBADF))
    }

    pub fn open(&self, ino: u64, flags: i32) -> Result<Opened> {
        let node = self.node(ino)?;
        let write = is_write(flags);
        let trunc = flags & libc::O_TRUNC != 0;
        let mut prot = 0;
        if write || trunc {
            if write {
                self.check_writable()?;
            }
            // As the VFS decides for an append-only or immutable inode (may_open).
            prot = self.prot(&node);
            if prot & PROT_IMMUTABLE != 0
                || (prot & PROT_APPEND != 0 && (trunc || (write && flags & libc::O_APPEND == 0)))
            {
                return Err(Error::errno(libc::EPERM));
            }
        }
        if write {
            self.copy_up(&node, !trunc)?;
        }
        let top = node.top().ok_or(Error::errno(libc::ESTALE))?;
        let from_lower = !top.is_upper;
        // An append-only file's writes the server serves append, whatever offset they name.
        let append = if prot & PROT_APPEND != 0 { libc::O_APPEND } else { 0 };
        let fd = match self.open_loc(&top.loc, real_flags(flags) | append, from_lower) {
            // An append-only file (chattr +a) opens for writing only with O_APPEND. The server
            // writes at the offsets the kernel gives (its own pwrite would append anyway), so
            // it opens without it where it can.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && write && flags & libc::O_APPEND != 0 => {
                self.open_loc(&top.loc, real_flags(flags) | libc::O_APPEND, from_lower)
            }
            r => r,
        }
        .map_err(|e| Error::io(e, "open"))?;
        if flags & libc::O_TRUNC != 0 {
            // O_RDONLY|O_TRUNC truncates too (Linux): use a writable descriptor for it.
            let r = if flags & libc::O_ACCMODE == libc::O_RDONLY {
                top.loc.open(libc::O_WRONLY).and_then(|w| sys::ftruncate(w.as_fd(), 0))
            } else {
                sys::ftruncate(fd.as_fd(), 0)
            };
            r.map_err(|e| Error::io(e, "truncate"))?;
        }
        drop(top);
        Ok(self.register_file(node, fd, from_lower, flags, flags & libc::O_ACCMODE == libc::O_WRONLY))
    }

    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        caller: Caller,
    ) -> Result<(Attr, Opened)> {
        let p = self.node(parent)?;
        let write_only = flags & libc::O_ACCMODE == libc::O_WRONLY;
        let mut flags = real_flags(flags);
        if write_only {
            // A new file can always be opened read-write by its creator, and so opened it can
            // be its own passthrough backing file (under the writeback cache, the kernel may
            // also read through a write-only handle).
            flags = (flags & !libc::O_ACCMODE) | libc::O_RDWR;
        }
        let obj = NewObj::File { mode, flags };
        let (node, st, fd) = self.create_upper(&p, name, obj, caller)?;
        let fd = fd.ok_or(Error::errno(libc::EIO))?;
        let attr = self.new_attr(&node, st);
        Ok((attr, self.register_file(node, fd, false, flags, write_only)))
    }

    /// O_TMPFILE in `parent` ([`Self::tmpfile_upper`]), opened.
    pub fn tmpfile(&self, parent: u64, mode: u32, flags: i32, caller: Caller) -> Result<(Attr, Opened)> {
        let p = self.node(parent)?;
        let write_only = flags & libc::O_ACCMODE == libc::O_WRONLY;
        let flags = (real_flags(flags) & !libc::O_ACCMODE) | libc::O_RDWR;
        let (node, st, fd) = self.tmpfile_upper(&p, mode, flags, caller)?;
        let attr = self.new_attr(&node, st);
        Ok((attr, self.register_file(node, fd, false, flags, write_only)))
    }

    /// The fd to use for a handle, switching a lower read handle to the upper copy.
    fn handle_fd(&self, h: &FileHandle) -> Result<Arc<OwnedFd>> {
        Ok(self.handle_fd_of(h)?.0)
    }

    /// [`Self::handle_fd`], and whether that descriptor is the lower file's (the flag changes
    /// only under the descriptor's write lock, so the two go together).
    fn handle_fd_of(&self, h: &FileHandle) -> Result<(Arc<OwnedFd>, bool)> {
        if h.from_lower.load(Ordering::Acquire) && h.node.has_upper.load(Ordering::Acquire) {
            let mut g = h.fd.write();
            if h.from_lower.load(Ordering::Acquire) {
                if let Some(up) = h.node.upper() {
                    *g = Arc::new(
                        self.open_real(&up.loc, libc::O_RDONLY, false).map_err(|e| Error::io(e, "reopen"))?,
                    );
                }
                h.from_lower.store(false, Ordering::Release);
            }
        }
        let g = h.fd.read();
        Ok((g.clone(), h.from_lower.load(Ordering::Acquire)))
    }

    /// Reads up to `size` bytes at `offset`. A read of at least [`MAP_READ_MIN`] bytes of a
    /// lower file is answered from a mapping of the file, which the reply is written from;
    /// any other read is read into `buf` (resized as needed, reused across
    /// calls so a request costs no allocation or zeroing).
    pub fn read<'b>(&self, fh: u64, offset: u64, size: u32, buf: &'b mut Vec<u8>) -> Result<ReadData<'b>> {
        let h = self.file(fh)?;
        let (fd, lower) = self.handle_fd_of(&h)?;
        let size = size as usize;
        if size >= MAP_READ_MIN && lower {
            // Only a lower file is mapped: nothing through the mount truncates it. An upper
            // file truncated by another request between the mapping and the reply's write took
            // the mapping's tail away under the kernel's copy, and the READ failed with EIO.
            let mapped = self
                .reply_span(&h, &fd, offset, size)
                .and_then(|n| sys::FileView::map(fd.as_fd(), offset, n, offset + n as u64));
            match mapped {
                Ok(Some(view)) => return Ok(ReadData::Mapped(view)),
                Ok(None) => return Ok(ReadData::Copied(&buf[..0])),
                Err(e) => log::debug!("read: mapping fh {fh} failed ({e}), reading instead"),
            }
        } else if size >= MAP_READ_MIN && self.may_ask_ahead() {
            if let Ok(st) = sys::fstat(fd.as_fd()) {
                self.ask_ahead(&h, &fd, &st, offset, size as u64);
            }
        }
        if buf.len() < size {
            buf.resize(size, 0);
        }
        let got = pread_full(&fd, &mut buf[..size], offset)?;
        Ok(ReadData::Copied(&buf[..got]))
    }

    /// Reads up to `dst.len()` bytes at `offset` straight into `dst` (the io_uring transport's
    /// reply buffer); returns how many. Large reads ask the disk ahead as [`Self::read`] does.
    pub fn read_into(&self, fh: u64, offset: u64, dst: &mut [u8]) -> Result<usize> {
        let h = self.file(fh)?;
        let fd = self.handle_fd(&h)?;
        if dst.len() >= MAP_READ_MIN && self.may_ask_ahead() {
            if let Ok(st) = sys::fstat(fd.as_fd()) {
                self.ask_ahead(&h, &fd, &st, offset, dst.len() as u64);
            }
        }
        pread_full(&fd, dst, offset)
    }

    /// For a READ of `size` bytes at `offset` through handle `fh` that can be answered from the
    /// lower file's own pages (the io_uring transport lays them over its reply buffer, see
    /// [`crate::sys::PayloadBuf`]): the lower file's descriptor and how many bytes the reply
    /// holds (cut at the end of the file). `None` where the handle reads an upper file: one
    /// truncated through the mount meanwhile would fail the reply's copy. Large reads ask the
    /// disk ahead as [`Self::read`] does.
    pub fn lower_range(&self, fh: u64, offset: u64, size: usize) -> Result<Option<(Arc<OwnedFd>, usize)>> {
        let h = self.file(fh)?;
        let (fd, lower) = self.handle_fd_of(&h)?;
        if !lower {
            return Ok(None);
        }
        let n = self.reply_span(&h, &fd, offset, size).map_err(|e| Error::io(e, "fstat"))?;
        Ok(Some((fd, n)))
    }

    /// How many of the `size` bytes at `offset` a large read of lower file `fd` (through handle
    /// `h`) answers: cut at the file's end as it stands now. Asks the disk ahead.
    fn reply_span(&self, h: &FileHandle, fd: &OwnedFd, offset: u64, size: usize) -> std::io::Result<usize> {
        let st = sys::fstat(fd.as_fd())?;
        self.ask_ahead(h, fd, &st, offset, size as u64);
        Ok((st.st_size as u64).saturating_sub(offset).min(size as u64) as usize)
    }

    /// Starts the disk reads for a large read before it waits for them. Faults on a
    /// fresh mapping read the file through the disk's read-around (`read_ahead_kb`), each miss
    /// waited for in turn, and nothing works ahead of the next request; so the read's own
    /// range is asked for in one go, and on a sequential stream (a read starting within
    /// [`READ_AHEAD`] of where the handle's last one ended: the kernel's read-ahead sends
    /// several at once, in any order) also the next [`READ_AHEAD`] bytes, each byte once, so
    /// the disk works ahead of the kernel's requests. Nothing past the end of the file (`st`
    /// is its stat). Advice only: errors are ignored. Off with `read_ahead=0`.
    ///
    /// Nothing either where the file's disk reads around a fault at least [`READ_AHEAD`] bytes
    /// by itself (`read_ahead_kb`): the faults then start reads as large, and asking as well
    /// only put more, smaller reads in front of them. A cold 2 GiB lower file read through a
    /// disk of 8 MiB took 1.7-2.8 s asking ahead, 1.0-1.3 s not (5 alternating rounds).
    fn ask_ahead(&self, h: &FileHandle, fd: &OwnedFd, st: &sys::Stat, offset: u64, size: u64) {
        if !self.opts.read_ahead || self.disk_reads_around(st.st_dev) {
            return;
        }
        let eof = st.st_size as u64;
        let end = offset + size;
        let last = h.next_read.swap(end, Ordering::Relaxed);
        let (from, to) = if offset.abs_diff(last) > READ_AHEAD {
            (offset, end.min(eof))
        } else {
            // Cut at the end of file before it is kept: a file that grows is asked for again.
            let to = (end + READ_AHEAD).min(eof);
            (h.ahead_to.fetch_max(to, Ordering::Relaxed).max(offset), to)
        };
        // The kernel reads at most the disk's read-ahead window or largest request of one
        // WILLNEED (as little as 128 KiB), so the range is asked for in pieces.
        const PIECE: u64 = 256 << 10;
        let mut at = from;
        while at < to {
            let n = PIECE.min(to - at);
            if sys::will_need(fd.as_fd(), at, n).is_err() {
                break;
            }
            at += n;
        }
        self.read_asked.fetch_add(at.saturating_sub(from), Ordering::Relaxed);
    }

    /// Whether the disk of the layer filesystem on device `dev` reads around a fault at least
    /// [`READ_AHEAD`] bytes by itself (see [`Self::ask_ahead`]).
    pub fn disk_reads_around(&self, dev: u64) -> bool {
        self.disk_windows.iter().any(|&(d, w)| d == dev && w.is_some_and(|w| w >= READ_AHEAD))
    }

    /// Whether [`Self::ask_ahead`] can ask for anything on some layer: where no disk needs it,
    /// a read spares the `fstat` it would take.
    fn may_ask_ahead(&self) -> bool {
        self.opts.read_ahead && self.disk_windows.iter().any(|&(d, _)| !self.disk_reads_around(d))
    }

    /// The read-ahead windows, in KiB, of the layers' disks (one a filesystem).
    pub fn disk_read_ahead_kb(&self) -> impl Iterator<Item = u64> + '_ {
        self.disk_windows.iter().filter_map(|&(_, w)| w.map(|w| w >> 10))
    }

    /// Bytes asked for by mapped reads so far: their own ranges, and ahead of sequential ones
    /// (for tests and statistics).
    pub fn read_asked_bytes(&self) -> u64 {
        self.read_asked.load(Ordering::Relaxed)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let h = self.file(fh)?;
        let fd = h.fd.read().clone();
        let mut done = 0usize;
        while done < data.len() {
            match sys::pwrite(fd.as_fd(), &data[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    if done > 0 {
                        break;
                    }
                    return Err(Error::io(e, "write"));
                }
            }
        }
        Ok(done as u32)
    }

    /// An inode-attribute ioctl ([`sys::FILEATTR_IOCTLS`]) on the object's real inode, `arg`
    /// its argument (read back into it): a get reads the topmost layer's object, a set copies
    /// the object up first and sets the upper's, as kernel overlayfs does. Regular files and
    /// directories only (the kernel sends no other).
    pub fn fileattr(&self, ino: u64, cmd: u32, arg: &mut [u8]) -> Result<()> {
        let Some(&(_, size, set)) = sys::FILEATTR_IOCTLS.iter().find(|c| c.0 == cmd) else {
            return Err(Error::errno(libc::ENOTTY));
        };
        if arg.len() < size {
            return Err(Error::errno(libc::EINVAL));
        }
        let node = self.node(ino)?;
        let kind = node.state.lock().kind;
        let dir = match kind {
            FileType::Directory => libc::O_DIRECTORY,
            FileType::RegularFile => 0,
            _ => return Err(Error::errno(libc::ENOTTY)),
        };
        if set {
            self.copy_up(&node, true)?;
        }
        let top = if set { node.upper() } else { node.top() }.ok_or(Error::errno(libc::ESTALE))?;
        let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY | dir;
        let fd = top.loc.open(flags).map_err(|e| Error::io(e, "open for an inode-attribute ioctl"))?;
        // Append-only and immutable in the flags word (the first u32 of either argument).
        let (a_bit, i_bit) = if size == 4 { (0x20u32, 0x10u32) } else { (0x10, 0x08) };
        let word = u32::from_ne_bytes([arg[0], arg[1], arg[2], arg[3]]);
        let name = self.protattr_name();
        if set {
            // Kept in the protattr xattr, as kernel overlayfs keeps them, where the upper
            // filesystem takes it; the real inode then does not carry them.
            let want = if word & a_bit != 0 { PROT_APPEND } else { 0 }
                | if word & i_bit != 0 { PROT_IMMUTABLE } else { 0 };
            let r = if self.opts.noxattrs {
                Err(std::io::Error::from_raw_os_error(libc::ENOTSUP))
            } else if want == 0 {
                match top.loc.removexattr(name) {
                    Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
                    r => r,
                }
            } else {
                top.loc.setxattr(name, super::protattr_value(want), 0)
            };
            match r {
                Ok(()) => arg[..4].copy_from_slice(&(word & !(a_bit | i_bit)).to_ne_bytes()),
                Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {}
                Err(e) => return Err(Error::io(e, "protattr xattr")),
            }
            let r = sys::ioctl_buf(fd.as_fd(), cmd, &mut arg[..size]);
            node.prot.store(PROT_UNKNOWN, Ordering::Release);
            return r.map_err(|e| Error::io(e, "inode-attribute ioctl"));
        }
        sys::ioctl_buf(fd.as_fd(), cmd, &mut arg[..size])
            .map_err(|e| Error::io(e, "inode-attribute ioctl"))?;
        if top.is_upper && !self.opts.noxattrs {
            if let Ok(v) = top.loc.getxattr(name) {
                let p = super::protattr_bits(&v);
                let mut w = u32::from_ne_bytes([arg[0], arg[1], arg[2], arg[3]]);
                w |= if p & PROT_APPEND != 0 { a_bit } else { 0 }
                    | if p & PROT_IMMUTABLE != 0 { i_bit } else { 0 };
                arg[..4].copy_from_slice(&w.to_ne_bytes());
            }
        }
        Ok(())
    }

    /// Whether a handle open for writing refers to `ino`'s node.
    pub fn has_writer(&self, ino: u64) -> bool {
        let Ok(node) = self.node(ino) else { return false };
        self.files.read().values().any(|h| h.writable && Arc::ptr_eq(&h.node, &node))
    }

    /// Drops what a write, truncation or chown by `caller` must drop (the kernel leaves it
    /// to the server under FUSE_HANDLE_KILLPRIV_V2): setuid; setgid when group-executable, or
    /// when the caller is neither in the file's group nor root (CAP_FSETID), as the VFS does
    /// (`setattr_should_drop_sgid`; setgid without group execute is a locking mark); and file
    /// capabilities. For upper regular files only; anything else has nothing to drop or
    /// cannot have been written.
    pub fn kill_privs(&self, ino: u64, caller: Caller) -> Result<()> {
        let node = self.node(ino)?;
        if node.state.lock().kind != FileType::RegularFile {
            return Ok(());
        }
        let Some(up) = node.upper() else { return Ok(()) };
        let loc = &up.loc;
        let drop_bits = |perm: u32, gid: u32| {
            let mut p = perm & !libc::S_ISUID;
            if p & libc::S_ISGID != 0
                && (p & libc::S_IXGRP != 0 || !caller.in_group_or_root(self.opts.gid_map.to_shown(gid)))
            {
                p &= !libc::S_ISGID;
            }
            p
        };
        match self.read_override(loc, 0) {
            // Nothing to drop: no stat (this runs for every write of such a caller).
            Some(o) if o.perm & (libc::S_ISUID | libc::S_ISGID) == 0 => {}
            // The mode lives in the override xattr: the bits are dropped there.
            Some(o) if self.keeps_override(loc) => {
                let perm = drop_bits(o.perm, o.gid);
                if perm != o.perm {
                    self.write_override(loc, &ovr::Override { perm, ..o })?;
                    self.mode_dropped(ino);
                }
            }
            _ => {
                let st = loc.stat().map_err(|e| Error::io(e, "stat"))?;
                let mode = drop_bits(st.st_mode & 0o7777, st.st_gid);
                if mode != st.st_mode & 0o7777 {
                    loc.chmod(mode).map_err(|e| Error::io(e, "chmod"))?;
                    self.mode_dropped(ino);
                }
            }
        }
        // Looked up first: removing even an absent security.* xattr needs privilege.
        let live = loc.live().map_err(|e| Error::io(e, "xattr"))?;
        if live.xattr_at().get_into(CAPS_XATTR, &mut []).is_err() {
            return Ok(());
        }
        match live.with_xattr_path(|path, follow| sys::removexattr(path, CAPS_XATTR, follow)) {
            Err(e) if e.raw_os_error() != Some(libc::ENODATA) => Err(Error::io(e, "removexattr")),
            _ => Ok(()),
        }
    }

    /// The kernel holds the mode from before a privilege drop (after a write it updates only
    /// size and times): it is to ask again.
    fn mode_dropped(&self, ino: u64) {
        if let Some(f) = self.attrs_stale.get() {
            f(ino);
        }
    }

    /// Whether writes to this real file must drop privileges (setuid, setgid with group
    /// execute, or file capabilities): such files are not given to FUSE passthrough, whose
    /// writes the server never sees.
    pub fn carries_privs(&self, fd: &OwnedFd) -> bool {
        let Ok(st) = sys::fstat(fd.as_fd()) else { return true };
        if privileged_mode(st.st_mode) {
            return true;
        }
        // With owners and modes in an override xattr, the mode is the recorded one.
        if let Some(name) = self.ovr.first().copied().flatten() {
            if let Ok(v) = sys::XattrAt::Pinned(std::os::fd::AsRawFd::as_raw_fd(fd)).get(name) {
                if ovr::parse(&v).is_ok_and(|o| privileged_mode(o.perm)) {
                    return true;
                }
            }
        }
        match sys::fgetxattr_len(fd.as_fd(), CAPS_XATTR) {
            Err(e) => e.raw_os_error() != Some(libc::ENODATA) && e.raw_os_error() != Some(libc::EOPNOTSUPP),
            Ok(_) => true,
        }
    }

    /// A descriptor of the real file behind an open handle, for FUSE passthrough: read-write for
    /// an upper file (every later open of the inode shares one backing file), read-only for a
    /// lower one. The bool says whether it is the upper file.
    pub fn backing_file(&self, fh: u64) -> Result<(Arc<OwnedFd>, bool)> {
        let h = self.file(fh)?;
        let top = h.node.top().ok_or(Error::errno(libc::ESTALE))?;
        if top.is_upper && h.plain_rw && !h.from_lower.load(Ordering::Relaxed) && self.upper_noatime.is_none()
        {
            // The handle's own descriptor will do (the kernel takes its own reference).
            return Ok((h.fd.read().clone(), true));
        }
        let flags = if top.is_upper { libc::O_RDWR } else { libc::O_RDONLY };
        if let Some(m) = self.upper_noatime.as_ref().filter(|_| top.is_upper) {
            let fd =
                top.loc.open(libc::O_PATH).and_then(|p| sys::reopen_on_mount(p.as_fd(), m.as_fd(), flags));
            match fd {
                Ok(fd) => return Ok((Arc::new(fd), true)),
                Err(e) => log::debug!("backing file of {} not opened noatime: {e}", h.node.ino),
            }
        }
        let fd = self.open_real(&top.loc, flags, !top.is_upper).map_err(|e| Error::io(e, "backing open"))?;
        Ok((Arc::new(fd), top.is_upper))
    }

    /// The size of the file an open handle reads.
    pub fn handle_size(&self, fh: u64) -> Result<u64> {
        let h = self.file(fh)?;
        let fd = self.handle_fd(&h)?;
        Ok(sys::fstat(fd.as_fd()).map_err(|e| Error::io(e, "fstat"))?.st_size as u64)
    }

    /// Attributes through an open file (fstat): works after the last name is gone.
    pub fn getattr_fh(&self, ino: u64, fh: u64) -> Result<Attr> {
        let h = self.file(fh)?;
        if h.node.ino != ino {
            return self.getattr(ino);
        }
        let fd = self.handle_fd(&h)?;
        let mut st = sys::fstat(fd.as_fd()).map_err(|e| Error::io(e, "fstat"))?;
        let mut li = 0;
        if let Some(top) = h.node.top() {
            self.apply_override(&mut st, &top.loc, top.layer);
            li = top.layer;
        }
        Ok(self.attr_from_stat(ino, li, &st, false))
    }

    pub fn release(&self, fh: u64) {
        let h = self.files.write().remove(&fh);
        // The handle may have held the last reference to a removed copy forgotten before.
        drop(h);
        self.unmap_released();
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        if !self.opts.fsync {
            return Ok(());
        }
        let h = self.file(fh)?;
        // A read handle opened on the lower file syncs the copy once there is one (the data
        // written through other handles); a lower file itself is never synced, as the kernel
        // does not.
        let (fd, lower) = self.handle_fd_of(&h)?;
        if lower {
            return Ok(());
        }
        sys::fsync(fd.as_fd(), datasync).map_err(|e| Error::io(e, "fsync"))
    }

    pub fn fsyncdir(&self, ino: u64, datasync: bool) -> Result<()> {
        if !self.opts.fsync {
            return Ok(());
        }
        let node = self.node(ino)?;
        let up = node.state.lock().upper.clone();
        if let Some(up) = up {
            let fd = up.open(libc::O_RDONLY | libc::O_DIRECTORY).map_err(|e| Error::io(e, "fsyncdir"))?;
            sys::fsync(fd.as_fd(), datasync).map_err(|e| Error::io(e, "fsyncdir"))?;
        }
        Ok(())
    }

    pub fn setattr(&self, ino: u64, sa: SetAttr) -> Result<Attr> {
        self.check_writable()?;
        let node = self.node(ino)?;
        let prot = self.prot(&node);
        if prot != 0 {
            // As the VFS refuses them on an append-only or immutable inode: owner, mode, times
            // given, size; and times set to now on an immutable one.
            let given = |t: &Option<SetTime>| matches!(t, Some(SetTime::At(..)));
            let now = |t: &Option<SetTime>| matches!(t, Some(SetTime::Now));
            if sa.mode.is_some()
                || sa.uid.is_some()
                || sa.gid.is_some()
                || sa.size.is_some()
                || given(&sa.atime)
                || given(&sa.mtime)
                || (prot & PROT_IMMUTABLE != 0 && (now(&sa.atime) || now(&sa.mtime)))
            {
                return Err(Error::errno(libc::EPERM));
            }
        }
        let times_only = sa.mode.is_none() && sa.uid.is_none() && sa.gid.is_none() && sa.size.is_none();
        let nothing = times_only && sa.atime.is_none() && sa.mtime.is_none();
        let flushed = times_only && self.writeback_cache.load(Ordering::Relaxed);
        if (nothing || flushed) && !node.has_upper.load(Ordering::Acquire) && node.state.lock().unlinked {
            // The ctime the kernel's writeback cache sends within an unlink or a rename over a
            // lower file, and the times it flushes when a descriptor of it is closed or synced:
            // nothing to copy up for a removed object (that failed, and the close with it).
            return self.node_attr(&node);
        }
        let only_truncate_to_zero =
            sa.size == Some(0) && sa.mode.is_none() && sa.uid.is_none() && sa.gid.is_none();
        self.copy_up(&node, !only_truncate_to_zero)?;
        let kind = node.state.lock().kind;
        let up = node.upper().ok_or(Error::errno(libc::EIO))?;
        let loc = &up.loc;
        if let Some(size) = sa.size {
            if kind == FileType::Directory {
                return Err(Error::errno(libc::EISDIR));
            }
            let via_fh = sa.fh.and_then(|fh| self.file(fh).ok()).map(|h| h.fd.read().clone());
            let r = match via_fh {
                Some(fd) => sys::ftruncate(fd.as_fd(), size),
                None => loc.open(libc::O_WRONLY).and_then(|fd| sys::ftruncate(fd.as_fd(), size)),
            };
            // An fh opened read-only cannot truncate: fall back to a fresh descriptor.
            if let Err(e) = r {
                if e.raw_os_error() == Some(libc::EINVAL) || e.raw_os_error() == Some(libc::EBADF) {
                    let fd = loc.open(libc::O_WRONLY).map_err(|e| Error::io(e, "truncate"))?;
                    sys::ftruncate(fd.as_fd(), size).map_err(|e| Error::io(e, "truncate"))?;
                } else {
                    return Err(Error::io(e, "truncate"));
                }
            }
        }
        if (sa.uid.is_some() || sa.gid.is_some() || sa.mode.is_some()) && self.keeps_override(loc) {
            // Owner and mode live in the override xattr: the real file keeps what the server
            // needs to reach it.
            let st = self.stat_eff(loc, 0).map_err(|e| Error::io(e, "stat"))?;
            let (uid, gid) = self.disk_owner(sa.uid.unwrap_or(u32::MAX), sa.gid.unwrap_or(u32::MAX))?;
            let mut perm = sa.mode.map_or(st.st_mode, |m| m) & 0o7777;
            if sa.mode.is_none() && kind != FileType::Directory {
                // A chown drops setuid, and setgid where group-executable or where the caller
                // (not root) is not in the file's group, as the VFS does; under
                // FUSE_HANDLE_KILLPRIV_V2 the kernel leaves that to the server.
                perm &= !libc::S_ISUID;
                if perm & libc::S_IXGRP != 0
                    || !sa.caller.in_group_or_root(self.opts.gid_map.to_shown(st.st_gid))
                {
                    perm &= !libc::S_ISGID;
                }
            }
            let o = ovr::Override {
                uid: if uid == u32::MAX { st.st_uid } else { uid },
                gid: if gid == u32::MAX { st.st_gid } else { gid },
                perm,
                kind: ovr::Kind::from_mode(st.st_mode, st.st_rdev),
            };
            self.write_override(loc, &o)?;
        } else if sa.uid.is_some() || sa.gid.is_some() {
            let (uid, gid) = self.disk_owner(sa.uid.unwrap_or(u32::MAX), sa.gid.unwrap_or(u32::MAX))?;
            // The real chown drops setuid, and setgid where group-executable; the VFS also
            // drops a setgid the caller (not root) could not have set, not being in the file's
            // group, which the server's own chown as root keeps.
            let sgid_kept = |st: &sys::Stat| st.st_mode & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID;
            let drop_sgid = kind != FileType::Directory
                && sa.mode.is_none()
                && sa.caller.uid != 0 // (root keeps it: no stat)
                && loc.stat().is_ok_and(|st| {
                    sgid_kept(&st) && !sa.caller.in_group_or_root(self.opts.gid_map.to_shown(st.st_gid))
                });
            if let Err(e) = loc.chown(uid, gid) {
                // As fuse-overlayfs: with squash_to_*, chown errors are ignored.
                if !self.squashing() {
                    return Err(Error::io(e, "chown"));
                }
            }
            if drop_sgid {
                let st = loc.stat().map_err(|e| Error::io(e, "stat"))?;
                if sgid_kept(&st) {
                    loc.chmod(st.st_mode & 0o7777 & !libc::S_ISGID).map_err(|e| Error::io(e, "chmod"))?;
                }
            }
        }
        if let (Some(mode), false) = (sa.mode, self.keeps_override(loc)) {
            if kind != FileType::Symlink {
                loc.chmod(mode & 0o7777).map_err(|e| Error::io(e, "chmod"))?;
            }
        }
        if sa.atime.is_some() || sa.mtime.is_some() {
            loc.utimes(sa.atime.unwrap_or(SetTime::Omit), sa.mtime.unwrap_or(SetTime::Omit))
                .map_err(|e| Error::io(e, "utimes"))?;
        }
        drop(up);
        self.node_attr(&node)
    }

    /// Marks the ctime of an upper object as changed, as chown(-1, -1) does. Best effort:
    /// nothing else depends on it.
    pub fn mark_ctime(&self, ino: u64) {
        let Ok(node) = self.node(ino) else { return };
        if let Some(up) = node.upper() {
            if let Err(e) = up.loc.chown(u32::MAX, u32::MAX) {
                log::debug!("chown(-1, -1) of ino {ino}: {e}");
            }
        }
    }

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> Result<()> {
        let h = self.file(fh)?;
        // As vfs_fallocate: only a plain allocation on an append-only file, none on an
        // immutable one.
        let prot = self.prot(&h.node);
        if prot & PROT_IMMUTABLE != 0 || (prot & PROT_APPEND != 0 && mode & !libc::FALLOC_FL_KEEP_SIZE != 0) {
            return Err(Error::errno(libc::EPERM));
        }
        let fd = h.fd.read().clone();
        sys::fallocate(fd.as_fd(), mode, offset as i64, length as i64).map_err(|e| Error::io(e, "fallocate"))
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        let h = self.file(fh)?;
        let fd = self.handle_fd(&h)?;
        sys::lseek(fd.as_fd(), offset, whence).map_err(|e| Error::io(e, "lseek"))
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> Result<u32> {
        let hi = self.file(fh_in)?;
        let ho = self.file(fh_out)?;
        let fi = self.handle_fd(&hi)?;
        let fo = ho.fd.read().clone();
        let len = len.min(u32::MAX as u64 & !0xfff) as usize;
        let n = sys::copy_file_range(fi.as_fd(), off_in, fo.as_fd(), off_out, len)
            .map_err(|e| Error::io(e, "copy_file_range"))?;
        Ok(n as u32)
    }

    /// Whether an upper object's owner and mode are kept in the override xattr: a regular file
    /// or directory with `xattr_permissions=`; any object that carries one already (made so,
    /// or copied up from a layer that has them). Other types get one only where the xattr can
    /// be set (not `user.*` on a fifo, socket or symlink).
    pub(crate) fn keeps_override(&self, upper: &Loc) -> bool {
        let Some(name) = self.ovr.first().copied().flatten().filter(|_| self.has_upper) else {
            return false;
        };
        let Ok(st) = upper.stat() else { return false };
        let f = st.st_mode & libc::S_IFMT;
        (self.write_ovr && (f == libc::S_IFREG || f == libc::S_IFDIR)) || upper.getxattr(name).is_ok()
    }

    /// Writes the upper's override xattr on an upper object.
    pub(crate) fn write_override(&self, upper: &Loc, o: &ovr::Override) -> Result<()> {
        let name = self.ovr.first().copied().flatten().ok_or(Error::errno(libc::EIO))?;
        upper.setxattr(name, ovr::format(o).as_bytes(), 0).map_err(|e| Error::io(e, "write override xattr"))
    }

    // ---- xattrs (write side) --------------------------------------------------------------

    /// The node whose upper object an xattr change goes to (copied up), and the name.
    fn xattr_target(&self, ino: u64, name: &OsStr) -> Result<(Arc<Node>, CString)> {
        if self.opts.noxattrs {
            return Err(Error::errno(libc::ENOSYS));
        }
        let n = name.as_bytes();
        if whiteout::is_private_xattr(n) {
            // As the kernel: the overlay's own xattrs cannot be changed through the mount.
            return Err(Error::errno(libc::EOPNOTSUPP));
        }
        if ovr::is_override_xattr(n) {
            // As fuse-overlayfs: owners and modes change through chown/chmod only.
            return Err(Error::errno(libc::EPERM));
        }
        if super::is_acl_xattr(n) && !self.acl_enabled() {
            // ACLs off (noacl, or a layer without them): as a filesystem without ACLs.
            return Err(Error::errno(libc::EOPNOTSUPP));
        }
        self.check_writable()?;
        let node = self.node(ino)?;
        self.copy_up(&node, true)?;
        // (A default ACL or capabilities may come or go.)
        node.facts.fetch_and(!(super::FACT_NO_DEFAULT_ACL | super::FACT_NO_CAPS), Ordering::AcqRel);
        Ok((node, cname(n)?))
    }

    /// `kill_sgid`: the setter of an access ACL may not keep the setgid bit (not in the
    /// object's group, without CAP_FSETID; the kernel says so, the VFS would drop it).
    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32, kill_sgid: bool) -> Result<()> {
        self.xattr_writable(ino)?;
        let (node, cn) = self.xattr_target(ino, name)?;
        let up = node.upper().ok_or(Error::errno(libc::EIO))?;
        let kill_sgid = kill_sgid && cn.as_c_str() == super::ACL_ACCESS;
        if cn.as_c_str() == super::ACL_ACCESS && self.keeps_override(&up.loc) {
            if let Some(acl) = crate::acl::Acl::parse(value) {
                return self.set_acl_with_override(&up.loc, &acl, value, kill_sgid);
            }
        }
        up.loc.setxattr(&cn, value, flags).map_err(|e| Error::io(e, "setxattr"))?;
        if kill_sgid {
            let st = up.loc.stat().map_err(|e| Error::io(e, "stat"))?;
            if st.st_mode & libc::S_ISGID != 0 {
                up.loc.chmod(st.st_mode & 0o7777 & !libc::S_ISGID).map_err(|e| Error::io(e, "chmod"))?;
            }
        }
        Ok(())
    }

    /// An access ACL set on an object whose mode lives in the override xattr: the mode it
    /// stands for goes there (as a filesystem sets the mode from it; `sed -i` and `cp -p` set
    /// modes this way). The real object keeps the ACL's named entries, if it has any, and what
    /// the server needs to reach it.
    fn set_acl_with_override(
        &self,
        loc: &Loc,
        acl: &crate::acl::Acl,
        value: &[u8],
        kill_sgid: bool,
    ) -> Result<()> {
        let st = self.stat_eff(loc, 0).map_err(|e| Error::io(e, "stat"))?;
        let real = loc.stat().map_err(|e| Error::io(e, "stat"))?;
        let exists = loc.getxattr(super::ACL_ACCESS).is_ok();
        let special = st.st_mode & 0o7000 & if kill_sgid { !libc::S_ISGID } else { !0 };
        let o = ovr::Override {
            uid: st.st_uid,
            gid: st.st_gid,
            perm: special | acl.mode_bits(),
            kind: ovr::Kind::from_mode(st.st_mode, st.st_rdev),
        };
        if acl.is_minimal() {
            if exists {
                loc.removexattr(super::ACL_ACCESS).map_err(|e| Error::io(e, "setxattr"))?;
            }
        } else {
            loc.setxattr(super::ACL_ACCESS, value, 0).map_err(|e| Error::io(e, "setxattr"))?;
            // The filesystem set the real mode from it: the owner keeps what the server needs.
            let reach = if real.st_mode & libc::S_IFMT == libc::S_IFDIR { 0o700 } else { 0o600 };
            let now = loc.stat().map_err(|e| Error::io(e, "stat"))?.st_mode & 0o7777;
            if now & reach != reach {
                loc.chmod(now | reach).map_err(|e| Error::io(e, "chmod"))?;
            }
        }
        self.write_override(loc, &o)
    }

    /// As the VFS's xattr_permission: no xattr of an append-only or immutable object changes.
    fn xattr_writable(&self, ino: u64) -> Result<()> {
        if self.opts.noxattrs {
            return Err(Error::errno(libc::ENOSYS));
        }
        self.check_prot(&*self.node(ino)?, PROT_APPEND | PROT_IMMUTABLE)
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> Result<()> {
        self.xattr_writable(ino)?;
        // As the kernel: removing an xattr a lower file does not have fails without a copy-up.
        let n = name.as_bytes();
        if !self.opts.noxattrs
            && !whiteout::is_private_xattr(n)
            && !ovr::is_override_xattr(n)
            && (self.acl_enabled() || !super::is_acl_xattr(n))
        {
            let node = self.node(ino)?;
            if !node.has_upper.load(Ordering::Acquire) {
                let top = node.top().ok_or(Error::errno(libc::ESTALE))?;
                if let Err(e) = top.loc.getxattr(&cname(name.as_bytes())?) {
                    return Err(Error::io(e, "removexattr"));
                }
            }
        }
        let (node, cn) = self.xattr_target(ino, name)?;
        let up = node.upper().ok_or(Error::errno(libc::EIO))?;
        up.loc.removexattr(&cn).map_err(|e| Error::io(e, "removexattr"))
    }
}

/// `pread` until `dst` is full or the file ends; returns the bytes read.
fn pread_full(fd: &OwnedFd, dst: &mut [u8], offset: u64) -> Result<usize> {
    let mut got = 0usize;
    while got < dst.len() {
        match sys::pread(fd.as_fd(), &mut dst[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(Error::io(e, "read")),
        }
    }
    Ok(got)
}
