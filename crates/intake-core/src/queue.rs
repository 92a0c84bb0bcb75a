//! The bounded queue between a table's sources and its commit driver.
//!
//! A general-purpose channel wakes its receiver for every message. Here the receiver is
//! the commit driver, which only needs events when a commit is due, so the queue wakes
//! it only when that can change: the first event of a commit (to start the autocommit
//! timer), the event that fills a batch, an explicit commit, and the last producer
//! leaving. Producers append under a mutex the driver takes once per commit, so a busy
//! source pays no cross-thread wake-up per message.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::source::Event;

pub(crate) struct Queue {
    state: Mutex<State>,
    /// Wakes the driver when a commit may have become due.
    driver: Notify,
    /// Wakes producers waiting for room.
    room: Notify,
    autocommit: Duration,
    max_batch: usize,
    capacity: usize,
}

struct State {
    events: Vec<Event>,
    /// When the oldest uncommitted event arrived.
    first_at: Option<Instant>,
    /// Explicit commit markers among `events`.
    markers: usize,
    producers: usize,
    /// An emptied buffer kept for reuse, so that steady traffic does not reallocate.
    spare: Vec<Event>,
}

impl Queue {
    /// A queue for commits of at most `max_batch` events that holds at most
    /// `max_batch + headroom` events, with one producer.
    pub(crate) fn new(autocommit: Duration, max_batch: usize, headroom: usize) -> (Arc<Queue>, Producer) {
        let queue = Arc::new(Queue {
            state: Mutex::new(State {
                events: Vec::new(),
                first_at: None,
                markers: 0,
                producers: 1,
                spare: Vec::new(),
            }),
            driver: Notify::new(),
            room: Notify::new(),
            autocommit,
            max_batch,
            capacity: max_batch.saturating_add(headroom),
        });
        let producer = Producer {
            queue: queue.clone(),
            finished: AtomicBool::new(false),
        };
        (queue, producer)
    }

