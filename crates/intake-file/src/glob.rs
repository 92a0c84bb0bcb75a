//! The files matching a glob as a partitioned source: one file a partition.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use intake_core::{BoxError, PartitionedSource, Source};

use crate::error::FileError;
use crate::file::FileSource;
use crate::format::FileFormat;
use crate::fragment::{DirectoryStore, FragmentStore};

type Configure = Arc<dyn Fn(FileSource) -> FileSource + Send + Sync>;

/// The files under a directory whose relative path matches a glob, each read by a
/// [`FileSource`] of its own as one partition of a
/// [`PartitionedSource`]: register it with
/// [`Pipeline::read_partitioned`](intake_core::Pipeline::read_partitioned), and the files
/// are read concurrently (in parallel on a multi-threaded runtime) into one table.
///
/// - **Partitions**: the files matching the glob when the pipeline starts (listed as
///   [`DirectoryStore`] lists them: recursively, following symbolic links; `*` does not
///   cross `/`, `**` does). Files created later are not read; for a directory that
///   keeps receiving files, use a [`FragmentSource`](crate::FragmentSource) over a
///   [`DirectoryStore`].
/// - **Names**: a partition is named by the file's path relative to the directory,
///   with `/` written as `%2F` (and `%` as `%25`), since a partition name cannot
///   contain `/`: `2024/jan.jsonl` is the partition `2024%2Fjan.jsonl`, and its offsets
///   are kept under `source/2024%2Fjan.jsonl`. Names do not depend on the path of the
///   directory itself.
/// - **Settings**: every file is read in the same [`FileFormat`] (a CSV or TSV file
///   each with its own header), with the settings [`configure`](Self::configure) gives
///   its `FileSource`, such as [`follow`](FileSource::follow). In follow mode the glob
///   should match only the live files (`*.log`), not their rotations (`app.log*`):
///   each follower reads its own file's rotations, and one following a rotated name
///   would read the next rotated file again. Such a partition is warned about when
///   it is built.
/// - **Resume**: each file resumes from its own offset, as a `FileSource` does, when
///   the offsets of a batch are given back to
///   [`Pipeline::resume_from`](intake_core::Pipeline::resume_from).
///
/// # Examples
///
/// ```
/// use intake_core::{Column, DataType, Pipeline, Reader, Schema};
/// use intake_file::{FileFormat, FileGlob};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// std::fs::write(dir.path().join("east.csv"), "key,genus\n1,manul\n2,felis\n")?;
/// std::fs::write(dir.path().join("west.csv"), "key,genus\n3,lynx\n")?;
///
/// let schema = Schema::new([
///     Column::new("key", DataType::Int).primary_key(),
///     Column::new("genus", DataType::String),
/// ])?;
/// let files = FileGlob::new(dir.path(), "*.csv", FileFormat::Csv)?
///     .configure(|file| file.offset_every(100));
/// let mut pipeline = Pipeline::new();
/// let cats = pipeline.read_partitioned("cats", files, Reader::json(schema));
/// pipeline.run().await?;
///
/// assert_eq!(cats.len(), 3);
/// let sources: Vec<String> = cats.committed_offsets().into_iter().map(|(name, _)| name).collect();
/// assert_eq!(sources, ["cats/east.csv", "cats/west.csv"]);
/// # Ok(())
/// # }
/// ```
#[must_use]
pub struct FileGlob {
    root: PathBuf,
    store: DirectoryStore,
    format: FileFormat,
    configure: Option<Configure>,
    /// Each listed partition's path relative to `root`.
    listed: HashMap<String, String>,
}

impl FileGlob {
    /// The files under `root` matching `pattern` (such as `*.jsonl` or `**/*.csv`), read
    /// in `format`.
    ///
    /// # Errors
    ///
    /// [`FileError::InvalidPattern`] for a pattern that is not a valid glob.
    ///
    /// # Panics
    ///
    /// If `format` is [`FileFormat::Delimited`] with `\n`, `\r` or `"`, as
    /// [`FileSource::new`] does.
    #[track_caller]
    pub fn new(root: impl Into<PathBuf>, pattern: &str, format: FileFormat) -> Result<Self, FileError> {
        if let Err(problem) = format.check() {
            panic!("{problem}");
        }
        let root = root.into();
        Ok(FileGlob {
            store: DirectoryStore::new(root.clone(), pattern)?,
            root,
            format,
            configure: None,
            listed: HashMap::new(),
        })
    }

