//! `TableFileSink`: the file holds the table as of the last commit, rewritten atomically.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use intake_core::{
    BoxError, ChangeBatch, Column, DataType, Error, Pipeline, Reader, Schema, Sink, SourceContext, Time,
    source_fn,
};
use intake_file::TableFileSink;
use serde_json::{Value as Json, json};

fn schema() -> Schema {
    Schema::new([
        Column::new("key", DataType::Int).primary_key(),
        Column::new("genus", DataType::String),
        Column::new("weight", DataType::Float).nullable(),
    ])
    .unwrap()
}

/// Waits until the file at `path` reads `expected`; an error saying what it read if it
/// does not within five seconds.
async fn file_becomes(path: &Path, expected: &str) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let read = std::fs::read_to_string(path).unwrap_or_default();
        if read == expected {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{} reads {read:?}, not {expected:?}", path.display()).into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn temporary(path: &Path) -> PathBuf {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    temporary.into()
}

/// After every commit of a real pipeline (inserts, an update, deletes down to an empty
/// table, then a new row), both files hold exactly the table's rows, sorted by key,
/// and no temporary file is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_after_each_commit_equals_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("cats.jsonl");
    let csv = dir.path().join("cats.csv");
    // (JSON lines, CSV) after each commit.
    let states: Vec<(&str, &str)> = vec![
        (
            concat!(
                r#"{"key":1,"genus":"manul","weight":4.5}"#,
                "\n",
                r#"{"key":2,"genus":"felis, \"catus\"","weight":null}"#,
                "\n",
                r#"{"key":10,"genus":"lynx","weight":18.0}"#,
                "\n",
            ),
            "key,genus,weight\n1,manul,4.5\n2,\"felis, \"\"catus\"\"\",\n10,lynx,18.0\n",
        ),
        (
            concat!(
                r#"{"key":2,"genus":"felis\nsilvestris","weight":5.0}"#,
                "\n",
                r#"{"key":10,"genus":"lynx","weight":18.0}"#,
                "\n",
            ),
            "key,genus,weight\n2,\"felis\nsilvestris\",5.0\n10,lynx,18.0\n",
        ),
        ("", "key,genus,weight\n"),
        (
            concat!(r#"{"key":7,"genus":"caracal","weight":null}"#, "\n"),
            "key,genus,weight\n7,caracal,\n",
        ),
    ];

    let source = {
        let (jsonl, csv) = (jsonl.clone(), csv.clone());
        let states = states.clone();
        source_fn(move |ctx: SourceContext| async move {
            let reached = |commit: usize| {
                let (jsonl, csv) = (jsonl.clone(), csv.clone());
                let (json_state, csv_state) = states[commit];
                async move {
                    file_becomes(&jsonl, json_state).await?;
                    file_becomes(&csv, csv_state).await?;
                    for path in [&jsonl, &csv] {
                        if temporary(path).exists() {
                            return Err(BoxError::from(format!("{} left", temporary(path).display())));
                        }
                    }
                    Ok::<_, BoxError>(())
                }
            };
            ctx.next_json(json!({"key": 10, "genus": "lynx", "weight": 18.0}))
                .await?;
            ctx.next_json(json!({"key": 1, "genus": "manul", "weight": 4.5}))
                .await?;
            ctx.next_json(json!({"key": 2, "genus": "felis, \"catus\""}))
                .await?;
            ctx.commit().await?;
            reached(0).await?;
            ctx.next_json(json!({"key": 2, "genus": "felis\nsilvestris", "weight": 5.0}))
                .await?;
            ctx.delete(1).await?;
            ctx.commit().await?;
            reached(1).await?;
            ctx.delete(2).await?;
            ctx.delete(10).await?;
            ctx.commit().await?;
            reached(2).await?;
            ctx.next_json(json!({"key": 7, "genus": "caracal"})).await?;
            ctx.commit().await?;
            reached(3).await?;
            Ok(())
        })
    };
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("cats", source, Reader::json(schema()));
    table.sink("jsonl", TableFileSink::json_lines(&jsonl));
    table.sink("csv", TableFileSink::csv(&csv));
    pipeline.run().await.unwrap();

    assert_eq!(table.len(), 1);
    assert_eq!(std::fs::read_to_string(&jsonl).unwrap(), states[3].0);
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), states[3].1);
}

