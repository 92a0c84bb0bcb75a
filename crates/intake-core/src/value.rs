//! Cell values and their types.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;

/// The type of a column.
///
/// Whether a column accepts nulls is a property of the [`Column`](crate::Column), not of
/// its type: see [`Column::nullable`](crate::Column::nullable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DataType {
    /// `true` or `false`.
    Bool,
    /// A signed 64-bit integer. JSON numbers with a fraction or an exponent are refused.
    Int,
    /// A 64-bit float. JSON integers are accepted and widened.
    Float,
    /// A UTF-8 string.
    String,
    /// Arbitrary bytes. From JSON, a string is taken as its UTF-8 bytes.
    Bytes,
    /// Any JSON value, kept as it came.
    Json,
    /// A point in time, from an RFC 3339 string (`2024-05-01T12:00:00Z`) or an
    /// integer count of milliseconds since the Unix epoch.
    Timestamp,
}

impl DataType {
    /// Whether values of this type can form (part of) a primary key.
    ///
    /// Floats and JSON values are excluded: equality on them is not what users expect
    /// of a key (`0.1 + 0.2`, `{"a":1,"b":2}` vs `{"b":2,"a":1}`).
    pub fn can_be_key(self) -> bool {
        !matches!(self, DataType::Float | DataType::Json)
    }

    /// Whether `value` is of this type. `Null` is of no type.
    pub fn matches(self, value: &Value) -> bool {
        matches!(
            (self, value),
            (DataType::Bool, Value::Bool(_))
                | (DataType::Int, Value::Int(_))
                | (DataType::Float, Value::Float(_))
                | (DataType::String, Value::String(_))
                | (DataType::Bytes, Value::Bytes(_))
                | (DataType::Json, Value::Json(_))
                | (DataType::Timestamp, Value::Timestamp(_))
        )
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DataType::Bool => "bool",
            DataType::Int => "int",
            DataType::Float => "float",
            DataType::String => "string",
            DataType::Bytes => "bytes",
            DataType::Json => "json",
            DataType::Timestamp => "timestamp",
        })
    }
}

/// A point in time with nanosecond precision, as nanoseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The timestamp `nanos` nanoseconds after the Unix epoch.
    pub const fn from_unix_nanos(nanos: i64) -> Self {
        Timestamp(nanos)
    }

    /// The timestamp `millis` milliseconds after the Unix epoch, or `None` if it is out of
    /// the representable range (years 1677 to 2262).
    pub const fn from_unix_millis(millis: i64) -> Option<Self> {
        match millis.checked_mul(1_000_000) {
            Some(nanos) => Some(Timestamp(nanos)),
            None => None,
        }
    }

    /// Parses an RFC 3339 timestamp such as `2024-05-01T12:00:00.5+02:00`.
    ///
    /// # Errors
    ///
    /// [`TimestampError`] when `text` is not RFC 3339 or is outside the years 1677 to
    /// 2262.
    pub fn parse_rfc3339(text: &str) -> Result<Self, TimestampError> {
        let parsed: jiff::Timestamp = text.parse().map_err(|e: jiff::Error| TimestampError {
            text: text.to_owned(),
            kind: TimestampErrorKind::Invalid(e),
        })?;
        i64::try_from(parsed.as_nanosecond())
            .map(Timestamp)
            .map_err(|_| TimestampError {
                text: text.to_owned(),
                kind: TimestampErrorKind::OutOfRange,
            })
    }

    /// Nanoseconds since the Unix epoch.
    pub const fn as_unix_nanos(self) -> i64 {
        self.0
    }

    /// Whole milliseconds since the Unix epoch (rounded towards negative infinity).
    pub const fn as_unix_millis(self) -> i64 {
        self.0.div_euclid(1_000_000)
    }
}

/// Why [`Timestamp::parse_rfc3339`] refused a text: it is not RFC 3339 (the parser's
/// error is the [`source`](std::error::Error::source)), or it is outside the years 1677
/// to 2262.
///
/// The message includes the parser's explanation too, for reports that show only the
/// top error.
///
/// # Examples
///
/// ```
/// use std::error::Error as _;
/// use intake_core::Timestamp;
///
/// let error = Timestamp::parse_rfc3339("yesterday").unwrap_err();
/// assert_eq!(error.text(), "yesterday");
/// assert!(!error.is_out_of_range());
/// assert!(error.source().is_some());
///
/// let error = Timestamp::parse_rfc3339("3000-01-01T00:00:00Z").unwrap_err();
/// assert!(error.is_out_of_range());
/// assert_eq!(error.to_string(), "timestamp 3000-01-01T00:00:00Z is outside the years 1677 to 2262");
/// ```
#[derive(Debug, Clone)]
pub struct TimestampError {
    text: String,
    kind: TimestampErrorKind,
}

