#!/usr/bin/env bash
# Cost of the request hooks (-o trace=, -o faults=): the same uncached metadata workload on
# layerfs mounts with hooks off, tracing on, a fault rule on the hot operations that never
# fires (path computed and matched on every request), and both.
#
# usage: scripts/bench-hooks.sh [--files N] [--runs R] [--layerfs PATH] [--baseline PATH]
#                               [--work DIR]
#   --files N         files in the lower layer (default 20000, in 200 directories)
#   --runs R          find runs per mount; the median is reported (default 5)
#   --layerfs PATH    the binary (default: $CARGO_TARGET_DIR/release/layerfs, else
#                     <repo>/target/release/layerfs)
#   --baseline PATH   also run this binary with no hooks (e.g. a build from before the
#                     hooks existed) as the first row
#   --work DIR        scratch (default /tmp/layerfs-bench-hooks)
# Workload: `find MNT -printf '%s\n'` over the tree, mounted with timeout=0 so that the kernel
# caches nothing and every name costs FUSE requests (lookup/getattr/readdirplus). Requests per
# run are counted from the trace; wall µs/request = find's wall time / requests; server CPU
# µs/request = the server's user+system time over the timed runs / requests (less sensitive
# to other load on the machine; includes the trace writer thread).
set -uo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
FILES=20000
RUNS=5
LAYERFS=
BASELINE=
WORK=/tmp/layerfs-bench-hooks

die() { echo "bench-hooks.sh: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
    case $1 in
        --files) FILES=$2; shift ;;
        --runs) RUNS=$2; shift ;;
        --layerfs) LAYERFS=$2; shift ;;
        --baseline) BASELINE=$2; shift ;;
        --work) WORK=$2; shift ;;
        -h|--help) sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1" ;;
    esac
    shift
done
if [ -z "$LAYERFS" ]; then
    if [ -n "${CARGO_TARGET_DIR:-}" ] && [ -x "$CARGO_TARGET_DIR/release/layerfs" ]; then
        LAYERFS=$CARGO_TARGET_DIR/release/layerfs
    else
        LAYERFS=$REPO/target/release/layerfs
    fi
fi
[ -x "$LAYERFS" ] || die "no layerfs binary at $LAYERFS (cargo build --release)"
[ -z "$BASELINE" ] || [ -x "$BASELINE" ] || die "no baseline binary at $BASELINE"
for t in find fusermount3 awk sort; do command -v $t >/dev/null || die "missing $t"; done

mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
LOWER=$WORK/lower-$FILES

if [ ! -f "$LOWER/.done" ]; then
    echo "building $FILES files in $LOWER" >&2
    rm -rf "$LOWER"
    mkdir -p "$LOWER"
    per=$(( (FILES + 199) / 200 ))
    for d in $(seq 0 199); do
        mkdir "$LOWER/d$d"
        (cd "$LOWER/d$d" && seq 1 "$per" | sed 's/^/f/' | xargs touch)
    done
    touch "$LOWER/.done"
fi

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf '# a fault rule that never fires:\nlookup,getattr,readdirplus,opendir /no/such/dir/** EIO\n' >"$WORK/rules"
NAMES=() BINS=() OPTS=()
add() { NAMES+=("$1"); BINS+=("$2"); OPTS+=("$3"); }
[ -n "$BASELINE" ] && add baseline "$BASELINE" ""
add off "$LAYERFS" ""
add trace "$LAYERFS" ",trace=$WORK/trace-trace.jsonl"
add faults "$LAYERFS" ",faults=$WORK/rules"
add trace+faults "$LAYERFS" ",trace=$WORK/trace-trace+faults.jsonl,faults=$WORK/rules"

