//! The polling source against servers run in-process on 127.0.0.1.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use futures::StreamExt;
use intake_core::{Error, ErrorPolicy, Location, Pipeline, Reader, Table};
use intake_http::{HttpError, Pagination, PollSource, Reconnect, Records, StatusAction};
use serde_json::json;
use support::{Seen, keyed, ok, respond, run, serve};

fn reader() -> Reader {
    Reader::json(keyed("name"))
        .error_policy(ErrorPolicy::SkipAndReport)
        .autocommit_duration(Duration::from_millis(5))
}

/// Polls with `source` into a keyed table until the source ends.
async fn read_to_end(source: PollSource) -> Table {
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("items", source, reader());
    run(pipeline).await.unwrap();
    table
}

/// Fast backoff without jitter, so retries take milliseconds.
fn fast_retries() -> Reconnect {
    Reconnect::default()
        .jitter(false)
        .min_delay(Duration::from_millis(10))
        .max_delay(Duration::from_millis(20))
}

fn names(table: &Table) -> Vec<(i64, String)> {
    let mut rows: Vec<(i64, String)> = table
        .snapshot()
        .rows()
        .iter()
        .map(|(_, row)| {
            (
                row.get("id").and_then(|v| v.as_int()).unwrap(),
                row.get("name").and_then(|v| v.as_str()).unwrap().to_owned(),
            )
        })
        .collect();
    rows.sort();
    rows
}

#[tokio::test]
async fn not_modified_sends_nothing_and_the_validators_are_sent_back() {
    let (base, server) = serve(|index, seen| {
        let validated = seen.header("if-none-match") == Some("\"v1\"")
            && seen.header("if-modified-since") == Some("Sat, 28 Nov 2026 10:00:00 GMT");
        if index > 0 && validated {
            return respond(304, &[("etag", "\"v1\"")], Body::empty());
        }
        respond(
            200,
            &[
                ("etag", "\"v1\""),
                ("last-modified", "Sat, 28 Nov 2026 10:00:00 GMT"),
            ],
            json!([{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]).to_string(),
        )
    })
    .await;
    let source = PollSource::new(format!("{base}/items"))
        .interval(Duration::from_millis(10))
        .max_polls(4);
    let stats = source.stats();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("items", source, reader());
    let mut changes = table.changes();
    run(pipeline).await.unwrap();

    assert_eq!(server.seen().len(), 4);
    assert_eq!(stats.not_modified(), 3);
    assert_eq!(stats.records(), 2, "a 304 sends no records");
    assert_eq!(names(&table), [(1, "a".to_owned()), (2, "b".to_owned())]);
    let first = &server.seen()[0];
    assert_eq!(
        first.header("if-none-match"),
        None,
        "nothing to validate on the first poll"
    );
    let mut batches = 0;
    while let Some(batch) = changes.next().await {
        if !batch.is_empty() {
            batches += 1;
        }
    }
    assert_eq!(batches, 1, "the unchanged polls changed nothing");
}

#[tokio::test]
async fn retry_after_is_waited_out_on_429_503_and_any_status_classified_as_retry() {
    let (base, server) = serve(|index, _| match index {
        0 => respond(429, &[("retry-after", "1")], "slow down"),
        1 => respond(503, &[("retry-after", "1")], "maintenance"),
        // GitHub's secondary rate limit.
        2 => respond(403, &[("retry-after", "1")], "rate limited"),
        _ => ok(json!([{"id": 1, "name": "a"}])),
    })
    .await;
    // The backoff alone would retry after 10 ms.
    let source = PollSource::new(base)
        .reconnect(fast_retries())
        .classify_status(|status| match status {
            403 => StatusAction::Retry,
            other => StatusAction::for_status(other),
        })
        .max_polls(1);
    let stats = source.stats();
    let table = read_to_end(source).await;

    let seen = server.seen();
    assert_eq!(seen.len(), 4);
    for pair in seen.windows(2) {
        let waited = pair[1].at - pair[0].at;
        assert!(waited >= Duration::from_millis(990), "retried after {waited:?}");
        assert!(waited < Duration::from_secs(3), "retried after {waited:?}");
    }
    assert_eq!(stats.retries(), 3);
    assert_eq!(table.len(), 1);
}

#[tokio::test]
async fn server_errors_back_off_and_recover() {
    let (base, server) = serve(|index, _| match index {
        0 => respond(500, &[], "boom"),
        1 => respond(502, &[], "bad gateway"),
        _ => ok(json!([{"id": 7, "name": "back"}])),
    })
    .await;
    // Two retries allowed in a row: the third request must succeed, and does.
    let source = PollSource::new(base)
        .reconnect(fast_retries().max_retries(2))
        .max_polls(1);
    let stats = source.stats();
    let table = read_to_end(source).await;

    assert_eq!(server.seen().len(), 3);
    assert_eq!(stats.retries(), 2);
    assert_eq!(names(&table), [(7, "back".to_owned())]);
}

#[tokio::test]
async fn a_refused_connection_is_retried_until_the_policy_gives_up() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    drop(listener);
    let source = PollSource::new(url).reconnect(fast_retries().max_retries(2));
    let mut pipeline = Pipeline::new();
    let _table = pipeline.read("items", source, reader());
    let error = run(pipeline).await.unwrap_err();
    let http = http_error(&error);
    let HttpError::GaveUp { attempts, .. } = http else {
        panic!("{http}")
    };
    assert_eq!(*attempts, 3);
    assert!(http.to_string().contains("could not connect"), "{http}");
}

