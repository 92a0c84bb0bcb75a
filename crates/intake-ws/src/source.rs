//! The WebSocket source: connects, runs the protocol, reconnects.

use std::sync::{Arc, Once};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use intake_core::{BoxError, Location, Message, Source, SourceContext};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Error as TungsteniteError};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::Reconnect;
use crate::error::{ConnectionFailed, ProtocolError, WsError};
use crate::protocol::{Frame, Generic, Protocol, Replies};
use crate::stats::{ReconnectCause, WsStats};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long closing a connection politely may take before it is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Longer than any process lives. A ping interval or silence timeout at least this
/// long means never: tokio's timers and `Instant` arithmetic overflow on durations
/// such as `Duration::MAX`, so they are not armed at all.
const NEVER: Duration = Duration::from_secs(86_400 * 365 * 30);

/// Installs rustls' ring crypto provider as the process default, once. Without a
/// default provider, rustls panics at the first `wss://` connect; if the application
/// installed one already, that one is kept.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means a provider is installed already, which is what we need.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A source that reads a WebSocket server into a table: connects (`ws://` or
/// `wss://`), talks the server's [`Protocol`], and reconnects with backoff when the
/// connection is lost, replaying the handshake.
///
/// Liveness: pings from the server are answered at once, even while the table
/// applies backpressure (frames are read ahead, up to
/// [`read_ahead`](Self::read_ahead) bytes, by a task of their own); the source can
/// send pings of its own ([`ping_interval`](Self::ping_interval)) and treats a
/// connection on which nothing arrives for [`silence_timeout`](Self::silence_timeout)
/// as dead, and reconnects.
///
/// Close codes from the server: 1008 (policy violation) stops the source with
/// [`WsError::PolicyViolation`]; 1000 (normal) reconnects unless
/// [`reconnect_on_normal_close(false)`](Self::reconnect_on_normal_close), in which
/// case the source ends; every other code (1001 going away, 1011 server error, …)
/// reconnects. HTTP 401 or 403 on the upgrade stops the source with
/// [`WsError::Unauthorized`].
///
/// Nothing read is dropped silently: a message the source cannot read (over
/// [`max_message_size`](Self::max_message_size), or a text message that is not
/// UTF-8) is reported through the reader's [`ErrorPolicy`](intake_core::ErrorPolicy)
/// as [`Message::Invalid`] before the connection is made again, and every frame read
/// reaches the [`Protocol`] (see [`Protocol::on_message`] for its errors).
///
/// On shutdown the source sends a close frame (1000) and waits up to a second for
/// the server's reply.
///
/// # Error policy
///
/// Read a feed with [`ErrorPolicy::SkipAndReport`](intake_core::ErrorPolicy::SkipAndReport),
/// as the example below does. Core's default,
/// [`ErrorPolicy::Fail`](intake_core::ErrorPolicy::Fail), suits input read once (a
/// file to fix); on a feed that runs for days it fails the pipeline on the first odd
/// frame. Skipped frames are not lost silently: they are counted, logged and
/// delivered on [`Pipeline::rejected`](intake_core::Pipeline::rejected). Frames that
/// are not data at all (acknowledgements, heartbeats) belong in the protocol, which
/// skips them before the reader sees them (see [`Generic::filter_map`]). The guide,
/// `docs/websocket.md`, gives the reasons.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use intake_core::{Column, DataType, ErrorPolicy, Pipeline, Reader, Schema};
/// use intake_ws::{Polygon, Reconnect, WebSocketSource};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let schema = Schema::new([
///     Column::new("sym", DataType::String).primary_key(),
///     Column::new("c", DataType::Float),
///     Column::new("v", DataType::Int),
/// ])?;
/// let source = WebSocketSource::new(Polygon::DELAYED_STOCKS_URL)
///     .protocol(Polygon::new(std::env::var("POLYGON_API_KEY")?, "A.*"))
///     .connect_timeout(Duration::from_secs(10))
///     .silence_timeout(Duration::from_secs(60))
///     .reconnect(Reconnect::default().max_retries(10));
/// let stats = source.stats();
///
/// let mut pipeline = Pipeline::new();
/// // A feed: bad frames are skipped and reported, not the end of the pipeline.
/// let reader = Reader::json(schema).error_policy(ErrorPolicy::SkipAndReport);
/// let aggregates = pipeline.read("polygon", source, reader);
/// pipeline.run().await?;
/// println!(
///     "{} symbols, {} rejected, {} reconnects",
///     aggregates.len(),
///     aggregates.stats().rejected(),
///     stats.reconnects()
/// );
/// # Ok(())
/// # }
/// ```
#[must_use = "a source does nothing until a pipeline runs it"]
pub struct WebSocketSource {
    url: String,
    protocol: Box<dyn Protocol>,
    headers: Vec<(HeaderName, HeaderValue)>,
    connect_timeout: Duration,
    max_message_size: Option<usize>,
    reconnect: Reconnect,
    ping_interval: Option<Duration>,
    silence_timeout: Option<Duration>,
    reconnect_on_normal_close: bool,
    read_ahead: usize,
    stats: WsStats,
    stop: Option<CancellationToken>,
}

