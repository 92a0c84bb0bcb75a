//! Partitioned sources: one source per partition, each on a task of its own, all feeding
//! one table; each partition with its own offset, each assigned to one of several
//! worker processes.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_trait::async_trait;
use futures::FutureExt;
use tokio::task::JoinSet;

use crate::change::Offsets;
use crate::error::SourceFailure;
use crate::lifecycle::{Lifecycle, panic_message};
use crate::parse::Parser;
use crate::pipeline::run_source;
use crate::queue::Queue;
use crate::reader::Reader;
use crate::source::{BoxError, Source, SourceContext};
use crate::table::TableShared;

/// A source made of a fixed set of partitions, read concurrently into one table (Bytewax's
/// `FixedPartitionedSource`): the shards of a feed, the files of a directory, the
/// partitions of a topic.
///
/// Register it with [`Pipeline::read_partitioned`](crate::Pipeline::read_partitioned).
/// When the pipeline runs, it [lists](Self::list_partitions) the partitions, keeps
/// those assigned to this process (see [`Pipeline::worker`](crate::Pipeline::worker)),
/// [builds](Self::build_partition) a [`Source`] for each, and runs every one on a
/// task of its own, exactly like a source given to
/// [`Pipeline::read`](crate::Pipeline::read): on a multi-threaded runtime, partitions
/// read and parse in parallel. Each partition's [`SourceContext`] is named
/// `source/partition`; that is the name its failures are reported under and its
/// [offsets](SourceContext::report_offset) are kept under, in
/// [`ChangeBatch::offsets`](crate::ChangeBatch::offsets) and
/// [`Table::committed_offsets`](crate::Table::committed_offsets). Given back to
/// [`Pipeline::resume_from`](crate::Pipeline::resume_from), each partition resumes from
/// its own offset.
///
/// A partition that fails is reported like a failing source; the other partitions keep
/// running unless the pipeline is [fail-fast](crate::Pipeline::fail_fast). The table
/// ends when every partition's source has ended.
///
/// # Examples
///
/// Three shards of a feed, each resuming from its own sequence number:
///
/// ```
/// use intake_core::{
///     source_fn, BoxError, Column, DataType, PartitionedSource, Pipeline, Reader, Schema,
///     Source, SourceContext,
/// };
///
/// struct Shards;
///
/// #[async_trait::async_trait]
/// impl PartitionedSource for Shards {
///     async fn list_partitions(&mut self) -> Result<Vec<String>, BoxError> {
///         Ok(vec!["east".into(), "north".into(), "west".into()])
///     }
///
///     async fn build_partition(
///         &mut self,
///         partition: &str,
///         resume: Option<&serde_json::Value>,
///     ) -> Result<Box<dyn Source>, BoxError> {
///         let shard = partition.to_owned();
///         // The last sequence number read before a restart; start after it.
///         let first = resume.and_then(|seq| seq.as_u64()).map_or(0, |seq| seq + 1);
///         Ok(Box::new(source_fn(move |ctx: SourceContext| async move {
///             for seq in first..3 {
///                 let id = format!("{shard}-{seq}");
///                 ctx.next_json(serde_json::json!({ "id": id })).await?;
///                 ctx.report_offset(seq.into()).await?;
///             }
///             Ok(())
///         })))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let schema = Schema::new([Column::new("id", DataType::String).primary_key()])?;
/// let mut pipeline = Pipeline::new();
/// let table = pipeline.read_partitioned("readings", Shards, Reader::json(schema));
/// pipeline.run().await?;
///
/// assert_eq!(table.len(), 9);
/// let offsets = table.committed_offsets();
/// assert_eq!(offsets[0], ("readings/east".to_owned(), serde_json::json!(2)));
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait PartitionedSource: Send + 'static {
    /// The name of every partition. Every process reading this source (see
    /// [`Pipeline::worker`](crate::Pipeline::worker)) must list the same set, in any
    /// order: partitions are assigned by their place in the sorted list. A name must
    /// not be empty and must not contain `/`, and it must be stable across restarts:
    /// it keys the partition's offset.
    ///
    /// Called once, when the pipeline starts. If shutdown begins first, the call is
    /// dropped.
    ///
    /// # Errors
    ///
    /// An error (as well as an empty or `/`-containing name, or a name listed twice)
    /// fails the source, reported under the source's name; nothing is read from it.
    async fn list_partitions(&mut self) -> Result<Vec<String>, BoxError>;

    /// The source that reads `partition`, resuming after `resume`: the last offset the
    /// partition [reported](SourceContext::report_offset) in the commits given back to
    /// [`Pipeline::resume_from`](crate::Pipeline::resume_from), or `None` to read it
    /// from its start. The same offset is the built source's
    /// [`SourceContext::resume_offset`], so a [`Source`] that already resumes by
    /// itself can ignore this argument.
    ///
    /// Called once for each partition assigned to this process, one at a time in the
    /// order of their names; each partition starts running as soon as it is built. If
    /// shutdown begins first, the call is dropped.
    ///
    /// # Errors
    ///
    /// An error fails that partition, reported under its name `source/partition`;
    /// the other partitions still run unless the pipeline is
    /// [fail-fast](crate::Pipeline::fail_fast).
    async fn build_partition(
        &mut self,
        partition: &str,
        resume: Option<&serde_json::Value>,
    ) -> Result<Box<dyn Source>, BoxError>;
}

