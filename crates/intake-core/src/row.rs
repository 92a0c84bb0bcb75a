//! Rows and the keys that identify them in a table.

use std::fmt;
use std::ops::Index;
use std::sync::Arc;

use crate::schema::Schema;
use crate::value::{Timestamp, Value};

/// Identifies a row of a [`Table`](crate::Table).
///
/// In a table with a primary key, the key is the row's primary-key values, so a later
/// row with the same values replaces the earlier one. In a table without one, every row
/// is appended under a generated key.
///
/// Keys are cheap to clone and compare.
///
/// # Examples
///
/// ```
/// use intake_core::{Key, Value};
///
/// let single = Key::from(7);
/// assert_eq!(single, Key::new([Value::Int(7)]));
/// let composite = Key::new([Value::from("AAPL"), Value::from(2024)]);
/// assert_eq!(composite.values().len(), 2);
/// assert_eq!(composite.to_string(), "(AAPL, 2024)");
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key(KeyRepr);

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
enum KeyRepr {
    Generated(u64),
    Single(Value),
    Composite(Arc<[Value]>),
}

/// Every commit hashes the key of each message it applies, so the common keys hash
/// one word: a generated number or a single integer is written as it is, with no
/// discriminant of the key or of the value before it (the derived hash would write
/// three words). Equal keys still hash equally; keys of different kinds that hash
/// alike are told apart by equality, and one table never mixes them.
impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match &self.0 {
            KeyRepr::Generated(n) => state.write_u64(*n),
            KeyRepr::Single(Value::Int(i)) => state.write_i64(*i),
            KeyRepr::Single(value) => value.hash(state),
            KeyRepr::Composite(values) => values.hash(state),
        }
    }
}

impl Key {
    /// The key made of these primary-key values, in schema order.
    pub fn new(values: impl IntoIterator<Item = Value>) -> Self {
        let mut values: Vec<Value> = values.into_iter().collect();
        match values.pop() {
            Some(value) if values.is_empty() => Key(KeyRepr::Single(value)),
            last => {
                values.extend(last);
                Key(KeyRepr::Composite(values.into()))
            }
        }
    }

    /// A generated key, as given to rows of a table without a primary key.
    pub fn generated(id: u64) -> Self {
        Key(KeyRepr::Generated(id))
    }

    /// The primary-key values; empty for a generated key.
    pub fn values(&self) -> &[Value] {
        match &self.0 {
            KeyRepr::Generated(_) => &[],
            KeyRepr::Single(value) => std::slice::from_ref(value),
            KeyRepr::Composite(values) => values,
        }
    }

    /// The number of a generated key, or `None` for a primary key.
    pub fn generated_id(&self) -> Option<u64> {
        match self.0 {
            KeyRepr::Generated(id) => Some(id),
            _ => None,
        }
    }

    /// The key of a row with these values under `schema`.
    pub(crate) fn of_row(schema: &Schema, values: &[Value]) -> Self {
        match schema.primary_key() {
            [single] => Key(KeyRepr::Single(values[*single].clone())),
            columns => Key(KeyRepr::Composite(
                columns.iter().map(|&i| values[i].clone()).collect(),
            )),
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            KeyRepr::Generated(id) => write!(f, "Key(#{id})"),
            KeyRepr::Single(value) => write!(f, "Key({value:?})"),
            KeyRepr::Composite(values) => write!(f, "Key({values:?})"),
        }
    }
}

impl fmt::Display for Key {
    /// A generated key prints as `#id`, a single value bare, several in parentheses.
    /// Width and alignment are honoured.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            KeyRepr::Generated(id) => f.pad(&format!("#{id}")),
            KeyRepr::Single(value) => fmt::Display::fmt(value, f),
            KeyRepr::Composite(values) => {
                let parts: Vec<String> = values.iter().map(ToString::to_string).collect();
                f.pad(&format!("({})", parts.join(", ")))
            }
        }
    }
}

