//! Crash tests: the `durable` example is killed with SIGKILL (and now and then stopped
//! with Ctrl-C) at random moments while it ingests, restarted each time, and finally
//! run to its end. Its tables must then
//! equal last-write-wins over the whole input, and its sinks must hold every commit
//! exactly once. Also: a torn last commit record is dropped with a warning and its
//! data read again, a corrupt snapshot is an error naming the file, a changed schema
//! is an error.
//!
//! The tests build the example binary (`cargo build --example durable`) before they
//! run it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

/// Input lines, and the distinct ids they upsert.
const LINES: u64 = 60_000;
const IDS: u64 = 3_001;
/// Messages of the example's counter source.
const COUNT: u64 = 30_000;

/// The example binary, built first so that a test run filtered to this file
/// (which cargo builds without the examples) never runs a stale one.
fn example() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let mut cargo = Command::new(env!("CARGO"));
            cargo
                .args(["build", "--quiet", "-p", "intake-file", "--example", "durable"])
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            if !cfg!(debug_assertions) {
                cargo.arg("--release");
            }
            let status = cargo.status().expect("cargo runs");
            assert!(status.success(), "building the durable example failed");
            // Tests run from target/<profile>/deps; examples are in target/<profile>/examples.
            let exe = std::env::current_exe().expect("the test binary's path");
            let dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
            dir.join("examples")
                .join(format!("durable{}", std::env::consts::EXE_SUFFIX))
        })
        .clone()
}