fn http_error(error: &Error) -> &HttpError {
    let Error::SourcesFailed(failures) = error else {
        panic!("{error}")
    };
    failures[0]
        .cause()
        .downcast_ref::<HttpError>()
        .expect("an HttpError")
}

#[tokio::test]
async fn unauthorized_is_fatal_with_an_error_that_says_what_to_check() {
    let (base, server) = serve(|_, _| respond(401, &[], "bad token")).await;
    let source = PollSource::new(format!("{base}/private"))
        .bearer_auth("wrong")
        .reconnect(fast_retries());
    let mut pipeline = Pipeline::new();
    let _table = pipeline.read("items", source, reader());
    let error = run(pipeline).await.unwrap_err();
    let http = http_error(&error);
    assert!(matches!(http, HttpError::Status { status: 401, .. }), "{http}");
    let message = http.to_string();
    assert!(message.contains("/private answered HTTP 401"), "{message}");
    assert!(message.contains("check the credentials"), "{message}");
    let seen = server.seen();
    assert_eq!(seen.len(), 1, "a fatal status is not retried");
    assert_eq!(seen[0].header("authorization"), Some("Bearer wrong"));
}

#[tokio::test]
async fn the_status_classification_can_make_a_404_wait_for_the_resource() {
    let (base, server) = serve(|index, _| match index {
        0 | 1 => respond(404, &[], "not yet"),
        _ => ok(json!([{"id": 1, "name": "here"}])),
    })
    .await;
    let source = PollSource::new(base)
        .interval(Duration::from_millis(10))
        .classify_status(|status| match status {
            404 => StatusAction::Skip,
            other => StatusAction::for_status(other),
        })
        .max_polls(3);
    let stats = source.stats();
    let table = read_to_end(source).await;
    assert_eq!(server.seen().len(), 3);
    assert_eq!(stats.retries(), 0);
    assert_eq!(table.len(), 1);
}

#[tokio::test]
async fn link_pagination_reads_every_page_and_resolves_relative_links() {
    let base = Arc::new(Mutex::new(String::new()));
    let absolute = base.clone();
    let (url, server) = serve(move |_, seen| match seen.uri.as_str() {
        "/items?per_page=2" => respond(
            200,
            &[(
                "link",
                r#"</items?page=2>; rel="next", </items?page=9>; rel="last""#,
            )],
            json!([{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]).to_string(),
        ),
        "/items?page=2" => {
            let next = format!(r#"<{}/items?page=3>; rel=next"#, absolute.lock().unwrap());
            respond(
                200,
                &[("link", &next)],
                json!([{"id": 3, "name": "c"}]).to_string(),
            )
        }
        "/items?page=3" => ok(json!([{"id": 4, "name": "d"}])),
        other => respond(400, &[], format!("unexpected {other}")),
    })
    .await;
    *base.lock().unwrap() = url.clone();
    let source = PollSource::new(format!("{url}/items"))
        .query("per_page", "2")
        .max_polls(1);
    let stats = source.stats();
    let table = read_to_end(source).await;

    let uris: Vec<String> = server.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, ["/items?per_page=2", "/items?page=2", "/items?page=3"]);
    assert_eq!(stats.pages(), 3);
    assert_eq!(table.len(), 4);
}

/// Three pages linked by `Link: rel="next"`; page 2 fails with 500 the first
/// `failures` times it is asked for.
fn flaky_pages(failures: usize) -> impl Fn(usize, &Seen) -> Response + Send + Sync + 'static {
    let page2_asked = std::sync::atomic::AtomicUsize::new(0);
    move |_, seen| match seen.uri.as_str() {
        "/items" => respond(
            200,
            &[("link", "</items?page=2>; rel=next")],
            json!([{"id": 1, "name": "a"}]).to_string(),
        ),
        "/items?page=2" => {
            if page2_asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < failures {
                return respond(500, &[], "boom");
            }
            respond(
                200,
                &[("link", "</items?page=3>; rel=next")],
                json!([{"id": 2, "name": "b"}]).to_string(),
            )
        }
        "/items?page=3" => ok(json!([{"id": 3, "name": "c"}])),
        other => respond(400, &[], format!("unexpected {other}")),
    }
}

