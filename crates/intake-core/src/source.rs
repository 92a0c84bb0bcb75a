//! Sources: the push-style [`Source`] trait with its [`SourceContext`], and adapters
//! that make a closure or any `futures::Stream` a source.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::watch;

use crate::lifecycle::Lifecycle;
use crate::parse::{Format, Location, ParseError, Parser, Payload, Rejected, SourceReason};
use crate::queue::{Producer, PushError};
use crate::reader::ErrorPolicy;
use crate::row::{Key, Row};
use crate::schema::Schema;
use crate::table::{DurableOffsets, TableEnded, TableShared};
use crate::telemetry::SourceCounters;
use crate::value::Value;

/// The error type sources return: any error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A source of messages, written in push style like Pathway's `ConnectorSubject`.
///
/// The runtime calls [`run`](Self::run) once, on a task of its own, with a
/// [`SourceContext`] to send messages through; when `run` returns (or fails, or
/// panics), it calls [`on_stop`](Self::on_stop). The source is finished when `run` has
/// returned (clones of its context left in other tasks do not keep it open; their
/// sends fail with [`SendError::Finished`]); its table then makes its final commit,
/// while `on_stop` runs.
///
/// # Examples
///
/// ```
/// use intake_core::{BoxError, Source, SourceContext};
///
/// struct Countdown(u32);
///
/// #[async_trait::async_trait]
/// impl Source for Countdown {
///     async fn run(&mut self, ctx: SourceContext) -> Result<(), BoxError> {
///         for n in (1..=self.0).rev() {
///             ctx.next_json(serde_json::json!({ "n": n })).await?;
///         }
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Source: Send + 'static {
    /// Produces messages until the data ends, the source fails, or the pipeline shuts
    /// down (then [`SourceContext::cancelled`] completes and sends return
    /// [`SendError::ShuttingDown`]).
    ///
    /// # Errors
    ///
    /// An error fails the source: it is reported with the source's name and cause, and
    /// [`Pipeline::run`](crate::Pipeline::run) returns it once the pipeline ends. Other
    /// sources keep running unless the pipeline is
    /// [fail-fast](crate::Pipeline::fail_fast).
    async fn run(&mut self, ctx: SourceContext) -> Result<(), BoxError>;

    /// Called after `run` ends, whether it returned, failed, panicked or was stopped at
    /// shutdown. Release connections and other resources here. During shutdown it is
    /// bounded by the shutdown deadline like `run`: an `on_stop` still running then is
    /// dropped.
    async fn on_stop(&mut self) {}

    /// Whether this source [reports offsets](SourceContext::report_offset). A source
    /// that does, and says so, has even its first messages wait for an offset that
    /// covers them before they are committed, so that a crash before its first offset
    /// is stored repeats nothing either (without it, messages are held back from its
    /// first reported offset on). The default is `false`.
    fn reports_offsets(&self) -> bool {
        false
    }
}

/// A message a source sends to its table.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Message {
    /// A payload in the reader's [`Format`](crate::Format), such as JSON text.
    Bytes(Bytes),
    /// A JSON value; with the JSON format it is read without being serialized.
    Json(serde_json::Value),
    /// Removes the row with this primary key.
    Delete(Key),
    /// Commits what was sent so far now, instead of at the next automatic commit.
    Commit,
    /// Input the source found bad itself, such as a CSV record with the wrong number of
    /// fields or a frame its protocol could not read: it goes through the reader's
    /// [`ErrorPolicy`] exactly like a message the reader refused, with `raw` (the input
    /// as it arrived) and `reason` ([`ParseError::Source`]). Pull-style sources report
    /// bad input with it; push-style ones can also call [`SourceContext::reject`].
    Invalid {
        /// The input as it arrived.
        raw: Bytes,
        /// What is wrong with it.
        reason: String,
    },
}

impl From<Bytes> for Message {
    fn from(bytes: Bytes) -> Self {
        Message::Bytes(bytes)
    }
}

impl From<Vec<u8>> for Message {
    fn from(bytes: Vec<u8>) -> Self {
        Message::Bytes(Bytes::from(bytes))
    }
}

impl From<String> for Message {
    fn from(text: String) -> Self {
        Message::Bytes(Bytes::from(text))
    }
}

impl From<&'static str> for Message {
    fn from(text: &'static str) -> Self {
        Message::Bytes(Bytes::from_static(text.as_bytes()))
    }
}

