//! CSV records are framed as the `csv` crate reads them: a stray quote, a quoted field
//! never closed, a lone `\r`, a byte order mark in the middle of the file; each record
//! is a row or a report, and nothing vanishes.

mod support;

use std::path::Path;
use std::time::Duration;

use intake_core::{Column, DataType, ErrorPolicy, Reader, Schema, Table};
use intake_file::{FileFormat, FileSource, FragmentParser, FragmentSource};
use support::{Running, append, committed_offset, eventually, read_all, reasons};

fn schema() -> Schema {
    Schema::new([
        Column::new("key", DataType::Int).primary_key(),
        Column::new("name", DataType::String),
        Column::new("count", DataType::Int).nullable(),
    ])
    .unwrap()
}

fn reader() -> Reader {
    Reader::json(schema())
        .error_policy(ErrorPolicy::SkipAndReport)
        .autocommit_duration(Duration::from_millis(5))
}

/// `(key, name, count)` of every row, by key.
fn rows(table: &Table) -> Vec<(i64, String, Option<i64>)> {
    let mut rows: Vec<_> = table
        .snapshot()
        .rows()
        .iter()
        .map(|(_, row)| {
            (
                row.get("key").and_then(|v| v.as_int()).unwrap(),
                row.get("name").and_then(|v| v.as_str()).unwrap().to_owned(),
                row.get("count").and_then(|v| v.as_int()),
            )
        })
        .collect();
    rows.sort();
    rows
}

fn row(key: i64, name: &str, count: i64) -> (i64, String, Option<i64>) {
    (key, name.to_owned(), Some(count))
}

