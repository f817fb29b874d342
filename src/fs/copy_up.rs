//! Copy-up (kernel `copy_up.c`): the first change to a lower object copies it into upper.
//!
//! Hard parts, and where they are handled:
//! 1. Parents first: [`OverlayFs::ensure_upper_dir`] copies up the missing ancestors, topmost
//!    first (by recursion through the node's parent).
//! 2. Atomic: the copy is built under a temporary name in `WORKDIR/work` with all its data,
//!    xattrs, owner, mode and times, then renamed into place with `RENAME_NOREPLACE`; a guard
//!    removes the temporary entry on any error, so a failure (ENOSPC, EIO) leaves upper as it was
//!    and a crash leaves only workdir litter, which the next mount removes.
//! 3. Holes: data is copied extent by extent (`SEEK_DATA`/`SEEK_HOLE`) with `copy_file_range`,
//!    after trying a whole-file reflink (`FICLONE`); a plain read/write loop is the last resort.
//! 4. Concurrency: the node's `copy_lock` serialises copy-ups of one object; the parent's
//!    `dir_lock` is taken only for the final rename, so other files keep being served while a
//!    big file is copied.
//! 5. `O_TRUNC` and truncate-to-zero copy up without data (the kernel does the same).

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fuser::FileType;

use super::dirfd::DirFd;
use super::{Node, OverlayFs, remove_tree_at};
use crate::error::{Error, Result};
use crate::layer::{self, Live, Loc};
use crate::ovr;
use crate::sys::{self, SetTime, Stat};
use crate::whiteout;

/// Removes a temporary workdir entry unless disarmed.
pub(crate) struct TmpGuard<'a> {
    pub dir: &'a OwnedFd,
    pub name: CString,
    pub armed: bool,
}

impl Drop for TmpGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = remove_tree_at(self.dir, &self.name) {
                log::warn!("could not remove workdir entry {:?}: {e}", self.name);
            }
        }
    }
}

/// What [`copy_data`] answers when the whole file was cloned (`FICLONE`): no data was written.
pub(crate) const REFLINK: &str = "reflink";

/// Copies `len` bytes of file data, keeping holes. Returns how the data was copied.
///
/// With `durable` (the copy will be on the disk before it is renamed into place), writeback of
/// each copied chunk is started at once, so the disk writes overlap the rest of the copy and
/// the final wait has little left.
pub(crate) fn copy_data(
    src: BorrowedFd,
    dst: BorrowedFd,
    len: u64,
    durable: bool,
) -> std::io::Result<&'static str> {
    if len == 0 {
        return Ok("empty");
    }
    if sys::ficlone(dst, src).is_ok() {
        return Ok(REFLINK);
    }
    let mut off: u64 = 0;
    let mut how = "copy_file_range";
    while off < len {
        let data = match sys::lseek(src, off as i64, sys::SEEK_DATA) {
            Ok(d) => d as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break, // only a hole is left
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => off,  // no SEEK_DATA: all data
            Err(e) => return Err(e),
        };
        let hole = match sys::lseek(src, data as i64, sys::SEEK_HOLE) {
            Ok(h) => (h as u64).min(len),
            Err(_) => len,
        };
        let mut pos = data;
        while pos < hole {
            let chunk = ((hole - pos).min(COPY_CHUNK)) as usize;
            let n = match sys::copy_file_range(src, pos, dst, pos, chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EXDEV) | Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
                    ) =>
                {
                    how = "read/write";
                    copy_rw(src, dst, pos, hole - pos)?
                }
                Err(e) => return Err(e),
            };
            if n == 0 {
                break;
            }
            if durable {
                // Only a hint: the fsync that follows is what makes the copy durable.
                let _ = sys::start_writeback(dst, pos, n as u64);
            }
            pos += n as u64;
        }
        off = hole.max(pos);
    }
    Ok(how)
}

/// Bytes per `copy_file_range` call: small enough that writeback of one chunk overlaps the
/// copy of the next.
const COPY_CHUNK: u64 = 8 << 20;