impl std::fmt::Debug for WebSocketSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketSource")
            .field("url", &self.url)
            .field(
                "headers",
                &self.headers.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            )
            .field("connect_timeout", &self.connect_timeout)
            .field("max_message_size", &self.max_message_size)
            .field("reconnect", &self.reconnect)
            .field("ping_interval", &self.ping_interval)
            .field("silence_timeout", &self.silence_timeout)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// How a connection ended, as far as reconnecting goes.
enum SessionEnd {
    /// The pipeline is shutting down.
    Cancelled,
    /// The server closed with 1000.
    NormalClose(String),
    /// Nothing arrived within the silence timeout.
    Silent(String),
    /// Anything else to reconnect after.
    Lost(String),
}

/// Why connecting failed.
enum ConnectError {
    Fatal(WsError),
    Retry(ConnectionFailed),
}

impl WebSocketSource {
    /// Default for [`connect_timeout`](Self::connect_timeout).
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default for [`read_ahead`](Self::read_ahead).
    pub const DEFAULT_READ_AHEAD: usize = 4 << 20;

    /// A source reading `url` (`ws://…` or `wss://…`) with the [`Generic`] protocol
    /// until [`protocol`](Self::protocol) sets another.
    pub fn new(url: impl Into<String>) -> Self {
        WebSocketSource {
            url: url.into(),
            protocol: Box::new(Generic::new()),
            headers: Vec::new(),
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            max_message_size: None,
            reconnect: Reconnect::default(),
            ping_interval: None,
            silence_timeout: None,
            reconnect_on_normal_close: true,
            read_ahead: Self::DEFAULT_READ_AHEAD,
            stats: WsStats::default(),
            stop: None,
        }
    }

    /// The conversation with the server; see [`Protocol`], [`Polygon`](crate::Polygon)
    /// and [`Generic`].
    pub fn protocol(mut self, protocol: impl Protocol) -> Self {
        self.protocol = Box::new(protocol);
        self
    }

