//! Benchmark W4: W1's data split over 1, 2 and 4 partitions of a partitioned source,
//! to show how parsing scales with partitions on the multi-threaded runtime.
//!
//! W1's 1,000,000 messages `{"key": i % 10000, "value": i}` are split by key (partition
//! `p` gets the keys with `key % n == p`, so each key's messages stay in order), each
//! partition is a source that sends its messages as bytes, and all feed one keyed
//! table. Each partition count runs three times, interleaved; prints the medians and
//! the speed-up over one partition.
//!
//! Run with:
//!
//! ```text
//! cargo run --release --example bench_partitions [-- MESSAGES]
//! ```

use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use intake::{BoxError, Column, DataType, PartitionedSource, Pipeline, Reader, Schema, Source, source_fn};

const KEYS: u64 = 10_000;

/// W1's messages, split by key over `partitions`.
struct Split {
    parts: Vec<Arc<Vec<Bytes>>>,
}

impl Split {
    fn new(count: u64, partitions: u64) -> Split {
        let mut parts = vec![Vec::new(); partitions as usize];
        let mut buffer = BytesMut::new();
        for i in 0..count {
            let key = i % KEYS;
            buffer.put_slice(format!(r#"{{"key": {key}, "value": {i}}}"#).as_bytes());
            parts[(key % partitions) as usize].push(buffer.split().freeze());
        }
        Split {
            parts: parts.into_iter().map(Arc::new).collect(),
        }
    }
}

#[async_trait::async_trait]
impl PartitionedSource for Split {
    async fn list_partitions(&mut self) -> Result<Vec<String>, BoxError> {
        Ok((0..self.parts.len()).map(|p| format!("{p:02}")).collect())
    }

    async fn build_partition(
        &mut self,
        partition: &str,
        _resume: Option<&serde_json::Value>,
    ) -> Result<Box<dyn Source>, BoxError> {
        let messages = self.parts[partition.parse::<usize>()?].clone();
        Ok(Box::new(source_fn(move |ctx| async move {
            for message in messages.iter() {
                ctx.next_bytes(message.clone()).await?;
            }
            Ok(())
        })))
    }
}

async fn run(split: Split, count: usize) -> anyhow::Result<f64> {
    let schema = Schema::new([
        Column::new("key", DataType::Int).primary_key(),
        Column::new("value", DataType::Int),
    ])?;
    let mut pipeline = Pipeline::new();
    let table = pipeline.read_partitioned("w4", split, Reader::json(schema));
    let started = Instant::now();
    pipeline.run().await?;
    let elapsed = started.elapsed().as_secs_f64();
    anyhow::ensure!(table.len() == KEYS as usize, "table has {} rows", table.len());
    Ok(count as f64 / elapsed)
}

fn main() -> anyhow::Result<()> {
    let count: u64 = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 1_000_000,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let counts = [1u64, 2, 4];
    let mut rates = vec![Vec::new(); counts.len()];
    for _ in 0..3 {
        for (i, &partitions) in counts.iter().enumerate() {
            let split = Split::new(count, partitions);
            rates[i].push(runtime.block_on(run(split, count as usize))?);
        }
    }
    println!(
        "W4: {count} messages, {KEYS} keys, one table, {} worker threads; median of 3 (min-max)",
        std::thread::available_parallelism()?
    );
    let mut one = f64::NAN;
    for (&partitions, mut rates) in counts.iter().zip(rates) {
        rates.sort_by(f64::total_cmp);
        let median = rates[1];
        if partitions == 1 {
            one = median;
        }
        println!(
            "  {partitions} partition(s): {median:>10.0} msgs/s ({:.0}-{:.0}), {:.2}x one partition",
            rates[0],
            rates[2],
            median / one
        );
    }
    Ok(())
}