fn copy_rw(src: BorrowedFd, dst: BorrowedFd, start: u64, len: u64) -> std::io::Result<usize> {
    let mut buf = vec![0u8; (1usize << 20).min(len as usize).max(1)];
    let mut done = 0u64;
    while done < len {
        let want = ((len - done) as usize).min(buf.len());
        let n = sys::pread(src, &mut buf[..want], start + done)?;
        if n == 0 {
            break;
        }
        let mut w = 0;
        while w < n {
            w += sys::pwrite(dst, &buf[w..n], start + done + w as u64)?;
        }
        done += n as u64;
    }
    Ok(done as usize)
}

/// Inode flags a copy-up carries, as kernel overlayfs copies them: synchronous updates (`S`)
/// and no atime updates (`A`). (Append-only and immutable go into the protattr xattr
/// instead, see [`OverlayFs::copy_up`].)
const COPIED_INODE_FLAGS: u32 = 0x0000_0008 | 0x0000_0080;
/// FS_APPEND_FL and FS_IMMUTABLE_FL.
const APPEND_FL: u32 = 0x20;
const IMMUTABLE_FL: u32 = 0x10;

/// Copies [`COPIED_INODE_FLAGS`] from the source to the copy (best effort: a filesystem without
/// inode flags has none to copy), through their descriptors where the copy-up has them open.
/// Returns the source's flags (0 where it has none).
fn copy_inode_flags(
    src: &Loc,
    src_fd: Option<&OwnedFd>,
    dst: &Loc,
    dst_fd: Option<&OwnedFd>,
    dir: bool,
) -> u32 {
    let flags =
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOFOLLOW | if dir { libc::O_DIRECTORY } else { 0 };
    let (mut src_opened, mut dst_opened) = (None, None);
    let Some(sfd) = given_or_open(src, src_fd, flags, &mut src_opened) else { return 0 };
    let Some(src_flags) = inode_flags(sfd) else { return 0 };
    let want = src_flags & COPIED_INODE_FLAGS;
    if want != 0
        && let Some(dfd) = given_or_open(dst, dst_fd, flags, &mut dst_opened)
        && let Some(have) = inode_flags(dfd)
    {
        let mut v = (have | want).to_ne_bytes();
        if let Err(e) = sys::ioctl_buf(dfd, sys::FILEATTR_IOCTLS[1].0, &mut v) {
            log::debug!("copy-up: inode flags {want:#x} not set: {e}");
        }
    }
    src_flags
}

/// `given`, or else `l` opened with `flags` into `slot`.
fn given_or_open<'a>(
    l: &Loc,
    given: Option<&'a OwnedFd>,
    flags: i32,
    slot: &'a mut Option<OwnedFd>,
) -> Option<BorrowedFd<'a>> {
    match given {
        Some(fd) => Some(fd.as_fd()),
        None => {
            let fd: &'a OwnedFd = slot.insert(l.open(flags).ok()?);
            Some(fd.as_fd())
        }
    }
}

/// An object's inode flags (`FS_IOC_GETFLAGS`).
fn inode_flags(fd: BorrowedFd) -> Option<u32> {
    let mut v = [0u8; 4];
    sys::ioctl_buf(fd, sys::FILEATTR_IOCTLS[0].0, &mut v).ok()?;
    Some(u32::from_ne_bytes(v))
}

