//! The OCI tools against real layer tarballs (../shared/testdata/layers):
//! DiffIDs, ChainIDs, `--flatten` against umoci's expected trees, and
//! unpack -> diff -> unpack round trips in both whiteout forms.

#[path = "oci_common.rs"]
mod common;
#[path = "common/signals.rs"]
mod signals;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use common::*;
use layerfs::oci::{self, UnpackOptions, WhiteoutMode};
use signals::default_signals;

#[test]
fn fixtures_are_present_and_match_sha256sums() {
    let dir = fixtures();
    let sums = fs::read_to_string(dir.join("SHA256SUMS")).expect("SHA256SUMS");
    let mut n = 0;
    for line in sums.lines().filter(|l| !l.trim().is_empty()) {
        let (hex, name) = line.split_once("  ").expect("sha256sum format");
        assert_eq!(sha256_file(&dir.join(name)), hex, "{name}");
        assert_eq!(diff_id_of(name), format!("sha256:{hex}"), "README and SHA256SUMS disagree on {name}");
        n += 1;
    }
    assert_eq!(n, DIFF_IDS.len());
}

#[test]
fn digest_gives_readme_diff_ids() {
    for (name, hex) in DIFF_IDS {
        let (d, size) = oci::digest::diff_id_of_file(&fixture(name)).unwrap();
        assert_eq!(d, format!("sha256:{hex}"), "{name}");
        assert_eq!(size, fs::metadata(fixture(name)).unwrap().len());
    }
    // The CLI: one line per layer, no chainid line for a single layer.
    let out = run_ok(["digest".as_ref(), s(&fixture("fuse-4-empty.tar"))]);
    let out = String::from_utf8(out).unwrap();
    assert_eq!(
        out,
        format!("{}  {}\n", diff_id_of("fuse-4-empty.tar"), fixture("fuse-4-empty.tar").display())
    );
}

/// ChainIDs computed independently with sha2 (the README lists none).
fn independent_chain_id(tars: &[&str]) -> String {
    let mut chain = diff_id_of(tars[0]);
    for t in &tars[1..] {
        chain = format!("sha256:{}", sha256_hex(format!("{chain} {}", diff_id_of(t)).as_bytes()));
    }
    chain
}

#[test]
fn digest_prints_chain_ids() {
    for (_, tars) in CHAINS {
        let want = independent_chain_id(tars);
        let ids: Vec<String> = tars.iter().map(|t| diff_id_of(t)).collect();
        assert_eq!(oci::chain_ids(&ids).last().unwrap(), &want);
        let mut args = vec!["digest".into()];
        args.extend(tars.iter().map(|t| fixture(t).into_os_string()));
        let out = String::from_utf8(run_ok(&args)).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), tars.len() + 1, "{out}");
        for (line, t) in lines.iter().zip(tars.iter()) {
            assert_eq!(*line, format!("{}  {}", diff_id_of(t), fixture(t).display()));
        }
        assert_eq!(lines[tars.len()], format!("chainid: {want}"));
    }
}

#[test]
fn digest_of_compressed_layers_is_the_uncompressed_diff_id() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("native-1-add.tar");
    let data = fs::read(&src).unwrap();
    let gz = tmp.path().join("l.tar.gz");
    let mut e = flate2::write::GzEncoder::new(fs::File::create(&gz).unwrap(), flate2::Compression::default());
    e.write_all(&data).unwrap();
    e.finish().unwrap();
    let zs = tmp.path().join("l.tar.zst");
    fs::write(&zs, zstd::encode_all(&data[..], 3).unwrap()).unwrap();
    for p in [&gz, &zs] {
        let (d, _) = oci::digest::diff_id_of_file(p).unwrap();
        assert_eq!(d, diff_id_of("native-1-add.tar"), "{}", p.display());
    }
    // And both unpack to the same tree as the plain tar.
    let plain = tmp.path().join("plain");
    oci::unpack(&[src], &plain, &UnpackOptions::default()).unwrap();
    for p in [&gz, &zs] {
        let t = tmp.path().join(format!("u-{}", p.extension().unwrap().to_string_lossy()));
        let r = oci::unpack(std::slice::from_ref(p), &t, &UnpackOptions::default()).unwrap();
        assert_eq!(r.diff_ids, vec![diff_id_of("native-1-add.tar")]);
        assert_same_snapshot(&snapshot(&t), &snapshot(&plain), "compressed unpack");
    }
}

