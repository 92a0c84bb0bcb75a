//! Lifetimes and shutdown: what ends a pipeline, what it waits for, and what obeys the
//! shutdown deadline. Each test is named after the hang or loss it pins.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use intake::{
    BoxError, ChangeBatch, Column, DataType, Pipeline, Reader, Schema, SendError, Source, SourceContext,
    Subscriber, source_fn,
};
use tokio::time::Instant;

fn schema() -> Schema {
    Schema::new([
        Column::new("key", DataType::Int).primary_key(),
        Column::new("value", DataType::String),
    ])
    .unwrap()
}

fn row(key: u64) -> String {
    serde_json::json!({ "key": key, "value": "v" }).to_string()
}

/// A bound on how long a test may wait for something that must happen; on the paused
/// clock it costs nothing unless the thing never happens.
const NEVER: Duration = Duration::from_secs(3600);

/// Sends a row every millisecond until shutdown; counts what it sent.
fn endless(sent: Arc<AtomicU64>) -> impl Source {
    source_fn(move |ctx: SourceContext| async move {
        let mut key = 0;
        loop {
            match ctx.next_str(row(key % 10)).await {
                Ok(()) => {
                    key += 1;
                    sent.store(key, Ordering::SeqCst);
                }
                Err(SendError::ShuttingDown) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
}

/// A subscriber that records its changes and whether `on_end` ran.
fn recorder() -> (Subscriber, Arc<AtomicU64>, Arc<AtomicBool>) {
    let changes = Arc::new(AtomicU64::new(0));
    let ended = Arc::new(AtomicBool::new(false));
    let subscriber = Subscriber::new()
        .on_change({
            let changes = changes.clone();
            move |_, _, _, _| {
                changes.fetch_add(1, Ordering::SeqCst);
            }
        })
        .on_end({
            let ended = ended.clone();
            move || ended.store(true, Ordering::SeqCst)
        });
    (subscriber, changes, ended)
}

/// A sink that records whether it was closed.
struct ClosedFlag(Arc<AtomicBool>);

#[async_trait::async_trait]
impl intake::Sink for ClosedFlag {
    async fn write_batch(&mut self, _: &ChangeBatch) -> Result<(), BoxError> {
        Ok(())
    }

    async fn close(&mut self) -> Result<(), BoxError> {
        self.0.store(true, Ordering::SeqCst);
        Ok(())
    }
}

async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + NEVER;
    while !condition() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Regression: a clone of the context held by a helper task (the cleanup pattern
/// `ctx.clone().cancelled().await`) kept the table open, so `run` never returned.
#[tokio::test(start_paused = true)]
async fn a_context_clone_left_in_a_helper_task_does_not_keep_the_pipeline_running() {
    let source = source_fn(|ctx: SourceContext| async move {
        let watcher = ctx.clone();
        tokio::spawn(async move {
            watcher.cancelled().await;
        });
        ctx.next_str(row(1)).await?;
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("t", source, Reader::json(schema()));
    tokio::time::timeout(NEVER, pipeline.run())
        .await
        .expect("run returns once the source's run has returned")
        .unwrap();
    assert_eq!(table.len(), 1);
}

/// Regression: dropping the `run` future (what `select!` with Ctrl-C does) aborted
/// sources and drivers: tables never ended, streams waited forever, and neither
/// `on_end` nor `Sink::close` ran.
#[tokio::test(start_paused = true)]
async fn dropping_the_run_future_shuts_the_pipeline_down_gracefully() {
    let sent = Arc::new(AtomicU64::new(0));
    let stopped = Arc::new(AtomicBool::new(false));
    let source = {
        struct WithStop<S>(S, Arc<AtomicBool>);
        #[async_trait::async_trait]
        impl<S: Source> Source for WithStop<S> {
            async fn run(&mut self, ctx: SourceContext) -> Result<(), BoxError> {
                self.0.run(ctx).await
            }
            async fn on_stop(&mut self) {
                self.1.store(true, Ordering::SeqCst);
            }
        }
        WithStop(endless(sent.clone()), stopped.clone())
    };
    let mut pipeline = Pipeline::new();
    let table = pipeline.read(
        "t",
        source,
        Reader::json(schema()).autocommit_duration(Duration::from_millis(5)),
    );
    let (subscriber, changes, ended) = recorder();
    table.subscribe(subscriber);
    let closed = Arc::new(AtomicBool::new(false));
    table.sink("flag", ClosedFlag(closed.clone()));
    let stream = table.changes();

    tokio::select! {
        _ = pipeline.run() => panic!("an endless source does not end by itself"),
        () = tokio::time::sleep(Duration::from_millis(50)) => {}
    }

    let batches = tokio::time::timeout(NEVER, stream.collect::<Vec<_>>())
        .await
        .expect("the change stream ends");
    assert!(!batches.is_empty());
    eventually("on_end ran", || ended.load(Ordering::SeqCst)).await;
    eventually("the sink was closed", || closed.load(Ordering::SeqCst)).await;
    eventually("on_stop ran", || stopped.load(Ordering::SeqCst)).await;
    let total: usize = batches.iter().map(ChangeBatch::len).sum();
    assert_eq!(
        changes.load(Ordering::SeqCst),
        total as u64,
        "the subscriber saw every commit the stream saw"
    );
    assert_eq!(table.len(), 10);
}

/// `run_until` returns only after the graceful shutdown is complete.
#[tokio::test(start_paused = true)]
async fn run_until_a_signal_returns_after_every_subscriber_ended() {
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("t", endless(Arc::default()), Reader::json(schema()));
    let (subscriber, changes, ended) = recorder();
    table.subscribe(subscriber);
    let closed = Arc::new(AtomicBool::new(false));
    table.sink("flag", ClosedFlag(closed.clone()));
    let start = Instant::now();
    pipeline
        .run_until(tokio::time::sleep(Duration::from_millis(30)))
        .await
        .unwrap();
    assert!(start.elapsed() < Duration::from_millis(40));
    assert!(
        ended.load(Ordering::SeqCst),
        "on_end ran before run_until returned"
    );
    assert!(
        closed.load(Ordering::SeqCst),
        "the sink closed before run_until returned"
    );
    assert!(changes.load(Ordering::SeqCst) >= 10);
}

/// Regression: `on_stop` was not bounded by the shutdown timeout, so a hanging one
/// kept `run` running.
#[tokio::test(start_paused = true)]
async fn a_hanging_on_stop_is_dropped_at_the_shutdown_deadline() {
    struct HangsOnStop;
    #[async_trait::async_trait]
    impl Source for HangsOnStop {
        async fn run(&mut self, ctx: SourceContext) -> Result<(), BoxError> {
            ctx.next_str(row(1)).await?;
            ctx.cancelled().await;
            Ok(())
        }
        async fn on_stop(&mut self) {
            std::future::pending::<()>().await;
        }
    }
    let mut pipeline = Pipeline::new().shutdown_timeout(Duration::from_secs(2));
    let table = pipeline.read("t", HangsOnStop, Reader::json(schema()));
    let (subscriber, _, ended) = recorder();
    table.subscribe(subscriber);
    let start = Instant::now();
    tokio::time::timeout(
        NEVER,
        pipeline.run_until(tokio::time::sleep(Duration::from_millis(10))),
    )
    .await
    .expect("run returns at the deadline")
    .unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(10) + Duration::from_secs(2)
    );
    assert!(ended.load(Ordering::SeqCst));
    assert_eq!(
        table.len(),
        1,
        "the table committed before on_stop was given up on"
    );
}

/// Regression: `on_end` was skipped after a callback panicked, though it is promised
/// exactly once.
#[tokio::test]
async fn on_end_runs_once_even_after_a_callback_panicked() {
    let ends = Arc::new(AtomicU64::new(0));
    let source = source_fn(|ctx: SourceContext| async move {
        ctx.next_str(row(1)).await?;
        ctx.commit().await?;
        ctx.next_str(row(2)).await?;
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("t", source, Reader::json(schema()));
    let seen = Arc::new(AtomicU64::new(0));
    table.subscribe(
        Subscriber::new()
            .on_change({
                let seen = seen.clone();
                move |_, _, _, _| {
                    seen.fetch_add(1, Ordering::SeqCst);
                    panic!("callback bug");
                }
            })
            .on_end({
                let ends = ends.clone();
                move || {
                    ends.fetch_add(1, Ordering::SeqCst);
                }
            }),
    );
    let error = pipeline.run().await.unwrap_err();
    assert!(error.to_string().contains("callback bug"), "{error}");
    assert_eq!(seen.load(Ordering::SeqCst), 1, "no changes after the panic");
    assert_eq!(ends.load(Ordering::SeqCst), 1);
}

/// Regression: after the shutdown deadline, every delivery raced the deadline in an
/// unbiased `select!`, so a subscriber that kept up lost about half of the remaining
/// commits. Only a subscriber that stopped reading may be cut off, and its
/// stream says so.
#[tokio::test(start_paused = true)]
async fn after_the_deadline_subscribers_that_keep_up_get_every_commit() {
    const ROWS: u64 = 50;
    let source = source_fn(|ctx: SourceContext| async move {
        for key in 0..ROWS {
            ctx.next_str(row(key)).await?;
        }
        ctx.cancelled().await;
        Ok(())
    });
    let reader = Reader::json(schema())
        .max_batch_size(1)
        .channel_capacity(64)
        .subscriber_capacity(2);
    let mut pipeline = Pipeline::new().shutdown_timeout(Duration::from_secs(1));
    let table = pipeline.read("t", source, reader);
    let (subscriber, changes, ended) = recorder();
    table.subscribe(subscriber);
    let mut stalled = table.changes();
    let batches = Arc::new(Mutex::new(Vec::new()));
    let collector = tokio::spawn({
        let batches = batches.clone();
        let mut stream = table.changes();
        async move {
            while let Some(batch) = stream.next().await {
                batches.lock().unwrap().push(batch.len());
            }
            stream.is_cut_off()
        }
    });
    pipeline
        .run_until(tokio::time::sleep(Duration::from_millis(10)))
        .await
        .unwrap();

    assert_eq!(
        changes.load(Ordering::SeqCst),
        ROWS,
        "the callback subscriber got every commit"
    );
    assert!(ended.load(Ordering::SeqCst));
    assert!(
        !collector.await.unwrap(),
        "the stream that kept up was not cut off"
    );
    assert_eq!(batches.lock().unwrap().len() as u64, ROWS);
    let mut taken = 0;
    while stalled.next().await.is_some() {
        taken += 1;
    }
    assert_eq!(taken, 2, "the stalled stream holds what fit in its queue");
    assert!(stalled.is_cut_off(), "the stalled stream is told it was cut off");
}

/// Regression: on the skip path, a send counted and logged bad input before awaiting
/// room in a full rejected stream, so a send dropped there (by a timeout or `select!`)
/// was counted and never reported. Reporting is synchronous now: a send either has
/// counted and reported (or counted as missed) its bad input, or has done nothing.
#[tokio::test(start_paused = true)]
async fn a_send_of_bad_input_cut_short_is_never_counted_without_being_reported() {
    let source = source_fn(|ctx: SourceContext| async move {
        for bad in ["not json", "also not json", "still not json"] {
            tokio::time::timeout(Duration::from_millis(1), ctx.next_str(bad))
                .await
                .expect("reporting bad input never waits")?;
        }
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read(
        "t",
        source,
        Reader::json(schema()).error_policy(intake::ErrorPolicy::SkipAndReport),
    );
    let rejected = pipeline.rejected(1);
    pipeline.run().await.unwrap();
    let missed = rejected.missed();
    let delivered: Vec<_> = rejected.collect().await;
    assert_eq!(&delivered[0].raw()[..], b"not json");
    assert_eq!(table.stats().rejected(), 3);
    assert_eq!(
        delivered.len() as u64 + missed,
        3,
        "every counted report was delivered or counted as missed"
    );
}

/// `ChangeStream` and `RejectedStream` are cancel safe: a `next()` dropped before it
/// completes loses nothing.
#[tokio::test]
async fn change_and_rejected_streams_lose_nothing_when_next_is_dropped() {
    const COMMITS: u64 = 200;
    let source = source_fn(|ctx: SourceContext| async move {
        for key in 0..COMMITS {
            ctx.next_str(row(key)).await?;
            ctx.next_str("not json").await?;
            ctx.commit().await?;
            tokio::task::yield_now().await;
        }
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read(
        "t",
        source,
        Reader::json(schema()).error_policy(intake::ErrorPolicy::SkipAndReport),
    );
    let mut changes = table.changes();
    let mut rejected = pipeline.rejected(COMMITS as usize);
    let running = tokio::spawn(pipeline.run());
    let (mut batches, mut reports) = (0, 0);
    let (mut changes_done, mut rejected_done) = (false, false);
    while !(changes_done && rejected_done) {
        // Each poll that finds nothing ready is dropped at once.
        match tokio::time::timeout(Duration::ZERO, changes.next()).await {
            Ok(Some(_)) => batches += 1,
            Ok(None) => changes_done = true,
            Err(_) => {}
        }
        match tokio::time::timeout(Duration::ZERO, rejected.next()).await {
            Ok(Some(_)) => reports += 1,
            Ok(None) => rejected_done = true,
            Err(_) => {}
        }
        tokio::task::yield_now().await;
    }
    running.await.unwrap().unwrap();
    assert_eq!(batches, COMMITS);
    assert_eq!(reports, COMMITS);
}

/// Regression: a sink's task was not bounded by the shutdown deadline, so a sink hung
/// in `write_batch` kept `run` from returning; and a sink disconnected at the deadline
/// closed as if it had written everything. Both are reported now.
#[tokio::test(start_paused = true)]
async fn a_sink_hung_at_the_shutdown_deadline_is_dropped_and_reported() {
    struct Hangs;
    #[async_trait::async_trait]
    impl intake::Sink for Hangs {
        async fn write_batch(&mut self, _: &ChangeBatch) -> Result<(), BoxError> {
            std::future::pending().await
        }
    }
    let mut pipeline = Pipeline::new().shutdown_timeout(Duration::from_secs(1));
    let table = pipeline.read(
        "t",
        endless(Arc::default()),
        Reader::json(schema())
            .max_batch_size(1)
            .channel_capacity(1)
            .subscriber_capacity(1),
    );
    table.sink("stuck", Hangs);
    let start = Instant::now();
    let error = tokio::time::timeout(
        NEVER,
        pipeline.run_until(tokio::time::sleep(Duration::from_millis(10))),
    )
    .await
    .expect("run returns after the deadline")
    .unwrap_err();
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(10) + Duration::from_secs(1) + Duration::from_millis(100)
    );
    assert!(
        matches!(&error, intake::Error::SinkFailed { name, .. } if name == "stuck"),
        "{error}"
    );
    assert!(error.to_string().contains("shutdown deadline"), "{error}");
}
