//! Live keyed tables, their commits and their subscribers.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::{Context, Poll};

use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};

use crate::change::{Change, ChangeBatch, Offsets, Time};

/// The rows, with a slot per key. Every slot has a stable position during a commit, so
/// a commit looks each key up once and then works by position; readers take a
/// [view](RowMap::view) of the slots and copy rows out of it after releasing the lock,
/// so a snapshot of a large table never holds up a commit.
pub(crate) type Rows = crate::rowmap::Rows<Slot>;
use crate::lifecycle::{Lifecycle, lock, panic_message};
use crate::reader::Retention;
use crate::row::{Key, Row};
use crate::rowmap::{RowMap, RowsView};
use crate::schema::Schema;
use crate::sink::Sink;
use crate::source::BoxError;
use crate::source::Event;
use crate::store::{PersistenceError, Restored, SnapshotRows, TableStore, show_time};
use crate::subscribe::Subscriber;
use crate::telemetry::{SourceCounters, SourceStats, TableCounters};

/// A live, keyed, in-memory table fed by a source.
///
/// `Table` is a handle: clone it freely. Read its current state with
/// [`get`](Self::get) and [`snapshot`](Self::snapshot), and follow its changes with
/// [`changes`](Self::changes) (an async stream) or [`subscribe`](Self::subscribe)
/// (callbacks).
#[derive(Clone)]
pub struct Table {
    shared: Arc<TableShared>,
}

pub(crate) struct TableShared {
    name: Arc<str>,
    schema: Schema,
    subscriber_capacity: usize,
    state: RwLock<TableState>,
    stats: TableCounters,
    /// The counters of the table's sources, in the order they started.
    sources: Mutex<Vec<Arc<SourceCounters>>>,
    lifecycle: Arc<Lifecycle>,
    /// Where the table stands for sinks: restored, durable up to, closed.
    progress: watch::Sender<Progress>,
    /// The table's storage, when the pipeline persists it; released (with its lock)
    /// when the table has closed and its sinks have ended.
    store: Mutex<Option<Arc<Mutex<TableStore>>>>,
    /// Per sink, the time of the last commit it wrote (0: none yet); the log keeps the
    /// commits after the oldest so that a sink can resume from there after a crash.
    sink_positions: Mutex<Vec<Arc<AtomicU64>>>,
    /// The sources' offsets as of the last durable commit, for
    /// [`SourceContext::durable_offset`](crate::SourceContext::durable_offset).
    durable_offsets: watch::Sender<DurableOffsets>,
    /// What the table keeps of its rows.
    retention: Retention,
    /// How long after a row's time to live the table makes a commit of its own to
    /// remove it, when no other commit came first.
    expiry_grace: std::time::Duration,
    /// Which rows leave next under `retention`. Locked only by the commit driver's
    /// task, and only while it holds the state's write lock.
    retained: Mutex<Retained>,
}

/// Where a bounded append table's oldest rows are.
///
/// Rows of an append table leave only through retention (sources cannot delete
/// generated keys), oldest first, so the live rows are the generated keys from
/// `oldest` up to the last one handed out.
#[derive(Debug, Default)]
struct Retained {
    /// The lowest generated key that may still be in the table.
    oldest: u64,
    /// For a time to live: when rows arrived, oldest first. One entry per commit that
    /// appended rows, not per row, and commits closer together than a 1,024th of the
    /// time to live share one, so that it holds about 1,024 entries at most however
    /// often the table commits.
    arrivals: VecDeque<Arrival>,
}

/// Rows that arrived together, for a time to live.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    /// The last generated key among them (they follow the previous arrival's).
    last: u64,
    /// When the last of them arrived: their age counts from here.
    at: tokio::time::Instant,
    /// When the first of them arrived.
    opened: tokio::time::Instant,
}

impl Arrival {
    fn new(last: u64, at: tokio::time::Instant) -> Self {
        Arrival { last, at, opened: at }
    }
}

/// The offsets of a table's last durable commit: stored (and synced) with
/// persistence, handed to every subscriber without.
#[derive(Debug, Clone, Default)]
pub(crate) struct DurableOffsets {
    pub(crate) offsets: Offsets,
    /// The table is final: the offsets will not move again.
    pub(crate) closed: bool,
}

/// Where a table stands, for sinks that resume.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Progress {
    /// The pipeline runs and the table holds what storage restored.
    ready: bool,
    /// The time the table was restored to.
    restored: Option<Time>,
    /// The last commit whose record is in storage.
    durable: Option<Time>,
    /// The last commit applied.
    time: Option<Time>,
    /// The table is final.
    closed: bool,
}

/// What applying a commit did.
pub(crate) struct Applied {
    /// The commit's changes and the subscribers to deliver them to, if it changed
    /// something.
    pub(crate) batch: Option<(ChangeBatch, Vec<SubscriberSlot>)>,
    /// Whether a source's offset moved.
    pub(crate) offsets_moved: bool,
}

/// The largest block of insertions a table keeps between commits (3 MiB of
/// changes): a commit larger than this, such as a restore, frees its own.
const KEPT_INSERTIONS: usize = 1 << 16;

struct TableState {
    rows: Rows,
    /// Number of commits applied so far, changing or not; marks slots touched by the
    /// commit being applied.
    applied: u64,
    /// Slots touched by the commit being applied, with their rows before it.
    touched: Vec<(usize, Option<Row>)>,
    /// The insertions of the commit being applied, before they are moved into its
    /// batch behind the retractions; empty between commits, its block kept for the
    /// next (up to [`KEPT_INSERTIONS`]).
    insertions: Vec<Change>,
    /// Rows appended under generated keys so far.
    generated: u64,
    /// Per source, the last offset reported within a commit.
    offsets: Offsets,
    time: Option<Time>,
    subscribers: Vec<SubscriberSlot>,
    closed: bool,
}

