//! Hostile layer archives: every one must be refused with a clear one-line
//! error, leave no target (not even a half-written one, nor a temporary
//! directory) and touch nothing outside it.

#[path = "oci_common.rs"]
mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use common::*;

/// One raw USTAR entry with exact name bytes (no sanitising by the tar crate).
fn raw_entry(name: &[u8], typ: u8, link: &[u8], data: &[u8], mode: u32) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    {
        let u = h.as_ustar_mut().unwrap();
        u.name[..name.len()].copy_from_slice(name);
        u.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_entry_type(tar::EntryType::new(typ));
    h.as_mut_bytes()[156] = typ; // as given: the crate writes type NUL as '0'
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(data.len() as u64);
    h.set_cksum();
    let mut v = h.as_bytes().to_vec();
    v.extend_from_slice(data);
    v.resize(v.len().div_ceil(512) * 512, 0);
    v
}

fn file(name: &str, data: &[u8]) -> Vec<u8> {
    raw_entry(name.as_bytes(), b'0', b"", data, 0o644)
}
fn dir(name: &str) -> Vec<u8> {
    raw_entry(name.as_bytes(), b'5', b"", b"", 0o755)
}
fn symlink(name: &str, target: &str) -> Vec<u8> {
    raw_entry(name.as_bytes(), b'2', target.as_bytes(), b"", 0o777)
}
fn hardlink(name: &str, target: &str) -> Vec<u8> {
    raw_entry(name.as_bytes(), b'1', target.as_bytes(), b"", 0o644)
}
fn end() -> Vec<u8> {
    vec![0u8; 1024]
}

/// A harmless prefix so that a failure happens after something was written.
fn good_prefix() -> Vec<u8> {
    [dir("ok/"), file("ok/file", b"hello\n"), dir("ok/sub/")].concat()
}

/// Everything under `root` except `skip` (path -> description). The mtime
/// of `work/` (the target's parent) changes with the temporary directory,
/// so it is left out.
fn inventory(root: &Path, skip: &Path) -> BTreeMap<String, String> {
    snapshot(root)
        .into_iter()
        .filter(|(p, _)| !root.join(p).starts_with(skip))
        .map(|(p, d)| if p == "work" { (p, d.split(" mtime=").next().unwrap().to_string()) } else { (p, d) })
        .collect()
}

struct Arena {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    target: PathBuf,
    sentinel: PathBuf,
}

fn arena() -> Arena {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    // root/outside/sentinel, root/work/ (the target's parent), root/in.tar
    fs::create_dir_all(root.join("outside")).unwrap();
    fs::create_dir_all(root.join("work")).unwrap();
    let sentinel = root.join("outside/sentinel");
    fs::write(&sentinel, b"untouched\n").unwrap();
    let target = root.join("work/target");
    Arena { _tmp: tmp, root, target, sentinel }
}

/// Unpacks `archive` (through the CLI, and through the library) and checks
/// it is refused with a message containing `expect`, leaving no trace.
fn assert_refused(archive: &[u8], expect: &str) {
    for via_cli in [true, false] {
        for extra in [&[][..], &["--flatten"][..], &["--whiteouts", "wh"][..]] {
            let a = arena();
            let tar = a.root.join("in.tar");
            fs::write(&tar, archive).unwrap();
            let before = inventory(&a.root, &a.target);
            let msg = if via_cli {
                let mut args: Vec<std::ffi::OsString> = vec!["unpack".into()];
                args.extend(extra.iter().map(|s| s.into()));
                args.push(tar.clone().into());
                args.push(a.target.clone().into());
                let (code, _, err) = run(&args);
                assert_ne!(code, 0, "accepted ({expect}): {err}");
                assert!(err.starts_with("layerfs: "), "message format: {err:?}");
                assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
                err
            } else {
                let opts = layerfs::oci::UnpackOptions {
                    diff_ids: true,
                    flatten: extra.contains(&"--flatten"),
                    whiteouts: if extra.contains(&"wh") {
                        layerfs::oci::WhiteoutMode::Wh
                    } else {
                        layerfs::oci::WhiteoutMode::Auto
                    },
                };
                let e =
                    layerfs::oci::unpack(std::slice::from_ref(&tar), &a.target, &opts).expect_err("accepted");
                e.to_string()
            };
            assert!(msg.contains(expect), "message {msg:?} does not mention {expect:?}");
            assert!(
                !a.target.exists() && fs::symlink_metadata(&a.target).is_err(),
                "target left behind ({expect})"
            );
            let leftovers: Vec<_> =
                fs::read_dir(a.root.join("work")).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
            assert_eq!(fs::read(&a.sentinel).unwrap(), b"untouched\n");
            assert_eq!(
                inventory(&a.root, &a.target),
                before,
                "something changed outside the target ({expect})"
            );
            for p in ["/escape", "/evil", "/b", "/abs"] {
                assert!(fs::symlink_metadata(p).is_err(), "{p} was created");
            }
        }
    }
}

