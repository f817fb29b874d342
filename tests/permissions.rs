//! allow_other with default_permissions (what layerfs mounts with as root): another user reads
//! what the mode bits allow and nothing else, on lower and on upper files alike.
mod common;
use common::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

const USER: &str = "layerfs-perm";

fn user() -> Option<(u32, u32)> {
    if fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1) != 0 {
        assert!(!must_mount(), "needs root to create its user");
        return None;
    }
    let id = |f: &str| Command::new("id").args([f, USER]).output().ok().filter(|o| o.status.success());
    if id("-u").is_none() {
        let _ = Command::new("useradd").args(["--system", "--no-create-home", USER]).status();
    }
    let p = |o: std::process::Output| String::from_utf8_lossy(&o.stdout).trim().parse::<u32>().unwrap();
    Some((p(id("-u")?), p(id("-g")?)))
}

fn as_user(uid: u32, gid: u32, args: &[&str]) -> bool {
    Command::new("setpriv")
        .args(["--reuid", &uid.to_string(), "--regid", &gid.to_string(), "--clear-groups", "--"])
        .args(args)
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn other_users_get_what_mode_bits_allow() {
    if !can_mount() {
        return;
    }
    let Some((uid, gid)) = user() else { return };
    let s = Scratch::new();
    fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::write(l.join("secret"), b"s").unwrap();
    fs::set_permissions(l.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(l.join("public"), b"p").unwrap();
    fs::set_permissions(l.join("public"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::create_dir(l.join("closed")).unwrap();
    fs::write(l.join("closed/inner"), b"i").unwrap();
    fs::set_permissions(l.join("closed"), fs::Permissions::from_mode(0o700)).unwrap();
    let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
    fs::write(m.join("upper-secret"), b"u").unwrap();
    fs::set_permissions(m.join("upper-secret"), fs::Permissions::from_mode(0o600)).unwrap();
    let p = |n: &str| m.join(n).to_string_lossy().to_string();
    assert!(as_user(uid, gid, &["cat", &p("public")]), "world-readable file must be readable");
    assert!(!as_user(uid, gid, &["cat", &p("secret")]), "0600 lower file readable by another user");
    assert!(!as_user(uid, gid, &["cat", &p("upper-secret")]), "0600 upper file readable by another user");
    assert!(!as_user(uid, gid, &["cat", &p("closed/inner")]), "file in a 0700 dir readable by another user");
    assert!(
        !as_user(uid, gid, &["sh", "-c", &format!("echo x >> {}", p("public"))]),
        "0644 file writable by another user"
    );
    assert!(!as_user(uid, gid, &["touch", &p("newfile")]), "root-owned 0755 dir writable by another user");
    assert_eq!(fs::read(l.join("public")).unwrap(), b"p");
}

/// `trusted.*` xattrs are listed only to callers with CAP_SYS_ADMIN, as a local filesystem and
/// kernel overlayfs list them (layerfs listed them to everyone; a `getxattr` of one then
/// failed with ENODATA, and `getfattr -d` printed "No such attribute").
#[test]
fn trusted_xattrs_are_listed_to_admins_only_as_on_kernel_overlayfs() {
    if !can_mount() || !can_kernel_overlay() {
        return;
    }
    let Some((uid, gid)) = user() else { return };
    let s = Scratch::new();
    fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let l = s.path("l");
    fs::write(l.join("f"), b"f").unwrap();
    set_xattr(&l.join("f"), "trusted.t", b"t");
    set_xattr(&l.join("f"), "user.a", b"a");
    let list = |p: &Path, as_other: bool| -> String {
        let script = "import os, sys; print(' '.join(sorted(os.listxattr(sys.argv[1]))))";
        let mut c = Command::new("setpriv");
        if as_other {
            c.args(["--reuid", &uid.to_string(), "--regid", &gid.to_string(), "--clear-groups"]);
        }
        // The system's python3 (scripts/deps.sh installs it): one first on PATH may be in a
        // directory the other user cannot enter.
        let py = if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
        let out = c.args(["--", py, "-c", script]).arg(p).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let run = |tag: &str, kernel: bool| -> Vec<String> {
        let (u, w, m) =
            (s.path(&format!("{tag}-u")), s.path(&format!("{tag}-w")), s.path(&format!("{tag}-m")));
        for d in [&u, &w, &m] {
            fs::create_dir_all(d).unwrap();
        }
        let _g = if kernel {
            mount_overlay(std::slice::from_ref(&l), Some((&u, &w)), &m)
        } else {
            mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "")
        };
        fs::write(m.join("g"), b"g").unwrap();
        set_xattr(&m.join("g"), "trusted.r", b"r");
        let mut out = Vec::new();
        for name in ["f", "g"] {
            out.push(list(&m.join(name), false));
            out.push(list(&m.join(name), true));
        }
        out
    };
    let k = run("kernel", true);
    assert_eq!(k, ["trusted.t user.a", "user.a", "trusted.r", ""]);
    assert_eq!(run("layerfs", false), k);
}
