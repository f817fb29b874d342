//! Shrunk failures found by `prop_write.rs`, pinned as named tests. Each runs its op list on
//! kernel overlayfs and on layerfs and compares as the property test does.

mod common;
mod diffkit;

#[allow(unused_imports)]
use diffkit::Op::*;
use diffkit::*;

macro_rules! need_mounts {
    () => {
        if !available() {
            return;
        }
    };
}

/// Found by prop_write (Remount op): unmounting with `fusermount3 -u` and mounting again at
/// once sometimes lost the new mount (1 in 8 under load): the exiting old server let fuser
/// unmount its mountpoint by path, whose "still mounted?" check reads an aborted connection
/// as mounted. Fixed by exiting in `destroy`. The differential runner waits for the old
/// server to exit anyway; this test does not wait.
#[test]
fn regression_quick_remount_keeps_new_mount() {
    need_mounts!();
    let s = common::Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    std::fs::write(l.join("f"), b"x").unwrap();
    for i in 0..40 {
        let mut first = common::mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
        let st = std::process::Command::new("fusermount3").arg("-u").arg(&m).status().unwrap();
        assert!(st.success());
        first.mnt = std::path::PathBuf::new(); // unmounted above, without the harness's pause
        let _second = common::mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(common::is_mounted(&m), "round {i}: the new mount vanished");
        assert_eq!(std::fs::read(m.join("f")).unwrap(), b"x");
    }
}

/// Found by prop_write with `writeback=1`: a lower file held open read-only and then unlinked
/// (or replaced by a rename) showed 0 links to `fstat` (the kernel drops the count itself on
/// unlink and, under the writeback cache, kept its other cached attributes), where kernel
/// overlayfs shows the lower file's own count. The server now has the attributes asked for
/// again.
#[test]
fn regression_writeback_fstat_of_an_unlinked_lower_file() {
    need_mounts!();
    for ops in [
        [Hold(0, "d/x", false), Unlink("d/x"), HeldStat(0)],
        [Hold(0, "d/x", false), Rename("a", "d/x"), HeldStat(0)],
    ] {
        check_ops_with(&prop_stack(), &ops, "writeback=1,passthrough=0");
        check_ops_with(&prop_stack(), &ops, "passthrough=0");
    }
}

/// Found by prop_write. Shell: lower `b -> a` (symlink); through the mount
/// `ln b e/f; rm -rf e; echo x > b` gives EINVAL (kernel: writes to a). Also with an upper-only
/// symlink: `ln -s g s; ln s s2; rm s2; readlink s` gives EINVAL.
#[test]
fn regression_hardlinked_symlink_unlink_breaks_readlink() {
    need_mounts!();
    check_ops(&[Link("b", "e/f"), RmRf("e"), Write("b", 0)]);
    check_ops(&[Symlink("a", "c"), Link("c", "d/x"), Unlink("d/x"), Append("c", 1)]);
}

/// Found by prop_write on 18 lowers with the server's open-file limit at 96: writing `d/x`
/// (18 lower directories merge into `d`) and then listing the root left `d` out. Listing the
/// root looked every name up for its attributes (READDIRPLUS), the lookup of `d` failed with
/// EMFILE, and a name whose lookup failed was skipped as if it had just been removed. Such a
/// name is now listed without attributes; only ENOENT still means it went away. Since an open
/// that meets EMFILE closes directory descriptors and tries again, this stack no longer gets
/// that far: here it checks the answers under the limit (rmdir too), and
/// `fuse::tests::a_listing_keeps_a_name_whose_lookup_fails` holds the listing itself.
#[test]
fn regression_listing_keeps_a_name_whose_lookup_fails() {
    need_mounts!();
    let s = common::Scratch::new();
    let stack = prop_stack_many();
    let root = s.path("stack");
    stack.build(&root);
    let lowers: Vec<_> = (0..stack.lowers.len()).map(|i| root.join(format!("l{i}"))).collect();
    let (u, w, m) = (root.join("u"), s.path("w"), s.path("m"));
    for round in 0..3 {
        let _mnt = common::mount_with_nofile(&lowers, &u, &w, &m, 96);
        let write = std::fs::write(m.join("d/x"), format!("d/x-{round}\n"));
        assert!(write.is_ok(), "round {round}: write: {write:?}");
        for n in NAMES {
            let _ = std::fs::symlink_metadata(m.join(n));
        }
        let mut names: Vec<String> =
            std::fs::read_dir(&m).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["a", "b", "c", "d", "e"], "round {round}");
        // Out of descriptors, the server closes its directory descriptors and tries again:
        // the answer is the kernel's, not EMFILE.
        // (15 files of the 16 middle layers, one of them whited out, `z`, `x` and `big`.)
        for _ in 0..3 {
            let e = std::fs::remove_dir(m.join("d")).expect_err("rmdir of a non-empty directory");
            assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY), "round {round}: rmdir d: {e}");
            assert_eq!(std::fs::read_dir(m.join("d")).unwrap().count(), 18, "round {round}");
        }
    }
}

/// Found by prop_write on 18 lowers (CI at b477195), and the same on two: renaming a new
/// directory `d/y` over `d/x`, a non-empty directory only in the upper, fails with ENOTEMPTY,
/// and the kernel has marked `d/y` opaque by then (its parent merges lower directories), where
/// layerfs checked the target first and left `d/y` unmarked: the uppers differed. A target with
/// lower content is still checked before anything changes (the last case).
#[test]
fn regression_failed_rename_over_a_dir_keeps_the_source_opaque() {
    need_mounts!();
    let ops = [Mkdir("d/y"), Unlink("d/x"), Mkdir("d/x"), Write("d/x/q", 0), Rename("d/y", "d/x")];
    check_ops(&ops);
    check_ops_on(&prop_stack_many(), &ops);
    check_ops(&[Mkdir("e/y"), Rename("e/y", "d")]);
}

/// Found by prop_write once held descriptors could `fchmod`: a lower file held open, then
/// removed with its directory (`rm -rf d`), and changed through the descriptor (its copy-up)
/// gave EEXIST, where the kernel gives ENOENT, as for a create in a removed directory, also
/// when the directory had an upper copy and when a new directory has its name. Removed alone,
/// the file's copy-up gives EEXIST on both.
#[test]
fn regression_copy_up_of_a_held_file_whose_directory_was_removed() {
    need_mounts!();
    check_ops(&[Hold(0, "d/big", false), RmRf("d"), HeldChmod(0, 0o600)]);
    check_ops(&[Hold(0, "d/x", false), RmRf("d"), Mkdir("d"), Write("d/x", 1), HeldChmod(0, 0o600)]);
    check_ops(&[Write("d/y", 1), Hold(0, "d/x", false), RmRf("d"), HeldChmod(0, 0o600)]);
    check_ops(&[Hold(0, "d/x", false), Unlink("d/x"), HeldChmod(0, 0o600)]);
    check_ops_with(&prop_stack(), &[Hold(0, "e/h", false), RmRf("e"), HeldChmod(0, 0o600)], "passthrough=0");
}
