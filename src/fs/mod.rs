//! `OverlayFs`: the union filesystem, one method per FUSE operation, no FUSE types beyond
//! fuser's plain data (`FileAttr`, `FileType`).
//!
//! Hard parts, and where they are handled:
//! 1. Identity. A node's id (the FUSE node id) is the real inode of the topmost object found
//!    when it was first looked up, offset per filesystem ([`Layer::ino_base`]), for directories
//!    and upper objects, and a keyed hash of (directory, name) for lower non-directories
//!    ([`lower_leaf_id`]), so that two names of a hard link in a layer are two nodes. A node
//!    keeps its id across copy-up; `upper_ids` maps the new upper inode back to it, so later
//!    lookups (hard links made through the mount) find it. The inode number shown (`st_ino`,
//!    `d_ino`) is the id, except for lower non-directories, which show their real inode
//!    number as kernel overlayfs does ([`OverlayFs::shown_ino`], [`Attr`]).
//! 2. Locks (order: a directory's `dir_lock`, then node `state` mutexes, then the table; a
//!    table or state lock is never held across a syscall). Lookups and readdir take the parent's
//!    `dir_lock` shared; creations and removals take it exclusive; rename takes both parents in
//!    id order. Copy-up takes only the node's `copy_lock` while copying data and the parent's
//!    `dir_lock` for the final rename, so a big copy-up does not stall other files. Copy-up is
//!    never started while a `dir_lock` is held (callers copy up first, lock, then re-check).
//! 3. Lifetimes. `forget` drops a node when the kernel's lookup count reaches zero; a child holds
//!    an `Arc` to its parent, so ancestors needed for a later copy-up stay alive.
//! 4. Whiteouts and opaque directories are read in every form ([`crate::whiteout`]), and
//!    written in the form chosen at mount ([`crate::whiteout::WhiteoutStyle`]).

mod ahead;
mod copy_up;
mod dir_ops;
pub mod dirfd;
mod file_ops;
mod lite;
mod table;

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::hash::Hasher as _;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};
use parking_lot::{Mutex, RwLock};

use self::dirfd::DirFd;
use crate::error::{Error, Result};
use crate::layer::{self, DirMarks, Layer, Loc};
use crate::merge::{self, ListItem, Probe, Resolution, Resolver};
use crate::name;
use crate::ovr;
use crate::sys::{self, Stat};
use crate::whiteout::{self, EntryClass, WhiteoutStyle};

pub use ahead::ListedFile;
pub use dir_ops::Caller;
pub use file_ops::{MAP_READ_MIN, Opened, READ_AHEAD, ReadData, SetAttr, privileged_mode};

/// The FUSE root node id.
pub const ROOT_ID: u64 = 1;

/// Settings of one mount, decided before it starts.
#[derive(Clone, Debug)]
pub struct FsOptions {
    pub lowers: Vec<std::path::PathBuf>,
    pub upper: Option<std::path::PathBuf>,
    pub work: Option<std::path::PathBuf>,
    pub read_only: bool,
    pub timeout: Duration,
    /// `None` means detect at mount.
    pub whiteout: Option<WhiteoutStyle>,
    pub fsync: bool,
    pub static_nlink: bool,
    pub noxattrs: bool,
    /// Read ahead the subdirectories of a walked directory, the data of the files opened in
    /// listing order, and a directory's lower entries at its first lookup ([`ahead`]).
    pub read_ahead: bool,
    pub squash_uid: Option<u32>,
    pub squash_gid: Option<u32>,
    /// `uidmapping=`/`gidmapping=`: on-disk ids ↔ ids shown through the mount.
    pub uid_map: IdMap,
    pub gid_map: IdMap,
    /// `xattr_permissions=`: 0 off, 1 `security.fuseoverlayfs.override_stat`, 2
    /// `user.containers.override_stat`.
    pub xattr_permissions: u8,
    /// POSIX ACLs wanted (not `noacl`); still switched off when a layer lacks them.
    pub acl: bool,
    /// `noatime` given: reads through the mount give upper objects no new access time either
    /// (lower objects never get one). Otherwise the upper filesystem's mount decides, as
    /// it does for kernel overlayfs under `relatime`.
    pub noatime: bool,
}

/// An id mapping as fuse-overlayfs defines `uidmapping=A:B:N`: ids `A..A+N` on disk are shown
/// as `B..B+N`; an id outside every range, either way, becomes the overflow id (65534).
/// Empty: identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMap(pub Vec<(u32, u32, u32)>);

/// The id shown for ids that have no mapping (the kernel's overflowuid/overflowgid).
pub const OVERFLOW_ID: u32 = 65534;

impl IdMap {
    /// On-disk id → shown id.
    pub fn to_shown(&self, disk: u32) -> u32 {
        if self.0.is_empty() {
            return disk;
        }
        for &(d, sh, n) in &self.0 {
            if disk >= d && disk - d < n {
                return sh + (disk - d);
            }
        }
        OVERFLOW_ID
    }

    /// Shown id → on-disk id, or None when no range covers it.
    pub fn to_disk(&self, shown: u32) -> Option<u32> {
        if self.0.is_empty() {
            return Some(shown);
        }
        self.0.iter().find(|&&(_, sh, n)| shown >= sh && shown - sh < n).map(|&(d, sh, _)| d + (shown - sh))
    }
}

impl FsOptions {
    pub fn new(lowers: Vec<std::path::PathBuf>) -> Self {
        FsOptions {
            lowers,
            upper: None,
            work: None,
            read_only: false,
            timeout: Duration::from_secs(1_000_000),
            whiteout: None,
            fsync: true,
            static_nlink: false,
            noxattrs: false,
            read_ahead: true,
            squash_uid: None,
            squash_gid: None,
            uid_map: IdMap::default(),
            gid_map: IdMap::default(),
            xattr_permissions: 0,
            acl: true,
            noatime: false,
        }
    }
}

/// One lower directory that merges into a directory node.
#[derive(Clone, Debug)]
pub(crate) struct LowerDir {
    pub layer: usize,
    pub fd: DirFd,
    pub marks: DirMarks,
    pub index: SharedIndex,
}

/// A lower directory's index, built at most once and shared by every node state holding it.
pub(crate) type SharedIndex = Arc<std::sync::OnceLock<DirIndex>>;

/// A lower directory opened (and, when small, read) ahead of its probe
/// ([`OverlayFs::prefetch_lower_dirs`]).
pub(crate) struct Prefetched {
    fd: Arc<OwnedFd>,
    marks: DirMarks,
    index: Option<SharedIndex>,
}

/// The largest lower directory (its size as `stat` gives it) a prefetch lists for its index.
const PREFETCH_LIST_MAX: i64 = 64 << 10;

impl LowerDir {
    pub(crate) fn new(layer: usize, fd: DirFd, marks: DirMarks) -> LowerDir {
        LowerDir::with_index(layer, fd, marks, None)
    }

    /// A lower directory whose index may have been read already.
    pub(crate) fn with_index(
        layer: usize,
        fd: DirFd,
        marks: DirMarks,
        index: Option<SharedIndex>,
    ) -> LowerDir {
        LowerDir { layer, fd, marks, index: index.unwrap_or_default() }
    }
}

/// A directory node's lower directories, top-down: shared by every copy of the node's state
/// (a lookup takes one without copying the list), and empty without an allocation.
#[derive(Clone, Debug, Default)]
pub(crate) struct LowerDirs(Option<Arc<LowerDirsInner>>);

#[derive(Debug)]
pub(crate) struct LowerDirsInner {
    dirs: Box<[LowerDir]>,
    /// Many lowers only ([`MANY_LOWERS`]): name → the first position that has the name
    /// or whites it out, so a lookup skips the layers that cannot matter.
    first: std::sync::OnceLock<HashMap<Box<[u8]>, u32>>,
    /// Set once a lookup here queued the entries' stats ahead (see [`ahead`]).
    stats_queued: AtomicBool,
}

impl From<Vec<LowerDir>> for LowerDirs {
    fn from(v: Vec<LowerDir>) -> LowerDirs {
        if v.is_empty() {
            return LowerDirs(None);
        }
        LowerDirs(Some(Arc::new(LowerDirsInner {
            dirs: v.into(),
            first: Default::default(),
            stats_queued: AtomicBool::new(false),
        })))
    }
}

impl LowerDirs {
    /// Whether something besides this handle holds these lower directories (a node's state:
    /// not when only a queued job does).
    pub(crate) fn held_elsewhere(&self) -> bool {
        self.0.as_ref().is_some_and(|i| Arc::strong_count(i) > 1)
    }
}

impl std::ops::Deref for LowerDirs {
    type Target = [LowerDir];
    fn deref(&self) -> &[LowerDir] {
        self.0.as_ref().map_or(&[], |i| &i.dirs)
    }
}

/// The mutable state of a node.
#[derive(Debug)]
pub(crate) struct NodeState {
    pub parent: Option<Arc<Node>>,
    pub name: Arc<CStr>,
    pub kind: FileType,
    /// The object in the upper layer, once it exists.
    pub upper: Option<Loc>,
    /// Upper directory marks (opaque etc.), for directories with an upper.
    pub upper_marks: DirMarks,
    /// For directories: lower directories that merge, top-down. Empty when the upper is
    /// opaque.
    pub lower_dirs: LowerDirs,
    /// For non-directories: the layer index and directory of the lower object, which has the
    /// node's `name` (a node is renamed only once it has an upper, which then hides the lower).
    pub lower: Option<(usize, DirFd)>,
    /// Set once the last name was removed through the mount.
    pub unlinked: bool,
}

/// One object of the merged tree, as the kernel knows it.
#[derive(Debug)]
pub struct Node {
    pub ino: u64,
    pub(crate) lookups: AtomicU64,
    pub(crate) state: Mutex<NodeState>,
    pub(crate) dir_lock: RwLock<()>,
    pub(crate) copy_lock: Mutex<()>,
    pub(crate) has_upper: AtomicBool,
    /// Append-only/immutable ([`PROT_APPEND`], [`PROT_IMMUTABLE`]) as last found, or
    /// [`PROT_UNKNOWN`] (see [`OverlayFs::prot`]).
    pub(crate) prot: AtomicU8,
    /// What is known of the object that saves a syscall on a frequent request
    /// ([`FACT_MADE_HERE`], [`FACT_NO_DEFAULT_ACL`], [`FACT_NO_CAPS`]); 0 = nothing known.
    pub(crate) facts: AtomicU8,
}

/// The directory's upper was made empty through this mount and no lower directory lies
/// below it: it holds no `.wh.NAME` files (names with that prefix cannot be made through the
/// mount, and whiteouts are made only over lower names).
pub(crate) const FACT_MADE_HERE: u8 = 1;
/// The directory's upper was found without a default ACL (or made without one), and no
/// xattr of it has been changed through the mount since.
pub(crate) const FACT_NO_DEFAULT_ACL: u8 = 2;
/// The object was made through the mount and no xattr of it has been changed through the
/// mount since: it has no `security.capability` (nothing sets one on a new object). The
/// kernel asks for that xattr before an inode's first write and before each chown.
pub(crate) const FACT_NO_CAPS: u8 = 4;

/// The xattr of file capabilities.
const CAPS_XATTR: &[u8] = b"security.capability";

/// The object is append-only (chattr +a).
pub(crate) const PROT_APPEND: u8 = 1;
/// The object is immutable (chattr +i).
pub(crate) const PROT_IMMUTABLE: u8 = 2;
/// Not looked at yet.
pub(crate) const PROT_UNKNOWN: u8 = 0x80;

/// What a `trusted.overlay.protattr` value says (kernel overlayfs's letters).
pub(crate) fn protattr_bits(v: &[u8]) -> u8 {
    v.iter().fold(0, |p, c| match c {
        b'a' => p | PROT_APPEND,
        b'i' => p | PROT_IMMUTABLE,
        _ => p,
    })
}

/// The `protattr` value for `prot` (empty for none).
pub(crate) fn protattr_value(prot: u8) -> &'static [u8] {
    match prot & (PROT_APPEND | PROT_IMMUTABLE) {
        PROT_APPEND => b"a",
        PROT_IMMUTABLE => b"i",
        0 => b"",
        _ => b"ai",
    }
}

impl NodeState {
    /// A non-directory with its upper object or its lower one (layer, directory), not yet
    /// linked to a parent.
    pub(crate) fn non_dir(
        name: Arc<CStr>,
        kind: FileType,
        upper: Option<Loc>,
        lower: Option<(usize, DirFd)>,
    ) -> NodeState {
        NodeState {
            parent: None,
            name,
            kind,
            upper,
            upper_marks: DirMarks::default(),
            lower_dirs: LowerDirs::default(),
            lower,
            unlinked: false,
        }
    }
}

impl Node {
    /// A node holding `lookups` kernel references.
    pub(crate) fn new(ino: u64, lookups: u64, state: NodeState) -> Arc<Node> {
        Arc::new(Node {
            ino,
            lookups: AtomicU64::new(lookups),
            has_upper: AtomicBool::new(state.upper.is_some()),
            state: Mutex::new(state),
            dir_lock: RwLock::new(()),
            copy_lock: Mutex::new(()),
            prot: AtomicU8::new(PROT_UNKNOWN),
            facts: AtomicU8::new(0),
        })
    }

    pub(crate) fn has_fact(&self, fact: u8) -> bool {
        self.facts.load(Ordering::Acquire) & fact != 0
    }

    pub(crate) fn is_dir(&self) -> bool {
        self.state.lock().kind == FileType::Directory
    }

    /// The topmost real object and its layer, for use while the guard lives.
    ///
    /// An upper non-directory is reached by (parent fd, name), and an unlink or rename through
    /// the mount can hand that name to another object (a whiteout, a new file) while a request
    /// is on its way to it. Those writers pin the node to its object first ([`Loc::Pinned`]),
    /// under the write side of `dir_lock` (unused otherwise by non-directories). The guard holds
    /// the read side while the name is in use, so the name still reaches the node's object.
    /// Directories, pinned objects and lower objects cannot move: no lock.
    pub(crate) fn top(&self) -> Option<Top<'_>> {
        {
            let s = self.state.lock();
            if !matches!(s.upper, Some(Loc::At(..))) {
                let (loc, layer) = top_loc_layer_of(&s)?;
                return Some(Top { loc, layer, is_upper: s.upper.is_some(), _name: None });
            }
        }
        let g = self.dir_lock.read();
        let s = self.state.lock();
        let (loc, layer) = top_loc_layer_of(&s)?;
        Some(Top { loc, layer, is_upper: s.upper.is_some(), _name: Some(g) })
    }

    /// The upper object (see [`Node::top`]), if there is one.
    pub(crate) fn upper(&self) -> Option<Top<'_>> {
        self.top().filter(|t| t.is_upper)
    }
}

