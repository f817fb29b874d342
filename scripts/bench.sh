#!/usr/bin/env bash
# layerfs benchmark: the same workloads on a plain directory, kernel overlayfs, fuse-overlayfs
# and layerfs (plus any --extra fuse-overlayfs compatible binary), one Markdown table of medians.
#
# usage: scripts/bench.sh [--quick] [--runs N] [--only REGEX] [--work DIR] [--out FILE]
#                         [--layerfs PATH] [--fuse-overlayfs PATH] [--extra NAME=PATH]...
#                         [--no-kernel] [--no-userspace-column] [--no-all-column] [--keep-stacks]
#   --quick          sizes scaled down ~10x (smoke run, a few minutes)
#   --runs N         runs per cell, the median is printed (default 3); the short groups
#                    (deep5 deep50 deep500 readdir: well under a second a cell, where one
#                    unlucky wake-up moves a median), seqread (its cold read follows the
#                    shared disk: 1.4-2.6 s for one file within minutes) and reflink (a
#                    clone copy-up is a tenth of a millisecond: one call on a fresh mount
#                    measured 0.18-0.75 ms on the same binary) get 2N+1
#   --only REGEX     workload groups to run (grep -E on the group name), groups:
#                    meta deep5 deep50 deep500 readdir seqread fio seqwrite syncw copyup reflink
#                    create tar sqlite chown (reflink: the copy-up rows again on a loop-mounted XFS,
#                    reflink=1)
#   --work DIR       stacks, mountpoint and scratch (default /tmp/layerfs-bench); the stacks are
#                    built once per size set and reused by later invocations
#   --out FILE       also write the table (Markdown) to FILE
#   --layerfs PATH   the layerfs binary (default: $CARGO_TARGET_DIR/release/layerfs, else
#                    <repo>/target/release/layerfs)
#   --extra NAME=PATH   another fuse-overlayfs compatible binary as an extra column (repeatable)
#   --no-userspace-column  skip the "layerfs passthrough=0,uring=0" column (file data served
#                    by the server, requests through /dev/fuse: a rootless mount on a machine
#                    whose fuse module does not offer io_uring)
#   --no-all-column  skip the "layerfs passthrough=all" column (lower files opened read-only
#                    passed through too; run for the groups that read lower files: seqread
#                    and fio)
#   --uring on|off|asis  the fuse module's enable_uring during the run (default on: the layerfs
#                    column then serves through io_uring queues; restored afterwards)
# Needs root (kernel overlay mounts, drop_caches, mknod of whiteouts).
# Every "cold" cell is a fresh mount after `sync; echo 3 > /proc/sys/vm/drop_caches` (for every
# column, including the plain directory). Write workloads get a fresh upper dir per mount; the
# create and tar cells get a fresh ext4 (a loop-mounted image) for it.
set -uo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
WORK=/tmp/layerfs-bench
RUNS=3
QUICK=0
ONLY=.
OUT=
LAYERFS=
FOVL=$(command -v fuse-overlayfs || true)
KERNEL=1
EXTRAS=()
USERSPACE_COL=1
ALL_COL=1
URING=on

usage() { sed -n '2,33p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "bench.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case $1 in
        --quick) QUICK=1 ;;
        --runs) RUNS=$2; shift ;;
        --only) ONLY=$2; shift ;;
        --work) WORK=$2; shift ;;
        --out) OUT=$2; shift ;;
        --layerfs) LAYERFS=$2; shift ;;
        --fuse-overlayfs) FOVL=$2; shift ;;
        --extra) EXTRAS+=("$2"); shift ;;
        --no-kernel) KERNEL=0 ;;
        --no-all-column) ALL_COL=0 ;;
        --no-userspace-column) USERSPACE_COL=0 ;;
        --uring) URING=$2; shift ;;
        -h|--help) usage 0 ;;
        *) echo "bench.sh: unknown argument $1" >&2; usage 2 ;;
    esac
    shift
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs wants a positive integer"
if [ -z "$LAYERFS" ]; then
    if [ -n "${CARGO_TARGET_DIR:-}" ] && [ -x "$CARGO_TARGET_DIR/release/layerfs" ]; then
        LAYERFS=$CARGO_TARGET_DIR/release/layerfs
    else
        LAYERFS=$REPO/target/release/layerfs
    fi
fi

# ---------------------------------------------------------------- sizes
if [ "$QUICK" = 1 ]; then
    SIZESET=quick
    META_N=10000 DEEP_N=200 RD_N=2000 BIG_MB=200 CU_MB=100 CREATE_N=2000 SRC_N=3000 SRC_MB=30
    FIO_RT=2 FIO_WSIZE=32m SQL_ROWS=1000 SQL_OPS=40 SYNC_N=128
else
    SIZESET=full
    META_N=100000 DEEP_N=2000 RD_N=20000 BIG_MB=2048 CU_MB=1024 CREATE_N=20000 SRC_N=30000 SRC_MB=300
    FIO_RT=5 FIO_WSIZE=256m SQL_ROWS=4000 SQL_OPS=150 SYNC_N=1024
fi
PARAMS="v1 meta=$META_N deep=$DEEP_N rd=$RD_N big=$BIG_MB cu=$CU_MB src=$SRC_N/$SRC_MB"

