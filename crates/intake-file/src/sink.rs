//! Table sinks that write files: CSV (Pathway's `pw.io.csv.write`) and JSON lines.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use intake_core::{BoxError, ChangeBatch, Sink, Value};
use serde_json::{Map, Value as Json};
use tokio::fs::File;
use tokio::io::AsyncWriteExt;

/// Writes each commit's changes to a CSV file, like Pathway's `pw.io.csv.write`: a
/// header with the table's columns then `time` and `diff`, and one record per change
/// (`diff` is `1` for an insertion, `-1` for a retraction; retractions come first).
///
/// Each batch is written, flushed and `fsync`ed (`sync_data`) before
/// [`write_batch`](Sink::write_batch) returns. Nulls are empty fields, strings are
/// written as they are, timestamps as RFC 3339, other values as JSON.
///
/// # Examples
///
/// ```no_run
/// use intake_core::{Pipeline, Reader};
/// use intake_file::{CsvSink, FileSource};
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let mut pipeline = Pipeline::new();
/// let lines = pipeline.read("log", FileSource::raw("app.log"), Reader::raw());
/// lines.sink("lines.csv", CsvSink::create("lines.csv").await?);
/// pipeline.run().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct CsvSink {
    path: PathBuf,
    file: File,
    header_written: bool,
    buffer: Vec<u8>,
}

impl CsvSink {
    /// Creates (or truncates) the file at `path`.
    ///
    /// # Errors
    ///
    /// When the file cannot be created.
    pub async fn create(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::create(&path).await?;
        Ok(CsvSink {
            path,
            file,
            header_written: false,
            buffer: Vec::new(),
        })
    }

    /// The path written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A value as a CSV field.
fn field(value: &Value) -> String {
    match value.to_json() {
        Json::Null => String::new(),
        Json::String(text) => text,
        other => other.to_string(),
    }
}

#[async_trait]
impl Sink for CsvSink {
    async fn write_batch(&mut self, batch: &ChangeBatch) -> Result<(), BoxError> {
        let mut writer = csv::Writer::from_writer(std::mem::take(&mut self.buffer));
        if !self.header_written {
            let schema = batch.schema();
            let columns = schema.columns().iter().map(|c| c.name());
            writer.write_record(columns.chain(["time", "diff"]))?;
        }
        let time = batch.time().to_string();
        for change in batch.changes() {
            let diff = change.diff().to_string();
            let values = change.row.values().iter().map(field);
            writer.write_record(values.chain([time.clone(), diff]))?;
        }
        let mut buffer = writer.into_inner().map_err(|e| e.into_error())?;
        write_durably(&mut self.file, &buffer).await?;
        self.header_written = true;
        buffer.clear();
        self.buffer = buffer;
        Ok(())
    }

    async fn close(&mut self) -> Result<(), BoxError> {
        Ok(self.file.sync_all().await?)
    }
}

/// Writes each commit's changes to a JSON-lines file: one object per change, with the
/// row's columns (as [`Row::to_json`](intake_core::Row::to_json) gives them) plus
/// `time` and `diff`.
///
/// Each batch is written, flushed and `fsync`ed (`sync_data`) before
/// [`write_batch`](Sink::write_batch) returns.
///
/// # Examples
///
/// ```no_run
/// use intake_core::{Pipeline, Reader};
/// use intake_file::{FileSource, JsonLinesSink};
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let mut pipeline = Pipeline::new();
/// let lines = pipeline.read("log", FileSource::raw("app.log"), Reader::raw());
/// lines.sink("lines.jsonl", JsonLinesSink::create("lines.jsonl").await?);
/// pipeline.run().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct JsonLinesSink {
    path: PathBuf,
    file: File,
    buffer: Vec<u8>,
}

impl JsonLinesSink {
    /// Creates (or truncates) the file at `path`.
    ///
    /// # Errors
    ///
    /// When the file cannot be created.
    pub async fn create(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::create(&path).await?;
        Ok(JsonLinesSink {
            path,
            file,
            buffer: Vec::new(),
        })
    }

    /// The path written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
impl Sink for JsonLinesSink {
    async fn write_batch(&mut self, batch: &ChangeBatch) -> Result<(), BoxError> {
        let mut buffer = std::mem::take(&mut self.buffer);
        let time = batch.time().as_u64();
        for change in batch.changes() {
            let mut object = match change.row.to_json() {
                Json::Object(object) => object,
                _ => Map::new(),
            };
            object.insert("time".to_owned(), time.into());
            object.insert("diff".to_owned(), change.diff().into());
            serde_json::to_writer(&mut buffer, &object)?;
            buffer.push(b'\n');
        }
        write_durably(&mut self.file, &buffer).await?;
        buffer.clear();
        self.buffer = buffer;
        Ok(())
    }

    async fn close(&mut self) -> Result<(), BoxError> {
        Ok(self.file.sync_all().await?)
    }
}

async fn write_durably(file: &mut File, bytes: &[u8]) -> std::io::Result<()> {
    file.write_all(bytes).await?;
    file.flush().await?;
    file.sync_data().await
}
