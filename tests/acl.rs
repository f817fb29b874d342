//! POSIX ACLs: negotiated with the kernel (FUSE_POSIX_ACL) unless `noacl`, off when a layer's
//! filesystem has none. setfacl/getfacl sequences run on kernel overlayfs and on layerfs must
//! give the same output, the same enforcement and the same upper directory.
mod common;
mod diffkit;

use common::*;
use diffkit::*;
use std::fs;
use std::process::Command;

fn stack() -> Stack {
    Stack::new(vec![
        Layer::new()
            .file("f_low", "lower\n")
            .file("f_other", "other\n")
            .dir("d_low")
            .file("d_low/a", "a\n")
            .file("d_low/b/c", "c\n")
            .dir("d_plain"),
    ])
}

/// A user and a non-user of the ACL, as seen by the kernel's permission check.
const ENFORCE: &str = "setpriv --reuid 1234 --regid 1234 --clear-groups sh -c 'echo u1234 >> f_low' && echo ok-1234; \
     setpriv --reuid 1235 --regid 1235 --clear-groups sh -c 'echo u1235 >> f_low' 2>/dev/null || echo denied-1235";

#[test]
fn setfacl_on_lower_file_copies_up_and_is_enforced() {
    if !available() {
        return;
    }
    let log = run_both(&stack(), |c| {
        c.sh("getfacl -n f_low", false);
        c.sh(ENFORCE, false);
        c.sh("setfacl -m u:1234:rw f_low", false);
        c.sh("getfacl -n f_low; stat -c '%A %U' f_low", false);
        c.sh("getfacl -n f_low", true);
        c.sh(ENFORCE, false);
        c.sh("cat f_low", false);
        // chmod changes the mask; setfacl -x and -b take entries away again.
        c.sh("chmod 640 f_low && getfacl -n f_low", false);
        c.sh("setfacl -m g:77:r,o::- f_other && getfacl -n f_other", false);
        c.sh("setfacl -x g:77 f_other && getfacl -n f_other", false);
        c.sh("setfacl -b f_low && getfacl -n f_low && stat -c %A f_low", false);
        c.sh("getfacl -n f_low f_other", true);
        c.remount();
        c.sh("getfacl -n f_low f_other", false);
    });
    let all: String = log.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>().join("\n");
    eprintln!("{all}");
    // What both sides agreed on is what ACLs do (not two identical failures).
    assert!(all.contains("user:1234:rw-\ngroup::r--\nmask::rw-"), "{all}");
    assert!(all.contains("ok-1234\ndenied-1235"), "{all}");
    assert!(all.contains("-rw-rw-r-- root"), "{all}");
}

#[test]
fn default_acls_are_inherited() {
    if !available() {
        return;
    }
    let log = run_both(&stack(), |c| {
        c.sh("setfacl -d -m u:1234:rwx,g::rx,o::- d_low && getfacl -n d_low", false);
        // New objects in a directory with a default ACL: the umask does not apply.
        c.sh("umask 077; touch d_low/new && mkdir d_low/nd && getfacl -n d_low/new d_low/nd", false);
        c.sh("umask 022; mkdir -m 0751 d_low/nd2 && getfacl -n d_low/nd2", false);
        // Over a whiteout (the object is made beside the upper directory, then moved in).
        c.sh("rm d_low/a && umask 077 && echo again > d_low/a && getfacl -n d_low/a", false);
        c.sh("rm -r d_low/b && umask 077 && mkdir d_low/b && getfacl -n d_low/b && ls -A d_low/b", false);
        c.sh("getfacl -n d_low/new d_low/nd d_low/a d_low/b", true);
        // Without a default ACL the umask applies as usual.
        c.sh("umask 027; touch d_plain/x && mkdir d_plain/y && stat -c '%a %n' d_plain/x d_plain/y", false);
        c.sh(
            "umask 0; touch d_plain/z && mkdir -m 0777 d_plain/w && stat -c '%a %n' d_plain/z d_plain/w",
            false,
        );
        // A directory made through the mount and created in (the server remembers it has no
        // default ACL), then given one, which new objects take, and then losing it again.
        c.sh(
            "umask 022; mkdir d_plain/m && touch d_plain/m/before && mkdir d_plain/m/sub0 \
             && setfacl -d -m u:1234:rwx,g::rx,o::- d_plain/m && umask 077 && touch d_plain/m/after \
             && mkdir d_plain/m/sub && touch d_plain/m/sub/deep && touch d_plain/m/sub0/plain \
             && setfacl -k d_plain/m && touch d_plain/m/gone \
             && stat -c '%a %n' d_plain/m/before d_plain/m/after d_plain/m/sub d_plain/m/sub/deep \
                d_plain/m/sub0/plain d_plain/m/gone && getfacl -n d_plain/m/after d_plain/m/sub/deep",
            false,
        );
        c.sh(
            "setpriv --reuid 1234 --regid 1234 --clear-groups sh -c 'echo hi > d_low/nd/by1234' && echo ok",
            false,
        );
        c.sh("setpriv --reuid 1235 --regid 1235 --clear-groups sh -c 'echo hi > d_low/nd/by1235' || echo denied", false);
        // A setuid/setgid mode asked for by a caller other than the server: the bits are put
        // back after the owner is set, on the permissions the default ACL gave (not the
        // mode's group and other bits).
        c.sh(
            "chmod 777 d_low && setpriv --reuid 1234 --regid 1234 --clear-groups /usr/bin/python3 -c \
             \"import os; [os.close(os.open('d_low/' + n, os.O_CREAT | os.O_WRONLY, m)) for n, m in (('s2775', 0o2775), ('s4755', 0o4755))]\" \
             && stat -c '%A %n' d_low/s2775 d_low/s4755 && getfacl -n d_low/s2775",
            false,
        );
    });
    let all: String = log.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>().join("\n");
    eprintln!("{all}");
    assert!(all.contains("# file: d_low/b\n# owner: 0\n# group: 0\nuser::rwx\nuser:1234:rwx"), "{all}");
    assert!(all.contains("640 d_plain/x\n750 d_plain/y"), "{all}");
    assert!(all.contains("666 d_plain/z\n777 d_plain/w"), "{all}");
    assert!(all.contains("-> 0\nok\n"), "{all}");
    assert!(all.contains("denied"), "{all}");
    assert!(all.contains("-rwxrws--- d_low/s2775\n-rwsr-x--- d_low/s4755"), "{all}");
    assert!(
        all.contains("644 d_plain/m/before\n660 d_plain/m/after\n770 d_plain/m/sub\n660 d_plain/m/sub/deep\n600 d_plain/m/sub0/plain\n600 d_plain/m/gone"),
        "{all}"
    );
}

