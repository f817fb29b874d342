//! Copy-up where the filesystem can reflink (XFS with `reflink=1` on a loop device, as root):
//! a chmod and an append copy no file data. The upper copy shares the lower file's extents
//! (FIEMAP's shared flag, read by `filefrag -v`), the filesystem's free space does not drop by
//! the file's size, holes stay holes, the merged view and the lower file keep their bytes, and
//! (as on kernel overlayfs) the clone is not fsynced.
mod common;
use common::*;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;

/// Writes `len` bytes of a seeded pseudo-random stream to `p`; returns their sha256.
fn write_noise(p: &Path, len: u64, seed: u64) -> Vec<u8> {
    let mut f = fs::File::create(p).unwrap();
    let mut x = seed | 1;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
        let n = left.min(MIB) as usize;
        f.write_all(&buf[..n]).unwrap();
        h.update(&buf[..n]);
        left -= n as u64;
    }
    f.sync_all().unwrap();
    h.finalize().to_vec()
}

fn sha(p: &Path) -> Vec<u8> {
    let mut h = Sha256::new();
    std::io::copy(&mut fs::File::open(p).unwrap(), &mut h).unwrap();
    h.finalize().to_vec()
}

/// Bytes free on the filesystem holding `p`.
fn free_bytes(p: &Path) -> u64 {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs fills the zeroed struct; the path is a valid C string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s.f_bfree * s.f_frsize
}

/// The file's extents as `filefrag -v` reports them: (logical start, length) in blocks of
/// `blk` bytes, and whether the extent is shared with another file.
fn extents(p: &Path) -> (u64, Vec<(u64, u64, bool)>) {
    let o = Command::new("filefrag").arg("-v").arg(p).output().expect("filefrag (e2fsprogs)");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "filefrag -v {}: {text}", p.display());
    let blk = text
        .lines()
        .find_map(|l| l.split("blocks of ").nth(1)?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no block size in filefrag output:\n{text}"));
    let mut v = Vec::new();
    for l in text.lines() {
        let cols: Vec<&str> = l.split(':').map(str::trim).collect();
        // "   0:        0..   32519:         24..     32543:  32520:             shared"
        if cols.len() < 5 || cols[0].parse::<u64>().is_err() {
            continue;
        }
        let start: u64 = cols[1].split("..").next().unwrap().trim().parse().unwrap();
        let len: u64 = cols[3].parse().unwrap();
        v.push((start, len, cols[cols.len() - 1].split(',').any(|f| f == "shared")));
    }
    (blk, v)
}

/// Bytes of `p` (from its start up to `upto`) held in extents shared with another file.
fn shared_bytes(p: &Path, upto: u64) -> u64 {
    let (blk, ext) = extents(p);
    ext.iter().filter(|e| e.2 && e.0 * blk < upto).map(|e| (e.1 * blk).min(upto - e.0 * blk)).sum()
}