    /// Adds a header to the HTTP upgrade request, such as `Authorization`.
    ///
    /// # Panics
    ///
    /// If `name` is not a valid header name or `value` not a valid header value.
    #[track_caller]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = HeaderName::try_from(name).unwrap_or_else(|e| panic!("invalid header name `{name}`: {e}"));
        let value =
            HeaderValue::try_from(value).unwrap_or_else(|e| panic!("invalid value for header `{name}`: {e}"));
        self.headers.push((name, value));
        self
    }

    /// The longest a connection attempt (TCP, TLS and the upgrade) may take; a
    /// timed-out attempt is retried. Default: 10 s. `Duration::MAX` means no limit.
    ///
    /// # Panics
    ///
    /// If `timeout` is zero: no attempt could ever succeed.
    #[track_caller]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        assert!(
            !timeout.is_zero(),
            "connect_timeout must be longer than zero, or no connection attempt could succeed"
        );
        self.connect_timeout = timeout;
        self
    }

    /// The largest message (and frame) accepted, in bytes. Default: tungstenite's,
    /// 64 MiB messages and 16 MiB frames; `usize::MAX` means no limit.
    ///
    /// A larger message cannot be read: it is reported through the reader's
    /// [`ErrorPolicy`](intake_core::ErrorPolicy) as [`Message::Invalid`] (with an
    /// empty `raw`, since it was never read, and its size in the reason), and the
    /// connection, which cannot go on past it, is made again.
    ///
    /// # Panics
    ///
    /// If `bytes` is zero: no message with a payload could be read.
    #[track_caller]
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        assert!(
            bytes > 0,
            "max_message_size must be at least 1 byte, or no message could be read"
        );
        self.max_message_size = Some(bytes);
        self
    }

    /// The reconnect policy. Default: [`Reconnect::default`].
    pub fn reconnect(mut self, policy: Reconnect) -> Self {
        self.reconnect = policy;
        self
    }

    /// Sends a ping every `interval`, so that a connection through idle proxies stays
    /// up and (with a [`silence_timeout`](Self::silence_timeout)) a dead one is
    /// noticed. Default: no pings. An interval of 30 years or more, such as
    /// `Duration::MAX`, means no pings.
    ///
    /// # Panics
    ///
    /// If `interval` is zero.
    #[track_caller]
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        assert!(!interval.is_zero(), "ping_interval must be longer than zero");
        self.ping_interval = (interval < NEVER).then_some(interval);
        self
    }

    /// Treats the connection as dead, and reconnects, when nothing at all (data, ping
    /// or pong) arrives for `timeout`. Default: no deadline. A timeout of 30 years or
    /// more, such as `Duration::MAX`, means no deadline.
    ///
    /// # Panics
    ///
    /// If `timeout` is zero: every connection would be dead at once.
    #[track_caller]
    pub fn silence_timeout(mut self, timeout: Duration) -> Self {
        assert!(
            !timeout.is_zero(),
            "silence_timeout must be longer than zero, or every connection would count as dead at once"
        );
        self.silence_timeout = (timeout < NEVER).then_some(timeout);
        self
    }

    /// Whether a close frame with code 1000 (normal closure) from the server leads to
    /// a reconnect (default: yes) or ends the source successfully.
    pub fn reconnect_on_normal_close(mut self, reconnect: bool) -> Self {
        self.reconnect_on_normal_close = reconnect;
        self
    }

    /// How many bytes of frames may be read ahead of the table while it applies
    /// backpressure. Within this budget the socket keeps being read, so pings are
    /// answered at once; beyond it, reading pauses (and TCP pushes back on the
    /// server). Default: 4 MiB. Budgets above 4 GiB (`u32::MAX` bytes), such as
    /// `usize::MAX`, are treated as 4 GiB.
    ///
    /// # Panics
    ///
    /// If `bytes` is zero.
    #[track_caller]
    pub fn read_ahead(mut self, bytes: usize) -> Self {
        assert!(bytes > 0, "read_ahead must be at least 1 byte");
        self.read_ahead = bytes;
        self
    }

    /// The source's counters (connects, reconnects, frames, messages, skipped frames,
    /// pings answered), live while it runs.
    pub fn stats(&self) -> WsStats {
        self.stats.clone()
    }

    /// Connects once. Borrows fields, not `self`: the protocol need not be `Sync`.
    fn connect(&self) -> impl Future<Output = Result<Socket, ConnectError>> + Send + 'static {
        let url = self.url.clone();
        let headers = self.headers.clone();
        let connect_timeout = self.connect_timeout;
        let max_message_size = self.max_message_size;
        connect(url, headers, connect_timeout, max_message_size)
    }

    /// Runs one connection until it ends. Returns how it ended and whether it was
    /// healthy (delivered data).
    ///
    /// Every frame read from the socket reaches the protocol before the session ends,
    /// unless the pipeline shuts down or the protocol fails fatally: after a
    /// non-fatal protocol error the socket stops being read, but the frames already
    /// read ahead are still handed to the protocol, as they are when the server
    /// closes the connection.
    ///
    /// `connection` counts the source's connections from 1; with the number of each
    /// data frame on it, it locates a rejected message ([`Location::websocket`]).
    async fn session(
        &mut self,
        mut socket: Socket,
        ctx: &SourceContext,
        connection: u64,
    ) -> Result<(SessionEnd, bool), BoxError> {
        let mut replies = Replies::default();
        // Before the reader starts, so that a failed handshake reads (and drops) nothing.
        if let Err(error) = self.protocol.on_connect(&mut replies) {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, close_politely(&mut socket)).await;
            return match error.is_fatal() {
                true => Err(WsError::Protocol(error).into()),
                false => Ok((SessionEnd::Lost(error.message().to_owned()), false)),
            };
        }
        let stop = CancellationToken::new();
        self.stop = Some(stop.clone());
        // Whatever way this returns (or is dropped), the socket task stops.
        let _stop_on_drop = stop.clone().drop_guard();
        let (frames_tx, mut frames) = mpsc::unbounded_channel();
        let (replies_tx, replies_rx) = mpsc::unbounded_channel();
        send_replies(&mut replies, &replies_tx);
        let budget = self.read_ahead.min(Semaphore::MAX_PERMITS).min(u32::MAX as usize);
        let reader = SocketTask {
            socket,
            frames: frames_tx,
            replies: replies_rx,
            read_ahead: Arc::new(Semaphore::new(budget)),
            budget,
            stop: stop.clone(),
            ping_interval: self.ping_interval,
            silence_timeout: self.silence_timeout,
            stats: self.stats.clone(),
        };
        let mut task = tokio::spawn(reader.run());

        let mut healthy = false;
        // Data frames handed to the protocol on this connection.
        let mut frame_number: u64 = 0;
        // The first non-fatal protocol error, which ends the connection.
        let mut dropped: Option<ProtocolError> = None;
        loop {
            let received = tokio::select! {
                biased;
                () = ctx.cancelled() => {
                    close(stop, task).await;
                    return Ok((SessionEnd::Cancelled, healthy));
                }
                received = frames.recv() => received,
            };
            let Some((frame, permit)) = received else { break };
            let _permit: OwnedSemaphorePermit = permit;
            frame_number += 1;
            self.stats.frame();
            match self.protocol.on_message(frame, &mut replies) {
                Ok(messages) => {
                    send_replies(&mut replies, &replies_tx);
                    if messages.is_empty() {
                        self.stats.skipped_frame();
                        tracing::debug!(
                            source = ctx.name(),
                            frame = self.stats.frames(),
                            "a frame carried no data (a control frame of the protocol); skipped"
                        );
                    } else {
                        // Reports of bad input do not make a connection healthy.
                        healthy |= messages.iter().any(|m| !matches!(m, Message::Invalid { .. }));
                        self.stats.emitted(messages.len());
                    }
                    let url = self.url.as_str();
                    for message in messages {
                        // Made only if the message is rejected.
                        let locate = || Location::websocket(url, connection, frame_number);
                        ctx.send_located(message, locate).await?;
                    }
                }
                Err(error) if error.is_fatal() => {
                    close(stop, task).await;
                    return Err(WsError::Protocol(error).into());
                }
                Err(error) if dropped.is_none() => {
                    // Stop reading; the frames read so far are still processed.
                    stop.cancel();
                    dropped = Some(error);
                }
                Err(error) => {
                    tracing::warn!(source = ctx.name(), %error, "protocol error on a frame read before the connection closed");
                }
            }
        }
        // The socket task ended and every frame it read was processed.
        let end = match (&mut task).await {
            Ok(end) => end,
            Err(e) => SocketEnd::Failed(format!("the socket task failed: {e}")),
        };
        if let SocketEnd::Unreadable(reason) = &end {
            // The message is lost with the connection: the reader's error policy hears
            // of it, like any bad input.
            let report = Message::Invalid {
                raw: Bytes::new(),
                reason: reason.clone(),
            };
            // The frame after the last one read.
            let locate = || Location::websocket(self.url.as_str(), connection, frame_number + 1);
            ctx.send_located(report, locate).await?;
        }
        if let Some(error) = dropped {
            return Ok((SessionEnd::Lost(error.message().to_owned()), healthy));
        }
        let end = match end {
            SocketEnd::Stopped => SessionEnd::Cancelled,
            SocketEnd::Closed(None) => SessionEnd::Lost("the server closed the connection".into()),
            SocketEnd::Closed(Some(frame)) => match frame.code {
                CloseCode::Policy => {
                    return Err(WsError::PolicyViolation {
                        reason: frame.reason.to_string(),
                    }
                    .into());
                }
                CloseCode::Normal => SessionEnd::NormalClose(format!(
                    "the server closed the connection normally (1000): {}",
                    frame.reason
                )),
                code => SessionEnd::Lost(format!(
                    "the server closed the connection with code {}: {}",
                    u16::from(code),
                    frame.reason
                )),
            },
            SocketEnd::Failed(error) | SocketEnd::Unreadable(error) => SessionEnd::Lost(error),
            SocketEnd::Silent(timeout) => SessionEnd::Silent(format!(
                "nothing received for {timeout:?}; the connection is treated as dead"
            )),
        };
        Ok((end, healthy))
    }
}

