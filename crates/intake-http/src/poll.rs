//! The polling source: requests URLs on an interval and sends their records.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use intake_core::{BoxError, Delays, Location, Reconnect, SendError, Source, SourceContext};
use reqwest::header::{
    ETAG, HeaderMap, HeaderName, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, RETRY_AFTER,
};
use reqwest::{StatusCode, Url};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::error::{HttpError, RequestFailed};
use crate::link::find_link;
use crate::records::{Records, locate};
use crate::request::RequestSettings;
use crate::tls::install_crypto_provider;

/// Longer than any process lives: waits at least this long are not armed as timers,
/// whose `Instant` arithmetic would overflow.
const NEVER: Duration = Duration::from_secs(86_400 * 365 * 30);

/// What a [`PollSource`] does with a response status other than 2xx and 304.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatusAction {
    /// A transient failure: retry with backoff, or after the wait a `Retry-After`
    /// header asks for (429 and 503 send it; GitHub also sends it with the 403 of a
    /// rate limit).
    Retry,
    /// Stop the source with [`HttpError::Status`], whose message says what to check.
    Fail,
    /// Nothing to read this time: wait the normal interval and poll again, without a
    /// backoff. For an API that answers 404 until its resource first exists.
    Skip,
}

impl StatusAction {
    /// The default classification: 408 (request timeout), 425, 429 and every 5xx
    /// are [`Retry`](Self::Retry); the other 4xx (401, 403, 404, …) are
    /// [`Fail`](Self::Fail), since repeating the same request cannot succeed; anything
    /// else (an unfollowed redirect, say) is [`Retry`](Self::Retry).
    ///
    /// # Examples
    ///
    /// A source that waits for a resource to appear instead of failing on 404:
    ///
    /// ```
    /// use intake_http::{PollSource, StatusAction};
    ///
    /// let source = PollSource::new("https://example.com/feed.json").classify_status(|status| match status {
    ///     404 => StatusAction::Skip,
    ///     other => StatusAction::for_status(other),
    /// });
    /// # let _ = source;
    /// ```
    pub fn for_status(status: u16) -> StatusAction {
        match status {
            408 | 425 | 429 => StatusAction::Retry,
            400..=499 => StatusAction::Fail,
            _ => StatusAction::Retry,
        }
    }
}

/// A response page, as the hooks of a [`PollSource`] see it: for reading a cursor
/// ([`Pagination::cursor`]).
#[derive(Debug)]
pub struct Page<'a> {
    url: &'a Url,
    status: u16,
    headers: &'a HeaderMap,
    body: &'a Bytes,
    records: usize,
}

impl Page<'_> {
    /// The URL the page came from (after redirects, if the client followed any).
    pub fn url(&self) -> &Url {
        self.url
    }

    /// The response's status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The response's headers.
    pub fn headers(&self) -> &HeaderMap {
        self.headers
    }

    /// The response body.
    pub fn body(&self) -> &Bytes {
        self.body
    }

    /// How many records the body held.
    pub fn records(&self) -> usize {
        self.records
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(self.body).ok()
    }

    /// The string or number at `pointer` (RFC 6901) in the JSON body, as text; `None`
    /// if the body is not JSON or holds nothing (or `null`, or another kind of value)
    /// there.
    pub fn json_text(&self, pointer: &str) -> Option<String> {
        let raw = locate(self.body, pointer).ok()??;
        match serde_json::from_slice::<Value>(raw).ok()? {
            Value::String(text) => Some(text),
            Value::Number(number) => Some(number.to_string()),
            _ => None,
        }
    }

    /// The target of the first `Link` header link with relation `rel` (such as
    /// `"next"`), resolved against [`url`](Self::url).
    pub fn link(&self, rel: &str) -> Option<Url> {
        find_link(self.headers, self.url, rel)
    }
}

type CursorHook = Arc<dyn Fn(&Page<'_>) -> Option<String> + Send + Sync>;
type IntervalHook = Arc<dyn Fn(&HeaderMap) -> Option<Duration> + Send + Sync>;
type StatusHook = Arc<dyn Fn(u16) -> StatusAction + Send + Sync>;

/// How a [`PollSource`] gets from one page of a response to the next.
#[derive(Clone)]
pub struct Pagination(PaginationKind);

#[derive(Clone)]
enum PaginationKind {
    None,
    Link,
    Cursor { param: String, cursor: CursorHook },
}

impl fmt::Debug for Pagination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            PaginationKind::None => f.write_str("Pagination::None"),
            PaginationKind::Link => f.write_str("Pagination::Link"),
            PaginationKind::Cursor { param, .. } => f
                .debug_struct("Pagination::Cursor")
                .field("param", param)
                .finish_non_exhaustive(),
        }
    }
}

