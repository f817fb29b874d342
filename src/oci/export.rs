//! `layerfs diff`: turn an overlay upper directory into an OCI layer tar.
//!
//! Hard parts:
//! - **Whiteouts in every form.** A char device 0/0, a `.wh.NAME` file, or a
//!   zero-size file with `trusted.overlay.whiteout`/`user.overlay.whiteout`
//!   all become a `.wh.NAME` entry. A directory is opaque when it has
//!   `trusted.overlay.opaque=y`, `user.overlay.opaque=y`,
//!   `user.fuseoverlayfs.opaque=y` or holds a `.wh..wh..opq` file; its marker
//!   is written right after the directory entry (`opaque=x`, the kernel's
//!   "has xwhiteouts" flag, is *not* opaque).
//! - **Determinism.** Entries are written depth-first, each directory's
//!   entries sorted bytewise by the name they get in the archive (so the
//!   order is the bytewise order of the path components); times are whole
//!   seconds; no user/group names; xattrs sorted; the same tree gives the
//!   same bytes.
//! - **Hard links.** Non-directories with nlink > 1 are tracked by dev:ino;
//!   the first one written carries the data, later ones are link entries.
//!   Whiteouts are never linked (the kernel shares one whiteout inode).
//! - **Format.** USTAR headers (name/prefix split like Go's archive/tar),
//!   PAX records for long names/link targets, big ids/sizes and
//!   `SCHILY.xattr.*`. Private overlay xattrs are not exported;
//!   `user.containers.override_stat` (rootless unpack) is turned back into
//!   the owner, mode and device it stands for.
//! - **Safety.** The walk is fd-relative with `O_NOFOLLOW`; it never leaves
//!   UPPERDIR. A file whose size changes while it is read is padded or cut to
//!   the size in its header (with a warning).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::digest::{BUF_SIZE, HashingWriter};
use super::error::{Context, Error, Result, show};
use super::fsutil::{self, XattrFd};
use super::paths::{self, WH_META_PREFIX, WH_OPAQUE, WH_PREFIX};
use super::progress::Progress;
use super::unpack::is_private_xattr;

/// Result of an export.
#[derive(Debug, Clone)]
pub struct ExportReport {
    pub diff_id: String,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
}

#[derive(Debug, Clone)]
struct Hdr {
    path: Vec<u8>,
    kind: Kind,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    size: u64,
    link: Vec<u8>,
    major: u32,
    minor: u32,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Hdr {
    fn new(path: Vec<u8>, kind: Kind, st: &libc::stat) -> Hdr {
        Hdr {
            path,
            kind,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid as u64,
            gid: st.st_gid as u64,
            mtime: st.st_mtime,
            size: 0,
            link: Vec::new(),
            major: 0,
            minor: 0,
            xattrs: Vec::new(),
        }
    }
}

/// Writes `diff` of `upper` to `out`; returns the DiffID and byte count.
pub fn export<W: Write>(upper: &Path, out: W) -> Result<ExportReport> {
    export_skipping(upper, out, [None, None])
}

/// [`export`], leaving out the regular files `skip` (device, inode): the output file itself
/// when it is written inside the directory exported (as GNU tar leaves out its archive).
fn export_skipping<W: Write>(upper: &Path, out: W, skip: [Option<(u64, u64)>; 2]) -> Result<ExportReport> {
    let root = fsutil::open_dir_path(upper).ctx(|| format!("open {}", upper.display()))?;
    let st = fsutil::fstat(root.as_fd())?;
    let p = Progress::bytes(0, "diff");
    let w = HashingWriter::new(p.wrap_write(out));
    let mut ex = Exporter {
        out: TarOut { w: BufWriter::with_capacity(BUF_SIZE, w) },
        links: HashMap::new(),
        buf: vec![0u8; BUF_SIZE],
        skip,
    };
    ex.dir_contents(&root, b"", &st)?;
    ex.out.w.write_all(&[0u8; 1024]).ctx(|| "write")?;
    let hw = ex.out.w.into_inner().map_err(|e| Error::new(format!("write: {}", e.error())))?;
    let (_, diff_id, size) = hw.finish().ctx(|| "write")?;
    Ok(ExportReport { diff_id, size })
}

/// Writes the diff into `file` atomically (temporary sibling + rename).
pub fn export_to_file(upper: &Path, file: &Path) -> Result<ExportReport> {
    // What the name leads to: a device, fifo or socket (`-o /dev/null`) is written into, never
    // replaced; through a symlink, the file it names is the one replaced.
    // The file being replaced is left out of the layer, when it lies inside the directory
    // exported (a second `diff UPPER -o UPPER/x.tar`), as GNU tar leaves out its archive.
    let (file, old) = match std::fs::metadata(file) {
        Ok(m) if !m.is_file() => {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(file)
                .ctx(|| format!("open {}", file.display()))?;
            return export_skipping(upper, &f, [None, None]);
        }
        Ok(m) => {
            (std::fs::canonicalize(file).ctx(|| format!("resolve {}", file.display()))?, Some(file_id(&m)))
        }
        Err(_) => (file.to_path_buf(), None),
    };
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name =
        file.file_name().ok_or_else(|| Error::new(format!("invalid output file {}", file.display())))?;
    let tmp_name = super::unpack::tmp_sibling(name.as_bytes());
    let tmp = dir.join(std::ffi::OsStr::from_bytes(&tmp_name));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .ctx(|| format!("create {}", tmp.display()))?;
    let staged = match std::fs::File::open(dir) {
        Ok(d) => super::stop::stage(d.as_fd(), &tmp_name),
        Err(_) => 0,
    };
    let new = f.metadata().ok().map(|m| file_id(&m));
    let res = export_skipping(upper, &f, [new, old]).and_then(|r| {
        super::stop::commit(staged, || {
            std::fs::rename(&tmp, &file).ctx(|| format!("rename to {}", file.display()))
        })?;
        Ok(r)
    });
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
        super::stop::unstage(staged);
    }
    res
}

