//! Shared test harness: mounting layerfs and kernel overlayfs, snapshots of trees, and a
//! canonical form of upper directories for comparing the two.
//!
//! Mount tests never skip in CI: when `CI` or `LAYERFS_REQUIRE_MOUNT` is set, a missing
//! /dev/fuse or a refused kernel overlay mount is a test failure.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// The binary the tests run: the one cargo built, or `LAYERFS_TEST_BIN` (another build, or a
/// wrapper that runs it some other way, e.g. under a low open-file limit).
pub fn layerfs_bin() -> PathBuf {
    std::env::var_os("LAYERFS_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_layerfs")))
}

pub fn must_mount() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("LAYERFS_REQUIRE_MOUNT").is_some()
}

/// True when FUSE mounts can be made here; in CI a missing capability panics instead.
pub fn can_mount() -> bool {
    let ok = Path::new("/dev/fuse").exists()
        && (unsafe_free_euid() == 0 || Command::new("fusermount3").arg("--version").output().is_ok());
    if !ok {
        if must_mount() {
            panic!("cannot mount FUSE here (no /dev/fuse or fusermount3) and CI requires mount tests");
        }
        eprintln!("skipped: cannot mount FUSE here");
    }
    ok
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    unsafe_free_euid() == 0
}

/// For a test that needs root: true as root; otherwise the test is skipped (false), except in
/// CI, which runs as root, where it panics with `why`.
pub fn root_or_skip(why: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(!must_mount(), "this test needs root in CI ({why})");
    eprintln!("skipped: needs root ({why})");
    false
}

fn unsafe_free_euid() -> u32 {
    fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX)
}

/// A mount that is unmounted when dropped, even when the test panics.
pub struct Mounted {
    pub mnt: PathBuf,
    pub fuse: bool,
}

impl Mounted {
    pub fn unmount(&mut self) {
        if self.mnt.as_os_str().is_empty() {
            return;
        }
        let mnt = std::mem::take(&mut self.mnt);
        for _ in 0..50 {
            let ok = if self.fuse {
                Command::new("fusermount3")
                    .arg("-u")
                    .arg(&mnt)
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false)
                    || Command::new("umount").arg(&mnt).output().map(|o| o.status.success()).unwrap_or(false)
            } else {
                Command::new("umount").arg(&mnt).output().map(|o| o.status.success()).unwrap_or(false)
            };
            if ok || !is_mounted(&mnt) {
                // Give the server a moment to exit.
                std::thread::sleep(Duration::from_millis(20));
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("umount").arg("-l").arg(&mnt).status();
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// The first live process (not a zombie) whose arguments (`argv`, empty ones dropped)
/// satisfy `pred`.
pub fn find_process(pred: impl Fn(&[String]) -> bool) -> Option<u32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
        let cmd = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<String> = cmd
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        (pred(&args) && !stat.contains(") Z ")).then_some(pid)
    })
}

/// The live server process of the layerfs mount at `mnt`: a `layerfs` whose arguments include
/// the mountpoint.
pub fn server_pid(mnt: &Path) -> Option<u32> {
    let want = mnt.to_string_lossy().into_owned();
    find_process(|args| args.iter().any(|a| a.ends_with("layerfs")) && args.contains(&want))
}

/// Makes a filesystem in a sparse image of `mib` MiB in `dir` (`mkfs` is the command, the
/// image's path appended) and loop-mounts it on `dir/x`; unmounted (and the loop device freed)
/// when the guard drops. Needs root.
pub fn loop_mount(dir: &Path, mib: u64, mkfs: &str) -> (Mounted, PathBuf) {
    let img = dir.join("fs.img");
    fs::File::create(&img).unwrap().set_len(mib << 20).unwrap();
    let (ok, out) = sh(dir, &format!("{mkfs} fs.img"));
    assert!(ok, "{mkfs}: {out}");
    let x = dir.join("x");
    fs::create_dir_all(&x).unwrap();
    let (ok, out) = sh(dir, "mount -o loop fs.img x");
    assert!(ok, "loop mount of the {mkfs} image: {out}");
    (Mounted { mnt: x.clone(), fuse: false }, x)
}

