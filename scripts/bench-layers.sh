#!/usr/bin/env bash
# Layer-tool throughput beside the standard tools, in one run: `layerfs unpack` vs GNU tar
# extracting the same archive (plain and gzip), `layerfs digest` vs sha256sum. Medians of --runs
# (default 3); each run alternates which tool goes first.
#
# usage: scripts/bench-layers.sh [--size-mib N] [--runs N] [--work DIR] [--layerfs PATH]
#                                [--fs loop|dir] [--mkfs-opts "OPTS"] [--no-gzip]
#
# --fs loop (default as root): every timed extraction gets a fresh ext4 (mkfs.ext4 $MKFS_OPTS on
# a sparse image in WORK, loop-mounted), so no tool inherits another's freed inodes or a fuller
# fs. --fs dir: extract into WORK itself (not root, or no loop devices); outputs are kept until
# the end, see below.
set -euo pipefail
SIZE=1024 RUNS=3 WORK=/tmp/layerfs-bench-layers FS= MKFS_OPTS= GZIP=1
LAYERFS=${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/.." && pwd)/target}/release/layerfs
while (($#)); do
  case $1 in
    --size-mib) SIZE=$2; shift ;;
    --runs) RUNS=$2; shift ;;
    --work) WORK=$2; shift ;;
    --layerfs) LAYERFS=$2; shift ;;
    --fs) FS=$2; shift ;;
    --mkfs-opts) MKFS_OPTS=$2; shift ;;
    --no-gzip) GZIP= ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "bench-layers.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
for t in tar sha256sum python3 gzip bc; do command -v $t >/dev/null || { echo "bench-layers.sh: $t not found" >&2; exit 1; }; done
[ -x "$LAYERFS" ] || { echo "bench-layers.sh: no layerfs binary at $LAYERFS (cargo build --release)" >&2; exit 1; }
if [ -z "$FS" ]; then
  if [ "$(id -u)" = 0 ] && command -v mkfs.ext4 >/dev/null && command -v losetup >/dev/null; then FS=loop; else FS=dir; fi
fi
case $FS in loop|dir) ;; *) echo "bench-layers.sh: --fs loop or dir" >&2; exit 2 ;; esac
WORK=$(mkdir -p "$WORK" && cd "$WORK" && pwd)
tarball=$WORK/layer-${SIZE}m.tar
if [ ! -f "$tarball" ]; then
  # A layer like a real image: many small files plus some large ones, ~SIZE MiB in all.
  src=$WORK/src; rm -rf "$src"; mkdir -p "$src"
  python3 - "$src" "$SIZE" <<'PY'
