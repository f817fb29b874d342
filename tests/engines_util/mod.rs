//! Helpers for driving real container engines (podman, buildah, dockerd) with layerfs as their
//! FUSE overlay: private stores and daemons under one temporary directory per test, bounded
//! shell steps, the unprivileged test user, `podman export` trees, and the end-of-test check
//! that nothing of the test (mount or process) is left behind.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The unprivileged user of the rootless engine tests (with its own subuid/subgid range).
pub const USER: &str = "layerfs-engines";

/// Bound of one engine command inside a step (`podman`, `buildah` and `docker` are shell
/// functions that run the real command under `timeout`).
pub const CMD_TIMEOUT: u32 = 180;

/// Bound of a whole step.
pub const STEP_TIMEOUT: u32 = 420;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn engines_dir() -> PathBuf {
    repo().join("scripts/engines")
}

pub fn base_tar() -> PathBuf {
    let p = repo().join("../shared/testdata/layers/00-base-busybox.tar");
    assert!(p.exists(), "base image tar not found at {}", p.display());
    fs::canonicalize(p).unwrap()
}

pub fn required() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("LAYERFS_REQUIRE_MOUNT").is_some()
}

fn is_root() -> bool {
    fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1) == 0
}

/// True when the engine commands are installed and we are root (the tests make users, stores
/// and daemons). In CI (CI or LAYERFS_REQUIRE_MOUNT set) anything missing fails the test.
pub fn engines_available(cmds: &[&str]) -> bool {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root".to_string());
    }
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse".to_string());
    }
    for c in cmds {
        let ok = Command::new("sh")
            .args(["-c", &format!("command -v {c}")])
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            missing.push(c.to_string());
        }
    }
    if missing.is_empty() {
        return true;
    }
    assert!(
        !required(),
        "engine test needs {} (install with scripts/deps.sh); CI requires the engine tests",
        missing.join(", ")
    );
    eprintln!("skipped: missing {}", missing.join(", "));
    false
}

/// The rootless test user: created when missing, with a subordinate id range of 65536 that
/// overlaps no other entry of /etc/subuid and /etc/subgid.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

static USER_LOCK: Mutex<()> = Mutex::new(());

pub fn test_user() -> TestUser {
    let _g = USER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let id = |flag: &str| {
        Command::new("id")
            .args([flag, USER])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<u32>().expect("id output"))
    };
    if id("-u").is_none() {
        let o = Command::new("useradd")
            .args(["--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/bin/sh", USER])
            .output()
            .expect("useradd");
        assert!(o.status.success(), "useradd {USER}: {}", String::from_utf8_lossy(&o.stderr));
    }
    for (file, flag) in [("/etc/subuid", "--add-subuids"), ("/etc/subgid", "--add-subgids")] {
        let text = fs::read_to_string(file).unwrap_or_default();
        if text.lines().any(|l| l.split(':').next() == Some(USER)) {
            continue;
        }
        // Past every existing range, and at least 200000.
        let mut start: u64 = 200_000;
        for l in text.lines() {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() == 3 {
                if let (Ok(s), Ok(n)) = (f[1].parse::<u64>(), f[2].parse::<u64>()) {
                    start = start.max(s + n);
                }
            }
        }
        let range = format!("{}-{}", start, start + 65535);
        let o = Command::new("usermod").args([flag, &range, USER]).output().expect("usermod");
        assert!(o.status.success(), "usermod {flag} {range} {USER}: {}", String::from_utf8_lossy(&o.stderr));
    }
    // Every unprivileged FUSE path needs a world-usable /dev/fuse (see engines.md).
    let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666));
    TestUser { name: USER.into(), uid: id("-u").unwrap(), gid: id("-g").unwrap() }
}

/// One test's private area, `/tmp/layerfs-engines-LABEL-XXXXXX` (the name contains
/// "layerfs", so `pgrep -f layerfs` also finds every engine process working for the test).
pub struct Area {
    pub dir: Option<tempfile::TempDir>,
    pub root: PathBuf,
}

