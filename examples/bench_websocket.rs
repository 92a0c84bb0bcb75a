//! Throughput of the WebSocket source: a local server pushes 1,000,000 Polygon-style
//! aggregate events (JSON arrays of 100 per frame) as fast as the client reads.
//! Measured twice in the same run: through intake (`WebSocketSource` with the
//! `Polygon` protocol into a table keyed by `sym`) and through a plain
//! tokio-tungstenite + serde_json read loop into a `HashMap`, and their ratio.
//!
//! ```text
//! cargo run --release -p intake-ws --example bench_websocket
//! ```

use std::collections::HashMap;
use std::time::Instant;

use futures::{SinkExt, StreamExt};
use intake_core::{Pipeline, Reader};
use intake_ws::{Polygon, Reconnect, WebSocketSource};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

const EVENTS: usize = 1_000_000;
const PER_FRAME: usize = 100;
const SYMBOLS: usize = 5_000;
const ROUNDS: usize = 3;

fn main() -> anyhow::Result<()> {
    let frames = frames();
    let bytes: usize = frames.iter().map(|f| f.len()).sum();
    println!(
        "{EVENTS} events in {} frames of {PER_FRAME} ({:.1} MiB of JSON), {SYMBOLS} symbols",
        frames.len(),
        bytes as f64 / (1 << 20) as f64
    );

    // The server runs on a thread and runtime of its own, sending pre-serialized frames.
    let url = {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await?;
                tx.send(format!("ws://{}/stocks", listener.local_addr()?))?;
                while let Ok((tcp, _)) = listener.accept().await {
                    let frames = frames.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(tcp, frames).await {
                            eprintln!("server: {e}");
                        }
                    });
                }
                anyhow::Ok(())
            })
        });
        rx.recv()?
    };

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (mut best_intake, mut best_plain) = (0.0_f64, 0.0_f64);
    for round in 1..=ROUNDS {
        let plain = runtime.block_on(plain_loop(&url))?;
        let intake = runtime.block_on(through_intake(&url))?;
        println!(
            "round {round}: plain tokio-tungstenite + serde_json {:>10.0} events/s | intake WebSocketSource {:>10.0} events/s | ratio {:.2}",
            plain,
            intake,
            intake / plain
        );
        best_intake = best_intake.max(intake);
        best_plain = best_plain.max(plain);
    }
    println!(
        "best: plain {best_plain:.0} events/s, intake {best_intake:.0} events/s, ratio {:.2} (target >= 0.6)",
        best_intake / best_plain
    );
    Ok(())
}

/// Every frame of the run, serialized once.
fn frames() -> Vec<Utf8Bytes> {
    (0..EVENTS / PER_FRAME)
        .map(|frame| {
            let events: Vec<Value> = (0..PER_FRAME)
                .map(|i| {
                    let n = frame * PER_FRAME + i;
                    let price = 100.0 + (n % 1000) as f64 / 100.0;
                    json!({
                        "ev": "A", "sym": format!("SYM{}", n % SYMBOLS), "v": n % 500, "av": n, "op": 100.0,
                        "vw": price, "o": price, "c": price + 0.01, "h": price + 0.02, "l": price - 0.01,
                        "a": price, "z": 12, "s": 1_700_000_000_000_i64 + n as i64, "e": 1_700_000_001_000_i64 + n as i64,
                    })
                })
                .collect();
            Utf8Bytes::from(Value::Array(events).to_string())
        })
        .collect()
}

/// Polygon's handshake, then every frame, then a normal close.
async fn serve(tcp: tokio::net::TcpStream, frames: Vec<Utf8Bytes>) -> anyhow::Result<()> {
    let mut ws = tokio_tungstenite::accept_async(tcp).await?;
    ws.send(Message::text(r#"[{"ev":"status","status":"connected"}]"#))
        .await?;
    while let Some(message) = ws.next().await {
        let Message::Text(text) = message? else { continue };
        if text.contains("\"auth\"") {
            ws.send(Message::text(r#"[{"ev":"status","status":"auth_success"}]"#))
                .await?;
        } else if text.contains("\"subscribe\"") {
            break;
        }
    }
    for (i, frame) in frames.into_iter().enumerate() {
        ws.feed(Message::Text(frame)).await?;
        if i % 16 == 15 {
            ws.flush().await?;
        }
    }
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    }))
    .await?;
    while let Some(Ok(_)) = ws.next().await {}
    Ok(())
}

async fn through_intake(url: &str) -> anyhow::Result<f64> {
    // Polygon's aggregates ("A" events), keyed by symbol; other fields are ignored.
    let schema = Polygon::aggregates_schema();
    let source = WebSocketSource::new(url)
        .protocol(Polygon::new("bench", "A.*"))
        .reconnect(Reconnect::never())
        .reconnect_on_normal_close(false);
    let stats = source.stats();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("polygon", source, Reader::json(schema));
    let started = Instant::now();
    pipeline.run().await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        stats.messages() as usize == EVENTS,
        "got {} events",
        stats.messages()
    );
    anyhow::ensure!(table.len() == SYMBOLS, "table has {} rows", table.len());
    Ok(EVENTS as f64 / elapsed.as_secs_f64())
}

/// The baseline: the same handshake by hand, then parse each frame into
/// `serde_json::Value`s and upsert them by symbol.
async fn plain_loop(url: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let mut table: HashMap<String, Value> = HashMap::new();
    let mut events = 0usize;
    while let Some(message) = ws.next().await {
        let Message::Text(text) = message? else { continue };
        let frame: Vec<Value> = serde_json::from_str(&text)?;
        for event in frame {
            match (event["ev"].as_str(), event["status"].as_str()) {
                (Some("status"), Some("connected")) => {
                    ws.send(Message::text(
                        json!({"action": "auth", "params": "bench"}).to_string(),
                    ))
                    .await?;
                }
                (Some("status"), Some("auth_success")) => {
                    ws.send(Message::text(
                        json!({"action": "subscribe", "params": "A.*"}).to_string(),
                    ))
                    .await?;
                }
                (Some("A"), _) => {
                    let Some(sym) = event["sym"].as_str() else {
                        continue;
                    };
                    events += 1;
                    if let Some(row) = table.get_mut(sym) {
                        *row = event;
                    } else {
                        table.insert(sym.to_owned(), event);
                    }
                }
                _ => {}
            }
        }
    }
    let elapsed = started.elapsed();
    anyhow::ensure!(events == EVENTS && table.len() == SYMBOLS, "got {events} events");
    std::hint::black_box(&table);
    Ok(EVENTS as f64 / elapsed.as_secs_f64())
}
