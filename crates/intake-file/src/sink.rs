//! Table sinks that write files: CSV (Pathway's `pw.io.csv.write`) and JSON lines.
//!
//! Both keep a commits file next to their output (`<path>.commits`) so that after a
//! crash they know which commits the output holds completely, and can be cut back to
//! whole commits by [`Sink::resume`].

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use intake_core::{BoxError, ChangeBatch, Sink, Time, Value};
use serde_json::{Map, Value as Json};

/// Writes each commit's changes to a CSV file, like Pathway's `pw.io.csv.write`: a
/// header with the table's columns then `time` and `diff`, and one record per change
/// (`diff` is `1` for an insertion, `-1` for a retraction; retractions come first).
/// Nulls are empty fields, strings are written as they are, timestamps as RFC 3339,
/// other values as JSON. A [snapshot](ChangeBatch::is_snapshot) batch is written like
/// any commit: every row as an insertion at the snapshot's time.
///
/// # Exactly once across crashes
///
/// Each batch is written and `fsync`ed (`sync_data`) before
/// [`write_batch`](Sink::write_batch) returns; then the commit's time and the file's
/// new length are appended to the commits file, [`commits_path`](Self::commits_path)
/// (`<path>.commits`). A sink made with [`open`](Self::open) continues the file of an
/// earlier run: [`resume`](Sink::resume) cuts it back to the whole commits up to the
/// table's time (dropping a commit half-written when the process died) and tells the
/// pipeline the last one it holds, so the file ends up with every commit exactly once.
/// The header is written once, at the start of the file.
///
/// # Cancel safety
///
/// If a `write_batch` or `resume` future is dropped, the file operation it started
/// still finishes in the background; the next call cuts the files back to whole
/// commits again before writing, and fails rather than write out of place if the
/// cancelled write landed after that.
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
/// lines.sink("lines.csv", CsvSink::open("lines.csv").await?);
/// pipeline.run().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct CsvSink {
    output: CommittedFile,
    /// Whether the header at the start of a continued file has been compared with the
    /// table's columns.
    header_checked: bool,
    buffer: Vec<u8>,
}

impl CsvSink {
    /// Creates the file at `path`, or truncates it (and its commits file) to start
    /// over. The sink holds no commit: it receives the table's rows as a snapshot
    /// batch if the table has any, then every commit.
    ///
    /// # Errors
    ///
    /// When the file or its commits file cannot be created or truncated.
    pub async fn create(path: impl AsRef<Path>) -> io::Result<Self> {
        Ok(CsvSink::new(CommittedFile::create(path.as_ref()).await?))
    }

    /// Opens the file at `path` to continue it, or creates it if it does not exist.
    /// Nothing is changed until [`resume`](Sink::resume) (or the first batch) cuts the
    /// file back to its whole commits up to the table's time.
    ///
    /// Use it with a pipeline that persists its tables (see `docs/persistence.md`): a
    /// table without persistence starts again with no commit, and resuming to it
    /// empties the file.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened or created, and when it is not empty but has no
    /// commits file (`<path>.commits`): it was not written by a `CsvSink` that records
    /// its commits, so which of its rows form whole commits is unknown. Move it away,
    /// or start over with [`create`](Self::create).
    pub async fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        Ok(CsvSink::new(CommittedFile::open(path.as_ref()).await?))
    }

    fn new(output: CommittedFile) -> Self {
        CsvSink {
            output,
            header_checked: false,
            buffer: Vec::new(),
        }
    }

    /// The path written.
    pub fn path(&self) -> &Path {
        &self.output.files.path
    }

    /// The commits file: `<path>.commits`, the time and end of every whole commit in
    /// the output (see `docs/files.md`).
    pub fn commits_path(&self) -> &Path {
        &self.output.files.commits_path
    }
}

/// The CSV header for `batch`'s table: its columns, `time` and `diff`.
fn header(batch: &ChangeBatch) -> Result<Vec<u8>, BoxError> {
    let schema = batch.schema();
    let columns = schema.columns().iter().map(|c| c.name());
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(columns.chain(["time", "diff"]))?;
    Ok(writer.into_inner().map_err(|e| e.into_error())?)
}

/// A value as a CSV field.
pub(crate) fn field(value: &Value) -> String {
    match value.to_json() {
        Json::Null => String::new(),
        Json::String(text) => text,
        other => other.to_string(),
    }
}

