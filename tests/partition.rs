//! Partitioned sources: partitions listed, built with their own resume offsets, run
//! concurrently into one table, assigned to workers, failing by name.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use futures::StreamExt;
use intake::{
    BoxError, ChangeBatch, Column, DataType, Error, Offsets, PartitionedSource, Pipeline, Reader, Schema,
    Source, SourceContext, Subscriber, source_fn,
};
use serde_json::{Value as Json, json};

/// An append table (no primary key): a row read twice would be two rows.
fn reader() -> Reader {
    Reader::json(
        Schema::new([
            Column::new("partition", DataType::String),
            Column::new("seq", DataType::Int),
        ])
        .unwrap(),
    )
}

/// The rows of an append table as `(partition, seq)`, sorted; repeats kept.
fn rows(table: &intake::Table) -> Vec<(String, i64)> {
    let mut rows: Vec<_> = table
        .snapshot()
        .rows()
        .iter()
        .map(|(_, row)| {
            (
                row["partition"].as_str().unwrap().to_owned(),
                row["seq"].as_int().unwrap(),
            )
        })
        .collect();
    rows.sort();
    rows
}

/// Every `(partition, seq)` for `seq` below each partition's count.
fn expected(counts: &[(&str, u64)]) -> Vec<(String, i64)> {
    let mut rows: Vec<_> = counts
        .iter()
        .flat_map(|&(partition, count)| (0..count).map(move |seq| (partition.to_owned(), seq as i64)))
        .collect();
    rows.sort();
    rows
}

/// What the partition named in the key does.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Sends this many rows (`seq` 0, 1, ...), reporting `seq` as the offset after each,
    /// skipping those up to its resume offset.
    Rows(u64),
    /// Cannot be built.
    FailBuild,
    /// Sends one row, then fails.
    FailAfterOne,
    /// Waits for shutdown.
    Endless,
}

/// Each partition built, with the resume offset it was given.
type Builds = Arc<Mutex<Vec<(String, Option<Json>)>>>;

/// A partitioned source of in-memory shards; records each build with its resume offset.
#[derive(Clone)]
struct Shards {
    /// In the order they are listed.
    listed: Vec<String>,
    behaviour: BTreeMap<String, Behaviour>,
    builds: Builds,
}

impl Shards {
    fn new(partitions: &[(&str, Behaviour)]) -> Self {
        Shards {
            listed: partitions.iter().map(|(name, _)| (*name).to_owned()).collect(),
            behaviour: partitions
                .iter()
                .map(|(name, behaviour)| ((*name).to_owned(), *behaviour))
                .collect(),
            builds: Arc::default(),
        }
    }

    fn rows(counts: &[(&str, u64)]) -> Self {
        let partitions: Vec<_> = counts
            .iter()
            .map(|&(name, count)| (name, Behaviour::Rows(count)))
            .collect();
        Shards::new(&partitions)
    }

    fn builds(&self) -> Vec<(String, Option<Json>)> {
        let mut builds = self.builds.lock().unwrap().clone();
        builds.sort_by(|a, b| a.0.cmp(&b.0));
        builds
    }
}

#[async_trait::async_trait]
impl PartitionedSource for Shards {
    async fn list_partitions(&mut self) -> Result<Vec<String>, BoxError> {
        Ok(self.listed.clone())
    }

