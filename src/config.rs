//! The fuse-overlayfs compatible command line, parsed into a validated [`MountConfig`].
//!
//! Hard parts, and where they are handled:
//! 1. `-o` may repeat and may come before or after the positionals; with two positionals the
//!    first is a source (mount.fuse3 passes one) and the last is the mountpoint ([`parse_argv`]).
//! 2. Option strings split on commas, except a comma escaped with `\` or inside double quotes
//!    (`context="a:b,c"`); empty elements are ignored ([`split_options`]).
//! 3. `lowerdir=` splits on `:`, except `\:`; a backslash escapes the next character in every
//!    path option, as in fuse-overlayfs 1.15 and the kernel ([`split_layers`]).
//! 4. Unknown options are warnings, not errors: engines pass kernel-only options (`userxattr`,
//!    `index=off`, `metacopy=on`) and expect the mount to work.
//! 5. Paths are checked before anything is mounted: layers exist and are directories, upper and
//!    work come together and share a filesystem, neither is inside the other or inside a lower,
//!    and the mountpoint is not a layer, not inside one, and holds none ([`MountConfig::check`]).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::whiteout::WhiteoutStyle;

/// At most this many lower layers (the kernel's limit is 500).
pub const MAX_LAYERS: usize = 1024;

/// What the command line asked for.
#[derive(Debug, Default, PartialEq)]
pub struct Argv {
    pub foreground: bool,
    pub debug: bool,
    pub help: bool,
    pub version: bool,
    /// Raw option strings, one per `-o`.
    pub opts: Vec<String>,
    pub source: Option<OsString>,
    pub mountpoint: Option<OsString>,
}

/// Parses the mount form: `layerfs [-f] [-d] [-o OPTS]... [SOURCE] MOUNTPOINT`.
pub fn parse_argv(args: &[OsString]) -> Result<Argv, String> {
    let mut a = Argv::default();
    let mut positionals: Vec<OsString> = Vec::new();
    let mut i = 0;
    let mut only_positionals = false;
    while i < args.len() {
        let arg = &args[i];
        let b = arg.as_bytes();
        i += 1;
        if only_positionals || !b.starts_with(b"-") || b == b"-" {
            positionals.push(arg.clone());
            continue;
        }
        match b {
            b"--" => only_positionals = true,
            b"-f" | b"--foreground" => a.foreground = true,
            b"-d" | b"--debug" => a.debug = true,
            b"-h" | b"--help" => a.help = true,
            b"-V" | b"--version" => a.version = true,
            b"-s" => {} // single-threaded: accepted for libfuse compatibility, ignored
            b"-o" => {
                let Some(v) = args.get(i) else {
                    return Err("option -o needs a value".into());
                };
                i += 1;
                a.opts.push(os_to_string(v)?);
            }
            _ if b.starts_with(b"-o") => a.opts.push(os_to_string(OsStr::from_bytes(&b[2..]))?),
            _ => return Err(format!("unknown command-line flag: {}", arg.to_string_lossy())),
        }
    }
    match positionals.len() {
        0 => {}
        1 => a.mountpoint = positionals.pop(),
        2 => {
            a.mountpoint = positionals.pop();
            a.source = positionals.pop();
        }
        _ => {
            return Err(format!(
                "too many arguments: expected [SOURCE] MOUNTPOINT, got {}",
                positionals.len()
            ));
        }
    }
    Ok(a)
}

fn os_to_string(s: &OsStr) -> Result<String, String> {
    s.to_str().map(str::to_owned).ok_or_else(|| "mount options must be valid UTF-8".to_string())
}

