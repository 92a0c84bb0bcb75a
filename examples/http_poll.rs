//! GitHub's public events into a live table keyed by event id: the polling source with
//! conditional requests (`ETag` → `If-None-Match` → `304`), the server's
//! `X-Poll-Interval`, and `Link` pagination.
//!
//! By default it starts an embedded server on 127.0.0.1 that behaves like
//! `api.github.com/events` (two pages linked by `Link: rel="next"`, an `ETag`, `304`
//! while nothing changed, new events now and then, one bad event), so it runs without
//! network, and it stops by itself after a few polls. With `GITHUB_EVENTS=1` set it
//! polls the real API instead (with `GITHUB_TOKEN` as a bearer token, if set) until
//! Ctrl-C.
//!
//! ```text
//! cargo run -p intake-http --example http_poll
//! GITHUB_EVENTS=1 cargo run -p intake-http --example http_poll
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use futures::StreamExt;
use intake_core::{Column, DataType, ErrorPolicy, Pipeline, Reader, Schema, Subscriber};
use intake_http::{PollSource, StatusAction};
use serde_json::json;

/// How many polls the demo makes before it stops.
const DEMO_POLLS: u64 = 6;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    // The fields of an event this table keeps; the others are ignored.
    let schema = Schema::new([
        Column::new("id", DataType::String).primary_key(),
        Column::new("type", DataType::String),
        Column::new("actor", DataType::Json),
        Column::new("repo", DataType::Json),
        Column::new("created_at", DataType::Timestamp),
    ])?;

    let real = std::env::var_os("GITHUB_EVENTS").is_some();
    let source = if real {
        let mut source = PollSource::new("https://api.github.com/events")
            .query("per_page", "100")
            // GitHub refuses requests without a User-Agent.
            .header("User-Agent", "intake-http-example")
            .header("Accept", "application/vnd.github+json")
            .interval(Duration::from_secs(60));
        // GitHub answers a rate limit with 403 (and Retry-After or a reset time): wait
        // and retry instead of stopping, as the default for 403 would.
        source = source.classify_status(|status| match status {
            403 => StatusAction::Retry,
            other => StatusAction::for_status(other),
        });
        if let Ok(token) = std::env::var("GITHUB_TOKEN") {
            source = source.bearer_auth(token);
        }
        source
    } else {
        let base = demo_server().await?;
        PollSource::new(format!("{base}/events"))
            .interval(Duration::from_secs(60))
            .max_polls(DEMO_POLLS)
    }
    // The server says how often it may be polled (60 s on GitHub, 1 s here).
    .interval_from_header("X-Poll-Interval");
    let stats = source.stats();

    let mut pipeline = Pipeline::new();
    let mut rejected = pipeline.rejected(16);
    let reader = Reader::json(schema).error_policy(ErrorPolicy::SkipAndReport);
    let events = pipeline.read("github-events", source, reader);
    events.subscribe(Subscriber::new().on_change(|_key, row, time, is_addition| {
        if is_addition {
            let login = row
                .get("actor")
                .and_then(|a| a.as_json())
                .and_then(|a| a["login"].as_str().map(str::to_owned));
            let repo = row
                .get("repo")
                .and_then(|r| r.as_json())
                .and_then(|r| r["name"].as_str().map(str::to_owned));
            println!(
                "{time} {:<18} {:<20} {}",
                row.get("type").and_then(|t| t.as_str()).unwrap_or("?"),
                login.unwrap_or_default(),
                repo.unwrap_or_default()
            );
        }
    }));
    tokio::spawn(async move {
        while let Some(report) = rejected.next().await {
            println!(
                "rejected: {} ({})",
                report.reason(),
                String::from_utf8_lossy(report.raw())
            );
        }
    });

    if real {
        pipeline.run_until(tokio::signal::ctrl_c()).await?;
    } else {
        pipeline.run().await?;
    }
    println!(
        "{} events in the table; {} polls, {} pages, {} not modified (304), {} retries",
        events.len(),
        stats.polls(),
        stats.pages(),
        stats.not_modified(),
        stats.retries()
    );
    Ok(())
}

/// Starts a server that behaves like GitHub's events API and returns its base URL.
///
/// Its feed changes on the 1st and 4th poll (counting requests for the first page);
/// in between it answers `304` to a request that sends its current `ETag` back.
async fn demo_server() -> anyhow::Result<String> {
    let polls = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().fallback(events).with_state(polls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(base)
}

async fn events(State(polls): State<Arc<AtomicUsize>>, request: Request) -> Response {
    let page2 = request.uri().query().is_some_and(|q| q.contains("page=2"));
    let poll = if page2 {
        polls.load(Ordering::SeqCst)
    } else {
        polls.fetch_add(1, Ordering::SeqCst) + 1
    };
    // The feed's version: 1 for polls 1 to 3, 2 from poll 4 on.
    let version = if poll >= 4 { 2 } else { 1 };
    let etag = format!("\"events-v{version}\"");
    // GitHub sends X-Poll-Interval with every answer, 304s included.
    let response = Response::builder()
        .header("X-Poll-Interval", "1")
        .header("ETag", &etag);
    let sent_back = request
        .headers()
        .get("if-none-match")
        .and_then(|v| v.to_str().ok());
    if !page2 && sent_back == Some(etag.as_str()) {
        return response.status(304).body(Body::empty()).unwrap_or_default();
    }
    let event = |id: u32, kind: &str, login: &str, repo: &str| {
        json!({
            "id": id.to_string(), "type": kind,
            "actor": {"login": login}, "repo": {"name": repo},
            "created_at": "2026-11-28T12:00:00Z",
        })
    };
    let body = match (page2, version) {
        (false, 1) => json!([
            event(103, "PushEvent", "octocat", "octocat/hello-world"),
            event(102, "WatchEvent", "manul", "intake/intake"),
        ]),
        (true, 1) => json!([
            event(101, "IssuesEvent", "felis", "intake/intake"),
            // Not an event this table can hold: reported, and its neighbours kept.
            {"id": 100, "type": ["not", "a", "string"]},
        ]),
        (false, _) => json!([
            event(105, "PullRequestEvent", "lynx", "intake/intake"),
            event(104, "ForkEvent", "otocolobus", "octocat/hello-world"),
            event(103, "PushEvent", "octocat", "octocat/hello-world"),
        ]),
        (true, _) => json!([event(102, "WatchEvent", "manul", "intake/intake")]),
    };
    let mut response = response.header("Content-Type", "application/json");
    if !page2 {
        response = response.header(
            "Link",
            r#"</events?page=2>; rel="next", </events?page=2>; rel="last""#,
        );
    }
    response
        .status(200)
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}
