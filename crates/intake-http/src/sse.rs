//! The server-sent events source: `GET` with `Accept: text/event-stream`, parse the
//! stream, reconnect with `Last-Event-ID`.

mod parse;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use intake_core::{BoxError, ConnectionMetrics, Location, Reconnect, SendError, Source, SourceContext};

use crate::request::RequestSettings;
use crate::tls::install_crypto_provider;
use reqwest::header::{self, HeaderValue};
use tokio::time::Instant;

pub use parse::{SseEvent, SseItem, SseParser};

/// Longer than any process lives: a silence timeout at least this long means none
/// (tokio's timers overflow on durations such as `Duration::MAX`).
const NEVER: Duration = Duration::from_secs(86_400 * 365 * 30);

/// The request header that carries the last event ID on a reconnect.
const LAST_EVENT_ID: &str = "Last-Event-ID";

/// A source that follows a server-sent event stream (`text/event-stream`, as the
/// HTML standard defines it) into a table: each event's `data` is one message for
/// the reader.
///
/// It sends `GET` with `Accept: text/event-stream`, parses the stream with
/// [`SseParser`] (chunk boundaries anywhere, CR/LF/CRLF line ends, multi-line data,
/// comments as keep-alives, a bound on an event's size), and when the stream ends or
/// fails it reconnects, sending the last event ID as `Last-Event-ID` so the server
/// resumes after the last event read.
///
/// - **Resume.** The last event ID is the source's offset: it is reported (as a JSON
///   string) after the events it covers were sent, and on start
///   [`resume_offset`](SourceContext::resume_offset) is sent as `Last-Event-ID`.
/// - **Reconnects** follow the [`Reconnect`] policy. A `retry:` field from the server
///   sets the delay of the first reconnect after a stream that dispatched events; later
///   attempts in a row wait the longer of it and the policy's growing delay.
/// - **Replays.** A server that ignores `Last-Event-ID` and sends its history again
///   has it read again, unless [`monotonic_ids`](Self::monotonic_ids) says its IDs
///   increase: then events at or before the last ID read are skipped.
/// - **Silence.** With a [`silence_timeout`](Self::silence_timeout), a stream on which
///   no byte (comments included) arrives for that long is treated as dead.
/// - **Event types.** Every event is read unless [`event_type`](Self::event_type)
///   names the ones wanted; the others are counted and skipped.
/// - **Status codes.** 2xx with a `text/event-stream` body is read; 204 means the
///   server wants no more reconnects, and the source ends; 408, 429 and 5xx are
///   retried (a `Retry-After`, in seconds or as an HTTP date, is waited for at
///   least); any other status, or a 2xx of another content type, stops the source
///   with an [`SseError`] saying what to check.
///
/// Bad input is never dropped silently: an event's `data` goes through the reader's
/// [`ErrorPolicy`](intake_core::ErrorPolicy), and an event over
/// [`max_event_size`](Self::max_event_size) is reported through it (with empty `raw`,
/// since it was not kept). Read a feed with
/// [`ErrorPolicy::SkipAndReport`](intake_core::ErrorPolicy::SkipAndReport).
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use intake_core::{Column, DataType, ErrorPolicy, Pipeline, Reader, Schema};
/// use intake_http::SseSource;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let schema = Schema::new([
///     Column::new("id", DataType::Int).primary_key(),
///     Column::new("title", DataType::String),
/// ])?;
/// let source = SseSource::new("https://stream.wikimedia.org/v2/stream/recentchange")
///     .event_type("message")
///     .silence_timeout(Duration::from_secs(60));
/// let stats = source.stats();
/// let mut pipeline = Pipeline::new();
/// let reader = Reader::json(schema).error_policy(ErrorPolicy::SkipAndReport);
/// let changes = pipeline.read("recentchange", source, reader);
/// pipeline.run().await?;
/// println!("{} rows, {} events, {} reconnects", changes.len(), stats.events(), stats.reconnects());
/// # Ok(())
/// # }
/// ```
#[must_use = "a source does nothing until a pipeline runs it"]
pub struct SseSource {
    url: String,
    client: Option<reqwest::Client>,
    request: RequestSettings,
    connect_timeout: Duration,
    silence_timeout: Option<Duration>,
    max_event_size: usize,
    reconnect: Reconnect,
    event_types: Vec<String>,
    monotonic_ids: bool,
    stats: SseStats,
}

