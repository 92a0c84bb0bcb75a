//! The lifetime of one pipeline: its tasks, its failures and its shutdown deadline.
//!
//! Everything a pipeline runs on a task of its own (sources, commit drivers,
//! subscribers, sinks) is spawned through [`Lifecycle::spawn`], so the pipeline can wait
//! for all of it; every wait that could outlast shutdown also waits on
//! [`Lifecycle::deadline`]; every failure is recorded here, and
//! [`Lifecycle::outcome`] turns them into what `Pipeline::run` returns. Tables, sources
//! and subscribers depend on this module; it depends on none of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{Error, SourceFailure};
use crate::parse::Rejected;
use crate::source::BoxError;

/// See [`Lifecycle::grace_over`].
pub(crate) const AFTER_DEADLINE_GRACE: Duration = Duration::from_millis(100);

pub(crate) struct Lifecycle {
    /// Cancelled when shutdown begins: sources are asked to stop.
    shutdown: CancellationToken,
    /// When shutdown began; the deadline is `shutdown_timeout` later.
    shutdown_at: OnceLock<Instant>,
    tasks: TaskTracker,
    state: Mutex<State>,
}

struct State {
    shutdown_timeout: Duration,
    failures: Failures,
    rejected_streams: Vec<RejectedSender>,
}

#[derive(Default)]
struct Failures {
    rejected: Option<Box<Rejected>>,
    sources: Vec<SourceFailure>,
    sink: Option<Error>,
    subscriber: Option<Error>,
    persistence: Option<Error>,
}

/// The sending side of one [`RejectedStream`](crate::RejectedStream).
struct RejectedSender {
    sender: mpsc::Sender<Rejected>,
    dropped: Arc<AtomicU64>,
}