impl From<serde_json::Value> for Message {
    fn from(json: serde_json::Value) -> Self {
        Message::Json(json)
    }
}

/// Why a message could not be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The pipeline is shutting down (or failed): stop producing and return.
    #[error("the pipeline is shutting down")]
    ShuttingDown,
    /// The source's `run` has already returned; a leftover clone of its context tried
    /// to send.
    #[error("the source has finished, so its context can no longer send")]
    Finished,
    /// The message was bad input under [`ErrorPolicy::Fail`]; the pipeline is failing.
    #[error("{0}")]
    Rejected(Box<Rejected>),
}

/// What a source's table receives, already parsed.
#[derive(Debug)]
pub(crate) enum Event {
    Upsert(Key, Row),
    Append(Row),
    Delete(Key),
    Commit,
    /// The source's position after the events before this one.
    Offset(Arc<str>, serde_json::Value),
}

impl Event {
    /// Whether the event changes the table (a message), rather than marking a commit
    /// or a position.
    pub(crate) fn is_message(&self) -> bool {
        matches!(self, Event::Upsert(..) | Event::Append(..) | Event::Delete(..))
    }
}

/// The handle a [`Source`] sends messages through.
///
/// Every send waits while the table's bounded queue is full, so a fast source
/// cannot outrun its table. Parsing happens inside the send, on the source's task:
/// bad input is dealt with by the reader's [`ErrorPolicy`] before the send returns.
///
/// The context is cheap to clone; hand clones to client callbacks that produce data
/// (see the client-callback example in `docs/custom-source.md`). Clones do not keep the
/// source alive: it is finished when its `run` returns, and from then on every clone's
/// sends fail with [`SendError::Finished`].
///
/// # Cancel safety
///
/// The send methods are cancel safe: if the future is dropped before it completes, the
/// message was not sent and, if it was bad input, not reported.
#[derive(Clone)]
pub struct SourceContext {
    shared: Arc<ContextShared>,
}

struct ContextShared {
    /// Rate-limits the log lines of skipped bad input.
    rejections: RejectionLog,
    name: Arc<str>,
    counters: Arc<SourceCounters>,
    resume: Option<serde_json::Value>,
    producer: Producer,
    parser: Parser,
    policy: ErrorPolicy,
    table: Arc<TableShared>,
    lifecycle: Arc<Lifecycle>,
}

/// The end of every sending method: done if [`SourceContext::send_now`] or
/// [`SourceContext::push_now`] queued the event, else wait for room. A macro rather
/// than an `async fn`, whose future would copy the event once more on every send.
macro_rules! queue_or_wait {
    ($ctx:ident, $now:expr) => {
        match $now? {
            None => Ok(()),
            Some(event) => $ctx.push_when_room(event).await,
        }
    };
}

impl SourceContext {
    pub(crate) fn new(
        name: Arc<str>,
        resume: Option<serde_json::Value>,
        producer: Producer,
        parser: Parser,
        policy: ErrorPolicy,
        table: Arc<TableShared>,
    ) -> Self {
        let lifecycle = table.lifecycle().clone();
        let counters = table.source_counters(&name);
        if resume.is_some() {
            // A source that resumes reports offsets: its first messages wait for one.
            producer.expect_offsets();
        }
        SourceContext {
            shared: Arc::new(ContextShared {
                rejections: RejectionLog::default(),
                counters,
                name,
                resume,
                producer,
                parser,
                policy,
                table,
                lifecycle,
            }),
        }
    }

    /// Holds this source's messages back until an offset covers them, from the first.
    pub(crate) fn expect_offsets(&self) {
        self.shared.producer.expect_offsets();
    }

    /// Marks the source finished: later sends through any clone fail, and once every
    /// source of its table has finished, the table makes its final commit.
    pub(crate) fn finish(&self) {
        self.shared.producer.finish();
        let table = self.shared.table.name();
        self.shared.rejections.flush(&self.shared.name, table);
    }

    /// The source's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The name of the table the source feeds.
    pub fn table_name(&self) -> &str {
        self.shared.table.name()
    }

    /// The schema messages are parsed into.
    pub fn schema(&self) -> &Schema {
        self.shared.parser.schema()
    }

