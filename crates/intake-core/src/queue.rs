//! The bounded queue between a table's sources and its commit driver.
//!
//! A general-purpose channel wakes its receiver for every message. Here the receiver is
//! the commit driver, which only needs events when a commit is due, so the queue wakes
//! it only when that can change: the first event of a commit (to start the autocommit
//! timer), the event that fills a batch, an explicit commit, and the last producer
//! leaving. Producers append under a mutex the driver takes once per commit, so a busy
//! source pays no cross-thread wake-up per message.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::source::{Event, SendError};

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
    closed: bool,
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
                closed: false,
                spare: Vec::new(),
            }),
            driver: Notify::new(),
            room: Notify::new(),
            autocommit,
            max_batch,
            capacity: max_batch.saturating_add(headroom),
        });
        let producer = Producer { queue: queue.clone() };
        (queue, producer)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until a commit is due and returns its events: at most `max_batch`, and
    /// never past an explicit commit marker. Returns `None` once every producer is gone
    /// (or the queue is closed) and every event has been returned.
    pub(crate) async fn next_commit(&self) -> Option<Vec<Event>> {
        loop {
            let notified = self.driver.notified();
            let deadline = {
                let mut state = self.lock();
                let finished = state.producers == 0 || state.closed;
                if state.events.is_empty() {
                    if finished {
                        return None;
                    }
                    None
                } else {
                    let deadline = state.first_at.map(|first| first + self.autocommit);
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

    fn take(&self, state: &mut State) -> Vec<Event> {
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
        taken
    }

    /// Returns a processed buffer for reuse.
    pub(crate) fn recycle(&self, mut buffer: Vec<Event>) {
        buffer.clear();
        let mut state = self.lock();
        if state.spare.capacity() < buffer.capacity() {
            state.spare = buffer;
        }
    }

    /// Refuses further events; those already queued are still returned.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.room.notify_waiters();
        self.driver.notify_one();
    }
}

/// A handle that appends events to a [`Queue`]. The queue ends when every producer is
/// dropped.
pub(crate) struct Producer {
    queue: Arc<Queue>,
}

impl Producer {
    /// Appends `event`, waiting for room: the slow path, after
    /// [`try_push`](Self::try_push) found the queue full.
    ///
    /// Cancel safe: if the future is dropped before it completes, nothing was appended.
    pub(crate) async fn push_when_room(
        &self,
        mut event: Event,
        cancel: &CancellationToken,
    ) -> Result<(), SendError> {
        loop {
            // Registered before checking, so room made in between is not missed.
            let room = self.queue.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            event = match self.try_push(event) {
                Ok(()) => return Ok(()),
                Err(Some(event)) => event,
                Err(None) => return Err(SendError::ShuttingDown),
            };
            tokio::select! {
                () = room => {}
                () = cancel.cancelled() => return Err(SendError::ShuttingDown),
            }
        }
    }

    /// Appends `event` if there is room: `Err(Some(event))` when full, `Err(None)` when
    /// the queue is closed.
    pub(crate) fn try_push(&self, event: Event) -> Result<(), Option<Event>> {
        let queue = &*self.queue;
        let mut state = queue.lock();
        if state.closed {
            return Err(None);
        }
        if state.events.len() >= queue.capacity {
            return Err(Some(event));
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
}

impl Clone for Producer {
    fn clone(&self) -> Self {
        self.queue.lock().producers += 1;
        Producer {
            queue: self.queue.clone(),
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        let last = {
            let mut state = self.queue.lock();
            state.producers -= 1;
            state.producers == 0
        };
        if last {
            self.queue.driver.notify_one();
        }
    }
}