pub fn is_mounted(p: &Path) -> bool {
    let Ok(canon) = fs::canonicalize(p) else { return false };
    let m = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    m.lines()
        .any(|l| l.split(' ').nth(1).map(|x| x.replace("\\040", " ")) == Some(canon.to_string_lossy().into()))
}

fn join_layers(lowers: &[PathBuf]) -> String {
    lowers
        .iter()
        .map(|l| l.to_string_lossy().replace(':', "\\:").replace(',', "\\,"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The `-o` argument for `lowers`, upper and workdir, and `extra` options.
pub fn mount_options(lowers: &[PathBuf], uw: Option<(&Path, &Path)>, extra: &str) -> String {
    let mut o = format!("lowerdir={}", join_layers(lowers));
    if let Some((u, w)) = uw {
        o.push_str(&format!(",upperdir={},workdir={}", u.display(), w.display()));
    }
    if !extra.is_empty() {
        o.push(',');
        o.push_str(extra);
    }
    o
}

/// Mounts layerfs (daemonised, as engines run it); panics with its stderr on failure.
pub fn mount_layerfs(lowers: &[PathBuf], uw: Option<(&Path, &Path)>, mnt: &Path, extra: &str) -> Mounted {
    let o = mount_options(lowers, uw, extra);
    let out = Command::new(layerfs_bin()).arg("-o").arg(&o).arg(mnt).output().expect("run layerfs");
    assert!(out.status.success(), "layerfs mount failed: {}\n{}", String::from_utf8_lossy(&out.stderr), o);
    assert!(is_mounted(mnt), "layerfs exited 0 but {} is not mounted", mnt.display());
    Mounted { mnt: mnt.to_path_buf(), fuse: true }
}

/// Spawns `layerfs -f -o OPTS MNT` (environment `env`, stderr to `stderr`) and returns the
/// child once the mount serves; panics if it exits first or takes over 10 s.
pub fn spawn_layerfs_fg(
    opts: &str,
    mnt: &Path,
    env: &[(&str, &str)],
    stderr: std::process::Stdio,
) -> std::process::Child {
    let mut child = Command::new(layerfs_bin())
        .args(["-f", "-o", opts])
        .arg(mnt)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn layerfs -f");
    let t = std::time::Instant::now();
    while !is_mounted(mnt) {
        assert!(t.elapsed() < Duration::from_secs(10), "layerfs -f did not mount");
        if let Some(st) = child.try_wait().unwrap() {
            panic!("layerfs exited early: {st}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

/// True when the kernel overlay can be mounted here; in CI a refusal panics.
pub fn can_kernel_overlay() -> bool {
    let ok = unsafe_free_euid() == 0
        && fs::read_to_string("/proc/filesystems").unwrap_or_default().contains("overlay");
    if !ok {
        if must_mount() || std::env::var_os("LAYERFS_REQUIRE_KERNEL_OVERLAY").is_some() {
            panic!("kernel overlayfs is not available and CI requires the differential tests");
        }
        eprintln!("skipped: kernel overlayfs not available");
    }
    ok
}

/// True inside a user namespace that maps less than every id (as under `unshare -Urm`).
pub fn in_user_namespace() -> bool {
    let map = fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    map.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"]
}

/// Mounts kernel overlayfs with the options layerfs behaves like (`userxattr` in a user
/// namespace, where the kernel may not use trusted xattrs, as layerfs then does).
pub fn mount_overlay(lowers: &[PathBuf], uw: Option<(&Path, &Path)>, mnt: &Path) -> Mounted {
    let mut o = format!("lowerdir={}", join_layers(lowers));
    if let Some((u, w)) = uw {
        o.push_str(&format!(",upperdir={},workdir={}", u.display(), w.display()));
    }
    if in_user_namespace() {
        // `userxattr` takes `nofollow`, which creates and follows no redirects either.
        o.push_str(",userxattr,redirect_dir=nofollow,index=off,metacopy=off,xino=off");
    } else {
        o.push_str(",redirect_dir=off,index=off,metacopy=off,xino=off");
    }
    let out =
        Command::new("mount").args(["-t", "overlay", "overlay", "-o", &o]).arg(mnt).output().expect("mount");
    assert!(out.status.success(), "kernel overlay mount failed: {}", String::from_utf8_lossy(&out.stderr));
    Mounted { mnt: mnt.to_path_buf(), fuse: false }
}

/// One object of a tree, with what the differential tests compare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub content: String,
    pub xattrs: Vec<(String, String)>,
    pub mtime: Option<i64>,
}

fn sha16(data: &[u8]) -> String {
    let h = Sha256::digest(data);
    h.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn file_hash(p: &Path) -> String {
    let mut f = match fs::File::open(p) {
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

pub fn xattrs(p: &Path, keep_private: bool) -> Vec<(String, String)> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: buf is writable for its length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for name in buf[..n as usize].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let s = String::from_utf8_lossy(name).to_string();
        if s.starts_with("security.") || s.starts_with("system.") {
            continue;
        }
        if !keep_private
            && (s.starts_with("trusted.overlay.")
                || s.starts_with("user.overlay.")
                || s.starts_with("user.fuseoverlayfs."))
        {
            continue;
        }
        let cn = CString::new(name).unwrap();
        let mut v = vec![0u8; 65536];
        // SAFETY: v is writable for its length.
        let m = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        let val = if m >= 0 { String::from_utf8_lossy(&v[..m as usize]).to_string() } else { "<err>".into() };
        out.push((s, val));
    }
    out.sort();
    out
}

fn kind_char(ft: &fs::FileType) -> char {
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

/// Walks a tree (never following symlinks) into path → entry. `with_mtime` records mtimes of
/// non-directories (directory mtimes legitimately differ between implementations).
pub fn snapshot(root: &Path, with_mtime: bool) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    walk(root, root, if with_mtime { Mtimes::Files } else { Mtimes::No }, &mut out);
    out
}

/// [`snapshot`] with the mtimes of directories too: for trees whose directories came from the
/// same layers on both sides (the differential write runs).
pub fn snapshot_all_mtimes(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    walk(root, root, Mtimes::All, &mut out);
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Mtimes {
    No,
    Files,
    All,
}

/// A snapshot entry standing for an error (`?` readdir, `!` stat), so it shows in a diff.
fn error_entry(kind: char, e: &std::io::Error) -> Entry {
    Entry { kind, mode: 0, uid: 0, gid: 0, size: 0, content: e.to_string(), xattrs: vec![], mtime: None }
}

fn walk(root: &Path, dir: &Path, mtimes: Mtimes, out: &mut BTreeMap<String, Entry>) {
    let mut names: Vec<_> = match fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect(),
        Err(e) => {
            out.insert(format!("{}/<readdir error>", dir.display()), error_entry('?', &e));
            return;
        }
    };
    names.sort();
    for n in names {
        let p = dir.join(&n);
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
        let md = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) => {
                out.insert(rel, error_entry('!', &e));
                continue;
            }
        };
        let kind = kind_char(&md.file_type());
        let content = match kind {
            'f' => file_hash(&p),
            'l' => fs::read_link(&p).map(|t| t.to_string_lossy().to_string()).unwrap_or_default(),
            'c' | 'b' => format!("{}:{}", libc::major(md.rdev()), libc::minor(md.rdev())),
            _ => String::new(),
        };
        let e = Entry {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            size: if kind == 'f' || kind == 'l' { md.size() } else { 0 },
            content,
            xattrs: xattrs(&p, false),
            mtime: if mtimes == Mtimes::All || mtimes == Mtimes::Files && kind == 'f' {
                Some(md.mtime())
            } else {
                None
            },
        };
        out.insert(rel, e);
        if kind == 'd' {
            walk(root, &p, mtimes, out);
        }
    }
}

/// Lines describing every difference between two snapshots.
pub fn diff_snapshots(
    a_name: &str,
    a: &BTreeMap<String, Entry>,
    b_name: &str,
    b: &BTreeMap<String, Entry>,
) -> Vec<String> {
    let mut d = Vec::new();
    for (k, va) in a {
        match b.get(k) {
            None => d.push(format!("only in {a_name}: {k} {va:?}")),
            Some(vb) if vb != va => d.push(format!("differs: {k}\n  {a_name}: {va:?}\n  {b_name}: {vb:?}")),
            _ => {}
        }
    }
    for (k, vb) in b {
        if !a.contains_key(k) {
            d.push(format!("only in {b_name}: {k} {vb:?}"));
        }
    }
    d
}

/// An upper directory in a canonical form: whiteouts (char 0/0 or `.wh.X`) become `W`, opaque
/// directories (trusted/user xattr or `.wh..wh..opq`) get `opaque` in their content, private
/// xattrs are dropped. Directory modes, owners and file data are kept.
pub fn canonical_upper(root: &Path) -> BTreeMap<String, Entry> {
    let raw = snapshot(root, false);
    let mut out = BTreeMap::new();
    for (k, mut e) in raw.clone() {
        let p = root.join(&k);
        let name = Path::new(&k).file_name().unwrap().to_string_lossy().to_string();
        let parent = Path::new(&k).parent().map(|p| p.to_string_lossy().to_string()).unwrap_or_default();
        let join = |n: &str| if parent.is_empty() { n.to_string() } else { format!("{parent}/{n}") };
        if name == ".wh..wh..opq" {
            continue;
        }
        if let Some(t) = name.strip_prefix(".wh.") {
            out.insert(join(t), whiteout_entry());
            continue;
        }
        if e.kind == 'c' && e.content == "0:0" {
            out.insert(k, whiteout_entry());
            continue;
        }
        if e.kind == 'd' {
            let priv_x = xattrs(&p, true);
            let opaque = priv_x.iter().any(|(n, v)| {
                (n == "trusted.overlay.opaque"
                    || n == "user.overlay.opaque"
                    || n == "user.fuseoverlayfs.opaque")
                    && v == "y"
            }) || p.join(".wh..wh..opq").exists();
            if opaque {
                e.content = "opaque".into();
            }
        }
        out.insert(k, e);
    }
    out
}

fn whiteout_entry() -> Entry {
    Entry { kind: 'W', mode: 0, uid: 0, gid: 0, size: 0, content: String::new(), xattrs: vec![], mtime: None }
}

/// Copies a tree with `cp -a` (keeps whiteouts, xattrs, hard links).
pub fn copy_tree(src: &Path, dst: &Path) {
    let st = Command::new("cp").arg("-a").arg(format!("{}/.", src.display())).arg(dst).status().unwrap();
    assert!(st.success(), "cp -a {} {}", src.display(), dst.display());
}

/// Converts `.wh.X` files and `.wh..wh..opq` markers into the kernel's forms (char 0/0 and the
/// trusted.overlay.opaque xattr), in place.
pub fn convert_to_kernel_whiteouts(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let n = e.file_name().to_string_lossy().to_string();
            let ft = e.file_type().unwrap();
            if n == ".wh..wh..opq" {
                fs::remove_file(&p).unwrap();
                let c = CString::new(d.as_os_str().as_bytes()).unwrap();
                // SAFETY: valid C strings.
                let r = unsafe {
                    libc::setxattr(c.as_ptr(), c"trusted.overlay.opaque".as_ptr(), b"y".as_ptr().cast(), 1, 0)
                };
                assert_eq!(r, 0, "set opaque on {}", d.display());
            } else if let Some(t) = n.strip_prefix(".wh.") {
                let _ = fs::remove_dir_all(&p);
                let _ = fs::remove_file(&p);
                let target = d.join(t);
                // OCI: a whiteout hides lower layers only. A directory of the same name in this
                // layer stays and hides what is below (opaque); a non-directory hides anyway.
                match fs::symlink_metadata(&target) {
                    Ok(md) if md.is_dir() => {
                        let c = CString::new(target.as_os_str().as_bytes()).unwrap();
                        // SAFETY: valid C strings.
                        let r = unsafe {
                            libc::setxattr(
                                c.as_ptr(),
                                c"trusted.overlay.opaque".as_ptr(),
                                b"y".as_ptr().cast(),
                                1,
                                0,
                            )
                        };
                        assert_eq!(r, 0, "set opaque on {}", target.display());
                    }
                    Ok(_) => {}
                    Err(_) => {
                        let c = CString::new(target.as_os_str().as_bytes()).unwrap();
                        // SAFETY: valid C string.
                        let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) };
                        assert_eq!(r, 0, "mknod whiteout {}", target.display());
                    }
                }
            } else if ft.is_dir() {
                stack.push(p);
            }
        }
    }
}

/// A scratch area: `tmp/NAME` directories created on demand.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Scratch { dir: tempfile::Builder::new().prefix("layerfs-test").tempdir().unwrap() }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::create_dir_all(&p).unwrap();
        p
    }
}

