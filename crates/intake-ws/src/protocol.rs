//! The protocol hook: what the source says to the server, and what becomes a message.

use bytes::Bytes;
use intake_core::Message;
use tokio_tungstenite::tungstenite;

use crate::error::ProtocolError;

/// A data frame received from the server: a whole message, reassembled from its
/// fragments, text or binary. Pings, pongs and close frames are handled by the source
/// and never reach the protocol.
#[derive(Debug, Clone)]
pub struct Frame {
    data: Bytes,
    text: bool,
}

impl Frame {
    /// A text frame. `text` is UTF-8 (the WebSocket layer has checked it).
    pub fn text(text: impl Into<String>) -> Self {
        Frame {
            data: Bytes::from(text.into()),
            text: true,
        }
    }

    /// A binary frame.
    pub fn binary(data: impl Into<Bytes>) -> Self {
        Frame {
            data: data.into(),
            text: false,
        }
    }

    /// Whether this is a text frame.
    pub fn is_text(&self) -> bool {
        self.text
    }

    /// The text of a text frame; `None` for a binary frame.
    pub fn as_str(&self) -> Option<&str> {
        if self.text {
            std::str::from_utf8(&self.data).ok()
        } else {
            None
        }
    }

    /// The frame's payload.
    pub fn as_bytes(&self) -> &Bytes {
        &self.data
    }

    /// The frame's payload, taken.
    pub fn into_bytes(self) -> Bytes {
        self.data
    }

    /// The payload parsed as JSON (text and binary frames alike).
    ///
    /// # Errors
    ///
    /// If the payload is not valid JSON for `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.data)
    }

    pub(crate) fn from_tungstenite(message: tungstenite::Message) -> Option<Self> {
        match message {
            tungstenite::Message::Text(text) => Some(Frame {
                data: Bytes::from(text),
                text: true,
            }),
            tungstenite::Message::Binary(data) => Some(Frame { data, text: false }),
            _ => None,
        }
    }
}

/// Messages a [`Protocol`] sends to the server. They are sent in order, right after
/// the hook that queued them returns.
#[derive(Debug, Default)]
pub struct Replies {
    queued: Vec<tungstenite::Message>,
}

impl Replies {
    /// Queues a text message.
    pub fn text(&mut self, text: impl Into<String>) {
        self.queued.push(tungstenite::Message::text(text.into()));
    }

    /// Queues a value serialized as a JSON text message, such as
    /// `json!({"action": "auth", "params": key})`.
    pub fn json<T: serde::Serialize + ?Sized>(&mut self, value: &T) {
        match serde_json::to_string(value) {
            Ok(text) => self.text(text),
            // Serializing to a string fails only for maps with non-string keys, a bug
            // in the protocol: sending nothing would hang the handshake silently.
            Err(e) => tracing::error!(error = %e, "a protocol reply could not be serialized; not sent"),
        }
    }

    /// Queues a binary message.
    pub fn binary(&mut self, data: impl Into<Bytes>) {
        self.queued.push(tungstenite::Message::Binary(data.into()));
    }

    /// How many messages are queued.
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    pub(crate) fn take(&mut self) -> Vec<tungstenite::Message> {
        std::mem::take(&mut self.queued)
    }
}

