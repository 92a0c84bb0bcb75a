//! Schemas: named, typed columns with defaults and a primary key.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::value::{DataType, Value};

/// One column of a [`Schema`].
///
/// # Examples
///
/// ```
/// use intake_core::{Column, DataType};
///
/// let key = Column::new("key", DataType::Int).primary_key();
/// let note = Column::new("note", DataType::String).nullable();
/// let qty = Column::new("qty", DataType::Int).default(0);
/// # let _ = (key, note, qty);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    name: Arc<str>,
    data_type: DataType,
    nullable: bool,
    primary_key: bool,
    default: Option<Value>,
}

impl Column {
    /// A required, non-null column named `name`.
    pub fn new(name: impl Into<Arc<str>>, data_type: DataType) -> Self {
        Column {
            name: name.into(),
            data_type,
            nullable: false,
            primary_key: false,
            default: None,
        }
    }

    /// Lets the column hold nulls. A nullable column missing from a message is null
    /// unless it has a [default](Self::default).
    #[must_use]
    pub fn nullable(mut self) -> Self {
        self.nullable = true;
        self
    }

    /// Makes the column part of the primary key. Several columns may be; the key is
    /// their values in schema order.
    #[must_use]
    pub fn primary_key(mut self) -> Self {
        self.primary_key = true;
        self
    }

    /// The value used when a message lacks this field or carries `null` for it.
    #[must_use]
    pub fn default(mut self, value: impl Into<Value>) -> Self {
        self.default = Some(value.into());
        self
    }

    /// The column's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The column's type.
    pub fn data_type(&self) -> DataType {
        self.data_type
    }

    /// Whether the column accepts nulls.
    pub fn is_nullable(&self) -> bool {
        self.nullable
    }

    /// Whether the column is part of the primary key.
    pub fn is_primary_key(&self) -> bool {
        self.primary_key
    }

    /// The column's default value, if it has one.
    pub fn default_value(&self) -> Option<&Value> {
        self.default.as_ref()
    }
}

/// Why a [`Schema`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// The schema has no columns.
    #[error("a schema needs at least one column")]
    Empty,
    /// Two columns share a name.
    #[error("column `{0}` is declared twice")]
    DuplicateColumn(String),
    /// A primary-key column has a type that cannot be a key.
    #[error(
        "column `{column}` has type {data_type}, which cannot be part of a primary key; use int, string, bool, bytes or timestamp"
    )]
    InvalidKeyType {
        /// The column.
        column: String,
        /// Its type.
        data_type: DataType,
    },
    /// A primary-key column is nullable.
    #[error("column `{0}` is part of the primary key and so cannot be nullable")]
    NullableKey(String),
    /// A reader's format needs a schema of another shape: [`Format::Raw`](crate::Format::Raw)
    /// fills exactly one string column, [`Format::Bytes`](crate::Format::Bytes) exactly
    /// one bytes column (such as [`Schema::raw`] and [`Schema::bytes`]).
    #[error("the {format:?} format fills exactly one {expected} column, but the schema is {schema:?}; use Schema::{} or a schema of one {expected} column", if *expected == DataType::String { "raw()" } else { "bytes()" })]
    FormatMismatch {
        /// The reader's format.
        format: crate::Format,
        /// The type of the one column the format fills.
        expected: DataType,
        /// The schema given.
        schema: Schema,
    },
    /// A default value does not match its column's type.
    #[error("the default of column `{column}` is a {found}, but the column is {expected}")]
    DefaultTypeMismatch {
        /// The column.
        column: String,
        /// The column's type.
        expected: DataType,
        /// The kind of the default value.
        found: &'static str,
    },
}

