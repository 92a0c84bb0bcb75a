//! The pipeline: runs sources, commits their tables, and shuts everything down.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{FutureExt, Stream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::parse::{Parser, Rejected};
use crate::queue::Queue;
use crate::reader::Reader;
use crate::source::{BoxError, SendError, Source, SourceContext};
use crate::subscribe::panic_message;
use crate::table::{Table, TableShared};

/// Why a pipeline failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// One or more sources failed. The others ran to their end (or were stopped, on a
    /// [fail-fast](Pipeline::fail_fast) pipeline), and everything valid that was sent was
    /// committed.
    #[error("{}", list_failures(.0))]
    SourcesFailed(Vec<SourceFailure>),
    /// A reader with [`ErrorPolicy::Fail`](crate::ErrorPolicy::Fail) met bad input.
    #[error("{0}")]
    Rejected(Box<Rejected>),
    /// A sink failed to write (or panicked); the pipeline was shut down, and the sink
    /// received nothing after the failed batch.
    #[error("sink `{name}` of table `{table}` failed: {cause}")]
    SinkFailed {
        /// The sink's name.
        name: String,
        /// The table it wrote.
        table: String,
        /// What went wrong.
        #[source]
        cause: BoxError,
    },
    /// A subscriber's callback panicked; it received no further changes.
    #[error("a subscriber of table `{table}` panicked: {message}")]
    SubscriberPanicked {
        /// The table subscribed to.
        table: String,
        /// The panic's message.
        message: String,
    },
}

fn list_failures(failures: &[SourceFailure]) -> String {
    let list: Vec<String> = failures.iter().map(ToString::to_string).collect();
    list.join("; ")
}

/// A source that failed: its name and what went wrong.
#[derive(Debug, thiserror::Error)]
#[error("source `{name}` failed: {cause}")]
pub struct SourceFailure {
    name: String,
    #[source]
    cause: BoxError,
}

impl SourceFailure {
    /// The source's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What went wrong.
    pub fn cause(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.cause
    }
}

/// State shared by a pipeline's tasks and handles.
pub(crate) struct PipelineShared {
    cancel: CancellationToken,
    /// Cancelled `shutdown_timeout` after `cancel`: shutdown stops being cooperative.
    hard_stop: CancellationToken,
    state: Mutex<SharedState>,
}

#[derive(Default)]
struct SharedState {
    rejected: Option<Box<Rejected>>,
    subscriber_panic: Option<Error>,
    sink_failure: Option<Error>,
    rejected_subscribers: Vec<mpsc::Sender<Rejected>>,
    subscriber_tasks: Vec<JoinHandle<()>>,
}

impl PipelineShared {
    fn lock(&self) -> MutexGuard<'_, SharedState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    pub(crate) fn deadline_token(&self) -> &CancellationToken {
        &self.hard_stop
    }

    pub(crate) fn track_subscriber(&self, task: JoinHandle<()>) {
        self.lock().subscriber_tasks.push(task);
    }

    pub(crate) fn subscriber_panicked(&self, table: &str, message: String) {
        tracing::error!(table, %message, "a subscriber panicked; it receives no further changes");
        self.lock()
            .subscriber_panic
            .get_or_insert(Error::SubscriberPanicked {
                table: table.to_owned(),
                message,
            });
    }

    /// Records a sink's failure and shuts the pipeline down: the changes it could not
    /// write would otherwise be lost silently.
    pub(crate) fn sink_failed(&self, name: &str, table: &str, cause: BoxError) {
        tracing::error!(sink = name, table, error = %cause, "sink failed; shutting the pipeline down");
        self.lock().sink_failure.get_or_insert(Error::SinkFailed {
            name: name.to_owned(),
            table: table.to_owned(),
            cause,
        });
        self.cancel.cancel();
    }

    /// Records the first rejected message of a fail-policy reader and stops the pipeline.
    pub(crate) fn fail_on_rejected(&self, rejected: &Rejected) {
        tracing::error!(source = rejected.source_name(), reason = %rejected.reason(), "bad input; failing the pipeline");
        self.lock()
            .rejected
            .get_or_insert_with(|| Box::new(rejected.clone()));
        self.cancel.cancel();
    }

    /// Delivers a skipped message to every `rejected()` stream, waiting for room.
    pub(crate) async fn report_rejected(&self, rejected: Rejected) {
        let subscribers = self.lock().rejected_subscribers.clone();
        let mut gone = false;
        for subscriber in &subscribers {
            gone |= subscriber.send(rejected.clone()).await.is_err();
        }
        if gone {
            self.lock().rejected_subscribers.retain(|s| !s.is_closed());
        }
    }
}

