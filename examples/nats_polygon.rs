//! A worker and two service replicas on one machine, with no network beyond 127.0.0.1:
//! an embedded Polygon feed (the WebSocket server of the `polygon` example) is ingested
//! by a worker into a table keyed by symbol, whose `JetStreamSink` publishes every
//! commit to a JetStream changelog; two `Replica` pipelines, as two services would,
//! rebuild the table from it and follow it. At the end all three tables are compared.
//!
//! The example starts its own nats-server (JetStream on, a temporary store, a free
//! port) from `NATS_SERVER`, or from the path `bash .ci/nats-server` prints.
//!
//! ```text
//! NATS_SERVER=$(bash .ci/nats-server) cargo run -p intake-nats --example nats_polygon
//! ```
//!
//! In a deployment the worker and each service are separate processes (see
//! `docs/distributed.md`); here they are three pipelines in one process.

use std::time::{Duration, Instant};

#[path = "support/nats_server.rs"]
mod nats_server;
use nats_server::Server as NatsServer;
#[path = "support/polygon_feed.rs"]
mod polygon_feed;

use intake_core::{ErrorPolicy, Key, Pipeline, Reader, Row, Table};
use intake_nats::{JetStreamSink, Replica};
use intake_ws::{Polygon, Reconnect, WebSocketSource};

/// How many aggregate events the embedded feed sends before closing.
const EVENTS: usize = 400;
const STREAM: &str = "POLYGON_AGGREGATES";
const PREFIX: &str = "polygon.aggregates";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let server = NatsServer::start()?;
    let feed = polygon_feed::start(polygon_feed::Feed {
        events: Some(EVENTS),
        every: Duration::from_millis(10),
        outage: None,
    })
    .await?;
    println!("nats-server at {}, Polygon feed at {feed}", server.url());
    let client = async_nats::connect(server.url()).await?;
    let schema = Polygon::aggregates_schema();

    // Two services start first: a replica waits for the changelog stream to appear.
    let services: Vec<(Table, _, _)> = (1..=2)
        .map(|n| {
            let mut service = Pipeline::new();
            let replica = Replica::new(client.clone(), STREAM, PREFIX)
                .reconnect(intake_core::Reconnect::default().min_delay(Duration::from_millis(100)));
            let table = service.read(format!("replica-{n}"), replica, Reader::json(schema.clone()));
            let shutdown = service.shutdown_handle();
            (table, shutdown, tokio::spawn(service.run()))
        })
        .collect();

    // The worker: the feed into a table, its commits into the changelog.
    let source = WebSocketSource::new(feed)
        .protocol(Polygon::new("demo-key", "A.AAPL,A.MSFT,A.NVDA,A.TSLA,A.AMZN"))
        .reconnect_on_normal_close(false)
        .reconnect(Reconnect::default().max_retries(3));
    let mut worker = Pipeline::new();
    let reader = Reader::json(schema).error_policy(ErrorPolicy::SkipAndReport);
    let aggregates = worker.read("polygon", source, reader);
    aggregates.sink("changelog", JetStreamSink::new(client.clone(), STREAM, PREFIX));
    worker.run().await?;
    println!(
        "worker: {} symbols after {} commits",
        aggregates.len(),
        aggregates.stats().commits()
    );

    let expected = sorted(&aggregates);
    let deadline = Instant::now() + Duration::from_secs(20);
    for (table, shutdown, run) in services {
        let caught_up =
            tokio::time::timeout_at(deadline.into(), table.wait_for(|t| sorted(t) == expected)).await;
        anyhow::ensure!(
            matches!(caught_up, Ok(Ok(()))),
            "{} did not reach the worker's table",
            table.name()
        );
        println!(
            "{}: {} symbols, identical to the worker's table ({} commits)",
            table.name(),
            table.len(),
            table.stats().commits()
        );
        shutdown.shutdown();
        run.await??;
    }
    for (key, row) in &expected {
        let close = row.get("c").and_then(|v| v.as_float()).unwrap_or_default();
        println!("  {key:>5}  close {close:>8.2}");
    }
    Ok(())
}

fn sorted(table: &Table) -> Vec<(Key, Row)> {
    let mut rows = table.snapshot().rows().to_vec();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}
