//! The polling source against hostile servers: bodies cut short or never ending,
//! garbage among records, pages that cycle, odd `Retry-After`s, validators that lie,
//! and pipelines stopped at every page boundary and restarted.
//!
//! Tables here mostly have no primary key, so a record applied twice shows as two rows.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use futures::StreamExt;
use intake_core::{ErrorPolicy, Location, Persistence, Pipeline, Reader, Reconnect, Schema, Table};
use intake_http::{Pagination, PollSource, Records};
use serde_json::json;
use support::{
    Raw, Seen, appended, ids, keyed, ok, raw_serve, respond, run, run_once_unlocked, serve,
    stop_within_a_second, wait_for_rows,
};

// ---------------------------------------------------------------------------------
// Servers

// ---------------------------------------------------------------------------------
// Tables

fn reader(schema: Schema) -> Reader {
    Reader::json(schema)
        .error_policy(ErrorPolicy::SkipAndReport)
        .autocommit_duration(Duration::from_millis(5))
}

/// Polls with `source` into a table of `schema` until the source ends.
async fn read_to_end(source: PollSource, schema: Schema) -> Table {
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("items", source, reader(schema));
    run(pipeline).await.unwrap();
    table
}

fn fast() -> Reconnect {
    Reconnect::default()
        .jitter(false)
        .min_delay(Duration::from_millis(5))
        .max_delay(Duration::from_millis(20))
}

fn record(id: i64) -> serde_json::Value {
    json!({"id": id, "name": format!("n{id}")})
}

/// An HTTP/1.1 response head with `Connection: close` and these extra header lines.
fn head(status: &str, extra: &[&str]) -> String {
    let mut head = format!("HTTP/1.1 {status}\r\nconnection: close\r\n");
    for line in extra {
        head += line;
        head += "\r\n";
    }
    head + "\r\n"
}

fn full(body: &str) -> Raw {
    Raw::close(head("200 OK", &[&format!("content-length: {}", body.len())]) + body)
}

// ---------------------------------------------------------------------------------
// Bodies cut short

const TWO: &str = r#"[{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]"#;

/// Only the part of the body before the second record's end arrives.
fn cut() -> &'static str {
    &TWO[..TWO.len() - 8]
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_is_retried_and_none_of_it_applied() {
    let (base, log, _) = raw_serve(|index, _| match index {
        0 => Raw::close(head("200 OK", &[&format!("content-length: {}", TWO.len())]) + cut()),
        _ => full(TWO),
    })
    .await;
    let source = PollSource::new(base).reconnect(fast()).max_polls(1);
    let stats = source.stats();
    let mut pipeline = Pipeline::new();
    let mut rejected = pipeline.rejected(4);
    let table = pipeline.read("items", source, reader(appended("name")));
    run(pipeline).await.unwrap();
    assert_eq!(ids(&table), [1, 2]);
    assert_eq!(log.lock().unwrap().len(), 2);
    assert_eq!(stats.retries(), 1);
    assert!(
        rejected.next().await.is_none(),
        "a cut body is retried, not reported"
    );
}

#[tokio::test]
async fn a_chunked_body_that_stops_before_its_last_chunk_is_retried_and_none_of_it_applied() {
    let (base, _log, _) = raw_serve(|index, _| match index {
        0 => {
            let part = cut();
            Raw::close(
                head("200 OK", &["transfer-encoding: chunked"]) + &format!("{:x}\r\n{part}\r\n", part.len()),
            )
        }
        _ => full(TWO),
    })
    .await;
    let source = PollSource::new(base).reconnect(fast()).max_polls(1);
    let stats = source.stats();
    let table = read_to_end(source, appended("name")).await;
    assert_eq!(ids(&table), [1, 2]);
    assert_eq!(stats.retries(), 1);
}

