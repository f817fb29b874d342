//! `layerfs check`: broken uppers built by hand are reported (kind and path) and repaired, the
//! repair keeps the merged view, and the upper of a normal layerfs session is clean.

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run_check(args: &[&std::ffi::OsStr]) -> Out {
    let o = Command::new(layerfs_bin()).arg("check").args(args).output().expect("run layerfs check");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn check(upper: &Path, work: Option<&Path>, repair: bool) -> Out {
    let mut a: Vec<&std::ffi::OsStr> = vec![upper.as_os_str()];
    if let Some(w) = work {
        a.push("--work".as_ref());
        a.push(w.as_os_str());
    }
    if repair {
        a.push("--repair".as_ref());
    }
    run_check(&a)
}

/// The `(kind, path)` of every finding line (not `repaired:`/`remaining` lines).
fn findings(out: &str) -> Vec<(String, String)> {
    let mut v: Vec<_> = out
        .lines()
        .filter(|l| !l.starts_with("repaired: ") && !l.starts_with("remaining "))
        .map(|l| {
            let mut it = l.splitn(3, ": ");
            (it.next().unwrap().to_string(), it.next().unwrap_or("").to_string())
        })
        .collect();
    v.sort();
    v
}

fn is_root() -> bool {
    // SAFETY: always safe.
    unsafe { libc::geteuid() == 0 }
}

fn p(base: &Path, rel: &str) -> String {
    format!("{}/{rel}", base.display())
}

#[test]
fn usage_and_io_errors_exit_2() {
    let s = Scratch::new();
    assert_eq!(run_check(&[]).code, 2);
    assert_eq!(run_check(&["--bogus".as_ref()]).code, 2);
    let missing = s.dir.path().join("missing");
    let o = check(&missing, None, false);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.starts_with("layerfs: check: "), "{}", o.stderr);
    let f = s.dir.path().join("file");
    fs::write(&f, b"x").unwrap();
    assert_eq!(check(&f, None, false).code, 2);
    let o = run_check(&["--help".as_ref()]);
    assert_eq!(o.code, 0);
    assert!(o.stdout.contains("--repair"), "{}", o.stdout);
}

#[test]
fn clean_upper_exits_0() {
    let s = Scratch::new();
    let u = s.path("u");
    let w = s.path("w");
    fs::create_dir_all(u.join("a/b")).unwrap();
    fs::create_dir_all(w.join("work")).unwrap();
    fs::write(u.join("a/f"), b"data").unwrap();
    fs::write(u.join("a/.wh.gone"), b"").unwrap();
    symlink("/", u.join("a/rootlink")).unwrap();
    symlink("../../..", u.join("escape")).unwrap();
    let o = check(&u, Some(&w), false);
    assert_eq!(o.code, 0, "{}\n{}", o.stdout, o.stderr);
    assert_eq!(o.stdout, "");
}

#[test]
fn workdir_leftovers_reported_and_emptied() {
    let s = Scratch::new();
    let u = s.path("u");
    let w = s.path("w");
    let work = w.join("work");
    fs::create_dir_all(work.join("#7/deep/er")).unwrap();
    fs::write(work.join("#7/deep/er/f"), b"x").unwrap();
    fs::write(work.join("#1"), vec![7u8; 4096]).unwrap();
    fs::write(work.join("#2"), b"").unwrap();
    symlink("/etc", work.join("#3")).unwrap();
    let victim = s.path("victim");
    fs::write(victim.join("keep"), b"k").unwrap();
    symlink(&victim, work.join("#4")).unwrap();

    let o = check(&u, Some(&w), false);
    assert_eq!(o.code, 1, "{}\n{}", o.stdout, o.stderr);
    let wp = work.display().to_string();
    assert_eq!(
        findings(&o.stdout),
        vec![
            ("half-copy".into(), format!("{wp}/#1")),
            ("half-copy".into(), format!("{wp}/#2")),
            ("stale-work".into(), format!("{wp}/#3")),
            ("stale-work".into(), format!("{wp}/#4")),
            ("stale-work".into(), format!("{wp}/#7")),
        ],
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("4096 bytes"), "{}", o.stdout);
    assert!(o.stdout.contains(&format!("half-copy: {wp}/#2: zero-length")), "{}", o.stdout);

    let o = check(&u, Some(&w), true);
    assert_eq!(o.code, 0, "{}\n{}", o.stdout, o.stderr);
    assert_eq!(o.stdout.lines().filter(|l| l.starts_with("repaired: ")).count(), 5, "{}", o.stdout);
    assert_eq!(fs::read_dir(&work).unwrap().count(), 0);
    assert!(victim.join("keep").exists(), "a symlink in work was followed");
    assert!(Path::new("/etc/passwd").exists());
    assert_eq!(check(&u, Some(&w), false).code, 0);
}

