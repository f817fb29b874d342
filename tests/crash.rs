//! Crash atomicity of copy-up: the layerfs server is killed with SIGKILL while it copies a
//! 512 MiB lower file up (triggered by appending one byte through the mount). After unmounting
//! the dead mount and mounting again, the file must read as either the old content or the new
//! content (never a mix), the upper must hold either no copy or a complete one, the lower must
//! be untouched, and `WORKDIR/work` must be empty after the remount.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};

const SIZE: usize = 512 << 20;
const CHUNK: usize = 8 << 20;

fn hash_file(p: &Path) -> (u64, String) {
    let mut f = fs::File::open(p).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        n += k as u64;
        h.update(&buf[..k]);
    }
    (n, format!("{:x}", h.finalize()))
}

/// Writes the big lower file (distinct data in every chunk) and returns the hashes of the old
/// content and of the old content plus the appended byte.
fn make_big(p: &Path) -> (String, String) {
    let mut f = fs::File::create(p).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    for c in 0..SIZE / CHUNK {
        for (i, w) in buf.chunks_mut(8).enumerate() {
            w.copy_from_slice(
                &(((c * CHUNK / 8 + i) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_le_bytes(),
            );
        }
        f.write_all(&buf).unwrap();
        h.update(&buf);
    }
    f.sync_all().unwrap();
    let old = h.clone().finalize();
    h.update(b"!");
    (format!("{old:x}"), format!("{:x}", h.finalize()))
}

fn work_entries(w: &Path) -> Vec<(String, u64)> {
    fs::read_dir(w.join("work"))
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    (e.file_name().to_string_lossy().to_string(), e.metadata().map(|m| m.len()).unwrap_or(0))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One crash round: kill when the temporary copy in WORKDIR/work has at least `min_bytes`.
/// Returns how many bytes the temporary copy had when the server was killed (None when the
/// copy-up finished before it could be caught).
fn crash_round(s: &Scratch, round: u32, min_bytes: u64, old: &str, new: &str) -> Option<u64> {
    let l = s.path("l");
    let (u, w, m) =
        (s.path(&format!("u{round}")), s.path(&format!("w{round}")), s.path(&format!("m{round}")));
    let opts = format!("lowerdir={},upperdir={},workdir={}", l.display(), u.display(), w.display());
    let mut child = spawn_layerfs_fg(&opts, &m, &[], Stdio::inherit());
    let target = m.join("big");
    let writer = std::thread::spawn(move || {
        let r = fs::OpenOptions::new().append(true).custom_flags(libc::O_CLOEXEC).open(&target);
        r.and_then(|mut f| f.write_all(b"!"))
    });
    // Watch WORKDIR/work for the temporary copy, then SIGKILL the server.
    let t = Instant::now();
    let mut caught = None;
    loop {
        let ents = work_entries(&w);
        if let Some((_, len)) = ents.iter().find(|(n, _)| n.starts_with('#')) {
            if *len >= min_bytes {
                caught = Some(*len);
                break;
            }
        }
        if writer.is_finished() || t.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let pid = child.id() as i32;
    // SAFETY: signalling the child we spawned.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = child.wait();
    let wr = writer.join().unwrap();
    eprintln!(
        "round {round}: killed with temp copy at {caught:?} bytes; writer result: {:?}",
        wr.as_ref().err()
    );
    // The dead mount: lazy unmount (fusermount3 -u refuses nothing here, but be sure).
    let ok = Command::new("fusermount3").arg("-u").arg(&m).status().map(|s| s.success()).unwrap_or(false);
    if !ok || is_mounted(&m) {
        let _ = Command::new("umount").arg("-l").arg(&m).status();
    }
    assert!(!is_mounted(&m), "dead mount still there");

    // The upper: nothing, or a complete copy (old content, or old content plus the byte).
    let up = u.join("big");
    if up.exists() {
        let (_, h) = hash_file(&up);
        assert!(h == old || h == new, "round {round}: upper copy is partial or mixed (hash {h})");
    }
    // Remount: workdir litter is cleaned, the file reads old or new.
    {
        let _mnt = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
        let left = work_entries(&w);
        assert!(left.is_empty(), "round {round}: WORKDIR/work not empty after remount: {left:?}");
        let (n, h) = hash_file(&m.join("big"));
        assert!(
            (h == old && n == SIZE as u64) || (h == new && n == SIZE as u64 + 1),
            "round {round}: file reads neither old nor new content after crash (len {n}, hash {h})"
        );
        // And it is still writable: the interrupted append can be redone.
        let mut f = fs::OpenOptions::new().append(true).open(m.join("big")).unwrap();
        f.write_all(b"!").unwrap();
    }
    assert!(!is_mounted(&m));
    caught
}

#[test]
fn copy_up_killed_midway_is_atomic() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let l = s.path("l");
    let t = Instant::now();
    let (old, new) = make_big(&l.join("big"));
    eprintln!("made {} MiB lower file in {:.1}s", SIZE >> 20, t.elapsed().as_secs_f64());
    let mut caught_any = false;
    // Kill as soon as the temporary entry shows, then once it holds some data, then late.
    for (round, min) in [(0u32, 0u64), (1, 1 << 20), (2, 256 << 20)] {
        caught_any |= crash_round(&s, round, min, &old, &new).is_some();
    }
    let (n, h) = hash_file(&l.join("big"));
    assert_eq!((n, h.as_str()), (SIZE as u64, old.as_str()), "lower file changed");
    assert!(caught_any, "the copy-up was never caught in progress (too fast here?)");
}

/// Spawns `layerfs -f` on the given dirs; returns the child once the mount serves.
fn spawn_foreground(l: &Path, u: &Path, w: &Path, m: &Path) -> std::process::Child {
    let opts = format!("lowerdir={},upperdir={},workdir={}", l.display(), u.display(), w.display());
    spawn_layerfs_fg(&opts, m, &[], Stdio::inherit())
}

fn kill_and_clear(child: &mut std::process::Child, m: &Path) {
    // SAFETY: signalling the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    let ok = Command::new("fusermount3").arg("-u").arg(m).status().map(|s| s.success()).unwrap_or(false);
    if !ok || is_mounted(m) {
        let _ = Command::new("umount").arg("-l").arg(m).status();
    }
    assert!(!is_mounted(m), "dead mount still there");
}

/// kill -9 in the middle of writes and renames: what an fsync made durable is there after the
/// next mount, every file renamed back and forth exists under exactly one of its two names
/// with its whole content, and workdir is clean.
#[test]
fn kill_mid_write_and_rename_loses_nothing_fsynced() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    for i in 0..20 {
        fs::write(l.join(format!("r{i}-a")), format!("lower file {i}\n").repeat(1000)).unwrap();
    }
    let mut child = spawn_foreground(&l, &u, &w, &m);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Writer: appends numbered records, fsyncing every 16th; `fsynced` is the last fsynced.
    let fsynced = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (mp, st, fs_n) = (m.clone(), stop.clone(), fsynced.clone());
    let writer = std::thread::spawn(move || {
        let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(mp.join("log")) else {
            return;
        };
        let mut n = 0u64;
        while !st.load(std::sync::atomic::Ordering::Relaxed) {
            if f.write_all(format!("record {n:08}\n").as_bytes()).is_err() {
                break;
            }
            n += 1;
            if n % 16 == 0 {
                if f.sync_all().is_err() {
                    break;
                }
                fs_n.store(n, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    // Renamer: moves lower files (copy-up + whiteout) and back, over and over.
    let (mp, st) = (m.clone(), stop.clone());
    let renamer = std::thread::spawn(move || {
        let mut k = 0u64;
        while !st.load(std::sync::atomic::Ordering::Relaxed) {
            let i = k % 20;
            let (a, b) = (mp.join(format!("r{i}-a")), mp.join(format!("r{i}-b")));
            let _ = fs::rename(&a, &b).or_else(|_| fs::rename(&b, &a));
            k += 1;
        }
    });
    // 700 ms of both, and at least one fsync done (a loaded disk may take longer for it).
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(700)
        || (fsynced.load(std::sync::atomic::Ordering::Relaxed) == 0 && t.elapsed() < Duration::from_secs(30))
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    kill_and_clear(&mut child, &m);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    renamer.join().unwrap();
    let synced = fsynced.load(std::sync::atomic::Ordering::Relaxed);
    assert!(synced > 0, "no record was fsynced before the kill");

    let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
    assert!(work_entries(&w).is_empty(), "WORKDIR/work not empty after remount");
    let log = fs::read_to_string(m.join("log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() as u64 >= synced, "fsynced records lost: {} < {synced}", lines.len());
    for (i, line) in lines.iter().enumerate().take(synced as usize) {
        assert_eq!(*line, format!("record {i:08}"), "record {i} damaged");
    }
    for i in 0..20 {
        let a = fs::read_to_string(m.join(format!("r{i}-a")));
        let b = fs::read_to_string(m.join(format!("r{i}-b")));
        let want = format!("lower file {i}\n").repeat(1000);
        match (a, b) {
            (Ok(x), Err(_)) | (Err(_), Ok(x)) => assert_eq!(x, want, "file {i} content"),
            (Ok(_), Ok(_)) => panic!("file {i} exists under both names"),
            (Err(_), Err(_)) => panic!("file {i} lost under both names"),
        }
    }
    eprintln!("fsynced records: {synced}, records found: {}", lines.len());
}

/// The merged view below `m`, as sorted relative paths (with file contents).
fn view(m: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, d: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if e.file_type().unwrap().is_dir() {
                out.push(format!("{rel}/"));
                walk(root, &p, out);
            } else {
                out.push(format!("{rel}={}", fs::read_to_string(&p).unwrap_or_default()));
            }
        }
    }
    walk(m, m, &mut out);
    out.sort();
    out
}

/// kill -9 at every step of a rename whose target the upper holds something for: a directory
/// moved onto a deleted lower directory (its whiteout) and onto one whose upper holds only
/// whiteouts, and a lower file renamed with `whiteout=wh` (`.wh.` files). strace kills the
/// server at the Nth rename/unlink it makes. After a remount the view is the one before or
/// the one after, never the deleted lower directory back (the target was removed, then the
/// rename made, as two steps) nor the file under both names (renamed, then its `.wh.` made).
#[test]
fn kill_at_each_step_of_a_rename_over_a_deleted_name() {
    if !can_mount() || !is_root() {
        return;
    }
    if Command::new("strace").arg("-V").output().is_err() {
        assert!(!must_mount(), "strace is needed here (scripts/deps.sh installs it)");
        return;
    }
    struct Case {
        opts: &'static str,
        setup: &'static str,
        from: &'static str,
        to: &'static str,
        before: &'static [&'static str],
        after: &'static [&'static str],
    }
    let cases = [
        Case {
            opts: "",
            setup: "rm -rf t && mkdir n && echo new > n/new",
            from: "n",
            to: "t",
            before: &["f=AAA\n", "n/", "n/new=new\n"],
            after: &["f=AAA\n", "t/", "t/new=new\n"],
        },
        Case {
            opts: "",
            setup: "rm t/old && mkdir n && echo new > n/new",
            from: "n",
            to: "t",
            before: &["f=AAA\n", "n/", "n/new=new\n", "t/"],
            after: &["f=AAA\n", "t/", "t/new=new\n"],
        },
        Case {
            opts: ",whiteout=wh",
            setup: "true",
            from: "f",
            to: "g",
            before: &["f=AAA\n", "t/", "t/old=old\n"],
            after: &["g=AAA\n", "t/", "t/old=old\n"],
        },
    ];
    for (ci, c) in cases.iter().enumerate() {
        let mut seen_kill = false;
        for when in 1..=6 {
            let s = Scratch::new();
            let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
            fs::create_dir_all(l.join("t")).unwrap();
            fs::write(l.join("t/old"), "old\n").unwrap();
            fs::write(l.join("f"), "AAA\n").unwrap();
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}{}",
                l.display(),
                u.display(),
                w.display(),
                c.opts
            );
            let mut child = spawn_layerfs_fg(&opts, &m, &[], Stdio::null());
            let st = Command::new("sh").arg("-c").arg(c.setup).current_dir(&m).status().unwrap();
            assert!(st.success(), "case {ci}: setup");
            let mut strace = Command::new("strace")
                .args(["-q", "-f", "-o", "/dev/null", "-e", "trace=renameat2,renameat,unlinkat"])
                .arg("-e")
                .arg(format!("inject=renameat2,renameat,unlinkat:signal=KILL:when={when}"))
                .arg("-p")
                .arg(child.id().to_string())
                .spawn()
                .unwrap();
            wait_traced(child.id());
            let renamed = fs::rename(m.join(c.from), m.join(c.to));
            // A failed rename is the kill (the server died before answering): wait for it.
            let t = Instant::now();
            std::thread::sleep(Duration::from_millis(200));
            while renamed.is_err()
                && child.try_wait().unwrap().is_none()
                && t.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let killed = child.try_wait().unwrap().is_some();
            let _ = strace.kill();
            let _ = strace.wait();
            kill_and_clear(&mut child, &m);
            seen_kill |= killed;
            let mut g = spawn_foreground(&l, &u, &w, &m);
            let v = view(&m);
            kill_and_clear(&mut g, &m);
            let (b, a): (Vec<String>, Vec<String>) = (
                c.before.iter().map(|x| x.to_string()).collect(),
                c.after.iter().map(|x| x.to_string()).collect(),
            );
            assert!(v == b || v == a, "case {ci}, killed at step {when} ({killed}): {v:?}");
            if !killed {
                assert_eq!(v, a, "case {ci}: the rename completed");
                break;
            }
        }
        assert!(seen_kill, "case {ci}: strace never killed the server");
    }
}

/// Waits (30 s at most) until every thread of process `pid` has a tracer (`strace -f -p`
/// attaches to them one by one).
fn wait_traced(pid: u32) {
    let traced = || {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return false };
        tasks.flatten().all(|t| {
            fs::read_to_string(t.path().join("status")).is_ok_and(|st| {
                st.lines().any(|l| l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0"))
            })
        })
    };
    let t = Instant::now();
    while !traced() {
        assert!(t.elapsed() < Duration::from_secs(30), "strace did not attach to the server in 30 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}
