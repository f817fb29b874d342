//! Reading directories ahead of a tree walk.
//!
//! A walk (`find`, `du`, `tar`, `ls -R`) lists a directory, then enters its subdirectories one
//! by one, and each listing through FUSE waits for the server to read that directory in every
//! layer and to stat every entry: one cold disk read after another, while the disk could serve
//! several at once. Once a walk shows (the first subdirectory of a listed directory is listed
//! too), the other subdirectories of that directory are read ahead on two threads, and from
//! then on the subdirectories of every directory listed below it, as soon as it is listed.
//! Each lower directory's listing goes into its index (which the lookups then use) and each
//! entry is stat'ed, so the kernel has its inode when the walk's own lookup comes (an upper
//! directory is read and stat'ed too, for the kernel's caches only). The newest directories
//! are read first, in listing order, as a depth-first walk will want them. A directory that
//! is only listed (`ls -l`) starts no read-ahead. Nothing read ahead is kept beyond the index
//! a lookup would have built; the rest is the kernel's own caches.
//!
//! File data is read ahead the same way, once a walk reads files (`tar`, `cp -r`, `grep -r`):
//! when a file of a listed directory is opened for reading, the data of the next files in the
//! listing is asked for (at most [`DATA_BYTES`] of each) without waiting for it, and again
//! whenever the opens come within half of the window's end. The window starts at
//! [`DATA_START`] files, so one file opened out of a listing costs little, and doubles with
//! each step the opens keep up with, to [`DATA_FILES`]. The walk's own reads then find the
//! data in the page cache, or on its way, instead of waiting for one disk read after another.
//! A listing alone reads no data. Once a walk has opened a listed file within its last
//! [`DATA_WALK_LISTINGS`] listings, each directory read ahead of it asks for the data of its
//! first files as well ([`DATA_FILES`] and [`DIR_DATA_BYTES`] at most, in the order its
//! merged listing will come), before the walk lists it: the window above starts again in
//! every directory, and the walk would otherwise wait for each directory's first files one
//! after another. The opens there count those files as asked for, and [`DATA_DIRS_PER_OPEN`]
//! directories at most get this between two opens.
//!
//! Lookups are read ahead too, for programs that stat or open names without listing first (a
//! `stat` of a list of paths, a build resolving its headers, an interpreter importing
//! modules). The first lookup in a directory with lower directories queues a job that lists
//! each of them and stats their entries, in inode order, [`STAT_AHEAD_MAX`] entries at most
//! in all (the directories whose index shows the most entries first, then the others in
//! layer order): the program's next lookups there then find the inodes in the kernel's
//! caches instead of waiting for one disk read after another. These jobs wait behind the
//! walks' directories and are done in the order they came (a loop over paths comes back to
//! its first directory first); the queue keeps the latest [`STAT_QUEUE`], and a job whose
//! directory the kernel has forgotten meanwhile is dropped. Only the kernel's caches keep
//! what was read, and the index a lookup would have built. Off with `read_ahead=0`.
//!
//! The workers read lower directories at `SCHED_IDLE` where they can leave it again (as
//! root), so that they take only the CPU time the program they read for leaves; the rest of
//! their work runs at normal priority ([`beside_the_walk`]).

use std::collections::VecDeque;
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{Condvar, Mutex};

use super::{DirIndex, INDEX_MIN_LOWERS, LowerDirs, OverlayFs};
use crate::layer::Loc;
use crate::sys;

