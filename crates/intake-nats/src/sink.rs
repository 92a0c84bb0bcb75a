//! The JetStream changelog sink: a table's changes as the last value of each key.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use async_nats::header::{NATS_EXPECTED_LAST_SEQUENCE, NATS_EXPECTED_LAST_SUBJECT_SEQUENCE};
use async_nats::jetstream::context::{GetStreamErrorKind, PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{Config as StreamConfig, LastRawMessageErrorKind, Stream};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use indexmap::IndexMap;
use intake_core::{BoxError, ChangeBatch, Key, Reconnect, Row, Sink, Time};

use crate::changelog::{self, Commit, header};

/// Publishes that may wait for their acks at once (on a server older than 2.11, where
/// every message is acknowledged). Below async-nats' default limit of in-flight acks
/// (5000), whose permits are only returned when an ack is awaited: sending more before
/// awaiting any would wait forever.
const ACK_WINDOW: usize = 1024;

/// On a chained write, one message in this many asks for an ack (and the last of each
/// commit). The messages in between are stored or refused without a reply; each expects
/// its predecessor, so the ack of a later one covers them.
const ACK_EVERY: u64 = 256;

/// Acks of a chained write awaited oldest first once this many are pending: up to
/// `ACK_EVERY * ACKS_IN_FLIGHT` messages sent and not yet confirmed (as many when a retry
/// asks an ack of every message).
const ACKS_IN_FLIGHT: usize = 4;

/// The first server version that takes `Nats-Expected-Last-Subject-Sequence-Subject`;
/// an older one would ignore it and check the message's own subject instead.
const CHAINED_SINCE: (u64, u64, u64) = (2, 11, 0);

/// Names the subject `Nats-Expected-Last-Subject-Sequence` is checked on.
const EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: HeaderName =
    HeaderName::from_static("Nats-Expected-Last-Subject-Sequence-Subject");

/// Publishes a table's changes to a JetStream stream as a changelog: one subject per
/// key, holding the key's last row, or a tombstone once it is deleted. A
/// [`Replica`](crate::Replica) rebuilds the table from it.
///
/// The stream belongs to the sink: its only subject is `<prefix>.>`, and each key's
/// subject is `<prefix>.<key>`, the key's values [encoded](crate::key_subject) so that
/// any string (dots, `*`, `>`, spaces) stays one subject token per key column. By
/// default the sink creates the stream if it is missing, with
/// `max_messages_per_subject = 1` so the server keeps only the last message of each key
/// (the changelog stays as large as the table, plus one tombstone per deleted key).
///
/// A row's payload is the row as a JSON object; a tombstone's is empty, and it carries
/// `Intake-Operation: DEL` and the key as JSON (`Intake-Key`). Every message carries the
/// header `Intake-Commit`: the commit's time, then the time of the sink's previous
/// commit (if any), then `end` on the commit's last message, separated by spaces
/// (`7 5`, `7 5 end`, `1 end`). (One header of intake's per row keeps the client's
/// work per message low: W7 in docs/benchmarks.md.)
///
/// # Exactly once, and one writer
///
/// [`write_batch`](Sink::write_batch) publishes every change of a commit without waiting
/// in between, then waits for the acks, so it returns only once the server has stored the
/// whole commit. The messages form a chain: each expects the stream's last sequence to
/// be the one before it (`Nats-Expected-Last-Sequence`) and that sequence to be the last
/// of the subject the sink published on before it (`Nats-Expected-Last-Subject-Sequence`
/// with `Nats-Expected-Last-Subject-Sequence-Subject`, nats-server 2.11 or later). A
/// message is stored only right after the one this sink sent before it: if anything else
/// was published on the stream since this sink last wrote (a second sink, a stale process
/// that still thinks it owns the table), that message and every later one of the write
/// are refused, and the sink fails with [`SinkError::Conflict`] rather than interleave its
/// commits with another writer's. Because a refused or lost message breaks the chain for
/// all that follow, only one message in 256 (and each commit's last) asks for an ack: an
/// ack proves that everything the sink sent before it was stored, in order.
///
/// On a server older than 2.11, or with [`chain(false)`](Self::chain), every message is
/// acknowledged instead and carries a `Nats-Msg-Id` of `<time>:<subject>` (the same for
/// the same change in every run) beside its expected last sequence; the first message of
/// each commit is acknowledged before the others are sent, so a writer that was replaced
/// between two commits stores nothing. Two writers racing within one commit are still
/// refused, but on this path some messages of the one refused may already be stored
/// between the other's.
///
/// A publish that fails in a way that may pass (the broker restarting, the connection
/// lost, an ack that did not come in time) is retried after the delays of the sink's
/// [`reconnect`](Self::reconnect) policy: the sink reads the stream's last message
/// again and completes the commit from there, as after a restart.
///
/// After a restart, [`resume`](Sink::resume) reads the stream's last message: the commit
/// it ends is the last one the changelog holds completely (or, if it is not marked as the
/// end of its commit, the process died in the middle of that commit: the previous one
/// is, and when the pipeline hands the interrupted commit again, keys whose subject
/// already holds it are skipped). So a replay neither depends on the server's
/// deduplication window nor publishes a change twice. What was in flight when a publish
/// failed cannot land twice either: it is stored only right after its own predecessor,
/// and the write that completes the commit after the failure continues from whatever
/// the stream holds by then. (A message of a crashed process that reaches the server
/// after its successor started writing makes that successor fail once with
/// [`SinkError::Conflict`]; restarted, it continues from there.)
///
/// The changelog must not be ahead of the table: a pipeline without
/// [persistence](intake_core::Pipeline::persist) starts over at time 1 after a
/// restart, and its commits would reuse the times of the old ones. `resume` then fails
/// with [`SinkError::Ahead`]; run the pipeline with persistence, or give each run a
/// fresh stream.
///
/// # Cancel safety
///
/// If a `write_batch` future is dropped, the publishes it sent may still be stored; the
/// sink then no longer knows the stream's last sequence and reads it again (as
/// `resume` does) before its next write.
///
/// # Examples
///
/// ```no_run
/// use intake_core::{Column, DataType, Pipeline, Reader, Schema, source_fn};
/// use intake_nats::JetStreamSink;
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let schema = Schema::new([
///     Column::new("sym", DataType::String).primary_key(),
///     Column::new("price", DataType::Float),
/// ])?;
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let mut pipeline = Pipeline::new();
/// let source = source_fn(|ctx| async move {
///     ctx.next_json(serde_json::json!({"sym": "AAPL", "price": 189.5})).await?;
///     Ok(())
/// });
/// let prices = pipeline.read("prices", source, Reader::json(schema));
/// prices.sink("changelog", JetStreamSink::new(client, "PRICES", "prices"));
/// pipeline.run().await?;
/// # Ok(())
/// # }
/// ```
pub struct JetStreamSink {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    stream_name: String,
    prefix: String,
    create: bool,
    reconnect: Reconnect,
    duplicate_window: Option<Duration>,
    chain: bool,
    /// Known once the stream was read; `None` again after a failed or cancelled write,
    /// when the stream's last sequence is no longer known.
    position: Option<Position>,
    published: u64,
    skipped: u64,
}

/// Where the sink's output stands.
#[derive(Debug, Clone)]
struct Position {
    stream: Stream,
    /// The stream's last sequence: the next publish expects it.
    last_sequence: u64,
    /// The last commit the changelog holds completely.
    last_time: Option<Time>,
    /// A commit whose messages were partly stored when the writer stopped.
    interrupted: Option<Time>,
    /// The subject of the message at `last_sequence` (`None` when the stream is empty).
    last_subject: Option<String>,
    /// Whether messages are chained by the subject of their predecessor (the server
    /// takes `Nats-Expected-Last-Subject-Sequence-Subject`).
    chained: bool,
}

impl fmt::Debug for JetStreamSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamSink")
            .field("stream", &self.stream_name)
            .field("prefix", &self.prefix)
            .field("create", &self.create)
            .field("duplicate_window", &self.duplicate_window)
            .field("chain", &self.chain)
            .field("last_sequence", &self.position.as_ref().map(|p| p.last_sequence))
            .field("published", &self.published)
            .field("skipped", &self.skipped)
            .finish()
    }
}

impl JetStreamSink {
    /// A sink publishing to the stream `stream` under the subjects `<prefix>.>`, through
    /// `client` (async-nats reconnects it by itself). Nothing is sent until the pipeline
    /// starts the sink.
    ///
    /// # Panics
    ///
    /// If `prefix` is empty, or is not a valid subject without wildcards (it may hold
    /// dots: `prices.eu` is fine).
    #[track_caller]
    pub fn new(client: async_nats::Client, stream: impl Into<String>, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        assert!(
            changelog::valid_prefix(&prefix),
            "the subject prefix {prefix:?} must be a non-empty subject without wildcards \
             (`*`, `>`), whitespace or empty tokens"
        );
        JetStreamSink {
            jetstream: jetstream::new(client.clone()),
            client,
            stream_name: stream.into(),
            prefix,
            create: true,
            reconnect: Reconnect::default(),
            duplicate_window: None,
            chain: true,
            position: None,
            published: 0,
            skipped: 0,
        }
    }

    /// Whether the sink creates the stream when it does not exist (the default), with
    /// the subject `<prefix>.>` and `max_messages_per_subject = 1`. Without, a missing
    /// stream fails the sink with [`SinkError::StreamNotFound`].
    pub fn create_stream(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// How long and how often a failed publish is retried (a broker restarting, a
    /// connection lost, an ack that did not come). Default: [`Reconnect::default`], retrying
    /// forever; during shutdown the pipeline's deadline still bounds the sink.
    pub fn reconnect(mut self, reconnect: Reconnect) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// How long to wait for each publish ack (and other JetStream requests) before the
    /// attempt counts as failed and is retried. Default: 5 s (async-nats').
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.jetstream = jetstream::ContextBuilder::new()
            .timeout(timeout)
            .build(self.jetstream.client());
        self
    }

    /// The deduplication window of a stream the sink creates. Default: the server's
    /// (2 minutes). The sink does not depend on it to avoid duplicates after a restart.
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = Some(window);
        self
    }

    /// Whether the sink chains its messages by the subject of their predecessor, with an
    /// ack for one message in 256, when the server supports it (2.11 or later): the
    /// default. With `false` it publishes as it does on older servers: every message
    /// acknowledged and with a message id, which costs the client and the server more
    /// CPU per row (W7 in docs/benchmarks.md) and, when two writers race within one
    /// commit, may store some messages of the refused one. For a deployment that mixes
    /// server versions.
    pub fn chain(mut self, chain: bool) -> Self {
        self.chain = chain;
        self
    }

    /// The stream's name.
    pub fn stream(&self) -> &str {
        &self.stream_name
    }

    /// The subject prefix: keys are published on `<prefix>.<key>`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Messages published (and acknowledged) so far.
    pub fn published(&self) -> u64 {
        self.published
    }

    /// Changes not published again because the changelog already held them: those of a
    /// commit a crash interrupted, handed again after the restart.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Gets (or creates) the stream, checks that it is this sink's, and reads where its
    /// output stands from its last message.
    async fn read_position(&self, create: bool) -> Result<Position, SinkError> {
        let mut stream = match self.jetstream.get_stream(&self.stream_name).await {
            Ok(stream) => stream,
            Err(error) if is_not_found(&error) => {
                if !create {
                    return Err(SinkError::StreamNotFound {
                        stream: self.stream_name.clone(),
                    });
                }
                let mut config = StreamConfig {
                    name: self.stream_name.clone(),
                    subjects: vec![format!("{}.>", self.prefix)],
                    max_messages_per_subject: 1,
                    ..StreamConfig::default()
                };
                if let Some(window) = self.duplicate_window {
                    config.duplicate_window = window;
                }
                self.jetstream
                    .create_stream(config)
                    .await
                    .map_err(|e| self.api_error("create the stream", e))?
            }
            Err(error) => return Err(self.api_error("look up the stream", error)),
        };
        let info = stream
            .info()
            .await
            .map_err(|e| self.api_error("read the stream's state", e))?;
        let expected = format!("{}.>", self.prefix);
        if info.config.subjects != [expected.clone()] {
            return Err(SinkError::Layout {
                stream: self.stream_name.clone(),
                reason: format!(
                    "its subjects are {:?}, but a changelog needs a stream of its own whose only \
                     subject is `{expected}`, so that nothing else is published on it",
                    info.config.subjects
                ),
            });
        }
        let last_sequence = info.state.last_sequence;
        let empty = info.state.messages == 0;
        let version = self.client.server_info().version;
        let chained =
            self.chain && crate::source::parse_version(&version).is_some_and(|v| v >= CHAINED_SINCE);
        let mut position = Position {
            stream: stream.clone(),
            last_sequence,
            last_time: None,
            interrupted: None,
            last_subject: None,
            chained,
        };
        if empty {
            // Never written, or purged: the sink holds nothing. The last sequence stays
            // what the next publish expects.
            return Ok(position);
        }
        let last = match stream.get_raw_message(last_sequence).await {
            Ok(message) => message,
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => {
                return Err(SinkError::LastMessageGone {
                    stream: self.stream_name.clone(),
                    sequence: last_sequence,
                });
            }
            Err(error) => return Err(self.api_error("read the stream's last message", error)),
        };
        let not_ours = |what: &str| SinkError::NotAChangelog {
            stream: self.stream_name.clone(),
            sequence: last_sequence,
            reason: what.to_owned(),
        };
        let commit = Commit::read(&last.headers)
            .map_err(|e| not_ours(&e))?
            .ok_or_else(|| not_ours("it has no `Intake-Commit` header"))?;
        position.last_subject = Some(last.subject.to_string());
        if commit.end {
            position.last_time = Some(commit.time);
        } else {
            position.last_time = commit.previous;
            position.interrupted = Some(commit.time);
        }
        Ok(position)
    }

    fn api_error(
        &self,
        action: &'static str,
        error: impl std::error::Error + Send + Sync + 'static,
    ) -> SinkError {
        SinkError::Api {
            stream: self.stream_name.clone(),
            action,
            source: Box::new(error),
        }
    }

    /// The position, read from the stream if unknown.
    async fn position(&mut self) -> Result<Position, SinkError> {
        match &self.position {
            Some(position) => Ok(position.clone()),
            None => {
                let position = self.read_position(false).await?;
                self.position = Some(position.clone());
                Ok(position)
            }
        }
    }

    /// Publishes `batch`, retrying after failures that may pass (a broker restarting, a
    /// connection lost, an ack that did not come) with the reconnect policy's delays.
    ///
    /// A retry reads the stream's last message again, as `resume` does: a commit found
    /// complete is done, one found in part is completed. A publish of the failed attempt
    /// still in flight is stored only right after its own predecessor (on the path
    /// without the chain: it expects a last sequence the stream has passed, or carries a
    /// message id it has seen), so none of them lands twice or out of order.
    async fn publish(&mut self, batch: &ChangeBatch) -> Result<(), SinkError> {
        let mut delays = self.reconnect.delays();
        let mut retried = false;
        let mut conflicts = 0;
        loop {
            // After a failure every message asks for its ack, so a message the server
            // refuses says why.
            let error = match self.publish_once(batch, retried).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            let transient = match &error {
                SinkError::Publish { .. } | SinkError::Api { .. } => true,
                // After a failed attempt, a publish of it may land between reading the
                // stream again and the retry: look again, a few times, before calling
                // it another writer.
                SinkError::Conflict { .. } if retried && conflicts < 3 => {
                    conflicts += 1;
                    true
                }
                _ => false,
            };
            if !transient {
                return Err(error);
            }
            let Some(delay) = delays.next() else {
                return Err(error);
            };
            tracing::warn!(stream = %self.stream_name, %error, ?delay, "publishing a commit failed; retrying");
            tokio::time::sleep(delay).await;
            retried = true;
        }
    }

    /// Publishes `batch`'s changes, the final state of each key, and waits for the acks.
    async fn publish_once(&mut self, batch: &ChangeBatch, ack_each: bool) -> Result<(), SinkError> {
        let mut position = self.position().await?;
        // Forget the position until this write is known to have finished: a failed or
        // dropped write leaves the stream's last sequence unknown.
        self.position = None;
        let time = batch.time();
        if position.last_time.is_some_and(|last| time <= last) {
            // Already complete in the changelog (a pipeline never hands one again after
            // `resume`, but a sink written to directly might).
            self.position = Some(position);
            return Ok(());
        }
        let mut last_values: IndexMap<&Key, Option<&Row>> = IndexMap::with_capacity(batch.len());
        // Retractions come before insertions, so an update ends as its new row.
        for change in batch.changes() {
            last_values.insert(&change.key, change.is_addition.then_some(&change.row));
        }
        if position.interrupted == Some(time) {
            // The commit a crash cut in half: keys whose subject already holds it are
            // not published again.
            let mut remaining = IndexMap::with_capacity(last_values.len());
            for (key, row) in last_values {
                let subject = changelog::key_subject(&self.prefix, key);
                if self.holds(&position.stream, &subject, time).await? {
                    self.skipped += 1;
                } else {
                    remaining.insert(key, row);
                }
            }
            last_values = remaining;
        }
        let commit = Commit {
            time,
            previous: position.last_time,
            end: false,
        };
        let last = if position.chained {
            let ack_every = if ack_each { 1 } else { ACK_EVERY };
            self.send_chained(&position, commit, &last_values, ack_every)
                .await?
        } else {
            self.send_messages(commit, position.last_sequence, &last_values)
                .await?
        };
        if let Some((last_sequence, last_subject)) = last {
            position.last_sequence = last_sequence;
            position.last_subject = Some(last_subject);
            position.last_time = Some(time);
        } else if position.interrupted == Some(time) {
            // Every key already held this commit: it is whole.
            position.last_time = Some(time);
        }
        if position.interrupted == Some(time) {
            position.interrupted = None;
        }
        self.position = Some(position);
        Ok(())
    }

    /// A change's message: its headers with `Intake-Commit` (the commit's, or `end` for
    /// the commit's last message), and its payload.
    fn message(
        commit: Commit,
        commit_header: &str,
        last: bool,
        key: &Key,
        row: Option<&Row>,
    ) -> Result<(HeaderMap, bytes::Bytes), SinkError> {
        let mut headers = HeaderMap::new();
        if last {
            headers.insert(header::COMMIT, Commit { end: true, ..commit }.value());
        } else {
            headers.insert(header::COMMIT, commit_header);
        }
        let payload = match row {
            Some(row) => serde_json::to_vec(row).map_err(SinkError::Encode)?.into(),
            None => {
                // A row's key is in its payload; a tombstone's only here.
                headers.insert(header::KEY, changelog::key_json(key).map_err(SinkError::Encode)?);
                headers.insert(header::OPERATION, header::DELETE);
                bytes::Bytes::new()
            }
        };
        Ok((headers, payload))
    }

    /// Publishes the changes as a chain and returns the stream's last sequence and
    /// subject once every message is stored (`None` if there were none).
    ///
    /// Each message expects the stream's last sequence to be its predecessor's
    /// (`Nats-Expected-Last-Sequence`) and that sequence to be the last of its
    /// predecessor's subject (`Nats-Expected-Last-Subject-Sequence` with
    /// `-Subject`): it is stored only right after the message this sink sent before it.
    /// So when one message is refused or lost, every later one is refused too, whoever
    /// writes in between, and only one message in `ack_every` (and the last) needs an
    /// ack: an ack proves that every message before it was stored, in order, and
    /// nothing else between them.
    async fn send_chained(
        &mut self,
        position: &Position,
        commit: Commit,
        last_values: &IndexMap<&Key, Option<&Row>>,
        ack_every: u64,
    ) -> Result<Option<(u64, String)>, SinkError> {
        let count = last_values.len();
        let commit_header = commit.value();
        // (index of the acked message, how many messages its ack covers, the ack)
        // The same number of messages unconfirmed however many ask for an ack.
        let window = usize::try_from(ACK_EVERY / ack_every).map_or(ACKS_IN_FLIGHT, |n| n * ACKS_IN_FLIGHT);
        let mut in_flight: VecDeque<(usize, u64, PublishAckFuture)> = VecDeque::with_capacity(window);
        let mut last_sequence = position.last_sequence;
        let mut previous: Option<async_nats::Subject> = position.last_subject.as_deref().map(Into::into);
        let mut unacked: u64 = 0;
        for (i, (&key, &row)) in last_values.iter().enumerate() {
            let expected = position.last_sequence + i as u64;
            let (mut headers, payload) = Self::message(commit, &commit_header, i + 1 == count, key, row)?;
            headers.insert(NATS_EXPECTED_LAST_SEQUENCE, HeaderValue::from(expected));
            if let Some(previous) = &previous {
                headers.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, HeaderValue::from(expected));
                headers.insert(EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT, previous.as_str());
            }
            let subject = async_nats::Subject::from(changelog::key_subject(&self.prefix, key));
            previous = Some(subject.clone());
            unacked += 1;
            if unacked == ack_every || i + 1 == count {
                if in_flight.len() >= window
                    && let Some((index, covered, ack)) = in_flight.pop_front()
                {
                    last_sequence = self
                        .await_chained_ack(position, commit, last_values, index, covered, ack)
                        .await?;
                }
                let publish = PublishMessage::build().headers(headers).payload(payload);
                let ack = match self.jetstream.send_publish(subject, publish).await {
                    Ok(ack) => ack,
                    Err(error) => return Err(self.publish_error(key, error)),
                };
                in_flight.push_back((i, unacked, ack));
                unacked = 0;
            } else if let Err(error) = self.client.publish_with_headers(subject, headers, payload).await {
                return Err(self.publish_failed(changelog::key_subject(&self.prefix, key), error));
            }
        }
        while let Some((index, covered, ack)) = in_flight.pop_front() {
            last_sequence = self
                .await_chained_ack(position, commit, last_values, index, covered, ack)
                .await?;
        }
        Ok(previous
            .filter(|_| count > 0)
            .map(|subject| (last_sequence, subject.to_string())))
    }

    /// Waits for the ack of the message at `index`, which covers `covered` messages.
    ///
    /// A refused chain is not always another writer: messages of this write may have
    /// been lost in flight (a connection or a server that went down), and those after
    /// them then expect a sequence the stream never reached. The stream's last message
    /// tells which: if it is this write's own (or the one it started after), the write
    /// is retried (as a transient [`SinkError::Publish`]); otherwise it is a
    /// [`SinkError::Conflict`].
    async fn await_chained_ack(
        &mut self,
        position: &Position,
        commit: Commit,
        last_values: &IndexMap<&Key, Option<&Row>>,
        index: usize,
        covered: u64,
        ack: PublishAckFuture,
    ) -> Result<u64, SinkError> {
        let key = last_values.get_index(index).map(|(key, _)| *key);
        let error = match ack.await {
            Ok(ack) => {
                self.published += covered;
                return Ok(ack.sequence);
            }
            Err(error) => error,
        };
        let subject = key.map_or_else(String::new, |key| changelog::key_subject(&self.prefix, key));
        if error.kind() != PublishErrorKind::WrongLastSequence {
            return Err(self.publish_failed(subject, error));
        }
        if self.holds_own_chain(position, commit, last_values).await? {
            return Err(self.publish_failed(
                subject,
                format!(
                    "messages of this commit were lost in flight, so later ones were refused ({error}); \
                     publishing the rest again"
                ),
            ));
        }
        Err(SinkError::Conflict {
            stream: self.stream_name.clone(),
            subject,
            source: Box::new(error),
        })
    }

    /// Whether the stream ends with this write's own messages (or where it started):
    /// its last message is the one this write put at that sequence, by subject and
    /// commit. The chain makes the messages before it this write's too.
    async fn holds_own_chain(
        &self,
        position: &Position,
        commit: Commit,
        last_values: &IndexMap<&Key, Option<&Row>>,
    ) -> Result<bool, SinkError> {
        let mut stream = position.stream.clone();
        let last_sequence = stream
            .info()
            .await
            .map_err(|e| self.api_error("read the stream's state", e))?
            .state
            .last_sequence;
        if last_sequence == position.last_sequence {
            return Ok(true);
        }
        let Some(index) = last_sequence
            .checked_sub(position.last_sequence + 1)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return Ok(false);
        };
        let Some((key, _)) = last_values.get_index(index) else {
            return Ok(false);
        };
        let last = match stream.get_raw_message(last_sequence).await {
            Ok(message) => message,
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(false),
            Err(error) => return Err(self.api_error("read the stream's last message", error)),
        };
        let ours = last.subject.as_str() == changelog::key_subject(&self.prefix, key)
            && Commit::read(&last.headers)
                .ok()
                .flatten()
                .is_some_and(|c| c.time == commit.time);
        Ok(ours)
    }

    /// Publishes the changes with an ack for every message, each with a message id and
    /// the stream's last sequence it expects (a server older than 2.11, or
    /// `chain(false)`), and returns the stream's last sequence and subject once every
    /// message is stored (`None` if there were none).
    async fn send_messages(
        &mut self,
        commit: Commit,
        first_expected: u64,
        last_values: &IndexMap<&Key, Option<&Row>>,
    ) -> Result<Option<(u64, String)>, SinkError> {
        let count = last_values.len();
        let time = commit.time;
        // The key stands in for its subject until an ack fails: one allocation less per
        // message than keeping the subject.
        let mut in_flight: VecDeque<(&Key, PublishAckFuture)> =
            VecDeque::with_capacity(count.min(ACK_WINDOW));
        let mut last_sequence = first_expected;
        // The same for every message but the last.
        let commit_header = commit.value();
        // Subjects and headers are built as each message is sent, not for the whole
        // commit first: the server starts storing the commit at once.
        // Each publish expects the one before it to be the stream's last message.
        let mut last_subject = None;
        for (expected, (i, (&key, &row))) in (first_expected..).zip(last_values.iter().enumerate()) {
            if in_flight.len() == ACK_WINDOW
                && let Some((key, ack)) = in_flight.pop_front()
            {
                last_sequence = self.await_ack(key, ack).await?;
            }
            let subject = changelog::key_subject(&self.prefix, key);
            let (headers, payload) = Self::message(commit, &commit_header, i + 1 == count, key, row)?;
            let publish = PublishMessage::build()
                .headers(headers)
                .payload(payload)
                .message_id(format!("{time}:{subject}"))
                .expected_last_sequence(expected);
            if i + 1 == count {
                last_subject = Some(subject.clone());
            }
            let ack = match self.jetstream.send_publish(subject, publish).await {
                Ok(ack) => ack,
                Err(error) => return Err(self.publish_error(key, error)),
            };
            if i == 0 {
                // The first message alone: a writer replaced since its last commit is
                // refused before it sends the others, which could land between the
                // other writer's messages once the stream reaches their sequences.
                last_sequence = self.await_ack(key, ack).await?;
            } else {
                in_flight.push_back((key, ack));
            }
        }
        while let Some((key, ack)) = in_flight.pop_front() {
            last_sequence = self.await_ack(key, ack).await?;
        }
        Ok(last_subject.map(|subject| (last_sequence, subject)))
    }

    async fn await_ack(&mut self, key: &Key, ack: PublishAckFuture) -> Result<u64, SinkError> {
        let ack = ack.await.map_err(|e| self.publish_error(key, e))?;
        self.published += 1;
        Ok(ack.sequence)
    }

    /// Whether `subject`'s last message is of the commit at `time`.
    async fn holds(&self, stream: &Stream, subject: &str, time: Time) -> Result<bool, SinkError> {
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => Ok(Commit::read(&message.headers)
                .ok()
                .flatten()
                .is_some_and(|commit| commit.time == time)),
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(false),
            Err(error) => Err(self.api_error("read a key's last message", error)),
        }
    }

    fn publish_error(&self, key: &Key, error: async_nats::jetstream::context::PublishError) -> SinkError {
        let subject = changelog::key_subject(&self.prefix, key);
        if error.kind() == PublishErrorKind::WrongLastSequence {
            SinkError::Conflict {
                stream: self.stream_name.clone(),
                subject,
                source: Box::new(error),
            }
        } else {
            self.publish_failed(subject, error)
        }
    }

    /// [`SinkError::Publish`] for a message to `subject` of this sink's stream.
    fn publish_failed(&self, subject: String, source: impl Into<BoxError>) -> SinkError {
        SinkError::Publish {
            stream: self.stream_name.clone(),
            subject,
            source: source.into(),
        }
    }
}

