//! Real-mount tests of the on-disk forms: every whiteout and opaque form is read in every
//! layer, none of them (nor a private xattr) is ever visible, and the whiteout form written is
//! the one asked for. Also copy-up details: holes, and a big copy-up not stalling other files.
mod common;
use common::*;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

fn names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    v.sort();
    v
}

/// Every form in every layer: the top lower and the upper hide what the bottom lower has.
#[test]
fn every_whiteout_and_opaque_form_is_read_and_hidden() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (top, bottom, u, w, m) = (s.path("top"), s.path("bottom"), s.path("u"), s.path("w"), s.path("m"));
    // The bottom layer has one victim per form.
    for d in ["o_trusted", "o_user", "o_fovl", "o_marker", "o_upper", "xw"] {
        fs::create_dir_all(bottom.join(d)).unwrap();
        fs::write(bottom.join(d).join("old"), b"old").unwrap();
    }
    for f in ["w_chr", "w_wh", "w_upper_chr", "w_upper_wh", "keep"] {
        fs::write(bottom.join(f), b"bottom").unwrap();
    }
    fs::write(bottom.join("xw/gone"), b"bottom").unwrap();
    // An xattr whiteout in the bottom layer's own `opaque=x` directory is hidden too, as the
    // kernel's lookup hides it (the bottom's marks were not read: it showed as an empty file).
    fs::create_dir(bottom.join("xwb")).unwrap();
    set_xattr(&bottom.join("xwb"), "trusted.overlay.opaque", b"x");
    fs::write(bottom.join("xwb/w"), b"").unwrap();
    set_xattr(&bottom.join("xwb/w"), "trusted.overlay.whiteout", b"");
    fs::write(bottom.join("xwb/z"), b"z").unwrap();
    // Top lower: whiteouts and opaque directories in each form.
    mknod_whiteout(&top.join("w_chr"));
    fs::write(top.join(".wh.w_wh"), b"").unwrap();
    for (d, x) in [
        ("o_trusted", "trusted.overlay.opaque"),
        ("o_user", "user.overlay.opaque"),
        ("o_fovl", "user.fuseoverlayfs.opaque"),
    ] {
        fs::create_dir(top.join(d)).unwrap();
        fs::write(top.join(d).join("new"), b"new").unwrap();
        set_xattr(&top.join(d), x, b"y");
    }
    fs::create_dir(top.join("o_marker")).unwrap();
    fs::write(top.join("o_marker/.wh..wh..opq"), b"").unwrap();
    fs::write(top.join("o_marker/new"), b"new").unwrap();
    // Kernel 6.7 xattr whiteout: zero-size file with overlay.whiteout in an opaque=x directory.
    fs::create_dir(top.join("xw")).unwrap();
    set_xattr(&top.join("xw"), "trusted.overlay.opaque", b"x");
    fs::write(top.join("xw/gone"), b"").unwrap();
    set_xattr(&top.join("xw/gone"), "trusted.overlay.whiteout", b"");
    fs::write(top.join("keep"), b"top").unwrap();
    set_xattr(&top.join("keep"), "user.visible", b"1");
    set_xattr(&top.join("keep"), "trusted.overlay.origin", b"private");
    set_xattr(&top.join("keep"), "user.fuseoverlayfs.origin", b"private");
    // Upper: its own whiteouts and an opaque dir.
    mknod_whiteout(&u.join("w_upper_chr"));
    fs::write(u.join(".wh.w_upper_wh"), b"").unwrap();
    fs::create_dir(u.join("o_upper")).unwrap();
    set_xattr(&u.join("o_upper"), "trusted.overlay.opaque", b"y");
    // A zero-size file with the whiteout xattr outside an `opaque=x` directory is a file.
    fs::write(u.join("x_upper"), b"").unwrap();
    set_xattr(&u.join("x_upper"), "trusted.overlay.whiteout", b"");

    let _g = mount_layerfs(&[top.clone(), bottom.clone()], Some((&u, &w)), &m, "");
    assert_eq!(
        names(&m),
        vec!["keep", "o_fovl", "o_marker", "o_trusted", "o_upper", "o_user", "x_upper", "xw", "xwb"]
    );
    assert_eq!(names(&m.join("xwb")), vec!["z"]);
    for d in ["o_trusted", "o_user", "o_fovl", "o_marker"] {
        assert_eq!(names(&m.join(d)), vec!["new"], "{d} must be opaque");
        assert!(fs::symlink_metadata(m.join(d).join("old")).is_err(), "{d}/old must stay hidden");
    }
    assert!(names(&m.join("o_upper")).is_empty());
    assert!(names(&m.join("xw")).contains(&"old".to_string()), "opaque=x merges");
    assert!(!names(&m.join("xw")).contains(&"gone".to_string()), "xattr whiteout hides");
    for f in [
        "w_chr",
        "w_wh",
        "w_upper_chr",
        "w_upper_wh",
        ".wh.w_wh",
        "xw/gone",
        "xwb/w",
        "o_marker/.wh..wh..opq",
    ] {
        let e = fs::symlink_metadata(m.join(f)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{f}");
    }
    // No private xattr is visible, a user one is.
    let x = xattrs(&m.join("keep"), true);
    assert_eq!(x, vec![("user.visible".to_string(), "1".to_string())]);
    for d in ["o_trusted", "o_user", "o_fovl", "xw", "xwb"] {
        assert!(
            xattrs(&m.join(d), true).is_empty(),
            "{d} shows private xattrs: {:?}",
            xattrs(&m.join(d), true)
        );
    }
    // Reading a private xattr by name fails, setting one is refused.
    let c = CString::new(m.join("o_trusted").as_os_str().as_bytes()).unwrap();
    let mut buf = [0u8; 8];
    // SAFETY: valid buffers.
    let r = unsafe {
        libc::lgetxattr(c.as_ptr(), c"trusted.overlay.opaque".as_ptr(), buf.as_mut_ptr().cast(), 8)
    };
    assert!(r < 0);
    // SAFETY: valid buffers.
    let r = unsafe {
        libc::lsetxattr(c.as_ptr(), c"trusted.overlay.opaque".as_ptr(), b"n".as_ptr().cast(), 1, 0)
    };
    assert!(r < 0);
    // Names hidden by the upper's whiteouts are free again: a file over a `.wh.` file (which
    // goes), a directory over a char-device whiteout (opaque: the bottom's file stays hidden).
    // A name a lower shows, and one the upper has, are taken.
    fs::write(m.join("w_upper_wh"), b"again").unwrap();
    assert_eq!(fs::read(m.join("w_upper_wh")).unwrap(), b"again");
    assert!(!u.join(".wh.w_upper_wh").exists());
    fs::create_dir(m.join("w_upper_chr")).unwrap();
    assert!(names(&m.join("w_upper_chr")).is_empty());
    for taken in ["keep", "o_upper", "w_upper_wh", "x_upper"] {
        let e = fs::OpenOptions::new().write(true).create_new(true).open(m.join(taken)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "{taken}");
        assert_eq!(fs::create_dir(m.join(taken)).unwrap_err().raw_os_error(), Some(libc::EEXIST), "{taken}");
    }
}

