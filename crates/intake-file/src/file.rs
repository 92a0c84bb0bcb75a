//! The file source: a file read line by line, optionally followed like `tail -F`, with
//! resume offsets.

use std::fs::{File, Metadata};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use async_trait::async_trait;
use intake_core::{BoxError, SendError, Source, SourceContext};
use notify::Watcher;
use serde_json::{Value as Json, json};
use tokio::runtime::Handle;

use crate::format::{Decoded, FileFormat, LineDecoder};

/// How many bytes at the start of a file identify it (with its device and inode).
const HEAD_BYTES: u64 = 1024;

/// A file as a stream of messages, one per line: JSON lines, CSV/TSV with a header, or
/// raw lines (see [`FileFormat`]). Bytewax's `FileSource`/`CSVSource`, Pathway's
/// `pw.io.fs.read` in static or streaming mode.
///
/// The file is read on a blocking thread through a `BufReader`, a line at a time, so
/// memory stays bounded whatever the file's size.
///
/// - **Static** (the default): the source ends at the end of the file. A last line
///   without a newline is read as a line.
/// - **Follow** ([`follow`](Self::follow)): like `tail -F`, appended lines are sent as
///   they are written (woken by file-system notifications, with polling as a fallback);
///   a truncated file is read again from its start; a rotated file (renamed, and a new
///   one created at the path) is read to its end and then the new file from its start.
///   A last line is sent only once its newline is written. The source runs until the
///   pipeline shuts down.
/// - **Resume**: the source [reports](SourceContext::report_offset) its position
///   (byte offset and the file's identity) every [`offset_every`](Self::offset_every)
///   lines and whenever it reaches the end of the file. Given that offset back through
///   `Reader::resume_from`, it continues after the last committed line. A file that was
///   replaced or truncated meanwhile (different device/inode or first bytes, or shorter
///   than the offset) is read from its start, with a warning.
///
/// Bad lines (malformed JSON, invalid UTF-8, CSV fields that do not convert to their
/// column's type, records with the wrong number of fields) go through the reader's
/// `ErrorPolicy`: with `SkipAndReport` they are reported and their neighbours kept.
///
/// # Examples
///
/// ```no_run
/// use intake_core::{Column, DataType, Pipeline, Reader, Schema};
/// use intake_file::FileSource;
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let schema = Schema::new([
///     Column::new("key", DataType::Int).primary_key(),
///     Column::new("genus", DataType::String),
/// ])?;
/// let mut pipeline = Pipeline::new();
/// let cats = pipeline.read("cats", FileSource::csv("cats.csv"), Reader::json(schema));
/// pipeline.run().await?;
/// # let _ = cats;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct FileSource {
    path: PathBuf,
    format: FileFormat,
    follow: bool,
    poll_interval: Duration,
    offset_every: u64,
    max_line_length: usize,
}

impl FileSource {
    /// Default for [`poll_interval`](Self::poll_interval).
    pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);
    /// Default for [`offset_every`](Self::offset_every).
    pub const DEFAULT_OFFSET_EVERY: u64 = 1_000;
    /// Default for [`max_line_length`](Self::max_line_length): 16 MiB.
    pub const DEFAULT_MAX_LINE_LENGTH: usize = 16 * 1024 * 1024;

    /// Reads the file at `path` in `format`.
    pub fn new(path: impl Into<PathBuf>, format: FileFormat) -> Self {
        FileSource {
            path: path.into(),
            format,
            follow: false,
            poll_interval: Self::DEFAULT_POLL_INTERVAL,
            offset_every: Self::DEFAULT_OFFSET_EVERY,
            max_line_length: Self::DEFAULT_MAX_LINE_LENGTH,
        }
    }

    /// Reads a JSON-lines file (one object per line; use `Reader::json`).
    pub fn json_lines(path: impl Into<PathBuf>) -> Self {
        Self::new(path, FileFormat::JsonLines)
    }

    /// Reads a CSV file with a header (use `Reader::json`).
    pub fn csv(path: impl Into<PathBuf>) -> Self {
        Self::new(path, FileFormat::Csv)
    }

    /// Reads a TSV file with a header (use `Reader::json`).
    pub fn tsv(path: impl Into<PathBuf>) -> Self {
        Self::new(path, FileFormat::Tsv)
    }

    /// Reads each line as one message (use `Reader::raw`).
    pub fn raw(path: impl Into<PathBuf>) -> Self {
        Self::new(path, FileFormat::Raw)
    }

    /// Follows the file like `tail -F` instead of ending at its end. Default: off.
    pub fn follow(mut self, follow: bool) -> Self {
        self.follow = follow;
        self
    }

    /// In follow mode, how often the file is checked when no file-system notification
    /// arrives (notifications may be unavailable, or lost on network file systems).
    /// Default: 250 ms.
    ///
    /// # Panics
    ///
    /// If `interval` is zero.
    #[track_caller]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        assert!(!interval.is_zero(), "poll_interval must be positive");
        self.poll_interval = interval;
        self
    }

    /// Reports the offset after every `lines` lines (and at each end of the file).
    /// Default: 1,000.
    ///
    /// # Panics
    ///
    /// If `lines` is zero.
    #[track_caller]
    pub fn offset_every(mut self, lines: u64) -> Self {
        assert!(lines > 0, "offset_every must be at least 1");
        self.offset_every = lines;
        self
    }

    /// The longest line kept, in bytes, so that memory stays bounded even for a file
    /// without newlines. A longer line is not held in memory: it is reported as bad
    /// input through the reader's error policy, with its first bytes. Default: 16 MiB.
    ///
    /// # Panics
    ///
    /// If `bytes` is zero.
    #[track_caller]
    pub fn max_line_length(mut self, bytes: usize) -> Self {
        assert!(bytes > 0, "max_line_length must be at least 1");
        self.max_line_length = bytes;
        self
    }

    /// The path read.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
