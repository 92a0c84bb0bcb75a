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
//! cargo run --release --example bench_upsert -- 1000000 rounds 7 # 7 alternating rounds
//! ```
//!
//! The `intake` mode runs only the pipeline, so that an instruction count of the whole
//! program (`valgrind --tool=callgrind`) is intake's alone. The `rounds` mode runs intake
//! and the baseline in turn, each round's ratio from its own pair, and prints the
//! medians: on a machine whose speed drifts between runs (other tenants, frequency),
//! the median of paired ratios is steadier than any single run.

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

/// The median of `values` (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    match values.len() % 2 {
        1 => values[middle],
        _ => (values[middle - 1] + values[middle]) / 2.0,
    }
}

fn run_intake_on_runtime(messages: &Arc<Messages>) -> anyhow::Result<(f64, u64, usize)> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run_intake(messages.clone()))
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let count: u64 = match args.next() {
        Some(arg) => arg.parse()?,
        None => 1_000_000,
    };
    let mode = args.next();
    let rounds: usize = match (mode.as_deref(), args.next()) {
        (Some("rounds"), Some(n)) => n.parse()?,
        (Some("rounds"), None) => 5,
        (None | Some("intake"), _) => 1,
        (Some(other), _) => anyhow::bail!("unknown mode `{other}`; the modes are `intake` and `rounds`"),
    };
    anyhow::ensure!(rounds > 0, "at least one round");
    let messages = Arc::new(Messages::generate(count));
    let rss_before = peak_rss_mib().unwrap_or(f64::NAN);

    if mode.as_deref() == Some("intake") {
        let (intake_rate, changes, rows) = run_intake_on_runtime(&messages)?;
        println!(
            "W1 (intake only): {count} messages, {intake_rate:.0} msgs/s ({changes} changes delivered, {rows} rows)"
        );
        return Ok(());
    }

    println!(
        "W1: {count} messages, {KEYS} keys, {} worker threads",
        std::thread::available_parallelism()?
    );
    let (mut intake_rates, mut baseline_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut rss_intake = f64::NAN;
    for round in 1..=rounds {
        let (intake_rate, changes, rows) = run_intake_on_runtime(&messages)?;
        if round == 1 {
            // The peak after the first intake run, before the baseline's table exists.
            rss_intake = peak_rss_mib().unwrap_or(f64::NAN);
        }
        let baseline_rate = run_baseline(&messages)?;
        if rounds > 1 {
            println!(
                "  round {round}: intake {intake_rate:>10.0} msgs/s, baseline {baseline_rate:>10.0} msgs/s, ratio {:.2}",
                intake_rate / baseline_rate
            );
        } else {
            println!(
                "  intake:   {:>12.0} msgs/s  ({changes} changes delivered, {rows} rows)",
                intake_rate
            );
            println!(
                "  baseline: {:>12.0} msgs/s  (serde_json into a struct + HashMap, one thread)",
                baseline_rate
            );
        }
        intake_rates.push(intake_rate);
        baseline_rates.push(baseline_rate);
        ratios.push(intake_rate / baseline_rate);
    }
    if rounds > 1 {
        println!(
            "  median of {rounds} rounds: intake {:.0} msgs/s, baseline {:.0} msgs/s (serde_json into a struct + HashMap, one thread)",
            median(intake_rates),
            median(baseline_rates)
        );
        let (low, high) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), &r| (l.min(r), h.max(r)));
        println!(
            "  ratio intake/baseline: {:.2} (median of the rounds' own ratios; {low:.2}-{high:.2})",
            median(ratios)
        );
    } else {
        println!("  ratio intake/baseline: {:.2}", ratios[0]);
    }
    println!(
        "  peak RSS: {rss_intake:.1} MiB after intake ({rss_before:.1} MiB before it, holding the {:.1} MiB of input)",
        messages.buffer.len() as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}
