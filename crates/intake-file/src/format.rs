//! Line formats, and turning lines into messages: JSON lines, CSV/TSV typed by the
//! reader's schema, raw lines.

use bytes::{Bytes, BytesMut};
use csv_core::{ReadRecordResult, Terminator};
use intake_core::{DataType, Message, Schema};
use serde_json::{Map, Number, Value as Json};

/// The UTF-8 byte order mark, stripped from the start of a file.
pub(crate) const BOM: &[u8] = b"\xEF\xBB\xBF";

/// How much of an input too long to keep is shown in its report, in bytes.
pub(crate) const SHOWN: usize = 200;

/// How the lines of a file (or fragment) become messages.
///
/// | format | reader | each line becomes |
/// |---|---|---|
/// | [`JsonLines`](Self::JsonLines) | `Reader::json(schema)` | the line's bytes, parsed by the reader |
/// | [`Csv`](Self::Csv), [`Tsv`](Self::Tsv), [`Delimited`](Self::Delimited) | `Reader::json(schema)` | a JSON object keyed by the header, each field typed by the schema |
/// | [`Raw`](Self::Raw) | `Reader::raw()` | the line's bytes, as the `data` column |
///
/// A line ends at `\n`; a `\r` just before it (or at the very end of the input) is
/// removed, and a `\r` anywhere else is an ordinary byte. In every format, blank lines
/// (nothing but ASCII whitespace) are skipped and a UTF-8 byte order mark at the start
/// of the file (only there) is stripped.
///
/// The delimited formats read records as the `csv` crate does (RFC 4180, with the
/// record terminator `\n`): a quoted field may span lines, and a quote inside an
/// unquoted field is an ordinary character (`2,12" pizza,4` has three fields). A record
/// whose quoted field is still open at the end of the input, or that grows beyond
/// `max_line_length`, is reported as bad input from the line it starts on, and reading
/// goes on with the next line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FileFormat {
    /// One JSON object per line.
    #[default]
    JsonLines,
    /// Comma-separated values with a header line naming the columns.
    Csv,
    /// Tab-separated values with a header line naming the columns.
    Tsv,
    /// Values separated by the given byte, with a header line naming the columns. The
    /// byte cannot be `\n`, `\r` or `"`.
    Delimited(u8),
    /// Each line is one message, as is (read it with `Reader::raw()`).
    Raw,
}

impl FileFormat {
    fn delimiter(self) -> Option<u8> {
        match self {
            FileFormat::Csv => Some(b','),
            FileFormat::Tsv => Some(b'\t'),
            FileFormat::Delimited(delimiter) => Some(delimiter),
            FileFormat::JsonLines | FileFormat::Raw => None,
        }
    }

    /// Whether the first line is a header (the delimited formats).
    pub fn has_header(self) -> bool {
        self.delimiter().is_some()
    }

    /// Why the format cannot be read, if it cannot: a delimiter that is also a line end
    /// or the quote.
    pub(crate) fn check(self) -> Result<(), String> {
        match self.delimiter() {
            Some(delimiter @ (b'\n' | b'\r' | b'"')) => Err(format!(
                "{:?} cannot be the delimiter of FileFormat::Delimited: it is a line end or the quote",
                char::from(delimiter)
            )),
            _ => Ok(()),
        }
    }
}

/// A message decoded from a line (or a record spanning lines), with where it starts.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) message: Message,
    /// The line its record starts on, counting from 1.
    pub(crate) line: u64,
    /// The record as it was in the input, when the message has another shape (a CSV
    /// record sent as a JSON object): what a rejection reports instead of the object
    /// written out again. `None` where the message is the input itself.
    pub(crate) arrived: Option<Bytes>,
}

impl Decoded {
    fn new(message: Message, line: u64) -> Self {
        Decoded {
            message,
            line,
            arrived: None,
        }
    }
}

/// Where a header field goes: the schema column it fills, or nowhere.
#[derive(Debug, Clone)]
struct HeaderField {
    name: String,
    column: Option<(DataType, bool)>,
}