/// A file's (device, inode).
fn file_id(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

struct TarOut<W: Write> {
    w: BufWriter<W>,
}

const ZEROS: [u8; 512] = [0u8; 512];

fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    // "<len> <key>=<value>\n" where len counts itself.
    let rest = 1 + key.len() + 1 + value.len() + 1;
    let mut len = rest + 1;
    loop {
        let l = len.to_string().len() + rest;
        if l == len {
            break;
        }
        len = l;
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Splits a long name into USTAR (prefix, name) like Go's archive/tar.
fn split_ustar(name: &[u8]) -> Option<(&[u8], &[u8])> {
    if name.len() <= 100 {
        return Some((&[], name));
    }
    let mut length = name.len();
    if length > 156 {
        length = 156;
    } else if name[length - 1] == b'/' {
        length -= 1;
    }
    let i = name[..length].iter().rposition(|b| *b == b'/')?;
    let (prefix, rest) = (&name[..i], &name[i + 1..]);
    if i == 0 || rest.is_empty() || rest.len() > 100 || prefix.len() > 155 {
        return None;
    }
    Some((prefix, rest))
}

const MAX_OCTAL7: u64 = 0o7777777;
const MAX_OCTAL11: u64 = 0o77777777777;

impl<W: Write> TarOut<W> {
    fn raw_header(
        &mut self,
        name: &[u8],
        prefix: &[u8],
        h: &Hdr,
        typ: tar::EntryType,
        size: u64,
    ) -> Result<()> {
        let mut th = tar::Header::new_ustar();
        {
            let u = th.as_ustar_mut().expect("ustar header");
            let n = name.len().min(100);
            u.name[..n].copy_from_slice(&name[..n]);
            let p = prefix.len().min(155);
            u.prefix[..p].copy_from_slice(&prefix[..p]);
            let l = h.link.len().min(100);
            u.linkname[..l].copy_from_slice(&h.link[..l]);
        }
        th.set_entry_type(typ);
        th.set_mode(h.mode);
        th.set_uid(if h.uid > MAX_OCTAL7 { 0 } else { h.uid });
        th.set_gid(if h.gid > MAX_OCTAL7 { 0 } else { h.gid });
        th.set_size(if size > MAX_OCTAL11 { 0 } else { size });
        th.set_mtime(if h.mtime < 0 || h.mtime as u64 > MAX_OCTAL11 { 0 } else { h.mtime as u64 });
        if matches!(h.kind, Kind::Char | Kind::Block) {
            th.set_device_major(h.major).ctx(|| "device major")?;
            th.set_device_minor(h.minor).ctx(|| "device minor")?;
        }
        th.set_cksum();
        self.w.write_all(th.as_bytes()).ctx(|| "write")?;
        Ok(())
    }

    fn entry(&mut self, h: &Hdr, data: Option<(&mut File, &mut [u8])>) -> Result<()> {
        super::stop::check()?;
        let mut name = h.path.clone();
        if h.kind == Kind::Dir {
            name.push(b'/');
        }
        let mut pax = Vec::new();
        let split = split_ustar(&name);
        if split.is_none() {
            pax_record(&mut pax, b"path", &name);
        }
        if h.link.len() > 100 {
            pax_record(&mut pax, b"linkpath", &h.link);
        }
        if h.uid > MAX_OCTAL7 {
            pax_record(&mut pax, b"uid", h.uid.to_string().as_bytes());
        }
        if h.gid > MAX_OCTAL7 {
            pax_record(&mut pax, b"gid", h.gid.to_string().as_bytes());
        }
        if h.size > MAX_OCTAL11 {
            pax_record(&mut pax, b"size", h.size.to_string().as_bytes());
        }
        if h.mtime < 0 || h.mtime as u64 > MAX_OCTAL11 {
            pax_record(&mut pax, b"mtime", h.mtime.to_string().as_bytes());
        }
        for (k, v) in &h.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(k);
            pax_record(&mut pax, &key, v);
        }
        if !pax.is_empty() {
            let (_, base) = paths::split_last(&h.path);
            let mut pname = b"PaxHeaders/".to_vec();
            pname.extend_from_slice(base);
            pname.truncate(100);
            let ph = Hdr { mode: 0o644, link: Vec::new(), kind: Kind::File, ..h.clone() };
            self.raw_header(&pname, &[], &ph, tar::EntryType::XHeader, pax.len() as u64)?;
            self.w.write_all(&pax).ctx(|| "write")?;
            self.pad(pax.len() as u64)?;
        }
        let (prefix, short) = split.unwrap_or((&[], &name[..name.len().min(100)]));
        let typ = match h.kind {
            Kind::File => tar::EntryType::Regular,
            Kind::Dir => tar::EntryType::Directory,
            Kind::Symlink => tar::EntryType::Symlink,
            Kind::Hardlink => tar::EntryType::Link,
            Kind::Char => tar::EntryType::Char,
            Kind::Block => tar::EntryType::Block,
            Kind::Fifo => tar::EntryType::Fifo,
        };
        let size = if h.kind == Kind::File { h.size } else { 0 };
        self.raw_header(short, prefix, h, typ, size)?;
        if size > 0 {
            let (f, buf) = data.ok_or_else(|| Error::new("internal: file without data"))?;
            let mut left = size;
            while left > 0 {
                super::stop::check()?;
                let want = (buf.len() as u64).min(left) as usize;
                let n = match f.read(&mut buf[..want]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Error::from(e).context(format!("read {}", show(&h.path)))),
                };
                if n == 0 {
                    log::warn!("{} shrank while being read; padding with zeros", show(&h.path));
                    while left > 0 {
                        let z = left.min(512) as usize;
                        self.w.write_all(&ZEROS[..z]).ctx(|| "write")?;
                        left -= z as u64;
                    }
                    break;
                }
                self.w.write_all(&buf[..n]).ctx(|| "write")?;
                left -= n as u64;
            }
            self.pad(size)?;
        }
        Ok(())
    }

    fn pad(&mut self, size: u64) -> Result<()> {
        let rem = (size % 512) as usize;
        if rem != 0 {
            self.w.write_all(&ZEROS[..512 - rem]).ctx(|| "write")?;
        }
        Ok(())
    }
}

