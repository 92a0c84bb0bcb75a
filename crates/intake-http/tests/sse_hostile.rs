//! The server-sent events source against hostile servers: connections dropped inside
//! an event, servers that replay from the start, IDs that cannot be sent or must be
//! ignored, endless lines, silence, odd statuses and `retry:` values, thousands of
//! reconnects, and pipelines stopped and restarted.
//!
//! Tables here mostly have no primary key, so an event applied twice shows as two rows.

mod support;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use intake_core::{ErrorPolicy, Persistence, Pipeline, Reader, Reconnect, Table};
use intake_http::{SseError, SseSource};
use serde_json::json;
use support::{
    Log, Raw, Seen, appended, event, events, ids, no_content, raw_serve, run, run_once_unlocked, serve,
    source_error, stop_within_a_second, stream, wait_for_rows,
};

fn fast() -> Reconnect {
    Reconnect::default()
        .jitter(false)
        .min_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(10))
        .max_retries(5)
}

/// Reads `source` into a table without a primary key until the source ends.
async fn read_to_end(source: SseSource) -> Table {
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("sse", source, Reader::json(appended("v")));
    run(pipeline).await.unwrap();
    table
}

fn sent_ids(log: &Log) -> Vec<Option<String>> {
    log.lock().unwrap().iter().map(Seen::last_event_id).collect()
}

/// A chunked event-stream response head and these chunks, without the last chunk: a
/// body broken off.
fn chunked(chunks: &[&str]) -> Vec<u8> {
    let mut out = String::from(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    );
    for chunk in chunks {
        out += &format!("{:x}\r\n{chunk}\r\n", chunk.len());
    }
    out.into_bytes()
}

const NO_CONTENT: &[u8] = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n";

