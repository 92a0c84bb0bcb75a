//! The JetStream source on real servers: it reads every partition once, resumes after
//! its offsets, drops redeliveries, survives a broker restart, splits partitions
//! between workers, and fails clearly on a stream that is missing or laid out
//! differently.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use intake_core::{Column, DataType, Offsets, Pipeline, Reader, Reconnect, Schema, Table};
use intake_nats::{JetStreamSource, Partitions, partition_subject};
use support::{NatsServer, shared_url};

const PARTITIONS: u32 = 4;

/// A stream name no other test uses.
fn unique(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{name}_{nanos}_{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

async fn connect(url: &str) -> jetstream::Context {
    jetstream::new(async_nats::connect(url).await.unwrap())
}

/// A stream `name` on subjects `name.*`.
async fn create_stream(jetstream: &jetstream::Context, name: &str) {
    jetstream
        .create_stream(jetstream::stream::Config {
            name: name.into(),
            subjects: vec![format!("{name}.*")],
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Publishes messages `from..to` as `{"id": i, "key": i % 37}`, each on its key's
/// partition, waiting for every publish ack.
async fn publish(jetstream: &jetstream::Context, stream: &str, from: u64, to: u64) {
    for id in from..to {
        let key = (id % 37).to_string();
        let subject = partition_subject(stream, key.as_bytes(), PARTITIONS);
        let payload = format!(r#"{{"id": {id}, "key": {key}}}"#);
        jetstream
            .publish(subject, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

/// No primary key: the table appends, so a message applied twice is a row twice.
fn reader() -> Reader {
    let schema = Schema::new([
        Column::new("id", DataType::Int),
        Column::new("key", DataType::Int),
    ])
    .unwrap();
    Reader::json(schema).autocommit_duration(Duration::from_millis(5))
}

fn source(jetstream: jetstream::Context, stream: &str) -> JetStreamSource {
    JetStreamSource::new(jetstream, stream, Partitions::numbered(stream, PARTITIONS))
        .reconnect(
            Reconnect::default()
                .min_delay(Duration::from_millis(50))
                .max_delay(Duration::from_millis(500)),
        )
        .heartbeat(Duration::from_millis(500))
}

/// Every id in the table, with how often it is there.
fn ids(table: &Table) -> BTreeMap<i64, usize> {
    let mut ids = BTreeMap::new();
    for (_, row) in table.snapshot().rows() {
        *ids.entry(row.to_json()["id"].as_i64().unwrap()).or_default() += 1;
    }
    ids
}

fn assert_each_once(ids: &BTreeMap<i64, usize>, from: i64, to: i64) {
    let twice: Vec<_> = ids
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .take(10)
        .collect();
    assert!(twice.is_empty(), "ids applied twice: {twice:?}");
    let missing: Vec<_> = (from..to).filter(|id| !ids.contains_key(id)).take(10).collect();
    assert!(missing.is_empty(), "ids missing: {missing:?}");
    assert_eq!(ids.len(), (to - from) as usize, "ids other than {from}..{to}");
}

/// Runs `pipeline` until `table` holds `rows` rows, then a little longer (so that a
/// message applied twice would show), and shuts it down.
async fn run_until_rows(pipeline: Pipeline, table: &Table, rows: usize) {
    let waiting = table.clone();
    let until = async move {
        tokio::time::timeout(Duration::from_secs(20), waiting.wait_for(|t| t.len() >= rows))
            .await
            .expect("the rows arrive within 20 s")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    pipeline.run_until(until).await.unwrap();
}

/// The last stream sequence of each partition, as the table's offsets must say.
async fn last_sequences(jetstream: &jetstream::Context, stream: &str) -> BTreeMap<String, serde_json::Value> {
    let mut last = BTreeMap::new();
    let stream_handle = jetstream.get_stream(stream).await.unwrap();
    for p in 0..PARTITIONS {
        if let Ok(message) = stream_handle
            .get_last_raw_message_by_subject(&format!("{stream}.{p}"))
            .await
        {
            last.insert(format!("{stream}/{p}"), message.sequence.into());
        }
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_every_partition_once_and_offsets_are_stream_sequences() {
    let name = unique("all");
    let jetstream = connect(&shared_url()).await;
    create_stream(&jetstream, &name).await;
    publish(&jetstream, &name, 0, 400).await;

    let source = source(jetstream.clone(), &name);
    let stats = source.stats();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read_partitioned(&name, source, reader());
    run_until_rows(pipeline, &table, 400).await;

    assert_each_once(&ids(&table), 0, 400);
    let offsets: BTreeMap<String, serde_json::Value> = table.committed_offsets().into_iter().collect();
    assert_eq!(offsets, last_sequences(&jetstream, &name).await);
    assert_eq!(stats.messages(), 400);
    assert_eq!(stats.consumers(), u64::from(PARTITIONS));
    assert_eq!(stats.redelivered_dropped(), 0);
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["messages"], 400);
    assert_eq!(json["redelivered_dropped"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_at_the_sequence_after_its_offset() {
    let name = unique("resume");
    let jetstream = connect(&shared_url()).await;
    create_stream(&jetstream, &name).await;
    publish(&jetstream, &name, 0, 100).await;

    let mut pipeline = Pipeline::new();
    let first = pipeline.read_partitioned(&name, source(jetstream.clone(), &name), reader());
    run_until_rows(pipeline, &first, 100).await;
    assert_each_once(&ids(&first), 0, 100);
    let mut offsets = Offsets::new();
    for (partition, offset) in first.committed_offsets() {
        offsets.insert(partition, offset);
    }

    publish(&jetstream, &name, 100, 160).await;
    let mut pipeline = Pipeline::new().resume_from(offsets);
    let second = pipeline.read_partitioned(&name, source(jetstream.clone(), &name), reader());
    run_until_rows(pipeline, &second, 60).await;
    assert_each_once(&ids(&second), 100, 160);
}

/// Acks wait for durability: a subscriber that stops reading holds the durable offset
/// back, the server redelivers after `ack_wait`, and every redelivery is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivery_after_ack_wait_applies_nothing_twice() {
    let name = unique("redeliver");
    let jetstream = connect(&shared_url()).await;
    create_stream(&jetstream, &name).await;
    publish(&jetstream, &name, 0, 100).await;

    let source = source(jetstream.clone(), &name).ack_wait(Duration::from_millis(200));
    let stats = source.stats();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read_partitioned(&name, source, reader().subscriber_capacity(1));
    // Not read for a while: its room for one batch takes the first commit, and no
    // later commit is durable until it reads.
    let mut changes = table.changes();
    let stalled = table.clone();
    let publisher = jetstream.clone();
    let stream_name = name.clone();
    let reading = tokio::spawn(async move {
        stalled.wait_for(|t| t.len() >= 100).await.unwrap();
        publish(&publisher, &stream_name, 100, 300).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let mut acked_while_stalled = 0;
        let stream = publisher.get_stream(&stream_name).await.unwrap();
        let mut consumers = stream.consumers();
        while let Some(info) = consumers.next().await {
            acked_while_stalled = acked_while_stalled.max(info.unwrap().ack_floor.stream_sequence);
        }
        while changes.next().await.is_some() {}
        acked_while_stalled
    });
    run_until_rows(pipeline, &table, 300).await;
    let acked_while_stalled = reading.await.unwrap();

    assert_each_once(&ids(&table), 0, 300);
    assert!(
        stats.redelivered_dropped() > 0,
        "the server redelivered nothing: the test did not stall the acks"
    );
    assert!(
        acked_while_stalled <= 100,
        "messages were acked before the table made them durable (ack floor {acked_while_stalled})"
    );
    assert!(stats.acks() > 0, "durable offsets are acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restarted_mid_stream_loses_nothing() {
    prometheus();
    let mut server = NatsServer::start();
    let url = server.url();
    let jetstream = connect(&url).await;
    let name = unique("restart");
    jetstream
        .create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.*")],
            ..Default::default()
        })
        .await
        .unwrap();
    publish(&jetstream, &name, 0, 200).await;

    let source = source(jetstream.clone(), &name);
    let stats = source.stats();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read_partitioned(&name, source, reader());
    let waiting = table.clone();
    let publisher = jetstream.clone();
    let stream_name = name.clone();
    let until = async move {
        waiting.wait_for(|t| t.len() >= 200).await.unwrap();
        server.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.restart();
        // Published after the restart, through the reconnected client.
        let publishing = async {
            for id in 200..300u64 {
                let key = (id % 37).to_string();
                let subject = partition_subject(&stream_name, key.as_bytes(), PARTITIONS);
                let payload = format!(r#"{{"id": {id}, "key": {key}}}"#);
                // Retried until the server stores it (a publish during reconnection
                // may fail); the message id makes a retry of a stored one a no-op.
                loop {
                    let publish = jetstream::message::PublishMessage::build()
                        .payload(payload.clone().into())
                        .message_id(id.to_string());
                    let stored = match publisher.send_publish(subject.clone(), publish).await {
                        Ok(ack) => ack.await.is_ok(),
                        Err(_) => false,
                    };
                    if stored {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), publishing)
            .await
            .expect("publishing after the restart");
        tokio::time::timeout(Duration::from_secs(20), waiting.wait_for(|t| t.len() >= 300))
            .await
            .expect("the rows published after the restart arrive")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        server
    };
    let (sender, receiver) = tokio::sync::oneshot::channel();
    pipeline
        .run_until(async move {
            let server = until.await;
            let _ = sender.send(server);
        })
        .await
        .unwrap();
    let _server = receiver.await.unwrap();

    assert_each_once(&ids(&table), 0, 300);
    assert!(stats.messages() >= 300);
    // Each partition reports whether its consumer is up through the metrics facade
    // (the client reconnects by itself, so the restart needs no new consumer).
    let metrics = prometheus().render();
    let series = |metric: &str| -> Vec<f64> {
        let prefix = format!(r#"{metric}{{table="{name}",source="{name}/"#);
        metrics
            .lines()
            .filter(|line| line.starts_with(&prefix))
            .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
            .collect()
    };
    let connected = series("intake_source_connected");
    assert_eq!(connected.len(), PARTITIONS as usize, "{metrics}");
    assert!(
        connected.iter().all(|c| *c == 0.0),
        "not connected once the source ended: {connected:?}"
    );
}

/// One recorder for the test binary: the facade has one global recorder.
fn prometheus() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .unwrap()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_split_four_partitions_and_each_key_is_read_by_one() {
    let name = unique("workers");
    let jetstream = connect(&shared_url()).await;
    create_stream(&jetstream, &name).await;
    publish(&jetstream, &name, 0, 400).await;

    // How many messages each partition holds, to know when each worker is done.
    let mut per_partition = BTreeMap::<u32, usize>::new();
    for id in 0..400u64 {
        let key = (id % 37).to_string();
        *per_partition
            .entry(intake_nats::partition_of(key.as_bytes(), PARTITIONS))
            .or_default() += 1;
    }
    let mut workers = Vec::new();
    for index in 0..2 {
        let mut pipeline = Pipeline::new().worker(index, 2);
        let table = pipeline.read_partitioned(&name, source(jetstream.clone(), &name), reader());
        // Partitions "0".."3" sorted; worker i reads positions i and i + 2.
        let rows = per_partition[&(index as u32)] + per_partition[&(index as u32 + 2)];
        workers.push(tokio::spawn(async move {
            run_until_rows(pipeline, &table, rows).await;
            table
        }));
    }
    let mut keys_by_worker = Vec::new();
    let mut all = BTreeMap::new();
    for worker in workers {
        let table = worker.await.unwrap();
        let mut keys = std::collections::BTreeSet::new();
        for (_, row) in table.snapshot().rows() {
            let json = row.to_json();
            keys.insert(json["key"].as_i64().unwrap());
            *all.entry(json["id"].as_i64().unwrap()).or_insert(0) += 1;
        }
        keys_by_worker.push(keys);
    }
    assert_each_once(&all, 0, 400);
    assert!(!keys_by_worker[0].is_empty() && !keys_by_worker[1].is_empty());
    assert!(
        keys_by_worker[0].is_disjoint(&keys_by_worker[1]),
        "keys read by both workers: {:?}",
        keys_by_worker[0]
            .intersection(&keys_by_worker[1])
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_missing_stream_is_a_clear_error() {
    let jetstream = connect(&shared_url()).await;
    let name = unique("missing");
    let mut pipeline = Pipeline::new();
    let _table = pipeline.read_partitioned("orders", source(jetstream, &name), reader());
    let error = pipeline.run().await.unwrap_err().to_string();
    assert!(
        error.contains(&format!("stream `{name}` does not exist")),
        "{error}"
    );
}

#[tokio::test]
async fn a_layout_the_stream_does_not_hold_is_a_clear_error() {
    let jetstream = connect(&shared_url()).await;
    let name = unique("layout");
    jetstream
        .create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.0"), format!("{name}.1")],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut pipeline = Pipeline::new();
    let _table = pipeline.read_partitioned("orders", source(jetstream, &name), reader());
    let error = pipeline.run().await.unwrap_err().to_string();
    assert!(
        error.contains("does not match the partition layout") && error.contains(&format!("{name}.2")),
        "{error}"
    );
}

/// A server that only says hello, as nats-server 2.9.10 (Debian's): enough for the
/// client to connect and for the source to read the version.
async fn fake_old_server() -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let info = format!(
                    "INFO {{\"server_id\":\"old\",\"server_name\":\"old\",\"version\":\"2.9.10\",\"go\":\"go1.19\",\"host\":\"127.0.0.1\",\"port\":{port},\"headers\":true,\"max_payload\":1048576,\"proto\":1,\"jetstream\":true}}\r\n"
                );
                write.write_all(info.as_bytes()).await.unwrap();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.starts_with("PING") && write.write_all(b"PONG\r\n").await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    format!("nats://127.0.0.1:{port}")
}

#[tokio::test]
async fn a_server_too_old_for_several_subjects_per_partition_is_a_clear_error() {
    let jetstream = connect(&fake_old_server().await).await;
    let layout = Partitions::new()
        .partition("a", ["orders.a", "orders.a.>"])
        .partition("b", ["orders.b", "orders.b.>"]);
    let mut pipeline = Pipeline::new();
    let _table = pipeline.read_partitioned(
        "orders",
        JetStreamSource::new(jetstream, "orders", layout),
        reader(),
    );
    let error = tokio::time::timeout(Duration::from_secs(10), pipeline.run())
        .await
        .expect("the check needs no JetStream request")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("nats-server 2.9.10 is too old") && error.contains("2.10"),
        "{error}"
    );
}

/// Several subjects per partition work on a current server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_of_several_subjects_reads_them_all() {
    let name = unique("several");
    let jetstream = connect(&shared_url()).await;
    jetstream
        .create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
    for (id, subject) in ["a", "a.x", "b", "b.y.z"].iter().enumerate() {
        let payload = format!(r#"{{"id": {id}, "key": 0}}"#);
        jetstream
            .publish(format!("{name}.{subject}"), payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let layout = Partitions::new()
        .partition("a", [format!("{name}.a"), format!("{name}.a.>")])
        .partition("b", [format!("{name}.b"), format!("{name}.b.>")]);
    let mut pipeline = Pipeline::new();
    let table = pipeline.read_partitioned(&name, JetStreamSource::new(jetstream, &name, layout), reader());
    run_until_rows(pipeline, &table, 4).await;
    assert_each_once(&ids(&table), 0, 4);
}

/// Only a reconnect policy with a retry limit ends the source when the broker is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_gone_for_good_ends_the_source_only_after_its_retries() {
    prometheus();
    let mut server = NatsServer::start();
    // Each attempt to create a consumer waits this long for the missing server.
    let jetstream = jetstream::context::ContextBuilder::new()
        .timeout(Duration::from_millis(300))
        .build(async_nats::connect(server.url()).await.unwrap());
    let name = unique("gone");
    create_stream(&jetstream, &name).await;
    publish(&jetstream, &name, 0, 10).await;
    let source = source(jetstream, &name).reconnect(
        Reconnect::default()
            .min_delay(Duration::from_millis(50))
            .max_delay(Duration::from_millis(100))
            .max_retries(2),
    );
    let stats = source.stats();
    let mut pipeline = Pipeline::new();
    let table = pipeline.read_partitioned(&name, source, reader());
    let running = tokio::spawn(pipeline.run());
    table.wait_for(|t| t.len() >= 10).await.unwrap();
    server.kill();
    let error = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the source gives up within 20 s")
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(error.contains("gave up after 3 failed attempts"), "{error}");
    assert!(stats.reconnects() >= 2);
    assert_eq!(table.len(), 10, "what was read before stays");
    let metrics = prometheus().render();
    let prefix = format!(r#"intake_source_reconnects_total{{table="{name}","#);
    let reconnects: f64 = metrics
        .lines()
        .filter(|line| line.starts_with(&prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        reconnects >= 2.0,
        "each retry is counted, with its cause:\n{metrics}"
    );
}
