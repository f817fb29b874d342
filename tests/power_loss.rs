//! Power loss after copy-ups: a copied-up file's name must never come back, after a power
//! loss, on a short copy (a copy whose data had not reached the disk when its rename did).
//!
//! The upper filesystem (ext4 with a journal, or XFS) lives in an image on a loop device whose
//! backing file is served by a layerfs mount of its own, with no page cache, passthrough or
//! fsync between the loop device and that server's upper file: a write the loop device makes
//! is in the file once the server has answered it. The power loss is an abort of that mount's
//! FUSE connection while copy-ups run through the mount under test: from then on the device
//! takes no write, and the backing file, copied, is the disk as the power loss left it. The
//! copy is then checked (`e2fsck`) or its log replayed (XFS) and mounted: every name of the
//! upper must hold the whole lower file.
//!
//! With `fsync=0` (which skips the copy-up's write-back wait and fsync) the same run leaves
//! short copies under their names, so the check sees what it is there to see.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;

/// Lower files copied up by the run (at most; the power loss comes first).
const FILES: usize = 10000;
/// Their size: two pages each, so most of a copy-up is its wait for the disk.
const SIZE: usize = 8 << 10;
/// When the power loss comes: a second and a half into the run (about a third of the
/// copy-ups here), for the journal to have committed renames, and copy-ups to be in every
/// stage.
const CUT_AFTER: Duration = Duration::from_millis(1500);

fn content(i: usize) -> Vec<u8> {
    let mut r = Rng(0x5eed_0000 + i as u64);
    (0..SIZE / 8).flat_map(|_| r.next().to_le_bytes()).collect()
}

/// A loop device, detached when dropped.
struct LoopDev(String);

