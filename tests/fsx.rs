//! fsx-style data verification: seeded random read / write / append / truncate / mmap write /
//! fallocate (punch hole, zero range, extend) / reopen on (a) a file copied up from a lower layer
//! and (b) an upper-only file, each mirrored in an in-memory model; every read (and the size
//! after every operation) is checked against the model. A read-only descriptor opened on the
//! lower file before its copy-up is kept and read from too (it must see the copied-up data).
//! At the end the mount is remounted and both files compared in full.
//!
//! Run three times: with the default mount (FUSE passthrough for upper files when root), with
//! lower files passed through too (`passthrough=all`: the early descriptor then keeps reading
//! the lower file's data), and with the kernel's writeback cache (`passthrough=0,writeback=1`),
//! which may only be offered because this passes.
//!
//! `LAYERFS_FSX_OPS` sets the operations per file (default 50000), `LAYERFS_FSX_SEED` the seed
//! (default 0xf5a0000; the two files use seed+1 and seed+2), so that a long run can explore new
//! sequences. On a mismatch the tail of the operation log is printed, with the file's seed.

mod common;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::*;

const MAX_FILE: u64 = 4 << 20;
const MAX_OP: u64 = 256 << 10;
const LOG_TAIL: usize = 40;

/// An operation length skewed to small: up to 512 B, 8 KiB, 64 KiB or 256 KiB.
fn op_len(r: &mut Rng) -> u64 {
    let cap = [512, 8192, 65536, MAX_OP][r.below(4) as usize];
    1 + r.below(cap)
}

struct Fsx {
    name: String,
    seed: u64,
    path: PathBuf,
    file: File,
    /// Read-only descriptor opened before the copy-up (lower file only).
    early_ro: Option<File>,
    /// What that descriptor reads when it stays on the lower file (`passthrough=all`); `None`:
    /// it reads the copied-up data, the model.
    early_frozen: Option<Vec<u8>>,
    model: Vec<u8>,
    rng: Rng,
    log: VecDeque<String>,
    ops: u64,
    counts: [u64; 9],
    nanos: [u128; 9],
    punch_ok: bool,
    zero_ok: bool,
}

const OP_NAMES: [&str; 9] =
    ["read", "write", "append", "truncate", "mmap-write", "punch", "zero-range", "falloc", "reopen"];

impl Fsx {
    fn note(&mut self, s: String) {
        if self.log.len() == LOG_TAIL {
            self.log.pop_front();
        }
        self.log.push_back(format!("#{} {s}", self.ops));
    }

    fn fail(&self, msg: String) -> ! {
        let tail: Vec<&str> = self.log.iter().map(String::as_str).collect();
        panic!(
            "fsx [{}] (seed {:#x}) op {}: {msg}\nmodel size {}\nlast {} ops:\n{}",
            self.name,
            self.seed,
            self.ops,
            self.model.len(),
            tail.len(),
            tail.join("\n")
        );
    }

    fn fill(&mut self, len: usize) -> Vec<u8> {
        let tag = self.ops as u8 | 1;
        let base = self.rng.next();
        (0..len).map(|i| tag ^ ((base >> ((i % 8) * 8)) as u8) ^ (i as u8)).collect()
    }

    fn check_range(&self, got: &[u8], off: u64, via: &str) {
        self.check_against(&self.model, got, off, via);
    }

    fn check_against(&self, model: &[u8], got: &[u8], off: u64, via: &str) {
        let off = off as usize;
        let end = (off + got.len()).min(model.len());
        let want = if off < model.len() { &model[off..end] } else { &[][..] };
        if got != want {
            let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
            self.fail(format!(
                "read via {via} at {off} returned {} bytes, model has {}; first difference at file offset {} \
                 (got {:?}, want {:?})",
                got.len(),
                want.len(),
                off + first,
                got.get(first),
                want.get(first)
            ));
        }
    }

