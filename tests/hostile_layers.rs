//! Layers crafted to escape or to exhaust: symlinks to `/`, `../..` and `/proc/self/...`, a
//! layer path that is a symlink, 4096 nested directories, 255-byte names, 100k entries in one
//! directory. layerfs serves them correctly and never reads or writes outside the layers: a
//! sentinel directory planted beside them must be untouched.
mod common;
use common::*;
use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn openat_dir(dir: &OwnedFd, name: &str, create: bool) -> OwnedFd {
    let c = CString::new(name).unwrap();
    if create {
        // SAFETY: valid fd and name.
        unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o755) };
    }
    // SAFETY: valid fd and name; the result is checked.
    let fd = unsafe {
        libc::openat(dir.as_raw_fd(), c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW)
    };
    assert!(fd >= 0, "openat {name}: {}", std::io::Error::last_os_error());
    // SAFETY: fresh fd.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn open_dir(p: &Path) -> OwnedFd {
    let f = fs::File::open(p).unwrap();
    OwnedFd::from(f)
}

fn sentinel_state(p: &Path) -> Vec<(String, u64, i64)> {
    let mut v: Vec<_> = fs::read_dir(p)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = fs::symlink_metadata(e.path()).unwrap();
            use std::os::unix::fs::MetadataExt;
            (e.file_name().to_string_lossy().to_string(), m.len(), m.mtime())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn hostile_layers_are_served_without_escaping() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    let outside = s.path("outside");
    fs::write(outside.join("secret"), b"sentinel").unwrap();
    let before = sentinel_state(&outside);
    let sym = |t: &str, n: &str| std::os::unix::fs::symlink(t, l.join(n)).unwrap();
    sym("/", "root");
    sym("../..", "up");
    sym("/proc/self/root", "procroot");
    sym(outside.to_str().unwrap(), "out");
    fs::create_dir(l.join("d")).unwrap();
    std::os::unix::fs::symlink("../../outside", l.join("d/rel")).unwrap();
    // 255-byte names, and a 252-byte one (its `.wh.` form is exactly 255).
    let long = "n".repeat(255);
    let wh_max = "w".repeat(252);
    fs::write(l.join(&long), b"long").unwrap();
    fs::write(l.join(&wh_max), b"whmax").unwrap();
    // 4096 nested directories.
    let mut fd = open_dir(&l);
    for _ in 0..4096 {
        fd = openat_dir(&fd, "a", true);
    }
    let c = CString::new("bottom").unwrap();
    // SAFETY: valid fd and name.
    let f = unsafe { libc::openat(fd.as_raw_fd(), c.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644) };
    assert!(f >= 0);
    // SAFETY: closing our own fd.
    unsafe { libc::close(f) };
    drop(fd);
    // 100k entries in one directory.
    fs::create_dir(l.join("big")).unwrap();
    for i in 0..100_000 {
        fs::File::create(l.join(format!("big/{i:06}"))).unwrap();
    }
    // The lower layer is given as a symlink to the real directory.
    let link_to_layer = s.dir.path().join("layer-link");
    std::os::unix::fs::symlink(&l, &link_to_layer).unwrap();

    let _g = mount_layerfs(std::slice::from_ref(&link_to_layer), Some((&u, &w)), &m, "");
    // Symlinks are links, never followed by the server.
    for (n, t) in [("root", "/"), ("up", "../.."), ("procroot", "/proc/self/root")] {
        assert_eq!(fs::read_link(m.join(n)).unwrap(), Path::new(t));
    }
    // Writing "through" a link from inside the mount goes where the kernel resolves it; the
    // server itself creates nothing outside: changing the links copies up the links.
    let lc = CString::new(m.join("out").as_os_str().as_bytes()).unwrap();
    // SAFETY: valid path; lchown does not follow.
    assert_eq!(unsafe { libc::lchown(lc.as_ptr(), 7, 7) }, 0);
    fs::remove_file(m.join("d/rel")).unwrap();
    assert!(fs::symlink_metadata(u.join("out")).unwrap().file_type().is_symlink());
    // Long names, through lookups, readdir, copy-up and deletion (whiteout form included).
    assert_eq!(fs::read(m.join(&long)).unwrap(), b"long");
    fs::write(m.join(&long), b"changed").unwrap();
    fs::remove_file(m.join(&wh_max)).unwrap();
    assert!(fs::symlink_metadata(m.join(&wh_max)).is_err());
    assert!(fs::read_dir(&m).unwrap().any(|e| e.unwrap().file_name().len() == 255));
    // 4096 levels, walked with openat (a path string would exceed PATH_MAX).
    let mut fd = open_dir(&m);
    for _ in 0..4096 {
        fd = openat_dir(&fd, "a", false);
    }
    let c = CString::new("bottom").unwrap();
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: valid fd, name and buffer.
    assert_eq!(
        unsafe { libc::fstatat(fd.as_raw_fd(), c.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) },
        0
    );
    drop(fd);
    // 100k entries: all listed once.
    let n = fs::read_dir(m.join("big")).unwrap().count();
    assert_eq!(n, 100_000);
    fs::remove_file(m.join("big/050000")).unwrap();
    assert_eq!(fs::read_dir(m.join("big")).unwrap().count(), 99_999);
    // Nothing outside the layers changed.
    assert_eq!(sentinel_state(&outside), before);
    assert_eq!(fs::read(outside.join("secret")).unwrap(), b"sentinel");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::symlink_metadata(outside.join("secret")).unwrap().uid(), 0);
}

