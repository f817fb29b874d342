#!/usr/bin/env bash
# Layer-tool throughput beside the standard tools, in one run: `layerfs unpack` vs GNU tar
# extracting the same archive, `layerfs digest` vs sha256sum. Medians of --runs (default 3).
#
# usage: scripts/bench-layers.sh [--size-mib N] [--runs N] [--work DIR] [--layerfs PATH]
set -euo pipefail
SIZE=1024 RUNS=3 WORK=/tmp/layerfs-bench-layers
LAYERFS=${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/.." && pwd)/target}/release/layerfs
while (($#)); do
  case $1 in
    --size-mib) SIZE=$2; shift ;;
    --runs) RUNS=$2; shift ;;
    --work) WORK=$2; shift ;;
    --layerfs) LAYERFS=$2; shift ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "bench-layers.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
for t in tar sha256sum python3; do command -v $t >/dev/null || { echo "bench-layers.sh: $t not found" >&2; exit 1; }; done
[ -x "$LAYERFS" ] || { echo "bench-layers.sh: no layerfs binary at $LAYERFS (cargo build --release)" >&2; exit 1; }
mkdir -p "$WORK"
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
bytes=$(stat -c %s "$tarball")
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# Each timing starts with no dirty data left from the previous command (sync), so neither tool
# pays for the other's writeback.
t() { local s e; sync; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc -l; }
declare -A R
# Outputs are kept until the end: ext4 skips recently freed inodes when allocating (for about
# 30 s), so deleting 50k files right before a timed extraction would slow that one down.
rm -rf "$WORK"/out-*
for ((r = 1; r <= RUNS; r++)); do
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; cat "$tarball" >/dev/null
  mkdir -p "$WORK/out-tar-$r"; R[tar]+="$(t tar -xpf "$tarball" -C "$WORK/out-tar-$r")"$'\n'
  R[unpack]+="$(t "$LAYERFS" unpack "$tarball" "$WORK/out-unpack-$r")"$'\n'
  R[sha]+="$(t sha256sum "$tarball")"$'\n'
  R[digest]+="$(t "$LAYERFS" digest "$tarball")"$'\n'
done
rm -rf "$WORK"/out-*
m() { printf '%s' "${R[$1]}" | grep . | median; }
mb=$(echo "$bytes / 1048576" | bc -l)
printf '| layer tool (%.0f MiB tar, median of %d) | standard tool | layerfs | layerfs / standard |\n|---|---:|---:|---:|\n' "$mb" "$RUNS"
for pair in "unpack:tar:tar -xpf" "digest:sha:sha256sum"; do
  IFS=: read -r ours theirs name <<<"$pair"
  a=$(m "$theirs"); b=$(m "$ours")
  printf '| %s vs %s | %.2f s (%.0f MiB/s) | %.2f s (%.0f MiB/s) | %.2f |\n' "$ours" "$name" "$a" "$(echo "$mb / $a" | bc -l)" "$b" "$(echo "$mb / $b" | bc -l)" "$(echo "$b / $a" | bc -l)"
done
echo
echo "Machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), $WORK on $(stat -f -c %T "$WORK")"
