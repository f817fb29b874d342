//! Mounting and serving: turns a checked [`MountConfig`] into a live FUSE mount.
//!
//! Without `-f` the process forks before mounting; the parent exits 0 only once the child
//! reports the mount live and serving (container engines wait for that exit, then use the
//! mount), and exits non-zero with the child's one-line error otherwise. The server exits by
//! itself when the mount goes away (`fusermount3 -u`, `umount`); SIGTERM, SIGINT and SIGHUP
//! unmount first. With `auto_unmount`, a watcher process unmounts a mount whose server ended
//! without unmounting it ([`start_watcher`]).

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL};

use crate::config::{MountConfig, WhiteoutChoice};
use crate::faults::{self, Faults};
use crate::fs::{FsOptions, IdMap, OverlayFs};
use crate::fuse::{Fuse, FuseFs};
use crate::sys;
use crate::trace::{Hooks, Tracer};
use crate::uring::Access;

/// What the behaviour-testing options ask for, read and checked before forking.
struct HookPlan {
    trace: Option<std::path::PathBuf>,
    faults: Option<Vec<faults::Rule>>,
}

impl HookPlan {
    fn from(cfg: &MountConfig) -> Result<Option<HookPlan>, String> {
        let o = &cfg.opts;
        let trace = o
            .trace
            .as_deref()
            .map(|p| std::path::absolute(p).map_err(|e| format!("trace={}: {e}", p.display())))
            .transpose()?;
        let faults = match o.faults.as_deref() {
            None => None,
            Some(p) if p.as_os_str().is_empty() => Some(Vec::new()),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| format!("faults={}: {e}", p.display()))?;
                Some(faults::parse_rules(&text).map_err(|e| format!("faults={}: {e}", p.display()))?)
            }
        };
        Ok((trace.is_some() || faults.is_some()).then_some(HookPlan { trace, faults }))
    }

    /// Opens the trace and serves the fault control socket (after forking: threads).
    fn start(self, fs: Arc<OverlayFs>, cfg: &MountConfig) -> Result<Arc<Hooks>, String> {
        let trace = match &self.trace {
            Some(p) => Some(
                Tracer::open(p, cfg.opts.trace_queue).map_err(|e| format!("trace={}: {e}", p.display()))?,
            ),
            None => None,
        };
        let h = Hooks::new(fs, trace, self.faults.map(|r| Arc::new(Faults::new(r))));
        h.serve_control(&cfg.mountpoint)?;
        Ok(Arc::new(h))
    }
}

/// Builds the filesystem options from the mount request.
pub fn fs_options(cfg: &MountConfig) -> FsOptions {
    let o = &cfg.opts;
    let mut f = FsOptions::new(cfg.lowers.clone());
    f.upper = cfg.upper.clone();
    f.work = cfg.work.clone();
    f.read_only = cfg.read_only();
    f.timeout = Duration::from_secs_f64(o.timeout.min(1e9));
    f.whiteout = match o.whiteout {
        WhiteoutChoice::Auto => None,
        WhiteoutChoice::Fixed(s) => Some(s),
    };
    f.fsync = o.fsync;
    f.static_nlink = o.static_nlink;
    f.read_ahead = o.read_ahead;
    f.noxattrs = o.noxattrs;
    f.squash_uid = o.squash_to_uid.or(o.squash_to_root.then_some(0));
    f.squash_gid = o.squash_to_gid.or(o.squash_to_root.then_some(0));
    f.uid_map = IdMap(o.uidmapping.iter().map(|r| (r.from, r.to, r.len)).collect());
    f.gid_map = IdMap(o.gidmapping.iter().map(|r| (r.from, r.to, r.len)).collect());
    f.xattr_permissions = o.xattr_permissions;
    f.acl = !o.noacl;
    f.noatime = o.atime == Some(false);
    f
}

