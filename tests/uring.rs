//! FUSE over io_uring: where the fuse module's `enable_uring` is on, requests are answered by
//! the per-CPU queue threads, with the same results as through `/dev/fuse`; `uring=0` (or a
//! kernel without it) serves through `/dev/fuse` only.
mod common;
use common::*;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

/// Whether mounts here serve through io_uring: the fuse module's `enable_uring` is on and the
/// run is not the `/dev/fuse` pass (LAYERFS_NO_URING). With LAYERFS_REQUIRE_URING set (the
/// io_uring pass of scripts/test.sh) it must be, else the test fails.
fn uring_serves() -> bool {
    let on = fs::read_to_string("/sys/module/fuse/parameters/enable_uring").is_ok_and(|s| s.trim() == "Y")
        && std::env::var_os("LAYERFS_NO_URING").is_none();
    assert!(
        on || std::env::var_os("LAYERFS_REQUIRE_URING").is_none(),
        "LAYERFS_REQUIRE_URING is set but the fuse module's enable_uring is not on"
    );
    on
}

/// Voluntary context switches of the server's `uring-*` threads, and how many there are.
fn uring_switches(pid: u32) -> (usize, u64) {
    let (mut n, mut sw) = (0, 0);
    for t in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let comm = fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("uring-") {
            continue;
        }
        n += 1;
        let status = fs::read_to_string(t.path().join("status")).unwrap_or_default();
        sw += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    (n, sw)
}

/// The same operations through the mount, whatever the transport: what they return.
/// The scheduling policy (`/proc/PID/task/TID/stat` field 41) of each io_uring thread.
fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for t in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let name = fs::read_to_string(t.path().join("comm")).unwrap_or_default().trim_end().to_string();
        let Ok(stat) = fs::read_to_string(t.path().join("stat")) else { continue };
        if !name.starts_with("uring-") {
            continue;
        }
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let policy = after.split(' ').nth(41 - 3).unwrap().parse().unwrap();
        out.push((name, policy));
    }
    out
}

fn exercise(m: &Path) -> Vec<String> {
    let mut seen = Vec::new();
    for i in 0..200 {
        seen.push(format!("{:?}", fs::metadata(m.join(format!("d/f{i:03}"))).map(|m| m.len()).ok()));
    }
    fs::write(m.join("d/f000"), b"changed").unwrap();
    seen.push(String::from_utf8(fs::read(m.join("d/f000")).unwrap()).unwrap());
    let big: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i % 251) as u8).collect();
    fs::write(m.join("big"), &big).unwrap();
    assert!(fs::read(m.join("big")).unwrap() == big, "3 MiB file read back differs");
    assert!(fs::read(m.join("lowbig")).unwrap() == big, "3 MiB lower file read differs");
    fs::create_dir(m.join("n")).unwrap();
    fs::rename(m.join("d/f001"), m.join("n/moved")).unwrap();
    symlink("moved", m.join("n/link")).unwrap();
    seen.push(fs::read_link(m.join("n/link")).unwrap().to_string_lossy().into_owned());
    fs::set_permissions(m.join("n/moved"), fs::Permissions::from_mode(0o600)).unwrap();
    seen.push(format!("{:o}", fs::metadata(m.join("n/moved")).unwrap().permissions().mode()));
    let x = sh(m, "setfattr -n user.k -v val n/moved && getfattr --only-values -n user.k n/moved");
    seen.push(format!("{x:?}"));
    fs::remove_file(m.join("d/f002")).unwrap();
    let mut names: Vec<String> = fs::read_dir(m.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    seen.push(format!("{} entries, first {:?}", names.len(), names.first()));
    seen.push(format!("{:?}", fs::metadata(m.join("d/f002")).map(|_| ()).map_err(|e| e.raw_os_error())));
    seen.push(format!("{:?}", sh(m, "df -P . | tail -1 | wc -w")));
    seen
}

