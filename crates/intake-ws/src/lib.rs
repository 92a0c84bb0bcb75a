//! A WebSocket source for [intake](intake_core): connect to a `ws://` or `wss://`
//! server, talk its protocol (handshake, authentication, subscriptions), and read its
//! data frames into a table, reconnecting with backoff when the connection is lost.
//!
//! - [`WebSocketSource`]: the source, with connect timeout, headers, maximum message
//!   size, [`Reconnect`] policy, pings and a silence deadline.
//! - [`Protocol`]: the hook that sees every frame and can reply; [`Polygon`] (the
//!   Polygon.io stocks feed) and [`Generic`] (send fixed messages, emit every frame,
//!   or the frames a [`filter_map`](Generic::filter_map) says are data) ship ready.
//! - [`WsStats`]: live counters, such as reconnects.
//! - [`WsError`]: why a source stopped for good.
//!
//! Read a feed with [`ErrorPolicy::SkipAndReport`](intake_core::ErrorPolicy::SkipAndReport),
//! as the example does: core's default, `Fail`, suits a file read once, but fails a
//! service on its feed's first odd frame. The guide, `docs/websocket.md`, is the
//! counterpart of Pathway's WebSocket tutorial, and gives the reasons.
//!
//! # Example
//!
//! ```no_run
//! use intake_core::{Column, DataType, ErrorPolicy, Pipeline, Reader, Schema};
//! use intake_ws::{Polygon, WebSocketSource};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let schema = Schema::new([
//!     Column::new("sym", DataType::String).primary_key(),
//!     Column::new("o", DataType::Float),
//!     Column::new("c", DataType::Float),
//!     Column::new("v", DataType::Int),
//! ])?;
//! let source = WebSocketSource::new(Polygon::DELAYED_STOCKS_URL).protocol(Polygon::new("MY-API-KEY", "A.*"));
//!
//! let mut pipeline = Pipeline::new();
//! let reader = Reader::json(schema).error_policy(ErrorPolicy::SkipAndReport);
//! let aggregates = pipeline.read("polygon", source, reader);
//! pipeline.run().await?;
//! # let _ = aggregates;
//! # Ok(())
//! # }
//! ```

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod error;
mod polygon;
mod protocol;
mod stats;
mod source;

pub use error::{ProtocolError, WsError};
pub use polygon::Polygon;
pub use protocol::{Filtered, Frame, Generic, Protocol, Replies};
pub use intake_core::Reconnect;
pub use stats::WsStats;
pub use source::{WebSocketSource, install_crypto_provider};

#[doc = include_str!("../../../docs/websocket.md")]
#[cfg(doctest)]
pub struct WebSocketGuide;
