//! NATS JetStream for [intake](intake_core): ingest a partitioned stream into tables,
//! publish a table's changes as a changelog, and rebuild replicas from it.
//!
//! [`JetStreamSource`] reads one stream split into [`Partitions`] by subject, each
//! partition by exactly one reader (several processes split them with
//! [`Pipeline::worker`](intake_core::Pipeline::worker)), resuming from the stream
//! sequence stored with intake's commits and acking only what the table made durable.
//! The guide is `docs/distributed.md`.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod error;
mod layout;
mod source;

pub use error::NatsError;
pub use layout::{Partitions, partition_of, partition_subject};
pub use source::{JetStreamSource, JetStreamStats};