#[test]
fn work_that_is_a_symlink_is_not_followed() {
    let s = Scratch::new();
    let u = s.path("u");
    let w = s.path("w");
    let victim = s.path("victim");
    fs::write(victim.join("keep"), b"k").unwrap();
    symlink(&victim, w.join("work")).unwrap();
    let o = check(&u, Some(&w), false);
    assert_eq!(o.code, 1);
    assert_eq!(findings(&o.stdout), vec![("bad-work".into(), p(&w, "work"))]);
    let o = check(&u, Some(&w), true);
    assert_eq!(o.code, 0, "{}\n{}", o.stdout, o.stderr);
    assert!(victim.join("keep").exists());
    assert!(fs::symlink_metadata(w.join("work")).is_err());
}

/// Every upper-side finding, built by hand.
fn broken_upper(u: &Path) {
    // A `.wh.` beside a recreated file, symlink, and a recreated (non-opaque) directory.
    fs::write(u.join("file"), b"new").unwrap();
    fs::write(u.join(".wh.file"), b"").unwrap();
    symlink("target", u.join("link")).unwrap();
    fs::write(u.join(".wh.link"), b"").unwrap();
    fs::create_dir_all(u.join("dir")).unwrap();
    fs::write(u.join("dir/upper-only"), b"u").unwrap();
    fs::write(u.join(".wh.dir"), b"").unwrap();
    // Opaque by xattr: whiteouts inside are redundant (both forms, one beside a real name).
    fs::create_dir_all(u.join("opq/sub")).unwrap();
    set_xattr(&u.join("opq"), "trusted.overlay.opaque", b"y");
    fs::write(u.join("opq/.wh.a"), b"").unwrap();
    fs::write(u.join("opq/.wh.kept"), b"").unwrap();
    fs::write(u.join("opq/kept"), b"k").unwrap();
    mknod_whiteout(&u.join("opq/b"));
    // Opaque by marker only: a whiteout inside is redundant; the marker is info only.
    fs::create_dir_all(u.join("mark")).unwrap();
    fs::write(u.join("mark/.wh..wh..opq"), b"").unwrap();
    fs::write(u.join("mark/.wh.c"), b"").unwrap();
    // Deep, and a symlink to outside that must not be walked.
    fs::create_dir_all(u.join("x/y/z")).unwrap();
    fs::write(u.join("x/y/z/.wh.zz"), b"").unwrap();
    fs::write(u.join("x/y/z/zz"), b"").unwrap();
    symlink("/", u.join("x/root")).unwrap();
    // Fine: a plain whiteout, a char-device whiteout, an opaque dir without whiteouts.
    fs::write(u.join(".wh.plain"), b"").unwrap();
    mknod_whiteout(&u.join("chardev"));
}

fn lower_for_broken(l: &Path) {
    for d in ["dir", "opq", "mark", "x/y/z"] {
        fs::create_dir_all(l.join(d)).unwrap();
    }
    fs::write(l.join("dir/lower-only"), b"l").unwrap();
    fs::write(l.join("file"), b"old").unwrap();
    fs::write(l.join("plain"), b"p").unwrap();
    fs::write(l.join("chardev"), b"c").unwrap();
    fs::write(l.join("opq/a"), b"a").unwrap();
    fs::write(l.join("opq/lower"), b"a").unwrap();
    fs::write(l.join("mark/c"), b"c").unwrap();
    fs::write(l.join("x/y/z/zz"), b"lower zz").unwrap();
}

