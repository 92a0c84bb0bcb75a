//! The reconnect policy and the source's counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// When and how often a [`WebSocketSource`](crate::WebSocketSource) reconnects.
///
/// After a connection is lost (closed, failed, or silent past the
/// [silence timeout](crate::WebSocketSource::silence_timeout)) or an attempt to
/// connect fails, the source waits an exponentially growing delay (doubling from
/// [`min_delay`](Self::min_delay) up to [`max_delay`](Self::max_delay), with random
/// jitter so that many clients do not reconnect in lockstep) and tries again. A
/// connection that was healthy (it delivered data to the table, or stayed up for
/// [`healthy_after`](Self::healthy_after)) resets the delay and the attempt count.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use intake_ws::Reconnect;
///
/// let policy = Reconnect::default()
///     .min_delay(Duration::from_millis(250))
///     .max_delay(Duration::from_secs(10))
///     .max_retries(20);
/// # let _ = policy;
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[must_use]
pub struct Reconnect {
    min_delay: Duration,
    max_delay: Duration,
    factor: f32,
    jitter: bool,
    max_retries: Option<usize>,
    healthy_after: Duration,
}

impl Default for Reconnect {
    /// 500 ms doubling up to 30 s, with jitter, retrying forever; healthy after 30 s.
    fn default() -> Self {
        Reconnect {
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            factor: 2.0,
            jitter: true,
            max_retries: None,
            healthy_after: Duration::from_secs(30),
        }
    }
}

impl Reconnect {
    /// Never reconnects: the first lost connection or failed attempt stops the source
    /// with [`WsError::GaveUp`](crate::WsError::GaveUp).
    pub fn never() -> Self {
        Self::default().max_retries(0)
    }

    /// The first delay. Default: 500 ms.
    pub fn min_delay(mut self, delay: Duration) -> Self {
        self.min_delay = delay;
        self
    }

    /// The longest delay. Default: 30 s.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// How much each delay grows over the previous one. Default: 2.
    ///
    /// # Panics
    ///
    /// If `factor` is below 1.
    #[track_caller]
    pub fn factor(mut self, factor: f32) -> Self {
        assert!(factor >= 1.0, "the backoff factor must be at least 1");
        self.factor = factor;
        self
    }

    /// Whether delays get random jitter (up to one more delay). Default: yes.
    pub fn jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// How many reconnects in a row may fail (without a healthy connection in
    /// between) before the source gives up with
    /// [`WsError::GaveUp`](crate::WsError::GaveUp). Default: unlimited.
    pub fn max_retries(mut self, retries: usize) -> Self {
        self.max_retries = Some(retries);
        self
    }

    /// Retries forever (the default).
    pub fn retry_forever(mut self) -> Self {
        self.max_retries = None;
        self
    }

    /// How long a connection must stay up to count as healthy and reset the backoff,
    /// if it delivered no data before. Default: 30 s.
    pub fn healthy_after(mut self, duration: Duration) -> Self {
        self.healthy_after = duration;
        self
    }

    pub(crate) fn healthy_duration(&self) -> Duration {
        self.healthy_after
    }

    pub(crate) fn backoff(&self) -> ExponentialBackoff {
        let mut builder = ExponentialBuilder::new()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(self.factor);
        builder = match self.max_retries {
            Some(retries) => builder.with_max_times(retries),
            None => builder.without_max_times(),
        };
        if self.jitter {
            builder = builder.with_jitter();
        }
        builder.build()
    }
}

/// Live counters of a [`WebSocketSource`](crate::WebSocketSource); see
/// [`WebSocketSource::stats`](crate::WebSocketSource::stats).
#[derive(Debug, Default)]
pub struct WsStats {
    pub(crate) connects: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) frames: AtomicU64,
    pub(crate) messages: AtomicU64,
    pub(crate) pongs: AtomicU64,
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

    /// Pings from the server answered with a pong.
    pub fn pongs(&self) -> u64 {
        self.pongs.load(Ordering::Relaxed)
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
