//! A persistent worker ingesting a partitioned JetStream stream: the program the crash
//! test in `crates/intake-nats/tests/worker_crash.rs` kills with SIGKILL, over and over.
//!
//! It reads the stream `STREAM` (partitions `0` to `PARTITIONS - 1` on the subjects
//! `STREAM.0`, `STREAM.1`, ...) into a table `events` without a primary key, so a
//! message applied twice would be a row twice, keeping the table and each partition's
//! stream sequence in the storage directory `STATE`. Killed at any moment and started
//! again, it restores the table and each partition resumes after its stored sequence;
//! messages read but not yet durable are delivered again and read again, and
//! redeliveries are dropped. With `--expect N`, it stops once the table holds `N` rows
//! (and a moment more, so that a row applied twice would show), and writes the table to
//! `OUT/tables.json`; Ctrl-C stops it too.
//!
//! ```text
//! cargo run -p intake-nats --example nats_worker -- STATE OUT --url nats://127.0.0.1:4222 --stream events [--partitions 4] [--expect N] [--worker INDEX COUNT]
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use intake_core::{Column, DataType, Persistence, Pipeline, Reader, Schema};
use intake_nats::{JetStreamSource, Partitions};

struct Args {
    state: PathBuf,
    out: PathBuf,
    url: String,
    stream: String,
    partitions: u32,
    expect: Option<usize>,
    worker: (usize, usize),
}

fn args() -> anyhow::Result<Args> {
    let mut positional = Vec::new();
    let (mut url, mut stream, mut partitions, mut expect, mut worker) = (None, None, 4, None, (0, 1));
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--url" => url = Some(value("--url")?),
            "--stream" => stream = Some(value("--stream")?),
            "--partitions" => partitions = value("--partitions")?.parse()?,
            "--expect" => expect = Some(value("--expect")?.parse()?),
            "--worker" => worker = (value("--worker")?.parse()?, value("--worker")?.parse()?),
            _ => positional.push(PathBuf::from(arg)),
        }
    }
    let usage = "usage: nats_worker STATE OUT --url URL --stream NAME [--partitions P] [--expect N] [--worker INDEX COUNT]";
    let [state, out] = <[PathBuf; 2]>::try_from(positional).map_err(|_| anyhow::anyhow!(usage))?;
    Ok(Args {
        state,
        out,
        url: url.context(usage)?,
        stream: stream.context(usage)?,
        partitions,
        expect,
        worker,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let args = args()?;
    std::fs::create_dir_all(&args.out)?;

    let client = async_nats::connect(&args.url).await?;
    let jetstream = async_nats::jetstream::new(client);
    let source = JetStreamSource::new(
        jetstream,
        &args.stream,
        Partitions::numbered(&args.stream, args.partitions),
    );
    let stats = source.stats();

    let schema = Schema::new([
        Column::new("id", DataType::Int),
        Column::new("key", DataType::Int),
    ])?;
    // Small, frequent commits: many moments to die between.
    let reader = Reader::json(schema)
        .autocommit_duration(Duration::from_millis(5))
        .max_batch_size(200);
    let mut pipeline = Pipeline::new()
        .persist(Persistence::new(&args.state))
        .worker(args.worker.0, args.worker.1);
    let events = pipeline.read_partitioned("events", source, reader);

    let table = events.clone();
    let expected = async move {
        match args.expect {
            Some(rows) => {
                if table.wait_for(|t| t.len() >= rows).await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
            None => std::future::pending().await,
        }
    };
    pipeline
        .run_until(async {
            tokio::select! {
                () = expected => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;

    let rows: Vec<serde_json::Value> = events
        .snapshot()
        .rows()
        .iter()
        .map(|(_, row)| row.to_json())
        .collect();
    let path = args.out.join("tables.json");
    std::fs::write(&path, serde_json::to_vec(&serde_json::json!({ "events": rows }))?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "done: {} rows, {} messages read, {} redeliveries dropped",
        events.len(),
        stats.messages(),
        stats.redelivered_dropped()
    );
    Ok(())
}
