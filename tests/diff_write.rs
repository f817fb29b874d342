//! Differential write scenarios: each scenario is written once and run on a kernel overlayfs
//! mount and a layerfs mount built from the same layers; the step logs (errno of every step and
//! what it read back), the merged trees and the canonical upper directories must match, no
//! lower may change, and layerfs must leave `WORKDIR/work` empty.
//!
//! The runner, the fixture builder and the list of tolerated differences (`TOLERATED`) live in
//! `tests/diffkit/mod.rs`, shared with `prop_write.rs` and `regressions.rs`.
//!
//! File and directory mtimes are compared for every scenario; only those whose mtime on *both*
//! sides is from after the scenario started are exempt (wall clocks of the two runs differ). A
//! file copied up must keep its lower mtime on both sides, and its directory its own.

mod common;
mod diffkit;

use diffkit::*;

/// Two lowers (l0 on top of l1) holding every kind of object, a whiteout (char 0/0) and an
/// opaque directory in l0, user xattrs, a hard-link pair, a fifo and a char device.
fn std_stack() -> Stack {
    let bottom = Layer::new()
        .file("f_low", "lower\n")
        .xattr("f_low", "user.a", "1")
        .file("f_both", "bottom\n")
        .file_mode("f_ro", "ro\n", 0o444)
        .file("f_own", "owned\n")
        .owner("f_own", 1000, 1000)
        .file_mode("f_exec", "#!/bin/sh\n", 0o755)
        .dir("d_low")
        .xattr("d_low", "user.d", "low")
        .file("d_low/a", "a\n")
        .file("d_low/b", "b\n")
        .file("d_low/sub/c", "c\n")
        .dir("d_both")
        .file("d_both/x", "x-bottom\n")
        .file("d_both/y", "y\n")
        .file("etc/passwd", "root:x:0:0\n")
        .file("etc/gone", "gone\n")
        .file("etc/keep/a", "ka\n")
        .file("etc/keep/b", "kb\n")
        .file("hl1", "linked\n")
        .hardlink("hl2", "hl1")
        .symlink("sym_low", "f_low")
        .symlink("sym_dangling", "nowhere")
        .fifo("fifo_low")
        .chardev("dev_low", 1, 3)
        .file("wh_target", "hidden\n")
        .file("wh_dir/h1", "h1\n")
        .file("opq/old1", "old1\n")
        .file("opq/old2", "old2\n")
        .file("allwh/p", "p\n")
        .file("allwh/q", "q\n")
        .dir("empty_low")
        .dir_mode("d_mode", 0o700)
        .file("d_mode/m", "m\n")
        .file("big", &"0123456789abcdef".repeat(64 * 1024));
    let top = Layer::new()
        .file("f_both", "top\n")
        .file("f_top", "top only\n")
        .dir("d_both")
        .xattr("d_both", "user.dir", "top")
        .file("d_both/x", "x-top\n")
        .file("d_both/z", "z\n")
        .file("d_top/t1", "t1\n")
        .whiteout("wh_target")
        .whiteout("wh_dir")
        .opaque("opq")
        .file("opq/new1", "new1\n")
        .dir("allwh")
        .whiteout("allwh/p")
        .whiteout("allwh/q");
    Stack::new(vec![top, bottom])
}

/// The standard stack plus an upper that already holds files, a whiteout (etc/gone) and a
/// merged directory with a whiteout for a sibling (d_both/y).
fn stack_with_upper() -> Stack {
    std_stack().with_upper(
        Layer::new()
            .file("u_file", "upper\n")
            .file("u_dir/k", "k\n")
            .dir("etc")
            .whiteout("etc/gone")
            .dir("d_both")
            .whiteout("d_both/y")
            .file("f_both", "upper\n"),
    )
}

/// Three lowers: the middle one whites out a directory that the top one brings back.
fn three_stack() -> Stack {
    let l2 = Layer::new()
        .file("f3", "bottom\n")
        .file("x/a", "a\n")
        .file("x/b", "b\n")
        .file("m/one", "1\n")
        .file("deep/d1/d2/f", "deep\n");
    let l1 = Layer::new()
        .file("f3", "middle\n")
        .whiteout("x")
        .file("m/two", "2\n")
        .dir("deep/d1")
        .whiteout("deep/d1/d2");
    let l0 = Layer::new().file("x/b", "b-top\n").file("x/c", "c\n").file("m/three", "3\n");
    Stack::new(vec![l0, l1, l2])
}

macro_rules! need_mounts {
    () => {
        if !available() {
            return;
        }
    };
}

// ---- create / mkdir / mknod / symlink -----------------------------------------------------------

#[test]
fn create_files_everywhere() {
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.create("new_root", "r\n");
        c.create("d_low/new", "in lower dir\n"); // copies up d_low
        c.create("d_low/sub/new2", "nested\n"); // copies up d_low/sub
        c.create("d_top/new3", "x\n");
        c.mkdir("u_only");
        c.create("u_only/f", "upper-only dir\n");
        c.create_excl("f_low");
        c.create_excl("new_root");
        c.create_excl("wh_target"); // name whited out in l0: free
        c.create("nodir/f", "x");
        c.create("f_low/f", "x");
        c.open_flags("d_low", libc::O_WRONLY, "O_WRONLY");
        c.open_flags("d_low", libc::O_RDWR | libc::O_CREAT, "O_RDWR|O_CREAT");
        c.create("opq/old1", "recreated under opaque\n");
        c.readdir("");
        c.readdir("d_low");
        c.readdir("opq");
        c.lstat("d_low");
        c.getxattr("d_low", "user.d");
        c.read("d_low/a");
    });
}

#[test]
fn mkdir_cases() {
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.mkdir("nd");
        c.mkdir_mode("nd/inner", 0o711);
        c.mkdir("d_low/sub/deeper");
        c.mkdir("d_low"); // EEXIST
        c.mkdir("f_low"); // EEXIST
        c.mkdir("sym_dangling"); // EEXIST (does not follow)
        c.mkdir("nothere/x"); // ENOENT
        c.mkdir("f_low/x"); // ENOTDIR
        c.mkdir("wh_target"); // over a lower whiteout
        c.mkdir("wh_dir"); // over a whited-out dir: must be empty
        c.readdir("wh_dir");
        c.lstat("wh_dir/h1");
        c.readdir("wh_target");
        c.lstat("nd/inner");
        c.readdir("d_low/sub");
    });
}

