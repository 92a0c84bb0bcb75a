//! Sinks: write a table's changes somewhere, commit by commit.

use async_trait::async_trait;

use crate::change::ChangeBatch;
use crate::source::BoxError;

/// Writes a table's changes to an external system, in the spirit of Bytewax's
/// `write_batch`: attach one with [`Table::sink`](crate::Table::sink).
///
/// The sink receives every commit's [`ChangeBatch`] in order (starting with a snapshot
/// batch if the table already had rows when the sink was attached), then `close` once
/// the table is final. During shutdown it obeys the shutdown deadline like any
/// subscriber (see [`Table::sink`](crate::Table::sink)): a sink that falls behind or
/// hangs is dropped, and the pipeline fails naming it rather than ending as if every
/// commit had been written.
///
/// # Examples
///
/// ```
/// use intake_core::{BoxError, ChangeBatch, Sink};
///
/// /// Prints each commit as `time: +n -m`.
/// struct Summary;
///
/// #[async_trait::async_trait]
/// impl Sink for Summary {
///     async fn write_batch(&mut self, batch: &ChangeBatch) -> Result<(), BoxError> {
///         let added = batch.insertions().count();
///         println!("{}: +{added} -{}", batch.time(), batch.len() - added);
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Sink: Send + 'static {
    /// Writes one commit's changes. Return only once they are durably written: the
    /// next batch is not offered before, and an error fails the pipeline.
    ///
    /// # Errors
    ///
    /// Any error fails the pipeline with [`Error::SinkFailed`](crate::Error::SinkFailed);
    /// the sink receives nothing more.
    async fn write_batch(&mut self, batch: &ChangeBatch) -> Result<(), BoxError>;

    /// Called once after the last batch. Flush and release resources here.
    ///
    /// # Errors
    ///
    /// As for [`write_batch`](Self::write_batch).
    async fn close(&mut self) -> Result<(), BoxError> {
        Ok(())
    }
}
