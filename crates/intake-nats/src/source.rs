//! The partitioned JetStream source.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::Subject;
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use intake_core::{
    BoxError, ConnectionMetrics, DurableOffset, PartitionedSource, Reconnect, SendError, Source,
    SourceContext,
};

use crate::error::NatsError;
use crate::layout::Partitions;

/// A JetStream stream read as a [`PartitionedSource`]: one stream, its messages split
/// into [`Partitions`] by subject, each partition read by exactly one reader, in
/// stream order.
///
/// Register it with [`Pipeline::read_partitioned`](intake_core::Pipeline::read_partitioned);
/// with [`Pipeline::worker`](intake_core::Pipeline::worker), several processes split the
/// partitions between them. Each message's payload is one message for the table (parsed
/// by the [`Reader`](intake_core::Reader)'s format); its offset is its stream sequence.
///
/// # Exactly-once table state
///
/// - Each partition reads through a consumer of its own (a pull consumer filtered on
///   its subjects, with `AckPolicy::All`) that starts at the sequence after the
///   partition's resume offset: intake's committed offset is the truth, never the
///   broker's record of acks.
/// - A message at or below the last sequence the partition has seen (a redelivery after
///   `ack_wait`, a consumer re-created after a reconnect) is dropped and counted
///   ([`JetStreamStats::redelivered_dropped`]), never applied twice.
/// - Acks go out only for offsets the table reports
///   [durable](intake_core::SourceContext::durable_offset) (stored and synced with
///   persistence on, committed and delivered otherwise), so the broker never forgets a
///   message the table could still lose. At most
///   [`max_ack_pending`](Self::max_ack_pending) messages are read and not yet acked.
/// - A lost connection, a broker restart, a stall (missed heartbeats) or a deleted
///   consumer end nothing: the client reconnects by itself and the partition
///   re-creates its consumer after the last sequence it saw, waiting between attempts
///   as the [`Reconnect`] policy says.
///
/// The stream must keep its messages by limits (`RetentionPolicy::Limits`, the
/// default): with interest or work-queue retention the broker could delete messages
/// while no consumer exists (a worker down), and a resume would find them gone.
///
/// # Examples
///
/// ```no_run
/// use intake_core::{Column, DataType, Pipeline, Reader, Schema};
/// use intake_nats::{JetStreamSource, Partitions};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let jetstream = async_nats::jetstream::new(client);
/// let source = JetStreamSource::new(jetstream, "orders", Partitions::numbered("orders", 4));
///
/// let schema = Schema::new([Column::new("id", DataType::Int).primary_key()])?;
/// // This process is worker 0 of 2: it reads partitions 0 and 2.
/// let mut pipeline = Pipeline::new().worker(0, 2);
/// let orders = pipeline.read_partitioned("orders", source, Reader::json(schema));
/// pipeline.run().await?;
/// # let _ = orders;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use]
pub struct JetStreamSource {
    settings: Settings,
}

#[derive(Debug, Clone)]
struct Settings {
    jetstream: jetstream::Context,
    stream: String,
    partitions: Partitions,
    reconnect: Reconnect,
    max_ack_pending: usize,
    ack_wait: Duration,
    heartbeat: Duration,
    batch: usize,
    inactive_threshold: Duration,
    stats: JetStreamStats,
}

/// Servers before this one ignore `filter_subjects` (several subjects per consumer)
/// without an error, and would deliver every subject of the stream.
const SEVERAL_SUBJECTS_SINCE: (u64, u64, u64) = (2, 10, 0);

impl JetStreamSource {
    /// Reads `partitions` of the stream named `stream` through `jetstream`.
    pub fn new(jetstream: jetstream::Context, stream: impl Into<String>, partitions: Partitions) -> Self {
        JetStreamSource {
            settings: Settings {
                jetstream,
                stream: stream.into(),
                partitions,
                reconnect: Reconnect::default(),
                max_ack_pending: 10_000,
                ack_wait: Duration::from_secs(30),
                heartbeat: Duration::from_secs(5),
                batch: 500,
                inactive_threshold: Duration::from_secs(300),
                stats: JetStreamStats::default(),
            },
        }
    }

    /// When and how often a partition re-creates its consumer after an error (a lost
    /// connection, missed heartbeats, a deleted consumer). Default:
    /// [`Reconnect::default`], retrying forever. With a
    /// [`max_retries`](Reconnect::max_retries) limit, the partition fails with
    /// [`NatsError::GaveUp`] once that many attempts in a row failed; each attempt to
    /// create a consumer waits up to the JetStream context's request timeout
    /// (`async_nats::jetstream::context::ContextBuilder::timeout`).
    pub fn reconnect(mut self, reconnect: Reconnect) -> Self {
        self.settings.reconnect = reconnect;
        self
    }

