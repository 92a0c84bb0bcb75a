//! The commit driver: one task per table that takes each commit's events from the
//! table's queue and applies them, records the commit in storage when the table is
//! persistent, then delivers the commit to the subscribers.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::change::Offsets;
use crate::lifecycle::{Lifecycle, lock};
use crate::queue::{Commit, Queue};
use crate::store::{PersistenceError, SnapshotDone, SyncPolicy, TableStore};
use crate::table::{Applied, TableShared};
use crate::telemetry::{EXPORT_EVERY, TableMetrics};

/// Runs until every source of the table has finished and their last events are
/// committed and delivered, then ends the table. The queue decides when a commit is
/// due: autocommit duration since its first event, `max_batch_size` events, an explicit
/// commit, or the end of every source. A table with a time to live also commits when
/// its oldest rows have expired and no other commit came to remove them.
///
/// Expiry has a timer of its own, armed for the oldest rows' deadline (plus the
/// table's grace), rather than riding on the metrics tick: the tick's second would be
/// coarser than many a time to live, and the timer costs nothing when no row is due.
pub(crate) async fn drive(
    table: Arc<TableShared>,
    queue: Arc<Queue>,
    lifecycle: Arc<Lifecycle>,
    sync: SyncPolicy,
) {
    let mut recorder = table.store().map(|store| Recorder::new(store, sync));
    // Cleared when a commit could not be made durable: nothing after it is delivered.
    let mut delivering = true;
    let metrics = TableMetrics::new(table.name());
    let mut export = tokio::time::interval(EXPORT_EVERY);
    export.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let sync_due = recorder.as_ref().and_then(Recorder::sync_due);
        let retention_due = table.retention_due();
        // Rows already due leave before anything else, even if the sources have ended
        // (a table restored over its bound is cut before it closes).
        let next = if retention_due.is_some_and(|due| due <= Instant::now()) {
            Some(Step::Retire)
        } else {
            tokio::select! {
                next = queue.next_commit() => next.map(Step::Commit),
                () = sleep_until(retention_due) => Some(Step::Retire),
                _ = export.tick() => {
                    export_metrics(&table, &metrics);
                    continue;
                }
                () = sleep_until(sync_due) => {
                    if let Some(r) = recorder.as_mut() {
                        r.sync_now(&table, &lifecycle).await;
                        if r.failed {
                            recorder = None;
                            delivering = false;
                        }
                    }
                    continue;
                }
            }
        };
        let (applied, first_at) = match next {
            None => break,
            Some(Step::Commit(Commit {
                mut events,
                first_at,
                waiting,
            })) => {
                table
                    .counters()
                    .queue_depth
                    .store(waiting as u64, Ordering::Relaxed);
                let applied = compute_heavy(events.len(), || table.apply(&mut events));
                queue.recycle(events);
                (applied, first_at)
            }
            // A commit of no events: it removes the rows whose time is up.
            // It may remove many rows, so it is treated as a large commit.
            Some(Step::Retire) => (compute_heavy(HEAVY_COMMIT, || table.apply(&mut Vec::new())), None),
        };
        let persistent = recorder.is_some();
        if let Some(r) = recorder.as_mut() {
            r.record(&table, &applied, &lifecycle).await;
            if r.failed {
                recorder = None;
                delivering = false;
            }
        }
        if !delivering {
            continue;
        }
        // Without storage, a commit is as durable as it gets once every subscriber
        // has it.
        let delivered_offsets = (!persistent && applied.offsets_moved).then(|| table.position().1);
        let changed = applied.batch.is_some();
        if let Some((batch, subscribers)) = applied.batch {
            table.deliver(batch, subscribers, &lifecycle).await;
        }
        if let Some(offsets) = delivered_offsets {
            table.set_durable_offsets(offsets);
        }
        if changed && let Some(first_at) = first_at {
            metrics.commit_latency(table.counters(), first_at.elapsed());
        }
        export_metrics(&table, &metrics);
    }
    export_metrics(&table, &metrics);
    if let Some(mut r) = recorder {
        r.finish(&table, &lifecycle).await;
    }
    table.close();
}

