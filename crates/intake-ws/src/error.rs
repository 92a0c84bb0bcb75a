//! Errors of the WebSocket source.

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
    /// rejected API key.
    #[error("{0}")]
    Protocol(String),
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
        /// The error of the last attempt.
        last_error: String,
    },
}

/// An error a [`Protocol`](crate::Protocol) returns: fatal (the source stops with
/// [`WsError::Protocol`]) or not (the connection is dropped and made again, replaying
/// the handshake).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ProtocolError {
    message: String,
    fatal: bool,
}

impl ProtocolError {
    /// An error that stops the source, such as failed authentication.
    pub fn fatal(message: impl Into<String>) -> Self {
        ProtocolError {
            message: message.into(),
            fatal: true,
        }
    }

    /// An error after which the source reconnects.
    pub fn reconnect(message: impl Into<String>) -> Self {
        ProtocolError {
            message: message.into(),
            fatal: false,
        }
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
