//! FUSE passthrough of lower files (`passthrough=all`, root, kernel 6.9+).
//!
//! Whether a file is passed through is told from the page cache: a mapping of a passed-through
//! file maps the real file, so a lower file whose pages are cached (read directly from the
//! layer) shows them resident through the mount at once; a file the server serves has its own,
//! empty, FUSE page cache. `mincore` looks without faulting anything in ([`resident`]).

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::*;

const SIZE: usize = 1 << 20;

fn data(seed: u8) -> Vec<u8> {
    (0..SIZE).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

/// A scratch stack whose lower layer holds `f` (1 MiB of `data(seed)`), mounted with
/// `passthrough=all` when `mount`: the scratch, its l, u, w and m paths, and the guard.
fn stack(seed: u8, mount: bool) -> (Scratch, [PathBuf; 4], Option<Mounted>) {
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::write(l.join("f"), data(seed)).unwrap();
    let g = mount.then(|| mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "passthrough=all"));
    (s, [l, u, w, m], g)
}

/// Reads a lower file directly, so that its pages are cached.
fn warm(path: &Path) {
    let _ = fs::read(path).unwrap();
}

#[test]
fn lower_files_are_passed_through_only_with_all() {
    if !can_mount() || !root_or_skip("FUSE passthrough needs root") {
        return;
    }
    let (_s, [l, u, w, m], _) = stack(1, false);
    fs::write(u.join("up"), data(2)).unwrap();
    warm(&l.join("f"));
    warm(&u.join("up"));

    // Default: the server serves lower files (its FUSE page cache starts empty); upper files
    // are passed through.
    let mut g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
    let n = SIZE / 4096;
    let r = resident(&m.join("f"));
    assert_eq!(r, 0, "default mount: a lower file is served, not passed through ({r}/{n} resident)");
    assert_eq!(resident(&m.join("up")), n, "default mount: an upper file is passed through");
    g.unmount();

    let mut g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "passthrough=all");
    let f = File::open(m.join("f")).unwrap();
    assert_eq!(resident(&m.join("f")), n, "passthrough=all: a lower file opened read-only is passed through");
    let mut buf = vec![0u8; SIZE];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf == data(1));
    drop(f);
    g.unmount();
    assert!(!u.join("f").exists(), "reading copied nothing up");
}