    /// Sends one message. The other `next_*` methods, [`delete`](Self::delete) and
    /// [`commit`](Self::commit) are shorthands for this.
    ///
    /// # Errors
    ///
    /// [`SendError::ShuttingDown`] once the pipeline is shutting down or has failed,
    /// [`SendError::Finished`] from a clone used after `run` returned, and
    /// [`SendError::Rejected`] for bad input under [`ErrorPolicy::Fail`]. Bad input
    /// under [`ErrorPolicy::SkipAndReport`] is reported, not returned.
    pub async fn send(&self, message: impl Into<Message>) -> Result<(), SendError> {
        queue_or_wait!(self, self.send_now(message.into()))
    }

    /// Sends one message, as [`send`](Self::send), with where it came from: if the
    /// message is rejected, `locate` is called and its [`Location`] (the file and line,
    /// the connection and frame, the URL and record) goes with the report, to
    /// [`Rejected::location`], the `intake::rejected` log line and
    /// [`Pipeline::rejected`](crate::Pipeline::rejected). A valid message costs what
    /// `send` costs: `locate` is never called for it, so capture references or
    /// counters and build the location inside.
    ///
    /// # Examples
    ///
    /// ```
    /// use intake_core::{BoxError, Location, SourceContext};
    ///
    /// async fn relay(ctx: &SourceContext, url: &str, body: &str) -> Result<(), BoxError> {
    ///     for (index, line) in body.lines().enumerate() {
    ///         let record = index as u64 + 1;
    ///         ctx.send_located(line.to_owned(), || Location::http(url, None, Some(record)))
    ///             .await?;
    ///     }
    ///     Ok(())
    /// }
    /// # let _ = relay;
    /// ```
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send); a [`SendError::Rejected`] carries the location.
    ///
    /// # Cancel safety
    ///
    /// As [`send`](Self::send).
    pub async fn send_located<F>(&self, message: impl Into<Message>, locate: F) -> Result<(), SendError>
    where
        F: FnOnce() -> Location + Send,
    {
        let event = match self.prepare(message.into())? {
            Prepared::Event(event) => event,
            Prepared::Rejected(raw, reason) => return self.refuse(raw, reason, Some(locate())),
        };
        queue_or_wait!(self, self.push_now(event))
    }

    /// Sends a message the source decoded from `raw`, such as a CSV record turned into
    /// a JSON object, with where it came from: as
    /// [`send_located`](Self::send_located), but a rejection reports `raw`, the input
    /// as it arrived, rather than the message written out again. For valid input
    /// `raw` is only dropped; keep it cheap to make (a slice of a shared [`Bytes`]).
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    ///
    /// # Cancel safety
    ///
    /// As [`send`](Self::send).
    pub async fn send_decoded<F>(
        &self,
        message: impl Into<Message>,
        raw: impl Into<Bytes>,
        locate: F,
    ) -> Result<(), SendError>
    where
        F: FnOnce() -> Location + Send,
    {
        let event = match self.prepare(message.into())? {
            Prepared::Event(event) => event,
            Prepared::Rejected(_, reason) => return self.refuse(raw.into(), reason, Some(locate())),
        };
        queue_or_wait!(self, self.push_now(event))
    }

    /// Parses `message` and appends it to the queue if there is room: the whole of a
    /// send but its wait, which the caller does for the event returned, if any.
    ///
    /// Synchronous, and called directly by each sending method rather than through
    /// one another: a nested future would copy the message and the event into each
    /// level's state, and those copies cost more than the rest of a send's own work.
    #[inline]
    fn send_now(&self, message: Message) -> Result<Option<Event>, SendError> {
        match self.prepare(message)? {
            Prepared::Event(event) => self.push_now(event),
            Prepared::Rejected(raw, reason) => self.refuse(raw, reason, None).map(|()| None),
        }
    }

    /// Appends `event` to the queue if there is room; otherwise returns it for
    /// [`push_when_room`](Self::push_when_room).
    #[inline]
    fn push_now(&self, event: Event) -> Result<Option<Event>, SendError> {
        match self.shared.producer.try_push(event) {
            Ok(()) => Ok(None),
            Err(PushError::Full(event)) => Ok(Some(event)),
            Err(PushError::Finished) => Err(SendError::Finished),
            Err(PushError::Stopped) => Err(SendError::ShuttingDown),
        }
    }

    /// Waits for room in the queue and appends `event`: until shutdown begins for
    /// messages, until the shutdown deadline for offsets.
    async fn push_when_room(&self, event: Event) -> Result<(), SendError> {
        let producer = &self.shared.producer;
        let lifecycle = &*self.shared.lifecycle;
        let pushed = match event {
            Event::Offset(..) => producer.push_when_room(event, lifecycle.deadline()).await,
            _ => {
                producer
                    .push_when_room(event, lifecycle.shutdown_token().cancelled())
                    .await
            }
        };
        match pushed {
            Ok(()) => Ok(()),
            Err(PushError::Finished) => Err(SendError::Finished),
            Err(PushError::Stopped | PushError::Full(_)) => Err(SendError::ShuttingDown),
        }
    }

    /// Checks that the context may send, and parses the message.
    fn prepare(&self, message: Message) -> Result<Prepared, SendError> {
        self.check_open()?;
        let counters = &self.shared.counters;
        Ok(match message {
            Message::Bytes(bytes) => {
                counters.message(bytes.len());
                self.parse(Payload::Bytes(bytes))
            }
            Message::Json(json) => {
                counters.message(0);
                self.parse(Payload::Json(json))
            }
            Message::Delete(key) => {
                counters.message(0);
                match self.shared.parser.check_key(&key) {
                    Ok(()) => Prepared::Event(Event::Delete(key)),
                    Err(reason) => Prepared::Rejected(Bytes::from(format!("delete {key}")), reason),
                }
            }
            Message::Commit => Prepared::Event(Event::Commit),
            Message::Invalid { raw, reason } => {
                counters.message(raw.len());
                Prepared::Rejected(raw, ParseError::Source(reason.into()))
            }
        })
    }

    /// Sends a message given as bytes (Pathway's `next_bytes`).
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub async fn next_bytes(&self, bytes: impl Into<Bytes>) -> Result<(), SendError> {
        queue_or_wait!(self, self.send_now(Message::Bytes(bytes.into())))
    }

    /// Sends a message given as text (Pathway's `next_str`).
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub async fn next_str(&self, text: impl Into<String>) -> Result<(), SendError> {
        queue_or_wait!(self, self.send_now(Message::Bytes(Bytes::from(text.into()))))
    }

    /// Sends a JSON value (Pathway's `next_json`). With the JSON format the value is
    /// read directly, never serialized.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub async fn next_json(&self, json: serde_json::Value) -> Result<(), SendError> {
        queue_or_wait!(self, self.send_now(Message::Json(json)))
    }

    /// Sends any serializable value, such as a `#[derive(Serialize, RowType)]` struct
    /// whose fields are the table's columns.
    ///
    /// With the JSON format the value becomes a row directly, field by field, with
    /// exactly the outcome the same value written as JSON text would have (missing
    /// fields take defaults, extra fields are ignored, wrong types are refused); what
    /// JSON cannot carry is refused instead of altered: a non-finite float is
    /// [`ParseError::WrongType`] (serde_json would write it as `null`), and nesting
    /// deeper than [`MAX_JSON_DEPTH`](crate::MAX_JSON_DEPTH) is [`ParseError::TooDeep`].
    /// With the raw and bytes formats, the value's JSON text is the message.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send); a value that cannot become a row is bad input, reported
    /// with its JSON text as the raw bytes (empty if it has none).
    pub async fn next<T: serde::Serialize + ?Sized>(&self, value: &T) -> Result<(), SendError> {
        if self.shared.parser.format() != Format::Json {
            return match serde_json::to_value(value) {
                Ok(json) => queue_or_wait!(self, self.send_now(Message::Json(json))),
                Err(e) => {
                    self.check_open()?;
                    self.shared.counters.message(0);
                    self.refuse(Bytes::new(), ParseError::Serialize(e.to_string()), None)
                }
            };
        }
        self.check_open()?;
        self.shared.counters.message(0);
        let schema = self.shared.parser.schema();
        match crate::typed::read_row(schema, self.shared.parser.lenient_numbers, value) {
            Ok(values) => queue_or_wait!(self, self.push_now(self.event(values))),
            Err(reason) => {
                // Writing a value nested too deeply would recurse as deeply.
                let raw = match reason {
                    ParseError::TooDeep => Bytes::new(),
                    _ => serde_json::to_vec(value).map(Bytes::from).unwrap_or_default(),
                };
                self.refuse(raw, reason, None)
            }
        }
    }

    /// Removes the row with primary key `key` at the next commit. Deleting a key that
    /// is not in the table changes nothing.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send); a key that does not match the primary key's columns and
    /// types (or a table without a primary key) is bad input.
    pub async fn delete(&self, key: impl Into<Key>) -> Result<(), SendError> {
        queue_or_wait!(self, self.send_now(Message::Delete(key.into())))
    }

    /// Commits everything sent so far now, rather than at the next automatic commit.
    /// With nothing pending, it does nothing. A source that reports offsets should
    /// report one before committing: the commit takes its messages even if no offset
    /// covers them yet (see [`report_offset`](Self::report_offset)).
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub async fn commit(&self) -> Result<(), SendError> {
        queue_or_wait!(self, self.send_now(Message::Commit))
    }

    /// Reports input the source itself found bad, such as a CSV row with the wrong
    /// number of fields, exactly as if the reader had refused it: under the reader's
    /// [`ErrorPolicy`], with `raw` (the input as it arrived) and `reason`
    /// ([`ParseError::Source`]). Valid messages around it are unaffected. The reason is
    /// a string, or a [`SourceReason`] that keeps the error behind it
    /// ([`SourceReason::with_source`]) as the rejection's
    /// [`source`](std::error::Error::source).
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send): under [`ErrorPolicy::Fail`] this returns
    /// [`SendError::Rejected`] and fails the pipeline.
    pub async fn reject(
        &self,
        raw: impl Into<Bytes>,
        reason: impl Into<SourceReason>,
    ) -> Result<(), SendError> {
        // What `send(Message::Invalid { .. })` does, keeping the reason's source error.
        self.check_open()?;
        self.refuse(raw.into(), ParseError::Source(reason.into()), None)
    }

    /// Reports input the source itself found bad, as [`reject`](Self::reject), with
    /// where it came from ([`Rejected::location`]).
    ///
    /// # Errors
    ///
    /// As [`reject`](Self::reject).
    pub async fn reject_at(
        &self,
        raw: impl Into<Bytes>,
        reason: impl Into<SourceReason>,
        location: Location,
    ) -> Result<(), SendError> {
        self.check_open()?;
        self.refuse(raw.into(), ParseError::Source(reason.into()), Some(location))
    }

    /// Records the source's position in its input (Pathway's `_report_offset`, Bytewax's
    /// `snapshot`): an opaque JSON value, such as a byte offset and a file identity, that
    /// covers every message sent before it. Each commit carries, per source, the last
    /// offset reported before it ([`ChangeBatch::offsets`](crate::ChangeBatch::offsets)),
    /// and with [persistence](crate::Pipeline::persist) stores it with the commit, so a
    /// restart resumes from exactly what was committed (see
    /// [`resume_offset`](Self::resume_offset)).
    ///
    /// **Commits end at offsets.** Once a source has reported an offset (or was given
    /// one to resume from), a commit takes its messages only up to its last offset:
    /// messages sent after it wait for the next one, so that no commit holds a row its
    /// offsets do not cover and a restart after a crash reads no committed row again.
    /// Report an offset as often as you want your messages committed (after each
    /// message, page or batch). Two bounds keep this from stalling a table: messages
    /// that fill the table's whole queue without an offset are committed anyway (with a
    /// warning: after a crash they are read again), and so are the messages before an
    /// explicit [`commit`](Self::commit), and those of a source that has ended.
    ///
    /// Offsets are accepted during shutdown too, until the shutdown deadline: a source
    /// whose send returned [`SendError::ShuttingDown`] reports where its last *sent*
    /// message ended, and that offset is committed with it, so a clean stop followed by
    /// a resume neither repeats nor skips a message.
    ///
    /// # Errors
    ///
    /// [`SendError::Finished`] from a clone used after `run` returned, and
    /// [`SendError::ShuttingDown`] once the shutdown deadline has passed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped before it completes, no offset was recorded.
    pub async fn report_offset(&self, offset: serde_json::Value) -> Result<(), SendError> {
        queue_or_wait!(
            self,
            self.push_now(Event::Offset(self.shared.name.clone(), offset))
        )
    }

    /// Where the source should resume, set before `run` is called: the offset of the
    /// last durable commit when the table was restored from storage (with
    /// [persistence](crate::Pipeline::persist)), else the one given to
    /// [`Reader::resume_from`](crate::Reader::resume_from) or, by this source's name,
    /// to [`Pipeline::resume_from`](crate::Pipeline::resume_from). `None` means start
    /// from the beginning.
    pub fn resume_offset(&self) -> Option<&serde_json::Value> {
        self.shared.resume.as_ref()
    }

    /// This source's durable offset, as a watch: the last offset it
    /// [reported](Self::report_offset) whose commit can no longer be lost. A source
    /// reading from a broker that keeps messages until they are acknowledged
    /// (JetStream, a queue) acknowledges up to this offset, so the broker forgets only
    /// what the table keeps.
    ///
    /// A commit is durable once its record is in storage and synced, with
    /// [persistence](crate::Pipeline::persist) (under
    /// [`SyncPolicy::Interval`](crate::SyncPolicy::Interval), after the next sync), and
    /// once every subscriber of the table has been handed it, without. A partition's
    /// offset is its own: its context is named `source/partition`.
    ///
    /// The last commit of a source is made after its `run` returns, so a source never
    /// sees that commit's offset become durable; after a restart it resumes from it
    /// ([`resume_offset`](Self::resume_offset)), and what a broker delivers again at or
    /// before it is to be dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// use intake_core::{source_fn, Column, DataType, Pipeline, Reader, Schema, SourceContext};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let source = source_fn(|ctx: SourceContext| async move {
    ///     let mut durable = ctx.durable_offset();
    ///     for seq in 1..=3 {
    ///         ctx.next_json(serde_json::json!({ "seq": seq })).await?;
    ///         ctx.report_offset(seq.into()).await?;
    ///     }
    ///     ctx.commit().await?;
    ///     // A broker's acknowledgement would go here.
    ///     assert_eq!(durable.changed().await?, 3);
    ///     Ok(())
    /// });
    /// let schema = Schema::new([Column::new("seq", DataType::Int)])?;
    /// let mut pipeline = Pipeline::new();
    /// let table = pipeline.read("feed", source, Reader::json(schema));
    /// pipeline.run().await?;
    /// assert_eq!(table.len(), 3);
    /// # Ok(())
    /// # }
    /// ```
    pub fn durable_offset(&self) -> DurableOffset {
        let mut watch = self.shared.table.watch_durable_offsets();
        let last = watch.borrow_and_update().offsets.get(&self.shared.name).cloned();
        DurableOffset {
            name: self.shared.name.clone(),
            table: self.shared.table.name().clone(),
            watch,
            last,
        }
    }

    /// Completes when the pipeline starts shutting down. `select!` on it around long
    /// waits that are not sends (sends notice shutdown by themselves).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future loses nothing, and a new one completes at once
    /// once shutdown has begun.
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + '_ {
        self.shared.lifecycle.shutdown_token().cancelled()
    }

    /// Whether the pipeline is shutting down.
    pub fn is_cancelled(&self) -> bool {
        self.shared.lifecycle.is_shutting_down()
    }

    fn check_open(&self) -> Result<(), SendError> {
        if self.shared.lifecycle.is_shutting_down() {
            Err(SendError::ShuttingDown)
        } else if self.shared.producer.is_finished() {
            Err(SendError::Finished)
        } else {
            Ok(())
        }
    }

    fn parse(&self, payload: Payload) -> Prepared {
        match self.shared.parser.parse(&payload) {
            Ok(values) => Prepared::Event(self.event(values)),
            Err(reason) => Prepared::Rejected(payload.into_raw(), reason),
        }
    }

    /// The event that puts a row of these values in the table.
    fn event(&self, values: Arc<[Value]>) -> Event {
        let schema = self.shared.parser.schema().clone();
        if schema.primary_key().is_empty() {
            Event::Append(Row::new_unchecked(schema, values))
        } else {
            let key = Key::of_row(&schema, &values);
            Event::Upsert(key, Row::new_unchecked(schema, values))
        }
    }

    /// Deals with bad input as the reader's policy says. Synchronous, so that a send
    /// either reports its bad input completely or, dropped before it was polled, not at
    /// all; and so that reporting never waits for a reader of the reports.
    fn refuse(&self, raw: Bytes, reason: ParseError, location: Option<Location>) -> Result<(), SendError> {
        let table = &self.shared.table;
        table.counters().rejected.fetch_add(1, Ordering::Relaxed);
        self.shared.counters.rejected(reason.kind());
        let rejected = Rejected::new(self.shared.name.clone(), raw, reason, location);
        match self.shared.policy {
            ErrorPolicy::SkipAndReport => {
                self.shared
                    .rejections
                    .log(&self.shared.name, table.name(), &rejected);
                self.shared.lifecycle.report_rejected(&rejected);
                Ok(())
            }
            ErrorPolicy::Fail => {
                self.shared.lifecycle.fail_on_rejected(&rejected);
                Err(SendError::Rejected(Box::new(rejected)))
            }
        }
    }
}