#[test]
fn mknod_fifo_and_chardev() {
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.mkfifo("fifo_new");
        c.mkfifo("d_low/fifo_in_lower_dir");
        c.mknod_chr("null2", 1, 3);
        c.mknod_chr("d_both/zero2", 1, 5);
        c.mkfifo("fifo_low"); // EEXIST
        c.mknod_chr("f_low", 1, 3); // EEXIST
        c.mkfifo("wh_target"); // over a lower whiteout
        c.lstat("fifo_new");
        c.lstat("null2");
        c.lstat("d_both/zero2");
        c.lstat("wh_target");
        c.read("null2");
        c.chmod("fifo_low", 0o600); // copy-up of a fifo
        c.lstat("fifo_low");
        c.lchown("dev_low", 1000, 1000); // copy-up of a device
        c.lstat("dev_low");
        c.unlink("fifo_new");
        c.unlink("null2");
    });
}

#[test]
fn symlink_cases() {
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.symlink("f_low", "s_new");
        c.symlink("../f_top", "d_low/s_in_lower_dir");
        c.symlink("x", "f_low"); // EEXIST
        c.symlink("x", "sym_low"); // EEXIST
        c.readlink("s_new");
        c.read("s_new");
        c.readlink("d_low/s_in_lower_dir");
        c.read("d_low/s_in_lower_dir");
        c.readlink("sym_low");
        c.read("sym_low");
        c.read("sym_dangling");
        c.symlink("f_top", "wh_target"); // replaces a lower whiteout
        c.readlink("wh_target");
        // A symlink replacing a whiteout made through the mount.
        c.unlink("f_low");
        c.lstat("f_low");
        c.symlink("f_top", "f_low");
        c.readlink("f_low");
        c.read("f_low");
        c.lstat("f_low");
        c.listxattr("f_low");
        c.lchown("sym_low", 1000, 1000); // copy-up of a symlink
        c.lstat("sym_low");
        c.utimes("sym_dangling", (1_500_000_000, 0), (1_500_000_001, 0), true);
        c.stat_times("sym_dangling");
        c.setxattr("sym_low", "user.no", "1", 0); // EPERM: user xattrs on symlinks
    });
}

// ---- link -------------------------------------------------------------------------------------

#[test]
fn link_cases() {
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.link("f_low", "f_low_link"); // copy-up, then link
        c.same_ino("f_low", "f_low_link");
        c.read("f_low_link");
        c.append("f_low_link", "via link\n");
        c.read("f_low");
        c.link("f_top", "d_low/f_top_link"); // across dirs, both lower
        c.same_ino("f_top", "d_low/f_top_link");
        c.link("f_low", "f_top"); // EEXIST
        c.link("d_low", "d_low_link"); // EPERM
        c.link("f_low", "nodir/x"); // ENOENT
        c.link("nothere", "x"); // ENOENT
        c.create("u_new", "u\n");
        c.link("u_new", "u_new_link");
        c.same_ino("u_new", "u_new_link");
        c.link("sym_low", "sym_link2"); // hard link to a symlink
        c.same_ino("sym_low", "sym_link2");
        c.readlink("sym_link2");
        c.unlink("f_low_link");
        c.lstat("f_low");
    });
}

// ---- unlink / rmdir ---------------------------------------------------------------------------

#[test]
fn unlink_cases() {
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.unlink("f_low");
        c.unlink("f_both");
        c.unlink("f_top");
        c.unlink("sym_low");
        c.unlink("fifo_low");
        c.unlink("dev_low");
        c.unlink("hl1");
        c.lstat("hl2");
        c.read("hl2");
        c.unlink("d_low"); // EISDIR
        c.unlink("nothere"); // ENOENT
        c.unlink("wh_target"); // ENOENT: whited out
        c.unlink("f_low"); // ENOENT: already gone
        c.unlink("f_ro/x"); // ENOTDIR
        c.unlink("d_low/sub/c");
        c.create("u", "u\n");
        c.unlink("u"); // upper only: no whiteout needed
        c.lstat("f_low");
        c.lstat("f_both");
        c.readdir("");
        c.readdir("d_low/sub");
        c.create("f_low", "again\n"); // recreate over whiteout
        c.read("f_low");
        c.listxattr("f_low"); // old user.a must not come back
        c.remount();
        c.readdir("");
        c.read("f_low");
        c.lstat("f_both");
    });
}

#[test]
fn rmdir_cases() {
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.rmdir("d_low"); // ENOTEMPTY
        c.rmdir("d_both"); // ENOTEMPTY (merged)
        c.rmdir("opq"); // ENOTEMPTY (new1)
        c.rmdir("f_low"); // ENOTDIR
        c.rmdir("nothere"); // ENOENT
        c.rmdir("wh_dir"); // ENOENT: whited out
        c.rmdir("allwh"); // all lower children whited out in l0: empty
        c.rmdir("empty_low");
        c.unlink("d_low/sub/c");
        c.rmdir("d_low/sub"); // only lower children, all deleted
        c.unlink("d_low/a");
        c.rmdir("d_low"); // ENOTEMPTY (b left)
        c.unlink("d_low/b");
        c.rmdir("d_low");
        c.unlink("opq/new1");
        c.rmdir("opq"); // old1/old2 hidden by opaque: empty
        c.rm_rf("d_both"); // merged dir of two lowers
        c.mkdir("u");
        c.mkdir("u/v");
        c.rmdir("u"); // ENOTEMPTY upper only
        c.rmdir("u/v");
        c.rmdir("u");
        c.readdir("");
        c.lstat("d_low");
        c.lstat("d_low/a");
        c.remount();
        c.readdir("");
        c.lstat("allwh");
        c.lstat("opq/old1");
    });
}

