//! Typed rows: a `Serialize` value (such as a `#[derive(Serialize, RowType)]` struct)
//! made into a row's values by the schema, without a `serde_json::Value` in between.
//!
//! The outcome is the one the same value written as JSON text would have: each field
//! goes through the same conversions as the JSON reader (`ValueSeed`'s visitor), and
//! a row is completed by the same rule (`complete_row`). What JSON cannot hold is
//! refused rather than altered: a non-finite float (serde_json would write `null`),
//! and nesting deeper than [`MAX_JSON_DEPTH`].

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde::de::Visitor;
use serde::ser::{self, Impossible};
use serde_json::{Map, Number, Value as Json};

use crate::parse::{
    MAX_JSON_DEPTH, NON_FINITE, NOT_BYTES, ParseError, Seen, ValueSeed, complete_row, empty_row,
};
use crate::schema::{Column, Schema};
use crate::value::{DataType, Value};

/// The values of the row `value` makes under `schema`, for a reader without lenient
/// numbers.
#[cfg(test)]
pub(crate) fn row_values<T: Serialize + ?Sized>(
    schema: &Schema,
    value: &T,
) -> Result<Arc<[Value]>, ParseError> {
    read_row(schema, false, value)
}

/// The values of the row `value` makes under `schema`; with `lenient_numbers`, a
/// string for an int or float column is read as the JSON number it holds, as the
/// JSON reader does ([`Reader::lenient_numbers`](crate::Reader::lenient_numbers)).
pub(crate) fn read_row<T: Serialize + ?Sized>(
    schema: &Schema,
    lenient_numbers: bool,
    value: &T,
) -> Result<Arc<[Value]>, ParseError> {
    value
        .serialize(RowSerializer {
            schema,
            lenient_numbers,
        })
        .map_err(|e| e.0)
}

/// A [`ParseError`] carried through serde.
#[derive(Debug)]
struct Error(ParseError);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Error(ParseError::Serialize(message.to_string()))
    }
}

/// The top level: a struct or a map becomes a row; anything else is not an object.
struct RowSerializer<'a> {
    schema: &'a Schema,
    lenient_numbers: bool,
}

impl RowSerializer<'_> {
    fn not_an_object(found: &'static str) -> Result<Arc<[Value]>, Error> {
        Err(Error(ParseError::NotAnObject { found }))
    }
}

/// Serializer methods that refuse a scalar at the top level: not an object.
macro_rules! refuse_scalars {
    ($($method:ident: $t:ty => $found:literal),* $(,)?) => {
        $(fn $method(self, _: $t) -> Result<Self::Ok, Error> {
            Self::not_an_object($found)
        })*
    };
}

impl<'a> ser::Serializer for RowSerializer<'a> {
    type Ok = Arc<[Value]>;
    type Error = Error;
    type SerializeSeq = Impossible<Arc<[Value]>, Error>;
    type SerializeTuple = Impossible<Arc<[Value]>, Error>;
    type SerializeTupleStruct = Impossible<Arc<[Value]>, Error>;
    type SerializeTupleVariant = Impossible<Arc<[Value]>, Error>;
    type SerializeMap = RowBuilder<'a>;
    type SerializeStruct = RowBuilder<'a>;
    type SerializeStructVariant = Impossible<Arc<[Value]>, Error>;

    refuse_scalars!(
        serialize_bool: bool => "a boolean",
        serialize_i8: i8 => "a number",
        serialize_i16: i16 => "a number",
        serialize_i32: i32 => "a number",
        serialize_i64: i64 => "a number",
        serialize_i128: i128 => "a number",
        serialize_u8: u8 => "a number",
        serialize_u16: u16 => "a number",
        serialize_u32: u32 => "a number",
        serialize_u64: u64 => "a number",
        serialize_u128: u128 => "a number",
        serialize_f32: f32 => "a number",
        serialize_f64: f64 => "a number",
        serialize_char: char => "a string",
        serialize_str: &str => "a string",
        serialize_bytes: &[u8] => "an array"
    );

