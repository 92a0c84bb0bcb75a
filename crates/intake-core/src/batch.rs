//! `batch_async`: group a stream's items into batches bounded by time, count and weight.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::time::{Instant, Sleep};

type Weigher<T> = Box<dyn FnMut(&T) -> usize + Send>;
type Boundary<T> = Box<dyn FnMut(&T) -> bool + Send>;

/// Groups the items of `stream` into batches.
///
/// A batch is emitted as soon as one of these holds:
/// - it holds `max_count` items;
/// - `timeout` has passed since its **first** item arrived (not since the last batch:
///   an idle stream costs no wake-ups and the first item of a burst waits at most
///   `timeout`);
/// - its weight reached the limit set by [`BatchAsync::max_weight`];
/// - its last item matched [`BatchAsync::flush_after`];
/// - the stream ended (the remainder is emitted, then the stream ends).
///
/// Batches are never empty, items keep their order, and nothing is dropped. The timer
/// is tokio's, so tests under `tokio::time::pause()` are deterministic.
///
/// Unlike Bytewax's `batch_async`, which blocks its worker for the whole timeout, this
/// is an ordinary stream: waiting for items costs nothing, and the source behind it
/// keeps running between batches.
///
/// # Panics
///
/// If `max_count` is zero.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use futures::{stream, StreamExt};
/// use intake_core::batch_async;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let batches: Vec<Vec<i32>> = batch_async(stream::iter(1..=5), Duration::from_millis(500), 2)
///     .collect()
///     .await;
/// assert_eq!(batches, vec![vec![1, 2], vec![3, 4], vec![5]]);
/// # }
/// ```
#[track_caller]
pub fn batch_async<S: Stream>(stream: S, timeout: Duration, max_count: usize) -> BatchAsync<S> {
    assert!(max_count > 0, "batch_async: max_count must be at least 1");
    BatchAsync {
        stream,
        timeout,
        max_count,
        max_weight: None,
        boundary: None,
        batch: Vec::new(),
        weight: 0,
        full: false,
        ended: false,
        deadline: Box::pin(tokio::time::sleep_until(Instant::now())),
    }
}

pin_project_lite::pin_project! {
    /// The stream returned by [`batch_async`].
    #[must_use = "streams do nothing unless polled"]
    pub struct BatchAsync<S: Stream> {
        #[pin]
        stream: S,
        timeout: Duration,
        max_count: usize,
        max_weight: Option<(usize, Weigher<S::Item>)>,
        boundary: Option<Boundary<S::Item>>,
        batch: Vec<S::Item>,
        weight: usize,
        // The batch is complete and goes out at the next poll.
        full: bool,
        ended: bool,
        // Armed when a batch receives its first item.
        deadline: Pin<Box<Sleep>>,
    }
}

impl<S: Stream> BatchAsync<S> {
    /// Also bounds each batch by weight (for example, bytes): a batch is emitted when
    /// its weight reaches `max_weight`, and an item that would take it past the limit
    /// starts the next batch instead. An item heavier than the limit on its own forms a
    /// batch by itself. So every batch weighs at most `max_weight`, or is one item.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use futures::{stream, StreamExt};
    /// use intake_core::batch_async;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let messages = stream::iter(["aaaa", "bb", "cc", "dddddddd", "e"]);
    /// let batches: Vec<Vec<&str>> = batch_async(messages, Duration::from_secs(1), 100)
    ///     .max_weight(6, |m: &&str| m.len())
    ///     .collect()
    ///     .await;
    /// assert_eq!(batches, vec![vec!["aaaa", "bb"], vec!["cc"], vec!["dddddddd"], vec!["e"]]);
    /// # }
    /// ```
    pub fn max_weight(
        mut self,
        max_weight: usize,
        weigh: impl FnMut(&S::Item) -> usize + Send + 'static,
    ) -> Self {
        self.max_weight = Some((max_weight, Box::new(weigh)));
        self
    }

    /// Ends the current batch right after any item for which `is_boundary` returns
    /// true, such as an explicit "commit" marker.
    pub fn flush_after(mut self, is_boundary: impl FnMut(&S::Item) -> bool + Send + 'static) -> Self {
        self.boundary = Some(Box::new(is_boundary));
        self
    }

    /// Takes the items of the batch being gathered, for example to process them on
    /// shutdown, instead of waiting for the batch to complete. The next item starts a
    /// new batch with a fresh timer.
    pub fn drain(self: Pin<&mut Self>) -> Vec<S::Item> {
        let this = self.project();
        *this.weight = 0;
        *this.full = false;
        std::mem::take(this.batch)
    }

    /// The number of items held in the batch being gathered.
    pub fn pending(&self) -> usize {
        self.batch.len()
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The underlying stream, mutably (for example to close a channel's receiver so
    /// that the batches end once what it holds is out).
    pub fn get_mut(&mut self) -> &mut S
    where
        S: Unpin,
    {
        &mut self.stream
    }
}

impl<S: Stream> Stream for BatchAsync<S> {
    type Item = Vec<S::Item>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            if *this.full {
                *this.full = false;
                *this.weight = 0;
                return Poll::Ready(Some(std::mem::take(this.batch)));
            }
            if *this.ended {
                return Poll::Ready(None);
            }
            match this.stream.as_mut().poll_next(cx) {
                Poll::Ready(Some(item)) => {
                    let weight = match this.max_weight {
                        Some((_, weigh)) => weigh(&item),
                        None => 0,
                    };
                    let limit = this.max_weight.as_ref().map_or(usize::MAX, |(max, _)| *max);
                    let mut emit = None;
                    if !this.batch.is_empty() && this.weight.saturating_add(weight) > limit {
                        // The item does not fit: ship the batch, the item opens the next.
                        emit = Some(std::mem::take(this.batch));
                        *this.weight = 0;
                    }
                    if this.batch.is_empty() {
                        // A timeout too long to represent never fires: about 30 years.
                        let deadline = Instant::now()
                            .checked_add(*this.timeout)
                            .unwrap_or_else(|| Instant::now() + Duration::from_secs(30 * 365 * 86_400));
                        this.deadline.as_mut().reset(deadline);
                    }
                    let boundary = this
                        .boundary
                        .as_mut()
                        .is_some_and(|is_boundary| is_boundary(&item));
                    this.batch.push(item);
                    *this.weight = this.weight.saturating_add(weight);
                    *this.full = boundary || this.batch.len() >= *this.max_count || *this.weight >= limit;
                    if let Some(batch) = emit {
                        return Poll::Ready(Some(batch));
                    }
                }
                Poll::Ready(None) => {
                    *this.ended = true;
                    *this.full = !this.batch.is_empty();
                }
                Poll::Pending => {
                    if !this.batch.is_empty() && this.deadline.as_mut().poll(cx).is_ready() {
                        *this.full = true;
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let (_, upper) = self.stream.size_hint();
        let held = usize::from(!self.batch.is_empty());
        (held, upper.map(|upper| upper.saturating_add(held)))
    }
}

impl<S: Stream + fmt::Debug> fmt::Debug for BatchAsync<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchAsync")
            .field("stream", &self.stream)
            .field("timeout", &self.timeout)
            .field("max_count", &self.max_count)
            .field("max_weight", &self.max_weight.as_ref().map(|(max, _)| max))
            .field("pending", &self.batch.len())
            .finish_non_exhaustive()
    }
}
