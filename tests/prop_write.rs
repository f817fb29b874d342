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

use diffkit::prop::run_property;
use diffkit::*;

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
