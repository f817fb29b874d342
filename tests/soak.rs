//! Concurrency soak: four threads with fixed seeds do random creates, writes, appends, renames,
//! deletes, copy-ups of lower files, links, mkdir/rmdir and readdirs in the same few directories
//! of one layerfs mount for a bounded time (`LAYERFS_SOAK_SECS`, default 20).
//!
//! It must end with no hang (a watchdog fails the test when no operation completes for 30 s, and
//! aborts the FUSE connection so the stuck threads return), no crash (the server still answers),
//! no unexpected errno, then after unmounting: `layerfs check` finds the upper clean, and kernel
//! overlayfs on the same lowers and upper (fresh workdir) shows the same tree as a fresh layerfs
//! mount.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const THREADS: usize = 4;
const STALL: Duration = Duration::from_secs(30);
const DIRS: [&str; 3] = ["d0", "d1", "d2"];

fn make_lowers(base: &Path) -> Vec<PathBuf> {
    let top = base.join("l1");
    let bottom = base.join("l2");
    for d in DIRS {
        for s in ["s0", "s1"] {
            fs::create_dir_all(bottom.join(d).join(s)).unwrap();
        }
        fs::create_dir_all(top.join(d)).unwrap();
        for i in 0..8 {
            let layer = if i % 2 == 0 { &top } else { &bottom };
            let size = [0usize, 10, 4096, 100_000, 300_000][i % 5];
            let data: Vec<u8> = (0..size).map(|j| (j * 31 + i) as u8).collect();
            fs::write(layer.join(d).join(format!("f{i}")), data).unwrap();
        }
        fs::write(bottom.join(d).join("s0/inner"), b"lower inner").unwrap();
    }
    vec![top, bottom]
}

/// Errnos that the namespace races of this workload legitimately produce.
fn expected(errno: i32) -> bool {
    matches!(
        errno,
        libc::ENOENT | libc::EEXIST | libc::ENOTEMPTY | libc::EISDIR | libc::ENOTDIR | libc::EXDEV
    )
}

#[derive(Default)]
struct Counts {
    ok: BTreeMap<&'static str, u64>,
    err: BTreeMap<&'static str, u64>,
    unexpected: Vec<String>,
}

fn rand_path(rng: &mut Rng, m: &Path) -> PathBuf {
    let d = *rng.pick(&DIRS);
    let names = ["f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7", "n0", "n1", "n2", "n3", "n4", "n5"];
    let n = *rng.pick(&names);
    match rng.below(4) {
        0 => m.join(d).join(*rng.pick(&["s0", "s1", "s2"])).join(n),
        _ => m.join(d).join(n),
    }
}

fn rand_dir(rng: &mut Rng, m: &Path) -> PathBuf {
    m.join(*rng.pick(&DIRS)).join(*rng.pick(&["s0", "s1", "s2", "s3"]))
}

