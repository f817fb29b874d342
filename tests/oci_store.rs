//! `layerfs store`: import with sharing, ls, rm with dependency checks,
//! commit of an upper dir, and the lowerdir list / mount options.

#[path = "oci_common.rs"]
mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use layerfs::oci::{self, store};

fn hex(d: &str) -> &str {
    d.strip_prefix("sha256:").unwrap()
}

fn import(root: &Path, tars: &[&str]) -> String {
    let mut args: Vec<std::ffi::OsString> =
        vec!["store".into(), "--root".into(), root.into(), "import".into()];
    args.extend(tars.iter().map(|t| fixture(t).into_os_string()));
    String::from_utf8(run_ok(&args)).unwrap().trim().to_string()
}

fn ls(root: &Path) -> Vec<Vec<String>> {
    let out =
        String::from_utf8(run_ok(["store".as_ref(), "--root".as_ref(), s(root), "ls".as_ref()])).unwrap();
    out.lines().map(|l| l.split(' ').map(|w| w.to_string()).collect()).collect()
}

fn chain_of(tars: &[&str]) -> Vec<String> {
    let ids: Vec<String> = tars.iter().map(|t| diff_id_of(t)).collect();
    oci::chain_ids(&ids)
}

#[test]
fn import_shares_layers_and_lays_out_like_layerdb() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let (_, native) = CHAINS[0];
    let (_, buildah) = CHAINS[3];
    let top = import(&root, native);
    let chain = chain_of(native);
    assert_eq!(&top, chain.last().unwrap());

    // layerdb files.
    for (i, c) in chain.iter().enumerate() {
        let d = root.join("layerdb/sha256").join(hex(c));
        assert_eq!(fs::read_to_string(d.join("diff")).unwrap(), diff_id_of(native[i]));
        let cache = fs::read_to_string(d.join("cache-id")).unwrap();
        assert_eq!(cache.len(), 64);
        assert!(cache.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(root.join("layers").join(&cache).is_dir());
        let size: u64 = fs::read_to_string(d.join("size")).unwrap().parse().unwrap();
        if i == 0 {
            assert!(size > 1_982_256, "base size {size}");
            assert!(!d.join("parent").exists());
        } else {
            assert_eq!(fs::read_to_string(d.join("parent")).unwrap(), chain[i - 1]);
        }
    }

    // Importing another chain on the same base stores the base once.
    let top2 = import(&root, buildah);
    assert_eq!(&top2, chain_of(buildah).last().unwrap());
    assert_eq!(fs::read_dir(root.join("layerdb/sha256")).unwrap().count(), 4);
    assert_eq!(fs::read_dir(root.join("layers")).unwrap().count(), 4);
    // Re-importing is a no-op.
    assert_eq!(import(&root, native), top);
    assert_eq!(fs::read_dir(root.join("layers")).unwrap().count(), 4);
    assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0, "staging left behind");

    // ls: chainid diffid parent size.
    let rows = ls(&root);
    assert_eq!(rows.len(), 4);
    for r in &rows {
        assert_eq!(r.len(), 4, "{r:?}");
        let d = root.join("layerdb/sha256").join(hex(&r[0]));
        assert_eq!(r[1], fs::read_to_string(d.join("diff")).unwrap());
        assert_eq!(r[2], fs::read_to_string(d.join("parent")).unwrap_or_else(|_| "-".into()));
        assert_eq!(r[3], fs::read_to_string(d.join("size")).unwrap());
    }

    // Layer content is the layer unpacked on its own (whiteouts included).
    let info = store::Store::open(&root).unwrap().get(&chain[2]).unwrap();
    let content = root.join("layers").join(&info.cache_id);
    let solo = tmp.path().join("solo");
    oci::unpack(&[fixture(native[2])], &solo, &oci::UnpackOptions::default()).unwrap();
    assert_same_snapshot(&snapshot(&content), &snapshot(&solo), "stored layer");

    // lowerdirs: top first, each the layer's cache dir.
    let lowers = oci::lowerdirs_for(&root, &top).unwrap();
    let want: Vec<PathBuf> = chain
        .iter()
        .rev()
        .map(|c| {
            let cache =
                fs::read_to_string(root.join("layerdb/sha256").join(hex(c)).join("cache-id")).unwrap();
            root.join("layers").join(cache)
        })
        .collect();
    assert_eq!(lowers, want);
}

