//! Reading directories ahead of a tree walk.
//!
//! A walk (`find`, `du`, `tar`, `ls -R`) lists a directory, then enters its subdirectories one
//! by one, and each listing through FUSE waits for the server to read that directory in every
//! layer and to stat every entry: one cold disk read after another, while the disk could serve
//! several at once. Once a walk shows (the first subdirectory of a listed directory is listed
//! too), the other subdirectories of that directory are read ahead on two threads: each lower
//! directory's listing goes into its index (which the lookups then use) and each entry is
//! stat'ed, so the kernel has its inode when the walk's own lookup comes. A directory that is
//! only listed (`ls -l`) starts no read-ahead. Nothing read ahead is kept beyond the index a
//! lookup would have built; the rest is the kernel's own caches.

use std::ffi::CString;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use super::lite::Slot;
use super::{DirIndex, INDEX_MIN_LOWERS, LowerDirs, OverlayFs};
use crate::sys;

/// Threads reading ahead (the disk serves several reads at once; the CPUs are few).
const THREADS: usize = 2;
/// Directories waiting to be read ahead; more are not read ahead.
const QUEUE: usize = 256;
/// Listed directories whose subdirectories are remembered until a walk enters one.
const LISTED: usize = 64;

/// What the read-ahead knows: listed directories' subdirectories, and the queue to the threads
/// (started at first use: a mount forks after the filesystem is built).
pub(crate) struct ReadAhead {
    listed: Mutex<lru::LruCache<u64, Vec<u64>>>,
    queue: OnceLock<SyncSender<LowerDirs>>,
    /// Directories read ahead so far.
    done: Arc<AtomicU64>,
}

impl ReadAhead {
    pub(crate) fn new() -> ReadAhead {
        ReadAhead {
            listed: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(LISTED).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
            queue: OnceLock::new(),
            done: Arc::default(),
        }
    }

    fn queue(&self) -> &SyncSender<LowerDirs> {
        self.queue.get_or_init(|| {
            let (tx, rx) = sync_channel::<LowerDirs>(QUEUE);
            let rx = Arc::new(Mutex::new(rx));
            for _ in 0..THREADS {
                let (rx, done) = (rx.clone(), self.done.clone());
                let spawned =
                    std::thread::Builder::new().name("read-ahead".into()).spawn(move || worker(&rx, &done));
                if let Err(e) = spawned {
                    log::warn!("read-ahead thread: {e}");
                }
            }
            tx
        })
    }
}

fn worker(rx: &Mutex<Receiver<LowerDirs>>, done: &AtomicU64) {
    loop {
        let job = rx.lock().recv();
        match job {
            Ok(dirs) => {
                read_ahead(&dirs);
                done.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => return, // the filesystem is gone
        }
    }
}

/// Reads a directory's lower directories into their indexes and stats their entries. Errors
/// are left for the lookups that will meet them.
fn read_ahead(dirs: &LowerDirs) {
    for ld in dirs.iter() {
        if ld.index.get().is_some() {
            continue; // read already: a lookup or the walk itself got there first
        }
        let Ok(rfd) = sys::reopen(ld.fd.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY) else { continue };
        let Ok(raw) = sys::read_dir_all(rfd.as_fd()) else { continue };
        drop(rfd);
        if dirs.len() >= INDEX_MIN_LOWERS {
            ld.index.get_or_init(|| DirIndex::from_raw(&raw));
        }
        for e in raw {
            if let Ok(c) = CString::new(e.name) {
                let _ = sys::fstatat(ld.fd.as_fd(), &c);
            }
        }
    }
}

impl OverlayFs {
    /// Directories read ahead so far (for tests and statistics).
    pub fn read_ahead_count(&self) -> u64 {
        self.ahead.done.load(Ordering::Relaxed)
    }

    /// A READDIRPLUS of directory `dir` from `offset` returned the directories `subdirs`
    /// (each now held by the kernel). Remembers them, and when this is the first listing of a
    /// subdirectory of a listed directory, reads that directory's other subdirectories ahead.
    pub fn listed(&self, dir: u64, offset: u64, subdirs: Vec<u64>) {
        if !self.opts.read_ahead {
            return;
        }
        let parent = match self.nodes.read().get(&dir) {
            Some(Slot::Full(n)) => n.state.lock().parent.as_ref().map(|p| p.ino),
            _ => None,
        };
        let siblings = {
            let mut listed = self.ahead.listed.lock();
            if !subdirs.is_empty() {
                listed.get_or_insert_mut(dir, Vec::new).extend(subdirs);
            }
            match parent {
                Some(p) if offset == 0 => listed.pop(&p),
                _ => None,
            }
        };
        let Some(siblings) = siblings else { return };
        let queue = self.ahead.queue();
        for id in siblings.into_iter().filter(|&id| id != dir) {
            let dirs = match self.nodes.read().get(&id) {
                Some(Slot::Full(n)) => n.state.lock().lower_dirs.clone(),
                _ => continue, // forgotten meanwhile
            };
            if dirs.is_empty() {
                continue;
            }
            if queue.try_send(dirs).is_err() {
                return; // full: the walk is far behind already
            }
        }
    }
}