/// Where a table delivers its commits to one subscriber.
#[derive(Clone)]
pub(crate) struct SubscriberSlot {
    sender: mpsc::Sender<ChangeBatch>,
    /// Set when the subscriber is disconnected for not keeping up at the shutdown
    /// deadline, so that its stream can tell.
    cut_off: Arc<AtomicBool>,
}

impl SubscriberSlot {
    fn cut_off(&self, table: &str) {
        tracing::warn!(
            table,
            "a subscriber did not keep up after the shutdown deadline and was disconnected; it misses the commits after its last one"
        );
        self.cut_off.store(true, Ordering::Release);
    }
}

/// Live counters of a table; see [`Table::stats`].
///
/// Like every stats handle of intake ([`SourceStats`], and the sources' own, such as
/// the WebSocket source's `WsStats`), it is cheap to clone, each getter reads the
/// figure as it is now, and it serializes (with serde) to an object of the figures,
/// so it can be served as JSON as it is. The same figures go to the
/// [`metrics`](https://docs.rs/metrics) facade; see `docs/metrics.md`.
#[derive(Clone)]
pub struct TableStats(Arc<TableShared>);

impl TableStats {
    /// Rows and deletes from the table's sources that reached a commit.
    pub fn messages(&self) -> u64 {
        self.0.stats.messages.load(Ordering::Relaxed)
    }

    /// Messages rejected as bad input.
    pub fn rejected(&self) -> u64 {
        self.0.stats.rejected.load(Ordering::Relaxed)
    }

    /// Commits that changed the table.
    pub fn commits(&self) -> u64 {
        self.0.stats.commits.load(Ordering::Relaxed)
    }

    /// Changes (insertions plus retractions) in those commits.
    pub fn changes(&self) -> u64 {
        self.0.stats.changes.load(Ordering::Relaxed)
    }

    /// Rows in the table now.
    pub fn rows(&self) -> u64 {
        self.0.read().rows.len() as u64
    }

    /// Events (messages, offsets, commit marks) that were waiting in the table's queue
    /// when the last commit was taken: near the queue's capacity, sources are being
    /// held back.
    pub fn queue_depth(&self) -> u64 {
        self.0.stats.queue_depth.load(Ordering::Relaxed)
    }

    /// Batches waiting to be taken by the slowest subscriber, after the last commit.
    /// At the reader's [`subscriber_capacity`](crate::Reader::subscriber_capacity),
    /// that subscriber holds up every commit.
    pub fn subscriber_lag(&self) -> u64 {
        self.0.stats.subscriber_lag.load(Ordering::Relaxed)
    }

    /// The last commit's latency: from the first message it holds to its delivery to
    /// the subscribers (its storage included, with persistence). `None` before the
    /// first commit.
    pub fn last_commit_latency(&self) -> Option<std::time::Duration> {
        match self.0.stats.commit_latency_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(std::time::Duration::from_micros(us)),
        }
    }

    /// The counters of each of the table's sources (each partition of a partitioned
    /// source), in the order they started.
    pub fn sources(&self) -> Vec<SourceStats> {
        self.0.sources().into_iter().map(SourceStats).collect()
    }
}

impl fmt::Debug for TableStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableStats")
            .field("table", &self.0.name)
            .field("messages", &self.messages())
            .field("rejected", &self.rejected())
            .field("commits", &self.commits())
            .field("changes", &self.changes())
            .field("rows", &self.rows())
            .field("queue_depth", &self.queue_depth())
            .field("subscriber_lag", &self.subscriber_lag())
            .field("sources", &self.sources())
            .finish()
    }
}

impl serde::Serialize for TableStats {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("TableStats", 10)?;
        s.serialize_field("table", &*self.0.name)?;
        s.serialize_field("messages", &self.messages())?;
        s.serialize_field("rejected", &self.rejected())?;
        s.serialize_field("commits", &self.commits())?;
        s.serialize_field("changes", &self.changes())?;
        s.serialize_field("rows", &self.rows())?;
        s.serialize_field("queue_depth", &self.queue_depth())?;
        s.serialize_field("subscriber_lag", &self.subscriber_lag())?;
        let latency = self.last_commit_latency().map(|d| d.as_secs_f64());
        s.serialize_field("last_commit_latency_seconds", &latency)?;
        s.serialize_field("sources", &self.sources())?;
        s.end()
    }
}

/// The error of [`Table::wait_for`]: the table made its final commit without the
/// condition holding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("table `{table}` ended before the condition held")]
pub struct TableEnded {
    table: String,
}

impl TableEnded {
    pub(crate) fn new(table: &str) -> Self {
        TableEnded {
            table: table.to_owned(),
        }
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }
}

/// A copy of a table's rows at one commit.
#[derive(Debug, Clone)]
pub struct Snapshot {
    schema: Schema,
    time: Option<Time>,
    rows: Vec<(Key, Row)>,
}

impl Snapshot {
    /// The table's schema, for example to write a header.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The time of the last commit included, or `None` before the first.
    pub fn time(&self) -> Option<Time> {
        self.time
    }

