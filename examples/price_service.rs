//! A price service: a WebSocket feed into a keyed table, served over HTTP with axum,
//! with Prometheus metrics and a stale flag while the feed is down.
//!
//! It runs with no account and no network: an embedded server on 127.0.0.1 speaks
//! Polygon's protocol with generated prices, and goes down for a few seconds every
//! twenty, so the stale flag can be seen. With `POLYGON_API_KEY` set it reads
//! Polygon's delayed feed instead. Ctrl-C stops the feed, the pipeline and the HTTP
//! server gracefully.
//!
//! ```text
//! cargo run -p intake-ws --example price_service
//! curl localhost:3000/prices          # every symbol, with "stale"
//! curl localhost:3000/prices/AAPL     # one symbol, 404 if unknown
//! curl localhost:3000/status          # table, source and connection figures
//! curl localhost:3000/metrics         # Prometheus text
//! ```
//!
//! `--check` runs it on a free port, checks each route (and the stale flag during an
//! outage of the embedded feed), then stops it: what CI runs.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

#[path = "support/polygon_feed.rs"]
mod polygon_feed;

use anyhow::{Context, ensure};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use intake_core::{ErrorPolicy, Pipeline, Reader, Row, Table};
use intake_ws::{Polygon, Reconnect, WebSocketSource, WsStats};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Prices older than this, or any while the feed is disconnected, are flagged stale.
const STALE_AFTER: Duration = Duration::from_secs(3);

/// What the handlers share.
#[derive(Clone)]
struct App {
    prices: Table,
    feed: WsStats,
    prometheus: PrometheusHandle,
}

impl App {
    /// Whether the prices may be out of date: the feed is down, or silent.
    fn stale(&self) -> bool {
        let last = self
            .prices
            .stats()
            .sources()
            .first()
            .and_then(|s| s.last_message());
        let silent = last
            .and_then(|at| SystemTime::now().duration_since(at).ok())
            .is_none_or(|age| age > STALE_AFTER);
        !self.feed.connected() || silent
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let check = std::env::args().any(|a| a == "--check");
    // Before the pipeline runs: tables and sources register their metrics as they start.
    let prometheus = PrometheusBuilder::new().install_recorder()?;

    let outage = watch::Sender::new(false);
    let source = match std::env::var("POLYGON_API_KEY") {
        Ok(key) => WebSocketSource::new(Polygon::DELAYED_STOCKS_URL).protocol(Polygon::new(key, "A.*")),
        Err(_) => {
            let url = polygon_feed::start(polygon_feed::Feed {
                events: None,
                every: Duration::from_millis(100),
                outage: Some(outage.subscribe()),
            })
            .await?;
            tracing::info!(%url, "no POLYGON_API_KEY: reading generated prices from the embedded feed");
            if !check {
                tokio::spawn(outages(outage.clone()));
            }
            WebSocketSource::new(url).protocol(Polygon::new("demo-key", "A.AAPL,A.MSFT,A.NVDA,A.TSLA"))
        }
    };
    let source = source.silence_timeout(Duration::from_secs(10)).reconnect(
        Reconnect::default()
            .min_delay(Duration::from_millis(250))
            .max_delay(Duration::from_secs(5)),
    );
    let feed = source.stats();

    let mut pipeline = Pipeline::new();
    // A feed must not die on its first odd frame (docs/websocket.md, "Error policy").
    let reader = Reader::json(Polygon::aggregates_schema()).error_policy(ErrorPolicy::SkipAndReport);
    let prices = pipeline.read("prices", source, reader);
    let shutdown = pipeline.shutdown_handle();
    let pipeline = tokio::spawn(pipeline.run());

    let app = App {
        prices,
        feed,
        prometheus,
    };
    let routes = Router::new()
        .route("/prices", get(all_prices))
        .route("/prices/{sym}", get(one_price))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(app.clone());
    let address: SocketAddr = if check { "127.0.0.1:0" } else { "127.0.0.1:3000" }.parse()?;
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("binding {address}"))?;
    let address = listener.local_addr()?;
    tracing::info!("serving http://{address}/prices, /prices/{{sym}}, /status and /metrics");

    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, routes)
            .with_graceful_shutdown(async {
                let _ = http_stopped.await;
            })
            .into_future(),
    );
    if check {
        self_check(address, &app, &outage).await?;
    } else {
        tokio::signal::ctrl_c().await?;
        tracing::info!("Ctrl-C: stopping");
    }
    // The pipeline first, so that the last commit is in the table; then HTTP.
    shutdown.shutdown();
    pipeline.await??;
    let _ = stop_http.send(());
    server.await??;
    let stats = app.prices.stats();
    println!(
        "{} symbols, {} messages, {} rejected, {} reconnects",
        stats.rows(),
        stats.messages(),
        stats.rejected(),
        app.feed.reconnects()
    );
    Ok(())
}

