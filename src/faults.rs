//! Fault injection: rules that make chosen operations fail with an errno, or wait, at chosen
//! moments, given at mount (`-o faults=FILE`) and changed while mounted through a control
//! socket (`layerfs fault MOUNTPOINT add RULE | clear | list`).
//!
//! A rule is one line: `OPS PATH ACTION... [WHEN]`, e.g.
//! `write,create /var/lib/x/** ENOSPC after_bytes=10M`. Tokens after PATH may also be joined
//! with commas (`EIO,prob=0.1,seed=42`).
//! - OPS: comma-separated operation names (`lookup`, `getattr`, `write`, ...), or `*`.
//! - PATH: a glob on the path in the merged tree (`/` is the root): `*` and `?` stay within a
//!   name, `**` spans directories; `*` or `**` alone match everything.
//! - ACTION: an errno name (`EIO`, `errno=ENOSPC`, or a number) and/or `delay=50ms`.
//! - WHEN: `always` (default), `nth=N` (only the Nth matching call), `after_bytes=N` (matching
//!   writes go through until they would take the total beyond N bytes; that write and every
//!   matching call after it fail), `prob=P[,seed=S]` (each matching call fails with
//!   probability P, drawn from S and the call's number, so a run can be repeated).
//!
//! Hard parts: the rule list is replaced as a whole (readers take an `Arc` snapshot), counters
//! are atomics in the rule, and the per-operation mask is one atomic load, so a mount with no
//! rule for an operation pays nothing more for it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use sha2::{Digest, Sha256};

use crate::trace::Op;

/// When a rule fires.
#[derive(Clone, Debug, PartialEq)]
pub enum When {
    Always,
    Nth(u64),
    AfterBytes(u64),
    Prob { p: f64, seed: u64 },
}

/// One fault rule, with its counters.
#[derive(Debug)]
pub struct Rule {
    /// The rule as given (normalised spacing).
    pub text: String,
    /// Bit `1 << op as u32` for each operation.
    pub ops: u64,
    /// None: every path.
    pub glob: Option<Vec<u8>>,
    pub errno: Option<i32>,
    pub delay: Duration,
    pub when: When,
    calls: AtomicU64,
    fired: AtomicU64,
    bytes: AtomicU64,
    tripped: AtomicBool,
}

/// What a call gets.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Injection {
    pub errno: Option<i32>,
    pub delay: Duration,
}

const ERRNOS: &[(&str, i32)] = &[
    ("EPERM", libc::EPERM),
    ("ENOENT", libc::ENOENT),
    ("EINTR", libc::EINTR),
    ("EIO", libc::EIO),
    ("ENXIO", libc::ENXIO),
    ("E2BIG", libc::E2BIG),
    ("EBADF", libc::EBADF),
    ("EAGAIN", libc::EAGAIN),
    ("ENOMEM", libc::ENOMEM),
    ("EACCES", libc::EACCES),
    ("EFAULT", libc::EFAULT),
    ("EBUSY", libc::EBUSY),
    ("EEXIST", libc::EEXIST),
    ("EXDEV", libc::EXDEV),
    ("ENODEV", libc::ENODEV),
    ("ENOTDIR", libc::ENOTDIR),
    ("EISDIR", libc::EISDIR),
    ("EINVAL", libc::EINVAL),
    ("ENFILE", libc::ENFILE),
    ("EMFILE", libc::EMFILE),
    ("ETXTBSY", libc::ETXTBSY),
    ("EFBIG", libc::EFBIG),
    ("ENOSPC", libc::ENOSPC),
    ("ESPIPE", libc::ESPIPE),
    ("EROFS", libc::EROFS),
    ("EMLINK", libc::EMLINK),
    ("ERANGE", libc::ERANGE),
    ("EDEADLK", libc::EDEADLK),
    ("ENAMETOOLONG", libc::ENAMETOOLONG),
    ("ENOLCK", libc::ENOLCK),
    ("ENOSYS", libc::ENOSYS),
    ("ENOTEMPTY", libc::ENOTEMPTY),
    ("ELOOP", libc::ELOOP),
    ("ENODATA", libc::ENODATA),
    ("EOVERFLOW", libc::EOVERFLOW),
    ("EOPNOTSUPP", libc::EOPNOTSUPP),
    ("ENOTSUP", libc::ENOTSUP),
    ("ETIMEDOUT", libc::ETIMEDOUT),
    ("ESTALE", libc::ESTALE),
    ("EDQUOT", libc::EDQUOT),
    ("ECANCELED", libc::ECANCELED),
    ("ENOTCONN", libc::ENOTCONN),
];