    /// How many messages a partition may have read and not yet acked (they wait for
    /// the table to make them durable); the server stops delivering at this many.
    /// Bounds the ack handles kept. Default: 10,000.
    ///
    /// # Panics
    ///
    /// If `max` is zero.
    #[track_caller]
    pub fn max_ack_pending(mut self, max: usize) -> Self {
        assert!(max > 0, "max_ack_pending must be at least 1");
        self.settings.max_ack_pending = max;
        self
    }

    /// How long the server waits for an ack before it delivers a message again (the
    /// source drops the redelivery). Default: 30 s.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.settings.ack_wait = ack_wait;
        self
    }

    /// How often the server sends a heartbeat while it has nothing to deliver; two
    /// missed heartbeats count as a stalled connection, and the consumer is
    /// re-created. Default: 5 s.
    ///
    /// # Panics
    ///
    /// If `heartbeat` is shorter than 100 ms.
    #[track_caller]
    pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
        assert!(
            heartbeat >= Duration::from_millis(100),
            "the heartbeat must be at least 100 ms"
        );
        self.settings.heartbeat = heartbeat;
        self
    }

    /// How many messages each pull request asks for. Default: 500.
    ///
    /// # Panics
    ///
    /// If `batch` is zero.
    #[track_caller]
    pub fn batch(mut self, batch: usize) -> Self {
        assert!(batch > 0, "the batch must be at least 1");
        self.settings.batch = batch;
        self
    }

    /// The source's counters, summed over its partitions, live.
    pub fn stats(&self) -> JetStreamStats {
        self.settings.stats.clone()
    }
}

/// Live counters of a [`JetStreamSource`], summed over its partitions; see
/// [`JetStreamSource::stats`].
///
/// Like every stats handle of intake (`TableStats`, `WsStats`), it is cheap to clone,
/// each getter reads the figure as it is now, and it serializes (with serde) to an
/// object of the figures. Messages, bytes and rejections per partition are also
/// counted by the table: see `TableStats::sources`.
#[derive(Clone, Default)]
pub struct JetStreamStats(Arc<Counters>);

#[derive(Default)]
struct Counters {
    consumers: AtomicU64,
    reconnects: AtomicU64,
    messages: AtomicU64,
    redelivered_dropped: AtomicU64,
    acks: AtomicU64,
}

impl JetStreamStats {
    /// Consumers created, one per partition at start plus one per reconnect.
    pub fn consumers(&self) -> u64 {
        self.0.consumers.load(Ordering::Relaxed)
    }

    /// Reconnects scheduled: each lost connection, stall, or failed attempt to create
    /// a consumer that was followed by another attempt.
    pub fn reconnects(&self) -> u64 {
        self.0.reconnects.load(Ordering::Relaxed)
    }

    /// Messages sent to the table.
    pub fn messages(&self) -> u64 {
        self.0.messages.load(Ordering::Relaxed)
    }

    /// Messages dropped because their sequence was at or below the last one their
    /// partition had seen: redeliveries after `ack_wait`, or messages a re-created
    /// consumer delivered again. Never applied twice.
    pub fn redelivered_dropped(&self) -> u64 {
        self.0.redelivered_dropped.load(Ordering::Relaxed)
    }

    /// Acks sent, each acknowledging every message up to a durable offset.
    pub fn acks(&self) -> u64 {
        self.0.acks.load(Ordering::Relaxed)
    }

    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for JetStreamStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamStats")
            .field("consumers", &self.consumers())
            .field("reconnects", &self.reconnects())
            .field("messages", &self.messages())
            .field("redelivered_dropped", &self.redelivered_dropped())
            .field("acks", &self.acks())
            .finish()
    }
}

impl serde::Serialize for JetStreamStats {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut s = serializer.serialize_struct("JetStreamStats", 5)?;
        s.serialize_field("consumers", &self.consumers())?;
        s.serialize_field("reconnects", &self.reconnects())?;
        s.serialize_field("messages", &self.messages())?;
        s.serialize_field("redelivered_dropped", &self.redelivered_dropped())?;
        s.serialize_field("acks", &self.acks())?;
        s.end()
    }
}

