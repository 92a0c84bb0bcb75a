//! W5: throughput of the server-sent events source. A local server streams 500,000
//! Wikimedia-recent-changes-style events (`text/event-stream`, each with an `id`)
//! as fast as the client reads. Measured in the same run, alternating: through
//! intake (`SseSource` into a table keyed by `title`) and through two plain loops
//! (reqwest, the same SSE parser, serde_json into a struct of the table's columns or
//! into a `serde_json::Value`, a `HashMap` upsert by title), and the ratios. Five
//! rounds, each side once a round (odd rounds start with the plain loops, even ones
//! with intake); the figure to quote is the median of the rounds' ratios. Each side
//! also reports its CPU time per event (the whole process, the in-process server
//! included), which other tenants of the machine's cores do not change as much.
//!
//! ```text
//! cargo run --release -p intake-http --example bench_sse            # 500,000 events
//! cargo run --release -p intake-http --example bench_sse -- 200000  # another count
//! cargo run --release -p intake-http --example bench_sse -- 50000 intake  # one side (intake, struct or value), for callgrind/perf
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use intake_core::{Column, DataType, Pipeline, Reader, Reconnect, Schema};
use intake_http::{SseItem, SseParser, SseSource};
use tokio::net::TcpListener;

const TITLES: usize = 10_000;
const ROUNDS: usize = 5;
/// The size of the chunks the server writes; events straddle them.
const CHUNK: usize = 64 << 10;

/// What the plain loop reads each event into: the table's columns.
#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)] // Read to be kept, as a service would.
struct Change {
    title: String,
    id: i64,
    #[serde(rename = "type")]
    kind: String,
    user: String,
    bot: bool,
    timestamp: i64,
}

fn main() -> anyhow::Result<()> {
    let events: usize = match std::env::args().nth(1) {
        Some(count) => count.parse()?,
        None => 500_000,
    };
    // One side alone, to profile it; ratios need all three.
    let only = std::env::args().nth(2);
    anyhow::ensure!(
        only.as_deref()
            .is_none_or(|side| ["intake", "struct", "value"].contains(&side)),
        "the second argument names one side: intake, struct or value"
    );
    let runs = |side: &str| only.as_deref().is_none_or(|only| only == side);
    let chunks = stream(events);
    let bytes: usize = chunks.iter().map(Bytes::len).sum();
    println!(
        "{events} events ({:.1} MiB of event stream, {} bytes per event), {TITLES} titles",
        bytes as f64 / (1 << 20) as f64,
        bytes / events
    );
    let url = serve(chunks)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        intake_http::install_crypto_provider();
        // One client for both, built outside the timing (building one loads the
        // system's root certificates, some 40 ms).
        let client = reqwest::Client::new();
        let mut best = [0f64; 3];
        let mut ratios = [Vec::new(), Vec::new()];
        // Microseconds of CPU per event (this process: the side measured and the
        // server), struct loop and intake: what other tenants of the cores cannot take.
        let mut cpu = [Vec::new(), Vec::new()];
        for round in 1..=ROUNDS {
            let mut typed = f64::NAN;
            let mut values = f64::NAN;
            let mut intake = f64::NAN;
            let mut cpu_typed = f64::NAN;
            let mut cpu_intake = f64::NAN;
            // Odd rounds start with the plain loops, even ones with intake, so that
            // neither side always runs first (or after the same other side).
            let mut sides = ["struct", "value", "intake"];
            if round % 2 == 0 {
                sides.reverse();
            }
            for side in sides.into_iter().filter(|&side| runs(side)) {
                let before = cpu_time()?;
                match side {
                    "struct" => {
                        typed = plain::<Change>(&client, &url, events, |c| c.title.clone()).await?;
                    }
                    "value" => {
                        values = plain::<serde_json::Value>(&client, &url, events, |v| {
                            v["title"].as_str().unwrap_or_default().to_owned()
                        })
                        .await?;
                    }
                    _ => intake = through_intake(&client, &url, events).await?,
                }
                let used = cpu_time()?.saturating_sub(before).as_secs_f64() * 1e6 / events as f64;
                match side {
                    "struct" => cpu_typed = used,
                    "intake" => cpu_intake = used,
                    _ => {}
                }
            }
            println!(
                "round {round}: plain struct {typed:>8.0}/s   plain Value {values:>8.0}/s   intake {intake:>8.0}/s   \
                 ratios {:.2} (struct) {:.2} (Value)   CPU µs/event: struct {cpu_typed:.2}, intake {cpu_intake:.2}",
                intake / typed,
                intake / values
            );
            cpu[0].push(cpu_typed);
            cpu[1].push(cpu_intake);
            for (best, figure) in best.iter_mut().zip([typed, values, intake]) {
                *best = best.max(figure);
            }
            ratios[0].push(intake / typed);
            ratios[1].push(intake / values);
        }
        for figures in ratios.iter_mut().chain(&mut cpu) {
            figures.sort_by(f64::total_cmp);
        }
        println!(
            "best rounds (events/s): plain struct {:.0}, plain Value {:.0}, intake {:.0}; \
             ratio vs struct {:.2} (median of rounds {:.2}), vs Value {:.2} (median {:.2})",
            best[0],
            best[1],
            best[2],
            best[2] / best[0],
            ratios[0][ROUNDS / 2],
            best[2] / best[1],
            ratios[1][ROUNDS / 2],
        );
        println!(
            "CPU µs/event (median of rounds; this process, server included): plain struct {:.2}, intake {:.2}",
            cpu[0][ROUNDS / 2],
            cpu[1][ROUNDS / 2],
        );
        anyhow::Ok(())
    })
}