/// Turns the lines of one file (or fragment) into messages. Stateful for the delimited
/// formats: the first record is the header, and a record may span lines.
///
/// Bad input becomes [`Message::Invalid`], which goes through the reader's error policy
/// like a message the reader refused.
#[derive(Debug)]
pub(crate) struct LineDecoder {
    schema: Schema,
    /// The longest record kept, in bytes, while it spans lines.
    max_record_length: usize,
    at_start: bool,
    /// Lines are copied into shared blocks and sent as slices of them: one allocation
    /// per block of lines rather than one per line.
    block: BytesMut,
    /// The record framing of the delimited formats; `None` where a line is a message.
    delimited: Option<Box<Delimited>>,
}

/// The size of the blocks lines are copied into.
const BLOCK: usize = 64 * 1024;

impl LineDecoder {
    /// A decoder for `format`, typing delimited fields by `schema`, that reports a
    /// record spanning lines once it is longer than `max_record_length` bytes.
    ///
    /// # Errors
    ///
    /// When the format cannot be read (see [`FileFormat::check`]).
    pub(crate) fn new(format: FileFormat, schema: Schema, max_record_length: usize) -> Result<Self, String> {
        format.check()?;
        Ok(LineDecoder {
            schema,
            max_record_length,
            at_start: true,
            block: BytesMut::new(),
            delimited: format
                .delimiter()
                .map(|delimiter| Box::new(Delimited::new(delimiter))),
        })
    }

    /// Forgets everything: the next line is the first of a (new) file.
    pub(crate) fn reset(&mut self) {
        self.at_start = true;
        if let Some(delimited) = &mut self.delimited {
            delimited.header = None;
            delimited.restart();
        }
    }

    /// The next line is not the first of the file (reading resumes in the middle), so
    /// a byte order mark there is data.
    pub(crate) fn resumed(&mut self) {
        self.at_start = false;
    }

    /// Whether the decoder holds no partial record, so the position after the last
    /// line is a clean place to resume from.
    pub(crate) fn is_idle(&self) -> bool {
        self.delimited.as_ref().is_none_or(|d| !d.in_record)
    }

    /// Whether the header has been read (always true for formats without one).
    pub(crate) fn has_header(&self) -> bool {
        self.delimited.as_ref().is_none_or(|d| d.header.is_some())
    }

    /// Bytes held for a record spanning lines (bounded by `max_record_length`).
    #[cfg(any(test, fuzzing))]
    pub(crate) fn held(&self) -> usize {
        self.delimited
            .as_ref()
            .map_or(0, |d| d.raw.len() + d.field_length)
    }

    /// Decodes one line (with or without its `\n`; one without is the last of the
    /// input); `None` when it makes no message (blank, the header, or a record
    /// continuing on the next line).
    pub(crate) fn decode(&mut self, line: &[u8], line_number: u64) -> Option<Decoded> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let mut content = line.strip_suffix(b"\r").unwrap_or(line);
        if std::mem::take(&mut self.at_start) {
            content = content.strip_prefix(BOM).unwrap_or(content);
        }
        let Some(delimited) = &mut self.delimited else {
            if content.iter().all(u8::is_ascii_whitespace) {
                return None;
            }
            let bytes = copy_into(&mut self.block, content);
            return Some(Decoded::new(Message::Bytes(bytes), line_number));
        };
        delimited.decode(
            content,
            line_number,
            &self.schema,
            self.max_record_length,
            &mut self.block,
        )
    }

    /// The report for a line longer than the limit (`start` is its first bytes): bad
    /// input, in every format. A record it continues is reported instead, as too long.
    pub(crate) fn too_long(&mut self, start: &[u8], length: u64, line_number: u64) -> Option<Decoded> {
        self.at_start = false;
        if let Some(delimited) = &mut self.delimited
            && delimited.in_record
        {
            let length = delimited.length.saturating_add(length);
            return Some(delimited.abandon(length));
        }
        let reason = format!("the line is {length} bytes long, beyond max_line_length");
        Some(invalid(line_number, shown(start), &reason))
    }

    /// At the end of the input: the report for a record still open, if any (its
    /// quoted field was never closed).
    pub(crate) fn finish(&mut self) -> Option<Decoded> {
        let delimited = self.delimited.as_mut().filter(|d| d.in_record)?;
        let raw = Bytes::copy_from_slice(delimited.raw.strip_suffix(b"\n").unwrap_or(&delimited.raw));
        let reason = "the record is not complete at the end of the input: a quoted field is not closed";
        let message = invalid(delimited.start_line, raw, reason);
        delimited.restart();
        Some(message)
    }

    /// Decodes a whole input already in memory (a fragment), then
    /// [finishes](Self::finish) it.
    pub(crate) fn decode_all(&mut self, bytes: &[u8], mut on_message: impl FnMut(Decoded)) {
        let mut line_number = 0;
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            line_number += 1;
            let content = line.strip_suffix(b"\n").unwrap_or(line);
            let message = if content.len() > self.max_record_length {
                self.too_long(line, line.len() as u64, line_number)
            } else {
                self.decode(line, line_number)
            };
            if let Some(message) = message {
                on_message(message);
            }
        }
        if let Some(message) = self.finish() {
            on_message(message);
        }
    }
}