#[intake_core::async_trait]
impl PartitionedSource for JetStreamSource {
    /// Checks the stream and the layout, and lists the partitions.
    ///
    /// # Errors
    ///
    /// [`NatsError::ServerTooOld`] if the layout uses several subjects per partition on
    /// a server before 2.10, [`NatsError::MissingStream`],
    /// [`NatsError::LayoutMismatch`] (no partitions, a partition subject not in the
    /// stream, partitions sharing subjects, retention other than limits),
    /// [`NatsError::Request`] for an error the server returned, and
    /// [`NatsError::GaveUp`] when the server did not answer within the reconnect policy.
    async fn list_partitions(&mut self) -> Result<Vec<String>, BoxError> {
        let settings = &self.settings;
        let mismatch = |reason: String| NatsError::LayoutMismatch {
            stream: settings.stream.clone(),
            reason,
        };
        if settings.partitions.is_empty() {
            return Err(mismatch("the layout has no partitions".into()).into());
        }
        if settings.partitions.uses_several_subjects() {
            let version = settings.jetstream.client().server_info().version;
            if parse_version(&version).is_some_and(|v| v < SEVERAL_SUBJECTS_SINCE) {
                return Err(NatsError::ServerTooOld {
                    version,
                    required: "2.10.0",
                    feature: "a partition of several subjects (consumer filter_subjects)",
                }
                .into());
            }
        }
        let info = stream_info(settings).await?;
        if info.config.retention != stream::RetentionPolicy::Limits {
            return Err(mismatch(format!(
                "its retention is {:?}; a partitioned source needs limits retention, so that messages stay while no consumer exists and a worker can resume from its own offset",
                info.config.retention
            ))
            .into());
        }
        settings
            .partitions
            .check(&info.config.subjects)
            .map_err(mismatch)?;
        Ok(settings.partitions.names().map(str::to_owned).collect())
    }

    /// The reader of `partition`, starting at the stream sequence after `resume`.
    ///
    /// # Errors
    ///
    /// [`NatsError::InvalidOffset`] if `resume` is not a sequence number, and
    /// [`NatsError::UnknownPartition`] for a partition not in the layout.
    async fn build_partition(
        &mut self,
        partition: &str,
        resume: Option<&serde_json::Value>,
    ) -> Result<Box<dyn Source>, BoxError> {
        let Some(subjects) = self.settings.partitions.subjects(partition) else {
            return Err(NatsError::UnknownPartition {
                partition: partition.to_owned(),
                layout: self.settings.partitions.to_string(),
            }
            .into());
        };
        let last_seen = match resume {
            None => 0,
            Some(offset) => offset.as_u64().ok_or_else(|| NatsError::InvalidOffset {
                partition: partition.to_owned(),
                offset: offset.clone(),
            })?,
        };
        Ok(Box::new(PartitionReader {
            settings: Arc::new(self.settings.clone()),
            subjects: subjects.to_vec(),
            last_seen,
        }))
    }
}

/// The stream's info, retrying requests that got no answer.
async fn stream_info(settings: &Settings) -> Result<stream::Info, NatsError> {
    let mut delays = settings.reconnect.delays();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let error = match settings.jetstream.get_stream(&settings.stream).await {
            Ok(stream) => return Ok(stream.cached_info().clone()),
            Err(error) => error,
        };
        match error.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(api)
                if api.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                return Err(NatsError::MissingStream {
                    stream: settings.stream.clone(),
                });
            }
            jetstream::context::GetStreamErrorKind::Request => {}
            _ => {
                return Err(NatsError::Request {
                    what: format!("reading the info of stream `{}`", settings.stream),
                    source: error.into(),
                });
            }
        }
        let Some(delay) = delays.next() else {
            return Err(NatsError::GaveUp {
                attempts,
                last_error: error.into(),
            });
        };
        tracing::warn!(stream = %settings.stream, %error, ?delay, "JetStream did not answer; retrying");
        tokio::time::sleep(delay).await;
    }
}

