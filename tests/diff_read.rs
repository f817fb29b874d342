//! Read-path differential tests: the same layer stacks mounted with kernel overlayfs and with
//! layerfs must give identical merged trees (type, mode, owner, size, content hash, link
//! target, xattrs). Real layer tars made by podman, buildah and umoci, plus generated stacks of
//! 2, 20, 50 and 500 layers. The kernel reads only char-device and xattr whiteouts, so it gets the
//! stack with `.wh.` entries converted; layerfs gets both the converted stack and the stack as
//! the tars hold it.
mod common;
use common::*;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The chains described in shared/testdata/layers/README.md (bottom first) and their listing.
const CHAINS: &[(&str, &[&str])] = &[
    ("native-chain", &["00-base-busybox", "native-1-add", "native-2-delete-opaque"]),
    ("fuse-chain", &["00-base-busybox", "fuse-1-add", "fuse-2-delete", "fuse-3-rmdir", "fuse-4-empty"]),
    ("fuse-bug-chain", &["00-base-busybox", "fuse-1-add", "fuse-bug-2-lost-deletions"]),
    ("buildah-chain", &["00-base-busybox", "buildah-commit-1"]),
    ("umoci-chain", &["00-base-busybox", "native-1-add", "native-2-delete-opaque", "umoci-repack-3"]),
];

fn unpack_chain(s: &Scratch, tag: &str, layers: &[&str]) -> Vec<PathBuf> {
    let shared = shared_layers();
    // Top first, as lowerdir= wants it.
    layers
        .iter()
        .rev()
        .map(|l| {
            let d = s.path(&format!("{tag}/{l}"));
            gnu_untar(&shared.join(format!("{l}.tar")), &d);
            d
        })
        .collect()
}

fn assert_listing(what: &str, got: &str, want: &str) {
    if got != want {
        let g: Vec<&str> = got.lines().collect();
        let w: Vec<&str> = want.lines().collect();
        let missing: Vec<_> = w.iter().filter(|l| !g.contains(l)).collect();
        let extra: Vec<_> = g.iter().filter(|l| !w.contains(l)).collect();
        panic!("{what}: listing differs from expected\nmissing: {missing:#?}\nextra: {extra:#?}");
    }
}

#[test]
fn real_layer_chains_match_expected_and_kernel() {
    if !can_mount() || !can_kernel_overlay() {
        return;
    }
    let shared = shared_layers();
    for (chain, layers) in CHAINS {
        let s = Scratch::new();
        let raw = unpack_chain(&s, "raw", layers);
        let conv = unpack_chain(&s, "conv", layers);
        for d in &conv {
            convert_to_kernel_whiteouts(d);
        }
        let want = fs::read_to_string(shared.join(format!("expected/{chain}.txt"))).unwrap();

        let m_raw = s.path("m-raw");
        let m_conv = s.path("m-conv");
        let m_kern = s.path("m-kern");
        let _a = mount_layerfs(&raw, None, &m_raw, "");
        let _b = mount_layerfs(&conv, None, &m_conv, "");
        let _k = mount_overlay(&conv, None, &m_kern);

        assert_listing(&format!("{chain} layerfs (.wh. form)"), &expected_listing(&m_raw), &want);
        assert_listing(&format!("{chain} layerfs (kernel form)"), &expected_listing(&m_conv), &want);
        assert_listing(&format!("{chain} kernel overlayfs"), &expected_listing(&m_kern), &want);

        let kern = snapshot(&m_kern, true);
        for (name, m) in [("layerfs-raw", &m_raw), ("layerfs-conv", &m_conv)] {
            let d = diff_snapshots("kernel", &kern, name, &snapshot(m, true));
            assert!(d.is_empty(), "{chain}: {name} differs from kernel overlayfs:\n{}", d.join("\n"));
        }
    }
}

/// A small deterministic PRNG (xorshift) so generated stacks are the same on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Generates `n` layers (`base/0` is the top) in `.wh.` form: files overriding lower ones,
/// whiteouts of files and of whole directories, opaque directories (marker and xattr),
/// directories merging across layers, symlinks, hard links, xattrs.
fn generate_stack(base: &Path, n: usize, seed: u64) -> Vec<String> {
    let mut rng = Rng(seed);
    let names: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    for (i, name) in names.iter().enumerate().rev() {
        let l = base.join(name);
        fs::create_dir_all(&l).unwrap();
        // Every layer adds its own file somewhere, so each layer matters.
        let d = format!("d{}", rng.below(4));
        fs::create_dir_all(l.join(&d)).unwrap();
        fs::write(l.join(format!("{d}/own{i}")), format!("layer {i}\n")).unwrap();
        for _ in 0..3 {
            let dir = format!("d{}", rng.below(4));
            let f = format!("f{}", rng.below(6));
            fs::create_dir_all(l.join(&dir)).unwrap();
            match rng.below(10) {
                0 => fs::write(l.join(&dir).join(format!(".wh.{f}")), b"").unwrap(),
                1 if i % 7 == 3 => {
                    fs::write(l.join(&dir).join(".wh..wh..opq"), b"").unwrap();
                }
                2 => {
                    let _ = std::os::unix::fs::symlink(
                        format!("../{dir}/{f}"),
                        l.join(&dir).join(format!("ln{f}")),
                    );
                }
                3 => {
                    let sub = l.join(&dir).join(format!("sub{f}"));
                    fs::create_dir_all(&sub).unwrap();
                    fs::write(sub.join("inner"), format!("{i}")).unwrap();
                }
                4 => fs::write(l.join(format!(".wh.d{}", rng.below(4))), b"").unwrap(),
                _ => {
                    let p = l.join(&dir).join(&f);
                    if !p.is_dir() {
                        fs::write(&p, format!("{i}:{f}\n").repeat(1 + rng.below(50) as usize)).unwrap();
                    }
                }
            }
        }
        if i % 5 == 1 {
            let p = l.join("hl-a");
            fs::write(&p, format!("hard {i}")).unwrap();
            let _ = fs::hard_link(&p, l.join("hl-b"));
        }
    }
    // Bottom-only files, for lookups through the whole stack.
    let bottom = base.join(&names[n - 1]);
    fs::create_dir_all(bottom.join("deep/a/b")).unwrap();
    for k in 0..20 {
        fs::write(bottom.join(format!("deep/a/b/bottom{k}")), format!("{k}")).unwrap();
    }
    names
}