/// Threads reading ahead (the disk serves several reads at once; the CPUs are few).
const THREADS: usize = 2;
/// Directories waiting to be read ahead; the oldest are dropped beyond this.
const QUEUE: usize = 256;
/// Listed directories whose subdirectories are remembered until a walk enters one, and
/// directories known to be walked.
const LISTED: usize = 64;
const WALKED: usize = 256;
/// Files whose data is asked for ahead of the opens: the first window, the largest; and how
/// much of each file.
pub(crate) const DATA_START: usize = 8;
pub(crate) const DATA_FILES: usize = 64;
pub(crate) const DATA_BYTES: u64 = 1 << 20;
/// Listed directories whose regular files are remembered (in listing order, at most
/// `FILES_PER_DIR`: 16 bytes each) for reading their data ahead.
const FILE_DIRS: usize = 16;
const FILES_PER_DIR: usize = 4096;
/// Directories waiting for their entries to be stat'ed ahead of lookups (the oldest are
/// dropped beyond this).
const STAT_QUEUE: usize = 1024;
/// A walk that opened a listed file within this many listings reads file data.
const DATA_WALK_LISTINGS: u64 = 8;
/// Data asked for in a directory read ahead of such a walk, before it is listed; and how many
/// directories at most get it between two opens of listed files (what may be read for
/// nothing once the walk stops reading files: 128 MiB).
const DIR_DATA_BYTES: u64 = 2 << 20;
const DATA_DIRS_PER_OPEN: u64 = 64;
/// Entries stat'ed for one directory's lookups, in all its lower directories (a lookup in a
/// huge directory does not stat all of it).
pub(crate) const STAT_AHEAD_MAX: usize = 4096;

/// What the read-ahead knows, and its work queue (threads started at first use: a mount forks
/// after the filesystem is built).
pub(crate) struct ReadAhead {
    state: Mutex<Known>,
    queue: Arc<Queue>,
    started: OnceLock<()>,
}

struct Known {
    /// Listed directory → its subdirectories, until a walk enters one of them.
    listed: lru::LruCache<u64, Vec<u64>>,
    /// Directories a walk entered a subdirectory of.
    walked: lru::LruCache<u64, ()>,
    /// Listed directory → its regular files, for data read-ahead.
    files: lru::LruCache<u64, Files>,
}

/// A listed directory's regular files in listing order; the opens have come to `cursor`,
/// data is asked for up to `asked`, and the next window is `window` files.
struct Files {
    list: Vec<ListedFile>,
    cursor: usize,
    asked: usize,
    window: usize,
}

/// A regular file with data in a listing: its node id and readdir cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListedFile {
    pub id: u64,
    pub cookie: u64,
}

struct Queue {
    jobs: Mutex<Jobs>,
    ready: Condvar,
    /// Directories queued so far, and read ahead so far.
    queued: AtomicU64,
    done: AtomicU64,
    /// Directories whose entries were stat'ed ahead of lookups.
    statted: AtomicU64,
    /// Files whose data was asked for.
    data_files: AtomicU64,
    /// Listings with regular files since a listed file was last opened: a walk reads file
    /// data while this stays below [`DATA_WALK_LISTINGS`].
    listings_unread: AtomicU64,
    /// Directories whose first files' data was asked for since a listed file was last opened
    /// ([`DATA_DIRS_PER_OPEN`] at most).
    data_dirs: AtomicU64,
    /// Directory read ahead of a data-reading walk → the last cookie (listing position) up
    /// to which its files' data was asked for.
    data_asked: Mutex<lru::LruCache<u64, u64>>,
    /// Set when the filesystem goes away: the threads end.
    closed: std::sync::atomic::AtomicBool,
}

/// The work waiting: the walks' jobs (newest first), then the lookups' directories (oldest
/// first).
#[derive(Default)]
struct Jobs {
    walk: VecDeque<Job>,
    stats: VecDeque<LowerDirs>,
    /// Jobs taken by a worker and not finished yet.
    busy: usize,
}

enum Job {
    /// A directory to read ahead (node id `id`): its upper directory (read by the kernel's
    /// caches only: it changes) and its lower directories.
    Dir { id: u64, upper: Option<Arc<OwnedFd>>, lowers: LowerDirs },
    /// Files whose data to ask for, where each lives.
    Data(Vec<Loc>),
    /// A directory whose lower entries to stat ahead of its lookups.
    Stats(LowerDirs),
}