impl Default for Pagination {
    /// [`Pagination::link`].
    fn default() -> Self {
        Pagination::link()
    }
}

impl Pagination {
    /// One request per poll.
    pub fn none() -> Self {
        Pagination(PaginationKind::None)
    }

    /// Follows `Link: <…>; rel="next"` headers (RFC 8288, as GitHub sends them)
    /// within a poll, resolving relative targets against the page's URL; the next
    /// poll starts again at the first page. The default.
    pub fn link() -> Self {
        Pagination(PaginationKind::Link)
    }

    /// A cursor read from each page by `cursor` and sent as the query parameter
    /// `param` of the next request: an incremental feed such as
    /// `GET /items?after=CURSOR`. While pages bring records and a new cursor, the next
    /// page is requested at once; then the source waits its interval and polls again
    /// from the last cursor, which is also its resume offset, so a restarted pipeline
    /// goes on where the committed records end.
    ///
    /// # Examples
    ///
    /// ```
    /// use intake_http::{Pagination, PollSource};
    ///
    /// // {"items": [...], "next": "c42"}  →  GET /items?after=c42
    /// let source = PollSource::new("https://example.com/items")
    ///     .pagination(Pagination::cursor("after", |page| page.json_text("/next")));
    /// # let _ = source;
    /// ```
    pub fn cursor(
        param: impl Into<String>,
        cursor: impl Fn(&Page<'_>) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        Pagination(PaginationKind::Cursor {
            param: param.into(),
            cursor: Arc::new(cursor),
        })
    }
}

/// A source that polls one or more HTTP URLs on an interval and sends the records of
/// each response to its table.
///
/// - **Requests**: `GET`, with [headers](Self::header), [bearer](Self::bearer_auth)
///   or [basic](Self::basic_auth) auth, [query parameters](Self::query) and a
///   [timeout](Self::timeout).
/// - **Conditional requests** (on by default): the `ETag` and `Last-Modified` of each
///   URL's last response are sent back as `If-None-Match` and `If-Modified-Since`; a
///   `304 Not Modified` sends nothing to the table.
/// - **Server hints**: `Retry-After` (seconds or an HTTP date) on a 429, a 503 or
///   any other status retried is waited out; [`interval_from`](Self::interval_from) lets a header such as GitHub's
///   `X-Poll-Interval` set the next interval.
/// - **Failures**: connect errors, timeouts, 5xx and 429 are retried with the
///   [`Reconnect`] backoff, which a successful poll resets; 401, 403, 404 and the
///   other 4xx stop the source with an [`HttpError::Status`] that says what to check
///   ([`classify_status`](Self::classify_status) changes that).
/// - **Records**: see [`Records`]; each goes through the reader's schema and
///   [`ErrorPolicy`](intake_core::ErrorPolicy).
/// - **Pagination**: see [`Pagination`].
///
/// Each URL keeps its own schedule, validators, cursor and backoff.
///
/// # Resume
///
/// The source's offset ([`SourceContext::report_offset`]) holds, per URL, its
/// validators, its cursor and, in the middle of a paginated poll, the next page; it
/// is reported after every page's records were sent. A pipeline restored from
/// storage resumes from it: a conditional first request, the cursor, or the next page.
/// A page whose records were only partly sent when the pipeline stopped is read again
/// whole; with a primary key that repeats nothing in the table.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use intake_core::{Column, DataType, ErrorPolicy, Pipeline, Reader, Schema};
/// use intake_http::PollSource;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let schema = Schema::new([
///     Column::new("id", DataType::String).primary_key(),
///     Column::new("type", DataType::String),
/// ])?;
/// let source = PollSource::new("https://api.github.com/events")
///     .header("User-Agent", "intake-example")
///     .interval(Duration::from_secs(60))
///     .interval_from_header("X-Poll-Interval");
/// let stats = source.stats();
///
/// let mut pipeline = Pipeline::new();
/// let reader = Reader::json(schema).error_policy(ErrorPolicy::SkipAndReport);
/// let events = pipeline.read("github", source, reader);
/// pipeline.run().await?;
/// println!("{} events, {} not-modified polls", events.len(), stats.not_modified());
/// # Ok(())
/// # }
/// ```
#[must_use = "a source does nothing until a pipeline runs it"]
pub struct PollSource {
    urls: Vec<String>,
    interval: Duration,
    timeout: Duration,
    request: RequestSettings,
    query: Vec<(String, String)>,
    records: Records,
    conditional: bool,
    reconnect: Reconnect,
    classify: StatusHook,
    interval_hook: Option<IntervalHook>,
    pagination: Pagination,
    max_pages: usize,
    max_body_size: usize,
    max_polls: Option<u64>,
    client: Option<reqwest::Client>,
    stats: PollStats,
}

