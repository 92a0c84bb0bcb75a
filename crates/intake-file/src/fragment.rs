//! Fragment sources (Ascend's `context` / `list_objects` / `read_bytes`): a listing of
//! fragments with fingerprints, refreshed on an interval; only new or changed fragments
//! are read, each once per fingerprint, and parsed per fragment.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use intake_core::{BoxError, Message, SendError, Source, SourceContext};
use serde_json::{Value as Json, json};

use crate::error::FileError;
use crate::format::{Decoded, FileFormat, LineDecoder};

/// One piece of data a [`FragmentStore`] lists: an object in a bucket, a file in a
/// directory (Ascend's `list_objects` entry).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Fragment {
    /// Names the fragment; unique within the store.
    pub name: String,
    /// Changes whenever the fragment's content changes (an ETag, size + mtime, a hash).
    pub fingerprint: String,
    /// A prefix (a folder) to list further, rather than data to read. A prefix whose
    /// fingerprint has not changed since it was last listed is not listed again.
    pub is_prefix: bool,
}

impl Fragment {
    /// A fragment of data.
    pub fn new(name: impl Into<String>, fingerprint: impl Into<String>) -> Self {
        Fragment {
            name: name.into(),
            fingerprint: fingerprint.into(),
            is_prefix: false,
        }
    }

    /// A prefix, listed further with [`FragmentStore::list`].
    pub fn prefix(name: impl Into<String>, fingerprint: impl Into<String>) -> Self {
        Fragment {
            is_prefix: true,
            ..Fragment::new(name, fingerprint)
        }
    }
}

/// Where fragments come from: Ascend's custom read connector as a trait.
///
/// | Ascend | intake |
/// |---|---|
/// | `context(credentials)` | [`context`](Self::context), once, before the first listing |
/// | `list_objects(context, metadata)` | [`list`](Self::list), at every refresh (`prefix` is the folder being listed) |
/// | `read_bytes(context, metadata)` | [`read`](Self::read), once per new or changed fragment |
///
/// # Examples
///
/// ```
/// use bytes::Bytes;
/// use intake_core::BoxError;
/// use intake_file::{Fragment, FragmentStore};
///
/// struct Static;
///
/// #[async_trait::async_trait]
/// impl FragmentStore for Static {
///     type Context = ();
///
///     async fn context(&mut self) -> Result<(), BoxError> {
///         Ok(())
///     }
///
///     async fn list(&self, _: &(), _prefix: Option<&Fragment>) -> Result<Vec<Fragment>, BoxError> {
///         Ok(vec![Fragment::new("fragment1", "md51")])
///     }
///
///     async fn read(&self, _: &(), fragment: &Fragment) -> Result<Bytes, BoxError> {
///         Ok(Bytes::from(format!("{{\"name\": \"{}\"}}", fragment.name)))
///     }
/// }
/// ```
#[async_trait]
pub trait FragmentStore: Send + Sync + 'static {
    /// What [`context`](Self::context) sets up (a session, a client, credentials) for
    /// the listings and reads.
    type Context: Send + Sync + 'static;

    /// Sets up the context, once, before the first listing.
    ///
    /// # Errors
    ///
    /// An error fails the source.
    async fn context(&mut self) -> Result<Self::Context, BoxError>;

    /// Lists the fragments at the top level (`prefix` is `None`) or under a prefix
    /// listed before.
    ///
    /// # Errors
    ///
    /// An error is handled as the source's [`FragmentErrorPolicy`] says.
    async fn list(
        &self,
        context: &Self::Context,
        prefix: Option<&Fragment>,
    ) -> Result<Vec<Fragment>, BoxError>;

    /// Reads one fragment whole.
    ///
    /// # Errors
    ///
    /// An error is handled as the source's [`FragmentErrorPolicy`] says.
    async fn read(&self, context: &Self::Context, fragment: &Fragment) -> Result<Bytes, BoxError>;
}

/// A custom parser: gets a fragment's bytes and hands each row, as a JSON object, to
/// the callback (Ascend's `parser_function(reader, onNext)`).
pub type ParseFn = dyn Fn(&[u8], &mut dyn FnMut(Json)) -> Result<(), BoxError> + Send + Sync;

/// How a fragment's bytes become messages.
#[derive(Clone)]
#[non_exhaustive]
pub enum FragmentParser {
    /// The fragment is one JSON document: an object (one row) or an array of objects.
    Json,
    /// The fragment is lines in a [`FileFormat`]: JSON lines, CSV/TSV, raw.
    Lines(FileFormat),
    /// A custom parser function.
    Custom(Arc<ParseFn>),
}

