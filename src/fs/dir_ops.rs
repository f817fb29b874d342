//! Namespace operations on the union (kernel `dir.c`): create, mkdir, mknod, symlink, link,
//! unlink, rmdir, rename.
//!
//! Hard parts, and where they are handled:
//! 1. Creating where a whiteout stands: the new object is built in workdir and renamed over the
//!    char-device whiteout (a directory by `RENAME_EXCHANGE`, then the whiteout is removed); a
//!    `.wh.NAME` whiteout is removed after the object exists. A new directory there is made
//!    opaque first, so nothing from below ever shows through ([`OverlayFs::create_upper`]).
//! 2. Removing: a whiteout is left only when a lower layer still has the name
//!    ([`OverlayFs::lower_positive`]); with char-device whiteouts the object is swapped for the
//!    whiteout in one `RENAME_WHITEOUT` ([`OverlayFs::replace_with_whiteout`]).
//! 3. rmdir sees the merged directory: ENOTEMPTY if any entry is visible; an upper directory
//!    holding only whiteouts is cleared by moving it to workdir first.
//! 4. Renaming a directory with lower content is EXDEV (the kernel's answer without
//!    redirect_dir), so mv(1) falls back to copying. A directory moved onto a name a lower layer
//!    has becomes opaque.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fuser::FileType;
use parking_lot::RwLockWriteGuard;

use super::copy_up::TmpGuard;
use super::dirfd::DirFd;
use super::{
    Attr, DirMarks, FACT_MADE_HERE, FACT_NO_CAPS, FACT_NO_DEFAULT_ACL, Node, NodeState, OverlayFs,
    PROT_APPEND, PROT_IMMUTABLE, cname, kind_of, remove_tree_at,
};
use crate::error::{Error, Result};
use crate::layer::{self, Live, Loc};
use crate::merge::{Resolution, Resolver};
use crate::name;
use crate::ovr;
use crate::sys::{self, Stat};
use crate::whiteout::{self, WhiteoutStyle};

/// What to create.
pub(crate) enum NewObj<'a> {
    File { mode: u32, flags: i32 },
    Dir { mode: u32 },
    Special { mode: u32, rdev: u64 },
    Symlink { target: &'a CStr },
    Link { src: Loc },
}

/// The caller's identity, for the owner of what it creates, and its umask (the kernel leaves
/// applying it to the server with FUSE_DONT_MASK: not applied under a default ACL).
#[derive(Clone, Copy, Debug, Default)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub umask: u32,
    /// The calling process (0: unknown), for its supplementary groups.
    pub pid: u32,
}

impl Caller {
    /// Whether the caller is root (standing for CAP_FSETID) or in group `gid` (as shown): its
    /// fsgid or one of its supplementary groups, read from `/proc/PID/status` (asked only for
    /// a setgid file without group execute, so not on a hot path).
    pub fn in_group_or_root(&self, gid: u32) -> bool {
        self.uid == 0 || self.gid == gid || supplementary_groups(self.pid).contains(&gid)
    }
}

/// A process's supplementary groups (empty when unknown).
fn supplementary_groups(pid: u32) -> Vec<u32> {
    if pid == 0 {
        return Vec::new();
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return Vec::new() };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.split_whitespace().filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default()
}

/// What the upper directory holds under a name, seen raw.
struct UpperSlot {
    /// The raw object, if any (may itself be a whiteout).
    st: Option<Stat>,
    /// The raw object is a whiteout (0/0 char device or xattr whiteout).
    is_whiteout: bool,
    /// A `.wh.NAME` file exists beside it.
    wh_file: bool,
}

impl OverlayFs {
    /// `name` in directory `pnode`'s upper `pfd`, with whiteouts as a lookup reads them there
    /// (an xattr whiteout only in an `opaque=x` directory). A directory made through the mount
    /// ([`FACT_MADE_HERE`]) holds no `.wh.` file to look for.
    fn upper_slot(&self, pnode: &Node, pfd: &Arc<OwnedFd>, name: &[u8], cn: &CStr) -> Result<UpperSlot> {
        let st = match sys::fstatat(pfd.as_fd(), cn) {
            Ok(st) => Some(st),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
            Err(e) => return Err(Error::io(e, "lookup upper")),
        };
        // (The parent's marks only where the name is there: a new name takes no lock.)
        let is_whiteout =
            st.is_some_and(|st| layer::is_whiteout_entry(pfd, cn, &st, pnode.state.lock().upper_marks));
        let wh_file = !pnode.has_fact(FACT_MADE_HERE)
            && name::whiteout_name(name)
                .and_then(|w| CString::new(w).ok())
                .is_some_and(|w| sys::exists_at(pfd.as_fd(), &w).unwrap_or(false));
        Ok(UpperSlot { st, is_whiteout, wh_file })
    }

    /// Does `name` resolve to something in the parent's lower layers? (kernel
    /// `ovl_lower_positive`): then removing it needs a whiteout.
    pub(crate) fn lower_positive(&self, pnode: &Node, name: &[u8]) -> Result<bool> {
        let lowers = pnode.state.lock().lower_dirs.clone();
        if lowers.is_empty() {
            return Ok(false);
        }
        let cn = cname(name)?;
        let mut r = Resolver::new();
        for ld in lowers.iter() {
            let (p, _) = self.probe_lower(ld, lowers.len(), name, &cn, None)?;
            if !r.feed(p) {
                break;
            }
        }
        Ok(!matches!(r.finish(), Resolution::Negative))
    }

    /// The default ACL of `pnode`'s upper directory `pdir`, where ACLs are on. A directory
    /// found without one is remembered as such ([`FACT_NO_DEFAULT_ACL`]) until one of its
    /// xattrs is changed through the mount.
    fn default_acl(&self, pnode: &Node, pdir: &DirFd) -> Option<Vec<u8>> {
        if !self.acl_enabled() || pnode.has_fact(FACT_NO_DEFAULT_ACL) {
            return None;
        }
        match Loc::Dir(pdir.clone()).getxattr(super::ACL_DEFAULT) {
            Ok(v) => Some(v),
            Err(e) => {
                if matches!(e.raw_os_error(), Some(libc::ENODATA) | Some(libc::EOPNOTSUPP)) {
                    pnode.facts.fetch_or(FACT_NO_DEFAULT_ACL, Ordering::AcqRel);
                }
                None
            }
        }
    }

    /// Marks an upper directory opaque, in the form this mount writes.
    pub(crate) fn set_opaque(&self, loc: &Loc) -> Result<()> {
        if self.trusted_xattrs {
            loc.setxattr(c"trusted.overlay.opaque", b"y", 0).map_err(|e| Error::io(e, "set opaque"))?;
            return Ok(());
        }
        if let Err(e) = loc.setxattr(c"user.overlay.opaque", b"y", 0) {
            log::debug!("user.overlay.opaque not set ({e}); the .wh..wh..opq marker alone marks it");
        }
        if let Some(d) = loc.dir_fd() {
            let fd = super::dir_open(d)?;
            let marker = CString::new(name::OPAQUE_MARKER).unwrap_or_default();
            match sys::openat(fd.as_fd(), &marker, libc::O_WRONLY | libc::O_CREAT, 0o600) {
                Ok(_) => {}
                Err(e) => return Err(Error::io(e, "opaque marker")),
            }
        }
        Ok(())
    }