#[test]
fn upper_findings_reported_and_repaired() {
    assert!(is_root(), "needs root (trusted xattrs, mknod)");
    let s = Scratch::new();
    let u = s.path("u");
    broken_upper(&u);
    let o = check(&u, None, false);
    assert_eq!(o.code, 1, "{}\n{}", o.stdout, o.stderr);
    let mut want: Vec<(String, String)> = vec![
        ("whiteout-conflict".into(), p(&u, ".wh.file")),
        ("whiteout-conflict".into(), p(&u, ".wh.link")),
        ("whiteout-conflict".into(), p(&u, ".wh.dir")),
        ("whiteout-in-opaque".into(), p(&u, "opq/.wh.a")),
        ("whiteout-in-opaque".into(), p(&u, "opq/.wh.kept")),
        ("whiteout-in-opaque".into(), p(&u, "opq/b")),
        ("whiteout-in-opaque".into(), p(&u, "mark/.wh.c")),
        ("opaque-marker".into(), p(&u, "mark/.wh..wh..opq")),
        ("whiteout-conflict".into(), p(&u, "x/y/z/.wh.zz")),
    ];
    want.sort();
    assert_eq!(findings(&o.stdout), want, "{}", o.stdout);
    for l in o.stdout.lines() {
        assert_eq!(l.splitn(3, ": ").count(), 3, "not `kind: path: explanation`: {l}");
    }

    let o = check(&u, None, true);
    assert_eq!(o.code, 0, "{}\n{}", o.stdout, o.stderr);
    assert_eq!(o.stdout.lines().filter(|l| l.starts_with("repaired: ")).count(), 8, "{}", o.stdout);
    assert!(o.stdout.contains(&format!("repaired: {}: made dir opaque", p(&u, ".wh.dir"))), "{}", o.stdout);
    // Real entries stay; redundant whiteouts are gone; the info marker stays.
    for keep in ["file", "link", "dir/upper-only", "opq/kept", "opq/sub", "x/y/z/zz", ".wh.plain", "chardev"]
    {
        assert!(fs::symlink_metadata(u.join(keep)).is_ok(), "{keep} removed");
    }
    for gone in [".wh.file", ".wh.link", ".wh.dir", "opq/.wh.a", "opq/.wh.kept", "opq/b", "mark/.wh.c"] {
        assert!(fs::symlink_metadata(u.join(gone)).is_err(), "{gone} kept");
    }
    assert!(u.join("mark/.wh..wh..opq").exists());
    let o = check(&u, None, false);
    assert_eq!(o.code, 0, "{}", o.stdout);
    assert_eq!(findings(&o.stdout), vec![("opaque-marker".into(), p(&u, "mark/.wh..wh..opq"))]);
}

/// The repair never changes what a layerfs mount shows (the `.wh.dir` beside `dir` is the
/// delicate one: it made `dir` opaque).
#[test]
fn repair_keeps_the_merged_view() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let l = s.path("l");
    let u = s.path("u");
    let w = s.path("w");
    let m = s.path("m");
    lower_for_broken(&l);
    broken_upper(&u);
    let before = {
        let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
        snapshot(&m, false)
    };
    assert!(!before.contains_key("dir/lower-only"), "test premise: .wh.dir makes dir opaque");
    let o = check(&u, Some(&w), true);
    assert_eq!(o.code, 0, "{}\n{}", o.stdout, o.stderr);
    let after = {
        let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
        snapshot(&m, false)
    };
    let d = diff_snapshots("before", &before, "after", &after);
    assert!(d.is_empty(), "repair changed the merged view:\n{}", d.join("\n"));
}

#[test]
fn repair_refused_on_a_mounted_kernel_upper() {
    if !can_kernel_overlay() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::write(u.join("f"), b"x").unwrap();
    fs::write(u.join(".wh.f"), b"").unwrap();
    let _g = mount_overlay(std::slice::from_ref(&l), Some((&u, &w)), &m);
    let o = check(&u, None, true);
    assert_eq!(o.code, 2, "{}\n{}", o.stdout, o.stderr);
    assert!(u.join(".wh.f").exists());
}

/// What kernel overlayfs leaves after a clean session is healthy: the one whiteout it keeps in
/// `work/` (`#<hex>`, char device 0/0) to link new whiteouts to was reported as a leftover.
#[test]
fn a_kernel_session_leaves_a_healthy_upper_and_workdir() {
    if !can_kernel_overlay() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    fs::write(l.join("f"), b"x").unwrap();
    fs::write(l.join("g"), b"y").unwrap();
    {
        let mut g = mount_overlay(std::slice::from_ref(&l), Some((&u, &w)), &m);
        fs::remove_file(m.join("f")).unwrap();
        fs::remove_file(m.join("g")).unwrap();
        g.unmount();
    }
    let kept: Vec<_> = fs::read_dir(w.join("work")).unwrap().map(|e| e.unwrap().file_name()).collect();
    let o = check(&u, Some(&w), false);
    assert_eq!(o.code, 0, "work holds {kept:?}\n{}\n{}", o.stdout, o.stderr);
}