/// A node's topmost object, its name held in place (see [`Node::top`]).
pub(crate) struct Top<'a> {
    pub loc: Loc,
    pub layer: usize,
    pub is_upper: bool,
    _name: Option<parking_lot::RwLockReadGuard<'a, ()>>,
}

/// The topmost real object and its layer index (0 is the upper).
pub(crate) fn top_loc_layer_of(s: &NodeState) -> Option<(Loc, usize)> {
    if let Some(u) = &s.upper {
        return Some((u.clone(), 0));
    }
    if let Some((li, dir)) = &s.lower {
        return Some((Loc::At(dir.clone(), s.name.clone()), *li));
    }
    s.lower_dirs.first().map(|d| (Loc::Dir(d.fd.clone()), d.layer))
}

/// How many directory descriptors may stay open at once; the least recently used beyond it
/// are closed, and opened again when used (see [`dirfd`]). Where the process still runs out
/// of descriptors, an open that fails with EMFILE closes them all and lowers the budget
/// ([`dirfd::relieve`]) before it tries again.
pub fn set_dir_budget(n: usize) {
    dirfd::set_limit(n);
    sys::on_fd_shortage(dirfd::relieve);
}

/// A directory's descriptor, opened again if it was closed (see [`dirfd`]).
pub(crate) fn dir_open(d: &DirFd) -> Result<Arc<OwnedFd>> {
    d.get().map_err(|e| Error::io(e, "reopen dir"))
}

/// What [`OverlayFs::resolve`] found: the node id, the state (without parent), the stat of a
/// non-directory's probe, and the number its origin gave it ([`OverlayFs::upper_leaf_id`]).
pub(crate) type Resolved = (u64, NodeState, Option<Stat>, Option<Kept>);

/// The number a copied-up non-directory shows ([`OverlayFs::kept_ino`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Kept {
    pub ino: u64,
    /// Read from its `overlay.origin` (key of its entry in `upper_ids`): read again at its
    /// next lookup, so its entries go when the kernel forgets it.
    pub origin_key: Option<u64>,
}

/// Attributes as the façade answers them: fuser's `FileAttr`, whose `ino` is the node id that
/// requests name the object by, and the inode number `stat` and readdir show for it, which
/// differs for lower files (see [`OverlayFs::shown_ino`]). Derefs to the `FileAttr`.
#[derive(Clone, Copy, Debug)]
pub struct Attr {
    pub attr: FileAttr,
    pub st_ino: u64,
}

impl Attr {
    /// The attributes as the kernel is to be given them: `ino` the inode number shown.
    pub fn shown(&self) -> FileAttr {
        FileAttr { ino: INodeNo(self.st_ino), ..self.attr }
    }
}

impl std::ops::Deref for Attr {
    type Target = FileAttr;
    fn deref(&self) -> &FileAttr {
        &self.attr
    }
}

/// One entry of a merged listing.
#[derive(Clone, Debug)]
pub struct DirEntry {
    /// The inode number shown (`d_ino`), which equals a `stat`'s `st_ino`.
    pub ino: u64,
    pub kind: FileType,
    pub name: OsString,
    /// Its readdir offset ([`dir_cookie`]): listings are in cookie order.
    pub cookie: u64,
}

/// The readdir offset of a name: 1 for `.`, 2 for `..`, else a 63-bit hash of the name (at
/// least 3). A reader resumes after the last cookie it got, so names added or removed meanwhile
/// never make it skip or repeat another name (index offsets would shift). The hash is SipHash
/// with keys drawn at random per server, so names that collide cannot be made ahead of time (a
/// layer could otherwise hide a name from a reader stopping between two); two names that
/// collide anyway (odds 2^-63 per pair) get distinct cookies in a listing ([`unique_cookies`]).
pub fn dir_cookie(name: &[u8]) -> u64 {
    static KEYS: OnceLock<std::hash::RandomState> = OnceLock::new();
    match name {
        b"." => 1,
        b".." => 2,
        _ => {
            use std::hash::BuildHasher;
            // 63 bits: offsets are signed for telldir(3).
            (KEYS.get_or_init(std::hash::RandomState::new).hash_one(name) >> 1).max(3)
        }
    }
}

/// Makes the cookies of a listing sorted by cookie strictly increasing: a name whose cookie
/// equals the one before it takes the next value up, so no two names share an offset.
pub(crate) fn unique_cookies(entries: &mut [DirEntry]) {
    for i in 1..entries.len() {
        if entries[i].cookie <= entries[i - 1].cookie {
            entries[i].cookie = entries[i - 1].cookie + 1;
        }
    }
}

/// Listings kept for READDIR without a handle (the kernel sends no OPENDIR, see
/// [`OverlayFs::readdir`]): this many directories.
const LISTING_CACHE: usize = 64;

/// An open directory: the merged listing, taken at its first read (and again on rewind).
pub(crate) struct DirHandle {
    pub entries: Mutex<Option<Arc<Vec<DirEntry>>>>,
}

/// An open file.
pub(crate) struct FileHandle {
    pub node: Arc<Node>,
    pub fd: RwLock<Arc<OwnedFd>>,
    /// Opened read-only on a lower layer: switch to the upper copy once there is one.
    pub from_lower: AtomicBool,
    /// Where the last large read through this handle ended: a read starting near there is
    /// sequential, and the file's next [`file_ops::READ_AHEAD`] bytes are asked for ahead.
    pub next_read: AtomicU64,
    /// How far ahead reads through this handle have been asked for already.
    pub ahead_to: AtomicU64,
    /// The descriptor is read-write with no flag that would change other handles' I/O
    /// (append, direct, sync, noatime): it can stand as the file's passthrough backing file.
    pub plain_rw: bool,
    /// Opened for writing.
    pub writable: bool,
}

/// The union filesystem.
pub struct OverlayFs {
    pub(crate) opts: FsOptions,
    /// Index 0 is the upper when there is one; lowers follow, top first.
    pub(crate) layers: Vec<Layer>,
    pub(crate) has_upper: bool,
    pub(crate) work: Option<Arc<OwnedFd>>,
    /// The upper filesystem's journal orders a copy's rename after its finished data
    /// write-back ([`sys::journal_orders_rename`]): a copy-up waits for the write-back, not for
    /// an fsync.
    pub(crate) journal_orders: bool,
    /// Each layer filesystem's device and its disk's read-ahead window in bytes
    /// (`read_ahead_kb`), where it has one.
    pub(crate) disk_windows: Vec<(u64, Option<u64>)>,
    /// Under `noatime`, where the server may make one: a private `noatime` copy of the upper
    /// directory's mount, which the passthrough backing files of upper files are opened
    /// through ([`sys::reopen_on_mount`]). The kernel opens a passthrough file's backing file
    /// anew, with the caller's flags and without O_NOATIME, on the path it was given, so only
    /// the mount keeps those reads from renewing the upper's access times.
    pub(crate) upper_noatime: Option<OwnedFd>,
    pub(crate) whiteout_style: WhiteoutStyle,
    /// Whether `trusted.*` xattrs can be written on the upper (root): opaque form.
    pub(crate) trusted_xattrs: bool,
    /// The server's effective uid and gid: the owner a file it creates gets (outside a set-gid
    /// directory).
    pub(crate) own_ids: (u32, u32),
    /// Per layer: the override-stat xattr its objects are read with (None: not read).
    pub(crate) ovr: Vec<Option<&'static std::ffi::CStr>>,
    /// `xattr_permissions=`: owners and modes go into the upper's override xattr.
    pub(crate) write_ovr: bool,
    /// POSIX ACLs on: negotiated with the kernel, default ACLs inherited on creation.
    pub(crate) acl: AtomicBool,
    pub(crate) nodes: table::NodeTable<lite::Slot>,
    /// Bytes of files asked for by mapped reads (see `ask_ahead`), for tests and statistics.
    pub(crate) read_asked: AtomicU64,
    /// Upper real inode (plus base) → node id, where they differ.
    pub(crate) upper_ids: Mutex<HashMap<u64, u64>>,
    /// Node id of a lower non-directory copied up → the inode number it showed before, which
    /// it keeps for the mount ([`OverlayFs::shown_ino`]), or that its `overlay.origin` gives
    /// it ([`OverlayFs::upper_leaf_id`]).
    pub(crate) kept_ino: Mutex<HashMap<u64, Kept>>,
    /// Removed copies the kernel forgot while an open handle still held their node (its
    /// RELEASE still on its way): the node, its id and the copy's real inode number. Their
    /// maps go once nothing holds the node ([`OverlayFs::unmap_released`]).
    pub(crate) dying: Mutex<Vec<(std::sync::Weak<Node>, u64, u64)>>,
    /// `dying` has entries: read without its lock by every RELEASE, which sweeps the list only
    /// then (set under the lock when an entry is added, cleared when the last goes).
    pub(crate) has_dying: AtomicBool,
    /// The key of [`lower_leaf_id`] for this stack.
    pub(crate) leaf_key: (u64, u64),
    /// Told the node id of each directory copied up, and of each file whose link count the
    /// copy-up changed: its attributes (link count, size, ctime) are now the upper's, and the
    /// kernel may hold the lower's (see `Fuse::new`).
    pub attrs_stale: OnceLock<Box<dyn Fn(u64) + Send + Sync>>,
    /// Told the node id of each directory whose listing the kernel caches is stale in a way it
    /// cannot see ([`OverlayFs::listing_changed`]; see `Fuse::new`).
    pub listing_stale: OnceLock<Box<dyn Fn(u64) + Send + Sync>>,
    pub(crate) files: RwLock<HashMap<u64, Arc<FileHandle>>>,
    pub(crate) dirs: RwLock<HashMap<u64, Arc<DirHandle>>>,
    /// Listings for READDIR without a handle, by directory node id.
    pub(crate) listings: Mutex<lru::LruCache<u64, Arc<Vec<DirEntry>>>>,
    pub(crate) next_fh: AtomicU64,
    pub(crate) tmp_seq: AtomicU64,
    /// The kernel caches writes (FUSE writeback cache): it may read through handles opened
    /// write-only, to fill partly written pages.
    pub(crate) writeback_cache: AtomicBool,
    pub(crate) ahead: ahead::ReadAhead,
}

fn cname(name: &[u8]) -> Result<CString> {
    CString::new(name).map_err(|_| Error::errno(libc::EINVAL))
}

/// A shared name in one allocation (the lookup path makes one per request): copied through a
/// stack buffer instead of a `CString` first. EINVAL for a NUL inside; names longer than
/// NAME_MAX take the `CString` way.
pub(crate) fn arc_cname(name: &[u8]) -> Result<Arc<CStr>> {
    let mut buf = [0u8; 256];
    if name.len() >= buf.len() {
        return Ok(Arc::from(cname(name)?));
    }
    buf[..name.len()].copy_from_slice(name);
    // Fails on a NUL inside the name: the first NUL must be the terminator.
    CStr::from_bytes_with_nul(&buf[..=name.len()]).map(Arc::from).map_err(|_| Error::errno(libc::EINVAL))
}

pub(crate) fn kind_of(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

/// The `S_IFMT` bits of a kind ([`kind_of`] the other way).
fn fmt_of(kind: FileType) -> u32 {
    match kind {
        FileType::Directory => libc::S_IFDIR,
        FileType::Symlink => libc::S_IFLNK,
        FileType::CharDevice => libc::S_IFCHR,
        FileType::BlockDevice => libc::S_IFBLK,
        FileType::NamedPipe => libc::S_IFIFO,
        FileType::Socket => libc::S_IFSOCK,
        FileType::RegularFile => libc::S_IFREG,
    }
}

fn kind_of_dtype(d: u8) -> Option<FileType> {
    Some(match d {
        libc::DT_DIR => FileType::Directory,
        libc::DT_REG => FileType::RegularFile,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        _ => return None,
    })
}

fn systime(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs((-sec) as u64) + Duration::from_nanos(nsec as u64)
    }
}

/// What one layer holds under a name, with what is needed to build a node from it.
pub(crate) enum Found {
    /// `st`: the object's stat where the probe took one (a lower name found through its
    /// directory's index was not stat'ed).
    NonDir { mode: u32, st: Option<Stat> },
    /// `index`: the directory's index when it was read with it (lower directories below many
    /// lowers, see [`OverlayFs::prefetch_lower_dirs`]).
    Dir { ino: u64, fd: Arc<OwnedFd>, marks: DirMarks, index: Option<SharedIndex> },
}

/// A lower directory's listing, read once: lookups in it then need no syscall unless the name
/// is there (lower layers do not change while mounted). Hard parts: a `.wh.X` entry whites X
/// out for the layers below only; char devices and (in `opaque=x` directories) zero-size files
/// may be whiteouts, which only a stat tells.
///
/// Compact on purpose (it lives as long as the kernel keeps the directory, and a big tree has
/// one entry here per lower name): records `(len, name, kind[, ino])` sit in one byte arena (the
/// inode number only for directories, the one kind whose id comes from it), found through an
/// open-addressing table of arena offsets: about 12 bytes plus the name per entry.
#[derive(Debug, Default)]
pub(crate) struct DirIndex {
    arena: Vec<u8>,
    /// Power-of-two sized, at most 3/4 full; `EMPTY` marks a free slot.
    table: Vec<u32>,
}

/// A free slot of [`DirIndex::table`].
const EMPTY: u32 = u32::MAX;

/// A name's slot hash: SipHash with this process's random keys, with the record kind mixed in
/// (entries and whiteouts share the table). Layers are untrusted: with an unkeyed hash, names
/// picked to share slots made one probe cluster and each lookup in the directory linear (a
/// 100k-name directory listed in 88 s instead of 4).
fn name_hash(whiteout: bool, name: &[u8]) -> u64 {
    static KEYS: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    std::hash::BuildHasher::hash_one(KEYS.get_or_init(Default::default), (whiteout, name))
}

/// Record kind for a whiteout (`.wh.X` hides X below this layer).
const IX_WHITEOUT: u8 = 0xff;

impl DirIndex {
    pub(crate) fn from_raw(raw: &[sys::DirEntry]) -> DirIndex {
        let slots = (raw.len() * 4 / 3 + 1).next_power_of_two().max(4);
        let mut ix = DirIndex { arena: Vec::with_capacity(raw.len() * 12), table: vec![EMPTY; slots] };
        for e in raw {
            match whiteout::classify(&e.name) {
                EntryClass::Whiteout(t) => ix.push(IX_WHITEOUT, t, 0),
                EntryClass::OpaqueMarker | EntryClass::Reserved => {}
                EntryClass::Plain => ix.push(e.dtype, &e.name, e.ino),
            }
        }
        ix.arena.shrink_to_fit();
        ix
    }

