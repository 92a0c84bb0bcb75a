//! The binary codec of values, keys, rows, offsets and JSON used in log records and
//! snapshots.
//!
//! Integers are little-endian; counts, lengths and ints are LEB128 varints (ints
//! zigzagged first). Every value starts with a one-byte tag:
//!
//! | tag | value | then |
//! |---|---|---|
//! | 0 | null | — |
//! | 1, 2 | false, true | — |
//! | 3 | int | zigzag varint |
//! | 4 | float | 8 bytes, the IEEE 754 bits |
//! | 5 | string | varint length, UTF-8 bytes |
//! | 6 | bytes | varint length, bytes |
//! | 7 | json | a JSON value (below) |
//! | 8 | timestamp | 8 bytes, nanoseconds since the epoch (i64) |
//!
//! A JSON value is a tag too: 0 null, 1 false, 2 true, 3 unsigned int (varint),
//! 4 negative int (zigzag varint), 5 float (8 bytes), 6 string (length, UTF-8),
//! 7 array (varint count, values), 8 object (varint count, then key string and value
//! per entry). It is decoded without recursion, so no nesting depth (valid or
//! corrupt) can overflow the stack.
//!
//! A row is its values in schema order (the count is the schema's). A keyed row is a
//! flags byte (bit 0: an insertion, in log records; bit 1: the key follows explicitly)
//! then the key if explicit, then the row. The key of a row in a table with a primary
//! key is the row's primary-key values, so it is not written again; a generated key is
//! written as tag 0 and its id (varint), any other key as tag 1, a varint count and
//! the values.

use std::borrow::Cow;
use std::sync::Arc;

use crate::change::{Change, Offsets};
use crate::row::{Key, Row};
use crate::schema::Schema;
use crate::value::{DataType, Timestamp, Value};

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const INT: u8 = 3;
const FLOAT: u8 = 4;
const STRING: u8 = 5;
const BYTES: u8 = 6;
const JSON: u8 = 7;
const TIMESTAMP: u8 = 8;

const JSON_UINT: u8 = 3;
const JSON_NEG_INT: u8 = 4;
const JSON_FLOAT: u8 = 5;
const JSON_STRING: u8 = 6;
const JSON_ARRAY: u8 = 7;
const JSON_OBJECT: u8 = 8;

const KEY_GENERATED: u8 = 0;
const KEY_VALUES: u8 = 1;

/// Flags byte of a keyed row: an insertion (log records only).
pub(super) const FLAG_ADDITION: u8 = 1;
/// Flags byte of a keyed row: the key is written before the row.
const FLAG_EXPLICIT_KEY: u8 = 2;

pub(super) fn put_u32(buf: &mut Vec<u8>, value: u32) {
    buf.extend_from_slice(&value.to_le_bytes());
}

pub(super) fn put_u64(buf: &mut Vec<u8>, value: u64) {
    buf.extend_from_slice(&value.to_le_bytes());
}

pub(super) fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

pub(super) fn put_len_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// An optional time: a presence byte and, if present, 8 bytes.
pub(super) fn put_time(buf: &mut Vec<u8>, time: Option<crate::change::Time>) {
    match time {
        Some(time) => {
            buf.push(1);
            put_u64(buf, time.as_u64());
        }
        None => buf.push(0),
    }
}

pub(super) fn put_value(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => buf.push(NULL),
        Value::Bool(false) => buf.push(FALSE),
        Value::Bool(true) => buf.push(TRUE),
        Value::Int(int) => {
            buf.push(INT);
            put_varint(buf, zigzag(*int));
        }
        Value::Float(float) => {
            buf.push(FLOAT);
            put_u64(buf, float.to_bits());
        }
        Value::String(string) => {
            buf.push(STRING);
            put_len_bytes(buf, string.as_bytes());
        }
        Value::Bytes(bytes) => {
            buf.push(BYTES);
            put_len_bytes(buf, bytes);
        }
        Value::Json(json) => {
            buf.push(JSON);
            put_json(buf, json);
        }
        Value::Timestamp(timestamp) => {
            buf.push(TIMESTAMP);
            put_u64(buf, timestamp.as_unix_nanos() as u64);
        }
    }
}

