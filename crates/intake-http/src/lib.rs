//! HTTP sources for [intake](intake_core): poll a REST API, or follow a server-sent
//! event stream, into a table.
//!
//! - [`SseSource`]: follows a `text/event-stream` (server-sent events), reconnecting
//!   with `Last-Event-ID` and resuming from the last event ID; [`SseParser`] is its
//!   parser, usable alone; [`SseStats`] its counters; [`SseError`] why it stopped.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod sse;

pub use sse::{SseError, SseEvent, SseItem, SseParser, SseSource, SseStats, install_crypto_provider};

#[doc = include_str!("../../../docs/http.md")]
#[cfg(doctest)]
pub struct HttpGuide;
