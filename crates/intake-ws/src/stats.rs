//! The source's counters.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of a [`WebSocketSource`](crate::WebSocketSource); see
/// [`WebSocketSource::stats`](crate::WebSocketSource::stats).
#[derive(Debug, Default)]
pub struct WsStats {
    pub(crate) connects: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) frames: AtomicU64,
    pub(crate) messages: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) pings_answered: AtomicU64,
}

impl WsStats {
    /// Successful connections (handshakes completed), the first included.
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// Reconnects scheduled: each lost connection or failed connection attempt that
    /// was followed by another attempt.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Data frames (text or binary) received, over all connections.
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// Messages the protocol emitted to the table.
    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    /// Data frames the protocol turned into no message at all: control frames of the
    /// exchange, such as subscription acknowledgements and heartbeats skipped by a
    /// [`Generic`](crate::Generic) filter or Polygon's status events. Bad input is not
    /// counted here: it becomes a report for the reader's error policy.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Pings received from the server, each answered with a pong. (Named `pongs`
    /// before; it always counted the server's pings.)
    pub fn pings_answered(&self) -> u64 {
        self.pings_answered.load(Ordering::Relaxed)
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