    async fn build_partition(
        &mut self,
        partition: &str,
        resume: Option<&Json>,
    ) -> Result<Box<dyn Source>, BoxError> {
        self.builds
            .lock()
            .unwrap()
            .push((partition.to_owned(), resume.cloned()));
        let behaviour = self.behaviour[partition];
        let partition = partition.to_owned();
        let resume = resume.cloned();
        if let Behaviour::FailBuild = behaviour {
            return Err("no such shard".into());
        }
        Ok(Box::new(source_fn(move |ctx: SourceContext| async move {
            // The partition's context carries its name and the same resume offset.
            assert!(ctx.name().ends_with(&format!("/{partition}")), "{}", ctx.name());
            assert_eq!(ctx.resume_offset(), resume.as_ref());
            match behaviour {
                Behaviour::Rows(count) => {
                    let first = resume.as_ref().map_or(0, |seq| seq.as_u64().unwrap() + 1);
                    for seq in first..count {
                        ctx.next_json(json!({ "partition": partition, "seq": seq }))
                            .await?;
                        ctx.report_offset(json!(seq)).await?;
                    }
                    Ok(())
                }
                Behaviour::FailAfterOne => {
                    ctx.next_json(json!({ "partition": partition, "seq": 0 })).await?;
                    ctx.commit().await?;
                    Err("the shard went away".into())
                }
                Behaviour::Endless => {
                    ctx.cancelled().await;
                    Ok(())
                }
                Behaviour::FailBuild => unreachable!("refused above"),
            }
        })))
    }
}

fn failed_names(error: &Error) -> Vec<String> {
    let Error::SourcesFailed(failures) = error else {
        panic!("expected source failures, got {error}");
    };
    let mut names: Vec<String> = failures.iter().map(|f| f.name().to_owned()).collect();
    names.sort();
    names
}

#[tokio::test]
async fn partitions_feed_one_table_with_offsets_kept_per_partition() {
    let counts = [("west", 3), ("east", 5), ("north", 1)];
    let mut pipeline = Pipeline::new();
    let table = pipeline.read_partitioned("shards", Shards::rows(&counts), reader());
    let batches = table.changes();
    pipeline.run().await.unwrap();

    assert_eq!(rows(&table), expected(&counts));
    let committed: BTreeMap<String, Json> = table.committed_offsets().into_iter().collect();
    assert_eq!(
        committed,
        BTreeMap::from([
            ("shards/east".to_owned(), json!(4)),
            ("shards/north".to_owned(), json!(0)),
            ("shards/west".to_owned(), json!(2)),
        ])
    );
    let batches: Vec<ChangeBatch> = batches.collect().await;
    let last = batches.last().expect("at least one commit");
    let offsets: BTreeMap<String, Json> = last
        .offsets()
        .iter()
        .map(|(name, offset)| (name.to_owned(), offset.clone()))
        .collect();
    assert_eq!(
        offsets, committed,
        "the last batch carries every partition's offset"
    );
    // Every batch's offsets cover exactly the rows committed up to it.
    let mut seen: Vec<(String, i64)> = Vec::new();
    for batch in &batches {
        seen.extend(batch.insertions().map(|c| {
            (
                c.row["partition"].as_str().unwrap().to_owned(),
                c.row["seq"].as_int().unwrap(),
            )
        }));
        for (name, offset) in batch.offsets().iter() {
            let partition = name.strip_prefix("shards/").unwrap();
            let last_seen = seen.iter().filter(|(p, _)| p == partition).map(|(_, s)| *s).max();
            assert_eq!(last_seen, offset.as_i64(), "{name} at time {}", batch.time());
        }
    }
}

#[tokio::test]
async fn each_partition_resumes_from_its_own_offset() {
    // The first run sees part of each shard (as if the process had stopped there);
    // the second sees everything and resumes from the offsets the last batch carried.
    let first_counts = [("a", 2), ("b", 5), ("c", 0)];
    let all_counts = [("a", 4), ("b", 5), ("c", 3)];

    let mut pipeline = Pipeline::new();
    let first = pipeline.read_partitioned("shards", Shards::rows(&first_counts), reader());
    let recorded = Arc::new(Mutex::new(Offsets::new()));
    first.subscribe(Subscriber::new().on_batch({
        let recorded = recorded.clone();
        move |batch| *recorded.lock().unwrap() = batch.offsets().clone()
    }));
    pipeline.run().await.unwrap();
    let recorded = recorded.lock().unwrap().clone();
    assert_eq!(
        serde_json::to_value(&recorded).unwrap(),
        json!({"shards/a": 1, "shards/b": 4})
    );

    // Stored and read back, as a service would between runs.
    let stored = serde_json::to_string(&recorded).unwrap();
    let shards = Shards::rows(&all_counts);
    let mut pipeline = Pipeline::new().resume_from(serde_json::from_str(&stored).unwrap());
    let second = pipeline.read_partitioned("shards", shards.clone(), reader());
    pipeline.run().await.unwrap();

    assert_eq!(
        shards.builds(),
        vec![
            ("a".to_owned(), Some(json!(1))),
            ("b".to_owned(), Some(json!(4))),
            ("c".to_owned(), None),
        ]
    );
    let mut all = rows(&first);
    all.extend(rows(&second));
    all.sort();
    assert_eq!(all, expected(&all_counts), "nothing read twice, nothing missed");
    let read_again: Vec<(String, i64)> = vec![
        ("a".into(), 2),
        ("a".into(), 3),
        ("c".into(), 0),
        ("c".into(), 1),
        ("c".into(), 2),
    ];
    assert_eq!(rows(&second), read_again);
}