    fn serialize_none(self) -> Result<Self::Ok, Error> {
        Self::not_an_object("null")
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Self::Ok, Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<Self::Ok, Error> {
        Self::not_an_object("null")
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Self::Ok, Error> {
        Self::not_an_object("null")
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<Self::Ok, Error> {
        Self::not_an_object("a string")
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<Self::Ok, Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Self::Ok, Error> {
        // As JSON: `{"Variant": value}`, a row with one field.
        let mut row = RowBuilder::new(self.schema, self.lenient_numbers);
        ser::SerializeStruct::serialize_field(&mut row, variant, value)?;
        ser::SerializeStruct::end(row)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        Err(Error(ParseError::NotAnObject { found: "an array" }))
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Error> {
        Err(Error(ParseError::NotAnObject { found: "an array" }))
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeTupleStruct, Error> {
        Err(Error(ParseError::NotAnObject { found: "an array" }))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        Err(Error(ParseError::NotAnObject {
            found: "an enum variant with fields",
        }))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Ok(RowBuilder::new(self.schema, self.lenient_numbers))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Error> {
        Ok(RowBuilder::new(self.schema, self.lenient_numbers))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        Err(Error(ParseError::NotAnObject {
            found: "an enum variant with fields",
        }))
    }
}

/// A row being filled field by field, in place in its final allocation.
struct RowBuilder<'a> {
    schema: &'a Schema,
    lenient_numbers: bool,
    row: Arc<[Value]>,
    seen: Seen,
    /// The column of the map key just given (`None` for a field the schema lacks).
    key: Option<Option<usize>>,
    /// The column after the last one set: a derived struct's fields usually come in
    /// the order of its columns, so this is checked before the schema is searched.
    next: usize,
}

impl<'a> RowBuilder<'a> {
    fn new(schema: &'a Schema, lenient_numbers: bool) -> Self {
        let columns = schema.columns().len();
        RowBuilder {
            schema,
            lenient_numbers,
            row: empty_row(columns),
            seen: Seen::new(columns),
            key: None,
            next: 0,
        }
    }

    /// The column named `name`, trying the one after the last set first.
    #[inline]
    fn column_named(&self, name: &str) -> Option<usize> {
        match self.schema.columns().get(self.next) {
            Some(column) if column.name() == name => Some(self.next),
            _ => self.schema.index_of(name),
        }
    }

    fn set<T: Serialize + ?Sized>(&mut self, column: Option<usize>, value: &T) -> Result<(), Error> {
        // A field the schema lacks is ignored, as in JSON.
        let Some(i) = column else { return Ok(()) };
        self.next = i + 1;
        let column = &self.schema.columns()[i];
        if !self.seen.insert(i) {
            return Err(Error(ParseError::DuplicateField {
                column: column.name().to_owned(),
            }));
        }
        let value = value.serialize(ValueSerializer {
            column,
            lenient_numbers: self.lenient_numbers,
        })?;
        let Some(values) = Arc::get_mut(&mut self.row) else {
            return Err(ser::Error::custom("internal error: a new row was shared"));
        };
        values[i] = value;
        Ok(())
    }

    fn finish(mut self) -> Result<Arc<[Value]>, Error> {
        let Some(values) = Arc::get_mut(&mut self.row) else {
            return Err(ser::Error::custom("internal error: a new row was shared"));
        };
        // A value that set every column, none to null, is complete as it is.
        let columns = self.schema.columns();
        if !self.seen.is_full(columns.len()) || values.iter().any(Value::is_null) {
            complete_row(columns, values, &self.seen).map_err(Error)?;
        }
        Ok(self.row)
    }
}

impl ser::SerializeStruct for RowBuilder<'_> {
    type Ok = Arc<[Value]>;
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, name: &'static str, value: &T) -> Result<(), Error> {
        self.set(self.column_named(name), value)
    }

    fn end(self) -> Result<Arc<[Value]>, Error> {
        self.finish()
    }
}

impl ser::SerializeMap for RowBuilder<'_> {
    type Ok = Arc<[Value]>;
    type Error = Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        let name = key.serialize(KeySerializer)?;
        self.key = Some(self.column_named(&name));
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let column = self.key.take().flatten();
        self.set(column, value)
    }

    fn end(self) -> Result<Arc<[Value]>, Error> {
        self.finish()
    }
}

/// Applies the JSON reader's conversion for `column` to a primitive.
fn convert(
    column: &Column,
    lenient_numbers: bool,
    read: impl FnOnce(ValueSeed<'_>) -> Result<Value, serde::de::value::Error>,
) -> Result<Value, Error> {
    let failure = Cell::new(None);
    read(ValueSeed {
        column,
        failure: &failure,
        lenient_numbers,
    })
    .map_err(|e| {
        Error(
            failure
                .take()
                .unwrap_or_else(|| ParseError::Serialize(e.to_string())),
        )
    })
}

/// One field's value, as its column's type.
struct ValueSerializer<'a> {
    column: &'a Column,
    lenient_numbers: bool,
}

impl ValueSerializer<'_> {
    fn is_json(&self) -> bool {
        self.column.data_type() == DataType::Json
    }

    /// The value as a JSON column holds it (null for JSON null, as in the reader).
    fn json<T: Serialize + ?Sized>(&self, value: &T) -> Result<Value, Error> {
        let json = value.serialize(JsonSerializer {
            column: self.column,
            depth: 1,
        })?;
        Ok(if json.is_null() {
            Value::Null
        } else {
            Value::from(json)
        })
    }

    fn wrong_type(&self, found: &'static str) -> Error {
        Error(ParseError::WrongType {
            column: self.column.name().to_owned(),
            expected: self.column.data_type(),
            found,
        })
    }
}

/// Forwards a primitive: to the JSON builder for a JSON column, else to the reader's
/// conversion.
macro_rules! primitive {
    ($method:ident, $t:ty, |$seed:ident, $v:ident| $read:expr) => {
        fn $method(self, $v: $t) -> Result<Value, Error> {
            if self.is_json() {
                return self.json(&$v);
            }
            convert(self.column, self.lenient_numbers, |$seed| $read)
        }
    };
}

impl<'a> ser::Serializer for ValueSerializer<'a> {
    type Ok = Value;
    type Error = Error;
    type SerializeSeq = ValueSeq<'a>;
    type SerializeTuple = ValueSeq<'a>;
    type SerializeTupleStruct = ValueSeq<'a>;
    type SerializeTupleVariant = AsValue<JsonVariant<'a, JsonSeq<'a>>>;
    type SerializeMap = AsValue<JsonMap<'a>>;
    type SerializeStruct = AsValue<JsonMap<'a>>;
    type SerializeStructVariant = AsValue<JsonVariant<'a, JsonMap<'a>>>;

