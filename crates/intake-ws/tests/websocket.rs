//! The WebSocket source against in-process servers on 127.0.0.1.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use intake_core::{Column, DataType, Error, ErrorPolicy, Pipeline, Reader, Schema, Table};
use intake_ws::{Generic, Polygon, Reconnect, WebSocketSource, WsError};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};

type Ws = WebSocketStream<TcpStream>;

/// Serves WebSocket connections on 127.0.0.1:0; `handler` gets each connection and its
/// index (0 for the first). Returns the URL and the number of TCP connections so far.
async fn serve<F, Fut>(handler: F) -> (String, Arc<AtomicUsize>)
where
    F: Fn(Ws, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let handler = Arc::new(handler);
    let connections = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let index = connections.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            tokio::spawn(async move {
                if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                    handler(ws, index).await;
                }
            });
        }
    });
    (url, count)
}

fn aggregates_schema() -> Schema {
    Schema::new([
        Column::new("sym", DataType::String).primary_key(),
        Column::new("c", DataType::Float),
        Column::new("v", DataType::Int),
    ])
    .unwrap()
}

fn fast_reconnect() -> Reconnect {
    Reconnect::default()
        .min_delay(Duration::from_millis(5))
        .max_delay(Duration::from_millis(20))
        .max_retries(5)
}

fn aggregate(sym: &str, close: f64, volume: i64) -> Value {
    json!({"ev": "A", "sym": sym, "v": volume, "av": volume * 10, "op": 1.0, "vw": close, "o": close,
           "c": close, "h": close, "l": close, "a": close, "z": 1, "s": 1_700_000_000_000_i64, "e": 1_700_000_001_000_i64})
}

async fn text(ws: &mut Ws, value: Value) {
    ws.send(Message::text(value.to_string())).await.unwrap();
}

/// Reads the next text message as JSON, skipping control frames.
async fn next_json(ws: &mut Ws) -> Option<Value> {
    while let Some(Ok(message)) = ws.next().await {
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).ok();
        }
    }
    None
}

/// Server side of Polygon's handshake. Returns the subscribe params received, or
/// `None` if the key was wrong (then `auth_failed` was sent).
async fn polygon_handshake(ws: &mut Ws, key: &str, subscriptions: usize) -> Option<Vec<String>> {
    text(
        ws,
        json!([{"ev": "status", "status": "connected", "message": "Connected Successfully"}]),
    )
    .await;
    let auth = next_json(ws).await?;
    assert_eq!(auth["action"], "auth");
    if auth["params"] != key {
        text(
            ws,
            json!([{"ev": "status", "status": "auth_failed", "message": "authentication failed"}]),
        )
        .await;
        return None;
    }
    text(
        ws,
        json!([{"ev": "status", "status": "auth_success", "message": "authenticated"}]),
    )
    .await;
    let mut params = Vec::new();
    for _ in 0..subscriptions {
        let subscribe = next_json(ws).await?;
        assert_eq!(subscribe["action"], "subscribe");
        params.push(subscribe["params"].as_str().unwrap().to_owned());
    }
    text(
        ws,
        json!([{"ev": "status", "status": "success", "message": "subscribed"}]),
    )
    .await;
    Some(params)
}

async fn close_with(ws: &mut Ws, code: CloseCode, reason: &str) {
    let _ = ws
        .close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))
        .await;
    // Let the client's reply arrive.
    while let Some(Ok(_)) = ws.next().await {}
}

fn price(table: &Table, sym: &str) -> Option<f64> {
    table.get(&sym.into())?.get("c")?.as_float()
}