/// `major.minor.patch` of a server version such as `2.10.4` or `2.11.0-RC.1`.
pub(crate) fn parse_version(version: &str) -> Option<(u64, u64, u64)> {
    let core = version.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// Reads one partition.
struct PartitionReader {
    settings: Arc<Settings>,
    subjects: Vec<String>,
    /// The last stream sequence sent to the table (or resumed after).
    last_seen: u64,
}

/// Why a consumer's message stream stopped.
enum Interrupted {
    /// Shutdown began, or the table ended: the source is done.
    Done,
    /// The connection, the consumer or the pull failed: re-create the consumer.
    Lost(BoxError),
    /// The consumer could not be created: try again.
    NoConsumer(BoxError),
}

/// Reads ahead of durability: the ack handles of messages sent to the table and not yet
/// acked, oldest first, at most `max_ack_pending`.
struct PendingAcks {
    handles: VecDeque<(u64, Subject)>,
    max: usize,
}

impl PendingAcks {
    fn push(&mut self, sequence: u64, reply: Subject) {
        if self.handles.len() >= self.max {
            // With AckPolicy::All a later handle acks this one too: dropping the
            // oldest loses nothing and keeps memory bounded even if a server delivers
            // more than max_ack_pending.
            self.handles.pop_front();
        }
        self.handles.push_back((sequence, reply));
    }

    /// The newest handle at or below `durable`, removing every handle up to it.
    fn take_up_to(&mut self, durable: u64) -> Option<Subject> {
        let mut newest = None;
        while self.handles.front().is_some_and(|(seq, _)| *seq <= durable) {
            newest = self.handles.pop_front().map(|(_, reply)| reply);
        }
        newest
    }
}

#[intake_core::async_trait]
impl Source for PartitionReader {
    /// Its offsets are exact, so its messages are committed only with one.
    fn reports_offsets(&self) -> bool {
        true
    }

    async fn run(&mut self, ctx: SourceContext) -> Result<(), BoxError> {
        let mut durable = Some(ctx.durable_offset());
        let mut delays = self.settings.reconnect.delays();
        let mut attempts = 0;
        let connection = ConnectionMetrics::new(&ctx);
        loop {
            let healthy_after = tokio::time::Instant::now() + self.settings.reconnect.healthy_duration();
            let seen_before = self.last_seen;
            let (error, cause) = match self.read(&ctx, &mut durable, &connection).await {
                Interrupted::Done => return Ok(()),
                Interrupted::Lost(error) => (error, "lost"),
                Interrupted::NoConsumer(error) => (error, "connect_failed"),
            };
            // A consumer that delivered, or stayed up long enough, was healthy.
            if self.last_seen > seen_before || tokio::time::Instant::now() >= healthy_after {
                delays = self.settings.reconnect.delays();
                attempts = 0;
            }
            attempts += 1;
            let Some(delay) = delays.next() else {
                return Err(NatsError::GaveUp {
                    attempts,
                    last_error: error,
                }
                .into());
            };
            JetStreamStats::add(&self.settings.stats.0.reconnects);
            connection.reconnect(cause);
            tracing::warn!(source = ctx.name(), %error, ?delay, "JetStream consumer lost; re-creating it after the last sequence read");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = ctx.cancelled() => return Ok(()),
            }
        }
    }
}

impl PartitionReader {
    /// Creates a consumer after the last sequence seen and reads from it until it
    /// fails or the source is done.
    async fn read(
        &mut self,
        ctx: &SourceContext,
        durable: &mut Option<DurableOffset>,
        connection: &ConnectionMetrics,
    ) -> Interrupted {
        let settings = self.settings.clone();
        let consumer = tokio::select! {
            consumer = self.create_consumer() => consumer,
            () = ctx.cancelled() => return Interrupted::Done,
        };
        let consumer = match consumer {
            Ok(consumer) => consumer,
            Err(error) => return Interrupted::NoConsumer(error),
        };
        JetStreamStats::add(&settings.stats.0.consumers);
        connection.set_connected(true);
        let interrupted = self.read_from(ctx, durable, &consumer).await;
        connection.set_connected(false);
        // The consumer would expire by itself after inactive_threshold; deleting it
        // frees the server at once. Failing to is harmless.
        let name = consumer.cached_info().name.clone();
        let delete = settings
            .jetstream
            .delete_consumer_from_stream(name, settings.stream.as_str());
        let _ = tokio::time::timeout(Duration::from_millis(500), delete).await;
        interrupted
    }