/// Splits an option string on commas, honouring `\,` and a value in double quotes
/// (`context="a:b,c"`: a quote right after `=` opens, the next one closes); drops empty
/// elements. Backslashes other than `\,` are kept for the per-option value parsing. A quote
/// elsewhere is an ordinary character (it used to swallow the options after it).
pub fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(',') => {
                    cur.push(',');
                    chars.next();
                }
                Some(&n) => {
                    cur.push('\\');
                    cur.push(n);
                    chars.next();
                }
                None => cur.push('\\'),
            },
            '"' if in_quotes || cur.ends_with('=') => {
                in_quotes = !in_quotes;
                cur.push('"');
            }
            ',' if !in_quotes => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The elements of a `lowerdir=` value split on unescaped `:` (a backslash escapes the next
/// character), empty ones included.
fn layer_elements(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            ':' => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Splits a `lowerdir=` value into its layers; empty elements are dropped.
pub fn split_layers(s: &str) -> Vec<String> {
    layer_elements(s).into_iter().filter(|e| !e.is_empty()).collect()
}

/// Whether a lowerdir value has an empty layer between two others (`A::B`): the kernel's
/// data-only layers, whose files are never shown. A leading or trailing ':' is only dropped.
pub fn has_data_only_layers(s: &str) -> bool {
    let e = layer_elements(s);
    match (e.iter().position(|x| !x.is_empty()), e.iter().rposition(|x| !x.is_empty())) {
        (Some(first), Some(last)) => e[first..last].iter().any(String::is_empty),
        _ => false,
    }
}

/// Removes backslash escapes from a single path value.
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"').and_then(|x| x.strip_suffix('"')).unwrap_or(s)
}

/// How whiteouts are written (`whiteout=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhiteoutChoice {
    Auto,
    Fixed(WhiteoutStyle),
}

/// One `from:to:len` id-mapping range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMapRange {
    pub from: u32,
    pub to: u32,
    pub len: u32,
}

/// Parses `uidmapping=`/`gidmapping=` values: `from:to:len` triples joined by `:` (a leading
/// colon, as containers-storage sends, is accepted).
pub fn parse_idmap(s: &str) -> Result<Vec<IdMapRange>, String> {
    let nums: Result<Vec<u32>, _> =
        s.split(':').filter(|x| !x.is_empty()).map(|x| x.parse::<u32>()).collect();
    let nums = nums.map_err(|_| format!("invalid id mapping: {s}"))?;
    if nums.is_empty() || nums.len() % 3 != 0 {
        return Err(format!("invalid id mapping (want from:to:len triples): {s}"));
    }
    Ok(nums.chunks(3).map(|c| IdMapRange { from: c[0], to: c[1], len: c[2] }).collect())
}

/// Mount options, parsed but not yet checked against the filesystem.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    pub ro: bool,
    pub allow_other: bool,
    pub allow_root: bool,
    pub default_permissions: bool,
    pub auto_unmount: bool,
    pub suid: Option<bool>,
    pub dev: Option<bool>,
    pub exec: Option<bool>,
    pub atime: Option<bool>,
    pub fsname: Option<String>,
    pub subtype: Option<String>,
    /// Entry and attribute cache timeout, seconds.
    pub timeout: f64,
    pub whiteout: WhiteoutChoice,
    pub fsync: bool,
    pub writeback: bool,
    pub threads: Option<usize>,
    pub static_nlink: bool,
    pub noacl: bool,
    pub noxattrs: bool,
    /// `read_ahead=0`: no reading ahead of walked directories, of listed files' data, of a
    /// directory's lower entries at its first lookup, or of sequential reads.
    pub read_ahead: bool,
    pub xattr_permissions: u8,
    pub squash_to_root: bool,
    pub squash_to_uid: Option<u32>,
    pub squash_to_gid: Option<u32>,
    pub uidmapping: Vec<IdMapRange>,
    pub gidmapping: Vec<IdMapRange>,
    pub passthrough: bool,
    /// `passthrough=all`: lower files opened read-only are passed through too; a descriptor
    /// opened so keeps reading the lower file after a copy-up.
    pub passthrough_lower: bool,
    /// `uring=0`: answer only through `/dev/fuse`, even where the kernel offers io_uring queues.
    pub uring: bool,
    pub context: Option<String>,
    pub debug: bool,
    /// `trace=FILE`: one JSON line per operation.
    pub trace: Option<PathBuf>,
    /// `trace_queue=N`: lines the trace queue holds before lines are dropped (counted).
    pub trace_queue: usize,
    /// `faults=FILE` (or bare `faults`: empty path, no initial rules): fault injection rules,
    /// changeable while mounted with `layerfs fault`.
    pub faults: Option<PathBuf>,
    /// One line per option that was not understood.
    pub warnings: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            lowers: Vec::new(),
            upper: None,
            work: None,
            ro: false,
            allow_other: false,
            allow_root: false,
            default_permissions: true,
            auto_unmount: false,
            suid: None,
            dev: None,
            exec: None,
            atime: None,
            fsname: None,
            subtype: None,
            timeout: 1_000_000.0,
            whiteout: WhiteoutChoice::Auto,
            fsync: true,
            writeback: false,
            threads: None,
            static_nlink: false,
            noacl: false,
            noxattrs: false,
            read_ahead: true,
            xattr_permissions: 0,
            squash_to_root: false,
            squash_to_uid: None,
            squash_to_gid: None,
            uidmapping: Vec::new(),
            gidmapping: Vec::new(),
            passthrough: true,
            passthrough_lower: false,
            uring: true,
            context: None,
            debug: false,
            trace: None,
            trace_queue: crate::trace::DEFAULT_QUEUE,
            faults: None,
            warnings: Vec::new(),
        }
    }
}

