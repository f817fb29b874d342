//! Tests of the union façade without FUSE: `OverlayFs` called directly.
mod common;
use common::{Scratch, evict, evict_all_of, loop_mount, resident, resident_in, root_or_skip};

use layerfs::fs::{Caller, FsOptions, ListedFile, OverlayFs, ReadData, SetAttr};
use std::ffi::OsStr;
use std::fs;

/// [`common::wait_until`] with the 10 s these read-ahead checks allow: the read-ahead threads
/// work behind the calls, and the page cache fills as the disk answers.
fn wait_until(done: impl FnMut() -> bool) {
    common::wait_until(std::time::Duration::from_secs(10), done)
}

fn fixture() -> (Scratch, OverlayFs) {
    let s = Scratch::new();
    let (l1, l2, u, w) = (s.path("l1"), s.path("l2"), s.path("u"), s.path("w"));
    fs::create_dir_all(l2.join("d/sub")).unwrap();
    fs::write(l2.join("d/a"), b"lower a").unwrap();
    fs::write(l2.join("d/sub/x"), b"x").unwrap();
    fs::write(l1.join("top"), b"top").unwrap();
    let mut o = FsOptions::new(vec![l1, l2]);
    o.upper = Some(u);
    o.work = Some(w);
    let fs = OverlayFs::new(o).unwrap();
    (s, fs)
}

/// `OverlayFs` over lowers l1 (top) and l2 with upper u and workdir w in `s`.
fn two_lowers_and_upper(s: &Scratch, read_ahead: bool) -> OverlayFs {
    let mut o = FsOptions::new(vec![s.path("l1"), s.path("l2")]);
    o.upper = Some(s.path("u"));
    o.work = Some(s.path("w"));
    o.read_ahead = read_ahead;
    OverlayFs::new(o).unwrap()
}

/// A copy-up removed while open, whose FORGET is served before its RELEASE (two server
/// threads, the RELEASE still on its way): the maps that kept its number go with the handle.
/// They stayed for the rest of the mount, where they would give a new upper object that got
/// the freed inode number the removed file's number.
#[test]
fn a_removed_copy_forgotten_while_open_drops_its_maps_at_release() {
    let (_s, fs) = fixture();
    let d = fs.lookup(1, OsStr::new("d")).unwrap();
    let a = fs.lookup(d.ino.0, OsStr::new("a")).unwrap();
    let sub = fs.lookup(d.ino.0, OsStr::new("sub")).unwrap();
    let x = fs.lookup(sub.ino.0, OsStr::new("x")).unwrap();
    let ox = fs.open(x.ino.0, libc::O_RDWR).unwrap(); // copies up d, d/sub and d/sub/x
    let base = fs.kept_numbers();
    let o = fs.open(a.ino.0, libc::O_RDWR).unwrap(); // copies up d/a
    assert!(fs.kept_numbers() > base, "the copy keeps the lower file's number");
    fs.remove(d.ino.0, OsStr::new("a"), false).unwrap();
    fs.forget(a.ino.0, 1);
    assert!(fs.kept_numbers() > base, "kept while the handle holds the file");
    fs.release(o.fh);
    assert_eq!(fs.kept_numbers(), base, "{}", fs.stats_line());
    // Released before its FORGET, as usual: the maps go at the FORGET.
    fs.remove(sub.ino.0, OsStr::new("x"), false).unwrap();
    fs.release(ox.fh);
    assert_eq!(fs.kept_numbers(), base, "kept while the kernel holds the file");
    fs.forget(x.ino.0, 1);
    assert!(fs.kept_numbers() < base, "{}", fs.stats_line());
}

#[test]
fn forget_frees_nodes_the_kernel_dropped() {
    let (_s, fs) = fixture();
    let base = fs.node_count();
    let d = fs.lookup(1, OsStr::new("d")).unwrap();
    let a = fs.lookup(d.ino.0, OsStr::new("a")).unwrap();
    let a2 = fs.lookup(d.ino.0, OsStr::new("a")).unwrap();
    assert_eq!(a.ino, a2.ino, "one object keeps one inode number");
    assert_eq!(fs.node_count(), base + 2);
    fs.forget(a.ino.0, 1);
    assert_eq!(fs.node_count(), base + 2, "one of two references left");
    fs.forget(a.ino.0, 1);
    assert_eq!(fs.node_count(), base + 1);
    fs.forget(d.ino.0, 1);
    assert_eq!(fs.node_count(), base);
    // Forgetting more than was looked up, or an unknown inode, is harmless.
    fs.forget(d.ino.0, 5);
    fs.forget(12345, 1);
    fs.forget(1, 1);
    assert_eq!(fs.node_count(), base);
    assert!(fs.getattr(1).is_ok(), "the root is never forgotten");
}

#[test]
fn copy_up_keeps_inode_and_leaves_work_clean() {
    let (s, fs) = fixture();
    let d = fs.lookup(1, OsStr::new("d")).unwrap();
    let a = fs.lookup(d.ino.0, OsStr::new("a")).unwrap();
    let o = fs.open(a.ino.0, libc::O_WRONLY).unwrap();
    fs.write(o.fh, 7, b" changed").unwrap();
    fs.release(o.fh);
    let a2 = fs.getattr(a.ino.0).unwrap();
    assert_eq!(a2.ino, a.ino, "inode number kept across copy-up");
    assert_eq!(a2.size, 15);
    assert_eq!(fs::read(s.path("u").join("d/a")).unwrap(), b"lower a changed");
    assert_eq!(fs::read(s.path("l2").join("d/a")).unwrap(), b"lower a", "lower untouched");
    assert_eq!(fs::read_dir(s.path("w").join("work")).unwrap().count(), 0, "workdir clean");
    // chmod through setattr copies up metadata too and keeps data.
    let x = fs.lookup(1, OsStr::new("top")).unwrap();
    let r = fs.setattr(x.ino.0, SetAttr { mode: Some(0o600), ..Default::default() }).unwrap();
    assert_eq!(r.perm, 0o600);
    assert_eq!(fs::read(s.path("u").join("top")).unwrap(), b"top");
}