#[tokio::test]
async fn with_persistence_each_partition_resumes_from_storage() {
    let dir = tempfile::tempdir().unwrap();
    let first_counts = [("a", 2), ("b", 5), ("c", 0)];
    let all_counts = [("a", 4), ("b", 5), ("c", 3)];
    let mut pipeline = Pipeline::new().persist(intake::Persistence::new(dir.path()));
    let first = pipeline.read_partitioned("shards", Shards::rows(&first_counts), reader());
    pipeline.run().await.unwrap();
    assert_eq!(rows(&first), expected(&first_counts));
    drop(first);

    // Restarted over the same storage: the table is back, and each partition resumes
    // from its own offset of the last durable commit.
    let shards = Shards::rows(&all_counts);
    let mut pipeline = Pipeline::new().persist(intake::Persistence::new(dir.path()));
    let second = pipeline.read_partitioned("shards", shards.clone(), reader());
    pipeline.run().await.unwrap();
    assert_eq!(
        shards.builds(),
        vec![
            ("a".to_owned(), Some(json!(1))),
            ("b".to_owned(), Some(json!(4))),
            ("c".to_owned(), None),
        ]
    );
    assert_eq!(
        rows(&second),
        expected(&all_counts),
        "nothing read twice, nothing missed"
    );
}

#[tokio::test]
async fn workers_read_each_partition_exactly_once() {
    let counts: Vec<(String, u64)> = (0..7).map(|i| (format!("p{i}"), i + 1)).collect();
    let counts: Vec<(&str, u64)> = counts.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    let mut all = Vec::new();
    let mut partitions_per_worker = Vec::new();
    for index in 0..3 {
        // Every worker lists the same set, each in an order of its own.
        let mut listed = counts.clone();
        listed.rotate_left(index * 2);
        if index == 1 {
            listed.reverse();
        }
        let shards = Shards::rows(&listed);
        let mut pipeline = Pipeline::new();
        // The worker may be set before or after the source is registered.
        let table = if index == 0 {
            pipeline = pipeline.worker(index, 3);
            pipeline.read_partitioned("shards", shards.clone(), reader())
        } else {
            let table = pipeline.read_partitioned("shards", shards.clone(), reader());
            pipeline = pipeline.worker(index, 3);
            table
        };
        pipeline.run().await.unwrap();
        let built: Vec<String> = shards.builds().into_iter().map(|(name, _)| name).collect();
        partitions_per_worker.push(built);
        all.extend(rows(&table));
    }
    assert_eq!(
        partitions_per_worker,
        [vec!["p0", "p3", "p6"], vec!["p1", "p4"], vec!["p2", "p5"]],
        "position i of the sorted list goes to worker i % 3"
    );
    all.sort();
    assert_eq!(all, expected(&counts));
}