/// Regression: a body without a length, cut where the server closed the connection
/// (which HTTP cannot tell from its end), kept its `ETag`; the next poll sent it back,
/// the server answered 304, and the records after the cut were never read.
#[tokio::test]
async fn a_body_cut_by_a_closed_connection_keeps_no_validators_so_the_next_poll_reads_it_whole() {
    let (base, log, _) = raw_serve(|index, head_seen| {
        if head_seen.to_ascii_lowercase().contains("if-none-match: \"v1\"") {
            return Raw::close(head("304 Not Modified", &["etag: \"v1\""]));
        }
        match index {
            0 => Raw::close(head("200 OK", &["etag: \"v1\""]) + cut()),
            _ => Raw::close(
                head(
                    "200 OK",
                    &["etag: \"v1\"", &format!("content-length: {}", TWO.len())],
                ) + TWO,
            ),
        }
    })
    .await;
    let source = PollSource::new(base)
        .interval(Duration::from_millis(10))
        .max_polls(2);
    let mut pipeline = Pipeline::new();
    let mut rejected = pipeline.rejected(4);
    let table = pipeline.read("items", source, reader(keyed("name")));
    run(pipeline).await.unwrap();
    assert_eq!(
        ids(&table),
        [1, 2],
        "the record after the cut was read by the next poll"
    );
    let report = rejected.next().await.expect("the cut part is reported");
    assert!(
        report.reason().to_string().contains("breaks off"),
        "{}",
        report.reason()
    );
    let second = log.lock().unwrap()[1].to_ascii_lowercase();
    assert!(!second.contains("if-none-match"), "{second}");
}

#[tokio::test]
async fn a_response_that_never_ends_is_timed_out_and_none_of_it_applied() {
    let (base, _log, _) = raw_serve(|index, _| match index {
        0 => Raw {
            bytes: (head("200 OK", &[&format!("content-length: {}", TWO.len())]) + cut()).into_bytes(),
            hold: true,
        },
        _ => full(TWO),
    })
    .await;
    let source = PollSource::new(base)
        .timeout(Duration::from_millis(300))
        .reconnect(fast())
        .max_polls(1);
    let stats = source.stats();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("items", source, reader(appended("name")));
    let started = Instant::now();
    run(pipeline).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(ids(&table), [1, 2]);
    assert_eq!(stats.retries(), 1);
}

// ---------------------------------------------------------------------------------
// Garbage among records