    fn push(&mut self, kind: u8, name: &[u8], ino: u64) {
        // Names longer than 255 bytes cannot exist (NAME_MAX); the arena offset fits in u32
        // for any directory a filesystem can hold (4 GiB of names).
        let (Ok(len), Ok(off)) = (u8::try_from(name.len()), u32::try_from(self.arena.len())) else {
            return;
        };
        if off == EMPTY {
            return;
        }
        self.arena.push(len);
        self.arena.extend_from_slice(name);
        self.arena.push(kind);
        if kind == libc::DT_DIR {
            self.arena.extend_from_slice(&ino.to_ne_bytes());
        }
        let mask = self.table.len() - 1;
        let mut i = name_hash(kind == IX_WHITEOUT, name) as usize & mask;
        while self.table[i] != EMPTY {
            i = (i + 1) & mask;
        }
        self.table[i] = off;
    }

    fn record(&self, off: u32) -> (&[u8], u8, u64) {
        let o = off as usize;
        let len = self.arena[o] as usize;
        let name = &self.arena[o + 1..o + 1 + len];
        let kind = self.arena[o + 1 + len];
        let mut ino = [0u8; 8];
        if kind == libc::DT_DIR {
            ino.copy_from_slice(&self.arena[o + 2 + len..o + 10 + len]);
        }
        (name, kind, u64::from_ne_bytes(ino))
    }

    fn find(&self, whiteout: bool, name: &[u8]) -> Option<(u8, u64)> {
        if self.table.is_empty() {
            return None;
        }
        let mask = self.table.len() - 1;
        let mut i = name_hash(whiteout, name) as usize & mask;
        loop {
            let off = self.table[i];
            if off == EMPTY {
                return None;
            }
            let (n, k, ino) = self.record(off);
            if n == name && (k == IX_WHITEOUT) == whiteout {
                return Some((k, ino));
            }
            i = (i + 1) & mask;
        }
    }

    /// `(dtype, d_ino)` of a name present in this layer directory; the inode number is kept
    /// for directories only (0 for other kinds).
    pub(crate) fn entry(&self, name: &[u8]) -> Option<(u8, u64)> {
        self.find(false, name)
    }

    /// How many names the index holds (entries and whiteouts).
    pub(crate) fn len(&self) -> usize {
        self.table.iter().filter(|&&o| o != EMPTY).count()
    }

    /// Every name this layer directory holds or whites out (`.wh.NAME` gives NAME).
    pub(crate) fn names(&self) -> impl Iterator<Item = &[u8]> {
        let mut o = 0usize;
        std::iter::from_fn(move || {
            if o >= self.arena.len() {
                return None;
            }
            let (name, kind, _) = self.record(o as u32);
            o += 2 + name.len() + if kind == libc::DT_DIR { 8 } else { 0 };
            Some(name)
        })
    }

    /// Whether this layer directory holds a `.wh.NAME` whiteout.
    pub(crate) fn whited_out(&self, name: &[u8]) -> bool {
        self.find(true, name).is_some()
    }
}

/// Directories merging this many lowers get a merged name index, and a lookup there opens the
/// name's lower directories in parallel.
const MANY_LOWERS: usize = 16;

/// Threads opening lower directories in parallel (I/O bound: more than the CPUs).
const PROBE_THREADS: usize = 8;

/// Runs `f(0..n)` on up to [`PROBE_THREADS`] threads, the caller's included.
fn par_for(n: usize, f: impl Fn(usize) + Sync) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            f(i);
        }
    };
    std::thread::scope(|sc| {
        for _ in 1..PROBE_THREADS.min(n) {
            sc.spawn(|| {
                crate::sys::free_thread();
                work()
            });
        }
        work();
    });
}

/// When the kernel has forgotten half of the nodes it held at most, and at least this many,
/// the freed memory goes back to the system: the allocator keeps freed blocks otherwise (the
/// nodes still held sit between them), and a server that walked a big tree once would stay at
/// its peak size for good.
const TRIM_MIN_NODES: usize = 4096;

/// Lower directories merging into one directory get an index from this many layers on.
const INDEX_MIN_LOWERS: usize = 2;

impl OverlayFs {
    /// Whether the server can give objects any owner (it runs as root).
    pub(crate) fn can_chown(&self) -> bool {
        self.own_ids.0 == 0
    }