/// The record framing of a delimited format: `csv-core`'s incremental reader, fed a
/// line at a time, with the record terminator `\n`.
#[derive(Debug)]
struct Delimited {
    reader: csv_core::Reader,
    delimiter: u8,
    header: Option<Vec<HeaderField>>,
    /// Whether a record spans lines and is not complete yet.
    in_record: bool,
    /// The line the current record starts on.
    start_line: u64,
    /// The lines of a record spanning lines so far, each with a `\n`, for its report.
    raw: Vec<u8>,
    /// The length of those lines, in bytes as read.
    length: u64,
    /// The fields read so far, unescaped, end to end; `ends` says where each ends.
    fields: Vec<u8>,
    field_length: usize,
    ends: Vec<usize>,
    end_count: usize,
}

/// Above this, a buffer grown for a long record is given back once the record is done.
const KEPT_CAPACITY: usize = 64 * 1024;

impl Delimited {
    fn new(delimiter: u8) -> Self {
        let reader = csv_core::ReaderBuilder::new()
            .delimiter(delimiter)
            .terminator(Terminator::Any(b'\n'))
            .build();
        let mut delimited = Delimited {
            reader,
            delimiter,
            header: None,
            in_record: false,
            start_line: 0,
            raw: Vec::new(),
            length: 0,
            fields: vec![0; 256],
            field_length: 0,
            ends: vec![0; 16],
            end_count: 0,
        };
        delimited.restart();
        delimited
    }

    /// Drops the record being read, if any: the next line starts a record.
    fn restart(&mut self) {
        self.reader.reset();
        // `csv-core` strips a byte order mark from the first input it is given; the
        // decoder strips it itself, and only at the start of the file. A blank line
        // leaves the reader's state as it is and counts as that first input.
        let _ = self.reader.read_record(b"\n", &mut self.fields, &mut self.ends);
        self.in_record = false;
        self.length = 0;
        self.raw.clear();
        self.field_length = 0;
        self.end_count = 0;
        if self.raw.capacity() > KEPT_CAPACITY {
            self.raw = Vec::new();
        }
        if self.fields.len() > KEPT_CAPACITY {
            self.fields = vec![0; 256];
        }
    }

    fn decode(
        &mut self,
        content: &[u8],
        line_number: u64,
        schema: &Schema,
        max_record_length: usize,
        block: &mut BytesMut,
    ) -> Option<Decoded> {
        if !self.in_record {
            if content
                .iter()
                .all(|&b| b.is_ascii_whitespace() && b != self.delimiter)
            {
                return None;
            }
            self.start_line = line_number;
        } else {
            let length = self.length.saturating_add(content.len() as u64);
            if length > max_record_length as u64 {
                return Some(self.abandon(length));
            }
        }
        if !self.feed(content) {
            self.raw.extend_from_slice(content);
            self.raw.push(b'\n');
            self.length += content.len() as u64 + 1;
            self.in_record = true;
            return None;
        }
        let message = if self.in_record {
            let mut raw = std::mem::take(&mut self.raw);
            raw.extend_from_slice(content);
            let message = self.record(&raw, schema, block);
            raw.clear();
            self.raw = raw;
            message
        } else {
            self.record(content, schema, block)
        };
        self.in_record = false;
        self.length = 0;
        self.field_length = 0;
        self.end_count = 0;
        if self.raw.capacity() > KEPT_CAPACITY {
            self.raw = Vec::new();
        }
        message
    }

    /// Feeds a line (without its end) and its `\n` to the reader: true if that ends a
    /// record.
    fn feed(&mut self, content: &[u8]) -> bool {
        // The only `\n` is the one fed last, so a record can only end there.
        if !content.is_empty() && self.push(content) {
            return true;
        }
        self.push(b"\n")
    }

