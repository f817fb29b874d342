//! `layerfs compare [--keep] LOWERDIR... -- COMMAND [ARGS...]`: runs a command once on kernel
//! overlayfs and once on layerfs, each over its own copy of the same layers, and reports every
//! difference: merged trees, upper directories after canonicalisation, exit codes.
//!
//! Hard parts:
//! 1. Each side gets its own `cp -a` copy of the layers (xattrs, whiteouts and hard links
//!    kept), so neither run sees the other's changes. `.wh.` forms are turned into the
//!    kernel's forms (char device 0/0, `trusted.overlay.opaque`) on the kernel's copy only.
//! 2. Upper directories hold the same changes in different forms: whiteouts as char 0/0 or
//!    `.wh.X` files, opaque directories as xattrs or `.wh..wh..opq`, plus private xattrs
//!    (`trusted.overlay.origin`, ...). [`canonical_upper`] maps all of them to one form.
//! 3. Where the kernel mount is refused (no root, no overlay) it says so and runs layerfs
//!    only; the exit code is then 2 (nothing was compared).
//! 4. A termination signal (Ctrl-C, SIGTERM, SIGHUP) leaves nothing mounted and, without
//!    `--keep`, no scratch directory: a thread takes the signal, passes it on to the process
//!    group of whatever compare waits for (a copy, a mount, the command), and compare then
//!    unmounts, removes its copies and exits with 128 + the signal's number.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::sys;

/// One object of a tree, with what is compared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// `d f l c b p s`, or `W` for a whiteout in a canonical upper.
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Content hash of a file, target of a symlink, `major:minor` of a device, `opaque` for an
    /// opaque directory of a canonical upper.
    pub content: String,
    pub xattrs: Vec<(String, String)>,
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.kind == 'W' {
            return write!(f, "whiteout");
        }
        write!(f, "{} {:04o} {}:{}", self.kind, self.mode, self.uid, self.gid)?;
        match self.kind {
            'f' => write!(f, " size={} sha256={}", self.size, self.content)?,
            'l' => write!(f, " -> {}", self.content)?,
            _ if !self.content.is_empty() => write!(f, " {}", self.content)?,
            _ => {}
        }
        for (k, v) in &self.xattrs {
            write!(f, " {k}={v:?}")?;
        }
        Ok(())
    }
}

fn is_private_xattr(n: &str) -> bool {
    n.starts_with("trusted.overlay.")
        || n.starts_with("user.overlay.")
        || n.starts_with("user.fuseoverlayfs.")
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

/// Extended attributes of `p` (not following a symlink): file capabilities and ACLs, not the
/// other `security.*`/`system.*` ones (labels the host's LSM gives); the overlay's private
/// ones only with `keep_private`.
pub fn xattrs(p: &Path, keep_private: bool) -> Vec<(String, String)> {
    let c = cpath(p);
    let Ok(list) = sys::listxattr(&c, false) else { return Vec::new() };
    let mut out = Vec::new();
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let s = String::from_utf8_lossy(name).to_string();
        let compared = s == "security.capability" || s.starts_with("system.posix_acl_");
        if ((s.starts_with("security.") || s.starts_with("system.")) && !compared)
            || (!keep_private && is_private_xattr(&s))
        {
            continue;
        }
        let cn = CString::new(name).unwrap_or_default();
        let v = match sys::getxattr(&c, &cn, false) {
            Ok(v) => String::from_utf8_lossy(&v).to_string(),
            Err(e) => format!("<error {}>", e.raw_os_error().unwrap_or(0)),
        };
        out.push((s, v));
    }
    out.sort();
    out
}