#[test]
fn rm_refuses_layers_with_dependents() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let (_, native) = CHAINS[0];
    let top = import(&root, native);
    let chain = chain_of(native);
    let (code, _, err) =
        run(["store".as_ref(), "--root".as_ref(), s(&root), "rm".as_ref(), chain[0].as_ref()]);
    assert_ne!(code, 0);
    assert!(err.starts_with("layerfs: ") && err.contains("parent of") && err.contains(&chain[1]), "{err}");
    assert_eq!(ls(&root).len(), 3);
    // A bad id is refused before touching any path.
    let (code, _, err) =
        run(["store".as_ref(), "--root".as_ref(), s(&root), "rm".as_ref(), "sha256:../../etc".as_ref()]);
    assert_ne!(code, 0);
    assert!(err.contains("invalid digest"), "{err}");
    let (code, _, err) = run(["store".as_ref(), "--root".as_ref(), s(&root), "rm".as_ref(), "".as_ref()]);
    assert_ne!(code, 0, "{err}");

    // Removing from the top works, and frees the content.
    let cache = fs::read_to_string(root.join("layerdb/sha256").join(hex(&top)).join("cache-id")).unwrap();
    run_ok(["store".as_ref(), "--root".as_ref(), s(&root), "rm".as_ref(), top.as_ref()]);
    assert!(!root.join("layers").join(cache).exists());
    assert_eq!(ls(&root).len(), 2);
    run_ok(["store".as_ref(), "--root".as_ref(), s(&root), "rm".as_ref(), hex(&chain[1]).as_ref()]);
    run_ok(["store".as_ref(), "--root".as_ref(), s(&root), "rm".as_ref(), chain[0].as_ref()]);
    assert!(ls(&root).is_empty());
    assert_eq!(fs::read_dir(root.join("layers")).unwrap().count(), 0);
    // Unknown layer.
    let (code, _, err) =
        run(["store".as_ref(), "--root".as_ref(), s(&root), "rm".as_ref(), chain[0].as_ref()]);
    assert_ne!(code, 0);
    assert!(err.contains("no layer"), "{err}");
}