impl Lifecycle {
    pub(crate) fn new(shutdown_timeout: Duration) -> Self {
        Lifecycle {
            shutdown: CancellationToken::new(),
            shutdown_at: OnceLock::new(),
            tasks: TaskTracker::new(),
            state: Mutex::new(State {
                shutdown_timeout,
                failures: Failures::default(),
                rejected_streams: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub(crate) fn set_shutdown_timeout(&self, timeout: Duration) {
        self.lock().shutdown_timeout = timeout;
    }

    /// Begins shutdown (once; later calls change nothing).
    pub(crate) fn shutdown(&self) {
        self.shutdown_at.get_or_init(Instant::now);
        self.shutdown.cancel();
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// The token cancelled when shutdown begins.
    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// When the deadline falls, if shutdown has begun; `None` before, or when the
    /// timeout is too long to represent (then there is no deadline).
    fn deadline_at(&self) -> Option<Instant> {
        let started = *self.shutdown_at.get()?;
        started.checked_add(self.lock().shutdown_timeout)
    }

    /// Completes at the shutdown deadline: `shutdown_timeout` after shutdown began.
    /// Never completes while the pipeline runs normally.
    pub(crate) async fn deadline(&self) {
        self.shutdown.cancelled().await;
        // A token cancelled through a clone would skip `shutdown`; count from now then.
        self.shutdown_at.get_or_init(Instant::now);
        match self.deadline_at() {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    /// Completes [`AFTER_DEADLINE_GRACE`] after the later of the shutdown deadline and
    /// the call: the bound on one delivery to a subscriber, or one call of a sink, that
    /// is waiting when shutdown is at its end. Each waiting step gets the same grace, so
    /// a subscriber that keeps reading receives every commit, one that stopped is given
    /// up on, and shutdown stays bounded.
    pub(crate) async fn grace_over(&self) {
        self.deadline().await;
        tokio::time::sleep(AFTER_DEADLINE_GRACE).await;
    }

    /// Runs `task` on a task of its own, tracked: the pipeline waits for it.
    ///
    /// # Panics
    ///
    /// If called outside a Tokio runtime.
    #[track_caller]
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.tasks.spawn(task));
    }

    /// Waits for every task spawned through [`spawn`](Self::spawn) to end.
    pub(crate) async fn wait_for_tasks(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    pub(crate) fn source_failed(&self, failure: SourceFailure) {
        tracing::error!(source = failure.name(), error = %failure.cause(), "source failed");
        self.lock().failures.sources.push(failure);
    }

    pub(crate) fn subscriber_panicked(&self, table: &str, message: String) {
        tracing::error!(table, %message, "a subscriber panicked; it receives no further changes");
        self.lock()
            .failures
            .subscriber
            .get_or_insert(Error::SubscriberPanicked {
                table: table.to_owned(),
                message,
            });
    }

    /// Records a sink's failure and shuts the pipeline down: the changes it could not
    /// write would otherwise be lost silently.
    /// Records that a table's storage failed, and shuts the pipeline down.
    pub(crate) fn persistence_failed(&self, table: &str, error: crate::store::PersistenceError) {
        tracing::error!(table, %error, "persistence failed; shutting the pipeline down");
        self.lock()
            .failures
            .persistence
            .get_or_insert(Error::Persistence {
                table: table.to_owned(),
                source: error,
            });
        self.shutdown();
    }

    pub(crate) fn sink_failed(&self, name: &str, table: &str, cause: BoxError) {
        tracing::error!(sink = name, table, error = %cause, "sink failed; shutting the pipeline down");
        self.lock().failures.sink.get_or_insert(Error::SinkFailed {
            name: name.to_owned(),
            table: table.to_owned(),
            cause,
        });
        self.shutdown();
    }

    /// Records the first message refused under a fail policy and shuts down.
    pub(crate) fn fail_on_rejected(&self, rejected: &Rejected) {
        tracing::error!(source = rejected.source_name(), reason = %rejected.reason(), "bad input; failing the pipeline");
        self.lock()
            .failures
            .rejected
            .get_or_insert_with(|| Box::new(rejected.clone()));
        self.shutdown();
    }

    /// A new stream of skipped messages holding up to `capacity` reports.
    pub(crate) fn rejected_stream(&self, capacity: usize) -> (mpsc::Receiver<Rejected>, Arc<AtomicU64>) {
        let (sender, receiver) = mpsc::channel(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        self.lock().rejected_streams.push(RejectedSender {
            sender,
            dropped: dropped.clone(),
        });
        (receiver, dropped)
    }

    /// Hands a skipped message to every rejected stream that has room, without
    /// waiting: reporting bad input must never stall ingestion. A full stream misses
    /// the report, which it counts; the first miss and every power of two after it
    /// are logged.
    pub(crate) fn report_rejected(&self, rejected: &Rejected) {
        let mut state = self.lock();
        state
            .rejected_streams
            .retain(|stream| match stream.sender.try_send(rejected.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    let dropped = stream.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    if dropped.is_power_of_two() {
                        tracing::warn!(
                            source = rejected.source_name(),
                            dropped,
                            "a rejected stream is full and is not read fast enough; reports it missed so far"
                        );
                    }
                    true
                }
                Err(TrySendError::Closed(_)) => false,
            });
    }

    /// Ends every rejected stream and returns what `Pipeline::run` reports: a
    /// persistence failure, else the first rejected message under a fail policy, else the source failures, else the sink
    /// failure, else the subscriber panic.
    pub(crate) fn outcome(&self) -> Result<(), Error> {
        let mut state = self.lock();
        state.rejected_streams.clear();
        let failures = std::mem::take(&mut state.failures);
        if let Some(persistence) = failures.persistence {
            Err(persistence)
        } else if let Some(rejected) = failures.rejected {
            Err(Error::Rejected(rejected))
        } else if !failures.sources.is_empty() {
            Err(Error::SourcesFailed(failures.sources))
        } else if let Some(sink) = failures.sink {
            Err(sink)
        } else if let Some(panic) = failures.subscriber {
            Err(panic)
        } else {
            Ok(())
        }
    }

    /// Ends every rejected stream, for a pipeline that will never run.
    pub(crate) fn abandon(&self) {
        self.lock().rejected_streams.clear();
    }
}

/// The text of a panic's payload.
/// Locks a mutex whose data stays consistent even if a holder panicked (every
/// mutex here guards data that a panic cannot leave half-updated).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}
