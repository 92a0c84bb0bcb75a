//! Fragment and directory sources: each fragment read once per fingerprint, parsers,
//! read errors, settling, forgetting deleted fragments, resume (also after a clean stop
//! in the middle of a fragment), and the cost of offsets with many fragments.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use intake_core::{BoxError, Column, DataType, ErrorPolicy, Pipeline, Reader, Schema, ShutdownHandle, Table};
use intake_file::{
    DirectoryStore, FileFormat, Fragment, FragmentErrorPolicy, FragmentParser, FragmentSource, FragmentStore,
};

/// Rows without a primary key, so a fragment read twice shows as duplicate rows.
fn schema() -> Schema {
    Schema::new([
        Column::new("n", DataType::Int),
        Column::new("file", DataType::String),
    ])
    .unwrap()
}

fn reader() -> Reader {
    Reader::json(schema()).autocommit_duration(Duration::from_millis(5))
}

/// How many rows each file has in the table.
fn per_file(table: &Table) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (_, row) in table.snapshot().rows() {
        let file = row.get("file").and_then(|v| v.as_str()).unwrap().to_owned();
        *counts.entry(file).or_default() += 1;
    }
    counts
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn jsonl(file: &str, rows: usize) -> String {
    (0..rows)
        .map(|n| format!("{{\"n\": {n}, \"file\": \"{file}\"}}\n"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_reads_new_and_changed_files_once_per_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("sub")).unwrap();
    std::fs::write(root.join("a.jsonl"), jsonl("a", 2)).unwrap();
    std::fs::write(root.join("sub/b.jsonl"), jsonl("b", 1)).unwrap();
    std::fs::write(root.join("ignored.txt"), "not json").unwrap();

    let source = FragmentSource::directory(root, "**/*.jsonl", FragmentParser::Lines(FileFormat::JsonLines))
        .unwrap()
        .refresh_every(Duration::from_millis(20))
        .settle_time(Duration::from_millis(100));
    let stats = source.stats();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("dir", source, reader());
    let shutdown = pipeline.shutdown_handle();
    let running = tokio::spawn(pipeline.run());

    eventually("the first files", || stats.read() == 2).await;
    assert_eq!(
        per_file(&table),
        BTreeMap::from([("a".into(), 2), ("b".into(), 1)])
    );

    // Unchanged files are not read again, however many refreshes pass.
    let listings = stats.listings();
    eventually("more refreshes", || stats.listings() >= listings + 3).await;
    assert_eq!(stats.read(), 2);

    // A changed file is read again; a new one is read.
    std::fs::write(root.join("sub/b.jsonl"), jsonl("b", 3)).unwrap();
    std::fs::write(root.join("c.jsonl"), jsonl("c", 1)).unwrap();
    eventually("the changed and new files", || stats.read() == 4).await;
    let listings = stats.listings();
    eventually("more refreshes", || stats.listings() >= listings + 3).await;
    assert_eq!(stats.read(), 4);
    assert_eq!(
        per_file(&table),
        BTreeMap::from([("a".into(), 2), ("b".into(), 4), ("c".into(), 1)])
    );

    shutdown.shutdown();
    running.await.unwrap().unwrap();
}

/// A store that counts reads, has a prefix, and fails to read one fragment.
#[derive(Default)]
struct Store {
    contexts: AtomicUsize,
    reads: Arc<AtomicUsize>,
    listings_under_prefix: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl FragmentStore for Store {
    type Context = String;

    async fn context(&mut self) -> Result<String, BoxError> {
        self.contexts.fetch_add(1, Ordering::SeqCst);
        Ok("session".into())
    }

    async fn list(&self, context: &String, prefix: Option<&Fragment>) -> Result<Vec<Fragment>, BoxError> {
        assert_eq!(context, "session");
        Ok(match prefix {
            None => vec![
                Fragment::new("array.json", "1"),
                Fragment::new("broken.json", "1"),
                Fragment::prefix("folder/", "f1"),
            ],
            Some(prefix) => {
                assert_eq!(prefix.name, "folder/");
                self.listings_under_prefix.fetch_add(1, Ordering::SeqCst);
                vec![
                    Fragment::new("folder/object.json", "1"),
                    Fragment::new("folder/lines.csv", "1"),
                ]
            }
        })
    }

    async fn read(&self, _: &String, fragment: &Fragment) -> Result<Bytes, BoxError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        Ok(Bytes::from(match fragment.name.as_str() {
            "array.json" => r#"[{"n": 1, "file": "array"}, {"n": 2, "file": "array"}]"#,
            "folder/object.json" => r#"{"n": 1, "file": "object"}"#,
            "folder/lines.csv" => "file,n\ncsv,1\n\ncsv,2\n",
            _ => return Err("access denied".into()),
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_store_with_prefixes_parsers_and_a_skipped_fragment() {
    let store = Store::default();
    let reads = store.reads.clone();
    let under_prefix = store.listings_under_prefix.clone();
    // One parser per source: JSON documents, or CSV chosen by name in a custom parser.
    let parser = FragmentParser::custom(|bytes, on_next| {
        if bytes.starts_with(b"file,") {
            let mut reader = csv::Reader::from_reader(bytes);
            for record in reader.records() {
                let record = record?;
                on_next(serde_json::json!({ "file": &record[0], "n": record[1].parse::<i64>()? }));
            }
        } else {
            match serde_json::from_slice(bytes)? {
                serde_json::Value::Array(items) => items.into_iter().for_each(&mut *on_next),
                item => on_next(item),
            }
        }
        Ok(())
    });
    let source = FragmentSource::new(store, parser)
        .on_error(FragmentErrorPolicy::Skip)
        .refresh_every(Duration::from_millis(20));
    let stats = source.stats();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("store", source, reader());
    let shutdown = pipeline.shutdown_handle();
    let running = tokio::spawn(pipeline.run());

    eventually("every fragment", || stats.read() == 3 && stats.skipped() == 1).await;
    let listings = stats.listings();
    eventually("more refreshes", || stats.listings() >= listings + 3).await;
    shutdown.shutdown();
    running.await.unwrap().unwrap();

    assert_eq!(
        reads.load(Ordering::SeqCst),
        4,
        "each fragment read once, the broken one too"
    );
    assert_eq!(
        stats.skipped(),
        1,
        "the broken fragment is skipped once per fingerprint"
    );
    assert_eq!(
        under_prefix.load(Ordering::SeqCst),
        1,
        "an unchanged prefix is not listed again"
    );
    assert_eq!(
        per_file(&table),
        BTreeMap::from([("array".into(), 2), ("csv".into(), 2), ("object".into(), 1)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_error_fails_the_source_naming_the_fragment() {
    let mut pipeline = Pipeline::new();
    let _table = pipeline.read(
        "store",
        FragmentSource::new(Store::default(), FragmentParser::Json),
        reader(),
    );
    let error = pipeline.run().await.unwrap_err().to_string();
    assert!(
        error.contains("cannot read fragment `broken.json`: access denied"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_parsers_per_fragment_with_bad_input_reported() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(
        root.join("a.json"),
        r#"[{"n": 1, "file": "a"}, {"n": "x", "file": "a"}]"#,
    )
    .unwrap();
    std::fs::write(root.join("b.json"), r#"{"n": 1, "file": "b"}"#).unwrap();
    std::fs::write(root.join("c.json"), r#"{"n": 1, "#).unwrap();
    let mut pipeline = Pipeline::new();
    let source = FragmentSource::directory(root, "*.json", FragmentParser::Json)
        .unwrap()
        .settle_time(Duration::ZERO);
    let table = pipeline.read("dir", source, reader().error_policy(ErrorPolicy::SkipAndReport));
    pipeline.run().await.unwrap();
    assert_eq!(
        per_file(&table),
        BTreeMap::from([("a".into(), 1), ("b".into(), 1)])
    );
    assert_eq!(table.stats().rejected(), 2);

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("x.tsv"), "\u{feff}n\tfile\n1\tx\n2\tx\n").unwrap();
    std::fs::write(root.join("y.tsv"), "n\tfile\n1\ty\n").unwrap();
    let mut pipeline = Pipeline::new();
    let source = FragmentSource::directory(root, "*.tsv", FragmentParser::Lines(FileFormat::Tsv))
        .unwrap()
        .settle_time(Duration::ZERO);
    let table = pipeline.read("dir", source, reader());
    pipeline.run().await.unwrap();
    assert_eq!(
        per_file(&table),
        BTreeMap::from([("x".into(), 2), ("y".into(), 1)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_skips_the_fragments_already_read_unless_changed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("a.jsonl"), jsonl("a", 2)).unwrap();
    std::fs::write(root.join("b.jsonl"), jsonl("b", 1)).unwrap();
    let directory = || {
        FragmentSource::new(
            DirectoryStore::new(root, "*.jsonl").unwrap().content_hash(true),
            FragmentParser::Lines(FileFormat::JsonLines),
        )
        .settle_time(Duration::ZERO)
    };
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("dir", directory(), reader());
    pipeline.run().await.unwrap();
    let offset = table.committed_offsets()[0].1.clone();

    std::fs::write(root.join("b.jsonl"), jsonl("b", 2)).unwrap();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("dir", directory(), reader().resume_from(offset));
    pipeline.run().await.unwrap();
    assert_eq!(per_file(&table), BTreeMap::from([("b".into(), 2)]));
}

/// Regression: a FIFO matching the pattern was listed like a file; hashing or reading
/// it blocked a thread until a writer came, so the source never ended and dropping
/// the runtime hung. Only regular files are fragments.
#[cfg(unix)]
#[test]
fn a_fifo_in_the_directory_is_not_a_fragment() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    std::fs::write(root.join("a.jsonl"), jsonl("a", 2)).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(root.join("b.jsonl"))
        .status()
        .unwrap();
    assert!(made.success());
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let counts = runtime.block_on(async {
            let source = FragmentSource::new(
                DirectoryStore::new(&root, "*.jsonl").unwrap().content_hash(true),
                FragmentParser::Lines(FileFormat::JsonLines),
            )
            .settle_time(Duration::ZERO);
            let mut pipeline = Pipeline::new();
            let table = pipeline.read("dir", source, reader());
            pipeline.run().await.unwrap();
            per_file(&table)
        });
        drop(runtime);
        let _ = done.send(counts);
    });
    let counts = finished
        .recv_timeout(Duration::from_secs(10))
        .expect("the source still runs (or the runtime cannot drop) after 10 s");
    assert_eq!(counts, BTreeMap::from([("a".into(), 2)]));
}

#[test]
fn an_invalid_glob_is_an_error() {
    let error = DirectoryStore::new(".", "a[").unwrap_err().to_string();
    assert!(error.contains("invalid glob pattern `a[`"), "{error}");
}

/// An in-memory store the test changes while the source runs, logging every listing and
/// read (with the paused clock's time): the settling and forgetting logic without file
/// system timestamps.
#[derive(Clone)]
struct Memory(Arc<Mutex<MemoryState>>);

struct MemoryState {
    start: tokio::time::Instant,
    /// name -> (fingerprint, content, the prefix it is listed under)
    fragments: BTreeMap<String, (String, String, Option<String>)>,
    /// name -> (fingerprint, the prefix it is listed under)
    prefixes: BTreeMap<String, (String, Option<String>)>,
    /// `name@fingerprint` and when, for every read.
    reads: Vec<(String, Duration)>,
    /// Listings, by the prefix listed (`None`: the top level).
    listings: BTreeMap<Option<String>, usize>,
    /// Shuts the pipeline down as the n-th read (from 1) starts.
    shutdown_at_read: Option<(usize, ShutdownHandle)>,
}

impl Memory {
    fn new() -> Self {
        Memory(Arc::new(Mutex::new(MemoryState {
            start: tokio::time::Instant::now(),
            fragments: BTreeMap::new(),
            prefixes: BTreeMap::new(),
            reads: Vec::new(),
            listings: BTreeMap::new(),
            shutdown_at_read: None,
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.0.lock().unwrap()
    }

    fn put(&self, name: &str, fingerprint: &str, content: impl Into<String>) {
        self.put_under(None, name, fingerprint, content);
    }

    fn put_under(&self, prefix: Option<&str>, name: &str, fingerprint: &str, content: impl Into<String>) {
        self.state().fragments.insert(
            name.into(),
            (fingerprint.into(), content.into(), prefix.map(Into::into)),
        );
    }

    fn prefix(&self, name: &str, fingerprint: &str) {
        self.state()
            .prefixes
            .insert(name.into(), (fingerprint.into(), None));
    }

    fn remove(&self, name: &str) {
        let mut state = self.state();
        state.fragments.remove(name);
        state.prefixes.remove(name);
    }

    /// `name@fingerprint` of every read, in order.
    fn reads(&self) -> Vec<String> {
        self.state().reads.iter().map(|(read, _)| read.clone()).collect()
    }

    /// When `name@fingerprint` was read, since the store was made.
    fn read_at(&self, read: &str) -> Duration {
        let state = self.state();
        let found = state.reads.iter().find(|(r, _)| r == read);
        found.unwrap_or_else(|| panic!("{read} was not read")).1
    }

    fn listings_under(&self, prefix: Option<&str>) -> usize {
        self.state()
            .listings
            .get(&prefix.map(String::from))
            .copied()
            .unwrap_or(0)
    }
}

#[async_trait::async_trait]
impl FragmentStore for Memory {
    type Context = ();

    async fn context(&mut self) -> Result<(), BoxError> {
        Ok(())
    }

    async fn list(&self, _: &(), prefix: Option<&Fragment>) -> Result<Vec<Fragment>, BoxError> {
        let mut state = self.state();
        let under = prefix.map(|p| p.name.clone());
        *state.listings.entry(under.clone()).or_default() += 1;
        let mut listed: Vec<Fragment> = state
            .prefixes
            .iter()
            .filter(|(_, (_, parent))| *parent == under)
            .map(|(name, (fingerprint, _))| Fragment::prefix(name, fingerprint))
            .collect();
        listed.extend(
            state
                .fragments
                .iter()
                .filter(|(_, (_, _, parent))| *parent == under)
                .map(|(name, (fingerprint, _, _))| Fragment::new(name, fingerprint)),
        );
        Ok(listed)
    }

    async fn read(&self, _: &(), fragment: &Fragment) -> Result<Bytes, BoxError> {
        let mut state = self.state();
        let at = state.start.elapsed();
        state
            .reads
            .push((format!("{}@{}", fragment.name, fragment.fingerprint), at));
        if let Some((n, shutdown)) = &state.shutdown_at_read
            && *n == state.reads.len()
        {
            shutdown.shutdown();
        }
        match state.fragments.get(&fragment.name) {
            Some((_, content, _)) => Ok(Bytes::from(content.clone())),
            None => Err(Box::new(std::io::Error::from(std::io::ErrorKind::NotFound))),
        }
    }
}

fn json_lines() -> FragmentParser {
    FragmentParser::Lines(FileFormat::JsonLines)
}

/// The fragments (and prefixes) recorded in the table's last committed offset.
fn committed_fragments(table: &Table) -> Vec<String> {
    let offsets = table.committed_offsets();
    let Some((_, offset)) = offsets.first() else {
        return Vec::new();
    };
    offset["fragments"]
        .as_object()
        .expect("a fragment offset")
        .keys()
        .cloned()
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_fragment_is_read_once_its_fingerprint_has_settled() {
    let store = Memory::new();
    store.put("a", "v1", jsonl("a", 1));
    store.put("b", "v1", jsonl("b", 1));
    let source = FragmentSource::new(store.clone(), json_lines())
        .refresh_every(Duration::from_millis(100))
        .settle_time(Duration::from_secs(1));
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("store", source, reader().error_policy(ErrorPolicy::SkipAndReport));
    let shutdown = pipeline.shutdown_handle();
    let running = tokio::spawn(pipeline.run());

    // `a` is written in three pieces, 300 ms apart; `b` never changes.
    tokio::time::sleep(Duration::from_millis(350)).await;
    store.put("a", "v2", jsonl("a", 2));
    tokio::time::sleep(Duration::from_millis(300)).await;
    store.put("a", "v3", jsonl("a", 3));
    tokio::time::sleep(Duration::from_secs(3)).await;
    shutdown.shutdown();
    running.await.unwrap().unwrap();

    assert_eq!(store.reads(), ["b@v1", "a@v3"], "each read once, when settled");
    assert!(
        store.read_at("b@v1") >= Duration::from_secs(1)
            && store.read_at("b@v1") < Duration::from_millis(1200),
        "{:?}",
        store.read_at("b@v1")
    );
    assert!(
        store.read_at("a@v3") >= Duration::from_millis(1650),
        "{:?}",
        store.read_at("a@v3")
    );
    assert_eq!(
        per_file(&table),
        BTreeMap::from([("a".into(), 3), ("b".into(), 1)])
    );
    assert_eq!(table.stats().rejected(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_one_shot_source_lists_again_for_unsettled_fragments_then_ends() {
    let store = Memory::new();
    store.put("a", "v1", jsonl("a", 1));
    store.put("b", "v1", jsonl("b", 1));
    let source = FragmentSource::new(store.clone(), json_lines()).settle_time(Duration::from_secs(1));
    let stats = source.stats();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("store", source, reader());
    let started = tokio::time::Instant::now();
    let running = tokio::spawn(pipeline.run());

    // `b` changes before it settles: the listing at 1 s sees the change, and the one at
    // 2 s reads it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    store.put("b", "v2", jsonl("b", 2));
    running.await.unwrap().unwrap();

    assert_eq!(store.reads(), ["a@v1", "b@v2"]);
    assert_eq!(store.read_at("a@v1"), Duration::from_secs(1));
    assert_eq!(store.read_at("b@v2"), Duration::from_secs(2));
    assert_eq!(store.listings_under(None), 3);
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(
        per_file(&table),
        BTreeMap::from([("a".into(), 1), ("b".into(), 2)])
    );
    assert_eq!(stats.read(), 2);
    assert_eq!(committed_fragments(&table), ["a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_in_pieces_is_read_once_by_default() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("growing.jsonl");
    let content = jsonl("growing", 40);
    // Pieces that cut lines in the middle, as a writer flushing a buffer does.
    let pieces: Vec<&[u8]> = content.as_bytes().chunks(content.len() / 6 + 1).collect();
    assert!(pieces.len() >= 6);

    let source = FragmentSource::directory(dir.path(), "*.jsonl", json_lines())
        .unwrap()
        .refresh_every(Duration::from_millis(20));
    let stats = source.stats();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("dir", source, reader().error_policy(ErrorPolicy::SkipAndReport));
    let shutdown = pipeline.shutdown_handle();
    let running = tokio::spawn(pipeline.run());

    let mut file = std::fs::File::create(&path).unwrap();
    for piece in pieces {
        file.write_all(piece).unwrap();
        file.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    drop(file);
    eventually("the file", || stats.read() >= 1).await;
    let listings = stats.listings();
    eventually("more refreshes", || stats.listings() >= listings + 3).await;
    shutdown.shutdown();
    running.await.unwrap().unwrap();

    assert_eq!(stats.read(), 1, "read once, when finished");
    assert_eq!(per_file(&table), BTreeMap::from([("growing".into(), 40)]));
    assert_eq!(table.stats().rejected(), 0, "no cut line was read");
}

#[tokio::test(start_paused = true)]
async fn a_deleted_fragment_is_forgotten_and_read_again_if_it_comes_back() {
    let store = Memory::new();
    store.put("a", "1", jsonl("a", 1));
    store.put("b", "1", jsonl("b", 1));
    let source = FragmentSource::new(store.clone(), json_lines()).refresh_every(Duration::from_secs(1));
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("store", source, reader());
    let shutdown = pipeline.shutdown_handle();
    let running = tokio::spawn(pipeline.run());

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(committed_fragments(&table), ["a", "b"]);
    store.remove("a");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        committed_fragments(&table),
        ["b"],
        "a deleted fragment is forgotten"
    );
    store.put("a", "1", jsonl("a", 1));
    tokio::time::sleep(Duration::from_secs(1)).await;
    shutdown.shutdown();
    running.await.unwrap().unwrap();

    assert_eq!(
        store.reads(),
        ["a@1", "b@1", "a@1"],
        "a fragment that comes back is read again"
    );
    assert_eq!(committed_fragments(&table), ["a", "b"]);
}

#[tokio::test(start_paused = true)]
async fn what_an_unchanged_prefix_holds_is_kept_and_a_removed_prefix_is_forgotten_whole() {
    let store = Memory::new();
    store.put("top", "1", jsonl("top", 1));
    store.prefix("folder/", "p1");
    store.put_under(Some("folder/"), "folder/x", "1", jsonl("x", 1));
    store.put_under(Some("folder/"), "folder/y", "1", jsonl("y", 1));
    let source = FragmentSource::new(store.clone(), json_lines()).refresh_every(Duration::from_secs(1));
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("store", source, reader());
    let shutdown = pipeline.shutdown_handle();
    let running = tokio::spawn(pipeline.run());

    // Several listings: the unchanged prefix is not listed again, and what it holds is
    // neither forgotten nor read again.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(store.listings_under(Some("folder/")), 1);
    assert_eq!(
        committed_fragments(&table),
        ["folder/", "folder/x", "folder/y", "top"]
    );

    // The prefix changes: listed again, `y` is gone.
    store.remove("folder/y");
    store.prefix("folder/", "p2");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(store.listings_under(Some("folder/")), 2);
    assert_eq!(committed_fragments(&table), ["folder/", "folder/x", "top"]);

    // The prefix is gone: so is everything under it.
    store.remove("folder/");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(committed_fragments(&table), ["top"]);
    shutdown.shutdown();
    running.await.unwrap().unwrap();
    assert_eq!(store.reads(), ["folder/x@1", "folder/y@1", "top@1"]);
}

#[tokio::test(start_paused = true)]
async fn a_prefix_is_listed_again_while_a_fragment_under_it_settles() {
    let store = Memory::new();
    store.prefix("folder/", "p1");
    store.put_under(Some("folder/"), "folder/x", "1", jsonl("x", 1));
    let source = FragmentSource::new(store.clone(), json_lines())
        .refresh_every(Duration::from_millis(300))
        .settle_time(Duration::from_secs(1));
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("store", source, reader());
    let shutdown = pipeline.shutdown_handle();
    let running = tokio::spawn(pipeline.run());

    tokio::time::sleep(Duration::from_secs(3)).await;
    shutdown.shutdown();
    running.await.unwrap().unwrap();
    assert_eq!(store.reads(), ["folder/x@1"]);
    assert_eq!(per_file(&table), BTreeMap::from([("x".into(), 1)]));
    assert_eq!(committed_fragments(&table), ["folder/", "folder/x"]);
}

/// Rows `0..rows` of `file` in an append table, four fragments.
fn four_fragments(rows: usize) -> Memory {
    let store = Memory::new();
    for file in ["a", "b", "c", "d"] {
        store.put(file, "1", jsonl(file, rows));
    }
    store
}

/// Each `(file, n)` row of the tables, counted.
fn rows_of(tables: &[&Table]) -> BTreeMap<(String, i64), usize> {
    let mut counts = BTreeMap::new();
    for table in tables {
        for (_, row) in table.snapshot().rows() {
            let file = row.get("file").and_then(|v| v.as_str()).unwrap().to_owned();
            let n = row.get("n").and_then(|v| v.as_int()).unwrap();
            *counts.entry((file, n)).or_default() += 1;
        }
    }
    counts
}

/// A reader that commits often and makes the source wait for room, so a shutdown finds
/// it in the middle of a fragment.
fn small_reader() -> Reader {
    Reader::json(schema())
        .autocommit_duration(Duration::from_millis(1))
        .max_batch_size(7)
        .channel_capacity(5)
}

/// Runs the store to the end, resuming from `offset`.
async fn resume(store: Memory, offset: Option<serde_json::Value>) -> Table {
    let mut reader = small_reader();
    if let Some(offset) = offset {
        reader = reader.resume_from(offset);
    }
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("store", FragmentSource::new(store, json_lines()), reader);
    pipeline.run().await.unwrap();
    table
}

/// The rows of the four fragments that the tables do not hold exactly once, with how
/// many times they hold them.
fn not_exactly_once(tables: &[&Table], rows: usize) -> Vec<((String, i64), usize)> {
    let counts = rows_of(tables);
    let mut wrong: Vec<_> = counts
        .iter()
        .filter(|&(_, &count)| count != 1)
        .map(|(row, &count)| (row.clone(), count))
        .collect();
    for file in ["a", "b", "c", "d"] {
        for n in 0..rows as i64 {
            let row = (file.to_owned(), n);
            if !counts.contains_key(&row) {
                wrong.push((row, 0));
            }
        }
    }
    wrong
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_in_the_middle_of_a_fragment_then_resume_gives_every_row_exactly_once() {
    const ROWS: usize = 300;
    for stop_after in [1, 50, 299, 301, 555, 900, 1111] {
        let store = four_fragments(ROWS);
        let mut pipeline = Pipeline::new();
        let first = pipeline.read(
            "store",
            FragmentSource::new(store.clone(), json_lines()),
            small_reader(),
        );
        let shutdown = pipeline.shutdown_handle();
        let mut changes = first.changes();
        let watcher = tokio::spawn(async move {
            let mut rows = 0;
            while let Some(batch) = changes.next().await {
                rows += batch.len();
                if rows >= stop_after {
                    shutdown.shutdown();
                }
            }
        });
        pipeline.run().await.unwrap();
        watcher.await.unwrap();
        assert!(first.len() < 4 * ROWS, "stopped before the end ({stop_after})");

        let offset = first.committed_offsets().pop().map(|(_, offset)| offset);
        let second = resume(store, offset).await;
        assert_eq!(
            not_exactly_once(&[&first, &second], ROWS),
            [],
            "stopped after {stop_after} rows ({} committed)",
            first.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_between_fragments_then_resume_gives_every_row_exactly_once() {
    const ROWS: usize = 50;
    for read in 1..=4 {
        let store = four_fragments(ROWS);
        let mut pipeline = Pipeline::new();
        store.state().shutdown_at_read = Some((read, pipeline.shutdown_handle()));
        let first = pipeline.read(
            "store",
            FragmentSource::new(store.clone(), json_lines()),
            small_reader(),
        );
        pipeline.run().await.unwrap();
        store.state().shutdown_at_read = None;

        let offset = first.committed_offsets().pop().map(|(_, offset)| offset);
        let second = resume(store, offset).await;
        assert_eq!(
            not_exactly_once(&[&first, &second], ROWS),
            [],
            "stopped at read {read}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragment_cut_short_that_changed_before_the_resume_is_read_whole() {
    const ROWS: usize = 300;
    let store = four_fragments(ROWS);
    let mut pipeline = Pipeline::new();
    let first = pipeline.read(
        "store",
        FragmentSource::new(store.clone(), json_lines()),
        small_reader(),
    );
    let shutdown = pipeline.shutdown_handle();
    let mut changes = first.changes();
    let watcher = tokio::spawn(async move {
        let mut rows = 0;
        while let Some(batch) = changes.next().await {
            rows += batch.len();
            if rows >= 100 {
                shutdown.shutdown();
            }
        }
    });
    pipeline.run().await.unwrap();
    watcher.await.unwrap();
    let offset = first.committed_offsets().pop().unwrap().1;
    let partial = offset["partial"].as_array().unwrap();
    assert_eq!(partial.len(), 1, "{offset}");
    assert_eq!(partial[0]["name"], "a");

    store.put("a", "2", jsonl("a", ROWS));
    let second = resume(store, Some(offset)).await;
    assert_eq!(second.len(), 4 * ROWS, "`a` changed: read whole, and the rest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cost_of_offsets_does_not_grow_with_the_fragments_seen() {
    // Reporting every fragment's fingerprint after every fragment took minutes here.
    const FRAGMENTS: usize = 10_000;
    let store = Memory::new();
    for i in 0..FRAGMENTS {
        store.put(
            &format!("f{i:05}"),
            "1",
            format!("{{\"n\": {i}, \"file\": \"f\"}}\n"),
        );
    }
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("store", FragmentSource::new(store, json_lines()), reader());
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), pipeline.run())
        .await
        .expect("10,000 fragments within 30 s")
        .unwrap();
    eprintln!("{FRAGMENTS} fragments in {:?}", started.elapsed());
    assert_eq!(table.len(), FRAGMENTS);
    assert_eq!(committed_fragments(&table).len(), FRAGMENTS);
}

#[tokio::test(start_paused = true)]
async fn extreme_refresh_and_settle_times_wait_for_the_shutdown_without_panicking() {
    // Refresh `Duration::MAX`: one listing, then nothing until the shutdown.
    let store = Memory::new();
    store.put("a", "1", jsonl("a", 1));
    let source = FragmentSource::new(store.clone(), json_lines()).refresh_every(Duration::MAX);
    let stats = source.stats();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("store", source, reader());
    let shutdown = pipeline.shutdown_handle();
    let running = tokio::spawn(pipeline.run());
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(stats.listings(), 1);
    shutdown.shutdown();
    running.await.unwrap().unwrap();
    assert_eq!(table.len(), 1);

    // Settle `Duration::MAX`, with and without refresh: nothing ever settles.
    for refresh in [None, Some(Duration::from_secs(1)), Some(Duration::MAX)] {
        let store = Memory::new();
        store.put("a", "1", jsonl("a", 1));
        let mut source = FragmentSource::new(store.clone(), json_lines()).settle_time(Duration::MAX);
        if let Some(refresh) = refresh {
            source = source.refresh_every(refresh);
        }
        let mut pipeline = Pipeline::new();
        let table = pipeline.read("store", source, reader());
        let shutdown = pipeline.shutdown_handle();
        let running = tokio::spawn(pipeline.run());
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(
            !running.is_finished(),
            "a fragment that never settles is waited for"
        );
        shutdown.shutdown();
        running.await.unwrap().unwrap();
        assert!(store.reads().is_empty());
        assert!(table.is_empty());
    }
}

#[test]
#[should_panic(expected = "refresh interval must be positive")]
fn a_zero_refresh_interval_is_refused() {
    let _ = FragmentSource::new(Memory::new(), json_lines()).refresh_every(Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragment_deleted_between_listing_and_reading_is_passed_over() {
    let store = Memory::new();
    store.put("a", "1", jsonl("a", 1));
    store.put("b", "1", jsonl("b", 1));
    /// Lists `gone` too, which reads as not found.
    struct Vanishing(Memory);
    #[async_trait::async_trait]
    impl FragmentStore for Vanishing {
        type Context = ();
        async fn context(&mut self) -> Result<(), BoxError> {
            Ok(())
        }
        async fn list(&self, _: &(), prefix: Option<&Fragment>) -> Result<Vec<Fragment>, BoxError> {
            let mut listed = self.0.list(&(), prefix).await?;
            listed.push(Fragment::new("gone", "1"));
            Ok(listed)
        }
        async fn read(&self, _: &(), fragment: &Fragment) -> Result<Bytes, BoxError> {
            self.0.read(&(), fragment).await
        }
    }
    let mut pipeline = Pipeline::new();
    let table = pipeline.read(
        "store",
        FragmentSource::new(Vanishing(store.clone()), json_lines()),
        reader(),
    );
    pipeline.run().await.unwrap();
    assert_eq!(store.reads(), ["a@1", "b@1", "gone@1"]);
    assert_eq!(
        per_file(&table),
        BTreeMap::from([("a".into(), 1), ("b".into(), 1)])
    );
    assert_eq!(committed_fragments(&table), ["a", "b"], "not recorded as read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_offset_from_another_source_fails_the_source() {
    let mut pipeline = Pipeline::new();
    let _table = pipeline.read(
        "store",
        FragmentSource::new(Memory::new(), json_lines()),
        reader().resume_from(serde_json::json!({"path": "cats.csv", "position": 26})),
    );
    let error = pipeline.run().await.unwrap_err().to_string();
    assert!(
        error.contains("resume offset is not one a FragmentSource reported"),
        "{error}"
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_with_a_link_cycle_and_a_dangling_link_is_listed_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("sub")).unwrap();
    std::fs::write(root.join("sub/a.jsonl"), jsonl("a", 1)).unwrap();
    std::os::unix::fs::symlink("..", root.join("sub/up")).unwrap();
    std::os::unix::fs::symlink("missing.jsonl", root.join("dangling.jsonl")).unwrap();
    let mut pipeline = Pipeline::new();
    let source = FragmentSource::directory(root, "**/*.jsonl", json_lines())
        .unwrap()
        .settle_time(Duration::ZERO);
    let table = pipeline.read("dir", source, reader());
    pipeline.run().await.unwrap();
    assert_eq!(per_file(&table), BTreeMap::from([("a".into(), 1)]));
}
