//! The operations as the server answers them, over [`OverlayFs`]: each logs the request at
//! debug level (`-d`), calls the façade, and returns an [`Answer`] that the transport encodes
//! ([`crate::devloop`] for `/dev/fuse`, [`crate::uring`] for io_uring). fuser's `Filesystem`
//! is used only to mount and answer INIT. No union logic lives here.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{Condvar, Mutex};
use std::time::Duration;

use fuser::{
    BackingId, FileAttr, FileType, Filesystem, FopenFlags, INodeNo, InitFlags, KernelConfig, Request,
};

use crate::error::Error;
use crate::fs::{Attr, Caller, ListedFile, Opened, OverlayFs, SetAttr};
use crate::trace::{Args, Hooks, Op, Outcome};

/// The server side of one mount: what every transport answers requests with.
pub struct Fuse {
    pub fs: Arc<OverlayFs>,
    pub ttl: Duration,
    pub writeback: bool,
    /// Try FUSE passthrough (kernel 6.9+, needs CAP_SYS_ADMIN); switched off for good at the
    /// first refusal.
    pub passthrough: AtomicBool,
    /// `passthrough=all`: lower files opened read-only in a writable mount are given to
    /// passthrough too ([`Aliases`]).
    pub lower_passthrough: bool,
    aliases: Mutex<Aliases>,
    /// Whether `aliases` holds any: requests then translate their node id.
    any_alias: AtomicBool,
    /// FUSE_HANDLE_KILLPRIV_V2 is on: the server drops setuid/setgid/capabilities on writes
    /// and truncation by unprivileged callers (and the kernel, which then marks an inode
    /// S_NOSEC once it has found nothing to drop, asks for `security.capability` at an
    /// inode's first write only, not before every write).
    killpriv: AtomicBool,
    /// FUSE_SETXATTR_EXT is on: SETXATTR carries flags, among them the kernel's word that an
    /// access ACL is set by a caller who may not keep the setgid bit.
    pub setxattr_ext: AtomicBool,
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
    /// The session's `/dev/fuse` (a duplicate), for passthrough backing files and the io_uring
    /// queues; set once the session exists.
    pub dev: OnceLock<Arc<OwnedFd>>,
    /// Serve requests through FUSE-over-io_uring queues when the kernel offers it (`uring=`).
    pub uring: bool,
    /// Set at INIT when the kernel took FUSE_OVER_IO_URING: the queues are to be started.
    pub uring_agreed: AtomicBool,
    /// Who may use the mount (checked by `uring::answer_in` for both transports).
    pub access: crate::uring::Access,
}

/// A backing file registered with the kernel for passthrough (FUSE_DEV_IOC_BACKING_OPEN),
/// closed again when the last open handle that uses it is released.
pub struct BackingFile {
    pub id: u32,
    dev: Arc<OwnedFd>,
}

impl Drop for BackingFile {
    fn drop(&mut self) {
        if let Err(e) = crate::sys::fuse_backing_close(&self.dev, self.id) {
            log::debug!("closing backing file {}: {e}", self.id);
        }
    }
}

/// Who sent a request.
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// What an operation answers, for whichever transport carries the reply.
pub enum Answer<'a> {
    Err(i32),
    Ok,
    /// The attributes (`attr.ino` is the inode number shown), the node id the kernel refers
    /// to the object by, and whether the kernel may cache the attributes (not for an alias,
    /// whose node has two kernel inodes: [`Fuse::resolve`]).
    Entry(FileAttr, u64, bool),
    Attr(FileAttr),
    Data(&'a [u8]),
    XattrSize(u32),
    Open {
        fh: u64,
        flags: FopenFlags,
        backing: Option<u32>,
    },
    Create {
        /// As in `Entry`, with the node id (a new file: never an alias).
        attr: FileAttr,
        id: u64,
        fh: u64,
        flags: FopenFlags,
        backing: Option<u32>,
    },
    Written(u32),
    Statfs(libc::statvfs),
    Offset(i64),
    /// An ioctl's result and the data it returns (`struct fuse_ioctl_out`, then the data).
    Ioctl(i32, Vec<u8>),
}

/// Where READDIR entries go; `add` returns true once the reply is full (the entry not added).
pub trait DirOut {
    fn add(&mut self, ino: u64, off: u64, kind: FileType, name: &OsStr) -> bool;
}

/// Where READDIRPLUS entries go; `add` returns true once the reply is full.
pub trait DirPlusOut {
    fn add(&mut self, off: u64, name: &OsStr, ttl: &Duration, attr: &FileAttr, id: u64) -> bool;
}

/// The attributes of a readdirplus entry sent without any (node id 0): only the inode number
/// and type reach the listing.
fn bare_attr(ino: u64, kind: FileType) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: std::time::UNIX_EPOCH,
        mtime: std::time::UNIX_EPOCH,
        ctime: std::time::UNIX_EPOCH,
        crtime: std::time::UNIX_EPOCH,
        kind,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

/// The answer to an operation that returns nothing.
fn done(op: &str, r: crate::error::Result<()>) -> Answer<'static> {
    r.map_or_else(|e| fail(op, e), |()| Answer::Ok)
}

/// Logs a failed operation and turns it into its answer.
fn fail(op: &str, e: Error) -> Answer<'static> {
    if e.is_expected() {
        log::debug!("{op} -> {e}");
    } else {
        log::warn!("{op} -> {e}");
    }
    Answer::Err(e.errno)
}

/// How the open handles of each inode are served, by the kernel's node id. The kernel requires
/// every open of an inode to agree: all passthrough with one backing file, or none passthrough
/// (mixing fails the open). So an inode's first open decides until its last handle closes:
/// passthrough when the real file cannot change under it (an upper file, or any file of a
/// read-only mount), otherwise served here (a lower file may be copied up while open, which
/// would change the backing file), unless `passthrough=all` ([`Aliases`]). A small file opened
/// read-only first is served here too, its data stored into the page cache at open
/// ([`STORE_MAX`]).
#[derive(Default)]
struct Backing {
    by_ino: HashMap<u64, InoMode>,
    by_fh: HashMap<u64, u64>,
    /// Truncations under way per inode (an O_TRUNC open, a SETATTR of the size): no store of
    /// the inode's data starts meanwhile, and none starts while a store is under way.
    truncating: HashMap<u64, usize>,
    /// Nodes opened read-write through passthrough in this mount (the last
    /// [`RW_PASSTHROUGH_KEPT`]). A shared mapping made through such a handle is the backing
    /// file's, and outlives the handle: its writes reach the upper file behind FUSE's page
    /// cache, so no later open stores the file into that cache (whose stale pages a cached
    /// mapping would write back over them).
    rw_passthrough: RwPassthrough,
}

/// How many nodes [`Backing::rw_passthrough`] remembers: a mapping that outlives this many
/// later read-write opens of other files could meet a store again (a bound on the memory of
/// a mount that creates millions of files).
const RW_PASSTHROUGH_KEPT: usize = 16384;

/// [`Backing::rw_passthrough`]: grown as used (a bounded `LruCache` would take its whole
/// table at once).
struct RwPassthrough(lru::LruCache<u64, ()>);

impl Default for RwPassthrough {
    fn default() -> Self {
        RwPassthrough(lru::LruCache::unbounded())
    }
}

impl RwPassthrough {
    fn add(&mut self, node: u64) {
        self.0.put(node, ());
        if self.0.len() > RW_PASSTHROUGH_KEPT {
            self.0.pop_lru();
        }
    }
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
    /// The backing file, the handles using it, and whether it is a lower file
    /// (`passthrough=all`): then only read-only opens of a node not yet copied up may share it.
    Passthrough(Arc<BackingFile>, usize, bool),
    /// The inode's first open, read-only, of a small file whose data is being put into the
    /// kernel's page cache before the open is answered. Other opens and truncations of the
    /// inode wait for it: a write landing between the server's read of the data and the store
    /// would be overwritten in the cache by the older data.
    Storing(usize),
}

