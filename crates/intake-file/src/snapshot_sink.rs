//! A sink whose file holds a table's current rows, rewritten atomically after every
//! commit (Pathway's snapshot output, beside the change log of [`CsvSink`](crate::CsvSink)).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use intake_core::{BoxError, ChangeBatch, Key, Row, Schema, Sink, Time};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::sink::{field, naming, sync_parent};

/// Keeps a file holding a table's rows as of its last commit: one JSON object or CSV
/// record per row, sorted by key, with no `time` or `diff` columns. Where
/// [`CsvSink`](crate::CsvSink) and [`JsonLinesSink`](crate::JsonLinesSink) are a
/// change log, this is the table itself, like Pathway's snapshot output; a reader
/// (a dashboard, `jq`, another service) sees the latest state without folding changes.
///
/// - [`json_lines`](Self::json_lines): one object per row, its keys in the schema's
///   column order, values as [`Value::to_json`](intake_core::Value::to_json) gives them.
/// - [`csv`](Self::csv): a header with the table's columns, then one record per row,
///   fields as `CsvSink` writes them (nulls empty, strings as they are, timestamps as
///   RFC 3339, other values as JSON).
///
/// # Atomic rewrites
///
/// After each commit the whole file is written to `<path>.tmp` in the same directory
/// ([`temporary_path`](Self::temporary_path)), synced, renamed over `<path>`, and the
/// directory is synced before [`write_batch`](Sink::write_batch) returns. A reader
/// opening `<path>` always finds a whole file, that of one commit, and so does
/// anyone after a crash or power loss (at worst the file of the commit before). A
/// `<path>.tmp` left by a crash is overwritten by the next write. Readers should
/// open the file anew for each read: a file handle kept open goes on showing the old
/// file after a rename.
///
/// # Resume
///
/// The file holds the table's state, not its history, so the sink needs no commits
/// file: [`resume`](Sink::resume) returns `None` and the sink receives the table's
/// rows as one [snapshot](ChangeBatch::is_snapshot) batch (if it has any), which
/// replaces the whole file. If the table has no commit yet (`resume(None)`, as for a
/// table without persistence), the file is rewritten at once as the empty table (for
/// CSV an empty file: the columns are not known before the first batch), so a
/// previous run's rows never linger. A table restored from storage with no rows sends
/// no snapshot: the previous file then stays until the next commit or
/// [`close`](Sink::close), which writes the table's state if the file does not show it.
///
/// # Costs
///
/// The sink holds one copy of the table's rows (shared with the batches, so the
/// values of strings, bytes and JSON are not copied), and each commit rewrites the
/// whole file: time and disk writes grow with the table, not with the commit.
/// [`min_interval`](Self::min_interval) bounds how often a large table is rewritten;
/// for a table of millions of rows that changes often, prefer the change log
/// ([`JsonLinesSink`](crate::JsonLinesSink)), or a subscriber that serves the rows.
///
/// # Cancel safety
///
/// If a `write_batch` or `close` future is dropped, the fold and the rewrite it
/// started still finish in the background, and the next call waits for them: the file
/// is always whole. Folding a batch twice gives the same rows, so sending the
/// dropped batch again is harmless.
///
/// # Examples
///
/// ```no_run
/// use intake_core::{Pipeline, Reader};
/// use intake_file::{FileSource, TableFileSink};
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let mut pipeline = Pipeline::new();
/// let lines = pipeline.read("log", FileSource::raw("app.log"), Reader::raw());
/// lines.sink("latest", TableFileSink::json_lines("latest.jsonl"));
/// pipeline.run().await?;
/// # Ok(())
/// # }
/// ```
pub struct TableFileSink {
    job: Job,
    /// Whether the file may not show the rows folded so far: set before each write,
    /// cleared once one succeeds.
    stale: bool,
    min_interval: Duration,
    /// When the file was last rewritten, or when the scheduled rewrite will be.
    last_write: Option<Instant>,
    /// The scheduled rewrite, with [`min_interval`](TableFileSink::min_interval).
    flush: Option<JoinHandle<()>>,
}

/// What a rewrite needs, cheap to move into a blocking task.
#[derive(Clone)]
struct Job {
    path: Arc<Path>,
    temporary_path: Arc<Path>,
    format: Format,
    /// Locked by every fold and rewrite, so that one cancelled halfway through
    /// finishes before the next starts.
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    JsonLines,
    Csv,
}

#[derive(Default)]
struct State {
    /// The schema of the last batch: a CSV header for a table with no rows.
    schema: Option<Schema>,
    rows: BTreeMap<Key, Row>,
    /// Whether a rewrite is scheduled that will show every row folded so far. Read and
    /// set under the lock with the fold, so that no fold lands just after a scheduled
    /// rewrite and stays unwritten.
    flush_scheduled: bool,
    /// The error of a scheduled rewrite, reported by the next call.
    flush_error: Option<io::Error>,
}

