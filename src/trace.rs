//! Request hooks: the operation trace (`-o trace=FILE`, JSON Lines) and the fault rules
//! ([`crate::faults`]), run around each call of the FUSE adapter, and `layerfs trace
//! summarize`.
//!
//! Hard parts:
//! 1. Cost when off: the adapter holds `Option<Arc<Hooks>>`; `None` is the only check a
//!    request pays. When on, a path is computed only when tracing or when a rule for that
//!    operation looks at paths.
//! 2. Writing the trace never blocks a request: lines go through a bounded queue
//!    (`sync_channel` + `try_send`) to one writer thread with a `BufWriter`. A line that does
//!    not fit is counted; the count is logged and written as a final `{"dropped":N}` line at
//!    unmount.
//!
//! Trace line fields: `t` (unix time, seconds with µs), `op`, `pid` (requesting process),
//! `ino`, `path` (when known; for operations on a name, the path of that name), `args`
//! (what matters for the operation), `ret` (0, or bytes/entries for read, write, readdir, ...)
//! on success or `errno` (`"ENOENT"`) on failure, `us` (duration in µs), `injected` (a fault
//! rule decided the outcome), `delay_us` (an injected delay).

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::{BufRead, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::faults::{self, Faults};
use crate::fs::{Attr, DirEntry, Opened, OverlayFs};

macro_rules! ops {
    ($($v:ident = $n:literal),* $(,)?) => {
        /// A traced operation.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Op { $($v),* }
        impl Op {
            pub const ALL: &'static [Op] = &[$(Op::$v),*];
            pub fn name(self) -> &'static str {
                match self { $(Op::$v => $n),* }
            }
        }
    };
}

ops! {
    Lookup = "lookup", Forget = "forget", Getattr = "getattr", Setattr = "setattr",
    Readlink = "readlink", Mknod = "mknod", Mkdir = "mkdir", Unlink = "unlink", Rmdir = "rmdir",
    Symlink = "symlink", Rename = "rename", Link = "link", Open = "open", Read = "read",
    Write = "write", Flush = "flush", Release = "release", Fsync = "fsync", Opendir = "opendir",
    Readdir = "readdir", Readdirplus = "readdirplus", Releasedir = "releasedir",
    Fsyncdir = "fsyncdir", Statfs = "statfs", Setxattr = "setxattr", Getxattr = "getxattr",
    Listxattr = "listxattr", Removexattr = "removexattr", Access = "access", Create = "create",
    Fallocate = "fallocate", Lseek = "lseek", CopyFileRange = "copy_file_range", Ioctl = "ioctl",
}

impl Op {
    /// Operations a fault rule may name (the others' results are ignored by the kernel).
    pub const FAULTABLE: u64 =
        !(Op::Forget.bit() | Op::Release.bit() | Op::Releasedir.bit()) & ((1 << Op::ALL.len()) - 1);

    #[inline]
    pub const fn bit(self) -> u64 {
        1 << self as u32
    }

    pub fn from_name(s: &str) -> Option<Op> {
        Op::ALL.iter().copied().find(|o| o.name() == s)
    }
}

/// Appends `s` as a JSON string (lossy for bytes that are not UTF-8).
pub fn json_str(out: &mut String, s: &[u8]) {
    out.push('"');
    for c in String::from_utf8_lossy(s).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The `args` object of a trace line, built only when tracing.
pub struct Args<'a> {
    out: &'a mut String,
    fs: &'a OverlayFs,
    first: bool,
}