impl fmt::Debug for PollSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PollSource")
            .field("urls", &self.urls)
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .field("request", &self.request)
            .field(
                "query",
                &self.query.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            )
            .field("records", &self.records)
            .field("conditional", &self.conditional)
            .field("reconnect", &self.reconnect)
            .field("pagination", &self.pagination)
            .field("max_pages", &self.max_pages)
            .field("max_body_size", &self.max_body_size)
            .field("max_polls", &self.max_polls)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl PollSource {
    /// Default for [`interval`](Self::interval).
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
    /// Default for [`timeout`](Self::timeout).
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default for [`max_pages`](Self::max_pages).
    pub const DEFAULT_MAX_PAGES: usize = 100;
    /// Default for [`max_body_size`](Self::max_body_size): 64 MiB.
    pub const DEFAULT_MAX_BODY_SIZE: usize = 64 << 20;

    /// A source polling `url` every minute, reading each body as a JSON array of
    /// records and following `Link` pagination. [`url`](Self::url) adds more URLs.
    pub fn new(url: impl Into<String>) -> Self {
        PollSource {
            urls: vec![url.into()],
            interval: Self::DEFAULT_INTERVAL,
            timeout: Self::DEFAULT_TIMEOUT,
            request: RequestSettings::default(),
            query: Vec::new(),
            records: Records::default(),
            conditional: true,
            reconnect: Reconnect::default(),
            classify: Arc::new(StatusAction::for_status),
            interval_hook: None,
            pagination: Pagination::default(),
            max_pages: Self::DEFAULT_MAX_PAGES,
            max_body_size: Self::DEFAULT_MAX_BODY_SIZE,
            max_polls: None,
            client: None,
            stats: PollStats::default(),
        }
    }

    /// Polls `url` too, on its own schedule, with the same settings.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.urls.push(url.into());
        self
    }

    /// How long to wait after a poll before polling the same URL again. Default: 60 s.
    /// `Duration::MAX` (or anything over 30 years) polls once per URL and then waits
    /// for shutdown.
    ///
    /// # Panics
    ///
    /// If `interval` is zero: the source would poll in a busy loop.
    #[track_caller]
    pub fn interval(mut self, interval: Duration) -> Self {
        assert!(
            !interval.is_zero(),
            "the poll interval must be longer than zero, or the source would poll in a busy loop"
        );
        self.interval = interval;
        self
    }

    /// The longest one request may take, from connecting to the end of its body; a
    /// timed-out request is retried with backoff. Default: 30 s.
    ///
    /// # Panics
    ///
    /// If `timeout` is zero: no request could succeed.
    #[track_caller]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        assert!(
            !timeout.is_zero(),
            "the request timeout must be longer than zero, or no request could succeed"
        );
        self.timeout = timeout;
        self
    }

    /// Adds a header to every request, such as `Accept` or `User-Agent`.
    ///
    /// # Panics
    ///
    /// If `name` is not a valid header name or `value` not a valid header value.
    #[track_caller]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.request.header(name, value);
        self
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    pub fn bearer_auth(mut self, token: impl Into<String>) -> Self {
        self.request.bearer_auth(token.into());
        self
    }

    /// Sends HTTP basic auth with every request.
    pub fn basic_auth(mut self, user: impl Into<String>, password: Option<impl Into<String>>) -> Self {
        self.request.basic_auth(user.into(), password.map(Into::into));
        self
    }

    /// Adds the query parameter `name=value` to the first request of every poll
    /// (pages after it are requested as the server's links or the cursor say).
    pub fn query(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.query.push((name.into(), value.into()));
        self
    }

    /// How bodies become records. Default: [`Records::json_array`].
    pub fn records(mut self, records: Records) -> Self {
        self.records = records;
        self
    }

    /// Whether to send `If-None-Match` / `If-Modified-Since` from each URL's last
    /// response. Default: yes.
    pub fn conditional(mut self, conditional: bool) -> Self {
        self.conditional = conditional;
        self
    }

    /// The backoff for transient failures (connect errors, timeouts, 5xx, 429).
    /// Default: [`Reconnect::default`], retrying forever; with
    /// [`max_retries`](Reconnect::max_retries) the source stops with
    /// [`HttpError::GaveUp`] after that many failures in a row on one URL.
    pub fn reconnect(mut self, policy: Reconnect) -> Self {
        self.reconnect = policy;
        self
    }

    /// Decides what a status other than 2xx and 304 means; see [`StatusAction`] and
    /// its default, [`StatusAction::for_status`].
    pub fn classify_status(mut self, classify: impl Fn(u16) -> StatusAction + Send + Sync + 'static) -> Self {
        self.classify = Arc::new(classify);
        self
    }

    /// A hook that reads the headers of each poll's first response (a 304 included)
    /// and may set the wait before that URL's next poll, in place of
    /// [`interval`](Self::interval). For a server that says how often it may be polled.
    pub fn interval_from(
        mut self,
        hook: impl Fn(&HeaderMap) -> Option<Duration> + Send + Sync + 'static,
    ) -> Self {
        self.interval_hook = Some(Arc::new(hook));
        self
    }

    /// [`interval_from`](Self::interval_from) a header holding whole seconds, such as
    /// GitHub's `X-Poll-Interval: 60`. A value that is not a number is ignored.
    pub fn interval_from_header(self, name: &str) -> Self {
        let name = name.to_owned();
        self.interval_from(move |headers| {
            let seconds: u64 = headers.get(name.as_str())?.to_str().ok()?.trim().parse().ok()?;
            (seconds > 0).then(|| Duration::from_secs(seconds))
        })
    }

    /// How pages follow one another. Default: [`Pagination::link`].
    pub fn pagination(mut self, pagination: Pagination) -> Self {
        self.pagination = pagination;
        self
    }

    /// The most pages one poll reads; the rest wait for the next poll, which goes on at
    /// the next page (in `Link` pagination, the poll after the last page starts again
    /// at the first). Bounds a server whose links never end. Default: 100.
    ///
    /// # Panics
    ///
    /// If `pages` is zero.
    #[track_caller]
    pub fn max_pages(mut self, pages: usize) -> Self {
        assert!(pages > 0, "max_pages must be at least 1");
        self.max_pages = pages;
        self
    }

    /// The largest body read, in bytes. A larger body is not read: it is reported
    /// through the reader's [`ErrorPolicy`](intake_core::ErrorPolicy) (with an empty
    /// `raw` and its size in the reason) and the poll ends. Default: 64 MiB.
    ///
    /// # Panics
    ///
    /// If `bytes` is zero.
    #[track_caller]
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        assert!(bytes > 0, "max_body_size must be at least 1 byte");
        self.max_body_size = bytes;
        self
    }

    /// Ends the source once every URL has been polled `polls` times (a poll that
    /// failed and was retried counts once, when it succeeds). Default: no limit.
    /// `max_polls(1)` reads each URL (all its pages) once, as a batch job would.
    ///
    /// # Panics
    ///
    /// If `polls` is zero.
    #[track_caller]
    pub fn max_polls(mut self, polls: u64) -> Self {
        assert!(polls > 0, "max_polls must be at least 1");
        self.max_polls = Some(polls);
        self
    }

    /// The [`reqwest::Client`] to make requests with, for settings this builder does
    /// not have (proxies, certificates, cookies). Default: a client of the source's own.
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// The source's counters, live while it runs.
    pub fn stats(&self) -> PollStats {
        self.stats.clone()
    }

    fn build_client(&self) -> Result<reqwest::Client, HttpError> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        install_crypto_provider();
        reqwest::Client::builder()
            .user_agent(concat!("intake-http/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(HttpError::Client)
    }

    fn targets(&self, resume: Option<&Value>, name: &str) -> Result<Vec<Target>, HttpError> {
        let now = Instant::now();
        self.urls
            .iter()
            .map(|given| {
                let mut url = Url::parse(given).map_err(|e| HttpError::InvalidUrl {
                    url: given.clone(),
                    reason: e.to_string(),
                })?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(HttpError::InvalidUrl {
                        url: given.clone(),
                        reason: format!("the scheme is `{}`; it must be http or https", url.scheme()),
                    });
                }
                if !self.query.is_empty() {
                    url.query_pairs_mut().extend_pairs(&self.query);
                }
                let mut target = Target {
                    key: given.clone(),
                    url,
                    state: UrlState::default(),
                    due: now,
                    delays: self.reconnect.delays(),
                    failures: 0,
                    polls: 0,
                };
                if let Some(saved) = resume.and_then(|offset| offset.get("urls")?.get(given)) {
                    match serde_json::from_value(saved.clone()) {
                        Ok(state) => target.state = state,
                        Err(error) => {
                            tracing::warn!(source = name, url = %given, %error, "resume offset not understood; starting this URL afresh");
                        }
                    }
                }
                Ok(target)
            })
            .collect()
    }

    /// The source's offset: every URL's state, by the URL as given.
    fn offset<'a>(targets: impl Iterator<Item = &'a Target>) -> Value {
        let urls: Map<String, Value> = targets
            .map(|t| {
                (
                    t.key.clone(),
                    serde_json::to_value(&t.state).unwrap_or(Value::Null),
                )
            })
            .collect();
        json!({ "urls": urls })
    }

    /// Polls one URL: its first page and the pages after it.
    async fn poll(
        &self,
        client: &reqwest::Client,
        target: &mut Target,
        ctx: &SourceContext,
        report: &mut Reporter,
        others: &[Target],
    ) -> Result<Outcome, BoxError> {
        let mut pages = 0;
        let mut hint = None;
        // The pages read in this poll: a `Link: next` back to one of them is a cycle.
        let mut visited: HashSet<Url> = HashSet::new();
        let mut cursors: HashSet<String> = target.state.cursor.iter().cloned().collect();
        loop {
            let (url, first) = match &target.state.next_page {
                Some(next) => match Url::parse(next) {
                    Ok(url) => (url, false),
                    Err(_) => {
                        target.state.next_page = None;
                        continue;
                    }
                },
                None => (target.first_url(&self.pagination), true),
            };
            let mut request = self.request.apply(client.get(url.clone())).timeout(self.timeout);
            let conditional =
                first && self.conditional && target.state.validated_url.as_deref() == Some(url.as_str());
            if conditional {
                if let Some(etag) = target
                    .state
                    .etag
                    .as_deref()
                    .and_then(|v| HeaderValue::from_str(v).ok())
                {
                    request = request.header(IF_NONE_MATCH, etag);
                }
                if let Some(date) = target
                    .state
                    .last_modified
                    .as_deref()
                    .and_then(|v| HeaderValue::from_str(v).ok())
                {
                    request = request.header(IF_MODIFIED_SINCE, date);
                }
            }
            PollStats::add(&self.stats.0.requests, 1);
            let response = tokio::select! {
                response = request.send() => response,
                () = ctx.cancelled() => return Ok(Outcome::Cancelled),
            };
            let response = match response {
                Ok(response) => response,
                Err(error) if error.is_builder() => {
                    return Err(HttpError::InvalidUrl {
                        url: url.to_string(),
                        reason: error.to_string(),
                    }
                    .into());
                }
                Err(error) => return Ok(Outcome::Failed(request_failed(&url, error), None)),
            };
            let status = response.status();
            let headers = response.headers().clone();
            // Where the body came from after redirects: what relative links resolve against.
            let effective_url = response.url().clone();
            if first {
                hint = self.interval_hook.as_ref().and_then(|hook| hook(&headers));
            }
            if status == StatusCode::NOT_MODIFIED {
                PollStats::add(&self.stats.0.not_modified, 1);
                // A 304 to a later page (asked without validators) ends the poll too:
                // the next one starts again at the first page rather than asking
                // this page again forever.
                target.state.next_page = None;
                return Ok(Outcome::Done(hint));
            }
            if !status.is_success() {
                let code = status.as_u16();
                return match (self.classify)(code) {
                    // A later page's URL is the server's, not the user's: a link that
                    // has expired (or a `next_page` saved before a restart that the
                    // server no longer knows) must not stop the source for good. The
                    // listing starts again at the first page.
                    StatusAction::Fail if !first => {
                        tracing::warn!(
                            source = ctx.name(),
                            url = %url,
                            status = code,
                            "a later page of a paginated poll was refused; the next poll starts again at the first page"
                        );
                        target.state.next_page = None;
                        if let Err(error) = report.report(ctx, others, target).await {
                            return sent_error(error);
                        }
                        Ok(Outcome::Done(hint))
                    }
                    StatusAction::Fail => Err(HttpError::Status {
                        url: url.to_string(),
                        status: code,
                        hint: HttpError::hint(code),
                    }
                    .into()),
                    StatusAction::Skip => Ok(Outcome::Done(hint)),
                    StatusAction::Retry => {
                        let retry_after = retry_after(&headers);
                        Ok(Outcome::Failed(
                            RequestFailed::new(format!("{url} answered HTTP {status}")),
                            retry_after,
                        ))
                    }
                };
            }
            let body = tokio::select! {
                body = read_body(response, self.max_body_size) => body,
                () = ctx.cancelled() => return Ok(Outcome::Cancelled),
            };
            let body = match body {
                Ok(body) => body,
                Err(BodyError::Failed(error)) => {
                    return Ok(Outcome::Failed(request_failed(&url, error), None));
                }
                Err(BodyError::TooLarge(size)) => {
                    let reason = format!(
                        "the body of {url} is larger than max_body_size ({} bytes{}); it was not read",
                        self.max_body_size,
                        size.map(|s| format!(", Content-Length {s}")).unwrap_or_default()
                    );
                    let at = Location::http(url.as_str(), Some(pages as u64 + 1), None);
                    if let Err(error) = ctx.reject_at(Bytes::new(), reason, at).await {
                        return sent_error(error);
                    }
                    target.state.next_page = None;
                    return Ok(Outcome::Done(hint));
                }
            };
            PollStats::add(&self.stats.0.pages, 1);
            PollStats::add(&self.stats.0.bytes, body.len() as u64);
            let split = self.records.split(&body);
            let count = split.records.len();
            let page_number = Some(pages as u64 + 1);
            for (index, record) in split.records.into_iter().enumerate() {
                // Made only if the record is rejected.
                let locate = || Location::http(url.as_str(), page_number, Some(index as u64 + 1));
                if let Err(error) = ctx.send_located(record, locate).await {
                    return sent_error(error);
                }
            }
            PollStats::add(&self.stats.0.records, count as u64);
            let split_bad = split.bad.is_some();
            if let Some((raw, reason)) = split.bad {
                let at = Location::http(url.as_str(), page_number, None);
                if let Err(error) = ctx.reject_at(raw, reason, at).await {
                    return sent_error(error);
                }
            }
            visited.insert(url.clone());
            visited.insert(effective_url.clone());
            if first && split_bad {
                // The body was not read whole (cut short where the server closed the
                // connection, or broken): its validators would make the next poll a
                // 304 and the records after the break would never be read.
                target.state.validated_url = None;
                target.state.etag = None;
                target.state.last_modified = None;
            } else if first {
                let etag = header_text(&headers, &ETAG);
                let last_modified = header_text(&headers, &LAST_MODIFIED);
                target.state.validated_url =
                    (etag.is_some() || last_modified.is_some()).then(|| url.to_string());
                target.state.etag = etag;
                target.state.last_modified = last_modified;
            }
            pages += 1;
            let page = Page {
                url: &effective_url,
                status: status.as_u16(),
                headers: &headers,
                body: &body,
                records: count,
            };
            let more = match &self.pagination.0 {
                PaginationKind::None => false,
                PaginationKind::Link => {
                    let next = page.link("next");
                    target.state.next_page = match next {
                        Some(next) if visited.contains(&next) => {
                            tracing::warn!(
                                source = ctx.name(),
                                url = %effective_url,
                                next = %next,
                                "the next page links back to a page this poll already read; the poll ends here"
                            );
                            None
                        }
                        next => next.map(String::from),
                    };
                    target.state.next_page.is_some()
                }
                PaginationKind::Cursor { cursor, .. } => match cursor(&page) {
                    Some(cursor) if count > 0 && target.state.cursor.as_ref() != Some(&cursor) => {
                        // A cursor this poll already followed leads to pages it read.
                        let seen = !cursors.insert(cursor.clone());
                        if seen {
                            tracing::warn!(
                                source = ctx.name(),
                                url = %effective_url,
                                cursor,
                                "the cursor went back to one this poll already followed; the poll ends here"
                            );
                        }
                        if !seen {
                            target.state.cursor = Some(cursor);
                        }
                        !seen
                    }
                    _ => false,
                },
            };
            if let Err(error) = report.report(ctx, others, target).await {
                return sent_error(error);
            }
            // A poll cut by max_pages keeps its next page (it is in the offset just
            // reported): the next poll goes on there. Starting over at the first page
            // would never reach the pages after the cut once that page answers 304.
            if !more || pages >= self.max_pages {
                return Ok(Outcome::Done(hint));
            }
        }
    }
}

