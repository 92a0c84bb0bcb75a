//! The fast path of the JSON reader: one flat object of scalars, read by a scanner of
//! its own instead of serde_json's generic machinery.
//!
//! Most messages are a single object whose columns hold numbers, strings without
//! escapes, booleans and nulls. For those, serde_json's `Deserializer` spends more
//! instructions in its visitor plumbing than in reading the bytes, so this module reads
//! them directly. It is only ever an optimisation: it gives an answer only for input it
//! fully understands and that makes a valid row, and otherwise says "fall back", after
//! which the serde_json path reads the message from the start and decides (including
//! every error and its position). So for any input it either agrees with the serde_json
//! path exactly or is not used; the property tests in `parse.rs` check that.
//!
//! What it reads as serde_json does (`serde_json/src/de.rs`, `read.rs` of 1.0.x):
//! whitespace is space, tab, line feed and carriage return; a field name is a string
//! (escapes and invalid UTF-8 make it fall back); column values get the conversions
//! of `ValueSeed`'s visitor methods (copied in `number_value`, `string_value` and
//! `bool_value`, and tested against them; a number in a string for a lenient reader
//! goes through `ValueSeed` itself) from the same numbers serde_json would produce
//! (`-0` is the float `-0.0`; integers of more than 18 digits, escaped strings,
//! arrays, objects and JSON columns fall back); the values of fields the schema lacks
//! are skipped with serde_json's `ignore_value` rules (escapes checked but not decoded,
//! strings not checked for UTF-8, no depth limit; here nesting beyond 64 levels falls
//! back).

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use serde::de::Visitor;

use super::{Seen, ValueSeed, complete_row, empty_row};
use crate::schema::{Column, Schema};
use crate::value::{DataType, Timestamp, Value};

/// Column lookup by field name, precomputed per reader: a name is hashed from its length
/// and its first eight bytes (read as one word) into a small table of columns, and
/// confirmed against the column found. A field the schema lacks, the commonest case
/// in wide messages, usually costs one multiplication and one load.
///
/// Before that, the column the field at the same position had in the last message
/// is tried: the messages of one feed list their fields in one order, so a column
/// is usually found by comparing its name with the text as it stands.
#[derive(Debug)]
pub(super) struct FieldIndex {
    /// Per column, in schema order: the name's length and [`head`] of it. A name with
    /// a quote, backslash or control character, which JSON text can only spell with
    /// escapes (and a message with an escaped name falls back), has [`NEVER`]: it is
    /// never matched by the raw bytes of the text.
    keys: Vec<(usize, u64)>,
    /// Per column whose name is plain and at most seven bytes long: the bits of a word
    /// of text that the name and its closing quote cover, and those bytes, so that
    /// [`FieldIndex::is_next`] compares one word; `(0, 0)` for the others.
    quoted: Vec<(u64, u64)>,

    /// By [`bucket`]: [`EMPTY`], the only column in it, or [`SHARED`].
    buckets: [u8; BUCKETS],
    /// By position in a message (the first [`ORDER`] fields), the column of the field
    /// at that position in the last message read, or [`NO_COLUMN`]; at first, the
    /// columns in schema order. Relaxed atomics, as it is only ever a guess: a reader
    /// whose messages are parsed on several threads at once guesses worse, never
    /// wrong.
    order: [AtomicU8; ORDER],
}

impl Clone for FieldIndex {
    fn clone(&self) -> Self {
        FieldIndex {
            keys: self.keys.clone(),
            quoted: self.quoted.clone(),
            buckets: self.buckets,
            order: std::array::from_fn(|i| AtomicU8::new(self.order[i].load(Ordering::Relaxed))),
        }
    }
}

/// How many leading fields of a message have their column remembered.
const ORDER: usize = 32;
/// In [`FieldIndex::order`]: the field at that position was none of the columns.
const NO_COLUMN: u8 = u8::MAX;

/// The key of a column whose name is never matched: no name in the text is that long.
const NEVER: (usize, u64) = (usize::MAX, 0);

/// Above this many columns, field names are looked up through the schema's hash map.
const SCAN_LIMIT: usize = 16;
const BUCKETS: usize = 64;
/// No column's name falls in the bucket.
const EMPTY: u8 = u8::MAX;
/// Several columns' names fall in the bucket: they are compared one by one.
const SHARED: u8 = u8::MAX - 1;

/// The first eight bytes of `name` (fewer, zero-filled, for a shorter name) as a
/// little-endian word.
#[inline]
fn head(name: &[u8]) -> u64 {
    let mut word = [0_u8; 8];
    let n = name.len().min(8);
    word[..n].copy_from_slice(&name[..n]);
    u64::from_le_bytes(word)
}

/// [`head`] of the name `rest[..len]`, reading one word when `rest` holds eight bytes.
#[inline]
fn head_at(rest: &[u8], len: usize) -> u64 {
    match rest.first_chunk::<8>() {
        Some(word) if len >= 8 => u64::from_le_bytes(*word),
        Some(word) => u64::from_le_bytes(*word) & ((1_u64 << (8 * len)) - 1),
        None => head(&rest[..len]),
    }
}

/// The bucket of a name of length `len` and head `head` (Fibonacci hashing).
#[inline]
fn bucket(len: usize, head: u64) -> usize {
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
    // The top six bits of the product, which depend on every bit of the head.
    ((head ^ len as u64).wrapping_mul(GOLDEN) >> 58) as usize
}