    /// The rows, sorted by key.
    pub fn rows(&self) -> &[(Key, Row)] {
        &self.rows
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the table was empty.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

impl Table {
    pub(crate) fn new(
        name: Arc<str>,
        schema: Schema,
        subscriber_capacity: usize,
        lifecycle: Arc<Lifecycle>,
        retention: Retention,
        expiry_grace: std::time::Duration,
    ) -> Self {
        let keyed = !schema.primary_key().is_empty();
        Table {
            shared: Arc::new(TableShared {
                name,
                schema,
                subscriber_capacity,
                state: RwLock::new(TableState {
                    rows: Rows::new(keyed),
                    applied: 0,
                    touched: Vec::new(),
                    insertions: Vec::new(),
                    generated: 0,
                    offsets: Offsets::new(),
                    time: None,
                    subscribers: Vec::new(),
                    closed: false,
                }),
                stats: TableCounters::default(),
                sources: Mutex::new(Vec::new()),
                lifecycle,
                progress: watch::Sender::new(Progress::default()),
                durable_offsets: watch::Sender::new(DurableOffsets::default()),
                store: Mutex::new(None),
                sink_positions: Mutex::new(Vec::new()),
                retention,
                expiry_grace,
                retained: Mutex::new(Retained {
                    oldest: 1,
                    arrivals: VecDeque::new(),
                }),
            }),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<TableShared> {
        &self.shared
    }

    /// The table's name (the name its source was read under).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The table's schema.
    pub fn schema(&self) -> &Schema {
        &self.shared.schema
    }

    /// The row under `key`, if there is one. Always `None` for a table whose reader
    /// keeps no rows ([`Reader::keep_rows(false)`](crate::Reader::keep_rows)), and for
    /// rows that left under a [retention bound](crate::Reader::retain_last).
    pub fn get(&self, key: &Key) -> Option<Row> {
        self.shared.read().rows.get(key).and_then(|slot| slot.row.clone())
    }

    /// The number of rows: at most the [`retain_last`](crate::Reader::retain_last)
    /// bound after every commit, and always 0 for a table that keeps no rows
    /// ([`Reader::keep_rows(false)`](crate::Reader::keep_rows)).
    pub fn len(&self) -> usize {
        self.shared.read().rows.len()
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The time of the last commit, or `None` before the first.
    pub fn time(&self) -> Option<Time> {
        self.shared.read().time
    }

    /// Waits until `condition` holds for the table: it is checked at once, then after
    /// every commit that changes the table, until it returns `true` (instead of polling
    /// [`get`](Self::get) in a loop).
    ///
    /// ```
    /// # use intake_core::{source_fn, Column, DataType, Pipeline, Reader, Schema, SourceContext};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let schema = Schema::new([Column::new("sym", DataType::String).primary_key(), Column::new("p", DataType::Float)])?;
    /// # let feed = source_fn(|ctx: SourceContext| async move {
    /// #     ctx.next_str(r#"{"sym": "AAPL", "p": 189.5}"#).await?;
    /// #     Ok(())
    /// # });
    /// let mut pipeline = Pipeline::new();
    /// let prices = pipeline.read("prices", feed, Reader::json(schema));
    /// let running = tokio::spawn(pipeline.run());
    /// // Serve requests only once the first price is in.
    /// prices.wait_for(|t| t.get(&"AAPL".into()).is_some()).await?;
    /// # running.await??;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`TableEnded`] if the table made its final commit (the pipeline ended, or was
    /// shut down) without the condition holding.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future stops waiting and changes nothing.
    pub async fn wait_for(&self, mut condition: impl FnMut(&Table) -> bool) -> Result<(), TableEnded> {
        let mut progress = self.shared.progress.subscribe();
        loop {
            // Marked seen before checking, so a commit in between wakes the wait.
            let closed = progress.borrow_and_update().closed;
            if condition(self) {
                return Ok(());
            }
            if closed || progress.changed().await.is_err() {
                return Err(TableEnded::new(&self.shared.name));
            }
        }
    }

    /// A copy of every row as of the last commit, sorted by key.
    ///
    /// Commits go on while the rows are copied: the table's lock is held only to take
    /// a view of them (a reference count per chunk of 16 rows), and a commit that
    /// changes a chunk while a snapshot is copying it copies that chunk first. So a
    /// snapshot holds up commits only while it clones one pointer per 16 rows, not
    /// for the time the copy and the sort take.
    pub fn snapshot(&self) -> Snapshot {
        let at = self.shared.read().view();
        let (mut rows, time) = (at.copy_rows(), at.time);
        // Released before sorting: while a view lives, commits copy the chunks they
        // change.
        drop(at);
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Snapshot {
            schema: self.shared.schema.clone(),
            time,
            rows,
        }
    }

    /// Per source, the last offset it [reported](crate::SourceContext::report_offset)
    /// before the last commit, sorted by source name. Every message sent before that
    /// offset is in the table; resuming from it re-reads nothing that was committed.
    ///
    /// This is the table's own position, which runs ahead of what its subscribers and
    /// sinks have handled. A consumer that records how far it got should record the
    /// [`offsets`](crate::ChangeBatch::offsets) of the last batch it handled instead.
    pub fn committed_offsets(&self) -> Vec<(String, serde_json::Value)> {
        let state = self.shared.read();
        state
            .offsets
            .iter()
            .map(|(source, offset)| (source.to_owned(), offset.clone()))
            .collect()
    }

    /// The table's live counters: messages, rejections, commits, changes, rows, queue
    /// depth, subscriber lag, commit latency, and each source's.
    pub fn stats(&self) -> TableStats {
        TableStats(self.shared.clone())
    }

    /// The table's changes as an async stream of [`ChangeBatch`]es, one per commit.
    ///
    /// If the table already has rows, the first batch holds all of them as insertions
    /// at the last commit's time ([`is_snapshot`](crate::ChangeBatch::is_snapshot)), so
    /// folding every batch of the stream always gives the table. A stream attached
    /// before the pipeline runs receives, as that first batch, the rows restored from
    /// storage (with [persistence](crate::Pipeline::persist)). With persistence, no
    /// batch (the snapshot included) shows a commit before it is in storage. The stream
    /// ends after the table's final commit.
    ///
    /// # Backpressure
    ///
    /// Each stream has a queue of [`Reader::subscriber_capacity`](crate::Reader::subscriber_capacity)
    /// batches. When it is full, the table's commits wait for the stream to be read, and
    /// so, through their bounded queue, do its sources. Memory stays bounded; a stream
    /// that is never read stalls the table until it is dropped (or until shutdown's
    /// timeout, after which it is disconnected). Drop streams you no longer read.
    pub fn changes(&self) -> ChangeStream {
        let (sender, receiver) = mpsc::channel(self.shared.subscriber_capacity);
        let cut_off = Arc::new(AtomicBool::new(false));
        let mut state = self.shared.write();
        // The rows are copied into the snapshot batch after the lock is released; the
        // stream yields that batch before anything its queue receives.
        let at = (!state.rows.is_empty()).then(|| state.view());
        if !state.closed {
            state.subscribers.push(SubscriberSlot {
                sender,
                cut_off: cut_off.clone(),
            });
        }
        let progress = *self.shared.progress.borrow();
        let attached_at = progress.ready.then_some(state.time);
        // The snapshot may show a commit whose record is still being written.
        let durable =
            (at.is_some() && self.shared.store().is_some() && progress.durable < state.time).then(|| {
                let mut progress = self.shared.progress.subscribe();
                let time = state.time;
                Pending(Box::pin(async move {
                    let _ = progress.wait_for(|p| p.durable >= time || p.closed).await;
                }))
            });
        drop(state);
        let snapshot = at.and_then(|at| at.snapshot_batch(&self.shared.schema));
        ChangeStream {
            snapshot,
            durable,
            receiver,
            cut_off,
            attached_at,
        }
    }

    /// Calls `subscriber`'s callbacks for every commit of this table, on a task of its
    /// own, like Pathway's `pw.io.subscribe`.
    ///
    /// For each commit: the batch callback, then `on_change` for every retraction and
    /// then every insertion, then `on_time_end`. After the final commit, `on_end`,
    /// exactly once, in every case: the pipeline finished, was shut down or failed, the
    /// subscriber was disconnected for not keeping up after the shutdown deadline, or one of its callbacks
    /// panicked (it then receives no further changes, and the panic is reported by
    /// [`Pipeline::run`](crate::Pipeline::run)). `Pipeline::run` returns only after
    /// every subscriber's `on_end` has returned.
    ///
    /// Callbacks run on a Tokio task: keep them short and non-blocking. A slow
    /// subscriber slows the table (see [`changes`](Self::changes)); it never makes
    /// memory grow.
    ///
    /// # Panics
    ///
    /// If called outside a Tokio runtime.
    #[track_caller]
    pub fn subscribe(&self, subscriber: Subscriber) {
        let changes = self.changes();
        let lifecycle = self.shared.lifecycle.clone();
        let table = self.shared.name.clone();
        self.shared
            .lifecycle
            .spawn(subscriber.run(changes, table, lifecycle));
    }
}

impl Table {
    /// Writes every commit of this table to `sink`, on a task of its own; see [`Sink`].
    ///
    /// Once the pipeline runs (and has restored the table, with
    /// [persistence](crate::Pipeline::persist)), the sink's
    /// [`resume`](Sink::resume) is called with the table's time; the sink then
    /// receives the commits after the one it says it holds (read back from storage if
    /// the table is ahead of it), or the table's rows as a snapshot batch if it holds
    /// nothing, and then every new commit. While a sink is behind, storage keeps the
    /// commits it has not written.
    ///
    /// The sink sees the same batches as a [`changes`](Self::changes) stream, with the
    /// same backpressure. If it fails (or panics), the pipeline shuts down and
    /// [`Pipeline::run`](crate::Pipeline::run) returns
    /// [`Error::SinkFailed`](crate::Error::SinkFailed) naming it.
    ///
    /// A sink obeys the shutdown deadline like a subscriber: one that has not taken a
    /// commit 100 ms after the deadline is disconnected, and a `write_batch` or `close`
    /// still running 100 ms after the deadline (or after it started, if later) is
    /// dropped.
    /// Either way the commits it did not write are lost to it, so the pipeline returns
    /// `Error::SinkFailed` saying so; a sink that keeps up writes every commit.
    ///
    /// # Panics
    ///
    /// If called outside a Tokio runtime.
    #[track_caller]
    pub fn sink(&self, name: impl Into<String>, sink: impl Sink) {
        let name = name.into();
        let changes = self.changes();
        let position = Arc::new(AtomicU64::new(0));
        self.shared.lock_sink_positions().push(position.clone());
        let shared = self.shared.clone();
        self.shared.lifecycle.spawn(async move {
            let lifecycle = shared.lifecycle.clone();
            let table = shared.name.clone();
            let written = std::panic::AssertUnwindSafe(write_to_sink(&shared, sink, changes, &position))
                .catch_unwind()
                .await;
            shared
                .lock_sink_positions()
                .retain(|p| !Arc::ptr_eq(p, &position));
            shared.release_store_if_unused();
            let failure = match written {
                Ok(Ok(())) => return,
                Ok(Err(cause)) => cause,
                Err(panic) => format!("panicked: {}", panic_message(panic.as_ref())).into(),
            };
            lifecycle.sink_failed(&name, &table, failure);
        });
    }
}

/// Feeds a sink: lets it resume, replays the commits it lacks from storage, then
/// writes every commit of `changes`, then closes it.
async fn write_to_sink(
    table: &Arc<TableShared>,
    mut sink: impl Sink,
    mut changes: ChangeStream,
    position: &AtomicU64,
) -> Result<(), BoxError> {
    let lifecycle = &*table.lifecycle;
    let mut progress = table.progress.subscribe();
    let Ok(ready) = progress.wait_for(|p| p.ready || p.closed).await.map(|p| *p) else {
        return Ok(());
    };
    if ready.ready {
        let base = changes.attached_at.unwrap_or(ready.restored);
        let holds = within_grace(lifecycle, sink.resume(base)).await??;
        if holds > base {
            return Err(format!(
                "its resume returned commit {} but the table's last commit is {}: a sink must cut back what the table does not hold",
                show_time(holds),
                show_time(base)
            )
            .into());
        }
        if let Some(holds) = holds {
            // The sink holds the table up to `holds`: what it lacks are the commits
            // after it, never the table's state as a whole. (A stream attached before
            // the pipeline ran receives the restored state as its first batch.)
            if changes.snapshot.take().is_none() {
                let first = changes.receiver.try_recv().ok();
                changes.snapshot = first.filter(|b| !b.is_snapshot());
            }
            if let Some(base) = base
                && holds < base
            {
                for batch in table.replay(holds, base).await? {
                    within_grace(lifecycle, sink.write_batch(&batch)).await??;
                    position.store(batch.time().as_u64(), Ordering::Release);
                }
            }
        }
        position.store(base.map_or(0, Time::as_u64), Ordering::Release);
    }
    while let Some(batch) = changes.next().await {
        within_grace(lifecycle, sink.write_batch(&batch)).await??;
        position.store(batch.time().as_u64(), Ordering::Release);
    }
    within_grace(lifecycle, sink.close()).await??;
    if changes.is_cut_off() {
        return Err(BoxError::from(
            "it did not keep up after the shutdown deadline and was disconnected: the commits after the last one it wrote were not written",
        ));
    }
    Ok(())
}

/// Runs one call of a sink, giving up on it as [`Lifecycle::grace_over`] says.
async fn within_grace<T>(lifecycle: &Lifecycle, call: impl Future<Output = T>) -> Result<T, BoxError> {
    tokio::select! {
        biased;
        done = call => Ok(done),
        () = lifecycle.grace_over() => Err(BoxError::from(
            "it was still writing after the shutdown deadline and was dropped: the commits after the last one it wrote were not written",
        )),
    }
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("name", &self.shared.name)
            .field("schema", &self.shared.schema)
            .field("rows", &self.len())
            .finish_non_exhaustive()
    }
}

/// The stream returned by [`Table::changes`]: one [`ChangeBatch`] per commit, ending
/// after the table's final commit (or when the table disconnects it at the shutdown
/// deadline, which [`is_cut_off`](Self::is_cut_off) tells).
///
/// # Cancel safety
///
/// Polling it is cancel safe: a batch leaves the stream only when it is returned, so a
/// `next()` dropped in a `select!` loses nothing. Dropping the stream itself
/// unsubscribes it, and releases a table that was waiting for room in it.
#[derive(Debug)]
#[must_use = "streams do nothing unless polled"]
pub struct ChangeStream {
    snapshot: Option<ChangeBatch>,
    /// Completes when the commit the snapshot shows is durable.
    durable: Option<Pending>,
    receiver: mpsc::Receiver<ChangeBatch>,
    cut_off: Arc<AtomicBool>,
    /// The table's time when the stream was attached, if the pipeline was running by
    /// then; `None` if attached earlier, when the table's restored state is delivered
    /// to the stream as its first batch.
    attached_at: Option<Option<Time>>,
}

impl ChangeStream {
    /// Whether the table disconnected this stream because it made no room for a commit
    /// within 100 ms at the end of shutdown: after the stream ends, `true` means it missed the commits
    /// after the last one it yielded, `false` that it saw every commit of the table.
    pub fn is_cut_off(&self) -> bool {
        self.cut_off.load(Ordering::Acquire)
    }
}

/// A wait a stream must finish before it yields its snapshot.
struct Pending(Pin<Box<dyn Future<Output = ()> + Send + Sync>>);

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pending")
    }
}

impl Stream for ChangeStream {
    type Item = ChangeBatch;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ChangeBatch>> {
        if self.snapshot.is_some()
            && let Some(durable) = self.durable.as_mut()
        {
            std::task::ready!(durable.0.as_mut().poll(cx));
            self.durable = None;
        }
        if let Some(snapshot) = self.snapshot.take() {
            return Poll::Ready(Some(snapshot));
        }
        self.receiver.poll_recv(cx)
    }
}

/// A key's row. Between commits `row` is always `Some`; while a commit is applied, a
/// key it deleted (or inserted and deleted) holds `None` until the commit ends.
#[derive(Clone)]
pub(crate) struct Slot {
    row: Option<Row>,
    /// The commit that last touched this slot.
    touched_in: u64,
}

impl Slot {
    /// The slot of a row restored from storage.
    pub(crate) fn restored(row: Row) -> Slot {
        Slot {
            row: Some(row),
            touched_in: 0,
        }
    }
}

impl TableState {
    /// The rows as of the last commit, to be read after the lock is released: taking
    /// it costs a reference count per chunk of rows, whatever the table's size.
    fn view(&self) -> RowsAt {
        RowsAt {
            rows: self.rows.view(),
            time: self.time,
            offsets: self.offsets.clone(),
        }
    }

    /// Sets the row under `key` (`None` deletes it) as part of the current commit,
    /// remembering what it was before the commit the first time the key is touched.
    fn set(&mut self, key: Key, row: Option<Row>) {
        let applied = self.applied;
        let index = match (self.rows.get_index_of(&key), &row) {
            (Some(index), _) => index,
            // Deleting a key that is not there changes nothing.
            (None, None) => return,
            (None, Some(_)) => {
                let empty = Slot {
                    row: None,
                    touched_in: 0,
                };
                // Only a primary key in an append table cannot be held, and no event
                // of an append table carries one.
                let Some(index) = self.rows.insert_new(key, empty) else {
                    return;
                };
                index
            }
        };
        let Some(slot) = self.rows.get_index_mut(index) else {
            return;
        };
        if slot.touched_in == applied {
            slot.row = row;
        } else {
            slot.touched_in = applied;
            let before = std::mem::replace(&mut slot.row, row);
            self.touched.push((index, before));
        }
    }
}

/// A table's rows at one commit, taken under the lock by [`TableState::view`] and read
/// without it.
pub(crate) struct RowsAt {
    rows: RowsView<Slot>,
    time: Option<Time>,
    offsets: Offsets,
}

impl RowsAt {
    /// The rows; between commits every slot holds one.
    fn rows(&self) -> impl Iterator<Item = (Key, &Row)> {
        self.rows
            .iter()
            .filter_map(|(key, slot)| slot.row.as_ref().map(|row| (key, row)))
    }

    fn copy_rows(&self) -> Vec<(Key, Row)> {
        let mut rows = Vec::with_capacity(self.rows.len());
        rows.extend(self.rows().map(|(key, row)| (key, row.clone())));
        rows
    }

    /// The rows as one snapshot batch, or `None` if there are none.
    fn snapshot_batch(&self, schema: &Schema) -> Option<ChangeBatch> {
        if self.rows.len() == 0 {
            return None;
        }
        let changes = self
            .rows()
            .map(|(key, row)| Change {
                key,
                row: row.clone(),
                is_addition: true,
            })
            .collect();
        // A table with rows has had a commit.
        let time = self.time.unwrap_or(Time::new(0));
        Some(ChangeBatch::snapshot(
            schema.clone(),
            time,
            changes,
            self.offsets.clone(),
        ))
    }
}

impl SnapshotRows for RowsAt {
    fn count(&self) -> usize {
        self.rows.len()
    }

    fn rows(&self) -> Box<dyn Iterator<Item = (Key, &Row)> + '_> {
        Box::new(RowsAt::rows(self))
    }
}

impl TableState {
    /// Removes the row under generated key `id` as part of the current commit;
    /// whether there was one.
    fn remove_generated(&mut self, id: u64) -> bool {
        let key = Key::generated(id);
        let present = self.rows.get_index_of(&key).is_some();
        if present {
            self.set(key, None);
        }
        present
    }
}

impl TableShared {
    fn read(&self) -> RwLockReadGuard<'_, TableState> {
        // A panic while holding the lock cannot leave the map half-updated in a way
        // readers could observe as torn rows, so a poisoned lock is still usable.
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, TableState> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub(crate) fn counters(&self) -> &TableCounters {
        &self.stats
    }