#[tokio::test]
async fn a_page_that_fails_midway_is_retried_without_reading_the_pages_before_it() {
    let (base, server) = serve(flaky_pages(2)).await;
    let source = PollSource::new(format!("{base}/items"))
        .reconnect(fast_retries())
        .max_polls(1);
    let stats = source.stats();
    let table = read_to_end(source).await;
    let uris: Vec<String> = server.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(
        uris,
        [
            "/items",
            "/items?page=2",
            "/items?page=2",
            "/items?page=2",
            "/items?page=3"
        ]
    );
    assert_eq!(stats.records(), 3, "no record was read twice");
    assert_eq!(table.len(), 3);
}

#[tokio::test]
async fn a_restart_in_the_middle_of_a_paginated_poll_goes_on_at_the_next_page() {
    let (base, server) = serve(flaky_pages(1)).await;
    // The first pipeline gives up on page 2 at once.
    let mut pipeline = Pipeline::new();
    let table = pipeline.read(
        "items",
        PollSource::new(format!("{base}/items"))
            .reconnect(Reconnect::never())
            .max_polls(1),
        reader(),
    );
    assert!(run(pipeline).await.is_err());
    assert_eq!(table.len(), 1);
    let (_, offset) = table.committed_offsets().remove(0);
    assert_eq!(
        offset["urls"][format!("{base}/items")]["next_page"],
        format!("{base}/items?page=2")
    );

    let mut pipeline = Pipeline::new();
    let source = PollSource::new(format!("{base}/items")).max_polls(1);
    let stats = source.stats();
    let table = pipeline.read("items", source, reader().resume_from(offset));
    run(pipeline).await.unwrap();
    let uris: Vec<String> = server.seen().into_iter().skip(2).map(|s| s.uri).collect();
    assert_eq!(uris, ["/items?page=2", "/items?page=3"]);
    assert_eq!(stats.records(), 2);
    assert_eq!(names(&table), [(2, "b".to_owned()), (3, "c".to_owned())]);
}

