//! The file source: formats and bad input, follow mode, resume.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use intake_core::{Column, DataType, ErrorPolicy, Pipeline, Reader, Rejected, Schema, Table};
use intake_file::FileSource;

fn schema() -> Schema {
    Schema::new([
        Column::new("key", DataType::Int).primary_key(),
        Column::new("genus", DataType::String),
        Column::new("weight", DataType::Float).nullable(),
    ])
    .unwrap()
}

fn reader() -> Reader {
    Reader::json(schema())
        .error_policy(ErrorPolicy::SkipAndReport)
        .autocommit_duration(Duration::from_millis(10))
}

/// Reads `source` to its end; the table and every rejected message.
async fn read_all(source: FileSource, reader: Reader) -> (Table, Vec<Rejected>) {
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("file", source, reader);
    let rejected = tokio::spawn(pipeline.rejected(64).collect::<Vec<_>>());
    pipeline.run().await.unwrap();
    (table, rejected.await.unwrap())
}

/// `key -> (genus, weight)` of every row.
fn rows(table: &Table) -> Vec<(i64, String, Option<f64>)> {
    table
        .snapshot()
        .rows()
        .iter()
        .map(|(_, row)| {
            (
                row.get("key").and_then(|v| v.as_int()).unwrap(),
                row.get("genus").and_then(|v| v.as_str()).unwrap().to_owned(),
                row.get("weight").and_then(|v| v.as_float()),
            )
        })
        .collect()
}

fn row(key: i64, genus: &str, weight: Option<f64>) -> (i64, String, Option<f64>) {
    (key, genus.to_owned(), weight)
}

fn reasons(rejected: &[Rejected]) -> Vec<String> {
    rejected
        .iter()
        .map(|r| format!("{}: {}", r.reason(), String::from_utf8_lossy(r.raw())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_skip_empty_lines_and_bom_and_report_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cats.jsonl");
    let mut content = b"\xEF\xBB\xBF{\"key\": 1, \"genus\": \"manul\"}\n\n  \n{bad json\n".to_vec();
    content.extend_from_slice(b"{\"key\": 2, \"genus\": \"felis\", \"weight\": 4.5}\r\n");
    content.extend_from_slice(b"{\"key\": 3, \"genus\": \"\xFF\xFE\"}\n");
    content.extend_from_slice(b"{\"key\": 4, \"genus\": \"lynx\"}"); // no final newline
    std::fs::write(&path, content).unwrap();

    let (table, rejected) = read_all(FileSource::json_lines(&path), reader()).await;

    assert_eq!(
        rows(&table),
        [
            row(1, "manul", None),
            row(2, "felis", Some(4.5)),
            row(4, "lynx", None)
        ]
    );
    let reasons = reasons(&rejected);
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("malformed JSON") && reasons[0].contains("{bad json"));
    assert!(reasons[1].contains("malformed JSON"), "{reasons:?}");
    assert_eq!(
        rejected[1].raw().as_ref(),
        b"{\"key\": 3, \"genus\": \"\xFF\xFE\"}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_is_typed_by_the_schema_and_bad_rows_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cats.csv");
    let mut content = b"\xEF\xBB\xBFkey,genus,weight,ignored\r\n".to_vec();
    content.extend_from_slice(b"1,manul,,x\n");
    content.extend_from_slice(b"\n");
    content.extend_from_slice(b"2,\"felis, \"\"the\"\"\n catus\",4.5,y\n");
    content.extend_from_slice(b"x3,lynx,1.0,z\n");
    content.extend_from_slice(b"4,too,few\n");
    content.extend_from_slice(b"5,\"\xFF\",1,z\n");
    content.extend_from_slice(b"6,puma,,\n");
    content.extend_from_slice(b"7,leo,heavy,\n");
    content.extend_from_slice(b",nokey,1,\n");
    std::fs::write(&path, content).unwrap();

    let (table, rejected) = read_all(FileSource::csv(&path), reader()).await;

    assert_eq!(
        rows(&table),
        [
            row(1, "manul", None),
            row(2, "felis, \"the\"\n catus", Some(4.5)),
            row(6, "puma", None)
        ]
    );
    let reasons = reasons(&rejected);
    assert_eq!(reasons.len(), 5, "{reasons:?}");
    assert!(
        reasons[0].contains("field `key` should be int, found a string"),
        "{reasons:?}"
    );
    assert!(reasons[0].contains("x3"), "{reasons:?}");
    assert!(
        reasons[1].contains("line 7: the record has 3 field(s), but the header has 4: 4,too,few"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].contains("field `genus` is not valid UTF-8"),
        "{reasons:?}"
    );
    assert!(
        reasons[3].contains("field `weight` should be float"),
        "{reasons:?}"
    );
    assert!(reasons[4].contains("field `key` is null"), "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tsv_and_a_csv_row_like_pathways() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cats.tsv");
    std::fs::write(&path, "genus\tkey\nmanul\t1\n").unwrap();
    let (table, rejected) = read_all(FileSource::tsv(&path), reader()).await;
    assert!(rejected.is_empty());
    assert_eq!(rows(&table), [row(1, "manul", None)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_lines_report_invalid_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.txt");
    std::fs::write(&path, b"first\n\nsecond \xFF\nthird\r\n").unwrap();
    let reader = Reader::raw().error_policy(ErrorPolicy::SkipAndReport);
    let (table, rejected) = read_all(FileSource::raw(&path), reader).await;
    assert_eq!(lines(&table), ["first", "third"]);
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].raw().as_ref(), b"second \xFF");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_file_fails_the_source() {
    let mut pipeline = Pipeline::new();
    let _table = pipeline.read(
        "file",
        FileSource::json_lines("/nonexistent/cats.jsonl"),
        reader(),
    );
    let error = pipeline.run().await.unwrap_err().to_string();
    assert!(error.contains("cannot open /nonexistent/cats.jsonl"), "{error}");
}

/// Regression: a FIFO given as the path blocked the reading thread in `open` (no
/// writer) for ever: `run` returned only at the shutdown deadline, and dropping the
/// runtime (the end of `#[tokio::main]`) then hung, waiting for that thread.
#[cfg(unix)]
#[test]
fn a_fifo_or_a_directory_fails_the_source_and_nothing_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    for (path, kind) in [(fifo, "a FIFO"), (dir.path().to_path_buf(), "a directory")] {
        let (done, finished) = std::sync::mpsc::channel();
        let shown = path.display().to_string();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            let result = runtime.block_on(async {
                let mut pipeline = Pipeline::new();
                let _table = pipeline.read("file", FileSource::raw(&path).follow(true), Reader::raw());
                pipeline.run().await.map_err(|e| e.to_string())
            });
            drop(runtime);
            let _ = done.send(result);
        });
        let result = finished
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("reading {kind} still runs (or the runtime cannot drop) after 10 s"));
        let error = result.unwrap_err();
        assert!(
            error.contains(&format!("{shown} is not a regular file ({kind})")),
            "{error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_under_the_fail_policy_fails_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cats.csv");
    std::fs::write(&path, "key,genus\n1,manul\nx,felis\n").unwrap();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("file", FileSource::csv(&path), Reader::json(schema()));
    let error = pipeline.run().await.unwrap_err().to_string();
    assert!(error.contains("field `key` should be int"), "{error}");
    assert_eq!(table.len(), 1);
}

