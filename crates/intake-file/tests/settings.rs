//! Every setting a `FileSource` builder accepts works, at its extremes too, or is
//! refused at once.

mod support;

use std::time::Duration;

use intake_core::{Column, DataType, Reader, Schema};
use intake_file::{FileFormat, FileSource};
use support::{Running, append, committed_offset, eventually, lines, read_all};

#[test]
#[should_panic(expected = "max_line_length must be at least 1")]
fn a_zero_max_line_length_is_refused() {
    let _ = FileSource::raw("app.log").max_line_length(0);
}

#[test]
#[should_panic(expected = "offset_every must be at least 1")]
fn a_zero_offset_every_is_refused() {
    let _ = FileSource::raw("app.log").offset_every(0);
}

#[test]
#[should_panic(expected = "poll_interval must be positive")]
fn a_zero_poll_interval_is_refused() {
    let _ = FileSource::raw("app.log").poll_interval(Duration::ZERO);
}

#[test]
fn a_delimiter_that_is_a_line_end_or_the_quote_is_refused() {
    for delimiter in [b'\n', b'\r', b'"'] {
        let refused =
            std::panic::catch_unwind(|| FileSource::new("data.csv", FileFormat::Delimited(delimiter)));
        let message = refused.unwrap_err();
        let message = message.downcast_ref::<String>().unwrap();
        assert!(message.contains("cannot be the delimiter"), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_limits_read_a_static_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.csv");
    let content = "key,name\n1,pie\n2,\"two\nlines\"\n3,soup";
    std::fs::write(&path, content).unwrap();
    let schema = Schema::new([
        Column::new("key", DataType::Int).primary_key(),
        Column::new("name", DataType::String),
    ])
    .unwrap();
    let source = FileSource::csv(&path)
        .max_line_length(usize::MAX)
        .offset_every(u64::MAX);
    let (table, rejected) = read_all(source, Reader::json(schema)).await;
    assert!(rejected.is_empty());
    assert_eq!(table.len(), 3);
    assert_eq!(committed_offset(&table)["position"], content.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_durations_follow_a_file_through_a_rotation_and_still_stop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    append(&path, "a\n");
    let source = FileSource::raw(&path)
        .follow(true)
        // Notifications alone wake the reader.
        .poll_interval(Duration::MAX)
        .rotate_wait(Duration::MAX)
        .max_line_length(usize::MAX)
        .offset_every(u64::MAX);
    let run = Running::start(
        source,
        Reader::raw().autocommit_duration(Duration::from_millis(5)),
    );
    eventually("the first line", || run.table.len() == 1).await;
    append(&path, "b\n");
    eventually("an appended line", || run.table.len() == 2).await;
    let rotated = dir.path().join("app.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    append(&path, "c\n");
    eventually("the new file's line", || run.table.len() == 3).await;
    append(&rotated, "d\n");
    eventually("the old file's late line", || run.table.len() == 4).await;
    let started = std::time::Instant::now();
    let (table, _) = run.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown wakes the reader"
    );
    let mut lines = lines(&table);
    lines.sort();
    assert_eq!(lines, ["a", "b", "c", "d"]);
}