/// The fuser session configuration for the mount request.
pub fn fuser_config(cfg: &MountConfig, source: Option<&str>) -> Config {
    let o = &cfg.opts;
    let root = sys::geteuid() == 0;
    let mut mo = vec![
        MountOption::FSName(
            o.fsname.clone().or(source.map(str::to_owned)).unwrap_or_else(|| "layerfs".into()),
        ),
        // As a kernel option, not fuser's `Subtype`: fuser's own mount(2) (root, or root in a
        // user namespace) drops `Subtype`, and the mount then shows as plain `fuse`. The
        // kernel takes `subtype=` in the mount data (type `fuse.layerfs`, as
        // `fuse.fuse-overlayfs`), and fusermount3 takes it from `-o` as before.
        MountOption::CUSTOM(format!("subtype={}", o.subtype.as_deref().unwrap_or("layerfs"))),
        MountOption::DefaultPermissions,
    ];
    if cfg.read_only() {
        // No upper (or ro): the VFS answers EROFS for every change, as for kernel overlayfs.
        mo.push(MountOption::RO);
    }
    match o.suid {
        Some(false) => mo.push(MountOption::NoSuid),
        Some(true) => mo.push(MountOption::Suid),
        None if root => mo.push(MountOption::Suid),
        None => {}
    }
    match o.dev {
        Some(false) => mo.push(MountOption::NoDev),
        Some(true) => mo.push(MountOption::Dev),
        None if root => mo.push(MountOption::Dev),
        None => {}
    }
    match o.exec {
        Some(false) => mo.push(MountOption::NoExec),
        Some(true) => mo.push(MountOption::Exec),
        None => {}
    }
    match o.atime {
        Some(true) => mo.push(MountOption::Atime),
        _ => mo.push(MountOption::NoAtime),
    }
    let acl = if o.allow_other || root {
        SessionACL::All
    } else if o.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    // `auto_unmount` is layerfs's own watcher (see [`start_watcher`]), not fusermount3's.
    let mut c = Config::default();
    c.mount_options = mo;
    c.acl = acl;
    // Threads are layerfs's own (`devloop`): fuser only mounts and answers INIT.
    c
}

