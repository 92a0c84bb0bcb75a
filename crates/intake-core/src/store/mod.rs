//! The on-disk store of one persistent table: a checksummed commit log plus snapshots.
//!
//! # Layout
//!
//! A table's storage is the directory `<dir>/<persistent_id>/`:
//!
//! | file | holds |
//! |---|---|
//! | `LOCK` | an exclusive lock held while the table is open, so that a second process fails clearly |
//! | `schema.json` | the schema the table was stored with (columns: name, type, nullable, primary key, default), written once, compared on every open |
//! | `segment-<n>.log` | log segment `n` (20 digits): one record per commit, in order |
//! | `snapshot-<n>.snap` | the table's state after every record of the segments before `n` |
//! | `*.tmp` | a write a crash interrupted; deleted on open |
//!
//! Restoring reads the newest snapshot `n` and replays the segments `n`, `n + 1`, ….
//! Older segments are kept only while a sink still needs their commits.
//!
//! # Format
//!
//! Every file starts with magic bytes and a format version (u32, now 1); integers are
//! little-endian. A segment's header is 40 bytes: `INTKLOG\0`, the version, a CRC-32 of
//! the rest of the header, the segment number (u64), and the time of the last commit
//! before the segment (a presence u64 and the time u64). Then come records, each framed
//! as `[length u32][crc32 u32][payload]`, the CRC covering the length bytes and the
//! payload. A record's payload is: the commit's time (a presence byte, then u64),
//! `generated` (varint: the highest generated key handed out), the offsets (varint
//! count, then per source its name and its offset as binary JSON), and the changes
//! (varint count, then retractions with their old rows before insertions, each a keyed
//! row). Values, keys and rows are encoded as described in `codec.rs`: a tag byte
//! per value, varints for ints and lengths, raw bits for floats and timestamps, and no
//! key for rows whose key is their primary-key values. Snapshot files use the same
//! framing (see `snapshot.rs`).
//!
//! # Crash safety
//!
//! A commit's record is appended with one write and, under [`SyncPolicy::EveryCommit`],
//! synced (`fdatasync`) before `append` returns. A crash can so only tear the last
//! record of the last segment: on open such a tail (short header, short payload,
//! checksum mismatch, with no valid record after it) is cut off with a warning.
//! Damage anywhere else (a bad record followed by valid ones, any damage in an earlier
//! segment, a snapshot failing its checksum or missing its end) is an error naming the
//! file, never a silently smaller table. New files (segments, snapshots,
//! `schema.json`) are written as a temporary file, synced, renamed and the directory
//! synced, so they exist complete or not at all.

mod codec;
mod files;
mod schema_file;
mod snapshot;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use self::codec::{Decoder, Fault, RowShape};
use self::files::{FRAME_HEADER, Frame, FrameReader};
pub(crate) use self::snapshot::{SnapshotDone, SnapshotJob, SnapshotRows};
use crate::change::{Change, ChangeBatch, Offsets, Time};
use crate::row::{Key, Row};
use crate::schema::Schema;

/// The version written in every file's header; files of another version are refused.
const FORMAT_VERSION: u32 = 1;
const SEGMENT_MAGIC: &[u8; 8] = b"INTKLOG\0";
const SEGMENT_HEADER: u64 = 40;
/// Compaction is not worth it below this much log, whatever the snapshot's size.
const DEFAULT_MIN_SNAPSHOT_BYTES: u64 = 8 << 20;
const MAX_ID_LEN: usize = 128;

/// When a persistent table's commits become durable.
///
/// # Guarantees
///
/// - [`EveryCommit`](Self::EveryCommit) (the default): each commit's record is synced to
///   disk (`fdatasync`) before any subscriber or sink sees the commit. A crash loses
///   no commit that anyone saw.
/// - [`Interval`](Self::Interval): records are written at once but synced together at
///   most this long after the first unsynced one. A crash of the process loses nothing
///   (the operating system holds the writes); a crash of the machine or a power loss
///   can lose the commits of the last interval, which subscribers may already have
///   seen. The table restarts consistently from the last synced commit, and its
///   sources resume from that commit's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SyncPolicy {
    /// Sync every commit before delivering it.
    #[default]
    EveryCommit,
    /// Sync at most this long after the first unsynced commit.
    Interval(Duration),
}

