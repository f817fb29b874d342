//! Real SQLite databases from a lower layer, used by several processes at once through the
//! mount: writers in transactions, readers checking an invariant every transaction keeps (some
//! through a mapping of the file, one opened read-only before the copy-up), and `VACUUM`
//! rewriting the whole file meanwhile; one database with a rollback journal, one in WAL mode
//! (whose `-shm` file every connection maps shared). fuse-overlayfs users have reported SQLite
//! files silently corrupted (wrong pages, old content with zeros after it); this is the
//! check that layerfs does not do that, in each way it can serve file data.
//!
//! The writers' classes of rows do not overlap, so the final contents depend on the seed
//! alone: they must match what the same workload leaves on kernel overlayfs, and the upper
//! directories must hold the same names. The driver is `tests/sqlite_work.py` (Python's
//! `sqlite3`); `LAYERFS_SQLITE_OPS` sets the transactions per writer (default 150).

mod common;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const ROWS: u32 = 4000;
const SEED: u32 = 7;
const CLASSES: u32 = 4;
const LIMIT: Duration = Duration::from_secs(300);

fn driver() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sqlite_work.py")
}

/// The Python that runs the driver: Debian's (`scripts/deps.sh` installs it, and its
/// standard library has `sqlite3`), not whichever `python3` comes first on PATH (a pyenv
/// build may lack the module); `python3` where there is none.
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" }
}

fn ops() -> u32 {
    std::env::var("LAYERFS_SQLITE_OPS").ok().and_then(|s| s.parse().ok()).unwrap_or(150)
}

/// Whether Python's sqlite3 is here; in CI (which installs python3) its absence fails.
fn have_sqlite() -> bool {
    let ok = Command::new(python())
        .args(["-c", "import sqlite3"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(!must_mount(), "python3 with sqlite3 is needed in CI (scripts/deps.sh installs it)");
        eprintln!("skipped: no python3 sqlite3");
    }
    ok
}

/// Runs the driver to completion; panics with its output when it fails.
fn run(args: &[&str]) -> String {
    let o = Command::new(python()).arg(driver()).args(args).output().expect("run python3");
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "sqlite_work.py {args:?} failed:\n{text}");
    text
}

/// The lower layer: `j.db` (rollback journal) and `w.db` (WAL), made once per test.
fn make_lower(l: &Path) {
    for (db, mode) in [("j.db", "delete"), ("w.db", "wal")] {
        run(&["init", &l.join(db).to_string_lossy(), mode, &ROWS.to_string(), &SEED.to_string()]);
    }
}

/// A driver process in the background, its output to a file.
struct Job {
    what: String,
    child: Child,
    out: PathBuf,
}

