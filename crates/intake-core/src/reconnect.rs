//! The reconnect policy shared by network sources.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// When and how often a network source reconnects or retries.
///
/// One policy shared by intake's network sources (WebSocket, HTTP, NATS), and
/// available to custom sources through [`delays`](Self::delays). After a connection is
/// lost (closed, failed, or silent past the source's silence deadline) or an attempt to
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
/// use intake_core::Reconnect;
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
    /// (the WebSocket source with `WsError::GaveUp`).
    pub fn never() -> Self {
        Self::default().max_retries(0)
    }

    /// The first delay. Default: 500 ms. A `min_delay` above
    /// [`max_delay`](Self::max_delay) is capped by it, whichever is set first.
    ///
    /// # Panics
    ///
    /// If `delay` is zero: the delays would never grow, and a server that is down
    /// would be retried in a busy loop.
    #[track_caller]
    pub fn min_delay(mut self, delay: Duration) -> Self {
        assert!(
            !delay.is_zero(),
            "min_delay must be longer than zero, or reconnects would run in a busy loop"
        );
        self.min_delay = delay;
        self
    }

    /// The longest delay, before jitter. Default: 30 s. `Duration::MAX` means no
    /// limit: delays keep growing (saturating at `Duration::MAX`, which in effect
    /// waits until shutdown).
    ///
    /// # Panics
    ///
    /// If `delay` is zero, for the reason given at [`min_delay`](Self::min_delay).
    #[track_caller]
    pub fn max_delay(mut self, delay: Duration) -> Self {
        assert!(
            !delay.is_zero(),
            "max_delay must be longer than zero, or reconnects would run in a busy loop"
        );
        self.max_delay = delay;
        self
    }

    /// How much each delay grows over the previous one. Default: 2. Growth
    /// saturates: `f32::INFINITY` jumps straight from `min_delay` to `max_delay`.
    ///
    /// # Panics
    ///
    /// If `factor` is below 1 or NaN.
    #[track_caller]
    pub fn factor(mut self, factor: f32) -> Self {
        assert!(
            factor >= 1.0,
            "the backoff factor must be at least 1, found {factor}"
        );
        self.factor = factor;
        self
    }

    /// Whether delays get random jitter (up to one more delay). Default: yes.
    pub fn jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// How many reconnects in a row may fail (without a healthy connection in
    /// between) before the source gives up. Default: unlimited.
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
    /// if it delivered no data before. Default: 30 s. `Duration::ZERO` counts every
    /// connection that opens as healthy (so `max_retries` bounds only failed
    /// connection attempts in a row); `Duration::MAX` counts only connections that
    /// delivered data.
    pub fn healthy_after(mut self, duration: Duration) -> Self {
        self.healthy_after = duration;
        self
    }

    /// How long a connection must stay up to count as healthy; see
    /// [`healthy_after`](Self::healthy_after).
    pub fn healthy_duration(&self) -> Duration {
        self.healthy_after
    }

    /// The delays before each retry, in order: a fresh iterator starts over at
    /// [`min_delay`](Self::min_delay), so a source makes a new one after a healthy
    /// connection. It ends when [`max_retries`](Self::max_retries) are used up.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use intake_core::Reconnect;
    ///
    /// let policy = Reconnect::default().jitter(false).max_retries(3);
    /// let delays: Vec<Duration> = policy.delays().collect();
    /// assert_eq!(delays, [500, 1000, 2000].map(Duration::from_millis));
    /// ```
    pub fn delays(&self) -> Delays {
        Delays(self.backoff())
    }

    fn backoff(&self) -> ExponentialBackoff {
        let mut builder = ExponentialBuilder::new()
            // backon returns `min_delay` as the first delay even above `max_delay`.
            .with_min_delay(self.min_delay.min(self.max_delay))
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

/// The delays of a [`Reconnect`] policy, from [`Reconnect::delays`].
#[derive(Debug)]
pub struct Delays(ExponentialBackoff);

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.0.next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_delay_above_max_delay_is_capped_whichever_is_set_first() {
        let secs = Duration::from_secs;
        let delays: Vec<_> = Reconnect::default()
            .jitter(false)
            .max_retries(3)
            .min_delay(secs(60))
            .max_delay(secs(5))
            .delays()
            .collect();
        assert_eq!(delays, [secs(5); 3]);
        let delays: Vec<_> = Reconnect::default()
            .jitter(false)
            .max_retries(2)
            .max_delay(secs(5))
            .min_delay(secs(60))
            .delays()
            .collect();
        assert_eq!(delays, [secs(5); 2]);
    }

    #[test]
    fn extreme_delays_and_factors_saturate_instead_of_panicking() {
        let delays: Vec<_> = Reconnect::default()
            .max_retries(4)
            .min_delay(Duration::MAX)
            .max_delay(Duration::MAX)
            .factor(f32::INFINITY)
            .delays()
            .collect();
        assert_eq!(delays, [Duration::MAX; 4]);
        let delays: Vec<_> = Reconnect::default()
            .jitter(false)
            .max_retries(3)
            .min_delay(Duration::from_millis(1))
            .max_delay(Duration::from_secs(1))
            .factor(f32::INFINITY)
            .delays()
            .collect();
        assert_eq!(
            delays,
            [
                Duration::from_millis(1),
                Duration::from_secs(1),
                Duration::from_secs(1)
            ]
        );
        let mut unbounded = Reconnect::default().max_retries(usize::MAX).delays();
        assert!(unbounded.nth(10_000).is_some());
    }

    #[test]
    #[should_panic(expected = "min_delay must be longer than zero")]
    fn a_zero_min_delay_is_refused() {
        let _ = Reconnect::default().min_delay(Duration::ZERO);
    }

    #[test]
    #[should_panic(expected = "max_delay must be longer than zero")]
    fn a_zero_max_delay_is_refused() {
        let _ = Reconnect::default().max_delay(Duration::ZERO);
    }

    #[test]
    #[should_panic(expected = "the backoff factor must be at least 1")]
    fn a_nan_factor_is_refused() {
        let _ = Reconnect::default().factor(f32::NAN);
    }
}
