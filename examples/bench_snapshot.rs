//! Readers against ingestion: commit latency of a 1,000,000-row keyed table while
//! another thread takes `Table::snapshot()` in a loop, against the same load with no
//! reader.
//!
//! A source first fills the table with 1,000,000 rows (or ROWS) `{"key": k, "value": 0, "sent": t}`
//! as fast as it can, then updates keys spread over the whole table at a steady 100,000
//! messages per second (bursts of 100 every millisecond) for the given number of
//! seconds, with the default autocommit of 100 ms. An `on_batch` subscriber takes, for
//! every insertion of the update phase, the time from the message's `send` to the
//! callback. A commit falls due 100 ms after its first message, so the oldest message
//! of a commit waits about 100 ms by design; what a snapshot adds shows above that.
//!
//! Two rounds in one process: without a reader, then with a thread calling
//! `snapshot()` back to back for the whole update phase (it also reports how long a
//! snapshot takes on the reader's side).
//!
//! Run with:
//!
//! ```text
//! cargo run --release --example bench_snapshot [-- SECONDS [ROWS]]
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use intake::{Column, DataType, Pipeline, Reader, Schema, Subscriber, Table, source_fn};

const RATE: u64 = 100_000;
const BURST: u64 = 100;

struct Round {
    latencies: Vec<u64>,
    snapshots: Vec<Duration>,
}

fn main() -> anyhow::Result<()> {
    let seconds: u64 = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 10,
    };
    let rows: u64 = match std::env::args().nth(2) {
        Some(arg) => arg.parse()?,
        None => 1_000_000,
    };
    println!(
        "{rows} rows, updates at {RATE} msgs/s for {seconds} s, autocommit {} ms",
        Reader::DEFAULT_AUTOCOMMIT.as_millis()
    );
    println!(
        "| reader | updates | p50 | p99 | p99.9 | max | snapshots taken | snapshot time (median, max) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for snapshot_loop in [false, true] {
        let round = round(seconds, rows, snapshot_loop)?;
        print(&round, snapshot_loop);
    }
    Ok(())
}

fn round(seconds: u64, rows: u64, snapshot_loop: bool) -> anyhow::Result<Round> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let _entered = runtime.enter();
    let schema = Schema::new([
        Column::new("key", DataType::Int).primary_key(),
        Column::new("value", DataType::Int),
        Column::new("sent", DataType::Int),
    ])?;
    let start = Instant::now();
    // Set by the source when the table is full and the update phase begins.
    let updating = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let (updating_at_source, done_at_source) = (updating.clone(), done.clone());
    let source = source_fn(move |ctx| async move {
        for key in 0..rows {
            ctx.next_str(format!(r#"{{"key": {key}, "value": 0, "sent": 0}}"#))
                .await?;
        }
        // Let the fill's commits be applied before measuring.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        updating_at_source.store(true, Ordering::Release);
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let total = RATE * seconds;
        let mut i = 0u64;
        while i < total {
            tick.tick().await;
            for _ in 0..BURST {
                // A stride coprime with ROWS spreads the updates over the whole table.
                let key = (i * 7919) % rows;
                let sent = start.elapsed().as_nanos() as u64;
                ctx.next_str(format!(r#"{{"key": {key}, "value": {i}, "sent": {sent}}}"#))
                    .await?;
                i += 1;
            }
        }
        done_at_source.store(true, Ordering::Release);
        Ok(())
    });
    let latencies = Arc::new(Mutex::new(Vec::with_capacity((RATE * seconds) as usize)));
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("snapshot", source, Reader::json(schema));
    let seen = latencies.clone();
    table.subscribe(Subscriber::new().on_batch(move |batch| {
        let now = start.elapsed().as_nanos() as u64;
        let mut seen = seen.lock().expect("not poisoned");
        for change in batch.insertions() {
            match change.row["sent"].as_int() {
                Some(sent) if sent > 0 => seen.push(now.saturating_sub(sent as u64)),
                _ => {}
            }
        }
    }));
    let reader = snapshot_loop.then(|| {
        let (table, updating, done) = (table.clone(), updating.clone(), done.clone());
        std::thread::spawn(move || snapshots(&table, rows, &updating, &done))
    });
    runtime.block_on(pipeline.run())?;
    let snapshots = match reader {
        Some(reader) => reader
            .join()
            .map_err(|_| anyhow::anyhow!("the reader panicked"))?,
        None => Vec::new(),
    };
    let latencies = std::mem::take(&mut *latencies.lock().expect("not poisoned"));
    anyhow::ensure!(!latencies.is_empty(), "no update arrived");
    Ok(Round { latencies, snapshots })
}

/// Takes snapshots back to back during the update phase; returns how long each took.
fn snapshots(table: &Table, rows: u64, updating: &AtomicBool, done: &AtomicBool) -> Vec<Duration> {
    while !updating.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut taken = Vec::new();
    while !done.load(Ordering::Acquire) {
        let start = Instant::now();
        let snapshot = table.snapshot();
        taken.push(start.elapsed());
        assert_eq!(snapshot.len() as u64, rows, "a snapshot lost rows");
    }
    taken
}

fn print(round: &Round, snapshot_loop: bool) {
    let mut latencies = round.latencies.clone();
    latencies.sort_unstable();
    let at = |q: f64| {
        let index = ((latencies.len() as f64 * q) as usize).min(latencies.len() - 1);
        latencies[index] as f64 / 1e6
    };
    let mut snapshots = round.snapshots.clone();
    snapshots.sort_unstable();
    let snapshot_times = match (snapshots.get(snapshots.len() / 2), snapshots.last()) {
        (Some(median), Some(max)) => format!(
            "{:.1} ms, {:.1} ms",
            median.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        ),
        _ => "-".to_owned(),
    };
    println!(
        "| {} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {} | {} |",
        if snapshot_loop { "snapshot loop" } else { "none" },
        latencies.len(),
        at(0.50),
        at(0.99),
        at(0.999),
        latencies[latencies.len() - 1] as f64 / 1e6,
        snapshots.len(),
        snapshot_times,
    );
}