    /// Opens the layers, prepares workdir, and builds the root node.
    pub fn new(opts: FsOptions) -> std::result::Result<OverlayFs, String> {
        let open_root = |p: &std::path::Path| -> std::result::Result<(Arc<OwnedFd>, u64), String> {
            let c = sys::cstr(p.as_os_str()).map_err(|e| format!("{}: {e}", p.display()))?;
            let fd = sys::open_trusted(&c, libc::O_PATH | libc::O_DIRECTORY, 0)
                .map_err(|e| format!("{}: {e}", p.display()))?;
            let st = sys::fstat(fd.as_fd()).map_err(|e| format!("{}: {e}", p.display()))?;
            Ok((Arc::new(fd), st.st_dev))
        };
        let mut roots = Vec::new();
        if let Some(u) = &opts.upper {
            roots.push((open_root(u)?, true));
        }
        for l in &opts.lowers {
            let (fd, dev) = open_root(l)?;
            // A lower layer is walked in a private copy of its mount without the mounts inside
            // it (what they cover shows, as on kernel overlayfs; the server never reads the
            // mounted filesystems), read-only and noatime (reads leave the layer's access
            // times alone, as the kernel's do). Where the server may not make one (a plain
            // user), the layer's directory itself.
            let c = sys::cstr(l.as_os_str()).map_err(|e| format!("{}: {e}", l.display()))?;
            let ino = sys::fstat(fd.as_fd()).map(|st| st.st_ino).ok();
            let fd = match sys::open_tree_clone(&c) {
                Ok(t) if sys::fstat(t.as_fd()).is_ok_and(|st| st.st_dev == dev && Some(st.st_ino) == ino) => {
                    if let Err(e) = sys::seal_mount(t.as_fd(), true) {
                        log::debug!("{}: private mount not made read-only and noatime: {e}", l.display());
                    }
                    Arc::new(t)
                }
                Ok(_) => fd,
                Err(e) => {
                    log::debug!("{}: no private copy of its mount ({e}): mounts inside it show", l.display());
                    fd
                }
            };
            roots.push(((fd, dev), false));
        }
        let mut devs: Vec<u64> = Vec::new();
        let n = roots.len();
        let mut layers: Vec<Layer> = roots
            .into_iter()
            .enumerate()
            .map(|(i, ((root, dev), is_upper))| {
                let idx = devs.iter().position(|d| *d == dev).unwrap_or_else(|| {
                    devs.push(dev);
                    devs.len() - 1
                });
                // (Its filesystem's UUID and decoder are set below, once per filesystem.)
                Layer {
                    root,
                    dev,
                    ino_base: (idx as u64) << 48,
                    is_upper,
                    is_bottom: i + 1 == n,
                    uuid: None,
                    decoder: None,
                }
            })
            .collect();
        // Once per filesystem: its UUID, and where origins naming its objects are read, the
        // descriptor that decodes them (see `origin_ino`).
        let upper_dev = layers.first().filter(|l| l.is_upper).map(|l| l.dev);
        let fs_ids: Vec<(u64, Option<[u8; 16]>)> = devs
            .iter()
            .map(|&d| {
                let l = layers.iter().find(|l| l.dev == d).expect("a layer per device");
                (d, sys::fs_uuid(l.root.as_fd()))
            })
            .collect();
        let lower_ids: Vec<(u64, Option<[u8; 16]>)> = fs_ids
            .iter()
            .copied()
            .filter(|&(d, _)| layers.iter().any(|l| l.dev == d && !l.is_upper))
            .collect();
        for &(d, uuid) in &fs_ids {
            let decodes = upper_dev.is_some() && layer::origin_decoder(d, uuid, upper_dev, &lower_ids);
            let mut decoder = None;
            for l in layers.iter_mut().filter(|l| l.dev == d) {
                l.uuid = uuid;
                if decodes && !l.is_upper && decoder.is_none() {
                    decoder =
                        sys::reopen(l.root.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY).ok().map(Arc::new);
                }
                l.decoder = decoder.clone().filter(|_| !l.is_upper);
            }
        }
        // Once per filesystem, not per layer (500 layers are usually on one disk).
        let disk_windows = devs.iter().map(|&d| (d, sys::disk_read_ahead_kb(d).map(|kb| kb << 10))).collect();
        let leaf_key = leaf_key(&layers.iter().map(|l| &*l.root).collect::<Vec<_>>());
        let has_upper = opts.upper.is_some();
        let mut work = None;
        let mut style = opts.whiteout.unwrap_or(WhiteoutStyle::CharDev);
        let mut trusted = false;
        let mut journal_orders = false;
        let euid = sys::geteuid();
        if let Some(w) = &opts.work {
            let (wroot, _) = open_root(w)?;
            let workdir = prepare_workdir(&wroot).map_err(|e| format!("workdir {}: {e}", w.display()))?;
            if opts.whiteout.is_none() {
                style = if probe_chardev_whiteout(&workdir) {
                    WhiteoutStyle::CharDev
                } else {
                    WhiteoutStyle::WhFile
                };
            }
            trusted = probe_trusted_xattr(&workdir);
            if let Some(n) = ovr_config_name(opts.xattr_permissions) {
                probe_xattr(&workdir, n).map_err(|e| {
                    format!(
                        "xattr_permissions={}: cannot write {} in the upper filesystem: {e}",
                        opts.xattr_permissions,
                        n.to_string_lossy()
                    )
                })?;
            }
            journal_orders = sys::journal_orders_rename(workdir.as_fd());
            log::debug!(
                "copy-ups {}",
                if journal_orders {
                    "wait for their data's write-back; the upper's journal orders their renames after it"
                } else {
                    "are fsynced before their renames"
                }
            );
            work = Some(Arc::new(workdir));
        }
        let ovr_names = override_names(&layers, opts.xattr_permissions)?;
        let mut acl = opts.acl && !opts.noxattrs;
        if acl {
            let names: Vec<&std::path::Path> =
                opts.upper.iter().chain(opts.lowers.iter()).map(|p| p.as_path()).collect();
            for (l, p) in layers.iter().zip(names) {
                let probe = sys::proc_fd_path(std::os::fd::AsRawFd::as_raw_fd(&*l.root), None);
                if let Err(e) = sys::getxattr(&probe, c"system.posix_acl_access", true) {
                    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                        log::warn!("POSIX ACLs off: {} does not support them", p.display());
                        acl = false;
                        break;
                    }
                }
            }
        }
        let upper_noatime = match &opts.upper {
            Some(u) if opts.noatime => {
                let c = sys::cstr(u.as_os_str()).map_err(|e| format!("{}: {e}", u.display()))?;
                // open_by_handle_at takes no O_PATH descriptor for its mount.
                let clone = sys::open_tree_clone(&c).and_then(|t| {
                    sys::seal_mount(t.as_fd(), false).and_then(|_| sys::reopen_dir(t.as_fd(), true))
                });
                match clone {
                    Ok(t) => Some(t),
                    Err(e) => {
                        log::debug!("{}: no private noatime copy of its mount ({e})", u.display());
                        None
                    }
                }
            }
            _ => None,
        };
        let fs = OverlayFs {
            opts: opts.clone(),
            layers,
            has_upper,
            work,
            journal_orders,
            disk_windows,
            upper_noatime,
            whiteout_style: style,
            trusted_xattrs: trusted,
            own_ids: (euid, sys::getegid()),
            write_ovr: opts.xattr_permissions != 0,
            ovr: ovr_names,
            acl: AtomicBool::new(acl),
            nodes: table::NodeTable::new(),
            read_asked: AtomicU64::new(0),
            upper_ids: Mutex::new(HashMap::new()),
            kept_ino: Mutex::new(HashMap::new()),
            dying: Mutex::new(Vec::new()),
            has_dying: AtomicBool::new(false),
            leaf_key,
            attrs_stale: OnceLock::new(),
            listing_stale: OnceLock::new(),
            files: RwLock::new(HashMap::new()),
            dirs: RwLock::new(HashMap::new()),
            listings: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(LISTING_CACHE).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
            next_fh: AtomicU64::new(1),
            tmp_seq: AtomicU64::new(1),
            writeback_cache: AtomicBool::new(false),
            ahead: ahead::ReadAhead::new(),
        };
        fs.init_root().map_err(|e| format!("layer roots: {e}"))?;
        Ok(fs)
    }

    fn init_root(&self) -> Result<()> {
        let mut upper = None;
        let mut upper_marks = DirMarks::default();
        let mut lower_dirs = Vec::new();
        let mut stop = false;
        for (i, l) in self.layers.iter().enumerate() {
            let marks = if l.is_bottom { layer::xattr_marks(&l.root) } else { layer::dir_marks(&l.root) };
            if l.is_upper {
                upper = Some(Loc::fixed_dir(l.root.clone()));
                upper_marks = marks;
                stop = marks.opaque;
            } else if !stop {
                lower_dirs.push(LowerDir::new(i, DirFd::fixed(l.root.clone()), marks));
                if marks.opaque {
                    stop = true;
                }
            }
        }
        let state = NodeState {
            parent: None,
            name: Arc::from(c""),
            kind: FileType::Directory,
            upper,
            upper_marks,
            lower_dirs: lower_dirs.into(),
            lower: None,
            unlinked: false,
        };
        let node = Node::new(ROOT_ID, 1, state);
        self.nodes.write(ROOT_ID).insert(ROOT_ID, lite::Slot::Full(node));
        Ok(())
    }

    /// Shown owner → on-disk owner (`u32::MAX` = unchanged passes through).
    pub(crate) fn disk_owner(&self, uid: u32, gid: u32) -> Result<(u32, u32)> {
        let map = |m: &IdMap, id: u32| -> Result<u32> {
            if id == u32::MAX {
                return Ok(id);
            }
            // As fuse-overlayfs: an id no range covers is stored as the overflow id.
            Ok(m.to_disk(id).unwrap_or(OVERFLOW_ID))
        };
        Ok((map(&self.opts.uid_map, uid)?, map(&self.opts.gid_map, gid)?))
    }

    /// With squash_to_*, chown failures are ignored (the owner shown is fixed anyway).
    pub(crate) fn squashing(&self) -> bool {
        self.opts.squash_uid.is_some() || self.opts.squash_gid.is_some()
    }

    /// Called once the kernel agreed to cache writes: from then on write-only opens get
    /// read-write descriptors (the kernel reads partly written pages through them).
    pub fn set_writeback_cache(&self) {
        self.writeback_cache.store(true, Ordering::Relaxed);
    }

    /// Which whiteout form this mount writes.
    pub fn whiteout_style(&self) -> WhiteoutStyle {
        self.whiteout_style
    }

    /// Whether walks are read ahead (`read_ahead=1`, see [`ahead`]).
    pub fn reads_ahead(&self) -> bool {
        self.opts.read_ahead
    }

    /// Starts the read-ahead workers where reading ahead is on (see [`ahead`]); called at
    /// FUSE's INIT rather than at the first lookup, whose answer would wait for the spawns.
    pub fn start_workers(&self) {
        if self.opts.read_ahead {
            self.ahead.start();
        }
    }

    /// True when nothing can be written (no upper layer, or `ro`).
    pub fn is_read_only(&self) -> bool {
        self.opts.read_only || !self.has_upper
    }

    /// Number of nodes the kernel currently holds (for tests and statistics).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// One line of statistics (SIGUSR1, as fuse-overlayfs answers it): nodes the kernel holds
    /// (how many of them lite entries), open file and directory handles, and the maps that
    /// keep copied-up objects' numbers ([`Self::kept_numbers`]).
    pub fn stats_line(&self) -> String {
        format!(
            "{} nodes ({} lite), {} open files, {} open directories, {} kept numbers",
            self.node_count(),
            self.lite_count(),
            self.files.read().len(),
            self.dirs.read().len(),
            self.kept_numbers()
        )
    }

    /// The node's current path in the merged tree (`/` for the root), by its parent links
    /// (for tracing and fault rules). None for an unknown or detached node. Read-only: each
    /// node's state is locked briefly, one at a time.
    pub fn path_of(&self, ino: u64) -> Option<std::path::PathBuf> {
        if ino == ROOT_ID {
            return Some("/".into());
        }
        let (mut parent, name) = self.parent_and_name(ino)?;
        let mut names: Vec<Vec<u8>> = vec![name];
        loop {
            let node = parent?;
            if node.ino == ROOT_ID {
                break;
            }
            if names.len() > 4096 {
                return None;
            }
            let s = node.state.lock();
            names.push(s.name.to_bytes().to_vec());
            parent = s.parent.clone();
        }
        let mut p = std::path::PathBuf::from("/");
        for n in names.iter().rev() {
            p.push(OsStr::from_bytes(n));
        }
        Some(p)
    }

    /// The xattr that keeps an upper object's append-only and immutable flags, as kernel
    /// overlayfs keeps them (`userxattr` form where trusted xattrs cannot be written): the
    /// real inode does not carry them, so the server can still copy up into an immutable
    /// directory, or replace a whiteout in an append-only one.
    pub(crate) fn protattr_name(&self) -> &'static CStr {
        if self.trusted_xattrs { c"trusted.overlay.protattr" } else { c"user.overlay.protattr" }
    }

    /// A node's append-only and immutable flags ([`PROT_APPEND`], [`PROT_IMMUTABLE`]), as the
    /// kernel's overlay inode has them: a lower object's own, an upper one's kept in
    /// `protattr`. The VFS checks them on a FUSE inode never (FUSE cannot
    /// set them there), so the server refuses what they forbid. Kept in the node once found.
    pub(crate) fn prot(&self, node: &Node) -> u8 {
        let p = node.prot.load(Ordering::Acquire);
        if p != PROT_UNKNOWN {
            return p;
        }
        let kind = node.state.lock().kind;
        let mut p = 0;
        if matches!(kind, FileType::RegularFile | FileType::Directory) {
            if let Some(top) = node.top() {
                if top.is_upper {
                    // The upper object's own flags the upper filesystem enforces on the
                    // server's operations on it; the ones the mount keeps are in protattr.
                    if !self.opts.noxattrs {
                        if let Ok(v) = top.loc.getxattr(self.protattr_name()) {
                            p |= protattr_bits(&v);
                        }
                    }
                } else if let Ok(a) = top.loc.live().and_then(|l| l.attributes()) {
                    if a & sys::STATX_ATTR_APPEND != 0 {
                        p |= PROT_APPEND;
                    }
                    if a & sys::STATX_ATTR_IMMUTABLE != 0 {
                        p |= PROT_IMMUTABLE;
                    }
                }
            }
        }
        node.prot.store(p, Ordering::Release);
        p
    }

    /// EPERM where the node has any of the `forbidding` flags ([`Self::prot`]).
    pub(crate) fn check_prot(&self, node: &Node, forbidding: u8) -> Result<()> {
        if self.prot(node) & forbidding != 0 { Err(Error::errno(libc::EPERM)) } else { Ok(()) }
    }

    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.opts.read_only || !self.has_upper {
            return Err(Error::new(libc::EROFS, "read-only mount"));
        }
        Ok(())
    }

    pub(crate) fn work_fd(&self) -> Result<&Arc<OwnedFd>> {
        self.work.as_ref().ok_or(Error::new(libc::EROFS, "no workdir"))
    }

    /// A fresh name for a temporary entry in workdir.
    pub(crate) fn tmp_name(&self) -> CString {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        CString::new(format!("#{:x}.{n}", std::process::id())).unwrap_or_default()
    }

    // ---- attributes -----------------------------------------------------------------------

    /// The attributes of node `id` from `st`, a stat of its object in layer `li`.
    pub(crate) fn attr_from_stat(&self, ino: u64, li: usize, st: &Stat, merged_dir: bool) -> Attr {
        let kind = kind_of(st.st_mode);
        let mut nlink = st.st_nlink as u32;
        if kind == FileType::Directory && (merged_dir || self.opts.static_nlink) {
            // As kernel overlayfs: counting subdirectories of a merged directory is not worth
            // it; nlink=1 tells find(1) and friends not to rely on it.
            nlink = 1;
        }
        let attr = FileAttr {
            ino: INodeNo(ino),
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: systime(st.st_atime, st.st_atime_nsec),
            mtime: systime(st.st_mtime, st.st_mtime_nsec),
            ctime: systime(st.st_ctime, st.st_ctime_nsec),
            crtime: UNIX_EPOCH,
            kind,
            perm: (st.st_mode & 0o7777) as u16,
            nlink,
            uid: self.opts.squash_uid.unwrap_or_else(|| self.opts.uid_map.to_shown(st.st_uid)),
            gid: self.opts.squash_gid.unwrap_or_else(|| self.opts.gid_map.to_shown(st.st_gid)),
            rdev: st.st_rdev as u32,
            blksize: st.st_blksize as u32,
            flags: 0,
        };
        Attr { attr, st_ino: self.shown_ino(ino, li, st) }
    }

    /// The inode number node `id` shows, from `st`, a stat of its object in layer `li`:
    /// - a directory: its id (the real number of its topmost lower directory, else of its
    ///   upper one; see `resolve`);
    /// - a lower non-directory: its real number in its layer, as on kernel overlayfs, so that
    ///   two names of one hard link there show one number (tar, du and `cp -a` take them for
    ///   one file), though they are two nodes (writing through one name copies up that name
    ///   only, as the kernel without `index=on` does);
    /// - an upper one: its id, or, copied up from a lower file in this mount, the number it
    ///   showed before ([`Self::kept_ino`]).
    pub(crate) fn shown_ino(&self, id: u64, li: usize, st: &Stat) -> u64 {
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            id
        } else if !self.layers[li].is_upper {
            self.ino_raw(li, st.st_ino)
        } else {
            self.kept_or(id)
        }
    }

    /// What a copied-up lower non-directory `id` kept, or `id`. Only the ids of lower
    /// non-directories ([`lower_leaf_id`]) start with the bits [`LEAF_PREFIX`]; the one
    /// other kind that may, an inode number [`Self::ino_raw`] moved off 0 or the root's id,
    /// is never in the map.
    fn kept_or(&self, id: u64) -> u64 {
        if id >> 62 != LEAF_PREFIX >> 62 {
            return id;
        }
        self.kept_ino.lock().get(&id).map_or(id, |k| k.ino)
    }

    /// The name of the xattr of a copy-up's origin ([`crate::origin`]) in this mount's form.
    pub(crate) fn origin_xattr(&self) -> &'static CStr {
        if self.trusted_xattrs { whiteout::TRUSTED_ORIGIN } else { whiteout::USER_ORIGIN }
    }

    /// The name of the "may hold copies" mark of an upper directory in this mount's form.
    pub(crate) fn impure_xattr(&self) -> &'static CStr {
        if self.trusted_xattrs { whiteout::TRUSTED_IMPURE } else { whiteout::USER_IMPURE }
    }

    /// The number upper non-directory `cn` of `dir` (`fmt`: its real `S_IFMT`, None to stat
    /// it) shows from the lower object its `overlay.origin` names, as kernel overlayfs shows
    /// it: the handle is opened on the lower filesystem with the recorded UUID whose origins
    /// are read ([`layer::origin_decoder`]). None where it has no origin, the object is gone,
    /// of another type, or linked more than once (the kernel records no origin for a copy-up
    /// of such a file, and a copy-up in this mount shows the copy's number).
    ///
    /// Only where the server may decode handles (root, which alone records them; a user
    /// namespace's kernel records empty ones): elsewhere nothing is read.
    pub(crate) fn origin_ino(&self, dir: BorrowedFd, cn: &CStr, fmt: Option<u32>) -> Option<u64> {
        if !self.trusted_xattrs {
            return None;
        }
        let mut buf = [0u8; 256];
        let n = sys::XattrAt::Name(dir.as_raw_fd(), cn).get_into(self.origin_xattr(), &mut buf).ok()?;
        let o = crate::origin::decode(&buf[..n.min(buf.len())])?;
        let (li, l) =
            self.layers.iter().enumerate().find(|(_, l)| l.decoder.is_some() && l.uuid == Some(o.uuid))?;
        let obj = sys::open_by_handle_at(l.decoder.as_ref()?.as_fd(), o.handle_type, &o.handle).ok()?;
        let st = sys::fstat(obj.as_fd()).ok()?;
        let fmt = match fmt {
            Some(f) => f,
            None => sys::fstatat(dir, cn).ok()?.st_mode & libc::S_IFMT,
        };
        (st.st_mode & libc::S_IFMT == fmt && st.st_nlink == 1).then(|| self.ino_raw(li, st.st_ino))
    }

    /// The node id of upper non-directory `cn` of `parent` (`st`, its stat), whose upper
    /// directory `dir` has `marks`: the id it was mapped to (a copy-up in this
    /// mount), else, in a directory marked impure, where its `overlay.origin` names a lower
    /// object ([`Self::origin_ino`]), a lower file's id mapped to that object's number, as a
    /// copy-up in this mount leaves it; else its own number.
    pub(crate) fn upper_leaf_id(
        &self,
        parent: &Node,
        cn: &CStr,
        dir: &Arc<OwnedFd>,
        marks: DirMarks,
        st: &Stat,
    ) -> (u64, Option<Kept>) {
        let (ino, fmt) = (st.st_ino, st.st_mode & libc::S_IFMT);
        let key = self.layers[0].ino_base ^ ino;
        if let Some(id) = self.upper_ids.lock().get(&key).copied() {
            // (Numbers read from origins only where the server reads them: no second lock
            // per lookup elsewhere.)
            let kept = self.trusted_xattrs.then(|| self.kept_ino.lock().get(&id).copied()).flatten();
            return (id, kept.filter(|k| k.origin_key.is_some()));
        }
        let own = self.ino_raw(0, ino);
        if !marks.impure || fmt == libc::S_IFDIR {
            return (own, None);
        }
        let Some(shown) = self.origin_ino(dir.as_fd(), cn, Some(fmt)) else {
            return (own, None);
        };
        let kept = Kept { ino: shown, origin_key: Some(key) };
        let id = self.free_leaf_id(parent.ino, cn.to_bytes());
        (self.keep_origin(id, kept), Some(kept))
    }

    /// Maps a node id to the number its origin gave it ([`Self::upper_leaf_id`]), unless its
    /// upper inode is mapped already; returns the id mapped. Called again once the node is
    /// in the table: its maps may have gone with a node of that id the kernel forgot meanwhile
    /// ([`Self::forget`]).
    /// `id` itself keeps the number too: a node installed under it while another name of
    /// the same upper inode got mapped meanwhile shows the same number.
    pub(crate) fn keep_origin(&self, id: u64, kept: Kept) -> u64 {
        let Some(key) = kept.origin_key else { return id };
        let mapped = *self.upper_ids.lock().entry(key).or_insert(id);
        let mut k = self.kept_ino.lock();
        k.entry(id).or_insert(kept);
        k.entry(mapped).or_insert(kept);
        mapped
    }

    pub(crate) fn node_attr(&self, node: &Node) -> Result<Attr> {
        let merged = {
            let s = node.state.lock();
            let layers = s.lower_dirs.len() + usize::from(s.upper.is_some());
            s.kind == FileType::Directory && layers > 1
        };
        let top = node.top().ok_or(Error::new(libc::ESTALE, "node without object"))?;
        let st = self.stat_eff(&top.loc, top.layer).map_err(|e| Error::io(e, "stat"))?;
        let li = top.layer;
        drop(top);
        Ok(self.attr_from_stat(node.ino, li, &st, merged))
    }

    /// Whether owners and modes of some layer (or of new upper objects) live in override
    /// xattrs.
    pub fn reads_override_xattrs(&self) -> bool {
        self.write_ovr || self.ovr.iter().any(Option::is_some)
    }

    /// Whether POSIX ACLs are on for this mount.
    pub fn acl_enabled(&self) -> bool {
        self.acl.load(Ordering::Relaxed)
    }

    /// Switches POSIX ACLs off (the kernel does not offer them).
    pub fn disable_acl(&self, why: &str) {
        if self.acl.swap(false, Ordering::Relaxed) {
            log::warn!("POSIX ACLs off: {why}");
        }
    }

    /// The override recorded on a real object of layer `li`, when that layer's objects are read
    /// with one. A malformed value is ignored with a warning.
    pub(crate) fn read_override(&self, loc: &Loc, li: usize) -> Option<ovr::Override> {
        let name = self.ovr.get(li).copied().flatten()?;
        let v = loc.getxattr(name).ok()?;
        match ovr::parse(&v) {
            Ok(o) => Some(o),
            Err(e) => {
                log::warn!("ignoring malformed {}: {e}", name.to_string_lossy());
                None
            }
        }
    }

    /// Applies the override of a real object (layer `li`) to its stat.
    pub(crate) fn apply_override(&self, st: &mut Stat, loc: &Loc, li: usize) {
        if self.ovr.get(li).copied().flatten().is_none() {
            return;
        }
        // Any type may carry one: fifos, sockets, symlinks and devices where the xattr could
        // be set (`security.*`, or on a device node), regular files standing for devices.
        if let Some(o) = self.read_override(loc, li) {
            if let Some((mode, uid, gid, rdev)) = ovr::apply(&o, st.st_mode, st.st_rdev) {
                st.st_mode = mode;
                st.st_uid = uid;
                st.st_gid = gid;
                st.st_rdev = rdev;
            }
        }
    }

    /// The stat of a real object of layer `li` as the mount shows it (override applied).
    pub(crate) fn stat_eff(&self, loc: &Loc, li: usize) -> std::io::Result<Stat> {
        let mut st = loc.stat()?;
        self.apply_override(&mut st, loc, li);
        Ok(st)
    }

    // ---- lookup ---------------------------------------------------------------------------

    /// Probes one layer directory for `name`: `(probe, what was found)`.
    pub(crate) fn probe(
        &self,
        dir: &Arc<OwnedFd>,
        dir_marks: DirMarks,
        name: &[u8],
        cname: &CStr,
        bottom: bool,
    ) -> Result<(Probe, Option<Found>)> {
        let st = match sys::fstatat(dir.as_fd(), cname) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                if !bottom && self.has_wh_file(dir, name) {
                    return Ok((Probe::Whiteout, None));
                }
                return Ok((Probe::Absent, None));
            }
            Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => {
                return Ok((Probe::Absent, None));
            }
            Err(e) => return Err(Error::io(e, "lookup")),
        };
        if layer::is_whiteout_entry(dir, cname, &st, dir_marks) {
            return Ok((Probe::Whiteout, None));
        }
        let fmt = st.st_mode & libc::S_IFMT;
        if fmt == libc::S_IFDIR {
            let fd = layer::open_dir_at(dir.as_fd(), cname).map_err(|e| Error::io(e, "open dir"))?;
            let fd = Arc::new(fd);
            // (At the bottom opacity hides nothing, but `opaque=x` still marks xattr
            // whiteouts, which the kernel's lookup hides there too.)
            let mut marks = if bottom { layer::xattr_marks(&fd) } else { layer::dir_marks(&fd) };
            if !bottom && !marks.opaque && self.has_wh_file(dir, name) {
                // A directory next to its own whiteout: nothing below shows through.
                marks.opaque = true;
            }
            return Ok((
                Probe::Dir { opaque: marks.opaque },
                Some(Found::Dir { ino: st.st_ino, fd, marks, index: None }),
            ));
        }
        Ok((Probe::NonDir, Some(Found::NonDir { mode: st.st_mode, st: Some(st) })))
    }

    /// A lower directory's index, read now if it has none yet; None when it gets none (too
    /// few lowers merge there).
    fn lower_index<'a>(&self, ld: &'a LowerDir, nlowers: usize) -> Result<Option<&'a DirIndex>> {
        if let Some(ix) = ld.index.get() {
            return Ok(Some(ix));
        }
        if nlowers < INDEX_MIN_LOWERS {
            return Ok(None);
        }
        let rfd = sys::reopen_dir(dir_open(&ld.fd)?.as_fd(), true).map_err(|e| Error::io(e, "opendir"))?;
        let raw = sys::read_dir_all(rfd.as_fd()).map_err(|e| Error::io(e, "readdir"))?;
        Ok(Some(ld.index.get_or_init(|| DirIndex::from_raw(&raw))))
    }

    /// The first position in `lowers` that can matter to `name` (has it or whites it out);
    /// `lowers.len()` when none does. 0 (probe them all) below [`MANY_LOWERS`] lowers. Reads
    /// every lower's index first, in parallel.
    fn first_position(&self, lowers: &LowerDirs, name: &[u8]) -> usize {
        let Some(inner) = lowers.0.as_ref().filter(|i| i.dirs.len() >= MANY_LOWERS) else {
            return 0;
        };
        let map = match inner.first.get() {
            Some(m) => m,
            None => {
                let dirs = &inner.dirs;
                let missing: Vec<&LowerDir> = dirs.iter().filter(|ld| ld.index.get().is_none()).collect();
                par_for(missing.len(), |i| _ = self.lower_index(missing[i], dirs.len()));
                if dirs.iter().any(|ld| ld.index.get().is_none()) {
                    return 0; // unreadable listing: let the probes report it
                }
                let mut m: HashMap<Box<[u8]>, u32> = HashMap::new();
                for (pos, ld) in dirs.iter().enumerate() {
                    for n in ld.index.get().into_iter().flat_map(DirIndex::names) {
                        m.entry(n.into()).or_insert(pos as u32);
                    }
                }
                inner.first.get_or_init(|| m)
            }
        };
        map.get(name).map_or(lowers.len(), |&p| p as usize)
    }

    /// [`OverlayFs::first_position`] without reading anything: 0 below [`MANY_LOWERS`], the
    /// merged map's answer once it is built, None before.
    fn known_first_position(&self, lowers: &LowerDirs, name: &[u8]) -> Option<usize> {
        match lowers.0.as_ref().filter(|i| i.dirs.len() >= MANY_LOWERS) {
            None => Some(0),
            Some(inner) => inner.first.get().map(|m| m.get(name).map_or(lowers.len(), |&p| p as usize)),
        }
    }

    /// A directory of a lower layer, opened, with its marks.
    fn open_lower_subdir(&self, ld: &LowerDir, cname: &CStr) -> Result<(Arc<OwnedFd>, DirMarks)> {
        let fd = Arc::new(
            layer::open_dir_at(dir_open(&ld.fd)?.as_fd(), cname).map_err(|e| Error::io(e, "open dir"))?,
        );
        let marks =
            if self.layers[ld.layer].is_bottom { layer::xattr_marks(&fd) } else { layer::dir_marks(&fd) };
        Ok((fd, marks))
    }

    /// A directory of a lower layer opened, with its marks (as [`Self::open_lower_subdir`]),
    /// and its index when it is small ([`PREFETCH_LIST_MAX`]): looking for the opaque marker
    /// read its first block already, and a lookup below it will want the listing.
    fn read_lower_subdir(&self, ld: &LowerDir, cname: &CStr) -> Result<Prefetched> {
        let (fd, marks) = self.open_lower_subdir(ld, cname)?;
        let index = sys::fstat(fd.as_fd())
            .is_ok_and(|st| st.st_size <= PREFETCH_LIST_MAX)
            .then(|| sys::reopen_dir(fd.as_fd(), true).and_then(|r| sys::read_dir_all(r.as_fd())).ok())
            .flatten()
            .map(|raw| Arc::new(std::sync::OnceLock::from(DirIndex::from_raw(&raw))));
        Ok(Prefetched { fd, marks, index })
    }

    /// For a name looked up below many lower directories ([`MANY_LOWERS`]), from position
    /// `from` on: reads, on [`PROBE_THREADS`] threads, each lower directory's index where it
    /// has none yet, and opens (and, small, lists: [`Self::read_lower_subdir`]) the name's
    /// directory wherever the index shows one, down to the first layer whose index shows the
    /// name as a non-directory or whites it out (nothing below merges). Cold, each is an inode
    /// and a directory block or two to read, and one at a time a 500-layer lookup waits for
    /// 1500 reads in a row; in parallel, and without waiting for every index before opening the
    /// first directory, the disk serves them together. The listings become the directories'
    /// indexes where those merge [`INDEX_MIN_LOWERS`] or more lower directories (a lookup below
    /// would read them). Errors are left for the sequential probe. Returns what was opened, by
    /// position in `lowers` (empty below [`MANY_LOWERS`], and when every index is read and
    /// fewer than [`MANY_LOWERS`] directories are to open).
    fn prefetch_lower_dirs(
        &self,
        lowers: &LowerDirs,
        from: usize,
        name: &[u8],
        cname: &CStr,
    ) -> Vec<Option<Prefetched>> {
        if lowers.len() < MANY_LOWERS || from >= lowers.len() {
            return Vec::new();
        }
        let is_dir = |ld: &LowerDir| {
            ld.index.get().is_some_and(|ix| matches!(ix.entry(name), Some((libc::DT_DIR, _))))
        };
        let mut work = Vec::new();
        for (i, ld) in lowers.iter().enumerate().skip(from) {
            let Some(ix) = ld.index.get() else {
                work.push(i);
                continue;
            };
            match ix.entry(name) {
                Some((libc::DT_DIR, _)) => work.push(i),
                Some(_) => break,
                None => {}
            }
            if ix.whited_out(name) {
                break;
            }
        }
        let reads = work.iter().filter(|&&i| lowers[i].index.get().is_none()).count();
        if reads == 0 && work.len() < MANY_LOWERS {
            return Vec::new(); // a few directories to open: threads would cost more
        }
        let slots: Vec<std::sync::OnceLock<Prefetched>> =
            (0..lowers.len()).map(|_| Default::default()).collect();
        par_for(work.len(), |k| {
            let ld = &lowers[work[k]];
            if self.lower_index(ld, lowers.len()).is_ok() && is_dir(ld) {
                if let Ok(d) = self.read_lower_subdir(ld, cname) {
                    let _ = slots[work[k]].set(d);
                }
            }
        });
        slots.into_iter().map(|s| s.into_inner()).collect()
    }

    /// Probes a lower directory, through its index when it has (or should get) one. `pre`:
    /// the name's directory there, when already opened.
    pub(crate) fn probe_lower(
        &self,
        ld: &LowerDir,
        nlowers: usize,
        name: &[u8],
        cname: &CStr,
        pre: Option<Prefetched>,
    ) -> Result<(Probe, Option<Found>)> {
        let bottom = self.layers[ld.layer].is_bottom;
        let Some(ix) = self.lower_index(ld, nlowers)? else {
            return self.probe(&dir_open(&ld.fd)?, ld.marks, name, cname, bottom);
        };
        let whited = !bottom && ix.whited_out(name);
        let Some((dtype, ino)) = ix.entry(name) else {
            return Ok((if whited { Probe::Whiteout } else { Probe::Absent }, None));
        };
        match dtype {
            libc::DT_DIR => {
                let (fd, mut marks, index) = match pre {
                    Some(p) => (p.fd, p.marks, p.index),
                    None => {
                        let (fd, marks) = self.open_lower_subdir(ld, cname)?;
                        (fd, marks, None)
                    }
                };
                marks.opaque |= whited;
                Ok((Probe::Dir { opaque: marks.opaque }, Some(Found::Dir { ino, fd, marks, index })))
            }
            libc::DT_REG if !ld.marks.xattr_whiteouts => {
                Ok((Probe::NonDir, Some(Found::NonDir { mode: libc::S_IFREG, st: None })))
            }
            libc::DT_LNK => Ok((Probe::NonDir, Some(Found::NonDir { mode: libc::S_IFLNK, st: None }))),
            libc::DT_FIFO => Ok((Probe::NonDir, Some(Found::NonDir { mode: libc::S_IFIFO, st: None }))),
            libc::DT_SOCK => Ok((Probe::NonDir, Some(Found::NonDir { mode: libc::S_IFSOCK, st: None }))),
            libc::DT_BLK => Ok((Probe::NonDir, Some(Found::NonDir { mode: libc::S_IFBLK, st: None }))),
            // Char devices may be whiteouts, unknown types need a stat: ask the layer.
            _ => self.probe(&dir_open(&ld.fd)?, ld.marks, name, cname, bottom),
        }
    }

    fn has_wh_file(&self, dir: &Arc<OwnedFd>, name: &[u8]) -> bool {
        match name::whiteout_name(name).and_then(|w| CString::new(w).ok()) {
            Some(w) => sys::exists_at(dir.as_fd(), &w).unwrap_or(false),
            None => false,
        }
    }

    /// Resolves `name` in a directory node's layers. Returns the id it would get, the new
    /// state (without parent) and, for a non-directory its probe stat'ed, that stat (as on
    /// disk); None when nothing is visible. `lookup`: a lookup by the kernel, which reads the
    /// directory's lower entries ahead ([`OverlayFs::looked_up`]).
    pub(crate) fn resolve(&self, parent: &Node, name: &[u8], lookup: bool) -> Result<Option<Resolved>> {
        let cn = arc_cname(name)?;
        let (upper_dir, upper_marks, lowers) = {
            let s = parent.state.lock();
            if s.kind != FileType::Directory {
                return Err(Error::errno(libc::ENOTDIR));
            }
            (s.upper.as_ref().and_then(|u| u.dir_fd().cloned()), s.upper_marks, s.lower_dirs.clone())
        };
        let mut resolver = Resolver::new();
        let mut found: Vec<(usize, Found, DirFd)> = Vec::new();
        let probed = (|| -> Result<()> {
            let mut go = true;
            if let Some(ud) = &upper_dir {
                let (p, f) = self.probe(&dir_open(ud)?, upper_marks, name, &cn, lowers.is_empty())?;
                if let Some(f) = f {
                    found.push((0, f, ud.clone()));
                }
                go = resolver.feed(p);
            } else {
                resolver.feed(Probe::Absent);
            }
            if go {
                // Where the name first matters, when the lowers' indexes say already: the
                // prefetch need not look above it.
                let known = self.known_first_position(&lowers, name);
                let mut pre = self.prefetch_lower_dirs(&lowers, known.unwrap_or(0), name, &cn);
                let start = known.unwrap_or_else(|| self.first_position(&lowers, name));
                resolver.skip_absent(start);
                for (i, ld) in lowers.iter().enumerate().skip(start) {
                    let pre = pre.get_mut(i).and_then(Option::take);
                    let (p, f) = self.probe_lower(ld, lowers.len(), name, &cn, pre)?;
                    if let Some(f) = f {
                        found.push((ld.layer, f, ld.fd.clone()));
                    }
                    if !resolver.feed(p) {
                        break;
                    }
                }
            }
            Ok(())
        })();
        if lookup {
            self.looked_up(&lowers);
        }
        probed?;
        // Resolver positions: 0 = upper slot (always fed), i+1 = lowers[i]. `found` holds layer
        // indices; map the resolution through them.
        let res = resolver.finish();
        let pos_to_layer = |pos: usize| -> usize { if pos == 0 { 0 } else { lowers[pos - 1].layer } };
        let find = |layer: usize| found.iter().find(|(l, _, _)| *l == layer);
        match res {
            Resolution::Negative => Ok(None),
            Resolution::NonDir { layer: pos } => {
                let li = pos_to_layer(pos);
                let Some((_, Found::NonDir { mode, st }, dirfd)) = find(li) else {
                    return Err(Error::new(libc::EIO, "resolve"));
                };
                let is_upper = pos == 0 && upper_dir.is_some();
                let (id, kept) = if is_upper {
                    let st = st.ok_or(Error::new(libc::EIO, "resolve: upper without its stat"))?;
                    self.upper_leaf_id(parent, &cn, &dir_open(dirfd)?, upper_marks, &st)
                } else {
                    (self.free_leaf_id(parent.ino, name), None)
                };
                let state = if is_upper {
                    let loc = Loc::At(dirfd.clone(), cn.clone());
                    NodeState::non_dir(cn.clone(), kind_of(*mode), Some(loc), None)
                } else {
                    NodeState::non_dir(cn.clone(), kind_of(*mode), None, Some((li, dirfd.clone())))
                };
                Ok(Some((id, state, *st, kept)))
            }
            Resolution::Dir { layers } => {
                let mut upper = None;
                let mut umarks = DirMarks::default();
                let mut lower_dirs = Vec::new();
                let mut id = None;
                let mut upper_id = None;
                // Indexes read ahead are kept where a lazily read one would be.
                let keep_index = layers.iter().filter(|&&pos| pos != 0).count() >= INDEX_MIN_LOWERS;
                for pos in layers {
                    let li = pos_to_layer(pos);
                    let Some((_, Found::Dir { ino, fd, marks, index }, pdir)) = find(li) else {
                        return Err(Error::new(libc::EIO, "resolve dir"));
                    };
                    // The number of the topmost lower directory where there is one: it stays
                    // the same once the directory is copied up, also after a remount, and so do
                    // those of the lower files in it (see `lower_leaf_id`).
                    if pos == 0 && upper_dir.is_some() {
                        upper_id = Some(self.ino_for(li, *ino));
                    } else if id.is_none() {
                        id = Some(self.ino_for(li, *ino));
                    }
                    if pos == 0 && upper_dir.is_some() {
                        upper = Some(Loc::Dir(DirFd::child(pdir, cn.clone(), fd.clone(), *ino)));
                        umarks = *marks;
                    } else {
                        let d = DirFd::child(pdir, cn.clone(), fd.clone(), *ino);
                        let index = index.clone().filter(|_| keep_index);
                        lower_dirs.push(LowerDir::with_index(li, d, *marks, index));
                    }
                }
                let state = NodeState {
                    parent: None,
                    name: cn.clone(),
                    kind: FileType::Directory,
                    upper,
                    upper_marks: umarks,
                    lower_dirs: lower_dirs.into(),
                    lower: None,
                    unlinked: false,
                };
                Ok(Some((id.or(upper_id).unwrap_or(0), state, None, None)))
            }
        }
    }

    /// The node id for a real inode found in layer `li` (directories, and upper objects).
    pub(crate) fn ino_for(&self, li: usize, real_ino: u64) -> u64 {
        let l = &self.layers[li];
        if l.is_upper {
            if let Some(mapped) = self.upper_ids.lock().get(&(l.ino_base ^ real_ino)) {
                return *mapped;
            }
        }
        self.ino_raw(li, real_ino)
    }

    /// A real inode number of layer `li`, offset per filesystem ([`Layer::ino_base`]), never
    /// the root's id or 0.
    pub(crate) fn ino_raw(&self, li: usize, real_ino: u64) -> u64 {
        let base = self.layers[li].ino_base;
        if real_ino >> 48 != 0 {
            // A filesystem whose numbers reach the bits that tell filesystems apart (a FUSE
            // or NFS layer, a nested overlay): offset, they could meet another filesystem's.
            return big_ino(self.leaf_key, base, real_ino);
        }
        let id = base ^ real_ino;
        if id == ROOT_ID || id == 0 { id ^ (1 << 63) } else { id }
    }

    /// Looks up `name` in directory `parent` and takes a kernel reference on the result.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr> {
        let name = name.as_bytes();
        name::validate(name).map_err(|e| Error::errno(e.errno()))?;
        if name::is_reserved(name) {
            return Err(Error::errno(libc::ENOENT));
        }
        let pnode = self.node(parent)?;
        let _g = pnode.dir_lock.read();
        let Some((id, state, seen, kept)) = self.resolve(&pnode, name, true)? else {
            return Err(Error::errno(libc::ENOENT));
        };
        // The probe's stat of the object found, taken just now under the same lock, is its
        // answer (with the layer's override applied): no second stat of it.
        let eff = |loc: &Loc, li: usize| -> Result<Stat> {
            match seen {
                Some(mut st) => {
                    self.apply_override(&mut st, loc, li);
                    Ok(st)
                }
                None => self.stat_eff(loc, li).map_err(|e| Error::io(e, "stat")),
            }
        };
        if let Some((layer, fd)) = lite::lite_layer(&state) {
            // A lower file: a lite entry, unless a full node has its id already.
            let loc = Loc::At(fd, state.name.clone());
            let st = eff(&loc, usize::from(layer))?;
            if self.add_lite(id, &pnode, name, layer, state.kind) {
                return Ok(self.attr_from_stat(id, usize::from(layer), &st, false));
            }
        }
        // An upper non-directory found by its probe: that stat. (A node it joins that keeps
        // an upper of its own has the same inode under another name: the id is the inode's.)
        let upper_st = match (&state.upper, seen) {
            (Some(loc), Some(_)) => Some(eff(loc, 0)?),
            _ => None,
        };
        let node = self.install_child(&pnode, id, state);
        if let Some(k) = kept {
            self.keep_origin(id, k);
        }
        let attr = match upper_st {
            Some(st) => self.attr_from_stat(node.ino, 0, &st, false),
            None => self.node_attr(&node)?,
        };
        node.lookups.fetch_add(1, Ordering::Relaxed);
        Ok(attr)
    }

    /// Resolves a child and installs (or refreshes) its node; the caller holds the parent's
    /// `dir_lock` (shared or exclusive). Does not take a kernel reference.
    pub(crate) fn lookup_locked(&self, pnode: &Arc<Node>, name: &[u8]) -> Result<Option<Arc<Node>>> {
        // No per-directory map of children is kept (memory per node, for little: the kernel
        // caches entries); a resolution finds a live node again by its id.
        Ok(self.resolve(pnode, name, false)?.map(|(id, state, _, kept)| {
            let node = self.install_child(pnode, id, state);
            if let Some(k) = kept {
                self.keep_origin(id, k);
            }
            node
        }))
    }

    /// Installs a child of `pnode` resolved by [`OverlayFs::resolve`].
    fn install_child(&self, pnode: &Arc<Node>, id: u64, mut state: NodeState) -> Arc<Node> {
        state.parent = Some(pnode.clone());
        self.install(id, state)
    }

    /// The id for lower non-directory `name` in directory `parent`: [`lower_leaf_id`], unless
    /// the table holds that id for another object (a collision, which the keyed hash makes
    /// all but impossible), then the first salted one that is free or this object's.
    fn free_leaf_id(&self, parent: u64, name: &[u8]) -> u64 {
        for salt in 0.. {
            let id = lower_leaf_id(self.leaf_key, parent, name, salt);
            let full = match self.nodes.read(id).get(&id) {
                None => return id,
                Some(lite::Slot::Lite(l)) if l.parent.ino == parent && l.name.as_bytes() == name => {
                    return id;
                }
                Some(lite::Slot::Lite(_)) => None,
                Some(lite::Slot::Full(n)) => Some(n.clone()),
            };
            if let Some(n) = full {
                // (Held elsewhere, maybe by this thread: taken as this object's, as before.)
                let Some(s) = n.state.try_lock() else { return id };
                if s.parent.as_ref().is_some_and(|p| p.ino == parent) && s.name.to_bytes() == name {
                    return id;
                }
            }
            log::warn!(
                "node id {id:#x} is taken by another object: {:?} gets another",
                String::from_utf8_lossy(name)
            );
        }
        unreachable!("salts run out")
    }

    /// Puts a resolved node in the table (reusing a live node with the same id).
    pub(crate) fn install(&self, id: u64, state: NodeState) -> Arc<Node> {
        let mut nodes = self.nodes.write(id);
        let lookups = match nodes.get(&id) {
            Some(lite::Slot::Full(existing)) => {
                let existing = existing.clone();
                drop(nodes);
                {
                    let mut s = existing.state.lock();
                    // A node that was copied up keeps its upper (another name of a hard
                    // link, or a re-lookup); otherwise take the fresh resolution.
                    if s.upper.is_none() || s.unlinked || s.kind != state.kind {
                        *s = state;
                        // Another object now: what was known of the old one is not of it.
                        existing.facts.store(0, Ordering::Release);
                    } else {
                        s.parent = state.parent;
                        s.name = state.name;
                        s.unlinked = false;
                    }
                    existing.has_upper.store(s.upper.is_some(), Ordering::Release);
                }
                return existing;
            }
            // A lite entry becomes a full node with the fresh resolution and its references.
            Some(lite::Slot::Lite(l)) => u64::from(l.lookups),
            None => 0,
        };
        let n = Node::new(id, lookups, state);
        let old = nodes.insert(id, lite::Slot::Full(n.clone()));
        drop(nodes);
        drop(old);
        n
    }

    /// Drops `n` kernel references; frees the node when none are left.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_ID {
            return;
        }
        let mut nodes = self.nodes.write(ino);
        match nodes.get_mut(&ino) {
            None => return,
            Some(lite::Slot::Lite(l)) => {
                let left = u64::from(l.lookups).saturating_sub(n);
                if left > 0 {
                    l.lookups = left as u32;
                    return;
                }
            }
            Some(lite::Slot::Full(node)) => {
                let left = node.lookups.load(Ordering::Relaxed).saturating_sub(n);
                node.lookups.store(left, Ordering::Relaxed);
                if left > 0 {
                    return;
                }
            }
        }
        let removed = nodes.remove(&ino);
        if let Some(lite::Slot::Full(node)) = &removed {
            // A number read from the node's origin is read again at its next lookup: its maps
            // go now, under the table's lock, so that a lookup that found them before puts
            // them back after (`keep_origin`). (Not while something else holds the node.)
            if self.trusted_xattrs && ino >> 62 == LEAF_PREFIX >> 62 && Arc::strong_count(node) == 1 {
                self.forget_origin(ino);
            }
        }
        drop(nodes);
        if let Some(lite::Slot::Full(node)) = &removed {
            // Unlink from the parent now: the node may live on in open handles.
            let (parent, upper, dir, unlinked) = {
                let mut s = node.state.lock();
                (s.parent.take(), s.upper.clone(), s.kind == FileType::Directory, s.unlinked)
            };
            if dir {
                self.listings.lock().pop(&ino);
            }
            drop(parent);
            // `upper_ids` keeps its entry while the copied-up object lives: it keeps its
            // inode number for the whole mount, also in listings the kernel may still have
            // cached. Once it is removed and nothing holds it (no open handle; the node's own
            // pinned descriptor goes now), its number may go to a new object, which is not
            // this node. Where a handle still holds it, that is once the handle is released.
            // (Only a lower non-directory or a directory copied up has one: an upper-only
            // file's id is its upper number, and costs no stat here.)
            let may_be_mapped = dir || ino >> 62 == LEAF_PREFIX >> 62;
            if unlinked && may_be_mapped {
                if let Some(st) = upper.as_ref().and_then(|u| u.stat().ok()).filter(|st| st.st_nlink == 0) {
                    if Arc::strong_count(node) == 1 {
                        self.unmap_copy(ino, st.st_ino);
                    } else {
                        let mut dying = self.dying.lock();
                        dying.push((Arc::downgrade(node), ino, st.st_ino));
                        self.has_dying.store(true, Ordering::Release);
                    }
                }
            }
            drop(upper);
        }
        drop(removed);
        if self.nodes.trim_due(TRIM_MIN_NODES) {
            self.nodes.shrink();
            sys::release_free_memory();
        }
    }

    /// Drops the maps of removed copies forgotten while a handle held them ([`Self::dying`])
    /// that nothing holds any more.
    pub(crate) fn unmap_released(&self) {
        if !self.has_dying.load(Ordering::Acquire) {
            return;
        }
        let gone: Vec<(u64, u64)> = {
            let mut dying = self.dying.lock();
            let mut gone = Vec::new();
            dying.retain(|(node, id, ino)| {
                let held = node.strong_count() > 0;
                if !held {
                    gone.push((*id, *ino));
                }
                held
            });
            self.has_dying.store(!dying.is_empty(), Ordering::Release);
            gone
        };
        for (id, ino) in gone {
            self.unmap_copy(id, ino);
        }
    }

    /// Copied-up objects whose inode numbers the mount keeps (maps from an upper number to a
    /// node id, and from a node id to the number it showed before), for statistics and tests.
    pub fn kept_numbers(&self) -> usize {
        self.upper_ids.lock().len() + self.kept_ino.lock().len()
    }

    /// Drops the maps of node `id` when its number came from its origin.
    fn forget_origin(&self, id: u64) {
        let mut kept = self.kept_ino.lock();
        let Some(key) = kept.get(&id).and_then(|k| k.origin_key) else { return };
        kept.remove(&id);
        drop(kept);
        let mut ids = self.upper_ids.lock();
        if ids.get(&key) == Some(&id) {
            ids.remove(&key);
        }
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let node = self.node(ino)?;
        let top = node.top().ok_or(Error::errno(libc::ESTALE))?;
        top.loc.readlink().map_err(|e| Error::io(e, "readlink"))
    }

    // ---- readdir --------------------------------------------------------------------------

    /// The merged listing of a directory node, with `.` and `..` first. For a reader (a
    /// listing through the mount), the upper directory gets a new access time as its mount
    /// and `noatime` decide; the server's own listings, and lower directories, never give one.
    pub(crate) fn list_merged(&self, node: &Arc<Node>, for_reader: bool) -> Result<Vec<DirEntry>> {
        let (upper, umarks, lowers, parent_ino) = {
            let s = node.state.lock();
            if s.kind != FileType::Directory {
                return Err(Error::errno(libc::ENOTDIR));
            }
            (
                s.upper.as_ref().and_then(|u| u.dir_fd().cloned()),
                s.upper_marks,
                s.lower_dirs.clone(),
                s.parent.as_ref().map_or(ROOT_ID, |p| p.ino),
            )
        };
        let nlowers = lowers.len();
        let mut dirs: Vec<(usize, Arc<OwnedFd>, DirMarks, Option<SharedIndex>)> = Vec::new();
        if let Some(u) = upper {
            dirs.push((0, dir_open(&u)?, umarks, None));
        }
        for l in lowers.iter() {
            dirs.push((l.layer, dir_open(&l.fd)?, l.marks, Some(l.index.clone())));
        }
        let mut per_layer = Vec::with_capacity(dirs.len());
        for (li, fd, marks, index) in &dirs {
            let lower = index.is_some(); // the upper's has no index
            let noatime = lower || !for_reader || self.opts.noatime;
            let rfd = sys::reopen_dir(fd.as_fd(), noatime).map_err(|e| Error::io(e, "opendir"))?;
            let raw = sys::read_dir_all(rfd.as_fd()).map_err(|e| Error::io(e, "readdir"))?;
            if let Some(ix) = index {
                if nlowers >= INDEX_MIN_LOWERS && ix.get().is_none() {
                    let _ = ix.set(DirIndex::from_raw(&raw));
                }
            }
            per_layer.push(self.classify_layer_dir(*li, fd, *marks, raw));
        }
        let merged = merge::merge_listings(per_layer);
        let mut out = Vec::with_capacity(merged.len() + 2);
        out.push(DirEntry { ino: node.ino, kind: FileType::Directory, name: ".".into(), cookie: 1 });
        out.push(DirEntry { ino: parent_ino, kind: FileType::Directory, name: "..".into(), cookie: 2 });
        for merge::Merged { name, layer: pos, payload: (kind, real_ino), below } in merged {
            let li = dirs[pos].0;
            let ino = match below {
                // An upper directory merging with a lower one: the lower one's number, as a
                // lookup gives it (see `resolve`).
                Some((bpos, (FileType::Directory, bino)))
                    if kind == FileType::Directory
                        && self.layers[li].is_upper
                        && self.merges(self.ino_for(dirs[bpos].0, bino), &dirs[pos].1, &name) =>
                {
                    self.ino_for(dirs[bpos].0, bino)
                }
                _ if kind == FileType::Directory => self.ino_for(li, real_ino),
                // As `shown_ino`, and as a lookup would number a copy made before this mount
                // (`upper_leaf_id`).
                _ if self.layers[li].is_upper => {
                    let id = self.ino_for(li, real_ino);
                    match self.trusted_xattrs && dirs[pos].2.impure && id == self.ino_raw(li, real_ino) {
                        // (The kind shown may be an override's: the real one is asked.)
                        true => CString::new(name.as_slice())
                            .ok()
                            .and_then(|cn| {
                                let fmt = (!self.reads_override_xattrs()).then(|| fmt_of(kind));
                                self.origin_ino(dirs[pos].1.as_fd(), &cn, fmt)
                            })
                            .unwrap_or(id),
                        false => self.kept_or(id),
                    }
                }
                _ => self.ino_raw(li, real_ino),
            };
            out.push(DirEntry { ino, kind, cookie: dir_cookie(&name), name: OsString::from_vec(name) });
        }
        // By name among equal cookies, so that their order does not depend on the layers'.
        out.sort_unstable_by(|a, b| a.cookie.cmp(&b.cookie).then_with(|| a.name.cmp(&b.name)));
        unique_cookies(&mut out);
        Ok(out)
    }

    /// Classifies one layer's directory entries: whiteouts, markers, visible candidates.
    fn classify_layer_dir(
        &self,
        li: usize,
        fd: &Arc<OwnedFd>,
        marks: DirMarks,
        raw: Vec<sys::DirEntry>,
    ) -> Vec<ListItem<(FileType, u64)>> {
        let mut items = Vec::with_capacity(raw.len());
        for e in raw {
            match whiteout::classify(&e.name) {
                EntryClass::OpaqueMarker | EntryClass::Reserved => continue,
                EntryClass::Whiteout(t) => {
                    items.push(ListItem::Whiteout(t.to_vec()));
                    continue;
                }
                EntryClass::Plain => {}
            }
            let mut kind = kind_of_dtype(e.dtype);
            let needs_stat = kind.is_none()
                || kind == Some(FileType::CharDevice)
                || (kind == Some(FileType::RegularFile) && marks.xattr_whiteouts);
            if needs_stat {
                let Ok(cn) = CString::new(e.name.clone()) else { continue };
                let Ok(st) = sys::fstatat(fd.as_fd(), &cn) else { continue };
                if layer::is_whiteout_entry(fd, &cn, &st, marks) {
                    items.push(ListItem::Whiteout(e.name));
                    continue;
                }
                kind = Some(kind_of(st.st_mode));
            }
            if kind == Some(FileType::RegularFile) && self.ovr[li].is_some() {
                // A regular file may stand for a device, FIFO or socket: d_type as stat shows it.
                if let Ok(cn) = CString::new(e.name.clone()) {
                    let loc = Loc::At(DirFd::fixed(fd.clone()), Arc::from(cn));
                    if let Some(o) = self.read_override(&loc, li) {
                        if let Some((mode, ..)) = ovr::apply(&o, libc::S_IFREG, 0) {
                            kind = Some(kind_of(mode));
                        }
                    }
                }
            }
            items.push(ListItem::Entry(e.name, (kind.unwrap_or(FileType::RegularFile), e.ino)));
        }
        items
    }

    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let node = self.node(ino)?;
        if !node.is_dir() {
            return Err(Error::errno(libc::ENOTDIR));
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.write().insert(fh, Arc::new(DirHandle { entries: Mutex::new(None) }));
        Ok(fh)
    }

    /// The merged listing of a directory node, in cookie order. With `cache`, taken from (and
    /// kept in) the listing cache; the cache is filled under the directory's lock, the same lock
    /// every change to the directory holds while it drops the entry ([`OverlayFs::dir_changed`]).
    fn listing(&self, node: &Arc<Node>, cache: bool) -> Result<Arc<Vec<DirEntry>>> {
        let _g = node.dir_lock.read();
        if cache {
            if let Some(l) = self.listings.lock().get(&node.ino) {
                return Ok(l.clone());
            }
        }
        let l = Arc::new(self.list_merged(node, true)?);
        if cache {
            self.listings.lock().put(node.ino, l.clone());
        }
        Ok(l)
    }

    /// Drops the cached listing of a directory whose entries change; the caller holds its
    /// `dir_lock` exclusively.
    pub(crate) fn dir_changed(&self, dir: u64) {
        self.listings.lock().pop(&dir);
    }

    /// A change to directory `dir`'s listing that the kernel cannot see (an entry's `d_ino`,
    /// `..`): the server's cached listing and the kernel's go.
    pub(crate) fn listing_changed(&self, dir: u64) {
        self.dir_changed(dir);
        if let Some(f) = self.listing_stale.get() {
            f(dir);
        }
    }

    /// The listing and the position of the first entry after `offset` (a cookie, 0 for the
    /// start). With a handle (`fh` from [`OverlayFs::opendir`]): the handle's snapshot, taken
    /// at its first read and again at offset 0 (rewinddir). Without (`fh` 0: the kernel
    /// sends no OPENDIR, it keeps listings itself and drops them on every change through the
    /// mount): the cached listing of the directory.
    pub fn readdir(&self, ino: u64, fh: u64, offset: u64) -> Result<(Arc<Vec<DirEntry>>, usize)> {
        let l = if fh == 0 {
            self.listing(&self.node(ino)?, true)?
        } else {
            let h = self.dirs.read().get(&fh).cloned().ok_or(Error::errno(libc::EBADF))?;
            let mut cur = h.entries.lock();
            match (&*cur, offset) {
                (Some(e), o) if o > 0 => e.clone(),
                _ => {
                    let l = self.listing(&self.node(ino)?, false)?;
                    *cur = Some(l.clone());
                    l
                }
            }
        };
        let start = l.partition_point(|e| e.cookie <= offset);
        if fh == 0 && start == l.len() {
            // The end was read: the kernel has the whole listing in its cache now, and asks
            // again (from the start) only once that is dropped. A large directory's listing
            // would otherwise stay here until 64 other directories were read.
            self.listings.lock().pop(&ino);
        }
        Ok((l, start))
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.write().remove(&fh);
    }

    // ---- xattrs (read side) ---------------------------------------------------------------

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>> {
        if self.opts.noxattrs {
            return Err(Error::errno(libc::ENOSYS));
        }
        let n = name.as_bytes();
        if whiteout::is_private_xattr(n) || ovr::is_override_xattr(n) {
            return Err(Error::errno(libc::ENODATA));
        }
        if is_acl_xattr(n) && !self.acl_enabled() {
            return Err(Error::errno(libc::EOPNOTSUPP));
        }
        let node = self.node(ino)?;
        if n == CAPS_XATTR && node.has_fact(FACT_NO_CAPS) {
            return Err(Error::errno(libc::ENODATA));
        }
        let top = node.top().ok_or(Error::errno(libc::ESTALE))?;
        let v = top.loc.getxattr(&cname(n)?).map_err(|e| Error::io(e, "getxattr"))?;
        if n == ACL_ACCESS.to_bytes() {
            // With owners and modes in an override xattr, the mode the mount shows is the
            // override's: the ACL's owner, mask and other entries say the same, as they do on
            // a filesystem (the kernel checks access with them).
            if let Some(o) = self.read_override(&top.loc, top.layer) {
                if let Some(acl) = crate::acl::Acl::parse(&v) {
                    return Ok(acl.with_mode(o.perm).to_bytes());
                }
            }
        }
        Ok(v)
    }

    /// The object's xattr names, without the private ones. `trusted.*` names are listed only
    /// when `admin` says the caller has CAP_SYS_ADMIN (asked once, where there are such
    /// names), as a local filesystem and kernel overlayfs list them.
    pub fn listxattr(&self, ino: u64, admin: impl FnOnce() -> bool) -> Result<Vec<u8>> {
        if self.opts.noxattrs {
            return Err(Error::errno(libc::ENOSYS));
        }
        let node = self.node(ino)?;
        let raw = match node.top().ok_or(Error::errno(libc::ESTALE))?.loc.listxattr() {
            Ok(r) => r,
            // Symlinks and special files on some filesystems: no xattrs rather than an error.
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Vec::new(),
            Err(e) => return Err(Error::io(e, "listxattr")),
        };
        let mut out = Vec::with_capacity(raw.len());
        let mut admin = Some(admin);
        let mut trusted_ok = false;
        for n in raw.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if whiteout::is_private_xattr(n)
                || ovr::is_override_xattr(n)
                || (!self.acl_enabled() && is_acl_xattr(n))
            {
                continue;
            }
            if n.starts_with(b"trusted.") {
                if let Some(f) = admin.take() {
                    trusted_ok = f();
                }
                if !trusted_ok {
                    continue;
                }
            }
            out.extend_from_slice(n);
            out.push(0);
        }
        Ok(out)
    }

    pub fn statfs(&self) -> Result<libc::statvfs> {
        let root = &self.layers[0].root;
        let mut st = sys::fstatvfs(root.as_fd()).map_err(|e| Error::io(e, "statfs"))?;
        if self.whiteout_style == WhiteoutStyle::WhFile {
            // Room for the `.wh.` a whiteout of any name adds (fuse-overlayfs says the same):
            // a name the full length could be made but not deleted.
            st.f_namemax = st.f_namemax.saturating_sub(4);
        }
        Ok(st)
    }

    pub fn access(&self, ino: u64, mask: i32) -> Result<()> {
        let node = self.node(ino)?;
        if mask & libc::W_OK != 0 && (self.opts.read_only || !self.has_upper) {
            return Err(Error::errno(libc::EROFS));
        }
        self.node_attr(&node).map(|_| ())
    }
}