/// The conversation with a WebSocket server: the handshake it needs and which frames
/// become table messages.
///
/// The source calls [`on_connect`](Self::on_connect) after every successful
/// connection (the first and each reconnect), so a protocol that answers the server
/// step by step replays the whole handshake (authentication, every subscription)
/// each time. Then [`on_message`](Self::on_message) sees every data frame, in order.
/// Replies queued in either hook are sent as soon as the hook returns.
///
/// Bad input is not an error of the conversation: return it as
/// [`Message::Invalid`] (the frame or the part of it that is bad, and why), so that
/// the reader's [`ErrorPolicy`](intake_core::ErrorPolicy) fails the pipeline or
/// skips and reports it, and the good messages of the same frame are kept. A
/// [`ProtocolError`] is for a conversation that cannot go on.
///
/// # Examples
///
/// The Polygon handshake, written by hand (the crate ships it as
/// [`Polygon`](crate::Polygon)):
///
/// ```
/// use intake_core::Message;
/// use intake_ws::{Frame, Protocol, ProtocolError, Replies};
/// use serde_json::{json, Value};
///
/// struct Stocks { key: String, params: String }
///
/// impl Protocol for Stocks {
///     fn on_message(&mut self, frame: Frame, replies: &mut Replies) -> Result<Vec<Message>, ProtocolError> {
///         let events: Vec<Value> = match frame.json() {
///             Ok(events) => events,
///             Err(e) => return Ok(vec![Message::Invalid { reason: e.to_string(), raw: frame.into_bytes() }]),
///         };
///         let mut rows = Vec::new();
///         for event in events {
///             match (event["ev"].as_str(), event["status"].as_str()) {
///                 (Some("status"), Some("connected")) => replies.json(&json!({"action": "auth", "params": self.key})),
///                 (Some("status"), Some("auth_success")) => replies.json(&json!({"action": "subscribe", "params": self.params})),
///                 (Some("status"), Some("auth_failed")) => return Err(ProtocolError::fatal("authentication failed")),
///                 (Some("A"), _) => rows.push(Message::Json(event)),
///                 _ => {}
///             }
///         }
///         Ok(rows)
///     }
/// }
/// ```
pub trait Protocol: Send + 'static {
    /// Called once the connection is open, before any frame is read. Queue the
    /// messages the server expects first. The default sends nothing.
    ///
    /// # Errors
    ///
    /// A [fatal](ProtocolError::fatal) error stops the source; any other drops the
    /// connection and reconnects.
    fn on_connect(&mut self, replies: &mut Replies) -> Result<(), ProtocolError> {
        let _ = replies;
        Ok(())
    }

    /// Called for every data frame. Returns the messages to send to the table, in
    /// order (often none, for control frames of the protocol).
    ///
    /// # Errors
    ///
    /// A [fatal](ProtocolError::fatal) error stops the source. Any other error ends
    /// the connection: the source stops reading it, still hands the frames it had
    /// already read to this hook (their errors are logged), then reconnects. Either
    /// way the frame given to this call produces no message, so report bad input
    /// with [`Message::Invalid`] rather than an error.
    fn on_message(&mut self, frame: Frame, replies: &mut Replies) -> Result<Vec<Message>, ProtocolError>;
}

/// What a [`Generic`] protocol's [`filter_map`](Generic::filter_map) makes of a
/// frame.
///
/// # Examples
///
/// Binance-style streams answer a subscription with `{"result":null,"id":1}`, an
/// acknowledgement that is not a trade:
///
/// ```
/// use intake_ws::{Filtered, Frame};
/// use serde_json::Value;
///
/// fn trades_only(frame: &Frame) -> Filtered {
///     match frame.json::<Value>() {
///         // The acknowledgement of a request (`SUBSCRIBE`, `LIST_SUBSCRIPTIONS`, …).
///         Ok(reply) if reply.get("id").is_some() && reply.get("result").is_some() => Filtered::Skip,
///         // Parsed once: the reader takes the value as it is.
///         Ok(trade) => Filtered::Json(trade),
///         Err(error) => Filtered::Invalid(format!("malformed JSON: {error}")),
///     }
/// }
///
/// assert!(matches!(trades_only(&Frame::text(r#"{"result":null,"id":1}"#)), Filtered::Skip));
/// assert!(matches!(trades_only(&Frame::text(r#"{"e":"trade","s":"BTCUSDT","p":"65000.1"}"#)), Filtered::Json(_)));
/// assert!(matches!(trades_only(&Frame::text("{oops")), Filtered::Invalid(_)));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Filtered {
    /// The frame is data, as it arrived: it becomes [`Message::Bytes`], parsed by the
    /// reader's format.
    Keep,
    /// The frame is data, rewritten: this payload replaces it and is parsed by the
    /// reader's format.
    Bytes(Bytes),
    /// The frame is data, rewritten (or just parsed) as JSON: it becomes
    /// [`Message::Json`], which the reader takes without parsing it again.
    Json(serde_json::Value),
    /// The frame is not data, such as a subscription acknowledgement or a heartbeat:
    /// it produces no message. Skipped frames are counted in
    /// [`WsStats::skipped`](crate::WsStats::skipped) and logged at debug level.
    Skip,
    /// The frame is bad input: it becomes [`Message::Invalid`] with the frame as it
    /// arrived and this reason, and goes through the reader's
    /// [`ErrorPolicy`](intake_core::ErrorPolicy) (fail the pipeline, or skip and
    /// report it).
    Invalid(String),
}