impl Known {
    /// Adds a listing's regular files to `dir`'s (a listing from offset 0 starts afresh). A
    /// directory without any is not remembered, so it takes no room from those with some.
    fn remember_files(&mut self, dir: u64, offset: u64, files: Vec<ListedFile>) {
        if offset == 0 {
            self.files.pop(&dir);
        }
        if files.is_empty() {
            return;
        }
        let f = self.files.get_or_insert_mut(dir, || Files {
            list: Vec::new(),
            cursor: 0,
            asked: 0,
            window: DATA_START,
        });
        if f.list.is_empty() {
            f.list = files;
            f.list.truncate(FILES_PER_DIR);
        } else {
            let room = FILES_PER_DIR.saturating_sub(f.list.len());
            f.list.extend(files.into_iter().take(room));
        }
    }
}

fn lru<V>(n: usize) -> lru::LruCache<u64, V> {
    lru::LruCache::new(std::num::NonZeroUsize::new(n).unwrap_or(std::num::NonZeroUsize::MIN))
}

impl ReadAhead {
    pub(crate) fn new() -> ReadAhead {
        ReadAhead {
            state: Mutex::new(Known { listed: lru(LISTED), walked: lru(WALKED), files: lru(FILE_DIRS) }),
            queue: Arc::new(Queue {
                jobs: Mutex::default(),
                ready: Condvar::new(),
                queued: AtomicU64::new(0),
                done: AtomicU64::new(0),
                statted: AtomicU64::new(0),
                data_files: AtomicU64::new(0),
                // No file opened yet: no walk reads data.
                listings_unread: AtomicU64::new(DATA_WALK_LISTINGS),
                data_dirs: AtomicU64::new(0),
                data_asked: Mutex::new(lru(QUEUE)),
                closed: Default::default(),
            }),
            started: OnceLock::new(),
        }
    }

    /// Queues `jobs` (in walk order) ahead of everything queued before.
    fn push(&self, jobs: Vec<Job>) {
        self.start();
        let dirs = jobs.iter().filter(|j| matches!(j, Job::Dir { .. })).count();
        self.queue.queued.fetch_add(dirs as u64, Ordering::Relaxed);
        let mut q = self.queue.jobs.lock();
        for j in jobs.into_iter().rev() {
            q.walk.push_front(j);
        }
        q.walk.truncate(QUEUE);
        drop(q);
        self.queue.ready.notify_all();
    }

    /// Queues the stat of a directory's lower entries ahead of its lookups, dropping the
    /// oldest such job when [`STAT_QUEUE`] wait already.
    fn push_stats(&self, lowers: LowerDirs) {
        self.start();
        let mut q = self.queue.jobs.lock();
        if q.stats.len() >= STAT_QUEUE {
            q.stats.pop_front();
        }
        q.stats.push_back(lowers);
        drop(q);
        self.queue.ready.notify_one();
    }

    /// Starts the worker threads, once. The server calls this at FUSE's INIT, before the
    /// first request, so that the first lookup of a fresh mount does not wait for two thread
    /// spawns; `push` calls it too (unit tests build no session).
    pub(crate) fn start(&self) {
        self.started.get_or_init(|| {
            for _ in 0..THREADS {
                let q = self.queue.clone();
                let spawned = std::thread::Builder::new().name("read-ahead".into()).spawn(move || {
                    crate::sys::free_thread();
                    worker(&q)
                });
                if let Err(e) = spawned {
                    log::warn!("read-ahead thread: {e}");
                }
            }
        });
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        let mut jobs = self.queue.jobs.lock();
        jobs.walk.clear();
        jobs.stats.clear();
        self.queue.closed.store(true, Ordering::Relaxed);
        drop(jobs);
        self.queue.ready.notify_all();
    }
}

