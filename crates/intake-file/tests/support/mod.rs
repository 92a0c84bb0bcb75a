//! Helpers shared by the file-source tests.

#![allow(dead_code, unreachable_pub)] // each test file uses some of them

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use intake_core::{Error, Reader};
use intake_core::{Pipeline, Rejected, ShutdownHandle, Source, Subscriber, Table};
use tokio::task::JoinHandle;

/// Reads `source` to its end; the table and every rejected message.
pub async fn read_all(source: impl Source, reader: Reader) -> (Table, Vec<Rejected>) {
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("file", source, reader);
    let rejected = tokio::spawn(pipeline.rejected(64).collect::<Vec<_>>());
    pipeline.run().await.unwrap();
    (table, rejected.await.unwrap())
}

/// Reads `source` to its end into an append table; the table and, for each commit,
/// the number of rows committed up to it with the offset it recorded.
pub async fn read_recording_commits(
    source: impl Source,
    reader: Reader,
) -> (Table, Vec<(usize, serde_json::Value)>) {
    let commits = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("file", source, reader);
    let recorded = commits.clone();
    let mut rows = 0;
    table.subscribe(Subscriber::new().on_batch(move |batch| {
        rows += batch.len();
        if let Some((_, offset)) = batch.offsets().iter().next() {
            recorded.lock().unwrap().push((rows, offset.clone()));
        }
    }));
    pipeline.run().await.unwrap();
    let commits = commits.lock().unwrap().clone();
    (table, commits)
}

/// A running pipeline reading one source into `table`.
pub struct Running {
    pub table: Table,
    pub shutdown: ShutdownHandle,
    pub rejected: JoinHandle<Vec<Rejected>>,
    pub running: JoinHandle<Result<(), Error>>,
    /// A test that fails midway still stops the pipeline, rather than hanging the
    /// runtime on a follower that never ends.
    _stop_on_drop: StopOnDrop,
}

struct StopOnDrop(ShutdownHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

impl Running {
    pub fn start(source: impl Source, reader: Reader) -> Running {
        let mut pipeline = Pipeline::new();
        let table = pipeline.read("file", source, reader);
        let rejected = tokio::spawn(pipeline.rejected(64).collect::<Vec<_>>());
        let shutdown = pipeline.shutdown_handle();
        Running {
            table,
            _stop_on_drop: StopOnDrop(shutdown.clone()),
            shutdown,
            rejected,
            running: tokio::spawn(pipeline.run()),
        }
    }

    /// Shuts the pipeline down; every rejected message.
    pub async fn stop(self) -> (Table, Vec<Rejected>) {
        self.shutdown.shutdown();
        self.running.await.unwrap().unwrap();
        (self.table, self.rejected.await.unwrap())
    }
}

/// The `data` column of a raw table, in insertion order.
pub fn lines(table: &Table) -> Vec<String> {
    let mut rows: Vec<_> = table.snapshot().rows().to_vec();
    rows.sort_by_key(|(key, _)| key.generated_id());
    rows.iter()
        .map(|(_, row)| row.get("data").and_then(|v| v.as_str()).unwrap().to_owned())
        .collect()
}

/// Each rejection as `reason: raw`.
pub fn reasons(rejected: &[Rejected]) -> Vec<String> {
    rejected
        .iter()
        .map(|r| format!("{}: {}", r.reason(), String::from_utf8_lossy(r.raw())))
        .collect()
}

/// The one offset committed for the table's source.
pub fn committed_offset(table: &Table) -> serde_json::Value {
    let offsets = table.committed_offsets();
    assert_eq!(offsets.len(), 1, "{offsets:?}");
    offsets[0].1.clone()
}

pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn append(path: &Path, text: impl AsRef<[u8]>) {
    let mut file = OpenOptions::new().append(true).create(true).open(path).unwrap();
    file.write_all(text.as_ref()).unwrap();
}

/// What `tracing` writes in this test binary, from a global subscriber installed once
/// (one set per thread races with the other tests over `tracing`'s per-callsite cache):
/// tests look for lines naming their own files.
#[derive(Clone, Default)]
pub struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn logs() -> &'static Logs {
    static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber");
        logs
    })
}
