#!/usr/bin/env bash
# Installs the system packages layerfs's build, tests and benchmarks use (Debian/Ubuntu).
set -euo pipefail
# Tests: fuse3, attr (getfattr/setfattr), acl (setfacl/getfacl), util-linux (setpriv, unshare),
# passwd (useradd), uidmap, python3, umoci, stress-ng and the engines; benchmarks: fio, gcc,
# e2fsprogs (mkfs.ext4 for bench-layers.sh), fuse-overlayfs as the peer.
# Build: gcc (the sha2 and zstd crates compile C), curl and ca-certificates (rustup, when the
# machine has no Rust yet).
pkgs=(fuse3 fuse-overlayfs attr acl util-linux passwd coreutils tar gzip python3 gcc e2fsprogs umoci fio stress-ng
      podman buildah docker.io containerd runc uidmap slirp4netns curl ca-certificates)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# A distribution's /dev/fuse is world-usable; some minimal images leave it root-only.
if [ -e /dev/fuse ] && [ "$(id -u)" = 0 ]; then chmod 0666 /dev/fuse; fi
# Rust (edition 2024: 1.85 or later) through rustup into ~/.cargo when there is none; callers
# put ~/.cargo/bin on PATH (scripts/test.sh, scripts/example.sh do).
if ! command -v cargo >/dev/null && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y -q --profile minimal \
    || { echo "deps.sh: cannot install Rust through rustup (https://rustup.rs)" >&2; exit 1; }
fi
