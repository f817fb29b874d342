#!/usr/bin/env bash
# Installs layerfs under the name `fuse-overlayfs`, for engines that run the binary of that
# name from PATH (Docker's fuse-overlayfs storage driver; containers-storage when no
# mount_program is set and native overlay is unavailable).
#
#   scripts/install-as-fuse-overlayfs.sh [--copy] [--bin PATH] [--force] [DIR]
#
#   DIR        where to put `fuse-overlayfs` (default /usr/local/bin, which precedes /usr/bin
#              in the default PATH of root and of systemd units)
#   --bin PATH the layerfs binary (default: target/release/layerfs of this checkout, built
#              with `cargo build --release` when missing)
#   --copy     install a copy instead of a symlink (survives `cargo clean`)
#   --force    replace an existing DIR/fuse-overlayfs that is not ours
#   --uninstall remove DIR/fuse-overlayfs if it is ours (a symlink to / copy of layerfs)
#
# The distribution's /usr/bin/fuse-overlayfs is never touched: the script refuses DIR=/usr/bin
# and DIR=/bin. Undo with `--uninstall` or `rm DIR/fuse-overlayfs`.
#
# Docker example (a private daemon; see tests/engines.rs):
#   scripts/install-as-fuse-overlayfs.sh /opt/layerfs/bin
#   PATH=/opt/layerfs/bin:$PATH dockerd --storage-driver=fuse-overlayfs ...
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
dir=/usr/local/bin
bin=""
mode=link
force=0
uninstall=0
while (($#)); do
  case "$1" in
    --copy) mode=copy ;;
    --force) force=1 ;;
    --uninstall) uninstall=1 ;;
    --bin) shift; bin=${1:?--bin needs a path} ;;
    --bin=*) bin=${1#--bin=} ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "install-as-fuse-overlayfs: unknown option $1" >&2; exit 2 ;;
    *) dir=$1 ;;
  esac
  shift
done

die() { echo "install-as-fuse-overlayfs: $*" >&2; exit 1; }

case "$(realpath -m "$dir")" in
  /usr/bin|/bin) die "refusing to install into $dir: it holds the distribution's fuse-overlayfs" ;;
esac
dest="$dir/fuse-overlayfs"

if [ -z "$bin" ]; then
  bin="${CARGO_TARGET_DIR:-$here/target}/release/layerfs"
  if [ ! -x "$bin" ] && [ "$uninstall" = 0 ]; then
    (cd "$here" && cargo build --release --bin layerfs)
  fi
fi

# Ours: a symlink to a file called layerfs, or a file whose --version names layerfs.
is_ours() {
  [ -L "$dest" ] && [ "$(basename "$(readlink -f "$dest")")" = layerfs ] && return 0
  [ -f "$dest" ] && "$dest" --version 2>&1 | grep -qi layerfs && return 0
  return 1
}

if [ "$uninstall" = 1 ]; then
  if [ -e "$dest" ] || [ -L "$dest" ]; then
    is_ours || die "$dest is not layerfs; not removing it"
    rm -f "$dest"
    echo "removed $dest"
  fi
  exit 0
fi

[ -x "$bin" ] || die "layerfs binary not found or not executable: $bin"
bin=$(realpath "$bin")
if { [ -e "$dest" ] || [ -L "$dest" ]; } && ! is_ours && [ "$force" = 0 ]; then
  die "$dest exists and is not layerfs (use --force to replace it)"
fi
mkdir -p "$dir"
tmp="$dir/.fuse-overlayfs.tmp.$$"
if [ "$mode" = copy ]; then
  install -m 0755 "$bin" "$tmp"
else
  ln -sfn "$bin" "$tmp"
fi
mv -fT "$tmp" "$dest"
echo "installed $dest -> $bin ($mode)"
resolved=$(command -v fuse-overlayfs || true)
if [ "$resolved" != "$dest" ]; then
  echo "install-as-fuse-overlayfs: note: in this PATH \`fuse-overlayfs\` is ${resolved:-not found}; put $dir first in the engine's PATH" >&2
fi