#[derive(Debug, Clone)]
enum TimestampErrorKind {
    // jiff's error stays private, so a jiff update does not change intake's API.
    Invalid(jiff::Error),
    OutOfRange,
}

impl TimestampError {
    /// The text that was refused.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the text is a valid RFC 3339 timestamp outside the years 1677 to 2262
    /// (rather than not a timestamp at all).
    pub fn is_out_of_range(&self) -> bool {
        matches!(self.kind, TimestampErrorKind::OutOfRange)
    }
}

impl fmt::Display for TimestampError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            TimestampErrorKind::Invalid(error) => fmt::Display::fmt(error, f),
            TimestampErrorKind::OutOfRange => {
                write!(f, "timestamp {} is outside the years 1677 to 2262", self.text)
            }
        }
    }
}

impl std::error::Error for TimestampError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            TimestampErrorKind::Invalid(error) => Some(error),
            TimestampErrorKind::OutOfRange => None,
        }
    }
}

impl fmt::Display for Timestamp {
    /// Formats as RFC 3339 in UTC.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match jiff::Timestamp::from_nanosecond(i128::from(self.0)) {
            Ok(ts) => write!(f, "{ts}"),
            // Every i64 count of nanoseconds is within jiff's range; keep a readable
            // fallback rather than a panic path.
            Err(_) => write!(f, "{}ns", self.0),
        }
    }
}

/// Serializes as the RFC 3339 string of [`Display`](fmt::Display) (`"2024-05-01T10:00:00.5Z"`),
/// as [`Value::to_json`] writes a timestamp, so a `Timestamp` field of a
/// `#[derive(Serialize, RowType)]` struct fills its timestamp column on a typed send.
///
/// # Examples
///
/// ```
/// use intake_core::Timestamp;
///
/// let t = Timestamp::from_unix_millis(1_714_564_800_500).unwrap();
/// assert_eq!(serde_json::to_string(&t)?, r#""2024-05-01T12:00:00.5Z""#);
/// # Ok::<(), serde_json::Error>(())
/// ```
impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Deserializes from what a timestamp column accepts: an RFC 3339 string (any offset,
/// as in [`Timestamp::parse_rfc3339`]) or an integer count of milliseconds since the
/// Unix epoch.
///
/// # Examples
///
/// ```
/// use intake_core::Timestamp;
///
/// let text: Timestamp = serde_json::from_str(r#""2024-05-01T14:00:00.5+02:00""#)?;
/// let millis: Timestamp = serde_json::from_str("1714564800500")?;
/// assert_eq!(text, millis);
/// # Ok::<(), serde_json::Error>(())
/// ```
impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TimestampVisitor)
    }
}

struct TimestampVisitor;

impl serde::de::Visitor<'_> for TimestampVisitor {
    type Value = Timestamp;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an RFC 3339 timestamp string or an integer of milliseconds since the Unix epoch")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Timestamp, E> {
        Timestamp::parse_rfc3339(text).map_err(E::custom)
    }

    fn visit_i64<E: serde::de::Error>(self, millis: i64) -> Result<Timestamp, E> {
        Timestamp::from_unix_millis(millis).ok_or_else(|| {
            E::custom(format_args!(
                "{millis} ms since the epoch is outside the years 1677 to 2262"
            ))
        })
    }

    fn visit_u64<E: serde::de::Error>(self, millis: u64) -> Result<Timestamp, E> {
        match i64::try_from(millis) {
            Ok(millis) => self.visit_i64(millis),
            Err(_) => Err(E::custom(format_args!(
                "{millis} ms since the epoch is outside the years 1677 to 2262"
            ))),
        }
    }
}

/// One cell of a [`Row`](crate::Row).
///
/// Strings, bytes and JSON are reference counted, so cloning a value (for example into
/// a [`Key`](crate::Key)) never copies its contents. A value takes 24 bytes: every
/// variant's payload is at most two words, so a row of `n` columns holds `24 n` bytes
/// of values.
///
/// Equality is exact: floats compare by their bits (so a `NaN` equals itself and `0.0`
/// differs from `-0.0`), which is what deciding "did this row change?" needs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Value {
    /// No value.
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed 64-bit integer.
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// A string.
    String(Arc<str>),
    /// Bytes. (An `Arc<[u8]>` rather than a [`Bytes`], which takes four words and
    /// would make every value of every row 40 bytes instead of 24; `From<Bytes>`
    /// copies the bytes once.)
    Bytes(Arc<[u8]>),
    /// A JSON value.
    Json(Arc<serde_json::Value>),
    /// A timestamp.
    Timestamp(Timestamp),
}

