//! The server-sent events source against in-process servers on 127.0.0.1.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use futures::StreamExt;
use intake_core::{Error, ErrorPolicy, Pipeline, Reader, Reconnect, Table};
use intake_http::{SseError, SseSource};
use serde_json::json;
use support::{
    appended, event, events, ids, keyed, no_content, run, serve, source_error, stream, wait_for_rows,
};
use tokio::net::TcpListener;

fn fast() -> Reconnect {
    Reconnect::default()
        .min_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(20))
        .max_retries(5)
}

/// Reads `source` into a keyed table until the source ends.
async fn read_to_end(source: SseSource) -> Table {
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("sse", source, Reader::json(keyed("v")));
    run(pipeline).await.unwrap();
    table
}

fn value(table: &Table, id: i64) -> String {
    table
        .get(&id.into())
        .unwrap()
        .get("v")
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

/// Every rule of the format at once: a BOM, CRLF, CR and LF line ends, multi-line
/// data, comments, event types, a field without colon, an id with NUL (ignored), and
/// an unfinished event at the end (discarded). Its last event ID is `3`.
const STREAM: &[u8] = b"\xEF\xBB\xBF: welcome\r\nretry: 1\r\nid: 1\r\ndata: {\"id\": 1,\r\ndata: \"v\": \"caf\xC3\xA9\"}\r\n\r\n\
:keep-alive\rid: 2\revent: edit\rdata: {\"id\": 2, \"v\": \"b\"}\r\r\
id: 3\nid: 9\x00\ndata\ndata: {\"id\": 3, \"v\": \"c\\u0021\"}\n\n: bye\nid: 4\ndata: {\"id\": 4, \"v\": \"unfinished\"}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_split_position_of_a_stream_gives_the_same_rows() {
    let (url, requests) = serve(|_, request| {
        if request.last_event_id().as_deref() == Some("3") {
            return no_content();
        }
        let chunks: Vec<Vec<u8>> = match request.path().strip_prefix("/at/") {
            Some(at) => {
                let (a, b) = STREAM.split_at(at.parse().unwrap());
                vec![a.to_vec(), b.to_vec()]
            }
            None => STREAM.chunks(1).map(<[u8]>::to_vec).collect(),
        };
        stream(chunks, false)
    })
    .await;
    let paths = (0..=STREAM.len())
        .map(|at| format!("/at/{at}"))
        .chain(["/bytes".to_owned()]);
    // Concurrently: each pipeline mostly waits for its final commit.
    intake_http::install_crypto_provider();
    let client = reqwest::Client::new();
    let runs = paths.map(|path| {
        let url = url.clone();
        let client = client.clone();
        async move {
            let source = SseSource::new(format!("{url}{path}"))
                .reconnect(fast())
                .client(client);
            let stats = source.stats();
            let mut pipeline = Pipeline::new();
            let table = pipeline.read("sse", source, Reader::json(keyed("v")));
            run(pipeline).await.unwrap();
            assert_eq!(ids(&table), [1, 2, 3], "{path}");
            assert_eq!(value(&table, 1), "café", "{path}");
            assert_eq!(value(&table, 3), "c!", "{path}");
            assert_eq!(stats.comments(), 3, "{path}");
            assert_eq!(stats.events(), 3, "{path}");
            assert_eq!(
                table.committed_offsets(),
                [("sse".to_owned(), json!("3"))],
                "{path}"
            );
        }
    });
    futures::future::join_all(runs).await;
    let requests = requests.lock().unwrap();
    assert!(
        requests
            .iter()
            .all(|r| r.header("accept") == Some("text/event-stream"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_line_data_comments_and_the_event_type_filter() {
    let (url, _) = serve(|_, request| match request.last_event_id() {
        Some(_) => no_content(),
        None => events(
            ": comment\n\ndata: {\"id\": 1,\ndata:  \"v\":\ndata\ndata: \"x\"}\nid: a\n\n\
             event: ignored\ndata: {\"id\": 2, \"v\": \"y\"}\n\n: another\n\
             event: message\ndata: {\"id\": 3, \"v\": \"z\"}\nid: b\n\n",
        ),
    })
    .await;
    let source = SseSource::new(url).reconnect(fast()).event_type("message");
    let stats = source.stats();
    let table = read_to_end(source).await;
    assert_eq!(ids(&table), [1, 3]);
    assert_eq!(value(&table, 1), "x");
    assert_eq!((stats.events(), stats.filtered(), stats.comments()), (3, 1, 2));
    assert_eq!(table.committed_offsets(), [("sse".to_owned(), json!("b"))]);
}

/// Ten events; each connection sends the three after its `Last-Event-ID`, then the
/// start of one more (which is not dispatched), then drops the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_send_last_event_id_and_lose_or_repeat_no_event() {
    let (url, requests) = serve(|_, request| {
        let after: i64 = request
            .last_event_id()
            .as_deref()
            .map_or(0, |id| id.parse().unwrap());
        if after == 10 {
            return no_content();
        }
        let mut text = String::new();
        for id in after + 1..=(after + 3).min(10) {
            text += &event(id);
        }
        text += &format!("id: {}\ndata: {{\"id\": 0, \"v\": \"partial", after + 4);
        events(&text)
    })
    .await;
    let source = SseSource::new(url).reconnect(fast());
    let stats = source.stats();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("sse", source, Reader::json(appended("v")));
    run(pipeline).await.unwrap();
    assert_eq!(ids(&table), (1..=10).collect::<Vec<_>>());
    let sent: Vec<_> = requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.last_event_id())
        .collect();
    let expected = [None, Some("3"), Some("6"), Some("9"), Some("10")].map(|id| id.map(str::to_owned));
    assert_eq!(sent, expected);
    assert_eq!(stats.reconnects(), 4);
    assert_eq!(stats.connects(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_retry_sets_the_reconnect_delay() {
    let (url, requests) = serve(|_, request| match request.last_event_id() {
        Some(_) => no_content(),
        None => events("retry: 300\nid: 1\ndata: {\"id\": 1, \"v\": \"a\"}\n\n"),
    })
    .await;
    // Without the server's retry, the first reconnect would wait a minute.
    let policy = Reconnect::default()
        .min_delay(Duration::from_secs(60))
        .jitter(false);
    let source = SseSource::new(url).reconnect(policy);
    let mut pipeline = Pipeline::new();
    let _table = pipeline.read("sse", source, Reader::json(keyed("v")));
    run(pipeline).await.unwrap();
    let requests = requests.lock().unwrap();
    let waited = requests[1].at - requests[0].at;
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_stream_is_reconnected_and_comments_keep_one_alive() {
    // The first stream sends comments for a while (alive), then falls silent (dead).
    let (url, requests) = serve(|index, request| match (index, request.last_event_id()) {
        (0, _) => {
            let body = futures::stream::iter(0..8)
                .then(|i| async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, Infallible>(Bytes::from(match i {
                        0 => "id: 1\ndata: {\"id\": 1, \"v\": \"a\"}\n\n".to_owned(),
                        _ => ": ping\n".to_owned(),
                    }))
                })
                .chain(futures::stream::pending());
            (
                [(header::CONTENT_TYPE, "text/event-stream")],
                Body::from_stream(body),
            )
                .into_response()
        }
        _ => no_content(),
    })
    .await;
    let source = SseSource::new(url)
        .reconnect(fast())
        .silence_timeout(Duration::from_millis(200));
    let stats = source.stats();
    let table = read_to_end(source).await;
    assert_eq!(ids(&table), [1]);
    assert_eq!(stats.comments(), 7);
    assert_eq!(stats.reconnects(), 1);
    let requests = requests.lock().unwrap();
    assert_eq!(requests[1].last_event_id().as_deref(), Some("1"));
    // 8 × 50 ms of bytes, then 200 ms of silence.
    let waited = requests[1].at - requests[0].at;
    assert!(waited >= Duration::from_millis(550), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_events_are_skipped_and_reported() {
    let (url, _) = serve(move |_, request| match request.last_event_id() {
        Some(_) => no_content(),
        None => events(&format!(
            "data: {{\"id\": 1, \"v\": \"a\"}}\n\ndata: {{\"id\": 2, oops\n\n\
             event: huge\ndata: {}\n\ndata: {{\"id\": 3, \"v\": \"c\"}}\nid: end\n\n",
            "x".repeat(2000)
        )),
    })
    .await;
    let source = SseSource::new(url).reconnect(fast()).max_event_size(1000);
    let stats = source.stats();
    let mut pipeline = Pipeline::new();
    let reader = Reader::json(keyed("v")).error_policy(ErrorPolicy::SkipAndReport);
    let table = pipeline.read("sse", source, reader);
    let rejected = pipeline.rejected(16);
    run(pipeline).await.unwrap();
    assert_eq!(ids(&table), [1, 3]);
    let rejected: Vec<_> = rejected.collect().await;
    assert_eq!(rejected.len(), 2);
    assert_eq!(&rejected[0].raw()[..], b"{\"id\": 2, oops");
    let reason = rejected[1].reason().to_string();
    assert!(
        reason.contains("`huge`") && reason.contains("max_event_size"),
        "{reason}"
    );
    assert_eq!(stats.oversized(), 1);
    assert_eq!(table.stats().rejected(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_data_under_the_fail_policy_fails_the_pipeline() {
    let (url, _) = serve(|_, _| events("data: {\"id\": 1, oops\n\n")).await;
    let mut pipeline = Pipeline::new();
    let _table = pipeline.read(
        "sse",
        SseSource::new(url).reconnect(fast()),
        Reader::json(keyed("v")),
    );
    let error = run(pipeline).await.unwrap_err();
    assert!(matches!(error, Error::Rejected(_)), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_prompt_on_an_idle_stream_and_while_waiting_to_reconnect() {
    for idle in [true, false] {
        let (url, requests) = serve(move |_, _| match idle {
            true => stream(vec![b"id: 1\ndata: {\"id\": 1, \"v\": \"a\"}\n\n".to_vec()], true),
            false => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        })
        .await;
        let policy = Reconnect::default().min_delay(Duration::from_secs(3600));
        let mut pipeline = Pipeline::new().shutdown_timeout(Duration::from_secs(5));
        let table = pipeline.read(
            "sse",
            SseSource::new(url).reconnect(policy),
            Reader::json(keyed("v")),
        );
        let shutdown = pipeline.shutdown_handle();
        let running = tokio::spawn(pipeline.run());
        while requests.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if idle {
            wait_for_rows(&table, 1).await;
        }
        shutdown.shutdown();
        let result = tokio::time::timeout(Duration::from_secs(2), running).await;
        let result = result.expect("the pipeline did not stop within 2 s").unwrap();
        result.unwrap();
        if idle {
            assert_eq!(table.committed_offsets(), [("sse".to_owned(), json!("1"))]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_from_the_committed_last_event_id() {
    let (url, requests) = serve(|_, request| match request.last_event_id().as_deref() {
        None => stream(
            vec![
                b"id: 1\ndata: {\"id\": 1, \"v\": \"a\"}\n\nid: 2\ndata: {\"id\": 2, \"v\": \"b\"}\n\n"
                    .to_vec(),
            ],
            true,
        ),
        Some("2") => events("id: 3\ndata: {\"id\": 3, \"v\": \"c\"}\n\n"),
        Some(_) => no_content(),
    })
    .await;
    let mut first = Pipeline::new();
    let table = first.read(
        "sse",
        SseSource::new(url.as_str()).reconnect(fast()),
        Reader::json(keyed("v")),
    );
    let shutdown = first.shutdown_handle();
    let running = tokio::spawn(first.run());
    wait_for_rows(&table, 2).await;
    shutdown.shutdown();
    running.await.unwrap().unwrap();
    let offsets = table.committed_offsets();
    assert_eq!(offsets, [("sse".to_owned(), json!("2"))]);

    let mut second = Pipeline::new();
    let reader = Reader::json(keyed("v")).resume_from(offsets[0].1.clone());
    let table = second.read("sse", SseSource::new(url.as_str()).reconnect(fast()), reader);
    run(second).await.unwrap();
    assert_eq!(ids(&table), [3]);
    let sent: Vec<_> = requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.last_event_id())
        .collect();
    assert_eq!(sent, [None, Some("2".to_owned()), Some("3".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_until_the_stream_opens() {
    let (url, _) = serve(|index, request| match (index, request.last_event_id()) {
        (0, _) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        (1, _) => StatusCode::BAD_GATEWAY.into_response(),
        (_, None) => events("id: 1\ndata: {\"id\": 1, \"v\": \"a\"}\n\n"),
        (_, Some(_)) => no_content(),
    })
    .await;
    let source = SseSource::new(url).reconnect(fast());
    let stats = source.stats();
    let table = read_to_end(source).await;
    assert_eq!(ids(&table), [1]);
    assert_eq!((stats.connects(), stats.reconnects()), (1, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_retrying_cannot_fix_stop_the_source_with_what_to_check() {
    let (url, requests) = serve(|_, request| match request.path() {
        "/401" => StatusCode::UNAUTHORIZED.into_response(),
        "/404" => StatusCode::NOT_FOUND.into_response(),
        _ => ([(header::CONTENT_TYPE, "text/html")], "<html>").into_response(),
    })
    .await;
    for (path, check) in [
        ("/401", "check the credentials"),
        ("/404", "check the URL"),
        ("/html", "instead of text/event-stream"),
    ] {
        let mut pipeline = Pipeline::new();
        let _table = pipeline.read(
            "sse",
            SseSource::new(format!("{url}{path}")),
            Reader::json(keyed("v")),
        );
        let error = run(pipeline).await.unwrap_err();
        let error = source_error(&error);
        assert!(error.to_string().contains(check), "{path}: {error}");
    }
    // Each was asked once: no retries.
    assert_eq!(requests.lock().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giving_up_after_the_retries_of_the_policy() {
    let (url, requests) = serve(|_, _| StatusCode::SERVICE_UNAVAILABLE.into_response()).await;
    let mut pipeline = Pipeline::new();
    let source = SseSource::new(url).reconnect(fast().max_retries(2));
    let _table = pipeline.read("sse", source, Reader::json(keyed("v")));
    let error = run(pipeline).await.unwrap_err();
    assert!(
        matches!(source_error(&error), SseError::GaveUp { attempts: 3, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("HTTP 503"), "{error}");
    assert_eq!(requests.lock().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_offset_that_is_not_an_event_id_is_refused() {
    let mut pipeline = Pipeline::new();
    let reader = Reader::json(keyed("v")).resume_from(json!({"cursor": 1}));
    let _table = pipeline.read("sse", SseSource::new("http://127.0.0.1:9/"), reader);
    let error = run(pipeline).await.unwrap_err();
    assert!(
        matches!(source_error(&error), SseError::InvalidOffset { .. }),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giving_up_says_why_the_connection_failed() {
    // A port nothing listens on.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    drop(listener);
    let mut pipeline = Pipeline::new();
    let source = SseSource::new(url).reconnect(Reconnect::never());
    let _table = pipeline.read("sse", source, Reader::json(keyed("v")));
    let error = run(pipeline).await.unwrap_err();
    let message = source_error(&error).to_string();
    assert!(message.contains("refused"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_and_authentication_are_sent_with_every_request() {
    let (url, requests) = serve(|_, request| match request.last_event_id() {
        Some(_) => no_content(),
        None => events("id: 1\ndata: {\"id\": 1, \"v\": \"a\"}\n\n"),
    })
    .await;
    for (source, expected) in [
        (SseSource::new(url.as_str()).bearer_auth("t0ken"), "Bearer t0ken"),
        (
            SseSource::new(url.as_str()).basic_auth("me", Some("secret".to_owned())),
            "Basic bWU6c2VjcmV0",
        ),
    ] {
        let debug = format!("{source:?}");
        assert!(!debug.contains("t0ken") && !debug.contains("secret"), "{debug}");
        let mut pipeline = Pipeline::new();
        let _table = pipeline.read("sse", source.reconnect(fast()), Reader::json(keyed("v")));
        run(pipeline).await.unwrap();
        let mut requests = requests.lock().unwrap();
        assert_eq!(requests.len(), 2);
        for request in requests.drain(..) {
            assert_eq!(request.header("authorization"), Some(expected));
        }
    }
}
