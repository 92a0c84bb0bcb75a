//! Snapshot files: a table's whole state as of the end of a log segment.
//!
//! A header (`INTKSNAP`, format version u32, 4 reserved bytes), then frames like the
//! log's (`[length u32][crc32 u32][payload]`), each payload starting with its kind:
//! one `meta` frame (number, time, generated, offsets, row count), `rows` frames of
//! up to [`CHUNK`] bytes (a varint count and keyed rows), and one `end` frame (the row
//! count again). A file without its end frame, or with anything after it, is truncated
//! or damaged, and so an error: a snapshot is never read as fewer rows than it held.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::codec::{self, Decoder, RowShape};
use super::files::{self, FRAME_HEADER, Frame, FrameReader};
use super::{FORMAT_VERSION, PersistenceError, fault_at};
use crate::change::{Offsets, Time};
use crate::row::{Key, Row};
use crate::schema::Schema;

const MAGIC: &[u8; 8] = b"INTKSNAP";
const HEADER: u64 = 16;
/// Target payload size of a rows frame: big enough that framing costs nothing, small
/// enough that reading needs little memory beyond the rows themselves.
const CHUNK: usize = 1 << 20;

const KIND_META: u8 = 1;
const KIND_ROWS: u8 = 2;
const KIND_END: u8 = 3;

/// A snapshot to write, with everything it needs: run it on any thread (for example
/// `tokio::task::spawn_blocking`) while the table goes on appending to the new log
/// segment, then hand the result to [`TableStore::finish_snapshot`](super::TableStore::finish_snapshot).
#[derive(Debug)]
#[must_use = "a snapshot job does nothing until it is run"]
pub(crate) struct SnapshotJob {
    pub(super) path: PathBuf,
    pub(super) schema: Schema,
    pub(super) number: u64,
    pub(super) time: Option<Time>,
    pub(super) rows: Box<dyn SnapshotRows>,
    pub(super) offsets: Offsets,
    pub(super) generated: u64,
}

/// The rows a snapshot writes: a list, or a table's view of its rows, which the
/// snapshot's thread reads so that the commit driver copies nothing.
pub(crate) trait SnapshotRows: Send {
    /// The number of rows.
    fn count(&self) -> usize;
    /// Every row, with its key.
    fn rows(&self) -> Box<dyn Iterator<Item = (Key, &Row)> + '_>;
}

impl std::fmt::Debug for dyn SnapshotRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} rows", self.count())
    }
}

impl SnapshotRows for Vec<(Key, Row)> {
    fn count(&self) -> usize {
        self.len()
    }

    fn rows(&self) -> Box<dyn Iterator<Item = (Key, &Row)> + '_> {
        Box::new(self.iter().map(|(key, row)| (key.clone(), row)))
    }
}

/// A snapshot written and durable, for [`TableStore::finish_snapshot`](super::TableStore::finish_snapshot).
#[derive(Debug)]
#[must_use = "hand it to TableStore::finish_snapshot so that the log it replaces is deleted"]
pub(crate) struct SnapshotDone {
    pub(super) path: PathBuf,
    pub(super) number: u64,
    pub(super) bytes: u64,
}

impl SnapshotJob {
    /// Writes `snapshot-<n>.snap.tmp`, syncs it, renames it to its final name and syncs
    /// the directory, so that the snapshot exists complete or not at all.
    ///
    /// # Errors
    ///
    /// [`PersistenceError::Io`] when a write, sync or rename fails; the temporary file
    /// is removed and the log stays as it was, so nothing is lost.
    pub(crate) fn run(self) -> Result<SnapshotDone, PersistenceError> {
        let tmp = files::tmp_path(&self.path);
        match self.write(&tmp) {
            Ok(bytes) => {
                files::rename_durably(&tmp, &self.path)?;
                Ok(SnapshotDone {
                    path: self.path,
                    number: self.number,
                    bytes,
                })
            }
            Err(error) => {
                let _ = fs::remove_file(&tmp);
                Err(error)
            }
        }
    }