#[test]
fn dotdot_entry() {
    assert_refused(&[good_prefix(), file("../evil", b"x"), end()].concat(), "'..'");
    assert_refused(&[good_prefix(), file("ok/../../evil", b"x"), end()].concat(), "'..'");
}

#[test]
fn absolute_entry() {
    assert_refused(&[good_prefix(), file("/abs", b"x"), end()].concat(), "absolute");
}

#[test]
fn dotdot_in_the_middle() {
    assert_refused(&[good_prefix(), file("a/../../b", b"x"), end()].concat(), "'..'");
}

#[test]
fn symlink_then_entry_beneath_it() {
    assert_refused(
        &[good_prefix(), symlink("lnk", "/"), file("lnk/escape", b"x"), end()].concat(),
        "symlink",
    );
    assert_refused(
        &[good_prefix(), symlink("lnk", "../../outside"), file("lnk/escape", b"x"), end()].concat(),
        "symlink",
    );
    assert_refused(&[good_prefix(), symlink("lnk", "../.."), dir("lnk/sub/"), end()].concat(), "symlink");
    // Even a symlink that stays inside the layer cannot be written through.
    assert_refused(
        &[good_prefix(), symlink("ok/lnk", "sub"), file("ok/lnk/x", b"x"), end()].concat(),
        "symlink",
    );
    // A symlink over an existing directory, then an entry beneath.
    assert_refused(
        &[good_prefix(), symlink("ok", "../../outside"), file("ok/sentinel", b"evil"), end()].concat(),
        "symlink",
    );
}

#[test]
fn hardlink_outside_or_forward() {
    assert_refused(&[good_prefix(), hardlink("h", "../outside/sentinel"), end()].concat(), "'..'");
    assert_refused(&[good_prefix(), hardlink("h", "/etc/passwd"), end()].concat(), "absolute");
    assert_refused(
        &[good_prefix(), hardlink("h", "later"), file("later", b"x"), end()].concat(),
        "not an earlier",
    );
    assert_refused(&[good_prefix(), hardlink("h", "ok/sub"), end()].concat(), "not an earlier");
}

#[test]
fn truncated_archives() {
    let full = [good_prefix(), file("big", &vec![7u8; 10_000]), end()].concat();
    let data_start = good_prefix().len() + 512;
    assert_refused(&full[..data_start + 5000], "truncated");
    // Cut inside a header.
    assert_refused(&full[..good_prefix().len() + 100], "truncated");
    // Cut exactly after an entry: no end-of-archive marker.
    assert_refused(&full[..good_prefix().len()], "truncated");
    // The same, gzip-compressed, cut in the middle of the compressed stream.
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(&full).unwrap();
    let gz = e.finish().unwrap();
    assert_refused(&gz[..gz.len() / 2], "truncated");
}

#[test]
fn garbage_and_empty() {
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 | 1).collect();
    assert_refused(&garbage, "corrupt");
    assert_refused(&[good_prefix(), garbage.clone()].concat(), "corrupt");
    assert_refused(b"", "empty");
}

#[test]
fn invalid_whiteouts() {
    assert_refused(&[good_prefix(), file(".wh..", b""), end()].concat(), "whiteout of '.'");
    assert_refused(&[good_prefix(), file("ok/.wh...", b""), end()].concat(), "whiteout of '.'");
    assert_refused(&[good_prefix(), file(".wh.", b""), end()].concat(), "bare");
    assert_refused(&[good_prefix(), file("ok/.wh.", b""), end()].concat(), "bare");
    assert_refused(&[good_prefix(), file(".wh..wh.plnk", b""), end()].concat(), "reserved");
}

#[test]
fn root_entry_must_be_a_directory() {
    assert_refused(&[file("./", b"x"), end()].concat(), "root");
}

#[test]
fn compressed_hostile_archive() {
    let tar = [good_prefix(), file("../evil", b"x"), end()].concat();
    let zs = zstd::encode_all(&tar[..], 1).unwrap();
    assert_refused(&zs, "'..'");
}

