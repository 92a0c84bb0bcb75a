//! Line formats, and turning lines into messages: JSON lines, CSV/TSV typed by the
//! reader's schema, raw lines.

use bytes::{Bytes, BytesMut};
use intake_core::{DataType, Message, Schema};
use serde_json::{Map, Number, Value as Json};

/// The UTF-8 byte order mark, stripped from the start of a file.
pub(crate) const BOM: &[u8] = b"\xEF\xBB\xBF";

/// How the lines of a file (or fragment) become messages.
///
/// | format | reader | each line becomes |
/// |---|---|---|
/// | [`JsonLines`](Self::JsonLines) | `Reader::json(schema)` | the line's bytes, parsed by the reader |
/// | [`Csv`](Self::Csv), [`Tsv`](Self::Tsv), [`Delimited`](Self::Delimited) | `Reader::json(schema)` | a JSON object keyed by the header, each field typed by the schema |
/// | [`Raw`](Self::Raw) | `Reader::raw()` | the line's bytes, as the `data` column |
///
/// In every format, empty lines are skipped, a trailing `\r` is removed and a UTF-8 byte
/// order mark at the start of the file is stripped.
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
    /// Values separated by the given byte, with a header line naming the columns.
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
}

/// Where a header field goes: the schema column it fills, or nowhere.
#[derive(Debug, Clone)]
struct HeaderField {
    name: String,
    column: Option<(usize, DataType, bool)>,
}

/// Turns the lines of one file into messages. Stateful for the delimited formats: the
/// first record is the header, and a quoted field may span lines.
#[derive(Debug)]
pub(crate) struct LineDecoder {
    format: FileFormat,
    schema: Schema,
    header: Option<Vec<HeaderField>>,
    /// A delimited record whose quoted field continues on the next line.
    pending: Vec<u8>,
    pending_quotes: usize,
    at_start: bool,
    /// Lines are copied into shared blocks and sent as slices of them: one allocation
    /// per block of lines rather than one per line.
    block: BytesMut,
}

/// The size of the blocks lines are copied into.
const BLOCK: usize = 64 * 1024;

impl LineDecoder {
    pub(crate) fn new(format: FileFormat, schema: Schema) -> Self {
        LineDecoder {
            format,
            schema,
            header: None,
            pending: Vec::new(),
            pending_quotes: 0,
            at_start: true,
            block: BytesMut::new(),
        }
    }

    /// Forgets everything: the next line is the first of a (new) file.
    pub(crate) fn reset(&mut self) {
        self.header = None;
        self.pending.clear();
        self.pending_quotes = 0;
        self.at_start = true;
    }

    /// Whether the decoder holds no partial record, so the position after the last line
    /// is a clean place to resume from.
    pub(crate) fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether the header has been read (always true for formats without one).
    pub(crate) fn has_header(&self) -> bool {
        !self.format.has_header() || self.header.is_some()
    }

