//! The pipeline: registers sources and their tables, runs them, and shuts them down.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{FutureExt, Stream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::change::Offsets;
use crate::driver;
use crate::error::{Error, SourceFailure};
use crate::lifecycle::{Lifecycle, panic_message};
use crate::parse::{Parser, Rejected};
use crate::partition::{Partitioned, PartitionedInput, PartitionedSource, Worker};
use crate::persist::Persistence;
use crate::queue::Queue;
use crate::reader::Reader;
use crate::schema::Schema;
use crate::source::{SendError, Source, SourceContext};
use crate::store::{PersistenceError, SyncPolicy, TableStore};
use crate::table::{Slot, Table, TableShared};

/// Runs sources into tables and keeps the tables' subscribers fed.
///
/// Register sources with [`read`](Self::read), which returns each one's [`Table`] at
/// once so you can subscribe before anything runs; then [`run`](Self::run), or
/// [`run_until`](Self::run_until) a shutdown signal.
///
/// # Examples
///
/// ```
/// use futures::stream;
/// use intake_core::{from_stream, Column, DataType, Pipeline, Reader, Schema};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let schema = Schema::new([
///     Column::new("key", DataType::Int).primary_key(),
///     Column::new("genus", DataType::String),
/// ])?;
/// let messages = stream::iter([
///     r#"{"key": 1, "genus": "otocolobus"}"#,
///     r#"{"key": 2, "genus": "felis"}"#,
///     r#"{"key": 1, "genus": "lynx"}"#,
/// ]);
///
/// let mut pipeline = Pipeline::new();
/// let cats = pipeline.read("cats", from_stream(messages), Reader::json(schema));
/// pipeline.run().await?;
///
/// assert_eq!(cats.len(), 2);
/// assert_eq!(cats.get(&1.into()).unwrap().get("genus").unwrap().as_str(), Some("lynx"));
/// # Ok(())
/// # }
/// ```
#[must_use = "a pipeline does nothing until run"]
pub struct Pipeline {
    lifecycle: Arc<Lifecycle>,
    inputs: Vec<Input>,
    fail_fast: bool,
    shutdown_timeout: Duration,
    resume: Offsets,
    persistence: Option<Persistence>,
    worker: Worker,
}

struct Input {
    name: Arc<str>,
    source: Feed,
    reader: Reader,
    table: Table,
}

/// What fills an input's table.
enum Feed {
    Source(Box<dyn Source>),
    Partitioned(Partitioned),
}

impl Default for Pipeline {
    fn default() -> Self {
        Self::new()
    }
}

impl Pipeline {
    /// Default for [`shutdown_timeout`](Self::shutdown_timeout).
    pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

    /// An empty pipeline.
    pub fn new() -> Self {
        Pipeline {
            lifecycle: Arc::new(Lifecycle::new(Self::DEFAULT_SHUTDOWN_TIMEOUT)),
            inputs: Vec::new(),
            fail_fast: false,
            shutdown_timeout: Self::DEFAULT_SHUTDOWN_TIMEOUT,
            resume: Offsets::new(),
            persistence: None,
            worker: Worker::ONLY,
        }
    }

    /// Keeps every table of this pipeline in a storage directory, so that a restart
    /// continues where the last durable commit left off (Pathway's persistence,
    /// Bytewax's recovery). See `docs/persistence.md`.
    ///
    /// When the pipeline runs, before any source starts, each table is restored from
    /// its subdirectory (named by [`Reader::persistent_id`](crate::Reader::persistent_id),
    /// by default the table's name): its rows, its logical time (commits continue
    /// from there) and its sources' offsets (each source, and each partition, resumes
    /// from the offset of the last durable commit, which takes precedence over
    /// [`resume_from`](Self::resume_from)). Subscribers attached before `run` receive
    /// the restored rows as one [snapshot](crate::ChangeBatch::is_snapshot) batch; sinks
    /// [resume](crate::Sink::resume).
    ///
    /// While it runs, each commit's record (time, changes, offsets) is written, and
    /// synced as the [`SyncPolicy`] says, before any subscriber or sink sees the commit.
    /// The log is compacted with snapshots, so a restart takes time in proportion to
    /// the table, not to how long the service has run.
    ///
    /// `run` fails with [`Error::Persistence`] if a table's storage cannot be opened
    /// (another process holds it, a file is corrupt, the schema changed), naming the
    /// table and the file.
    ///
    /// # Panics
    ///
    /// If a table of the pipeline keeps no rows ([`Reader::keep_rows(false)`](crate::Reader::keep_rows)):
    /// storage could neither restore it nor replay its commits to a sink. Read such a
    /// table in a pipeline of its own, resumed with [`resume_from`](Self::resume_from).
    #[track_caller]
    pub fn persist(mut self, persistence: Persistence) -> Self {
        if let Some(input) = self.inputs.iter().find(|i| !i.reader.retention.keep_rows) {
            refuse_persistence(&input.name);
        }
        self.persistence = Some(persistence);
        self
    }

