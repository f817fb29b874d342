//! `layerfs check UPPERDIR [--work WORKDIR] [--repair]`: finds what a crash or another tool can
//! leave in an upper directory and its workdir, and optionally repairs what is safe to repair.
//!
//! Findings, one line each on stdout (`kind: path: explanation`):
//! - `stale-work`: an entry in `WORKDIR/work` (layerfs builds copy-ups and removed directories
//!   there; anything left is litter from an interrupted operation). `half-copy` is the same for a
//!   regular file (a copy-up cut short; a zero-length one is called out). `bad-work`:
//!   `WORKDIR/work` exists but is not a directory (a symlink is never followed).
//! - `whiteout-conflict`: a `.wh.NAME` file beside a real `NAME` in the same upper directory.
//! - `whiteout-in-opaque`: a whiteout (`.wh.NAME`, char device 0/0, or an xattr whiteout in an
//!   `opaque=x` directory) inside an opaque directory, where it hides nothing.
//! - `opaque-marker` (info, does not make the exit status 1): a `.wh..wh..opq` marker in a
//!   directory without an opaque xattr, where this process could set one.
//!
//! Exit status: 0 clean (info lines only), 1 when findings remain (after `--repair`: what the
//! re-check still finds), 2 on a usage or I/O error.
//!
//! Hard parts, and where they are handled:
//! 1. Hostile trees: the upper is walked fd-relative, one name at a time, with
//!    `O_NOFOLLOW|O_DIRECTORY` ([`sys::openat`]), never by path, so a symlink (`a -> /`) or a
//!    directory swapped for a symlink mid-walk is never followed; the walk does not cross into
//!    another filesystem. Depth costs one fd per level and no Rust stack (an explicit stack of
//!    frames), and the fd limit is raised first.
//! 2. A stale `.wh.NAME` beside a directory `NAME` is not just litter: layerfs (like the OCI
//!    layer format) reads "a directory beside its own whiteout" as an opaque directory. Removing
//!    the whiteout alone would let the lower layers' entries of NAME show through, so the repair
//!    first makes NAME opaque (in the form a layerfs mount writes) and only then removes the
//!    whiteout. Beside a non-directory or another whiteout the `.wh.` file is simply redundant.
//! 3. Whiteouts in an opaque directory hide nothing (nothing below an opaque directory is
//!    merged), so removing them never changes the merged view; a `.wh.NAME` there counts once
//!    even when NAME also exists.
//! 4. Names are bytes: paths are printed with control characters, backslashes and invalid
//!    UTF-8 escaped (`\xNN`), so every finding stays one line.
//! 5. Repairing an upper that is in use races with the server: `--repair` refuses when a kernel
//!    overlay mount lists the directory as its upperdir (a FUSE server's upper is not visible in
//!    the mount table: do not run `--repair` on a mounted layerfs upper).
//! 6. `--repair` re-runs the check afterwards and the exit status reflects what remains, so a
//!    repair that could not be done (EPERM, EROFS...) is not reported as success.

use std::ffi::{CStr, CString, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use clap::Parser;

use crate::layer;
use crate::name;
use crate::sys::{self, Stat};
use crate::whiteout;

#[derive(Parser, Debug)]
#[command(
    name = "layerfs check",
    about = "Check an overlay upper directory (and its workdir) for crash and tool leftovers",
    disable_version_flag = true
)]
struct Args {
    /// The upper directory.
    upper: PathBuf,
    /// The workdir of the mount (its `work` subdirectory is checked).
    #[arg(long, value_name = "WORKDIR")]
    work: Option<PathBuf>,
    /// Fix what can be fixed safely, then check again.
    #[arg(long)]
    repair: bool,
}

/// What a finding is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    StaleWork,
    HalfCopy,
    BadWork,
    WhiteoutConflict,
    WhiteoutInOpaque,
    OpaqueMarker,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::StaleWork => "stale-work",
            Kind::HalfCopy => "half-copy",
            Kind::BadWork => "bad-work",
            Kind::WhiteoutConflict => "whiteout-conflict",
            Kind::WhiteoutInOpaque => "whiteout-in-opaque",
            Kind::OpaqueMarker => "opaque-marker",
        }
    }

    /// Info findings are reported but do not make the upper "unclean".
    pub fn is_info(self) -> bool {
        matches!(self, Kind::OpaqueMarker)
    }
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub kind: Kind,
    /// The full path, raw bytes.
    pub path: Vec<u8>,
    pub explanation: String,
}