/// A read-write open of a lower file held open read-only (and passed through to the lower
/// file): the open succeeds, on a second kernel inode with the same inode number; new opens
/// see the written data; the early descriptor keeps reading the lower file; the upper copy
/// and the lower file end as kernel overlayfs leaves them.
#[test]
fn a_copy_up_under_a_passed_through_reader_opens_a_second_inode() {
    if !can_mount() || !root_or_skip("FUSE passthrough needs root") {
        return;
    }
    let (s, [l, u, _, m], g) = stack(3, true);
    let mut g = g.unwrap();
    let orig = data(3);
    let p = m.join("f");
    let ino = fs::metadata(&p).unwrap().ino();
    let early = File::open(&p).unwrap();
    let mut head = [0u8; 16];
    early.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head[..], orig[..16]);

    let rw = OpenOptions::new().read(true).write(true).open(&p).expect("read-write open under a reader");
    rw.write_all_at(b"written through!", 0).unwrap();
    assert_eq!(rw.metadata().unwrap().ino(), ino, "the second inode shows the node's number");
    assert_eq!(early.metadata().unwrap().ino(), ino);
    assert_eq!(fs::metadata(&p).unwrap().ino(), ino);

    let mut want = orig.clone();
    want[..16].copy_from_slice(b"written through!");
    assert!(fs::read(&p).unwrap() == want, "a new open reads the copy");
    early.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head[..], orig[..16], "the early descriptor stays on the lower file");
    // The new inode is passed through to the upper copy.
    assert_eq!(resident(&p), SIZE / 4096);

    // Reopening the early descriptor through /proc cannot be retried by path: now that the
    // node has an upper copy, its inode cannot pass through to it, so the open gets ESTALE.
    let via_proc = format!("/proc/self/fd/{}", early.as_raw_fd());
    for write in [false, true] {
        let e = OpenOptions::new().read(!write).write(write).open(&via_proc).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "{e}");
    }

    // More cycles on the same name, each under a fresh reader: every one lands.
    for i in 0..20u8 {
        let r = File::open(&p).unwrap();
        let w2 = OpenOptions::new().write(true).open(&p).unwrap();
        w2.write_all_at(&[i], 100).unwrap();
        want[100] = i;
        drop((r, w2));
    }
    assert!(fs::read(&p).unwrap() == want);
    drop((early, rw));
    g.unmount();
    assert!(fs::read(u.join("f")).unwrap() == want, "upper copy");
    assert!(fs::read(l.join("f")).unwrap() == orig, "lower untouched");

    // The same steps on kernel overlayfs leave the same upper file (there the early
    // descriptor would have followed the copy-up).
    let (k, ku, kw) = (s.path("k"), s.path("ku"), s.path("kw"));
    if can_kernel_overlay() {
        let mut kg = mount_overlay(std::slice::from_ref(&l), Some((&ku, &kw)), &k);
        let early = File::open(k.join("f")).unwrap();
        let rw = OpenOptions::new().read(true).write(true).open(k.join("f")).unwrap();
        rw.write_all_at(b"written through!", 0).unwrap();
        for i in 0..20u8 {
            let w2 = OpenOptions::new().write(true).open(k.join("f")).unwrap();
            w2.write_all_at(&[i], 100).unwrap();
        }
        drop((early, rw));
        kg.unmount();
        assert!(fs::read(ku.join("f")).unwrap() == fs::read(u.join("f")).unwrap());
    }
}