    /// The counters of a source of this table, made when it first starts.
    pub(crate) fn source_counters(&self, source: &Arc<str>) -> Arc<SourceCounters> {
        let mut sources = lock(&self.sources);
        if let Some(known) = sources.iter().find(|c| c.name() == source) {
            return known.clone();
        }
        let counters = Arc::new(SourceCounters::new(self.name.clone(), source.clone()));
        sources.push(counters.clone());
        counters
    }

    pub(crate) fn sources(&self) -> Vec<Arc<SourceCounters>> {
        lock(&self.sources).clone()
    }

    /// Batches waiting for the slowest subscriber now.
    pub(crate) fn subscriber_lag(&self) -> u64 {
        let state = self.read();
        state
            .subscribers
            .iter()
            .map(|s| s.sender.max_capacity() - s.sender.capacity())
            .max()
            .unwrap_or(0) as u64
    }

    pub(crate) fn len(&self) -> usize {
        self.read().rows.len()
    }

    pub(crate) fn lifecycle(&self) -> &Arc<Lifecycle> {
        &self.lifecycle
    }

    /// Applies a commit's events to the rows, consolidating them per key. Returns the
    /// commit's changes and the subscribers to deliver them to, or `None` if it changed
    /// nothing.
    ///
    /// With [retention](crate::Reader::retain_last), the commit also removes the rows
    /// its bounds push out (an empty `events` makes a commit of nothing else); with
    /// [`keep_rows(false)`](crate::Reader::keep_rows), appended rows become insertions
    /// without entering the table.
    pub(crate) fn apply(&self, events: &mut Vec<Event>) -> Applied {
        let mut guard = self.write();
        let state = &mut *guard;
        state.applied += 1;
        let mut messages = 0;
        let mut offsets_moved = false;
        let keep_rows = self.retention.keep_rows;
        let generated_before = state.generated;
        // Rows of a table that keeps none: they go straight to the batch.
        let mut passed = Vec::new();
        for event in events.drain(..) {
            match event {
                Event::Upsert(key, row) => state.set(key, Some(row)),
                Event::Append(row) => {
                    state.generated += 1;
                    let key = Key::generated(state.generated);
                    match keep_rows {
                        true => state.set(key, Some(row)),
                        false => passed.push(Change {
                            key,
                            row,
                            is_addition: true,
                        }),
                    }
                }
                Event::Delete(key) => state.set(key, None),
                Event::Commit => continue,
                Event::Offset(source, offset) => {
                    offsets_moved |= state.offsets.get(&source) != Some(&offset);
                    state.offsets.insert(source, offset);
                    continue;
                }
            }
            messages += 1;
        }
        self.stats.messages.fetch_add(messages, Ordering::Relaxed);
        if self.retention.is_bounded() {
            self.retire(state, generated_before);
        }
        // One block for the batch: every touched key makes at most a retraction and an
        // insertion, and the insertions are moved in behind the retractions without
        // growing it (a block grown by doubling is copied a dozen times per commit).
        let mut retractions = Vec::with_capacity(2 * state.touched.len() + passed.len());
        let mut insertions = match passed.is_empty() {
            true => std::mem::take(&mut state.insertions),
            false => passed,
        };
        let mut emptied = Vec::new();
        for (index, before) in state.touched.drain(..) {
            let Some((key, slot)) = state.rows.get_index(index) else {
                continue;
            };
            if slot.row.is_none() {
                emptied.push(index);
            }
            let retraction = |key, row| Change {
                key,
                row,
                is_addition: false,
            };
            let insertion = |key, row| Change {
                key,
                row,
                is_addition: true,
            };
            match (before, &slot.row) {
                (Some(old), Some(new)) if old == *new => {}
                (Some(old), Some(new)) => {
                    retractions.push(retraction(key.clone(), old));
                    insertions.push(insertion(key, new.clone()));
                }
                (Some(old), None) => retractions.push(retraction(key, old)),
                (None, Some(new)) => insertions.push(insertion(key, new.clone())),
                (None, None) => {}
            }
        }
        // Removing from the highest position down keeps the lower positions valid:
        // a keyed table's removal moves only the last slot, which is removed first if
        // emptied.
        emptied.sort_unstable_by(|a, b| b.cmp(a));
        for index in emptied {
            state.rows.remove_index(index);
        }
        if retractions.is_empty() && insertions.is_empty() {
            state.insertions = insertions;
            return Applied {
                batch: None,
                offsets_moved,
            };
        }
        let time = Time::next(state.time);
        state.time = Some(time);
        retractions.append(&mut insertions);
        if retractions.len() < retractions.capacity() / 2 {
            // Mostly new keys: the batch lives as long as its slowest subscriber.
            retractions.shrink_to_fit();
        }
        if insertions.capacity() <= KEPT_INSERTIONS {
            state.insertions = insertions;
        }
        let batch = ChangeBatch::new(self.schema.clone(), time, retractions, state.offsets.clone());
        let subscribers = state.subscribers.clone();
        drop(guard);
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .changes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.progress.send_modify(|p| p.time = Some(time));
        Applied {
            batch: Some((batch, subscribers)),
            offsets_moved,
        }
    }