impl Finding {
    pub fn line(&self) -> String {
        format!("{}: {}: {}", self.kind.as_str(), escape(&self.path), self.explanation)
    }
}

/// The result of one check pass.
#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// What `repair` did, one line each (`repaired: path: action`).
    pub repaired: Vec<String>,
    /// I/O errors met (the pass went on past them).
    pub errors: Vec<String>,
}

impl Report {
    /// Findings that are not info only.
    pub fn problems(&self) -> usize {
        self.findings.iter().filter(|f| !f.kind.is_info()).count()
    }
}

/// Escapes a path for one-line output: control bytes, backslash, DEL and invalid UTF-8 as `\xNN`.
pub fn escape(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                for byte in c.to_string().bytes() {
                    out.push_str(&format!("\\x{byte:02x}"));
                }
            } else {
                out.push(c);
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

fn join(base: &[u8], n: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    if !v.ends_with(b"/") {
        v.push(b'/');
    }
    v.extend_from_slice(n);
    v
}

fn is_dir(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn is_reg(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}

fn kind_name(st: &Stat) -> &'static str {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => "directory",
        libc::S_IFREG => "regular file",
        libc::S_IFLNK => "symlink",
        libc::S_IFCHR if st.st_rdev == 0 => "whiteout (char device 0/0)",
        libc::S_IFCHR => "char device",
        libc::S_IFBLK => "block device",
        libc::S_IFIFO => "fifo",
        _ => "socket",
    }
}

fn cs(n: &[u8]) -> io::Result<CString> {
    CString::new(n).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Opens a directory entry for reading its listing, refusing symlinks.
fn open_dir_read(dir: &OwnedFd, n: &CStr) -> io::Result<OwnedFd> {
    sys::openat(dir.as_fd(), n, libc::O_RDONLY | libc::O_DIRECTORY, 0)
}

/// Removes `dir/name`, recursively for a directory, never following symlinks.
fn remove_tree(dir: &OwnedFd, n: &CStr) -> io::Result<()> {
    crate::fs::remove_tree_at(dir, n)
}

/// Which opaque xattr this process could set on the directory, if any: `trusted.` as root,
/// else `user.overlay.opaque` where the filesystem has user xattrs (probed by a read: ENODATA
/// means supported, EOPNOTSUPP not).
fn settable_opaque_xattr(fd: &OwnedFd) -> Option<&'static str> {
    let p = sys::proc_fd_path(fd.as_raw_fd(), None);
    let mut buf = [0u8; 8];
    if sys::geteuid() == 0 {
        match sys::getxattr_into(&p, c"trusted.overlay.opaque", true, &mut buf) {
            Ok(_) => return Some("trusted.overlay.opaque"),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => return Some("trusted.overlay.opaque"),
            Err(_) => {}
        }
    }
    let mut buf2 = [0u8; 8];
    match sys::getxattr_into(&p, c"user.overlay.opaque", true, &mut buf2) {
        Ok(_) => Some("user.overlay.opaque"),
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Some("user.overlay.opaque"),
        Err(_) => None,
    }
}

/// Makes a directory opaque the way a layerfs mount does: `trusted.overlay.opaque=y` when
/// allowed, else `user.overlay.opaque=y` (best effort) plus a `.wh..wh..opq` marker.
fn make_opaque(dir: &OwnedFd, n: &CStr) -> io::Result<&'static str> {
    let fd = open_dir_read(dir, n)?;
    let p = sys::proc_fd_path(fd.as_raw_fd(), None);
    if sys::setxattr(&p, c"trusted.overlay.opaque", b"y", 0, true).is_ok() {
        return Ok("trusted.overlay.opaque=y");
    }
    let user_ok = sys::setxattr(&p, c"user.overlay.opaque", b"y", 0, true).is_ok();
    let marker = cs(name::OPAQUE_MARKER)?;
    sys::openat(fd.as_fd(), &marker, libc::O_WRONLY | libc::O_CREAT, 0o600)?;
    Ok(if user_ok { "user.overlay.opaque=y and .wh..wh..opq" } else { ".wh..wh..opq" })
}

struct Checker {
    repair: bool,
    report: Report,
}

impl Checker {
    fn finding(&mut self, kind: Kind, path: Vec<u8>, explanation: String) {
        self.report.findings.push(Finding { kind, path, explanation });
    }

    fn error(&mut self, path: &[u8], e: &io::Error) {
        self.report.errors.push(format!("{}: {e}", escape(path)));
    }

