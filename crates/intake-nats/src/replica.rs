//! The replica: a table rebuilt from a [`JetStreamSink`](crate::JetStreamSink)'s changelog.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::{self, ErrorCode};
use futures::StreamExt;
use intake_core::{BoxError, Reconnect, Source, SourceContext};

use crate::changelog::{self, header};

/// How often a replica checks whether its client connected again.
const RECONNECT_CHECK: Duration = Duration::from_millis(200);

/// A source that rebuilds a table from the changelog a
/// [`JetStreamSink`](crate::JetStreamSink) publishes, then keeps following it: read it
/// with [`Reader::json`](intake_core::Reader::json) and the source table's schema.
///
/// It first reads the last message of every key (`DeliverPolicy::LastPerSubject`):
/// rows are upserted, tombstones delete their key, and once it has caught up with the
/// stream it commits, so the table appears whole at once. It then applies each new
/// message as it comes and commits at the end of each of the source table's commits
/// (the sink marks them), so the replica's commits are the source's. A commit the
/// writer never finished (it died in the middle) is committed by the reader's
/// autocommit.
///
/// Its offset is the stream sequence of the last message it applied. With
/// [persistence](intake_core::Pipeline::persist) the replica's table is restored and
/// reading resumes after that sequence; without, it rebuilds from the changelog.
///
/// A lost connection is retried by async-nats; a consumer that fails (heartbeats
/// stopped) or may be gone (the client connected again, perhaps to a restarted server)
/// is created again after the delays of its [`Reconnect`] policy, from the sequence after the last one applied, so nothing is
/// applied twice or skipped.
///
/// A stream that does not exist yet is waited for the same way (with a warning each
/// time), so a service can start before the worker whose sink creates the stream.
///
/// # Errors
///
/// [`ReplicaError::NoPrimaryKey`] when the table has no primary key (a changelog is
/// keyed), [`ReplicaError::GaveUp`] when the reconnect policy's retries are used up
/// (its source is the last failure, such as [`ReplicaError::StreamNotFound`]).
///
/// # Examples
///
/// ```no_run
/// use intake_core::{Column, DataType, Pipeline, Reader, Schema};
/// use intake_nats::Replica;
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let schema = Schema::new([
///     Column::new("sym", DataType::String).primary_key(),
///     Column::new("price", DataType::Float),
/// ])?;
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let mut pipeline = Pipeline::new();
/// let prices = pipeline.read("prices", Replica::new(client, "PRICES", "prices"), Reader::json(schema));
/// # let _ = prices;
/// pipeline.run().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Replica {
    client: async_nats::Client,
    stream: String,
    prefix: String,
    reconnect: Reconnect,
}

impl Replica {
    /// A replica of the changelog on stream `stream` under `<prefix>.>`, read through
    /// `client`.
    pub fn new(client: async_nats::Client, stream: impl Into<String>, prefix: impl Into<String>) -> Self {
        Replica {
            client,
            stream: stream.into(),
            prefix: prefix.into(),
            reconnect: Reconnect::default(),
        }
    }

    /// When to create the consumer again after it failed. Default:
    /// [`Reconnect::default`].
    pub fn reconnect(mut self, reconnect: Reconnect) -> Self {
        self.reconnect = reconnect;
        self
    }
}

/// How a consumer session ended.
enum Ended {
    Shutdown,
    Failed(BoxError),
}

#[async_trait::async_trait]
impl Source for Replica {
    /// Its offsets are exact, so its messages are committed only with one.
    fn reports_offsets(&self) -> bool {
        true
    }

    async fn run(&mut self, ctx: SourceContext) -> Result<(), BoxError> {
        let schema = ctx.schema().clone();
        if schema.primary_key().is_empty() {
            return Err(ReplicaError::NoPrimaryKey.into());
        }
        let mut last_sequence = match ctx.resume_offset() {
            None => None,
            Some(offset) => Some(offset.as_u64().ok_or_else(|| ReplicaError::BadOffset {
                offset: offset.to_string(),
            })?),
        };
        let jetstream = jetstream::new(self.client.clone());
        let mut delays = self.reconnect.delays();
        loop {
            let started = Instant::now();
            let mut applied = false;
            let ended = self
                .follow(&ctx, &jetstream, &schema, &mut last_sequence, &mut applied)
                .await;
            let error = match ended {
                Ok(Ended::Shutdown) => return Ok(()),
                Ok(Ended::Failed(error)) => error,
                Err(fatal) => return Err(fatal.into()),
            };
            if applied || started.elapsed() >= self.reconnect.healthy_duration() {
                delays = self.reconnect.delays();
            }
            let Some(delay) = delays.next() else {
                return Err(ReplicaError::GaveUp { source: error }.into());
            };
            tracing::warn!(source = ctx.name(), stream = %self.stream, %error, ?delay, "replica consumer failed; creating it again");
            tokio::select! {
                () = ctx.cancelled() => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

impl Replica {
    /// Reads the changelog with one ordered consumer until shutdown or a failure.
    /// `Err` is fatal (no retry).
    async fn follow(
        &self,
        ctx: &SourceContext,
        jetstream: &jetstream::Context,
        schema: &intake_core::Schema,
        last_sequence: &mut Option<u64>,
        applied: &mut bool,
    ) -> Result<Ended, ReplicaError> {
        let stream = tokio::select! {
            () = ctx.cancelled() => return Ok(Ended::Shutdown),
            stream = jetstream.get_stream_no_info(&self.stream) => stream,
        };
        let stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                if matches!(error.kind(), GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
                {
                    return Ok(Ended::Failed(
                        ReplicaError::StreamNotFound {
                            stream: self.stream.clone(),
                        }
                        .into(),
                    ));
                }
                return Ok(Ended::Failed(error.into()));
            }
        };
        let deliver_policy = match *last_sequence {
            None => DeliverPolicy::LastPerSubject,
            Some(sequence) => DeliverPolicy::ByStartSequence {
                start_sequence: sequence + 1,
            },
        };
        let config = OrderedConfig {
            filter_subject: format!("{}.>", self.prefix),
            deliver_policy,
            ..OrderedConfig::default()
        };
        let consumer = tokio::select! {
            () = ctx.cancelled() => return Ok(Ended::Shutdown),
            consumer = stream.create_consumer(config) => consumer,
        };
        let consumer = match consumer {
            Ok(consumer) => consumer,
            Err(error) => {
                if matches!(error.kind(), async_nats::jetstream::stream::ConsumerErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
                {
                    return Ok(Ended::Failed(
                        ReplicaError::StreamNotFound {
                            stream: self.stream.clone(),
                        }
                        .into(),
                    ));
                }
                return Ok(Ended::Failed(error.into()));
            }
        };
        let mut messages = match consumer.messages().await {
            Ok(messages) => messages,
            Err(error) => return Ok(Ended::Failed(error.into())),
        };
        // Until the consumer has caught up with the stream, the table is being rebuilt:
        // commit only once it is whole.
        let mut catching_up = true;
        // A server restarted in between lost this ephemeral consumer; async-nats would
        // notice only after missing heartbeats (15 s). A new connection is the hint to
        // create the consumer again at once, after the last sequence applied.
        let statistics = self.client.statistics();
        let connects = statistics.connects.load(Ordering::Relaxed);
        let mut reconnected = tokio::time::interval(RECONNECT_CHECK);
        loop {
            let next = tokio::select! {
                () = ctx.cancelled() => return Ok(Ended::Shutdown),
                next = messages.next() => next,
                _ = reconnected.tick() => {
                    if statistics.connects.load(Ordering::Relaxed) != connects {
                        return Ok(Ended::Failed("the connection to the server was made again".into()));
                    }
                    continue;
                }
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(error)) => return Ok(Ended::Failed(error.into())),
                None => return Ok(Ended::Failed("the consumer's message stream ended".into())),
            };
            let reply = message.reply.as_ref().map_or("", |reply| reply.as_str());
            let (sequence, pending) = match sequence_and_pending(reply) {
                Some(found) => found,
                None => match message.info() {
                    Ok(info) => (info.stream_sequence, info.pending),
                    Err(error) => return Ok(Ended::Failed(error)),
                },
            };
            if last_sequence.is_some_and(|last| sequence <= last) {
                continue;
            }
            let headers = message.headers.as_ref();
            let commit = match headers.map(changelog::Commit::read) {
                Some(Ok(Some(commit))) => Ok(commit),
                Some(Err(reason)) => Err(reason),
                None | Some(Ok(None)) => Err("has no `Intake-Commit` header".to_owned()),
            };
            let sent = match &commit {
                Err(reason) => {
                    ctx.reject(
                        message.payload.clone(),
                        format!("message {sequence} on `{}` {reason}", message.subject),
                    )
                    .await
                }
                Ok(_) if !headers.is_some_and(changelog::is_tombstone) => {
                    ctx.next_bytes(message.payload.clone()).await
                }
                Ok(_) => {
                    let key = headers
                        .and_then(|h| h.get(header::KEY))
                        .ok_or_else(|| "it has no `Intake-Key` header".to_owned())
                        .and_then(|key| serde_json::from_str(key.as_str()).map_err(|e| e.to_string()))
                        .and_then(|json| changelog::key_from_json(schema, &json));
                    match key {
                        Ok(key) => ctx.delete(key).await,
                        Err(reason) => {
                            ctx.reject(
                                message.payload.clone(),
                                format!("tombstone {sequence} on `{}`: {reason}", message.subject),
                            )
                            .await
                        }
                    }
                }
            };
            if sent.is_err() || ctx.report_offset(sequence.into()).await.is_err() {
                return Ok(Ended::Shutdown);
            }
            *last_sequence = Some(sequence);
            *applied = true;
            let commit_end = commit.is_ok_and(|commit| commit.end);
            // Commit where the worker committed; while catching up, only at the end of
            // the last commit the stream holds, so the rebuilt table appears at once.
            // (A commit the worker never finished is committed by the reader's
            // autocommit.)
            if commit_end && (pending == 0 || !catching_up) && ctx.commit().await.is_err() {
                return Ok(Ended::Shutdown);
            }
            if pending == 0 {
                catching_up = false;
            }
        }
    }
}

/// The stream sequence and the pending count in the reply subject of a message a
/// consumer delivered (`$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer
/// seq>.<time>.<pending>`, or with a domain and an account hash before the stream and a
/// token after). async-nats' `Message::info` reads every field, the time as an `i128`,
/// and the ordered consumer has already done so for the same message: reading only
/// these two halves the cost per message (W7 in docs/benchmarks.md). `None` when the
/// subject is not of that form.
fn sequence_and_pending(reply: &str) -> Option<(u64, u64)> {
    let rest = reply.strip_prefix("$JS.ACK.")?.as_bytes();
    // Where each token starts, and one past the end of the last.
    let mut starts = [0; 10];
    let mut count = 1;
    for (i, &byte) in rest.iter().enumerate() {
        if byte == b'.' {
            if let Some(start) = starts.get_mut(count) {
                *start = i + 1;
            }
            count += 1;
        }
    }
    let token = |n: usize| {
        let start = starts[n];
        let end = starts
            .get(n + 1)
            .filter(|_| n + 1 < count)
            .map_or(rest.len() + 1, |&next| next)
            - 1;
        rest.get(start..end)
    };
    let (sequence, pending) = match count {
        7 => (token(3)?, token(6)?),
        9.. => (token(5)?, token(8)?),
        _ => return None,
    };
    Some((number(sequence)?, number(pending)?))
}

/// A decimal `u64`, digits only.
fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |value, &digit| {
        let digit = char::from(digit).to_digit(10)?;
        value.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Why a [`Replica`] stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// The table has no primary key; a changelog holds the last row of each key.
    #[error(
        "a replica's table needs the source table's primary key (read it with the source table's schema)"
    )]
    NoPrimaryKey,
    /// The stream does not exist.
    #[error("stream `{stream}` does not exist: start the JetStreamSink that writes it first")]
    StreamNotFound {
        /// The stream.
        stream: String,
    },
    /// The resume offset is not a stream sequence.
    #[error("resume offset {offset} is not a stream sequence")]
    BadOffset {
        /// The offset.
        offset: String,
    },
    /// The consumer kept failing until the reconnect policy gave up.
    #[error("the replica's consumer kept failing; gave up")]
    GaveUp {
        /// The last failure.
        source: BoxError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_subjects_give_the_stream_sequence_and_pending() {
        for reply in [
            "$JS.ACK.ORDERS.c1.1.42.40.1700000000000000000.7",
            "$JS.ACK._.acchash.ORDERS.c1.3.42.40.1700000000000000000.7",
            "$JS.ACK.hub.acchash.ORDERS.c1.3.42.40.1700000000000000000.7.token",
        ] {
            assert_eq!(sequence_and_pending(reply), Some((42, 7)), "{reply}");
        }
        for bad in [
            "",
            "$JS.ACK.",
            "$JS.ACK.a.b.c",
            "_INBOX.x",
            "$JS.ACK.S.c.1.x.40.1.7",
            "$JS.ACK.S.c.1..40.1.7",
            "$JS.ACK.S.c.1.42.40.1.",
            "$JS.ACK.S.c.1.42.40.1.99999999999999999999",
        ] {
            assert_eq!(sequence_and_pending(bad), None, "{bad:?}");
        }
    }
}