#[test]
fn unlink_of_lower_leaves_whiteout_and_of_upper_only_none() {
    let (s, fs) = fixture();
    let caller = Caller { uid: 0, gid: 0, umask: 0, pid: 0 };
    fs.lookup(1, OsStr::new("top")).unwrap();
    fs.remove(1, OsStr::new("top"), false).unwrap();
    assert!(fs.lookup(1, OsStr::new("top")).is_err());
    let md = fs::symlink_metadata(s.path("u").join("top")).unwrap();
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let is_wh = md.file_type().is_char_device() && md.rdev() == 0;
    let is_wh_file = s.path("u").join(".wh.top").exists();
    assert!(is_wh || is_wh_file, "whiteout left for a lower name");
    fs.mknod(1, OsStr::new("new"), libc::S_IFREG | 0o644, 0, caller).unwrap();
    fs.remove(1, OsStr::new("new"), false).unwrap();
    assert!(!s.path("u").join("new").exists());
    assert!(!s.path("u").join(".wh.new").exists(), "no whiteout for an upper-only name");
    // rmdir of a merged non-empty directory.
    fs.lookup(1, OsStr::new("d")).unwrap();
    assert_eq!(fs.remove(1, OsStr::new("d"), true).unwrap_err().errno, libc::ENOTEMPTY);
    assert_eq!(fs.remove(1, OsStr::new("d"), false).unwrap_err().errno, libc::EISDIR);
    // Reserved names.
    assert_eq!(fs.mkdir(1, OsStr::new(".wh.x"), 0o755, caller).unwrap_err().errno, libc::EINVAL);
}

#[test]
fn looked_up_lower_files_stay_lite_until_used() {
    let (s, fs) = fixture();
    let d = fs.lookup(1, OsStr::new("d")).unwrap();
    let lite0 = fs.lite_count();
    let a = fs.lookup(d.ino.0, OsStr::new("a")).unwrap();
    assert_eq!(fs.lite_count(), lite0 + 1, "a lower file only looked up takes a lite entry");
    let again = fs.lookup(d.ino.0, OsStr::new("a")).unwrap();
    assert_eq!(again.ino, a.ino);
    assert_eq!(fs.lite_count(), lite0 + 1, "a second lookup reuses the entry");
    // A stat is answered from the lower file without promoting the entry.
    let st = fs.getattr(a.ino.0).unwrap();
    assert_eq!((st.ino, st.size, st.perm, st.mtime), (a.ino, a.size, a.perm, a.mtime));
    assert_eq!(fs.lite_count(), lite0 + 1);
    assert_eq!(fs.path_of(a.ino.0).unwrap(), std::path::Path::new("/d/a"));
    // A write promotes it (open), copies it up and keeps the id and both references.
    let o = fs.open(a.ino.0, libc::O_WRONLY).unwrap();
    assert_eq!(fs.lite_count(), lite0, "opened: a full node now");
    fs.write(o.fh, 0, b"L").unwrap();
    fs.release(o.fh);
    assert_eq!(fs::read(s.path("u").join("d/a")).unwrap(), b"Lower a");
    let st = fs.getattr(a.ino.0).unwrap();
    assert_eq!(st.ino, a.ino, "the id survives promotion and copy-up");
    let n = fs.node_count();
    fs.forget(a.ino.0, 1);
    assert_eq!(fs.node_count(), n, "the second lookup's reference carried over");
    fs.forget(a.ino.0, 1);
    assert_eq!(fs.node_count(), n - 1);
}

#[test]
fn lite_entries_are_forgotten_renamed_and_removed_like_nodes() {
    let (s, fs) = fixture();
    let long = "a-name-longer-than-fits-inline.txt";
    fs::write(s.path("l2").join("d").join(long), b"long").unwrap();
    let base = fs.node_count();
    let d = fs.lookup(1, OsStr::new("d")).unwrap();
    let l = fs.lookup(d.ino.0, OsStr::new(long)).unwrap();
    assert_eq!(fs.path_of(l.ino.0).unwrap(), std::path::Path::new("/d").join(long));
    fs.forget(l.ino.0, 1);
    assert_eq!(fs.node_count(), base + 1, "forgotten lite entry is gone");
    assert!(fs.getattr(l.ino.0).is_err(), "an id the kernel forgot is unknown");
    // Rename of a looked-up lower file: copied up under the new name, whiteout under the old.
    let l = fs.lookup(d.ino.0, OsStr::new(long)).unwrap();
    fs.rename(d.ino.0, OsStr::new(long), 1, OsStr::new("moved"), 0).unwrap();
    assert_eq!(fs.getattr(l.ino.0).unwrap().size, 4, "the kernel's inode still reaches the file");
    assert_eq!(fs::read(s.path("u").join("moved")).unwrap(), b"long");
    assert!(fs.lookup(d.ino.0, OsStr::new(long)).is_err());
    assert_eq!(fs.path_of(l.ino.0).unwrap(), std::path::Path::new("/moved"));
    // Unlink of a looked-up lower file.
    let x = fs.lookup(d.ino.0, OsStr::new("a")).unwrap();
    fs.remove(d.ino.0, OsStr::new("a"), false).unwrap();
    assert!(fs.lookup(d.ino.0, OsStr::new("a")).is_err());
    fs.forget(x.ino.0, 1);
    assert_eq!(fs::read(s.path("l2").join("d/a")).unwrap(), b"lower a", "lower untouched");
}

#[test]
fn listing_without_handle_is_dropped_once_read_to_the_end() {
    let (s, fs) = fixture();
    let d = fs.lookup(1, OsStr::new("d")).unwrap();
    let names = |fs: &OverlayFs, off: u64| -> (Vec<String>, u64) {
        let (l, start) = fs.readdir(d.ino.0, 0, off).unwrap();
        let last = l.last().map_or(0, |e| e.cookie);
        (l[start..].iter().map(|e| e.name.to_string_lossy().into_owned()).collect(), last)
    };
    let (first, last) = names(&fs, 0);
    assert!(first.contains(&"a".to_string()) && !first.contains(&"new".to_string()));
    // Read partly: the listing is kept, a name added meanwhile does not show until the end.
    fs::write(s.path("l2").join("d/new"), b"n").unwrap();
    let (rest, _) = names(&fs, 2);
    assert!(!rest.contains(&"new".to_string()), "a listing being read stays one snapshot");
    // The end was read (empty reply): the next read from the start lists the layers again.
    assert!(names(&fs, last).0.is_empty());
    assert!(names(&fs, 0).0.contains(&"new".to_string()));
}