fn is_not_found(error: &async_nats::jetstream::context::GetStreamError) -> bool {
    matches!(error.kind(), GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

#[async_trait::async_trait]
impl Sink for JetStreamSink {
    async fn resume(&mut self, table_time: Option<Time>) -> Result<Option<Time>, BoxError> {
        self.position = None;
        let mut position = self.read_position(self.create).await?;
        let newest = position.interrupted.or(position.last_time);
        if let Some(newest) = newest
            && table_time.is_none_or(|table| newest > table)
        {
            return Err(SinkError::Ahead {
                stream: self.stream_name.clone(),
                changelog: newest,
                table: table_time,
            }
            .into());
        }
        if let Some(interrupted) = position.interrupted
            && position.last_time.is_none()
            && table_time != Some(interrupted)
        {
            // The first commit was interrupted, and the table has moved on since: it
            // hands its rows as a snapshot at a later time, so clear what that commit
            // left rather than leave keys deleted since. (At the same time the snapshot
            // is that commit, completed by skipping the keys already stored: purging
            // then would make the server drop their new publishes as duplicates.)
            position
                .stream
                .purge()
                .await
                .map_err(|e| self.api_error("purge an interrupted first commit", e))?;
            position.interrupted = None;
        }
        let held = position.last_time;
        self.position = Some(position);
        Ok(held)
    }

    async fn write_batch(&mut self, batch: &ChangeBatch) -> Result<(), BoxError> {
        Ok(self.publish(batch).await?)
    }
}

/// Why a [`JetStreamSink`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The stream does not exist and the sink was told not to create it.
    #[error("stream `{stream}` does not exist; create it (subject `<prefix>.>`) or let the sink create it")]
    StreamNotFound {
        /// The stream.
        stream: String,
    },
    /// The stream is not laid out as a changelog of this sink.
    #[error("stream `{stream}` cannot hold this changelog: {reason}")]
    Layout {
        /// The stream.
        stream: String,
        /// What does not match.
        reason: String,
    },
    /// The stream's last message was not written by a `JetStreamSink`.
    #[error(
        "stream `{stream}` was not written by a JetStreamSink: its last message (sequence {sequence}) {reason}"
    )]
    NotAChangelog {
        /// The stream.
        stream: String,
        /// The last message's sequence.
        sequence: u64,
        /// What is missing or wrong in it.
        reason: String,
    },
    /// The stream's last message was removed while others remain (by a limit such as
    /// `max_age`, or deleted), so which commits the changelog holds is unknown.
    #[error(
        "the last message of stream `{stream}` (sequence {sequence}) was removed, so which commits \
         the changelog holds is unknown; delete the stream to start over, and give it no \
         `max_age` or size limits"
    )]
    LastMessageGone {
        /// The stream.
        stream: String,
        /// The stream's last sequence.
        sequence: u64,
    },
    /// The changelog holds commits after the table's last one: the pipeline restarted
    /// without persistence (its times start over) or lost commits the sink had written.
    #[error(
        "stream `{stream}` holds the table's commit {changelog}, but the table is at {}: its commits \
         would reuse times the changelog already has; run the pipeline with persistence, or give \
         each run a fresh stream",
        table.map_or_else(|| "no commit".to_owned(), |t| format!("commit {t}"))
    )]
    Ahead {
        /// The stream.
        stream: String,
        /// The newest commit the changelog holds (in part).
        changelog: Time,
        /// The table's last commit.
        table: Option<Time>,
    },
    /// Something other than this sink published on the stream since it last wrote: a
    /// second writer on the same subjects is refused, not interleaved.
    #[error(
        "stream `{stream}` refused the publish on `{subject}`: another writer published on the \
         stream since this sink last wrote (only one sink may write a changelog)"
    )]
    Conflict {
        /// The stream.
        stream: String,
        /// The subject published on.
        subject: String,
        /// The server's refusal.
        source: BoxError,
    },
    /// A publish failed or its ack did not come.
    #[error("publishing on `{subject}` to stream `{stream}` failed")]
    Publish {
        /// The stream.
        stream: String,
        /// The subject published on.
        subject: String,
        /// What failed.
        source: BoxError,
    },
    /// A JetStream API request failed.
    #[error("stream `{stream}`: could not {action}")]
    Api {
        /// The stream.
        stream: String,
        /// What the sink was doing.
        action: &'static str,
        /// What failed.
        source: BoxError,
    },
    /// A row or key could not be written as JSON.
    #[error("a row or key could not be written as JSON")]
    Encode(#[source] serde_json::Error),
}
