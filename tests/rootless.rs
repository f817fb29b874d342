//! Rootless mounts: a plain user through fusermount3, and root inside a user namespace
//! (`unshare -Urm`). Both must work end to end (write, delete, recreate, rename, xattrs) and
//! pick the whiteout and opaque forms the kernel allows them; in a user namespace the property
//! test's random operation sequences must also match kernel overlayfs mounted there. Run as
//! root: the test makes its own unprivileged user.
mod common;
mod diffkit;
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
    let Some((uid, gid, s)) = user_scratch() else { return };
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
    // An ACL entry for a user the namespace knows (inside `unshare -Urm` only the user itself).
    let aclu = if userns { 0 } else { 12345 };
    let script = format!(
        r#"
B={bin}; L={l}; U={u}; W={w}; M={m}
$B -o lowerdir=$L,upperdir=$U,workdir=$W $M
trap '{unmount} $M' EXIT
# The mount's type names the server, as fuse-overlayfs's does (fuse.fuse-overlayfs).
grep -q " $M fuse.layerfs " /proc/self/mounts
# Errors users hit with fuse-overlayfs: sed -i in a lower directory (fchown of its temporary
# file), cp of a read-only file to a new name and over it, setfacl on a lower file.
sed -i s/y/Y/ $M/d/sub/y && test "$(cat $M/d/sub/y)" = Y
cp $M/ro $M/ro2 && cmp $M/ro $M/ro2 && test "$(stat -c %a $M/ro2)" = 444
cp -f $M/f $M/ro2 && cmp $M/f $M/ro2
cp --preserve=mode $M/ro $M/ro3 && cmp $M/ro $M/ro3 && rm -f $M/ro2 $M/ro3
setfacl -m u:{aclu}:r $M/ro && getfacl -n $M/ro | grep -q '^user:{aclu}:r--$'
test "$(cat $M/ro)" = read-only
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
        m = m.display(),
        aclu = aclu
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
    // As the kernel writes a copy-up in a user namespace (it may not decode file handles
    // there): an empty origin, and the directory marked impure.
    let xs = xattrs(&u.join("g"), true);
    assert!(xs.contains(&("user.overlay.origin".into(), String::new())), "{xs:?}");
    assert!(xattrs(&u, true).contains(&("user.overlay.impure".into(), "y".into())));
    // Nothing written to the lower layer.
    assert_eq!(fs::read(l.join("f")).unwrap(), b"low\n");
    assert_eq!(fs::read(l.join("d/sub/y")).unwrap(), b"y");
    assert!(!xattrs(&l.join("ro"), true).iter().any(|(n, _)| n.contains("acl")));
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

/// Root in a user namespace with a subordinate id range mapped (newuidmap/newgidmap, as rootless
/// podman sets it up): chown of lower files to mapped ids works and shows, ids outside the range
/// fail as on kernel overlayfs (the same script runs on both and must print the same).
#[test]
fn chown_inside_a_mapped_range() {
    let Some((uid, gid)) = user_with_fuse() else { return };
    {
        let _g = USER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let has = fs::read_to_string("/etc/subuid")
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with(&format!("{USER}:")));
        if !has {
            let st = Command::new("usermod")
                .args(["--add-subuids", "300000-365535", "--add-subgids", "300000-365535", USER])
                .status()
                .unwrap();
            assert!(st.success(), "usermod --add-subuids");
        }
    }
    let sub: u32 = fs::read_to_string("/etc/subuid")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{USER}:")).and_then(|r| r.split(':').next()?.parse().ok()))
        .unwrap();
    let s = Scratch::new();
    fs::set_permissions(s.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for side in ["k", "f"] {
        let l = s.path(&format!("{side}/l"));
        fs::write(l.join("f"), b"f").unwrap();
        fs::create_dir_all(l.join("d")).unwrap();
        fs::write(l.join("d/g"), b"g").unwrap();
        s.path(&format!("{side}/u"));
        s.path(&format!("{side}/w"));
        s.path(&format!("{side}/m"));
    }
    chown_r(s.dir.path(), uid, gid);
    let base = s.dir.path().display().to_string();
    let script = format!(
        r#"
run() {{
  M=$1
  chown 1:1 $M/f && stat -c '%u:%g' $M/f
  chown 1000:1000 $M/d && stat -c '%u:%g' $M/d $M/d/g
  chown -h 65536:2 $M/d/g && stat -c '%u:%g' $M/d/g
  chown 65537 $M/f 2>&1 | sed "s|$M|M|"; stat -c '%u:%g' $M/f
  touch $M/new && chown 5:5 $M/new && stat -c '%u:%g' $M/new
}}
cd {base}
mount -t overlay overlay -o lowerdir=k/l,upperdir=k/u,workdir=k/w,userxattr k/m
run k/m > k.out; umount k/m
{bin} -o lowerdir=f/l,upperdir=f/u,workdir=f/w f/m
run f/m > f.out; umount f/m
cat k.out; echo ===; cat f.out
"#,
        bin = layerfs_bin().display()
    );
    let mut c = Command::new("setpriv");
    c.args(["--reuid", &uid.to_string(), "--regid", &gid.to_string(), "--clear-groups", "--"]);
    c.args([
        "unshare",
        &format!("--map-users={sub},1,65536"),
        &format!("--map-groups={sub},1,65536"),
        "-r",
        "-m",
        "sh",
        "-euc",
        &script,
    ]);
    let o = c.env("HOME", "/tmp").env("LC_ALL", "C").output().unwrap();
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{out}");
    let (k, f) = out.split_once("===\n").unwrap();
    assert_eq!(f, k, "layerfs and the kernel differ:\n{out}");
    assert!(
        k.starts_with("1:1\n1000:1000\n0:0\n65536:2\n")
            && k.contains("Invalid argument")
            && k.ends_with("1:1\n5:5\n"),
        "{out}"
    );
    // On disk: the subordinate ids.
    let md = fs::metadata(s.dir.path().join("f/u/f")).unwrap();
    assert_eq!((md.uid(), md.gid()), (sub, sub));
    let md = fs::metadata(s.dir.path().join("f/u/d")).unwrap();
    assert_eq!(md.uid(), sub + 999);
}

/// The test user and /dev/fuse usable by it; None where the test cannot run (outside CI).
fn user_with_fuse() -> Option<(u32, u32)> {
    if !can_mount() {
        return None;
    }
    let ids = test_user()?;
    // /dev/fuse is world-usable on a normal distribution; some images ship it 0600.
    let _ = Command::new("chmod").args(["0666", "/dev/fuse"]).status();
    Some(ids)
}

/// The test user, /dev/fuse usable by it, and a scratch directory it can reach; None where
/// the test cannot run (outside CI).
fn user_scratch() -> Option<(u32, u32, Scratch)> {
    let (uid, gid) = user_with_fuse()?;
    let s = Scratch::new();
    fs::set_permissions(s.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    Some((uid, gid, s))
}

/// A copy-up that cannot carry an xattr of the lower file (a `security.*` one set by real root,
/// which root in a user namespace may not set) fails with EPERM, as on kernel overlayfs and
/// fuse-overlayfs, rather than put a copy without it in the lower file's place.
#[test]
fn copy_up_that_would_lose_an_xattr_fails() {
    let Some((uid, gid, s)) = user_scratch() else { return };
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::write(l.join("f"), b"low\n").unwrap();
    let (ok, out) = sh(&l, "setfattr -n security.foo -v bar f");
    assert!(ok, "{out}");
    chown_r(s.dir.path(), uid, gid);
    let script = format!(
        r#"
B={bin}; M={m}
$B -o lowerdir={l},upperdir={u},workdir={w} $M
trap 'umount $M' EXIT
chmod 600 $M/f 2>&1 || echo chmod failed
(echo more >> $M/f) 2>&1 || echo append failed
cat $M/f
"#,
        bin = layerfs_bin().display(),
        l = l.display(),
        u = u.display(),
        w = w.display(),
        m = m.display()
    );
    let out = run_as(uid, gid, true, &script);
    assert!(out.contains("chmod failed") && out.contains("append failed"), "{out}");
    assert_eq!(out.matches("Operation not permitted").count(), 2, "{out}");
    assert!(out.ends_with("low\n"), "{out}");
    assert!(!u.join("f").exists(), "no copy without the xattr");
    assert_eq!(fs::read_dir(w.join("work")).unwrap().count(), 0, "nothing left in workdir");
}

/// A plain user's `auto_unmount`, with no `allow_other`/`allow_root` beside it (fuser refused
/// that, so it used to be ignored with a warning), and root's in a user namespace: a server
/// killed with SIGKILL leaves no dead mount behind.
#[test]
fn auto_unmount_after_kill_9_for_a_plain_user_and_in_a_user_namespace() {
    for userns in [false, true] {
        let Some((uid, gid, s)) = user_scratch() else { return };
        let (l, m) = (s.path("l"), s.path("m"));
        fs::write(l.join("f"), b"f").unwrap();
        chown_r(s.dir.path(), uid, gid);
        let script = format!(
            r#"B={bin}; M={m}
$B -o lowerdir={l},auto_unmount $M 2>&1
cat $M/f
grep -q " $M fuse.layerfs " /proc/self/mounts
kill -9 $(pgrep -f -x "$B -o lowerdir={l},auto_unmount $M")
for i in $(seq 100); do grep -q " $M " /proc/self/mounts || break; sleep 0.1; done
if grep -q " $M " /proc/self/mounts; then echo " dead mount left"; {unmount} $M; fi
"#,
            bin = layerfs_bin().display(),
            l = l.display(),
            m = m.display(),
            unmount = if userns { "umount -l" } else { "fusermount3 -uz" },
        );
        let out = run_as(uid, gid, userns, &script);
        assert_eq!(out, "f", "userns {userns}");
    }
}

/// Reads through the mount, a listing and a copy-up give the lower layer's objects no new
/// access time, as on kernel overlayfs (which opens them `O_NOATIME`), for a plain user's
/// server too: it cannot make its layers a private `noatime` mount as root does, so it opens
/// what it owns `O_NOATIME`, and reads what it does not own all the same. The access times are
/// older than the modification times, so the `relatime` of the disk would renew them on any
/// read.
#[test]
fn reads_by_a_plain_user_leave_lower_access_times_alone() {
    for userns in [false, true] {
        let Some((uid, gid, s)) = user_scratch() else { return };
        let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
        fs::create_dir(l.join("d")).unwrap();
        fs::write(l.join("d/in"), b"in\n").unwrap();
        fs::write(l.join("f"), b"small\n").unwrap();
        fs::write(l.join("big"), vec![7u8; 1 << 20]).unwrap();
        fs::write(l.join("g"), b"copied up\n").unwrap();
        chown_r(s.dir.path(), uid, gid);
        // Root's, which the server may read but not open O_NOATIME (EPERM): read all the same.
        fs::create_dir(l.join("theirs")).unwrap();
        fs::write(l.join("theirs/x"), b"theirs\n").unwrap();
        let (ok, out) = sh(&l, "touch -a -d 2001-01-01T00:00:00 d d/in f big g");
        assert!(ok, "{out}");
        let atimes = || -> Vec<i64> {
            ["d", "d/in", "f", "big", "g"]
                .iter()
                .map(|n| fs::symlink_metadata(l.join(n)).unwrap().atime())
                .collect()
        };
        let before = atimes();
        let script = format!(
            r#"B={bin}; M={m}
$B -o lowerdir={l},upperdir={u},workdir={w} $M
trap '{unmount} $M' EXIT
ls $M/d > /dev/null
cat $M/f $M/d/in $M/big > /dev/null
ls $M/theirs
cat $M/theirs/x
echo more >> $M/g
cat $M/g
"#,
            bin = layerfs_bin().display(),
            l = l.display(),
            u = u.display(),
            w = w.display(),
            m = m.display(),
            unmount = if userns { "umount" } else { "fusermount3 -u" },
        );
        let out = run_as(uid, gid, userns, &script);
        assert_eq!(out, "x\ntheirs\ncopied up\nmore\n", "userns {userns}");
        assert_eq!(atimes(), before, "lower access times (d, d/in, f, big, g), userns {userns}");
    }
}

/// A plain user's copy-up keeps the lower object's owner where the user may give it (a group
/// the user is in; a setgid directory's new files then take that group), and fails with
/// EPERM where it may not, as fuse-overlayfs's does: it used to hand such objects to the user
/// (a world-writable root file became the user's, a setuid root file setuid to the user).
#[test]
fn plain_user_copy_up_keeps_the_owner_or_fails() {
    let Some((uid, gid, s)) = user_scratch() else { return };
    let group = "layerfs-rootless-g";
    let _ = Command::new("groupadd").args(["--system", group]).stderr(std::process::Stdio::null()).status();
    let g = Command::new("getent").args(["group", group]).output().unwrap();
    let g: u32 = String::from_utf8_lossy(&g.stdout).split(':').nth(2).unwrap().trim().parse().unwrap();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::write(l.join("grp"), b"g\n").unwrap();
    fs::create_dir(l.join("sgd")).unwrap();
    fs::write(l.join("foreign"), b"f\n").unwrap();
    fs::write(l.join("suid"), b"s\n").unwrap();
    chown_r(s.dir.path(), uid, gid);
    let (ok, out) = sh(
        &l,
        &format!(
            "chgrp {g} grp sgd && chmod 2775 sgd && chown 0:0 foreign suid && chmod 0666 foreign \
             && chmod 4777 suid"
        ),
    );
    assert!(ok, "{out}");
    let script = format!(
        r#"
B={bin}; M={m}
$B -o lowerdir={l},upperdir={u},workdir={w} $M
trap 'fusermount3 -u $M' EXIT
echo more >> $M/grp && touch $M/sgd/new
stat -c '%n %a %u:%g' $M/grp $M/sgd $M/sgd/new | sed "s|$M/||"
echo x >> $M/foreign || echo foreign-refused
mv $M/suid $M/suid2 || echo suid-refused
stat -c '%n %a %u:%g' $M/foreign $M/suid | sed "s|$M/||"
"#,
        bin = layerfs_bin().display(),
        m = m.display(),
        l = l.display(),
        u = u.display(),
        w = w.display(),
    );
    let mut c = Command::new("setpriv");
    c.args(["--reuid", &uid.to_string(), "--regid", &gid.to_string(), "--groups", &g.to_string(), "--"]);
    let o = c.args(["sh", "-euc", &script]).env("HOME", "/tmp").env("LC_ALL", "C").output().unwrap();
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{out}");
    let want = format!("grp 644 {uid}:{g}\nsgd 2775 {uid}:{g}\nsgd/new 644 {uid}:{g}\n");
    assert!(out.contains(&want), "{out}");
    assert!(out.contains("foreign-refused") && out.contains("suid-refused"), "{out}");
    assert!(out.contains("foreign 666 0:0\nsuid 4777 0:0"), "{out}");
    assert!(!u.join("foreign").exists() && !u.join("suid").exists() && !u.join("suid2").exists());
}

/// A plain user's server refuses, in one line naming the cause, a lower layer it may not read
/// (it mounted, and every listing failed with EACCES; fuse-overlayfs refuses it too) and a
/// workdir holding an entry it may not remove (the message named neither).
#[test]
fn a_plain_user_is_told_what_it_may_not_use() {
    let Some((uid, gid, s)) = user_scratch() else { return };
    let (l1, l2, u, w, m) = (s.path("l1"), s.path("l2"), s.path("u"), s.path("w"), s.path("m"));
    chown_r(s.dir.path(), uid, gid);
    let (ok, out) = sh(s.dir.path(), "chown 0:0 l2 && chmod 0700 l2");
    assert!(ok, "{out}");
    let bin = layerfs_bin();
    let mount = |lowers: &str| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", &uid.to_string(), "--regid", &gid.to_string(), "--clear-groups", "--"]);
        c.arg(&bin)
            .arg("-o")
            .arg(format!("lowerdir={lowers},upperdir={},workdir={}", u.display(), w.display()))
            .arg(&m);
        let o = c.output().unwrap();
        let left = is_mounted(&m).then(|| Mounted { mnt: m.clone(), fuse: true });
        assert!(!o.status.success() && left.is_none(), "mounted with {lowers}");
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        err
    };
    let err = mount(&format!("{}:{}", l1.display(), l2.display()));
    assert!(err.contains("cannot read it: Permission denied") && err.contains("l2"), "{err}");
    let (ok, out) = sh(&w, "mkdir -p work/junk && touch work/junk/f");
    assert!(ok, "{out}");
    let err = mount(&l1.display().to_string());
    assert!(err.contains("cannot empty work: remove junk: Permission denied"), "{err}");
}

/// Set in the copy of the test binary that runs the property test inside the user namespace.
const USERNS_CHILD: &str = "LAYERFS_TEST_USERNS_CHILD";

/// The property test (random operation sequences, descriptors held across steps among them)
/// as root in a user namespace, the way rootless podman runs its mount program: the test user
/// under `unshare -Urm`, layerfs against kernel overlayfs mounted there with `userxattr`, on
/// the two-lower and the 18-lower stacks (whose opaque directory then carries
/// `user.overlay.opaque`). The test starts its own binary again inside the namespace, where
/// this function runs the property; `LAYERFS_PROPTEST_CASES` and `LAYERFS_PROPTEST_SECS` pass
/// through.
#[test]
fn random_op_sequences_match_kernel_in_a_user_namespace() {
    if std::env::var_os(USERNS_CHILD).is_some() {
        assert!(in_user_namespace(), "{USERNS_CHILD} is set outside a user namespace");
        diffkit::prop::run_property("user namespace", &diffkit::prop_stack(), "", 128, 60);
        diffkit::prop::run_property("user namespace, 18 lowers", &diffkit::prop_stack_many(), "", 64, 45);
        return;
    }
    let Some((uid, gid)) = user_with_fuse() else { return };
    if !can_kernel_overlay() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let o = Command::new("setpriv")
        .args(["--reuid", &uid.to_string(), "--regid", &gid.to_string(), "--clear-groups", "--"])
        .args(["unshare", "-Urm"])
        .arg(&exe)
        .args(["--exact", "random_op_sequences_match_kernel_in_a_user_namespace", "--nocapture"])
        .args(["--test-threads=1"])
        .env(USERNS_CHILD, "1")
        .env("HOME", "/tmp")
        .env("TMPDIR", "/tmp")
        .output()
        .unwrap();
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "the property test in the user namespace failed:\n{out}");
    // Both runs happened there (run_property skips where it cannot mount, outside CI).
    for label in ["user namespace: ", "user namespace, 18 lowers: "] {
        let ran = out
            .lines()
            .find_map(|l| l.strip_prefix(label)?.split(' ').next()?.parse::<u32>().ok())
            .unwrap_or(0);
        assert!(ran > 0, "no case of '{label}' ran in the user namespace:\n{out}");
    }
    eprint!("{out}");
}