impl Value {
    /// Whether this is [`Value::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The float, if this is a float or an integer.
    pub fn as_float(&self) -> Option<f64> {
        match self {
            Value::Float(x) => Some(*x),
            #[allow(clippy::cast_precision_loss)]
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The bytes, if this is a bytes value.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The JSON value, if this is one.
    pub fn as_json(&self) -> Option<&serde_json::Value> {
        match self {
            Value::Json(j) => Some(j),
            _ => None,
        }
    }

    /// The timestamp, if this is one.
    pub fn as_timestamp(&self) -> Option<Timestamp> {
        match self {
            Value::Timestamp(t) => Some(*t),
            _ => None,
        }
    }

    /// A short name of the value's kind, used in error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::String(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::Json(_) => "json",
            Value::Timestamp(_) => "timestamp",
        }
    }

    /// The value as JSON: bytes become a string when they are UTF-8 and an array of
    /// numbers otherwise; timestamps become RFC 3339 strings.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => (*b).into(),
            Value::Int(i) => (*i).into(),
            Value::Float(x) => (*x).into(),
            Value::String(s) => serde_json::Value::String(s.to_string()),
            Value::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => serde_json::Value::String(s.to_owned()),
                Err(_) => b.iter().map(|&byte| serde_json::Value::from(byte)).collect(),
            },
            Value::Json(j) => (**j).clone(),
            Value::Timestamp(t) => serde_json::Value::String(t.to_string()),
        }
    }
}

/// Serializes as [`Value::to_json`] writes the value: null, a boolean, a number, a
/// string, bytes as a string when they are UTF-8 and an array of numbers otherwise, JSON
/// as it is, a timestamp as an RFC 3339 string.
impl serde::Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => serializer.serialize_unit(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Int(i) => serializer.serialize_i64(*i),
            Value::Float(x) => serializer.serialize_f64(*x),
            Value::String(s) => serializer.serialize_str(s),
            Value::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => serializer.serialize_str(s),
                // A sequence, not `serialize_bytes`, so every format writes what
                // `to_json` does rather than its own bytes encoding.
                Err(_) => serializer.collect_seq(b.iter()),
            },
            Value::Json(j) => j.serialize(serializer),
            Value::Timestamp(t) => t.serialize(serializer),
        }
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (Value::String(a), Value::String(b)) => a == b,
            (Value::Bytes(a), Value::Bytes(b)) => a == b,
            (Value::Json(a), Value::Json(b)) => a == b,
            (Value::Timestamp(a), Value::Timestamp(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl Hash for Value {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            Value::Null => {}
            Value::Bool(b) => b.hash(state),
            Value::Int(i) => i.hash(state),
            Value::Float(x) => x.to_bits().hash(state),
            Value::String(s) => s.hash(state),
            Value::Bytes(b) => b.hash(state),
            // Equal JSON values serialize identically, so hashing the serialization
            // (streamed, without building a string) is consistent with Eq.
            Value::Json(j) => {
                let _ = serde_json::to_writer(HashWriter(state), &**j);
            }
            Value::Timestamp(t) => t.hash(state),
        }
    }
}

impl Value {
    fn rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) => 2,
            Value::Float(_) => 3,
            Value::String(_) => 4,
            Value::Bytes(_) => 5,
            Value::Json(_) => 6,
            Value::Timestamp(_) => 7,
        }
    }
}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Value {
    /// A total order, so that keys and snapshots can be sorted: values of different
    /// kinds order by kind (null first), floats by [`f64::total_cmp`], JSON by its text.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self, other) {
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            (Value::Float(a), Value::Float(b)) => a.total_cmp(b),
            (Value::String(a), Value::String(b)) => a.cmp(b),
            (Value::Bytes(a), Value::Bytes(b)) => a.cmp(b),
            (Value::Json(a), Value::Json(b)) => a.to_string().cmp(&b.to_string()),
            (Value::Timestamp(a), Value::Timestamp(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

/// Feeds serialized bytes to a hasher.
struct HashWriter<'a, H>(&'a mut H);

impl<H: Hasher> std::io::Write for HashWriter<'_, H> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl fmt::Display for Value {
    /// Strings and bytes (when UTF-8) print bare; null prints as an empty string, which
    /// is also what CSV expects. Width and alignment (`{:>8}`) are honoured.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.pad(""),
            Value::Bool(b) => fmt::Display::fmt(b, f),
            Value::Int(i) => fmt::Display::fmt(i, f),
            Value::Float(x) => fmt::Display::fmt(x, f),
            Value::String(s) => f.pad(s),
            Value::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => f.pad(s),
                Err(_) => f.pad(&format!("{b:?}")),
            },
            Value::Json(j) => f.pad(&j.to_string()),
            Value::Timestamp(t) => f.pad(&t.to_string()),
        }
    }
}