#[test]
fn flatten_matches_umoci_expected_trees() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, (expected, tars)) in CHAINS.iter().enumerate() {
        let target = tmp.path().join(format!("flat-{i}"));
        let paths: Vec<PathBuf> = tars.iter().map(|t| fixture(t)).collect();
        let opts = UnpackOptions { whiteouts: WhiteoutMode::Auto, flatten: true, diff_ids: true };
        let rep = oci::unpack(&paths, &target, &opts).unwrap_or_else(|e| panic!("{expected}: {e}"));
        let ids: Vec<String> = tars.iter().map(|t| diff_id_of(t)).collect();
        assert_eq!(rep.diff_ids, ids);
        assert_same_listing(&listing(&target), &read_expected(expected), expected);
    }
}

#[test]
fn flatten_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let (expected, tars) = CHAINS[0];
    let target = tmp.path().join("cli-flat");
    let mut args = vec!["unpack".into(), "--flatten".into()];
    args.extend(tars.iter().map(|t| fixture(t).into_os_string()));
    args.push(target.clone().into_os_string());
    run_ok(&args);
    assert_same_listing(&listing(&target), &read_expected(expected), expected);
    // Several tars without --flatten are refused.
    let mut args = vec!["unpack".into()];
    args.extend(tars.iter().map(|t| fixture(t).into_os_string()));
    args.push(tmp.path().join("nope").into_os_string());
    let (code, _, err) = run(&args);
    assert_ne!(code, 0);
    assert!(err.starts_with("layerfs: ") && err.contains("--flatten"), "{err}");
    assert!(!tmp.path().join("nope").exists());
}

fn unpack_one(tar: &Path, target: &Path, form: WhiteoutMode) {
    let opts = UnpackOptions { whiteouts: form, flatten: false, diff_ids: true };
    oci::unpack(&[tar.to_path_buf()], target, &opts)
        .unwrap_or_else(|e| panic!("unpack {}: {e}", tar.display()));
}

/// What makes a directory opaque or a path a whiteout in `root`, as a list.
fn markers(root: &Path) -> Vec<String> {
    snapshot(root)
        .into_iter()
        .filter(|(p, d)| {
            p.rsplit('/').next().unwrap().starts_with(".wh.")
                || d.starts_with("char")
                || d.contains("overlay.opaque")
        })
        .map(|(p, d)| format!("{p}: {d}"))
        .collect()
}

#[test]
fn unpack_diff_unpack_round_trips_in_both_forms() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, _) in DIFF_IDS {
        for (fi, form) in [WhiteoutMode::Chardev, WhiteoutMode::Wh].into_iter().enumerate() {
            let what = format!("{name} ({form:?})");
            let base = tmp.path().join(format!("{name}-{fi}"));
            fs::create_dir(&base).unwrap();
            let a = base.join("a");
            unpack_one(&fixture(name), &a, form);
            let snap_a = snapshot(&a);

            // Whiteouts and opaque markers are in the chosen form.
            let m = markers(&a);
            if form == WhiteoutMode::Chardev {
                assert!(m.iter().all(|l| !l.contains("/.wh.") && !l.starts_with(".wh.")), "{what}: {m:#?}");
            } else {
                assert!(m.iter().all(|l| !l.contains(": char")), "{what}: {m:#?}");
            }

            // diff twice: byte-identical.
            let t1 = base.join("1.tar");
            let t2 = base.join("2.tar");
            let r1 = oci::export_to_file(&a, &t1).unwrap();
            let r2 = oci::export_to_file(&a, &t2).unwrap();
            let b1 = fs::read(&t1).unwrap();
            assert_eq!(b1, fs::read(&t2).unwrap(), "{what}: diff is not deterministic");
            assert_eq!(r1.diff_id, r2.diff_id);
            assert_eq!(r1.diff_id, format!("sha256:{}", sha256_hex(&b1)));
            assert_eq!(r1.size, b1.len() as u64);

            // unpack the diff: the same tree.
            let b = base.join("b");
            unpack_one(&t1, &b, form);
            assert_same_snapshot(&snapshot(&b), &snap_a, &what);

            // and the same tree gives the same bytes again.
            let t3 = base.join("3.tar");
            oci::export_to_file(&b, &t3).unwrap();
            assert_eq!(b1, fs::read(&t3).unwrap(), "{what}: diff of the round-tripped tree differs");
            fs::remove_dir_all(&base).unwrap();
        }
    }
}

