//! Writes and truncation by a caller without CAP_FSETID drop setuid, setgid (when group
//! executable) and file capabilities, as the VFS does on kernel overlayfs. layerfs takes this
//! on itself under FUSE_HANDLE_KILLPRIV_V2 (which spares a `security.capability` lookup per
//! write), both for data it serves and for files whose writes would bypass it (passthrough):
//! each scenario runs against kernel overlayfs, in the default mode and with passthrough off.
mod common;
mod diffkit;

use diffkit::*;

fn stack() -> Stack {
    Stack::new(vec![Layer::new().file("low_suid", "lower\n").file("low_caps", "lower\n")])
}

/// A valid VFS_CAP_REVISION_2 value granting cap_net_raw (bit 13), permitted + effective.
const CAPS: &str = r"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";

const NOBODY: &str = "setpriv --reuid 65534 --regid 65534 --clear-groups";

fn scenario(c: &mut Ctx) {
    c.sh("chmod 777 . && chmod 6777 low_suid && stat -c '%n %a' low_suid", false);
    // Upper files with every combination that matters.
    c.sh(
        "for f in append trunc pwrite falloc otrunc root sgid_nox; do printf data > $f; done; \
         chmod 6777 append trunc pwrite falloc otrunc root; chmod 2767 sgid_nox; \
         printf data > caps; chmod 0777 caps",
        false,
    );
    let setcaps = format!(
        "/usr/bin/python3 -c \"import os; os.setxattr('caps', 'security.capability', b'{CAPS}'); \
         os.setxattr('low_caps', 'security.capability', b'{CAPS}')\" && chmod 0777 low_caps"
    );
    c.sh(&setcaps, false);
    c.sh("getfattr -n security.capability -e hex caps low_caps 2>&1 | grep -c 0x01", false);
    let as_nobody = format!(
        "{NOBODY} sh -c 'printf x >> append; truncate -s 1 trunc; printf x >> low_suid; \
         printf x >> sgid_nox; printf x >> caps; printf x >> low_caps; : > otrunc'; \
         {NOBODY} /usr/bin/python3 -c \"import os; fd = os.open('pwrite', os.O_WRONLY); os.pwrite(fd, b'zz', 0); \
         os.close(fd); fd = os.open('falloc', os.O_WRONLY); os.posix_fallocate(fd, 0, 65536); os.close(fd)\"; \
         printf x >> root"
    );
    c.sh(&as_nobody, false);
    let report = "for f in *; do stat -c '%n %a %s' $f; done; \
                  getfattr -n security.capability -e hex caps low_caps 2>&1 | grep -c 0x01";
    c.sh(report, false);
    c.sh(report, true);
    c.remount();
    c.sh(report, false);
}

/// The step log as one text (printed, for a failing run).
fn joined(log: &[(String, i32)]) -> String {
    let all = log.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>().join("\n");
    eprintln!("{all}");
    all
}

fn check(log: &[(String, i32)]) {
    let all = joined(log);
    // What both sides agreed on is what the VFS does (not two identical failures).
    for want in ["append 777 5", "trunc 777 1", "pwrite 777 4", "falloc 777 65536", "otrunc 777 0"] {
        assert!(all.contains(want), "{want}:\n{all}");
    }
    // setgid without group execute goes too: the caller is not in the file's group.
    for want in ["low_suid 777 7", "sgid_nox 767 5", "root 6777 5"] {
        assert!(all.contains(want), "{want}:\n{all}");
    }
    // Both files had capabilities before (2 found) and none after (0 after the last file).
    assert!(all.contains("grep -c 0x01 -> 0\n2\n"), "caps not set:\n{all}");
    assert!(all.contains("trunc 777 1\n0\n"), "caps not dropped:\n{all}");
}

#[test]
fn unprivileged_writes_drop_setuid_setgid_and_caps() {
    if !available() {
        return;
    }
    check(&run_both(&stack(), scenario));
}

#[test]
fn unprivileged_writes_drop_privileges_without_passthrough() {
    if !available() {
        return;
    }
    let s = common::Scratch::new();
    check(&run_both_in(s.dir.path(), &stack(), &scenario, "passthrough=0"));
}

/// A copy-up keeps file capabilities (it used to set the owner after the xattrs, and a chown
/// drops `security.capability`), and `chown(f, -1, -1)` by a caller who does not own a setuid
/// file is refused (the VFS counts the dropping of setuid as a mode change); the server got it
/// as an empty setattr and dropped the bit for anyone.
fn copy_up_and_chown_scenario(c: &mut Ctx) {
    c.sh("chmod 777 . && chown 65534 own_suid && chmod 4755 other_suid own_suid", false);
    c.sh("chmod 0755 low_caps && getfattr -n security.capability -e hex low_caps 2>&1 | grep -c 0x01", false);
    let chown_noop = |f: &str| {
        format!(
            "{NOBODY} /usr/bin/python3 -c \"import os; os.chown('{f}', -1, -1)\" 2>&1 | tail -1; \
             stat -c '%n %a' {f}"
        )
    };
    c.sh(&chown_noop("other_suid"), false);
    c.sh(&chown_noop("own_suid"), false);
    c.remount();
    c.sh("stat -c '%n %a' other_suid own_suid; getfattr -n security.capability -e hex low_caps 2>&1 | grep -c 0x01", false);
}

