//! Schemas: named, typed columns with defaults and a primary key.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

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
/// A schema is immutable and cheap to clone (a reference count). Build schemas at
/// runtime as freely as you like (per tenant, per topic): each is freed with its last
/// table, row and clone.
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
#[derive(Clone)]
pub struct Schema(Arc<SchemaInner>);

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
        let mut columns: Vec<Column> = columns.into_iter().collect();
        if columns.is_empty() {
            return Err(SchemaError::Empty);
        }
        for i in 0..columns.len() {
            let column = &columns[i];
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
            let column = &mut columns[i];
            // An integer default of a float column is the float it names, as an
            // integer in a message would be.
            #[allow(clippy::cast_precision_loss)]
            if let (DataType::Float, Some(Value::Int(int))) = (column.data_type, &column.default) {
                column.default = Some(Value::Float(*int as f64));
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
                if let Value::Float(x) = default
                    && !x.is_finite()
                {
                    return Err(SchemaError::DefaultTypeMismatch {
                        column: column.name.to_string(),
                        expected: column.data_type,
                        found: "a non-finite float",
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
        let by_name = (columns.len() > SCAN_LIMIT).then(|| {
            columns
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name.clone(), i))
                .collect()
        });
        Ok(Schema(Arc::new(SchemaInner {
            columns,
            primary_key,
            by_name,
        })))
    }

    /// The schema of the `raw` format: one string column named `data`, no key.
    pub fn raw() -> Self {
        static RAW: OnceLock<Schema> = OnceLock::new();
        RAW.get_or_init(|| Self::single_data_column(DataType::String))
            .clone()
    }

    /// The schema of the `bytes` format: one bytes column named `data`, no key.
    pub fn bytes() -> Self {
        static BYTES: OnceLock<Schema> = OnceLock::new();
        BYTES
            .get_or_init(|| Self::single_data_column(DataType::Bytes))
            .clone()
    }

    fn single_data_column(data_type: DataType) -> Self {
        Schema(Arc::new(SchemaInner {
            columns: vec![Column::new("data", data_type)],
            primary_key: Vec::new(),
            by_name: None,
        }))
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
    /// Schemas are equal when their columns are: names, types, nullability, keys and
    /// defaults.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.columns == other.0.columns
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
///
/// The derive refuses at compile time what it can see is wrong (a float, JSON or
/// `Option` primary key, two fields with one column name); what it cannot see (a
/// default of the wrong type) makes [`try_schema`](Self::try_schema) return the error.
pub trait RowType {
    /// The schema of rows of this type.
    ///
    /// # Errors
    ///
    /// The [`SchemaError`] that [`Schema::new`] returns for these columns.
    fn try_schema() -> Result<Schema, SchemaError>;

    /// The schema of rows of this type.
    ///
    /// # Panics
    ///
    /// If [`try_schema`](Self::try_schema) returns an error; call it instead to handle
    /// the error.
    #[track_caller]
    fn schema() -> Schema {
        match Self::try_schema() {
            Ok(schema) => schema,
            Err(error) => panic!(
                "the schema of `{}` is invalid: {error}",
                std::any::type_name::<Self>()
            ),
        }
    }
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
    fn schemas_compare_by_their_columns() {
        let build =
            |name: &str| Schema::new([Column::new(name.to_owned(), DataType::Int).primary_key()]).unwrap();
        assert_eq!(build("a"), build("a"));
        assert_ne!(build("a"), build("b"));
        assert_ne!(
            Schema::new([Column::new("a", DataType::Int)]).unwrap(),
            build("a"),
            "keys differ"
        );
        assert_eq!(Schema::raw(), Schema::raw());
    }

    /// Regression: every distinct schema was leaked into a global list searched
    /// linearly, so building 20,000 took seconds and their memory never returned.
    #[test]
    fn schemas_built_at_runtime_are_freed_and_cost_the_same_each() {
        let first = Schema::new([Column::new("tenant_0", DataType::Int)]).unwrap();
        let weak = Arc::downgrade(&first.0);
        drop(first);
        assert!(weak.upgrade().is_none(), "freed with its last handle");
        let started = std::time::Instant::now();
        for tenant in 0..20_000 {
            let schema = Schema::new([
                Column::new(format!("tenant_{tenant}"), DataType::Int).primary_key(),
                Column::new("value", DataType::String),
            ])
            .unwrap();
            assert_eq!(schema.columns().len(), 2);
        }
        // Linear interning took seconds here; this takes milliseconds. The bound is
        // loose so that a slow machine cannot fail it.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn integer_defaults_of_float_columns_are_floats_and_non_finite_ones_are_refused() {
        let schema = Schema::new([Column::new("x", DataType::Float).default(0)]).unwrap();
        assert_eq!(schema.columns()[0].default_value(), Some(&Value::Float(0.0)));
        let nan = Schema::new([Column::new("x", DataType::Float).default(f64::NAN)]);
        assert!(matches!(nan, Err(SchemaError::DefaultTypeMismatch { .. })));
    }
}