fn worker(q: &Queue) {
    loop {
        let job = {
            let mut jobs = q.jobs.lock();
            loop {
                if q.closed.load(Ordering::Relaxed) {
                    return;
                }
                if let Some(j) = jobs.walk.pop_front() {
                    jobs.busy += 1;
                    break j;
                }
                if let Some(lowers) = jobs.stats.pop_front() {
                    if lowers.held_elsewhere() {
                        jobs.busy += 1;
                        break Job::Stats(lowers);
                    }
                    continue; // the directory was forgotten meanwhile
                }
                q.ready.wait(&mut jobs);
            }
        };
        match job {
            Job::Stats(lowers) => {
                stat_ahead(&lowers);
                q.statted.fetch_add(1, Ordering::Relaxed);
            }
            Job::Dir { id, upper, lowers } => {
                // The layers' listings are kept for the data of the first files only where the
                // walk reads files.
                let data = q.listings_unread.load(Ordering::Relaxed) < DATA_WALK_LISTINGS
                    && q.data_dirs.fetch_add(1, Ordering::Relaxed) < DATA_DIRS_PER_OPEN;
                let mut listed = Vec::new();
                if let Some(u) = upper {
                    if let Ok(raw) = stat_all(&u, &mut { usize::MAX }) {
                        if data {
                            listed.push((u, raw));
                        }
                    }
                }
                let all = read_ahead(&lowers, data.then_some(&mut listed));
                if data {
                    let (n, last) = first_files_ahead(&listed);
                    q.data_files.fetch_add(n as u64, Ordering::Relaxed);
                    // Where a layer's directory was left out, its first files were not asked
                    // for: the opens ask for them all again.
                    if n > 0 && all {
                        q.data_asked.lock().put(id, last);
                    }
                }
                q.done.fetch_add(1, Ordering::Relaxed);
            }
            Job::Data(files) => {
                for loc in &files {
                    if let Ok(path) = loc.open(libc::O_PATH) {
                        ask_data(path);
                    }
                }
                q.data_files.fetch_add(files.len() as u64, Ordering::Relaxed);
            }
        }
        q.jobs.lock().busy -= 1;
    }
}

/// Asks the kernel for the start of the data of the file `path` (an `O_PATH` descriptor)
/// stands for (POSIX_FADV_WILLNEED: the reads are started, not waited for), up to
/// [`DATA_BYTES`]; returns its size. Only a regular file with data is opened for reading: the
/// name may stand for something else by now (an upper file replaced through the mount), and
/// opening a device or a FIFO can act on it.
fn ask_data(path: OwnedFd) -> Option<u64> {
    let st = sys::fstat(path.as_fd()).ok().filter(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG)?;
    let size = st.st_size as u64;
    if size == 0 {
        return None;
    }
    let fd = sys::reopen(path.as_fd(), libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY).ok()?;
    let _ = sys::will_need(fd.as_fd(), 0, size.min(DATA_BYTES));
    Some(size)
}

/// Reads directory `dir` and stats its entries (`budget` at most, taken from it), and looks
/// for the opaque marker in its subdirectories: its blocks, their inodes and the
/// subdirectories' blocks come into the kernel's caches, as a listing of `dir` will want them
/// (its lookups open each subdirectory and check it for the marker). The entries are stat'ed
/// in inode order, which is mostly the order of the inodes on disk.
fn stat_all(dir: &OwnedFd, budget: &mut usize) -> std::io::Result<Vec<sys::DirEntry>> {
    let rfd = sys::reopen_dir(dir.as_fd(), true)?;
    let raw = sys::read_dir_all(rfd.as_fd())?;
    drop(rfd);
    let marker = CString::new(crate::name::OPAQUE_MARKER).unwrap_or_default();
    let mut order: Vec<&sys::DirEntry> = raw.iter().collect();
    order.sort_unstable_by_key(|e| e.ino);
    let n = order.len().min(*budget);
    *budget -= n;
    for e in order.into_iter().take(n) {
        let Ok(c) = CString::new(e.name.as_slice()) else { continue };
        let Ok(st) = sys::fstatat(dir.as_fd(), &c) else { continue };
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            if let Ok(sub) = crate::layer::open_dir_at(dir.as_fd(), &c) {
                let _ = sys::exists_at(sub.as_fd(), &marker);
            }
        }
    }
    Ok(raw)
}