#[test]
fn the_first_lookup_in_a_merged_directory_stats_its_lower_entries_ahead() {
    let s = Scratch::new();
    let (l1, l2) = (s.path("l1"), s.path("l2"));
    for (l, n) in [(&l1, 1), (&l2, 2)] {
        fs::create_dir_all(l.join("d/sub")).unwrap();
        fs::write(l.join(format!("d/f{n}")), b"f").unwrap();
    }
    let mount = |read_ahead: bool| two_lowers_and_upper(&s, read_ahead);
    // Directories stat'ed ahead once `want` are (10 s at most), and a little longer for any
    // more that were queued.
    let statted = |fs: &OverlayFs, want: u64| {
        wait_until(|| fs.stat_ahead_count() >= want);
        std::thread::sleep(std::time::Duration::from_millis(100));
        fs.stat_ahead_count()
    };
    let fs = mount(true);
    let d = fs.lookup(1, OsStr::new("d")).unwrap().ino.0;
    assert_eq!(statted(&fs, 1), 1, "the root's lowers, at its first lookup");
    assert!(fs.lookup(d, OsStr::new("missing")).is_err());
    assert_eq!(statted(&fs, 2), 2, "a lookup that finds nothing counts too");
    fs.lookup(d, OsStr::new("f2")).unwrap();
    fs.lookup(d, OsStr::new("sub")).unwrap();
    fs.lookup(1, OsStr::new("d")).unwrap();
    assert_eq!(statted(&fs, 2), 2, "once per directory");
    // A directory only in the upper layer has nothing to stat ahead.
    let caller = Caller { uid: 0, gid: 0, pid: 0, umask: 0 };
    let n = fs.mkdir(1, OsStr::new("new"), 0o755, caller).unwrap().ino.0;
    assert!(fs.lookup(n, OsStr::new("x")).is_err());
    assert_eq!(statted(&fs, 2), 2);
    // read_ahead=0: nothing.
    let fs = mount(false);
    let d = fs.lookup(1, OsStr::new("d")).unwrap().ino.0;
    fs.lookup(d, OsStr::new("f1")).unwrap();
    assert_eq!(statted(&fs, 0), 0);
}

#[test]
fn a_walk_into_a_listed_directory_reads_its_siblings_ahead() {
    let s = Scratch::new();
    let (l1, l2) = (s.path("l1"), s.path("l2"));
    for l in [&l1, &l2] {
        for d in ["p/a", "p/b", "p/c", "q/x", "q/y"] {
            fs::create_dir_all(l.join(d)).unwrap();
            fs::write(l.join(d).join("f"), b"f").unwrap();
        }
    }
    let mount = |read_ahead: bool| {
        let mut o = FsOptions::new(vec![l1.clone(), l2.clone()]);
        o.read_ahead = read_ahead;
        OverlayFs::new(o).unwrap()
    };
    let ino = |fs: &OverlayFs, parent: u64, name: &str| fs.lookup(parent, OsStr::new(name)).unwrap().ino.0;
    // Directories queued by the listings so far (counted as they are queued), once the
    // threads have read all of them.
    let queued = |fs: &OverlayFs| {
        wait_until(|| fs.read_ahead_counts().1 >= fs.read_ahead_counts().0);
        let (queued, done) = fs.read_ahead_counts();
        assert_eq!(done, queued, "every queued directory is read ahead");
        queued
    };

    // Listing directories (ls -l p q) reads nothing ahead.
    let fs = mount(true);
    let (p, q) = (ino(&fs, 1, "p"), ino(&fs, 1, "q"));
    let (a, b, c) = (ino(&fs, p, "a"), ino(&fs, p, "b"), ino(&fs, p, "c"));
    fs.listed(p, 0, vec![a, b, c], vec![]);
    fs.listed(q, 0, vec![], vec![]);
    assert_eq!(queued(&fs), 0);
    // A listing of b, a subdirectory of the listed p, is a walk: a and c are read ahead.
    fs.listed(b, 0, vec![], vec![]);
    assert_eq!(queued(&fs), 2, "b's siblings");
    // A second subdirectory of p, or a later chunk of b, starts nothing more.
    fs.listed(c, 0, vec![], vec![]);
    fs.listed(b, 4096, vec![], vec![]);
    assert_eq!(queued(&fs), 2);

    // A walk from the root: once it enters p, q is read ahead, and every directory listed
    // below the walked root reads its subdirectories ahead at once.
    let fs = mount(true);
    let (p, q) = (ino(&fs, 1, "p"), ino(&fs, 1, "q"));
    fs.listed(1, 0, vec![p, q], vec![]);
    assert_eq!(queued(&fs), 0, "the root alone is a listing");
    let (a, b, c) = (ino(&fs, p, "a"), ino(&fs, p, "b"), ino(&fs, p, "c"));
    fs.listed(p, 0, vec![a, b, c], vec![]);
    assert_eq!(queued(&fs), 4, "q, then a, b and c");
    let (x, y) = (ino(&fs, q, "x"), ino(&fs, q, "y"));
    fs.listed(q, 0, vec![x, y], vec![]);
    assert_eq!(queued(&fs), 6, "x and y");

    // Off with read_ahead=0.
    let fs = mount(false);
    let p = ino(&fs, 1, "p");
    let (a, b) = (ino(&fs, p, "a"), ino(&fs, p, "b"));
    fs.listed(1, 0, vec![p], vec![]);
    fs.listed(p, 0, vec![a, b], vec![]);
    fs.listed(a, 0, vec![], vec![]);
    assert_eq!(queued(&fs), 0);
}