#[async_trait]
impl Sink for CsvSink {
    async fn write_batch(&mut self, batch: &ChangeBatch) -> Result<(), BoxError> {
        self.output.settle().await?;
        // The header opens the file, and a continued file must open with this table's.
        let needs_header = self.output.end == 0;
        let mut buffer = std::mem::take(&mut self.buffer);
        if needs_header || !self.header_checked {
            let header = header(batch)?;
            if needs_header {
                buffer.extend_from_slice(&header);
            } else {
                self.output.check_starts_with(&header).await?;
            }
            self.header_checked = true;
        }
        let mut writer = csv::Writer::from_writer(buffer);
        let time = batch.time().to_string();
        for change in batch.changes() {
            let diff = change.diff().to_string();
            let values = change.row.values().iter().map(field);
            writer.write_record(values.chain([time.clone(), diff]))?;
        }
        let buffer = writer.into_inner().map_err(|e| e.into_error())?;
        let mut buffer = self.output.append(batch.time(), buffer).await?;
        buffer.clear();
        self.buffer = buffer;
        Ok(())
    }

    async fn resume(&mut self, table_time: Option<Time>) -> Result<Option<Time>, BoxError> {
        self.header_checked = false;
        Ok(self.output.resume(table_time).await?)
    }

    async fn close(&mut self) -> Result<(), BoxError> {
        Ok(self.output.sync().await?)
    }
}

/// Writes each commit's changes to a JSON-lines file: one object per change, with the
/// row's columns (as [`Row::to_json`](intake_core::Row::to_json) gives them) plus
/// `time` and `diff`. A [snapshot](ChangeBatch::is_snapshot) batch is written like any
/// commit: every row as an insertion at the snapshot's time.
///
/// # Exactly once across crashes
///
/// As for [`CsvSink`]: each batch is written and `fsync`ed before
/// [`write_batch`](Sink::write_batch) returns, then recorded in the commits file
/// (`<path>.commits`); a sink made with [`open`](Self::open) continues an earlier
/// run's file, cut back to whole commits by [`resume`](Sink::resume).
///
/// # Cancel safety
///
/// As for [`CsvSink`].
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
/// lines.sink("lines.jsonl", JsonLinesSink::open("lines.jsonl").await?);
/// pipeline.run().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct JsonLinesSink {
    output: CommittedFile,
    buffer: Vec<u8>,
}

impl JsonLinesSink {
    /// Creates the file at `path`, or truncates it (and its commits file) to start
    /// over. The sink holds no commit: it receives the table's rows as a snapshot
    /// batch if the table has any, then every commit.
    ///
    /// # Errors
    ///
    /// When the file or its commits file cannot be created or truncated.
    pub async fn create(path: impl AsRef<Path>) -> io::Result<Self> {
        Ok(JsonLinesSink {
            output: CommittedFile::create(path.as_ref()).await?,
            buffer: Vec::new(),
        })
    }

    /// Opens the file at `path` to continue it, or creates it if it does not exist.
    /// Nothing is changed until [`resume`](Sink::resume) (or the first batch) cuts the
    /// file back to its whole commits up to the table's time.
    ///
    /// Use it with a pipeline that persists its tables (see `docs/persistence.md`): a
    /// table without persistence starts again with no commit, and resuming to it
    /// empties the file.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened or created, and when it is not empty but has no
    /// commits file (`<path>.commits`): it was not written by a `JsonLinesSink` that
    /// records its commits, so which of its lines form whole commits is unknown. Move
    /// it away, or start over with [`create`](Self::create).
    pub async fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        Ok(JsonLinesSink {
            output: CommittedFile::open(path.as_ref()).await?,
            buffer: Vec::new(),
        })
    }

    /// The path written.
    pub fn path(&self) -> &Path {
        &self.output.files.path
    }

    /// The commits file: `<path>.commits`, the time and end of every whole commit in
    /// the output (see `docs/files.md`).
    pub fn commits_path(&self) -> &Path {
        &self.output.files.commits_path
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
        let mut buffer = self.output.append(batch.time(), buffer).await?;
        buffer.clear();
        self.buffer = buffer;
        Ok(())
    }

    async fn resume(&mut self, table_time: Option<Time>) -> Result<Option<Time>, BoxError> {
        Ok(self.output.resume(table_time).await?)
    }

    async fn close(&mut self) -> Result<(), BoxError> {
        Ok(self.output.sync().await?)
    }
}