/// How an open is answered.
enum OpenMode {
    Cached,
    Passthrough(Arc<BackingFile>),
    /// Cached, with the whole file (this many bytes when the open sized it) stored into the
    /// kernel's page cache first.
    Store(u64),
    /// The inode is passed through to a lower file, and this open needs the upper one: the
    /// node gets an alias and the open fails with ESTALE, which the kernel retries by path
    /// ([`Aliases`]).
    Conflict,
}

/// Second kernel inodes of one node, for `passthrough=all`.
///
/// There a lower file opened read-only is passed through to the lower file itself, and the
/// kernel keeps an inode's backing file until its last handle closes. A copy-up needs the
/// upper file as backing, which the kernel refuses for that inode meanwhile. So an open that
/// needs the upper file of an inode passed through to the lower one gives the node a fresh
/// node id (an alias of it, the inode number shown stays the node's) and fails with ESTALE:
/// the kernel retries an open by path once with every name revalidated, the lookup now
/// answers the alias, and the kernel, seeing a different node id, drops its entry and opens
/// a new inode, which passes through to the upper file. Handles opened before keep reading
/// the lower file (as on kernel overlayfs before Linux 4.19); an open that is not by path
/// (`/proc/self/fd/N`) gets the ESTALE.
///
/// Every request names the node by the kernel's id: an alias is translated to its node
/// ([`Fuse::node_of`]), and the node's lookup count covers the alias's references too.
#[derive(Default)]
struct Aliases {
    /// Alias id -> (node id, kernel references to the alias).
    by_id: HashMap<u64, (u64, u64)>,
    /// Node id -> the alias that lookups of the node answer with.
    current: HashMap<u64, u64>,
    next: u64,
}

/// Where alias ids start (node ids elsewhere are inode numbers of the layers or hashes; an
/// alias id is also checked against the live nodes when made).
const ALIAS_BASE: u64 = 0xa11a_5000_0000_0000;

/// Files up to this size opened read-only while no other handle is open are stored into the
/// kernel's page cache (FUSE_NOTIFY_STORE) before the OPEN is answered, so the reads that
/// follow are page-cache hits: no READ, and, with no READ or passthrough read to invalidate
/// the cached atime, no GETATTR for the `fstat` after them either (`tar`, `cp`, `cat`).
pub const STORE_MAX: u64 = 64 << 10;