/// Removals and renames that fail (not empty, wrong type) fail before anything is copied up:
/// the kernel checks first, and layerfs left the parents (`d_low`, `etc`) in the upper, so
/// every `rmdir` dpkg tries on a shared directory showed in the container's diff.
#[test]
fn failed_rmdir_and_rename_copy_nothing_up() {
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.rmdir("d_low/sub"); // ENOTEMPTY
        c.rmdir("etc/keep"); // ENOTEMPTY
        c.rmdir("d_low/sub/c"); // ENOTDIR
        c.unlink("etc/keep"); // EISDIR
        c.mkdir("n");
        c.rename("n", "d_low/sub"); // ENOTEMPTY
        c.rename("n", "etc/keep"); // ENOTEMPTY
        c.rename("f_top", "etc/keep"); // EISDIR
        c.rename("n", "etc/passwd"); // ENOTDIR
        c.readdir("");
        c.readdir("d_low");
        c.readdir("etc");
    });
}

#[test]
fn rmdir_recreated_deleted_dir() {
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.rm_rf("d_low");
        c.mkdir("d_low"); // recreated: opaque, empty
        c.readdir("d_low");
        c.lstat("d_low/a");
        c.lstat("d_low/sub");
        c.listxattr("d_low"); // user.d must not come back
        c.create("d_low/a", "new a\n");
        c.read("d_low/a");
        c.rmdir("d_low"); // ENOTEMPTY
        c.unlink("d_low/a");
        c.rmdir("d_low"); // ok (new upper opaque dir)
        c.lstat("d_low");
        c.mkdir("d_low");
        c.readdir("d_low");
        c.remount();
        c.readdir("d_low");
        c.lstat("d_low/b");
    });
}

// ---- rename -----------------------------------------------------------------------------------

#[test]
fn rename_files() {
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.rename("f_low", "f_low2"); // lower file within dir
        c.lstat("f_low");
        c.read("f_low2");
        c.listxattr("f_low2");
        c.rename("d_low/a", "d_both/a2"); // across dirs
        c.rename("f_top", "f_both"); // over an existing file (both layers)
        c.read("f_both");
        c.create("u1", "u1\n");
        c.create("u2", "u2\n");
        c.rename("u1", "u2"); // over an upper file
        c.rename("u2", "d_low/u2"); // upper file into a lower dir
        c.rename("nothere", "x"); // ENOENT
        c.rename("f_ro", "d_low"); // EISDIR
        c.rename("d_top", "f_exec"); // ENOTDIR
        c.rename("f_both", "f_both"); // same name: no-op
        c.rename("sym_low", "d_both/sym_moved"); // lower symlink
        c.readlink("d_both/sym_moved");
        c.rename("fifo_low", "fifo_moved");
        c.rename("f_own", "wh_target"); // onto a whited-out name
        c.lstat("wh_target");
        c.rename("f_low2", "f_low"); // back onto its own whiteout
        c.read("f_low");
        c.readdir("");
        c.readdir("d_both");
        c.readdir("d_low");
        c.remount();
        c.readdir("");
        c.readdir("d_low");
    });
}

#[test]
fn rename_flags() {
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.rename2("f_low", "f_top", libc::RENAME_NOREPLACE); // EEXIST
        c.rename2("f_low", "f_new", libc::RENAME_NOREPLACE);
        c.rename2("f_new", "wh_target", libc::RENAME_NOREPLACE); // whited out: free
        c.rename2("f_both", "f_top", libc::RENAME_EXCHANGE); // two lower files
        c.read("f_both");
        c.read("f_top");
        c.create("u", "upper\n");
        c.rename2("u", "f_ro", libc::RENAME_EXCHANGE); // upper and lower file
        c.read("u");
        c.lstat("u");
        c.read("f_ro");
        c.rename2("u", "absent", libc::RENAME_EXCHANGE); // ENOENT
        c.mkdir("ud1");
        c.create("ud1/f", "1\n");
        c.mkdir("ud2");
        c.rename2("ud1", "ud2", libc::RENAME_EXCHANGE); // upper-only dirs
        c.readdir("ud1");
        c.readdir("ud2");
        c.rename2("f_exec", "ud1", libc::RENAME_EXCHANGE); // file <-> upper dir
        c.lstat("ud1");
        c.lstat("f_exec");
        c.readdir("");
    });
}

#[test]
fn rename_dirs() {
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.rename("d_low", "d_low2"); // EXDEV: lower dir (redirect_dir=off)
        c.rename("d_both", "d_both2"); // EXDEV: merged dir
        c.rename("d_top", "d_low/x"); // EXDEV
        c.rename("empty_low", "e2"); // EXDEV even empty
        c.create("d_low/n", "n\n"); // d_low now copied up, still merged
        c.rename("d_low", "d_low2"); // EXDEV
        c.mkdir("ud");
        c.create("ud/f", "f\n");
        c.mkdir("ud/sub");
        c.rename("ud", "ud2"); // upper-only dir: ok
        c.rename("ud2", "d_low/ud3"); // into a lower dir: ok
        c.readdir("d_low/ud3");
        c.rename("d_low/ud3", "ud4");
        c.mkdir("ud5");
        c.rename("ud4", "ud5"); // over an empty dir
        c.readdir("ud5");
        c.mkdir("ud6");
        c.create("ud6/x", "x");
        c.rename("ud5", "ud6"); // ENOTEMPTY
        c.rename("ud5", "ud5/sub/in"); // EINVAL: into itself
        c.rename("ud5", "f_low"); // ENOTDIR
        c.rename("f_top", "ud5"); // EISDIR
        c.rename("ud5", "empty_low"); // over an empty lower dir
        c.readdir("empty_low");
        c.rename("ud6", "wh_dir"); // onto a whited-out dir name
        c.readdir("wh_dir");
        c.readdir("");
        c.remount();
        c.readdir("empty_low");
        c.readdir("wh_dir");
        c.lstat("wh_dir/h1");
    });
}

#[test]
fn rename_recreated_opaque_dir() {
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.rm_rf("d_low");
        c.mkdir("d_low"); // pure upper, opaque
        c.create("d_low/new", "n\n");
        c.rename("d_low", "moved"); // movable on the kernel: pure upper dir
        c.readdir("moved");
        c.lstat("d_low");
        c.readdir("");
        c.rename("moved", "d_low"); // and back
        c.readdir("d_low");
        c.lstat("d_low/a");
        c.remount();
        c.readdir("d_low");
        c.readdir("moved");
    });
}