    /// Resumes every source named in `offsets` from its offset there, as
    /// [`SourceContext::resume_offset`](crate::SourceContext::resume_offset): give it
    /// the [`ChangeBatch::offsets`](crate::ChangeBatch::offsets) of the last batch your
    /// output recorded, and each source (and each partition, by its
    /// `source/partition` name) continues right after what that batch covered.
    ///
    /// An offset set on a source's own reader with
    /// [`Reader::resume_from`](crate::Reader::resume_from) takes precedence, and with
    /// [`persist`](Self::persist) the offsets restored from storage take precedence
    /// over both. Sources not named start from the beginning.
    ///
    /// # Examples
    ///
    /// ```
    /// use intake_core::{Offsets, Pipeline};
    ///
    /// // As recorded with a sink's output by an earlier run:
    /// let recorded = r#"{"trades": {"seq": 1041}}"#;
    /// let offsets: Offsets = serde_json::from_str(recorded)?;
    /// let pipeline = Pipeline::new().resume_from(offsets);
    /// # let _ = pipeline;
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn resume_from(mut self, offsets: Offsets) -> Self {
        self.resume = offsets;
        self
    }

    /// Whether the first source failure shuts the whole pipeline down (default: no,
    /// the other sources keep running).
    pub fn fail_fast(mut self, fail_fast: bool) -> Self {
        self.fail_fast = fail_fast;
        self
    }