#[test]
fn opening_a_listed_file_reads_the_data_of_the_next_ones_ahead() {
    const N: usize = 100;
    let s = Scratch::new();
    let (l1, l2, u) = (s.path("l1"), s.path("l2"), s.path("u"));
    fs::create_dir_all(l1.join("d")).unwrap();
    fs::create_dir_all(l2.join("d")).unwrap();
    fs::create_dir_all(u.join("d")).unwrap();
    fs::create_dir_all(l2.join("e")).unwrap();
    // Files spread over the three layers: their real paths, in listing order.
    let mut real = Vec::new();
    for i in 0..N {
        let dir = [&u, &l1, &l2][i % 3].join("d");
        let p = dir.join(format!("f{i:03}"));
        fs::write(&p, vec![i as u8; 16 << 10]).unwrap();
        real.push(p);
    }
    fs::write(l2.join("e/other"), vec![1u8; 16 << 10]).unwrap();
    let mount = |read_ahead: bool| two_lowers_and_upper(&s, read_ahead);
    let other = l2.join("e/other");
    let evict_all = || evict_all_of(real.iter().chain([&other]).map(|p| p.as_path()));
    // READDIRPLUS of d in two chunks, as the kernel would ask for a long directory.
    let list = |fs: &OverlayFs| {
        let d = fs.lookup(1, OsStr::new("d")).unwrap().ino.0;
        // (In name order here, with cookies to match: only the order matters.)
        let files: Vec<ListedFile> = (0..N)
            .map(|i| {
                let a = fs.lookup(d, OsStr::new(&format!("f{i:03}"))).unwrap();
                ListedFile { id: a.ino.0, cookie: 3 + i as u64 }
            })
            .collect();
        fs.listed(d, 0, vec![], files[..60].to_vec());
        fs.listed(d, 60, vec![], files[60..].to_vec());
        files
    };
    let open = |fs: &OverlayFs, ino: u64| {
        let o = fs.open(ino, libc::O_RDONLY).unwrap();
        fs.opened(ino);
        fs.release(o.fh);
    };

    let fs = mount(true);
    evict_all();
    let files = list(&fs);
    // Which of f001.. are in the page cache.
    let cached_to = |n: usize| {
        wait_until(|| fs.data_ahead_count() >= (n - 1) as u64);
        assert_eq!(fs.data_ahead_count(), (n - 1) as u64, "files asked for");
        // WILLNEED starts the disk reads and returns: a page counts as cached once its read
        // has completed, so wait for them. Read-ahead is advice: under memory pressure the
        // kernel may skip or drop a page, so most of the window, not all of it, must be
        // cached; past it nothing reads the files.
        wait_until(|| real[1..n].iter().all(|p| resident(p) > 0));
        let window: Vec<bool> = real[1..n].iter().map(|p| resident(p) > 0).collect();
        let cached = window.iter().filter(|&&c| c).count();
        assert!(cached * 4 >= window.len() * 3, "{cached} of f001..f{:03} read ahead: {window:?}", n - 1);
        for (i, p) in real.iter().enumerate().skip(n) {
            assert_eq!(resident(p), 0, "f{i:03} is past the window (up to f{:03})", n - 1);
        }
    };
    // A listing, and an open in a directory never listed, ask for nothing.
    let e = fs.lookup(1, OsStr::new("e")).unwrap().ino.0;
    let other = fs.lookup(e, OsStr::new("other")).unwrap().ino.0;
    open(&fs, other);
    wait_until(|| fs.read_ahead_idle());
    assert_eq!(fs.data_ahead_count(), 0);
    // The first open asks for a small window after it, in every layer: f001..f008.
    open(&fs, files[0].id);
    cached_to(9);
    // Opens that keep up double the window, to 64 files, each time they come within half of
    // its end: up to f017, f034, then f067.
    open(&fs, files[1].id);
    cached_to(18);
    open(&fs, files[2].id);
    cached_to(35);
    open(&fs, files[3].id);
    cached_to(68);
    // Further in, nothing more until the opens reach half of the window: at f036, the rest.
    for f in &files[4..36] {
        open(&fs, f.id);
    }
    assert_eq!(fs.data_ahead_count(), 67);
    open(&fs, files[36].id);
    cached_to(N);

    // Off with read_ahead=0.
    let fs = mount(false);
    evict_all();
    let files = list(&fs);
    open(&fs, files[0].id);
    wait_until(|| fs.read_ahead_idle());
    assert_eq!(fs.data_ahead_count(), 0);
    assert!(real.iter().skip(1).all(|p| resident(p) == 0));
}

/// Once a walk reads the files it lists (`tar`, `cp -r`), each directory read ahead of it asks
/// for the data of its first files too, before the walk lists it: the first files there are
/// in the page cache by the time the walk opens them, instead of one disk read after another
/// until the window of [`OverlayFs::opened`] gets going. 64 files and 2 MiB at most per
/// directory, in the order its listing will come, topmost layer first; a walk that reads no
/// files (`find`) asks for no data.
#[test]
fn a_walk_that_reads_files_asks_for_the_data_of_the_directories_ahead_of_it() {
    let s = Scratch::new();
    let (l1, l2, u) = (s.path("l1"), s.path("l2"), s.path("u"));
    let mut files = Vec::new();
    let mut write = |p: std::path::PathBuf, len: usize| {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, vec![7u8; len]).unwrap();
        files.push(p);
    };
    write(l2.join("r"), 4096);
    // a: 70 files in l2 and one in l1 (more than 64); b: three of 1 MiB (more than 2 MiB);
    // c: upper files. A file of l2 hidden under l1's of the same name is never asked for.
    for i in 0..70 {
        write(l2.join(format!("p/a/f{i:02}")), 4096);
    }
    write(l1.join("p/a/g"), 4096);
    for i in 0..3 {
        write(l2.join(format!("p/b/big{i}")), 1 << 20);
        write(u.join(format!("p/c/h{i}")), 4096);
    }
    write(l1.join("p/c/h0"), 4096);
    fs::create_dir_all(s.path("w")).unwrap();
    let evict_all = || evict_all_of(files.iter().map(|p| p.as_path()));
    let ino = |fs: &OverlayFs, parent: u64, name: &str| fs.lookup(parent, OsStr::new(name)).unwrap().ino.0;
    let settled = |fs: &OverlayFs| {
        wait_until(|| fs.read_ahead_counts().1 >= fs.read_ahead_counts().0);
        assert_eq!(
            fs.read_ahead_counts().1,
            fs.read_ahead_counts().0,
            "every queued directory is read ahead"
        );
    };
    // The regular files of a directory's merged listing, in its order.
    let listing = |fs: &OverlayFs, dir: u64| -> Vec<(String, ListedFile)> {
        let fh = fs.opendir(dir).unwrap();
        let (l, start) = fs.readdir(dir, fh, 0).unwrap();
        fs.releasedir(fh);
        l[start..]
            .iter()
            .filter(|e| e.kind == fuser::FileType::RegularFile)
            .map(|e| {
                let name = e.name.to_str().unwrap().to_string();
                let a = fs.lookup(dir, &e.name).unwrap();
                (name, ListedFile { id: a.ino.0, cookie: e.cookie })
            })
            .collect()
    };
    // The walk: the root is listed, then p, whose subdirectories a, b and c are read ahead.
    let walk = |fs: &OverlayFs, read_a_file: bool| {
        let (r, p) = (fs.lookup(1, OsStr::new("r")).unwrap(), ino(fs, 1, "p"));
        fs.listed(1, 0, vec![p], vec![ListedFile { id: r.ino.0, cookie: 3 }]);
        if read_a_file {
            let o = fs.open(r.ino.0, libc::O_RDONLY).unwrap();
            fs.opened(r.ino.0);
            fs.release(o.fh);
        }
        let subdirs = ["a", "b", "c"].map(|d| ino(fs, p, d));
        fs.listed(p, 0, subdirs.to_vec(), vec![]);
        settled(fs);
        subdirs
    };
    let real = |dir: &str, name: &str| {
        let top = [&u, &l1, &l2].into_iter().map(|l| l.join("p").join(dir).join(name)).find(|p| p.exists());
        top.unwrap()
    };
    let cached = |dir: &str, name: &str| resident(&real(dir, name)) > 0;
    // Read-ahead is advice (the kernel may skip or drop a page under memory pressure): most of
    // the files asked for must come into the page cache, and nothing else.
    let check = |fs: &OverlayFs, dir: &str, id: u64, asked: usize| {
        let names: Vec<String> = listing(fs, id).into_iter().map(|(n, _)| n).collect();
        wait_until(|| names[..asked].iter().all(|n| cached(dir, n)));
        let n = names[..asked].iter().filter(|n| cached(dir, n)).count();
        assert!(n * 4 >= asked * 3, "{dir}: {n} of the first {asked} files read ahead");
        for n in &names[asked..] {
            assert!(!cached(dir, n), "{dir}/{n} is past what is asked for");
        }
    };

    let fs = two_lowers_and_upper(&s, true);
    evict_all();
    let [a, b, c] = walk(&fs, true);
    assert_eq!(fs.data_ahead_count(), 64 + 2 + 3);
    check(&fs, "a", a, 64);
    check(&fs, "b", b, 2);
    check(&fs, "c", c, 3);
    assert_eq!(resident(&l1.join("p/c/h0")), 0, "a hidden lower file is not read");
    // The walk comes to a: what was asked for counts as asked, the opens ask for the rest of
    // the listing once they come within half a window of it.
    let la = listing(&fs, a);
    fs.listed(a, 0, vec![], la.iter().map(|f| f.1).collect());
    let open = |f: &ListedFile| {
        let o = fs.open(f.id, libc::O_RDONLY).unwrap();
        fs.opened(f.id);
        fs.release(o.fh);
    };
    let count_to = |n: u64| {
        wait_until(|| fs.data_ahead_count() >= n);
        fs.data_ahead_count()
    };
    la[..40].iter().for_each(|f| open(&f.1));
    wait_until(|| fs.read_ahead_idle());
    assert_eq!(fs.data_ahead_count(), 69, "the first 64 were asked for already");
    la[40..].iter().for_each(|f| open(&f.1));
    assert_eq!(count_to(69 + 7), 69 + 7);

    // 64 directories at most get their first files asked for between two opens of listed
    // files (what may be read for nothing once the walk stops reading).
    let q = s.path("l2/q");
    for i in 0..70 {
        fs::create_dir_all(q.join(format!("s{i:02}"))).unwrap();
        fs::write(q.join(format!("s{i:02}/f")), b"data").unwrap();
    }
    let fs = two_lowers_and_upper(&s, true);
    let (r, qi) = (fs.lookup(1, OsStr::new("r")).unwrap(), ino(&fs, 1, "q"));
    fs.listed(1, 0, vec![qi], vec![ListedFile { id: r.ino.0, cookie: 3 }]);
    let o = fs.open(r.ino.0, libc::O_RDONLY).unwrap();
    fs.opened(r.ino.0);
    fs.release(o.fh);
    let subdirs: Vec<u64> = (0..70).map(|i| ino(&fs, qi, &format!("s{i:02}"))).collect();
    fs.listed(qi, 0, subdirs, vec![]);
    settled(&fs);
    assert_eq!(fs.data_ahead_count(), 64);
    for i in 0..70 {
        fs::remove_dir_all(q.join(format!("s{i:02}"))).unwrap();
    }

    // A walk that opens no listed file (find, du) asks for no data; nor read_ahead=0.
    for (read_ahead, read_a_file) in [(true, false), (false, true)] {
        let fs = two_lowers_and_upper(&s, read_ahead);
        evict_all();
        walk(&fs, read_a_file);
        wait_until(|| fs.read_ahead_idle());
        assert_eq!(fs.data_ahead_count(), 0);
        assert!(files.iter().skip(1).all(|p| resident(p) == 0));
    }
}

