//! The file source: a file read line by line, optionally followed like `tail -F`
//! through truncation and rotation, with resume offsets.

use std::fs::{File, Metadata};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use intake_core::{BoxError, Location, SendError, Source, SourceContext};
use notify::Watcher;
use serde_json::{Value as Json, json};
use tokio::runtime::Handle;

use crate::format::{Decoded, FileFormat, LineDecoder, SHOWN};

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
///   without a newline is read as a line, and a CSV record whose quoted field is still
///   open there is reported as bad input.
/// - **Follow** ([`follow`](Self::follow)): like `tail -F`, appended lines are sent as
///   they are written (woken by file-system notifications, with polling as a fallback);
///   a truncated file is read again from its start (after the lines not read yet from
///   a copy beside the path, as `copytruncate` leaves one); a rotated file (renamed, and a new
///   one created at the path) is still read for [`rotate_wait`](Self::rotate_wait)
///   after the rotation is noticed, for the lines its writer appends before reopening
///   the path, while the new file is read from its start. A last line is sent only
///   once its newline is written. The source runs until the pipeline shuts down.
/// - **Resume**: the source [reports](SourceContext::report_offset) its position
///   (byte offset and the file's identity) every [`offset_every`](Self::offset_every)
///   lines, whenever it reaches the end of the file, and where it stopped when the
///   pipeline shuts down or the source fails. Given that offset back through `Reader::resume_from`, it
///   continues after the last committed line: nothing committed is read twice, nothing
///   is skipped. A file that was rotated meanwhile is found beside the path by its
///   identity and read to its end before the new one; if it was rotated more than
///   once, the files in between (beside the path, named after it with a suffix, last
///   modified no earlier than it) are read whole, oldest first, before the new one.
///   A file copied away and truncated (`copytruncate`) is resumed in the copy beside
///   the path that holds what the offset describes, then read from its start. A file that was replaced or
///   truncated (different device/inode or first bytes, or shorter than the offset) is
///   read from its start, with a warning.
///
/// The path must name a regular file (or a symbolic link to one): a FIFO, socket,
/// device or directory fails the source with an error that says so, since reading one
/// could block past shutdown and no offset into it could be resumed from.
///
/// Bad lines (malformed JSON, invalid UTF-8, CSV fields that do not convert to their
/// column's type, records with the wrong number of fields, lines or records longer
/// than [`max_line_length`](Self::max_line_length)) go through the reader's
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
    rotate_wait: Duration,
}

