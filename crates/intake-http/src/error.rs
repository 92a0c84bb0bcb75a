//! Errors of the HTTP sources.

use std::fmt;

use intake_core::BoxError;

/// Why a [`PollSource`](crate::PollSource) stopped for good.
///
/// Everything else (a refused connection, a timeout, a 5xx, a 429) is retried with
/// backoff; these errors are what retrying cannot fix, or what it gave up on. The
/// pipeline reports them with the source's name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// A URL given to the source cannot be requested.
    #[error("invalid URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built (for example, its TLS setup failed).
    #[error("the HTTP client could not be built: {0}")]
    Client(#[source] reqwest::Error),
    /// The server answered the first request of a poll with a status the source
    /// treats as fatal: by default 401, 403, 404 and the other 4xx codes except 408
    /// and 429 (see [`StatusAction::for_status`](crate::StatusAction::for_status)). A
    /// later page refused so ends the poll instead: its URL came from the server.
    #[error("{url} answered HTTP {status}: {hint}")]
    Status {
        /// The URL requested.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// What to check, such as the credentials for 401.
        hint: &'static str,
    },
    /// Every retry allowed by the [`Reconnect`](intake_core::Reconnect) policy failed.
    #[error("gave up on {url} after {attempts} failed requests in a row; last error: {last_error}")]
    GaveUp {
        /// The URL requested.
        url: String,
        /// How many requests in a row failed.
        attempts: usize,
        /// The error of the last attempt, also this error's
        /// [`source`](std::error::Error::source); its own source, when there is one,
        /// is the reqwest error behind it.
        #[source]
        last_error: BoxError,
    },
}

impl HttpError {
    /// The hint [`HttpError::Status`] gives for a fatal status.
    pub(crate) fn hint(status: u16) -> &'static str {
        match status {
            401 => {
                "check the credentials: the bearer token, basic auth or Authorization header sent with the request"
            }
            403 => {
                "check that the credentials are allowed to read this resource (token scopes, IP or User-Agent rules), or whether a rate limit answered with 403"
            }
            404 => "check the URL and its query parameters: the resource does not exist",
            405 => "check the URL: this resource does not accept GET",
            410 => "the resource is gone for good: check the URL",
            400 | 422 => "check the query parameters and headers: the server refused the request",
            _ => "the server refused the request; retrying the same request cannot succeed",
        }
    }
}

/// Why one request failed, as the `last_error` of [`HttpError::GaveUp`].
#[derive(Debug)]
pub(crate) struct RequestFailed {
    message: String,
    source: Option<BoxError>,
}

impl RequestFailed {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        RequestFailed {
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn with_source(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        RequestFailed {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

impl fmt::Display for RequestFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RequestFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
