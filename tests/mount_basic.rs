//! Smoke test of the harness: mount, read, unmount.
mod common;
use common::*;
use std::fs;
use std::path::Path;

#[test]
fn mounts_reads_and_unmounts() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::write(l.join("a"), b"hello").unwrap();
    {
        let _mnt = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
        assert_eq!(fs::read(m.join("a")).unwrap(), b"hello");
        fs::write(m.join("b"), b"new").unwrap();
    }
    assert!(!is_mounted(&m));
    assert_eq!(fs::read(u.join("b")).unwrap(), b"new");
    assert!(!l.join("b").exists());
}

/// The server grows its descriptor table before its threads start, to 8192 slots (within its
/// open-file limit). Grown later, each doubling of a table its threads share waits for an RCU
/// grace period (5-16 ms here), and the first lookup in a directory of many layers, which
/// opens that directory in each, waited for one or two of them.
#[test]
fn the_server_starts_with_a_descriptor_table_of_8192_slots() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    let _mnt = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
    let pid = server_pid(&m).expect("the server's pid");
    let field = |file: &str, key: &str| -> String {
        let text = fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap();
        let line = text.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("{key} in {file}"));
        line[key.len()..].split_whitespace().next().unwrap().to_string()
    };
    let slots: u64 = field("status", "FDSize:").parse().unwrap();
    let limit = field("limits", "Max open files").parse::<u64>().unwrap_or(u64::MAX);
    assert!(slots >= limit.min(8192), "the server's table has {slots} slots (open-file limit {limit})");
    let open = fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    assert!(open < 100, "{open} descriptors open: the reserving one was not closed");
}

/// Reading the files of a listed directory through the mount makes layerfs ask for the data
/// of the files listed after the one being read (data read-ahead); `read_ahead=0` does not.
#[test]
fn reading_files_of_a_listed_directory_reads_the_next_ones_ahead() {
    if !can_mount() {
        return;
    }
    const N: usize = 40;
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::create_dir_all(l.join("d")).unwrap();
    for i in 0..N {
        fs::write(l.join(format!("d/f{i:02}")), vec![i as u8; 32 << 10]).unwrap();
    }
    for read_ahead in [true, false] {
        let _mnt = mount_layerfs(
            std::slice::from_ref(&l),
            Some((&u, &w)),
            &m,
            &format!("read_ahead={}", read_ahead as u8),
        );
        let names: Vec<String> = fs::read_dir(m.join("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), N);
        let paths: Vec<_> = names.iter().map(|n| l.join("d").join(n)).collect();
        evict_all_of(paths.iter().map(|p| p.as_path()));
        // Read the files in listing order, as tar or cp -r would: the first one asks for the
        // next 8, and three more for all of them (the window doubles as the reads keep up).
        let cached = |n: &String| resident(&l.join("d").join(n)) > 0;
        let read = |n: &String| assert_eq!(fs::read(m.join("d").join(n)).unwrap().len(), 32 << 10);
        // Read-ahead is advice: under memory pressure the kernel may skip or drop a page, so
        // most of the files asked for, not all, must be cached; past them nothing reads them.
        let mostly = |want: &[String]| want.iter().filter(|n| cached(n)).count() * 4 >= want.len() * 3;
        let wait_for =
            |want: &[String]| wait_until(std::time::Duration::from_secs(15), || want.iter().all(cached));
        read(&names[0]);
        if read_ahead {
            wait_for(&names[1..9]);
            assert!(mostly(&names[1..9]), "the next 8 files are read ahead");
            assert!(!names[9..].iter().any(cached), "and no more");
            names[1..4].iter().for_each(read);
            wait_for(&names[4..]);
            assert!(mostly(&names[4..]), "every later file of d is read ahead");
        } else {
            std::thread::sleep(std::time::Duration::from_millis(200));
            assert!(!names[1..].iter().any(cached), "read_ahead=0 reads nothing ahead");
        }
    }
}

/// A walk through the mount that reads the files it lists (as tar does) has the data of the
/// first files of the directories ahead of it asked for before it lists them; a walk that
/// only lists (find) and `read_ahead=0` read no file data ahead.
#[test]
fn a_walk_that_reads_files_has_the_next_directories_data_read_ahead() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    let mut ahead = Vec::new();
    for i in 0..4 {
        fs::create_dir_all(l.join("a")).unwrap();
        fs::write(l.join(format!("a/f{i}")), vec![1u8; 16 << 10]).unwrap();
        for c in ["c1", "c2", "c3"] {
            fs::create_dir_all(l.join("b").join(c)).unwrap();
            let p = l.join("b").join(c).join(format!("g{i}"));
            fs::write(&p, vec![2u8; 16 << 10]).unwrap();
            ahead.push(p);
        }
    }
    for (opts, read_files, want) in
        [("read_ahead=1", true, true), ("read_ahead=1", false, false), ("read_ahead=0", true, false)]
    {
        let _mnt = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, opts);
        evict_all_of(ahead.iter().map(|p| p.as_path()));
        // The walk: the root, a and its files, then b; c1..c3 not yet.
        let list = |d: &std::path::Path| -> Vec<std::path::PathBuf> {
            fs::read_dir(d).unwrap().map(|e| e.unwrap().path()).collect()
        };
        assert_eq!(list(&m).len(), 2);
        for f in list(&m.join("a")) {
            if read_files {
                assert_eq!(fs::read(&f).unwrap().len(), 16 << 10);
            }
        }
        assert_eq!(list(&m.join("b")).len(), 3);
        let cached = || ahead.iter().filter(|p| resident(p) > 0).count();
        if want {
            // Advice, which the kernel may skip under memory pressure: most of it.
            wait_until(std::time::Duration::from_secs(15), || cached() == ahead.len());
            assert!(cached() * 4 >= ahead.len() * 3, "{} of {} files read ahead", cached(), ahead.len());
        } else {
            std::thread::sleep(std::time::Duration::from_millis(200));
            assert_eq!(cached(), 0, "{opts}, files read: {read_files}");
        }
    }
}