/// Runs a `sh -c` script in `dir` (C locale): (success, stdout then stderr).
pub fn sh(dir: &Path, script: &str) -> (bool, String) {
    let o = Command::new("sh").args(["-c", script]).current_dir(dir).env("LC_ALL", "C").output().unwrap();
    (
        o.status.success(),
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
    )
}

/// Sets xattr `name` of `p` (not following a symlink); fails the test if it cannot.
pub fn set_xattr(p: &Path, name: &str, val: &[u8]) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and a readable value.
    let r = unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), val.as_ptr().cast(), val.len(), 0) };
    assert_eq!(r, 0, "setxattr {name} on {}: {}", p.display(), std::io::Error::last_os_error());
}

/// Makes a char-device 0/0 whiteout at `p` (root only); fails the test if it cannot.
pub fn mknod_whiteout(p: &Path) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C string.
    let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, 0) };
    assert_eq!(r, 0, "mknod {}: {}", p.display(), std::io::Error::last_os_error());
}

/// The errno of an io::Result, or 0.
pub fn errno<T>(r: &std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// Where the shared test data lives; the tests fail when it is missing.
pub fn shared_layers() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/layers");
    assert!(p.join("README.md").exists(), "shared test data not found at {}", p.display());
    p
}

/// Mounts kernel overlayfs with lower paths relative to `cwd` (keeps a 500-layer option string
/// under the one-page limit of mount(2)).
pub fn mount_overlay_in(cwd: &Path, lowers: &[&str], mnt: &Path) -> Mounted {
    let o = format!("lowerdir={},redirect_dir=off,index=off,metacopy=off,xino=off", lowers.join(":"));
    let out = Command::new("mount")
        .current_dir(cwd)
        .args(["-t", "overlay", "overlay", "-o", &o])
        .arg(mnt)
        .output()
        .expect("mount");
    assert!(out.status.success(), "kernel overlay mount failed: {}", String::from_utf8_lossy(&out.stderr));
    Mounted { mnt: mnt.to_path_buf(), fuse: false }
}