/// Mounts and serves until unmounted. Returns the process exit code.
pub fn run(cfg: MountConfig, source: Option<&str>) -> Result<(), String> {
    crate::logging::init(cfg.opts.debug);
    for w in &cfg.opts.warnings {
        eprintln!("layerfs: {w}");
    }
    // Before any thread starts (they inherit it): server threads may run in SCHED_IDLE (see
    // uring's Placement), which would otherwise put their disk reads in the idle I/O class.
    if let Err(e) = sys::pin_io_priority() {
        log::warn!("I/O priority not set: {e}");
    }
    // Also inherited: a short scheduler slice, so that a server thread waking up in the middle
    // of a request gets its CPU back at once from a busy task (see sys::SERVER_SLICE_NS).
    if sys::take_server_slice() {
        log::info!("server threads: scheduler slice {} µs", sys::SERVER_SLICE_NS / 1000);
    }
    let nofile = sys::raise_nofile_limit();
    // Half the descriptors for directories, the rest for open files and the server's own (see
    // `fs::dirfd`).
    crate::fs::set_dir_budget(usize::try_from(nofile / 2).unwrap_or(usize::MAX));
    // Modes of new objects are exactly what the request asks for: the caller's umask is
    // applied by layerfs itself (FUSE_DONT_MASK), and not at all under a default ACL.
    sys::umask(0);
    sys::fix_mmap_threshold();
    let fs = OverlayFs::new(fs_options(&cfg))?;
    log::info!("whiteout style: {:?}", fs.whiteout_style());
    let fs = Arc::new(fs);
    let plan = HookPlan::from(&cfg)?;
    // Traced or faulted reads and writes must reach the server: no passthrough then.
    let passthrough = plan.is_none()
        && cfg.opts.passthrough
        && std::env::var_os("LAYERFS_NO_PASSTHROUGH").is_none()
        && std::env::var_os("FUSE_OVERLAYFS_NO_PASSTHROUGH").is_none();
    let mut fuse = Fuse::new(
        fs.clone(),
        Duration::from_secs_f64(cfg.opts.timeout.min(1e9)),
        // The writeback cache would also hide write requests from the hooks (and move write
        // errors to fsync/close), so hooked mounts go without it.
        cfg.opts.writeback && plan.is_none(),
        passthrough,
    );
    fuse.lower_passthrough = passthrough && cfg.opts.passthrough_lower;
    fuse.exit_on_destroy = true;
    fuse.uring = cfg.opts.uring && std::env::var_os("LAYERFS_NO_URING").is_none();
    let fcfg = fuser_config(&cfg, source);
    fuse.access = match fcfg.acl {
        SessionACL::All => Access::All,
        SessionACL::RootAndOwner => Access::RootAndOwner(sys::geteuid()),
        SessionACL::Owner => Access::Owner(sys::geteuid()),
    };

    let mut notify: Option<OwnedFd> = None;
    if !cfg.foreground {
        let (r, w) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
        match sys::fork().map_err(|e| format!("fork: {e}"))? {
            sys::Fork::Parent(_) => {
                drop(w);
                let mut f = std::fs::File::from(r);
                let mut msg = Vec::new();
                let _ = f.read_to_end(&mut msg);
                if msg == b"ok" {
                    std::process::exit(0);
                }
                let m = String::from_utf8_lossy(&msg).trim().to_string();
                return Err(if m.is_empty() { "mount failed (server exited)".into() } else { m });
            }
            sys::Fork::Child => {
                drop(r);
                sys::setsid();
                notify = Some(w);
            }
        }
    }
    // While this process has one thread: its descriptor table grows at no cost now, and at
    // the cost of an RCU grace period once threads share it.
    let slots = fd_table_slots(fuse.fs.layers.len(), nofile);
    match sys::reserve_fd_table(slots, nofile) {
        Ok(n) => log::debug!("descriptor table: {n} slots"),
        Err(e) => log::debug!("descriptor table left as it is: {e}"),
    }
    // Termination signals are taken by the signal thread (below), which unmounts first. Blocked
    // before any thread starts: a thread that does not block them (the watcher's reaper) would
    // take one with its default action, ending the server with its mount in place.
    sys::block_term_signals();
    // Before the mount, so that it holds no descriptor of it (nor of /dev/fuse). Quiet where
    // the server goes to the background (its own stderr goes to /dev/null then).
    let watcher = match cfg.opts.auto_unmount {
        true => Some(
            start_watcher(&cfg.mountpoint, notify.is_some())
                .map_err(|e| fail_mount(&mut notify, format!("auto_unmount: {e}")))?,
        ),
        false => None,
    };
    // The watcher's pipe stays open as long as this function runs: its end of file (at the
    // end of the session, or of the process however it ends) is the watcher's signal. First
    // it gets the mounts at the path before this one, so that a server killed between its
    // mount and naming it (the mount's device, below) still leaves the watcher a way to tell
    // its dead mount.
    // A watcher found gone is dropped here, so that it is not written to (nor warned about)
    // again.
    let mut watched = watcher.map(std::fs::File::from);
    if let Some(mut w) = watched.as_ref() {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let line = format!("{MOUNTING} {}\n", mount_ids_at(&info, &cfg.mountpoint));
        if let Err(e) = w.write_all(line.as_bytes()) {
            log::warn!("auto_unmount: the watcher is gone ({e}); the mount is not watched");
            watched = None;
        }
    }
    let hooks = plan.map(|p| p.start(fs, &cfg)).transpose();
    let notifier = fuse.notifier.clone();
    if let Ok(h) = &hooks {
        fuse.hooks = h.clone();
    }
    let fuse = Arc::new(fuse);
    let session = match hooks {
        Ok(h) => fuser::Session::new(FuseFs(fuse.clone()), &cfg.mountpoint, &fcfg)
            .inspect_err(|_| {
                if let Some(h) = &h {
                    h.shutdown();
                }
            })
            .map_err(|e| format!("mount {}: {e}", cfg.mountpoint.display())),
        Err(e) => Err(e),
    };
    let mut session = match session {
        Ok(s) => s,
        Err(msg) => return Err(fail_mount(&mut notify, msg)),
    };
    let _ = notifier.set(session.notifier());
    // This mount's device (as mountinfo shows it): a signal unmounts the path only while this
    // mount is the one there. Read before any request is served (the io_uring queues serve
    // from their start): once a user can open a file, the mount may already be detached and
    // another mounted at the path, which would pass for this one.
    let own_dev = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|info| fuse_dev_in_mountinfo(&info, &cfg.mountpoint));
    // The device goes to the watcher before any request is served (the io_uring queues serve
    // from their start): a server that ends while it serves leaves the watcher the mount to
    // unmount.
    match (watched.as_ref(), own_dev.as_ref()) {
        (None, _) => {}
        (Some(mut w), Some(dev)) => {
            if let Err(e) = w.write_all(format!("{dev}\n").as_bytes()) {
                log::warn!("auto_unmount: the watcher is gone ({e}); the mount is not watched");
            }
        }
        (Some(_), None) => log::warn!(
            "auto_unmount: {} not found in mountinfo; the mount is not watched",
            cfg.mountpoint.display()
        ),
    }
    match sys::dup_cloexec(session.as_fd()) {
        Ok(fd) => _ = fuse.dev.set(Arc::new(fd)),
        Err(e) => log::warn!("/dev/fuse: {e}: no passthrough"),
    }
    // Agreed at INIT (in Session::new): from now on the kernel holds every request back
    // until all queues have registered, so a mount whose queues fail is given up.
    if fuse.uring_agreed.load(std::sync::atomic::Ordering::Relaxed) {
        if let Err(e) = crate::uring::start(&fuse) {
            let msg = format!("FUSE over io_uring: {e} (uring=0 serves through /dev/fuse only)");
            log::error!("{msg}");
            drop(session);
            return Err(fail_mount(&mut notify, msg));
        }
    }
    match &own_dev {
        Some(dev) => raise_read_ahead(dev, fuse.fs.disk_read_ahead_kb()),
        None => log::debug!("{} not found in mountinfo: read-ahead window left", cfg.mountpoint.display()),
    }
    let unmounter = session.unmount_callable();
    let mountpoint = cfg.mountpoint.clone();
    let stats_fs = fuse.fs.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut first = Some(unmounter);
            loop {
                let sig = sys::wait_term_signal();
                if sig == libc::SIGUSR1 {
                    let rss = std::fs::read_to_string("/proc/self/status")
                        .ok()
                        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(|l| l[6..].trim().to_string()))
                        .unwrap_or_default();
                    log::warn!("statistics: {}, RSS {rss}", stats_fs.stats_line());
                    continue;
                }
                let state = || {
                    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
                    mount_state(&info, &mountpoint, own_dev.as_deref())
                };
                match state() {
                    MountState::Top => log::info!("signal {sig}: unmounting"),
                    MountState::Covered => {
                        log::warn!(
                            "signal {sig}: another mount covers {}; not unmounting it",
                            mountpoint.display()
                        );
                        continue;
                    }
                    MountState::Gone => {
                        // Detached (`umount -l`) with files still open: the session ends
                        // when the kernel lets go of it; whatever is mounted at the path now
                        // is not this server's to unmount.
                        log::warn!(
                            "signal {sig}: {} is no longer mounted here (detached); serving until its last user closes",
                            mountpoint.display()
                        );
                        continue;
                    }
                }
                // fuser's unmounter first (it knows a fusermount3 mount); the result is checked,
                // and a mount still on top is unmounted by hand.
                let r = match first.take() {
                    Some(mut u) => u.unmount().map_err(|e| e.to_string()),
                    None => unmount_by_hand(&mountpoint, false),
                };
                let r = match r {
                    Ok(()) if state() == MountState::Top => unmount_by_hand(&mountpoint, false),
                    r => r,
                };
                match r {
                    Ok(()) => return,
                    // Busy: still serving.
                    Err(e) => log::warn!("unmount: {e}; still mounted, another signal tries again"),
                }
            }
        })
        .map_err(|e| format!("thread: {e}"))?;
    if let Some(w) = notify.take() {
        let _ = std::fs::File::from(w).write_all(b"ok");
        let _ = std::env::set_current_dir("/");
        sys::redirect_stdio_to_null(cfg.opts.debug);
        if !cfg.opts.debug {
            crate::logging::to_syslog();
        }
    }
    // fuser answered INIT; layerfs's own threads read every request after it.
    let uring = fuse.uring_agreed.load(std::sync::atomic::Ordering::Relaxed);
    let r = crate::devloop::serve(&fuse, session.as_fd(), cfg.opts.threads, uring);
    fuse.session_ended();
    drop(session);
    r.map_err(|e| format!("session: {e}"))
}

