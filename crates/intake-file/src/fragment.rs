//! Fragment sources (Ascend's `context` / `list_objects` / `read_bytes`): a listing of
//! fragments with fingerprints, refreshed on an interval; only new or changed fragments
//! are read, each once per fingerprint, and parsed per fragment.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use intake_core::{BoxError, Location, Message, SendError, Source, SourceContext};
use serde_json::{Map, Value as Json, json};
use tokio::time::Instant;

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
    /// fingerprint has not changed since everything under it was read is not listed
    /// again.
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
    /// An error is handled as the source's [`FragmentErrorPolicy`] says, except a
    /// [`std::io::Error`] of kind `NotFound`: the fragment was deleted since it was
    /// listed, and is passed over as if it had not been listed.
    async fn read(&self, context: &Self::Context, fragment: &Fragment) -> Result<Bytes, BoxError>;

    /// How long a new or changed fragment must keep its fingerprint before it is read,
    /// when the source does not set [`FragmentSource::settle_time`]. Zero (the default)
    /// reads it at the first listing that shows it: right for stores whose fragments
    /// appear whole, such as objects in a bucket. A store whose fragments are written in
    /// place, such as files ([`DirectoryStore`]), returns a time that a writer pausing
    /// between writes is unlikely to exceed.
    fn default_settle_time(&self) -> Duration {
        Duration::ZERO
    }
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
    fn parse(&self, bytes: &Bytes, ctx: &SourceContext) -> Result<Vec<Parsed>, BoxError> {
        let mut messages = Vec::new();
        match self {
            FragmentParser::Json => match serde_json::from_slice::<Json>(bytes) {
                Ok(Json::Array(items)) => {
                    messages.extend(items.into_iter().map(|item| Parsed::whole(Message::Json(item))));
                }
                Ok(item) => messages.push(Parsed::whole(Message::Json(item))),
                // The reader rejects it, with the reason and the bytes.
                Err(_) => messages.push(Parsed::whole(Message::Bytes(bytes.clone()))),
            },
            FragmentParser::Lines(format) => {
                let max_line_length = crate::FileSource::DEFAULT_MAX_LINE_LENGTH;
                let mut decoder = LineDecoder::new(*format, ctx.schema().clone(), max_line_length)?;
                decoder.decode_all(bytes, |decoded| {
                    messages.push(Parsed {
                        line: Some(decoded.line),
                        decoded,
                    });
                });
            }
            FragmentParser::Custom(parse) => {
                parse(bytes, &mut |json| {
                    messages.push(Parsed::whole(Message::Json(json)))
                })?;
            }
        }
        Ok(messages)
    }
}

/// A message of a fragment, with its line when the fragment is read as lines.
struct Parsed {
    decoded: Decoded,
    line: Option<u64>,
}

