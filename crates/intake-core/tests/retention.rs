//! Retention bounds for append tables (`Reader::retain_last`, `Reader::retain_for`) and
//! tables that keep no rows (`Reader::keep_rows(false)`): what leaves is retracted like
//! any other change, subscribers and sinks agree with the table, storage restores the
//! bounded table, and the combinations that make no sense are refused.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use intake_core::{
    BoxError, ChangeBatch, Column, DataType, Key, Persistence, Pipeline, Reader, Row, Schema, Sink,
    SourceContext, Subscriber, source_fn,
};
use tokio::time::Instant;

/// A log line: no primary key, so rows are appended under generated keys.
fn lines() -> Schema {
    Schema::new([
        Column::new("id", DataType::Int),
        Column::new("payload", DataType::String),
    ])
    .unwrap()
}

fn keyed() -> Schema {
    Schema::new([
        Column::new("id", DataType::Int).primary_key(),
        Column::new("payload", DataType::String),
    ])
    .unwrap()
}

async fn send(ctx: &SourceContext, ids: impl IntoIterator<Item = u64>) -> Result<(), BoxError> {
    for id in ids {
        ctx.next_json(serde_json::json!({"id": id, "payload": format!("line {id}")}))
            .await?;
    }
    ctx.commit().await?;
    Ok(())
}

/// The generated keys of a batch's retractions and insertions.
fn keys(batch: &ChangeBatch) -> (Vec<u64>, Vec<u64>) {
    let ids = |additions: bool| {
        batch
            .changes()
            .iter()
            .filter(|c| c.is_addition == additions)
            .map(|c| c.key.generated_id().unwrap())
            .collect()
    };
    (ids(false), ids(true))
}

/// The `id` column of a row.
fn id(row: &Row) -> i64 {
    row.get("id").and_then(|v| v.as_int()).unwrap()
}

/// Applies a batch to a model of the table, checking that every retraction removes
/// the row the model holds and every insertion adds a new one.
fn fold(model: &mut BTreeMap<Key, Row>, batch: &ChangeBatch) {
    for change in batch.changes() {
        if change.is_addition {
            let before = model.insert(change.key.clone(), change.row.clone());
            assert!(before.is_none(), "{} inserted twice", change.key);
        } else {
            let before = model.remove(&change.key);
            assert_eq!(
                before.as_ref(),
                Some(&change.row),
                "retraction of {} that the fold does not hold",
                change.key
            );
        }
    }
}

fn table_rows(table: &intake_core::Table) -> BTreeMap<Key, Row> {
    table.snapshot().rows().iter().cloned().collect()
}