impl fmt::Debug for SseSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values are left out: they may be credentials.
        f.debug_struct("SseSource")
            .field("url", &self.url)
            .field("request", &self.request)
            .field("connect_timeout", &self.connect_timeout)
            .field("silence_timeout", &self.silence_timeout)
            .field("max_event_size", &self.max_event_size)
            .field("reconnect", &self.reconnect)
            .field("event_types", &self.event_types)
            .field("monotonic_ids", &self.monotonic_ids)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl SseSource {
    /// Default for [`connect_timeout`](Self::connect_timeout).
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default for [`max_event_size`](Self::max_event_size): 1 MiB.
    pub const DEFAULT_MAX_EVENT_SIZE: usize = 1 << 20;

    /// A source following the event stream at `url` (`http://…` or `https://…`).
    pub fn new(url: impl Into<String>) -> Self {
        SseSource {
            url: url.into(),
            client: None,
            request: RequestSettings::default(),
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            silence_timeout: None,
            max_event_size: Self::DEFAULT_MAX_EVENT_SIZE,
            reconnect: Reconnect::default(),
            event_types: Vec::new(),
            monotonic_ids: false,
            stats: SseStats::default(),
        }
    }

    /// Adds a header to every request, such as `User-Agent` (which some services,
    /// Wikimedia's among them, require).
    ///
    /// # Panics
    ///
    /// If `name` is not a valid header name or `value` not a valid header value.
    #[track_caller]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.request.header(name, value);
        self
    }

    /// Sends `Authorization: Bearer <token>` with every request (marked sensitive, so
    /// it is not logged).
    pub fn bearer_auth(mut self, token: impl Into<String>) -> Self {
        self.request.bearer_auth(token.into());
        self
    }

    /// Sends HTTP basic authentication (`Authorization: Basic …`, marked sensitive)
    /// with every request.
    pub fn basic_auth(mut self, user: impl Into<String>, password: Option<impl Into<String>>) -> Self {
        self.request.basic_auth(user.into(), password.map(Into::into));
        self
    }

    /// Uses this client (its proxy, TLS and pool settings) instead of building one
    /// for each run. The source still sets its own headers and
    /// [`connect_timeout`](Self::connect_timeout) on each request. Call
    /// [`install_crypto_provider`] before building the client, or reqwest panics.
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// The longest a connection attempt may take until the response headers arrive;
    /// a timed-out attempt is retried. Default: 10 s.
    ///
    /// # Panics
    ///
    /// If `timeout` is zero.
    #[track_caller]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        assert!(
            !timeout.is_zero(),
            "connect_timeout must be longer than zero, or no connection attempt could succeed"
        );
        self.connect_timeout = timeout;
        self
    }

    /// Treats the stream as dead, and reconnects, when no byte at all (events or
    /// comments) arrives for `timeout`. Default: no deadline. Servers that send
    /// keep-alive comments make a deadline a few times their interval safe. A timeout
    /// of 30 years or more, such as `Duration::MAX`, means no deadline.
    ///
    /// # Panics
    ///
    /// If `timeout` is zero.
    #[track_caller]
    pub fn silence_timeout(mut self, timeout: Duration) -> Self {
        assert!(
            !timeout.is_zero(),
            "silence_timeout must be longer than zero, or every stream would count as dead at once"
        );
        self.silence_timeout = (timeout < NEVER).then_some(timeout);
        self
    }

    /// The largest event kept, in bytes of its lines (comments aside). A larger one is
    /// not buffered; it is reported through the reader's
    /// [`ErrorPolicy`](intake_core::ErrorPolicy) and the stream goes on. Default:
    /// 1 MiB.
    ///
    /// # Panics
    ///
    /// If `bytes` is zero.
    #[track_caller]
    pub fn max_event_size(mut self, bytes: usize) -> Self {
        assert!(bytes > 0, "max_event_size must be at least 1 byte");
        self.max_event_size = bytes;
        self
    }

    /// The reconnect policy. Default: [`Reconnect::default`].
    pub fn reconnect(mut self, policy: Reconnect) -> Self {
        self.reconnect = policy;
        self
    }

    /// Reads only events of this type (`message` is the type of events without an
    /// `event:` field); call again to read more types. Default: every event. Events of
    /// other types are counted ([`SseStats::filtered`]) and skipped; their IDs still
    /// move the resume offset on.
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_types.push(event_type.into());
        self
    }

    /// Declares that the server's event IDs increase, so that an event whose ID is not
    /// greater than the last one read is a replay, to be skipped (counted in
    /// [`SseStats::replayed`]) rather than applied again. Default: off, and every event
    /// the server sends is read.
    ///
    /// For a server that ignores `Last-Event-ID` and replays its history from the
    /// start on every reconnect (or after a restart). IDs made only of ASCII digits
    /// compare as numbers (`"10"` after `"9"`); any other IDs compare byte by byte,
    /// which suits timestamps in ISO 8601 and ULIDs but not mixed forms such as
    /// `"0-10"` and `"0-9"`. An event without an `id:` of its own is skipped if the one
    /// before it in the same stream was; events that carry no ID at all are read. With
    /// this on, the resume offset only moves forward: an event with an empty ID does
    /// not reset it.
    pub fn monotonic_ids(mut self, monotonic: bool) -> Self {
        self.monotonic_ids = monotonic;
        self
    }

    /// The source's counters, live while it runs.
    pub fn stats(&self) -> SseStats {
        self.stats.clone()
    }

    fn client_for_run(&self) -> Result<reqwest::Client, SseError> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        install_crypto_provider();
        reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .build()
            .map_err(SseError::Client)
    }

    /// Sends the request and checks the response.
    async fn open(
        &self,
        client: &reqwest::Client,
        last_event_id: &str,
    ) -> Result<reqwest::Response, OpenError> {
        let mut request = self
            .request
            .apply(client.get(&self.url))
            .header(header::ACCEPT, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-store");
        if !last_event_id.is_empty() {
            match HeaderValue::from_str(last_event_id) {
                Ok(value) => request = request.header(LAST_EVENT_ID, value),
                Err(_) => tracing::warn!(
                    url = %self.url,
                    last_event_id,
                    "the last event ID cannot be sent as a header (it has control characters); reconnecting without it"
                ),
            }
        }
        let response = match tokio::time::timeout(self.connect_timeout, request.send()).await {
            Err(_) => {
                return Err(OpenError::Retry(
                    StreamFailed::new(format!("connecting timed out after {:?}", self.connect_timeout)),
                    None,
                ));
            }
            Ok(Err(error)) if error.is_builder() => {
                return Err(OpenError::Fatal(SseError::InvalidUrl {
                    url: self.url.clone(),
                    reason: error.to_string(),
                }));
            }
            Ok(Err(error)) => {
                return Err(OpenError::Retry(
                    StreamFailed::with_source("connecting failed", error),
                    None,
                ));
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status().as_u16();
        match status {
            204 => Err(OpenError::Stop),
            200..=299 => {
                let content_type = response
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
                let is_event_stream = content_type.as_deref().is_some_and(|value| {
                    value
                        .split(';')
                        .next()
                        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("text/event-stream"))
                });
                match is_event_stream {
                    true => Ok(response),
                    false => Err(OpenError::Fatal(SseError::NotEventStream {
                        url: self.url.clone(),
                        content_type,
                    })),
                }
            }
            408 | 429 | 500..=599 => {
                // Seconds or an HTTP date, as the polling source reads it: a 503 for
                // maintenance usually says until when.
                let retry_after = crate::poll::retry_after(response.headers());
                Err(OpenError::Retry(
                    StreamFailed::new(format!("the server answered HTTP {status}")),
                    retry_after,
                ))
            }
            _ => Err(OpenError::Fatal(SseError::Status {
                url: self.url.clone(),
                status,
            })),
        }
    }

    /// Reads one stream until it ends, fails, falls silent or the pipeline shuts down.
    async fn read_stream(
        &self,
        mut response: reqwest::Response,
        ctx: &SourceContext,
        position: &mut Position,
    ) -> Result<StreamEnd, BoxError> {
        let mut parser = SseParser::new(self.max_event_size);
        let mut items = Vec::new();
        let mut replay = Replay::default();
        loop {
            let chunk = tokio::select! {
                biased;
                () = ctx.cancelled() => {
                    position.report(ctx).await;
                    return Ok(StreamEnd::Cancelled);
                }
                chunk = read_chunk(&mut response, self.silence_timeout) => chunk,
            };
            let chunk = match chunk {
                Err(timeout) => {
                    return Ok(StreamEnd::Lost(StreamFailed::new(format!(
                        "nothing received for {timeout:?}; the stream is treated as dead"
                    ))));
                }
                Ok(Err(error)) => {
                    return Ok(StreamEnd::Lost(StreamFailed::with_source(
                        "reading the stream failed",
                        error,
                    )));
                }
                Ok(Ok(None)) => return Ok(StreamEnd::Lost(StreamFailed::new("the server ended the stream"))),
                Ok(Ok(Some(chunk))) => chunk,
            };
            SseStats::add(&self.stats.0.bytes, chunk.len() as u64);
            parser.feed(&chunk, &mut items);
            for item in items.drain(..) {
                let sent = match item {
                    SseItem::Event(event) => {
                        SseStats::add(&self.stats.0.events, 1);
                        // Any event, wanted or not, shows a working stream: one of
                        // filtered events only must not escalate the backoff to giving up.
                        position.delivered = true;
                        if self.monotonic_ids
                            && replay.is_replay(&event.last_event_id, &position.last_event_id)
                        {
                            SseStats::add(&self.stats.0.replayed, 1);
                            continue;
                        }
                        let wanted = self.event_types.is_empty()
                            || self
                                .event_types
                                .iter()
                                .any(|wanted| **wanted == *event.event_type);
                        let sent = if wanted {
                            // The n-th event the source received; made only if it is rejected.
                            let number = self.stats.events();
                            let locate = || Location::http(self.url.as_str(), None, Some(number));
                            ctx.send_located(Bytes::from(event.data), locate).await
                        } else {
                            SseStats::add(&self.stats.0.filtered, 1);
                            Ok(())
                        };
                        sent.map(|()| event.last_event_id)
                    }
                    SseItem::Oversized {
                        event_type,
                        last_event_id,
                        size,
                    } => {
                        if self.monotonic_ids && replay.is_replay(&last_event_id, &position.last_event_id) {
                            SseStats::add(&self.stats.0.replayed, 1);
                            continue;
                        }
                        SseStats::add(&self.stats.0.oversized, 1);
                        position.delivered = true;
                        let reason = format!(
                            "an event of type `{event_type}` has more than max_event_size ({} bytes): at least {size} bytes; it was not read",
                            self.max_event_size
                        );
                        let at = Location::http(self.url.as_str(), None, None);
                        ctx.reject_at(Bytes::new(), reason, at)
                            .await
                            .map(|()| last_event_id)
                    }
                    SseItem::LastEventId(id) => {
                        if self.monotonic_ids && replay.is_replay(&id, &position.last_event_id) {
                            continue;
                        }
                        Ok(id)
                    }
                    SseItem::Retry(delay) => {
                        position.server_retry = Some(delay);
                        continue;
                    }
                    SseItem::Comment => {
                        SseStats::add(&self.stats.0.comments, 1);
                        continue;
                    }
                };
                match sent {
                    // With increasing IDs the position only moves forward: past the
                    // replay check, an ID is the current one or a greater one, or empty.
                    Ok(id) if self.monotonic_ids && id.is_empty() => {}
                    Ok(id) => position.last_event_id = id,
                    Err(SendError::ShuttingDown) => {
                        position.report(ctx).await;
                        return Ok(StreamEnd::Cancelled);
                    }
                    Err(error) => return Err(error.into()),
                }
            }
            if !position.report(ctx).await {
                return Ok(StreamEnd::Cancelled);
            }
        }
    }
}

/// The next chunk of the body, or the silence timeout if it passed first.
async fn read_chunk(
    response: &mut reqwest::Response,
    silence_timeout: Option<Duration>,
) -> Result<Result<Option<Bytes>, reqwest::Error>, Duration> {
    match silence_timeout {
        Some(timeout) => tokio::time::timeout(timeout, response.chunk())
            .await
            .map_err(|_| timeout),
        None => Ok(response.chunk().await),
    }
}

/// Which events of one stream replay what was read before, for
/// [`SseSource::monotonic_ids`].
#[derive(Default)]
struct Replay {
    /// The ID of the last event of this stream, which events without an `id:` of their
    /// own carry too.
    id: Arc<str>,
    /// Whether the events with that ID are a replay.
    replaying: bool,
}

impl Replay {
    /// Whether the item with last event ID `id` replays what `read` (the last ID read)
    /// covers.
    fn is_replay(&mut self, id: &Arc<str>, read: &str) -> bool {
        if self.id != *id {
            self.id = Arc::clone(id);
            self.replaying = !id.is_empty() && !id_after(id, read);
        }
        self.replaying
    }
}

/// Whether event ID `id` comes after `read` (anything comes after no ID): as numbers
/// if both are ASCII digits, else byte by byte.
fn id_after(id: &str, read: &str) -> bool {
    if read.is_empty() {
        return true;
    }
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if digits(id) && digits(read) {
        let id = id.trim_start_matches('0');
        let read = read.trim_start_matches('0');
        return (id.len(), id.as_bytes()) > (read.len(), read.as_bytes());
    }
    id.as_bytes() > read.as_bytes()
}

/// Where the source is in the stream.
struct Position {
    /// The ID of the last event handled (sent, skipped or reported).
    last_event_id: Arc<str>,
    /// The last offset reported, to report only changes.
    reported: Option<Arc<str>>,
    /// The server's `retry:`, which outlives the connection that sent it.
    server_retry: Option<Duration>,
    /// The current stream dispatched an event (sent, filtered out, skipped as a replay
    /// or too large): it works, and its end is no failure to back off from.
    delivered: bool,
}

impl Position {
    /// Reports the last event ID as the offset if it changed; false once the
    /// pipeline's shutdown deadline has passed.
    async fn report(&mut self, ctx: &SourceContext) -> bool {
        if self.reported.as_ref() == Some(&self.last_event_id) {
            return true;
        }
        let offset = serde_json::Value::String(self.last_event_id.to_string());
        match ctx.report_offset(offset).await {
            Ok(()) => {
                self.reported = Some(Arc::clone(&self.last_event_id));
                true
            }
            Err(_) => false,
        }
    }
}

enum OpenError {
    Fatal(SseError),
    /// 204: the server asks the client not to reconnect.
    Stop,
    /// Retry, waiting at least the duration if there is one (`Retry-After`).
    Retry(StreamFailed, Option<Duration>),
}

enum StreamEnd {
    Cancelled,
    Lost(StreamFailed),
}

#[async_trait]
impl Source for SseSource {
    /// Its offsets are exact, so its messages are committed only with one.
    fn reports_offsets(&self) -> bool {
        true
    }

    async fn run(&mut self, ctx: SourceContext) -> Result<(), BoxError> {
        let client = self.client_for_run()?;
        let resume: Arc<str> = match ctx.resume_offset() {
            None => Arc::from(""),
            Some(serde_json::Value::String(id)) => Arc::from(id.as_str()),
            Some(other) => {
                return Err(SseError::InvalidOffset {
                    offset: other.clone(),
                }
                .into());
            }
        };
        let mut position = Position {
            reported: Some(resume.clone()),
            last_event_id: resume,
            server_retry: None,
            delivered: false,
        };
        let mut backoff = self.reconnect.delays();
        let mut failures = 0usize;
        let connection = ConnectionMetrics::new(&ctx);
        loop {
            let attempt = tokio::select! {
                attempt = self.open(&client, &position.last_event_id) => attempt,
                () = ctx.cancelled() => return Ok(()),
            };
            let (last_error, at_least, cause) = match attempt {
                Err(OpenError::Fatal(error)) => return Err(error.into()),
                Err(OpenError::Stop) => {
                    tracing::info!(source = ctx.name(), url = %self.url, "the server answered 204 No Content: it asks for no more reconnects; source ends");
                    return Ok(());
                }
                Err(OpenError::Retry(error, at_least)) => (error, at_least, "connect_failed"),
                Ok(response) => {
                    SseStats::add(&self.stats.0.connects, 1);
                    connection.set_connected(true);
                    tracing::debug!(source = ctx.name(), url = %self.url, last_event_id = %position.last_event_id, "event stream connected");
                    let connected_at = Instant::now();
                    position.delivered = false;
                    let end = self.read_stream(response, &ctx, &mut position).await;
                    connection.set_connected(false);
                    let end = end?;
                    if position.delivered || connected_at.elapsed() >= self.reconnect.healthy_duration() {
                        backoff = self.reconnect.delays();
                        failures = 0;
                    }
                    match end {
                        StreamEnd::Cancelled => return Ok(()),
                        StreamEnd::Lost(error) => (error, None, "lost"),
                    }
                }
            };
            failures = failures.saturating_add(1);
            let Some(policy_delay) = backoff.next() else {
                return Err(SseError::GaveUp {
                    attempts: failures,
                    last_error: Box::new(last_error),
                }
                .into());
            };
            // The server's reconnection time, as the standard has it, for the first
            // attempt; attempts failing in a row back off from there.
            let mut delay = match position.server_retry {
                Some(retry) if failures == 1 => retry,
                Some(retry) => retry.max(policy_delay),
                None => policy_delay,
            };
            if let Some(at_least) = at_least {
                delay = delay.max(at_least);
            }
            SseStats::add(&self.stats.0.reconnects, 1);
            connection.reconnect(cause);
            tracing::warn!(
                source = ctx.name(),
                url = %self.url,
                error = %with_causes(&last_error),
                attempt = failures,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "event stream lost; reconnecting"
            );
            tokio::select! {
                () = sleep(delay) => {}
                () = ctx.cancelled() => return Ok(()),
            }
        }
    }
}

/// The error's message followed by those of its sources that it does not already
/// include: reqwest's "error sending request" says nothing of why (a refused
/// connection, a DNS failure, a certificate) without them.
fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}