/// The `Last-Event-ID` a raw request head carries, if any.
fn raw_last_id(head: &str) -> Option<i64> {
    head.to_ascii_lowercase()
        .lines()
        .find_map(|line| line.strip_prefix("last-event-id: "))
        .map(|id| id.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_broken_inside_an_event_delivers_none_of_it_and_the_reconnect_reads_it_once() {
    // Each connection sends the two events after its Last-Event-ID, then the first
    // half of a third, and breaks off (in the middle of a chunk's data line).
    let (url, _log, _open) = raw_serve(|_, head| {
        let after = raw_last_id(head).unwrap_or(0);
        if after >= 9 {
            return Raw::close(NO_CONTENT);
        }
        let next = event(after + 3);
        Raw::close(chunked(&[
            &(event(after + 1) + &event(after + 2)),
            &next[..next.len() - 9],
        ]))
    })
    .await;
    let source = SseSource::new(url).reconnect(fast());
    let stats = source.stats();
    let table = read_to_end(source).await;
    assert_eq!(ids(&table), (1..=10).collect::<Vec<_>>());
    assert_eq!(stats.connects(), 5);
}

/// Regression: a stream whose events were all of types filtered out counted as a
/// failed one, so a server that closes its streams now and then made the source back
/// off ever longer and, with `max_retries`, give up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_of_filtered_events_only_are_healthy_and_never_make_the_source_give_up() {
    let (url, _log) = serve(|_, request| {
        let after: i64 = request.last_event_id().map_or(0, |id| id.parse().unwrap());
        match after {
            10 => no_content(),
            after => events(&format!("event: other\nid: {}\ndata: {{}}\n\n", after + 1)),
        }
    })
    .await;
    let policy = fast().max_retries(3);
    let source = SseSource::new(url).reconnect(policy).event_type("message");
    let stats = source.stats();
    let table = read_to_end(source).await;
    assert!(table.is_empty());
    assert_eq!(stats.filtered(), 10);
    assert_eq!(table.committed_offsets(), [("sse".to_owned(), json!("10"))]);
}

/// What the source guarantees by default: it reads what the server sends. A server
/// that ignores `Last-Event-ID` and replays its history has every event read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_ignores_last_event_id_replays_and_by_default_the_replay_is_read() {
    let (url, log) = serve(|index, _| match index {
        0 | 1 => events(&(event(1) + &event(2))),
        _ => no_content(),
    })
    .await;
    let source = SseSource::new(url).reconnect(fast());
    let table = read_to_end(source).await;
    assert_eq!(ids(&table), [1, 1, 2, 2]);
    assert_eq!(sent_ids(&log), [None, Some("2".into()), Some("2".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_monotonic_ids_a_replay_from_the_start_is_skipped_on_reconnect_and_on_restart() {
    // Every connection replays the whole history so far: 1..=3, then 1..=6, then 1..=9.
    let (url, log) = serve(|index, _| {
        if index >= 3 {
            return no_content();
        }
        let mut text = String::new();
        for id in 1..=3 * (index as i64 + 1) {
            text += &event(id);
            if id == 2 {
                // Without an id of its own: it belongs with 2.
                text += "data: {\"id\": 2, \"v\": \"e2 again\"}\n\n";
            }
        }
        events(&text)
    })
    .await;
    let source = SseSource::new(url.as_str()).reconnect(fast()).monotonic_ids(true);
    let stats = source.stats();
    let table = read_to_end(source).await;
    assert_eq!(ids(&table), [1, 2, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(stats.replayed(), 4 + 7);
    assert_eq!(table.committed_offsets(), [("sse".to_owned(), json!("9"))]);
    assert_eq!(
        sent_ids(&log),
        [None, Some("3".into()), Some("6".into()), Some("9".into())]
    );

    // A restart from "9" against the same server: the replay of 1..=3 is skipped.
    log.lock().unwrap().clear();
    let (url, _log) = serve(|index, _| match index {
        0 => events(&(event(1) + &event(2) + &event(3) + &event(10))),
        _ => no_content(),
    })
    .await;
    let mut pipeline = Pipeline::new();
    let reader = Reader::json(appended("v")).resume_from(json!("9"));
    let table = pipeline.read(
        "sse",
        SseSource::new(url).reconnect(fast()).monotonic_ids(true),
        reader,
    );
    run(pipeline).await.unwrap();
    assert_eq!(ids(&table), [10]);
}

/// An ID that is not ASCII goes back as its UTF-8 bytes, as browsers send it, not
/// dropped from the reconnect (which would lose the stream's place).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_event_id_that_is_not_ascii_is_sent_back_as_utf8() {
    let (url, log) = serve(|_, request| match request.last_event_id().as_deref() {
        None => events("id: événement-1\ndata: {\"id\": 1, \"v\": \"a\"}\n\n"),
        Some("événement-1") => events("id: événement-2\ndata: {\"id\": 2, \"v\": \"b\"}\n\n"),
        Some(_) => no_content(),
    })
    .await;
    let table = read_to_end(SseSource::new(url).reconnect(fast())).await;
    assert_eq!(ids(&table), [1, 2]);
    assert_eq!(
        sent_ids(&log),
        [None, Some("événement-1".into()), Some("événement-2".into())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_with_nul_is_ignored_and_the_reconnect_sends_the_one_before() {
    let (url, log) = serve(|_, request| match request.last_event_id().as_deref() {
        None => {
            events("id: 1\ndata: {\"id\": 1, \"v\": \"a\"}\n\nid: 2\0x\ndata: {\"id\": 2, \"v\": \"b\"}\n\n")
        }
        _ => no_content(),
    })
    .await;
    let table = read_to_end(SseSource::new(url).reconnect(fast())).await;
    assert_eq!(ids(&table), [1, 2]);
    assert_eq!(sent_ids(&log), [None, Some("1".into())]);
    assert_eq!(table.committed_offsets(), [("sse".to_owned(), json!("1"))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bom_and_cr_crlf_and_lf_line_ends_mixed_across_chunks() {
    let text: &[u8] = b"\xEF\xBB\xBFid: 1\rdata: {\"id\": 1,\r\ndata: \"v\": \"a\"}\r\r\nid: 2\ndata: {\"id\": 2, \"v\": \"b\"}\r\n\n";
    let (url, _log) = serve(move |_, request| match request.last_event_id() {
        None => stream(text.chunks(3).map(<[u8]>::to_vec).collect(), false),
        Some(_) => no_content(),
    })
    .await;
    let table = read_to_end(SseSource::new(url).reconnect(fast())).await;
    assert_eq!(ids(&table), [1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_line_is_skipped_and_reported_and_the_stream_goes_on() {
    // 8 MiB of one data line, in 64 KiB chunks, against a limit of 1 KiB.
    let (url, _log) = serve(|_, request| match request.last_event_id() {
        None => {
            let mut chunks = vec![b"id: 1\ndata: {\"id\": 1, \"v\": \"a\"}\n\nevent: flood\ndata: ".to_vec()];
            chunks.extend((0..128).map(|_| vec![b'x'; 64 << 10]));
            chunks.push(b"\n\nid: 3\ndata: {\"id\": 3, \"v\": \"c\"}\n\n".to_vec());
            stream(chunks, false)
        }
        Some(_) => no_content(),
    })
    .await;
    let source = SseSource::new(url).reconnect(fast()).max_event_size(1024);
    let stats = source.stats();
    let mut pipeline = Pipeline::new();
    let mut rejected = pipeline.rejected(4);
    let reader = Reader::json(appended("v")).error_policy(ErrorPolicy::SkipAndReport);
    let table = pipeline.read("sse", source, reader);
    run(pipeline).await.unwrap();
    assert_eq!(ids(&table), [1, 3]);
    assert_eq!(stats.oversized(), 1);
    let report = rejected.next().await.expect("the oversized event is reported");
    assert!(report.raw().is_empty());
    let reason = report.reason().to_string();
    assert!(
        reason.contains("`flood`") && reason.contains("max_event_size"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_then_nothing_is_reconnected_by_the_silence_deadline() {
    let (url, log) = serve(|index, _| match index {
        0 => stream(Vec::new(), true),
        1 => events(&event(1)),
        _ => no_content(),
    })
    .await;
    let source = SseSource::new(url)
        .reconnect(fast())
        .silence_timeout(Duration::from_millis(200));
    let table = read_to_end(source).await;
    assert_eq!(ids(&table), [1]);
    let log = log.lock().unwrap();
    assert!(log[1].at - log[0].at >= Duration::from_millis(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2xx_without_a_content_type_or_with_another_stops_the_source_at_once() {
    for content_type in [None, Some("application/json"), Some("text/event-streamx")] {
        let (url, log) = serve(move |_, _| match content_type {
            None => Response::builder()
                .status(200)
                .body(Body::from(event(1)))
                .unwrap(),
            Some(kind) => ([(header::CONTENT_TYPE, kind)], event(1)).into_response(),
        })
        .await;
        let mut pipeline = Pipeline::new();
        let table = pipeline.read(
            "sse",
            SseSource::new(url).reconnect(fast()),
            Reader::json(appended("v")),
        );
        let error = run(pipeline).await.unwrap_err();
        assert!(
            matches!(source_error(&error), SseError::NotEventStream { .. }),
            "{content_type:?}: {error}"
        );
        assert!(table.is_empty());
        assert_eq!(log.lock().unwrap().len(), 1, "{content_type:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_fields_that_are_not_digits_are_ignored() {
    let (url, log) = serve(|index, _| match index {
        0 => events(&("retry: 1e3\nretry: -5\nretry: 10s\nretry: 0x10\n".to_owned() + &event(1))),
        _ => no_content(),
    })
    .await;
    // Without a retry: the policy's first delay, 300 ms.
    let policy = Reconnect::default()
        .jitter(false)
        .min_delay(Duration::from_millis(300));
    let mut pipeline = Pipeline::new();
    let _table = pipeline.read(
        "sse",
        SseSource::new(url).reconnect(policy),
        Reader::json(appended("v")),
    );
    run(pipeline).await.unwrap();
    let log = log.lock().unwrap();
    let waited = log[1].at - log[0].at;
    assert!(waited >= Duration::from_millis(290), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_retry_is_waited_as_asked_and_shutdown_stays_prompt() {
    let (url, log) = serve(|_, _| events(&("retry: 99999999999999999999999\n".to_owned() + &event(1)))).await;
    let mut pipeline = Pipeline::new();
    let table = pipeline.read(
        "sse",
        SseSource::new(url).reconnect(fast()),
        Reader::json(appended("v")),
    );
    let shutdown = pipeline.shutdown_handle();
    let running = tokio::spawn(pipeline.run());
    wait_for_rows(&table, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(log.lock().unwrap().len(), 1);
    stop_within_a_second(&shutdown, running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_reconnects_keep_no_connection_open_and_lose_or_repeat_no_event() {
    const EVENTS: i64 = 1000;
    let (url, _log, open) = raw_serve(|_, head| {
        let after = raw_last_id(head).unwrap_or(0);
        if after >= EVENTS {
            return Raw::close(NO_CONTENT);
        }
        // One event, then the connection breaks.
        Raw::close(chunked(&[&event(after + 1)]))
    })
    .await;
    let source = SseSource::new(url).reconnect(fast());
    let stats = source.stats();
    let table = read_to_end(source).await;
    assert_eq!(ids(&table), (1..=EVENTS).collect::<Vec<_>>());
    assert_eq!(stats.reconnects(), EVENTS as u64);
    // Each broken stream's connection was let go, not pooled or leaked.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(open.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_in_a_row_back_off_from_the_servers_retry_up_to_the_policys_delay() {
    // One stream sets retry: 50 and delivers; then every attempt fails.
    let (url, log) = serve(|index, _| match index {
        0 => events(&("retry: 50\n".to_owned() + &event(1))),
        _ => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    })
    .await;
    let policy = Reconnect::default()
        .jitter(false)
        .min_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(320))
        .max_retries(6);
    let mut pipeline = Pipeline::new();
    let _table = pipeline.read(
        "sse",
        SseSource::new(url).reconnect(policy),
        Reader::json(appended("v")),
    );
    let error = run(pipeline).await.unwrap_err();
    assert!(matches!(source_error(&error), SseError::GaveUp { .. }), "{error}");
    let log = log.lock().unwrap();
    let waits: Vec<Duration> = log.windows(2).map(|w| w[1].at - w[0].at).collect();
    // The server's 50 ms first, then the longer of it and 40, 80, 160, 320, 320 ms;
    // the seventh attempt in a row is the last (max_retries 6).
    let floors = [50, 50, 80, 160, 320, 320];
    assert_eq!(waits.len(), floors.len(), "{waits:?}");
    for (wait, floor) in waits.iter().zip(floors) {
        assert!(*wait >= Duration::from_millis(floor - 5), "{waits:?}");
    }
}

/// A pipeline stopped while its stream is open, then restarted from storage: with no
/// primary key, every event is in the table once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_mid_stream_then_a_restart_from_storage_reads_every_event_once() {
    let (url, log) = serve(|_, request| {
        let after: i64 = request.last_event_id().map_or(0, |id| id.parse().unwrap());
        match after {
            0 => stream(vec![(event(1) + &event(2) + &event(3)).into_bytes()], true),
            3 => events(&(event(4) + &event(5))),
            _ => no_content(),
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut pipeline = Pipeline::new().persist(Persistence::new(dir.path()));
    let table = pipeline.read(
        "sse",
        SseSource::new(url.as_str()).reconnect(fast()),
        Reader::json(appended("v")),
    );
    let shutdown = pipeline.shutdown_handle();
    let running = tokio::spawn(pipeline.run());
    wait_for_rows(&table, 3).await;
    shutdown.shutdown();
    running.await.unwrap().unwrap();

    let mut pipeline = Pipeline::new().persist(Persistence::new(dir.path()));
    let table = pipeline.read(
        "sse",
        SseSource::new(url).reconnect(fast()),
        Reader::json(appended("v")),
    );
    run(pipeline).await.unwrap();
    assert_eq!(ids(&table), [1, 2, 3, 4, 5]);
    assert_eq!(sent_ids(&log), [None, Some("3".into()), Some("5".into())]);
}

/// Regression: a `Retry-After` given as an HTTP date (how a 503 for maintenance often
/// says until when) was ignored, and the source asked again at its backoff's pace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_date_on_503_is_waited_for() {
    let (url, log) = serve(|index, _| match index {
        0 => {
            let until = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(2));
            ([(header::RETRY_AFTER, until)], StatusCode::SERVICE_UNAVAILABLE).into_response()
        }
        1 => events(&event(1)),
        _ => no_content(),
    })
    .await;
    let table = read_to_end(SseSource::new(url).reconnect(fast())).await;
    assert_eq!(ids(&table), [1]);
    let log = log.lock().unwrap();
    // The date has whole seconds: at least one of the two is left.
    let waited = log[1].at - log[0].at;
    assert!(waited >= Duration::from_millis(990), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_with_control_characters_cannot_be_sent_and_the_reconnect_goes_without() {
    let (url, log) = serve(|index, _| match index {
        0 => events("id: a\x01b\ndata: {\"id\": 1, \"v\": \"a\"}\n\n"),
        _ => no_content(),
    })
    .await;
    let table = read_to_end(SseSource::new(url).reconnect(fast())).await;
    assert_eq!(ids(&table), [1]);
    assert_eq!(sent_ids(&log), [None, None]);
    assert_eq!(table.committed_offsets(), [("sse".to_owned(), json!("a\u{1}b"))]);
}

/// A pipeline dropped (as a crash would end it) between network chunks, then
/// restarted from storage: every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_dropped_between_chunks_then_restarted_from_storage_reads_every_event_once() {
    let (url, _log) = serve(|_, request| {
        let after: i64 = request.last_event_id().map_or(0, |id| id.parse().unwrap());
        match after {
            0 => stream(
                vec![(event(1) + &event(2)).into_bytes(), event(3).into_bytes()],
                true,
            ),
            3 => events(&(event(4) + &event(5))),
            _ => no_content(),
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut pipeline = Pipeline::new().persist(Persistence::new(dir.path()));
    let reader = || Reader::json(appended("v")).autocommit_duration(Duration::from_millis(5));
    let table = pipeline.read("sse", SseSource::new(url.as_str()).reconnect(fast()), reader());
    let running = tokio::spawn(pipeline.run());
    wait_for_rows(&table, 3).await;
    // The offset after the last chunk is committed by the next autocommit.
    tokio::time::sleep(Duration::from_millis(100)).await;
    running.abort();
    let _ = running.await;

    let table = run_once_unlocked(|| {
        let mut pipeline = Pipeline::new().persist(Persistence::new(dir.path()));
        let table = pipeline.read("sse", SseSource::new(url.as_str()).reconnect(fast()), reader());
        (pipeline, table)
    })
    .await;
    assert_eq!(ids(&table), [1, 2, 3, 4, 5]);
}

/// The backoff between failed attempts, on a paused clock: the policy's delays exactly,
/// with no time really spent.
#[tokio::test(start_paused = true)]
async fn the_backoff_between_failures_follows_the_policy_on_a_paused_clock() {
    let times: Arc<Mutex<Vec<tokio::time::Instant>>> = Arc::default();
    let seen = times.clone();
    let (url, _log) = serve(move |_, _| {
        seen.lock().unwrap().push(tokio::time::Instant::now());
        StatusCode::BAD_GATEWAY.into_response()
    })
    .await;
    let policy = Reconnect::default()
        .jitter(false)
        .min_delay(Duration::from_secs(10))
        .max_delay(Duration::from_secs(80))
        .max_retries(5);
    let mut pipeline = Pipeline::new();
    let _table = pipeline.read(
        "sse",
        SseSource::new(url)
            .reconnect(policy)
            .connect_timeout(Duration::from_secs(3600)),
        Reader::json(appended("v")),
    );
    let started = Instant::now();
    let error = pipeline.run().await.unwrap_err();
    assert!(
        matches!(source_error(&error), SseError::GaveUp { attempts: 6, .. }),
        "{error}"
    );
    let times = times.lock().unwrap();
    let waits: Vec<u64> = times.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
    assert_eq!(waits, [10, 20, 40, 80, 80]);
    assert!(started.elapsed() < Duration::from_secs(5));
}