#[test]
fn noacl_refuses_acls_like_a_filesystem_without_them() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::write(l.join("f"), b"f").unwrap();
    // A lower file that carries an ACL already.
    let (ok, out) = sh(&l, "setfacl -m u:1234:r f && chmod 644 f");
    assert!(ok, "{out}");
    let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "noacl");
    let (ok, out) = sh(&m, "setfacl -m u:1234:rw f");
    assert!(!ok && out.contains("Operation not supported"), "{out}");
    let (ok, out) = sh(&m, "getfacl -n f");
    assert!(ok && !out.contains("user:1234"), "ACL entries shown with noacl: {out}");
    let (ok, out) = sh(&m, "getfattr -d -m - f");
    assert!(ok && !out.contains("posix_acl"), "{out}");
    let (ok, out) = sh(&m, "mkdir d && setfacl -d -m u:1234:rwx d");
    assert!(!ok && out.contains("Operation not supported"), "{out}");
    // Normal modes and umask still work.
    let (ok, out) = sh(&m, "umask 027 && touch g && stat -c %a g");
    assert!(ok && out.trim() == "640", "{out}");
    assert!(!u.join("f").exists(), "a refused setfacl must not copy up");
}

#[test]
fn acls_off_when_a_layer_lacks_them() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    // The lower lives on a filesystem without ACLs: a layerfs mount with noacl.
    let (il, iu, iw, im) = (s.path("il"), s.path("iu"), s.path("iw"), s.path("im"));
    fs::create_dir_all(il.join("x")).unwrap();
    fs::write(il.join("x/f"), b"f").unwrap();
    let _inner = mount_layerfs(std::slice::from_ref(&il), Some((&iu, &iw)), &im, "noacl");
    let (u, w, m) = (s.path("u"), s.path("w"), s.path("m"));
    let mut o =
        format!("lowerdir={},upperdir={},workdir={}", im.join("x").display(), u.display(), w.display());
    o.push_str(",fsync=1");
    let out = Command::new(layerfs_bin()).arg("-o").arg(&o).arg(&m).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _g = Mounted { mnt: m.clone(), fuse: true };
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("POSIX ACLs off") && err.contains(&im.join("x").display().to_string()), "{err}");
    let (ok, out) = sh(&m, "setfacl -m u:1234:rw f");
    assert!(!ok && out.contains("Operation not supported"), "{out}");
    // The same layers without the ACL-less one: ACLs on.
    drop(_g);
    let l2 = s.path("l2");
    fs::write(l2.join("f"), b"f").unwrap();
    let (u2, w2, m2) = (s.path("u2"), s.path("w2"), s.path("m2"));
    let _g2 = mount_layerfs(&[l2], Some((&u2, &w2)), &m2, "");
    let (ok, out) = sh(&m2, "setfacl -m u:1234:rw f && getfacl -n f");
    assert!(ok && out.contains("user:1234:rw-"), "{out}");
}

/// A default ACL on WORKDIR, which `WORKDIR/work` inherits, must reach no copy-up made there:
/// kernel overlayfs removes the work directory's ACLs at mount, and layerfs does too. (It gave
/// every copied-up file and directory that ACL, and a copied-up directory's new files the
/// mode its default entries asked for, not the umask's.)
#[test]
fn a_default_acl_on_workdir_reaches_no_copy() {
    if !available() {
        return;
    }
    let s = Scratch::new();
    let mut out = Vec::new();
    for (side, layerfs) in [("k", false), ("f", true)] {
        let base = s.path(side);
        let (l, u, w, m) = (base.join("l"), base.join("u"), base.join("w"), base.join("m"));
        for d in [&l, &u, &w, &m] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(l.join("f"), "x\n").unwrap();
        fs::create_dir(l.join("d")).unwrap();
        let (ok, o) = sh(&w, "setfacl -d -m u:1234:rwx . && getfacl -n . | grep -c 1234");
        assert!(ok && o.trim() == "1", "{o}");
        let mut mnt = if layerfs {
            mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "")
        } else {
            mount_overlay(std::slice::from_ref(&l), Some((&u, &w)), &m)
        };
        let (ok, o) = sh(
            &m,
            "umask 022; chmod 640 f && touch d/new && getfacl -n f d d/new && stat -c '%a %n' f d d/new",
        );
        mnt.unmount();
        assert!(ok, "{o}");
        out.push(o);
    }
    eprintln!("{}", out[1]);
    assert_eq!(out[0], out[1]);
    assert!(!out[1].contains("1234") && out[1].contains("640 f\n755 d\n644 d/new"), "{}", out[1]);
}