impl FieldIndex {
    pub(super) fn new(schema: &Schema) -> Self {
        let keys: Vec<(usize, u64)> = schema
            .columns()
            .iter()
            .map(|column| {
                let name = column.name().as_bytes();
                let plain = !name.iter().any(|&b| b == b'"' || b == b'\\' || b < 0x20);
                if plain { (name.len(), head(name)) } else { NEVER }
            })
            .collect();
        let mut buckets = [EMPTY; BUCKETS];
        if keys.len() <= SCAN_LIMIT {
            for (i, &(len, head)) in keys.iter().enumerate().filter(|&(_, &key)| key != NEVER) {
                let slot = &mut buckets[bucket(len, head)];
                // At most SCAN_LIMIT columns: the index fits below SHARED.
                *slot = match u8::try_from(i) {
                    Ok(i) if *slot == EMPTY => i,
                    _ => SHARED,
                };
            }
        }
        let order = std::array::from_fn(|i| {
            let column = u8::try_from(i).ok().filter(|_| i < keys.len());
            AtomicU8::new(column.unwrap_or(NO_COLUMN))
        });
        let quoted = keys
            .iter()
            .map(|&(len, head)| match u32::try_from(len) {
                Ok(len @ 0..=7) => {
                    let mask = u64::MAX >> (64 - 8 * (len + 1));
                    (mask, head | u64::from(b'"') << (8 * len))
                }
                _ => (0, 0),
            })
            .collect();
        FieldIndex {
            keys,
            quoted,
            buckets,
            order,
        }
    }

    /// The column the field at `position` had in the last message, if any.
    #[inline(always)]
    fn guess(&self, position: usize) -> Option<usize> {
        let column = self.order.get(position)?.load(Ordering::Relaxed);
        (column != NO_COLUMN).then_some(usize::from(column))
    }

    /// Remembers `column` for the field at `position`, if it is not what was guessed.
    #[inline(always)]
    fn learn(&self, position: usize, guessed: Option<usize>, column: Option<usize>) {
        if column == guessed {
            return;
        }
        if let Some(slot) = self.order.get(position) {
            let column = column
                .and_then(|i| u8::try_from(i).ok())
                .filter(|&i| i != NO_COLUMN);
            slot.store(column.unwrap_or(NO_COLUMN), Ordering::Relaxed);
        }
    }

    /// If the field name at the start of `rest` (after its opening quote) is column
    /// `i`'s, how many bytes it takes with its closing quote: a few comparisons, and
    /// on a match the name is neither scanned nor hashed.
    #[inline(always)]
    fn is_next(&self, columns: &[Column], i: usize, rest: &[u8]) -> Option<usize> {
        let &(len, head) = self.keys.get(i)?;
        if let (Some(word), Some(&(mask, quoted))) = (rest.first_chunk::<8>(), self.quoted.get(i))
            && mask != 0
        {
            return (u64::from_le_bytes(*word) & mask == quoted).then_some(len + 1);
        }
        let matches = rest.get(len) == Some(&b'"')
            && head_at(rest, len) == head
            && (len <= 8 || columns[i].name().as_bytes()[8..] == rest[8..len]);
        matches.then(|| len + 1)
    }

    /// The column named by the field name `rest[..len]` (valid UTF-8: a column name is,
    /// and only a column name can match).
    #[inline]
    fn find(&self, columns: &[Column], schema: &Schema, rest: &[u8], len: usize) -> Option<usize> {
        if self.keys.len() > SCAN_LIMIT {
            return std::str::from_utf8(&rest[..len])
                .ok()
                .and_then(|name| schema.index_of(name));
        }
        let word = head_at(rest, len);
        match self.buckets[bucket(len, word)] {
            EMPTY => None,
            SHARED => (0..self.keys.len()).find(|&i| self.is(columns, i, rest, len, word)),
            i => {
                let i = usize::from(i);
                self.is(columns, i, rest, len, word).then_some(i)
            }
        }
    }

    /// Whether column `i` is named `rest[..len]`, whose head is `word`.
    #[inline]
    fn is(&self, columns: &[Column], i: usize, rest: &[u8], len: usize, word: u64) -> bool {
        self.keys[i] == (len, word) && (len <= 8 || columns[i].name().as_bytes()[8..] == rest[8..len])
    }
}

/// A number as serde_json hands it to a visitor.
enum Number {
    U64(u64),
    I64(i64),
    F64(f64),
}

/// Reads `bytes` as one flat JSON object into a row of `schema`; `None` when the
/// message is anything else or is refused, for the serde_json path to read.
#[inline]
pub(super) fn parse(
    schema: &Schema,
    index: &FieldIndex,
    lenient_numbers: bool,
    bytes: &[u8],
) -> Option<Arc<[Value]>> {
    let columns = schema.columns();
    let mut scan = Scan { bytes, pos: 0 };
    if !scan.eat_after_space(b'{') {
        return None;
    }
    let mut row = empty_row(columns.len());
    let values = Arc::get_mut(&mut row)?;
    let mut seen = Seen::new(columns.len());
    let mut position = 0;
    // How many columns the message set (each once, as `seen` checks) to a value
    // other than null: if fewer than all, `complete_row` decides the rest.
    let mut set = 0;
    loop {
        if !scan.eat_after_space(b'"') {
            // Only the first member may instead be the end of an empty object
            // (whose whitespace was just eaten): looked for after the name's quote,
            // which most messages have.
            if position == 0 && scan.eat(b'}') {
                break;
            }
            return None;
        }
        let guess = index.guess(position);
        let matched = match guess {
            Some(i) => index.is_next(columns, i, bytes.get(scan.pos..)?),
            None => None,
        };
        let column = match matched {
            Some(length) => {
                scan.pos += length;
                guess
            }
            None => {
                let found = scan.column(index, columns, schema)?;
                index.learn(position, guess, found);
                found
            }
        };
        position += 1;
        if !scan.eat_after_space(b':') {
            return None;
        }
        scan.space_after_colon();
        match column {
            Some(i) => {
                if !seen.insert(i) {
                    return None;
                }
                let null = scan.value(&columns[i], lenient_numbers, &mut values[i])?;
                set += usize::from(!null);
            }
            None => scan.skip_value()?,
        }
        match scan.next_after_space()? {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
    }
    // Only whitespace may follow the object.
    scan.whitespace();
    if scan.pos != bytes.len() {
        return None;
    }
    // A message that set every column, none to null, is complete as it is.
    if set != columns.len() {
        complete_row(columns, values, &seen).ok()?;
    }
    Some(row)
}

/// Where the plain text of a string ends: the first quote, backslash or control
/// character in `rest`, and whether the bytes before it are ASCII; `None` if there is
/// none. Eight bytes at a time (the "has a byte below n" word tricks, exact for the
/// first such byte), so that long strings cost a few instructions per word.
#[inline]
fn string_end(rest: &[u8]) -> Option<(usize, bool)> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    /// The high bit of each byte of `word` that is below `n` (n <= 0x80), exact up to
    /// the first such byte counting from the least significant end.
    const fn below(word: u64, n: u8) -> u64 {
        word.wrapping_sub(ONES * n as u64) & !word & HIGHS
    }
    let mut high = 0_u64;
    let mut chunks = rest.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(chunk);
        let word = u64::from_le_bytes(bytes);
        let found = below(word ^ (ONES * u64::from(b'"')), 1)
            | below(word ^ (ONES * u64::from(b'\\')), 1)
            | below(word, 0x20);
        if found != 0 {
            let at = (found.trailing_zeros() / 8) as usize;
            // The bytes before the special one: the rest of the word is not text.
            let before = if at == 0 {
                0
            } else {
                word & (u64::MAX >> (64 - 8 * at))
            };
            return Some((offset + at, (high | before) & HIGHS == 0));
        }
        high |= word;
        offset += 8;
    }
    for (i, &byte) in chunks.remainder().iter().enumerate() {
        if byte == b'"' || byte == b'\\' || byte < 0x20 {
            return Some((offset + i, high & HIGHS == 0));
        }
        high |= u64::from(byte);
    }
    None
}