/// The read-ahead window (KiB) of the FUSE mount on `m`.
fn mount_window(m: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let dev = fs::metadata(m).unwrap().dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    fs::read_to_string(format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// As root the server raises its mount's read-ahead window to at least 1 MiB (the largest read
/// request), so large reads it serves come in 1 MiB requests instead of 128 KiB ones; and to the
/// window of a layer's disk where that is larger (at most 16 MiB), as kernel overlayfs reads
/// with the disk's window. The layers here are on an ext4 image whose loop device's window is
/// set to 128 KiB, 4 MiB and 32 MiB in turn.
#[test]
fn the_mount_reads_ahead_a_mib_or_the_disk_window_as_root() {
    if !can_mount() || !root_or_skip("only root raises the read-ahead window") {
        return;
    }
    let s = Scratch::new();
    let (_x, x) = loop_mount(s.dir.path(), 64, "mkfs.ext4 -q -F");
    let (_, loopdev) = sh(s.dir.path(), "findmnt -n -o SOURCE --target x");
    let queue = format!("/sys/block/{}/queue/read_ahead_kb", loopdev.trim().trim_start_matches("/dev/"));
    let (l, u, w, m) = (x.join("l"), x.join("u"), x.join("w"), s.path("m"));
    for d in [&l, &u, &w] {
        fs::create_dir(d).unwrap();
    }
    for (disk, want) in [(128, 1024), (4096, 4096), (32768, 16384)] {
        fs::write(&queue, format!("{disk}\n")).unwrap();
        let _mnt = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
        assert_eq!(mount_window(&m), want, "the disk's window was {disk} KiB");
    }
}

/// Large reads of lower files are answered from a mapping of the lower file: a big file reads
/// back whole, cold and cached; and a lower file truncated and rewritten behind the mount's
/// back while it is being read costs the readers short reads or EIO, never the server.
#[test]
fn large_lower_reads_are_whole_and_survive_a_lower_truncated_under_them() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    let data: Vec<u8> = (0..(9u32 << 20) + 333).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    fs::write(l.join("big"), &data).unwrap();
    fs::write(l.join("moving"), &data).unwrap();
    let _mnt = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
    for cold in [true, false] {
        if cold {
            evict(&l.join("big"));
        }
        evict(&m.join("big"));
        assert!(fs::read(m.join("big")).unwrap() == data, "big reads back whole (cold: {cold})");
    }

    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|t| {
        t.spawn(|| {
            for i in 0..30 {
                let f = fs::OpenOptions::new().write(true).open(l.join("moving")).unwrap();
                f.set_len(if i % 2 == 0 { 4096 } else { 0 }).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(5));
                f.set_len(data.len() as u64).unwrap();
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let mut reads = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) || reads < 5 {
            evict(&m.join("moving"));
            match fs::read(m.join("moving")) {
                Ok(_) => {}
                Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}"),
            }
            reads += 1;
        }
    });
    assert!(is_mounted(&m));
    evict(&m.join("big"));
    assert!(fs::read(m.join("big")).unwrap() == data, "the server still serves");
}

/// Lines of a `-d` log from `from` on that log a request `op(` ...
fn logged(log: &std::path::Path, from: usize, op: &str) -> (usize, usize) {
    let text = fs::read_to_string(log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let n = lines[from.min(lines.len())..].iter().filter(|l| l.contains(&format!("] {op}("))).count();
    (n, lines.len())
}

/// A small file opened for reading is put into the kernel's page cache before the open is
/// answered (FUSE_NOTIFY_STORE): reading it and stat'ing it afterwards costs no READ and no
/// GETATTR. Lower and upper files alike; bigger files are read by READ requests as before.
#[test]
fn small_files_opened_for_reading_are_read_without_read_requests() {
    use std::os::unix::fs::MetadataExt;
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    let small: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 13) as u8).collect();
    fs::write(l.join("small"), &small).unwrap();
    fs::write(u.join("usmall"), &small[..4321]).unwrap();
    fs::write(l.join("big"), &big).unwrap();
    let log = s.path("log").join("stderr");
    let opts = format!("lowerdir={},upperdir={},workdir={}", l.display(), u.display(), w.display());
    let mut child =
        spawn_layerfs_fg(&format!("{opts},debug"), &m, &[], fs::File::create(&log).unwrap().into());
    // Unmounts even when an assertion below fails.
    let mut mnt = Mounted { mnt: m.clone(), fuse: true };
    // Look the names up first, so only opens and reads remain.
    let sizes: Vec<u64> =
        ["small", "usmall", "big"].iter().map(|n| fs::metadata(m.join(n)).unwrap().size()).collect();
    assert_eq!(sizes, [5000, 4321, 300_000]);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let (_, start) = logged(&log, 0, "open");
    for _ in 0..2 {
        assert!(fs::read(m.join("small")).unwrap() == small);
        assert!(fs::read(m.join("usmall")).unwrap() == small[..4321]);
    }
    let f = fs::File::open(m.join("small")).unwrap();
    assert_eq!(f.metadata().unwrap().size(), 5000, "fstat after the reads");
    drop(f);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let (opens, _) = logged(&log, start, "open");
    let (reads, _) = logged(&log, start, "read");
    let (getattrs, mid) = logged(&log, start, "getattr");
    assert_eq!(opens, 5, "every open reaches the server");
    assert_eq!((reads, getattrs), (0, 0), "the small files were read from the page cache");
    assert!(fs::read(m.join("big")).unwrap() == big);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(logged(&log, mid, "read").0 > 0, "a file over 64 KiB is read by READ requests");
    mnt.unmount();
    child.wait().unwrap();
}

