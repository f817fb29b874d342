#!/usr/bin/env bash
# Builds layerfs, makes a small three-layer example stack, mounts it, shows the merged view and
# what a change leaves in the upper layer, then unmounts. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet
bin=$PWD/target/release/layerfs
ex=${LAYERFS_EXAMPLE_DIR:-/tmp/layerfs-example}
mnt=$ex/merged
fusermount3 -u "$mnt" 2>/dev/null || true
rm -rf "$ex"
mkdir -p "$ex"/{base,app,patch,upper,work,merged}
# base: a tiny root filesystem
mkdir -p "$ex"/base/{etc,bin,var/log}
echo "debian" > "$ex"/base/etc/os-release
echo "old config" > "$ex"/base/etc/app.conf
echo "#!/bin/sh" > "$ex"/base/bin/tool
touch "$ex"/base/var/log/old.log
# app: adds files, replaces the config
mkdir -p "$ex"/app/opt/app "$ex"/app/etc
echo "app v1" > "$ex"/app/opt/app/VERSION
echo "new config" > "$ex"/app/etc/app.conf
# patch: deletes a file (OCI .wh. whiteout) and replaces a directory (opaque marker)
mkdir -p "$ex"/patch/bin "$ex"/patch/var/log
touch "$ex"/patch/bin/.wh.tool
touch "$ex"/patch/var/log/.wh..wh..opq
echo "fresh" > "$ex"/patch/var/log/new.log

trap 'fusermount3 -u "$mnt" 2>/dev/null || true' EXIT
"$bin" -o "lowerdir=$ex/patch:$ex/app:$ex/base,upperdir=$ex/upper,workdir=$ex/work" "$mnt"
echo "== merged view (lowerdir=patch:app:base) =="
(cd "$mnt" && find . -mindepth 1 | sort | while read -r p; do
  if [ -f "$p" ]; then printf '%-22s %s\n' "$p" "$(head -c 40 "$p" | tr '\n' ' ')"; else echo "$p/"; fi
done)
echo "== change it: edit a lower file, delete one, add one =="
echo "edited" >> "$mnt/etc/os-release"
rm "$mnt/etc/app.conf"
echo "hello" > "$mnt/hello.txt"
echo "== upper dir now holds only the changes (c 0,0 = whiteout) =="
(cd "$ex/upper" && find . -mindepth 1 | sort | while read -r p; do ls -ld "$p" | awk '{print $1, $5, $6, $NF}'; done)
echo "== lower layers are untouched: base/etc/os-release =="
cat "$ex/base/etc/os-release"
fusermount3 -u "$mnt"
trap - EXIT
echo "unmounted $mnt"
