//! Real container engines with layerfs as their FUSE overlay:
//!
//! - podman and buildah (Debian's) with containers-storage's overlay driver and
//!   `mount_program` = layerfs, as root and rootless (an unprivileged user with its own
//!   subuid/subgid range): run, a 3-step build that deletes base files and replaces
//!   directories, diff, commit, export, save; buildah from/run/commit.
//! - The image built on layerfs holds exactly the files of the same build on the kernel
//!   overlay driver (`podman export` trees compared: type, mode, owner, size, content, link
//!   target), also after loading layerfs's `podman save` into the kernel-overlay store.
//! - dockerd `--storage-driver=fuse-overlayfs` with layerfs installed as `fuse-overlayfs` by
//!   scripts/install-as-fuse-overlayfs.sh: import, run, classic build, diff, commit, export.
//!
//! Every test has its own stores, configs (scripts/engines/*.in) and daemon under
//! /tmp/layerfs-engines-*, bounds every engine command with `timeout`, and ends by checking
//! that the engine unmounted every layerfs mount, no layerfs server runs any more, and nothing
//! of the test is mounted or running. Engines missing in CI (CI or LAYERFS_REQUIRE_MOUNT) fail
//! the tests; scripts/deps.sh installs them.
mod common;
mod engines_util;

use engines_util::*;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Imports the busybox base, runs a container, builds Containerfile.build3, and exercises
/// diff, commit, export and save; with `buildah`, also buildah from/run/commit. Leaves
/// `$R/built3-export.tar` (export of a container created from the built image) and
/// `$R/built3-save.tar` (docker-archive of it).
const PODMAN_SCENARIO: &str = r#"
BUILD3_CHECK='test ! -e /etc/gone/g1; test -L /etc/gone; test "$(ls -A /etc/keep)" = new
test ! -e /data/file.txt; test ! -e /bin/getopt; test "$(cat /one)" = "$(printf "one\\ntwo")"
test ! -e /opt/app/cfg; test -z "$(ls -A /opt/app/sub)"; test "$(ls -A /opt/app | tr "\\n" " ")" = "sub v2 "
test -z "$(ls -A /emptydir)"; test -p /fifo; test -x /bin/busybox'
podman import -q --change 'CMD ["/bin/sh"]' "$BASE_TAR" localbase >/dev/null

# run: write, delete a base file, see the FUSE root
out=$(podman run --rm localbase sh -c 'echo hi > /x && cat /x && rm /data/file.txt && test ! -e /data/file.txt && grep " / " /proc/mounts')
echo "run: $out"
echo "$out" | grep -x >/dev/null hi
echo "$out" | grep -q ' / fuse'

# a 3-step build that deletes base files and replaces directories
podman build -q --network=none -f ctx/Containerfile.build3 -t built3 ctx >/dev/null
podman run --rm built3 sh -euxc "$BUILD3_CHECK"

# diff, commit, export, save. Names are not hex: `podman diff NAME` tries NAME as an image ID
# prefix first, and a container named c1 was once diffed as an image whose ID began with c1.
podman run --name ctr1 built3 sh -c 'echo z > /z && rm /etc/os-release && rm -rf /etc/keep && mkdir /etc/keep && echo k > /etc/keep/k2'
podman container diff ctr1 | sort > "$R/c1.diff"
echo "diff:"; cat "$R/c1.diff"
for l in "A /z" "D /etc/os-release" "A /etc/keep/k2" "D /etc/keep/new"; do
  grep -qx "$l" "$R/c1.diff" || { echo "podman diff lacks: $l"; exit 1; }
done
! grep -E '^[ACD] /(proc|sys|dev)/' "$R/c1.diff"
podman commit -q ctr1 committed1 >/dev/null
podman run --rm committed1 sh -euxc 'test ! -e /etc/os-release; test "$(cat /z)" = z; test "$(ls -A /etc/keep)" = k2'
podman export -o "$R/c1.tar" ctr1
tar -tf "$R/c1.tar" | grep -x >/dev/null 'z'
! tar -tf "$R/c1.tar" | grep -x >/dev/null 'etc/os-release'
podman create -q --name exp built3 true >/dev/null
podman export -o "$R/built3-export.tar" exp
podman save -q -o "$R/built3-save.tar" built3
podman save -q --format oci-archive -o "$R/committed1-oci.tar" committed1
tar -tf "$R/built3-save.tar" | grep manifest.json >/dev/null
podman rm ctr1 exp >/dev/null
"#;

const BUILDAH_SCENARIO: &str = r#"
c=$(buildah from -q --pull=never localhost/localbase)
buildah run --network=none "$c" -- sh -c 'echo b > /b && rm -rf /etc/keep/sub && rm /etc/keep/a && rm -rf /etc/gone && mkdir /etc/gone'
buildah commit -q "$c" bcommit >/dev/null
buildah rm "$c" >/dev/null
podman run --rm bcommit sh -euxc 'test "$(cat /b)" = b; test "$(ls -A /etc/keep)" = c; test -z "$(ls -A /etc/gone)"'
"#;