impl FragmentParser {
    /// A custom parser function.
    ///
    /// # Examples
    ///
    /// ```
    /// use intake_file::FragmentParser;
    ///
    /// // Ascend's example: every non-empty line is the `col1` column.
    /// let parser = FragmentParser::custom(|bytes, on_next| {
    ///     for line in std::str::from_utf8(bytes)?.lines().map(str::trim) {
    ///         if !line.is_empty() {
    ///             on_next(serde_json::json!({ "col1": line }));
    ///         }
    ///     }
    ///     Ok(())
    /// });
    /// # let _ = parser;
    /// ```
    pub fn custom<F>(parse: F) -> Self
    where
        F: Fn(&[u8], &mut dyn FnMut(Json)) -> Result<(), BoxError> + Send + Sync + 'static,
    {
        FragmentParser::Custom(Arc::new(parse))
    }

    /// The messages in one fragment.
    fn parse(&self, bytes: &Bytes, ctx: &SourceContext) -> Result<Vec<Decoded>, BoxError> {
        let mut messages = Vec::new();
        match self {
            FragmentParser::Json => match serde_json::from_slice::<Json>(bytes) {
                Ok(Json::Array(items)) => {
                    messages.extend(
                        items
                            .into_iter()
                            .map(|item| Decoded::Message(Message::Json(item))),
                    );
                }
                Ok(item) => messages.push(Decoded::Message(Message::Json(item))),
                // The reader rejects it, with the reason and the bytes.
                Err(_) => messages.push(Decoded::Message(Message::Bytes(bytes.clone()))),
            },
            FragmentParser::Lines(format) => {
                let max_line_length = crate::FileSource::DEFAULT_MAX_LINE_LENGTH;
                let mut decoder = LineDecoder::new(*format, *ctx.schema(), max_line_length)?;
                decoder.decode_all(bytes, |message| messages.push(Decoded::Message(message)));
            }
            FragmentParser::Custom(parse) => {
                parse(bytes, &mut |json| {
                    messages.push(Decoded::Message(Message::Json(json)))
                })?;
            }
        }
        Ok(messages)
    }
}

impl fmt::Debug for FragmentParser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FragmentParser::Json => f.write_str("Json"),
            FragmentParser::Lines(format) => f.debug_tuple("Lines").field(format).finish(),
            FragmentParser::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// What to do when a fragment cannot be listed, read or parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FragmentErrorPolicy {
    /// Fail the source, naming the fragment (Ascend's behaviour).
    #[default]
    Fail,
    /// Log a warning naming the fragment, count it in
    /// [`FragmentStats::skipped`], and go on. A skipped fragment is tried again only
    /// once its fingerprint changes; a failed listing, at the next refresh.
    Skip,
}

/// Counters of a [`FragmentSource`], readable while it runs; see
/// [`FragmentSource::stats`].
#[derive(Debug, Clone, Default)]
pub struct FragmentStats(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    listings: AtomicU64,
    read: AtomicU64,
    skipped: AtomicU64,
}

impl FragmentStats {
    /// Listings (refreshes) completed.
    pub fn listings(&self) -> u64 {
        self.0.listings.load(Ordering::Relaxed)
    }

    /// Fragments read and sent.
    pub fn read(&self) -> u64 {
        self.0.read.load(Ordering::Relaxed)
    }

    /// Fragments (and listings) skipped after an error under
    /// [`FragmentErrorPolicy::Skip`].
    pub fn skipped(&self) -> u64 {
        self.0.skipped.load(Ordering::Relaxed)
    }
}

