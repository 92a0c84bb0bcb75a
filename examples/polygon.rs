//! Polygon.io stock aggregates into a live table keyed by symbol, the Rust
//! counterpart of Pathway's WebSocket tutorial.
//!
//! By default it starts an embedded server on 127.0.0.1 that speaks Polygon's
//! protocol (connected → auth → auth_success → subscribe → arrays of `A` events) with
//! generated prices, so it runs without an account or network, and it stops by itself
//! after a few seconds. With `POLYGON_API_KEY` set, it reads Polygon's delayed feed
//! instead, until Ctrl-C.
//!
//! ```text
//! cargo run -p intake-ws --example polygon
//! POLYGON_API_KEY=... cargo run -p intake-ws --example polygon
//! ```

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use intake_core::{ErrorPolicy, Pipeline, Reader, Subscriber};
use intake_ws::{Polygon, Reconnect, WebSocketSource};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// How many aggregate events the embedded server sends before closing.
const DEMO_EVENTS: usize = 200;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    // Polygon's aggregates ("A" events), keyed by symbol; other fields are ignored.
    let schema = Polygon::aggregates_schema();

    let (source, demo) = match std::env::var("POLYGON_API_KEY") {
        Ok(key) => (
            WebSocketSource::new(Polygon::DELAYED_STOCKS_URL).protocol(Polygon::new(key, "A.*")),
            false,
        ),
        Err(_) => {
            let url = demo_server().await?;
            println!("no POLYGON_API_KEY: reading generated data from the embedded server at {url}");
            let source = WebSocketSource::new(url)
                .protocol(Polygon::new("demo-key", "A.AAPL,A.MSFT,A.NVDA,A.TSLA"))
                // The demo server closes normally when it is done.
                .reconnect_on_normal_close(false);
            (source, true)
        }
    };
    let source = source
        .connect_timeout(Duration::from_secs(10))
        .ping_interval(Duration::from_secs(20))
        .silence_timeout(Duration::from_secs(60))
        .reconnect(Reconnect::default().max_retries(10));
    let stats = source.stats();

    let mut pipeline = Pipeline::new();
    // A feed must not die on its first odd frame: skip bad input, count and report it
    // (docs/websocket.md, "Error policy").
    let reader = Reader::json(schema).error_policy(ErrorPolicy::SkipAndReport);
    let aggregates = pipeline.read("polygon", source, reader);
    aggregates.subscribe(Subscriber::new().on_change(|key, row, time, is_addition| {
        if is_addition {
            let close = row.get("c").and_then(|v| v.as_float()).unwrap_or_default();
            let volume = row.get("v").and_then(|v| v.as_int()).unwrap_or_default();
            println!("{time} {key:>6}  close {close:>8.2}  volume {volume:>6}");
        }
    }));
    if demo {
        pipeline.run().await?;
    } else {
        // Ctrl-C shuts down gracefully; run_until returns once that is done.
        pipeline.run_until(tokio::signal::ctrl_c()).await?;
    }

    println!(
        "{} symbols; {} messages in {} frames; {} reconnects",
        aggregates.len(),
        stats.messages(),
        stats.frames(),
        stats.reconnects()
    );
    Ok(())
}

/// Starts a local server that speaks Polygon's protocol and sends `DEMO_EVENTS`
/// aggregates for the subscribed symbols, about a hundred a second.
async fn demo_server() -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/stocks", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Err(e) = serve_polygon(tcp).await {
                    eprintln!("demo server: {e}");
                }
            });
        }
    });
    Ok(url)
}

async fn serve_polygon(tcp: tokio::net::TcpStream) -> anyhow::Result<()> {
    let mut ws = tokio_tungstenite::accept_async(tcp).await?;
    let send = |value: Value| Message::text(value.to_string());
    ws.send(send(
        json!([{"ev": "status", "status": "connected", "message": "Connected Successfully"}]),
    ))
    .await?;
    let mut symbols = Vec::new();
    while let Some(message) = ws.next().await {
        let Message::Text(text) = message? else { continue };
        let request: Value = serde_json::from_str(&text)?;
        match request["action"].as_str() {
            Some("auth") => {
                ws.send(send(
                    json!([{"ev": "status", "status": "auth_success", "message": "authenticated"}]),
                ))
                .await?;
            }
            Some("subscribe") => {
                let params = request["params"].as_str().unwrap_or_default();
                symbols.extend(
                    params
                        .split(',')
                        .filter_map(|p| p.strip_prefix("A."))
                        .map(str::to_owned),
                );
                ws.send(send(json!([{"ev": "status", "status": "success", "message": format!("subscribed to: {params}")}])))
                    .await?;
                break;
            }
            _ => {}
        }
    }
    let mut prices: Vec<f64> = symbols.iter().map(|_| 100.0).collect();
    let mut start = 1_700_000_000_000_i64;
    let mut sent = 0;
    while sent < DEMO_EVENTS {
        let mut events = Vec::new();
        for (symbol, price) in symbols.iter().zip(&mut prices) {
            // A deterministic wiggle: no randomness needed for a demo.
            let open = *price;
            *price += ((sent as f64) * 0.7 + open).sin();
            events.push(json!({
                "ev": "A", "sym": symbol, "v": 100 + sent % 50, "av": 10_000 + sent, "op": 100.0,
                "vw": open, "o": open, "c": *price, "h": open.max(*price), "l": open.min(*price),
                "a": open, "z": 10, "s": start, "e": start + 1000,
            }));
            sent += 1;
        }
        ws.send(send(Value::Array(events))).await?;
        start += 1000;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let done = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "demo finished".into(),
    };
    ws.close(Some(done)).await?;
    while let Some(Ok(_)) = ws.next().await {}
    Ok(())
}
