//! Callback subscriptions, in the shape of Pathway's `pw.io.subscribe`.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::{FutureExt, StreamExt};

use crate::change::{ChangeBatch, Time};
use crate::lifecycle::{Lifecycle, panic_message};
use crate::row::{Key, Row};
use crate::table::ChangeStream;

type OnChange = Box<dyn FnMut(&Key, &Row, Time, bool) + Send>;
type OnBatch = Box<dyn FnMut(&ChangeBatch) + Send>;
type OnTimeEnd = Box<dyn FnMut(Time) + Send>;
type OnEnd = Box<dyn FnOnce() + Send>;

/// Callbacks for a table's changes; pass to [`Table::subscribe`](crate::Table::subscribe).
///
/// Per-row callbacks are convenient; for throughput prefer [`on_batch`](Self::on_batch)
/// or [`Table::changes`](crate::Table::changes), which hand over a whole commit at once.
///
/// # Examples
///
/// ```
/// use intake_core::Subscriber;
///
/// let subscriber = Subscriber::new()
///     .on_change(|key, row, time, is_addition| {
///         println!("{time}: {} {key} {row}", if is_addition { "+" } else { "-" });
///     })
///     .on_time_end(|time| println!("commit {time} done"))
///     .on_end(|| println!("no more changes"));
/// # let _ = subscriber;
/// ```
#[derive(Default)]
#[must_use = "a subscriber does nothing until passed to Table::subscribe"]
pub struct Subscriber {
    on_change: Option<OnChange>,
    on_batch: Option<OnBatch>,
    on_time_end: Option<OnTimeEnd>,
    on_end: Option<OnEnd>,
}

impl Subscriber {
    /// A subscriber with no callbacks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Called for each changed row: `(key, row, time, is_addition)`. An update is a call
    /// with `is_addition == false` for the old row, then one with `true` for the new.
    pub fn on_change(mut self, f: impl FnMut(&Key, &Row, Time, bool) + Send + 'static) -> Self {
        self.on_change = Some(Box::new(f));
        self
    }

    /// Called once per commit with all of its changes, before any `on_change` call for
    /// that commit.
    pub fn on_batch(mut self, f: impl FnMut(&ChangeBatch) + Send + 'static) -> Self {
        self.on_batch = Some(Box::new(f));
        self
    }

    /// Called once per commit, after all of its changes.
    pub fn on_time_end(mut self, f: impl FnMut(Time) + Send + 'static) -> Self {
        self.on_time_end = Some(Box::new(f));
        self
    }

    /// Called exactly once when the table will change no more for this subscriber:
    /// after its final commit, whether the pipeline finished, was shut down or failed;
    /// also after one of this subscriber's callbacks panicked, or after it was
    /// disconnected for not keeping up after the shutdown deadline.
    pub fn on_end(mut self, f: impl FnOnce() + Send + 'static) -> Self {
        self.on_end = Some(Box::new(f));
        self
    }

    fn deliver(&mut self, batch: &ChangeBatch) {
        if let Some(on_batch) = &mut self.on_batch {
            on_batch(batch);
        }
        if let Some(on_change) = &mut self.on_change {
            for change in batch.changes() {
                on_change(&change.key, &change.row, batch.time(), change.is_addition);
            }
        }
        if let Some(on_time_end) = &mut self.on_time_end {
            on_time_end(batch.time());
        }
    }

    /// Feeds every batch of `changes` to the callbacks, then calls `on_end`. A
    /// panicking callback ends the deliveries and is reported to the pipeline; `on_end`
    /// still runs, since it is where subscribers release what they hold.
    pub(crate) async fn run(mut self, mut changes: ChangeStream, table: Arc<str>, lifecycle: Arc<Lifecycle>) {
        let delivered = AssertUnwindSafe(async {
            while let Some(batch) = changes.next().await {
                self.deliver(&batch);
            }
        })
        .catch_unwind()
        .await;
        if let Err(panic) = delivered {
            lifecycle.subscriber_panicked(&table, panic_message(panic.as_ref()));
        }
        if let Some(on_end) = self.on_end.take()
            && let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(on_end))
        {
            lifecycle.subscriber_panicked(&table, panic_message(panic.as_ref()));
        }
    }
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("on_change", &self.on_change.is_some())
            .field("on_batch", &self.on_batch.is_some())
            .field("on_time_end", &self.on_time_end.is_some())
            .field("on_end", &self.on_end.is_some())
            .finish()
    }
}
