//! allow_other with default_permissions (what layerfs mounts with as root): another user reads
//! what the mode bits allow and nothing else, on lower and on upper files alike.
mod common;
use common::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
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