impl OverlayFs {
    /// Whether the upper directory `name` in `dir`, over a lower directory whose id is
    /// `lower_id`, merges with it (is not opaque). A live node of that id that merges says so
    /// without a syscall (a lookup gave it that id for that reason).
    fn merges(&self, lower_id: u64, dir: &OwnedFd, name: &[u8]) -> bool {
        let live = match self.nodes.read(lower_id).get(&lower_id) {
            Some(lite::Slot::Full(n)) => Some(n.clone()),
            _ => None,
        };
        if let Some(n) = live {
            let s = n.state.lock();
            if s.kind == FileType::Directory
                && !s.unlinked
                && !s.lower_dirs.is_empty()
                && s.name.to_bytes() == name
            {
                return true;
            }
        }
        !upper_subdir_opaque(dir, name)
    }
}

/// Whether the upper directory `name` in `dir` is opaque (or cannot be read: then it is
/// taken as not merging).
fn upper_subdir_opaque(dir: &OwnedFd, name: &[u8]) -> bool {
    let Ok(cn) = CString::new(name) else { return true };
    match layer::open_dir_at(dir.as_fd(), &cn) {
        Ok(fd) => layer::dir_marks(&fd).opaque,
        Err(_) => true,
    }
}

/// The node id of a lower non-directory: derived from its directory's id and its name, not from
/// its inode, so that two names of one hard-linked lower file are two objects (as in kernel
/// overlayfs without `index=on`: writing through one name copies up that name only). They
/// have the top two bits [`LEAF_PREFIX`]; ids from inode numbers have them only in the
/// corner [`OverlayFs::ino_raw`] moves. The number the node shows is its real one
/// ([`OverlayFs::shown_ino`]).
///
/// Keyed SipHash (`key`: [`leaf_key`], the same for a stack on every mount, not known to
/// whoever made the layers): two names whose ids collide would be one node, and a write
/// through one name would land in the other file. With an unkeyed hash such a pair of names
/// was found in minutes. `salt` picks another id where one collides anyway
/// ([`OverlayFs::free_leaf_id`]).
pub(crate) fn lower_leaf_id(key: (u64, u64), parent: u64, name: &[u8], salt: u32) -> u64 {
    keyed_id(key, LEAF_PREFIX, |h| {
        h.write_u64(parent);
        h.write_u32(salt);
        h.write(name);
    })
}