macro_rules! from_impls {
    ($($t:ty => |$v:ident| $e:expr;)*) => {
        $(impl From<$t> for Value {
            fn from($v: $t) -> Self {
                $e
            }
        })*
    };
}

from_impls! {
    bool => |v| Value::Bool(v);
    i64 => |v| Value::Int(v);
    i32 => |v| Value::Int(i64::from(v));
    u32 => |v| Value::Int(i64::from(v));
    f64 => |v| Value::Float(v);
    &str => |v| Value::String(Arc::from(v));
    String => |v| Value::String(Arc::from(v));
    Arc<str> => |v| Value::String(v);
    Bytes => |v| Value::Bytes(Arc::from(&v[..]));
    Vec<u8> => |v| Value::Bytes(Arc::from(v));
    &[u8] => |v| Value::Bytes(Arc::from(v));
    Arc<[u8]> => |v| Value::Bytes(v);
    serde_json::Value => |v| Value::Json(Arc::new(v));
    Timestamp => |v| Value::Timestamp(v);
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(value: Option<T>) -> Self {
        value.map_or(Value::Null, Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row holds one value per column, and every stored key one or more: the
    /// size is what a table of millions of rows pays per cell (the type's docs say 24).
    #[test]
    fn a_value_takes_three_words_and_a_key_no_more() {
        assert_eq!(std::mem::size_of::<Value>(), 24);
        assert_eq!(std::mem::size_of::<Option<Value>>(), 24);
        assert!(std::mem::size_of::<crate::Key>() <= 24);
    }

    #[test]
    fn bytes_values_hold_their_bytes_whatever_they_were_made_from() {
        let buffer = Bytes::from_static(b"a large buffer read from a socket");
        let slice = buffer.slice(2..7);
        let value = Value::from(slice);
        assert_eq!(value.as_bytes(), Some(&b"large"[..]));
        assert_eq!(value, Value::from(b"large".to_vec()));
        assert_eq!(value, Value::from(&b"large"[..]));
    }

    #[test]
    fn floats_compare_by_bits() {
        assert_eq!(Value::Float(f64::NAN), Value::Float(f64::NAN));
        assert_ne!(Value::Float(0.0), Value::Float(-0.0));
        assert_ne!(Value::Int(1), Value::Float(1.0));
    }

    #[test]
    fn timestamps_parse_and_print_rfc3339() {
        let t = Timestamp::parse_rfc3339("2024-05-01T12:00:00.5+02:00").unwrap();
        assert_eq!(t.to_string(), "2024-05-01T10:00:00.5Z");
        assert_eq!(Timestamp::from_unix_millis(t.as_unix_millis()), Some(t));
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
        assert!(Timestamp::parse_rfc3339("3000-01-01T00:00:00Z").is_err());
    }

    #[test]
    fn timestamp_errors_are_structured_with_the_parser_error_as_source() {
        use std::error::Error as _;

        let invalid = Timestamp::parse_rfc3339("yesterday").unwrap_err();
        assert_eq!(invalid.text(), "yesterday");
        assert!(!invalid.is_out_of_range());
        let source = invalid.source().expect("the parser's error");
        // The message stays the parser's explanation.
        assert_eq!(invalid.to_string(), source.to_string());

        let far = Timestamp::parse_rfc3339("3000-01-01T00:00:00Z").unwrap_err();
        assert!(far.is_out_of_range());
        assert!(far.source().is_none());
        assert_eq!(
            far.to_string(),
            "timestamp 3000-01-01T00:00:00Z is outside the years 1677 to 2262"
        );
    }

    #[test]
    fn display_is_bare() {
        assert_eq!(Value::from("a,b").to_string(), "a,b");
        assert_eq!(Value::Null.to_string(), "");
        assert_eq!(Value::from(serde_json::json!({"a": 1})).to_string(), r#"{"a":1}"#);
        assert_eq!(
            format!(
                "[{:>4}|{:<3}|{:^5}]",
                Value::Int(7),
                Value::from("ab"),
                Value::Null
            ),
            "[   7|ab |     ]"
        );
    }
}
