//! The `Generic` protocol's `filter_map`: control frames of an exchange (subscription
//! acknowledgements, heartbeats) are not data, rewritten frames are, and bad ones go
//! through the reader's error policy. Servers run in-process on 127.0.0.1.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use intake_core::{Column, DataType, Error, ErrorPolicy, Message, Pipeline, Reader, Schema, Table};
use intake_ws::{Filtered, Frame, Generic, Protocol, Replies, WebSocketSource};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Serves one WebSocket connection on 127.0.0.1:0: waits for the client's subscribe
/// message, sends `frames` as text, then closes normally.
async fn serve(frames: Vec<String>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let subscribe = loop {
            match ws.next().await {
                Some(Ok(tungstenite::Message::Text(text))) => break text,
                Some(Ok(_)) => continue,
                _ => return,
            }
        };
        assert!(subscribe.contains("SUBSCRIBE"), "{subscribe}");
        for frame in frames {
            ws.send(tungstenite::Message::text(frame)).await.unwrap();
        }
        let _ = ws
            .close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "done".into(),
            }))
            .await;
        while let Some(Ok(_)) = ws.next().await {}
    });
    url
}

fn trades_schema() -> Schema {
    Schema::new([
        Column::new("s", DataType::String).primary_key(),
        Column::new("p", DataType::Float),
    ])
    .unwrap()
}

const SUBSCRIBE: &str = r#"{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}"#;
const ACK: &str = r#"{"result":null,"id":1}"#;

/// The filter of the guide: Binance's acknowledgement is skipped, every other frame
/// is data.
fn binance() -> Generic {
    Generic::new()
        .send_on_connect(SUBSCRIBE)
        .filter_map(|frame| match frame.as_str() {
            Some(text) if text.starts_with(r#"{"result""#) => Filtered::Skip,
            _ => Filtered::Keep,
        })
}

fn source(url: String, protocol: Generic) -> WebSocketSource {
    WebSocketSource::new(url)
        .protocol(protocol)
        .reconnect_on_normal_close(false)
}

fn price(table: &Table, symbol: &str) -> Option<f64> {
    table.get(&symbol.into())?.get("p")?.as_float()
}

async fn run(pipeline: Pipeline) -> Result<(), Error> {
    tokio::time::timeout(Duration::from_secs(10), pipeline.run())
        .await
        .expect("the pipeline did not finish")
}

/// Collects what `tracing` writes, to check the debug line of a skipped frame.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line of this test binary, from a global subscriber installed once: a
/// subscriber set for one thread races with the other tests over `tracing`'s
/// per-callsite cache and may miss lines, so tests filter by their own source name.
fn logs() -> &'static Captured {
    static LOGS: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber");
        logs
    })
}

#[tokio::test]
async fn a_subscribe_ack_is_skipped_counted_and_logged_at_debug_and_trades_pass() {
    let logs = logs();
    let url = serve(vec![
        ACK.to_owned(),
        json!({"e": "trade", "s": "BTCUSDT", "p": 65000.1}).to_string(),
        json!({"e": "trade", "s": "ETHUSDT", "p": 3000.5}).to_string(),
    ])
    .await;
    let source = source(url, binance());
    let stats = source.stats();
    let mut pipeline = Pipeline::new();
    // The core default, `ErrorPolicy::Fail`: the acknowledgement, were it data, would
    // fail the pipeline for want of `s` and `p`.
    let table = pipeline.read("binance-ack", source, Reader::json(trades_schema()));
    let rejected = pipeline.rejected(16);
    run(pipeline).await.unwrap();

    assert_eq!(rejected.collect::<Vec<_>>().await.len(), 0);
    assert_eq!(table.len(), 2);
    assert_eq!(price(&table, "BTCUSDT"), Some(65000.1));
    assert_eq!(price(&table, "ETHUSDT"), Some(3000.5));
    assert_eq!(stats.frames(), 3);
    assert_eq!(stats.skipped(), 1);
    assert_eq!(stats.messages(), 2);
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let skipped: Vec<_> = logs
        .lines()
        .filter(|line| line.contains("skipped") && line.contains("binance-ack"))
        .collect();
    assert_eq!(skipped.len(), 1, "{logs}");
    assert!(skipped[0].contains("DEBUG"), "{}", skipped[0]);
    assert!(skipped[0].contains("frame=1"), "{}", skipped[0]);
}