/// `EIO` → 5; also a plain number.
pub fn errno_from_name(s: &str) -> Option<i32> {
    let u = s.to_ascii_uppercase();
    // The kernel takes reply errors 1..=511 only: another left the caller waiting for good.
    ERRNOS
        .iter()
        .find(|(n, _)| *n == u)
        .map(|(_, e)| *e)
        .or_else(|| s.parse::<i32>().ok().filter(|e| (1..512).contains(e)))
}

/// 5 → `EIO` (the first name of a number), else `E<number>`.
pub fn errno_name(e: i32) -> std::borrow::Cow<'static, str> {
    match ERRNOS.iter().find(|(_, n)| *n == e) {
        Some((n, _)) => (*n).into(),
        None => format!("E{e}").into(),
    }
}

/// `10M` → 10485760 (K, M, G, T are powers of 1024; `10MiB`, `10m` also accepted).
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim().trim_end_matches("iB").trim_end_matches(['b', 'B']);
    let (num, mul) = match t.chars().last()? {
        'k' | 'K' => (&t[..t.len() - 1], 1u64 << 10),
        'm' | 'M' => (&t[..t.len() - 1], 1 << 20),
        'g' | 'G' => (&t[..t.len() - 1], 1 << 30),
        't' | 'T' => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mul);
    }
    let f: f64 = num.parse().ok()?;
    (f >= 0.0 && f.is_finite()).then_some((f * mul as f64) as u64)
}

/// `50ms`, `2s`, `100us`, `1.5s`; a plain number is milliseconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "ms"),
    };
    let v: f64 = num.parse().ok()?;
    if !(v >= 0.0 && v.is_finite()) {
        return None;
    }
    let secs = match unit {
        "ns" => v / 1e9,
        "us" | "µs" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        "m" | "min" => v * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// Matches a path against a glob (`*`, `?` within a name, `**` across names).
pub fn glob_match(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') if p.get(1) == Some(&b'*') => {
            let rest = &p[2..];
            (0..=s.len()).any(|i| glob_match(rest, &s[i..]))
                || (rest.first() == Some(&b'/') && glob_match(&rest[1..], s))
        }
        Some(b'*') => {
            let rest = &p[1..];
            for i in 0..=s.len() {
                if glob_match(rest, &s[i..]) {
                    return true;
                }
                if i < s.len() && s[i] == b'/' {
                    break;
                }
            }
            false
        }
        Some(b'?') => !s.is_empty() && s[0] != b'/' && glob_match(&p[1..], &s[1..]),
        Some(&c) => s.first() == Some(&c) && glob_match(&p[1..], &s[1..]),
    }
}

