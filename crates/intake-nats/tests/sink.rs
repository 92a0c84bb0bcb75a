//! The JetStream changelog sink on a real nats-server: what it publishes (the chain, or
//! message ids without it), restarts (after the deduplication window, and in the middle
//! of a commit), a broker killed in the middle of a commit, a second writer, and
//! streams it must refuse.
//!
//! The batches come from a real pipeline (`Table::changes`); the sinks are driven
//! through the `Sink` trait as the pipeline drives them.

mod changelog;
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, stream::Config as StreamConfig};
use changelog::{Op, batches, connect, last_values, unique, upsert};
use intake_core::{Pipeline, Sink, Time};
use intake_nats::{JetStreamSink, SinkError, key_subject};

/// Every message of a stream: (subject, headers as a map, payload), in sequence order.
async fn messages(
    js: &jetstream::Context,
    stream: &str,
) -> Vec<(u64, String, BTreeMap<String, String>, String)> {
    let mut stream = js.get_stream(stream).await.unwrap();
    let info = stream.info().await.unwrap().clone();
    let mut out = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let Ok(message) = stream.get_raw_message(seq).await else {
            continue;
        };
        let headers = message
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    v.iter()
                        .map(|v| v.as_str().to_owned())
                        .collect::<Vec<_>>()
                        .join(","),
                )
            })
            .collect();
        out.push((
            seq,
            message.subject.to_string(),
            headers,
            String::from_utf8(message.payload.to_vec()).unwrap(),
        ));
    }
    out
}

async fn last_sequence(js: &jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence
}

fn sink_error(error: &intake_core::BoxError) -> &SinkError {
    error
        .downcast_ref::<SinkError>()
        .unwrap_or_else(|| panic!("not a SinkError: {error}"))
}

#[tokio::test]
async fn changelog_holds_each_keys_last_row_and_tombstones() {
    let url = support::shared_url();
    let client = connect(&url).await;
    let js = jetstream::new(client.clone());
    let stream = unique("changelog");
    let ops = changelog::script(6, 0);
    let (_, expected) = batches(ops.clone()).await;

    let mut pipeline = Pipeline::new();
    let (table, tx) = changelog::fed_table(&mut pipeline, "prices");
    table.sink(
        "nats",
        JetStreamSink::new(client.clone(), stream.clone(), stream.clone()),
    );
    for op in ops {
        tx.send(op).unwrap();
    }
    drop(tx);
    pipeline.run().await.unwrap();
    assert_eq!(changelog::sorted(&table), expected);

    let messages = messages(&js, &stream).await;
    let mut subjects: Vec<&str> = messages.iter().map(|m| m.1.as_str()).collect();
    subjects.sort_unstable();
    subjects.dedup();
    assert_eq!(subjects.len(), messages.len(), "one message per key is kept");
    for (key, row) in &expected {
        let subject = key_subject(&stream, key);
        let (_, _, headers, payload) = messages
            .iter()
            .find(|m| m.1 == subject)
            .unwrap_or_else(|| panic!("no {subject}"));
        assert_eq!(payload, &row.to_string(), "{subject}");
        assert!(!headers.contains_key("Intake-Operation"));
        assert!(
            !headers.contains_key("Intake-Key"),
            "a row's key is in its payload"
        );
    }
    let tombstones: Vec<_> = messages
        .iter()
        .filter(|m| m.2.get("Intake-Operation").is_some_and(|v| v == "DEL"))
        .collect();
    assert!(!tombstones.is_empty());
    for (_, subject, headers, payload) in &tombstones {
        assert!(payload.is_empty());
        let sym: String = serde_json::from_str(&headers["Intake-Key"]).unwrap();
        assert_eq!(
            subject,
            &key_subject(&stream, &intake_core::Key::from(sym.as_str())),
            "a tombstone carries its key"
        );
        assert!(
            !expected.iter().any(|(k, _)| &key_subject(&stream, k) == subject),
            "{subject} is deleted"
        );
    }
    assert_eq!(messages.len(), expected.len() + tombstones.len());
    let last = messages.last().unwrap();
    let commit: Vec<&str> = last.2["Intake-Commit"].split(' ').collect();
    assert_eq!(commit.first(), Some(&table.time().unwrap().to_string().as_str()));
    assert_eq!(commit.last(), Some(&"end"));
}

