//! The crash test of the JetStream source: the `nats_worker` example, a persistent
//! worker ingesting a partitioned stream while it is being published, is killed with
//! SIGKILL ten times at random moments and restarted each time; finally it runs until
//! its table holds every message. The table (without a primary key, so a message
//! applied twice is a row twice) must then hold every message exactly once. Also: two
//! worker processes split four partitions.
//!
//! The test builds the example binary (`cargo build --example nats_worker`) before it
//! runs it.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use intake_nats::partition_subject;
use support::shared_url;

const MESSAGES: u64 = 20_000;
const PARTITIONS: u32 = 4;
const KILLS: usize = 10;

/// The example binary, built first so that a test run filtered to this file never
/// runs a stale one.
fn example() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let mut cargo = Command::new(env!("CARGO"));
            cargo
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "intake-nats",
                    "--example",
                    "nats_worker",
                ])
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            // ring's build script watches variables such as CARGO_PKG_NAME, which
            // `cargo test` sets for this process: passed on, they would make this build
            // and the next `cargo test` rebuild ring and everything above it, each time.
            for (name, _) in std::env::vars_os() {
                let name = name.to_string_lossy();
                let set_for_the_test = [
                    "CARGO_MANIFEST_",
                    "CARGO_PKG_",
                    "CARGO_CRATE_",
                    "CARGO_PRIMARY_",
                    "CARGO_TARGET_TMPDIR",
                ]
                .iter()
                .any(|prefix| name.starts_with(prefix));
                if set_for_the_test {
                    cargo.env_remove(&*name);
                }
            }
            if !cfg!(debug_assertions) {
                cargo.arg("--release");
            }
            let status = cargo.status().expect("cargo runs");
            assert!(status.success(), "building the nats_worker example failed");
            // Tests run from target/<profile>/deps; examples are in target/<profile>/examples.
            let exe = std::env::current_exe().expect("the test binary's path");
            let dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
            dir.join("examples")
                .join(format!("nats_worker{}", std::env::consts::EXE_SUFFIX))
        })
        .clone()
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

