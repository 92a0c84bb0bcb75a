//! Live counters of tables and sources, and their export through the
//! [`metrics`](https://docs.rs/metrics) facade.
//!
//! Sources count into plain atomics on their own task (one relaxed add per message);
//! the table's driver copies the counts to the facade after every commit and once a
//! second when idle, so a busy source pays nothing for an exporter. Without a
//! recorder installed, the facade's handles do nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::{Counter, Gauge, Histogram};
use serde::ser::{Serialize, SerializeStruct, Serializer};

/// How often an idle table refreshes its exported figures, such as the time of each
/// source's last message.
pub(crate) const EXPORT_EVERY: Duration = Duration::from_secs(1);

/// A source's counters. Shared by the source's context (which counts) and the
/// table (which exports them and hands out [`SourceStats`]).
pub(crate) struct SourceCounters {
    name: Arc<str>,
    table: Arc<str>,
    pub(crate) messages: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) rejected: AtomicU64,
    /// Messages at the last export: a change means the source sent something since.
    exported_messages: AtomicU64,
    /// When an export last saw new messages, in milliseconds since the Unix epoch
    /// (0: never).
    last_message_ms: AtomicU64,
    exported: SourceMetrics,
}

struct SourceMetrics {
    messages: Counter,
    bytes: Counter,
    last_message: Gauge,
}

impl SourceCounters {
    pub(crate) fn new(table: Arc<str>, name: Arc<str>) -> Self {
        let labels = [("table", table.to_string()), ("source", name.to_string())];
        SourceCounters {
            exported: SourceMetrics {
                messages: metrics::counter!("intake_source_messages_total", &labels),
                bytes: metrics::counter!("intake_source_bytes_total", &labels),
                last_message: metrics::gauge!("intake_source_last_message_seconds", &labels),
            },
            name,
            table,
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            exported_messages: AtomicU64::new(0),
            last_message_ms: AtomicU64::new(0),
        }
    }

    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Counts a message the source sent, of `bytes` bytes as it arrived.
    #[inline]
    pub(crate) fn message(&self, bytes: usize) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts bad input, by the kind of its [`ParseError`](crate::ParseError).
    pub(crate) fn rejected(&self, kind: &'static str) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        // Registered on the slow path only: bad input is the exception.
        metrics::counter!(
            "intake_source_rejected_total",
            "table" => self.table.to_string(),
            "source" => self.name.to_string(),
            "kind" => kind,
        )
        .increment(1);
    }

    fn export(&self, now: SystemTime) {
        let messages = self.messages.load(Ordering::Relaxed);
        if self.exported_messages.swap(messages, Ordering::Relaxed) != messages {
            let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
            let ms = u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX);
            self.last_message_ms.store(ms, Ordering::Relaxed);
            self.exported.last_message.set(since_epoch.as_secs_f64());
        }
        self.exported.messages.absolute(messages);
        self.exported.bytes.absolute(self.bytes.load(Ordering::Relaxed));
    }
}

/// Live counters of one source of a table; see
/// [`TableStats::sources`](crate::TableStats::sources).
///
/// Like every stats handle of intake, it is cheap to clone, each getter reads the
/// figure as it is now, and it serializes (with serde) to an object of the figures.
#[derive(Clone)]
pub struct SourceStats(pub(crate) Arc<SourceCounters>);

impl SourceStats {
    /// The source's name (`source/partition` for a partition).
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Messages the source sent (rows, deletes), bad input included.
    pub fn messages(&self) -> u64 {
        self.0.messages.load(Ordering::Relaxed)
    }

    /// Bytes of the messages the source sent as bytes or text, as they arrived.
    pub fn bytes(&self) -> u64 {
        self.0.bytes.load(Ordering::Relaxed)
    }

    /// Messages rejected as bad input.
    pub fn rejected(&self) -> u64 {
        self.0.rejected.load(Ordering::Relaxed)
    }

    /// When the table last saw a new message from the source, to within a second
    /// (the table checks after every commit and once a second); `None` before the
    /// first. A feed that is connected but silent shows here.
    pub fn last_message(&self) -> Option<SystemTime> {
        match self.0.last_message_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => UNIX_EPOCH.checked_add(Duration::from_millis(ms)),
        }
    }
}

impl std::fmt::Debug for SourceStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceStats")
            .field("name", &self.name())
            .field("messages", &self.messages())
            .field("bytes", &self.bytes())
            .field("rejected", &self.rejected())
            .field("last_message", &self.last_message())
            .finish()
    }
}

impl Serialize for SourceStats {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("SourceStats", 5)?;
        s.serialize_field("name", self.name())?;
        s.serialize_field("messages", &self.messages())?;
        s.serialize_field("bytes", &self.bytes())?;
        s.serialize_field("rejected", &self.rejected())?;
        let last = self
            .last_message()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64());
        s.serialize_field("last_message_unix_seconds", &last)?;
        s.end()
    }
}

