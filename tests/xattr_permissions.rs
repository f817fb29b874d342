//! `xattr_permissions=1|2` and the override-stat xattr (`uid:gid:mode[:type]`) as
//! fuse-overlayfs and containers-storage use it: owners, modes and device types kept in an
//! xattr instead of the real inode, read from every layer that carries them, hidden from the
//! merged view, carried by copy-up.
mod common;
use common::*;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

const CONT: &str = "user.containers.override_stat";
const PRIV: &str = "security.fuseoverlayfs.override_stat";

fn get(p: &Path, name: &str) -> Option<String> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid strings, buffer writable for its length.
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| String::from_utf8_lossy(&buf[..r as usize]).to_string())
}

fn set(p: &Path, name: &str, v: &str) -> i32 {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid strings and value.
    let r = unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    if r == 0 { 0 } else { std::io::Error::last_os_error().raw_os_error().unwrap() }
}

fn get_errno(p: &Path, name: &str) -> i32 {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: as above.
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r >= 0 { 0 } else { std::io::Error::last_os_error().raw_os_error().unwrap() }
}

fn own_mode(p: &Path) -> (u32, u32, u32) {
    let md = fs::symlink_metadata(p).unwrap();
    (md.uid(), md.gid(), md.mode())
}

#[test]
fn xattr_permissions_2_keeps_owners_and_modes_in_the_xattr() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::write(l.join("f"), b"data").unwrap();
    fs::set_permissions(l.join("f"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::create_dir(l.join("d")).unwrap();
    let mut g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "xattr_permissions=2");
    // chown/chmod of a lower file: copied up, the values go to the xattr, not the inode.
    let (ok, out) = sh(&m, "chown 1000:2000 f && chmod 4750 f");
    assert!(ok, "{out}");
    assert_eq!(own_mode(&m.join("f")), (1000, 2000, libc::S_IFREG | 0o4750));
    assert_eq!(get(&u.join("f"), CONT).as_deref(), Some("1000:2000:4750:file"));
    let (ruid, _, rmode) = own_mode(&u.join("f"));
    assert_eq!(ruid, 0, "the real owner is not changed");
    assert_eq!(rmode & 0o7000, 0, "no setuid bit on the real file");
    assert_eq!(fs::read(m.join("f")).unwrap(), b"data");
    // The override xattr is not part of the merged view and cannot be set through it.
    let (ok, out) = sh(&m, "getfattr -d -m - f");
    assert!(ok && !out.contains("override_stat"), "{out}");
    assert_eq!(get_errno(&m.join("f"), CONT), libc::ENODATA);
    assert_eq!(set(&m.join("f"), CONT, "0:0:0777:file"), libc::EPERM);
    assert_eq!(set(&m.join("f"), "user.containers.override_stat", "0:0:0777"), libc::EPERM);
    assert_eq!(set(&m.join("f"), "user.ok", "1"), 0);
    // New objects record their creator; the kernel's permission checks use the shown owner.
    let (ok, out) = sh(&m, "umask 022 && mkdir nd && chown 1234:1234 nd && chmod 0700 nd");
    assert!(ok, "{out}");
    let (ok, out) = sh(
        &m,
        "setpriv --reuid 1234 --regid 1234 --clear-groups sh -c 'umask 027; echo x > nd/by1234 && mkdir nd/sub && ln -s by1234 nd/sl'",
    );
    assert!(ok, "a user owning the directory in the xattr only: {out}");
    let (ok, _) = sh(&m, "setpriv --reuid 1235 --regid 1235 --clear-groups sh -c 'ls nd'");
    assert!(!ok, "mode 0700 from the xattr must keep others out");
    assert_eq!(own_mode(&m.join("nd/by1234")), (1234, 1234, libc::S_IFREG | 0o640));
    assert_eq!(get(&u.join("nd/by1234"), CONT).as_deref(), Some("1234:1234:0640:file"));
    assert_eq!(get(&u.join("nd/sub"), CONT).as_deref(), Some("1234:1234:0750:dir"));
    assert_eq!(own_mode(&u.join("nd/by1234")).0, 0, "created by the root server, owner in the xattr");
    assert_eq!(own_mode(&m.join("nd")), (1234, 1234, libc::S_IFDIR | 0o700));
    // setgid directories pass their group on, also when it is only in the xattr.
    let (ok, out) = sh(&m, "mkdir sg && chown 0:777 sg && chmod 2775 sg && touch sg/x && mkdir sg/y");
    assert!(ok, "{out}");
    assert_eq!(own_mode(&m.join("sg/x")).1, 777);
    assert_eq!(own_mode(&m.join("sg/y")), (0, 777, libc::S_IFDIR | 0o2755));
    // Everything survives a remount.
    g.unmount();
    let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "xattr_permissions=2");
    assert_eq!(own_mode(&m.join("f")), (1000, 2000, libc::S_IFREG | 0o4750));
    assert_eq!(own_mode(&m.join("nd/by1234")), (1234, 1234, libc::S_IFREG | 0o640));
    // The lower layer is untouched.
    assert_eq!(own_mode(&l.join("f")), (0, 0, libc::S_IFREG | 0o644));
    assert_eq!(get(&l.join("f"), CONT), None);
}