    /// Sets the owner of a new object: the caller, with the group of a setgid parent.
    /// `fd`: the new object opened (a file), through which its owner is read first, as a new
    /// directory's is through its own fd: one that already has the owner (the caller is the
    /// server's own user) is not chowned. Returns the stat read so when the object was left
    /// as it was.
    fn set_owner(
        &self,
        loc: &Loc,
        fd: Option<&OwnedFd>,
        caller: Caller,
        pst: &Stat,
        mode: Option<u32>,
    ) -> Result<Option<Stat>> {
        if !self.can_chown() {
            return Ok(None);
        }
        let (uid, cgid) = self.disk_owner(caller.uid, caller.gid)?;
        let gid = if pst.st_mode & libc::S_ISGID != 0 { pst.st_gid } else { cgid };
        // A directory is read through its own fd; other objects without an open fd would take
        // a path walk to check, no cheaper than the chown.
        let dfd = loc.dir_fd().and_then(|d| d.get().ok());
        let known = fd.or(dfd.as_deref());
        if let Some(st) = known.and_then(|fd| sys::fstat(fd.as_fd()).ok()) {
            if st.st_uid == uid && st.st_gid == gid {
                return Ok(Some(st));
            }
        }
        if let Err(e) = loc.chown(uid, gid) {
            if !self.squashing() {
                return Err(Error::io(e, "chown new"));
            }
        }
        // chown clears setuid/setgid on non-directories: put those bits back, on the
        // permissions the object was made with (a default ACL may have set them).
        if let Some(m) = mode {
            if m & 0o6000 != 0 {
                let now = loc.stat().map(|st| st.st_mode & 0o777).unwrap_or(m & 0o777);
                loc.chmod(now | (m & 0o7000)).map_err(|e| Error::io(e, "chmod new"))?;
            }
        }
        Ok(None)
    }

    /// Records the owner and mode of a new object in the override xattr (`xattr_permissions=`).
    /// Objects that cannot carry the xattr (symlinks, FIFOs, sockets on most filesystems) keep
    /// the real owner, as with fuse-overlayfs.
    fn record_owner(&self, loc: &Loc, caller: Caller, pst: &Stat, perm: u32, kind: ovr::Kind) -> Result<()> {
        let (uid, cgid) = self.disk_owner(caller.uid, caller.gid)?;
        let gid = if pst.st_mode & libc::S_ISGID != 0 { pst.st_gid } else { cgid };
        let o = ovr::Override { uid, gid, perm: perm & 0o7777, kind: Some(kind) };
        match self.write_override(loc, &o) {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(e.errno, libc::EPERM | libc::EOPNOTSUPP | libc::EACCES)
                    && loc.stat().is_ok_and(|st| {
                        let f = st.st_mode & libc::S_IFMT;
                        f != libc::S_IFREG && f != libc::S_IFDIR
                    }) =>
            {
                // (`user.*` xattrs cannot be set on a fifo, socket, symlink or device node; the
                // server made a real device where it may.) The real owner then stands for it,
                // where the server can set one.
                log::debug!("owner of a new {kind:?} not recorded ({e}): set on the object");
                let mode = (kind != ovr::Kind::Symlink).then_some(perm);
                self.set_owner(loc, None, caller, pst, mode).map(drop)
            }
            Err(e) => Err(e),
        }
    }

    /// Makes a whiteout for `name` in an upper directory where the name is free.
    pub(crate) fn make_whiteout(&self, pfd: &Arc<OwnedFd>, name: &[u8]) -> Result<()> {
        let work = self.work_fd()?;
        let tmp = self.tmp_name();
        let mut guard = TmpGuard { dir: work, name: tmp.clone(), armed: true };
        match self.whiteout_style {
            WhiteoutStyle::CharDev => {
                sys::mknodat(work.as_fd(), &tmp, libc::S_IFCHR, 0).map_err(|e| Error::io(e, "whiteout"))?;
                let cn = cname(name)?;
                sys::renameat2(work.as_fd(), &tmp, pfd.as_fd(), &cn, sys::RENAME_NOREPLACE)
                    .map_err(|e| Error::io(e, "whiteout rename"))?;
            }
            WhiteoutStyle::WhFile => {
                let wn = name::whiteout_name(name).ok_or(Error::errno(libc::ENAMETOOLONG))?;
                let wn = cname(&wn)?;
                drop(
                    sys::openat(work.as_fd(), &tmp, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o000)
                        .map_err(|e| Error::io(e, "whiteout"))?,
                );
                sys::renameat2(work.as_fd(), &tmp, pfd.as_fd(), &wn, 0)
                    .map_err(|e| Error::io(e, "whiteout"))?;
            }
        }
        guard.armed = false;
        Ok(())
    }