import os, sys, random
root, size = sys.argv[1], int(sys.argv[2]) << 20
rnd = random.Random(1)
big = size // 2
for i in range(8):
    with open(os.path.join(root, f"big{i}.bin"), "wb") as f:
        f.write(rnd.randbytes(big // 8))
left, n = size - big, 0
while left > 0:
    d = os.path.join(root, f"d{n // 500}")
    os.makedirs(d, exist_ok=True)
    k = min(left, rnd.choice([512, 2048, 8192, 32768]))
    with open(os.path.join(d, f"f{n}"), "wb") as f:
        f.write(rnd.randbytes(k))
    left -= k; n += 1
PY
  tar -C "$src" --sort=name --owner=0 --group=0 --numeric-owner -cf "$tarball" .
  rm -rf "$src"
fi
if [ -n "$GZIP" ] && [ ! -f "$tarball.gz" ]; then gzip -c "$tarball" >"$tarball.gz.part" && mv "$tarball.gz.part" "$tarball.gz"; fi
bytes=$(stat -c %s "$tarball")
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# Each timing starts with no dirty data left from the previous command (sync), so neither tool
# pays for the other's writeback. The time is until the tool exits (neither fsyncs).
t() { local s e; sync; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc -l; }
declare -A R
mnt=$WORK/mnt img=$WORK/fs.img
cleanup() {
  if [ "$FS" = loop ]; then
    mountpoint -q "$mnt" && umount "$mnt"
    rm -f "$img"
  fi
  rm -rf "$WORK"/out-*
}
trap cleanup EXIT
# Where an extraction goes: a fresh ext4 (loop) or a new directory in WORK (dir). With dir,
# outputs are kept until the end: ext4 skips recently freed inodes when allocating (on a
# filesystem without a journal; the check costs a scan per create), so deleting 50k files right
# before a timed extraction would slow that one down severalfold.
fresh() {
  if [ "$FS" = loop ]; then
    mountpoint -q "$mnt" && umount "$mnt"
    rm -f "$img"; truncate -s $((SIZE * 4 + 1024))M "$img"
    # shellcheck disable=SC2086
    mkfs.ext4 -q -F $MKFS_OPTS "$img" >/dev/null; mkdir -p "$mnt"; mount -o loop "$img" "$mnt"
    echo "$mnt"
  else
    mkdir -p "$WORK/out-$1"; echo "$WORK/out-$1"
  fi
}
rm -rf "$WORK"/out-*
run_tar() { local d; d=$(fresh "tar$1-$2"); mkdir -p "$d/x"; R[tar$1]+="$(t tar -x${1:+z}pf "$tarball$3" -C "$d/x")"$'\n'; }
run_unpack() { local d; d=$(fresh "unpack$1-$2"); R[unpack$1]+="$(t "$LAYERFS" unpack "$tarball$3" "$d/x")"$'\n'; }
for ((r = 1; r <= RUNS; r++)); do
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  cat "$tarball" >/dev/null; [ -z "$GZIP" ] || cat "$tarball.gz" >/dev/null
  for c in "" ${GZIP:+gz}; do
    ext=${c:+.gz}
    if ((r % 2)); then run_tar "$c" "$r" "$ext"; run_unpack "$c" "$r" "$ext"
    else run_unpack "$c" "$r" "$ext"; run_tar "$c" "$r" "$ext"; fi
  done
  if ((r % 2)); then R[sha]+="$(t sha256sum "$tarball")"$'\n'; R[digest]+="$(t "$LAYERFS" digest "$tarball")"$'\n'
  else R[digest]+="$(t "$LAYERFS" digest "$tarball")"$'\n'; R[sha]+="$(t sha256sum "$tarball")"$'\n'; fi
done
cleanup
m() { printf '%s' "${R[$1]}" | grep . | median; }
mb=$(echo "$bytes / 1048576" | bc -l)
printf '| layer tool (%.0f MiB tar, median of %d) | standard tool | layerfs | layerfs / standard |\n|---|---:|---:|---:|\n' "$mb" "$RUNS"
rows=("unpack:tar:tar -xpf" "digest:sha:sha256sum")
[ -z "$GZIP" ] || rows=("unpack:tar:tar -xpf" "unpackgz:targz:tar -xzpf (.tar.gz)" "digest:sha:sha256sum")
for pair in "${rows[@]}"; do
  IFS=: read -r ours theirs name <<<"$pair"
  a=$(m "$theirs"); b=$(m "$ours")
  printf '| %s vs %s | %.2f s (%.0f MiB/s) | %.2f s (%.0f MiB/s) | %.2f |\n' "$ours" "$name" "$a" "$(echo "$mb / $a" | bc -l)" "$b" "$(echo "$mb / $b" | bc -l)" "$(echo "$b / $a" | bc -l)"
done
echo
echo "MiB/s are of the uncompressed tar. Extraction into: $([ "$FS" = loop ] && echo "a fresh loop-mounted ext4 each time (mkfs.ext4 ${MKFS_OPTS:-defaults})" || echo "$WORK on $(stat -f -c %T "$WORK")")"
echo "Machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), $(tar --version | head -1), $(gzip --version | head -1)"