/// Runs sources into tables and keeps the tables' subscribers fed.
///
/// Register sources with [`read`](Self::read), which returns each one's [`Table`] at
/// once so you can subscribe before anything runs; then [`run`](Self::run).
///
/// # Examples
///
/// ```
/// use futures::stream;
/// use intake_core::{from_stream, Column, DataType, Pipeline, Reader, Schema};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let schema = Schema::new([
///     Column::new("key", DataType::Int).primary_key(),
///     Column::new("genus", DataType::String),
/// ])?;
/// let messages = stream::iter([
///     r#"{"key": 1, "genus": "otocolobus"}"#,
///     r#"{"key": 2, "genus": "felis"}"#,
///     r#"{"key": 1, "genus": "lynx"}"#,
/// ]);
///
/// let mut pipeline = Pipeline::new();
/// let cats = pipeline.read("cats", from_stream(messages), Reader::json(schema));
/// pipeline.run().await?;
///
/// assert_eq!(cats.len(), 2);
/// assert_eq!(cats.get(&1.into()).unwrap().get("genus").unwrap().as_str(), Some("lynx"));
/// # Ok(())
/// # }
/// ```
#[must_use = "a pipeline does nothing until run"]
pub struct Pipeline {
    shared: Arc<PipelineShared>,
    inputs: Vec<Input>,
    fail_fast: bool,
    shutdown_timeout: Duration,
}

struct Input {
    name: Arc<str>,
    source: Box<dyn Source>,
    reader: Reader,
    table: Table,
}

impl Default for Pipeline {
    fn default() -> Self {
        Self::new()
    }
}

impl Pipeline {
    /// Default for [`shutdown_timeout`](Self::shutdown_timeout).
    pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

    /// An empty pipeline.
    pub fn new() -> Self {
        Pipeline {
            shared: Arc::new(PipelineShared {
                cancel: CancellationToken::new(),
                hard_stop: CancellationToken::new(),
                state: Mutex::new(SharedState::default()),
            }),
            inputs: Vec::new(),
            fail_fast: false,
            shutdown_timeout: Self::DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }

    /// Whether the first source failure shuts the whole pipeline down (default: no,
    /// the other sources keep running).
    pub fn fail_fast(mut self, fail_fast: bool) -> Self {
        self.fail_fast = fail_fast;
        self
    }

    /// How long sources get, after shutdown begins, to return from `run` before they
    /// are dropped, and subscribers to take their last batches before they are
    /// disconnected. Default: 5 seconds.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Reads `source` into a new table named `name`, as `reader` says.
    ///
    /// The table exists at once and fills when the pipeline runs.
    pub fn read(&mut self, name: impl Into<String>, source: impl Source, reader: Reader) -> Table {
        let name: Arc<str> = Arc::from(name.into());
        let table = Table::new(
            name.clone(),
            reader.schema,
            reader.subscriber_capacity,
            self.shared.clone(),
        );
        self.inputs.push(Input {
            name,
            source: Box::new(source),
            reader,
            table: table.clone(),
        });
        table
    }

    /// A stream of every message skipped as bad input by a reader with
    /// [`ErrorPolicy::SkipAndReport`](crate::ErrorPolicy::SkipAndReport), from the
    /// moment of the call. It holds up to `capacity` reports, then the sources that
    /// reject more wait for it to be read (so reports are never lost). It ends when
    /// the pipeline does.
    ///
    /// # Panics
    ///
    /// If `capacity` is zero.
    #[track_caller]
    pub fn rejected(&self, capacity: usize) -> RejectedStream {
        let (sender, receiver) = mpsc::channel(capacity);
        self.shared.lock().rejected_subscribers.push(sender);
        RejectedStream(ReceiverStream::new(receiver))
    }

    /// A handle that shuts the pipeline down from elsewhere, for example on Ctrl-C.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shared.cancel.clone())
    }