fn file_hash(p: &Path) -> String {
    let mut f = match std::fs::File::open(p) {
        Ok(f) => f,
        Err(e) => return format!("<open error {}>", e.raw_os_error().unwrap_or(0)),
    };
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) => return format!("<read error {}>", e.raw_os_error().unwrap_or(0)),
        }
    }
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn kind_char(ft: &std::fs::FileType) -> char {
    if ft.is_dir() {
        'd'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_file() {
        'f'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else if ft.is_fifo() {
        'p'
    } else {
        's'
    }
}

fn error_entry(e: &std::io::Error) -> Entry {
    Entry { kind: '!', mode: 0, uid: 0, gid: 0, size: 0, content: e.to_string(), xattrs: vec![] }
}

/// Walks a tree (never following symlinks): relative path → entry. Directory sizes and all
/// times are left out (they legitimately differ between implementations).
pub fn snapshot(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    // The root too: a chmod of `.`, or an xattr set on it, is a change like any other.
    if let Ok(md) = std::fs::symlink_metadata(root) {
        out.insert(".".to_string(), entry_of(root, &md));
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => {
                let rel = dir.strip_prefix(root).unwrap_or(&dir).to_string_lossy().to_string();
                out.insert(format!("{rel}/<readdir error>"), error_entry(&e));
                continue;
            }
        };
        for de in rd {
            let de = match de {
                Ok(d) => d,
                Err(e) => {
                    out.insert(format!("{}/<readdir error>", dir.display()), error_entry(&e));
                    continue;
                }
            };
            let p = de.path();
            let rel = p.strip_prefix(root).unwrap_or(&p).to_string_lossy().to_string();
            let md = match std::fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(e) => {
                    out.insert(rel, error_entry(&e));
                    continue;
                }
            };
            let e = entry_of(&p, &md);
            let dir = e.kind == 'd';
            out.insert(rel, e);
            if dir {
                stack.push(p);
            }
        }
    }
    out
}

/// What [`snapshot`] records of `p` (`md`, its metadata, not following a symlink).
fn entry_of(p: &Path, md: &std::fs::Metadata) -> Entry {
    let kind = kind_char(&md.file_type());
    let content = match kind {
        'f' => file_hash(p),
        'l' => std::fs::read_link(p).map(|t| t.to_string_lossy().to_string()).unwrap_or_default(),
        'c' | 'b' => format!("{}:{}", sys::major(md.rdev()), sys::minor(md.rdev())),
        _ => String::new(),
    };
    Entry {
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: if kind == 'f' || kind == 'l' { md.size() } else { 0 },
        content,
        xattrs: xattrs(p, false),
    }
}

fn whiteout_entry() -> Entry {
    Entry { kind: 'W', mode: 0, uid: 0, gid: 0, size: 0, content: String::new(), xattrs: vec![] }
}

/// An upper directory in one form: whiteouts (char 0/0, `.wh.X`, or a zero-size file with an
/// `overlay.whiteout` xattr) become `W`, opaque directories (xattr in any namespace or a
/// `.wh..wh..opq` marker) get `opaque` as content, private xattrs are dropped.
pub fn canonical_upper(root: &Path) -> BTreeMap<String, Entry> {
    let raw = snapshot(root);
    let mut out = BTreeMap::new();
    for (k, mut e) in raw {
        let p = root.join(&k);
        let rel = Path::new(&k);
        let name = rel.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let parent = rel.parent().map(|p| p.to_string_lossy().to_string()).unwrap_or_default();
        let join = |n: &str| if parent.is_empty() { n.to_string() } else { format!("{parent}/{n}") };
        if name == ".wh..wh..opq" {
            continue;
        }
        if let Some(t) = name.strip_prefix(".wh.") {
            out.insert(join(t), whiteout_entry());
            continue;
        }
        let priv_x = xattrs(&p, true);
        let has = |suffix: &str| {
            priv_x
                .iter()
                .any(|(n, v)| is_private_xattr(n) && n.ends_with(suffix) && (suffix != ".opaque" || v == "y"))
        };
        if (e.kind == 'c' && e.content == "0:0") || (e.kind == 'f' && e.size == 0 && has(".whiteout")) {
            out.insert(k, whiteout_entry());
            continue;
        }
        if e.kind == 'd' && (has(".opaque") || p.join(".wh..wh..opq").exists()) {
            e.content = "opaque".into();
        }
        out.insert(k, e);
    }
    out
}

