//! Interop: layers written by `layerfs diff` unpack with umoci (the Debian
//! `umoci` package) to the same tree. umoci needs an OCI image layout, which
//! the tests build by hand (oci-layout, index.json, manifest and config
//! blobs with their digests and sizes, uncompressed layer blobs).

#[path = "oci_common.rs"]
mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use layerfs::oci::{self, UnpackOptions, WhiteoutMode};

fn umoci() -> PathBuf {
    let found = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("umoci")).find(|c| c.is_file()));
    found.unwrap_or_else(|| panic!("umoci is not on PATH: install it (Debian/Ubuntu: apt-get install -y umoci) to run the interop tests"))
}

fn put_blob(layout: &Path, data: &[u8]) -> (String, usize) {
    let hex = sha256_hex(data);
    fs::write(layout.join("blobs/sha256").join(&hex), data).unwrap();
    (format!("sha256:{hex}"), data.len())
}

/// Writes a minimal OCI image layout with the given uncompressed layers
/// (bottom first), tagged `test`.
fn oci_layout(layout: &Path, layers: &[PathBuf]) {
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let data = fs::read(l).unwrap();
        let (d, n) = put_blob(layout, &data);
        descs.push(format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{n}}}"#
        ));
        diff_ids.push(format!(r#""{d}""#));
    }
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":[{}]}},"history":[]}}"#,
        diff_ids.join(",")
    );
    let (cd, cn) = put_blob(layout, config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{cn}}},"layers":[{}]}}"#,
        descs.join(",")
    );
    let (md, mn) = put_blob(layout, manifest.as_bytes());
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}","size":{mn},"annotations":{{"org.opencontainers.image.ref.name":"test"}}}}]}}"#
    );
    fs::write(layout.join("index.json"), index).unwrap();
}

/// `umoci raw unpack` of the layers into a new rootfs.
fn umoci_unpack(work: &Path, layers: &[PathBuf]) -> PathBuf {
    let layout = work.join("image");
    oci_layout(&layout, layers);
    let rootfs = work.join("rootfs");
    let mut cmd = Command::new(umoci());
    cmd.args(["raw", "unpack"]);
    if layerfs_is_unprivileged() {
        cmd.arg("--rootless");
    }
    let out = cmd
        .arg("--image")
        .arg(format!("{}:test", layout.display()))
        .arg(&rootfs)
        .output()
        .expect("run umoci");
    assert!(
        out.status.success(),
        "umoci raw unpack failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    rootfs
}

fn layerfs_is_unprivileged() -> bool {
    // umoci wants --rootless when not root.
    fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) != 0).unwrap_or(true)
}

fn diff_of(dir: &Path, out: &Path) -> PathBuf {
    oci::export_to_file(dir, out).unwrap_or_else(|e| panic!("diff {}: {e}", dir.display()));
    out.to_path_buf()
}

#[test]
fn umoci_unpacks_the_diff_of_a_flattened_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let (expected, tars) = CHAINS[0];
    let flat = tmp.path().join("flat");
    let paths: Vec<PathBuf> = tars.iter().map(|t| fixture(t)).collect();
    oci::unpack(
        &paths,
        &flat,
        &UnpackOptions { whiteouts: WhiteoutMode::Auto, flatten: true, diff_ids: true },
    )
    .unwrap();
    let layer = diff_of(&flat, &tmp.path().join("flat.tar"));
    let rootfs = umoci_unpack(tmp.path(), &[layer]);
    assert_same_listing(&listing(&rootfs), &read_expected(expected), "umoci unpack of our flattened diff");
}

#[test]
fn umoci_applies_our_whiteouts_and_opaque_markers() {
    // Chain A with each upper layer re-exported by `diff` from a chardev-form
    // unpack, chain B from a wh-form unpack: umoci must build the expected trees.
    for (ci, form) in [(0usize, WhiteoutMode::Chardev), (1, WhiteoutMode::Wh), (4, WhiteoutMode::Chardev)] {
        let tmp = tempfile::tempdir().unwrap();
        let (expected, tars) = CHAINS[ci];
        let mut layers = vec![fixture(tars[0])];
        for (i, t) in tars[1..].iter().enumerate() {
            let d = tmp.path().join(format!("l{i}"));
            oci::unpack(
                &[fixture(t)],
                &d,
                &UnpackOptions { whiteouts: form, flatten: false, diff_ids: true },
            )
            .unwrap();
            layers.push(diff_of(&d, &tmp.path().join(format!("l{i}.tar"))));
        }
        let rootfs = umoci_unpack(tmp.path(), &layers);
        assert_same_listing(
            &listing(&rootfs),
            &read_expected(expected),
            &format!("{expected} via umoci ({form:?})"),
        );
        // And our own flatten of the re-exported layers agrees.
        let flat = tmp.path().join("flat");
        oci::unpack(
            &layers,
            &flat,
            &UnpackOptions { whiteouts: WhiteoutMode::Auto, flatten: true, diff_ids: true },
        )
        .unwrap();
        assert_same_listing(
            &listing(&flat),
            &read_expected(expected),
            &format!("{expected} flattened re-exports"),
        );
    }
}