/// Sleeps for `delay`; delays too long for tokio's timer wait until shutdown.
async fn sleep(delay: Duration) {
    match Instant::now().checked_add(delay) {
        Some(deadline) if delay < NEVER => tokio::time::sleep_until(deadline).await,
        _ => std::future::pending().await,
    }
}

/// Why an [`SseSource`] stopped for good.
///
/// A dropped connection, a stream the server ended, a silent stream, a refused or
/// timed-out connect, 408, 429 and 5xx are retried with backoff; these errors are what
/// retrying cannot fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SseError {
    /// The URL cannot be requested.
    #[error("invalid event-stream URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built (its TLS setup failed).
    #[error("the HTTP client could not be built: {0}")]
    Client(#[source] reqwest::Error),
    /// The server answered with a status that retrying cannot change, such as 401 or
    /// 403 (check the credentials and headers) or 404 (check the URL).
    #[error("the server answered HTTP {status} to the event-stream request for `{url}`: {}", status_hint(*status))]
    Status {
        /// The URL requested.
        url: String,
        /// The HTTP status code.
        status: u16,
    },
    /// The server answered 2xx with a body that is not `text/event-stream`.
    #[error(
        "`{url}` answered with content type {} instead of text/event-stream: check that the URL is the event stream's",
        content_type.as_deref().map_or("(none)".to_owned(), |t| format!("`{t}`"))
    )]
    NotEventStream {
        /// The URL requested.
        url: String,
        /// The `Content-Type` it answered with, if any.
        content_type: Option<String>,
    },
    /// The resume offset is not a string (a last event ID): it was stored by another
    /// kind of source under this source's name.
    #[error(
        "the resume offset {offset} is not a last event ID (a JSON string); was the source renamed or replaced?"
    )]
    InvalidOffset {
        /// The offset found.
        offset: serde_json::Value,
    },
    /// Every reconnect attempt allowed by the [`Reconnect`] policy failed.
    #[error("gave up after {attempts} failed connection attempts; last error: {}", with_causes(last_error.as_ref()))]
    GaveUp {
        /// How many attempts were made since the stream was last healthy.
        attempts: usize,
        /// The error of the last attempt, also this error's
        /// [`source`](std::error::Error::source).
        #[source]
        last_error: BoxError,
    },
}