/// A keyed SipHash of what `write` feeds it, in the id range of `prefix` (its top two bits).
#[allow(deprecated)] // SipHasher: std's SipHash-2-4 with explicit keys, which we need
fn keyed_id(key: (u64, u64), prefix: u64, write: impl FnOnce(&mut std::hash::SipHasher)) -> u64 {
    let mut h = std::hash::SipHasher::new_with_keys(key.0, key.1);
    write(&mut h);
    (h.finish() >> 2) | prefix
}

/// The top two bits of [`lower_leaf_id`]s (10) and of [`big_ino`]s (11); other ids are real
/// inode numbers below 2^48, offset per filesystem by less than 2^63.
const LEAF_PREFIX: u64 = 0b10 << 62;
const BIG_PREFIX: u64 = 0b11 << 62;

/// The id and inode number of an inode whose real number is 2^48 or more, of the filesystem
/// with offset `base` ([`Layer::ino_base`]): a keyed SipHash of the two ([`leaf_key`], so the
/// same on every mount of the stack), in its own range. (An offset number could meet another
/// filesystem's: two files would show one number, and two directories be one node.)
fn big_ino(key: (u64, u64), base: u64, real_ino: u64) -> u64 {
    keyed_id(key, BIG_PREFIX, |h| {
        h.write_u64(base);
        h.write_u64(real_ino);
    })
}

