//! Shared helpers for the `oci_*` integration tests (included with
//! `#[path = "oci_common.rs"] mod common;`). Built alone it has no tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// The fixture directory; panics (fails the test) when it is missing.
pub fn fixtures() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/layers");
    assert!(
        p.join("README.md").is_file(),
        "test fixtures not found at {} (expected ../shared/testdata/layers relative to the repo{})",
        p.display(),
        if std::env::var_os("CI").is_some() { "; CI is set, so this is a hard failure" } else { "" }
    );
    p
}

pub fn fixture(name: &str) -> PathBuf {
    let p = fixtures().join(name);
    assert!(p.is_file(), "missing fixture {}", p.display());
    p
}

/// (tar file, DiffID) as listed in the fixtures' README.
pub const DIFF_IDS: &[(&str, &str)] = &[
    ("00-base-busybox.tar", "b9faacf55b51ef7b52e6d50be8fb4fdb67ebc194266a809b31ae8efa1fba24e9"),
    ("native-1-add.tar", "bb2dfc9a6da195dd1b08bbd28cdfafa5f26cb8f93bde32af8f664f76b3969dd8"),
    ("native-2-delete-opaque.tar", "41266a7cfffb6517e0b2b0e64f9845f2e4d06c53782964802aa4a45ca96a1c70"),
    ("fuse-1-add.tar", "a6a42ce383c48c21f665d14ef0647d710badba8198b32cb12384b38be396c6b5"),
    ("fuse-2-delete.tar", "393d213a1839ac92bf9a6d5f5a2b33c988eb5c9333242715d0ca9567241e6629"),
    ("fuse-3-rmdir.tar", "90c1752e805eb36d4024fef68b30e1865a9f2c242d49712bff80608aaae797ac"),
    ("fuse-4-empty.tar", "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"),
    ("fuse-bug-2-lost-deletions.tar", "47c23a618d29022b57aba48fb7fd8e1da58eedad447e20c16c008e2eedb03175"),
    ("buildah-commit-1.tar", "bbe689ac2aa4e1e5992c8a5da623c3d4afc62df425d8442f3a8b77740ca49ea7"),
    ("umoci-repack-3.tar", "f6a7bf378fa53e7ff2fcae124c88f8c266f6a7bb3b7fd23ec13b67820e31c9b7"),
];

pub fn diff_id_of(tar: &str) -> String {
    let (_, d) = DIFF_IDS.iter().find(|(n, _)| *n == tar).unwrap_or_else(|| panic!("no DiffID for {tar}"));
    format!("sha256:{d}")
}

/// (expected listing, chain of tars bottom first), per the README.
pub const CHAINS: &[(&str, &[&str])] = &[
    ("native-chain.txt", &["00-base-busybox.tar", "native-1-add.tar", "native-2-delete-opaque.tar"]),
    (
        "fuse-chain.txt",
        &[
            "00-base-busybox.tar",
            "fuse-1-add.tar",
            "fuse-2-delete.tar",
            "fuse-3-rmdir.tar",
            "fuse-4-empty.tar",
        ],
    ),
    ("fuse-bug-chain.txt", &["00-base-busybox.tar", "fuse-1-add.tar", "fuse-bug-2-lost-deletions.tar"]),
    ("buildah-chain.txt", &["00-base-busybox.tar", "buildah-commit-1.tar"]),
    (
        "umoci-chain.txt",
        &["00-base-busybox.tar", "native-1-add.tar", "native-2-delete-opaque.tar", "umoci-repack-3.tar"],
    ),
];