    primitive!(serialize_bool, bool, |seed, v| seed.visit_bool(v));
    primitive!(serialize_i8, i8, |seed, v| seed.visit_i64(i64::from(v)));
    primitive!(serialize_i16, i16, |seed, v| seed.visit_i64(i64::from(v)));
    primitive!(serialize_i32, i32, |seed, v| seed.visit_i64(i64::from(v)));

    fn serialize_i64(self, v: i64) -> Result<Value, Error> {
        match self.column.data_type() {
            // What the reader's conversion does for an int column, without its result
            // type and failure cell.
            DataType::Int => Ok(Value::Int(v)),
            DataType::Json => self.json(&v),
            _ => convert(self.column, self.lenient_numbers, |seed| seed.visit_i64(v)),
        }
    }

    primitive!(serialize_u8, u8, |seed, v| seed.visit_u64(u64::from(v)));
    primitive!(serialize_u16, u16, |seed, v| seed.visit_u64(u64::from(v)));
    primitive!(serialize_u32, u32, |seed, v| seed.visit_u64(u64::from(v)));
    primitive!(serialize_u64, u64, |seed, v| seed.visit_u64(v));
    primitive!(serialize_f32, f32, |seed, v| seed.visit_f64(f64::from(v)));
    primitive!(serialize_f64, f64, |seed, v| seed.visit_f64(v));
    primitive!(serialize_char, char, |seed, v| seed
        .visit_str(v.encode_utf8(&mut [0; 4])));
    primitive!(serialize_str, &str, |seed, v| seed.visit_str(v));

    fn serialize_i128(self, v: i128) -> Result<Value, Error> {
        if self.is_json() {
            return self.json(&v);
        }
        #[allow(clippy::cast_precision_loss)]
        convert(self.column, self.lenient_numbers, |seed| {
            match (i64::try_from(v), u64::try_from(v)) {
                (Ok(v), _) => seed.visit_i64(v),
                (_, Ok(v)) => seed.visit_u64(v),
                // Beyond 64 bits, as serde_json reads such a literal: a float.
                _ => seed.visit_f64(v as f64),
            }
        })
    }