/// Lines describing every difference between two snapshots.
pub fn diff_trees(
    a_name: &str,
    a: &BTreeMap<String, Entry>,
    b_name: &str,
    b: &BTreeMap<String, Entry>,
) -> Vec<String> {
    let mut d = Vec::new();
    for (k, va) in a {
        match b.get(k) {
            None => d.push(format!("only on {a_name}: {k}: {va}")),
            Some(vb) if vb != va => d.push(format!("differs: {k}\n    {a_name}: {va}\n    {b_name}: {vb}")),
            _ => {}
        }
    }
    for (k, vb) in b {
        if !a.contains_key(k) {
            d.push(format!("only on {b_name}: {k}: {vb}"));
        }
    }
    d
}

fn set_opaque(dir: &Path) -> std::io::Result<()> {
    sys::setxattr(&cpath(dir), c"trusted.overlay.opaque", b"y", 0, false)
}

/// Converts `.wh.X` files and `.wh..wh..opq` markers into the kernel's forms in place: a char
/// device 0/0 for X (or, when this layer has a directory X, that directory made opaque) and
/// the `trusted.overlay.opaque` xattr.
pub fn convert_to_kernel_whiteouts(root: &Path) -> std::io::Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        // The user-namespace opaque marks mean nothing to a kernel mount without `userxattr`,
        // which copies them up as plain xattrs (and the upper then read as opaque here).
        for x in [c"user.overlay.opaque", c"user.fuseoverlayfs.opaque"] {
            if let Ok(v) = sys::getxattr(&cpath(&d), x, false) {
                if v == b"y" {
                    set_opaque(&d)?;
                }
                sys::removexattr(&cpath(&d), x, false)?;
            }
        }
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let p = e.path();
            let n = e.file_name();
            let ft = e.file_type()?;
            if n.as_bytes() == b".wh..wh..opq" {
                std::fs::remove_file(&p)?;
                set_opaque(&d)?;
            } else if let Some(t) = n.as_bytes().strip_prefix(b".wh.") {
                if ft.is_dir() {
                    std::fs::remove_dir_all(&p)?;
                } else {
                    std::fs::remove_file(&p)?;
                }
                let target = d.join(OsStr::from_bytes(t));
                match std::fs::symlink_metadata(&target) {
                    Ok(md) if md.is_dir() => set_opaque(&target)?,
                    Ok(_) => {}
                    Err(_) => {
                        let dir = std::fs::File::open(&d)?;
                        let name = CString::new(t).map_err(std::io::Error::other)?;
                        sys::mknodat(sys::bfd(&dir), &name, libc::S_IFCHR, 0)?;
                    }
                }
            } else if ft.is_dir() {
                stack.push(p);
            }
        }
    }
    Ok(())
}

/// The termination signal compare took (SIGINT, SIGTERM or SIGHUP), or 0.
static STOPPED: AtomicI32 = AtomicI32::new(0);
/// The process group of the child compare waits for, or 0: the signal is passed on to it.
static CHILD_GROUP: AtomicI32 = AtomicI32::new(0);

/// Takes the termination signals on a thread of their own from now on (see the module's
/// point 4), those not ignored (`nohup`, a background job: they stay ignored, for compare and
/// the children it starts, which inherit the disposition). Children get them unblocked again
/// ([`output`]).
fn take_signals() {
    sys::take_term_signals(|sig| {
        STOPPED.store(sig, Ordering::SeqCst);
        pass_on(CHILD_GROUP.load(Ordering::SeqCst), sig);
    });
}

/// Passes `sig` on to process group `group` (if any), then SIGCONT, as timeout(1) does: a
/// group out of the terminal's foreground that touched the terminal is stopped, and a stopped
/// group would keep the signal pending.
fn pass_on(group: i32, sig: i32) {
    if group > 0 {
        // SAFETY: kill(2) of a process group compare started and has not reaped.
        unsafe {
            libc::kill(-group, sig);
            libc::kill(-group, libc::SIGCONT);
        }
    }
}

/// The signal that stopped compare, if one did.
fn stopped() -> Option<i32> {
    Some(STOPPED.load(Ordering::SeqCst)).filter(|&s| s != 0)
}

