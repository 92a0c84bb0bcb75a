//! Persistent storage's decoders on arbitrary bytes: a commit record's payload, JSON
//! values, keyed rows, snapshot files (raw, after a valid header, and with a frame
//! whose checksum is valid so that decoding proper is reached). What is on disk may be
//! damaged or hostile; reading it must give an error, never a panic.
//!
//! The first byte picks the schema.

#![no_main]

use intake_core::fuzzing::decode_store_bytes;
use intake_core::{Column, DataType, Schema};
use libfuzzer_sys::fuzz_target;

fn schemas() -> [Schema; 3] {
    let wide = Schema::new([
        Column::new("id", DataType::Int).primary_key(),
        Column::new("s", DataType::String),
        Column::new("f", DataType::Float),
        Column::new("b", DataType::Bool).nullable(),
        Column::new("by", DataType::Bytes).nullable(),
        Column::new("j", DataType::Json).nullable(),
        Column::new("t", DataType::Timestamp).nullable(),
        Column::new("n", DataType::Int).nullable().default(7),
    ])
    .expect("a valid schema");
    let composite = Schema::new([
        Column::new("sym", DataType::String).primary_key(),
        Column::new("day", DataType::Timestamp).primary_key(),
        Column::new("close", DataType::Float),
    ])
    .expect("a valid schema");
    let unkeyed = Schema::new([Column::new("data", DataType::Bytes)]).expect("a valid schema");
    [wide, composite, unkeyed]
}

fuzz_target!(|data: &[u8]| {
    let [control, input @ ..] = data else {
        return;
    };
    let schemas = schemas();
    decode_store_bytes(&schemas[usize::from(*control) % schemas.len()], input);
});