    /// Removes, as part of the commit being applied, the rows the retention bounds
    /// push out: first those past their time to live, then the oldest beyond the
    /// count. `generated_before` is the last generated key before this commit.
    fn retire(&self, state: &mut TableState, generated_before: u64) {
        let mut retained = lock(&self.retained);
        let Retained { oldest, arrivals } = &mut *retained;
        // Every slot is a live row here: append tables have no deletes, and nothing
        // has been retired yet in this commit.
        let mut live = state.rows.len();
        if let Some(ttl) = self.retention.ttl {
            let now = tokio::time::Instant::now();
            if state.generated > generated_before {
                // Sharing the later time, the earlier rows leave a little late, never
                // early.
                match arrivals.back_mut() {
                    Some(back) if now.duration_since(back.opened) < ttl / 1024 => {
                        back.last = state.generated;
                        back.at = now;
                    }
                    _ => arrivals.push_back(Arrival::new(state.generated, now)),
                }
            }
            while let Some(&Arrival { last, at, .. }) = arrivals.front() {
                if at.checked_add(ttl).is_none_or(|expires| expires > now) {
                    break;
                }
                while *oldest <= last {
                    live -= usize::from(state.remove_generated(*oldest));
                    *oldest += 1;
                }
                arrivals.pop_front();
            }
        }
        if let Some(limit) = self.retention.last {
            while live > limit && *oldest <= state.generated {
                live -= usize::from(state.remove_generated(*oldest));
                *oldest += 1;
            }
            while arrivals.front().is_some_and(|a| a.last < *oldest) {
                arrivals.pop_front();
            }
        }
    }