/// [`Command::output`] with the child in a process group of its own, known to the signal
/// thread while compare waits for it (a terminal's Ctrl-C reaches compare's group only). The
/// child starts with the termination signals unblocked: a child inherits its parent's signal
/// mask (the standard library leaves it as it is).
fn output(cmd: &mut Command) -> std::io::Result<Output> {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only calls sigemptyset, sigaddset and pthread_sigmask, which are
    // async-signal-safe.
    let cmd = unsafe {
        cmd.pre_exec(|| {
            sys::unblock_term_signals();
            Ok(())
        })
    };
    let child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).spawn()?;
    let group = child.id() as i32;
    CHILD_GROUP.store(group, Ordering::SeqCst);
    // A signal taken before the store is passed on here (the thread stores STOPPED first).
    if let Some(sig) = stopped() {
        pass_on(group, sig);
    }
    let out = child.wait_with_output();
    CHILD_GROUP.store(0, Ordering::SeqCst);
    out
}

fn copy_tree(src: &Path, dst: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dst).map_err(|e| format!("{}: {e}", dst.display()))?;
    let mut s = src.as_os_str().to_owned();
    s.push("/.");
    let out = output(Command::new("cp").arg("-a").arg(&s).arg(dst)).map_err(|e| format!("cp: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cp -a {} {}: {}",
            src.display(),
            dst.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// A path as a mount option's value: `\\`, `:` and `,` escaped.
fn esc(p: &Path) -> String {
    p.to_string_lossy().replace('\\', "\\\\").replace(':', "\\:").replace(',', "\\,")
}

fn join_layers(lowers: &[PathBuf]) -> String {
    lowers.iter().map(|p| esc(p)).collect::<Vec<_>>().join(":")
}

fn is_mounted(p: &Path) -> bool {
    let m = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let want = p.as_os_str().as_encoded_bytes();
    m.lines().any(|l| l.split(' ').nth(1).is_some_and(|f| crate::mount::unescape_mountinfo(f) == want))
}

fn unmount(p: &Path, fuse: bool) {
    for _ in 0..50 {
        let mut ok = false;
        if fuse {
            ok = Command::new("fusermount3").arg("-u").arg(p).output().is_ok_and(|o| o.status.success());
        }
        ok = ok || Command::new("umount").arg(p).output().is_ok_and(|o| o.status.success());
        if ok || !is_mounted(p) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("umount").arg("-l").arg(p).status();
}

/// What one run produced.
struct Run {
    name: &'static str,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    merged: BTreeMap<String, Entry>,
    upper: BTreeMap<String, Entry>,
}

fn run_command(cmd: &[OsString], mnt: &Path) -> Result<(Option<i32>, String, String), String> {
    let out = output(Command::new(&cmd[0]).args(&cmd[1..]).current_dir(mnt).env("LAYERFS_COMPARE_ROOT", mnt));
    match out {
        Ok(o) => {
            let norm = |b: &[u8]| String::from_utf8_lossy(b).replace(&*mnt.to_string_lossy(), "$ROOT");
            Ok((o.status.code(), norm(&o.stdout), norm(&o.stderr)))
        }
        Err(e) => Err(format!("cannot run {}: {e}", cmd[0].to_string_lossy())),
    }
}

/// Copies the layers for one side: `DIR/lower0..`, `upper`, `work`, `mnt`.
fn prepare(side: &Path, lowers: &[PathBuf], kernel_forms: bool) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for (i, l) in lowers.iter().enumerate() {
        let d = side.join(format!("lower{i}"));
        copy_tree(l, &d)?;
        if kernel_forms {
            convert_to_kernel_whiteouts(&d)
                .map_err(|e| format!("converting whiteouts in {}: {e}", d.display()))?;
        }
        out.push(d);
    }
    for n in ["upper", "work", "mnt"] {
        std::fs::create_dir_all(side.join(n)).map_err(|e| format!("{}: {e}", side.display()))?;
    }
    Ok(out)
}

fn mount_opts(side: &Path, lowers: &[PathBuf]) -> String {
    format!(
        "lowerdir={},upperdir={},workdir={}",
        join_layers(lowers),
        esc(&side.join("upper")),
        esc(&side.join("work"))
    )
}

fn run_side(name: &'static str, side: &Path, lowers: &[PathBuf], cmd: &[OsString]) -> Result<Run, String> {
    let kernel = name == "kernel";
    let copies = prepare(side, lowers, kernel)?;
    let mnt = side.join("mnt");
    let o = mount_opts(side, &copies);
    if let Some(sig) = stopped() {
        return Err(interrupted(sig));
    }
    let out = if kernel {
        output(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o"])
                .arg(format!("{o},redirect_dir=off,index=off,metacopy=off,xino=off"))
                .arg(&mnt),
        )
    } else {
        let exe = std::env::current_exe().map_err(|e| format!("current executable: {e}"))?;
        output(Command::new(exe).arg("-o").arg(&o).arg(&mnt))
    };
    // A signal during the mount command may have ended it after the mount was made.
    let out = match out {
        Ok(o) if o.status.success() => o,
        _ if is_mounted(&mnt) => {
            unmount(&mnt, !kernel);
            return Err(stopped().map_or_else(|| format!("{name} mount failed"), interrupted));
        }
        Ok(o) => {
            return Err(format!("{name} mount refused: {}", String::from_utf8_lossy(&o.stderr).trim()));
        }
        Err(e) => return Err(format!("{name} mount: {e}")),
    };
    drop(out);
    let ran = match stopped() {
        Some(sig) => Err(interrupted(sig)),
        None => run_command(cmd, &mnt),
    };
    let merged = if stopped().is_some() { BTreeMap::new() } else { snapshot(&mnt) };
    unmount(&mnt, !kernel);
    if is_mounted(&mnt) {
        return Err(format!("{} is still mounted", mnt.display()));
    }
    if let Some(sig) = stopped() {
        return Err(interrupted(sig));
    }
    // A command that could not be started compared nothing (it read as two identical runs).
    let (code, stdout, stderr) = ran?;
    Ok(Run { name, code, stdout, stderr, merged, upper: canonical_upper(&side.join("upper")) })
}

fn interrupted(sig: i32) -> String {
    format!("interrupted by signal {sig}")
}

/// Reports why a side did not run; after a signal, the signal (a copy or command it ended
/// fails with a message of its own).
fn fail(e: &str) {
    match stopped() {
        Some(sig) => eprintln!("layerfs compare: {}", interrupted(sig)),
        None => eprintln!("layerfs compare: {e}"),
    }
}

fn make_tmp() -> Result<PathBuf, String> {
    let base = std::env::var_os("TMPDIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    for i in 0..100u32 {
        let p = base.join(format!("layerfs-compare-{}-{:x}{i}", std::process::id(), t.subsec_nanos()));
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("{}: {e}", p.display())),
        }
    }
    Err("cannot make a scratch directory".into())
}

