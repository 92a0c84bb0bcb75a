//! Commit latency: how long from a source's `send` to the subscriber callback that
//! sees the message, at a steady 100,000 messages per second with the default
//! autocommit of 100 ms.
//!
//! A source sends `{"key": i % 10000, "value": i, "sent": <ns since start>}` in bursts
//! of 100 every millisecond for ten seconds; an `on_batch` subscriber takes the time
//! each insertion reaches it. A commit is due 100 ms after its first message, so its
//! oldest message waits about 100 ms by design: the goal is p99 ≤ autocommit + 2 ms.
//! Prints p50, p99, p99.9 and max, and the commit count.
//!
//! Run with:
//!
//! ```text
//! cargo run --release --example bench_latency [-- SECONDS]
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use intake::{Column, DataType, Pipeline, Reader, Schema, Subscriber, source_fn};

const RATE: u64 = 100_000;
const BURST: u64 = 100;
const KEYS: u64 = 10_000;

fn main() -> anyhow::Result<()> {
    let seconds: u64 = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 10,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // Subscribing spawns the subscriber's task.
    let _entered = runtime.enter();
    let schema = Schema::new([
        Column::new("key", DataType::Int).primary_key(),
        Column::new("value", DataType::Int),
        Column::new("sent", DataType::Int),
    ])?;
    let start = Instant::now();
    let total = RATE * seconds;
    let source = source_fn(move |ctx| async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let mut i = 0;
        while i < total {
            tick.tick().await;
            for _ in 0..BURST {
                let sent = start.elapsed().as_nanos() as u64;
                let message = format!(r#"{{"key": {}, "value": {i}, "sent": {sent}}}"#, i % KEYS);
                ctx.next_str(message).await?;
                i += 1;
            }
        }
        Ok(())
    });
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let commits = Arc::new(Mutex::new(0u64));
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("latency", source, Reader::json(schema));
    let (seen, counted) = (latencies.clone(), commits.clone());
    table.subscribe(Subscriber::new().on_batch(move |batch| {
        let now = start.elapsed().as_nanos() as u64;
        let mut seen = seen.lock().expect("not poisoned");
        for change in batch.insertions() {
            if let Some(sent) = change.row["sent"].as_int() {
                seen.push(now.saturating_sub(sent as u64));
            }
        }
        *counted.lock().expect("not poisoned") += 1;
    }));
    runtime.block_on(pipeline.run())?;

    let mut latencies = std::mem::take(&mut *latencies.lock().expect("not poisoned"));
    anyhow::ensure!(!latencies.is_empty(), "no message arrived");
    latencies.sort_unstable();
    let at = |q: f64| {
        let index = ((latencies.len() as f64 * q) as usize).min(latencies.len() - 1);
        latencies[index] as f64 / 1e6
    };
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "Commit latency: {} messages in {elapsed:.1} s ({:.0} msgs/s offered), autocommit {} ms, {} commits",
        latencies.len(),
        total as f64 / elapsed,
        Reader::DEFAULT_AUTOCOMMIT.as_millis(),
        commits.lock().expect("not poisoned"),
    );
    println!(
        "  send -> subscriber callback: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        at(0.50),
        at(0.99),
        at(0.999),
        *latencies.last().expect("not empty") as f64 / 1e6
    );
    Ok(())
}
