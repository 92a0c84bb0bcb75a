//! Sinks: write a table's changes somewhere, commit by commit.

use async_trait::async_trait;

use crate::change::{ChangeBatch, Time};
use crate::source::BoxError;

/// Writes a table's changes to an external system, in the spirit of Bytewax's
/// `write_batch`: attach one with [`Table::sink`](crate::Table::sink).
///
/// The sink is first asked where its output stands ([`resume`](Self::resume)), then
/// receives every commit's [`ChangeBatch`] in order from there (starting with a
/// snapshot batch if it holds nothing and the table already has rows), then `close`
/// once the table is final. Each batch carries the sources'
/// [`offsets`](ChangeBatch::offsets) as of its commit, for a sink that records them. During shutdown it obeys the shutdown deadline like any
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

    /// Prepares the sink to continue output it wrote in an earlier run. Called once,
    /// before the first batch, with the time of the table's last commit (`None` if it
    /// has none yet): after a restart with [persistence](crate::Pipeline::persist),
    /// the commit the table was restored to.
    ///
    /// A sink that keeps its output across runs cuts back anything after
    /// `table_time` (in particular a commit it was writing when the process died, and
    /// commits a table without persistence no longer has), and returns the time of the
    /// last commit its output now holds completely. It then receives every commit
    /// after that one, exactly once: those the table already has, read back from
    /// storage, and then the new ones. So output that is cut back to whole commits
    /// holds every commit exactly once across crashes.
    ///
    /// The default returns `None`: the sink holds nothing and receives the table's
    /// current rows as one [snapshot](ChangeBatch::is_snapshot) batch (if it has any),
    /// then every commit.
    ///
    /// # Errors
    ///
    /// As for [`write_batch`](Self::write_batch). It is also an error, reported as the
    /// sink's failure, to return a time after `table_time`, or one the table cannot
    /// replay from (without persistence, any time but `table_time`; with it, a time
    /// older than the commits its log still keeps).
    async fn resume(&mut self, table_time: Option<Time>) -> Result<Option<Time>, BoxError> {
        let _ = table_time;
        Ok(None)
    }

    /// Called once after the last batch. Flush and release resources here.
    ///
    /// # Errors
    ///
    /// As for [`write_batch`](Self::write_batch).
    async fn close(&mut self) -> Result<(), BoxError> {
        Ok(())
    }
}
