//! Errors of the WebSocket source.

use std::fmt;
use std::sync::Arc;

use intake_core::BoxError;

/// Why a [`WebSocketSource`](crate::WebSocketSource) stopped for good.
///
/// Everything else (a dropped connection, an I/O error, a close frame other than
/// 1008, a silent server, a refused or timed-out connect) is retried with backoff;
/// these errors are what retrying cannot fix. The pipeline reports them with the
/// source's name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WsError {
    /// The URL cannot be used for a WebSocket connection.
    #[error("invalid WebSocket URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server refused the WebSocket upgrade with HTTP 401 or 403.
    #[error(
        "the server rejected the WebSocket upgrade with HTTP {status}: check the credentials and headers sent with the request"
    )]
    Unauthorized {
        /// The HTTP status code.
        status: u16,
    },
    /// The protocol hook found an error that reconnecting cannot fix, such as a
    /// rejected API key: the [`ProtocolError`] it returned, whose message this error
    /// displays and whose [`source`](std::error::Error::source) (if it was given one
    /// with [`ProtocolError::with_source`]) is this error's source.
    #[error(transparent)]
    Protocol(ProtocolError),
    /// The server closed the connection with code 1008 (policy violation).
    #[error("the server closed the connection for a policy violation (close code 1008): {reason}")]
    PolicyViolation {
        /// The reason the server gave.
        reason: String,
    },
    /// Every reconnect attempt allowed by the [`Reconnect`](crate::Reconnect) policy
    /// failed.
    #[error("gave up after {attempts} failed connection attempts; last error: {last_error}")]
    GaveUp {
        /// How many attempts were made since the connection was last healthy.
        attempts: usize,
        /// The error of the last attempt, also this error's
        /// [`source`](std::error::Error::source): its message says what failed
        /// (`connecting failed: ...`, `the server closed the connection`), and its own
        /// source, when there is one, is the I/O or WebSocket error behind it.
        #[source]
        last_error: BoxError,
    },
}

/// Why a connection attempt failed, as the `last_error` of [`WsError::GaveUp`]: what
/// failed, and the error behind it where there is one.
#[derive(Debug)]
pub(crate) struct ConnectionFailed {
    message: String,
    source: Option<BoxError>,
}

impl ConnectionFailed {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        ConnectionFailed {
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn with_source(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        ConnectionFailed {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

impl fmt::Display for ConnectionFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConnectionFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// An error a [`Protocol`](crate::Protocol) returns: fatal (the source stops with
/// [`WsError::Protocol`]) or not (the connection is dropped and made again, replaying
/// the handshake).
#[derive(Debug, Clone)]
pub struct ProtocolError {
    message: String,
    fatal: bool,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl ProtocolError {
    /// An error that stops the source, such as failed authentication.
    pub fn fatal(message: impl Into<String>) -> Self {
        ProtocolError {
            message: message.into(),
            fatal: true,
            source: None,
        }
    }

    /// An error after which the source reconnects.
    pub fn reconnect(message: impl Into<String>) -> Self {
        ProtocolError {
            message: message.into(),
            fatal: false,
            source: None,
        }
    }

    /// Keeps the error that caused this one (a decoding error, an error of the
    /// service's own API) as its [`source`](std::error::Error::source), and as the
    /// source of the [`WsError::Protocol`] a fatal error stops the source with.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::error::Error as _;
    /// use intake_ws::ProtocolError;
    ///
    /// let cause = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
    /// let error = ProtocolError::fatal("the login reply is not JSON").with_source(cause);
    /// assert_eq!(error.to_string(), "the login reply is not JSON");
    /// assert!(error.source().is_some());
    /// ```
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(Arc::from(source.into()));
        self
    }

    /// Whether the error stops the source.
    pub fn is_fatal(&self) -> bool {
        self.fatal
    }

    /// The error's message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ProtocolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