/// Reports the source's offset when it changed.
#[derive(Default)]
struct Reporter {
    last: Option<Value>,
}

impl Reporter {
    async fn report(
        &mut self,
        ctx: &SourceContext,
        others: &[Target],
        current: &Target,
    ) -> Result<(), SendError> {
        let offset = PollSource::offset(others.iter().chain(std::iter::once(current)));
        if self.last.as_ref() == Some(&offset) {
            return Ok(());
        }
        ctx.report_offset(offset.clone()).await?;
        self.last = Some(offset);
        Ok(())
    }
}

/// A send that failed: shutdown ends the poll quietly, anything else (a rejection
/// under `ErrorPolicy::Fail`) fails the source.
fn sent_error(error: SendError) -> Result<Outcome, BoxError> {
    match error {
        SendError::ShuttingDown => Ok(Outcome::Cancelled),
        error => Err(error.into()),
    }
}

fn request_failed(url: &Url, error: reqwest::Error) -> RequestFailed {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    RequestFailed::with_source(format!("the request to {url} {what}: {error}"), error)
}

fn header_text(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    headers.get(name)?.to_str().ok().map(str::to_owned)
}

/// The wait a `Retry-After` header asks for: delay-seconds or an HTTP date (a date in
/// the past means no wait).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(SystemTime::now()).unwrap_or_default())
}