    fn repaired(&mut self, path: &[u8], what: &str) {
        self.report.repaired.push(format!("repaired: {}: {what}", escape(path)));
    }

    /// Checks `WORKDIR/work`.
    fn check_work(&mut self, workdir: &Path) {
        let wpath = workdir.as_os_str().as_bytes().to_vec();
        let wroot = match sys::cstr(workdir.as_os_str())
            .and_then(|c| sys::open_trusted(&c, libc::O_PATH | libc::O_DIRECTORY, 0))
        {
            Ok(fd) => fd,
            Err(e) => return self.error(&wpath, &e),
        };
        let work_path = join(&wpath, b"work");
        let work = match open_dir_read(&wroot, c"work") {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR) | Some(libc::ELOOP)) => {
                let what = sys::fstatat(wroot.as_fd(), c"work").map(|st| kind_name(&st)).unwrap_or("?");
                self.finding(
                    Kind::BadWork,
                    work_path.clone(),
                    format!("is a {what}, not a directory; a mount cannot use this workdir"),
                );
                if self.repair {
                    match sys::unlinkat(wroot.as_fd(), c"work", false) {
                        Ok(()) => self.repaired(&work_path, "removed (the next mount recreates it)"),
                        Err(e) => self.error(&work_path, &e),
                    }
                }
                return;
            }
            Err(e) => return self.error(&work_path, &e),
        };
        let entries = match sys::read_dir_all(work.as_fd()) {
            Ok(v) => v,
            Err(e) => return self.error(&work_path, &e),
        };
        for ent in entries {
            let path = join(&work_path, &ent.name);
            let Ok(cn) = cs(&ent.name) else { continue };
            let st = match sys::fstatat(work.as_fd(), &cn) {
                Ok(st) => st,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => {
                    self.error(&path, &e);
                    continue;
                }
            };
            let chr = st.st_mode & libc::S_IFMT == libc::S_IFCHR;
            if chr
                && st.st_rdev == 0
                && ent.name.starts_with(b"#")
                && ent.name[1..].iter().all(u8::is_ascii_hexdigit)
            {
                // Kernel overlayfs keeps one whiteout here (`#<hex>`) to link new whiteouts to,
                // and leaves it at unmount; its next mount clears it.
                continue;
            }
            if is_reg(&st) {
                let expl = if st.st_size == 0 {
                    "zero-length regular file left in the workdir (a copy-up or create cut short \
                     before any data was copied)"
                        .to_string()
                } else {
                    format!(
                        "regular file of {} bytes left in the workdir (a copy-up cut short; the \
                         upper never saw it)",
                        st.st_size
                    )
                };
                self.finding(Kind::HalfCopy, path.clone(), expl);
            } else if is_dir(&st) {
                let n = open_dir_read(&work, &cn)
                    .and_then(|fd| sys::read_dir_all(fd.as_fd()))
                    .map(|v| v.len().to_string())
                    .unwrap_or_else(|_| "?".into());
                self.finding(
                    Kind::StaleWork,
                    path.clone(),
                    format!(
                        "directory ({n} entries) left in the workdir (a directory copy-up or a \
                         removal cut short)"
                    ),
                );
            } else {
                self.finding(
                    Kind::StaleWork,
                    path.clone(),
                    format!("{} left in the workdir by an interrupted operation", kind_name(&st)),
                );
            }
            if self.repair {
                match remove_tree(&work, &cn) {
                    Ok(()) => self.repaired(&path, "removed"),
                    Err(e) => self.error(&path, &e),
                }
            }
        }
    }

    /// Checks one upper directory (its own entries; the caller descends).
    /// Returns the names of the subdirectories to descend into.
    fn check_dir(&mut self, fd: &OwnedFd, path: &[u8]) -> Vec<Vec<u8>> {
        let entries = match sys::read_dir_all(fd.as_fd()) {
            Ok(v) => v,
            Err(e) => {
                self.error(path, &e);
                return Vec::new();
            }
        };
        let mut stats: Vec<(Vec<u8>, CString, Stat)> = Vec::with_capacity(entries.len());
        for ent in entries {
            let Ok(cn) = cs(&ent.name) else { continue };
            match sys::fstatat(fd.as_fd(), &cn) {
                Ok(st) => stats.push((ent.name, cn, st)),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => self.error(&join(path, &ent.name), &e),
            }
        }
        let marks = layer::xattr_marks(fd);
        let has_marker = stats.iter().any(|(n, _, _)| n.as_slice() == name::OPAQUE_MARKER);
        let opaque = marks.opaque || has_marker;
        let find = |n: &[u8]| stats.iter().find(|(m, _, _)| m.as_slice() == n).map(|(_, _, st)| *st);

        let mut subdirs = Vec::new();
        let mut removed: Vec<Vec<u8>> = Vec::new();
        for (n, cn, st) in &stats {
            let p = join(path, n);
            if n.as_slice() == name::OPAQUE_MARKER {
                if !marks.opaque {
                    if let Some(x) = settable_opaque_xattr(fd) {
                        self.finding(
                            Kind::OpaqueMarker,
                            p,
                            format!(
                                "opaque marker without an opaque xattr ({x}=y could be set; kernel \
                                 overlayfs reads only the xattr)"
                            ),
                        );
                    }
                }
                continue;
            }
            if let Some(target) = name::whiteout_target(n) {
                let beside = find(target);
                if opaque {
                    let also = match &beside {
                        Some(b) => format!("; a {} {} also exists", kind_name(b), escape(target)),
                        None => String::new(),
                    };
                    self.finding(
                        Kind::WhiteoutInOpaque,
                        p.clone(),
                        format!("whiteout file in an opaque directory hides nothing{also}"),
                    );
                    if self.repair {
                        match remove_tree(fd, cn) {
                            Ok(()) => self.repaired(&p, "removed the redundant whiteout"),
                            Err(e) => self.error(&p, &e),
                        }
                    }
                    removed.push(n.clone());
                } else if let Some(b) = beside {
                    let expl = if is_dir(&b) {
                        format!(
                            "whiteout beside the directory {} (the directory was recreated; the \
                             whiteout keeps it opaque)",
                            escape(target)
                        )
                    } else {
                        format!("whiteout beside the {} {} of the same name", kind_name(&b), escape(target))
                    };
                    self.finding(Kind::WhiteoutConflict, p.clone(), expl);
                    if self.repair {
                        let tn = cs(target);
                        let r = tn.and_then(|tn| {
                            let mut what = String::new();
                            if is_dir(&b) {
                                let sub = open_dir_read(fd, &tn)?;
                                let sm = layer::xattr_marks(&sub);
                                let sub_marker = sys::exists_at(sub.as_fd(), &cs(name::OPAQUE_MARKER)?)?;
                                if !sm.opaque && !sub_marker {
                                    what = format!(
                                        "made {} opaque ({}), ",
                                        escape(target),
                                        make_opaque(fd, &tn)?
                                    );
                                }
                            }
                            remove_tree(fd, cn)?;
                            Ok(what)
                        });
                        match r {
                            Ok(w) => self.repaired(&p, &format!("{w}removed the stale whiteout")),
                            Err(e) => self.error(&p, &e),
                        }
                    }
                }
                continue;
            }
            let chardev_wh = whiteout::is_chardev_whiteout(st.st_mode, st.st_rdev);
            if opaque && layer::is_whiteout_entry(fd, cn, st, marks) {
                let form = if chardev_wh { "char device 0/0" } else { "xattr" };
                self.finding(
                    Kind::WhiteoutInOpaque,
                    p.clone(),
                    format!("{form} whiteout in an opaque directory hides nothing"),
                );
                if self.repair {
                    match sys::unlinkat(fd.as_fd(), cn, false) {
                        Ok(()) => self.repaired(&p, "removed the redundant whiteout"),
                        Err(e) => self.error(&p, &e),
                    }
                }
                continue;
            }
            if is_dir(st) && !removed.contains(n) {
                subdirs.push(n.clone());
            }
        }
        subdirs
    }

    /// Walks the upper depth-first with one fd per level and no recursion.
    fn walk_upper(&mut self, upper: &Path) {
        let upath = upper.as_os_str().as_bytes().to_vec();
        let root = match sys::cstr(upper.as_os_str())
            .and_then(|c| sys::open_trusted(&c, libc::O_RDONLY | libc::O_DIRECTORY, 0))
        {
            Ok(fd) => fd,
            Err(e) => return self.error(&upath, &e),
        };
        let dev = match sys::fstat(root.as_fd()) {
            Ok(st) => st.st_dev,
            Err(e) => return self.error(&upath, &e),
        };
        struct Frame {
            fd: OwnedFd,
            path: Vec<u8>,
            todo: Vec<Vec<u8>>,
        }
        let mut todo = self.check_dir(&root, &upath);
        todo.reverse();
        let mut stack = vec![Frame { fd: root, path: upath, todo }];
        while let Some(top) = stack.last_mut() {
            let Some(n) = top.todo.pop() else {
                stack.pop();
                continue;
            };
            let p = join(&top.path, &n);
            let Ok(cn) = cs(&n) else { continue };
            let fd = match open_dir_read(&top.fd, &cn) {
                Ok(fd) => fd,
                // Gone or replaced by a non-directory/symlink since the listing: not followed.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)) => {
                    continue;
                }
                Err(e) => {
                    self.error(&p, &e);
                    continue;
                }
            };
            match sys::fstat(fd.as_fd()) {
                Ok(st) if st.st_dev != dev => continue, // another filesystem mounted here
                Ok(_) => {}
                Err(e) => {
                    self.error(&p, &e);
                    continue;
                }
            }
            let mut todo = self.check_dir(&fd, &p);
            todo.reverse();
            stack.push(Frame { fd, path: p, todo });
        }
    }
}