/// `retain_last(4)` keeps exactly the four newest rows after every commit, and each
/// commit retracts the rows it pushes out, oldest first; a row appended and pushed out
/// by the same commit appears in no batch.
#[tokio::test]
async fn retain_last_keeps_exactly_n_and_retracts_the_oldest_in_order() {
    let source = source_fn(|ctx: SourceContext| async move {
        send(&ctx, 1..=3).await?;
        send(&ctx, 4..=5).await?;
        send(&ctx, 6..=10).await?;
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let reader = Reader::json(lines())
        .autocommit_duration(Duration::from_secs(3600))
        .retain_last(4);
    let table = pipeline.read("logs", source, reader);
    let changes = table.changes();
    pipeline.run().await.unwrap();
    let batches: Vec<ChangeBatch> = changes.collect().await;
    let seen: Vec<_> = batches.iter().map(keys).collect();
    assert_eq!(
        seen,
        [
            (vec![], vec![1, 2, 3]),
            (vec![1], vec![4, 5]),
            (vec![2, 3, 4, 5], vec![7, 8, 9, 10]),
        ]
    );
    // The retractions carry the rows that left.
    let retracted: Vec<i64> = batches[2].retractions().map(|c| id(&c.row)).collect();
    assert_eq!(retracted, [2, 3, 4, 5]);
    assert_eq!(table.len(), 4);
    let kept: Vec<(u64, i64)> = table
        .snapshot()
        .rows()
        .iter()
        .map(|(k, r)| (k.generated_id().unwrap(), id(r)))
        .collect();
    assert_eq!(kept, [(7, 7), (8, 8), (9, 9), (10, 10)]);
    assert_eq!(table.stats().rows(), 4);
}

/// With `retain_for`, rows leave once their time is up even though no message
/// arrives: the table makes a commit of its own for them, within the reader's
/// autocommit duration after their deadline.
#[tokio::test(start_paused = true)]
async fn retain_for_expires_rows_without_new_input() {
    let start = Instant::now();
    let source = source_fn(|ctx: SourceContext| async move {
        send(&ctx, 1..=2).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        send(&ctx, [3]).await?;
        // Nothing more for a long while: only the table's own commits remove rows.
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let reader = Reader::json(lines())
        .autocommit_duration(Duration::from_millis(100))
        .retain_for(Duration::from_secs(2));
    let table = pipeline.read("logs", source, reader);
    let mut changes = table.changes();
    let running = tokio::spawn(pipeline.run());
    let mut timeline = Vec::new();
    for _ in 0..4 {
        let batch = changes.next().await.unwrap();
        timeline.push((start.elapsed(), keys(&batch), table.len()));
    }
    let ms = Duration::from_millis;
    assert_eq!(
        timeline,
        [
            (ms(0), (vec![], vec![1, 2]), 2),
            (ms(1000), (vec![], vec![3]), 3),
            // Two seconds after their commit, plus at most the autocommit duration.
            (ms(2100), (vec![1, 2], vec![]), 1),
            (ms(3100), (vec![3], vec![]), 0),
        ]
    );
    running.await.unwrap().unwrap();
    assert!(table.is_empty());
    assert!(changes.next().await.is_none(), "no further commits");
}

/// A regular commit removes expired rows too, so that a steady flow does not need
/// extra commits for expiry.
#[tokio::test(start_paused = true)]
async fn retain_for_expires_rows_in_the_commits_that_happen_anyway() {
    let start = Instant::now();
    let source = source_fn(|ctx: SourceContext| async move {
        for id in 1..=5u64 {
            send(&ctx, [id]).await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let reader = Reader::json(lines()).retain_for(Duration::from_millis(120));
    let table = pipeline.read("logs", source, reader);
    let changes = table.changes();
    pipeline.run().await.unwrap();
    let batches: Vec<_> = changes.map(|b| keys(&b)).collect().await;
    // Row n is committed at 50(n-1) ms and leaves with the first commit at least
    // 120 ms later; no commit is made for expiry alone.
    assert_eq!(
        batches,
        [
            (vec![], vec![1]),
            (vec![], vec![2]),
            (vec![], vec![3]),
            (vec![1], vec![4]),
            (vec![2], vec![5]),
        ]
    );
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    assert_eq!(table.len(), 3);
}

/// Collects what a sink is given.
struct Collect(Arc<Mutex<Vec<ChangeBatch>>>);

#[async_trait::async_trait]
impl Sink for Collect {
    async fn write_batch(&mut self, batch: &ChangeBatch) -> Result<(), BoxError> {
        self.0.lock().unwrap().push(batch.clone());
        Ok(())
    }
}

/// Under both bounds at once, folding every batch (of a stream, a late stream, a
/// callback subscriber and a sink) gives the table after every commit, and the table
/// never exceeds its count.
#[tokio::test(start_paused = true)]
async fn every_subscriber_folds_to_the_bounded_table() {
    const LIMIT: usize = 20;
    let (attach_tx, attach_rx) = tokio::sync::oneshot::channel::<()>();
    let source = source_fn(move |ctx: SourceContext| async move {
        let mut next = 1u64;
        let mut attach = Some(attach_tx);
        for commit in 0..60u64 {
            let count = (commit * 7) % 13;
            send(&ctx, next..next + count).await?;
            next += count;
            tokio::time::sleep(Duration::from_millis((commit * 37) % 500)).await;
            if commit == 30
                && let Some(attach) = attach.take()
            {
                let _ = attach.send(());
            }
        }
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let reader = Reader::json(lines())
        .retain_last(LIMIT)
        .retain_for(Duration::from_secs(1));
    let table = pipeline.read("logs", source, reader);
    let mut stream = table.changes();
    let folded = Arc::new(Mutex::new(BTreeMap::new()));
    let (by_callback, sunk) = (folded.clone(), Arc::new(Mutex::new(Vec::new())));
    table.subscribe(Subscriber::new().on_batch(move |batch: &ChangeBatch| {
        let mut model = by_callback.lock().unwrap();
        fold(&mut model, batch);
        assert!(model.len() <= LIMIT);
    }));
    table.sink("collect", Collect(sunk.clone()));
    let running = tokio::spawn(pipeline.run());

    let mut model = BTreeMap::new();
    let mut retractions = 0;
    let mut late = None;
    let mut attach_rx = Some(attach_rx);
    while let Some(batch) = stream.next().await {
        fold(&mut model, &batch);
        retractions += batch.retractions().count();
        assert!(model.len() <= LIMIT, "{} rows", model.len());
        if let Some(rx) = attach_rx.as_mut()
            && rx.try_recv().is_ok()
        {
            attach_rx = None;
            let mut stream = table.changes();
            late = Some(tokio::spawn(async move {
                let first = stream.next().await.expect("a snapshot");
                assert!(first.is_snapshot());
                let mut model = BTreeMap::new();
                fold(&mut model, &first);
                while let Some(batch) = stream.next().await {
                    fold(&mut model, &batch);
                }
                model
            }));
        }
    }
    running.await.unwrap().unwrap();
    let table_now = table_rows(&table);
    assert!(retractions > 0, "the bounds removed rows");
    assert_eq!(model, table_now, "stream");
    assert_eq!(*folded.lock().unwrap(), table_now, "callback subscriber");
    let mut by_sink = BTreeMap::new();
    for batch in sunk.lock().unwrap().iter() {
        fold(&mut by_sink, batch);
    }
    assert_eq!(by_sink, table_now, "sink");
    let late = late.expect("attached a late stream").await.unwrap();
    assert_eq!(late, table_now, "late stream");
}

/// With persistence, the retractions are stored: a restart restores the same bounded
/// table, and a restart under a smaller bound cuts the table down in a commit that is
/// itself stored.
#[tokio::test]
async fn a_restart_restores_the_bounded_table() {
    let dir = tempfile::tempdir().unwrap();
    let reader = |limit| {
        Reader::json(lines())
            .autocommit_duration(Duration::from_secs(3600))
            // Room for every commit: the stream is read after the run.
            .subscriber_capacity(64)
            .retain_last(limit)
    };
    let run = |limit, ids: Vec<u64>| {
        let dir = dir.path().to_owned();
        async move {
            let source = source_fn(move |ctx: SourceContext| async move {
                for id in ids {
                    send(&ctx, [id]).await?;
                }
                Ok(())
            });
            let mut pipeline = Pipeline::new().persist(Persistence::new(dir));
            let table = pipeline.read("logs", source, reader(limit));
            let changes = table.changes();
            pipeline.run().await.unwrap();
            let batches: Vec<ChangeBatch> = changes.collect().await;
            (table, batches)
        }
    };
    let generated = |table: &intake_core::Table| -> Vec<u64> {
        table
            .snapshot()
            .rows()
            .iter()
            .map(|(k, _)| k.generated_id().unwrap())
            .collect()
    };

    let (first, _) = run(3, (1..=10).collect()).await;
    assert_eq!(generated(&first), [8, 9, 10]);
    let before = table_rows(&first);
    drop(first);

    let (restored, batches) = run(3, vec![]).await;
    assert_eq!(table_rows(&restored), before);
    assert_eq!(batches.len(), 1, "only the restored snapshot");
    drop(restored);

    // A smaller bound: the restored table is cut at start, in a commit of its own.
    let (cut, batches) = run(2, vec![]).await;
    assert_eq!(generated(&cut), [9, 10]);
    assert_eq!(keys(batches.last().unwrap()), (vec![8], vec![]));
    drop(cut);
    let (again, _) = run(5, vec![11]).await;
    assert_eq!(generated(&again), [9, 10, 11], "the cut was stored; keys go on");
}

/// With persistence and a time to live, restored rows count as added at the restart
/// and expire a time to live later, with no input.
#[tokio::test(start_paused = true)]
async fn restored_rows_expire_a_time_to_live_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let reader = || {
        Reader::json(lines())
            .autocommit_duration(Duration::from_millis(100))
            .retain_for(Duration::from_secs(5))
    };
    let mut pipeline = Pipeline::new().persist(Persistence::new(dir.path()));
    let source = source_fn(|ctx: SourceContext| async move { send(&ctx, 1..=3).await });
    let table = pipeline.read("logs", source, reader());
    pipeline.run().await.unwrap();
    assert_eq!(table.len(), 3);
    drop(table);

    let start = Instant::now();
    let mut pipeline = Pipeline::new().persist(Persistence::new(dir.path()));
    let idle = source_fn(|_ctx: SourceContext| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(())
    });
    let table = pipeline.read("logs", idle, reader());
    let mut changes = table.changes();
    let running = tokio::spawn(pipeline.run());
    assert!(changes.next().await.unwrap().is_snapshot());
    let expired = changes.next().await.unwrap();
    let elapsed = start.elapsed();
    assert_eq!(keys(&expired), (vec![1, 2, 3], vec![]));
    assert!(
        (Duration::from_secs(5)..=Duration::from_millis(5200)).contains(&elapsed),
        "{elapsed:?}"
    );
    running.await.unwrap().unwrap();
    assert!(table.is_empty());
}

/// `keep_rows(false)`: every appended row reaches subscribers and sinks as an
/// insertion, the table stays empty, and a stream attached late gets no snapshot.
#[tokio::test]
async fn a_table_that_keeps_no_rows_delivers_every_change() {
    let (attach_tx, attach_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let source = source_fn(move |ctx: SourceContext| async move {
        send(&ctx, 1..=500).await?;
        let _ = attach_tx.send(());
        let _ = go_rx.await;
        send(&ctx, 501..=1000).await?;
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let reader = Reader::json(lines())
        .autocommit_duration(Duration::from_secs(3600))
        .keep_rows(false);
    let table = pipeline.read("logs", source, reader);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (into, observed) = (seen.clone(), table.clone());
    table.subscribe(Subscriber::new().on_change(move |key, row, _time, is_addition| {
        assert!(is_addition, "nothing is ever retracted");
        assert_eq!(key.generated_id().unwrap() as i64, id(row));
        assert_eq!(observed.len(), 0);
        into.lock().unwrap().push(key.generated_id().unwrap());
    }));
    let sunk = Arc::new(Mutex::new(Vec::new()));
    table.sink("collect", Collect(sunk.clone()));
    let running = tokio::spawn(pipeline.run());

    attach_rx.await.unwrap();
    table.wait_for(|t| t.time().is_some()).await.unwrap();
    assert_eq!(table.len(), 0);
    assert!(table.get(&Key::generated(1)).is_none());
    assert!(table.snapshot().is_empty());
    let mut late = table.changes();
    go_tx.send(()).unwrap();
    let first = late.next().await.unwrap();
    assert!(!first.is_snapshot(), "a late stream gets no snapshot");
    assert_eq!(keys(&first), (vec![], (501..=1000).collect()));
    assert!(late.next().await.is_none());
    running.await.unwrap().unwrap();

    assert_eq!(*seen.lock().unwrap(), (1..=1000).collect::<Vec<u64>>());
    let sunk: Vec<u64> = sunk.lock().unwrap().iter().flat_map(|b| keys(b).1).collect();
    assert_eq!(sunk, (1..=1000).collect::<Vec<u64>>());
    assert!(table.is_empty());
    let stats = table.stats();
    assert_eq!(
        (stats.rows(), stats.messages(), stats.changes(), stats.commits()),
        (0, 1000, 1000, 2)
    );
}

/// The message of the panic `f` raises.
fn panic_of(f: impl FnOnce()) -> String {
    let panic = std::panic::catch_unwind(AssertUnwindSafe(f)).expect_err("should refuse");
    match panic.downcast::<String>() {
        Ok(message) => *message,
        Err(panic) => panic.downcast::<&str>().map(|m| m.to_string()).unwrap(),
    }
}

/// The combinations that make no sense are refused at configuration time, with the
/// documented messages.
#[test]
fn refused_combinations_say_why() {
    let keyed_refusal =
        "applies only to tables without a primary key (append tables), but the schema has one";
    for (setting, refuse) in [
        (
            "retain_last",
            Box::new(|| drop(Reader::json(keyed()).retain_last(10))) as Box<dyn FnOnce()>,
        ),
        (
            "retain_for",
            Box::new(|| drop(Reader::json(keyed()).retain_for(Duration::from_secs(1)))),
        ),
        (
            "keep_rows(false)",
            Box::new(|| drop(Reader::json(keyed()).keep_rows(false))),
        ),
    ] {
        let message = panic_of(refuse);
        assert!(
            message.starts_with(&format!("{setting} {keyed_refusal}")),
            "{message}"
        );
    }
    assert!(panic_of(|| drop(Reader::raw().retain_last(0))).contains("to keep none, use keep_rows(false)"));
    assert!(panic_of(|| drop(Reader::raw().retain_for(Duration::ZERO))).contains("must be positive"));
    assert!(
        panic_of(|| drop(Reader::raw().retain_last(5).keep_rows(false)))
            .contains("cannot be combined with retain_last or retain_for")
    );
    assert!(
        panic_of(|| drop(Reader::raw().keep_rows(false).retain_for(Duration::from_secs(1))))
            .contains("has no effect on a reader with keep_rows(false)")
    );
    // A keyed table keeps its rows, as it always did.
    drop(Reader::json(keyed()).keep_rows(true));

    let dir = tempfile::tempdir().unwrap();
    let idle = || source_fn(|_ctx: SourceContext| async { Ok(()) });
    let expected = "table `logs` keeps no rows (Reader::keep_rows(false)), which persistence cannot restore";
    let message = panic_of(|| {
        let mut pipeline = Pipeline::new().persist(Persistence::new(dir.path()));
        let _ = pipeline.read("logs", idle(), Reader::raw().keep_rows(false));
    });
    assert!(message.starts_with(expected), "{message}");
    let message = panic_of(|| {
        let mut pipeline = Pipeline::new();
        let _ = pipeline.read("logs", idle(), Reader::raw().keep_rows(false));
        let _ = pipeline.persist(Persistence::new(dir.path()));
    });
    assert!(message.starts_with(expected), "{message}");
    // Retention bounds and persistence go together.
    let mut pipeline = Pipeline::new().persist(Persistence::new(dir.path()));
    let _ = pipeline.read("logs", idle(), Reader::raw().retain_last(5));
}

/// The same on the multi-threaded runtime, with commits large enough to be applied
/// under `block_in_place`: every stream folds to the table, which holds exactly the
/// newest rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_commits_on_the_multi_threaded_runtime_fold_to_the_table() {
    const LIMIT: usize = 1_000;
    let source = source_fn(|ctx: SourceContext| async move {
        let mut next = 1u64;
        for commit in 0..40u64 {
            let count = 1 + (commit * 211) % 997;
            send(&ctx, next..next + count).await?;
            next += count;
        }
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("logs", source, Reader::json(lines()).retain_last(LIMIT));
    let mut stream = table.changes();
    let folding = tokio::spawn(async move {
        let mut model = BTreeMap::new();
        while let Some(batch) = stream.next().await {
            fold(&mut model, &batch);
            assert!(model.len() <= LIMIT);
        }
        model
    });
    pipeline.run().await.unwrap();
    let model = folding.await.unwrap();
    assert_eq!(model, table_rows(&table));
    assert_eq!(table.len(), LIMIT);
    let last = model.keys().filter_map(Key::generated_id).max().unwrap();
    let first = model.keys().filter_map(Key::generated_id).min().unwrap();
    assert_eq!(last - first + 1, LIMIT as u64, "the newest rows, without gaps");
}

/// Commits less than `ttl / 1024` apart share one arrival time, the later one, so
/// that the table keeps few timestamps: their rows leave together, never early.
#[tokio::test(start_paused = true)]
async fn close_commits_share_an_arrival_time() {
    let start = Instant::now();
    let source = source_fn(|ctx: SourceContext| async move {
        for id in 1..=5u64 {
            send(&ctx, [id]).await?;
            let pause = if id == 3 { 200 } else { 4 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        tokio::time::sleep(Duration::from_secs(20)).await;
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    // A 1,024th of the time to live is 10 ms.
    let reader = Reader::json(lines()).retain_for(Duration::from_millis(10_240));
    let table = pipeline.read("logs", source, reader);
    let mut changes = table.changes();
    let running = tokio::spawn(pipeline.run());
    let mut retractions = Vec::new();
    while let Some(batch) = changes.next().await {
        if batch.retractions().count() > 0 {
            retractions.push((start.elapsed(), keys(&batch).0));
        }
    }
    running.await.unwrap().unwrap();
    let ms = Duration::from_millis;
    assert_eq!(
        retractions,
        [
            // Rows of 0, 4 and 8 ms carry 8 ms (and leave a grace of 100 ms after
            // their deadline, without input); those of 208 and 212 ms carry 212 ms.
            (ms(8 + 10_240 + 100), vec![1, 2, 3]),
            (ms(212 + 10_240 + 100), vec![4, 5]),
        ]
    );
}