#[test]
fn odd_names_stay_on_one_line() {
    let s = Scratch::new();
    let u = s.path("u");
    let odd = std::ffi::OsStr::from_bytes(b"a\nb\xff");
    fs::write(u.join(odd), b"x").unwrap();
    let mut wh = b".wh.".to_vec();
    wh.extend_from_slice(odd.as_bytes());
    fs::write(u.join(std::ffi::OsStr::from_bytes(&wh)), b"").unwrap();
    let o = check(&u, None, false);
    assert_eq!(o.code, 1);
    assert_eq!(o.stdout.lines().count(), 1, "{}", o.stdout);
    assert!(o.stdout.contains(".wh.a\\x0ab\\xff"), "{}", o.stdout);
}

/// A deep upper (beyond the default fd limit of 1024 levels) is walked without error.
#[test]
fn deep_upper() {
    let s = Scratch::new();
    let u = s.path("u");
    let mut d: PathBuf = u.clone();
    // Build 1500 levels fd-relatively by chdir-free relative creation in chunks.
    let mut rel = PathBuf::new();
    for i in 0..1500 {
        rel.push("d");
        if i % 100 == 99 {
            fs::create_dir_all(d.join(&rel)).unwrap();
            d = d.join(&rel);
            rel = PathBuf::new();
        }
    }
    fs::write(d.join("f"), b"x").unwrap();
    fs::write(d.join(".wh.f"), b"").unwrap();
    let o = check(&u, None, false);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert_eq!(o.stdout.lines().count(), 1);
    assert!(o.stdout.starts_with("whiteout-conflict: "), "{}", o.stdout);
}

/// What a normal layerfs session leaves is clean, in both whiteout forms.
#[test]
fn normal_session_upper_is_clean() {
    if !can_mount() {
        return;
    }
    for opts in ["", "whiteout=wh"] {
        let s = Scratch::new();
        let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
        fs::create_dir_all(l.join("etc/sub")).unwrap();
        fs::create_dir_all(l.join("gone/inner")).unwrap();
        fs::write(l.join("etc/conf"), b"conf").unwrap();
        fs::write(l.join("etc/sub/x"), b"x").unwrap();
        fs::write(l.join("gone/inner/y"), b"y").unwrap();
        fs::write(l.join("del"), b"d").unwrap();
        fs::write(l.join("big"), vec![1u8; 1 << 20]).unwrap();
        {
            let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, opts);
            fs::write(m.join("etc/conf"), b"changed").unwrap();
            fs::OpenOptions::new().append(true).open(m.join("big")).unwrap();
            fs::remove_file(m.join("del")).unwrap();
            fs::write(m.join("del"), b"recreated").unwrap();
            fs::remove_dir_all(m.join("gone")).unwrap();
            fs::create_dir(m.join("gone")).unwrap();
            fs::write(m.join("gone/new"), b"n").unwrap();
            fs::rename(m.join("etc/sub/x"), m.join("etc/x2")).unwrap();
            fs::create_dir_all(m.join("new/dir")).unwrap();
            fs::write(m.join("new/dir/f"), b"f").unwrap();
            fs::remove_file(m.join("new/dir/f")).unwrap();
            symlink("conf", m.join("etc/l")).unwrap();
            fs::remove_file(m.join("etc/l")).unwrap();
        }
        let o = check(&u, Some(&w), false);
        assert_eq!(o.code, 0, "[{opts}] {}\n{}", o.stdout, o.stderr);
        assert!(
            o.stdout.lines().all(|l| l.starts_with("opaque-marker: ")),
            "[{opts}] unexpected findings:\n{}",
            o.stdout
        );
    }
}

/// An upper named through a symlink is followed, as a mount's options are (it was refused as
/// "not a directory").
#[test]
fn an_upper_named_through_a_symlink_is_checked() {
    let s = Scratch::new();
    let u = s.path("u");
    fs::write(u.join(".wh.gone"), b"").unwrap();
    let link = s.dir.path().join("link");
    symlink(&u, &link).unwrap();
    let o = check(&link, None, false);
    assert_eq!(o.code, 0, "{}\n{}", o.stdout, o.stderr);
}
