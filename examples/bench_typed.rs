//! Benchmark W1t: W1 with a typed struct per message instead of bytes.
//!
//! 1,000,000 values `Record { key: i % 10000, value: i }` (`#[derive(Serialize,
//! RowType)]`) are sent by a custom source with `ctx.next(&value)`, made into rows by the
//! typed fast path (no JSON text, no `serde_json::Value`), upserted into a table keyed by
//! `key`, and counted by a subscriber. In the same run, a baseline upserts the same
//! structs into a `HashMap` in a plain loop (the median of five passes, each with a new
//! map). Prints throughput for both and the ratio.
//!
//! Run with:
//!
//! ```text
//! cargo run --release --example bench_typed [-- MESSAGES [both|intake|baseline]]
//! ```
//!
//! `intake` or `baseline` runs only that part, so that an instruction count (for
//! instance under `valgrind --tool=callgrind`) covers one part alone.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use intake::{Pipeline, Reader, RowType, Subscriber, source_fn};

const KEYS: u64 = 10_000;
const BASELINE_PASSES: usize = 5;

#[derive(Clone, Copy, serde::Serialize, RowType)]
struct Record {
    #[intake(primary_key)]
    key: i64,
    value: i64,
}

fn generate(count: u64) -> Vec<Record> {
    (0..count)
        .map(|i| Record {
            key: (i % KEYS) as i64,
            value: i as i64,
        })
        .collect()
}

async fn run_intake(records: Arc<Vec<Record>>) -> anyhow::Result<(f64, u64)> {
    let count = records.len();
    let source = source_fn(move |ctx| async move {
        for record in records.iter() {
            ctx.next(record).await?;
        }
        Ok(())
    });

    let mut pipeline = Pipeline::new();
    let table = pipeline.read("w1t", source, Reader::json(Record::schema()));
    let changes = Arc::new(AtomicU64::new(0));
    let counted = changes.clone();
    table.subscribe(Subscriber::new().on_batch(move |batch| {
        counted.fetch_add(batch.len() as u64, Ordering::Relaxed);
    }));

    let started = Instant::now();
    pipeline.run().await?;
    let elapsed = started.elapsed().as_secs_f64();
    let expected = KEYS.min(count as u64) as usize;
    anyhow::ensure!(table.len() == expected, "table has {} rows", table.len());
    Ok((count as f64 / elapsed, changes.load(Ordering::Relaxed)))
}

fn run_baseline(records: &[Record]) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut table: HashMap<i64, Record> = HashMap::new();
    for record in std::hint::black_box(records) {
        table.insert(record.key, *record);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let expected = KEYS.min(records.len() as u64) as usize;
    anyhow::ensure!(table.len() == expected, "baseline has {} rows", table.len());
    let checksum: i64 = table.values().map(|r| r.value).sum();
    std::hint::black_box(checksum);
    Ok(records.len() as f64 / elapsed)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let count: u64 = match args.next() {
        Some(arg) => arg.parse()?,
        None => 1_000_000,
    };
    let mode = args.next().unwrap_or_else(|| "both".to_owned());
    let (intake, baseline) = match mode.as_str() {
        "both" => (true, true),
        "intake" => (true, false),
        "baseline" => (false, true),
        other => anyhow::bail!("unknown mode {other:?}: expected both, intake or baseline"),
    };
    let records = Arc::new(generate(count));

    println!(
        "W1t: {count} typed messages, {KEYS} keys, {} worker threads",
        std::thread::available_parallelism()?
    );
    let mut intake_rate = f64::NAN;
    if intake {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let (rate, changes) = runtime.block_on(run_intake(records.clone()))?;
        intake_rate = rate;
        println!("  intake:   {rate:>12.0} msgs/s  ({changes} changes delivered)");
    }
    let mut baseline_rate = f64::NAN;
    if baseline {
        // One pass takes a few tens of milliseconds, so one preemption on a shared
        // machine would distort it: the median of several passes.
        let mut passes = (0..BASELINE_PASSES)
            .map(|_| run_baseline(&records))
            .collect::<anyhow::Result<Vec<f64>>>()?;
        passes.sort_by(f64::total_cmp);
        baseline_rate = passes[passes.len() / 2];
        println!(
            "  baseline: {baseline_rate:>12.0} msgs/s  (the same structs into a HashMap, one thread; median of {BASELINE_PASSES} passes)"
        );
    }
    if intake && baseline {
        println!("  ratio intake/baseline: {:.3}", intake_rate / baseline_rate);
    }
    Ok(())
}
