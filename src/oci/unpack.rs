//! `layerfs unpack`: apply layer tars to a new layer directory.
//!
//! Hard parts:
//! - **Untrusted input.** Every entry path is sanitised (no absolute paths,
//!   no `..`), then resolved from the target's directory fd one component at
//!   a time with `O_DIRECTORY|O_NOFOLLOW`; the final component is created with
//!   calls that never follow symlinks. So a symlink planted by the archive
//!   (`lnk -> /`) followed by `lnk/escape` fails with ELOOP/ENOTDIR instead of
//!   writing outside. Hard-link targets must be non-directory entries created
//!   earlier by the same archive.
//! - **No half-written layer.** Everything is written into a private sibling
//!   `TARGET.tmp-XXXXXXXX` (mode 0700; TARGET cut short to fit NAME_MAX) that is renamed onto TARGET only on
//!   success and removed on any failure. The archive must end with the
//!   end-of-archive block; a short read in a file's data is an error.
//! - **Whiteouts.** Without `--flatten` they are materialised in the chosen
//!   form (char device 0/0 + `trusted.overlay.opaque`, or `.wh.*` files);
//!   with `--flatten` they are performed. A whiteout hides only lower layers:
//!   anything the same layer creates (before or after the marker) survives;
//!   an opaque marker applies to the directory as if it came first.
//! - **Attributes.** Owners (root only), modes (after chown, which clears
//!   setuid/setgid), xattrs (after chown, which clears `security.capability`)
//!   and mtimes are set once the data is written; directory modes and mtimes
//!   are deferred to the end of each layer (deepest first) so read-only
//!   directories and children written later do not interfere.
//! - **Speed.** Parent directory fds are cached as a stack along the current
//!   path (archives are mostly sorted), files are created with `O_EXCL` and
//!   only an `EEXIST` triggers the replace path, data is copied with a 1 MiB
//!   buffer, nothing is fsynced.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::digest::{self, BUF_SIZE, HashingReader};
use super::error::{Context, Error, Result, show};
use super::fsutil::{self, XattrFd};
use super::paths::{self, Action};
use super::paxtap;

/// Form of materialised whiteouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// Char device 0/0 and `trusted.overlay.opaque=y` (fallback `user.`).
    Chardev,
    /// Keep `.wh.NAME` and `.wh..wh..opq` files.
    Wh,
    /// Chardev when mknod works, else wh.
    Auto,
}

impl std::str::FromStr for WhiteoutMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "chardev" => Ok(WhiteoutMode::Chardev),
            "wh" => Ok(WhiteoutMode::Wh),
            "auto" => Ok(WhiteoutMode::Auto),
            _ => Err(Error::new(format!("invalid whiteout form {s:?} (want chardev, wh or auto)"))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct UnpackOptions {
    pub whiteouts: WhiteoutMode,
    pub flatten: bool,
    /// Hash the input to report DiffIDs (costs sha256 time; the CLI's plain
    /// unpack turns it off).
    pub diff_ids: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions { whiteouts: WhiteoutMode::Auto, flatten: false, diff_ids: true }
    }
}

/// Either hashes what it reads or passes it through.
enum MaybeHashing<R: Read> {
    Hash(HashingReader<R>),
    Plain(R),
}

impl<R: Read> Read for MaybeHashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            MaybeHashing::Hash(h) => h.read(buf),
            MaybeHashing::Plain(r) => r.read(buf),
        }
    }
}

/// What an unpack did.
#[derive(Debug, Clone)]
pub struct UnpackReport {
    /// DiffID of each input, in order (empty unless `diff_ids` was asked for).
    pub diff_ids: Vec<String>,
    /// Whether whiteouts were written as char devices (false: `.wh.` files).
    pub chardev_whiteouts: bool,
}

/// Private xattrs that an archive may not set (they would change the overlay
/// meaning of the layer directory) and that `diff` never exports.
pub fn is_private_xattr(name: &[u8]) -> bool {
    crate::whiteout::is_private_xattr(name) || crate::ovr::is_override_xattr(name)
}

pub const OVERRIDE_STAT: &[u8] = b"user.containers.override_stat";

/// Unpacks `tars` (one, or a chain bottom first with `flatten`) into the new
/// directory `target` (which must not exist or be an empty directory).
pub fn unpack(tars: &[PathBuf], target: &Path, opts: &UnpackOptions) -> Result<UnpackReport> {
    if tars.is_empty() {
        return Err(Error::new("no layer tar given"));
    }
    if tars.len() > 1 && !opts.flatten {
        return Err(Error::new(
            "several layer tars need --flatten (they would overwrite each other's whiteouts)",
        ));
    }
    let mut staged = Staging::new(target)?;
    let mut ap = Applier::new(staged.root()?, opts.clone());
    let mut diff_ids = Vec::with_capacity(tars.len());
    for tar in tars {
        let r = digest::open_layer(tar, "unpack")?;
        let r =
            if opts.diff_ids { MaybeHashing::Hash(HashingReader::new(r)) } else { MaybeHashing::Plain(r) };
        let r = ap.apply_layer(r).ctx(|| format!("{}", tar.display()))?;
        // Read to the end either way: the decompressor checks the stream's checksum (gzip's
        // CRC-32 and length, zstd's content checksum) only there.
        match r {
            MaybeHashing::Hash(h) => {
                let (d, _) = h.finish().ctx(|| format!("{}", tar.display()))?;
                diff_ids.push(d);
            }
            MaybeHashing::Plain(mut r) => {
                io::copy(&mut r, &mut io::sink()).ctx(|| format!("{}", tar.display()))?;
            }
        }
    }
    ap.finish()?;
    let chardev = ap.chardev == Some(true);
    drop(ap);
    staged.commit()?;
    Ok(UnpackReport { diff_ids, chardev_whiteouts: chardev })
}

/// Unpacks one uncompressed tar stream into `target`; returns the DiffID.
pub fn unpack_reader<R: Read>(r: R, target: &Path, opts: &UnpackOptions) -> Result<UnpackReport> {
    let mut staged = Staging::new(target)?;
    let mut ap = Applier::new(staged.root()?, opts.clone());
    let r = ap.apply_layer(HashingReader::new(r))?;
    let (d, _) = r.finish()?;
    ap.finish()?;
    let chardev = ap.chardev == Some(true);
    drop(ap);
    staged.commit()?;
    Ok(UnpackReport { diff_ids: vec![d], chardev_whiteouts: chardev })
}

/// A private temporary sibling of the target, renamed into place on commit
/// and removed otherwise.
pub struct Staging {
    parent: OwnedFd,
    tmp_name: Vec<u8>,
    final_name: Vec<u8>,
    target: PathBuf,
    replace_empty_dir: bool,
    done: bool,
    /// Its registration with [`super::stop`].
    staged: u64,
}