impl Args<'_> {
    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        let _ = write!(self.out, "\"{k}\":");
    }
    /// A number.
    pub fn n(&mut self, k: &str, v: impl std::fmt::Display) -> &mut Self {
        self.key(k);
        let _ = write!(self.out, "{v}");
        self
    }
    /// A number in octal, as a string (`"0644"`).
    pub fn o(&mut self, k: &str, v: u32) -> &mut Self {
        self.key(k);
        let _ = write!(self.out, "\"{v:04o}\"");
        self
    }
    /// A number in hex, as a string (`"0x8001"`).
    pub fn x(&mut self, k: &str, v: u32) -> &mut Self {
        self.key(k);
        let _ = write!(self.out, "\"{v:#x}\"");
        self
    }
    /// A string.
    pub fn s(&mut self, k: &str, v: &OsStr) -> &mut Self {
        self.key(k);
        json_str(self.out, v.as_bytes());
        self
    }
    /// The path of `name` in directory `parent`.
    pub fn path(&mut self, k: &str, parent: u64, name: &OsStr) -> &mut Self {
        match self.fs.path_of(parent) {
            Some(p) => {
                self.key(k);
                json_str(self.out, p.join(name).as_os_str().as_bytes());
            }
            None => {
                self.n(&format!("{k}_parent"), parent);
                self.s(k, name);
            }
        }
        self
    }
}

/// What a successful call reports as `ret`.
pub trait Outcome {
    fn ret(&self) -> u64 {
        0
    }
}
impl Outcome for () {}
impl Outcome for Attr {}
impl Outcome for Opened {}
impl Outcome for (Attr, Opened) {}
impl Outcome for libc::statvfs {}
impl Outcome for u64 {}
impl Outcome for Vec<u8> {
    fn ret(&self) -> u64 {
        self.len() as u64
    }
}
/// Bytes read.
impl Outcome for crate::fs::ReadData<'_> {
    fn ret(&self) -> u64 {
        self.bytes().len() as u64
    }
}
/// Bytes read into a buffer.
impl Outcome for usize {
    fn ret(&self) -> u64 {
        *self as u64
    }
}
impl Outcome for u32 {
    fn ret(&self) -> u64 {
        *self as u64
    }
}
impl Outcome for i64 {
    fn ret(&self) -> u64 {
        *self as u64
    }
}
/// Entries from the requested offset on.
impl Outcome for (Arc<Vec<DirEntry>>, usize) {
    fn ret(&self) -> u64 {
        (self.0.len() - self.1) as u64
    }
}

enum Msg {
    Line(String),
    Finish(mpsc::Sender<()>),
}

/// The trace writer: a bounded queue and one thread.
pub struct Tracer {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
    /// Lines queued, and lines the writer has taken (for the report if it never finishes).
    queued: AtomicU64,
    taken: Arc<AtomicU64>,
    finished: Mutex<bool>,
}

/// Default number of lines the queue holds.
pub const DEFAULT_QUEUE: usize = 65536;

impl Tracer {
    /// Creates (truncates) the trace file and starts the writer thread. A new file is the
    /// server's own (0600: the server runs with umask 0, and a trace shows every name).
    pub fn open(path: &Path, queue: usize) -> std::io::Result<Tracer> {
        use std::os::unix::fs::OpenOptionsExt;
        // Non-blocking, so that a FIFO no process reads fails here (ENXIO) instead of holding
        // the mount until a reader comes; the writer thread then writes blocking again.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENXIO) => std::io::Error::other("a FIFO that no process reads"),
                _ => e,
            })?;
        crate::sys::set_nonblocking(std::os::fd::AsFd::as_fd(&f), false)?;
        let (tx, rx) = mpsc::sync_channel(queue.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let (d, taken) = (dropped.clone(), Arc::new(AtomicU64::new(0)));
        let t = taken.clone();
        std::thread::Builder::new().name("trace-writer".into()).spawn(move || writer(f, rx, d, t))?;
        Ok(Tracer { tx, dropped, queued: AtomicU64::new(0), taken, finished: Mutex::new(false) })
    }

    fn send(&self, line: String) {
        match self.tx.try_send(Msg::Line(line)) {
            Ok(()) => {
                self.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                    log::warn!(
                        "trace: the writer cannot keep up; dropping lines (counted, reported at unmount)"
                    );
                }
            }
        }
    }

    /// Writes the final `{"dropped":N}` line and flushes; waits for the writer (at most 60 s,
    /// then the lines it has not taken are reported in the log).
    pub fn finish(&self) {
        let mut done = self.finished.lock();
        if *done {
            return;
        }
        *done = true;
        let (ack, wait) = mpsc::channel();
        let done =
            self.tx.send(Msg::Finish(ack)).is_ok() && wait.recv_timeout(Duration::from_secs(60)).is_ok();
        if !done {
            let lost = self.queued.load(Ordering::Relaxed).saturating_sub(self.taken.load(Ordering::Relaxed));
            log::warn!(
                "trace: the writer did not finish; {lost} queued lines and the final line are not written"
            );
        }
        let n = self.dropped.load(Ordering::Relaxed);
        if n > 0 {
            log::warn!("trace: {n} lines dropped (queue full or trace file not writable)");
        }
    }
}