#[test]
fn whiteout_forms_of_native_2() {
    let tmp = tempfile::tempdir().unwrap();
    let c = tmp.path().join("c");
    unpack_one(&fixture("native-2-delete-opaque.tar"), &c, WhiteoutMode::Chardev);
    let snap = snapshot(&c);
    for p in ["etc/gone", "bin/ls", "newdir/deep/n.txt"] {
        assert!(snap[p].starts_with("char ") && snap[p].contains("rdev=0:0"), "{p}: {}", snap[p]);
    }
    assert!(snap["etc/keep"].contains("xattr:trusted.overlay.opaque=y"), "{}", snap["etc/keep"]);
    assert!(!snap.contains_key("etc/keep/.wh..wh..opq"));
    assert!(snap.contains_key("etc/keep/fresh"));

    let w = tmp.path().join("w");
    unpack_one(&fixture("native-2-delete-opaque.tar"), &w, WhiteoutMode::Wh);
    let snap = snapshot(&w);
    for p in ["etc/.wh.gone", "bin/.wh.ls", "newdir/deep/.wh.n.txt", "etc/keep/.wh..wh..opq"] {
        assert!(snap[p].starts_with("file ") && snap[p].contains("size=0"), "{p}: {:?}", snap.get(p));
    }
    assert!(snap["etc/keep"].contains("xattr:user.overlay.opaque=y"), "{}", snap["etc/keep"]);

    // The diff of both forms is the same layer.
    let t1 = tmp.path().join("c.tar");
    let t2 = tmp.path().join("w.tar");
    let r1 = oci::export_to_file(&c, &t1).unwrap();
    let r2 = oci::export_to_file(&w, &t2).unwrap();
    assert_eq!(r1.diff_id, r2.diff_id, "chardev and wh forms export differently");
}

#[test]
fn diff_cli_writes_stdout_or_file() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    unpack_one(&fixture("fuse-2-delete.tar"), &a, WhiteoutMode::Auto);
    let f = tmp.path().join("out.tar");
    let out = String::from_utf8(run_ok(["diff".as_ref(), s(&a), "-o".as_ref(), s(&f)])).unwrap();
    let bytes = fs::read(&f).unwrap();
    assert_eq!(out.trim(), format!("sha256:{}", sha256_hex(&bytes)));
    let (code, stdout, stderr) = run(["diff".as_ref(), s(&a)]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, bytes);
    assert_eq!(stderr.trim(), out.trim());
    // No temporary files left next to the output.
    let names: Vec<_> = fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

/// `diff -o` writes into a device or fifo it is given (`-o /dev/null` for the DiffID only) and
/// replaces the file a symlink names, never the device, fifo or symlink itself.
#[test]
fn diff_cli_output_that_is_not_a_regular_file() {
    use std::os::unix::fs::FileTypeExt;
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    unpack_one(&fixture("fuse-2-delete.tar"), &a, WhiteoutMode::Auto);
    let want =
        String::from_utf8(run_ok(["diff".as_ref(), s(&a), "-o".as_ref(), s(&tmp.path().join("ref.tar"))]))
            .unwrap();
    let null = tmp.path().join("null");
    let o = std::process::Command::new("sh")
        .args(["-c", "mknod null c 1 3 && mkfifo fifo && echo old > target && ln -s target link"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let got = String::from_utf8(run_ok(["diff".as_ref(), s(&a), "-o".as_ref(), s(&null)])).unwrap();
    assert_eq!(got, want);
    assert!(fs::symlink_metadata(&null).unwrap().file_type().is_char_device());
    let fifo = tmp.path().join("fifo");
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || fs::read(fifo).unwrap())
    };
    let got = String::from_utf8(run_ok(["diff".as_ref(), s(&a), "-o".as_ref(), s(&fifo)])).unwrap();
    assert_eq!(got, want);
    assert_eq!(reader.join().unwrap(), fs::read(tmp.path().join("ref.tar")).unwrap());
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    let link = tmp.path().join("link");
    run_ok(["diff".as_ref(), s(&a), "-o".as_ref(), s(&link)]);
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(fs::read(tmp.path().join("target")).unwrap(), fs::read(tmp.path().join("ref.tar")).unwrap());
}

/// The layer tools' warnings reach stderr as one line each: entries `diff` leaves out.
#[test]
fn diff_warns_about_what_it_leaves_out() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    fs::create_dir(&a).unwrap();
    fs::write(a.join("f"), b"f").unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(a.join("sock")).unwrap();
    let (code, _, stderr) = run(["diff".as_ref(), s(&a), "-o".as_ref(), s(&tmp.path().join("o.tar"))]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stderr.trim(), "layerfs: warning: skipping socket \"sock\"", "{stderr}");
}

