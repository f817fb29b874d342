//! Smoke test of the harness: mount, read, unmount.
mod common;
use common::*;
use std::fs;

#[test]
fn mounts_reads_and_unmounts() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::write(l.join("a"), b"hello").unwrap();
    {
        let _mnt = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
        assert_eq!(fs::read(m.join("a")).unwrap(), b"hello");
        fs::write(m.join("b"), b"new").unwrap();
    }
    assert!(!is_mounted(&m));
    assert_eq!(fs::read(u.join("b")).unwrap(), b"new");
    assert!(!l.join("b").exists());
}