impl Source for FileSource {
    async fn run(&mut self, ctx: SourceContext) -> Result<(), BoxError> {
        let config = self.clone();
        let (wake, woken) = mpsc::channel();
        // Shutdown wakes a follower waiting for data.
        let waker = config.follow.then(|| {
            let ctx = ctx.clone();
            let wake = wake.clone();
            tokio::spawn(async move {
                ctx.cancelled().await;
                let _ = wake.send(());
            })
        });
        let handle = Handle::current();
        let result = tokio::task::spawn_blocking(move || {
            let mut reader = FileReader::new(config, ctx, handle, woken);
            reader.run(wake)
        })
        .await;
        if let Some(waker) = waker {
            waker.abort();
            let _ = waker.await;
        }
        result.map_err(|e| format!("the file reader panicked or was cancelled: {e}"))?
    }
}

/// What identifies a file across renames and restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    device: u64,
    inode: u64,
}

impl Identity {
    #[cfg(unix)]
    fn of(metadata: &Metadata) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        Some(Identity {
            device: metadata.dev(),
            inode: metadata.ino(),
        })
    }

    #[cfg(not(unix))]
    fn of(_metadata: &Metadata) -> Option<Self> {
        None
    }
}

/// Why reading stopped early.
enum Stop {
    /// The pipeline is shutting down: not an error.
    ShuttingDown,
    Failed(BoxError),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Self {
        Stop::Failed(Box::new(e))
    }
}

impl From<SendError> for Stop {
    fn from(e: SendError) -> Self {
        match e {
            e @ SendError::Rejected(_) => Stop::Failed(Box::new(e)),
            _ => Stop::ShuttingDown,
        }
    }
}

/// An open file being read.
struct Open {
    reader: BufReader<File>,
    identity: Option<Identity>,
    /// Bytes of complete lines read so far: where to resume.
    position: u64,
    /// Lines read so far.
    line_number: u64,
    /// (length, hash) of the first bytes, once computed.
    head: Option<(u64, u64)>,
}

