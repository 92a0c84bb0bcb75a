//! Benchmarks of persistence: W1 with a storage directory against W1 in memory, and
//! how long restoring a 1,000,000-row table takes.
//!
//! - **W1p**: W1 (1,000,000 messages `{"key": i % 10000, "value": i}` upserted into a
//!   keyed table at the default commit settings) in memory, with persistence syncing
//!   every commit (the default), and with syncs grouped every 100 ms; each three
//!   times, interleaved, in one run. Prints the medians and the ratio persisted/in-memory.
//! - **Restore**: a table of 1,000,000 distinct rows is written once, then a pipeline
//!   over the same directory is started and timed until its table is restored.
//!
//! Run with:
//!
//! ```text
//! cargo run --release --example bench_persist [-- MESSAGES]
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use intake::{Column, DataType, Persistence, Pipeline, Reader, Schema, SyncPolicy, source_fn};

const KEYS: u64 = 10_000;

fn messages(count: u64, keys: u64) -> Arc<Vec<Bytes>> {
    let mut out = Vec::with_capacity(count as usize);
    let mut buffer = BytesMut::new();
    for i in 0..count {
        buffer.put_slice(format!(r#"{{"key": {}, "value": {i}}}"#, i % keys).as_bytes());
        out.push(buffer.split().freeze());
    }
    Arc::new(out)
}

fn schema() -> Schema {
    Schema::new([
        Column::new("key", DataType::Int).primary_key(),
        Column::new("value", DataType::Int),
    ])
    .expect("a valid schema")
}

/// Runs W1 into a table, persisted as `persistence` says; returns messages per second.
async fn w1(messages: Arc<Vec<Bytes>>, persistence: Option<Persistence>) -> anyhow::Result<f64> {
    let count = messages.len();
    let source = source_fn(move |ctx| async move {
        for message in messages.iter() {
            ctx.next_bytes(message.clone()).await?;
        }
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    if let Some(persistence) = persistence {
        pipeline = pipeline.persist(persistence);
    }
    let table = pipeline.read("w1", source, Reader::json(schema()));
    let started = Instant::now();
    pipeline.run().await?;
    let elapsed = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        table.len() as u64 == KEYS.min(count as u64),
        "table has {} rows",
        table.len()
    );
    Ok(count as f64 / elapsed)
}

fn median(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (values[values.len() / 2], values[0], values[values.len() - 1])
}

fn dir_bytes(dir: &Path) -> u64 {
    walk(dir)
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn main() -> anyhow::Result<()> {
    let count: u64 = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 1_000_000,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let w1_messages = messages(count, KEYS);
    let (mut memory, mut every, mut grouped) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        memory.push(runtime.block_on(w1(w1_messages.clone(), None))?);
        let dir = tempfile::tempdir()?;
        every.push(runtime.block_on(w1(w1_messages.clone(), Some(Persistence::new(dir.path()))))?);
        let dir = tempfile::tempdir()?;
        let policy = SyncPolicy::Interval(Duration::from_millis(100));
        let persistence = Persistence::new(dir.path()).sync_policy(policy);
        grouped.push(runtime.block_on(w1(w1_messages.clone(), Some(persistence)))?);
    }
    let (memory, every, grouped) = (median(memory), median(every), median(grouped));
    println!("W1p: {count} messages, {KEYS} keys, default commits; median of 3 (min-max)");
    println!(
        "  in memory:          {:>10.0} msgs/s ({:.0}-{:.0})",
        memory.0, memory.1, memory.2
    );
    println!(
        "  sync every commit:  {:>10.0} msgs/s ({:.0}-{:.0})",
        every.0, every.1, every.2
    );
    println!(
        "  sync every 100 ms:  {:>10.0} msgs/s ({:.0}-{:.0})",
        grouped.0, grouped.1, grouped.2
    );
    println!("  ratio every-commit/in-memory: {:.2}", every.0 / memory.0);
    println!("  ratio grouped/in-memory:      {:.2}", grouped.0 / memory.0);

    // Restore: 1,000,000 distinct rows, kept as a log only (the worst case: the
    // default compaction threshold was never reached), and compacted into a snapshot.
    let rows = 1_000_000;
    let distinct = messages(rows, rows);
    for (state, compact_after) in [("log only", u64::MAX), ("snapshot + log", 1 << 20)] {
        let dir = tempfile::tempdir()?;
        let written = distinct.clone();
        runtime.block_on(async {
            let source = source_fn(move |ctx| async move {
                for message in written.iter() {
                    ctx.next_bytes(message.clone()).await?;
                }
                Ok(())
            });
            let persistence = Persistence::new(dir.path()).compact_after(compact_after);
            let mut pipeline = Pipeline::new().persist(persistence);
            pipeline.read("w1", source, Reader::json(schema()));
            pipeline.run().await
        })?;
        let mut restores = Vec::new();
        for _ in 0..3 {
            let mut pipeline = Pipeline::new().persist(Persistence::new(dir.path()));
            let table = pipeline.read("w1", source_fn(|_| async { Ok(()) }), Reader::json(schema()));
            // From start to the end of a run whose source has nothing to add: opening
            // the storage, reading snapshot and log, filling the table.
            let started = Instant::now();
            runtime.block_on(pipeline.run())?;
            restores.push(started.elapsed().as_secs_f64());
            anyhow::ensure!(table.len() == rows as usize, "restored {} rows", table.len());
        }
        let restore = median(restores);
        println!(
            "Restore: {rows} rows, {state} ({:.1} MiB on disk), in {:.3} s ({:.3}-{:.3})",
            dir_bytes(dir.path()) as f64 / (1024.0 * 1024.0),
            restore.0,
            restore.1,
            restore.2
        );
    }
    Ok(())
}