impl TableFileSink {
    /// A sink keeping the table at `path` as JSON lines: one object per row, sorted by
    /// key, its keys in the schema's column order. Nothing is written before the
    /// pipeline resumes the sink.
    ///
    /// The file's directory must exist; errors (it is missing, not writable) fail the
    /// pipeline at the first write, naming the path.
    pub fn json_lines(path: impl AsRef<Path>) -> Self {
        TableFileSink::new(path.as_ref(), Format::JsonLines)
    }

    /// A sink keeping the table at `path` as CSV: a header with the table's columns,
    /// then one record per row, sorted by key. Nothing is written before the pipeline
    /// resumes the sink.
    ///
    /// The file's directory must exist; errors (it is missing, not writable) fail the
    /// pipeline at the first write, naming the path.
    pub fn csv(path: impl AsRef<Path>) -> Self {
        TableFileSink::new(path.as_ref(), Format::Csv)
    }

    fn new(path: &Path, format: Format) -> Self {
        let mut temporary = OsString::from(path.as_os_str());
        temporary.push(".tmp");
        TableFileSink {
            job: Job {
                path: path.into(),
                temporary_path: PathBuf::from(temporary).into(),
                format,
                state: Arc::default(),
            },
            stale: true,
            min_interval: Duration::ZERO,
            last_write: None,
            flush: None,
        }
    }

    /// Rewrites the file at most once per `interval` (the default, zero, rewrites it
    /// after every commit). A commit within `interval` of the last rewrite is folded
    /// into the rows and written by a rewrite scheduled for when the interval is over,
    /// together with any commit until then; [`close`](Sink::close) writes the final
    /// state at once. For a large table that commits often: the file then lags the
    /// table by at most `interval` (plus one rewrite's time), and a crash loses
    /// nothing the table keeps, as the file is only a view of it.
    ///
    /// An error of a scheduled rewrite is returned by the next
    /// [`write_batch`](Sink::write_batch) or `close`, failing the pipeline.
    ///
    /// # Panics
    ///
    /// A scheduled rewrite is a Tokio task: `write_batch` panics outside a Tokio
    /// runtime (a pipeline always runs its sinks in one).
    #[must_use]
    pub fn min_interval(mut self, interval: Duration) -> Self {
        self.min_interval = interval;
        self
    }

    /// The path written.
    pub fn path(&self) -> &Path {
        &self.job.path
    }

    /// Where each rewrite is written before it is renamed over [`path`](Self::path):
    /// `<path>.tmp`, in the same directory so that the rename is atomic.
    pub fn temporary_path(&self) -> &Path {
        &self.job.temporary_path
    }

    /// Folds `batch` (if any) into the rows and rewrites the file.
    async fn rewrite(&mut self, batch: Option<ChangeBatch>) -> io::Result<()> {
        self.stale = true;
        let job = self.job.clone();
        tokio::task::spawn_blocking(move || job.run(batch.as_ref()))
            .await
            .map_err(io::Error::other)??;
        self.stale = false;
        self.last_write = Some(Instant::now());
        Ok(())
    }

