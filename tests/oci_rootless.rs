//! Unprivileged unpack and diff (run as `nobody` through setpriv, since the
//! tests run as root): owners are ignored, device nodes become empty files
//! carrying `user.containers.override_stat`, and `diff` turns them back into
//! device entries.

#[path = "oci_common.rs"]
mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;

fn entry(name: &str, typ: u8, data: &[u8], mode: u32, uid: u64, dev: (u32, u32)) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).unwrap();
    h.set_entry_type(tar::EntryType::new(typ));
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_mtime(1_700_000_000);
    h.set_size(data.len() as u64);
    if typ == b'3' || typ == b'4' {
        h.set_device_major(dev.0).unwrap();
        h.set_device_minor(dev.1).unwrap();
    }
    h.set_cksum();
    let mut v = h.as_bytes().to_vec();
    v.extend_from_slice(data);
    v.resize(v.len().div_ceil(512) * 512, 0);
    v
}

fn as_nobody(args: &[&std::ffi::OsStr]) -> std::process::Output {
    assert!(
        std::path::Path::new("/usr/bin/setpriv").is_file() || which("setpriv"),
        "setpriv (util-linux) is needed to run the unprivileged tests"
    );
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin())
        .args(args)
        .output()
        .expect("run setpriv")
}

fn which(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

#[test]
fn unprivileged_unpack_records_devices_and_diff_restores_them() {
    if fsutil_euid() != 0 {
        // Already unprivileged: the plain CLI is the unprivileged path.
        return unprivileged_body(false);
    }
    unprivileged_body(true);
}

fn fsutil_euid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0)
}