/// utime + stime of this process, from `/proc/self/stat` (10 ms steps).
fn cpu_time() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The command name (field 2) may hold spaces; the fields after it do not.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("/proc/self/stat: unexpected format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let ticks: u64 = fields.get(11).zip(fields.get(12)).map_or(Ok(0), |(u, s)| {
        Ok::<_, std::num::ParseIntError>(u.parse::<u64>()? + s.parse::<u64>()?)
    })?;
    // Linux reports them in USER_HZ, 100 on every architecture intake runs on.
    Ok(Duration::from_millis(ticks * 10))
}

/// The event stream, pre-serialized and cut into chunks.
fn stream(events: usize) -> Vec<Bytes> {
    let mut text = String::with_capacity(events * 300);
    for i in 0..events {
        let data = serde_json::json!({
            "$schema": "/mediawiki/recentchange/1.0.0",
            "id": i,
            "type": "edit",
            "namespace": 0,
            "title": format!("Page_{}", i % TITLES),
            "comment": "copyedit",
            "timestamp": 1_700_000_000 + i as i64,
            "user": format!("User{}", i % 777),
            "bot": i.is_multiple_of(5),
            "wiki": "enwiki",
            "length": {"old": 1200, "new": 1234},
        });
        text += &format!("event: message\nid: {i}\ndata: {data}\n\n");
    }
    text.into_bytes()
        .chunks(CHUNK)
        .map(Bytes::copy_from_slice)
        .collect()
}

/// Serves the stream on a thread and runtime of its own; a request with a
/// `Last-Event-ID` (intake's reconnect after the end) gets 204, which ends the source.
fn serve(chunks: Vec<Bytes>) -> anyhow::Result<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            tx.send(format!(
                "http://{}/v2/stream/recentchange",
                listener.local_addr()?
            ))?;
            let handler = move |headers: HeaderMap| {
                let chunks = chunks.clone();
                async move {
                    if headers.contains_key("last-event-id") {
                        return StatusCode::NO_CONTENT.into_response();
                    }
                    let body =
                        futures::stream::iter(chunks.into_iter().map(Ok::<_, std::convert::Infallible>));
                    let response: Response = (
                        [(header::CONTENT_TYPE, "text/event-stream")],
                        Body::from_stream(body),
                    )
                        .into_response();
                    response
                }
            };
            axum::serve(listener, axum::Router::new().fallback(handler)).await?;
            anyhow::Ok(())
        })
    });
    Ok(rx.recv()?)
}

fn schema() -> anyhow::Result<Schema> {
    Ok(Schema::new([
        Column::new("title", DataType::String).primary_key(),
        Column::new("id", DataType::Int),
        Column::new("type", DataType::String),
        Column::new("user", DataType::String),
        Column::new("bot", DataType::Bool),
        Column::new("timestamp", DataType::Int),
    ])?)
}

/// Events per second through `SseSource` into a keyed table, from `run` to its end.
async fn through_intake(client: &reqwest::Client, url: &str, events: usize) -> anyhow::Result<f64> {
    let source = SseSource::new(url)
        .client(client.clone())
        .reconnect(Reconnect::default().min_delay(Duration::from_millis(1)));
    let stats = source.stats();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("recentchange", source, Reader::json(schema()?));
    let start = Instant::now();
    pipeline.run().await?;
    let elapsed = start.elapsed();
    anyhow::ensure!(stats.events() == events as u64 && table.len() == TITLES.min(events));
    Ok(events as f64 / elapsed.as_secs_f64())
}

/// Events per second through reqwest, the SSE parser, serde_json into `T` and a
/// `HashMap` keyed by `key`.
async fn plain<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
    events: usize,
    key: impl Fn(&T) -> String,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut response = client
        .get(url)
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .send()
        .await?
        .error_for_status()?;
    let mut parser = SseParser::new(1 << 20);
    let mut items = Vec::new();
    let mut table: HashMap<String, T> = HashMap::new();
    let mut read = 0;
    while let Some(chunk) = response.chunk().await? {
        parser.feed(&chunk, &mut items);
        for item in items.drain(..) {
            if let SseItem::Event(event) = item {
                let row: T = serde_json::from_str(&event.data)?;
                table.insert(key(&row), row);
                read += 1;
            }
        }
    }
    let elapsed = start.elapsed();
    anyhow::ensure!(read == events && table.len() == TITLES.min(events));
    Ok(events as f64 / elapsed.as_secs_f64())
}