fn one_op(rng: &mut Rng, m: &Path, tid: usize, seq: u64) -> (&'static str, std::io::Result<()>) {
    let fill = |len: usize| vec![(tid as u8) << 4 | (seq as u8 & 0xf); len];
    match rng.below(100) {
        0..=11 => {
            let p = rand_path(rng, m);
            let len = rng.below(20_000) as usize;
            ("create", fs::write(&p, fill(len)))
        }
        12..=27 => {
            // A write into an existing file: the first one of a lower file copies it up.
            let p = rand_path(rng, m);
            let off = rng.below(400_000);
            let len = 1 + rng.below(8192) as usize;
            (
                "write",
                fs::OpenOptions::new().write(true).open(&p).and_then(|f| f.write_all_at(&fill(len), off)),
            )
        }
        28..=37 => {
            let p = rand_path(rng, m);
            let len = 1 + rng.below(4096) as usize;
            ("append", fs::OpenOptions::new().append(true).open(&p).and_then(|mut f| f.write_all(&fill(len))))
        }
        38..=47 => {
            let a = rand_path(rng, m);
            let b = rand_path(rng, m);
            ("rename", fs::rename(&a, &b))
        }
        48..=55 => ("unlink", fs::remove_file(rand_path(rng, m))),
        56..=59 => ("mkdir", fs::create_dir(rand_dir(rng, m))),
        60..=63 => ("rmdir", fs::remove_dir(rand_dir(rng, m))),
        64..=65 => {
            let a = rand_dir(rng, m);
            let b = rand_dir(rng, m);
            ("rename-dir", fs::rename(&a, &b))
        }
        66..=69 => {
            let a = rand_path(rng, m);
            let b = rand_path(rng, m);
            ("link", fs::hard_link(&a, &b))
        }
        70..=71 => {
            let p = rand_path(rng, m);
            (
                "truncate",
                fs::OpenOptions::new().write(true).open(&p).and_then(|f| f.set_len(rng.below(200_000))),
            )
        }
        72..=73 => {
            // Metadata-only copy-up.
            let p = rand_path(rng, m);
            let mode = 0o600 | (rng.below(0o100) as u32);
            ("chmod", fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode)))
        }
        74..=85 => {
            let p = rand_path(rng, m);
            let r = fs::File::open(&p).and_then(|mut f| {
                let mut v = Vec::new();
                f.read_to_end(&mut v)?;
                let md = f.metadata()?;
                // A file cannot shrink while we hold it open and read it... it can (truncate by
                // another thread); only check the read is not longer than any size it had.
                if (v.len() as u64) > 1 << 22 {
                    return Err(std::io::Error::other(format!("read {} bytes, size {}", v.len(), md.size())));
                }
                f.seek(SeekFrom::Start(0))?;
                Ok(())
            });
            ("read", r)
        }
        _ => {
            let d = if rng.below(2) == 0 { m.join(*rng.pick(&DIRS)) } else { rand_dir(rng, m) };
            let r = fs::read_dir(&d).and_then(|rd| {
                for e in rd {
                    let e = e?;
                    match fs::symlink_metadata(e.path()) {
                        Ok(_) => {}
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            });
            ("readdir", r)
        }
    }
}

/// Aborts the FUSE connection of a mountpoint (unblocks threads stuck in it).
fn abort_fuse(m: &Path) {
    let Ok(md) = fs::metadata(m) else { return };
    let minor = libc::minor(md.dev());
    let _ = fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), b"1");
}

/// Runs `f` on a thread and waits at most `d` for it.
fn bounded<T: Send + 'static>(d: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(d).ok()
}

/// The default form (char-device whiteouts, as root).
#[test]
fn soak() {
    run_soak("");
}

/// `.wh.` whiteout files (the rootless form); compared with the kernel on a converted copy.
#[test]
fn soak_wh_whiteouts() {
    run_soak("whiteout=wh");
}

