//! NATS JetStream for [intake](intake_core): ingest a partitioned stream into tables,
//! publish a table's changes as a changelog, and rebuild replicas from it.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]