/// An upper directory with the awkward cases.
fn rich_upper(u: &Path) {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let set = |p: &Path, mode: u32| fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    fs::create_dir_all(u.join("bin")).unwrap();
    fs::write(u.join("bin/suid"), b"#!/bin/sh\n").unwrap();
    set(&u.join("bin/suid"), 0o4755);
    fs::create_dir(u.join("tmp")).unwrap();
    set(&u.join("tmp"), 0o1777);
    fs::create_dir(u.join("shared")).unwrap();
    set(&u.join("shared"), 0o2775);
    fs::write(u.join("owned"), b"owned by 1000\n").unwrap();
    std::os::unix::fs::chown(u.join("owned"), Some(1000), Some(1001)).unwrap();
    fs::write(u.join("empty"), b"").unwrap();
    let big: Vec<u8> = (0..(1 << 20) + 3).map(|i: u32| (i % 253) as u8).collect();
    fs::write(u.join("big"), &big).unwrap();
    fs::hard_link(u.join("big"), u.join("big-link1")).unwrap();
    fs::hard_link(u.join("big"), u.join("bin/big-link2")).unwrap();
    symlink("../big", u.join("bin/rel-link")).unwrap();
    symlink("/etc/passwd", u.join("abs-link")).unwrap();
    let long_dir = u.join("d".repeat(90)).join("e".repeat(90));
    fs::create_dir_all(&long_dir).unwrap();
    fs::write(long_dir.join("f".repeat(120)), b"long\n").unwrap();
    symlink("t".repeat(150), u.join("long-target-link")).unwrap();
    fs::write(u.join("ünïcødé名前"), b"utf8\n").unwrap();
    oci::set_xattr_nofollow(&u.join("owned"), "user.test", b"value").unwrap();
    oci::set_xattr_nofollow(&u.join("shared"), "user.dirattr", b"d").unwrap();
    let st = Command::new("mkfifo").arg(u.join("fifo")).status().unwrap();
    assert!(st.success());
    if !layerfs_is_unprivileged() {
        let st = Command::new("mknod").arg(u.join("null")).args(["c", "1", "3"]).status().unwrap();
        assert!(st.success());
    }
    // Fixed mtimes so both trees can be compared exactly.
    let st = Command::new("find")
        .arg(u)
        .args(["-exec", "touch", "-h", "-d", "@1700000000", "{}", "+"])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn umoci_and_layerfs_agree_on_a_rich_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let upper = tmp.path().join("upper");
    fs::create_dir(&upper).unwrap();
    fs::set_permissions(&upper, fs::Permissions::from_mode(0o755)).unwrap();
    rich_upper(&upper);
    let layer = diff_of(&upper, &tmp.path().join("rich.tar"));
    let ours = tmp.path().join("ours");
    oci::unpack(std::slice::from_ref(&layer), &ours, &UnpackOptions::default()).unwrap();
    assert_same_snapshot(&snapshot(&ours), &snapshot(&upper), "layerfs unpack of the diff vs the upper dir");
    let rootfs = umoci_unpack(tmp.path(), &[layer]);
    // umoci resets the mtimes of the directories it writes into after the
    // fact; compare everything else, and mtimes of non-directories.
    let strip_dir_mtime = |m: std::collections::BTreeMap<String, String>| {
        m.into_iter()
            .map(|(k, v)| {
                if v.starts_with("dir ") {
                    let parts: Vec<&str> = v.split(' ').filter(|w| !w.starts_with("mtime=")).collect();
                    (k, parts.join(" "))
                } else {
                    (k, v)
                }
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    assert_same_snapshot(
        &strip_dir_mtime(snapshot(&rootfs)),
        &strip_dir_mtime(snapshot(&ours)),
        "umoci vs layerfs",
    );
}
