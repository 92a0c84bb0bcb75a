//! `#[derive(RowType)]` builds the same schema one would write by hand.

use std::sync::Arc;

use intake::{Column, DataType, RowType, Schema, Timestamp};

#[allow(dead_code)]
#[derive(RowType)]
struct Everything {
    #[intake(primary_key)]
    sym: String,
    #[intake(primary_key)]
    day: i32,
    small: u8,
    price: f64,
    ratio: f32,
    live: bool,
    tag: Arc<str>,
    raw: Vec<u8>,
    extra: serde_json::Value,
    at: Timestamp,
    note: Option<String>,
    #[intake(default = 0)]
    volume: i64,
    #[intake(default = "none")]
    venue: Option<String>,
    #[intake(rename = "c")]
    close: f64,
    #[intake(type = "string")]
    side: Side,
}

#[allow(dead_code)]
#[derive(serde::Serialize)]
enum Side {
    Buy,
    Sell,
}

#[test]
fn every_field_type_maps_to_its_column() {
    let by_hand = Schema::new([
        Column::new("sym", DataType::String).primary_key(),
        Column::new("day", DataType::Int).primary_key(),
        Column::new("small", DataType::Int),
        Column::new("price", DataType::Float),
        Column::new("ratio", DataType::Float),
        Column::new("live", DataType::Bool),
        Column::new("tag", DataType::String),
        Column::new("raw", DataType::Bytes),
        Column::new("extra", DataType::Json),
        Column::new("at", DataType::Timestamp),
        Column::new("note", DataType::String).nullable(),
        Column::new("volume", DataType::Int).default(0),
        Column::new("venue", DataType::String).nullable().default("none"),
        Column::new("c", DataType::Float),
        Column::new("side", DataType::String),
    ])
    .unwrap();
    assert_eq!(Everything::schema(), by_hand);
    assert_eq!(Everything::schema().primary_key(), &[0, 1]);
}

#[test]
fn the_schema_is_built_once() {
    assert_eq!(Everything::schema(), Everything::schema());
}

#[derive(RowType)]
#[allow(dead_code)]
struct Bad {
    #[intake(primary_key)]
    price: f64,
}

#[test]
#[should_panic(expected = "the schema derived for `Bad` is invalid: column `price` has type float")]
fn an_invalid_derived_schema_panics_with_the_reason() {
    let _ = Bad::schema();
}