#[test]
fn xattr_permissions_1_uses_the_security_name() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::write(l.join("f"), b"f").unwrap();
    let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "xattr_permissions=1");
    let (ok, out) = sh(&m, "chown 5:6 f && chmod 600 f && touch g");
    assert!(ok, "{out}");
    assert_eq!(own_mode(&m.join("f")), (5, 6, libc::S_IFREG | 0o600));
    assert_eq!(get(&u.join("f"), PRIV).as_deref(), Some("5:6:0600:file"));
    assert_eq!(get(&u.join("f"), CONT), None);
    assert!(get(&u.join("g"), PRIV).is_some());
    assert_eq!(get_errno(&m.join("f"), PRIV), libc::ENODATA);
}

/// A layer as containers-storage extracts it for a rootless store with force_mask: owners,
/// modes and device nodes in `user.containers.override_stat`, also on the layer root.
#[test]
fn override_xattrs_in_lower_layers() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l1, l2) = (s.path("l1"), s.path("l2"));
    assert_eq!(set(&l1, CONT, "0:0:0755:dir"), 0);
    for (name, v) in [
        ("dev", "0:5:0620:char-136-3"),
        ("blk", "0:6:0660:block-8-1"),
        ("pipe", "0:0:0644:pipe"),
        ("own", "1000:1000:4711"),
        ("bad", "garbage"),
    ] {
        fs::write(l1.join(name), b"").unwrap();
        assert_eq!(set(&l1.join(name), CONT, v), 0);
    }
    fs::create_dir(l1.join("sub")).unwrap();
    assert_eq!(set(&l1.join("sub"), CONT, "33:33:0750:dir"), 0);
    // A second layer whose root carries no override: read only with xattr_permissions.
    fs::write(l2.join("f2"), b"2").unwrap();
    assert_eq!(set(&l2.join("f2"), CONT, "7:7:0600:file"), 0);
    let (u, w, m) = (s.path("u"), s.path("w"), s.path("m"));
    let mut g = mount_layerfs(&[l1.clone(), l2.clone()], Some((&u, &w)), &m, "");
    let md = fs::symlink_metadata(m.join("dev")).unwrap();
    assert!(md.file_type().is_char_device());
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777, md.rdev()), (0, 5, 0o620, libc::makedev(136, 3)));
    let md = fs::symlink_metadata(m.join("blk")).unwrap();
    assert!(md.file_type().is_block_device() && md.rdev() == libc::makedev(8, 1));
    assert!(fs::symlink_metadata(m.join("pipe")).unwrap().file_type().is_fifo());
    assert_eq!(own_mode(&m.join("own")), (1000, 1000, libc::S_IFREG | 0o4711));
    assert_eq!(own_mode(&m.join("sub")), (33, 33, libc::S_IFDIR | 0o750));
    let real_bad = own_mode(&l1.join("bad"));
    assert_eq!(own_mode(&m.join("bad")), real_bad, "a malformed value is ignored");
    assert_eq!(own_mode(&m.join("f2")), own_mode(&l2.join("f2")), "unmarked layer without the option");
    // readdir's d_type agrees with stat (find -type uses it).
    let (ok, out) = sh(&m, "find . -type c; find . -type b; find . -type p");
    assert!(ok && out == "./dev\n./blk\n./pipe\n", "{out}");
    let (ok, out) = sh(&m, "getfattr -d -m - own sub .");
    assert!(ok && !out.contains("override_stat"), "{out}");
    // Copy-up carries the override (the upper follows the lower's name).
    let (ok, out) = sh(&m, "chmod 0640 own && touch -m own");
    assert!(ok, "{out}");
    assert_eq!(own_mode(&m.join("own")), (1000, 1000, libc::S_IFREG | 0o640));
    assert_eq!(get(&u.join("own"), CONT).as_deref(), Some("1000:1000:0640:file"));
    g.unmount();
    // With xattr_permissions=2 every layer's objects are read, and the upper root is seeded
    // from the first lower root that carries a value.
    let (u2, w2, m2) = (s.path("u2"), s.path("w2"), s.path("m2"));
    let _g = mount_layerfs(&[l1.clone(), l2.clone()], Some((&u2, &w2)), &m2, "xattr_permissions=2");
    assert_eq!(own_mode(&m2.join("f2")), (7, 7, libc::S_IFREG | 0o600));
    assert_eq!(get(&u2, CONT).as_deref(), Some("0:0:0755:dir"));
    assert_eq!(own_mode(&m2.join("own")), (1000, 1000, libc::S_IFREG | 0o4711));
}