/// Why a persistent table could not be opened, restored or written.
///
/// Every variant that concerns a file names it, so that it can be inspected, restored
/// from a backup or moved away.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PersistenceError {
    /// A persistent id that cannot name a directory safely.
    #[error(
        "persistent id `{id}` is invalid: {reason}; use 1 to 128 ASCII letters, digits, `_`, `-` and `.`, not starting with `.`"
    )]
    InvalidId {
        /// The id given.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Another open store (in this process or another) holds the table's lock. A
    /// store of this process that is being released (a pipeline shutting down in the
    /// background after its `run` future was dropped) is waited for, up to 2 s.
    #[error(
        "{path} is locked: the table is open elsewhere (another process, or another pipeline in this one); stop that one first, or give each its own storage directory"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A file operation failed.
    #[error("could not {action} {path}: {source}")]
    Io {
        /// What was being done (`write`, `sync`, `rename`, …).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A file's content is damaged: a checksum mismatch, a truncated snapshot, a bad
    /// record followed by valid ones, a missing log segment. Nothing is guessed: restore
    /// the file from a backup, or move the table's directory away to start it afresh.
    #[error(
        "{path} is damaged{}: {detail}; restore it from a backup, or move the table's directory away to start the table afresh",
        offset.map(|o| format!(" at byte {o}")).unwrap_or_default()
    )]
    Corrupt {
        /// The damaged file (or the table's directory, for a missing file).
        path: PathBuf,
        /// Where in the file, when known.
        offset: Option<u64>,
        /// What is wrong.
        detail: String,
    },
    /// A file was written in a format version this version of intake does not read.
    #[error(
        "{path} has format version {found}, but this version of intake reads version {supported}; use the intake version that wrote it"
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
        /// The version this intake reads and writes.
        supported: u32,
    },
    /// The table's schema differs from the one it was stored with.
    #[error(
        "the schema of table `{table}` differs from the one stored in {path}: {differences}; restore the old schema, or move the table's directory away to start it afresh"
    )]
    SchemaChanged {
        /// The table's persistent id.
        table: String,
        /// The stored schema.
        path: PathBuf,
        /// What differs: columns added, removed or retyped, the key changed, ….
        differences: String,
    },
    /// Commits were asked for that the log no longer holds: they were compacted into a
    /// snapshot.
    #[error(
        "the log in {path} keeps the commits after time {} only, but the commits after {} were asked for",
        show_time(*kept_after),
        show_time(*after)
    )]
    NotRetained {
        /// The table's directory.
        path: PathBuf,
        /// The time the commits were asked for after (`none`: from the first).
        after: Option<Time>,
        /// The log holds every commit after this time.
        kept_after: Option<Time>,
    },
    /// A record's time is before the previous record's, or a commit with changes does
    /// not advance the time: the store refuses to write a log it could not replay.
    #[error(
        "a commit at time {} cannot follow time {} in {path}: times must increase with every commit that changes the table",
        show_time(*time),
        show_time(*previous)
    )]
    TimeOrder {
        /// The log segment.
        path: PathBuf,
        /// The time of the last record.
        previous: Option<Time>,
        /// The time refused.
        time: Option<Time>,
    },
    /// One commit's record is larger than a frame can hold (4 GiB).
    #[error(
        "a record of {bytes} bytes for {path} exceeds the 4 GiB a record can hold; commit in smaller batches"
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The record's size.
        bytes: u64,
    },
    /// Storage work running on a blocking thread did not complete (it panicked, or the
    /// runtime shut down).
    #[error("storage work on a background thread did not complete: {0}")]
    Background(String),
    /// An earlier write or sync of this log failed, so what is on disk is unknown; no
    /// more records are accepted. Restarting recovers what is durable.
    #[error("an earlier write or sync of {path} failed; restart to recover the table from what is durable")]
    Poisoned {
        /// The log segment.
        path: PathBuf,
    },
}

/// A time for a message: its number, or `none`.
pub(crate) fn show_time(time: Option<Time>) -> String {
    time.map_or_else(|| "none".to_owned(), |t| t.to_string())
}

impl PersistenceError {
    fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        PersistenceError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

/// A decoding fault inside a frame whose payload starts at `base` in the file at `path`.
fn fault_at(path: &Path, base: u64, fault: Fault) -> PersistenceError {
    PersistenceError::Corrupt {
        path: path.to_owned(),
        offset: Some(base + fault.at as u64),
        detail: fault.detail.into_owned(),
    }
}

/// Checks that `id` can name a directory on every platform without escaping `dir`.
fn validate_id(id: &str) -> Result<(), PersistenceError> {
    let reason = if id.is_empty() {
        "it is empty"
    } else if id.len() > MAX_ID_LEN {
        "it is longer than 128 bytes"
    } else if id.starts_with('.') {
        "it starts with `.`"
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        "it holds a character other than ASCII letters, digits, `_`, `-` and `.`"
    } else {
        return Ok(());
    };
    Err(PersistenceError::InvalidId {
        id: id.to_owned(),
        reason,
    })
}

/// A table's rows keyed for lookups, with values of the caller's choosing.
pub(crate) use crate::rowmap::RowMap;

/// A table's state read back by [`TableStore::open`] (rows as a list) or
/// [`TableStore::open_into`] (rows as a [`RowMap`]).
#[derive(Debug)]
pub(crate) struct Restored<R = Vec<(Key, Row)>> {
    /// The last commit's time; `None` when no commit was stored.
    pub(crate) time: Option<Time>,
    /// The table's rows after the last durable record.
    pub(crate) rows: R,
    /// The offsets as of that record.
    pub(crate) offsets: Offsets,
    /// The highest generated key id handed out (tables without primary key).
    pub(crate) generated: u64,
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    /// The time of the last record before this segment.
    start_time: Option<Time>,
    /// Bytes in the file (header included) that hold whole records.
    len: u64,
}

/// One decoded log record.
struct Record {
    time: Option<Time>,
    generated: u64,
    offsets: Offsets,
    changes: Vec<Change>,
}

/// The store of one persistent table. See the [module docs](self) for the format.
#[derive(Debug)]
pub(crate) struct TableStore {
    dir: PathBuf,
    schema: Schema,
    shape: RowShape,
    sync: SyncPolicy,
    /// Held (and so locked) for as long as the store is open.
    _lock: DirLock,
    /// The last segment, opened for appending.
    file: File,
    /// Retained segments, consecutive, the last one being appended to.
    segments: BTreeMap<u64, Segment>,
    /// Snapshot files present, oldest first; the last one is what a restart loads.
    snapshots: Vec<u64>,
    /// Size of the newest finished snapshot.
    snapshot_bytes: u64,
    /// Record bytes appended since the last snapshot started.
    since_snapshot: u64,
    min_snapshot_bytes: u64,
    /// What the last record said.
    time: Option<Time>,
    offsets: Offsets,
    generated: u64,
    /// Reused for encoding records.
    buf: Vec<u8>,
    unsynced: bool,
    poisoned: bool,
}

impl std::fmt::Debug for RowShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowShape").finish_non_exhaustive()
    }
}