impl Parsed {
    /// A message of a fragment not read as lines.
    fn whole(message: Message) -> Self {
        Parsed {
            decoded: Decoded {
                message,
                line: 0,
                arrived: None,
            },
            line: None,
        }
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
///
/// Like every stats handle of intake (`TableStats`, `SourceStats`), it is cheap to
/// clone, each getter reads the figure as it is now, and it serializes (with serde)
/// to an object of the figures. Messages, bytes and rejections are counted for every
/// source by the table: see `TableStats::sources`.
#[derive(Debug, Clone, Default)]
pub struct FragmentStats(Arc<Counters>);

impl serde::Serialize for FragmentStats {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("FragmentStats", 3)?;
        s.serialize_field("listings", &self.listings())?;
        s.serialize_field("read", &self.read())?;
        s.serialize_field("skipped", &self.skipped())?;
        s.end()
    }
}

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
/// Without [`refresh_every`](Self::refresh_every) it lists once, reads what it found
/// (waiting for fragments still settling, see below) and ends; with it, it lists again
/// at that interval until the pipeline shuts down. Fragments are read in name order.
///
/// A changed fragment is read again whole: in a table with a primary key its rows
/// replace the earlier ones; rows it no longer has are not deleted.
///
/// **Settling.** A new or changed fragment is read only once its fingerprint has stayed
/// the same for the [settle time](Self::settle_time), as seen by listings at least that
/// far apart: a file still being written is read once, after its writer has paused for
/// that long, instead of at every listing that catches it growing. A fragment waiting
/// to settle makes the source list again as soon as its settle time has passed, with or
/// without `refresh_every`, so a one-shot source reads every fragment exactly once,
/// after it settles, and then ends. The default is the store's
/// [`default_settle_time`](FragmentStore::default_settle_time): one second for a
/// [`DirectoryStore`], zero for a store that does not say. A writer that pauses for
/// longer than the settle time in the middle of a file still has it read twice; for a
/// guarantee, write under another name and rename the finished file into the pattern.
///
/// **Deleted fragments** are forgotten: a fragment (or prefix) that a listing of its
/// prefix (or of the top level) no longer shows is dropped from the source's memory and
/// from its offset, with everything listed under it. A prefix that was not listed again
/// because its fingerprint did not change keeps what is under it. A fragment that comes
/// back after being forgotten is new again, and read again.
///
/// **Resume.** The source [reports](SourceContext::report_offset) the fingerprint of
/// every fragment it read, and of every prefix whose fragments it read in full:
///
/// ```json
/// {"fragments": {"a.csv": "18:1700000000", "folder/": "f1", "folder/b.csv": "9:1700000001"},
///  "parents": {"folder/b.csv": "folder/"},
///  "partial": [{"name": "c.csv", "fingerprint": "4096:1700000002", "sent": 120}]}
/// ```
///
/// Given back through `Reader::resume_from`, it skips those fragments unless they
/// changed. Writing that whole map after every fragment would make `n` fragments cost
/// `O(n²)`, so the source reports it after every fragment only while it knows at most
/// 256; beyond that, once the fragments read since the last report reach a sixteenth
/// of those it knows (each report of `n` entries is paid for by `n / 16` reads, a
/// constant cost per fragment). It always reports at the end of a listing that changed
/// anything, and when the pipeline shuts down.
///
/// - After a **clean stop** (the listing ended, or the pipeline shut down at any
///   moment), a resume reads nothing twice and loses nothing: a fragment cut short by
///   the shutdown is recorded in `partial` with how many of its messages were sent, and
///   the resume skips exactly those if its fingerprint is unchanged (this relies on the
///   parser making the same messages from the same bytes). If it changed, it is read
///   again whole.
/// - After a **crash**, the fragments read since the last report are read again: none
///   while the source knows at most 256 fragments, otherwise fewer than a sixteenth of
///   those it knows, plus the one it was reading. In a table with a primary key that
///   only repeats rows; an append table gets them twice.
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
    /// `None`: the store's default.
    settle: Option<Duration>,
    policy: FragmentErrorPolicy,
    stats: FragmentStats,
    /// What was read, and whether the last offset reported covers it.
    ledger: Ledger,
    /// New or changed fragments waiting for their fingerprint to settle, by name.
    unsettled: HashMap<String, Unsettled>,
    /// Fragments whose first messages were sent but which were not finished: from the
    /// resume offset (until the first listing is read), or cut short by a shutdown.
    partials: Vec<Partial>,
}

impl FragmentSource<DirectoryStore> {
    /// The files under `root` whose path relative to it matches the glob `pattern`,
    /// fingerprinted by size and modification time, read once they have not changed for
    /// [`DirectoryStore::DEFAULT_SETTLE_TIME`] (see [`settle_time`](Self::settle_time)).
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

/// While the source knows at most this many fragments, it reports its offset after
/// every fragment: cheap at that size, and nothing is read twice after a crash.
const REPORT_EVERY_FRAGMENT_UP_TO: usize = 256;

/// Beyond that, it reports once the fragments read since the last report reach
/// `1 / REPORT_FRACTION` of those it knows.
const REPORT_FRACTION: usize = 16;

impl<S: FragmentStore> FragmentSource<S> {
    /// Reads the fragments of `store` with `parser`.
    pub fn new(store: S, parser: FragmentParser) -> Self {
        FragmentSource {
            store,
            parser,
            refresh: None,
            settle: None,
            policy: FragmentErrorPolicy::default(),
            stats: FragmentStats::default(),
            ledger: Ledger::default(),
            unsettled: HashMap::new(),
            partials: Vec::new(),
        }
    }