fn parse_bool(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "1" | "true" | "on" | "yes" => Ok(true),
        "0" | "false" | "off" | "no" => Ok(false),
        _ => Err(format!("invalid value for {key}: {v} (want 0 or 1)")),
    }
}

fn parse_num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, String> {
    v.parse::<T>().map_err(|_| format!("invalid value for {key}: {v}"))
}

/// Options that take no value.
const FLAGS: &[&str] = &[
    "ro",
    "rw",
    "allow_other",
    "allow_root",
    "default_permissions",
    "auto_unmount",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "exec",
    "noexec",
    "atime",
    "strictatime",
    "relatime",
    "noatime",
    "diratime",
    "nodiratime",
    "lazytime",
    "sync",
    "async",
    "dirsync",
    "debug",
    "volatile",
    "static_nlink",
    "noacl",
    "squash_to_root",
];

/// Parses all `-o` strings, in order (a later value wins).
pub fn parse_options(raw: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    for r in raw {
        for opt in split_options(r) {
            let (key, val) = match opt.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (opt.clone(), None),
            };
            let need = |v: &Option<String>| -> Result<String, String> {
                v.clone().ok_or_else(|| format!("option {key} needs a value"))
            };
            if val.is_some() && FLAGS.contains(&key.as_str()) {
                // A flag takes no value: as fuse-overlayfs, `squash_to_root=0` or `ro=0` is
                // not the flag (it was switched on whatever the value said).
                o.warnings.push(format!("unknown argument ignored: {opt} ({key} takes no value)"));
                continue;
            }
            match key.as_str() {
                "lowerdir" => {
                    let v = need(&val)?;
                    if has_data_only_layers(&v) {
                        return Err(format!(
                            "lowerdir={v}: \"::\" marks data-only lower layers (kernel overlayfs with \
                             metacopy), which layerfs does not support"
                        ));
                    }
                    o.lowers = split_layers(&v).into_iter().map(PathBuf::from).collect();
                }
                "upperdir" => o.upper = Some(PathBuf::from(unescape(&need(&val)?))),
                "workdir" => o.work = Some(PathBuf::from(unescape(&need(&val)?))),
                "ro" => o.ro = true,
                "rw" => o.ro = false,
                "allow_other" => o.allow_other = true,
                "allow_root" => o.allow_root = true,
                "default_permissions" => o.default_permissions = true,
                "auto_unmount" => o.auto_unmount = true,
                "suid" => o.suid = Some(true),
                "nosuid" => o.suid = Some(false),
                "dev" => o.dev = Some(true),
                "nodev" => o.dev = Some(false),
                "exec" => o.exec = Some(true),
                "noexec" => o.exec = Some(false),
                "atime" | "strictatime" | "relatime" => o.atime = Some(true),
                "noatime" => o.atime = Some(false),
                "diratime" | "nodiratime" | "lazytime" | "sync" | "async" | "dirsync" => {}
                "fsname" => o.fsname = Some(need(&val)?),
                "subtype" => o.subtype = Some(need(&val)?),
                "debug" => o.debug = true,
                "trace" => o.trace = Some(PathBuf::from(unescape(&need(&val)?))),
                "trace_queue" => o.trace_queue = parse_num::<usize>(&key, &need(&val)?)?.max(1),
                "faults" => o.faults = Some(PathBuf::from(unescape(val.as_deref().unwrap_or("")))),
                "timeout" | "entry_timeout" | "attr_timeout" => {
                    let t: f64 = parse_num(&key, &need(&val)?)?;
                    if !(t >= 0.0 && t.is_finite()) {
                        return Err(format!("invalid value for {key}: {t}"));
                    }
                    o.timeout = t;
                }
                "whiteout" => {
                    o.whiteout = match need(&val)?.as_str() {
                        "auto" => WhiteoutChoice::Auto,
                        "chardev" => WhiteoutChoice::Fixed(WhiteoutStyle::CharDev),
                        "wh" => WhiteoutChoice::Fixed(WhiteoutStyle::WhFile),
                        v => {
                            return Err(format!(
                                "invalid value for whiteout: {v} (want chardev, wh or auto)"
                            ));
                        }
                    }
                }
                "fsync" | "sync_fs" => o.fsync = parse_bool(&key, &need(&val)?)?,
                "volatile" => o.fsync = false,
                "writeback" => o.writeback = parse_bool(&key, &need(&val)?)?,
                "passthrough" => {
                    let v = need(&val)?;
                    o.passthrough_lower = v == "all";
                    o.passthrough = o.passthrough_lower
                        || parse_bool(&key, &v)
                            .map_err(|_| format!("invalid value for {key}: {v} (want 0, 1 or all)"))?;
                }
                "uring" => o.uring = parse_bool(&key, &need(&val)?)?,
                "threaded" => {
                    let v = need(&val)?;
                    // fuse-overlayfs uses threaded=0|1; a larger number is a worker count here.
                    let n: usize = parse_num(&key, &v)?;
                    o.threads = if n > 1 { Some(n) } else { None };
                }
                "threads" => o.threads = Some(parse_num::<usize>(&key, &need(&val)?)?.max(1)),
                "static_nlink" => o.static_nlink = true,
                "noacl" => o.noacl = true,
                "noxattrs" => o.noxattrs = parse_bool(&key, &need(&val)?)?,
                "read_ahead" => o.read_ahead = parse_bool(&key, &need(&val)?)?,
                "xattr_permissions" => {
                    let v: u8 = parse_num(&key, &need(&val)?)?;
                    if v > 2 {
                        return Err(format!("invalid value for xattr_permissions: {v} (want 0, 1 or 2)"));
                    }
                    o.xattr_permissions = v;
                }
                "squash_to_root" => o.squash_to_root = true,
                "squash_to_uid" => o.squash_to_uid = Some(parse_num(&key, &need(&val)?)?),
                "squash_to_gid" => o.squash_to_gid = Some(parse_num(&key, &need(&val)?)?),
                "uidmapping" => o.uidmapping = parse_idmap(&need(&val)?)?,
                "gidmapping" => o.gidmapping = parse_idmap(&need(&val)?)?,
                "context" | "fscontext" | "defcontext" | "rootcontext" => {
                    o.context = Some(unquote(&need(&val)?).to_string())
                }
                "redirect_dir" => {
                    if val.as_deref() != Some("off") {
                        return Err("only redirect_dir=off is supported".into());
                    }
                }
                // fuse-overlayfs options with no effect here (kept working for drop-in use).
                "fast_ino" | "fast_ino_check" | "plugins" | "xino" | "ino32_t" | "kernel_cache"
                | "splice_write" | "splice_read" | "splice_move" | "max_write" | "big_writes"
                | "max_read" | "nonempty" => {}
                _ => o.warnings.push(format!("unknown argument ignored: {opt}")),
            }
        }
    }
    Ok(o)
}