impl TableStore {
    /// Opens the table `id` under `dir`, creating `<dir>/<id>/` if needed, and restores
    /// its state: the newest snapshot plus every log record after it.
    ///
    /// Takes an exclusive lock on `<dir>/<id>/LOCK` for as long as the store lives,
    /// deletes leftover temporary files, and cuts off a torn last record (with a
    /// warning naming the file and offset).
    ///
    /// # Errors
    ///
    /// [`PersistenceError::InvalidId`], [`Locked`](PersistenceError::Locked) when the
    /// table is open elsewhere, [`SchemaChanged`](PersistenceError::SchemaChanged),
    /// [`Corrupt`](PersistenceError::Corrupt) for damage other than a torn tail,
    /// [`UnsupportedVersion`](PersistenceError::UnsupportedVersion), and
    /// [`Io`](PersistenceError::Io).
    #[cfg(test)]
    pub(crate) fn open(
        dir: &Path,
        id: &str,
        schema: &Schema,
        sync: SyncPolicy,
    ) -> Result<(TableStore, Restored), PersistenceError> {
        let (store, restored) = Self::open_into(dir, id, schema, sync, |row| row)?;
        let Restored {
            time,
            rows,
            offsets,
            generated,
        } = restored;
        let rows = rows
            .view()
            .iter()
            .map(|(key, row)| (key.clone(), row.clone()))
            .collect();
        Ok((
            store,
            Restored {
                time,
                rows,
                offsets,
                generated,
            },
        ))
    }