# ---------------------------------------------------------------- tool check
[ "$(id -u)" = 0 ] || die "needs root (kernel overlay mounts, drop_caches, whiteout mknod)"
for t in mount umount fusermount3 python3 cc dd find tar fio pgrep awk timeout sort; do
    command -v "$t" >/dev/null || die "missing tool: $t (fio: apt-get install -y fio)"
done
[ -n "$FOVL" ] && [ -x "$FOVL" ] || die "missing fuse-overlayfs (apt-get install -y fuse-overlayfs)"
[ -x "$LAYERFS" ] || die "missing layerfs binary $LAYERFS (cargo build --release, or --layerfs PATH)"
grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true
grep -qw overlay /proc/filesystems || die "kernel overlayfs not available"
[ -w /proc/sys/vm/drop_caches ] || die "cannot write /proc/sys/vm/drop_caches"

# ---------------------------------------------------------------- implementations
IMPLS=(plain)
declare -A KIND BIN XOPT
KIND[plain]=plain
[ "$KERNEL" = 1 ] && { IMPLS+=(kernel); KIND[kernel]=kernel; }
IMPLS+=(fuse-overlayfs layerfs)
KIND[fuse-overlayfs]=fuse; BIN[fuse-overlayfs]=$FOVL
KIND[layerfs]=fuse; BIN[layerfs]=$LAYERFS
# rootless mounts have no passthrough, and no io_uring unless an admin turned it on: the same
# binary serving file data itself, through /dev/fuse
UCOL="layerfs passthrough=0,uring=0"
[ "$USERSPACE_COL" = 1 ] && { IMPLS+=("$UCOL"); KIND[$UCOL]=fuse; BIN[$UCOL]=$LAYERFS; XOPT[$UCOL]=,passthrough=0,uring=0; }
# passthrough=all: lower files opened read-only passed through too (only where lower files are
# read: the other groups would equal the layerfs column)
ACOL="layerfs passthrough=all"
ACOL_GROUPS=" seqread fio "
[ "$ALL_COL" = 1 ] && { IMPLS+=("$ACOL"); KIND[$ACOL]=fuse; BIN[$ACOL]=$LAYERFS; XOPT[$ACOL]=,passthrough=all; }
XNAMES=()
for e in "${EXTRAS[@]}"; do
    n=${e%%=*}; p=${e#*=}
    [ -n "$n" ] && [ "$n" != "$e" ] && [ -x "$p" ] || die "--extra wants NAME=PATH to an executable ($e)"
    [ -z "${KIND[$n]:-}" ] || die "--extra name $n is taken by another column"
    IMPLS+=("$n"); KIND[$n]=fuse; BIN[$n]=$p; XNAMES+=("$n")
done

mkdir -p "$WORK" || die "cannot create $WORK"
WORK=$(cd "$WORK" && pwd)
STACKS=$WORK/stacks-$SIZESET
MNT=$WORK/mnt
UP=$WORK/upper
WK=$WORK/workdir
HELPER=$WORK/helper
ERR=$WORK/last.err
DPID=
MOUNT_OK=0
CUR_KIND=

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

# ---------------------------------------------------------------- cleanup (every mount, always)
cleanup() {
    local dev mp fstype rest
    # deepest first
    grep " $WORK/" /proc/mounts | awk '{print $2, $3}' | sort -r | while read -r mp fstype; do
        case $fstype in
            fuse*) fusermount3 -u "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null ;;
            *) umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null ;;
        esac
    done
    if grep -q " $WORK/" /proc/mounts; then echo "bench.sh: WARNING: mounts left under $WORK" >&2; fi
}
URING_PARAM=/sys/module/fuse/parameters/enable_uring
URING_WAS=$(cat "$URING_PARAM" 2>/dev/null || echo -)
case $URING in
    on|off) [ -w "$URING_PARAM" ] || die "--uring $URING: $URING_PARAM is not writable (kernel without FUSE over io_uring?)"
            [ "$URING" = on ] && echo Y > "$URING_PARAM" || echo N > "$URING_PARAM" ;;
    asis) ;;
    *) die "--uring wants on, off or asis" ;;
esac
restore_uring() { [ "$URING_WAS" = - ] || [ "$URING" = asis ] || echo "$URING_WAS" > "$URING_PARAM"; }
trap 'cleanup; restore_uring' EXIT
trap 'echo "bench.sh: interrupted" >&2; exit 130' INT TERM HUP

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# ---------------------------------------------------------------- stacks (built once)
kernel_flatten() {  # STACKDIR: cp -a of the read-only kernel overlay view -> STACKDIR/plain
    local sd=$1
    mkdir -p "$MNT" "$sd/plain"
    (cd "$sd" && mount -t overlay overlay -o "ro,lowerdir=$(cat lowers)" "$MNT") || die "flatten mount of $sd failed"
    cp -a "$MNT/." "$sd/plain/" || { umount "$MNT"; die "flatten copy of $sd failed"; }
    umount "$MNT" || die "cannot unmount $MNT"
}

# the 5-layer twin of deep50/deep500 (added later: built on its own when missing)
build_deep5() {
    [ -f "$STACKS/deep5/.done" ] && return
    rm -rf "$STACKS/deep5"
    python3 "$HERE/bench/gen.py" deep "$STACKS/deep5" 5 "$DEEP_N" || die "gen deep5 failed"
    kernel_flatten "$STACKS/deep5"
    touch "$STACKS/deep5/.done"
}