/// A mount that failed before it served: the daemon's parent, waiting on `notify`, gets `msg`
/// and this process exits 1; in the foreground `msg` is returned, for the caller to print.
fn fail_mount(notify: &mut Option<OwnedFd>, msg: String) -> String {
    if let Some(w) = notify.take() {
        let _ = std::fs::File::from(w).write_all(msg.as_bytes());
        std::process::exit(1);
    }
    msg
}

/// Where this server's mount stands at its mountpoint.
#[derive(Debug, PartialEq)]
enum MountState {
    /// It is the mount on top there (or which it is could not be told).
    Top,
    /// It is there, under another mount.
    Covered,
    /// It is not there (detached, or already unmounted).
    Gone,
}

/// Tells from mountinfo text whether the mount with device `own` ("major:minor") is the
/// topmost one at `mountpoint`, under another, or gone.
fn mount_state(info: &str, mountpoint: &Path, own: Option<&str>) -> MountState {
    let Some(own) = own else { return MountState::Top };
    let at = mounts_at(info, mountpoint);
    match top_mount(&at) {
        Some(m) if m.dev == own => MountState::Top,
        _ if at.iter().any(|m| m.dev == own) => MountState::Covered,
        _ => MountState::Gone,
    }
}

/// A mount at a path, from a line of mountinfo.
struct MountAt<'a> {
    id: &'a str,
    parent: &'a str,
    /// "major:minor".
    dev: &'a str,
    fstype: &'a str,
}