    async fn create_consumer(&self) -> Result<consumer::PullConsumer, BoxError> {
        let settings = &self.settings;
        let (filter_subject, filter_subjects) = match self.subjects.as_slice() {
            [one] => (one.clone(), Vec::new()),
            several => (String::new(), several.to_vec()),
        };
        let config = consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: self.last_seen + 1,
            },
            ack_policy: consumer::AckPolicy::All,
            ack_wait: settings.ack_wait,
            max_ack_pending: i64::try_from(settings.max_ack_pending).unwrap_or(i64::MAX),
            filter_subject,
            filter_subjects,
            inactive_threshold: settings.inactive_threshold,
            ..Default::default()
        };
        let consumer = settings
            .jetstream
            .create_consumer_on_stream(config, settings.stream.as_str())
            .await?;
        Ok(consumer)
    }

    async fn read_from(
        &mut self,
        ctx: &SourceContext,
        durable: &mut Option<DurableOffset>,
        consumer: &consumer::PullConsumer,
    ) -> Interrupted {
        let settings = self.settings.clone();
        let stats = &settings.stats.0;
        let messages = consumer
            .stream()
            .max_messages_per_batch(settings.batch)
            .heartbeat(settings.heartbeat)
            .expires(settings.heartbeat * 6)
            .messages()
            .await;
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(error) => return Interrupted::Lost(error.into()),
        };
        // Handles of the previous consumer cannot ack for this one.
        let mut pending = PendingAcks {
            handles: VecDeque::new(),
            max: settings.max_ack_pending,
        };
        let client = settings.jetstream.client();
        loop {
            let message = tokio::select! {
                () = ctx.cancelled() => return Interrupted::Done,
                offset = changed(durable) => {
                    match offset {
                        Some(offset) => {
                            if let Some(reply) = offset.as_u64().and_then(|seq| pending.take_up_to(seq)) {
                                // A lost ack only means a redelivery, which is dropped by
                                // sequence.
                                if client.publish(reply, bytes::Bytes::new()).await.is_ok() {
                                    JetStreamStats::add(&stats.acks);
                                }
                            }
                        }
                        // The table ended: no more commits, so nothing more to read.
                        None => *durable = None,
                    }
                    continue;
                }
                message = messages.next() => message,
            };
            let message = match message {
                Some(Ok(message)) => message,
                Some(Err(error)) => return Interrupted::Lost(error.into()),
                None => return Interrupted::Lost("the consumer's message stream ended".into()),
            };
            let sequence = match message.info() {
                Ok(info) => info.stream_sequence,
                Err(error) => return Interrupted::Lost(error),
            };
            if sequence <= self.last_seen {
                JetStreamStats::add(&stats.redelivered_dropped);
                continue;
            }
            let Some(reply) = message.message.reply.clone() else {
                return Interrupted::Lost("a JetStream message without a reply subject".into());
            };
            // A failed send means shutdown, or bad input under ErrorPolicy::Fail (the
            // pipeline is failing): either way the source is done.
            if send(ctx, message.message.payload.clone(), sequence)
                .await
                .is_err()
            {
                return Interrupted::Done;
            }
            self.last_seen = sequence;
            JetStreamStats::add(&stats.messages);
            pending.push(sequence, reply);
        }
    }
}

/// Sends a message's payload and then its sequence as the offset.
async fn send(ctx: &SourceContext, payload: bytes::Bytes, sequence: u64) -> Result<(), SendError> {
    ctx.next_bytes(payload).await?;
    ctx.report_offset(sequence.into()).await
}

/// The next durable offset; pending forever once the table has ended.
async fn changed(durable: &mut Option<DurableOffset>) -> Option<serde_json::Value> {
    match durable {
        Some(durable) => durable.changed().await.ok(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions_are_read() {
        assert_eq!(parse_version("2.9.10"), Some((2, 9, 10)));
        assert_eq!(parse_version("2.11.0-RC.1"), Some((2, 11, 0)));
        assert_eq!(parse_version("2.10"), Some((2, 10, 0)));
        assert_eq!(parse_version(""), None);
        assert!(parse_version("2.9.10").is_some_and(|v| v < SEVERAL_SUBJECTS_SINCE));
        assert!(parse_version("2.15.1").is_some_and(|v| v >= SEVERAL_SUBJECTS_SINCE));
    }

    #[test]
    fn pending_acks_stay_bounded_and_ack_the_newest_durable() {
        let mut pending = PendingAcks {
            handles: VecDeque::new(),
            max: 3,
        };
        for seq in 1..=5 {
            pending.push(seq, Subject::from(format!("ack.{seq}")));
        }
        assert_eq!(pending.handles.len(), 3, "bounded by max_ack_pending");
        assert_eq!(pending.take_up_to(2), None, "nothing kept at or below 2");
        assert_eq!(pending.take_up_to(4), Some(Subject::from("ack.4")));
        assert_eq!(pending.handles.len(), 1);
        assert_eq!(pending.take_up_to(4), None);
        assert_eq!(pending.take_up_to(9), Some(Subject::from("ack.5")));
    }
}