/// Renames, unlinks and hard links of a file whose kernel inode was split keep working on both
/// inodes: the early descriptor's fstat follows the node, and the name's lookups answer the
/// second inode until it is forgotten.
#[test]
fn a_split_file_can_be_renamed_linked_and_removed() {
    if !can_mount() || !root_or_skip("FUSE passthrough needs root") {
        return;
    }
    let (_s, [l, _, _, m], g) = stack(4, true);
    let mut g = g.unwrap();
    let early = File::open(m.join("f")).unwrap();
    assert_eq!(early.metadata().unwrap().len(), SIZE as u64);
    // Writes through the second inode pass the server by: the early descriptor's inode must
    // not keep the attributes it had (the kernel's timeout is long here).
    let size = |f: &File| f.metadata().unwrap().len();
    let w1 = OpenOptions::new().write(true).open(m.join("f")).unwrap();
    w1.write_all_at(b"x", 5).unwrap();
    drop(w1);
    assert_eq!(size(&early), SIZE as u64);
    let rw = OpenOptions::new().append(true).open(m.join("f")).unwrap();
    std::io::Write::write_all(&mut &rw, b"more").unwrap();
    assert_eq!(size(&early), SIZE as u64 + 4, "fstat of the early descriptor follows the node");
    rw.set_len(7).unwrap();
    assert_eq!(size(&early), 7);
    std::io::Write::write_all(&mut &rw, b"tail").unwrap();
    let size = 11;
    assert_eq!(early.metadata().unwrap().len(), size);
    fs::set_permissions(m.join("f"), std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    assert_eq!(early.metadata().unwrap().mode() & 0o777, 0o640);
    fs::hard_link(m.join("f"), m.join("g")).unwrap();
    assert_eq!(fs::metadata(m.join("g")).unwrap().nlink(), 2);
    fs::rename(m.join("f"), m.join("h")).unwrap();
    assert_eq!(fs::metadata(m.join("h")).unwrap().len(), size);
    assert_eq!(fs::metadata(m.join("f")).unwrap_err().kind(), ErrorKind::NotFound);
    fs::remove_file(m.join("h")).unwrap();
    fs::remove_file(m.join("g")).unwrap();
    assert_eq!(early.metadata().unwrap().nlink(), 0);
    drop((early, rw));
    let names: Vec<_> = fs::read_dir(&m).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(names.is_empty(), "{names:?}");
    g.unmount();
    assert!(l.join("f").exists());
}

/// Names the random test works on: lower files (`f*`, `d/g`) and names made by it.
const NAMES: [&str; 7] = ["f0", "f1", "f2", "d/g", "n0", "n1", "d/n2"];

/// Random operations on big lower files while read-only descriptors are held open (each hold
/// passes its file through to the lower file, so the writes that follow split nodes), run on
/// kernel overlayfs and on layerfs `passthrough=all` side by side: every result, every stat of
/// the names touched, and at the end the merged trees and the upper dirs must agree. Reads
/// through the held descriptors must succeed (their data is the lower file's here, the copy's
/// on the kernel, so it is not compared).
#[test]
fn random_writes_under_held_readers_match_kernel() {
    if !can_mount() || !root_or_skip("FUSE passthrough needs root") || !can_kernel_overlay() {
        return;
    }
    let cases: u64 =
        std::env::var("LAYERFS_PASSTHROUGH_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(24);
    for seed in 0..cases {
        run_case(seed);
    }
}

fn run_case(seed: u64) {
    let s = Scratch::new();
    let l = s.path("l");
    fs::create_dir_all(l.join("d")).unwrap();
    for (i, n) in ["f0", "f1", "f2", "d/g"].iter().enumerate() {
        let mut d = data(i as u8);
        d.truncate(192 << 10);
        fs::write(l.join(n), d).unwrap();
    }
    let (ku, kw, k) = (s.path("ku"), s.path("kw"), s.path("k"));
    let (u, w, m) = (s.path("u"), s.path("w"), s.path("m"));
    let mut kg = mount_overlay(std::slice::from_ref(&l), Some((&ku, &kw)), &k);
    let mut g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "passthrough=all");
    let mut rng = Rng(0x5eed_0000 + seed);
    let mut held: Vec<(File, File, &str)> = Vec::new();
    let mut log = Vec::new();
    for step in 0..40 {
        // Half the time a name a reader is held on (as it was named when opened).
        let a = match held.len() {
            0 => *rng.pick(&NAMES),
            n if rng.below(2) == 0 => held[rng.below(n as u64) as usize].2,
            _ => *rng.pick(&NAMES),
        };
        let b = *rng.pick(&NAMES);
        let op = rng.below(9);
        let off = rng.below(200 << 10);
        let byte = rng.below(256) as u8;
        log.push(format!("{step}: op {op} {a} {b} off {off}"));
        let run = |root: &Path| -> i32 {
            let (pa, pb) = (root.join(a), root.join(b));
            let r = match op {
                0 | 1 => File::open(&pa).map(|_| ()),
                2 => OpenOptions::new().write(true).open(&pa).and_then(|f| f.write_all_at(&[byte], off)),
                3 => OpenOptions::new()
                    .append(true)
                    .open(&pa)
                    .and_then(|mut f| std::io::Write::write_all(&mut f, &[byte; 3])),
                4 => OpenOptions::new().write(true).open(&pa).and_then(|f| f.set_len(off / 2)),
                5 => fs::set_permissions(
                    &pa,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600 | (off as u32 & 0o7)),
                ),
                6 => fs::rename(&pa, &pb),
                7 => fs::hard_link(&pa, &pb),
                _ => fs::remove_file(&pa),
            };
            errno(&r)
        };
        let (ek, el) = (run(&k), run(&m));
        assert_eq!(ek, el, "seed {seed}: results differ (kernel, layerfs)\n{}", log.join("\n"));
        if op <= 1 && ek == 0 {
            // Hold a reader on both.
            if let (Ok(fk), Ok(fl)) = (File::open(k.join(a)), File::open(m.join(a))) {
                held.push((fk, fl, a));
                if held.len() > 6 {
                    held.remove(0);
                }
            }
        }
        for (fk, fl, _) in &held {
            let mut buf = [0u8; 512];
            fl.read_at(&mut buf, off)
                .unwrap_or_else(|e| panic!("seed {seed}: held read: {e}\n{}", log.join("\n")));
            // fstat follows the file on both (on layerfs the held inode may be the old one).
            let st = |f: &File| f.metadata().map(|md| (md.len(), md.mode(), md.nlink(), md.ino())).unwrap();
            let (sk, sl) = (st(fk), st(fl));
            assert_eq!(
                (sk.0, sk.1, sk.2),
                (sl.0, sl.1, sl.2),
                "seed {seed}: fstat of a held descriptor differs (kernel, layerfs)\n{}",
                log.join("\n")
            );
        }
        for n in [a, b] {
            let sk = fs::metadata(k.join(n)).map(|md| (md.len(), md.mode(), md.nlink()));
            let sl = fs::metadata(m.join(n)).map(|md| (md.len(), md.mode(), md.nlink()));
            assert_eq!(
                sk.as_ref().map_err(|e| e.raw_os_error()),
                sl.as_ref().map_err(|e| e.raw_os_error()),
                "seed {seed}: stat of {n} differs (kernel, layerfs)\n{}",
                log.join("\n")
            );
        }
    }
    drop(held);
    let d = diff_snapshots("kernel", &snapshot(&k, false), "layerfs", &snapshot(&m, false));
    assert!(d.is_empty(), "seed {seed}: merged trees differ: {d:#?}\n{}", log.join("\n"));
    kg.unmount();
    g.unmount();
    let d = diff_snapshots("kernel", &canonical_upper(&ku), "layerfs", &canonical_upper(&u));
    assert!(d.is_empty(), "seed {seed}: uppers differ: {d:#?}\n{}", log.join("\n"));
}

