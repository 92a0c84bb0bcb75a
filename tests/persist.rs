//! Offsets with every commit, and persistence: restart, snapshots for subscribers,
//! sinks that resume, errors that name what is wrong.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use intake::{
    BoxError, ChangeBatch, Column, DataType, Error, Offsets, Persistence, Pipeline, Reader, Schema, Sink,
    SourceContext, Subscriber, SyncPolicy, Time, source_fn,
};

fn schema() -> Schema {
    Schema::new([
        Column::new("key", DataType::Int).primary_key(),
        Column::new("value", DataType::Int),
    ])
    .unwrap()
}

/// Commits only when asked to (or at the end).
fn reader() -> Reader {
    Reader::json(schema()).autocommit_duration(Duration::from_secs(3600))
}

/// Sends `{key: n % 10, value: n}` for n in `from..=to` (after the resume offset, if
/// any), reporting `n` as the offset after each and committing every `every`.
fn counter(from: u64, to: u64, every: u64) -> impl intake::Source {
    source_fn(move |ctx: SourceContext| async move {
        let start = ctx
            .resume_offset()
            .and_then(|o| o.as_u64())
            .map_or(from, |n| n + 1);
        for n in start..=to {
            ctx.next_json(serde_json::json!({"key": n % 10, "value": n}))
                .await?;
            ctx.report_offset(n.into()).await?;
            if n % every == 0 {
                ctx.commit().await?;
            }
        }
        Ok(())
    })
}

fn rows(table: &intake::Table) -> BTreeMap<i64, i64> {
    table
        .snapshot()
        .rows()
        .iter()
        .map(|(_, r)| (r["key"].as_int().unwrap(), r["value"].as_int().unwrap()))
        .collect()
}

#[tokio::test]
async fn every_batch_carries_the_offsets_it_covers() {
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("counter", counter(1, 95, 10), reader());
    let mut changes = table.changes();
    let collected = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(batch) = changes.next().await {
            let last = batch
                .changes()
                .iter()
                .filter_map(|c| c.row["value"].as_int())
                .max();
            seen.push((last, batch.offsets().get("counter").cloned()));
        }
        seen
    });
    pipeline.run().await.unwrap();
    let seen = collected.await.unwrap();
    assert_eq!(seen.len(), 10);
    for (last, offset) in seen {
        // Each commit ends right after an offset: the batch's offset is its last row.
        assert_eq!(
            offset,
            last.map(serde_json::Value::from),
            "the offset of the batch's last message"
        );
    }
}

#[tokio::test]
async fn resume_from_hands_each_source_its_own_offset() {
    let offsets: Offsets = serde_json::from_value(serde_json::json!({"a": 50, "b": 90})).unwrap();
    let mut pipeline = Pipeline::new().resume_from(offsets);
    let a = pipeline.read("a", counter(1, 60, 1000), reader());
    let b = pipeline.read("b", counter(1, 95, 1000), reader());
    let c = pipeline.read("c", counter(1, 5, 1000), reader());
    pipeline.run().await.unwrap();
    assert_eq!(a.stats().messages(), 10);
    assert_eq!(b.stats().messages(), 5);
    assert_eq!(
        c.stats().messages(),
        5,
        "a source not named starts from the beginning"
    );
}

#[tokio::test]
async fn a_restart_restores_rows_time_and_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let mut pipeline = Pipeline::new().persist(Persistence::new(dir.path()));
    let table = pipeline.read("counter", counter(1, 45, 10), reader());
    pipeline.run().await.unwrap();
    let (first_rows, first_time) = (rows(&table), table.time().unwrap());
    assert_eq!(first_time.as_u64(), 5);

    // The second run resumes after 45 and commits at times after the first run's.
    let mut pipeline = Pipeline::new().persist(Persistence::new(dir.path()));
    let table = pipeline.read("counter", counter(1, 62, 10), reader());
    let batches = Arc::new(Mutex::new(Vec::new()));
    let seen = batches.clone();
    table.subscribe(Subscriber::new().on_batch(move |batch: &ChangeBatch| {
        seen.lock()
            .unwrap()
            .push((batch.time().as_u64(), batch.is_snapshot(), batch.len()));
    }));
    pipeline.run().await.unwrap();
    let batches = batches.lock().unwrap().clone();
    assert_eq!(
        batches[0],
        (5, true, first_rows.len()),
        "a subscriber attached before run first gets the restored rows as one snapshot batch"
    );
    assert!(
        batches[1..]
            .iter()
            .all(|(time, snapshot, _)| *time > 5 && !snapshot)
    );
    assert_eq!(
        table.stats().messages(),
        17,
        "only what came after offset 45 is read again"
    );
    let expected: BTreeMap<i64, i64> = (1..=62).map(|n| ((n % 10) as i64, n as i64)).collect();
    assert_eq!(rows(&table), expected);
    assert_eq!(table.committed_offsets(), vec![("counter".to_owned(), 62.into())]);
}