/// A lower layer on a loop-mounted ext4 of its own, whose disk's read-ahead window is set to
/// `window_kb` (the asking ahead of [`OverlayFs::read`] depends on it); needs root.
fn lower_on_a_disk(s: &Scratch, window_kb: u64) -> (common::Mounted, std::path::PathBuf) {
    let (guard, x) = loop_mount(s.dir.path(), 64, "mkfs.ext4 -q -F");
    set_disk_window(&x, window_kb);
    (guard, x)
}

/// Sets the read-ahead window of the disk that `path` is on (a loop device of [`lower_on_a_disk`]).
fn set_disk_window(path: &std::path::Path, window_kb: u64) {
    let dev = std::os::unix::fs::MetadataExt::dev(&fs::metadata(path).unwrap());
    let q = format!("/sys/dev/block/{}:{}/queue/read_ahead_kb", libc::major(dev), libc::minor(dev));
    fs::write(&q, format!("{window_kb}\n")).unwrap();
    assert_eq!(layerfs::sys::disk_read_ahead_kb(dev), Some(window_kb));
}

#[test]
fn sequential_mapped_reads_ask_for_the_next_bytes_ahead() {
    use layerfs::fs::READ_AHEAD;
    const MIB: u64 = 1 << 20;
    if !root_or_skip("a loop-mounted lower layer with a small read-ahead window") {
        return;
    }
    let s = Scratch::new();
    // 128 KiB, as many disks have: a fault reads around it by far less than READ_AHEAD.
    let (_disk, l1) = lower_on_a_disk(&s, 128);
    let (u, w) = (s.path("u"), s.path("w"));
    let big = l1.join("big");
    let len = 4 * READ_AHEAD;
    fs::write(&big, vec![7u8; len as usize]).unwrap();
    let mount = |read_ahead: bool| {
        let mut o = FsOptions::new(vec![l1.clone()]);
        o.upper = Some(u.clone());
        o.work = Some(w.clone());
        o.read_ahead = read_ahead;
        let fs = OverlayFs::new(o).unwrap();
        let ino = fs.lookup(1, OsStr::new("big")).unwrap().ino.0;
        let fh = fs.open(ino, libc::O_RDONLY).unwrap().fh;
        // (A read ahead the open asked for may still be landing: evict until it has.)
        for _ in 0..100 {
            evict(&big);
            if resident(&big) == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(resident(&big), 0, "the page cache cannot be checked here");
        (fs, fh)
    };
    // Reads 1 MiB at `off`; returns the bytes asked for by it.
    let read = |fs: &OverlayFs, fh: u64, off: u64| {
        let before = fs.read_asked_bytes();
        let mut buf = Vec::new();
        let r = fs.read(fh, off, MIB as u32, &mut buf).unwrap();
        assert!(matches!(r, ReadData::Mapped(_)));
        assert!(r.bytes().len() == MIB as usize && r.bytes().iter().all(|&b| b == 7));
        fs.read_asked_bytes() - before
    };
    // WILLNEED starts the reads and returns: wait for the MiB at `off` (read-ahead is advice,
    // and memory pressure may drop a page: most of it is enough).
    let comes_in = |off: u64| {
        let pages = (MIB / 4096) as usize;
        wait_until(|| resident_in(&big, off as usize, MIB as usize) >= pages);
        let got = resident_in(&big, off as usize, MIB as usize);
        assert!(got * 4 >= pages * 3, "{got} of {pages} pages at {off} read ahead");
    };

    let (fs, fh) = mount(true);
    // A read from the start begins a stream: its own range and the next READ_AHEAD bytes.
    // The window's last MiB lies past what the kernel reads around a fault on this disk.
    assert_eq!(read(&fs, fh, 0), MIB + READ_AHEAD);
    comes_in(READ_AHEAD);
    // The next read moves the window by its own size, asking only for the new part.
    assert_eq!(read(&fs, fh, MIB), MIB);
    comes_in(READ_AHEAD + MIB);
    // The kernel's read-ahead sends several reads at once, in any order: a read a little
    // behind the last one is still the stream, and asks for nothing new.
    assert_eq!(read(&fs, fh, 0), 0);
    // A read far off is no stream: its own range only; a read after it starts a new one,
    // asking for nothing past the end of the file.
    let far = 3 * READ_AHEAD;
    assert_eq!(read(&fs, fh, far), MIB);
    assert_eq!(read(&fs, fh, far + MIB), len - far - MIB);
    assert_eq!(read(&fs, fh, len - MIB), 0);
    fs.release(fh);

    // Nothing with read_ahead=0.
    let (fs, fh) = mount(false);
    assert_eq!(read(&fs, fh, 0), 0);
    assert_eq!(read(&fs, fh, MIB), 0);
    fs.release(fh);

    // Nothing either where the disk reads around a fault READ_AHEAD bytes by itself.
    set_disk_window(&l1, READ_AHEAD >> 10);
    let dev = std::os::unix::fs::MetadataExt::dev(&fs::metadata(&l1).unwrap());
    let (fs, fh) = mount(true);
    assert!(fs.disk_reads_around(dev));
    assert_eq!(read(&fs, fh, 0), 0);
    assert_eq!(read(&fs, fh, MIB), 0);
    fs.release(fh);
}

#[test]
fn large_reads_are_answered_from_a_mapping_of_the_file() {
    use layerfs::fs::MAP_READ_MIN;
    use std::io::Write;
    let s = Scratch::new();
    let (l1, u, w) = (s.path("l1"), s.path("u"), s.path("w"));
    fs::create_dir_all(&l1).unwrap();
    // 3 MiB and a bit, not a whole number of pages, with bytes that differ at every offset.
    let data: Vec<u8> = (0..(3 << 20) + 1234u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    fs::write(l1.join("big"), &data).unwrap();
    let mut o = FsOptions::new(vec![l1.clone()]);
    o.upper = Some(u);
    o.work = Some(w);
    let fs = OverlayFs::new(o).unwrap();
    let ino = fs.lookup(1, OsStr::new("big")).unwrap().ino.0;
    let fh = fs.open(ino, libc::O_RDONLY).unwrap().fh;
    let len = data.len() as u64;
    let mut buf = Vec::new();
    let max = MAP_READ_MIN as u32 * 8;
    // Aligned, unaligned, across the end, exactly at the end, past it; and small reads.
    for (off, size) in [
        (0, max),
        (4096 * 3, MAP_READ_MIN as u32),
        (12345, max),
        (len - 5000, max),
        (len - MAP_READ_MIN as u64, MAP_READ_MIN as u32),
        (len, max),
        (len + 99, max),
        (777, 100),
        (len - 10, 4096),
    ] {
        let r = fs.read(fh, off, size, &mut buf).unwrap();
        if size as usize >= MAP_READ_MIN && off < len {
            assert!(matches!(r, ReadData::Mapped(_)), "a read of {size} at {off} is mapped");
        } else {
            assert!(matches!(r, ReadData::Copied(_)), "a read of {size} at {off} is copied");
        }
        let want = &data[(off.min(len) as usize)..((off + size as u64).min(len) as usize)];
        assert!(r.bytes() == want, "read of {size} at {off}: {} bytes, want {}", r.bytes().len(), want.len());
    }

    // The lower file is truncated by someone else while a reply is being written from its
    // mapping: the write fails (EFAULT) or stops short, and this process lives on.
    let r = fs.read(fh, 1 << 20, max, &mut buf).unwrap();
    assert!(matches!(r, ReadData::Mapped(_)));
    fs::OpenOptions::new().write(true).open(l1.join("big")).unwrap().set_len(4096).unwrap();
    let mut out = fs::File::create(s.path("o").join("out")).unwrap();
    match out.write(r.bytes()) {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EFAULT)),
        Ok(n) => assert!(n < r.bytes().len(), "wrote {n} bytes of pages past the end"),
    }
    drop(r);
    // Later reads see the new size.
    assert!(fs.read(fh, 1 << 20, max, &mut buf).unwrap().bytes().is_empty());
    assert_eq!(fs.read(fh, 0, max, &mut buf).unwrap().bytes(), &data[..4096]);
    fs.release(fh);
}

