//! How a source is read into a table: format, schema, commits, buffers, bad input.

use std::time::Duration;

use crate::parse::{Format, ParseOptions};
use crate::schema::{Schema, SchemaError};
use crate::value::DataType;

/// What to do with a message that cannot become a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ErrorPolicy {
    /// Fail the pipeline: [`Pipeline::run`](crate::Pipeline::run) returns
    /// [`Error::Rejected`](crate::Error::Rejected) with the message and the reason, after
    /// committing the valid messages that came before it.
    #[default]
    Fail,
    /// Skip the message and report it: it is counted in
    /// [`TableStats::rejected`](crate::TableStats::rejected), logged as a `tracing`
    /// warning (target `intake::rejected`: each source logs its first ten skipped
    /// messages one by one, then one summary line at most every ten seconds and one
    /// when it ends, so a flood of bad input does not flood the log), and delivered
    /// with its source, raw bytes and reason to every
    /// [`Pipeline::rejected`](crate::Pipeline::rejected) stream. Its neighbours are kept.
    SkipAndReport,
}

/// How a source is read into a table (Pathway's `pw.io.python.read` arguments).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use intake_core::{Column, DataType, ErrorPolicy, Reader, Schema};
///
/// let schema = Schema::new([
///     Column::new("key", DataType::Int).primary_key(),
///     Column::new("genus", DataType::String),
/// ])?;
/// let reader = Reader::json(schema)
///     .autocommit_duration(Duration::from_millis(50))
///     .max_batch_size(1_000)
///     .error_policy(ErrorPolicy::SkipAndReport);
/// # let _ = reader;
/// # Ok::<(), intake_core::SchemaError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Reader {
    pub(crate) schema: Schema,
    /// The format with its options: what a parser is built from.
    pub(crate) format: ParseOptions,
    pub(crate) autocommit_duration: Duration,
    pub(crate) max_batch_size: usize,
    pub(crate) channel_capacity: usize,
    pub(crate) subscriber_capacity: usize,
    pub(crate) error_policy: ErrorPolicy,
    pub(crate) resume: Option<serde_json::Value>,
    pub(crate) persistent_id: Option<String>,
    pub(crate) retention: Retention,
}

/// What a table keeps of its rows: everything (the default), the most recent rows
/// within a count and/or an age, or nothing at all. Set through
/// [`Reader::retain_last`], [`Reader::retain_for`] and [`Reader::keep_rows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retention {
    /// At most this many rows, the most recent ones.
    pub(crate) last: Option<usize>,
    /// Rows leave once they have been in the table this long.
    pub(crate) ttl: Option<Duration>,
    /// Whether rows are kept at all; without, commits only pass through.
    pub(crate) keep_rows: bool,
}

impl Retention {
    /// Keeps every row.
    pub(crate) const ALL: Retention = Retention {
        last: None,
        ttl: None,
        keep_rows: true,
    };

    /// Whether rows ever leave the table other than by a source's delete.
    pub(crate) fn is_bounded(&self) -> bool {
        self.last.is_some() || self.ttl.is_some()
    }
}

impl Reader {
    /// Default for [`autocommit_duration`](Self::autocommit_duration).
    pub const DEFAULT_AUTOCOMMIT: Duration = Duration::from_millis(100);
    /// Default for [`max_batch_size`](Self::max_batch_size).
    pub const DEFAULT_MAX_BATCH_SIZE: usize = 10_000;
    /// Default for [`channel_capacity`](Self::channel_capacity).
    pub const DEFAULT_CHANNEL_CAPACITY: usize = 1_024;
    /// Default for [`subscriber_capacity`](Self::subscriber_capacity).
    pub const DEFAULT_SUBSCRIBER_CAPACITY: usize = 8;

