//! The command-line contract: how container engines and mount.fuse3 start the server, and
//! what bad input gets (one clear line, non-zero exit, no mount).
mod common;
use common::*;
use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

fn run(args: &[&str]) -> std::process::Output {
    Command::new(layerfs_bin()).args(args).output().unwrap()
}

#[test]
fn help_and_version_exit_zero_without_mounting() {
    let o = run(&["--help"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("lowerdir="));
    let o = run(&["-V"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("layerfs "));
}

fn assert_refused(args: &[&str], want: &str, mnt: &std::path::Path) {
    let o = run(args);
    // A mount made by mistake goes before the asserts can fail (a test leaves none behind).
    let leftover = is_mounted(mnt).then(|| Mounted { mnt: mnt.to_path_buf(), fuse: true });
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{args:?} should fail");
    assert!(err.contains(want), "{args:?}: stderr {err:?} lacks {want:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line expected: {err:?}");
    assert!(err.starts_with("layerfs: "), "{err:?}");
    assert!(leftover.is_none(), "{args:?} left a mount");
}

#[test]
fn bad_input_is_refused_with_one_line_and_no_mount() {
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    let (l, u, w, m) = (l.to_str().unwrap(), u.to_str().unwrap(), w.to_str().unwrap(), m.to_str().unwrap());
    let mp = std::path::Path::new(m);
    fs::write(format!("{l}/file"), b"x").unwrap();
    let o = |x: &str| x.to_string();
    assert_refused(&["-o", &o(&format!("lowerdir={l}/missing")), m], "missing", mp);
    assert_refused(&["-o", &o(&format!("lowerdir={l}/file")), m], "not a directory", mp);
    assert_refused(&["-o", &o(&format!("lowerdir={l},upperdir={u}")), m], "without workdir", mp);
    assert_refused(&["-o", &o(&format!("lowerdir={l},workdir={w}")), m], "without upperdir", mp);
    let nested_w = s.path("u/work");
    assert_refused(
        &["-o", &format!("lowerdir={l},upperdir={u},workdir={}", nested_w.display()), m],
        "inside upperdir",
        mp,
    );
    let nested_u = s.path("w/up");
    assert_refused(
        &["-o", &format!("lowerdir={l},upperdir={},workdir={w}", nested_u.display()), m],
        "inside workdir",
        mp,
    );
    assert_refused(&["-o", &format!("lowerdir={l}"), l], "mountpoint", std::path::Path::new(l));
    let inside = s.path("l/sub");
    assert_refused(&["-o", &format!("lowerdir={l}"), inside.to_str().unwrap()], "inside", &inside);
    let lower_in_mnt = s.path("m/layer");
    assert_refused(&["-o", &format!("lowerdir={}", lower_in_mnt.display()), m], "inside the mountpoint", mp);
    assert_refused(&["-o", &format!("lowerdir={l},upperdir={u},workdir={u}"), m], "different", mp);
    assert_refused(&["-o", "upperdir=/x", m], "no lowerdir", mp);
    assert_refused(&["-o", &format!("lowerdir={l}")], "no mountpoint", mp);
    assert_refused(&["-o", &format!("lowerdir={l},timeout=abc"), m], "timeout", mp);
    assert_refused(&["-o", &format!("lowerdir={l},redirect_dir=on"), m], "redirect_dir", mp);
    assert_refused(&["--frobnicate", m], "unknown", mp);
    assert_refused(&["-o", &format!("lowerdir={l}"), "a", "b", m], "too many", mp);
    let many = vec![l; 1100].join(":");
    assert_refused(&["-o", &format!("lowerdir={many}"), m], "too many lower layers", mp);
    // Upper and work on different filesystems.
    if std::path::Path::new("/dev/shm").is_dir() {
        let shm = tempfile::tempdir_in("/dev/shm").unwrap();
        let w2 = shm.path().join("w");
        fs::create_dir(&w2).unwrap();
        if fs::metadata(&w2).map(|x| std::os::unix::fs::MetadataExt::dev(&x)).ok()
            != fs::metadata(u).map(|x| std::os::unix::fs::MetadataExt::dev(&x)).ok()
        {
            assert_refused(
                &["-o", &format!("lowerdir={l},upperdir={u},workdir={}", w2.display()), m],
                "same filesystem",
                mp,
            );
        }
    }
    // Work on a bind mount of the upper's filesystem: renames between them would fail (EXDEV).
    if is_root() {
        let real = std::path::Path::new(u).parent().unwrap().join("realw");
        let bw = std::path::Path::new(u).parent().unwrap().join("bindw");
        fs::create_dir_all(&real).unwrap();
        fs::create_dir_all(&bw).unwrap();
        assert!(Command::new("mount").arg("--bind").arg(&real).arg(&bw).status().unwrap().success());
        assert_refused(
            &["-o", &format!("lowerdir={l},upperdir={u},workdir={}", bw.display()), m],
            "same mount",
            mp,
        );
        assert!(Command::new("umount").arg(&bw).status().unwrap().success());
        // A bind mount of the upper directory (or of a directory above it) given as a lower
        // one: the paths differ, the directory is the same, and writes would show in the layer.
        let bu = std::path::Path::new(u).parent().unwrap().join("bindu");
        fs::create_dir_all(&bu).unwrap();
        assert!(Command::new("mount").arg("--bind").arg(u).arg(&bu).status().unwrap().success());
        let r = std::panic::catch_unwind(|| {
            assert_refused(
                &["-o", &format!("lowerdir={}:{l},upperdir={u},workdir={w}", bu.display()), m],
                "overlaps",
                mp,
            );
        });
        assert!(Command::new("umount").arg(&bu).status().unwrap().success());
        r.unwrap();
        let parent = std::path::Path::new(u).parent().unwrap();
        let bp = tempfile::tempdir().unwrap();
        assert!(Command::new("mount").arg("--bind").arg(parent).arg(bp.path()).status().unwrap().success());
        let r = std::panic::catch_unwind(|| {
            let inner = bp.path().join("u");
            assert_refused(
                &["-o", &format!("lowerdir={}:{l},upperdir={u},workdir={w}", inner.display()), m],
                "overlaps",
                mp,
            );
        });
        assert!(Command::new("umount").arg(bp.path()).status().unwrap().success());
        r.unwrap();
    }
}

#[test]
fn engine_style_invocations_mount() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l1, l2, u, w, m) = (s.path("l1"), s.path("l,2"), s.path("u"), s.path("w"), s.path("m"));
    let l3 = s.path("l:3");
    fs::write(l1.join("top"), b"1").unwrap();
    fs::write(l2.join("mid"), b"2").unwrap();
    fs::write(l3.join("bottom"), b"3").unwrap();
    // containers-storage: -o DATA MOUNTPOINT, with context="..,.." and id mappings appended,
    // unknown kernel options, escaped separators, repeated -o after the positional.
    let data = format!(
        "lowerdir={}:{}:{},upperdir={},workdir={},,context=\"system_u:object_r:container_file_t:s0:c1,c2\",uidmapping=0:0:65536,gidmapping=0:0:65536,userxattr,volatile,",
        l1.display(),
        l2.display().to_string().replace(',', "\\,"),
        l3.display().to_string().replace(':', "\\:"),
        u.display(),
        w.display()
    );
    let o =
        Command::new(layerfs_bin()).arg("-o").arg(&data).arg(&m).arg("-o").arg("noatime").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unknown argument ignored: userxattr"), "{err}");
    // Exit 0 means mounted and serving: the files are there right away.
    let mut guard = Mounted { mnt: m.clone(), fuse: true };
    assert_eq!(fs::read(m.join("top")).unwrap(), b"1");
    // The type names the server (`fuse.layerfs`, as `fuse.fuse-overlayfs`), root's own mount(2)
    // included.
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let mline = mounts.lines().find(|l| l.contains(m.to_str().unwrap())).unwrap_or_default().to_string();
    assert!(mline.contains(" fuse.layerfs "), "{mline}");
    assert_eq!(fs::read(m.join("mid")).unwrap(), b"2");
    assert_eq!(fs::read(m.join("bottom")).unwrap(), b"3");
    guard.unmount();
    // mount.fuse3 style: SOURCE MOUNTPOINT -o opts.
    let o = Command::new(layerfs_bin())
        .arg("overlay")
        .arg(&m)
        .arg("-o")
        .arg(format!(
            "lowerdir={},upperdir={},workdir={},subtype=ovl-test",
            l1.display(),
            u.display(),
            w.display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut g = Mounted { mnt: m.clone(), fuse: true };
    assert_eq!(fs::read(m.join("top")).unwrap(), b"1");
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let mline = mounts.lines().find(|l| l.contains(m.to_str().unwrap())).unwrap_or_default().to_string();
    assert!(mline.starts_with("overlay ") && mline.contains(" fuse.ovl-test "), "{mline}");
    g.unmount();
    // A source named like a subcommand is still a source: `diff` ran the layer tool (exit 0,
    // nothing mounted, a tar written to a file named after the options).
    let opts = format!("lowerdir={},upperdir={},workdir={}", l1.display(), u.display(), w.display());
    let o = Command::new(layerfs_bin()).arg("diff").arg(&m).arg("-o").arg(&opts).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let _g = Mounted { mnt: m.clone(), fuse: true };
    assert_eq!(fs::read(m.join("top")).unwrap(), b"1");
}

/// SIGUSR1 logs statistics and the server goes on serving, as fuse-overlayfs's does (its
/// default action ended the server and left its mount dead).
#[test]
fn sigusr1_logs_statistics_and_keeps_serving() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, m) = (s.path("l"), s.path("m"));
    fs::write(l.join("f"), b"x").unwrap();
    let opts = format!("lowerdir={}", l.display());
    let child = spawn_layerfs_fg(&opts, &m, &[], std::process::Stdio::piped());
    let mut g = Mounted { mnt: m.clone(), fuse: true };
    assert_eq!(fs::read(m.join("f")).unwrap(), b"x");
    // SAFETY: sending a signal to our own child server.
    unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) };
    std::thread::sleep(Duration::from_millis(300));
    let mut child = child;
    assert!(child.try_wait().unwrap().is_none(), "SIGUSR1 ended the server");
    assert_eq!(fs::read(m.join("f")).unwrap(), b"x");
    g.unmount();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("statistics: ") && err.contains(" nodes ("), "{err}");
}