/// A mount request, checked against the filesystem and ready to serve.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// Canonical lower layer paths, top first.
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    pub opts: Options,
}

fn canonical_dir(what: &str, p: &Path) -> Result<PathBuf, String> {
    let c = std::fs::canonicalize(p).map_err(|e| format!("{what} {}: {e}", p.display()))?;
    let md = std::fs::metadata(&c).map_err(|e| format!("{what} {}: {e}", p.display()))?;
    if !md.is_dir() {
        return Err(format!("{what} {}: not a directory", p.display()));
    }
    Ok(c)
}

/// [`canonical_dir`] for a layer, which the server must be able to list (a plain user's
/// server over a layer it may not read mounted, and then failed every listing with EACCES;
/// fuse-overlayfs refuses it so too).
fn layer_dir(what: &str, p: &Path) -> Result<PathBuf, String> {
    let c = canonical_dir(what, p)?;
    std::fs::read_dir(&c).map_err(|e| format!("{what} {}: cannot read it: {e}", p.display()))?;
    Ok(c)
}

/// True when `inner` is `outer` or lies below it (both canonical).
pub fn is_within(inner: &Path, outer: &Path) -> bool {
    inner.starts_with(outer)
}

impl MountConfig {
    /// Builds and checks a mount request from the parsed command line.
    pub fn from_argv(argv: &Argv) -> Result<MountConfig, String> {
        let mut opts = parse_options(&argv.opts)?;
        if argv.debug {
            opts.debug = true;
        }
        let Some(mp) = &argv.mountpoint else {
            return Err(
                "no mountpoint given (usage: layerfs -o lowerdir=A:B,upperdir=U,workdir=W MOUNTPOINT)".into(),
            );
        };
        if opts.lowers.is_empty() {
            return Err("no lowerdir specified".into());
        }
        if opts.lowers.len() > MAX_LAYERS {
            return Err(format!("too many lower layers: {} (at most {MAX_LAYERS})", opts.lowers.len()));
        }
        match (&opts.upper, &opts.work) {
            (Some(_), None) => return Err("upperdir given without workdir".into()),
            (None, Some(_)) => return Err("workdir given without upperdir".into()),
            _ => {}
        }
        let mut lowers = Vec::with_capacity(opts.lowers.len());
        for l in &opts.lowers {
            lowers.push(layer_dir("lowerdir", l)?);
        }
        let upper = opts.upper.as_deref().map(|p| layer_dir("upperdir", p)).transpose()?;
        let work = opts.work.as_deref().map(|p| canonical_dir("workdir", p)).transpose()?;
        let mountpoint = canonical_dir("mountpoint", Path::new(mp))?;
        let cfg =
            MountConfig { lowers, upper, work, mountpoint, foreground: argv.foreground || opts.debug, opts };
        cfg.check()?;
        Ok(cfg)
    }