pub fn sha256_hex(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_file(p: &Path) -> String {
    let mut f = fs::File::open(p).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Walks `root` (not following symlinks) and returns (relative path, metadata)
/// for everything except the root, sorted bytewise by path.
pub fn walk(root: &Path) -> Vec<(Vec<u8>, fs::Metadata)> {
    fn rec(root: &Path, rel: &Path, out: &mut Vec<(Vec<u8>, fs::Metadata)>) {
        let dir = root.join(rel);
        for ent in fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            let ent = ent.unwrap();
            let r = rel.join(ent.file_name());
            let md = fs::symlink_metadata(root.join(&r)).unwrap();
            out.push((r.as_os_str().as_bytes().to_vec(), md.clone()));
            if md.is_dir() {
                rec(root, &r, out);
            }
        }
    }
    let mut out = Vec::new();
    rec(root, Path::new(""), &mut out);
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The README's `expected/*.txt` format for a tree.
pub fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for (rel, md) in walk(root) {
        let p = String::from_utf8_lossy(&rel).into_owned();
        let mode = md.mode() & 0o7777;
        let own = format!("{}:{}", md.uid(), md.gid());
        let ft = md.file_type();
        if ft.is_dir() {
            out.push(format!("d {mode:04o} {own} {p}"));
        } else if ft.is_symlink() {
            let t = fs::read_link(root.join(OsStr::from_bytes(&rel))).unwrap();
            out.push(format!("l {mode:04o} {own} {p} -> {}", t.display()));
        } else if ft.is_file() {
            let sha = sha256_file(&root.join(OsStr::from_bytes(&rel)));
            out.push(format!(
                "f {mode:04o} {own} {p} size={} nlink={} sha256={}",
                md.len(),
                md.nlink(),
                &sha[..16]
            ));
        } else {
            out.push(format!("? {mode:04o} {own} {p} rdev={}", md.rdev()));
        }
    }
    out
}

pub fn read_expected(name: &str) -> Vec<String> {
    let p = fixtures().join("expected").join(name);
    let s = fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    s.lines().filter(|l| !l.trim().is_empty()).map(|l| l.to_string()).collect()
}

/// Compares two listings as sets of lines, with a readable diff on failure.
pub fn assert_same_listing(got: &[String], want: &[String], what: &str) {
    let mut g = got.to_vec();
    let mut w = want.to_vec();
    g.sort();
    w.sort();
    if g != w {
        let gs: std::collections::BTreeSet<_> = g.iter().collect();
        let ws: std::collections::BTreeSet<_> = w.iter().collect();
        let extra: Vec<_> = gs.difference(&ws).collect();
        let missing: Vec<_> = ws.difference(&gs).collect();
        panic!("{what}: trees differ\n  unexpected: {extra:#?}\n  missing: {missing:#?}");
    }
}

/// A complete description of a tree for round-trip comparisons: type, mode,
/// owner, mtime (seconds), content hash, link target, device numbers,
/// hard-link groups and all xattrs. The root itself is left out.
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut first_of_inode: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (rel, md) in walk(root) {
        let p = String::from_utf8_lossy(&rel).into_owned();
        let full = root.join(OsStr::from_bytes(&rel));
        let ft = md.file_type();
        let mut d = format!("{:04o} {}:{} mtime={}", md.mode() & 0o7777, md.uid(), md.gid(), md.mtime());
        if ft.is_dir() {
            d = format!("dir {d}");
        } else if ft.is_symlink() {
            d = format!(
                "symlink {}:{} mtime={} -> {}",
                md.uid(),
                md.gid(),
                md.mtime(),
                fs::read_link(&full).unwrap().display()
            );
        } else if ft.is_file() {
            d = format!("file {d} size={} sha={}", md.len(), &sha256_file(&full)[..16]);
        } else if ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_char_device() { "char" } else { "block" };
            d = format!("{kind} {d} rdev={}:{}", libc::major(md.rdev()), libc::minor(md.rdev()));
        } else if ft.is_fifo() {
            d = format!("fifo {d}");
        } else {
            d = format!("other {d}");
        }
        if !ft.is_dir() && md.nlink() > 1 {
            let first = first_of_inode.entry((md.dev(), md.ino())).or_insert_with(|| p.clone()).clone();
            d.push_str(&format!(" nlink={} group={first}", md.nlink()));
        }
        for (k, v) in layerfs::oci::xattrs_nofollow(&full).unwrap() {
            if k.starts_with(b"security.selinux") {
                continue;
            }
            d.push_str(&format!(" xattr:{}={}", String::from_utf8_lossy(&k), String::from_utf8_lossy(&v)));
        }
        out.insert(p, d);
    }
    out
}

pub fn assert_same_snapshot(got: &BTreeMap<String, String>, want: &BTreeMap<String, String>, what: &str) {
    if got != want {
        let mut msgs = Vec::new();
        for (k, v) in want {
            match got.get(k) {
                None => msgs.push(format!("missing {k}: {v}")),
                Some(g) if g != v => msgs.push(format!("differs {k}:\n     want {v}\n     got  {g}")),
                _ => {}
            }
        }
        for (k, v) in got {
            if !want.contains_key(k) {
                msgs.push(format!("unexpected {k}: {v}"));
            }
        }
        panic!("{what}: trees differ:\n  {}", msgs.join("\n  "));
    }
}

/// The layerfs binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_layerfs"))
}

/// Runs `layerfs ARGS...`; returns (exit code, stdout, stderr).
pub fn run<I, S>(args: I) -> (i32, Vec<u8>, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = Command::new(bin()).args(args).output().expect("run layerfs");
    (out.status.code().unwrap_or(-1), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs `layerfs ARGS...` and asserts success; returns stdout.
pub fn run_ok<I, S>(args: I) -> Vec<u8>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "layerfs {args:?} failed: {err}");
    out
}

pub fn s(p: &Path) -> &OsStr {
    p.as_os_str()
}