#[test]
fn requests_go_through_the_io_uring_queues_when_the_kernel_offers_them() {
    if !can_mount() {
        return;
    }
    let enabled = uring_serves();
    if !enabled {
        eprintln!("note: enable_uring is off (or LAYERFS_NO_URING set): only /dev/fuse is checked");
    }
    let mut results = Vec::new();
    for uring in [true, false] {
        let s = Scratch::new();
        let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
        fs::create_dir_all(l.join("d")).unwrap();
        for i in 0..200 {
            fs::write(l.join(format!("d/f{i:03}")), vec![b'x'; i]).unwrap();
        }
        let big: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i % 251) as u8).collect();
        fs::write(l.join("lowbig"), &big).unwrap();
        let mnt =
            mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, if uring { "" } else { "uring=0" });
        let pid = server_pid(&m).expect("server process");
        let (threads, before) = uring_switches(pid);
        results.push(exercise(&m));
        let (_, after) = uring_switches(pid);
        if uring && enabled {
            assert!(threads > 0, "enable_uring is on but the server has no io_uring queue threads");
            // 200 lookups alone wake the queue threads at least 200 times.
            assert!(
                after - before >= 200,
                "io_uring threads woke {} times for about 250 requests",
                after - before
            );
            // As root, a queue thread is SCHED_IDLE while the CPUs are not all busy (so the
            // requester is woken on its own CPU). A thread looks at
            // the load when it answers a request: keep asking until one has seen calm.
            if unsafe { libc::geteuid() } == 0 {
                let name =
                    std::ffi::CString::new(m.join("d/f001").into_os_string().into_encoded_bytes()).unwrap();
                let mut policies = Vec::new();
                let t = std::time::Instant::now();
                while t.elapsed() < std::time::Duration::from_secs(30) {
                    // SAFETY: a NUL-terminated path and a null buffer of length 0.
                    unsafe { libc::getxattr(name.as_ptr(), c"user.x".as_ptr(), std::ptr::null_mut(), 0) };
                    policies = thread_policies(pid);
                    if policies.iter().any(|(_, p)| *p == 5) {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                assert!(
                    policies.iter().any(|(n, p)| *p == 5 && !n.ends_with("-rd")),
                    "no io_uring queue thread became SCHED_IDLE (policy 5) in 30 s: {policies:?}, load {}",
                    fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
                );
            }
        } else {
            assert_eq!(
                threads, 0,
                "uring={} with enable_uring={enabled}: queue threads running",
                uring as u8
            );
        }
        drop(mnt);
    }
    assert_eq!(results[0], results[1], "io_uring and /dev/fuse answers differ");
}

/// Requests waiting when the queues register: the last queue to register lets the kernel hand
/// out the requests it held back, so a REGISTER can complete at once with a request in its
/// entry, which the server must serve rather than take for an error. A thread stats the
/// mountpoint from before each mount until after it; every mount must come up and answer.
/// (Before this was handled, 3 of 15 such starts failed here with "queue 1: Success".)
#[test]
fn requests_already_waiting_when_the_queues_register_are_served() {
    if !can_mount() {
        return;
    }
    if !uring_serves() {
        eprintln!("skipped: enable_uring is off (or LAYERFS_NO_URING set)");
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::write(l.join("f"), b"f\n").unwrap();
    for round in 0..20 {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (st, mp) = (stop.clone(), m.join("f"));
        let hammer = std::thread::spawn(move || {
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = fs::metadata(&mp);
            }
        });
        let opts = format!("lowerdir={},upperdir={},workdir={}", l.display(), u.display(), w.display());
        let out = std::process::Command::new(layerfs_bin()).arg("-o").arg(&opts).arg(&m).output().unwrap();
        let mut g = Mounted { mnt: m.clone(), fuse: true };
        let served = out.status.success() && fs::read(m.join("f")).is_ok_and(|d| d == b"f\n");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        hammer.join().unwrap();
        assert!(served, "start {round} with requests waiting: {}", String::from_utf8_lossy(&out.stderr));
        g.unmount();
    }
}

/// The server's file mappings of inode `ino` that are private and writable: where a lower
/// file's pages are laid over a queue entry's reply buffer.
fn laid_mappings(pid: u32, ino: u64) -> usize {
    fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 6 && f[1] == "rw-p" && f[4].parse::<u64>().ok() == Some(ino)
        })
        .count()
}