    /// How long shutdown may take once it begins. Until this deadline shutdown is
    /// cooperative: sources are asked to stop and may still report offsets, `on_stop`
    /// hooks run, and every commit reaches every subscriber. At the deadline, sources
    /// and `on_stop` hooks still running are dropped, and the tables commit what their
    /// sources had sent. From then on each delivery to a subscriber (and each sink
    /// call) waits at most 100 ms: subscribers that keep reading receive every commit,
    /// and one that does not is disconnected (its stream reports
    /// [`is_cut_off`](crate::ChangeStream::is_cut_off); a sink fails the pipeline).
    /// Default: 5 seconds; `Duration::MAX` means no deadline.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self.lifecycle.set_shutdown_timeout(timeout);
        self
    }

    /// Reads `source` into a new table named `name`, as `reader` says.
    ///
    /// The table exists at once and fills when the pipeline runs.
    ///
    /// # Panics
    ///
    /// If `reader` keeps no rows ([`Reader::keep_rows(false)`](crate::Reader::keep_rows))
    /// and the pipeline has [persistence](Self::persist).
    #[track_caller]
    pub fn read(&mut self, name: impl Into<String>, source: impl Source, reader: Reader) -> Table {
        self.add_input(name.into(), Feed::Source(Box::new(source)), reader)
    }

    /// Reads every partition of `source` assigned to this process (see
    /// [`worker`](Self::worker)) into a new table named `name`, as `reader` says: each
    /// partition's source runs on a task of its own, named `name/partition`, so on a
    /// multi-threaded runtime the partitions are read and parsed in parallel. See
    /// [`PartitionedSource`] for how partitions are listed, built, resumed and failed.
    ///
    /// The table exists at once and fills when the pipeline runs. Partitions resume
    /// from the offsets restored from storage (with [`persist`](Self::persist)), else
    /// from those given to [`resume_from`](Self::resume_from), each from its own under
    /// `name/partition`.
    ///
    /// # Panics
    ///
    /// If `reader` has an offset set with [`Reader::resume_from`]: one offset cannot
    /// resume several partitions; give the batch's offsets to
    /// [`Pipeline::resume_from`](Self::resume_from) instead. As [`read`](Self::read)
    /// for a reader that keeps no rows.
    #[track_caller]
    pub fn read_partitioned(
        &mut self,
        name: impl Into<String>,
        source: impl PartitionedSource,
        reader: Reader,
    ) -> Table {
        assert!(
            reader.resume.is_none(),
            "Reader::resume_from does not apply to a partitioned source: resume its partitions with Pipeline::resume_from"
        );
        let source = Feed::Partitioned(Partitioned {
            source: Box::new(source),
            worker: self.worker,
        });
        self.add_input(name.into(), source, reader)
    }

    /// Makes this process worker `index` of `count` processes reading the same
    /// partitioned sources: of each [partitioned source](Self::read_partitioned)'s
    /// partitions, sorted by name, the one at position `i` is read by worker
    /// `i % count`, so each partition is read by exactly one of the processes when
    /// each runs this pipeline with its own index. Default: worker 0 of 1, which reads
    /// every partition. A worker assigned no partition of a source leaves that table
    /// empty, and it ends at once. Plain sources are read by every worker.
    ///
    /// Applies to partitioned sources registered before and after the call.
    ///
    /// # Panics
    ///
    /// If `count` is zero or `index` is not less than `count`.
    ///
    /// # Examples
    ///
    /// ```
    /// use intake_core::Pipeline;
    ///
    /// // Each of three processes gets its index, for instance from its environment.
    /// let index = 2;
    /// let pipeline = Pipeline::new().worker(index, 3);
    /// # let _ = pipeline;
    /// ```
    #[track_caller]
    pub fn worker(mut self, index: usize, count: usize) -> Self {
        assert!(count > 0, "the worker count must be at least 1");
        assert!(
            index < count,
            "the worker index must be less than the worker count ({index} of {count})"
        );
        self.worker = Worker { index, count };
        for input in &mut self.inputs {
            if let Feed::Partitioned(partitioned) = &mut input.source {
                partitioned.worker = self.worker;
            }
        }
        self
    }

    #[track_caller]
    fn add_input(&mut self, name: String, source: Feed, reader: Reader) -> Table {
        if self.persistence.is_some() && !reader.retention.keep_rows {
            refuse_persistence(&name);
        }
        let name: Arc<str> = Arc::from(name);
        // Expired rows wait at most this long for a commit that happens anyway.
        let expiry_grace = reader.autocommit_duration.min(Duration::from_secs(1));
        let table = Table::new(
            name.clone(),
            reader.schema.clone(),
            reader.subscriber_capacity,
            self.lifecycle.clone(),
            reader.retention,
            expiry_grace,
        );
        self.inputs.push(Input {
            name,
            source,
            reader,
            table: table.clone(),
        });
        table
    }

    /// A stream of every message skipped as bad input by a reader with
    /// [`ErrorPolicy::SkipAndReport`](crate::ErrorPolicy::SkipAndReport), from the
    /// moment of the call. It ends when the pipeline does.
    ///
    /// The stream holds up to `capacity` reports. Reporting never waits for it: while
    /// it is full, further reports are not delivered to it, and
    /// [`RejectedStream::missed`] counts them (each is still counted in the table's
    /// [`stats`](crate::Table::stats) and logged). Read it concurrently with the
    /// pipeline, or give it room for every report you expect.
    ///
    /// # Panics
    ///
    /// If `capacity` is zero or larger than the largest channel Tokio supports
    /// (`usize::MAX >> 3`).
    #[track_caller]
    pub fn rejected(&self, capacity: usize) -> RejectedStream {
        assert!(
            capacity > 0,
            "the capacity of a rejected stream must be at least 1"
        );
        assert!(
            capacity <= MAX_CHANNEL_CAPACITY,
            "the capacity of a rejected stream must be at most {MAX_CHANNEL_CAPACITY}"
        );
        let (receiver, missed) = self.lifecycle.rejected_stream(capacity);
        RejectedStream { receiver, missed }
    }

    /// A handle that shuts the pipeline down from elsewhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.lifecycle.clone())
    }

    /// Runs every source until all have ended, or until shutdown.
    ///
    /// On shutdown (through a [`ShutdownHandle`], a fail-fast source failure, a failing
    /// sink, or bad input under [`ErrorPolicy::Fail`](crate::ErrorPolicy::Fail)) sources
    /// are told to stop; each table commits what it already received, and subscribers
    /// get every commit and then `on_end`, all within the
    /// [shutdown timeout](Self::shutdown_timeout).
    ///
    /// Returns once every table has made its final commit, every callback subscriber has
    /// run `on_end` and every sink has closed.
    ///
    /// The pipeline runs on tasks of its own, so a current-thread runtime works, and
    /// a multi-threaded one spreads sources, commits and subscribers over its workers.
    ///
    /// # Errors
    ///
    /// [`Error::Rejected`] for bad input under a fail policy, else
    /// [`Error::SourcesFailed`] if any source failed, else [`Error::SinkFailed`], else
    /// [`Error::SubscriberPanicked`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future before it completes (as `select!` does when another
    /// branch wins) shuts the pipeline down gracefully in the background, exactly as
    /// [`ShutdownHandle::shutdown`] would: tables make their final commits, subscribers
    /// get them and `on_end`, sinks close, within the shutdown timeout. Nothing waits
    /// for that to finish, so a service that is about to exit should prefer
    /// [`run_until`](Self::run_until), which returns only when it has.
    ///
    /// # Panics
    ///
    /// If called outside a Tokio runtime.
    pub async fn run(mut self) -> Result<(), Error> {
        let inputs = std::mem::take(&mut self.inputs);
        let lifecycle = self.lifecycle.clone();
        let fail_fast = self.fail_fast;
        let resume = std::mem::take(&mut self.resume);
        let persistence = self.persistence.take();
        drop(self);
        let running = tokio::spawn(run_inputs(
            inputs,
            resume,
            persistence,
            lifecycle.clone(),
            fail_fast,
        ));
        let on_drop = ShutdownOnDrop(Some(lifecycle));
        let outcome = running.await;
        on_drop.disarm();
        match outcome {
            Ok(result) => result,
            Err(join_error) if join_error.is_panic() => std::panic::resume_unwind(join_error.into_panic()),
            Err(_) => Err(Error::RuntimeShutdown),
        }
    }

    /// Runs the pipeline until it ends by itself or `signal` completes; then shuts it
    /// down gracefully and returns once that is done. This is the entry point for a
    /// service that stops on Ctrl-C:
    ///
    /// ```no_run
    /// # async fn example(pipeline: intake_core::Pipeline) -> Result<(), intake_core::Error> {
    /// // `tokio::signal` needs Tokio's `signal` feature.
    /// pipeline.run_until(tokio::signal::ctrl_c()).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Any future is a signal; here, a one-shot channel:
    ///
    /// ```
    /// use intake_core::{source_fn, Pipeline, Reader, SourceContext};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), intake_core::Error> {
    /// let endless = source_fn(|ctx: SourceContext| async move {
    ///     ctx.cancelled().await;
    ///     Ok(())
    /// });
    /// let mut pipeline = Pipeline::new();
    /// let table = pipeline.read("lines", endless, Reader::raw());
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// stop.send(()).unwrap();
    /// pipeline.run_until(stopped).await?;
    /// assert!(table.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// The signal's output is
    /// ignored: if `ctrl_c` fails to install its handler, it completes at once with an
    /// error, and the pipeline shuts down at once.
    ///
    /// # Errors
    ///
    /// As [`run`](Self::run); a shutdown caused by `signal` is not an error.
    ///
    /// # Cancel safety
    ///
    /// As [`run`](Self::run).
    ///
    /// # Panics
    ///
    /// If called outside a Tokio runtime.
    pub async fn run_until<F: Future>(self, signal: F) -> Result<(), Error> {
        let shutdown = self.shutdown_handle();
        let run = self.run();
        tokio::pin!(run, signal);
        tokio::select! {
            result = &mut run => return result,
            _ = &mut signal => shutdown.shutdown(),
        }
        run.await
    }
}