/// Reads a directory's lower directories into their indexes and stats their entries, adding
/// their listings to `listed` if given; false if one was left out (read already: a lookup or
/// the walk itself got there first; or unreadable).
fn read_ahead(dirs: &LowerDirs, mut listed: Option<&mut Vec<(Arc<OwnedFd>, Vec<sys::DirEntry>)>>) -> bool {
    let mut all = true;
    for ld in dirs.iter() {
        match ld.index.get().is_none().then(|| read_lower(ld, dirs.len(), &mut { usize::MAX })) {
            Some(Some(l)) => {
                if let Some(v) = listed.as_deref_mut() {
                    v.push(l);
                }
            }
            _ => all = false,
        }
    }
    all
}

/// Asks for the data of the first regular files of a directory's merged listing (in cookie
/// order, as the listing will come), from the listings of its layers' directories, topmost
/// first: [`DATA_FILES`] files and [`DIR_DATA_BYTES`] at most. Returns how many files were
/// asked for and the cookie of the last one considered (a name the merged listing hides may
/// be among them: its data is read for nothing).
fn first_files_ahead(listed: &[(Arc<OwnedFd>, Vec<sys::DirEntry>)]) -> (usize, u64) {
    let mut files: Vec<(u64, usize, &[u8])> = Vec::new();
    for (layer, (_, raw)) in listed.iter().enumerate() {
        files.extend(
            raw.iter()
                .filter(|e| e.dtype == libc::DT_REG)
                .map(|e| (super::dir_cookie(&e.name), layer, e.name.as_slice())),
        );
    }
    // The topmost layer's file of a name (two names with one cookie: both count).
    files.sort_unstable();
    files.dedup_by(|b, a| a.0 == b.0 && a.2 == b.2);
    let (mut n, mut bytes, mut last) = (0, 0, 0);
    for &(cookie, layer, name) in &files {
        if n == DATA_FILES || bytes >= DIR_DATA_BYTES {
            break;
        }
        last = cookie;
        let Ok(c) = CString::new(name) else { continue };
        let path = sys::openat(listed[layer].0.as_fd(), &c, libc::O_PATH | libc::O_NOFOLLOW, 0);
        if let Some(size) = path.ok().and_then(ask_data) {
            n += 1;
            bytes += size.min(DATA_BYTES);
        }
    }
    (n, last)
}

/// Runs `f` (reading a lower directory and stating its entries) at `SCHED_IDLE` where the
/// thread may leave it again ([`crate::uring::placement_allowed`]), then at normal priority
/// again.
///
/// The reading ahead works beside the program it reads for, and at normal priority it took
/// that program's CPU (and the server thread's answering it, which shares that CPU) whenever
/// it landed there: with this, a cold `find` of 100k files over 5 layers took 0.83-0.89 of the
/// time, `stat` of every file 0.83-0.96, the cold listing of 20k entries 0.89-0.92 (two paired
/// runs, `benches/HISTORY.md`). Only this part runs so: a `SCHED_IDLE` thread gets almost
/// no CPU while normal tasks keep every CPU busy, and nothing a request can wait for may be
/// held meanwhile. Here the thread holds no lock of the server's, and in the kernel only what
/// reading a directory that nobody writes takes (a lower layer is read-only to the server).
/// The descriptor is opened before and the index built after, at normal priority; an upper
/// directory (where requests create and remove names) and file data are read at normal
/// priority too.
fn beside_the_walk<T>(f: impl FnOnce() -> T) -> T {
    if crate::uring::placement_allowed() { sys::with_sched_idle(true, f) } else { f() }
}