enum BodyError {
    Failed(reqwest::Error),
    TooLarge(Option<u64>),
}

async fn read_body(mut response: reqwest::Response, max: usize) -> Result<Bytes, BodyError> {
    if let Some(length) = response.content_length()
        && length > max as u64
    {
        return Err(BodyError::TooLarge(Some(length)));
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Failed)? {
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge(None));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// How a poll of one URL ended.
enum Outcome {
    /// Read (or not modified, or skipped); the interval hint, if the server gave one.
    Done(Option<Duration>),
    /// A transient failure, and the `Retry-After` wait if the server asked for one.
    Failed(RequestFailed, Option<Duration>),
    /// The pipeline is shutting down.
    Cancelled,
}

/// What the source remembers of a URL, which is also its part of the resume offset.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct UrlState {
    /// The request URL the validators came from: they are sent only with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    validated_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_modified: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
    /// The page to request next, in the middle of a paginated poll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next_page: Option<String>,
}

/// One URL the source polls.
struct Target {
    /// The URL as given, the key of its state in the offset.
    key: String,
    /// The URL with the query parameters added.
    url: Url,
    state: UrlState,
    due: Instant,
    delays: Delays,
    failures: usize,
    polls: u64,
}

impl Target {
    /// The first request of a poll: the URL, with the cursor if there is one.
    fn first_url(&self, pagination: &Pagination) -> Url {
        let mut url = self.url.clone();
        if let (PaginationKind::Cursor { param, .. }, Some(cursor)) = (&pagination.0, &self.state.cursor) {
            url.query_pairs_mut().append_pair(param, cursor);
        }
        url
    }
}