fn check_generated(n: usize, seed: u64) {
    if !can_mount() || !can_kernel_overlay() {
        return;
    }
    let s = Scratch::new();
    let raw = s.path("raw");
    let conv = s.path("conv");
    let names = generate_stack(&raw, n, seed);
    copy_tree(&raw, &conv);
    for nm in &names {
        convert_to_kernel_whiteouts(&conv.join(nm));
    }
    let m_raw = s.path("m-raw");
    let m_conv = s.path("m-conv");
    let m_kern = s.path("m-kern");
    let lower_raw: Vec<PathBuf> = names.iter().map(|x| raw.join(x)).collect();
    let lower_conv: Vec<PathBuf> = names.iter().map(|x| conv.join(x)).collect();
    let _a = mount_layerfs(&lower_raw, None, &m_raw, "");
    let _b = mount_layerfs(&lower_conv, None, &m_conv, "");
    let rel: Vec<&str> = names.iter().map(String::as_str).collect();
    let _k = mount_overlay_in(&conv, &rel, &m_kern);
    let kern = snapshot(&m_kern, true);
    assert!(kern.len() > 20, "generated stack too small: {}", kern.len());
    for (name, m) in [("layerfs-raw", &m_raw), ("layerfs-conv", &m_conv)] {
        let d = diff_snapshots("kernel", &kern, name, &snapshot(m, true));
        assert!(d.is_empty(), "{n} layers: {name} differs from kernel overlayfs:\n{}", d.join("\n"));
    }
    // Lookups of names the listings do not show (whited out, never there), which a snapshot
    // never asks for: the same answer as the kernel's.
    let mut probes = vec!["nothing".to_string(), ".wh.d0".to_string(), "deep/a/b/none".to_string()];
    for d in 0..5 {
        for f in 0..7 {
            probes.extend([format!("d{d}/f{f}"), format!("d{d}/lnf{f}"), format!("d{d}/subf{f}/inner")]);
            probes.extend([format!("d{d}/.wh.f{f}"), format!("d{d}/own{}", f * 7 % n)]);
        }
    }
    let answer = |m: &Path, p: &str| match fs::symlink_metadata(m.join(p)) {
        Ok(md) => format!("{:o} {}", md.mode(), md.len()),
        Err(e) => format!("error {:?}", e.raw_os_error()),
    };
    for p in &probes {
        let want = answer(&m_kern, p);
        for (name, m) in [("layerfs-raw", &m_raw), ("layerfs-conv", &m_conv)] {
            assert_eq!(answer(m, p), want, "{n} layers: lookup of {p} on {name}");
        }
    }
}

#[test]
fn generated_2_layers() {
    for seed in [1, 2, 3, 4, 5] {
        check_generated(2, seed);
    }
}

#[test]
fn generated_50_layers() {
    // Past MERGED_MIN_LOWERS (16): lookups go through the merged name index and the parallel
    // directory opens.
    for seed in [50, 51, 52] {
        check_generated(50, seed);
    }
}

#[test]
fn generated_20_layers() {
    for seed in [20, 21, 22, 23] {
        check_generated(20, seed);
    }
}

#[test]
fn generated_500_layers() {
    check_generated(500, 500);
}