/// Copies every xattr but the overlay-private ones. Returns whether it set an access ACL
/// (`system.posix_acl_access`, which sets the mode's permission bits too).
pub(crate) fn copy_xattrs(src: &Loc, dst: &Loc) -> Result<bool> {
    let mut acl = false;
    let list = match src.listxattr() {
        Ok(l) => l,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM)) => return Ok(false),
        Err(e) => return Err(Error::io(e, "copy-up listxattr")),
    };
    for n in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if whiteout::is_private_xattr(n) || ovr::is_override_xattr(n) {
            // Override xattrs are written by the copy-up itself, under the upper's name.
            continue;
        }
        let Ok(cn) = CString::new(n) else { continue };
        let v = match src.getxattr(&cn) {
            Ok(v) => v,
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(Error::io(e, "copy-up getxattr")),
        };
        match dst.setxattr(&cn, &v, 0) {
            Ok(()) => acl |= cn.as_c_str() == c"system.posix_acl_access",
            // An upper filesystem without that namespace: skipped, as the kernel skips it. Any
            // other refusal (security.* without the privilege) fails the copy-up, as on the
            // kernel and fuse-overlayfs: a copy that silently lost an xattr (file
            // capabilities) would take the lower file's place.
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) || cn.as_c_str() == c"security.selinux" => {
                // (An SELinux label is the policy's to give: the kernel's copy-up leaves it to
                // the LSM, which labels the copy itself; one the policy refuses is no error.)
                log::debug!("copy-up: xattr {} not copied: {e}", String::from_utf8_lossy(n));
            }
            Err(e) => return Err(Error::io(e, "copy-up setxattr")),
        }
    }
    Ok(acl)
}

impl OverlayFs {
    /// Makes sure a directory node exists in upper; returns its upper directory's handle and
    /// descriptor (open while the descriptor is held).
    pub(crate) fn ensure_upper_dir(&self, node: &Arc<Node>) -> Result<(DirFd, Arc<OwnedFd>)> {
        self.check_writable()?;
        if !node.has_upper.load(Ordering::Acquire) {
            // The ancestors without an upper first, top-down, in a loop: each copy-up then
            // finds its parent in place, and no recursion through `copy_up` grows with the
            // depth (a lower tree thousands of levels deep overflowed the thread's stack).
            let mut chain = vec![node.clone()];
            loop {
                let parent = chain.last().and_then(|n| n.state.lock().parent.clone());
                match parent {
                    Some(p) if !p.has_upper.load(Ordering::Acquire) => chain.push(p),
                    _ => break,
                }
            }
            for n in chain.iter().rev() {
                self.copy_up(n, true)?;
            }
        }
        let d = match &node.state.lock().upper {
            Some(Loc::Dir(d)) => d.clone(),
            _ => return Err(Error::errno(libc::ENOTDIR)),
        };
        let fd = super::dir_open(&d)?;
        Ok((d, fd))
    }

    /// Maps the copy of `node` (upper inode `upper_ino`) to the node, and for a non-directory
    /// keeps the number it shows from now on (`shown_ino`): the lower object's (`st`, in layer
    /// `li`), as kernel overlayfs keeps it, or, for one linked more than once in its layer,
    /// whose names are copied up apart (`index=off`), the copy's, as the kernel gives.
    fn map_copy(&self, node: &Node, kind: FileType, upper_ino: u64, st: &Stat, li: usize) {
        let key = self.layers[0].ino_base ^ upper_ino;
        if key != node.ino {
            self.upper_ids.lock().insert(key, node.ino);
        }
        if kind != FileType::Directory {
            let kept = if st.st_nlink > 1 { self.ino_raw(0, upper_ino) } else { self.ino_raw(li, st.st_ino) };
            self.kept_ino.lock().insert(node.ino, super::Kept { ino: kept, origin_key: None });
        }
    }