/// Storing a file's data at open never puts older data in the page cache than a write or a
/// truncation that finished before: readers opening while a writer rewrites and truncates a
/// small file (upper, and lower copied up by the first write) see only versions at least as
/// new as the last one completed before their open, and the final version exactly.
#[test]
fn stored_small_files_are_never_older_than_the_last_write() {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicU32, Ordering};
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    // Version k is len(k) bytes of k + 4; version 0, the first content, 3000 bytes of 4. No
    // version is zeros.
    fs::write(l.join("lower"), vec![4u8; 3000]).unwrap();
    fs::write(u.join("upper"), vec![4u8; 3000]).unwrap();
    let _mnt = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
    let len = |k: u32| 100 + (k as usize * 997) % 6000;
    for name in ["lower", "upper"] {
        let p = m.join(name);
        let done = AtomicU32::new(0);
        std::thread::scope(|t| {
            t.spawn(|| {
                for k in 1..=250u32 {
                    let data = vec![k as u8 + 4; len(k)];
                    if k % 2 == 1 {
                        fs::write(&p, &data).unwrap();
                    } else {
                        // In place, then cut to size by path (SETATTR without a handle).
                        fs::OpenOptions::new().write(true).open(&p).unwrap().write_all_at(&data, 0).unwrap();
                        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
                        assert_eq!(unsafe { libc::truncate(c.as_ptr(), data.len() as i64) }, 0);
                    }
                    done.store(k, Ordering::SeqCst);
                }
            });
            for _ in 0..2 {
                t.spawn(|| {
                    while done.load(Ordering::SeqCst) < 250 {
                        let before = done.load(Ordering::SeqCst);
                        let got = fs::read(&p).unwrap();
                        // All zeros is FUSE's own race, not a stale store: a READ that finds
                        // the file just truncated by the writer's open comes back short, the
                        // kernel fills the page with zeros, and when another reply has updated
                        // the inode's attributes meanwhile it keeps the old size, so the read
                        // returns that many zeros (layerfs before the store did it too for
                        // files it serves; kernel overlayfs does not). The same race can hit
                        // only the first page, whose READ found the file empty, while the next
                        // page's READ found the new data: whole pages of zeros are skipped.
                        let Some(page) = got.chunks(4096).find(|c| c.iter().any(|&b| b != 0)) else {
                            continue;
                        };
                        let first = page[0] as i64 - 4;
                        assert!(
                            first >= before as i64,
                            "{name}: read version {first} after version {before} was complete"
                        );
                    }
                });
            }
        });
        assert_eq!(fs::read(&p).unwrap(), vec![254u8; len(250)], "{name}: the last version");
    }
}

/// The CPU list of `/proc/<status>`'s `Cpus_allowed_list`, and the scheduling policy (field 41
/// of `stat`) of task `tid` of process `pid`.
fn cpus_and_policy(pid: u32, tid: &str) -> (Vec<usize>, u32) {
    let task = format!("/proc/{pid}/task/{tid}");
    let status = fs::read_to_string(format!("{task}/status")).unwrap();
    let list = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap();
    let stat = fs::read_to_string(format!("{task}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    // Fields from the 3rd on: policy is the 41st.
    let policy = after_comm.split(' ').nth(41 - 3).unwrap().parse().unwrap();
    (layerfs::sys::parse_cpu_list(list).unwrap(), policy)
}

/// The server's threads, by name: (name, CPUs it may run on, scheduling policy).
fn server_threads(pid: u32) -> Vec<(String, Vec<usize>, u32)> {
    let mut v = Vec::new();
    for e in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let tid = e.file_name().to_string_lossy().into_owned();
        let Ok(comm) = fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")) else { continue };
        let (cpus, policy) = cpus_and_policy(pid, &tid);
        v.push((comm.trim().to_string(), cpus, policy));
    }
    v
}

/// On a machine of at most `POLL_MAX_CPUS` CPUs, without io_uring queues, the `/dev/fuse`
/// threads are one per CPU the server may use, each pinned to its own (otherwise not pinned);
/// threads that server threads start for work of their own (the read-ahead workers) run
/// anywhere, and at normal priority between their jobs (within a job, they read lower
/// directories at `SCHED_IDLE`: `fs::ahead`'s unit test).
#[test]
fn dev_fuse_threads_are_pinned_one_per_cpu_and_their_helpers_are_not() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::create_dir_all(l.join("d")).unwrap();
    for i in 0..20 {
        fs::write(l.join(format!("d/f{i:02}")), vec![i as u8; 32 << 10]).unwrap();
    }
    let _mnt = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
    let pid = server_pid(&m).expect("server process");
    let (allowed, _) = cpus_and_policy(std::process::id(), &std::process::id().to_string());
    // A listed directory's files read in order start the read-ahead workers.
    let names: Vec<_> = fs::read_dir(m.join("d")).unwrap().map(|e| e.unwrap().file_name()).collect();
    for n in &names[..4] {
        fs::read(m.join("d").join(n)).unwrap();
    }
    // Requests may be answered (over io_uring) before the last /dev/fuse thread has named and
    // pinned itself: wait for the threads to settle.
    // The io_uring queues (registered before the mount command returns) leave /dev/fuse little
    // to do: its threads then block in read, unpinned.
    let uring = server_threads(pid).iter().any(|t| t.0.starts_with("uring-"));
    let want = allowed.len().max(2);
    let poll = !uring && allowed.len() <= layerfs::devloop::POLL_MAX_CPUS;
    let settled = |v: &[(String, Vec<usize>, u32)]| {
        v.iter().any(|t| t.0 == "read-ahead")
            && v.iter().filter(|t| t.0.starts_with("fuse-") && (!poll || t.1.len() == 1)).count() == want
    };
    let t = std::time::Instant::now();
    while !settled(&server_threads(pid)) && t.elapsed().as_secs() < 5 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let threads = server_threads(pid);
    let fuse: Vec<_> = threads.iter().filter(|t| t.0.starts_with("fuse-")).collect();
    assert_eq!(fuse.len(), want, "{threads:?}");
    if poll {
        let mut pinned: Vec<usize> = fuse
            .iter()
            .map(|t| {
                assert_eq!(t.1.len(), 1, "{} is pinned to one CPU: {threads:?}", t.0);
                t.1[0]
            })
            .collect();
        pinned.sort();
        pinned.dedup();
        assert_eq!(pinned, allowed, "one thread on each CPU: {threads:?}");
    } else {
        for t in &fuse {
            assert_eq!(t.1, allowed, "{} is not pinned: {threads:?}", t.0);
        }
    }
    let helpers: Vec<_> = threads.iter().filter(|t| t.0 == "read-ahead").collect();
    assert!(!helpers.is_empty(), "read-ahead workers started: {threads:?}");
    for h in helpers {
        assert_eq!(h.1, allowed, "a read-ahead worker may run on every CPU: {threads:?}");
    }
    // Their jobs done, they wait at normal priority (not the policy of the thread that
    // started them, nor the one of a job's lower directory reads).
    let t = std::time::Instant::now();
    let mut threads = server_threads(pid);
    while threads.iter().any(|h| h.0 == "read-ahead" && h.2 == libc::SCHED_IDLE as u32)
        && t.elapsed().as_secs() < 5
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
        threads = server_threads(pid);
    }
    for h in threads.iter().filter(|t| t.0 == "read-ahead") {
        assert_ne!(h.2, libc::SCHED_IDLE as u32, "a read-ahead worker waits at SCHED_IDLE: {threads:?}");
    }
    // Every thread has an explicit best-effort I/O priority: one implied by the CPU policy
    // would be the idle class in SCHED_IDLE, whose disk reads mq-deadline served three times
    // slower (a cold find over 40 layers: 3.5 s against 1.2 s).
    let mut checked = 0;
    for e in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let tid: libc::c_int = e.file_name().to_string_lossy().parse().unwrap();
        // ioprio_get(IOPRIO_WHO_PROCESS, tid): class << 13 | level; -1 once the thread is gone.
        let prio = unsafe { libc::syscall(libc::SYS_ioprio_get, 1, tid) };
        if prio >= 0 {
            assert_eq!(prio >> 13, 2, "thread {tid}: I/O class {} (2 = best-effort)", prio >> 13);
            checked += 1;
        }
    }
    assert!(checked > want, "the I/O class of every thread, {checked} of them: {threads:?}");
}

