//! What a commit changed: logical times, changes and change batches.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::row::{Key, Row};
use crate::schema::Schema;

/// The logical time of a commit. Each commit of a table that changes something gets a
/// time strictly greater than the previous one; the first is 1.
///
/// Serializes as its number, and deserializes from one (to hand a stored time back from
/// [`Sink::resume`](crate::Sink::resume)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Time(u64);

impl Time {
    /// The time as a number.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    pub(crate) const fn new(time: u64) -> Self {
        Time(time)
    }

    /// The time after this one.
    pub(crate) fn next(time: Option<Time>) -> Time {
        Time(time.map_or(1, |t| t.0 + 1))
    }
}

impl From<Time> for u64 {
    fn from(time: Time) -> u64 {
        time.0
    }
}

/// A time a sink stored itself, read back to return from
/// [`Sink::resume`](crate::Sink::resume).
impl From<u64> for Time {
    fn from(time: u64) -> Time {
        Time(time)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One row entering or leaving a table.
///
/// An update is a retraction of the old row followed by an insertion of the new one,
/// both under the same key and time.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Change {
    /// The row's key.
    pub key: Key,
    /// The row inserted or retracted.
    pub row: Row,
    /// `true` for an insertion, `false` for a retraction.
    pub is_addition: bool,
}

impl Change {
    /// `+1` for an insertion, `-1` for a retraction, as in Pathway's `diff` column.
    pub fn diff(&self) -> i64 {
        if self.is_addition { 1 } else { -1 }
    }
}

/// Serializes as an object `{"key": ..., "row": {...}, "diff": 1}`: the
/// [key](Key#impl-Serialize-for-Key), the [row](Row#impl-Serialize-for-Row) and
/// [`diff`](Change::diff) (`1` for an insertion, `-1` for a retraction).
impl serde::Serialize for Change {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut change = serializer.serialize_struct("Change", 3)?;
        change.serialize_field("key", &self.key)?;
        change.serialize_field("row", &self.row)?;
        change.serialize_field("diff", &self.diff())?;
        change.end()
    }
}

/// Everything one commit changed in a table, delivered to subscribers as a whole.
///
/// Within a batch, changes are consolidated per key (a row inserted and then updated
/// within one commit is one insertion of its final value; inserted and then deleted,
/// nothing at all), and every retraction comes before every insertion.
///
/// Cloning a batch is cheap: the changes are shared.
#[derive(Debug, Clone)]
pub struct ChangeBatch {
    schema: Schema,
    time: Time,
    changes: Arc<Vec<Change>>,
    offsets: Offsets,
    snapshot: bool,
}

impl ChangeBatch {
    pub(crate) fn new(schema: Schema, time: Time, changes: Vec<Change>, offsets: Offsets) -> Self {
        ChangeBatch {
            schema,
            time,
            changes: Arc::new(changes),
            offsets,
            snapshot: false,
        }
    }

    /// A batch of a table's whole state at `time`, every row an insertion.
    pub(crate) fn snapshot(schema: Schema, time: Time, changes: Vec<Change>, offsets: Offsets) -> Self {
        ChangeBatch {
            snapshot: true,
            ..ChangeBatch::new(schema, time, changes, offsets)
        }
    }

    /// Whether this batch is a table's state rather than one commit: the first batch a
    /// subscriber receives when it attaches to a table that already has rows (restored
    /// from storage, or filled before it attached). Its changes are every row as an
    /// insertion, at the time of the table's last commit.
    pub fn is_snapshot(&self) -> bool {
        self.snapshot
    }

    /// Every source's offset as of this commit: the last position each source (or
    /// partition, named `source/partition`) reported before the commit, so every
    /// message before it is in this batch or an earlier one. Record it atomically with
    /// what you write for the batch, and hand it back to
    /// [`Pipeline::resume_from`](crate::Pipeline::resume_from) on a restart to read each
    /// source from exactly there.
    pub fn offsets(&self) -> &Offsets {
        &self.offsets
    }

    /// The schema of the table the changes belong to (every row's schema).
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The commit's logical time.
    pub fn time(&self) -> Time {
        self.time
    }

    /// The changes: retractions first, then insertions.
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// The number of changes.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Whether the batch has no changes. Batches delivered to subscribers never are.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The insertions.
    pub fn insertions(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|c| c.is_addition)
    }

    /// The retractions.
    pub fn retractions(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|c| !c.is_addition)
    }
}

/// Serializes as an object with the commit's `time` (a number), `is_snapshot`, the
/// `offsets` (an object keyed by source name, as [`Offsets`] serializes) and the
/// `changes` in order, each [`{"key", "row", "diff"}`](Change#impl-Serialize-for-Change).
///
/// An update of one row, as JSON:
///
/// ```text
/// {"time":3,"is_snapshot":false,"offsets":{"feed":41},
///  "changes":[{"key":"AAPL","row":{"sym":"AAPL","close":189.5},"diff":-1},
///             {"key":"AAPL","row":{"sym":"AAPL","close":190.0},"diff":1}]}
/// ```
impl serde::Serialize for ChangeBatch {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut batch = serializer.serialize_struct("ChangeBatch", 4)?;
        batch.serialize_field("time", &self.time)?;
        batch.serialize_field("is_snapshot", &self.snapshot)?;
        batch.serialize_field("offsets", &self.offsets)?;
        batch.serialize_field("changes", &*self.changes)?;
        batch.end()
    }
}

/// Where each source of a table stands: per source name (`source/partition` for a
/// partition of a [partitioned source](crate::PartitionedSource)), the last offset it
/// [reported](crate::SourceContext::report_offset) before a commit.
///
/// Offsets are opaque JSON values chosen by each source. `Offsets` serializes as a JSON
/// object keyed by source name, so it can be stored next to a sink's output and read
/// back for [`Pipeline::resume_from`](crate::Pipeline::resume_from). Cloning is cheap.
///
/// # Examples
///
/// ```
/// use intake_core::Offsets;
///
/// let offsets: Offsets = serde_json::from_str(r#"{"feed": {"seq": 41}}"#)?;
/// assert_eq!(offsets.get("feed"), Some(&serde_json::json!({"seq": 41})));
/// assert_eq!(serde_json::to_string(&offsets)?, r#"{"feed":{"seq":41}}"#);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Offsets(Arc<BTreeMap<Arc<str>, serde_json::Value>>);

impl Offsets {
    /// No offsets.
    pub fn new() -> Self {
        Offsets::default()
    }

    /// The offset of the source named `source`.
    pub fn get(&self, source: &str) -> Option<&serde_json::Value> {
        self.0.get(source)
    }

    /// Every source's offset, sorted by source name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &serde_json::Value)> {
        self.0.iter().map(|(source, offset)| (&**source, offset))
    }

    /// The number of sources with an offset.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no source has an offset.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sets the offset of `source`.
    pub fn insert(&mut self, source: impl Into<Arc<str>>, offset: serde_json::Value) {
        Arc::make_mut(&mut self.0).insert(source.into(), offset);
    }
}

impl<S: Into<Arc<str>>> FromIterator<(S, serde_json::Value)> for Offsets {
    fn from_iter<I: IntoIterator<Item = (S, serde_json::Value)>>(iter: I) -> Self {
        Offsets(Arc::new(
            iter.into_iter()
                .map(|(source, offset)| (source.into(), offset))
                .collect(),
        ))
    }
}
