//! The main demo: a custom, push-style source that streams a JSON-lines file of cats
//! into a keyed table, with an update, a delete and a bad line along the way.
//!
//! The source reads `examples/data/cats.jsonl` one line every 100 ms (a stand-in for a
//! live feed) and sends each line with `next_str`; lines marked `"deleted": true`
//! become deletes. A subscriber prints every change as it is committed, bad input is
//! skipped and reported, and the final table is written to `cats.csv`.
//!
//! Run with:
//!
//! ```text
//! cargo run --example cats [-- INPUT.jsonl [OUTPUT.csv]]
//! ```
//!
//! Ctrl-C stops it early; what was read so far is still committed and written.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use intake::{
    BoxError, Column, DataType, ErrorPolicy, Key, Pipeline, Reader, Schema, Source, SourceContext,
    Subscriber, Table, Value,
};
use tokio::fs::File;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The bundled input; the example is compiled from `crates/intake`.
const BUNDLED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/data/cats.jsonl");

/// Time between two lines, to make the file look like a live feed.
const PACE: Duration = Duration::from_millis(100);

/// A source that turns a JSON-lines file into a stream of messages, one line at a
/// time: the counterpart of the `FileStreamSubject` in Pathway's custom connector
/// tutorial.
struct JsonLinesFile {
    path: PathBuf,
    lines: u64,
}

impl JsonLinesFile {
    fn new(path: PathBuf) -> Self {
        JsonLinesFile { path, lines: 0 }
    }
}

#[async_trait::async_trait]
impl Source for JsonLinesFile {
    async fn run(&mut self, ctx: SourceContext) -> Result<(), BoxError> {
        let file = File::open(&self.path)
            .await
            .map_err(|e| format!("cannot open {}: {e}", self.path.display()))?;
        let mut lines = BufReader::new(file).lines();
        let mut pace = tokio::time::interval(PACE);
        loop {
            // Waiting is not sending, so watch for shutdown (Ctrl-C) while we wait.
            tokio::select! {
                _ = pace.tick() => {}
                () = ctx.cancelled() => return Ok(()),
            }
            let Some(line) = lines.next_line().await? else {
                return Ok(());
            };
            if line.trim().is_empty() {
                continue;
            }
            self.lines += 1;
            match deleted_key(&line) {
                Some(key) => ctx.delete(key).await?,
                // Everything else goes to the reader as is, bad lines included: the
                // reader's error policy decides what happens to them.
                None => ctx.next_str(line).await?,
            }
            // One commit per line, so that every update shows up on its own.
            ctx.commit().await?;
        }
    }

    async fn on_stop(&mut self) {
        println!("source stopped after {} lines", self.lines);
    }
}

/// The key of a delete line such as `{"key": 3, "deleted": true}`; `None` for any
/// other line, including lines that are not JSON at all.
fn deleted_key(line: &str) -> Option<Key> {
    let json: serde_json::Value = serde_json::from_str(line).ok()?;
    if json.get("deleted").and_then(serde_json::Value::as_bool) != Some(true) {
        return None;
    }
    let key = json.get("key")?;
    // An integer is the schema's key type. Any other key is passed on as JSON, and the
    // reader rejects it as not matching the primary key.
    Some(match key.as_i64() {
        Some(key) => Key::from(key),
        None => Key::from(Value::from(key.clone())),
    })
}

/// Writes the table's rows as CSV, with a header of column names; returns the number
/// of rows.
fn write_csv(table: &Table, path: &Path) -> anyhow::Result<usize> {
    let snapshot = table.snapshot();
    let mut writer = csv::Writer::from_path(path)?;
    writer.write_record(table.schema().columns().iter().map(Column::name))?;
    for (_key, row) in snapshot.rows() {
        // `Value`'s Display prints strings bare and null as an empty field.
        writer.write_record(row.values().iter().map(ToString::to_string))?;
    }
    writer.flush()?;
    Ok(snapshot.len())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let input = args.next().map_or_else(|| PathBuf::from(BUNDLED), PathBuf::from);
    let output = args
        .next()
        .map_or_else(|| PathBuf::from("cats.csv"), PathBuf::from);

    let schema = Schema::new([
        Column::new("key", DataType::Int).primary_key(),
        Column::new("genus", DataType::String),
        Column::new("epithet", DataType::String),
    ])?;
    let reader = Reader::json(schema).error_policy(ErrorPolicy::SkipAndReport);

    let mut pipeline = Pipeline::new();
    let cats = pipeline.read("cats", JsonLinesFile::new(input), reader);

    let mut rejected = pipeline.rejected(16);
    let reports = tokio::spawn(async move {
        while let Some(rejected) = rejected.next().await {
            println!(
                "        skipped bad input from `{}`: {}\n        raw: {}",
                rejected.source_name(),
                rejected.reason(),
                String::from_utf8_lossy(rejected.raw()).trim_end(),
            );
        }
    });

    cats.subscribe(
        Subscriber::new()
            .on_change(|key, row, time, is_addition| {
                let sign = if is_addition { '+' } else { '-' };
                println!("time {time}: {sign} key {key} {row}");
            })
            .on_time_end(|time| println!("time {time}: committed"))
            .on_end(|| println!("the table will not change any more")),
    );

    // Ctrl-C shuts the pipeline down gracefully; run_until returns once it has.
    pipeline.run_until(tokio::signal::ctrl_c()).await?;
    reports.await?;

    let stats = cats.stats();
    let rows = write_csv(&cats, &output).with_context(|| format!("writing {}", output.display()))?;
    println!(
        "{} commits, {} rejected; wrote {rows} rows to {}",
        stats.commits(),
        stats.rejected(),
        output.display()
    );
    Ok(())
}
