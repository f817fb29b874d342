#!/usr/bin/env bash
# Installs the system packages layerfs's build, tests and benchmarks use (Debian/Ubuntu).
set -euo pipefail
# Tests: fuse3, attr (getfattr/setfattr), acl (setfacl/getfacl), util-linux (setpriv, unshare),
# passwd (useradd), uidmap, python3, umoci, stress-ng and the engines; benchmarks: fio, gcc,
# e2fsprogs (mkfs.ext4 for bench-layers.sh), fuse-overlayfs as the peer.
pkgs=(fuse3 fuse-overlayfs attr acl util-linux passwd coreutils tar gzip python3 gcc e2fsprogs umoci fio stress-ng
      podman buildah docker.io containerd runc uidmap slirp4netns)
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
command -v cargo >/dev/null || { echo "deps.sh: cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }
