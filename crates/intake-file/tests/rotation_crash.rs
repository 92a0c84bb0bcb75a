//! A log rotated under the reader while the reading process is killed and restarted,
//! over and over: a writer appends numbered lines and rotates the file in logrotate's
//! `create` mode (renamed to `app.log.N`, a few more lines written to the renamed file,
//! then a new file at the path), while a follower with persistence is killed (its
//! runtime abandoned, no shutdown) or stopped cleanly at random moments and started
//! again, now and then after a pause in which the log rotates once or twice. At the
//! end the table must hold every line exactly once.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use intake_core::{Persistence, Pipeline, Reader, Table};
use intake_file::FileSource;

const LINES: u64 = 4_000;
const ROTATE_EVERY: u64 = 700;

/// A small deterministic generator (xorshift), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// How the writer rotates its log, as logrotate's modes do.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Rename to `app.log.N`, a few more lines to the renamed file, then a new file
    /// at the path.
    Create,
    /// Copy to `app.log.N`, then truncate the file in place and go on writing to it.
    CopyTruncate,
}

/// Writes `LINES` numbered lines to `path`, rotating it every `ROTATE_EVERY` lines;
/// sets `done` at the end.
fn write_and_rotate(path: PathBuf, mode: Mode, done: Arc<AtomicBool>) {
    let open = |path: &Path| {
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .unwrap()
    };
    let mut file = open(&path);
    let mut rotations = 0;
    for n in 0..LINES {
        writeln!(file, "{n}").unwrap();
        if n % 4 == 3 {
            std::thread::sleep(Duration::from_millis(3));
        }
        if n % ROTATE_EVERY == ROTATE_EVERY - 1 && n + 1 < LINES {
            rotations += 1;
            let rotated = path.with_file_name(format!("app.log.{rotations}"));
            match mode {
                Mode::Create => {
                    std::fs::rename(&path, &rotated).unwrap();
                    // The writer has not reopened the path yet: a few more lines go
                    // to the renamed file, numbered past the loop's lines.
                    for late in late_lines(n) {
                        writeln!(file, "{late}").unwrap();
                    }
                    file = open(&path);
                }
                Mode::CopyTruncate => {
                    // The writer itself rotates, so no line falls between the copy
                    // and the truncation (where copytruncate loses them).
                    std::fs::copy(&path, &rotated).unwrap();
                    file.set_len(0).unwrap();
                }
            }
        }
    }
    file.sync_all().unwrap();
    done.store(true, Ordering::Release);
}

/// The lines written to a renamed file after line `n` rotated it.
fn late_lines(n: u64) -> impl Iterator<Item = u64> {
    (2..=4).map(move |i| 1_000_000 + n + i)
}

fn expected(mode: Mode) -> Vec<u64> {
    let mut all: Vec<u64> = (0..LINES).collect();
    if mode == Mode::Create {
        let mut n = ROTATE_EVERY - 1;
        while n + 1 < LINES {
            all.extend(late_lines(n));
            n += ROTATE_EVERY;
        }
    }
    all.sort_unstable();
    all
}

fn source(path: &Path) -> FileSource {
    FileSource::raw(path)
        .follow(true)
        .poll_interval(Duration::from_millis(20))
        .rotate_wait(Duration::from_millis(100))
        // Rarer than the batch limit: commits must still end at offsets.
        .offset_every(150)
}

fn reader() -> Reader {
    Reader::raw()
        .autocommit_duration(Duration::from_millis(5))
        .max_batch_size(100)
}

fn pipeline(state: &Path, path: &Path) -> (Pipeline, Table) {
    let mut pipeline = Pipeline::new().persist(Persistence::new(state));
    let table = pipeline.read("log", source(path), reader());
    (pipeline, table)
}

/// How many times each number is in the table.
fn counts(table: &Table) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    for (_, row) in table.snapshot().rows() {
        let text = row.get("data").and_then(|v| v.as_str()).unwrap();
        *counts.entry(text.parse::<u64>().unwrap()).or_default() += 1;
    }
    counts
}

#[test]
fn killed_and_restarted_while_the_log_rotates_it_ends_with_every_line_once() {
    killed_and_restarted_while_the_log_rotates(Mode::Create);
}

#[test]
fn killed_and_restarted_while_the_log_is_copied_and_truncated_it_ends_with_every_line_once() {
    killed_and_restarted_while_the_log_rotates(Mode::CopyTruncate);
}

fn killed_and_restarted_while_the_log_rotates(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let (path, state) = (dir.path().join("app.log"), dir.path().join("state"));
    std::fs::write(&path, "").unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (path, done) = (path.clone(), done.clone());
        std::thread::spawn(move || write_and_rotate(path, mode, done))
    };

    let seed = std::env::var("ROTATION_CRASH_SEED").map_or(0x5eed_1234_abcd_0001, |s| s.parse().unwrap());
    let mut rng = Rng(seed);
    let mut rounds = 0;
    while !done.load(Ordering::Acquire) {
        rounds += 1;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (pipeline, _table) = pipeline(&state, &path);
        let shutdown = pipeline.shutdown_handle();
        let running = runtime.spawn(pipeline.run());
        std::thread::sleep(Duration::from_millis(30 + rng.below(250)));
        if rng.below(3) == 0 {
            shutdown.shutdown();
            let ended = runtime.block_on(running).unwrap();
            assert!(ended.is_ok(), "round {rounds}: {ended:?}");
        } else {
            // A crash: no shutdown, no final commit; the reading thread is abandoned.
            runtime.shutdown_timeout(Duration::from_millis(50));
        }
        // Now and then down for long enough that the log rotates once or twice.
        if rng.below(4) == 0 {
            std::thread::sleep(Duration::from_millis(500 + rng.below(600)));
        }
    }
    writer.join().unwrap();

    // The last run reads to the end of what was written, then stops cleanly.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let expected = expected(mode);
    let table = runtime.block_on(async {
        let (pipeline, table) = pipeline(&state, &path);
        let shutdown = pipeline.shutdown_handle();
        let running = tokio::spawn(pipeline.run());
        let deadline = Instant::now() + Duration::from_secs(20);
        while table.len() < expected.len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Anything read twice shows up after a moment more.
        tokio::time::sleep(Duration::from_millis(300)).await;
        shutdown.shutdown();
        running.await.unwrap().unwrap();
        table
    });
    eprintln!("seed {seed}: {rounds} rounds");
    let counts = counts(&table);
    let missing: Vec<u64> = expected
        .iter()
        .copied()
        .filter(|n| !counts.contains_key(n))
        .collect();
    let twice: Vec<(u64, usize)> = counts
        .iter()
        .filter(|&(_, &c)| c > 1)
        .map(|(&n, &c)| (n, c))
        .collect();
    assert!(
        missing.is_empty() && twice.is_empty() && counts.len() == expected.len(),
        "seed {seed}, after {rounds} kills and stops: {} lines, missing {missing:?}, more than once {twice:?}",
        table.len()
    );
}
