//! Turning messages into rows: formats, parse errors and rejected messages.
//!
//! JSON is parsed straight into a row's values by a schema-driven serde visitor: no
//! intermediate `serde_json::Value`, and strings are copied once, into the row.

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::row::Key;
use crate::schema::{Column, Schema};
use crate::value::{DataType, Timestamp, Value};

mod flat;

/// How a message's payload becomes a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Format {
    /// Each message is one JSON object; its fields fill the schema's columns by name.
    #[default]
    Json,
    /// Each message is UTF-8 text, stored whole in the single `data` string column of
    /// [`Schema::raw`]. Input that is not UTF-8 is rejected.
    Raw,
    /// Each message is stored whole in the single `data` bytes column of
    /// [`Schema::bytes`]. Nothing is ever rejected.
    Bytes,
}

/// Why a message could not become a row.
///
/// Every variant names the column involved where there is one, so that a rejected
/// message can be fixed at its origin.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The payload is not valid JSON (or has trailing characters after the value): where
    /// and what, with serde_json's error as its [`source`](std::error::Error::source).
    #[error(transparent)]
    MalformedJson(JsonError),
    /// The payload is JSON, but not an object.
    #[error("expected a JSON object, found {found}")]
    NotAnObject {
        /// What was found instead (`array`, `string`, ...).
        found: &'static str,
    },
    /// A column without a default is missing from the message.
    #[error("missing field `{column}`, which has no default")]
    MissingField {
        /// The column.
        column: String,
    },
    /// A column appears twice in one object.
    #[error("field `{column}` appears more than once")]
    DuplicateField {
        /// The column.
        column: String,
    },
    /// A value has the wrong type for its column.
    #[error("field `{column}` should be {expected}, found {found}")]
    WrongType {
        /// The column.
        column: String,
        /// The column's type.
        expected: DataType,
        /// What was found.
        found: &'static str,
    },
    /// `null` for a column that is neither nullable nor has a default.
    #[error("field `{column}` is null, but the column is not nullable and has no default")]
    NullNotAllowed {
        /// The column.
        column: String,
    },
    /// An integer outside the range of `i64`.
    #[error("field `{column}` holds an integer beyond the 64-bit signed range")]
    IntegerOutOfRange {
        /// The column.
        column: String,
    },
    /// A timestamp that could not be read.
    #[error("field `{column}` is not a valid timestamp: {reason}")]
    InvalidTimestamp {
        /// The column.
        column: String,
        /// What was wrong.
        reason: String,
    },
    /// Raw (text) input that is not UTF-8.
    #[error("input is not valid UTF-8 (valid up to byte {valid_up_to})")]
    InvalidUtf8 {
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
    /// A typed message that could not be serialized.
    #[error("could not serialize the message: {0}")]
    Serialize(String),
    /// The source found the input bad before parsing (see
    /// [`SourceContext::reject`](crate::SourceContext::reject)).
    #[error(transparent)]
    Source(SourceReason),
    /// A key given to `delete` does not match the table's primary key: what the key
    /// should have been and what was given.
    #[error(transparent)]
    InvalidKey(KeyMismatch),
    /// JSON nested deeper than [`MAX_JSON_DEPTH`] arrays and objects: refused the same
    /// way whether it arrived as text or as a `serde_json::Value`, so that hostile
    /// input cannot exhaust the stack.
    #[error("the JSON nests arrays and objects deeper than {MAX_JSON_DEPTH} levels")]
    TooDeep,
}

impl ParseError {
    /// A short, stable name for the kind of error (`malformed_json`, `wrong_type`, ...):
    /// the `kind` label of the `intake_source_rejected_total` metric.
    pub fn kind(&self) -> &'static str {
        match self {
            ParseError::MalformedJson(_) => "malformed_json",
            ParseError::NotAnObject { .. } => "not_an_object",
            ParseError::MissingField { .. } => "missing_field",
            ParseError::DuplicateField { .. } => "duplicate_field",
            ParseError::WrongType { .. } => "wrong_type",
            ParseError::NullNotAllowed { .. } => "null_not_allowed",
            ParseError::IntegerOutOfRange { .. } => "integer_out_of_range",
            ParseError::InvalidTimestamp { .. } => "invalid_timestamp",
            ParseError::InvalidUtf8 { .. } => "invalid_utf8",
            ParseError::Serialize(_) => "serialize",
            ParseError::Source(_) => "source",
            ParseError::InvalidKey(_) => "invalid_key",
            ParseError::TooDeep => "too_deep",
        }
    }
}

/// Why a payload is not valid JSON: the position and kind of the problem, with
/// serde_json's error as the [`source`](std::error::Error::source) (kept behind this
/// type, so a serde_json update does not change intake's API).
///
/// Displays as `malformed JSON: <message> at line <line> column <column>`.
#[derive(Debug, Clone)]
pub struct JsonError {
    message: String,
    line: Option<usize>,
    column: Option<usize>,
    category: JsonErrorCategory,
    source: Arc<serde_json::Error>,
}

/// What kind of problem a [`JsonError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JsonErrorCategory {
    /// Not syntactically valid JSON, or trailing characters after the value.
    Syntax,
    /// The input ended in the middle of a value.
    Eof,
    /// Valid JSON that does not fit the expected shape.
    Data,
}

impl JsonError {
    pub(crate) fn new(error: serde_json::Error) -> Self {
        let (line, column) = match error.line() {
            // serde_json numbers lines from 1; 0 means the error has no position (it
            // came from a `serde_json::Value`, not from text).
            0 => (None, None),
            line => (Some(line), Some(error.column())),
        };
        let category = match error.classify() {
            serde_json::error::Category::Eof => JsonErrorCategory::Eof,
            serde_json::error::Category::Data => JsonErrorCategory::Data,
            serde_json::error::Category::Syntax | serde_json::error::Category::Io => {
                JsonErrorCategory::Syntax
            }
        };
        let text = error.to_string();
        // serde_json appends the position to its message; it is kept in fields here.
        let message = match (line, column) {
            (Some(line), Some(column)) => text
                .strip_suffix(&format!(" at line {line} column {column}"))
                .map_or_else(|| text.clone(), str::to_owned),
            _ => text,
        };
        JsonError {
            message,
            line,
            column,
            category,
            source: Arc::new(error),
        }
    }

    /// What is wrong, without the position (`expected value`, `trailing characters`).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The line of the problem, counting from 1; `None` for a message sent as a JSON
    /// value rather than as text.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The column of the problem on its line, counting from 1 (in bytes); `None` for a
    /// message sent as a JSON value rather than as text.
    pub fn column(&self) -> Option<usize> {
        self.column
    }

    /// What kind of problem it is.
    pub fn category(&self) -> JsonErrorCategory {
        self.category
    }
}

/// Equal when position, kind and message are: the serde_json source is not compared.
impl PartialEq for JsonError {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message
            && self.line == other.line
            && self.column == other.column
            && self.category == other.category
    }
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed JSON: {}", self.message)?;
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, " at line {line} column {column}")?;
        }
        Ok(())
    }
}

