//! Cargo entry for the benchmark: runs `scripts/bench.sh` (see benches/README.md) against the
//! layerfs binary cargo built for this target, passing the arguments through.
//!
//! Two ways to run it:
//! * with `[[bench]] name = "bench"` / `harness = false` in Cargo.toml (not there yet):
//!   `cargo bench --bench bench -- --quick --only meta` (everything after `--` goes to the script);
//! * as it is now (cargo auto-discovers this file with the libtest harness, which ignores
//!   `#[test]`s under `cargo bench`): `LAYERFS_BENCH_ARGS="--quick" cargo test --release --bench bench`
//!   (`--release`, so the binary under test is the optimised one). Without `LAYERFS_BENCH_ARGS`
//!   the test does nothing, so `cargo test --all-targets` stays fast.
#![cfg_attr(test, allow(dead_code))]

use std::path::Path;
use std::process::{Command, ExitStatus};

fn run(args: impl IntoIterator<Item = String>) -> ExitStatus {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench.sh");
    Command::new("bash")
        .arg(&script)
        .arg("--layerfs")
        .arg(env!("CARGO_BIN_EXE_layerfs"))
        .args(args)
        .status()
        .expect("cannot run bash scripts/bench.sh")
}

/// `harness = false`: cargo passes `--bench`; drop it, pass the rest.
fn main() {
    let status = run(std::env::args().skip(1).filter(|a| a != "--bench"));
    std::process::exit(status.code().unwrap_or(1));
}

#[test]
fn scripts_bench_sh() {
    let Ok(args) = std::env::var("LAYERFS_BENCH_ARGS") else {
        eprintln!("set LAYERFS_BENCH_ARGS (e.g. \"--quick\") to run scripts/bench.sh");
        return;
    };
    let status = run(args.split_whitespace().map(str::to_owned));
    assert!(status.success(), "scripts/bench.sh failed: {status}");
}