/// Every server thread at normal priority asks for the short scheduler slice (Linux 6.12+), so
/// that one waking up in the middle of a request takes its CPU back from a busy task at once
/// (`sys::SERVER_SLICE_NS`); the main thread sets it before any other thread starts, and they
/// inherit it. (`SCHED_IDLE` threads have none: they take it again when they leave it.)
#[test]
fn server_threads_ask_for_a_short_scheduler_slice() {
    if !can_mount() {
        return;
    }
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = release.trim().split(['.', '-']).map(|x| x.parse::<u32>().unwrap_or(0));
    if (v.next().unwrap_or(0), v.next().unwrap_or(0)) < (6, 12) {
        eprintln!("skipped: Linux {} has no custom scheduler slices (6.12+)", release.trim());
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::write(l.join("f"), b"x").unwrap();
    let _mnt = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
    assert_eq!(fs::read(m.join("f")).unwrap(), b"x");
    let pid = server_pid(&m).expect("server process");
    let mut normal = Vec::new();
    for e in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let tid = e.file_name().to_string_lossy().into_owned();
        let Ok(sched) = fs::read_to_string(format!("/proc/{pid}/task/{tid}/sched")) else { continue };
        let field = |name: &str| {
            sched.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().parse::<u64>().ok()).flatten()
            })
        };
        let comm = fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
        if field("policy") == Some(libc::SCHED_OTHER as u64) {
            normal.push((comm.trim().to_string(), field("se.slice")));
        }
    }
    assert!(normal.len() >= 2, "server threads at normal priority: {normal:?}");
    for (name, slice) in &normal {
        assert_eq!(*slice, Some(layerfs::sys::SERVER_SLICE_NS), "{name}'s slice: {normal:?}");
    }
}

/// Every entry below `dir`, with the bytes of each file.
fn walk(dir: &std::path::Path, out: &mut Vec<(String, Vec<u8>)>) {
    for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display())) {
        let e = e.unwrap_or_else(|e| panic!("entry of {}: {e}", dir.display()));
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.push((p.display().to_string(), Vec::new()));
            walk(&p, out);
        } else {
            out.push((
                p.display().to_string(),
                fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
            ));
        }
    }
}

/// Each directory node keeps a descriptor of every lower directory merging into it, for as
/// long as the kernel holds the node. 60 directories in 12 layers need 720 of them: with an
/// open-file limit of 256 the walk failed with EMFILE part way (and so did every open after
/// it) before lower directory descriptors were kept within a budget.
#[test]
fn a_tree_needing_more_descriptors_than_the_open_file_limit_is_served_whole() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (u, w, m) = (s.path("u"), s.path("w"), s.path("m"));
    let mut lowers = Vec::new();
    for l in 0..12 {
        let d = s.path(&format!("l{l:02}"));
        for i in 0..60 {
            fs::create_dir_all(d.join(format!("d{i:02}"))).unwrap();
            fs::write(d.join(format!("d{i:02}/f{l:02}")), format!("{l} {i}")).unwrap();
        }
        lowers.push(d);
    }
    let _mnt = mount_with_nofile(&lowers, &u, &w, &m, 256);
    for round in 0..2 {
        let mut seen = Vec::new();
        walk(&m, &mut seen);
        assert_eq!(seen.len(), 60 + 60 * 12, "round {round}");
        for (p, data) in &seen {
            if let Some(f) = p.rsplit_once("/f") {
                let (l, i) = (f.1, &f.0[f.0.len() - 2..]);
                assert_eq!(
                    String::from_utf8_lossy(data),
                    format!("{} {}", l.parse::<u32>().unwrap(), i.parse::<u32>().unwrap()),
                    "{p}"
                );
            }
        }
    }
    // Writes below those directories still work (copy-up of the parent, whiteouts).
    for i in 0..60 {
        fs::write(m.join(format!("d{i:02}/new")), b"n").unwrap();
        fs::remove_file(m.join(format!("d{i:02}/f00"))).unwrap();
    }
    for i in 0..60 {
        let mut names: Vec<String> = fs::read_dir(m.join(format!("d{i:02}")))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 12, "d{i:02}: {names:?}");
        assert_eq!(names[0], "f01");
        assert_eq!(names[11], "new");
    }
    // Upper directories too: 300 new ones, each holding a file and a subdirectory, then half
    // of them renamed (into each other as well) while their descriptors come and go.
    for i in 0..300 {
        fs::create_dir_all(m.join(format!("n{i:03}/sub"))).unwrap();
        fs::write(m.join(format!("n{i:03}/sub/x")), format!("{i}")).unwrap();
    }
    for i in (0..300).step_by(2) {
        fs::rename(m.join(format!("n{i:03}")), m.join(format!("n{:03}/moved", i + 1))).unwrap();
    }
    for i in (1..300).step_by(2) {
        fs::rename(m.join(format!("n{i:03}")), m.join(format!("r{i:03}"))).unwrap();
    }
    for round in 0..2 {
        for i in (1..300).step_by(2) {
            let r = m.join(format!("r{i:03}"));
            assert_eq!(fs::read_to_string(r.join("sub/x")).unwrap(), format!("{i}"), "round {round}");
            assert_eq!(fs::read_to_string(r.join("moved/sub/x")).unwrap(), format!("{}", i - 1));
            fs::write(r.join(format!("moved/sub/y{round}")), b"y").unwrap();
        }
    }
    let mut seen = Vec::new();
    walk(&m, &mut seen);
    assert_eq!(seen.len(), 60 + 60 * 12 + 150 * 8);
    drop(_mnt);
    for i in (1..300).step_by(2) {
        assert_eq!(fs::read(u.join(format!("r{i:03}/moved/sub/y1"))).unwrap(), b"y");
    }
}