    /// Another producer of this queue, so that several sources (the partitions of a
    /// partitioned source) feed one table: the queue ends once every producer has
    /// finished. A queue that has already ended stays ended: the producer returned then
    /// is finished from the start, and refuses every event.
    pub(crate) fn add_producer(self: &Arc<Self>) -> Producer {
        let mut state = self.lock();
        let ended = state.producers == 0;
        if !ended {
            state.producers += 1;
        }
        drop(state);
        Producer {
            queue: self.clone(),
            finished: AtomicBool::new(ended),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::lifecycle::lock(&self.state)
    }

    /// Waits until a commit is due and returns its events: at most `max_batch`, and
    /// never past an explicit commit marker. Returns `None` once every producer is gone
    /// and every event has been returned.
    pub(crate) async fn next_commit(&self) -> Option<Commit> {
        loop {
            let notified = self.driver.notified();
            let deadline = {
                let mut state = self.lock();
                let finished = state.producers == 0;
                if state.events.is_empty() {
                    if finished {
                        return None;
                    }
                    None
                } else {
                    // An autocommit too long to represent never falls due by time.
                    let deadline = state
                        .first_at
                        .and_then(|first| first.checked_add(self.autocommit));
                    let due = finished
                        || state.markers > 0
                        || state.events.len() >= self.max_batch
                        || deadline.is_some_and(|d| d <= Instant::now());
                    if due {
                        return Some(self.take(&mut state));
                    }
                    deadline
                }
            };
            match deadline {
                Some(deadline) => {
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(deadline) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    fn take(&self, state: &mut State) -> Commit {
        let first_at = state.first_at;
        let waiting = state.events.len();
        let mut end = state.events.len().min(self.max_batch);
        let marker = match state.markers {
            0 => None,
            _ => state.events[..end]
                .iter()
                .position(|e| matches!(e, Event::Commit)),
        };
        if let Some(marker) = marker {
            end = marker + 1;
            state.markers -= 1;
        }
        let taken = if end == state.events.len() {
            let spare = std::mem::take(&mut state.spare);
            std::mem::replace(&mut state.events, spare)
        } else {
            state.events.drain(..end).collect()
        };
        // Events left behind arrived after the commit became due, moments ago.
        state.first_at = (!state.events.is_empty()).then(Instant::now);
        self.room.notify_waiters();
        Commit {
            events: taken,
            first_at,
            waiting,
        }
    }

    /// Returns a processed buffer for reuse.
    pub(crate) fn recycle(&self, mut buffer: Vec<Event>) {
        buffer.clear();
        let mut state = self.lock();
        if state.spare.capacity() < buffer.capacity() {
            state.spare = buffer;
        }
    }
}

/// The events of one commit, taken from the queue.
pub(crate) struct Commit {
    pub(crate) events: Vec<Event>,
    /// When the first of them arrived.
    pub(crate) first_at: Option<Instant>,
    /// How many events were waiting when the commit was taken, these included.
    pub(crate) waiting: usize,
}

/// Why an event was not appended.
pub(crate) enum PushError {
    /// The queue is full; the event is handed back.
    Full(Event),
    /// The wait for room was given up.
    Stopped,
    /// This producer has [finished](Producer::finish).
    Finished,
}

/// The handle one source appends events to a [`Queue`] through. The queue ends once
/// every producer has finished (or been dropped) and its events are taken.
pub(crate) struct Producer {
    queue: Arc<Queue>,
    /// Read and written only under the queue's lock, so that an event is either
    /// appended before the producer finishes or refused.
    finished: AtomicBool,
}

impl Producer {
    /// Appends `event`, waiting for room: the slow path, after
    /// [`try_push`](Self::try_push) found the queue full. Gives up when `stop`
    /// completes.
    ///
    /// Cancel safe: if the future is dropped before it completes, nothing was appended.
    pub(crate) async fn push_when_room(
        &self,
        mut event: Event,
        stop: impl Future<Output = ()>,
    ) -> Result<(), PushError> {
        tokio::pin!(stop);
        loop {
            // Registered before checking, so room made in between is not missed.
            let room = self.queue.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            event = match self.try_push(event) {
                Err(PushError::Full(event)) => event,
                other => return other,
            };
            tokio::select! {
                () = room => {}
                () = &mut stop => return Err(PushError::Stopped),
            }
        }
    }

    /// Appends `event` if there is room.
    pub(crate) fn try_push(&self, event: Event) -> Result<(), PushError> {
        let queue = &*self.queue;
        let mut state = queue.lock();
        if self.finished.load(Ordering::Relaxed) {
            return Err(PushError::Finished);
        }
        if state.events.len() >= queue.capacity {
            return Err(PushError::Full(event));
        }
        let was_empty = state.events.is_empty();
        if was_empty {
            state.first_at = Some(Instant::now());
        }
        let is_marker = matches!(event, Event::Commit);
        state.markers += usize::from(is_marker);
        state.events.push(event);
        let wake = was_empty || is_marker || state.events.len() == queue.max_batch;
        drop(state);
        if wake {
            queue.driver.notify_one();
        }
        Ok(())
    }

    /// Whether [`finish`](Self::finish) was called.
    pub(crate) fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Relaxed)
    }

    /// Appends nothing more: the source has ended. Its events already queued are
    /// still committed.
    pub(crate) fn finish(&self) {
        let last = {
            let mut state = self.queue.lock();
            if self.finished.swap(true, Ordering::Relaxed) {
                return;
            }
            state.producers -= 1;
            state.producers == 0
        };
        if last {
            self.queue.driver.notify_one();
        }
        // A push waiting for room must learn that it never will be appended.
        self.queue.room.notify_waiters();
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> (Arc<Queue>, Producer) {
        Queue::new(Duration::from_secs(3600), 100, 100)
    }

    #[tokio::test]
    async fn the_queue_ends_when_its_last_added_producer_finishes() {
        let (queue, first) = queue();
        let second = queue.add_producer();
        let third = queue.add_producer();
        first.finish();
        assert!(second.try_push(Event::Commit).is_ok());
        drop(second);
        assert_eq!(
            queue.next_commit().await.map(|commit| commit.events.len()),
            Some(1)
        );
        let pending = tokio::time::timeout(Duration::from_millis(20), queue.next_commit()).await;
        assert!(pending.is_err(), "a producer is left, so the queue has not ended");
        third.finish();
        assert!(queue.next_commit().await.is_none());
    }

    #[tokio::test]
    async fn a_producer_added_to_an_ended_queue_refuses_events() {
        let (queue, first) = queue();
        first.finish();
        let late = queue.add_producer();
        assert!(late.is_finished());
        assert!(matches!(late.try_push(Event::Commit), Err(PushError::Finished)));
        drop(late);
        assert!(queue.next_commit().await.is_none());
    }
}