/// What a sink wrote: per batch, its time, whether it was a snapshot, its length.
type Written = Arc<Mutex<Vec<(u64, bool, usize)>>>;

/// A sink that keeps what it wrote in memory and holds up to `holds` on resume (which
/// takes `slow` to answer).
struct Recording {
    holds: Option<Time>,
    resumed_with: Arc<Mutex<Option<Option<Time>>>>,
    written: Written,
    slow: Duration,
}

impl Recording {
    fn holding(holds: Option<Time>, written: &Written) -> Recording {
        Recording {
            holds,
            resumed_with: Arc::default(),
            written: written.clone(),
            slow: Duration::ZERO,
        }
    }
}

#[async_trait::async_trait]
impl Sink for Recording {
    async fn resume(&mut self, table_time: Option<Time>) -> Result<Option<Time>, BoxError> {
        tokio::time::sleep(self.slow).await;
        *self.resumed_with.lock().unwrap() = Some(table_time);
        Ok(self.holds.min(table_time))
    }

    async fn write_batch(&mut self, batch: &ChangeBatch) -> Result<(), BoxError> {
        self.written
            .lock()
            .unwrap()
            .push((batch.time().as_u64(), batch.is_snapshot(), batch.len()));
        Ok(())
    }
}

#[tokio::test]
async fn a_sink_behind_the_table_receives_exactly_the_commits_it_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let mut pipeline = Pipeline::new().persist(Persistence::new(dir.path()));
    let table = pipeline.read("counter", counter(1, 50, 5), reader());
    let first = Arc::new(Mutex::new(Vec::new()));
    table.sink("first", Recording::holding(None, &first));
    pipeline.run().await.unwrap();
    let first = first.lock().unwrap().clone();
    assert_eq!(first.len(), 10);

    // Restarted, a sink that holds commits up to 6 gets 7..=10 from storage, then the
    // new commits; one that holds everything gets only the new commits.
    let mut pipeline = Pipeline::new().persist(Persistence::new(dir.path()));
    let table = pipeline.read("counter", counter(1, 60, 5), reader());
    let (resumed, written) = (Arc::new(Mutex::new(None)), Arc::new(Mutex::new(Vec::new())));
    table.sink(
        "behind",
        Recording {
            resumed_with: resumed.clone(),
            ..Recording::holding(Some(time(6)), &written)
        },
    );
    let level = Arc::new(Mutex::new(Vec::new()));
    table.sink("level", Recording::holding(Some(time(10)), &level));
    pipeline.run().await.unwrap();
    assert_eq!(
        *resumed.lock().unwrap(),
        Some(Some(time(10))),
        "resume gets the restored time"
    );
    let written = written.lock().unwrap().clone();
    assert_eq!(
        &written[..4],
        &first[6..],
        "the replayed commits are the ones written the first time"
    );
    let times: Vec<u64> = written.iter().map(|w| w.0).collect();
    assert_eq!(times, (7..=12).collect::<Vec<_>>());
    let level: Vec<u64> = level.lock().unwrap().iter().map(|w| w.0).collect();
    assert_eq!(level, vec![11, 12]);
}

fn time(t: u64) -> Time {
    Time::from(t)
}

