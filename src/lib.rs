//! layerfs: a userspace union filesystem for container image layers.
//!
//! See README.md for the user-facing story. Module map:
//! - `config`: the fuse-overlayfs compatible command line and `-o` option parsing (pure).
//! - `name`, `whiteout`, `merge`: the union rules as pure functions.
//! - `sys`: the only place with `unsafe` and raw syscalls.
//! - `layer`: layer roots and per-layer probes (fd-relative, never following a symlink).
//! - `fs`: `OverlayFs`, the union filesystem façade (one method per operation).
//! - `fuse`: the thin adapter from fuser's `Filesystem` trait to `OverlayFs`.
//! - `mount`: daemonising, mounting, signal handling.
//! - `logging`: the `log` backend: standard error, then the system log in the background.
//! - `oci`: OCI/Docker layer tar tooling (unpack, diff, digest, store).
//! - `origin`: the `overlay.origin` xattr's format (pure).
//! - `ovr`: the override-stat xattr (`xattr_permissions=`): parsing and formatting (pure).
//! - `trace`, `faults`, `compare`: behaviour testing (operation trace, fault injection, a run
//!   on kernel overlayfs and on layerfs compared).
#![deny(unsafe_op_in_unsafe_fn)]

pub mod acl;
pub mod check;
pub mod cli;
pub mod compare;
pub mod config;
pub mod devloop;
pub mod error;
pub mod faults;
pub mod fs;
pub mod fuse;
pub mod layer;
pub mod logging;
pub mod merge;
pub mod mount;
pub mod name;
pub mod oci;
pub mod origin;
pub mod ovr;
pub mod sys;
pub mod trace;
pub mod uring;
pub mod whiteout;