    /// The path checks that need no mount (all paths already canonical).
    pub fn check(&self) -> Result<(), String> {
        if let (Some(u), Some(w)) = (&self.upper, &self.work) {
            if u == w {
                return Err("upperdir and workdir must be different directories".into());
            }
            if is_within(w, u) {
                return Err(format!("workdir {} is inside upperdir {}", w.display(), u.display()));
            }
            if is_within(u, w) {
                return Err(format!("upperdir {} is inside workdir {}", u.display(), w.display()));
            }
            let du = std::fs::metadata(u).map_err(|e| format!("upperdir: {e}"))?.dev();
            let dw = std::fs::metadata(w).map_err(|e| format!("workdir: {e}"))?.dev();
            if du != dw {
                return Err(format!(
                    "workdir {} and upperdir {} must be on the same filesystem",
                    w.display(),
                    u.display()
                ));
            }
            // Renames between them (copy-up, whiteouts) also need one mount: not a bind mount
            // of the same filesystem (the kernel refuses that too).
            if let (Some(mu), Some(mw)) = (mount_id(u), mount_id(w)) {
                if mu != mw {
                    return Err(format!(
                        "workdir {} and upperdir {} must be under the same mount",
                        w.display(),
                        u.display()
                    ));
                }
            }
            // By path, and by inode: a bind mount of the upper directory given as a lower one
            // (or the reverse) passed the path check, and writes showed in that lower layer.
            let chains = [("upperdir", u, inode_chain(u)), ("workdir", w, inode_chain(w))];
            for l in &self.lowers {
                let lchain = inode_chain(l);
                for (what, p, pchain) in &chains {
                    let by_inode = |a: &[DevIno], b: &[DevIno]| a.first().is_some_and(|x| b.contains(x));
                    if is_within(p, l)
                        || is_within(l, p)
                        || by_inode(pchain, &lchain)
                        || by_inode(&lchain, pchain)
                    {
                        return Err(format!("{what} {} overlaps lowerdir {}", p.display(), l.display()));
                    }
                }
            }
        }
        let mp = &self.mountpoint;
        let layers = self.lowers.iter().map(|l| ("lowerdir", l)).chain(
            self.upper.iter().map(|u| ("upperdir", u)).chain(self.work.iter().map(|w| ("workdir", w))),
        );
        for (what, l) in layers {
            if is_within(mp, l) {
                return Err(format!("mountpoint {} is {} {} or inside it", mp.display(), what, l.display()));
            }
            if is_within(l, mp) {
                return Err(format!("{what} {} is inside the mountpoint {}", l.display(), mp.display()));
            }
        }
        Ok(())
    }

