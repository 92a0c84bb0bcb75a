//! Errors of the JetStream source.

use intake_core::BoxError;

/// Why a [`JetStreamSource`](crate::JetStreamSource) (or one of its partitions) stopped
/// for good.
///
/// A lost connection, a restarted broker, a stalled or deleted consumer are not errors:
/// the source reconnects and re-creates its consumers with the
/// [`Reconnect`](intake_core::Reconnect) policy. These are what retrying cannot fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// The stream does not exist on the server.
    #[error(
        "JetStream stream `{stream}` does not exist: create it (with the partition subjects) before reading it"
    )]
    MissingStream {
        /// The stream's name.
        stream: String,
    },
    /// The stream does not hold the partitions as laid out, or keeps its messages in a
    /// way the source cannot resume from.
    #[error("JetStream stream `{stream}` does not match the partition layout: {reason}")]
    LayoutMismatch {
        /// The stream's name.
        stream: String,
        /// What does not match.
        reason: String,
    },
    /// The server is too old for a feature the source's layout uses.
    #[error("nats-server {version} is too old: {feature} needs {required} or later")]
    ServerTooOld {
        /// The server's version, as it reports it.
        version: String,
        /// The oldest version with the feature.
        required: &'static str,
        /// The feature in use.
        feature: &'static str,
    },
    /// The offset a partition was to resume from is not a stream sequence (a number).
    #[error(
        "partition `{partition}` cannot resume from {offset}: the offset of a JetStream partition is a stream sequence, a number"
    )]
    InvalidOffset {
        /// The partition.
        partition: String,
        /// The offset found.
        offset: serde_json::Value,
    },
    /// The pipeline asked for a partition the source does not list.
    #[error("partition `{partition}` is not in the layout ({layout})")]
    UnknownPartition {
        /// The partition asked for.
        partition: String,
        /// The layout's partitions.
        layout: String,
    },
    /// A JetStream request failed in a way retrying will not fix, such as a
    /// permission error; its source is the server's (or client's) error.
    #[error("{what} failed: {source}")]
    Request {
        /// What was asked.
        what: String,
        /// The error.
        #[source]
        source: BoxError,
    },
    /// Every retry the [`Reconnect`](intake_core::Reconnect) policy allows failed.
    #[error("gave up after {attempts} failed attempts; last error: {last_error}")]
    GaveUp {
        /// How many attempts failed in a row.
        attempts: usize,
        /// The last attempt's error, also this error's
        /// [`source`](std::error::Error::source).
        #[source]
        last_error: BoxError,
    },
}