    /// Lists again every `interval` until shutdown, instead of once. A duration too
    /// large to add to the current time (such as `Duration::MAX`) lists once and then
    /// waits for the shutdown.
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

    /// How long a new or changed fragment must keep the same fingerprint, across
    /// listings, before it is read (see the type's docs). Zero reads it at the first
    /// listing that shows it; a duration too large to add to the current time (such as
    /// `Duration::MAX`) never reads a new or changed fragment. Default: the store's
    /// [`default_settle_time`](FragmentStore::default_settle_time).
    pub fn settle_time(mut self, settle: Duration) -> Self {
        self.settle = Some(settle);
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

    fn effective_settle_time(&self) -> Duration {
        self.settle.unwrap_or_else(|| self.store.default_settle_time())
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

    /// Whether `fragment` may be read now: it kept its fingerprint for the settle time.
    fn is_settled(&self, fragment: &Fragment, now: Instant, settle: Duration) -> bool {
        if settle.is_zero() || self.partial_of(fragment).is_some() {
            // A fragment cut short had settled when it was first read.
            return true;
        }
        self.unsettled.get(&fragment.name).is_some_and(|unsettled| {
            unsettled.fingerprint == fragment.fingerprint
                && unsettled
                    .since
                    .checked_add(settle)
                    .is_some_and(|settled_at| settled_at <= now)
        })
    }

    fn partial_of(&self, fragment: &Fragment) -> Option<usize> {
        self.partials
            .iter()
            .position(|p| p.name == fragment.name && p.fingerprint == fragment.fingerprint)
    }

    /// Lists the store (under every prefix that is new or changed), forgets what is no
    /// longer listed, and sorts what is new or changed into fragments ready to read and
    /// fragments still settling. `None` when a listing failed and was skipped.
    async fn list(&mut self, context: &S::Context, ctx: &SourceContext) -> Result<Option<Round>, BoxError> {
        let settle = self.effective_settle_time();
        let now = Instant::now();
        let mut listed_under: HashSet<Parent> = HashSet::new();
        let mut listed: HashSet<String> = HashSet::new();
        let mut ready = Vec::new();
        let mut prefixes = Vec::new();
        let mut prefix_parents: HashMap<Arc<str>, Parent> = HashMap::new();
        let mut unsettled = HashMap::new();
        let mut unsettled_under: HashSet<Parent> = HashSet::new();
        let mut to_list: Vec<Option<(Fragment, Arc<str>)>> = vec![None];
        while let Some(prefix) = to_list.pop() {
            let parent = match &prefix {
                None => Parent::Top,
                Some((_, name)) => Parent::Prefix(name.clone()),
            };
            let listing = tokio::select! {
                listing = self.store.list(context, prefix.as_ref().map(|(fragment, _)| fragment)) => listing,
                () = ctx.cancelled() => return Err(stopping()),
            };
            let listing = match listing {
                Ok(listing) => listing,
                Err(source) => {
                    let prefix = prefix.map(|(fragment, _)| fragment.name);
                    self.handle_error(FileError::Listing { prefix, source })?;
                    return Ok(None);
                }
            };
            for fragment in listing {
                if !listed.insert(fragment.name.clone()) {
                    tracing::warn!(fragment = %fragment.name, "listed twice in one listing; the second is ignored");
                    continue;
                }
                self.ledger.relist(&fragment.name, &parent);
                if self.ledger.is_handled(&fragment) {
                    continue;
                }
                if fragment.is_prefix {
                    let name: Arc<str> = Arc::from(fragment.name.as_str());
                    prefix_parents.insert(name.clone(), parent.clone());
                    prefixes.push(Listed {
                        fragment: fragment.clone(),
                        parent: parent.clone(),
                    });
                    to_list.push(Some((fragment, name)));
                } else if self.is_settled(&fragment, now, settle) {
                    ready.push(Listed {
                        fragment,
                        parent: parent.clone(),
                    });
                } else {
                    let since = match self.unsettled.get(&fragment.name) {
                        Some(seen) if seen.fingerprint == fragment.fingerprint => seen.since,
                        _ => now,
                    };
                    unsettled_under.insert(parent.clone());
                    unsettled.insert(
                        fragment.name,
                        Unsettled {
                            fingerprint: fragment.fingerprint,
                            since,
                        },
                    );
                }
            }
            listed_under.insert(parent);
        }
        self.ledger.forget_unlisted(&listed_under, &listed);
        let wake = unsettled
            .values()
            .filter_map(|u: &Unsettled| u.since.checked_add(settle))
            .min();
        let settling = !unsettled.is_empty();
        self.unsettled = unsettled;
        // A prefix is recorded (and so not listed again while its fingerprint holds)
        // only once everything under it, at any depth, has been read.
        let mut incomplete: HashSet<Arc<str>> = HashSet::new();
        let mut climb: Vec<Parent> = unsettled_under.into_iter().collect();
        while let Some(parent) = climb.pop() {
            if let Parent::Prefix(name) = parent
                && incomplete.insert(name.clone())
                && let Some(up) = prefix_parents.get(&name)
            {
                climb.push(up.clone());
            }
        }
        let complete = prefixes
            .into_iter()
            .filter(|prefix| !incomplete.contains(prefix.fragment.name.as_str()))
            .collect();
        ready.sort_by(|a, b| a.fragment.name.cmp(&b.fragment.name));
        Ok(Some(Round {
            ready,
            complete,
            settling: settling.then_some(wake),
        }))
    }

    /// Reads, parses and sends one fragment, then commits it.
    async fn read_one(
        &mut self,
        context: &S::Context,
        ctx: &SourceContext,
        listed: Listed,
    ) -> Result<(), BoxError> {
        let Listed { fragment, parent } = listed;
        let read = tokio::select! {
            read = self.store.read(context, &fragment) => read,
            () = ctx.cancelled() => return Err(stopping()),
        };
        let parsed = match read {
            Ok(bytes) => self
                .parser
                .parse(&bytes, ctx)
                .map_err(|source| FileError::Fragment {
                    name: fragment.name.clone(),
                    source,
                }),
            Err(source) if is_not_found(source.as_ref()) => {
                // Deleted since it was listed: the next listing forgets it.
                tracing::debug!(fragment = %fragment.name, "the fragment disappeared before it was read");
                return Ok(());
            }
            Err(source) => Err(FileError::Fragment {
                name: fragment.name.clone(),
                source,
            }),
        };
        let already_sent = self
            .partial_of(&fragment)
            .map_or(0, |i| self.partials.swap_remove(i).sent);
        match parsed {
            Ok(messages) => {
                let skip = usize::try_from(already_sent).unwrap_or(usize::MAX);
                // `sent`: how many of the fragment's messages were sent before this one.
                for (sent, parsed) in (already_sent..).zip(messages.into_iter().skip(skip)) {
                    let Parsed { decoded, line } = parsed;
                    // The location is made only if the message is rejected.
                    let locate = || Location::fragment(fragment.name.as_str(), line);
                    let result = match decoded.arrived {
                        Some(raw) => ctx.send_decoded(decoded.message, raw, locate).await,
                        None => ctx.send_located(decoded.message, locate).await,
                    };
                    if let Err(error) = result {
                        // Whatever stops the source here, what was sent stays sent: the
                        // offset reported on the way out says so.
                        if sent > 0 {
                            self.partials.push(Partial {
                                name: fragment.name,
                                fingerprint: fragment.fingerprint,
                                sent,
                            });
                            self.ledger.unreported += 1;
                        }
                        return Err(error.into());
                    }
                }
                self.stats.0.read.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => self.handle_error(error)?,
        }
        self.ledger.record(fragment.name, fragment.fingerprint, parent);
        // Reported before the commit marker, so the offset lands in the same commit as
        // the fragment's rows.
        if self.ledger.report_due() {
            self.report(ctx).await?;
        }
        ctx.commit().await?;
        Ok(())
    }

    /// Reports the whole ledger, with any fragment cut short.
    async fn report(&mut self, ctx: &SourceContext) -> Result<(), SendError> {
        ctx.report_offset(self.ledger.offset(&self.partials)).await?;
        self.ledger.unreported = 0;
        Ok(())
    }

    async fn run_inner(&mut self, ctx: &SourceContext) -> Result<(), BoxError> {
        if let Some(offset) = ctx.resume_offset() {
            let (ledger, partials) = Ledger::from_offset(offset)
                .map_err(|e| format!("resume offset is not one a FragmentSource reported: {e}"))?;
            self.ledger = ledger;
            self.partials = partials;
        }
        let context = tokio::select! {
            context = self.store.context() => context?,
            () = ctx.cancelled() => return Err(stopping()),
        };
        loop {
            let settling = match self.list(&context, ctx).await? {
                Some(round) => {
                    for listed in round.ready {
                        if ctx.is_cancelled() {
                            return Err(stopping());
                        }
                        self.read_one(&context, ctx, listed).await?;
                    }
                    for Listed { fragment, parent } in round.complete {
                        self.ledger.record(fragment.name, fragment.fingerprint, parent);
                    }
                    // A fragment cut short before the resume that this listing did not
                    // finish is gone or changed: it would be read whole anyway.
                    if !self.partials.is_empty() {
                        self.partials.clear();
                        self.ledger.unreported += 1;
                    }
                    if self.ledger.unreported > 0 {
                        self.report(ctx).await?;
                        ctx.commit().await?;
                    }
                    self.stats.0.listings.fetch_add(1, Ordering::Relaxed);
                    round.settling
                }
                None => None,
            };
            let refresh = self.refresh.map(|interval| Instant::now().checked_add(interval));
            let next = match (refresh, settling) {
                (None, None) => return Ok(()),
                (refresh, settling) => [refresh.flatten(), settling.flatten()]
                    .into_iter()
                    .flatten()
                    .min(),
            };
            tokio::select! {
                () = sleep_until(next) => {}
                () = ctx.cancelled() => return Err(stopping()),
            }
        }
    }
}

#[async_trait]
impl<S: FragmentStore> Source for FragmentSource<S> {
    /// Its offsets are exact, so its messages are committed only with one.
    fn reports_offsets(&self) -> bool {
        true
    }

    async fn run(&mut self, ctx: SourceContext) -> Result<(), BoxError> {
        let result = self.run_inner(&ctx).await;
        if self.ledger.unreported > 0 {
            // Stopped early (shut down or failed): what was sent since the last report,
            // down to the last message of a fragment cut short, is recorded, so a resume
            // neither repeats it nor skips anything. Offsets are accepted during shutdown
            // until its deadline.
            if let Err(error) = self.report(&ctx).await {
                tracing::warn!(%error, source = ctx.name(), "could not report the offset on the way out; a resume reads again what was read since the last one");
            }
        }
        match result {
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
            .field("settle", &self.settle)
            .field("policy", &self.policy)
            .field("known", &self.ledger.known.len())
            .field("unsettled", &self.unsettled.len())
            .finish_non_exhaustive()
    }
}

/// The error that unwinds the source when the pipeline shuts down.
fn stopping() -> BoxError {
    Box::new(SendError::ShuttingDown)
}

fn is_not_found(error: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound)
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What one listing found.
struct Round {
    /// New or changed fragments that settled, in name order.
    ready: Vec<Listed>,
    /// New or changed prefixes with nothing under them still settling: recorded once the
    /// ready fragments are read.
    complete: Vec<Listed>,
    /// `Some` when fragments are still settling: when the first of them settles, if
    /// ever.
    settling: Option<Option<Instant>>,
}

/// A fragment and where it was listed.
struct Listed {
    fragment: Fragment,
    parent: Parent,
}

/// A new or changed fragment waiting for its fingerprint to settle.
#[derive(Debug)]
struct Unsettled {
    fingerprint: String,
    /// When a listing first showed this fingerprint.
    since: Instant,
}

/// A fragment cut short: its first `sent` messages were sent.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Partial {
    name: String,
    fingerprint: String,
    sent: u64,
}

/// Where a fragment or prefix was listed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Parent {
    /// At the top level.
    Top,
    /// Under this prefix.
    Prefix(Arc<str>),
    /// Not known yet: from an offset written before parents were recorded. It is
    /// forgotten only after a listing shows where it is.
    Unknown,
}

/// What the source has handled: the fingerprint of each fragment read (or skipped) and
/// of each prefix whose fragments were all read, with where each was listed.
#[derive(Debug, Default)]
struct Ledger {
    known: HashMap<String, Known>,
    /// Changes since the ledger was last reported.
    unreported: usize,
}

#[derive(Debug)]
struct Known {
    fingerprint: String,
    parent: Parent,
}

impl Ledger {
    fn is_handled(&self, fragment: &Fragment) -> bool {
        self.known
            .get(&fragment.name)
            .is_some_and(|known| known.fingerprint == fragment.fingerprint)
    }

    fn record(&mut self, name: String, fingerprint: String, parent: Parent) {
        self.known.insert(name, Known { fingerprint, parent });
        self.unreported += 1;
    }

    /// Notes that `name` is now listed under `parent`.
    fn relist(&mut self, name: &str, parent: &Parent) {
        if let Some(known) = self.known.get_mut(name)
            && known.parent != *parent
        {
            known.parent = parent.clone();
            self.unreported += 1;
        }
    }

    /// Forgets what the listings under `listed_under` no longer show, and everything
    /// listed under a prefix forgotten that way.
    fn forget_unlisted(&mut self, listed_under: &HashSet<Parent>, listed: &HashSet<String>) {
        let mut gone: Vec<String> = self
            .known
            .iter()
            .filter(|(name, known)| listed_under.contains(&known.parent) && !listed.contains(name.as_str()))
            .map(|(name, _)| name.clone())
            .collect();
        while !gone.is_empty() {
            self.unreported += gone.len();
            let prefixes: HashSet<Parent> = gone
                .into_iter()
                .map(|name| {
                    self.known.remove(&name);
                    Parent::Prefix(Arc::from(name))
                })
                .collect();
            gone = self
                .known
                .iter()
                .filter(|(_, known)| prefixes.contains(&known.parent))
                .map(|(name, _)| name.clone())
                .collect();
        }
    }

    /// Whether the ledger should be reported now, after a fragment was read: each
    /// report of `n` entries follows at least `n / REPORT_FRACTION` changes.
    fn report_due(&self) -> bool {
        self.unreported > 0
            && (self.known.len() <= REPORT_EVERY_FRAGMENT_UP_TO
                || self.unreported.saturating_mul(REPORT_FRACTION) >= self.known.len())
    }

    fn offset(&self, partials: &[Partial]) -> Json {
        let mut fragments = Map::new();
        let mut parents = Map::new();
        for (name, known) in &self.known {
            fragments.insert(name.clone(), Json::String(known.fingerprint.clone()));
            match &known.parent {
                Parent::Top => {}
                Parent::Prefix(prefix) => {
                    parents.insert(name.clone(), Json::String(prefix.to_string()));
                }
                Parent::Unknown => {
                    parents.insert(name.clone(), Json::Null);
                }
            }
        }
        let partials = partials
            .iter()
            .map(|p| json!({ "name": p.name, "fingerprint": p.fingerprint, "sent": p.sent }))
            .collect();
        json!({
            "fragments": Json::Object(fragments),
            "parents": Json::Object(parents),
            "partial": Json::Array(partials),
        })
    }

    /// The ledger and partial fragments in an offset that [`offset`](Self::offset)
    /// made. An offset without `parents` (from an earlier version) leaves where each
    /// fragment was listed unknown until the next listing.
    fn from_offset(offset: &Json) -> Result<(Ledger, Vec<Partial>), String> {
        let fragments = offset
            .get("fragments")
            .and_then(Json::as_object)
            .ok_or("it has no `fragments` object")?;
        let parents = match offset.get("parents") {
            None => None,
            Some(Json::Object(parents)) => Some(parents),
            Some(_) => return Err("`parents` is not an object".into()),
        };
        let mut prefixes: HashMap<&str, Arc<str>> = HashMap::new();
        let mut known = HashMap::with_capacity(fragments.len());
        for (name, fingerprint) in fragments {
            let fingerprint = fingerprint
                .as_str()
                .ok_or_else(|| format!("the fingerprint of `{name}` is not a string"))?;
            let parent = match parents.map(|parents| parents.get(name)) {
                None | Some(Some(Json::Null)) => Parent::Unknown,
                Some(None) => Parent::Top,
                Some(Some(Json::String(prefix))) => Parent::Prefix(
                    prefixes
                        .entry(prefix.as_str())
                        .or_insert_with(|| Arc::from(prefix.as_str()))
                        .clone(),
                ),
                Some(Some(_)) => return Err(format!("the parent of `{name}` is not a string")),
            };
            known.insert(
                name.clone(),
                Known {
                    fingerprint: fingerprint.to_owned(),
                    parent,
                },
            );
        }
        let partials = match offset.get("partial") {
            None | Some(Json::Null) => Vec::new(),
            Some(Json::Array(partials)) => partials
                .iter()
                .map(|p| {
                    Some(Partial {
                        name: p.get("name")?.as_str()?.to_owned(),
                        fingerprint: p.get("fingerprint")?.as_str()?.to_owned(),
                        sent: p.get("sent")?.as_u64()?,
                    })
                })
                .collect::<Option<Vec<_>>>()
                .ok_or("`partial` holds an entry without a name, fingerprint and count")?,
            Some(_) => return Err("`partial` is not an array".into()),
        };
        let ledger = Ledger { known, unreported: 0 };
        Ok((ledger, partials))
    }
}

/// The files of a directory (recursively) whose path relative to it matches a glob, as
/// fragments named by that relative path (with `/` separators).
///
/// Symbolic links are followed, to files and to directories; a directory reached twice
/// (through a link to it, or a link cycle) is listed once. A file or directory that
/// disappears while it is listed, or a link that points nowhere, is passed over, and
/// so is anything that is not a regular file (a FIFO, socket or device: reading one
/// could block a thread past shutdown).
#[derive(Debug, Clone)]
pub struct DirectoryStore {
    root: PathBuf,
    pattern: globset::GlobMatcher,
    content_hash: bool,
}

impl DirectoryStore {
    /// How long a file must keep its size and modification time (or content, with
    /// [`content_hash`](Self::content_hash)) before a [`FragmentSource`] reads it,
    /// unless the source sets [`settle_time`](FragmentSource::settle_time): long enough
    /// that a file written in pieces is read once, when finished, by a writer that does
    /// not pause for longer between pieces.
    pub const DEFAULT_SETTLE_TIME: Duration = Duration::from_secs(1);

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
                reason: source.kind().to_string(),
                source: Box::new(source),
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
        let mut visited = HashSet::new();
        let mut directories = vec![self.root.clone()];
        while let Some(directory) = directories.pop() {
            let is_root = directory == self.root;
            // A directory reached again through a link would list its files again,
            // under other names, forever in a cycle.
            match std::fs::canonicalize(&directory) {
                Ok(canonical) => {
                    if !visited.insert(canonical) {
                        continue;
                    }
                }
                Err(e) if !is_root && e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("cannot list {}: {e}", directory.display()).into()),
            }
            let entries = match std::fs::read_dir(&directory) {
                Ok(entries) => entries,
                Err(e) if !is_root && e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("cannot list {}: {e}", directory.display()).into()),
            };
            for entry in entries {
                let path = entry?.path();
                let metadata = match std::fs::metadata(&path) {
                    Ok(metadata) => metadata,
                    // Deleted since the directory was read, or a dangling link.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        return Err(format!("cannot read the metadata of {}: {e}", path.display()).into());
                    }
                };
                if metadata.is_dir() {
                    directories.push(path);
                    continue;
                }
                // A FIFO blocks its reader until a writer comes (and a device may
                // never end): reading one would hold a thread past shutdown.
                if !metadata.is_file() {
                    continue;
                }
                let Some(name) = relative_name(&self.root, &path) else {
                    continue;
                };
                if !self.pattern.is_match(&name) {
                    continue;
                }
                let fingerprint = if self.content_hash {
                    match std::fs::read(&path) {
                        Ok(content) => format!("fnv:{:016x}", crate::fnv1a(&content)),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(format!("cannot read {}: {e}", path.display()).into()),
                    }
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

    fn default_settle_time(&self) -> Duration {
        DirectoryStore::DEFAULT_SETTLE_TIME
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_reports_cost_a_constant_per_fragment() {
        const FRAGMENTS: usize = 100_000;
        let mut ledger = Ledger::default();
        let mut reports = 0;
        let mut entries_reported = 0;
        for i in 0..FRAGMENTS {
            ledger.record(format!("f{i}"), "1".into(), Parent::Top);
            if ledger.report_due() {
                reports += 1;
                entries_reported += ledger.known.len();
                ledger.unreported = 0;
            }
        }
        // Every fragment up to 256, then at each 1/16 growth: about 256 + 16 ln(n/256).
        assert!(reports < 256 + 16 * 7, "{reports} reports");
        assert!(
            entries_reported <= (REPORT_FRACTION + 1) * FRAGMENTS + REPORT_EVERY_FRAGMENT_UP_TO.pow(2),
            "{entries_reported} entries reported for {FRAGMENTS} fragments"
        );
    }

    #[test]
    fn an_offset_round_trips_with_parents_and_partial_fragments() {
        let mut ledger = Ledger::default();
        let folder: Arc<str> = Arc::from("folder/");
        ledger.record("a".into(), "1".into(), Parent::Top);
        ledger.record("folder/".into(), "f1".into(), Parent::Top);
        ledger.record("folder/b".into(), "2".into(), Parent::Prefix(folder.clone()));
        ledger.record("old".into(), "3".into(), Parent::Unknown);
        let partials = vec![Partial {
            name: "c".into(),
            fingerprint: "4".into(),
            sent: 120,
        }];
        let offset = ledger.offset(&partials);
        assert_eq!(
            offset,
            json!({
                "fragments": {"a": "1", "folder/": "f1", "folder/b": "2", "old": "3"},
                "parents": {"folder/b": "folder/", "old": null},
                "partial": [{"name": "c", "fingerprint": "4", "sent": 120}],
            })
        );
        let (resumed, resumed_partials) = Ledger::from_offset(&offset).unwrap();
        assert_eq!(resumed_partials, partials);
        assert_eq!(resumed.known.len(), 4);
        assert_eq!(resumed.known["a"].parent, Parent::Top);
        assert_eq!(resumed.known["folder/b"].parent, Parent::Prefix(folder));
        assert_eq!(resumed.known["old"].parent, Parent::Unknown);
        assert_eq!(resumed.offset(&partials), offset);
    }

    #[test]
    fn an_offset_of_an_earlier_version_leaves_parents_unknown() {
        let (ledger, partials) = Ledger::from_offset(&json!({"fragments": {"a": "1"}})).unwrap();
        assert!(partials.is_empty());
        assert_eq!(ledger.known["a"].parent, Parent::Unknown);
        // Not forgotten by a listing that does not show where it is.
        let mut ledger = ledger;
        ledger.forget_unlisted(&HashSet::from([Parent::Top]), &HashSet::new());
        assert!(ledger.known.contains_key("a"));
    }

    #[test]
    fn malformed_offsets_are_refused() {
        for offset in [
            json!({"path": "cats.csv"}),
            json!({"fragments": {"a": 1}}),
            json!({"fragments": {}, "parents": []}),
            json!({"fragments": {}, "partial": [{"name": "a"}]}),
        ] {
            assert!(Ledger::from_offset(&offset).is_err(), "{offset}");
        }
    }
}
