//! Sinks: what they write, parsed back, equals the changes the table emitted.

use futures::StreamExt;
use intake_core::{Column, DataType, Pipeline, Reader, Schema, SourceContext, source_fn};
use intake_file::{CsvSink, JsonLinesSink};
use serde_json::{Value as Json, json};

fn schema() -> Schema {
    Schema::new([
        Column::new("key", DataType::Int).primary_key(),
        Column::new("genus", DataType::String),
        Column::new("weight", DataType::Float).nullable(),
        Column::new("wild", DataType::Bool).default(true),
    ])
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_output_parsed_back_equals_the_emitted_changes() {
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("cats.csv");
    let jsonl_path = dir.path().join("cats.jsonl");

    let source = source_fn(|ctx: SourceContext| async move {
        ctx.next_json(json!({"key": 1, "genus": "otocolobus", "weight": 4.5}))
            .await?;
        ctx.next_json(json!({"key": 2, "genus": "felis, \"catus\"", "wild": false}))
            .await?;
        ctx.commit().await?;
        ctx.next_json(json!({"key": 2, "genus": "felis\nsilvestris", "weight": 5.0}))
            .await?;
        ctx.delete(1).await?;
        ctx.commit().await?;
        ctx.next_json(json!({"key": 3, "genus": "lynx", "weight": null}))
            .await?;
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("cats", source, Reader::json(schema()));
    let changes = tokio::spawn(table.changes().collect::<Vec<_>>());
    table.sink("csv", CsvSink::create(&csv_path).await.unwrap());
    table.sink("jsonl", JsonLinesSink::create(&jsonl_path).await.unwrap());
    pipeline.run().await.unwrap();

    // What the table emitted, as (columns..., time, diff) JSON objects.
    let mut expected = Vec::new();
    for batch in changes.await.unwrap() {
        for change in batch.changes() {
            let mut object = change.row.to_json();
            object["time"] = batch.time().as_u64().into();
            object["diff"] = change.diff().into();
            expected.push(object);
        }
    }
    assert_eq!(expected.len(), 6, "{expected:?}");

    let jsonl: Vec<Json> = std::fs::read_to_string(&jsonl_path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(jsonl, expected);

    let mut reader = csv::Reader::from_path(&csv_path).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
    assert_eq!(header, ["key", "genus", "weight", "wild", "time", "diff"]);
    let csv: Vec<Json> = reader
        .records()
        .map(|record| {
            let record = record.unwrap();
            json!({
                "key": record[0].parse::<i64>().unwrap(),
                "genus": &record[1],
                "weight": record[2].parse::<f64>().ok(),
                "wild": record[3].parse::<bool>().unwrap(),
                "time": record[4].parse::<u64>().unwrap(),
                "diff": record[5].parse::<i64>().unwrap(),
            })
        })
        .collect();
    assert_eq!(csv, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_whose_file_cannot_be_created_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        CsvSink::create(dir.path().join("missing/dir/out.csv"))
            .await
            .is_err()
    );
}