// ---- setattr ----------------------------------------------------------------------------------

#[test]
fn setattr_cases() {
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.chmod("f_low", 0o600);
        c.lstat("f_low");
        c.chmod("d_low", 0o700); // copies up the dir only
        c.lstat("d_low");
        c.readdir("d_low");
        c.chown("f_top", 1000, 1001);
        c.lstat("f_top");
        c.chown("d_both", 1234, 5678);
        c.lstat("d_both");
        c.chmod("nothere", 0o644); // ENOENT
        c.chmod("f_exec", 0o4755); // setuid bit kept as root
        c.lstat("f_exec");
        c.truncate("f_both", 2); // shrink
        c.read("f_both");
        c.truncate("d_low/a", 100); // grow with zeros
        c.read("d_low/a");
        c.truncate("f_ro", 0); // to zero: copy-up without data
        c.read("f_ro");
        c.truncate("d_low", 0); // EISDIR
        c.truncate("big", 1000);
        c.lstat("big");
        c.utimes("f_own", (1_400_000_000, 5), (1_400_000_100, 123_456_789), false);
        c.stat_times("f_own");
        c.utimes("d_top", (1_400_000_000, 0), (1_400_000_200, 0), false);
        c.stat_times("d_top");
        c.chown("f_own", u32::MAX, 0); // only gid
        c.lstat("f_own");
        c.chmod("d_both/x", 0o600); // copies up d_both and x: neither copy-up changes d_both's times
        c.stat_times("d_both");
        c.remount();
        c.stat_times("d_both");
        c.lstat("f_low");
        c.stat_times("f_own");
        c.stat_times("d_top");
    });
}

// ---- data -------------------------------------------------------------------------------------

#[test]
fn write_append_trunc_copy_up() {
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.append("f_low", "appended\n");
        c.read("f_low");
        c.listxattr("f_low"); // user.a copied up
        c.getxattr("f_low", "user.a");
        c.write_at("f_both", 1, "XY");
        c.read("f_both");
        c.open_trunc("f_top");
        c.read("f_top");
        c.lstat("f_top");
        c.write_at("big", 500_000, "in the middle");
        c.read("big");
        c.append("f_ro", "x"); // as root: allowed despite 0444
        c.read("f_ro");
        c.create("d_both/x", "replaced\n");
        c.read("d_both/x");
        c.append("sym_low", "through symlink\n"); // follows to f_low
        c.read("f_low");
        c.lstat("sym_low");
        c.append("sym_dangling", "x"); // ENOENT: no O_CREAT
        c.create("sym_dangling", "created via dangling link\n"); // creates "nowhere"
        c.read("nowhere");
        c.append("fifo_low/x", "x"); // ENOTDIR
        c.remount();
        c.read("f_low");
        c.read("big");
    });
}

#[test]
fn old_fd_sees_copy_up() {
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.open_keep(1, "f_low", false); // read-only fd on the lower file
        c.append("f_low", "more\n"); // another open copies up
        c.fd_read(1);
        c.fd_stat(1);
        c.open_keep(2, "f_both", true); // rw: copy-up at open
        c.fd_write_at(2, 0, "W");
        c.read("f_both");
        c.close(1);
        c.close(2);
    });
}