    fn read(&mut self) {
        let size = self.model.len() as u64;
        let off = if size > 0 && self.rng.below(8) != 0 {
            self.rng.below(size)
        } else {
            self.rng.below(size + 4096)
        };
        let len = op_len(&mut self.rng);
        let use_early = self.early_ro.is_some() && self.rng.below(4) == 0;
        let via = if use_early { "early-ro-fd" } else { "rw-fd" };
        self.note(format!("read {off}+{len} via {via}"));
        let mut buf = vec![0u8; len as usize];
        let f = if use_early { self.early_ro.as_ref().unwrap() } else { &self.file };
        let mut got = 0usize;
        // pread may return short only at EOF; loop to be sure.
        loop {
            match f.read_at(&mut buf[got..], off + got as u64) {
                Ok(0) => break,
                Ok(n) => {
                    got += n;
                    if got == buf.len() {
                        break;
                    }
                }
                Err(e) => self.fail(format!("read {off}+{len} via {via}: {e}")),
            }
        }
        buf.truncate(got);
        match (use_early, &self.early_frozen) {
            (true, Some(frozen)) => self.check_against(frozen, &buf, off, via),
            _ => self.check_range(&buf, off, via),
        }
    }

    fn write_at(&mut self, off: u64, data: &[u8]) {
        if let Err(e) = self.file.write_all_at(data, off) {
            self.fail(format!("write {off}+{}: {e}", data.len()));
        }
        let end = off as usize + data.len();
        if self.model.len() < end {
            self.model.resize(end, 0);
        }
        self.model[off as usize..end].copy_from_slice(data);
    }

    fn write(&mut self) {
        let len = op_len(&mut self.rng).min(MAX_FILE);
        let off = self.rng.below(MAX_FILE - len);
        self.note(format!("write {off}+{len}"));
        let data = self.fill(len as usize);
        self.write_at(off, &data);
    }

    fn append(&mut self) {
        let len = op_len(&mut self.rng).min(MAX_FILE.saturating_sub(self.model.len() as u64));
        if len == 0 {
            return self.truncate();
        }
        self.note(format!("append {len} at {}", self.model.len()));
        let data = self.fill(len as usize);
        let mut f = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .unwrap_or_else(|e| self.fail(format!("open append: {e}")));
        if let Err(e) = std::io::Write::write_all(&mut f, &data) {
            self.fail(format!("append: {e}"));
        }
        self.model.extend_from_slice(&data);
    }

    fn truncate(&mut self) {
        let size = self.model.len() as u64;
        let to = match self.rng.below(4) {
            0 => self.rng.below(size + 1),
            1 => (size + self.rng.below(MAX_OP)).min(MAX_FILE),
            _ => self.rng.below(MAX_FILE),
        };
        self.note(format!("truncate {size} -> {to}"));
        if let Err(e) = self.file.set_len(to) {
            self.fail(format!("truncate to {to}: {e}"));
        }
        self.model.resize(to as usize, 0);
    }

    fn mmap_write(&mut self) {
        let size = self.model.len() as u64;
        if size == 0 {
            return self.write();
        }
        let off = self.rng.below(size);
        let len = op_len(&mut self.rng).min(size - off);
        let page = 4096u64;
        let moff = off / page * page;
        let mlen = (off + len - moff) as usize;
        self.note(format!("mmap-write {off}+{len}"));
        let data = self.fill(len as usize);
        // SAFETY: a shared mapping of our own open file, inside its current size; unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mlen,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.file.as_raw_fd(),
                moff as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            self.fail(format!("mmap {moff}+{mlen}: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: the mapping is `mlen` bytes long and (off - moff) + len <= mlen.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                (p as *mut u8).add((off - moff) as usize),
                data.len(),
            );
        }
        // SAFETY: p/mlen are the mapping created above.
        let r = unsafe { libc::msync(p, mlen, libc::MS_SYNC) };
        let e = std::io::Error::last_os_error();
        // SAFETY: as above.
        unsafe { libc::munmap(p, mlen) };
        if r != 0 {
            self.fail(format!("msync: {e}"));
        }
        self.model[off as usize..(off + len) as usize].copy_from_slice(&data);
    }