/// `layerfs unpack` run by a plain user records device nodes in the override xattr; a plain
/// user's mount with xattr_permissions=2 shows them as devices with their numbers and modes.
#[test]
fn unprivileged_unpack_then_mount_shows_devices() {
    if !can_mount() {
        return;
    }
    if fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1) != 0 {
        assert!(!must_mount(), "this test needs root to run a plain user");
        return;
    }
    let user = "layerfs-rootless";
    if Command::new("id").arg(user).output().map(|o| !o.status.success()).unwrap_or(true) {
        let st = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/bin/sh", user])
            .status();
        assert!(st.unwrap().success());
    }
    let _ = Command::new("chmod").args(["0666", "/dev/fuse"]).status();
    let s = Scratch::new();
    fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let tar = s.dir.path().join("layer.tar");
    let py = format!(
        r#"
import tarfile, io
with tarfile.open({tar:?}, "w", format=tarfile.PAX_FORMAT) as t:
    for name, kind, mode, maj, mi in [("dev/null", tarfile.CHRTYPE, 0o666, 1, 3), ("dev/sda", tarfile.BLKTYPE, 0o660, 8, 0)]:
        i = tarfile.TarInfo(name); i.type = kind; i.mode = mode; i.devmajor = maj; i.devminor = mi; i.uid = 0; i.gid = 6
        t.addfile(i)
    i = tarfile.TarInfo("etc/motd"); data = b"hello\n"; i.size = len(data); i.mode = 0o644
    t.addfile(i, io.BytesIO(data))
"#,
        tar = tar.display().to_string()
    );
    assert!(Command::new("python3").args(["-c", &py]).status().unwrap().success());
    let dir = s.dir.path().display().to_string();
    let _ = Command::new("chown").args(["-R", user, &dir]).status();
    let script = format!(
        r#"
set -eu
cd {dir}
B={bin}
$B unpack layer.tar L
test -f L/dev/null   # mknod was refused: a placeholder file
mkdir U W M
$B -o lowerdir=L,upperdir=U,workdir=W,xattr_permissions=2 M
trap 'fusermount3 -u M' EXIT
stat -c '%F %t:%T %a %u:%g' M/dev/null M/dev/sda
cat M/etc/motd
! chmod 600 M/dev/null 2>/dev/null  # shown as root's: the kernel refuses
umask 022; echo mine > M/mine && chmod 4700 M/mine
stat -c '%a %u' M/mine
getfattr --only-values -n user.containers.override_stat U/mine; echo
"#,
        bin = layerfs_bin().display()
    );
    let o = Command::new("setpriv")
        .args(["--reuid", user, "--regid", user, "--clear-groups", "--", "sh", "-c", &script])
        .env("HOME", "/tmp")
        .output()
        .unwrap();
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("character special file 1:3 666 0:6\nblock special file 8:0 660 0:6\nhello\n"),
        "{out}"
    );
    let uid = String::from_utf8(Command::new("id").args(["-u", user]).output().unwrap().stdout).unwrap();
    let gid = String::from_utf8(Command::new("id").args(["-g", user]).output().unwrap().stdout).unwrap();
    let (uid, gid) = (uid.trim(), gid.trim());
    assert!(out.contains(&format!("4700 {uid}\n{uid}:{gid}:4700:file\n")), "{out}");
}

