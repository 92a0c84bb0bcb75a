//! NATS JetStream for [intake](intake_core): ingest a partitioned stream into tables,
//! publish a table's changes as a changelog, and rebuild replicas from it.
//!
//! - [`JetStreamSink`] publishes each commit of a table as a per-key changelog (the last
//!   row of each key, tombstones for deletions), exactly once across restarts, and
//!   refuses a second writer.
//! - [`Replica`] is a source that rebuilds a table from such a changelog and keeps
//!   following it.
//!
//! See `docs/distributed.md` for how these fit together across machines.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod changelog;
mod replica;
mod sink;

pub use changelog::key_subject;
pub use replica::{Replica, ReplicaError};
pub use sink::{JetStreamSink, SinkError};