#[test]
fn d_ino_equals_st_ino_and_inodes_are_stable() {
    if !can_mount() {
        return;
    }
    use std::os::unix::fs::{DirEntryExt, MetadataExt};
    let s = Scratch::new();
    let raw = s.path("raw");
    let names = generate_stack(&raw, 3, 9);
    let m = s.path("m");
    let lowers: Vec<PathBuf> = names.iter().map(|x| raw.join(x)).collect();
    let _a = mount_layerfs(&lowers, None, &m, "");
    let mut stack = vec![m.clone()];
    let mut count = 0;
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = fs::symlink_metadata(e.path()).unwrap();
            assert_eq!(e.ino(), md.ino(), "d_ino != st_ino for {}", e.path().display());
            // Same inode number on a second stat.
            assert_eq!(fs::symlink_metadata(e.path()).unwrap().ino(), md.ino());
            if md.is_dir() {
                stack.push(e.path());
            }
            count += 1;
        }
    }
    assert!(count > 10);
    // Hard links inside one lower layer keep their link count and show one inode number.
    assert!(lowers.iter().any(|l| l.join("hl-a").exists()), "the stack has no hard link to check");
    let a = fs::symlink_metadata(m.join("hl-a")).unwrap();
    let b = fs::symlink_metadata(m.join("hl-b")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!((a.nlink(), b.nlink()), (2, 2));
}

/// Every name's inode number, from a stat and from its directory's listing (`d_ino`).
fn inode_numbers(m: &Path) -> std::collections::BTreeMap<String, (u64, u64)> {
    use std::os::unix::fs::DirEntryExt;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![m.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = fs::symlink_metadata(e.path()).unwrap();
            if md.is_dir() {
                stack.push(e.path());
            }
            out.insert(e.path().strip_prefix(m).unwrap().display().to_string(), (md.ino(), e.ino()));
        }
    }
    out
}

/// Lower non-directories show their real inode numbers, as on kernel overlayfs (all layers on
/// one filesystem): two names of a hard link in a layer show one number, in a stat and in a
/// listing, so tar, du and `cp -a` take them for one file (they showed two numbers, and a tar
/// of the merged tree held the file twice). Writing through one name copies up that name only
/// (kernel overlayfs without `index=on`), which then shows its copy's number and one link; a
/// file linked once keeps its number through a copy-up. Kernel overlayfs gives the same
/// numbers, before and after.
#[test]
fn lower_files_show_their_real_inode_numbers_as_on_kernel_overlayfs() {
    use std::os::unix::fs::PermissionsExt;
    if !can_mount() || !can_kernel_overlay() {
        return;
    }
    let s = Scratch::new();
    let (l1, l2) = (s.path("l1"), s.path("l2"));
    fs::create_dir_all(l1.join("d")).unwrap();
    fs::create_dir_all(l2.join("d/sub")).unwrap();
    fs::write(l2.join("d/a"), b"a").unwrap();
    fs::hard_link(l2.join("d/a"), l2.join("d/b")).unwrap();
    fs::hard_link(l2.join("d/a"), l2.join("d/sub/c")).unwrap();
    fs::write(l1.join("d/top"), b"top").unwrap();
    std::os::unix::fs::symlink("a", l2.join("d/sym")).unwrap();
    std::os::unix::fs::symlink("a", l1.join("d/sym2")).unwrap();
    fs::hard_link(l1.join("d/sym2"), l1.join("d/sym3")).unwrap();
    let lowers = [l1.clone(), l2.clone()];
    let real = |p: &Path| fs::symlink_metadata(p).unwrap().ino();
    let a_ino = real(&l2.join("d/a"));
    let numbers = |m: &Path| {
        let n = inode_numbers(m);
        for (p, (st, d)) in &n {
            assert_eq!(st, d, "{p}: d_ino != st_ino");
        }
        n
    };
    let run = |tag: &str, kernel: bool| {
        let (u, w, m) =
            (s.path(&format!("{tag}-u")), s.path(&format!("{tag}-w")), s.path(&format!("{tag}-m")));
        for d in [&u, &w, &m] {
            fs::create_dir_all(d).unwrap();
        }
        let _g = if kernel {
            mount_overlay(&lowers, Some((&u, &w)), &m)
        } else {
            mount_layerfs(&lowers, Some((&u, &w)), &m, "")
        };
        let before = numbers(&m);
        for name in ["d/a", "d/b", "d/sub/c"] {
            assert_eq!(before[name].0, a_ino, "{tag}: {name}");
        }
        assert_eq!(before["d/top"].0, real(&l1.join("d/top")), "{tag}");
        assert_eq!(before["d/sym"].0, real(&l2.join("d/sym")), "{tag}");
        assert_eq!(before["d/sym2"].0, before["d/sym3"].0, "{tag}");
        let md = fs::symlink_metadata(m.join("d/b")).unwrap();
        assert_eq!(md.nlink(), 3, "{tag}");
        // A copy-up through one name of the hard link, and one of a file linked once.
        let mut f = fs::OpenOptions::new().append(true).open(m.join("d/b")).unwrap();
        std::io::Write::write_all(&mut f, b"X").unwrap();
        drop(f);
        fs::set_permissions(m.join("d/top"), fs::Permissions::from_mode(0o600)).unwrap();
        let mut after = numbers(&m);
        // The copied-up name of the hard link shows its copy's number; the rest keep theirs.
        let copy = real(&u.join("d/b"));
        assert_ne!(copy, a_ino);
        assert_eq!(after.insert("d/b".into(), (a_ino, a_ino)), Some((copy, copy)), "{tag}");
        assert_eq!(after, before, "{tag}: numbers changed at the copy-up");
        let nl = |p: &str| fs::symlink_metadata(m.join(p)).unwrap().nlink();
        assert_eq!((nl("d/a"), nl("d/b"), nl("d/sub/c")), (3, 1, 3), "{tag}");
        assert_eq!(fs::read(m.join("d/a")).unwrap(), b"a");
        assert_eq!(fs::read(m.join("d/b")).unwrap(), b"aX");
        (before, canonical_upper(&u))
    };
    let (k, ku) = run("kernel", true);
    let (l, lu) = run("layerfs", false);
    assert_eq!(l, k);
    assert_eq!(lu, ku);
}