/// Lists a tree in the format of `shared/testdata/layers/expected/*.txt`.
pub fn expected_listing(root: &Path) -> String {
    let snap = snapshot(root, false);
    let mut out = String::new();
    for (k, e) in &snap {
        let md = fs::symlink_metadata(root.join(k)).unwrap();
        let own = format!("{}:{}", e.uid, e.gid);
        match e.kind {
            'd' => out.push_str(&format!("d {:04o} {own} {k}\n", e.mode)),
            'l' => out.push_str(&format!("l {:04o} {own} {k} -> {}\n", 0o777, e.content)),
            'f' => out.push_str(&format!(
                "f {:04o} {own} {k} size={} nlink={} sha256={}\n",
                e.mode,
                e.size,
                md.nlink(),
                e.content
            )),
            c => out.push_str(&format!("{c} {:04o} {own} {k}\n", e.mode)),
        }
    }
    out
}

/// Extracts a tar with GNU tar into a fresh directory (keeps owners, modes, xattrs, `.wh.`).
pub fn gnu_untar(tar: &Path, dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let st = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
        .arg(tar)
        .arg("-C")
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success(), "tar -xf {}", tar.display());
}

/// splitmix64: a small seedable PRNG, so randomized tests (soak, fsx) repeat exactly.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// Pages of `path` in the page cache.
pub fn resident(path: &std::path::Path) -> usize {
    let len = fs::metadata(path).unwrap().len() as usize;
    resident_in(path, 0, len)
}

