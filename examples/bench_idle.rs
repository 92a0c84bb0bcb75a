//! Idle footprint: the resident memory of a running pipeline with one idle WebSocket
//! source and an empty table (issue 11, item 6).
//!
//! The process first measures itself with only the runtime and an embedded server
//! that accepts connections and sends nothing; then it runs the pipeline, waits for
//! the source to connect and settle, and measures again. The difference is what intake
//! costs at rest. Run it in release mode:
//!
//! ```text
//! cargo run --release -p intake-ws --example bench_idle
//! ```

use std::time::Duration;

use futures::StreamExt;
use intake_core::{ErrorPolicy, Pipeline, Reader};
use intake_ws::{Polygon, WebSocketSource};
use tokio::net::TcpListener;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // A server that completes the handshake and then stays silent.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await {
                    while ws.next().await.is_some() {}
                }
            });
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_mib();

    let source = WebSocketSource::new(url);
    let stats = source.stats();
    let mut pipeline = Pipeline::new();
    let reader = Reader::json(Polygon::aggregates_schema()).error_policy(ErrorPolicy::SkipAndReport);
    let table = pipeline.read("idle", source, reader);
    let shutdown = pipeline.shutdown_handle();
    let running = tokio::spawn(pipeline.run());
    while !stats.connected() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_mib();
    println!("  runtime + embedded server: {before:6.1} MiB RSS");
    println!("  + idle pipeline:           {idle:6.1} MiB RSS  ({:+.1} MiB for intake; {} rows)", idle - before, table.len());
    shutdown.shutdown();
    running.await??;
    Ok(())
}