/// The writer thread. It drains the queue, flushes, then naps briefly before blocking again:
/// while it naps (or works) no sender has to wake it, so a busy mount pays one wake-up and one
/// write(2) per batch, not per line.
fn writer(f: std::fs::File, rx: Receiver<Msg>, dropped: Arc<AtomicU64>, taken: Arc<AtomicU64>) {
    let mut w = BufWriter::with_capacity(1 << 16, f);
    let mut broken = false;
    // Handles one message; true once the final line is written.
    let mut handle = |w: &mut BufWriter<std::fs::File>, m: Msg| -> bool {
        let (line, ack) = match m {
            Msg::Line(l) => {
                taken.fetch_add(1, Ordering::Relaxed);
                (l, None)
            }
            Msg::Finish(ack) => (format!("{{\"dropped\":{}}}\n", dropped.load(Ordering::Relaxed)), Some(ack)),
        };
        if broken {
            // Not written: counted as dropped (the final line may not make it either, the
            // log has the warning).
            dropped.fetch_add(1, Ordering::Relaxed);
        } else if let Err(e) = w.write_all(line.as_bytes()) {
            broken = true;
            dropped.fetch_add(1, Ordering::Relaxed);
            log::warn!("trace: write failed ({e}); later lines are counted as dropped");
        }
        match ack {
            Some(ack) => {
                let _ = w.flush();
                let _ = ack.send(());
                true
            }
            None => false,
        }
    };
    while let Ok(m) = rx.recv() {
        if handle(&mut w, m) {
            return;
        }
        loop {
            while let Ok(m) = rx.try_recv() {
                if handle(&mut w, m) {
                    return;
                }
            }
            // The queue is empty: let readers see what there is.
            let _ = w.flush();
            std::thread::sleep(Duration::from_millis(2));
            match rx.try_recv() {
                Ok(m) => {
                    if handle(&mut w, m) {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
    }
    let _ = w.flush();
}

/// The hooks of one mount: a tracer, fault rules, or both.
pub struct Hooks {
    fs: Arc<OverlayFs>,
    pub trace: Option<Tracer>,
    pub faults: Option<Arc<Faults>>,
    control: Mutex<Option<PathBuf>>,
}

impl Hooks {
    pub fn new(fs: Arc<OverlayFs>, trace: Option<Tracer>, faults: Option<Arc<Faults>>) -> Hooks {
        Hooks { fs, trace, faults, control: Mutex::new(None) }
    }

    /// Serves the fault control socket for this mount (when there are fault rules).
    pub fn serve_control(&self, mountpoint: &Path) -> std::result::Result<(), String> {
        if let Some(f) = &self.faults {
            let p = faults::serve_control(f.clone(), mountpoint)?;
            *self.control.lock() = Some(p);
        }
        Ok(())
    }

    /// At unmount: the trace's final line, the control socket removed.
    pub fn shutdown(&self) {
        if let Some(t) = &self.trace {
            t.finish();
        }
        if let Some(p) = self.control.lock().take() {
            let _ = std::fs::remove_file(p);
        }
    }

    fn path(&self, ino: u64, name: Option<&OsStr>) -> Option<PathBuf> {
        let p = self.fs.path_of(ino)?;
        Some(match name {
            Some(n) => p.join(n),
            None => p,
        })
    }

    /// Runs one call: decides injected faults, calls `f` unless one fails it, traces it.
    /// `name`: for operations on a directory entry; `len`: bytes written (for `after_bytes`).
    #[allow(clippy::too_many_arguments)]
    pub fn run<T: Outcome>(
        &self,
        pid: u32,
        op: Op,
        ino: u64,
        name: Option<&OsStr>,
        len: u64,
        args: impl FnOnce(&mut Args),
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let faults = self.faults.as_deref().filter(|f| f.wants(op));
        if self.trace.is_none() && faults.is_none() {
            return f();
        }
        let t0 = SystemTime::now();
        let start = Instant::now();
        let path = if self.trace.is_some() || faults.is_some_and(|f| f.needs_path(op)) {
            self.path(ino, name)
        } else {
            None
        };
        let inj = faults.and_then(|f| f.decide(op, path.as_deref(), len));
        if let Some(i) = &inj {
            if !i.delay.is_zero() {
                std::thread::sleep(i.delay);
            }
        }
        let r = match inj.and_then(|i| i.errno) {
            Some(e) => Err(Error::new(e, "injected fault")),
            None => f(),
        };
        if let Some(t) = &self.trace {
            let us = start.elapsed().as_micros();
            let mut l = String::with_capacity(192);
            let ts = t0.duration_since(UNIX_EPOCH).unwrap_or_default();
            let _ = write!(
                l,
                "{{\"t\":{}.{:06},\"op\":\"{}\",\"pid\":{pid}",
                ts.as_secs(),
                ts.subsec_micros(),
                op.name()
            );
            if op != Op::Statfs {
                let _ = write!(l, ",\"ino\":{ino}");
            }
            if let Some(p) = &path {
                l.push_str(",\"path\":");
                json_str(&mut l, p.as_os_str().as_bytes());
            } else if let Some(n) = name {
                l.push_str(",\"name\":");
                json_str(&mut l, n.as_bytes());
            }
            l.push_str(",\"args\":{");
            args(&mut Args { out: &mut l, fs: &self.fs, first: true });
            l.push('}');
            match &r {
                Ok(v) => {
                    let _ = write!(l, ",\"ret\":{}", v.ret());
                }
                Err(e) => {
                    let _ = write!(l, ",\"errno\":\"{}\"", faults::errno_name(e.errno));
                }
            }
            let _ = write!(l, ",\"us\":{us}");
            if let Some(i) = inj {
                l.push_str(",\"injected\":true");
                if !i.delay.is_zero() {
                    let _ = write!(l, ",\"delay_us\":{}", i.delay.as_micros());
                }
            }
            l.push_str("}\n");
            t.send(l);
        }
        r
    }
}

// ---- summarize ------------------------------------------------------------------------------

/// Reads the value of `"key":` in one of our trace lines: a number or a plain string.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":");
    let i = line.find(&pat)? + pat.len();
    let rest = &line[i..];
    if let Some(s) = rest.strip_prefix('"') {
        return s.find('"').map(|e| &s[..e]);
    }
    let e = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..e].trim())
}

#[derive(Default)]
struct OpStats {
    us: Vec<u64>,
    errors: u64,
    injected: u64,
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let k = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[k - 1]
}

/// Counts and latency percentiles per operation, as a table.
pub fn summarize(r: impl BufRead) -> std::io::Result<String> {
    let mut by: std::collections::BTreeMap<String, OpStats> = Default::default();
    let (mut dropped, mut bad, mut total) = (0u64, 0u64, 0u64);
    for line in r.split(b'\n') {
        // A line that is not UTF-8 (a name cut inside a character) is one unreadable line,
        // not the end of the summary.
        let Ok(line) = String::from_utf8(line?) else {
            bad += 1;
            continue;
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(d) = field(line, "dropped").and_then(|d| d.parse::<u64>().ok()) {
            if !line.contains("\"op\":") {
                dropped += d;
                continue;
            }
        }
        let (Some(op), Some(us)) = (field(line, "op"), field(line, "us").and_then(|u| u.parse::<u64>().ok()))
        else {
            bad += 1;
            continue;
        };
        total += 1;
        let s = by.entry(op.to_string()).or_default();
        s.us.push(us);
        if field(line, "errno").is_some() {
            s.errors += 1;
        }
        if field(line, "injected") == Some("true") {
            s.injected += 1;
        }
    }
    let mut rows: Vec<(String, OpStats)> = by.into_iter().collect();
    rows.sort_by(|a, b| b.1.us.len().cmp(&a.1.us.len()).then(a.0.cmp(&b.0)));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:>9} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "op", "count", "errors", "injected", "p50_us", "p90_us", "p99_us", "max_us"
    );
    for (op, mut s) in rows {
        s.us.sort_unstable();
        let _ = writeln!(
            out,
            "{:<16} {:>9} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9}",
            op,
            s.us.len(),
            s.errors,
            s.injected,
            pct(&s.us, 0.50),
            pct(&s.us, 0.90),
            pct(&s.us, 0.99),
            s.us.last().copied().unwrap_or(0)
        );
    }
    let _ = writeln!(out, "total {total} operations; dropped lines: {dropped}");
    if bad > 0 {
        let _ = writeln!(out, "unreadable lines: {bad}");
    }
    Ok(out)
}

