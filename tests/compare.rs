//! `layerfs compare`: no difference for a command both implementations run alike (on layers
//! in `.wh.` form, converted for the kernel), a reported difference for one they do not
//! (creating a `.wh.` name: EINVAL on layerfs), and the layers given are never changed.

mod common;
#[path = "common/signals.rs"]
mod signals;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use signals::default_signals;

/// Two layers with every `.wh.` form: a whiteout of a lower file, an opaque directory.
fn layers(s: &Scratch) -> Vec<PathBuf> {
    let (top, base) = (s.path("top"), s.path("base"));
    fs::write(base.join("a"), b"a").unwrap();
    fs::write(base.join("gone"), b"gone").unwrap();
    fs::create_dir_all(base.join("dir/sub")).unwrap();
    fs::write(base.join("dir/old"), b"old").unwrap();
    fs::write(base.join("dir/sub/deep"), b"deep").unwrap();
    fs::create_dir(base.join("lib")).unwrap();
    fs::write(base.join("lib/x.so"), b"elf").unwrap();
    std::os::unix::fs::symlink("lib/x.so", base.join("link")).unwrap();
    fs::write(top.join(".wh.gone"), b"").unwrap();
    fs::create_dir(top.join("dir")).unwrap();
    fs::write(top.join("dir/.wh..wh..opq"), b"").unwrap();
    fs::write(top.join("dir/new"), b"new").unwrap();
    vec![top, base]
}

fn compare(lowers: &[PathBuf], extra: &[&str], cmd: &str) -> Output {
    Command::new(layerfs_bin())
        .arg("compare")
        .args(extra)
        .args(lowers)
        .arg("--")
        .args(["sh", "-c", cmd])
        .output()
        .unwrap()
}

fn tree_listing(p: &Path) -> Vec<String> {
    snapshot(p, true).into_iter().map(|(k, e)| format!("{k} {e:?}")).collect()
}

#[test]
fn a_command_both_run_alike_shows_no_difference() {
    if !can_mount() || !can_kernel_overlay() {
        return;
    }
    let s = Scratch::new();
    let lowers = layers(&s);
    let before: Vec<_> = lowers.iter().map(|l| tree_listing(l)).collect();
    let cmd = "set -e; test \"$PWD\" = \"$LAYERFS_COMPARE_ROOT\"; echo hi > new; rm a; \
               mkdir -p made/deeper; chmod 0600 lib/x.so; echo more >> dir/new; \
               mv made/deeper made/moved; ln -s made m; rm -r lib; touch dir/later; ls -R . >/dev/null";
    let out = compare(&lowers, &[], cmd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("kernel: exit 0, layerfs: exit 0"), "{stdout}");
    assert!(stdout.contains("identical:"), "{stdout}");
    let after: Vec<_> = lowers.iter().map(|l| tree_listing(l)).collect();
    assert_eq!(before, after, "the given layers changed");
}

#[test]
fn a_command_that_behaves_differently_is_reported() {
    if !can_mount() || !can_kernel_overlay() {
        return;
    }
    let s = Scratch::new();
    let lowers = layers(&s);
    let out = compare(&lowers, &["--keep"], "echo x > ok; touch .wh.x");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("exit code: kernel 0, layerfs 1"), "{stdout}");
    assert!(stdout.contains("merged tree: only on kernel: .wh.x"), "{stdout}");
    assert!(stdout.contains("Invalid argument"), "layerfs's stderr is shown: {stdout}");
    assert!(!stdout.contains(": ok"), "ok is the same on both: {stdout}");
    let kept = stdout.lines().find_map(|l| l.strip_prefix("kept: ")).expect("kept directory");
    let kept = Path::new(kept);
    assert!(kept.join("kernel/upper/ok").exists() && kept.join("layerfs/upper/ok").exists());
    assert!(!is_mounted(&kept.join("kernel/mnt")) && !is_mounted(&kept.join("layerfs/mnt")));
    // The kernel's copy of the layers is in the kernel's forms.
    assert!(fs::symlink_metadata(kept.join("kernel/lower0/.wh.gone")).is_err());
    assert!(fs::symlink_metadata(kept.join("kernel/lower0/gone")).is_ok());
    assert!(fs::symlink_metadata(kept.join("layerfs/lower0/.wh.gone")).is_ok());
    fs::remove_dir_all(kept).unwrap();
}