#[test]
fn existing_target_is_refused_and_untouched() {
    let a = arena();
    fs::create_dir(&a.target).unwrap();
    fs::write(a.target.join("keep"), b"mine").unwrap();
    let tar = a.root.join("in.tar");
    fs::write(&tar, [good_prefix(), end()].concat()).unwrap();
    let (code, _, err) = run(["unpack".as_ref(), s(&tar), s(&a.target)]);
    assert_ne!(code, 0);
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(fs::read(a.target.join("keep")).unwrap(), b"mine");
    assert_eq!(fs::read_dir(a.root.join("work")).unwrap().count(), 1);
    // An empty directory is fine and is replaced by the layer.
    fs::remove_file(a.target.join("keep")).unwrap();
    let (code, _, err) = run(["unpack".as_ref(), s(&tar), s(&a.target)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(fs::read(a.target.join("ok/file")).unwrap(), b"hello\n");
}

#[test]
fn accepted_spellings_and_same_layer_rules() {
    // `./x`, `.` as the root's attributes, duplicates (later wins), and a
    // whiteout that names an entry of the same layer (the entry survives).
    let a = arena();
    let tar = a.root.join("in.tar");
    let archive = [
        raw_entry(b"./", b'5', b"", b"", 0o711),
        file("./x", b"first"),
        file("x", b"second"),
        file("y", b"kept"),
        file(".wh.y", b""),
        file(".wh.z", b""),
        dir("d/"),
        file("d/.wh..wh..opq", b""),
        file("d/f", b"f"),
        end(),
    ]
    .concat();
    fs::write(&tar, &archive).unwrap();
    let t = &a.target;
    run_ok(["unpack".as_ref(), "--whiteouts".as_ref(), "chardev".as_ref(), s(&tar), s(t)]);
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    assert_eq!(fs::metadata(t).unwrap().permissions().mode() & 0o7777, 0o711);
    assert_eq!(fs::read(t.join("x")).unwrap(), b"second");
    assert_eq!(fs::read(t.join("y")).unwrap(), b"kept");
    assert!(fs::symlink_metadata(t.join("z")).unwrap().file_type().is_char_device());
    let x = layerfs::oci::xattrs_nofollow(&t.join("d")).unwrap();
    assert!(x.iter().any(|(k, v)| k == b"trusted.overlay.opaque" && v == b"y"), "{x:?}");

    // Flattened on top of a lower layer: the whiteout of y (same layer) does
    // not remove it, the opaque marker hides the lower d/old but keeps d/f.
    let lower = a.root.join("lower.tar");
    fs::write(
        &lower,
        [file("y", b"lower"), dir("d/"), file("d/old", b"o"), file("z", b"lower z"), end()].concat(),
    )
    .unwrap();
    let flat = a.root.join("work/flat");
    run_ok(["unpack".as_ref(), "--flatten".as_ref(), s(&lower), s(&tar), s(&flat)]);
    assert_eq!(fs::read(flat.join("y")).unwrap(), b"kept");
    assert!(!flat.join("z").exists());
    assert!(!flat.join("d/old").exists());
    assert_eq!(fs::read(flat.join("d/f")).unwrap(), b"f");
    assert!(!flat.join("d/.wh..wh..opq").exists());
}

#[test]
fn opaque_marker_after_the_layers_own_entries() {
    // The marker comes last in its directory: the layer's own entries stay,
    // the lower ones go, also inside subdirectories the layer touched.
    let a = arena();
    let lower = a.root.join("lower.tar");
    fs::write(
        &lower,
        [
            dir("d/"),
            file("d/old", b"o"),
            dir("d/sub/"),
            file("d/sub/old2", b"o"),
            file("d/same", b"lower"),
            end(),
        ]
        .concat(),
    )
    .unwrap();
    let upper = a.root.join("upper.tar");
    fs::write(
        &upper,
        [
            dir("d/"),
            file("d/new", b"n"),
            file("d/sub/new2", b"n"),
            file("d/same", b"upper"),
            file("d/.wh..wh..opq", b""),
            end(),
        ]
        .concat(),
    )
    .unwrap();
    let flat = a.root.join("work/flat");
    run_ok(["unpack".as_ref(), "--flatten".as_ref(), s(&lower), s(&upper), s(&flat)]);
    let mut names: Vec<String> =
        walk(&flat).into_iter().map(|(p, _)| String::from_utf8(p).unwrap()).collect();
    names.sort();
    assert_eq!(names, vec!["d", "d/new", "d/same", "d/sub", "d/sub/new2"]);
    assert_eq!(fs::read(flat.join("d/same")).unwrap(), b"upper");
}

/// A gzip stream whose data no longer matches its CRC: only reading the stream to its end
/// finds out, and unpack stopped at the tar's end-of-archive blocks.
#[test]
fn gzip_checksum_mismatch() {
    let tar = [good_prefix(), file("data", b"hello world\n"), end()].concat();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
    e.write_all(&tar).unwrap();
    let mut gz = e.finish().unwrap();
    let at = gz.windows(11).position(|w| w == b"hello world").unwrap();
    gz[at] = b'J';
    assert_refused(&gz, "checksum");
}

/// One PAX record (`<length> <key>=<value>\n`, the length counting itself).
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while (len.to_string().len() + body.len()) != len {
        len += 1;
    }
    format!("{len}{body}").into_bytes()
}

/// PAX sparse files (`tar --posix --sparse`): left to the entry as stored, their map and data
/// were unpacked as the file, under a `GNUSparseFile.N/` name.
#[test]
fn pax_sparse_files_are_refused() {
    for recs in [
        vec![
            ("GNU.sparse.major", "1"),
            ("GNU.sparse.minor", "0"),
            ("GNU.sparse.name", "s"),
            ("GNU.sparse.realsize", "9000"),
        ],
        vec![
            ("GNU.sparse.size", "9000"),
            ("GNU.sparse.numblocks", "1"),
            ("GNU.sparse.offset", "0"),
            ("GNU.sparse.numbytes", "3"),
        ],
    ] {
        let pax: Vec<u8> = recs.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        let archive = [
            good_prefix(),
            raw_entry(b"PaxHeaders/s", b'x', b"", &pax, 0o644),
            file("GNUSparseFile.1/s", b"1\n0\n3\nabc"),
            end(),
        ]
        .concat();
        assert_refused(&archive, "PAX sparse");
    }
}

/// The header of a GNU sparse entry named `sparse`: the first four (offset, length) pairs of
/// its map (`extended`: more follow in extension blocks), its real size and the bytes stored.
fn gnu_sparse_header(map: &[(u64, u64)], real: u64, stored: u64, extended: bool) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    {
        let g = h.as_gnu_mut().unwrap();
        g.name[..6].copy_from_slice(b"sparse");
        for (slot, &(off, len)) in g.sparse.iter_mut().zip(map) {
            slot.set_offset(off);
            slot.set_length(len);
        }
        g.isextended[0] = u8::from(extended);
        g.set_real_size(real);
    }
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_size(stored);
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// A GNU sparse entry of 64 MiB holding one 4 KiB block: unpacked with its holes, it takes
/// about the space of its data (its zeros were written out: 64 MiB on disk).
#[test]
fn gnu_sparse_entry_keeps_its_holes() {
    use std::os::unix::fs::MetadataExt;
    let (real, at) = (64u64 << 20, 32u64 << 20);
    // The map ends with an empty block at the real size (the trailing hole).
    let h = gnu_sparse_header(&[(at, 4096), (real, 0)], real, 4096, false);
    let archive = [h, vec![b'x'; 4096], end()].concat();
    let a = arena();
    let tar = a.root.join("in.tar");
    fs::write(&tar, &archive).unwrap();
    run_ok([OsStr::new("unpack"), s(&tar), s(&a.target)]);
    let p = a.target.join("sparse");
    let md = fs::metadata(&p).unwrap();
    assert_eq!(md.len(), real);
    assert!(md.blocks() * 512 <= 1 << 20, "{} bytes allocated", md.blocks() * 512);
    let data = fs::read(&p).unwrap();
    assert!(data[at as usize..at as usize + 4096].iter().all(|&b| b == b'x'));
    assert!(data[..at as usize].iter().chain(&data[at as usize + 4096..]).all(|&b| b == 0));
}

/// PAX records are read by their lengths: a value may hold newlines (binary xattrs such as a
/// file capability or an ACL can). The tar crate splits at newlines, so such an archive was
/// refused, and a value holding `\n<len> linkpath=...` could have named another target.
#[test]
fn pax_values_with_newlines() {
    use std::os::unix::fs::MetadataExt;
    let caps = "\u{1}\0\0\u{2}\n\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
    let forged_link = "x\n26 linkpath=/etc/evil-one\n";
    let forged_path = "x\n13 path=evil\n";
    let pax =
        |recs: &[(&str, &str)]| -> Vec<u8> { recs.iter().flat_map(|(k, v)| pax_record(k, v)).collect() };
    let archive = [
        dir("d/"),
        raw_entry(
            b"PaxHeaders/f",
            b'x',
            b"",
            &pax(&[("SCHILY.xattr.user.nl", "a\nb"), ("mtime", "1700000001.5")]),
            0o644,
        ),
        file("d/f", b"data\n"),
        raw_entry(
            b"PaxHeaders/l",
            b'x',
            b"",
            &pax(&[("comment", forged_link), ("SCHILY.xattr.user.c", caps)]),
            0o644,
        ),
        symlink("d/link", "harmless"),
        raw_entry(
            b"PaxHeaders/g",
            b'x',
            b"",
            &pax(&[("comment", forged_path), ("path", "d/with\nnewline")]),
            0o644,
        ),
        file("d/plain-name", b"x"),
        raw_entry(b"PaxHeaders/h", b'x', b"", &pax(&[("comment", forged_path)]), 0o644),
        file("d/header-name", b"y"),
        end(),
    ]
    .concat();
    let a = arena();
    let tar = a.root.join("in.tar");
    fs::write(&tar, &archive).unwrap();
    run_ok([OsStr::new("unpack"), s(&tar), s(&a.target)]);
    let t = &a.target;
    let x = layerfs::oci::xattrs_nofollow(&t.join("d/f")).unwrap();
    assert_eq!(x, vec![(b"user.nl".to_vec(), b"a\nb".to_vec())]);
    assert_eq!(fs::metadata(t.join("d/f")).unwrap().mtime(), 1_700_000_001);
    assert_eq!(fs::read_link(t.join("d/link")).unwrap(), Path::new("harmless"));
    // (user.* xattrs cannot be set on a symlink: skipped with a warning.)
    assert_eq!(fs::read(t.join("d/with\nnewline")).unwrap(), b"x");
    assert_eq!(fs::read(t.join("d/header-name")).unwrap(), b"y");
    assert!(!t.join("evil").exists() && !t.join("d/plain-name").exists());
}

/// A layer that whites out a name and also has entries under it (a directory entry, or
/// entries beneath it, in either order) keeps its own entries and hides the lower layers':
/// the OCI rules apply a whiteout to lower layers only, so the name becomes an opaque
/// directory. A directory the layer made only to hold whiteouts gives way to the whiteout.
/// Unpacked as a layer, the whiteout was lost (a plain directory, the lower entries showing
/// through) or kept beside a `.wh.` marker, or the unpack failed on the char device;
/// `--flatten` of the same chain was already right, and both now agree.
#[test]
fn whiteout_and_entries_under_it_in_one_layer() {
    let a = arena();
    let upper = a.root.join("upper.tar");
    fs::write(
        &upper,
        [
            file(".wh.x", b""),
            dir("x/"),
            file("x/new", b"n"),
            dir("y/"),
            file("y/new", b"n"),
            file(".wh.y", b""),
            file("z/.wh.b", b""),
            file(".wh.z", b""),
            file(".wh.v", b""),
            file("v/.wh.b", b""),
            file(".wh.w", b""),
            file("w/new", b"n"),
            file("q/new", b"n"),
            file(".wh.q", b""),
            // An opaque marker makes the directory the layer's own, before or after a
            // whiteout of it (`--flatten` kept these, the layer directory lost or refused them).
            file("o/.wh..wh..opq", b""),
            file(".wh.o", b""),
            file(".wh.p", b""),
            file("p/.wh..wh..opq", b""),
            file(".wh.r", b""),
            file("r/e/.wh..wh..opq", b""),
            end(),
        ]
        .concat(),
    )
    .unwrap();
    use std::os::unix::fs::FileTypeExt;
    for form in ["chardev", "wh"] {
        let t = a.root.join(format!("work/layer-{form}"));
        run_ok(["unpack".as_ref(), "--whiteouts".as_ref(), form.as_ref(), s(&upper), s(&t)]);
        for d in ["x", "y", "w", "q"] {
            assert!(fs::symlink_metadata(t.join(d)).unwrap().is_dir(), "{form}: {d}");
            assert!(!t.join(format!(".wh.{d}")).exists(), "{form}: .wh.{d} left beside the directory");
            let xs = layerfs::oci::xattrs_nofollow(&t.join(d)).unwrap();
            let by_xattr = xs.iter().any(|(k, v)| k == b"trusted.overlay.opaque" && v == b"y");
            let by_file = t.join(d).join(".wh..wh..opq").exists();
            match form {
                "chardev" => assert!(by_xattr, "{form}: {d} not opaque: {xs:?}"),
                _ => assert!(by_file, "{form}: {d} has no .wh..wh..opq"),
            }
            assert_eq!(fs::read(t.join(d).join("new")).unwrap(), b"n", "{form}: {d}/new");
        }
        for d in ["o", "p", "r", "r/e"] {
            assert!(fs::symlink_metadata(t.join(d)).unwrap().is_dir(), "{form}: {d}");
            let xs = layerfs::oci::xattrs_nofollow(&t.join(d)).unwrap();
            let by_xattr = xs.iter().any(|(k, v)| k == b"trusted.overlay.opaque" && v == b"y");
            assert!(by_xattr || t.join(d).join(".wh..wh..opq").exists(), "{form}: {d} not opaque: {xs:?}");
        }
        for d in ["z", "v"] {
            match form {
                "chardev" => {
                    let m = fs::symlink_metadata(t.join(d)).unwrap();
                    assert!(m.file_type().is_char_device(), "{form}: {d} is not a whiteout");
                }
                _ => {
                    assert!(!t.join(d).exists(), "{form}: {d} left as a directory");
                    assert!(t.join(format!(".wh.{d}")).exists(), "{form}: no .wh.{d}");
                }
            }
        }
    }
    // The same chain flattened: the lower contents are gone, the layer's own stay.
    let lower = a.root.join("lower.tar");
    let mut entries = Vec::new();
    for d in ["x", "y", "z", "v", "w", "q", "o", "p", "r"] {
        entries.push(dir(&format!("{d}/")));
        entries.push(file(&format!("{d}/b"), b"b"));
        entries.push(file(&format!("{d}/old"), b"o"));
    }
    entries.push(end());
    fs::write(&lower, entries.concat()).unwrap();
    let flat = a.root.join("work/flat");
    run_ok(["unpack".as_ref(), "--flatten".as_ref(), s(&lower), s(&upper), s(&flat)]);
    let mut names: Vec<String> =
        walk(&flat).into_iter().map(|(p, _)| String::from_utf8(p).unwrap()).collect();
    names.sort();
    assert_eq!(names, vec!["o", "p", "q", "q/new", "r", "r/e", "w", "w/new", "x", "x/new", "y", "y/new"]);
}

/// A directory declared again by a later layer takes that layer's attributes: xattrs it no
/// longer has go (they were merged), with `--flatten`.
#[test]
fn redeclared_directory_replaces_its_xattrs() {
    let a = arena();
    let pax = |recs: &[(&str, &str)]| -> Vec<u8> {
        let body: Vec<u8> = recs.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        raw_entry(b"PaxHeaders/d", b'x', b"", &body, 0o644)
    };
    let l1 = a.root.join("l1.tar");
    fs::write(
        &l1,
        [pax(&[("SCHILY.xattr.user.a", "1"), ("SCHILY.xattr.user.b", "old")]), dir("d/"), end()].concat(),
    )
    .unwrap();
    let l2 = a.root.join("l2.tar");
    fs::write(&l2, [pax(&[("SCHILY.xattr.user.b", "new")]), dir("d/"), end()].concat()).unwrap();
    let flat = a.root.join("work/flat");
    run_ok(["unpack".as_ref(), "--flatten".as_ref(), s(&l1), s(&l2), s(&flat)]);
    let xs = layerfs::oci::xattrs_nofollow(&flat.join("d")).unwrap();
    let user: Vec<_> = xs.iter().filter(|(k, _)| k.starts_with(b"user.")).collect();
    assert_eq!(user, vec![&(b"user.b".to_vec(), b"new".to_vec())], "{xs:?}");
}

/// Pre-POSIX directory entries (type NUL, name ending in '/') are directories, as GNU tar and
/// Go's archive/tar read them; they were unpacked as empty files, and the next entry failed.
#[test]
fn legacy_directory_entries_are_directories() {
    let a = arena();
    let tar = a.root.join("in.tar");
    fs::write(
        &tar,
        [raw_entry(b"old/", 0, b"", b"", 0o750), raw_entry(b"old/f", 0, b"", b"x", 0o644), end()].concat(),
    )
    .unwrap();
    let t = &a.target;
    run_ok(["unpack".as_ref(), s(&tar), s(t)]);
    use std::os::unix::fs::PermissionsExt;
    let m = fs::symlink_metadata(t.join("old")).unwrap();
    assert!(m.is_dir());
    assert_eq!(m.permissions().mode() & 0o7777, 0o750);
    assert_eq!(fs::read(t.join("old/f")).unwrap(), b"x");
}

/// A tree deeper than the usual soft descriptor limit (1024) unpacks and diffs: both hold a
/// descriptor per directory level, and failed with EMFILE where GNU tar does not.
#[test]
fn deep_tree_under_a_1024_descriptor_limit() {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `r` is writable.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    if r.rlim_max < 2048 {
        eprintln!("hard descriptor limit {} is below what a 1500-level tree needs: skipped", r.rlim_max);
        return;
    }
    let a = arena();
    let tar = a.root.join("deep.tar");
    let path = format!("{}f", "d/".repeat(1500));
    {
        let mut b = tar::Builder::new(fs::File::create(&tar).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(2);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, &path, &b"ok"[..]).unwrap();
        b.finish().unwrap();
    }
    let t = &a.target;
    let low_limit = |args: &[&OsStr]| {
        let mut c = std::process::Command::new(bin());
        c.args(args);
        // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            c.pre_exec(|| {
                let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
                r.rlim_cur = 1024;
                libc::setrlimit(libc::RLIMIT_NOFILE, &r);
                Ok(())
            });
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    low_limit(&["unpack".as_ref(), s(&tar), s(t)]);
    assert_eq!(fs::read(t.join(&path)).unwrap(), b"ok");
    let out = a.root.join("diff.tar");
    low_limit(&["diff".as_ref(), s(t), "-o".as_ref(), s(&out)]);
    let mut ar = tar::Archive::new(fs::File::open(&out).unwrap());
    assert!(ar.entries().unwrap().any(|e| e.unwrap().path().unwrap().to_string_lossy() == path));
}