    /// Writes the `overlay.origin` of copy `copy` of `src` (in layer `li`) in the kernel's
    /// format ([`crate::origin`]): the lower object's file handle where the server may decode
    /// handles (root) and the kernel tells the lower filesystem's UUID, else an empty value,
    /// as the kernel in a user namespace writes. Best
    /// effort: a copy-up does not fail for it (the copy then shows its own number after a
    /// remount).
    /// `fds`: the source's and the copy's descriptors where they are open for I/O.
    fn record_origin(
        &self,
        src: &Loc,
        li: usize,
        copy: &Loc,
        fds: (Option<BorrowedFd>, Option<&OwnedFd>),
        name: &CStr,
    ) {
        let value = match self.layers[li].uuid.filter(|_| self.trusted_xattrs) {
            Some(uuid) => match fds.0 {
                Some(fd) => sys::name_to_handle_at(fd, c""),
                None => src.live().and_then(|l| l.handle()),
            }
            .ok()
            .and_then(|(t, h)| crate::origin::encode(&uuid, t, &h))
            .unwrap_or_default(),
            None => Vec::new(),
        };
        let set = match fds.1 {
            Some(fd) => sys::fsetxattr(fd.as_fd(), self.origin_xattr(), &value, 0),
            None => copy.setxattr(self.origin_xattr(), &value, 0),
        };
        if let Err(e) = set {
            log::debug!("copy-up {name:?}: origin not recorded ({e})");
        }
    }

    /// Marks the upper directory `dir` of `pnode` impure (it may hold copies with an origin,
    /// which its listings and lookups then look for), once.
    pub(crate) fn mark_impure(&self, pnode: &Node, dir: &DirFd) {
        if pnode.state.lock().upper_marks.impure {
            return;
        }
        match Loc::Dir(dir.clone()).setxattr(self.impure_xattr(), b"y", 0) {
            Ok(()) => pnode.state.lock().upper_marks.impure = true,
            Err(e) => log::debug!("upper directory not marked impure ({e})"),
        }
    }

    /// Undoes [`Self::map_copy`] once upper inode `upper_ino` of node `id` is gone (its
    /// number may go to a new object).
    pub(crate) fn unmap_copy(&self, id: u64, upper_ino: u64) {
        let key = self.layers[0].ino_base ^ upper_ino;
        let mut ids = self.upper_ids.lock();
        if ids.get(&key) == Some(&id) {
            ids.remove(&key);
        }
        drop(ids);
        self.kept_ino.lock().remove(&id);
    }

