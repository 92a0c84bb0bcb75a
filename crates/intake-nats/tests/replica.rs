//! Replicas on a real nats-server: a table rebuilt from a JetStreamSink's changelog is
//! the source table, and keeps following it; through a broker restart; and resumes
//! after the sequence it stored.

mod changelog;
mod support;

use std::time::Duration;

use async_nats::jetstream;
use changelog::{Op, connect, fed_table, script, sorted, unique, upsert};
use intake_core::{Column, DataType, ErrorPolicy, Key, Persistence, Pipeline, Reader, Row, Schema, Table};
use intake_nats::{JetStreamSink, Replica, ReplicaError};

const PATIENCE: Duration = Duration::from_secs(20);

/// Waits until `replica` holds exactly `expected`.
async fn until_equal(replica: &Table, expected: &[(Key, Row)]) {
    let waited = tokio::time::timeout(PATIENCE, replica.wait_for(|t| sorted(t) == expected)).await;
    assert!(
        matches!(waited, Ok(Ok(()))),
        "the replica did not reach the source table:\n replica {:?}\n source  {expected:?}",
        sorted(replica)
    );
}

/// Waits until the source table holds `time` and its sink has published it.
async fn until_published(client: &async_nats::Client, stream: &str, table: &Table, time: u64) {
    tokio::time::timeout(
        PATIENCE,
        table.wait_for(|t| t.time().is_some_and(|now| now.as_u64() >= time)),
    )
    .await
    .unwrap()
    .unwrap();
    let js = jetstream::new(client.clone());
    let published = async {
        loop {
            if let Ok(mut stream) = js.get_stream(stream).await
                && let Ok(last_sequence) = stream.info().await.map(|info| info.state.last_sequence)
                && last_sequence > 0
                && let Ok(last) = stream.get_raw_message(last_sequence).await
                && last
                    .headers
                    .get("Intake-Commit")
                    .and_then(|c| c.as_str().split(' ').next()?.parse::<u64>().ok())
                    .is_some_and(|t| t >= time)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(PATIENCE, published)
        .await
        .expect("the sink published the commit");
}

fn commits(ops: &[Op]) -> u64 {
    ops.iter().filter(|op| matches!(op, Op::Commit)).count() as u64
}

#[tokio::test]
async fn a_replica_rebuilds_an_identical_table_and_follows_new_commits() {
    let client = connect(&support::shared_url()).await;
    let stream = unique("replica");

    let mut source = Pipeline::new();
    let (table, tx) = fed_table(&mut source, "prices");
    table.sink(
        "nats",
        JetStreamSink::new(client.clone(), stream.clone(), stream.clone()),
    );
    let source_run = tokio::spawn(source.run());
    let before = script(7, 0);
    let mut sent = commits(&before);
    for op in before {
        tx.send(op).unwrap();
    }
    until_published(&client, &stream, &table, sent).await;

    // Started after the source's commits: rebuilt from the last message of each key.
    let mut service = Pipeline::new();
    let replica = service.read(
        "replica",
        Replica::new(client.clone(), stream.clone(), stream.clone()),
        // Commits come from the changelog's commit ends alone.
        Reader::json(changelog::schema()).autocommit_duration(Duration::from_secs(3600)),
    );
    let shutdown = service.shutdown_handle();
    let service_run = tokio::spawn(service.run());
    until_equal(&replica, &sorted(&table)).await;

    // Then follows: updates, deletes, keys that come back.
    let after = [
        script(5, 7),
        vec![Op::Delete("AAPL"), Op::Commit, upsert("AAPL", -1), Op::Commit],
    ]
    .concat();
    let followed = commits(&after);
    sent += followed;
    for op in after {
        tx.send(op).unwrap();
    }
    until_published(&client, &stream, &table, sent).await;
    until_equal(&replica, &sorted(&table)).await;
    // One commit for the rebuilt table, then one per source commit, whole.
    // (Stats may trail the state a moment: wait for them rather than read them once.)
    let whole = tokio::time::timeout(PATIENCE, replica.wait_for(|t| t.stats().commits() > followed)).await;
    assert!(matches!(whole, Ok(Ok(()))));
    assert_eq!(replica.stats().commits(), 1 + followed, "{:?}", replica.stats());

    drop(tx);
    source_run.await.unwrap().unwrap();
    shutdown.shutdown();
    service_run.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_replica_keeps_following_through_a_broker_restart() {
    let mut server = support::NatsServer::start();
    let client = connect(&server.url()).await;
    let stream = unique("restart");

    let mut source = Pipeline::new();
    let (table, tx) = fed_table(&mut source, "prices");
    let quick = intake_core::Reconnect::default()
        .min_delay(Duration::from_millis(50))
        .max_delay(Duration::from_millis(200));
    table.sink(
        "nats",
        JetStreamSink::new(client.clone(), stream.clone(), stream.clone())
            .reconnect(quick)
            .ack_timeout(Duration::from_millis(500)),
    );
    let source_run = tokio::spawn(source.run());
    let mut service = Pipeline::new();
    let replica = service.read(
        "replica",
        Replica::new(client.clone(), stream.clone(), stream.clone()).reconnect(quick),
        Reader::json(changelog::schema()),
    );
    let shutdown = service.shutdown_handle();
    let service_run = tokio::spawn(service.run());

    let first = script(3, 0);
    let mut sent = commits(&first);
    for op in first {
        tx.send(op).unwrap();
    }
    until_published(&client, &stream, &table, sent).await;
    until_equal(&replica, &sorted(&table)).await;

    server.restart();
    let second = script(3, 3);
    sent += commits(&second);
    for op in second {
        tx.send(op).unwrap();
    }
    until_published(&client, &stream, &table, sent).await;
    until_equal(&replica, &sorted(&table)).await;

    drop(tx);
    source_run.await.unwrap().unwrap();
    shutdown.shutdown();
    service_run.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_persisted_replica_resumes_after_its_stored_sequence() {
    let client = connect(&support::shared_url()).await;
    let stream = unique("resume");
    let store = tempfile::tempdir().unwrap();

    let mut source = Pipeline::new();
    let (table, tx) = fed_table(&mut source, "prices");
    table.sink(
        "nats",
        JetStreamSink::new(client.clone(), stream.clone(), stream.clone()),
    );
    let source_run = tokio::spawn(source.run());
    let first = [script(4, 0), vec![upsert("ONLY_FIRST", 7), Op::Commit]].concat();
    let mut sent = commits(&first);
    for op in first {
        tx.send(op).unwrap();
    }
    until_published(&client, &stream, &table, sent).await;

    let run_replica = || {
        let mut service = Pipeline::new().persist(Persistence::new(store.path()));
        let replica = service.read(
            "replica",
            Replica::new(client.clone(), stream.clone(), stream.clone()),
            Reader::json(changelog::schema()),
        );
        let shutdown = service.shutdown_handle();
        (replica, shutdown, tokio::spawn(service.run()))
    };
    let (replica, shutdown, run) = run_replica();
    until_equal(&replica, &sorted(&table)).await;
    shutdown.shutdown();
    run.await.unwrap().unwrap();
    let js = jetstream::new(client.clone());
    let mut changelog = js.get_stream(&stream).await.unwrap();
    let before = changelog.info().await.unwrap().state.last_sequence;

    let second = script(3, 4);
    sent += commits(&second);
    for op in second {
        tx.send(op).unwrap();
    }
    until_published(&client, &stream, &table, sent).await;
    let (replica, shutdown, run) = run_replica();
    until_equal(&replica, &sorted(&table)).await;
    // Restored from its storage, it read only the messages after its sequence (those
    // the stream still keeps), not the last message of every key again.
    let last = changelog.info().await.unwrap().state.last_sequence;
    let mut since = 0;
    for sequence in before + 1..=last {
        since += u64::from(changelog.get_raw_message(sequence).await.is_ok());
    }
    assert!(since > 0);
    assert_eq!(replica.stats().messages(), since);
    shutdown.shutdown();
    run.await.unwrap().unwrap();
    drop(tx);
    source_run.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_replica_needs_a_keyed_table_and_an_existing_stream() {
    let client = connect(&support::shared_url()).await;

    let mut service = Pipeline::new();
    let _ = service.read(
        "replica",
        Replica::new(client.clone(), unique("absent"), "absent").reconnect(intake_core::Reconnect::never()),
        Reader::json(changelog::schema()),
    );
    let error = service.run().await.unwrap_err();
    let Some(ReplicaError::GaveUp { source }) = replica_error(&error) else {
        panic!("{error}");
    };
    assert!(
        matches!(source.downcast_ref(), Some(ReplicaError::StreamNotFound { .. })),
        "{source}"
    );

    let unkeyed = Schema::new([Column::new("sym", DataType::String)]).unwrap();
    let mut service = Pipeline::new();
    let _ = service.read(
        "replica",
        Replica::new(client.clone(), unique("any"), "any"),
        Reader::json(unkeyed),
    );
    let error = service.run().await.unwrap_err();
    assert!(
        matches!(replica_error(&error), Some(ReplicaError::NoPrimaryKey)),
        "{error}"
    );
}

/// The cause of the first failed source, as a `ReplicaError`.
fn replica_error(error: &intake_core::Error) -> Option<&ReplicaError> {
    match error {
        intake_core::Error::SourcesFailed(failures) => failures.first()?.cause().downcast_ref(),
        _ => None,
    }
}

#[tokio::test]
async fn a_replica_skips_what_is_not_a_changelog_message_and_keeps_its_neighbours() {
    let client = connect(&support::shared_url()).await;
    let js = jetstream::new(client.clone());
    let stream = unique("foreign");
    js.create_stream(jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{stream}.>")],
        ..Default::default()
    })
    .await
    .unwrap();
    let publish = |sym: &str, commit: Option<&str>, tombstone: bool| {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(commit) = commit {
            headers.insert("Intake-Commit", commit);
        }
        let payload = if tombstone {
            headers.insert("Intake-Operation", "DEL");
            String::new()
        } else {
            serde_json::json!({"sym": sym, "price": 1.0, "n": 1}).to_string()
        };
        let subject = intake_nats::key_subject(&stream, &Key::from(sym));
        let js = js.clone();
        async move {
            js.publish_with_headers(subject, headers, payload.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    publish("A", Some("1"), false).await;
    // No Intake-Commit: not written by a JetStreamSink.
    publish("B", None, false).await;
    // A commit header that does not parse.
    publish("C", Some("one"), false).await;
    // A tombstone without its key.
    publish("E", Some("1"), true).await;
    publish("D", Some("1 end"), false).await;

    let mut service = Pipeline::new();
    let replica = service.read(
        "replica",
        Replica::new(client.clone(), stream.clone(), stream.clone()),
        Reader::json(changelog::schema()).error_policy(ErrorPolicy::SkipAndReport),
    );
    let shutdown = service.shutdown_handle();
    let service_run = tokio::spawn(service.run());
    let expected: Vec<(Key, Row)> = ["A", "D"]
        .into_iter()
        .map(|sym| {
            let row = Row::new(
                &changelog::schema(),
                vec![
                    intake_core::Value::from(sym),
                    intake_core::Value::from(1.0),
                    intake_core::Value::from(1_i64),
                ],
            )
            .unwrap();
            (Key::from(sym), row)
        })
        .collect();
    until_equal(&replica, &expected).await;
    let rejected = tokio::time::timeout(PATIENCE, replica.wait_for(|t| t.stats().rejected() == 3)).await;
    assert!(matches!(rejected, Ok(Ok(()))), "{:?}", replica.stats());
    shutdown.shutdown();
    service_run.await.unwrap().unwrap();
}