/// A 64-bit mix of the seed and the call number (splitmix64's finaliser).
fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rule {
    /// Parses one rule line (see the module documentation).
    pub fn parse(line: &str) -> Result<Rule, String> {
        let mut toks = line.split_whitespace();
        let (Some(ops_s), Some(path_s)) = (toks.next(), toks.next()) else {
            return Err(format!("rule {line:?}: want OPS PATH ACTION [WHEN]"));
        };
        let mut ops = 0u64;
        for o in ops_s.split(',').filter(|o| !o.is_empty()) {
            if o == "*" || o == "all" {
                ops |= Op::FAULTABLE;
                continue;
            }
            let op = Op::from_name(o).ok_or_else(|| format!("rule {line:?}: unknown operation {o:?}"))?;
            if Op::FAULTABLE & op.bit() == 0 {
                return Err(format!("rule {line:?}: {o} cannot fail (the kernel ignores its result)"));
            }
            ops |= op.bit();
        }
        if ops == 0 {
            return Err(format!("rule {line:?}: no operation"));
        }
        let glob = match path_s {
            "*" | "**" | "/**" => None,
            p if p.starts_with('*') && !p.starts_with("**") => {
                // `*` does not cross `/`, and paths start with one: it would match nothing.
                return Err(format!(
                    "rule {line:?}: a path starting with a single '*' matches nothing (use /{p} for the \
                     top directory or **/{p} anywhere)"
                ));
            }
            p if p.starts_with('/') || p.starts_with('*') => Some(p.as_bytes().to_vec()),
            p => Some(format!("/{p}").into_bytes()),
        };
        let (mut errno, mut delay, mut when) = (None, Duration::ZERO, When::Always);
        let (mut prob, mut seed) = (None, 0u64);
        let mut whens = 0;
        for item in toks.flat_map(|t| t.split(',')).filter(|t| !t.is_empty()) {
            let bad = || format!("rule {line:?}: bad {item:?}");
            match item.split_once('=') {
                None if item == "always" => whens += 1,
                None => errno = Some(errno_from_name(item).ok_or_else(bad)?),
                Some(("errno", v)) => errno = Some(errno_from_name(v).ok_or_else(bad)?),
                Some(("delay", v)) => delay = parse_duration(v).ok_or_else(bad)?,
                Some(("nth", v)) => {
                    when = When::Nth(v.parse().ok().filter(|n| *n > 0).ok_or_else(bad)?);
                    whens += 1;
                }
                Some(("after_bytes", v)) => {
                    if ops & Op::Write.bit() == 0 {
                        return Err(format!("rule {line:?}: after_bytes needs write among the operations"));
                    }
                    when = When::AfterBytes(parse_size(v).ok_or_else(bad)?);
                    whens += 1;
                }
                Some(("prob", v)) => {
                    prob = Some(v.parse::<f64>().ok().filter(|p| (0.0..=1.0).contains(p)).ok_or_else(bad)?);
                    whens += 1;
                }
                Some(("seed", v)) => seed = v.parse().map_err(|_| bad())?,
                _ => return Err(bad()),
            }
        }
        if let Some(p) = prob {
            when = When::Prob { p, seed };
        }
        if whens > 1 {
            return Err(format!("rule {line:?}: at most one of always, nth=, after_bytes=, prob="));
        }
        if errno.is_none() && delay.is_zero() {
            return Err(format!("rule {line:?}: no action (want an errno such as EIO, or delay=)"));
        }
        Ok(Rule {
            text: line.split_whitespace().collect::<Vec<_>>().join(" "),
            ops,
            glob,
            errno,
            delay,
            when,
            calls: AtomicU64::new(0),
            fired: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            tripped: AtomicBool::new(false),
        })
    }

    fn matches_path(&self, path: Option<&Path>) -> bool {
        match (&self.glob, path) {
            (None, _) => true,
            (Some(g), Some(p)) => glob_match(g, p.as_os_str().as_bytes()),
            (Some(_), None) => false,
        }
    }

    /// Counts a matching call and says whether the rule fires for it.
    fn fires(&self, op: Op, len: u64) -> bool {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let fire = match self.when {
            When::Always => true,
            When::Nth(k) => n == k,
            When::Prob { p, seed } => ((mix(seed, n) >> 11) as f64 / (1u64 << 53) as f64) < p,
            When::AfterBytes(limit) => {
                if self.tripped.load(Ordering::Relaxed) {
                    true
                } else if op == Op::Write {
                    let r = self.bytes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                        (b + len <= limit).then_some(b + len)
                    });
                    if r.is_err() {
                        self.tripped.store(true, Ordering::Relaxed);
                    }
                    r.is_err()
                } else {
                    false
                }
            }
        };
        if fire {
            self.fired.fetch_add(1, Ordering::Relaxed);
        }
        fire
    }

    /// `calls=N fired=M` (and bytes for after_bytes).
    pub fn counters(&self) -> String {
        let mut s = format!(
            "calls={} fired={}",
            self.calls.load(Ordering::Relaxed),
            self.fired.load(Ordering::Relaxed)
        );
        if let When::AfterBytes(_) = self.when {
            s.push_str(&format!(" bytes={}", self.bytes.load(Ordering::Relaxed)));
        }
        s
    }
}

/// Parses a rule file: one rule per line, `#` starts a comment, blank lines ignored.
pub fn parse_rules(text: &str) -> Result<Vec<Rule>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        out.push(Rule::parse(line).map_err(|e| format!("line {}: {e}", i + 1))?);
    }
    Ok(out)
}