async fn run_with_timeout(pipeline: Pipeline) -> Result<(), Error> {
    tokio::time::timeout(Duration::from_secs(10), pipeline.run())
        .await
        .expect("the pipeline did not finish")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polygon_handshake_fills_a_table_keyed_by_sym() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let (url, _) = serve(move |mut ws, _| {
        let record = record.clone();
        async move {
            let params = polygon_handshake(&mut ws, "KEY", 2).await.unwrap();
            record.lock().unwrap().extend(params);
            text(
                &mut ws,
                json!([aggregate("AAPL", 189.5, 100), aggregate("MSFT", 411.2, 50)]),
            )
            .await;
            // Status-like noise and an event type not selected.
            text(
                &mut ws,
                json!([{"ev": "status", "status": "something_new"}, {"ev": "XQ", "sym": "NOPE"}]),
            )
            .await;
            text(&mut ws, json!([aggregate("AAPL", 189.7, 120)])).await;
            close_with(&mut ws, CloseCode::Normal, "done").await;
        }
    })
    .await;

    let source = WebSocketSource::new(url)
        .protocol(Polygon::new("KEY", "A.AAPL").subscribe("A.MSFT"))
        .reconnect_on_normal_close(false);
    let stats = source.stats();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("polygon", source, Reader::json(aggregates_schema()));
    run_with_timeout(pipeline).await.unwrap();

    assert_eq!(*seen.lock().unwrap(), ["A.AAPL", "A.MSFT"]);
    assert_eq!(table.len(), 2);
    assert_eq!(price(&table, "AAPL"), Some(189.7));
    assert_eq!(price(&table, "MSFT"), Some(411.2));
    assert_eq!(stats.messages(), 3);
    assert_eq!(stats.reconnects(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polygon_auth_failure_stops_the_source_with_a_clear_error() {
    let (url, connections) = serve(|mut ws, _| async move {
        assert!(polygon_handshake(&mut ws, "RIGHT", 1).await.is_none());
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    let source = WebSocketSource::new(url)
        .protocol(Polygon::new("WRONG", "A.*"))
        .reconnect(fast_reconnect());
    let mut pipeline = Pipeline::new();
    let _table = pipeline.read("polygon", source, Reader::json(aggregates_schema()));
    let error = run_with_timeout(pipeline).await.unwrap_err();
    let message = error.to_string();
    assert!(message.contains("source `polygon` failed"), "{message}");
    assert!(message.contains("polygon authentication failed"), "{message}");
    assert!(message.contains("check the API key"), "{message}");
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "auth failure must not be retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polygon_max_connections_is_fatal() {
    let (url, connections) = serve(|mut ws, _| async move {
        text(&mut ws, json!([{"ev": "status", "status": "max_connections", "message": "Maximum number of websocket connections exceeded."}])).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    let source = WebSocketSource::new(url)
        .protocol(Polygon::new("KEY", "A.*"))
        .reconnect(fast_reconnect());
    let mut pipeline = Pipeline::new();
    let _table = pipeline.read("polygon", source, Reader::json(aggregates_schema()));
    let message = run_with_timeout(pipeline).await.unwrap_err().to_string();
    assert!(message.contains("maximum number of connections"), "{message}");
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gives_up_after_max_retries_without_a_healthy_connection() {
    // Accepts, then drops every connection before any data.
    let (url, connections) = serve(|ws, _| async move { drop(ws) }).await;
    let source = WebSocketSource::new(url)
        .protocol(Polygon::new("KEY", "A.*"))
        .reconnect(fast_reconnect().max_retries(3));
    let stats = source.stats();
    let mut pipeline = Pipeline::new();
    let _table = pipeline.read("polygon", source, Reader::json(aggregates_schema()));
    let error = run_with_timeout(pipeline).await.unwrap_err();
    let Error::SourcesFailed(failures) = &error else {
        panic!("{error}")
    };
    let cause = failures[0].cause().downcast_ref::<WsError>().unwrap();
    assert!(matches!(cause, WsError::GaveUp { attempts: 4, .. }), "{cause}");
    assert_eq!(connections.load(Ordering::SeqCst), 4);
    assert_eq!(stats.reconnects(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reconnect_replays_auth_and_subscriptions_and_data_keeps_flowing() {
    let handshakes = Arc::new(Mutex::new(Vec::new()));
    let record = handshakes.clone();
    let (url, connections) = serve(move |mut ws, index| {
        let record = record.clone();
        async move {
            let params = polygon_handshake(&mut ws, "KEY", 2).await.unwrap();
            record.lock().unwrap().push(params);
            text(&mut ws, json!([aggregate(&format!("S{index}"), index as f64, 1)])).await;
            match index {
                // Drop the TCP connection without a close frame.
                0 => drop(ws),
                1 => close_with(&mut ws, CloseCode::Away, "restarting").await,
                2 => close_with(&mut ws, CloseCode::Error, "internal error").await,
                _ => close_with(&mut ws, CloseCode::Normal, "done").await,
            }
        }
    })
    .await;
    let source = WebSocketSource::new(url)
        .protocol(Polygon::new("KEY", "A.*").subscribe("AM.*"))
        .reconnect(fast_reconnect().max_retries(1))
        .reconnect_on_normal_close(false);
    let stats = source.stats();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("polygon", source, Reader::json(aggregates_schema()));
    run_with_timeout(pipeline).await.unwrap();

    assert_eq!(connections.load(Ordering::SeqCst), 4);
    // max_retries(1) would have given up unless each data-delivering connection reset the backoff.
    assert_eq!(stats.reconnects(), 3);
    assert_eq!(stats.connects(), 4);
    let handshakes = handshakes.lock().unwrap();
    assert_eq!(handshakes.len(), 4);
    assert!(
        handshakes.iter().all(|params| params == &["A.*", "AM.*"]),
        "{handshakes:?}"
    );
    for index in 0..4 {
        assert_eq!(price(&table, &format!("S{index}")), Some(index as f64));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_are_answered_while_the_table_applies_backpressure() {
    let (pong_tx, pong_rx) = tokio::sync::oneshot::channel();
    let pong_tx = Arc::new(Mutex::new(Some(pong_tx)));
    let client_close = Arc::new(Mutex::new(None));
    let record_close = client_close.clone();
    let (url, _) = serve(move |mut ws, _| {
        let pong_tx = pong_tx.clone();
        let record_close = record_close.clone();
        async move {
            for n in 0..200 {
                text(&mut ws, json!({"sym": format!("S{n}"), "c": 1.0, "v": n})).await;
            }
            ws.send(Message::Ping("are you there".into())).await.unwrap();
            let answered = tokio::time::timeout(Duration::from_millis(500), async {
                while let Some(Ok(message)) = ws.next().await {
                    if let Message::Pong(payload) = message {
                        return &payload[..] == b"are you there";
                    }
                }
                false
            })
            .await
            .unwrap_or(false);
            if let Some(tx) = pong_tx.lock().unwrap().take() {
                let _ = tx.send(answered);
            }
            if !answered {
                // What a strict server does: give up on the client.
                close_with(&mut ws, CloseCode::Policy, "no pong").await;
                return;
            }
            // Wait for the client's close at shutdown.
            while let Some(Ok(message)) = ws.next().await {
                if let Message::Close(frame) = message {
                    *record_close.lock().unwrap() = frame.map(|f| f.code);
                }
            }
        }
    })
    .await;

    let source = WebSocketSource::new(url).protocol(Generic::new());
    let stats = source.stats();
    let mut pipeline = Pipeline::new().shutdown_timeout(Duration::from_millis(300));
    let reader = Reader::json(aggregates_schema())
        .max_batch_size(1)
        .channel_capacity(1)
        .subscriber_capacity(1);
    let table = pipeline.read("stalled", source, reader);
    // A subscriber that never reads: commits wait for it, then the queue fills, then
    // the source's sends wait.
    let stalled = table.changes();
    let shutdown = pipeline.shutdown_handle();
    let running = tokio::spawn(pipeline.run());

    let answered = tokio::time::timeout(Duration::from_secs(5), pong_rx)
        .await
        .unwrap()
        .unwrap();
    assert!(answered, "the ping was not answered within 500 ms");
    // The counter moves once the pong is flushed, which can be just after the server
    // has read it.
    tokio::time::timeout(Duration::from_secs(5), async {
        while stats.pings_answered() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the pong was not counted");
    assert!(
        stats.messages() < 200,
        "the table was not applying backpressure: {}",
        stats.messages()
    );

    drop(stalled);
    shutdown.shutdown();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // The source closed politely.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(*client_close.lock().unwrap(), Some(CloseCode::Normal));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_treated_as_dead_and_reconnected() {
    let (url, connections) = serve(|mut ws, index| async move {
        text(&mut ws, json!({"sym": format!("S{index}"), "c": 1.0, "v": 1})).await;
        if index == 0 {
            // Alive at the TCP level, silent at the WebSocket level.
            tokio::time::sleep(Duration::from_secs(30)).await;
        } else {
            close_with(&mut ws, CloseCode::Normal, "done").await;
        }
    })
    .await;
    let source = WebSocketSource::new(url)
        .silence_timeout(Duration::from_millis(200))
        .reconnect(fast_reconnect())
        .reconnect_on_normal_close(false);
    let stats = source.stats();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("silent", source, Reader::json(aggregates_schema()));
    run_with_timeout(pipeline).await.unwrap();
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    assert_eq!(stats.reconnects(), 1);
    assert_eq!(table.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pings_keep_a_quiet_connection_alive() {
    let (url, _) = serve(|mut ws, _| async move {
        // Quiet for longer than the silence timeout, but answering pings.
        let quiet = tokio::time::timeout(Duration::from_millis(400), async {
            while let Some(Ok(_)) = ws.next().await {}
        });
        let _ = quiet.await;
        text(&mut ws, json!({"sym": "S", "c": 1.0, "v": 1})).await;
        close_with(&mut ws, CloseCode::Normal, "done").await;
    })
    .await;
    let source = WebSocketSource::new(url)
        .ping_interval(Duration::from_millis(50))
        .silence_timeout(Duration::from_millis(200))
        .reconnect(Reconnect::never())
        .reconnect_on_normal_close(false);
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("quiet", source, Reader::json(aggregates_schema()));
    run_with_timeout(pipeline).await.unwrap();
    assert_eq!(table.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_skipped_and_reported_and_later_frames_still_count() {
    let (url, _) = serve(|mut ws, _| async move {
        text(&mut ws, json!({"sym": "A", "c": 1.0, "v": 1})).await;
        ws.send(Message::text("{\"sym\": \"B\", \"c\": ")).await.unwrap();
        text(&mut ws, json!({"sym": "C", "c": 3.0, "v": 3})).await;
        close_with(&mut ws, CloseCode::Normal, "done").await;
    })
    .await;
    let source = WebSocketSource::new(url).reconnect_on_normal_close(false);
    let mut pipeline = Pipeline::new();
    let table = pipeline.read(
        "feed",
        source,
        Reader::json(aggregates_schema()).error_policy(ErrorPolicy::SkipAndReport),
    );
    let rejected = pipeline.rejected(16);
    run_with_timeout(pipeline).await.unwrap();
    let rejected: Vec<_> = rejected.collect().await;
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].source_name(), "feed");
    assert_eq!(&rejected[0].raw()[..], b"{\"sym\": \"B\", \"c\": ");
    assert_eq!(table.len(), 2);
    assert_eq!(price(&table, "C"), Some(3.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_polygon_frame_under_the_fail_policy_fails_the_pipeline() {
    let (url, _) = serve(|mut ws, _| async move {
        polygon_handshake(&mut ws, "KEY", 1).await.unwrap();
        ws.send(Message::text("[{\"ev\": \"A\", oops")).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    let source = WebSocketSource::new(url).protocol(Polygon::new("KEY", "A.*"));
    let mut pipeline = Pipeline::new();
    let _table = pipeline.read("polygon", source, Reader::json(aggregates_schema()));
    let error = run_with_timeout(pipeline).await.unwrap_err();
    assert!(matches!(error, Error::Rejected(_)), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_fragmented_and_split_array_frames() {
    let (url, _) = serve(|mut ws, _| async move {
        // A binary frame.
        ws.send(Message::binary(
            json!({"sym": "BIN", "c": 1.0, "v": 1}).to_string(),
        ))
        .await
        .unwrap();
        // A text message in three fragments.
        let whole = json!({"sym": "FRAG", "c": 2.0, "v": 2}).to_string();
        let (a, rest) = whole.split_at(5);
        let (b, c) = rest.split_at(7);
        for (part, opcode, fin) in [
            (a, Data::Text, false),
            (b, Data::Continue, false),
            (c, Data::Continue, true),
        ] {
            let frame = Frame::message(part.to_owned(), OpCode::Data(opcode), fin);
            ws.send(Message::Frame(frame)).await.unwrap();
        }
        // An array, split into one message per element.
        text(
            &mut ws,
            json!([{"sym": "X", "c": 3.0, "v": 3}, {"sym": "Y", "c": 4.0, "v": 4}]),
        )
        .await;
        close_with(&mut ws, CloseCode::Normal, "done").await;
    })
    .await;
    let source = WebSocketSource::new(url)
        .protocol(Generic::new().split_arrays(true))
        .reconnect_on_normal_close(false);
    let stats = source.stats();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("frames", source, Reader::json(aggregates_schema()));
    run_with_timeout(pipeline).await.unwrap();
    assert_eq!(stats.frames(), 3);
    assert_eq!(price(&table, "BIN"), Some(1.0));
    assert_eq!(price(&table, "FRAG"), Some(2.0));
    assert_eq!(price(&table, "Y"), Some(4.0));
    assert_eq!(table.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_protocol_sends_its_messages_after_every_connect() {
    let received = Arc::new(Mutex::new(Vec::new()));
    let record = received.clone();
    let (url, _) = serve(move |mut ws, index| {
        let record = record.clone();
        async move {
            let first = next_json(&mut ws).await.unwrap();
            let second = next_json(&mut ws).await.unwrap();
            record.lock().unwrap().push((first, second));
            text(&mut ws, json!({"sym": format!("S{index}"), "c": 1.0, "v": 1})).await;
            let code = if index == 0 {
                CloseCode::Away
            } else {
                CloseCode::Normal
            };
            close_with(&mut ws, code, "bye").await;
        }
    })
    .await;
    let protocol = Generic::new()
        .send_on_connect(r#"{"op": "login"}"#)
        .send_on_connect(r#"{"op": "subscribe"}"#);
    let source = WebSocketSource::new(url)
        .protocol(protocol)
        .reconnect(fast_reconnect())
        .reconnect_on_normal_close(false);
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("generic", source, Reader::json(aggregates_schema()));
    run_with_timeout(pipeline).await.unwrap();
    let received = received.lock().unwrap();
    assert_eq!(received.len(), 2);
    for (first, second) in received.iter() {
        assert_eq!(first["op"], "login");
        assert_eq!(second["op"], "subscribe");
    }
    assert_eq!(table.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_codes_policy_is_fatal_others_reconnect() {
    for (code, fatal) in [
        (CloseCode::Policy, true),
        (CloseCode::Normal, false),
        (CloseCode::Away, false),
        (CloseCode::Error, false),
    ] {
        let (url, connections) = serve(move |mut ws, index| async move {
            text(&mut ws, json!({"sym": format!("S{index}"), "c": 1.0, "v": 1})).await;
            if index == 0 {
                close_with(&mut ws, code, "first").await;
            } else {
                // The reconnect: end the test with a normal close.
                close_with(&mut ws, CloseCode::Normal, "done").await;
            }
        })
        .await;
        // 1000 reconnects by default; ending on the second connection needs the
        // source to stop on 1000, so count it by reconnect instead.
        let source = WebSocketSource::new(url).reconnect(fast_reconnect().max_retries(1));
        let stats = source.stats();
        let mut pipeline = Pipeline::new();
        let table = pipeline.read("codes", source, Reader::json(aggregates_schema()));
        let shutdown = pipeline.shutdown_handle();
        let running = tokio::spawn(pipeline.run());
        if fatal {
            let error = tokio::time::timeout(Duration::from_secs(5), running)
                .await
                .unwrap()
                .unwrap()
                .unwrap_err();
            let message = error.to_string();
            assert!(
                message.contains("policy violation (close code 1008): first"),
                "{message}"
            );
            assert_eq!(connections.load(Ordering::SeqCst), 1);
        } else {
            // Wait for the reconnect's data, then stop.
            tokio::time::timeout(Duration::from_secs(5), async {
                while table.len() < 2 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("no reconnect after close code {code}"));
            assert!(stats.reconnects() >= 1, "{code}");
            shutdown.shutdown();
            tokio::time::timeout(Duration::from_secs(5), running)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_close_ends_the_source_when_configured() {
    let (url, connections) = serve(|mut ws, _| async move {
        close_with(&mut ws, CloseCode::Normal, "bye").await;
    })
    .await;
    let source = WebSocketSource::new(url).reconnect_on_normal_close(false);
    let mut pipeline = Pipeline::new();
    let _table = pipeline.read("once", source, Reader::json(aggregates_schema()));
    run_with_timeout(pipeline).await.unwrap();
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

// tungstenite's handshake callback fixes the (large) error type.
#[allow(clippy::result_large_err)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_rejected_with_401_is_fatal_and_headers_are_sent() {
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/feed", listener.local_addr().unwrap());
    let attempts = Arc::new(AtomicUsize::new(0));
    let seen_token = Arc::new(Mutex::new(None));
    let (count, token) = (attempts.clone(), seen_token.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let token = token.clone();
            tokio::spawn(async move {
                let callback = move |request: &Request,
                                     _response: Response|
                      -> Result<Response, ErrorResponse> {
                    *token.lock().unwrap() = request
                        .headers()
                        .get("x-api-token")
                        .map(|v| v.to_str().unwrap().to_owned());
                    let mut refusal = ErrorResponse::new(Some("no entry".into()));
                    *refusal.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::UNAUTHORIZED;
                    Err(refusal)
                };
                let _ = tokio_tungstenite::accept_hdr_async(tcp, callback).await;
            });
        }
    });
    let source = WebSocketSource::new(url)
        .header("X-Api-Token", "secret")
        .reconnect(fast_reconnect());
    let mut pipeline = Pipeline::new();
    let _table = pipeline.read("guarded", source, Reader::json(aggregates_schema()));
    let error = run_with_timeout(pipeline).await.unwrap_err();
    let Error::SourcesFailed(failures) = &error else {
        panic!("{error}")
    };
    let cause = failures[0].cause().downcast_ref::<WsError>().unwrap();
    assert!(matches!(cause, WsError::Unauthorized { status: 401 }), "{cause}");
    assert!(error.to_string().contains("HTTP 401"), "{error}");
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert_eq!(seen_token.lock().unwrap().as_deref(), Some("secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_drop_the_connection_and_reconnect() {
    let (url, connections) = serve(|mut ws, index| async move {
        if index == 0 {
            let padding = "x".repeat(4096);
            let _ = ws
                .send(Message::text(
                    json!({"sym": "BIG", "c": 1.0, "v": 1, "pad": padding}).to_string(),
                ))
                .await;
            while let Some(Ok(_)) = ws.next().await {}
        } else {
            text(&mut ws, json!({"sym": "SMALL", "c": 1.0, "v": 1})).await;
            close_with(&mut ws, CloseCode::Normal, "done").await;
        }
    })
    .await;
    let source = WebSocketSource::new(url)
        .max_message_size(1024)
        .reconnect(fast_reconnect())
        .reconnect_on_normal_close(false);
    let mut pipeline = Pipeline::new();
    let reader = Reader::json(aggregates_schema()).error_policy(ErrorPolicy::SkipAndReport);
    let table = pipeline.read("sized", source, reader);
    let rejected = pipeline.rejected(16);
    run_with_timeout(pipeline).await.unwrap();
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    assert!(table.get(&"BIG".into()).is_none());
    assert_eq!(price(&table, "SMALL"), Some(1.0));
    // The lost message is not silent: it is reported, with its size.
    let rejected: Vec<_> = rejected.collect().await;
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let reason = rejected[0].reason().to_string();
    assert!(reason.contains("larger than max_message_size"), "{reason}");
    assert!(reason.contains("> 1024"), "{reason}");
    assert_eq!(rejected[0].source_name(), "sized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_is_retried_then_gives_up() {
    // Accepts TCP connections but never answers the upgrade.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let source = WebSocketSource::new(url)
        .connect_timeout(Duration::from_millis(50))
        .reconnect(fast_reconnect().max_retries(2));
    let mut pipeline = Pipeline::new();
    let _table = pipeline.read("slow", source, Reader::json(aggregates_schema()));
    let message = run_with_timeout(pipeline).await.unwrap_err().to_string();
    assert!(
        message.contains("gave up after 3 failed connection attempts"),
        "{message}"
    );
    assert!(message.contains("timed out"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_connect_installs_a_crypto_provider_instead_of_panicking() {
    intake_ws::install_crypto_provider();
    intake_ws::install_crypto_provider();
    // A plain TCP server: the TLS handshake fails, which must be an error, not a panic.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("wss://localhost:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            drop(tcp);
        }
    });
    let source = WebSocketSource::new(url).reconnect(Reconnect::never());
    let mut pipeline = Pipeline::new();
    let _table = pipeline.read("tls", source, Reader::json(aggregates_schema()));
    let message = run_with_timeout(pipeline).await.unwrap_err().to_string();
    assert!(
        message.contains("gave up after 1 failed connection attempts"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_a_source_waiting_to_reconnect() {
    let (url, _) = serve(|ws, _| async move { drop(ws) }).await;
    let source = WebSocketSource::new(url).reconnect(
        Reconnect::default()
            .min_delay(Duration::from_secs(60))
            .jitter(false),
    );
    let mut pipeline = Pipeline::new();
    let _table = pipeline.read("waiting", source, Reader::json(aggregates_schema()));
    let shutdown = pipeline.shutdown_handle();
    let running = tokio::spawn(pipeline.run());
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown.shutdown();
    tokio::time::timeout(Duration::from_secs(2), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[test]
fn polygon_protocol_answers_statuses_and_selects_events() {
    use intake_core::Message as TableMessage;
    use intake_ws::{Frame, Protocol, Replies};

    let mut polygon = Polygon::new("KEY", "A.*").subscribe("T.AAPL");
    let mut replies = Replies::default();
    let frame = |value: Value| Frame::text(value.to_string());

    let out = polygon
        .on_message(
            frame(json!([{"ev": "status", "status": "connected"}])),
            &mut replies,
        )
        .unwrap();
    assert!(out.is_empty());
    assert_eq!(replies.len(), 1, "auth");
    let out = polygon
        .on_message(
            frame(json!([{"ev": "status", "status": "auth_success"}])),
            &mut replies,
        )
        .unwrap();
    assert!(out.is_empty());
    assert_eq!(replies.len(), 3, "auth, then one subscribe per subscription");

    let events = json!([{"ev": "A", "sym": "A"}, {"ev": "AM", "sym": "B"}, {"ev": "T", "sym": "C"},
                        {"ev": "Q", "sym": "D"}, {"ev": "LULD", "sym": "E"}, {"ev": "status", "status": "brand_new"}]);
    let out = polygon.on_message(frame(events.clone()), &mut replies).unwrap();
    assert_eq!(out.len(), 4);
    assert!(matches!(&out[2], TableMessage::Json(event) if event["sym"] == "C"));

    let mut trades_only = Polygon::new("KEY", "T.*").events(["T"]);
    assert_eq!(
        trades_only.on_message(frame(events), &mut replies).unwrap().len(),
        1
    );

    // A frame that is not JSON goes to the reader's error policy, with the JSON error.
    let out = polygon.on_message(Frame::text("not json"), &mut replies).unwrap();
    assert!(
        matches!(&out[..], [TableMessage::Invalid { raw, reason }]
            if &raw[..] == b"not json" && reason.starts_with("malformed JSON: expected ident")),
        "{out:?}"
    );

    // The reasons the guide promises, word for word.
    let out = polygon
        .on_message(Frame::text(r#"[{"ev":"A","v": "#), &mut replies)
        .unwrap();
    assert!(
        matches!(&out[..], [TableMessage::Invalid { reason, .. }]
            if reason == "malformed JSON: EOF while parsing a value at line 1 column 16"),
        "{out:?}"
    );
    let out = polygon
        .on_message(
            frame(json!([{"ev": "A", "sym": "OK"}, 5, {"sym": "NOEV"}])),
            &mut replies,
        )
        .unwrap();
    let reasons: Vec<_> = out
        .iter()
        .filter_map(|m| match m {
            TableMessage::Invalid { reason, .. } => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons,
        [
            "item 2 of the frame is a number, not an event object",
            "item 3 of the frame: the event has no `ev` field"
        ]
    );
    assert!(matches!(&out[0], TableMessage::Json(event) if event["sym"] == "OK"));

    for status in ["auth_failed", "max_connections", "error"] {
        let error = polygon
            .on_message(
                frame(json!([{"ev": "status", "status": status, "message": "nope"}])),
                &mut replies,
            )
            .unwrap_err();
        assert!(error.is_fatal(), "{status}");
    }
    assert!(
        !format!("{polygon:?}").contains("KEY"),
        "the API key must not be logged"
    );
}

// ---------------------------------------------------------------------------------
// Bad input: every frame, or part of a frame, that does not become a row is reported
// through the reader's error policy with the real reason; its neighbours are kept.
// ---------------------------------------------------------------------------------

/// Sends `text` as a text frame exactly as written (not re-serialized).
async fn raw_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text.to_owned())).await.unwrap();
}

/// Polygon garbage, in the order the server sends it, with what the reader must be
/// told: the raw input reported and a part of the reason.
fn polygon_garbage() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        // (frame as sent, raw reported, reason contains)
        (
            r#"[{"ev":"A","sym":"X","v": "#,
            r#"[{"ev":"A","sym":"X","v": "#,
            "malformed JSON: EOF while parsing a value at line 1 column 26",
        ),
        (
            "[1, 2",
            "[1, 2",
            "malformed JSON: EOF while parsing a list at line 1 column 5",
        ),
        (
            "123 xyz",
            "123 xyz",
            "malformed JSON: trailing characters at line 1 column 5",
        ),
        (
            "123",
            "123",
            "the frame is a number, not an array of events or an event object",
        ),
        (
            r#""x""#,
            r#""x""#,
            "the frame is a string, not an array of events or an event object",
        ),
        (
            "null",
            "null",
            "the frame is null, not an array of events or an event object",
        ),
        (
            r#"{"sym":"NOEV2"}"#,
            r#"{"sym":"NOEV2"}"#,
            "the event has no `ev` field",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polygon_garbage_is_reported_with_the_real_reason_and_good_events_are_kept() {
    let (url, _) = serve(|mut ws, _| async move {
        polygon_handshake(&mut ws, "KEY", 1).await.unwrap();
        text(&mut ws, json!([aggregate("G0", 1.0, 1)])).await;
        for (n, (frame, _, _)) in polygon_garbage().into_iter().enumerate() {
            raw_text(&mut ws, frame).await;
            text(&mut ws, json!([aggregate(&format!("G{}", n + 1), 1.0, 1)])).await;
        }
        // Bad items between good ones in one frame; an unselected type is not bad input.
        text(
            &mut ws,
            json!([aggregate("MIX1", 1.0, 1), 5, {"sym": "NOEV"}, {"ev": 7, "sym": "NUMEV"}, "str",
                   aggregate("MIX2", 2.0, 2), {"ev": "XQ", "sym": "UNSELECTED"}]),
        )
        .await;
        // An event object on its own, and a binary frame that is not JSON.
        text(&mut ws, aggregate("SINGLE", 3.0, 3)).await;
        ws.send(Message::binary(vec![0xff, 0xfe])).await.unwrap();
        text(&mut ws, json!([aggregate("LAST", 4.0, 4)])).await;
        close_with(&mut ws, CloseCode::Normal, "done").await;
    })
    .await;
    let source = WebSocketSource::new(url)
        .protocol(Polygon::new("KEY", "A.*"))
        .reconnect_on_normal_close(false);
    let mut pipeline = Pipeline::new();
    let reader = Reader::json(aggregates_schema()).error_policy(ErrorPolicy::SkipAndReport);
    let table = pipeline.read("polygon", source, reader);
    let rejected = pipeline.rejected(64);
    run_with_timeout(pipeline).await.unwrap();

    let garbage = polygon_garbage();
    let mut good: Vec<String> = (0..=garbage.len()).map(|n| format!("G{n}")).collect();
    good.extend(["MIX1", "MIX2", "SINGLE", "LAST"].map(String::from));
    for sym in &good {
        assert!(price(&table, sym).is_some(), "{sym} is missing");
    }
    assert_eq!(table.len(), good.len());

    let mut expected: Vec<(Vec<u8>, String)> = garbage
        .iter()
        .map(|(_, raw, reason)| (raw.as_bytes().to_vec(), reason.to_string()))
        .collect();
    for (raw, reason) in [
        ("5", "item 2 of the frame is a number, not an event object"),
        (
            r#"{"sym":"NOEV"}"#,
            "item 3 of the frame: the event has no `ev` field",
        ),
        (
            r#"{"ev":7,"sym":"NUMEV"}"#,
            "item 4 of the frame: the event's `ev` field is a number, not a string",
        ),
        (r#""str""#, "item 5 of the frame is a string, not an event object"),
    ] {
        expected.push((raw.as_bytes().to_vec(), reason.to_owned()));
    }
    expected.push((
        vec![0xff, 0xfe],
        "malformed JSON: expected value at line 1 column 1".to_owned(),
    ));

    let rejected: Vec<_> = rejected.collect().await;
    let seen: Vec<_> = rejected
        .iter()
        .map(|r| {
            (
                String::from_utf8_lossy(r.raw()).into_owned(),
                r.reason().to_string(),
            )
        })
        .collect();
    assert_eq!(rejected.len(), expected.len(), "{seen:#?}");
    for (report, (raw, reason)) in rejected.iter().zip(&expected) {
        assert_eq!(report.source_name(), "polygon");
        assert_eq!(&report.raw()[..], &raw[..], "{seen:#?}");
        assert!(
            report.reason().to_string().contains(reason.as_str()),
            "expected {reason:?} in {seen:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polygon_garbage_under_the_fail_policy_fails_the_pipeline_with_the_real_reason() {
    let bad_items = [
        (
            json!([aggregate("OK", 1.0, 1), 5]).to_string(),
            "item 2 of the frame is a number, not an event object",
        ),
        (
            json!([aggregate("OK", 1.0, 1), {"sym": "NOEV"}]).to_string(),
            "item 2 of the frame: the event has no `ev` field",
        ),
    ];
    let cases = polygon_garbage()
        .into_iter()
        .map(|(frame, _, reason)| (frame.to_owned(), reason))
        .chain(bad_items);
    for (frame, reason) in cases {
        let garbage = frame.clone();
        let (url, _) = serve(move |mut ws, _| {
            let garbage = garbage.clone();
            async move {
                polygon_handshake(&mut ws, "KEY", 1).await.unwrap();
                raw_text(&mut ws, &garbage).await;
                text(&mut ws, json!([aggregate("AFTER", 1.0, 1)])).await;
                close_with(&mut ws, CloseCode::Normal, "done").await;
            }
        })
        .await;
        let source = WebSocketSource::new(url)
            .protocol(Polygon::new("KEY", "A.*"))
            .reconnect_on_normal_close(false);
        let mut pipeline = Pipeline::new();
        let _table = pipeline.read("polygon", source, Reader::json(aggregates_schema()));
        let error = run_with_timeout(pipeline)
            .await
            .expect_err(&format!("{frame} did not fail the pipeline"));
        let Error::Rejected(rejected) = &error else {
            panic!("{frame}: {error}")
        };
        assert!(
            rejected.reason().to_string().contains(reason),
            "{frame}: expected {reason:?}, got {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_arrays_reports_a_broken_array_as_malformed_json() {
    let (url, _) = serve(|mut ws, _| async move {
        text(&mut ws, json!({"sym": "A", "c": 1.0, "v": 1})).await;
        raw_text(&mut ws, "[1, 2").await;
        text(&mut ws, json!([{"sym": "B", "c": 2.0, "v": 2}])).await;
        close_with(&mut ws, CloseCode::Normal, "done").await;
    })
    .await;
    let source = WebSocketSource::new(url)
        .protocol(Generic::new().split_arrays(true))
        .reconnect_on_normal_close(false);
    let mut pipeline = Pipeline::new();
    let reader = Reader::json(aggregates_schema()).error_policy(ErrorPolicy::SkipAndReport);
    let table = pipeline.read("feed", source, reader);
    let rejected = pipeline.rejected(16);
    run_with_timeout(pipeline).await.unwrap();
    let rejected: Vec<_> = rejected.collect().await;
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(&rejected[0].raw()[..], b"[1, 2");
    let reason = rejected[0].reason().to_string();
    assert_eq!(
        reason,
        "malformed JSON: EOF while parsing a list at line 1 column 5"
    );
    assert_eq!(table.len(), 2);
}

/// Index 0: a row, then a text frame that is not UTF-8; index 1: another row.
async fn serve_a_text_frame_that_is_not_utf8() -> String {
    let (url, _) = serve(|mut ws, index| async move {
        text(&mut ws, json!({"sym": format!("S{index}"), "c": 1.0, "v": 1})).await;
        if index == 0 {
            let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
            let _ = ws.send(Message::Frame(frame)).await;
            while let Some(Ok(_)) = ws.next().await {}
        } else {
            close_with(&mut ws, CloseCode::Normal, "done").await;
        }
    })
    .await;
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_frame_that_is_not_utf8_is_reported_and_the_connection_made_again() {
    let url = serve_a_text_frame_that_is_not_utf8().await;
    let source = WebSocketSource::new(url)
        .reconnect(fast_reconnect())
        .reconnect_on_normal_close(false);
    let mut pipeline = Pipeline::new();
    let reader = Reader::json(aggregates_schema()).error_policy(ErrorPolicy::SkipAndReport);
    let table = pipeline.read("feed", source, reader);
    let rejected = pipeline.rejected(16);
    run_with_timeout(pipeline).await.unwrap();
    assert_eq!(table.len(), 2);
    let rejected: Vec<_> = rejected.collect().await;
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let reason = rejected[0].reason().to_string();
    assert!(
        reason.contains("text message that is not valid UTF-8"),
        "{reason}"
    );

    let url = serve_a_text_frame_that_is_not_utf8().await;
    let source = WebSocketSource::new(url).reconnect(fast_reconnect());
    let mut pipeline = Pipeline::new();
    let _table = pipeline.read("feed", source, Reader::json(aggregates_schema()));
    let error = run_with_timeout(pipeline).await.unwrap_err();
    assert!(matches!(error, Error::Rejected(_)), "{error}");
    assert!(error.to_string().contains("not valid UTF-8"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_under_the_fail_policy_fails_the_pipeline() {
    let (url, _) = serve(|mut ws, _| async move {
        let padding = "x".repeat(4096);
        let _ = ws
            .send(Message::text(json!({"sym": "BIG", "pad": padding}).to_string()))
            .await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    let source = WebSocketSource::new(url)
        .max_message_size(1024)
        .reconnect(fast_reconnect());
    let mut pipeline = Pipeline::new();
    let _table = pipeline.read("sized", source, Reader::json(aggregates_schema()));
    let error = run_with_timeout(pipeline).await.unwrap_err();
    assert!(matches!(error, Error::Rejected(_)), "{error}");
    assert!(
        error.to_string().contains("larger than max_message_size"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_delivers_only_bad_input_is_not_healthy() {
    // Garbage, then the connection drops: retrying must stop at max_retries instead
    // of the garbage resetting the backoff forever.
    let (url, connections) = serve(|mut ws, _| async move {
        raw_text(&mut ws, "123").await;
        drop(ws);
    })
    .await;
    let source = WebSocketSource::new(url)
        .protocol(Polygon::new("KEY", "A.*"))
        .reconnect(fast_reconnect().max_retries(2));
    let mut pipeline = Pipeline::new();
    let reader = Reader::json(aggregates_schema()).error_policy(ErrorPolicy::SkipAndReport);
    let _table = pipeline.read("garbage", source, reader);
    let rejected = pipeline.rejected(16);
    let error = tokio::time::timeout(Duration::from_secs(3), pipeline.run())
        .await
        .expect("bad input kept resetting the backoff")
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("gave up after 3 failed connection attempts"),
        "{error}"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 3);
    assert_eq!(rejected.collect::<Vec<_>>().await.len(), 3);
}

/// Emits text frames as they are; `resync` is a (non-fatal) protocol error, and the
/// frame `{"sym": "SLOW", ...}` takes a while, so that the frames behind it are read
/// ahead before the error.
struct Resyncing;

impl intake_ws::Protocol for Resyncing {
    fn on_message(
        &mut self,
        frame: intake_ws::Frame,
        _replies: &mut intake_ws::Replies,
    ) -> Result<Vec<intake_core::Message>, intake_ws::ProtocolError> {
        let text = frame.as_str().unwrap_or_default();
        if text == "resync" {
            return Err(intake_ws::ProtocolError::reconnect("out of sync"));
        }
        if text.contains("SLOW") {
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(vec![intake_core::Message::Bytes(frame.into_bytes())])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_read_ahead_of_a_protocol_error_are_still_processed() {
    let (url, connections) = serve(|mut ws, index| async move {
        if index == 0 {
            text(&mut ws, json!({"sym": "SLOW", "c": 1.0, "v": 1})).await;
            raw_text(&mut ws, "resync").await;
            text(&mut ws, json!({"sym": "B", "c": 2.0, "v": 2})).await;
            text(&mut ws, json!({"sym": "C", "c": 3.0, "v": 3})).await;
            while let Some(Ok(_)) = ws.next().await {}
        } else {
            text(&mut ws, json!({"sym": "D", "c": 4.0, "v": 4})).await;
            close_with(&mut ws, CloseCode::Normal, "done").await;
        }
    })
    .await;
    let source = WebSocketSource::new(url)
        .protocol(Resyncing)
        .reconnect(fast_reconnect())
        .reconnect_on_normal_close(false);
    let stats = source.stats();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("resync", source, Reader::json(aggregates_schema()));
    run_with_timeout(pipeline).await.unwrap();
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    assert_eq!(stats.frames(), 5);
    for sym in ["SLOW", "B", "C", "D"] {
        assert!(price(&table, sym).is_some(), "{sym} was lost");
    }
}

// ---------------------------------------------------------------------------------
// Settings: every value a builder accepts works, or is refused at once.
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_durations_and_largest_sizes_mean_no_limit() {
    type Configure = fn(WebSocketSource) -> WebSocketSource;
    let settings: [(&str, Configure); 3] = [
        ("ping_interval(MAX)", |s| s.ping_interval(Duration::MAX)),
        ("silence_timeout(MAX)", |s| s.silence_timeout(Duration::MAX)),
        (
            "connect_timeout(MAX), max_message_size(MAX), read_ahead(MAX)",
            |s| {
                s.connect_timeout(Duration::MAX)
                    .max_message_size(usize::MAX)
                    .read_ahead(usize::MAX)
            },
        ),
    ];
    let mut failures = Vec::new();
    for (name, configure) in settings {
        let (url, _) = serve(|mut ws, _| async move {
            text(&mut ws, json!({"sym": "S", "c": 1.0, "v": 1})).await;
            close_with(&mut ws, CloseCode::Normal, "done").await;
        })
        .await;
        let source = configure(WebSocketSource::new(url))
            .reconnect(Reconnect::never())
            .reconnect_on_normal_close(false);
        let mut pipeline = Pipeline::new();
        let table = pipeline.read("extreme", source, Reader::json(aggregates_schema()));
        match run_with_timeout(pipeline).await {
            Ok(()) if table.len() == 1 => {}
            Ok(()) => failures.push(format!("{name}: {} rows", table.len())),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
#[should_panic(expected = "ping_interval must be longer than zero")]
fn a_zero_ping_interval_is_refused() {
    let _ = WebSocketSource::new("ws://127.0.0.1:9").ping_interval(Duration::ZERO);
}

#[test]
#[should_panic(expected = "silence_timeout must be longer than zero")]
fn a_zero_silence_timeout_is_refused() {
    let _ = WebSocketSource::new("ws://127.0.0.1:9").silence_timeout(Duration::ZERO);
}

#[test]
#[should_panic(expected = "connect_timeout must be longer than zero")]
fn a_zero_connect_timeout_is_refused() {
    let _ = WebSocketSource::new("ws://127.0.0.1:9").connect_timeout(Duration::ZERO);
}

#[test]
#[should_panic(expected = "max_message_size must be at least 1 byte")]
fn a_zero_max_message_size_is_refused() {
    let _ = WebSocketSource::new("ws://127.0.0.1:9").max_message_size(0);
}

#[test]
#[should_panic(expected = "Polygon::events needs at least one event type")]
fn polygon_with_no_event_types_is_refused() {
    let _ = Polygon::new("KEY", "A.*").events(Vec::<String>::new());
}

#[test]
#[should_panic(expected = "Polygon::events cannot select `status`")]
fn polygon_selecting_status_events_is_refused() {
    let _ = Polygon::new("KEY", "A.*").events(["A", "status"]);
}
