//! Directory reading without OPENDIR: layerfs answers the first OPENDIR with ENOSYS, so the
//! kernel opens directories itself and reads them with no handle. Offsets are name-hash
//! cookies, so readers that change the directory while reading it neither skip nor repeat
//! names; the kernel's listing cache is dropped on every change through the mount.
mod common;
use common::*;
use std::collections::BTreeSet;
use std::ffi::{CStr, CString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Reads `dir` with opendir/readdir, calling `each` after every name (not `.`/`..`).
fn read_dir_raw(dir: &Path, mut each: impl FnMut(&str, *mut libc::DIR)) -> Vec<String> {
    let c = CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: plain libc directory calls on a valid path; the DIR is closed below.
    unsafe {
        let d = libc::opendir(c.as_ptr());
        assert!(!d.is_null(), "opendir {}", dir.display());
        let mut names = Vec::new();
        loop {
            let e = libc::readdir(d);
            if e.is_null() {
                break;
            }
            let n = CStr::from_ptr((*e).d_name.as_ptr()).to_string_lossy().into_owned();
            if n == "." || n == ".." {
                continue;
            }
            names.push(n.clone());
            each(&n, d);
        }
        libc::closedir(d);
        names
    }
}

/// The names a read returned, each required to come once.
fn once(seen: &[String]) -> BTreeSet<String> {
    let uniq: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(uniq.len(), seen.len(), "a name came twice");
    uniq
}

/// A directory of `n` names from the lower and `n` made through the mount.
fn big_dir(s: &Scratch, n: usize) -> (Mounted, std::path::PathBuf, BTreeSet<String>) {
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::create_dir_all(l.join("d")).unwrap();
    let mut all = BTreeSet::new();
    for i in 0..n {
        let name = format!("lower-file-with-a-longer-name-{i:05}");
        fs::write(l.join("d").join(&name), b"l").unwrap();
        all.insert(name);
    }
    let g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
    for i in 0..n {
        let name = format!("upper-{i:05}");
        fs::write(m.join("d").join(&name), b"u").unwrap();
        all.insert(name);
    }
    (g, m.join("d"), all)
}

#[test]
fn unlinking_while_reading_sees_every_name_once() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (_g, d, all) = big_dir(&s, 1500);
    // Many getdents calls (32 KiB each): every unlink drops the kernel's listing, so each
    // later call is a READDIR from the last cookie.
    let seen = read_dir_raw(&d, |n, _| fs::remove_file(d.join(n)).unwrap());
    assert_eq!(once(&seen), all, "names missed while unlinking during the read");
    assert_eq!(fs::read_dir(&d).unwrap().count(), 0, "directory not empty after the loop");
}

#[test]
fn creating_while_reading_never_repeats_or_drops_old_names() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (_g, d, all) = big_dir(&s, 1000);
    let mut k = 0;
    let seen = read_dir_raw(&d, |_, _| {
        k += 1;
        fs::write(d.join(format!("new-{k:05}")), b"n").unwrap();
    });
    assert!(all.is_subset(&once(&seen)), "names present at opendir were dropped");
    // A new read shows exactly what is there now.
    let now: BTreeSet<String> =
        fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(now.len(), all.len() + k);
}

#[test]
fn seekdir_returns_to_a_told_position() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (_g, d, _) = big_dir(&s, 800);
    let mut told = None;
    let mut after = Vec::new();
    let mut i = 0;
    read_dir_raw(&d, |n, dir| {
        i += 1;
        if i == 700 {
            // SAFETY: `dir` is the open DIR of read_dir_raw.
            told = Some(unsafe { libc::telldir(dir) });
        } else if i > 700 && after.len() < 5 {
            after.push(n.to_string());
        }
    });
    let pos = told.expect("fewer than 700 entries");
    let c = CString::new(d.as_os_str().as_bytes()).unwrap();
    // SAFETY: plain libc directory calls on a valid path.
    let again: Vec<String> = unsafe {
        let dir = libc::opendir(c.as_ptr());
        assert!(!dir.is_null());
        libc::seekdir(dir, pos);
        let mut v = Vec::new();
        while v.len() < 5 {
            let e = libc::readdir(dir);
            assert!(!e.is_null(), "end of directory after seekdir");
            v.push(CStr::from_ptr((*e).d_name.as_ptr()).to_string_lossy().into_owned());
        }
        libc::closedir(dir);
        v
    };
    assert_eq!(again, after, "seekdir(telldir) did not resume at the same entry");
}