#[test]
fn commit_adds_a_normalised_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let base = import(&root, &["00-base-busybox.tar"]);
    // An upper dir as a union filesystem leaves it: a chardev whiteout, an
    // opaque dir by xattr, a new file.
    let upper = tmp.path().join("upper");
    fs::create_dir_all(upper.join("etc/keep")).unwrap();
    fs::write(upper.join("etc/keep/new"), b"new\n").unwrap();
    oci::set_xattr_nofollow(&upper.join("etc/keep"), "trusted.overlay.opaque", b"y").unwrap();
    fs::write(upper.join("added"), b"added\n").unwrap();
    fs::create_dir_all(upper.join("bin")).unwrap();
    let st =
        std::process::Command::new("mknod").arg(upper.join("bin/ls")).args(["c", "0", "0"]).status().unwrap();
    assert!(st.success());

    let out = String::from_utf8(run_ok([
        "store".as_ref(),
        "--root".as_ref(),
        s(&root),
        "commit".as_ref(),
        s(&upper),
        "--parent".as_ref(),
        base.as_ref(),
    ]))
    .unwrap();
    let top = out.trim().to_string();
    // Its ChainID is that of the diff of the upper on top of the base.
    let layer = tmp.path().join("upper.tar");
    let rep = oci::export_to_file(&upper, &layer).unwrap();
    assert_eq!(top, oci::chain_id(Some(&base), &rep.diff_id));
    let info = store::Store::open(&root).unwrap().get(&top).unwrap();
    assert_eq!(info.parent.as_deref(), Some(base.as_str()));
    assert_eq!(info.diff_id, rep.diff_id);
    assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0, "staging left behind");

    // The stored layer, flattened over the base, hides bin/ls and etc/keep's old files.
    let lowers = oci::lowerdirs_for(&root, &top).unwrap();
    assert_eq!(lowers.len(), 2);
    let flat = tmp.path().join("flat");
    oci::unpack(
        &[fixture("00-base-busybox.tar"), layer],
        &flat,
        &oci::UnpackOptions { flatten: true, ..Default::default() },
    )
    .unwrap();
    assert!(fs::symlink_metadata(flat.join("bin/ls")).is_err());
    assert!(fs::symlink_metadata(flat.join("bin/cat")).is_ok());
    let mut keep: Vec<_> =
        fs::read_dir(flat.join("etc/keep")).unwrap().map(|e| e.unwrap().file_name()).collect();
    keep.sort();
    assert_eq!(keep, vec!["new"]);

    // Commit with an unknown parent is refused.
    let (code, _, err) = run([
        "store".as_ref(),
        "--root".as_ref(),
        s(&root),
        "commit".as_ref(),
        s(&upper),
        "--parent".as_ref(),
        "a".repeat(64).as_ref(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("not in the store"), "{err}");
}

#[test]
fn mount_options_escape_and_order() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("st:o,re");
    let (_, native) = CHAINS[0];
    let top = import(&root, native);
    let lowers = oci::lowerdirs_for(&root, &top).unwrap();
    let args = store::mount_args(
        &root,
        &top,
        Path::new("/mnt/x"),
        Some(Path::new("/u")),
        Some(Path::new("/w")),
        &["-f".into()],
    )
    .unwrap();
    assert_eq!(args[0], "-o");
    let opt = args[1].to_str().unwrap();
    let esc = |p: &Path| p.to_str().unwrap().replace(':', "\\:").replace(',', "\\,");
    let want_lower: Vec<String> = lowers.iter().map(|p| esc(p)).collect();
    assert_eq!(opt, format!("lowerdir={},upperdir=/u,workdir=/w", want_lower.join(":")));
    assert!(opt.contains("st\\:o\\,re"));
    assert_eq!(&args[2..], &["-f".into(), std::ffi::OsString::from("/mnt/x")]);
    // --upper without --work is refused.
    let (code, _, err) = run([
        "store".as_ref(),
        "--root".as_ref(),
        s(&root),
        "mount".as_ref(),
        top.as_ref(),
        "/nonexistent-mnt".as_ref(),
        "--upper".as_ref(),
        "/u".as_ref(),
    ]);
    assert_ne!(code, 0, "{err}");
    // An unknown layer is refused before anything runs.
    let (code, _, err) = run([
        "store".as_ref(),
        "--root".as_ref(),
        s(&root),
        "mount".as_ref(),
        "b".repeat(64).as_ref(),
        "/nonexistent-mnt".as_ref(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("no layer"), "{err}");
}

#[test]
fn default_root_comes_from_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("envstore");
    let out = std::process::Command::new(bin())
        .env("LAYERFS_STORE", &root)
        .args(["store", "import"])
        .arg(fixture("fuse-4-empty.tar"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), diff_id_of("fuse-4-empty.tar"));
    assert!(root.join("layerdb/sha256").join(hex(&diff_id_of("fuse-4-empty.tar"))).is_dir());
}

/// `store import -` reads a layer from standard input, which can be read once: it was hashed
/// first and then unpacked from what was left (nothing), and failed. Importing it again from
/// standard input finds it present and leaves no second copy.
#[test]
fn import_reads_a_layer_from_stdin() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let (_, native) = CHAINS[0];
    let want = chain_of(&native[..1]);
    for _ in 0..2 {
        let mut child = Command::new(bin())
            .args(["store".as_ref(), "--root".as_ref(), root.as_os_str(), "import".as_ref(), "-".as_ref()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let data = fs::read(fixture(native[0])).unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(&data));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want[0]);
    }
    assert_eq!(ls(&root).len(), 1);
    assert_eq!(fs::read_dir(root.join("layers")).unwrap().count(), 1, "a second copy was kept");
}

