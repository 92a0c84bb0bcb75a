//! W7: rows per second through intake's JetStream changelog: a table's commits
//! published by `JetStreamSink`, stored by JetStream, and applied by a `Replica` into a
//! second table, both pipelines in this process against one local nats-server. Measured
//! against a plain async-nats loop on the same server in the same run: JetStream
//! publishes (acks awaited in windows of 1024, as the sink does) and an ordered
//! consumer parsing each message with serde_json into a `HashMap`, and their ratio.
//!
//! The benchmark starts its own nats-server (JetStream on, a temporary store, a free
//! port on 127.0.0.1) from `NATS_SERVER`, or from the path `.ci/nats-server` prints.
//!
//! ```text
//! NATS_SERVER=$(bash .ci/nats-server) cargo run --release -p intake-nats --example bench_nats
//! cargo run --release -p intake-nats --example bench_nats -- 100000   # another row count
//! cargo run --release -p intake-nats --example bench_nats -- 100000 intake   # one side (or `plain`), to profile it
//! ```

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

#[path = "support/nats_server.rs"]
mod nats_server;
use nats_server::Server;

use async_nats::jetstream::{self, consumer::pull::OrderedConfig, stream::Config as StreamConfig};
use futures::StreamExt;
use intake_core::{Column, DataType, Pipeline, Reader, Schema, SourceContext, source_fn};
use intake_nats::{JetStreamSink, Replica};

const ROUNDS: usize = 3;
const WINDOW: usize = 1024;

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Row {
    key: i64,
    value: i64,
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rows: usize = match args.next() {
        Some(n) => n.parse()?,
        None => 200_000,
    };
    // One side alone, for profiling it (`perf record`, callgrind).
    let mode = args.next().unwrap_or_else(|| "both".to_owned());
    let (run_intake, run_plain) = match mode.as_str() {
        "both" => (true, true),
        "intake" => (true, false),
        "plain" => (false, true),
        other => anyhow::bail!("unknown mode {other:?}: expected both, intake or plain"),
    };
    // Retries and other warnings of the sink and the replica, on stderr.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let server = Server::start()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let client = async_nats::connect(server.url()).await?;
        println!("{rows} rows, each its own key, through one local nats-server (JetStream, file store)");
        println!(
            "| round | intake rows/s | async-nats rows/s | ratio | intake µs CPU/row (client + server) | async-nats µs CPU/row (client + server) |"
        );
        println!("|---|---:|---:|---:|---:|---:|");
        let server_pid = server_pid()?;
        for round in 1..=ROUNDS {
            let before = Cpu::read(server_pid)?;
            let intake = if run_intake {
                through_intake(&client, rows, round).await?
            } else {
                Duration::ZERO
            };
            let middle = Cpu::read(server_pid)?;
            let plain = if run_plain {
                through_async_nats(&client, rows, round).await?
            } else {
                Duration::ZERO
            };
            let after = Cpu::read(server_pid)?;
            let (intake_cpu, plain_cpu) = (middle.since(&before, rows), after.since(&middle, rows));
            println!(
                "| {round} | {:.0} | {:.0} | {:.2} | {:.1} + {:.1} | {:.1} + {:.1} |",
                rows as f64 / intake.as_secs_f64(),
                rows as f64 / plain.as_secs_f64(),
                plain.as_secs_f64() / intake.as_secs_f64(),
                intake_cpu.0,
                intake_cpu.1,
                plain_cpu.0,
                plain_cpu.1,
            );
        }
        anyhow::Ok(())
    })
}

/// CPU time (user + system, from `/proc`) of this process and of the nats-server, which
/// share the machine's cores: where the work of each side goes.
struct Cpu {
    client: Duration,
    server: Duration,
}

impl Cpu {
    fn read(server: u32) -> anyhow::Result<Cpu> {
        Ok(Cpu {
            client: cpu_time("/proc/self/stat")?,
            server: cpu_time(&format!("/proc/{server}/stat"))?,
        })
    }

    /// Microseconds of CPU per row since `earlier`: (client, server).
    fn since(&self, earlier: &Cpu, rows: usize) -> (f64, f64) {
        let per_row = |d: Duration| d.as_secs_f64() * 1e6 / rows as f64;
        (
            per_row(self.client.saturating_sub(earlier.client)),
            per_row(self.server.saturating_sub(earlier.server)),
        )
    }
}