impl Area {
    pub fn new(label: &str) -> Area {
        let dir =
            tempfile::Builder::new().prefix(&format!("layerfs-engines-{label}-")).tempdir_in("/tmp").unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let root = dir.path().to_path_buf();
        Area { dir: Some(dir), root }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        let p = self.root.join(name);
        fs::create_dir_all(&p).unwrap();
        p
    }

    /// Mount points of /proc/mounts (or another mounts file) that lie under this area.
    pub fn mounts_in(&self, mounts_file: &Path) -> Vec<String> {
        let root = self.root.to_string_lossy().to_string();
        fs::read_to_string(mounts_file)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.split(' ').nth(1).is_some_and(|m| m.replace("\\040", " ").starts_with(&root)))
            .map(String::from)
            .collect()
    }

    pub fn mounts(&self) -> Vec<String> {
        self.mounts_in(Path::new("/proc/self/mounts"))
    }

    /// Live processes (not zombies) whose command line names this area.
    pub fn processes(&self) -> Vec<String> {
        let root = self.root.to_string_lossy().to_string();
        let me = std::process::id();
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir("/proc") else { return out };
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
            if pid == me {
                continue;
            }
            let Ok(cmd) = fs::read(e.path().join("cmdline")) else { continue };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if !cmd.contains(&root) {
                continue;
            }
            let stat = fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let state = stat.rsplit(')').next().unwrap_or("").trim().chars().next().unwrap_or('?');
            if state == 'Z' || state == 'X' {
                continue;
            }
            out.push(format!("{pid} [{state}] {}", cmd.trim()));
        }
        out
    }

    /// Waits until no process names this area (the FUSE servers exit shortly after their
    /// unmount), up to `secs`; returns what is still running.
    pub fn wait_no_processes(&self, secs: u64) -> Vec<String> {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            let p = self.processes();
            if p.is_empty() || Instant::now() > end {
                return p;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Unmounts everything under the area (deepest first), kills what still runs there and
    /// removes it. Returns what had to be forced, for the leak report.
    pub fn force_clean(&mut self) -> Vec<String> {
        let mut forced = Vec::new();
        for _ in 0..3 {
            let mut m: Vec<String> =
                self.mounts().iter().filter_map(|l| l.split(' ').nth(1).map(String::from)).collect();
            if m.is_empty() {
                break;
            }
            m.sort();
            m.reverse();
            for mp in m {
                let mp = mp.replace("\\040", " ");
                let ok =
                    Command::new("umount").arg(&mp).output().map(|o| o.status.success()).unwrap_or(false);
                if !ok {
                    let _ = Command::new("umount").arg("-l").arg(&mp).output();
                }
            }
        }
        let left = self.wait_no_processes(5);
        for p in &left {
            forced.push(format!("killed: {p}"));
            if let Some(pid) = p.split(' ').next() {
                let _ = Command::new("kill").args(["-KILL", pid]).output();
            }
        }
        if !left.is_empty() {
            self.wait_no_processes(5);
        }
        if let Some(d) = self.dir.take() {
            let p = d.keep();
            let _ = Command::new("rm").arg("-rf").arg("--one-file-system").arg(&p).output();
        }
        forced
    }

    /// The end-of-test check: nothing of this test is mounted or running any more.
    pub fn assert_nothing_left(&self, what: &str) {
        let m = self.mounts();
        let p = self.wait_no_processes(10);
        assert!(
            m.is_empty() && p.is_empty(),
            "{what}: left behind\nmounts:\n{}\nprocesses:\n{}",
            m.join("\n"),
            p.join("\n")
        );
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        if self.dir.is_some() {
            self.force_clean();
        }
    }
}

/// Output of a step.
pub struct StepOut {
    pub ok: bool,
    pub code: Option<i32>,
    pub out: String,
}

/// Runs `script` with bash (`set -euo pipefail`), optionally as `user`, with `env`, under
/// `timeout STEP_TIMEOUT`. The engine commands are wrapped in `timeout CMD_TIMEOUT`.
pub fn run_step(user: Option<&TestUser>, env: &[(String, String)], cwd: &Path, script: &str) -> StepOut {
    let prelude = format!(
        "set -euo pipefail\n\
         podman() {{ timeout -k 10 {t} /usr/bin/podman \"$@\"; }}\n\
         buildah() {{ timeout -k 10 {t} /usr/bin/buildah \"$@\"; }}\n\
         docker() {{ timeout -k 10 {t} /usr/bin/docker \"$@\"; }}\n",
        t = CMD_TIMEOUT
    );
    let mut c = Command::new("timeout");
    c.args(["-k", "10", &STEP_TIMEOUT.to_string()]);
    if let Some(u) = user {
        c.args([
            "setpriv",
            "--reuid",
            &u.uid.to_string(),
            "--regid",
            &u.gid.to_string(),
            "--init-groups",
            "--",
        ]);
    }
    c.args(["bash", "-c", &format!("{prelude}{script}")]);
    c.current_dir(cwd)
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    c.env("LANG", "C.UTF-8");
    if let Some(u) = user {
        c.env("USER", &u.name).env("LOGNAME", &u.name);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().expect("run timeout/bash");
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    StepOut { ok: o.status.success(), code: o.status.code(), out }
}

/// A podman/buildah setup: its own storage.conf and containers.conf (from the templates in
/// scripts/engines), store, run root, XDG_RUNTIME_DIR and HOME, all under one Area.
pub struct PodmanEnv {
    pub area: Area,
    pub user: Option<TestUser>,
    pub env: Vec<(String, String)>,
    pub mount_program: Option<PathBuf>,
    pub log: String,
    cleaned: bool,
}

fn fill(template: &str, vars: &[(&str, String)]) -> String {
    let mut s = fs::read_to_string(engines_dir().join(template)).expect(template);
    for (k, v) in vars {
        s = s.replace(&format!("@{k}@"), v);
    }
    s
}

fn hard_nofile() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: r is a valid rlimit to write into.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    if r.rlim_max == libc::RLIM_INFINITY { 1 << 20 } else { r.rlim_max.min(1 << 20) }
}

fn hard_nproc() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: r is a valid rlimit to write into.
    unsafe { libc::getrlimit(libc::RLIMIT_NPROC, &mut r) };
    let v = if r.rlim_max == libc::RLIM_INFINITY { 32768 } else { r.rlim_max };
    v.min(32768)
}