/// Large reads of a lower file through the io_uring queues are answered from the file's own
/// pages, laid over the entry's reply buffer (one copy); what the same entry carries next (a
/// WRITE's data, names, an xattr's value) arrives whole, and the lower file is never written.
/// Every request is made from one CPU, so one queue's few entries serve all of them in turn.
/// Through `/dev/fuse` the same requests must give the same results (no mapping is kept there).
#[test]
fn large_lower_reads_through_the_queues_come_from_the_files_own_pages() {
    if !can_mount() {
        return;
    }
    let enabled = uring_serves();
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    let pattern = |i: usize| ((i * 7 + i / 4096) % 251) as u8;
    let lower: Vec<u8> = (0..(8 << 20) + 1234).map(pattern).collect();
    fs::write(l.join("big"), &lower).unwrap();
    let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(l.join("big")).unwrap());
    let mnt = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "passthrough=0");
    let pid = server_pid(&m).expect("server process");
    // SAFETY: a zeroed cpu_set_t with CPU 0 set, for this thread only.
    let pinned = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    };
    assert!(pinned, "cannot pin the test thread to CPU 0");
    let f = fs::File::open(m.join("big")).unwrap();
    let (mut laid_seen, mut buf) = (0, vec![0u8; 1 << 20]);
    for k in 0..9usize {
        let off = k << 20;
        let n = std::os::unix::fs::FileExt::read_at(&f, &mut buf, off as u64).unwrap();
        let want = &lower[off..(off + (1 << 20)).min(lower.len())];
        assert!(
            n == want.len() && &buf[..n] == want,
            "MiB {k} of the lower file read back wrong ({n} bytes)"
        );
        laid_seen += laid_mappings(pid, ino);
        // Requests with payloads, on the entries that just carried the file's pages.
        let data: Vec<u8> = (0..(64 << 10) + k).map(|i| (i % 253) as u8 ^ k as u8).collect();
        fs::write(m.join(format!("w{k}")), &data).unwrap();
        let long = format!("{}{k}", "n".repeat(250));
        fs::write(m.join(&long), format!("long {k}")).unwrap();
        set_xattr(&m.join(format!("w{k}")), "user.k", format!("value {k}").repeat(100).as_bytes());
        assert_eq!(fs::read(m.join(format!("w{k}"))).unwrap(), data, "w{k} read back through the mount");
        assert_eq!(fs::read_to_string(m.join(&long)).unwrap(), format!("long {k}"));
    }
    drop(f);
    for k in 0..9usize {
        let data: Vec<u8> = (0..(64 << 10) + k).map(|i| (i % 253) as u8 ^ k as u8).collect();
        assert_eq!(fs::read(u.join(format!("w{k}"))).unwrap(), data, "upper copy of w{k}");
        let x = sh(&m, &format!("getfattr --only-values -n user.k w{k}"));
        assert_eq!(x, (true, format!("value {k}").repeat(100)), "xattr of w{k}");
    }
    assert!(fs::read(l.join("big")).unwrap() == lower, "the lower file changed");
    assert!(fs::read(m.join("big")).unwrap() == lower, "the lower file read whole through the mount");
    if enabled {
        assert!(laid_seen > 0, "no lower file pages were laid over a reply buffer after large reads");
        // A queue thread that handed a large reply over from another CPU is pinned to its own
        // again (`uring-CPU-N`; the queues of CPUs offline now are not pinned at all).
        let online = fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
        let online = |cpu: &str| {
            let c: usize = cpu.parse().unwrap();
            online.trim().split(',').any(|r| {
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                (a.parse::<usize>().unwrap()..=b.parse().unwrap()).contains(&c)
            })
        };
        for t in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
            let name = fs::read_to_string(t.path().join("comm")).unwrap_or_default().trim_end().to_string();
            let Some(cpu) = name.strip_prefix("uring-").and_then(|r| r.split('-').next()) else { continue };
            if name.ends_with("-rd") || !online(cpu) {
                continue;
            }
            let status = fs::read_to_string(t.path().join("status")).unwrap_or_default();
            let allowed = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).map(str::trim);
            assert_eq!(allowed, Some(cpu), "{name} is not pinned to its CPU after large reads");
        }
        // A large read of an upper file (write-only handles left the kernel nothing cached)
        // is read into the buffer by the queue thread's helper.
        let big: Vec<u8> = (0..(3 << 20)).map(|i| (i % 241) as u8).collect();
        fs::write(m.join("upbig"), &big).unwrap();
        assert!(fs::read(m.join("upbig")).unwrap() == big, "3 MiB upper file read back differs");
        let helpers = fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .filter(|t| {
                fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end().ends_with("-rd"))
            })
            .count();
        assert!(helpers > 0, "no io_uring read helper thread after large reads of an upper file");
        // The helper runs at normal priority whatever its queue thread's policy.
        for (name, policy) in thread_policies(pid).iter().filter(|(n, _)| n.ends_with("-rd")) {
            assert_eq!(*policy, 0, "read helper {name} is not SCHED_OTHER");
        }
    } else {
        assert_eq!(laid_seen, 0, "file pages kept mapped without io_uring");
    }
    drop(mnt);
}