async fn connect(
    url: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    connect_timeout: Duration,
    max_message_size: Option<usize>,
) -> Result<Socket, ConnectError> {
    if url.starts_with("wss:") {
        install_crypto_provider();
    }
    let invalid = |reason: String| {
        ConnectError::Fatal(WsError::InvalidUrl {
            url: url.clone(),
            reason,
        })
    };
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| invalid(e.to_string()))?;
    for (name, value) in &headers {
        request.headers_mut().append(name.clone(), value.clone());
    }
    let mut config = WebSocketConfig::default();
    if let Some(max) = max_message_size {
        config = config.max_message_size(Some(max)).max_frame_size(Some(max));
    }
    let connecting = tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, None);
    match tokio::time::timeout(connect_timeout, connecting).await {
        Err(_) => Err(ConnectError::Retry(ConnectionFailed::new(format!(
            "connecting timed out after {connect_timeout:?}"
        )))),
        Ok(Ok((socket, _response))) => Ok(socket),
        Ok(Err(TungsteniteError::Http(response))) => match response.status().as_u16() {
            status @ (401 | 403) => Err(ConnectError::Fatal(WsError::Unauthorized { status })),
            status => Err(ConnectError::Retry(ConnectionFailed::new(format!(
                "the server refused the WebSocket upgrade with HTTP {status}"
            )))),
        },
        Ok(Err(TungsteniteError::Url(e))) => Err(invalid(e.to_string())),
        Ok(Err(e)) => Err(ConnectError::Retry(ConnectionFailed::with_source(
            format!("connecting failed: {e}"),
            e,
        ))),
    }
}