    fn fallocate(&mut self, kind: usize) {
        let size = self.model.len() as u64;
        let (mode, name) = match kind {
            5 => (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, "punch"),
            6 => (libc::FALLOC_FL_ZERO_RANGE, "zero-range"),
            _ => (0, "falloc"),
        };
        if (kind == 5 && !self.punch_ok) || (kind == 6 && !self.zero_ok) {
            return self.write();
        }
        let off = self.rng.below(size.max(1));
        let len = op_len(&mut self.rng).min(MAX_FILE - off);
        self.note(format!("{name} {off}+{len}"));
        // SAFETY: plain syscall on our own fd.
        let r = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off as i64, len as i64) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EOPNOTSUPP) && kind != 7 {
                eprintln!("fsx [{}]: {name} not supported ({e}); replaced by writes", self.name);
                if kind == 5 {
                    self.punch_ok = false;
                } else {
                    self.zero_ok = false;
                }
                return;
            }
            self.fail(format!("{name} {off}+{len}: {e}"));
        }
        let end = (off + len) as usize;
        match kind {
            5 => {
                let e = end.min(self.model.len());
                if (off as usize) < e {
                    self.model[off as usize..e].fill(0);
                }
            }
            _ => {
                if self.model.len() < end {
                    self.model.resize(end, 0);
                }
                if kind == 6 {
                    self.model[off as usize..end].fill(0);
                }
            }
        }
    }

    fn reopen(&mut self) {
        self.note("reopen".into());
        self.file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .unwrap_or_else(|e| self.fail(format!("reopen: {e}")));
    }

    fn step(&mut self) {
        self.ops += 1;
        let k = match self.rng.below(100) {
            0..=37 => 0,
            38..=60 => 1,
            61..=68 => 2,
            69..=72 => 3,
            73..=79 => 4,
            80..=87 => 5,
            88..=92 => 6,
            93..=97 => 7,
            _ => 8,
        };
        self.counts[k] += 1;
        let t = Instant::now();
        match k {
            0 => self.read(),
            1 => self.write(),
            2 => self.append(),
            3 => self.truncate(),
            4 => self.mmap_write(),
            5..=7 => self.fallocate(k),
            _ => self.reopen(),
        }
        self.nanos[k] += t.elapsed().as_nanos();
        let size = self.file.metadata().map(|m| m.len()).unwrap_or_else(|e| self.fail(format!("fstat: {e}")));
        if size != self.model.len() as u64 {
            self.fail(format!("size {size}, model {}", self.model.len()));
        }
    }

    fn verify_all(&self, path: &Path, when: &str) {
        let got = fs::read(path).unwrap_or_else(|e| self.fail(format!("{when}: read whole file: {e}")));
        if got.len() != self.model.len() {
            self.fail(format!("{when}: whole file is {} bytes, model {}", got.len(), self.model.len()));
        }
        self.check_range(&got, 0, when);
    }
}

fn lower_data() -> Vec<u8> {
    let mut r = Rng(42);
    (0..(1 << 20) + 1234).map(|_| r.next() as u8).collect()
}

/// Mounts a fresh stack with the lower file and `extra` options and runs the workload on it.
fn fsx_with(extra: &str) {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::write(l.join("lowerfile"), lower_data()).unwrap();
    let guard = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, extra);
    run_fsx(&s, guard, extra);
}

#[test]
fn fsx_copied_up_and_upper_files() {
    fsx_with("");
}

/// The same with lower files passed through too (`passthrough=all`, as root on kernel 6.9+):
/// the descriptor opened before the copy-up stays on the lower file and must read exactly its
/// data throughout; every other read must match the model. The copy-up gives the file a second
/// kernel inode (an alias), which the read-write open lands on after the kernel's ESTALE retry.
#[test]
fn fsx_lower_files_passed_through() {
    // Without root there is no passthrough, and the early descriptor follows the copy-up.
    if can_mount() && root_or_skip("FUSE passthrough needs root") {
        fsx_with("passthrough=all");
    }
}

