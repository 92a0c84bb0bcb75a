//! An embedded server speaking Polygon's stocks protocol (connected → auth →
//! auth_success → subscribe → arrays of `A` events) with generated aggregates, so the
//! examples run without an account or network. Shared by `#[path]` modules.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// What the feed sends.
pub(crate) struct Feed {
    /// Aggregate events per connection before a normal close; `None`: no end.
    pub(crate) events: Option<usize>,
    /// The pause between arrays of events (one event per subscribed symbol).
    pub(crate) every: Duration,
    /// While true, the feed closes its connections (1001) and refuses new ones.
    pub(crate) outage: Option<watch::Receiver<bool>>,
}

/// Starts the feed on 127.0.0.1 and returns its `ws://` URL.
pub(crate) async fn start(feed: Feed) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/stocks", listener.local_addr()?);
    let feed = std::sync::Arc::new(feed);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if feed.outage.as_ref().is_some_and(|down| *down.borrow()) {
                continue; // dropped: the client's connect fails
            }
            let feed = feed.clone();
            tokio::spawn(async move {
                if let Err(e) = serve(tcp, &feed).await {
                    tracing::debug!("embedded feed: {e}");
                }
            });
        }
    });
    Ok(url)
}

async fn serve(tcp: TcpStream, feed: &Feed) -> anyhow::Result<()> {
    let mut ws = tokio_tungstenite::accept_async(tcp).await?;
    let send = |value: Value| Message::text(value.to_string());
    ws.send(send(json!([{"ev": "status", "status": "connected"}])))
        .await?;
    let mut symbols = Vec::new();
    while let Some(message) = ws.next().await {
        let Message::Text(text) = message? else { continue };
        let request: Value = serde_json::from_str(&text)?;
        match request["action"].as_str() {
            Some("auth") => {
                ws.send(send(json!([{"ev": "status", "status": "auth_success"}])))
                    .await?
            }
            Some("subscribe") => {
                let params = request["params"].as_str().unwrap_or_default();
                symbols.extend(
                    params
                        .split(',')
                        .filter_map(|p| p.strip_prefix("A."))
                        .map(str::to_owned),
                );
                ws.send(send(json!([{"ev": "status", "status": "success"}])))
                    .await?;
                break;
            }
            _ => {}
        }
    }
    let mut outage = feed.outage.clone();
    let mut prices: Vec<f64> = symbols.iter().map(|_| 100.0).collect();
    let mut tick = tokio::time::interval(feed.every);
    let mut sent = 0;
    for n in 0_i64.. {
        if feed.events.is_some_and(|limit| sent >= limit) {
            break;
        }
        tokio::select! {
            _ = tick.tick() => {}
            () = went_down(outage.as_mut()) => {
                let frame = CloseFrame { code: CloseCode::Away, reason: "outage".into() };
                ws.close(Some(frame)).await?;
                return Ok(());
            }
        }
        let start = 1_700_000_000_000 + n * 1000;
        let events: Vec<Value> = symbols
            .iter()
            .zip(&mut prices)
            .enumerate()
            .map(|(i, (sym, price))| {
                let open = *price;
                // A deterministic wiggle, different for each symbol.
                *price += ((n * 7 + i as i64) as f64 * 0.7 + open).sin();
                json!({
                    "ev": "A", "sym": sym, "v": 100 + n % 50, "av": 10_000 + n, "op": 100.0, "vw": open,
                    "o": open, "c": *price, "h": open.max(*price), "l": open.min(*price), "a": open,
                    "z": 10, "s": start, "e": start + 1000,
                })
            })
            .collect();
        sent += events.len();
        ws.send(send(Value::Array(events))).await?;
    }
    let done = CloseFrame {
        code: CloseCode::Normal,
        reason: "feed finished".into(),
    };
    ws.close(Some(done)).await?;
    while let Some(Ok(_)) = ws.next().await {}
    Ok(())
}

/// Completes when an outage begins; never without an outage switch.
async fn went_down(outage: Option<&mut watch::Receiver<bool>>) {
    match outage {
        Some(outage) => drop(outage.wait_for(|down| *down).await),
        None => std::future::pending().await,
    }
}
