//! The core of [intake]: live data into a Rust service.
//!
//! A [`Source`] sends messages (push style through a [`SourceContext`], or pull style
//! from any [`Stream`](futures::Stream)); a [`Reader`] parses them by a [`Schema`]; a
//! commit driver groups them into atomic commits on a keyed, in-memory [`Table`]; and
//! subscribers follow the table's changes as callbacks ([`Subscriber`]) or as an async
//! stream of [`ChangeBatch`]es.
//!
//! ```text
//! Source ──messages──▶ parse (Schema) ──▶ bounded queue ──▶ commit driver ──▶ Table ──ChangeBatch──▶ subscribers
//!                      bad input ──▶ ErrorPolicy (fail, or skip and report)
//! ```
//!
//! This crate has no network dependencies; ready-made sources live in their own
//! crates, and the `intake` crate re-exports everything.
//!
//! # Example
//!
//! Pathway's `cats.jsonl` subject, with an update and a delete:
//!
//! ```
//! use intake_core::{source_fn, Column, DataType, Pipeline, Reader, Schema, SourceContext, Subscriber};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let schema = Schema::new([
//!     Column::new("key", DataType::Int).primary_key(),
//!     Column::new("genus", DataType::String),
//!     Column::new("epithet", DataType::String),
//! ])?;
//!
//! let cats = source_fn(|ctx: SourceContext| async move {
//!     ctx.next_str(r#"{"key": 1, "genus": "otocolobus", "epithet": "manul"}"#).await?;
//!     ctx.next_str(r#"{"key": 2, "genus": "felis", "epithet": "catus"}"#).await?;
//!     ctx.commit().await?;
//!     ctx.next_str(r#"{"key": 2, "genus": "felis", "epithet": "silvestris"}"#).await?;
//!     ctx.delete(1).await?;
//!     Ok(())
//! });
//!
//! let mut pipeline = Pipeline::new();
//! let table = pipeline.read("cats", cats, Reader::json(schema));
//! table.subscribe(Subscriber::new().on_change(|key, row, time, is_addition| {
//!     println!("{time} {} {key}: {row}", if is_addition { "+" } else { "-" });
//! }));
//! pipeline.run().await?;
//!
//! assert_eq!(table.len(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! [intake]: https://docs.rs/intake

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod batch;
mod change;
mod driver;
mod error;
#[cfg(test)]
mod json_differential;
mod lifecycle;
mod parse;
mod partition;
mod persist;
mod pipeline;
mod queue;
mod reader;
mod reconnect;
mod row;
mod rowmap;
mod schema;
mod sink;
mod source;
mod store;
mod subscribe;
mod table;
mod telemetry;
mod typed;
mod value;

/// The attribute that makes a trait's `async fn`s usable with `dyn`: write
/// `#[intake::async_trait]` (or `#[intake_core::async_trait]`) on an `impl Source`,
/// `impl Sink` or `impl PartitionedSource` without a dependency of your own. Re-exported
/// from the [`async-trait`](https://docs.rs/async-trait) crate.
///
/// ```
/// use intake_core::{async_trait, BoxError, Source, SourceContext};
///
/// struct Once;
///
/// #[async_trait]
/// impl Source for Once {
///     async fn run(&mut self, ctx: SourceContext) -> Result<(), BoxError> {
///         ctx.next_str(r#"{"n": 1}"#).await?;
///         Ok(())
///     }
/// }
/// ```
pub use async_trait::async_trait;
pub use batch::{BatchAsync, batch_async};
/// The byte buffer messages are sent as ([`SourceContext::next_bytes`],
/// [`Message::Bytes`]), re-exported from the [`bytes`](https://docs.rs/bytes) crate.
pub use bytes::Bytes;
pub use change::{Change, ChangeBatch, Offsets, Time};
pub use error::{Error, SourceFailure};
pub use parse::{
    Format, JsonError, JsonErrorCategory, KeyMismatch, Location, MAX_JSON_DEPTH, ParseError, Rejected,
    SourceReason,
};
pub use partition::PartitionedSource;
pub use persist::Persistence;
pub use pipeline::{Pipeline, RejectedStream, ShutdownHandle};
pub use reader::{ErrorPolicy, Reader};
pub use reconnect::{Delays, Reconnect};
pub use row::{Key, Row, RowError};
pub use schema::{Column, RowType, Schema, SchemaError};
pub use sink::Sink;
pub use source::{
    BoxError, DurableOffset, FnSource, Message, SendError, Source, SourceContext, StreamSource, TryItems,
    from_stream, from_try_stream, source_fn,
};
pub use store::{PersistenceError, SyncPolicy};
pub use subscribe::Subscriber;
pub use table::{ChangeStream, Snapshot, Table, TableEnded, TableStats};
pub use telemetry::{ConnectionMetrics, SourceStats};
pub use value::{DataType, Timestamp, TimestampError, Value};

/// Entry points for the fuzz targets in `fuzz/` (built with `--cfg fuzzing`, as
/// `cargo fuzz` does); not part of the API.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    use bytes::Bytes;

    use crate::parse::{Format, ParseError, ParseOptions, Parser, Payload};
    use crate::{Schema, Value};

    /// Decodes `bytes` every way persistent storage reads its files; see
    /// `store::fuzz_decode`. Never panics, whatever the bytes.
    pub fn decode_store_bytes(schema: &Schema, bytes: &[u8]) {
        crate::store::fuzz_decode(schema, bytes);
    }

    /// Parses `bytes` as a JSON message of `schema`, as a source's `next_bytes` would,
    /// by a reader with or without [`lenient_numbers`](crate::Reader::lenient_numbers).
    pub fn parse_json_bytes(schema: &Schema, lenient: bool, bytes: &[u8]) -> Result<Vec<Value>, ParseError> {
        parser(schema, lenient)
            .parse(&Payload::Bytes(Bytes::copy_from_slice(bytes)))
            .map(|values| values.to_vec())
    }

    fn parser(schema: &Schema, lenient: bool) -> Parser {
        let options = ParseOptions {
            format: Format::Json,
            lenient_numbers: lenient,
        };
        Parser::new(schema.clone(), options)
    }

    /// Parses `json` as a message of `schema`, as `next_json` would, and returns the
    /// report's raw bytes alongside a refusal.
    pub fn parse_json_value(
        schema: &Schema,
        lenient: bool,
        json: serde_json::Value,
    ) -> Result<Vec<Value>, (ParseError, Bytes)> {
        let payload = Payload::Json(json);
        match parser(schema, lenient).parse(&payload) {
            Ok(values) => Ok(values.to_vec()),
            Err(reason) => Err((reason, payload.into_raw())),
        }
    }
}