impl MountAt<'_> {
    fn is_fuse(&self) -> bool {
        self.fstype == "fuse" || self.fstype.starts_with("fuse.")
    }
}

/// The mounts at `mountpoint`, in mountinfo's order.
fn mounts_at<'a>(info: &'a str, mountpoint: &Path) -> Vec<MountAt<'a>> {
    use std::os::unix::ffi::OsStrExt;
    let want = mountpoint.as_os_str().as_bytes();
    info.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let fstype =
                f.iter().position(|x| *x == "-").and_then(|sep| f.get(sep + 1)).copied().unwrap_or("");
            (f.len() > 4 && unescape_mountinfo(f[4]) == want).then(|| MountAt {
                id: f[0],
                parent: f[1],
                dev: f[2],
                fstype,
            })
        })
        .collect()
}

/// The topmost of the mounts at a path: no other's parent there (listing order is not mount
/// order: `mount --move` keeps an older id).
fn top_mount<'m, 'a>(at: &'m [MountAt<'a>]) -> Option<&'m MountAt<'a>> {
    at.iter().find(|m| !at.iter().any(|o| o.parent == m.id))
}

/// The ids of the mounts at `mountpoint` ("ID,ID,...": what the server tells its watcher before
/// it mounts).
fn mount_ids_at(info: &str, mountpoint: &Path) -> String {
    mounts_at(info, mountpoint).iter().map(|m| m.id).collect::<Vec<_>>().join(",")
}

/// Whether the topmost mount at `mountpoint` is a FUSE mount made since the mounts `before`
/// (their ids) were there: the one a server that told its watcher `before` then made.
fn fuse_mount_made_since(info: &str, mountpoint: &Path, before: &[&str]) -> bool {
    let at = mounts_at(info, mountpoint);
    top_mount(&at).is_some_and(|m| m.is_fuse() && !before.contains(&m.id))
}

/// Unmounts `mnt` (`lazy`: detached, as `umount -l`): umount(2) where the server may (root, or
/// root in a user namespace that mounted it), else `fusermount3 -u`.
fn unmount_by_hand(mnt: &Path, lazy: bool) -> Result<(), String> {
    let c = sys::cstr(mnt.as_os_str()).map_err(|e| e.to_string())?;
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), if lazy { libc::MNT_DETACH } else { 0 }) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EPERM) {
        return Err(e.to_string());
    }
    let out = std::process::Command::new("fusermount3")
        .arg(if lazy { "-uz" } else { "-u" })
        .arg("--")
        .arg(mnt)
        .output()
        .map_err(|e| format!("fusermount3: {e}"))?;
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).trim().to_string()) }
}

/// The name (`argv[0]`) the `auto_unmount` watcher runs under: [`crate::cli::main`] sends a
/// process of that name to [`watcher_main`].
pub const WATCHER_ARG0: &str = "layerfs-auto-unmount";

/// The first line the server writes to its watcher, before it mounts, followed by the ids of
/// the mounts at the path then.
const MOUNTING: &str = "mounting";