/// A directory held open and listed again from its start after changes through other names
/// (the rewinddir that must show the directory as it is now): a lower directory copied up by a
/// create in it, a whiteout made by an unlink, an opaque directory, an upper one renamed, and
/// one removed (ENOENT from `getdents64` on both), and names made and removed relative to
/// them (`openat`, `unlinkat`, `renameat` between two of them). Then `linkat` of a held
/// lower file, and `ftruncate`, `fchmod`, `fsync` and `fsetxattr` through held descriptors of
/// lower files (ENOENT where the file's directory was removed), and `fchown` and `futimens`
/// the same way.
#[test]
fn held_descriptors_see_later_changes() {
    need_mounts!();
    let log = run_both(&std_stack(), |c| {
        c.open_keep(1, "d_low", false);
        c.fd_list(1);
        c.create("d_low/new", "n\n");
        c.unlink("d_low/a");
        c.fd_list(1);
        c.open_keep(2, "d_both", false);
        c.fd_list(2);
        c.rename("d_both", "d_moved"); // a merged directory: EXDEV (no redirect_dir)
        c.unlink("d_both/x");
        c.fd_list(2);
        c.open_keep(3, "opq", false);
        c.create("opq/new2", "n2\n");
        c.fd_list(3);
        c.rm_rf("d_both");
        c.fd_list(2);
        c.fd_list(1);
        c.mkdir("nd");
        c.create("nd/f", "f\n");
        c.open_keep(6, "nd", false);
        c.rename("nd", "nd2");
        c.symlink("f", "nd2/g");
        c.fd_create_at(6, "h", "h\n");
        c.fd_unlink_at(6, "f");
        c.fd_list(6);
        c.read("nd2/h");
        c.fd_create_at(2, "q", "q\n"); // in the removed d_both: ENOENT
        c.fd_create_at(1, "b", "b2\n"); // over the lower d_low/b: copy-up of nothing, a new file
        c.fd_unlink_at(1, "sub"); // a directory: EISDIR
        c.fd_list(1);
        c.fd_rename_at(1, "b", 6, "b"); // from the copied-up d_low into the renamed nd2
        c.fd_rename_at(3, "new1", 1, "n1"); // from the opaque directory
        c.open_keep(7, "f_top", false);
        c.fd_link(7, "f_top_link"); // a lower file through its descriptor: copy-up, then link
        c.lstat("f_top");
        c.lstat("f_top_link");
        c.fd_list(1);
        c.fd_list(6);
        c.open_keep(8, "etc/keep/a", false);
        c.open_keep(9, "f_exec", false);
        c.rm_rf("etc/keep");
        c.fd_setxattr(8, "user.p", "v"); // its directory removed: ENOENT
        c.fd_xattrs(8, "user.p");
        c.fd_setxattr(9, "user.p", "w"); // copy-up, then the xattr
        c.fd_xattrs(9, "user.p");
        c.fd_chown(8, 0, 0); // its directory removed: ENOENT
        c.fd_utimes(8, (1_450_000_000, 0), (1_600_000_000, 0)); // ENOENT
        c.open_keep(10, "f_own", false);
        c.fd_chown(10, 0, 0); // copy-up, then the owner
        c.open_keep(11, "f_ro", false);
        c.fd_utimes(11, (1_450_000_000, 0), (1_600_000_000, 5)); // copy-up, then the times
        c.lstat("f_own");
        c.stat_times("f_ro");
        c.open_keep(4, "f_low", false);
        c.fd_truncate(4, 2); // read-only: EINVAL
        c.fd_chmod(4, 0o600); // copies up
        c.fd_stat(4);
        c.fd_read(4);
        c.open_keep(5, "f_both", true);
        c.fd_truncate(5, 40000);
        c.fd_fsync(5);
        c.fd_stat(4);
        c.read("f_both");
        c.lstat("f_low");
    });
    let lists: Vec<_> = log.iter().filter(|(s, _)| s.contains("getdents")).collect();
    assert_eq!(lists[1].0, "fd#1 getdents -> [b:f,new:f,sub:d]", "{lists:?}");
    assert_eq!(lists[3].0, "fd#2 getdents -> [y:f,z:f]", "{lists:?}");
    assert_eq!(lists[4].0, "fd#3 getdents -> [new1:f,new2:f]", "{lists:?}");
    assert_eq!(lists[5].1, libc::ENOENT, "{lists:?}");
    assert_eq!(lists[7].0, "fd#6 getdents -> [g:l,h:f]", "{lists:?}");
    assert!(log.contains(&("fd#2 openat q create \"q\\n\"".to_string(), libc::ENOENT)), "{log:?}");
    for step in [
        "renameat fd#1/b fd#6/b",
        "renameat fd#3/new1 fd#1/n1",
        "fd#7 linkat f_top_link",
        "fd#9 fsetxattr user.p=\"w\"",
        "fd#9 fgetxattr user.p -> \"w\" [user.p]",
    ] {
        assert!(log.contains(&(step.to_string(), 0)), "{step}: {log:?}");
    }
    assert!(log.contains(&("fd#8 fsetxattr user.p=\"v\"".to_string(), libc::ENOENT)), "{log:?}");
    for (step, e) in [
        ("fd#8 fchown 0:0", libc::ENOENT),
        ("fd#8 futimens", libc::ENOENT),
        ("fd#10 fchown 0:0 -> 0:0 100644", 0),
        (
            "fd#11 futimens a=(1450000000, 0) m=(1600000000, 5) -> a=1450000000.000000000 m=1600000000.000000005",
            0,
        ),
    ] {
        assert!(log.iter().any(|(s, got)| s.starts_with(step) && *got == e), "{step}: {log:?}");
    }
    assert_eq!(lists[9].0, "fd#1 getdents -> [n1:f,new:f,sub:d]", "{lists:?}");
    assert_eq!(lists[10].0, "fd#6 getdents -> [b:f,g:l,h:f]", "{lists:?}");
}

#[test]
fn unlinked_while_open() {
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.open_keep(1, "f_low", true); // copies up
        c.unlink("f_low");
        c.lstat("f_low");
        c.fd_write_at(1, 0, "still writable");
        c.fd_read(1);
        c.fd_stat(1);
        c.open_keep(2, "f_top", false); // read-only, stays lower
        c.unlink("f_top");
        c.fd_read(2);
        c.create("u", "upper file\n");
        c.open_keep(3, "u", true);
        c.unlink("u");
        c.fd_write_at(3, 11, "more");
        c.fd_read(3);
        c.fd_stat(3);
        c.create("f_low", "new name holder\n");
        c.fd_read(1);
        c.read("f_low");
        c.close(1);
        c.close(2);
        c.close(3);
        c.readdir("");
    });
}

/// `linkat` of a descriptor of a lower file removed while open fails with ENOENT, as on the
/// kernel (whose `fstat` of it still shows the lower file's count); it reached a copy-up of
/// the removed file, EEXIST.
#[test]
fn a_removed_lower_file_held_open_cannot_be_linked_again() {
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.sh(
            "/usr/bin/python3 -c \"import os, ctypes\nfd = os.open('f_top', os.O_RDONLY)\nos.unlink('f_top')\n\
             print('nlink', os.fstat(fd).st_nlink)\nlibc = ctypes.CDLL(None, use_errno=True)\n\
             r = libc.linkat(fd, b'', -100, b'again', 0x1000)\nprint('linkat', r, os.strerror(ctypes.get_errno()))\"",
            false,
        );
        c.readdir("");
    });
}

#[test]
fn fallocate_cases() {
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.fallocate("f_low", 0, 0, 1 << 20); // grow
        c.lstat("f_low");
        c.read("f_low");
        c.fallocate("f_top", libc::FALLOC_FL_KEEP_SIZE, 0, 1 << 16);
        c.lstat("f_top");
        c.fallocate("big", libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, 4096, 8192);
        c.read("big");
        c.lstat("big");
    });
}

#[test]
fn mmap_shared_write() {
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.mmap_write("f_both", 7, 0, "MMAP"); // lower file: copied up at open O_RDWR
        c.read("f_both");
        c.mmap_write("big", 1 << 20, 70_000, "mapped write");
        c.read("big");
        c.create("u", "0123456789");
        c.mmap_write("u", 10, 3, "abc");
        c.read("u");
        c.remount();
        c.read("f_both");
        c.read("big");
    });
}

// ---- xattrs -----------------------------------------------------------------------------------