impl PodmanEnv {
    /// `mount_program`: Some(layerfs) for the FUSE overlay, None for the kernel overlay driver.
    pub fn new(label: &str, mount_program: Option<&Path>, user: Option<&TestUser>) -> PodmanEnv {
        let area = Area::new(label);
        let r = area.root.clone();
        for d in ["graph", "run", "tmp", "home", "ctx"] {
            area.path(d);
        }
        let xdg = area.path("xdg");
        fs::set_permissions(&xdg, fs::Permissions::from_mode(0o700)).unwrap();
        // Rootless, the mount program runs as the user (uid 0 of podman's user namespace),
        // so it must be reachable for that user wherever the checkout is: use a copy here.
        let mount_program = mount_program.map(|p| {
            if user.is_none() {
                return p.to_path_buf();
            }
            let c = area.path("bin").join("layerfs");
            fs::copy(p, &c).unwrap();
            c
        });
        let mp_line = match &mount_program {
            Some(p) => format!("mount_program = \"{}\"", p.display()),
            None => String::new(),
        };
        let vars = [
            ("ROOT", r.to_string_lossy().to_string()),
            ("MOUNT_PROGRAM_LINE", mp_line),
            ("NOFILE", hard_nofile().to_string()),
            ("NPROC", hard_nproc().to_string()),
        ];
        fs::write(r.join("storage.conf"), fill("storage.conf.in", &vars)).unwrap();
        fs::write(r.join("containers.conf"), fill("containers.conf.in", &vars)).unwrap();
        for f in ["Containerfile.build3", "Containerfile.hardlink"] {
            fs::copy(engines_dir().join(f), r.join("ctx").join(f)).unwrap();
        }
        if let Some(u) = user {
            let st =
                Command::new("chown").arg("-R").arg(format!("{}:{}", u.uid, u.gid)).arg(&r).status().unwrap();
            assert!(st.success());
        }
        let env = vec![
            ("CONTAINERS_STORAGE_CONF".into(), r.join("storage.conf").to_string_lossy().into()),
            ("CONTAINERS_CONF".into(), r.join("containers.conf").to_string_lossy().into()),
            // Rootless podman reads its registries.conf and policy from here; keep them default.
            ("XDG_RUNTIME_DIR".into(), xdg.to_string_lossy().into()),
            ("XDG_CONFIG_HOME".into(), r.join("home/.config").to_string_lossy().into()),
            ("HOME".into(), r.join("home").to_string_lossy().into()),
            ("TMPDIR".into(), r.join("tmp").to_string_lossy().into()),
            ("R".into(), r.to_string_lossy().into()),
            ("BASE_TAR".into(), base_tar().to_string_lossy().into()),
        ];
        PodmanEnv { area, user: user.cloned(), env, mount_program, log: String::new(), cleaned: false }
    }

