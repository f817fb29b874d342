//! Faults from the layers: a full upper filesystem gives ENOSPC for that call only, leaves
//! nothing half-made in upper, and the server keeps serving.
mod common;
use common::*;
use std::fs;
use std::io::Write;
use std::process::Command;

struct Tmpfs(std::path::PathBuf);
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_upper_gives_enospc_and_damages_nothing() {
    if !can_mount() {
        return;
    }
    if fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap_or(1) != 0 {
        assert!(!must_mount(), "needs root to mount a small tmpfs");
        return;
    }
    let s = Scratch::new();
    let (l, small, m) = (s.path("l"), s.path("small"), s.path("m"));
    let st =
        Command::new("mount").args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"]).arg(&small).status().unwrap();
    assert!(st.success(), "mount tmpfs");
    let _t = Tmpfs(small.clone());
    let (u, w) = (small.join("u"), small.join("w"));
    fs::create_dir_all(&u).unwrap();
    fs::create_dir_all(&w).unwrap();
    fs::write(u.join("kept"), b"precious").unwrap();
    fs::write(l.join("big"), vec![1u8; 16 << 20]).unwrap();
    fs::write(l.join("small"), b"s").unwrap();
    let _g = mount_layerfs(std::slice::from_ref(&l), Some((&u, &w)), &m, "");
    // A new file that does not fit.
    let mut f = fs::File::create(m.join("new")).unwrap();
    let mut err = None;
    for _ in 0..16 {
        if let Err(e) = f.write_all(&vec![2u8; 1 << 20]).and_then(|_| f.flush()) {
            err = Some(e);
            break;
        }
    }
    let err = err.or_else(|| f.sync_all().err()).expect("writing 16 MiB into an 8 MiB upper must fail");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    drop(f);
    fs::remove_file(m.join("new")).unwrap();
    // A copy-up that does not fit: ENOSPC, and no partial copy in upper or workdir.
    let e = fs::OpenOptions::new().append(true).open(m.join("big")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    assert!(!u.join("big").exists(), "no half-copied file in upper");
    assert_eq!(fs::read_dir(w.join("work")).unwrap().count(), 0, "workdir cleaned after the failed copy-up");
    assert_eq!(fs::read(m.join("big")).unwrap().len(), 16 << 20, "the lower view is intact");
    // Everything else still works.
    assert_eq!(fs::read(m.join("kept")).unwrap(), b"precious");
    assert_eq!(fs::read(u.join("kept")).unwrap(), b"precious");
    fs::write(m.join("small"), b"changed").unwrap();
    assert_eq!(fs::read(m.join("small")).unwrap(), b"changed");
}

/// EIO and EACCES from a layer surface as that errno for that call only. The layer is itself a
/// layerfs mount with fault rules, so the errors come from the layer's filesystem.
#[test]
fn errors_from_a_layer_surface_for_that_call_only() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (x, a, u, w, m) = (s.path("x"), s.path("a"), s.path("u"), s.path("w"), s.path("m"));
    fs::write(x.join("bad"), b"bad data").unwrap();
    fs::write(x.join("denied"), b"denied").unwrap();
    fs::write(x.join("good"), b"good").unwrap();
    let rules = s.dir.path().join("rules");
    fs::write(&rules, "read /bad EIO\nopen /denied EACCES\n").unwrap();
    let _layer = mount_layerfs(std::slice::from_ref(&x), None, &a, &format!("faults={}", rules.display()));
    let _g = mount_layerfs(std::slice::from_ref(&a), Some((&u, &w)), &m, "");
    let e = fs::read(m.join("bad")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    let e = fs::read(m.join("denied")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    // Only those calls fail: metadata of the same files, and other files, are fine.
    assert_eq!(fs::metadata(m.join("bad")).unwrap().len(), 8);
    assert_eq!(fs::read(m.join("good")).unwrap(), b"good");
    // A copy-up that cannot read its source fails with that errno and leaves nothing behind.
    let e = fs::OpenOptions::new().append(true).open(m.join("bad")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(!u.join("bad").exists());
    assert_eq!(fs::read_dir(w.join("work")).unwrap().count(), 0);
    // And the server keeps serving.
    fs::write(m.join("good"), b"changed").unwrap();
    assert_eq!(fs::read(m.join("good")).unwrap(), b"changed");
}