struct FileReader {
    config: FileSource,
    ctx: SourceContext,
    handle: Handle,
    woken: mpsc::Receiver<()>,
    decoder: LineDecoder,
    /// The line being read; without its newline yet if the file ends mid-line. Of a
    /// line longer than `max_line_length`, only the first bytes, for the report.
    line: Vec<u8>,
    /// The length of the line being read, in bytes, kept or not.
    line_length: u64,
    /// Whether the line being read is longer than `max_line_length`.
    line_too_long: bool,
    lines_since_offset: u64,
    /// Messages and offsets not sent yet: they are sent in batches, so that the
    /// blocking thread enters the runtime once per batch rather than once per line.
    unsent: Vec<Unsent>,
}

/// What waits in [`FileReader::unsent`].
enum Unsent {
    Message(Decoded),
    Offset(Json),
}

/// How many messages are gathered before they are sent.
const SEND_BATCH: usize = 256;

impl FileReader {
    fn new(config: FileSource, ctx: SourceContext, handle: Handle, woken: mpsc::Receiver<()>) -> Self {
        let decoder = LineDecoder::new(config.format, ctx.schema().clone());
        FileReader {
            config,
            ctx,
            handle,
            woken,
            decoder,
            line: Vec::with_capacity(256),
            line_length: 0,
            line_too_long: false,
            lines_since_offset: 0,
            unsent: Vec::with_capacity(SEND_BATCH),
        }
    }

    fn run(&mut self, wake: mpsc::Sender<()>) -> Result<(), BoxError> {
        match self.read(wake).and_then(|()| self.flush()) {
            Ok(()) | Err(Stop::ShuttingDown) => Ok(()),
            Err(Stop::Failed(e)) => Err(e),
        }
    }

    fn read(&mut self, wake: mpsc::Sender<()>) -> Result<(), Stop> {
        let _watcher = if self.config.follow {
            self.watch(wake)
        } else {
            None
        };
        let mut file = match self.open()? {
            Some(file) => file,
            None => self.wait_for_file()?,
        };
        if let Some(offset) = self.ctx.resume_offset().cloned() {
            self.resume(&mut file, &offset)?;
        }
        loop {
            self.read_to_end(&mut file)?;
            if !self.config.follow {
                self.finish_last_line(&mut file)?;
                return self.report(&mut file);
            }
            if self.ctx.is_cancelled() {
                return Err(Stop::ShuttingDown);
            }
            match std::fs::metadata(&self.config.path) {
                Ok(metadata) if Identity::of(&metadata) != file.identity => {
                    // Rotated: whatever was written to the old file before the switch is
                    // read to its end, then the new file from its start.
                    self.read_to_end(&mut file)?;
                    self.finish_last_line(&mut file)?;
                    self.report(&mut file)?;
                    tracing::info!(path = %self.config.path.display(), "file rotated; reading the new file");
                    if let Some(new) = self.open()? {
                        file = new;
                        continue;
                    }
                }
                _ => {
                    let length = file.reader.get_ref().metadata()?.len();
                    if length < file.position + self.line_length {
                        tracing::warn!(path = %self.config.path.display(), length, position = file.position, "file truncated; reading it again from the start");
                        file.reader.seek(SeekFrom::Start(0))?;
                        self.restart(&mut file);
                        continue;
                    }
                }
            }
            self.wait()?;
        }
    }