/// A directory removed while something still holds it (an open descriptor, a working
/// directory) keeps its node; once the server's descriptor budget had closed the directory's
/// descriptor, the filesystem could give its inode number to a new directory, the new one got
/// the removed one's node id, and the kernel took it for the dead directory: every name below
/// it answered ENOENT (`mkdir -p new/sub` failed at the 21st directory with a limit of 80),
/// and `fstat` of the held descriptor showed the new directory.
#[test]
fn a_removed_directory_still_held_keeps_its_inode_under_descriptor_pressure() {
    use std::os::unix::fs::MetadataExt;
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::create_dir_all(l.join("lower")).unwrap();
    let _mnt = mount_with_nofile(std::slice::from_ref(&l), &u, &w, &m, 256);
    // One removed upper directory, one removed lower one (a whiteout stands for it).
    fs::create_dir(m.join("gone")).unwrap();
    let held = [fs::File::open(m.join("gone")).unwrap(), fs::File::open(m.join("lower")).unwrap()];
    let inos: Vec<u64> = held.iter().map(|f| f.metadata().unwrap().ino()).collect();
    fs::remove_dir(m.join("gone")).unwrap();
    fs::remove_dir(m.join("lower")).unwrap();
    // Far more new directories than the budget (half the limit) keeps descriptors for.
    for i in 0..600 {
        fs::create_dir_all(m.join(format!("n{i:03}/sub"))).unwrap_or_else(|e| panic!("n{i:03}/sub: {e}"));
        fs::write(m.join(format!("n{i:03}/sub/x")), format!("{i}")).unwrap();
    }
    for i in 0..600 {
        assert_eq!(fs::read_to_string(m.join(format!("n{i:03}/sub/x"))).unwrap(), format!("{i}"));
    }
    for (f, ino) in held.iter().zip(&inos) {
        let md = f.metadata().unwrap();
        assert!(md.is_dir());
        assert_eq!(md.ino(), *ino);
    }
    // The removed upper directory shows what kernel overlayfs shows for it: no links left.
    assert_eq!(held[0].metadata().unwrap().nlink(), 0);
    drop(held);
    drop(_mnt);
    assert!(!u.join("gone").exists());
    assert_eq!(fs::read_dir(&u).unwrap().count(), 601, "600 new directories and the whiteout");
}

/// Unlinking a name, or renaming another file over it, while an open copies its file up waits
/// for the copy-up, as on kernel overlayfs. Neither waited: the copy-up then found its name
/// taken, and the open (no O_CREAT) failed with EEXIST.
#[test]
fn unlink_and_rename_over_wait_for_a_copy_up_under_way() {
    use std::io::Write;
    use std::time::{Duration, Instant};
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let l = s.path("l");
    fs::create_dir_all(l.join("d")).unwrap();
    // Big enough that the copy-up (data, then fsync) takes a while.
    let mut f = fs::File::create(l.join("d/big")).unwrap();
    for _ in 0..128 {
        f.write_all(&[b'a'; 1 << 20]).unwrap();
    }
    drop(f);
    fs::write(l.join("d/other"), b"other").unwrap();
    for op in ["unlink", "rename"] {
        let mut raced = 0;
        for round in 0..4 {
            let (u, w, m) =
                (s.path(&format!("u-{op}{round}")), s.path(&format!("w-{op}{round}")), s.path("m"));
            let _mnt = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
            let p = m.join("d/big");
            let opener =
                std::thread::spawn(move || fs::OpenOptions::new().read(true).write(true).open(p).map(drop));
            // The copy-up's temporary file shows in WORKDIR/work while it runs.
            let deadline = Instant::now() + Duration::from_secs(20);
            while !opener.is_finished() && Instant::now() < deadline {
                if fs::read_dir(w.join("work")).is_ok_and(|mut d| d.next().is_some()) {
                    raced += 1;
                    break;
                }
            }
            match op {
                "unlink" => fs::remove_file(m.join("d/big")).unwrap(),
                _ => fs::rename(m.join("d/other"), m.join("d/big")).unwrap(),
            }
            let opened = opener.join().unwrap();
            assert!(opened.is_ok(), "{op} during the copy-up, round {round}: the open got {opened:?}");
            match op {
                "unlink" => assert!(!m.join("d/big").exists()),
                _ => assert_eq!(fs::read(m.join("d/big")).unwrap(), b"other"),
            }
        }
        assert!(raced > 0, "{op}: no round caught the copy-up under way");
    }
}

/// A directory copied up as the ancestor of a change reports the upper's attributes at once
/// (a merged directory's link count is 1, as on kernel overlayfs): the kernel held the lower
/// directory's until the attribute timeout.
#[test]
fn a_directory_copied_up_for_a_change_below_it_shows_new_attributes() {
    use std::os::unix::fs::MetadataExt;
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::create_dir_all(l.join("d/sub/deeper")).unwrap();
    fs::create_dir_all(l.join("d/sub2")).unwrap();
    let _mnt = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
    assert_eq!(fs::metadata(m.join("d")).unwrap().nlink(), 4);
    assert_eq!(fs::metadata(m.join("d/sub")).unwrap().nlink(), 3);
    fs::create_dir(m.join("d/sub/deeper/new")).unwrap();
    assert_eq!(fs::metadata(m.join("d")).unwrap().nlink(), 1);
    assert_eq!(fs::metadata(m.join("d/sub")).unwrap().nlink(), 1);
}