fn show_output(r: &Run) {
    for (what, s) in [("stdout", &r.stdout), ("stderr", &r.stderr)] {
        if s.is_empty() {
            continue;
        }
        println!("--- {} {what}:", r.name);
        let cut: String = s.chars().take(4000).collect();
        print!("{cut}");
        if !cut.ends_with('\n') {
            println!();
        }
    }
}

pub const USAGE: &str = "\
usage: layerfs compare [--keep] LOWERDIR... -- COMMAND [ARGS...]
Copies the layers (top first) twice, runs COMMAND (cwd and $LAYERFS_COMPARE_ROOT: the mount)
on kernel overlayfs and on layerfs, and reports every difference in the merged trees, in the
upper directories (canonical forms) and in the exit codes.
exit: 0 identical, 1 different, 2 nothing compared (bad usage, kernel mount refused, setup error)
  --keep    keep the copies, uppers and logs (the directory is printed)
";

/// `layerfs compare ...` (arguments after `compare`). Returns the exit code.
pub fn main(args: &[OsString]) -> i32 {
    let mut keep = false;
    let mut lowers = Vec::new();
    let mut it = args.iter();
    let mut cmd: Vec<OsString> = Vec::new();
    for a in it.by_ref() {
        match a.as_bytes() {
            b"--" => break,
            b"--keep" => keep = true,
            b"-h" | b"--help" => {
                print!("{USAGE}");
                return 0;
            }
            _ => lowers.push(PathBuf::from(a)),
        }
    }
    cmd.extend(it.cloned());
    if lowers.is_empty() || cmd.is_empty() {
        eprint!("{USAGE}");
        return 2;
    }
    let mut canon = Vec::new();
    for l in &lowers {
        match std::fs::canonicalize(l) {
            Ok(p) if p.is_dir() => canon.push(p),
            Ok(p) => {
                eprintln!("layerfs compare: {}: not a directory", p.display());
                return 2;
            }
            Err(e) => {
                eprintln!("layerfs compare: {}: {e}", l.display());
                return 2;
            }
        }
    }
    take_signals();
    let tmp = match make_tmp() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("layerfs compare: {e}");
            return 2;
        }
    };
    let mut code = compare(&tmp, &canon, &cmd);
    if let Some(sig) = stopped() {
        code = 128 + sig;
    }
    if keep {
        println!("kept: {}", tmp.display());
    } else if !is_mounted(&tmp.join("kernel/mnt")) && !is_mounted(&tmp.join("layerfs/mnt")) {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    code
}