    /// Decodes one line (with or without its `\n`); `None` when it makes no message
    /// (empty, the header, or a record continuing on the next line).
    pub(crate) fn decode(&mut self, line: &[u8], line_number: u64) -> Option<Decoded> {
        let mut line = line.strip_suffix(b"\n").unwrap_or(line);
        if self.at_start {
            self.at_start = false;
            line = line.strip_prefix(BOM).unwrap_or(line);
        }
        let Some(delimiter) = self.format.delimiter() else {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                return None;
            }
            if self.block.capacity() < line.len() {
                self.block = BytesMut::with_capacity(BLOCK.max(line.len()));
            }
            self.block.extend_from_slice(line);
            return Some(Decoded::Message(Message::Bytes(self.block.split().freeze())));
        };
        // A quoted field may hold newlines: gather lines while a quote is open.
        let quotes = line.iter().filter(|&&b| b == b'"').count();
        if !self.pending.is_empty() || quotes % 2 == 1 {
            self.pending.extend_from_slice(line);
            self.pending.push(b'\n');
            self.pending_quotes += quotes;
            if self.pending_quotes % 2 == 1 {
                return None;
            }
            self.pending.pop();
            let record = std::mem::take(&mut self.pending);
            self.pending_quotes = 0;
            return self.decode_record(&record, delimiter, line_number);
        }
        self.decode_record(line, delimiter, line_number)
    }

    fn decode_record(&mut self, record: &[u8], delimiter: u8, line_number: u64) -> Option<Decoded> {
        let trimmed = record.strip_suffix(b"\r").unwrap_or(record);
        if trimmed.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(delimiter)
            .buffer_capacity(trimmed.len().max(16))
            .from_reader(trimmed);
        let mut fields = csv::ByteRecord::new();
        let parsed = reader.read_byte_record(&mut fields);
        let raw = String::from_utf8_lossy(trimmed);
        match (&self.header, parsed) {
            (_, Err(e)) => Some(bad_line(line_number, &raw, &format!("not a valid record: {e}"))),
            (_, Ok(false)) => None,
            (None, Ok(true)) => {
                let mut header = Vec::with_capacity(fields.len());
                for field in &fields {
                    let Ok(name) = std::str::from_utf8(field) else {
                        return Some(bad_line(line_number, &raw, "the header is not valid UTF-8"));
                    };
                    let column = self.schema.index_of(name).map(|i| {
                        let column = &self.schema.columns()[i];
                        (i, column.data_type(), column.is_nullable())
                    });
                    header.push(HeaderField {
                        name: name.to_owned(),
                        column,
                    });
                }
                self.header = Some(header);
                None
            }
            (Some(header), Ok(true)) => {
                if fields.len() != header.len() {
                    let reason = format!(
                        "the record has {} field(s), but the header has {}",
                        fields.len(),
                        header.len()
                    );
                    return Some(bad_line(line_number, &raw, &reason));
                }
                let mut object = Map::with_capacity(header.len());
                for (field, slot) in fields.iter().zip(header) {
                    let Some((_, data_type, nullable)) = slot.column else {
                        continue;
                    };
                    let Ok(text) = std::str::from_utf8(field) else {
                        let reason = format!("field `{}` is not valid UTF-8", slot.name);
                        return Some(bad_line(line_number, &raw, &reason));
                    };
                    object.insert(slot.name.clone(), typed(text, data_type, nullable));
                }
                Some(Decoded::Message(Message::Json(Json::Object(object))))
            }
        }
    }
}

impl LineDecoder {
    /// The report for a line longer than the limit (`start` is its first bytes): bad
    /// input, in every format.
    pub(crate) fn too_long(&mut self, start: &[u8], length: u64, line_number: u64) -> Option<Decoded> {
        self.at_start = false;
        self.pending.clear();
        self.pending_quotes = 0;
        let start = String::from_utf8_lossy(start);
        let reason = format!("the line is {length} bytes long, beyond max_line_length");
        Some(bad_line(line_number, &format!("{start}..."), &reason))
    }
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

/// A line that cannot become a row: sent as a JSON string (never a valid row), so the
/// reader's error policy handles it and the report carries the line and the reason.
pub(crate) fn bad_line(line_number: u64, raw: &str, reason: &str) -> Decoded {
    tracing::debug!(line = line_number, reason, "bad line");
    Decoded::Bad {
        raw: Bytes::from(raw.to_owned()),
        reason: format!("line {line_number}: {reason}"),
    }
}

/// What a line decodes to: a message for the reader, or input the decoder itself found
/// bad, which goes through the reader's error policy via `SourceContext::reject`.
#[derive(Debug)]
pub(crate) enum Decoded {
    Message(Message),
    Bad { raw: Bytes, reason: String },
}

impl Decoded {
    /// Sends the message, or reports the bad input.
    pub(crate) async fn send(self, ctx: &intake_core::SourceContext) -> Result<(), intake_core::SendError> {
        match self {
            Decoded::Message(message) => ctx.send(message).await,
            Decoded::Bad { raw, reason } => ctx.reject(raw, reason).await,
        }
    }
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

    fn json(message: Option<Decoded>) -> Json {
        match message {
            Some(Decoded::Message(Message::Json(json))) => json,
            other => panic!("expected JSON, got {other:?}"),
        }
    }

    #[test]
    fn csv_fields_are_typed_by_the_schema() {
        let mut decoder = LineDecoder::new(FileFormat::Csv, schema());
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
        let row = json(decoder.decode(b"lis, \"\"x\"\"\",4.5,y\n", 4));
        assert_eq!(
            row,
            serde_json::json!({"key": 2, "genus": "fe\nlis, \"x\"", "weight": 4.5})
        );
        match decoder.decode(b"1,2\n", 5) {
            Some(Decoded::Bad { raw, reason }) => {
                assert_eq!(&raw[..], b"1,2");
                assert_eq!(reason, "line 5: the record has 2 field(s), but the header has 4");
            }
            other => panic!("expected a bad line, got {other:?}"),
        }
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