    /// When the table must make a commit of its own to remove rows under its
    /// retention bounds, or `None` while no row is due to leave.
    pub(crate) fn retention_due(&self) -> Option<tokio::time::Instant> {
        if !self.retention.is_bounded() {
            return None;
        }
        // Only a table restored under a larger bound can be over its count. (Checking
        // that rows remain to retire keeps a miscount from spinning the driver.)
        if let Some(limit) = self.retention.last {
            let state = self.read();
            if state.rows.len() > limit && lock(&self.retained).oldest <= state.generated {
                return Some(tokio::time::Instant::now());
            }
        }
        let ttl = self.retention.ttl?;
        let at = lock(&self.retained).arrivals.front()?.at;
        at.checked_add(ttl)?.checked_add(self.expiry_grace)
    }

    /// Sets up retention for rows restored from storage: the oldest is the lowest
    /// generated key among them, and they count as added now (storage keeps no
    /// wall-clock times).
    fn restore_retention(&self, state: &TableState) {
        if !self.retention.is_bounded() {
            return;
        }
        let oldest = state.rows.oldest_generated().unwrap_or(state.generated + 1);
        let mut retained = lock(&self.retained);
        retained.oldest = oldest;
        retained.arrivals.clear();
        if self.retention.ttl.is_some() && !state.rows.is_empty() {
            retained
                .arrivals
                .push_back(Arrival::new(state.generated, tokio::time::Instant::now()));
        }
    }