/// The `tracing` target of the log lines about skipped bad input.
const REJECTED_TARGET: &str = "intake::rejected";

/// How many skipped messages a source logs one by one before it summarises.
const REJECTIONS_LOGGED_EACH: u64 = 10;

/// How often a source summarises the bad input it skipped once it logs no more
/// messages one by one.
const REJECTION_SUMMARY_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Keeps a flood of bad input from flooding the log: a source logs its first
/// [`REJECTIONS_LOGGED_EACH`] skipped messages one by one, then one summary line at
/// most every [`REJECTION_SUMMARY_EVERY`] (and one when it finishes) with how many
/// were skipped since and the last reason. Every skipped message is still counted in
/// the table's stats and offered to the rejected streams.
#[derive(Default)]
struct RejectionLog {
    state: std::sync::Mutex<RejectionLogState>,
}

#[derive(Default)]
struct RejectionLogState {
    logged: u64,
    /// Skipped since the last line, with the last one's reason.
    unlogged: u64,
    last_reason: Option<ParseError>,
    last_location: Option<Location>,
    /// When the last summary (or the last message logged one by one) was written.
    last_line: Option<tokio::time::Instant>,
}

impl RejectionLog {
    fn log(&self, source: &str, table: &str, rejected: &Rejected) {
        let mut state = crate::lifecycle::lock(&self.state);
        let now = tokio::time::Instant::now();
        if state.logged < REJECTIONS_LOGGED_EACH {
            state.logged += 1;
            state.last_line = Some(now);
            drop(state);
            tracing::warn!(
                target: REJECTED_TARGET,
                source,
                table,
                location = rejected.location().map(tracing::field::display),
                reason = %rejected.reason(),
                "skipped bad input"
            );
            return;
        }
        state.unlogged += 1;
        // Kept as it is and formatted only for a summary: a flood costs no formatting.
        state.last_reason = Some(rejected.reason().clone());
        state.last_location = rejected.location().cloned();
        let due = state
            .last_line
            .is_none_or(|last| now.duration_since(last) >= REJECTION_SUMMARY_EVERY);
        if due {
            state.last_line = Some(now);
            Self::summarise(&mut state, source, table);
        }
    }