/// `read_into` (the io_uring transport's read, straight into its reply buffer) returns the
/// file's bytes, stops at the end of the file, and asks ahead on a sequential stream as the
/// mapped read does.
#[test]
fn read_into_reads_the_bytes_and_asks_ahead() {
    use layerfs::fs::READ_AHEAD;
    const MIB: usize = 1 << 20;
    if !root_or_skip("a loop-mounted lower layer with a small read-ahead window") {
        return;
    }
    let s = Scratch::new();
    let (_disk, l1) = lower_on_a_disk(&s, 128);
    let (u, w) = (s.path("u"), s.path("w"));
    let data: Vec<u8> = (0..3 * MIB + 100).map(|i| (i % 253) as u8).collect();
    fs::write(l1.join("f"), &data).unwrap();
    let mut o = FsOptions::new(vec![l1.clone()]);
    o.upper = Some(u.clone());
    o.work = Some(w.clone());
    let fs = OverlayFs::new(o).unwrap();
    let ino = fs.lookup(1, OsStr::new("f")).unwrap().ino.0;
    let fh = fs.open(ino, libc::O_RDONLY).unwrap().fh;
    let mut buf = vec![0u8; MIB];
    let before = fs.read_asked_bytes();
    assert_eq!(fs.read_into(fh, 0, &mut buf).unwrap(), MIB);
    assert!(buf == data[..MIB]);
    // A stream's first read asks for itself and what follows, up to the end of the file.
    let asked = fs.read_asked_bytes() - before;
    assert_eq!(asked, (MIB as u64 + READ_AHEAD).min(data.len() as u64));
    assert_eq!(fs.read_into(fh, MIB as u64, &mut buf).unwrap(), MIB);
    assert!(buf == data[MIB..2 * MIB]);
    let n = fs.read_into(fh, 3 * MIB as u64, &mut buf).unwrap();
    assert_eq!(n, 100);
    assert!(buf[..n] == data[3 * MIB..]);
    assert_eq!(fs.read_into(fh, data.len() as u64, &mut buf).unwrap(), 0);
    fs.release(fh);
}