    /// Sets up each file's [`FileSource`] (already reading its path in the format given
    /// to [`new`](Self::new)): follow mode, offsets, line lengths.
    ///
    /// # Examples
    ///
    /// ```
    /// use intake_file::{FileFormat, FileGlob};
    ///
    /// let logs = FileGlob::new("/var/log/app", "**/*.log", FileFormat::Raw)?
    ///     .configure(|file| file.follow(true).offset_every(100));
    /// # let _ = logs;
    /// # Ok::<(), intake_file::FileError>(())
    /// ```
    pub fn configure(mut self, configure: impl Fn(FileSource) -> FileSource + Send + Sync + 'static) -> Self {
        self.configure = Some(Arc::new(configure));
        self
    }
}

/// The name among `names` of which `rotated` is a rotation: the longest that `rotated`
/// extends with a suffix starting with `.`, `-` or `_`, in the same directory
/// (`app.log` for `app.log.1` or `app.log-20241129`), as logrotate names rotations.
fn live_file_of<'a>(rotated: &str, names: impl Iterator<Item = &'a String>) -> Option<&'a str> {
    names
        .filter(|live| {
            rotated.len() > live.len()
                && rotated.starts_with(live.as_str())
                && rotated[live.len()..].starts_with(['.', '-', '_'])
                && !rotated[live.len()..].contains('/')
        })
        .max_by_key(|live| live.len())
        .map(String::as_str)
}

/// A relative path as a partition name: without `/`, and distinct for distinct paths.
fn partition_name(relative: &str) -> String {
    relative.replace('%', "%25").replace('/', "%2F")
}

#[async_trait]
impl PartitionedSource for FileGlob {
    /// Lists the matching files.
    ///
    /// # Errors
    ///
    /// When the directory cannot be listed (it does not exist, or cannot be read).
    async fn list_partitions(&mut self) -> Result<Vec<String>, BoxError> {
        let fragments = self.store.list(&(), None).await?;
        self.listed = fragments
            .into_iter()
            .map(|fragment| (partition_name(&fragment.name), fragment.name))
            .collect();
        Ok(self.listed.keys().cloned().collect())
    }

    /// The file's [`FileSource`]; it resumes from the partition's offset by itself.
    ///
    /// # Errors
    ///
    /// For a partition that was not listed.
    async fn build_partition(
        &mut self,
        partition: &str,
        _resume: Option<&serde_json::Value>,
    ) -> Result<Box<dyn Source>, BoxError> {
        let Some(relative) = self.listed.get(partition) else {
            return Err(format!("no file was listed as partition `{partition}`").into());
        };
        let source = FileSource::new(self.root.join(relative), self.format);
        let source = match &self.configure {
            Some(configure) => configure(source),
            None => source,
        };
        if source.follows()
            && let Some(live) = live_file_of(relative, self.listed.values())
        {
            tracing::warn!(
                root = %self.root.display(),
                rotated = relative.as_str(),
                live,
                "the glob matches a file named like a rotation of another one it matches: in follow mode each is followed at its own path, so after the next rotation the rotated name's partition reads again what the live one read; match only the live files' names (such as `*.log`)"
            );
        }
        Ok(Box::new(source))
    }
}

impl fmt::Debug for FileGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileGlob")
            .field("root", &self.root)
            .field("store", &self.store)
            .field("format", &self.format)
            .field("configured", &self.configure.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotations_are_names_of_the_same_directory_with_a_suffix() {
        let names: Vec<String> = ["app.log", "app.log.1", "app.logger", "x/app.log", "x/app.log/y"]
            .map(String::from)
            .to_vec();
        let live = |rotated| live_file_of(rotated, names.iter());
        assert_eq!(live("app.log.1"), Some("app.log"));
        assert_eq!(live("app.log.2.gz"), Some("app.log"));
        assert_eq!(live("app.log-20241129"), Some("app.log"));
        assert_eq!(live("x/app.log.1"), Some("x/app.log"));
        assert_eq!(live("app.logger"), None);
        assert_eq!(live("x/app.log/y"), None);
        assert_eq!(live("app.log"), None);
    }

    #[test]
    fn partition_names_have_no_slash_and_stay_distinct() {
        assert_eq!(partition_name("a.jsonl"), "a.jsonl");
        assert_eq!(partition_name("2024/jan.jsonl"), "2024%2Fjan.jsonl");
        assert_eq!(partition_name("2024%2Fjan.jsonl"), "2024%252Fjan.jsonl");
        assert_ne!(partition_name("a/b"), partition_name("a%2Fb"));
    }
}
