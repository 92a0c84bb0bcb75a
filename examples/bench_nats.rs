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
    let rows: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 200_000,
    };
    let server = Server::start()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let client = async_nats::connect(server.url()).await?;
        println!("{rows} rows, each its own key, through one local nats-server (JetStream, file store)");
        println!("| round | intake rows/s | async-nats rows/s | ratio |");
        println!("|---|---:|---:|---:|");
        for round in 1..=ROUNDS {
            let intake = through_intake(&client, rows, round).await?;
            let plain = through_async_nats(&client, rows, round).await?;
            println!(
                "| {round} | {:.0} | {:.0} | {:.2} |",
                rows as f64 / intake.as_secs_f64(),
                rows as f64 / plain.as_secs_f64(),
                plain.as_secs_f64() / intake.as_secs_f64()
            );
        }
        anyhow::Ok(())
    })
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