impl FileSource {
    /// Default for [`poll_interval`](Self::poll_interval).
    pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);
    /// Default for [`offset_every`](Self::offset_every).
    pub const DEFAULT_OFFSET_EVERY: u64 = 1_000;
    /// Default for [`max_line_length`](Self::max_line_length): 16 MiB.
    pub const DEFAULT_MAX_LINE_LENGTH: usize = 16 * 1024 * 1024;
    /// Default for [`rotate_wait`](Self::rotate_wait): 5 seconds, like Fluent Bit's
    /// `Rotate_Wait`.
    pub const DEFAULT_ROTATE_WAIT: Duration = Duration::from_secs(5);

    /// Reads the file at `path` in `format`.
    ///
    /// # Panics
    ///
    /// If `format` is [`FileFormat::Delimited`] with `\n`, `\r` or `"`, which cannot
    /// be delimiters.
    #[track_caller]
    pub fn new(path: impl Into<PathBuf>, format: FileFormat) -> Self {
        if let Err(problem) = format.check() {
            panic!("{problem}");
        }
        FileSource {
            path: path.into(),
            format,
            follow: false,
            poll_interval: Self::DEFAULT_POLL_INTERVAL,
            offset_every: Self::DEFAULT_OFFSET_EVERY,
            max_line_length: Self::DEFAULT_MAX_LINE_LENGTH,
            rotate_wait: Self::DEFAULT_ROTATE_WAIT,
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
    /// Default: 250 ms. [`Duration::MAX`] relies on notifications alone.
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

    /// Reports the offset after every `lines` lines (and at each end of the file, and
    /// where reading stopped at shutdown). Default: 1,000. `u64::MAX` reports only at
    /// those points.
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
    /// input through the reader's error policy, with its first bytes. In the delimited
    /// formats it also bounds a record whose quoted fields span lines: a longer record
    /// is reported from the line it starts on, and reading goes on with the next line.
    /// Default: 16 MiB. `usize::MAX` means no limit.
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

    /// Whether the source follows its file ([`follow`](Self::follow)).
    pub(crate) fn follows(&self) -> bool {
        self.follow
    }

    /// In follow mode, how long a rotated file (renamed, with a new file created at
    /// the path, as logrotate's `create` mode does) is still read after the rotation is
    /// noticed: its writer may append to it until it reopens the path. Meanwhile the
    /// new file is read too; each line of either is sent once. Then the old file's
    /// last line, even without a newline, is read and the file is closed. Zero reads
    /// the old file to its end at once; [`Duration::MAX`] keeps reading it until the
    /// next rotation. Default: 5 s, like Fluent Bit's `Rotate_Wait` (Vector's
    /// `rotate_wait_secs` is the same idea).
    pub fn rotate_wait(mut self, wait: Duration) -> Self {
        self.rotate_wait = wait;
        self
    }

    /// The path read.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
impl Source for FileSource {
    /// Its offsets are exact, so its messages are committed only with one.
    fn reports_offsets(&self) -> bool {
        true
    }

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

/// A place in a file where the decoder holds nothing: after a complete record (or at
/// the start). Offsets only ever point there, so a resume neither repeats nor splits
/// a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Boundary {
    /// Bytes from the start of the file.
    position: u64,
    /// Lines before it.
    line: u64,
}

/// A byte stream framed into lines, each bounded by `max_line_length`, and decoded
/// into messages.
pub(crate) struct Lines {
    decoder: LineDecoder,
    max_line_length: usize,
    /// The line being read; without its newline yet if the input ends mid-line. Of a
    /// line longer than `max_line_length`, only the first bytes, for the report.
    line: Vec<u8>,
    /// The length of the line being read, in bytes, kept or not.
    line_length: u64,
    /// Whether the line being read is longer than `max_line_length`.
    line_too_long: bool,
    /// Bytes of complete lines read so far.
    position: u64,
    /// Complete lines read so far.
    line_number: u64,
    /// Where the last complete record ended: where reading can resume.
    boundary: Boundary,
}

impl Lines {
    pub(crate) fn new(decoder: LineDecoder, max_line_length: usize) -> Self {
        Lines {
            decoder,
            max_line_length,
            line: Vec::with_capacity(256),
            line_length: 0,
            line_too_long: false,
            position: 0,
            line_number: 0,
            boundary: Boundary::default(),
        }
    }

    /// Reads the rest of the current line: true if it is complete, false at the end of
    /// the input (what was read is kept for the next call). Keeps at most
    /// `max_line_length` bytes of it.
    pub(crate) fn read_line<R: BufRead>(&mut self, reader: &mut R) -> io::Result<bool> {
        loop {
            let kept = self.line.len();
            let limit = if self.line_too_long {
                64 * 1024
            } else {
                // Room for the longest line and its newline.
                self.max_line_length.saturating_sub(kept).saturating_add(1)
            };
            let read = reader
                .by_ref()
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

    /// Decodes the line just read.
    pub(crate) fn take_line(&mut self) -> Option<Decoded> {
        self.position += self.line_length;
        self.line_number += 1;
        let message = if self.line_too_long {
            self.decoder
                .too_long(&self.line, self.line_length, self.line_number)
        } else {
            self.decoder.decode(&self.line, self.line_number)
        };
        self.clear_line();
        if self.decoder.is_idle() {
            self.boundary = Boundary {
                position: self.position,
                line: self.line_number,
            };
        }
        message
    }

    /// At the end of an input that will not grow: a last line without its newline is
    /// complete, and a record still open is reported.
    pub(crate) fn finish(&mut self) -> impl Iterator<Item = Decoded> + use<> {
        let last = if self.line_length > 0 {
            self.take_line()
        } else {
            None
        };
        let open = self.decoder.finish();
        self.boundary = Boundary {
            position: self.position,
            line: self.line_number,
        };
        last.into_iter().chain(open)
    }

    /// Starts again at the start of the input.
    fn restart(&mut self) {
        self.clear_line();
        self.position = 0;
        self.line_number = 0;
        self.boundary = Boundary::default();
        self.decoder.reset();
    }

    /// Continues at `boundary` (the input was positioned there).
    fn resume_at(&mut self, boundary: Boundary) {
        // A record the header lines left open (they are read again only for the
        // header) is not this file's any more.
        let _ = self.decoder.finish();
        if boundary.position > 0 {
            self.decoder.resumed();
        }
        self.clear_line();
        self.position = boundary.position;
        self.line_number = boundary.line;
        self.boundary = boundary;
    }

    fn clear_line(&mut self) {
        self.line.clear();
        self.line_length = 0;
        self.line_too_long = false;
    }

    /// The bytes held for the line and the record being read.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn held(&self) -> usize {
        self.line.len() + self.decoder.held()
    }
}

/// An open file being read.
struct Open {
    reader: BufReader<File>,
    identity: Option<Identity>,
    /// (length, hash) of the first bytes, once computed.
    head: Option<(u64, u64)>,
    lines: Lines,
    /// When it was opened, to the second below (a copy of it made by
    /// `copytruncate` is modified after that; see [`FileReader::copy_of_current`]).
    opened_at: std::time::SystemTime,
}

impl Open {
    /// The part of an offset that describes this file at `boundary`.
    fn part(&mut self, boundary: Boundary) -> io::Result<Part> {
        let head_length = boundary.position.min(HEAD_BYTES);
        if self.head.is_none_or(|(length, _)| length < head_length) {
            self.head = Some((head_length, head_hash(self.reader.get_ref(), head_length)?));
        }
        let (head_length, head_hash) = self.head.unwrap_or_default();
        Ok(Part {
            position: boundary.position,
            line: boundary.line,
            identity: self.identity,
            head_length,
            head_hash: format!("{head_hash:016x}"),
        })
    }

    /// [`part`](Self::part) as it is written in an offset.
    fn offset(&mut self, boundary: Boundary) -> io::Result<Json> {
        self.part(boundary).map(|part| part.to_json())
    }
}

/// A file that was rotated away from the path, still read until `until` (`None`: until
/// the next rotation).
struct Rotated {
    file: Open,
    until: Option<Instant>,
}

/// The files being read: the one at the path, and the one rotated away from it during
/// its grace period.
struct Files {
    current: Open,
    rotated: Option<Rotated>,
}

#[derive(Debug, Clone, Copy)]
enum Which {
    Current,
    Rotated,
}

impl Files {
    fn get(&mut self, which: Which) -> Option<&mut Open> {
        match which {
            Which::Current => Some(&mut self.current),
            Which::Rotated => self.rotated.as_mut().map(|rotated| &mut rotated.file),
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            current: self.current.lines.boundary,
            rotated: self.rotated.as_ref().map(|r| r.file.lines.boundary),
        }
    }
}

/// Where reading is in each open file: what an offset reported then would say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Snapshot {
    current: Boundary,
    rotated: Option<Boundary>,
}

/// What was sent last: where it left reading, and whether it was an offset saying so.
#[derive(Debug, Clone, Copy)]
struct Sent {
    snapshot: Snapshot,
    reported: bool,
}

/// What waits in [`FileReader::unsent`].
enum Unsent {
    Message(Decoded),
    Offset(Json),
}

/// How many messages are gathered before they are sent.
const SEND_BATCH: usize = 256;

struct FileReader {
    config: FileSource,
    /// The path as rejected lines' locations show it.
    shown_path: std::sync::Arc<str>,
    ctx: SourceContext,
    handle: Handle,
    woken: mpsc::Receiver<()>,
    lines_since_offset: u64,
    /// Messages and offsets not sent yet: they are sent in batches, so that the
    /// blocking thread enters the runtime once per batch rather than once per line.
    unsent: Vec<Unsent>,
    /// For each of `unsent`, where reading was right after it: if shutdown stops the
    /// sending halfway, the offset reported covers exactly what was sent.
    unsent_after: Vec<Sent>,
    /// What was sent last; at the start and after every change of the open files,
    /// where reading is then (all before it having been sent).
    sent: Option<Sent>,
    /// Files rotated away from the path while the source was stopped, after the one
    /// its offset describes and before the one now at the path, oldest first: each
    /// is read to its end, in turn, before the file at the path.
    missed: std::collections::VecDeque<PathBuf>,
}

impl FileReader {
    fn new(config: FileSource, ctx: SourceContext, handle: Handle, woken: mpsc::Receiver<()>) -> Self {
        FileReader {
            shown_path: config.path.display().to_string().into(),
            config,
            ctx,
            handle,
            woken,
            lines_since_offset: 0,
            unsent: Vec::with_capacity(SEND_BATCH),
            unsent_after: Vec::with_capacity(SEND_BATCH),
            sent: None,
            missed: std::collections::VecDeque::new(),
        }
    }

    fn run(&mut self, wake: mpsc::Sender<()>) -> Result<(), BoxError> {
        let _watcher = if self.config.follow {
            self.watch(wake)
        } else {
            None
        };
        let mut files = match self.start() {
            Ok(files) => files,
            Err(Stop::ShuttingDown) => return Ok(()),
            Err(Stop::Failed(e)) => return Err(e),
        };
        // A stop before anything is sent still commits where reading starts (the
        // resume offset, carried forward).
        self.sent = Some(Sent {
            snapshot: files.snapshot(),
            reported: false,
        });
        let result = self.read(&mut files).and_then(|()| self.flush());
        if result.is_err() {
            // Stopped early (shutdown, or a failure): the rows sent are committed, so
            // the offset must cover exactly them.
            self.report_stop(&mut files);
        }
        match result {
            Ok(()) | Err(Stop::ShuttingDown) => Ok(()),
            Err(Stop::Failed(e)) => Err(e),
        }
    }

    fn read(&mut self, files: &mut Files) -> Result<(), Stop> {
        loop {
            self.read_to_end(files, Which::Rotated)?;
            self.read_to_end(files, Which::Current)?;
            if files
                .rotated
                .as_ref()
                .is_some_and(|r| !self.config.follow || r.until.is_some_and(|until| Instant::now() >= until))
            {
                self.close_rotated(files)?;
            }
            if self.ctx.is_cancelled() {
                return Err(Stop::ShuttingDown);
            }
            let rotated = matches!(
                std::fs::metadata(&self.config.path),
                Ok(metadata) if Identity::of(&metadata) != files.current.identity
            );
            let reopened = if rotated {
                self.rotate(files)?
            } else {
                self.config.follow && self.truncated(files)?
            };
            if reopened {
                continue;
            }
            if !self.config.follow {
                self.finish(files, Which::Current)?;
                return self.report(files);
            }
            let until = files.rotated.as_ref().and_then(|r| r.until);
            self.wait(until)?;
        }
    }

    /// Opens the file at the path and resumes from the offset, if any.
    fn start(&mut self) -> Result<Files, Stop> {
        let at_path = self.open_path()?;
        let Some(offset) = self.ctx.resume_offset().cloned() else {
            let current = match at_path {
                Some(file) => file,
                None => self.wait_for_file()?,
            };
            return Ok(Files {
                current,
                rotated: None,
            });
        };
        let path = self.config.path.display().to_string();
        let main = Part::parse(&offset)?;
        let rotated = match offset.get("rotated") {
            Some(rotated) => Some(Part::parse(rotated)?),
            None => None,
        };
        let mut current = None;
        let mut fresh = None;
        let mut problem = "there is no file at the path";
        if let Some(mut file) = at_path {
            match main.problem(&file)? {
                None => {
                    self.seek(&mut file, &main)?;
                    current = Some(file);
                }
                Some(why) => {
                    problem = why;
                    fresh = Some(file);
                }
            }
        }
        if current.is_none() {
            // Neither the file at the path nor one the offset says was rotated before
            // is among the files rotated in between.
            let known = [
                fresh.as_ref().and_then(|file: &Open| file.identity),
                rotated.as_ref().and_then(|part| part.identity),
            ];
            // Rotated while the source was stopped: the rest of the old file is read
            // first, and the new one is found at the path like any rotation. Or copied
            // away and truncated (logrotate's `copytruncate`): the copy holds the rest
            // of what was read from.
            let found = match self.locate(&main, None)? {
                Some(moved) => Some(moved),
                None => self.locate_copy(&main, known[0], None)?,
            };
            if let Some(mut file) = found {
                self.seek(&mut file, &main)?;
                self.missed = self.rotated_between(&file, &known)?;
                current = Some(file);
            } else {
                tracing::warn!(
                    path,
                    position = main.position,
                    "cannot resume: {problem} since the offset was reported; reading it from the start"
                );
            }
        }
        let current = match current.or(fresh) {
            Some(file) => file,
            None => self.wait_for_file()?,
        };
        let mut files = Files {
            current,
            rotated: None,
        };
        if let Some(part) = rotated {
            // Stopped during a rotation's grace period: the rotated file gets another.
            match self.locate(&part, files.current.identity)? {
                Some(mut file) => {
                    self.seek(&mut file, &part)?;
                    files.rotated = Some(Rotated {
                        file,
                        until: self.grace_end(),
                    });
                }
                None => tracing::warn!(
                    path,
                    "the rotated file that was being read when the offset was reported is gone from beside the path; lines written to it since are not read"
                ),
            }
        }
        tracing::info!(path, position = files.current.lines.position, "resuming the file");
        Ok(files)
    }

    /// Opens the file at the path; `None` if it does not exist and the source follows
    /// it.
    fn open_path(&self) -> Result<Option<Open>, Stop> {
        // Opening a FIFO blocks until a writer opens it, and reading one blocks until
        // data comes: a blocking thread stuck there outlives shutdown, and dropping
        // the runtime then waits for it for ever. Nor could an offset into a pipe or a
        // device be resumed from. Refused before opening.
        if let Ok(metadata) = std::fs::metadata(&self.config.path)
            && !metadata.is_file()
        {
            return Err(Stop::Failed(
                format!(
                    "{} is not a regular file ({}): the file source reads regular files only",
                    self.config.path.display(),
                    file_kind(&metadata)
                )
                .into(),
            ));
        }
        match File::open(&self.config.path) {
            Ok(file) => Ok(Some(self.open(file)?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.config.follow => Ok(None),
            Err(e) => Err(Stop::Failed(
                format!("cannot open {}: {e}", self.config.path.display()).into(),
            )),
        }
    }

    fn open(&self, file: File) -> Result<Open, Stop> {
        let identity = Identity::of(&file.metadata()?);
        let decoder = LineDecoder::new(
            self.config.format,
            self.ctx.schema().clone(),
            self.config.max_line_length,
        )
        .map_err(|problem| Stop::Failed(problem.into()))?;
        Ok(Open {
            reader: BufReader::with_capacity(64 * 1024, file),
            identity,
            head: None,
            lines: Lines::new(decoder, self.config.max_line_length),
            opened_at: whole_seconds(std::time::SystemTime::now()),
        })
    }

    /// The file beside the path (in its directory) that `part` describes, if it is
    /// still there, unchanged; not the one with identity `other`.
    fn locate(&self, part: &Part, other: Option<Identity>) -> Result<Option<Open>, Stop> {
        let Some(identity) = part.identity.filter(|&identity| Some(identity) != other) else {
            return Ok(None);
        };
        let Ok(entries) = std::fs::read_dir(self.directory()) else {
            return Ok(None);
        };
        for entry in entries.flatten() {
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if !metadata.is_file() || Identity::of(&metadata) != Some(identity) {
                continue;
            }
            let Ok(file) = File::open(entry.path()) else {
                continue;
            };
            let file = self.open(file)?;
            if file.identity == Some(identity) && part.problem(&file)?.is_none() {
                tracing::info!(
                    path = %self.config.path.display(),
                    found = %entry.path().display(),
                    "the file was rotated since the offset was reported; reading the rest of it"
                );
                return Ok(Some(file));
            }
        }
        Ok(None)
    }

    /// Positions `file` at the boundary `part` describes.
    fn seek(&self, file: &mut Open, part: &Part) -> Result<(), Stop> {
        // A header is read again from the file's start; bad input in it was reported
        // when it was first read.
        let lines = &mut file.lines;
        while !lines.decoder.has_header() && lines.position < part.position {
            if !lines.read_line(&mut file.reader)? {
                break;
            }
            let _ = lines.take_line();
        }
        file.reader.seek(SeekFrom::Start(part.position))?;
        lines.resume_at(Boundary {
            position: part.position,
            line: part.line,
        });
        Ok(())
    }

    fn grace_end(&self) -> Option<Instant> {
        Instant::now().checked_add(self.config.rotate_wait)
    }

    fn directory(&self) -> PathBuf {
        match self.config.path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    fn wait_for_file(&mut self) -> Result<Open, Stop> {
        tracing::info!(path = %self.config.path.display(), "waiting for the file to be created");
        loop {
            self.wait(None)?;
            if let Some(file) = self.open_path()? {
                return Ok(file);
            }
        }
    }

    /// Sends what is gathered, then waits for a notification, a poll interval, the
    /// instant `until`, or shutdown.
    fn wait(&mut self, until: Option<Instant>) -> Result<(), Stop> {
        self.flush()?;
        let timeout = match until {
            Some(until) => self
                .config
                .poll_interval
                .min(until.saturating_duration_since(Instant::now())),
            None => self.config.poll_interval,
        };
        let _ = self.woken.recv_timeout(timeout);
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
        let directory = self.directory();
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

    /// A new file is at the path: the current one becomes the rotated one, read for
    /// `rotate_wait` more, and the new one is read from its start. False if the new
    /// file went away before it could be opened.
    fn rotate(&mut self, files: &mut Files) -> Result<bool, Stop> {
        if files.rotated.is_some() {
            // Rotated again within the grace period: the older file is done.
            self.read_to_end(files, Which::Rotated)?;
            self.close_rotated(files)?;
        }
        let Some(new) = self.next_file()? else {
            return Ok(false);
        };
        self.flush()?;
        tracing::info!(
            path = %self.config.path.display(),
            rotate_wait = ?self.config.rotate_wait,
            "file rotated; reading the new file, and the old one for rotate_wait more"
        );
        let old = std::mem::replace(&mut files.current, new);
        files.rotated = Some(Rotated {
            file: old,
            until: self.grace_end(),
        });
        self.changed(files)?;
        Ok(true)
    }

    /// The file to read after the current one: the next one rotated away while the
    /// source was stopped, if any is left, else the one at the path.
    fn next_file(&mut self) -> Result<Option<Open>, Stop> {
        while let Some(path) = self.missed.pop_front() {
            match File::open(&path) {
                Ok(file) => {
                    tracing::info!(
                        path = %self.config.path.display(),
                        rotated = %path.display(),
                        "reading a file rotated away while the source was stopped"
                    );
                    return self.open(file).map(Some);
                }
                Err(error) => tracing::warn!(
                    path = %self.config.path.display(),
                    rotated = %path.display(),
                    %error,
                    "a file rotated away while the source was stopped is gone; its lines are not read"
                ),
            }
        }
        self.open_path()
    }

    /// The regular files beside the path named after it with a suffix (`app.log.1`,
    /// `app.log-20241129`, `app.log.2.gz`): what rotating it leaves behind.
    fn rotations_beside(&self) -> Vec<(PathBuf, Metadata)> {
        let (Some(name), Ok(entries)) = (self.config.path.file_name(), std::fs::read_dir(self.directory()))
        else {
            return Vec::new();
        };
        let name = name.as_encoded_bytes();
        entries
            .flatten()
            .filter(|entry| {
                let entry_name = entry.file_name();
                let entry_name = entry_name.as_encoded_bytes();
                entry_name.len() > name.len() && entry_name.starts_with(name)
            })
            .filter_map(|entry| Some((entry.path(), entry.metadata().ok().filter(Metadata::is_file)?)))
            .collect()
    }

    /// The files rotated away from the path after `moved` (the file the resume
    /// offset describes, found under another name) and before the file now at the
    /// path, oldest first, leaving out the files `known` identifies. A file is taken
    /// for one when it is among [the rotations beside the path](Self::rotations_beside)
    /// and was last modified no earlier than `moved`: its writer moved on to it when
    /// `moved` was rotated. Compressed ones (logrotate's `compress`) cannot be read as
    /// lines: they are named in a warning.
    fn rotated_between(
        &self,
        moved: &Open,
        known: &[Option<Identity>],
    ) -> Result<std::collections::VecDeque<PathBuf>, Stop> {
        let since = moved.reader.get_ref().metadata()?.modified().ok();
        let mut found = Vec::new();
        for (path, metadata) in self.rotations_beside() {
            let identity = Identity::of(&metadata);
            if identity.is_none() || identity == moved.identity || known.contains(&identity) {
                continue;
            }
            let Ok(modified) = metadata.modified() else {
                continue;
            };
            if since.is_some_and(|since| modified < since) {
                continue;
            }
            if path
                .file_name()
                .is_some_and(|name| is_compressed(name.as_encoded_bytes()))
            {
                tracing::warn!(
                    path = %self.config.path.display(),
                    rotated = %path.display(),
                    "a file rotated away while the source was stopped is compressed; its lines are not read"
                );
                continue;
            }
            found.push((modified, path));
        }
        found.sort();
        Ok(found.into_iter().map(|(_, path)| path).collect())
    }

    /// A copy of the file `part` describes beside the path (logrotate's
    /// `copytruncate` copies the file, then truncates it): another file whose content
    /// `part` describes (as long, same first bytes), modified no earlier than
    /// `not_before` if given. The most recently modified one if several are; never the
    /// file at the path (`at_path`).
    fn locate_copy(
        &self,
        part: &Part,
        at_path: Option<Identity>,
        not_before: Option<std::time::SystemTime>,
    ) -> Result<Option<Open>, Stop> {
        let mut candidates: Vec<(std::time::SystemTime, PathBuf)> = self
            .rotations_beside()
            .into_iter()
            .filter(|(_, metadata)| {
                let identity = Identity::of(metadata);
                metadata.len() >= part.position && (identity.is_none() || identity != at_path)
            })
            .filter_map(|(path, metadata)| Some((metadata.modified().ok()?, path)))
            .filter(|(modified, _)| not_before.is_none_or(|not_before| *modified >= not_before))
            .collect();
        candidates.sort();
        for (_, path) in candidates.into_iter().rev() {
            let Ok(file) = File::open(&path) else {
                continue;
            };
            let file = self.open(file)?;
            if part.content_problem(&file)?.is_none() {
                tracing::info!(
                    path = %self.config.path.display(),
                    found = %path.display(),
                    "the file was copied away and truncated since the offset was reported; reading the rest of the copy"
                );
                return Ok(Some(file));
            }
        }
        Ok(None)
    }

    /// The rotated file's grace period is over: its last line is read, and it is
    /// closed.
    fn close_rotated(&mut self, files: &mut Files) -> Result<(), Stop> {
        self.finish(files, Which::Rotated)?;
        self.flush()?;
        files.rotated = None;
        tracing::debug!(path = %self.config.path.display(), "done with the rotated file");
        self.changed(files)
    }

    /// If the file got shorter than what was read, it is read again from its start;
    /// what was read of the old content is finished first, as at the end of a file.
    fn truncated(&mut self, files: &mut Files) -> Result<bool, Stop> {
        let file = &mut files.current;
        let length = file.reader.get_ref().metadata()?.len();
        let read = file.lines.position + file.lines.line_length;
        if length >= read {
            return Ok(false);
        }
        tracing::warn!(path = %self.config.path.display(), length, position = read, "file truncated; reading it again from the start");
        // logrotate's `copytruncate` copies the file beside the path before it
        // truncates it: the copy holds the lines not read yet (and the partial line
        // whole, so what was read of it is dropped with the old content).
        let copy = self.copy_of_current(files)?;
        if copy.is_none() {
            self.finish(files, Which::Current)?;
        }
        self.flush()?;
        if let Some(copy) = copy {
            if files.rotated.is_some() {
                self.read_to_end(files, Which::Rotated)?;
                self.close_rotated(files)?;
            }
            // Nothing more will be written to the copy: read to its end and closed.
            files.rotated = Some(Rotated {
                file: copy,
                until: Some(Instant::now()),
            });
        }
        let file = &mut files.current;
        file.reader.seek(SeekFrom::Start(0))?;
        file.lines.restart();
        file.head = None;
        self.changed(files)?;
        Ok(true)
    }

    /// The copy beside the path of what the current file held up to where it was read
    /// (see [`locate_copy`](Self::locate_copy)), positioned there. `None` unless the
    /// current file's first bytes were hashed before it was truncated: hashing them
    /// now would read the new content. Only a file modified since the current one was
    /// opened is taken: an older generation that happens to begin with the same bytes
    /// (a startup banner) is not the copy.
    fn copy_of_current(&mut self, files: &mut Files) -> Result<Option<Open>, Stop> {
        let current = &mut files.current;
        let boundary = current.lines.boundary;
        if current
            .head
            .is_none_or(|(length, _)| length < boundary.position.min(HEAD_BYTES))
        {
            return Ok(None);
        }
        let part = current.part(boundary)?;
        let (identity, opened_at) = (current.identity, current.opened_at);
        let Some(mut copy) = self.locate_copy(&part, identity, Some(opened_at))? else {
            return Ok(None);
        };
        self.seek(&mut copy, &part)?;
        Ok(Some(copy))
    }

    /// After a change of the open files (everything before it sent): an offset for the
    /// new state, which is also where a stop now resumes.
    fn changed(&mut self, files: &mut Files) -> Result<(), Stop> {
        self.sent = Some(Sent {
            snapshot: files.snapshot(),
            reported: false,
        });
        self.report(files)
    }

    /// Sends every complete line of the file up to its end.
    fn read_to_end(&mut self, files: &mut Files, which: Which) -> Result<(), Stop> {
        loop {
            let Some(file) = files.get(which) else {
                return Ok(());
            };
            if !file.lines.read_line(&mut file.reader)? {
                break;
            }
            let decoded = file.lines.take_line();
            self.lines_since_offset += 1;
            if let Some(decoded) = decoded {
                let after = files.snapshot();
                self.push(Unsent::Message(decoded), after)?;
            }
            if self.lines_since_offset >= self.config.offset_every {
                self.report(files)?;
            }
        }
        if self.lines_since_offset > 0 {
            self.report(files)?;
        }
        Ok(())
    }

    /// At the end of a file that will not grow (static mode, rotated away, truncated):
    /// its last line and open record.
    fn finish(&mut self, files: &mut Files, which: Which) -> Result<(), Stop> {
        let Some(file) = files.get(which) else {
            return Ok(());
        };
        let messages = file.lines.finish();
        let after = files.snapshot();
        for decoded in messages {
            self.push(Unsent::Message(decoded), after)?;
        }
        Ok(())
    }

    fn push(&mut self, item: Unsent, snapshot: Snapshot) -> Result<(), Stop> {
        let reported = matches!(item, Unsent::Offset(_));
        self.unsent.push(item);
        self.unsent_after.push(Sent { snapshot, reported });
        if self.unsent.len() >= SEND_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Sends what was gathered, in order, and remembers where the last item sent left
    /// reading.
    fn flush(&mut self) -> Result<(), Stop> {
        if self.unsent.is_empty() {
            return Ok(());
        }
        let ctx = &self.ctx;
        let path = &self.shown_path;
        let unsent = &mut self.unsent;
        let mut count: usize = 0;
        let result: Result<(), SendError> = self.handle.block_on(async {
            for item in unsent.drain(..) {
                match item {
                    Unsent::Message(Decoded {
                        message,
                        line,
                        arrived,
                    }) => {
                        // The location is made only if the line is rejected.
                        let locate = || Location::file(path.clone(), line);
                        match arrived {
                            Some(raw) => ctx.send_decoded(message, raw, locate).await?,
                            None => ctx.send_located(message, locate).await?,
                        }
                    }
                    Unsent::Offset(offset) => ctx.report_offset(offset).await?,
                }
                count += 1;
            }
            Ok(())
        });
        self.unsent.clear();
        if let Some(&sent) = count.checked_sub(1).and_then(|last| self.unsent_after.get(last)) {
            self.sent = Some(sent);
        }
        self.unsent_after.clear();
        Ok(result?)
    }

    /// Gathers an offset for where reading is.
    fn report(&mut self, files: &mut Files) -> Result<(), Stop> {
        self.lines_since_offset = 0;
        let snapshot = files.snapshot();
        let offset = self.offset(files, snapshot)?;
        // With no message since the last offset gathered, that one says nothing more.
        if matches!(self.unsent.last(), Some(Unsent::Offset(_))) {
            self.unsent.pop();
            self.unsent_after.pop();
        }
        self.push(Unsent::Offset(offset), snapshot)
    }

    /// The offset for `snapshot`: the file at the path, and the rotated one if it is
    /// still read.
    fn offset(&self, files: &mut Files, snapshot: Snapshot) -> io::Result<Json> {
        let mut offset = files.current.offset(snapshot.current)?;
        offset["path"] = self.config.path.display().to_string().into();
        if let (Some(rotated), Some(boundary)) = (&mut files.rotated, snapshot.rotated) {
            offset["rotated"] = rotated.file.offset(boundary)?;
        }
        Ok(offset)
    }

    /// Reading stopped early: reports where the last message sent left it, so the
    /// committed offset covers exactly the committed rows.
    fn report_stop(&mut self, files: &mut Files) {
        let Some(sent) = self.sent.filter(|sent| !sent.reported) else {
            return;
        };
        let path = self.config.path.display().to_string();
        let offset = match self.offset(files, sent.snapshot) {
            Ok(offset) => offset,
            Err(error) => {
                tracing::warn!(path, %error, "cannot compute the offset where reading stopped; a resume will read some lines again");
                return;
            }
        };
        if let Err(error) = self.handle.block_on(self.ctx.report_offset(offset)) {
            tracing::warn!(path, %error, "cannot report the offset where reading stopped; a resume will read some lines again");
        }
    }
}

/// One file's part of a resume offset.
struct Part {
    position: u64,
    line: u64,
    identity: Option<Identity>,
    head_length: u64,
    head_hash: String,
}

impl Part {
    fn to_json(&self) -> Json {
        let mut offset = json!({
            "position": self.position,
            "line": self.line,
            "head_length": self.head_length,
            "head_hash": self.head_hash,
        });
        if let Some(identity) = self.identity {
            offset["device"] = identity.device.into();
            offset["inode"] = identity.inode.into();
        }
        offset
    }

    fn parse(offset: &Json) -> Result<Part, Stop> {
        let number = |name: &str| offset.get(name).and_then(Json::as_u64);
        let Some(position) = number("position") else {
            return Err(Stop::Failed(
                format!("resume offset {offset} was not reported by a FileSource (no `position`)").into(),
            ));
        };
        Ok(Part {
            position,
            line: number("line").unwrap_or(0),
            identity: match (number("device"), number("inode")) {
                (Some(device), Some(inode)) => Some(Identity { device, inode }),
                _ => None,
            },
            head_length: number("head_length").unwrap_or(0),
            head_hash: offset
                .get("head_hash")
                .and_then(Json::as_str)
                .unwrap_or("")
                .to_owned(),
        })
    }

    /// Why this part does not describe `file` (any more), if it does not.
    fn problem(&self, file: &Open) -> io::Result<Option<&'static str>> {
        if self.identity.is_some() && file.identity.is_some() && self.identity != file.identity {
            return Ok(Some("it was replaced (another device/inode)"));
        }
        self.content_problem(file)
    }

    /// Why `file`'s content is not what this part describes (whatever file it is), if
    /// it is not: shorter than the position, or other first bytes.
    fn content_problem(&self, file: &Open) -> io::Result<Option<&'static str>> {
        let length = file.reader.get_ref().metadata()?.len();
        Ok(if length < self.position || length < self.head_length {
            Some("it is shorter than the offset (truncated)")
        } else if self.head_length > HEAD_BYTES
            || format!("{:016x}", head_hash(file.reader.get_ref(), self.head_length)?) != self.head_hash
        {
            Some("its first bytes changed (rewritten)")
        } else {
            None
        })
    }
}

/// `time` to the whole second below: what a file system with coarse times records.
fn whole_seconds(time: std::time::SystemTime) -> std::time::SystemTime {
    let since_epoch = time.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    std::time::UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs())
}

/// What a file that is not a regular file is, for an error message.
fn file_kind(metadata: &Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let kind = metadata.file_type();
        if kind.is_fifo() {
            return "a FIFO";
        } else if kind.is_socket() {
            return "a socket";
        } else if kind.is_char_device() || kind.is_block_device() {
            return "a device";
        }
    }
    if metadata.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}

/// Whether a file name ends as the compressors logrotate can run name their output.
fn is_compressed(name: &[u8]) -> bool {
    const EXTENSIONS: [&[u8]; 8] = [
        b".gz", b".bz2", b".xz", b".zst", b".lz4", b".lzma", b".Z", b".zip",
    ];
    EXTENSIONS.iter().any(|extension| name.ends_with(extension))
}

/// FNV-1a of the first `length` bytes of `file` (a stable hash: it is persisted).
fn head_hash(file: &File, length: u64) -> io::Result<u64> {
    let mut head = vec![0; usize::try_from(length.min(HEAD_BYTES)).unwrap_or(0)];
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

/// Reads `chunks` as a followed file sees them appended, then finishes it as at the
/// end of a static file: every message, with the line its record starts on. Returns the
/// most bytes held at once for the line and record being read.
///
/// # Errors
///
/// When the format cannot be read.
#[cfg(any(test, fuzzing))]
pub(crate) fn read_chunks(
    format: FileFormat,
    schema: intake_core::Schema,
    max_line_length: usize,
    chunks: &[&[u8]],
    mut on_message: impl FnMut(u64, intake_core::Message),
) -> Result<usize, String> {
    let decoder = LineDecoder::new(format, schema, max_line_length)?;
    let mut lines = Lines::new(decoder, max_line_length);
    let mut input = io::Cursor::new(Vec::new());
    let mut held = 0;
    for chunk in chunks {
        input.get_mut().extend_from_slice(chunk);
        loop {
            let complete = lines.read_line(&mut input).map_err(|e| e.to_string())?;
            held = held.max(lines.held());
            if !complete {
                break;
            }
            if let Some(decoded) = lines.take_line() {
                on_message(decoded.line, decoded.message);
            }
            held = held.max(lines.held());
        }
    }
    for decoded in lines.finish() {
        on_message(decoded.line, decoded.message);
    }
    Ok(held)
}