#[tokio::test]
async fn a_changed_schema_is_an_error_naming_the_table_and_the_column() {
    let dir = tempfile::tempdir().unwrap();
    let mut pipeline = Pipeline::new().persist(Persistence::new(dir.path()));
    pipeline.read("counter", counter(1, 5, 10), reader());
    pipeline.run().await.unwrap();

    let changed = Schema::new([
        Column::new("key", DataType::Int).primary_key(),
        Column::new("value", DataType::String),
    ])
    .unwrap();
    let mut pipeline = Pipeline::new().persist(Persistence::new(dir.path()));
    let table = pipeline.read("counter", counter(1, 5, 10), Reader::json(changed));
    let ended = Arc::new(Mutex::new(false));
    let on_end = ended.clone();
    table.subscribe(Subscriber::new().on_end(move || *on_end.lock().unwrap() = true));
    let error = pipeline.run().await.unwrap_err();
    assert!(matches!(error, Error::Persistence { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("counter") && message.contains("value"),
        "{message}"
    );
    assert!(table.is_empty());
    assert!(
        *ended.lock().unwrap(),
        "subscribers end before run returns, even when nothing ran"
    );
}

#[tokio::test]
async fn two_pipelines_cannot_share_a_table_s_storage() {
    let dir = tempfile::tempdir().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut first = Pipeline::new().persist(Persistence::new(dir.path()));
    first.read(
        "t",
        source_fn(|ctx: SourceContext| async move {
            ctx.cancelled().await;
            Ok(())
        }),
        reader(),
    );
    let running = tokio::spawn(first.run_until(stopped));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut second = Pipeline::new().persist(Persistence::new(dir.path()));
    second.read("t", counter(1, 5, 10), reader());
    let error = second.run().await.unwrap_err();
    assert!(matches!(error, Error::Persistence { .. }), "{error}");
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn grouped_syncs_still_restore_everything_after_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let persistence =
        || Persistence::new(dir.path()).sync_policy(SyncPolicy::Interval(Duration::from_millis(20)));
    let mut pipeline = Pipeline::new().persist(persistence());
    pipeline.read("counter", counter(1, 100, 7), reader());
    pipeline.run().await.unwrap();
    let mut pipeline = Pipeline::new().persist(persistence());
    let table = pipeline.read("counter", counter(1, 100, 7), reader());
    pipeline.run().await.unwrap();
    assert_eq!(table.stats().messages(), 0);
    assert_eq!(table.len(), 10);
}

#[tokio::test]
async fn compaction_keeps_restart_independent_of_history() {
    let dir = tempfile::tempdir().unwrap();
    for round in 1..=4u64 {
        let mut pipeline = Pipeline::new().persist(Persistence::new(dir.path()).compact_after(2_000));
        let table = pipeline.read("counter", counter(1, round * 2_000, 50), reader());
        pipeline.run().await.unwrap();
        assert_eq!(table.len(), 10);
        assert_eq!(
            table.committed_offsets(),
            vec![("counter".to_owned(), (round * 2_000).into())]
        );
    }
    let bytes: u64 = std::fs::read_dir(dir.path().join("counter"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        bytes < 50_000,
        "the storage of a 10-row table stays small: {bytes} bytes"
    );
}

#[tokio::test]
async fn an_append_table_continues_its_generated_keys_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let append = || Reader::json(Schema::new([Column::new("value", DataType::Int)]).unwrap());
    let counts = |from: u64, to: u64| {
        source_fn(move |ctx: SourceContext| async move {
            let start = ctx
                .resume_offset()
                .and_then(|o| o.as_u64())
                .map_or(from, |n| n + 1);
            for n in start..=to {
                ctx.next_json(serde_json::json!({"value": n})).await?;
                ctx.report_offset(n.into()).await?;
            }
            Ok(())
        })
    };
    // Small commits and early compaction: restarts read snapshots as well as logs.
    for to in [5, 12, 12, 20, 400, 900] {
        let mut pipeline = Pipeline::new().persist(Persistence::new(dir.path()).compact_after(300));
        let table = pipeline.read("events", counts(1, to), append().max_batch_size(7));
        pipeline.run().await.unwrap();
        let mut values: Vec<i64> = table
            .snapshot()
            .rows()
            .iter()
            .map(|(_, r)| r["value"].as_int().unwrap())
            .collect();
        values.sort_unstable();
        assert_eq!(
            values,
            (1..=to as i64).collect::<Vec<_>>(),
            "every message once after a restart"
        );
    }
}

/// Regression: a sink still resuming when its table closed (a clean stop right after
/// a restart) found the storage released and failed, saying there was no log.
#[tokio::test]
async fn a_sink_behind_a_table_that_closes_at_once_still_replays() {
    let dir = tempfile::tempdir().unwrap();
    let mut pipeline = Pipeline::new().persist(Persistence::new(dir.path()));
    pipeline.read("counter", counter(1, 50, 5), reader());
    pipeline.run().await.unwrap();

    let mut pipeline = Pipeline::new().persist(Persistence::new(dir.path()));
    // Nothing new to read: the table closes at once, while the sink is resuming.
    let table = pipeline.read("counter", counter(1, 50, 5), reader());
    let written = Arc::new(Mutex::new(Vec::new()));
    table.sink(
        "behind",
        Recording {
            slow: Duration::from_millis(50),
            ..Recording::holding(Some(time(6)), &written)
        },
    );
    pipeline.run().await.unwrap();
    let times: Vec<u64> = written.lock().unwrap().iter().map(|w| w.0).collect();
    assert_eq!(times, vec![7, 8, 9, 10]);
}

/// Sends `{"n": n}` for n from its resume offset + 1 up to `to`, reporting an offset
/// after every fifth; with `hang`, then waits for the pipeline to stop or die.
struct Counts {
    to: i64,
    hang: bool,
    /// What [`Source::reports_offsets`](intake::Source::reports_offsets) says.
    declares_offsets: bool,
    /// How long it takes to stop once the pipeline stops (a source flushing).
    linger: Duration,
    sent: Arc<std::sync::atomic::AtomicBool>,
}

impl Counts {
    fn new(to: i64, hang: bool, declares_offsets: bool) -> Self {
        Counts {
            to,
            hang,
            declares_offsets,
            linger: Duration::ZERO,
            sent: Arc::default(),
        }
    }
}

#[async_trait::async_trait]
impl intake::Source for Counts {
    async fn run(&mut self, ctx: SourceContext) -> Result<(), BoxError> {
        let from = ctx.resume_offset().and_then(|o| o.as_i64()).unwrap_or(0) + 1;
        for n in from..=self.to {
            ctx.next_json(serde_json::json!({ "n": n })).await?;
            if n % 5 == 0 {
                ctx.report_offset(n.into()).await?;
            }
        }
        self.sent.store(true, std::sync::atomic::Ordering::Release);
        if self.hang {
            // Until the pipeline stops (or the process dies).
            ctx.cancelled().await;
            tokio::time::sleep(self.linger).await;
        }
        Ok(())
    }

    fn reports_offsets(&self) -> bool {
        self.declares_offsets
    }
}

fn counted() -> Reader {
    Reader::json(Schema::new([Column::new("n", DataType::Int)]).unwrap())
        .autocommit_duration(Duration::from_millis(5))
}

/// Runs `source` with persistence in `dir` until it has sent everything, lets many
/// autocommit periods go by, and kills the pipeline without any shutdown (its runtime
/// dropped, as a SIGKILL would).
fn crash_after_sending(dir: &std::path::Path, source: Counts) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let sent = source.sent.clone();
    let mut pipeline = Pipeline::new().persist(Persistence::new(dir));
    pipeline.read("events", source, counted());
    runtime.spawn(pipeline.run());
    while !sent.load(std::sync::atomic::Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300));
    drop(runtime);
}