/// The length of one entry of a commits file: time, end, checksum.
const ENTRY_LEN: usize = 24;

/// An output file whose whole commits are recorded in a commits file.
///
/// A commit's bytes are appended to the output and synced before its entry (time, end
/// of the output after it, checksum) is appended to the commits file, so every entry
/// that reads back whole names bytes that are on disk. The commits file is not synced
/// per commit: an entry lost in an OS crash only makes [`resume`](Self::resume) cut
/// further back, and the pipeline sends that commit again.
#[derive(Debug)]
struct CommittedFile {
    files: Files,
    /// The output's length as of the last whole commit; valid unless `needs_scan`.
    end: u64,
    /// The time of the last whole commit; valid unless `needs_scan`.
    last: Option<Time>,
    /// Set while an operation is in flight (and so after one failed or was cancelled):
    /// the files must be read back before the next write.
    needs_scan: bool,
}

/// What the blocking file operations need, cheap to move into them.
#[derive(Debug, Clone)]
struct Files {
    path: Arc<Path>,
    commits_path: Arc<Path>,
    /// Opened to append.
    output: Arc<File>,
    /// Opened to append.
    commits: Arc<File>,
    /// Held by every operation on the files, so that one cancelled halfway through
    /// finishes before the next starts.
    lock: Arc<Mutex<()>>,
}

/// The whole commits a scan keeps.
#[derive(Debug, Clone, Copy)]
struct Kept {
    entries: u64,
    end: u64,
    time: Option<u64>,
}

impl CommittedFile {
    async fn create(path: &Path) -> io::Result<Self> {
        let path: Arc<Path> = path.into();
        let files = blocking(move || Files::create(path)).await?;
        Ok(CommittedFile {
            files,
            end: 0,
            last: None,
            needs_scan: false,
        })
    }

    async fn open(path: &Path) -> io::Result<Self> {
        let path: Arc<Path> = path.into();
        let files = blocking(move || Files::open(path)).await?;
        Ok(CommittedFile {
            files,
            end: 0,
            last: None,
            needs_scan: true,
        })
    }

    /// Cuts the files back to the whole commits with time <= `table_time` (none if
    /// `None`); the time of the last one.
    async fn resume(&mut self, table_time: Option<Time>) -> io::Result<Option<Time>> {
        self.needs_scan = true;
        let files = self.files.clone();
        let limit = table_time.map(u64::from);
        let kept = blocking(move || files.cut_back(limit)).await?;
        self.end = kept.end;
        self.last = kept.time.map(Time::from);
        self.needs_scan = false;
        Ok(self.last)
    }

    /// Before writing: if the files were not read back since they were opened (no
    /// `resume`) or since an operation failed or was cancelled, cuts them back to
    /// their whole commits, all of them.
    async fn settle(&mut self) -> io::Result<()> {
        if self.needs_scan {
            self.resume(Some(Time::from(u64::MAX))).await?;
        }
        Ok(())
    }

    /// Checks that the output starts with `prefix` (a CSV header).
    async fn check_starts_with(&self, prefix: &[u8]) -> io::Result<()> {
        let files = self.files.clone();
        let expected = prefix.to_vec();
        blocking(move || files.check_starts_with(&expected)).await
    }

    /// Appends one commit's bytes, syncs them, then records the commit; gives the
    /// buffer back for reuse.
    async fn append(&mut self, time: Time, bytes: Vec<u8>) -> io::Result<Vec<u8>> {
        self.settle().await?;
        if let Some(last) = self.last
            && time <= last
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "commit {time} is not after commit {last}, the last one {} holds: a sink \
                     continuing a file must be resumed to the table's time, and the table's \
                     commits must continue the file's (a pipeline with persistence); to start \
                     over, use `create`",
                    self.files.path.display()
                ),
            ));
        }
        let start = self.end;
        let end = start + bytes.len() as u64;
        self.needs_scan = true;
        let files = self.files.clone();
        let bytes = blocking(move || {
            files.append(start, time.as_u64(), &bytes)?;
            Ok(bytes)
        })
        .await?;
        self.end = end;
        self.last = Some(time);
        self.needs_scan = false;
        Ok(bytes)
    }

    /// Syncs both files (at close: the commits file is not synced per commit).
    async fn sync(&mut self) -> io::Result<()> {
        let files = self.files.clone();
        blocking(move || {
            let _guard = files.lock();
            files.output.sync_all()?;
            files.commits.sync_all()
        })
        .await
    }
}