    /// As [`open`](Self::open), with the rows restored straight into the map a table
    /// keeps them in (each row wrapped by `wrap`), so that a large table is hashed
    /// once on its way back into memory.
    pub(crate) fn open_into<V: Clone>(
        dir: &Path,
        id: &str,
        schema: &Schema,
        sync: SyncPolicy,
        wrap: impl Fn(Row) -> V,
    ) -> Result<(TableStore, Restored<RowMap<V>>), PersistenceError> {
        validate_id(id)?;
        let dir = dir.join(id);
        fs::create_dir_all(&dir).map_err(|e| PersistenceError::io("create", &dir, e))?;
        let lock = lock(&dir)?;
        let listing = files::list_and_clean(&dir)?;
        schema_file::check_or_write(&dir, id, schema)?;
        let shape = RowShape::new(schema);

        let (base, mut state) = match listing.snapshots.last() {
            Some(&number) => {
                let path = dir.join(files::snapshot_name(number));
                let loaded = snapshot::load(&path, number, &shape)?;
                (number, loaded)
            }
            None => (
                0,
                snapshot::Loaded {
                    time: None,
                    rows: Vec::new(),
                    offsets: Offsets::new(),
                    generated: 0,
                    bytes: 0,
                },
            ),
        };

        // The segments from `base` on rebuild the state; they must all be there.
        let live: Vec<u64> = listing.segments.iter().copied().filter(|&n| n >= base).collect();
        let missing = |detail: String| PersistenceError::Corrupt {
            path: dir.clone(),
            offset: None,
            detail,
        };
        match live.first() {
            Some(&first) if first != base => {
                return Err(missing(format!(
                    "log segment {} is missing (the log continues at {})",
                    files::segment_name(base),
                    files::segment_name(first)
                )));
            }
            None if !listing.snapshots.is_empty() => {
                return Err(missing(format!(
                    "log segment {} is missing after {}",
                    files::segment_name(base),
                    files::snapshot_name(base)
                )));
            }
            _ => {}
        }
        if let Some(gap) = live.windows(2).find(|w| w[1] != w[0] + 1) {
            return Err(missing(format!(
                "log segment {} is missing",
                files::segment_name(gap[0] + 1)
            )));
        }

        let mut segments = BTreeMap::new();
        // Older segments are kept for sinks behind the table; only the consecutive run
        // just before `base` can be replayed, so anything older is of no use.
        let mut older = listing.segments.iter().copied().filter(|&n| n < base).rev();
        let mut expected = base;
        for number in older.by_ref() {
            if number + 1 != expected {
                let path = dir.join(files::segment_name(number));
                tracing::warn!(path = %path.display(), "deleting a log segment that a gap separates from the rest of the log");
                fs::remove_file(&path).map_err(|e| PersistenceError::io("delete", &path, e))?;
                continue;
            }
            let path = dir.join(files::segment_name(number));
            let mut file = File::open(&path).map_err(|e| PersistenceError::io("open", &path, e))?;
            let len = file
                .metadata()
                .map_err(|e| PersistenceError::io("read", &path, e))?
                .len();
            let start_time = read_segment_header(&mut file, &path, number)?;
            segments.insert(number, Segment { start_time, len });
            expected = number;
        }

        let mut since_snapshot = 0;
        let mut table: Option<RowMap<V>> = None;
        let last = live.last().copied();
        for &number in &live {
            let path = dir.join(files::segment_name(number));
            let is_last = Some(number) == last;
            let segment = replay_segment(&path, number, is_last, &shape, |record, offset| {
                apply(&mut state, &mut table, record, &wrap).map_err(|detail| PersistenceError::Corrupt {
                    path: path.clone(),
                    offset: Some(offset),
                    detail,
                })
            })?;
            since_snapshot += segment.len - SEGMENT_HEADER;
            segments.insert(number, segment);
        }
        let rows = match table {
            Some(table) => table,
            None => {
                let count = state.rows.len();
                let rows = into_map(std::mem::take(&mut state.rows), &wrap);
                if rows.len() != count {
                    return Err(PersistenceError::Corrupt {
                        path: dir.join(files::snapshot_name(base)),
                        offset: None,
                        detail: "the snapshot holds a key twice".to_owned(),
                    });
                }
                rows
            }
        };

        let current = match last {
            Some(number) => number,
            None => {
                create_segment(&dir, 0, None)?;
                segments.insert(
                    0,
                    Segment {
                        start_time: None,
                        len: SEGMENT_HEADER,
                    },
                );
                0
            }
        };
        let path = dir.join(files::segment_name(current));
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| PersistenceError::io("open", &path, e))?;

        // A crash between writing a snapshot and deleting the one before it leaves
        // both; only the newest is ever read, and it was just read whole.
        let mut snapshots = listing.snapshots;
        let newest = snapshots.pop();
        for old in snapshots {
            let path = dir.join(files::snapshot_name(old));
            fs::remove_file(&path).map_err(|e| PersistenceError::io("delete", &path, e))?;
        }

