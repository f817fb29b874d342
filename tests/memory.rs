//! The server's memory follows what the kernel holds: after the kernel forgets the inodes of a
//! walked tree, the server's resident memory falls back (not only its node count).
mod common;
use common::*;
use std::fs;
use std::time::{Duration, Instant};

fn rss_kib(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).expect("server status");
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn memory_of_forgotten_nodes_goes_back_to_the_system() {
    if !can_mount() {
        return;
    }
    // Only root can make the kernel drop its inodes (drop_caches).
    if !root_or_skip("drop_caches") {
        return;
    }
    let s = Scratch::new();
    let (l1, l2, u, w, mnt) = (s.path("l1"), s.path("l2"), s.path("u"), s.path("w"), s.path("mnt"));
    for (l, n) in [(&l1, 0), (&l2, 1)] {
        for d in 0..40 {
            let dir = l.join(format!("d{d}"));
            fs::create_dir_all(&dir).unwrap();
            for f in 0..500 {
                fs::write(dir.join(format!("file-{n}-{f}")), b"x").unwrap();
            }
        }
    }
    for p in [&u, &w, &mnt] {
        fs::create_dir_all(p).unwrap();
    }
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        l1.display(),
        l2.display(),
        u.display(),
        w.display()
    );
    let mut child = spawn_layerfs_fg(&opts, &mnt, &[], std::process::Stdio::inherit());
    let _m = Mounted { mnt: mnt.clone(), fuse: true };
    let pid = child.id();
    // One request first, so the serving threads have started before the baseline is taken.
    assert!(fs::symlink_metadata(mnt.join("not-there")).is_err());
    let base = rss_kib(pid);

    let mut seen = 0;
    for d in fs::read_dir(&mnt).unwrap() {
        for f in fs::read_dir(d.unwrap().path()).unwrap() {
            fs::symlink_metadata(f.unwrap().path()).unwrap();
            seen += 1;
        }
    }
    assert_eq!(seen, 40_000);
    let peak = rss_kib(pid);
    assert!(peak > base + 4096, "40000 nodes should take some memory: {base} -> {peak} KiB");

    // The kernel drops the unused inodes and sends FORGETs; the server frees the nodes.
    let goal = base + (peak - base) / 2;
    let t = Instant::now();
    let mut now = peak;
    while t.elapsed() < Duration::from_secs(20) {
        fs::write("/proc/sys/vm/drop_caches", "2").expect("drop_caches");
        std::thread::sleep(Duration::from_millis(200));
        now = rss_kib(pid);
        if now < goal {
            break;
        }
    }
    eprintln!("server RSS: {base} KiB at mount, {peak} KiB after the walk, {now} KiB after the forgets");
    assert!(
        now < goal,
        "server RSS after the kernel forgot the tree: {base} KiB at mount, {peak} KiB after the walk, {now} KiB after"
    );

    // What was forgotten is found again.
    assert_eq!(fs::read(mnt.join("d7/file-1-499")).unwrap(), b"x");
    drop(_m);
    let _ = child.wait();
    assert!(!mnt.join("d7").exists());
}
