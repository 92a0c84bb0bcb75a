//! File sinks across restarts: `open` continues a file, `resume` cuts it back to whole
//! commits, and the file ends up with every commit exactly once, whatever a crash left.
//!
//! The batches come from a real pipeline (`Table::changes`); the sinks are driven
//! through the `Sink` trait as the pipeline drives them.

use std::io::Write;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use intake_core::{
    ChangeBatch, Column, DataType, Pipeline, Reader, Schema, Sink, SourceContext, Time, source_fn,
};
use intake_file::{CsvSink, JsonLinesSink};
use proptest::prelude::*;
use serde_json::json;

const ENTRY: usize = 24;

fn schema() -> Schema {
    Schema::new([
        Column::new("key", DataType::Int).primary_key(),
        Column::new("genus", DataType::String),
        Column::new("weight", DataType::Float).nullable(),
    ])
    .unwrap()
}

/// `n` commits of a real pipeline (inserts, updates, deletes; strings CSV must quote),
/// and the table after them.
async fn commits_of(schema: Schema, n: i64) -> (Vec<ChangeBatch>, intake_core::Table) {
    let source = source_fn(move |ctx: SourceContext| async move {
        for i in 0..n {
            ctx.next_json(
                json!({"key": i % 4, "genus": format!("felis \"{i}\",\nline"), "weight": i as f64 / 3.0}),
            )
            .await?;
            ctx.next_json(json!({"key": 10 + i, "genus": "manul", "weight": null}))
                .await?;
            if i % 3 == 2 {
                ctx.delete(10 + i - 1).await?;
            }
            ctx.commit().await?;
        }
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("cats", source, Reader::json(schema));
    let changes = tokio::spawn(table.changes().collect::<Vec<_>>());
    pipeline.run().await.unwrap();
    let batches = changes.await.unwrap();
    assert_eq!(batches.len(), n as usize);
    (batches, table)
}

async fn commits(n: i64) -> Vec<ChangeBatch> {
    commits_of(schema(), n).await.0
}

/// The two sinks, so every test runs on both.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Csv,
    JsonLines,
}

impl Kind {
    fn file(self, dir: &Path, name: &str) -> PathBuf {
        dir.join(match self {
            Kind::Csv => format!("{name}.csv"),
            Kind::JsonLines => format!("{name}.jsonl"),
        })
    }

    async fn open(self, path: &Path) -> std::io::Result<Box<dyn Sink>> {
        Ok(match self {
            Kind::Csv => Box::new(CsvSink::open(path).await?),
            Kind::JsonLines => Box::new(JsonLinesSink::open(path).await?),
        })
    }

    async fn create(self, path: &Path) -> std::io::Result<Box<dyn Sink>> {
        Ok(match self {
            Kind::Csv => Box::new(CsvSink::create(path).await?),
            Kind::JsonLines => Box::new(JsonLinesSink::create(path).await?),
        })
    }
}

const KINDS: [Kind; 2] = [Kind::Csv, Kind::JsonLines];

fn commits_file(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".commits");
    name.into()
}

/// The (time, end) entries of a commits file, as documented in docs/files.md.
fn entries(path: &Path) -> Vec<(u64, u64)> {
    let bytes = std::fs::read(commits_file(path)).unwrap();
    bytes
        .chunks_exact(ENTRY)
        .map(|entry| {
            let word = |at: usize| u64::from_le_bytes(entry[at..at + 8].try_into().unwrap());
            (word(0), word(8))
        })
        .collect()
}

async fn write(sink: &mut dyn Sink, batches: &[ChangeBatch]) {
    for batch in batches {
        sink.write_batch(batch).await.unwrap();
    }
}

/// The files a sink writes for `batches` in one run without a crash.
async fn reference(kind: Kind, dir: &Path, batches: &[ChangeBatch]) -> (Vec<u8>, Vec<u8>) {
    let path = kind.file(dir, "reference");
    let mut sink = kind.create(&path).await.unwrap();
    assert_eq!(sink.resume(None).await.unwrap(), None);
    write(&mut *sink, batches).await;
    sink.close().await.unwrap();
    (
        std::fs::read(&path).unwrap(),
        std::fs::read(commits_file(&path)).unwrap(),
    )
}

fn assert_files(path: &Path, expected: &(Vec<u8>, Vec<u8>)) {
    let output = std::fs::read(path).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output),
        String::from_utf8_lossy(&expected.0),
        "{}",
        path.display()
    );
    assert_eq!(std::fs::read(commits_file(path)).unwrap(), expected.1);
}