/// The key of [`lower_leaf_id`] for a stack: drawn from the birth times (to the nanosecond)
/// and inode numbers of its layer roots, which stay the same across mounts and reboots (so
/// lower files keep their numbers after a remount) and are made on this machine, after
/// whatever layer was crafted. (Device numbers are left out: they can change across reboots
/// on btrfs, device-mapper or network filesystems. Where a filesystem keeps no birth time the
/// key is the inode numbers alone, which a layer's author cannot see either but could guess
/// at.)
fn leaf_key(roots: &[&OwnedFd]) -> (u64, u64) {
    let mut halves = [0u64; 2];
    for (i, half) in halves.iter_mut().enumerate() {
        #[allow(deprecated)] // as in keyed_id
        let mut h = std::hash::SipHasher::new_with_keys(i as u64, 0x6c61_7965_7266_7321);
        for fd in roots {
            if let Ok(st) = sys::fstat(fd.as_fd()) {
                h.write_u64(st.st_ino);
            }
            if let Ok((sec, nsec)) = sys::btime(fd.as_fd()) {
                h.write_i64(sec);
                h.write_u32(nsec);
            }
        }
        *half = h.finish();
    }
    (halves[0], halves[1])
}

/// Creates `WORKDIR/work` (as the kernel and fuse-overlayfs do) and empties it: entries left
/// there by a crash are half-made copies or removed objects, never visible data.
fn prepare_workdir(wroot: &OwnedFd) -> std::result::Result<OwnedFd, String> {
    let name = c"work";
    match sys::mkdirat(wroot.as_fd(), name, 0o700) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            // Something other than a directory left there (a file, a symlink) is removed, as
            // kernel overlayfs does, and the directory made.
            if sys::fstatat(wroot.as_fd(), name).is_ok_and(|st| st.st_mode & libc::S_IFMT != libc::S_IFDIR) {
                sys::unlinkat(wroot.as_fd(), name, false).map_err(|e| format!("remove work: {e}"))?;
                sys::mkdirat(wroot.as_fd(), name, 0o700).map_err(|e| format!("create work: {e}"))?;
            }
        }
        Err(e) => return Err(format!("create work: {e}")),
    }
    let fd = layer::open_dir_at(wroot.as_fd(), name).map_err(|e| format!("open work: {e}"))?;
    // What an earlier mount left (a crash's copies, a removed directory's remains) goes; an
    // entry the server may not remove (left by another user's mount) fails the mount, named.
    let rfd = sys::reopen_dir(fd.as_fd(), true).map_err(|e| format!("read work: {e}"))?;
    for e in sys::read_dir_all(rfd.as_fd()).map_err(|e| format!("read work: {e}"))? {
        let Ok(cn) = CString::new(e.name) else { continue };
        remove_tree_at(&fd, &cn)
            .map_err(|err| format!("cannot empty work: remove {}: {err}", cn.to_string_lossy()))?;
    }
    // Copies are made in here: a default ACL here would be inherited by each copy (as its
    // access ACL, and a directory's default one) on top of what the lower object carries.
    // Kernel overlayfs removes both from its work directory too.
    let path = sys::proc_fd_path(fd.as_raw_fd(), None);
    for acl in [ACL_DEFAULT, ACL_ACCESS] {
        match sys::removexattr(&path, acl, true) {
            Err(e) if !matches!(e.raw_os_error(), Some(libc::ENODATA) | Some(libc::EOPNOTSUPP)) => {
                return Err(format!("remove the ACLs of work: {e}"));
            }
            _ => {}
        }
    }
    Ok(fd)
}

