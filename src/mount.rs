//! Mounting and serving: turns a checked [`MountConfig`] into a live FUSE mount.
//!
//! Without `-f` the process forks before mounting; the parent exits 0 only once the child
//! reports the mount live and serving (container engines wait for that exit, then use the
//! mount), and exits non-zero with the child's one-line error otherwise. The server exits by
//! itself when the mount goes away (`fusermount3 -u`, `umount`); SIGTERM, SIGINT and SIGHUP
//! unmount first.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL};

use crate::config::{MountConfig, WhiteoutChoice};
use crate::faults::{self, Faults};
use crate::fs::{FsOptions, IdMap, OverlayFs};
use crate::fuse::Fuse;
use crate::sys;
use crate::trace::{Hooks, Tracer};

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
        MountOption::Subtype(o.subtype.clone().unwrap_or_else(|| "layerfs".into())),
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
    if o.auto_unmount && acl != SessionACL::Owner {
        mo.push(MountOption::AutoUnmount);
    }
    let mut c = Config::default();
    c.mount_options = mo;
    c.acl = acl;
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    c.n_threads = Some(o.threads.unwrap_or(cpus.max(2)));
    c.clone_fd = true;
    c
}

fn init_logging(debug: bool) {
    let mut b = env_logger::Builder::new();
    b.filter_level(if debug { log::LevelFilter::Debug } else { log::LevelFilter::Warn });
    if let Ok(s) = std::env::var("RUST_LOG") {
        b.parse_filters(&s);
    }
    b.format_target(false);
    let _ = b.try_init();
}

/// Mounts and serves until unmounted. Returns the process exit code.
pub fn run(cfg: MountConfig, source: Option<&str>) -> Result<(), String> {
    init_logging(cfg.opts.debug);
    for w in &cfg.opts.warnings {
        eprintln!("layerfs: {w}");
    }
    sys::raise_nofile_limit();
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
    fuse.exit_on_destroy = true;
    let fcfg = fuser_config(&cfg, source);

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
    sys::block_term_signals();
    let hooks = plan.map(|p| p.start(fs, &cfg)).transpose();
    let session = match hooks {
        Ok(h) => {
            fuse.hooks = h.clone();
            fuser::Session::new(fuse, &cfg.mountpoint, &fcfg)
                .inspect_err(|_| {
                    if let Some(h) = &h {
                        h.shutdown();
                    }
                })
                .map_err(|e| format!("mount {}: {e}", cfg.mountpoint.display()))
        }
        Err(e) => Err(e),
    };
    let mut session = match session {
        Ok(s) => s,
        Err(msg) => {
            if let Some(w) = notify.take() {
                let _ = std::fs::File::from(w).write_all(msg.as_bytes());
                std::process::exit(1);
            }
            return Err(msg);
        }
    };
    let mut unmounter = session.unmount_callable();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let sig = sys::wait_term_signal();
            log::info!("signal {sig}: unmounting");
            if let Err(e) = unmounter.unmount() {
                log::warn!("unmount: {e}");
            }
        })
        .map_err(|e| format!("thread: {e}"))?;
    if let Some(w) = notify.take() {
        let _ = std::fs::File::from(w).write_all(b"ok");
        let _ = std::env::set_current_dir("/");
        sys::redirect_stdio_to_null(cfg.opts.debug);
    }
    session.run().map_err(|e| format!("session: {e}"))
}