    fn serialize_u128(self, v: u128) -> Result<Value, Error> {
        if self.is_json() {
            return self.json(&v);
        }
        #[allow(clippy::cast_precision_loss)]
        convert(self.column, self.lenient_numbers, |seed| match u64::try_from(v) {
            Ok(v) => seed.visit_u64(v),
            Err(_) => seed.visit_f64(v as f64),
        })
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<Value, Error> {
        match self.column.data_type() {
            DataType::Bytes => Ok(Value::Bytes(Arc::from(v))),
            DataType::Json => self.json(v),
            _ => Err(self.wrong_type("an array")),
        }
    }

    fn serialize_none(self) -> Result<Value, Error> {
        Ok(Value::Null)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Value, Error> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<Value, Error> {
        Ok(Value::Null)
    }

    fn serialize_unit_struct(self, _: &'static str) -> Result<Value, Error> {
        Ok(Value::Null)
    }

    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<Value, Error> {
        self.serialize_str(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<Value, Error> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Value, Error> {
        if !self.is_json() {
            return Err(self.wrong_type("an object"));
        }
        let json = JsonSerializer {
            column: self.column,
            depth: 1,
        }
        .serialize_newtype_variant(name, index, variant, value)?;
        Ok(Value::from(json))
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<ValueSeq<'a>, Error> {
        match self.column.data_type() {
            // A `Vec<u8>` serializes as a sequence of numbers: the bytes.
            DataType::Bytes => Ok(ValueSeq::Bytes(self.column, Vec::with_capacity(len.unwrap_or(0)))),
            DataType::Json => Ok(ValueSeq::Json(JsonSeq::new(self.column, 1, len)?)),
            _ => Err(self.wrong_type("an array")),
        }
    }

    fn serialize_tuple(self, len: usize) -> Result<ValueSeq<'a>, Error> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<ValueSeq<'a>, Error> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        if !self.is_json() {
            return Err(self.wrong_type("an object"));
        }
        JsonSerializer {
            column: self.column,
            depth: 1,
        }
        .serialize_tuple_variant(name, index, variant, len)
        .map(AsValue)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Error> {
        if !self.is_json() {
            return Err(self.wrong_type("an object"));
        }
        JsonMap::new(self.column, 1).map(AsValue)
    }

    fn serialize_struct(self, _: &'static str, len: usize) -> Result<Self::SerializeStruct, Error> {
        self.serialize_map(Some(len))
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        if !self.is_json() {
            return Err(self.wrong_type("an object"));
        }
        JsonSerializer {
            column: self.column,
            depth: 1,
        }
        .serialize_struct_variant(name, index, variant, len)
        .map(AsValue)
    }
}

/// A sequence given for a bytes or a JSON column.
enum ValueSeq<'a> {
    Bytes(&'a Column, Vec<u8>),
    Json(JsonSeq<'a>),
}

impl ser::SerializeSeq for ValueSeq<'_> {
    type Ok = Value;
    type Error = Error;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        match self {
            ValueSeq::Bytes(column, bytes) => {
                let element = value.serialize(JsonSerializer { column, depth: 2 })?;
                let byte = element
                    .as_u64()
                    .and_then(|n| u8::try_from(n).ok())
                    .ok_or_else(|| {
                        Error(ParseError::WrongType {
                            column: column.name().to_owned(),
                            expected: DataType::Bytes,
                            found: NOT_BYTES,
                        })
                    })?;
                bytes.push(byte);
                Ok(())
            }
            ValueSeq::Json(seq) => ser::SerializeSeq::serialize_element(seq, value),
        }
    }

    fn end(self) -> Result<Value, Error> {
        match self {
            ValueSeq::Bytes(_, bytes) => Ok(Value::Bytes(Arc::from(bytes))),
            ValueSeq::Json(seq) => ser::SerializeSeq::end(seq).map(Value::from),
        }
    }
}

/// Builds the `serde_json::Value` of a JSON column, refusing what serde_json would
/// alter (a non-finite float becomes `null` there) and nesting deeper than
/// [`MAX_JSON_DEPTH`].
#[derive(Clone, Copy)]
struct JsonSerializer<'a> {
    column: &'a Column,
    /// Levels of arrays and objects around the value (the row's object is the first).
    depth: usize,
}

impl<'a> JsonSerializer<'a> {
    /// The serializer for a value one level deeper, refusing to go past the limit.
    fn nested(self) -> Result<Self, Error> {
        if self.depth >= MAX_JSON_DEPTH {
            return Err(Error(ParseError::TooDeep));
        }
        Ok(JsonSerializer {
            column: self.column,
            depth: self.depth + 1,
        })
    }
}

impl<'a> ser::Serializer for JsonSerializer<'a> {
    type Ok = Json;
    type Error = Error;
    type SerializeSeq = JsonSeq<'a>;
    type SerializeTuple = JsonSeq<'a>;
    type SerializeTupleStruct = JsonSeq<'a>;
    type SerializeTupleVariant = JsonVariant<'a, JsonSeq<'a>>;
    type SerializeMap = JsonMap<'a>;
    type SerializeStruct = JsonMap<'a>;
    type SerializeStructVariant = JsonVariant<'a, JsonMap<'a>>;

    fn serialize_bool(self, v: bool) -> Result<Json, Error> {
        Ok(Json::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Json, Error> {
        Ok(Json::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<Json, Error> {
        Ok(Json::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<Json, Error> {
        Ok(Json::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<Json, Error> {
        Ok(Json::from(v))
    }
    fn serialize_i128(self, v: i128) -> Result<Json, Error> {
        #[allow(clippy::cast_precision_loss)]
        match (i64::try_from(v), u64::try_from(v)) {
            (Ok(v), _) => Ok(Json::from(v)),
            (_, Ok(v)) => Ok(Json::from(v)),
            _ => self.serialize_f64(v as f64),
        }
    }
    fn serialize_u8(self, v: u8) -> Result<Json, Error> {
        Ok(Json::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result<Json, Error> {
        Ok(Json::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<Json, Error> {
        Ok(Json::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result<Json, Error> {
        Ok(Json::from(v))
    }
    fn serialize_u128(self, v: u128) -> Result<Json, Error> {
        #[allow(clippy::cast_precision_loss)]
        match u64::try_from(v) {
            Ok(v) => Ok(Json::from(v)),
            Err(_) => self.serialize_f64(v as f64),
        }
    }
    fn serialize_f32(self, v: f32) -> Result<Json, Error> {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<Json, Error> {
        Number::from_f64(v).map(Json::Number).ok_or_else(|| {
            Error(ParseError::WrongType {
                column: self.column.name().to_owned(),
                expected: DataType::Json,
                found: NON_FINITE,
            })
        })
    }
    fn serialize_char(self, v: char) -> Result<Json, Error> {
        Ok(Json::String(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Json, Error> {
        Ok(Json::String(v.to_owned()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Json, Error> {
        self.nested()?;
        Ok(Json::Array(v.iter().map(|&b| Json::from(b)).collect()))
    }
    fn serialize_none(self) -> Result<Json, Error> {
        Ok(Json::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Json, Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<Json, Error> {
        Ok(Json::Null)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Json, Error> {
        Ok(Json::Null)
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<Json, Error> {
        Ok(Json::String(variant.to_owned()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<Json, Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Json, Error> {
        let inner = value.serialize(self.nested()?)?;
        Ok(Json::Object(Map::from_iter([(variant.to_owned(), inner)])))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<JsonSeq<'a>, Error> {
        JsonSeq::new(self.column, self.depth, len)
    }
    fn serialize_tuple(self, len: usize) -> Result<JsonSeq<'a>, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<JsonSeq<'a>, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        let inner = JsonSeq::new(self.column, self.nested()?.depth, Some(len))?;
        Ok(JsonVariant { variant, inner })
    }
    fn serialize_map(self, _: Option<usize>) -> Result<JsonMap<'a>, Error> {
        JsonMap::new(self.column, self.depth)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<JsonMap<'a>, Error> {
        JsonMap::new(self.column, self.depth)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        let inner = JsonMap::new(self.column, self.nested()?.depth)?;
        Ok(JsonVariant { variant, inner })
    }
}

/// A JSON array being built.
struct JsonSeq<'a> {
    /// The serializer for its elements (one level deeper than the array's place).
    elements: JsonSerializer<'a>,
    items: Vec<Json>,
}

impl<'a> JsonSeq<'a> {
    /// An array at `depth` levels (its own level is `depth + 1`).
    fn new(column: &'a Column, depth: usize, len: Option<usize>) -> Result<Self, Error> {
        let elements = JsonSerializer { column, depth }.nested()?;
        Ok(JsonSeq {
            elements,
            // A length hint is the caller's claim; do not let it allocate unboundedly.
            items: Vec::with_capacity(len.unwrap_or(0).min(1024)),
        })
    }
}

impl ser::SerializeSeq for JsonSeq<'_> {
    type Ok = Json;
    type Error = Error;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.items.push(value.serialize(self.elements)?);
        Ok(())
    }

    fn end(self) -> Result<Json, Error> {
        Ok(Json::Array(self.items))
    }
}

/// `SerializeTuple` and `SerializeTupleStruct` for a type's `SerializeSeq`: all three
/// are arrays.
macro_rules! tuples_as_seq {
    ($($t:ty => $ok:ty),*) => {
        $(impl ser::SerializeTuple for $t {
            type Ok = $ok;
            type Error = Error;

            fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
                ser::SerializeSeq::serialize_element(self, value)
            }

            fn end(self) -> Result<$ok, Error> {
                ser::SerializeSeq::end(self)
            }
        }

        impl ser::SerializeTupleStruct for $t {
            type Ok = $ok;
            type Error = Error;

            fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
                ser::SerializeSeq::serialize_element(self, value)
            }

            fn end(self) -> Result<$ok, Error> {
                ser::SerializeSeq::end(self)
            }
        })*
    };
}

tuples_as_seq!(ValueSeq<'_> => Value, JsonSeq<'_> => Json);

/// A JSON object being built.
struct JsonMap<'a> {
    values: JsonSerializer<'a>,
    map: Map<String, Json>,
    key: Option<String>,
}

impl<'a> JsonMap<'a> {
    /// An object at `depth` levels (its own level is `depth + 1`).
    fn new(column: &'a Column, depth: usize) -> Result<Self, Error> {
        let values = JsonSerializer { column, depth }.nested()?;
        Ok(JsonMap {
            values,
            map: Map::new(),
            key: None,
        })
    }
}

impl ser::SerializeMap for JsonMap<'_> {
    type Ok = Json;
    type Error = Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        self.key = Some(key.serialize(KeySerializer)?);
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let key = self.key.take().unwrap_or_default();
        self.map.insert(key, value.serialize(self.values)?);
        Ok(())
    }

    fn end(self) -> Result<Json, Error> {
        Ok(Json::Object(self.map))
    }
}

impl ser::SerializeStruct for JsonMap<'_> {
    type Ok = Json;
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, name: &'static str, value: &T) -> Result<(), Error> {
        self.map.insert(name.to_owned(), value.serialize(self.values)?);
        Ok(())
    }

    fn end(self) -> Result<Json, Error> {
        Ok(Json::Object(self.map))
    }
}

/// An enum variant with fields, as serde_json writes it: `{"Variant": inner}`.
struct JsonVariant<'a, I> {
    variant: &'a str,
    inner: I,
}

impl JsonVariant<'_, JsonSeq<'_>> {
    fn finish(self) -> Json {
        Json::Object(Map::from_iter([(
            self.variant.to_owned(),
            Json::Array(self.inner.items),
        )]))
    }
}

impl JsonVariant<'_, JsonMap<'_>> {
    fn finish(self) -> Json {
        Json::Object(Map::from_iter([(
            self.variant.to_owned(),
            Json::Object(self.inner.map),
        )]))
    }
}

impl ser::SerializeTupleVariant for JsonVariant<'_, JsonSeq<'_>> {
    type Ok = Json;
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        ser::SerializeSeq::serialize_element(&mut self.inner, value)
    }

    fn end(self) -> Result<Json, Error> {
        Ok(self.finish())
    }
}

impl ser::SerializeStructVariant for JsonVariant<'_, JsonMap<'_>> {
    type Ok = Json;
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, name: &'static str, value: &T) -> Result<(), Error> {
        ser::SerializeStruct::serialize_field(&mut self.inner, name, value)
    }

    fn end(self) -> Result<Json, Error> {
        Ok(self.finish())
    }
}

/// A JSON column's compound value: the JSON builder's, as a row value.
struct AsValue<S>(S);

impl<S: ser::SerializeMap<Ok = Json, Error = Error>> ser::SerializeMap for AsValue<S> {
    type Ok = Value;
    type Error = Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        self.0.serialize_key(key)
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.0.serialize_value(value)
    }

    fn end(self) -> Result<Value, Error> {
        self.0.end().map(Value::from)
    }
}

impl<S: ser::SerializeStruct<Ok = Json, Error = Error>> ser::SerializeStruct for AsValue<S> {
    type Ok = Value;
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, name: &'static str, value: &T) -> Result<(), Error> {
        self.0.serialize_field(name, value)
    }

    fn end(self) -> Result<Value, Error> {
        self.0.end().map(Value::from)
    }
}

impl<S: ser::SerializeTupleVariant<Ok = Json, Error = Error>> ser::SerializeTupleVariant for AsValue<S> {
    type Ok = Value;
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.0.serialize_field(value)
    }

    fn end(self) -> Result<Value, Error> {
        self.0.end().map(Value::from)
    }
}

impl<S: ser::SerializeStructVariant<Ok = Json, Error = Error>> ser::SerializeStructVariant for AsValue<S> {
    type Ok = Value;
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, name: &'static str, value: &T) -> Result<(), Error> {
        self.0.serialize_field(name, value)
    }

    fn end(self) -> Result<Value, Error> {
        self.0.end().map(Value::from)
    }
}

/// A map key, as serde_json accepts it: a string, or a number, boolean or unit variant
/// written as one.
struct KeySerializer;

fn key_error() -> Error {
    Error(ParseError::Serialize("a map key must be a string".to_owned()))
}

macro_rules! key_to_string {
    ($($method:ident: $t:ty),*) => {
        $(fn $method(self, v: $t) -> Result<String, Error> {
            Ok(v.to_string())
        })*
    };
}

macro_rules! not_a_key {
    ($($method:ident: $t:ty),*) => {
        $(fn $method(self, _: $t) -> Result<String, Error> {
            Err(key_error())
        })*
    };
}

impl ser::Serializer for KeySerializer {
    type Ok = String;
    type Error = Error;
    type SerializeSeq = Impossible<String, Error>;
    type SerializeTuple = Impossible<String, Error>;
    type SerializeTupleStruct = Impossible<String, Error>;
    type SerializeTupleVariant = Impossible<String, Error>;
    type SerializeMap = Impossible<String, Error>;
    type SerializeStruct = Impossible<String, Error>;
    type SerializeStructVariant = Impossible<String, Error>;

    key_to_string!(
        serialize_bool: bool, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64,
        serialize_i128: i128, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32, serialize_u64: u64,
        serialize_u128: u128, serialize_char: char, serialize_str: &str
    );

    not_a_key!(serialize_f32: f32, serialize_f64: f64, serialize_bytes: &[u8], serialize_unit_struct: &'static str);

    fn serialize_none(self) -> Result<String, Error> {
        Err(key_error())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<String, Error> {
        Err(key_error())
    }
    fn serialize_unit(self) -> Result<String, Error> {
        Err(key_error())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<String, Error> {
        Ok(variant.to_owned())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<String, Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<String, Error> {
        Err(key_error())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        Err(key_error())
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Error> {
        Err(key_error())
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeTupleStruct, Error> {
        Err(key_error())
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        Err(key_error())
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Err(key_error())
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Error> {
        Err(key_error())
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        Err(key_error())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Serialize;
    use serde_json::json;

    use super::*;
    use crate::parse::tests::schema;
    use crate::parse::{Format, Parser, Payload};
    use crate::value::Timestamp;

    /// The typed path's outcome, checked to be the JSON text path's outcome.
    fn typed<T: Serialize>(value: &T) -> Result<Arc<[Value]>, ParseError> {
        let schema = schema();
        let from_value = row_values(&schema, value);
        let text = serde_json::to_string(value).unwrap();
        let from_text =
            Parser::new(schema, Format::Json).parse(&Payload::Bytes(bytes::Bytes::from(text.clone())));
        assert_eq!(from_value, from_text, "typed and text disagree on {text}");
        from_value
    }

    #[derive(Serialize)]
    struct Full {
        key: i64,
        name: String,
        score: Option<f32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<&'static str>,
        at: &'static str,
        extra: BTreeMap<&'static str, Vec<u8>>,
        ok: bool,
        blob: Vec<u8>,
        unknown: (u8, &'static str),
    }

    #[test]
    fn a_struct_fills_the_row_as_its_json_does() {
        let values = typed(&Full {
            key: 7,
            name: "manul".into(),
            score: None,
            note: None,
            at: "2024-01-01T00:00:00Z",
            extra: BTreeMap::from([("a", vec![1, 2])]),
            ok: false,
            blob: vec![0xff, 0],
            unknown: (1, "ignored"),
        })
        .unwrap();
        assert_eq!(values[0], Value::Int(7));
        assert_eq!(values[2], Value::Float(0.0), "null takes the default");
        assert_eq!(values[3], Value::Null);
        assert_eq!(
            values[4].as_timestamp(),
            Timestamp::parse_rfc3339("2024-01-01T00:00:00Z").ok()
        );
        assert_eq!(values[5], Value::from(json!({"a": [1, 2]})));
        assert_eq!(values[7].as_bytes(), Some(&[0xff, 0][..]));
    }

    #[test]
    fn maps_flattened_structs_newtypes_and_enums_as_in_json() {
        #[derive(Serialize)]
        struct Inner {
            name: &'static str,
        }
        #[derive(Serialize)]
        struct Outer {
            key: u8,
            #[serde(flatten)]
            inner: Inner,
            extra: Kind,
        }
        #[derive(Serialize)]
        enum Kind {
            Cat,
        }
        #[derive(Serialize)]
        struct Wrapper(Outer);
        let outer = || Outer {
            key: 1,
            inner: Inner { name: "a" },
            extra: Kind::Cat,
        };
        assert!(typed(&outer()).is_ok());
        assert!(typed(&Wrapper(outer())).is_ok());
        assert!(typed(&Some(outer())).is_ok());
        let map = BTreeMap::from([("key", json!(2)), ("name", json!("b")), ("note", json!(null))]);
        assert!(typed(&map).is_ok());
        #[derive(Serialize)]
        enum Message {
            Tick { key: i64 },
        }
        // serde_json writes `{"Tick": {...}}`; a variant with fields is refused whole
        // at the top level.
        assert!(matches!(
            row_values(&schema(), &Message::Tick { key: 1 }),
            Err(ParseError::NotAnObject { .. })
        ));
    }

    #[test]
    fn bad_values_have_the_reasons_they_have_in_json() {
        let cases: Vec<(serde_json::Value, ParseError)> = vec![
            (
                json!({"key": "1", "name": "a"}),
                ParseError::WrongType {
                    column: "key".into(),
                    expected: DataType::Int,
                    found: "a string",
                },
            ),
            (
                json!({"key": 1.5, "name": "a"}),
                ParseError::WrongType {
                    column: "key".into(),
                    expected: DataType::Int,
                    found: "a number with a fraction or exponent",
                },
            ),
            (
                json!({"key": u64::MAX, "name": "a"}),
                ParseError::IntegerOutOfRange { column: "key".into() },
            ),
            (
                json!({"name": "a"}),
                ParseError::MissingField { column: "key".into() },
            ),
            (
                json!({"key": 1, "name": null}),
                ParseError::NullNotAllowed {
                    column: "name".into(),
                },
            ),
            (
                json!({"key": 1, "name": {"first": "a"}}),
                ParseError::WrongType {
                    column: "name".into(),
                    expected: DataType::String,
                    found: "an object",
                },
            ),
            (
                json!({"key": 1, "name": "a", "blob": [1, 256]}),
                ParseError::WrongType {
                    column: "blob".into(),
                    expected: DataType::Bytes,
                    found: NOT_BYTES,
                },
            ),
            (json!([1, 2]), ParseError::NotAnObject { found: "an array" }),
            (json!("text"), ParseError::NotAnObject { found: "a string" }),
            (json!(null), ParseError::NotAnObject { found: "null" }),
        ];
        for (value, expected) in cases {
            assert_eq!(typed(&value).unwrap_err(), expected, "{value}");
        }
        assert!(matches!(
            typed(&json!({"key": 1, "name": "a", "at": "noon"})),
            Err(ParseError::InvalidTimestamp { .. })
        ));
        #[derive(Serialize)]
        struct Huge {
            key: i128,
            name: &'static str,
        }
        assert_eq!(
            row_values(
                &schema(),
                &Huge {
                    key: i128::MAX,
                    name: "a"
                }
            )
            .unwrap_err(),
            ParseError::IntegerOutOfRange { column: "key".into() }
        );
        assert!(row_values(&schema(), &Huge { key: 3, name: "a" }).is_ok());
    }

    /// Regression: `ctx.next(&value)` went through `serde_json::to_value`, which turns
    /// NaN and the infinities into null, so `price: NaN` was stored as the default
    /// with nothing reported. Non-finite floats are refused on every path.
    #[test]
    fn non_finite_floats_are_refused_not_turned_into_null() {
        #[derive(Serialize)]
        struct Tick {
            key: i64,
            name: &'static str,
            score: f64,
        }
        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(
                row_values(
                    &schema(),
                    &Tick {
                        key: 1,
                        name: "a",
                        score: x
                    }
                )
                .unwrap_err(),
                ParseError::WrongType {
                    column: "score".into(),
                    expected: DataType::Float,
                    found: NON_FINITE
                }
            );
        }
        #[derive(Serialize)]
        struct Nested {
            key: i64,
            name: &'static str,
            extra: Vec<f32>,
        }
        assert_eq!(
            row_values(
                &schema(),
                &Nested {
                    key: 1,
                    name: "a",
                    extra: vec![1.0, f32::NAN]
                }
            )
            .unwrap_err(),
            ParseError::WrongType {
                column: "extra".into(),
                expected: DataType::Json,
                found: NON_FINITE
            }
        );
    }

    #[test]
    fn nesting_deeper_than_json_allows_is_refused_without_exhausting_the_stack() {
        #[derive(Serialize)]
        struct Deep {
            key: i64,
            name: &'static str,
            extra: serde_json::Value,
        }
        let nested = |levels: usize| {
            let mut value = json!(1);
            for _ in 0..levels {
                value = serde_json::Value::Array(vec![value]);
            }
            value
        };
        // The row's object is the first level, as in text.
        let ok = Deep {
            key: 1,
            name: "a",
            extra: nested(MAX_JSON_DEPTH - 1),
        };
        assert!(typed(&ok).is_ok());
        let deep = Deep {
            key: 1,
            name: "a",
            extra: nested(MAX_JSON_DEPTH),
        };
        assert_eq!(typed(&deep).unwrap_err(), ParseError::TooDeep);
        let deep_map = BTreeMap::from([("extra", nested(MAX_JSON_DEPTH))]);
        assert_eq!(row_values(&schema(), &deep_map).unwrap_err(), ParseError::TooDeep);
    }

    #[test]
    fn a_map_key_that_is_not_a_string_is_refused() {
        let map = BTreeMap::from([(vec![1], 1)]);
        assert!(matches!(
            row_values(&schema(), &map),
            Err(ParseError::Serialize(_))
        ));
        let numbered = BTreeMap::from([(1, 1)]);
        assert!(matches!(
            row_values(&schema(), &numbered),
            Err(ParseError::MissingField { .. })
        ));
    }

    /// A typed send to a lenient reader has the outcome of its JSON text there: a
    /// string (or char) for an int or float column is read as the number it holds.
    #[test]
    fn lenient_numbers_apply_to_typed_sends_as_to_their_json_text() {
        use crate::parse::ParseOptions;

        #[derive(Serialize)]
        struct Quote<'a> {
            key: &'a str,
            name: &'a str,
            score: &'a str,
        }
        #[derive(Serialize)]
        struct Digit {
            key: char,
            name: &'static str,
        }
        fn lenient<T: Serialize>(value: &T) -> Result<Arc<[Value]>, ParseError> {
            let schema = schema();
            let typed = read_row(&schema, true, value);
            let text = serde_json::to_string(value).unwrap();
            let parser = Parser::new(
                schema,
                ParseOptions {
                    format: Format::Json,
                    lenient_numbers: true,
                },
            );
            let from_text = parser.parse(&Payload::Bytes(bytes::Bytes::from(text.clone())));
            assert_eq!(typed, from_text, "typed and text disagree on {text}");
            typed
        }
        let values = lenient(&Quote {
            key: "7",
            name: "12",
            score: "65000.1",
        })
        .unwrap();
        assert_eq!(values[0], Value::Int(7));
        assert_eq!(values[1], Value::from("12"));
        assert_eq!(values[2], Value::Float(65000.1));
        assert_eq!(lenient(&Digit { key: '9', name: "a" }).unwrap()[0], Value::Int(9));
        for (key, score) in [
            ("1.5", "1"),
            ("7", "NaN"),
            ("7", " 1"),
            ("18446744073709551616", "1"),
        ] {
            let refused = lenient(&Quote {
                key,
                name: "a",
                score,
            });
            assert!(
                matches!(
                    refused,
                    Err(ParseError::WrongType { .. } | ParseError::IntegerOutOfRange { .. })
                ),
                "{key} {score}: {refused:?}"
            );
        }
        // Without the option the typed path refuses a number string, as text does.
        assert!(matches!(
            typed(&Quote {
                key: "7",
                name: "a",
                score: "1"
            }),
            Err(ParseError::WrongType {
                found: "a string",
                ..
            })
        ));
    }
}