#[test]
fn xattr_cases() {
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.listxattr("f_low");
        c.getxattr("f_low", "user.a");
        c.setxattr("f_top", "user.new", "v1", 0); // copy-up
        c.getxattr("f_top", "user.new");
        c.setxattr("f_top", "user.new", "v2", libc::XATTR_CREATE); // EEXIST
        c.setxattr("f_top", "user.other", "v", libc::XATTR_REPLACE); // ENODATA
        c.setxattr("f_top", "user.new", "v3", libc::XATTR_REPLACE);
        c.removexattr("f_low", "user.a"); // copy-up then remove
        c.listxattr("f_low");
        c.getxattr("f_low", "user.a"); // ENODATA
        c.removexattr("f_low", "user.a"); // ENODATA
        c.setxattr("d_low", "user.d", "changed", 0); // dir copy-up
        c.getxattr("d_low", "user.d");
        c.listxattr("d_both");
        c.getxattr("d_both", "user.dir");
        c.removexattr("d_both", "user.dir");
        c.listxattr("d_both");
        c.setxattr("d_low/sub/c", "user.big", &"v".repeat(2000), 0);
        c.getxattr("d_low/sub/c", "user.big");
        c.getxattr("nothere", "user.a"); // ENOENT
        c.setxattr("fifo_low", "user.x", "1", 0); // EPERM: user xattrs on a fifo
        c.remount();
        c.listxattr("f_low");
        c.listxattr("f_top");
        c.listxattr("d_both");
        c.getxattr("d_low", "user.d");
    });
}

// ---- whiteout and opaque edge cases -----------------------------------------------------------

#[test]
fn rm_rf_then_mkdir_children_stay_gone() {
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.rm_rf("d_both");
        c.mkdir("d_both");
        c.readdir("d_both");
        c.lstat("d_both/x");
        c.lstat("d_both/y");
        c.lstat("d_both/z");
        c.readdir("");
        c.lstat("d_both/x"); // again, after a readdir of the parent
        c.create("d_both/new", "n\n");
        c.readdir("d_both");
        c.remount();
        c.lstat("d_both/x");
        c.readdir("d_both");
        c.lstat("d_both/y");
    });
}

#[test]
fn mv_then_cp_back_upper_dir() {
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.mkdir("d");
        c.create("d/a", "a\n");
        c.mkdir("d/s");
        c.symlink("../d/a", "d/s/l");
        c.rename("d", "tmp"); // mv d tmp
        c.cp_r("tmp", "d"); // cp -r tmp d
        c.rm_rf("tmp");
        c.readdir("d");
        c.readdir("d/s");
        c.readlink("d/s/l");
        c.read("d/s/l");
        c.lstat("tmp");
        c.remount();
        c.readdir("d");
    });
}

#[test]
fn mv_then_cp_back_lower_dir() {
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.rename("d_low", "tmp"); // EXDEV: mv falls back to copy + rm -rf
        c.cp_r("d_low", "tmp");
        c.rm_rf("d_low");
        c.lstat("d_low");
        c.readdir("tmp");
        c.cp_r("tmp", "d_low"); // recreated: must not show old whiteouts or lower entries
        c.rm_rf("tmp");
        c.readdir("d_low");
        c.readdir("d_low/sub");
        c.read("d_low/sub/c");
        c.unlink("d_low/a");
        c.readdir("d_low");
        c.remount();
        c.readdir("d_low");
        c.lstat("d_low/a");
        c.lstat("tmp");
    });
}

#[test]
fn lost_deletions_sequence() {
    // fuse-overlayfs 1.10: deletions lost after rm -rf/mkdir of a sibling directory.
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.unlink("etc/gone");
        c.rm_rf("etc/keep");
        c.mkdir("etc/keep");
        c.readdir("etc");
        c.lstat("etc/keep");
        c.readdir("etc/keep");
        c.lstat("etc/keep/a");
        c.lstat("etc/gone");
        c.unlink("etc/passwd");
        c.lstat("etc/passwd");
        c.lstat("etc/gone");
        c.readdir("etc");
        c.remount();
        c.readdir("etc");
        c.readdir("etc/keep");
        c.lstat("etc/keep/a");
        c.lstat("etc/gone");
        c.lstat("etc/passwd");
    });
}

#[test]
fn delete_next_to_existing_upper_whiteout() {
    // The upper already has a whiteout for etc/gone and d_both/y.
    need_mounts!();
    run_both(&stack_with_upper(), |c| {
        c.readdir("etc");
        c.lstat("etc/gone");
        c.unlink("etc/passwd");
        c.lstat("etc/gone");
        c.lstat("etc/passwd");
        c.readdir("etc");
        c.rm_rf("etc/keep");
        c.mkdir("etc/keep");
        c.readdir("etc/keep");
        c.lstat("etc/keep/a");
        c.readdir("d_both");
        c.unlink("d_both/x");
        c.lstat("d_both/y");
        c.readdir("d_both");
        c.read("f_both");
        c.unlink("f_both"); // upper copy over lowers: needs a whiteout
        c.lstat("f_both");
        c.unlink("u_file"); // upper only: no whiteout
        c.rm_rf("u_dir");
        c.create("etc/gone", "back\n"); // over an upper whiteout
        c.read("etc/gone");
        c.remount();
        c.readdir("etc");
        c.readdir("d_both");
        c.readdir("");
    });
}

#[test]
fn opaque_lower_dir() {
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.readdir("opq");
        c.lstat("opq/old1");
        c.create("opq/n2", "n2\n");
        c.readdir("opq");
        c.unlink("opq/new1");
        c.readdir("opq");
        c.rmdir("opq");
        c.mkdir("opq");
        c.readdir("opq");
        c.lstat("opq/old2");
        c.remount();
        c.readdir("opq");
    });
}

#[test]
fn whiteout_name_reserved_on_layerfs() {
    // Known divergence (KNOWN_DIVERGENCES): `.wh.*` names are refused by layerfs, stored as
    // ordinary files by the kernel. Each side is checked on its own, not compared.
    need_mounts!();
    let s = common::Scratch::new();
    let src = s.dir.path().join("src");
    std_stack().build(&src);
    for imp in [Impl::Kernel, Impl::Layerfs] {
        let mut side = Side::prepare(imp, &src, &s.dir.path().join(imp.name()), 2, false);
        let out = run_side(&mut side, &|c: &mut Ctx| {
            c.create(".wh.foo", "x");
            c.mkdir(".wh.dir");
            c.symlink("x", "d_low/.wh.s");
            c.mkfifo(".wh.p");
            c.rename("f_top", ".wh.f_top");
            c.link("f_low", ".wh.l");
            c.lstat(".wh.foo");
            c.lstat("f_top");
        });
        let errs: Vec<i32> = out.log.iter().take(6).map(|(_, e)| *e).collect();
        match imp {
            Impl::Layerfs => {
                assert_eq!(errs, vec![libc::EINVAL; 6], "layerfs must refuse .wh. names: {:?}", out.log);
                assert_eq!(out.log[6].1, libc::ENOENT);
                assert_eq!(out.log[7].1, 0, "f_top must still be there");
                assert!(!out.merged.keys().any(|k| k.contains(".wh.")));
                let left: Vec<_> = std::fs::read_dir(side.work.join("work")).unwrap().flatten().collect();
                assert!(left.is_empty());
            }
            Impl::Kernel => {
                // Documented only: the kernel accepts these names.
                eprintln!("kernel .wh. results: {:?}", out.log);
            }
        }
    }
}