    /// Writes the summary of what was skipped since the last line, if anything was.
    fn flush(&self, source: &str, table: &str) {
        Self::summarise(&mut crate::lifecycle::lock(&self.state), source, table);
    }

    fn summarise(state: &mut RejectionLogState, source: &str, table: &str) {
        if state.unlogged == 0 {
            return;
        }
        let skipped = std::mem::take(&mut state.unlogged);
        let last_reason = state
            .last_reason
            .take()
            .map(|r| r.to_string())
            .unwrap_or_default();
        let last_location = state.last_location.take();
        state.logged += skipped;
        tracing::warn!(
            target: REJECTED_TARGET,
            source,
            table,
            skipped,
            total = state.logged,
            last_location = last_location.as_ref().map(tracing::field::display),
            last_reason,
            "skipped more bad input (summarised: after the first {REJECTIONS_LOGGED_EACH}, a line at most every {}s)",
            REJECTION_SUMMARY_EVERY.as_secs()
        );
    }
}

/// A message made ready to send: parsed, or refused with its raw bytes and reason.
enum Prepared {
    Event(Event),
    Rejected(Bytes, ParseError),
}

impl fmt::Debug for SourceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceContext")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

/// A source's durable offset, from [`SourceContext::durable_offset`].
#[derive(Debug, Clone)]
pub struct DurableOffset {
    name: Arc<str>,
    table: Arc<str>,
    watch: watch::Receiver<DurableOffsets>,
    /// The offset last returned (or seen when the handle was made).
    last: Option<serde_json::Value>,
}