struct Run {
    state: PathBuf,
    input: PathBuf,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Run {
    fn new() -> Run {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("input.jsonl");
        let mut text = String::new();
        for i in 0..LINES {
            text.push_str(&format!("{{\"id\": {}, \"v\": {i}}}\n", (i * 7919) % IDS));
        }
        std::fs::write(&input, text).unwrap();
        Run {
            state: dir.path().join("state"),
            input,
            out: dir.path().join("out"),
            _dir: dir,
        }
    }

    fn command(&self, extra: &[&str]) -> Command {
        let mut command = Command::new(example());
        command
            .arg(&self.state)
            .arg(&self.input)
            .arg(&self.out)
            .args(["--count", &COUNT.to_string(), "--compact-after", "20000"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Starts the example and stops it after `after` as `stop` says; returns what
    /// happened.
    fn stop_after(&self, after: Duration, stop: Stop) -> Stopped {
        let mut child = self.command(&[]).spawn().expect("the example starts");
        let started = Instant::now();
        while started.elapsed() < after {
            if let Some(status) = child.try_wait().unwrap() {
                let output = child.wait_with_output().unwrap();
                assert!(
                    status.success(),
                    "the example failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                return Stopped::Finished;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        match stop {
            Stop::Kill => {
                child.kill().unwrap(); // SIGKILL on Unix
                child.wait().unwrap();
                Stopped::Killed
            }
            Stop::Interrupt => {
                let pid = child.id().to_string();
                let sent = Command::new("kill").args(["-INT", &pid]).status().unwrap();
                assert!(sent.success(), "kill -INT {pid}");
                let output = child.wait_with_output().unwrap();
                use std::os::unix::process::ExitStatusExt as _;
                if output.status.signal() == Some(2) {
                    // Interrupted before it installed its Ctrl-C handler: as good as killed.
                    return Stopped::Killed;
                }
                assert!(
                    output.status.success(),
                    "Ctrl-C must stop the example cleanly: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                Stopped::Clean
            }
        }
    }

    /// Starts the example and kills it with SIGKILL after `after`; returns whether it
    /// was still running (else it had finished by itself).
    fn kill_after(&self, after: Duration) -> bool {
        self.stop_after(after, Stop::Kill) == Stopped::Killed
    }

    fn run_to_end(&self, extra: &[&str]) -> Output {
        let child = self.command(extra).spawn().expect("the example starts");
        child.wait_with_output().unwrap()
    }

    fn files(&self, table: &str, prefix: &str) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.state.join(table))
            .map(|dir| dir.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        files.retain(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with(prefix) && !name.ends_with(".tmp")
        });
        files.sort();
        files
    }
}

/// How a run is stopped.
#[derive(Clone, Copy)]
enum Stop {
    /// SIGKILL: a crash.
    Kill,
    /// SIGINT: Ctrl-C, a clean stop.
    Interrupt,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    Finished,
    Killed,
    Clean,
}

/// A small deterministic generator, seeded from the clock (printed, to replay a run).
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("crash test seed: CRASH_SEED={seed}");
        Rng(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Last write wins over the input file.
fn expected_lines() -> BTreeMap<i64, i64> {
    (0..LINES)
        .map(|i| (((i * 7919) % IDS) as i64, i as i64))
        .collect()
}

/// The counter's table appends: every `n` once, as `n -> k`.
fn expected_counter() -> BTreeMap<i64, i64> {
    (1..=COUNT).map(|n| (n as i64, (n % 97) as i64)).collect()
}

/// The final table the example wrote, as key → value; a key found twice fails.
fn final_table(out: &Path, table: &str, key: &str, value: &str) -> BTreeMap<i64, i64> {
    let tables: Json = serde_json::from_slice(&std::fs::read(out.join("tables.json")).unwrap()).unwrap();
    let mut rows = BTreeMap::new();
    for row in tables[table].as_array().unwrap() {
        let k = row[key].as_i64().unwrap();
        assert!(
            rows.insert(k, row[value].as_i64().unwrap()).is_none(),
            "{table}: {key} {k} is in the table twice"
        );
    }
    rows
}

/// Folds a sink's change log, checking that it holds every commit exactly once: times
/// increase from one commit to the next with no commit twice, an insertion never
/// finds its key present, a retraction always retracts the row present.
fn fold(changes: impl IntoIterator<Item = (u64, i64, i64, i64)>, what: &str) -> BTreeMap<i64, i64> {
    let mut table = BTreeMap::new();
    let mut last_time = 0;
    let mut times = Vec::new();
    for (time, key, value, diff) in changes {
        assert!(
            time >= last_time,
            "{what}: commit {time} after commit {last_time}"
        );
        if time != last_time {
            times.push(time);
        }
        last_time = time;
        match diff {
            1 => assert!(
                table.insert(key, value).is_none(),
                "{what}: key {key} inserted twice (commit {time})"
            ),
            -1 => assert_eq!(
                table.remove(&key),
                Some(value),
                "{what}: commit {time} retracts a row not there"
            ),
            other => panic!("{what}: diff {other}"),
        }
    }
    // Commit times are consecutive: none missing, none written twice.
    for pair in times.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "{what}: commits jump from {} to {}",
            pair[0],
            pair[1]
        );
    }
    table
}

fn csv_changes(path: &Path) -> Vec<(u64, i64, i64, i64)> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let headers = reader.headers().unwrap().clone();
    assert_eq!(headers.iter().collect::<Vec<_>>(), ["id", "v", "time", "diff"]);
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            let n = |i: usize| r[i].parse::<i64>().unwrap();
            (n(2) as u64, n(0), n(1), n(3))
        })
        .collect()
}

fn jsonl_changes(path: &Path) -> Vec<(u64, i64, i64, i64)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let o: Json = serde_json::from_str(line).unwrap();
            let n = |f: &str| o[f].as_i64().unwrap();
            (n("time") as u64, n("n"), n("k"), n("diff"))
        })
        .collect()
}