/// [`stat_all`] of one of `nlowers` lower directories, whose listing becomes its index if it
/// has none yet and should. Errors are left for the lookups that will meet them.
fn read_lower(
    ld: &super::LowerDir,
    nlowers: usize,
    budget: &mut usize,
) -> Option<(Arc<OwnedFd>, Vec<sys::DirEntry>)> {
    let fd = ld.fd.get().ok()?;
    let raw = beside_the_walk(|| stat_all(&fd, budget)).ok()?;
    if nlowers >= INDEX_MIN_LOWERS {
        ld.index.get_or_init(|| DirIndex::from_raw(&raw));
    }
    Some((fd, raw))
}

/// Stats the entries of a directory's lower directories ahead of its lookups, the biggest
/// first as far as their indexes tell (where the lookups will most likely go), each lower
/// directory's listing read whole (and kept as its index if it has none yet and should) but
/// [`STAT_AHEAD_MAX`] entries stat'ed at most in all.
fn stat_ahead(dirs: &LowerDirs) {
    let mut order: Vec<(usize, &super::LowerDir)> =
        dirs.iter().map(|ld| (ld.index.get().map_or(0, DirIndex::len), ld)).collect();
    order.sort_by_key(|&(n, _)| std::cmp::Reverse(n));
    let mut budget = STAT_AHEAD_MAX;
    for (_, ld) in order {
        if budget == 0 && (ld.index.get().is_some() || dirs.len() < INDEX_MIN_LOWERS) {
            continue;
        }
        let _ = read_lower(ld, dirs.len(), &mut budget);
    }
}

impl OverlayFs {
    /// Directories queued for reading ahead so far, and read ahead so far (for tests and
    /// statistics).
    pub fn read_ahead_counts(&self) -> (u64, u64) {
        let q = &self.ahead.queue;
        (q.queued.load(Ordering::Relaxed), q.done.load(Ordering::Relaxed))
    }

    /// A READDIRPLUS of directory `dir` from `offset` returned the directories `subdirs` and
    /// the regular files `files` (node id, size), each now held by the kernel. In a walked
    /// directory, reads the subdirectories ahead; otherwise remembers them, and when this is
    /// the first listing of a subdirectory of a listed directory, reads that directory's
    /// other subdirectories ahead. The files are remembered for [`OverlayFs::opened`]; a
    /// listing from offset 0 starts them afresh.
    pub fn listed(&self, dir: u64, offset: u64, subdirs: Vec<u64>, files: Vec<ListedFile>) {
        if !self.opts.read_ahead {
            return;
        }
        // The table's lock is let go before a node's (the lock order: state, then table).
        let parent = self.full_node(dir).and_then(|n| n.state.lock().parent.as_ref().map(|p| p.ino));
        let mut ahead = Vec::new();
        {
            let mut k = self.ahead.state.lock();
            if offset == 0 && !files.is_empty() {
                self.ahead.queue.listings_unread.fetch_add(1, Ordering::Relaxed);
            }
            k.remember_files(dir, offset, files);
            if let Some(p) = parent.filter(|_| offset == 0) {
                if let Some(siblings) = k.listed.pop(&p) {
                    // A listed directory's subdirectory is listed: a walk.
                    ahead.extend(siblings.into_iter().filter(|&id| id != dir));
                    k.walked.put(p, ());
                }
            }
            if parent.is_some_and(|p| k.walked.contains(&p)) {
                // Part of a walk: this directory's subdirectories come next.
                k.walked.put(dir, ());
                ahead.splice(0..0, subdirs);
            } else if !subdirs.is_empty() {
                // No more than can be queued.
                let v = k.listed.get_or_insert_mut(dir, Vec::new);
                v.extend(subdirs.into_iter().take(QUEUE.saturating_sub(v.len())));
            }
        }
        if ahead.is_empty() {
            return;
        }
        let jobs: Vec<Job> = ahead
            .iter()
            .filter_map(|&id| {
                let n = self.full_node(id)?; // None: forgotten meanwhile
                let s = n.state.lock();
                Some(Job::Dir {
                    id,
                    upper: s.upper.as_ref().and_then(|u| u.dir_fd()?.get().ok()),
                    lowers: s.lower_dirs.clone(),
                })
            })
            .collect();
        self.ahead.push(jobs);
    }