fn compare(tmp: &Path, lowers: &[PathBuf], cmd: &[OsString]) -> i32 {
    let kernel = match run_side("kernel", &tmp.join("kernel"), lowers, cmd) {
        Ok(r) => Some(r),
        Err(e) if stopped().is_some() => {
            fail(&e);
            return 2;
        }
        Err(e) => {
            println!("kernel overlayfs: {e}; running layerfs only");
            None
        }
    };
    let lfs = match run_side("layerfs", &tmp.join("layerfs"), lowers, cmd) {
        Ok(r) => r,
        Err(e) => {
            fail(&e);
            return 2;
        }
    };
    let code_str = |c: Option<i32>| c.map_or("killed by a signal".to_string(), |c| c.to_string());
    let Some(k) = kernel else {
        println!("layerfs: exit {}", code_str(lfs.code));
        show_output(&lfs);
        println!("not compared: the kernel overlay mount was refused");
        return 2;
    };
    let mut diffs = Vec::new();
    if k.code != lfs.code {
        diffs.push(format!("exit code: kernel {}, layerfs {}", code_str(k.code), code_str(lfs.code)));
    }
    for d in diff_trees("kernel", &k.merged, "layerfs", &lfs.merged) {
        diffs.push(format!("merged tree: {d}"));
    }
    for d in diff_trees("kernel", &k.upper, "layerfs", &lfs.upper) {
        diffs.push(format!("upper dir: {d}"));
    }
    println!("kernel: exit {}, layerfs: exit {}", code_str(k.code), code_str(lfs.code));
    if k.stdout != lfs.stdout || k.stderr != lfs.stderr || !diffs.is_empty() {
        show_output(&k);
        show_output(&lfs);
        if k.stdout != lfs.stdout || k.stderr != lfs.stderr {
            println!("note: the output differs ($ROOT stands for each mountpoint; not counted)");
        }
    }
    if diffs.is_empty() {
        println!("identical: {} merged entries, {} upper entries", k.merged.len(), k.upper.len());
        0
    } else {
        println!("{} difference(s):", diffs.len());
        for d in &diffs {
            println!("  {d}");
        }
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_option_escaping() {
        let l = vec![PathBuf::from("/a:b"), PathBuf::from("/c,d")];
        assert_eq!(join_layers(&l), "/a\\:b:/c\\,d");
    }

    #[test]
    fn entry_display() {
        let e = Entry {
            kind: 'f',
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 3,
            content: "ab".into(),
            xattrs: vec![("user.x".into(), "1".into())],
        };
        assert_eq!(e.to_string(), "f 0644 0:0 size=3 sha256=ab user.x=\"1\"");
        assert_eq!(whiteout_entry().to_string(), "whiteout");
    }
}
