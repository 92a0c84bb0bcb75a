//! The bounded queue between a table's sources and its commit driver.
//!
//! A general-purpose channel wakes its receiver for every message. Here the receiver is
//! the commit driver, which only needs events when a commit is due, so the queue wakes
//! it only when that can change: the first event of a commit (to start the autocommit
//! timer), the event that fills a batch, an explicit commit, and the last producer
//! leaving. Producers append under a mutex the driver takes once per commit, so a busy
//! source pays no cross-thread wake-up per message.
//!
//! **Commits end at offsets.** Once a producer reports offsets (or resumes from one), a
//! commit never takes its messages past its last offset in the commit: those wait for
//! the offset that covers them. So the offsets a commit records cover exactly its rows,
//! and a restart after a crash re-reads nothing that was committed. A commit that
//! holds no offset of a producer, only its messages, runs on to that producer's next
//! offset when it is already queued, past `max_batch` if need be (never past the
//! queue's capacity); so does one with messages of a producer that has finished, whose
//! messages no longer wait. Two exceptions keep
//! the queue bounded and live: a producer that sends a whole queue of messages without
//! an offset has them committed anyway (with a warning: after a crash they are read
//! again), and an explicit commit marker commits what came before it.

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
    /// The producer of each event, by index, when more than one producer feeds the
    /// queue (empty otherwise: every event is producer 0's).
    owners: Vec<u32>,
    /// Per producer: whether its messages are held back until its offsets cover them.
    reports_offsets: Vec<bool>,
    /// Whether an offset was ever queued: until then, no commit needs to look for one.
    offsets_seen: bool,
    /// The driver found a commit due but nothing it could take; the next offset, a
    /// full queue or a producer leaving wakes it.
    held: bool,
    /// A full queue of messages had to be committed past its producer's offset.
    warned: bool,
    /// When the oldest uncommitted event arrived.
    first_at: Option<Instant>,
    /// Explicit commit markers among `events`.
    markers: usize,
    producers: usize,
    /// An emptied buffer kept for reuse, so that steady traffic does not reallocate.
    spare: Vec<Event>,
}

impl State {
    /// The producer of event `i`.
    fn owner(&self, i: usize) -> usize {
        self.owners.get(i).copied().unwrap_or(0) as usize
    }
}