/// Regression (found by the soak, fixed in 477296e): the lower has `f`; one thread unlinks and
/// recreates `f`, two threads open and read it. Kernel overlayfs and `whiteout=wh` give only
/// ENOENT; layerfs with char-device whiteouts gave ENXIO (the open reached the 0/0 whiteout
/// device that RENAME_WHITEOUT put under the name) and EIO.
#[test]
fn open_races_unlink_with_chardev_whiteouts() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::write(l.join("f"), b"lower").unwrap();
    let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
    let stop = Arc::new(AtomicBool::new(false));
    let f = m.join("f");
    let churn = {
        let (f, stop) = (f.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = fs::remove_file(&f);
                fs::write(&f, b"x").unwrap();
            }
        })
    };
    let bad = Arc::new(Mutex::new(Vec::new()));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (f, stop, bad) = (f.clone(), stop.clone(), bad.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = fs::read(&f) {
                        if e.raw_os_error() != Some(libc::ENOENT) {
                            bad.lock().unwrap().push(e.to_string());
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    for r in readers {
        r.join().unwrap();
    }
    let bad = bad.lock().unwrap();
    assert!(
        bad.is_empty(),
        "{} opens/reads failed with other than ENOENT, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
}

fn run_soak(opts: &str) {
    if !can_mount() {
        return;
    }
    let secs: u64 = std::env::var("LAYERFS_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let s = Scratch::new();
    let lowers = make_lowers(s.dir.path());
    let (u, w, m) = (s.path("u"), s.path("w"), s.path("m"));
    let mut guard = mount_layerfs(&lowers, Some((&u, &w)), &m, opts);

    let progress = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Mutex::new(Counts::default()));
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for tid in 0..THREADS {
        let (m, progress, stop, counts) = (m.clone(), progress.clone(), stop.clone(), counts.clone());
        handles.push(std::thread::spawn(move || {
            let mut rng = Rng(0x5eed_0000 + tid as u64);
            let mut local = Counts::default();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let (op, r) = one_op(&mut rng, &m, tid, seq);
                match r {
                    Ok(()) => *local.ok.entry(op).or_default() += 1,
                    Err(e) => {
                        *local.err.entry(op).or_default() += 1;
                        let errno = e.raw_os_error().unwrap_or(-1);
                        if !expected(errno) && local.unexpected.len() < 20 {
                            local.unexpected.push(format!("thread {tid} op {seq} {op}: {e}"));
                        }
                    }
                }
                progress.fetch_add(1, Ordering::Relaxed);
            }
            let mut c = counts.lock().unwrap();
            for (k, v) in local.ok {
                *c.ok.entry(k).or_default() += v;
            }
            for (k, v) in local.err {
                *c.err.entry(k).or_default() += v;
            }
            c.unexpected.extend(local.unexpected);
        }));
    }

    // Watchdog: the main thread, checking progress every 200 ms.
    let mut last = (0u64, Instant::now());
    let deadline = t0 + Duration::from_secs(secs);
    let mut stalled = false;
    while handles.iter().any(|h| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(200));
        if Instant::now() >= deadline {
            stop.store(true, Ordering::Relaxed);
        }
        let p = progress.load(Ordering::Relaxed);
        if p != last.0 {
            last = (p, Instant::now());
        } else if last.1.elapsed() > STALL {
            stalled = true;
            break;
        }
    }
    if stalled {
        stop.store(true, Ordering::Relaxed);
        let ps = Command::new("sh")
            .arg("-c")
            .arg("for t in /proc/$(pgrep -n layerfs)/task/*; do echo $t; cat $t/stack 2>/dev/null; done")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        abort_fuse(&m);
        panic!("soak hung: no operation completed for {STALL:?} after {} ops\n{ps}", last.0);
    }
    for h in handles {
        h.join().expect("worker panicked");
    }
    let elapsed = t0.elapsed();

    // Still mounted and answering.
    assert!(is_mounted(&m), "layerfs is no longer mounted after the soak");
    let mm = m.clone();
    let alive = bounded(Duration::from_secs(10), move || {
        fs::write(mm.join("alive"), b"yes")?;
        let v = fs::read(mm.join("alive"))?;
        fs::remove_file(mm.join("alive"))?;
        let n = fs::read_dir(mm.join("d0"))?.count();
        Ok::<_, std::io::Error>((v, n))
    });
    match alive {
        Some(Ok((v, _))) => assert_eq!(v, b"yes"),
        Some(Err(e)) => panic!("server not answering after the soak: {e}"),
        None => {
            abort_fuse(&m);
            panic!("server not answering after the soak (10 s)")
        }
    }

    let c = counts.lock().unwrap();
    let total: u64 = c.ok.values().sum::<u64>() + c.err.values().sum::<u64>();
    eprintln!("soak [{opts}]: {total} ops in {:.1} s by {THREADS} threads", elapsed.as_secs_f64());
    for (k, v) in &c.ok {
        eprintln!("  {k:<11} ok {v:>7}  failed {:>7}", c.err.get(k).copied().unwrap_or(0));
    }
    assert!(c.unexpected.is_empty(), "unexpected errors:\n{}", c.unexpected.join("\n"));
    assert!(total > 1000, "only {total} ops");
    drop(c);
    guard.unmount();
    assert!(!is_mounted(&m));

    // The upper is clean.
    let out = Command::new(layerfs_bin()).arg("check").arg(&u).arg("--work").arg(&w).output().unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "layerfs check:\n{so}{}", String::from_utf8_lossy(&out.stderr));

    // Kernel overlayfs and a fresh layerfs mount agree.
    let fresh = {
        let _g = mount_layerfs(&lowers, Some((&u, &w)), &m, opts);
        snapshot(&m, false)
    };
    if !can_kernel_overlay() {
        return;
    }
    let kw = s.path("kw");
    // The kernel reads only its own whiteout forms: give it a converted copy of a `.wh.` upper.
    let ku = if opts.contains("whiteout=wh") {
        let ku = s.path("ku");
        copy_tree(&u, &ku);
        convert_to_kernel_whiteouts(&ku);
        ku
    } else {
        u.clone()
    };
    let kernel = {
        let _g = mount_overlay(&lowers, Some((&ku, &kw)), &m);
        snapshot(&m, false)
    };
    let d = diff_snapshots("kernel", &kernel, "layerfs", &fresh);
    assert!(d.is_empty(), "kernel overlayfs and layerfs differ after the soak:\n{}", d.join("\n"));
    eprintln!("soak: {} objects in the merged tree, kernel and layerfs agree", fresh.len());
}