/// Serializes as the key's values: a single-column key as its [value](Value#impl-Serialize-for-Value)
/// (`"AAPL"`), a composite key as an array of its values in schema order
/// (`["AAPL",2024]`), a generated key as its number (`17`).
///
/// # Examples
///
/// ```
/// use intake_core::{Key, Value};
///
/// assert_eq!(serde_json::to_string(&Key::from("AAPL"))?, r#""AAPL""#);
/// let composite = Key::new([Value::from("AAPL"), Value::from(2024)]);
/// assert_eq!(serde_json::to_string(&composite)?, r#"["AAPL",2024]"#);
/// assert_eq!(serde_json::to_string(&Key::generated(17))?, "17");
/// # Ok::<(), serde_json::Error>(())
/// ```
impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            KeyRepr::Generated(id) => serializer.serialize_u64(*id),
            KeyRepr::Single(value) => value.serialize(serializer),
            KeyRepr::Composite(values) => serializer.collect_seq(values.iter()),
        }
    }
}

/// Single-column keys from the types a key column can hold. (There is deliberately no
/// conversion from `serde_json::Value`: JSON columns cannot be keys, so `json!(3)`
/// would never match the int key `3`. Convert it to an `i64` or `&str` first.)
macro_rules! key_from {
    ($($t:ty),*) => {
        $(impl From<$t> for Key {
            fn from(value: $t) -> Self {
                Key(KeyRepr::Single(Value::from(value)))
            }
        })*
    };
}

key_from!(
    i64,
    i32,
    u32,
    bool,
    &str,
    String,
    Arc<str>,
    Timestamp,
    bytes::Bytes
);

impl From<Value> for Key {
    fn from(value: Value) -> Self {
        Key(KeyRepr::Single(value))
    }
}

/// One row of a table: a value per column of its [`Schema`].
///
/// Rows are immutable and their values reference counted: cloning one, or handing it
/// to many subscribers, copies two pointers.
///
/// # Examples
///
/// ```
/// use intake_core::{Column, DataType, Row, Schema, Value};
///
/// let schema = Schema::new([
///     Column::new("sym", DataType::String).primary_key(),
///     Column::new("close", DataType::Float),
/// ])?;
/// let row = Row::new(&schema, vec![Value::from("AAPL"), Value::from(189.5)])?;
/// assert_eq!(row.get("close").and_then(Value::as_float), Some(189.5));
/// assert_eq!(row.to_string(), r#"{"sym":"AAPL","close":189.5}"#);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Row {
    schema: Schema,
    values: Arc<[Value]>,
    /// A hash of the values, computed where the row is made (on the source's task,
    /// while the values are in cache), so that the commit driver can tell a changed
    /// row from an identical one without reading either row's values.
    fingerprint: u64,
}

/// The hash behind [`Row`]'s fingerprint: fixed, so equal rows always agree.
///
/// Scalars are mixed in directly (a multiply per value), which costs a fraction of
/// hashing them through [`Hash`](std::hash::Hash); strings, bytes and JSON go through
/// their `Hash`, so the fingerprint agrees with [`Value`]'s equality as that does. It
/// only ever settles "different": equal fingerprints are confirmed by comparing the
/// values.
fn fingerprint(values: &[Value]) -> u64 {
    use std::hash::BuildHasher;
    const SEED: u64 = 0x1a7a_6e5e_ed00_0001;
    /// Multiplies as 128 bits and folds the halves (foldhash's and wyhash's mixer).
    #[inline]
    fn mix(a: u64, b: u64) -> u64 {
        let product = u128::from(a) * u128::from(b);
        #[allow(clippy::cast_possible_truncation)]
        let folded = (product as u64) ^ ((product >> 64) as u64);
        folded
    }
    let mut hash = SEED ^ values.len() as u64;
    for value in values {
        #[allow(clippy::cast_sign_loss)]
        let (kind, word) = match value {
            Value::Null => (1, 0),
            Value::Bool(b) => (2, u64::from(*b)),
            Value::Int(i) => (3, *i as u64),
            Value::Float(x) => (4, x.to_bits()),
            Value::Timestamp(t) => (5, t.as_unix_nanos() as u64),
            other => (6, foldhash::fast::FixedState::with_seed(SEED).hash_one(other)),
        };
        // An odd multiplier (pi's fractional digits) whatever the kind, so that no
        // bit of the word is multiplied away.
        hash = mix(hash ^ word, 0x243f_6a88_85a3_08d3 ^ (kind << 32)).rotate_left(29);
    }
    hash
}

