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

#[path = "support/polygon_feed.rs"]
mod polygon_feed;

use intake_core::{ErrorPolicy, Pipeline, Reader, Subscriber};
use intake_ws::{Polygon, Reconnect, WebSocketSource};

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
            let url = polygon_feed::start(polygon_feed::Feed {
                events: Some(DEMO_EVENTS),
                every: Duration::from_millis(40),
                outage: None,
            })
            .await?;
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