/// The filter of a [`Generic`] protocol; shared so that `Generic` stays `Clone`.
type FilterFn = std::sync::Arc<dyn Fn(&Frame) -> Filtered + Send + Sync>;

/// A protocol for servers that need no conversation: it sends a fixed list of
/// messages after every connect (such as a subscription) and emits every data frame
/// as it is.
///
/// Frames become [`Message::Bytes`], parsed by the reader's format. With
/// [`filter_map`](Self::filter_map), a function decides first which frames are data
/// (and may rewrite them), which are control frames of the exchange to skip, and
/// which are bad input. With [`split_arrays`](Self::split_arrays), a frame holding a
/// JSON array (after the filter) becomes one message per element instead.
///
/// # Examples
///
/// ```
/// use intake_ws::{Generic, WebSocketSource};
///
/// let source = WebSocketSource::new("wss://stream.example.com/feed")
///     .protocol(Generic::new().send_on_connect(r#"{"op": "subscribe", "channel": "trades"}"#).split_arrays(true));
/// # let _ = source;
/// ```
///
/// A Binance-style stream, whose subscription is acknowledged with
/// `{"result":null,"id":1}`, a frame that is not a trade:
///
/// ```
/// use intake_ws::{Filtered, Generic, WebSocketSource};
///
/// let protocol = Generic::new()
///     .send_on_connect(r#"{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}"#)
///     .filter_map(|frame| match frame.as_str() {
///         Some(text) if text.starts_with(r#"{"result""#) => Filtered::Skip,
///         _ => Filtered::Keep,
///     });
/// let source = WebSocketSource::new("wss://stream.binance.com:9443/ws").protocol(protocol);
/// # let _ = source;
/// ```
#[derive(Clone, Default)]
#[must_use]
pub struct Generic {
    on_connect: Vec<String>,
    split_arrays: bool,
    filter: Option<FilterFn>,
}

impl std::fmt::Debug for Generic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generic")
            .field("on_connect", &self.on_connect)
            .field("split_arrays", &self.split_arrays)
            .field("filter_map", &self.filter.is_some())
            .finish()
    }
}

impl Generic {
    /// Sends nothing and emits each frame as one message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a text message to send after every connect, in the order added.
    pub fn send_on_connect(mut self, message: impl Into<String>) -> Self {
        self.on_connect.push(message.into());
        self
    }

    /// Whether a frame holding a JSON array becomes one message per element (default:
    /// no). Frames that do not start with `[` are emitted whole either way.
    ///
    /// With splitting on, a frame that starts with `[` but is not valid JSON (such as
    /// `[1, 2` cut short) becomes [`Message::Invalid`] with the JSON error as its
    /// reason, so that the reader's [`ErrorPolicy`](intake_core::ErrorPolicy) reports
    /// what is really wrong with it.
    ///
    /// With a [`filter_map`](Self::filter_map), splitting applies to what the filter
    /// passes on: the frame it keeps, the payload it rewrote
    /// ([`Filtered::Bytes`]), or the JSON array it returned ([`Filtered::Json`]).
    pub fn split_arrays(mut self, split: bool) -> Self {
        self.split_arrays = split;
        self
    }