# the SQLite stack (added later too): one layer holding a database with a rollback journal
# and one in WAL mode, made by the SQLite test's driver
SQLITE_DRIVER=$REPO/tests/sqlite_work.py
build_sqlite() {
    [ -f "$STACKS/sqlite/.done" ] && [ "$(cat "$STACKS/sqlite/.done")" = "$SQL_ROWS" ] && return
    rm -rf "$STACKS/sqlite"
    mkdir -p "$STACKS/sqlite/l"
    python3 "$SQLITE_DRIVER" init "$STACKS/sqlite/l/j.db" delete "$SQL_ROWS" 7 \
        && python3 "$SQLITE_DRIVER" init "$STACKS/sqlite/l/w.db" wal "$SQL_ROWS" 7 || die "SQLite stack failed"
    echo l > "$STACKS/sqlite/lowers"
    # one layer: its merged view is itself (kernel overlayfs will not mount one lower read-only)
    mkdir -p "$STACKS/sqlite/plain" && cp -a "$STACKS/sqlite/l/." "$STACKS/sqlite/plain/" || die "SQLite stack copy failed"
    echo "$SQL_ROWS" > "$STACKS/sqlite/.done"
}

build_stacks() {
    if [ -f "$STACKS/.done" ] && [ "$(cat "$STACKS/.done")" = "$PARAMS" ]; then
        log "reusing stacks in $STACKS"
        build_deep5
        build_sqlite
        return
    fi
    log "building stacks in $STACKS ($PARAMS)"
    rm -rf "$STACKS"
    mkdir -p "$STACKS"
    local g=$HERE/bench/gen.py
    python3 "$g" meta "$STACKS/meta" "$META_N" || die "gen meta failed"
    python3 "$g" deep "$STACKS/deep50" 50 "$DEEP_N" || die "gen deep50 failed"
    python3 "$g" deep "$STACKS/deep500" 500 "$DEEP_N" || die "gen deep500 failed"
    python3 "$g" rd "$STACKS/rd" "$RD_N" || die "gen rd failed"
    # data stack: l0 (top) a small file, l1 the big files
    mkdir -p "$STACKS/big/l0" "$STACKS/big/l1"
    echo top > "$STACKS/big/l0/README"
    dd if=/dev/urandom of="$STACKS/big/l1/big2g" bs=1M count="$BIG_MB" status=none || die "dd failed"
    dd if=/dev/urandom of="$STACKS/big/l1/big1g" bs=1M count="$CU_MB" status=none || die "dd failed"
    echo "l0:l1" > "$STACKS/big/lowers"
    python3 "$g" src "$STACKS/srctree" "$SRC_N" "$SRC_MB" || die "gen src failed"
    tar -cf "$STACKS/src.tar" -C "$STACKS/srctree" src || die "tar of the source tree failed"
    rm -rf "$STACKS/srctree"
    local s
    for s in meta deep50 deep500 rd big; do kernel_flatten "$STACKS/$s"; done
    build_deep5
    build_sqlite
    echo "$PARAMS" > "$STACKS/.done"
    sync
}

# ---------------------------------------------------------------- mounting
abs_lowers() { local sd=$1 l out=; local IFS=:; for l in $(cat "$sd/lowers"); do out+="${out:+:}$sd/$l"; done; echo "$out"; }