/// Refuses a table that keeps no rows in a persistent pipeline.
#[track_caller]
fn refuse_persistence(table: &str) -> ! {
    panic!(
        "table `{table}` keeps no rows (Reader::keep_rows(false)), which persistence cannot restore, nor replay to a sink: read it in a pipeline without Pipeline::persist, and resume its sources with Pipeline::resume_from and the offsets of the last batch your output recorded"
    )
}

/// The largest capacity a Tokio channel accepts.
pub(crate) const MAX_CHANNEL_CAPACITY: usize = usize::MAX >> 3;

/// Shuts the pipeline down when the future of [`Pipeline::run`] is dropped early.
struct ShutdownOnDrop(Option<Arc<Lifecycle>>);

impl ShutdownOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        if let Some(lifecycle) = self.0.take() {
            tracing::info!(
                "the future of Pipeline::run was dropped; shutting the pipeline down in the background"
            );
            lifecycle.shutdown();
        }
    }
}

impl Drop for Pipeline {
    /// A pipeline dropped without running ends its tables and rejected streams, so
    /// their subscribers get `on_end` instead of waiting forever.
    fn drop(&mut self) {
        if self.inputs.is_empty() {
            return;
        }
        for input in &self.inputs {
            input.table.shared().close();
        }
        self.lifecycle.abandon();
    }
}

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.inputs.iter().map(|i| &*i.name).collect();
        f.debug_struct("Pipeline")
            .field("sources", &names)
            .field("fail_fast", &self.fail_fast)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish_non_exhaustive()
    }
}