#[async_trait]
impl Source for PollSource {
    /// Its offsets are exact, so its messages are committed only with one.
    fn reports_offsets(&self) -> bool {
        true
    }

    async fn run(&mut self, ctx: SourceContext) -> Result<(), BoxError> {
        let client = self.build_client()?;
        let mut targets = self.targets(ctx.resume_offset(), ctx.name())?;
        let mut reporter = Reporter::default();
        loop {
            let Some(index) = targets
                .iter()
                .enumerate()
                .filter(|(_, t)| self.max_polls.is_none_or(|max| t.polls < max))
                .min_by_key(|(_, t)| t.due)
                .map(|(i, _)| i)
            else {
                return Ok(());
            };
            tokio::select! {
                () = tokio::time::sleep_until(targets[index].due) => {}
                () = ctx.cancelled() => return Ok(()),
            }
            let mut target = targets.swap_remove(index);
            let outcome = self
                .poll(&client, &mut target, &ctx, &mut reporter, &targets)
                .await;
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(error) => return Err(error),
            };
            let now = Instant::now();
            match outcome {
                Outcome::Cancelled => return Ok(()),
                Outcome::Done(hint) => {
                    PollStats::add(&self.stats.0.polls, 1);
                    target.polls += 1;
                    target.failures = 0;
                    target.delays = self.reconnect.delays();
                    target.due = later(now, hint.unwrap_or(self.interval));
                }
                Outcome::Failed(error, retry_after) => {
                    target.failures = target.failures.saturating_add(1);
                    let Some(delay) = target.delays.next() else {
                        return Err(HttpError::GaveUp {
                            url: target.url.to_string(),
                            attempts: target.failures,
                            last_error: Box::new(error),
                        }
                        .into());
                    };
                    // At least the backoff's delay: a `Retry-After` of 0 or a date in
                    // the past must not make a failing server be asked in a busy loop.
                    let delay = retry_after.map_or(delay, |wait| wait.max(delay));
                    PollStats::add(&self.stats.0.retries, 1);
                    tracing::warn!(
                        source = ctx.name(),
                        url = %target.url,
                        %error,
                        attempt = target.failures,
                        delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        retry_after = retry_after.is_some(),
                        "poll failed; retrying"
                    );
                    target.due = later(now, delay);
                }
            }
            targets.push(target);
        }
    }
}