#[test]
fn killed_and_stopped_at_random_moments_it_ends_with_every_row_once() {
    let run = Run::new();
    let mut rng = Rng::new();
    let mut kills = 0;
    let mut torn = 0;
    let mut clean = 0;
    // Twelve crashes and three clean stops (Ctrl-C), in an order of the seed's choosing;
    // early stops land during startup and restore, later ones mid-ingest.
    let mut plan = [Stop::Kill; 15];
    for _ in 0..3 {
        plan[rng.below(15) as usize] = Stop::Interrupt;
    }
    for (attempt, stop) in plan.into_iter().enumerate() {
        let after = Duration::from_millis(20 + rng.below(400));
        match run.stop_after(after, stop) {
            Stopped::Finished => {
                panic!("the example finished after {attempt} runs and {kills} kills; make the input longer")
            }
            Stopped::Clean => {
                clean += 1;
                continue;
            }
            Stopped::Killed => kills += 1,
        }
        // Now and then, tear the last commit record as a crash mid-write would.
        if rng.below(3) == 0
            && let Some(log) = run.files("lines", "segment").last()
        {
            let len = std::fs::metadata(log).unwrap().len();
            if len > 64 {
                let file = std::fs::OpenOptions::new().write(true).open(log).unwrap();
                file.set_len(len - 1 - rng.below(8)).unwrap();
                torn += 1;
            }
        }
    }
    assert!(kills >= 10, "only {kills} kills landed");
    assert!(clean >= 1, "no clean stop landed");
    let output = run.run_to_end(&[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the last run failed: {stderr}");
    eprintln!("{kills} kills, {clean} clean stops, {torn} torn records");

    let lines = final_table(&run.out, "lines", "id", "v");
    assert_eq!(
        lines,
        expected_lines(),
        "the lines table is last-write-wins over the input"
    );
    let counter = final_table(&run.out, "counter", "n", "k");
    let expected = expected_counter();
    let missing: Vec<_> = expected
        .keys()
        .filter(|n| !counter.contains_key(n))
        .take(10)
        .collect();
    let extra: Vec<_> = counter
        .keys()
        .filter(|n| !expected.contains_key(n))
        .take(10)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "counter: missing {missing:?}, extra {extra:?}"
    );
    assert_eq!(counter, expected, "every message of the counter once");
    assert_eq!(fold(csv_changes(&run.out.join("lines.csv")), "lines.csv"), lines);
    assert_eq!(
        fold(jsonl_changes(&run.out.join("counter.jsonl")), "counter.jsonl"),
        counter
    );
    assert!(
        run.files("lines", "snapshot").len() <= 1,
        "compaction keeps one snapshot: {:?}",
        run.files("lines", "")
    );

    // Started again after the end, it restores everything and has nothing to add.
    let output = run.run_to_end(&[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(final_table(&run.out, "lines", "id", "v"), expected_lines());
    assert_eq!(
        fold(csv_changes(&run.out.join("lines.csv")), "lines.csv"),
        expected_lines()
    );
}

#[test]
fn a_torn_last_record_is_dropped_with_a_warning_and_read_again() {
    let run = Run::new();
    // Killed until the newest segment holds a record (one just rolled holds only its
    // header, which is written whole before the segment exists).
    let (log, len) = (0..20)
        .find_map(|_| {
            assert!(
                run.kill_after(Duration::from_millis(300)),
                "the example ended too soon"
            );
            let log = run.files("lines", "segment").pop()?;
            let len = std::fs::metadata(&log).unwrap().len();
            (len > 64).then_some((log, len))
        })
        .expect("a segment with records");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let output = run.run_to_end(&[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let name = log.file_name().unwrap().to_string_lossy();
    assert!(
        stderr.contains("WARN") && stderr.contains(&*name),
        "a warning names the torn file {name}: {stderr}"
    );
    assert_eq!(final_table(&run.out, "lines", "id", "v"), expected_lines());
    assert_eq!(
        fold(csv_changes(&run.out.join("lines.csv")), "lines.csv"),
        expected_lines()
    );
}

#[test]
fn a_corrupt_snapshot_is_an_error_naming_the_file() {
    let run = Run::new();
    let output = run.run_to_end(&[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let snapshot = run
        .files("lines", "snapshot")
        .pop()
        .expect("a snapshot (compact-after is small)");
    let mut bytes = std::fs::read(&snapshot).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&snapshot, bytes).unwrap();
    let output = run.run_to_end(&[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a corrupt snapshot must not start: {stderr}"
    );
    assert!(
        stderr.contains(&*snapshot.file_name().unwrap().to_string_lossy()),
        "the error names the file: {stderr}"
    );
}

#[test]
fn a_changed_schema_is_an_error() {
    let run = Run::new();
    // A short first run (the last `--count` wins) stores the tables with their schemas.
    let output = run.run_to_end(&["--count", "100"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = run.run_to_end(&["--schema-v2"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a changed schema must not start: {stderr}"
    );
    assert!(
        stderr.contains("counter") && stderr.contains("note"),
        "the error names the table and the column: {stderr}"
    );
}