/// What the driver does next.
enum Step {
    /// Apply a commit the queue made due.
    Commit(Commit),
    /// Commit the removal of rows that left under the table's retention bounds.
    Retire,
}

/// Copies the table's figures (and its sources') to the `metrics` facade.
fn export_metrics(table: &TableShared, metrics: &TableMetrics) {
    let counters = table.counters();
    counters
        .subscriber_lag
        .store(table.subscriber_lag(), Ordering::Relaxed);
    metrics.export(counters, table.len(), &table.sources());
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Writes a persistent table's commit records, syncs them as the policy says and
/// compacts the log with snapshots.
struct Recorder {
    store: Arc<Mutex<TableStore>>,
    interval: Option<std::time::Duration>,
    /// When the oldest record not yet synced was written (grouped syncs only).
    unsynced_since: Option<Instant>,
    /// The offsets of the last record written but not yet synced, if they moved.
    unsynced_offsets: Option<Offsets>,
    snapshot: Option<JoinHandle<Result<SnapshotDone, PersistenceError>>>,
    failed: bool,
}

impl Recorder {
    fn new(store: Arc<Mutex<TableStore>>, sync: SyncPolicy) -> Self {
        let interval = match sync {
            SyncPolicy::Interval(interval) => Some(interval),
            _ => None,
        };
        Recorder {
            store,
            interval,
            unsynced_since: None,
            unsynced_offsets: None,
            snapshot: None,
            failed: false,
        }
    }

    fn sync_due(&self) -> Option<Instant> {
        let since = self.unsynced_since?;
        since.checked_add(self.interval?)
    }

    /// Appends the record of an applied commit, if it changed the table or moved an
    /// offset, and makes it durable as the policy says; starts or finishes a
    /// snapshot when one is due.
    async fn record(&mut self, table: &Arc<TableShared>, applied: &Applied, lifecycle: &Lifecycle) {
        if applied.batch.is_none() && !applied.offsets_moved {
            return;
        }
        let (time, offsets, generated) = table.position();
        let changes = applied.batch.as_ref().map(|(batch, _)| batch.clone());
        let store = self.store.clone();
        let recorded = offsets.clone();
        let appended = blocking(move || {
            #[cfg(test)]
            std::thread::sleep(tests::RECORD_DELAY);
            let mut store = lock(&store);
            let changes = changes.as_ref().map_or(&[][..], |batch| batch.changes());
            store.append(time, changes, &recorded, generated)?;
            Ok(store.wants_snapshot())
        })
        .await;
        let wants_snapshot = match appended {
            Ok(wants) => wants,
            Err(error) => return self.fail(table, lifecycle, error),
        };
        if self.interval.is_some() {
            self.unsynced_since.get_or_insert_with(Instant::now);
            if applied.offsets_moved {
                self.unsynced_offsets = Some(offsets);
            }
        } else if applied.offsets_moved {
            table.set_durable_offsets(offsets);
        }
        table.set_durable(time);
        if let Err(error) = self.compact(table, wants_snapshot).await {
            self.fail(table, lifecycle, error);
        }
    }

    /// Finishes a snapshot that has been written, and starts one if it is due.
    async fn compact(&mut self, table: &Arc<TableShared>, due: bool) -> Result<(), PersistenceError> {
        if self.snapshot.as_ref().is_some_and(JoinHandle::is_finished) {
            self.finish_snapshot(table).await?;
        }
        if due && self.snapshot.is_none() {
            let rows = table.rows();
            let job = lock(&self.store).start_snapshot(rows)?;
            self.snapshot = Some(tokio::task::spawn_blocking(move || job.run()));
        }
        Ok(())
    }

    async fn finish_snapshot(&mut self, table: &Arc<TableShared>) -> Result<(), PersistenceError> {
        let Some(job) = self.snapshot.take() else {
            return Ok(());
        };
        let done = job
            .await
            .map_err(|e| PersistenceError::Background(e.to_string()))??;
        let keep_after = table.oldest_sink_position();
        let store = self.store.clone();
        blocking(move || lock(&store).finish_snapshot(done, keep_after)).await
    }

    async fn sync_now(&mut self, table: &Arc<TableShared>, lifecycle: &Lifecycle) {
        self.unsynced_since = None;
        let store = self.store.clone();
        match blocking(move || lock(&store).sync()).await {
            Ok(()) => {
                if let Some(offsets) = self.unsynced_offsets.take() {
                    table.set_durable_offsets(offsets);
                }
            }
            Err(error) => self.fail(table, lifecycle, error),
        }
    }

    /// Syncs what is pending and waits for a snapshot being written.
    async fn finish(&mut self, table: &Arc<TableShared>, lifecycle: &Lifecycle) {
        if self.unsynced_since.is_some() {
            self.sync_now(table, lifecycle).await;
        }
        if let Err(error) = self.finish_snapshot(table).await {
            self.fail(table, lifecycle, error);
        }
    }

    fn fail(&mut self, table: &TableShared, lifecycle: &Lifecycle, error: PersistenceError) {
        self.failed = true;
        lifecycle.persistence_failed(table.name(), error);
    }
}

/// Runs file work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, PersistenceError> + Send + 'static,
) -> Result<T, PersistenceError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| PersistenceError::Background(e.to_string()))?
}

