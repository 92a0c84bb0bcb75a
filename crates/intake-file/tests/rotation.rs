//! Follow mode through a rotation in logrotate's `create` mode: the writer keeps
//! appending to the renamed file for a while after the new one appears at the path.

mod support;

use std::time::Duration;

use intake_core::Reader;
use intake_file::FileSource;
use support::{Running, append, committed_offset, eventually, lines, read_all, read_recording_commits};

fn follow(path: &std::path::Path) -> FileSource {
    FileSource::raw(path)
        .follow(true)
        .poll_interval(Duration::from_millis(20))
}

fn reader() -> Reader {
    Reader::raw().autocommit_duration(Duration::from_millis(5))
}

/// Truncates `path` in place, as `copytruncate` does after copying it.
fn truncate(path: &std::path::Path) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(0)
        .unwrap();
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

/// Two rotations while the source was stopped: the file written between them was
/// never open, and only its name and age tie it to the path. It is read whole,
/// between the rest of the old file and the new one; unrelated and older files
/// beside the path are not.
#[tokio::test]
async fn a_resume_after_two_rotations_while_stopped_reads_the_file_between() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    std::fs::write(dir.path().join("app.log.bak"), "old backup\n").unwrap();
    std::fs::write(dir.path().join("other.log"), "unrelated\n").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    append(&path, "a\nb\n");
    let (table, _) = read_all(FileSource::raw(&path), Reader::raw()).await;
    let offset = committed_offset(&table);

    // First rotation: the writer appends once more to the old file, then to a new one.
    std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
    append(&dir.path().join("app.log.1"), "c\n");
    std::thread::sleep(Duration::from_millis(20));
    append(&path, "d\ne\n");
    std::thread::sleep(Duration::from_millis(20));
    // Second rotation, as logrotate numbers them; a compressed older one is beside.
    std::fs::rename(dir.path().join("app.log.1"), dir.path().join("app.log.2")).unwrap();
    std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
    std::fs::write(dir.path().join("app.log.3.gz"), "\x1f\u{8b} not text\n").unwrap();
    append(&path, "f\n");

    let (table, rejected) = read_all(FileSource::raw(&path), Reader::raw().resume_from(offset)).await;
    assert!(rejected.is_empty());
    assert_eq!(lines(&table), ["c", "d", "e", "f"]);

    // Resuming from where that ended reads nothing again.
    let offset = committed_offset(&table);
    let (table, _) = read_all(FileSource::raw(&path), Reader::raw().resume_from(offset)).await;
    assert_eq!(lines(&table), Vec::<String>::new());
}

/// Stopped while reading the file between two rotations: the resume finds it by its
/// identity and continues there, then reads the newest.
#[tokio::test]
async fn a_stop_while_reading_a_file_rotated_away_while_stopped_resumes_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    append(&path, "a\n");
    let (table, _) = read_all(FileSource::raw(&path), Reader::raw()).await;
    let offset = committed_offset(&table);

    std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let between: String = (0..50).map(|i| format!("m{i}\n")).collect();
    append(&path, &between);
    std::thread::sleep(Duration::from_millis(20));
    std::fs::rename(dir.path().join("app.log.1"), dir.path().join("app.log.2")).unwrap();
    std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
    append(&path, "z\n");

    // Offsets every 10 lines, commits of 10 rows; every commit's offset recorded
    // with the number of rows committed up to it.
    let source = || FileSource::raw(&path).offset_every(10);
    let reader = || Reader::raw().max_batch_size(10);
    let (table, commits) = read_recording_commits(source(), reader().resume_from(offset)).await;
    let expected: Vec<String> = (0..50).map(|i| format!("m{i}")).chain(["z".to_owned()]).collect();
    assert_eq!(lines(&table), expected);

    // Every commit's offset resumes to exactly the rest: in the file between, then
    // in the newest.
    assert!(commits.len() >= 5, "{commits:?}");
    for (done, offset) in commits {
        let (rest, _) = read_all(source(), reader().resume_from(offset.clone())).await;
        assert_eq!(
            lines(&rest),
            expected[done..],
            "resuming from {offset} after {done} rows"
        );
    }
}

/// logrotate's `copytruncate` while the source was stopped: the file at the path is
/// the same file, truncated, and the lines after the offset are only in the copy
/// beside it. The copy's rest is read, then the path's file from its start.
#[tokio::test]
async fn a_resume_after_a_copytruncate_while_stopped_reads_the_rest_of_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    append(&path, "a\nb\n");
    let (table, _) = read_all(FileSource::raw(&path), Reader::raw()).await;
    let offset = committed_offset(&table);

    append(&path, "c\n");
    std::fs::copy(&path, dir.path().join("app.log.1")).unwrap();
    truncate(&path);
    append(&path, "d\n");

    let (table, _) = read_all(FileSource::raw(&path), Reader::raw().resume_from(offset)).await;
    assert_eq!(lines(&table), ["c", "d"]);
    let offset = committed_offset(&table);
    let (table, _) = read_all(FileSource::raw(&path), Reader::raw().resume_from(offset)).await;
    assert_eq!(lines(&table), Vec::<String>::new());
}

/// `copytruncate` under a running follower: the lines appended after what it read
/// and before the copy are only in the copy. They are read from it before the
/// truncated file is read again from its start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copytruncate_under_the_follower_reads_the_copy_s_unread_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    append(&path, "first line\n");
    let run = Running::start(follow(&path), reader());
    eventually("the first line", || run.table.len() == 1).await;
    // Its offset at the end of the file is reported with a hash of its first bytes.
    tokio::time::sleep(Duration::from_millis(100)).await;

    // "second" was appended and copied before the follower read it.
    std::fs::write(dir.path().join("app.log.1"), "first line\nsecond\n").unwrap();
    truncate(&path);
    append(&path, "c\n");
    eventually("the copy's line and the new one", || run.table.len() == 3).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (table, _) = run.stop().await;
    assert_eq!(lines(&table), ["first line", "second", "c"]);
}

/// A truncation with no copy made, beside an older generation that begins with the
/// same bytes (a startup banner): that file is not a copy of what was read, and
/// none of it is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncation_beside_an_older_file_with_the_same_start_reads_nothing_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    let older = dir.path().join("app.log.1");
    std::fs::write(&older, "banner\nold 1\nold 2\n").unwrap();
    let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&older)
        .unwrap()
        .set_modified(an_hour_ago)
        .unwrap();
    append(&path, "banner\n");
    let run = Running::start(follow(&path), reader());
    eventually("the banner", || run.table.len() == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    truncate(&path);
    append(&path, "new\n");
    eventually("the new line", || run.table.len() == 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (table, _) = run.stop().await;
    assert_eq!(lines(&table), ["banner", "new"]);
}