/// Reads the CSV in `content` as a file, and as a fragment of a directory.
async fn read_both_ways(dir: &Path, content: &[u8]) -> [(Table, Vec<intake_core::Rejected>); 2] {
    let path = dir.join("data.csv");
    std::fs::write(&path, content).unwrap();
    let file = read_all(FileSource::csv(&path), reader()).await;
    let parser = FragmentParser::Lines(FileFormat::Csv);
    let fragments = FragmentSource::directory(dir, "*.csv", parser).unwrap();
    let fragment = read_all(fragments, reader()).await;
    [file, fragment]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_quote_in_an_unquoted_field_does_not_swallow_the_next_lines() {
    let dir = tempfile::tempdir().unwrap();
    let content = "key,name,count\n1,pie,2\n2,12\" pizza,4\n3,soup,1\n4,\"9\"\" sub\",5\n";
    for (table, rejected) in read_both_ways(dir.path(), content.as_bytes()).await {
        assert!(rejected.is_empty(), "{:?}", reasons(&rejected));
        assert_eq!(
            rows(&table),
            [
                row(1, "pie", 2),
                row(2, "12\" pizza", 4),
                row(3, "soup", 1),
                row(4, "9\" sub", 5)
            ]
        );
    }
    let (table, _) = read_all(FileSource::csv(dir.path().join("data.csv")), reader()).await;
    let offset = committed_offset(&table);
    assert_eq!(offset["position"], content.len(), "{offset}");
    assert_eq!(offset["line"], 5, "{offset}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quoted_field_never_closed_is_reported_from_its_line_and_offsets_move_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let content = "key,name,count\n1,pie,2\n2,\"never closed,4\n3,soup,1\n";
    for (table, rejected) in read_both_ways(dir.path(), content.as_bytes()).await {
        assert_eq!(rows(&table), [row(1, "pie", 2)]);
        let reasons = reasons(&rejected);
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(
            reasons[0].starts_with("line 3: the record is not complete at the end of the input"),
            "{reasons:?}"
        );
        assert!(
            reasons[0].ends_with("2,\"never closed,4\n3,soup,1"),
            "{reasons:?}"
        );
    }
    let (table, _) = read_all(FileSource::csv(dir.path().join("data.csv")), reader()).await;
    assert_eq!(committed_offset(&table)["position"], content.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carriage_return_inside_a_line_is_data_and_only_a_line_end_ends_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let content = "key,name,count\r\n1,half\rway,2\r\n2,\"two\r\nlines\",3\r\n3,last,4\r";
    for (table, rejected) in read_both_ways(dir.path(), content.as_bytes()).await {
        assert!(rejected.is_empty(), "{:?}", reasons(&rejected));
        assert_eq!(
            rows(&table),
            [row(1, "half\rway", 2), row(2, "two\nlines", 3), row(3, "last", 4)]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_order_mark_is_stripped_at_the_start_of_the_file_only() {
    let dir = tempfile::tempdir().unwrap();
    let content = "\u{feff}key,name,count\n1,pie,2\n\u{feff}2,soup,3\n";
    for (table, rejected) in read_both_ways(dir.path(), content.as_bytes()).await {
        assert_eq!(rows(&table), [row(1, "pie", 2)]);
        let reasons = reasons(&rejected);
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(reasons[0].contains("field `key` should be int"), "{reasons:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_follow_mode_an_open_record_waits_for_its_end_and_a_runaway_one_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.csv");
    append(&path, "key,name,count\n1,pie,2\n2,\"two\n");
    let source = FileSource::csv(&path)
        .follow(true)
        .poll_interval(Duration::from_millis(20))
        .max_line_length(64);
    let run = Running::start(source, reader());
    eventually("the first row", || run.table.len() == 1).await;
    // The file may still grow: the open record is neither a row nor a report yet.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(run.table.stats().rejected(), 0);
    append(&path, "lines\",3\n");
    eventually("the completed record", || run.table.len() == 2).await;

    // A quote never closed: the record grows past max_line_length, is reported from
    // the line it starts on, and reading goes on (blank lines, then a row).
    append(&path, "3,\"runaway\n");
    for _ in 0..8 {
        append(&path, "          \n");
    }
    append(&path, "4,soup,1\n");
    eventually("the row after the runaway record", || run.table.len() == 3).await;
    let end = std::fs::metadata(&path).unwrap().len();
    eventually("the offset after it", || {
        run.table
            .committed_offsets()
            .first()
            .is_some_and(|(_, offset)| offset["position"] == end)
    })
    .await;

    let (table, rejected) = run.stop().await;
    assert_eq!(
        rows(&table),
        [row(1, "pie", 2), row(2, "two\nlines", 3), row(4, "soup", 1)]
    );
    let reasons = reasons(&rejected);
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].starts_with("line 5: the record is at least 65 bytes long, beyond max_line_length"),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_open_when_its_file_is_rotated_away_or_truncated_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.csv");
    append(&path, "key,name,count\n1,pie,2\n2,\"open\n");
    let source = FileSource::csv(&path)
        .follow(true)
        .poll_interval(Duration::from_millis(20))
        .rotate_wait(Duration::ZERO);
    let run = Running::start(source, reader());
    eventually("the first row", || run.table.len() == 1).await;
    std::fs::rename(&path, dir.path().join("data.csv.1")).unwrap();
    append(&path, "key,name,count\n3,soup,1\n4,\"open again\n");
    eventually("the new file's row", || run.table.len() == 2).await;
    eventually("the report of the rotated file", || {
        run.table.stats().rejected() == 1
    })
    .await;

    // Truncated: what was read of the old content ends there.
    std::fs::write(&path, "key,name,count\n5,tea,1\n").unwrap();
    eventually("the truncated file's row", || run.table.len() == 3).await;
    let (table, rejected) = run.stop().await;
    assert_eq!(
        rows(&table),
        [row(1, "pie", 2), row(3, "soup", 1), row(5, "tea", 1)]
    );
    let reasons = reasons(&rejected);
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].starts_with("line 3: the record is not complete"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].starts_with("line 3: the record is not complete"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("open again"), "{reasons:?}");
}
