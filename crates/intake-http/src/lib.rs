//! HTTP sources for [intake](intake_core): poll a REST API, or follow a server-sent
//! event stream, into a table.
//!
//! - [`PollSource`]: polls one or more URLs on an interval, with conditional requests
//!   (`ETag`, `Last-Modified`), server hints (`Retry-After`, a poll-interval header),
//!   backoff on transient failures, [`Pagination`] (`Link` headers or a cursor) and
//!   [`Records`] out of each body (the whole body, a JSON array, a JSON pointer to
//!   one, JSON lines).
//! - [`PollStats`]: live counters, such as not-modified polls and retries.
//! - [`HttpError`]: why a polling source stopped for good.
//! - [`SseSource`]: follows a `text/event-stream` (server-sent events), reconnecting
//!   with `Last-Event-ID` and resuming from the last event ID; [`SseParser`] is its
//!   parser, usable alone; [`SseStats`] its counters; [`SseError`] why it stopped.

//!
//! TLS is rustls with the ring provider, which the source installs as the process
//! default if none is installed ([`install_crypto_provider`]). The guide is
//! `docs/http.md`.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use intake_core::{Column, DataType, ErrorPolicy, Pipeline, Reader, Schema};
//! use intake_http::{PollSource, Records};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let schema = Schema::new([
//!     Column::new("id", DataType::Int).primary_key(),
//!     Column::new("status", DataType::String),
//! ])?;
//! let source = PollSource::new("https://example.com/api/orders")
//!     .bearer_auth(std::env::var("API_TOKEN")?)
//!     .query("limit", "100")
//!     .records(Records::json_pointer("/data"))
//!     .interval(Duration::from_secs(30));
//!
//! let mut pipeline = Pipeline::new();
//! let reader = Reader::json(schema).error_policy(ErrorPolicy::SkipAndReport);
//! let orders = pipeline.read("orders", source, reader);
//! pipeline.run().await?;
//! # let _ = orders;
//! # Ok(())
//! # }
//! ```

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod error;
mod link;
mod poll;
mod records;
mod request;
mod sse;
mod tls;

pub use error::HttpError;
pub use intake_core::Reconnect;
pub use poll::{Page, Pagination, PollSource, PollStats, StatusAction};
pub use records::Records;
/// The URL type of [`Page::url`], re-exported from reqwest.
pub use reqwest::Url;
/// The header map hooks such as [`PollSource::interval_from`] read, re-exported from
/// reqwest.
pub use reqwest::header::HeaderMap;
pub use sse::{SseError, SseEvent, SseItem, SseParser, SseSource, SseStats};
pub use tls::install_crypto_provider;

#[doc = include_str!("../../../docs/http.md")]
#[cfg(doctest)]
pub struct HttpGuide;