/// A writer opened with O_DIRECT may clear it with `fcntl(F_SETFL)` and then write unaligned
/// (GNU dd does so for the last partial block of `oflag=direct`). The kernel gives a
/// passthrough backing file the open's flags once, so such a writer is served by the server:
/// the unaligned write failed with EINVAL and dd left a truncated file.
#[test]
fn an_o_direct_writer_can_clear_o_direct() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::write(l.join("low"), vec![7u8; 10_000]).unwrap();
    fs::write(l.join("src"), &data(3)[..10_000]).unwrap();
    let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
    // dd itself: a new file, and over a lower file (copy-up, then the open).
    for out in ["new", "low"] {
        let st = std::process::Command::new("dd")
            .arg(format!("if={}", m.join("src").display()))
            .arg(format!("of={}", m.join(out).display()))
            .args(["bs=4096", "oflag=direct", "status=none"])
            .status()
            .unwrap();
        assert!(st.success(), "dd oflag=direct to {out}");
        assert_eq!(fs::read(m.join(out)).unwrap(), data(3)[..10_000], "{out}");
    }
    // By hand, on an upper file opened again: aligned direct write, O_DIRECT off, a short one.
    let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
    // SAFETY: a non-zero-sized layout; freed below.
    let buf = unsafe { std::alloc::alloc_zeroed(layout) };
    let block = unsafe { std::slice::from_raw_parts_mut(buf, 4096) };
    block.fill(b'a');
    use std::os::unix::fs::OpenOptionsExt;
    let f = OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(m.join("new")).unwrap();
    f.write_all_at(block, 0).unwrap();
    // SAFETY: plain fcntl on a live fd.
    unsafe {
        let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        assert_eq!(libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl & !libc::O_DIRECT), 0);
    }
    f.write_all_at(b"tail", 4096).unwrap();
    drop(f);
    unsafe { std::alloc::dealloc(buf, layout) };
    let got = fs::read(m.join("new")).unwrap();
    assert_eq!(&got[..4096], &[b'a'; 4096][..]);
    assert_eq!(&got[4096..4100], b"tail");
    assert_eq!(got.len(), 10_000);
}