/// `diff UPPER -o UPPER/x.tar` leaves its own output out of the layer (as GNU tar leaves out
/// its archive); the temporary file it writes first went in, empty or half-written.
#[test]
fn diff_output_inside_the_directory_is_not_exported() {
    let a = arena();
    let up = a.root.join("work/up");
    fs::create_dir_all(&up).unwrap();
    fs::write(up.join("f"), b"f").unwrap();
    let out = up.join("x.tar");
    // Twice: the second run replaces the first one's output, which is left out as well.
    for _ in 0..2 {
        run_ok(["diff".as_ref(), s(&up), "-o".as_ref(), s(&out)]);
        let mut ar = tar::Archive::new(fs::File::open(&out).unwrap());
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["f"]);
    }
}

/// Entries of types that carry no data (directories, links, devices, fifos) but give a size
/// anyway: Go's archive/tar (Docker, containerd, podman) and Python read the block after the
/// header as the next header, the tar crate skipped the size first, so such a tar showed each
/// reader another tree (here a file only layerfs saw).
#[test]
fn entries_without_data_that_give_a_size_are_refused() {
    let hidden = [file("seen-by-layerfs", b"EVIL!\n"), end()].concat();
    let data = [file("seen-by-go", &[0u8; 512]), vec![0u8; 512]].concat();
    for (name, typ, link) in [
        (&b"d/"[..], b'5', &b""[..]),
        (b"l", b'2', b"target"),
        (b"h", b'1', b"ok/file"),
        (b"f", b'6', b""),
        (b"c", b'3', b""),
        (b"old/", 0, b""),
    ] {
        let archive = [good_prefix(), raw_entry(name, typ, link, &data, 0o755), hidden.clone()].concat();
        assert_refused(&archive, "carries 1536 bytes of data");
    }
}