#[test]
fn usage_errors_compare_nothing() {
    let s = Scratch::new();
    let l = s.path("l");
    let o = Command::new(layerfs_bin()).args(["compare"]).arg(&l).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o =
        Command::new(layerfs_bin()).args(["compare", "/nonexistent/layer", "--", "true"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/layer"));
}

/// What compare missed or made up: a change of the root itself, a capability and an ACL (set
/// on the kernel side only, by a command that tells the sides apart), a command that cannot
/// be started (reported identical, exit 0), and the user-namespace opaque mark of a layer
/// (which the kernel copies up as a plain xattr: a made-up opaque upper directory).
#[test]
fn the_root_capabilities_acls_and_unrunnable_commands_are_told() {
    if !can_mount() || !can_kernel_overlay() {
        return;
    }
    let s = Scratch::new();
    let lowers = layers(&s);
    let on_kernel = "grep -q \"^overlay $PWD \" /proc/mounts";
    let cmd = format!(
        "touch lib/x.so dir/new; if {on_kernel}; then chmod 700 .; setfattr -n security.capability \
         -v 0x0100000200200000000000000000000000000000 lib/x.so; setfacl -m u:7:r dir/new; fi"
    );
    let out = compare(&lowers, &[], &cmd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for d in ["differs: .\n", "differs: lib/x.so", "differs: dir/new"] {
        assert!(stdout.contains(d), "{d}: {stdout}");
    }
    let out = Command::new(layerfs_bin())
        .arg("compare")
        .args(&lowers)
        .args(["--", "/no/such/command"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stdout));
    // A layer in fuse-overlayfs's form: the marker file and user.overlay.opaque.
    set_xattr(&lowers[0].join("dir"), "user.overlay.opaque", b"y");
    let out = compare(&lowers, &[], "touch dir/newer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
}

/// Ctrl-C (or SIGTERM) while either side runs leaves nothing mounted and no scratch directory,
/// ends the command compare waits for, and exits with 128 + the signal's number. Before, the
/// signal ended compare at once: the kernel or layerfs mount stayed, with the copies.
#[test]
fn a_signal_leaves_no_mount_and_no_copies() {
    if !can_mount() || !can_kernel_overlay() {
        return;
    }
    use std::os::unix::process::CommandExt;
    let s = Scratch::new();
    let lowers = layers(&s);
    let (scratch, marks) = (s.path("scratch"), s.path("marks"));
    let m = marks.display();
    // The first case's command is no shell (a shell clears its signal mask): it must get the
    // signal as compare started it. In the others `sh` counts the runs (the kernel's is the
    // first) and the chosen one waits.
    let on_layerfs = format!(
        "n=$(ls {m} | wc -l); n=$((n + 1)); echo > {m}/$n; \
         if [ $n = 2 ]; then echo > {m}/waiting; sleep 60; echo > {m}/slept; fi"
    );
    let direct: Vec<String> = vec!["sleep".into(), "61.25".into()];
    let shell: Vec<String> = vec!["sh".into(), "-c".into(), on_layerfs];
    // A command that stops itself (as one in a background group does when it touches the
    // terminal): the signal must be followed by SIGCONT, or it stays pending.
    let stops: Vec<String> = vec![
        "sh".into(),
        "-c".into(),
        format!("echo $$ > {m}/stopped; kill -STOP $$; sleep 60; echo > {m}/slept"),
    ];
    for (cmd, side, sig, group) in [
        (&direct, "kernel", libc::SIGINT, true),
        (&shell, "layerfs", libc::SIGTERM, false),
        (&shell, "layerfs", libc::SIGINT, false),
        (&stops, "kernel", libc::SIGTERM, false),
    ] {
        let _ = fs::remove_dir_all(&marks);
        fs::create_dir(&marks).unwrap();
        let child = default_signals(&mut Command::new(layerfs_bin()))
            .env("TMPDIR", &scratch)
            .arg("compare")
            .args(&lowers)
            .arg("--")
            .args(cmd)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let t0 = std::time::Instant::now();
        let started = || {
            if cmd == &direct {
                find_process(|a| a == ["sleep", "61.25"]).is_some()
            } else if cmd == &stops {
                let pid = fs::read_to_string(marks.join("stopped")).unwrap_or_default();
                let stat = fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
                stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
            } else {
                marks.join("waiting").exists()
            }
        };
        while !started() {
            assert!(t0.elapsed().as_secs() < 60, "the command never started");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let scratch_dir = fs::read_dir(&scratch).unwrap().next().expect("compare's scratch").unwrap().path();
        let mnt = scratch_dir.join(side).join("mnt");
        // A failing run leaves no mount behind either.
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                if is_mounted(&self.0) {
                    let _ = Command::new("umount").arg("-l").arg(&self.0).status();
                }
            }
        }
        let _unmount = Unmount(mnt.clone());
        assert!(is_mounted(&mnt), "{} is not mounted", mnt.display());
        // A terminal's Ctrl-C goes to compare's process group, a kill(1) to compare alone.
        let target = if group { -pid } else { pid };
        // SAFETY: kill(2) of the child this test started (or its group).
        assert_eq!(unsafe { libc::kill(target, sig) }, 0);
        // Waited for with a deadline: a signal compare does not pass on would hang the test.
        let mut child = child;
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if t0.elapsed().as_secs() > 30 {
                // SAFETY: kill(2) of the child this test started and of what it started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = child.wait();
                let _ = Command::new("pkill").args(["-KILL", "-f", "61.25|marks/slept"]).status();
                panic!("{side}: compare did not end after the signal");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(128 + sig), "{side}: {stderr}");
        assert!(stderr.contains(&format!("interrupted by signal {sig}")), "{stderr}");
        assert!(!is_mounted(&mnt), "{} is still mounted", mnt.display());
        assert!(fs::read_dir(&scratch).unwrap().next().is_none(), "the scratch directory is left");
        assert!(t0.elapsed().as_secs() < 30, "{side}: the command was not ended");
        assert!(!marks.join("slept").exists());
        if cmd == &shell {
            // The kernel side ran to its end, the layerfs side started once.
            assert_eq!(fs::read_dir(&marks).unwrap().count(), 3, "{side}");
        }
    }
}

/// `compare --keep LOWERS -- COMMAND...` started through `launcher` (default actions for the
/// termination signals): its exit code and the `/proc/self/status` each side's COMMAND saved
/// as `status` (kernel, layerfs).
fn saved_status(launcher: &mut Command, lowers: &[PathBuf], command: &[&str]) -> (Option<i32>, [String; 2]) {
    let out = default_signals(launcher)
        .arg("compare")
        .arg("--keep")
        .args(lowers)
        .arg("--")
        .args(command)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let kept = Path::new(stdout.lines().find_map(|l| l.strip_prefix("kept: ")).expect("kept directory"));
    let read = |side: &str| {
        fs::read_to_string(kept.join(side).join("upper/status")).unwrap_or_else(|e| {
            panic!("compare ended ({:?}) with no status saved on {side}: {e}", out.status)
        })
    };
    let status = [read("kernel"), read("layerfs")];
    fs::remove_dir_all(kept).unwrap();
    (out.status.code(), status)
}

/// A signal mask field (`SigBlk:`, `SigIgn:`) of a `/proc/PID/status`.
fn mask(status: &str, field: &str) -> u64 {
    let hex = status.lines().find_map(|l| l.strip_prefix(field)).unwrap().trim();
    u64::from_str_radix(hex, 16).unwrap()
}

/// Every program compare starts gets the termination signals unblocked and not ignored (a
/// child inherits its parent's mask, and compare blocks them for its signal thread). A signal
/// compare was started ignoring (`nohup`) stays ignored, by compare (a SIGHUP from its
/// command does not stop it) and by its children.
#[test]
fn compare_starts_commands_with_signals_unblocked() {
    if !can_mount() || !can_kernel_overlay() {
        return;
    }
    let s = Scratch::new();
    let lowers = layers(&s);
    let bit = |s: i32| 1u64 << (s - 1);
    let term = bit(libc::SIGHUP) | bit(libc::SIGINT) | bit(libc::SIGTERM);
    // cp itself, not through a shell (a shell clears its signal mask).
    let (code, status) =
        saved_status(&mut Command::new(layerfs_bin()), &lowers, &["cp", "/proc/self/status", "status"]);
    assert_eq!(code, Some(1));
    for (side, st) in ["kernel", "layerfs"].iter().zip(&status) {
        for field in ["SigBlk:", "SigIgn:"] {
            assert_eq!(mask(st, field) & term, 0, "{side} {field}");
        }
    }
    let mut nohup = Command::new("nohup");
    nohup.arg(layerfs_bin());
    let (code, status) =
        saved_status(&mut nohup, &lowers, &["sh", "-c", "kill -HUP $PPID; exec cp /proc/self/status status"]);
    assert_eq!(code, Some(1), "compare took an ignored SIGHUP");
    for (side, st) in ["kernel", "layerfs"].iter().zip(&status) {
        assert_ne!(mask(st, "SigIgn:") & bit(libc::SIGHUP), 0, "{side}");
    }
}
