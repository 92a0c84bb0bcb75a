//! `FileGlob`: the files matching a glob as partitions of one table, each resuming from
//! its own offset.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use intake_core::{Column, DataType, Error, ErrorPolicy, Offsets, Pipeline, Reader, Schema, Subscriber};
use intake_file::{FileError, FileFormat, FileGlob};
use support::{append, lines};

/// Every line of an append table, sorted (repeats kept).
fn sorted_lines(table: &intake_core::Table) -> Vec<String> {
    let mut lines = lines(table);
    lines.sort();
    lines
}

fn write_lines(path: &Path, lines: impl IntoIterator<Item = String>) {
    let text: String = lines.into_iter().map(|line| format!("{line}\n")).collect();
    append(path, text);
}

#[tokio::test]
async fn every_matching_file_is_a_partition_of_one_table() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("2024/jan")).unwrap();
    write_lines(&root.join("a.log"), ["a1".into(), "a2".into()]);
    write_lines(&root.join("2024/b.log"), ["b1".into()]);
    write_lines(
        &root.join("2024/jan/c.log"),
        ["c1".into(), "c2".into(), "c3".into()],
    );
    write_lines(&root.join("skipped.txt"), ["no".into()]);

    let files = FileGlob::new(root, "**/*.log", FileFormat::Raw).unwrap();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read_partitioned("logs", files, Reader::raw());
    pipeline.run().await.unwrap();

    assert_eq!(sorted_lines(&table), ["a1", "a2", "b1", "c1", "c2", "c3"]);
    let offsets: BTreeMap<String, serde_json::Value> = table.committed_offsets().into_iter().collect();
    let names: Vec<&str> = offsets.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["logs/2024%2Fb.log", "logs/2024%2Fjan%2Fc.log", "logs/a.log"]
    );
    assert_eq!(
        offsets["logs/a.log"]["position"], 6,
        "each file has its own offset"
    );
    assert_eq!(offsets["logs/2024%2Fjan%2Fc.log"]["position"], 9);
}

