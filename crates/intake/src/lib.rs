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
//! custom Python connectors), `docs/websocket.md` (consuming a WebSocket feed such as
//! Polygon; feature `ws`), `docs/files.md` (files, directories, fragments and file
//! sinks; feature `file`), `docs/http.md` (polling APIs and server-sent events; feature
//! `http`), `docs/persistence.md` (durable tables), `docs/metrics.md` (stats and the
//! `metrics` facade) and `docs/architecture.md` (the data flow and the semantics it
//! keeps).
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

/// File, directory and fragment sources; CSV and JSON-lines sinks.
#[cfg(feature = "file")]
pub use intake_file as file;

/// The WebSocket source: protocols (Polygon built in), reconnects, heartbeats.
#[cfg(feature = "ws")]
pub use intake_ws as ws;

/// HTTP sources: polling REST APIs and server-sent event streams.
#[cfg(feature = "http")]
pub use intake_http as http;

/// NATS JetStream: a partitioned source, a changelog sink, replicas.
#[cfg(feature = "nats")]
pub use intake_nats as nats;

/// Derives [`RowType`] for a struct: each field a column, `Option` fields nullable.
///
/// | field type | column |
/// |---|---|
/// | `i8`..`i64`, `u8`..`u32`, `isize` | int |
/// | `f32`, `f64` | float |
/// | `bool` | bool |
/// | `String`, `&str`, `Box<str>`, `Arc<str>`, `Rc<str>`, `char` | string |
/// | `Vec<u8>`, `Bytes` | bytes |
/// | `serde_json::Value` | json |
/// | [`Timestamp`] | timestamp |
/// | `Option<T>` | `T`'s column, nullable |
///
/// Field attributes, in `#[intake(...)]`:
/// - `primary_key`: the column is (part of) the primary key;
/// - `default = <expr>`: the column's default (anything `Into<Value>`);
/// - `type = "int" | "float" | "bool" | "string" | "bytes" | "json" | "timestamp"`: the
///   column's type, for a field type not in the table (such as a newtype that
///   serializes as one of those);
/// - `rename = "name"`: the column's name, when it must differ from serde's.
///
/// Columns are named as serde names the fields: `#[serde(rename = "...")]` on a field
/// and `#[serde(rename_all = "...")]` on the struct name the columns too, so one rename
/// serves both a typed send (`ctx.next(&value)`) and `row.deserialize()`.
///
/// # Examples
///
/// ```
/// use intake::{Pipeline, Reader, RowType, SourceContext, source_fn};
///
/// #[derive(serde::Serialize, serde::Deserialize, RowType, Debug, PartialEq)]
/// struct Aggregate {
///     #[intake(primary_key)]
///     sym: String,
///     #[serde(rename = "c")] // the column is `c` too
///     close: f64,
///     #[intake(default = 0)]
///     volume: i64,
///     note: Option<String>,
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let source = source_fn(|ctx: SourceContext| async move {
///     ctx.next_str(r#"{"sym": "AAPL", "c": 189.5}"#).await?;
///     ctx.next(&Aggregate { sym: "MSFT".into(), close: 411.2, volume: 10, note: None }).await?;
///     Ok(())
/// });
/// let mut pipeline = Pipeline::new();
/// let table = pipeline.read("aggregates", source, Reader::json(Aggregate::schema()));
/// pipeline.run().await?;
///
/// let aapl: Aggregate = table.get(&"AAPL".into()).unwrap().deserialize()?;
/// assert_eq!(aapl, Aggregate { sym: "AAPL".into(), close: 189.5, volume: 0, note: None });
/// # Ok(())
/// # }
/// ```
///
/// # Compile errors
///
/// What `Schema::new` would refuse is refused where the field is written: a primary
/// key of a float, JSON or `Option` type, and two fields with one column name.
///
/// ```compile_fail
/// #[derive(intake::RowType)]
/// struct Quote {
///     #[intake(primary_key)]
///     price: f64, // error: this column type cannot be part of a primary key
/// }
/// ```
///
/// ```compile_fail
/// #[derive(intake::RowType)]
/// struct Quote {
///     #[intake(primary_key)]
///     sym: Option<String>, // error: a primary-key column cannot be nullable
/// }
/// ```
///
/// ```compile_fail
/// #[derive(intake::RowType)]
/// struct Quote {
///     close: f64,
///     #[intake(rename = "close")]
///     last: f64, // error: column `close` is declared twice
/// }
/// ```
///
/// A default of the wrong type cannot be seen by the derive:
/// [`RowType::try_schema`] returns it as an error (and [`RowType::schema`] panics).
#[cfg(feature = "derive")]
pub use intake_derive::RowType;

#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct Readme;

#[doc = include_str!("../../../docs/custom-source.md")]
#[cfg(doctest)]
pub struct CustomSourceGuide;

#[doc = include_str!("../../../docs/metrics.md")]
#[cfg(doctest)]
pub struct MetricsGuide;