fn unprivileged_body(via_setpriv: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("w");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let tar = dir.join("dev.tar");
    let archive = [
        entry("null", b'3', b"", 0o666, 0, (1, 3)),
        entry("sda", b'4', b"", 0o660, 0, (8, 0)),
        entry("f", b'0', b"abc", 0o4755, 1000, (0, 0)),
        entry("d/", b'5', b"", 0o755, 0, (0, 0)),
        entry("d/.wh.gone", b'0', b"", 0o644, 0, (0, 0)),
        vec![0u8; 1024],
    ]
    .concat();
    fs::write(&tar, archive).unwrap();
    fs::set_permissions(&tar, fs::Permissions::from_mode(0o644)).unwrap();
    let out = dir.join("out");
    let run_cmd = |args: &[&std::ffi::OsStr]| {
        if via_setpriv { as_nobody(args) } else { Command::new(bin()).args(args).output().unwrap() }
    };
    let o = run_cmd(&["unpack".as_ref(), tar.as_os_str(), out.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Devices are empty files with the real stat in an xattr.
    let x = layerfs::oci::xattrs_nofollow(&out.join("null")).unwrap();
    assert!(
        x.iter().any(|(k, v)| k == b"user.containers.override_stat" && v == b"0:0:0666:char-1-3"),
        "{x:?}"
    );
    let x = layerfs::oci::xattrs_nofollow(&out.join("sda")).unwrap();
    assert!(
        x.iter().any(|(k, v)| k == b"user.containers.override_stat" && v == b"0:0:0660:block-8-0"),
        "{x:?}"
    );
    assert!(fs::symlink_metadata(out.join("null")).unwrap().is_file());
    // Modes are kept, owners are ours.
    assert_eq!(fs::metadata(out.join("f")).unwrap().permissions().mode() & 0o7777, 0o4755);
    // The whiteout exists in some form.
    assert!(
        fs::symlink_metadata(out.join("d/gone")).is_ok()
            || fs::symlink_metadata(out.join("d/.wh.gone")).is_ok()
    );

    // diff (unprivileged too) gives the devices back.
    let layer = dir.join("diff.tar");
    let o = run_cmd(&["diff".as_ref(), out.as_os_str(), "-o".as_ref(), layer.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut ar = tar::Archive::new(fs::File::open(&layer).unwrap());
    let mut seen = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().to_string_lossy().into_owned();
        let h = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        seen.push(p.clone());
        match p.as_str() {
            "null" => {
                assert_eq!(h.entry_type(), tar::EntryType::Char);
                assert_eq!((h.device_major().unwrap(), h.device_minor().unwrap()), (Some(1), Some(3)));
                assert_eq!((h.uid().unwrap(), h.mode().unwrap()), (0, 0o666));
                assert!(e.pax_extensions().unwrap().is_none(), "override_stat must not be exported");
            }
            "sda" => assert_eq!(h.entry_type(), tar::EntryType::Block),
            "f" => assert_eq!((data.as_slice(), h.mode().unwrap()), (&b"abc"[..], 0o4755)),
            _ => {}
        }
    }
    assert!(seen.contains(&"d/.wh.gone".to_string()), "{seen:?}");
}

/// `diff` reads owners and modes from every override name a mount writes:
/// `security.fuseoverlayfs.override_stat` (`xattr_permissions=1`) and the older
/// `user.fuseoverlayfs.override_stat` as well as the containers one; none of them goes into
/// the layer as an xattr, and a hard link's second entry shows the same owner and mode as
/// its first. Only the containers name was read, and `=1` leaked its xattr into the layer.
#[test]
fn diff_reads_every_override_name() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("u");
    fs::create_dir_all(up.join("d")).unwrap();
    for (f, name, v) in [
        ("f1", "security.fuseoverlayfs.override_stat", "1000:1000:4750:file"),
        ("f2", "user.fuseoverlayfs.override_stat", "7:7:0640"),
        ("f3", "user.containers.override_stat", "12:34:0604:file"),
        ("d", "security.fuseoverlayfs.override_stat", "5:5:0700:dir"),
    ] {
        let p = up.join(f);
        if f != "d" {
            fs::write(&p, b"x").unwrap();
        }
        let o = Command::new("setfattr").args(["-n", name, "-v", v]).arg(&p).output().unwrap();
        assert!(o.status.success(), "{o:?}");
    }
    fs::hard_link(up.join("f3"), up.join("f3-link")).unwrap();
    let layer = dir.path().join("l.tar");
    run_ok(["diff".as_ref(), up.as_os_str(), "-o".as_ref(), layer.as_os_str()]);
    let mut ar = tar::Archive::new(fs::File::open(&layer).unwrap());
    let mut got = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        let p = e.path().unwrap().to_string_lossy().into_owned();
        let pax: Vec<String> = e
            .pax_extensions()
            .unwrap()
            .map(|x| x.map(|r| r.unwrap().key().unwrap().to_string()).collect())
            .unwrap_or_default();
        assert!(!pax.iter().any(|k| k.contains("override_stat")), "{p}: {pax:?}");
        got.push(format!("{p} {}:{} {:o}", h.uid().unwrap(), h.gid().unwrap(), h.mode().unwrap() & 0o7777));
    }
    got.sort();
    assert_eq!(
        got,
        ["d/ 5:5 700", "f1 1000:1000 4750", "f2 7:7 640", "f3 12:34 604", "f3-link 12:34 604"],
        "{got:?}"
    );
}

/// Unprivileged `--flatten` onto read-only directories (Fedora's `/usr/bin` is 0555): a later
/// layer adds to one and whites out in it, the directory keeps its mode; a failed unpack and
/// `store rm` clean up such directories. Failed with "Permission denied" and left a
/// `TARGET.tmp-*` directory that `rm -rf` could not remove either.
#[test]
fn unprivileged_flatten_and_cleanup_of_read_only_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("w");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let write = |name: &str, entries: &[Vec<u8>]| {
        let p = dir.join(name);
        fs::write(&p, [entries.concat(), vec![0u8; 1024]].concat()).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        p
    };
    let base = write(
        "base.tar",
        &[
            entry("usr/", b'5', b"", 0o755, 0, (0, 0)),
            entry("usr/bin/", b'5', b"", 0o555, 0, (0, 0)),
            entry("usr/bin/sh", b'0', b"sh", 0o755, 0, (0, 0)),
            entry("usr/bin/ro/", b'5', b"", 0o555, 0, (0, 0)),
            entry("usr/bin/ro/x", b'0', b"x", 0o644, 0, (0, 0)),
        ],
    );
    // Real layers declare the parents again.
    let next = write(
        "next.tar",
        &[
            entry("usr/", b'5', b"", 0o755, 0, (0, 0)),
            entry("usr/bin/", b'5', b"", 0o555, 0, (0, 0)),
            entry("usr/bin/tool", b'0', b"tool", 0o755, 0, (0, 0)),
            entry("usr/bin/.wh.sh", b'0', b"", 0o644, 0, (0, 0)),
            entry("usr/bin/ro/y", b'0', b"y", 0o644, 0, (0, 0)),
        ],
    );
    let run = |args: &[&std::ffi::OsStr]| {
        if fsutil_euid() != 0 { Command::new(bin()).args(args).output().unwrap() } else { as_nobody(args) }
    };
    let flat = dir.join("flat");
    let o =
        run(&["unpack".as_ref(), "--flatten".as_ref(), base.as_os_str(), next.as_os_str(), flat.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(fs::read(flat.join("usr/bin/tool")).unwrap(), b"tool");
    assert!(!flat.join("usr/bin/sh").exists());
    assert_eq!(fs::read(flat.join("usr/bin/ro/y")).unwrap(), b"y");
    assert_eq!(fs::metadata(flat.join("usr/bin")).unwrap().permissions().mode() & 0o7777, 0o555);
    assert_eq!(fs::metadata(flat.join("usr/bin/ro")).unwrap().permissions().mode() & 0o7777, 0o555);

    // A failure after the read-only directories were made: nothing is left beside the target.
    // A header that promises 4096 bytes of data and has none.
    let bad = dir.join("bad.tar");
    let mut h = tar::Header::new_ustar();
    h.set_path("usr/bin/big").unwrap();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(4096);
    h.set_cksum();
    fs::write(&bad, h.as_bytes()).unwrap();
    fs::set_permissions(&bad, fs::Permissions::from_mode(0o644)).unwrap();
    let failed = dir.join("failed");
    let o = run(&[
        "unpack".as_ref(),
        "--flatten".as_ref(),
        base.as_os_str(),
        bad.as_os_str(),
        failed.as_os_str(),
    ]);
    assert!(!o.status.success());
    let left: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(
        left.iter().all(|n| !n.to_string_lossy().starts_with("failed")),
        "{left:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // `store rm` of a layer holding read-only directories removes all of it.
    let store = dir.join("store");
    let o =
        run(&["store".as_ref(), "--root".as_ref(), store.as_os_str(), "import".as_ref(), base.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = String::from_utf8_lossy(&o.stdout).split_whitespace().last().unwrap().to_string();
    let o = run(&["store".as_ref(), "--root".as_ref(), store.as_os_str(), "rm".as_ref(), id.as_ref()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for sub in ["layers", "tmp"] {
        let n = fs::read_dir(store.join(sub)).unwrap().count();
        assert_eq!(n, 0, "{sub} not empty after store rm");
    }
}