// ---- three layers -----------------------------------------------------------------------------

#[test]
fn three_lowers() {
    need_mounts!();
    run_both(&three_stack(), |c| {
        c.readdir("");
        c.read("f3");
        c.readdir("x"); // b, c only: middle whiteout hides bottom x
        c.lstat("x/a");
        c.readdir("m");
        c.readdir("deep/d1");
        c.append("f3", "+\n");
        c.read("f3");
        c.create("m/one", "1'\n");
        c.unlink("m/two");
        c.readdir("m");
        c.rm_rf("x");
        c.lstat("x");
        c.mkdir("x");
        c.readdir("x");
        c.lstat("x/a");
        c.lstat("x/b");
        c.mkdir("deep/d1/d2");
        c.readdir("deep/d1/d2");
        c.rename("m", "m2"); // EXDEV
        c.rm_rf("m");
        c.readdir("");
        c.remount();
        c.readdir("");
        c.readdir("x");
        c.readdir("deep/d1/d2");
    });
}

// ---- read-only mount --------------------------------------------------------------------------

#[test]
fn read_only_mount_erofs() {
    need_mounts!();
    run_both(&std_stack().read_only(), |c| {
        c.create("new", "x");
        c.create("f_low", "x");
        c.append("f_low", "x");
        c.open_trunc("f_top");
        c.open_flags("f_low", libc::O_RDWR, "O_RDWR");
        c.mkdir("nd");
        c.mkdir("d_low"); // EEXIST first
        c.rmdir("empty_low");
        c.unlink("f_low");
        c.rename("f_low", "f2");
        c.symlink("x", "s");
        c.link("f_low", "l");
        c.mkfifo("p");
        c.chmod("f_low", 0o600);
        c.chown("f_low", 1, 1);
        c.truncate("f_low", 0);
        c.utimes("f_low", (1, 0), (2, 0), false);
        c.setxattr("f_low", "user.x", "1", 0);
        c.removexattr("f_low", "user.a");
        c.read("f_low");
        c.readdir("");
        c.readdir("d_both");
        c.getxattr("f_low", "user.a");
        c.lstat("wh_target");
        c.readdir("opq");
        c.lower_links("hl1", "hl2");
    });
}

#[test]
fn read_only_mount_missing_names() {
    need_mounts!();
    run_both(&std_stack().read_only(), |c| {
        c.unlink("nothere");
        c.rmdir("nothere");
        c.rename("nothere", "x");
        c.rename("f_low", "nodir/x");
        c.create("nodir/x", "x");
        c.mkdir("nodir/x");
        c.chmod("nothere", 0o600);
        c.link("nothere", "x");
    });
}

// ---- hard links that exist in a lower layer ---------------------------------------------------

#[test]
fn lower_hardlink_pair_write() {
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.lower_links("hl1", "hl2");
        c.append("hl2", "via hl2\n");
        c.read("hl1");
        c.read("hl2");
        c.same_ino("hl1", "hl2");
    });
}

#[test]
fn lower_hardlink_pair_link_rename_utimes() {
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.lower_links("hl1", "hl2");
        c.link("hl1", "hl3"); // copies up hl1 (not hl2)
        c.same_ino("hl1", "hl3");
        c.same_ino("hl1", "hl2");
        c.read("hl3");
    });
    run_both(&std_stack(), |c| {
        c.rename("hl1", "hl_moved");
        c.lower_links("hl_moved", "hl2");
    });
    run_both(&std_stack(), |c| {
        c.utimes("hl2", (1_300_000_000, 0), (1_300_000_000, 0), false);
        c.stat_times("hl1");
        c.stat_times("hl2");
    });
}

#[test]
fn open_rdonly_trunc() {
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.open_flags("f_exec", libc::O_RDONLY | libc::O_TRUNC, "O_RDONLY|O_TRUNC");
        c.read("f_exec");
        c.create("u", "upper\n");
        c.open_flags("u", libc::O_RDONLY | libc::O_TRUNC, "O_RDONLY|O_TRUNC");
        c.read("u");
    });
}

// ---- inode flags ------------------------------------------------------------------------------

/// `chattr`/`lsattr` (the inode-attribute ioctls): read from the topmost object, set after a
/// copy-up, enforced (append-only: writes only with O_APPEND; immutable directory: no new
/// names). layerfs answered every one "Operation not supported".
#[test]
fn inode_flags_chattr_lsattr() {
    need_mounts!();
    run_both(&std_stack(), |c| {
        c.sh("lsattr -d f_low d_low f_top 2>&1 | cut -c1-22", false);
        c.sh("chattr +a f_low && lsattr f_low | cut -c1-22", false);
        c.sh("echo x > f_low; echo rc=$?", false);
        c.sh("echo y >> f_low; echo rc=$?; cat f_low", false);
        c.sh(
            "chattr +i d_low; lsattr -d d_low | cut -c1-22; touch d_low/new; echo rc=$?; chattr -i d_low",
            false,
        );
        c.sh("chattr -a f_low && lsattr f_low | cut -c1-22 && echo z > f_low; cat f_low", false);
        c.remount();
        c.sh("lsattr -d f_low d_low | cut -c1-22", false);
    });
}

