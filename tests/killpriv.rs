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

fn check(log: &[(String, i32)]) {
    let all: String = log.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>().join("\n");
    eprintln!("{all}");
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
