//! OCI/Docker layer tar tooling: `layerfs unpack`, `diff`, `digest`, `store`.
//!
//! Module map:
//! - [`paths`]: pure rules: entry path sanitising, whiteout classification.
//! - [`digest`]: DiffID/ChainID math, decompression by magic bytes, hashing
//!   adapters.
//! - [`unpack`]: applying layer tars to a new directory (safely: fd-relative,
//!   no symlink following, all-or-nothing via a temporary sibling).
//! - [`export`]: an overlay upper directory to a deterministic OCI layer tar.
//! - [`store`]: a content-addressed layer store laid out like Docker's
//!   layerdb.
//! - [`cli`]: the subcommand front end (`pub fn main(args) -> i32`).
//! - `fsutil` (private): the only `unsafe` code (raw `*at` syscalls).
//!
//! Hard parts, in one place: a layer is untrusted input (see `unpack`); the
//! OCI whiteout rules (a whiteout hides only lower layers, an opaque marker
//! applies before the layer's own entries in its directory); DiffIDs hash the
//! exact uncompressed bytes; `diff` output must be byte-for-byte reproducible.

pub mod cli;
pub mod digest;
pub mod error;
pub mod export;
mod fsutil;
pub mod paths;
pub mod progress;
pub mod store;
pub mod unpack;

pub use digest::{chain_id, chain_ids};
pub use error::{Error, Result};
pub use export::{export, export_to_file, ExportReport};
pub use store::lowerdirs_for;
pub use unpack::{unpack, UnpackOptions, UnpackReport, WhiteoutMode};