/// Append-only and immutable flags a lower object already carries are enforced as kernel
/// overlayfs enforces them (it takes them from the real inode into its own), and a copy-up
/// keeps them in `overlay.protattr` as the kernel does: opens for writing, truncation, chmod,
/// times, xattrs, links, removal and renames of the object, removal from and creation in such
/// a directory, fallocate; the upper directories must come out the same (flags, xattrs).
/// layerfs let all of these through.
#[test]
fn lower_append_only_and_immutable_flags() {
    need_mounts!();
    let script = r#"
t() { "$@" >/dev/null 2>&1; echo "$* -> $?"; }
lsattr -d f_i f_a d_i d_a 2>&1 | cut -c1-22
t sh -c 'echo more >> f_a'
t sh -c 'echo bad > f_a'
t sh -c 'echo bad >> f_i'
t truncate -s 0 f_a
t chmod 600 f_i
t chmod 600 f_a
t touch f_i
t touch f_a
t touch -d 2020-01-01 f_a
t setfattr -n user.x -v 1 f_a
t setfattr -x user.k f_i
t ln f_a lnk
t mv f_a f_a2
t rm f_i
t rm d_a/y
t mv d_a/z d_a/z2
t touch d_a/new
t touch d_i/new
t sh -c 'echo w >> d_i/x'
t rm d_i/x
t mkdir d_i/sub
t rmdir d_i
t fallocate -p -o 0 -l 1 f_a
t fallocate -n -o 0 -l 8192 f_a
t mv f_plain d_i/moved
cat f_a d_i/x
lsattr -d f_i f_a d_i d_a d_a/new 2>&1 | cut -c1-22
chattr -a f_a && echo x > f_a && echo "after chattr -a: $(cat f_a)"
chattr +i f_plain && t sh -c 'echo y >> f_plain' && chattr -i f_plain && t sh -c 'echo y >> f_plain'
lsattr -d f_a f_plain | cut -c1-22
"#;
    let s = common::Scratch::new();
    let mut outs = Vec::new();
    for side in ["kernel", "layerfs"] {
        let base = s.path(side);
        let (l, u, w, m) = (base.join("l"), base.join("u"), base.join("w"), base.join("m"));
        for d in [&u, &w, &m, &l.join("d_i"), &l.join("d_a")] {
            std::fs::create_dir_all(d).unwrap();
        }
        for (f, data) in [
            ("f_i", "i\n"),
            ("f_a", "a\n"),
            ("f_plain", "p\n"),
            ("d_i/x", "x\n"),
            ("d_a/y", "y\n"),
            ("d_a/z", "z\n"),
        ] {
            std::fs::write(l.join(f), data).unwrap();
        }
        let (ok, out) = common::sh(
            &l,
            "setfattr -n user.k -v v f_i && touch -d 2001-01-01 . d_i d_a && chattr +i f_i d_i && chattr +a f_a d_a",
        );
        if !ok {
            assert!(!common::must_mount(), "chattr on the test filesystem: {out}");
            return;
        }
        let out = {
            let _g = if side == "kernel" {
                common::mount_overlay(std::slice::from_ref(&l), Some((&u, &w)), &m)
            } else {
                common::mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "")
            };
            common::sh(&m, script).1
        };
        let (_, upper) = common::sh(
            &u,
            "find . -mindepth 1 | sort | while read f; do printf '%s %s ' \"$f\" \"$(stat -c %F \"$f\")\"; \
             getfattr -h --absolute-names -d -m 'trusted.overlay.protattr|user' \"$f\" 2>/dev/null | grep = | tr '\\n' ' '; \
             lsattr -d \"$f\" 2>/dev/null | cut -c1-22; echo; done",
        );
        common::sh(&base, "chattr -R -ia . 2>/dev/null; true");
        outs.push((side, out, upper));
    }
    let (k, f) = (&outs[0], &outs[1]);
    assert_eq!(k.1, f.1, "merged view: kernel vs layerfs");
    assert_eq!(k.2, f.2, "upper: kernel vs layerfs");
    assert!(k.1.contains("protattr") || k.2.contains("protattr"), "the kernel kept flags: {}", k.2);
}

// ---- O_TMPFILE --------------------------------------------------------------------------------

/// O_TMPFILE: an unnamed file in the upper directory (a lower-only directory copied up first),
/// link count 0, named by a later linkat (through /proc/self/fd, and with AT_EMPTY_PATH);
/// with O_EXCL it can never be named; one never named leaves nothing behind. layerfs answered
/// EOPNOTSUPP.
#[test]
fn o_tmpfile_then_linkat() {
    need_mounts!();
    let script = r#"/usr/bin/python3 -c '
import os, ctypes
libc = ctypes.CDLL(None, use_errno=True)
def link(how, fd, name):
    if how == "proc":  # linkat(/proc/self/fd/N, AT_SYMLINK_FOLLOW)
        r = libc.linkat(-100, b"/proc/self/fd/%d" % fd, -100, name.encode(), 0x400)
    else:  # linkat(fd, "", AT_EMPTY_PATH)
        r = libc.linkat(fd, b"", -100, name.encode(), 0x1000)
    print(how, name, "->", os.strerror(ctypes.get_errno()) if r else "linked")
def tmp(d, flags=0):
    fd = os.open(d, os.O_TMPFILE | os.O_RDWR | flags, 0o640)
    os.write(fd, b"data in " + d.encode())
    st = os.fstat(fd)
    print(d, "nlink", st.st_nlink, "mode", oct(st.st_mode), "size", st.st_size)
    return fd
a = tmp("d_low")
link("proc", a, "d_low/named")
print(os.stat("d_low/named").st_nlink, open("d_low/named").read())
os.write(a, b" more"); print(os.fstat(a).st_nlink); os.close(a)
b = tmp(".")
link("empty", b, "f_empty_path")
c = tmp("d_both", os.O_EXCL)
link("proc", c, "d_both/never")
d = tmp("d_top")
os.close(b); os.close(c); os.close(d)
print(sorted(os.listdir("d_low")), sorted(os.listdir("d_both")), sorted(os.listdir("d_top")))
'"#;
    run_both(&std_stack(), |c| {
        c.sh(script, false);
        c.sh("cat d_low/named; echo; stat -c '%n %h %a %s' d_low/named", false);
        c.remount();
        c.sh("cat d_low/named f_empty_path; echo; ls d_low d_both", false);
    });
}