#[tokio::test]
async fn a_worker_without_partitions_and_a_source_without_any_end_cleanly() {
    for (shards, worker) in [
        (Shards::rows(&[]), (0, 1)),
        (Shards::rows(&[("a", 1), ("b", 1)]), (2, 3)),
    ] {
        let ended = Arc::new(AtomicBool::new(false));
        let mut pipeline = Pipeline::new().worker(worker.0, worker.1);
        let table = pipeline.read_partitioned("shards", shards.clone(), reader());
        table.subscribe(Subscriber::new().on_end({
            let ended = ended.clone();
            move || ended.store(true, Ordering::SeqCst)
        }));
        pipeline.run().await.unwrap();
        assert!(table.is_empty());
        assert!(ended.load(Ordering::SeqCst), "the table ended");
        assert!(shards.builds().is_empty());
    }
}

#[tokio::test]
async fn a_failing_listing_fails_the_source_by_its_name_and_others_keep_running() {
    struct Unlistable;
    #[async_trait::async_trait]
    impl PartitionedSource for Unlistable {
        async fn list_partitions(&mut self) -> Result<Vec<String>, BoxError> {
            Err("the catalogue is down".into())
        }
        async fn build_partition(&mut self, _: &str, _: Option<&Json>) -> Result<Box<dyn Source>, BoxError> {
            unreachable!("nothing was listed")
        }
    }
    let mut pipeline = Pipeline::new();
    let broken = pipeline.read_partitioned("shards", Unlistable, reader());
    let fine = pipeline.read_partitioned("fine", Shards::rows(&[("a", 2)]), reader());
    let error = pipeline.run().await.unwrap_err();
    assert_eq!(failed_names(&error), ["shards"]);
    assert_eq!(
        error.to_string(),
        "source `shards` failed: cannot list its partitions: the catalogue is down"
    );
    assert!(broken.is_empty());
    assert_eq!(rows(&fine).len(), 2);
}

#[tokio::test]
async fn invalid_partition_names_fail_the_source() {
    for (listed, message) in [
        (vec!["a", "b", "a"], "partition `a` is listed twice"),
        (vec!["a", ""], "partition name \"\" is invalid"),
        (vec!["2024/01"], "partition name \"2024/01\" is invalid"),
    ] {
        let partitions: Vec<_> = listed.iter().map(|name| (*name, Behaviour::Rows(1))).collect();
        let shards = Shards::new(&partitions);
        let mut pipeline = Pipeline::new();
        let table = pipeline.read_partitioned("shards", shards.clone(), reader());
        let error = pipeline.run().await.unwrap_err();
        assert_eq!(failed_names(&error), ["shards"]);
        assert!(error.to_string().contains(message), "{error}");
        assert!(shards.builds().is_empty(), "nothing is read from a bad listing");
        assert!(table.is_empty());
    }
}

#[tokio::test]
async fn failing_partitions_are_reported_by_name_and_the_others_are_read() {
    let shards = Shards::new(&[
        ("a", Behaviour::FailBuild),
        ("b", Behaviour::FailAfterOne),
        ("c", Behaviour::Rows(3)),
    ]);
    let mut pipeline = Pipeline::new();
    let table = pipeline.read_partitioned("shards", shards, reader());
    let error = pipeline.run().await.unwrap_err();
    assert_eq!(failed_names(&error), ["shards/a", "shards/b"]);
    let message = error.to_string();
    assert!(
        message.contains("source `shards/a` failed: cannot build the partition's source: no such shard"),
        "{message}"
    );
    assert!(
        message.contains("source `shards/b` failed: the shard went away"),
        "{message}"
    );
    assert_eq!(rows(&table), expected(&[("b", 1), ("c", 3)]));
}

#[tokio::test]
async fn a_failing_partition_stops_a_fail_fast_pipeline() {
    let shards = Shards::new(&[("a", Behaviour::Endless), ("b", Behaviour::FailAfterOne)]);
    let mut pipeline = Pipeline::new().fail_fast(true);
    let table = pipeline.read_partitioned("shards", shards, reader());
    let error = tokio::time::timeout(Duration::from_secs(10), pipeline.run())
        .await
        .expect("the endless partition was stopped")
        .unwrap_err();
    assert_eq!(failed_names(&error), ["shards/b"]);
    assert_eq!(rows(&table), expected(&[("b", 1)]));
}

