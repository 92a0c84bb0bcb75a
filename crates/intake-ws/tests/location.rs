//! A rejected WebSocket message is located by the URL, the connection (counting the
//! source's reconnects) and the frame on that connection.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use intake_core::{Column, DataType, ErrorPolicy, Location, Pipeline, Reader, Schema};
use intake_ws::{Reconnect, WebSocketSource};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Serves WebSocket connections on 127.0.0.1:0, each one sending `frames[index]` (its
/// text frames) and then closing: `Away` for all but the last, `Normal` for the last.
async fn serve(frames: Vec<Vec<&'static str>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        for (index, texts) in frames.iter().enumerate() {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                return;
            };
            for text in texts {
                ws.send(Message::text(*text)).await.unwrap();
            }
            let code = if index + 1 == frames.len() {
                CloseCode::Normal
            } else {
                CloseCode::Away
            };
            let frame = CloseFrame {
                code,
                reason: "bye".into(),
            };
            let _ = ws.close(Some(frame)).await;
            // Until the client has the close frame.
            while ws.next().await.is_some() {}
        }
    });
    url
}

/// Regression: a rejected frame said nothing about where it came from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_frame_is_located_by_connection_and_frame_after_a_reconnect() {
    let url = serve(vec![
        vec![r#"{"sym": "A", "c": 1.0, "v": 1}"#, r#"{"sym": "B", "c": "#],
        vec![
            r#"{"sym": "C", "c": 3.0, "v": 3}"#,
            r#"{"sym": "D", "c": 4.0, "v": 4}"#,
            r#"{"sym": "E", "c": "five", "v": 5}"#,
        ],
    ])
    .await;
    let schema = Schema::new([
        Column::new("sym", DataType::String).primary_key(),
        Column::new("c", DataType::Float),
        Column::new("v", DataType::Int),
    ])
    .unwrap();
    let source = WebSocketSource::new(url.clone())
        .reconnect(
            Reconnect::default()
                .min_delay(Duration::from_millis(5))
                .max_delay(Duration::from_millis(20))
                .max_retries(5),
        )
        .reconnect_on_normal_close(false);
    let mut pipeline = Pipeline::new();
    let table = pipeline.read(
        "feed",
        source,
        Reader::json(schema).error_policy(ErrorPolicy::SkipAndReport),
    );
    let rejected = pipeline.rejected(16);
    tokio::time::timeout(Duration::from_secs(10), pipeline.run())
        .await
        .expect("the pipeline ends")
        .unwrap();
    let rejected: Vec<_> = rejected.collect().await;

    assert_eq!(table.len(), 3);
    let locations: Vec<_> = rejected.iter().map(|r| r.location().cloned()).collect();
    assert_eq!(
        locations,
        [
            Some(Location::websocket(url.as_str(), 1, 2)),
            Some(Location::websocket(url.as_str(), 2, 3)),
        ]
    );
    assert_eq!(
        rejected[1].raw().as_ref(),
        br#"{"sym": "E", "c": "five", "v": 5}"#
    );
    assert_eq!(
        rejected[1].location().map(ToString::to_string),
        Some(format!("{url} connection 2 frame 3"))
    );
}
