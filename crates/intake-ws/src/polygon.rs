//! The Polygon.io stocks WebSocket protocol.

use bytes::Bytes;
use intake_core::{Column, DataType, Message, Schema};
use serde_json::{Value, json};

use crate::error::ProtocolError;
use crate::protocol::{Frame, Protocol, Replies};

/// The [Polygon.io](https://polygon.io/docs/stocks/ws_getting-started) WebSocket
/// protocol: authenticate with an API key, subscribe, and emit every event of the
/// chosen types as a JSON object.
///
/// The conversation, replayed after every reconnect:
///
/// 1. the server says `[{"ev":"status","status":"connected"}]`; the protocol sends
///    `{"action":"auth","params":KEY}`;
/// 2. on `auth_success` it sends `{"action":"subscribe","params":…}` once per
///    [subscription](Self::subscribe);
/// 3. data arrives as JSON arrays of events; each event whose `ev` is one of the
///    [event types](Self::events) (default `A`, `AM`, `T`, `Q`) becomes one message.
///
/// `auth_failed`, `max_connections` and `error` statuses stop the source with a clear
/// error. `success` statuses (subscription confirmations) and unknown statuses are
/// logged.
///
/// Bad input becomes [`Message::Invalid`], so the reader's
/// [`ErrorPolicy`](intake_core::ErrorPolicy) decides (fail, or skip and report) and
/// the other events of the same frame are kept:
///
/// - a frame that is not JSON: the frame as it arrived, with the JSON error (for
///   `[{"ev":"A","v": `, `malformed JSON: EOF while parsing a value at line 1 column
///   16`);
/// - a frame that is JSON but neither an array nor an object (`123`, `"x"`, `null`);
/// - an item of an array frame that is not an object, or an event without an `ev`
///   field or with an `ev` that is not a string: that item, serialized, with which
///   item of the frame it was (counted from 1) and what is wrong with it.
///
/// Events whose `ev` is a string but not one of the [selected types](Self::events)
/// are skipped without a report (logged at trace level): that is the application's
/// choice, not bad input.
///
/// # Examples
///
/// ```
/// use intake_ws::{Polygon, WebSocketSource};
///
/// let source = WebSocketSource::new("wss://delayed.polygon.io/stocks")
///     .protocol(Polygon::new("MY-API-KEY", "AM.AAPL,AM.MSFT"));
/// # let _ = source;
/// ```
#[derive(Clone)]
#[must_use]
pub struct Polygon {
    api_key: String,
    subscriptions: Vec<String>,
    events: Vec<String>,
}

impl Polygon {
    /// Polygon's delayed stocks feed.
    pub const DELAYED_STOCKS_URL: &'static str = "wss://delayed.polygon.io/stocks";
    /// Polygon's real-time stocks feed.
    pub const STOCKS_URL: &'static str = "wss://socket.polygon.io/stocks";

    /// The schema of aggregate events (`A` per second, `AM` per minute), keyed by
    /// symbol so that the table holds each symbol's latest bar: `sym`, `o`, `c`, `h`,
    /// `l` (prices), `v` (volume), `s` and `e` (start and end, in Unix milliseconds).
    /// Polygon's other fields (`vw`, `av`, `op`, `a`, `z`, ...) are ignored; add
    /// columns for the ones you need.
    ///
    /// # Panics
    ///
    /// Never: the schema is fixed and valid.
    pub fn aggregates_schema() -> Schema {
        let columns = [
            Column::new("sym", DataType::String).primary_key(),
            Column::new("o", DataType::Float),
            Column::new("c", DataType::Float),
            Column::new("h", DataType::Float),
            Column::new("l", DataType::Float),
            Column::new("v", DataType::Int),
            Column::new("s", DataType::Timestamp),
            Column::new("e", DataType::Timestamp),
        ];
        match Schema::new(columns) {
            Ok(schema) => schema,
            Err(error) => unreachable!("the aggregates schema is valid: {error}"),
        }
    }

    /// Authenticates with `api_key` and subscribes to `params`, such as `A.*` or
    /// `AM.AAPL,AM.MSFT`.
    pub fn new(api_key: impl Into<String>, params: impl Into<String>) -> Self {
        Polygon {
            api_key: api_key.into(),
            subscriptions: vec![params.into()],
            events: ["A", "AM", "T", "Q"].map(String::from).to_vec(),
        }
    }

    /// Adds a subscription, sent as a `subscribe` action of its own after
    /// authentication.
    pub fn subscribe(mut self, params: impl Into<String>) -> Self {
        self.subscriptions.push(params.into());
        self
    }