    /// Feeds `input` (never empty: to `csv-core`, empty input means the end).
    fn push(&mut self, mut input: &[u8]) -> bool {
        while !input.is_empty() {
            if self.field_length == self.fields.len() {
                self.fields.resize(self.fields.len() * 2, 0);
            }
            if self.end_count == self.ends.len() {
                self.ends.resize(self.ends.len() * 2, 0);
            }
            let (result, read, written, ended) = self.reader.read_record(
                input,
                &mut self.fields[self.field_length..],
                &mut self.ends[self.end_count..],
            );
            input = &input[read..];
            self.field_length += written;
            self.end_count += ended;
            if result == ReadRecordResult::Record {
                return true;
            }
        }
        false
    }

    /// The report for the record being read, now `length` bytes long: beyond the
    /// limit. Reading goes on with the next line.
    fn abandon(&mut self, length: u64) -> Decoded {
        let reason = format!(
            "the record is at least {length} bytes long, beyond max_line_length (is a quoted field not closed?)"
        );
        let message = invalid(self.start_line, shown(&self.raw), &reason);
        self.restart();
        message
    }

    /// A complete record: the header, or a row, with the record as it was written
    /// (copied into `block`, a slice of which it becomes).
    fn record(&mut self, raw: &[u8], schema: &Schema, block: &mut BytesMut) -> Option<Decoded> {
        let line = self.start_line;
        let fields = Fields {
            fields: &self.fields[..self.field_length],
            ends: &self.ends[..self.end_count],
            start: 0,
        };
        let Some(header) = &self.header else {
            let mut header = Vec::with_capacity(self.end_count);
            for field in fields {
                let Ok(name) = std::str::from_utf8(field) else {
                    return Some(invalid(
                        line,
                        Bytes::copy_from_slice(raw),
                        "the header is not valid UTF-8",
                    ));
                };
                let column = schema.index_of(name).map(|i| {
                    let column = &schema.columns()[i];
                    (column.data_type(), column.is_nullable())
                });
                header.push(HeaderField {
                    name: name.to_owned(),
                    column,
                });
            }
            self.header = Some(header);
            return None;
        };
        if self.end_count != header.len() {
            let reason = format!(
                "the record has {} field(s), but the header has {}",
                self.end_count,
                header.len()
            );
            return Some(invalid(line, Bytes::copy_from_slice(raw), &reason));
        }
        let mut object = Map::with_capacity(header.len());
        for (field, slot) in fields.zip(header) {
            let Some((data_type, nullable)) = slot.column else {
                continue;
            };
            let Ok(text) = std::str::from_utf8(field) else {
                let reason = format!("field `{}` is not valid UTF-8", slot.name);
                return Some(invalid(line, Bytes::copy_from_slice(raw), &reason));
            };
            object.insert(slot.name.clone(), typed(text, data_type, nullable));
        }
        Some(Decoded {
            message: Message::Json(Json::Object(object)),
            line,
            arrived: Some(copy_into(block, raw)),
        })
    }
}

/// The fields of a record, as `csv-core` wrote them.
struct Fields<'a> {
    fields: &'a [u8],
    ends: &'a [usize],
    start: usize,
}

impl<'a> Iterator for Fields<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (&end, rest) = self.ends.split_first()?;
        self.ends = rest;
        let field = self.fields.get(self.start..end).unwrap_or_default();
        self.start = end;
        Some(field)
    }
}

/// `bytes` as a slice of the shared `block`: one allocation per block of lines rather
/// than one per line.
#[inline]
fn copy_into(block: &mut BytesMut, bytes: &[u8]) -> Bytes {
    if block.capacity() < bytes.len() {
        *block = BytesMut::with_capacity(BLOCK.max(bytes.len()));
    }
    block.extend_from_slice(bytes);
    block.split().freeze()
}

/// The first bytes of an input too long to keep, marked as cut.
fn shown(start: &[u8]) -> Bytes {
    let start = &start[..start.len().min(SHOWN)];
    let mut raw = Vec::with_capacity(start.len() + 3);
    raw.extend_from_slice(start);
    raw.extend_from_slice(b"...");
    Bytes::from(raw)
}

