//! End to end: layer tars → the store → a layerfs mount of the chain → changes → `store
//! commit` of the upper → a mount of the new top layer shows the changes.
mod common;
use common::*;
use std::fs;
use std::process::Command;

fn layerfs(args: &[&str]) -> String {
    let o = Command::new(layerfs_bin()).args(args).output().unwrap();
    assert!(o.status.success(), "layerfs {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn store_import_mount_commit_roundtrip() {
    if !can_mount() {
        return;
    }
    let shared = shared_layers();
    let s = Scratch::new();
    let root = s.path("store");
    let r = root.to_str().unwrap();
    let tars: Vec<String> = ["00-base-busybox", "native-1-add", "native-2-delete-opaque"]
        .iter()
        .map(|t| shared.join(format!("{t}.tar")).to_string_lossy().to_string())
        .collect();
    let mut args = vec!["store", "--root", r, "import"];
    args.extend(tars.iter().map(String::as_str));
    let top = layerfs(&args);
    let top = top.lines().last().unwrap().trim().to_string();
    assert!(top.starts_with("sha256:"), "{top}");

    let (u, w, m) = (s.path("u"), s.path("w"), s.path("m"));
    layerfs(&[
        "store",
        "--root",
        r,
        "mount",
        &top,
        m.to_str().unwrap(),
        "--upper",
        u.to_str().unwrap(),
        "--work",
        w.to_str().unwrap(),
    ]);
    let mut g = Mounted { mnt: m.clone(), fuse: true };
    let want = fs::read_to_string(shared.join("expected/native-chain.txt")).unwrap();
    assert_eq!(expected_listing(&m), want, "store mount of the native chain");
    fs::write(m.join("etc/new-file"), b"hello\n").unwrap();
    fs::remove_file(m.join("etc/passwd")).unwrap();
    g.unmount();

    let committed = layerfs(&["store", "--root", r, "commit", u.to_str().unwrap(), "--parent", &top]);
    let committed = committed.lines().last().unwrap().trim().to_string();
    assert!(committed.starts_with("sha256:") && committed != top, "{committed}");
    let m2 = s.path("m2");
    layerfs(&["store", "--root", r, "mount", &committed, m2.to_str().unwrap()]);
    let _g2 = Mounted { mnt: m2.clone(), fuse: true };
    assert_eq!(fs::read(m2.join("etc/new-file")).unwrap(), b"hello\n");
    assert!(fs::symlink_metadata(m2.join("etc/passwd")).is_err(), "deletion carried into the layer");
    assert!(m2.join("bin/busybox").exists());
    // The base layer is shared, not stored twice, and cannot be removed while used.
    let ls = layerfs(&["store", "--root", r, "ls"]);
    assert_eq!(ls.lines().count(), 4, "{ls}");
    let base = ls
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("-"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let o = Command::new(layerfs_bin()).args(["store", "--root", r, "rm", &base]).output().unwrap();
    assert!(!o.status.success());
}
