//! Write-only handles of files the server serves (no passthrough: rootless, `passthrough=0`)
//! write around FUSE's page cache (`FOPEN_DIRECT_IO`), and everything else still sees their
//! writes: cached readers, shared mappings (also ones with dirty pages), `fstat`, appends.
//!
//! Whether a write went around the cache is told from the page cache of the file through the
//! mount ([`resident`]): a buffered write leaves its pages cached there, a direct one none.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use common::*;

const SIZE: usize = 1 << 20;
const PAGE: usize = 4096;

fn data(seed: u8) -> Vec<u8> {
    (0..SIZE).map(|i| (i as u8).wrapping_mul(29) ^ seed).collect()
}

/// A stack whose lower layer holds `f` (`data(1)`), mounted with `passthrough=0` plus `extra`.
fn stack(extra: &str) -> (Scratch, [PathBuf; 3], Mounted) {
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::write(l.join("f"), data(1)).unwrap();
    let opts = if extra.is_empty() { "passthrough=0".to_string() } else { format!("passthrough=0,{extra}") };
    let g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, &opts);
    (s, [l, u, m], g)
}

/// A shared mapping of `len` bytes of `f`.
struct Map {
    p: *mut u8,
    len: usize,
}

impl Map {
    fn new(f: &File, len: usize, writable: bool) -> Map {
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: a shared mapping of an open file, unmapped in Drop.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, f.as_raw_fd(), 0) };
        assert_ne!(p, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
        Map { p: p.cast(), len }
    }
    fn bytes(&self) -> Vec<u8> {
        // SAFETY: `len` mapped bytes, read only within the file's size by the callers.
        unsafe { std::slice::from_raw_parts(self.p, self.len).to_vec() }
    }
    fn write(&self, off: usize, src: &[u8]) {
        assert!(off + src.len() <= self.len);
        // SAFETY: within the writable mapping.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.p.add(off), src.len()) }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`.
        unsafe { libc::munmap(self.p.cast(), self.len) };
    }
}

#[test]
fn write_only_handles_leave_no_pages_in_fuse_cache() {
    if !can_mount() {
        return;
    }
    let (_s, [_, u, m], mut g) = stack("");
    let n = SIZE / PAGE;

    // Created write-only (CREATE) and opened write-only (OPEN, a copy-up): around the cache.
    fs::write(m.join("new"), data(2)).unwrap();
    assert_eq!(resident(&m.join("new")), 0, "a write-only created file's data went through FUSE's cache");
    let f = OpenOptions::new().write(true).open(m.join("f")).unwrap();
    f.write_all_at(&data(3), 0).unwrap();
    drop(f);
    assert_eq!(resident(&m.join("f")), 0, "a write-only opened file's data went through FUSE's cache");

    // Read-write handles keep the cache (their data may be read and mapped).
    let mut f =
        OpenOptions::new().read(true).write(true).create(true).truncate(true).open(m.join("rw")).unwrap();
    f.write_all(&data(4)).unwrap();
    drop(f);
    assert_eq!(resident(&m.join("rw")), n, "a read-write handle's writes should stay cached");

    for (name, seed) in [("new", 2), ("f", 3), ("rw", 4)] {
        assert!(fs::read(m.join(name)).unwrap() == data(seed), "{name} reads back wrong through the mount");
    }
    g.unmount();
    for (name, seed) in [("new", 2), ("f", 3), ("rw", 4)] {
        assert!(fs::read(u.join(name)).unwrap() == data(seed), "upper {name} holds the wrong data");
    }
}

