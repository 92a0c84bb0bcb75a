//! Follow mode through a rotation in logrotate's `create` mode: the writer keeps
//! appending to the renamed file for a while after the new one appears at the path.

mod support;

use std::time::Duration;

use intake_core::Reader;
use intake_file::FileSource;
use support::{Running, append, committed_offset, eventually, lines, read_all};

fn follow(path: &std::path::Path) -> FileSource {
    FileSource::raw(path)
        .follow(true)
        .poll_interval(Duration::from_millis(20))
}

fn reader() -> Reader {
    Reader::raw().autocommit_duration(Duration::from_millis(5))
}

fn sorted(mut lines: Vec<String>) -> Vec<String> {
    lines.sort();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_appended_to_the_renamed_file_after_the_new_one_appeared_are_read_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    let rotated = dir.path().join("app.log.1");
    append(&path, "old-1\nold-2\n");
    let run = Running::start(follow(&path), reader());
    eventually("the first lines", || run.table.len() == 2).await;

    std::fs::rename(&path, &rotated).unwrap();
    append(&path, "new-1\n");
    // Once the new file's line is in, the rotation has been noticed for sure.
    eventually("the new file's first line", || run.table.len() == 3).await;
    // The writer has not reopened the path yet: it still appends to the old file.
    append(&rotated, "old-3\n");
    append(&path, "new-2\n");
    append(&rotated, "old-4\n");
    eventually("the late lines of the old file", || run.table.len() == 6).await;

    tokio::time::sleep(Duration::from_millis(100)).await;
    let (table, _) = run.stop().await;
    assert_eq!(
        sorted(lines(&table)),
        ["new-1", "new-2", "old-1", "old-2", "old-3", "old-4"],
        "every line of both files, each once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_rotate_wait_the_old_file_s_last_line_is_read_and_it_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    let rotated = dir.path().join("app.log.1");
    append(&path, "a\n");
    let run = Running::start(follow(&path).rotate_wait(Duration::from_millis(800)), reader());
    eventually("the first line", || run.table.len() == 1).await;
    std::fs::rename(&path, &rotated).unwrap();
    append(&path, "b\n");
    eventually("the new file's line", || run.table.len() == 2).await;
    append(&rotated, "c\nd without a newline");
    eventually("the rest of the old file", || run.table.len() == 4).await;
    // Closed: what is written to it now is not read.
    append(&rotated, "\ne\n");
    append(&path, "f\n");
    eventually("the new file's next line", || run.table.len() == 5).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (table, _) = run.stop().await;
    assert_eq!(sorted(lines(&table)), ["a", "b", "c", "d without a newline", "f"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_the_grace_period_resumes_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    let rotated = dir.path().join("app.log.1");
    append(&path, "a\n");
    let run = Running::start(follow(&path), reader());
    eventually("the first line", || run.table.len() == 1).await;
    std::fs::rename(&path, &rotated).unwrap();
    append(&path, "b\n");
    eventually("the new file's line", || run.table.len() == 2).await;
    append(&rotated, "c\n");
    eventually("the old file's late line", || run.table.len() == 3).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (first, _) = run.stop().await;
    let offset = committed_offset(&first);
    assert!(offset.get("rotated").is_some(), "{offset}");

    // While stopped, both files grow.
    append(&rotated, "d\n");
    append(&path, "e\n");
    let run = Running::start(
        follow(&path).rotate_wait(Duration::from_millis(100)),
        reader().resume_from(offset),
    );
    eventually("the lines written while stopped", || run.table.len() == 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (second, _) = run.stop().await;
    let mut all = lines(&first);
    all.extend(lines(&second));
    assert_eq!(sorted(all), ["a", "b", "c", "d", "e"]);
    let offset = committed_offset(&second);
    assert!(
        offset.get("rotated").is_none(),
        "the grace period is over: {offset}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_after_a_rotation_while_stopped_reads_the_rest_of_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    append(&path, "a\nb\n");
    let (table, _) = read_all(FileSource::raw(&path), Reader::raw()).await;
    let offset = committed_offset(&table);

    let rotated = dir.path().join("app.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    append(&rotated, "c\n");
    append(&path, "d\n");
    let (table, _) = read_all(FileSource::raw(&path), Reader::raw().resume_from(offset)).await;
    assert_eq!(lines(&table), ["c", "d"]);
}