impl Files {
    /// Creates or truncates the output and its commits file.
    fn create(path: Arc<Path>) -> io::Result<Self> {
        let commits_path = commits_path(&path);
        // The commits file is emptied (and synced) first: were the output emptied
        // first, a crash in between would leave entries pointing past its end, and an
        // OS crash could bring old entries back over the new output.
        let commits = append_to(&commits_path, true).map_err(|e| naming(&commits_path, e))?;
        commits.sync_all().map_err(|e| naming(&commits_path, e))?;
        let output = append_to(&path, true).map_err(|e| naming(&path, e))?;
        output.sync_all().map_err(|e| naming(&path, e))?;
        sync_parent(&path)?;
        Ok(Files::new(path, commits_path.into(), output, commits))
    }

    /// Opens (or creates) the output and its commits file, refusing an output that has
    /// contents but no commits file.
    fn open(path: Arc<Path>) -> io::Result<Self> {
        let commits_path = commits_path(&path);
        let output = append_to(&path, false).map_err(|e| naming(&path, e))?;
        let commits = match OpenOptions::new().read(true).append(true).open(&commits_path) {
            Ok(commits) => commits,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let len = output.metadata().map_err(|e| naming(&path, e))?.len();
                if len > 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{} has {len} bytes but no commits file {}: it was not written by \
                             a sink that records its commits, so which of its commits are \
                             whole is unknown; move it away, or start over with `create`",
                            path.display(),
                            commits_path.display()
                        ),
                    ));
                }
                let commits = append_to(&commits_path, false).map_err(|e| naming(&commits_path, e))?;
                commits.sync_all().map_err(|e| naming(&commits_path, e))?;
                commits
            }
            Err(error) => return Err(naming(&commits_path, error)),
        };
        sync_parent(&path)?;
        Ok(Files::new(path, commits_path.into(), output, commits))
    }

    fn new(path: Arc<Path>, commits_path: Arc<Path>, output: File, commits: File) -> Self {
        Files {
            path,
            commits_path,
            output: Arc::new(output),
            commits: Arc::new(commits),
            lock: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic while it was held leaves nothing broken.
        self.lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the commits file and cuts both files back to the whole commits with time
    /// <= `limit`.
    fn cut_back(&self, limit: Option<u64>) -> io::Result<Kept> {
        let _guard = self.lock();
        let output_len = self.output.metadata().map_err(|e| naming(&self.path, e))?.len();
        let commits = File::open(&self.commits_path).map_err(|e| naming(&self.commits_path, e))?;
        let commits_len = commits
            .metadata()
            .map_err(|e| naming(&self.commits_path, e))?
            .len();
        let mut reader = BufReader::with_capacity(64 * ENTRY_LEN, commits);

        let mut kept = Kept {
            entries: 0,
            end: 0,
            time: None,
        };
        let mut whole = kept;
        let mut entry = [0; ENTRY_LEN];
        loop {
            let read = read_full(&mut reader, &mut entry).map_err(|e| naming(&self.commits_path, e))?;
            // A short or unreadable entry is one being appended when the process died,
            // or not yet on disk when the OS did: that commit and any after it are cut.
            let Some((time, end)) = (read == ENTRY_LEN).then(|| decode(&entry)).flatten() else {
                break;
            };
            if whole.time.is_some_and(|last| time <= last) || end < whole.end {
                return Err(self.corrupt(format!(
                    "entry {} (commit {time} ending at byte {end}) does not follow commit {} \
                     ending at byte {}",
                    whole.entries + 1,
                    whole.time.unwrap_or_default(),
                    whole.end
                )));
            }
            if end > output_len {
                return Err(self.corrupt(format!(
                    "commit {time} ends at byte {end} but {} has only {output_len} bytes: it was \
                     truncated or replaced",
                    self.path.display()
                )));
            }
            whole = Kept {
                entries: whole.entries + 1,
                end,
                time: Some(time),
            };
            if limit.is_some_and(|limit| time <= limit) {
                kept = whole;
            }
        }

        if whole.entries > kept.entries {
            tracing::warn!(
                path = %self.path.display(),
                commits = whole.entries - kept.entries,
                after = ?kept.time,
                table_time = ?limit,
                "cutting back whole commits the table does not have"
            );
        }
        if output_len > whole.end {
            tracing::warn!(
                path = %self.path.display(),
                bytes = output_len - whole.end,
                "cutting back a half-written commit"
            );
        }
        let entries_len = kept.entries * ENTRY_LEN as u64;
        // The commits file first: cut the other way round, a crash in between would
        // leave entries pointing past the output's end.
        if commits_len != entries_len {
            self.commits
                .set_len(entries_len)
                .map_err(|e| naming(&self.commits_path, e))?;
            self.commits
                .sync_all()
                .map_err(|e| naming(&self.commits_path, e))?;
        }
        if output_len != kept.end {
            self.output.set_len(kept.end).map_err(|e| naming(&self.path, e))?;
            self.output.sync_all().map_err(|e| naming(&self.path, e))?;
        }
        Ok(kept)
    }

    fn corrupt(&self, detail: String) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "corrupt commits file {}: {detail}; to start over, delete it and {}",
                self.commits_path.display(),
                self.path.display()
            ),
        )
    }

    fn check_starts_with(&self, expected: &[u8]) -> io::Result<()> {
        let _guard = self.lock();
        // A little more than the header, to show the file's in an error.
        let mut start = vec![0; expected.len() + 256];
        let read = File::open(&self.path)
            .and_then(|mut file| read_full(&mut file, &mut start))
            .map_err(|e| naming(&self.path, e))?;
        let start = &start[..read];
        if !start.starts_with(expected) {
            let line = |bytes: &[u8]| {
                let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
                String::from_utf8_lossy(line).trim_end().to_owned()
            };
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} starts with the header `{}`, not the table's `{}`: its columns \
                     changed; write to a new file, or start over with `create`",
                    self.path.display(),
                    line(start),
                    line(expected)
                ),
            ));
        }
        Ok(())
    }

    /// Appends a commit's bytes at `start` (the output's length), syncs them, then
    /// appends the commit's entry.
    fn append(&self, start: u64, time: u64, bytes: &[u8]) -> io::Result<()> {
        let _guard = self.lock();
        let len = self.output.metadata().map_err(|e| naming(&self.path, e))?.len();
        if len != start {
            return Err(io::Error::other(format!(
                "{} has {len} bytes where this sink wrote {start}: another writer, or a \
                 cancelled write, changed it",
                self.path.display()
            )));
        }
        let end = start + bytes.len() as u64;
        (&*self.output)
            .write_all(bytes)
            .map_err(|e| naming(&self.path, e))?;
        self.output.sync_data().map_err(|e| naming(&self.path, e))?;
        (&*self.commits)
            .write_all(&encode(time, end))
            .map_err(|e| naming(&self.commits_path, e))
    }
}

