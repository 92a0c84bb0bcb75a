//! The WebSocket source's figures: the `connected` flag and reconnects by cause, in
//! its stats handle and through the `metrics` facade.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use intake_core::{Column, DataType, Pipeline, Reader, Schema};
use intake_ws::{Reconnect, WebSocketSource};
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The first connection sends one row and goes silent; the second sends one row,
/// waits for the test's signal and closes normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_and_reconnect_causes_are_reported() {
    let prometheus = PrometheusBuilder::new().install_recorder().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let (close_tx, close_rx) = tokio::sync::oneshot::channel::<()>();
    let close_rx = std::sync::Arc::new(tokio::sync::Mutex::new(Some(close_rx)));
    tokio::spawn(async move {
        for index in 0.. {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let close_rx = close_rx.clone();
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
                let row = format!(r#"{{"sym": "S{index}"}}"#);
                ws.send(Message::text(row)).await.unwrap();
                if index == 0 {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                } else if let Some(close_rx) = close_rx.lock().await.take() {
                    let _ = close_rx.await;
                    let normal = CloseFrame {
                        code: CloseCode::Normal,
                        reason: "done".into(),
                    };
                    ws.close(Some(normal)).await.unwrap();
                    while ws.next().await.is_some() {}
                }
            });
        }
    });
    let source = WebSocketSource::new(url)
        .silence_timeout(Duration::from_millis(200))
        .reconnect(
            Reconnect::default()
                .min_delay(Duration::from_millis(5))
                .max_retries(3),
        )
        .reconnect_on_normal_close(false);
    let stats = source.stats();
    assert!(!stats.connected());
    let schema = Schema::new([Column::new("sym", DataType::String).primary_key()]).unwrap();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read(
        "feed",
        source,
        Reader::json(schema).autocommit_duration(Duration::from_millis(5)),
    );
    let running = tokio::spawn(pipeline.run());

    if table.wait_for(|t| t.len() == 2).await.is_err() {
        panic!("{:?}", running.await);
    }
    assert!(stats.connected(), "connected while the second connection is up");
    let labels = r#"{table="feed",source="feed"}"#;
    let text = prometheus.render();
    assert!(
        text.contains(&format!("intake_source_connected{labels} 1")),
        "{text}"
    );
    assert!(
        text.contains(r#"intake_source_reconnects_total{table="feed",source="feed",cause="silent"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(&format!("intake_ws_frames_total{labels} 2")),
        "{text}"
    );

    close_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!stats.connected(), "not connected once the server closed");
    assert_eq!((stats.connects(), stats.reconnects()), (2, 1));
    assert!(
        prometheus
            .render()
            .contains(&format!("intake_source_connected{labels} 0"))
    );
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["connected"], false);
    assert_eq!(json["reconnects"], 1);
}