/// The kernel-overlay reference: the same build on the native overlay driver (as root, or
/// rootless as `user`: kernel overlay in podman's user namespace), and the
/// layerfs-built image loaded from its `podman save` into that store. Returns the two export
/// trees (native build, layerfs image seen through the kernel overlay).
fn kernel_reference(
    label: &str,
    containerfile: &str,
    layerfs_save: Option<&Path>,
    user: Option<&TestUser>,
) -> (BTreeMap<String, TarEntry>, Option<BTreeMap<String, TarEntry>>) {
    let mut n = PodmanEnv::new(label, None, user);
    n.sh(&format!(
        r#"
podman import -q --change 'CMD ["/bin/sh"]' "$BASE_TAR" localbase >/dev/null
podman build -q --network=none -f ctx/{containerfile} -t ref ctx >/dev/null
podman create -q --name exp ref true >/dev/null
podman export -o "$R/ref-export.tar" exp
grep -q 'overlay' "$R/graph/overlay-layers/layers.json" || true
"#
    ));
    let native = tar_tree(&n.root().join("ref-export.tar"));
    let loaded = layerfs_save.map(|save| {
        n.sh(&format!(
            r#"
podman load -q -i {save} >/dev/null
podman create -q --name l localhost/built3:latest true >/dev/null
podman export -o "$R/loaded-export.tar" l
"#,
            save = save.display()
        ));
        tar_tree(&n.root().join("loaded-export.tar"))
    });
    n.finish();
    (native, loaded)
}

fn assert_same_tree(
    what: &str,
    a_name: &str,
    a: &BTreeMap<String, TarEntry>,
    b_name: &str,
    b: &BTreeMap<String, TarEntry>,
    skip: &dyn Fn(&str) -> bool,
) {
    let d = diff_trees(a_name, a, b_name, b, skip);
    assert!(
        d.is_empty(),
        "{what}: the trees differ ({} differences)\n{}\n--- {b_name} tree\n{}",
        d.len(),
        d.join("\n"),
        tree_listing(b)
    );
}

/// A sanity check of a tree: the build's deletions and replacements are there (so that a
/// comparison of two equally wrong trees cannot pass).
fn assert_build3_tree(t: &BTreeMap<String, TarEntry>, root: bool) {
    for gone in [
        "etc/gone/g1",
        "etc/gone/sub",
        "etc/keep/a",
        "etc/keep/sub/b",
        "data/file.txt",
        "bin/getopt",
        "opt/app/cfg",
        "opt/app/cfg-hard",
        "opt/app/link2",
        "opt/app/sub/s",
    ] {
        assert!(
            !t.contains_key(gone),
            "{gone} is in the image although the build deleted it\n{}",
            tree_listing(t)
        );
    }
    for here in ["etc/keep/new", "opt/app/v2", "one", "fifo", "emptydir", "etc/gone", "bin/busybox"] {
        assert!(t.contains_key(here), "{here} is missing from the image\n{}", tree_listing(t));
    }
    assert_eq!(t["etc/gone"].kind, 'l');
    // A write clears S_ISUID in a user namespace (the kernel does it too), so only as root.
    if root {
        assert_eq!(t["one"].mode, 0o4755);
    }
    assert_eq!(t["root"].mode, 0o700);
}

