//! Ownership options as fuse-overlayfs defines them: uidmapping=/gidmapping= (on-disk ids
//! A..A+N shown as B..B+N, and back on chown and create), squash_to_root / squash_to_uid /
//! squash_to_gid (every file shown with that owner, chown errors ignored).
mod common;
use common::*;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

fn lchown(p: &Path, uid: u32, gid: u32) -> i32 {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid path.
    if unsafe { libc::lchown(c.as_ptr(), uid, gid) } == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap()
    }
}

#[test]
fn uid_and_gid_mapping() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    for (name, uid, gid) in [("root", 0, 0), ("five", 5, 6), ("far", 50, 60)] {
        fs::write(l.join(name), name).unwrap();
        assert_eq!(lchown(&l.join(name), uid, gid), 0);
    }
    let _g = mount_layerfs(
        std::slice::from_ref(&l),
        Some((&u, &w)),
        &m,
        "uidmapping=0:1000:10,gidmapping=:0:2000:10",
    );
    let own = |n: &str| {
        let md = fs::symlink_metadata(m.join(n)).unwrap();
        (md.uid(), md.gid())
    };
    assert_eq!(own("root"), (1000, 2000));
    assert_eq!(own("five"), (1005, 2006));
    assert_eq!(own("far"), (65534, 65534), "unmapped ids show as the overflow id");
    // chown through the mount stores the on-disk id.
    assert_eq!(lchown(&m.join("five"), 1003, 2004), 0);
    assert_eq!(own("five"), (1003, 2004));
    let md = fs::symlink_metadata(u.join("five")).unwrap();
    assert_eq!((md.uid(), md.gid()), (3, 4));
    // A file created by root (id 0 is not in the shown ranges) is stored with the overflow id.
    fs::write(m.join("new"), b"n").unwrap();
    let md = fs::symlink_metadata(u.join("new")).unwrap();
    assert_eq!((md.uid(), md.gid()), (65534, 65534));
}

#[test]
fn squash_to_root_and_to_ids() {
    if !can_mount() {
        return;
    }
    for (opt, want) in [("squash_to_root", (0, 0)), ("squash_to_uid=7,squash_to_gid=8", (7, 8))] {
        let s = Scratch::new();
        let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
        fs::write(l.join("f"), b"f").unwrap();
        assert_eq!(lchown(&l.join("f"), 123, 456), 0);
        let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, opt);
        let md = fs::symlink_metadata(m.join("f")).unwrap();
        assert_eq!((md.uid(), md.gid()), want, "{opt}");
        let md = fs::symlink_metadata(m.join(".")).unwrap();
        assert_eq!((md.uid(), md.gid()), want, "{opt} (root dir)");
        fs::write(m.join("g"), b"g").unwrap();
        let md = fs::symlink_metadata(m.join("g")).unwrap();
        assert_eq!((md.uid(), md.gid()), want, "{opt} (new file)");
    }
}

/// chown(-1, -1) changes nothing but the ctime, on kernel overlayfs as on its upper: of an
/// upper file, of a lower file (copied up), of a directory and of a symlink (lchown). FUSE
/// carries no ctime without the writeback cache, so layerfs marks it with the upper's own
/// chown(-1, -1); before, an upper object's ctime stayed.
#[test]
fn chown_to_no_owner_marks_the_ctime_as_the_kernel() {
    if !can_mount() || !can_kernel_overlay() {
        return;
    }
    let s = Scratch::new();
    let l = s.path("l");
    fs::write(l.join("low"), b"l").unwrap();
    fs::create_dir(l.join("dir")).unwrap();
    let ctime = |p: &Path| {
        let m = fs::symlink_metadata(p).unwrap();
        (m.ctime(), m.ctime_nsec())
    };
    for kernel in [true, false] {
        let tag = if kernel { "k" } else { "f" };
        let (u, w, m) = (s.path(&format!("u{tag}")), s.path(&format!("w{tag}")), s.path(&format!("m{tag}")));
        let _g = if kernel {
            mount_overlay(std::slice::from_ref(&l), Some((&u, &w)), &m)
        } else {
            mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "")
        };
        fs::write(m.join("up"), b"u").unwrap();
        std::os::unix::fs::symlink("up", m.join("sym")).unwrap();
        fs::create_dir(m.join("updir")).unwrap();
        for name in ["up", "low", "dir", "updir", "sym"] {
            let p = m.join(name);
            let before = ctime(&p);
            std::thread::sleep(std::time::Duration::from_millis(20));
            assert_eq!(lchown(&p, u32::MAX, u32::MAX), 0, "{tag} {name}");
            let after = ctime(&p);
            assert!(after > before, "{}: chown(-1, -1) of {name} left the ctime at {before:?}", tag);
        }
    }
}
