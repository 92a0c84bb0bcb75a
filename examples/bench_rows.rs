//! Lean rows (issue 11 item 5): bytes per row of an append table of log lines, measured
//! from the process's resident set, with and without retention.
//!
//! A custom source sends 3,000,000 messages `{"id": n, "payload": "<60 chars>"}` as
//! bytes into a table without a primary key, under three readers in turn, in one
//! process: a table that keeps no rows (`keep_rows(false)`), one that keeps the last
//! 100,000 (`retain_last`), and a plain append table that keeps every row. For each, the
//! resident set (VmRSS) is read just before the pipeline starts and again after it has
//! ended, with the table still alive; the difference, divided by the rows the table
//! holds, is the cost of a row. The modes run from the smallest to the largest, because
//! memory freed by one run stays in the allocator (and so in the resident set) for the
//! next to reuse: a larger run after a smaller one still measures its own growth. Pass
//! a mode to run only that one (`plain`, `retain`, `nokeep`).
//!
//! Messages are made on the source's task as they are sent, so the input occupies no
//! memory of its own; a subscriber counts the changes delivered.
//!
//! Run with:
//!
//! ```text
//! cargo run --release -p intake --example bench_rows [-- MESSAGES [MODE]]
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use intake::{Column, DataType, Pipeline, Reader, Schema, Subscriber, Table, source_fn};

/// Rows a `retain_last` table keeps.
const RETAIN: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    NoKeep,
    Retain,
    Plain,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::NoKeep => "keep_rows(false)",
            Mode::Retain => "retain_last(100,000)",
            Mode::Plain => "plain append",
        }
    }

    fn reader(self, schema: Schema) -> Reader {
        let reader = Reader::json(schema);
        match self {
            Mode::NoKeep => reader.keep_rows(false),
            Mode::Retain => reader.retain_last(RETAIN),
            Mode::Plain => reader,
        }
    }
}

/// Resident set size of this process now, in bytes (Linux only).
fn rss_bytes() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// Writes message `n`, `{"id": n, "payload": "line 000000000n xx…x"}` with a payload of
/// 60 characters, into `out`. (Without `format!`, which would cost more instructions
/// than intake spends on the message.)
fn write_message(out: &mut Vec<u8>, n: u64) {
    let mut digits = [b'0'; 20];
    let mut rest = n;
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.clear();
    out.extend_from_slice(br#"{"id": "#);
    out.extend_from_slice(&digits[start..]);
    out.extend_from_slice(br#", "payload": "line "#);
    out.extend_from_slice(&digits[digits.len() - 10..]);
    out.extend_from_slice(b" xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}");
}

struct Measured {
    rate: f64,
    changes: u64,
    rss_before: f64,
    rss_after: f64,
    table: Table,
}

async fn run(mode: Mode, count: u64) -> anyhow::Result<Measured> {
    let schema = Schema::new([
        Column::new("id", DataType::Int),
        Column::new("payload", DataType::String),
    ])?;
    let source = source_fn(move |ctx| async move {
        let mut message = Vec::with_capacity(96);
        for n in 0..count {
            write_message(&mut message, n);
            ctx.next_bytes(bytes::Bytes::copy_from_slice(&message)).await?;
        }
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("lines", source, mode.reader(schema));
    let changes = Arc::new(AtomicU64::new(0));
    let counted = changes.clone();
    table.subscribe(Subscriber::new().on_batch(move |batch| {
        counted.fetch_add(batch.len() as u64, Ordering::Relaxed);
    }));
    let rss_before = rss_bytes().unwrap_or(f64::NAN);
    let started = Instant::now();
    pipeline.run().await?;
    let elapsed = started.elapsed().as_secs_f64();
    let rss_after = rss_bytes().unwrap_or(f64::NAN);
    // The last line, under the last generated key, when the table keeps it.
    if let Some(row) = table.get(&intake::Key::generated(count)) {
        let payload = row.get("payload").and_then(|v| v.as_str()).unwrap_or_default();
        anyhow::ensure!(payload.len() == 60, "payload {payload:?} is not 60 characters");
    }
    let expected = match mode {
        Mode::NoKeep => 0,
        Mode::Retain => RETAIN.min(count as usize),
        Mode::Plain => count as usize,
    };
    anyhow::ensure!(
        table.len() == expected,
        "{} rows, expected {expected}",
        table.len()
    );
    Ok(Measured {
        rate: count as f64 / elapsed,
        changes: changes.load(Ordering::Relaxed),
        rss_before,
        rss_after,
        table,
    })
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let count: u64 = match args.next() {
        Some(arg) => arg.parse()?,
        None => 3_000_000,
    };
    let modes = match args.next().as_deref() {
        None => vec![Mode::NoKeep, Mode::Retain, Mode::Plain],
        Some("nokeep") => vec![Mode::NoKeep],
        Some("retain") => vec![Mode::Retain],
        Some("plain") => vec![Mode::Plain],
        Some(other) => anyhow::bail!("unknown mode {other}: use plain, retain or nokeep"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    println!(
        "lean rows: {count} log lines {{\"id\": n, \"payload\": <60 chars>}}, {} worker threads",
        std::thread::available_parallelism()?
    );
    for mode in modes {
        let measured = runtime.block_on(run(mode, count))?;
        let grown = measured.rss_after - measured.rss_before;
        let rows = measured.table.len();
        let per_row = match rows {
            0 => "no rows kept".to_owned(),
            rows => format!("{:.0} B/row", grown / rows as f64),
        };
        println!(
            "  {:<22} {:>10.0} msgs/s  {:>9} rows  RSS {:>7.1} -> {:>7.1} MiB (+{:.1} MiB)  {per_row}  ({} changes delivered)",
            mode.name(),
            measured.rate,
            rows,
            measured.rss_before / 1048576.0,
            measured.rss_after / 1048576.0,
            grown / 1048576.0,
            measured.changes,
        );
        drop(measured.table);
    }
    Ok(())
}