/// Writes a JSON value with an explicit stack: user JSON may nest arbitrarily deep.
pub(super) fn put_json(buf: &mut Vec<u8>, json: &serde_json::Value) {
    enum Pending<'a> {
        Array(std::slice::Iter<'a, serde_json::Value>),
        Object(serde_json::map::Iter<'a>),
    }
    let mut stack: Vec<Pending<'_>> = Vec::new();
    let mut next = Some(json);
    loop {
        if let Some(json) = next.take() {
            match json {
                serde_json::Value::Null => buf.push(NULL),
                serde_json::Value::Bool(false) => buf.push(FALSE),
                serde_json::Value::Bool(true) => buf.push(TRUE),
                serde_json::Value::Number(number) => {
                    if let Some(unsigned) = number.as_u64() {
                        buf.push(JSON_UINT);
                        put_varint(buf, unsigned);
                    } else if let Some(signed) = number.as_i64() {
                        buf.push(JSON_NEG_INT);
                        put_varint(buf, zigzag(signed));
                    } else {
                        // Without `arbitrary_precision`, a number that is no integer is an f64.
                        buf.push(JSON_FLOAT);
                        put_u64(buf, number.as_f64().unwrap_or(0.0).to_bits());
                    }
                }
                serde_json::Value::String(string) => {
                    buf.push(JSON_STRING);
                    put_len_bytes(buf, string.as_bytes());
                }
                serde_json::Value::Array(items) => {
                    buf.push(JSON_ARRAY);
                    put_varint(buf, items.len() as u64);
                    stack.push(Pending::Array(items.iter()));
                }
                serde_json::Value::Object(map) => {
                    buf.push(JSON_OBJECT);
                    put_varint(buf, map.len() as u64);
                    stack.push(Pending::Object(map.iter()));
                }
            }
        }
        match stack.last_mut() {
            None => return,
            Some(Pending::Array(items)) => match items.next() {
                Some(item) => next = Some(item),
                None => {
                    stack.pop();
                }
            },
            Some(Pending::Object(entries)) => match entries.next() {
                Some((key, value)) => {
                    put_len_bytes(buf, key.as_bytes());
                    next = Some(value);
                }
                None => {
                    stack.pop();
                }
            },
        }
    }
}

pub(super) fn put_offsets(buf: &mut Vec<u8>, offsets: &Offsets) {
    put_varint(buf, offsets.len() as u64);
    for (source, offset) in offsets.iter() {
        put_len_bytes(buf, source.as_bytes());
        put_json(buf, offset);
    }
}

/// Writes a key and its row; `flags` carries [`FLAG_ADDITION`] for log records.
pub(super) fn put_keyed_row(buf: &mut Vec<u8>, schema: &Schema, key: &Key, row: &Row, flags: u8) {
    let values = row.values();
    let primary_key = schema.primary_key();
    let derived = !primary_key.is_empty()
        && key.generated_id().is_none()
        && key.values().len() == primary_key.len()
        && key
            .values()
            .iter()
            .zip(primary_key)
            .all(|(value, &column)| values.get(column) == Some(value));
    if derived {
        buf.push(flags);
    } else {
        buf.push(flags | FLAG_EXPLICIT_KEY);
        match key.generated_id() {
            Some(id) => {
                buf.push(KEY_GENERATED);
                put_varint(buf, id);
            }
            None => {
                buf.push(KEY_VALUES);
                put_varint(buf, key.values().len() as u64);
                for value in key.values() {
                    put_value(buf, value);
                }
            }
        }
    }
    for value in values {
        put_value(buf, value);
    }
}

pub(super) fn put_change(buf: &mut Vec<u8>, schema: &Schema, change: &Change) {
    let flags = if change.is_addition { FLAG_ADDITION } else { 0 };
    put_keyed_row(buf, schema, &change.key, &change.row, flags);
}

/// Why bytes could not be decoded, and where (relative to the decoded slice).
#[derive(Debug)]
pub(super) struct Fault {
    pub(super) at: usize,
    pub(super) detail: Cow<'static, str>,
}

/// Reads what the `put_*` functions wrote. Every read checks the bytes left, so no input
/// makes it panic or allocate more than the input's size allows.
pub(super) struct Decoder<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// The type and nullability of each column, checked for every decoded value so that
/// a restored row always fits its schema.
pub(super) struct RowShape {
    schema: Schema,
    columns: Vec<(DataType, bool)>,
}

impl RowShape {
    pub(super) fn new(schema: &Schema) -> Self {
        RowShape {
            schema: schema.clone(),
            columns: schema
                .columns()
                .iter()
                .map(|column| (column.data_type(), column.is_nullable()))
                .collect(),
        }
    }

    pub(super) fn columns(&self) -> &[(DataType, bool)] {
        &self.columns
    }
}

impl<'a> Decoder<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Decoder { bytes, pos: 0 }
    }

    pub(super) fn position(&self) -> usize {
        self.pos
    }

    pub(super) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub(super) fn fault(&self, detail: impl Into<Cow<'static, str>>) -> Fault {
        Fault {
            at: self.pos,
            detail: detail.into(),
        }
    }

    pub(super) fn finish(&self) -> Result<(), Fault> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(self.fault(format!("{} unexpected bytes after the end", self.remaining())))
        }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], Fault> {
        if len > self.remaining() {
            return Err(self.fault(format!("needs {len} more bytes, {} are left", self.remaining())));
        }
        let bytes = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        Ok(bytes)
    }

    pub(super) fn u8(&mut self) -> Result<u8, Fault> {
        Ok(self.take(1)?[0])
    }

    pub(super) fn u64(&mut self) -> Result<u64, Fault> {
        let mut le = [0; 8];
        le.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(le))
    }

    pub(super) fn varint(&mut self) -> Result<u64, Fault> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(self.fault("a varint overflows 64 bits"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.fault("a varint is longer than 10 bytes"))
    }

    /// A count of items each at least `min_size` bytes long: bounded by the bytes left,
    /// so a corrupt count cannot make a caller reserve more than the input's size.
    pub(super) fn count(&mut self, min_size: usize) -> Result<usize, Fault> {
        let count = self.varint()?;
        match usize::try_from(count) {
            Ok(count) if count.saturating_mul(min_size) <= self.remaining() => Ok(count),
            _ => Err(self.fault(format!(
                "a count of {count} items does not fit in the {} bytes left",
                self.remaining()
            ))),
        }
    }

    pub(super) fn len_bytes(&mut self) -> Result<&'a [u8], Fault> {
        let len = self.count(1)?;
        self.take(len)
    }

    pub(super) fn str(&mut self) -> Result<&'a str, Fault> {
        let start = self.pos;
        let bytes = self.len_bytes()?;
        std::str::from_utf8(bytes).map_err(|_| Fault {
            at: start,
            detail: "a string is not UTF-8".into(),
        })
    }

    pub(super) fn time(&mut self) -> Result<Option<crate::change::Time>, Fault> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(crate::change::Time::new(self.u64()?))),
            other => Err(self.fault(format!("bad time marker {other}"))),
        }
    }

    pub(super) fn value(&mut self) -> Result<Value, Fault> {
        let tag = self.u8()?;
        Ok(match tag {
            NULL => Value::Null,
            FALSE => Value::Bool(false),
            TRUE => Value::Bool(true),
            INT => Value::Int(unzigzag(self.varint()?)),
            FLOAT => Value::Float(f64::from_bits(self.u64()?)),
            STRING => Value::String(Arc::from(self.str()?)),
            BYTES => Value::Bytes(Arc::from(self.len_bytes()?)),
            JSON => Value::Json(Arc::new(self.json()?)),
            TIMESTAMP => Value::Timestamp(Timestamp::from_unix_nanos(self.u64()? as i64)),
            other => {
                self.pos -= 1;
                return Err(self.fault(format!("unknown value tag {other}")));
            }
        })
    }

    /// Reads a JSON value with an explicit stack: nesting depth costs heap, not stack.
    pub(super) fn json(&mut self) -> Result<serde_json::Value, Fault> {
        enum Open {
            Array(Vec<serde_json::Value>, usize),
            Object(serde_json::Map<String, serde_json::Value>, usize, String),
        }
        let mut stack: Vec<Open> = Vec::new();
        loop {
            // An object's next entry starts with its key.
            if let Some(Open::Object(_, left, key)) = stack.last_mut()
                && *left > 0
            {
                *key = self.str()?.to_owned();
            }
            let tag = self.u8()?;
            let mut done = match tag {
                NULL => serde_json::Value::Null,
                FALSE => serde_json::Value::Bool(false),
                TRUE => serde_json::Value::Bool(true),
                JSON_UINT => serde_json::Value::from(self.varint()?),
                JSON_NEG_INT => serde_json::Value::from(unzigzag(self.varint()?)),
                JSON_FLOAT => {
                    let float = f64::from_bits(self.u64()?);
                    match serde_json::Number::from_f64(float) {
                        Some(number) => serde_json::Value::Number(number),
                        None => return Err(self.fault("a JSON number is not finite")),
                    }
                }
                JSON_STRING => serde_json::Value::String(self.str()?.to_owned()),
                JSON_ARRAY => {
                    let count = self.count(1)?;
                    if count > 0 {
                        stack.push(Open::Array(Vec::with_capacity(count), count));
                        continue;
                    }
                    serde_json::Value::Array(Vec::new())
                }
                JSON_OBJECT => {
                    let count = self.count(2)?;
                    if count > 0 {
                        stack.push(Open::Object(serde_json::Map::new(), count, String::new()));
                        continue;
                    }
                    serde_json::Value::Object(serde_json::Map::new())
                }
                other => {
                    self.pos -= 1;
                    return Err(self.fault(format!("unknown JSON tag {other}")));
                }
            };
            // Hand the finished value to its container, closing every container it fills.
            loop {
                match stack.last_mut() {
                    None => return Ok(done),
                    Some(Open::Array(items, left)) => {
                        items.push(done);
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                    }
                    Some(Open::Object(map, left, key)) => {
                        map.insert(std::mem::take(key), done);
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                    }
                }
                done = match stack.pop() {
                    Some(Open::Array(items, _)) => serde_json::Value::Array(items),
                    Some(Open::Object(map, _, _)) => serde_json::Value::Object(map),
                    None => return Err(self.fault("JSON stack underflow")),
                };
            }
        }
    }

    pub(super) fn offsets(&mut self) -> Result<Offsets, Fault> {
        let count = self.count(2)?;
        let mut offsets = Vec::with_capacity(count);
        for _ in 0..count {
            let source = self.str()?;
            offsets.push((Arc::<str>::from(source), self.json()?));
        }
        Ok(offsets.into_iter().collect())
    }

    /// Reads a key and its row; returns the flags byte too. `scratch` is reused
    /// between rows so that each row costs one allocation for its values.
    pub(super) fn keyed_row(
        &mut self,
        shape: &RowShape,
        scratch: &mut Vec<Value>,
    ) -> Result<(u8, Key, Row), Fault> {
        let flags = self.u8()?;
        if flags & !(FLAG_ADDITION | FLAG_EXPLICIT_KEY) != 0 {
            self.pos -= 1;
            return Err(self.fault(format!("bad row flags {flags:#x}")));
        }
        let explicit = if flags & FLAG_EXPLICIT_KEY != 0 {
            Some(match self.u8()? {
                KEY_GENERATED => Key::generated(self.varint()?),
                KEY_VALUES => {
                    let count = self.count(1)?;
                    let mut values = Vec::with_capacity(count);
                    for _ in 0..count {
                        values.push(self.value()?);
                    }
                    Key::new(values)
                }
                other => return Err(self.fault(format!("unknown key tag {other}"))),
            })
        } else {
            None
        };
        scratch.clear();
        for (index, &(data_type, nullable)) in shape.columns.iter().enumerate() {
            let start = self.pos;
            let value = self.value()?;
            if !(data_type.matches(&value) || (nullable && value.is_null())) {
                let column = &shape.schema.columns()[index];
                return Err(Fault {
                    at: start,
                    detail: format!(
                        "column `{}` is {}{}, but a row holds a {}",
                        column.name(),
                        data_type,
                        if nullable { "?" } else { "" },
                        value.kind()
                    )
                    .into(),
                });
            }
            scratch.push(value);
        }
        let values: Arc<[Value]> = scratch.drain(..).collect();
        let key = match explicit {
            Some(key) => key,
            None if shape.schema.primary_key().is_empty() => {
                return Err(self.fault("a row of a table without primary key has no key"));
            }
            None => Key::of_row(&shape.schema, &values),
        };
        Ok((flags, key, Row::new_unchecked(shape.schema.clone(), values)))
    }
}