/// xattrs of a symlink (trusted.* and security.* may be set on one) go into the layer and come
/// back out of it; `diff` left them out and `unpack` skipped them.
#[test]
fn symlink_xattrs_round_trip() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    fs::create_dir(&a).unwrap();
    std::os::unix::fs::symlink("target", a.join("link")).unwrap();
    oci::set_xattr_nofollow(&a.join("link"), "trusted.foo", b"bar").unwrap();
    let snap_a = snapshot(&a);
    assert!(snap_a["link"].contains("xattr:trusted.foo=bar"), "{snap_a:?}");
    round_trip(tmp.path(), &a, "symlink xattrs");
}

/// `diff` of tree `a` (in `dir`), then `unpack` of that layer: the same tree comes back.
/// Returns the unpacked copy.
fn round_trip(dir: &Path, a: &Path, what: &str) -> PathBuf {
    let t = dir.join("l.tar");
    oci::export_to_file(a, &t).unwrap();
    let b = dir.join("b");
    run_ok(["unpack".as_ref(), s(&t), s(&b)]);
    assert_same_snapshot(&snapshot(&b), &snapshot(a), what);
    b
}

/// A file capability whose value holds a newline byte (cap_dac_override + cap_fowner) goes
/// through `diff` and back through `unpack` (the tar crate alone refuses its PAX record).
#[test]
fn a_capability_with_a_newline_byte_round_trips() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    fs::create_dir(&a).unwrap();
    fs::write(a.join("tool"), b"#!/bin/sh\n").unwrap();
    let caps = b"\x01\x00\x00\x02\x0a\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
    oci::set_xattr_nofollow(&a.join("tool"), "security.capability", caps).unwrap();
    let b = round_trip(tmp.path(), &a, "capability with a newline byte");
    let x = oci::xattrs_nofollow(&b.join("tool")).unwrap();
    assert_eq!(x, vec![(b"security.capability".to_vec(), caps.to_vec())]);
}

/// Ctrl-C (SIGINT) or SIGTERM while `unpack` reads a layer leaves neither the target nor the
/// staging directory beside it, and exits with 128 + the signal's number; the same for a
/// `store import`, whose staging is in the store. Before, the signal ended the process where
/// it stood and the staging directory stayed.
#[test]
fn a_signal_during_unpack_leaves_nothing_staged() {
    use std::process::{Command, Stdio};
    let tmp = tempfile::tempdir().unwrap();
    let data = fs::read(fixtures().join("00-base-busybox.tar")).unwrap();
    // The last case's input stalls (a download that hangs): the one signal ends the unpack
    // after the grace period, and the signal thread removes the staging itself.
    for (sig, store, stall) in [
        (libc::SIGINT, false, false),
        (libc::SIGTERM, false, false),
        (libc::SIGINT, true, false),
        (libc::SIGTERM, false, true),
    ] {
        let out_dir = tmp.path().join(format!("out-{sig}-{store}-{stall}"));
        fs::create_dir(&out_dir).unwrap();
        let (args, staging_in): (Vec<std::ffi::OsString>, PathBuf) = if store {
            let root = out_dir.join("store");
            (
                vec!["store".into(), "--root".into(), root.clone().into(), "import".into(), "-".into()],
                root.join("layers"),
            )
        } else {
            (vec!["unpack".into(), "-".into(), out_dir.join("target").into()], out_dir.clone())
        };
        let mut child = default_signals(&mut Command::new(bin()))
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&data[..data.len() / 2]).unwrap();
        let staged = || {
            fs::read_dir(&staging_in)
                .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().contains(".tmp-")).count())
                .unwrap_or(0)
        };
        let t = std::time::Instant::now();
        while staged() == 0 {
            assert!(t.elapsed().as_secs() < 30, "the unpack never began");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if stall {
            // Until it has read all it was given and waits in read(2) for more.
            let wchan = format!("/proc/{}/wchan", child.id());
            let t = std::time::Instant::now();
            while !fs::read_to_string(&wchan).unwrap_or_default().contains("pipe_read") {
                assert!(t.elapsed().as_secs() < 30, "never waited for input");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        // SAFETY: kill(2) of the child this test started.
        assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
        let t = std::time::Instant::now();
        // The signal is seen at the next entry, once the rest of the layer comes (the pipe may
        // then close before all of it is written).
        if !stall {
            let _ = stdin.write_all(&data[data.len() / 2..]);
            drop(stdin);
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(128 + sig), "{err}");
        if stall {
            assert!(err.contains(&format!("signal {sig} not seen within")), "{err}");
            assert!(t.elapsed() >= oci::stop::GRACE && t.elapsed().as_secs() < 30, "{:?}", t.elapsed());
        } else {
            assert!(err.contains(&format!("interrupted by signal {sig}")), "{err}");
        }
        assert_eq!(staged(), 0, "staging left in {}", staging_in.display());
        assert!(!out_dir.join("target").exists());
    }
}