struct Exporter<W: Write> {
    out: TarOut<W>,
    links: HashMap<(u64, u64), Vec<u8>>,
    buf: Vec<u8>,
    /// The output files (device, inode), never exported.
    skip: [Option<(u64, u64)>; 2],
}

/// How a directory child is exported.
enum Class {
    /// Emitted as `.wh.NAME` (char 0/0, xattr whiteout, or a `.wh.` file).
    Whiteout,
    /// `.wh..wh..opq`: handled with the directory.
    OpaqueMarker,
    /// Not representable / AUFS metadata.
    Skip,
    Normal,
}

struct Child {
    emit: Vec<u8>,
    name: Vec<u8>,
    st: libc::stat,
    class: Class,
}

fn ftype(st: &libc::stat) -> u32 {
    st.st_mode & libc::S_IFMT
}

fn has_whiteout_xattr(dfd: &OwnedFd, name: &[u8]) -> bool {
    let Ok(f) = fsutil::open_file_ro_at(dfd.as_fd(), name) else { return false };
    let x = XattrFd::Fd(f.as_fd());
    [&b"trusted.overlay.whiteout"[..], b"user.overlay.whiteout"]
        .iter()
        .any(|n| matches!(fsutil::get_xattr(x, n), Ok(Some(_))))
}