    pub fn root(&self) -> &Path {
        &self.area.root
    }

    pub fn what(&self) -> String {
        format!(
            "{} {}",
            if self.user.is_some() { "rootless" } else { "root" },
            match &self.mount_program {
                Some(_) => "podman/buildah with mount_program=layerfs",
                None => "podman/buildah with the kernel overlay driver",
            }
        )
    }

    /// Runs a step; panics with the whole transcript so far when it fails.
    pub fn sh(&mut self, script: &str) -> String {
        let t = Instant::now();
        let r = run_step(self.user.as_ref(), &self.env, &self.area.root, script);
        self.log.push_str(&format!(
            "--- step ({:.1}s, exit {:?})\n{}\n--- output\n{}\n",
            t.elapsed().as_secs_f64(),
            r.code,
            script.trim(),
            r.out
        ));
        if !r.ok {
            let mut extra = String::new();
            if r.code == Some(124) || r.code == Some(137) {
                extra.push_str("(timed out)\n");
            }
            panic!("{}: step failed\n{extra}{}", self.what(), self.log);
        }
        r.out
    }

    /// Removes every container and image, resets the store, stops the rootless pause
    /// process, then checks that the engine unmounted every layerfs mount (no FUSE mount and
    /// no layerfs server left), and finally that nothing of the test remains at all.
    pub fn finish(mut self) {
        self.cleaned = true;
        let engine_left = self.engine_cleanup();
        let mut forced = self.area.force_clean();
        forced.splice(0..0, engine_left);
        assert!(
            forced.is_empty(),
            "{}: left behind after the engine's own cleanup:\n{}",
            self.what(),
            forced.join("\n")
        );
        self.area.assert_nothing_left(&self.what());
    }