/// A lower file with a second name in its layer has one name once copied up (as on kernel
/// overlayfs without `index`): its link count shows 1 at once, not the lower's 2 until the
/// attribute timeout.
#[test]
fn a_hard_linked_lower_file_shows_one_link_once_copied_up() {
    use std::os::unix::fs::MetadataExt;
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::write(l.join("a"), b"a").unwrap();
    fs::hard_link(l.join("a"), l.join("b")).unwrap();
    let _mnt = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
    assert_eq!(fs::metadata(m.join("a")).unwrap().nlink(), 2);
    let mut f = fs::OpenOptions::new().append(true).open(m.join("a")).unwrap();
    std::io::Write::write_all(&mut f, b"X").unwrap();
    drop(f);
    assert_eq!(fs::metadata(m.join("a")).unwrap().nlink(), 1);
    assert_eq!(fs::metadata(m.join("b")).unwrap().nlink(), 2);
    assert_eq!(fs::read(m.join("b")).unwrap(), b"a");
}

/// A removed file an `O_PATH` descriptor still refers to keeps its inode number: a new file
/// given the same number on the upper filesystem is never reached through that descriptor.
/// (Letting go of the removed file at the unlink freed its inode, the next file took its
/// number, and a write through `/proc/self/fd/N` of the old descriptor landed in it.)
#[test]
fn a_removed_files_number_is_not_reused_while_the_kernel_holds_it() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    let _mnt = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
    for round in 0..5 {
        let p = m.join("f");
        fs::write(&p, b"OLD").unwrap();
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid path; the descriptor is closed below.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH) };
        assert!(fd >= 0);
        fs::remove_file(&p).unwrap();
        let victim = m.join(format!("victim{round}"));
        fs::write(&victim, b"PRECIOUS").unwrap();
        if let Ok(mut f) = fs::OpenOptions::new().write(true).open(format!("/proc/self/fd/{fd}")) {
            let _ = std::io::Write::write_all(&mut f, b"clobbered");
        }
        // SAFETY: our own descriptor.
        unsafe { libc::close(fd) };
        assert_eq!(fs::read(&victim).unwrap(), b"PRECIOUS", "round {round}");
    }
}

/// xattrs set and removed through the mount while the server is short of descriptors (it
/// closes directory descriptors it caches, and opens others) reach the object asked for and
/// nothing else: the path `/proc/self/fd/N/name` was built from a descriptor closed before
/// the call, so N could be another directory by then, and lower layers' files were changed.
#[test]
fn xattr_changes_under_descriptor_pressure_reach_only_their_object() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l1, l2, u, w, m) = (s.path("l1"), s.path("l2"), s.path("u"), s.path("w"), s.path("m"));
    const N: usize = 200;
    for d in 0..N {
        fs::create_dir_all(l2.join(format!("t{d}/sub"))).unwrap();
        fs::create_dir_all(l1.join(format!("t{d}"))).unwrap();
        fs::write(l2.join(format!("t{d}/f")), b"x").unwrap();
        fs::write(l2.join(format!("t{d}/sub/x")), b"").unwrap();
        assert_eq!(setx(&l2.join(format!("t{d}/f")), "user.race", b"orig"), 0);
    }
    let lowers = [l1.clone(), l2.clone()];
    let _mnt = mount_with_nofile(&lowers, &u, &w, &m, 64);
    let end = std::time::Instant::now() + std::time::Duration::from_secs(6);
    std::thread::scope(|sc| {
        for k in 0..3u64 {
            let m = &m;
            sc.spawn(move || {
                let mut r = k * 7919 + 1;
                while std::time::Instant::now() < end {
                    r = r.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let p = m.join(format!("t{}/f", (r >> 33) as usize % N));
                    if (r >> 20) % 5 == 0 {
                        let _ = xattr_remove(&p, "user.race");
                    } else {
                        let _ = setx(&p, "user.race", format!("{k}").as_bytes());
                    }
                }
            });
        }
        for k in 0..2u64 {
            let m = &m;
            sc.spawn(move || {
                let mut r = k * 104729 + 3;
                while std::time::Instant::now() < end {
                    r = r.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let d = (r >> 33) as usize % N;
                    let f = m.join(format!("t{d}/sub/w{k}"));
                    if fs::write(&f, b"").is_ok() {
                        let _ = fs::remove_file(&f);
                    }
                    let _ = fs::read_dir(m.join(format!("t{d}/sub"))).map(|i| i.count());
                }
            });
        }
        for k in 0..2u64 {
            let m = &m;
            sc.spawn(move || {
                let mut r = k * 15485863 + 5;
                let mut held = Vec::new();
                while std::time::Instant::now() < end {
                    r = r.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    if held.len() < 30 {
                        if let Ok(f) = fs::File::open(m.join(format!("t{}/sub/x", (r >> 33) as usize % N))) {
                            held.push(f);
                        }
                    } else {
                        held.swap_remove((r >> 40) as usize % held.len());
                    }
                }
            });
        }
    });
    let touched: Vec<usize> = (0..N)
        .filter(|d| getx(&l2.join(format!("t{d}/f")), "user.race").as_deref() != Some(&b"orig"[..]))
        .collect();
    assert!(touched.is_empty(), "lower files changed: {touched:?}");
    for d in 0..N {
        assert_eq!(getx(&l1.join(format!("t{d}")), "user.race"), None);
    }
}

fn setx(p: &Path, name: &str, v: &[u8]) -> i32 {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid strings and value.
    let r = unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    if r == 0 { 0 } else { std::io::Error::last_os_error().raw_os_error().unwrap() }
}

fn xattr_remove(p: &Path, name: &str) -> i32 {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid strings.
    let r = unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) };
    if r == 0 { 0 } else { std::io::Error::last_os_error().raw_os_error().unwrap() }
}

fn getx(p: &Path, name: &str) -> Option<Vec<u8>> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 64];
    // SAFETY: valid strings, buffer writable for its length.
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| buf[..r as usize].to_vec())
}