impl Fuse {
    pub fn new(fs: Arc<OverlayFs>, ttl: Duration, writeback: bool, passthrough: bool) -> Fuse {
        let notifier: Arc<OnceLock<fuser::Notifier>> = Arc::new(OnceLock::new());
        // A copied-up object (and its parent directory, which got an entry) keeps the lower's
        // attributes in the kernel (ctime, a directory's size, a hard-linked file's link
        // count) for the whole timeout: they are to be asked for again (offset -1). A moved
        // directory's listing, cached by the kernel, names its old parent for `..`: its pages
        // go (offset 0).
        let inval = |offset: i64, what: &'static str| -> Box<dyn Fn(u64) + Send + Sync> {
            let n = notifier.clone();
            Box::new(move |id| {
                if let Some(n) = n.get() {
                    if let Err(e) = n.inval_inode(INodeNo(id), offset, 0) {
                        log::debug!("invalidating the {what} of {id:#x}: {e}");
                    }
                }
            })
        };
        let _ = fs.attrs_stale.set(inval(-1, "attributes"));
        let _ = fs.listing_stale.set(inval(0, "listing"));
        Fuse {
            fs,
            ttl,
            writeback,
            passthrough: AtomicBool::new(passthrough),
            lower_passthrough: false,
            aliases: Mutex::new(Aliases::default()),
            any_alias: AtomicBool::new(false),
            killpriv: AtomicBool::new(false),
            setxattr_ext: AtomicBool::new(false),
            backing: Mutex::new(Backing::default()),
            stored: Condvar::new(),
            notifier,
            exit_on_destroy: false,
            hooks: None,
            dev: OnceLock::new(),
            uring: false,
            uring_agreed: AtomicBool::new(false),
            access: crate::uring::Access::All,
        }
    }

    /// Runs `f` through the hooks when there are any; without, this is one `Option` check.
    /// `name`: the entry an operation works on; `len`: bytes written.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn hook<T: Outcome>(
        &self,
        ctx: &Ctx,
        op: Op,
        ino: u64,
        name: Option<&OsStr>,
        len: u64,
        args: impl FnOnce(&mut Args),
        f: impl FnOnce() -> crate::error::Result<T>,
    ) -> crate::error::Result<T> {
        match &self.hooks {
            None => f(),
            Some(h) => h.run(ctx.pid, op, ino, name, len, args, f),
        }
    }

    /// Registers `fd` as a passthrough backing file with the kernel.
    fn register(&self, fd: &OwnedFd) -> io::Result<BackingFile> {
        let dev = self.dev.get().ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
        let id = BackingId::create_raw(dev.as_ref(), fd)?;
        Ok(BackingFile { id, dev: dev.clone() })
    }

    /// Picks the mode of a new open handle of the kernel's inode `ino`, of node `node` (they
    /// differ for an alias). `read_only`: opened for reading only. `may_store`: a read-only
    /// open that could be answered by storing the file into the kernel's page cache
    /// ([`STORE_MAX`]). `created`: the mode of a file this request created, which can carry no
    /// capability xattr yet (and which the open writes, whatever `flags` says).
    fn open_mode(
        &self,
        ino: u64,
        node: u64,
        fh: u64,
        flags: i32,
        may_store: bool,
        created: Option<u32>,
    ) -> OpenMode {
        let read_only = flags & libc::O_ACCMODE == libc::O_RDONLY && created.is_none();
        // A read-write descriptor can map the file shared and writable.
        let mappable = flags & libc::O_ACCMODE == libc::O_RDWR;
        // Sized before the lock, which every open and release takes. Stores are keyed by node
        // id, as truncations are: none on an alias.
        let small = if may_store && ino == node && self.stores() {
            self.fs.handle_size(fh).ok().filter(|&n| n > 0 && n <= STORE_MAX)
        } else {
            None
        };
        let mut b = self.backing.lock();
        self.wait_stored(&mut b, ino);
        match b.by_ino.get_mut(&ino) {
            Some(InoMode::Cached(n)) => {
                *n += 1;
                b.by_fh.insert(fh, ino);
                return OpenMode::Cached;
            }
            Some(InoMode::Passthrough(id, n, lower)) => {
                if *lower && (!read_only || self.fs.has_upper(node)) {
                    return OpenMode::Conflict;
                }
                *n += 1;
                let id = id.clone();
                b.by_fh.insert(fh, ino);
                if mappable {
                    b.rw_passthrough.add(node);
                }
                return OpenMode::Passthrough(id);
            }
            Some(InoMode::Storing(_)) | None => {}
        }
        b.by_fh.insert(fh, ino);
        if let Some(n) =
            small.filter(|_| !b.truncating.contains_key(&ino) && !b.rw_passthrough.0.contains(&node))
        {
            b.by_ino.insert(ino, InoMode::Storing(1));
            return OpenMode::Store(n);
        }
        let mut mode = OpenMode::Cached;
        let mut lower = false;
        // A writer opened with O_DIRECT is served here: the kernel gives a passthrough
        // backing file the open's flags once, so an `fcntl(F_SETFL)` that clears O_DIRECT
        // later (GNU dd does, before the last partial block of `oflag=direct`) would not reach
        // it, and the unaligned write would fail with EINVAL. (Where the inode is passed
        // through already, the kernel wants every open of it passed through.)
        if (read_only || flags & libc::O_DIRECT == 0) && self.passthrough.load(Ordering::Relaxed) {
            match self.fs.backing_file(fh) {
                Ok((fd, upper))
                    if (upper || self.fs.is_read_only() || (self.lower_passthrough && read_only))
                        && !(upper
                            && self.killpriv.load(Ordering::Relaxed)
                            && match created {
                                Some(mode) => crate::fs::privileged_mode(mode),
                                None => self.fs.carries_privs(&fd),
                            }) =>
                {
                    // A lower file of a read-only mount is never copied up.
                    lower = !upper && !self.fs.is_read_only();
                    match self.register(&fd) {
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
            OpenMode::Passthrough(id) => {
                if mappable {
                    b.rw_passthrough.add(node);
                }
                InoMode::Passthrough(id.clone(), 1, lower)
            }
            _ => InoMode::Cached(1),
        };
        b.by_ino.insert(ino, m);
        mode
    }

    /// The node a kernel node id stands for: itself, or the node of an alias ([`Aliases`]).
    pub fn node_of(&self, id: u64) -> u64 {
        if !self.any_alias.load(Ordering::Acquire) {
            return id;
        }
        self.aliases.lock().by_id.get(&id).map_or(id, |a| a.0)
    }

    /// The node id to answer an entry of `attr`'s node with, which then holds one more kernel
    /// reference: the node's current alias, if it has one.
    fn kernel_id(&self, attr: &Attr) -> u64 {
        let id = attr.ino.0;
        if attr.kind != FileType::RegularFile || !self.any_alias.load(Ordering::Acquire) {
            return id;
        }
        let mut a = self.aliases.lock();
        let Some(alias) = a.current.get(&id).copied() else { return id };
        if let Some(e) = a.by_id.get_mut(&alias) {
            e.1 += 1;
        }
        alias
    }

    /// Gives `node` a new alias that lookups answer with from now on ([`Aliases`]), `ino`
    /// being the kernel inode whose open needed it.
    fn split(&self, ino: u64, node: u64) {
        self.make_alias(node);
        // The kernel may hold the old inode's attributes for the whole timeout: from now on
        // they are to be asked for each time (see `resolve`).
        if let Some(n) = self.notifier.get() {
            let ids: &[u64] = if ino == node { &[ino] } else { &[ino, node] };
            for &id in ids {
                if let Err(e) = n.inval_inode(INodeNo(id), -1, 0) {
                    log::debug!("invalidating the attributes of {id:#x}: {e}");
                }
            }
        }
    }

    fn make_alias(&self, node: u64) {
        let mut a = self.aliases.lock();
        if let Some(cur) = a.current.get(&node) {
            if a.by_id.get(cur).is_some_and(|e| e.1 == 0) {
                // Not looked up yet (the kernel's retry is on its way): that one will do.
                return;
            }
        }
        let id = loop {
            a.next += 1;
            let id = ALIAS_BASE + a.next;
            if !a.by_id.contains_key(&id) && !self.fs.holds(id) {
                break id;
            }
        };
        log::debug!("node {node:#x}: alias {id:#x}");
        a.by_id.insert(id, (node, 0));
        a.current.insert(node, id);
        self.any_alias.store(true, Ordering::Release);
    }

    /// The node a kernel node id stands for ([`Fuse::node_of`]), and whether the node has an
    /// alias: then none of its kernel inodes may cache attributes, as changes made through one
    /// (a passthrough write, a chmod) do not reach the other.
    pub fn resolve(&self, id: u64) -> (u64, bool) {
        if !self.any_alias.load(Ordering::Acquire) {
            return (id, false);
        }
        let a = self.aliases.lock();
        let node = a.by_id.get(&id).map_or(id, |e| e.0);
        (node, a.current.contains_key(&node))
    }

    /// Drops `n` kernel references of the kernel's node id `id` (an alias, or a node). A
    /// node's current alias stays while the node lives, also with no references left: the
    /// kernel forgets the alias it was just answered with when that revalidated an entry of
    /// the old inode, and then looks the name up again.
    fn forget_id(&self, id: u64, n: u64) {
        let node = self.node_of(id);
        if node != id {
            let mut a = self.aliases.lock();
            let current = a.current.get(&node) == Some(&id);
            if let Some(e) = a.by_id.get_mut(&id) {
                e.1 = e.1.saturating_sub(n);
                if e.1 == 0 && !current {
                    a.by_id.remove(&id);
                }
            }
        }
        self.fs.forget(node, n);
        if self.any_alias.load(Ordering::Acquire) {
            // Checked under the lock, which a lookup answering the alias takes after it
            // installed the node again.
            let mut a = self.aliases.lock();
            if a.current.contains_key(&node) && !self.fs.holds(node) {
                if let Some(alias) = a.current.remove(&node) {
                    a.by_id.remove(&alias);
                }
                if a.by_id.is_empty() {
                    self.any_alias.store(false, Ordering::Release);
                }
            }
        }
    }

    /// Puts the data of a file opened with [`OpenMode::Store`] into the kernel's page cache,
    /// then lets the opens and truncations waiting on the inode go on. A failed read or store
    /// only costs the reads that follow a READ each.
    ///
    /// `size`: the file's size when the open looked. Only that much is read, so a read that
    /// fills it is the last (no second read to find the end). Should the file have grown since
    /// (through another handle), the cache holds its first `size` bytes and the kernel READs
    /// the rest, as it would have without the store.
    fn store(&self, ino: u64, fh: u64, size: u64) {
        READ_BUF.with_borrow_mut(|buf| match self.fs.read(fh, 0, size.min(STORE_MAX) as u32, buf) {
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
    /// kernel's flag for that is not decoded for setattr and open: a caller other
    /// than root stands for "without CAP_FSETID").
    fn kills_privs(&self, ctx: &Ctx) -> bool {
        self.killpriv.load(Ordering::Relaxed) && ctx.uid != 0
    }

    fn drop_backing(&self, fh: u64) {
        let mut b = self.backing.lock();
        let Some(ino) = b.by_fh.remove(&fh) else { return };
        let last = match b.by_ino.get_mut(&ino) {
            Some(InoMode::Cached(n)) | Some(InoMode::Passthrough(_, n, _)) | Some(InoMode::Storing(n)) => {
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

/// Whether process `pid` has CAP_SYS_ADMIN in the server's user namespace, read from `/proc`
/// (false where it cannot be read). The kernel lists `trusted.*` xattrs only to such callers;
/// where the server runs in another user namespace, it sees none to list.
fn caller_is_admin(pid: u32) -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    if pid == 0 {
        return false;
    }
    let user_ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/user")).ok();
    // The server's own namespace does not change: read once.
    static OWN: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    match user_ns(&pid.to_string()) {
        Some(ns) if Some(&ns) == OWN.get_or_init(|| user_ns("self")).as_ref() => {}
        _ => return false,
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return false };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

fn caller(ctx: &Ctx, umask: u32) -> Caller {
    Caller { uid: ctx.uid, gid: ctx.gid, umask, pid: ctx.pid }
}

/// The arguments of a SETATTR, decoded by either transport: the fields to set, and whether
/// the ctime was given.
pub struct SetattrIn {
    pub attr: SetAttr,
    pub ctime: bool,
}

/// The operations, each answering for whichever transport decoded the request (the
/// `/dev/fuse` threads in [`crate::devloop`], or the io_uring queues in [`crate::uring`]).
impl Fuse {
    /// The answer to an operation that makes or finds a name.
    fn entry(&self, op: &str, r: crate::error::Result<Attr>) -> Answer<'static> {
        match r {
            Ok(attr) => {
                let id = self.kernel_id(&attr);
                Answer::Entry(attr.shown(), id, id == attr.ino.0)
            }
            Err(e) => fail(op, e),
        }
    }

    pub fn lookup(&self, ctx: &Ctx, parent: u64, name: &OsStr) -> Answer<'static> {
        log::debug!("lookup(parent={parent}, name={name:?})");
        self.entry(
            "lookup",
            self.hook(ctx, Op::Lookup, parent, Some(name), 0, |_| {}, || self.fs.lookup(parent, name)),
        )
    }

    /// The session is over (the mount is gone): stops the hooks, and with `exit_on_destroy`
    /// the process.
    pub fn session_ended(&self) {
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

    pub fn forget(&self, ctx: &Ctx, ino: u64, nlookup: u64) {
        log::debug!("forget(ino={ino}, n={nlookup})");
        let f = || {
            self.forget_id(ino, nlookup);
            Ok(())
        };
        let _ = self.hook(ctx, Op::Forget, ino, None, 0, |a| _ = a.n("n", nlookup), f);
    }

    pub fn getattr(&self, ctx: &Ctx, ino: u64, fh: Option<u64>) -> Answer<'static> {
        log::debug!("getattr(ino={ino}, fh={fh:?})");
        let args = |a: &mut Args| {
            if let Some(f) = fh {
                a.n("fh", f);
            }
        };
        let r = self.hook(ctx, Op::Getattr, ino, None, 0, args, || match fh {
            Some(fh) => self.fs.getattr_fh(ino, fh).or_else(|_| self.fs.getattr(ino)),
            None => self.fs.getattr(ino),
        });
        match r {
            Ok(attr) => Answer::Attr(attr.shown()),
            Err(e) => fail("getattr", e),
        }
    }

    pub fn setattr(&self, ctx: &Ctx, ino: u64, s: SetattrIn) -> Answer<'static> {
        let SetattrIn { attr: sa, ctime } = s;
        let SetAttr { mode, uid, gid, size, atime, mtime, .. } = sa;
        log::debug!("setattr(ino={ino}, mode={mode:?}, uid={uid:?}, gid={gid:?}, size={size:?})");
        let _truncation = size.and_then(|_| self.truncation(ino));
        let (has_atime, has_mtime) = (atime.is_some(), mtime.is_some());
        let args = |a: &mut Args| {
            if let Some(m) = mode {
                a.o("mode", m);
            }
            for (k, v) in [("uid", uid.map(u64::from)), ("gid", gid.map(u64::from)), ("size", size)] {
                if let Some(v) = v {
                    a.n(k, v);
                }
            }
            if has_atime || has_mtime {
                a.n("times", 1);
            }
        };
        // Under KILLPRIV_V2 the kernel asks for the privilege drop of a write by a caller
        // without CAP_FSETID as a setattr that carries nothing else (the FATTR_KILL_SUIDGID bit
        // itself is not decoded).
        let empty = [mode, uid, gid].iter().all(Option::is_none)
            && size.is_none()
            && !has_atime
            && !has_mtime
            && !ctime;
        let kill = self.killpriv.load(Ordering::Relaxed) && empty
            || size.is_some() && mode.is_none() && self.kills_privs(ctx);
        let f = || {
            if kill && empty && ctx.uid != 0 && !self.fs.has_writer(ino) {
                // No write can be asking: this is chown(-1, -1), whose dropping of setuid or
                // setgid the VFS treats as a mode change, the owner's alone to make.
                let a = self.fs.getattr(ino)?;
                let p = a.perm as u32;
                let drops = p & libc::S_ISUID != 0
                    || p & libc::S_ISGID != 0
                        && (p & libc::S_IXGRP != 0 || !caller(ctx, 0).in_group_or_root(a.gid));
                if drops && a.uid != ctx.uid {
                    return Err(Error::errno(libc::EPERM));
                }
            }
            let attr = self.fs.setattr(ino, sa)?;
            if kill {
                self.fs.kill_privs(ino, caller(ctx, 0))?;
            }
            if empty {
                // chown(-1, -1) changes nothing but the ctime (FUSE sends no ctime without
                // the writeback cache): the upper's own chown(-1, -1) marks it, as kernel
                // overlayfs's passes it to the upper. After the privilege drop, which then
                // leaves it nothing to drop.
                self.fs.mark_ctime(ino);
            }
            if kill || empty { self.fs.getattr(ino) } else { Ok(attr) }
        };
        match self.hook(ctx, Op::Setattr, ino, None, 0, args, f) {
            Ok(attr) => Answer::Attr(attr.shown()),
            Err(e) => fail("setattr", e),
        }
    }

    /// READLINK: `k` gets the answer (the target is borrowed).
    pub fn readlink(&self, ctx: &Ctx, ino: u64, k: impl FnOnce(Answer<'_>)) {
        log::debug!("readlink(ino={ino})");
        match self.hook(ctx, Op::Readlink, ino, None, 0, |_| {}, || self.fs.readlink(ino)) {
            Ok(t) => k(Answer::Data(&t)),
            Err(e) => k(fail("readlink", e)),
        }
    }

    pub fn mknod(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> Answer<'static> {
        log::debug!("mknod(parent={parent}, name={name:?}, mode={mode:o}, rdev={rdev})");
        let args = |a: &mut Args| _ = a.o("mode", mode).n("rdev", rdev);
        let f = || self.fs.mknod(parent, name, mode, rdev as u64, caller(ctx, umask));
        self.entry("mknod", self.hook(ctx, Op::Mknod, parent, Some(name), 0, args, f))
    }

    pub fn mkdir(&self, ctx: &Ctx, parent: u64, name: &OsStr, mode: u32, umask: u32) -> Answer<'static> {
        log::debug!("mkdir(parent={parent}, name={name:?}, mode={mode:o})");
        let args = |a: &mut Args| _ = a.o("mode", mode);
        let f = || self.fs.mkdir(parent, name, mode, caller(ctx, umask));
        self.entry("mkdir", self.hook(ctx, Op::Mkdir, parent, Some(name), 0, args, f))
    }

    pub fn unlink(&self, ctx: &Ctx, parent: u64, name: &OsStr) -> Answer<'static> {
        log::debug!("unlink(parent={parent}, name={name:?})");
        let f = || self.fs.remove(parent, name, false);
        done("unlink", self.hook(ctx, Op::Unlink, parent, Some(name), 0, |_| {}, f))
    }

    pub fn rmdir(&self, ctx: &Ctx, parent: u64, name: &OsStr) -> Answer<'static> {
        log::debug!("rmdir(parent={parent}, name={name:?})");
        let f = || self.fs.remove(parent, name, true);
        done("rmdir", self.hook(ctx, Op::Rmdir, parent, Some(name), 0, |_| {}, f))
    }

    pub fn symlink(&self, ctx: &Ctx, parent: u64, link_name: &OsStr, target: &OsStr) -> Answer<'static> {
        log::debug!("symlink(parent={parent}, name={link_name:?}, target={target:?})");
        let args = |a: &mut Args| _ = a.s("target", target);
        let f = || self.fs.symlink(parent, link_name, target, caller(ctx, 0));
        self.entry("symlink", self.hook(ctx, Op::Symlink, parent, Some(link_name), 0, args, f))
    }

    pub fn rename(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Answer<'static> {
        log::debug!("rename({parent}/{name:?} -> {newparent}/{newname:?}, flags={flags})");
        let args = |a: &mut Args| _ = a.path("newpath", newparent, newname).n("flags", flags);
        let f = || self.fs.rename(parent, name, newparent, newname, flags);
        done("rename", self.hook(ctx, Op::Rename, parent, Some(name), 0, args, f))
    }

    pub fn link(&self, ctx: &Ctx, ino: u64, newparent: u64, newname: &OsStr) -> Answer<'static> {
        log::debug!("link(ino={ino}, newparent={newparent}, newname={newname:?})");
        let args = |a: &mut Args| _ = a.n("target_ino", ino);
        let f = || self.fs.link(ino, newparent, newname);
        self.entry("link", self.hook(ctx, Op::Link, newparent, Some(newname), 0, args, f))
    }

    /// OPEN of the kernel's inode `ino`, a node or an alias of one ([`Aliases`]); `node` is
    /// the node it stands for ([`Fuse::resolve`]).
    pub fn open(&self, ctx: &Ctx, ino: u64, node: u64, flags: i32) -> Answer<'static> {
        log::debug!("open(ino={ino}, flags={flags:#x})");
        let args = |a: &mut Args| _ = a.x("flags", flags as u32);
        let kill = flags & libc::O_TRUNC != 0 && self.kills_privs(ctx);
        let _truncation = (flags & libc::O_TRUNC != 0).then(|| self.truncation(node)).flatten();
        let f = || {
            let o = self.fs.open(node, flags)?;
            if kill {
                if let Err(e) = self.fs.kill_privs(node, caller(ctx, 0)) {
                    self.fs.release(o.fh);
                    return Err(e);
                }
            }
            Ok(o)
        };
        match self.hook(ctx, Op::Open, node, None, 0, args, f) {
            Ok(o) => {
                let read_only = flags & libc::O_ACCMODE == libc::O_RDONLY;
                let may_store = read_only && o.keep_cache && flags & libc::O_TRUNC == 0;
                let answer = match self.open_mode(ino, node, o.fh, flags, may_store, None) {
                    OpenMode::Passthrough(b) => {
                        Answer::Open { fh: o.fh, flags: self.noflush(), backing: Some(b.id) }
                    }
                    OpenMode::Cached => Answer::Open { fh: o.fh, flags: self.fopen(&o), backing: None },
                    OpenMode::Store(n) => {
                        self.store(ino, o.fh, n);
                        Answer::Open { fh: o.fh, flags: self.fopen(&o), backing: None }
                    }
                    OpenMode::Conflict => {
                        // The copy-up (and an O_TRUNC) stand: the retry finds them done.
                        self.fs.release(o.fh);
                        self.split(ino, node);
                        return Answer::Err(libc::ESTALE);
                    }
                };
                if read_only {
                    self.fs.opened(node);
                }
                answer
            }
            Err(e) => fail("open", e),
        }
    }

    /// READ: `k` gets the answer (the data is borrowed from the worker's buffer or a mapping).
    pub fn read(&self, ctx: &Ctx, ino: u64, fh: u64, offset: u64, size: u32, k: impl FnOnce(Answer<'_>)) {
        log::debug!("read(ino={ino}, fh={fh}, off={offset}, size={size})");
        let args = |a: &mut Args| _ = a.n("fh", fh).n("off", offset).n("size", size);
        READ_BUF.with_borrow_mut(|buf| {
            match self.hook(ctx, Op::Read, ino, None, 0, args, || self.fs.read(fh, offset, size, buf)) {
                Ok(d) => k(Answer::Data(d.bytes())),
                Err(e) => k(fail("read", e)),
            }
        })
    }

    /// READ into `dst` (at most its length); the answer is `Written(n)`: `n` bytes were read.
    pub fn read_into(&self, ctx: &Ctx, ino: u64, fh: u64, offset: u64, dst: &mut [u8]) -> Answer<'static> {
        let size = dst.len();
        log::debug!("read(ino={ino}, fh={fh}, off={offset}, size={size})");
        let args = |a: &mut Args| _ = a.n("fh", fh).n("off", offset).n("size", size);
        match self.hook(ctx, Op::Read, ino, None, 0, args, || self.fs.read_into(fh, offset, dst)) {
            Ok(n) => Answer::Written(n as u32),
            Err(e) => fail("read", e),
        }
    }

    /// READ answered from the lower file's pages (see [`crate::fs::OverlayFs::lower_range`]):
    /// the file and the reply's length, or `None` where it is to be read as usual (an upper
    /// file, or hooks that watch reads).
    pub fn read_lower_range(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        size: usize,
    ) -> Option<Result<(Arc<OwnedFd>, usize), i32>> {
        if self.hooks.is_some() {
            return None;
        }
        match self.fs.lower_range(fh, offset, size) {
            Ok(r) => {
                if r.is_some() {
                    log::debug!(
                        "read(ino={ino}, fh={fh}, off={offset}, size={size}) from the lower file's pages"
                    );
                }
                r.map(Ok)
            }
            Err(e) => {
                let errno = e.errno;
                fail("read", e);
                Some(Err(errno))
            }
        }
    }

    pub fn write(
        &self,
        ctx: &Ctx,
        ino: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        kill_suidgid: bool,
    ) -> Answer<'static> {
        let kill = self.killpriv.load(Ordering::Relaxed) && kill_suidgid;
        log::debug!("write(ino={ino}, fh={fh}, off={offset}, len={})", data.len());
        let (len, args) =
            (data.len() as u64, |a: &mut Args| _ = a.n("fh", fh).n("off", offset).n("len", data.len()));
        let f = || {
            if kill {
                self.fs.kill_privs(ino, caller(ctx, 0))?;
            }
            self.fs.write(fh, offset, data)
        };
        match self.hook(ctx, Op::Write, ino, None, len, args, f) {
            Ok(n) => Answer::Written(n),
            Err(e) => fail("write", e),
        }
    }

    pub fn flush(&self, ctx: &Ctx, ino: u64, fh: u64) -> Answer<'static> {
        log::debug!("flush(ino={ino}, fh={fh})");
        done("flush", self.hook(ctx, Op::Flush, ino, None, 0, |a| _ = a.n("fh", fh), || Ok(())))
    }

    pub fn release(&self, ctx: &Ctx, ino: u64, fh: u64) -> Answer<'static> {
        log::debug!("release(ino={ino}, fh={fh})");
        let f = || {
            self.drop_backing(fh);
            self.fs.release(fh);
            Ok(())
        };
        let _ = self.hook(ctx, Op::Release, ino, None, 0, |a| _ = a.n("fh", fh), f);
        Answer::Ok
    }

    pub fn fsync(&self, ctx: &Ctx, ino: u64, fh: u64, datasync: bool) -> Answer<'static> {
        log::debug!("fsync(ino={ino}, fh={fh}, datasync={datasync})");
        let args = |a: &mut Args| _ = a.n("fh", fh).n("datasync", datasync);
        done("fsync", self.hook(ctx, Op::Fsync, ino, None, 0, args, || self.fs.fsync(fh, datasync)))
    }

    pub fn opendir(&self, ctx: &Ctx, ino: u64) -> Answer<'static> {
        log::debug!("opendir(ino={ino})");
        if self.hooks.is_none() && !self.ttl.is_zero() {
            // No OPENDIR/RELEASEDIR round trips: after this ENOSYS the kernel opens directories
            // itself, caching listings (FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE) and dropping them
            // on every change through the mount, and reads with fh 0 (`OverlayFs::readdir`).
            // Hooked mounts keep OPENDIR to trace it; `timeout=0` keeps it to cache nothing.
            return Answer::Err(libc::ENOSYS);
        }
        match self.hook(ctx, Op::Opendir, ino, None, 0, |_| {}, || self.fs.opendir(ino)) {
            // The kernel may cache listings: every change to a directory goes through it, and
            // it drops its cache on each of them.
            Ok(fh) if !self.ttl.is_zero() => Answer::Open {
                fh,
                flags: FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
                backing: None,
            },
            Ok(fh) => Answer::Open { fh, flags: FopenFlags::empty(), backing: None },
            Err(e) => fail("opendir", e),
        }
    }

    pub fn readdir(
        &self,
        ctx: &Ctx,
        ino: u64,
        fh: u64,
        offset: u64,
        out: &mut dyn DirOut,
    ) -> Answer<'static> {
        log::debug!("readdir(ino={ino}, fh={fh}, offset={offset})");
        let args = |a: &mut Args| _ = a.n("fh", fh).n("off", offset);
        match self.hook(ctx, Op::Readdir, ino, None, 0, args, || self.fs.readdir(ino, fh, offset)) {
            Ok((entries, start)) => {
                for e in &entries[start..] {
                    if out.add(e.ino, e.cookie, e.kind, &e.name) {
                        break;
                    }
                }
                Answer::Ok
            }
            Err(e) => fail("readdir", e),
        }
    }

    pub fn readdirplus(
        &self,
        ctx: &Ctx,
        ino: u64,
        fh: u64,
        offset: u64,
        out: &mut dyn DirPlusOut,
    ) -> Answer<'static> {
        log::debug!("readdirplus(ino={ino}, fh={fh}, offset={offset})");
        let args = |a: &mut Args| _ = a.n("fh", fh).n("off", offset);
        let (entries, start) =
            match self.hook(ctx, Op::Readdirplus, ino, None, 0, args, || self.fs.readdir(ino, fh, offset)) {
                Ok(e) => e,
                Err(e) => return fail("readdirplus", e),
            };
        // What the read-ahead is told of (nothing is collected without it).
        let ahead = self.fs.reads_ahead();
        let mut subdirs = Vec::new();
        let mut files = Vec::new();
        for e in &entries[start..] {
            let off = e.cookie;
            if e.name == "." || e.name == ".." {
                // The kernel takes no reference for these two.
                let attr = match self.fs.getattr(e.ino).or_else(|_| self.fs.getattr(ino)) {
                    Ok(a) => a,
                    Err(e) => return fail("readdirplus", e),
                };
                if out.add(off, &e.name, &self.ttl, &attr.shown(), attr.ino.0) {
                    break;
                }
                continue;
            }
            // Each entry returned counts as a lookup; one that does not fit is given back.
            match self.fs.lookup(ino, &e.name) {
                Ok(attr) => {
                    let id = self.kernel_id(&attr);
                    // (An alias's attributes are not cached: see `Answer::Entry`.)
                    let ttl = if id == attr.ino.0 { &self.ttl } else { &Duration::ZERO };
                    if out.add(off, &e.name, ttl, &attr.shown(), id) {
                        self.forget_id(id, 1);
                        break;
                    }
                    if ahead {
                        match attr.kind {
                            FileType::Directory => subdirs.push(attr.ino.0),
                            FileType::RegularFile if attr.size > 0 => {
                                files.push(ListedFile { id: attr.ino.0, cookie: off })
                            }
                            _ => {}
                        }
                    }
                }
                Err(err) if err.errno == libc::ENOENT => {
                    log::debug!("readdirplus: {:?} vanished: {err}", e.name)
                }
                Err(err) => {
                    // The name is there but its attributes could not be had (EMFILE, EIO):
                    // it is listed without them, never left out. Node id 0 tells the kernel
                    // that no entry comes with it; a use of the name looks it up.
                    log::debug!("readdirplus: {:?} listed without attributes: {err}", e.name);
                    if out.add(off, &e.name, &Duration::ZERO, &bare_attr(e.ino, e.kind), 0) {
                        break;
                    }
                }
            }
        }
        if ahead {
            self.fs.listed(ino, offset, subdirs, files);
        }
        Answer::Ok
    }

    pub fn releasedir(&self, ctx: &Ctx, ino: u64, fh: u64) -> Answer<'static> {
        log::debug!("releasedir(ino={ino}, fh={fh})");
        let f = || {
            self.fs.releasedir(fh);
            Ok(())
        };
        let _ = self.hook(ctx, Op::Releasedir, ino, None, 0, |a| _ = a.n("fh", fh), f);
        Answer::Ok
    }

    pub fn fsyncdir(&self, ctx: &Ctx, ino: u64, datasync: bool) -> Answer<'static> {
        log::debug!("fsyncdir(ino={ino})");
        let args = |a: &mut Args| _ = a.n("datasync", datasync);
        done("fsyncdir", self.hook(ctx, Op::Fsyncdir, ino, None, 0, args, || self.fs.fsyncdir(ino, datasync)))
    }

    pub fn statfs(&self, ctx: &Ctx, ino: u64) -> Answer<'static> {
        log::debug!("statfs()");
        match self.hook(ctx, Op::Statfs, ino, None, 0, |_| {}, || self.fs.statfs()) {
            Ok(s) => Answer::Statfs(s),
            Err(e) => fail("statfs", e),
        }
    }

    /// `kill_sgid`: the kernel's FUSE_SETXATTR_ACL_KILL_SGID.
    pub fn setxattr(
        &self,
        ctx: &Ctx,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        kill_sgid: bool,
    ) -> Answer<'static> {
        log::debug!("setxattr(ino={ino}, name={name:?}, len={}, kill_sgid={kill_sgid})", value.len());
        let args = |a: &mut Args| _ = a.s("name", name).n("len", value.len()).n("flags", flags);
        let f = || self.fs.setxattr(ino, name, value, flags, kill_sgid);
        done("setxattr", self.hook(ctx, Op::Setxattr, ino, None, 0, args, f))
    }

    /// GETXATTR: `k` gets the answer (the value is borrowed).
    pub fn getxattr(&self, ctx: &Ctx, ino: u64, name: &OsStr, size: u32, k: impl FnOnce(Answer<'_>)) {
        log::debug!("getxattr(ino={ino}, name={name:?}, size={size})");
        let args = |a: &mut Args| _ = a.s("name", name).n("size", size);
        match self.hook(ctx, Op::Getxattr, ino, None, 0, args, || self.fs.getxattr(ino, name)) {
            Ok(v) => k(xattr_answer(&v, size)),
            Err(e) => k(fail("getxattr", e)),
        }
    }

    /// LISTXATTR: `k` gets the answer (the list is borrowed).
    pub fn listxattr(&self, ctx: &Ctx, ino: u64, size: u32, k: impl FnOnce(Answer<'_>)) {
        log::debug!("listxattr(ino={ino}, size={size})");
        let args = |a: &mut Args| _ = a.n("size", size);
        let f = || self.fs.listxattr(ino, || caller_is_admin(ctx.pid));
        match self.hook(ctx, Op::Listxattr, ino, None, 0, args, f) {
            Ok(v) => k(xattr_answer(&v, size)),
            Err(e) => k(fail("listxattr", e)),
        }
    }

    pub fn removexattr(&self, ctx: &Ctx, ino: u64, name: &OsStr) -> Answer<'static> {
        log::debug!("removexattr(ino={ino}, name={name:?})");
        let args = |a: &mut Args| _ = a.s("name", name);
        done(
            "removexattr",
            self.hook(ctx, Op::Removexattr, ino, None, 0, args, || self.fs.removexattr(ino, name)),
        )
    }

    pub fn access(&self, ctx: &Ctx, ino: u64, mask: i32) -> Answer<'static> {
        log::debug!("access(ino={ino}, mask={mask})");
        let args = |a: &mut Args| _ = a.n("mask", mask);
        done("access", self.hook(ctx, Op::Access, ino, None, 0, args, || self.fs.access(ino, mask)))
    }

    pub fn create(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Answer<'static> {
        log::debug!("create(parent={parent}, name={name:?}, mode={mode:o}, flags={flags:#x})");
        let args = |a: &mut Args| _ = a.o("mode", mode).x("flags", flags as u32);
        let f = || self.fs.create(parent, name, mode, flags, caller(ctx, umask));
        match self.hook(ctx, Op::Create, parent, Some(name), 0, args, f) {
            Ok((attr, o)) => self.created(attr, o, flags),
            Err(e) => fail("create", e),
        }
    }

    /// The reply to CREATE or TMPFILE: a new file, no other open of its inode, so no conflict
    /// either.
    fn created(&self, attr: Attr, o: crate::fs::Opened, flags: i32) -> Answer<'static> {
        let id = attr.ino.0;
        let (fh, attr) = (o.fh, attr.shown());
        match self.open_mode(id, id, fh, flags, false, Some(attr.perm as u32)) {
            OpenMode::Passthrough(b) => {
                Answer::Create { attr, id, fh, flags: self.noflush(), backing: Some(b.id) }
            }
            // Not asked for by create (may_store is false).
            OpenMode::Cached | OpenMode::Store(_) | OpenMode::Conflict => {
                Answer::Create { attr, id, fh, flags: self.fopen(&o), backing: None }
            }
        }
    }

    /// TMPFILE (open with O_TMPFILE): as CREATE, for a file with no name.
    pub fn tmpfile(&self, ctx: &Ctx, parent: u64, mode: u32, umask: u32, flags: i32) -> Answer<'static> {
        log::debug!("tmpfile(parent={parent}, mode={mode:o}, flags={flags:#x})");
        let args = |a: &mut Args| _ = a.o("mode", mode).x("flags", flags as u32);
        let f = || self.fs.tmpfile(parent, mode, flags, caller(ctx, umask));
        match self.hook(ctx, Op::Create, parent, None, 0, args, f) {
            Ok((attr, o)) => self.created(attr, o, flags),
            Err(e) => fail("tmpfile", e),
        }
    }

    pub fn fallocate(
        &self,
        ctx: &Ctx,
        ino: u64,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Answer<'static> {
        log::debug!("fallocate(ino={ino}, off={offset}, len={length}, mode={mode})");
        let args = |a: &mut Args| _ = a.n("fh", fh).n("off", offset).n("len", length).n("mode", mode);
        let kill = self.kills_privs(ctx);
        let f = || {
            if kill {
                self.fs.kill_privs(ino, caller(ctx, 0))?;
            }
            self.fs.fallocate(fh, offset, length, mode)
        };
        done("fallocate", self.hook(ctx, Op::Fallocate, ino, None, 0, args, f))
    }

    /// IOCTL: the inode-attribute commands (`chattr`, `lsattr`) on the real inode; others
    /// ENOTTY, as on a filesystem without them.
    pub fn ioctl(&self, ctx: &Ctx, ino: u64, cmd: u32, input: &[u8], out_size: u32) -> Answer<'static> {
        log::debug!("ioctl(ino={ino}, cmd={cmd:#x}, in={}, out={out_size})", input.len());
        let args = |a: &mut Args| _ = a.n("cmd", cmd);
        let f = || {
            let mut arg = vec![0u8; input.len().max(out_size as usize).max(32)];
            arg[..input.len()].copy_from_slice(input);
            self.fs.fileattr(ino, cmd, &mut arg)?;
            arg.truncate(out_size as usize);
            Ok(arg)
        };
        match self.hook(ctx, Op::Ioctl, ino, None, 0, args, f) {
            Ok(out) => Answer::Ioctl(0, out),
            Err(e) => fail("ioctl", e),
        }
    }

    pub fn lseek(&self, ctx: &Ctx, ino: u64, fh: u64, offset: i64, whence: i32) -> Answer<'static> {
        log::debug!("lseek(ino={ino}, off={offset}, whence={whence})");
        if self.fs.writeback_cache.load(Ordering::Relaxed) {
            // SEEK_DATA/SEEK_HOLE are asked without the kernel writing back its cache first:
            // the server would answer from a file missing the data written since (ENXIO inside
            // it). Unanswered, the kernel treats the file as all data up to the size it knows.
            return Answer::Err(libc::ENOSYS);
        }
        let args = |a: &mut Args| _ = a.n("fh", fh).n("off", offset).n("whence", whence);
        match self.hook(ctx, Op::Lseek, ino, None, 0, args, || self.fs.lseek(fh, offset, whence)) {
            Ok(o) => Answer::Offset(o),
            Err(e) => fail("lseek", e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn copy_file_range(
        &self,
        ctx: &Ctx,
        ino_in: u64,
        fh_in: u64,
        offset_in: u64,
        ino_out: u64,
        fh_out: u64,
        offset_out: u64,
        len: u64,
    ) -> Answer<'static> {
        log::debug!("copy_file_range({ino_in} -> {ino_out}, len={len})");
        let args = |a: &mut Args| {
            a.n("fh_in", fh_in).n("off_in", offset_in).n("ino_out", ino_out);
            a.n("fh_out", fh_out).n("off_out", offset_out).n("len", len);
        };
        let kill = self.kills_privs(ctx);
        let f = || {
            if kill {
                self.fs.kill_privs(ino_out, caller(ctx, 0))?;
            }
            self.fs.copy_file_range(fh_in, offset_in, fh_out, offset_out, len)
        };
        match self.hook(ctx, Op::CopyFileRange, ino_in, None, len, args, f) {
            Ok(n) => Answer::Written(n),
            Err(e) => fail("copy_file_range", e),
        }
    }
}