impl Drop for LoopDev {
    fn drop(&mut self) {
        for _ in 0..50 {
            if Command::new("losetup").args(["-d", &self.0]).status().is_ok_and(|s| s.success()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(o.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The kernel's number for the FUSE connection of the mount at `mnt` (its directory under
/// `/sys/fs/fuse/connections`).
fn connection_of(mnt: &Path) -> u64 {
    let dev = fs::metadata(mnt).unwrap().dev();
    ((libc::major(dev) as u64) << 20) | libc::minor(dev) as u64
}

/// Aborts FUSE connection `conn` through the fuse control filesystem, mounted first where it
/// is not (as systemd mounts it at boot; it is left mounted, since tests running beside this
/// one may use it).
fn abort_connection(conn: u64) {
    let ctl = Path::new("/sys/fs/fuse/connections");
    if !fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(2) == Some("fusectl"))
    {
        run("mount", &["-t", "fusectl", "fusectl", &ctl.to_string_lossy()]);
    }
    fs::write(ctl.join(conn.to_string()).join("abort"), "1").expect("abort the device's FUSE connection");
}

struct Outcome {
    /// Names the upper holds after the power loss.
    present: usize,
    /// Of them, those whose content is not the whole lower file.
    short: Vec<String>,
}

/// Copies up lower files one after the other (a `chmod` each) through a layerfs mount with
/// `extra` options whose upper is a fresh `fstype` filesystem, cuts the power in the middle
/// ([`CUT_AFTER`]), and checks the filesystem as it was left.
fn copy_ups_then_power_loss(fstype: &str, extra: &str) -> Outcome {
    let s = Scratch::new();
    let low = s.path("low");
    for i in 0..FILES {
        fs::write(low.join(format!("f{i}")), content(i)).unwrap();
    }
    // The device: a file in a layerfs upper, written through with no cache (see the top).
    let (dlow, dup, dwork, dmnt) =
        (s.path("dev-low"), s.path("dev-up"), s.path("dev-work"), s.path("dev-mnt"));
    let mut dev_mount =
        mount_layerfs(&[dlow], Some((&dup, &dwork)), &dmnt, "passthrough=0,writeback=0,fsync=0,uring=0");
    let img = dmnt.join("disk.img");
    fs::File::create(&img).unwrap().set_len(320 << 20).unwrap();
    let img_s = img.to_string_lossy().into_owned();
    match fstype {
        "xfs" => run("mkfs.xfs", &["-q", "-f", &img_s]),
        _ => run("mkfs.ext4", &["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", &img_s]),
    };
    let dev = LoopDev(run("losetup", &["-f", "--show", &img_s]));
    let inner = s.path("inner");
    // ext4 commits its journal every second, so that renames are committed within the run.
    let opts = if fstype == "xfs" { "defaults" } else { "commit=1" };
    run("mount", &["-o", opts, &dev.0, &inner.to_string_lossy()]);
    let mut inner_mount = Mounted { mnt: inner.clone(), fuse: false };
    let (up, work, mnt) = (inner.join("up"), inner.join("work"), s.path("mnt"));
    fs::create_dir(&up).unwrap();
    fs::create_dir(&work).unwrap();
    run("sync", &[]);
    let mut sut = mount_layerfs(std::slice::from_ref(&low), Some((&up, &work)), &mnt, extra);

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let chmods = {
        let (stop, done, mnt) = (stop.clone(), done.clone(), mnt.clone());
        std::thread::spawn(move || {
            use std::os::unix::fs::PermissionsExt;
            for i in 0..FILES {
                if stop.load(Ordering::Relaxed)
                    || fs::set_permissions(mnt.join(format!("f{i}")), fs::Permissions::from_mode(0o600))
                        .is_err()
                {
                    break;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Something else on the upper filesystem fsyncs now and then, as programs do: each fsync
    // commits the journal (XFS: forces the log) with every rename made before it.
    let committer = {
        let (stop, probe) = (stop.clone(), inner.join("probe"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let ok = fs::write(&probe, [0u8; 4096]).and_then(|_| fs::File::open(&probe)?.sync_all());
                if ok.is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    std::thread::sleep(CUT_AFTER);
    abort_connection(connection_of(&dmnt));
    let crash = s.dir.path().join("crash.img");
    fs::copy(dup.join("disk.img"), &crash).unwrap();
    stop.store(true, Ordering::Relaxed);
    chmods.join().unwrap();
    committer.join().unwrap();
    let copied = done.load(Ordering::Relaxed);
    sut.unmount();
    inner_mount.unmount();
    drop(dev);
    dev_mount.unmount();
    assert!(copied > 0, "no copy-up finished before the power loss");

    let check = s.path("check");
    let crash_s = crash.to_string_lossy().into_owned();
    let mut check_mount = if fstype == "xfs" {
        // Mounting replays the log.
        run("mount", &["-o", "loop", &crash_s, &check.to_string_lossy()]);
        Mounted { mnt: check.clone(), fuse: false }
    } else {
        // e2fsck replays the journal; exit codes 1 and 2 say it corrected something.
        let st = Command::new("e2fsck").args(["-fy", &crash_s]).output().unwrap().status;
        assert!(st.code().is_some_and(|c| c <= 2), "e2fsck of the image after the power loss: {st}");
        run("mount", &["-o", "ro,loop", &crash_s, &check.to_string_lossy()]);
        Mounted { mnt: check.clone(), fuse: false }
    };
    let mut present = 0;
    let mut short = Vec::new();
    for i in 0..FILES {
        let name = format!("f{i}");
        let p: PathBuf = check.join("up").join(&name);
        if let Ok(data) = fs::read(&p) {
            present += 1;
            if data != content(i) {
                short.push(format!("{name} ({} bytes)", data.len()));
            }
        }
    }
    check_mount.unmount();
    eprintln!(
        "{fstype} {extra:?}: {copied} copy-ups before the power loss, {present} after, {} short",
        short.len()
    );
    Outcome { present, short }
}

fn can_run() -> bool {
    can_mount() && root_or_skip("loop devices and the FUSE connection's abort")
}

#[test]
fn ext4_copy_ups_come_back_whole_after_a_power_loss() {
    if !can_run() {
        return;
    }
    // layerfs waits for each copy's data write-back and lets the journal order the rename
    // after it (no fsync): no short copy, whichever renames the journal had committed.
    let o = copy_ups_then_power_loss("ext4", "");
    assert!(o.present > 0, "no copy-up reached the disk before the power loss: nothing was checked");
    assert!(o.short.is_empty(), "short copies under their names after a power loss: {:?}", o.short);
    // Without the wait (fsync=0), committed renames come back on copies the disk never got.
    let o = copy_ups_then_power_loss("ext4", "fsync=0");
    assert!(o.present > 0, "fsync=0: no copy-up's rename reached the disk: nothing was checked");
    assert!(!o.short.is_empty(), "fsync=0 left no short copy: the run cannot tell one from a whole one");
}

#[test]
fn xfs_copy_ups_come_back_whole_after_a_power_loss() {
    if !can_run() {
        return;
    }
    let o = copy_ups_then_power_loss("xfs", "");
    assert!(o.present > 0, "no copy-up reached the disk before the power loss: nothing was checked");
    assert!(o.short.is_empty(), "short copies under their names after a power loss: {:?}", o.short);
}

/// Which upper filesystems the copy-up trusts to order a rename after the copy's write-back.
#[test]
fn only_journals_that_order_renames_replace_the_copy_up_fsync() {
    if !can_run() {
        return;
    }
    let orders = |dir: &Path| {
        let f = fs::File::open(dir).unwrap();
        layerfs::sys::journal_orders_rename(std::os::fd::AsFd::as_fd(&f))
    };
    for (mkfs, want) in [
        ("mkfs.ext4 -q -F", true),
        ("mkfs.ext4 -q -F -O ^has_journal", false),
        ("mkfs.ext2 -q -F", false),
        ("mkfs.xfs -q -f", true),
    ] {
        let s = Scratch::new();
        let (_m, x) = loop_mount(s.dir.path(), 320, mkfs);
        assert_eq!(orders(&x), want, "{mkfs}");
    }
    let s = Scratch::new();
    let t = s.path("t");
    run("mount", &["-t", "tmpfs", "tmpfs", &t.to_string_lossy()]);
    let _m = Mounted { mnt: t.clone(), fuse: false };
    assert!(!orders(&t), "tmpfs");
}