impl std::error::Error for JsonError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// A source's own reason for refusing input ([`ParseError::Source`]): a message, and
/// optionally the error behind it as the [`source`](std::error::Error::source).
///
/// Strings convert into it, so [`SourceContext::reject`](crate::SourceContext::reject)
/// takes `"line 2: expected 2 fields"` as before; [`SourceReason::with_source`] keeps
/// the error that made the input bad (a CSV or a decoding error).
///
/// # Examples
///
/// ```
/// use std::error::Error as _;
/// use intake_core::SourceReason;
///
/// let plain = SourceReason::from("expected commas");
/// assert_eq!(plain.to_string(), "expected commas");
/// assert!(plain.source().is_none());
///
/// let cause = "x".parse::<i32>().unwrap_err();
/// let reason = SourceReason::with_source("line 3: the count is not a number", cause);
/// assert_eq!(reason.to_string(), "line 3: the count is not a number");
/// assert_eq!(reason.source().unwrap().to_string(), "invalid digit found in string");
/// ```
#[derive(Debug, Clone)]
pub struct SourceReason {
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl SourceReason {
    /// A reason given as text alone.
    pub fn new(message: impl Into<String>) -> Self {
        SourceReason {
            message: message.into(),
            source: None,
        }
    }

    /// A reason with the error behind it, which becomes its
    /// [`source`](std::error::Error::source).
    pub fn with_source(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        SourceReason {
            message: message.into(),
            source: Some(Arc::from(source.into())),
        }
    }

    /// A reason that is an error: its message is the error's text, and the error is its
    /// [`source`](std::error::Error::source), so it can be downcast back (a report
    /// that walks the chain shows the text twice; [`with_source`](Self::with_source)
    /// gives a message of its own instead).
    pub fn from_error(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        SourceReason::with_source(error.to_string(), error)
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<String> for SourceReason {
    fn from(message: String) -> Self {
        SourceReason::new(message)
    }
}

impl From<&str> for SourceReason {
    fn from(message: &str) -> Self {
        SourceReason::new(message)
    }
}

/// Equal when the messages are: sources are not compared.
impl PartialEq for SourceReason {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message
    }
}

impl fmt::Display for SourceReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SourceReason {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A `delete` key that does not match the table's primary key
/// ([`ParseError::InvalidKey`]): the key columns expected, with their types, and the
/// key given.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyMismatch {
    expected: Vec<(String, DataType)>,
    given: Key,
}

impl KeyMismatch {
    /// The primary key's columns, in key order, with their types; empty when the
    /// table has no primary key.
    pub fn expected(&self) -> &[(String, DataType)] {
        &self.expected
    }

    /// The key that was given.
    pub fn given(&self) -> &Key {
        &self.given
    }
}

impl fmt::Display for KeyMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let given = self.given.values();
        if self.expected.is_empty() {
            return f.write_str("this table has no primary key, so rows cannot be deleted by key");
        }
        if given.len() != self.expected.len() {
            return write!(
                f,
                "the primary key has {} column(s), but the key {} has {} value(s)",
                self.expected.len(),
                self.given,
                given.len()
            );
        }
        match self
            .expected
            .iter()
            .zip(given)
            .find(|((_, data_type), value)| !data_type.matches(value))
        {
            Some(((name, data_type), value)) => write!(
                f,
                "key column `{name}` is {data_type}, but the key holds a {}",
                value.kind()
            ),
            // Not built for a matching key; say what was compared all the same.
            None => write!(f, "the key {} does not match the primary key", self.given),
        }
    }
}

impl std::error::Error for KeyMismatch {}

/// The deepest nesting of JSON arrays and objects a message may have (the message's
/// own object counts as the first level): serde_json's limit for text, applied to
/// JSON values too.
pub const MAX_JSON_DEPTH: usize = 127;

/// Where in its source a message came from: the file and line, the fragment, the
/// WebSocket connection and frame, the HTTP response, or a source's own description.
/// A source attaches it when it sends (see
/// [`SourceContext::send_located`](crate::SourceContext::send_located)); it is made
/// only when the message is rejected, and reported with it ([`Rejected::location`]).
///
/// Numbers count from 1: the first line of a file, the first connection a source made,
/// the first frame on a connection. Match on it with `..`: more kinds of place, and
/// more details of one, may be added.
///
/// Displays as `cats.csv:7`, `fragment 2024/01/cats.csv line 7`,
/// `wss://feed.example/ws connection 2 frame 15`, `https://api.example/v1 page 3
/// record 12`, or the free-form text. Serializes as an object tagged by `kind`:
/// `{"kind": "file", "path": "cats.csv", "line": 7}`.
///
/// # Examples
///
/// ```
/// use intake_core::Location;
///
/// let location = Location::file("cats.csv", 7);
/// assert_eq!(location.to_string(), "cats.csv:7");
/// assert!(matches!(location, Location::File { line: 7, .. }));
/// assert_eq!(
///     serde_json::to_value(&location).unwrap(),
///     serde_json::json!({"kind": "file", "path": "cats.csv", "line": 7})
/// );
/// let http = Location::http("https://api.example/v1/trades", Some(3), Some(12));
/// assert_eq!(http.to_string(), "https://api.example/v1/trades page 3 record 12");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Location {
    /// A line of a file; for a record spanning lines, the line it starts on.
    #[non_exhaustive]
    File {
        /// The file's path, as the source was given it.
        path: Arc<str>,
        /// The line, counting from 1.
        line: u64,
    },
    /// A fragment of a directory or store (Ascend's `list_objects`).
    #[non_exhaustive]
    Fragment {
        /// The fragment's name, as its store lists it.
        name: Arc<str>,
        /// The line in the fragment, counting from 1, for fragments read as lines.
        #[serde(skip_serializing_if = "Option::is_none")]
        line: Option<u64>,
    },
    /// A frame received on a WebSocket connection.
    #[non_exhaustive]
    WebSocket {
        /// The URL connected to.
        url: Arc<str>,
        /// Which of the source's connections, counting from 1: 2 after the first
        /// reconnect.
        connection: u64,
        /// Which data frame on that connection, counting from 1.
        frame: u64,
    },
    /// A response of an HTTP source.
    #[non_exhaustive]
    Http {
        /// The URL requested.
        url: Arc<str>,
        /// Which page (or poll) of the source, counting from 1, when it counts them.
        #[serde(skip_serializing_if = "Option::is_none")]
        page: Option<u64>,
        /// Which record of the response, counting from 1, when the body holds several.
        #[serde(skip_serializing_if = "Option::is_none")]
        record: Option<u64>,
    },
    /// A custom source's own description of the place.
    #[non_exhaustive]
    Other {
        /// The description, shown as it is.
        description: Arc<str>,
    },
}

impl Location {
    /// Line `line` (counting from 1) of the file at `path`.
    pub fn file(path: impl Into<Arc<str>>, line: u64) -> Self {
        Location::File {
            path: path.into(),
            line,
        }
    }

    /// The fragment named `name`, at `line` (counting from 1) when it is read as lines.
    pub fn fragment(name: impl Into<Arc<str>>, line: Option<u64>) -> Self {
        Location::Fragment {
            name: name.into(),
            line,
        }
    }

    /// Frame `frame` of connection `connection` to `url` (both counting from 1).
    pub fn websocket(url: impl Into<Arc<str>>, connection: u64, frame: u64) -> Self {
        Location::WebSocket {
            url: url.into(),
            connection,
            frame,
        }
    }

    /// A response from `url`: its page (or poll) and record, counting from 1, when
    /// known.
    pub fn http(url: impl Into<Arc<str>>, page: Option<u64>, record: Option<u64>) -> Self {
        Location::Http {
            url: url.into(),
            page,
            record,
        }
    }

    /// A place described in a custom source's own words (`"queue orders, message
    /// 42"`).
    pub fn other(description: impl Into<Arc<str>>) -> Self {
        Location::Other {
            description: description.into(),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File { path, line } => write!(f, "{path}:{line}"),
            Location::Fragment { name, line } => {
                write!(f, "fragment {name}")?;
                match line {
                    Some(line) => write!(f, " line {line}"),
                    None => Ok(()),
                }
            }
            Location::WebSocket {
                url,
                connection,
                frame,
            } => write!(f, "{url} connection {connection} frame {frame}"),
            Location::Http { url, page, record } => {
                f.write_str(url)?;
                if let Some(page) = page {
                    write!(f, " page {page}")?;
                }
                if let Some(record) = record {
                    write!(f, " record {record}")?;
                }
                Ok(())
            }
            Location::Other { description } => f.write_str(description),
        }
    }
}

/// A message refused by a reader whose [`ErrorPolicy`](crate::ErrorPolicy) is
/// `SkipAndReport`: what came in, why it was refused, from which source and, when the
/// source says, where in it ([`location`](Self::location)).
#[derive(Debug, Clone)]
pub struct Rejected {
    source: Arc<str>,
    raw: Bytes,
    reason: ParseError,
    location: Option<Location>,
}

impl Rejected {
    pub(crate) fn new(source: Arc<str>, raw: Bytes, reason: ParseError, location: Option<Location>) -> Self {
        Rejected {
            source,
            raw,
            reason,
            location,
        }
    }

    /// The name of the source that sent the message.
    pub fn source_name(&self) -> &str {
        &self.source
    }