        let store = TableStore {
            dir,
            schema: schema.clone(),
            shape,
            sync,
            _lock: lock,
            file,
            segments,
            snapshots: newest.into_iter().collect(),
            snapshot_bytes: state.bytes,
            since_snapshot,
            min_snapshot_bytes: DEFAULT_MIN_SNAPSHOT_BYTES,
            time: state.time,
            offsets: state.offsets.clone(),
            generated: state.generated,
            buf: Vec::new(),
            unsynced: false,
            poisoned: false,
        };
        let restored = Restored {
            time: state.time,
            rows,
            offsets: state.offsets,
            generated: state.generated,
        };
        Ok((store, restored))
    }

    /// Sets the least log size (bytes since the last snapshot) at which
    /// [`wants_snapshot`](Self::wants_snapshot) says yes; 8 MiB by default.
    pub(crate) fn set_min_snapshot_bytes(&mut self, bytes: u64) {
        self.min_snapshot_bytes = bytes;
    }

    fn current(&self) -> (u64, PathBuf) {
        let number = self.segments.keys().next_back().copied().unwrap_or(0);
        (number, self.dir.join(files::segment_name(number)))
    }

    /// Appends one commit's record: its time (`None` while the table has no commit:
    /// an offsets-only record), its changes (retractions with their old rows, then
    /// insertions; may be empty when only offsets moved), the offsets as of the commit
    /// and the highest generated key id handed out. Under [`SyncPolicy::EveryCommit`]
    /// the record is durable when this returns.
    ///
    /// # Errors
    ///
    /// [`TimeOrder`](PersistenceError::TimeOrder) if `time` is before the last record's,
    /// or a record with changes does not advance it; [`TooLarge`](PersistenceError::TooLarge);
    /// [`Io`](PersistenceError::Io) when the write or sync fails, after which a failed
    /// sync leaves the store [`Poisoned`](PersistenceError::Poisoned) (a failed write is
    /// undone if possible, else poisons it too).
    pub(crate) fn append(
        &mut self,
        time: Option<Time>,
        changes: &[Change],
        offsets: &Offsets,
        generated: u64,
    ) -> Result<(), PersistenceError> {
        let (number, path) = self.current();
        if self.poisoned {
            return Err(PersistenceError::Poisoned { path });
        }
        if time < self.time || (!changes.is_empty() && (time == self.time || time.is_none())) {
            return Err(PersistenceError::TimeOrder {
                path,
                previous: self.time,
                time,
            });
        }
        let buf = &mut self.buf;
        buf.clear();
        buf.resize(FRAME_HEADER, 0);
        codec::put_time(buf, time);
        codec::put_varint(buf, generated);
        codec::put_offsets(buf, offsets);
        codec::put_varint(buf, changes.len() as u64);
        for change in changes {
            codec::put_change(buf, &self.schema, change);
        }
        files::seal_frame(buf).map_err(|bytes| PersistenceError::TooLarge {
            path: path.clone(),
            bytes: bytes as u64,
        })?;
        let Some(segment) = self.segments.get_mut(&number) else {
            return Err(PersistenceError::Poisoned { path });
        };
        if let Err(error) = self.file.write_all(buf) {
            // A partial record followed by later ones would read as damage in the middle
            // of the log; cut it off, or refuse further appends if that fails too.
            if self.file.set_len(segment.len).is_err() {
                self.poisoned = true;
            }
            return Err(PersistenceError::io("write", &path, error));
        }
        segment.len += buf.len() as u64;
        self.since_snapshot += buf.len() as u64;
        self.time = time;
        self.offsets = offsets.clone();
        self.generated = generated;
        self.unsynced = true;
        if self.sync == SyncPolicy::EveryCommit {
            self.sync()?;
        }
        Ok(())
    }

    /// Makes every appended record durable (`fdatasync`); does nothing when nothing is
    /// unsynced. [`SyncPolicy::Interval`] calls this on its timer.
    ///
    /// # Errors
    ///
    /// [`Io`](PersistenceError::Io) when the sync fails; the store is then
    /// [`Poisoned`](PersistenceError::Poisoned), since after a failed `fsync` the
    /// operating system may have dropped the writes.
    pub(crate) fn sync(&mut self) -> Result<(), PersistenceError> {
        if self.poisoned {
            return Err(PersistenceError::Poisoned {
                path: self.current().1,
            });
        }
        if !self.unsynced {
            return Ok(());
        }
        if let Err(error) = self.file.sync_data() {
            self.poisoned = true;
            return Err(PersistenceError::io("sync", &self.current().1, error));
        }
        self.unsynced = false;
        Ok(())
    }

    /// Whether compaction is due: the log written since the last snapshot started is
    /// larger than the last snapshot and than the minimum (see
    /// [`set_min_snapshot_bytes`](Self::set_min_snapshot_bytes)). So the log to replay
    /// on a restart stays about as large as the table, however long the table has run.
    pub(crate) fn wants_snapshot(&self) -> bool {
        self.since_snapshot > self.snapshot_bytes.max(self.min_snapshot_bytes)
    }

    /// Starts a snapshot of `rows`, which must be the table's state as of the last
    /// appended record (the job takes that record's time, offsets and `generated`).
    /// Syncs the log and rolls it to a new segment, so appends continue while the
    /// returned job writes the snapshot; run the job (on any thread), then pass what it
    /// returns to [`finish_snapshot`](Self::finish_snapshot). A job that fails leaves
    /// the log complete: nothing is lost, and a later snapshot replaces it.
    ///
    /// # Errors
    ///
    /// [`Io`](PersistenceError::Io) when syncing the log or creating the new segment
    /// fails.
    pub(crate) fn start_snapshot(
        &mut self,
        rows: impl SnapshotRows + 'static,
    ) -> Result<SnapshotJob, PersistenceError> {
        // The new segment's existence says the old one is complete, and open relies on
        // that: only the last segment may have a torn tail.
        self.sync()?;
        let (current, _) = self.current();
        let number = current + 1;
        create_segment(&self.dir, number, self.time)?;
        let path = self.dir.join(files::segment_name(number));
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| PersistenceError::io("open", &path, e))?;
        self.file = file;
        self.segments.insert(
            number,
            Segment {
                start_time: self.time,
                len: SEGMENT_HEADER,
            },
        );
        self.since_snapshot = 0;
        Ok(SnapshotJob {
            path: self.dir.join(files::snapshot_name(number)),
            schema: self.schema.clone(),
            number,
            time: self.time,
            rows: Box::new(rows),
            offsets: self.offsets.clone(),
            generated: self.generated,
        })
    }

    /// Takes a finished snapshot into use: deletes the snapshots before it and the log
    /// segments it makes unnecessary, except those holding records with a time after
    /// `keep_after` (sinks still behind the table replay those with
    /// [`replay`](Self::replay)); `None` keeps nothing extra. A snapshot older than the
    /// newest finished one is deleted instead.
    ///
    /// # Errors
    ///
    /// [`Io`](PersistenceError::Io) when a deletion fails; the files left are harmless
    /// and deleted by a later snapshot.
    pub(crate) fn finish_snapshot(
        &mut self,
        done: SnapshotDone,
        keep_after: Option<Time>,
    ) -> Result<(), PersistenceError> {
        if self.snapshots.last().is_some_and(|&newest| newest >= done.number) {
            return fs::remove_file(&done.path).map_err(|e| PersistenceError::io("delete", &done.path, e));
        }
        self.snapshots.push(done.number);
        self.snapshot_bytes = done.bytes;
        while self.snapshots.len() > 1 {
            let old = self.snapshots[0];
            let path = self.dir.join(files::snapshot_name(old));
            fs::remove_file(&path).map_err(|e| PersistenceError::io("delete", &path, e))?;
            self.snapshots.remove(0);
        }
        while let Some((&number, _)) = self.segments.first_key_value() {
            if number >= done.number {
                break;
            }
            // The segment's last record is the newest before the next segment starts.
            let last_time = self.segments.get(&(number + 1)).and_then(|next| next.start_time);
            if keep_after.is_some() && last_time > keep_after {
                break;
            }
            let path = self.dir.join(files::segment_name(number));
            fs::remove_file(&path).map_err(|e| PersistenceError::io("delete", &path, e))?;
            self.segments.remove(&number);
        }
        files::sync_dir(&self.dir)
    }

    /// The commits with a time in `(after, upto]` (`after` `None`: from the first), read
    /// back from the log as the batches subscribers received: each with its changes
    /// and the offsets as of its record. Records that changed nothing are skipped, as
    /// no subscriber saw them. For a sink resuming behind the table.
    ///
    /// # Errors
    ///
    /// [`NotRetained`](PersistenceError::NotRetained), saying which times the log still
    /// holds, when it no longer reaches back to `after`; [`Corrupt`](PersistenceError::Corrupt)
    /// and [`Io`](PersistenceError::Io) when reading fails.
    pub(crate) fn replay(
        &self,
        after: Option<Time>,
        upto: Time,
    ) -> Result<Vec<ChangeBatch>, PersistenceError> {
        let kept_after = self.segments.values().next().and_then(|s| s.start_time);
        if after < kept_after {
            return Err(PersistenceError::NotRetained {
                path: self.dir.clone(),
                after,
                kept_after,
            });
        }
        // The newest segment that starts at or before `after` holds the first commit
        // after it.
        let first = self
            .segments
            .iter()
            .rev()
            .find(|(_, segment)| segment.start_time <= after)
            .map_or(0, |(&number, _)| number);
        let mut batches = Vec::new();
        let mut payload = Vec::new();
        for (&number, segment) in self.segments.range(first..) {
            let path = self.dir.join(files::segment_name(number));
            let mut file = File::open(&path).map_err(|e| PersistenceError::io("open", &path, e))?;
            read_segment_header(&mut file, &path, number)?;
            let mut frames = FrameReader::new(BufReader::new(file), SEGMENT_HEADER, segment.len);
            loop {
                let start = frames.pos;
                match frames
                    .next(&mut payload)
                    .map_err(|e| PersistenceError::io("read", &path, e))?
                {
                    Frame::End => break,
                    Frame::Bad(why) => {
                        return Err(PersistenceError::Corrupt {
                            path,
                            offset: Some(start),
                            detail: why.to_owned(),
                        });
                    }
                    Frame::Ok => {}
                }
                let base = start + FRAME_HEADER as u64;
                let record = decode_record(&payload, &self.shape).map_err(|f| fault_at(&path, base, f))?;
                match record.time {
                    Some(time) if time > upto => return Ok(batches),
                    Some(time) if Some(time) > after && !record.changes.is_empty() => {
                        batches.push(ChangeBatch::new(
                            self.schema.clone(),
                            time,
                            record.changes,
                            record.offsets,
                        ));
                    }
                    _ => {}
                }
            }
        }
        Ok(batches)
    }
}