/// Runs every input: a task per source and one commit driver per table; waits for the
/// sources, then for every tracked task (drivers, subscribers, sinks).
async fn run_inputs(
    inputs: Vec<Input>,
    resume: Offsets,
    persistence: Option<Persistence>,
    lifecycle: Arc<Lifecycle>,
    fail_fast: bool,
) -> Result<(), Error> {
    let sync = persistence.as_ref().map_or_else(SyncPolicy::default, |p| p.sync);
    let mut stored = Offsets::new();
    if let Some(persistence) = &persistence
        && let Err(error) = restore(persistent_tables(&inputs), persistence, &mut stored).await
    {
        // Nothing ran: end the tables, so that subscribers get `on_end` and sinks
        // close, before returning.
        for input in &inputs {
            input.table.shared().close();
        }
        lifecycle.abandon();
        lifecycle.wait_for_tasks().await;
        return Err(error);
    }
    for input in &inputs {
        input.table.shared().set_ready();
    }
    // Partitions resume from what storage restored, else from what the pipeline was given.
    let mut partition_offsets = resume.clone();
    for (source, offset) in stored.iter() {
        partition_offsets.insert(source, offset.clone());
    }
    let mut sources = JoinSet::new();
    for Input {
        name,
        source,
        reader,
        table,
    } in inputs
    {
        let (queue, producer) = Queue::new(
            reader.autocommit_duration,
            reader.max_batch_size,
            reader.channel_capacity,
        );
        let resume_at = resume_offset(&name, &stored, &reader, &resume);
        let ctx = SourceContext::new(
            name.clone(),
            resume_at,
            producer,
            Parser::new(reader.schema.clone(), reader.format),
            reader.error_policy,
            table.shared().clone(),
        );
        match source {
            Feed::Source(source) => sources.spawn(run_source(name, source, ctx, lifecycle.clone())),
            Feed::Partitioned(partitioned) => sources.spawn(partitioned.run(PartitionedInput {
                name,
                holder: ctx,
                reader: reader.clone(),
                table: table.shared().clone(),
                queue: queue.clone(),
                resume: partition_offsets.clone(),
                fail_fast,
            })),
        };
        lifecycle.spawn(driver::drive(
            table.shared().clone(),
            queue,
            lifecycle.clone(),
            sync,
        ));
    }
    while let Some(joined) = sources.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(failure)) => {
                lifecycle.source_failed(failure);
                if fail_fast {
                    lifecycle.shutdown();
                }
            }
            // run_source catches panics, so a join error means the runtime is going away.
            Err(_) => return Err(Error::RuntimeShutdown),
        }
    }
    lifecycle.wait_for_tasks().await;
    lifecycle.outcome()
}

/// Where the source (or partition) `name` resumes: from the offset storage restored,
/// else the one its reader was given, else the one the pipeline was given.
fn resume_offset(
    name: &str,
    stored: &Offsets,
    reader: &Reader,
    resume: &Offsets,
) -> Option<serde_json::Value> {
    stored
        .get(name)
        .or(reader.resume.as_ref())
        .or_else(|| resume.get(name))
        .cloned()
}

/// Each input's persistent id, schema and table. (Sources need not be `Sync`, so
/// restoring does not hold the inputs across its awaits.)
fn persistent_tables(inputs: &[Input]) -> Vec<(String, Schema, Arc<TableShared>)> {
    inputs
        .iter()
        .map(|input| {
            let id = input.reader.persistent_id.as_deref().unwrap_or(&input.name);
            (
                id.to_owned(),
                input.reader.schema.clone(),
                input.table.shared().clone(),
            )
        })
        .collect()
}