fn status_hint(status: u16) -> &'static str {
    match status {
        401 | 403 => "check the credentials and headers sent with the request",
        404 | 410 => "check the URL",
        405 => "the URL does not accept GET; check that it is an event stream",
        _ => "retrying cannot fix this status",
    }
}

/// Why a connection attempt or a stream failed: what failed, and the error behind it.
#[derive(Debug)]
struct StreamFailed {
    message: String,
    source: Option<BoxError>,
}

impl StreamFailed {
    fn new(message: impl Into<String>) -> Self {
        StreamFailed {
            message: message.into(),
            source: None,
        }
    }

    fn with_source(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        StreamFailed {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

impl fmt::Display for StreamFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {source}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for StreamFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Live counters of an [`SseSource`]; see [`SseSource::stats`].
///
/// Like every stats handle of intake (`TableStats`, `SourceStats`, `WsStats`), it is
/// cheap to clone, each getter reads the figure as it is now, and it serializes (with
/// serde) to an object of the figures.
#[derive(Debug, Clone, Default)]
pub struct SseStats(Arc<SseCounters>);

#[derive(Debug, Default)]
struct SseCounters {
    connects: AtomicU64,
    reconnects: AtomicU64,
    bytes: AtomicU64,
    events: AtomicU64,
    filtered: AtomicU64,
    oversized: AtomicU64,
    comments: AtomicU64,
    replayed: AtomicU64,
}

impl serde::Serialize for SseStats {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("SseStats", 8)?;
        s.serialize_field("connects", &self.connects())?;
        s.serialize_field("reconnects", &self.reconnects())?;
        s.serialize_field("bytes", &self.bytes())?;
        s.serialize_field("events", &self.events())?;
        s.serialize_field("filtered", &self.filtered())?;
        s.serialize_field("oversized", &self.oversized())?;
        s.serialize_field("comments", &self.comments())?;
        s.serialize_field("replayed", &self.replayed())?;
        s.end()
    }
}

impl SseStats {
    /// Streams opened (2xx `text/event-stream` responses), the first included.
    pub fn connects(&self) -> u64 {
        self.0.connects.load(Ordering::Relaxed)
    }

    /// Reconnects scheduled: each lost stream or failed attempt followed by another.
    pub fn reconnects(&self) -> u64 {
        self.0.reconnects.load(Ordering::Relaxed)
    }

    /// Bytes of event stream received, over all connections.
    pub fn bytes(&self) -> u64 {
        self.0.bytes.load(Ordering::Relaxed)
    }

    /// Events dispatched by the stream (filtered ones included, oversized ones not).
    pub fn events(&self) -> u64 {
        self.0.events.load(Ordering::Relaxed)
    }

    /// Events skipped because their type was not asked for
    /// ([`SseSource::event_type`]).
    pub fn filtered(&self) -> u64 {
        self.0.filtered.load(Ordering::Relaxed)
    }

    /// Events over [`SseSource::max_event_size`], reported to the reader's error
    /// policy.
    pub fn oversized(&self) -> u64 {
        self.0.oversized.load(Ordering::Relaxed)
    }

    /// Comment lines received, such as keep-alives.
    pub fn comments(&self) -> u64 {
        self.0.comments.load(Ordering::Relaxed)
    }

    /// Events skipped as replays of events read before, with
    /// [`SseSource::monotonic_ids`].
    pub fn replayed(&self) -> u64 {
        self.0.replayed.load(Ordering::Relaxed)
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_digits_compare_as_numbers_and_others_byte_by_byte() {
        assert!(id_after("10", "9"));
        assert!(id_after("010", "9"));
        assert!(!id_after("9", "10"));
        assert!(!id_after("7", "7"));
        assert!(id_after("1", ""));
        assert!(id_after("2026-11-29T01:00:01Z", "2026-11-29T01:00:00Z"));
        assert!(!id_after(
            "01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "01ARZ3NDEKTSV4RRFFQ69G5FAW"
        ));
    }

    #[test]
    fn events_without_an_id_share_the_fate_of_the_one_before() {
        let mut replay = Replay::default();
        let mut is_replay = |id: &str, read: &str| replay.is_replay(&Arc::from(id), read);
        // Read up to 5; the server starts again from 4.
        assert!(is_replay("4", "5"));
        assert!(is_replay("4", "5"));
        assert!(is_replay("5", "5"));
        assert!(!is_replay("6", "5"));
        assert!(!is_replay("6", "6"));
        assert!(!is_replay("", "6"));
    }
}
