//! `batch_async`: timer from the first item, count and weight bounds, boundaries, the
//! remainder at end of stream, and draining. Timer tests run on a paused clock.

use std::pin::Pin;
use std::time::Duration;

use futures::{SinkExt, StreamExt, stream};
use intake::batch_async;
use proptest::prelude::*;
use tokio::time::{Instant, advance};

const TIMEOUT: Duration = Duration::from_millis(100);

/// Polls once without blocking: `Some(batch)` if one is ready.
async fn try_next<S: futures::Stream + Unpin>(s: &mut S) -> Option<Option<S::Item>> {
    futures::FutureExt::now_or_never(s.next())
}

#[tokio::test(start_paused = true)]
async fn timer_starts_at_the_first_item_of_a_batch() {
    let (mut tx, rx) = futures::channel::mpsc::channel::<u32>(16);
    let mut batches = batch_async(rx, TIMEOUT, 10);

    // An idle stream produces nothing, however long it is idle.
    advance(Duration::from_secs(5)).await;
    assert_eq!(try_next(&mut batches).await, None);

    tx.send(1).await.unwrap();
    assert_eq!(try_next(&mut batches).await, None, "one item, timer just started");
    advance(Duration::from_millis(60)).await;
    tx.send(2).await.unwrap();
    assert_eq!(try_next(&mut batches).await, None);
    // 100 ms after the *first* item, not the last.
    let started = Instant::now();
    let batch = batches.next().await.unwrap();
    assert_eq!(batch, vec![1, 2]);
    assert_eq!(started.elapsed(), Duration::from_millis(40));

    // The next batch gets a fresh timer from its own first item.
    advance(Duration::from_millis(500)).await;
    tx.send(3).await.unwrap();
    let started = Instant::now();
    assert_eq!(batches.next().await.unwrap(), vec![3]);
    assert_eq!(started.elapsed(), TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn full_batches_go_out_without_waiting() {
    let started = Instant::now();
    let batches: Vec<Vec<u32>> = batch_async(stream::iter(0..7), TIMEOUT, 3).collect().await;
    assert_eq!(batches, vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]]);
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "end of stream flushes the remainder at once"
    );
}

#[tokio::test(start_paused = true)]
async fn the_remainder_is_emitted_when_the_stream_ends() {
    let (mut tx, rx) = futures::channel::mpsc::channel::<u32>(16);
    let mut batches = batch_async(rx, TIMEOUT, 10);
    tx.send(1).await.unwrap();
    tx.send(2).await.unwrap();
    drop(tx);
    assert_eq!(batches.next().await, Some(vec![1, 2]));
    assert_eq!(batches.next().await, None);
    assert_eq!(batches.next().await, None, "stays ended");
}

#[tokio::test(start_paused = true)]
async fn an_empty_stream_yields_no_batch() {
    let batches: Vec<Vec<u32>> = batch_async(stream::empty(), TIMEOUT, 3).collect().await;
    assert!(batches.is_empty());
}

#[tokio::test(start_paused = true)]
async fn boundaries_end_a_batch_after_the_marked_item() {
    let items = stream::iter(["a", "COMMIT", "b", "c", "COMMIT", "COMMIT", "d"]);
    let batches: Vec<Vec<&str>> = batch_async(items, TIMEOUT, 100)
        .flush_after(|item| *item == "COMMIT")
        .collect()
        .await;
    assert_eq!(
        batches,
        vec![
            vec!["a", "COMMIT"],
            vec!["b", "c", "COMMIT"],
            vec!["COMMIT"],
            vec!["d"]
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn drain_hands_over_what_is_held() {
    let (mut tx, rx) = futures::channel::mpsc::channel::<u32>(16);
    let mut batches = batch_async(rx, TIMEOUT, 10);
    tx.send(1).await.unwrap();
    tx.send(2).await.unwrap();
    assert_eq!(try_next(&mut batches).await, None);
    assert_eq!(batches.pending(), 2);
    assert_eq!(Pin::new(&mut batches).drain(), vec![1, 2]);
    assert_eq!(batches.pending(), 0);
    // Nothing is emitted twice, and the timer of the drained batch does not fire an
    // empty batch.
    advance(TIMEOUT * 3).await;
    assert_eq!(try_next(&mut batches).await, None);
    tx.send(3).await.unwrap();
    drop(tx);
    assert_eq!(batches.next().await, Some(vec![3]));
    assert_eq!(batches.next().await, None);
}

#[tokio::test(start_paused = true)]
async fn the_source_keeps_running_between_batches() {
    // Unlike a batcher that blocks its worker for the timeout, the producer is never
    // frozen: items sent while nobody polls the batches are all there later.
    let (mut tx, rx) = futures::channel::mpsc::channel::<u32>(64);
    let producer = tokio::spawn(async move {
        for i in 0..50 {
            tx.send(i).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let mut batches = batch_async(rx, TIMEOUT, 1000);
    let mut seen = Vec::new();
    while let Some(batch) = batches.next().await {
        seen.extend(batch);
    }
    producer.await.unwrap();
    assert_eq!(seen, (0..50).collect::<Vec<_>>());
}

/// One step of a generated input: an item with its weight, or a pause.
#[derive(Debug, Clone)]
enum Step {
    Item(u16),
    Pause(u64),
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            4 => (1u16..40).prop_map(Step::Item),
            1 => (1u64..250).prop_map(Step::Pause),
        ],
        0..120,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Concatenated batches equal the input, in order; no batch is empty; every batch
    /// respects the count bound and the weight bound (or is a single heavy item); and no
    /// batch is older than the timeout when it is emitted.
    #[test]
    fn batches_partition_the_input_within_bounds(steps in steps(), max_count in 1usize..12, max_weight in 10usize..80) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        runtime.block_on(async move {
            let input: Vec<u16> = steps.iter().filter_map(|s| match s { Step::Item(w) => Some(*w), Step::Pause(_) => None }).collect();
            let (mut tx, rx) = futures::channel::mpsc::unbounded::<(u16, Instant)>();
            let feeder = tokio::spawn(async move {
                for step in steps {
                    match step {
                        Step::Item(w) => tx.send((w, Instant::now())).await.unwrap(),
                        Step::Pause(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                    }
                }
            });
            let mut batches = batch_async(rx, TIMEOUT, max_count).max_weight(max_weight, |(w, _)| usize::from(*w));
            let mut output = Vec::new();
            while let Some(batch) = batches.next().await {
                prop_assert!(!batch.is_empty());
                prop_assert!(batch.len() <= max_count);
                let weight: usize = batch.iter().map(|(w, _)| usize::from(*w)).sum();
                prop_assert!(weight <= max_weight || batch.len() == 1, "weight {} > {}", weight, max_weight);
                let oldest = batch[0].1;
                prop_assert!(oldest.elapsed() <= TIMEOUT, "batch waited {:?}", oldest.elapsed());
                output.extend(batch.into_iter().map(|(w, _)| w));
            }
            feeder.await.unwrap();
            prop_assert_eq!(output, input);
            Ok(())
        })?;
    }
}
