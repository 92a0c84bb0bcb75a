//! Wikimedia's recent changes, a server-sent event stream, into a table keyed by
//! wiki and page title: each row is the latest change to a page.
//!
//! By default it reads an embedded server that streams recentchange-style events
//! (with a keep-alive comment, one malformed event, and a dropped connection halfway,
//! which the source resumes with `Last-Event-ID`) and ends by itself. With
//! `INTAKE_WIKIMEDIA=1` it reads the real stream for `INTAKE_SECONDS` (default 20)
//! seconds, or until Ctrl-C.
//!
//! ```text
//! cargo run -p intake-http --example http_sse
//! INTAKE_WIKIMEDIA=1 cargo run -p intake-http --example http_sse
//! ```

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use futures::StreamExt;
use intake_core::{Column, DataType, ErrorPolicy, Pipeline, Reader, Reconnect, Schema};
use intake_http::SseSource;
use tokio::net::TcpListener;

const WIKIMEDIA: &str = "https://stream.wikimedia.org/v2/stream/recentchange";
/// Events the embedded server sends in all.
const EMBEDDED_EVENTS: u64 = 40;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let real = std::env::var_os("INTAKE_WIKIMEDIA").is_some();
    let url = match real {
        true => WIKIMEDIA.to_owned(),
        false => embedded_server().await?,
    };

    // The fields of a recentchange event this service keeps; the others are ignored.
    let schema = Schema::new([
        Column::new("wiki", DataType::String).primary_key(),
        Column::new("title", DataType::String).primary_key(),
        Column::new("type", DataType::String),
        Column::new("user", DataType::String),
        Column::new("bot", DataType::Bool).default(false),
        Column::new("timestamp", DataType::Int),
    ])?;
    let source = SseSource::new(url)
        // Wikimedia asks clients to say who they are.
        .header("User-Agent", "intake-http-sse-example/0.1 (an intake example)")
        .event_type("message")
        // The stream is busy; a minute without a byte means a dead connection.
        .silence_timeout(Duration::from_secs(60))
        .reconnect(Reconnect::default().min_delay(Duration::from_millis(100)));
    let stats = source.stats();

    let mut pipeline = Pipeline::new();
    // A feed: a malformed event is skipped and reported, not the end of the service.
    let reader = Reader::json(schema).error_policy(ErrorPolicy::SkipAndReport);
    let pages = pipeline.read("recentchange", source, reader);
    let mut rejected = pipeline.rejected(64);
    tokio::spawn(async move {
        while let Some(rejected) = rejected.next().await {
            println!("skipped: {} ({} bytes)", rejected.reason(), rejected.raw().len());
        }
    });
    let shutdown = pipeline.shutdown_handle();
    if real {
        let seconds = std::env::var("INTAKE_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20);
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(seconds)) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            shutdown.shutdown();
        });
    }
    pipeline.run().await?;

    println!(
        "{} pages changed; {} events read, {} rejected, {} reconnects; last event ID {}",
        pages.len(),
        stats.events(),
        pages.stats().rejected(),
        stats.reconnects(),
        pages
            .committed_offsets()
            .first()
            .and_then(|(_, offset)| offset.as_str().map(str::to_owned))
            .unwrap_or_default(),
    );
    let snapshot = pages.snapshot();
    let mut latest: Vec<_> = snapshot.rows().iter().map(|(_, row)| row).collect();
    latest.sort_by_key(|row| std::cmp::Reverse(row.get("timestamp").and_then(|t| t.as_int())));
    for row in latest.iter().take(5) {
        let text = |column| {
            row.get(column)
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        println!(
            "  {:<12} {:<8} {} by {}",
            text("wiki"),
            text("type"),
            text("title"),
            text("user")
        );
    }
    Ok(())
}

/// One recentchange-style event, with a Kafka-position ID as Wikimedia sends.
fn event(n: u64) -> String {
    let data = serde_json::json!({
        "$schema": "/mediawiki/recentchange/1.0.0",
        "meta": {"domain": "en.wikipedia.org", "stream": "mediawiki.recentchange"},
        "id": 1_000 + n,
        "type": if n.is_multiple_of(7) { "new" } else { "edit" },
        "title": format!("Page {}", n % 13),
        "wiki": if n.is_multiple_of(3) { "dewiki" } else { "enwiki" },
        "user": format!("Editor{}", n % 5),
        "bot": n.is_multiple_of(4),
        "timestamp": 1_700_000_000 + n,
    });
    let id = format!(r#"[{{"topic":"eqiad.mediawiki.recentchange","partition":0,"offset":{n}}}]"#);
    format!("event: message\nid: {id}\ndata: {data}\n\n")
}

/// Streams [`EMBEDDED_EVENTS`] events: the first connection drops halfway, the
/// reconnect resumes after its `Last-Event-ID`, and once all are sent the server
/// answers 204 (no more), which ends the source.
async fn embedded_server() -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v2/stream/recentchange", listener.local_addr()?);
    let handler = |headers: HeaderMap| async move {
        // Resume after the event named by Last-Event-ID (its Kafka offset).
        let after = headers
            .get("last-event-id")
            .and_then(|id| id.to_str().ok())
            .and_then(|id| serde_json::from_str::<serde_json::Value>(id).ok())
            .and_then(|id| id[0]["offset"].as_u64());
        let first = after.map_or(0, |offset| offset + 1);
        if first >= EMBEDDED_EVENTS {
            return StatusCode::NO_CONTENT.into_response();
        }
        // The first connection stops halfway, as a dropped connection would.
        let last = if after.is_none() {
            EMBEDDED_EVENTS / 2
        } else {
            EMBEDDED_EVENTS
        };
        let chunks = (first..last).map(move |n| {
            let mut text = event(n);
            if n == 5 {
                text += ": keep-alive\n";
            }
            if n == 30 {
                text += "event: message\ndata: {\"wiki\": \"enwiki\", \"title\": \n\n";
            }
            Ok::<_, std::convert::Infallible>(Bytes::from(text))
        });
        let body = futures::stream::iter(chunks).then(|chunk| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            chunk
        });
        (
            [(header::CONTENT_TYPE, "text/event-stream")],
            Body::from_stream(body),
        )
            .into_response()
    };
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(handler)).await });
    Ok(url)
}
