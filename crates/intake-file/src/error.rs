//! The crate's error type.

use intake_core::BoxError;

/// What can go wrong in this crate's sources, beyond I/O errors on the file itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// A directory source's pattern is not a valid glob.
    #[error("invalid glob pattern `{pattern}`: {reason}")]
    InvalidPattern {
        /// The pattern.
        pattern: String,
        /// Why it is invalid, such as `unclosed character class; missing ']'`.
        reason: String,
        /// The glob parser's error. Boxed, so that an update of the glob library does
        /// not change this type.
        #[source]
        source: BoxError,
    },
    /// A fragment could not be read or parsed.
    #[error("cannot read fragment `{name}`: {source}")]
    Fragment {
        /// The fragment's name.
        name: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// Fragments could not be listed.
    #[error("cannot list fragments{}: {source}", prefix.as_ref().map(|p| format!(" under `{p}`")).unwrap_or_default())]
    Listing {
        /// The prefix being listed, if not the top level.
        prefix: Option<String>,
        /// The cause.
        #[source]
        source: BoxError,
    },
}
