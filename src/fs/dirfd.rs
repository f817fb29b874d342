//! Directory descriptors, held within a budget.
//!
//! Every directory node keeps a descriptor of its upper directory and of each lower directory
//! that merges into it, for as long as the kernel holds the node, and the kernel holds nodes
//! until memory runs short. A walk of a tree whose directories sit in many layers (500
//! directories in 40 layers: 20000 descriptors), or 25000 new directories, reached the
//! process's open-file limit, and every later open, of anything, failed with EMFILE. So such a
//! descriptor may be closed and opened again: its handle keeps its parent's handle and its name
//! (lower layers do not change under a mount; an upper directory renamed through the mount is
//! told its new place, [`DirFd::moved_to`]), and the same walk reaches the same directory (its
//! inode number is checked, never followed through a symlink). Once more are open than
//! [`set_limit`] allows (half the open-file limit), the least recently used are closed,
//! clock-wise: each use marks a handle, and the sweep gives a marked handle a second chance.
//! Layer roots and workdir entries are never closed.

use std::collections::VecDeque;
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::layer;
use crate::sys;

/// A directory's descriptor, open or openable again.
#[derive(Clone, Debug)]
pub struct DirFd(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    fd: Mutex<Option<Arc<OwnedFd>>>,
    used: AtomicBool,
    /// Where it is opened again from: the parent directory and the name there (an upper
    /// directory's change when it is renamed). None: never closed (a layer root, workdir).
    from: Mutex<Option<(DirFd, Arc<CStr>)>>,
    ino: u64,
    /// Never closed again ([`DirFd::pin`]), and no longer counted in the budget.
    pinned: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Counted while open, when it can be closed at all.
        if self.from.get_mut().is_some() && self.fd.get_mut().is_some() && !*self.pinned.get_mut() {
            BUDGET.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

struct Budget {
    limit: AtomicUsize,
    open: AtomicUsize,
    /// Handles that may be open, oldest first (some already dropped or closed).
    ring: Mutex<VecDeque<Weak<Inner>>>,
}

static BUDGET: Budget = Budget {
    limit: AtomicUsize::new(usize::MAX),
    open: AtomicUsize::new(0),
    ring: Mutex::new(VecDeque::new()),
};

/// At most this many closable descriptors stay open (at least 16).
pub(crate) fn set_limit(n: usize) {
    BUDGET.limit.store(n.max(16), Ordering::Relaxed);
    evict();
}

impl DirFd {
    /// A descriptor that stays open (a layer root).
    pub(crate) fn fixed(fd: Arc<OwnedFd>) -> DirFd {
        DirFd(Arc::new(Inner {
            fd: Mutex::new(Some(fd)),
            used: AtomicBool::new(true),
            from: Mutex::new(None),
            ino: 0,
            pinned: AtomicBool::new(false),
        }))
    }

    /// `fd`, directory `name` of `parent` with inode number `ino`, just opened.
    pub(crate) fn child(parent: &DirFd, name: Arc<CStr>, fd: Arc<OwnedFd>, ino: u64) -> DirFd {
        let d = DirFd(Arc::new(Inner {
            fd: Mutex::new(Some(fd)),
            used: AtomicBool::new(true),
            from: Mutex::new(Some((parent.clone(), name))),
            ino,
            pinned: AtomicBool::new(false),
        }));
        register(&d.0);
        d
    }

    /// The directory moved to `name` in `parent` (an upper directory renamed through the
    /// mount; set right after the rename, see [`DirFd::get`]).
    pub(crate) fn moved_to(&self, parent: &DirFd, name: Arc<CStr>) {
        let mut f = self.0.from.lock();
        if f.is_some() {
            *f = Some((parent.clone(), name));
        }
    }

    /// Keeps the descriptor open for as long as the handle lives, out of the budget: for a
    /// directory about to lose its name (removed, or replaced by a rename). It could not be
    /// opened again afterwards, and the open descriptor is what keeps the directory's inode,
    /// and so its inode number, from being reused while a node still stands for it (a
    /// process's working directory, an open directory): a new directory given that number
    /// would have the removed one's node id, and the kernel would take it for the dead one.
    pub(crate) fn pin(&self) -> io::Result<()> {
        loop {
            {
                let g = self.0.fd.lock();
                if g.is_some() {
                    // Under the descriptor's lock: an eviction (which takes it) sees the pin.
                    if !self.0.pinned.swap(true, Ordering::Relaxed) && self.0.from.lock().is_some() {
                        BUDGET.open.fetch_sub(1, Ordering::Relaxed);
                    }
                    return Ok(());
                }
            }
            self.get()?;
        }
    }

    /// The descriptor, opened again if it was closed.
    ///
    /// An upper directory may be renamed through the mount while it is opened again: between
    /// the rename and [`DirFd::moved_to`] its old name is missing or names another directory
    /// (told by the inode number). Then the walk is tried again, for a while, and the
    /// directory is never taken for another.
    pub(crate) fn get(&self) -> io::Result<Arc<OwnedFd>> {
        let mut g = self.0.fd.lock();
        self.0.used.store(true, Ordering::Relaxed);
        if let Some(fd) = &*g {
            return Ok(fd.clone());
        }
        let mut tries = 0;
        let fd = loop {
            let Some((parent, name)) = self.0.from.lock().clone() else {
                return Err(io::Error::from_raw_os_error(libc::EBADF));
            };
            let found = parent.get().and_then(|p| layer::open_dir_at(p.as_fd(), &name)).and_then(|fd| {
                if sys::fstat(fd.as_fd())?.st_ino == self.0.ino {
                    Ok(fd)
                } else {
                    Err(io::Error::from_raw_os_error(libc::ESTALE))
                }
            });
            match found {
                Ok(fd) => break fd,
                Err(e)
                    if tries < 150 && matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESTALE)) =>
                {
                    tries += 1;
                    if tries < 50 {
                        std::thread::yield_now();
                    } else {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
                Err(e) => {
                    log::warn!("directory {name:?} could not be opened again: {e}");
                    return Err(e);
                }
            }
        };
        let fd = Arc::new(fd);
        *g = Some(fd.clone());
        drop(g);
        register(&self.0);
        Ok(fd)
    }
}

/// Counts a newly opened closable descriptor and closes others while over the limit.
fn register(inner: &Arc<Inner>) {
    let open = BUDGET.open.fetch_add(1, Ordering::Relaxed) + 1;
    {
        let mut ring = BUDGET.ring.lock();
        ring.push_back(Arc::downgrade(inner));
        // The entries of dropped handles go once they are half the ring (each keeps its
        // handle's memory, though not its descriptor).
        if ring.len() > 2 * open + 1024 {
            ring.retain(|w| w.strong_count() > 0);
        }
    }
    evict();
}

/// The process ran out of descriptors (EMFILE) although the budget allowed what was open:
/// other descriptors (open files, listings being read) took the rest. Closes every
/// directory descriptor that can be opened again and is not in use right now, and lowers
/// the budget to half of what was open, so the shortage does not come straight back.
/// Answers how many were closed.
pub(crate) fn relieve() -> usize {
    let was = BUDGET.open.load(Ordering::Relaxed);
    let closed = sweep(false, || true);
    let limit = (was / 2).max(16);
    if limit < BUDGET.limit.load(Ordering::Relaxed) {
        BUDGET.limit.store(limit, Ordering::Relaxed);
        log::warn!("out of file descriptors: closed {closed} directory descriptors, keeping at most {limit}");
    }
    closed
}

fn evict() {
    let limit = BUDGET.limit.load(Ordering::Relaxed);
    if BUDGET.open.load(Ordering::Relaxed) <= limit {
        return;
    }
    sweep(true, || BUDGET.open.load(Ordering::Relaxed) > limit);
}

/// Closes descriptors, oldest first, while `over()` holds: with `second_chance`, clock-wise
/// (a handle used since the last sweep is marked unused and passed over, twice round the ring
/// at most), else every one in a single turn. A handle being opened or read right now is
/// skipped (it holds its lock); pinned ones leave the ring. Answers how many were closed.
fn sweep(second_chance: bool, over: impl Fn() -> bool) -> usize {
    let mut ring = BUDGET.ring.lock();
    let mut turns = if second_chance { 2 * ring.len() } else { ring.len() };
    let mut closed = 0;
    while turns > 0 && over() {
        turns -= 1;
        let Some(w) = ring.pop_front() else { break };
        let Some(inner) = w.upgrade() else { continue };
        if inner.pinned.load(Ordering::Relaxed) {
            continue; // out of the ring for good
        }
        if second_chance && inner.used.swap(false, Ordering::Relaxed) {
            ring.push_back(w);
            continue;
        }
        let Some(mut g) = inner.fd.try_lock() else {
            ring.push_back(w);
            continue;
        };
        if inner.pinned.load(Ordering::Relaxed) {
            continue; // pinned meanwhile
        }
        if g.take().is_some() {
            BUDGET.open.fetch_sub(1, Ordering::Relaxed);
            closed += 1;
        }
    }
    closed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::fs::MetadataExt;

    fn open(p: &std::path::Path) -> OwnedFd {
        let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        sys::open_trusted(&c, libc::O_PATH | libc::O_DIRECTORY, 0).unwrap()
    }

    #[test]
    fn closed_descriptors_open_again_to_the_same_directory() {
        let t = tempfile::tempdir().unwrap();
        for i in 0..40 {
            std::fs::create_dir_all(t.path().join(format!("d{i}/e"))).unwrap();
            std::fs::write(t.path().join(format!("d{i}/e/f")), format!("{i}")).unwrap();
        }
        std::fs::create_dir(t.path().join("moved")).unwrap();
        let root = DirFd::fixed(Arc::new(open(t.path())));
        let mut kids = Vec::new();
        for i in 0..40 {
            let name: Arc<CStr> = Arc::from(CString::new(format!("d{i}")).unwrap().as_c_str());
            let p = t.path().join(format!("d{i}"));
            let ino = std::fs::metadata(&p).unwrap().ino();
            let d = DirFd::child(&root, name, Arc::new(open(&p)), ino);
            let e = DirFd::child(&d, Arc::from(c"e"), Arc::new(open(&p.join("e"))), {
                std::fs::metadata(p.join("e")).unwrap().ino()
            });
            kids.push((d, e));
        }
        // Closed as an eviction closes them (the budget itself is process-wide, and other tests
        // run beside this one; the mount tests run it under a real limit).
        for (d, e) in &kids {
            close(d);
            close(e);
        }
        for (i, (_, e)) in kids.iter().enumerate() {
            let fd = e.get().unwrap();
            let f = sys::openat(fd.as_fd(), c"f", libc::O_RDONLY, 0).unwrap();
            let mut b = [0u8; 8];
            let n = sys::pread(f.as_fd(), &mut b, 0).unwrap();
            assert_eq!(&b[..n], i.to_string().as_bytes());
        }
        // A directory replaced under the mount is refused, never followed elsewhere.
        let (d0, _) = &kids[0];
        close(d0);
        std::fs::rename(t.path().join("d0"), t.path().join("moved/d0")).unwrap();
        std::fs::create_dir(t.path().join("d0")).unwrap();
        assert_eq!(d0.get().unwrap_err().raw_os_error(), Some(libc::ESTALE));
    }

    #[test]
    fn a_renamed_directory_opens_again_from_where_it_moved() {
        let t = tempfile::tempdir().unwrap();
        for p in ["a/x/sub", "b"] {
            std::fs::create_dir_all(t.path().join(p)).unwrap();
        }
        let handle = |parent: &DirFd, name: &CStr, p: &str| {
            let p = t.path().join(p);
            DirFd::child(parent, Arc::from(name), Arc::new(open(&p)), std::fs::metadata(&p).unwrap().ino())
        };
        let root = DirFd::fixed(Arc::new(open(t.path())));
        let (a, b) = (handle(&root, c"a", "a"), handle(&root, c"b", "b"));
        let x = handle(&a, c"x", "a/x");
        std::fs::rename(t.path().join("a/x"), t.path().join("b/y")).unwrap();
        x.moved_to(&b, Arc::from(c"y"));
        close(&x);
        close(&a);
        let fd = x.get().unwrap();
        assert!(sys::fstatat(fd.as_fd(), c"sub").is_ok());
        // Gone for good: an error, not another directory.
        std::fs::rename(t.path().join("b/y"), t.path().join("a/x")).unwrap();
        close(&x);
        assert!(x.get().is_err());
    }

    fn close(d: &DirFd) {
        if d.0.fd.lock().take().is_some() {
            BUDGET.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