    /// Runs every source until all have ended, or until shutdown.
    ///
    /// On shutdown (through a [`ShutdownHandle`], a fail-fast source failure, or bad
    /// input under [`ErrorPolicy::Fail`](crate::ErrorPolicy::Fail)) sources are told to
    /// stop; each table commits what it already received, and subscribers get every
    /// commit and then `on_end`. Sources that have not returned within the
    /// [shutdown timeout](Self::shutdown_timeout) are dropped.
    ///
    /// Returns once every table has made its final commit and every callback
    /// subscriber has run `on_end`.
    ///
    /// # Errors
    ///
    /// [`Error::Rejected`] for bad input under a fail policy, else
    /// [`Error::SourcesFailed`] if any source failed, else [`Error::SinkFailed`], else
    /// [`Error::SubscriberPanicked`].
    pub async fn run(self) -> Result<(), Error> {
        let mut this = self;
        let inputs = std::mem::take(&mut this.inputs);
        let shared = this.shared.clone();
        let (fail_fast, shutdown_timeout) = (this.fail_fast, this.shutdown_timeout);
        drop(this);
        // Shutdown is cooperative until `hard_stop`, `shutdown_timeout` later.
        let hard_stop = shared.hard_stop.clone();
        let watchdog = tokio::spawn({
            let cancel = shared.cancel.clone();
            let hard_stop = hard_stop.clone();
            async move {
                cancel.cancelled().await;
                tokio::time::sleep(shutdown_timeout).await;
                hard_stop.cancel();
            }
        });

        let mut sources = JoinSet::new();
        let mut drivers = JoinSet::new();
        for Input {
            name,
            source,
            reader,
            table,
        } in inputs
        {
            let (queue, producer) = Queue::new(
                reader.autocommit_duration,
                reader.max_batch_size,
                reader.channel_capacity,
            );
            let ctx = SourceContext::new(
                name.clone(),
                reader.resume.clone(),
                producer,
                Parser::new(reader.schema, reader.format),
                reader.error_policy,
                table.shared().clone(),
            );
            sources.spawn(run_source(name, source, ctx, hard_stop.clone()));
            drivers.spawn(drive(table.shared().clone(), queue, hard_stop.clone()));
        }

        let mut failures = Vec::new();
        while let Some(joined) = sources.join_next().await {
            // run_source catches panics, so a join error means the runtime is going away.
            if let Ok(Err(failure)) = joined {
                tracing::error!(source = failure.name(), error = %failure.cause(), "source failed");
                if fail_fast {
                    shared.cancel.cancel();
                }
                failures.push(failure);
            }
        }
        while drivers.join_next().await.is_some() {}
        loop {
            let tasks = std::mem::take(&mut shared.lock().subscriber_tasks);
            if tasks.is_empty() {
                break;
            }
            for task in tasks {
                let _ = task.await;
            }
        }
        watchdog.abort();

        let mut state = shared.lock();
        state.rejected_subscribers.clear();
        if let Some(rejected) = state.rejected.take() {
            Err(Error::Rejected(rejected))
        } else if !failures.is_empty() {
            Err(Error::SourcesFailed(failures))
        } else if let Some(failure) = state.sink_failure.take() {
            Err(failure)
        } else if let Some(panic) = state.subscriber_panic.take() {
            Err(panic)
        } else {
            Ok(())
        }
    }
}

