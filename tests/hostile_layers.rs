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