    /// Where in its source the message came from, if the source said: the file and
    /// line, the fragment, the WebSocket connection and frame, the HTTP response.
    pub fn location(&self) -> Option<&Location> {
        self.location.as_ref()
    }

    /// The message as it arrived: JSON values and typed messages as their JSON text,
    /// a line or record of a file as it was written. Empty when the source never had
    /// the input's bytes (a WebSocket message refused by the transport for its size or
    /// encoding, a value nested too deeply to write out); the reason says what it was.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Why it was refused.
    pub fn reason(&self) -> &ParseError {
        &self.reason
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 200;
        let text = String::from_utf8_lossy(&self.raw[..self.raw.len().min(SHOWN)]);
        let more = if self.raw.len() > SHOWN { "..." } else { "" };
        write!(f, "source `{}` sent a message that was rejected", self.source)?;
        if let Some(location) = &self.location {
            write!(f, " at {location}")?;
        }
        write!(f, ": {} (message: {text:?}{more})", self.reason)
    }
}

/// A message's payload before parsing.
#[derive(Debug)]
pub(crate) enum Payload {
    Bytes(Bytes),
    Json(serde_json::Value),
}

impl Payload {
    /// The payload as bytes, for error reports. Works without recursion, so a value
    /// refused for nesting too deeply is reported and dropped without exhausting the
    /// stack.
    pub(crate) fn into_raw(self) -> Bytes {
        match self {
            Payload::Bytes(bytes) => bytes,
            Payload::Json(json) => {
                let text = json_text(&json);
                dismantle(json);
                Bytes::from(text)
            }
        }
    }
}

/// Whether `value` nests arrays and objects deeper than `max` levels; iterative.
fn nests_deeper_than(value: &serde_json::Value, max: usize) -> bool {
    use serde_json::Value as Json;
    let mut stack = vec![(value, 0_usize)];
    while let Some((value, depth)) = stack.pop() {
        match value {
            // A container at `depth` is level `depth + 1`.
            Json::Array(_) | Json::Object(_) if depth >= max => return true,
            Json::Array(items) => stack.extend(items.iter().map(|item| (item, depth + 1))),
            Json::Object(map) => stack.extend(map.values().map(|item| (item, depth + 1))),
            _ => {}
        }
    }
    false
}