    /// The table's time, offsets and generated-key counter, as a commit record needs.
    pub(crate) fn position(&self) -> (Option<Time>, Offsets, u64) {
        let state = self.read();
        (state.time, state.offsets.clone(), state.generated)
    }

    /// Every row as of the last commit, for a snapshot in storage.
    pub(crate) fn rows(&self) -> RowsAt {
        self.read().view()
    }

    /// Fills the table with what storage restored, before its sources run, and gives
    /// the subscribers attached so far the restored rows as a snapshot batch.
    pub(crate) fn restore(&self, store: TableStore, restored: Restored<RowMap<Slot>>) {
        let mut state = self.write();
        let Restored {
            time,
            rows,
            offsets,
            generated,
        } = restored;
        state.rows = Rows::restored(!self.schema.primary_key().is_empty(), rows);
        state.time = time;
        state.offsets = offsets;
        state.generated = generated;
        self.restore_retention(&state);
        // Only subscribers attached before the pipeline ran need the rows as a batch.
        let batch = match state.subscribers.is_empty() {
            true => None,
            false => state.view().snapshot_batch(&self.schema),
        };
        if let Some(batch) = batch {
            for subscriber in &state.subscribers {
                // Nothing was delivered before, so there is room.
                let _ = subscriber.sender.try_send(batch.clone());
            }
        }
        drop(state);
        *lock(&self.store) = Some(Arc::new(Mutex::new(store)));
        self.progress.send_modify(|p| {
            p.restored = time;
            p.durable = time;
            p.time = time;
        });
        self.set_durable_offsets(self.position().1);
    }

