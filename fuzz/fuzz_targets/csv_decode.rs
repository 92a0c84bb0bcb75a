//! CSV/TSV decoding of arbitrary bytes, arriving in arbitrary chunks as a followed file
//! sees them: never a panic, memory bounded by max_line_length, and every record the
//! `csv` crate reads is a row or a report, never neither.
//!
//! The first byte picks the format and the limit, the second how the input is cut.

#![no_main]

use std::sync::OnceLock;

use intake_core::{Column, DataType, Schema};
use intake_file::FileFormat;
use intake_file::fuzzing::{Outcome, SHOWN, chunks, expected_records, read_chunks};
use libfuzzer_sys::fuzz_target;

fn schema() -> Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Schema::new([
                Column::new("a", DataType::String),
                Column::new("b", DataType::String).nullable(),
                Column::new("c", DataType::Int).nullable(),
            ])
            .expect("a valid schema")
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let [control, seed, input @ ..] = data else {
        return;
    };
    let (format, delimiter) = match control % 3 {
        0 => (FileFormat::Csv, b','),
        1 => (FileFormat::Tsv, b'\t'),
        _ => (FileFormat::Delimited(b';'), b';'),
    };
    // Half the time a limit small enough to cut records, else one no record reaches.
    let bounded = control & 0x80 != 0;
    let max_line_length = if bounded {
        1 + usize::from((control >> 2) & 0x1f)
    } else {
        input.len() + 1
    };
    let (outcomes, held) =
        read_chunks(format, schema(), max_line_length, &chunks(input, *seed)).expect("a readable format");
    assert!(
        held <= 4 * (max_line_length + 1) + SHOWN,
        "held {held} bytes with max_line_length {max_line_length}"
    );
    assert!(
        outcomes
            .iter()
            .all(|(_, outcome)| !matches!(outcome, Outcome::Mislabelled(_))),
        "{outcomes:?}"
    );
    assert!(
        outcomes.windows(2).all(|pair| pair[0].0 < pair[1].0),
        "records out of order: {outcomes:?}"
    );
    if !bounded {
        assert_eq!(outcomes, expected_records(delimiter, schema(), input));
    }
});