/// One engine at a time: podman, buildah and dockerd share iptables, cgroups, runc state and
/// the kernel keyring, and a podman run beside a dockerd start once gave podman a wrong diff.
static ENGINE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn engine_lock() -> std::sync::MutexGuard<'static, ()> {
    ENGINE_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn podman_scenario(rootless: bool) {
    let _one = engine_lock();
    let mut cmds = vec!["podman", "buildah", "runc", "fusermount3"];
    if rootless {
        cmds.extend(["newuidmap", "newgidmap", "setpriv"]);
    }
    if !engines_available(&cmds) {
        return;
    }
    let t0 = Instant::now();
    let user = rootless.then(test_user);
    let label = if rootless { "podman-rootless" } else { "podman-root" };
    let mut e = PodmanEnv::new(label, Some(&common::layerfs_bin()), user.as_ref());
    let info = e.sh("podman info --format '{{.Store.GraphDriverName}} {{.Store.GraphOptions}} rootless={{.Host.Security.Rootless}}'");
    assert!(info.contains("overlay") && info.contains("layerfs"), "store does not use layerfs: {info}");
    assert_eq!(info.contains("rootless=true"), rootless, "{info}");
    e.sh(PODMAN_SCENARIO);
    e.sh(BUILDAH_SCENARIO);
    // While the engine ran, layerfs was the mount program (its servers named the store).
    let layerfs_tree = tar_tree(&e.root().join("built3-export.tar"));
    let save = e.root().join("built3-save.tar");
    let save_copy =
        std::env::temp_dir().join(format!("layerfs-engines-save-{}-{label}.tar", std::process::id()));
    fs::copy(&save, &save_copy).unwrap();
    let t_engine = t0.elapsed();
    e.finish();

    let (native, loaded) =
        kernel_reference(&format!("{label}-kernel"), "Containerfile.build3", Some(&save_copy), user.as_ref());
    let _ = fs::remove_file(&save_copy);
    let loaded = loaded.unwrap();
    assert_build3_tree(&native, !rootless);
    let what = if rootless { "rootless podman build on layerfs" } else { "podman build on layerfs" };
    assert_same_tree(
        what,
        "kernel-overlay build",
        &native,
        "layerfs build (exported through layerfs)",
        &layerfs_tree,
        &|_| false,
    );
    assert_same_tree(
        what,
        "kernel-overlay build",
        &native,
        "layerfs-built image loaded into the kernel-overlay store",
        &loaded,
        &|_| false,
    );
    eprintln!("{label}: engines {:.1}s, total {:.1}s", t_engine.as_secs_f64(), t0.elapsed().as_secs_f64());
}

#[test]
fn podman_and_buildah_as_root_match_kernel_overlay() {
    podman_scenario(false);
}

#[test]
fn podman_and_buildah_rootless_match_kernel_overlay() {
    podman_scenario(true);
}

/// A RUN step writes through one name of a hard link an earlier step made. The kernel overlay
/// (index=off) breaks the link at copy-up, so the image keeps the old data under the other
/// name; layerfs shows the new data under both names, and containers-storage's naive diff
/// records the other name as changed.
#[test]

