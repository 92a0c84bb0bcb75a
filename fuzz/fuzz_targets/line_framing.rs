//! Line framing of arbitrary bytes with a small max_line_length, arriving in arbitrary
//! chunks: never a panic, memory bounded, and every non-blank line becomes exactly one
//! message or one report.
//!
//! The first byte picks the format (raw or JSON lines), the limit and how the input is
//! cut.

#![no_main]

use intake_core::Schema;
use intake_file::FileFormat;
use intake_file::fuzzing::{SHOWN, chunks, expected_lines, read_chunks};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [control, input @ ..] = data else {
        return;
    };
    let format = if control & 0x80 != 0 {
        FileFormat::JsonLines
    } else {
        FileFormat::Raw
    };
    let max_line_length = 1 + usize::from(control & 0x1f);
    let schema = Schema::raw();
    let (outcomes, held) =
        read_chunks(format, schema, max_line_length, &chunks(input, *control)).expect("a readable format");
    assert!(held <= max_line_length + 1 + SHOWN, "held {held} bytes");
    assert_eq!(outcomes, expected_lines(input, max_line_length));
});
