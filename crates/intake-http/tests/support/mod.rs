//! What the HTTP source tests share: an in-process axum server that records every
//! request, the responses the scripts build, the tables' schemas, and the helpers that
//! run a pipeline and read its table.

// Each test binary (`poll`, `poll_hostile`, `sse`, `sse_hostile`) compiles this module
// on its own and uses a different subset of it; what one binary leaves unused is not
// dead for the others.
#![allow(dead_code)]

use std::convert::Infallible;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use intake_core::{Column, DataType, Error, Pipeline, Schema, ShutdownHandle, Table};
use intake_http::SseError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------------
// The server

/// A request the server received.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    /// The path and query, as the request line gave them (`/items?page=2`).
    pub(crate) uri: String,
    pub(crate) headers: HeaderMap,
    pub(crate) at: Instant,
}

impl Seen {
    /// The path without the query.
    pub(crate) fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or_default()
    }

    /// A header's value, which the tests expect to be visible ASCII.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// The `Last-Event-ID` sent, read as UTF-8: browsers send an ID that is not ASCII
    /// as its UTF-8 bytes, which `header` would refuse.
    pub(crate) fn last_event_id(&self) -> Option<String> {
        self.headers
            .get("last-event-id")
            .map(|v| String::from_utf8(v.as_bytes().to_vec()).unwrap())
    }
}

/// The requests a server received, in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Log(Arc<Mutex<Vec<Seen>>>);

impl Log {
    /// A copy of the requests received so far.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }
}

impl Deref for Log {
    type Target = Mutex<Vec<Seen>>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

type Handler = Arc<dyn Fn(usize, &Seen) -> Response + Send + Sync>;

/// Serves `script` (given the request's index and the request) on 127.0.0.1:0;
/// returns the base URL (`http://127.0.0.1:PORT`) and the log of requests.
pub(crate) async fn serve(
    script: impl Fn(usize, &Seen) -> Response + Send + Sync + 'static,
) -> (String, Log) {
    #[derive(Clone)]
    struct Server {
        script: Handler,
        log: Log,
    }
    async fn handle(State(server): State<Server>, request: Request) -> Response {
        let seen = Seen {
            uri: request.uri().to_string(),
            headers: request.headers().clone(),
            at: Instant::now(),
        };
        let index = {
            let mut log = server.log.lock().unwrap();
            log.push(seen.clone());
            log.len() - 1
        };
        (server.script)(index, &seen)
    }
    let server = Server {
        script: Arc::new(script),
        log: Log::default(),
    };
    let log = server.log.clone();
    let app = axum::Router::new().fallback(handle).with_state(server);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, log)
}

// ---------------------------------------------------------------------------------
// The raw server

/// What a raw server writes to a connection: these bytes, then it closes the
/// connection, or keeps it open without a byte more if `hold`.
pub(crate) struct Raw {
    pub(crate) bytes: Vec<u8>,
    pub(crate) hold: bool,
}

impl Raw {
    pub(crate) fn close(bytes: impl Into<Vec<u8>>) -> Raw {
        Raw {
            bytes: bytes.into(),
            hold: false,
        }
    }
}

/// The heads of the requests a raw server read (the request line and the header
/// lines, as sent), in order.
pub(crate) type RawLog = Arc<Mutex<Vec<String>>>;

/// A server on 127.0.0.1:0 that writes HTTP by hand, for what axum will not send:
/// bodies shorter than their `Content-Length`, chunked bodies that stop, bodies ended
/// by closing the connection. `script` gets the request's index and its head. Returns
/// the base URL, the heads read, and the number of connections open now: a closed
/// connection counts until the client lets go of it too, so a test can see that the
/// client keeps none.
pub(crate) async fn raw_serve(
    script: impl Fn(usize, &str) -> Raw + Send + Sync + 'static,
) -> (String, RawLog, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let log: RawLog = Arc::default();
    let open = Arc::new(AtomicUsize::new(0));
    let (seen, counted) = (log.clone(), open.clone());
    let script = Arc::new(script);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let seen = seen.clone();
            let script = script.clone();
            let open = counted.clone();
            open.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                if head.ends_with(b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let index = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(head.clone());
                        seen.len() - 1
                    };
                    let raw = script(index, &head);
                    if socket.write_all(&raw.bytes).await.is_ok() {
                        if raw.hold {
                            std::future::pending::<()>().await;
                        }
                        let _ = socket.shutdown().await;
                        // Until the client lets go of the connection.
                        while matches!(socket.read(&mut buffer).await, Ok(n) if n > 0) {}
                    }
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (base, log, open)
}

