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

/// Found by prop_write. Shell: lower `b -> a` (symlink); through the mount
/// `ln b e/f; rm -rf e; echo x > b` gives EINVAL (kernel: writes to a). Also with an upper-only
/// symlink: `ln -s g s; ln s s2; rm s2; readlink s` gives EINVAL.
#[test]
fn regression_hardlinked_symlink_unlink_breaks_readlink() {
    need_mounts!();
    check_ops(&[Link("b", "e/f"), RmRf("e"), Write("b", 0)]);
    check_ops(&[Symlink("a", "c"), Link("c", "d/x"), Unlink("d/x"), Append("c", 1)]);
}