#[test]
fn a_created_file_is_its_own_read_write_backing_file_with_the_callers_owner() {
    use std::os::unix::fs::MetadataExt;
    let (s, fs) = fixture();
    let me =
        Caller { uid: unsafe { libc::geteuid() }, gid: unsafe { libc::getegid() }, umask: 0o022, pid: 0 };
    // Write-only, mode 0: the server's descriptor is still read-write (a new file's creator may
    // open it so), and it is the one handed out as the passthrough backing file.
    let (attr, o) = fs.create(1, OsStr::new("new"), 0o100000, libc::O_WRONLY | libc::O_CREAT, me).unwrap();
    let (fd, upper) = fs.backing_file(o.fh).unwrap();
    assert!(upper);
    let fl = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&*fd), libc::F_GETFL) };
    assert_eq!(fl & libc::O_ACCMODE, libc::O_RDWR, "backing descriptor is read-write");
    let (fd2, _) = fs.backing_file(o.fh).unwrap();
    assert!(std::sync::Arc::ptr_eq(&fd, &fd2), "the handle's own descriptor, not a new open");
    fs.write(o.fh, 0, b"data").unwrap();
    let m = fs::metadata(s.path("u").join("new")).unwrap();
    assert_eq!((attr.perm, attr.uid, attr.gid, attr.size), (0, m.uid(), m.gid(), 0));
    assert_eq!((m.uid(), m.gid()), (me.uid, me.gid), "owner already right: kept");
    assert_eq!(m.mode() & 0o7777, 0);
    fs.release(o.fh);
    assert_eq!(fs::read(s.path("u").join("new")).unwrap(), b"data");
    // A sync handle is not a backing file for the others: a fresh descriptor is.
    let (_, o) = fs.create(1, OsStr::new("app"), 0o100644, libc::O_RDWR | libc::O_SYNC, me).unwrap();
    let (fd3, _) = fs.backing_file(o.fh).unwrap();
    let fl = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&*fd3), libc::F_GETFL) };
    assert_eq!(fl & libc::O_SYNC, 0, "a sync handle's flags do not reach the backing file");
    fs.release(o.fh);
    // A directory's owner is read through its fd the same way.
    let d = fs.mkdir(1, OsStr::new("dir"), 0o755, me).unwrap();
    let m = fs::metadata(s.path("u").join("dir")).unwrap();
    assert_eq!((d.uid, d.gid, d.perm), (me.uid, me.gid, 0o755));
    assert_eq!((m.uid(), m.gid()), (me.uid, me.gid));
    // Another owner (as root): chowned.
    if me.uid == 0 {
        let d = fs
            .mkdir(1, OsStr::new("their-dir"), 0o750, Caller { uid: 4321, gid: 8765, umask: 0, pid: 0 })
            .unwrap();
        let m = fs::metadata(s.path("u").join("their-dir")).unwrap();
        assert_eq!((m.uid(), m.gid(), d.uid, d.gid, d.perm), (4321, 8765, 4321, 8765, 0o750));
        let other = Caller { uid: 4321, gid: 8765, umask: 0o022, pid: 0 };
        let (attr, o) = fs.create(1, OsStr::new("theirs"), 0o104755, libc::O_WRONLY, other).unwrap();
        let m = fs::metadata(s.path("u").join("theirs")).unwrap();
        assert_eq!((m.uid(), m.gid(), attr.uid, attr.gid), (4321, 8765, 4321, 8765));
        assert_eq!(m.mode() & 0o7777, 0o4755, "setuid put back after the chown");
        assert_eq!(attr.perm, 0o4755);
        fs.release(o.fh);
    }
}

/// A create finds a name taken or free as a lookup reads it: the upper's own objects (a
/// zero-size file with the whiteout xattr outside an `opaque=x` directory among them) and
/// names a lower shows are taken; names under the upper's whiteouts are free, and the
/// whiteout goes. A directory made through the mount takes new names as any other.
#[test]
fn create_finds_names_taken_and_free_as_lookup_does() {
    if !common::root_or_skip("a char-device whiteout and a trusted xattr in the upper") {
        return;
    }
    let s = Scratch::new();
    let (l1, l2, u) = (s.path("l1"), s.path("l2"), s.path("u"));
    fs::create_dir_all(l2.join("d")).unwrap();
    for f in ["hidden_wh", "hidden_chr", "shown"] {
        fs::write(l1.join(f), b"lower").unwrap();
    }
    fs::create_dir_all(&u).unwrap();
    fs::write(u.join(".wh.hidden_wh"), b"").unwrap();
    common::mknod_whiteout(&u.join("hidden_chr"));
    fs::write(u.join("x_upper"), b"").unwrap();
    common::set_xattr(&u.join("x_upper"), "trusted.overlay.whiteout", b"");
    let fs = two_lowers_and_upper(&s, false);
    let me = Caller { uid: 0, gid: 0, umask: 0o022, pid: 0 };
    let eexist = |r: layerfs::error::Result<_>| r.map(drop).unwrap_err().errno == libc::EEXIST;
    for taken in ["shown", "d", "x_upper"] {
        assert!(eexist(fs.mknod(1, OsStr::new(taken), libc::S_IFREG | 0o644, 0, me)), "{taken}");
        assert!(eexist(fs.mkdir(1, OsStr::new(taken), 0o755, me)), "{taken}");
    }
    fs.mknod(1, OsStr::new("hidden_wh"), libc::S_IFREG | 0o644, 0, me).unwrap();
    assert!(!u.join(".wh.hidden_wh").exists(), "the whiteout file goes");
    assert_eq!(fs::read(u.join("hidden_wh")).unwrap(), b"");
    let nd = fs.mkdir(1, OsStr::new("hidden_chr"), 0o755, me).unwrap().ino.0;
    assert!(fs.lookup(nd, OsStr::new("anything")).is_err());
    let fresh = fs.mkdir(1, OsStr::new("fresh"), 0o755, me).unwrap().ino.0;
    fs.mknod(fresh, OsStr::new("f"), libc::S_IFREG | 0o644, 0, me).unwrap();
    assert!(eexist(fs.mknod(fresh, OsStr::new("f"), libc::S_IFREG | 0o644, 0, me)));
    assert!(eexist(fs.mkdir(fresh, OsStr::new("f"), 0o755, me)));
    // What a new object's reply says is what a stat of it says.
    let same = |made: layerfs::fs::Attr| {
        let again = fs.getattr(made.ino.0).unwrap();
        assert_eq!(
            (made.perm, made.size, made.ctime, made.mtime, made.st_ino),
            (again.perm, again.size, again.ctime, again.mtime, again.st_ino)
        );
    };
    let sub = fs.mkdir(fresh, OsStr::new("sub"), 0o700, me).unwrap();
    same(sub);
    let (file, _) = fs.create(sub.ino.0, OsStr::new("g"), 0o100640, libc::O_WRONLY, me).unwrap();
    same(file);
    assert_eq!(file.perm, 0o640);
}