/// A feed with a cursor: `?after=C` returns the items after C and the next cursor.
fn cursor_feed(index: usize, seen: &Seen) -> Response {
    let _ = index;
    let items = [(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e")];
    let after: usize = seen
        .uri
        .split("after=")
        .nth(1)
        .map(|c| c.trim_start_matches('c').parse().unwrap())
        .unwrap_or(0);
    // Pages of two; the feed has three items at first.
    let available = if seen.headers.contains_key("x-later") {
        5
    } else {
        3
    };
    let page: Vec<_> = items[after.min(available)..(after + 2).min(available)]
        .iter()
        .map(|(id, name)| json!({"id": id, "name": name}))
        .collect();
    let next = after + page.len();
    ok(json!({"items": page, "cursor": format!("c{next}")}))
}

#[tokio::test]
async fn a_cursor_pages_through_the_feed_and_a_restart_resumes_from_it() {
    let (base, server) = serve(cursor_feed).await;
    let source = |later: bool| {
        let mut source = PollSource::new(format!("{base}/feed"))
            .records(Records::json_pointer("/items"))
            .pagination(Pagination::cursor("after", |page| page.json_text("/cursor")))
            .max_polls(1);
        if later {
            source = source.header("x-later", "1");
        }
        source
    };

    let mut pipeline = Pipeline::new();
    let table = pipeline.read("feed", source(false), reader());
    run(pipeline).await.unwrap();
    assert_eq!(names(&table).len(), 3);
    let uris: Vec<String> = server.seen().into_iter().map(|s| s.uri).collect();
    // The last page brought nothing new: the poll ends there.
    assert_eq!(uris, ["/feed", "/feed?after=c2", "/feed?after=c3"]);
    let offsets = table.committed_offsets();
    let (name, offset) = &offsets[0];
    assert_eq!(name, "feed");
    assert_eq!(offset["urls"][format!("{base}/feed")]["cursor"], "c3");

    // A new pipeline resumes from the committed offset: only the items after it.
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("feed", source(true), reader().resume_from(offset.clone()));
    run(pipeline).await.unwrap();
    assert_eq!(names(&table), [(4, "d".to_owned()), (5, "e".to_owned())]);
    let uris: Vec<String> = server.seen().into_iter().skip(3).map(|s| s.uri).collect();
    assert_eq!(uris, ["/feed?after=c3", "/feed?after=c5"]);
}

#[tokio::test]
async fn malformed_records_are_skipped_and_reported_and_their_neighbours_kept() {
    let lines = concat!(
        r#"{"id": 1, "name": "a"}"#,
        "\n",
        r#"{"id": 2, "name": "#,
        "\n",
        r#"{"id": "three", "name": "c"}"#,
        "\n",
        r#"{"id": 4, "name": "d"}"#,
        "\n",
    );
    let (base, _server) = serve(move |_, _| respond(200, &[], lines)).await;
    let (array_base, _array_server) = serve(|_, _| {
        respond(
            200,
            &[],
            r#"[{"id": 5, "name": "e"}, {"id": 6, "name": 6.0}, {"id": 7, "name": "g"}]"#,
        )
    })
    .await;
    let mut pipeline = Pipeline::new();
    let mut rejected = pipeline.rejected(16);
    let lines_table = pipeline.read(
        "lines",
        PollSource::new(base).records(Records::json_lines()).max_polls(1),
        reader(),
    );
    let array_table = pipeline.read("array", PollSource::new(array_base).max_polls(1), reader());
    run(pipeline).await.unwrap();

    assert_eq!(names(&lines_table), [(1, "a".to_owned()), (4, "d".to_owned())]);
    assert_eq!(names(&array_table), [(5, "e".to_owned()), (7, "g".to_owned())]);
    let mut raws = Vec::new();
    let mut places = Vec::new();
    while let Some(report) = rejected.next().await {
        raws.push(String::from_utf8(report.raw().to_vec()).unwrap());
        match report.location() {
            Some(Location::Http { page, record, .. }) => places.push((*page, *record)),
            other => panic!("a record is located by its page and place, not {other:?}"),
        }
    }
    raws.sort();
    assert_eq!(
        raws,
        [
            r#"{"id": "three", "name": "c"}"#,
            r#"{"id": 2, "name": "#,
            r#"{"id": 6, "name": 6.0}"#,
        ],
        "each bad record is reported as it arrived"
    );
    places.sort();
    assert_eq!(
        places,
        [(Some(1), Some(2)), (Some(1), Some(2)), (Some(1), Some(3))],
        "lines 2 and 3, and the array's second record, of the first page"
    );
}

#[tokio::test]
async fn a_body_that_is_not_json_is_reported_whole() {
    let (base, _server) = serve(|_, _| respond(200, &[], "<html>maintenance</html>")).await;
    let mut pipeline = Pipeline::new();
    let mut rejected = pipeline.rejected(4);
    let table = pipeline.read("items", PollSource::new(base).max_polls(1), reader());
    run(pipeline).await.unwrap();
    assert!(table.is_empty());
    let report = rejected.next().await.expect("a report");
    assert_eq!(&report.raw()[..], b"<html>maintenance</html>");
    assert!(
        report.reason().to_string().contains("not a JSON array"),
        "{}",
        report.reason()
    );
}

#[tokio::test]
async fn an_interval_header_sets_the_next_interval() {
    let (base, server) = serve(|_, _| {
        respond(
            200,
            &[("x-poll-interval", "1")],
            json!([{"id": 1, "name": "a"}]).to_string(),
        )
    })
    .await;
    // Without the header the source would poll every 10 ms.
    let source = PollSource::new(base)
        .interval(Duration::from_millis(10))
        .interval_from_header("X-Poll-Interval")
        .max_polls(2);
    let _table = read_to_end(source).await;
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    let waited = seen[1].at - seen[0].at;
    assert!(
        waited >= Duration::from_millis(990),
        "polled again after {waited:?}"
    );
}

#[tokio::test]
async fn shutdown_is_prompt_during_a_long_interval_and_during_a_hanging_request() {
    let (base, _server) = serve(|_, _| ok(json!([{"id": 1, "name": "a"}]))).await;
    // A server that accepts connections and never answers.
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hanging_url = format!("http://{}/", hanging.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hanging.accept().await {
            held.push(socket);
        }
    });
    let mut pipeline = Pipeline::new();
    let idle = pipeline.read(
        "idle",
        PollSource::new(base).interval(Duration::from_secs(3600)),
        reader(),
    );
    let _stuck = pipeline.read(
        "stuck",
        PollSource::new(hanging_url).timeout(Duration::from_secs(3600)),
        reader(),
    );
    let shutdown = pipeline.shutdown_handle();
    let running = tokio::spawn(pipeline.run());
    idle.wait_for(|t| t.len() == 1).await.unwrap();
    let started = Instant::now();
    shutdown.shutdown();
    let outcome = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the pipeline did not stop")
        .unwrap();
    outcome.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "stopping took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn relative_links_resolve_against_the_url_a_redirect_led_to() {
    let (base, server) = serve(|_, seen| match seen.uri.as_str() {
        "/old/items" => respond(301, &[("location", "/v2/items")], Body::empty()),
        "/v2/items" => respond(
            200,
            &[("link", "<items?page=2>; rel=next")],
            json!([{"id": 1, "name": "a"}]).to_string(),
        ),
        "/v2/items?page=2" => ok(json!([{"id": 2, "name": "b"}])),
        other => respond(400, &[], format!("unexpected {other}")),
    })
    .await;
    let mut pipeline = Pipeline::new();
    let table = pipeline.read(
        "items",
        PollSource::new(format!("{base}/old/items")).max_polls(1),
        reader(),
    );
    run(pipeline).await.unwrap();
    let uris: Vec<String> = server.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, ["/old/items", "/v2/items", "/v2/items?page=2"]);
    assert_eq!(table.len(), 2);
}