fn wait_gone(pid: u32) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.contains(") Z ") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn server_exits_on_unmount_and_unmounts_on_sigterm() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, m) = (s.path("l"), s.path("m"));
    fs::write(l.join("f"), b"x").unwrap();
    let mut g = mount_layerfs(std::slice::from_ref(&l), None, &m, "");
    let pid = server_pid(&m).expect("server process");
    g.unmount();
    assert!(wait_gone(pid), "server still running after fusermount3 -u");

    let g = mount_layerfs(std::slice::from_ref(&l), None, &m, "");
    let pid = server_pid(&m).expect("server process");
    // SAFETY: sending a signal to our own child server.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(wait_gone(pid), "server still running after SIGTERM");
    assert!(!is_mounted(&m), "SIGTERM left the mount behind");
    drop(g);
}

#[test]
fn read_only_mount_gives_erofs() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, m) = (s.path("l"), s.path("m"));
    fs::write(l.join("f"), b"x").unwrap();
    let _g = mount_layerfs(std::slice::from_ref(&l), None, &m, "");
    let e = fs::write(m.join("new"), b"y").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    let e = fs::OpenOptions::new().write(true).open(m.join("f")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    let e = fs::remove_file(m.join("f")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    assert_eq!(fs::read(m.join("f")).unwrap(), b"x");
}

#[test]
fn debug_flag_logs_every_request() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, m) = (s.path("l"), s.path("m"));
    fs::write(l.join("f"), b"x").unwrap();
    let child = Command::new(layerfs_bin())
        .arg("-d")
        .arg("-o")
        .arg(format!("lowerdir={}", l.display()))
        .arg(&m)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !is_mounted(&m) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut g = Mounted { mnt: m.clone(), fuse: true };
    assert_eq!(fs::read(m.join("f")).unwrap(), b"x");
    g.unmount();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lookup(parent=1, name=\"f\")"), "{err}");
    assert!(err.contains("open(ino="), "{err}");
}