/// The connection figures a network source reports through the `metrics` facade,
/// labelled with its table and name: `intake_source_connected` (1 while connected, 0
/// otherwise) and `intake_source_reconnects_total`, with a `cause` label.
///
/// intake's WebSocket, server-sent events and JetStream sources report through it; a
/// custom network source can too, so that dashboards see every feed the same way.
///
/// # Examples
///
/// ```
/// use intake_core::{source_fn, ConnectionMetrics, SourceContext};
///
/// let source = source_fn(|ctx: SourceContext| async move {
///     let connection = ConnectionMetrics::new(&ctx);
///     connection.set_connected(true);
///     // ... read until the connection is lost ...
///     connection.set_connected(false);
///     connection.reconnect("lost");
///     Ok(())
/// });
/// # let _ = source;
/// ```
#[derive(Clone)]
pub struct ConnectionMetrics {
    table: Arc<str>,
    source: Arc<str>,
    connected: Gauge,
}

impl ConnectionMetrics {
    /// The figures of the source `ctx` belongs to, registered with the facade's
    /// recorder (install it before the pipeline runs).
    pub fn new(ctx: &crate::SourceContext) -> Self {
        let (table, source) = (ctx.table_name(), ctx.name());
        let labels = [("table", table.to_owned()), ("source", source.to_owned())];
        ConnectionMetrics {
            table: table.into(),
            source: source.into(),
            connected: metrics::gauge!("intake_source_connected", &labels),
        }
    }

    /// Whether the source is connected now.
    pub fn set_connected(&self, connected: bool) {
        self.connected.set(if connected { 1.0 } else { 0.0 });
    }

    /// Counts a reconnect, with a short, stable `cause` such as `connect_failed`,
    /// `closed`, `silent` or `lost`.
    pub fn reconnect(&self, cause: &'static str) {
        metrics::counter!(
            "intake_source_reconnects_total",
            "table" => self.table.to_string(),
            "source" => self.source.to_string(),
            "cause" => cause,
        )
        .increment(1);
    }
}

impl std::fmt::Debug for ConnectionMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionMetrics")
            .field("table", &self.table)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// A table's counters, kept by the table itself.
#[derive(Default)]
pub(crate) struct TableCounters {
    pub(crate) messages: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) commits: AtomicU64,
    pub(crate) changes: AtomicU64,
    /// Events waiting in the table's queue at the last commit.
    pub(crate) queue_depth: AtomicU64,
    /// Batches waiting for the slowest subscriber at the last commit.
    pub(crate) subscriber_lag: AtomicU64,
    /// The last commit's latency in microseconds, from its first message to its
    /// delivery.
    pub(crate) commit_latency_us: AtomicU64,
}

/// The facade's handles for a table's figures, registered when the table's driver
/// starts (so a recorder installed before `Pipeline::run` sees them).
pub(crate) struct TableMetrics {
    messages: Counter,
    rejected: Counter,
    commits: Counter,
    changes: Counter,
    rows: Gauge,
    queue_depth: Gauge,
    subscriber_lag: Gauge,
    commit_latency: Histogram,
}

impl TableMetrics {
    pub(crate) fn new(table: &str) -> Self {
        let labels = [("table", table.to_owned())];
        TableMetrics {
            messages: metrics::counter!("intake_table_messages_total", &labels),
            rejected: metrics::counter!("intake_table_rejected_total", &labels),
            commits: metrics::counter!("intake_table_commits_total", &labels),
            changes: metrics::counter!("intake_table_changes_total", &labels),
            rows: metrics::gauge!("intake_table_rows", &labels),
            queue_depth: metrics::gauge!("intake_table_queue_depth", &labels),
            subscriber_lag: metrics::gauge!("intake_table_subscriber_lag", &labels),
            commit_latency: metrics::histogram!("intake_table_commit_latency_seconds", &labels),
        }
    }

    /// Records a delivered commit's latency.
    pub(crate) fn commit_latency(&self, counters: &TableCounters, latency: Duration) {
        // At least 1: 0 means "no commit yet" to `TableStats::last_commit_latency`.
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1);
        counters.commit_latency_us.store(us, Ordering::Relaxed);
        self.commit_latency.record(latency.as_secs_f64());
    }

    /// Copies the table's and its sources' counts to the facade.
    pub(crate) fn export(&self, counters: &TableCounters, rows: usize, sources: &[Arc<SourceCounters>]) {
        self.messages.absolute(counters.messages.load(Ordering::Relaxed));
        self.rejected.absolute(counters.rejected.load(Ordering::Relaxed));
        self.commits.absolute(counters.commits.load(Ordering::Relaxed));
        self.changes.absolute(counters.changes.load(Ordering::Relaxed));
        self.rows.set(rows as f64);
        self.queue_depth
            .set(counters.queue_depth.load(Ordering::Relaxed) as f64);
        self.subscriber_lag
            .set(counters.subscriber_lag.load(Ordering::Relaxed) as f64);
        let now = SystemTime::now();
        for source in sources {
            source.export(now);
        }
    }
}
