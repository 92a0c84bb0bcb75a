//! Fragment and directory sources: each fragment read once per fingerprint, parsers,
//! read errors, resume.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use intake_core::{BoxError, Column, DataType, ErrorPolicy, Pipeline, Reader, Schema, Table};
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
        .refresh_every(Duration::from_millis(20));
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
    let source = FragmentSource::directory(root, "*.json", FragmentParser::Json).unwrap();
    let table = pipeline.read("dir", source, reader().error_policy(ErrorPolicy::SkipAndReport));
    pipeline.run().await.unwrap();
    assert_eq!(
        per_file(&table),
        BTreeMap::from([("a".into(), 1), ("b".into(), 1)])
    );
    assert_eq!(table.stats().rejected, 2);

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("x.tsv"), "\u{feff}n\tfile\n1\tx\n2\tx\n").unwrap();
    std::fs::write(root.join("y.tsv"), "n\tfile\n1\ty\n").unwrap();
    let mut pipeline = Pipeline::new();
    let source = FragmentSource::directory(root, "*.tsv", FragmentParser::Lines(FileFormat::Tsv)).unwrap();
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

#[test]
fn an_invalid_glob_is_an_error() {
    let error = DirectoryStore::new(".", "a[").unwrap_err().to_string();
    assert!(error.contains("invalid glob pattern `a[`"), "{error}");
}
