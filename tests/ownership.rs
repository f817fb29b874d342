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
