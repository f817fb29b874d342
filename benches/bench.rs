//! `cargo bench` entry: runs `scripts/bench.sh` (the real benchmark, see benches/README.md)
//! against the layerfs binary cargo just built with the bench (= release) profile.
//!
//! This file is picked up by cargo's bench auto-discovery, so Cargo.toml needs no `[[bench]]`
//! entry; it therefore uses the default libtest harness, which owns the command line. Pass the
//! script's arguments in `LAYERFS_BENCH_ARGS` instead, e.g.
//! `LAYERFS_BENCH_ARGS="--quick --only meta" cargo bench --bench bench`.
//! The test only runs under `cargo bench` (libtest gets `--bench`); `cargo test --all-targets`
//! reports it as a no-op.

use std::path::Path;
use std::process::Command;

#[test]
fn scripts_bench_sh() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("scripts/bench.sh is only run by `cargo bench`");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench.sh");
    let args = std::env::var("LAYERFS_BENCH_ARGS").unwrap_or_default();
    let status = Command::new("bash")
        .arg(&script)
        .arg("--layerfs")
        .arg(env!("CARGO_BIN_EXE_layerfs"))
        .args(args.split_whitespace())
        .status()
        .expect("cannot run bash");
    assert!(status.success(), "scripts/bench.sh failed: {status}");
}