    /// Reads messages of `format` into rows of `schema`.
    ///
    /// [`Format::Json`] takes any schema. [`Format::Raw`] and [`Format::Bytes`] fill
    /// exactly one column, of type string and bytes: pass [`Schema::raw`] and
    /// [`Schema::bytes`] (or use [`Reader::raw`] and [`Reader::bytes`]), or a schema of
    /// one such column under a name of your own (it may be the primary key, which keeps
    /// one row per distinct message).
    ///
    /// # Errors
    ///
    /// [`SchemaError::FormatMismatch`] when the schema does not fit the format.
    pub fn new(schema: Schema, format: Format) -> Result<Self, SchemaError> {
        let expected = match format {
            Format::Json => None,
            Format::Raw => Some(DataType::String),
            Format::Bytes => Some(DataType::Bytes),
        };
        if let Some(expected) = expected
            && !matches!(schema.columns(), [only] if only.data_type() == expected)
        {
            return Err(SchemaError::FormatMismatch {
                format,
                expected,
                schema,
            });
        }
        Ok(Self::unchecked(schema, format))
    }

    fn unchecked(schema: Schema, format: Format) -> Self {
        Reader {
            schema,
            format: ParseOptions::from(format),
            autocommit_duration: Self::DEFAULT_AUTOCOMMIT,
            max_batch_size: Self::DEFAULT_MAX_BATCH_SIZE,
            channel_capacity: Self::DEFAULT_CHANNEL_CAPACITY,
            subscriber_capacity: Self::DEFAULT_SUBSCRIBER_CAPACITY,
            error_policy: ErrorPolicy::default(),
            resume: None,
            persistent_id: None,
            retention: Retention::ALL,
        }
    }

    /// Reads each message as a JSON object into rows of `schema`.
    pub fn json(schema: Schema) -> Self {
        Self::unchecked(schema, Format::Json)
    }

    /// Reads each message as UTF-8 text into the `data` column of [`Schema::raw`].
    pub fn raw() -> Self {
        Self::unchecked(Schema::raw(), Format::Raw)
    }

    /// Reads each message as bytes into the `data` column of [`Schema::bytes`].
    pub fn bytes() -> Self {
        Self::unchecked(Schema::bytes(), Format::Bytes)
    }

    /// The longest a message waits before it is committed, counted from the first
    /// message after the previous commit. Default: 100 ms. `Duration::MAX` means
    /// commits happen only by size, explicit commits and the end of the sources.
    ///
    /// # Panics
    ///
    /// If `duration` is zero.
    #[track_caller]
    pub fn autocommit_duration(mut self, duration: Duration) -> Self {
        assert!(!duration.is_zero(), "autocommit_duration must be positive");
        self.autocommit_duration = duration;
        self
    }

    /// Commits as soon as this many messages are pending. Default: 10,000.
    ///
    /// For a source that reports offsets, a commit ends at an offset: it holds back
    /// the messages after its last one until their offset arrives, and if it holds
    /// none at all (the source reports offsets more rarely than this), it runs on to
    /// the next offset already queued, so it can exceed this size by up to
    /// [`channel_capacity`](Self::channel_capacity) messages.
    ///
    /// # Panics
    ///
    /// If `size` is zero.
    #[track_caller]
    pub fn max_batch_size(mut self, size: usize) -> Self {
        assert!(size > 0, "max_batch_size must be at least 1");
        self.max_batch_size = size;
        self
    }

    /// How many parsed messages may wait for the table beyond the batch being gathered:
    /// the queue between the sources and the table holds at most
    /// `max_batch_size + channel_capacity` messages, and when it is full, sends wait.
    /// Default: 1,024.
    ///
    /// # Panics
    ///
    /// If `capacity` is zero.
    #[track_caller]
    pub fn channel_capacity(mut self, capacity: usize) -> Self {
        assert!(capacity > 0, "channel_capacity must be at least 1");
        self.channel_capacity = capacity;
        self
    }