/// The live rule set of a mount.
#[derive(Default)]
pub struct Faults {
    rules: RwLock<Arc<Vec<Arc<Rule>>>>,
    /// Union of the rules' operation bits.
    mask: AtomicU64,
    /// Operations for which some rule has a path glob.
    path_mask: AtomicU64,
}

impl Faults {
    pub fn new(rules: Vec<Rule>) -> Faults {
        let f = Faults::default();
        f.set(rules.into_iter().map(Arc::new).collect());
        f
    }

    fn set(&self, rules: Vec<Arc<Rule>>) {
        let mask = rules.iter().fold(0, |m, r| m | r.ops);
        let pmask = rules.iter().filter(|r| r.glob.is_some()).fold(0, |m, r| m | r.ops);
        let mut g = self.rules.write();
        *g = Arc::new(rules);
        self.mask.store(mask, Ordering::Release);
        self.path_mask.store(pmask, Ordering::Release);
    }

    /// Whether any rule names this operation (one atomic load).
    #[inline]
    pub fn wants(&self, op: Op) -> bool {
        self.mask.load(Ordering::Relaxed) & op.bit() != 0
    }

    /// Whether a rule for this operation looks at the path.
    pub fn needs_path(&self, op: Op) -> bool {
        self.path_mask.load(Ordering::Relaxed) & op.bit() != 0
    }

    /// Decides for one call: every matching rule counts it; delays add up, the first errno
    /// wins.
    pub fn decide(&self, op: Op, path: Option<&Path>, len: u64) -> Option<Injection> {
        let rules = self.rules.read().clone();
        let mut inj = Injection::default();
        let mut any = false;
        for r in rules.iter().filter(|r| r.ops & op.bit() != 0 && r.matches_path(path)) {
            // (Every matching rule counts the call, also after an errno is decided: `nth=` and
            // `prob=` of later rules count from it, and their delays still add up.)
            if r.fires(op, len) {
                any = true;
                inj.delay += r.delay;
                if inj.errno.is_none() {
                    inj.errno = r.errno;
                }
            }
        }
        any.then_some(inj)
    }

    pub fn add(&self, rule: Rule) {
        let mut v: Vec<Arc<Rule>> = self.rules.read().iter().cloned().collect();
        v.push(Arc::new(rule));
        self.set(v);
    }

    pub fn clear(&self) {
        self.set(Vec::new());
    }

    /// Removes rule number `n` (1-based, as `list` shows).
    pub fn remove(&self, n: usize) -> bool {
        let mut v: Vec<Arc<Rule>> = self.rules.read().iter().cloned().collect();
        if n == 0 || n > v.len() {
            return false;
        }
        v.remove(n - 1);
        self.set(v);
        true
    }

    /// One line per rule: `N: RULE  (calls=.. fired=..)`.
    pub fn list(&self) -> String {
        let rules = self.rules.read().clone();
        let mut s = String::new();
        for (i, r) in rules.iter().enumerate() {
            s.push_str(&format!("{}: {}  ({})\n", i + 1, r.text, r.counters()));
        }
        s
    }

    /// Handles one control request line; the reply text and whether it succeeded.
    pub fn control(&self, req: &str) -> (bool, String) {
        let req = req.trim();
        let (cmd, arg) = req.split_once(char::is_whitespace).unwrap_or((req, ""));
        match cmd {
            "add" => match Rule::parse(arg) {
                Ok(r) => {
                    let t = r.text.clone();
                    self.add(r);
                    log::info!("fault rule added: {t}");
                    (true, format!("added: {t}\n"))
                }
                Err(e) => (false, format!("{e}\n")),
            },
            "clear" => {
                self.clear();
                (true, "cleared\n".into())
            }
            "del" | "rm" => match arg.trim().parse::<usize>() {
                Ok(n) if self.remove(n) => (true, format!("removed rule {n}\n")),
                _ => (false, format!("no rule {:?}\n", arg.trim())),
            },
            "list" => (true, self.list()),
            _ => (false, format!("unknown request {cmd:?} (want add RULE, del N, clear, list)\n")),
        }
    }
}

// ---- control socket -------------------------------------------------------------------------