/// A reader polling the file while a pipeline rewrites it commit after commit always
/// finds a whole file: every row, all of one commit. Writing the file in place fails
/// this (the reader sees it empty or cut short).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_polling_the_file_always_finds_a_whole_commit() {
    const ROWS: usize = 400;
    const COMMITS: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("counters.jsonl");
    let schema = Schema::new([
        Column::new("key", DataType::Int).primary_key(),
        Column::new("n", DataType::Int),
        Column::new("padding", DataType::String),
    ])
    .unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (path, done) = (path.clone(), done.clone());
        std::thread::spawn(move || {
            let (mut reads, mut last) = (0, 0);
            while !done.load(Ordering::Acquire) {
                let Ok(text) = std::fs::read_to_string(&path) else {
                    assert_eq!(last, 0, "the file vanished after commit {last}");
                    continue;
                };
                reads += 1;
                let ns: Vec<u64> = text
                    .lines()
                    .map(|line| {
                        let row: Json = serde_json::from_str(line)
                            .unwrap_or_else(|e| panic!("a torn line {line:?}: {e}"));
                        row["n"].as_u64().unwrap()
                    })
                    .collect();
                assert!(text.is_empty() || text.ends_with('\n'), "a file cut short");
                if last > 0 || !ns.is_empty() {
                    assert_eq!(ns.len(), ROWS, "a file with {} rows", ns.len());
                    assert!(ns.iter().all(|&n| n == ns[0]), "rows of two commits: {ns:?}");
                    assert!(ns[0] >= last, "went back from commit {last} to {}", ns[0]);
                    last = ns[0];
                }
            }
            reads
        })
    };

    let source = {
        let path = path.clone();
        source_fn(move |ctx: SourceContext| async move {
            for n in 1..=COMMITS {
                for key in 0..ROWS {
                    ctx.next_json(json!({"key": key, "n": n, "padding": "x".repeat(40)}))
                        .await?;
                }
                ctx.commit().await?;
                // Wait for the rewrite, so the reader races every one of them.
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    if text
                        .lines()
                        .next()
                        .is_some_and(|l| l.contains(&format!("\"n\":{n},")))
                    {
                        break;
                    }
                    if Instant::now() > deadline {
                        return Err(format!("commit {n} was not written").into());
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                if temporary(&path).exists() {
                    return Err(format!("the temporary file is left after commit {n}").into());
                }
            }
            Ok(())
        })
    };
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("counters", source, Reader::json(schema));
    table.sink("jsonl", TableFileSink::json_lines(&path));
    let run = pipeline.run().await;
    done.store(true, Ordering::Release);
    let reads = reader.join().unwrap();
    run.unwrap();
    assert!(reads > COMMITS, "the reader read the file only {reads} times");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), ROWS);
    assert!(text.contains(&format!("\"n\":{COMMITS},")));
}

/// JSON lines keep the schema's column order, not the alphabetical order of a JSON
/// map; rows are sorted by key, not by arrival.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_keep_the_schema_s_column_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ordered.jsonl");
    let schema = Schema::new([
        Column::new("zeta", DataType::Int).primary_key(),
        Column::new("alpha", DataType::String),
        Column::new("mid", DataType::Bool),
        Column::new("at", DataType::Timestamp).nullable(),
    ])
    .unwrap();
    let source = source_fn(|ctx: SourceContext| async move {
        for zeta in [30, 4, 200] {
            ctx.next_json(json!({"zeta": zeta, "alpha": "a", "mid": true, "at": "2024-01-02T03:04:05Z"}))
                .await?;
        }
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("ordered", source, Reader::json(schema));
    table.sink("jsonl", TableFileSink::json_lines(&path));
    pipeline.run().await.unwrap();
    let row = |zeta: i64| format!(r#"{{"zeta":{zeta},"alpha":"a","mid":true,"at":"2024-01-02T03:04:05Z"}}"#);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{}\n{}\n{}\n", row(4), row(30), row(200))
    );
}

/// Every batch of a table that ran: its snapshot if `snapshot`, else its commits.
async fn batches(rows: Vec<Json>) -> (ChangeBatch, Vec<ChangeBatch>) {
    let source = source_fn(move |ctx: SourceContext| async move {
        for row in rows {
            ctx.next_json(row).await?;
        }
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("cats", source, Reader::json(schema()));
    let commits = tokio::spawn(table.changes().collect::<Vec<_>>());
    pipeline.run().await.unwrap();
    let snapshot = table.changes().next().await.unwrap();
    assert!(snapshot.is_snapshot());
    (snapshot, commits.await.unwrap())
}

/// A snapshot batch is the whole table: it replaces the rows folded before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_batch_replaces_the_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cats.jsonl");
    let (snapshot, _) = batches(vec![
        json!({"key": 1, "genus": "manul"}),
        json!({"key": 2, "genus": "felis"}),
    ])
    .await;
    let (_, commits) = batches(vec![json!({"key": 9, "genus": "lynx"})]).await;

    let mut sink = TableFileSink::json_lines(&path);
    assert_eq!(sink.resume(None).await.unwrap(), None);
    for batch in &commits {
        sink.write_batch(batch).await.unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "{\"key\":9,\"genus\":\"lynx\",\"weight\":null}\n"
    );
    sink.write_batch(&snapshot).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        concat!(
            "{\"key\":1,\"genus\":\"manul\",\"weight\":null}\n",
            "{\"key\":2,\"genus\":\"felis\",\"weight\":null}\n",
        )
    );
    sink.close().await.unwrap();
    assert!(!sink.temporary_path().exists());
}

/// A previous run's file never outlives the table: `resume(None)` (a table with no
/// commit) rewrites it as empty at once; after `resume(Some(_))` with no batch (a
/// restored table with no rows sends no snapshot), `close` writes the final state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_run_s_rows_are_replaced_on_resume_or_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cats.jsonl");
    let old = "{\"key\":1,\"genus\":\"from the last run\",\"weight\":null}\n";

    std::fs::write(&path, old).unwrap();
    let mut sink = TableFileSink::json_lines(&path);
    assert_eq!(sink.resume(None).await.unwrap(), None);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "");

    std::fs::write(&path, old).unwrap();
    let mut sink = TableFileSink::csv(&path);
    assert_eq!(sink.resume(Some(Time::from(3))).await.unwrap(), None);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), old);
    sink.close().await.unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "");

    // A sink that wrote every batch has nothing left to write on close.
    let (_, commits) = batches(vec![json!({"key": 5, "genus": "lynx", "weight": 1.5})]).await;
    let mut sink = TableFileSink::csv(&path);
    sink.resume(None).await.unwrap();
    for batch in &commits {
        sink.write_batch(batch).await.unwrap();
    }
    std::fs::write(&path, "changed behind the sink's back").unwrap();
    sink.close().await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "changed behind the sink's back"
    );
}

