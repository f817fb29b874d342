//! Power loss after copy-ups: a copied-up file's name must never come back, after a power
//! loss, on a short copy (a copy whose data had not reached the disk when its rename did).
//!
//! The upper filesystem (ext4 with a journal, internal or external, or XFS) lives in images
//! on loop devices whose backing files are served by a layerfs mount of its own with the FUSE
//! writeback cache on: a write the loop device makes sits in that cache, as in a disk's
//! volatile write cache, until a flush (the loop device's flush is an fsync of the backing
//! file, which writes the cache back to the server) or the cache's own write-back. The power
//! loss is an abort of that mount's FUSE connection while copy-ups run through the mount
//! under test: what the server has is what the disk kept, and what was only in the cache is
//! lost. The backing files, copied, are then checked (`e2fsck`) or their log replayed (XFS)
//! and mounted: every name of the upper must hold the whole lower file.
//!
//! With `fsync=0` (which skips the copy-up's write-back wait and fsync) the same run leaves
//! short copies under their names, so the check sees what it is there to see. It cannot tell
//! a copy-up that waits for its write-back from one that only starts it: the loop device
//! sends the copy's writes before the journal's commit and its flush in either case.

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
/// When the power loss comes: once half the copy-ups have finished and at least a second
/// has passed (for the journal to have committed renames), so that copy-ups are in every
/// stage.
const CUT_AFTER: Duration = Duration::from_secs(1);

/// One run at a time: a run's writes and flushes must not reach another run's disk (a
/// `sync` anywhere writes every filesystem's dirty data back, which would leave an `fsync=0`
/// control with whole copies), and the cut's timing must not depend on what else runs.
static RUN_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn syncfs(dir: &Path) {
    use std::os::fd::AsRawFd;
    let d = fs::File::open(dir).unwrap();
    // SAFETY: syncfs only reads the descriptor, which `d` keeps open.
    assert_eq!(
        unsafe { libc::syncfs(d.as_raw_fd()) },
        0,
        "syncfs {dir:?}: {}",
        std::io::Error::last_os_error()
    );
}

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
    /// The server said its copy-ups wait for the write-back (not fsync).
    waited: bool,
}

impl Outcome {
    /// Fails unless some copy-up reached the disk, none came back short, and the copy-ups
    /// waited for their write-back (`waited`) or were fsynced.
    fn assert_whole(&self, waited: bool) {
        assert!(self.present > 0, "no copy-up reached the disk before the power loss: nothing was checked");
        assert!(
            self.short.is_empty(),
            "{} short copies under their names after a power loss, the first: {:?}",
            self.short.len(),
            &self.short[..self.short.len().min(5)]
        );
        let how = if self.waited { "waited for their write-back" } else { "were fsynced" };
        assert_eq!(self.waited, waited, "the copy-ups {how}");
    }
}

/// The upper filesystem of a run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Upper {
    Ext4,
    /// ext4 whose journal is a device of its own (`mkfs.ext4 -J device=`).
    Ext4ExternalJournal,
    Xfs,
}

fn image(dir: &Path, name: &str, mib: u64) -> String {
    let p = dir.join(name);
    fs::File::create(&p).unwrap().set_len(mib << 20).unwrap();
    p.to_string_lossy().into_owned()
}

