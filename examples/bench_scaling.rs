//! Benchmark W6: scaling with sources on the multi-threaded runtime (2 workers).
//!
//! W1's messages `{"key": i % 10000, "value": i}` are split by key over 1, 2 and 4
//! sources (source `p` gets the keys with `key % n == p`, so each key's messages stay in
//! order), each sending its share as bytes. Two layouts, the same total message count:
//!
//! - **one table**: the sources are the partitions of one `PartitionedSource`, all
//!   feeding one keyed table (one queue with n producers, one commit driver);
//! - **separate tables**: each source feeds its own keyed table (n queues, n drivers).
//!
//! Each configuration runs `ROUNDS` times, interleaved; prints the median, the range,
//! the ratio of the median against one source of the same layout, and how many cores the
//! process kept busy (CPU time over wall time): with 2 cores, a layout can gain at most
//! 2 / (cores busy with one source). Messages per CPU-second shows what more sources
//! cost per message (queue contention among them): it falls if they get in each
//! other's way.
//!
//! Run with:
//!
//! ```text
//! cargo run --release --example bench_scaling [-- MESSAGES [ROUNDS [LAYOUT SOURCES]]]
//! ```
//!
//! With `LAYOUT` (`one` or `separate`) and `SOURCES`, only that configuration runs,
//! once, so that a profiler or callgrind sees it alone.

use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use intake::{BoxError, Column, DataType, PartitionedSource, Pipeline, Reader, Schema, Source, source_fn};

const KEYS: u64 = 10_000;
const SOURCES: [usize; 3] = [1, 2, 4];

/// W1's messages, split by key over `parts` sources.
#[derive(Clone)]
struct Split {
    parts: Vec<Arc<Vec<Bytes>>>,
}

impl Split {
    fn new(count: u64, parts: usize) -> Split {
        let mut split = vec![Vec::new(); parts];
        let mut buffer = BytesMut::new();
        for i in 0..count {
            let key = i % KEYS;
            buffer.put_slice(format!(r#"{{"key": {key}, "value": {i}}}"#).as_bytes());
            split[(key % parts as u64) as usize].push(buffer.split().freeze());
        }
        Split {
            parts: split.into_iter().map(Arc::new).collect(),
        }
    }
}

fn sender(messages: Arc<Vec<Bytes>>) -> impl Source {
    source_fn(move |ctx| async move {
        for message in messages.iter() {
            ctx.next_bytes(message.clone()).await?;
        }
        Ok(())
    })
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
        Ok(Box::new(sender(messages)))
    }
}

fn schema() -> anyhow::Result<Schema> {
    Ok(Schema::new([
        Column::new("key", DataType::Int).primary_key(),
        Column::new("value", DataType::Int),
    ])?)
}

#[derive(Clone, Copy, PartialEq)]
enum Layout {
    One,
    Separate,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::One => "one table",
            Layout::Separate => "separate tables",
        }
    }
}

/// CPU time this process has used so far (all threads, user and system), in seconds,
/// from `/proc/self/stat` (Linux only; clock ticks of 1/100 s).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// One run: messages per second, and the cores it kept busy on average (CPU time over
/// wall time; at most 2 here, less when other work shares the machine).
struct Figures {
    rate: f64,
    cores: f64,
}

async fn run(layout: Layout, split: Split, count: usize) -> anyhow::Result<Figures> {
    let mut pipeline = Pipeline::new();
    let tables = match layout {
        Layout::One => vec![pipeline.read_partitioned("w6", split, Reader::json(schema()?))],
        Layout::Separate => split
            .parts
            .iter()
            .enumerate()
            .map(|(p, part)| {
                Ok(pipeline.read(format!("w6-{p}"), sender(part.clone()), Reader::json(schema()?)))
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
    };
    let cpu = cpu_seconds().unwrap_or(f64::NAN);
    let started = Instant::now();
    pipeline.run().await?;
    let elapsed = started.elapsed().as_secs_f64();
    let cores = (cpu_seconds().unwrap_or(f64::NAN) - cpu) / elapsed;
    let rows: usize = tables.iter().map(|t| t.len()).sum();
    anyhow::ensure!(rows == KEYS as usize, "the tables hold {rows} rows");
    Ok(Figures {
        rate: count as f64 / elapsed,
        cores,
    })
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let count: u64 = match args.next() {
        Some(arg) => arg.parse()?,
        None => 1_000_000,
    };
    let rounds: usize = match args.next() {
        Some(arg) => arg.parse()?,
        None => 5,
    };
    let only = match (args.next(), args.next()) {
        (Some(layout), Some(sources)) => {
            let layout = match layout.as_str() {
                "one" => Layout::One,
                "separate" => Layout::Separate,
                other => anyhow::bail!("unknown layout {other:?}: expected one or separate"),
            };
            Some((layout, sources.parse::<usize>()?))
        }
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    if let Some((layout, sources)) = only {
        let split = Split::new(count, sources);
        let figures = runtime.block_on(run(layout, split, count as usize))?;
        println!(
            "W6: {count} messages, {}, {sources} source(s): {:.0} msgs/s, {:.2} cores busy",
            layout.name(),
            figures.rate,
            figures.cores
        );
        return Ok(());
    }

    let splits: Vec<Split> = SOURCES.iter().map(|&n| Split::new(count, n)).collect();
    let layouts = [Layout::One, Layout::Separate];
    let mut rates: Vec<Vec<Vec<Figures>>> = (0..layouts.len())
        .map(|_| (0..SOURCES.len()).map(|_| Vec::new()).collect())
        .collect();
    for _ in 0..rounds {
        for (l, &layout) in layouts.iter().enumerate() {
            for (s, split) in splits.iter().enumerate() {
                rates[l][s].push(runtime.block_on(run(layout, split.clone(), count as usize))?);
            }
        }
    }
    println!(
        "W6: {count} messages, {KEYS} keys, multi-thread runtime with 2 workers; median of {rounds} (min-max)"
    );
    println!(
        "| layout | sources | msgs/s (median) | min-max | vs one source | cores busy (median) | msgs per CPU-second (median) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (l, &layout) in layouts.iter().enumerate() {
        let mut one = f64::NAN;
        for (s, &sources) in SOURCES.iter().enumerate() {
            let mut runs: Vec<f64> = rates[l][s].iter().map(|f: &Figures| f.rate).collect();
            runs.sort_by(f64::total_cmp);
            let mut cores: Vec<f64> = rates[l][s].iter().map(|f| f.cores).collect();
            cores.sort_by(f64::total_cmp);
            let mut per_cpu: Vec<f64> = rates[l][s].iter().map(|f| f.rate / f.cores).collect();
            per_cpu.sort_by(f64::total_cmp);
            let median = runs[runs.len() / 2];
            if sources == 1 {
                one = median;
            }
            println!(
                "| {} | {sources} | {median:.0} | {:.2}-{:.2}M | {:.2} | {:.2} | {:.2}M |",
                layout.name(),
                runs[0] / 1e6,
                runs[runs.len() - 1] / 1e6,
                median / one,
                cores[cores.len() / 2],
                per_cpu[per_cpu.len() / 2] / 1e6
            );
        }
    }
    Ok(())
}