/// Mounts inside a lower layer (a tmpfs, a bind mount of a directory outside every layer) are
/// not crossed: the merged view shows what they cover, as kernel overlayfs does, and the
/// server never serves the mounted filesystems (their directories also shared inode numbers
/// with the layer's, so two directories could become one node).
#[test]
fn mounts_inside_a_lower_layer_are_not_crossed() {
    if !can_mount() || !can_kernel_overlay() {
        return;
    }
    let s = Scratch::new();
    let (l1, l2, outside) = (s.path("l1"), s.path("l2"), s.path("outside"));
    for d in ["mp", "bm"] {
        fs::create_dir_all(l1.join(d)).unwrap();
        fs::write(l1.join(d).join("under"), d).unwrap();
    }
    fs::create_dir_all(l2.join("mp2")).unwrap();
    fs::write(outside.join("secret"), b"secret").unwrap();
    struct Unmount(Vec<std::path::PathBuf>);
    impl Drop for Unmount {
        fn drop(&mut self) {
            for p in self.0.iter().rev() {
                let _ = std::process::Command::new("umount").arg("-l").arg(p).status();
            }
        }
    }
    let mut held = Unmount(Vec::new());
    for (what, args) in [
        (l1.join("mp"), vec!["-t", "tmpfs", "tx"]),
        (l2.join("mp2"), vec!["-t", "tmpfs", "ty"]),
        (l1.join("bm"), vec!["--bind", outside.to_str().unwrap()]),
    ] {
        let st = std::process::Command::new("mount").args(&args).arg(&what).status().unwrap();
        assert!(st.success(), "mount {args:?} {}", what.display());
        held.0.push(what);
    }
    fs::create_dir(l1.join("mp/dx")).unwrap();
    fs::write(l1.join("mp/dx/onlyx"), b"x").unwrap();
    fs::create_dir(l2.join("mp2/dy")).unwrap();
    let lowers = vec![l1.clone(), l2.clone()];
    let (mk, mf) = (s.path("mk"), s.path("mf"));
    let _k = mount_overlay(&lowers, Some((&s.path("ku"), &s.path("kw"))), &mk);
    let _f = mount_layerfs(&lowers, Some((&s.path("fu"), &s.path("fw"))), &mf, "");
    let d = diff_snapshots("kernel", &snapshot(&mk, true), "layerfs", &snapshot(&mf, true));
    assert!(d.is_empty(), "merged views differ:\n{}", d.join("\n"));
    assert_eq!(fs::read(mf.join("bm/under")).unwrap(), b"bm");
    assert!(!mf.join("bm/secret").exists() && !mf.join("mp/dx").exists() && !mf.join("mp2/dy").exists());
}

/// Two names whose node ids collided under the unkeyed hash of layerfs before (found by a
/// birthday search: they collide in any mount's root) are two objects: each reads its own
/// data, and a write through one changes only it. Both names were one node, so `cat A`
/// showed B's data and an append to B landed in A's copy. The ids are keyed per stack now.
#[test]
fn names_crafted_to_collide_stay_two_objects() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    let (a, b) = ("5WZGGP6WpFB", "oh7T353BtbH");
    fs::write(l.join(a), b"content of A\n").unwrap();
    fs::write(l.join(b), b"content of B\n").unwrap();
    let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
    use std::os::unix::fs::MetadataExt;
    let (ia, ib) = (fs::metadata(m.join(b)).unwrap().ino(), fs::metadata(m.join(a)).unwrap().ino());
    assert_ne!(ia, ib);
    assert_eq!(fs::read(m.join(a)).unwrap(), b"content of A\n");
    assert_eq!(fs::read(m.join(b)).unwrap(), b"content of B\n");
    use std::io::Write;
    fs::OpenOptions::new().append(true).open(m.join(b)).unwrap().write_all(b"XX\n").unwrap();
    assert_eq!(fs::read(m.join(a)).unwrap(), b"content of A\n");
    assert_eq!(fs::read(m.join(b)).unwrap(), b"content of B\nXX\n");
    assert_eq!(fs::read(u.join(b)).unwrap(), b"content of B\nXX\n");
    assert!(!u.join(a).exists());
}
