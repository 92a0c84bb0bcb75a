//! The source's counters, and their export through the `metrics` facade.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use intake_core::{ConnectionMetrics, SourceContext};
use metrics::Counter;
use serde::ser::{Serialize, SerializeStruct, Serializer};

/// Live counters of a [`WebSocketSource`](crate::WebSocketSource); see
/// [`WebSocketSource::stats`](crate::WebSocketSource::stats).
///
/// Like every stats handle of intake (`TableStats`, `SourceStats`), it is cheap to
/// clone, each getter reads the figure as it is now, and it serializes (with serde)
/// to an object of the figures. While the source runs, the same figures go to the
/// [`metrics`](https://docs.rs/metrics) facade, labelled with the table and source
/// names: `intake_source_connected`, `intake_source_reconnects_total` (with a `cause`
/// label: `connect_failed`, `closed`, `silent` or `lost`), `intake_ws_frames_total`,
/// `intake_ws_skipped_total` and `intake_ws_pings_answered_total`. Messages, bytes and
/// rejections are counted for every source by the table: see `TableStats::sources`.
#[derive(Clone, Default)]
pub struct WsStats(Arc<Counters>);

#[derive(Default)]
struct Counters {
    connects: AtomicU64,
    reconnects: AtomicU64,
    frames: AtomicU64,
    messages: AtomicU64,
    skipped: AtomicU64,
    pings_answered: AtomicU64,
    connected: AtomicBool,
    /// Set when the source starts running, once its table and name are known.
    exported: OnceLock<Exported>,
}

struct Exported {
    connection: ConnectionMetrics,
    frames: Counter,
    skipped: Counter,
    pings_answered: Counter,
}

/// Why a WebSocket source reconnected.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ReconnectCause {
    /// Connecting (TCP, TLS or the handshake) failed.
    ConnectFailed,
    /// The server closed the connection normally (1000).
    Closed,
    /// Nothing arrived within the silence timeout.
    Silent,
    /// Reading or writing failed, or the server closed abnormally.
    Lost,
}

impl ReconnectCause {
    fn label(self) -> &'static str {
        match self {
            ReconnectCause::ConnectFailed => "connect_failed",
            ReconnectCause::Closed => "closed",
            ReconnectCause::Silent => "silent",
            ReconnectCause::Lost => "lost",
        }
    }
}

impl WsStats {
    /// Successful connections (handshakes completed), the first included.
    pub fn connects(&self) -> u64 {
        self.0.connects.load(Ordering::Relaxed)
    }

    /// Reconnects scheduled: each lost connection or failed connection attempt that
    /// was followed by another attempt.
    pub fn reconnects(&self) -> u64 {
        self.0.reconnects.load(Ordering::Relaxed)
    }

    /// Whether the source is connected now (the handshake completed and the
    /// connection has not been lost).
    pub fn connected(&self) -> bool {
        self.0.connected.load(Ordering::Relaxed)
    }

    /// Data frames (text or binary) received, over all connections.
    pub fn frames(&self) -> u64 {
        self.0.frames.load(Ordering::Relaxed)
    }

    /// Messages the protocol emitted to the table.
    pub fn messages(&self) -> u64 {
        self.0.messages.load(Ordering::Relaxed)
    }

    /// Data frames the protocol turned into no message at all: control frames of the
    /// exchange, such as subscription acknowledgements and heartbeats skipped by a
    /// [`Generic`](crate::Generic) filter or Polygon's status events. Bad input is not
    /// counted here: it becomes a report for the reader's error policy.
    pub fn skipped(&self) -> u64 {
        self.0.skipped.load(Ordering::Relaxed)
    }

    /// Pings received from the server, each answered with a pong. (Named `pongs`
    /// before; it always counted the server's pings.)
    pub fn pings_answered(&self) -> u64 {
        self.0.pings_answered.load(Ordering::Relaxed)
    }

    /// Registers the source's figures with the `metrics` facade, under its table and
    /// name; the first run of the source decides.
    pub(crate) fn export_as(&self, ctx: &SourceContext) {
        self.0.exported.get_or_init(|| {
            let labels = [
                ("table", ctx.table_name().to_owned()),
                ("source", ctx.name().to_owned()),
            ];
            Exported {
                connection: ConnectionMetrics::new(ctx),
                frames: metrics::counter!("intake_ws_frames_total", &labels),
                skipped: metrics::counter!("intake_ws_skipped_total", &labels),
                pings_answered: metrics::counter!("intake_ws_pings_answered_total", &labels),
            }
        });
    }

    pub(crate) fn frame(&self) {
        self.0.frames.fetch_add(1, Ordering::Relaxed);
        if let Some(exported) = self.0.exported.get() {
            exported.frames.increment(1);
        }
    }

    pub(crate) fn skipped_frame(&self) {
        self.0.skipped.fetch_add(1, Ordering::Relaxed);
        if let Some(exported) = self.0.exported.get() {
            exported.skipped.increment(1);
        }
    }

    pub(crate) fn emitted(&self, messages: usize) {
        self.0.messages.fetch_add(messages as u64, Ordering::Relaxed);
    }

    pub(crate) fn ping_answered(&self) {
        self.0.pings_answered.fetch_add(1, Ordering::Relaxed);
        if let Some(exported) = self.0.exported.get() {
            exported.pings_answered.increment(1);
        }
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        if connected {
            self.0.connects.fetch_add(1, Ordering::Relaxed);
        }
        self.0.connected.store(connected, Ordering::Relaxed);
        if let Some(exported) = self.0.exported.get() {
            exported.connection.set_connected(connected);
        }
    }

    pub(crate) fn reconnect(&self, cause: ReconnectCause) {
        self.0.reconnects.fetch_add(1, Ordering::Relaxed);
        if let Some(exported) = self.0.exported.get() {
            exported.connection.reconnect(cause.label());
        }
    }
}

impl std::fmt::Debug for WsStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsStats")
            .field("connected", &self.connected())
            .field("connects", &self.connects())
            .field("reconnects", &self.reconnects())
            .field("frames", &self.frames())
            .field("messages", &self.messages())
            .field("skipped", &self.skipped())
            .field("pings_answered", &self.pings_answered())
            .finish()
    }
}

impl Serialize for WsStats {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("WsStats", 7)?;
        s.serialize_field("connected", &self.connected())?;
        s.serialize_field("connects", &self.connects())?;
        s.serialize_field("reconnects", &self.reconnects())?;
        s.serialize_field("frames", &self.frames())?;
        s.serialize_field("messages", &self.messages())?;
        s.serialize_field("skipped", &self.skipped())?;
        s.serialize_field("pings_answered", &self.pings_answered())?;
        s.end()
    }
}