/// An import on a parent and an `rm` of that parent, both waiting for the store's lock: one
/// of them must fail. The parent was checked before the lock, and both succeeded, leaving a
/// layer on a removed parent.
#[test]
fn import_on_a_parent_and_its_rm_do_not_both_succeed() {
    use std::process::{Command, Stdio};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let (_, native) = CHAINS[0];
    let base = import(&root, &native[..1]);
    let lock = fs::OpenOptions::new().write(true).open(root.join("lock")).unwrap();
    // SAFETY: flock on an open file.
    assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) }, 0);
    let store = |args: &[&std::ffi::OsStr]| {
        Command::new(bin())
            .args(["store".as_ref(), "--root".as_ref(), root.as_os_str()])
            .args(args)
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut rm = store(&["rm".as_ref(), base.as_ref()]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let tar = fixture(native[1]);
    let mut imp = store(&["import".as_ref(), "--parent".as_ref(), base.as_ref(), tar.as_os_str()]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    drop(lock);
    let (r, i) = (rm.wait().unwrap().success(), imp.wait().unwrap().success());
    assert!(!(r && i), "both the rm and the import on its parent succeeded");
    for l in ls(&root) {
        let parent = &l[2];
        assert!(parent == "-" || ls(&root).iter().any(|p| &p[0] == parent), "{l:?} has a removed parent");
    }
}

/// A writer killed half way (a crash, Ctrl-C) leaves content no metadata names and staging in
/// `tmp/`; the next writer sweeps them away under the lock and leaves every stored layer
/// whole. Before, they stayed for good. Nothing is swept while a layer's metadata cannot be
/// read, as its content could not be told from leftovers.
#[test]
fn what_an_interrupted_writer_left_is_swept_by_the_next() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let (_, native) = CHAINS[0];
    import(&root, &native[..1]);
    let stored: Vec<_> = fs::read_dir(root.join("layers")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(stored.len(), 1);
    // An import from standard input, killed once its unpack has begun.
    let mut child = Command::new(bin())
        .args(["store".as_ref(), "--root".as_ref(), root.as_os_str(), "import".as_ref(), "-".as_ref()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let data = fs::read(fixture(native[1])).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&data[..data.len() / 2]).unwrap();
    let t = std::time::Instant::now();
    while fs::read_dir(root.join("layers")).unwrap().count() < 2 {
        assert!(t.elapsed().as_secs() < 30, "the import never began to unpack");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);
    // What other writers cut short leave: content whose metadata was never written, staging
    // of metadata, of an `rm`, of a commit's tar.
    let orphan = "ab".repeat(32);
    fs::create_dir_all(root.join("layers").join(&orphan).join("etc")).unwrap();
    fs::write(root.join("layers").join(&orphan).join("etc/f"), b"x").unwrap();
    fs::create_dir_all(root.join("tmp/meta-0011aabb")).unwrap();
    fs::write(root.join("tmp/meta-0011aabb/diff"), b"sha256:00").unwrap();
    fs::create_dir_all(root.join("tmp/rm-0011aabb")).unwrap();
    fs::write(root.join("tmp/commit-0011aabb.tar"), b"half").unwrap();
    let leftovers = |root: &Path| {
        let mut v: Vec<String> = ["layers", "tmp"]
            .iter()
            .flat_map(|d| {
                fs::read_dir(root.join(d)).unwrap().map(move |e| format!("{d}/{:?}", e.unwrap().file_name()))
            })
            .filter(|n| !stored.iter().any(|s| n == &format!("layers/{s:?}")))
            .collect();
        v.sort();
        v
    };
    // The killed import left its staging directory at least.
    let left = leftovers(&root);
    assert!(left.len() >= 5 && left.iter().any(|n| n.contains(".tmp-")), "{left:?}");
    // Unreadable metadata: nothing is swept.
    let bad = root.join("layerdb/sha256").join("cd".repeat(32));
    fs::create_dir_all(&bad).unwrap();
    fs::write(bad.join("diff"), format!("sha256:{}", "ef".repeat(32))).unwrap();
    fs::write(bad.join("size"), b"1").unwrap();
    fs::write(bad.join("cache-id"), b"not hex").unwrap();
    // (An import of a layer already stored takes the lock, as every writer does.)
    import(&root, &native[..1]);
    assert_eq!(leftovers(&root), left, "swept despite unreadable metadata");
    fs::remove_dir_all(&bad).unwrap();
    // The next writer sweeps; the stored layers stay whole.
    let top = import(&root, &native[..2]);
    assert_eq!(top, chain_of(&native[..2])[1]);
    assert!(leftovers(&root).iter().all(|n| n.starts_with("layers/")), "{:?}", leftovers(&root));
    let named: Vec<String> = ls(&root).iter().map(|l| l[0].clone()).collect();
    assert_eq!(named.len(), 2);
    for c in chain_of(&native[..2]) {
        let cache = fs::read_to_string(root.join("layerdb/sha256").join(hex(&c)).join("cache-id")).unwrap();
        assert!(root.join("layers").join(cache).is_dir());
    }
    assert_eq!(fs::read_dir(root.join("layers")).unwrap().count(), 2, "{:?}", leftovers(&root));
    assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
}
