//! Property test: random operation sequences over a small name space on a fixed two-lower
//! fixture (in the default mode, with `passthrough=0` and with `writeback=1`), and on the
//! same fixture with 16 layers between its top and bottom, run on kernel overlayfs and on
//! layerfs (fresh copies and mounts per case, one scratch directory reused). The operations
//! include descriptors held open across later steps. Per step errnos and results, merged
//! trees and canonical uppers must match (see `tests/diffkit/mod.rs`).
//!
//! Cases: 256 (two lowers, default mode), 128 (each other mode) and 200 (18 lowers) by
//! default, `LAYERFS_PROPTEST_CASES=N` for more. Time is bounded: generation stops after
//! `LAYERFS_PROPTEST_SECS` (default 150 s, and 60 s for the others) and shrinking after 120
//! s. Failures are not persisted to a file: pin each shrunk failure in `tests/regressions.rs`.

mod common;
mod diffkit;

use std::time::{Duration, Instant};

use diffkit::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

fn name() -> impl Strategy<Value = &'static str> {
    prop::sample::select(NAMES)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (name(), 0u8..4).prop_map(|(n, v)| Op::Write(n, v)),
        2 => (name(), 0u8..4).prop_map(|(n, v)| Op::Append(n, v)),
        1 => (name(), prop::sample::select(&[0u16, 3, 100][..])).prop_map(|(n, l)| Op::Truncate(n, l)),
        1 => (name(), prop::sample::select(&[0o600u16, 0o755, 0o444, 0o1777][..])).prop_map(|(n, m)| Op::Chmod(n, m)),
        3 => name().prop_map(Op::Mkdir),
        2 => name().prop_map(Op::Rmdir),
        3 => name().prop_map(Op::Unlink),
        3 => (name(), name()).prop_map(|(a, b)| Op::Rename(a, b)),
        1 => (prop::sample::select(&["a", "d", "nowhere", "../a"][..]), name()).prop_map(|(t, n)| Op::Symlink(t, n)),
        2 => (name(), name()).prop_map(|(a, b)| Op::Link(a, b)),
        1 => (name(), 0u8..3).prop_map(|(n, v)| Op::SetXattr(n, v)),
        1 => Just(Op::Remount),
        1 => (name(), name()).prop_map(|(a, b)| Op::Exchange(a, b)),
        1 => (name(), name()).prop_map(|(a, b)| Op::NoReplace(a, b)),
        1 => name().prop_map(Op::RmRf),
        1 => name().prop_map(Op::Mkfifo),
        1 => name().prop_map(Op::RemoveXattr),
        1 => (name(), 0u8..3).prop_map(|(n, v)| Op::Utimes(n, v)),
        1 => name().prop_map(Op::Readdir),
        1 => name().prop_map(Op::Lstat),
        2 => (0u8..3, name(), any::<bool>()).prop_map(|(h, n, w)| Op::Hold(h, n, w)),
        1 => (0u8..3, prop::sample::select(&[0u64, 2, 9, 5000, 70000][..]), 0u8..4).prop_map(|(h, o, v)| Op::HeldWrite(h, o, v)),
        1 => (0u8..3).prop_map(Op::HeldRead),
        1 => (0u8..3).prop_map(Op::HeldStat),
        1 => (0u8..3).prop_map(Op::Release),
    ]
}

#[test]
fn random_op_sequences_match_kernel() {
    run_property("prop_write", &prop_stack(), "", 256, 150);
}

/// The same with every file's data served by the server (`passthrough=0`, as a rootless
/// mount has it): reads and writes through FUSE's page cache, write-only handles writing
/// around it, and held descriptors across copy-ups, renames and truncations.
#[test]
fn random_op_sequences_match_kernel_without_passthrough() {
    run_property("prop_write (passthrough=0)", &prop_stack(), "passthrough=0", 128, 60);
}

/// The same with FUSE's writeback cache (`writeback=1`, which needs `passthrough=0`): writes
/// return once cached, so held descriptors, copy-ups and truncations meet dirty pages the
/// kernel has not sent yet.
#[test]
fn random_op_sequences_match_kernel_with_writeback_cache() {
    run_property("prop_write (writeback=1)", &prop_stack(), "writeback=1,passthrough=0", 128, 60);
}

/// The same on a stack of 18 lowers ([`prop_stack_many`]): the merged name index and the
/// parallel lower-directory opens of many-layer stacks under writes, whiteouts and renames.
#[test]
fn random_op_sequences_match_kernel_on_18_lowers() {
    run_property("prop_write (18 lowers)", &prop_stack_many(), "", 200, 60);
}

/// Runs random op sequences on `stack`: `cases` by default (`LAYERFS_PROPTEST_CASES=N` for
/// more), generation stopping after `secs` seconds (`LAYERFS_PROPTEST_SECS`).
fn run_property(label: &str, stack: &Stack, extra: &str, cases: u32, secs: u64) {
    if !available() {
        return;
    }
    let cases: u32 =
        std::env::var("LAYERFS_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(cases);
    let budget = Duration::from_secs(
        std::env::var("LAYERFS_PROPTEST_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(secs),
    );
    let cfg = Config {
        cases,
        failure_persistence: None,
        max_shrink_time: 120_000,
        max_shrink_iters: 2000,
        ..Config::default()
    };
    let scratch = common::Scratch::new();
    let dir = scratch.dir.path().to_path_buf();
    let start = Instant::now();
    let ran = std::cell::Cell::new(0u32);
    let mut runner = TestRunner::new(cfg);
    let result = runner.run(&prop::collection::vec(op(), 1..=25), |ops| {
        // Once the time budget is spent, remaining cases pass without running (but shrinking
        // of an earlier failure still runs: it is bounded by max_shrink_time).
        if start.elapsed() > budget && ran.get() > 0 {
            return Ok(());
        }
        ran.set(ran.get() + 1);
        run_ops_with(&dir, stack, &ops, avoid_known_bugs(), extra)
            .map_err(|r| TestCaseError::fail(format!("ops {ops:?}\n{r}")))
    });
    eprintln!("{label}: {} cases run in {:.1}s", ran.get(), start.elapsed().as_secs_f64());
    if let Err(e) = result {
        panic!("{e}");
    }
}