fn append(path: &Path, bytes: &[u8]) {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn time(batch: &ChangeBatch) -> Option<Time> {
    Some(batch.time())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_cuts_a_half_written_commit_and_later_batches_append_after_it() {
    let batches = commits(5).await;
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let expected = reference(kind, dir.path(), &batches).await;
        let path = kind.file(dir.path(), "out");

        let mut sink = kind.open(&path).await.unwrap();
        assert_eq!(sink.resume(None).await.unwrap(), None);
        write(&mut *sink, &batches[..3]).await;
        drop(sink);
        // The process died writing commit 4: part of its rows, and part of its entry.
        let ends = entries(&expected_path(dir.path(), kind));
        let (end_3, end_4) = (ends[2].1 as usize, ends[3].1 as usize);
        let partial = &expected.0[end_3..(end_3 + end_4) / 2];
        append(&path, partial);
        append(&path, b"\"half a line");
        append(&commits_file(&path), &[7; 10]);

        // The table was restored to commit 4: the sink holds only up to commit 3.
        let mut sink = kind.open(&path).await.unwrap();
        assert_eq!(
            sink.resume(time(&batches[3])).await.unwrap(),
            time(&batches[2]),
            "{kind:?}"
        );
        write(&mut *sink, &batches[3..]).await;
        sink.close().await.unwrap();
        assert_files(&path, &expected);
    }
}

fn expected_path(dir: &Path, kind: Kind) -> PathBuf {
    kind.file(dir, "reference")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_to_an_older_table_time_cuts_back_to_its_commit() {
    let batches = commits(5).await;
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let expected = reference(kind, dir.path(), &batches[..2]).await;
        let path = kind.file(dir.path(), "out");
        let mut sink = kind.open(&path).await.unwrap();
        write(&mut *sink, &batches).await;
        drop(sink);

        let mut sink = kind.open(&path).await.unwrap();
        assert_eq!(sink.resume(time(&batches[1])).await.unwrap(), time(&batches[1]));
        sink.close().await.unwrap();
        assert_files(&path, &expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_to_no_commit_empties_the_file_and_the_csv_header_is_written_again() {
    let batches = commits(3).await;
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let expected = reference(kind, dir.path(), &batches).await;
        let path = kind.file(dir.path(), "out");
        let mut sink = kind.open(&path).await.unwrap();
        write(&mut *sink, &batches).await;
        drop(sink);

        let mut sink = kind.open(&path).await.unwrap();
        assert_eq!(sink.resume(None).await.unwrap(), None);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        assert_eq!(std::fs::metadata(commits_file(&path)).unwrap().len(), 0);
        write(&mut *sink, &batches).await;
        sink.close().await.unwrap();
        assert_files(&path, &expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_after_a_clean_stop_continues_the_file_with_one_csv_header() {
    let batches = commits(5).await;
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let expected = reference(kind, dir.path(), &batches).await;
        let path = kind.file(dir.path(), "out");
        for run in [&batches[..2], &batches[2..3], &batches[3..]] {
            let mut sink = kind.open(&path).await.unwrap();
            let held = batches.iter().take_while(|b| b.time() < run[0].time()).last();
            assert_eq!(
                sink.resume(held.and_then(time)).await.unwrap(),
                held.and_then(time)
            );
            write(&mut *sink, run).await;
            sink.close().await.unwrap();
        }
        assert_files(&path, &expected);
    }
    let dir = tempfile::tempdir().unwrap();
    let (csv, _) = reference(Kind::Csv, dir.path(), &batches).await;
    let csv = String::from_utf8(csv).unwrap();
    assert_eq!(csv.matches("key,genus,weight,time,diff").count(), 1, "{csv}");
    assert!(csv.starts_with("key,genus,weight,time,diff\n"), "{csv}");
}

/// The pipeline calls `resume` before the first batch; a sink written without it
/// still keeps every whole commit and drops a half-written one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_batch_without_resume_keeps_the_whole_commits_and_drops_a_torn_one() {
    let batches = commits(4).await;
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let expected = reference(kind, dir.path(), &batches).await;
        let path = kind.file(dir.path(), "out");
        let mut sink = kind.open(&path).await.unwrap();
        write(&mut *sink, &batches[..2]).await;
        drop(sink);
        append(&path, b"{\"key\": 1, \"gen");

        let mut sink = kind.open(&path).await.unwrap();
        write(&mut *sink, &batches[2..]).await;
        sink.close().await.unwrap();
        assert_files(&path, &expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_starts_over_and_a_snapshot_batch_is_written_as_insertions_at_its_time() {
    let (batches, table) = commits_of(schema(), 3).await;
    let snapshot = table.changes().next().await.unwrap();
    assert!(snapshot.is_snapshot());
    assert_eq!(snapshot.time(), batches[2].time());
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let path = kind.file(dir.path(), "out");
        let mut sink = kind.open(&path).await.unwrap();
        write(&mut *sink, &batches).await;
        drop(sink);

        // A created sink holds nothing whatever the file held, so the pipeline sends
        // it the restored table as a snapshot.
        let mut sink = kind.create(&path).await.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        assert_eq!(std::fs::metadata(commits_file(&path)).unwrap().len(), 0);
        assert_eq!(sink.resume(time(&batches[2])).await.unwrap(), None);
        sink.write_batch(&snapshot).await.unwrap();
        sink.close().await.unwrap();
        assert_eq!(entries(&path).len(), 1);
        assert_eq!(entries(&path)[0].0, snapshot.time().as_u64());

        let text = std::fs::read_to_string(&path).unwrap();
        let t = snapshot.time().as_u64();
        let rows: Vec<serde_json::Value> = match kind {
            Kind::JsonLines => text.lines().map(|l| serde_json::from_str(l).unwrap()).collect(),
            Kind::Csv => csv::Reader::from_reader(text.as_bytes())
                .records()
                .map(|r| {
                    let r = r.unwrap();
                    json!({"key": r[0].parse::<i64>().unwrap(), "time": r[3].parse::<u64>().unwrap(), "diff": r[4].parse::<i64>().unwrap()})
                })
                .collect(),
        };
        assert_eq!(rows.len(), table.len());
        for row in rows {
            assert_eq!(
                (row["time"].as_u64(), row["diff"].as_i64()),
                (Some(t), Some(1)),
                "{row}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_refuses_a_file_with_rows_but_no_commits_file() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let path = kind.file(dir.path(), "out");
        std::fs::write(&path, "key,time,diff\n1,1,1\n").unwrap();
        let Err(error) = kind.open(&path).await else {
            panic!("{kind:?} opened a file it cannot know the commits of");
        };
        let error = error.to_string();
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(error.contains(".commits") && error.contains("create"), "{error}");
        // The file is left as it was.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "key,time,diff\n1,1,1\n");
        assert!(!commits_file(&path).exists());

        // An empty or missing file is a fresh start.
        std::fs::write(&path, "").unwrap();
        let mut sink = kind.open(&path).await.unwrap();
        assert_eq!(sink.resume(None).await.unwrap(), None);
        assert!(commits_file(&path).exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_ending_past_the_end_of_the_file_is_an_error_naming_the_commits_file() {
    let batches = commits(3).await;
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let path = kind.file(dir.path(), "out");
        let mut sink = kind.open(&path).await.unwrap();
        write(&mut *sink, &batches).await;
        drop(sink);
        let ends = entries(&path);
        truncate(&path, ends[1].1 + 1);
        let before = std::fs::read(&path).unwrap();

        let mut sink = kind.open(&path).await.unwrap();
        let error = sink.resume(time(&batches[2])).await.unwrap_err().to_string();
        assert!(
            error.contains(&commits_file(&path).display().to_string()),
            "{error}"
        );
        assert!(error.contains("corrupt"), "{error}");
        // Nothing is cut on a guess.
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(entries(&path).len(), 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_not_after_the_file_s_last_commit_is_an_error() {
    let batches = commits(3).await;
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let path = kind.file(dir.path(), "out");
        let mut sink = kind.open(&path).await.unwrap();
        write(&mut *sink, &batches).await;
        drop(sink);

        let mut sink = kind.open(&path).await.unwrap();
        assert_eq!(sink.resume(time(&batches[2])).await.unwrap(), time(&batches[2]));
        let error = sink.write_batch(&batches[1]).await.unwrap_err().to_string();
        assert!(error.contains("not after"), "{error}");
        assert_eq!(entries(&path).len(), 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continued_csv_file_with_other_columns_is_an_error() {
    let batches = commits(2).await;
    let other = Schema::new([
        Column::new("key", DataType::Int).primary_key(),
        Column::new("genus", DataType::String),
        Column::new("mass", DataType::Float).nullable(),
    ])
    .unwrap();
    let (others, _) = commits_of(other, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let path = Kind::Csv.file(dir.path(), "out");
    let mut sink = CsvSink::open(&path).await.unwrap();
    write(&mut sink, &batches).await;
    drop(sink);

    let mut sink = CsvSink::open(&path).await.unwrap();
    assert_eq!(sink.resume(time(&batches[1])).await.unwrap(), time(&batches[1]));
    let error = sink.write_batch(&others[2]).await.unwrap_err().to_string();
    assert!(error.contains("key,genus,weight,time,diff"), "{error}");
    assert!(error.contains("key,genus,mass,time,diff"), "{error}");
    assert_eq!(entries(&path).len(), 2);
}

/// What a crash can leave: the commits file with `entries` whole entries and then
/// `torn` bytes of the next (24: a whole entry of zeros, as an OS crash may leave), the
/// output cut somewhere after the last commit recorded, and maybe garbage after that.
#[derive(Debug, Clone)]
struct Crash {
    entries: usize,
    torn: usize,
    /// Where in the bytes after the recorded commits the output is cut, 0..=1.
    cut: f64,
    garbage: Vec<u8>,
    /// The table's time as an index into the commits (0: no commit).
    table: usize,
}

fn crash(commits: usize) -> impl Strategy<Value = Crash> {
    (
        0..=commits,
        0..=ENTRY,
        0.0..=1.0_f64,
        prop::collection::vec(any::<u8>(), 0..40),
        0..=commits,
    )
        .prop_map(move |(entries, torn, cut, garbage, table)| Crash {
            entries,
            torn: if entries == commits { 0 } else { torn },
            cut,
            garbage,
            table,
        })
}

const COMMITS: usize = 8;

/// Whatever a crash left, resuming to the table's time and sending the commits after
/// the one returned gives the file written without a crash.
#[test]
fn after_any_crash_resume_and_resend_give_the_file_written_without_one() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let batches = runtime.block_on(commits(COMMITS as i64));
    let dir = tempfile::tempdir().unwrap();
    let expected: Vec<_> = KINDS
        .iter()
        .map(|&kind| runtime.block_on(reference(kind, dir.path(), &batches)))
        .collect();
    let config = ProptestConfig {
        cases: 40,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(crash in crash(COMMITS))| {
        for (kind, expected) in KINDS.into_iter().zip(&expected) {
            let case = tempfile::tempdir().unwrap();
            let path = kind.file(case.path(), "out");
            let ends: Vec<u64> = entries(&expected_path(dir.path(), kind)).iter().map(|e| e.1).collect();
            // The crash: the output up to a point after the last recorded commit (or
            // after the torn entry's commit, which was synced before its entry was
            // appended), then maybe garbage; the commits file up to the torn entry.
            let recorded = crash.entries + usize::from(crash.torn > 0 && crash.torn < ENTRY);
            let from = if recorded == 0 { 0 } else { ends[recorded - 1] };
            let len = from + ((expected.0.len() as u64 - from) as f64 * crash.cut) as u64;
            std::fs::write(&path, &expected.0[..len as usize]).unwrap();
            append(&path, &crash.garbage);
            let mut commits = expected.1[..crash.entries * ENTRY].to_vec();
            if crash.torn == ENTRY {
                commits.extend([0; ENTRY]);
            } else {
                commits.extend(&expected.1[crash.entries * ENTRY..][..crash.torn]);
            }
            std::fs::write(commits_file(&path), commits).unwrap();

            let table_time = crash.table.checked_sub(1).map(|i| batches[i].time());
            let held = crash.entries.min(crash.table);
            runtime.block_on(async {
                let mut sink = kind.open(&path).await.unwrap();
                let resumed = sink.resume(table_time).await.unwrap();
                prop_assert_eq!(resumed, held.checked_sub(1).map(|i| batches[i].time()), "{:?}", kind);
                write(&mut *sink, &batches[held..]).await;
                sink.close().await.unwrap();
                Ok(())
            })?;
            prop_assert_eq!(std::fs::read(&path).unwrap(), expected.0.clone(), "{:?}", kind);
            prop_assert_eq!(std::fs::read(commits_file(&path)).unwrap(), expected.1.clone());
        }
    });
}