/// A SIGTERM while the mount is busy leaves it mounted and serving (logged); a later one, once
/// idle, unmounts and ends the server. The later ones were ignored (fuser's unmounter is spent
/// by the first attempt).
#[test]
fn a_signal_after_a_busy_unmount_still_unmounts() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::write(l.join("f"), b"a").unwrap();
    let opts = format!("lowerdir={},upperdir={},workdir={}", l.display(), u.display(), w.display());
    let mut child = spawn_layerfs_fg(&opts, &m, &[], std::process::Stdio::null());
    let held = fs::File::open(m.join("f")).unwrap();
    // SAFETY: signalling the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none() && is_mounted(&m), "busy: still serving");
    drop(held);
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_exit(&mut child, "the second SIGTERM did not end the server");
    assert!(!is_mounted(&m));
}

/// A signal unmounts the path only while the server's own mount is the one there: after a
/// lazy unmount (`umount -l`, what containers-storage falls back to on EBUSY) and another
/// mount at the same path, SIGTERM unmounted that other mount (a container's root, say). The
/// detached mount is served until its last user lets go, and then the server ends. With
/// `auto_unmount`, SIGTERM unmounts too (the watcher then finds nothing to do).
#[test]
fn a_signal_unmounts_only_the_servers_own_mount() {
    let Some((_s, l, m)) = root_stack() else { return };
    let opts = format!("lowerdir={}", l.display());
    let mut child = spawn_layerfs_fg(&opts, &m, &[], std::process::Stdio::null());
    let held = fs::File::open(m.join("f")).unwrap();
    assert!(Command::new("umount").arg("-l").arg(&m).status().unwrap().success());
    assert!(Command::new("mount").args(["-t", "tmpfs", "other"]).arg(&m).status().unwrap().success());
    let other = Mounted { mnt: m.clone(), fuse: false };
    // SAFETY: signalling the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(500));
    assert!(is_mounted(&m), "SIGTERM unmounted the tmpfs mounted since");
    assert!(child.try_wait().unwrap().is_none(), "the detached mount is still in use");
    let mut buf = String::new();
    use std::io::Read;
    (&held).read_to_string(&mut buf).unwrap();
    assert_eq!(buf, "a");
    drop(held);
    wait_exit(&mut child, "the server outlived its detached mount");
    drop(other);

    let opts = format!("lowerdir={},auto_unmount", l.display());
    let mut child = spawn_layerfs_fg(&opts, &m, &[], std::process::Stdio::null());
    assert_eq!(fs::read(m.join("f")).unwrap(), b"a");
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_exit(&mut child, "SIGTERM did not end an auto_unmount server");
    assert!(!is_mounted(&m), "SIGTERM left an auto_unmount mount behind");
}