/// The columns of a table, their types, defaults and primary key.
///
/// A schema is immutable and `Copy`: every row points to its schema, and a plain
/// pointer keeps rows free of reference-count traffic between threads. Schemas are
/// therefore interned for the life of the process: building a schema equal to one built
/// before returns the same schema, and only distinct schemas take memory. Build a
/// bounded number of distinct schemas (one per kind of data), not one per message.
///
/// # Examples
///
/// The schema of Pathway's `cats.jsonl` example:
///
/// ```
/// use intake_core::{Column, DataType, Schema};
///
/// let schema = Schema::new([
///     Column::new("key", DataType::Int).primary_key(),
///     Column::new("genus", DataType::String),
///     Column::new("epithet", DataType::String),
/// ])?;
/// assert_eq!(schema.primary_key().len(), 1);
/// # Ok::<(), intake_core::SchemaError>(())
/// ```
#[derive(Clone, Copy)]
pub struct Schema(&'static SchemaInner);

/// Every distinct schema built so far.
static INTERNED: Mutex<Vec<&'static SchemaInner>> = Mutex::new(Vec::new());

struct SchemaInner {
    columns: Vec<Column>,
    primary_key: Vec<usize>,
    /// Name lookup for wide schemas; narrow ones are scanned, which is faster.
    by_name: Option<HashMap<Arc<str>, usize>>,
}

/// Above this many columns, names are looked up in a hash map instead of scanned.
const SCAN_LIMIT: usize = 16;

impl Schema {
    /// Builds a schema from its columns, in order.
    ///
    /// # Errors
    ///
    /// See [`SchemaError`]: no columns, a repeated name, a float/JSON or nullable key
    /// column, or a default of the wrong type.
    pub fn new(columns: impl IntoIterator<Item = Column>) -> Result<Self, SchemaError> {
        let columns: Vec<Column> = columns.into_iter().collect();
        if columns.is_empty() {
            return Err(SchemaError::Empty);
        }
        for (i, column) in columns.iter().enumerate() {
            if columns[..i].iter().any(|c| c.name == column.name) {
                return Err(SchemaError::DuplicateColumn(column.name.to_string()));
            }
            if column.primary_key && !column.data_type.can_be_key() {
                return Err(SchemaError::InvalidKeyType {
                    column: column.name.to_string(),
                    data_type: column.data_type,
                });
            }
            if column.primary_key && column.nullable {
                return Err(SchemaError::NullableKey(column.name.to_string()));
            }
            if let Some(default) = &column.default {
                let ok = column.data_type.matches(default) || (default.is_null() && column.nullable);
                if !ok {
                    return Err(SchemaError::DefaultTypeMismatch {
                        column: column.name.to_string(),
                        expected: column.data_type,
                        found: default.kind(),
                    });
                }
            }
        }
        let primary_key = columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.primary_key)
            .map(|(i, _)| i)
            .collect();
        Ok(Self::intern(columns, primary_key))
    }

    fn intern(columns: Vec<Column>, primary_key: Vec<usize>) -> Self {
        let mut interned = INTERNED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(existing) = interned.iter().find(|s| s.columns == columns) {
            return Schema(existing);
        }
        let by_name = (columns.len() > SCAN_LIMIT).then(|| {
            columns
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name.clone(), i))
                .collect()
        });
        let inner: &'static SchemaInner = Box::leak(Box::new(SchemaInner {
            columns,
            primary_key,
            by_name,
        }));
        interned.push(inner);
        Schema(inner)
    }

    /// The schema of the `raw` format: one string column named `data`, no key.
    pub fn raw() -> Self {
        Self::single_data_column(DataType::String)
    }

    /// The schema of the `bytes` format: one bytes column named `data`, no key.
    pub fn bytes() -> Self {
        Self::single_data_column(DataType::Bytes)
    }

    fn single_data_column(data_type: DataType) -> Self {
        Self::intern(vec![Column::new("data", data_type)], Vec::new())
    }

    /// The columns, in order.
    pub fn columns(&self) -> &[Column] {
        &self.0.columns
    }

    /// The position of the column named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        match &self.0.by_name {
            Some(by_name) => by_name.get(name).copied(),
            None => self.0.columns.iter().position(|c| &*c.name == name),
        }
    }

    /// Positions of the primary-key columns, in schema order. Empty when the table
    /// appends rows under generated keys.
    pub fn primary_key(&self) -> &[usize] {
        &self.0.primary_key
    }
}

impl PartialEq for Schema {
    /// Equal schemas are interned as one, so this compares pointers.
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.0, other.0)
    }
}

impl Eq for Schema {}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for column in &self.0.columns {
            list.entry(&format_args!(
                "{}: {}{}{}",
                column.name,
                column.data_type,
                if column.nullable { "?" } else { "" },
                if column.primary_key { " (key)" } else { "" }
            ));
        }
        list.finish()
    }
}

/// A Rust type whose values are rows of a known schema: derive it with
/// `#[derive(intake::RowType)]` on a struct (each field a column), then read with
/// `Reader::json(T::schema())`, send with [`SourceContext::next`](crate::SourceContext::next)
/// and read rows back with [`Row::deserialize`](crate::Row::deserialize).
pub trait RowType {
    /// The schema of rows of this type.
    fn schema() -> Schema;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_schemas() {
        assert_eq!(Schema::new([]).unwrap_err(), SchemaError::Empty);
        let dup = Schema::new([
            Column::new("a", DataType::Int),
            Column::new("a", DataType::String),
        ]);
        assert_eq!(dup.unwrap_err(), SchemaError::DuplicateColumn("a".into()));
        let float_key = Schema::new([Column::new("price", DataType::Float).primary_key()]);
        assert!(matches!(float_key, Err(SchemaError::InvalidKeyType { .. })));
        let nullable_key = Schema::new([Column::new("k", DataType::Int).primary_key().nullable()]);
        assert!(matches!(nullable_key, Err(SchemaError::NullableKey(_))));
        let bad_default = Schema::new([Column::new("n", DataType::Int).default("zero")]);
        assert!(matches!(
            bad_default,
            Err(SchemaError::DefaultTypeMismatch { found: "string", .. })
        ));
    }

    #[test]
    fn composite_keys_keep_schema_order() {
        let schema = Schema::new([
            Column::new("v", DataType::Float),
            Column::new("b", DataType::String).primary_key(),
            Column::new("a", DataType::Int).primary_key(),
        ])
        .unwrap();
        assert_eq!(schema.primary_key(), &[1, 2]);
        assert_eq!(schema.index_of("a"), Some(2));
        assert_eq!(format!("{schema:?}"), "[v: float, b: string (key), a: int (key)]");
    }

    #[test]
    fn equal_schemas_are_interned_once() {
        let build =
            |name: &str| Schema::new([Column::new(name.to_owned(), DataType::Int).primary_key()]).unwrap();
        assert_eq!(build("interned_a"), build("interned_a"));
        assert_ne!(build("interned_a"), build("interned_b"));
        assert_eq!(Schema::raw(), Schema::raw());
    }
}