/// Why the filter exists: without it, the acknowledgement is a message like any
/// other, and under the core default policy the feed dies on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_filter_the_ack_fails_the_pipeline_under_the_default_policy() {
    let url = serve(vec![
        ACK.to_owned(),
        json!({"e": "trade", "s": "BTCUSDT", "p": 65000.1}).to_string(),
    ])
    .await;
    let mut pipeline = Pipeline::new();
    let _table = pipeline.read(
        "binance",
        source(url, Generic::new().send_on_connect(SUBSCRIBE)),
        Reader::json(trades_schema()),
    );
    let error = run(pipeline).await.unwrap_err();
    assert!(matches!(error, Error::Rejected(_)), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_rewrites_frames_and_split_arrays_splits_what_it_returns() {
    let url = serve(vec![
        ACK.to_owned(),
        // A combined-stream envelope: the trade is under `data`.
        json!({"stream": "btcusdt@trade", "data": {"s": "BTCUSDT", "p": 65000.1}}).to_string(),
        // An envelope holding several trades: split after the filter.
        json!({"stream": "x@trade", "data": [{"s": "ETHUSDT", "p": 3000.5}, {"s": "SOLUSDT", "p": 150.25}]})
            .to_string(),
        // Rewritten as bytes, which the reader parses.
        "trade ADAUSDT 0.5".to_owned(),
        json!({"event": "heartbeat"}).to_string(),
    ])
    .await;
    let protocol = Generic::new()
        .send_on_connect(SUBSCRIBE)
        .split_arrays(true)
        .filter_map(|frame| {
            if let Some(line) = frame.as_str().and_then(|text| text.strip_prefix("trade ")) {
                let (symbol, price) = line.split_once(' ').unwrap_or((line, ""));
                return Filtered::Bytes(format!(r#"{{"s":"{symbol}","p":{price}}}"#).into());
            }
            match frame.json::<Value>() {
                Ok(reply) if reply.get("result").is_some() => Filtered::Skip,
                Ok(heartbeat) if heartbeat["event"] == "heartbeat" => Filtered::Skip,
                Ok(mut envelope) => Filtered::Json(envelope["data"].take()),
                Err(error) => Filtered::Invalid(error.to_string()),
            }
        });
    let source = source(url, protocol);
    let stats = source.stats();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("binance", source, Reader::json(trades_schema()));
    run(pipeline).await.unwrap();

    assert_eq!(table.len(), 4);
    assert_eq!(price(&table, "BTCUSDT"), Some(65000.1));
    assert_eq!(price(&table, "ETHUSDT"), Some(3000.5));
    assert_eq!(price(&table, "SOLUSDT"), Some(150.25));
    assert_eq!(price(&table, "ADAUSDT"), Some(0.5));
    assert_eq!(stats.skipped(), 2);
}

fn invalid_unless_trade() -> Generic {
    Generic::new()
        .send_on_connect(SUBSCRIBE)
        .filter_map(|frame| match frame.json::<Value>() {
            Ok(reply) if reply.get("result").is_some() => Filtered::Skip,
            Ok(trade) if trade["e"] == "trade" => Filtered::Json(trade),
            Ok(other) => Filtered::Invalid(format!("not a trade: event {}", other["e"])),
            Err(error) => Filtered::Invalid(format!("malformed JSON: {error}")),
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_frame_is_reported_with_the_frame_as_raw_and_its_neighbours_kept() {
    let odd = r#"{"e": "kline", "s": "BTCUSDT"}"#;
    let url = serve(vec![
        ACK.to_owned(),
        json!({"e": "trade", "s": "BTCUSDT", "p": 65000.1}).to_string(),
        odd.to_owned(),
        json!({"e": "trade", "s": "ETHUSDT", "p": 3000.5}).to_string(),
    ])
    .await;
    let source = source(url, invalid_unless_trade());
    let stats = source.stats();
    let mut pipeline = Pipeline::new();
    let reader = Reader::json(trades_schema()).error_policy(ErrorPolicy::SkipAndReport);
    let table = pipeline.read("binance", source, reader);
    let rejected = pipeline.rejected(16);
    run(pipeline).await.unwrap();

    let rejected: Vec<_> = rejected.collect().await;
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].source_name(), "binance");
    assert_eq!(&rejected[0].raw()[..], odd.as_bytes());
    assert!(
        rejected[0]
            .reason()
            .to_string()
            .contains("not a trade: event \"kline\""),
        "{}",
        rejected[0].reason()
    );
    assert_eq!(table.len(), 2);
    assert_eq!(stats.skipped(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_frame_under_the_fail_policy_fails_the_pipeline() {
    let url = serve(vec![
        ACK.to_owned(),
        json!({"e": "trade", "s": "BTCUSDT", "p": 65000.1}).to_string(),
        "{oops".to_owned(),
    ])
    .await;
    let mut pipeline = Pipeline::new();
    let table = pipeline.read(
        "binance",
        source(url, invalid_unless_trade()),
        Reader::json(trades_schema()),
    );
    let error = run(pipeline).await.unwrap_err();
    let Error::Rejected(rejected) = &error else {
        panic!("expected a rejection, got {error}");
    };
    assert_eq!(&rejected.raw()[..], b"{oops");
    assert!(
        rejected.reason().to_string().contains("malformed JSON"),
        "{error}"
    );
    // The trade before the bad frame was committed.
    assert_eq!(price(&table, "BTCUSDT"), Some(65000.1));
}

#[test]
fn a_broken_array_rewritten_by_the_filter_is_reported_with_the_frame_as_it_arrived() {
    let mut protocol = Generic::new()
        .split_arrays(true)
        .filter_map(|frame| match frame.as_str() {
            Some(text) => Filtered::Bytes(text.trim_start_matches("data:").to_owned().into()),
            None => Filtered::Keep,
        });
    let mut replies = Replies::default();
    let messages = protocol
        .on_message(Frame::text("data:[1, 2"), &mut replies)
        .unwrap();
    let [Message::Invalid { raw, reason }] = &messages[..] else {
        panic!("{messages:?}");
    };
    assert_eq!(&raw[..], b"data:[1, 2");
    assert_eq!(
        reason,
        "malformed JSON: EOF while parsing a list at line 1 column 5"
    );

    let messages = protocol
        .on_message(Frame::text("data:[1, 2]"), &mut replies)
        .unwrap();
    assert!(
        matches!(&messages[..], [Message::Json(one), Message::Json(two)] if *one == json!(1) && *two == json!(2)),
        "{messages:?}"
    );
    // Binary frames kept as they are.
    let messages = protocol
        .on_message(Frame::binary(&b"{}"[..]), &mut replies)
        .unwrap();
    assert!(
        matches!(&messages[..], [Message::Bytes(bytes)] if &bytes[..] == b"{}"),
        "{messages:?}"
    );
    assert!(replies.is_empty());
}

#[test]
fn without_a_filter_generic_emits_frames_as_before() {
    let mut protocol = Generic::new();
    let mut replies = Replies::default();
    let messages = protocol.on_message(Frame::text(ACK), &mut replies).unwrap();
    assert!(
        matches!(&messages[..], [Message::Bytes(bytes)] if &bytes[..] == ACK.as_bytes()),
        "{messages:?}"
    );
    assert!(format!("{protocol:?}").contains("filter_map: false"));
}

/// The guide's promise that Polygon's status events are skipped in the protocol (and
/// counted as such), not reported as bad input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polygon_status_frames_count_as_skipped_not_rejected() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let status = |status: &str| {
            tungstenite::Message::text(json!([{"ev": "status", "status": status}]).to_string())
        };
        ws.send(status("connected")).await.unwrap();
        let _auth = ws.next().await;
        ws.send(status("auth_success")).await.unwrap();
        let _subscribe = ws.next().await;
        ws.send(status("success")).await.unwrap();
        let aggregate = json!([{"ev": "A", "sym": "AAPL", "c": 190.5, "v": 100}]);
        ws.send(tungstenite::Message::text(aggregate.to_string()))
            .await
            .unwrap();
        let _ = ws
            .close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "done".into(),
            }))
            .await;
        while let Some(Ok(_)) = ws.next().await {}
    });
    let source = WebSocketSource::new(url)
        .protocol(intake_ws::Polygon::new("KEY", "A.*"))
        .reconnect_on_normal_close(false);
    let stats = source.stats();
    let schema = Schema::new([
        Column::new("sym", DataType::String).primary_key(),
        Column::new("c", DataType::Float),
    ])
    .unwrap();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("polygon", source, Reader::json(schema));
    run(pipeline).await.unwrap();
    assert_eq!(table.len(), 1);
    assert_eq!(stats.frames(), 4);
    assert_eq!(stats.skipped(), 3);
    assert_eq!(table.stats().rejected(), 0);
}