fn upper_whiteout_form(u: &Path, name: &str) -> &'static str {
    match fs::symlink_metadata(u.join(name)) {
        Ok(md) if md.file_type().is_char_device() && md.rdev() == 0 => "chardev",
        _ if u.join(format!(".wh.{name}")).exists() => "wh",
        _ => "none",
    }
}

#[test]
fn whiteout_form_follows_option_and_environment() {
    if !can_mount() {
        return;
    }
    for (opt, env, want) in [
        ("whiteout=chardev", false, "chardev"),
        ("whiteout=wh", false, "wh"),
        ("", false, "chardev"),
        ("", true, "wh"),
    ] {
        let s = Scratch::new();
        let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
        fs::write(l.join("f"), b"x").unwrap();
        fs::create_dir_all(l.join("d/sub")).unwrap();
        let mut o = format!("lowerdir={},upperdir={},workdir={}", l.display(), u.display(), w.display());
        if !opt.is_empty() {
            o.push(',');
            o.push_str(opt);
        }
        let mut cmd = std::process::Command::new(layerfs_bin());
        cmd.arg("-o").arg(&o).arg(&m);
        if env {
            cmd.env("FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT", "1");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut g = Mounted { mnt: m.clone(), fuse: true };
        // With `.wh.` whiteouts the longest name is 4 bytes shorter, so that any name can be
        // whited out (fuse-overlayfs says so too).
        let namemax = |p: &Path| {
            let o = std::process::Command::new("stat").args(["-f", "-c", "%l"]).arg(p).output().unwrap();
            String::from_utf8_lossy(&o.stdout).trim().parse::<u64>().unwrap()
        };
        let less = if want == "wh" { 4 } else { 0 };
        assert_eq!(namemax(&m), namemax(&u) - less, "{opt} env={env}");
        fs::remove_file(m.join("f")).unwrap();
        fs::remove_dir_all(m.join("d")).unwrap();
        fs::create_dir(m.join("d")).unwrap();
        assert!(names(&m.join("d")).is_empty(), "recreated dir must be empty ({opt} env={env})");
        g.unmount();
        assert_eq!(upper_whiteout_form(&u, "f"), want, "{opt} env={env}");
        let opaque = !xattrs(&u.join("d"), true).is_empty() || u.join("d/.wh..wh..opq").exists();
        assert!(opaque, "recreated dir is opaque in upper ({opt} env={env})");
        // And the upper reads back the same after a remount.
        let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
        assert!(fs::symlink_metadata(m.join("f")).is_err());
        assert!(names(&m.join("d")).is_empty());
    }
}

#[test]
fn copy_up_keeps_holes_and_seek_data_works() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    let f = fs::File::create(l.join("sparse")).unwrap();
    f.set_len(1 << 30).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_at(&[7u8; 4096], 512 << 20).unwrap();
    drop(f);
    let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
    // chmod copies up.
    fs::set_permissions(m.join("sparse"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let md = fs::metadata(u.join("sparse")).unwrap();
    assert_eq!(md.len(), 1 << 30);
    assert!(md.blocks() * 512 < 1 << 20, "upper copy is not sparse: {} blocks", md.blocks());
    // SEEK_DATA / SEEK_HOLE through the mount find the one extent.
    let fd = fs::File::open(m.join("sparse")).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: plain lseek on an open fd.
    let data = unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_DATA) };
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(fd.as_raw_fd(), data, libc::SEEK_HOLE) };
    assert_eq!(data, 512 << 20);
    assert_eq!(hole, (512 << 20) + 4096);
    let mut b = [0u8; 4];
    fd.read_at(&mut b, 512 << 20).unwrap();
    assert_eq!(b, [7; 4]);
    // copy_file_range through the mount.
    let dst = fs::File::create(m.join("copy")).unwrap();
    let (mut oi, mut oo) = ((512i64) << 20, 0i64);
    // SAFETY: offsets point to live locals.
    let n = unsafe { libc::copy_file_range(fd.as_raw_fd(), &mut oi, dst.as_raw_fd(), &mut oo, 4096, 0) };
    assert_eq!(n, 4096);
    drop(dst);
    assert_eq!(fs::read(m.join("copy")).unwrap(), vec![7u8; 4096]);
}