fn send_replies(replies: &mut Replies, to: &mpsc::UnboundedSender<tungstenite::Message>) {
    for reply in replies.take() {
        // A closed channel means the socket is gone; the session notices that next.
        let _ = to.send(reply);
    }
}

/// Stops the socket task, which closes the connection politely.
async fn close(stop: CancellationToken, task: tokio::task::JoinHandle<SocketEnd>) {
    stop.cancel();
    let _ = tokio::time::timeout(CLOSE_TIMEOUT * 2, task).await;
}

#[async_trait]
impl Source for WebSocketSource {
    async fn run(&mut self, ctx: SourceContext) -> Result<(), BoxError> {
        let mut backoff = self.reconnect.delays();
        let mut failures = 0usize;
        self.stats.export_as(&ctx);
        // Connections made so far, for the locations of rejected messages.
        let mut connections: u64 = 0;
        loop {
            let attempt = tokio::select! {
                attempt = self.connect() => attempt,
                () = ctx.cancelled() => return Ok(()),
            };
            let (last_error, cause) = match attempt {
                Err(ConnectError::Fatal(error)) => return Err(error.into()),
                Err(ConnectError::Retry(error)) => (error, ReconnectCause::ConnectFailed),
                Ok(socket) => {
                    self.stats.set_connected(true);
                    tracing::debug!(source = ctx.name(), url = %self.url, "WebSocket connected");
                    let connected_at = Instant::now();
                    connections += 1;
                    let session = self.session(socket, &ctx, connections).await;
                    self.stats.set_connected(false);
                    let (end, delivered) = session?;
                    if delivered || connected_at.elapsed() >= self.reconnect.healthy_duration() {
                        backoff = self.reconnect.delays();
                        failures = 0;
                    }
                    match end {
                        SessionEnd::Cancelled => return Ok(()),
                        SessionEnd::NormalClose(reason) if !self.reconnect_on_normal_close => {
                            tracing::info!(source = ctx.name(), %reason, "WebSocket closed; source ends");
                            return Ok(());
                        }
                        SessionEnd::NormalClose(error) => {
                            (ConnectionFailed::new(error), ReconnectCause::Closed)
                        }
                        SessionEnd::Silent(error) => (ConnectionFailed::new(error), ReconnectCause::Silent),
                        SessionEnd::Lost(error) => (ConnectionFailed::new(error), ReconnectCause::Lost),
                    }
                }
            };
            failures = failures.saturating_add(1);
            let Some(delay) = backoff.next() else {
                return Err(WsError::GaveUp {
                    attempts: failures,
                    last_error: Box::new(last_error),
                }
                .into());
            };
            self.stats.reconnect(cause);
            tracing::warn!(
                source = ctx.name(),
                url = %self.url,
                error = %last_error,
                attempt = failures,
                delay_ms = saturating_millis(delay),
                "WebSocket connection lost; reconnecting"
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = ctx.cancelled() => return Ok(()),
            }
        }
    }