fn is_opaque(x: XattrFd<'_>) -> bool {
    [&b"trusted.overlay.opaque"[..], b"user.overlay.opaque", b"user.fuseoverlayfs.opaque"]
        .iter()
        .any(|n| matches!(fsutil::get_xattr(x, n), Ok(Some(v)) if v == b"y"))
}

/// Name/value pairs of extended attributes.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// Exportable xattrs (sorted) and the override_stat value, if any.
fn read_xattrs(x: XattrFd<'_>, path: &[u8]) -> Result<(Xattrs, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut ovr = None;
    let names = fsutil::list_xattrs(x).ctx(|| format!("list xattrs of {}", show(path)))?;
    for n in names {
        if crate::ovr::is_override_xattr(&n) {
            // Any of the three names (xattr_permissions=1 writes the security.* one, =2 the
            // containers one or the older fuse-overlayfs one): never exported as an xattr.
            let rank = |m: &[u8]| crate::ovr::NAMES.iter().position(|k| k.to_bytes() == m);
            if ovr.as_ref().is_none_or(|(r, _)| rank(&n) < Some(*r)) {
                if let Ok(Some(v)) = fsutil::get_xattr(x, &n) {
                    ovr = Some((rank(&n).unwrap_or(usize::MAX), v));
                }
            }
            continue;
        }
        if is_private_xattr(&n) {
            // Kernel overlayfs's metacopy=on and redirect_dir=on leave objects whose meaning
            // lies in a lower layer (the data; the directory moved): alone they make a wrong
            // layer.
            for (suffix, what) in [
                (&b".overlay.metacopy"[..], "holds metadata only (an upper made with metacopy=on)"),
                (&b".overlay.redirect"[..], "is a redirect (an upper made with redirect_dir=on)"),
            ] {
                if n.ends_with(suffix) {
                    return Err(Error::new(format!(
                        "{} {what}: its content is in a lower layer, so this upper cannot be \
                         turned into a layer on its own",
                        show(path)
                    )));
                }
            }
            continue;
        }
        match fsutil::get_xattr(x, &n) {
            Ok(Some(v)) => out.push((n, v)),
            Ok(None) => {}
            Err(e) if e.raw_os_error() == Some(libc::EACCES) || e.raw_os_error() == Some(libc::EPERM) => {
                log::warn!("cannot read xattr {} of {}: {e}", show(&n), show(path));
            }
            Err(e) => {
                return Err(Error::from(e).context(format!("read xattr {} of {}", show(&n), show(path))));
            }
        }
    }
    out.sort();
    Ok((out, ovr.map(|(_, v)| v)))
}

/// Applies an override value (`uid:gid:mode[:type]`, see [`crate::ovr`]): owner and mode,
/// and for a regular file standing for a device or fifo (made where mknod was refused), its
/// type.
fn apply_override(h: &mut Hdr, v: &[u8]) {
    let o = match crate::ovr::parse(v) {
        Ok(o) => o,
        Err(e) => {
            log::warn!("ignoring malformed override_stat on {}: {e}", show(&h.path));
            return;
        }
    };
    h.uid = u64::from(o.uid);
    h.gid = u64::from(o.gid);
    if h.kind != Kind::Symlink {
        h.mode = o.perm;
    }
    if h.kind != Kind::File {
        return;
    }
    let (kind, dev) = match o.kind {
        Some(crate::ovr::Kind::Char(ma, mi)) => (Kind::Char, (ma, mi)),
        Some(crate::ovr::Kind::Block(ma, mi)) => (Kind::Block, (ma, mi)),
        Some(crate::ovr::Kind::Pipe) => (Kind::Fifo, (0, 0)),
        _ => return,
    };
    h.kind = kind;
    (h.major, h.minor) = dev;
    h.size = 0;
}