# Every configuration is mounted at once and the runs go round-robin, so that the noise of a
# shared machine spreads over all rows alike.
MOUNTS=() PIDS=()
cleanup() {
    for m in "${MOUNTS[@]}"; do
        if grep -q " $m " /proc/mounts; then fusermount3 -u "$m" 2>/dev/null || umount -l "$m"; fi
    done
}
trap cleanup EXIT
for i in "${!NAMES[@]}"; do
    d=$WORK/c$i
    rm -rf "$d" "$WORK/trace-${NAMES[$i]}.jsonl"
    mkdir -p "$d/upper" "$d/workdir" "$d/mnt"
    "${BINS[$i]}" -o "lowerdir=$LOWER,upperdir=$d/upper,workdir=$d/workdir,timeout=0${OPTS[$i]}" "$d/mnt" \
        || die "mount failed (${NAMES[$i]})"
    MOUNTS+=("$d/mnt")
    find "$d/mnt" -printf '%s\n' >/dev/null   # warm-up run
    PIDS[$i]=$(pgrep -f -- "workdir=$d/workdir" | head -n1)
    [ -n "${PIDS[$i]}" ] || die "no server process for ${NAMES[$i]}"
done
# utime + stime of a process, in clock ticks
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A TIMES CPU0 CPU1
for i in "${!NAMES[@]}"; do CPU0[$i]=$(cpu "${PIDS[$i]}"); done
for r in $(seq 1 "$RUNS"); do
    for i in "${!NAMES[@]}"; do
        t0=$(now)
        find "${MOUNTS[$i]}" -printf '%s\n' >/dev/null
        t1=$(now)
        TIMES[$i]+="$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}') "
    done
done
for i in "${!NAMES[@]}"; do CPU1[$i]=$(cpu "${PIDS[$i]}"); done
cleanup
RESULTS=()
for i in "${!NAMES[@]}"; do
    med=$(printf '%s\n' ${TIMES[$i]} | median)
    reqs=- dropped=-
    tf=$WORK/trace-${NAMES[$i]}.jsonl
    if [ -f "$tf" ]; then
        for _ in $(seq 1 600); do tail -n1 "$tf" | grep -q '^{"dropped"' && break; sleep 0.1; done
        lines=$(grep -c '"op":' "$tf")
        if tail -n1 "$tf" | grep -q '^{"dropped"'; then
            dropped=$(tail -n1 "$tf" | tr -dc 0-9)
        else
            echo "bench-hooks.sh: WARNING: trace $tf has no final line" >&2
            dropped=0
        fi
        reqs=$(( (lines + dropped) / (RUNS + 1) ))
    fi
    RESULTS+=("${NAMES[$i]} $med $reqs $dropped $(( CPU1[$i] - CPU0[$i] ))")
done

# Requests per run, from the traced runs (the same for every row).
REQS=$(printf '%s\n' "${RESULTS[@]}" | awk '$3 != "-" {print $3; exit}')
OFF=$(printf '%s\n' "${RESULTS[@]}" | awk '$1 == "off" {print $2}')
echo
echo "find over $FILES files, timeout=0, median of $RUNS runs, $REQS FUSE requests per run"
echo
HZ=$(getconf CLK_TCK)
OFFCPU=$(printf '%s\n' "${RESULTS[@]}" | awk '$1 == "off" {print $5}')
echo "| hooks | find (s) | wall µs/request | vs off | server CPU µs/request | vs off | trace lines dropped |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for r in "${RESULTS[@]}"; do
    set -- $r
    [ $# -eq 5 ] || continue
    awk -v n="$1" -v t="$2" -v q="$REQS" -v off="$OFF" -v d="$4" -v c="$5" -v oc="$OFFCPU" -v hz="$HZ" -v runs="$RUNS" \
        'BEGIN {cu = c * 1e6 / hz / (q * runs); ou = oc * 1e6 / hz / (q * runs);
                printf "| %s | %.3f | %.2f | %+.1f%% | %.2f | %+.1f%% | %s |\n", n, t, t * 1e6 / q, (t / off - 1) * 100, cu, (cu / ou - 1) * 100, d}'
done
echo
echo "binary: $LAYERFS; $(nproc) CPUs; kernel $(uname -r); $WORK on $(df -T "$WORK" | awk 'NR==2 {print $2}')"