/// `value` as compact JSON text, like `to_string`, but iterative.
fn json_text(value: &serde_json::Value) -> String {
    use serde_json::Value as Json;
    enum Step<'a> {
        Value(&'a Json),
        Key(&'a str),
        Text(&'static str),
    }
    let mut out = String::new();
    let mut steps = vec![Step::Value(value)];
    while let Some(step) = steps.pop() {
        match step {
            Step::Text(text) => out.push_str(text),
            Step::Key(key) => {
                out.push_str(&Json::from(key).to_string());
                out.push(':');
            }
            Step::Value(Json::Array(items)) => {
                out.push('[');
                steps.push(Step::Text("]"));
                for (i, item) in items.iter().enumerate().rev() {
                    steps.push(Step::Value(item));
                    if i > 0 {
                        steps.push(Step::Text(","));
                    }
                }
            }
            Step::Value(Json::Object(map)) => {
                out.push('{');
                steps.push(Step::Text("}"));
                for (i, (key, item)) in map.iter().enumerate().collect::<Vec<_>>().into_iter().rev() {
                    steps.push(Step::Value(item));
                    steps.push(Step::Key(key));
                    if i > 0 {
                        steps.push(Step::Text(","));
                    }
                }
            }
            // Scalars serialize without recursion.
            Step::Value(scalar) => out.push_str(&scalar.to_string()),
        }
    }
    out
}

/// Drops `value` without recursion (dropping a deeply nested value recurses once per
/// level).
fn dismantle(value: serde_json::Value) {
    use serde_json::Value as Json;
    let mut stack = vec![value];
    while let Some(mut value) = stack.pop() {
        match &mut value {
            Json::Array(items) => stack.append(items),
            Json::Object(map) => stack.extend(std::mem::take(map).into_iter().map(|(_, item)| item)),
            _ => {}
        }
    }
}

/// How a reader's messages are parsed: the format and its options. A bare [`Format`]
/// converts into one with every option off, so `Parser::new(schema, Format::Json)`
/// reads strictly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ParseOptions {
    pub(crate) format: Format,
    /// Int and float columns also read a JSON string holding a JSON number
    /// ([`Reader::lenient_numbers`](crate::Reader::lenient_numbers)).
    pub(crate) lenient_numbers: bool,
}

impl From<Format> for ParseOptions {
    fn from(format: Format) -> Self {
        ParseOptions {
            format,
            lenient_numbers: false,
        }
    }
}

/// Parses payloads of one format into rows of one schema.
#[derive(Debug, Clone)]
pub(crate) struct Parser {
    schema: Schema,
    /// Column lookup by field name for the fast path of JSON text.
    fields: flat::FieldIndex,
    format: Format,
    /// See [`ParseOptions::lenient_numbers`]; typed sends pass it to `typed::read_row`.
    pub(crate) lenient_numbers: bool,
}

impl Parser {
    pub(crate) fn new(schema: Schema, options: impl Into<ParseOptions>) -> Self {
        let ParseOptions {
            format,
            lenient_numbers,
        } = options.into();
        Parser {
            fields: flat::FieldIndex::new(&schema),
            schema,
            format,
            lenient_numbers,
        }
    }

    pub(crate) fn schema(&self) -> &Schema {
        &self.schema
    }

    pub(crate) fn format(&self) -> Format {
        self.format
    }

    /// The values of the row in `payload`, one per column.
    // Hot: called for every message, from another module; inlined into the send path.
    #[inline]
    pub(crate) fn parse(&self, payload: &Payload) -> Result<Arc<[Value]>, ParseError> {
        if let Payload::Json(json) = payload
            && nests_deeper_than(json, MAX_JSON_DEPTH)
        {
            return Err(ParseError::TooDeep);
        }
        match (self.format, payload) {
            (Format::Json, Payload::Bytes(bytes)) => self.parse_json_slice(bytes),
            (Format::Json, Payload::Json(json)) => self.parse_json_value(json),
            (Format::Raw, Payload::Bytes(bytes)) => match std::str::from_utf8(bytes) {
                Ok(text) => Ok(Arc::new([Value::String(Arc::from(text))])),
                Err(e) => Err(ParseError::InvalidUtf8 {
                    valid_up_to: e.valid_up_to(),
                }),
            },
            (Format::Raw, Payload::Json(json)) => Ok(Arc::new([Value::from(json.to_string())])),
            (Format::Bytes, Payload::Bytes(bytes)) => Ok(Arc::new([Value::Bytes(Arc::from(&bytes[..]))])),
            (Format::Bytes, Payload::Json(json)) => {
                Ok(Arc::new([Value::Bytes(Arc::from(json.to_string().into_bytes()))]))
            }
        }
    }

    // Kept out of line so that its cost can be measured per message under this name
    // (callgrind); inlining it into the send path saved nothing when measured.
    #[inline(never)]
    fn parse_json_slice(&self, bytes: &[u8]) -> Result<Arc<[Value]>, ParseError> {
        // Most messages are flat objects the fast path reads on its own; for anything
        // else, and for every refusal, serde_json reads the message from the start.
        if let Some(values) = flat::parse(&self.schema, &self.fields, self.lenient_numbers, bytes) {
            return Ok(values);
        }
        self.parse_json_slice_with_serde(bytes)
    }

    /// The JSON reader without its fast path: what decides every message the fast path
    /// does not read, and what the fast path is tested against.
    fn parse_json_slice_with_serde(&self, bytes: &[u8]) -> Result<Arc<[Value]>, ParseError> {
        let failure = Cell::new(None);
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        let seed = RowSeed {
            schema: &self.schema,
            failure: &failure,
            lenient_numbers: self.lenient_numbers,
        };
        let parsed = seed
            .deserialize(&mut deserializer)
            .and_then(|values| deserializer.end().map(|()| values));
        parsed.map_err(|e| {
            failure.take().unwrap_or_else(|| {
                let message = e.to_string();
                // serde_json has no error code to match on; its message is stable.
                if message.starts_with("recursion limit exceeded") {
                    ParseError::TooDeep
                } else {
                    ParseError::MalformedJson(JsonError::new(e))
                }
            })
        })
    }

    fn parse_json_value(&self, json: &serde_json::Value) -> Result<Arc<[Value]>, ParseError> {
        let failure = Cell::new(None);
        let seed = RowSeed {
            schema: &self.schema,
            failure: &failure,
            lenient_numbers: self.lenient_numbers,
        };
        seed.deserialize(json).map_err(|e| {
            failure
                .take()
                .unwrap_or_else(|| ParseError::MalformedJson(JsonError::new(e)))
        })
    }

    /// Checks that `key` has the shape of the primary key (count and types).
    pub(crate) fn check_key(&self, key: &Key) -> Result<(), ParseError> {
        let columns = self.schema.columns();
        let key_columns = self.schema.primary_key();
        let fits = !key_columns.is_empty()
            && key.values().len() == key_columns.len()
            && key_columns
                .iter()
                .zip(key.values())
                .all(|(&i, value)| columns[i].data_type().matches(value));
        if fits {
            return Ok(());
        }
        Err(ParseError::InvalidKey(KeyMismatch {
            expected: key_columns
                .iter()
                .map(|&i| (columns[i].name().to_owned(), columns[i].data_type()))
                .collect(),
            given: key.clone(),
        }))
    }
}

/// One element of an array read as bytes: a number from 0 to 255.
struct ByteSeed<'a, 'b>(&'a ValueSeed<'b>);

impl<'de> DeserializeSeed<'de> for ByteSeed<'_, '_> {
    type Value = u8;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<u8, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ByteSeed<'_, '_> {
    type Value = u8;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u8, E> {
        u8::try_from(v).map_err(|_| self.0.wrong_type(NOT_BYTES))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u8, E> {
        u8::try_from(v).map_err(|_| self.0.wrong_type(NOT_BYTES))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<u8, E> {
        Err(self.0.wrong_type(NOT_BYTES))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<u8, E> {
        Err(self.0.wrong_type(NOT_BYTES))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<u8, E> {
        Err(self.0.wrong_type(NOT_BYTES))
    }

    fn visit_unit<E: de::Error>(self) -> Result<u8, E> {
        Err(self.0.wrong_type(NOT_BYTES))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<u8, A::Error> {
        Err(self.0.wrong_type(NOT_BYTES))
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<u8, A::Error> {
        Err(self.0.wrong_type(NOT_BYTES))
    }
}

/// What an array with an element other than a byte is called in a
/// [`ParseError::WrongType`] for a bytes column.
pub(crate) const NOT_BYTES: &str = "an array holding other than bytes (0 to 255)";

/// What a non-finite float is called in a [`ParseError::WrongType`].
pub(crate) const NON_FINITE: &str = "NaN or an infinity";

/// What a string that is not a JSON number is called in a [`ParseError::WrongType`]
/// for an int or float column of a reader with lenient numbers.
pub(crate) const STRING_NOT_A_NUMBER: &str = "a string that is not a JSON number (lenient numbers are on)";

/// What a string holding a number too large for an f64 is called in a
/// [`ParseError::WrongType`] for a float column of a reader with lenient numbers.
pub(crate) const STRING_BEYOND_FLOAT: &str =
    "a string holding a number beyond the float range (lenient numbers are on)";

/// Records the structured reason for a failure and returns the serde error that aborts
/// deserialization; the caller prefers the recorded reason.
pub(crate) fn fail<E: de::Error>(failure: &Cell<Option<ParseError>>, reason: ParseError) -> E {
    let message = reason.to_string();
    failure.set(Some(reason));
    E::custom(message)
}

struct RowSeed<'a> {
    schema: &'a Schema,
    failure: &'a Cell<Option<ParseError>>,
    lenient_numbers: bool,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = Arc<[Value]>;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Arc<[Value]>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// A new row of `columns` nulls, not shared yet, to fill in place.
pub(crate) fn empty_row(columns: usize) -> Arc<[Value]> {
    // One allocation of a size known at compile time for narrow rows, which is about
    // half the instructions of collecting into a slice of a size known at run time.
    macro_rules! sized {
        ($($n:literal)*) => {
            match columns {
                $($n => Arc::new([const { Value::Null }; $n]),)*
                // `repeat_n` has an exact length, so this allocates once.
                _ => std::iter::repeat_n(Value::Null, columns).collect(),
            }
        };
    }
    sized!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
}

/// Finishes a row after its message's fields were read: a column the message lacked,
/// or set to null, takes its default, else stays null if nullable, else the row is
/// refused.
pub(crate) fn complete_row(columns: &[Column], values: &mut [Value], seen: &Seen) -> Result<(), ParseError> {
    for (i, column) in columns.iter().enumerate() {
        let present = seen.contains(i);
        if present && !values[i].is_null() {
            continue;
        }
        match (column.default_value(), column.is_nullable()) {
            (Some(default), _) => values[i] = default.clone(),
            (None, true) => values[i] = Value::Null,
            (None, false) => {
                let column = column.name().to_owned();
                return Err(if present {
                    ParseError::NullNotAllowed { column }
                } else {
                    ParseError::MissingField { column }
                });
            }
        }
    }
    Ok(())
}

/// Which columns a message has set so far.
pub(crate) enum Seen {
    Few(u128),
    Many(Vec<bool>),
}

impl Seen {
    pub(crate) fn new(columns: usize) -> Self {
        if columns <= 128 {
            Seen::Few(0)
        } else {
            Seen::Many(vec![false; columns])
        }
    }

    /// Marks `i` as seen; false if it already was.
    pub(crate) fn insert(&mut self, i: usize) -> bool {
        match self {
            Seen::Few(bits) => {
                let bit = 1u128 << i;
                let fresh = *bits & bit == 0;
                *bits |= bit;
                fresh
            }
            Seen::Many(flags) => !std::mem::replace(&mut flags[i], true),
        }
    }

    /// Whether all of `columns` columns are seen.
    pub(crate) fn is_full(&self, columns: usize) -> bool {
        match self {
            // A comparison with the mask of every column: the target has no popcount
            // instruction, and counting the bits of a u128 costs some forty.
            Seen::Few(bits) => {
                let all = if columns >= 128 {
                    u128::MAX
                } else {
                    (1_u128 << columns) - 1
                };
                *bits == all
            }
            Seen::Many(flags) => flags.iter().all(|&seen| seen),
        }
    }

    fn contains(&self, i: usize) -> bool {
        match self {
            Seen::Few(bits) => *bits & (1u128 << i) != 0,
            Seen::Many(flags) => flags[i],
        }
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = Arc<[Value]>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Arc<[Value]>, A::Error> {
        let columns = self.schema.columns();
        // Parse straight into the row's final, shared allocation.
        let mut row = empty_row(columns.len());
        let Some(values) = Arc::get_mut(&mut row) else {
            return Err(de::Error::custom("internal error: a new row was shared"));
        };
        let mut seen = Seen::new(columns.len());
        while let Some(found) = map.next_key_seed(ColumnSeed(self.schema))? {
            let Some(i) = found else {
                // Extra fields are ignored: producers add fields over time, and a reader
                // declares only the columns it needs.
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            if !seen.insert(i) {
                let column = columns[i].name().to_owned();
                return Err(fail(self.failure, ParseError::DuplicateField { column }));
            }
            values[i] = map.next_value_seed(ValueSeed {
                column: &columns[i],
                failure: self.failure,
                lenient_numbers: self.lenient_numbers,
            })?;
        }
        complete_row(columns, values, &seen).map_err(|reason| fail(self.failure, reason))?;
        Ok(row)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Arc<[Value]>, A::Error> {
        Err(fail(self.failure, ParseError::NotAnObject { found: "an array" }))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Arc<[Value]>, E> {
        Err(fail(self.failure, ParseError::NotAnObject { found: "a string" }))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Arc<[Value]>, E> {
        Err(fail(self.failure, ParseError::NotAnObject { found: "a number" }))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Arc<[Value]>, E> {
        Err(fail(self.failure, ParseError::NotAnObject { found: "a number" }))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Arc<[Value]>, E> {
        Err(fail(self.failure, ParseError::NotAnObject { found: "a number" }))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Arc<[Value]>, E> {
        Err(fail(self.failure, ParseError::NotAnObject { found: "a boolean" }))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Arc<[Value]>, E> {
        Err(fail(self.failure, ParseError::NotAnObject { found: "null" }))
    }
}

/// Finds the column a field name refers to; `None` for fields the schema lacks.
struct ColumnSeed<'a>(&'a Schema);

impl<'de> DeserializeSeed<'de> for ColumnSeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Option<usize>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for ColumnSeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Option<usize>, E> {
        Ok(self.0.index_of(name))
    }
}

/// Reads one field's value as its column's type. Its visitor methods are also the
/// conversions of the typed path (`typed.rs`), so both read values alike.
pub(crate) struct ValueSeed<'a> {
    pub(crate) column: &'a Column,
    pub(crate) failure: &'a Cell<Option<ParseError>>,
    /// Whether an int or float column also reads a string holding a JSON number.
    pub(crate) lenient_numbers: bool,
}

impl ValueSeed<'_> {
    fn wrong_type<E: de::Error>(&self, found: &'static str) -> E {
        fail(
            self.failure,
            ParseError::WrongType {
                column: self.column.name().to_owned(),
                expected: self.column.data_type(),
                found,
            },
        )
    }

    fn timestamp<E: de::Error>(&self, parsed: Result<Timestamp, impl fmt::Display>) -> Result<Value, E> {
        parsed.map(Value::Timestamp).map_err(|error| {
            fail(
                self.failure,
                ParseError::InvalidTimestamp {
                    column: self.column.name().to_owned(),
                    reason: error.to_string(),
                },
            )
        })
    }

    /// A string met by an int or float column of a lenient reader: read as the JSON
    /// number it holds, through this visitor's own number methods, so `"65000.1"` has
    /// exactly the outcome of `65000.1` (the same f64, range checks and refusals).
    fn number_in_string<E: de::Error>(self, text: &str) -> Result<Value, E> {
        // A JSON number starts with `-` or a digit and ends with a digit. Checking
        // both ends refuses what serde_json would otherwise skip or accept around a
        // number (whitespace), and what is no JSON number (`+1`, `.5`, `NaN`, `inf`).
        let bytes = text.as_bytes();
        let delimited =
            matches!(bytes.first(), Some(b'-' | b'0'..=b'9')) && matches!(bytes.last(), Some(b'0'..=b'9'));
        if !delimited {
            return Err(self.wrong_type(STRING_NOT_A_NUMBER));
        }
        let failure = self.failure;
        let strict = ValueSeed {
            lenient_numbers: false,
            ..self
        };
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let read = strict
            .deserialize(&mut deserializer)
            .and_then(|value| deserializer.end().map(|()| value));
        match read {
            Ok(value) => Ok(value),
            // The number was read but refused (a fraction for an int column, an
            // integer beyond 64 bits): that reason stands, as for a JSON number.
            Err(error) => Err(match failure.take() {
                Some(reason) => fail(failure, reason),
                None => {
                    // serde_json has no error code to match on; its message is
                    // stable. A number too large for an f64 is refused by serde_json
                    // as JSON text, so as a string it is out of range for either type.
                    let overflow = error.to_string().starts_with("number out of range");
                    match (overflow, self.column.data_type()) {
                        (true, DataType::Int) => fail(
                            failure,
                            ParseError::IntegerOutOfRange {
                                column: self.column.name().to_owned(),
                            },
                        ),
                        (true, _) => self.wrong_type(STRING_BEYOND_FLOAT),
                        (false, _) => self.wrong_type(STRING_NOT_A_NUMBER),
                    }
                }
            }),
        }
    }

    fn millis<E: de::Error>(&self, millis: i64) -> Result<Value, E> {
        self.timestamp(
            Timestamp::from_unix_millis(millis)
                .ok_or_else(|| format!("{millis} ms since the epoch is out of range")),
        )
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        if self.column.data_type() == DataType::Json {
            let json: serde_json::Value = de::Deserialize::deserialize(deserializer)?;
            return Ok(if json.is_null() {
                Value::Null
            } else {
                Value::from(json)
            });
        }
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} value", self.column.data_type())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        match self.column.data_type() {
            DataType::Bool => Ok(Value::Bool(v)),
            _ => Err(self.wrong_type("a boolean")),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        match self.column.data_type() {
            DataType::Int => Ok(Value::Int(v)),
            #[allow(clippy::cast_precision_loss)]
            DataType::Float => Ok(Value::Float(v as f64)),
            DataType::Timestamp => self.millis(v),
            _ => Err(self.wrong_type("an integer")),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        match (self.column.data_type(), i64::try_from(v)) {
            (DataType::Int | DataType::Timestamp, Ok(v)) => self.visit_i64(v),
            (DataType::Int | DataType::Timestamp, Err(_)) => Err(fail(
                self.failure,
                ParseError::IntegerOutOfRange {
                    column: self.column.name().to_owned(),
                },
            )),
            #[allow(clippy::cast_precision_loss)]
            (DataType::Float, _) => Ok(Value::Float(v as f64)),
            _ => Err(self.wrong_type("an integer")),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        match self.column.data_type() {
            DataType::Float if v.is_finite() => Ok(Value::Float(v)),
            // JSON text cannot hold them, and a JSON-lines sink could not write them
            // back: refused on every path, not turned into null.
            DataType::Float => Err(self.wrong_type(NON_FINITE)),
            // serde_json reads integers beyond u64 and below i64::MIN as floats; an
            // integral value out of range is an integer out of range, not a fraction.
            // (-2^63 itself arrives here only from a literal below i64::MIN that
            // rounded to it: i64::MIN written as an integer is read as one.)
            #[allow(clippy::cast_precision_loss)]
            DataType::Int | DataType::Timestamp
                if v.fract() == 0.0 && (v <= i64::MIN as f64 || v >= i64::MAX as f64) =>
            {
                Err(fail(
                    self.failure,
                    ParseError::IntegerOutOfRange {
                        column: self.column.name().to_owned(),
                    },
                ))
            }
            _ => Err(self.wrong_type("a number with a fraction or exponent")),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        match self.column.data_type() {
            DataType::String => Ok(Value::String(Arc::from(v))),
            DataType::Bytes => Ok(Value::Bytes(Arc::from(v.as_bytes()))),
            DataType::Timestamp => self.timestamp(Timestamp::parse_rfc3339(v)),
            DataType::Int | DataType::Float if self.lenient_numbers => self.number_in_string(v),
            _ => Err(self.wrong_type("a string")),
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        if self.column.data_type() != DataType::Bytes {
            return Err(self.wrong_type("an array"));
        }
        // Bytes that are not UTF-8 are written to JSON as an array of numbers
        // (`Value::to_json`), so that is read back as bytes.
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64 * 1024));
        while let Some(byte) = seq.next_element_seed(ByteSeed(&self))? {
            bytes.push(byte);
        }
        Ok(Value::Bytes(Arc::from(bytes)))
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Value, A::Error> {
        Err(self.wrong_type("an object"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A schema with a column of every type, shared with the typed path's tests.
    pub(crate) fn schema() -> Schema {
        Schema::new([
            Column::new("key", DataType::Int).primary_key(),
            Column::new("name", DataType::String),
            Column::new("score", DataType::Float).default(0.0),
            Column::new("note", DataType::String).nullable(),
            Column::new("at", DataType::Timestamp).nullable(),
            Column::new("extra", DataType::Json).nullable(),
            Column::new("ok", DataType::Bool).default(true),
            Column::new("blob", DataType::Bytes).nullable(),
        ])
        .unwrap()
    }

    fn parse(text: &str) -> Result<Arc<[Value]>, ParseError> {
        let parser = Parser::new(schema(), Format::Json);
        let from_bytes = parser.parse(&Payload::Bytes(Bytes::copy_from_slice(text.as_bytes())));
        // The same message given as a JSON value must have the same outcome (a JSON
        // value cannot hold a duplicate field).
        let duplicate = matches!(from_bytes, Err(ParseError::DuplicateField { .. }));
        if let (Ok(json), false) = (serde_json::from_str::<serde_json::Value>(text), duplicate) {
            let from_value = parser.parse(&Payload::Json(json));
            match (&from_bytes, &from_value) {
                (Ok(a), Ok(b)) => assert_eq!(a, b),
                (Err(a), Err(b)) => assert_eq!(a, b),
                _ => panic!("bytes and value disagree: {from_bytes:?} vs {from_value:?}"),
            }
        }
        from_bytes
    }

    #[test]
    fn fills_columns_defaults_and_nulls() {
        let values = parse(r#"{"name": "manul", "key": 1, "at": "2024-01-01T00:00:00Z", "extra": [1, {"a": 2}], "blob": "hi"}"#).unwrap();
        assert_eq!(values[0], Value::Int(1));
        assert_eq!(values[1], Value::from("manul"));
        assert_eq!(values[2], Value::Float(0.0), "default");
        assert_eq!(values[3], Value::Null, "nullable, absent");
        assert_eq!(
            values[4].as_timestamp().unwrap().to_string(),
            "2024-01-01T00:00:00Z"
        );
        assert_eq!(values[5], Value::from(serde_json::json!([1, {"a": 2}])));
        assert_eq!(values[6], Value::Bool(true));
        assert_eq!(values[7].as_bytes(), Some(&b"hi"[..]));
    }

    #[test]
    fn null_takes_the_default_and_ints_widen_to_float() {
        let values =
            parse(r#"{"key": 1, "name": "a", "score": null, "ok": null, "at": 1700000000000}"#).unwrap();
        assert_eq!(values[2], Value::Float(0.0));
        assert_eq!(values[6], Value::Bool(true));
        assert_eq!(
            values[4].as_timestamp().unwrap().as_unix_millis(),
            1_700_000_000_000
        );
        let values = parse(r#"{"key": 1, "name": "a", "score": 3}"#).unwrap();
        assert_eq!(values[2], Value::Float(3.0));
    }

    #[test]
    fn extra_fields_are_ignored() {
        let values = parse(r#"{"key": 1, "name": "a", "unknown": {"deep": [1, 2, 3]}}"#).unwrap();
        assert_eq!(values.len(), 8);
    }

    #[test]
    fn each_bad_input_has_its_reason() {
        let cases: &[(&str, ParseError)] = &[
            (
                r#"{"key": 1}"#,
                ParseError::MissingField {
                    column: "name".into(),
                },
            ),
            (
                r#"{"key": "1", "name": "a"}"#,
                ParseError::WrongType {
                    column: "key".into(),
                    expected: DataType::Int,
                    found: "a string",
                },
            ),
            (
                r#"{"key": 1.5, "name": "a"}"#,
                ParseError::WrongType {
                    column: "key".into(),
                    expected: DataType::Int,
                    found: "a number with a fraction or exponent",
                },
            ),
            (
                r#"{"key": 1, "name": {"first": "a"}}"#,
                ParseError::WrongType {
                    column: "name".into(),
                    expected: DataType::String,
                    found: "an object",
                },
            ),
            (
                r#"{"key": null, "name": "a"}"#,
                ParseError::NullNotAllowed { column: "key".into() },
            ),
            (
                r#"{"key": 1, "key": 2, "name": "a"}"#,
                ParseError::DuplicateField { column: "key".into() },
            ),
            (
                r#"{"key": 18446744073709551615, "name": "a"}"#,
                ParseError::IntegerOutOfRange { column: "key".into() },
            ),
            (r#"[1, 2]"#, ParseError::NotAnObject { found: "an array" }),
            (r#""text""#, ParseError::NotAnObject { found: "a string" }),
        ];
        for (input, expected) in cases {
            assert_eq!(&parse(input).unwrap_err(), expected, "input: {input}");
        }
        assert!(matches!(
            parse(r#"{"key": 1, "name": "a", "at": "noon"}"#),
            Err(ParseError::InvalidTimestamp { .. })
        ));
    }

    /// Regression: integers beyond u64 or below i64::MIN were reported as "a number
    /// with a fraction", not as out of range.
    #[test]
    fn integers_beyond_the_64_bit_range_are_out_of_range() {
        for big in ["18446744073709551616", "-9223372036854775809", "1e30", "-1e300"] {
            assert_eq!(
                parse(&format!(r#"{{"key": {big}, "name": "a"}}"#)).unwrap_err(),
                ParseError::IntegerOutOfRange { column: "key".into() },
                "{big}"
            );
        }
        for inexact in ["1e3", "1.5", "-0.5"] {
            assert!(
                matches!(
                    parse(&format!(r#"{{"key": {inexact}, "name": "a"}}"#)),
                    Err(ParseError::WrongType { .. })
                ),
                "{inexact}"
            );
        }
        assert_eq!(
            parse(r#"{"key": -9223372036854775808, "name": "a"}"#).unwrap()[0],
            Value::Int(i64::MIN)
        );
    }

    /// Regression: a JSON value nested about 11,000 deep sent as a value overflowed
    /// the stack; text had serde_json's depth limit. Both have the same limit now.
    #[test]
    fn json_nested_too_deeply_is_refused_the_same_way_as_text_and_value() {
        let nested = |levels: usize| {
            format!(
                r#"{{"key": 1, "name": "a", "extra": {}{}}}"#,
                "[".repeat(levels),
                "]".repeat(levels)
            )
        };
        // The message's own object is the first level.
        assert!(parse(&nested(MAX_JSON_DEPTH - 1)).is_ok());
        assert_eq!(parse(&nested(MAX_JSON_DEPTH)).unwrap_err(), ParseError::TooDeep);

        let mut deep = serde_json::json!(1);
        for _ in 0..100_000 {
            deep = serde_json::Value::Array(vec![deep]);
        }
        // Built by hand: `json!` would serialize `deep` recursively.
        let mut message = serde_json::Map::new();
        message.insert("key".into(), 1.into());
        message.insert("name".into(), "a".into());
        message.insert("extra".into(), deep);
        let message = serde_json::Value::Object(message);
        let parser = Parser::new(schema(), Format::Json);
        let payload = Payload::Json(message);
        assert_eq!(parser.parse(&payload).unwrap_err(), ParseError::TooDeep);
        let raw = payload.into_raw();
        assert!(raw.starts_with(br#"{"extra":[[[["#), "{:?}", &raw[..20]);
        assert_eq!(
            raw.len(),
            "{\"extra\":".len() + 100_000 * 2 + 1 + r#","key":1,"name":"a"}"#.len()
        );
        for format in [Format::Raw, Format::Bytes] {
            let parser = Parser::new(
                if format == Format::Raw {
                    Schema::raw()
                } else {
                    Schema::bytes()
                },
                format,
            );
            let mut deep = serde_json::json!(1);
            for _ in 0..100_000 {
                deep = serde_json::Value::Object(std::iter::once(("a".to_owned(), deep)).collect());
            }
            let payload = Payload::Json(deep);
            assert_eq!(parser.parse(&payload).unwrap_err(), ParseError::TooDeep);
            drop(payload.into_raw());
        }
    }

    proptest::proptest! {
        /// Regression: without serde_json's `float_roundtrip`, about 8% of doubles
        /// written as JSON (a row's display, `to_json`, the JSON-lines sink) read back
        /// one ULP off.
        #[test]
        fn floats_read_back_identical(bits in proptest::prelude::any::<u64>()) {
            let x = f64::from_bits(bits);
            proptest::prop_assume!(x.is_finite());
            let schema = Schema::new([Column::new("x", DataType::Float)]).unwrap();
            let row = crate::Row::new(&schema, vec![Value::Float(x)]).unwrap();
            let parser = Parser::new(schema, Format::Json);
            for text in [row.to_string(), row.to_json().to_string()] {
                let values = parser.parse(&Payload::Bytes(Bytes::from(text.clone()))).unwrap();
                proptest::prop_assert_eq!(values[0].as_float().map(f64::to_bits), Some(bits), "{}", text);
            }
        }
    }

    /// A parser of `{"i": int, "f": float}` (both nullable), with or without lenient
    /// numbers.
    fn numbers(lenient_numbers: bool) -> Parser {
        let schema = Schema::new([
            Column::new("i", DataType::Int).nullable(),
            Column::new("f", DataType::Float).nullable(),
        ])
        .unwrap();
        Parser::new(
            schema,
            ParseOptions {
                format: Format::Json,
                lenient_numbers,
            },
        )
    }

    /// `text` parsed as bytes and as a `serde_json::Value`, checked to agree.
    fn parse_with(parser: &Parser, text: &str) -> Result<Arc<[Value]>, ParseError> {
        let from_bytes = parser.parse(&Payload::Bytes(Bytes::copy_from_slice(text.as_bytes())));
        let json = serde_json::from_str::<serde_json::Value>(text).unwrap();
        let from_value = parser.parse(&Payload::Json(json));
        assert_eq!(from_bytes, from_value, "bytes and value disagree on {text}");
        from_bytes
    }

    /// The outcome of `field` holding `value` (JSON text) under `parser`.
    fn field(parser: &Parser, field: &str, value: &str) -> Result<Value, ParseError> {
        let index = parser.schema().index_of(field).unwrap();
        parse_with(parser, &format!(r#"{{"{field}": {value}}}"#)).map(|values| values[index].clone())
    }

    #[test]
    fn lenient_numbers_read_json_number_syntax_in_strings_and_refuse_the_rest() {
        let lenient = numbers(true);
        let wrong = |column: &str, expected, found| {
            Err(ParseError::WrongType {
                column: column.into(),
                expected,
                found,
            })
        };
        let out_of_range = Err(ParseError::IntegerOutOfRange { column: "i".into() });
        let int_cases: &[(&str, Result<Value, ParseError>)] = &[
            (r#""12""#, Ok(Value::Int(12))),
            (r#""0""#, Ok(Value::Int(0))),
            (r#""-7""#, Ok(Value::Int(-7))),
            (r#""9223372036854775807""#, Ok(Value::Int(i64::MAX))),
            (r#""-9223372036854775808""#, Ok(Value::Int(i64::MIN))),
            (r#""9223372036854775808""#, out_of_range.clone()),
            (r#""18446744073709551616""#, out_of_range.clone()),
            (r#""1e30""#, out_of_range.clone()),
            (r#""1e400""#, out_of_range.clone()),
            (
                r#""1.5""#,
                wrong("i", DataType::Int, "a number with a fraction or exponent"),
            ),
            (
                r#""1e3""#,
                wrong("i", DataType::Int, "a number with a fraction or exponent"),
            ),
            (
                r#""1.0""#,
                wrong("i", DataType::Int, "a number with a fraction or exponent"),
            ),
        ];
        let float_cases: &[(&str, Result<Value, ParseError>)] = &[
            (r#""65000.1""#, Ok(Value::Float(65000.1))),
            (r#""12""#, Ok(Value::Float(12.0))),
            (r#""-0.5""#, Ok(Value::Float(-0.5))),
            (r#""1e3""#, Ok(Value::Float(1000.0))),
            (r#""1E-3""#, Ok(Value::Float(0.001))),
            (r#""2.5e+2""#, Ok(Value::Float(250.0))),
            (
                r#""18446744073709551616""#,
                Ok(Value::Float(18_446_744_073_709_551_616.0)),
            ),
            (r#""1e400""#, wrong("f", DataType::Float, STRING_BEYOND_FLOAT)),
            (r#""-1e400""#, wrong("f", DataType::Float, STRING_BEYOND_FLOAT)),
        ];
        for (input, expected) in int_cases {
            assert_eq!(&field(&lenient, "i", input), expected, "int column, {input}");
        }
        for (input, expected) in float_cases {
            assert_eq!(&field(&lenient, "f", input), expected, "float column, {input}");
        }
        // Not JSON number syntax: refused for both types, with the lenient reason.
        for input in [
            r#""""#,
            r#"" 1""#,
            r#""1 ""#,
            r#""\n1""#,
            r#""+1""#,
            r#"".5""#,
            r#""1.""#,
            r#""01""#,
            r#""-""#,
            r#""1e""#,
            r#""0x10""#,
            r#""1_000""#,
            r#""1,5""#,
            r#""NaN""#,
            r#""nan""#,
            r#""inf""#,
            r#""-inf""#,
            r#""Infinity""#,
            r#""-Infinity""#,
            r#""12abc""#,
            r#""1 2""#,
            r#""\"1\"""#,
            r#""١٢""#,
            r#""high""#,
        ] {
            assert_eq!(
                field(&lenient, "i", input),
                wrong("i", DataType::Int, STRING_NOT_A_NUMBER),
                "int column, {input}"
            );
            assert_eq!(
                field(&lenient, "f", input),
                wrong("f", DataType::Float, STRING_NOT_A_NUMBER),
                "float column, {input}"
            );
        }
        // Numbers as numbers, and nulls, are read as without the option.
        assert_eq!(field(&lenient, "i", "12"), Ok(Value::Int(12)));
        assert_eq!(field(&lenient, "f", "65000.1"), Ok(Value::Float(65000.1)));
        assert_eq!(field(&lenient, "i", "null"), Ok(Value::Null));
        assert_eq!(
            field(&lenient, "i", "true"),
            wrong("i", DataType::Int, "a boolean")
        );
    }

    #[test]
    fn without_lenient_numbers_a_number_string_is_still_the_wrong_type() {
        let strict = numbers(false);
        for input in [r#""1""#, r#""65000.1""#, r#""1e3""#] {
            assert_eq!(
                field(&strict, "i", input),
                Err(ParseError::WrongType {
                    column: "i".into(),
                    expected: DataType::Int,
                    found: "a string",
                }),
                "{input}"
            );
            assert_eq!(
                field(&strict, "f", input),
                Err(ParseError::WrongType {
                    column: "f".into(),
                    expected: DataType::Float,
                    found: "a string",
                }),
                "{input}"
            );
        }
    }

    #[test]
    fn lenient_numbers_read_primary_keys_and_leave_other_columns_alone() {
        let parser = Parser::new(
            schema(),
            ParseOptions {
                format: Format::Json,
                lenient_numbers: true,
            },
        );
        let values = parse_with(
            &parser,
            r#"{"key": "7", "name": "12", "score": "2.5", "at": "2024-01-01T00:00:00Z", "blob": "3"}"#,
        )
        .unwrap();
        assert_eq!(values[0], Value::Int(7), "a key column reads a number string");
        assert_eq!(values[1], Value::from("12"), "a string column keeps its string");
        assert_eq!(values[2], Value::Float(2.5));
        assert_eq!(values[7].as_bytes(), Some(&b"3"[..]));
        // A timestamp column reads RFC 3339 strings, not numbers in strings.
        assert!(matches!(
            parse_with(&parser, r#"{"key": 1, "name": "a", "at": "1700000000000"}"#),
            Err(ParseError::InvalidTimestamp { .. })
        ));
        // A bool column is not numeric.
        assert_eq!(
            parse_with(&parser, r#"{"key": 1, "name": "a", "ok": "1"}"#).unwrap_err(),
            ParseError::WrongType {
                column: "ok".into(),
                expected: DataType::Bool,
                found: "a string",
            }
        );
    }

    proptest::proptest! {
        /// A float sent as a string is exactly the float sent as a number, on the text
        /// and the value paths, whichever way the number is written.
        #[test]
        fn a_float_in_a_string_is_the_float_as_a_number(bits in proptest::prelude::any::<u64>(), exponent in proptest::prelude::any::<bool>()) {
            let x = f64::from_bits(bits);
            proptest::prop_assume!(x.is_finite());
            let lenient = numbers(true);
            let text = if exponent { format!("{x:e}") } else { serde_json::Number::from_f64(x).unwrap().to_string() };
            let as_number = field(&lenient, "f", &text);
            let as_string = field(&lenient, "f", &format!("\"{text}\""));
            proptest::prop_assert_eq!(&as_string, &as_number, "{}", text);
            proptest::prop_assert_eq!(as_string.unwrap().as_float().map(f64::to_bits), Some(bits), "{}", text);
        }

        /// An integer sent as a string is the integer sent as a number, for an int and
        /// a float column, including beyond the 64-bit range.
        #[test]
        fn an_integer_in_a_string_is_the_integer_as_a_number(n in proptest::prelude::any::<i128>()) {
            let lenient = numbers(true);
            for column in ["i", "f"] {
                let as_number = field(&lenient, column, &n.to_string());
                let as_string = field(&lenient, column, &format!("\"{n}\""));
                proptest::prop_assert_eq!(&as_string, &as_number, "{} in {}", n, column);
            }
            if let Ok(n) = i64::try_from(n) {
                proptest::prop_assert_eq!(field(&lenient, "i", &format!("\"{n}\"")), Ok(Value::Int(n)));
            }
        }
    }

    #[test]
    fn malformed_json_is_reported_with_its_position() {
        for input in [
            r#"{"key": 1, "name": "a""#,
            "",
            "{\"key\": 1, \"name\": \"a\"} trailing",
            "{key: 1}",
        ] {
            match parse(input) {
                Err(ParseError::MalformedJson(error)) => {
                    assert!(error.line().is_some() && error.column().is_some(), "{error}");
                    assert!(error.to_string().contains(" at line "), "{error}");
                }
                other => panic!("{input:?} gave {other:?}"),
            }
        }
        // Trailing whitespace, such as the newline of a JSON-lines file, is fine.
        assert!(parse("{\"key\": 1, \"name\": \"a\"}\n").is_ok());
    }

    #[test]
    fn malformed_json_is_structured_with_serde_json_as_its_source() {
        use std::error::Error as _;

        let Err(ParseError::MalformedJson(error)) = parse("{\"key\": 1,\n  key: 2}") else {
            panic!("not malformed JSON");
        };
        assert_eq!((error.line(), error.column()), (Some(2), Some(3)));
        assert_eq!(error.category(), JsonErrorCategory::Syntax);
        assert_eq!(error.message(), "key must be a string");
        // The same text as before the error was structured.
        assert_eq!(
            ParseError::MalformedJson(error.clone()).to_string(),
            "malformed JSON: key must be a string at line 2 column 3"
        );
        let reason = ParseError::MalformedJson(error);
        let source = reason.source().expect("a source");
        let json = source
            .downcast_ref::<serde_json::Error>()
            .expect("serde_json's error");
        assert_eq!((json.line(), json.column()), (2, 3));

        let Err(ParseError::MalformedJson(cut)) = parse(r#"{"key": 1, "name": "a""#) else {
            panic!("not malformed JSON");
        };
        assert_eq!(cut.category(), JsonErrorCategory::Eof);
        let Err(ParseError::MalformedJson(trailing)) = parse("{\"key\": 1, \"name\": \"a\"} x") else {
            panic!("not malformed JSON");
        };
        assert_eq!(trailing.message(), "trailing characters");
    }

    #[test]
    fn source_reasons_keep_their_message_and_source() {
        use std::error::Error as _;

        let plain = ParseError::Source("line 2: expected 2 fields, found 4".into());
        assert_eq!(plain.to_string(), "line 2: expected 2 fields, found 4");
        assert!(plain.source().is_none());

        let cause = "x".parse::<i64>().unwrap_err();
        let with = ParseError::Source(SourceReason::with_source("line 3: bad count", cause.clone()));
        assert_eq!(with.to_string(), "line 3: bad count");
        let source = with.source().expect("a source");
        assert_eq!(source.downcast_ref::<std::num::ParseIntError>(), Some(&cause));

        // An error as the reason: its text, and the error itself below, downcastable.
        let json = serde_json::from_str::<serde_json::Value>("[1,").unwrap_err();
        let text = json.to_string();
        let outer = ParseError::Source(SourceReason::from_error(json));
        assert_eq!(outer.to_string(), text);
        let below = outer.source().expect("a source");
        assert!(below.is::<serde_json::Error>(), "{below:?}");
    }

    #[test]
    fn invalid_keys_say_what_was_expected_and_given() {
        let keyed = Parser::new(
            Schema::new([
                Column::new("id", DataType::Int).primary_key(),
                Column::new("venue", DataType::String).primary_key(),
                Column::new("p", DataType::Float),
            ])
            .unwrap(),
            Format::Json,
        );
        let expected = [
            ("id".to_owned(), DataType::Int),
            ("venue".to_owned(), DataType::String),
        ];
        let Err(ParseError::InvalidKey(short)) = keyed.check_key(&Key::from(1)) else {
            panic!("a one-value key passed");
        };
        assert_eq!(short.expected(), &expected[..]);
        assert_eq!(short.given(), &Key::from(1));
        assert_eq!(
            short.to_string(),
            format!(
                "the primary key has 2 column(s), but the key {} has 1 value(s)",
                Key::from(1)
            )
        );
        let wrong = Key::new([Value::from("1"), Value::from("x")]);
        let Err(ParseError::InvalidKey(typed)) = keyed.check_key(&wrong) else {
            panic!("a string id passed");
        };
        assert_eq!(typed.given(), &wrong);
        assert_eq!(
            typed.to_string(),
            "key column `id` is int, but the key holds a string"
        );
        assert!(
            keyed
                .check_key(&Key::new([Value::from(1), Value::from("x")]))
                .is_ok()
        );

        let unkeyed = Parser::new(
            Schema::new([Column::new("p", DataType::Float)]).unwrap(),
            Format::Json,
        );
        let Err(ParseError::InvalidKey(none)) = unkeyed.check_key(&Key::from(1)) else {
            panic!("a key passed on a table without one");
        };
        assert!(none.expected().is_empty());
        assert_eq!(
            none.to_string(),
            "this table has no primary key, so rows cannot be deleted by key"
        );
    }

    #[test]
    fn raw_and_bytes_formats() {
        let raw = Parser::new(Schema::raw(), Format::Raw);
        assert_eq!(
            &*raw.parse(&Payload::Bytes(Bytes::from_static(b"hello"))).unwrap(),
            &[Value::from("hello")]
        );
        assert_eq!(
            raw.parse(&Payload::Bytes(Bytes::from_static(b"ab\xffcd")))
                .unwrap_err(),
            ParseError::InvalidUtf8 { valid_up_to: 2 }
        );
        let bytes = Parser::new(Schema::bytes(), Format::Bytes);
        assert_eq!(
            &*bytes
                .parse(&Payload::Bytes(Bytes::from_static(b"ab\xffcd")))
                .unwrap(),
            &[Value::Bytes(Arc::from(&b"ab\xffcd"[..]))]
        );
    }

    #[test]
    fn keys_are_checked_against_the_primary_key() {
        let parser = Parser::new(schema(), Format::Json);
        assert!(parser.check_key(&Key::from(1)).is_ok());
        assert!(parser.check_key(&Key::from("1")).is_err());
        assert!(
            parser
                .check_key(&Key::new([Value::Int(1), Value::Int(2)]))
                .is_err()
        );
        let no_key = Parser::new(Schema::raw(), Format::Raw);
        assert!(no_key.check_key(&Key::from("x")).is_err());
    }

    #[test]
    fn wide_schemas_parse() {
        let columns: Vec<Column> = (0..200)
            .map(|i| Column::new(format!("c{i}"), DataType::Int).default(-1))
            .collect();
        let parser = Parser::new(Schema::new(columns).unwrap(), Format::Json);
        let values = parser
            .parse(&Payload::Bytes(Bytes::from_static(br#"{"c150": 7, "c3": 1}"#)))
            .unwrap();
        assert_eq!(values[150], Value::Int(7));
        assert_eq!(values[3], Value::Int(1));
        assert_eq!(values[0], Value::Int(-1));
    }

    /// A set of columns is full only when every column is in it, at every width: one
    /// column missing, whichever, leaves it not full.
    #[test]
    fn seen_is_full_only_with_every_column() {
        for columns in [1, 2, 63, 64, 65, 127, 128, 129, 200] {
            for missing in 0..columns {
                let mut seen = Seen::new(columns);
                for i in (0..columns).filter(|&i| i != missing) {
                    assert!(seen.insert(i));
                }
                assert!(!seen.is_full(columns), "{columns} columns, {missing} missing");
                assert!(seen.insert(missing));
                assert!(seen.is_full(columns), "{columns} columns");
                assert!(!seen.insert(missing));
            }
        }
    }
}