impl Drop for Pipeline {
    /// A pipeline dropped without running ends its tables, so their subscribers get
    /// `on_end` instead of waiting forever.
    fn drop(&mut self) {
        for input in &self.inputs {
            input.table.shared().close();
        }
    }
}

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.inputs.iter().map(|i| &*i.name).collect();
        f.debug_struct("Pipeline")
            .field("sources", &names)
            .field("fail_fast", &self.fail_fast)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish_non_exhaustive()
    }
}

/// Runs one source to its end and calls its `on_stop`.
async fn run_source(
    name: Arc<str>,
    mut source: Box<dyn Source>,
    ctx: SourceContext,
    hard_stop: CancellationToken,
) -> Result<(), SourceFailure> {
    let outcome = tokio::select! {
        outcome = AssertUnwindSafe(source.run(ctx.clone())).catch_unwind() => match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => match error.downcast_ref::<SendError>() {
                // Stopping because the pipeline is stopping is not a failure of its own;
                // rejected input is reported as such by the pipeline.
                Some(SendError::ShuttingDown | SendError::Rejected(_)) => Ok(()),
                _ => Err(error),
            },
            Err(panic) => Err(format!("panicked: {}", panic_message(panic.as_ref())).into()),
        },
        () = hard_stop.cancelled() => {
            tracing::warn!(source = %name, "source did not stop within the shutdown timeout and was dropped");
            Ok(())
        }
    };
    ctx.finish();
    if let Err(panic) = AssertUnwindSafe(source.on_stop()).catch_unwind().await {
        tracing::error!(source = %name, message = %panic_message(panic.as_ref()), "on_stop panicked");
    }
    outcome.map_err(|cause| SourceFailure {
        name: name.to_string(),
        cause,
    })
}

/// The commit driver: takes each commit's events from the queue (which decides when a
/// commit is due: autocommit duration since its first event, `max_batch_size` events,
/// an explicit commit, or the end of every source) and applies them to the table.
async fn drive(table: Arc<TableShared>, queue: Arc<Queue>, hard_stop: CancellationToken) {
    let mut forced = false;
    loop {
        let events = tokio::select! {
            events = queue.next_commit() => events,
            () = hard_stop.cancelled(), if !forced => {
                // Some context clone outlived shutdown: refuse new events, but commit
                // everything already queued.
                forced = true;
                queue.close();
                continue;
            }
        };
        let Some(mut events) = events else { break };
        let applied = compute_heavy(events.len(), || table.apply(&mut events));
        queue.recycle(events);
        if let Some((batch, subscribers)) = applied {
            table.deliver(batch, subscribers, &hard_stop).await;
        }
    }
    table.close();
}

/// Commits at least this large are applied off the async worker; see [`compute_heavy`].
const HEAVY_COMMIT: usize = 256;

/// Runs a commit's CPU-bound work. A large commit on a multi-threaded runtime runs
/// under `block_in_place`, which hands this worker's other tasks (typically the
/// source that just filled the queue) to another thread, so that parsing the next
/// batch overlaps with applying this one instead of waiting behind it.
fn compute_heavy<R>(events: usize, work: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let multi_thread = Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    if events >= HEAVY_COMMIT && multi_thread {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

/// Shuts a pipeline down; see [`Pipeline::shutdown_handle`].
#[derive(Debug, Clone)]
pub struct ShutdownHandle(CancellationToken);

impl ShutdownHandle {
    /// Begins shutdown: sources are told to stop, tables commit what they received.
    pub fn shutdown(&self) {
        self.0.cancel();
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.0.is_cancelled()
    }
}

/// The stream returned by [`Pipeline::rejected`].
#[derive(Debug)]
#[must_use = "streams do nothing unless polled"]
pub struct RejectedStream(ReceiverStream<Rejected>);

impl Stream for RejectedStream {
    type Item = Rejected;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Rejected>> {
        Pin::new(&mut self.0).poll_next(cx)
    }
}
