//! intake: live data into a Rust service.
//!
//! Write a source in a few lines of async Rust (or pick a ready one), declare a
//! schema, and get a live, keyed, in-memory table whose changes you can subscribe to,
//! with batching, commits, validation and backpressure handled.
//!
//! This crate is the facade: it re-exports [`intake_core`], and source families as
//! they are enabled by cargo features (`full` enables all of them).
//!
//! Guides: `docs/custom-source.md` (writing a source, the counterpart of Pathway's
//! custom Python connectors) and `docs/architecture.md` (the data flow and the
//! semantics it keeps).
//!
//! # Example
//!
//! ```
//! use futures::stream;
//! use intake::{from_stream, Column, DataType, Pipeline, Reader, Schema};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let schema = Schema::new([
//!     Column::new("sym", DataType::String).primary_key(),
//!     Column::new("price", DataType::Float),
//! ])?;
//! let ticks = stream::iter([
//!     r#"{"sym": "AAPL", "price": 189.5}"#,
//!     r#"{"sym": "MSFT", "price": 411.2}"#,
//!     r#"{"sym": "AAPL", "price": 189.7}"#,
//! ]);
//!
//! let mut pipeline = Pipeline::new();
//! let prices = pipeline.read("ticks", from_stream(ticks), Reader::json(schema));
//! pipeline.run().await?;
//! assert_eq!(prices.get(&"AAPL".into()).unwrap().get("price").and_then(|v| v.as_float()), Some(189.7));
//! # Ok(())
//! # }
//! ```

pub use intake_core::*;

#[doc = include_str!("../../../docs/custom-source.md")]
#[cfg(doctest)]
pub struct CustomSourceGuide;
