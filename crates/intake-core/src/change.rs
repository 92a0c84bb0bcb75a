//! What a commit changed: logical times, changes and change batches.

use std::fmt;
use std::sync::Arc;

use crate::row::{Key, Row};
use crate::schema::Schema;

/// The logical time of a commit. Each commit of a table that changes something gets a
/// time strictly greater than the previous one; the first is 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(u64);

impl Time {
    /// The time as a number.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    pub(crate) const fn new(time: u64) -> Self {
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
}

impl ChangeBatch {
    pub(crate) fn new(schema: Schema, time: Time, changes: Vec<Change>) -> Self {
        ChangeBatch {
            schema,
            time,
            changes: Arc::new(changes),
        }
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