/// Inode numbers of a directory with lower content, and of the untouched lower files in it,
/// stay the same once the directory is copied up (a file made in it), also after a remount, as
/// on kernel overlayfs: every lower file of a directory written into got a new number at the
/// next mount (a container restart), and tools keyed on them (git's index, incremental tar)
/// saw every file as changed. `d_ino` still equals `st_ino` everywhere.
#[test]
fn inode_numbers_survive_a_copy_up_and_a_remount() {
    if !can_mount() {
        return;
    }
    use std::collections::BTreeMap;
    use std::os::unix::fs::{DirEntryExt, MetadataExt};
    let s = Scratch::new();
    let (l1, l2, u, w, m) = (s.path("l1"), s.path("l2"), s.path("u"), s.path("w"), s.path("m"));
    for l in [&l1, &l2] {
        fs::create_dir_all(l.join("d/sub")).unwrap();
        fs::create_dir_all(l.join("gone")).unwrap();
    }
    fs::write(l1.join("d/a"), b"a").unwrap();
    fs::write(l2.join("d/b"), b"b").unwrap();
    fs::write(l2.join("d/sub/c"), b"c").unwrap();
    let lowers = [l1.clone(), l2.clone()];
    let walk = |m: &Path| -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        let mut stack = vec![m.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let md = fs::symlink_metadata(e.path()).unwrap();
                assert_eq!(e.ino(), md.ino(), "d_ino != st_ino for {}", e.path().display());
                if md.is_dir() {
                    stack.push(e.path());
                }
                out.insert(e.path().strip_prefix(m).unwrap().display().to_string(), md.ino());
            }
        }
        out
    };
    let before = {
        let _g = mount_layerfs(&lowers, Some((&u, &w)), &m, "");
        let before = walk(&m);
        fs::write(m.join("d/new"), b"n").unwrap();
        fs::write(m.join("d/sub/new"), b"n").unwrap();
        // A directory made again is a new object, upper only (opaque).
        fs::remove_dir(m.join("gone")).unwrap();
        fs::create_dir(m.join("gone")).unwrap();
        let during = walk(&m);
        for (p, ino) in &before {
            if p != "gone" {
                assert_eq!(during.get(p), Some(ino), "{p} changed its number at the copy-up");
            }
        }
        before
    };
    assert!(u.join("d/sub/new").exists());
    let _g = mount_layerfs(&lowers, Some((&u, &w)), &m, "");
    let after = walk(&m);
    for (p, ino) in &before {
        if p != "gone" {
            assert_eq!(after.get(p), Some(ino), "{p} changed its number across the remount");
        }
    }
    assert!(after.contains_key("gone") && after.contains_key("d/sub/new"));
}

