//! File, directory and fragment sources for [intake], and table sinks that write files.
//!
//! - [`FileSource`]: a file as a stream of messages, one per line, in a [`FileFormat`]
//!   (JSON lines, CSV/TSV with a header typed by the reader's schema, raw lines); static
//!   or followed like `tail -F` through truncation and rotation; resumable from a
//!   reported offset.
//! - [`FragmentSource`]: Ascend's `context` / `list_objects` / `read_bytes` as the
//!   [`FragmentStore`] trait; only new or changed fragments are read, each once per
//!   fingerprint, with a [`FragmentParser`] per fragment. [`DirectoryStore`] lists the
//!   files of a directory matching a glob.
//! - [`FileGlob`]: the files matching a glob as a partitioned source, one `FileSource` a
//!   file, read concurrently into one table, each resuming from its own offset.
//! - [`CsvSink`] and [`JsonLinesSink`]: a table's changes, commit by commit, with `time`
//!   and `diff` columns like Pathway's `pw.io.csv.write`, synced per commit; opened with
//!   `open`, they continue an earlier run's file holding every commit exactly once
//!   across crashes (a `<path>.commits` file records the whole commits).
//! - [`TableFileSink`]: the table itself rather than its changes, like Pathway's
//!   snapshot output: the rows as of the last commit, sorted by key, as JSON lines (in
//!   schema column order) or CSV, the file rewritten atomically after every commit.
//!
//! The guide is `docs/files.md`.
//!
//! # Example
//!
//! ```
//! use intake_core::{Column, DataType, Pipeline, Reader, Schema};
//! use intake_file::FileSource;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("cats.csv");
//! std::fs::write(&path, "key,genus\n1,manul\n2,felis\n")?;
//!
//! let schema = Schema::new([
//!     Column::new("key", DataType::Int).primary_key(),
//!     Column::new("genus", DataType::String),
//! ])?;
//! let mut pipeline = Pipeline::new();
//! let cats = pipeline.read("cats", FileSource::csv(&path), Reader::json(schema));
//! pipeline.run().await?;
//! assert_eq!(cats.len(), 2);
//! # Ok(())
//! # }
//! ```
//!
//! [intake]: https://docs.rs/intake

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod error;
mod file;
mod format;
mod fragment;
mod glob;
mod sink;
mod snapshot_sink;

/// The decoder's entry points for the fuzz targets in `fuzz/`: built for this crate's
/// tests and with `--cfg fuzzing` only.
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzzing;

pub use error::FileError;
pub use file::FileSource;
pub use format::FileFormat;
pub use fragment::{
    DirectoryStore, Fragment, FragmentErrorPolicy, FragmentParser, FragmentSource, FragmentStats,
    FragmentStore, ParseFn,
};
pub use glob::FileGlob;
pub use sink::{CsvSink, JsonLinesSink};
pub use snapshot_sink::TableFileSink;

#[doc = include_str!("../../../docs/files.md")]
#[cfg(doctest)]
pub struct FilesGuide;

#[doc = include_str!("../../../docs/persistence.md")]
#[cfg(doctest)]
pub struct PersistenceGuide;

/// FNV-1a, a stable hash (it is persisted in offsets and fingerprints).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