/// A file that cannot be written fails the pipeline with the sink's error, naming
/// the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_in_a_missing_directory_fails_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing/cats.jsonl");
    let source = source_fn(|ctx: SourceContext| async move {
        ctx.next_json(json!({"key": 1, "genus": "manul"})).await?;
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("cats", source, Reader::json(schema()));
    table.sink("latest", TableFileSink::json_lines(&path));
    match pipeline.run().await {
        Err(Error::SinkFailed { name, cause, .. }) => {
            assert_eq!(name, "latest");
            assert!(cause.to_string().contains("missing"), "{cause}");
        }
        other => panic!("{other:?}"),
    }
}

/// One commit per row, as the batches a table emitted.
async fn one_commit_each(rows: Vec<Json>) -> Vec<ChangeBatch> {
    let source = source_fn(move |ctx: SourceContext| async move {
        for row in rows {
            ctx.next_json(row).await?;
            ctx.commit().await?;
        }
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("cats", source, Reader::json(schema()));
    let commits = tokio::spawn(table.changes().collect::<Vec<_>>());
    pipeline.run().await.unwrap();
    commits.await.unwrap()
}

/// With `min_interval`, a commit within the interval of the last rewrite is written
/// by one rewrite when the interval is over (with the commits after it), never
/// left out; `close` writes the final state at once.
#[tokio::test(start_paused = true)]
async fn with_a_min_interval_commits_are_written_once_it_is_over_and_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cats.jsonl");
    let commits = one_commit_each((1..=4).map(|key| json!({"key": key, "genus": "felis"})).collect()).await;
    assert_eq!(commits.len(), 4);
    let rows = |keys: std::ops::RangeInclusive<i64>| {
        keys.map(|key| format!("{{\"key\":{key},\"genus\":\"felis\",\"weight\":null}}\n"))
            .collect::<String>()
    };
    let read = || std::fs::read_to_string(&path).unwrap();

    let mut sink = TableFileSink::json_lines(&path).min_interval(Duration::from_secs(1));
    sink.resume(None).await.unwrap();
    assert_eq!(read(), "");
    sink.write_batch(&commits[0]).await.unwrap();
    assert_eq!(read(), "", "rewritten within the interval");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(read(), rows(1..=1), "not rewritten once the interval was over");

    sink.write_batch(&commits[1]).await.unwrap();
    sink.write_batch(&commits[2]).await.unwrap();
    assert_eq!(read(), rows(1..=1));
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(read(), rows(1..=3));

    sink.write_batch(&commits[3]).await.unwrap();
    assert_eq!(read(), rows(1..=3));
    sink.close().await.unwrap();
    assert_eq!(read(), rows(1..=4), "close did not write the final state");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(read(), rows(1..=4));
    assert!(!sink.temporary_path().exists());
}