/// A copied-up file keeps the lower file's number after a remount, as on kernel overlayfs:
/// the copy-up records the lower object in `overlay.origin` in the kernel's format, and marks
/// its directory `overlay.impure`. A copy-up by layerfs read back by layerfs and by kernel
/// overlayfs, and a copy-up by the kernel read back by layerfs, show the numbers the copy-up's
/// own mount showed, in a stat and in a listing: a file, a symlink, a fifo, a file renamed in
/// its directory and one moved to another; a name of a file linked twice in its layer shows
/// its copy's number (the kernel records no origin for it). Before, every copied-up file
/// showed a new number after a remount (a container restart), and tools keyed on them (git's
/// index, incremental tar) took it for another file.
#[test]
fn copied_up_files_keep_their_numbers_across_a_remount_as_on_kernel_overlayfs() {
    use std::os::unix::fs::PermissionsExt;
    if !can_mount() || !can_kernel_overlay() {
        return;
    }
    let s = Scratch::new();
    let (l1, l2) = (s.path("l1"), s.path("l2"));
    for d in ["d", "e"] {
        fs::create_dir_all(l1.join(d)).unwrap();
        fs::create_dir_all(l2.join(d)).unwrap();
    }
    fs::write(l1.join("f"), b"f").unwrap();
    fs::write(l2.join("d/a"), b"a").unwrap();
    fs::write(l2.join("d/b"), b"b").unwrap();
    fs::hard_link(l2.join("d/b"), l2.join("d/b2")).unwrap();
    std::os::unix::fs::symlink("a", l2.join("d/sym")).unwrap();
    assert!(Command::new("mkfifo").arg(l2.join("d/fifo")).status().unwrap().success());
    fs::write(l1.join("e/g"), b"g").unwrap();
    fs::write(l2.join("e/h"), b"h").unwrap();
    fs::write(l2.join("e/keep"), b"k").unwrap();
    let lowers = [l1.clone(), l2.clone()];
    let numbers = |tag: &str, m: &Path| {
        let n = inode_numbers(m);
        for (p, (st, d)) in &n {
            assert_eq!(st, d, "{tag}: {p}: d_ino != st_ino");
        }
        n.into_iter().map(|(p, (st, _))| (p, st)).collect::<std::collections::BTreeMap<_, _>>()
    };
    // Copies up every kind, renames two copies, and returns the numbers then shown.
    let copy_ups = |tag: &str, m: &Path| {
        let before = numbers(tag, m);
        fs::set_permissions(m.join("f"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(m.join("d/a"), b"a2").unwrap();
        let mut f = fs::OpenOptions::new().append(true).open(m.join("d/b")).unwrap();
        std::io::Write::write_all(&mut f, b"X").unwrap();
        drop(f);
        std::os::unix::fs::lchown(m.join("d/sym"), Some(5), Some(5)).unwrap();
        fs::set_permissions(m.join("d/fifo"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(m.join("e/g"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::rename(m.join("e/g"), m.join("d/g")).unwrap();
        fs::set_permissions(m.join("e/h"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::rename(m.join("e/h"), m.join("e/h2")).unwrap();
        // A second name for a copy, in a directory made through the mount.
        fs::create_dir(m.join("n")).unwrap();
        fs::hard_link(m.join("d/a"), m.join("n/a-link")).unwrap();
        let after = numbers(tag, m);
        assert_eq!(after["n/a-link"], before["d/a"], "{tag}: a link to a copy");
        for (p, was) in [("f", "f"), ("d/a", "d/a"), ("d/sym", "d/sym"), ("d/fifo", "d/fifo"), ("d/g", "e/g")]
        {
            assert_eq!(after[p], before[was], "{tag}: {p} changed its number at the copy-up");
        }
        assert_eq!(after["e/h2"], before["e/h"], "{tag}");
        assert_ne!(after["d/b"], before["d/b"], "{tag}: a name of a hard link shows its copy's number");
        after
    };
    let dirs = |tag: &str| {
        let d = [s.path(&format!("{tag}-u")), s.path(&format!("{tag}-w")), s.path(&format!("{tag}-m"))];
        for p in &d {
            fs::create_dir_all(p).unwrap();
        }
        d
    };

    // layerfs copies up; layerfs, then the kernel, read the upper back.
    let [u, w, m] = dirs("layerfs");
    let shown = {
        let _g = mount_layerfs(&lowers, Some((&u, &w)), &m, "");
        copy_ups("layerfs", &m)
    };
    let origin = common::xattrs(&u.join("d/a"), true);
    assert!(origin.iter().any(|(n, _)| n == "trusted.overlay.origin"), "no origin on the copy: {origin:?}");
    assert!(common::xattrs(&u.join("d/b"), true).iter().all(|(n, _)| n != "trusted.overlay.origin"));
    for d in [&u, &u.join("d"), &u.join("e"), &u.join("n")] {
        assert!(
            common::xattrs(d, true).iter().any(|(n, _)| n == "trusted.overlay.impure"),
            "{d:?} not impure"
        );
    }
    {
        let _g = mount_layerfs(&lowers, Some((&u, &w)), &m, "");
        assert_eq!(numbers("layerfs remounted", &m), shown, "layerfs after a remount");
        // And once the kernel forgot them (a lookup reads the origin again).
        fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
        assert_eq!(numbers("layerfs remounted", &m), shown, "layerfs after a remount and a cache drop");
    }
    {
        let _g = mount_overlay(&lowers, Some((&u, &w)), &m);
        assert_eq!(
            numbers("kernel over layerfs's upper", &m),
            shown,
            "kernel overlayfs over layerfs's upper"
        );
    }

    // The kernel copies up; layerfs reads its upper back.
    let [u, w, m] = dirs("kernel");
    let shown = {
        let _g = mount_overlay(&lowers, Some((&u, &w)), &m);
        copy_ups("kernel", &m)
    };
    let _g = mount_layerfs(&lowers, Some((&u, &w)), &m, "");
    assert_eq!(numbers("layerfs over the kernel's upper", &m), shown, "layerfs over the kernel's upper");
}

/// Origins are read where kernel overlayfs reads them: a lower layer on another filesystem
/// than the upper's has its origins read only when its UUID is not null (a filesystem made
/// again, with a null UUID, could give a recorded handle to another file: the kernel takes
/// such a filesystem for one whose origins cannot be trusted). A copied-up and renamed file of
/// such a layer shows its upper number after a remount, on layerfs as on the kernel; with a
/// UUID, the lower file's. No two names show one number either way.
#[test]
fn origins_on_a_lower_filesystem_without_a_uuid_are_not_read_as_on_kernel_overlayfs() {
    use std::os::unix::fs::PermissionsExt;
    if !can_mount() || !can_kernel_overlay() || !root_or_skip("loop-mounted lower filesystems") {
        return;
    }
    for (uuid, lower_kept) in [("clear", false), ("random", true)] {
        let s = Scratch::new();
        let (_lm, x) = loop_mount(s.dir.path(), 64, &format!("mkfs.ext4 -q -F -U {uuid}"));
        let l = x.join("l");
        fs::create_dir_all(l.join("d")).unwrap();
        fs::write(l.join("d/a"), b"a").unwrap();
        fs::write(l.join("d/b"), b"b").unwrap();
        let lowers = [l.clone()];
        let run = |tag: &str, kernel: bool| {
            let (u, w, m) =
                (s.path(&format!("{tag}-u")), s.path(&format!("{tag}-w")), s.path(&format!("{tag}-m")));
            for p in [&u, &w, &m] {
                fs::create_dir_all(p).unwrap();
            }
            let mount = |m: &Path| {
                if kernel {
                    mount_overlay(&lowers, Some((&u, &w)), m)
                } else {
                    mount_layerfs(&lowers, Some((&u, &w)), m, "")
                }
            };
            let during = {
                let _g = mount(&m);
                fs::set_permissions(m.join("d/a"), fs::Permissions::from_mode(0o600)).unwrap();
                fs::rename(m.join("d/a"), m.join("d/a2")).unwrap();
                inode_numbers(&m)
            };
            let _g = mount(&m);
            let after = inode_numbers(&m);
            // (The kernel, its layers on two filesystems without `xino`, gives directories
            // another d_ino, and numbers of two filesystems may meet: those checks are
            // layerfs's.)
            if !kernel {
                let mut seen = std::collections::BTreeMap::new();
                for (p, (st, d)) in &after {
                    assert_eq!(st, d, "{tag} {uuid}: {p}: d_ino != st_ino");
                    assert_eq!(
                        seen.insert(*st, p.clone()),
                        None,
                        "{tag} {uuid}: {p} shows another name's number"
                    );
                }
            }
            let copy = fs::symlink_metadata(u.join("d/a2")).unwrap().ino();
            let want = if lower_kept { during["d/a2"].0 } else { copy };
            assert_eq!(after["d/a2"].0, want, "{tag} {uuid}: the copy's number after a remount");
        };
        run("kernel", true);
        run("layerfs", false);
    }
}

/// Without an upper directory, a directory in two lowers reports the topmost one's number
/// (as the kernel does), in a listing as in a stat, also in a directory big enough that the
/// kernel reads it without READDIRPLUS.
#[test]
fn merged_directories_of_a_read_only_mount_report_the_top_layers_number() {
    if !can_mount() {
        return;
    }
    use std::os::unix::fs::{DirEntryExt, MetadataExt};
    let s = Scratch::new();
    let (a, b, m) = (s.path("a"), s.path("b"), s.path("m"));
    for i in 0..1500 {
        fs::create_dir(a.join(format!("dir_with_a_longish_name_{i}"))).unwrap();
        fs::create_dir(b.join(format!("dir_with_a_longish_name_{i}"))).unwrap();
    }
    let _g = mount_layerfs(&[a.clone(), b.clone()], None, &m, "");
    let mut n = 0;
    for e in fs::read_dir(&m).unwrap() {
        let e = e.unwrap();
        let st = fs::symlink_metadata(e.path()).unwrap();
        assert_eq!(e.ino(), st.ino(), "d_ino != st_ino for {}", e.path().display());
        n += 1;
    }
    assert_eq!(n, 1500);
    let top = fs::metadata(a.join("dir_with_a_longish_name_7")).unwrap().ino();
    assert_eq!(fs::metadata(m.join("dir_with_a_longish_name_7")).unwrap().ino(), top);
}

#[test]
fn hostile_symlinks_in_a_layer_are_not_followed() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let l = s.path("l");
    let outside = s.path("outside");
    fs::write(outside.join("secret"), b"sentinel").unwrap();
    std::os::unix::fs::symlink("/", l.join("etc")).unwrap();
    std::os::unix::fs::symlink("../../..", l.join("up")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), l.join("abs")).unwrap();
    fs::create_dir(l.join("d")).unwrap();
    std::os::unix::fs::symlink("../outside", l.join("d/x")).unwrap();
    let (u, w, m) = (s.path("u"), s.path("w"), s.path("m"));
    let _a = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
    // The links read back as links, never as what they point to inside the server.
    assert_eq!(fs::read_link(m.join("etc")).unwrap(), Path::new("/"));
    assert!(fs::symlink_metadata(m.join("etc")).unwrap().file_type().is_symlink());
    assert_eq!(fs::read_link(m.join("up")).unwrap(), Path::new("../../.."));
    // Copy-up of a symlink (chown via the mount) copies the link, not its target.
    let c = std::ffi::CString::new(m.join("abs").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid path; lchown does not follow.
    assert_eq!(unsafe { libc::lchown(c.as_ptr(), 1, 1) }, 0);
    assert!(fs::symlink_metadata(u.join("abs")).unwrap().file_type().is_symlink());
    assert_eq!(fs::read(outside.join("secret")).unwrap(), b"sentinel");
    assert_eq!(fs::metadata(outside.join("secret")).unwrap().uid(), 0);
    use std::os::unix::fs::MetadataExt;
}

/// Access times after reads through the mount (listings, small and large files), against
/// kernel overlayfs, with and without `noatime`: lower objects never get a new one; upper
/// objects get one as the upper's `relatime` gives it, and none under `noatime`. Every access
/// time starts older than its modification time, so `relatime` renews it at the first read.
#[test]
fn access_times_after_reads_match_the_kernel() {
    if !can_mount() || !can_kernel_overlay() {
        return;
    }
    const NAMES: [&str; 8] = ["d", "d/in", "f", "big", "ud", "ud/in", "uf", "ubig"];
    for noatime in [false, true] {
        let mut seen = Vec::new();
        for kernel in [true, false] {
            let s = Scratch::new();
            let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
            for (root, pre) in [(&l, ""), (&u, "u")] {
                fs::create_dir(root.join(format!("{pre}d"))).unwrap();
                fs::write(root.join(format!("{pre}d/in")), b"in\n").unwrap();
                fs::write(root.join(format!("{pre}f")), b"small\n").unwrap();
                fs::write(root.join(format!("{pre}big")), vec![7u8; 1 << 20]).unwrap();
            }
            let old = 978307200; // 2001-01-01
            let (ok, out) = sh(
                s.dir.path(),
                "touch -a -d 2001-01-01T00:00:00Z l/d l/d/in l/f l/big u/ud u/ud/in u/uf u/ubig",
            );
            assert!(ok, "{out}");
            let real = |n: &str| if n.starts_with('u') { u.join(n) } else { l.join(n) };
            let mut mnt = if kernel {
                let o = format!(
                    "lowerdir={},upperdir={},workdir={},redirect_dir=off,index=off,metacopy=off,xino=off{}",
                    l.display(),
                    u.display(),
                    w.display(),
                    if noatime { ",noatime" } else { "" }
                );
                let (ok, out) = sh(s.dir.path(), &format!("mount -t overlay overlay -o {o} m"));
                assert!(ok, "kernel overlay mount: {out}");
                Mounted { mnt: m.clone(), fuse: false }
            } else {
                mount_layerfs(
                    std::slice::from_ref(&l),
                    Some((&u, &w)),
                    &m,
                    if noatime { "noatime" } else { "" },
                )
            };
            let (ok, out) = sh(&m, "ls d ud > /dev/null && cat f d/in big uf ud/in ubig > /dev/null");
            assert!(ok, "{out}");
            mnt.unmount();
            let renewed: Vec<(&str, bool)> =
                NAMES.iter().map(|n| (*n, fs::symlink_metadata(real(n)).unwrap().atime() != old)).collect();
            assert!(renewed.iter().all(|(n, r)| n.starts_with('u') || !r), "kernel {kernel}: {renewed:?}");
            seen.push(renewed);
        }
        assert_eq!(seen[1], seen[0], "layerfs (left) against the kernel, noatime {noatime}");
    }
}

/// Inode numbers stay unique across layers on different filesystems, also where a layer's
/// own numbers are 2^48 or more (a nested layerfs mount showing a second filesystem's files
/// offset by 2^48): offset again, they met another filesystem's, and two different files
/// showed one number.
#[test]
fn numbers_of_layers_on_several_filesystems_stay_apart() {
    use std::os::unix::fs::MetadataExt;
    if !can_mount() || !root_or_skip("tmpfs mounts") {
        return;
    }
    let s = Scratch::new();
    let (a, t1, t2, inner, outer) =
        (s.path("a"), s.path("t1"), s.path("t2"), s.path("inner"), s.path("outer"));
    let mut tmpfs = Vec::new();
    for t in [&t1, &t2] {
        fs::create_dir_all(t).unwrap();
        let (ok, out) = sh(s.dir.path(), &format!("mount -t tmpfs tmpfs {}", t.display()));
        assert!(ok, "{out}");
        tmpfs.push(Mounted { mnt: t.clone(), fuse: false });
    }
    fs::write(a.join("fa"), b"a").unwrap();
    fs::write(t1.join("f1"), b"1").unwrap();
    fs::write(t2.join("f2"), b"2").unwrap();
    fs::write(t2.join("f3"), b"3").unwrap();
    let _i = mount_layerfs(&[a.clone(), t1.clone()], None, &inner, "passthrough=0");
    let inner_f1 = fs::metadata(inner.join("f1")).unwrap().ino();
    assert!(inner_f1 >> 48 != 0, "f1 shows {inner_f1}: the test needs a number of 2^48 or more");
    let _o = mount_layerfs(&[inner.clone(), t2.clone()], None, &outer, "");
    let mut seen = std::collections::BTreeMap::new();
    for e in fs::read_dir(&outer).unwrap() {
        let e = e.unwrap();
        let ino = fs::symlink_metadata(e.path()).unwrap().ino();
        assert_eq!(std::os::unix::fs::DirEntryExt::ino(&e), ino);
        if let Some(other) = seen.insert(ino, e.file_name()) {
            panic!("{:?} and {other:?} show one number, {ino}", e.file_name());
        }
    }
    assert_eq!(seen.len(), 4);
    // The same numbers on the next mount.
    let before: Vec<u64> = seen.keys().copied().collect();
    drop(_o);
    let _o = mount_layerfs(&[inner.clone(), t2.clone()], None, &outer, "");
    let mut after: Vec<u64> =
        fs::read_dir(&outer).unwrap().map(|e| e.unwrap().metadata().unwrap().ino()).collect();
    after.sort();
    assert_eq!(after, before);
}

/// A file copied up and then removed gives its number back: a new file that gets the copy's
/// inode on the upper filesystem shows its own number, as on kernel overlayfs, not the
/// removed file's lower one. And a listing or `stat` made while files are being copied up
/// never shows a copy's upper number for a file that keeps its lower one (a lookup right
/// after the copy's rename found it unmapped, and made it a second node).
#[test]
fn a_removed_copy_gives_its_number_back_and_listings_never_show_a_copys() {
    use std::os::unix::fs::{DirEntryExt, MetadataExt};
    if !can_mount() || !root_or_skip("a loop-mounted upper") {
        return;
    }
    const DIRS: usize = 60;
    const FILES: usize = 20;
    let s = Scratch::new();
    // The layers on a filesystem of their own, so that no other test takes a freed inode
    // first (and on one filesystem, so that lower files show their numbers unchanged).
    let (_x, x) = loop_mount(s.dir.path(), 64, "mkfs.ext4 -q -F");
    let (l, u, w, m) = (x.join("l"), x.join("u"), x.join("w"), s.path("m"));
    for d in [&l, &u, &w] {
        fs::create_dir_all(d).unwrap();
    }
    for d in 0..DIRS {
        fs::create_dir_all(l.join(format!("d{d}"))).unwrap();
        for f in 0..FILES {
            fs::write(l.join(format!("d{d}/f{f}")), b"x").unwrap();
        }
    }
    for round in 0..5 {
        fs::write(l.join(format!("c{round}")), b"c").unwrap();
    }
    let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "timeout=0");
    // Listings beside copy-ups.
    let mut lower_ino = std::collections::HashMap::new();
    for d in 0..DIRS {
        for e in fs::read_dir(l.join(format!("d{d}"))).unwrap() {
            let e = e.unwrap();
            lower_ino.insert((d, e.file_name()), e.ino());
        }
    }
    let lower_ino = &lower_ino;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    let (stop, current) = (AtomicBool::new(false), AtomicUsize::new(0));
    std::thread::scope(|sc| {
        // The file being copied up, stat'ed, and its directory listed, over and over.
        let watch = || {
            let mut bad = Vec::new();
            while !stop.load(Relaxed) {
                let (d, f) = (current.load(Relaxed) / FILES, current.load(Relaxed) % FILES);
                let name = std::ffi::OsString::from(format!("f{f}"));
                let want = lower_ino[&(d, name.clone())];
                let st = fs::symlink_metadata(m.join(format!("d{d}")).join(&name)).unwrap().ino();
                if st != want {
                    bad.push((d, name.clone(), st, want));
                }
                for e in fs::read_dir(m.join(format!("d{d}"))).unwrap() {
                    let e = e.unwrap();
                    let want = lower_ino[&(d, e.file_name())];
                    if e.ino() != want {
                        bad.push((d, e.file_name(), e.ino(), want));
                    }
                }
            }
            bad
        };
        let watchers = [sc.spawn(watch), sc.spawn(watch)];
        for d in 0..DIRS {
            for f in 0..FILES {
                current.store(d * FILES + f, Relaxed);
                std::thread::sleep(std::time::Duration::from_micros(300));
                let mut h = fs::OpenOptions::new().append(true).open(m.join(format!("d{d}/f{f}"))).unwrap();
                std::io::Write::write_all(&mut h, b"y").unwrap();
            }
        }
        stop.store(true, Relaxed);
        let bad: Vec<_> = watchers.into_iter().flat_map(|l| l.join().unwrap()).collect();
        assert!(bad.is_empty(), "shown with another number: {bad:?}");
    });
    // Removed copies: each a lower file copied up, removed, and forgotten; then files are
    // made until one gets the copy's upper inode (ext4 gives a freed number again soon).
    let mut reused = 0;
    for round in 0..5 {
        let c = m.join(format!("c{round}"));
        let lower_c = fs::metadata(l.join(format!("c{round}"))).unwrap().ino();
        fs::OpenOptions::new().append(true).open(&c).unwrap();
        assert_eq!(fs::metadata(&c).unwrap().ino(), lower_c, "round {round}: the copy keeps its number");
        let copy = fs::metadata(u.join(format!("c{round}"))).unwrap().ino();
        fs::remove_file(&c).unwrap();
        let _ = fs::write("/proc/sys/vm/drop_caches", "2");
        for i in 0..300 {
            let p = m.join(format!("g{round}-{i}"));
            fs::write(&p, b"g").unwrap();
            if fs::metadata(u.join(format!("g{round}-{i}"))).unwrap().ino() == copy {
                assert_eq!(
                    fs::metadata(&p).unwrap().ino(),
                    copy,
                    "a new file shows the removed copy's number"
                );
                reused += 1;
                break;
            }
        }
    }
    assert!(reused > 0, "no new file got a removed copy's inode: nothing was checked");
}