/// A GNU sparse entry whose map runs on in extension blocks: the end of its data was put
/// 512 bytes early per extension block, so its last blocks were read as headers, and a PAX
/// header forged there named the next entry (and could give it xattrs). GNU tar and Python
/// see that data as data.
#[test]
fn gnu_sparse_extension_blocks_are_not_headers() {
    let octal = |v: u64| format!("{v:011o}\0").into_bytes();
    let regions: Vec<(u64, u64)> = (0..30).map(|i| (i * 4096, 512)).collect();
    let real = 29 * 4096 + 512; // where the last region ends
    let h = gnu_sparse_header(&regions[..4], real, 30 * 512, true);
    // Two extension blocks of 21 map entries at most, the first saying another follows.
    let ext = |rs: &[(u64, u64)], more: bool| {
        let mut b = Vec::new();
        for &(off, len) in rs {
            b.extend(octal(off));
            b.extend(octal(len));
        }
        b.resize(504, 0);
        b.push(u8::from(more));
        b.resize(512, 0);
        b
    };
    let forged = raw_entry(b"PaxHeaders/x", b'x', b"", &pax_record("path", "evil-name"), 0o644);
    assert_eq!(forged.len(), 1024);
    let mut data = vec![b'd'; 30 * 512 - 1024];
    data.extend_from_slice(&forged);
    let archive = [
        h,
        ext(&regions[4..25], true),
        ext(&regions[25..], false),
        data.clone(),
        file("innocent", b"i\n"),
        end(),
    ]
    .concat();
    let a = arena();
    let tar = a.root.join("in.tar");
    fs::write(&tar, &archive).unwrap();
    run_ok([OsStr::new("unpack"), s(&tar), s(&a.target)]);
    let mut names: Vec<String> =
        walk(&a.target).into_iter().map(|(p, _)| String::from_utf8(p).unwrap()).collect();
    names.sort();
    assert_eq!(names, vec!["innocent", "sparse"]);
    let got = fs::read(a.target.join("sparse")).unwrap();
    assert_eq!(got.len() as u64, real);
    let last = &got[29 * 4096..29 * 4096 + 512];
    assert_eq!(last, &forged[512..], "the data's last block");
    // A PAX size record on a sparse entry: the crate reads that much data, where the header
    // (size 0 here) put the next header, so the forged one was read as the next entry's.
    let sized = [
        raw_entry(b"PaxHeaders/s", b'x', b"", &pax_record("size", "1024"), 0o644),
        gnu_sparse_header(&[(0, 1024)], 1024, 0, false),
        forged,
        file("innocent", b"i\n"),
        end(),
    ]
    .concat();
    assert_refused(&sized, "PAX size record on a GNU sparse entry");
}