impl<W: Write> Exporter<W> {
    /// Writes the entries inside directory `dfd` (at archive path `path`).
    fn dir_contents(&mut self, dfd: &OwnedFd, path: &[u8], dst: &libc::stat) -> Result<()> {
        let ents = fsutil::read_dir(dfd.as_fd()).ctx(|| format!("read directory {}", show_dir(path)))?;
        let mut kids = Vec::with_capacity(ents.len());
        let mut marker: Option<libc::stat> = None;
        for ent in ents {
            let st = match fsutil::stat_at(dfd.as_fd(), &ent.name) {
                Ok(st) => st,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(
                        Error::from(e).context(format!("stat {}", show(&paths::join(path, &ent.name))))
                    );
                }
            };
            let name = ent.name;
            if ftype(&st) == libc::S_IFREG && self.skip.contains(&Some((st.st_dev, st.st_ino))) {
                log::warn!("{}: the output file itself; not exported", show(&paths::join(path, &name)));
                continue;
            }
            let (class, emit) = if name == WH_OPAQUE {
                marker = Some(st);
                (Class::OpaqueMarker, name.clone())
            } else if name.starts_with(WH_META_PREFIX) {
                log::warn!("skipping AUFS metadata {}", show(&paths::join(path, &name)));
                (Class::Skip, name.clone())
            } else if name.starts_with(WH_PREFIX) {
                if name.len() == WH_PREFIX.len()
                    || &name[WH_PREFIX.len()..] == b"."
                    || &name[WH_PREFIX.len()..] == b".."
                {
                    log::warn!("skipping invalid whiteout {}", show(&paths::join(path, &name)));
                    (Class::Skip, name.clone())
                } else {
                    (Class::Whiteout, name.clone())
                }
            } else if (ftype(&st) == libc::S_IFCHR && st.st_rdev == 0)
                || (ftype(&st) == libc::S_IFREG && st.st_size == 0 && has_whiteout_xattr(dfd, &name))
            {
                (Class::Whiteout, [WH_PREFIX, &name].concat())
            } else if ftype(&st) == libc::S_IFSOCK {
                log::warn!("skipping socket {}", show(&paths::join(path, &name)));
                (Class::Skip, name.clone())
            } else {
                (Class::Normal, name.clone())
            };
            kids.push(Child { emit, name, st, class });
        }
        kids.sort_by(|a, b| a.emit.cmp(&b.emit).then_with(|| a.name.cmp(&b.name)));
        kids.dedup_by(|b, a| a.emit == b.emit);

