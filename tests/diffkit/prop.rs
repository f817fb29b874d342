//! The property test's operation strategy and runner, shared by `prop_write.rs` and the
//! user-namespace run in `rootless.rs`.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::{NAMES, Op, Stack, available, avoid_known_bugs, run_ops_with};
use crate::common::Scratch;

fn name() -> impl Strategy<Value = &'static str> {
    prop::sample::select(NAMES)
}

/// A name relative to a held directory: `d/x`, `e/f` or `e/h` where it holds `d` or `e`, and
/// `n`, which no fixture has.
fn leaf() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&["x", "f", "h", "n"][..])
}

/// One random operation over [`NAMES`].
pub fn op() -> impl Strategy<Value = Op> {
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
        1 => (name(), prop::sample::select(&[0u32, 1000, 65534][..])).prop_map(|(n, id)| Op::Chown(n, id)),
        1 => name().prop_map(Op::Read),
        1 => name().prop_map(Op::Punch),
        1 => (0u8..3).prop_map(Op::HeldList),
        1 => (0u8..3, prop::sample::select(&[0u16, 5, 40000][..])).prop_map(|(h, l)| Op::HeldTruncate(h, l)),
        1 => (0u8..3, prop::sample::select(&[0o600u16, 0o755, 0o444][..])).prop_map(|(h, m)| Op::HeldChmod(h, m)),
        1 => (0u8..3).prop_map(Op::HeldSync),
        1 => (0u8..3, leaf(), 0u8..4).prop_map(|(h, n, v)| Op::HeldCreate(h, n, v)),
        1 => (0u8..3, leaf()).prop_map(|(h, n)| Op::HeldUnlink(h, n)),
        1 => (0u8..3, leaf(), 0u8..3, leaf()).prop_map(|(a, la, b, lb)| Op::HeldRename(a, la, b, lb)),
        1 => (0u8..3, name()).prop_map(|(h, n)| Op::HeldLink(h, n)),
        1 => (0u8..3, 0u8..3).prop_map(|(h, v)| Op::HeldSetXattr(h, v)),
        1 => (0u8..3).prop_map(Op::HeldXattrs),
        1 => (0u8..3, prop::sample::select(&[0u32, 1000, 65534][..])).prop_map(|(h, id)| Op::HeldChown(h, id)),
        1 => (0u8..3, 0u8..3).prop_map(|(h, v)| Op::HeldUtimes(h, v)),
    ]
}

/// Runs random op sequences on `stack`: `cases` by default (`LAYERFS_PROPTEST_CASES=N` for
/// more), generation stopping after `secs` seconds (`LAYERFS_PROPTEST_SECS`).
pub fn run_property(label: &str, stack: &Stack, extra: &str, cases: u32, secs: u64) {
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
    let scratch = Scratch::new();
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