/// Owner and mode overrides (`xattr_permissions=`) come from the unpacker, never from the
/// tar: a file given `security.fuseoverlayfs.override_stat` showed as setuid root through a
/// mount reading that xattr, and `diff` wrote it so.
#[test]
fn override_xattrs_in_a_tar_are_dropped() {
    let a = arena();
    let tar = a.root.join("in.tar");
    let mut entries = Vec::new();
    for name in [
        "security.fuseoverlayfs.override_stat",
        "user.containers.override_stat",
        "user.fuseoverlayfs.override_stat",
    ] {
        let rec = pax_record(&format!("SCHILY.xattr.{name}"), "0:0:4755:file");
        entries.push(raw_entry(b"PaxHeaders/x", b'x', b"", &rec, 0o644));
        entries.push(file(&format!("f-{name}"), b"x"));
    }
    entries.push(end());
    fs::write(&tar, entries.concat()).unwrap();
    run_ok([OsStr::new("unpack"), s(&tar), s(&a.target)]);
    for (p, _) in walk(&a.target) {
        let xs = layerfs::oci::xattrs_nofollow(&a.target.join(OsStr::from_bytes(&p))).unwrap();
        assert!(xs.iter().all(|(k, _)| !k.ends_with(b"override_stat")), "{xs:?}");
    }
}