#[tokio::test]
async fn keys_with_subject_syntax_get_one_subject_each() {
    let subjects: Vec<String> = changelog::SYMBOLS
        .iter()
        .map(|s| key_subject("p", &(*s).into()))
        .collect();
    for subject in &subjects {
        let tokens: Vec<&str> = subject.split('.').collect();
        assert_eq!(tokens.len(), 2, "{subject}");
        assert!(
            !tokens[1].is_empty() && !tokens[1].contains(['*', '>', ' ', '\t']),
            "{subject}"
        );
    }
    let mut unique_subjects = subjects.clone();
    unique_subjects.sort();
    unique_subjects.dedup();
    assert_eq!(unique_subjects.len(), subjects.len());
}

/// The regression this sink exists for: after a restart later than the server's
/// deduplication window, a replay from the table's log must publish nothing twice.
#[tokio::test]
async fn restart_after_the_dedup_window_duplicates_nothing() {
    let client = connect(&support::shared_url()).await;
    let js = jetstream::new(client.clone());
    let stream = unique("dedup");
    let (batches, _) = batches(changelog::script(4, 0)).await;
    let published = |n: usize| -> u64 { batches[..n].iter().map(|b| last_values(b).len() as u64).sum() };
    let window = Duration::from_millis(200);

    let mut first =
        JetStreamSink::new(client.clone(), stream.clone(), stream.clone()).duplicate_window(window);
    assert_eq!(first.resume(Some(Time::from(2))).await.unwrap(), None);
    first.write_batch(&batches[0]).await.unwrap();
    first.write_batch(&batches[1]).await.unwrap();
    assert_eq!(last_sequence(&js, &stream).await, published(2));
    drop(first);
    tokio::time::sleep(window * 3).await;

    // The table was restored to commit 4 and replays what the sink does not hold.
    let mut second = JetStreamSink::new(client.clone(), stream.clone(), stream.clone());
    assert_eq!(
        second.resume(Some(Time::from(4))).await.unwrap(),
        Some(Time::from(2))
    );
    second.write_batch(&batches[2]).await.unwrap();
    second.write_batch(&batches[3]).await.unwrap();
    assert_eq!(
        last_sequence(&js, &stream).await,
        published(4),
        "nothing published twice"
    );

    // A restart at the same time replays nothing.
    let mut third = JetStreamSink::new(client.clone(), stream.clone(), stream.clone());
    assert_eq!(
        third.resume(Some(Time::from(4))).await.unwrap(),
        Some(Time::from(4))
    );
    assert_eq!(last_sequence(&js, &stream).await, published(4));
}