/// Pages of `path` in the page cache among the `len` bytes at `off` (a multiple of the page
/// size).
pub fn resident_in(path: &std::path::Path, off: usize, len: usize) -> usize {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(path).unwrap();
    // SAFETY: a shared read-only mapping of an open file, unmapped below; mincore writes one
    // byte per page into `v`, which has that many.
    unsafe {
        let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
        assert_eq!(off % page, 0);
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            off as i64,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let mut v = vec![0u8; len.div_ceil(page)];
        assert_eq!(libc::mincore(p, len, v.as_mut_ptr()), 0);
        libc::munmap(p, len);
        v.iter().filter(|&&b| b & 1 != 0).count()
    }
}

/// Writes `path` back and drops it from the page cache.
pub fn evict(path: &std::path::Path) {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    // SAFETY: plain syscall on an open fd.
    assert_eq!(unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) }, 0);
}

/// Evicts each file and checks it is out of the page cache. Reads asked for ahead by an
/// earlier step may still be under way (pages being read are not dropped): such a file is
/// evicted again until none of it is left, 10 s at most.
pub fn evict_all_of<'a>(paths: impl IntoIterator<Item = &'a std::path::Path>) {
    for p in paths {
        wait_until(Duration::from_secs(10), || {
            evict(p);
            resident(p) == 0
        });
        assert_eq!(resident(p), 0, "{} stays cached: the page cache cannot be checked here", p.display());
    }
}

/// Polls `done` every 5 ms until it holds or `limit` has passed (the caller asserts what it
/// needs afterwards).
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !done() && t.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A server started with an open-file limit of `nofile` (as `prlimit --nofile` sets it) that it
/// cannot raise.
pub fn mount_with_nofile(lowers: &[PathBuf], u: &Path, w: &Path, m: &Path, nofile: u32) -> Mounted {
    let o = mount_options(lowers, Some((u, w)), "");
    // As root without CAP_SYS_RESOURCE (dropped from the bounding set), as here, so that
    // layerfs cannot raise the limit again wherever root has it.
    let mut cmd = std::process::Command::new(if is_root() { "setpriv" } else { "prlimit" });
    if is_root() {
        cmd.args(["--bounding-set=-sys_resource", "prlimit"]);
    }
    let out = cmd
        .arg(format!("--nofile={nofile}:{nofile}"))
        .arg(layerfs_bin())
        .args(["-o", &o])
        .arg(m)
        .output()
        .expect("run prlimit layerfs");
    assert!(out.status.success(), "mount failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(is_mounted(m));
    Mounted { mnt: m.to_path_buf(), fuse: true }
}