/// Starts the `auto_unmount` watcher, a process of this program's (`WATCHER_ARG0 MOUNTPOINT`)
/// in its own process group, and returns the write end of its standard input. The server
/// writes its mount's device there once mounted and holds the pipe open; the watcher's end of
/// file comes when the server's process ends, however it ends (`kill -9` included), and then
/// the watcher lazily unmounts the mount if it is still the one at the mountpoint.
///
/// fusermount3's own `auto_unmount` (what fuser would use) probes the mount with an `open`
/// and unmounts only on ENOTCONN: a server killed while it served through io_uring queues
/// left a dead mount behind (the probe got ECONNABORTED), and fuser refuses that option on a
/// plain user's mount without `allow_other`/`allow_root`. This one needs neither.
fn start_watcher(mountpoint: &Path, quiet: bool) -> Result<OwnedFd, String> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let (r, w) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
    // This very binary, also when its file was replaced or removed since it started.
    let mut child = Command::new("/proc/self/exe")
        .arg0(WATCHER_ARG0)
        .arg(mountpoint)
        .current_dir("/")
        .stdin(Stdio::from(r))
        .stdout(Stdio::null())
        .stderr(if quiet { Stdio::null() } else { Stdio::inherit() })
        // Out of the server's process group: a signal to the group (Ctrl-C in a terminal,
        // `kill -9 -PGID`) leaves the watcher.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("watcher: {e}"))?;
    // Reaped when it ends before the server (killed): no zombie child for the server's life.
    std::thread::Builder::new()
        .name("auto-unmount".into())
        .spawn(move || child.wait())
        .map_err(|e| format!("thread: {e}"))?;
    Ok(w)
}

/// The `auto_unmount` watcher ([`start_watcher`]): `args` are `WATCHER_ARG0 MOUNTPOINT`, the
/// server's pipe is standard input. Returns the exit code.
pub fn watcher_main(args: &[std::ffi::OsString]) -> i32 {
    let [_, mnt] = args else {
        eprintln!("layerfs: {WATCHER_ARG0} is started by layerfs for auto_unmount");
        return 2;
    };
    // Its reports go where the server's do: the system log once the server is in the
    // background (then this process's standard error is /dev/null).
    crate::logging::init(false);
    if crate::logging::stderr_is_null() {
        crate::logging::to_syslog();
    }
    // Termination signals are for the server (it unmounts on them); this process outlives
    // it, to unmount when it cannot. SIGKILL still ends it.
    sys::block_term_signals();
    // A process name without "layerfs" (it would be the binary's): `pkill -9 layerfs`, a
    // common way to end a stuck server, then leaves the watcher to unmount.
    // SAFETY: PR_SET_NAME with a NUL-terminated name of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"auto-unmount".as_ptr()) };
    let mnt = Path::new(mnt);
    // From the server: the ids of the mounts at the path just before it mounts, its mount's
    // device once mounted, then the end of file when the server's process ends.
    let mut from_server = String::new();
    let _ = std::io::stdin().lock().read_to_string(&mut from_server);
    let mut before = None;
    let mut dev = None;
    for line in from_server.lines() {
        match line.strip_prefix(MOUNTING) {
            Some(ids) => before = Some(ids.trim().split(',').filter(|i| !i.is_empty()).collect::<Vec<_>>()),
            None if !line.is_empty() => dev = Some(line),
            None => {}
        }
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dead_and_on_top = match dev {
        Some(dev) => match mount_state(&info, mnt, Some(dev)) {
            // The server ended without unmounting (killed, or crashed): a dead mount.
            MountState::Top => true,
            MountState::Covered => {
                log::error!(
                    "auto_unmount: another mount covers {}; the dead mount under it is left",
                    mnt.display()
                );
                return 1;
            }
            MountState::Gone => false,
        },
        // Killed between its mount and naming it: a FUSE mount on top of the path that was not
        // there before, whose server is gone (ENOTCONN), is that one. No line at all: the
        // server never got to mounting.
        None => before.is_some_and(|before| {
            fuse_mount_made_since(&info, mnt, &before)
                && std::fs::metadata(mnt).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN))
        }),
    };
    if !dead_and_on_top {
        return 0;
    }
    match unmount_by_hand(mnt, true) {
        Ok(()) => 0,
        Err(e) => {
            log::error!("auto_unmount of {}: {e}", mnt.display());
            1
        }
    }
}