/// Why [`Row::new`] refused its values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RowError {
    /// The number of values is not the number of columns.
    #[error("expected {expected} values, one per column, got {found}")]
    WrongArity {
        /// Columns in the schema.
        expected: usize,
        /// Values given.
        found: usize,
    },
    /// A value does not fit its column.
    #[error("column `{column}` is {expected}, got a {found}")]
    WrongType {
        /// The column.
        column: String,
        /// What the column holds (with `?` when nullable).
        expected: String,
        /// The kind of value given.
        found: &'static str,
    },
}

impl Row {
    /// A row of `values` (one per column, in schema order), checked against `schema`.
    ///
    /// # Errors
    ///
    /// [`RowError`] when the count or a type is wrong, a non-nullable column is null,
    /// or a float is NaN or infinite (no reader accepts those, so no row holds them).
    pub fn new(schema: &Schema, values: Vec<Value>) -> Result<Self, RowError> {
        if values.len() != schema.columns().len() {
            return Err(RowError::WrongArity {
                expected: schema.columns().len(),
                found: values.len(),
            });
        }
        for (column, value) in schema.columns().iter().zip(&values) {
            if let Value::Float(x) = value
                && !x.is_finite()
            {
                // What no reader produces and no JSON sink could write back.
                return Err(RowError::WrongType {
                    column: column.name().to_owned(),
                    expected: column.data_type().to_string(),
                    found: crate::parse::NON_FINITE,
                });
            }
            let fits = column.data_type().matches(value) || (value.is_null() && column.is_nullable());
            if !fits {
                return Err(RowError::WrongType {
                    column: column.name().to_owned(),
                    expected: format!(
                        "{}{}",
                        column.data_type(),
                        if column.is_nullable() { "?" } else { "" }
                    ),
                    found: value.kind(),
                });
            }
        }
        Ok(Self::new_unchecked(schema.clone(), values.into()))
    }

    /// A row whose values the caller has already checked against `schema`.
    pub(crate) fn new_unchecked(schema: Schema, values: Arc<[Value]>) -> Self {
        let fingerprint = fingerprint(&values);
        Row {
            schema,
            values,
            fingerprint,
        }
    }

    /// The schema the row follows.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The values, one per column in schema order.
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// The value of the column named `column`.
    pub fn get(&self, column: &str) -> Option<&Value> {
        self.schema.index_of(column).map(|i| &self.values[i])
    }

    /// The row's primary key under its schema, or `None` if the schema has none.
    pub fn primary_key(&self) -> Option<Key> {
        if self.schema.primary_key().is_empty() {
            None
        } else {
            Some(Key::of_row(&self.schema, &self.values))
        }
    }

    /// The row as a JSON object. See [`Value::to_json`].
    pub fn to_json(&self) -> serde_json::Value {
        let map = self
            .schema
            .columns()
            .iter()
            .zip(self.values.iter())
            .map(|(column, value)| (column.name().to_owned(), value.to_json()))
            .collect();
        serde_json::Value::Object(map)
    }

    /// The row as a `T`, through its [JSON form](Self::to_json).
    ///
    /// # Errors
    ///
    /// When `T` does not match the row's columns, as [`serde_json::from_value`] reports.
    pub fn deserialize<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_value(self.to_json())
    }
}

