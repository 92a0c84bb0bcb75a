//! The Polygon.io stocks WebSocket protocol.

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
/// logged. A frame that is not JSON is passed to the reader as it is, so the reader's
/// [`ErrorPolicy`](intake_core::ErrorPolicy) decides: fail, or skip and report.
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
            Ok(event @ Value::Object(_)) => vec![event],
            // Not Polygon's JSON: the reader decides (fail, or skip and report).
            Ok(_) | Err(_) => return Ok(vec![Message::Bytes(frame.into_bytes())]),
        };
        let mut messages = Vec::with_capacity(events.len());
        for event in events {
            let Some(ev) = event.get("ev").and_then(Value::as_str) else {
                tracing::debug!(%event, "polygon: event without `ev`; skipped");
                continue;
            };
            if ev == "status" {
                self.on_status(&event, replies)?;
            } else if self.events.iter().any(|wanted| wanted == ev) {
                messages.push(Message::Json(event));
            } else {
                tracing::trace!(ev, "polygon: event type not selected; skipped");
            }
        }
        Ok(messages)
    }
}
