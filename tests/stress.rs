//! stress-ng's filesystem stressors on a layerfs mount, in a merged directory whose lower layer
//! holds files (so the directory is copied up under load). Each stressor runs for a few seconds
//! with `--verify` (where stress-ng supports it); each must exit 0 with no `fail:` line. After
//! them the lower files read back unchanged through the mount, the lower layer is untouched, the
//! server still answers, and `layerfs check` finds the upper clean.
//!
//! Stressors this stress-ng lacks are skipped and listed.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// (stressor, workers, extra options). Sizes keep each run small on a 2-core VM.
const STRESSORS: &[(&str, u32, &[&str])] = &[
    ("dir", 1, &[]),
    ("dentry", 1, &[]),
    ("rename", 1, &[]),
    ("link", 1, &[]),
    ("symlink", 1, &[]),
    ("xattr", 1, &[]),
    ("hdd", 1, &["--hdd-bytes", "32M"]),
    ("fallocate", 1, &["--fallocate-bytes", "16M"]),
    ("seek", 1, &["--seek-size", "16M"]),
    ("flock", 2, &[]),
    ("lockf", 2, &[]),
    ("mmap", 1, &["--mmap-bytes", "16M"]),
    ("chmod", 1, &[]),
    ("chown", 1, &[]),
    ("utime", 1, &[]),
];

const SECS: u32 = 4;

fn available() -> Option<Vec<String>> {
    let out = Command::new("stress-ng").arg("--stressors").output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect())
}

fn run_stressor(dir: &Path, name: &str, workers: u32, extra: &[&str]) -> (Option<i32>, String, Duration) {
    let t0 = Instant::now();
    let mut child = Command::new("stress-ng")
        .arg(format!("--{name}"))
        .arg(workers.to_string())
        .args(extra)
        .args(["--timeout", &format!("{SECS}s"), "--verify", "--metrics-brief"])
        .arg("--temp-path")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stress-ng");
    // Bounded: a stressor stuck in the filesystem is a failure, not a hang of the suite.
    let limit = Duration::from_secs(SECS as u64 * 6 + 30);
    loop {
        if let Some(_st) = child.try_wait().unwrap() {
            break;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            let log =
                String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            return (None, format!("timed out after {limit:?}\n{log}"), t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), log, t0.elapsed())
}

#[test]
fn stress_ng_filesystem_stressors() {
    if !can_mount() {
        return;
    }
    let Some(avail) = available() else {
        assert!(!must_mount(), "stress-ng is not installed (scripts/deps.sh installs it)");
        eprintln!("skipped: stress-ng not installed");
        return;
    };
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::create_dir_all(l.join("work/sub")).unwrap();
    let mut lower_files = Vec::new();
    for i in 0..20usize {
        let data: Vec<u8> = (0..i * 5000).map(|j| (j * 7 + i) as u8).collect();
        let rel = if i % 2 == 0 { format!("work/lower{i}") } else { format!("work/sub/lower{i}") };
        fs::write(l.join(&rel), &data).unwrap();
        lower_files.push((rel, data));
    }
    let lower_before = snapshot(&l, true);
    let mut guard = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
    let dir = m.join("work");

    let mut failures = Vec::new();
    let mut skipped = Vec::new();
    let mut summary = Vec::new();
    let t_all = Instant::now();
    for (name, workers, extra) in STRESSORS {
        if !avail.iter().any(|a| a == name) {
            skipped.push(*name);
            continue;
        }
        let (code, log, took) = run_stressor(&dir, name, *workers, extra);
        let bogo = log
            .lines()
            .find(|l| l.contains("metrc:") && l.split_whitespace().nth(3) == Some(name))
            .and_then(|l| l.split_whitespace().nth(4).map(str::to_owned))
            .unwrap_or_else(|| "?".into());
        let fail_lines: Vec<&str> =
            log.lines().filter(|l| l.contains(" fail:") || l.contains("FAIL")).collect();
        summary.push(format!(
            "  {name:<10} x{workers} exit {code:?} bogo-ops {bogo} in {:.1}s",
            took.as_secs_f64()
        ));
        if code != Some(0) || !fail_lines.is_empty() {
            failures.push(format!("{name}: exit {code:?}\n{log}"));
        }
    }
    eprintln!("stress-ng on layerfs ({:.1}s total):\n{}", t_all.elapsed().as_secs_f64(), summary.join("\n"));
    if !skipped.is_empty() {
        eprintln!("stressors not in this stress-ng, skipped: {skipped:?}");
    }

    // The mount still answers and the lower files read back unchanged.
    for (rel, data) in &lower_files {
        assert_eq!(&fs::read(m.join(rel)).unwrap(), data, "{rel} changed through the mount");
    }
    fs::write(m.join("alive"), b"y").unwrap();
    assert_eq!(fs::read(m.join("alive")).unwrap(), b"y");
    guard.unmount();
    assert!(failures.is_empty(), "stressors failed:\n{}", failures.join("\n---\n"));
    let d = diff_snapshots("before", &lower_before, "after", &snapshot(&l, true));
    assert!(d.is_empty(), "lower layer changed:\n{}", d.join("\n"));
    let out = Command::new(layerfs_bin()).arg("check").arg(&u).arg("--work").arg(&w).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "layerfs check after stress-ng:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