/// A file made through the mount is known to have no capabilities until an xattr of it is
/// set: then they are read from the file.
#[test]
fn new_files_capabilities_are_read_once_set() {
    if !common::root_or_skip("setting security.capability") {
        return;
    }
    let (_s, fs) = fixture();
    let me = Caller { uid: 0, gid: 0, umask: 0o022, pid: 0 };
    let caps = OsStr::new("security.capability");
    let f = fs.mknod(1, OsStr::new("bin"), libc::S_IFREG | 0o755, 0, me).unwrap().ino.0;
    assert_eq!(fs.getxattr(f, caps).unwrap_err().errno, libc::ENODATA);
    // VFS_CAP_REVISION_2 granting cap_net_raw.
    let v = [1u8, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    fs.setxattr(f, caps, &v, 0, false).unwrap();
    assert_eq!(fs.getxattr(f, caps).unwrap(), v);
    fs.removexattr(f, caps).unwrap();
    assert_eq!(fs.getxattr(f, caps).unwrap_err().errno, libc::ENODATA);
}

/// A copy-up gives the copy the source's owner and mode whichever way it makes it: created
/// with them (the server's own owner, a plain mode: no chown, no chmod after), or created for
/// the server and given them at the end (another owner, setuid/setgid/sticky bits, a mode
/// without the owner's write bit, a file with an access ACL). A set-gid workdir gives a new
/// file its group: the copy-up reads what it got and puts the source's back.
#[test]
fn copy_up_gives_every_owner_and_mode_back() {
    use layerfs::sys::SetTime;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !root_or_skip("chown of lower files to other owners") {
        return;
    }
    let files: &[(&str, u32, (u32, u32))] = &[
        ("f644", 0o644, (0, 0)),
        ("f600", 0o600, (4321, 8765)),
        ("f444", 0o444, (0, 0)),
        ("f4755", 0o4755, (0, 0)),
        ("f2711", 0o2711, (4321, 8765)),
        ("facl", 0o640, (0, 0)),
        ("empty", 0o751, (0, 0)),
    ];
    let dirs: &[(&str, u32, (u32, u32))] = &[
        ("d755", 0o755, (0, 0)),
        ("d555", 0o555, (0, 0)),
        ("d1777", 0o1777, (0, 0)),
        ("d750", 0o750, (4321, 8765)),
    ];
    for setgid_workdir in [false, true] {
        let s = Scratch::new();
        let (l, u, w) = (s.path("l"), s.path("u"), s.path("w"));
        fs::create_dir_all(&l).unwrap();
        fs::create_dir_all(&w).unwrap();
        for &(n, mode, (uid, gid)) in files {
            fs::write(l.join(n), if n == "empty" { &b""[..] } else { &b"some data"[..] }).unwrap();
            std::os::unix::fs::lchown(l.join(n), Some(uid), Some(gid)).unwrap();
            fs::set_permissions(l.join(n), fs::Permissions::from_mode(mode)).unwrap();
        }
        for &(n, mode, (uid, gid)) in dirs {
            fs::create_dir(l.join(n)).unwrap();
            std::os::unix::fs::lchown(l.join(n), Some(uid), Some(gid)).unwrap();
            fs::set_permissions(l.join(n), fs::Permissions::from_mode(mode)).unwrap();
        }
        let acl =
            std::process::Command::new("setfacl").args(["-m", "u:1234:rw"]).arg(l.join("facl")).status();
        let with_acl = acl.is_ok_and(|s| s.success());
        // (Only a test filesystem without ACLs, outside CI, skips the ACL's part.)
        assert!(with_acl || !common::must_mount(), "setfacl failed on the test filesystem");
        if setgid_workdir {
            std::os::unix::fs::lchown(&w, None, Some(8765)).unwrap();
            fs::set_permissions(&w, fs::Permissions::from_mode(0o2775)).unwrap();
        }
        let mut o = FsOptions::new(vec![l.clone()]);
        o.upper = Some(u.clone());
        o.work = Some(w);
        let fs = OverlayFs::new(o).unwrap();
        for &(n, ..) in files.iter().chain(dirs) {
            let a = fs.lookup(1, OsStr::new(n)).unwrap();
            // An atime-only change: a copy-up that changes neither owner nor mode.
            let sa = SetAttr { atime: Some(SetTime::At(1_000_000, 0)), ..Default::default() };
            fs.setattr(a.ino.0, sa).unwrap();
            let (lm, um) =
                (fs::symlink_metadata(l.join(n)).unwrap(), fs::symlink_metadata(u.join(n)).unwrap());
            let what = format!("{n} (set-gid workdir: {setgid_workdir})");
            assert_eq!((um.uid(), um.gid()), (lm.uid(), lm.gid()), "{what}: owner");
            assert_eq!(um.mode(), lm.mode(), "{what}: mode {:o} against {:o}", um.mode(), lm.mode());
            assert_eq!((um.mtime(), um.mtime_nsec()), (lm.mtime(), lm.mtime_nsec()), "{what}: mtime");
            if lm.is_file() {
                assert_eq!(fs::read(u.join(n)).unwrap(), fs::read(l.join(n)).unwrap(), "{what}: data");
            }
        }
        if with_acl {
            let get = |p: &std::path::Path| {
                let out = std::process::Command::new("getfacl").args(["-c", "-n"]).arg(p).output().unwrap();
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            assert_eq!(get(&u.join("facl")), get(&l.join("facl")), "the access ACL");
        }
    }
}

/// Dirty and writeback pages of a whole file (cachestat(2), Linux 6.5).
fn dirty_pages(p: &std::path::Path) -> u64 {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(p).unwrap();
    let range = [0u64; 2];
    let mut stat = [0u64; 5];
    // SAFETY: cachestat reads a range and fills a struct of five u64 counters.
    let r = unsafe { libc::syscall(451, f.as_raw_fd(), range.as_ptr(), stat.as_mut_ptr(), 0) };
    assert_eq!(r, 0, "cachestat: {}", std::io::Error::last_os_error());
    stat[1] + stat[2]
}

/// fsync of a handle that opened the lower file read-only syncs the copy made since through
/// another handle (what the kernel syncs, as it follows such a descriptor to the copy); it
/// synced the lower file and left the copy's written pages dirty.
#[test]
fn fsync_of_a_read_handle_from_before_a_copy_up_syncs_the_copy() {
    let (s, fs) = fixture();
    let d = fs.lookup(1, OsStr::new("d")).unwrap();
    let a = fs.lookup(d.ino.0, OsStr::new("a")).unwrap();
    let r = fs.open(a.ino.0, libc::O_RDONLY).unwrap();
    let w = fs.open(a.ino.0, libc::O_WRONLY).unwrap();
    fs.write(w.fh, 0, &vec![b'N'; 1 << 20]).unwrap();
    fs.release(w.fh);
    let copy = s.path("u").join("d/a");
    assert!(dirty_pages(&copy) > 0, "the write left no dirty pages to sync");
    fs.fsync(r.fh, false).unwrap();
    assert_eq!(dirty_pages(&copy), 0, "fsync of the read handle left the copy dirty");
    fs.release(r.fh);
}
