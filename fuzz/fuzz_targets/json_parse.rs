//! The schema-driven JSON reader of `intake-core` on arbitrary bytes: never a panic
//! or a stack overflow, and the same outcome whether a message arrives as text
//! (`next_bytes`) or as a `serde_json::Value` (`next_json`).
//!
//! The first byte picks the schema (bit 0) and whether the reader has lenient numbers
//! (bit 1); with its two top bits set, the input is also
//! wrapped in arrays nested beyond the depth limit (up to 10,000 deep) and sent as a
//! value.

#![no_main]

use intake_core::fuzzing::{parse_json_bytes, parse_json_value};
use intake_core::{Column, DataType, MAX_JSON_DEPTH, ParseError, Schema};
use libfuzzer_sys::fuzz_target;

fn schemas() -> [Schema; 2] {
    let wide = Schema::new([
        Column::new("key", DataType::Int).primary_key(),
        Column::new("name", DataType::String),
        Column::new("score", DataType::Float).default(0.5),
        Column::new("note", DataType::String).nullable(),
        Column::new("at", DataType::Timestamp).nullable(),
        Column::new("extra", DataType::Json).nullable(),
        Column::new("ok", DataType::Bool).default(true),
        Column::new("blob", DataType::Bytes).nullable(),
    ])
    .expect("a valid schema");
    let composite = Schema::new([
        Column::new("sym", DataType::String).primary_key(),
        Column::new("day", DataType::Timestamp).primary_key(),
        Column::new("v", DataType::Float).nullable(),
    ])
    .expect("a valid schema");
    [wide, composite]
}

fuzz_target!(|data: &[u8]| {
    let [control, input @ ..] = data else {
        return;
    };
    let schema = &schemas()[usize::from(control & 1)];
    // Numbers sent as strings are read as numbers by a lenient reader.
    let lenient = control & 2 != 0;
    let from_bytes = parse_json_bytes(schema, lenient, input);
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(input) {
        let text = json.to_string();
        let from_value = parse_json_value(schema, lenient, json);
        match (&from_bytes, &from_value) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "text and value disagree"),
            // A value cannot hold a field twice: its last one wins, so the row may
            // parse where the text was refused.
            (Err(ParseError::DuplicateField { .. }), _) => {}
            // With several wrong fields, the text reports the first in the text and the
            // value the first in its (sorted) map, so only a refusal is compared.
            (Err(_), Err((_, raw))) => {
                assert_eq!(&raw[..], text.as_bytes(), "the report's raw bytes are the value's text");
            }
            _ => panic!("text gives {from_bytes:?}, value gives {from_value:?}"),
        }
    }
    if control & 0xc0 == 0xc0 {
        // Nested past the limit, up to depths recursion would not survive.
        let mut deep = serde_json::Value::String(String::from_utf8_lossy(input).into_owned());
        for _ in 0..(MAX_JSON_DEPTH + 8 * input.len()).min(10_000) {
            deep = serde_json::Value::Array(vec![deep]);
        }
        let mut message = serde_json::Map::new();
        message.insert("key".to_owned(), 1.into());
        message.insert("extra".to_owned(), deep);
        let refused = parse_json_value(schema, lenient, serde_json::Value::Object(message));
        assert!(matches!(refused, Err((ParseError::TooDeep, _))));
    }
});