/// A source of fragments: lists a [`FragmentStore`], reads each new or changed fragment
/// once per fingerprint, parses it with a [`FragmentParser`] and commits it as a whole.
/// Bytewax's `DirSource`, Ascend's custom read connector.
///
/// Without [`refresh_every`](Self::refresh_every) it lists once and ends; with it, it
/// lists again at that interval until the pipeline shuts down.
///
/// A changed fragment is read again whole: in a table with a primary key its rows
/// replace the earlier ones; rows it no longer has are not deleted.
///
/// **Resume**: after each fragment the source reports an offset holding the fingerprint
/// of every fragment read, `{"fragments": {name: fingerprint}}`; given it back through
/// `Reader::resume_from`, it skips those fragments unless they changed.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use intake_core::{Column, DataType, Pipeline, Reader, Schema};
/// use intake_file::{FileFormat, FragmentParser, FragmentSource};
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let schema = Schema::new([
///     Column::new("key", DataType::Int).primary_key(),
///     Column::new("genus", DataType::String),
/// ])?;
/// let source = FragmentSource::directory("data/", "**/*.csv", FragmentParser::Lines(FileFormat::Csv))?
///     .refresh_every(Duration::from_secs(5));
/// let mut pipeline = Pipeline::new();
/// let cats = pipeline.read("cats", source, Reader::json(schema));
/// pipeline.run().await?;
/// # let _ = cats;
/// # Ok(())
/// # }
/// ```
#[must_use]
pub struct FragmentSource<S: FragmentStore> {
    store: S,
    parser: FragmentParser,
    refresh: Option<Duration>,
    policy: FragmentErrorPolicy,
    stats: FragmentStats,
    /// Fingerprints of the fragments (and prefixes) handled, by name.
    seen: HashMap<String, String>,
}

impl FragmentSource<DirectoryStore> {
    /// The files under `root` whose path relative to it matches the glob `pattern`,
    /// fingerprinted by size and modification time.
    ///
    /// # Errors
    ///
    /// [`FileError::InvalidPattern`] for a pattern that is not a valid glob.
    pub fn directory(
        root: impl Into<PathBuf>,
        pattern: &str,
        parser: FragmentParser,
    ) -> Result<Self, FileError> {
        Ok(FragmentSource::new(DirectoryStore::new(root, pattern)?, parser))
    }
}

impl<S: FragmentStore> FragmentSource<S> {
    /// Reads the fragments of `store` with `parser`.
    pub fn new(store: S, parser: FragmentParser) -> Self {
        FragmentSource {
            store,
            parser,
            refresh: None,
            policy: FragmentErrorPolicy::default(),
            stats: FragmentStats::default(),
            seen: HashMap::new(),
        }
    }

    /// Lists again every `interval` until shutdown, instead of once.
    ///
    /// # Panics
    ///
    /// If `interval` is zero.
    #[track_caller]
    pub fn refresh_every(mut self, interval: Duration) -> Self {
        assert!(!interval.is_zero(), "refresh interval must be positive");
        self.refresh = Some(interval);
        self
    }

    /// What to do when listing, reading or parsing fails. Default:
    /// [`FragmentErrorPolicy::Fail`].
    pub fn on_error(mut self, policy: FragmentErrorPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// A handle to the source's counters.
    pub fn stats(&self) -> FragmentStats {
        self.stats.clone()
    }

    /// Handles an error: `Err` fails the source, `Ok` skips.
    fn handle_error(&self, error: FileError) -> Result<(), BoxError> {
        match self.policy {
            FragmentErrorPolicy::Fail => Err(Box::new(error)),
            FragmentErrorPolicy::Skip => {
                tracing::warn!(%error, "skipped");
                self.stats.0.skipped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// Lists everything new or changed: the fragments to read, and the prefixes listed.
    async fn list(&self, context: &S::Context) -> Result<Option<(Vec<Fragment>, Vec<Fragment>)>, BoxError> {
        let mut fragments = Vec::new();
        let mut prefixes = Vec::new();
        let mut pending: Vec<Option<Fragment>> = vec![None];
        while let Some(prefix) = pending.pop() {
            let listed = match self.store.list(context, prefix.as_ref()).await {
                Ok(listed) => listed,
                Err(source) => {
                    let prefix = prefix.map(|p| p.name);
                    self.handle_error(FileError::Listing { prefix, source })?;
                    return Ok(None);
                }
            };
            for fragment in listed {
                if self.seen.get(&fragment.name) == Some(&fragment.fingerprint) {
                    continue;
                }
                if fragment.is_prefix {
                    prefixes.push(fragment.clone());
                    pending.push(Some(fragment));
                } else {
                    fragments.push(fragment);
                }
            }
        }
        fragments.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Some((fragments, prefixes)))
    }

    async fn read_one(
        &mut self,
        context: &S::Context,
        ctx: &SourceContext,
        fragment: Fragment,
    ) -> Result<(), BoxError> {
        let parsed = match self.store.read(context, &fragment).await {
            Ok(bytes) => self
                .parser
                .parse(&bytes, ctx)
                .map_err(|source| FileError::Fragment {
                    name: fragment.name.clone(),
                    source,
                }),
            Err(source) => Err(FileError::Fragment {
                name: fragment.name.clone(),
                source,
            }),
        };
        match parsed {
            Ok(messages) => {
                for message in messages {
                    message.send(ctx).await?;
                }
                ctx.commit().await?;
                self.stats.0.read.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => self.handle_error(error)?,
        }
        self.seen.insert(fragment.name, fragment.fingerprint);
        ctx.report_offset(json!({ "fragments": self.seen })).await?;
        Ok(())
    }

    async fn run_inner(&mut self, ctx: &SourceContext) -> Result<(), BoxError> {
        if let Some(fragments) = ctx.resume_offset().and_then(|offset| offset.get("fragments")) {
            let fragments: HashMap<String, String> = serde_json::from_value(fragments.clone())
                .map_err(|e| format!("resume offset is not one a FragmentSource reported: {e}"))?;
            self.seen.extend(fragments);
        }
        let context = self.store.context().await?;
        loop {
            if let Some((fragments, prefixes)) = self.list(&context).await? {
                for fragment in fragments {
                    if ctx.is_cancelled() {
                        return Ok(());
                    }
                    self.read_one(&context, ctx, fragment).await?;
                }
                for prefix in prefixes {
                    self.seen.insert(prefix.name, prefix.fingerprint);
                }
                self.stats.0.listings.fetch_add(1, Ordering::Relaxed);
            }
            let Some(interval) = self.refresh else {
                return Ok(());
            };
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = ctx.cancelled() => return Ok(()),
            }
        }
    }
}

#[async_trait]
impl<S: FragmentStore> Source for FragmentSource<S> {
    async fn run(&mut self, ctx: SourceContext) -> Result<(), BoxError> {
        match self.run_inner(&ctx).await {
            Err(e) if matches!(e.downcast_ref::<SendError>(), Some(SendError::ShuttingDown)) => Ok(()),
            result => result,
        }
    }
}

impl<S: FragmentStore> fmt::Debug for FragmentSource<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FragmentSource")
            .field("parser", &self.parser)
            .field("refresh", &self.refresh)
            .field("policy", &self.policy)
            .field("seen", &self.seen.len())
            .finish_non_exhaustive()
    }
}

/// The files of a directory (recursively) whose path relative to it matches a glob, as
/// fragments named by that relative path (with `/` separators).
#[derive(Debug, Clone)]
pub struct DirectoryStore {
    root: PathBuf,
    pattern: globset::GlobMatcher,
    content_hash: bool,
}

impl DirectoryStore {
    /// The files under `root` matching `pattern` (such as `*.jsonl` or `**/*.csv`).
    ///
    /// # Errors
    ///
    /// [`FileError::InvalidPattern`] for a pattern that is not a valid glob.
    pub fn new(root: impl Into<PathBuf>, pattern: &str) -> Result<Self, FileError> {
        let glob = globset::GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|source| FileError::InvalidPattern {
                pattern: pattern.to_owned(),
                source,
            })?;
        Ok(DirectoryStore {
            root: root.into(),
            pattern: glob.compile_matcher(),
            content_hash: false,
        })
    }

    /// Fingerprints files by a hash of their content instead of size and modification
    /// time: every file is read at every listing, but a rewrite with the same size
    /// within the file system's timestamp resolution is noticed. Default: off.
    pub fn content_hash(mut self, content_hash: bool) -> Self {
        self.content_hash = content_hash;
        self
    }

    fn list_blocking(&self) -> Result<Vec<Fragment>, BoxError> {
        let mut fragments = Vec::new();
        let mut directories = vec![self.root.clone()];
        while let Some(directory) = directories.pop() {
            let entries = std::fs::read_dir(&directory)
                .map_err(|e| format!("cannot list {}: {e}", directory.display()))?;
            for entry in entries {
                let entry = entry?;
                let path = entry.path();
                let metadata = std::fs::metadata(&path)?;
                if metadata.is_dir() {
                    directories.push(path);
                    continue;
                }
                let Some(name) = relative_name(&self.root, &path) else {
                    continue;
                };
                if !self.pattern.is_match(&name) {
                    continue;
                }
                let fingerprint = if self.content_hash {
                    let content = std::fs::read(&path)?;
                    format!("fnv:{:016x}", crate::fnv1a(&content))
                } else {
                    let modified = metadata
                        .modified()?
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_nanos();
                    format!("{}:{modified}", metadata.len())
                };
                fragments.push(Fragment::new(name, fingerprint));
            }
        }
        Ok(fragments)
    }
}

fn relative_name(root: &Path, path: &Path) -> Option<String> {
    let relative = path.strip_prefix(root).ok()?;
    let parts: Option<Vec<&str>> = relative.components().map(|c| c.as_os_str().to_str()).collect();
    Some(parts?.join("/"))
}

#[async_trait]
impl FragmentStore for DirectoryStore {
    type Context = ();

    async fn context(&mut self) -> Result<(), BoxError> {
        Ok(())
    }

    async fn list(&self, _: &(), _prefix: Option<&Fragment>) -> Result<Vec<Fragment>, BoxError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.list_blocking()).await?
    }

    async fn read(&self, _: &(), fragment: &Fragment) -> Result<Bytes, BoxError> {
        Ok(Bytes::from(
            tokio::fs::read(self.root.join(&fragment.name)).await?,
        ))
    }
}
