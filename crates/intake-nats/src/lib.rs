//! NATS JetStream for [intake](intake_core): ingest a partitioned stream into tables,
//! publish a table's changes as a changelog, and rebuild replicas from it.
//!
//! - [`JetStreamSource`] reads one stream split into [`Partitions`] by subject, each
//!   partition by exactly one reader (several processes split them with
//!   [`Pipeline::worker`](intake_core::Pipeline::worker)), resuming from the stream
//!   sequence stored with intake's commits and acking only what the table made durable.
//! - [`JetStreamSink`] publishes each commit of a table as a per-key changelog (the last
//!   row of each key, tombstones for deletions), exactly once across restarts, and
//!   refuses a second writer.
//! - [`Replica`] is a source that rebuilds a table from such a changelog and keeps
//!   following it.
//!
//! See `docs/distributed.md` for how these fit together across machines.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod changelog;
mod error;
mod layout;
mod replica;
mod sink;
mod source;

pub use changelog::key_subject;
pub use error::NatsError;
pub use layout::{Partitions, partition_of, partition_subject};
pub use replica::{Replica, ReplicaError};
pub use sink::{JetStreamSink, SinkError};
pub use source::{JetStreamSource, JetStreamStats};

#[doc = include_str!("../../../docs/distributed.md")]
#[cfg(doctest)]
pub struct DistributedGuide;
