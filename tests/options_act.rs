//! fuse-overlayfs options that change behaviour, each checked to act: `static_nlink`,
//! `noxattrs=1`, `fsync=0` and `volatile`.
mod common;
use common::*;
use std::fs;
use std::os::unix::fs::MetadataExt;

#[test]
fn static_nlink_reports_one_for_every_directory() {
    if !can_mount() {
        return;
    }
    for (opt, want) in [("", 4), ("static_nlink", 1)] {
        let s = Scratch::new();
        let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
        fs::create_dir_all(l.join("a/b")).unwrap();
        fs::create_dir_all(l.join("a/c")).unwrap();
        let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, opt);
        // `a` exists in one layer only: its real link count shows unless static_nlink.
        assert_eq!(fs::metadata(m.join("a")).unwrap().nlink(), want, "{opt:?}");
        fs::create_dir_all(m.join("n/x")).unwrap();
        fs::create_dir_all(m.join("n/y")).unwrap();
        assert_eq!(fs::metadata(m.join("n")).unwrap().nlink(), want, "{opt:?} upper dir");
        assert_eq!(fs::metadata(m.join("a/b")).unwrap().nlink(), if want == 1 { 1 } else { 2 }, "{opt:?}");
    }
}

#[test]
fn noxattrs_turns_xattr_calls_off() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::write(l.join("f"), b"f").unwrap();
    assert!(sh(&l, "setfattr -n user.a -v 1 f").0);
    {
        let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
        let (ok, out) = sh(&m, "getfattr --only-values -n user.a f");
        assert!(ok && out == "1", "{out}");
    }
    let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "noxattrs=1");
    // The server answers ENOSYS; the kernel then reports EOPNOTSUPP.
    for script in ["getfattr -n user.a f", "setfattr -n user.b -v 2 f", "setfacl -m u:1234:r f"] {
        let (ok, out) = sh(&m, script);
        assert!(!ok && out.contains("Operation not supported"), "{script}: {out}");
    }
    let (ok, out) = sh(&m, "getfattr -d -m - f");
    assert!(!out.contains("user.a"), "{ok} {out}");
    assert!(!u.join("f").exists(), "a refused setxattr must not copy up");
    // Everything else still works.
    let (ok, out) = sh(&m, "echo more >> f && cat f");
    assert!(ok && out == "fmore\n", "{out}");
}

/// `fsync=0` and `volatile` skip every fsync: shown with an upper on a filesystem whose fsync
/// always fails (a layerfs mount with a fault rule), where a default mount reports the errors
/// (but for the copy-up of an empty file, which kernel overlayfs does not fsync either).
#[test]
fn fsync_0_and_volatile_skip_fsync() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let rules = s.dir.path().join("rules");
    fs::write(&rules, "fsync,fsyncdir * EIO\n").unwrap();
    let (il, iu, iw, im) = (s.path("il"), s.path("iu"), s.path("iw"), s.path("im"));
    let _inner = mount_layerfs(
        std::slice::from_ref(&il),
        Some((&iu, &iw)),
        &im,
        &format!("faults={}", rules.display()),
    );
    // The inner mount's fsync fails as intended.
    let (ok, out) = sh(&im, "dd if=/dev/zero of=probe bs=4k count=1 conv=fsync status=none");
    assert!(!ok && out.contains("Input/output error"), "{out}");
    for (i, opt) in ["", "fsync=0", "volatile"].iter().enumerate() {
        let l = s.path(&format!("l{i}"));
        fs::write(l.join("low"), b"low\n").unwrap();
        fs::write(l.join("empty"), b"").unwrap();
        let (u, w) = (im.join(format!("u{i}")), im.join(format!("w{i}")));
        fs::create_dir_all(&u).unwrap();
        fs::create_dir_all(&w).unwrap();
        let m = s.path(&format!("m{i}"));
        let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, opt);
        let (dd_ok, dd_out) = sh(&m, "dd if=/dev/zero of=new bs=4k count=4 conv=fsync status=none");
        let (cu_ok, cu_out) = sh(&m, "echo more >> low && cat low");
        if opt.is_empty() {
            assert!(
                !dd_ok && dd_out.contains("Input/output error"),
                "default: fsync reaches the upper: {dd_out}"
            );
            assert!(!cu_ok, "default: copy-up fsyncs its copy: {cu_out}");
            // As on kernel overlayfs, an empty file's copy-up has no data to fsync.
            let (e_ok, e_out) = sh(&m, "chmod 0600 empty");
            assert!(e_ok, "default: an empty file's copy-up needs no fsync: {e_out}");
        } else {
            assert!(dd_ok, "{opt}: {dd_out}");
            assert!(cu_ok && cu_out == "low\nmore\n", "{opt}: {cu_out}");
            assert_eq!(fs::read(u.join("low")).unwrap(), b"low\nmore\n");
        }
    }
}