fn podman_build_hard_link_copy_up_matches_kernel_overlay() {
    if !engines_available(&["podman", "runc", "fusermount3"]) {
        return;
    }
    let _one = engine_lock();
    let bin = common::layerfs_bin();
    let mut e = PodmanEnv::new("podman-hardlink", Some(&bin), None);
    e.sh(r#"
podman import -q --change 'CMD ["/bin/sh"]' "$BASE_TAR" localbase >/dev/null
podman build -q --network=none -f ctx/Containerfile.hardlink -t hl ctx >/dev/null
podman create -q --name exp hl true >/dev/null
podman export -o "$R/hl-export.tar" exp
"#);
    let layerfs_tree = tar_tree(&e.root().join("hl-export.tar"));
    e.finish();
    let (native, _) = kernel_reference("podman-hardlink-kernel", "Containerfile.hardlink", None, None);
    assert_same_tree(
        "podman build (hard link copy-up) on layerfs",
        "kernel-overlay build",
        &native,
        "layerfs build",
        &layerfs_tree,
        &|_| false,
    );
}

/// Paths Docker creates in every container (its -init layer) or that differ by engine.
fn docker_skip(p: &str) -> bool {
    matches!(
        p,
        ".dockerenv"
            | "etc/hosts"
            | "etc/hostname"
            | "etc/resolv.conf"
            | "etc/mtab"
            | "dev"
            | "proc"
            | "sys"
            | "run"
    ) || p.starts_with("dev/")
        || p.starts_with("run/")
}

#[test]
fn docker_with_layerfs_as_fuse_overlayfs() {
    if !engines_available(&["dockerd", "docker", "containerd", "runc", "fusermount3"]) {
        return;
    }
    let _one = engine_lock();
    let t0 = Instant::now();
    let bin = common::layerfs_bin();
    let mut d = match DockerEnv::start("docker", &bin) {
        Ok(d) => d,
        Err(e) => panic!("dockerd with --storage-driver=fuse-overlayfs did not start:\n{e}"),
    };
    let info = d.sh("docker info --format '{{.Driver}}'; command -v fuse-overlayfs; readlink -f \"$(command -v fuse-overlayfs)\"");
    let lines: Vec<&str> = info.lines().collect();
    assert_eq!(lines.first().copied(), Some("fuse-overlayfs"), "{info}");
    assert_eq!(
        PathBuf::from(lines.get(2).copied().unwrap_or("")),
        fs::canonicalize(&bin).unwrap(),
        "fuse-overlayfs in dockerd's PATH is not layerfs: {info}"
    );
    d.sh(r#"
BUILD3_CHECK='test ! -e /etc/gone/g1; test -L /etc/gone; test "$(ls -A /etc/keep)" = new
test ! -e /data/file.txt; test ! -e /bin/getopt; test "$(cat /one)" = "$(printf "one\\ntwo")"
test ! -e /opt/app/cfg; test -z "$(ls -A /opt/app/sub)"; test "$(ls -A /opt/app | tr "\\n" " ")" = "sub v2 "
test -z "$(ls -A /emptydir)"; test -p /fifo; test -x /bin/busybox'
docker import -c 'CMD ["/bin/sh"]' "$BASE_TAR" localbase >/dev/null
out=$(docker run --rm --network=none localbase sh -c 'echo hi > /x && cat /x && rm /data/file.txt && test ! -e /data/file.txt && grep " / " /proc/mounts')
echo "run: $out"
echo "$out" | grep -x >/dev/null hi
echo "$out" | grep -q ' / fuse'
# the running container's root is served by layerfs (under the name fuse-overlayfs)
docker run -d --network=none --name sleeper localbase sleep 60 >/dev/null
ps -eo args | grep -F "$R/data/fuse-overlayfs" | grep -q '^fuse-overlayfs -o lowerdir='
docker rm -f sleeper >/dev/null
docker build -q --network=none -f ctx/Containerfile.build3 -t built3 ctx >/dev/null
docker run --rm --network=none built3 sh -euxc "$BUILD3_CHECK"
docker run --network=none --name c1 built3 sh -c 'echo z > /z && rm /etc/os-release && rm -rf /etc/keep && mkdir /etc/keep && echo k > /etc/keep/k2'
docker diff c1 | sort > "$R/c1.diff"
echo "diff:"; cat "$R/c1.diff"
for l in "A /z" "D /etc/os-release" "A /etc/keep/k2" "D /etc/keep/new"; do
  grep -qx "$l" "$R/c1.diff" || { echo "docker diff lacks: $l"; exit 1; }
done
docker commit c1 committed1 >/dev/null
docker run --rm --network=none committed1 sh -euxc 'test ! -e /etc/os-release; test "$(cat /z)" = z; test "$(ls -A /etc/keep)" = k2'
docker export -o "$R/c1.tar" c1
tar -tf "$R/c1.tar" | grep -x >/dev/null 'z'
docker create --network=none --name exp built3 true >/dev/null
docker export -o "$R/built3-export.tar" exp
docker save -o "$R/built3-save.tar" built3
tar -tf "$R/built3-save.tar" | grep manifest.json >/dev/null
docker rm c1 exp >/dev/null
docker rmi committed1 built3 localbase >/dev/null
"#);
    let docker_tree = tar_tree(&d.area.root.join("built3-export.tar"));
    let t_engine = t0.elapsed();
    d.finish();
    assert_build3_tree(&docker_tree, true);
    let (native, _) = kernel_reference("docker-kernel", "Containerfile.build3", None, None);
    assert_same_tree(
        "docker build on layerfs",
        "kernel-overlay build (podman)",
        &native,
        "docker build on layerfs",
        &docker_tree,
        &docker_skip,
    );
    eprintln!("docker: engine {:.1}s, total {:.1}s", t_engine.as_secs_f64(), t0.elapsed().as_secs_f64());
}

/// scripts/install-as-fuse-overlayfs.sh: a symlink (or a copy) named fuse-overlayfs in the
/// given directory; refuses /usr/bin and a foreign file; --uninstall removes only its own.
#[test]
fn install_as_fuse_overlayfs_script() {
    let s = common::Scratch::new();
    let dir = s.path("bin");
    let script = repo().join("scripts/install-as-fuse-overlayfs.sh");
    let bin = common::layerfs_bin();
    let run = |args: &[&str]| {
        std::process::Command::new("bash").arg(&script).arg("--bin").arg(&bin).args(args).output().unwrap()
    };
    let d = dir.to_str().unwrap();
    let o = run(&[d]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dest = dir.join("fuse-overlayfs");
    assert_eq!(fs::canonicalize(&dest).unwrap(), fs::canonicalize(&bin).unwrap());
    let v = std::process::Command::new(&dest).arg("--version").output().unwrap();
    assert!(v.status.success() && String::from_utf8_lossy(&v.stdout).contains("layerfs"));
    // Idempotent.
    assert!(run(&[d]).status.success());
    // Never the distribution's directory.
    let o = run(&["/usr/bin"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("refusing"));
    // A foreign file is kept unless --force.
    assert!(run(&["--uninstall", d]).status.success());
    assert!(!dest.exists());
    fs::write(&dest, "#!/bin/sh\necho other\n").unwrap();
    assert!(!run(&[d]).status.success());
    assert!(!run(&["--uninstall", d]).status.success());
    assert_eq!(fs::read_to_string(&dest).unwrap(), "#!/bin/sh\necho other\n");
    let o = run(&["--copy", "--force", d]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!fs::symlink_metadata(&dest).unwrap().file_type().is_symlink());
    assert_eq!(fs::read(&dest).unwrap(), fs::read(&bin).unwrap());
    assert!(run(&["--uninstall", d]).status.success());
    assert!(!dest.exists());
}