/// A commits file entry: time and end (little-endian u64s), then their checksum.
fn encode(time: u64, end: u64) -> [u8; ENTRY_LEN] {
    let mut entry = [0; ENTRY_LEN];
    entry[..8].copy_from_slice(&time.to_le_bytes());
    entry[8..16].copy_from_slice(&end.to_le_bytes());
    let checksum = crate::fnv1a(&entry[..16]);
    entry[16..].copy_from_slice(&checksum.to_le_bytes());
    entry
}

/// An entry's time and end, if its checksum holds.
fn decode(entry: &[u8; ENTRY_LEN]) -> Option<(u64, u64)> {
    let word = |at: usize| {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&entry[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    (crate::fnv1a(&entry[..16]) == word(16)).then(|| (word(0), word(8)))
}

/// `<path>.commits`.
fn commits_path(path: &Path) -> PathBuf {
    let mut commits = OsString::from(path.as_os_str());
    commits.push(".commits");
    commits.into()
}

/// Opens `path` to append (creating it), emptied first if `truncate`.
fn append_to(path: &Path, truncate: bool) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)?;
    if truncate {
        // Not `OpenOptions::truncate`, which excludes appending: every write must go to
        // the end, wherever a cut back left it.
        file.set_len(0)?;
    }
    Ok(file)
}

/// Reads until `buffer` is full or the end; how many bytes were read.
fn read_full(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut read = 0;
    while read < buffer.len() {
        match reader.read(&mut buffer[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(read)
}

/// Makes a newly created file's directory entry durable.
pub(crate) fn sync_parent(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| naming(parent, e))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// `error`, with the path it is about.
pub(crate) fn naming(path: &Path, error: io::Error) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

async fn blocking<T: Send + 'static>(
    operation: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(operation)
        .await
        .map_err(io::Error::other)?
}
