//! serde on intake's data types: rows, keys, times, timestamps and change batches
//! serialize as documented (so `axum::Json(row)` answers with the row), and
//! `#[derive(Serialize, Deserialize, RowType)]` structs share one set of names with the
//! schema.

use std::time::Duration;

use futures::StreamExt;
use intake::{
    ChangeBatch, Column, DataType, Key, Pipeline, Reader, Row, RowType, Schema, SourceContext, Time,
    Timestamp, Value, source_fn,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

fn every_type() -> Schema {
    Schema::new([
        Column::new("sym", DataType::String).primary_key(),
        Column::new("day", DataType::Int).primary_key(),
        Column::new("price", DataType::Float),
        Column::new("live", DataType::Bool),
        Column::new("raw", DataType::Bytes),
        Column::new("text", DataType::Bytes),
        Column::new("extra", DataType::Json),
        Column::new("at", DataType::Timestamp),
        Column::new("note", DataType::String).nullable(),
    ])
    .unwrap()
}

fn at() -> Timestamp {
    Timestamp::parse_rfc3339("2024-05-01T12:00:00.123456789+02:00").unwrap()
}

fn every_type_row() -> Row {
    Row::new(
        &every_type(),
        vec![
            Value::from("AAPL"),
            Value::from(2024),
            Value::from(189.5),
            Value::from(true),
            Value::from(vec![0xff, 0]),
            Value::from(b"ok".to_vec()),
            Value::from(json!({"b": [1, null], "a": "x"})),
            Value::from(at()),
            Value::Null,
        ],
    )
    .unwrap()
}

#[test]
fn a_row_serializes_as_its_json_in_schema_column_order() {
    let row = every_type_row();
    // Text in schema order (not sorted: `sym` before `day`, `raw` before `extra`).
    assert_eq!(
        serde_json::to_string(&row).unwrap(),
        r#"{"sym":"AAPL","day":2024,"price":189.5,"live":true,"raw":[255,0],"text":"ok","extra":{"a":"x","b":[1,null]},"at":"2024-05-01T10:00:00.123456789Z","note":null}"#
    );
    assert_eq!(serde_json::to_string(&row).unwrap(), row.to_string());
    assert_eq!(serde_json::to_value(&row).unwrap(), row.to_json());
}

#[test]
fn a_value_serializes_as_to_json_writes_it() {
    for value in every_type_row().values() {
        assert_eq!(serde_json::to_value(value).unwrap(), value.to_json(), "{value:?}");
    }
    assert_eq!(
        serde_json::to_value(Value::Float(f64::NAN)).unwrap(),
        Value::Float(f64::NAN).to_json()
    );
}

#[test]
fn keys_serialize_as_their_values() {
    assert_eq!(serde_json::to_string(&Key::from("AAPL")).unwrap(), r#""AAPL""#);
    assert_eq!(serde_json::to_string(&Key::from(7)).unwrap(), "7");
    assert_eq!(
        serde_json::to_string(&every_type_row().primary_key().unwrap()).unwrap(),
        r#"["AAPL",2024]"#
    );
    assert_eq!(serde_json::to_string(&Key::generated(17)).unwrap(), "17");
    assert_eq!(
        serde_json::to_string(&Key::from(at())).unwrap(),
        r#""2024-05-01T10:00:00.123456789Z""#
    );
}

#[test]
fn times_are_numbers_both_ways() {
    assert_eq!(serde_json::to_string(&Time::from(42)).unwrap(), "42");
    assert_eq!(serde_json::from_str::<Time>("42").unwrap(), Time::from(42));
    assert!(serde_json::from_str::<Time>("-1").is_err());
    assert!(serde_json::from_str::<Time>(r#""42""#).is_err());
}

#[test]
fn timestamps_are_rfc3339_strings_and_read_what_a_timestamp_column_reads() {
    let t = at();
    let text = serde_json::to_string(&t).unwrap();
    assert_eq!(text, r#""2024-05-01T10:00:00.123456789Z""#);
    assert_eq!(
        serde_json::from_str::<Timestamp>(&text).unwrap(),
        t,
        "exact to the nanosecond"
    );
    assert_eq!(
        serde_json::from_str::<Timestamp>(r#""2024-05-01T12:00:00.123456789+02:00""#).unwrap(),
        t
    );
    // Integer milliseconds since the epoch, as a timestamp column accepts.
    let millis = serde_json::from_str::<Timestamp>("1714564800500").unwrap();
    assert_eq!(millis, Timestamp::from_unix_millis(1_714_564_800_500).unwrap());
    assert_eq!(
        serde_json::from_str::<Timestamp>("-1").unwrap().as_unix_millis(),
        -1
    );
    for bad in [
        r#""yesterday""#,
        r#""3000-01-01T00:00:00Z""#,
        "1.5",
        "true",
        "99999999999999999999",
        "18446744073709551615",
    ] {
        assert!(serde_json::from_str::<Timestamp>(bad).is_err(), "{bad}");
    }
}

/// A struct as a service would write it: serde and intake agree on every name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, RowType)]
#[serde(rename_all = "camelCase")]
struct Trade {
    #[intake(primary_key)]
    trade_id: i64,
    #[serde(rename = "p")]
    price: f64,
    at: Timestamp,
    settled_at: Option<Timestamp>,
    r#type: String,
}

#[test]
fn the_derive_names_columns_as_serde_does() {
    let schema = Trade::schema();
    let names: Vec<&str> = schema.columns().iter().map(Column::name).collect();
    assert_eq!(names, ["tradeId", "p", "at", "settledAt", "type"]);
    let at = Trade::schema().columns()[2].data_type();
    assert_eq!(at, DataType::Timestamp);
    assert_eq!(Trade::schema().columns()[3].data_type(), DataType::Timestamp);
    assert!(Trade::schema().columns()[3].is_nullable());
}

#[allow(dead_code)]
#[derive(Serialize, Deserialize, RowType)]
struct EveryRule {
    #[serde(rename = "x")]
    renamed: i64,
    #[serde(rename(serialize = "both", deserialize = "both"))]
    both_ways: i64,
    // intake's own rename wins: the column is named apart from serde's name.
    #[serde(rename = "serde_name")]
    #[intake(rename = "column_name")]
    overridden: i64,
}

#[allow(dead_code)]
#[derive(Serialize, RowType)]
#[serde(rename_all = "SCREAMING-KEBAB-CASE")]
struct Kebab {
    last_trade_price: i64,
}

#[allow(dead_code)]
#[derive(Serialize, RowType)]
#[serde(rename_all = "PascalCase")]
struct Pascal {
    last_trade_price: i64,
}

#[test]
fn the_derive_follows_serde_rename_forms_and_rules() {
    let names =
        |schema: Schema| -> Vec<String> { schema.columns().iter().map(|c| c.name().to_owned()).collect() };
    assert_eq!(names(EveryRule::schema()), ["x", "both", "column_name"]);
    assert_eq!(names(Kebab::schema()), ["LAST-TRADE-PRICE"]);
    assert_eq!(names(Pascal::schema()), ["LastTradePrice"]);
}

fn trade(id: i64) -> Trade {
    Trade {
        trade_id: id,
        price: 65_000.5,
        at: at(),
        settled_at: None,
        r#type: "buy".into(),
    }
}

#[tokio::test]
async fn a_typed_send_with_renames_and_a_timestamp_reads_back_the_same_struct() {
    let sent = vec![
        trade(1),
        Trade {
            settled_at: Some(Timestamp::from_unix_nanos(1)),
            ..trade(2)
        },
    ];
    let to_send = sent.clone();
    let source = source_fn(move |ctx: SourceContext| async move {
        for trade in &to_send {
            ctx.next(trade).await?;
        }
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("trades", source, Reader::json(Trade::schema()));
    pipeline.run().await.unwrap();

    let row = table.get(&Key::from(2)).unwrap();
    assert_eq!(
        row["at"],
        Value::Timestamp(at()),
        "a timestamp value, not a string"
    );
    assert_eq!(row["settledAt"], Value::Timestamp(Timestamp::from_unix_nanos(1)));
    assert_eq!(row["p"], Value::Float(65_000.5));
    assert_eq!(row["type"], Value::from("buy"));
    let mut read: Vec<Trade> = table
        .snapshot()
        .rows()
        .iter()
        .map(|(_, row)| row.deserialize().unwrap())
        .collect();
    read.sort_by_key(|t| t.trade_id);
    assert_eq!(read, sent);
    // Serializing the row is serializing the struct (same names, same order here).
    assert_eq!(
        serde_json::to_value(&row).unwrap(),
        serde_json::to_value(&sent[1]).unwrap()
    );
}

#[tokio::test]
async fn a_change_batch_serializes_as_time_snapshot_offsets_and_changes() {
    let schema = Schema::new([
        Column::new("sym", DataType::String).primary_key(),
        Column::new("close", DataType::Float),
    ])
    .unwrap();
    let source = source_fn(|ctx: SourceContext| async move {
        ctx.next_str(r#"{"sym":"AAPL","close":189.5}"#).await?;
        ctx.report_offset(json!(40)).await?;
        ctx.commit().await?;
        ctx.next_str(r#"{"sym":"AAPL","close":190.0}"#).await?;
        ctx.report_offset(json!(41)).await?;
        ctx.commit().await?;
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read(
        "feed",
        source,
        Reader::json(schema).autocommit_duration(Duration::from_secs(3600)),
    );
    let batches = table.changes();
    pipeline.run().await.unwrap();
    let batches: Vec<ChangeBatch> = batches.collect().await;
    assert_eq!(batches.len(), 2);
    assert_eq!(
        serde_json::to_string(&batches[1]).unwrap(),
        r#"{"time":2,"is_snapshot":false,"offsets":{"feed":41},"changes":[{"key":"AAPL","row":{"sym":"AAPL","close":189.5},"diff":-1},{"key":"AAPL","row":{"sym":"AAPL","close":190.0},"diff":1}]}"#
    );
    assert_eq!(
        serde_json::to_value(&batches[0]).unwrap(),
        json!({
            "time": 1,
            "is_snapshot": false,
            "offsets": {"feed": 40},
            "changes": [{"key": "AAPL", "row": {"sym": "AAPL", "close": 189.5}, "diff": 1}],
        })
    );
}