impl Queue {
    /// A queue for commits of at most `max_batch` events that holds at most
    /// `max_batch + headroom` events, with one producer.
    pub(crate) fn new(autocommit: Duration, max_batch: usize, headroom: usize) -> (Arc<Queue>, Producer) {
        let queue = Arc::new(Queue {
            state: Mutex::new(State {
                events: Vec::new(),
                owners: Vec::new(),
                reports_offsets: vec![false],
                offsets_seen: false,
                held: false,
                warned: false,
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
            index: 0,
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
        if state.owners.len() < state.events.len() {
            // Every event so far is the first producer's.
            let len = state.events.len();
            state.owners.resize(len, 0);
        }
        let index = state.reports_offsets.len() as u32;
        state.reports_offsets.push(false);
        drop(state);
        Producer {
            queue: self.clone(),
            index,
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
                    match due.then(|| self.take(&mut state)).flatten() {
                        Some(commit) => return Some(commit),
                        // Due, but every event waits for an offset: whatever changes
                        // that wakes the driver.
                        None if due => None,
                        None => deadline,
                    }
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

    /// The events of the commit now due, or `None` if all of them must wait for an
    /// offset (see the module's docs).
    fn take(&self, state: &mut State) -> Option<Commit> {
        let first_at = state.first_at;
        let waiting = state.events.len();
        let end = state.events.len().min(self.max_batch);
        let marker = match state.markers {
            0 => None,
            _ => state.events[..end]
                .iter()
                .position(|e| matches!(e, Event::Commit)),
        };
        let end = match marker {
            Some(marker) => {
                state.markers -= 1;
                marker + 1
            }
            None => {
                let end = run_on_to_offsets(state, end);
                match waiting_for_offsets(state, end) {
                    None => end,
                    Some(waits) if waits.iter().all(|&w| w) => {
                        if state.producers > 0 && state.events.len() < self.capacity {
                            state.held = true;
                            return None;
                        }
                        if !std::mem::replace(&mut state.warned, true) {
                            tracing::warn!(
                                waiting = state.events.len(),
                                "a source sent a whole queue of messages without reporting an offset; they are committed without one, so after a crash they are read again (report offsets more often, or raise the reader's channel capacity)"
                            );
                        }
                        end
                    }
                    Some(waits) => return Some(self.take_covered(state, &waits, first_at, waiting)),
                }
            }
        };
        state.held = false;
        if !state.owners.is_empty() {
            state.owners.drain(..end);
        }
        // The commit takes the queue's block; what stays behind (at most the queue's
        // capacity beyond a batch) moves to the spare block, so that no block is
        // allocated or copied per commit.
        let mut rest = std::mem::take(&mut state.spare);
        rest.extend(state.events.drain(end..));
        let taken = std::mem::replace(&mut state.events, rest);
        // Events left behind arrived after the commit became due, moments ago.
        state.first_at = (!state.events.is_empty()).then(Instant::now);
        self.room.notify_waiters();
        Some(Commit {
            events: taken,
            first_at,
            waiting,
        })
    }

    /// Takes the first `waits.len()` events but those that `waits` marks, which stay
    /// at the front of the queue in their order.
    fn take_covered(
        &self,
        state: &mut State,
        waits: &[bool],
        first_at: Option<Instant>,
        waiting: usize,
    ) -> Commit {
        let end = waits.len();
        let mut taken = Vec::with_capacity(end);
        let mut kept = Vec::new();
        for (event, &wait) in state.events.drain(..end).zip(waits) {
            match wait {
                true => kept.push(event),
                false => taken.push(event),
            }
        }
        kept.append(&mut state.events);
        state.events = kept;
        if !state.owners.is_empty() {
            let mut kept: Vec<u32> = state
                .owners
                .drain(..end)
                .zip(waits)
                .filter_map(|(owner, &wait)| wait.then_some(owner))
                .collect();
            kept.append(&mut state.owners);
            state.owners = kept;
        }
        state.held = false;
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

/// Where a commit of the first `end` events should end so that no producer's
/// messages in it are committed past their offset when that offset is already queued.
/// A running producer with an offset among the first `end` events needs nothing: its
/// messages after that offset wait (see [`waiting_for_offsets`]). One without (a whole
/// batch of messages before its next offset), or one that has finished (whose
/// messages never wait), has the commit run on to its first offset after them.
/// Extending for one producer can take in more messages of another, so this repeats
/// until the end stays put.
fn run_on_to_offsets(state: &State, mut end: usize) -> usize {
    if !state.offsets_seen {
        return end;
    }
    let producers = state.reports_offsets.len();
    loop {
        // Per producer: whether its last event before `end` is a message, and
        // whether an offset of its own comes before `end`.
        let mut uncovered = vec![false; producers];
        let mut has_offset = vec![false; producers];
        for (i, event) in state.events[..end].iter().enumerate() {
            let p = state.owner(i);
            if event.is_message() {
                uncovered[p] = true;
            } else if matches!(event, Event::Offset(..)) {
                uncovered[p] = false;
                has_offset[p] = true;
            }
        }
        let mut extend: Vec<bool> = (0..producers)
            .map(|p| uncovered[p] && !(has_offset[p] && state.reports_offsets[p]))
            .collect();
        let mut extending = extend.iter().filter(|&&e| e).count();
        let mut next_end = end;
        for (i, event) in state.events.iter().enumerate().skip(end) {
            if extending == 0 {
                break;
            }
            let p = state.owner(i);
            if extend[p] && matches!(event, Event::Offset(..)) {
                extend[p] = false;
                extending -= 1;
                next_end = i + 1;
            }
        }
        if next_end == end {
            return end;
        }
        end = next_end;
    }
}

/// Which of `state.events[..end]` must wait for an offset: the messages of each
/// producer that reports offsets after its last offset among them. `None` when none
/// waits. The rest may be committed: every producer's messages among them are followed
/// by an offset of its own within them. (Only messages wait, so a commit never splits a
/// producer's messages from an offset before them; producers' messages may be
/// committed in another order relative to each other, as they arrive concurrently.)
fn waiting_for_offsets(state: &State, end: usize) -> Option<Vec<bool>> {
    if !state.reports_offsets.contains(&true) {
        return None;
    }
    let mut last_offset = vec![None; state.reports_offsets.len()];
    for (i, event) in state.events[..end].iter().enumerate() {
        if matches!(event, Event::Offset(..)) {
            last_offset[state.owner(i)] = Some(i);
        }
    }
    let waits: Vec<bool> = state.events[..end]
        .iter()
        .enumerate()
        .map(|(i, event)| {
            let p = state.owner(i);
            event.is_message() && state.reports_offsets[p] && last_offset[p].is_none_or(|last| i > last)
        })
        .collect();
    waits.contains(&true).then_some(waits)
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
    /// This producer's index among the queue's producers.
    index: u32,
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
        let is_offset = matches!(event, Event::Offset(..));
        if is_offset {
            state.reports_offsets[self.index as usize] = true;
            state.offsets_seen = true;
        }
        if state.reports_offsets.len() > 1 {
            state.owners.push(self.index);
        }
        state.events.push(event);
        let wake = was_empty
            || is_marker
            || state.events.len() == queue.max_batch
            || (state.held && (is_offset || state.events.len() == queue.capacity));
        drop(state);
        if wake {
            queue.driver.notify_one();
        }
        Ok(())
    }

    /// Whether [`finish`](Self::finish) was called.
    /// Holds this producer's messages back until its offsets cover them from the
    /// start, for a source that resumes from an offset (it reports offsets, and its
    /// first messages must not be committed ahead of the offset that follows them).
    pub(crate) fn expect_offsets(&self) {
        let mut state = self.queue.lock();
        state.reports_offsets[self.index as usize] = true;
    }

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
            // No offset of its own will ever cover its messages now.
            state.reports_offsets[self.index as usize] = false;
            state.producers == 0 || std::mem::take(&mut state.held)
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

    fn message(n: i64) -> Event {
        Event::Delete(crate::Key::from(n))
    }

    fn offset(n: i64) -> Event {
        Event::Offset("s".into(), n.into())
    }

    fn push_all(producer: &Producer, events: impl IntoIterator<Item = Event>) {
        for event in events {
            assert!(producer.try_push(event).is_ok());
        }
    }

    /// The commit's events as numbers: a message's key, an offset's value negated.
    fn numbers(commit: &Commit) -> Vec<i64> {
        commit
            .events
            .iter()
            .map(|event| match event {
                Event::Delete(key) => key.values()[0].as_int().unwrap_or_default(),
                Event::Offset(_, offset) => -offset.as_i64().unwrap_or_default(),
                _ => 0,
            })
            .collect()
    }

    async fn next(queue: &Queue) -> Option<Vec<i64>> {
        tokio::time::timeout(Duration::from_secs(5), queue.next_commit())
            .await
            .ok()
            .flatten()
            .map(|commit| numbers(&commit))
    }

    #[tokio::test(start_paused = true)]
    async fn a_commit_ends_at_the_last_offset_and_the_messages_after_it_wait_for_theirs() {
        let (queue, producer) = Queue::new(Duration::from_millis(10), 100, 100);
        push_all(
            &producer,
            [message(1), message(2), offset(2), message(3), message(4)],
        );
        assert_eq!(next(&queue).await, Some(vec![1, 2, -2]));
        // Due by time, but 3 and 4 are not covered yet: nothing is taken.
        let waiting = tokio::time::timeout(Duration::from_secs(1), queue.next_commit()).await;
        assert!(
            waiting.is_err(),
            "messages past the last offset are not committed"
        );
        assert!(producer.try_push(offset(4)).is_ok());
        assert_eq!(next(&queue).await, Some(vec![3, 4, -4]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_that_resumes_has_its_first_messages_wait_for_an_offset() {
        let (queue, producer) = Queue::new(Duration::from_millis(10), 100, 100);
        producer.expect_offsets();
        assert!(producer.try_push(message(1)).is_ok());
        let waiting = tokio::time::timeout(Duration::from_secs(1), queue.next_commit()).await;
        assert!(waiting.is_err());
        assert!(producer.try_push(offset(1)).is_ok());
        assert_eq!(next(&queue).await, Some(vec![1, -1]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_without_an_offset_is_committed_anyway() {
        let (queue, producer) = Queue::new(Duration::from_millis(10), 4, 2);
        assert!(producer.try_push(offset(0)).is_ok());
        assert_eq!(next(&queue).await, Some(vec![0]));
        for n in 1..=6 {
            assert!(producer.try_push(message(n)).is_ok());
        }
        assert!(matches!(producer.try_push(message(7)), Err(PushError::Full(_))));
        assert_eq!(
            next(&queue).await,
            Some(vec![1, 2, 3, 4]),
            "bounded, so taken without an offset"
        );
    }

    /// The commit takes the queue's block and the rest moves to the spare one: the
    /// rest must stay whole and in order, with a recycled block and without one.
    #[tokio::test(start_paused = true)]
    async fn a_commit_cut_at_the_batch_limit_leaves_the_rest_in_order() {
        let (queue, producer) = Queue::new(Duration::from_millis(10), 3, 100);
        for n in 1..=8 {
            assert!(producer.try_push(message(n)).is_ok());
        }
        let first = queue.next_commit().await.expect("a commit");
        assert_eq!(numbers(&first), [1, 2, 3]);
        // Pushed while the first commit is out: the spare block is in use.
        assert!(producer.try_push(message(9)).is_ok());
        assert_eq!(next(&queue).await, Some(vec![4, 5, 6]));
        queue.recycle(first.events);
        for n in 10..=11 {
            assert!(producer.try_push(message(n)).is_ok());
        }
        assert_eq!(next(&queue).await, Some(vec![7, 8, 9]));
        assert_eq!(next(&queue).await, Some(vec![10, 11]));
    }

    #[tokio::test(start_paused = true)]
    async fn the_batch_limit_still_cuts_at_an_offset() {
        let (queue, producer) = Queue::new(Duration::from_millis(10), 4, 100);
        push_all(
            &producer,
            [
                message(1),
                offset(1),
                message(2),
                message(3),
                message(4),
                offset(4),
            ],
        );
        assert_eq!(
            next(&queue).await,
            Some(vec![1, -1]),
            "2 and 3 would be past the offset"
        );
        assert_eq!(next(&queue).await, Some(vec![2, 3, 4, -4]));
    }

    /// Regression: a batch of messages with their offset just past `max_batch` was
    /// held until the queue filled, then committed without it (and under an older
    /// offset: read again after a crash).
    #[tokio::test(start_paused = true)]
    async fn a_batch_of_messages_runs_on_to_the_offset_queued_after_it() {
        let (queue, producer) = Queue::new(Duration::from_millis(10), 4, 100);
        push_all(
            &producer,
            [
                message(1),
                message(2),
                message(3),
                message(4),
                message(5),
                offset(5),
                message(6),
            ],
        );
        assert_eq!(next(&queue).await, Some(vec![1, 2, 3, 4, 5, -5]));
        let waiting = tokio::time::timeout(Duration::from_secs(1), queue.next_commit()).await;
        assert!(waiting.is_err(), "6 waits for its offset");
    }

    /// Regression: once its producer finished, a queue's messages were cut at
    /// `max_batch` wherever that fell, so a commit could hold messages its offset did
    /// not cover (the file source reports its last offset and finishes at once).
    #[tokio::test(start_paused = true)]
    async fn a_finished_producer_s_messages_are_committed_with_their_offsets() {
        let (queue, producer) = Queue::new(Duration::from_millis(10), 4, 100);
        push_all(
            &producer,
            [
                message(1),
                offset(1),
                message(2),
                message(3),
                message(4),
                message(5),
                offset(5),
            ],
        );
        producer.finish();
        assert_eq!(next(&queue).await, Some(vec![1, -1, 2, 3, 4, 5, -5]));
        assert_eq!(next(&queue).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn producers_are_covered_each_by_its_own_offsets() {
        let (queue, first) = Queue::new(Duration::from_millis(10), 100, 100);
        let second = queue.add_producer();
        // The second producer reports no offsets, so its messages never wait for one,
        // not even behind the first producer's message that does.
        for (producer, event) in [
            (&first, message(1)),
            (&first, offset(1)),
            (&second, message(10)),
            (&first, message(2)),
            (&second, message(11)),
        ] {
            assert!(producer.try_push(event).is_ok());
        }
        assert_eq!(
            next(&queue).await,
            Some(vec![1, -1, 10, 11]),
            "2 waits for its offset"
        );
        assert!(first.try_push(offset(2)).is_ok());
        assert!(first.try_push(message(3)).is_ok());
        assert_eq!(next(&queue).await, Some(vec![2, -2]));
        first.finish();
        assert_eq!(
            next(&queue).await,
            Some(vec![3]),
            "a finished producer holds nothing back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_explicit_commit_commits_what_came_before_it() {
        let (queue, producer) = Queue::new(Duration::from_secs(3600), 100, 100);
        push_all(&producer, [offset(0), message(1), Event::Commit, message(2)]);
        assert_eq!(next(&queue).await, Some(vec![0, 1, 0]));
    }

    /// Regression: cutting commits only at a point no producer's messages straddled
    /// found none when partitions' (message, offset) pairs overlapped in a chain, so
    /// nothing was committed until the queue filled (and a JetStream worker, whose
    /// acks wait for commits, stalled). Only the messages still waiting stay behind.
    #[tokio::test(start_paused = true)]
    async fn overlapping_producers_commit_all_but_the_messages_still_waiting() {
        let (queue, a) = Queue::new(Duration::from_millis(10), 100, 100);
        let b = queue.add_producer();
        for (producer, event) in [
            (&a, message(1)),
            (&b, message(10)),
            (&a, offset(1)),
            (&a, message(2)),
            (&b, offset(10)),
            (&b, message(11)),
            (&a, offset(2)),
        ] {
            assert!(producer.try_push(event).is_ok());
        }
        assert_eq!(next(&queue).await, Some(vec![1, 10, -1, 2, -10, -2]));
        assert!(b.try_push(offset(11)).is_ok());
        assert_eq!(next(&queue).await, Some(vec![11, -11]));
    }
}
