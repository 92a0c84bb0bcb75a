//! Benchmark W1: keyed upserts through a custom source, against a plain serde_json loop.
//!
//! 1,000,000 messages `{"key": i % 10000, "value": i}` are pushed as bytes by a custom
//! source, parsed by a schema, upserted into a table keyed by `key`, and counted by a
//! subscriber. In the same run, a baseline parses the same bytes with serde_json into a
//! struct and upserts into a `HashMap`. Prints throughput, peak RSS and the ratio.
//!
//! Run with:
//!
//! ```text
//! cargo run --release --example bench_upsert [-- MESSAGES]
//! cargo run --release --example bench_upsert -- 200000 intake   # only the intake part
//! ```
//!
//! The `intake` mode runs only the pipeline, so that an instruction count of the whole
//! program (`valgrind --tool=callgrind`) is intake's alone.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use intake::{Column, DataType, Pipeline, Reader, Schema, Subscriber, source_fn};

const KEYS: u64 = 10_000;

/// Every message, back to back in one buffer, and where each ends.
struct Messages {
    buffer: Bytes,
    ends: Vec<usize>,
}

impl Messages {
    fn generate(count: u64) -> Self {
        let mut buffer = BytesMut::with_capacity(count as usize * 32);
        let mut ends = Vec::with_capacity(count as usize);
        for i in 0..count {
            buffer.put_slice(format!(r#"{{"key": {}, "value": {i}}}"#, i % KEYS).as_bytes());
            ends.push(buffer.len());
        }
        Messages {
            buffer: buffer.freeze(),
            ends,
        }
    }

    /// Each message as a cheap slice of the shared buffer.
    fn iter(&self) -> impl Iterator<Item = Bytes> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(&self.ends)
            .map(|(start, &end)| self.buffer.slice(start..end))
    }
}

/// Peak resident set size of this process so far, in MiB (Linux only).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

async fn run_intake(messages: Arc<Messages>) -> anyhow::Result<(f64, u64, usize)> {
    let schema = Schema::new([
        Column::new("key", DataType::Int).primary_key(),
        Column::new("value", DataType::Int),
    ])?;
    let count = messages.ends.len();
    let source = source_fn(move |ctx| async move {
        for message in messages.iter() {
            ctx.next_bytes(message).await?;
        }
        Ok(())
    });

    let mut pipeline = Pipeline::new();
    let table = pipeline.read("w1", source, Reader::json(schema));
    let changes = Arc::new(AtomicU64::new(0));
    let counted = changes.clone();
    table.subscribe(Subscriber::new().on_batch(move |batch| {
        counted.fetch_add(batch.len() as u64, Ordering::Relaxed);
    }));

    let started = Instant::now();
    pipeline.run().await?;
    let elapsed = started.elapsed().as_secs_f64();
    anyhow::ensure!(table.len() == KEYS as usize, "table has {} rows", table.len());
    Ok((
        count as f64 / elapsed,
        changes.load(Ordering::Relaxed),
        table.len(),
    ))
}

#[derive(serde::Deserialize)]
struct Record {
    key: i64,
    value: i64,
}

fn run_baseline(messages: &Messages) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut table: HashMap<i64, Record> = HashMap::new();
    for message in messages.iter() {
        let record: Record = serde_json::from_slice(&message)?;
        table.insert(record.key, record);
    }
    let elapsed = started.elapsed().as_secs_f64();
    anyhow::ensure!(table.len() == KEYS as usize, "baseline has {} rows", table.len());
    let checksum: i64 = table.values().map(|r| r.value).sum();
    std::hint::black_box(checksum);
    Ok(messages.ends.len() as f64 / elapsed)
}

fn main() -> anyhow::Result<()> {
    let count: u64 = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 1_000_000,
    };
    let intake_only = match std::env::args().nth(2).as_deref() {
        None => false,
        Some("intake") => true,
        Some(other) => anyhow::bail!("unknown mode `{other}`; the only mode is `intake`"),
    };
    let messages = Arc::new(Messages::generate(count));
    let rss_before = peak_rss_mib().unwrap_or(f64::NAN);

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (intake_rate, changes, rows) = runtime.block_on(run_intake(messages.clone()))?;
    drop(runtime);
    let rss_intake = peak_rss_mib().unwrap_or(f64::NAN);
    if intake_only {
        println!(
            "W1 (intake only): {count} messages, {intake_rate:.0} msgs/s ({changes} changes delivered, {rows} rows)"
        );
        return Ok(());
    }

    let baseline_rate = run_baseline(&messages)?;

    println!(
        "W1: {count} messages, {KEYS} keys, {} worker threads",
        std::thread::available_parallelism()?
    );
    println!(
        "  intake:   {:>12.0} msgs/s  ({changes} changes delivered, {rows} rows)",
        intake_rate
    );
    println!(
        "  baseline: {:>12.0} msgs/s  (serde_json into a struct + HashMap, one thread)",
        baseline_rate
    );
    println!("  ratio intake/baseline: {:.2}", intake_rate / baseline_rate);
    println!(
        "  peak RSS: {rss_intake:.1} MiB after intake ({rss_before:.1} MiB before it, holding the {:.1} MiB of input)",
        messages.buffer.len() as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}
