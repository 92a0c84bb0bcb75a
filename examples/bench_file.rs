//! Benchmark W3: a 1,000,000-line JSON-lines file into a keyed table, against a plain
//! `BufReader` + serde_json + `HashMap` loop over the same file.
//!
//! The file (`{"key": i % 10000, "value": i}` per line, about 30 MB) is generated into a
//! temporary directory. intake reads it with `FileSource::json_lines` into a table keyed
//! by `key`, with a subscriber counting the changes. In the same run, two baselines read
//! the same file line by line with a `BufReader`: serde_json into a struct, and into a
//! `serde_json::Value`, each upserted into a `HashMap`. Prints throughput, intake's peak RSS and the ratios.
//! The file is read once beforehand so every run reads it from the page cache.
//!
//! Run with:
//!
//! ```text
//! cargo run --release --example bench_file [-- LINES]
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use intake_core::{Column, DataType, Pipeline, Reader, Schema, Subscriber};
use intake_file::FileSource;

const KEYS: u64 = 10_000;

fn generate(path: &Path, lines: u64) -> anyhow::Result<u64> {
    let mut file = BufWriter::new(File::create(path)?);
    for i in 0..lines {
        writeln!(file, r#"{{"key": {}, "value": {i}}}"#, i % KEYS)?;
    }
    file.flush()?;
    Ok(std::fs::metadata(path)?.len())
}

async fn run_intake(path: &Path) -> anyhow::Result<(f64, u64)> {
    let schema = Schema::new([
        Column::new("key", DataType::Int).primary_key(),
        Column::new("value", DataType::Int),
    ])?;
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("w3", FileSource::json_lines(path), Reader::json(schema));
    let changes = Arc::new(AtomicU64::new(0));
    let counted = changes.clone();
    table.subscribe(Subscriber::new().on_batch(move |batch| {
        counted.fetch_add(batch.len() as u64, Ordering::Relaxed);
    }));
    let started = Instant::now();
    pipeline.run().await?;
    let elapsed = started.elapsed().as_secs_f64();
    anyhow::ensure!(table.len() == KEYS as usize, "table has {} rows", table.len());
    Ok((elapsed, changes.load(Ordering::Relaxed)))
}

/// Peak resident set size of this process so far, in MiB (Linux only).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[derive(serde::Deserialize)]
struct Record {
    key: i64,
    #[allow(dead_code)] // parsed, as the table parses it, but not read
    value: i64,
}

/// A plain loop: `BufReader` lines, serde_json into `T`, `HashMap` upsert.
fn run_baseline<T: serde::de::DeserializeOwned>(path: &Path, key: impl Fn(&T) -> i64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut reader = BufReader::with_capacity(64 * 1024, File::open(path)?);
    let mut table: HashMap<i64, T> = HashMap::new();
    let mut line = Vec::new();
    while reader.read_until(b'\n', &mut line)? > 0 {
        let record: T = serde_json::from_slice(&line)?;
        table.insert(key(&record), record);
        line.clear();
    }
    let elapsed = started.elapsed().as_secs_f64();
    anyhow::ensure!(table.len() == KEYS as usize, "baseline has {} rows", table.len());
    std::hint::black_box(&table);
    Ok(elapsed)
}

fn main() -> anyhow::Result<()> {
    let lines: u64 = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 1_000_000,
    };
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("w3.jsonl");
    let bytes = generate(&path, lines)?;
    // Into the page cache, without holding the file in this process.
    std::io::copy(&mut File::open(&path)?, &mut std::io::sink())?;

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (intake, changes) = runtime.block_on(run_intake(&path))?;
    drop(runtime);
    let rss = peak_rss_mib().unwrap_or(f64::NAN);
    let structs = run_baseline::<Record>(&path, |r| r.key)?;
    let values = run_baseline::<serde_json::Value>(&path, |v| v["key"].as_i64().unwrap_or(0))?;

    let rate = |seconds: f64| lines as f64 / seconds;
    println!(
        "W3: {lines} lines ({:.1} MiB), {KEYS} keys, {} worker threads",
        bytes as f64 / (1024.0 * 1024.0),
        std::thread::available_parallelism()?
    );
    println!(
        "  intake FileSource:        {:>10.0} lines/s  ({changes} changes delivered)",
        rate(intake)
    );
    println!(
        "  baseline, struct rows:    {:>10.0} lines/s  (BufReader + serde_json struct + HashMap)",
        rate(structs)
    );
    println!(
        "  baseline, Value rows:     {:>10.0} lines/s  (BufReader + serde_json::Value + HashMap)",
        rate(values)
    );
    println!("  peak RSS after intake: {rss:.1} MiB (the file is streamed, not loaded)");
    println!("  ratio intake/struct baseline: {:.2}", structs / intake);
    println!("  ratio intake/Value baseline:  {:.2}", values / intake);
    Ok(())
}