/// The nats-server this process started (the `Server` keeps its `Child` to itself).
fn server_pid() -> anyhow::Result<u32> {
    let me = std::process::id().to_string();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((name, rest)) = stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(") ")) else {
            continue;
        };
        // Field 4 is the parent's pid.
        if name == "nats-server" && rest.split_whitespace().nth(1) == Some(me.as_str()) {
            return Ok(entry.file_name().to_string_lossy().parse()?);
        }
    }
    anyhow::bail!("the nats-server child process was not found in /proc")
}

/// utime + stime of a `/proc/<pid>/stat` file.
fn cpu_time(path: &str) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(path)?;
    // The command name (field 2) may hold spaces; the fields after it do not.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("{path}: unexpected format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let ticks: u64 = fields.get(11).zip(fields.get(12)).map_or(Ok(0), |(u, s)| {
        Ok::<_, std::num::ParseIntError>(u.parse::<u64>()? + s.parse::<u64>()?)
    })?;
    // Linux reports them in USER_HZ, 100 on every architecture intake runs on.
    Ok(Duration::from_millis(ticks * 10))
}

/// Sink → JetStream → replica: from the first row sent until the replica holds all.
async fn through_intake(client: &async_nats::Client, rows: usize, round: usize) -> anyhow::Result<Duration> {
    let schema = Schema::new([
        Column::new("key", DataType::Int).primary_key(),
        Column::new("value", DataType::Int),
    ])?;
    let stream = format!("W7_INTAKE_{round}");
    let prefix = format!("w7.intake.{round}");
    // The stream exists before the replica starts, as it would in a deployment.
    let mut sink = JetStreamSink::new(client.clone(), stream.clone(), prefix.clone());
    intake_core::Sink::resume(&mut sink, None)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;

    let mut service = Pipeline::new();
    let replica = service.read(
        "replica",
        Replica::new(client.clone(), stream.clone(), prefix.clone()),
        Reader::json(schema.clone()),
    );
    let service_shutdown = service.shutdown_handle();
    let service_run = tokio::spawn(service.run());

    let started = Instant::now();
    let source = source_fn(move |ctx: SourceContext| async move {
        for i in 0..rows {
            ctx.next_bytes(format!(r#"{{"key":{i},"value":{i}}}"#)).await?;
        }
        Ok(())
    });
    let mut worker = Pipeline::new();
    let table = worker.read("rows", source, Reader::json(schema));
    table.sink("changelog", sink);
    let worker_run = tokio::spawn(worker.run());
    replica.wait_for(|t| t.len() == rows).await?;
    let elapsed = started.elapsed();
    worker_run.await??;
    service_shutdown.shutdown();
    service_run.await??;
    jetstream::new(client.clone()).delete_stream(&stream).await?;
    Ok(elapsed)
}

/// The same rows published with async-nats and read back by an ordered consumer into a
/// `HashMap`.
async fn through_async_nats(
    client: &async_nats::Client,
    rows: usize,
    round: usize,
) -> anyhow::Result<Duration> {
    let js = jetstream::new(client.clone());
    let name = format!("W7_PLAIN_{round}");
    let prefix = format!("w7.plain.{round}");
    let stream = js
        .create_stream(StreamConfig {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            max_messages_per_subject: 1,
            ..StreamConfig::default()
        })
        .await?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: format!("{prefix}.>"),
            ..OrderedConfig::default()
        })
        .await?;
    let reader = tokio::spawn(async move {
        let mut messages = consumer.messages().await?;
        let mut table: HashMap<i64, Row> = HashMap::new();
        while table.len() < rows {
            let Some(message) = messages.next().await else {
                anyhow::bail!("the consumer ended");
            };
            let row: Row = serde_json::from_slice(&message?.payload)?;
            table.insert(row.key, row);
        }
        anyhow::Ok(())
    });
    let started = Instant::now();
    let mut acks = VecDeque::with_capacity(WINDOW);
    for i in 0..rows {
        if acks.len() == WINDOW
            && let Some(ack) = acks.pop_front()
        {
            ack.await?;
        }
        let payload = format!(r#"{{"key":{i},"value":{i}}}"#);
        acks.push_back(js.publish(format!("{prefix}.{i}"), payload.into()).await?);
    }
    for ack in acks {
        ack.await?;
    }
    reader.await??;
    let elapsed = started.elapsed();
    js.delete_stream(&name).await?;
    Ok(elapsed)
}
