//! Tables and sources report their figures through the `metrics` facade, and the
//! same figures through their stats handles.

use std::sync::OnceLock;
use std::time::Duration;

use futures::StreamExt;
use intake::{Column, DataType, ErrorPolicy, Pipeline, Reader, Schema, SourceContext, source_fn};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// One recorder for the whole test binary: the facade has one global recorder.
fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().unwrap())
}

/// The value of the Prometheus sample whose line starts with `series` (name and
/// labels, as rendered).
fn sample(series: &str) -> Option<f64> {
    let text = prometheus().render();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn schema() -> Schema {
    Schema::new([
        Column::new("sym", DataType::String).primary_key(),
        Column::new("price", DataType::Float),
    ])
    .unwrap()
}

#[tokio::test]
async fn a_table_and_its_source_export_their_figures() {
    prometheus();
    let source = source_fn(|ctx: SourceContext| async move {
        ctx.next_str(r#"{"sym": "A", "price": 1.5}"#).await?;
        ctx.next_str(r#"{"sym": "B", "price": 2.5}"#).await?;
        ctx.next_str(r#"{"sym": "C", "price": "high"}"#).await?; // wrong type
        ctx.next_str(r#"{"sym": "D""#).await?; // malformed
        ctx.commit().await?;
        ctx.next_str(r#"{"sym": "A", "price": 1.75}"#).await?;
        ctx.delete("B").await?;
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let reader = Reader::json(schema()).error_policy(ErrorPolicy::SkipAndReport);
    let table = pipeline.read("exported", source, reader);
    pipeline.run().await.unwrap();

    let stats = table.stats();
    assert_eq!(
        (
            stats.messages(),
            stats.rejected(),
            stats.commits(),
            stats.changes(),
            stats.rows()
        ),
        (4, 2, 2, 5, 1)
    );
    assert!(stats.last_commit_latency().is_some());
    let sources = stats.sources();
    assert_eq!(sources.len(), 1);
    let ticks = &sources[0];
    assert_eq!(ticks.name(), "exported");
    assert_eq!((ticks.messages(), ticks.rejected()), (6, 2));
    let sent_bytes = [
        r#"{"sym": "A", "price": 1.5}"#,
        r#"{"sym": "B", "price": 2.5}"#,
        r#"{"sym": "C", "price": "high"}"#,
        r#"{"sym": "D""#,
        r#"{"sym": "A", "price": 1.75}"#,
    ]
    .iter()
    .map(|s| s.len() as u64)
    .sum::<u64>();
    assert_eq!(ticks.bytes(), sent_bytes);
    assert!(ticks.last_message().is_some());

    let labels = r#"{table="exported",source="exported"}"#;
    assert_eq!(
        sample(&format!("intake_source_messages_total{labels}")),
        Some(6.0)
    );
    assert_eq!(
        sample(&format!("intake_source_bytes_total{labels}")),
        Some(sent_bytes as f64)
    );
    assert!(sample(&format!("intake_source_last_message_seconds{labels}")).is_some_and(|t| t > 1.7e9));
    let rejected = |kind: &str| {
        sample(&format!(
            r#"intake_source_rejected_total{{table="exported",source="exported",kind="{kind}"}}"#
        ))
    };
    assert_eq!(rejected("wrong_type"), Some(1.0));
    assert_eq!(rejected("malformed_json"), Some(1.0));
    let table_sample = |name: &str| sample(&format!(r#"{name}{{table="exported"}}"#));
    assert_eq!(table_sample("intake_table_messages_total"), Some(4.0));
    assert_eq!(table_sample("intake_table_rejected_total"), Some(2.0));
    assert_eq!(table_sample("intake_table_commits_total"), Some(2.0));
    assert_eq!(table_sample("intake_table_changes_total"), Some(5.0));
    assert_eq!(table_sample("intake_table_rows"), Some(1.0));
    assert_eq!(
        table_sample("intake_table_commit_latency_seconds_count"),
        Some(2.0)
    );

    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["rows"], 1);
    assert_eq!(json["sources"][0]["rejected"], 2);
}

/// The lag of the slowest subscriber: batches handed to it and not yet taken.
#[tokio::test]
async fn subscriber_lag_counts_the_batches_a_slow_subscriber_has_not_taken() {
    prometheus();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let source = source_fn(|ctx: SourceContext| async move {
        for n in 0..3 {
            ctx.next_json(serde_json::json!({"sym": format!("S{n}"), "price": 1.0}))
                .await?;
            ctx.commit().await?;
        }
        let _ = done_rx.await;
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("lagging", source, Reader::json(schema()).subscriber_capacity(8));
    let mut slow = table.changes();
    let shutdown = pipeline.shutdown_handle();
    let running = tokio::spawn(pipeline.run());
    table.wait_for(|t| t.stats().commits() == 3).await.unwrap();
    // The lag is measured after each commit is delivered.
    let stats = table.stats();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while stats.subscriber_lag() != 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "lag {}",
            stats.subscriber_lag()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        sample(r#"intake_table_subscriber_lag{table="lagging"}"#),
        Some(3.0)
    );
    for _ in 0..3 {
        slow.next().await.unwrap();
    }
    let _ = done_tx.send(());
    shutdown.shutdown();
    running.await.unwrap().unwrap();
}

/// A commit made in no measurable time still has a latency (it read as "no commit
/// yet" when it rounded to zero microseconds).
#[tokio::test(start_paused = true)]
async fn a_commit_faster_than_a_microsecond_has_a_latency() {
    let source = source_fn(|ctx: SourceContext| async move {
        ctx.next_str(r#"{"sym": "A", "price": 1.5}"#).await?;
        ctx.commit().await?;
        Ok(())
    });
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("instant", source, Reader::json(schema()));
    pipeline.run().await.unwrap();
    assert_eq!(table.stats().commits(), 1);
    assert_eq!(
        table.stats().last_commit_latency(),
        Some(Duration::from_micros(1))
    );
}