#[test]
fn opendir_is_asked_once_then_the_kernel_opens_directories_itself() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    for i in 0..10 {
        fs::create_dir_all(l.join(format!("d{i}/sub"))).unwrap();
        fs::write(l.join(format!("d{i}/f")), b"x").unwrap();
    }
    let log = s.dir.path().join("layerfs.log");
    let opts = format!("lowerdir={},upperdir={},workdir={}", l.display(), u.display(), w.display());
    let mut child = spawn_layerfs_fg(
        &format!("{opts},debug"),
        &m,
        &[("RUST_LOG", "debug")],
        fs::File::create(&log).unwrap().into(),
    );
    // Unmounted on the way out, also when an assertion below fails.
    let mut mounted = Mounted { mnt: m.clone(), fuse: true };
    let mut names = 0;
    for _ in 0..3 {
        for i in 0..10 {
            names += fs::read_dir(m.join(format!("d{i}"))).unwrap().count();
        }
    }
    fs::write(m.join("d0/new"), b"n").unwrap();
    let after: Vec<_> = fs::read_dir(m.join("d0")).unwrap().map(|e| e.unwrap().file_name()).collect();
    mounted.unmount();
    assert!(!is_mounted(&m), "still mounted");
    let _ = child.wait();
    assert_eq!(names, 60);
    assert_eq!(after.len(), 3, "a listing read after a create misses it: {after:?}");
    let text = fs::read_to_string(&log).unwrap();
    let opendirs = text.lines().filter(|l| l.contains(" OPENDIR ")).count();
    assert!(text.contains(" READDIR"), "no request log in {}", log.display());
    assert!(opendirs <= 1, "{opendirs} OPENDIR requests for 31 directory opens");
}

/// The `..` entry getdents gives: its inode number.
fn dotdot_ino(dir: &Path) -> u64 {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(dir).unwrap();
    let mut buf = vec![0u8; 4096];
    let mut found = None;
    loop {
        // SAFETY: getdents64 into a buffer of the length given.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, f.as_raw_fd(), buf.as_mut_ptr(), buf.len()) };
        assert!(n >= 0, "getdents64: {}", std::io::Error::last_os_error());
        if n == 0 {
            break;
        }
        let mut p = 0usize;
        while p < n as usize {
            let ino = u64::from_ne_bytes(buf[p..p + 8].try_into().unwrap());
            let reclen = u16::from_ne_bytes(buf[p + 16..p + 18].try_into().unwrap()) as usize;
            let name = CStr::from_bytes_until_nul(&buf[p + 19..p + reclen]).unwrap();
            if name.to_bytes() == b".." {
                found = Some(ino);
            }
            p += reclen;
        }
    }
    found.expect("no .. entry")
}

/// A directory moved to another parent lists the new parent for `..`, also where the kernel
/// had cached its listing before the move (a move changes nothing the kernel checks there, so
/// it gave the old parent's number until something changed inside).
#[test]
fn a_moved_directory_lists_its_new_parent() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
    fs::create_dir_all(m.join("A/x")).unwrap();
    fs::create_dir(m.join("B")).unwrap();
    let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
    assert_eq!(dotdot_ino(&m.join("A/x")), ino(&m.join("A")));
    fs::rename(m.join("A/x"), m.join("B/x")).unwrap();
    assert_eq!(dotdot_ino(&m.join("B/x")), ino(&m.join("B")), "`..` of the moved directory");
}