pub const TRACE_USAGE: &str = "\
usage: layerfs trace summarize FILE   counts and latency percentiles (µs) per operation
                                      of a trace written with -o trace=FILE (- for stdin)
";

/// `layerfs trace ...` (arguments after `trace`). Returns the exit code.
pub fn cli_main(args: &[std::ffi::OsString]) -> i32 {
    let a: Vec<String> = args.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    match a.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["-h"] | ["--help"] | ["summarize", "-h" | "--help"] => {
            print!("{TRACE_USAGE}");
            0
        }
        ["summarize", file] => {
            let r: std::io::Result<String> = if *file == "-" {
                summarize(std::io::stdin().lock())
            } else {
                std::fs::File::open(file).and_then(|f| summarize(std::io::BufReader::new(f)))
            };
            match r {
                Ok(s) => {
                    print!("{s}");
                    0
                }
                Err(e) => {
                    eprintln!("layerfs trace: {file}: {e}");
                    1
                }
            }
        }
        _ => {
            eprint!("{TRACE_USAGE}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_names_round_trip() {
        for op in Op::ALL {
            assert_eq!(Op::from_name(op.name()), Some(*op));
        }
        assert_eq!(Op::FAULTABLE & Op::Forget.bit(), 0);
        assert_ne!(Op::FAULTABLE & Op::CopyFileRange.bit(), 0);
    }

    #[test]
    fn json_escaping() {
        let mut s = String::new();
        json_str(&mut s, b"a\"b\\c\nd\x01\xff");
        assert_eq!(s, "\"a\\\"b\\\\c\\nd\\u0001\u{fffd}\"");
    }

    #[test]
    fn summary_percentiles() {
        let mut t = String::new();
        for i in 1..=100 {
            t.push_str(&format!(
                "{{\"t\":1.0,\"op\":\"getattr\",\"pid\":1,\"ino\":1,\"path\":\"/\\\"op\\\":x\",\"args\":{{}},\"ret\":0,\"us\":{i}}}\n"
            ));
        }
        t.push_str("{\"t\":1.0,\"op\":\"write\",\"pid\":1,\"ino\":2,\"args\":{},\"errno\":\"ENOSPC\",\"us\":7,\"injected\":true}\n");
        t.push_str("{\"dropped\":3}\n");
        let s = summarize(t.as_bytes()).unwrap();
        let g = s.lines().find(|l| l.starts_with("getattr")).unwrap();
        let cols: Vec<&str> = g.split_whitespace().collect();
        assert_eq!(cols, ["getattr", "100", "0", "0", "50", "90", "99", "100"]);
        let w = s.lines().find(|l| l.starts_with("write")).unwrap();
        assert_eq!(w.split_whitespace().collect::<Vec<_>>(), ["write", "1", "1", "1", "7", "7", "7", "7"]);
        assert!(s.contains("dropped lines: 3"), "{s}");
    }
}