/// How long opening a table waits for a store of this same process to release its
/// lock: a pipeline whose `run` future was dropped finishes shutting down in the
/// background, and a restart right after it must not fail because of it.
const RELEASE_WAIT: Duration = Duration::from_secs(2);

/// The lock files held by stores of this process, and a signal when one is released.
static HELD: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
static RELEASED: std::sync::Condvar = std::sync::Condvar::new();

/// A table's `<dir>/LOCK`, locked for as long as this lives.
#[derive(Debug)]
struct DirLock {
    file: Option<File>,
    path: PathBuf,
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Closing the file releases the lock; only then may a waiter take it.
        drop(self.file.take());
        let mut held = crate::lifecycle::lock(&HELD);
        held.retain(|path| *path != self.path);
        drop(held);
        RELEASED.notify_all();
    }
}

/// Locks `<dir>/LOCK`. When a store of this process holds it, waits up to
/// [`RELEASE_WAIT`] for it to be released first (blocking: call it off the async
/// workers).
fn lock(dir: &Path) -> Result<DirLock, PersistenceError> {
    let path = dir.join(files::LOCK);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| PersistenceError::io("open", &path, e))?;
    let id = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
    let deadline = std::time::Instant::now() + RELEASE_WAIT;
    let mut held = crate::lifecycle::lock(&HELD);
    loop {
        match file.try_lock() {
            Ok(()) => {
                held.push(id.clone());
                return Ok(DirLock {
                    file: Some(file),
                    path: id,
                });
            }
            Err(fs::TryLockError::WouldBlock) => {
                let now = std::time::Instant::now();
                // Another process, or a store of this one that did not let go in time.
                if !held.contains(&id) || now >= deadline {
                    return Err(PersistenceError::Locked { path });
                }
                held = RELEASED
                    .wait_timeout(held, deadline - now)
                    .map(|(guard, _)| guard)
                    .unwrap_or_else(|poisoned| poisoned.into_inner().0);
            }
            Err(fs::TryLockError::Error(e)) => return Err(PersistenceError::io("lock", &path, e)),
        }
    }
}