/// The same with the kernel's writeback cache. The server runs in the foreground with its log
/// kept, so the test knows the cache was really negotiated (else it proves nothing).
#[test]
fn fsx_writeback_cache() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::write(l.join("lowerfile"), lower_data()).unwrap();
    let partial: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(l.join("partial"), &partial).unwrap();
    let opts = "passthrough=0,writeback=1";
    let log = s.dir.path().join("server.log");
    let o = format!("lowerdir={},upperdir={},workdir={},{opts}", l.display(), u.display(), w.display());
    let mut child = spawn_layerfs_fg(&o, &m, &[("RUST_LOG", "info")], File::create(&log).unwrap().into());
    // From here a panic unmounts (and so ends the server).
    let guard = Mounted { mnt: m.clone(), fuse: true };
    fs::metadata(&m).unwrap(); // the INIT exchange is over once a request has been served
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.contains("FUSE writeback cache on"), "writeback cache not negotiated:\n{text}");
    // Partial-page writes through write-only handles: the kernel must read the rest of each
    // page through them, and O_APPEND is the kernel's job.
    let mut want = partial.clone();
    let f = OpenOptions::new().write(true).open(m.join("partial")).unwrap();
    f.write_all_at(b"XYZ", 5000).unwrap();
    drop(f);
    want[5000..5003].copy_from_slice(b"XYZ");
    let mut f = OpenOptions::new().append(true).open(m.join("partial")).unwrap();
    std::io::Write::write_all(&mut f, b"tail").unwrap();
    drop(f);
    want.extend_from_slice(b"tail");
    assert!(fs::read(m.join("partial")).unwrap() == want, "write-only handles under writeback");
    assert!(fs::read(u.join("partial")).unwrap() == want, "upper copy after close");
    run_fsx(&s, guard, opts);
    let _ = child.wait();
}

/// Runs the fsx workload on a mount of `s`'s l/u/w at m (mounted by the caller, with `extra`
/// options that the remount at the end repeats).
fn run_fsx(s: &Scratch, mut guard: Mounted, extra: &str) {
    let frozen = extra.split(',').any(|o| o == "passthrough=all");
    let per_file: u64 = std::env::var("LAYERFS_FSX_OPS").ok().and_then(|s| s.parse().ok()).unwrap_or(50_000);
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    let ldata = lower_data();
    let lower_before = snapshot(&l, true);

    let t0 = Instant::now();
    let mut done = Vec::new();
    let base = std::env::var("LAYERFS_FSX_SEED").ok().map_or(0xf5a_0000, |s| {
        let s = s.trim();
        let parsed = match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => s.parse(),
        };
        parsed.unwrap_or_else(|_| panic!("LAYERFS_FSX_SEED={s}: not a number"))
    });
    for (name, seed) in [("lowerfile", base.wrapping_add(1)), ("upperfile", base.wrapping_add(2))] {
        let path = m.join(name);
        let (early_ro, model) = if name == "lowerfile" {
            // Opened (and read) before the copy-up that the read-write open below triggers.
            let f = File::open(&path).unwrap();
            let mut head = vec![0u8; 4096];
            f.read_exact_at(&mut head, 0).unwrap();
            assert_eq!(head, ldata[..4096]);
            (Some(f), ldata.clone())
        } else {
            (None, Vec::new())
        };
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).unwrap();
        let mut fx = Fsx {
            name: name.into(),
            path,
            file,
            early_ro,
            early_frozen: frozen.then(|| ldata.clone()),
            model,
            seed,
            rng: Rng(seed),
            log: VecDeque::new(),
            ops: 0,
            counts: [0; 9],
            nanos: [0; 9],
            punch_ok: true,
            zero_ok: true,
        };
        for _ in 0..per_file {
            fx.step();
        }
        fx.verify_all(&fx.path.clone(), "end of run");
        eprintln!(
            "fsx [{name}] (seed {seed:#x}): {} ops, final size {}: {}",
            fx.ops,
            fx.model.len(),
            OP_NAMES
                .iter()
                .zip(fx.counts)
                .zip(fx.nanos)
                .map(|((n, c), t)| format!("{n} {c} ({} ms)", t / 1_000_000))
                .collect::<Vec<_>>()
                .join(", ")
        );
        done.push(fx);
    }
    let elapsed = t0.elapsed();
    let total: u64 = done.iter().map(|f| f.ops).sum();
    eprintln!("fsx: {total} ops in {:.1} s", elapsed.as_secs_f64());
    for fx in &mut done {
        fx.early_ro = None;
    }
    // Drop the open files before unmounting.
    let models: Vec<(String, Fsx)> = done.into_iter().map(|f| (f.name.clone(), f)).collect();
    let mut closed = Vec::new();
    for (n, mut fx) in models {
        fx.file = File::open("/dev/null").unwrap();
        closed.push((n, fx));
    }
    guard.unmount();

    // After a remount both files hold exactly the model; the lower file is untouched.
    let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, extra);
    for (n, fx) in &closed {
        fx.verify_all(&m.join(n), "after remount");
    }
    let d = diff_snapshots("before", &lower_before, "after", &snapshot(&l, true));
    assert!(d.is_empty(), "lower changed: {d:?}");
}