/// While a big copy-up is in progress, other files are served: the other operations finish
/// while the copy-up's temporary file is still in workdir (an order, not a timing).
#[test]
fn big_copy_up_does_not_stall_other_files() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    {
        let f = fs::File::create(l.join("big")).unwrap();
        let chunk = vec![0x5au8; 8 << 20];
        use std::io::Write;
        let mut f = std::io::BufWriter::new(f);
        for _ in 0..128 {
            f.write_all(&chunk).unwrap();
        }
    }
    for i in 0..50 {
        fs::write(l.join(format!("small{i}")), b"s").unwrap();
    }
    let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "fsync=1");
    let mpath = m.clone();
    let writer = std::thread::spawn(move || {
        let mut f = fs::OpenOptions::new().append(true).open(mpath.join("big")).unwrap();
        use std::io::Write;
        f.write_all(b"!").unwrap();
    });
    let work = w.join("work");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while fs::read_dir(&work).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(
            !writer.is_finished() || std::time::Instant::now() < deadline,
            "copy-up never seen in workdir"
        );
        if writer.is_finished() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let mut done_during_copy = 0;
    for i in 0..50 {
        assert_eq!(fs::read(m.join(format!("small{i}"))).unwrap(), b"s");
        fs::write(m.join(format!("new{i}")), b"n").unwrap();
        if fs::read_dir(&work).map(|d| d.count()).unwrap_or(0) > 0 {
            done_during_copy += 1;
        }
    }
    writer.join().unwrap();
    assert!(done_during_copy > 0, "no operation on another file completed while the copy-up ran");
    assert_eq!(fs::metadata(u.join("big")).unwrap().len(), (1 << 30) + 1);
}