/// Random lower-case hex string of `n` bytes (from /dev/urandom; falls back
/// to time and pid when that is unavailable).
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).is_ok();
    if !ok {
        let seed = format!("{:?} {} {:p}", std::time::SystemTime::now(), std::process::id(), &buf);
        let h = digest::sha256_str(seed.as_bytes());
        return h[7..7 + 2 * n.min(32)].to_string();
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh temporary name beside `name` (`NAME.tmp-XXXXXXXX`), with `name` cut short where the
/// whole would pass NAME_MAX.
pub fn tmp_sibling(name: &[u8]) -> Vec<u8> {
    let suffix = format!(".tmp-{}", random_hex(4));
    let mut v = name[..name.len().min(255 - suffix.len())].to_vec();
    v.extend_from_slice(suffix.as_bytes());
    v
}

impl Staging {
    pub fn new(target: &Path) -> Result<Staging> {
        use std::os::unix::ffi::OsStrExt;
        let name = target
            .file_name()
            .ok_or_else(|| Error::new(format!("invalid target directory {}", target.display())))?;
        let final_name = name.as_bytes().to_vec();
        let replace_empty_dir = match std::fs::symlink_metadata(target) {
            Ok(m) if m.is_dir() => {
                let mut rd = std::fs::read_dir(target).ctx(|| format!("read {}", target.display()))?;
                if rd.next().is_some() {
                    return Err(Error::new(format!("target {} exists and is not empty", target.display())));
                }
                true
            }
            Ok(_) => {
                return Err(Error::new(format!("target {} exists and is not a directory", target.display())));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(Error::from(e).context(format!("{}", target.display()))),
        };
        let parent_path = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let parent = fsutil::open_dir_path(parent_path).ctx(|| format!("open {}", parent_path.display()))?;
        let mut tries = 0;
        loop {
            let tmp_name = tmp_sibling(&final_name);
            match fsutil::mkdir_at(parent.as_fd(), &tmp_name, 0o700) {
                Ok(()) => {
                    let staged = super::stop::stage(parent.as_fd(), &tmp_name);
                    return Ok(Staging {
                        parent,
                        tmp_name,
                        final_name,
                        target: target.to_path_buf(),
                        replace_empty_dir,
                        done: false,
                        staged,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 16 => tries += 1,
                Err(e) => {
                    return Err(Error::from(e)
                        .context(format!("create temporary directory next to {}", target.display())));
                }
            }
        }
    }

    /// An fd on the temporary directory.
    pub fn root(&self) -> Result<OwnedFd> {
        fsutil::open_dir_at(self.parent.as_fd(), &self.tmp_name).ctx(|| "open temporary directory")
    }

    pub fn commit(&mut self) -> Result<()> {
        super::stop::commit(self.staged, || {
            fsutil::rename_at(
                self.parent.as_fd(),
                &self.tmp_name,
                self.parent.as_fd(),
                &self.final_name,
                !self.replace_empty_dir,
            )
            .ctx(|| format!("rename into {}", self.target.display()))
        })?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = remove_all(self.parent.as_fd(), &self.tmp_name) {
                log::warn!("cannot remove temporary directory next to {}: {e}", self.target.display());
            }
            super::stop::unstage(self.staged);
        }
    }
}

/// Removes `name` in `dir` recursively without following symlinks.
pub fn remove_all(dir: std::os::fd::BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match fsutil::unlink_at(dir, name, false) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) || e.raw_os_error() == Some(libc::EPERM) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    let st = fsutil::stat_at(dir, name)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return fsutil::unlink_at(dir, name, false);
    }
    let fd = match fsutil::open_dir_at(dir, name) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
            // A mode-0000 directory (non-root): make it usable first.
            fsutil::chmod_at(dir, name, 0o700)?;
            fsutil::open_dir_at(dir, name)?
        }
        Err(e) => return Err(e),
    };
    // A non-root remover needs write and search permission on the directory to empty it (a
    // read-only 0555 directory, as Fedora's /usr/bin): it is going away, so its mode may.
    if fsutil::geteuid() != 0 && st.st_mode & 0o300 != 0o300 {
        // Best effort: a directory of another owner may still be emptied through its group or
        // other bits; the removals below report what fails.
        let _ = fsutil::fchmod(fd.as_fd(), (st.st_mode & 0o7777) | 0o700);
    }
    for ent in fsutil::read_dir(fd.as_fd())? {
        if ent.d_type == libc::DT_DIR || ent.d_type == libc::DT_UNKNOWN {
            remove_all(fd.as_fd(), &ent.name)?;
        } else {
            match fsutil::unlink_at(fd.as_fd(), &ent.name, false) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    drop(fd);
    fsutil::unlink_at(dir, name, true)
}

/// Whether directory `parent/name` holds whiteouts only (char 0/0 devices, `.wh.` files and
/// directories of the same), recursively.
fn only_whiteouts(parent: &OwnedFd, name: &[u8]) -> Result<bool> {
    let fd = fsutil::open_dir_at(parent.as_fd(), name).ctx(|| format!("open {}", show(name)))?;
    for ent in fsutil::read_dir(fd.as_fd()).ctx(|| format!("read {}", show(name)))? {
        let st = fsutil::stat_at(fd.as_fd(), &ent.name).ctx(|| format!("stat {}", show(&ent.name)))?;
        let ok = match st.st_mode & libc::S_IFMT {
            libc::S_IFCHR => st.st_rdev == 0,
            libc::S_IFDIR => only_whiteouts(&fd, &ent.name)?,
            _ => ent.name.starts_with(WH_PREFIX),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

const WH_PREFIX: &[u8] = b".wh.";
const OPAQUE_NAME: &[u8] = b".wh..wh..opq";

/// Attributes for an opaque marker file made on behalf of another entry.
fn marker_meta(m: &Meta) -> Meta {
    Meta { mode: 0o644, xattrs: Vec::new(), link: None, ..m.clone() }
}

/// Attributes of one entry.
#[derive(Debug, Clone)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_ns: u32,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The link target, where PAX records read by their lengths decide it.
    link: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
struct DirAttrs {
    mode: u32,
    mtime: i64,
    mtime_ns: u32,
}

/// Granularity at which a GNU sparse entry's zeros are left as holes.
const SPARSE_BLOCK: usize = 4096;

fn errno_is(e: &io::Error, codes: &[i32]) -> bool {
    e.raw_os_error().is_some_and(|c| codes.contains(&c))
}

/// Applies layers onto a directory fd.
struct Applier {
    root: Rc<OwnedFd>,
    opts: UnpackOptions,
    am_root: bool,
    /// `stack[i]` is the directory at the first i+1 components of the
    /// current path: (component, fd).
    stack: Vec<(Vec<u8>, Rc<OwnedFd>)>,
    /// Paths created by the current layer, and their ancestors.
    touched: HashSet<Vec<u8>>,
    /// Non-directory entries of the current layer (hard link targets).
    linkable: HashSet<Vec<u8>>,
    /// Directories the current layer has an entry for (not only made for entries beneath).
    explicit_dirs: HashSet<Vec<u8>>,
    /// Names the current layer whited out (either form), until an entry of it takes them.
    whiteouts: HashSet<Vec<u8>>,
    dir_attrs: BTreeMap<Vec<u8>, DirAttrs>,
    root_meta: Option<Meta>,
    /// Resolved whiteout form: Some(true) chardev, Some(false) wh.
    chardev: Option<bool>,
    buf: Vec<u8>,
    warned_private: bool,
}

impl Applier {
    fn new(root: OwnedFd, opts: UnpackOptions) -> Applier {
        let chardev = match opts.whiteouts {
            WhiteoutMode::Chardev => Some(true),
            WhiteoutMode::Wh => Some(false),
            WhiteoutMode::Auto => None,
        };
        Applier {
            root: Rc::new(root),
            opts,
            am_root: fsutil::geteuid() == 0,
            stack: Vec::new(),
            touched: HashSet::new(),
            linkable: HashSet::new(),
            explicit_dirs: HashSet::new(),
            whiteouts: HashSet::new(),
            dir_attrs: BTreeMap::new(),
            root_meta: None,
            chardev,
            buf: vec![0u8; BUF_SIZE],
            warned_private: false,
        }
    }

    /// Parses and applies one uncompressed layer stream; returns the reader
    /// (positioned after the end-of-archive block) so the caller can drain it.
    fn apply_layer<R: Read>(&mut self, r: R) -> Result<R> {
        self.touched.clear();
        self.linkable.clear();
        self.explicit_dirs.clear();
        self.whiteouts.clear();
        let count = Rc::new(Cell::new(0u64));
        let found = Rc::new(RefCell::new(paxtap::Found::default()));
        let mut ar = tar::Archive::new(paxtap::Tap::new(r, count.clone(), found.clone()));
        let mut expected_end = 0u64;
        {
            let entries = ar.entries().map_err(|e| Error::new(format!("corrupt archive: {e}")))?;
            for e in entries {
                super::stop::check()?;
                let mut e = e.map_err(|e| {
                    Error::new(format!("corrupt or truncated archive: {}", clip(&e.to_string())))
                })?;
                let (disk, data_start) = if e.header().entry_type().is_gnu_sparse() {
                    // The crate's data position leaves out the extension blocks of the sparse
                    // map that follow the header; the crate has read them all when it yields
                    // the entry, and none of the data yet.
                    (e.header().entry_size().unwrap_or(0), e.raw_file_position().max(count.get()))
                } else {
                    (e.size(), e.raw_file_position())
                };
                let chain = found.borrow_mut().chain(expected_end, e.raw_header_position());
                expected_end = data_start.saturating_add(disk.div_ceil(512).saturating_mul(512));
                // Its data is no place for headers.
                found.borrow_mut().skip_to(expected_end);
                let pax = match &chain {
                    Some(paxtap::Chain { pax: Some(Some(body)), .. }) => Some(
                        paxtap::parse(body).map_err(|m| Error::new(format!("corrupt PAX header: {m}")))?,
                    ),
                    _ => None,
                };
                let raw = match (&pax, &chain) {
                    (Some(recs), Some(c)) if !c.long_name => last_record(recs, b"path")
                        .map(<[u8]>::to_vec)
                        .unwrap_or_else(|| e.header().path_bytes().into_owned()),
                    _ => e.path_bytes().into_owned(),
                };
                let records = pax.map(|recs| (recs, chain.is_some_and(|c| c.long_link)));
                self.entry(&raw, &mut e, records).ctx(|| format!("entry {}", show(&raw)))?;
            }
        }
        if count.get() < expected_end.saturating_add(512) {
            return Err(Error::new(if count.get() == 0 {
                "not a tar archive (empty input)".to_string()
            } else {
                "truncated archive: no end-of-archive marker".to_string()
            }));
        }
        self.apply_dir_attrs()?;
        Ok(ar.into_inner().inner)
    }

    /// The entry's PAX records: read by their lengths ([`paxtap`]) where given, else as the
    /// tar crate reads them.
    fn pax_records<R: Read>(e: &mut tar::Entry<'_, R>) -> Result<paxtap::Records> {
        let mut out = Vec::new();
        if let Some(pax) = e.pax_extensions().map_err(|e| Error::new(format!("corrupt PAX header: {e}")))? {
            for ext in pax {
                // The tar crate splits records at newlines, not by their lengths: a value that
                // holds a newline byte reads as a malformed record (the unpacker reads such
                // headers itself, see paxtap; this is what is left when it could not).
                let ext = ext.map_err(|e| {
                    Error::new(format!(
                        "corrupt PAX record, or one whose value holds a newline byte, which this \
                         tar reader cannot read: {e}"
                    ))
                })?;
                out.push((ext.key_bytes().to_vec(), ext.value_bytes().to_vec()));
            }
        }
        Ok(out)
    }

    fn finish(&mut self) -> Result<()> {
        let root = self.root.clone();
        let fd = root.as_fd();
        let meta = self.root_meta.take();
        if let Some(m) = &meta {
            if self.am_root {
                fsutil::fchown(fd, m.uid, m.gid).ctx(|| "chown layer root")?;
            }
        }
        fsutil::fchmod(fd, meta.as_ref().map_or(0o755, |m| m.mode)).ctx(|| "chmod layer root")?;
        if let Some(m) = &meta {
            fsutil::futimens(fd, m.mtime, m.mtime_ns).ctx(|| "set mtime of layer root")?;
        }
        Ok(())
    }

    /// `records`: the entry's PAX records read by their lengths, and whether a GNU long link
    /// header stands before it (which the tar crate lets decide the link target).
    fn meta_of<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        records: Option<(paxtap::Records, bool)>,
    ) -> Result<Meta> {
        let h = e.header();
        let bad = |what: &str| Error::new(format!("corrupt header field {what}"));
        let mode = h.mode().map_err(|_| bad("mode"))? & 0o7777;
        let mut uid = h.uid().map_err(|_| bad("uid"))?;
        let mut gid = h.gid().map_err(|_| bad("gid"))?;
        let mut mtime = header_mtime(h).ok_or_else(|| bad("mtime"))?;
        let mut mtime_ns = 0u32;
        let mut xattrs = Vec::new();
        let mut link = None;
        let own = records.is_some();
        let (recs, long_link) = match records {
            Some(r) => r,
            None => (Self::pax_records(e)?, false),
        };
        for (key, value) in &recs {
            let num = || std::str::from_utf8(value).ok().and_then(|v| v.parse::<u64>().ok());
            if key.starts_with(b"GNU.sparse.") {
                // Left to the entry as stored, the map and data would be unpacked as the
                // file's content (under a GNUSparseFile.N/ name for formats 0.1 and 1.0).
                return Err(Error::new(
                    "PAX sparse file (GNU.sparse.* records, as `tar --posix --sparse` writes): \
                     not supported",
                ));
            }
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                if is_private_xattr(name) {
                    if !self.warned_private {
                        log::warn!("ignoring private xattr {} in layer", show(name));
                        self.warned_private = true;
                    }
                    continue;
                }
                xattrs.push((name.to_vec(), value.clone()));
            } else if key == b"mtime" {
                (mtime, mtime_ns) = parse_pax_time(value).ok_or_else(|| bad("mtime (PAX)"))?;
            } else if own && key == b"uid" {
                uid = num().ok_or_else(|| bad("uid (PAX)"))?;
            } else if own && key == b"gid" {
                gid = num().ok_or_else(|| bad("gid (PAX)"))?;
            } else if own && key == b"linkpath" && !long_link {
                link = Some(value.clone());
            } else if key == b"size" && e.header().entry_type().is_gnu_sparse() {
                // The tar crate would skip the data by this size, and the entry's data is as
                // long as its header says.
                return Err(Error::new("a PAX size record on a GNU sparse entry"));
            } else if own && key == b"size" {
                // The tar crate stops at the first record it cannot read when it looks for the
                // size: past a value with a newline, it skipped by the header's size instead.
                match num() {
                    None => return Err(bad("size (PAX)")),
                    Some(n) if n != e.size() => {
                        return Err(Error::new(
                            "a PAX size record the tar reader misread (after a value holding a \
                             newline)",
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        if own && link.is_none() && !long_link {
            // Not a PAX target: the header's own (the crate may have taken a piece of a value).
            link = e.header().link_name_bytes().map(|l| l.into_owned());
        }
        let uid = u32::try_from(uid).map_err(|_| bad("uid (too large)"))?;
        let gid = u32::try_from(gid).map_err(|_| bad("gid (too large)"))?;
        Ok(Meta { mode, uid, gid, mtime, mtime_ns, xattrs, link })
    }

    fn entry<R: Read>(
        &mut self,
        raw: &[u8],
        e: &mut tar::Entry<'_, R>,
        records: Option<(paxtap::Records, bool)>,
    ) -> Result<()> {
        let et = e.header().entry_type();
        if et.is_pax_global_extensions() {
            // Records for the whole archive (GNU tar names the header /tmp/GlobalHead.N):
            // nothing to create.
            return Ok(());
        }
        let path = paths::sanitize(raw).map_err(|e| Error::new(e.to_string()))?;
        let action = paths::classify(&path).map_err(|e| Error::new(e.to_string()))?;
        // A pre-POSIX entry (type NUL) whose name ends in '/' is a directory, as GNU tar, Go's
        // archive/tar (Docker, containerd, podman) and Python's tarfile read it.
        let legacy_dir = e.header().as_bytes()[156] == 0 && raw.ends_with(b"/");
        if e.size() != 0 && (legacy_dir || header_only(et)) {
            // Readers disagree on where the next header of such an archive is: Go's
            // archive/tar (Docker, containerd, podman) and Python read the block after this
            // header, the tar crate skips that many bytes first (and GNU tar does either,
            // by type), so each would show another tree.
            return Err(Error::new(format!(
                "an entry of type {:?} that carries {} bytes of data (readers disagree on where \
                 the next entry starts)",
                et.as_byte() as char,
                e.size()
            )));
        }
        let meta = self.meta_of(e, records)?;
        match action {
            Action::Whiteout(t) => self.whiteout(&path, &t, &meta),
            Action::Opaque(d) => self.opaque(&path, &d, &meta),
            Action::Create if legacy_dir && !path.is_empty() => self.create_dir(&path, &meta),
            Action::Create => self.create(&path, e, meta),
        }
    }

    // ---- directory resolution -------------------------------------------

    /// Resolves a sanitised directory path to an fd, creating missing
    /// components (mode 0755) when `create`. `Ok(None)` when missing.
    fn resolve_dir(&mut self, path: &[u8], create: bool) -> Result<Option<Rc<OwnedFd>>> {
        let comps: Vec<&[u8]> = paths::components(path).collect();
        let mut keep = 0;
        while keep < self.stack.len() && keep < comps.len() && self.stack[keep].0 == comps[keep] {
            keep += 1;
        }
        self.stack.truncate(keep);
        for i in keep..comps.len() {
            let parent = if i == 0 { self.root.clone() } else { self.stack[i - 1].1.clone() };
            let name = comps[i];
            let fd = match fsutil::open_dir_at(parent.as_fd(), name) {
                Ok(fd) => fd,
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    // An EEXIST race is fine; any other failure shows in the open below.
                    let _ = fsutil::mkdir_at(parent.as_fd(), name, 0o755);
                    let fd = fsutil::open_dir_at(parent.as_fd(), name)
                        .map_err(|e| self.dir_error(&comps[..=i], e))?;
                    fsutil::fchmod(fd.as_fd(), 0o755)?;
                    fd
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(self.dir_error(&comps[..=i], e)),
            };
            self.writable(&comps[..=i], &fd)?;
            self.stack.push((name.to_vec(), Rc::new(fd)));
        }
        Ok(Some(if comps.is_empty() { self.root.clone() } else { self.stack[comps.len() - 1].1.clone() }))
    }

    /// A non-root unpacker cannot add to or remove from a directory an earlier layer left
    /// read-only (`--flatten` onto Fedora's 0555 `/usr/bin`): it gets write and search
    /// permission for the run, and its mode and mtime go back with the deferred directory
    /// attributes at the end of the layer (unless this layer declares the directory anew).
    fn writable(&mut self, comps: &[&[u8]], fd: &OwnedFd) -> Result<()> {
        if self.am_root {
            return Ok(());
        }
        let path = comps.join(&b'/');
        if self.dir_attrs.contains_key(&path) {
            return Ok(()); // made by this layer (mode deferred) or already opened up
        }
        let st = fsutil::fstat(fd.as_fd()).ctx(|| format!("stat {}", show(&path)))?;
        if st.st_mode & 0o300 == 0o300 || st.st_uid != fsutil::geteuid() {
            return Ok(());
        }
        fsutil::fchmod(fd.as_fd(), (st.st_mode & 0o7777) | 0o700).ctx(|| format!("chmod {}", show(&path)))?;
        let attrs =
            DirAttrs { mode: st.st_mode & 0o7777, mtime: st.st_mtime, mtime_ns: st.st_mtime_nsec as u32 };
        self.dir_attrs.insert(path, attrs);
        Ok(())
    }

    fn dir_error(&self, comps: &[&[u8]], e: io::Error) -> Error {
        let p = comps.join(&b'/');
        if errno_is(&e, &[libc::ELOOP]) {
            Error::new(format!("refusing to write beneath symlink {}", show(&p)))
        } else if errno_is(&e, &[libc::ENOTDIR]) {
            // O_NOFOLLOW|O_DIRECTORY on a symlink gives ENOTDIR on some kernels.
            Error::new(format!(
                "{} is not a directory (a symlink or a file); refusing to write beneath it",
                show(&p)
            ))
        } else {
            Error::from(e).context(format!("open directory {}", show(&p)))
        }
    }

    /// Forgets cached state at and beneath `path`, which was removed.
    fn forget(&mut self, path: &[u8]) {
        let depth = paths::components(path).count();
        self.stack.truncate(depth.saturating_sub(1));
        let keys: Vec<Vec<u8>> = self
            .dir_attrs
            .range(path.to_vec()..)
            .take_while(|(k, _)| k.starts_with(path))
            .filter(|(k, _)| paths::is_within(k, path))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.dir_attrs.remove(&k);
        }
    }

    fn note_created(&mut self, path: &[u8]) {
        let mut p = path;
        while !p.is_empty() {
            if !self.touched.insert(p.to_vec()) {
                break;
            }
            p = paths::split_last(p).0;
        }
    }

    /// Removes whatever is at `parent/name` (recursively).
    fn replace(&mut self, pfd: &OwnedFd, name: &[u8], path: &[u8]) -> Result<()> {
        remove_all(pfd.as_fd(), name).ctx(|| "remove the existing entry")?;
        self.forget(path);
        self.whiteouts.remove(path);
        Ok(())
    }

    fn parent_of(&mut self, path: &[u8]) -> Result<(Rc<OwnedFd>, Vec<u8>)> {
        let (parent, name) = paths::split_last(path);
        // An entry beneath a name this layer whited out: the name becomes an opaque directory
        // holding the layer's entries (the whiteout still hides what lower layers have).
        if let Some(w) = self.whited_out_ancestor(path) {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let meta = Meta {
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: now.as_secs() as i64,
                mtime_ns: now.subsec_nanos(),
                xattrs: Vec::new(),
                link: None,
            };
            self.create_dir(&w, &meta)?;
        }
        let fd = self.resolve_dir(parent, true)?.expect("created");
        Ok((fd, name.to_vec()))
    }

    /// The outermost proper ancestor of `path` that the current layer whited out, if any.
    fn whited_out_ancestor(&self, path: &[u8]) -> Option<Vec<u8>> {
        if self.whiteouts.is_empty() {
            return None;
        }
        let mut p = paths::split_last(path).0;
        let mut found = None;
        while !p.is_empty() {
            if self.whiteouts.contains(p) {
                found = Some(p.to_vec());
            }
            p = paths::split_last(p).0;
        }
        found
    }

    // ---- entries ---------------------------------------------------------

    fn create<R: Read>(&mut self, path: &[u8], e: &mut tar::Entry<'_, R>, meta: Meta) -> Result<()> {
        use tar::EntryType as T;
        let et = e.header().entry_type();
        if path.is_empty() {
            if et != T::Directory {
                return Err(Error::new("the entry for the layer root is not a directory"));
            }
            let root = self.root.clone();
            self.set_xattrs(XattrFd::Fd(root.as_fd()), &meta.xattrs)?;
            self.root_meta = Some(meta);
            return Ok(());
        }
        match et {
            T::Regular | T::Continuous | T::GNUSparse => self.create_file(path, e, &meta),
            T::Directory => self.create_dir(path, &meta),
            T::Symlink => {
                let target = meta.link.clone().or_else(|| e.link_name_bytes().map(|c| c.into_owned()));
                self.create_symlink(path, &target.unwrap_or_default(), &meta)
            }
            T::Link => {
                let target = meta.link.clone().or_else(|| e.link_name_bytes().map(|c| c.into_owned()));
                self.create_hardlink(path, &target.unwrap_or_default())
            }
            T::Char | T::Block | T::Fifo => {
                let h = e.header();
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                let kind = match et {
                    T::Char => libc::S_IFCHR,
                    T::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                self.create_node(path, kind, major, minor, &meta)
            }
            other => Err(Error::new(format!("unsupported entry type {:?}", other.as_byte() as char))),
        }
    }

    fn create_file<R: Read>(&mut self, path: &[u8], e: &mut tar::Entry<'_, R>, meta: &Meta) -> Result<()> {
        let (pfd, name) = self.parent_of(path)?;
        self.take_whiteout(&pfd, &name, path)?;
        let mut f = match fsutil::create_file_at(pfd.as_fd(), &name, 0o600) {
            Ok(f) => f,
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                self.replace(&pfd, &name, path)?;
                fsutil::create_file_at(pfd.as_fd(), &name, 0o600).ctx(|| "create")?
            }
            Err(err) => return Err(Error::from(err).context("create")),
        };
        let size = e.size();
        // A GNU sparse entry's holes come out of the reader as zeros: blocks of zeros are
        // left as holes, so the file takes the disk space its data does, not its size.
        let sparse = e.header().entry_type().is_gnu_sparse();
        let mut total = 0u64;
        while total < size {
            super::stop::check()?;
            let n = match e.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(Error::new(format!("truncated or corrupt archive: {err}"))),
            };
            if sparse {
                let mut at = total;
                for block in self.buf[..n].chunks(SPARSE_BLOCK) {
                    if block.iter().any(|&b| b != 0) {
                        f.write_all_at(block, at).ctx(|| "write")?;
                    }
                    at += block.len() as u64;
                }
            } else {
                f.write_all(&self.buf[..n]).ctx(|| "write")?;
            }
            total += n as u64;
        }
        if total != size {
            return Err(Error::new(format!(
                "truncated archive: file data ends after {total} of {size} bytes"
            )));
        }
        if sparse {
            f.set_len(size).ctx(|| "set the size")?;
        }
        self.finish_fd(&f, meta)?;
        self.note_created(path);
        self.linkable.insert(path.to_vec());
        Ok(())
    }

    /// chown (root only), chmod, xattrs, mtime on an open non-directory.
    fn finish_fd(&mut self, f: &std::fs::File, meta: &Meta) -> Result<()> {
        let fd = f.as_fd();
        if self.am_root {
            fsutil::fchown(fd, meta.uid, meta.gid).ctx(|| "chown")?;
        }
        fsutil::fchmod(fd, meta.mode).ctx(|| "chmod")?;
        self.set_xattrs(XattrFd::Fd(fd), &meta.xattrs)?;
        fsutil::futimens(fd, meta.mtime, meta.mtime_ns).ctx(|| "set mtime")?;
        Ok(())
    }

    fn set_xattrs(&self, x: XattrFd<'_>, xattrs: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        for (k, v) in xattrs {
            if let Err(e) = fsutil::set_xattr(x, k, v) {
                if errno_is(&e, &[libc::ENOTSUP, libc::EPERM, libc::EACCES]) {
                    log::warn!("cannot set xattr {}: {e}", show(k));
                } else {
                    return Err(Error::from(e).context(format!("set xattr {}", show(k))));
                }
            }
        }
        Ok(())
    }

    fn create_dir(&mut self, path: &[u8], meta: &Meta) -> Result<()> {
        let (pfd, name) = self.parent_of(path)?;
        let whited_out = self.take_whiteout(&pfd, &name, path)?;
        let mut existed = false;
        match fsutil::mkdir_at(pfd.as_fd(), &name, 0o700) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                let st = fsutil::stat_at(pfd.as_fd(), &name).ctx(|| "stat")?;
                if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                    self.replace(&pfd, &name, path)?;
                    fsutil::mkdir_at(pfd.as_fd(), &name, 0o700).ctx(|| "mkdir")?;
                } else {
                    existed = true;
                }
            }
            Err(err) => return Err(Error::from(err).context("mkdir")),
        }
        let fd = fsutil::open_dir_at(pfd.as_fd(), &name).ctx(|| "open directory")?;
        if self.am_root {
            fsutil::fchown(fd.as_fd(), meta.uid, meta.gid).ctx(|| "chown")?;
        } else if existed {
            // An earlier layer's read-only directory (Fedora's 0555 /usr/bin) declared again:
            // writable for the rest of the layer, its declared mode set at the end.
            let st = fsutil::fstat(fd.as_fd()).ctx(|| "stat")?;
            if st.st_mode & 0o300 != 0o300 && st.st_uid == fsutil::geteuid() {
                fsutil::fchmod(fd.as_fd(), (st.st_mode & 0o7777) | 0o700).ctx(|| "chmod")?;
            }
        }
        if existed {
            // A directory declared again (a later layer, with --flatten): its attributes are
            // replaced, not merged (OCI layer rules), so xattrs a tar can carry that it no
            // longer has go. An opaque mark this layer put there stays, and so do security
            // labels (SELinux and the like are the LSM's, not the layer's).
            let names = fsutil::list_xattrs(XattrFd::Fd(fd.as_fd())).ctx(|| "list xattrs")?;
            for n in names {
                let from_tar = n.starts_with(b"user.")
                    || n.starts_with(b"system.posix_acl_")
                    || n == b"security.capability"
                    || (n.starts_with(b"trusted.") && !n.starts_with(b"trusted.overlay."));
                let kept =
                    !from_tar || meta.xattrs.iter().any(|(k, _)| *k == n) || n == b"user.overlay.opaque";
                if !kept {
                    if let Err(e) = fsutil::remove_xattr_fd(fd.as_fd(), &n) {
                        if errno_is(&e, &[libc::ENOTSUP, libc::EPERM, libc::EACCES]) {
                            log::warn!("cannot remove xattr {}: {e}", show(&n));
                        } else {
                            return Err(Error::from(e).context(format!("remove xattr {}", show(&n))));
                        }
                    }
                }
            }
        }
        self.set_xattrs(XattrFd::Fd(fd.as_fd()), &meta.xattrs)?;
        // The stack now holds exactly the parent chain: extend it.
        if self.stack.len() == paths::components(path).count() - 1 {
            self.stack.push((name.clone(), Rc::new(fd)));
        }
        self.dir_attrs
            .insert(path.to_vec(), DirAttrs { mode: meta.mode, mtime: meta.mtime, mtime_ns: meta.mtime_ns });
        self.note_created(path);
        self.linkable.remove(path);
        self.explicit_dirs.insert(path.to_vec());
        if whited_out {
            // This layer both removes the name and makes it a directory: the directory hides
            // what lower layers have there, whichever entry came first.
            self.opaque(&paths::join(path, OPAQUE_NAME), path, &marker_meta(meta))?;
        }
        Ok(())
    }

    /// Whether this layer whited out `path` (so far); the `.wh.` marker of the wh form is
    /// removed, since an entry of the same layer takes the name. (A char-device whiteout is
    /// replaced by the entry as any existing object is.)
    fn take_whiteout(&mut self, pfd: &OwnedFd, name: &[u8], path: &[u8]) -> Result<bool> {
        if !self.whiteouts.remove(path) {
            return Ok(false);
        }
        if self.chardev == Some(false) {
            let mut marker = WH_PREFIX.to_vec();
            marker.extend_from_slice(name);
            match fsutil::unlink_at(pfd.as_fd(), &marker, false) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(Error::from(e).context("remove the whiteout marker"));
                }
                _ => {}
            }
        }
        Ok(true)
    }

    fn create_symlink(&mut self, path: &[u8], target: &[u8], meta: &Meta) -> Result<()> {
        if target.is_empty() {
            return Err(Error::new("symlink with an empty target"));
        }
        let (pfd, name) = self.parent_of(path)?;
        self.take_whiteout(&pfd, &name, path)?;
        match fsutil::symlink_at(target, pfd.as_fd(), &name) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                self.replace(&pfd, &name, path)?;
                fsutil::symlink_at(target, pfd.as_fd(), &name).ctx(|| "symlink")?;
            }
            Err(err) => return Err(Error::from(err).context("symlink")),
        }
        if self.am_root {
            fsutil::chown_at(pfd.as_fd(), &name, meta.uid, meta.gid).ctx(|| "chown")?;
        }
        // (user.* xattrs are not allowed on symlinks: warned about and skipped.)
        self.set_xattrs(XattrFd::Link(pfd.as_fd(), &name), &meta.xattrs)?;
        fsutil::utimes_at(pfd.as_fd(), &name, meta.mtime, meta.mtime_ns).ctx(|| "set mtime")?;
        self.note_created(path);
        self.linkable.insert(path.to_vec());
        Ok(())
    }

    fn create_hardlink(&mut self, path: &[u8], raw_target: &[u8]) -> Result<()> {
        let target = paths::sanitize(raw_target)
            .map_err(|e| Error::new(format!("hard link target {}: {e}", show(raw_target))))?;
        if target.is_empty() || !self.linkable.contains(&target) {
            return Err(Error::new(format!(
                "hard link to {} which is not an earlier non-directory entry of this layer",
                show(raw_target)
            )));
        }
        if target == path {
            return Ok(());
        }
        // Open the target's directory independently of the cached stack.
        let (tparent, tname) = paths::split_last(&target);
        let tfd = self.resolve_dir(tparent, false)?.ok_or_else(|| Error::new("hard link target vanished"))?;
        let (pfd, name) = self.parent_of(path)?;
        self.take_whiteout(&pfd, &name, path)?;
        match fsutil::link_at(tfd.as_fd(), tname, pfd.as_fd(), &name) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                self.replace(&pfd, &name, path)?;
                fsutil::link_at(tfd.as_fd(), tname, pfd.as_fd(), &name).ctx(|| "link")?;
            }
            Err(err) => return Err(Error::from(err).context(format!("link to {}", show(&target)))),
        }
        self.note_created(path);
        self.linkable.insert(path.to_vec());
        Ok(())
    }

    fn create_node(&mut self, path: &[u8], kind: u32, major: u32, minor: u32, meta: &Meta) -> Result<()> {
        let (pfd, name) = self.parent_of(path)?;
        self.take_whiteout(&pfd, &name, path)?;
        let dev = libc::makedev(major, minor);
        let mut r = fsutil::mknod_at(pfd.as_fd(), &name, kind | meta.mode, dev);
        if matches!(&r, Err(e) if e.kind() == io::ErrorKind::AlreadyExists) {
            self.replace(&pfd, &name, path)?;
            r = fsutil::mknod_at(pfd.as_fd(), &name, kind | meta.mode, dev);
        }
        match r {
            Ok(()) => {
                self.finish_node(&pfd, &name, meta)?;
            }
            Err(err) if kind != libc::S_IFIFO && errno_is(&err, &[libc::EPERM, libc::EACCES]) => {
                // Unprivileged: an empty file carrying the real stat.
                let f =
                    fsutil::create_file_at(pfd.as_fd(), &name, 0o600).ctx(|| "create device placeholder")?;
                let t = if kind == libc::S_IFCHR { "char" } else { "block" };
                let v = format!("{}:{}:{:04o}:{t}-{major}-{minor}", meta.uid, meta.gid, meta.mode);
                fsutil::set_xattr(XattrFd::Fd(f.as_fd()), OVERRIDE_STAT, v.as_bytes())
                    .ctx(|| "cannot create device node (mknod refused) nor record it in user.containers.override_stat")?;
                let m = Meta { mode: meta.mode & 0o777, ..meta.clone() };
                self.finish_fd(&f, &m)?;
            }
            Err(err) => return Err(Error::from(err).context("mknod")),
        }
        self.note_created(path);
        self.linkable.insert(path.to_vec());
        Ok(())
    }

    /// Attributes of a freshly made node (fifo, device, whiteout device).
    fn finish_node(&mut self, pfd: &OwnedFd, name: &[u8], meta: &Meta) -> Result<()> {
        if self.am_root {
            fsutil::chown_at(pfd.as_fd(), name, meta.uid, meta.gid).ctx(|| "chown")?;
        }
        fsutil::chmod_at(pfd.as_fd(), name, meta.mode).ctx(|| "chmod")?;
        if !meta.xattrs.is_empty() {
            let h = fsutil::open_path_at(pfd.as_fd(), name).ctx(|| "open")?;
            self.set_xattrs(XattrFd::Proc(h.as_fd()), &meta.xattrs)?;
        }
        fsutil::utimes_at(pfd.as_fd(), name, meta.mtime, meta.mtime_ns).ctx(|| "set mtime")?;
        Ok(())
    }

    // ---- whiteouts -------------------------------------------------------

    /// An empty regular file standing for a whiteout marker (wh form).
    fn create_marker(&mut self, path: &[u8], meta: &Meta) -> Result<()> {
        let (pfd, name) = self.parent_of(path)?;
        let f = match fsutil::create_file_at(pfd.as_fd(), &name, 0o600) {
            Ok(f) => f,
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                self.replace(&pfd, &name, path)?;
                fsutil::create_file_at(pfd.as_fd(), &name, 0o600).ctx(|| "create")?
            }
            Err(err) => return Err(Error::from(err).context("create")),
        };
        self.finish_fd(&f, meta)?;
        Ok(())
    }

    fn whiteout(&mut self, path: &[u8], target: &[u8], meta: &Meta) -> Result<()> {
        if self.opts.flatten {
            return self.perform_whiteout(target);
        }
        if self.whited_out_ancestor(target).is_some() {
            return Ok(()); // beneath a name this layer whites out: hidden already
        }
        let (pfd, name) = self.parent_of(target)?;
        match fsutil::stat_at(pfd.as_fd(), &name) {
            // The layer has the name already: a non-directory wins as it is. A directory of
            // the layer's own (an entry for it, entries beneath it, or its opaque marker) is
            // made opaque, so what lower layers have there stays hidden, whichever entry came
            // first; one that was only made to hold whiteouts gives way to this whiteout.
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                let own = self.explicit_dirs.contains(target) || self.touched.contains(target);
                if own || !only_whiteouts(&pfd, &name)? {
                    return self.opaque(&paths::join(target, OPAQUE_NAME), target, &marker_meta(meta));
                }
                remove_all(pfd.as_fd(), &name).ctx(|| format!("remove {}", show(target)))?;
                self.forget(target);
            }
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::from(e).context(format!("stat {}", show(target)))),
        }
        let (pfd, name) = self.parent_of(target)?;
        if self.chardev == Some(false) {
            self.create_marker(path, meta)?;
            self.whiteouts.insert(target.to_vec());
            return Ok(());
        }
        match fsutil::mknod_at(pfd.as_fd(), &name, libc::S_IFCHR | meta.mode, 0) {
            Ok(()) => {
                self.chardev = Some(true);
                self.finish_node(&pfd, &name, &Meta { xattrs: Vec::new(), ..meta.clone() })?;
                self.whiteouts.insert(target.to_vec());
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e)
                if self.chardev.is_none()
                    && errno_is(&e, &[libc::EPERM, libc::EACCES, libc::EINVAL, libc::ENOTSUP]) =>
            {
                log::info!("mknod refused ({e}); writing .wh. whiteout files");
                self.chardev = Some(false);
                self.create_marker(path, meta)?;
                self.whiteouts.insert(target.to_vec());
                Ok(())
            }
            Err(e) => {
                Err(Error::from(e).context("cannot create a char-device whiteout (try --whiteouts wh)"))
            }
        }
    }

    fn opaque(&mut self, path: &[u8], dir: &[u8], meta: &Meta) -> Result<()> {
        // (A directory this layer whited out becomes the layer's own, as for any entry in it.)
        let (dfd, _) = self.parent_of(path)?;
        self.note_created(dir);
        if self.opts.flatten {
            for ent in fsutil::read_dir(dfd.as_fd()).ctx(|| "read directory")? {
                let p = paths::join(dir, &ent.name);
                self.remove_lower(&dfd, &ent.name, &p)?;
            }
            return Ok(());
        }
        if self.chardev == Some(false) {
            self.create_marker(path, meta)?;
            let _ = fsutil::set_xattr(XattrFd::Fd(dfd.as_fd()), b"user.overlay.opaque", b"y");
            return Ok(());
        }
        match fsutil::set_xattr(XattrFd::Fd(dfd.as_fd()), b"trusted.overlay.opaque", b"y") {
            Ok(()) => Ok(()),
            Err(e) => match fsutil::set_xattr(XattrFd::Fd(dfd.as_fd()), b"user.overlay.opaque", b"y") {
                Ok(()) => Ok(()),
                Err(e2) if self.chardev.is_none() => {
                    log::info!("cannot mark opaque directories ({e}; {e2}); writing .wh..wh..opq files");
                    self.chardev = Some(false);
                    self.create_marker(path, meta)
                }
                Err(e2) => Err(Error::new(format!("cannot mark directory opaque: trusted: {e}; user: {e2}"))),
            },
        }
    }

    /// Flatten: hide `target` of lower layers.
    fn perform_whiteout(&mut self, target: &[u8]) -> Result<()> {
        let (parent, name) = paths::split_last(target);
        let Some(pfd) = self.resolve_dir(parent, false)? else {
            return Ok(());
        };
        match fsutil::stat_at(pfd.as_fd(), name) {
            Ok(_) => self.remove_lower(&pfd, name, target),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::from(e).context(format!("stat {}", show(target)))),
        }
    }

    /// Removes everything at or beneath `path` that the current layer did not
    /// create.
    fn remove_lower(&mut self, dfd: &OwnedFd, name: &[u8], path: &[u8]) -> Result<()> {
        if !self.touched.contains(path) {
            remove_all(dfd.as_fd(), name).ctx(|| format!("remove {}", show(path)))?;
            self.forget(path);
            return Ok(());
        }
        let st = fsutil::stat_at(dfd.as_fd(), name).ctx(|| format!("stat {}", show(path)))?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            let cfd = fsutil::open_dir_at(dfd.as_fd(), name).ctx(|| format!("open {}", show(path)))?;
            for ent in fsutil::read_dir(cfd.as_fd()).ctx(|| format!("read {}", show(path)))? {
                let p = paths::join(path, &ent.name);
                self.remove_lower(&cfd, &ent.name, &p)?;
            }
        }
        Ok(())
    }

    /// Sets the deferred directory modes and mtimes, deepest first.
    fn apply_dir_attrs(&mut self) -> Result<()> {
        let attrs = std::mem::take(&mut self.dir_attrs);
        for (path, a) in attrs.iter().rev() {
            let (parent, name) = paths::split_last(path);
            let Some(pfd) = self.resolve_dir(parent, false).ok().flatten() else { continue };
            let fd = match fsutil::open_dir_at(pfd.as_fd(), name) {
                Ok(fd) => fd,
                Err(_) => continue, // replaced by a later entry
            };
            fsutil::fchmod(fd.as_fd(), a.mode).ctx(|| format!("chmod {}", show(path)))?;
            fsutil::futimens(fd.as_fd(), a.mtime, a.mtime_ns)
                .ctx(|| format!("set mtime of {}", show(path)))?;
        }
        self.stack.clear();
        Ok(())
    }
}