    /// Removes the upper object `name` (a file, or a directory holding only whiteouts).
    fn remove_upper(&self, pfd: &Arc<OwnedFd>, cn: &CStr, is_dir: bool) -> Result<()> {
        if !is_dir {
            return sys::unlinkat(pfd.as_fd(), cn, false).map_err(|e| Error::io(e, "unlink"));
        }
        match sys::unlinkat(pfd.as_fd(), cn, true) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => {
                // Only whiteouts and markers are left inside: move it away, then clear it.
                let work = self.work_fd()?;
                let tmp = self.tmp_name();
                sys::renameat2(pfd.as_fd(), cn, work.as_fd(), &tmp, 0).map_err(|e| Error::io(e, "rmdir"))?;
                remove_tree_at(work, &tmp).map_err(|e| Error::io(e, "rmdir cleanup"))
            }
            Err(e) => Err(Error::io(e, "rmdir")),
        }
    }

    /// Replaces the upper object `name` with a whiteout.
    fn replace_with_whiteout(&self, pfd: &Arc<OwnedFd>, name: &[u8], is_dir: bool) -> Result<()> {
        let cn = cname(name)?;
        let work = self.work_fd()?;
        if self.whiteout_style == WhiteoutStyle::CharDev {
            let tmp = self.tmp_name();
            match sys::renameat2(pfd.as_fd(), &cn, work.as_fd(), &tmp, sys::RENAME_WHITEOUT) {
                Ok(()) => {
                    return remove_tree_at(work, &tmp).map_err(|e| Error::io(e, "whiteout cleanup"));
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL) | Some(libc::EPERM) | Some(libc::ENOTSUP)
                    ) =>
                {
                    log::debug!("RENAME_WHITEOUT refused ({e}); removing, then whiting out");
                }
                Err(e) => return Err(Error::io(e, "rename whiteout")),
            }
            self.remove_upper(pfd, &cn, is_dir)?;
            return self.make_whiteout(pfd, name);
        }
        // `.wh.` form: whiteout first (the upper object still shows meanwhile), then remove.
        self.make_whiteout(pfd, name)?;
        self.remove_upper(pfd, &cn, is_dir)
    }

    /// Creates a new object under `pnode`, in upper; returns its node (one kernel reference
    /// taken), its stat once made (as on disk) and, for files, the open fd.
    pub(crate) fn create_upper(
        &self,
        pnode: &Arc<Node>,
        name: &OsStr,
        obj: NewObj<'_>,
        caller: Caller,
    ) -> Result<(Arc<Node>, Stat, Option<OwnedFd>)> {
        self.check_writable()?;
        let name = name.as_bytes();
        name::validate_new(name).map_err(|e| Error::errno(e.errno()))?;
        // Nothing is made in an immutable directory (may_create).
        self.check_prot(pnode, PROT_IMMUTABLE)?;
        if let NewObj::Special { mode, rdev } = obj {
            if whiteout::is_chardev_whiteout(mode, rdev) {
                // As the kernel: a whiteout cannot be made through the mount.
                return Err(Error::errno(libc::EPERM));
            }
        }
        let (pdir, pfd) = self.ensure_upper_dir(pnode)?;
        let _g = pnode.dir_lock.write();
        self.dir_changed(pnode.ino);
        let cn = super::arc_cname(name)?;
        // The name is free where the upper holds nothing visible under it (nothing, or a
        // whiteout) and, with nothing in the upper, nothing in the lowers shows through.
        let slot = self.upper_slot(pnode, &pfd, name, &cn)?;
        let taken = if slot.st.is_some() {
            !slot.is_whiteout
        } else {
            !slot.wh_file && self.lower_positive(pnode, name)?
        };
        if taken {
            return Err(Error::errno(libc::EEXIST));
        }
        let is_dir = matches!(obj, NewObj::Dir { .. });
        // Over a whiteout: a new directory hides what it whited out.
        let opaque = is_dir && (slot.is_whiteout || slot.wh_file);
        // The parent as the mount shows it (setgid and group from the override xattr).
        let pst = self.stat_eff(&Loc::Dir(pdir.clone()), 0).map_err(|e| Error::io(e, "stat parent"))?;
        let via_work = slot.is_whiteout || opaque;
        let work = self.work_fd()?;
        // A default ACL on the parent: the upper filesystem applies it (and ignores the umask)
        // when the object is made in the parent; one made in workdir is made in a staging
        // directory carrying the same default ACL.
        let dacl = match &obj {
            NewObj::Symlink { .. } | NewObj::Link { .. } => None,
            _ => self.default_acl(pnode, &pdir),
        };
        let umask = if dacl.is_some() { 0 } else { caller.umask & 0o777 };
        // A staging name in workdir, only where the object is made there.
        let tmp = if via_work { self.tmp_name() } else { CString::default() };
        let stage = match (&dacl, via_work) {
            (Some(v), true) => {
                sys::mkdirat(work.as_fd(), &tmp, 0o700).map_err(|e| Error::io(e, "staging dir"))?;
                let fd = layer::open_dir_at(work.as_fd(), &tmp).map_err(|e| Error::io(e, "staging dir"))?;
                let sfd = Arc::new(fd);
                if let Err(e) = Loc::fixed_dir(sfd.clone()).setxattr(super::ACL_DEFAULT, v, 0) {
                    let _ = remove_tree_at(work, &tmp);
                    return Err(Error::io(e, "staging dir default ACL"));
                }
                Some(sfd)
            }
            _ => None,
        };
        let (dir, at): (Arc<OwnedFd>, Arc<CStr>) = match (&stage, via_work) {
            (Some(s), _) => (s.clone(), Arc::from(c"o")),
            (None, true) => (work.clone(), Arc::from(tmp.as_c_str())),
            (None, false) => (pfd.clone(), cn.clone()),
        };
        // `dir` as a location's directory: the parent's own handle when made in place.
        let ldir = if stage.is_none() && !via_work { pdir.clone() } else { DirFd::fixed(dir.clone()) };
        let mut guard = TmpGuard { dir: work, name: tmp, armed: via_work };
        let mut file_fd = None;
        let mut new_dir = None;
        let mode_for_owner;
        // With xattr_permissions the real object stays reachable by the server whatever the
        // mode; the mode asked for goes into the xattr.
        let (xo, reach_f, reach_d) = if self.write_ovr { (0o777, 0o600, 0o700) } else { (0o7777, 0, 0) };
        let mut new_kind = ovr::Kind::File;
        let mut perm = 0;
        let loc = match &obj {
            NewObj::File { mode, flags } => {
                let acc = flags & libc::O_ACCMODE;
                let extra = flags & (libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME);
                perm = *mode & 0o7777 & !umask;
                let fd = sys::openat(
                    dir.as_fd(),
                    &at,
                    acc | extra | libc::O_CREAT | libc::O_EXCL,
                    (perm & xo) | reach_f,
                )
                .map_err(|e| Error::io(e, "create"))?;
                file_fd = Some(fd);
                mode_for_owner = (!self.write_ovr).then_some(perm);
                Loc::At(ldir, at.clone())
            }
            NewObj::Dir { mode } => {
                let mut m = *mode & 0o7777 & !umask;
                if pst.st_mode & libc::S_ISGID != 0 {
                    m |= libc::S_ISGID;
                }
                perm = m;
                new_kind = ovr::Kind::Dir;
                let real = (m & xo) | reach_d;
                sys::mkdirat(dir.as_fd(), &at, real).map_err(|e| Error::io(e, "mkdir"))?;
                let fd = Arc::new(layer::open_dir_at(dir.as_fd(), &at).map_err(|e| Error::io(e, "mkdir"))?);
                new_dir = Some(fd.clone());
                let l = Loc::fixed_dir(fd);
                if via_work && real & libc::S_ISGID != 0 {
                    l.chmod(real).map_err(|e| Error::io(e, "mkdir"))?;
                }
                mode_for_owner = None;
                l
            }
            NewObj::Special { mode, rdev } => {
                perm = *mode & 0o7777 & !umask;
                let fmt = *mode & libc::S_IFMT;
                new_kind = ovr::Kind::from_mode(fmt, *rdev).unwrap_or(ovr::Kind::File);
                match sys::mknodat(dir.as_fd(), &at, fmt | perm, *rdev) {
                    Ok(()) => {}
                    Err(e)
                        if self.write_ovr
                            && e.raw_os_error() == Some(libc::EPERM)
                            && (fmt == libc::S_IFCHR || fmt == libc::S_IFBLK) =>
                    {
                        // Not allowed to make devices: a regular file stands for it, its type
                        // and number in the override xattr (as containers-storage does).
                        drop(
                            sys::openat(
                                dir.as_fd(),
                                &at,
                                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                                0o600,
                            )
                            .map_err(|e| Error::io(e, "mknod placeholder"))?,
                        );
                    }
                    Err(e) => return Err(Error::io(e, "mknod")),
                }
                mode_for_owner = (!self.write_ovr).then_some(fmt | perm);
                Loc::At(ldir, at.clone())
            }
            NewObj::Symlink { target } => {
                sys::symlinkat(target, dir.as_fd(), &at).map_err(|e| Error::io(e, "symlink"))?;
                mode_for_owner = None;
                new_kind = ovr::Kind::Symlink;
                perm = 0o777;
                Loc::At(ldir, at.clone())
            }
            NewObj::Link { src } => {
                match src.live().map_err(|e| Error::io(e, "link"))? {
                    Live::At(sdir, sname) => sys::linkat(sdir.as_fd(), &sname, dir.as_fd(), &at),
                    Live::Dir(fd) | Live::Pinned(fd) => sys::link_fd(fd.as_fd(), dir.as_fd(), &at),
                }
                .map_err(|e| Error::io(e, "link"))?;
                mode_for_owner = None;
                Loc::At(ldir, at.clone())
            }
        };
        if let (true, Some(acl)) = (self.write_ovr, dacl.as_deref().and_then(crate::acl::Acl::parse)) {
            // The mode recorded is what the inherited ACL leaves of the one asked for, as the
            // filesystem makes it.
            perm &= 0o7000 | acl.mode_bits();
        }
        // The new object's stat where the owner check read it and left it as it was.
        let mut seen = None;
        if !matches!(obj, NewObj::Link { .. }) {
            let r = if self.write_ovr {
                self.record_owner(&loc, caller, &pst, perm, new_kind)
            } else {
                let known = file_fd.as_ref().or(new_dir.as_deref());
                self.set_owner(&loc, known, caller, &pst, mode_for_owner).map(|st| seen = st)
            };
            if let Err(e) = r {
                if !via_work {
                    let _ = remove_tree_at(&pfd, &cn);
                }
                return Err(e);
            }
        }
        if opaque {
            self.set_opaque(&loc)?;
        }
        if via_work {
            // A staging directory is removed by the guard in any case.
            let staged = stage.is_some();
            if slot.is_whiteout {
                if is_dir {
                    sys::renameat2(dir.as_fd(), &at, pfd.as_fd(), &cn, sys::RENAME_EXCHANGE)
                        .map_err(|e| Error::io(e, "create over whiteout"))?;
                    // `at` in workdir is now the old whiteout; the guard removes it.
                } else {
                    sys::renameat2(dir.as_fd(), &at, pfd.as_fd(), &cn, 0)
                        .map_err(|e| Error::io(e, "create over whiteout"))?;
                    guard.armed = staged;
                }
            } else {
                sys::renameat2(dir.as_fd(), &at, pfd.as_fd(), &cn, sys::RENAME_NOREPLACE)
                    .map_err(|e| Error::io(e, "create"))?;
                guard.armed = staged;
            }
        }
        drop(guard);
        if slot.wh_file {
            if let Some(w) = name::whiteout_name(name).and_then(|w| CString::new(w).ok()) {
                let _ = sys::unlinkat(pfd.as_fd(), &w, false);
            }
        }
        // What the owner check saw still holds for an object made in place (a rename into
        // place sets its ctime on ext4, and so does the opaque xattr).
        let st = match (seen.filter(|_| !via_work), &file_fd, &new_dir) {
            (Some(st), _, _) => Ok(st),
            (None, Some(fd), _) => sys::fstat(fd.as_fd()),
            (None, None, Some(fd)) => sys::fstat(fd.as_fd()),
            (None, None, None) => Loc::At(pdir.clone(), cn.clone()).stat(),
        }
        .map_err(|e| Error::io(e, "stat new"))?;
        let final_loc = match new_dir {
            Some(fd) => Loc::Dir(DirFd::child(&pdir, cn.clone(), fd, st.st_ino)),
            None => Loc::At(pdir.clone(), cn.clone()),
        };
        let node = match obj {
            NewObj::Link { .. } => None,
            _ => Some(()),
        };
        let id = self.ino_for(0, st.st_ino);
        let state = NodeState {
            parent: Some(pnode.clone()),
            name: cn.clone(),
            kind: kind_of(st.st_mode),
            upper: Some(final_loc),
            upper_marks: DirMarks { opaque, ..DirMarks::default() },
            lower_dirs: super::LowerDirs::default(),
            lower: None,
            unlinked: false,
        };
        let n = if node.is_none() {
            // A new name for an existing node: keep the node, add the name; a node with no name
            // left (an O_TMPFILE file) takes this one.
            match self.node(id) {
                Ok(n) if !n.state.lock().unlinked => n,
                _ => self.install(id, state),
            }
        } else {
            let n = self.install(id, state);
            // A new object has no flags to keep.
            n.prot.store(0, Ordering::Release);
            let facts = if is_dir {
                // Made empty here, with no lowers below (a name over a lower one is opaque);
                // made in place without an inherited default ACL, it has none.
                let no_acl = if dacl.is_none() && !via_work { FACT_NO_DEFAULT_ACL } else { 0 };
                FACT_MADE_HERE | no_acl
            } else {
                FACT_NO_CAPS
            };
            n.facts.store(facts, Ordering::Release);
            n
        };
        n.lookups.fetch_add(1, Ordering::Relaxed);
        Ok((n, st, file_fd))
    }

    /// O_TMPFILE: an unnamed regular file in `pnode`'s upper directory (copied up first), as
    /// kernel overlayfs makes one. Its node has no name (`unlinked`) and reaches the file
    /// through a descriptor of its own until a link names it ([`Self::link`]); its link count
    /// is 0. Returns the node (one kernel reference taken), its stat and the open descriptor.
    pub(crate) fn tmpfile_upper(
        &self,
        pnode: &Arc<Node>,
        mode: u32,
        flags: i32,
        caller: Caller,
    ) -> Result<(Arc<Node>, Stat, OwnedFd)> {
        self.check_writable()?;
        if !pnode.is_dir() {
            return Err(Error::errno(libc::ENOTDIR));
        }
        self.check_prot(pnode, PROT_IMMUTABLE)?;
        let (pdir, pfd) = self.ensure_upper_dir(pnode)?;
        let pst = self.stat_eff(&Loc::Dir(pdir.clone()), 0).map_err(|e| Error::io(e, "stat parent"))?;
        // Made in the directory itself: the filesystem applies its default ACL (and then no
        // umask).
        let dacl = self.default_acl(pnode, &pdir);
        let umask = if dacl.is_some() { 0 } else { caller.umask & 0o777 };
        let mut perm = mode & 0o7777 & !umask;
        let (xo, reach) = if self.write_ovr { (0o777, 0o600) } else { (0o7777, 0) };
        let extra = flags & (libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME);
        // Read-write, whatever was asked (it may be a passthrough backing file); never
        // O_EXCL, so that a link can name it later.
        let fd = sys::openat(pfd.as_fd(), c".", libc::O_TMPFILE | libc::O_RDWR | extra, (perm & xo) | reach)
            .map_err(|e| Error::io(e, "tmpfile"))?;
        let pin = Arc::new(sys::reopen(fd.as_fd(), libc::O_PATH).map_err(|e| Error::io(e, "tmpfile"))?);
        let loc = Loc::Pinned(pin);
        if self.write_ovr {
            if let Some(acl) = dacl.as_deref().and_then(crate::acl::Acl::parse) {
                perm &= 0o7000 | acl.mode_bits();
            }
            self.record_owner(&loc, caller, &pst, perm, ovr::Kind::File)?;
        } else {
            self.set_owner(&loc, Some(&fd), caller, &pst, Some(perm))?;
        }
        let st = sys::fstat(fd.as_fd()).map_err(|e| Error::io(e, "stat new"))?;
        let state = NodeState {
            parent: Some(pnode.clone()),
            name: Arc::from(c"/"),
            kind: FileType::RegularFile,
            upper: Some(loc),
            upper_marks: DirMarks::default(),
            lower_dirs: super::LowerDirs::default(),
            lower: None,
            unlinked: true,
        };
        let n = self.install(self.ino_for(0, st.st_ino), state);
        n.prot.store(0, Ordering::Release);
        n.facts.store(FACT_NO_CAPS, Ordering::Release);
        n.lookups.fetch_add(1, Ordering::Relaxed);
        Ok((n, st, fd))
    }

    /// The attributes of an object [`Self::create_upper`] just made, from the stat it returned
    /// (no second stat): the override applied, one layer only.
    pub(crate) fn new_attr(&self, node: &Node, mut st: Stat) -> Attr {
        if let Some(top) = node.top() {
            self.apply_override(&mut st, &top.loc, top.layer);
        }
        self.attr_from_stat(node.ino, 0, &st, false)
    }

    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, caller: Caller) -> Result<Attr> {
        let p = self.node(parent)?;
        let (n, st, _) = self.create_upper(&p, name, NewObj::Dir { mode }, caller)?;
        Ok(self.new_attr(&n, st))
    }

    pub fn mknod(&self, parent: u64, name: &OsStr, mode: u32, rdev: u64, caller: Caller) -> Result<Attr> {
        let p = self.node(parent)?;
        let obj = if mode & libc::S_IFMT == libc::S_IFREG || mode & libc::S_IFMT == 0 {
            NewObj::File { mode: mode & 0o7777, flags: libc::O_WRONLY }
        } else {
            NewObj::Special { mode, rdev }
        };
        let (n, st, _) = self.create_upper(&p, name, obj, caller)?;
        Ok(self.new_attr(&n, st))
    }

    pub fn symlink(&self, parent: u64, name: &OsStr, target: &OsStr, caller: Caller) -> Result<Attr> {
        let p = self.node(parent)?;
        let t = cname(target.as_bytes())?;
        let (n, st, _) = self.create_upper(&p, name, NewObj::Symlink { target: &t }, caller)?;
        Ok(self.new_attr(&n, st))
    }

    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Result<Attr> {
        self.check_writable()?;
        let src = self.node(ino)?;
        if src.is_dir() {
            return Err(Error::errno(libc::EPERM));
        }
        let removed_lower = {
            let s = src.state.lock();
            s.unlinked && s.upper.is_none()
        };
        if removed_lower {
            // A removed lower object (`linkat` of a descriptor still open): the kernel's
            // overlay inode has no link left, and the VFS refuses; this FUSE inode still shows
            // the lower object's count, as the kernel's `stat` does. (For a removed upper
            // object, which shows its own count, none, the kernel refuses before asking.)
            return Err(Error::errno(libc::ENOENT));
        }
        // As vfs_link: no new name for an append-only or immutable file; none in an immutable
        // directory.
        let p = self.node(newparent)?;
        self.check_prot(&p, PROT_IMMUTABLE)?;
        self.check_prot(&src, PROT_APPEND | PROT_IMMUTABLE)?;
        self.copy_up(&src, true)?;
        // Linked through a descriptor of its own: a rename of the source racing with this
        // cannot make the new name reach another object.
        let loc = {
            let up = src.upper().ok_or(Error::errno(libc::EIO))?;
            match up.loc {
                Loc::At(..) => {
                    Loc::Pinned(Arc::new(up.loc.open(libc::O_PATH).map_err(|e| Error::io(e, "link"))?))
                }
                l => l,
            }
        };
        let (pdir, _) = self.ensure_upper_dir(&p)?;
        self.copy_named_in(&src, &p, &pdir);
        let caller = Caller { uid: 0, gid: 0, umask: 0, pid: 0 };
        let (n, _, _) = self.create_upper(&p, newname, NewObj::Link { src: loc }, caller)?;
        self.node_attr(&n)
    }

    /// Before a copied-up object gets a name in directory `to` (upper `to_dir`) by a rename
    /// from another directory or a link: as kernel overlayfs, `to` is marked impure when the
    /// object has an origin (a copied-up non-directory, or a directory with lower ones), so
    /// that lookups and listings there read it. Such a file keeps its number for the mount
    /// from now on, as other copies do, rather than have it read again from its origin.
    pub(crate) fn copy_named_in(&self, node: &Node, to: &Node, to_dir: &DirFd) {
        let copied = if node.is_dir() {
            !node.state.lock().lower_dirs.is_empty()
        } else {
            self.kept_ino.lock().get_mut(&node.ino).map(|k| k.origin_key = None).is_some()
        };
        if copied {
            self.mark_impure(to, to_dir);
        }
    }

    /// unlink (`dir == false`) and rmdir (`dir == true`).
    pub fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> Result<()> {
        self.check_writable()?;
        let name = name.as_bytes();
        name::validate(name).map_err(|e| Error::errno(e.errno()))?;
        if name::is_reserved(name) {
            return Err(Error::errno(libc::ENOENT));
        }
        let pnode = self.node(parent)?;
        // As may_delete: nothing leaves an append-only or immutable directory, and an
        // append-only or immutable object stays. Looked at before the directory is copied up.
        self.check_prot(&pnode, PROT_APPEND | PROT_IMMUTABLE)?;
        if !pnode.has_upper.load(Ordering::Acquire) {
            // What fails fails before the directory is copied up, as on the kernel (dpkg tries
            // `rmdir` on shared directories and ignores ENOTEMPTY: no trace in the upper).
            let _g = pnode.dir_lock.read();
            let c = self.lookup_locked(&pnode, name)?.ok_or(Error::errno(libc::ENOENT))?;
            self.check_prot(&c, PROT_APPEND | PROT_IMMUTABLE)?;
            self.check_removable(&c, dir)?;
        }
        if self.whiteout_style == WhiteoutStyle::WhFile
            && name::whiteout_name(name).is_none()
            && self.lower_positive(&pnode, name)?
        {
            // No `.wh.` name fits (the name has 252 bytes or more): refused before anything
            // changes, not after the directory was copied up.
            return Err(Error::errno(libc::ENAMETOOLONG));
        }
        let (_, pfd) = self.ensure_upper_dir(&pnode)?;
        let (_g, child) = loop {
            let g = pnode.dir_lock.write();
            let child = self.lookup_locked(&pnode, name)?.ok_or(Error::errno(libc::ENOENT))?;
            if !Self::copying_up(&child) {
                break (g, child);
            }
            drop(g);
            drop(child.copy_lock.lock());
        };
        self.dir_changed(pnode.ino);
        self.check_prot(&child, PROT_APPEND | PROT_IMMUTABLE)?;
        let (kind, upper) = {
            let s = child.state.lock();
            (s.kind, s.upper.clone())
        };
        let is_dir = kind == FileType::Directory;
        self.check_removable(&child, dir)?;
        let need_wh = self.lower_positive(&pnode, name)?;
        let cn = cname(name)?;
        // Keep the object reachable for the node (opens racing with this unlink, open
        // descriptors, other hard links): pin it before its name goes away.
        self.pin_removed(&child);
        match (&upper, need_wh) {
            (Some(_), true) => self.replace_with_whiteout(&pfd, name, is_dir)?,
            (Some(_), false) => self.remove_upper(&pfd, &cn, is_dir)?,
            (None, _) => self.make_whiteout(&pfd, name)?,
        }
        child.state.lock().unlinked = true;
        self.name_gone(&child);
        Ok(())
    }

    /// `node` lost its name (unlink, or replaced by a rename). The kernel drops the inode's
    /// link count itself, and under the writeback cache keeps its other cached attributes: an
    /// `fstat` through a descriptor still open on a lower non-directory never copied up would
    /// show 0 links, where kernel overlayfs shows the lower file's own count (it stays). Such
    /// a node's attributes are to be asked for again. (Without the writeback cache the kernel
    /// asks by itself; an upper object's count is the kernel's.)
    fn name_gone(&self, node: &Node) {
        if !self.writeback_cache.load(Ordering::Relaxed) || node.has_upper.load(Ordering::Acquire) {
            return;
        }
        if let Some(f) = self.attrs_stale.get().filter(|_| !node.is_dir()) {
            f(node.ino);
        }
    }

    /// That `child` can be removed by unlink (`dir` false) or rmdir: the right type, and a
    /// directory with nothing in its merged view.
    fn check_removable(&self, child: &Arc<Node>, dir: bool) -> Result<()> {
        let is_dir = child.state.lock().kind == FileType::Directory;
        if dir && !is_dir {
            return Err(Error::errno(libc::ENOTDIR));
        }
        if !dir && is_dir {
            return Err(Error::errno(libc::EISDIR));
        }
        if is_dir {
            let _cg = child.dir_lock.write();
            if self.list_merged(child, false)?.len() > 2 {
                return Err(Error::errno(libc::ENOTEMPTY));
            }
        }
        Ok(())
    }

    /// Whether `dst`, at `pnode/name`, may be replaced by `src` in a rename, as
    /// [`Self::check_removable`] answers. A directory replacing a non-empty directory that is
    /// only in the upper is marked opaque first (where its new place needs it) and keeps the
    /// mark: kernel overlayfs checks a target with lower content for emptiness before it
    /// changes anything, but leaves an upper-only one to the upper filesystem's rename, which
    /// fails after the mark is set. Nothing shows through such a directory either way (it
    /// has no lower content, or it would not be moving), so only the upper differs.
    fn check_replaceable(
        &self,
        dst: &Arc<Node>,
        src: &Arc<Node>,
        pnode: &Arc<Node>,
        name: &[u8],
    ) -> Result<()> {
        let r = self.check_removable(dst, src.is_dir());
        if r.as_ref().is_err_and(|e| e.errno == libc::ENOTEMPTY) && !Self::has_lower_content(dst) {
            self.opaque_for_move(src, pnode, name)?;
        }
        r
    }

    /// Renames `ocn` to `ncn`; with `whiteout`, leaves a whiteout at the old name, in the same
    /// step where the filesystem can (RENAME_WHITEOUT), else right after.
    fn rename_leaving_whiteout(
        &self,
        opfd: &Arc<OwnedFd>,
        ocn: &CStr,
        npfd: &Arc<OwnedFd>,
        ncn: &CStr,
        whiteout: bool,
    ) -> std::io::Result<()> {
        if whiteout && self.whiteout_style == WhiteoutStyle::CharDev {
            match sys::renameat2(opfd.as_fd(), ocn, npfd.as_fd(), ncn, sys::RENAME_WHITEOUT) {
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL) | Some(libc::EPERM) | Some(libc::ENOTSUP)
                    ) => {}
                r => return r,
            }
        }
        sys::renameat2(opfd.as_fd(), ocn, npfd.as_fd(), ncn, 0)?;
        if whiteout {
            self.make_whiteout(opfd, ocn.to_bytes())
                .map_err(|e| std::io::Error::from_raw_os_error(e.errno))?;
        }
        Ok(())
    }

    /// Replaces the upper directory `cn` of `pfd`, which holds nothing the merged view shows
    /// (whiteouts and markers), with an empty opaque directory of the same mode and owner, in
    /// one step (RENAME_EXCHANGE with one made in workdir; the old one is then cleared there),
    /// as kernel overlayfs does before a rename replaces such a directory.
    fn empty_in_place(&self, pfd: &Arc<OwnedFd>, cn: &CStr) -> Result<()> {
        let st = sys::fstatat(pfd.as_fd(), cn).map_err(|e| Error::io(e, "rename"))?;
        let work = self.work_fd()?;
        let tmp = self.tmp_name();
        sys::mkdirat(work.as_fd(), &tmp, 0o700).map_err(|e| Error::io(e, "rename staging dir"))?;
        let guard = TmpGuard { dir: work, name: tmp.clone(), armed: true };
        let fd = layer::open_dir_at(work.as_fd(), &tmp).map_err(|e| Error::io(e, "rename staging dir"))?;
        let loc = Loc::fixed_dir(Arc::new(fd));
        if self.can_chown() {
            loc.chown(st.st_uid, st.st_gid).map_err(|e| Error::io(e, "rename staging dir"))?;
        }
        loc.chmod(st.st_mode & 0o7777).map_err(|e| Error::io(e, "rename staging dir"))?;
        self.set_opaque(&loc)?;
        sys::renameat2(work.as_fd(), &tmp, pfd.as_fd(), cn, sys::RENAME_EXCHANGE)
            .map_err(|e| Error::io(e, "rename"))?;
        // The old directory is in workdir now, under the staging name: the guard clears it.
        drop(guard);
        Ok(())
    }

    /// Marks `node`, a directory about to move to `pnode/name`, opaque first where its new
    /// place needs it (see [`Self::moved`]): no crash between the two leaves it merging with
    /// what a lower layer has there. Kept if the move then fails, as the kernel keeps it.
    fn opaque_for_move(&self, node: &Arc<Node>, pnode: &Arc<Node>, name: &[u8]) -> Result<()> {
        if !node.is_dir() || !(Self::has_lower_content(pnode) || self.lower_positive(pnode, name)?) {
            return Ok(());
        }
        let loc = {
            let s = node.state.lock();
            if s.upper_marks.opaque {
                return Ok(());
            }
            s.upper.clone()
        };
        if let Some(l) = loc {
            self.set_opaque(&l)?;
            node.state.lock().upper_marks.opaque = true;
        }
        Ok(())
    }

    /// Whether a copy-up of `node` is under way. Removing or replacing its name waits for it
    /// (as the kernel's unlink and rename wait on the copy-up's inode lock): otherwise the
    /// copy-up would find its name taken, and the open that asked for it fail with EEXIST.
    fn copying_up(node: &Node) -> bool {
        !node.has_upper.load(Ordering::Acquire) && node.copy_lock.try_lock().is_none()
    }

    /// Pins the upper object of a node whose name is about to go (removed, or replaced by a
    /// rename): a non-directory as [`Self::pin_upper`] does, a directory by keeping its
    /// descriptor open for the node's life ([`DirFd::pin`]).
    fn pin_removed(&self, node: &Node) {
        self.pin_upper(node);
        let dir = match &node.state.lock().upper {
            Some(Loc::Dir(d)) => d.clone(),
            _ => return,
        };
        if let Err(e) = dir.pin() {
            log::warn!("removed directory {:?}: descriptor not kept: {e}", node.state.lock().name);
        }
    }

    /// Points a node's upper non-directory at an `O_PATH` fd of its own, so that requests on the
    /// node keep reaching the same object while its name is removed or moved.
    /// Waits for requests using the name (see [`Node::top`]).
    fn pin_upper(&self, node: &Node) {
        if !matches!(node.state.lock().upper, Some(Loc::At(..))) {
            return;
        }
        let _names = node.dir_lock.write();
        let loc = node.state.lock().upper.clone();
        if let Some(l @ Loc::At(..)) = loc {
            if let Ok(fd) = l.open(libc::O_PATH) {
                node.state.lock().upper = Some(Loc::Pinned(Arc::new(fd)));
            }
        }
    }

    fn lock_two<'a>(
        a: &'a Arc<Node>,
        b: &'a Arc<Node>,
    ) -> (RwLockWriteGuard<'a, ()>, Option<RwLockWriteGuard<'a, ()>>) {
        if Arc::ptr_eq(a, b) {
            return (a.dir_lock.write(), None);
        }
        if a.ino < b.ino {
            let g1 = a.dir_lock.write();
            (g1, Some(b.dir_lock.write()))
        } else {
            let g2 = b.dir_lock.write();
            (a.dir_lock.write(), Some(g2))
        }
    }

    fn has_lower_content(node: &Node) -> bool {
        let s = node.state.lock();
        s.kind == FileType::Directory && !s.lower_dirs.is_empty()
    }

    /// rename(2) with RENAME_NOREPLACE / RENAME_EXCHANGE.
    pub fn rename(&self, oldp: u64, oname: &OsStr, newp: u64, nname: &OsStr, flags: u32) -> Result<()> {
        while let Some(busy) = self.rename_once(oldp, oname, newp, nname, flags)? {
            drop(busy.copy_lock.lock());
        }
        Ok(())
    }

    /// One attempt at a rename; `Some(node)`: the name it would replace is being copied up,
    /// to be waited for before trying again.
    fn rename_once(
        &self,
        oldp: u64,
        oname: &OsStr,
        newp: u64,
        nname: &OsStr,
        flags: u32,
    ) -> Result<Option<Arc<Node>>> {
        self.check_writable()?;
        let (oname, nname) = (oname.as_bytes(), nname.as_bytes());
        name::validate(oname).map_err(|e| Error::errno(e.errno()))?;
        name::validate_new(nname).map_err(|e| Error::errno(e.errno()))?;
        if flags & !(sys::RENAME_NOREPLACE | sys::RENAME_EXCHANGE) != 0
            || (flags & sys::RENAME_NOREPLACE != 0 && flags & sys::RENAME_EXCHANGE != 0)
        {
            return Err(Error::errno(libc::EINVAL));
        }
        let exchange = flags & sys::RENAME_EXCHANGE != 0;
        let opn = self.node(oldp)?;
        let npn = self.node(newp)?;
        let src = {
            let _g = opn.dir_lock.read();
            self.lookup_locked(&opn, oname)?
        }
        .ok_or(Error::errno(libc::ENOENT))?;
        let dst0 = {
            let _g = npn.dir_lock.read();
            self.lookup_locked(&npn, nname)?
        };
        // As may_delete and may_create: the source leaves its directory, the target (if any)
        // leaves its own, and something is made there.
        let (ai, i) = (PROT_APPEND | PROT_IMMUTABLE, PROT_IMMUTABLE);
        self.check_prot(&opn, ai)?;
        self.check_prot(&src, ai)?;
        self.check_prot(&npn, if dst0.is_some() { ai } else { i })?;
        if let Some(d) = &dst0 {
            if !Arc::ptr_eq(d, &src) {
                self.check_prot(d, ai)?;
            }
        }
        if Self::has_lower_content(&src) {
            return Err(Error::errno(libc::EXDEV));
        }
        if let Some(d) = dst0.as_ref().filter(|d| !exchange && !Arc::ptr_eq(d, &src)) {
            // What the target makes fail fails before anything is copied up (checked again
            // under the locks below).
            if flags & sys::RENAME_NOREPLACE != 0 {
                return Err(Error::errno(libc::EEXIST));
            }
            self.check_replaceable(d, &src, &npn, nname)?;
        }
        if !exchange
            && self.whiteout_style == WhiteoutStyle::WhFile
            && name::whiteout_name(oname).is_none()
            && self.lower_positive(&opn, oname)?
        {
            // As for an unlink: no `.wh.` name fits the name the rename leaves behind, so it is
            // refused before anything is copied up.
            return Err(Error::errno(libc::ENAMETOOLONG));
        }
        if exchange {
            let d = dst0.as_ref().ok_or(Error::errno(libc::ENOENT))?;
            if Self::has_lower_content(d) {
                return Err(Error::errno(libc::EXDEV));
            }
            self.copy_up(d, true)?;
        }
        self.copy_up(&src, true)?;
        let (opdir, opfd) = self.ensure_upper_dir(&opn)?;
        let (npdir, npfd) = self.ensure_upper_dir(&npn)?;
        let (_g1, _g2) = Self::lock_two(&opn, &npn);
        self.dir_changed(opn.ino);
        self.dir_changed(npn.ino);
        // As kernel overlayfs: a copy with an origin moved into another directory marks that
        // one impure, where lookups and listings look for origins.
        if !Arc::ptr_eq(&opn, &npn) {
            for (n, to, to_dir) in
                [(Some(&src), &npn, &npdir), (dst0.as_ref().filter(|_| exchange), &opn, &opdir)]
            {
                if let Some(n) = n {
                    self.copy_named_in(n, to, to_dir);
                }
            }
        }
        // Re-check under the locks: the names may have changed meanwhile.
        let src2 = self.lookup_locked(&opn, oname)?.ok_or(Error::errno(libc::ENOENT))?;
        if !Arc::ptr_eq(&src, &src2) || !src.has_upper.load(Ordering::Acquire) {
            return Err(Error::new(libc::EAGAIN, "rename raced"));
        }
        let dst = self.lookup_locked(&npn, nname)?;
        if let Some(d) = dst.as_ref().filter(|d| Self::copying_up(d)) {
            return Ok(Some(d.clone()));
        }
        let ocn = super::arc_cname(oname)?;
        let ncn = super::arc_cname(nname)?;
        let src_dir = src.is_dir();
        if let Some(d) = &dst {
            if Arc::ptr_eq(d, &src) && !exchange {
                // Two names of one object (or the same name): nothing to do.
                return Ok(None);
            }
        }
        if exchange {
            let d = dst.ok_or(Error::errno(libc::ENOENT))?;
            if !d.has_upper.load(Ordering::Acquire) {
                return Err(Error::new(libc::EAGAIN, "rename raced"));
            }
            self.pin_upper(&src);
            self.pin_upper(&d);
            self.opaque_for_move(&src, &npn, nname)?;
            self.opaque_for_move(&d, &opn, oname)?;
            sys::renameat2(opfd.as_fd(), &ocn, npfd.as_fd(), &ncn, sys::RENAME_EXCHANGE)
                .map_err(|e| Error::io(e, "rename exchange"))?;
            for (n, p, pdir, nm, cn) in [(&src, &npn, &npdir, nname, &ncn), (&d, &opn, &opdir, oname, &ocn)] {
                self.moved(n, p, pdir, nm, cn)?;
            }
            return Ok(None);
        }
        if let Some(d) = &dst {
            if flags & sys::RENAME_NOREPLACE != 0 {
                return Err(Error::errno(libc::EEXIST));
            }
            // The target goes as an unlink or rmdir of it would.
            self.check_replaceable(d, &src, &npn, nname)?;
        }
        let need_wh_old = self.lower_positive(&opn, oname)?;
        if let Some(d) = &dst {
            self.pin_removed(d);
        }
        self.pin_upper(&src);
        self.opaque_for_move(&src, &npn, nname)?;
        let slot = self.upper_slot(&npn, &npfd, nname, &ncn)?;
        let raw_dir = slot.st.is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
        if slot.is_whiteout && src_dir {
            // Exchanged with the whiteout: the directory takes the name and the whiteout its
            // old one in one step (kept there where a lower layer has that name).
            sys::renameat2(opfd.as_fd(), &ocn, npfd.as_fd(), &ncn, sys::RENAME_EXCHANGE)
                .map_err(|e| Error::io(e, "rename over whiteout"))?;
            if !need_wh_old {
                let _ = sys::unlinkat(opfd.as_fd(), &ocn, false);
            }
        } else {
            let wh_file = need_wh_old && self.whiteout_style == WhiteoutStyle::WhFile;
            if wh_file {
                // `.wh.NAME` first: beside the object of its own layer it hides nothing yet,
                // so no crash between the two shows the lower object again.
                self.make_whiteout(&opfd, oname)?;
            }
            let mut cleared = false;
            loop {
                match self.rename_leaving_whiteout(&opfd, &ocn, &npfd, &ncn, need_wh_old && !wh_file) {
                    Ok(()) => break,
                    Err(e)
                        if raw_dir
                            && src_dir
                            && !cleared
                            && matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) =>
                    {
                        // The directory replaced holds whiteouts (its merged view is empty):
                        // made an empty opaque one in one step first, which the rename then
                        // replaces in one step. (Where the opaque mark is a file inside,
                        // rootless, it is cleared out of the way instead.)
                        if self.trusted_xattrs {
                            self.empty_in_place(&npfd, &ncn)?;
                        } else {
                            self.remove_upper(&npfd, &ncn, true)?;
                        }
                        cleared = true;
                    }
                    Err(e) => return Err(Error::io(e, "rename")),
                }
            }
        }
        if slot.wh_file {
            if let Some(w) = name::whiteout_name(nname).and_then(|w| CString::new(w).ok()) {
                let _ = sys::unlinkat(npfd.as_fd(), &w, false);
            }
        }
        if let Some(d) = &dst {
            d.state.lock().unlinked = true;
            self.name_gone(d);
        }
        self.moved(&src, &npn, &npdir, nname, &ncn)?;
        Ok(None)
    }

    /// Updates a node moved to `pnode/name`; a directory landing in a merged directory, or on a
    /// name that a lower layer has, becomes opaque.
    fn moved(
        &self,
        node: &Arc<Node>,
        pnode: &Arc<Node>,
        pdir: &DirFd,
        name: &[u8],
        cn: &Arc<CStr>,
    ) -> Result<()> {
        let is_dir = node.is_dir();
        // As kernel overlayfs: a directory moved into a merged directory becomes opaque (it
        // would otherwise merge with whatever a lower layer has, or gets, at its new name).
        let opaque = is_dir && (Self::has_lower_content(pnode) || self.lower_positive(pnode, name)?);
        if is_dir {
            // Its `..` changes.
            let _g = node.dir_lock.write();
            self.dir_changed(node.ino);
        }
        let upper = {
            let mut s = node.state.lock();
            s.parent = Some(pnode.clone());
            s.name = cn.clone();
            s.unlinked = false;
            if is_dir {
                // Only directories without lower content move; below the new name nothing
                // merges.
                s.lower_dirs = super::LowerDirs::default();
                if let Some(Loc::Dir(d)) = &s.upper {
                    // Opened again (when closed) from its new place.
                    d.moved_to(pdir, cn.clone());
                }
            } else {
                s.upper = Some(Loc::At(pdir.clone(), cn.clone()));
            }
            s.upper.clone().filter(|_| opaque && !s.upper_marks.opaque)
        };
        // Marked once it is reachable at its new place (its descriptor may have been closed).
        if let Some(l) = upper {
            self.set_opaque(&l)?;
            node.state.lock().upper_marks.opaque = true;
        }
        if is_dir {
            // The listing the kernel caches names the old parent for `..` (a move changes
            // neither the directory's mtime nor anything else the kernel checks): dropped, now
            // that the new parent is the node's, with the server's own.
            let _g = node.dir_lock.write();
            self.listing_changed(node.ino);
        }
        Ok(())
    }
}