/// Copy-up keeps setuid/setgid mode bits, owner, times and xattrs, and copies the parents first
/// with theirs.
#[test]
fn copy_up_keeps_mode_owner_times_xattrs_of_file_and_parents() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::create_dir_all(l.join("p/q")).unwrap();
    fs::write(l.join("p/q/f"), b"data").unwrap();
    let chown = |p: &Path, uid: u32, gid: u32| {
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid path.
        assert_eq!(unsafe { libc::lchown(c.as_ptr(), uid, gid) }, 0);
    };
    let chmod = |p: &Path, mode: u32| {
        fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap()
    };
    chown(&l.join("p"), 11, 12);
    chmod(&l.join("p"), 0o2750);
    chown(&l.join("p/q"), 13, 14);
    chmod(&l.join("p/q"), 0o1777);
    chown(&l.join("p/q/f"), 1234, 5678);
    chmod(&l.join("p/q/f"), 0o6755);
    set_xattr(&l.join("p/q/f"), "user.a", b"1");
    set_xattr(&l.join("p"), "user.dir", b"2");
    let t = |p: &Path, sec: i64| {
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        let ts = [libc::timespec { tv_sec: sec, tv_nsec: 5 }, libc::timespec { tv_sec: sec, tv_nsec: 7 }];
        // SAFETY: valid path and array.
        assert_eq!(
            unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) },
            0
        );
    };
    t(&l.join("p/q/f"), 1_000_000_000);
    t(&l.join("p/q"), 1_100_000_000);
    t(&l.join("p"), 1_200_000_000);
    let before: Vec<_> =
        ["p", "p/q", "p/q/f"].iter().map(|x| fs::symlink_metadata(l.join(x)).unwrap()).collect();
    let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
    // A setxattr copies up without touching data or times.
    set_xattr(&m.join("p/q/f"), "user.b", b"3");
    for (x, b) in ["p", "p/q", "p/q/f"].iter().zip(&before) {
        let a = fs::symlink_metadata(u.join(x)).unwrap();
        assert_eq!(a.mode(), b.mode(), "{x} mode");
        assert_eq!((a.uid(), a.gid()), (b.uid(), b.gid()), "{x} owner");
        if *x == "p/q/f" {
            assert_eq!((a.mtime(), a.mtime_nsec()), (b.mtime(), b.mtime_nsec()), "{x} mtime");
        }
    }
    assert_eq!(fs::read(u.join("p/q/f")).unwrap(), b"data");
    let x = xattrs(&u.join("p/q/f"), true);
    assert!(
        x.contains(&("user.a".to_string(), "1".to_string()))
            && x.contains(&("user.b".to_string(), "3".to_string())),
        "{x:?}"
    );
    assert!(xattrs(&u.join("p"), true).contains(&("user.dir".to_string(), "2".to_string())));
    assert_eq!(fs::read_dir(w.join("work")).unwrap().count(), 0);
}

/// An upper written by layerfs as root is a valid kernel overlayfs upper showing the same tree.
#[test]
fn kernel_overlayfs_reads_an_upper_written_by_layerfs() {
    if !can_mount() || !can_kernel_overlay() {
        return;
    }
    let s = Scratch::new();
    let (l1, l2, u, w, m) = (s.path("l1"), s.path("l2"), s.path("u"), s.path("w"), s.path("m"));
    fs::create_dir_all(l2.join("d/sub")).unwrap();
    fs::write(l2.join("d/a"), b"a").unwrap();
    fs::write(l2.join("d/sub/b"), b"b").unwrap();
    fs::write(l2.join("gone"), b"g").unwrap();
    fs::create_dir_all(l1.join("e")).unwrap();
    fs::write(l1.join("e/x"), b"x").unwrap();
    fs::write(l1.join("f"), b"f").unwrap();
    {
        let _g = mount_layerfs(&[l1.clone(), l2.clone()], Some((&u, &w)), &m, "");
        fs::remove_dir_all(m.join("d")).unwrap();
        fs::create_dir(m.join("d")).unwrap();
        fs::write(m.join("d/new"), b"n").unwrap();
        fs::remove_file(m.join("gone")).unwrap();
        fs::write(m.join("f"), b"changed").unwrap();
        fs::rename(m.join("e/x"), m.join("y")).unwrap();
        std::os::unix::fs::symlink("y", m.join("ln")).unwrap();
        fs::hard_link(m.join("f"), m.join("f2")).unwrap();
    }
    let lay = {
        let _g = mount_layerfs(&[l1.clone(), l2.clone()], Some((&u, &w)), &m, "");
        snapshot(&m, true)
    };
    let w2 = s.path("w2");
    let k = s.path("k");
    let _k = mount_overlay(&[l1.clone(), l2.clone()], Some((&u, &w2)), &k);
    let kern = snapshot(&k, true);
    let d = diff_snapshots("kernel", &kern, "layerfs", &lay);
    assert!(d.is_empty(), "kernel reads layerfs's upper differently:\n{}", d.join("\n"));
    assert!(kern.contains_key("d/new") && !kern.contains_key("d/a") && !kern.contains_key("gone"));
}