    /// File `ino` was opened for reading. When its directory's files were listed, asks for
    /// the data of the files listed after it (see the module's notes).
    pub fn opened(&self, ino: u64) {
        if !self.opts.read_ahead {
            return;
        }
        let Some(dir) = self.full_node(ino).and_then(|n| n.state.lock().parent.as_ref().map(|p| p.ino))
        else {
            return;
        };
        let range = {
            let mut k = self.ahead.state.lock();
            let Some(f) = k.files.get_mut(&dir) else { return };
            // Most often the next one; otherwise anywhere.
            let pos = f.list[f.cursor.min(f.list.len())..]
                .iter()
                .position(|x| x.id == ino)
                .map(|p| p + f.cursor)
                .or_else(|| f.list.iter().position(|x| x.id == ino));
            let Some(pos) = pos else { return };
            // (Written only when not 0 already: every open of a walk passes here, and the
            // read-ahead workers count on these too.)
            for c in [&self.ahead.queue.listings_unread, &self.ahead.queue.data_dirs] {
                if c.load(Ordering::Relaxed) != 0 {
                    c.store(0, Ordering::Relaxed);
                }
            }
            f.cursor = pos + 1;
            if f.cursor >= f.list.len() {
                k.files.pop(&dir); // the last file: the walk is done here
                return;
            }
            if f.asked >= f.cursor + f.window / 2 {
                return;
            }
            // What was asked for ahead of the listing counts as asked.
            if let Some(last) = self.ahead.queue.data_asked.lock().pop(&dir) {
                f.asked = f.asked.max(f.list.partition_point(|x| x.cookie <= last));
                if f.asked >= f.cursor + f.window / 2 {
                    return;
                }
            }
            let from = f.asked.max(f.cursor);
            let to = (f.cursor + f.window).min(f.list.len());
            f.asked = to;
            f.window = (f.window * 2).min(DATA_FILES);
            f.list[from..to].to_vec()
        };
        // Located with the read-ahead's lock let go (the lock order: state, then table).
        let files: Vec<Loc> = range.into_iter().filter_map(|x| self.data_loc(x.id)).collect();
        if !files.is_empty() {
            self.ahead.push(vec![Job::Data(files)]);
        }
    }

    /// A lookup in a directory with lower directories `lowers`: the first one there queues
    /// the stat of their entries (see the module's notes).
    pub(crate) fn looked_up(&self, lowers: &LowerDirs) {
        let Some(inner) = lowers.0.as_ref() else { return };
        if !self.opts.read_ahead || inner.stats_queued.load(Ordering::Relaxed) {
            return;
        }
        if !inner.stats_queued.swap(true, Ordering::Relaxed) {
            self.ahead.push_stats(lowers.clone());
        }
    }

    /// Directories whose entries were stat'ed ahead of lookups so far (for tests and
    /// statistics).
    pub fn stat_ahead_count(&self) -> u64 {
        self.ahead.queue.statted.load(Ordering::Relaxed)
    }

    /// Whether no read-ahead job waits or runs (for tests: what the calls so far queued is
    /// done).
    pub fn read_ahead_idle(&self) -> bool {
        let jobs = self.ahead.queue.jobs.lock();
        jobs.walk.is_empty() && jobs.stats.is_empty() && jobs.busy == 0
    }