    /// The number of commits queued for each subscriber before commits wait for it.
    /// Default: 8.
    ///
    /// # Panics
    ///
    /// If `capacity` is zero or larger than the largest channel Tokio supports
    /// (`usize::MAX >> 3`).
    #[track_caller]
    pub fn subscriber_capacity(mut self, capacity: usize) -> Self {
        assert!(capacity > 0, "subscriber_capacity must be at least 1");
        assert!(
            capacity <= crate::pipeline::MAX_CHANNEL_CAPACITY,
            "subscriber_capacity must be at most {}",
            crate::pipeline::MAX_CHANNEL_CAPACITY
        );
        self.subscriber_capacity = capacity;
        self
    }

    /// What to do with bad input. Default: [`ErrorPolicy::Fail`].
    pub fn error_policy(mut self, policy: ErrorPolicy) -> Self {
        self.error_policy = policy;
        self
    }

    /// Hands the source an offset to resume from, as
    /// [`SourceContext::resume_offset`](crate::SourceContext::resume_offset). Sources
    /// that report offsets document what they accept.
    pub fn resume_from(mut self, offset: serde_json::Value) -> Self {
        self.resume = Some(offset);
        self
    }

    /// The name the table is stored under when the pipeline has
    /// [persistence](crate::Pipeline::persist) (Pathway's `persistent_id`). Default: the
    /// table's name. Keep it stable across runs: a restart finds the table's rows,
    /// time and offsets by it, and refuses to start if the stored table's schema
    /// differs from this reader's. ASCII letters, digits, `_`, `-` and `.`, not
    /// starting with `.`, at most 128 bytes; anything else fails
    /// [`Pipeline::run`](crate::Pipeline::run) with
    /// [`PersistenceError::InvalidId`](crate::PersistenceError::InvalidId).
    pub fn persistent_id(mut self, id: impl Into<String>) -> Self {
        self.persistent_id = Some(id.into());
        self
    }

    /// Whether int and float columns also accept numbers sent as JSON strings
    /// (`{"price": "65000.1", "size": "12"}`, as many exchanges send them), with the
    /// [JSON format](Format::Json). Default: off, and a string for a numeric column is
    /// [`ParseError::WrongType`](crate::ParseError::WrongType).
    ///
    /// When on, a string met by an int or float column (a primary key column too) must
    /// hold exactly one number in JSON number syntax, and then has exactly the outcome
    /// that number has: `"65000.1"` is the same `f64` as `65000.1`, `"12"` in a float
    /// column is `12.0`, `"1.5"` or `"1e3"` in an int column is `WrongType` as `1.5` and
    /// `1e3` are, and `"18446744073709551616"` in an int column is
    /// [`IntegerOutOfRange`](crate::ParseError::IntegerOutOfRange). Anything JSON does
    /// not write as a number is refused as `WrongType`: surrounding whitespace, a
    /// leading `+` or `.`, a trailing `.`, leading zeros, hex, `_` separators, `NaN`,
    /// `inf`, an empty string. A number too large for an `f64` (`"1e400"`) is
    /// `IntegerOutOfRange` for an int column and `WrongType` for a float column.
    /// Numbers sent as numbers, and strings for other columns, are read as without the
    /// option (timestamps keep reading RFC 3339 strings).
    ///
    /// It applies to every message of the reader: bytes, text and
    /// `serde_json::Value`s, and typed sends agree with the value's JSON text. The
    /// [raw](Format::Raw) and [bytes](Format::Bytes) formats have no numeric columns.
    ///
    /// # Examples
    ///
    /// ```
    /// use intake_core::{Column, DataType, Reader, Schema};
    ///
    /// let schema = Schema::new([
    ///     Column::new("symbol", DataType::String).primary_key(),
    ///     Column::new("price", DataType::Float),
    ///     Column::new("size", DataType::Int),
    /// ])?;
    /// // Accepts {"symbol": "BTC-USD", "price": "65000.1", "size": "12"}.
    /// let reader = Reader::json(schema).lenient_numbers(true);
    /// # let _ = reader;
    /// # Ok::<(), intake_core::SchemaError>(())
    /// ```
    pub fn lenient_numbers(mut self, lenient: bool) -> Self {
        self.format.lenient_numbers = lenient;
        self
    }