        let opaque = marker.is_some() || is_opaque(XattrFd::Fd(dfd.as_fd()));
        if opaque {
            let mut h = match &marker {
                Some(st) => Hdr::new(paths::join(path, WH_OPAQUE), Kind::File, st),
                None => {
                    let mut h = Hdr::new(paths::join(path, WH_OPAQUE), Kind::File, dst);
                    h.mode &= 0o777;
                    h.mtime = 0;
                    h
                }
            };
            h.size = 0;
            self.out.entry(&h, None)?;
        }
        for k in kids {
            match k.class {
                Class::OpaqueMarker | Class::Skip => {}
                Class::Whiteout => {
                    let mut h = Hdr::new(paths::join(path, &k.emit), Kind::File, &k.st);
                    h.size = 0;
                    self.out.entry(&h, None)?;
                }
                Class::Normal => self.child(dfd, path, &k.name, &k.st)?,
            }
        }
        Ok(())
    }

    fn child(&mut self, dfd: &OwnedFd, parent: &[u8], name: &[u8], st: &libc::stat) -> Result<()> {
        let path = paths::join(parent, name);
        let t = ftype(st);
        if t == libc::S_IFDIR {
            let cfd = fsutil::open_dir_at(dfd.as_fd(), name).ctx(|| format!("open {}", show(&path)))?;
            let st = fsutil::fstat(cfd.as_fd())?;
            let mut h = Hdr::new(path.clone(), Kind::Dir, &st);
            let (x, ovr) = read_xattrs(XattrFd::Fd(cfd.as_fd()), &path)?;
            h.xattrs = x;
            if let Some(v) = ovr {
                apply_override(&mut h, &v);
            }
            self.out.entry(&h, None)?;
            return self.dir_contents(&cfd, &path, &st);
        }
        if st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = self.links.get(&key) {
                let mut h = Hdr::new(path.clone(), Kind::Hardlink, st);
                h.link = first.clone();
                if let (_, Some(v)) = read_xattrs(XattrFd::Link(dfd.as_fd(), name), &path)? {
                    // Owner and mode as the first name's entry shows them.
                    apply_override(&mut h, &v);
                }
                return self.out.entry(&h, None);
            }
            self.links.insert(key, path.clone());
        }
        match t {
            libc::S_IFREG => {
                let mut f =
                    fsutil::open_file_ro_at(dfd.as_fd(), name).ctx(|| format!("open {}", show(&path)))?;
                let fst = fsutil::fstat(f.as_fd())?;
                if fst.st_ino != st.st_ino || ftype(&fst) != libc::S_IFREG {
                    return Err(Error::new(format!("{} changed while being read", show(&path))));
                }
                let mut h = Hdr::new(path.clone(), Kind::File, &fst);
                h.size = fst.st_size as u64;
                let (x, ovr) = read_xattrs(XattrFd::Fd(f.as_fd()), &path)?;
                h.xattrs = x;
                if let Some(v) = ovr {
                    apply_override(&mut h, &v);
                }
                let mut buf = std::mem::take(&mut self.buf);
                let r = self.out.entry(&h, Some((&mut f, &mut buf)));
                self.buf = buf;
                r
            }
            libc::S_IFLNK => {
                let mut h = Hdr::new(path.clone(), Kind::Symlink, st);
                h.link =
                    fsutil::readlink_at(dfd.as_fd(), name).ctx(|| format!("readlink {}", show(&path)))?;
                h.mode = 0o777;
                let (x, ovr) = read_xattrs(XattrFd::Link(dfd.as_fd(), name), &path)?;
                h.xattrs = x;
                if let Some(v) = ovr {
                    apply_override(&mut h, &v);
                }
                self.out.entry(&h, None)
            }
            libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO => {
                let kind = match t {
                    libc::S_IFCHR => Kind::Char,
                    libc::S_IFBLK => Kind::Block,
                    _ => Kind::Fifo,
                };
                let mut h = Hdr::new(path.clone(), kind, st);
                if kind != Kind::Fifo {
                    h.major = libc::major(st.st_rdev);
                    h.minor = libc::minor(st.st_rdev);
                }
                if let Ok(pfd) = fsutil::open_path_at(dfd.as_fd(), name) {
                    if fsutil::fstat(pfd.as_fd()).map(|s| ftype(&s) == t).unwrap_or(false) {
                        let (x, ovr) = read_xattrs(XattrFd::Proc(pfd.as_fd()), &path)?;
                        h.xattrs = x;
                        if let Some(v) = ovr {
                            apply_override(&mut h, &v);
                        }
                    }
                }
                self.out.entry(&h, None)
            }
            _ => Ok(()),
        }
    }
}

fn show_dir(path: &[u8]) -> String {
    if path.is_empty() { "the upper directory".to_string() } else { show(path) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths() {
        let mut v = Vec::new();
        pax_record(&mut v, b"path", b"abc");
        assert_eq!(v, b"12 path=abc\n");
        let mut v = Vec::new();
        let long = vec![b'x'; 95];
        pax_record(&mut v, b"path", &long);
        let s = String::from_utf8(v.clone()).unwrap();
        let n: usize = s.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(n, v.len());
    }

    #[test]
    fn ustar_split() {
        assert_eq!(split_ustar(b"short"), Some((&b""[..], &b"short"[..])));
        let long = [vec![b'a'; 60], b"/".to_vec(), vec![b'b'; 60]].concat();
        assert_eq!(split_ustar(&long), Some((&long[..60], &long[61..])));
        assert_eq!(split_ustar(&[b'a'; 120]), None);
        let too_long = [vec![b'a'; 200], b"/".to_vec(), vec![b'b'; 10]].concat();
        assert_eq!(split_ustar(&too_long), None);
    }
}