/// Removes everything inside a directory (never following symlinks).
pub(crate) fn clean_dir(fd: &OwnedFd) -> std::io::Result<()> {
    let rfd = sys::reopen_dir(fd.as_fd(), true)?;
    for e in sys::read_dir_all(rfd.as_fd())? {
        let Ok(cn) = CString::new(e.name) else { continue };
        remove_tree_at(fd, &cn)?;
    }
    Ok(())
}

/// Removes `dir/name`, recursively when it is a directory.
pub(crate) fn remove_tree_at(dir: &OwnedFd, name: &CStr) -> std::io::Result<()> {
    match sys::unlinkat(dir.as_fd(), name, false) {
        Ok(()) => return Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EISDIR) | Some(libc::EPERM)) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    }
    let sub = layer::open_dir_at(dir.as_fd(), name)?;
    clean_dir(&sub)?;
    sys::unlinkat(dir.as_fd(), name, true)
}

fn probe_chardev_whiteout(work: &OwnedFd) -> bool {
    let name = c"#whiteout-probe";
    let _ = sys::unlinkat(work.as_fd(), name, false);
    let ok = sys::mknodat(work.as_fd(), name, libc::S_IFCHR | 0o600, 0).is_ok();
    let _ = sys::unlinkat(work.as_fd(), name, false);
    ok && std::env::var_os("FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT").is_none()
}

/// `system.posix_acl_access` / `system.posix_acl_default`.
pub(crate) const ACL_ACCESS: &std::ffi::CStr = c"system.posix_acl_access";
pub(crate) const ACL_DEFAULT: &std::ffi::CStr = c"system.posix_acl_default";

pub(crate) fn is_acl_xattr(name: &[u8]) -> bool {
    name == b"system.posix_acl_access" || name == b"system.posix_acl_default"
}

/// The override xattr `xattr_permissions=N` writes.
fn ovr_config_name(xattr_permissions: u8) -> Option<&'static std::ffi::CStr> {
    match xattr_permissions {
        1 => Some(ovr::PRIVILEGED),
        2 => Some(ovr::CONTAINERS),
        _ => None,
    }
}

fn root_xattr(l: &Layer, name: &std::ffi::CStr) -> Option<Vec<u8>> {
    let p = sys::proc_fd_path(std::os::fd::AsRawFd::as_raw_fd(&*l.root), None);
    sys::getxattr(&p, name, true).ok()
}

/// Which override xattr each layer's objects are read with, as fuse-overlayfs decides it: a
/// layer whose root carries one of the names uses that name (whatever the options); with
/// `xattr_permissions=` the upper uses the configured name (for 2, the older
/// `user.fuseoverlayfs.override_stat` when the upper root has only that) and so does every
/// lower whose root carries none. Without the option an upper follows the first lower that
/// carries a name, so objects copied up from it keep what they show. With the option, an upper
/// root without the xattr is seeded from the first lower root that has it.
fn override_names(
    layers: &[Layer],
    xattr_permissions: u8,
) -> std::result::Result<Vec<Option<&'static std::ffi::CStr>>, String> {
    let cfg = ovr_config_name(xattr_permissions);
    let detect = |l: &Layer| ovr::NAMES.iter().copied().find(|n| root_xattr(l, n).is_some());
    let mut names: Vec<Option<&'static std::ffi::CStr>> = Vec::with_capacity(layers.len());
    for l in layers {
        names.push(if l.is_upper { None } else { detect(l).or(cfg) });
    }
    let Some(upper) = layers.first().filter(|l| l.is_upper) else { return Ok(names) };
    let first_lower_marked = layers.iter().skip(1).find_map(detect);
    names[0] = match xattr_permissions {
        0 => detect(upper).or(first_lower_marked),
        _ => {
            let mut n = cfg;
            if xattr_permissions == 2
                && root_xattr(upper, ovr::CONTAINERS).is_none()
                && root_xattr(upper, ovr::USER).is_some()
            {
                n = Some(ovr::USER);
            }
            if let Some(n) = n {
                if root_xattr(upper, n).is_none() {
                    let seed = layers.iter().skip(1).find_map(|l| {
                        root_xattr(l, n)
                            .or_else(|| (xattr_permissions == 2).then(|| root_xattr(l, ovr::USER)).flatten())
                    });
                    if let Some(v) = seed {
                        let p = sys::proc_fd_path(std::os::fd::AsRawFd::as_raw_fd(&*upper.root), None);
                        sys::setxattr(&p, n, &v, 0, true).map_err(|e| {
                            format!(
                                "xattr_permissions: cannot write {} on upperdir: {e}",
                                n.to_string_lossy()
                            )
                        })?;
                    }
                }
            }
            n
        }
    };
    Ok(names)
}

/// Whether `name` can be set on a file in workdir.
fn probe_xattr(work: &OwnedFd, name: &std::ffi::CStr) -> std::io::Result<()> {
    let f = c"#ovr-probe";
    let _ = sys::unlinkat(work.as_fd(), f, false);
    drop(sys::openat(work.as_fd(), f, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o600)?);
    let p = sys::proc_fd_path(std::os::fd::AsRawFd::as_raw_fd(work), Some(f));
    let r = sys::setxattr(&p, name, b"0:0:0644", 0, false);
    let _ = sys::unlinkat(work.as_fd(), f, false);
    r
}

fn probe_trusted_xattr(work: &OwnedFd) -> bool {
    let name = c"#xattr-probe";
    let _ = remove_tree_at(work, name);
    if sys::mkdirat(work.as_fd(), name, 0o700).is_err() {
        return false;
    }
    let p = sys::proc_fd_path(std::os::fd::AsRawFd::as_raw_fd(work), Some(name));
    let ok = sys::setxattr(&p, c"trusted.overlay.opaque", b"y", 0, false).is_ok();
    let _ = sys::unlinkat(work.as_fd(), name, true);
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name whose id the table holds for another object (a collision of the keyed hash, or
    /// an id kept by a node since renamed) gets another id; before, the lookup took over the
    /// other object's node, and data went to the wrong file.
    #[test]
    fn a_taken_leaf_id_gives_the_name_another() {
        let tmp = tempfile::tempdir().unwrap();
        let (l, u, w) = (tmp.path().join("l"), tmp.path().join("u"), tmp.path().join("w"));
        for d in [&l, &u, &w] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(l.join("a"), b"a").unwrap();
        std::fs::write(l.join("b"), b"b").unwrap();
        let mut o = FsOptions::new(vec![l]);
        o.upper = Some(u);
        o.work = Some(w);
        let fs = OverlayFs::new(o).unwrap();
        let root = fs.node(ROOT_ID).unwrap();
        let id_a = lower_leaf_id(fs.leaf_key, ROOT_ID, b"a", 0);
        // "b" sits at the id "a" would get.
        assert!(fs.add_lite(id_a, &root, b"b", 1, FileType::RegularFile));
        let a = fs.lookup(ROOT_ID, std::ffi::OsStr::new("a")).unwrap();
        assert_ne!(a.ino.0, id_a);
        assert_eq!(a.ino.0, lower_leaf_id(fs.leaf_key, ROOT_ID, b"a", 1));
        // The same name again finds its own (salted) id; the planted entry is untouched.
        assert_eq!(fs.lookup(ROOT_ID, std::ffi::OsStr::new("a")).unwrap().ino, a.ino);
        assert_eq!(fs.free_leaf_id(ROOT_ID, b"b"), lower_leaf_id(fs.leaf_key, ROOT_ID, b"b", 0));
    }

    #[test]
    fn names_sharing_a_hash_get_distinct_offsets() {
        let e = |name: &str, cookie: u64| DirEntry {
            ino: 9,
            kind: FileType::RegularFile,
            name: name.into(),
            cookie,
        };
        let mut l = vec![e(".", 1), e("..", 2), e("a", 50), e("b", 50), e("c", 50), e("d", 51), e("z", 90)];
        unique_cookies(&mut l);
        let cookies: Vec<u64> = l.iter().map(|e| e.cookie).collect();
        assert_eq!(cookies, [1, 2, 50, 51, 52, 53, 90]);
        // A reader that stopped after `a` resumes at `b`, not past it.
        let start = l.partition_point(|x| x.cookie <= 50);
        assert_eq!(l[start].name, "b");
        assert_eq!(dir_cookie(b"."), 1);
        assert_eq!(dir_cookie(b"x"), dir_cookie(b"x"));
        assert!(dir_cookie(b"x") >= 3 && dir_cookie(b"x") < 1 << 63);
    }

    #[test]
    fn id_maps_as_fuse_overlayfs() {
        let m = IdMap(vec![(0, 1000, 1), (1, 100000, 65536)]);
        assert_eq!(m.to_shown(0), 1000);
        assert_eq!(m.to_shown(1), 100000);
        assert_eq!(m.to_shown(65536), 165535);
        assert_eq!(m.to_shown(65537), OVERFLOW_ID);
        assert_eq!(m.to_disk(1000), Some(0));
        assert_eq!(m.to_disk(100005), Some(6));
        assert_eq!(m.to_disk(5), None);
        assert_eq!(IdMap::default().to_shown(7), 7);
        assert_eq!(IdMap::default().to_disk(7), Some(7));
    }

    fn de(name: &str, dtype: u8, ino: u64) -> sys::DirEntry {
        sys::DirEntry { name: name.as_bytes().to_vec(), ino, dtype }
    }

    #[test]
    fn dir_index_finds_entries_and_whiteouts() {
        let mut raw =
            vec![de("a", libc::DT_REG, 5), de("sub", libc::DT_DIR, 6), de(".wh.gone", libc::DT_REG, 7)];
        raw.push(de(".wh..wh..opq", libc::DT_REG, 8));
        for i in 0..2000 {
            raw.push(de(&format!("f{i}"), libc::DT_REG, 100 + i));
        }
        let ix = DirIndex::from_raw(&raw);
        assert_eq!(ix.entry(b"a"), Some((libc::DT_REG, 0)));
        assert_eq!(ix.entry(b"sub"), Some((libc::DT_DIR, 6)));
        assert_eq!(ix.entry(b"gone"), None);
        assert!(ix.whited_out(b"gone"));
        assert!(!ix.whited_out(b"a"));
        assert_eq!(ix.entry(b".wh.gone"), None);
        assert_eq!(ix.entry(b".wh..wh..opq"), None);
        assert_eq!(ix.entry(b"missing"), None);
        for i in 0..2000 {
            assert_eq!(ix.entry(format!("f{i}").as_bytes()), Some((libc::DT_REG, 0)));
        }
    }

    #[test]
    fn dir_index_probes_past_collisions() {
        // A table of 4 slots holding 3 names: probing must walk past occupied slots, both to
        // find names and to tell a missing one.
        let mut ix = DirIndex { arena: Vec::new(), table: vec![EMPTY; 4] };
        ix.push(libc::DT_REG, b"x", 1);
        ix.push(libc::DT_DIR, b"y", 2);
        ix.push(IX_WHITEOUT, b"z", 0);
        assert_eq!(ix.table.iter().filter(|&&o| o != EMPTY).count(), 3);
        assert_eq!(ix.entry(b"x"), Some((libc::DT_REG, 0)));
        assert_eq!(ix.entry(b"y"), Some((libc::DT_DIR, 2)));
        assert!(ix.whited_out(b"z"));
        assert_eq!(ix.entry(b"z"), None);
        assert!(!ix.whited_out(b"x"));
        for miss in [&b"a"[..], b"b", b"c", b"xx", b""] {
            assert_eq!(ix.entry(miss), None);
        }
        assert_eq!(DirIndex::default().entry(b"x"), None);
    }

    #[test]
    fn shared_names_are_checked_like_cstrings() {
        assert_eq!(&*arc_cname(b"abc").unwrap(), c"abc");
        assert_eq!(arc_cname(b"a\0b").unwrap_err().errno, libc::EINVAL);
        let long = vec![b'x'; 300];
        assert_eq!(arc_cname(&long).unwrap().to_bytes(), &long[..]);
        let edge = vec![b'y'; 255];
        assert_eq!(arc_cname(&edge).unwrap().to_bytes(), &edge[..]);
        assert_eq!(arc_cname(&[b'z'; 256]).unwrap().to_bytes().len(), 256);
    }

    #[test]
    fn dir_index_names_every_entry_and_whiteout_target_once() {
        let raw = vec![
            de("a", libc::DT_REG, 5),
            de("sub", libc::DT_DIR, 6),
            de(".wh.gone", libc::DT_REG, 7),
            de(".wh..wh..opq", libc::DT_REG, 8),
            de("ln", libc::DT_LNK, 9),
            de("dir2", libc::DT_DIR, 10),
        ];
        let ix = DirIndex::from_raw(&raw);
        let mut names: Vec<&[u8]> = ix.names().collect();
        names.sort();
        assert_eq!(names, [&b"a"[..], b"dir2", b"gone", b"ln", b"sub"]);
        assert_eq!(DirIndex::default().names().count(), 0);
    }
}