// ---------------------------------------------------------------------------------
// Responses

pub(crate) fn respond(status: u16, headers: &[(&str, &str)], body: impl Into<Body>) -> Response {
    let mut response = Response::builder().status(status);
    for (name, value) in headers {
        response = response.header(*name, *value);
    }
    response.body(body.into()).unwrap()
}

/// A JSON body with status 200.
pub(crate) fn ok(body: serde_json::Value) -> Response {
    respond(200, &[("content-type", "application/json")], body.to_string())
}

/// An event stream of these chunks (each written as its own chunk), which then ends,
/// or stays open without a byte more if `hold`.
pub(crate) fn stream(chunks: Vec<Vec<u8>>, hold: bool) -> Response {
    let body = futures::stream::iter(chunks.into_iter().map(|c| Ok::<_, Infallible>(Bytes::from(c))));
    let body = match hold {
        true => Body::from_stream(body.chain(futures::stream::pending())),
        false => Body::from_stream(body),
    };
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

/// An event stream that sends `text` and ends.
pub(crate) fn events(text: &str) -> Response {
    stream(vec![text.as_bytes().to_vec()], false)
}

pub(crate) fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// The event with ID `id` whose data is the record `{"id": id, "v": "e{id}"}`.
pub(crate) fn event(id: i64) -> String {
    format!("id: {id}\ndata: {{\"id\": {id}, \"v\": \"e{id}\"}}\n\n")
}

// ---------------------------------------------------------------------------------
// Tables and pipelines

/// `id`, the primary key, and the string column `value`.
pub(crate) fn keyed(value: &str) -> Schema {
    Schema::new([
        Column::new("id", DataType::Int).primary_key(),
        Column::new(value, DataType::String),
    ])
    .unwrap()
}

/// `id` and the string column `value`, with no primary key: every record applied is a
/// row, so one applied twice shows.
pub(crate) fn appended(value: &str) -> Schema {
    Schema::new([
        Column::new("id", DataType::Int),
        Column::new(value, DataType::String),
    ])
    .unwrap()
}

/// Runs the pipeline to its end, failing the test if that takes more than 20 s.
pub(crate) async fn run(pipeline: Pipeline) -> Result<(), Error> {
    tokio::time::timeout(Duration::from_secs(20), pipeline.run())
        .await
        .expect("the pipeline did not finish")
}

/// Runs the pipeline `make` builds until it is not refused for a storage lock: the
/// lock of a pipeline whose `run` future was dropped is let go by its tasks a moment
/// later. Returns its table.
pub(crate) async fn run_once_unlocked(make: impl Fn() -> (Pipeline, Table)) -> Table {
    for _ in 0..500 {
        let (pipeline, table) = make();
        match run(pipeline).await {
            Ok(()) => return table,
            Err(Error::Persistence {
                source: intake_core::PersistenceError::Locked { .. },
                ..
            }) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(error) => panic!("{error}"),
        }
    }
    panic!("the storage stayed locked");
}

/// Waits until the table has `rows` rows, failing the test after 5 s.
pub(crate) async fn wait_for_rows(table: &Table, rows: usize) {
    tokio::time::timeout(Duration::from_secs(5), table.wait_for(|t| t.len() == rows))
        .await
        .unwrap()
        .unwrap();
}

/// Shuts the running pipeline down and checks that it stops cleanly within a second.
pub(crate) async fn stop_within_a_second(shutdown: &ShutdownHandle, running: JoinHandle<Result<(), Error>>) {
    let started = Instant::now();
    shutdown.shutdown();
    tokio::time::timeout(Duration::from_secs(2), running)
        .await
        .expect("the pipeline did not stop")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// The ids of the rows, sorted, duplicates kept.
pub(crate) fn ids(table: &Table) -> Vec<i64> {
    let mut ids: Vec<i64> = table
        .snapshot()
        .rows()
        .iter()
        .map(|(_, row)| row.get("id").and_then(|v| v.as_int()).unwrap())
        .collect();
    ids.sort_unstable();
    ids
}

/// The `SseError` that failed the pipeline's first source.
pub(crate) fn source_error(error: &Error) -> &SseError {
    match error {
        Error::SourcesFailed(failures) => failures[0].cause().downcast_ref::<SseError>().unwrap(),
        other => panic!("not a source failure: {other}"),
    }
}
