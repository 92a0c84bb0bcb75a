//! Why a pipeline failed.

use crate::parse::Rejected;
use crate::source::BoxError;
use crate::store::PersistenceError;

/// Why a pipeline failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// One or more sources failed. The others ran to their end (or were stopped, on a
    /// [fail-fast](crate::Pipeline::fail_fast) pipeline), and everything valid that was
    /// sent was committed.
    #[error("{}", list_failures(.0))]
    SourcesFailed(Vec<SourceFailure>),
    /// A reader with [`ErrorPolicy::Fail`](crate::ErrorPolicy::Fail) met bad input.
    #[error("{0}")]
    Rejected(Box<Rejected>),
    /// A sink failed to write (or panicked); the pipeline was shut down, and the sink
    /// received nothing after the failed batch.
    #[error("sink `{name}` of table `{table}` failed: {cause}")]
    SinkFailed {
        /// The sink's name.
        name: String,
        /// The table it wrote.
        table: String,
        /// What went wrong.
        #[source]
        cause: BoxError,
    },
    /// A subscriber's callback panicked; it received no further changes.
    #[error("a subscriber of table `{table}` panicked: {message}")]
    SubscriberPanicked {
        /// The table subscribed to.
        table: String,
        /// The panic's message.
        message: String,
    },
    /// A table's storage could not be opened (the pipeline did not start), or a commit
    /// record could not be written (the pipeline was shut down, and nothing after the
    /// last durable commit was delivered).
    #[error("persistence of table `{table}` failed: {source}")]
    Persistence {
        /// The table.
        table: String,
        /// What went wrong, naming the file involved.
        #[source]
        source: PersistenceError,
    },
    /// The Tokio runtime shut down while the pipeline was running, cancelling its
    /// tasks: commits may not have reached every subscriber.
    #[error("the Tokio runtime shut down while the pipeline was running")]
    RuntimeShutdown,
}

fn list_failures(failures: &[SourceFailure]) -> String {
    let list: Vec<String> = failures.iter().map(ToString::to_string).collect();
    list.join("; ")
}

/// A source that failed: its name and what went wrong.
#[derive(Debug, thiserror::Error)]
#[error("source `{name}` failed: {cause}")]
pub struct SourceFailure {
    name: String,
    #[source]
    cause: BoxError,
}

impl SourceFailure {
    pub(crate) fn new(name: String, cause: BoxError) -> Self {
        SourceFailure { name, cause }
    }

    /// The source's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What went wrong.
    pub fn cause(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.cause
    }
}