    /// With a `min_interval`: folds `batch`, and rewrites the file now if the interval
    /// since the last rewrite is over, else makes sure a rewrite is scheduled for when
    /// it is.
    async fn write_at_most_every_interval(&mut self, batch: ChangeBatch) -> io::Result<()> {
        let now = Instant::now();
        let due = self.last_write.is_none_or(|last| now >= last + self.min_interval);
        if due && self.flush.as_ref().is_none_or(JoinHandle::is_finished) {
            return self.rewrite(Some(batch)).await;
        }
        self.stale = true;
        let job = self.job.clone();
        let schedule = tokio::task::spawn_blocking(move || job.fold(&batch))
            .await
            .map_err(io::Error::other)??;
        if schedule {
            let at = self
                .last_write
                .map_or(now, |last| last + self.min_interval)
                .max(now);
            self.last_write = Some(at);
            let job = self.job.clone();
            self.flush = Some(tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                // Cancelled by `close` or drop while asleep; once writing, it finishes.
                let _ = tokio::task::spawn_blocking(move || job.flush()).await;
            }));
        }
        Ok(())
    }

    /// Cancels a scheduled rewrite that has not started (one writing finishes before
    /// the next write takes the lock); the error of one that failed.
    fn take_flush_error(&mut self) -> io::Result<()> {
        if let Some(flush) = self.flush.take() {
            flush.abort();
        }
        match self.job.lock()?.flush_error.take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for TableFileSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableFileSink")
            .field("path", &self.job.path)
            .field("format", &self.job.format)
            .field("stale", &self.stale)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Sink for TableFileSink {
    async fn write_batch(&mut self, batch: &ChangeBatch) -> Result<(), BoxError> {
        if self.min_interval.is_zero() {
            return Ok(self.rewrite(Some(batch.clone())).await?);
        }
        if let Some(error) = self.job.lock()?.flush_error.take() {
            return Err(error.into());
        }
        Ok(self.write_at_most_every_interval(batch.clone()).await?)
    }

    /// Returns `None`: the file holds the table's state, so the sink takes the
    /// table's rows as a snapshot batch. A table with no commit yet is empty, and the
    /// file is rewritten as such at once.
    async fn resume(&mut self, table_time: Option<Time>) -> Result<Option<Time>, BoxError> {
        if table_time.is_none() {
            self.rewrite(None).await?;
        }
        Ok(None)
    }

    /// Writes the table's state if the file does not show it yet (no batch came since
    /// the sink was resumed, the last write failed, or a rewrite is scheduled with
    /// [`min_interval`](TableFileSink::min_interval)).
    async fn close(&mut self) -> Result<(), BoxError> {
        self.take_flush_error()?;
        if self.stale {
            self.rewrite(None).await?;
        }
        Ok(())
    }
}

impl Drop for TableFileSink {
    fn drop(&mut self) {
        // A sink dropped without `close` (its pipeline gave up on it) stops rewriting.
        if let Some(flush) = self.flush.take() {
            flush.abort();
        }
    }
}

impl Job {
    fn lock(&self) -> io::Result<MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| {
            io::Error::other(format!(
                "an earlier write of {} panicked: the rows it held are unknown",
                self.path.display()
            ))
        })
    }

    fn run(&self, batch: Option<&ChangeBatch>) -> io::Result<()> {
        let mut state = self.lock()?;
        if let Some(batch) = batch {
            state.fold(batch);
        }
        // Whatever was scheduled is written now.
        state.flush_scheduled = false;
        self.replace(&state)
    }

    /// Folds `batch` without writing; whether the caller must schedule a rewrite.
    fn fold(&self, batch: &ChangeBatch) -> io::Result<bool> {
        let mut state = self.lock()?;
        state.fold(batch);
        let schedule = !state.flush_scheduled;
        state.flush_scheduled = true;
        Ok(schedule)
    }

    /// The scheduled rewrite: keeps its error for the sink's next call.
    fn flush(&self) {
        let Ok(mut state) = self.lock() else {
            return;
        };
        if !state.flush_scheduled {
            return;
        }
        state.flush_scheduled = false;
        if let Err(error) = self.replace(&state) {
            state.flush_error = Some(error);
        }
    }

    /// Writes `state` to the temporary file, syncs it, renames it over the file and
    /// syncs the directory, so the file is at every instant one whole version.
    fn replace(&self, state: &State) -> io::Result<()> {
        let temporary = &*self.temporary_path;
        let written = File::create(temporary).and_then(|file| {
            let file = match self.format {
                Format::JsonLines => write_json_lines(file, state)?,
                Format::Csv => write_csv(file, state)?,
            };
            file.sync_all()
        });
        if let Err(error) = written {
            // A half-written temporary file is of no use to anyone; the error says why.
            let _ = fs::remove_file(temporary);
            return Err(naming(temporary, error));
        }
        fs::rename(temporary, &self.path).map_err(|e| naming(&self.path, e))?;
        // The rename is durable only once the directory is.
        sync_parent(&self.path)
    }
}

impl State {
    /// Applies one batch: a retraction removes its key, an insertion sets it (an
    /// update is both, retraction first); a snapshot batch is the whole table.
    fn fold(&mut self, batch: &ChangeBatch) {
        if batch.is_snapshot() {
            self.rows.clear();
        }
        for change in batch.changes() {
            if change.is_addition {
                self.rows.insert(change.key.clone(), change.row.clone());
            } else {
                self.rows.remove(&change.key);
            }
        }
        self.schema = Some(batch.schema().clone());
    }
}

/// One object per row, written by hand so that its keys keep the schema's column
/// order (a `serde_json::Map` sorts them).
fn write_json_lines(file: File, state: &State) -> io::Result<File> {
    let mut out = BufWriter::new(file);
    for row in state.rows.values() {
        out.write_all(b"{")?;
        for (i, (column, value)) in row.schema().columns().iter().zip(row.values()).enumerate() {
            if i > 0 {
                out.write_all(b",")?;
            }
            serde_json::to_writer(&mut out, column.name())?;
            out.write_all(b":")?;
            serde_json::to_writer(&mut out, &value.to_json())?;
        }
        out.write_all(b"}\n")?;
    }
    out.into_inner().map_err(io::IntoInnerError::into_error)
}

/// A header with the table's columns, then one record per row.
fn write_csv(file: File, state: &State) -> io::Result<File> {
    let mut out = csv::Writer::from_writer(file);
    if let Some(schema) = &state.schema {
        out.write_record(schema.columns().iter().map(|c| c.name()))?;
    }
    for row in state.rows.values() {
        out.write_record(row.values().iter().map(field))?;
    }
    out.into_inner().map_err(|e| e.into_error())
}