    fn write(&self, tmp: &Path) -> Result<u64, PersistenceError> {
        let io = |e| PersistenceError::io("write", tmp, e);
        let file = File::create(tmp).map_err(|e| PersistenceError::io("create", tmp, e))?;
        let mut out = BufWriter::with_capacity(CHUNK + 64 * 1024, file);
        let mut header = Vec::with_capacity(HEADER as usize);
        header.extend_from_slice(MAGIC);
        codec::put_u32(&mut header, FORMAT_VERSION);
        codec::put_u32(&mut header, 0);
        out.write_all(&header).map_err(io)?;
        let mut written = HEADER;

        let mut frame = vec![0; FRAME_HEADER];
        frame.push(KIND_META);
        codec::put_u64(&mut frame, self.number);
        codec::put_time(&mut frame, self.time);
        codec::put_varint(&mut frame, self.generated);
        codec::put_offsets(&mut frame, &self.offsets);
        codec::put_varint(&mut frame, self.rows.count() as u64);
        written += self.flush_frame(&mut out, &mut frame, tmp)?;

        let mut rows = Vec::with_capacity(CHUNK + 4096);
        let mut count = 0u64;
        for (key, row) in self.rows.rows() {
            codec::put_keyed_row(&mut rows, &self.schema, &key, row, 0);
            count += 1;
            if rows.len() >= CHUNK {
                written += self.flush_rows(&mut out, &mut frame, &mut rows, &mut count, tmp)?;
            }
        }
        if count > 0 {
            written += self.flush_rows(&mut out, &mut frame, &mut rows, &mut count, tmp)?;
        }
        frame.truncate(FRAME_HEADER);
        frame.push(KIND_END);
        codec::put_varint(&mut frame, self.rows.count() as u64);
        written += self.flush_frame(&mut out, &mut frame, tmp)?;

        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all()
            .map_err(|e| PersistenceError::io("sync", tmp, e))?;
        Ok(written)
    }

    fn flush_rows(
        &self,
        out: &mut impl Write,
        frame: &mut Vec<u8>,
        rows: &mut Vec<u8>,
        count: &mut u64,
        tmp: &Path,
    ) -> Result<u64, PersistenceError> {
        frame.truncate(FRAME_HEADER);
        frame.push(KIND_ROWS);
        codec::put_varint(frame, *count);
        frame.extend_from_slice(rows);
        rows.clear();
        *count = 0;
        self.flush_frame(out, frame, tmp)
    }

    fn flush_frame(
        &self,
        out: &mut impl Write,
        frame: &mut Vec<u8>,
        tmp: &Path,
    ) -> Result<u64, PersistenceError> {
        files::seal_frame(frame).map_err(|bytes| PersistenceError::TooLarge {
            path: tmp.to_owned(),
            bytes: bytes as u64,
        })?;
        out.write_all(frame)
            .map_err(|e| PersistenceError::io("write", tmp, e))?;
        let len = frame.len() as u64;
        frame.truncate(FRAME_HEADER);
        Ok(len)
    }
}

/// A snapshot read back.
#[derive(Debug)]
pub(super) struct Loaded {
    pub(super) time: Option<Time>,
    pub(super) rows: Vec<(Key, Row)>,
    pub(super) offsets: Offsets,
    pub(super) generated: u64,
    pub(super) bytes: u64,
}