    /// Keeps only the `rows` most recent rows of a table without a primary key (an
    /// append table, such as log lines), so that its memory stays bounded however long
    /// it runs. Default: every row is kept.
    ///
    /// A commit that takes the table over `rows` also removes its oldest rows (by
    /// arrival: the order of their generated keys), and the commit's
    /// [`ChangeBatch`](crate::ChangeBatch) retracts them, oldest first, like any other
    /// change: subscribers, sinks and [`changes`](crate::Table::changes) streams see
    /// them leave, folding every batch still gives the table, and with
    /// [persistence](crate::Pipeline::persist) the retractions are stored, so a restart
    /// restores the same bounded table. A row appended and pushed out within one commit
    /// is consolidated away: it appears in no batch. After every commit,
    /// [`Table::len`](crate::Table::len) is at most `rows`.
    ///
    /// Combines with [`retain_for`](Self::retain_for): a row leaves at whichever
    /// bound it meets first. A table restored with more rows than `rows` (it was
    /// stored under a larger bound) is cut down in a commit of its own as the pipeline
    /// starts.
    ///
    /// # Panics
    ///
    /// If `rows` is zero (use [`keep_rows(false)`](Self::keep_rows) to keep none), if
    /// the schema has a primary key (a keyed table holds one row per key: bound it by
    /// deleting keys from the source), or after `keep_rows(false)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use intake_core::Reader;
    ///
    /// // The last 100,000 log lines, none older than an hour.
    /// let reader = Reader::raw()
    ///     .retain_last(100_000)
    ///     .retain_for(Duration::from_secs(3600));
    /// # let _ = reader;
    /// ```
    #[track_caller]
    pub fn retain_last(mut self, rows: usize) -> Self {
        assert!(
            rows > 0,
            "retain_last must keep at least 1 row; to keep none, use keep_rows(false)"
        );
        self.refuse_keyed("retain_last");
        assert!(
            self.retention.keep_rows,
            "retain_last has no effect on a reader with keep_rows(false): it keeps no rows"
        );
        self.retention.last = Some(rows);
        self
    }

    /// Removes each row of a table without a primary key once it has been in the
    /// table for `ttl` (a time to live), even when no new messages arrive. Default:
    /// rows stay.
    ///
    /// A row's age counts from the commit that added it. It is removed by the first
    /// commit at least `ttl` after that; when no commit comes, the table makes one for
    /// the expired rows itself, at most the reader's
    /// [`autocommit_duration`](Self::autocommit_duration) (and at most one second)
    /// later, so that under a steady flow expiry rides along with the commits that
    /// happen anyway instead of doubling them. So that the table keeps about 1,024
    /// timestamps at most however often it commits, rows of commits less than
    /// `ttl / 1024` apart share the later commit's time: they may stay that much
    /// longer, never less than `ttl`. Removed rows are retracted in the
    /// commit's [`ChangeBatch`](crate::ChangeBatch) exactly as with
    /// [`retain_last`](Self::retain_last), and stored with persistence. Ages run on
    /// Tokio's clock (so `tokio::time::pause()` drives them in tests). Storage keeps no
    /// wall-clock times: rows restored from it count as added when the pipeline
    /// starts, so they may stay up to `ttl` longer than without the restart. Once the
    /// pipeline has ended, its tables are final and rows no longer expire.
    ///
    /// # Panics
    ///
    /// If `ttl` is zero, if the schema has a primary key (see
    /// [`retain_last`](Self::retain_last)), or after `keep_rows(false)`.
    #[track_caller]
    pub fn retain_for(mut self, ttl: Duration) -> Self {
        assert!(
            !ttl.is_zero(),
            "retain_for must be positive; to keep no rows, use keep_rows(false)"
        );
        self.refuse_keyed("retain_for");
        assert!(
            self.retention.keep_rows,
            "retain_for has no effect on a reader with keep_rows(false): it keeps no rows"
        );
        self.retention.ttl = Some(ttl);
        self
    }