impl DurableOffset {
    /// The source's durable offset now, `None` before any.
    pub fn get(&self) -> Option<serde_json::Value> {
        self.watch.borrow().offsets.get(&self.name).cloned()
    }

    /// Waits until the durable offset moves past the one last returned (or seen when
    /// this handle was made), and returns it.
    ///
    /// # Errors
    ///
    /// [`TableEnded`] once the table has made its final commit and the offset did not
    /// move: it never will again.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a move seen by a dropped call is returned by the next one.
    pub async fn changed(&mut self) -> Result<serde_json::Value, TableEnded> {
        loop {
            let (current, closed) = {
                let state = self.watch.borrow_and_update();
                (state.offsets.get(&self.name).cloned(), state.closed)
            };
            if let Some(offset) = current
                && self.last.as_ref() != Some(&offset)
            {
                self.last = Some(offset.clone());
                return Ok(offset);
            }
            if closed || self.watch.changed().await.is_err() {
                return Err(TableEnded::new(&self.table));
            }
        }
    }
}

/// A source made of an async closure; see [`source_fn`].
pub struct FnSource<F> {
    run: Option<F>,
}

/// Makes a source of an async closure that receives the context, for sources too
/// small for a type of their own.
///
/// # Examples
///
/// ```
/// use intake_core::{source_fn, SourceContext};
///
/// let source = source_fn(|ctx: SourceContext| async move {
///     ctx.next_str(r#"{"key": 1, "genus": "otocolobus", "epithet": "manul"}"#).await?;
///     Ok(())
/// });
/// # let _ = source;
/// ```
pub fn source_fn<F, Fut>(run: F) -> FnSource<F>
where
    F: FnOnce(SourceContext) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    FnSource { run: Some(run) }
}