/// A delimited field as the JSON value its column's type reads. A field that does not
/// convert is passed on as a string, so the reader rejects the row naming the column,
/// its type and what was found (and `SkipAndReport` keeps the neighbours).
pub(crate) fn typed(text: &str, data_type: DataType, nullable: bool) -> Json {
    if text.is_empty() && (nullable || data_type != DataType::String) {
        // Empty is null: the reader then applies the column's default, or rejects the
        // row if the column is neither nullable nor has one.
        return Json::Null;
    }
    let converted = match data_type {
        DataType::Int => text.trim().parse::<i64>().ok().map(Json::from),
        DataType::Float => text
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Json::Number),
        DataType::Bool => match text.trim().to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" => Some(Json::Bool(true)),
            "false" | "f" | "no" | "n" | "0" => Some(Json::Bool(false)),
            _ => None,
        },
        // Milliseconds since the epoch, or RFC 3339 text (which the reader parses).
        DataType::Timestamp => text.trim().parse::<i64>().ok().map(Json::from),
        DataType::Json => serde_json::from_str(text).ok(),
        _ => None,
    };
    converted.unwrap_or_else(|| Json::String(text.to_owned()))
}

/// Input that cannot become a row, reported through the reader's error policy with
/// the line its record starts on.
fn invalid(line_number: u64, raw: Bytes, reason: &str) -> Decoded {
    tracing::debug!(line = line_number, reason, "bad input");
    let message = Message::Invalid {
        raw,
        reason: format!("line {line_number}: {reason}"),
    };
    Decoded::new(message, line_number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use intake_core::Column;

    fn schema() -> Schema {
        Schema::new([
            Column::new("key", DataType::Int).primary_key(),
            Column::new("genus", DataType::String),
            Column::new("weight", DataType::Float).nullable(),
        ])
        .unwrap()
    }

    fn json(decoded: Option<Decoded>) -> Json {
        match decoded.map(|d| d.message) {
            Some(Message::Json(json)) => json,
            other => panic!("expected JSON, got {other:?}"),
        }
    }

    fn invalid(decoded: Option<Decoded>) -> (Bytes, String) {
        match decoded.map(|d| d.message) {
            Some(Message::Invalid { raw, reason }) => (raw, reason),
            other => panic!("expected bad input, got {other:?}"),
        }
    }

    fn csv() -> LineDecoder {
        LineDecoder::new(FileFormat::Csv, schema(), 1_000).unwrap()
    }

    #[test]
    fn csv_fields_are_typed_by_the_schema() {
        let mut decoder = csv();
        assert!(
            decoder
                .decode(b"\xEF\xBB\xBFkey,genus,weight,extra\n", 1)
                .is_none()
        );
        let row = json(decoder.decode(b"1,manul,,x\r\n", 2));
        assert_eq!(
            row,
            serde_json::json!({"key": 1, "genus": "manul", "weight": null})
        );
        assert!(decoder.decode(b"2,\"fe\n", 3).is_none());
        assert!(!decoder.is_idle());
        let decoded = decoder.decode(b"lis, \"\"x\"\"\",4.5,y\n", 4);
        assert_eq!(
            decoded.as_ref().map(|d| d.line),
            Some(3),
            "the line the record starts on"
        );
        assert_eq!(
            decoded.as_ref().and_then(|d| d.arrived.as_deref()),
            Some(&b"2,\"fe\nlis, \"\"x\"\"\",4.5,y"[..]),
            "the record as it was written"
        );
        let row = json(decoded);
        assert_eq!(
            row,
            serde_json::json!({"key": 2, "genus": "fe\nlis, \"x\"", "weight": 4.5})
        );
        let (raw, reason) = invalid(decoder.decode(b"1,2\n", 5));
        assert_eq!(&raw[..], b"1,2");
        assert_eq!(reason, "line 5: the record has 2 field(s), but the header has 4");
    }

    #[test]
    fn a_quote_inside_an_unquoted_field_is_an_ordinary_character() {
        let mut decoder = csv();
        assert!(decoder.decode(b"key,genus,weight\n", 1).is_none());
        let row = json(decoder.decode(b"2,12\" pizza,4\n", 2));
        assert_eq!(
            row,
            serde_json::json!({"key": 2, "genus": "12\" pizza", "weight": 4.0})
        );
        assert!(decoder.is_idle(), "the next line starts a record");
        let row = json(decoder.decode(b"3,manul,5\n", 3));
        assert_eq!(row["key"], 3);
    }

    #[test]
    fn a_lone_carriage_return_is_data_and_only_the_file_start_has_a_bom() {
        let mut decoder = csv();
        assert!(decoder.decode(b"key,genus\r\n", 1).is_none());
        let row = json(decoder.decode(b"1,man\rul\r\n", 2));
        assert_eq!(row, serde_json::json!({"key": 1, "genus": "man\rul"}));
        // The BOM is part of the key, so the reader will reject it.
        let row = json(decoder.decode(b"\xEF\xBB\xBF3,lynx\n", 3));
        assert_eq!(row["key"], "\u{feff}3");
    }

    #[test]
    fn an_open_quote_at_the_end_of_the_input_is_reported_from_its_first_line() {
        let mut decoder = csv();
        assert!(decoder.decode(b"key,genus\n", 1).is_none());
        assert!(decoder.decode(b"1,\"manul\n", 2).is_none());
        assert!(decoder.decode(b"2,felis\n", 3).is_none());
        let (raw, reason) = invalid(decoder.finish());
        assert_eq!(&raw[..], b"1,\"manul\n2,felis");
        assert!(
            reason.starts_with("line 2: the record is not complete at the end of the input"),
            "{reason}"
        );
        assert!(decoder.is_idle());
        assert!(decoder.finish().is_none());
    }

    #[test]
    fn a_record_beyond_the_limit_is_reported_and_the_next_line_starts_a_record() {
        let mut decoder = LineDecoder::new(FileFormat::Csv, schema(), 20).unwrap();
        assert!(decoder.decode(b"key,genus\n", 1).is_none());
        assert!(decoder.decode(b"1,\"0123456789\n", 2).is_none());
        let (raw, reason) = invalid(decoder.decode(b"0123456789\n", 3));
        assert_eq!(&raw[..], b"1,\"0123456789\n...");
        assert!(
            reason.starts_with("line 2: the record is at least 24 bytes long, beyond max_line_length"),
            "{reason}"
        );
        assert!(decoder.is_idle());
        let row = json(decoder.decode(b"2,felis\n", 4));
        assert_eq!(row, serde_json::json!({"key": 2, "genus": "felis"}));
        // A line too long for the framing, inside a record: the record is reported.
        assert!(decoder.decode(b"3,\"a\n", 5).is_none());
        let (_, reason) = invalid(decoder.too_long(b"xxx", 500, 6));
        assert!(
            reason.starts_with("line 5: the record is at least 505 bytes"),
            "{reason}"
        );
        assert!(decoder.is_idle());
    }

    #[test]
    fn delimiters_that_are_line_ends_or_the_quote_are_refused() {
        for delimiter in [b'\n', b'\r', b'"'] {
            let error = LineDecoder::new(FileFormat::Delimited(delimiter), schema(), 10).unwrap_err();
            assert!(error.contains("cannot be the delimiter"), "{error}");
        }
        assert!(LineDecoder::new(FileFormat::Delimited(b';'), schema(), 10).is_ok());
    }

    #[test]
    fn fields_convert_to_every_column_type() {
        use serde_json::json;
        assert_eq!(typed(" 42", DataType::Int, false), json!(42));
        assert_eq!(typed("4.5", DataType::Float, false), json!(4.5));
        assert_eq!(
            typed("NaN", DataType::Float, false),
            json!("NaN"),
            "left for the reader to reject"
        );
        assert_eq!(typed("Yes", DataType::Bool, false), json!(true));
        assert_eq!(typed("0", DataType::Bool, false), json!(false));
        assert_eq!(typed("maybe", DataType::Bool, false), json!("maybe"));
        assert_eq!(
            typed("1700000000000", DataType::Timestamp, false),
            json!(1_700_000_000_000_i64)
        );
        assert_eq!(
            typed("2024-01-01T00:00:00Z", DataType::Timestamp, false),
            json!("2024-01-01T00:00:00Z")
        );
        assert_eq!(typed(r#"{"a": [1]}"#, DataType::Json, false), json!({"a": [1]}));
        assert_eq!(typed("plain", DataType::Json, false), json!("plain"));
        assert_eq!(typed("", DataType::String, false), json!(""));
        assert_eq!(typed("", DataType::String, true), Json::Null);
        assert_eq!(typed("", DataType::Int, false), Json::Null);
    }
}