/// Copies up lower files one after the other (a `chmod` each) through a layerfs mount with
/// `extra` options whose upper is a fresh `upper` filesystem, cuts the power in the middle
/// ([`CUT_AFTER`]), and checks the filesystem as it was left.
fn copy_ups_then_power_loss(upper: Upper, extra: &str) -> Outcome {
    let _one = RUN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let s = Scratch::new();
    let low = s.path("low");
    for i in 0..FILES {
        fs::write(low.join(format!("f{i}")), content(i)).unwrap();
    }
    // The disk: files in a layerfs upper behind a write cache (see the top).
    let (dlow, dup, dwork, dmnt) =
        (s.path("dev-low"), s.path("dev-up"), s.path("dev-work"), s.path("dev-mnt"));
    let mut dev_mount =
        mount_layerfs(&[dlow], Some((&dup, &dwork)), &dmnt, "passthrough=0,writeback=1,fsync=0,uring=0");
    let img = image(&dmnt, "disk.img", 320);
    let journal = (upper == Upper::Ext4ExternalJournal).then(|| {
        let j = LoopDev(run("losetup", &["-f", "--show", &image(&dmnt, "journal.img", 64)]));
        run("mke2fs", &["-q", "-F", "-O", "journal_dev", "-b", "4096", &j.0]);
        j
    });
    let ext4 = ["-q", "-F", "-b", "4096", "-E", "lazy_itable_init=0,lazy_journal_init=0"];
    match (upper, &journal) {
        (Upper::Xfs, _) => run("mkfs.xfs", &["-q", "-f", &img]),
        (_, Some(j)) => run("mkfs.ext4", &[&ext4[..], &["-J", &format!("device={}", j.0), &img]].concat()),
        _ => run("mkfs.ext4", &[&ext4[..], &[img.as_str()]].concat()),
    };
    let dev = LoopDev(run("losetup", &["-f", "--show", &img]));
    let inner = s.path("inner");
    // ext4 commits its journal every second, so that renames are committed within the run.
    let opts = if upper == Upper::Xfs { "defaults" } else { "commit=1" };
    run("mount", &["-o", opts, &dev.0, &inner.to_string_lossy()]);
    let mut inner_mount = Mounted { mnt: inner.clone(), fuse: false };
    let (up, work, mnt) = (inner.join("up"), inner.join("work"), s.path("mnt"));
    fs::create_dir(&up).unwrap();
    fs::create_dir(&work).unwrap();
    // Only this filesystem: a `sync` would also write back another run's copies.
    syncfs(&inner);
    // In the foreground, with the debug log that says how its copy-ups reach the disk.
    let log = s.dir.path().join("server.log");
    let mut server = spawn_layerfs_fg(
        &mount_options(std::slice::from_ref(&low), Some((&up, &work)), extra),
        &mnt,
        &[("RUST_LOG", "layerfs::fs=debug")],
        fs::File::create(&log).unwrap().into(),
    );
    let mut sut = Mounted { mnt: mnt.clone(), fuse: true };

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
    // Something else on the filesystem fsyncs now and then, as programs do: each fsync commits
    // the journal (XFS: forces the log) with every rename made before it. Not with an external
    // journal: an fsync there also flushes the filesystem's own device, which would hide what
    // that run is there to see; its journal commits every second by itself, and the power
    // loss waits for two of those.
    let external = upper == Upper::Ext4ExternalJournal;
    let committer = {
        let (stop, probe) = (stop.clone(), inner.join("probe"));
        std::thread::spawn(move || {
            while !external && !stop.load(Ordering::Relaxed) {
                let ok = fs::write(&probe, [0u8; 4096]).and_then(|_| fs::File::open(&probe)?.sync_all());
                if ok.is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let t = std::time::Instant::now();
    let cut_after = if external { CUT_AFTER * 5 / 2 } else { CUT_AFTER };
    wait_until(Duration::from_secs(60), || {
        t.elapsed() >= cut_after && done.load(Ordering::Relaxed) >= FILES / 2
    });
    abort_connection(connection_of(&dmnt));
    let crash = s.dir.path().join("crash.img");
    fs::copy(dup.join("disk.img"), &crash).unwrap();
    let crash_journal = journal.as_ref().map(|_| {
        let j = s.dir.path().join("crash-journal.img");
        fs::copy(dup.join("journal.img"), &j).unwrap();
        j
    });
    let cut_at = done.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    chmods.join().unwrap();
    committer.join().unwrap();
    sut.unmount();
    let _ = server.wait();
    inner_mount.unmount();
    drop(dev);
    drop(journal);
    dev_mount.unmount();
    assert!(cut_at > 0, "no copy-up finished before the power loss");
    let waited = fs::read_to_string(&log).unwrap().contains("wait for their data's write-back");

    let check = s.path("check");
    let (crash_s, check_s) = (crash.to_string_lossy().into_owned(), check.to_string_lossy().into_owned());
    if upper == Upper::Xfs {
        // Mounting replays the log.
        run("mount", &["-o", "loop", &crash_s, &check_s]);
    } else {
        // e2fsck replays the journal; exit codes 1 and 2 say it corrected something.
        let mut fsck = Command::new("e2fsck");
        fsck.arg("-fy");
        if let Some(j) = &crash_journal {
            fsck.arg("-j").arg(j);
        }
        let st = fsck.arg(&crash_s).output().unwrap().status;
        assert!(st.code().is_some_and(|c| c <= 2), "e2fsck of the image after the power loss: {st}");
        // Replayed: mounted without its journal (an external one is not attached any more).
        run("mount", &["-o", "ro,loop,noload", &crash_s, &check_s]);
    }
    let mut check_mount = Mounted { mnt: check.clone(), fuse: false };
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
        "{upper:?} {extra:?}: power loss after {cut_at} of {FILES} copy-ups, {present} names after it, {} short, write-back wait: {waited}",
        short.len()
    );
    Outcome { present, short, waited }
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
    copy_ups_then_power_loss(Upper::Ext4, "").assert_whole(true);
    // Without the wait (fsync=0), committed renames come back on copies the disk never got.
    let o = copy_ups_then_power_loss(Upper::Ext4, "fsync=0");
    assert!(o.present > 0, "fsync=0: no copy-up's rename reached the disk: nothing was checked");
    assert!(!o.short.is_empty(), "fsync=0 left no short copy: the run cannot tell one from a whole one");
}

/// An external journal's commit flushes only the journal's device: a copy-up there must
/// fsync (the write-back wait alone left 1070-2909 short copies in four runs of five, their
/// data still in the disk's cache when the power went).
#[test]
fn ext4_copy_ups_with_an_external_journal_come_back_whole_after_a_power_loss() {
    if !can_run() {
        return;
    }
    copy_ups_then_power_loss(Upper::Ext4ExternalJournal, "").assert_whole(false);
}

#[test]
fn xfs_copy_ups_come_back_whole_after_a_power_loss() {
    if !can_run() {
        return;
    }
    copy_ups_then_power_loss(Upper::Xfs, "").assert_whole(true);
}

/// Which upper filesystems the copy-up trusts to order a rename after the copy's write-back.
/// (XFS with a realtime device, which it must not trust either, cannot be mounted on this
/// kernel.)
#[test]
fn only_journals_that_order_renames_replace_the_copy_up_fsync() {
    if !can_run() {
        return;
    }
    let orders = |dir: &Path| {
        let f = fs::File::open(dir).unwrap();
        layerfs::sys::journal_orders_rename(std::os::fd::AsFd::as_fd(&f))
    };
    let ext4 = "mkfs.ext4 -q -F -b 4096";
    for (mkfs, opts, want) in [
        (ext4, "", true),
        (ext4, "data=writeback", true),
        (ext4, "data=journal", true),
        (ext4, "data=writeback,journal_async_commit", false),
        ("mkfs.ext4 -q -F -O ^has_journal", "", false),
        ("mkfs.ext3 -q -F", "", true),
        ("mkfs.ext2 -q -F", "", false),
        ("mkfs.xfs -q -f", "", true),
    ] {
        let s = Scratch::new();
        let dir = s.dir.path();
        let img = image(dir, "fs.img", 320);
        run("sh", &["-c", &format!("{mkfs} {img}")]);
        let x = s.path("x");
        let o = if opts.is_empty() { "loop".to_string() } else { format!("loop,{opts}") };
        run("mount", &["-o", &o, &img, &x.to_string_lossy()]);
        let _m = Mounted { mnt: x.clone(), fuse: false };
        assert_eq!(orders(&x), want, "{mkfs} mounted -o {o}");
    }
    // ext4 whose journal is on a device of its own.
    let s = Scratch::new();
    let dir = s.dir.path();
    let j = LoopDev(run("losetup", &["-f", "--show", &image(dir, "journal.img", 64)]));
    run("mke2fs", &["-q", "-F", "-O", "journal_dev", "-b", "4096", &j.0]);
    let img = image(dir, "fs.img", 320);
    run("mkfs.ext4", &["-q", "-F", "-b", "4096", "-J", &format!("device={}", j.0), &img]);
    let d = LoopDev(run("losetup", &["-f", "--show", &img]));
    let x = s.path("x");
    run("mount", &[&d.0, &x.to_string_lossy()]);
    let mut m = Mounted { mnt: x.clone(), fuse: false };
    assert!(!orders(&x), "ext4 with an external journal");
    m.unmount();
    drop((d, j));
    let t = s.path("t");
    run("mount", &["-t", "tmpfs", "tmpfs", &t.to_string_lossy()]);
    let _m = Mounted { mnt: t.clone(), fuse: false };
    assert!(!orders(&t), "tmpfs");
}
