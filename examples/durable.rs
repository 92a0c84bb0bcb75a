//! A persistent pipeline that survives being killed: the program the crash tests in
//! `tests/crash.rs` run and kill with SIGKILL, over and over.
//!
//! Two tables are kept in a storage directory:
//!
//! - `lines`: a JSON-lines file (`{"id": 7, "v": 123}`) read by a `FileSource`,
//!   upserted by `id`, written to `OUT/lines.csv` by a `CsvSink`;
//! - `counter`: a custom source that counts `n` from 1 to `--count` (default 30,000)
//!   as `{"k": n % 97, "n": n}`, reporting `n` as its offset after every message and
//!   pausing now and then like a live feed, appended to a table without a primary key
//!   (so a message read twice would be a row twice), written to `OUT/counter.jsonl`
//!   by a `JsonLinesSink`.
//!
//! Killed at any moment and started again, it continues from the last durable commit:
//! the tables come back, each source resumes from its offset, and the sinks cut back
//! a commit they were writing and receive what they lack. When both sources have
//! ended, the final tables are written to `OUT/tables.json`.
//!
//! ```text
//! cargo run -p intake-file --example durable -- STATE INPUT.jsonl OUT [--count N] [--compact-after BYTES] [--schema-v2]
//! ```
//!
//! `--schema-v2` adds a column to `counter`, to show the error a changed schema gives.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use intake_core::{
    BoxError, Column, DataType, Persistence, Pipeline, Reader, Schema, Source, SourceContext, Table,
};
use intake_file::{CsvSink, FileSource, JsonLinesSink};

/// Counts from after its resume offset to `total`, reporting each `n` as its offset.
struct Counter {
    total: u64,
}

#[async_trait::async_trait]
impl Source for Counter {
    async fn run(&mut self, ctx: SourceContext) -> Result<(), BoxError> {
        let start = match ctx.resume_offset() {
            Some(offset) => offset.as_u64().ok_or("the counter's offset is a number")? + 1,
            None => 1,
        };
        for n in start..=self.total {
            ctx.next_json(serde_json::json!({ "k": n % 97, "n": n })).await?;
            ctx.report_offset(n.into()).await?;
            if n % 20 == 0 {
                // A live feed's pace, so that a kill lands while data is arriving.
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(2)) => {}
                    () = ctx.cancelled() => return Ok(()),
                }
            }
        }
        Ok(())
    }
}

struct Args {
    state: PathBuf,
    input: PathBuf,
    out: PathBuf,
    count: u64,
    compact_after: Option<u64>,
    schema_v2: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut positional = Vec::new();
    let (mut count, mut compact_after, mut schema_v2) = (30_000, None, false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--count" => count = args.next().context("--count needs a number")?.parse()?,
            "--compact-after" => {
                compact_after = Some(args.next().context("--compact-after needs bytes")?.parse()?);
            }
            "--schema-v2" => schema_v2 = true,
            _ => positional.push(PathBuf::from(arg)),
        }
    }
    let [state, input, out] = <[PathBuf; 3]>::try_from(positional).map_err(|_| {
        anyhow::anyhow!(
            "usage: durable STATE INPUT.jsonl OUT [--count N] [--compact-after BYTES] [--schema-v2]"
        )
    })?;
    Ok(Args {
        state,
        input,
        out,
        count,
        compact_after,
        schema_v2,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let args = args()?;
    std::fs::create_dir_all(&args.out)?;

    let lines_schema = Schema::new([
        Column::new("id", DataType::Int).primary_key(),
        Column::new("v", DataType::Int),
    ])?;
    let mut counter_columns = vec![Column::new("k", DataType::Int), Column::new("n", DataType::Int)];
    if args.schema_v2 {
        counter_columns.push(Column::new("note", DataType::String).nullable());
    }
    let counter_schema = Schema::new(counter_columns)?;
    // Small, frequent commits: many commit records, and many moments to die between.
    let reader = |schema: Schema| {
        Reader::json(schema)
            .autocommit_duration(Duration::from_millis(5))
            .max_batch_size(200)
    };

    let mut persistence = Persistence::new(&args.state);
    if let Some(bytes) = args.compact_after {
        persistence = persistence.compact_after(bytes);
    }
    let mut pipeline = Pipeline::new().persist(persistence);
    // An offset every 50 lines, so that commits (which end at an offset) stay small.
    let lines = pipeline.read(
        "lines",
        FileSource::json_lines(&args.input).offset_every(50),
        reader(lines_schema),
    );
    let counter = pipeline.read("counter", Counter { total: args.count }, reader(counter_schema));
    lines.sink("lines.csv", CsvSink::open(args.out.join("lines.csv")).await?);
    counter.sink(
        "counter.jsonl",
        JsonLinesSink::open(args.out.join("counter.jsonl")).await?,
    );

    pipeline.run_until(tokio::signal::ctrl_c()).await?;
    write_tables(&args.out, &[&lines, &counter])?;
    println!("done: lines {} rows, counter {} rows", lines.len(), counter.len());
    Ok(())
}

/// Writes each table's rows (sorted by key) as JSON, for the crash tests to compare.
fn write_tables(out: &Path, tables: &[&Table]) -> anyhow::Result<()> {
    let mut all = serde_json::Map::new();
    for table in tables {
        let rows: Vec<serde_json::Value> = table
            .snapshot()
            .rows()
            .iter()
            .map(|(_, row)| row.to_json())
            .collect();
        all.insert(table.name().to_owned(), rows.into());
    }
    let path = out.join("tables.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&all)?)
        .with_context(|| format!("writing {}", path.display()))
}