    /// The engine's own cleanup; returns the layerfs mounts and servers still there after it.
    fn engine_cleanup(&mut self) -> Vec<String> {
        let r = run_step(
            self.user.as_ref(),
            &self.env,
            &self.area.root,
            "buildah rm -a >/dev/null 2>&1 || true\n\
             podman rm -af -t 0 >/dev/null 2>&1 || true\n\
             podman rmi -af >/dev/null 2>&1 || true\n",
        );
        let _ = r;
        let mut left = Vec::new();
        // The engine must have unmounted every FUSE mount and its servers must have exited.
        let pause = self.pause_pid();
        let mounts_file = match pause {
            Some(p) => PathBuf::from(format!("/proc/{p}/mounts")),
            None => PathBuf::from("/proc/self/mounts"),
        };
        for m in self.area.mounts_in(&mounts_file) {
            if m.split(' ').nth(2).is_some_and(|t| t.starts_with("fuse")) {
                left.push(format!("FUSE mount not unmounted by the engine: {m}"));
            }
        }
        let servers: Vec<String> = self
            .area
            .wait_no_processes(10)
            .into_iter()
            .filter(|p| {
                p.contains("layerfs -o") || p.contains("/layerfs ") || p.contains("fuse-overlayfs -o")
            })
            .collect();
        for s in servers {
            left.push(format!("FUSE server still running after the engine unmounted: {s}"));
        }
        let _ = run_step(
            self.user.as_ref(),
            &self.env,
            &self.area.root,
            "podman system reset -f >/dev/null 2>&1 || true",
        );
        if let Some(p) = self.pause_pid() {
            let _ = Command::new("kill").args(["-TERM", &p.to_string()]).output();
            let end = Instant::now() + Duration::from_secs(5);
            while Path::new(&format!("/proc/{p}")).exists() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        left
    }

    fn pause_pid(&self) -> Option<u32> {
        self.user.as_ref()?;
        let f = self.area.root.join("xdg/libpod/tmp/pause.pid");
        let pid: u32 = fs::read_to_string(f).ok()?.trim().parse().ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }
}

impl Drop for PodmanEnv {
    fn drop(&mut self) {
        if !self.cleaned {
            self.cleaned = true;
            let _ = self.engine_cleanup();
            self.area.force_clean();
        }
    }
}

/// A private dockerd with `--storage-driver=fuse-overlayfs`, where `fuse-overlayfs` in its
/// PATH is layerfs installed by scripts/install-as-fuse-overlayfs.sh.
pub struct DockerEnv {
    pub area: Area,
    pub env: Vec<(String, String)>,
    pub daemon: Option<Child>,
    pub log: String,
}

impl DockerEnv {
    /// Starts dockerd; Err(log) when it does not come up within a minute.
    pub fn start(label: &str, layerfs: &Path) -> Result<DockerEnv, String> {
        let area = Area::new(label);
        let r = area.root.clone();
        let bin = area.path("bin");
        for d in ["data", "exec", "tmp", "ctx", "home"] {
            area.path(d);
        }
        let o = Command::new("bash")
            .arg(repo().join("scripts/install-as-fuse-overlayfs.sh"))
            .arg("--bin")
            .arg(layerfs)
            .arg(&bin)
            .output()
            .unwrap();
        assert!(o.status.success(), "install-as-fuse-overlayfs.sh: {}", String::from_utf8_lossy(&o.stderr));
        for f in ["Containerfile.build3", "Containerfile.hardlink"] {
            fs::copy(engines_dir().join(f), r.join("ctx").join(f)).unwrap();
        }
        let path = format!("{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", bin.display());
        let sock = r.join("docker.sock");
        fs::write(r.join("daemon.json"), "{}\n").unwrap();
        let logf = fs::File::create(r.join("dockerd.log")).unwrap();
        let daemon = Command::new("dockerd")
            .args([
                "--storage-driver=fuse-overlayfs",
                "--iptables=false",
                "--ip-masq=false",
                "--ip-forward=false",
            ])
            .args(["--bridge=none", "--userland-proxy=false", "--exec-opt", "native.cgroupdriver=cgroupfs"])
            .arg("--data-root")
            .arg(r.join("data"))
            .arg("--exec-root")
            .arg(r.join("exec"))
            .arg("--pidfile")
            .arg(r.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .arg("--config-file")
            .arg(r.join("daemon.json"))
            .env_clear()
            .env("PATH", &path)
            .env("HOME", r.join("home"))
            .env("TMPDIR", r.join("tmp"))
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn();
        let env = vec![
            ("DOCKER_HOST".into(), format!("unix://{}", sock.display())),
            ("DOCKER_CONFIG".into(), r.join("home/.docker").to_string_lossy().into()),
            ("DOCKER_BUILDKIT".into(), "0".into()),
            ("HOME".into(), r.join("home").to_string_lossy().into()),
            ("R".into(), r.to_string_lossy().into()),
            ("BASE_TAR".into(), base_tar().to_string_lossy().into()),
            ("PATH".into(), path),
        ];
        let mut d = DockerEnv { area, env, daemon: None, log: String::new() };
        match daemon {
            Ok(c) => d.daemon = Some(c),
            Err(e) => return Err(format!("cannot run dockerd: {e}")),
        }
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let r = run_step(None, &d.env, &d.area.root, "docker version --format '{{.Server.Version}}'");
            if r.ok {
                break;
            }
            let exited = d.daemon.as_mut().unwrap().try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > end {
                let log = d.daemon_log();
                d.stop();
                return Err(format!("dockerd did not start ({exited:?}): {}\n{log}", r.out));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(d)
    }

    pub fn daemon_log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(self.area.root.join("dockerd.log")) {
            let _ = f.read_to_string(&mut s);
        }
        let lines: Vec<&str> =
            s.lines().filter(|l| !l.contains("level=info") && !l.contains("level=debug")).collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    pub fn sh(&mut self, script: &str) -> String {
        let t = Instant::now();
        let r = run_step(None, &self.env, &self.area.root, script);
        self.log.push_str(&format!(
            "--- step ({:.1}s, exit {:?})\n{}\n--- output\n{}\n",
            t.elapsed().as_secs_f64(),
            r.code,
            script.trim(),
            r.out
        ));
        if !r.ok {
            panic!(
                "docker with fuse-overlayfs=layerfs: step failed\n{}\n--- dockerd log (tail)\n{}",
                self.log,
                self.daemon_log()
            );
        }
        r.out
    }

    /// Stops dockerd (SIGTERM, it stops its containerd too), up to 30 s, then SIGKILL.
    fn stop(&mut self) {
        let Some(mut c) = self.daemon.take() else { return };
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if c.try_wait().ok().flatten().is_some() {
                break;
            }
            if Instant::now() > end {
                let _ = c.kill();
                let _ = c.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Removes the containers, stops dockerd, then checks that layerfs was unmounted by the
    /// engine and that nothing of the test is left.
    pub fn finish(mut self) {
        let _ = run_step(
            None,
            &self.env,
            &self.area.root,
            "docker rm -f $(docker ps -aq) >/dev/null 2>&1 || true",
        );
        self.stop();
        let mut left = Vec::new();
        for m in self.area.mounts() {
            if m.split(' ').nth(2).is_some_and(|t| t.starts_with("fuse")) {
                left.push(format!("FUSE mount not unmounted by dockerd: {m}"));
            }
        }
        for p in self.area.wait_no_processes(10) {
            left.push(format!("still running after dockerd stopped: {p}"));
        }
        left.extend(self.area.force_clean());
        assert!(left.is_empty(), "docker: left behind:\n{}\n--- dockerd log (tail)\n{}", left.join("\n"), "");
        self.area.assert_nothing_left("docker");
    }
}

impl Drop for DockerEnv {
    fn drop(&mut self) {
        self.stop();
        self.area.force_clean();
    }
}

/// One object of an exported root filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarEntry {
    pub kind: char,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub sha: String,
    pub link: String,
}

impl std::fmt::Display for TarEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:04o} {}:{} size={}", self.kind, self.mode, self.uid, self.gid, self.size)?;
        if !self.sha.is_empty() {
            write!(f, " sha={}", self.sha)?;
        }
        if !self.link.is_empty() {
            write!(f, " -> {}", self.link)?;
        }
        Ok(())
    }
}

fn norm(p: &str) -> String {
    let p = p.trim_start_matches("./").trim_start_matches('/').trim_end_matches('/');
    if p.is_empty() || p == "." { ".".into() } else { p.to_string() }
}

/// The tree of a `podman export` / `docker export` tar: path -> (type, mode, owner, size,
/// content hash, link target). A hard link takes its target's data; its target path is kept
/// in `link` as `=TARGET`.
pub fn tar_tree(tar_path: &Path) -> BTreeMap<String, TarEntry> {
    let f = fs::File::open(tar_path).unwrap_or_else(|e| panic!("open {}: {e}", tar_path.display()));
    let mut a = tar::Archive::new(f);
    let mut out: BTreeMap<String, TarEntry> = BTreeMap::new();
    for e in a.entries().expect("tar entries") {
        let mut e = e.expect("tar entry");
        let h = e.header().clone();
        let path = norm(&String::from_utf8_lossy(&e.path_bytes()));
        let kind = match h.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => 'f',
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            tar::EntryType::Char => 'c',
            tar::EntryType::Block => 'b',
            tar::EntryType::Fifo => 'p',
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
            t => panic!("unexpected tar entry type {t:?} for {path}"),
        };
        let mode = h.mode().unwrap_or(0) & 0o7777;
        let uid = h.uid().unwrap_or(u64::MAX);
        let gid = h.gid().unwrap_or(u64::MAX);
        let link = e.link_name_bytes().map(|l| String::from_utf8_lossy(&l).to_string()).unwrap_or_default();
        let mut entry = TarEntry { kind, mode, uid, gid, size: 0, sha: String::new(), link: String::new() };
        match kind {
            'f' => {
                let mut h2 = Sha256::new();
                let mut buf = vec![0u8; 1 << 16];
                let mut n_total = 0u64;
                loop {
                    let n = e.read(&mut buf).expect("read tar data");
                    if n == 0 {
                        break;
                    }
                    n_total += n as u64;
                    h2.update(&buf[..n]);
                }
                entry.size = n_total;
                entry.sha = h2.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
            }
            'l' => {
                entry.size = link.len() as u64;
                entry.link = link;
            }
            'h' => {
                let target = norm(&link);
                let t = out
                    .get(&target)
                    .cloned()
                    .unwrap_or_else(|| panic!("hard link {path} -> missing {target}"));
                entry = TarEntry { link: format!("={target}"), ..t };
                entry.kind = 'f';
                entry.mode = mode;
                entry.uid = uid;
                entry.gid = gid;
            }
            'c' | 'b' => {
                entry.sha = format!(
                    "{}:{}",
                    h.device_major().ok().flatten().unwrap_or(0),
                    h.device_minor().ok().flatten().unwrap_or(0)
                );
            }
            _ => {}
        }
        out.insert(path, entry);
    }
    out
}

/// Every difference between two trees, ignoring paths for which `skip` is true.
pub fn diff_trees(
    a_name: &str,
    a: &BTreeMap<String, TarEntry>,
    b_name: &str,
    b: &BTreeMap<String, TarEntry>,
    skip: &dyn Fn(&str) -> bool,
) -> Vec<String> {
    let mut d = Vec::new();
    for (k, va) in a {
        if skip(k) {
            continue;
        }
        match b.get(k) {
            None => d.push(format!("only in {a_name}: {k}  ({va})")),
            Some(vb) if vb != va => d.push(format!("differs: {k}\n    {a_name}: {va}\n    {b_name}: {vb}")),
            _ => {}
        }
    }
    for (k, vb) in b {
        if !skip(k) && !a.contains_key(k) {
            d.push(format!("only in {b_name}: {k}  ({vb})"));
        }
    }
    d
}

/// A tree as lines (for failure messages).
pub fn tree_listing(t: &BTreeMap<String, TarEntry>) -> String {
    t.iter().map(|(k, v)| format!("{k}: {v}\n")).collect()
}