    /// Copies a node up (with its data unless `with_data` is false: O_TRUNC, truncate to 0).
    pub(crate) fn copy_up(&self, node: &Arc<Node>, with_data: bool) -> Result<()> {
        if node.has_upper.load(Ordering::Acquire) {
            return Ok(());
        }
        self.check_writable()?;
        let _c = node.copy_lock.lock();
        if node.has_upper.load(Ordering::Acquire) {
            return Ok(());
        }
        let (parent, name, kind, src, unlinked) = {
            let s = node.state.lock();
            (s.parent.clone(), s.name.clone(), s.kind, super::top_loc_layer_of(&s), s.unlinked)
        };
        if unlinked {
            // A removed lower object (still open): its name is a whiteout's, or another
            // object's, now. The kernel's copy-up fails there with EEXIST; with a `.wh.`
            // whiteout, which leaves the name free, the copy came back under it. Where its
            // directory was removed too (`rm -rf`), the kernel answers ENOENT, as for a
            // create in a removed directory, even once a new one has the directory's name.
            let gone = parent.as_ref().is_some_and(|p| p.state.lock().unlinked);
            return Err(if gone {
                Error::new(libc::ENOENT, "copy-up of an object whose directory was removed")
            } else {
                Error::new(libc::EEXIST, "copy-up of a removed object")
            });
        }
        let parent = parent.ok_or(Error::new(libc::EIO, "copy-up of a node without parent"))?;
        let (src, src_layer) = src.ok_or(Error::new(libc::ESTALE, "copy-up source"))?;
        let (pdir, pfd) = self.ensure_upper_dir(&parent)?;
        let st = src.stat().map_err(|e| Error::io(e, "copy-up stat"))?;
        // Owner and mode as the mount shows them; kept in the upper's override xattr when the
        // mount writes them there or the source carries one.
        let src_ovr = self.read_override(&src, src_layer);
        let mut eff = st;
        self.apply_override(&mut eff, &src, src_layer);
        let real_fmt = st.st_mode & libc::S_IFMT;
        let in_xattr = self.ovr.first().copied().flatten().is_some()
            && (self.write_ovr || src_ovr.is_some())
            && (real_fmt == libc::S_IFREG || real_fmt == libc::S_IFDIR);
        let work = self.work_fd()?;
        let tmp = self.tmp_name();
        let mut guard = TmpGuard { dir: work, name: tmp.clone(), armed: true };
        let perm = if in_xattr {
            // The real object only needs to stay reachable by the server.
            (eff.st_mode & 0o777) | if real_fmt == libc::S_IFDIR { 0o700 } else { 0o600 }
        } else {
            st.st_mode & 0o7777
        };
        // The owner the copy must get: the lower object's (unless the override xattr keeps
        // it). A server that is not root can give only an owner it may (its own uid, a group
        // it is in); where it may not, the copy-up fails with EPERM, as fuse-overlayfs's does,
        // rather than hand the object to the server's user (a setuid root file became the
        // user's, and a file of one of the user's groups lost its group).
        // (An owner the copy gets on creation, the server's own, needs no chown: see `made`.)
        let chown_to = (!in_xattr).then_some((st.st_uid, st.st_gid));
        // A file or directory the server would create with its final owner anyway, whose mode
        // has no bit a chown drops and leaves the server its own access (xattrs are set by
        // path), is created with its final mode: no chown and no chmod follow, two of the
        // metadata changes of a copy-up that clones. Any other is created for the server only
        // and given its owner, then its mode, at the end.
        let owner_bits = if real_fmt == libc::S_IFDIR { 0o700 } else { 0o600 };
        let direct = matches!(kind, FileType::RegularFile | FileType::Directory)
            && perm & !0o777 == 0
            && perm & owner_bits == owner_bits
            && chown_to.is_none_or(|o| o == self.own_ids);
        let wdir = DirFd::fixed(work.clone());
        // The new object's descriptor (a file or directory), and the source's once opened.
        let mut new_fd: Option<Arc<OwnedFd>> = None;
        let mut src_fd: Option<OwnedFd> = None;
        let tloc = match kind {
            FileType::Directory => {
                let m = if direct { perm } else { 0o700 };
                sys::mkdirat(work.as_fd(), &tmp, m).map_err(|e| Error::io(e, "copy-up mkdir"))?;
                let fd =
                    Arc::new(layer::open_dir_at(work.as_fd(), &tmp).map_err(|e| Error::io(e, "copy-up"))?);
                new_fd = Some(fd.clone());
                Loc::fixed_dir(fd)
            }
            FileType::RegularFile => {
                let m = if direct { perm } else { 0o600 };
                let dst = sys::openat(work.as_fd(), &tmp, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, m)
                    .map_err(|e| Error::io(e, "copy-up create"))?;
                if with_data && st.st_size > 0 {
                    let sfd = sys::open_noatime(libc::O_RDONLY, |f| src.open(f))
                        .map_err(|e| Error::io(e, "copy-up open"))?;
                    let how = copy_data(sfd.as_fd(), dst.as_fd(), st.st_size as u64, self.opts.fsync)
                        .map_err(|e| Error::io(e, "copy-up data"))?;
                    // A clone has the source's size already; a sparse copy may end in a hole.
                    if how != REFLINK {
                        sys::ftruncate(dst.as_fd(), st.st_size as u64)
                            .map_err(|e| Error::io(e, "copy-up"))?;
                    }
                    log::debug!("copy-up {:?}: {} bytes by {how}", name, st.st_size);
                    // Copied data is on the disk before the rename puts it under the name, as
                    // kernel overlayfs makes it by an fsync. Where the upper's journal commits
                    // the rename only after the metadata of a finished write-back, and flushes
                    // the disk's cache with its data before ([`sys::journal_orders_rename`]),
                    // waiting for the write-back is enough: the fsync's journal commit, most of
                    // a small file's copy-up, is left to the journal's own time. Like the
                    // kernel, nothing after a clone (a metadata change the journal orders
                    // before the rename, with no data of its own to write back) nor for an
                    // empty file.
                    if self.opts.fsync && how != REFLINK {
                        if self.journal_orders {
                            sys::wait_written(dst.as_fd()).map_err(|e| Error::io(e, "copy-up write-back"))?;
                        } else {
                            sys::fsync(dst.as_fd(), false).map_err(|e| Error::io(e, "copy-up fsync"))?;
                        }
                    }
                    src_fd = Some(sfd);
                }
                new_fd = Some(Arc::new(dst));
                Loc::At(wdir, Arc::from(tmp.as_c_str()))
            }
            FileType::Symlink => {
                let target = src.readlink().map_err(|e| Error::io(e, "copy-up readlink"))?;
                let t = CString::new(target).map_err(|_| Error::errno(libc::EINVAL))?;
                sys::symlinkat(&t, work.as_fd(), &tmp).map_err(|e| Error::io(e, "copy-up symlink"))?;
                Loc::At(wdir, Arc::from(tmp.as_c_str()))
            }
            _ => {
                sys::mknodat(work.as_fd(), &tmp, (st.st_mode & libc::S_IFMT) | 0o600, st.st_rdev)
                    .map_err(|e| Error::io(e, "copy-up mknod"))?;
                Loc::At(wdir, Arc::from(tmp.as_c_str()))
            }
        };
        // What the new object got on creation (read through its descriptor, no path walk): an
        // owner it has already needs no chown, a mode it has already no chmod.
        let made = new_fd.as_ref().and_then(|fd| sys::fstat(fd.as_fd()).ok());
        // The owner before the xattrs: a chown drops file capabilities (security.capability).
        let chowned = match chown_to {
            Some(o) if made.is_none_or(|m| (m.st_uid, m.st_gid) != o) => {
                tloc.chown(o.0, o.1).map_err(|e| Error::io(e, "copy-up chown"))?;
                true
            }
            _ => false,
        };
        // (Setting an access ACL sets the mode's group bits from it.)
        let acl_set = copy_xattrs(&src, &tloc)?;
        let mut prot = 0;
        if matches!(kind, FileType::RegularFile | FileType::Directory) {
            // (A new directory's descriptor is an O_PATH one, which takes no ioctl.)
            let dst_fd = new_fd.as_deref().filter(|_| kind == FileType::RegularFile);
            let f = copy_inode_flags(&src, src_fd.as_ref(), &tloc, dst_fd, kind == FileType::Directory);
            prot = if f & APPEND_FL != 0 { super::PROT_APPEND } else { 0 }
                | if f & IMMUTABLE_FL != 0 { super::PROT_IMMUTABLE } else { 0 };
            if prot != 0 {
                // Kept as kernel overlayfs keeps them: the copy goes on showing them, and its
                // real inode does not carry them (the server still copies up into it).
                let v = super::protattr_value(prot);
                match tloc.setxattr(self.protattr_name(), v, 0) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {
                        log::warn!("copy-up {name:?}: append-only/immutable flags not kept: {e}");
                        prot = 0;
                    }
                    // As the kernel's copy-up: not without them.
                    Err(e) => return Err(Error::io(e, "copy-up protattr")),
                }
            }
        }
        // As kernel overlayfs: the copy of a directory, or of a file linked once in its layer,
        // names the lower object it came from, so that it shows that object's number after a
        // remount too, and its directory says it may hold such copies. (Through the files'
        // descriptors where they are open: no path walks.)
        if kind == FileType::Directory || st.st_nlink == 1 {
            let fds = (
                src_fd.as_ref().map(|f| f.as_fd()),
                new_fd.as_deref().filter(|_| kind == FileType::RegularFile),
            );
            self.record_origin(&src, src_layer, &tloc, fds, &name);
        }
        self.mark_impure(&parent, &pdir);
        drop((src_fd, new_fd));
        if in_xattr {
            let o = ovr::Override {
                uid: eff.st_uid,
                gid: eff.st_gid,
                perm: eff.st_mode & 0o7777,
                kind: ovr::Kind::from_mode(eff.st_mode, eff.st_rdev),
            };
            self.write_override(&tloc, &o)?;
        }
        let has_mode = !chowned && !acl_set && made.is_some_and(|m| m.st_mode & 0o7777 == perm);
        if kind != FileType::Symlink && !has_mode {
            tloc.chmod(perm).map_err(|e| Error::io(e, "copy-up chmod"))?;
        }
        tloc.utimes(SetTime::At(st.st_atime, st.st_atime_nsec), SetTime::At(st.st_mtime, st.st_mtime_nsec))
            .map_err(|e| Error::io(e, "copy-up utimes"))?;
        // The copy's number is known before the rename, which keeps it: mapped now, a listing
        // or lookup right after the rename finds the copy's entry mapped to the node.
        let tmp_ino = match made {
            Some(m) => m.st_ino,
            None => tloc.stat().map_err(|e| Error::io(e, "copy-up stat"))?.st_ino,
        };
        self.map_copy(node, kind, tmp_ino, &st, src_layer);
        {
            let _pl = parent.dir_lock.write();
            // A copy-up is not a change of its directory: its times are put back after the
            // rename, as kernel overlayfs does (best effort).
            let ptimes = sys::fstat(pfd.as_fd()).ok();
            let new_loc = match sys::renameat2(work.as_fd(), &tmp, pfd.as_fd(), &name, sys::RENAME_NOREPLACE)
            {
                Ok(()) => {
                    guard.armed = false;
                    if let Some(p) = ptimes {
                        let t = (
                            SetTime::At(p.st_atime, p.st_atime_nsec),
                            SetTime::At(p.st_mtime, p.st_mtime_nsec),
                        );
                        if let Err(e) = sys::futimens_path(pfd.as_fd(), t.0, t.1) {
                            log::debug!("copy-up {name:?}: restoring the directory's times: {e}");
                        }
                    }
                    match tloc.live().map_err(|e| Error::io(e, "copy-up"))? {
                        Live::Dir(fd) => Loc::Dir(DirFd::child(&pdir, name.clone(), fd, tmp_ino)),
                        _ => Loc::At(pdir.clone(), name.clone()),
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && kind == FileType::Directory => {
                    self.unmap_copy(node.ino, tmp_ino);
                    // Another node object for the same directory copied it up already.
                    let fd = layer::open_dir_at(pfd.as_fd(), &name).map_err(|e| Error::io(e, "copy-up"))?;
                    let ino = sys::fstat(fd.as_fd()).map_err(|e| Error::io(e, "copy-up"))?.st_ino;
                    self.map_copy(node, kind, ino, &st, src_layer);
                    Loc::Dir(DirFd::child(&pdir, name.clone(), Arc::new(fd), ino))
                }
                Err(e) => {
                    self.unmap_copy(node.ino, tmp_ino);
                    return Err(Error::io(e, "copy-up rename"));
                }
            };
            // The node takes its copy before the directory's lock goes: an unlink or rename
            // of the name right after (they take that lock) finds the node copied up and
            // pins its copy, where taking it after them put the name back in the node, by
            // then a whiteout's or another file's, which its open handles then reached.
            let mut s = node.state.lock();
            s.upper = Some(new_loc);
            node.prot.store(prot, Ordering::Release);
            node.has_upper.store(true, Ordering::Release);
        }
        drop(guard);
        // A file linked more than once in its layer shows its copy's number from now on.
        let renumbered = kind != FileType::Directory && st.st_nlink > 1;
        // What the kernel holds is the lower object's: the copy has its own ctime (a file
        // linked more than once in its layer is linked once in the upper, `index=off`), and
        // the parent's real directory got an entry (a new ctime; its mtime was put back).
        if let Some(f) = self.attrs_stale.get() {
            f(node.ino);
            f(parent.ino);
        }
        if renumbered {
            // Listings of the directory give the new number too (`d_ino`).
            self.listing_changed(parent.ino);
        }
        Ok(())
    }
}
