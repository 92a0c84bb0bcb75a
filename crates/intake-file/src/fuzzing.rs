//! What the fuzz targets in `fuzz/` (and the property tests) drive: the line framing
//! and decoding of [`FileSource`](crate::FileSource) over input that arrives in
//! chunks, and, as the oracle, what each line or record of that input should become.
//!
//! Compiled only for this crate's tests and with `--cfg fuzzing` (as `cargo fuzz`
//! builds); it is not part of the public API.

use intake_core::{Message, Schema};
use serde_json::{Map, Value as Json};

use crate::FileFormat;
use crate::format::{BOM, typed};

/// How many bytes of an input too long to keep its report shows.
pub const SHOWN: usize = crate::format::SHOWN;

/// `input` cut into chunks of 1 to 16 bytes, their lengths drawn from `seed`, as a
/// followed file may see it written.
pub fn chunks(input: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut state = u32::from(seed) | 0x100;
    let mut chunks = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        // xorshift32: any sequence will do, as long as the seed picks it.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let length = (state % 16) as usize + 1;
        let (chunk, after) = rest.split_at(length.min(rest.len()));
        chunks.push(chunk);
        rest = after;
    }
    chunks
}

/// What one record (or line) became.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A delimited record: a row, as the JSON object sent to the reader.
    Row(Json),
    /// A line of a line format (JSON lines, raw), as sent to the reader.
    Line(Vec<u8>),
    /// Bad input, reported from the line its record starts on.
    Invalid,
    /// Bad input whose reason does not name the line its record starts on.
    Mislabelled(String),
}

/// Reads `chunks` as a followed file sees them appended (a line split across chunks
/// waits for the rest), then finishes the input as at the end of a static file.
/// Returns every outcome with the line its record starts on, and the most bytes the
/// framing and the decoder held at once.
///
/// # Errors
///
/// When the format cannot be read.
pub fn read_chunks(
    format: FileFormat,
    schema: Schema,
    max_line_length: usize,
    chunks: &[&[u8]],
) -> Result<(Vec<(u64, Outcome)>, usize), String> {
    let mut outcomes = Vec::new();
    let held = crate::file::read_chunks(format, schema, max_line_length, chunks, |line, message| {
        let outcome = match message {
            Message::Json(json) => Outcome::Row(json),
            Message::Bytes(bytes) => Outcome::Line(bytes.to_vec()),
            Message::Invalid { reason, .. } if reason.starts_with(&format!("line {line}: ")) => {
                Outcome::Invalid
            }
            Message::Invalid { reason, .. } => Outcome::Mislabelled(reason),
            other => Outcome::Mislabelled(format!("unexpected message {other:?}")),
        };
        outcomes.push((line, outcome));
    })?;
    Ok((outcomes, held))
}

/// What each line of `input` in a line format (JSON lines, raw) should become: lines
/// end at `\n`; a line longer than `max_line_length` (without its `\n`) is reported;
/// otherwise a `\r` at its end and a byte order mark at the start of the input are
/// removed, and a blank line is skipped.
pub fn expected_lines(input: &[u8], max_line_length: usize) -> Vec<(u64, Outcome)> {
    let mut expected = Vec::new();
    for (index, line) in input.split_inclusive(|&b| b == b'\n').enumerate() {
        let number = index as u64 + 1;
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        if content.len() > max_line_length {
            expected.push((number, Outcome::Invalid));
            continue;
        }
        let mut content = content.strip_suffix(b"\r").unwrap_or(content);
        if index == 0 {
            content = content.strip_prefix(BOM).unwrap_or(content);
        }
        if !content.iter().all(u8::is_ascii_whitespace) {
            expected.push((number, Outcome::Line(content.to_vec())));
        }
    }
    expected
}