    /// Whether the table keeps its rows. Default: `true`. With `false`, a table
    /// without a primary key only passes its commits on: every appended row reaches
    /// subscribers, sinks and [`changes`](crate::Table::changes) streams as an
    /// insertion, under its generated key, and is then forgotten, so memory does not
    /// grow with the rows (the log tailer's mode: ship lines on, keep none).
    ///
    /// The table then reads as empty at all times: [`Table::get`](crate::Table::get)
    /// returns `None`, [`len`](crate::Table::len) and the
    /// [`stats`](crate::Table::stats)' `rows` are 0, [`snapshot`](crate::Table::snapshot)
    /// has no rows, and a [`changes`](crate::Table::changes) stream attached late gets
    /// no snapshot batch, only the commits after it. No batch holds a retraction: rows
    /// never leave, because they were never kept. Commits, times, offsets and the
    /// counters (`messages`, `commits`, `changes`) work as usual.
    ///
    /// # Panics
    ///
    /// With `false`: if the schema has a primary key (an upsert must retract the row
    /// it replaces, so a keyed table has to keep its rows), or after
    /// [`retain_last`](Self::retain_last) or [`retain_for`](Self::retain_for).
    /// [`Pipeline::read`](crate::Pipeline::read) and
    /// [`Pipeline::persist`](crate::Pipeline::persist) refuse a reader that keeps no
    /// rows in a persistent pipeline: storage restores a table from its rows, and a
    /// sink behind the table replays commits from storage, so neither could be done
    /// right. Resume such a pipeline's sources with
    /// [`Pipeline::resume_from`](crate::Pipeline::resume_from) and the
    /// [offsets](crate::ChangeBatch::offsets) of the last batch your output recorded.
    ///
    /// # Examples
    ///
    /// ```
    /// use intake_core::Reader;
    ///
    /// let reader = Reader::raw().keep_rows(false);
    /// # let _ = reader;
    /// ```
    #[track_caller]
    pub fn keep_rows(mut self, keep: bool) -> Self {
        if !keep {
            self.refuse_keyed("keep_rows(false)");
            assert!(
                !self.retention.is_bounded(),
                "keep_rows(false) cannot be combined with retain_last or retain_for: a table that keeps no rows has none to retain"
            );
        }
        self.retention.keep_rows = keep;
        self
    }

    #[track_caller]
    fn refuse_keyed(&self, setting: &str) {
        assert!(
            self.schema.primary_key().is_empty(),
            "{setting} applies only to tables without a primary key (append tables), but the schema has one: a keyed table holds one row per key, and an upsert must retract the row it replaces; bound a keyed table by deleting keys from its source"
        );
    }

    /// The schema rows are parsed into.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Column;

    /// Regression: `Reader::new(schema, Format::Raw)` accepted any schema, and reading a
    /// row's second column then panicked with an index out of bounds.
    #[test]
    fn a_format_refuses_a_schema_it_cannot_fill() {
        let two = Schema::new([
            Column::new("level", DataType::String),
            Column::new("message", DataType::String),
        ])
        .unwrap();
        for (format, schema) in [
            (Format::Raw, two.clone()),
            (Format::Bytes, two.clone()),
            (Format::Raw, Schema::bytes()),
            (Format::Bytes, Schema::raw()),
        ] {
            let error = Reader::new(schema, format).unwrap_err();
            assert!(matches!(error, SchemaError::FormatMismatch { .. }), "{error}");
        }
        let line = Schema::new([Column::new("line", DataType::String).primary_key()]).unwrap();
        assert!(
            Reader::new(line, Format::Raw).is_ok(),
            "one string column under any name"
        );
        assert!(Reader::new(two.clone(), Format::Json).is_ok());
        assert_eq!(
            Reader::new(two, Format::Raw).unwrap_err().to_string(),
            "the Raw format fills exactly one string column, but the schema is [level: string, message: string]; use Schema::raw() or a schema of one string column"
        );
    }
}