    async fn on_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.cancel();
        }
    }
}

/// How the socket task ended.
enum SocketEnd {
    /// Stopped by the session (shutdown or a protocol error); closed politely.
    Stopped,
    /// The server sent a close frame (or ended the stream).
    Closed(Option<CloseFrame>),
    /// Reading or writing failed.
    Failed(String),
    /// The server sent a message that cannot be read (over the size limit, or text
    /// that is not UTF-8); the connection cannot go on past it.
    Unreadable(String),
    /// Nothing arrived within the silence timeout.
    Silent(Duration),
}

/// Owns the socket: reads frames ahead of the table, answers pings, sends replies
/// and pings, and watches the silence deadline.
struct SocketTask {
    socket: Socket,
    frames: mpsc::UnboundedSender<(Frame, OwnedSemaphorePermit)>,
    replies: mpsc::UnboundedReceiver<tungstenite::Message>,
    read_ahead: Arc<Semaphore>,
    budget: usize,
    stop: CancellationToken,
    ping_interval: Option<Duration>,
    silence_timeout: Option<Duration>,
    stats: WsStats,
}

impl SocketTask {
    async fn run(mut self) -> SocketEnd {
        let end = self.read_loop().await;
        // Closing the channel now lets the session process the last frames while the
        // connection closes.
        let SocketTask {
            mut socket, frames, ..
        } = self;
        drop(frames);
        match &end {
            SocketEnd::Stopped => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, close_politely(&mut socket)).await;
            }
            SocketEnd::Closed(_) => {
                // Sends the close reply tungstenite queued.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.close(None)).await;
            }
            SocketEnd::Failed(_) | SocketEnd::Unreadable(_) | SocketEnd::Silent(_) => {}
        }
        end
    }

    async fn read_loop(&mut self) -> SocketEnd {
        // The builders keep both durations below `NEVER`, so these sums cannot overflow.
        let silence = tokio::time::sleep_until(Instant::now() + self.silence_timeout.unwrap_or(NEVER));
        tokio::pin!(silence);
        let mut pings = self.ping_interval.map(|period| {
            let mut pings = tokio::time::interval_at(Instant::now() + period, period);
            pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            pings
        });
        loop {
            let message = tokio::select! {
                biased;
                () = self.stop.cancelled() => return SocketEnd::Stopped,
                Some(reply) = self.replies.recv() => {
                    if let Err(e) = self.socket.send(reply).await {
                        return SocketEnd::Failed(format!("sending failed: {e}"));
                    }
                    continue;
                }
                () = next_tick(&mut pings) => {
                    if let Err(e) = self.socket.send(tungstenite::Message::Ping(Default::default())).await {
                        return SocketEnd::Failed(format!("sending a ping failed: {e}"));
                    }
                    continue;
                }
                () = &mut silence => {
                    return SocketEnd::Silent(self.silence_timeout.unwrap_or_default());
                }
                message = self.socket.next() => message,
            };
            if let Some(timeout) = self.silence_timeout {
                silence.as_mut().reset(Instant::now() + timeout);
            }
            let message = match message {
                None => return SocketEnd::Closed(None),
                Some(Err(TungsteniteError::Capacity(e))) => {
                    return SocketEnd::Unreadable(format!(
                        "the server sent a message larger than max_message_size ({e}); it was not read, and the connection is made again"
                    ));
                }
                // tungstenite keeps neither the message nor the offending bytes (only
                // their lossy decoding), so the reason is all there is to report.
                Some(Err(TungsteniteError::Utf8(_))) => {
                    return SocketEnd::Unreadable(
                        "the server sent a text message that is not valid UTF-8; it cannot be read, and the connection is made again"
                            .to_owned(),
                    );
                }
                Some(Err(e)) => return SocketEnd::Failed(format!("reading failed: {e}")),
                Some(Ok(message)) => message,
            };
            match message {
                tungstenite::Message::Ping(_) => {
                    // tungstenite queued the pong; send it now rather than at the next
                    // read, which may be a while if the table is pushing back.
                    if let Err(e) = self.socket.flush().await {
                        return SocketEnd::Failed(format!("sending a pong failed: {e}"));
                    }
                    self.stats.ping_answered();
                }
                tungstenite::Message::Close(frame) => return SocketEnd::Closed(frame),
                message => {
                    let Some(frame) = Frame::from_tungstenite(message) else {
                        continue;
                    };
                    let cost = frame.as_bytes().len().clamp(1, self.budget) as u32;
                    let permit = match self.read_ahead.clone().try_acquire_many_owned(cost) {
                        Ok(permit) => permit,
                        Err(_) => {
                            // The table is behind by the whole read-ahead budget: stop
                            // reading until it catches up.
                            tokio::select! {
                                () = self.stop.cancelled() => return SocketEnd::Stopped,
                                permit = self.read_ahead.clone().acquire_many_owned(cost) => match permit {
                                    Ok(permit) => permit,
                                    Err(_) => return SocketEnd::Stopped,
                                },
                            }
                        }
                    };
                    if self.frames.send((frame, permit)).is_err() {
                        return SocketEnd::Stopped;
                    }
                    // Time spent waiting for the table is not silence from the server.
                    if let Some(timeout) = self.silence_timeout {
                        silence.as_mut().reset(Instant::now() + timeout);
                    }
                }
            }
        }
    }
}

/// `duration` in whole milliseconds, `u64::MAX` for longer ones (such as a
/// reconnect delay of `Duration::MAX`), which `as u64` would wrap.
fn saturating_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Sends a close frame (1000) and waits for the server's, which ends the stream.
async fn close_politely(socket: &mut Socket) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "client shutting down".into(),
    };
    let _ = socket.close(Some(frame)).await;
    while let Some(Ok(_)) = socket.next().await {}
}

/// The next tick of `pings`, or never without pings.
async fn next_tick(pings: &mut Option<tokio::time::Interval>) {
    match pings {
        Some(pings) => {
            pings.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_too_long_for_u64_milliseconds_are_logged_as_the_maximum() {
        assert_eq!(saturating_millis(Duration::from_millis(1500)), 1500);
        assert_eq!(saturating_millis(Duration::MAX), u64::MAX);
    }
}