/// A change 2000 directory levels below the root of a lower-only tree copies up all 2000
/// ancestors: the server copied each one up from its child's copy-up, a recursion that
/// overflowed its thread's stack (the mount died) between 1400 and 1600 levels.
#[test]
fn a_change_thousands_of_levels_down_copies_up_every_ancestor() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    let deep = "d/".repeat(2000);
    fs::create_dir_all(l.join(&deep)).unwrap();
    let _mnt = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
    let (ok, out) = sh(&m, &format!("touch {deep}new && ls {deep}"));
    assert!(ok, "{out}");
    assert_eq!(out, "new\n");
    assert!(u.join(format!("{deep}new")).exists());
}

/// With `.wh.` whiteouts, a lower name of 252 bytes or more cannot be whited out (no
/// `.wh.NAME` fits in 255 bytes): its unlink and its rename fail with ENAMETOOLONG before
/// anything changes. They copied the directory (and the rename the file) up first, leaving
/// the upper changed by a failed call.
#[test]
fn unlink_that_cannot_leave_a_wh_whiteout_changes_nothing() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    let long = "n".repeat(253);
    fs::create_dir_all(l.join("d")).unwrap();
    fs::write(l.join("d").join(&long), b"x").unwrap();
    let _mnt = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "whiteout=wh");
    let r = fs::remove_file(m.join("d").join(&long));
    assert_eq!(errno(&r), libc::ENAMETOOLONG);
    assert_eq!(fs::read_dir(&u).unwrap().count(), 0, "the upper is unchanged");
    let r = fs::rename(m.join("d").join(&long), m.join("d/renamed"));
    assert_eq!(errno(&r), libc::ENAMETOOLONG);
    assert_eq!(fs::read_dir(&u).unwrap().count(), 0, "the upper is unchanged by the rename");
    assert!(m.join("d").join(&long).exists());
    // A name that fits is whited out as usual.
    fs::write(m.join("d/short"), b"s").unwrap();
    fs::remove_file(m.join("d/short")).unwrap();
}

/// A copy-up carries the inode flags kernel overlayfs carries: no atime updates (`A`) and
/// synchronous updates (`S`). They were dropped.
#[test]
fn copy_up_keeps_noatime_and_sync_inode_flags() {
    if !can_mount() || !is_root() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::write(l.join("f"), b"a").unwrap();
    fs::create_dir(l.join("d")).unwrap();
    let chattr =
        std::process::Command::new("chattr").args(["+A", "+S"]).arg(l.join("f")).arg(l.join("d")).status();
    if !chattr.is_ok_and(|s| s.success()) {
        assert!(!must_mount(), "chattr +A +S failed on the test filesystem");
        return;
    }
    let _mnt = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
    fs::set_permissions(m.join("f"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    fs::write(m.join("d/new"), b"n").unwrap();
    for p in [u.join("f"), u.join("d")] {
        let out = std::process::Command::new("lsattr").arg("-d").arg(&p).output().unwrap();
        let flags = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_string();
        assert!(flags.contains('A') && flags.contains('S'), "{}: {flags}", p.display());
    }
}

/// Reading through the mount changes nothing in a lower layer, not even access times: the
/// server walks each lower in a private mount that it makes read-only and `noatime`, as
/// kernel overlayfs makes its lower mounts. Listing, reading, `readlink` and the read of a
/// copy-up set the lower objects' atimes before (relatime: atime older than mtime), so a
/// read in one container showed in the shared layer. Root only (the private mount).
#[test]
fn reads_leave_lower_access_times_alone() {
    if !can_mount() || unsafe { libc::geteuid() } != 0 {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::create_dir(l.join("d")).unwrap();
    fs::write(l.join("d/f"), b"data").unwrap();
    fs::write(l.join("h"), b"copied up").unwrap();
    std::os::unix::fs::symlink("d/f", l.join("s")).unwrap();
    let objects = [l.join("d/f"), l.join("h"), l.join("s"), l.join("d"), l.clone()];
    let old = "@1577836800"; // 2020-01-01, before every mtime: relatime would update it
    let st =
        std::process::Command::new("touch").args(["-a", "-h", "-d", old]).args(&objects).status().unwrap();
    assert!(st.success());
    let atimes = || -> Vec<i64> {
        use std::os::unix::fs::MetadataExt;
        objects.iter().map(|p| fs::symlink_metadata(p).unwrap().atime()).collect()
    };
    let before = atimes();
    assert!(before.iter().all(|&t| t == 1_577_836_800), "{before:?}");
    {
        let _mnt = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
        let names: Vec<_> = fs::read_dir(m.join("d")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1);
        let _ = fs::read_dir(&m).unwrap().count();
        assert_eq!(fs::read(m.join("d/f")).unwrap(), b"data");
        assert_eq!(fs::read(m.join("s")).unwrap(), b"data");
        assert_eq!(fs::read_link(m.join("s")).unwrap(), Path::new("d/f"));
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(m.join("h"), fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(fs::read(u.join("h")).unwrap(), b"copied up");
    }
    assert_eq!(atimes(), before, "lower access times changed (d/f, h, s, d, root)");
}

/// A copy-up shows the copy's ctime at once, and its directory's new ctime (the real upper
/// directory got an entry), as kernel overlayfs does; the kernel's cache kept the lower
/// file's and the directory's old ctime for the whole attribute timeout.
#[test]
fn copy_up_shows_the_new_ctimes() {
    if !can_mount() {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::create_dir(l.join("d")).unwrap();
    fs::write(l.join("d/f"), b"f").unwrap();
    fs::write(l.join("d/g"), b"g").unwrap();
    let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
    let ctime = |p: &Path| {
        let md = fs::symlink_metadata(p).unwrap();
        (md.ctime(), md.ctime_nsec())
    };
    fs::write(m.join("d/new"), b"n").unwrap(); // d is in the upper now
    // The kernel caches both attributes now; the copy-up below must invalidate them.
    let (_, _) = (ctime(&m.join("d")), ctime(&m.join("d/f")));
    std::thread::sleep(std::time::Duration::from_millis(20));
    drop(fs::OpenOptions::new().write(true).open(m.join("d/f")).unwrap()); // copy-up, no write
    assert_eq!(ctime(&m.join("d/f")), ctime(&u.join("d/f")), "file");
    assert_eq!(ctime(&m.join("d")), ctime(&u.join("d")), "directory");
}

/// A descriptor the server answers with FOPEN_DIRECT_IO (an O_DIRECT open it serves:
/// `passthrough=0`, or an O_DIRECT writer by default) can be mapped shared, as on any
/// filesystem: the kernel refused that with ENODEV until the server asked for
/// FUSE_DIRECT_IO_ALLOW_MMAP.
#[test]
fn an_o_direct_descriptor_can_be_mapped_shared() {
    if !can_mount() {
        return;
    }
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    for opts in ["passthrough=0", ""] {
        let s = Scratch::new();
        let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
        fs::write(l.join("low"), vec![b'x'; 8192]).unwrap();
        let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, opts);
        fs::write(m.join("up"), vec![b'y'; 8192]).unwrap();
        for name in ["low", "up"] {
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(m.join(name))
                .unwrap();
            // SAFETY: a fresh shared mapping of 8 KiB of a live descriptor, unmapped below.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    8192,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    f.as_raw_fd(),
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED, "{opts:?} {name}: {}", std::io::Error::last_os_error());
            // SAFETY: the mapping is 8 KiB long.
            unsafe {
                *(p as *mut u8) = b'z';
                libc::msync(p, 8192, libc::MS_SYNC);
                libc::munmap(p, 8192);
            }
            drop(f);
            assert_eq!(fs::read(m.join(name)).unwrap()[0], b'z', "{opts:?} {name}");
        }
    }
}

/// Large reads of an upper file the server serves, racing truncations through the mount,
/// never fail: such reads were answered from a mapping sized before the truncation, and the
/// reply's copy from it failed (EIO for about one O_DIRECT read in seven here).
#[test]
fn large_reads_racing_a_truncation_through_the_mount_do_not_fail() {
    if !can_mount() {
        return;
    }
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "passthrough=0,uring=0");
    let path = m.join("f");
    fs::write(&path, vec![1u8; 4 << 20]).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let truncator = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.set_len(512 << 10).unwrap();
                f.set_len(4 << 20).unwrap();
            }
        })
    };
    let layout = std::alloc::Layout::from_size_align(1 << 20, 4096).unwrap();
    // SAFETY: a non-zero-sized layout; freed below.
    let buf = unsafe { std::slice::from_raw_parts_mut(std::alloc::alloc(layout), 1 << 20) };
    let f = fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(&path).unwrap();
    let (mut ok, mut failed) = (0, Vec::new());
    let t = std::time::Instant::now();
    // 1.5 s and at least 20 reads (a loaded machine may take longer for them; 60 s at most).
    while (t.elapsed() < std::time::Duration::from_millis(1500) || ok + failed.len() < 20)
        && t.elapsed() < std::time::Duration::from_secs(60)
    {
        match f.read_at(buf, 0) {
            Ok(_) => ok += 1,
            Err(e) => failed.push(e.to_string()),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    truncator.join().unwrap();
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(buf.as_mut_ptr(), layout) };
    assert!(failed.is_empty(), "{} of {} reads failed: {:?}", failed.len(), ok + failed.len(), &failed[..1]);
    assert!(ok > 10, "only {ok} reads");
}