    /// Decides, for every data frame, whether it is data (kept as it is, or
    /// rewritten), a control frame of the exchange to skip (a subscription
    /// acknowledgement, a heartbeat), or bad input; see [`Filtered`]. Default: every
    /// frame is data. Setting it again replaces the previous function.
    ///
    /// The function runs before [`split_arrays`](Self::split_arrays), on the whole
    /// frame, on the source's task: keep it quick (a prefix check, or one parse whose
    /// value it passes on as [`Filtered::Json`] so the reader does not parse again).
    /// A frame it reports as [`Filtered::Invalid`] reaches the reader's
    /// [`ErrorPolicy`](intake_core::ErrorPolicy) with the frame as it arrived as its
    /// raw input. Without a filter, the protocol costs what it did before: no call,
    /// no allocation.
    ///
    /// # Examples
    ///
    /// Skips Binance's `{"result":null,"id":1}` and heartbeats, and unwraps combined
    /// streams' `{"stream": …, "data": {…}}` envelopes:
    ///
    /// ```
    /// use intake_ws::{Filtered, Generic};
    /// use serde_json::Value;
    ///
    /// let protocol = Generic::new().filter_map(|frame| match frame.json::<Value>() {
    ///     Ok(reply) if reply.get("id").is_some() && reply.get("result").is_some() => Filtered::Skip,
    ///     Ok(heartbeat) if heartbeat["event"] == "heartbeat" => Filtered::Skip,
    ///     Ok(mut envelope) if envelope.get("stream").is_some() => Filtered::Json(envelope["data"].take()),
    ///     Ok(event) => Filtered::Json(event),
    ///     Err(error) => Filtered::Invalid(format!("malformed JSON: {error}")),
    /// });
    /// # let _ = protocol;
    /// ```
    pub fn filter_map<F>(mut self, filter: F) -> Self
    where
        F: Fn(&Frame) -> Filtered + Send + Sync + 'static,
    {
        self.filter = Some(std::sync::Arc::new(filter));
        self
    }

    /// The messages of data that passed the filter: `payload` in the reader's
    /// format, split when it is a JSON array and splitting is on. `rewritten_from`
    /// is the frame as it arrived when the filter rewrote it (`None`: `payload` is
    /// the frame), reported as the raw input of a broken array.
    fn emit_bytes(&self, payload: Bytes, rewritten_from: Option<Frame>) -> Vec<Message> {
        if self.split_arrays && payload.trim_ascii_start().first() == Some(&b'[') {
            // Passed on whole, a broken array would be refused by the reader as "not an
            // object", hiding the real problem.
            return match serde_json::from_slice::<Vec<serde_json::Value>>(&payload) {
                Ok(items) => items.into_iter().map(Message::Json).collect(),
                Err(error) => vec![Message::Invalid {
                    reason: format!("malformed JSON: {error}"),
                    raw: rewritten_from.map_or(payload, Frame::into_bytes),
                }],
            };
        }
        vec![Message::Bytes(payload)]
    }
}

impl Protocol for Generic {
    fn on_connect(&mut self, replies: &mut Replies) -> Result<(), ProtocolError> {
        for message in &self.on_connect {
            replies.text(message.clone());
        }
        Ok(())
    }

    fn on_message(&mut self, frame: Frame, _replies: &mut Replies) -> Result<Vec<Message>, ProtocolError> {
        let Some(filter) = &self.filter else {
            return Ok(self.emit_bytes(frame.into_bytes(), None));
        };
        Ok(match filter(&frame) {
            Filtered::Keep => self.emit_bytes(frame.into_bytes(), None),
            Filtered::Bytes(payload) => self.emit_bytes(payload, Some(frame)),
            Filtered::Json(serde_json::Value::Array(items)) if self.split_arrays => {
                items.into_iter().map(Message::Json).collect()
            }
            Filtered::Json(value) => vec![Message::Json(value)],
            Filtered::Skip => Vec::new(),
            Filtered::Invalid(reason) => vec![Message::Invalid {
                raw: frame.into_bytes(),
                reason,
            }],
        })
    }
}