/// What `ValueSeed::visit_u64`, `visit_i64` and `visit_f64` make of `number` for a
/// column of `data_type`, or `None` where they refuse it.
#[inline(always)]
fn number_value(data_type: DataType, number: Number) -> Option<Value> {
    #[allow(clippy::cast_precision_loss)]
    match (number, data_type) {
        (Number::U64(n), DataType::Int) => i64::try_from(n).ok().map(Value::Int),
        (Number::I64(n), DataType::Int) => Some(Value::Int(n)),
        (Number::U64(n), DataType::Float) => Some(Value::Float(n as f64)),
        (Number::I64(n), DataType::Float) => Some(Value::Float(n as f64)),
        (Number::F64(x), DataType::Float) if x.is_finite() => Some(Value::Float(x)),
        (Number::U64(n), DataType::Timestamp) => millis(i64::try_from(n).ok()?),
        (Number::I64(n), DataType::Timestamp) => millis(n),
        _ => None,
    }
}

/// `ValueSeed::millis`.
fn millis(millis: i64) -> Option<Value> {
    Timestamp::from_unix_millis(millis).map(Value::Timestamp)
}

/// What `ValueSeed::visit_str` makes of `text` for `column`, or `None` where it
/// refuses it.
#[inline(always)]
fn string_value(column: &Column, lenient_numbers: bool, text: &str) -> Option<Value> {
    match column.data_type() {
        DataType::String => Some(Value::String(Arc::from(text))),
        DataType::Bytes => Some(Value::Bytes(Arc::from(text.as_bytes()))),
        DataType::Timestamp => Timestamp::parse_rfc3339(text).ok().map(Value::Timestamp),
        DataType::Int | DataType::Float if lenient_numbers => number_in_string(column, text),
        _ => None,
    }
}

/// A number in a string for an int or float column of a lenient reader: read by
/// `ValueSeed` itself, as this is rare and its rules are many.
#[inline(never)]
fn number_in_string(column: &Column, text: &str) -> Option<Value> {
    // Set by a refusal; never read, as the serde_json path then reports.
    let failure = Cell::new(None);
    let seed = ValueSeed {
        column,
        failure: &failure,
        lenient_numbers: true,
    };
    seed.visit_str::<serde_json::Error>(text).ok()
}

/// What `ValueSeed::visit_bool` makes of `v`, or `None` where it refuses it.
#[inline(always)]
fn bool_value(data_type: DataType, v: bool) -> Option<Value> {
    (data_type == DataType::Bool).then_some(Value::Bool(v))
}