/// `now + wait`, or far enough away to mean never for waits too long for `Instant`.
fn later(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait.min(NEVER)).unwrap_or(now + NEVER)
}

/// Live counters of a [`PollSource`]; see [`PollSource::stats`].
///
/// Like every stats handle of intake (`TableStats`, `SourceStats`, `WsStats`), it is
/// cheap to clone, each getter reads the figure as it is now, and it serializes (with
/// serde) to an object of the figures.
#[derive(Debug, Clone, Default)]
pub struct PollStats(Arc<PollCounters>);

#[derive(Debug, Default)]
struct PollCounters {
    requests: AtomicU64,
    polls: AtomicU64,
    pages: AtomicU64,
    not_modified: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
    retries: AtomicU64,
}

impl serde::Serialize for PollStats {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("PollStats", 7)?;
        s.serialize_field("requests", &self.requests())?;
        s.serialize_field("polls", &self.polls())?;
        s.serialize_field("pages", &self.pages())?;
        s.serialize_field("not_modified", &self.not_modified())?;
        s.serialize_field("records", &self.records())?;
        s.serialize_field("bytes", &self.bytes())?;
        s.serialize_field("retries", &self.retries())?;
        s.end()
    }
}

impl PollStats {
    /// Requests sent, retries and pages included.
    pub fn requests(&self) -> u64 {
        self.0.requests.load(Ordering::Relaxed)
    }