/// The least descriptor table the server starts with: [`fd_table_slots`].
const FD_TABLE_MIN: u64 = 8192;

/// The descriptor table the server reserves before its threads start: [`FD_TABLE_MIN`] slots,
/// or four per layer and 1024 more, rounded up to a power of two as the kernel grows tables.
/// The kernel grows a table shared by threads only after an RCU grace period, 5-16 ms on
/// this host at each doubling, and the descriptors a request opens wait for it. A fresh
/// server had a table of 256 (1024 with 500 layers): the first lookup in a directory of 500
/// layers, which opens that directory in each, grew it once or twice on the way (28-68 ms
/// with the layers cached, 60-75 ms cold; 20-25 and 46-47 ms reserved up front); a cold
/// `find` of 100k files over 5 layers, whose server then held 5283 descriptors, five times.
/// 8192 slots take about 66 KiB of kernel memory.
pub(crate) fn fd_table_slots(layers: usize, nofile: u64) -> u64 {
    let per_layers = (layers as u64).saturating_mul(4).saturating_add(1024);
    per_layers.checked_next_power_of_two().unwrap_or(u64::MAX).max(FD_TABLE_MIN).min(nofile)
}

/// The least read-ahead window of the mount's own backing device info, in KiB: as large as one
/// read request may be (`max_write` and `max_pages` allow 1 MiB). The kernel starts a FUSE
/// mount at 128 KiB whatever the server answers at INIT, so a sequential read of a file the
/// server serves is cut into 128 KiB requests, each a round trip. At 1 MiB, reading a 2 GiB
/// lower file already in the lower's page cache through a fresh mount took 0.80-0.88 s instead
/// of 1.66-1.70 s here (4 pairs); kernel overlayfs took 0.25 s.
const READ_AHEAD_KB: u64 = 1024;

/// The most the mount's window is raised to when following a layer's disk.
const READ_AHEAD_MAX_KB: u64 = 16 << 10;

/// Raises the mount's read-ahead window through sysfs, where the server may (root in the
/// initial user namespace); elsewhere the kernel's window stays. The window is the largest of
/// [`READ_AHEAD_KB`] and the windows of the disks the layers are on (at most
/// [`READ_AHEAD_MAX_KB`]): kernel overlayfs reads a lower file with its disk's window, and a
/// smaller one here leaves the disk idle between the kernel's requests. Cold reads of a 2 GiB
/// lower file on a disk with an 8 MiB window (bench.sh's seqread group, medians of 7): 3.14 s
/// at 1 MiB, 2.30 s at 8 MiB through io_uring, 2.15 s through `/dev/fuse`; kernel overlayfs
/// 2.20 s.
/// `dev` is the mount's `major:minor` from mountinfo (stat'ing the mountpoint would be a
/// request to this very server).
/// `disks` are the windows of the layers' disks, in KiB.
fn raise_read_ahead(dev: &str, disks: impl Iterator<Item = u64>) {
    let want = disks.fold(READ_AHEAD_KB, u64::max).min(READ_AHEAD_MAX_KB);
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    let now: Option<u64> = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse().ok());
    if now.is_some_and(|kb| kb >= want) {
        return;
    }
    match std::fs::write(&path, format!("{want}\n")) {
        Ok(()) => log::debug!("read-ahead: {path} set to {want} KiB"),
        Err(e) => log::debug!("read-ahead: {path} left at {now:?} KiB: {e}"),
    }
}

/// The `major:minor` of the last FUSE mount on `mountpoint` in a mountinfo text (the last,
/// since a new mount on the same directory comes after the ones it covers).
pub(crate) fn fuse_dev_in_mountinfo(info: &str, mountpoint: &Path) -> Option<String> {
    mounts_at(info, mountpoint).iter().rfind(|m| m.is_fuse()).map(|m| m.dev.to_string())
}