/// A job still running when dropped (a test failing) is killed, so no process is left
/// holding the mount.
impl Drop for Job {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn spawn(logs: &Path, what: &str, args: &[String]) -> Job {
    let out = logs.join(format!("{}.log", what.replace([' ', '/'], "_")));
    let f = File::create(&out).unwrap();
    let child = Command::new(python())
        .arg(driver())
        .args(args)
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .expect("spawn python3");
    Job { what: what.to_string(), child, out }
}

/// Waits for every job (killing all of them at the deadline); panics naming the ones that
/// failed, with their output.
fn finish(jobs: &mut [Job], deadline: Instant) {
    let mut failed = Vec::new();
    for j in jobs.iter_mut() {
        let st = loop {
            if let Some(st) = j.child.try_wait().unwrap() {
                break Some(st);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        match st {
            Some(st) if st.success() => {}
            other => {
                let _ = j.child.kill();
                let _ = j.child.wait();
                let why = other.map_or("timed out".to_string(), |s| s.to_string());
                failed.push(format!(
                    "{} ({why}):\n{}",
                    j.what,
                    fs::read_to_string(&j.out).unwrap_or_default()
                ));
            }
        }
    }
    if !failed.is_empty() {
        panic!("{} SQLite job(s) failed:\n{}", failed.len(), failed.join("\n"));
    }
}

/// The workload on the merged view at `m`; returns each database's dump.
fn workload(m: &Path, logs: &Path) -> Vec<String> {
    let deadline = Instant::now() + LIMIT;
    let stop = logs.join("stop");
    let _ = fs::remove_file(&stop);
    let p = |db: &str| m.join(db).to_string_lossy().into_owned();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let (rows, stop_s) = (ROWS.to_string(), stop.to_string_lossy().into_owned());
    let mut readers = Vec::new();
    // Opened read-only while the file is still the lower one: it must go on seeing every
    // commit (kernel overlayfs switches such descriptors to the copy), and its locks must
    // still exclude the writers'.
    let mut early = spawn(logs, "reader j.db ro", &s(&["reader", &p("j.db"), &rows, "0", &stop_s, "ro"]));
    wait_until(Duration::from_secs(60), || {
        fs::read_to_string(&early.out).unwrap_or_default().contains("ready")
    });
    let said = fs::read_to_string(&early.out).unwrap_or_default();
    assert!(
        said.contains("ready") && early.child.try_wait().unwrap().is_none(),
        "the early reader is not reading: {said}"
    );
    readers.push(early);
    for db in ["j.db", "w.db"] {
        readers.push(spawn(logs, &format!("reader {db}"), &s(&["reader", &p(db), &rows, "0", &stop_s])));
        readers.push(spawn(
            logs,
            &format!("reader {db} mmap"),
            &s(&["reader", &p(db), &rows, "67108864", &stop_s]),
        ));
        readers.push(spawn(logs, &format!("vacuum {db}"), &s(&["vacuum", &p(db), &stop_s])));
    }
    let mut writers = Vec::new();
    for db in ["j.db", "w.db"] {
        for c in 0..CLASSES {
            let a = s(&["writer", &p(db), &c.to_string(), &ops().to_string(), &SEED.to_string(), &rows]);
            writers.push(spawn(logs, &format!("writer {db} {c}"), &a));
        }
    }
    let t = Instant::now();
    finish(&mut writers, deadline);
    File::create(&stop).unwrap();
    finish(&mut readers, deadline);
    eprintln!("sqlite: writers done in {:.1?}", t.elapsed());
    let dumps: Vec<String> =
        ["j.db", "w.db"].iter().map(|db| run(&["dump", &p(db)]).trim().to_string()).collect();
    for d in &dumps {
        assert!(d.starts_with("integrity ok "), "a database is damaged: {d}");
    }
    // Each reader's last view, taken once the writers were done, is the final database.
    for r in readers.iter().filter(|r| r.what.starts_with("reader")) {
        let out = fs::read_to_string(&r.out).unwrap();
        let want = if r.what.contains("w.db") { &dumps[1] } else { &dumps[0] };
        let last = out.lines().find_map(|l| l.strip_prefix("final ")).unwrap_or("(none)");
        assert_eq!(last, want, "{} ended seeing another database", r.what);
    }
    dumps
}

/// Each database's dump, and the upper directory's names and kinds.
type Outcome = (Vec<String>, Vec<(String, char)>);

/// Names and kinds in a directory tree.
fn names(root: &Path) -> Vec<(String, char)> {
    snapshot(root, false).into_iter().map(|(k, e)| (k, e.kind)).collect()
}

/// What the workload leaves on kernel overlayfs: the dumps and the upper's names (run once
/// for all the tests of this file).
fn on_kernel() -> Outcome {
    static KERNEL: std::sync::OnceLock<Outcome> = std::sync::OnceLock::new();
    KERNEL.get_or_init(kernel_run).clone()
}

fn kernel_run() -> Outcome {
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    make_lower(&l);
    let mut g = mount_overlay(std::slice::from_ref(&l), Some((&u, &w)), &m);
    let dumps = workload(&m, &s.path("logs"));
    g.unmount();
    (dumps, names(&u))
}

fn sqlite_with(extra: &str) {
    if !can_mount() || !can_kernel_overlay() || !have_sqlite() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    make_lower(&l);
    let lower_before = snapshot(&l, true);
    let mut g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, extra);
    let dumps = workload(&m, &s.path("logs"));
    g.unmount();
    let (kdumps, knames) = on_kernel();
    assert_eq!(dumps, kdumps, "databases differ from kernel overlayfs's ({extra:?})");
    assert_eq!(names(&u), knames, "upper names differ from kernel overlayfs's ({extra:?})");
    assert!(snapshot(&l, true) == lower_before, "the lower layer changed");
    // What the upper holds is what a new mount shows.
    let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, extra);
    let again: Vec<String> = ["j.db", "w.db"]
        .iter()
        .map(|db| run(&["dump", &m.join(db).to_string_lossy()]).trim().to_string())
        .collect();
    assert_eq!(again, dumps, "databases after a remount ({extra:?})");
}

/// The default mount: as root, upper files are passed through once copied up.
#[test]
fn sqlite_default() {
    sqlite_with("");
}

/// Every byte through the server and FUSE's page cache, as a rootless mount serves them.
#[test]
fn sqlite_served_by_the_server() {
    sqlite_with("passthrough=0");
}

/// The same with the kernel's writeback cache.
#[test]
fn sqlite_writeback_cache() {
    sqlite_with("passthrough=0,writeback=1");
}