/// A shared mapping that outlives its read-write descriptor (passed through: the mapping is
/// the upper file's) and a later open of the same small file: reads through it see the
/// mapping's writes, and the mapping's writes survive another shared mapping made through
/// it, as on kernel overlayfs. The later read-only open stored the file into FUSE's page
/// cache, which the first mapping's writes never reached: reads came back stale, and the
/// second mapping's write-back of its stale page lost them. Run on a new file and on a
/// small lower file, in the default mode and with `passthrough=all`, against the kernel.
#[test]
fn a_mapping_that_outlives_its_descriptor_stays_coherent_with_later_opens() {
    if !can_mount() || !can_kernel_overlay() || !root_or_skip("passthrough") {
        return;
    }
    fn map(f: &File) -> *mut u8 {
        // SAFETY: a new shared mapping of 4096 bytes of an open file; unmapped by the caller.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        p.cast()
    }
    fn sync_unmap(p: *mut u8, unmap: bool) {
        // SAFETY: `p` is a live 4096-byte mapping from `map`.
        unsafe {
            assert_eq!(libc::msync(p.cast(), 4096, libc::MS_SYNC), 0);
            if unmap {
                libc::munmap(p.cast(), 4096);
            }
        }
    }
    let at = |f: &File, off: u64, n: usize| {
        let mut b = vec![0u8; n];
        f.read_exact_at(&mut b, off).unwrap();
        String::from_utf8_lossy(&b).into_owned()
    };
    // What one side shows: reads along the way and the file at the end.
    let scenario = |p: &Path| -> Vec<String> {
        let rw = || OpenOptions::new().read(true).write(true).open(p).unwrap();
        let a = {
            let f = rw();
            f.set_len(4096).unwrap();
            map(&f)
        };
        // SAFETY (all writes below): `a` and `b` are live 4096-byte shared mappings.
        unsafe { std::ptr::copy_nonoverlapping(b"one".as_ptr(), a, 3) };
        let r = File::open(p).unwrap();
        let mut seen = vec![at(&r, 0, 3)];
        unsafe { std::ptr::copy_nonoverlapping(b"two".as_ptr(), a, 3) };
        sync_unmap(a, false);
        seen.push(at(&r, 0, 3));
        let w = rw();
        let b = map(&w);
        unsafe {
            *a.add(100) = b'A';
            *b = b'M';
        }
        sync_unmap(b, true);
        sync_unmap(a, true);
        drop((w, r));
        let f = File::open(p).unwrap();
        seen.push(at(&f, 0, 3) + &at(&f, 100, 1));
        seen
    };
    let s = Scratch::new();
    let l = s.path("l");
    fs::write(l.join("small"), vec![b'.'; 4000]).unwrap();
    let mut results = Vec::new();
    for (tag, opts) in [("kernel", None), ("default", Some("")), ("all", Some("passthrough=all"))] {
        let (u, w, m) =
            (s.path(&format!("{tag}-u")), s.path(&format!("{tag}-w")), s.path(&format!("{tag}-m")));
        for d in [&u, &w, &m] {
            fs::create_dir_all(d).unwrap();
        }
        let _g = match opts {
            None => mount_overlay(std::slice::from_ref(&l), Some((&u, &w)), &m),
            Some(o) => mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, o),
        };
        fs::write(m.join("new"), b"").unwrap();
        let got = [scenario(&m.join("new")), scenario(&m.join("small"))];
        results.push((tag, got));
    }
    let want = vec!["one".to_string(), "two".into(), "MwoA".into()];
    for (tag, got) in results {
        assert_eq!(got, [want.clone(), want.clone()], "{tag}");
    }
}