pub(super) fn load(path: &Path, number: u64, shape: &RowShape) -> Result<Loaded, PersistenceError> {
    let file = File::open(path).map_err(|e| PersistenceError::io("open", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| PersistenceError::io("read", path, e))?
        .len();
    read(
        BufReader::with_capacity(CHUNK + 64 * 1024, file),
        len,
        path,
        number,
        shape,
    )
}

/// Reads a snapshot of `len` bytes from `input`; `path` names it in errors.
pub(super) fn read(
    mut input: impl Read,
    len: u64,
    path: &Path,
    number: u64,
    shape: &RowShape,
) -> Result<Loaded, PersistenceError> {
    let corrupt = |offset: u64, detail: String| PersistenceError::Corrupt {
        path: path.to_owned(),
        offset: Some(offset),
        detail,
    };
    let io = |e| PersistenceError::io("read", path, e);
    if len < HEADER {
        return Err(corrupt(
            0,
            format!("{len} bytes is too short for a snapshot header"),
        ));
    }
    let mut header = [0; HEADER as usize];
    input.read_exact(&mut header).map_err(io)?;
    if &header[..8] != MAGIC {
        return Err(corrupt(0, "not an intake snapshot (wrong magic bytes)".into()));
    }
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if version != FORMAT_VERSION {
        return Err(PersistenceError::UnsupportedVersion {
            path: path.to_owned(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let mut frames = FrameReader::new(input, HEADER, len);
    let mut payload = Vec::new();
    let mut meta: Option<(Option<Time>, Offsets, u64, usize)> = None;
    let mut rows: Vec<(Key, Row)> = Vec::new();
    let mut scratch = Vec::new();
    loop {
        let start = frames.pos;
        match frames.next(&mut payload).map_err(io)? {
            Frame::Ok => {}
            Frame::End => {
                return Err(corrupt(
                    start,
                    "truncated: the file ends before the snapshot's end marker".into(),
                ));
            }
            Frame::Bad(why) => return Err(corrupt(start, why.to_owned())),
        }
        let base = start + FRAME_HEADER as u64;
        let mut decoder = Decoder::new(&payload);
        let result = (|| -> Result<bool, codec::Fault> {
            let kind = decoder.u8()?;
            match (kind, &meta) {
                (KIND_META, None) => {
                    let stored_number = decoder.u64()?;
                    if stored_number != number {
                        return Err(decoder.fault(format!(
                            "the snapshot says it is number {stored_number}, its name says {number}"
                        )));
                    }
                    let time = decoder.time()?;
                    let generated = decoder.varint()?;
                    let offsets = decoder.offsets()?;
                    let count = decoder.varint()?;
                    // A row takes a flags byte and a byte per value at least, so the
                    // file's size bounds what a damaged count can make us reserve.
                    let fits = len / (1 + shape.columns().len() as u64);
                    let count = usize::try_from(count)
                        .ok()
                        .filter(|&c| c as u64 <= fits)
                        .ok_or_else(|| decoder.fault(format!("a row count of {count} exceeds the file")))?;
                    rows.reserve_exact(count);
                    meta = Some((time, offsets, generated, count));
                }
                (KIND_ROWS, Some((.., count))) => {
                    let in_frame = decoder.count(1)?;
                    if rows.len() + in_frame > *count {
                        return Err(decoder.fault("more rows than the snapshot's header says"));
                    }
                    for _ in 0..in_frame {
                        let (flags, key, row) = decoder.keyed_row(shape, &mut scratch)?;
                        if flags & codec::FLAG_ADDITION != 0 {
                            return Err(decoder.fault("a snapshot row is marked as a change"));
                        }
                        rows.push((key, row));
                    }
                }
                (KIND_END, Some((.., count))) => {
                    let total = decoder.varint()?;
                    if total != *count as u64 || rows.len() != *count {
                        return Err(decoder.fault(format!(
                            "the snapshot holds {} rows, its header says {count} and its end {total}",
                            rows.len()
                        )));
                    }
                    decoder.finish()?;
                    return Ok(true);
                }
                (kind, _) => return Err(decoder.fault(format!("unexpected frame kind {kind}"))),
            }
            decoder.finish()?;
            Ok(false)
        })();
        match result {
            Ok(false) => {}
            Ok(true) => {
                if frames.pos != len {
                    return Err(corrupt(
                        frames.pos,
                        format!("{} unexpected bytes after the end marker", len - frames.pos),
                    ));
                }
                let Some((time, offsets, generated, _)) = meta else {
                    return Err(corrupt(start, "no header frame".into()));
                };
                return Ok(Loaded {
                    time,
                    rows,
                    offsets,
                    generated,
                    bytes: len,
                });
            }
            Err(fault) => return Err(fault_at(path, base, fault)),
        }
    }
}