/// What each record the `csv` crate reads in `input` should become, with the
/// decoder's line ends (`\n`, with a `\r` before it or at the end of the input
/// removed) as the record terminator: the first record with valid UTF-8 names is the
/// header; then a record with as many fields as the header and valid UTF-8 in every
/// column of `schema` is a row, and any other is reported; a blank line is skipped; a
/// record still inside a quoted field at the end is reported. Assumes no record is
/// longer than `max_line_length`.
pub fn expected_records(delimiter: u8, schema: Schema, input: &[u8]) -> Vec<(u64, Outcome)> {
    let mut text = Vec::with_capacity(input.len() + 1);
    for line in input.split_inclusive(|&b| b == b'\n') {
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        text.extend_from_slice(content.strip_suffix(b"\r").unwrap_or(content));
        text.push(b'\n');
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_reader(&text[..]);
    let records: Vec<csv::ByteRecord> = reader.byte_records().filter_map(Result::ok).collect();
    let unterminated = ends_inside_quotes(delimiter, &text);
    let mut header: Option<Vec<String>> = None;
    let mut expected = Vec::new();
    for (index, record) in records.iter().enumerate() {
        let mut start = record.position().map_or(0, |p| p.byte()) as usize;
        if start == 0 && text.starts_with(BOM) {
            start = BOM.len();
        }
        while text.get(start) == Some(&b'\n') {
            start += 1;
        }
        let line = 1 + text[..start].iter().filter(|&&b| b == b'\n').count() as u64;
        if index + 1 == records.len() && unterminated {
            expected.push((line, Outcome::Invalid));
            continue;
        }
        let content = text[start..].split(|&b| b == b'\n').next().unwrap_or_default();
        if record.len() == 1 && content.iter().all(|&b| b.is_ascii_whitespace() && b != delimiter) {
            continue;
        }
        let Some(names) = &header else {
            let names: Option<Vec<String>> = record
                .iter()
                .map(|field| std::str::from_utf8(field).ok().map(str::to_owned))
                .collect();
            match names {
                Some(names) => header = Some(names),
                None => expected.push((line, Outcome::Invalid)),
            }
            continue;
        };
        if record.len() != names.len() {
            expected.push((line, Outcome::Invalid));
            continue;
        }
        let mut object = Map::new();
        let mut valid = true;
        for (field, name) in record.iter().zip(names) {
            let Some(index) = schema.index_of(name) else {
                continue;
            };
            let column = &schema.columns()[index];
            match std::str::from_utf8(field) {
                Ok(text) => {
                    object.insert(
                        name.clone(),
                        typed(text, column.data_type(), column.is_nullable()),
                    );
                }
                Err(_) => valid = false,
            }
        }
        expected.push((
            line,
            if valid {
                Outcome::Row(Json::Object(object))
            } else {
                Outcome::Invalid
            },
        ));
    }
    expected
}

/// Whether `text` ends inside a quoted field, as `csv-core` reads it.
fn ends_inside_quotes(delimiter: u8, text: &[u8]) -> bool {
    let mut reader = csv_core::ReaderBuilder::new()
        .delimiter(delimiter)
        .terminator(csv_core::Terminator::Any(b'\n'))
        .build();
    let mut output = vec![0; text.len() + 1];
    let mut ends = vec![0; text.len() + 1];
    let mut input = text;
    while !input.is_empty() {
        let (_, read, _, _) = reader.read_record(input, &mut output, &mut ends);
        input = &input[read..];
    }
    // At the end of the input, only a record still open makes one more record.
    let (result, _, _, _) = reader.read_record(&[], &mut output, &mut ends);
    result == csv_core::ReadRecordResult::Record
}

#[cfg(test)]
mod tests {
    use super::*;
    use intake_core::{Column, DataType};
    use proptest::prelude::*;

    fn schema() -> Schema {
        Schema::new([
            Column::new("a", DataType::String),
            Column::new("b", DataType::String).nullable(),
            Column::new("c", DataType::Int).nullable(),
        ])
        .unwrap()
    }

    /// Bytes that matter to the framing and to CSV, and some others.
    fn csv_byte() -> impl Strategy<Value = u8> {
        prop_oneof![
            4 => prop::sample::select(b",\"\n\r a1\t;".to_vec()),
            1 => prop::sample::select(vec![0xEF, 0xBB, 0xBF, 0xFF]),
            1 => any::<u8>(),
        ]
    }

    /// `input` cut at the given points, as a followed file receives it.
    fn chunks(input: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut % (input.len() + 1)).collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut start = 0;
        for cut in cuts.into_iter().chain([input.len()]) {
            chunks.push(input[start..cut].to_vec());
            start = cut;
        }
        chunks
    }

    fn read(format: FileFormat, max: usize, input: &[u8], cuts: &[usize]) -> (Vec<(u64, Outcome)>, usize) {
        let chunks = chunks(input, cuts);
        let chunks: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        read_chunks(format, schema(), max, &chunks).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1_000))]

        /// Every record the `csv` crate reads is a row or a report (or the header, or
        /// blank), in order, with the line it starts on: never neither, never lost.
        #[test]
        fn every_csv_record_is_a_row_or_a_report(
            header in prop::bool::ANY,
            body in prop::collection::vec(csv_byte(), 0..160),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
            tsv in prop::bool::ANY,
        ) {
            let (format, delimiter) = if tsv { (FileFormat::Tsv, b'\t') } else { (FileFormat::Csv, b',') };
            let mut input = Vec::new();
            if header {
                input.extend_from_slice(if tsv { b"a\tb\tc\n" } else { b"a,b,c\n" });
            }
            input.extend_from_slice(&body);
            let (outcomes, _) = read(format, 1_000, &input, &cuts);
            prop_assert_eq!(outcomes, expected_records(delimiter, schema(), &input));
        }

        /// Every non-blank line becomes exactly one message or one report, whatever
        /// the limit and however the input arrives; memory stays within the limit.
        #[test]
        fn every_line_is_a_message_or_a_report(
            input in prop::collection::vec(csv_byte(), 0..200),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
            max in 1_usize..24,
        ) {
            let (outcomes, held) = read(FileFormat::Raw, max, &input, &cuts);
            prop_assert_eq!(outcomes, expected_lines(&input, max));
            prop_assert!(held <= max + 1 + crate::format::SHOWN, "held {} bytes", held);
        }

        /// With records longer than the limit, memory stays bounded and each record
        /// is reported at most once, in order.
        #[test]
        fn long_csv_records_stay_bounded(
            body in prop::collection::vec(csv_byte(), 0..200),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
            max in 1_usize..24,
        ) {
            let (outcomes, held) = read(FileFormat::Csv, max, &body, &cuts);
            prop_assert!(held <= 4 * (max + 1) + crate::format::SHOWN, "held {} bytes", held);
            let lines: Vec<u64> = outcomes.iter().map(|(line, _)| *line).collect();
            prop_assert!(lines.windows(2).all(|pair| pair[0] < pair[1]), "{:?}", outcomes);
            prop_assert!(
                outcomes.iter().all(|(_, outcome)| !matches!(outcome, Outcome::Mislabelled(_))),
                "{:?}", outcomes
            );
        }
    }

    #[test]
    fn the_issue_s_examples() {
        let input = b"a,b,c\n1,12\" pizza,4\n2,\"open\n3,x,5\n";
        let (outcomes, _) = read(FileFormat::Csv, 1_000, input, &[]);
        assert_eq!(outcomes, expected_records(b',', schema(), input));
        assert_eq!(
            outcomes,
            [
                (
                    2,
                    Outcome::Row(serde_json::json!({"a": "1", "b": "12\" pizza", "c": 4}))
                ),
                (3, Outcome::Invalid)
            ]
        );
    }
}