/// Regression: one record that is not JSON in a JSON array made the source report the
/// whole rest of the array as one piece of bad input, losing the valid records after it.
#[tokio::test]
async fn a_malformed_record_in_an_array_is_reported_at_its_place_and_the_records_after_it_kept() {
    let body = r#"[{"id": 1, "name": "a"}, {"id": 2, "name": oops}, {"id": 3, "name": "c"}, {"id": "four"}, {"id": 5, "name": "e"}]"#;
    let (base, _log) = serve(move |_, _| respond(200, &[], body)).await;
    let mut pipeline = Pipeline::new();
    let mut rejected = pipeline.rejected(8);
    let table = pipeline.read(
        "items",
        PollSource::new(base).max_polls(1),
        reader(appended("name")),
    );
    run(pipeline).await.unwrap();
    assert_eq!(ids(&table), [1, 3, 5]);
    let mut reports = Vec::new();
    while let Some(report) = rejected.next().await {
        let Some(Location::Http { page, record, .. }) = report.location() else {
            panic!("{:?}", report.location())
        };
        reports.push((String::from_utf8(report.raw().to_vec()).unwrap(), *page, *record));
    }
    assert_eq!(
        reports,
        [
            (r#"{"id": 2, "name": oops}"#.to_owned(), Some(1), Some(2)),
            (r#"{"id": "four"}"#.to_owned(), Some(1), Some(4)),
        ]
    );
}

/// Regression: with `Records::json_pointer`, one record that is not JSON made the
/// whole body invalid, and every record in it was reported as one piece of bad input.
#[tokio::test]
async fn with_a_json_pointer_a_malformed_record_costs_only_itself() {
    let body = r#"{"data": [{"id": 1, "name": "a"}, {"id": 2, "name": oops}, {"id": 3, "name": "c"}], "next": null}"#;
    let (base, _log) = serve(move |_, _| respond(200, &[], body)).await;
    let source = PollSource::new(base)
        .records(Records::json_pointer("/data"))
        .max_polls(1);
    let mut pipeline = Pipeline::new();
    let mut rejected = pipeline.rejected(8);
    let table = pipeline.read("items", source, reader(appended("name")));
    run(pipeline).await.unwrap();
    assert_eq!(ids(&table), [1, 3]);
    let report = rejected.next().await.expect("the bad record is reported");
    assert_eq!(&report.raw()[..], br#"{"id": 2, "name": oops}"#);
    assert!(
        matches!(
            report.location(),
            Some(Location::Http {
                page: Some(1),
                record: Some(2),
                ..
            })
        ),
        "{:?}",
        report.location()
    );
    assert!(rejected.next().await.is_none());
}

#[tokio::test]
async fn a_compressed_body_is_not_asked_for_and_reported_if_sent_anyway() {
    // reqwest is built without decompression: the source sends no Accept-Encoding.
    let (base, log) = serve(|_, _| {
        respond(
            200,
            &[("content-encoding", "gzip")],
            &b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\x8b\x8e\x05\x00\x29\xbb\x4c\x0d\x02\x00\x00\x00"[..],
        )
    })
    .await;
    let mut pipeline = Pipeline::new();
    let mut rejected = pipeline.rejected(4);
    let table = pipeline.read(
        "items",
        PollSource::new(base).max_polls(1),
        reader(appended("name")),
    );
    run(pipeline).await.unwrap();
    assert!(table.is_empty());
    assert_eq!(log.lock().unwrap()[0].header("accept-encoding"), None);
    let report = rejected.next().await.expect("the compressed body is reported");
    assert!(report.raw().starts_with(b"\x1f\x8b"));
}

// ---------------------------------------------------------------------------------
// Pagination

/// Regression: a `Link: next` back to a page already read made every poll read the
/// cycle again up to `max_pages` (100 requests, each record applied 50 times).
#[tokio::test]
async fn a_link_cycle_ends_the_poll_at_the_first_page_read_again() {
    let (base, log) = serve(|_, seen| match seen.uri.as_str() {
        "/items" => respond(
            200,
            &[("link", "</items?page=2>; rel=next")],
            json!([record(1)]).to_string(),
        ),
        "/items?page=2" => respond(
            200,
            &[("link", "</items?page=3>; rel=next")],
            json!([record(2)]).to_string(),
        ),
        // Back to the first page, by another spelling of its URL.
        "/items?page=3" => respond(
            200,
            &[("link", "</items>; rel=next")],
            json!([record(3)]).to_string(),
        ),
        other => respond(400, &[], format!("unexpected {other}")),
    })
    .await;
    let source = PollSource::new(format!("{base}/items")).max_polls(1);
    let table = read_to_end(source, appended("name")).await;
    assert_eq!(ids(&table), [1, 2, 3]);
    assert_eq!(log.lock().unwrap().len(), 3);
    // The next poll starts at the first page: nothing of the cycle is kept.
    let offsets = table.committed_offsets();
    assert_eq!(
        offsets[0].1["urls"][format!("{base}/items")].get("next_page"),
        None
    );
}

/// Regression: a poll cut by `max_pages` started the next poll over at the first
/// page, which answered 304 to its validators: the pages after the cut were never read.
#[tokio::test]
async fn a_poll_cut_by_max_pages_goes_on_at_the_next_page_though_the_first_answers_304() {
    let (base, log) = serve(|_, seen| {
        if seen.header("if-none-match") == Some("\"v1\"") {
            return respond(304, &[], Body::empty());
        }
        let page: i64 = seen.uri.split("page=").nth(1).map_or(1, |p| p.parse().unwrap());
        let link = format!("</items?page={}>; rel=next", page + 1);
        let mut headers = vec![("etag", "\"v1\"")];
        if page < 3 {
            headers.push(("link", link.as_str()));
        }
        respond(200, &headers, json!([record(page)]).to_string())
    })
    .await;
    let source = PollSource::new(format!("{base}/items"))
        .max_pages(2)
        .interval(Duration::from_millis(10))
        .max_polls(3);
    let table = read_to_end(source, appended("name")).await;
    assert_eq!(ids(&table), [1, 2, 3]);
    let uris: Vec<String> = log.lock().unwrap().iter().map(|s| s.uri.clone()).collect();
    // Two pages, the third, then the first again (304).
    assert_eq!(uris, ["/items", "/items?page=2", "/items?page=3", "/items"]);
}

/// Regression: a cursor that went back to one already followed made the poll read the
/// same pages again up to `max_pages`.
#[tokio::test]
async fn a_cursor_that_goes_back_ends_the_poll() {
    let (base, log) = serve(|_, seen| {
        let (id, next) = match seen.uri.split("after=").nth(1) {
            None => (1, "a"),
            Some("a") => (2, "b"),
            // Back to `a`.
            _ => (3, "a"),
        };
        ok(json!({"items": [record(id)], "next": next}))
    })
    .await;
    let source = PollSource::new(format!("{base}/feed"))
        .records(Records::json_pointer("/items"))
        .pagination(Pagination::cursor("after", |page| page.json_text("/next")))
        .max_polls(1);
    let table = read_to_end(source, appended("name")).await;
    assert_eq!(ids(&table), [1, 2, 3]);
    assert_eq!(log.lock().unwrap().len(), 3);
    let offset = &table.committed_offsets()[0].1;
    assert_eq!(offset["urls"][format!("{base}/feed")]["cursor"], "b");
}

/// Regression: a 304 to a later page (asked without validators) left that page as the
/// next one, so every later poll asked it again instead of the first page.
#[tokio::test]
async fn a_304_to_a_later_page_ends_the_poll_and_the_next_starts_at_the_first_page() {
    let (base, log) = serve(|_, seen| match seen.uri.as_str() {
        "/items" => respond(
            200,
            &[("link", "</items?page=2>; rel=next")],
            json!([record(1)]).to_string(),
        ),
        "/items?page=2" => respond(304, &[], Body::empty()),
        other => respond(400, &[], format!("unexpected {other}")),
    })
    .await;
    let source = PollSource::new(format!("{base}/items"))
        .interval(Duration::from_millis(10))
        .max_polls(2);
    let _table = read_to_end(source, keyed("name")).await;
    let uris: Vec<String> = log.lock().unwrap().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(uris, ["/items", "/items?page=2", "/items", "/items?page=2"]);
}

/// Regression: a `next_page` saved in the offset, which the server no longer knows
/// after a restart (an expired link: 404, 400, 410), stopped the source with a fatal
/// status on every restart. The listing starts again at the first page instead.
#[tokio::test]
async fn an_expired_next_page_link_starts_the_listing_over_instead_of_failing() {
    let (base, log) = serve(|_, seen| match seen.uri.as_str() {
        "/items" => respond(
            200,
            &[("link", "</items?page=2&token=new>; rel=next")],
            json!([record(1)]).to_string(),
        ),
        "/items?page=2&token=new" => ok(json!([record(2)])),
        _ => respond(410, &[], "this link has expired"),
    })
    .await;
    let offset =
        json!({"urls": {format!("{base}/items"): {"next_page": format!("{base}/items?page=2&token=old")}}});
    let source = PollSource::new(format!("{base}/items"))
        .interval(Duration::from_millis(10))
        .max_polls(2);
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("items", source, reader(appended("name")).resume_from(offset));
    run(pipeline).await.unwrap();
    assert_eq!(ids(&table), [1, 2]);
    let uris: Vec<String> = log.lock().unwrap().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(
        uris,
        ["/items?page=2&token=old", "/items", "/items?page=2&token=new"]
    );
}

/// Five pages of two records, linked by `Link: next`. While `hang_at` is armed, the
/// page it names sends its headers and then nothing, so a pipeline can be stopped
/// with every page before it read.
fn five_pages(hang_at: Arc<AtomicUsize>) -> impl Fn(usize, &Seen) -> Response + Send + Sync + 'static {
    move |_, seen| {
        let page: usize = seen.uri.split("page=").nth(1).map_or(1, |p| p.parse().unwrap());
        if hang_at.load(Ordering::SeqCst) == page {
            let body = futures::stream::pending::<Result<Vec<u8>, std::io::Error>>();
            return respond(200, &[], Body::from_stream(body));
        }
        let records = [record(page as i64 * 2 - 1), record(page as i64 * 2)];
        let mut headers = vec![];
        let link = format!("</items?page={}>; rel=next", page + 1);
        if page < 5 {
            headers.push(("link", link.as_str()));
        }
        respond(200, &headers, json!(records).to_string())
    }
}

/// Stops a persisted pipeline while page `k + 1` hangs (pages 1 to `k` read), then
/// restarts it from storage: every record is in the table once, none twice.
#[tokio::test]
async fn a_stop_at_every_page_boundary_then_a_restart_reads_every_record_once() {
    for k in 0..5 {
        let hang_at = Arc::new(AtomicUsize::new(k + 1));
        let (base, _log) = serve(five_pages(hang_at.clone())).await;
        let dir = tempfile::tempdir().unwrap();
        let source = || {
            PollSource::new(format!("{base}/items"))
                .interval(Duration::from_secs(3600))
                .max_polls(1)
        };

        let mut pipeline = Pipeline::new().persist(Persistence::new(dir.path()));
        let table = pipeline.read("items", source(), reader(appended("name")));
        let shutdown = pipeline.shutdown_handle();
        let running = tokio::spawn(pipeline.run());
        wait_for_rows(&table, 2 * k).await;
        // Let the offset of the last page read be committed with its records.
        tokio::time::sleep(Duration::from_millis(50)).await;
        shutdown.shutdown();
        tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .expect("the pipeline did not stop")
            .unwrap()
            .unwrap();
        assert_eq!(
            ids(&table),
            (1..=2 * k as i64).collect::<Vec<_>>(),
            "stopped after page {k}"
        );

        hang_at.store(0, Ordering::SeqCst);
        let mut pipeline = Pipeline::new().persist(Persistence::new(dir.path()));
        let table = pipeline.read("items", source(), reader(appended("name")));
        run(pipeline).await.unwrap();
        assert_eq!(
            ids(&table),
            (1..=10).collect::<Vec<_>>(),
            "stopped after page {k}"
        );
    }
}

/// As above, but the first pipeline is dropped, as a crash would end it, rather than
/// shut down.
#[tokio::test]
async fn a_crash_at_every_page_boundary_then_a_restart_reads_every_record_once() {
    for k in 0..5 {
        let hang_at = Arc::new(AtomicUsize::new(k + 1));
        let (base, _log) = serve(five_pages(hang_at.clone())).await;
        let dir = tempfile::tempdir().unwrap();
        let source = || PollSource::new(format!("{base}/items")).max_polls(1);

        let mut pipeline = Pipeline::new().persist(Persistence::new(dir.path()));
        let table = pipeline.read("items", source(), reader(appended("name")));
        let running = tokio::spawn(pipeline.run());
        wait_for_rows(&table, 2 * k).await;
        // The offset reported after the last page read is committed by the next
        // autocommit.
        tokio::time::sleep(Duration::from_millis(100)).await;
        running.abort();
        let _ = running.await;

        hang_at.store(0, Ordering::SeqCst);
        let table = run_once_unlocked(|| {
            let mut pipeline = Pipeline::new().persist(Persistence::new(dir.path()));
            let table = pipeline.read("items", source(), reader(appended("name")));
            (pipeline, table)
        })
        .await;
        assert_eq!(
            ids(&table),
            (1..=10).collect::<Vec<_>>(),
            "crashed after page {k}"
        );
    }
}

/// A page that fails (cut short) in the middle of a paginated poll is asked again, and
/// neither the pages before it nor its own records are applied twice.
#[tokio::test]
async fn a_page_cut_short_midway_through_pagination_is_asked_again_and_nothing_repeats() {
    let (base, log, _) = raw_serve(|index, head_seen| {
        let page2 = head_seen.starts_with("GET /items?page=2 ");
        let body = match page2 {
            true => json!([record(3), record(4)]).to_string(),
            false => json!([record(1), record(2)]).to_string(),
        };
        let link = "link: </items?page=2>; rel=next";
        let length = format!("content-length: {}", body.len());
        match (page2, index) {
            (true, 1) => Raw::close(head("200 OK", &[&length]) + &body[..body.len() / 2]),
            (true, _) => Raw::close(head("200 OK", &[&length]) + &body),
            (false, _) => Raw::close(head("200 OK", &[&length, link]) + &body),
        }
    })
    .await;
    let source = PollSource::new(format!("{base}/items"))
        .reconnect(fast())
        .max_polls(1);
    let table = read_to_end(source, appended("name")).await;
    assert_eq!(ids(&table), [1, 2, 3, 4]);
    let lines: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .map(|h| h.lines().next().unwrap().to_owned())
        .collect();
    assert_eq!(
        lines,
        [
            "GET /items HTTP/1.1",
            "GET /items?page=2 HTTP/1.1",
            "GET /items?page=2 HTTP/1.1"
        ]
    );
}

// ---------------------------------------------------------------------------------
// Server hints and validators

/// Regression: a `Retry-After` of 0 (or negative, or a date in the past) replaced the
/// backoff's delay, so a server that kept failing was asked again in a busy loop.
#[tokio::test]
async fn a_retry_after_of_zero_or_in_the_past_still_backs_off() {
    for retry_after in ["0", "-5", "Sun, 06 Nov 1994 08:49:37 GMT", "soon"] {
        let (base, log) = serve(move |_, _| respond(503, &[("retry-after", retry_after)], "busy")).await;
        let policy = Reconnect::default()
            .jitter(false)
            .min_delay(Duration::from_millis(100))
            .max_delay(Duration::from_millis(100))
            .max_retries(3);
        let mut pipeline = Pipeline::new();
        let _table = pipeline.read(
            "items",
            PollSource::new(base).reconnect(policy),
            reader(keyed("name")),
        );
        assert!(run(pipeline).await.is_err());
        let seen = log.lock().unwrap().clone();
        assert_eq!(seen.len(), 4, "{retry_after}");
        for pair in seen.windows(2) {
            let waited = pair[1].at - pair[0].at;
            assert!(
                waited >= Duration::from_millis(90),
                "{retry_after}: retried after {waited:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_huge_retry_after_is_waited_and_shutdown_stays_prompt() {
    let (base, log) = serve(|_, _| respond(429, &[("retry-after", "99999999999999999")], "later")).await;
    let mut pipeline = Pipeline::new();
    let _table = pipeline.read(
        "items",
        PollSource::new(base).reconnect(fast()),
        reader(keyed("name")),
    );
    let shutdown = pipeline.shutdown_handle();
    let running = tokio::spawn(pipeline.run());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(log.lock().unwrap().len(), 1, "the server asked for a long wait");
    stop_within_a_second(&shutdown, running).await;
}

#[tokio::test]
async fn an_etag_that_changes_with_the_same_body_sends_the_records_again_and_changes_nothing() {
    let (base, log) = serve(|index, _| {
        respond(
            200,
            &[("etag", format!("\"v{index}\"").as_str())],
            json!([record(1), record(2)]).to_string(),
        )
    })
    .await;
    let source = PollSource::new(base)
        .interval(Duration::from_millis(10))
        .max_polls(3);
    let stats = source.stats();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("items", source, reader(keyed("name")));
    let mut changes = table.changes();
    run(pipeline).await.unwrap();
    assert_eq!(stats.records(), 6, "each poll sent its records");
    assert_eq!(stats.not_modified(), 0);
    assert_eq!(ids(&table), [1, 2]);
    let mut batches = 0;
    while let Some(batch) = changes.next().await {
        batches += usize::from(!batch.is_empty());
    }
    assert_eq!(batches, 1, "the same rows again change nothing in a keyed table");
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen[1].header("if-none-match"), Some("\"v0\""));
    assert_eq!(seen[2].header("if-none-match"), Some("\"v1\""));
}

#[tokio::test]
async fn a_304_without_a_validator_sent_is_an_empty_poll() {
    let (base, log) = serve(|index, _| match index {
        0 => respond(304, &[], Body::empty()),
        _ => ok(json!([record(1)])),
    })
    .await;
    let source = PollSource::new(base)
        .interval(Duration::from_millis(10))
        .max_polls(2);
    let stats = source.stats();
    let table = read_to_end(source, keyed("name")).await;
    assert_eq!(log.lock().unwrap()[0].header("if-none-match"), None);
    assert_eq!((stats.not_modified(), stats.retries()), (1, 0));
    assert_eq!(ids(&table), [1]);
}

#[tokio::test]
async fn a_restart_without_persistence_of_the_table_is_told_where_the_last_poll_ended() {
    // A stop while the second URL's poll hangs: the first URL's validators are in the
    // committed offset, so the restart asks it conditionally.
    let hang = Arc::new(AtomicBool::new(true));
    let hanging = hang.clone();
    let (base, log) = serve(move |_, seen| {
        if seen.uri == "/b" && hanging.load(Ordering::SeqCst) {
            let body = futures::stream::pending::<Result<Vec<u8>, std::io::Error>>();
            return respond(200, &[], Body::from_stream(body));
        }
        if seen.header("if-none-match") == Some("\"a1\"") {
            return respond(304, &[], Body::empty());
        }
        let id = if seen.uri == "/a" { 1 } else { 2 };
        respond(200, &[("etag", "\"a1\"")], json!([record(id)]).to_string())
    })
    .await;
    let source = || {
        PollSource::new(format!("{base}/a"))
            .url(format!("{base}/b"))
            .max_polls(1)
    };
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("items", source(), reader(appended("name")));
    let shutdown = pipeline.shutdown_handle();
    let running = tokio::spawn(pipeline.run());
    while log.lock().unwrap().len() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    shutdown.shutdown();
    running.await.unwrap().unwrap();
    assert_eq!(ids(&table), [1]);
    let offset = table.committed_offsets().remove(0).1;

    hang.store(false, Ordering::SeqCst);
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("items", source(), reader(appended("name")).resume_from(offset));
    run(pipeline).await.unwrap();
    assert_eq!(
        ids(&table),
        [2],
        "the first URL answered 304, the second was read"
    );
}

/// The backoff between failed polls, on a paused clock: the policy's delays exactly,
/// with no time really spent, and a success resets it.
#[tokio::test(start_paused = true)]
async fn the_backoff_between_failed_polls_follows_the_policy_on_a_paused_clock() {
    let times: Arc<Mutex<Vec<tokio::time::Instant>>> = Arc::default();
    let seen = times.clone();
    let (base, _log) = serve(move |index, _| {
        seen.lock().unwrap().push(tokio::time::Instant::now());
        match index {
            4 => ok(json!([record(1)])),
            _ => respond(502, &[], "bad gateway"),
        }
    })
    .await;
    let policy = Reconnect::default()
        .jitter(false)
        .min_delay(Duration::from_secs(10))
        .max_delay(Duration::from_secs(80))
        .max_retries(4);
    let source = PollSource::new(base)
        .reconnect(policy)
        .timeout(Duration::from_secs(3600))
        .interval(Duration::from_secs(600))
        .max_polls(2);
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("items", source, reader(keyed("name")));
    let started = Instant::now();
    let error = pipeline.run().await.unwrap_err();
    assert!(error.to_string().contains("gave up"), "{error}");
    assert_eq!(ids(&table), [1]);
    let times = times.lock().unwrap();
    let waits: Vec<u64> = times.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
    // Four failures, a success, the interval, then five failures from a fresh backoff.
    assert_eq!(waits, [10, 20, 40, 80, 600, 10, 20, 40, 80]);
    assert!(started.elapsed() < Duration::from_secs(5));
}