struct Scan<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Scan<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    #[inline]
    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.pos += 1;
        Some(byte)
    }

    #[inline]
    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        self.pos += usize::from(found);
        found
    }

    #[inline]
    fn whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// The whitespace between a field's colon and its value: in most JSON text none or
    /// one space, which is looked for first.
    #[inline(always)]
    fn space_after_colon(&mut self) {
        self.eat(b' ');
        if let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.whitespace();
        }
    }

    /// Eats `byte` after any whitespace; compact JSON has none and most other JSON
    /// one space, so the byte is looked for first, then after one space.
    #[inline(always)]
    fn eat_after_space(&mut self, byte: u8) -> bool {
        if self.eat(byte) {
            return true;
        }
        if self.eat(b' ') && self.eat(byte) {
            return true;
        }
        self.whitespace();
        self.eat(byte)
    }

    /// The next byte that is not whitespace.
    #[inline(always)]
    fn next_after_space(&mut self) -> Option<u8> {
        match self.next()? {
            b' ' | b'\n' | b'\t' | b'\r' => {
                self.whitespace();
                self.next()
            }
            byte => Some(byte),
        }
    }

    /// Reads a field name (after its opening quote), as serde_json reads one (valid
    /// UTF-8), and finds its column.
    #[inline(always)]
    fn column(&mut self, index: &FieldIndex, columns: &[Column], schema: &Schema) -> Option<Option<usize>> {
        let rest = self.bytes.get(self.pos..)?;
        let (len, ascii) = string_end(rest)?;
        if rest[len] != b'"' {
            return None;
        }
        if !ascii {
            std::str::from_utf8(&rest[..len]).ok()?;
        }
        self.pos += len + 1;
        Some(index.find(columns, schema, rest, len))
    }

    /// The rest of a string whose opening quote was read, when it has no escape and no
    /// control character, and whether it is ASCII; `None` otherwise. Not checked for
    /// UTF-8.
    // Always inlined: called for every field name and string, and a call costs more
    // than the scan of a short string.
    #[inline(always)]
    fn plain_string(&mut self) -> Option<(&'a [u8], bool)> {
        let rest = self.bytes.get(self.pos..)?;
        let (end, ascii) = string_end(rest)?;
        if rest[end] != b'"' {
            return None;
        }
        self.pos += end + 1;
        Some((&rest[..end], ascii))
    }

    /// A string value (after its opening quote), as serde_json reads one: valid UTF-8.
    #[inline]
    fn text(&mut self) -> Option<&'a str> {
        let (text, _) = self.plain_string()?;
        std::str::from_utf8(text).ok()
    }

    /// Reads a literal whose first byte was read.
    #[inline]
    fn literal(&mut self, rest: &[u8]) -> Option<()> {
        let end = self.pos.checked_add(rest.len())?;
        if self.bytes.get(self.pos..end)? == rest {
            self.pos = end;
            Some(())
        } else {
            None
        }
    }

    /// A number, as serde_json's `parse_any_number` reads it, or `None` for one it reads
    /// the long way (more than 18 integer digits) or refuses.
    #[inline]
    fn number(&mut self) -> Option<Number> {
        let start = self.pos;
        let negative = self.eat(b'-');
        let mut significand: u64 = match self.next()? {
            b'0' => {
                if let Some(b'0'..=b'9') = self.peek() {
                    return None;
                }
                0
            }
            digit @ b'1'..=b'9' => u64::from(digit - b'0'),
            _ => return None,
        };
        // One pass over the digits after the first, accumulating as it goes: at most
        // 17 more (18 in all, below 10^18, so no overflow); a 19th digit falls back.
        let rest = self.bytes.get(self.pos..)?;
        let mut more = 0;
        while let Some(&byte) = rest.get(more) {
            let digit = byte.wrapping_sub(b'0');
            if digit > 9 {
                break;
            }
            if more == 17 {
                return None;
            }
            significand = significand * 10 + u64::from(digit);
            more += 1;
        }
        self.pos += more;
        match self.peek() {
            Some(b'.' | b'e' | b'E') => self.float(start).map(Number::F64),
            _ if !negative => Some(Number::U64(significand)),
            // At most 18 digits: the negation cannot overflow.
            #[allow(clippy::cast_possible_wrap)]
            _ if significand != 0 => Some(Number::I64(-(significand as i64))),
            // serde_json reads `-0` as the float -0.0.
            _ => Some(Number::F64(-0.0)),
        }
    }

    /// [`Scan::read_float`], out of line: it calls the standard library's float
    /// parser, and inlined it only crowds the registers of the loop that reads every
    /// field. The scan is passed by value so that the caller's stays in registers.
    #[inline]
    fn float(&mut self, start: usize) -> Option<f64> {
        #[inline(never)]
        fn float_at(bytes: &[u8], pos: usize, start: usize) -> Option<(f64, usize)> {
            let mut scan = Scan { bytes, pos };
            let value = scan.read_float(start)?;
            Some((value, scan.pos))
        }
        let (value, pos) = float_at(self.bytes, self.pos, start)?;
        self.pos = pos;
        Some(value)
    }

    /// The fraction and exponent of a number that began at `start`, read with
    /// serde_json's grammar and converted with correct rounding, as serde_json's
    /// `float_roundtrip` does; an infinite result (serde_json: out of range) falls back.
    fn read_float(&mut self, start: usize) -> Option<f64> {
        self.fraction_and_exponent()?;
        let text = std::str::from_utf8(&self.bytes[start..self.pos]).ok()?;
        let value: f64 = text.parse().ok()?;
        value.is_finite().then_some(value)
    }

    /// A number's optional fraction and exponent, in serde_json's grammar.
    fn fraction_and_exponent(&mut self) -> Option<()> {
        if self.eat(b'.') {
            self.digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.digits()?;
        }
        Some(())
    }

    /// At least one digit.
    fn digits(&mut self) -> Option<()> {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        (self.pos > start).then_some(())
    }

    /// Reads a column's value into `slot`, converted as `ValueSeed`'s visitor methods
    /// convert what serde_json hands them (see [`number_value`] and [`string_value`]),
    /// and says whether it is null; `None` for a value they refuse, and for JSON
    /// columns, which the serde_json path reads.
    ///
    /// `slot` must hold a null (as `empty_row` makes it): it is overwritten without
    /// being dropped. Each branch writes its own value into it, rather than one
    /// `Option<Value>` being moved there, which costs a copy through the stack.
    #[inline]
    fn value(&mut self, column: &Column, lenient_numbers: bool, slot: &mut Value) -> Option<bool> {
        /// Moves `value` into the slot of a null, which has nothing to drop.
        #[inline(always)]
        fn put(slot: &mut Value, value: Value) {
            std::mem::forget(std::mem::replace(slot, value));
        }
        let data_type = column.data_type();
        if data_type == DataType::Json {
            return None;
        }
        match self.peek()? {
            b'-' | b'0'..=b'9' => put(slot, number_value(data_type, self.number()?)?),
            b'"' => {
                self.pos += 1;
                let text = self.text()?;
                put(slot, string_value(column, lenient_numbers, text)?);
            }
            b't' => {
                self.pos += 1;
                self.literal(b"rue")?;
                put(slot, bool_value(data_type, true)?);
            }
            b'f' => {
                self.pos += 1;
                self.literal(b"alse")?;
                put(slot, bool_value(data_type, false)?);
            }
            b'n' => {
                self.pos += 1;
                self.literal(b"ull")?;
                // `visit_unit`: the slot's null stays.
                return Some(true);
            }
            _ => return None,
        }
        Some(false)
    }

    /// [`Scan::skip`], out of line for the same reasons as [`Scan::float`].
    #[inline]
    fn skip_value(&mut self) -> Option<()> {
        #[inline(never)]
        fn skip_at(bytes: &[u8], pos: usize) -> Option<usize> {
            let mut scan = Scan { bytes, pos };
            scan.skip()?;
            Some(scan.pos)
        }
        self.pos = skip_at(self.bytes, self.pos)?;
        Some(())
    }

    /// Skips the value of a field the schema lacks, as serde_json's `ignore_value`
    /// does; `None` for what it would refuse, and for nesting beyond 64 levels.
    fn skip(&mut self) -> Option<()> {
        // One bit per open container: set for an object, clear for an array.
        let mut objects: u64 = 0;
        let mut depth = 0_u32;
        loop {
            // A value.
            match self.next()? {
                b'"' => self.skip_string()?,
                b'-' | b'0'..=b'9' => {
                    self.pos -= 1;
                    self.number_text()?;
                }
                b't' => self.literal(b"rue")?,
                b'f' => self.literal(b"alse")?,
                b'n' => self.literal(b"ull")?,
                open @ (b'[' | b'{') => {
                    if depth == 64 {
                        return None;
                    }
                    let is_object = open == b'{';
                    objects = (objects << 1) | u64::from(is_object);
                    depth += 1;
                    self.whitespace();
                    let close = if is_object { b'}' } else { b']' };
                    if !self.eat(close) {
                        if is_object {
                            self.member_name()?;
                        }
                        self.whitespace();
                        continue;
                    }
                    objects >>= 1;
                    depth -= 1;
                }
                _ => return None,
            }
            // After a value: close containers, or go on to the next element.
            loop {
                if depth == 0 {
                    return Some(());
                }
                self.whitespace();
                let in_object = objects & 1 == 1;
                match self.next()? {
                    b',' => {
                        self.whitespace();
                        if in_object {
                            self.member_name()?;
                        }
                        self.whitespace();
                        break;
                    }
                    b'}' if in_object => {}
                    b']' if !in_object => {}
                    _ => return None,
                }
                objects >>= 1;
                depth -= 1;
            }
        }
    }

    /// `"name"` and the colon after it, inside a skipped object.
    fn member_name(&mut self) -> Option<()> {
        if !self.eat(b'"') {
            return None;
        }
        self.skip_string()?;
        self.whitespace();
        self.eat(b':').then_some(())
    }

    /// The rest of a skipped string: escapes must be valid, the bytes need not be
    /// UTF-8 (serde_json's `ignore_str`).
    #[inline(always)]
    fn skip_string(&mut self) -> Option<()> {
        loop {
            let (end, _) = string_end(self.bytes.get(self.pos..)?)?;
            self.pos += end;
            match self.next()? {
                b'"' => return Some(()),
                b'\\' => match self.next()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        for _ in 0..4 {
                            if !self.next()?.is_ascii_hexdigit() {
                                return None;
                            }
                        }
                    }
                    _ => return None,
                },
                0..=0x1f => return None,
                _ => {}
            }
        }
    }

    /// A skipped number, as serde_json's `ignore_integer` reads it (any length).
    fn number_text(&mut self) -> Option<()> {
        self.eat(b'-');
        match self.next()? {
            b'0' => {
                if let Some(b'0'..=b'9') = self.peek() {
                    return None;
                }
            }
            b'1'..=b'9' => {
                while let Some(b'0'..=b'9') = self.peek() {
                    self.pos += 1;
                }
            }
            _ => return None,
        }
        self.fraction_and_exponent()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::parse::{Format, ParseError, ParseOptions, Parser, Payload};

    /// Pieces of JSON that the fast path reads, that it leaves to serde_json, and that
    /// serde_json refuses: edge cases of every rule the fast path copies.
    const VALUES: &[&str] = &[
        "0",
        "1",
        "-1",
        "-0",
        "00",
        "01",
        "-",
        "--1",
        "+1",
        "123456789012345678",
        "999999999999999999",
        "1234567890123456789",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775808",
        "-9223372036854775809",
        "1.5",
        "-0.0",
        "0.1",
        "1.",
        ".5",
        "1e5",
        "1E+5",
        "1e-5",
        "1e",
        "1e+",
        "2.5e-3",
        "1e400",
        "-1e400",
        "1e-400",
        "-1e-400",
        "0e99999999999999999999",
        "1.7976931348623157e308",
        "4.9e-324",
        "123456789012345678901234567890.5",
        "0.30000000000000004",
        "true",
        "false",
        "null",
        "tru",
        "nul",
        "falsey",
        "nulll",
        "\"\"",
        "\"a\"",
        "\"AAPL\"",
        "\"manul\"",
        "\"caf\u{e9}\"",
        "\"\\u00e9\"",
        "\"a\\nb\"",
        "\"\\q\"",
        "\"\\ud800\"",
        "\"a\tb\"",
        "\"\u{1}\"",
        "\"2024-01-01T00:00:00Z\"",
        "\"2024-13-01T00:00:00Z\"",
        "\"12\"",
        "\"-0.5\"",
        "\" 1\"",
        "\"1e3\"",
        "\"x\"",
        "1700000000000",
        "[]",
        "[1, 2]",
        "[104, 105]",
        "[256]",
        "[1,]",
        "[",
        "{}",
        "{\"a\": [1, {\"b\": null}]}",
        "{\"a\" 1}",
        "{\"a\": 1,}",
        "{,}",
        "[[[[[]]]]]",
        "\"unterminated",
        "\"\\u12\"",
        "\"\\u12g4\"",
    ];

    const NAMES: &[&str] = &[
        "key",
        "name",
        "score",
        "note",
        "at",
        "extra",
        "ok",
        "blob",
        "i",
        "f",
        "unknown",
        "k",
        "nam",
        "names",
        "ke\\u0079",
        "caf\u{e9}",
        "",
        "keys",
        "key\\\"",
        "value",
    ];

    const SPACES: &[&str] = &["", "", "", " ", "\n", "\t", "\r", "  ", "\u{a0}", "\u{c}"];

    prop_compose! {
        fn member()(name in prop::sample::select(NAMES), value in prop::sample::select(VALUES),
                    a in prop::sample::select(SPACES), b in prop::sample::select(SPACES),
                    c in prop::sample::select(SPACES)) -> String {
            format!("{a}\"{name}\"{b}:{c}{value}")
        }
    }

    prop_compose! {
        /// An object of random members, sometimes damaged: a byte removed, replaced or
        /// inserted, or text after it.
        fn message()(members in prop::collection::vec(member(), 0..6),
                     separators in prop::collection::vec(prop::sample::select(&[",", ",", ",", ", ", ",,", ""][..]), 6),
                     damage in 0_usize..8, at in any::<prop::sample::Index>(),
                     byte in prop::sample::select(&[b'{', b'}', b'[', b']', b',', b':', b'"', b'\\', b' ', b'0', b'x', 0xff][..]),
                     tail in prop::sample::select(&["", "", " ", "\n", "x", "{}", ","][..])) -> Vec<u8> {
            let mut text = String::from("{");
            for (i, member) in members.iter().enumerate() {
                if i > 0 {
                    text.push_str(separators[i]);
                }
                text.push_str(member);
            }
            text.push('}');
            text.push_str(tail);
            let mut bytes = text.into_bytes();
            let at = at.index(bytes.len() + 1);
            match damage {
                0 if at < bytes.len() => { bytes.remove(at); }
                1 if at < bytes.len() => bytes[at] = byte,
                2 => bytes.insert(at, byte),
                _ => {}
            }
            bytes
        }
    }

    fn parsers() -> Vec<Parser> {
        let numbers = Schema::new([
            Column::new("i", DataType::Int).nullable(),
            Column::new("f", DataType::Float).nullable(),
            Column::new("key", DataType::Int).default(-1),
        ])
        .unwrap();
        let mut parsers = Vec::new();
        for schema in [crate::parse::tests::schema(), numbers] {
            for lenient_numbers in [false, true] {
                let options = ParseOptions {
                    format: Format::Json,
                    lenient_numbers,
                };
                parsers.push(Parser::new(schema.clone(), options));
            }
        }
        parsers
    }

    /// Whatever the fast path reads, serde_json reads the same way.
    fn agrees(parser: &Parser, bytes: &[u8]) -> Result<bool, TestCaseError> {
        let fast = parse(&parser.schema, &parser.fields, parser.lenient_numbers, bytes);
        let serde = parser.parse_json_slice_with_serde(bytes);
        let text = String::from_utf8_lossy(bytes);
        if let Some(fast) = &fast {
            match &serde {
                Ok(values) => prop_assert_eq!(fast, values, "{}", text),
                Err(error) => prop_assert!(
                    false,
                    "fast path read {} as {:?}; serde_json: {}",
                    text,
                    fast,
                    error
                ),
            }
        }
        // The whole reader is the serde_json path's outcome.
        let whole = parser.parse(&Payload::Bytes(Bytes::copy_from_slice(bytes)));
        prop_assert_eq!(&whole, &serde, "{}", text);
        Ok(fast.is_some())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn the_fast_path_agrees_with_serde_json(bytes in message()) {
            for parser in parsers() {
                agrees(&parser, &bytes)?;
            }
        }

        /// One reader, many messages: what it remembers of the order of the fields of
        /// one message never changes how it reads the next.
        #[test]
        fn a_sequence_of_messages_is_read_as_each_alone(messages in prop::collection::vec(message(), 1..12)) {
            let shared = parsers();
            for bytes in &messages {
                for parser in &shared {
                    agrees(parser, bytes)?;
                }
            }
        }

        #[test]
        fn floats_are_read_as_serde_json_reads_them(bits in any::<u64>(), digits in 1_usize..25) {
            let x = f64::from_bits(bits);
            prop_assume!(x.is_finite());
            let parser = &parsers()[2];
            // Written plainly, a large float has more than 18 integer digits, which
            // the fast path leaves to serde_json.
            agrees(parser, format!(r#"{{"f": {x}}}"#).as_bytes())?;
            for text in [format!("{x:e}"), format!("{x:.digits$e}"), format!("{x:E}")] {
                let message = format!(r#"{{"f": {text}}}"#);
                prop_assert!(agrees(parser, message.as_bytes())?, "not read by the fast path: {}", message);
            }
        }

        #[test]
        fn integers_are_read_as_serde_json_reads_them(n in any::<i64>(), shift in 0_u32..64) {
            let parser = &parsers()[2];
            for n in [n, n >> shift] {
                let message = format!(r#"{{"i": {n}, "f": {n}}}"#);
                let fast = agrees(parser, message.as_bytes())?;
                prop_assert_eq!(fast, n.unsigned_abs() < 1_000_000_000_000_000_000, "{}", message);
            }
        }
    }

    proptest! {
        #[test]
        fn string_ends_are_found_as_byte_by_byte(bytes in prop::collection::vec(
            prop::sample::select(&[b'a', b'b', b'c', b'd', b'e', b'f', b'g', b'h', b'i', b'j', b'k', b'l', b'm', b'n', b'o', b'p', b'"', b'\\', 0x00, 0x1f, 0x20, 0x21, 0x7f, 0x80, 0xc3, 0xff, b'!', b'#', b'[', b']'][..]), 0..80)) {
            let naive = bytes
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .map(|end| (end, bytes[..end].is_ascii()));
            prop_assert_eq!(string_end(&bytes), naive);
        }
    }

    proptest! {
        /// Every name is found as the schema's own lookup finds it: names that share
        /// their first eight bytes, prefixes of each other, names in one bucket, the
        /// empty name, and names at the very end of the text.
        #[test]
        fn field_names_are_found_as_the_schema_finds_them(
            names in prop::collection::btree_set("[ab]{0,10}", 1..=SCAN_LIMIT),
            queries in prop::collection::vec("[ab]{0,11}", 1..20),
        ) {
            let schema = Schema::new(
                names.iter().map(|name| Column::new(name.as_str(), DataType::Int).nullable()),
            )
            .unwrap();
            let index = FieldIndex::new(&schema);
            for query in queries.iter().chain(&names) {
                let expected = schema.index_of(query);
                // Followed by the rest of a member, and alone at the end of the text.
                for text in [format!("{query}\": 1, \"more\": 2}}"), query.clone()] {
                    let found = index.find(schema.columns(), &schema, text.as_bytes(), query.len());
                    prop_assert_eq!(found, expected, "{:?} in {:?}", query, names);
                    // The guess of a column matches exactly that column's name, and
                    // only when the closing quote follows.
                    for i in 0..=names.len() {
                        let guessed = index.is_next(schema.columns(), i, text.as_bytes());
                        let closed = text.len() > query.len();
                        let right = closed && expected == Some(i);
                        prop_assert_eq!(guessed, right.then_some(query.len() + 1), "{:?} as column {}", query, i);
                    }
                }
            }
        }
    }

    /// Fields in another order than the columns', with fields the schema lacks
    /// between them: after the first message, every column is found at the position
    /// it had in the message before; a change of order is learned again.
    #[test]
    fn the_order_of_the_last_message_is_guessed_first() {
        let parser = &parsers()[0];
        let first = br#"{"unknown": 0, "score": 2.5, "name": "a", "key": 1, "more": [1]}"#;
        let other = br#"{"key": 2, "name": "b", "unknown": {"a": 1}, "score": 1}"#;
        for message in [&first[..], first, other, other, first, other] {
            assert!(
                agrees(parser, message).unwrap(),
                "{}",
                String::from_utf8_lossy(message)
            );
        }
        let index = &parser.fields;
        let remembered: Vec<Option<usize>> = (0..5).map(|p| index.guess(p)).collect();
        let (key, name, score) = (
            parser.schema.index_of("key"),
            parser.schema.index_of("name"),
            parser.schema.index_of("score"),
        );
        assert_eq!(remembered, [key, name, None, score, None]);
        // A clone starts from what its original learned.
        let clone = index.clone();
        assert_eq!((0..5).map(|p| clone.guess(p)).collect::<Vec<_>>(), remembered);
    }

    /// Schemas with many columns, whose names go through the schema's map, and names
    /// that fill one bucket.
    #[test]
    fn field_names_of_wide_schemas_and_crowded_buckets_are_found() {
        let wide = Schema::new((0..40).map(|i| Column::new(format!("field_{i}"), DataType::Int))).unwrap();
        let index = FieldIndex::new(&wide);
        for i in 0..40 {
            let name = format!("field_{i}");
            let text = format!("{name}\": 1}}");
            assert_eq!(
                index.find(wide.columns(), &wide, text.as_bytes(), name.len()),
                Some(i)
            );
        }
        assert_eq!(index.find(wide.columns(), &wide, b"field_40\"", 8), None);
        // Sixteen names of one length: some buckets hold two or more.
        let names: Vec<String> = (0..16).map(|i| format!("n{i:02}")).collect();
        let narrow = Schema::new(names.iter().map(|name| Column::new(name.as_str(), DataType::Int))).unwrap();
        let index = FieldIndex::new(&narrow);
        assert!(
            index.buckets.contains(&SHARED) || index.buckets.iter().filter(|&&b| b != EMPTY).count() == 16
        );
        for (i, name) in names.iter().enumerate() {
            assert_eq!(
                index.find(narrow.columns(), &narrow, name.as_bytes(), name.len()),
                Some(i)
            );
        }
        assert_eq!(index.find(narrow.columns(), &narrow, b"n16", 3), None);
    }

    /// A column name that JSON text can only spell with escapes is never matched by
    /// its raw bytes.
    #[test]
    fn names_with_quotes_and_backslashes_are_left_to_serde_json() {
        let schema = Schema::new([
            Column::new("a\"b", DataType::Int).nullable(),
            Column::new("c\\d", DataType::Int).nullable(),
            Column::new("a", DataType::Int).nullable(),
        ])
        .unwrap();
        let parser = Parser::new(schema, Format::Json);
        for message in [
            r#"{"a\"b": 1, "c\\d": 2, "a": 3}"#,
            r#"{"a": 3, "a\"b": 1}"#,
            r#"{"a\"b": 1}"#,
            r#"{"ab": 1, "a": 2}"#,
            r#"{"a": 1, "c\\d": 2}"#,
        ] {
            agrees(&parser, message.as_bytes()).unwrap();
        }
        let values = parser
            .parse_json_slice(br#"{"a\"b": 1, "c\\d": 2, "a": 3}"#)
            .unwrap();
        assert_eq!(&values[..], &[Value::Int(1), Value::Int(2), Value::Int(3)]);
    }

    /// The fast path's conversions are `ValueSeed`'s: for every column type but JSON
    /// and every kind of scalar, at the edges of each conversion, the same value or a
    /// refusal.
    #[test]
    fn conversions_are_the_visitor_s() {
        let types = [
            DataType::Bool,
            DataType::Int,
            DataType::Float,
            DataType::String,
            DataType::Bytes,
            DataType::Timestamp,
        ];
        #[allow(clippy::cast_sign_loss)]
        let unsigned = [
            0,
            1,
            999_999_999_999_999_999,
            9_223_372_036_854,
            9_223_372_036_855,
            i64::MAX as u64,
            i64::MAX as u64 + 1,
            u64::MAX,
        ];
        let signed = [
            -1,
            -999_999_999_999_999_999,
            -9_223_372_036_854,
            -9_223_372_036_855,
            i64::MIN,
        ];
        let floats = [
            -0.0,
            0.0,
            4.0,
            1.5,
            -2.5e-3,
            1e300,
            9.3e18,
            -9.3e18,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ];
        let texts = [
            "",
            "x",
            "12",
            "-0.5",
            "1e400",
            " 1",
            "99999999999999999999",
            "2024-01-01T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "caf\u{e9}",
        ];
        for data_type in types {
            let column = Column::new("c", data_type).nullable();
            for lenient_numbers in [false, true] {
                let failure = Cell::new(None);
                let seed = || ValueSeed {
                    column: &column,
                    failure: &failure,
                    lenient_numbers,
                };
                for n in unsigned {
                    let expected = seed().visit_u64::<serde_json::Error>(n).ok();
                    assert_eq!(
                        number_value(data_type, Number::U64(n)),
                        expected,
                        "{data_type} {n}"
                    );
                }
                for n in signed {
                    let expected = seed().visit_i64::<serde_json::Error>(n).ok();
                    assert_eq!(
                        number_value(data_type, Number::I64(n)),
                        expected,
                        "{data_type} {n}"
                    );
                }
                for x in floats {
                    let expected = seed().visit_f64::<serde_json::Error>(x).ok();
                    assert_eq!(
                        number_value(data_type, Number::F64(x)),
                        expected,
                        "{data_type} {x}"
                    );
                }
                for text in texts {
                    let expected = seed().visit_str::<serde_json::Error>(text).ok();
                    let value = string_value(&column, lenient_numbers, text);
                    assert_eq!(value, expected, "{data_type} {text:?} lenient {lenient_numbers}");
                }
                for v in [true, false] {
                    let expected = seed().visit_bool::<serde_json::Error>(v).ok();
                    assert_eq!(bool_value(data_type, v), expected, "{data_type} {v}");
                }
            }
        }
    }

    /// A message that sets every column, some of them to null: a null takes its
    /// column's default, stays null where the column is nullable, and refuses the row
    /// where it is neither, as on the serde_json path.
    #[test]
    fn nulls_in_a_message_that_sets_every_column_are_completed() {
        let schema = Schema::new([
            Column::new("key", DataType::Int).primary_key(),
            Column::new("name", DataType::String),
            Column::new("n", DataType::Int).nullable(),
            Column::new("d", DataType::Float).default(0.5),
        ])
        .unwrap();
        let parser = Parser::new(schema, Format::Json);
        for (message, row) in [
            (
                r#"{"key": 1, "name": "a", "n": 2, "d": null}"#,
                [Value::Int(1), Value::from("a"), Value::Int(2), Value::Float(0.5)],
            ),
            (
                r#"{"key": 1, "name": "a", "n": null, "d": 1.5}"#,
                [Value::Int(1), Value::from("a"), Value::Null, Value::Float(1.5)],
            ),
        ] {
            assert!(agrees(&parser, message.as_bytes()).unwrap(), "{message}");
            assert_eq!(
                &parser.parse_json_slice(message.as_bytes()).unwrap()[..],
                &row,
                "{message}"
            );
        }
        let refused = br#"{"key": 1, "name": null, "n": 2, "d": 1.5}"#;
        assert!(!agrees(&parser, refused).unwrap());
        assert!(matches!(
            parser.parse_json_slice(refused),
            Err(ParseError::NullNotAllowed { column }) if column == "name"
        ));
    }

    /// Whitespace of every kind and length between the tokens of a message: the fast
    /// path reads it all (it looks for no space and one space first, then skips any).
    #[test]
    fn whitespace_between_tokens_takes_the_fast_path() {
        let parser = &parsers()[2];
        for space in ["", " ", "  ", "\n", "\t", "\r\n", " \n\t ", "\n  "] {
            let message = [
                "", "{", "\"i\"", ":", "1", ",", "\"f\"", ":", "2.5", ",", "\"key\"", ":", "-3", "}", "",
            ]
            .join(space);
            assert!(agrees(parser, message.as_bytes()).unwrap(), "{message:?}");
            let values = parser.parse_json_slice(message.as_bytes()).unwrap();
            assert_eq!(
                &values[..],
                &[Value::Int(1), Value::Float(2.5), Value::Int(-3)],
                "{message:?}"
            );
        }
    }

    /// An empty object is read by the fast path (its end is looked for only where the
    /// first member's name would start); a comma before the end is refused.
    #[test]
    fn empty_objects_are_read_and_trailing_commas_refused() {
        let parser = &parsers()[2];
        for message in ["{}", "{ }", " {\n\t} ", "{  }"] {
            assert!(agrees(parser, message.as_bytes()).unwrap(), "{message:?}");
            let values = parser.parse_json_slice(message.as_bytes()).unwrap();
            assert_eq!(
                &values[..],
                &[Value::Null, Value::Null, Value::Int(-1)],
                "{message:?}"
            );
        }
        for message in [r#"{"i": 1,}"#, r#"{"i": 1, }"#, "{,}", "{}}", r#"{"i": 1}}"#] {
            assert!(!agrees(parser, message.as_bytes()).unwrap(), "{message:?}");
            assert!(
                parser.parse_json_slice(message.as_bytes()).is_err(),
                "{message:?}"
            );
        }
    }

    #[test]
    fn common_messages_take_the_fast_path() {
        let parser = &parsers()[0];
        for message in [
            r#"{"key": 1, "name": "manul"}"#,
            r#" {"name":"a","key":-7,"score":2.5e3,"note":null,"ok":false,"unknown":{"a":[1,"\u00e9",{}]}} "#,
            r#"{"key": 1, "name": "café", "at": "2024-01-01T00:00:00Z", "blob": "hi"}"#,
            "{\"key\": 1, \"name\": \"caf\u{e9}\", \"at\": 1700000000000}\n",
        ] {
            assert!(agrees(parser, message.as_bytes()).unwrap(), "{message}");
        }
        // Left to serde_json: an escape in a column's string, a JSON column, a
        // duplicate field, a refusal.
        for message in [
            r#"{"key": 1, "name": "a\nb"}"#,
            r#"{"key": 1, "name": "caf\u00e9"}"#,
            r#"{"key": 1, "name": "a", "extra": 1}"#,
            r#"{"key": 1, "key": 2, "name": "a"}"#,
            r#"{"key": 1.5, "name": "a"}"#,
            r#"{"key": 1}"#,
        ] {
            assert!(!agrees(parser, message.as_bytes()).unwrap(), "{message}");
        }
    }
}