/// A removed lower file still open is never copied up again: an fchmod through its descriptor
/// fails with EEXIST as on kernel overlayfs (with `.wh.` whiteouts, which leave the name free,
/// the copy came back under the name), and under `writeback=1` the times the kernel flushes
/// at close, or the ctime it sends within the unlink, change nothing (the close failed with
/// EIO, and the file's data was copied for nothing).
#[test]
fn a_removed_lower_file_is_never_copied_up_again() {
    if !can_mount() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    for opts in ["whiteout=wh", "passthrough=0,writeback=1", "passthrough=0,writeback=1,whiteout=wh"] {
        let s = Scratch::new();
        let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
        for f in ["a", "b"] {
            fs::write(l.join(f), format!("lower {f}\n")).unwrap();
        }
        let _mnt = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, opts);
        let a = fs::File::open(m.join("a")).unwrap();
        fs::remove_file(m.join("a")).unwrap();
        let e = a.set_permissions(fs::Permissions::from_mode(0o600)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "{opts}");
        let b = fs::File::open(m.join("b")).unwrap();
        fs::remove_file(m.join("b")).unwrap();
        b.sync_all().unwrap();
        // SAFETY: closing a descriptor this test owns, to see close's result.
        assert_eq!(unsafe { libc::close(std::os::fd::IntoRawFd::into_raw_fd(b)) }, 0, "{opts}");
        drop(a);
        assert!(
            fs::symlink_metadata(m.join("a")).is_err() && fs::symlink_metadata(m.join("b")).is_err(),
            "{opts}"
        );
        for f in ["a", "b"] {
            let up = fs::symlink_metadata(u.join(f));
            assert!(up.is_err() || up.unwrap().len() == 0, "{opts}: a copy of {f} in the upper");
        }
    }
}

/// The read-ahead workers start with the session (at INIT), so the first lookup of a fresh
/// mount does not wait for two thread spawns (a copy-up's `chmod` right after a mount counted
/// them); with `read_ahead=0` none start, however the mount is used.
#[test]
fn read_ahead_workers_start_with_the_mount_and_only_where_reading_ahead_is_on() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, m) = (s.path("l"), s.path("m"));
    fs::create_dir_all(l.join("d")).unwrap();
    fs::write(l.join("d/f"), b"f").unwrap();
    let workers = |pid: u32| server_threads(pid).iter().filter(|t| t.0 == "read-ahead").count();
    {
        let _mnt = mount_layerfs(std::slice::from_ref(&l), None, &m, "");
        let pid = server_pid(&m).expect("server process");
        // No lookup yet: a stat of the mountpoint's root is a GETATTR.
        fs::metadata(&m).unwrap();
        let t = std::time::Instant::now();
        while workers(pid) < 2 && t.elapsed().as_secs() < 10 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(workers(pid), 2, "{:?}", server_threads(pid));
    }
    let _mnt = mount_layerfs(std::slice::from_ref(&l), None, &m, "read_ahead=0");
    let pid = server_pid(&m).expect("server process");
    assert_eq!(fs::read(m.join("d/f")).unwrap(), b"f");
    let names: Vec<_> = fs::read_dir(m.join("d")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(workers(pid), 0, "{:?}", server_threads(pid));
}
