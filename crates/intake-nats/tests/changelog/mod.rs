//! What the changelog tests share: a table fed on demand, its batches, stream names.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use futures::StreamExt;
use intake_core::{
    ChangeBatch, Column, DataType, Key, Pipeline, Reader, Row, Schema, SourceContext, Table, source_fn,
};
use serde_json::{Value as Json, json};
use tokio::sync::mpsc;

/// A stream name no other test uses, so tests share one server.
pub fn unique(name: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{name}_{}_{nanos}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub async fn connect(url: &str) -> async_nats::Client {
    async_nats::connect(url).await.expect("connect to nats-server")
}

/// Prices keyed by symbol; symbols hold what subjects cannot (dots, wildcards, spaces).
pub fn schema() -> Schema {
    Schema::new([
        Column::new("sym", DataType::String).primary_key(),
        Column::new("price", DataType::Float),
        Column::new("n", DataType::Int),
    ])
    .unwrap()
}

pub const SYMBOLS: [&str; 8] = ["AAPL", "a.b", "*", ">", "two words", "", "%41", "ünï\tx"];

/// One step of a feed.
#[derive(Debug, Clone)]
pub enum Op {
    Upsert(Json),
    Delete(&'static str),
    Commit,
}

pub fn upsert(sym: &str, n: i64) -> Op {
    Op::Upsert(json!({"sym": sym, "price": n as f64 / 4.0, "n": n}))
}

/// `commits` commits over `SYMBOLS`: upserts, updates and, every third commit, a delete.
pub fn script(commits: i64, from: i64) -> Vec<Op> {
    let mut ops = Vec::new();
    for c in from..from + commits {
        for (i, sym) in SYMBOLS.iter().enumerate() {
            if (c + i as i64) % 3 != 0 {
                ops.push(upsert(sym, c * 100 + i as i64));
            }
        }
        if c % 3 == 2 {
            ops.push(Op::Delete(SYMBOLS[(c as usize) % SYMBOLS.len()]));
        }
        ops.push(Op::Commit);
    }
    ops
}

/// A table fed by the returned sender, in a pipeline not yet run.
pub fn fed_table(pipeline: &mut Pipeline, name: &str) -> (Table, mpsc::UnboundedSender<Op>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Op>();
    let source = source_fn(move |ctx: SourceContext| async move {
        while let Some(op) = rx.recv().await {
            match op {
                Op::Upsert(row) => ctx.next_json(row).await?,
                Op::Delete(sym) => ctx.delete(sym).await?,
                Op::Commit => ctx.commit().await?,
            }
        }
        Ok(())
    });
    let reader = Reader::json(schema()).autocommit_duration(Duration::from_secs(3600));
    (pipeline.read(name, source, reader), tx)
}

/// The batches of a pipeline fed `ops`, and the table after them.
pub async fn batches(ops: Vec<Op>) -> (Vec<ChangeBatch>, Vec<(Key, Row)>) {
    let mut pipeline = Pipeline::new();
    let (table, tx) = fed_table(&mut pipeline, "prices");
    for op in ops {
        tx.send(op).unwrap();
    }
    drop(tx);
    let changes = tokio::spawn(table.changes().collect::<Vec<_>>());
    pipeline.run().await.unwrap();
    (changes.await.unwrap(), sorted(&table))
}

pub fn sorted(table: &Table) -> Vec<(Key, Row)> {
    let mut rows = table.snapshot().rows().to_vec();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}

/// The final value of each key a batch publishes (`None`: a tombstone).
pub fn last_values(batch: &ChangeBatch) -> Vec<(Key, Option<Row>)> {
    let mut values: Vec<(Key, Option<Row>)> = Vec::new();
    for change in batch.changes() {
        let value = change.is_addition.then(|| change.row.clone());
        match values.iter_mut().find(|(k, _)| *k == change.key) {
            Some(slot) => slot.1 = value,
            None => values.push((change.key.clone(), value)),
        }
    }
    values
}