/// The server's fsync calls, seen by `strace -f` attached to it.
struct Fsyncs {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Fsyncs {
    /// Attaches to the server of the mount `m`, then writes a probe file with `conv=fsync`
    /// until its fsync shows in the log (so strace is attached), and starts counting there.
    fn watch(m: &Path) -> Fsyncs {
        let pid = server_pid(m).expect("server process");
        let log = m.parent().unwrap().join("strace.log");
        let child = Command::new("strace")
            .args(["-f", "-qq", "-e", "trace=fsync,fdatasync", "-o"])
            .arg(&log)
            .args(["-p", &pid.to_string()])
            .spawn()
            .expect("strace (scripts/deps.sh installs it)");
        let mut f = Fsyncs { child, log };
        for _ in 0..100 {
            let (ok, out) = sh(m, "dd if=/dev/zero of=probe bs=4k count=1 conv=fsync status=none");
            assert!(ok, "{out}");
            if f.lines() > 0 {
                fs::write(&f.log, "").unwrap();
                return f;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = f.child.kill();
        panic!("strace saw no fsync of the probe: {}", fs::read_to_string(&f.log).unwrap_or_default());
    }

    fn lines(&self) -> usize {
        fs::read_to_string(&self.log).unwrap_or_default().lines().filter(|l| l.contains("sync(")).count()
    }

    /// The fsyncs since `watch`; a last probe fsync checks that strace still sees them.
    fn count(mut self, m: &Path) -> usize {
        let n = self.lines();
        let (ok, out) = sh(m, "dd if=/dev/zero of=probe bs=4k count=1 conv=fsync status=none");
        assert!(ok, "{out}");
        let mut seen = false;
        for _ in 0..100 {
            if self.lines() > n {
                seen = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        assert!(seen, "strace stopped seeing fsyncs: {}", fs::read_to_string(&self.log).unwrap_or_default());
        n
    }
}

#[test]
fn copy_up_on_a_reflink_filesystem_copies_no_data() {
    if !can_mount() || !root_or_skip("loop-mounts an XFS image") {
        return;
    }
    if Command::new("mkfs.xfs").arg("-V").output().is_err() {
        assert!(!must_mount(), "mkfs.xfs is missing (xfsprogs; scripts/deps.sh installs it)");
        eprintln!("skipped: no mkfs.xfs");
        return;
    }
    let s = Scratch::new();
    let (_xfs, x) = loop_mount(s.dir.path(), 640, "mkfs.xfs -q -f -m reflink=1");

    let (l, u, w, m) = (x.join("l"), x.join("u"), x.join("w"), x.join("m"));
    for d in [&l, &u, &w, &m] {
        fs::create_dir(d).unwrap();
    }
    let big = write_noise(&l.join("big"), 96 * MIB, 1);
    let app = write_noise(&l.join("app"), 64 * MIB, 2);
    // A sparse file: 1 MiB of data, a hole, 4 KiB of data, a hole to 256 MiB.
    let sp = fs::File::create(l.join("sparse")).unwrap();
    sp.set_len(256 * MIB).unwrap();
    use std::os::unix::fs::FileExt;
    sp.write_all_at(&[5u8; MIB as usize], 0).unwrap();
    sp.write_all_at(&[6u8; 4096], 128 * MIB).unwrap();
    sp.sync_all().unwrap();
    drop(sp);
    let sparse = sha(&l.join("sparse"));

    let mut g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
    let fsyncs = Fsyncs::watch(&m);
    let before = free_bytes(&x);
    fs::set_permissions(m.join("big"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::OpenOptions::new().append(true).open(m.join("app")).unwrap().write_all(b"!").unwrap();
    fs::set_permissions(m.join("sparse"), fs::Permissions::from_mode(0o600)).unwrap();
    let after = free_bytes(&x);
    // Like kernel overlayfs, a cloned copy is not fsynced: the clone writes no data, and the
    // filesystem's journal orders it before the rename.
    assert_eq!(fsyncs.count(&m), 0, "the server fsynced a cloned copy-up");

    // All three were copied up: the upper holds them with the new mode and size.
    assert_eq!(fs::metadata(u.join("big")).unwrap().mode() & 0o7777, 0o600);
    assert_eq!(fs::metadata(u.join("app")).unwrap().len(), 64 * MIB + 1);
    assert_eq!(fs::metadata(u.join("sparse")).unwrap().mode() & 0o7777, 0o600);
    // No data was copied: 161 MiB of copies would have taken as much space.
    assert!(
        before.saturating_sub(after) < 8 * MIB,
        "the copy-ups took {} KiB of the filesystem",
        before.saturating_sub(after) >> 10
    );
    assert_eq!(shared_bytes(&u.join("big"), 96 * MIB), 96 * MIB, "upper big: {:?}", extents(&u.join("big")));
    assert_eq!(shared_bytes(&u.join("app"), 64 * MIB), 64 * MIB, "upper app: {:?}", extents(&u.join("app")));
    // The clone kept the holes.
    assert!(fs::metadata(u.join("sparse")).unwrap().blocks() * 512 <= 4 * MIB);
    g.unmount();

    // The merged view (remounted, so nothing comes from the kernel's cache) and the lower
    // files have the right bytes.
    let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
    assert_eq!(sha(&m.join("big")), big);
    assert_eq!(sha(&l.join("big")), big);
    let mut h = Sha256::new();
    let bytes = fs::read(m.join("app")).unwrap();
    h.update(&bytes[..bytes.len() - 1]);
    assert_eq!(h.finalize().to_vec(), app);
    assert_eq!(bytes.last(), Some(&b'!'));
    assert_eq!(sha(&l.join("app")), app);
    assert_eq!(fs::metadata(l.join("app")).unwrap().len(), 64 * MIB);
    assert_eq!(sha(&m.join("sparse")), sparse);
    // Nothing is left half-made in the workdir.
    let (_, left) = sh(&w, "find . -type f");
    assert!(left.trim().is_empty(), "workdir holds {left}");
}