    /// Opens the file; `None` if it does not exist and the source follows it.
    fn open(&mut self) -> Result<Option<Open>, Stop> {
        match File::open(&self.config.path) {
            Ok(file) => {
                let identity = Identity::of(&file.metadata()?);
                self.decoder.reset();
                self.line.clear();
                self.line_length = 0;
                self.line_too_long = false;
                Ok(Some(Open {
                    reader: BufReader::with_capacity(64 * 1024, file),
                    identity,
                    position: 0,
                    line_number: 0,
                    head: None,
                }))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.config.follow => Ok(None),
            Err(e) => Err(Stop::Failed(
                format!("cannot open {}: {e}", self.config.path.display()).into(),
            )),
        }
    }

    fn wait_for_file(&mut self) -> Result<Open, Stop> {
        tracing::info!(path = %self.config.path.display(), "waiting for the file to be created");
        loop {
            self.wait()?;
            if let Some(file) = self.open()? {
                return Ok(file);
            }
        }
    }

    /// Waits for a notification, a poll interval, or shutdown.
    fn wait(&mut self) -> Result<(), Stop> {
        self.flush()?;
        let _ = self.woken.recv_timeout(self.config.poll_interval);
        while self.woken.try_recv().is_ok() {}
        if self.ctx.is_cancelled() {
            Err(Stop::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// Watches the file's directory, so that appends, truncation and rotation wake the
    /// reader at once; without notifications, polling alone notices them.
    fn watch(&self, wake: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
        let directory = match self.config.path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
            let _ = wake.send(());
        })
        .and_then(|mut watcher| {
            watcher.watch(&directory, notify::RecursiveMode::NonRecursive)?;
            Ok(watcher)
        });
        match watcher {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::warn!(path = %self.config.path.display(), %error, "no file-system notifications; polling only");
                None
            }
        }
    }

    /// Sends every complete line up to the end of the file.
    fn read_to_end(&mut self, file: &mut Open) -> Result<(), Stop> {
        while self.read_line(file)? {
            self.take_line(file)?;
        }
        if self.lines_since_offset > 0 {
            self.report(file)?;
        }
        Ok(())
    }

    /// At the end of a file that will not grow (static mode, or rotated away), a last
    /// line without its newline is complete.
    fn finish_last_line(&mut self, file: &mut Open) -> Result<(), Stop> {
        if self.line_length > 0 {
            self.take_line(file)?;
        }
        Ok(())
    }

    /// Reads the rest of the current line into `self.line`: true if it is complete,
    /// false at the end of the file. Keeps at most `max_line_length` bytes.
    fn read_line(&mut self, file: &mut Open) -> io::Result<bool> {
        /// How much of a line that is too long is kept for the report.
        const SHOWN: usize = 200;
        loop {
            let kept = self.line.len();
            let limit = if self.line_too_long {
                64 * 1024
            } else {
                // Room for the longest line and its newline.
                self.config.max_line_length + 1 - kept
            };
            let read = (&mut file.reader)
                .take(limit as u64)
                .read_until(b'\n', &mut self.line)?;
            self.line_length += read as u64;
            let complete = read > 0 && self.line.last() == Some(&b'\n');
            if self.line_too_long {
                self.line.truncate(kept);
            }
            if complete {
                return Ok(true);
            }
            if read < limit {
                return Ok(false);
            }
            if !self.line_too_long {
                self.line_too_long = true;
                self.line.truncate(SHOWN);
            }
        }
    }

    fn take_line(&mut self, file: &mut Open) -> Result<(), Stop> {
        file.position += self.line_length;
        file.line_number += 1;
        let message = if self.line_too_long {
            self.decoder
                .too_long(&self.line, self.line_length, file.line_number)
        } else {
            self.decoder.decode(&self.line, file.line_number)
        };
        self.line.clear();
        self.line_length = 0;
        self.line_too_long = false;
        if let Some(message) = message {
            self.send(message)?;
        }
        self.lines_since_offset += 1;
        if self.lines_since_offset >= self.config.offset_every {
            self.report(file)?;
        }
        Ok(())
    }

    fn send(&mut self, message: Decoded) -> Result<(), Stop> {
        self.unsent.push(Unsent::Message(message));
        if self.unsent.len() >= SEND_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Sends what was gathered, in order.
    fn flush(&mut self) -> Result<(), Stop> {
        if self.unsent.is_empty() {
            return Ok(());
        }
        let ctx = &self.ctx;
        let unsent = &mut self.unsent;
        let sent: Result<(), SendError> = self.handle.block_on(async move {
            for item in unsent.drain(..) {
                match item {
                    Unsent::Message(message) => message.send(ctx).await?,
                    Unsent::Offset(offset) => ctx.report_offset(offset).await?,
                }
            }
            Ok(())
        });
        self.unsent.clear();
        Ok(sent?)
    }

    /// Reports the position after the last complete record.
    fn report(&mut self, file: &mut Open) -> Result<(), Stop> {
        if !self.decoder.is_idle() {
            return Ok(());
        }
        self.lines_since_offset = 0;
        let head_length = file.position.min(HEAD_BYTES);
        if file.head.is_none_or(|(length, _)| length < head_length) {
            file.head = Some((head_length, head_hash(file.reader.get_ref(), head_length)?));
        }
        let (head_length, head_hash) = file.head.unwrap_or_default();
        let mut offset = json!({
            "path": self.config.path.display().to_string(),
            "position": file.position,
            "line": file.line_number,
            "head_length": head_length,
            "head_hash": format!("{head_hash:016x}"),
        });
        if let Some(identity) = file.identity {
            offset["device"] = identity.device.into();
            offset["inode"] = identity.inode.into();
        }
        self.unsent.push(Unsent::Offset(offset));
        Ok(())
    }

    fn restart(&mut self, file: &mut Open) {
        file.position = 0;
        file.line_number = 0;
        file.head = None;
        self.decoder.reset();
        self.line.clear();
        self.line_length = 0;
        self.line_too_long = false;
    }

    /// Continues after `offset`, if it still describes this file.
    fn resume(&mut self, file: &mut Open, offset: &Json) -> Result<(), Stop> {
        let number = |name: &str| offset.get(name).and_then(Json::as_u64);
        let Some(position) = number("position") else {
            return Err(Stop::Failed(
                format!("resume offset {offset} was not reported by a FileSource (no `position`)").into(),
            ));
        };
        let path = self.config.path.display().to_string();
        let length = file.reader.get_ref().metadata()?.len();
        let identity = match (number("device"), number("inode")) {
            (Some(device), Some(inode)) => Some(Identity { device, inode }),
            _ => None,
        };
        let head_length = number("head_length").unwrap_or(0);
        let head_hash_then = offset.get("head_hash").and_then(Json::as_str).unwrap_or("");
        let problem = if identity.is_some() && file.identity.is_some() && identity != file.identity {
            Some("it was replaced (another device/inode)")
        } else if length < position || length < head_length {
            Some("it is shorter than the offset (truncated)")
        } else if format!("{:016x}", head_hash(file.reader.get_ref(), head_length)?) != head_hash_then {
            Some("its first bytes changed (rewritten)")
        } else {
            None
        };
        if let Some(problem) = problem {
            tracing::warn!(
                path,
                position,
                "cannot resume: {problem} since the offset was reported; reading it from the start"
            );
            return Ok(());
        }
        // A header is read again from the file's start, as the first line(s).
        while !self.decoder.has_header() && file.position < position {
            let read = file.reader.read_until(b'\n', &mut self.line)?;
            if read == 0 {
                break;
            }
            file.position += read as u64;
            let _ = self.decoder.decode(&self.line, 0);
            self.line.clear();
        }
        file.reader.seek(SeekFrom::Start(position))?;
        file.position = position;
        file.line_number = number("line").unwrap_or(0);
        file.head = None;
        tracing::info!(path, position, "resuming the file");
        Ok(())
    }
}

/// FNV-1a of the first `length` bytes of `file` (a stable hash: it is persisted).
fn head_hash(file: &File, length: u64) -> io::Result<u64> {
    let mut head = vec![0; usize::try_from(length).unwrap_or(0)];
    read_exact_at(file, &mut head)?;
    Ok(crate::fnv1a(&head))
}

#[cfg(unix)]
fn read_exact_at(file: &File, buffer: &mut [u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buffer, 0)
}

#[cfg(not(unix))]
fn read_exact_at(_file: &File, buffer: &mut [u8]) -> io::Result<()> {
    // Identity by first bytes is a unix-only refinement; elsewhere size is the check.
    buffer.fill(0);
    Ok(())
}