/// Which of several processes reading the same partitioned sources this one is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Worker {
    pub(crate) index: usize,
    pub(crate) count: usize,
}

impl Worker {
    pub(crate) const ONLY: Worker = Worker { index: 0, count: 1 };

    /// Whether the partition at `position` of the sorted list is this worker's.
    fn owns(self, position: usize) -> bool {
        position % self.count == self.index
    }
}

/// A partitioned source registered with a pipeline.
pub(crate) struct Partitioned {
    pub(crate) source: Box<dyn PartitionedSource>,
    pub(crate) worker: Worker,
}

/// What running a partitioned input needs from the pipeline.
pub(crate) struct PartitionedInput {
    pub(crate) name: Arc<str>,
    /// The input's own context: its producer keeps the table's queue open until every
    /// partition has a producer of its own. Nothing is sent through it.
    pub(crate) holder: SourceContext,
    pub(crate) reader: Reader,
    pub(crate) table: Arc<TableShared>,
    pub(crate) queue: Arc<Queue>,
    /// The pipeline-wide resume offsets; a partition's is under `source/partition`.
    pub(crate) resume: Offsets,
    pub(crate) fail_fast: bool,
}

/// Why listing or building partitions failed.
#[derive(Debug, thiserror::Error)]
enum PartitionError {
    #[error("cannot list its partitions: {0}")]
    Listing(#[source] BoxError),
    #[error("listing its partitions panicked: {0}")]
    ListingPanicked(String),
    #[error("partition name {0:?} is invalid: a partition name must not be empty or contain `/`")]
    InvalidName(String),
    #[error("partition `{0}` is listed twice")]
    Duplicate(String),
    #[error("cannot build the partition's source: {0}")]
    Building(#[source] BoxError),
    #[error("building the partition's source panicked: {0}")]
    BuildingPanicked(String),
}

impl Partitioned {
    /// Lists the partitions, builds and runs those of this worker, and waits for them.
    /// A listing failure is returned; each partition's failure is recorded as it
    /// happens (and shuts a fail-fast pipeline down), as the pipeline does for sources.
    pub(crate) async fn run(mut self, input: PartitionedInput) -> Result<(), SourceFailure> {
        let PartitionedInput {
            name,
            holder,
            reader,
            table,
            queue,
            resume,
            fail_fast,
        } = input;
        let lifecycle = table.lifecycle().clone();
        let listed = tokio::select! {
            biased;
            // Nothing listed now could be read anyway.
            () = lifecycle.shutdown_token().cancelled() => return Ok(()),
            listed = AssertUnwindSafe(self.source.list_partitions()).catch_unwind() => listed,
        };
        let fail = |error: PartitionError| SourceFailure::new(name.to_string(), Box::new(error));
        let partitions = match listed {
            Ok(Ok(partitions)) => sorted_checked(partitions).map_err(fail)?,
            Ok(Err(error)) => return Err(fail(PartitionError::Listing(error))),
            Err(panic) => {
                return Err(fail(PartitionError::ListingPanicked(panic_message(
                    panic.as_ref(),
                ))));
            }
        };
        let total = partitions.len();
        let mine: Vec<String> = partitions
            .into_iter()
            .enumerate()
            .filter(|&(position, _)| self.worker.owns(position))
            .map(|(_, partition)| partition)
            .collect();
        if mine.is_empty() {
            tracing::info!(
                source = %name,
                partitions = total,
                worker = self.worker.index,
                workers = self.worker.count,
                "no partition is assigned to this worker; the table ends empty"
            );
            return Ok(());
        }
        tracing::info!(source = %name, partitions = ?mine, of = total, worker = self.worker.index, workers = self.worker.count, "reading partitions");

        let mut running = JoinSet::new();
        for partition in mine {
            let full: Arc<str> = Arc::from(format!("{name}/{partition}"));
            let resume_at = resume.get(&full).cloned();
            let built = tokio::select! {
                biased;
                () = lifecycle.shutdown_token().cancelled() => break,
                built = AssertUnwindSafe(self.source.build_partition(&partition, resume_at.as_ref())).catch_unwind() => built,
            };
            let source = match built {
                Ok(Ok(source)) => source,
                Ok(Err(error)) => {
                    partition_failed(&lifecycle, fail_fast, &full, PartitionError::Building(error));
                    continue;
                }
                Err(panic) => {
                    let message = panic_message(panic.as_ref());
                    partition_failed(
                        &lifecycle,
                        fail_fast,
                        &full,
                        PartitionError::BuildingPanicked(message),
                    );
                    continue;
                }
            };
            let ctx = SourceContext::new(
                full.clone(),
                resume_at,
                queue.add_producer(),
                Parser::new(reader.schema.clone(), reader.format),
                reader.error_policy,
                table.clone(),
            );
            running.spawn(run_source(full, source, ctx, lifecycle.clone()));
        }
        // Every partition has its own producer now: the table ends with the last of them.
        holder.finish();
        drop(holder);
        while let Some(joined) = running.join_next().await {
            // run_source catches panics, so a join error means the runtime is going away,
            // which the pipeline's own task notices.
            if let Ok(Err(failure)) = joined {
                record_failure(&lifecycle, fail_fast, failure);
            }
        }
        Ok(())
    }
}

fn partition_failed(lifecycle: &Lifecycle, fail_fast: bool, partition: &str, error: PartitionError) {
    record_failure(
        lifecycle,
        fail_fast,
        SourceFailure::new(partition.to_owned(), Box::new(error)),
    );
}

/// What the pipeline does with a failed source.
fn record_failure(lifecycle: &Lifecycle, fail_fast: bool, failure: SourceFailure) {
    lifecycle.source_failed(failure);
    if fail_fast {
        lifecycle.shutdown();
    }
}

/// The partition names sorted, or why they cannot be used.
fn sorted_checked(mut partitions: Vec<String>) -> Result<Vec<String>, PartitionError> {
    if let Some(bad) = partitions.iter().find(|p| p.is_empty() || p.contains('/')) {
        return Err(PartitionError::InvalidName(bad.clone()));
    }
    partitions.sort_unstable();
    if let Some(pair) = partitions.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(PartitionError::Duplicate(pair[0].clone()));
    }
    Ok(partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sorted_and_checked() {
        let names = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            sorted_checked(names(&["b", "a", "c"])).unwrap(),
            names(&["a", "b", "c"])
        );
        assert!(
            matches!(sorted_checked(names(&["a", ""])), Err(PartitionError::InvalidName(n)) if n.is_empty())
        );
        assert!(matches!(sorted_checked(names(&["a/b"])), Err(PartitionError::InvalidName(n)) if n == "a/b"));
        assert!(
            matches!(sorted_checked(names(&["b", "a", "b"])), Err(PartitionError::Duplicate(n)) if n == "b")
        );
        assert!(sorted_checked(Vec::new()).unwrap().is_empty());
    }

    #[test]
    fn every_position_has_exactly_one_worker() {
        for count in 1..5 {
            for position in 0..11 {
                let owners = (0..count)
                    .filter(|&index| Worker { index, count }.owns(position))
                    .count();
                assert_eq!(owners, 1, "position {position} of {count} workers");
            }
        }
    }
}