/// The `data` column of a raw table, in insertion order.
fn lines(table: &Table) -> Vec<String> {
    let mut rows: Vec<_> = table.snapshot().rows().to_vec();
    rows.sort_by_key(|(key, _)| key.generated_id());
    rows.iter()
        .map(|(_, row)| row.get("data").and_then(|v| v.as_str()).unwrap().to_owned())
        .collect()
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Follows the raw lines of `path` into a table, committing every 5 ms; returns the
/// table, a shutdown handle and the running pipeline.
fn follow(
    path: &Path,
    poll_interval: Duration,
) -> (
    Table,
    intake_core::ShutdownHandle,
    tokio::task::JoinHandle<Result<(), intake_core::Error>>,
) {
    let mut pipeline = Pipeline::new();
    let source = FileSource::raw(path).follow(true).poll_interval(poll_interval);
    let reader = Reader::raw().autocommit_duration(Duration::from_millis(5));
    let table = pipeline.read("log", source, reader);
    let shutdown = pipeline.shutdown_handle();
    (table, shutdown, tokio::spawn(pipeline.run()))
}

fn append(path: &Path, text: &str) {
    let mut file = OpenOptions::new().append(true).create(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_mode_through_append_partial_line_truncation_and_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    append(&path, "a\nb\n");

    let (table, shutdown, running) = follow(&path, Duration::from_millis(50));

    eventually("the first lines", || table.len() == 2).await;

    append(&path, "c\npart");
    eventually("an appended line", || table.len() == 3).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(lines(&table), ["a", "b", "c"], "a partial line is not read");
    append(&path, "ial\n");
    eventually("the completed line", || table.len() == 4).await;

    // Truncated and rewritten shorter: read again from the start.
    std::fs::write(&path, "d\n").unwrap();
    eventually("the line after truncation", || table.len() == 5).await;

    // Rotated: the writer still finishes a line in the old file, then a new file
    // appears at the path.
    let rotated = dir.path().join("app.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    append(&rotated, "e\n");
    tokio::time::sleep(Duration::from_millis(20)).await;
    append(&path, "f\n");
    eventually("the lines around the rotation", || table.len() == 7).await;
    append(&path, "g\n");
    eventually("a line appended to the new file", || table.len() == 8).await;

    tokio::time::sleep(Duration::from_millis(150)).await;
    shutdown.shutdown();
    running.await.unwrap().unwrap();
    assert_eq!(
        lines(&table),
        ["a", "b", "c", "partial", "d", "e", "f", "g"],
        "each line exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_mode_waits_for_the_file_to_appear() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("later.log");
    let (table, shutdown, running) = follow(&path, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_millis(50)).await;
    append(&path, "hello\n");
    eventually("the line of the new file", || table.len() == 1).await;
    shutdown.shutdown();
    running.await.unwrap().unwrap();
}

/// Reads `path` once and returns the offset committed for it.
async fn committed_offset(source: FileSource, reader: Reader) -> (Table, serde_json::Value) {
    let (table, _) = read_all(source, reader).await;
    let offsets = table.committed_offsets();
    assert_eq!(offsets.len(), 1, "{offsets:?}");
    assert_eq!(offsets[0].0, "file");
    (table, offsets[0].1.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_continues_after_the_committed_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cats.csv");
    std::fs::write(&path, "key,genus\n1,manul\n2,felis\n").unwrap();
    let (_, offset) = committed_offset(FileSource::csv(&path).offset_every(1), reader()).await;
    assert_eq!(offset["position"], 26);
    assert_eq!(offset["line"], 3);

    append(&path, "3,lynx\n4,puma\n");
    let (table, rejected) = read_all(FileSource::csv(&path), reader().resume_from(offset.clone())).await;
    assert!(
        rejected.is_empty(),
        "the header was read again: {:?}",
        reasons(&rejected)
    );
    assert_eq!(rows(&table), [row(3, "lynx", None), row(4, "puma", None)]);

    // Nothing new: nothing read.
    let (_, offset) = committed_offset(FileSource::csv(&path), reader().resume_from(offset)).await;
    let (table, _) = read_all(FileSource::csv(&path), reader().resume_from(offset)).await;
    assert!(table.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_reads_a_replaced_or_truncated_file_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cats.jsonl");
    let lines = "{\"key\": 1, \"genus\": \"manul\"}\n{\"key\": 2, \"genus\": \"felis\"}\n";
    std::fs::write(&path, lines).unwrap();
    let (_, offset) = committed_offset(FileSource::json_lines(&path), reader()).await;

    // Replaced by another file, longer than the offset.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, format!("{{\"key\": 5, \"genus\": \"leo\"}}\n{lines}")).unwrap();
    let (table, _) = read_all(
        FileSource::json_lines(&path),
        reader().resume_from(offset.clone()),
    )
    .await;
    assert_eq!(table.len(), 3, "a replaced file is read from its start");

    // The same file, truncated and rewritten shorter than the offset.
    std::fs::write(&path, "{\"key\": 9, \"genus\": \"x\"}\n").unwrap();
    let (table, _) = read_all(
        FileSource::json_lines(&path),
        reader().resume_from(offset.clone()),
    )
    .await;
    assert_eq!(rows(&table), [row(9, "x", None)]);

    // An offset that no FileSource reported is an error, not a silent restart.
    let mut pipeline = Pipeline::new();
    let _t = pipeline.read(
        "file",
        FileSource::json_lines(&path),
        reader().resume_from(serde_json::json!(7)),
    );
    assert!(
        pipeline
            .run()
            .await
            .unwrap_err()
            .to_string()
            .contains("no `position`")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_mode_is_woken_by_notifications_not_polling() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    append(&path, "a\n");
    // With a poll interval this long, only a file-system notification can wake it.
    let (table, shutdown, running) = follow(&path, Duration::from_secs(60));
    eventually("the first line", || table.len() == 1).await;
    let started = Instant::now();
    append(&path, "b\n");
    eventually("the appended line", || table.len() == 2).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    // Shutdown wakes the waiting reader too.
    let started = Instant::now();
    shutdown.shutdown();
    running.await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_beyond_max_line_length_are_reported_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cats.jsonl");
    let long = format!("{{\"key\": 2, \"genus\": \"{}\"}}\n", "x".repeat(200_000));
    std::fs::write(
        &path,
        format!("{{\"key\": 1, \"genus\": \"manul\"}}\n{long}{{\"key\": 3, \"genus\": \"lynx\"}}\n{long}"),
    )
    .unwrap();
    let source = FileSource::json_lines(&path).max_line_length(100);
    let (table, rejected) = read_all(source, reader()).await;
    assert_eq!(rows(&table), [row(1, "manul", None), row(3, "lynx", None)]);
    let reasons = reasons(&rejected);
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].contains("line 2: the line is 200024 bytes long, beyond max_line_length"),
        "{reasons:?}"
    );
    assert!(reasons[0].len() < 400, "only the start of the line is kept");

    // Raw lines too: the long lines are reported, the others kept.
    let source = FileSource::raw(&path).max_line_length(100);
    let (table, rejected) = read_all(source, Reader::raw().error_policy(ErrorPolicy::SkipAndReport)).await;
    assert_eq!(table.len(), 2);
    assert_eq!(rejected.len(), 2);
}