/// Undoes the octal escapes of `/proc/self/mountinfo` and `/proc/self/mounts` (`\040` for a
/// space, `\011`, `\012`, `\134`, `\054` for a comma in an option).
pub(crate) fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct =
            b.get(i + 1..i + 4).filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(d) => {
                out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const INFO: &str = "\
22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:41 / /tmp/a\\040b rw,nosuid,nodev,relatime shared:20 - fuse.layerfs layerfs rw,user_id=0
41 22 0:42 / /tmp/ovl rw,relatime shared:21 - overlay overlay rw,lowerdir=/l
42 40 0:43 / /tmp/a\\040b rw,nosuid,nodev,relatime shared:22 master:3 - fuse layerfs rw,user_id=0
43 41 0:44 / /tmp/ovl rw,relatime - fuse.fuse-overlayfs fuse-overlayfs rw
";

    #[test]
    fn the_descriptor_table_reserved_grows_with_the_layers_within_the_limit() {
        assert_eq!(fd_table_slots(2, 1 << 20), 8192);
        assert_eq!(fd_table_slots(500, 1 << 20), 8192, "500 * 4 + 1024 fits in 8192");
        assert_eq!(fd_table_slots(2000, 1 << 20), 16384, "9024, rounded up");
        assert_eq!(fd_table_slots(2, 1024), 1024, "never past the open-file limit");
        assert_eq!(fd_table_slots(usize::MAX, 1 << 20), 1 << 20);
    }

    #[test]
    fn mountinfo_gives_the_last_fuse_mount_on_a_path() {
        assert_eq!(fuse_dev_in_mountinfo(INFO, Path::new("/tmp/a b")).as_deref(), Some("0:43"));
        assert_eq!(fuse_dev_in_mountinfo(INFO, Path::new("/tmp/ovl")).as_deref(), Some("0:44"));
        assert_eq!(fuse_dev_in_mountinfo(INFO, Path::new("/")), None, "not a FUSE mount");
        assert_eq!(fuse_dev_in_mountinfo(INFO, Path::new("/tmp/a")), None);
    }

    #[test]
    fn the_top_mount_is_found_by_parent_ids_not_by_order() {
        // 50 was moved onto the path after 60 was mounted there: listed first, on top.
        let info = "\
60 22 0:60 / /m rw - fuse layerfs rw
50 60 0:50 / /m rw - tmpfs other rw
";
        assert_eq!(mount_state(info, Path::new("/m"), Some("0:60")), MountState::Covered);
        assert_eq!(mount_state(info, Path::new("/m"), Some("0:50")), MountState::Top);
        let moved = "\
50 60 0:50 / /m rw - tmpfs other rw
60 22 0:60 / /m rw - fuse layerfs rw
";
        assert_eq!(mount_state(moved, Path::new("/m"), Some("0:60")), MountState::Covered);
    }

    #[test]
    fn a_mount_is_told_on_top_covered_or_gone() {
        let p = Path::new("/tmp/a b");
        assert_eq!(mount_state(INFO, p, Some("0:43")), MountState::Top);
        assert_eq!(mount_state(INFO, p, Some("0:41")), MountState::Covered);
        assert_eq!(mount_state(INFO, p, Some("0:99")), MountState::Gone, "detached, another mounted since");
        assert_eq!(mount_state(INFO, Path::new("/tmp/ovl"), Some("0:41")), MountState::Gone);
        // Under the fuse-overlayfs mount made over it: covered.
        assert_eq!(mount_state(INFO, Path::new("/tmp/ovl"), Some("0:42")), MountState::Covered);
        assert_eq!(mount_state(INFO, p, None), MountState::Top, "unknown: as before");
    }

    #[test]
    fn a_fuse_mount_made_since_is_told_by_its_id() {
        let p = Path::new("/tmp/a b");
        assert_eq!(mount_ids_at(INFO, p), "40,42");
        assert_eq!(mount_ids_at(INFO, Path::new("/nothing")), "");
        // 42 (on top) was not there before: made since; it was: not.
        assert!(fuse_mount_made_since(INFO, p, &["40"]));
        assert!(!fuse_mount_made_since(INFO, p, &["40", "42"]));
        // A tmpfs made since on top is not a FUSE mount.
        let info = format!("{INFO}50 42 0:50 / /tmp/a\\040b rw - tmpfs t rw\n");
        assert!(!fuse_mount_made_since(&info, p, &["40"]));
        // Nothing at the path: nothing made.
        assert!(!fuse_mount_made_since(INFO, Path::new("/nothing"), &[]));
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("a\\040b\\011c\\134d\\012e\\054f"), b"a b\tc\\d\ne,f");
        assert_eq!(unescape_mountinfo("x\\09y\\"), b"x\\09y\\", "not an octal escape");
    }
}
