#!/usr/bin/env bash
# Runs the whole test suite: unit tests, real-mount tests, differential tests against kernel
# overlayfs. Mount tests need /dev/fuse; differential tests need root (kernel overlay mounts).
# With CI or LAYERFS_REQUIRE_MOUNT set, a missing capability fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
export LAYERFS_REQUIRE_MOUNT=${LAYERFS_REQUIRE_MOUNT:-1}
export LAYERFS_REQUIRE_KERNEL_OVERLAY=${LAYERFS_REQUIRE_KERNEL_OVERLAY:-1}
cargo fmt --check || { echo "test.sh: code not formatted: run cargo fmt"; exit 1; }
# FUSE over io_uring (kernel 6.14+) serves the mounts where this kernel has it: the fuse
# module's enable_uring is switched on for the run (root only) and put back afterwards. The
# tests then run a second time through /dev/fuse (LAYERFS_NO_URING), the path of every machine
# without it.
URING_PARAM=/sys/module/fuse/parameters/enable_uring
URING_WAS=
if [ -w "$URING_PARAM" ]; then
    URING_WAS=$(cat "$URING_PARAM")
    trap 'echo "$URING_WAS" > "$URING_PARAM"' EXIT
    echo Y > "$URING_PARAM"
    export LAYERFS_REQUIRE_URING=1
fi
cargo test --profile ci --all-targets -- --test-threads=2 "$@"
if [ -n "$URING_WAS" ]; then
    echo "test.sh: the tests again, through /dev/fuse only (LAYERFS_NO_URING=1)"
    env -u LAYERFS_REQUIRE_URING LAYERFS_NO_URING=1 cargo test --profile ci --tests -- --test-threads=2 "$@"
fi
left=$(grep -E ' fuse(\.[a-z0-9_-]+)? | overlay ' /proc/mounts | grep layerfs-test || true)
if [ -n "$left" ]; then echo "test.sh: mounts left behind:"; echo "$left"; exit 1; fi
