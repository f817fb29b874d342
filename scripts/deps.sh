#!/usr/bin/env bash
# Installs the system packages layerfs's build, tests and benchmarks use (Debian/Ubuntu).
set -euo pipefail
# Tests: fuse3, attr (getfattr/setfattr), acl (setfacl/getfacl), util-linux (setpriv, unshare),
# passwd (useradd), uidmap, python3 (its standard library's sqlite3 for tests/sqlite.rs), umoci,
# stress-ng and the engines; benchmarks: fio, gcc, e2fsprogs (mkfs.ext4 for bench-layers.sh and
# bench.sh's create, tar, sqlite and chown cells; filefrag; also mkfs.ext4, mke2fs and e2fsck for
# tests/power_loss.rs), xfsprogs (mkfs.xfs: a reflink filesystem for tests/reflink.rs and the
# reflink rows, and tests/power_loss.rs's XFS), strace (tests/reflink.rs counts the server's
# fsyncs), procps (pgrep), fuse-overlayfs as the peer; mount (losetup, mount), findutils for both.
# Build: gcc (the sha2 and zstd crates compile C), curl and ca-certificates (rustup, when the
# machine has no Rust yet or an old one). kmod (modprobe): kernel overlayfs and FUSE are modules
# on most kernels, loaded here so the tests find them in /proc/filesystems.
pkgs=(fuse3 fuse-overlayfs attr acl util-linux passwd coreutils tar gzip python3 gcc e2fsprogs umoci fio stress-ng
      podman buildah docker.io containerd runc uidmap slirp4netns curl ca-certificates
      kmod mount procps findutils xfsprogs strace)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
if ((${#missing[@]})); then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# A distribution's /dev/fuse is world-usable; some minimal images leave it root-only.
if [ -e /dev/fuse ] && [ "$(id -u)" = 0 ]; then chmod 0666 /dev/fuse; fi
if [ "$(id -u)" = 0 ]; then
  for m in overlay fuse xfs; do
    grep -qw "${m}" /proc/filesystems || modprobe "$m" 2>/dev/null || true
  done
  # Loop devices: tests/reflink.rs and tests/mount_basic.rs mount filesystem images.
  [ -e /dev/loop-control ] || modprobe loop 2>/dev/null || true
fi
# Rust: edition 2024 needs 1.85 or later. Without it (or with an older one) rustup installs the
# stable toolchain into ~/.cargo; callers put ~/.cargo/bin first on PATH (scripts/test.sh and
# scripts/example.sh do).
export PATH="$HOME/.cargo/bin:$PATH"
rust_ok() {  # cargo on PATH, 1.85 or later
  local v
  v=$(cargo --version 2>/dev/null | awk '{print $2}')
  [ -n "$v" ] && printf '1.85.0\n%s\n' "$v" | sort -V -C
}
if ! rust_ok; then
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y -q --profile minimal \
    || { echo "deps.sh: cannot install Rust through rustup (https://rustup.rs)" >&2; exit 1; }
  rust_ok || { echo "deps.sh: cargo 1.85 or later is needed, found: $(cargo --version 2>&1)" >&2; exit 1; }
fi
# rustfmt: scripts/test.sh checks the formatting first (rustup's minimal profile leaves it out).
if ! cargo fmt --version >/dev/null 2>&1; then
  if command -v rustup >/dev/null; then
    rustup component add rustfmt >/dev/null \
      || { echo "deps.sh: cannot add rustfmt (rustup component add rustfmt)" >&2; exit 1; }
  else
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rustfmt >/dev/null \
      || { echo "deps.sh: cannot install rustfmt" >&2; exit 1; }
  fi
fi
