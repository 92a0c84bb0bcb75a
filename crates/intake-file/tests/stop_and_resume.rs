//! A clean stop at any moment, then a resume from the committed offsets: every line of
//! the file is in exactly one of the two runs.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use intake_core::{Pipeline, Reader, Subscriber};
use intake_file::FileSource;
use support::{append, lines, read_all, read_recording_commits};

const LINES: usize = 200_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_at_any_moment_then_a_resume_reads_every_line_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.log");
    let expected: Vec<String> = (0..LINES).map(|i| format!("{i:06}")).collect();
    std::fs::write(
        &path,
        expected
            .iter()
            .map(|line| format!("{line}\n"))
            .collect::<String>(),
    )
    .unwrap();

    for (stop_after, follow) in [(1, false), (30_000, true), (110_000, false)] {
        // An append table: a line read twice would be two rows.
        let mut pipeline = Pipeline::new();
        let source = FileSource::raw(&path)
            .follow(follow)
            .poll_interval(Duration::from_millis(20));
        let table = pipeline.read("log", source, Reader::raw());
        let shutdown = pipeline.shutdown_handle();
        let seen = Arc::new(AtomicUsize::new(0));
        table.subscribe(Subscriber::new().on_batch({
            let seen = seen.clone();
            move |batch| {
                if seen.fetch_add(batch.len(), Ordering::Relaxed) + batch.len() >= stop_after {
                    shutdown.shutdown();
                }
            }
        }));
        pipeline.run().await.unwrap();
        let first = lines(&table);
        assert!(first.len() < LINES, "stopped before the end ({stop_after})");

        let mut reader = Reader::raw();
        if let Some((_, offset)) = table.committed_offsets().into_iter().next() {
            reader = reader.resume_from(offset);
        }
        let (table, _) = read_all(FileSource::raw(&path), reader).await;
        let mut all = first;
        let stopped_at = all.len();
        all.extend(lines(&table));
        assert_eq!(all.len(), LINES, "stopped after {stopped_at} rows ({stop_after})");
        assert!(
            all == expected,
            "stopped after {stopped_at} rows ({stop_after}): lines repeated or lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_under_the_fail_policy_commits_the_offset_of_the_rows_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.txt");
    std::fs::write(&path, b"one\ntwo\nbad \xFF\nfour\n").unwrap();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("log", FileSource::raw(&path), Reader::raw());
    assert!(pipeline.run().await.is_err());
    assert_eq!(lines(&table), ["one", "two"]);
    let offsets = table.committed_offsets();
    assert_eq!(offsets.len(), 1, "{offsets:?}");
    assert_eq!(offsets[0].1["position"], 8, "right after the rows committed");
}

/// Regression: a commit cut at `max_batch_size` could end past the offset it
/// recorded (messages before the next offset, which was already queued, or all of
/// them once the source had finished), so resuming from it read rows that commit
/// already held. For offsets as often as, rarer than and more often than the batch
/// limit, every commit's offset resumes to exactly the rows after it.
#[tokio::test]
async fn every_commit_s_offset_resumes_exactly_after_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lines.log");
    let expected: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
    append(
        &path,
        expected
            .iter()
            .map(|line| format!("{line}\n"))
            .collect::<String>(),
    );
    for (offset_every, max_batch) in [(10, 10), (25, 10), (7, 10), (1_000, 16)] {
        let source = || FileSource::raw(&path).offset_every(offset_every);
        let reader = || Reader::raw().max_batch_size(max_batch);
        let (table, commits) = read_recording_commits(source(), reader()).await;
        assert_eq!(lines(&table), expected);
        for (done, offset) in commits {
            let (rest, _) = read_all(source(), reader().resume_from(offset.clone())).await;
            assert_eq!(
                lines(&rest),
                expected[done..],
                "offset_every {offset_every}, max_batch_size {max_batch}: resuming after {done} rows from {offset}"
            );
        }
    }
}