/// For the tests that need root (their own mounts and signals): a scratch area, a layer `l`
/// holding `f` ("a"), and a mountpoint `m`. None where they cannot run; in CI (root) a refusal
/// to mount fails the test instead.
fn root_stack() -> Option<(Scratch, std::path::PathBuf, std::path::PathBuf)> {
    if !can_mount() || !root_or_skip("mounts as root and signals its server") {
        return None;
    }
    let s = Scratch::new();
    let (l, m) = (s.path("l"), s.path("m"));
    fs::write(l.join("f"), b"a").unwrap();
    Some((s, l, m))
}

/// Waits (10 s at most) for `child` to exit; `why` says what its still running means.
fn wait_exit(child: &mut std::process::Child, why: &str) {
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(10), "{why}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `auto_unmount` watcher of the mount at `m` (a process `layerfs-auto-unmount M`).
fn watcher_pid(m: &std::path::Path) -> Option<u32> {
    let want = ["layerfs-auto-unmount".to_string(), m.to_string_lossy().into_owned()];
    find_process(|args| args == want)
}

/// `auto_unmount`: a server killed with SIGKILL leaves no dead mount (ENOTCONN) behind, served
/// through io_uring queues or `/dev/fuse` alike (fusermount3's watcher left one with the
/// queues: its probe got ECONNABORTED). The watcher unmounts only the server's own mount: not
/// one mounted over it, nor one mounted at the path after a clean unmount.
#[test]
fn auto_unmount_after_kill_9_leaves_no_dead_mount() {
    let Some((_s, l, m)) = root_stack() else { return };
    let kill9 = |m: &std::path::Path| {
        let pid = server_pid(m).expect("server process");
        // SAFETY: killing the server this test started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        assert!(wait_gone(pid), "the server outlived SIGKILL");
    };
    for extra in ["auto_unmount", "auto_unmount,uring=0"] {
        let mut g = mount_layerfs(std::slice::from_ref(&l), None, &m, extra);
        assert_eq!(fs::read(m.join("f")).unwrap(), b"a");
        let watcher = watcher_pid(&m).expect("watcher process");
        // Not "layerfs": `pkill -9 layerfs` leaves it. (Named by itself once started: "exe",
        // from /proc/self/exe, until then.)
        let name = || fs::read_to_string(format!("/proc/{watcher}/comm")).unwrap_or_default();
        wait_until(Duration::from_secs(10), || name().trim() == "auto-unmount");
        assert_eq!(name().trim(), "auto-unmount");
        kill9(&m);
        assert!(wait_gone(watcher), "{extra}: the watcher outlived the server");
        let left = is_mounted(&m);
        if !left {
            g.mnt = Default::default();
        }
        drop(g);
        assert!(!left, "{extra}: a dead mount was left behind");
    }

    // Killed right after its first answer, in the foreground (whose mount serves before the
    // server is done starting), 100 times through the io_uring queues and 20 through
    // /dev/fuse: the watcher has the mount's device before any request is served. (The
    // queues answered before the server told it, and a server killed in that moment left a
    // dead mount, about 2 times in 100 here.)
    for (extra, runs) in [("auto_unmount", 100), ("auto_unmount,uring=0", 20)] {
        for i in 0..runs {
            let opts = format!("lowerdir={},{extra}", l.display());
            let mut child = spawn_layerfs_fg(&opts, &m, &[], std::process::Stdio::null());
            let mut g = Mounted { mnt: m.clone(), fuse: true };
            assert_eq!(fs::read(m.join("f")).unwrap(), b"a");
            child.kill().unwrap();
            child.wait().unwrap();
            wait_until(Duration::from_secs(10), || !is_mounted(&m));
            let left = is_mounted(&m);
            if !left {
                g.mnt = Default::default();
            }
            drop(g);
            assert!(!left, "{extra}, run {i}: killed at once, the server left a dead mount");
        }
    }

    // A tmpfs over the mount: the dead mount under it stays, the tmpfs is not touched.
    let mut dead = mount_layerfs(std::slice::from_ref(&l), None, &m, "auto_unmount");
    let watcher = watcher_pid(&m).expect("watcher process");
    assert!(Command::new("mount").args(["-t", "tmpfs", "over"]).arg(&m).status().unwrap().success());
    let mut over = Mounted { mnt: m.clone(), fuse: false };
    fs::write(m.join("mine"), b"t").unwrap();
    kill9(&m);
    assert!(wait_gone(watcher), "the watcher outlived the server");
    assert_eq!(fs::read(m.join("mine")).unwrap(), b"t", "the watcher unmounted the tmpfs over the mount");
    over.unmount();
    assert!(is_mounted(&m), "the dead mount under the tmpfs");
    assert!(Command::new("umount").arg("-l").arg(&m).status().unwrap().success());
    dead.mnt = Default::default();

    // Detached (`umount -l`) while in use, a tmpfs mounted at the path, then the server ends
    // when its last user lets go: the tmpfs stays.
    let mut g = mount_layerfs(std::slice::from_ref(&l), None, &m, "auto_unmount");
    let (pid, watcher) = (server_pid(&m).expect("server process"), watcher_pid(&m).expect("watcher"));
    let held = fs::File::open(m.join("f")).unwrap();
    assert!(Command::new("umount").arg("-l").arg(&m).status().unwrap().success());
    g.mnt = Default::default();
    assert!(Command::new("mount").args(["-t", "tmpfs", "other"]).arg(&m).status().unwrap().success());
    let _other = Mounted { mnt: m.clone(), fuse: false };
    fs::write(m.join("mine"), b"o").unwrap();
    drop(held);
    assert!(wait_gone(pid), "the server outlived its detached mount");
    assert!(wait_gone(watcher), "the watcher outlived the server");
    assert_eq!(fs::read(m.join("mine")).unwrap(), b"o", "the watcher unmounted the tmpfs at the path");
}

/// `layerfs -f -o OPTS M` under `strace -f`, its mount syscalls changed by `inject`.
fn strace_layerfs(inject: &str, opts: &str, m: &std::path::Path) -> std::process::Child {
    Command::new("strace")
        .args(["-q", "-f", "-o", "/dev/null", "-e", "trace=mount", "-e", inject])
        .arg(layerfs_bin())
        .args(["-f", "-o", opts])
        .arg(m)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// `auto_unmount`: a server killed after its mount syscall but before it could name the mount
/// to its watcher (strace holds it at the syscall's exit) leaves no dead mount either: it told
/// the watcher the mounts at the path before mounting, and the FUSE mount on top that was not
/// among them, with no server left (ENOTCONN), is its own. A server killed before it mounted
/// leaves the mount that was there alone.
#[test]
fn auto_unmount_after_kill_9_between_the_mount_and_naming_it() {
    let Some((_s, l, m)) = root_stack() else { return };
    if Command::new("strace").arg("-V").output().is_err() {
        assert!(!must_mount(), "strace is needed here (scripts/deps.sh installs it)");
        return;
    }
    for extra in ["auto_unmount", "auto_unmount,uring=0"] {
        let opts = format!("lowerdir={},{extra}", l.display());
        let mut strace = strace_layerfs("inject=mount:delay_exit=3000000", &opts, &m);
        let mut g = Mounted { mnt: m.clone(), fuse: true };
        wait_until(Duration::from_secs(10), || is_mounted(&m));
        assert!(is_mounted(&m), "{extra}: no mount while the server is held at its mount syscall's exit");
        // The server, not strace (whose arguments hold the binary and the mountpoint too).
        let want = m.to_string_lossy().into_owned();
        let pid = find_process(|a| a.first().is_some_and(|b| b.ends_with("layerfs")) && a.contains(&want))
            .expect("server process");
        let watcher = watcher_pid(&m).expect("watcher process");
        // SAFETY: killing the server this test started. It dies as strace lets it go on,
        // in 3 s, before it returns from the mount syscall.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        assert!(wait_gone(pid), "the server outlived SIGKILL");
        assert!(wait_gone(watcher), "{extra}: the watcher outlived the server");
        let left = is_mounted(&m);
        if !left {
            g.mnt = Default::default();
        }
        drop(g);
        let _ = strace.kill();
        let _ = strace.wait();
        assert!(!left, "{extra}: killed before naming its mount, the server left a dead mount");
    }
    // Killed before mounting: a tmpfs at the path stays.
    assert!(Command::new("mount").args(["-t", "tmpfs", "there"]).arg(&m).status().unwrap().success());
    let _there = Mounted { mnt: m.clone(), fuse: false };
    fs::write(m.join("mine"), b"t").unwrap();
    let opts = format!("lowerdir={},auto_unmount", l.display());
    let mut strace = strace_layerfs("inject=mount:signal=KILL", &opts, &m);
    let _ = strace.wait();
    wait_until(Duration::from_secs(10), || watcher_pid(&m).is_none());
    assert!(watcher_pid(&m).is_none(), "the watcher outlived the server");
    assert_eq!(fs::read(m.join("mine")).unwrap(), b"t", "the watcher unmounted the tmpfs at the path");
}

/// A server in the background (its standard error is /dev/null) sends its warnings to the
/// system log, as `layerfs[PID]` with the daemon facility, and so does its `auto_unmount`
/// watcher; in the foreground both stay on standard error. The socket is a test's own,
/// named by `LAYERFS_SYSLOG`.
#[test]
fn a_background_server_and_its_watcher_log_to_the_system_log() {
    use std::os::unix::net::UnixDatagram;
    let Some((s, l, m)) = root_stack() else { return };
    set_xattr(&l.join("f"), "user.containers.override_stat", b"not an override");
    let sock_path = s.dir.path().join("log");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The first line that has `want` (the server may warn more than once before).
    let find = |want: &str| -> String {
        let mut seen = Vec::new();
        loop {
            let mut buf = vec![0u8; 4096];
            let Ok(n) = sock.recv(&mut buf) else { panic!("no line with {want:?} within 10 s: {seen:?}") };
            let line = String::from_utf8_lossy(&buf[..n]).into_owned();
            if line.contains(want) {
                return line;
            }
            seen.push(line);
        }
    };
    let opts = format!("lowerdir={},xattr_permissions=2,auto_unmount", l.display());
    let out = Command::new(layerfs_bin())
        .args(["-o", &opts])
        .arg(&m)
        .env("LAYERFS_SYSLOG", &sock_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut g = Mounted { mnt: m.clone(), fuse: true };
    let pid = server_pid(&m).expect("server process");
    assert_eq!(fs::read(m.join("f")).unwrap(), b"a");
    let line = find(&format!("layerfs[{pid}]: ignoring malformed user.containers.override_stat"));
    assert!(line.starts_with("<28>"), "{line:?}: not a warning of the daemon facility");

    // The watcher's report: a tmpfs covers the mount when the server is killed.
    let watcher = watcher_pid(&m).expect("watcher process");
    assert!(Command::new("mount").args(["-t", "tmpfs", "over"]).arg(&m).status().unwrap().success());
    let mut over = Mounted { mnt: m.clone(), fuse: false };
    // SAFETY: killing the server this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert!(wait_gone(pid) && wait_gone(watcher), "the server or the watcher outlived SIGKILL");
    let line = find(&format!("layerfs[{watcher}]: auto_unmount: another mount covers {}", m.display()));
    assert!(line.starts_with("<27>"), "{line:?}: not an error of the daemon facility");
    over.unmount();
    assert!(Command::new("umount").arg("-l").arg(&m).status().unwrap().success());
    g.mnt = Default::default();

    // In the foreground the warning goes to standard error, not to the system log (emptied of
    // the lines before).
    sock.set_nonblocking(true).unwrap();
    while sock.recv(&mut [0u8; 4096]).is_ok() {}
    let err = s.dir.path().join("stderr");
    let mut child = spawn_layerfs_fg(
        &format!("lowerdir={},xattr_permissions=2", l.display()),
        &m,
        &[("LAYERFS_SYSLOG", sock_path.to_str().unwrap())],
        std::process::Stdio::from(fs::File::create(&err).unwrap()),
    );
    let mut g = Mounted { mnt: m.clone(), fuse: true };
    assert_eq!(fs::read(m.join("f")).unwrap(), b"a");
    g.unmount();
    let _ = child.wait();
    assert!(fs::read_to_string(&err).unwrap().contains("ignoring malformed user.containers.override_stat"));
    assert!(sock.recv(&mut [0u8; 64]).is_err(), "a foreground server wrote to the system log");
}

/// Every thread of a server but its signal thread blocks SIGTERM, SIGINT and SIGHUP, with
/// `auto_unmount` too: the kernel hands a process's signal to any thread that does not block
/// it, and such a thread (the watcher's reaper did not) would take it with the default
/// action, ending the server with its mount in place (CI at 90b7246 saw that, once).
#[test]
fn only_the_signal_thread_takes_termination_signals() {
    let Some((_s, l, m)) = root_stack() else { return };
    for extra in ["", "auto_unmount"] {
        let _g = mount_layerfs(std::slice::from_ref(&l), None, &m, extra);
        assert_eq!(fs::read(m.join("f")).unwrap(), b"a");
        let pid = server_pid(&m).expect("server process");
        let term = (1u64 << (libc::SIGTERM - 1)) | (1 << (libc::SIGINT - 1)) | (1 << (libc::SIGHUP - 1));
        let mut names = Vec::new();
        for t in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let t = t.unwrap().path();
            let name = fs::read_to_string(t.join("comm")).unwrap_or_default().trim().to_string();
            let status = fs::read_to_string(t.join("status")).unwrap_or_default();
            let blocked = status
                .lines()
                .find_map(|l| l.strip_prefix("SigBlk:"))
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
                .unwrap_or(0);
            if name != "signals" {
                assert_eq!(blocked & term, term, "{extra:?}: thread {name:?} takes termination signals");
            }
            names.push(name);
        }
        assert!(names.iter().any(|n| n == "signals"), "{extra:?}: no signal thread among {names:?}");
        if extra == "auto_unmount" {
            assert!(names.iter().any(|n| n == "auto-unmount"), "no watcher's reaper among {names:?}");
        }
    }
}