/// mknod of a device where the server may not make one: a regular file carrying the type.
/// Run through the façade in a child that dropped root (the kernel lets only a caller with
/// CAP_MKNOD ask for a device, so a rootless mount never sees the request).
#[test]
fn mknod_device_without_privilege_records_the_type() {
    use layerfs::fs::{Caller, FsOptions, OverlayFs};
    if fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1) != 0 {
        assert!(!must_mount(), "this test needs root to drop privileges");
        return;
    }
    let s = Scratch::new();
    let (l, u, w) = (s.path("l"), s.path("u"), s.path("w"));
    for p in [s.dir.path(), &l, &u, &w] {
        assert_eq!(
            // SAFETY: a valid path.
            unsafe { libc::chown(CString::new(p.as_os_str().as_bytes()).unwrap().as_ptr(), 65534, 65534) },
            0
        );
    }
    // SAFETY: the child only makes syscalls and exits with _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = std::panic::catch_unwind(|| {
            // SAFETY: plain syscalls.
            unsafe {
                assert_eq!(libc::setgroups(0, std::ptr::null()), 0);
                assert_eq!(libc::setresgid(65534, 65534, 65534), 0);
                assert_eq!(libc::setresuid(65534, 65534, 65534), 0);
            }
            let mut o = FsOptions::new(vec![l.clone()]);
            o.upper = Some(u.clone());
            o.work = Some(w.clone());
            o.xattr_permissions = 2;
            let fs = OverlayFs::new(o).unwrap();
            let caller = Caller { uid: 0, gid: 0, umask: 0o022, pid: 0 };
            let a =
                fs.mknod(1, std::ffi::OsStr::new("tty"), libc::S_IFCHR | 0o666, libc::makedev(5, 0), caller);
            let a = a.unwrap();
            assert_eq!(a.kind, fuser::FileType::CharDevice);
            assert_eq!((a.rdev, a.perm, a.uid, a.gid), (libc::makedev(5, 0) as u32, 0o644, 0, 0));
            let md = fs::symlink_metadata(u.join("tty")).unwrap();
            assert!(md.file_type().is_file());
            assert_eq!(get(&u.join("tty"), CONT).as_deref(), Some("0:0:0644:char-5-0"));
            // Without xattr_permissions the refusal stands.
            let mut o = FsOptions::new(vec![l.clone()]);
            o.upper = Some(u.clone());
            o.work = Some(w.clone());
            let fs = OverlayFs::new(o).unwrap();
            let e =
                fs.mknod(1, std::ffi::OsStr::new("tty2"), libc::S_IFCHR | 0o666, libc::makedev(5, 0), caller);
            assert_eq!(e.unwrap_err().errno, libc::EPERM);
        });
        // SAFETY: leaving the child without running the parent's destructors.
        unsafe { libc::_exit(if code.is_ok() { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child failed (status {status:#x})");
}

/// Fifos, sockets and symlinks made by a caller other than the server show that caller as
/// owner, and the caller may change them: with `=1` the owner is in the xattr (which
/// `security.*` allows on them); with `=2` (no `user.*` xattrs on them) the real owner stands
/// for it. They showed the server's owner (0:0), and chmod and chown by their maker failed.
#[test]
fn fifos_sockets_and_symlinks_keep_their_makers_owner() {
    if !can_mount() {
        return;
    }
    for (opt, name) in [("xattr_permissions=1", Some(PRIV)), ("xattr_permissions=2", None)] {
        let s = Scratch::new();
        let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
        fs::create_dir(l.join("pub")).unwrap();
        fs::set_permissions(l.join("pub"), fs::Permissions::from_mode(0o1777)).unwrap();
        let mut g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, opt);
        let (ok, out) = sh(
            &m,
            "setpriv --reuid 1000 --regid 1000 --clear-groups sh -c 'cd pub && mkfifo fifo && ln -s t sl && \
             python3 -c \"import socket; socket.socket(socket.AF_UNIX).bind(\\\"sock\\\")\" && \
             chmod 600 fifo && chown -h 1000:1000 sl'",
        );
        assert!(ok, "{opt}: {out}");
        for round in 0..2 {
            for (f, ty, perm) in [
                ("fifo", libc::S_IFIFO, 0o600),
                ("sl", libc::S_IFLNK, 0o777),
                ("sock", libc::S_IFSOCK, 0o755),
            ] {
                assert_eq!(
                    own_mode(&m.join("pub").join(f)),
                    (1000, 1000, ty | perm),
                    "{opt} {f} round {round}"
                );
            }
            g.unmount();
            g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, opt);
        }
        if let Some(n) = name {
            assert_eq!(get(&u.join("pub/fifo"), n).as_deref(), Some("1000:1000:0600:pipe"), "{opt}");
        }
    }
}

/// Modes set through an access ACL (`sed -i` and `cp -p` set them with a minimal ACL, not a
/// chmod; `setfacl`), and modes of objects made under a default ACL, go to the override as a
/// filesystem would set the mode; a chmod's mask reaches the ACL the kernel checks access with.
#[test]
fn acls_and_the_override_agree_on_the_mode() {
    if !can_mount() {
        return;
    }
    for xp in ["1", "2"] {
        let s = Scratch::new();
        let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
        fs::write(l.join("passwd"), b"hello\n").unwrap();
        fs::set_permissions(l.join("passwd"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::create_dir(l.join("d")).unwrap();
        let src = s.path("src").join("src.sh");
        fs::write(&src, b"ex\n").unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o755)).unwrap();
        let _g =
            mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, &format!("xattr_permissions={xp}"));
        let script = format!(
            "umask 022 && sed -i s/hello/bye/ passwd && touch f2 && setfacl -m u::rwx,g::rwx,o::r-x f2 \
             && setfacl -m d:u::rw,d:g::r,d:o::- d && touch d/new && mkdir d/sub && cp -a {} script.sh \
             && stat -c '%n=%a' passwd f2 d/new d/sub script.sh | tr '\\n' ' '",
            src.display()
        );
        let (ok, out) = sh(&m, &script);
        assert!(ok, "{out}");
        assert_eq!(
            out.trim(),
            "passwd=644 f2=775 d/new=640 d/sub=640 script.sh=755",
            "xattr_permissions={xp}"
        );
        let (ok, out) = sh(&m, "setpriv --reuid 65534 --regid 65534 --clear-groups cat passwd");
        assert!(ok && out.contains("bye"), "a file sed -i left 0644 is readable by others: {out}");
        // A named user's entry is limited by the mask a chmod sets, as the kernel checks it.
        let (ok, out) = sh(
            &m,
            "echo data > g && setfacl -m u:65534:rw g && chmod 640 g && getfacl -cp g | grep -E '^(mask|other)'",
        );
        assert!(ok, "{out}");
        assert_eq!(
            out.split_whitespace().collect::<Vec<_>>(),
            ["mask::r--", "other::---"],
            "xattr_permissions={xp}"
        );
        let (ok, out) = sh(&m, "setpriv --reuid 65534 --regid 65534 --clear-groups sh -c 'echo x >> g'");
        assert!(!ok && out.contains("Permission denied"), "the mask limits the named user: {out}");
        let (ok, out) = sh(&m, "setpriv --reuid 65534 --regid 65534 --clear-groups cat g");
        assert!(ok && out.contains("data"), "{out}");
    }
}

/// With owners and modes in the override xattr, a write or an O_TRUNC open by a caller
/// other than the owner (no CAP_FSETID) drops setuid/setgid there, as the kernel drops them,
/// also through a write-only handle the server serves, and the mode shown changes at once; a
/// chown drops setuid (and setgid where group-executable), as the VFS does.
/// As root, a device node is made as a real one (no `user.*` xattr can be set on it).
#[test]
fn writes_by_others_drop_setuid_in_the_override() {
    if !can_mount() || !is_root() {
        return;
    }
    // (And without overrides, where the mode shown went stale the same way.)
    for opts in
        ["xattr_permissions=2,passthrough=0", "xattr_permissions=2", "xattr_permissions=1", "passthrough=0"]
    {
        let s = Scratch::new();
        let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
        let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, opts);
        let script = "for f in wo rw tr; do echo hello > $f; chown 1000:1000 $f; chmod 6777 $f; done; \
            setpriv --reuid 1003 --regid 1003 --clear-groups sh -c 'echo x >> wo; echo x 1<> rw; : > tr' && \
            echo d > ch && chown 1000:1000 ch && chmod 6755 ch && chown 0:0 ch && \
            echo d > chnx && chmod 2644 chnx && chown 1000:1000 chnx && \
            stat -c '%n %A' wo rw tr ch chnx | tr '\\n' ' '; mknod c13 c 1 3 && stat -c '%n %F %t:%T' c13";
        let (ok, out) = sh(&m, script);
        assert!(ok, "{opts}: {out}");
        assert_eq!(
            out.trim(),
            "wo -rwxrwxrwx rw -rwxrwxrwx tr -rwxrwxrwx ch -rwxr-xr-x chnx -rw-r-Sr-- c13 character special file 1:3",
            "{opts}"
        );
        if opts.contains("xattr_permissions") {
            let name = if opts.contains("=1") { PRIV } else { CONT };
            assert_eq!(get(&u.join("tr"), name).as_deref(), Some("1000:1000:0777:file"), "{opts}");
        }
    }
}