/// A writer that died in the middle of a commit: after the dedup window, the commit is
/// handed again and only the keys it had not stored yet are published.
#[tokio::test]
async fn a_commit_interrupted_by_a_crash_is_completed_without_duplicates() {
    let client = connect(&support::shared_url()).await;
    let js = jetstream::new(client.clone());
    let stream = unique("interrupted");
    let (batches, _) = batches(changelog::script(3, 0)).await;
    let window = Duration::from_millis(200);

    let mut first =
        JetStreamSink::new(client.clone(), stream.clone(), stream.clone()).duplicate_window(window);
    assert_eq!(first.resume(Some(Time::from(3))).await.unwrap(), None);
    first.write_batch(&batches[0]).await.unwrap();
    first.write_batch(&batches[1]).await.unwrap();
    let before = last_sequence(&js, &stream).await;
    // What the sink stores first for commit 3, then the process dies.
    let (key, row) = last_values(&batches[2]).into_iter().next().unwrap();
    let mut headers = async_nats::HeaderMap::new();
    let commit = format!("{} {}", batches[2].time(), batches[1].time());
    headers.insert("Intake-Commit", commit.as_str());
    js.publish_with_headers(
        key_subject(&stream, &key),
        headers,
        row.unwrap().to_string().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    tokio::time::sleep(window * 3).await;

    let mut second = JetStreamSink::new(client.clone(), stream.clone(), stream.clone());
    assert_eq!(
        second.resume(Some(Time::from(3))).await.unwrap(),
        Some(batches[1].time())
    );
    second.write_batch(&batches[2]).await.unwrap();
    assert_eq!(second.skipped(), 1);
    let commit = last_values(&batches[2]).len() as u64;
    assert_eq!(
        last_sequence(&js, &stream).await,
        before + commit,
        "each key of commit 3 once"
    );
    let last = messages(&js, &stream).await.pop().unwrap();
    assert!(last.2["Intake-Commit"].ends_with(" end"));
    let mut third = JetStreamSink::new(client.clone(), stream.clone(), stream.clone());
    assert_eq!(
        third.resume(Some(Time::from(3))).await.unwrap(),
        Some(Time::from(3))
    );
}

#[tokio::test]
async fn a_stale_second_writer_is_rejected() {
    let client = connect(&support::shared_url()).await;
    let js = jetstream::new(client.clone());
    let stream = unique("stale");
    // Two tables that agree on commit 1 and differ at commit 2.
    let mut common = vec![upsert("AAPL", 1), Op::Commit];
    let (ours, _) = batches([common.clone(), vec![upsert("MSFT", 2), Op::Commit]].concat()).await;
    common.extend([upsert("NVDA", 3), Op::Commit]);
    let (theirs, _) = batches(common).await;

    let mut stale = JetStreamSink::new(client.clone(), stream.clone(), stream.clone());
    assert_eq!(stale.resume(Some(Time::from(1))).await.unwrap(), None);
    stale.write_batch(&ours[0]).await.unwrap();

    // A second process takes the table over and writes commit 2.
    let mut new = JetStreamSink::new(client.clone(), stream.clone(), stream.clone());
    assert_eq!(
        new.resume(Some(Time::from(2))).await.unwrap(),
        Some(Time::from(1))
    );
    new.write_batch(&theirs[1]).await.unwrap();
    let before = last_sequence(&js, &stream).await;

    let error = stale.write_batch(&ours[1]).await.unwrap_err();
    assert!(
        matches!(sink_error(&error), SinkError::Conflict { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("another writer"), "{error}");
    assert_eq!(
        last_sequence(&js, &stream).await,
        before,
        "the stale write stored nothing"
    );
}

#[tokio::test]
async fn a_changelog_ahead_of_the_table_is_refused() {
    let client = connect(&support::shared_url()).await;
    let stream = unique("ahead");
    let (batches, _) = batches(changelog::script(2, 0)).await;
    let mut sink = JetStreamSink::new(client.clone(), stream.clone(), stream.clone());
    sink.resume(Some(Time::from(2))).await.unwrap();
    sink.write_batch(&batches[0]).await.unwrap();
    sink.write_batch(&batches[1]).await.unwrap();

    // A pipeline without persistence starts over with no commit.
    let mut restarted = JetStreamSink::new(client.clone(), stream.clone(), stream.clone());
    let error = restarted.resume(None).await.unwrap_err();
    assert!(
        matches!(sink_error(&error), SinkError::Ahead { changelog, table: None, .. } if *changelog == Time::from(2)),
        "{error}"
    );
    let error = restarted.resume(Some(Time::from(1))).await.unwrap_err();
    assert!(matches!(sink_error(&error), SinkError::Ahead { .. }), "{error}");
}

#[tokio::test]
async fn streams_that_are_not_this_changelog_are_refused() {
    let client = connect(&support::shared_url()).await;
    let js = jetstream::new(client.clone());

    let missing = unique("missing");
    let mut sink = JetStreamSink::new(client.clone(), missing.clone(), "prices").create_stream(false);
    let error = sink.resume(None).await.unwrap_err();
    assert!(
        matches!(sink_error(&error), SinkError::StreamNotFound { .. }),
        "{error}"
    );

    let shared = unique("shared");
    js.create_stream(StreamConfig {
        name: shared.clone(),
        subjects: vec![format!("{shared}.>")],
        ..StreamConfig::default()
    })
    .await
    .unwrap();
    let mut sink = JetStreamSink::new(client.clone(), shared.clone(), format!("{shared}.prices"));
    let error = sink.resume(None).await.unwrap_err();
    assert!(matches!(sink_error(&error), SinkError::Layout { .. }), "{error}");

    let foreign = unique("foreign");
    js.create_stream(StreamConfig {
        name: foreign.clone(),
        subjects: vec![format!("{foreign}.>")],
        ..StreamConfig::default()
    })
    .await
    .unwrap();
    js.publish(format!("{foreign}.x"), "hello".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut sink = JetStreamSink::new(client.clone(), foreign.clone(), foreign.clone());
    let error = sink.resume(None).await.unwrap_err();
    assert!(
        matches!(sink_error(&error), SinkError::NotAChangelog { .. }),
        "{error}"
    );
}

/// The table after `ops`, its pipeline ended, and the snapshot batch a late
/// subscriber (or a sink that holds nothing) receives.
async fn snapshot_after(ops: Vec<Op>) -> (intake_core::Table, intake_core::ChangeBatch) {
    use futures::StreamExt;
    let mut pipeline = Pipeline::new();
    let (table, tx) = changelog::fed_table(&mut pipeline, "prices");
    for op in ops {
        tx.send(op).unwrap();
    }
    drop(tx);
    pipeline.run().await.unwrap();
    let snapshot = table.changes().next().await.unwrap();
    assert!(snapshot.is_snapshot());
    (table, snapshot)
}

/// What a sink stores first of a commit before its process dies.
async fn interrupted_publish(
    js: &jetstream::Context,
    prefix: &str,
    time: u64,
    key: &intake_core::Key,
    payload: String,
) {
    let mut headers = async_nats::HeaderMap::new();
    // The first commit: no previous time.
    headers.insert("Intake-Commit", time.to_string().as_str());
    js.publish_with_headers(key_subject(prefix, key), headers, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn an_interrupted_first_commit_is_replaced_by_the_tables_later_snapshot() {
    let client = connect(&support::shared_url()).await;
    let js = jetstream::new(client.clone());
    let stream = unique("first_later");
    let (table, snapshot) = snapshot_after(changelog::script(3, 0)).await;
    assert_eq!(snapshot.time(), Time::from(3));

    let mut sink = JetStreamSink::new(client.clone(), stream.clone(), stream.clone());
    sink.resume(Some(Time::from(3))).await.unwrap();
    // Commit 1 wrote a key the table has deleted since, then the process died.
    let gone = intake_core::Key::from("GONE");
    interrupted_publish(
        &js,
        &stream,
        1,
        &gone,
        r#"{"sym":"GONE","price":1.0,"n":1}"#.into(),
    )
    .await;

    let mut restarted = JetStreamSink::new(client.clone(), stream.clone(), stream.clone());
    assert_eq!(restarted.resume(Some(Time::from(3))).await.unwrap(), None);
    // It dies again right after clearing that commit, before writing anything: the
    // next run holds nothing either, rather than fail on a missing last message.
    drop(restarted);
    let mut again = JetStreamSink::new(client.clone(), stream.clone(), stream.clone());
    assert_eq!(again.resume(Some(Time::from(3))).await.unwrap(), None);
    again.write_batch(&snapshot).await.unwrap();
    let messages = messages(&js, &stream).await;
    assert!(
        !messages.iter().any(|m| m.1 == key_subject(&stream, &gone)),
        "the stale key is gone"
    );
    assert_eq!(messages.len(), table.len());
    let mut third = JetStreamSink::new(client.clone(), stream.clone(), stream.clone());
    assert_eq!(
        third.resume(Some(Time::from(3))).await.unwrap(),
        Some(Time::from(3))
    );
}

#[tokio::test]
async fn an_interrupted_first_commit_at_the_tables_time_is_completed_without_duplicates() {
    let client = connect(&support::shared_url()).await;
    let js = jetstream::new(client.clone());
    let stream = unique("first_same");
    let (table, snapshot) = snapshot_after(changelog::script(1, 0)).await;
    assert_eq!(snapshot.time(), Time::from(1));

    let (key, row) = last_values(&snapshot).into_iter().next().unwrap();
    let mut sink = JetStreamSink::new(client.clone(), stream.clone(), stream.clone());
    sink.resume(Some(Time::from(1))).await.unwrap();
    interrupted_publish(&js, &stream, 1, &key, row.unwrap().to_string()).await;
    let before = last_sequence(&js, &stream).await;

    // Within the dedup window: a purge here would make the server drop the key's new
    // publish as a duplicate of the purged one.
    let mut restarted = JetStreamSink::new(client.clone(), stream.clone(), stream.clone());
    assert_eq!(restarted.resume(Some(Time::from(1))).await.unwrap(), None);
    restarted.write_batch(&snapshot).await.unwrap();
    assert_eq!(restarted.skipped(), 1);
    assert_eq!(last_sequence(&js, &stream).await, before + table.len() as u64 - 1);
    let messages = messages(&js, &stream).await;
    assert_eq!(messages.len(), table.len(), "every row once");
}

/// The regression: each message used to expect only a sequence, so a stale writer whose
/// first message was refused still stored its second and third, whose sequences the
/// other writer's one message had made the stream's next. Now the stale write stores
/// nothing: on the chained path each message also expects its predecessor's subject,
/// and without the chain the first message of a commit is acknowledged alone first.
#[tokio::test]
async fn a_stale_writer_stores_nothing_between_the_other_writers_messages() {
    let client = connect(&support::shared_url()).await;
    let js = jetstream::new(client.clone());
    for chain in [true, false] {
        let stream = unique("stale_many");
        let mut common = vec![upsert("AAPL", 1), Op::Commit];
        let stale_commit = vec![upsert("MSFT", 2), upsert("IBM", 3), upsert("ORCL", 4), Op::Commit];
        let (ours, _) = batches([common.clone(), stale_commit].concat()).await;
        common.extend([upsert("NVDA", 5), Op::Commit]);
        let (theirs, _) = batches(common).await;

        let mut stale = JetStreamSink::new(client.clone(), stream.clone(), stream.clone()).chain(chain);
        stale.resume(Some(Time::from(1))).await.unwrap();
        stale.write_batch(&ours[0]).await.unwrap();
        let mut new = JetStreamSink::new(client.clone(), stream.clone(), stream.clone()).chain(chain);
        new.resume(Some(Time::from(2))).await.unwrap();
        new.write_batch(&theirs[1]).await.unwrap();
        let before = messages(&js, &stream).await;

        let error = stale.write_batch(&ours[1]).await.unwrap_err();
        assert!(
            matches!(sink_error(&error), SinkError::Conflict { .. }),
            "chain {chain}: {error}"
        );
        // Whatever the stale writer had in flight has been answered by now.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            messages(&js, &stream).await,
            before,
            "chain {chain}: the stale write stored nothing"
        );
        // The writer that owns the changelog carries on.
        let (next, _) = batches(
            [
                vec![upsert("AAPL", 1), Op::Commit, upsert("NVDA", 5), Op::Commit],
                vec![upsert("AMD", 6), upsert("INTC", 7), Op::Commit],
            ]
            .concat(),
        )
        .await;
        new.write_batch(&next[2]).await.unwrap();
        assert_eq!(last_sequence(&js, &stream).await, 4, "chain {chain}");
    }
}

/// What the chain looks like on the wire: every message but the stream's first names the
/// subject and sequence of the one before it, and carries no message id; without the
/// chain every message has a message id instead.
#[tokio::test]
async fn messages_name_their_predecessor_or_carry_a_message_id() {
    let client = connect(&support::shared_url()).await;
    let js = jetstream::new(client.clone());
    let (batches, _) = batches(changelog::script(3, 0)).await;
    for chain in [true, false] {
        let stream = unique("wire");
        let mut sink = JetStreamSink::new(client.clone(), stream.clone(), stream.clone()).chain(chain);
        sink.resume(Some(Time::from(3))).await.unwrap();
        for batch in &batches {
            sink.write_batch(batch).await.unwrap();
        }
        let messages = messages(&js, &stream).await;
        // Per-key retention keeps the last message of each key; every publish is acked.
        assert_eq!(
            sink.published(),
            last_sequence(&js, &stream).await,
            "chain {chain}"
        );
        let mut previous: Option<&(u64, String, BTreeMap<String, String>, String)> = None;
        for message in &messages {
            let (seq, _, headers, _) = message;
            assert_eq!(
                headers.get("Nats-Expected-Last-Sequence"),
                Some(&(seq - 1).to_string())
            );
            if chain {
                assert!(!headers.contains_key("Nats-Msg-Id"), "{headers:?}");
                let expected = headers.get("Nats-Expected-Last-Subject-Sequence");
                assert_eq!(expected, (*seq > 1).then(|| (seq - 1).to_string()).as_ref());
                // Per-key retention may have removed the predecessor since.
                if let Some(previous) = previous.filter(|p| p.0 + 1 == *seq) {
                    let named = headers.get("Nats-Expected-Last-Subject-Sequence-Subject");
                    assert_eq!(named, Some(&previous.1), "{headers:?}");
                }
            } else {
                assert!(headers.contains_key("Nats-Msg-Id"), "{headers:?}");
                assert!(!headers.contains_key("Nats-Expected-Last-Subject-Sequence-Subject"));
            }
            previous = Some(message);
        }
    }
}

/// A broker killed and restarted while a large commit is being published: messages in
/// flight are lost, the ones after them refused; the sink tells that from another writer
/// (the stream ends with its own messages), publishes the rest again, and every key is
/// stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restarted_in_the_middle_of_a_commit_stores_every_key_once() {
    let mut server = support::NatsServer::start();
    let client = connect(&server.url()).await;
    let js = jetstream::new(client.clone());
    let stream = unique("broker_restart");
    let keys = 6000;
    let mut ops: Vec<Op> = (0..keys).map(|i| upsert(&format!("K{i}"), i)).collect();
    ops.push(Op::Commit);
    ops.extend([upsert("AFTER", 1), Op::Commit]);
    let (batches, table) = batches(ops).await;

    let quick = intake_core::Reconnect::default()
        .min_delay(Duration::from_millis(50))
        .max_delay(Duration::from_millis(200));
    let mut sink = JetStreamSink::new(client.clone(), stream.clone(), stream.clone())
        .reconnect(quick)
        .ack_timeout(Duration::from_millis(500));
    sink.resume(Some(Time::from(2))).await.unwrap();
    let write = tokio::spawn(async move {
        sink.write_batch(&batches[0]).await?;
        sink.write_batch(&batches[1]).await?;
        Ok::<_, intake_core::BoxError>(sink)
    });
    // Kill the broker once part of the commit is stored.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stored = match js.get_stream(&stream).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        };
        if stored > 0 || write.is_finished() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "nothing was published");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.restart();
    let sink = tokio::time::timeout(Duration::from_secs(30), write)
        .await
        .expect("the write completes after the restart")
        .unwrap()
        .unwrap();

    let messages = messages(&js, &stream).await;
    let mut subjects: Vec<&str> = messages.iter().map(|m| m.1.as_str()).collect();
    subjects.sort_unstable();
    subjects.dedup();
    assert_eq!(subjects.len(), messages.len(), "no key twice");
    assert_eq!(messages.len(), table.len(), "every key");
    assert_eq!(
        messages.last().map(|m| m.1.clone()),
        Some(key_subject(&stream, &intake_core::Key::from("AFTER")))
    );
    let sequences: Vec<u64> = messages.iter().map(|m| m.0).collect();
    assert_eq!(
        sequences,
        (1..=messages.len() as u64).collect::<Vec<_>>(),
        "no gap"
    );
    drop(sink);
}