/// Restarts from `dir` with `source` to its end; the table's values, sorted.
fn restart_to_the_end(dir: &std::path::Path, source: Counts) -> Vec<i64> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut pipeline = Pipeline::new().persist(Persistence::new(dir));
    let table = pipeline.read("events", source, counted());
    runtime.block_on(pipeline.run()).unwrap();
    let mut values: Vec<i64> = table
        .snapshot()
        .rows()
        .iter()
        .map(|(_, r)| r["n"].as_int().unwrap())
        .collect();
    values.sort_unstable();
    values
}

/// Regression: a commit could end between a source's messages and the offset reported
/// after them, so its record held rows its offsets did not cover; a crash then (before
/// the next commit) made the restart read those rows again, and an append table held
/// them twice. A commit now ends at a source's last offset; the rows after it wait for
/// theirs.
#[test]
fn a_crash_between_messages_and_their_offset_repeats_no_row() {
    let dir = tempfile::tempdir().unwrap();
    // 1..=7 with an offset at 5 only: before the fix, 6 and 7 were committed at 5.
    crash_after_sending(dir.path(), Counts::new(7, true, false));
    let values = restart_to_the_end(dir.path(), Counts::new(10, false, false));
    assert_eq!(values, (1..=10).collect::<Vec<_>>(), "every row once");
}

/// A source that says it reports offsets has even its first messages wait for one: a
/// crash before its first offset is stored repeats nothing.
#[test]
fn a_crash_before_a_source_s_first_offset_repeats_no_row() {
    let dir = tempfile::tempdir().unwrap();
    // 1..=3 and no offset yet.
    crash_after_sending(dir.path(), Counts::new(3, true, true));
    let values = restart_to_the_end(dir.path(), Counts::new(10, false, true));
    assert_eq!(values, (1..=10).collect::<Vec<_>>(), "every row once");
}

/// Regression: dropping `run`'s future (what a service does on Ctrl-C) leaves the
/// pipeline shutting down in the background, holding its storage for a moment; a
/// pipeline started right after on the same directory failed with `Locked`. It now
/// waits for the lock to be released.
#[test]
fn a_pipeline_restarted_right_after_its_run_was_dropped_opens_its_storage() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for round in 0..3 {
            let mut pipeline = Pipeline::new().persist(Persistence::new(dir.path()));
            let mut source = Counts::new(5 * (round + 1), true, true);
            // Still stopping for a moment after `run` is dropped.
            source.linger = Duration::from_millis(200);
            let table = pipeline.read("events", source, counted());
            // Runs until this round's rows are in (however long opening the storage
            // took), then `run` is dropped while the source still runs.
            let run = pipeline.run();
            tokio::pin!(run);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while (table.len() as i64) < 5 * (round + 1) {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "round {round}: {} rows after 10 s",
                    table.len()
                );
                tokio::select! {
                    ended = &mut run => panic!("round {round}: the pipeline ended on its own: {ended:?}"),
                    () = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
            }
        }
    });
    let values = restart_to_the_end(dir.path(), Counts::new(20, false, true));
    assert_eq!(values, (1..=20).collect::<Vec<_>>(), "every row once");
}