#[async_trait]
impl<F, Fut> Source for FnSource<F>
where
    F: FnOnce(SourceContext) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    async fn run(&mut self, ctx: SourceContext) -> Result<(), BoxError> {
        match self.run.take() {
            Some(run) => run(ctx).await,
            None => Err("this source_fn source has already run".into()),
        }
    }
}

impl<F> fmt::Debug for FnSource<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnSource").finish_non_exhaustive()
    }
}

/// A source that forwards a stream; see [`from_stream`] and [`from_try_stream`].
pub struct StreamSource<S> {
    stream: S,
}

/// Makes a pull-style source of any stream of messages: JSON values, strings, bytes,
/// or [`Message`]s (which can also delete and commit). The source ends with the stream.
///
/// # Examples
///
/// ```
/// use futures::stream;
/// use intake_core::from_stream;
///
/// let source = from_stream(stream::iter(["{\"n\": 1}", "{\"n\": 2}"]));
/// # let _ = source;
/// ```
pub fn from_stream<S>(stream: S) -> StreamSource<S>
where
    S: Stream + Send + Unpin + 'static,
    S::Item: Into<Message> + Send,
{
    StreamSource { stream }
}

/// Makes a pull-style source of a stream of `Result`s: `Ok` items are sent, and the
/// first `Err` fails the source with that error.
///
/// Pin the stream first if it is not `Unpin` (`Box::pin(stream)`).
pub fn from_try_stream<S, T, E>(stream: S) -> StreamSource<TryItems<S>>
where
    S: Stream<Item = Result<T, E>> + Send + Unpin + 'static,
    T: Into<Message> + Send,
    E: Into<BoxError> + Send,
{
    StreamSource {
        stream: TryItems(stream),
    }
}