/// The answer to GETXATTR/LISTXATTR of a `size`-byte buffer: the length when asked with 0,
/// ERANGE when the value does not fit.
fn xattr_answer(v: &[u8], size: u32) -> Answer<'_> {
    if size == 0 {
        Answer::XattrSize(v.len() as u32)
    } else if v.len() > size as usize {
        Answer::Err(libc::ERANGE)
    } else {
        Answer::Data(v)
    }
}

/// fuser's `Filesystem`, over the shared [`Fuse`]: it answers INIT; the requests after it are
/// read by layerfs's own threads.
pub struct FuseFs(pub Arc<Fuse>);

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let f = &*self.0;
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        let want = InitFlags::FUSE_ASYNC_DIO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO;
        let _ = config.add_capabilities(want & config.capabilities());
        // The server drops setuid/setgid/capabilities itself (on the override xattr where the
        // mode lives there): the kernel cannot drop them from a recorded mode, and drops none
        // for an O_TRUNC open or a direct write of a caller without CAP_FSETID.
        if config.capabilities().contains(InitFlags::FUSE_HANDLE_KILLPRIV_V2)
            && config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2).is_ok()
        {
            f.killpriv.store(true, Ordering::Relaxed);
        }
        // A handle the server answers with FOPEN_DIRECT_IO (an O_DIRECT open it serves) may
        // still be mapped shared, as on any filesystem; without this the kernel refuses such
        // a mapping with ENODEV.
        if config.capabilities().contains(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP) {
            let _ = config.add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);
        }
        // SETXATTR then says when an ACL's setter may not keep the setgid bit (the VFS
        // drops it for a local filesystem; the server's own setxattr as root keeps it).
        if config.capabilities().contains(InitFlags::FUSE_SETXATTR_EXT)
            && config.add_capabilities(InitFlags::FUSE_SETXATTR_EXT).is_ok()
        {
            f.setxattr_ext.store(true, Ordering::Relaxed);
        }
        // The umask is applied by layerfs (not under a default ACL), as POSIX ACLs need.
        if config.capabilities().contains(InitFlags::FUSE_DONT_MASK) {
            let _ = config.add_capabilities(InitFlags::FUSE_DONT_MASK);
        }
        if f.fs.acl_enabled() {
            if config.capabilities().contains(InitFlags::FUSE_POSIX_ACL) {
                let _ = config.add_capabilities(InitFlags::FUSE_POSIX_ACL);
            } else {
                f.fs.disable_acl("the kernel does not offer FUSE_POSIX_ACL");
            }
        }
        if f.passthrough.load(Ordering::Relaxed) {
            let caps = config.capabilities();
            if caps.contains(InitFlags::FUSE_PASSTHROUGH) {
                let _ = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH);
                // Backing files may themselves sit on a stacked filesystem (overlayfs).
                let _ = config.set_max_stack_depth(2);
            } else {
                f.passthrough.store(false, Ordering::Relaxed);
            }
        }
        if f.writeback
            && !f.passthrough.load(Ordering::Relaxed)
            && config.capabilities().contains(InitFlags::FUSE_WRITEBACK_CACHE)
            && config.add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE).is_ok()
        {
            f.fs.set_writeback_cache();
            log::info!("FUSE writeback cache on");
        }
        // The kernel offers FUSE-over-io_uring only where the fuse module's `enable_uring` is on.
        if f.uring
            && f.hooks.is_none()
            && config.capabilities().contains(InitFlags::FUSE_OVER_IO_URING)
            && config.add_capabilities(InitFlags::FUSE_OVER_IO_URING).is_ok()
        {
            // The queues are started once the session exists (`mount::run`).
            f.uring_agreed.store(true, Ordering::Relaxed);
        }
        f.fs.start_workers();
        Ok(())
    }

    fn destroy(&mut self) {
        self.0.session_ended();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::FsOptions;

    fn fuse_over(dir: &std::path::Path) -> Fuse {
        let (l, u, w) = (dir.join("l"), dir.join("u"), dir.join("w"));
        for d in [&l, &u, &w] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(l.join("f"), b"lower").unwrap();
        let mut o = FsOptions::new(vec![l]);
        o.upper = Some(u);
        o.work = Some(w);
        Fuse::new(Arc::new(OverlayFs::new(o).unwrap()), Duration::from_secs(1), false, true)
    }

    /// What a lookup of "f" answered: (inode number shown, kernel id, attributes cached).
    fn lookup(f: &Fuse) -> (u64, u64, bool) {
        let ctx = Ctx { uid: 0, gid: 0, pid: 1 };
        match f.lookup(&ctx, 1, OsStr::new("f")) {
            Answer::Entry(attr, id, cache) => (attr.ino.0, id, cache),
            _ => panic!("lookup failed"),
        }
    }

    /// What READDIRPLUS answered: (name, node id, type).
    #[derive(Default)]
    struct Listed(Vec<(String, u64, FileType)>);

    impl DirPlusOut for Listed {
        fn add(&mut self, _off: u64, name: &OsStr, _ttl: &Duration, attr: &FileAttr, id: u64) -> bool {
            self.0.push((name.to_string_lossy().into_owned(), id, attr.kind));
            false
        }
    }

    /// A name whose lookup fails for another reason than ENOENT (here EMFILE: the process has
    /// no descriptor left to open the directory) stays in the listing, with node id 0 (no
    /// attributes). It used to be left out, as if it had been removed. Exhausting descriptors
    /// is process-wide, so the test runs itself again alone in a child process.
    #[test]
    fn a_listing_keeps_a_name_whose_lookup_fails() {
        const NAME: &str = "fuse::tests::a_listing_keeps_a_name_whose_lookup_fails";
        if std::env::var_os("LAYERFS_FD_SHORTAGE_CHILD").is_none() {
            let st = std::process::Command::new(std::env::current_exe().unwrap())
                .args([NAME, "--exact", "--test-threads=1"])
                .env("LAYERFS_FD_SHORTAGE_CHILD", "1")
                .status()
                .unwrap();
            assert!(st.success(), "the child run failed: {st}");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let f = fuse_over(t.path());
        std::fs::create_dir(t.path().join("l/d")).unwrap();
        // The listing is made (and cached) while descriptors are left.
        f.fs.readdir(crate::fs::ROOT_ID, 0, 0).unwrap();
        // SAFETY: plain rlimit and dup calls; the descriptors stay open until the process exits.
        unsafe {
            let mut lim: libc::rlimit = std::mem::zeroed();
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
            lim.rlim_cur = lim.rlim_cur.min(256);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
            while libc::dup(2) >= 0 {}
        }
        let mut out = Listed::default();
        let ctx = Ctx { uid: 0, gid: 0, pid: 1 };
        assert!(matches!(f.readdirplus(&ctx, crate::fs::ROOT_ID, 0, 0, &mut out), Answer::Ok));
        let names: Vec<&str> = out.0.iter().map(|(n, ..)| n.as_str()).collect();
        assert_eq!(names.len(), 4, "{names:?}");
        for n in [".", "..", "f", "d"] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        let d = out.0.iter().find(|(n, ..)| n == "d").unwrap();
        assert_eq!((d.1, d.2), (0, FileType::Directory), "d: listed without attributes, as a directory");
    }

    /// The bookkeeping of a split node: lookups answer the alias and count its references,
    /// requests translate it, the alias outlives its own references (the kernel forgets it
    /// once while revalidating the old entry, then looks it up again) and goes with the node.
    #[test]
    fn an_alias_answers_lookups_until_its_node_is_forgotten() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let f = fuse_over(t.path());
        let (shown, node, cached) = lookup(&f);
        assert_eq!(node, f.fs.lookup(1, OsStr::new("f")).unwrap().ino.0, "no alias: the node id itself");
        f.fs.forget(node, 1);
        assert!(cached);
        // A lower file: its real inode number.
        assert_eq!(shown, std::fs::metadata(t.path().join("l/f")).unwrap().ino());
        assert_eq!(f.resolve(node), (node, false));

        f.make_alias(node);
        let (shown2, alias, cached) = lookup(&f);
        assert_eq!(shown2, shown, "the inode number shown stays the node's");
        assert_ne!(alias, node);
        assert!(!cached, "an alias's attributes are not cached");
        assert_eq!(f.resolve(alias), (node, true));
        assert_eq!(f.resolve(node), (node, true));
        assert_eq!(f.node_of(alias), node);
        // A split before the alias was ever looked up reuses it.
        f.forget_id(alias, 1);
        f.make_alias(node);
        assert_eq!(lookup(&f).1, alias, "still the current alias after its references went");
        f.make_alias(node);
        let (_, second, _) = lookup(&f);
        assert_ne!(second, alias, "an alias the kernel holds is not reused");
        assert_eq!(f.node_of(alias), node, "the older alias still reaches the node");
        f.forget_id(alias, 1);
        assert_eq!(f.node_of(alias), alias, "a forgotten old alias is gone");
        assert_eq!(f.node_of(second), node);

        // References: the node's first lookup, then `second`'s one.
        f.forget_id(node, 1);
        assert!(f.fs.holds(node), "the alias still holds the node");
        f.forget_id(second, 1);
        assert!(!f.fs.holds(node));
        assert_eq!(f.resolve(second), (second, false), "the alias went with its node");
        assert!(!f.any_alias.load(Ordering::Acquire));
        let (n2, id2, _) = lookup(&f);
        assert_eq!((n2, id2), (shown, node), "a fresh lookup answers the node id again");
    }
}