    /// Files whose data was asked for ahead so far (for tests and statistics).
    pub fn data_ahead_count(&self) -> u64 {
        self.ahead.queue.data_files.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::LowerDir;
    use crate::layer::DirMarks;

    #[test]
    fn read_ahead_fills_the_indexes_a_lookup_uses() {
        let root = std::env::temp_dir().join(format!("layerfs-ahead-{}", std::process::id()));
        let open = |d: &std::path::Path| {
            let c = CString::new(d.as_os_str().as_encoded_bytes()).unwrap();
            Arc::new(sys::open_trusted(&c, libc::O_PATH | libc::O_DIRECTORY, 0).unwrap())
        };
        let mut lds = Vec::new();
        for (i, l) in ["l0", "l1"].iter().enumerate() {
            let d = root.join(l);
            std::fs::create_dir_all(d.join("sub")).unwrap();
            std::fs::write(d.join(format!("f{i}")), b"x").unwrap();
            lds.push(LowerDir::new(i + 1, super::super::dirfd::DirFd::fixed(open(&d)), DirMarks::default()));
        }
        let one = LowerDirs::from(vec![LowerDir::new(
            1,
            super::super::dirfd::DirFd::fixed(open(&root.join("l0"))),
            DirMarks::default(),
        )]);
        let two = LowerDirs::from(lds);
        read_ahead(&two, None);
        read_ahead(&one, None);
        for (i, ld) in two.iter().enumerate() {
            let ix = ld.index.get().expect("two lowers merge: each gets its index");
            assert_eq!(ix.entry(format!("f{i}").as_bytes()).map(|e| e.0), Some(libc::DT_REG));
            assert_eq!(ix.entry(b"sub").map(|e| e.0), Some(libc::DT_DIR));
            assert!(ix.entry(b"f9").is_none());
        }
        assert!(one[0].index.get().is_none(), "a single lower gets no index (as for lookups)");
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A thread's scheduling policy (`/proc/self/task/TID/stat`, field 41).
    fn policy_of(tid: libc::pid_t) -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
        stat[stat.rfind(')')? + 2..].split(' ').nth(41 - 3)?.parse().ok()
    }

    /// Where the thread may leave `SCHED_IDLE` again (root), a lower directory is read and
    /// stat'ed ahead at `SCHED_IDLE`, and the thread is at normal priority again after.
    #[test]
    fn lower_directories_are_read_ahead_at_sched_idle_and_the_thread_is_normal_after() {
        if !crate::uring::placement_allowed() {
            // Root can always leave SCHED_IDLE again: a failing probe must not skip the test.
            // SAFETY: plain system call.
            assert_ne!(unsafe { libc::geteuid() }, 0, "as root, the SCHED_IDLE probe failed");
            return;
        }
        let root = std::env::temp_dir().join(format!("layerfs-ahead-idle-{}", std::process::id()));
        let d = root.join("l0");
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..5000 {
            std::fs::File::create(d.join(format!("f{i:05}"))).unwrap();
        }
        let c = CString::new(d.as_os_str().as_encoded_bytes()).unwrap();
        let fd = Arc::new(sys::open_trusted(&c, libc::O_PATH | libc::O_DIRECTORY, 0).unwrap());
        let dirs = LowerDirs::from(vec![LowerDir::new(
            1,
            super::super::dirfd::DirFd::fixed(fd),
            DirMarks::default(),
        )]);
        let seen = std::sync::atomic::AtomicBool::new(false);
        let (tx, rx) = std::sync::mpsc::channel();
        let after = std::thread::scope(|sc| {
            let worker = sc.spawn(|| {
                // SAFETY: plain system calls about the calling thread.
                tx.send(unsafe { libc::gettid() }).unwrap();
                for _ in 0..500 {
                    if seen.load(Ordering::Relaxed) {
                        break;
                    }
                    stat_ahead(&dirs);
                }
                seen.store(true, Ordering::Relaxed);
                unsafe { libc::sched_getscheduler(0) }
            });
            let tid = rx.recv().unwrap();
            let mut idle = false;
            while !seen.load(Ordering::Relaxed) {
                if policy_of(tid) == Some(libc::SCHED_IDLE) {
                    idle = true;
                    seen.store(true, Ordering::Relaxed);
                }
            }
            assert!(idle, "the reading thread was never at SCHED_IDLE in 500 reads of the directory");
            worker.join().unwrap()
        });
        assert_eq!(after, libc::SCHED_OTHER, "the thread is at normal priority after reading");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
