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
cargo test --profile ci --all-targets -- --test-threads=2 "$@"
left=$(grep -E ' fuse(\.[a-z0-9_-]+)? | overlay ' /proc/mounts | grep layerfs-test || true)
if [ -n "$left" ]; then echo "test.sh: mounts left behind:"; echo "$left"; exit 1; fi