/// Serializes as an object of column name to value, in schema column order, each value
/// as [`Value::to_json`] writes it: the same JSON as [`Row::to_json`] and
/// [`Display`](fmt::Display), so `axum::Json(row)` answers with the row.
///
/// # Examples
///
/// ```
/// use intake_core::{Column, DataType, Row, Schema, Value};
///
/// let schema = Schema::new([
///     Column::new("sym", DataType::String).primary_key(),
///     Column::new("close", DataType::Float),
/// ])?;
/// let row = Row::new(&schema, vec![Value::from("AAPL"), Value::from(189.5)])?;
/// assert_eq!(serde_json::to_string(&row)?, r#"{"sym":"AAPL","close":189.5}"#);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
impl serde::Serialize for Row {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(
            self.schema
                .columns()
                .iter()
                .map(|column| column.name())
                .zip(self.values.iter()),
        )
    }
}

impl Index<usize> for Row {
    type Output = Value;

    fn index(&self, column: usize) -> &Value {
        &self.values[column]
    }
}

impl Index<&str> for Row {
    type Output = Value;

    /// The value of the column named `column`.
    ///
    /// # Panics
    ///
    /// If the schema has no such column; use [`Row::get`] when unsure.
    #[track_caller]
    fn index(&self, column: &str) -> &Value {
        match self.get(column) {
            Some(value) => value,
            None => panic!("no column named `{column}` in {:?}", self.schema),
        }
    }
}

impl PartialEq for Row {
    fn eq(&self, other: &Self) -> bool {
        // Differing fingerprints settle most comparisons without reading the values.
        self.fingerprint == other.fingerprint
            && self.schema == other.schema
            && (Arc::ptr_eq(&self.values, &other.values) || self.values == other.values)
    }
}

impl Eq for Row {}

impl fmt::Debug for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (column, value) in self.schema.columns().iter().zip(self.values.iter()) {
            map.entry(&column.name(), value);
        }
        map.finish()
    }
}

impl fmt::Display for Row {
    /// The row as compact JSON, columns in schema order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (column, value)) in self.schema.columns().iter().zip(self.values.iter()).enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let name = serde_json::Value::from(column.name());
            write!(f, "{name}:{}", value.to_json())?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Column;
    use crate::value::DataType;

    /// The fingerprint lets the commit driver skip comparing values only when it
    /// differs, so equal values must always give equal fingerprints, and it should
    /// tell apart the rows an upsert usually replaces.
    #[test]
    fn fingerprints_agree_for_equal_values_and_differ_for_changed_ones() {
        let values = |key: i64, value: Value| {
            vec![
                Value::Int(key),
                value,
                Value::from("AAPL"),
                Value::from(serde_json::json!({"a": [1, 2]})),
                Value::Null,
                Value::from(vec![0_u8, 255]),
                Value::Bool(true),
                Value::Timestamp(crate::value::Timestamp::from_unix_millis(1_700_000_000_000).unwrap()),
            ]
        };
        let a = values(1, Value::Float(1.5));
        let shared = fingerprint(&a);
        assert_eq!(fingerprint(&a.clone()), shared);
        let mut seen = std::collections::HashSet::new();
        for key in 0..1000 {
            for x in [0.0, -0.0, 1.5, f64::MIN_POSITIVE] {
                assert!(
                    seen.insert(fingerprint(&values(key, Value::Float(x)))),
                    "{key} {x}"
                );
            }
        }
        assert_ne!(
            fingerprint(&[Value::Int(1), Value::Int(2)]),
            fingerprint(&[Value::Int(2), Value::Int(1)])
        );
        assert_ne!(fingerprint(&[Value::Int(0)]), fingerprint(&[Value::Null]));
        assert_ne!(fingerprint(&[Value::from("a")]), fingerprint(&[Value::from("b")]));
        let schema = Schema::new([
            Column::new("k", DataType::Int),
            Column::new("v", DataType::String),
        ])
        .unwrap();
        let row = |v: &str| Row::new(&schema, vec![Value::Int(1), Value::from(v)]).unwrap();
        assert_eq!(row("x"), row("x"));
        assert_ne!(row("x"), row("y"));
    }
}
