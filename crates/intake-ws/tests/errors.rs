//! The WebSocket source's errors keep what caused them as their `source()`.

use std::error::Error as _;
use std::time::Duration;

use intake_core::{Error, Message, Pipeline, Reader};
use intake_ws::{Frame, Protocol, ProtocolError, Reconnect, Replies, WebSocketSource, WsError};
use tokio::net::TcpListener;

async fn run_with_timeout(pipeline: Pipeline) -> Error {
    tokio::time::timeout(Duration::from_secs(10), pipeline.run())
        .await
        .expect("the pipeline did not finish")
        .expect_err("the source should fail")
}

fn ws_error(error: &Error) -> &WsError {
    let Error::SourcesFailed(failures) = error else {
        panic!("{error}")
    };
    failures[0].cause().downcast_ref::<WsError>().expect("a WsError")
}

/// A URL on 127.0.0.1 where nothing listens: connecting is refused.
async fn refusing_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

#[tokio::test]
async fn gave_up_keeps_the_last_connection_error_and_its_io_cause() {
    let source = WebSocketSource::new(refusing_url().await).reconnect(
        Reconnect::default()
            .min_delay(Duration::from_millis(1))
            .max_delay(Duration::from_millis(2))
            .max_retries(1),
    );
    let mut pipeline = Pipeline::new();
    let _table = pipeline.read("feed", source, Reader::raw());
    let error = run_with_timeout(pipeline).await;
    let gave_up = ws_error(&error);
    let WsError::GaveUp { attempts, last_error } = gave_up else {
        panic!("{gave_up}")
    };
    assert_eq!(*attempts, 2);
    let message = gave_up.to_string();
    assert!(
        message.starts_with("gave up after 2 failed connection attempts; last error: connecting failed: "),
        "{message}"
    );
    let last = gave_up.source().expect("the last error");
    assert_eq!(last.to_string(), last_error.to_string());
    // Down the chain: the WebSocket library's error, then the refused connection.
    let mut io = None;
    let mut cause = last.source();
    while let Some(error) = cause {
        if let Some(found) = error.downcast_ref::<std::io::Error>() {
            io = Some(found.kind());
        }
        cause = error.source();
    }
    assert_eq!(io, Some(std::io::ErrorKind::ConnectionRefused), "{message}");
}

/// Refuses every connection, as a service refusing an API key would, with the decoding
/// error that made it decide.
struct Refusing;

impl Protocol for Refusing {
    fn on_connect(&mut self, _replies: &mut Replies) -> Result<(), ProtocolError> {
        let cause = serde_json::from_str::<serde_json::Value>(r#"{"status": "#).unwrap_err();
        Err(ProtocolError::fatal("the login reply is not JSON").with_source(cause))
    }

    fn on_message(&mut self, _frame: Frame, _replies: &mut Replies) -> Result<Vec<Message>, ProtocolError> {
        Ok(Vec::new())
    }
}

#[tokio::test]
async fn a_fatal_protocol_error_keeps_its_cause_as_source() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                    // Held open until the client closes it.
                    let _ = futures::StreamExt::collect::<Vec<_>>(ws).await;
                }
            });
        }
    });
    let source = WebSocketSource::new(url).protocol(Refusing);
    let mut pipeline = Pipeline::new();
    let _table = pipeline.read("feed", source, Reader::raw());
    let error = run_with_timeout(pipeline).await;
    let protocol = ws_error(&error);
    let WsError::Protocol(inner) = protocol else {
        panic!("{protocol}")
    };
    assert!(inner.is_fatal());
    assert_eq!(protocol.to_string(), "the login reply is not JSON");
    let cause = protocol.source().expect("the decoding error");
    assert!(cause.is::<serde_json::Error>(), "{cause:?}");
}

#[test]
fn protocol_errors_have_no_source_unless_given_one() {
    let plain = ProtocolError::reconnect("resync");
    assert!(plain.source().is_none());
    assert_eq!(plain.to_string(), "resync");
    assert!(!plain.is_fatal());
}
