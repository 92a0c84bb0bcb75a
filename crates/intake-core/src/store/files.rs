//! File names, atomic writes and the framing shared by log segments and snapshots.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::PersistenceError;

pub(super) const LOCK: &str = "LOCK";
pub(super) const SCHEMA: &str = "schema.json";
const TMP: &str = ".tmp";
const SEGMENT_PREFIX: &str = "segment-";
const SEGMENT_SUFFIX: &str = ".log";
const SNAPSHOT_PREFIX: &str = "snapshot-";
const SNAPSHOT_SUFFIX: &str = ".snap";

/// Bytes before a frame's payload: its length and its CRC-32.
pub(super) const FRAME_HEADER: usize = 8;

pub(super) fn segment_name(number: u64) -> String {
    format!("{SEGMENT_PREFIX}{number:020}{SEGMENT_SUFFIX}")
}

pub(super) fn snapshot_name(number: u64) -> String {
    format!("{SNAPSHOT_PREFIX}{number:020}{SNAPSHOT_SUFFIX}")
}

pub(super) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(TMP);
    path.with_file_name(name)
}

fn parse_number(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

/// What a table directory holds, by kind.
#[derive(Debug, Default)]
pub(super) struct Listing {
    pub(super) segments: Vec<u64>,
    pub(super) snapshots: Vec<u64>,
}

/// Lists segments and snapshots (sorted) and deletes leftover temporary files, which
/// are writes that a crash interrupted before their rename made them count.
pub(super) fn list_and_clean(dir: &Path) -> Result<Listing, PersistenceError> {
    let mut listing = Listing::default();
    let entries = fs::read_dir(dir).map_err(|e| PersistenceError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| PersistenceError::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(TMP) {
            let path = entry.path();
            fs::remove_file(&path).map_err(|e| PersistenceError::io("delete", &path, e))?;
            tracing::debug!(path = %path.display(), "deleted an unfinished temporary file");
        } else if let Some(number) = parse_number(name, SEGMENT_PREFIX, SEGMENT_SUFFIX) {
            listing.segments.push(number);
        } else if let Some(number) = parse_number(name, SNAPSHOT_PREFIX, SNAPSHOT_SUFFIX) {
            listing.snapshots.push(number);
        }
    }
    listing.segments.sort_unstable();
    listing.snapshots.sort_unstable();
    Ok(listing)
}

/// Makes renames and deletions in `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), PersistenceError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| PersistenceError::io("sync the directory", dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Writes `path` so that it either exists complete or not at all: a temporary file,
/// synced, renamed over `path`, and the directory synced.
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), PersistenceError> {
    let tmp = tmp_path(path);
    let result = (|| {
        let mut file = File::create(&tmp).map_err(|e| PersistenceError::io("create", &tmp, e))?;
        file.write_all(bytes)
            .map_err(|e| PersistenceError::io("write", &tmp, e))?;
        file.sync_all()
            .map_err(|e| PersistenceError::io("sync", &tmp, e))?;
        Ok(())
    })();
    if let Err(error) = result {
        let _ = fs::remove_file(&tmp);
        return Err(error);
    }
    rename_durably(&tmp, path)
}

pub(super) fn rename_durably(from: &Path, to: &Path) -> Result<(), PersistenceError> {
    fs::rename(from, to).map_err(|e| PersistenceError::io("rename", from, e))?;
    sync_dir(to.parent().unwrap_or(Path::new(".")))
}

/// The checksum of a frame: over its length bytes and its payload, so that a length
/// damaged into another plausible length is caught too.
pub(super) fn frame_crc(len: [u8; 4], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len);
    hasher.update(payload);
    hasher.finalize()
}

/// Fills in the header of a frame whose payload follows [`FRAME_HEADER`] reserved
/// bytes in `buf`.
pub(super) fn seal_frame(buf: &mut [u8]) -> Result<(), usize> {
    let payload_len = buf.len() - FRAME_HEADER;
    let len = u32::try_from(payload_len).map_err(|_| payload_len)?.to_le_bytes();
    let crc = frame_crc(len, &buf[FRAME_HEADER..]);
    buf[..4].copy_from_slice(&len);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// How reading one frame ended.
#[derive(Debug)]
pub(super) enum Frame {
    /// A whole frame with a matching checksum; the payload is in the buffer.
    Ok,
    /// The file ends exactly here.
    End,
    /// The frame at this position is incomplete or its checksum does not match.
    Bad(&'static str),
}

/// Reads frames from a file of known length, never allocating more than the file
/// holds.
pub(super) struct FrameReader<R> {
    inner: R,
    pub(super) pos: u64,
    pub(super) len: u64,
}

impl<R: Read> FrameReader<R> {
    pub(super) fn new(inner: R, pos: u64, len: u64) -> Self {
        FrameReader { inner, pos, len }
    }

    /// Reads the next frame's payload into `payload`. After [`Frame::Bad`] the
    /// reader's position is meaningless.
    pub(super) fn next(&mut self, payload: &mut Vec<u8>) -> io::Result<Frame> {
        let left = self.len - self.pos;
        if left == 0 {
            return Ok(Frame::End);
        }
        if left < FRAME_HEADER as u64 {
            return Ok(Frame::Bad("the file ends inside a record header"));
        }
        let mut header = [0; FRAME_HEADER];
        self.inner.read_exact(&mut header)?;
        let len = [header[0], header[1], header[2], header[3]];
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let payload_len = u64::from(u32::from_le_bytes(len));
        if payload_len == 0 {
            return Ok(Frame::Bad("a record has length 0"));
        }
        if payload_len > left - FRAME_HEADER as u64 {
            return Ok(Frame::Bad("the file ends inside a record"));
        }
        payload.clear();
        payload.resize(payload_len as usize, 0);
        self.inner.read_exact(payload)?;
        if frame_crc(len, payload) != crc {
            return Ok(Frame::Bad("a record's checksum does not match"));
        }
        self.pos += FRAME_HEADER as u64 + payload_len;
        Ok(Frame::Ok)
    }
}

/// Whether a valid frame starts anywhere in `bytes` (after a bad one): if so, the
/// damage is not a torn tail but corruption in the middle of the log.
pub(super) fn any_frame_in(bytes: &[u8]) -> Option<usize> {
    (1..bytes.len().saturating_sub(FRAME_HEADER)).find(|&start| {
        let header = &bytes[start..start + FRAME_HEADER];
        let len = [header[0], header[1], header[2], header[3]];
        let payload_len = u32::from_le_bytes(len) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        payload_len > 0
            && payload_len <= bytes.len() - start - FRAME_HEADER
            && frame_crc(
                len,
                &bytes[start + FRAME_HEADER..start + FRAME_HEADER + payload_len],
            ) == crc
    })
}