#[tokio::test]
async fn a_failing_build_stops_a_fail_fast_pipeline() {
    let shards = Shards::new(&[("a", Behaviour::Endless), ("b", Behaviour::FailBuild)]);
    let mut pipeline = Pipeline::new().fail_fast(true);
    let _table = pipeline.read_partitioned("shards", shards.clone(), reader());
    let error = tokio::time::timeout(Duration::from_secs(10), pipeline.run())
        .await
        .expect("the endless partition was stopped")
        .unwrap_err();
    assert_eq!(failed_names(&error), ["shards/b"]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_while_listing_ends_the_table() {
    struct Hanging;
    #[async_trait::async_trait]
    impl PartitionedSource for Hanging {
        async fn list_partitions(&mut self) -> Result<Vec<String>, BoxError> {
            std::future::pending().await
        }
        async fn build_partition(&mut self, _: &str, _: Option<&Json>) -> Result<Box<dyn Source>, BoxError> {
            unreachable!("nothing was listed")
        }
    }
    let mut pipeline = Pipeline::new();
    let table = pipeline.read_partitioned("shards", Hanging, reader());
    pipeline
        .run_until(tokio::time::sleep(Duration::from_secs(1)))
        .await
        .unwrap();
    assert!(table.is_empty());
}

/// Each partition blocks its thread until the other has started: read one after
/// the other, or both on one thread, they would wait for each other in vain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_run_in_parallel_on_the_multi_thread_runtime() {
    struct Meeting {
        arrived: Mutex<usize>,
        all_here: Condvar,
    }
    struct Pair(Arc<Meeting>);
    #[async_trait::async_trait]
    impl PartitionedSource for Pair {
        async fn list_partitions(&mut self) -> Result<Vec<String>, BoxError> {
            Ok(vec!["left".into(), "right".into()])
        }
        async fn build_partition(
            &mut self,
            partition: &str,
            _: Option<&Json>,
        ) -> Result<Box<dyn Source>, BoxError> {
            let meeting = self.0.clone();
            let partition = partition.to_owned();
            Ok(Box::new(source_fn(move |ctx: SourceContext| async move {
                // Blocks the thread on purpose: only a second thread can release it.
                let waited = {
                    let mut arrived = meeting.arrived.lock().unwrap();
                    *arrived += 1;
                    meeting.all_here.notify_all();
                    let (arrived, timeout) = meeting
                        .all_here
                        .wait_timeout_while(arrived, Duration::from_secs(10), |arrived| *arrived < 2)
                        .unwrap();
                    (!timeout.timed_out()).then_some(()).ok_or(*arrived)
                };
                if let Err(arrived) = waited {
                    return Err(format!("partition {partition} ran alone: {arrived} of 2 arrived").into());
                }
                ctx.next_json(json!({ "partition": partition, "seq": 0 })).await?;
                Ok(())
            })))
        }
    }
    let meeting = Arc::new(Meeting {
        arrived: Mutex::new(0),
        all_here: Condvar::new(),
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read_partitioned("pair", Pair(meeting), reader());
    pipeline.run().await.unwrap();
    assert_eq!(rows(&table), expected(&[("left", 1), ("right", 1)]));
}

#[test]
#[should_panic(expected = "Reader::resume_from does not apply to a partitioned source")]
fn a_reader_offset_is_refused_for_a_partitioned_source() {
    let mut pipeline = Pipeline::new();
    let _ = pipeline.read_partitioned("shards", Shards::rows(&[]), reader().resume_from(json!(3)));
}

#[test]
#[should_panic(expected = "the worker index must be less than the worker count (3 of 3)")]
fn a_worker_index_out_of_range_is_refused() {
    let _ = Pipeline::new().worker(3, 3);
}

#[test]
#[should_panic(expected = "the worker count must be at least 1")]
fn a_worker_count_of_zero_is_refused() {
    let _ = Pipeline::new().worker(0, 0);
}
