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

/// What the derive cannot check at compile time (the type of a default) is an error
/// from `try_schema`, and a panic naming the type from `schema`.
#[derive(RowType)]
#[allow(dead_code)]
struct BadDefault {
    #[intake(default = "zero")]
    count: i64,
}

#[test]
fn an_invalid_default_is_a_returned_error() {
    let error = BadDefault::try_schema().unwrap_err();
    assert!(
        matches!(error, intake::SchemaError::DefaultTypeMismatch { ref column, .. } if column == "count"),
        "{error}"
    );
}

#[test]
#[should_panic(
    expected = "the schema of `derive::BadDefault` is invalid: the default of column `count` is a string"
)]
fn schema_panics_with_the_reason() {
    let _ = BadDefault::schema();
}

/// An integer default of a float field is a float default.
#[derive(RowType)]
#[allow(dead_code)]
struct FloatDefault {
    #[intake(default = 0)]
    price: f64,
}

#[test]
fn an_integer_default_of_a_float_field_works() {
    let schema = FloatDefault::try_schema().unwrap();
    assert_eq!(
        schema.columns()[0].default_value(),
        Some(&intake::Value::Float(0.0))
    );
}