# mount_impl IMPL STACK: sets MNT (the directory to work in), DPID, MOUNT_OK
mount_impl() {
    local impl=$1 sd=$2
    [[ $sd == /* ]] || sd=$STACKS/$2
    CUR_KIND=${KIND[$impl]}
    DPID=
    MOUNT_OK=0
    if [ "$CUR_KIND" = plain ]; then
        MNT=$sd/plain
        MOUNT_OK=1
        return 0
    fi
    MNT=$WORK/mnt
    mkdir -p "$MNT"
    rm -rf "$UP" "$WK"
    mkdir -p "$UP" "$WK"
    if [ "$CUR_KIND" = kernel ]; then
        # relative lower names (cd) keep 500 layers under the 4 KiB mount-option limit
        (cd "$sd" && mount -t overlay overlay -o "lowerdir=$(cat lowers),upperdir=$UP,workdir=$WK" "$MNT") 2>"$ERR" \
            || { log "mount $impl on $2 failed: $(head -c 300 "$ERR")"; return 1; }
    else
        timeout 120 "${BIN[$impl]}" -o "lowerdir=$(abs_lowers "$sd"),upperdir=$UP,workdir=$WK${XOPT[$impl]:-}" "$MNT" >"$ERR" 2>&1 \
            || { log "mount $impl on $2 failed: $(head -c 300 "$ERR")"; return 1; }
        DPID=$(pgrep -n -f -- " $MNT\$" || true)
    fi
    grep -q " $MNT " /proc/mounts || { log "mount $impl on $2: not in /proc/mounts"; return 1; }
    MOUNT_OK=1
}

umount_impl() {
    if [ "$CUR_KIND" = plain ]; then
        rm -rf "$MNT/bench-w"
        return
    fi
    if grep -q " $MNT " /proc/mounts; then
        if [ "$CUR_KIND" = kernel ]; then
            umount "$MNT" || umount -l "$MNT"
        else
            fusermount3 -u "$MNT" || umount -l "$MNT"
        fi
    fi
    local i
    if [ -n "$DPID" ]; then  # let the daemon exit before the next cell
        for i in $(seq 100); do kill -0 "$DPID" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -rf "$UP" "$WK"
    MNT=$WORK/mnt
}

# ---------------------------------------------------------------- results
declare -A RES NOTE UNIT LABEL
ROWS=()
IMPL=

row() { ROWS+=("$1"); UNIT[$1]=$2; LABEL[$1]=$3; }
record() { RES["$1|$IMPL"]+="$2 "; log "  $1 $IMPL: $2"; }  # every value in the log too

# t ROW CMD...: time CMD (external command), record seconds; stdout kept in $WORK/last.out
t() { cell wall "$@"; }
# ti ROW CMD...: run CMD, which times itself: record the first field of its last line
ti() { cell self "$@"; }
cell() {
    local how=$1 r=$2 v t0 t1; shift 2
    if [ "$MOUNT_OK" != 1 ]; then record "$r" FAIL; return 1; fi
    t0=$EPOCHREALTIME
    if timeout -k 5 900 "$@" >"$WORK/last.out" 2>"$ERR"; then
        t1=$EPOCHREALTIME
        if [ "$how" = wall ]; then
            v=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.6f", b-a}')
        else
            v=$(tail -n1 "$WORK/last.out" | awk '{print $1}')
        fi
        if [[ $v =~ ^[0-9.]+$ ]]; then record "$r" "$v"; return 0; fi
    fi
    log "$IMPL: $r failed: $(head -c 300 "$ERR")"
    record "$r" FAIL
    return 1
}

# check ROW EXPECTED: compare the count printed by the last command
check() {
    local got
    got=$(tail -n1 "$WORK/last.out" | awk '{print $1}')
    if [ "$got" != "$2" ]; then
        NOTE["$1|$IMPL"]=1
        log "$IMPL: $1: got $got entries, expected $2"
    fi
}

# ---------------------------------------------------------------- workloads
G_meta() {
    local sd=$STACKS/meta exp; exp=$(cat "$sd/count")
    mount_impl "$IMPL" meta; drop_caches
    t meta_find_cold sh -c 'find "$1" | wc -l' _ "$MNT" && check meta_find_cold "$exp"
    t meta_find_warm sh -c 'find "$1" | wc -l' _ "$MNT" && check meta_find_warm "$exp"
    umount_impl
    mount_impl "$IMPL" meta; drop_caches
    t meta_stat_cold "$HELPER" stat "$sd/list" "$MNT"
    t meta_stat_warm "$HELPER" stat "$sd/list" "$MNT"
    if [ -n "$DPID" ] && [ "$MOUNT_OK" = 1 ]; then
        # after find (first mount) would be a different daemon; this one did stat cold+warm, add a find
        find "$MNT" >/dev/null 2>&1
        record rss "$(awk '/^VmHWM/{printf "%.1f", $2/1024}' "/proc/$DPID/status" 2>/dev/null || echo FAIL)"
    fi
    umount_impl
}

G_deep() {  # $1 = 5 | 50 | 500
    local n=$1 sd=$STACKS/deep$1
    mount_impl "$IMPL" "deep$n"; drop_caches
    t "deep${n}_cold" "$HELPER" stat "$sd/list" "$MNT" && check "deep${n}_cold" "$DEEP_N"
    t "deep${n}_warm" "$HELPER" stat "$sd/list" "$MNT"
    umount_impl
}
G_deep5() { G_deep 5; }
G_deep50() { G_deep 50; }
G_deep500() { G_deep 500; }

G_readdir() {
    local exp; exp=$(cat "$STACKS/rd/count")
    mount_impl "$IMPL" rd; drop_caches
    t readdir_cold "$HELPER" readdir "$MNT/D" && check readdir_cold "$exp"
    t readdir_warm "$HELPER" readdir "$MNT/D" && check readdir_warm "$exp"
    umount_impl
}

G_seqread() {
    mount_impl "$IMPL" big; drop_caches
    t seqread_cold dd if="$MNT/big2g" of=/dev/null bs=1M status=none
    t seqread_warm dd if="$MNT/big2g" of=/dev/null bs=1M status=none
    umount_impl
}

fio_us_per_io() {  # FIELD: terse v3 field 8 = read IOPS, 49 = write IOPS -> microseconds per IO
    awk -F';' -v f="$1" 'NF > 50 && $f > 0 {printf "%.3f", 1e6/$f; ok=1} END{if(!ok) print "FAIL"}' "$WORK/last.out"
}

G_fio() {
    # the lower file (for plain: the copy) in the page cache; the mount's own cache starts empty
    # (fresh mount; the jobs set invalidate=0 so fio does not drop the lower file's cache)
    cat "$STACKS/big/l1/big2g" "$STACKS/big/plain/big2g" >/dev/null
    mount_impl "$IMPL" big
    FIO_FILE=$MNT/big2g FIO_SIZE=${BIG_MB}m FIO_RUNTIME=$FIO_RT \
        t fio_rr_time fio --minimal "$HERE/fio/randread.fio" && record fio_rr "$(fio_us_per_io 8)"
    [ "$MOUNT_OK" = 1 ] && mkdir -p "$MNT/bench-w"
    FIO_FILE=$MNT/bench-w/fio.w FIO_SIZE=$FIO_WSIZE FIO_RUNTIME=$FIO_RT \
        t fio_rw_time fio --minimal "$HERE/fio/randwrite.fio" && record fio_rw "$(fio_us_per_io 49)"
    umount_impl
}

G_seqwrite() {
    mount_impl "$IMPL" big
    [ "$MOUNT_OK" = 1 ] && mkdir -p "$MNT/bench-w"
    # The cell before deleted its 2 GiB (on a disk mounted with discard) or left data unsynced,
    # and the page cache is full of the stacks: the write-back happens now, and every column
    # starts with free memory instead of the first cell of the group reclaiming it (seen as
    # 4-8 s against 1-2 s for the same column).
    drop_caches
    t seqwrite dd if=/dev/zero of="$MNT/bench-w/new" bs=1M count="$BIG_MB" conv=fsync status=none
    umount_impl
}

# copyup_cells STACK SUFFIX: the timed append and chmod of big1g, each on a fresh mount of
# STACK, recorded as copyup_append$SUFFIX and copyup_chmod$SUFFIX. A sync before each: a copy
# left unsynced by the cell before (fuse-overlayfs does not fsync its copies) is written back
# then, not during this cell's fsync.
copyup_cells() {
    mount_impl "$IMPL" "$1"
    sync
    ti "copyup_append$2" "$HELPER" append "$MNT/big1g"
    umount_impl
    mount_impl "$IMPL" "$1"
    sync
    ti "copyup_chmod$2" "$HELPER" chmod "$MNT/big1g" 0600
    [ "$CUR_KIND" = plain ] && chmod 0644 "$MNT/big1g"
    umount_impl
}

G_copyup() {
    cat "$STACKS/big/l1/big1g" "$STACKS/big/plain/big1g" >/dev/null  # source in the page cache
    copyup_cells big ""
    # The same chmod on a fresh mount, with a prober in the same directory: the slowest of its
    # rounds (stat, missing-name lookup, listing, create + remove) while the copy-up runs. Kept
    # apart from the timed chmod above, which the prober's CPU would slow down.
    mount_impl "$IMPL" big
    sync
    if [ "$MOUNT_OK" = 1 ]; then
        local stop=$WORK/probe.stop pid out
        rm -f "$stop"
        "$HELPER" probe "$MNT" big2g "$stop" >"$WORK/probe.out" 2>"$ERR" &
        pid=$!
        sleep 0.3
        chmod 0600 "$MNT/big1g" || log "$IMPL: chmod beside the prober failed"
        sleep 0.1
        touch "$stop"
        if wait "$pid"; then
            read -r out _ <"$WORK/probe.out"
            record copyup_stall "$out"
        else
            log "$IMPL: copyup_stall prober failed: $(head -c 300 "$ERR")"
            record copyup_stall FAIL
        fi
        rm -f "$stop"
        [ "$CUR_KIND" = plain ] && chmod 0644 "$MNT/big1g"
    else
        record copyup_stall FAIL
    fi
    umount_impl
}

# The copy-up rows again where the filesystem can reflink: lower, upper and workdir on one XFS
# (reflink=1) in a sparse image in WORK, loop-mounted while the run lasts (the exit's cleanup
# unmounts it), its lower file written once per size set.
XFS=$WORK/xfs
xfs_ready() {
    grep -q " $XFS " /proc/mounts && return 0
    command -v mkfs.xfs >/dev/null || { log "reflink: no mkfs.xfs (apt-get install -y xfsprogs)"; return 1; }
    local img=$WORK/xfs.img fresh=0
    if [ ! -f "$img.done" ] || [ "$(cat "$img.done")" != "$PARAMS" ]; then
        log "building the XFS image for the reflink rows"
        rm -f "$img" "$img.done"
        truncate -s $(( 2 * CU_MB + 512 ))M "$img" && mkfs.xfs -q -f -m reflink=1 "$img" >"$ERR" 2>&1 \
            || { log "mkfs.xfs failed: $(head -c 300 "$ERR")"; return 1; }
        fresh=1
    fi
    mkdir -p "$XFS" && mount -o loop "$img" "$XFS" || { log "loop mount of $img failed"; return 1; }
    [ "$fresh" = 1 ] || return 0
    mkdir -p "$XFS/stack/l0" "$XFS/stack/plain"
    echo l0 > "$XFS/stack/lowers"
    dd if=/dev/urandom of="$XFS/stack/l0/big1g" bs=1M count="$CU_MB" status=none || return 1
    cp -a --reflink=never "$XFS/stack/l0/." "$XFS/stack/plain/" || return 1
    sync
    echo "$PARAMS" > "$img.done"
}

G_reflink() {
    if ! xfs_ready; then record copyup_append_xfs FAIL; record copyup_chmod_xfs FAIL; return; fi
    local up=$UP wk=$WK
    UP=$XFS/upper WK=$XFS/workdir
    cat "$XFS/stack/l0/big1g" "$XFS/stack/plain/big1g" >/dev/null
    copyup_cells "$XFS/stack" _xfs
    UP=$up WK=$wk
}

# The create and tar cells write tens of thousands of new inodes, each into a fresh ext4 (with
# a journal, as on a container host) in a sparse image in WORK: upper and workdir there, and
# the plain column's directory. In ext4 without a journal (this bench's /tmp) a create passes
# over every inode freed within the last minute (six while its inode-table block is dirty)
# whose block is cached, so a cell on /tmp paid for what the cell before it had deleted: an
# untar through layerfs spent a quarter of the server's CPU in that scan (`recently_deleted`)
# even after `drop_caches`, and the plain untar took 3.0-3.2 s there against 1.3-1.7 s on a
# fresh filesystem.
WFS=$WORK/wfs
fresh_fs() {
    local img=$WORK/wfs.img
    fresh_fs_done
    truncate -s $(( 4 * SRC_MB + 1024 ))M "$img" && mkfs.ext4 -q -F "$img" >"$ERR" 2>&1 \
        || { log "mkfs.ext4 of $img failed: $(head -c 300 "$ERR")"; return 1; }
    mkdir -p "$WFS" && mount -o loop "$img" "$WFS" || { log "loop mount of $img failed"; return 1; }
}
fresh_fs_done() {
    if grep -q " $WFS " /proc/mounts; then umount "$WFS" || umount -l "$WFS"; fi
    rm -f "$WORK/wfs.img"
}

# mount_impl on stack $1 (default big) with the upper on a fresh filesystem (the plain column
# writes into a directory of its own there). The caller declares UP and WK local, set to that
# filesystem's, as G_reflink does for its XFS.
mount_fresh() {
    if ! fresh_fs; then MOUNT_OK=0; return 1; fi
    mount_impl "$IMPL" "${1:-big}" || return 1
    if [ "$CUR_KIND" = plain ]; then MNT=$WFS/plain; mkdir -p "$MNT"; fi
    mkdir -p "$MNT/bench-w"
}

G_create() {
    local UP=$WFS/upper WK=$WFS/workdir
    mount_fresh
    drop_caches
    t create "$HELPER" create "$MNT/bench-w" "$CREATE_N" 100 && check create "$CREATE_N"
    t delete rm -rf "$MNT/bench-w"
    umount_impl
    fresh_fs_done
}

G_tar() {
    local UP=$WFS/upper WK=$WFS/workdir
    mount_fresh
    drop_caches
    t untar tar -xf "$STACKS/src.tar" -C "$MNT/bench-w"
    drop_caches   # (includes writing back what the untar left dirty; not timed)
    t tarout sh -c 'tar -cf - -C "$1" src | wc -c' _ "$MNT/bench-w"
    umount_impl
    fresh_fs_done
}

# chown -R of the deep5 stack's directory, whose files live in its bottom layer: a copy-up of
# each small file, as a `RUN chown -R` in an image build makes. The upper (and the plain
# column's copy of the directory) on a fresh ext4 with a journal, the walk's lookups made
# before the timed command.
G_chown() {
    local UP=$WFS/upper WK=$WFS/workdir
    mount_fresh deep5
    if [ "$MOUNT_OK" = 1 ] && [ "$CUR_KIND" = plain ]; then
        cp -a "$STACKS/deep5/plain/d" "$MNT/d" || MOUNT_OK=0
    fi
    find "$MNT/d" >/dev/null 2>&1
    sync
    t chown chown -R 1000:1000 "$MNT/d"
    umount_impl
    fresh_fs_done
}

# Synchronous writes, which fuse-overlayfs users found several times slower than kernel
# overlayfs (its issue #390, `dd oflag=sync`): a new file written in SYNC_N 64 KiB O_DSYNC
# writes, then its first 8 MiB again in 4 KiB O_DSYNC overwrites, each write waiting for the
# disk. The upper on a fresh ext4 with a journal, as the other write rows.
G_syncw() {
    local UP=$WFS/upper WK=$WFS/workdir
    mount_fresh
    t syncw_new dd if=/dev/zero of="$MNT/bench-w/s" bs=64k count="$SYNC_N" oflag=dsync status=none
    t syncw_over dd if=/dev/zero of="$MNT/bench-w/s" bs=4k count=2048 oflag=dsync conv=notrunc status=none
    umount_impl
    fresh_fs_done
}

# 8 processes writing (4 per database) in transactions that each commit with an fsync or two;
# the databases come from the lower layer (the plain column gets a copy), so the first write
# to each copies it up
G_sqlite() {
    local UP=$WFS/upper WK=$WFS/workdir
    mount_fresh sqlite
    [ "$CUR_KIND" = plain ] && cp -a "$STACKS/sqlite/plain/." "$MNT/"
    t sqlite python3 "$SQLITE_DRIVER" writers "$SQL_OPS" 7 "$SQL_ROWS" "$MNT/j.db" "$MNT/w.db" \
        && check sqlite ok
    umount_impl
    fresh_fs_done
}

row meta_find_cold time "find, ${META_N} files / 5 layers, cold"
row meta_find_warm time "find, ${META_N} files / 5 layers, warm"
row meta_stat_cold time "stat every file, ${META_N} files / 5 layers, cold"
row meta_stat_warm time "stat every file, ${META_N} files / 5 layers, warm"
row rss mib "server peak RSS (VmHWM) after the metadata workload"
row deep5_cold time "stat ${DEEP_N} bottom-layer files, 5 layers, cold"
row deep5_warm time "stat ${DEEP_N} bottom-layer files, 5 layers, warm"
row deep50_cold time "stat ${DEEP_N} bottom-layer files, 50 layers, cold"
row deep50_warm time "stat ${DEEP_N} bottom-layer files, 50 layers, warm"
row deep500_cold time "stat ${DEEP_N} bottom-layer files, 500 layers, cold"
row deep500_warm time "stat ${DEEP_N} bottom-layer files, 500 layers, warm"
row readdir_cold time "readdir, $(( RD_N / 1000 ))k entries / 4 layers + 1.5k whiteouts, cold"
row readdir_warm time "readdir, $(( RD_N / 1000 ))k entries / 4 layers + 1.5k whiteouts, warm"
row seqread_cold time "sequential read ${BIG_MB} MiB lower file, cold"
row seqread_warm time "sequential read ${BIG_MB} MiB lower file, warm"
row seqwrite time "sequential write ${BIG_MB} MiB new file (dd bs=1M conv=fsync)"
row fio_rr usio "fio 4k random read of the ${BIG_MB} MiB lower file (fresh mount, lower in page cache), ${FIO_RT}s"
row fio_rw usio "fio 4k random write, new ${FIO_WSIZE} file, ${FIO_RT}s"
row syncw_new time "sync writes: $(( SYNC_N / 16 )) MiB new file in 64 KiB O_DSYNC writes"
row syncw_over time "sync writes: 8 MiB of it again in 4 KiB O_DSYNC overwrites"
row copyup_append time "copy-up: append 1 byte to a ${CU_MB} MiB lower file"
row copyup_chmod time "copy-up: chmod a ${CU_MB} MiB lower file"
row copyup_stall time "slowest stat/lookup/list/create beside that chmod, same directory"
row copyup_append_xfs time "copy-up on XFS (reflink=1): append 1 byte to a ${CU_MB} MiB lower file"
row copyup_chmod_xfs time "copy-up on XFS (reflink=1): chmod a ${CU_MB} MiB lower file"
row create time "create ${CREATE_N} files of 100 bytes"
row delete time "delete them (rm -rf)"
row untar time "untar ${SRC_N} files / ${SRC_MB} MB into the mount"
row tarout time "tar them back out (cold)"
row sqlite time "SQLite: 8 writers x ${SQL_OPS} transactions on 2 lower databases of ${SQL_ROWS} rows (journal, WAL)"
row chown time "chown -R of the ${DEEP_N} small bottom-layer files of the 5-layer stack (a copy-up each)"

GROUPS_ALL=(meta deep5 deep50 deep500 readdir seqread fio seqwrite syncw copyup reflink create tar sqlite chown)

# ---------------------------------------------------------------- run
cleanup  # stale mounts of an earlier interrupted run
cc -O2 -o "$HELPER" "$HERE/bench/helper.c" || die "cannot compile scripts/bench/helper.c"
build_stacks

START=$EPOCHSECONDS
SEL=()
for g in "${GROUPS_ALL[@]}"; do [[ $g =~ $ONLY ]] && SEL+=("$g"); done
[ ${#SEL[@]} -gt 0 ] || die "--only '$ONLY' selects no workload group (groups: ${GROUPS_ALL[*]})"
NI=${#IMPLS[@]}
SHORT_GROUPS=" deep5 deep50 deep500 readdir seqread seqwrite reflink "
for g in "${SEL[@]}"; do
    n=$RUNS
    [[ $SHORT_GROUPS == *" $g "* ]] && n=$(( 2 * RUNS + 1 ))
    for ((r = 0; r < n; r++)); do
        # A new order each run (a seeded shuffle, the same on every invocation): a column
        # right after another one's run can be slower (seen after kernel overlayfs and after
        # fuse-overlayfs), and a rotation would keep the same neighbour before each column.
        RANDOM=$(( r + 1 ))
        ORDER=("${IMPLS[@]}")
        for ((k = NI - 1; k > 0; k--)); do
            j=$(( RANDOM % (k + 1) ))
            tmp=${ORDER[$k]}; ORDER[$k]=${ORDER[$j]}; ORDER[$j]=$tmp
        done
        for IMPL in "${ORDER[@]}"; do
            [[ $IMPL == "$ACOL" && $ACOL_GROUPS != *" $g "* ]] && continue
            log "$g: run $((r + 1))/$n: $IMPL"
            "G_$g"
        done
    done
done
ELAPSED=$(( EPOCHSECONDS - START ))

# ---------------------------------------------------------------- table
median() {  # values... (FAIL anywhere -> FAIL)
    [ $# -eq 0 ] && { echo -; return; }
    local v; for v in "$@"; do [ "$v" = FAIL ] && { echo FAIL; return; }; done
    printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{if (NR%2) print a[(NR+1)/2]; else printf "%.6f\n", (a[NR/2]+a[NR/2+1])/2}'
}
num() { awk -v x="$1" 'BEGIN{ if (x >= 100) printf "%.0f", x; else if (x >= 10) printf "%.1f", x; else if (x >= 1) printf "%.2f", x; else printf "%.3f", x }'; }
ratio() { [[ $1 =~ ^[0-9.]+$ && $2 =~ ^[0-9.]+$ ]] && awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a/b; else print "-" }' || echo -; }

table() {
    local hdr="| workload | unit |" sep="|---|---|" i r
    for i in "${IMPLS[@]}"; do hdr+=" $i |"; sep+="---:|"; done
    hdr+=" layerfs / fuse-overlayfs |"; sep+="---:|"
    [ "$KERNEL" = 1 ] && { hdr+=" layerfs / kernel |"; sep+="---:|"; }
    [ "$KERNEL" = 1 ] && [ "$USERSPACE_COL" = 1 ] && { hdr+=" passthrough=0,uring=0 / kernel |"; sep+="---:|"; }
    [ "$KERNEL" = 1 ] && [ "$ALL_COL" = 1 ] && { hdr+=" passthrough=all / kernel |"; sep+="---:|"; }
    for i in "${XNAMES[@]}"; do hdr+=" layerfs / $i |"; sep+="---:|"; done
    echo "$hdr"; echo "$sep"
    for r in "${ROWS[@]}"; do
        local any=0
        for i in "${IMPLS[@]}"; do [ -n "${RES["$r|$i"]:-}" ] && any=1; done
        [ $any = 1 ] || continue
        declare -A M=()
        local max=0
        for i in "${IMPLS[@]}"; do
            # shellcheck disable=SC2086
            M[$i]=$(median ${RES["$r|$i"]:-})
            [[ ${M[$i]} =~ ^[0-9.]+$ ]] && max=$(awk -v a="$max" -v b="${M[$i]}" 'BEGIN{print (b>a)?b:a}')
        done
        local unit=${UNIT[$r]} scale=1
        case $unit in
            time) if awk -v m="$max" 'BEGIN{exit !(m < 1)}'; then unit=ms; scale=1000; else unit=s; fi ;;
            usio) unit="µs/IO" ;;
            mib) unit=MiB ;;
        esac
        local line="| ${LABEL[$r]} | $unit |"
        for i in "${IMPLS[@]}"; do
            local v=${M[$i]}
            [[ $v =~ ^[0-9.]+$ ]] && v=$(num "$(awk -v x="$v" -v s="$scale" 'BEGIN{print x*s}')")
            [ -n "${NOTE["$r|$i"]:-}" ] && v+=" (wrong count!)"
            line+=" $v |"
        done
        line+=" $(ratio "${M[layerfs]}" "${M[fuse-overlayfs]}") |"
        [ "$KERNEL" = 1 ] && line+=" $(ratio "${M[layerfs]}" "${M[kernel]}") |"
        [ "$KERNEL" = 1 ] && [ "$USERSPACE_COL" = 1 ] && line+=" $(ratio "${M[$UCOL]}" "${M[kernel]}") |"
        [ "$KERNEL" = 1 ] && [ "$ALL_COL" = 1 ] && line+=" $(ratio "${M[$ACOL]}" "${M[kernel]}") |"
        for i in "${XNAMES[@]}"; do line+=" $(ratio "${M[layerfs]}" "${M[$i]}") |"; done
        echo "$line"
        unset M
    done
    echo
    echo "Medians of $RUNS runs ($(( 2 * RUNS + 1 )) for the ${DEEP_N}-file stat, readdir, sequential read and write and XFS copy-up rows; $SIZESET sizes, $ELAPSED s total); lower is better in every row; ratios > 1 mean layerfs is slower."
    echo "Cold = fresh mount after \`sync; echo 3 > /proc/sys/vm/drop_caches\` (all columns). plain = cp -a of the merged view."
    echo "fio rows: 1e6 / IOPS (psync, bs=4k, buffered). Copy-up rows: fresh upper, source in page cache."
    echo "Sync write, create, delete, untar, tar-out, SQLite and chown rows: each cell on a fresh ext4 (a loop-mounted image, with a journal) holding the upper and workdir, or the plain column's directory."
    local i d5 d500 sc=
    for i in "${IMPLS[@]}"; do
        # shellcheck disable=SC2086
        d5=$(median ${RES["deep5_cold|$i"]:-}) d500=$(median ${RES["deep500_cold|$i"]:-})
        [[ $d5 =~ ^[0-9.]+$ && $d500 =~ ^[0-9.]+$ ]] && sc+="${sc:+, }$i $(ratio "$d500" "$d5")"
    done
    [ -n "$sc" ] && echo "Lookup scaling, 500 layers / 5 layers (cold stat rows): $sc."
    echo
    echo "Machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(awk '/MemTotal/{printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo), kernel $(uname -r), $WORK on $(df -T "$WORK" | awk 'NR==2{print $2}')"
    echo "FUSE over io_uring: the fuse module's enable_uring was $(cat "$URING_PARAM" 2>/dev/null || echo 'absent') during the run (--uring $URING); where it is Y the layerfs column serves through io_uring queues, fuse-overlayfs does not use them"
    echo "Versions: $("$FOVL" --version 2>&1 | grep -m1 -i 'fuse-overlayfs'), $(fio --version), layerfs binary $LAYERFS built $(date -r "$LAYERFS" '+%F %T') (repo HEAD $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'))"
    for i in "${XNAMES[@]}"; do
        echo "Extra column $i: ${BIN[$i]} ($("${BIN[$i]}" --version 2>&1 | head -1 | cut -c1-100))"
    done
}

TABLE=$(table)
echo
echo "$TABLE"
if [ -n "$OUT" ]; then echo "$TABLE" > "$OUT" || die "cannot write $OUT"; fi
