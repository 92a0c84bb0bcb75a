//! The commit driver: one task per table that takes each commit's events from the
//! table's queue and applies them, then delivers the commit to the subscribers.

use std::sync::Arc;

use crate::lifecycle::Lifecycle;
use crate::queue::Queue;
use crate::table::TableShared;

/// Runs until every source of the table has finished and their last events are
/// committed and delivered, then ends the table. The queue decides when a commit is
/// due: autocommit duration since its first event, `max_batch_size` events, an explicit
/// commit, or the end of every source.
pub(crate) async fn drive(table: Arc<TableShared>, queue: Arc<Queue>, lifecycle: Arc<Lifecycle>) {
    while let Some(mut events) = queue.next_commit().await {
        let applied = compute_heavy(events.len(), || table.apply(&mut events));
        queue.recycle(events);
        if let Some((batch, subscribers)) = applied {
            table.deliver(batch, subscribers, &lifecycle).await;
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