    pub fn read_only(&self) -> bool {
        self.upper.is_none() || self.opts.ro
    }
}

/// A directory's (device, inode).
type DevIno = (u64, u64);

/// (device, inode) of directory `p` and of each directory above it, reached by `..` from the
/// directory itself: through the mounts it is reached by, so a bind mount of a directory has
/// that directory's pair first. Empty where `p` cannot be opened.
fn inode_chain(p: &Path) -> Vec<DevIno> {
    use std::os::fd::AsFd;
    let dir = libc::O_PATH | libc::O_DIRECTORY;
    let mut out = Vec::new();
    let mut fd = crate::sys::cstr(p.as_os_str()).and_then(|c| crate::sys::open_trusted(&c, dir, 0)).ok();
    while let Some(f) = fd {
        let Ok(st) = crate::sys::fstat(f.as_fd()) else { break };
        let id = (st.st_dev, st.st_ino);
        if out.last() == Some(&id) || out.len() > 4096 {
            break; // the root: its `..` is itself
        }
        out.push(id);
        fd = crate::sys::openat(f.as_fd(), c"..", dir, 0).ok();
    }
    out
}

/// The id of the mount `p` is on (statx STATX_MNT_ID, Linux 5.8+); None where unknown.
fn mount_id(p: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
    // SAFETY: statx is plain data, zeroed is a valid value.
    let mut sx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a writable statx buffer.
    let r = unsafe { libc::statx(libc::AT_FDCWD, c.as_ptr(), 0, libc::STATX_MNT_ID, &mut sx) };
    (r == 0 && sx.stx_mask & libc::STATX_MNT_ID != 0).then_some(sx.stx_mnt_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn argv_positionals_and_repeated_o() {
        let a = parse_argv(&os(&["-o", "lowerdir=/a", "/mnt", "-o", "ro", "-f"])).unwrap();
        assert_eq!(a.mountpoint, Some("/mnt".into()));
        assert_eq!(a.opts, vec!["lowerdir=/a".to_string(), "ro".to_string()]);
        assert!(a.foreground);
        let a = parse_argv(&os(&["overlay", "/mnt", "-olowerdir=/a"])).unwrap();
        assert_eq!(a.source, Some("overlay".into()));
        assert_eq!(a.mountpoint, Some("/mnt".into()));
        assert!(parse_argv(&os(&["a", "b", "c"])).is_err());
        assert!(parse_argv(&os(&["-o"])).is_err());
        assert!(parse_argv(&os(&["--bogus", "/m"])).is_err());
        let a = parse_argv(&os(&["--help"])).unwrap();
        assert!(a.help);
        let a = parse_argv(&os(&["-d", "/m"])).unwrap();
        assert!(a.debug);
    }

    #[test]
    fn option_splitting_quirks() {
        assert_eq!(split_options("a,,b,"), vec!["a", "b"]);
        assert_eq!(split_options("x=1\\,2,y"), vec!["x=1,2", "y"]);
        assert_eq!(
            split_options("context=\"system_u:object_r:x:s0:c1,c2\",ro"),
            vec!["context=\"system_u:object_r:x:s0:c1,c2\"", "ro"]
        );
        assert_eq!(split_options("lowerdir=a\\:b:c"), vec!["lowerdir=a\\:b:c"]);
        assert_eq!(split_options(""), Vec::<String>::new());
        // A quote inside a value is a character: the options after it stay options.
        assert_eq!(split_options("fsname=my\"fs,ro"), vec!["fsname=my\"fs", "ro"]);
        assert_eq!(split_options("lowerdir=x\"q:l2,upperdir=u"), vec!["lowerdir=x\"q:l2", "upperdir=u"]);
    }

    #[test]
    fn flags_given_a_value_are_ignored_with_a_warning() {
        let o = parse_options(&["squash_to_root=0,ro=0,noacl=0,static_nlink=0,debug=0,volatile=1".into()])
            .unwrap();
        assert!(!o.squash_to_root && !o.ro && !o.noacl && !o.static_nlink && !o.debug && o.fsync);
        assert_eq!(o.warnings.len(), 6);
        assert!(o.warnings[0].contains("squash_to_root=0"), "{:?}", o.warnings);
    }

    #[test]
    fn layer_splitting() {
        assert_eq!(split_layers("a:b:c"), vec!["a", "b", "c"]);
        assert_eq!(split_layers("a\\:b:c"), vec!["a:b", "c"]);
        assert_eq!(split_layers("a::b:"), vec!["a", "b"]);
        assert_eq!(split_layers("a\\\\:b"), vec!["a\\", "b"]);
        assert!(has_data_only_layers("a::b"));
        assert!(has_data_only_layers("a:b::c:d"));
        assert!(!has_data_only_layers("a:b:c"));
        assert!(!has_data_only_layers("a:b:"));
        assert!(!has_data_only_layers(":a:b"));
        assert!(!has_data_only_layers("a\\::b"));
        assert!(has_data_only_layers("a\\\\::b"));
        assert_eq!(unescape("/x\\:y"), "/x:y");
    }

    #[test]
    fn parses_engine_options() {
        let o = parse_options(&[
            "lowerdir=/l1:/l2,upperdir=/u,workdir=/w,context=\"a:b,c\",uidmapping=:0:1000:1:1:100000:65536,gidmapping=0:1000:1,squash_to_uid=5,xattr_permissions=2,volatile,timeout=0.5,userxattr,noacl,static_nlink,threaded=1,writeback=0,fsync=1,read_ahead=0,uring=0".to_string(),
        ])
        .unwrap();
        assert_eq!(o.lowers, vec![PathBuf::from("/l1"), PathBuf::from("/l2")]);
        assert_eq!(o.upper, Some(PathBuf::from("/u")));
        assert_eq!(o.context.as_deref(), Some("a:b,c"));
        assert_eq!(o.uidmapping.len(), 2);
        assert_eq!(o.uidmapping[1], IdMapRange { from: 1, to: 100000, len: 65536 });
        assert_eq!(o.squash_to_uid, Some(5));
        assert_eq!(o.xattr_permissions, 2);
        assert!(o.fsync); // fsync=1 came after volatile
        assert_eq!(o.timeout, 0.5);
        assert!(o.noacl && o.static_nlink);
        assert!(!o.read_ahead && !o.uring);
        assert_eq!(o.warnings, vec!["unknown argument ignored: userxattr".to_string()]);
    }

    #[test]
    fn bad_option_values_are_errors() {
        assert!(parse_options(&["whiteout=maybe".into()]).is_err());
        assert!(parse_options(&["timeout=-1".into()]).is_err());
        assert!(parse_options(&["timeout=abc".into()]).is_err());
        assert!(parse_options(&["redirect_dir=on".into()]).is_err());
        assert!(parse_options(&["redirect_dir=off".into()]).is_ok());
        assert!(parse_options(&["uidmapping=1:2".into()]).is_err());
        assert!(parse_options(&["lowerdir".into()]).is_err());
        assert!(parse_options(&["xattr_permissions=3".into()]).is_err());
        let o = parse_options(&["whiteout=wh".into()]).unwrap();
        assert_eq!(o.whiteout, WhiteoutChoice::Fixed(WhiteoutStyle::WhFile));
        let e = parse_options(&["passthrough=some".into()]).unwrap_err();
        assert!(e.contains("want 0, 1 or all"), "{e}");
    }

    #[test]
    fn passthrough_all_also_passes_lower_files_and_a_later_value_wins() {
        let o = parse_options(&["passthrough=all".into()]).unwrap();
        assert!(o.passthrough && o.passthrough_lower);
        let o = parse_options(&["passthrough=all,passthrough=1".into()]).unwrap();
        assert!(o.passthrough && !o.passthrough_lower);
        let o = parse_options(&["passthrough=all,passthrough=0".into()]).unwrap();
        assert!(!o.passthrough && !o.passthrough_lower);
        let o = parse_options(&[]).unwrap();
        assert!(o.passthrough && !o.passthrough_lower);
    }

    #[test]
    fn behaviour_testing_options() {
        let o = parse_options(&["trace=/tmp/t\\,x.jsonl,trace_queue=16,faults=/etc/f".into()]).unwrap();
        assert_eq!(o.trace, Some(PathBuf::from("/tmp/t,x.jsonl")));
        assert_eq!(o.trace_queue, 16);
        assert_eq!(o.faults, Some(PathBuf::from("/etc/f")));
        let o = parse_options(&["faults,trace_queue=0".into()]).unwrap();
        assert_eq!(o.faults, Some(PathBuf::new()));
        assert_eq!(o.trace_queue, 1);
        assert_eq!(o.trace, None);
        let o = parse_options(&["ro".into()]).unwrap();
        assert_eq!((o.trace, o.faults, o.trace_queue), (None, None, crate::trace::DEFAULT_QUEUE));
        assert!(parse_options(&["trace".into()]).is_err());
        assert!(parse_options(&["trace_queue=x".into()]).is_err());
    }

    #[test]
    fn path_checks() {
        let t = tempfile::tempdir().unwrap();
        let p = |s: &str| {
            let x = t.path().join(s);
            std::fs::create_dir_all(&x).unwrap();
            x.to_str().unwrap().to_string()
        };
        let (l, u, w, m) = (p("l"), p("u"), p("w"), p("m"));
        let mk = |o: &str, mp: &str| {
            MountConfig::from_argv(&Argv {
                opts: vec![o.to_string()],
                mountpoint: Some(mp.into()),
                ..Default::default()
            })
        };
        assert!(mk(&format!("lowerdir={l},upperdir={u},workdir={w}"), &m).is_ok());
        assert!(mk(&format!("lowerdir={l}"), &m).is_ok());
        let e = mk(&format!("lowerdir={l},upperdir={u}"), &m).unwrap_err();
        assert!(e.contains("without workdir"), "{e}");
        let e = mk(&format!("lowerdir={l}/missing"), &m).unwrap_err();
        assert!(e.contains("missing"), "{e}");
        let e = mk(&format!("lowerdir={l}"), &l).unwrap_err();
        assert!(e.contains("mountpoint"), "{e}");
        let inner = p("l/inner");
        let e = mk(&format!("lowerdir={l}"), &inner).unwrap_err();
        assert!(e.contains("inside"), "{e}");
        let e = mk(&format!("lowerdir={inner}"), &l).unwrap_err();
        assert!(e.contains("inside the mountpoint"), "{e}");
        let wi = p("u/w");
        let e = mk(&format!("lowerdir={l},upperdir={u},workdir={wi}"), &m).unwrap_err();
        assert!(e.contains("inside upperdir"), "{e}");
        std::fs::write(t.path().join("file"), b"").unwrap();
        let e = mk(&format!("lowerdir={}/file", t.path().display()), &m).unwrap_err();
        assert!(e.contains("not a directory"), "{e}");
        let e = mk("", &m).unwrap_err();
        assert!(e.contains("no lowerdir"), "{e}");
        let many = vec![l.clone(); MAX_LAYERS + 1].join(":");
        assert!(mk(&format!("lowerdir={many}"), &m).unwrap_err().contains("too many"));
        let five_hundred = vec![l.clone(); 500].join(":");
        assert!(mk(&format!("lowerdir={five_hundred}"), &m).is_ok());
    }
}