#[test]
fn writes_around_the_cache_reach_cached_and_mapped_readers() {
    if !can_mount() {
        return;
    }
    let (_s, [l, u, m], mut g) = stack("");
    let mut want = data(1);

    // A reader with the whole file cached and mapped.
    let r = File::open(m.join("f")).unwrap();
    let mut buf = vec![0u8; SIZE];
    r.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf == want);
    let rmap = Map::new(&r, SIZE, false);
    assert!(rmap.bytes() == want);

    // A read-write handle with dirty pages in a shared mapping, part of which the write-only
    // handle then overwrites: the later write wins where they overlap, both elsewhere.
    let rw = OpenOptions::new().read(true).write(true).open(m.join("f")).unwrap();
    let wmap = Map::new(&rw, SIZE, true);
    let dirty = vec![0xd1u8; 3 * PAGE];
    wmap.write(40 * PAGE, &dirty);
    want[40 * PAGE..43 * PAGE].copy_from_slice(&dirty);

    // Unaligned writes through a write-only handle, one across the dirty pages, one past the end.
    let w = OpenOptions::new().write(true).open(m.join("f")).unwrap();
    let patch = data(7);
    let (a, alen) = (PAGE + 100, 100 * PAGE + 17);
    w.write_all_at(&patch[..alen], a as u64).unwrap();
    want[a..a + alen].copy_from_slice(&patch[..alen]);
    let (b, blen) = (41 * PAGE + 5, 10);
    w.write_all_at(&[0xeeu8; 10], b as u64).unwrap();
    want[b..b + blen].fill(0xee);
    let tail = vec![0x7au8; 2 * PAGE + 3];
    w.write_all_at(&tail, SIZE as u64).unwrap();
    want.extend_from_slice(&tail);

    assert_eq!(r.metadata().unwrap().len(), want.len() as u64, "fstat of the reader misses the growth");
    let mut buf = vec![0u8; want.len()];
    r.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf == want, "the cached reader reads stale data at byte {:?}", first_diff(&buf, &want));
    let seen = rmap.bytes();
    assert!(
        seen == want[..SIZE],
        "the read-only mapping shows stale data at byte {:?}",
        first_diff(&seen, &want)
    );
    let seen = wmap.bytes();
    assert!(
        seen == want[..SIZE],
        "the writable mapping shows stale data at byte {:?}",
        first_diff(&seen, &want)
    );

    // Appends through a write-only handle land at the end the kernel knows.
    let mut ap = OpenOptions::new().append(true).open(m.join("f")).unwrap();
    ap.write_all(b"one").unwrap();
    ap.write_all(b"two").unwrap();
    want.extend_from_slice(b"onetwo");
    drop((rmap, wmap, r, rw, w, ap));
    assert!(fs::read(m.join("f")).unwrap() == want, "a new open reads the wrong data");

    g.unmount();
    assert!(fs::read(u.join("f")).unwrap() == want, "the upper copy holds the wrong data");
    assert!(fs::read(l.join("f")).unwrap() == data(1), "the lower file changed");
}

#[test]
fn the_writeback_cache_keeps_write_only_handles_buffered() {
    if !can_mount() {
        return;
    }
    let (_s, [_, u, m], mut g) = stack("writeback=1");
    fs::write(m.join("new"), data(5)).unwrap();
    // Under the writeback cache the kernel caches every handle's writes; it may also read
    // through a write-only handle, which the server opens read-write for that.
    assert_eq!(
        resident(&m.join("new")),
        SIZE / PAGE,
        "writeback=1: a write-only handle's writes should be cached"
    );
    g.unmount();
    assert!(fs::read(u.join("new")).unwrap() == data(5));
}

fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y).or((a.len() != b.len()).then(|| a.len().min(b.len())))
}

/// Under the writeback cache, SEEK_DATA/SEEK_HOLE see data not written back yet: the kernel
/// asks the server without writing its cache back first, and the server's answer, from a file
/// without that data, was ENXIO. The server now leaves them to the kernel (all data up to the
/// size it knows), as a filesystem without holes answers.
#[test]
fn the_writeback_cache_leaves_seek_data_and_hole_to_the_kernel() {
    if !can_mount() {
        return;
    }
    let (_s, [_, _, m], _g) = stack("writeback=1");
    let f =
        OpenOptions::new().read(true).write(true).create(true).truncate(true).open(m.join("new")).unwrap();
    f.write_all_at(&[7u8; 8192], 0).unwrap();
    let seek = |off: i64, whence: i32| {
        // SAFETY: plain syscall on an open fd.
        let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
        if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r) }
    };
    assert_eq!(seek(0, libc::SEEK_DATA).unwrap(), 0);
    assert_eq!(seek(0, libc::SEEK_HOLE).unwrap(), 8192);
    assert_eq!(seek(100, libc::SEEK_HOLE).unwrap(), 8192);
    assert_eq!(seek(8192, libc::SEEK_DATA).unwrap_err().raw_os_error(), Some(libc::ENXIO));
}