/// Directories where control sockets may live, in the order they are tried:
/// `$XDG_RUNTIME_DIR/layerfs`, `/run/layerfs` (root), `/tmp/layerfs-UID`.
pub fn socket_dirs() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|x| !x.is_empty()) {
        v.push(PathBuf::from(x).join("layerfs"));
    }
    let uid = crate::sys::geteuid();
    if uid == 0 {
        v.push(PathBuf::from("/run/layerfs"));
    }
    v.push(PathBuf::from(format!("/tmp/layerfs-{uid}")));
    v
}

/// The socket's file name for a (canonical) mountpoint: a hash, so it always fits the 108
/// bytes of a socket address.
pub fn socket_name(mountpoint: &Path) -> String {
    let h = Sha256::digest(mountpoint.as_os_str().as_bytes());
    let hex: String = h.iter().take(10).map(|b| format!("{b:02x}")).collect();
    format!("{hex}.sock")
}

fn make_private_dir(d: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(d) {
        Ok(()) => std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let md = std::fs::symlink_metadata(d)?;
            use std::os::unix::fs::MetadataExt;
            if !md.is_dir() || md.uid() != crate::sys::geteuid() || md.mode() & 0o022 != 0 {
                return Err(std::io::Error::other(format!("{} is not a private directory", d.display())));
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Binds the control socket of a mount and serves it on a thread. Returns the socket path.
pub fn serve_control(faults: Arc<Faults>, mountpoint: &Path) -> Result<PathBuf, String> {
    let name = socket_name(mountpoint);
    let mut errs = Vec::new();
    for d in socket_dirs() {
        if let Some(parent) = d.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        if let Err(e) = make_private_dir(&d) {
            errs.push(format!("{}: {e}", d.display()));
            continue;
        }
        let p = d.join(&name);
        let _ = std::fs::remove_file(&p);
        let l = match UnixListener::bind(&p) {
            Ok(l) => l,
            Err(e) => {
                errs.push(format!("{}: {e}", p.display()));
                continue;
            }
        };
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
        let f = faults.clone();
        std::thread::Builder::new()
            .name("fault-control".into())
            .spawn(move || {
                for c in l.incoming() {
                    match c {
                        Ok(s) => handle_client(&f, s),
                        Err(e) => log::warn!("fault control: {e}"),
                    }
                }
            })
            .map_err(|e| format!("thread: {e}"))?;
        log::info!("fault control socket: {}", p.display());
        return Ok(p);
    }
    Err(format!("no place for the fault control socket ({})", errs.join("; ")))
}

fn handle_client(f: &Faults, s: UnixStream) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let mut r = BufReader::new(&s);
    if r.read_line(&mut line).is_err() {
        return;
    }
    let (ok, reply) = f.control(&line);
    let mut w = &s;
    let _ = w.write_all(format!("{}\n{reply}", if ok { "ok" } else { "error" }).as_bytes());
}

/// Sends one request to the server of a mount; returns (ok, reply).
pub fn request(mountpoint: &Path, req: &str) -> Result<(bool, String), String> {
    let mp = std::fs::canonicalize(mountpoint).map_err(|e| format!("{}: {e}", mountpoint.display()))?;
    let name = socket_name(&mp);
    let mut tried = Vec::new();
    for d in socket_dirs() {
        let p = d.join(&name);
        if !p.exists() {
            tried.push(p.display().to_string());
            continue;
        }
        let mut s = match UnixStream::connect(&p) {
            Ok(s) => s,
            Err(e) => {
                tried.push(format!("{}: {e}", p.display()));
                continue;
            }
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        s.write_all(format!("{}\n", req.replace('\n', " ")).as_bytes()).map_err(|e| e.to_string())?;
        let mut out = String::new();
        std::io::Read::read_to_string(&mut s, &mut out).map_err(|e| e.to_string())?;
        let (status, rest) = out.split_once('\n').unwrap_or((out.as_str(), ""));
        return Ok((status == "ok", rest.to_string()));
    }
    Err(format!(
        "no fault control socket for {} (mounted with -o faults=...?); looked for {}",
        mp.display(),
        tried.join(", ")
    ))
}

pub const FAULT_USAGE: &str = "\
usage: layerfs fault MOUNTPOINT add RULE...   add a rule (e.g. add write /data/** ENOSPC after_bytes=10M)
       layerfs fault MOUNTPOINT del N         remove rule N (as list numbers them)
       layerfs fault MOUNTPOINT clear         remove every rule
       layerfs fault MOUNTPOINT list          the rules with their counters
The mount must have been made with -o faults=FILE (or -o faults for no initial rules).
RULE: OPS PATH ACTION [WHEN]; OPS write,create or *; PATH a glob (/var/lib/x/**);
ACTION EIO|ENOSPC|errno=N and/or delay=50ms; WHEN always|nth=N|after_bytes=10M|prob=P,seed=S
";

/// `layerfs fault ...` (arguments after `fault`). Returns the exit code.
pub fn cli_main(args: &[std::ffi::OsString]) -> i32 {
    let a: Vec<String> = args.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    if a.is_empty() || a.iter().any(|x| x == "-h" || x == "--help") || a.len() < 2 {
        eprint!("{FAULT_USAGE}");
        return if a.iter().any(|x| x == "-h" || x == "--help") { 0 } else { 2 };
    }
    let req = match a[1].as_str() {
        "add" if a.len() > 2 => format!("add {}", a[2..].join(" ")),
        "del" | "rm" if a.len() == 3 => format!("del {}", a[2]),
        "clear" | "list" if a.len() == 2 => a[1].clone(),
        _ => {
            eprint!("{FAULT_USAGE}");
            return 2;
        }
    };
    if let Some(rule) = req.strip_prefix("add ") {
        if let Err(e) = Rule::parse(rule) {
            eprintln!("layerfs fault: {e}");
            return 2;
        }
    }
    match request(Path::new(&a[0]), &req) {
        Ok((ok, reply)) => {
            if ok {
                print!("{reply}");
                0
            } else {
                eprint!("layerfs fault: {reply}");
                1
            }
        }
        Err(e) => {
            eprintln!("layerfs fault: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let m = |p: &str, s: &str| glob_match(p.as_bytes(), s.as_bytes());
        assert!(m("/var/lib/x/**", "/var/lib/x/a"));
        assert!(m("/var/lib/x/**", "/var/lib/x/a/b/c"));
        assert!(!m("/var/lib/x/**", "/var/lib/x"));
        assert!(!m("/var/lib/x/**", "/var/lib/xy/a"));
        assert!(m("/a/*.log", "/a/b.log"));
        assert!(!m("/a/*.log", "/a/c/b.log"));
        assert!(m("/a/**/b", "/a/b"));
        assert!(m("/a/**/b", "/a/x/y/b"));
        assert!(m("**/b", "/a/x/b"));
        assert!(m("/f?", "/f1"));
        assert!(!m("/f?", "/f/"));
    }

    #[test]
    fn rule_parsing() {
        let r = Rule::parse("write,create /var/lib/x/** ENOSPC after_bytes=10M").unwrap();
        assert_eq!(r.ops, Op::Write.bit() | Op::Create.bit());
        assert_eq!(r.errno, Some(libc::ENOSPC));
        assert_eq!(r.when, When::AfterBytes(10 << 20));
        assert_eq!(r.glob.as_deref(), Some(&b"/var/lib/x/**"[..]));
        let r = Rule::parse("read * EIO,prob=0.25,seed=42").unwrap();
        assert_eq!(r.when, When::Prob { p: 0.25, seed: 42 });
        assert!(r.glob.is_none());
        let r = Rule::parse("lookup etc/* delay=50ms").unwrap();
        assert_eq!(r.delay, Duration::from_millis(50));
        assert_eq!(r.glob.as_deref(), Some(&b"/etc/*"[..]));
        let r = Rule::parse("* ** errno=13 nth=3").unwrap();
        assert_eq!(r.errno, Some(libc::EACCES));
        assert_eq!(r.when, When::Nth(3));
        assert!(Rule::parse("write /x").is_err());
        assert!(Rule::parse("bogus /x EIO").is_err());
        assert!(Rule::parse("forget /x EIO").is_err());
        assert!(Rule::parse("create /x EIO after_bytes=1k").is_err());
        assert!(Rule::parse("write /x EIO nth=1 prob=0.5").is_err());
        assert!(Rule::parse("write /x EIO prob=2").is_err());
        assert!(Rule::parse("write /x EBOGUS").is_err());
        // The kernel takes reply errors up to 511; a single leading '*' matches no path.
        assert!(Rule::parse("open /f errno=600").is_err());
        assert!(Rule::parse("open /f errno=511").is_ok());
        assert!(Rule::parse("open *.conf ENOSPC").unwrap_err().contains("**/*.conf"));
        let rs = parse_rules("# comment\n\nwrite /a/** EIO  # trailing\nopen * EACCES nth=2\n").unwrap();
        assert_eq!(rs.len(), 2);
        assert!(parse_rules("write /a\n").unwrap_err().contains("line 1"));
    }

    /// Every matching rule counts each call: the first errno decides, later rules still count
    /// the call (their `nth=`) and add their delays.
    #[test]
    fn every_matching_rule_counts_a_call_the_first_errno_decides() {
        let f = Faults::new(
            parse_rules("open /etc/a.conf EIO nth=1\nopen /etc/* EACCES nth=2\nopen /etc/motd EIO\nopen /etc/motd delay=1s")
                .unwrap(),
        );
        let d = |p: &str| f.decide(Op::Open, Some(Path::new(p)), 0);
        assert_eq!(d("/etc/a.conf").unwrap().errno, Some(libc::EIO));
        assert_eq!(d("/etc/b.conf").unwrap().errno, Some(libc::EACCES), "the second /etc/* open");
        let m = d("/etc/motd").unwrap();
        assert_eq!((m.errno, m.delay), (Some(libc::EIO), Duration::from_secs(1)));
    }

    #[test]
    fn firing() {
        let f =
            Faults::new(parse_rules("create /d/** EIO nth=2\nwrite /d/** ENOSPC after_bytes=10").unwrap());
        let p = Path::new("/d/f");
        assert!(f.wants(Op::Create) && f.wants(Op::Write) && !f.wants(Op::Read));
        assert_eq!(f.decide(Op::Create, Some(Path::new("/e/f")), 0), None);
        assert_eq!(f.decide(Op::Create, Some(p), 0), None);
        assert_eq!(f.decide(Op::Create, Some(p), 0).unwrap().errno, Some(libc::EIO));
        assert_eq!(f.decide(Op::Create, Some(p), 0), None);
        assert_eq!(f.decide(Op::Write, Some(p), 6), None);
        assert_eq!(f.decide(Op::Write, Some(p), 4), None);
        assert_eq!(f.decide(Op::Write, Some(p), 1).unwrap().errno, Some(libc::ENOSPC));
        assert_eq!(f.decide(Op::Write, Some(p), 0).unwrap().errno, Some(libc::ENOSPC));
        assert!(f.list().contains("bytes=10"), "{}", f.list());
        // prob: the same seed gives the same sequence.
        let seq = || {
            let f = Faults::new(vec![Rule::parse("read * EIO prob=0.3,seed=7").unwrap()]);
            (0..200).map(|_| f.decide(Op::Read, None, 0).is_some()).collect::<Vec<_>>()
        };
        let a = seq();
        assert_eq!(a, seq());
        let n = a.iter().filter(|x| **x).count();
        assert!((30..90).contains(&n), "{n}");
        f.clear();
        assert!(!f.wants(Op::Create));
        assert!(f.control("add read /x EIO").0);
        assert!(f.wants(Op::Read));
        assert!(!f.control("add read /x").0);
        assert!(f.control("del 1").0);
        assert!(!f.wants(Op::Read));
    }

    #[test]
    fn units() {
        assert_eq!(parse_size("10M"), Some(10 << 20));
        assert_eq!(parse_size("10MiB"), Some(10 << 20));
        assert_eq!(parse_size("4k"), Some(4096));
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("1.5K"), Some(1536));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_duration("50ms"), Some(Duration::from_millis(50)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("7"), Some(Duration::from_millis(7)));
        assert_eq!(parse_duration("100us"), Some(Duration::from_micros(100)));
        assert_eq!(parse_duration("-1"), None);
        assert_eq!(errno_name(libc::ENOSPC), "ENOSPC");
        assert_eq!(errno_from_name("eacces"), Some(libc::EACCES));
    }
}
