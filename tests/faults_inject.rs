//! Fault injection through a real mount: each rule kind fires exactly as specified (errno with
//! a path glob, nth, after_bytes, prob with a seed, delay), rules changed while mounted take
//! effect at once, injected faults are marked in the trace.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn fault(m: &Path, args: &[&str]) -> (bool, String) {
    let o = Command::new(layerfs_bin()).arg("fault").arg(m).args(args).output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

struct Setup {
    _s: Scratch,
    l: PathBuf,
    m: PathBuf,
}

/// A mount with `rules` as its fault file (and `extra` options).
fn mount_with(rules: &str, extra: &str) -> (Setup, Mounted) {
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::write(l.join("lower.txt"), b"lower").unwrap();
    let rf = s.dir.path().join("rules");
    fs::write(&rf, rules).unwrap();
    let mut o = format!("faults={}", rf.display());
    if !extra.is_empty() {
        o = format!("{o},{extra}");
    }
    let mnt = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, &o);
    (Setup { _s: s, l, m }, mnt)
}

fn create(p: &Path) -> i32 {
    errno(&OpenOptions::new().write(true).create_new(true).open(p))
}

#[test]
fn errno_rules_follow_ops_and_path_globs() {
    if !can_mount() {
        return;
    }
    let rules = "# every open or create below /deny fails\nopen,create /deny/** EACCES\n\n\
                 mkdir /ro-* errno=EROFS   # only names starting with ro- at the top\n";
    let (t, mut mnt) = mount_with(rules, "");
    let m = &t.m;
    fs::create_dir(m.join("deny")).unwrap();
    assert_eq!(create(&m.join("deny/f")), libc::EACCES);
    assert_eq!(create(&m.join("allowed")), 0);
    assert_eq!(errno(&fs::create_dir(m.join("ro-x"))), libc::EROFS);
    assert_eq!(errno(&fs::create_dir(m.join("deny/ro-x"))), 0, "the glob is anchored at the root");
    assert_eq!(errno(&fs::create_dir(m.join("rw-x"))), 0);
    // A file that exists below /deny: open fails, stat works.
    fs::write(m.join("deny/ro-x/g"), b"x").unwrap_err();
    assert!(fs::metadata(m.join("deny/ro-x")).is_ok());
    assert_eq!(fs::read(m.join("lower.txt")).unwrap(), b"lower");
    let (ok, list) = fault(m, &["list"]);
    assert!(ok, "{list}");
    assert!(
        list.contains("1: open,create /deny/** EACCES") && list.contains("2: mkdir /ro-* errno=EROFS"),
        "{list}"
    );
    assert!(list.contains("fired=2"), "{list}");
    mnt.unmount();
    assert!(fs::read_dir(&t.l).unwrap().count() == 1, "lower changed");
}

#[test]
fn nth_fails_exactly_the_nth_matching_call() {
    if !can_mount() {
        return;
    }
    let (t, _mnt) = mount_with("create /n/** EIO nth=3\n", "");
    let m = &t.m;
    fs::create_dir(m.join("n")).unwrap();
    assert_eq!(create(&m.join("other")), 0, "outside the glob: not counted");
    let got: Vec<i32> = (1..=5).map(|i| create(&m.join(format!("n/f{i}")))).collect();
    assert_eq!(got, [0, 0, libc::EIO, 0, 0]);
    assert!(!m.join("n/f3").exists());
    assert!(fault(m, &["list"]).1.contains("calls=5 fired=1"));
}

#[test]
fn after_bytes_fails_the_write_that_would_go_beyond_and_everything_after() {
    if !can_mount() {
        return;
    }
    let trace = Scratch::new();
    let tp = trace.dir.path().join("t.jsonl");
    let (t, mut mnt) =
        mount_with("write,create /data/** ENOSPC after_bytes=10M\n", &format!("trace={}", tp.display()));
    let m = &t.m;
    fs::create_dir(m.join("data")).unwrap();
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(m.join("data/big")).unwrap();
    let chunk = vec![7u8; 1 << 20];
    let mut results = Vec::new();
    for _ in 0..12 {
        results.push(errno(&f.write_all(&chunk)));
    }
    drop(f);
    let mut want = vec![0; 10];
    want.extend([libc::ENOSPC, libc::ENOSPC]);
    assert_eq!(results, want);
    assert_eq!(fs::metadata(m.join("data/big")).unwrap().len(), 10 << 20);
    // The rule has tripped: creating under /data fails too, elsewhere works.
    assert_eq!(create(&m.join("data/other")), libc::ENOSPC);
    assert_eq!(create(&m.join("outside")), 0);
    let mut g = OpenOptions::new().append(true).open(m.join("outside")).unwrap();
    g.write_all(&chunk).unwrap();
    drop(g);
    mnt.unmount();
    let text = wait_trace(&tp);
    let injected: Vec<&str> = text.lines().filter(|l| l.contains("\"injected\":true")).collect();
    assert!(injected.iter().any(|l| l.contains("\"op\":\"write\"") && l.contains("\"errno\":\"ENOSPC\"")));
    assert!(
        injected.iter().any(|l| l.contains("\"op\":\"create\"") && l.contains("\"path\":\"/data/other\""))
    );
    assert!(injected.iter().all(|l| l.contains("\"path\":\"/data/")), "{injected:?}");
    drop(t);
}