/// Opens every table's storage and restores the tables from it, before any source
/// runs, collecting the offsets restored into `stored`.
async fn restore(
    tables: Vec<(String, Schema, Arc<TableShared>)>,
    persistence: &Persistence,
    stored: &mut Offsets,
) -> Result<(), Error> {
    let mut ids: Vec<&str> = Vec::new();
    for (id, schema, table) in &tables {
        let name = table.name().to_string();
        if ids.contains(&id.as_str()) {
            return Err(Error::Persistence {
                table: name,
                source: PersistenceError::InvalidId {
                    id: id.clone(),
                    reason: "two tables of the pipeline use it",
                },
            });
        }
        ids.push(id);
        let (dir, id, schema, sync, compact_after) = (
            persistence.dir.clone(),
            id.clone(),
            schema.clone(),
            persistence.sync,
            persistence.compact_after,
        );
        let opened = tokio::task::spawn_blocking(move || {
            let (mut store, restored) = TableStore::open_into(&dir, &id, &schema, sync, Slot::restored)?;
            store.set_min_snapshot_bytes(compact_after);
            Ok((store, restored))
        })
        .await
        .map_err(|e| PersistenceError::Background(e.to_string()))
        .and_then(|opened| opened);
        let (store, restored) = opened.map_err(|source| Error::Persistence { table: name, source })?;
        for (source, offset) in restored.offsets.iter() {
            stored.insert(source, offset.clone());
        }
        if let Some(time) = restored.time {
            tracing::info!(table = %table.name(), %time, rows = restored.rows.len(), "restored the table from storage");
        }
        table.restore(store, restored);
    }
    Ok(())
}

/// Runs one source to its end, finishes it (so its table can make its final commit),
/// and calls its `on_stop`; all of it bounded by the shutdown deadline.
pub(crate) async fn run_source(
    name: Arc<str>,
    mut source: Box<dyn Source>,
    ctx: SourceContext,
    lifecycle: Arc<Lifecycle>,
) -> Result<(), SourceFailure> {
    if source.reports_offsets() {
        ctx.expect_offsets();
    }
    let outcome = tokio::select! {
        outcome = AssertUnwindSafe(source.run(ctx.clone())).catch_unwind() => match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => match error.downcast_ref::<SendError>() {
                // Stopping because the pipeline is stopping is not a failure of its own;
                // rejected input is reported as such by the pipeline.
                Some(SendError::ShuttingDown | SendError::Rejected(_)) => Ok(()),
                _ => Err(error),
            },
            Err(panic) => Err(format!("panicked: {}", panic_message(panic.as_ref())).into()),
        },
        () = lifecycle.deadline() => {
            tracing::warn!(source = %name, "source did not stop within the shutdown timeout and was dropped");
            Ok(())
        }
    };
    ctx.finish();
    drop(ctx);
    tokio::select! {
        // An `on_stop` that does not wait completes even after the deadline.
        biased;
        stopped = AssertUnwindSafe(source.on_stop()).catch_unwind() => {
            if let Err(panic) = stopped {
                tracing::error!(source = %name, message = %panic_message(panic.as_ref()), "on_stop panicked");
            }
        }
        () = lifecycle.deadline() => {
            tracing::warn!(source = %name, "on_stop did not return within the shutdown timeout and was dropped");
        }
    }
    outcome.map_err(|cause| SourceFailure::new(name.to_string(), cause))
}

/// Shuts a pipeline down; see [`Pipeline::shutdown_handle`].
#[derive(Clone)]
pub struct ShutdownHandle(Arc<Lifecycle>);

impl ShutdownHandle {
    /// Begins shutdown: sources are told to stop, tables commit what they received.
    /// The [shutdown timeout](Pipeline::shutdown_timeout) counts from the first call.
    pub fn shutdown(&self) {
        self.0.shutdown();
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.0.is_shutting_down()
    }
}

impl fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownHandle")
            .field("shutting_down", &self.is_shutting_down())
            .finish()
    }
}

/// The stream returned by [`Pipeline::rejected`]: every message skipped as bad input,
/// with its source, raw bytes and reason.
///
/// # Cancel safety
///
/// Polling it is cancel safe: a report is removed from the stream only when it is
/// returned, so dropping a `next()` future loses nothing.
#[derive(Debug)]
#[must_use = "streams do nothing unless polled"]
pub struct RejectedStream {
    receiver: mpsc::Receiver<Rejected>,
    missed: Arc<AtomicU64>,
}

impl RejectedStream {
    /// How many reports this stream missed because it was full (they were counted in
    /// the tables' stats and logged, but not delivered here).
    pub fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }
}

impl Stream for RejectedStream {
    type Item = Rejected;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Rejected>> {
        self.receiver.poll_recv(cx)
    }
}