#[test]
fn copy_up_keeps_caps_and_a_non_owner_chown_keeps_setuid() {
    if !available() {
        return;
    }
    const RAW_CAPS: &str = "\u{1}\0\0\u{2}\0 \0\0\0\0\0\0\0\0\0\0\0\0\0\0";
    let stack = Stack::new(vec![
        Layer::new()
            .file("low_caps", "lower\n")
            .xattr("low_caps", "security.capability", RAW_CAPS)
            .file("other_suid", "x\n")
            .owner("other_suid", 1500, 1500)
            .file("own_suid", "x\n"),
    ]);
    let all = joined(&run_both(&stack, copy_up_and_chown_scenario));
    assert!(all.contains("grep -c 0x01 -> 0\n1\n"), "caps lost on copy-up:\n{all}");
    assert!(all.contains("Operation not permitted: 'other_suid'\nother_suid 4755"), "{all}");
    assert!(all.contains("own_suid 755"), "the owner's chown keeps setuid:\n{all}");
}

/// Setgid without group execute is a locking mark, which the VFS keeps on a write, truncation
/// or chown by a caller in the file's group (supplementary groups count) and on a chown by
/// root. layerfs dropped it wherever the caller's primary group was not the file's.
fn sgid_mark_scenario(c: &mut Ctx) {
    c.sh(
        "chmod 777 . && for f in w t o c r; do printf data > $f; done; \
         chown 1000:4242 w t o c && chown 1500:4242 r && chmod 2664 w t o c r",
        false,
    );
    let member = "setpriv --reuid 1000 --regid 1000 --groups 4242";
    c.sh(
        &format!(
            "{member} sh -c 'printf x >> w; truncate -s 1 t; : > o'; \
             {member} /usr/bin/python3 -c \"import os; os.chown('c', -1, -1)\"; \
             /usr/bin/python3 -c \"import os; os.chown('r', -1, -1)\"; stat -c '%n %a' w t o c r"
        ),
        false,
    );
    c.remount();
    c.sh("stat -c '%n %a' w t o c r", false);
}

#[test]
fn setgid_mark_stays_for_group_members_and_root() {
    if !available() {
        return;
    }
    for opts in ["", "passthrough=0"] {
        let s = common::Scratch::new();
        let all = joined(&run_both_in(s.dir.path(), &stack(), &sgid_mark_scenario, opts));
        assert!(all.contains("w 2664\nt 2664\no 2664\nc 2664\nr 2664"), "{opts}:\n{all}");
    }
}

/// A chown, or an access ACL, set by the owner while not in the file's group drops setgid,
/// group-executable or not (the VFS's `setattr_should_drop_sgid` and
/// `posix_acl_update_mode`); the server's own chown and setxattr, made as root, kept a setgid
/// without group execute. Lower and upper files, and a directory for the ACL.
fn owner_outside_group_scenario(c: &mut Ctx) {
    c.sh(
        "chmod 777 . && for f in up_chgrp up_acl; do printf data > $f; done; mkdir up_dir; \
         chown 1000:4242 up_chgrp up_acl up_dir && chmod 2744 up_chgrp && chmod 2775 up_acl up_dir",
        false,
    );
    let owner = "setpriv --reuid 1000 --regid 1000 --groups 1000";
    c.sh(
        &format!(
            "{owner} chgrp 1000 low_chgrp up_chgrp; {owner} chown 1000:1000 low_chown; \
             {owner} setfacl -m u:5:r low_acl up_acl; {owner} setfacl -m u:5:rx low_dir up_dir; \
             stat -c '%n %a %g' low_chgrp up_chgrp low_chown low_acl up_acl low_dir up_dir"
        ),
        false,
    );
    c.remount();
    c.sh("stat -c '%n %a %g' low_chgrp up_chgrp low_chown low_acl up_acl low_dir up_dir", false);
}

#[test]
fn the_owner_outside_the_group_drops_setgid_by_chown_and_acl() {
    if !available() {
        return;
    }
    let stack = Stack::new(vec![
        Layer::new()
            .file_mode("low_chgrp", "x\n", 0o2744)
            .owner("low_chgrp", 1000, 4242)
            .file_mode("low_chown", "x\n", 0o6744)
            .owner("low_chown", 1000, 4242)
            .file_mode("low_acl", "x\n", 0o2775)
            .owner("low_acl", 1000, 4242)
            .dir_mode("low_dir", 0o2775)
            .owner("low_dir", 1000, 4242),
    ]);
    for opts in ["", "passthrough=0"] {
        let s = common::Scratch::new();
        let all = joined(&run_both_in(s.dir.path(), &stack, &owner_outside_group_scenario, opts));
        let want = "low_chgrp 744 1000\nup_chgrp 744 1000\nlow_chown 744 1000\nlow_acl 775 4242\n\
                    up_acl 775 4242\nlow_dir 775 4242\nup_dir 775 4242";
        assert!(all.contains(want), "{opts}:\n{all}");
    }
}