#[tokio::test]
async fn each_url_keeps_its_own_validators_and_every_request_carries_the_settings() {
    let (base, server) = serve(|_, seen| {
        let path = seen.uri.split('?').next().unwrap().to_owned();
        let etag = format!("\"{path}\"");
        if seen.header("if-none-match") == Some(etag.as_str()) {
            return respond(304, &[], Body::empty());
        }
        let id = if path == "/a" { 1 } else { 2 };
        respond(
            200,
            &[("etag", &etag)],
            json!([{"id": id, "name": path}]).to_string(),
        )
    })
    .await;
    let source = PollSource::new(format!("{base}/a"))
        .url(format!("{base}/b"))
        .basic_auth("user", Some("secret"))
        .header("accept", "application/json")
        .query("since", "2026-11-28")
        .interval(Duration::from_millis(10))
        .max_polls(2);
    let stats = source.stats();
    let table = read_to_end(source).await;

    assert_eq!(names(&table), [(1, "/a".to_owned()), (2, "/b".to_owned())]);
    assert_eq!(
        stats.not_modified(),
        2,
        "each URL's second poll sent its own ETag"
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 4);
    for request in &seen {
        assert!(request.uri.ends_with("?since=2026-11-28"), "{}", request.uri);
        // base64("user:secret")
        assert_eq!(request.header("authorization"), Some("Basic dXNlcjpzZWNyZXQ="));
        assert_eq!(request.header("accept"), Some("application/json"));
    }
}

#[tokio::test]
async fn a_body_over_the_size_limit_is_reported_not_read() {
    let big: Vec<_> = (0..100).map(|id| json!({"id": id, "name": "x"})).collect();
    let big = json!(big).to_string();
    let (base, _server) = serve(move |index, _| match index {
        0 => respond(200, &[], big.clone()),
        _ => ok(json!([{"id": 1, "name": "small"}])),
    })
    .await;
    let mut pipeline = Pipeline::new();
    let mut rejected = pipeline.rejected(4);
    let table = pipeline.read(
        "items",
        PollSource::new(base)
            .max_body_size(1_000)
            .interval(Duration::from_millis(10))
            .max_polls(2),
        reader(),
    );
    run(pipeline).await.unwrap();
    let report = rejected.next().await.expect("a report");
    assert!(report.raw().is_empty());
    assert!(
        report
            .reason()
            .to_string()
            .contains("larger than max_body_size (1000 bytes"),
        "{}",
        report.reason()
    );
    assert_eq!(
        names(&table),
        [(1, "small".to_owned())],
        "the source went on after it"
    );
}

#[tokio::test]
async fn a_persisted_pipeline_restarts_with_a_conditional_request_and_reads_nothing_twice() {
    let (base, server) = serve(|_, seen| {
        if seen.header("if-none-match") == Some("\"v1\"") {
            return respond(304, &[], Body::empty());
        }
        respond(
            200,
            &[("etag", "\"v1\"")],
            json!([{"id": 1, "name": "a"}]).to_string(),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let mut pipeline = Pipeline::new().persist(intake_core::Persistence::new(dir.path()));
        let table = pipeline.read("items", PollSource::new(base.clone()).max_polls(1), reader());
        run(pipeline).await.unwrap();
        assert_eq!(names(&table), [(1, "a".to_owned())], "restored, not read again");
    }
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].header("if-none-match"), Some("\"v1\""));
}
