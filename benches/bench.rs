//! Cargo entry for the benchmark: `cargo bench` runs `scripts/bench.sh` (see benches/README.md)
//! against the layerfs binary cargo built for this target, passing the arguments after `--`
//! through: `cargo bench --bench bench -- --quick --only meta`.
//!
//! The target has `harness = false` (Cargo.toml). Cargo passes `--bench` when it benchmarks;
//! without it (`cargo test --all-targets` runs bench targets once as tests) this does nothing,
//! so the test suite stays fast and never needs the benchmark's root and disk space.

use std::path::Path;
use std::process::Command;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        eprintln!("benches/bench.rs: not run as a benchmark; `cargo bench -- [bench.sh options]` runs it");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench.sh");
    let status = Command::new("bash")
        .arg(&script)
        .arg("--layerfs")
        .arg(env!("CARGO_BIN_EXE_layerfs"))
        .args(args.iter().filter(|a| *a != "--bench"))
        .status()
        .expect("cannot run bash scripts/bench.sh");
    std::process::exit(status.code().unwrap_or(1));
}