fn segment_header(number: u64, start_time: Option<Time>) -> Vec<u8> {
    let mut header = Vec::with_capacity(SEGMENT_HEADER as usize);
    header.extend_from_slice(SEGMENT_MAGIC);
    codec::put_u32(&mut header, FORMAT_VERSION);
    codec::put_u32(&mut header, 0);
    codec::put_u64(&mut header, number);
    codec::put_u64(&mut header, u64::from(start_time.is_some()));
    codec::put_u64(&mut header, start_time.map_or(0, Time::as_u64));
    let crc = crc32fast::hash(&header[16..]);
    header[12..16].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Creates an empty segment atomically, so that a segment always has its header.
fn create_segment(dir: &Path, number: u64, start_time: Option<Time>) -> Result<(), PersistenceError> {
    files::write_atomically(
        &dir.join(files::segment_name(number)),
        &segment_header(number, start_time),
    )
}

/// Reads and checks a segment's header; returns its start time.
fn read_segment_header(file: &mut File, path: &Path, number: u64) -> Result<Option<Time>, PersistenceError> {
    let corrupt = |detail: &str| PersistenceError::Corrupt {
        path: path.to_owned(),
        offset: Some(0),
        detail: detail.to_owned(),
    };
    let mut header = [0; SEGMENT_HEADER as usize];
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_exact(&mut header))
        .map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => corrupt("the file is shorter than a segment header"),
            _ => PersistenceError::io("read", path, e),
        })?;
    if &header[..8] != SEGMENT_MAGIC {
        return Err(corrupt("not an intake log segment (wrong magic bytes)"));
    }
    let word = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap_or_default());
    let version = u32::from_le_bytes(header[8..12].try_into().unwrap_or_default());
    if version != FORMAT_VERSION {
        return Err(PersistenceError::UnsupportedVersion {
            path: path.to_owned(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let crc = u32::from_le_bytes(header[12..16].try_into().unwrap_or_default());
    if crc != crc32fast::hash(&header[16..]) {
        return Err(corrupt("the segment header's checksum does not match"));
    }
    if word(16) != number {
        return Err(corrupt(&format!(
            "the header says segment {}, the name says {number}",
            word(16)
        )));
    }
    match word(24) {
        0 => Ok(None),
        1 => Ok(Some(Time::new(word(32)))),
        _ => Err(corrupt("bad start time marker in the segment header")),
    }
}

/// Reads every record of a segment into `apply` (with the record's file offset). In
/// the last segment, a bad record with no valid one after it is a torn write: the
/// file is cut back to the last whole record.
fn replay_segment(
    path: &Path,
    number: u64,
    is_last: bool,
    shape: &RowShape,
    mut apply: impl FnMut(Record, u64) -> Result<(), PersistenceError>,
) -> Result<Segment, PersistenceError> {
    let mut file = File::open(path).map_err(|e| PersistenceError::io("open", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| PersistenceError::io("read", path, e))?
        .len();
    let start_time = read_segment_header(&mut file, path, number)?;
    let mut frames = FrameReader::new(BufReader::with_capacity(1 << 20, file), SEGMENT_HEADER, len);
    let mut payload = Vec::new();
    loop {
        let start = frames.pos;
        match frames
            .next(&mut payload)
            .map_err(|e| PersistenceError::io("read", path, e))?
        {
            Frame::End => return Ok(Segment { start_time, len }),
            Frame::Ok => {
                let base = start + FRAME_HEADER as u64;
                let record = decode_record(&payload, shape).map_err(|f| fault_at(path, base, f))?;
                apply(record, start)?;
            }
            Frame::Bad(why) => {
                let corrupt = |detail: String| PersistenceError::Corrupt {
                    path: path.to_owned(),
                    offset: Some(start),
                    detail,
                };
                if !is_last {
                    return Err(corrupt(format!("{why}, in a segment that a later one follows")));
                }
                let rest = read_from(path, start)?;
                if let Some(at) = files::any_frame_in(&rest) {
                    return Err(corrupt(format!(
                        "{why}, and a valid record follows at byte {}",
                        start + at as u64
                    )));
                }
                tracing::warn!(
                    path = %path.display(),
                    offset = start,
                    bytes = len - start,
                    reason = why,
                    "cutting off a torn last record (a write the crash interrupted); its source re-reads it"
                );
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| PersistenceError::io("open", path, e))?;
                file.set_len(start)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| PersistenceError::io("truncate", path, e))?;
                return Ok(Segment {
                    start_time,
                    len: start,
                });
            }
        }
    }
}

fn read_from(path: &Path, start: u64) -> Result<Vec<u8>, PersistenceError> {
    let mut file = File::open(path).map_err(|e| PersistenceError::io("open", path, e))?;
    let mut rest = Vec::new();
    file.seek(SeekFrom::Start(start))
        .and_then(|_| file.read_to_end(&mut rest))
        .map_err(|e| PersistenceError::io("read", path, e))?;
    Ok(rest)
}

fn decode_record(payload: &[u8], shape: &RowShape) -> Result<Record, Fault> {
    let mut decoder = Decoder::new(payload);
    let time = decoder.time()?;
    let generated = decoder.varint()?;
    let offsets = decoder.offsets()?;
    let count = decoder.count(1 + shape.columns().len())?;
    let mut changes = Vec::with_capacity(count);
    let mut scratch = Vec::with_capacity(shape.columns().len());
    let mut additions = false;
    for _ in 0..count {
        let start = decoder.position();
        let (flags, key, row) = decoder.keyed_row(shape, &mut scratch)?;
        let is_addition = flags & codec::FLAG_ADDITION != 0;
        if additions && !is_addition {
            return Err(Fault {
                at: start,
                detail: "a retraction follows an insertion".into(),
            });
        }
        additions = is_addition;
        changes.push(Change {
            key,
            row,
            is_addition,
        });
    }
    decoder.finish()?;
    Ok(Record {
        time,
        generated,
        offsets,
        changes,
    })
}

/// Applies a record to the state being restored; says what is inconsistent if it does
/// not fit (a checksum cannot catch a record that was valid but out of place).
/// The rows of a snapshot as a map.
fn into_map<V: Clone>(rows: Vec<(Key, Row)>, wrap: &impl Fn(Row) -> V) -> RowMap<V> {
    let mut map = RowMap::with_capacity(rows.len());
    for (key, row) in rows {
        map.insert(key, wrap(row));
    }
    map
}

fn apply<V: Clone>(
    state: &mut snapshot::Loaded,
    table: &mut Option<RowMap<V>>,
    record: Record,
    wrap: &impl Fn(Row) -> V,
) -> Result<(), String> {
    let advances = record.time > state.time || (record.changes.is_empty() && record.time == state.time);
    if !advances {
        return Err(format!(
            "a record at time {} follows one at time {}",
            show_time(record.time),
            show_time(state.time)
        ));
    }
    if !record.changes.is_empty() {
        let rows = match table {
            Some(rows) => rows,
            None => {
                let count = state.rows.len();
                let rows = into_map(std::mem::take(&mut state.rows), wrap);
                if rows.len() != count {
                    return Err("the snapshot holds a key twice".to_owned());
                }
                table.insert(rows)
            }
        };
        for change in record.changes {
            if change.is_addition {
                if rows.insert(change.key.clone(), wrap(change.row)).is_some() {
                    return Err(format!(
                        "inserts key {} which the table already holds",
                        change.key
                    ));
                }
            } else if rows.swap_remove(&change.key).is_none() {
                return Err(format!(
                    "retracts key {} which the table does not hold",
                    change.key
                ));
            }
        }
    }
    state.time = record.time;
    state.offsets = record.offsets;
    state.generated = record.generated;
    Ok(())
}

/// Decodes `bytes` every way the store reads its files (a record's payload, a value of
/// JSON, a keyed row, a snapshot as it is and after a valid header, a frame sealed
/// with a valid checksum), for the `store_decode` fuzz target: none may panic.
#[cfg(fuzzing)]
pub(crate) fn fuzz_decode(schema: &Schema, bytes: &[u8]) {
    let shape = RowShape::new(schema);
    let _ = decode_record(bytes, &shape);
    let _ = Decoder::new(bytes).json();
    let _ = Decoder::new(bytes).keyed_row(&shape, &mut Vec::new());
    let path = Path::new("snapshot");
    let _ = snapshot::read(bytes, bytes.len() as u64, path, 1, &shape);
    let mut framed = b"INTKSNAP\x01\0\0\0\0\0\0\0".to_vec();
    framed.extend_from_slice(bytes);
    let _ = snapshot::read(&framed[..], framed.len() as u64, path, 1, &shape);
    let mut frame = vec![0; FRAME_HEADER];
    frame.extend_from_slice(bytes);
    if files::seal_frame(&mut frame).is_ok() {
        let mut file = b"INTKSNAP\x01\0\0\0\0\0\0\0".to_vec();
        file.extend_from_slice(&frame);
        let _ = snapshot::read(&file[..], file.len() as u64, path, 1, &shape);
    }
}