    /// Polls completed (read, not modified, or skipped by a
    /// [`StatusAction::Skip`]), over all URLs.
    pub fn polls(&self) -> u64 {
        self.0.polls.load(Ordering::Relaxed)
    }

    /// Pages (successful responses with a body) read.
    pub fn pages(&self) -> u64 {
        self.0.pages.load(Ordering::Relaxed)
    }

    /// Responses `304 Not Modified`: polls that cost the server little and sent
    /// nothing.
    pub fn not_modified(&self) -> u64 {
        self.0.not_modified.load(Ordering::Relaxed)
    }

    /// Records sent to the reader, valid or not.
    pub fn records(&self) -> u64 {
        self.0.records.load(Ordering::Relaxed)
    }

    /// Body bytes read.
    pub fn bytes(&self) -> u64 {
        self.0.bytes.load(Ordering::Relaxed)
    }

    /// Retries scheduled after transient failures.
    pub fn retries(&self) -> u64 {
        self.0.retries.load(Ordering::Relaxed)
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static(" 7 "));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let in_a_minute = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(61));
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&in_a_minute).unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(
            wait > Duration::from_secs(58) && wait <= Duration::from_secs(61),
            "{wait:?}"
        );
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn default_classification_fails_on_client_errors_and_retries_the_rest() {
        for status in [400, 401, 403, 404, 410, 422] {
            assert_eq!(StatusAction::for_status(status), StatusAction::Fail, "{status}");
        }
        for status in [408, 425, 429, 500, 502, 503, 504, 302] {
            assert_eq!(StatusAction::for_status(status), StatusAction::Retry, "{status}");
        }
    }
}