/// Commits at least this large are applied off the async worker; see [`compute_heavy`].
const HEAVY_COMMIT: usize = 256;

/// Runs a commit's CPU-bound work. A large commit on a multi-threaded runtime runs
/// under `block_in_place`, which hands this worker's other tasks (typically the
/// source that just filled the queue) to another thread, so that parsing the next
/// batch overlaps with applying this one instead of waiting behind it.
fn compute_heavy<R>(events: usize, work: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let multi_thread = Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    if events >= HEAVY_COMMIT && multi_thread {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::{
        ChangeBatch, Column, DataType, Persistence, Pipeline, Reader, Schema, SourceContext, Subscriber,
        source_fn,
    };

    /// How long writing a record takes in these tests: long enough that a delivery
    /// racing ahead of its record would be seen before the record exists.
    pub(super) const RECORD_DELAY: Duration = Duration::from_millis(20);

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    /// Every commit a subscriber sees is already in storage: a copy of the storage
    /// taken as a subscriber receives commit `t` (what a crash at that instant would
    /// leave) restores a table at commit `t` or later.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_commit_is_in_storage_before_a_subscriber_sees_it() {
        let dir = tempfile::tempdir().unwrap();
        let copies = tempfile::tempdir().unwrap();
        let schema = Schema::new([
            Column::new("key", DataType::Int).primary_key(),
            Column::new("value", DataType::Int),
        ])
        .unwrap();
        let reader = || Reader::json(schema.clone()).autocommit_duration(Duration::from_secs(3600));
        let source = source_fn(|ctx: SourceContext| async move {
            for n in 1..=5 {
                ctx.next_json(serde_json::json!({"key": n, "value": n})).await?;
                ctx.commit().await?;
            }
            Ok(())
        });
        let mut pipeline = Pipeline::new().persist(Persistence::new(dir.path()));
        let table = pipeline.read("t", source, reader());
        let (state, into) = (dir.path().to_owned(), copies.path().to_owned());
        table.subscribe(Subscriber::new().on_batch(move |batch: &ChangeBatch| {
            copy_dir(&state, &into.join(batch.time().to_string()));
        }));
        pipeline.run().await.unwrap();
        drop(table);
        for time in 1..=5u64 {
            let mut pipeline =
                Pipeline::new().persist(Persistence::new(copies.path().join(time.to_string())));
            let table = pipeline.read("t", source_fn(|_| async { Ok(()) }), reader());
            pipeline.run().await.unwrap();
            let restored = table.time().map_or(0, crate::Time::as_u64);
            assert!(
                restored >= time,
                "commit {time} was delivered before it was stored (a copy then restores {restored})"
            );
        }
    }

    /// A stream attached while a commit's record is being written yields its snapshot
    /// (which shows that commit) only once the record is in storage.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_late_subscriber_s_snapshot_waits_for_its_commit_to_be_stored() {
        use futures::StreamExt;

        let dir = tempfile::tempdir().unwrap();
        let copy = tempfile::tempdir().unwrap();
        let schema = Schema::new([Column::new("key", DataType::Int).primary_key()]).unwrap();
        let source = source_fn(|ctx: SourceContext| async move {
            ctx.next_json(serde_json::json!({"key": 1})).await?;
            ctx.commit().await?;
            ctx.cancelled().await;
            Ok(())
        });
        let mut pipeline = Pipeline::new().persist(Persistence::new(dir.path()));
        let table = pipeline.read("t", source, Reader::json(schema.clone()));
        let shutdown = pipeline.shutdown_handle();
        let running = tokio::spawn(pipeline.run());
        // Attach as soon as the commit is applied, while its record is being written.
        while table.time().is_none() {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let snapshot = table.changes().next().await.unwrap();
        assert!(snapshot.is_snapshot());
        copy_dir(dir.path(), copy.path());
        shutdown.shutdown();
        running.await.unwrap().unwrap();
        drop(table);

        let mut pipeline = Pipeline::new().persist(Persistence::new(copy.path()));
        let table = pipeline.read("t", source_fn(|_| async { Ok(()) }), Reader::json(schema));
        pipeline.run().await.unwrap();
        assert_eq!(
            table.len(),
            1,
            "the snapshot showed a commit that was not stored yet"
        );
    }

    fn seq_schema() -> Schema {
        Schema::new([Column::new("seq", DataType::Int).primary_key()]).unwrap()
    }

    /// Sends `seq` with offset `seq` and commits it.
    async fn send_committed(ctx: &SourceContext, seq: u64) -> Result<(), crate::SendError> {
        ctx.next_json(serde_json::json!({ "seq": seq })).await?;
        ctx.report_offset(seq.into()).await?;
        ctx.commit().await
    }

    /// With persistence, an offset is durable only once its commit is stored: a copy
    /// of the storage taken when the source sees offset `n` become durable restores
    /// offset `n` or later.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_durable_offset_is_in_storage() {
        let dir = tempfile::tempdir().unwrap();
        let copies = tempfile::tempdir().unwrap();
        let reader = || Reader::json(seq_schema()).autocommit_duration(Duration::from_secs(3600));
        let (state, into) = (dir.path().to_owned(), copies.path().to_owned());
        let source = source_fn(move |ctx: SourceContext| async move {
            let mut durable = ctx.durable_offset();
            for seq in 1..=3u64 {
                send_committed(&ctx, seq).await?;
                let offset = durable.changed().await?;
                assert_eq!(offset, seq);
                copy_dir(&state, &into.join(seq.to_string()));
            }
            Ok(())
        });
        let mut pipeline = Pipeline::new().persist(Persistence::new(dir.path()));
        let table = pipeline.read("t", source, reader());
        pipeline.run().await.unwrap();
        drop(table);
        for seq in 1..=3u64 {
            let mut pipeline = Pipeline::new().persist(Persistence::new(copies.path().join(seq.to_string())));
            let table = pipeline.read("t", source_fn(|_| async { Ok(()) }), reader());
            pipeline.run().await.unwrap();
            let stored = table.committed_offsets();
            assert_eq!(
                stored,
                [("t".to_owned(), serde_json::json!(seq))],
                "offset {seq} was durable before it was stored"
            );
        }
    }

    /// Under a grouped sync, offsets become durable at the sync, not at the write: a
    /// sync an hour away is only made when the pipeline ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_a_grouped_sync_an_offset_is_durable_after_the_sync() {
        let dir = tempfile::tempdir().unwrap();
        let (handle_tx, handle_rx) = tokio::sync::oneshot::channel();
        let source = source_fn(move |ctx: SourceContext| async move {
            let mut durable = ctx.durable_offset();
            send_committed(&ctx, 1).await?;
            let early = tokio::time::timeout(Duration::from_millis(300), durable.changed()).await;
            assert!(early.is_err(), "offset durable before any sync: {early:?}");
            assert_eq!(durable.get(), None);
            let _ = handle_tx.send(durable);
            Ok(())
        });
        let persistence =
            Persistence::new(dir.path()).sync_policy(crate::SyncPolicy::Interval(Duration::from_secs(3600)));
        let mut pipeline = Pipeline::new().persist(persistence);
        let _table = pipeline.read("t", source, Reader::json(seq_schema()));
        pipeline.run().await.unwrap();
        let mut durable = handle_rx.await.unwrap();
        assert_eq!(
            durable.changed().await.unwrap(),
            1,
            "the final sync makes the offset durable"
        );
        let ended = durable.changed().await.unwrap_err();
        assert_eq!(ended.table(), "t");
    }

    /// Without persistence, an offset is durable once every subscriber has its
    /// commit: a subscriber that stops reading holds it back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_persistence_a_slow_subscriber_holds_the_durable_offset_back() {
        use futures::StreamExt;

        let (read_tx, read_rx) = tokio::sync::oneshot::channel::<()>();
        let source = source_fn(move |ctx: SourceContext| async move {
            let mut durable = ctx.durable_offset();
            send_committed(&ctx, 1).await?;
            assert_eq!(durable.changed().await?, 1);
            // The stream has room for one batch, which commit 1 took.
            send_committed(&ctx, 2).await?;
            let early = tokio::time::timeout(Duration::from_millis(300), durable.changed()).await;
            assert!(
                early.is_err(),
                "offset durable before the subscriber had its commit: {early:?}"
            );
            let _ = read_tx.send(());
            assert_eq!(durable.changed().await?, 2);
            Ok(())
        });
        let mut pipeline = Pipeline::new();
        let table = pipeline.read("t", source, Reader::json(seq_schema()).subscriber_capacity(1));
        let mut changes = table.changes();
        let running = tokio::spawn(pipeline.run());
        read_rx.await.unwrap();
        let times: Vec<u64> = changes
            .by_ref()
            .take(2)
            .map(|b| b.time().as_u64())
            .collect()
            .await;
        assert_eq!(times.len(), 2);
        running.await.unwrap().unwrap();
    }

    /// A partition's durable offset is its own.
    #[tokio::test]
    async fn a_partition_sees_its_own_durable_offset() {
        struct Two;
        #[async_trait::async_trait]
        impl crate::PartitionedSource for Two {
            async fn list_partitions(&mut self) -> Result<Vec<String>, crate::BoxError> {
                Ok(vec!["a".into(), "b".into()])
            }
            async fn build_partition(
                &mut self,
                partition: &str,
                _resume: Option<&serde_json::Value>,
            ) -> Result<Box<dyn crate::Source>, crate::BoxError> {
                let base: u64 = if partition == "a" { 100 } else { 200 };
                Ok(Box::new(source_fn(move |ctx: SourceContext| async move {
                    let mut durable = ctx.durable_offset();
                    send_committed(&ctx, base + 1).await?;
                    assert_eq!(durable.changed().await?, base + 1);
                    Ok(())
                })))
            }
        }
        let mut pipeline = Pipeline::new();
        let table = pipeline.read_partitioned("p", Two, Reader::json(seq_schema()));
        pipeline.run().await.unwrap();
        assert_eq!(table.len(), 2);
    }
}
