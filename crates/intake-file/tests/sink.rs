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

/// Regression: without serde_json's `float_roundtrip`, about 8% of doubles written by
/// the JSON-lines sink read back one ULP off; bytes that are not UTF-8 were written as
/// an array of numbers that no bytes column accepted. A JSON-lines sink's output, read
/// by intake with the same schema, gives the same rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_lines_sink_s_output_reads_back_as_the_same_rows() {
    let schema = Schema::new([
        Column::new("key", DataType::Int).primary_key(),
        Column::new("x", DataType::Float),
        Column::new("blob", DataType::Bytes),
        Column::new("at", DataType::Timestamp),
        Column::new("doc", DataType::Json).nullable(),
        Column::new("text", DataType::String),
    ])
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.jsonl");

    let rows = {
        let schema = schema.clone();
        move |ctx: SourceContext| async move {
            // A fixed pseudo-random sequence of doubles across the whole range.
            let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
            for key in 0..2_000_i64 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let mut x = f64::from_bits(state);
                if !x.is_finite() {
                    x = key as f64 / 7.0;
                }
                let blob = if key % 2 == 0 {
                    vec![0xff, 0, key as u8]
                } else {
                    b"plain".to_vec()
                };
                let row = intake_core::Row::new(
                    &schema,
                    vec![
                        key.into(),
                        x.into(),
                        blob.into(),
                        intake_core::Timestamp::from_unix_nanos(state as i64 / 3).into(),
                        if key % 3 == 0 {
                            intake_core::Value::Null
                        } else {
                            json!({"k": [key, x, "é"]}).into()
                        },
                        format!("line\n{key}, \"quoted\" \u{1F408}").into(),
                    ],
                )
                .unwrap();
                ctx.next_json(row.to_json()).await?;
            }
            Ok(())
        }
    };
    let mut pipeline = Pipeline::new();
    let written = pipeline.read("written", source_fn(rows), Reader::json(schema.clone()));
    written.sink("jsonl", JsonLinesSink::create(&path).await.unwrap());
    pipeline.run().await.unwrap();
    assert_eq!(written.len(), 2_000);

    let mut pipeline = Pipeline::new();
    let read = pipeline.read(
        "read",
        intake_file::FileSource::json_lines(&path),
        Reader::json(schema),
    );
    pipeline.run().await.unwrap();
    let (written, read) = (written.snapshot(), read.snapshot());
    assert_eq!(read.len(), written.len());
    for ((key, a), (_, b)) in written.rows().iter().zip(read.rows()) {
        assert_eq!(
            a.values(),
            b.values(),
            "row {key} changed on the way through the sink"
        );
    }
}