#[tokio::test]
async fn each_file_is_read_with_its_own_header() {
    let dir = tempfile::tempdir().unwrap();
    // The columns in a different order in each file.
    std::fs::write(dir.path().join("east.csv"), "key,genus\n1,manul\n2,felis\n").unwrap();
    std::fs::write(dir.path().join("west.csv"), "genus,key\nlynx,3\n").unwrap();
    let schema = Schema::new([
        Column::new("key", DataType::Int).primary_key(),
        Column::new("genus", DataType::String),
    ])
    .unwrap();
    let files = FileGlob::new(dir.path(), "*.csv", FileFormat::Csv).unwrap();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read_partitioned("cats", files, Reader::json(schema));
    pipeline.run().await.unwrap();

    let genus = |key: i64| {
        table.get(&key.into()).unwrap()["genus"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        (genus(1), genus(2), genus(3)),
        ("manul".into(), "felis".into(), "lynx".into())
    );
}

#[tokio::test]
async fn every_file_gets_the_configured_settings() {
    let dir = tempfile::tempdir().unwrap();
    write_lines(&dir.path().join("a.log"), ["short".into(), "x".repeat(64)]);
    write_lines(&dir.path().join("b.log"), ["y".repeat(64), "brief".into()]);
    let files = FileGlob::new(dir.path(), "*.log", FileFormat::Raw)
        .unwrap()
        .configure(|file| file.max_line_length(16));
    let mut pipeline = Pipeline::new();
    let table = pipeline.read_partitioned(
        "logs",
        files,
        Reader::raw().error_policy(ErrorPolicy::SkipAndReport),
    );
    let rejected = tokio::spawn(pipeline.rejected(8).collect::<Vec<_>>());
    pipeline.run().await.unwrap();
    assert_eq!(sorted_lines(&table), ["brief", "short"]);
    let mut sources: Vec<String> = rejected
        .await
        .unwrap()
        .iter()
        .map(|r| r.source_name().to_owned())
        .collect();
    sources.sort();
    assert_eq!(sources, ["logs/a.log", "logs/b.log"], "reported by partition");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_at_any_moment_then_a_resume_reads_every_line_of_every_file_once() {
    const FILES: usize = 3;
    const LINES: usize = 40_000;
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    for file in 0..FILES {
        let lines: Vec<String> = (0..LINES).map(|i| format!("{file}-{i:06}")).collect();
        write_lines(&dir.path().join(format!("part-{file}.log")), lines.clone());
        expected.extend(lines);
    }
    expected.sort();

    for stop_after in [1, 25_000, 90_000] {
        // The offsets of the last batch a sink would have recorded.
        let recorded = Arc::new(Mutex::new(Offsets::new()));
        let mut pipeline = Pipeline::new();
        let files = FileGlob::new(dir.path(), "*.log", FileFormat::Raw).unwrap();
        let first = pipeline.read_partitioned("logs", files, Reader::raw());
        let shutdown = pipeline.shutdown_handle();
        let seen = Arc::new(AtomicUsize::new(0));
        first.subscribe(Subscriber::new().on_batch({
            let (seen, recorded) = (seen.clone(), recorded.clone());
            move |batch| {
                *recorded.lock().unwrap() = batch.offsets().clone();
                if seen.fetch_add(batch.len(), Ordering::Relaxed) + batch.len() >= stop_after {
                    shutdown.shutdown();
                }
            }
        }));
        pipeline.run().await.unwrap();
        let read_first = lines(&first);
        assert!(
            read_first.len() < FILES * LINES,
            "stopped before the end ({stop_after})"
        );

        let offsets = recorded.lock().unwrap().clone();
        let mut pipeline = Pipeline::new().resume_from(offsets);
        let files = FileGlob::new(dir.path(), "*.log", FileFormat::Raw).unwrap();
        let second = pipeline.read_partitioned("logs", files, Reader::raw());
        pipeline.run().await.unwrap();

        let mut all = read_first;
        let stopped_at = all.len();
        all.extend(lines(&second));
        all.sort();
        assert_eq!(
            all.len(),
            FILES * LINES,
            "stopped after {stopped_at} rows ({stop_after})"
        );
        assert!(
            all == expected,
            "stopped after {stopped_at} rows ({stop_after}): lines repeated or lost"
        );
    }
}

#[tokio::test]
async fn files_resume_after_their_own_last_line_when_lines_were_appended() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    write_lines(&a, ["a1".into()]);
    write_lines(&b, ["b1".into(), "b2".into()]);

    let mut pipeline = Pipeline::new();
    let first = pipeline.read_partitioned(
        "logs",
        FileGlob::new(dir.path(), "*.log", FileFormat::Raw).unwrap(),
        Reader::raw(),
    );
    pipeline.run().await.unwrap();
    assert_eq!(sorted_lines(&first), ["a1", "b1", "b2"]);
    let offsets: Offsets = first.committed_offsets().into_iter().collect();

    write_lines(&a, ["a2".into(), "a3".into()]);
    write_lines(&b, ["b3".into()]);
    let mut pipeline = Pipeline::new().resume_from(offsets);
    let second = pipeline.read_partitioned(
        "logs",
        FileGlob::new(dir.path(), "*.log", FileFormat::Raw).unwrap(),
        Reader::raw(),
    );
    pipeline.run().await.unwrap();
    assert_eq!(sorted_lines(&second), ["a2", "a3", "b3"]);
}

#[test]
fn an_invalid_pattern_is_refused() {
    let error = FileGlob::new(".", "[unclosed", FileFormat::Raw).unwrap_err();
    assert!(matches!(error, FileError::InvalidPattern { .. }), "{error}");
}

#[test]
fn an_invalid_pattern_names_the_pattern_and_why_with_the_parser_error_as_source() {
    use std::error::Error as _;

    let error = FileGlob::new(".", "[unclosed", FileFormat::Raw).unwrap_err();
    let FileError::InvalidPattern { pattern, reason, .. } = &error else {
        panic!("{error}");
    };
    assert_eq!(pattern, "[unclosed");
    assert_eq!(reason, "unclosed character class; missing ']'");
    assert_eq!(
        error.to_string(),
        "invalid glob pattern `[unclosed`: unclosed character class; missing ']'"
    );
    let source = error.source().expect("the glob parser's error");
    assert!(
        source.to_string().contains("unclosed character class"),
        "{source}"
    );
}

#[tokio::test]
async fn a_missing_directory_fails_the_source_by_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let files = FileGlob::new(dir.path().join("missing"), "*.log", FileFormat::Raw).unwrap();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read_partitioned("logs", files, Reader::raw());
    let error = pipeline.run().await.unwrap_err();
    let Error::SourcesFailed(failures) = &error else {
        panic!("{error}");
    };
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].name(), "logs");
    assert!(
        error
            .to_string()
            .contains("cannot list its partitions: cannot list"),
        "{error}"
    );
    assert!(table.is_empty());
}

#[tokio::test]
async fn a_directory_without_matching_files_gives_an_empty_table() {
    let dir = tempfile::tempdir().unwrap();
    write_lines(&dir.path().join("notes.txt"), ["x".into()]);
    let files = FileGlob::new(dir.path(), "*.log", FileFormat::Raw).unwrap();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read_partitioned("logs", files, Reader::raw());
    pipeline.run().await.unwrap();
    assert!(table.is_empty());
}

/// A glob in follow mode that matches a file and its rotations (`app.log*`) would read
/// a file again once it is rotated onto a matched name: the pipeline says so when it
/// starts (docs/files.md), and not for a glob that does not follow.
#[tokio::test]
async fn a_following_glob_that_matches_rotated_names_is_warned_about() {
    let logs = support::logs();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("warned");
    std::fs::create_dir_all(&root).unwrap();
    append(&root.join("app.log"), "a\n");
    append(&root.join("app.log.1"), "old\n");
    for follow in [false, true] {
        let glob = FileGlob::new(&root, "app.log*", FileFormat::Raw)
            .unwrap()
            .configure(move |file| file.follow(follow));
        let mut pipeline = Pipeline::new();
        let _table = pipeline.read_partitioned("logs", glob, Reader::raw());
        let shutdown = pipeline.shutdown_handle();
        let running = tokio::spawn(pipeline.run());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        shutdown.shutdown();
        running.await.unwrap().unwrap();
        let warned = logs.text().lines().any(|line| {
            line.contains("WARN")
                && line.contains(&root.display().to_string())
                && line.contains("rotated=\"app.log.1\"")
        });
        assert_eq!(warned, follow, "follow {follow}: {}", logs.text());
    }
}