/// Runs one check pass (with repairs when `repair`).
pub fn check(upper: &Path, work: Option<&Path>, repair: bool) -> Report {
    sys::raise_nofile_limit();
    let mut c = Checker { repair, report: Report::default() };
    if let Some(w) = work {
        c.check_work(w);
    }
    c.walk_upper(upper);
    c.report
}

/// True when a kernel overlay mount uses `upper` as its upperdir.
fn upper_in_use(upper: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(upper) else { return false };
    let want = format!("upperdir={}", canon.to_string_lossy());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mounts
        .lines()
        .any(|l| l.split(&[',', ' '][..]).any(|opt| crate::mount::unescape_mountinfo(opt) == want.as_bytes()))
}

/// `layerfs check ...`; `args[0]` is "check". Returns the exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    let mut a = match Args::try_parse_from(&args) {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                print!("{e}");
                return 0;
            }
            let msg = e.to_string();
            let first = msg.lines().find(|l| !l.trim().is_empty()).unwrap_or("usage error");
            eprintln!("layerfs: check: {}", first.trim_start_matches("error: "));
            eprintln!("usage: layerfs check UPPERDIR [--work WORKDIR] [--repair]");
            return 2;
        }
    };
    // The directories as a mount names them (a path through a symlink is followed, as the
    // mount's own option parsing does).
    match std::fs::canonicalize(&a.upper).and_then(|c| std::fs::metadata(&c).map(|m| (c, m))) {
        Ok((c, m)) if m.is_dir() => a.upper = c,
        Ok(_) => {
            eprintln!("layerfs: check: {}: not a directory", a.upper.display());
            return 2;
        }
        Err(e) => {
            eprintln!("layerfs: check: {}: {e}", a.upper.display());
            return 2;
        }
    }
    if let Some(w) = a.work.as_ref().and_then(|w| std::fs::canonicalize(w).ok()) {
        a.work = Some(w);
    }
    if a.repair && upper_in_use(&a.upper) {
        eprintln!(
            "layerfs: check: {} is the upperdir of a mounted overlay; unmount it before --repair",
            a.upper.display()
        );
        return 2;
    }
    let first = check(&a.upper, a.work.as_deref(), a.repair);
    for f in &first.findings {
        println!("{}", f.line());
    }
    for r in &first.repaired {
        println!("{r}");
    }
    for e in &first.errors {
        eprintln!("layerfs: check: {e}");
    }
    if !first.errors.is_empty() {
        return 2;
    }
    let end = if a.repair {
        let again = check(&a.upper, a.work.as_deref(), false);
        for f in again.findings.iter().filter(|f| !f.kind.is_info()) {
            println!("remaining {}", f.line());
        }
        for e in &again.errors {
            eprintln!("layerfs: check: {e}");
        }
        if !again.errors.is_empty() {
            return 2;
        }
        again
    } else {
        first
    };
    let n = end.problems();
    if n == 0 {
        0
    } else {
        eprintln!("layerfs: check: {n} finding(s) remain");
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn tmp() -> tempfile::TempDir {
        tempfile::Builder::new().prefix("layerfs-check").tempdir().unwrap()
    }

    fn kinds(r: &Report) -> Vec<(Kind, String)> {
        let mut v: Vec<_> = r.findings.iter().map(|f| (f.kind, escape(&f.path))).collect();
        v.sort_by(|a, b| a.1.cmp(&b.1));
        v
    }

    #[test]
    fn escapes_paths() {
        assert_eq!(escape(b"a/b c"), "a/b c");
        assert_eq!(escape(b"a\nb"), "a\\x0ab");
        assert_eq!(escape(b"a\\b"), "a\\x5cb");
        assert_eq!(escape(b"\xffx"), "\\xffx");
        assert_eq!(escape("é".as_bytes()), "é");
    }

    #[test]
    fn clean_tree_is_clean() {
        let t = tmp();
        let u = t.path().join("u");
        fs::create_dir_all(u.join("a/b")).unwrap();
        fs::write(u.join("a/f"), b"x").unwrap();
        fs::write(u.join("a/.wh.gone"), b"").unwrap();
        symlink("/", u.join("a/root")).unwrap();
        let r = check(&u, None, false);
        assert!(r.findings.is_empty() && r.errors.is_empty(), "{r:?}");
    }

    #[test]
    fn finds_and_repairs_conflicts() {
        let t = tmp();
        let u = t.path().join("u");
        fs::create_dir_all(u.join("d/sub")).unwrap();
        fs::write(u.join("f"), b"x").unwrap();
        fs::write(u.join(".wh.f"), b"").unwrap();
        fs::write(u.join(".wh.d"), b"").unwrap();
        fs::write(u.join("d/.wh..wh..opq"), b"").unwrap();
        fs::write(u.join("d/.wh.x"), b"").unwrap();
        fs::write(u.join("d/sub/.wh.y"), b"").unwrap();
        let r = check(&u, None, false);
        let k = kinds(&r);
        let up = u.to_string_lossy();
        assert!(k.contains(&(Kind::WhiteoutConflict, format!("{up}/.wh.f"))), "{k:?}");
        assert!(k.contains(&(Kind::WhiteoutConflict, format!("{up}/.wh.d"))), "{k:?}");
        assert!(k.contains(&(Kind::WhiteoutInOpaque, format!("{up}/d/.wh.x"))), "{k:?}");
        assert!(!k.iter().any(|(_, p)| p.ends_with("sub/.wh.y")), "{k:?}");
        assert_eq!(r.problems(), 3, "{k:?}");
        let r = check(&u, None, true);
        assert_eq!(r.repaired.len(), 3, "{r:?}");
        assert!(r.errors.is_empty(), "{r:?}");
        let r2 = check(&u, None, false);
        assert_eq!(r2.problems(), 0, "{r2:?}");
        assert!(u.join("f").exists() && u.join("d/sub/.wh.y").exists());
        assert!(!u.join(".wh.d").exists() && u.join("d/.wh..wh..opq").exists());
    }

    #[test]
    fn workdir_leftovers() {
        let t = tmp();
        let u = t.path().join("u");
        let w = t.path().join("w");
        fs::create_dir_all(&u).unwrap();
        fs::create_dir_all(w.join("work/#3/x")).unwrap();
        fs::write(w.join("work/#1"), b"half").unwrap();
        fs::write(w.join("work/#2"), b"").unwrap();
        let r = check(&u, Some(&w), false);
        let k: Vec<_> = r.findings.iter().map(|f| f.kind).collect();
        assert_eq!(k.iter().filter(|k| **k == Kind::HalfCopy).count(), 2, "{r:?}");
        assert_eq!(k.iter().filter(|k| **k == Kind::StaleWork).count(), 1, "{r:?}");
        assert!(r.findings.iter().any(|f| f.explanation.starts_with("zero-length")));
        check(&u, Some(&w), true);
        assert_eq!(fs::read_dir(w.join("work")).unwrap().count(), 0);
        assert_eq!(check(&u, Some(&w), false).problems(), 0);
    }

    #[test]
    fn symlinked_work_is_not_followed() {
        let t = tmp();
        let u = t.path().join("u");
        let w = t.path().join("w");
        let victim = t.path().join("victim");
        fs::create_dir_all(&u).unwrap();
        fs::create_dir_all(&w).unwrap();
        fs::create_dir_all(&victim).unwrap();
        fs::write(victim.join("precious"), b"x").unwrap();
        symlink(&victim, w.join("work")).unwrap();
        let r = check(&u, Some(&w), true);
        assert_eq!(r.findings.len(), 1, "{r:?}");
        assert_eq!(r.findings[0].kind, Kind::BadWork);
        assert!(victim.join("precious").exists());
        assert!(fs::symlink_metadata(w.join("work")).is_err());
    }
}
