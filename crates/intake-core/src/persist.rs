//! Where and how a pipeline keeps its tables: the public side of persistence (the
//! storage format is in `store/`).

use std::path::{Path, PathBuf};

use crate::store::SyncPolicy;

/// Keeps a pipeline's tables in a storage directory, so that a restart (after a clean
/// stop or a crash) continues where the last durable commit left off; see
/// [`Pipeline::persist`](crate::Pipeline::persist) and `docs/persistence.md`.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use intake_core::{Persistence, Pipeline, SyncPolicy};
///
/// // Every commit is on disk before any subscriber or sink sees it (the default):
/// let pipeline = Pipeline::new().persist(Persistence::new("/var/lib/prices"));
/// # drop(pipeline);
/// // Or sync at most every 50 ms, trading the last 50 ms on a power loss for speed:
/// let pipeline = Pipeline::new().persist(
///     Persistence::new("/var/lib/prices").sync_policy(SyncPolicy::Interval(Duration::from_millis(50))),
/// );
/// # drop(pipeline);
/// ```
#[derive(Debug, Clone)]
pub struct Persistence {
    pub(crate) dir: PathBuf,
    pub(crate) sync: SyncPolicy,
    pub(crate) compact_after: u64,
}

impl Persistence {
    /// Stores tables under `dir` (created if missing), one subdirectory per table,
    /// named by its [persistent id](crate::Reader::persistent_id).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Persistence {
            dir: dir.into(),
            sync: SyncPolicy::default(),
            compact_after: Self::DEFAULT_COMPACT_AFTER,
        }
    }

    /// Default for [`compact_after`](Self::compact_after): 8 MiB.
    pub const DEFAULT_COMPACT_AFTER: u64 = 8 << 20;

    /// When a table's log is compacted: once the log written since the last snapshot
    /// is larger than both `bytes` and that snapshot, a new snapshot of the table is
    /// written in the background and the log before it is deleted. So the log never
    /// holds much more than the table itself, and a restart reads at most about twice
    /// the table's size whatever the service's uptime. Default:
    /// [`DEFAULT_COMPACT_AFTER`](Self::DEFAULT_COMPACT_AFTER).
    pub fn compact_after(mut self, bytes: u64) -> Self {
        self.compact_after = bytes;
        self
    }

    /// When commit records are synced to disk. Default: [`SyncPolicy::EveryCommit`].
    pub fn sync_policy(mut self, policy: SyncPolicy) -> Self {
        self.sync = policy;
        self
    }

    /// The storage directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
