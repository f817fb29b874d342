//! Rootless mounts: a plain user through fusermount3, and root inside a user namespace
//! (`unshare -Urm`). Both must work end to end (write, delete, recreate, rename, xattrs) and
//! pick the whiteout and opaque forms the kernel allows them. Run as root: the test makes its
//! own unprivileged user.
mod common;
use common::*;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

const USER: &str = "layerfs-rootless";

static USER_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// (uid, gid) of the test user, created when missing; None when not root.
fn test_user() -> Option<(u32, u32)> {
    let _g = USER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1) != 0 {
        assert!(!must_mount(), "the rootless tests need root to create their user");
        eprintln!("skipped: not root");
        return None;
    }
    let id = |flag: &str| Command::new("id").args([flag, USER]).output().ok().filter(|o| o.status.success());
    if id("-u").is_none() {
        let st = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/bin/sh", USER])
            .status()
            .unwrap();
        assert!(st.success(), "useradd {USER}");
    }
    let parse = |o: std::process::Output| String::from_utf8_lossy(&o.stdout).trim().parse::<u32>().unwrap();
    Some((parse(id("-u").unwrap()), parse(id("-g").unwrap())))
}

fn chown_r(p: &Path, uid: u32, gid: u32) {
    let st = Command::new("chown").arg("-R").arg(format!("{uid}:{gid}")).arg(p).status().unwrap();
    assert!(st.success());
}

/// Runs a shell script as the test user (optionally inside `unshare -Urm`).
fn run_as(uid: u32, gid: u32, userns: bool, script: &str) -> String {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", &uid.to_string(), "--regid", &gid.to_string(), "--clear-groups", "--"]);
    if userns {
        c.args(["unshare", "-Urm"]);
    }
    c.args(["sh", "-euc", script]).env("HOME", "/tmp").env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    let o = c.output().unwrap();
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "script failed:\n{script}\n---\n{out}");
    out
}

fn scenario(userns: bool) {
    if !can_mount() {
        return;
    }
    let Some((uid, gid)) = test_user() else { return };
    // /dev/fuse is world-usable on a normal distribution; some images ship it 0600.
    let _ = Command::new("chmod").args(["0666", "/dev/fuse"]).status();
    let s = Scratch::new();
    fs::set_permissions(s.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::write(l.join("f"), b"low\n").unwrap();
    fs::write(l.join("ro"), b"read-only\n").unwrap();
    fs::set_permissions(l.join("ro"), std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
    fs::create_dir_all(l.join("d/sub")).unwrap();
    fs::write(l.join("d/x"), b"x").unwrap();
    fs::write(l.join("d/sub/y"), b"y").unwrap();
    chown_r(s.dir.path(), uid, gid);
    let bin = layerfs_bin();
    let unmount = if userns { "umount" } else { "fusermount3 -u" };
    let script = format!(
        r#"
B={bin}; L={l}; U={u}; W={w}; M={m}
$B -o lowerdir=$L,upperdir=$U,workdir=$W $M
trap '{unmount} $M' EXIT
test "$(cat $M/f)" = low
echo more >> $M/f
test "$(cat $M/f)" = "low
more"
rm $M/d/x
rm -rf $M/d && mkdir $M/d && test -z "$(ls -A $M/d)"
echo new > $M/d/new
mv $M/f $M/g
cp $M/ro $M/ro-copy
sed -i s/read/READ/ $M/ro-copy
setfattr -n user.k -v v $M/g && test "$(getfattr --only-values -n user.k $M/g)" = v
ln $M/g $M/g2 && test "$(stat -c %h $M/g2)" = 2
ls -A $M | sort | tr '\n' ' '
"#,
        bin = bin.display(),
        l = l.display(),
        u = u.display(),
        w = w.display(),
        m = m.display()
    );
    let out = run_as(uid, gid, userns, &script);
    assert!(out.contains("d g g2 ro ro-copy"), "{out}");
    assert!(!is_mounted(&m));
    // The upper holds the changes in a form the kernel allows an unprivileged user.
    let f = fs::symlink_metadata(u.join("f"));
    let chardev = f.as_ref().is_ok_and(|md| md.file_type().is_char_device() && md.rdev() == 0);
    assert!(chardev || u.join(".wh.f").exists(), "whiteout for the renamed lower file");
    assert!(
        !xattrs(&u.join("d"), true).is_empty() || u.join("d/.wh..wh..opq").exists(),
        "recreated directory is opaque"
    );
    assert_eq!(fs::read(u.join("d/new")).unwrap(), b"new\n");
    assert_eq!(fs::read(u.join("g")).unwrap(), b"low\nmore\n");
    assert_eq!(fs::metadata(u.join("g")).unwrap().uid(), uid, "files belong to the user");
    // Nothing written to the lower layer.
    assert_eq!(fs::read(l.join("f")).unwrap(), b"low\n");
    assert!(l.join("d/x").exists());
}

#[test]
fn plain_user_through_fusermount3() {
    scenario(false);
}

#[test]
fn root_in_a_user_namespace() {
    scenario(true);
}