/// Times: GNU base-256 mtimes before 1970 (GNU tar writes them so) came out as the year 2446;
/// a PAX mtime that is not a number is refused, not ignored; a PAX global header (GNU tar
/// names it `/tmp/GlobalHead.N`) is skipped, not refused as an absolute name.
#[test]
fn old_times_bad_pax_times_and_global_headers() {
    let a = arena();
    let tar = a.root.join("in.tar");
    let mut old = raw_entry(b"old", b'0', b"", b"x", 0o644);
    // -315619200 (1960-01-01) in 12 bytes of two's complement, the first byte 0xff.
    let mut field = [0xffu8; 12];
    field[4..].copy_from_slice(&(-315_619_200i64).to_be_bytes());
    old[136..148].copy_from_slice(&field);
    let mut h = tar::Header::from_byte_slice(&old[..512]).clone();
    h.set_cksum();
    old[..512].copy_from_slice(h.as_bytes());
    let global = raw_entry(b"/tmp/GlobalHead.1", b'g', b"", &pax_record("comment", "hello"), 0o644);
    fs::write(&tar, [global, old, end()].concat()).unwrap();
    run_ok([OsStr::new("unpack"), s(&tar), s(&a.target)]);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(a.target.join("old")).unwrap().mtime(), -315_619_200);
    let bad =
        [raw_entry(b"PaxHeaders/x", b'x', b"", &pax_record("mtime", "abc"), 0o644), file("f", b"x"), end()]
            .concat();
    assert_refused(&bad, "mtime (PAX)");
}

/// The temporary sibling of a target whose name is near NAME_MAX is cut short to fit (it was
/// the name and `.tmp-XXXXXXXX`: ENAMETOOLONG).
#[test]
fn targets_with_long_names_unpack_and_diff() {
    let a = arena();
    let tar = a.root.join("in.tar");
    fs::write(&tar, [file("f", b"x"), end()].concat()).unwrap();
    let long = a.root.join("work").join("t".repeat(250));
    run_ok([OsStr::new("unpack"), s(&tar), s(&long)]);
    assert_eq!(fs::read(long.join("f")).unwrap(), b"x");
    let out = a.root.join("work").join(format!("{}.tar", "o".repeat(250)));
    run_ok([OsStr::new("diff"), s(&long), OsStr::new("-o"), s(&out)]);
    assert!(fs::metadata(&out).unwrap().len() >= 1024);
}