fn wait_trace(p: &Path) -> String {
    let t0 = Instant::now();
    loop {
        let s = fs::read_to_string(p).unwrap_or_default();
        if s.lines().last().is_some_and(|l| l.starts_with("{\"dropped\":")) {
            return s;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "trace not finished");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn prob_with_a_seed_repeats_exactly() {
    if !can_mount() {
        return;
    }
    let rule = "create /p/** EIO prob=0.3,seed=42";
    let (t, _mnt) = mount_with(&format!("{rule}\n"), "");
    let m = &t.m;
    let run = |dir: &str| -> Vec<bool> {
        fs::create_dir_all(m.join(dir)).unwrap();
        (0..100)
            .map(|i| match create(&m.join(format!("{dir}/f{i}"))) {
                0 => false,
                libc::EIO => true,
                e => panic!("create gave errno {e}"),
            })
            .collect()
    };
    let a = run("p/one");
    let n = a.iter().filter(|x| **x).count();
    assert!((10..=50).contains(&n), "{n} of 100 failed with prob=0.3");
    // The same rule again (fresh counters): the same calls fail.
    assert!(fault(m, &["clear"]).0);
    assert!(fault(m, &["add", rule]).0);
    assert_eq!(run("p/two"), a);
    // Another seed: another pattern.
    assert!(fault(m, &["clear"]).0);
    assert!(fault(m, &["add", "create /p/** EIO prob=0.3,seed=43"]).0);
    assert_ne!(run("p/three"), a);
}

#[test]
fn delay_rules_wait_and_are_traced() {
    if !can_mount() {
        return;
    }
    let trace = Scratch::new();
    let tp = trace.dir.path().join("t.jsonl");
    let (t, mut mnt) = mount_with("open /slow/* delay=200ms\n", &format!("trace={}", tp.display()));
    let m = &t.m;
    fs::create_dir(m.join("slow")).unwrap();
    fs::write(m.join("slow/f"), b"x").unwrap();
    fs::write(m.join("fast"), b"x").unwrap();
    let t0 = Instant::now();
    assert_eq!(fs::read(m.join("slow/f")).unwrap(), b"x", "a delay does not fail the call");
    assert!(t0.elapsed() >= Duration::from_millis(200));
    fs::read(m.join("fast")).unwrap();
    mnt.unmount();
    let text = wait_trace(&tp);
    let delayed: Vec<&str> = text.lines().filter(|l| l.contains("\"delay_us\":200000")).collect();
    assert!(!delayed.is_empty(), "{text}");
    assert!(delayed.iter().all(|l| l.contains("\"path\":\"/slow/f\"") && l.contains("\"injected\":true")));
    assert!(delayed.iter().all(|l| !l.contains("\"errno\"")));
    let fast_open =
        text.lines().find(|l| l.contains("\"op\":\"open\"") && l.contains("\"path\":\"/fast\"")).unwrap();
    assert!(!fast_open.contains("injected"));
}

#[test]
fn rules_changed_while_mounted_take_effect() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::write(l.join("lower.txt"), b"lower").unwrap();
    // Bare `faults`: no rules yet, the control socket is there.
    let mnt = mount_layerfs(&[l], Some((&u, &w)), &m, "faults");
    assert_eq!(fault(&m, &["list"]), (true, String::new()));
    assert!(fs::read(m.join("lower.txt")).is_ok());
    let (ok, out) = fault(&m, &["add", "open", "/lower.txt", "EIO"]);
    assert!(ok && out.contains("added: open /lower.txt EIO"), "{out}");
    assert_eq!(errno(&fs::read(m.join("lower.txt"))), libc::EIO);
    let (ok, out) = fault(&m, &["add", "mkdir * EPERM nth=1"]);
    assert!(ok, "{out}");
    assert_eq!(errno(&fs::create_dir(m.join("d1"))), libc::EPERM);
    assert_eq!(errno(&fs::create_dir(m.join("d1"))), 0);
    let list = fault(&m, &["list"]).1;
    assert!(list.starts_with("1: open /lower.txt EIO  (calls=1 fired=1)\n2: mkdir * EPERM nth=1"), "{list}");
    assert!(fault(&m, &["del", "1"]).0);
    assert!(fs::read(m.join("lower.txt")).is_ok());
    assert!(!fault(&m, &["del", "7"]).0);
    // Bad rules are refused, and change nothing.
    let (ok, out) = fault(&m, &["add", "write /x EBOGUS"]);
    assert!(!ok && out.contains("EBOGUS"), "{out}");
    assert!(fault(&m, &["list"]).1.lines().count() == 1);
    assert!(fault(&m, &["clear"]).0);
    assert_eq!(fault(&m, &["list"]), (true, String::new()));
    drop(mnt);
    // After the unmount the socket is gone (once the server has ended its session).
    let t = std::time::Instant::now();
    let (ok, out) = loop {
        let (ok, out) = fault(&m, &["list"]);
        if (!ok && out.contains("no fault control socket")) || t.elapsed() > Duration::from_secs(30) {
            break (ok, out);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!ok && out.contains("no fault control socket"), "{out}");
}

#[test]
fn a_bad_rule_file_is_refused_before_mounting() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, m) = (s.path("l"), s.path("m"));
    let rf = s.dir.path().join("rules");
    fs::write(&rf, "# fine\nwrite /x EIO\nwrite /y EIO nth=0\n").unwrap();
    let o = Command::new(layerfs_bin())
        .arg("-o")
        .arg(format!("lowerdir={},faults={}", l.display(), rf.display()))
        .arg(&m)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("line 3") && err.lines().count() == 1, "{err}");
    assert!(!is_mounted(&m));
    let o = Command::new(layerfs_bin())
        .arg("-o")
        .arg(format!("lowerdir={},faults=/nonexistent/rules", l.display()))
        .arg(&m)
        .output()
        .unwrap();
    assert!(!o.status.success() && !is_mounted(&m));
}