/// Marks a stream whose items are `Result`s; see [`from_try_stream`].
#[derive(Debug)]
pub struct TryItems<S>(S);

async fn forward<S, T>(
    stream: &mut S,
    ctx: &SourceContext,
    mut split: impl FnMut(S::Item) -> Result<T, BoxError> + Send,
) -> Result<(), BoxError>
where
    S: Stream + Send + Unpin,
    S::Item: Send,
    T: Into<Message> + Send,
{
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            () = ctx.cancelled() => return Ok(()),
        };
        match item {
            Some(item) => {
                let message = split(item)?;
                ctx.send(message).await?;
            }
            None => return Ok(()),
        }
    }
}

#[async_trait]
impl<S> Source for StreamSource<S>
where
    S: Stream + Send + Unpin + 'static,
    S::Item: Into<Message> + Send,
{
    async fn run(&mut self, ctx: SourceContext) -> Result<(), BoxError> {
        forward(&mut self.stream, &ctx, Ok).await
    }
}

#[async_trait]
impl<S, T, E> Source for StreamSource<TryItems<S>>
where
    S: Stream<Item = Result<T, E>> + Send + Unpin + 'static,
    T: Into<Message> + Send,
    E: Into<BoxError> + Send,
{
    async fn run(&mut self, ctx: SourceContext) -> Result<(), BoxError> {
        forward(&mut self.stream.0, &ctx, |item| item.map_err(Into::into)).await
    }
}

impl<S> fmt::Debug for StreamSource<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSource").finish_non_exhaustive()
    }
}