    /// The event types (`ev` values) that become messages. Default: `A`, `AM`, `T`,
    /// `Q`. Events of other types are skipped without a report (logged at trace
    /// level).
    ///
    /// # Panics
    ///
    /// If `events` is empty (the source would never deliver anything) or names
    /// `status` (status events are the protocol's own and never become messages).
    #[track_caller]
    pub fn events<I, S>(mut self, events: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let events: Vec<String> = events.into_iter().map(Into::into).collect();
        assert!(
            !events.is_empty(),
            "Polygon::events needs at least one event type, such as \"A\""
        );
        assert!(
            !events.iter().any(|ev| ev == "status"),
            "Polygon::events cannot select `status`: status events are the protocol's own and never become messages"
        );
        self.events = events;
        self
    }

    fn on_status(&self, event: &Value, replies: &mut Replies) -> Result<(), ProtocolError> {
        let status = event.get("status").and_then(Value::as_str).unwrap_or("");
        let message = event.get("message").and_then(Value::as_str).unwrap_or("");
        match status {
            "connected" => replies.json(&json!({"action": "auth", "params": self.api_key})),
            "auth_success" => {
                tracing::debug!("polygon: authenticated");
                for params in &self.subscriptions {
                    replies.json(&json!({"action": "subscribe", "params": params}));
                }
            }
            "auth_failed" => {
                return Err(ProtocolError::fatal(format!(
                    "polygon authentication failed ({message}): check the API key"
                )));
            }
            "max_connections" => {
                return Err(ProtocolError::fatal(format!(
                    "polygon refused the connection: maximum number of connections for this API key exceeded ({message}); close the other connections or upgrade the plan"
                )));
            }
            "error" => return Err(ProtocolError::fatal(format!("polygon error: {message}"))),
            "success" => tracing::debug!(%message, "polygon"),
            other => tracing::info!(status = other, %message, "polygon: unhandled status"),
        }
        Ok(())
    }
}

impl std::fmt::Debug for Polygon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The API key is a secret: keep it out of logs.
        f.debug_struct("Polygon")
            .field("api_key", &"<redacted>")
            .field("subscriptions", &self.subscriptions)
            .field("events", &self.events)
            .finish()
    }
}

impl Protocol for Polygon {
    fn on_message(&mut self, frame: Frame, replies: &mut Replies) -> Result<Vec<Message>, ProtocolError> {
        let events = match frame.json::<Value>() {
            Ok(Value::Array(events)) => events,
            Ok(event @ Value::Object(_)) => {
                return Ok(match self.on_event(event, replies)? {
                    Event::Selected(message) => vec![message],
                    Event::Skipped => Vec::new(),
                    Event::Bad { problem, .. } => vec![Message::Invalid {
                        raw: frame.into_bytes(),
                        reason: problem,
                    }],
                });
            }
            Ok(other) => {
                return Ok(vec![Message::Invalid {
                    reason: format!(
                        "the frame is {}, not an array of events or an event object",
                        json_kind(&other)
                    ),
                    raw: frame.into_bytes(),
                }]);
            }
            Err(error) => {
                return Ok(vec![Message::Invalid {
                    reason: format!("malformed JSON: {error}"),
                    raw: frame.into_bytes(),
                }]);
            }
        };
        let mut messages = Vec::with_capacity(events.len());
        for (index, event) in events.into_iter().enumerate() {
            match self.on_event(event, replies)? {
                Event::Selected(message) => messages.push(message),
                Event::Skipped => {}
                Event::Bad { event, problem } => {
                    let item = index + 1;
                    let reason = match event.is_object() {
                        true => format!("item {item} of the frame: {problem}"),
                        false => format!("item {item} of the frame is {problem}"),
                    };
                    messages.push(Message::Invalid {
                        raw: Bytes::from(event.to_string()),
                        reason,
                    });
                }
            }
        }
        Ok(messages)
    }
}

/// What became of one event of a frame.
enum Event {
    /// An event of a selected type, for the table.
    Selected(Message),
    /// A status event (handled) or an event type not selected.
    Skipped,
    /// Not a Polygon event: reported through the reader's error policy.
    Bad { event: Value, problem: String },
}

impl Polygon {
    fn on_event(&self, event: Value, replies: &mut Replies) -> Result<Event, ProtocolError> {
        let problem = match event.get("ev") {
            Some(Value::String(ev)) if ev == "status" => {
                self.on_status(&event, replies)?;
                return Ok(Event::Skipped);
            }
            Some(Value::String(ev)) if self.events.iter().any(|wanted| wanted == ev) => {
                return Ok(Event::Selected(Message::Json(event)));
            }
            Some(Value::String(ev)) => {
                // Configuration, not bad input: the application chose the event types.
                tracing::trace!(ev = ev.as_str(), "polygon: event type not selected; skipped");
                return Ok(Event::Skipped);
            }
            Some(ev) => format!("the event's `ev` field is {}, not a string", json_kind(ev)),
            None if event.is_object() => "the event has no `ev` field".to_owned(),
            None => format!("{}, not an event object", json_kind(&event)),
        };
        Ok(Event::Bad { event, problem })
    }
}

/// What a JSON value is, with its article, for error messages.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