/// Publishes every message, `{"id": i, "key": i % 101}` on its key's partition, in
/// bursts at a live feed's pace, so that ingestion outlasts the kills.
async fn publish_all(jetstream: jetstream::Context, stream: String) {
    let mut acks = Vec::new();
    for id in 0..MESSAGES {
        let key = (id % 101).to_string();
        let subject = partition_subject(&stream, key.as_bytes(), PARTITIONS);
        let payload = format!(r#"{{"id": {id}, "key": {key}}}"#);
        acks.push(jetstream.publish(subject, payload.into()).await.unwrap());
        if id % 100 == 99 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

fn command(state: &Path, out: &Path, url: &str, stream: &str) -> Command {
    let mut command = Command::new(example());
    command
        .arg(state)
        .arg(out)
        .args(["--url", url, "--stream", stream])
        .args(["--partitions", &PARTITIONS.to_string()])
        .args(["--expect", &MESSAGES.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Waits for a worker run with `--expect` to end; one that does not reach its row count
/// within 30 s has lost messages.
async fn wait_for_rows(mut run: std::process::Child, rows: usize) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(30);
    while run.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            run.kill().unwrap();
            let output = run.wait_with_output().unwrap();
            panic!(
                "the worker did not reach {rows} rows within 30 s: messages are missing; {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    run.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_ten_times_ends_with_every_message_once() {
    // Built before the clock of the kills starts.
    let _ = example();
    let url = shared_url();
    let name = format!(
        "crash_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let jetstream = jetstream::new(async_nats::connect(&url).await.unwrap());
    jetstream
        .create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.*")],
            ..Default::default()
        })
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (state, out) = (dir.path().join("state"), dir.path().join("out"));
    let publishing = tokio::spawn(publish_all(jetstream.clone(), name.clone()));

    let mut rng = Rng::new();
    let mut kills = 0;
    while kills < KILLS {
        let mut child = command(&state, &out, &url, &name)
            .spawn()
            .expect("the worker starts");
        let after = Duration::from_millis(100 + rng.below(300));
        let started = Instant::now();
        let mut finished = false;
        while started.elapsed() < after {
            if child.try_wait().unwrap().is_some() {
                finished = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if finished {
            let output = child.wait_with_output().unwrap();
            panic!(
                "the worker ended after {kills} kills ({}); publish more messages: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        kills += 1;
    }
    let still_publishing = !publishing.is_finished();
    publishing.await.unwrap();

    let run = command(&state, &out, &url, &name)
        .spawn()
        .expect("the worker starts");
    let output = wait_for_rows(run, MESSAGES as usize).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the last run failed: {stderr}");
    eprintln!(
        "{kills} kills (publishing still going at the last: {still_publishing}); {}",
        String::from_utf8_lossy(&output.stdout).trim()
    );

    let tables: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("tables.json")).unwrap()).unwrap();
    let mut ids = BTreeMap::<i64, usize>::new();
    for row in tables["events"].as_array().unwrap() {
        *ids.entry(row["id"].as_i64().unwrap()).or_default() += 1;
    }
    let twice: Vec<_> = ids
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .take(10)
        .collect();
    let missing: Vec<_> = (0..MESSAGES as i64)
        .filter(|id| !ids.contains_key(id))
        .take(10)
        .collect();
    assert!(
        twice.is_empty() && missing.is_empty(),
        "applied twice: {twice:?}, missing: {missing:?}"
    );
    assert_eq!(ids.len(), MESSAGES as usize);
}

/// Two worker processes (0 and 1 of 2) split the four partitions: each key is read by
/// exactly one of them, and together they read every message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_split_four_partitions() {
    let _ = example();
    let url = shared_url();
    let name = format!(
        "split_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let jetstream = jetstream::new(async_nats::connect(&url).await.unwrap());
    jetstream
        .create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.*")],
            ..Default::default()
        })
        .await
        .unwrap();
    const SPLIT: u64 = 2_000;
    let mut per_partition = BTreeMap::<u32, usize>::new();
    for id in 0..SPLIT {
        let key = (id % 101).to_string();
        let subject = partition_subject(&name, key.as_bytes(), PARTITIONS);
        let payload = format!(r#"{{"id": {id}, "key": {key}}}"#);
        jetstream
            .publish(subject, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
        *per_partition
            .entry(intake_nats::partition_of(key.as_bytes(), PARTITIONS))
            .or_default() += 1;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut workers = Vec::new();
    for index in 0..2u32 {
        // Partitions "0".."3", sorted; worker i reads positions i and i + 2.
        let rows = per_partition[&index] + per_partition[&(index + 2)];
        let out = dir.path().join(format!("out{index}"));
        let child = command(&dir.path().join(format!("state{index}")), &out, &url, &name)
            .args(["--expect", &rows.to_string()])
            .args(["--worker", &index.to_string(), "2"])
            .spawn()
            .expect("the worker starts");
        workers.push((child, out));
    }
    let mut keys_by_worker = Vec::new();
    let mut ids = BTreeMap::<i64, usize>::new();
    for (child, out) in workers {
        let output = wait_for_rows(child, SPLIT as usize).await;
        assert!(
            output.status.success(),
            "a worker failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let tables: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("tables.json")).unwrap()).unwrap();
        let mut keys = std::collections::BTreeSet::new();
        for row in tables["events"].as_array().unwrap() {
            keys.insert(row["key"].as_i64().unwrap());
            *ids.entry(row["id"].as_i64().unwrap()).or_default() += 1;
        }
        keys_by_worker.push(keys);
    }
    assert!(
        keys_by_worker[0].is_disjoint(&keys_by_worker[1]),
        "keys read by both workers"
    );
    assert!(!keys_by_worker[0].is_empty() && !keys_by_worker[1].is_empty());
    assert_eq!(ids.len(), SPLIT as usize);
    assert!(ids.values().all(|n| *n == 1), "a message read twice");
}
