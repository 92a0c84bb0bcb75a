//! Sources, commits, tables and subscriptions working together.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, stream};
use intake::{
    BoxError, ChangeBatch, Column, DataType, Error, ErrorPolicy, Key, ParseError, Pipeline, Reader, Schema,
    SendError, Source, SourceContext, Subscriber, from_stream, from_try_stream, source_fn,
};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

fn schema() -> Schema {
    Schema::new([
        Column::new("key", DataType::Int).primary_key(),
        Column::new("value", DataType::String),
    ])
    .unwrap()
}

fn row(key: i64, value: &str) -> String {
    serde_json::json!({ "key": key, "value": value }).to_string()
}

/// The table's rows as `key -> value`.
fn contents(table: &intake::Table) -> BTreeMap<i64, String> {
    table
        .snapshot()
        .rows()
        .iter()
        .map(|(_, row)| {
            (
                row["key"].as_int().unwrap(),
                row["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Every change of a batch as `(key, value, is_addition)`.
fn summary(batch: &ChangeBatch) -> Vec<(i64, String, bool)> {
    batch
        .changes()
        .iter()
        .map(|c| {
            (
                c.row["key"].as_int().unwrap(),
                c.row["value"].as_str().unwrap().to_owned(),
                c.is_addition,
            )
        })
        .collect()
}

/// A reader whose commits happen only on explicit commits and at the end.
fn manual_commits() -> Reader {
    Reader::json(schema()).autocommit_duration(Duration::from_secs(3600))
}

#[tokio::test]
async fn upserts_replace_and_deletes_remove() {
    let source = source_fn(|ctx: SourceContext| async move {
        ctx.next_str(row(1, "manul")).await?;
        ctx.next_str(row(2, "catus")).await?;
        ctx.next_str(row(3, "lynx")).await?;
        ctx.next_str(row(2, "silvestris")).await?;
        ctx.delete(3).await?;
        ctx.delete(99).await?; // not there: changes nothing
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("cats", source, Reader::json(schema()));
    pipeline.run().await.unwrap();

    assert_eq!(
        contents(&table),
        BTreeMap::from([(1, "manul".into()), (2, "silvestris".into())])
    );
    assert_eq!(
        table.get(&Key::from(2)).unwrap()["value"].as_str(),
        Some("silvestris")
    );
    assert!(table.get(&Key::from(3)).is_none());
    let stats = table.stats();
    assert_eq!((stats.messages(), stats.rejected(), stats.rows()), (6, 0, 2));
}

#[tokio::test]
async fn changes_are_consolidated_per_key_within_a_commit() {
    let source = source_fn(|ctx: SourceContext| async move {
        ctx.next_str(row(1, "a")).await?;
        ctx.next_str(row(2, "b")).await?;
        ctx.commit().await?;
        // Commit 2: update then update again -> one retraction and one insertion;
        // insert then delete -> nothing; insert then update -> one insertion.
        ctx.next_str(row(1, "a2")).await?;
        ctx.next_str(row(1, "a3")).await?;
        ctx.next_str(row(7, "gone")).await?;
        ctx.delete(7).await?;
        ctx.next_str(row(8, "x")).await?;
        ctx.next_str(row(8, "y")).await?;
        ctx.commit().await?;
        // Commit 3: delete then re-insert the same row -> nothing at all; an identical
        // upsert -> nothing; then delete 8 -> one retraction.
        ctx.delete(2).await?;
        ctx.next_str(row(2, "b")).await?;
        ctx.next_str(row(1, "a3")).await?;
        ctx.delete(8).await?;
        ctx.commit().await?;
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("t", source, manual_commits());
    let batches = table.changes();
    pipeline.run().await.unwrap();
    let batches: Vec<ChangeBatch> = batches.collect().await;

    let summaries: Vec<_> = batches.iter().map(summary).collect();
    assert_eq!(
        summaries,
        vec![
            vec![(1, "a".into(), true), (2, "b".into(), true)],
            vec![
                (1, "a".into(), false),
                (1, "a3".into(), true),
                (8, "y".into(), true)
            ],
            vec![(8, "y".into(), false)],
        ]
    );
    let times: Vec<u64> = batches.iter().map(|b| b.time().as_u64()).collect();
    assert_eq!(times, vec![1, 2, 3]);
}

#[tokio::test]
async fn callbacks_see_retractions_first_then_time_end_and_one_end() {
    #[derive(Debug, PartialEq)]
    enum Seen {
        Change(u64, i64, bool),
        TimeEnd(u64),
        End,
    }
    let log = Arc::new(Mutex::new(Vec::new()));
    let source = source_fn(|ctx: SourceContext| async move {
        ctx.next_str(row(1, "a")).await?;
        ctx.next_str(row(2, "b")).await?;
        ctx.commit().await?;
        ctx.next_str(row(2, "b2")).await?;
        ctx.next_str(row(3, "c")).await?;
        ctx.delete(1).await?;
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("t", source, manual_commits());
    let (on_change, on_time_end, on_end) = (log.clone(), log.clone(), log.clone());
    table.subscribe(
        Subscriber::new()
            .on_change(move |key, row, time, is_addition| {
                assert_eq!(key, &row.primary_key().unwrap());
                let key = key.values()[0].as_int().unwrap();
                on_change
                    .lock()
                    .unwrap()
                    .push(Seen::Change(time.as_u64(), key, is_addition));
            })
            .on_time_end(move |time| on_time_end.lock().unwrap().push(Seen::TimeEnd(time.as_u64())))
            .on_end(move || on_end.lock().unwrap().push(Seen::End)),
    );
    pipeline.run().await.unwrap();

    // `run` returns only after on_end.
    let log = log.lock().unwrap();
    assert_eq!(
        *log,
        vec![
            Seen::Change(1, 1, true),
            Seen::Change(1, 2, true),
            Seen::TimeEnd(1),
            // Retractions (2 updated, 1 deleted) before insertions (2, 3); within
            // each, keys in the order the commit first touched them.
            Seen::Change(2, 2, false),
            Seen::Change(2, 1, false),
            Seen::Change(2, 2, true),
            Seen::Change(2, 3, true),
            Seen::TimeEnd(2),
            Seen::End,
        ]
    );
}

/// A source that sends what it is told, when it is told, and then waits to be
/// cancelled or for the script to end.
fn scripted(script: Vec<(Duration, &'static str)>) -> impl Source {
    source_fn(move |ctx: SourceContext| async move {
        for (pause, message) in script {
            tokio::time::sleep(pause).await;
            if message == "COMMIT" {
                ctx.commit().await?;
            } else {
                ctx.next_str(message).await?;
            }
        }
        Ok(())
    })
}

/// When each batch of `table` arrives, relative to `start`, and its size.
fn arrivals(table: &intake::Table, start: Instant) -> tokio::task::JoinHandle<Vec<(Duration, usize)>> {
    let mut changes = table.changes();
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(batch) = changes.next().await {
            seen.push((start.elapsed(), batch.len()));
        }
        seen
    })
}

const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn autocommit_counts_from_the_first_uncommitted_message() {
    let script = vec![
        (MS * 10, r#"{"key": 1, "value": "a"}"#),
        (MS * 30, r#"{"key": 2, "value": "b"}"#),
        // Idle for a long time: no empty commits, no timer running.
        (MS * 1000, r#"{"key": 3, "value": "c"}"#),
        (MS * 500, r#"{"key": 4, "value": "d"}"#),
    ];
    let mut pipeline = Pipeline::new();
    let reader = Reader::json(schema()).autocommit_duration(MS * 100);
    let table = pipeline.read("t", scripted(script), reader);
    let start = Instant::now();
    let arrivals = arrivals(&table, start);
    pipeline.run().await.unwrap();
    assert_eq!(
        arrivals.await.unwrap(),
        vec![
            (MS * 110, 2),  // first message at 10 ms, committed 100 ms later with the second
            (MS * 1140, 1), // third at 1040 ms
            (MS * 1540, 1), // fourth at 1540 ms: the source ended, so it commits at once
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_and_an_explicit_commit_commit_at_once() {
    let script = vec![
        (MS, r#"{"key": 1, "value": "a"}"#),
        (MS, r#"{"key": 2, "value": "b"}"#),
        (MS, r#"{"key": 3, "value": "c"}"#), // third message: max_batch_size reached
        (MS, r#"{"key": 4, "value": "d"}"#),
        (MS, "COMMIT"),
        (MS * 50, r#"{"key": 5, "value": "e"}"#),
        (MS * 5000, r#"{"key": 6, "value": "f"}"#),
    ];
    let mut pipeline = Pipeline::new();
    let reader = Reader::json(schema())
        .autocommit_duration(MS * 1000)
        .max_batch_size(3);
    let table = pipeline.read("t", scripted(script), reader);
    let start = Instant::now();
    let arrivals = arrivals(&table, start);
    pipeline.run().await.unwrap();
    assert_eq!(
        arrivals.await.unwrap(),
        vec![(MS * 3, 3), (MS * 5, 1), (MS * 1055, 1), (MS * 5055, 1)]
    );
}

#[tokio::test]
async fn tables_without_a_primary_key_append() {
    let lines = stream::iter(["first", "second", "first"]);
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("lines", from_stream(lines), Reader::raw());
    pipeline.run().await.unwrap();
    let snapshot = table.snapshot();
    let rows: Vec<(u64, &str)> = snapshot
        .rows()
        .iter()
        .map(|(key, row)| (key.generated_id().unwrap(), row["data"].as_str().unwrap()))
        .collect();
    assert_eq!(rows, vec![(1, "first"), (2, "second"), (3, "first")]);
}

#[tokio::test]
async fn bad_input_is_skipped_and_reported_and_neighbours_are_kept() {
    let source = source_fn(|ctx: SourceContext| async move {
        ctx.next_str(row(1, "ok")).await?;
        ctx.next_str(r#"{"key": "one", "value": "wrong type"}"#).await?;
        ctx.next_str(r#"{"key": 2"#).await?;
        ctx.next_bytes(&b"\xff\xfe"[..]).await?;
        ctx.next_str(r#"{"value": "no key"}"#).await?;
        ctx.delete("not an int").await?;
        ctx.next_str(row(3, "also ok")).await?;
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read(
        "feed",
        source,
        Reader::json(schema()).error_policy(ErrorPolicy::SkipAndReport),
    );
    let rejected = pipeline.rejected(8);
    let collector = tokio::spawn(rejected.collect::<Vec<_>>());
    pipeline.run().await.unwrap();

    assert_eq!(
        contents(&table),
        BTreeMap::from([(1, "ok".into()), (3, "also ok".into())])
    );
    assert_eq!(table.stats().rejected(), 5);
    let rejected = collector.await.unwrap();
    assert_eq!(rejected.len(), 5);
    assert!(rejected.iter().all(|r| r.source_name() == "feed"));
    assert_eq!(
        &rejected[0].raw()[..],
        br#"{"key": "one", "value": "wrong type"}"#
    );
    assert!(matches!(rejected[0].reason(), ParseError::WrongType { column, .. } if column == "key"));
    assert!(matches!(rejected[1].reason(), ParseError::MalformedJson(_)));
    assert!(
        matches!(rejected[2].reason(), ParseError::MalformedJson(_)),
        "not UTF-8 is not JSON"
    );
    assert!(matches!(rejected[3].reason(), ParseError::MissingField { column } if column == "key"));
    assert!(matches!(rejected[4].reason(), ParseError::InvalidKey(_)));
    assert!(rejected[0].to_string().contains("source `feed`"));
}

#[tokio::test]
async fn bad_input_under_the_fail_policy_fails_the_pipeline_after_committing_what_came_before() {
    let ended = Arc::new(AtomicUsize::new(0));
    let source = source_fn(|ctx: SourceContext| async move {
        ctx.next_str(row(1, "kept")).await?;
        ctx.next_str("not json").await?;
        unreachable!("the send above fails");
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("strict", source, Reader::json(schema()));
    let counter = ended.clone();
    table.subscribe(Subscriber::new().on_end(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    }));
    let error = pipeline.run().await.unwrap_err();
    let Error::Rejected(rejected) = &error else {
        panic!("unexpected error: {error}")
    };
    assert_eq!(rejected.source_name(), "strict");
    assert_eq!(&rejected.raw()[..], b"not json");
    assert_eq!(contents(&table), BTreeMap::from([(1, "kept".into())]));
    assert_eq!(ended.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_failing_source_is_reported_by_name_and_the_others_finish() {
    let mut pipeline = Pipeline::new();
    let failing = source_fn(|ctx: SourceContext| async move {
        ctx.next_str(row(1, "before the failure")).await?;
        Err::<(), BoxError>("the upstream closed the connection".into())
    });
    let failing_table = pipeline.read("flaky", failing, Reader::json(schema()));
    let healthy = from_stream(stream::iter((0..100).map(|i| row(i, "x"))));
    let healthy_table = pipeline.read("steady", healthy, Reader::json(schema()));
    let error = pipeline.run().await.unwrap_err();

    let Error::SourcesFailed(failures) = &error else {
        panic!("unexpected error: {error}")
    };
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].name(), "flaky");
    assert_eq!(
        failures[0].cause().to_string(),
        "the upstream closed the connection"
    );
    assert_eq!(
        error.to_string(),
        "source `flaky` failed: the upstream closed the connection"
    );
    assert_eq!(failing_table.len(), 1, "what it sent before failing is committed");
    assert_eq!(healthy_table.len(), 100);
}

/// A source that sends until it is cancelled, then records that it saw cancellation.
struct Endless {
    sent: Arc<AtomicU64>,
    stopped: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl Source for Endless {
    async fn run(&mut self, ctx: SourceContext) -> Result<(), BoxError> {
        let mut i = 0i64;
        loop {
            tokio::select! {
                () = ctx.cancelled() => return Ok(()),
                () = tokio::time::sleep(MS) => {}
            }
            ctx.next_str(row(i % 10, "tick")).await?;
            self.sent.fetch_add(1, Ordering::SeqCst);
            i += 1;
        }
    }

    async fn on_stop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

fn endless() -> (Endless, Arc<AtomicU64>, Arc<AtomicBool>) {
    let sent = Arc::new(AtomicU64::new(0));
    let stopped = Arc::new(AtomicBool::new(false));
    (
        Endless {
            sent: sent.clone(),
            stopped: stopped.clone(),
        },
        sent,
        stopped,
    )
}

#[tokio::test(start_paused = true)]
async fn fail_fast_stops_every_source_when_one_fails() {
    let (endless, _, stopped) = endless();
    let mut pipeline = Pipeline::new().fail_fast(true);
    pipeline.read("endless", endless, Reader::json(schema()));
    let failing = source_fn(|_ctx: SourceContext| async move {
        tokio::time::sleep(MS * 50).await;
        Err::<(), BoxError>("boom".into())
    });
    pipeline.read("failing", failing, Reader::json(schema()));
    let error = pipeline.run().await.unwrap_err();
    assert!(matches!(&error, Error::SourcesFailed(f) if f.len() == 1 && f[0].name() == "failing"));
    assert!(
        stopped.load(Ordering::SeqCst),
        "on_stop ran for the cancelled source"
    );
}

#[tokio::test]
async fn a_panicking_source_is_a_failure_and_on_stop_still_runs() {
    struct Panics(Arc<AtomicBool>);
    #[async_trait::async_trait]
    impl Source for Panics {
        async fn run(&mut self, _ctx: SourceContext) -> Result<(), BoxError> {
            panic!("index out of bounds");
        }
        async fn on_stop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let stopped = Arc::new(AtomicBool::new(false));
    let mut pipeline = Pipeline::new();
    pipeline.read("panics", Panics(stopped.clone()), Reader::json(schema()));
    let error = pipeline.run().await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "source `panics` failed: panicked: index out of bounds"
    );
    assert!(stopped.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn shutdown_reaches_every_source_and_commits_what_was_sent() {
    let (first, first_sent, first_stopped) = endless();
    let (second, second_sent, second_stopped) = endless();
    let mut pipeline = Pipeline::new();
    let a = pipeline.read("a", first, Reader::json(schema()));
    let b = pipeline.read("b", second, Reader::json(schema()));
    let (a_changes, b_changes) = (a.changes(), b.changes());
    let shutdown = pipeline.shutdown_handle();
    let running = tokio::spawn(pipeline.run());
    tokio::time::sleep(MS * 250).await;
    shutdown.shutdown();
    running.await.unwrap().unwrap();

    assert!(first_stopped.load(Ordering::SeqCst) && second_stopped.load(Ordering::SeqCst));
    for (changes, sent) in [(a_changes, first_sent), (b_changes, second_sent)] {
        let batches: Vec<ChangeBatch> = changes.collect().await;
        let insertions: usize = batches.iter().map(|b| b.insertions().count()).sum();
        let retractions: usize = batches.iter().map(|b| b.retractions().count()).sum();
        // Every message sent was committed: the source cycles through 10 keys, so
        // each message beyond the first 10 replaced a row (consolidation may merge
        // several within a commit, but never lose the last).
        assert!(sent.load(Ordering::SeqCst) >= 200);
        assert_eq!(insertions - retractions, 10);
    }
    assert_eq!(a.len(), 10);
    assert_eq!(b.len(), 10);
}

#[tokio::test(start_paused = true)]
async fn sources_that_ignore_shutdown_are_dropped_after_the_timeout() {
    let dropped = Arc::new(AtomicBool::new(false));
    struct Stubborn(Arc<AtomicBool>);
    #[async_trait::async_trait]
    impl Source for Stubborn {
        async fn run(&mut self, ctx: SourceContext) -> Result<(), BoxError> {
            ctx.next_str(row(1, "sent before shutdown")).await?;
            // Never looks at cancellation and never sends again.
            std::future::pending::<()>().await;
            Ok(())
        }
        async fn on_stop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let mut pipeline = Pipeline::new().shutdown_timeout(Duration::from_secs(2));
    let table = pipeline.read("stubborn", Stubborn(dropped.clone()), Reader::json(schema()));
    let shutdown = pipeline.shutdown_handle();
    let start = Instant::now();
    let running = tokio::spawn(pipeline.run());
    tokio::time::sleep(MS * 10).await;
    shutdown.shutdown();
    running.await.unwrap().unwrap();
    assert_eq!(start.elapsed(), MS * 10 + Duration::from_secs(2));
    assert!(
        dropped.load(Ordering::SeqCst),
        "on_stop runs even for a dropped source"
    );
    assert_eq!(table.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_slow_subscriber_applies_backpressure_instead_of_buffering() {
    const TOTAL: u64 = 20_000;
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let source = source_fn(move |ctx: SourceContext| async move {
        for i in 0..TOTAL {
            ctx.next_str(row(i as i64, "v")).await?;
            counter.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let reader = Reader::json(schema())
        .max_batch_size(100)
        .channel_capacity(50)
        .subscriber_capacity(2)
        .autocommit_duration(MS);
    let table = pipeline.read("t", source, reader);
    let mut stalled = table.changes();
    let running = tokio::spawn(pipeline.run());

    // Nobody reads `stalled`. At most: 2 queued batches, 1 being delivered, 1 being
    // applied, and the queue (100 + 50); each batch holds at most 100 messages.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let bound = 2 * 100 + 100 + 100 + 150;
    let sent_while_stalled = sent.load(Ordering::SeqCst);
    assert!(
        sent_while_stalled <= bound,
        "{sent_while_stalled} messages went in while the subscriber stalled"
    );
    assert!(sent_while_stalled >= 100, "the pipeline did run");

    // Reading the stream releases the pipeline; nothing was lost.
    let mut received = 0;
    while let Some(batch) = stalled.next().await {
        received += batch.insertions().count() as u64;
    }
    running.await.unwrap().unwrap();
    assert_eq!(received, TOTAL);
    assert_eq!(table.len() as u64, TOTAL);
}

#[tokio::test]
async fn dropping_a_stream_releases_the_table() {
    let source = from_stream(stream::iter((0..5_000).map(|i| row(i, "v"))));
    let mut pipeline = Pipeline::new();
    let table = pipeline.read(
        "t",
        source,
        Reader::json(schema()).max_batch_size(10).subscriber_capacity(1),
    );
    drop(table.changes());
    pipeline.run().await.unwrap();
    assert_eq!(table.len(), 5_000);
}

#[tokio::test]
async fn a_late_stream_starts_with_a_snapshot() {
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(8);
    let mut pipeline = Pipeline::new();
    let table = pipeline.read(
        "t",
        from_stream(ReceiverStream::new(rx)),
        Reader::json(schema()).autocommit_duration(MS),
    );
    let mut early = table.changes();
    let running = tokio::spawn(pipeline.run());
    tx.send(row(1, "a")).await.unwrap();
    tx.send(row(2, "b")).await.unwrap();
    let first = early.next().await.unwrap();
    assert_eq!(first.time().as_u64(), 1);

    let mut late = table.changes();
    let snapshot = late.next().await.unwrap();
    assert_eq!(snapshot.time(), first.time());
    let mut snapshot_rows = summary(&snapshot);
    snapshot_rows.sort();
    assert_eq!(snapshot_rows, vec![(1, "a".into(), true), (2, "b".into(), true)]);

    tx.send(row(1, "a2")).await.unwrap();
    drop(tx);
    let next = late.next().await.unwrap();
    assert_eq!(
        summary(&next),
        vec![(1, "a".into(), false), (1, "a2".into(), true)]
    );
    assert!(
        late.next().await.is_none(),
        "the stream ends after the final commit"
    );
    running.await.unwrap().unwrap();
    // Subscribing after the end still gives the final state, then ends.
    let after: Vec<ChangeBatch> = table.changes().collect().await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].len(), 2);
}

#[tokio::test]
async fn typed_rows_in_and_out() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Cat {
        key: i64,
        value: String,
    }
    let source = source_fn(|ctx: SourceContext| async move {
        ctx.next(&Cat {
            key: 1,
            value: "manul".into(),
        })
        .await?;
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("typed", source, Reader::json(schema()));
    pipeline.run().await.unwrap();
    let cat: Cat = table.get(&Key::from(1)).unwrap().deserialize().unwrap();
    assert_eq!(
        cat,
        Cat {
            key: 1,
            value: "manul".into()
        }
    );
}

#[tokio::test]
async fn a_try_stream_error_fails_its_source() {
    let items: Vec<Result<String, std::io::Error>> = vec![
        Ok(row(1, "a")),
        Err(std::io::Error::other("disk on fire")),
        Ok(row(2, "never read")),
    ];
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("io", from_try_stream(stream::iter(items)), Reader::json(schema()));
    let error = pipeline.run().await.unwrap_err();
    assert_eq!(error.to_string(), "source `io` failed: disk on fire");
    assert_eq!(table.len(), 1);
}

#[tokio::test]
async fn sends_after_run_returned_fail_instead_of_vanishing() {
    let leaked = Arc::new(Mutex::new(None));
    let slot = leaked.clone();
    let source = source_fn(move |ctx: SourceContext| async move {
        *slot.lock().unwrap() = Some(ctx.clone());
        Ok(())
    });
    let mut pipeline = Pipeline::new().shutdown_timeout(MS * 10);
    pipeline.read("t", source, Reader::json(schema()));
    let running = tokio::spawn(pipeline.run());
    // Wait until the source has run and stored its context.
    let ctx = loop {
        if let Some(ctx) = leaked.lock().unwrap().take() {
            break ctx;
        }
        tokio::task::yield_now().await;
    };
    // `run` returned, so the clone may no longer send.
    while !matches!(ctx.next_str(row(1, "late")).await, Err(SendError::Finished)) {
        tokio::task::yield_now().await;
    }
    // The table ends once the last clone is gone.
    drop(ctx);
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_panicking_subscriber_is_reported_and_others_keep_receiving() {
    let source = from_stream(stream::iter((0..10).map(|i| row(i, "v"))));
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("t", source, Reader::json(schema()).max_batch_size(2));
    table.subscribe(Subscriber::new().on_change(|_, _, _, _| panic!("subscriber bug")));
    let healthy = table.changes();
    let error = pipeline.run().await.unwrap_err();
    assert!(
        matches!(&error, Error::SubscriberPanicked { table, message } if table == "t" && message == "subscriber bug")
    );
    let batches: Vec<ChangeBatch> = healthy.collect().await;
    assert_eq!(batches.iter().map(ChangeBatch::len).sum::<usize>(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_volume_on_the_multi_threaded_runtime_loses_nothing() {
    const TOTAL: i64 = 200_000;
    let source = source_fn(|ctx: SourceContext| async move {
        for i in 0..TOTAL {
            ctx.next_bytes(row(i % 1_000, &i.to_string())).await?;
        }
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("volume", source, Reader::json(schema()));
    let mut changes = table.changes();
    let folded = tokio::spawn(async move {
        let mut state = BTreeMap::new();
        let mut last_time = 0;
        while let Some(batch) = changes.next().await {
            assert!(batch.time().as_u64() > last_time);
            last_time = batch.time().as_u64();
            for (key, value, is_addition) in summary(&batch) {
                if is_addition {
                    assert!(state.insert(key, value).is_none(), "insertion over a live row");
                } else {
                    assert_eq!(state.remove(&key), Some(value), "retraction of a row not there");
                }
            }
        }
        state
    });
    pipeline.run().await.unwrap();
    let folded = folded.await.unwrap();
    let expected: BTreeMap<i64, String> = (TOTAL - 1_000..TOTAL)
        .map(|i| (i % 1_000, i.to_string()))
        .collect();
    assert_eq!(folded, expected);
    assert_eq!(contents(&table), expected);
    assert_eq!(table.stats().messages(), TOTAL as u64);
}

mod model {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Upsert(i64, u8),
        Delete(i64),
        Commit,
        Pause(u64),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            prop_oneof![
                6 => (0i64..6, 0u8..4).prop_map(|(k, v)| Op::Upsert(k, v)),
                2 => (0i64..7).prop_map(Op::Delete),
                1 => Just(Op::Commit),
                1 => (1u64..120).prop_map(Op::Pause),
            ],
            0..80,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// Folding every change batch gives the table, the final table is last-write-wins
        /// over the input, and every batch is consolidated, ordered and later than the last.
        #[test]
        fn the_table_is_the_fold_of_its_change_batches(ops in ops(), max_batch in 1usize..8) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            runtime.block_on(async move {
                let mut expected = BTreeMap::new();
                for op in &ops {
                    match op {
                        Op::Upsert(k, v) => { expected.insert(*k, v.to_string()); }
                        Op::Delete(k) => { expected.remove(k); }
                        Op::Commit | Op::Pause(_) => {}
                    }
                }
                let source = source_fn(move |ctx: SourceContext| async move {
                    for op in ops {
                        match op {
                            Op::Upsert(k, v) => ctx.next_str(row(k, &v.to_string())).await?,
                            Op::Delete(k) => ctx.delete(k).await?,
                            Op::Commit => ctx.commit().await?,
                            Op::Pause(ms) => tokio::time::sleep(MS * ms as u32).await,
                        }
                    }
                    Ok(())
                });
                let mut pipeline = Pipeline::new();
                let reader = Reader::json(schema()).max_batch_size(max_batch).autocommit_duration(MS * 50);
                let table = pipeline.read("t", source, reader);
                // Read the changes while the pipeline runs: an unread stream would
                // (by design) hold the pipeline back once its queue is full.
                let changes = tokio::spawn(table.changes().collect::<Vec<_>>());
                pipeline.run().await.unwrap();

                let mut folded = BTreeMap::new();
                let mut last_time = 0;
                for batch in changes.await.unwrap() {
                    prop_assert!(!batch.is_empty());
                    prop_assert!(batch.time().as_u64() > last_time);
                    last_time = batch.time().as_u64();
                    let changes = summary(&batch);
                    let first_insertion = changes.iter().position(|c| c.2).unwrap_or(changes.len());
                    prop_assert!(changes[first_insertion..].iter().all(|c| c.2), "retractions first: {:?}", changes);
                    for (key, value, is_addition) in &changes {
                        let same_key = changes.iter().filter(|c| c.0 == *key && c.2 == *is_addition).count();
                        prop_assert_eq!(same_key, 1, "consolidated: {:?}", changes);
                        if *is_addition {
                            let retracted = changes.iter().find(|c| c.0 == *key && !c.2);
                            prop_assert!(retracted.is_none_or(|r| &r.1 != value), "no-op update: {:?}", changes);
                        }
                    }
                    for (key, value, is_addition) in changes {
                        if is_addition {
                            prop_assert!(folded.insert(key, value).is_none());
                        } else {
                            prop_assert_eq!(folded.remove(&key), Some(value));
                        }
                    }
                }
                prop_assert_eq!(&folded, &contents(&table));
                prop_assert_eq!(&folded, &expected);
                Ok(())
            })?;
        }
    }
}

#[tokio::test]
async fn dropping_a_pipeline_without_running_it_ends_its_tables() {
    let mut pipeline = Pipeline::new();
    let table = pipeline.read(
        "never",
        from_stream(stream::iter([row(1, "a")])),
        Reader::json(schema()),
    );
    let changes = table.changes();
    drop(pipeline);
    assert!(changes.collect::<Vec<_>>().await.is_empty());
}

#[tokio::test]
async fn offsets_are_committed_with_the_messages_before_them() {
    let mut pipeline = Pipeline::new();
    let (tx, mut committed) = tokio::sync::mpsc::unbounded_channel::<Vec<(String, serde_json::Value)>>();
    let table_slot: Arc<Mutex<Option<intake::Table>>> = Arc::default();
    let slot = table_slot.clone();
    let source = source_fn(move |ctx: SourceContext| async move {
        assert_eq!(ctx.resume_offset(), Some(&serde_json::json!({"line": 7})));
        let table = slot.lock().unwrap().clone().unwrap();
        let wait_for = |time: u64| {
            let table = table.clone();
            async move {
                while table.time().map_or(0, |t| t.as_u64()) < time {
                    tokio::task::yield_now().await;
                }
                table.committed_offsets()
            }
        };
        ctx.next_str(row(1, "a")).await?;
        ctx.report_offset(serde_json::json!({"line": 8})).await?;
        ctx.next_str(row(2, "b")).await?; // after the offset: not covered by it
        ctx.commit().await?;
        tx.send(wait_for(1).await).unwrap();
        ctx.report_offset(serde_json::json!({"line": 9})).await?;
        Ok(())
    });
    let reader = manual_commits().resume_from(serde_json::json!({"line": 7}));
    let table = pipeline.read("lines", source, reader);
    *table_slot.lock().unwrap() = Some(table.clone());
    pipeline.run().await.unwrap();

    let first = committed.recv().await.unwrap();
    assert_eq!(first, vec![("lines".to_owned(), serde_json::json!({"line": 8}))]);
    // The last offset arrived after the last row; the final commit records it even
    // though it changed no row.
    assert_eq!(
        table.committed_offsets(),
        vec![("lines".to_owned(), serde_json::json!({"line": 9}))]
    );
    assert_eq!(
        table.stats().messages(),
        2,
        "offsets and commits are not counted as messages"
    );
}

#[tokio::test]
async fn sinks_receive_every_commit_then_close() {
    #[derive(Default)]
    struct Recorded {
        batches: Vec<Vec<(i64, String, bool)>>,
        closed: bool,
    }
    struct Recorder(Arc<Mutex<Recorded>>);
    #[async_trait::async_trait]
    impl intake::Sink for Recorder {
        async fn write_batch(&mut self, batch: &ChangeBatch) -> Result<(), BoxError> {
            assert_eq!(batch.schema(), &schema());
            self.0.lock().unwrap().batches.push(summary(batch));
            Ok(())
        }
        async fn close(&mut self) -> Result<(), BoxError> {
            self.0.lock().unwrap().closed = true;
            Ok(())
        }
    }
    let recorded = Arc::new(Mutex::new(Recorded::default()));
    let source = source_fn(|ctx: SourceContext| async move {
        ctx.next_str(row(1, "a")).await?;
        ctx.commit().await?;
        ctx.next_str(row(1, "b")).await?;
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("t", source, manual_commits());
    table.sink("recorder", Recorder(recorded.clone()));
    pipeline.run().await.unwrap();
    let recorded = recorded.lock().unwrap();
    assert_eq!(
        recorded.batches,
        vec![
            vec![(1, "a".into(), true)],
            vec![(1, "a".into(), false), (1, "b".into(), true)]
        ]
    );
    assert!(recorded.closed, "close runs before Pipeline::run returns");
}

#[tokio::test]
async fn a_failing_sink_shuts_the_pipeline_down_and_is_named() {
    struct Full;
    #[async_trait::async_trait]
    impl intake::Sink for Full {
        async fn write_batch(&mut self, _: &ChangeBatch) -> Result<(), BoxError> {
            Err("no space left on device".into())
        }
    }
    let (endless, _, stopped) = endless();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("t", endless, Reader::json(schema()).autocommit_duration(MS));
    table.sink("disk", Full);
    let error = pipeline.run().await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "sink `disk` of table `t` failed: no space left on device"
    );
    assert!(stopped.load(Ordering::SeqCst), "the sources were shut down");
}

#[tokio::test]
async fn sources_can_reject_input_themselves() {
    let source = source_fn(|ctx: SourceContext| async move {
        ctx.next_str(row(1, "ok")).await?;
        ctx.reject("a,b,c,d", "line 2: expected 2 fields, found 4")
            .await?;
        ctx.next_str(row(2, "ok")).await?;
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read(
        "csv",
        source,
        Reader::json(schema()).error_policy(ErrorPolicy::SkipAndReport),
    );
    let rejected = tokio::spawn(pipeline.rejected(4).collect::<Vec<_>>());
    pipeline.run().await.unwrap();
    let rejected = rejected.await.unwrap();
    assert_eq!(rejected.len(), 1);
    assert_eq!(&rejected[0].raw()[..], b"a,b,c,d");
    assert_eq!(
        rejected[0].reason(),
        &ParseError::Source("line 2: expected 2 fields, found 4".into())
    );
    assert_eq!(table.len(), 2);
    assert_eq!(table.stats().rejected(), 1);
}

#[tokio::test]
async fn a_rejection_keeps_the_error_the_source_gave_as_its_source() {
    use std::error::Error as _;

    let source = source_fn(|ctx: SourceContext| async move {
        let cause = "four".parse::<u32>().unwrap_err();
        ctx.reject(
            "a,four",
            intake::SourceReason::with_source("line 1: the count is not a number", cause),
        )
        .await?;
        ctx.next_str(row(1, "ok")).await?;
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read(
        "csv",
        source,
        Reader::json(schema()).error_policy(ErrorPolicy::SkipAndReport),
    );
    let rejected = tokio::spawn(pipeline.rejected(4).collect::<Vec<_>>());
    pipeline.run().await.unwrap();
    let rejected = rejected.await.unwrap();
    assert_eq!(rejected.len(), 1);
    let reason = rejected[0].reason();
    assert_eq!(reason.to_string(), "line 1: the count is not a number");
    let cause = reason.source().expect("the source's error");
    assert!(cause.is::<std::num::ParseIntError>(), "{cause:?}");
    assert_eq!(table.len(), 1);
}

#[tokio::test]
async fn a_stream_reports_bad_input_with_message_invalid() {
    let messages = stream::iter([
        intake::Message::from(row(1, "ok")),
        intake::Message::Invalid {
            raw: "1;2;3".into(),
            reason: "expected commas".into(),
        },
        intake::Message::from(row(2, "ok")),
    ]);
    let mut pipeline = Pipeline::new();
    let table = pipeline.read(
        "s",
        from_stream(messages),
        Reader::json(schema()).error_policy(ErrorPolicy::SkipAndReport),
    );
    let rejected = tokio::spawn(pipeline.rejected(4).collect::<Vec<_>>());
    pipeline.run().await.unwrap();
    let rejected = rejected.await.unwrap();
    assert_eq!(rejected.len(), 1);
    assert_eq!(&rejected[0].raw()[..], b"1;2;3");
    assert_eq!(
        rejected[0].reason(),
        &ParseError::Source("expected commas".into())
    );
    assert_eq!(table.len(), 2);
}

/// Regression: `report_offset` was refused once shutdown began, so a source stopped
/// mid-input could not say how far its committed messages went, and a resume re-read
/// them.
#[tokio::test(start_paused = true)]
async fn an_offset_reported_after_shutdown_began_is_committed_with_the_last_messages() {
    let source = source_fn(|ctx: SourceContext| async move {
        let mut line = 0;
        loop {
            match ctx.next_str(row(line, "x")).await {
                Ok(()) => line += 1,
                Err(SendError::ShuttingDown) => {
                    // Everything up to `line` was sent; nothing after it.
                    ctx.report_offset(serde_json::json!({ "line": line })).await?;
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
            if line % 100 == 0 {
                tokio::time::sleep(MS).await;
            }
        }
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("lines", source, Reader::json(schema()));
    let shutdown = pipeline.shutdown_handle();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(37)).await;
        shutdown.shutdown();
    });
    pipeline.run().await.unwrap();
    let committed = table.committed_offsets();
    assert_eq!(committed.len(), 1);
    let line = committed[0].1["line"].as_i64().unwrap();
    assert!(line > 0);
    assert_eq!(
        table.len() as i64,
        line,
        "the offset covers exactly the committed rows"
    );
}

/// Regression: a `rejected()` stream that nobody drained stalled `run` at the n-th bad
/// row, and shutdown did not wake it. Reporting is lossy now, and counted.
#[tokio::test(start_paused = true)]
async fn an_unread_rejected_stream_never_stalls_ingestion() {
    let source = source_fn(|ctx: SourceContext| async move {
        for i in 0..1_000 {
            ctx.next_str(row(i, "ok")).await?;
            ctx.next_str("not json").await?;
        }
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read(
        "feed",
        source,
        Reader::json(schema()).error_policy(ErrorPolicy::SkipAndReport),
    );
    let mut unread = pipeline.rejected(3);
    tokio::time::timeout(Duration::from_secs(60), pipeline.run())
        .await
        .expect("run returns although nobody reads the rejected stream")
        .unwrap();
    assert_eq!(table.len(), 1_000);
    assert_eq!(table.stats().rejected(), 1_000);
    assert_eq!(unread.missed(), 997);
    let mut delivered = 0;
    while let Some(report) = unread.next().await {
        assert_eq!(&report.raw()[..], b"not json");
        delivered += 1;
    }
    assert_eq!(
        delivered, 3,
        "the first reports are kept, and the stream ends with the pipeline"
    );
}

/// Regression: settings at their extremes overflowed `Instant` arithmetic (autocommit,
/// shutdown timeout) or panicked deep inside Tokio (a channel capacity above its limit).
/// Each now works as documented or is refused where it is set.
#[tokio::test(start_paused = true)]
async fn settings_at_their_extremes_work_or_are_refused_up_front() {
    let source = source_fn(|ctx: SourceContext| async move {
        ctx.next_str(row(1, "a")).await?;
        ctx.cancelled().await;
        Ok(())
    });
    let reader = Reader::json(schema())
        .autocommit_duration(Duration::MAX)
        .max_batch_size(usize::MAX)
        .channel_capacity(usize::MAX);
    let mut pipeline = Pipeline::new().shutdown_timeout(Duration::MAX);
    let table = pipeline.read("t", source, reader);
    let mut changes = table.changes();
    let stop = pipeline.shutdown_handle();
    let running = tokio::spawn(pipeline.run());
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(table.len(), 0, "no autocommit by time");
    stop.shutdown();
    running.await.unwrap().unwrap();
    assert_eq!(
        changes.next().await.map(|b| b.len()),
        Some(1),
        "committed at shutdown"
    );

    let batches: Vec<Vec<i32>> = intake::batch_async(stream::iter([1, 2]), Duration::MAX, usize::MAX)
        .collect()
        .await;
    assert_eq!(batches, vec![vec![1, 2]]);

    for refused in [
        std::panic::catch_unwind(|| Reader::json(schema()).subscriber_capacity(usize::MAX)).err(),
        std::panic::catch_unwind(|| Pipeline::new().rejected(usize::MAX)).err(),
    ] {
        let message = refused.expect("refused where it is set");
        let message = message.downcast_ref::<String>().unwrap();
        assert!(message.contains("must be at most"), "{message}");
    }
}

/// Regression: `ctx.next(&value)` turned NaN into null through `serde_json::to_value`,
/// so the row took the column's default and nothing was reported.
#[tokio::test]
async fn a_typed_message_with_a_nan_is_reported_not_stored_as_the_default() {
    #[derive(serde::Serialize)]
    struct Tick {
        key: i64,
        value: String,
        price: f64,
    }
    let schema = Schema::new([
        Column::new("key", DataType::Int).primary_key(),
        Column::new("value", DataType::String),
        Column::new("price", DataType::Float).default(0.0),
    ])
    .unwrap();
    let source = source_fn(|ctx: SourceContext| async move {
        ctx.next(&Tick {
            key: 1,
            value: "a".into(),
            price: f64::NAN,
        })
        .await?;
        ctx.next(&Tick {
            key: 2,
            value: "b".into(),
            price: 2.5,
        })
        .await?;
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read(
        "ticks",
        source,
        Reader::json(schema).error_policy(ErrorPolicy::SkipAndReport),
    );
    let rejected = pipeline.rejected(4);
    pipeline.run().await.unwrap();
    let rejected: Vec<_> = rejected.collect().await;
    assert_eq!(rejected.len(), 1);
    assert!(
        rejected[0].reason().to_string().contains("NaN"),
        "{}",
        rejected[0].reason()
    );
    assert_eq!(&rejected[0].raw()[..], br#"{"key":1,"value":"a","price":null}"#);
    assert!(table.get(&1.into()).is_none());
    assert_eq!(table.get(&2.into()).unwrap()["price"].as_float(), Some(2.5));
}

#[tokio::test]
async fn wait_for_returns_once_a_commit_makes_the_condition_hold() {
    let (go, mut gate) = tokio::sync::mpsc::channel::<()>(1);
    let source = source_fn(move |ctx: SourceContext| async move {
        ctx.next_str(row(1, "manul")).await?;
        ctx.commit().await?;
        // The second row only when the test says so, after it started waiting.
        gate.recv().await;
        ctx.next_str(row(2, "lynx")).await?;
        ctx.commit().await?;
        ctx.cancelled().await;
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("cats", source, manual_commits());
    let shutdown = pipeline.shutdown_handle();
    let running = tokio::spawn(pipeline.run());

    table.wait_for(|t| t.get(&1.into()).is_some()).await.unwrap();
    let waiting = tokio::spawn({
        let table = table.clone();
        async move { table.wait_for(|t| t.len() == 2).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiting.is_finished(), "the condition does not hold yet");
    go.send(()).await.unwrap();
    waiting.await.unwrap().unwrap();
    assert_eq!(contents(&table).len(), 2);
    shutdown.shutdown();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn wait_for_fails_when_the_table_ends_without_the_condition() {
    let source = source_fn(|ctx: SourceContext| async move {
        ctx.next_str(row(1, "manul")).await?;
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("cats", source, manual_commits());
    let waiting = tokio::spawn({
        let table = table.clone();
        async move { table.wait_for(|t| t.get(&2.into()).is_some()).await }
    });
    pipeline.run().await.unwrap();
    let ended = waiting.await.unwrap().unwrap_err();
    assert_eq!(ended.table(), "cats");
    // After the end it answers at once, from the final state.
    table.wait_for(|t| t.len() == 1).await.unwrap();
    assert!(table.wait_for(|t| t.is_empty()).await.is_err());
}

/// Every log line of this test binary, from a global subscriber installed once: a
/// subscriber set for one thread races with the other tests over `tracing`'s
/// per-callsite cache and may miss lines, so tests filter by their own source name.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    #[derive(Clone)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    static LOGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let writer = Buffer(logs.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber");
        logs
    })
}

/// Regression: every skipped message was one WARN line, so 10,000 bad frames were
/// 10,000 lines. Now a source logs its first ten one by one, then summaries.
#[tokio::test(start_paused = true)]
async fn a_flood_of_bad_input_is_summarised_in_the_log() {
    let logs = logs();
    let source = source_fn(|ctx: SourceContext| async move {
        for n in 0..10_000 {
            ctx.next_str(format!("not json {n}")).await?;
        }
        // Ten seconds later, more: one summary line for the flood so far.
        tokio::time::sleep(Duration::from_secs(11)).await;
        ctx.next_str("still not json").await?;
        ctx.next_str(row(1, "manul")).await?;
        ctx.next_str("nor this").await?;
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read(
        "flood",
        source,
        Reader::json(schema()).error_policy(ErrorPolicy::SkipAndReport),
    );
    pipeline.run().await.unwrap();
    assert_eq!(table.stats().rejected(), 10_002);
    assert_eq!(table.len(), 1);
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("intake::rejected") && l.contains("flood"))
        .collect();
    assert_eq!(
        lines.len(),
        12,
        "ten lines, a summary after ten seconds, one at the end:\n{logs}"
    );
    assert!(lines[10].contains("skipped=9991"), "{}", lines[10]);
    assert!(
        lines[11].contains("skipped=1") && lines[11].contains("total=10002"),
        "{}",
        lines[11]
    );
}

/// Regression: a rejected message could not say where in its source it came from. A
/// custom source gives its own description; the closure runs only on rejection.
#[tokio::test]
async fn a_custom_source_locates_rejected_input_in_its_own_words() {
    use intake::Location;

    let located = Arc::new(AtomicUsize::new(0));
    let calls = located.clone();
    let source = source_fn(move |ctx: SourceContext| async move {
        let locate = |n: u64| {
            calls.fetch_add(1, Ordering::SeqCst);
            Location::other(format!("queue orders, message {n}"))
        };
        ctx.send_located(row(1, "ok"), || locate(1)).await?;
        ctx.send_located("{not json", || locate(2)).await?;
        // Decoded from another shape: the report shows the input as it arrived.
        ctx.send_decoded(serde_json::json!({"key": "three"}), "3;three", || locate(3))
            .await?;
        ctx.reject_at(
            "a,b,c",
            "expected 2 fields",
            Location::other("queue orders, message 4"),
        )
        .await?;
        ctx.send_located(row(5, "ok"), || locate(5)).await?;
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read(
        "queue",
        source,
        Reader::json(schema()).error_policy(ErrorPolicy::SkipAndReport),
    );
    let rejected = tokio::spawn(pipeline.rejected(8).collect::<Vec<_>>());
    pipeline.run().await.unwrap();
    let rejected = rejected.await.unwrap();

    assert_eq!(table.len(), 2);
    assert_eq!(
        located.load(Ordering::SeqCst),
        2,
        "only rejected messages are located"
    );
    let locations: Vec<String> = rejected
        .iter()
        .map(|r| r.location().map(ToString::to_string).unwrap_or_default())
        .collect();
    assert_eq!(
        locations,
        [
            "queue orders, message 2",
            "queue orders, message 3",
            "queue orders, message 4"
        ]
    );
    assert_eq!(&rejected[0].raw()[..], b"{not json");
    assert_eq!(&rejected[1].raw()[..], b"3;three", "the input as it arrived");
    assert_eq!(
        serde_json::to_value(rejected[2].location()).unwrap(),
        serde_json::json!({"kind": "other", "description": "queue orders, message 4"})
    );
    assert!(
        rejected[0]
            .to_string()
            .starts_with("source `queue` sent a message that was rejected at queue orders, message 2: "),
        "{}",
        rejected[0]
    );
}

/// Under the fail policy, the error the pipeline returns says where the input was.
#[tokio::test]
async fn a_located_rejection_under_the_fail_policy_names_the_place() {
    use intake::Location;

    let source = source_fn(|ctx: SourceContext| async move {
        ctx.send_located("{not json", || Location::file("feed.jsonl", 3))
            .await?;
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    pipeline.read("feed", source, Reader::json(schema()));
    let error = pipeline.run().await.unwrap_err();
    assert!(
        error.to_string().contains("rejected at feed.jsonl:3: "),
        "{error}"
    );
}

/// A flood of 10,000 bad frames is still a bounded number of log lines, and the lines
/// logged one by one say where each bad frame was; the summaries, where the last was.
#[tokio::test(start_paused = true)]
async fn a_flood_of_located_bad_frames_logs_bounded_lines_with_locations() {
    use intake::Location;

    let logs = logs();
    let source = source_fn(|ctx: SourceContext| async move {
        for frame in 1..=10_000 {
            ctx.send_located("not json", || Location::websocket("ws://feed.test/ws", 1, frame))
                .await?;
        }
        ctx.next_str(row(1, "manul")).await?;
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read(
        "deluge",
        source,
        Reader::json(schema()).error_policy(ErrorPolicy::SkipAndReport),
    );
    pipeline.run().await.unwrap();
    assert_eq!(table.stats().rejected(), 10_000);
    assert_eq!(table.len(), 1);
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("intake::rejected") && l.contains("deluge"))
        .collect();
    assert_eq!(lines.len(), 11, "ten lines, one summary at the end:\n{logs}");
    for (n, line) in lines[..10].iter().enumerate() {
        let location = format!("location=ws://feed.test/ws connection 1 frame {} ", n + 1);
        assert!(line.contains(&location), "{line}");
    }
    assert!(
        lines[10].contains("skipped=9990")
            && lines[10].contains("last_location=ws://feed.test/ws connection 1 frame 10000 "),
        "{}",
        lines[10]
    );
}

/// Snapshots taken on another thread while commits rewrite, delete and re-insert every
/// row each show exactly one commit's state: never a mix of two commits, never a row
/// lost or doubled (the table copies rows for a reader outside its lock, sharing
/// them with the writer until the writer changes them).
#[test]
fn snapshots_during_commits_each_show_one_commit() {
    const KEYS: i64 = 3_000;
    const GENERATIONS: i64 = 40;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let source = source_fn(|ctx: SourceContext| async move {
        for generation in 0..GENERATIONS {
            // Odd generations delete the upper third, so rows also move (a removal
            // swaps the last row into the hole) and come back under new positions.
            for key in 0..KEYS {
                if generation % 2 == 1 && key >= 2 * KEYS / 3 {
                    ctx.delete(key).await?;
                } else {
                    ctx.next_str(row(key, &generation.to_string())).await?;
                }
            }
            ctx.commit().await?;
        }
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read(
        "t",
        source,
        Reader::json(schema())
            .autocommit_duration(Duration::from_secs(3600))
            .max_batch_size(10 * KEYS as usize),
    );
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (table, done) = (table.clone(), done.clone());
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            while !done.load(Ordering::Acquire) {
                let snapshot = table.snapshot();
                let Some(time) = snapshot.time() else { continue };
                let generations: std::collections::BTreeSet<String> = snapshot
                    .rows()
                    .iter()
                    .map(|(_, row)| row["value"].as_str().unwrap().to_owned())
                    .collect();
                assert_eq!(
                    generations.len(),
                    1,
                    "a torn snapshot at {time:?}: {generations:?}"
                );
                let generation: i64 = generations.first().unwrap().parse().unwrap();
                let expected = if generation % 2 == 1 { 2 * KEYS / 3 } else { KEYS };
                assert_eq!(snapshot.len() as i64, expected, "generation {generation}");
                let keys: Vec<i64> = snapshot
                    .rows()
                    .iter()
                    .map(|(k, _)| k.values()[0].as_int().unwrap())
                    .collect();
                assert!(keys.windows(2).all(|w| w[0] < w[1]), "sorted, each key once");
                seen.insert(generation);
            }
            seen
        })
    };
    runtime.block_on(pipeline.run()).unwrap();
    done.store(true, Ordering::Release);
    let seen = reader.join().unwrap();
    assert!(!seen.is_empty());
    // The last generation is odd: the upper third is deleted.
    assert_eq!(contents(&table).len() as i64, 2 * KEYS / 3);
}