/// Keeps error details short (the tar crate quotes raw header bytes).
/// The value of the last record with `key` (later records win).
fn last_record<'a>(recs: &'a [(Vec<u8>, Vec<u8>)], key: &[u8]) -> Option<&'a [u8]> {
    recs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_slice())
}

fn clip(s: &str) -> String {
    if s.chars().count() <= 100 {
        return s.to_string();
    }
    let mut t: String = s.chars().take(100).collect();
    t.push_str("...");
    t
}

/// Parses a PAX time `[-]sec[.frac]`.
/// Entry types that carry no data.
fn header_only(et: tar::EntryType) -> bool {
    use tar::EntryType as T;
    matches!(et, T::Link | T::Symlink | T::Char | T::Block | T::Directory | T::Fifo)
}

/// A header's mtime field: octal, or GNU base-256, which is big-endian two's complement below
/// its marker bit and so holds times before 1970 (the tar crate reads those as huge unsigned
/// numbers). Times beyond what `i64` holds are clamped.
fn header_mtime(h: &tar::Header) -> Option<i64> {
    let f = &h.as_bytes()[136..148];
    if f[0] & 0x80 == 0 {
        return Some(i64::try_from(h.mtime().ok()?).unwrap_or(i64::MAX));
    }
    let neg = f[0] & 0x40 != 0;
    let mut v: i128 = if neg { -1 } else { 0 };
    for (i, &b) in f.iter().enumerate() {
        // The first byte's top bit is the marker; its next bit is the sign.
        let b = if i == 0 && !neg { b & 0x7f } else { b };
        v = (v << 8) | i128::from(b);
    }
    Some(i64::try_from(v).unwrap_or(if neg { i64::MIN } else { i64::MAX }))
}

fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = int.parse().ok()?;
    let mut ns: u32 = 0;
    let mut digits = 0;
    for c in frac.chars() {
        if digits == 9 {
            break;
        }
        ns = ns * 10 + c.to_digit(10)?;
        digits += 1;
    }
    for _ in digits..9 {
        ns *= 10;
    }
    if neg {
        if ns > 0 { Some((-sec - 1, 1_000_000_000 - ns)) } else { Some((-sec, 0)) }
    } else {
        Some((sec, ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_time() {
        assert_eq!(parse_pax_time(b"1700000000"), Some((1700000000, 0)));
        assert_eq!(parse_pax_time(b"1700000000.5"), Some((1700000000, 500_000_000)));
        assert_eq!(parse_pax_time(b"1.123456789123"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_pax_time(b"x"), None);
    }

    #[test]
    fn whiteout_mode_parse() {
        assert_eq!("wh".parse::<WhiteoutMode>().unwrap(), WhiteoutMode::Wh);
        assert!("x".parse::<WhiteoutMode>().is_err());
    }
}