    /// The table's storage, if it has one and is open.
    pub(crate) fn store(&self) -> Option<Arc<Mutex<TableStore>>> {
        lock(&self.store).clone()
    }

    /// Marks the table ready: the pipeline runs and storage has been restored.
    pub(crate) fn set_ready(&self) {
        self.progress.send_modify(|p| p.ready = true);
    }

    /// Records that the commit at `time` is in storage.
    pub(crate) fn set_durable(&self, time: Option<Time>) {
        self.progress.send_if_modified(|p| {
            let moved = p.durable != time;
            p.durable = time;
            moved
        });
    }

    /// Records that the commit whose sources' offsets are `offsets` is durable.
    pub(crate) fn set_durable_offsets(&self, offsets: Offsets) {
        self.durable_offsets.send_modify(|d| d.offsets = offsets);
    }

    /// Watches the offsets of the last durable commit.
    pub(crate) fn watch_durable_offsets(&self) -> watch::Receiver<DurableOffsets> {
        self.durable_offsets.subscribe()
    }

    /// The oldest commit a sink of this table has written (`Some(0)`-time means none
    /// yet), or `None` without sinks: storage keeps the commits after it.
    pub(crate) fn oldest_sink_position(&self) -> Option<Time> {
        self.lock_sink_positions()
            .iter()
            .map(|p| p.load(Ordering::Acquire))
            .min()
            .map(Time::new)
    }

    fn lock_sink_positions(&self) -> std::sync::MutexGuard<'_, Vec<Arc<AtomicU64>>> {
        lock(&self.sink_positions)
    }

    /// The commits after `after` up to `upto`, read back from storage, for a sink
    /// that resumes behind the table.
    async fn replay(&self, after: Time, upto: Time) -> Result<Vec<ChangeBatch>, BoxError> {
        let Some(store) = self.store() else {
            return Err(format!(
                "its resume returned commit {after}, but the table holds commit {upto} and keeps no log to replay from (the pipeline has no persistence): start its output over, or persist the pipeline"
            )
            .into());
        };
        let mut progress = self.progress.subscribe();
        // The commit at `upto` may be applied but not yet written.
        let _ = progress.wait_for(|p| p.durable >= Some(upto) || p.closed).await;
        let replayed = tokio::task::spawn_blocking(move || lock(&store).replay(Some(after), upto))
            .await
            .map_err(|e| BoxError::from(format!("reading the table's log failed: {e}")))?;
        replayed.map_err(|e: PersistenceError| BoxError::from(e))
    }

    /// Delivers a commit's changes, waiting for room in every subscriber's queue; at
    /// the end of shutdown, only as long as [`Lifecycle::grace_over`] allows, after which
    /// the subscriber is disconnected.
    pub(crate) async fn deliver(
        &self,
        batch: ChangeBatch,
        subscribers: Vec<SubscriberSlot>,
        lifecycle: &Lifecycle,
    ) {
        let mut gone = Vec::new();
        for subscriber in &subscribers {
            let delivered = match subscriber.sender.try_send(batch.clone()) {
                Ok(()) => true,
                Err(TrySendError::Closed(_)) => false,
                Err(TrySendError::Full(batch)) => {
                    tokio::select! {
                        // Room, when there is some, wins over giving up at the same moment.
                        biased;
                        sent = subscriber.sender.send(batch) => sent.is_ok(),
                        () = lifecycle.grace_over() => {
                            subscriber.cut_off(&self.name);
                            false
                        }
                    }
                }
            };
            if !delivered {
                gone.push(subscriber.sender.clone());
            }
        }
        if !gone.is_empty() {
            let mut state = self.write();
            state
                .subscribers
                .retain(|s| !gone.iter().any(|g| s.sender.same_channel(g)));
        }
    }

    /// Marks the table final and ends every subscriber's stream.
    pub(crate) fn close(&self) {
        let mut state = self.write();
        state.closed = true;
        state.subscribers.clear();
        drop(state);
        self.progress.send_modify(|p| p.closed = true);
        self.durable_offsets.send_modify(|d| d.closed = true);
        self.release_store_if_unused();
    }

    /// Releases the table's storage (and its directory's lock) once the table is final
    /// and no sink may still replay from it: a sink behind the table resumes from the
    /// log even when the table closes first.
    fn release_store_if_unused(&self) {
        let sinks = self.lock_sink_positions();
        if sinks.is_empty() && self.progress.borrow().closed {
            lock(&self.store).take();
        }
    }
}
