//! `Reader::lenient_numbers`: numbers sent as JSON strings, through a whole pipeline.

use std::collections::BTreeMap;

use futures::StreamExt;
use intake::{Column, DataType, ErrorPolicy, ParseError, Pipeline, Reader, Schema, SourceContext, source_fn};

fn schema() -> Schema {
    Schema::new([
        Column::new("size", DataType::Int).primary_key(),
        Column::new("price", DataType::Float),
    ])
    .unwrap()
}

/// Sends the same quotes as text, as bytes and as `serde_json::Value`s, with one
/// price that is not a number between them; returns the table as `size -> price` and
/// the reasons of the rejected messages.
async fn read(reader: Reader) -> (BTreeMap<i64, f64>, Vec<ParseError>) {
    let source = source_fn(|ctx: SourceContext| async move {
        ctx.next_str(r#"{"size": "12", "price": "65000.1"}"#).await?;
        ctx.next_bytes(&br#"{"size": "13", "price": "0.1"}"#[..]).await?;
        ctx.next_json(serde_json::json!({"size": "14", "price": "1e3"}))
            .await?;
        ctx.next_str(r#"{"size": "15", "price": "high"}"#).await?;
        ctx.next_str(r#"{"size": 16, "price": 2.5}"#).await?;
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("quotes", source, reader.error_policy(ErrorPolicy::SkipAndReport));
    let rejected = tokio::spawn(pipeline.rejected(8).collect::<Vec<_>>());
    pipeline.run().await.unwrap();
    let rows = table
        .snapshot()
        .rows()
        .iter()
        .map(|(_, row)| (row["size"].as_int().unwrap(), row["price"].as_float().unwrap()))
        .collect();
    let reasons = rejected
        .await
        .unwrap()
        .iter()
        .map(|r| r.reason().clone())
        .collect();
    (rows, reasons)
}

#[tokio::test]
async fn a_lenient_reader_reads_numbers_in_strings_on_every_path() {
    let (rows, rejected) = read(Reader::json(schema()).lenient_numbers(true)).await;
    assert_eq!(
        rows,
        BTreeMap::from([(12, 65000.1), (13, 0.1), (14, 1000.0), (16, 2.5)])
    );
    assert_eq!(
        rejected,
        [ParseError::WrongType {
            column: "price".into(),
            expected: DataType::Float,
            found: "a string that is not a JSON number (lenient numbers are on)",
        }]
    );
}

#[tokio::test]
async fn a_reader_is_strict_about_numbers_by_default() {
    let (rows, rejected) = read(Reader::json(schema())).await;
    assert_eq!(rows, BTreeMap::from([(16, 2.5)]));
    let a_string = |column: &str, expected| ParseError::WrongType {
        column: column.into(),
        expected,
        found: "a string",
    };
    let size = a_string("size", DataType::Int);
    // A `serde_json::Value` holds its fields sorted by name, so `price` is read first.
    let price = a_string("price", DataType::Float);
    assert_eq!(rejected, [size.clone(), size.clone(), price, size]);
}

/// A typed send has the outcome its JSON text would have, lenient numbers included.
#[tokio::test]
async fn a_typed_send_follows_lenient_numbers_like_its_json_text() {
    #[derive(serde::Serialize)]
    struct Quote<'a> {
        size: &'a str,
        price: &'a str,
    }
    let source = source_fn(|ctx: SourceContext| async move {
        ctx.next(&Quote {
            size: "12",
            price: "65000.1",
        })
        .await?;
        ctx.next(&Quote {
            size: "13",
            price: "high",
        })
        .await?;
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let reader = Reader::json(schema())
        .lenient_numbers(true)
        .error_policy(ErrorPolicy::SkipAndReport);
    let table = pipeline.read("quotes", source, reader);
    pipeline.run().await.unwrap();
    assert_eq!(table.len(), 1);
    assert_eq!(table.stats().rejected(), 1);
    let row = table.get(&12.into()).unwrap();
    assert_eq!(row["price"].as_float(), Some(65000.1));
}