/// `GET /prices`: every symbol's last aggregate, and whether they may be stale.
async fn all_prices(State(app): State<App>) -> Json<Value> {
    let snapshot = app.prices.snapshot();
    let rows: Vec<&Row> = snapshot.rows().iter().map(|(_, row)| row).collect();
    Json(json!({ "stale": app.stale(), "as_of": snapshot.time(), "prices": rows }))
}

/// `GET /prices/{sym}`: one symbol's last aggregate.
async fn one_price(State(app): State<App>, Path(sym): Path<String>) -> Response {
    match app.prices.get(&sym.as_str().into()) {
        Some(row) => Json(json!({ "stale": app.stale(), "price": row })).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no price for {sym}\n")).into_response(),
    }
}

/// `GET /status`: the figures of the table, its source and the connection.
async fn status(State(app): State<App>) -> Json<Value> {
    Json(json!({ "stale": app.stale(), "table": app.prices.stats(), "feed": app.feed }))
}

/// `GET /metrics`: Prometheus text.
async fn metrics(State(app): State<App>) -> String {
    app.prometheus.render()
}

/// Checks every route, and the stale flag across an outage of the embedded feed.
async fn self_check(address: SocketAddr, app: &App, outage: &watch::Sender<bool>) -> anyhow::Result<()> {
    let base = format!("http://{address}");
    intake_ws::install_crypto_provider();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let get = |path: &str| http.get(format!("{base}{path}")).send();
    tokio::time::timeout(Duration::from_secs(20), app.prices.wait_for(|t| t.len() == 4))
        .await
        .context("the feed did not fill the table")??;

    let prices: Value = get("/prices").await?.json().await?;
    ensure!(
        prices["prices"].as_array().map(Vec::len) == Some(4),
        "/prices: {prices}"
    );
    ensure!(prices["stale"] == false, "fresh prices flagged stale: {prices}");
    let aapl: Value = get("/prices/AAPL").await?.json().await?;
    ensure!(
        aapl["price"]["sym"] == "AAPL" && aapl["price"]["c"].is_f64(),
        "/prices/AAPL: {aapl}"
    );
    ensure!(
        get("/prices/NOPE").await?.status() == StatusCode::NOT_FOUND,
        "unknown symbol not 404"
    );
    let metrics = get("/metrics").await?.text().await?;
    for name in [
        "intake_table_rows{table=\"prices\"} 4",
        "intake_source_connected{",
        "intake_table_commit_latency_seconds",
    ] {
        ensure!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }

    outage.send_replace(true);
    let stale = async {
        loop {
            let status: Value = get("/status").await?.json().await?;
            if status["stale"] == true && status["feed"]["connected"] == false {
                return anyhow::Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let status = tokio::time::timeout(Duration::from_secs(10), stale)
        .await
        .context("never flagged stale")??;
    ensure!(
        status["table"]["rows"] == 4,
        "rows kept through the outage: {status}"
    );
    outage.send_replace(false);
    tokio::time::timeout(Duration::from_secs(20), async {
        while app.stale() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .context("the feed did not come back")?;
    println!("check passed: routes, metrics, and the stale flag across an outage");
    Ok(())
}

/// Takes the embedded feed down for 5 s every 20 s.
async fn outages(outage: watch::Sender<bool>) {
    loop {
        tokio::time::sleep(Duration::from_secs(15)).await;
        tracing::info!("embedded feed: going down for 5 s");
        outage.send_replace(true);
        tokio::time::sleep(Duration::from_secs(5)).await;
        outage.send_replace(false);
    }
}
