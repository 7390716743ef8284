//! Reading a stream through a durable pull consumer whose truth is a Postgres checkpoint: the
//! projector and the correlator both fold events into Postgres, store the last stream sequence
//! in the same transaction, and reposition the consumer from that checkpoint at start and after
//! any failure, so a crash between commit and ack, a lost ack or a dropped database never skips
//! or doubles an event.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, PullConsumer, pull},
};
use futures::{FutureExt as _, StreamExt as _};
use tokio_util::sync::CancellationToken;

use crate::{Context, nats};

/// Makes the durable consumer deliver from the message after the checkpoint `name`. A consumer
/// that delivered exactly up to the checkpoint with nothing pending is kept; any other is
/// recreated (after a crash with messages in flight, or when the read models were dropped for a
/// rebuild). Returns the consumer and the checkpoint.
pub async fn position(
    ctx: &Context,
    stream_name: &str,
    consumer: &str,
    name: &str,
) -> anyhow::Result<(PullConsumer, u64)> {
    let stream = ctx.js.get_stream(stream_name).await?;
    let (_, mut config) = nats::consumer_definition(consumer)
        .with_context(|| format!("no definition for consumer {consumer}"))?;
    ctx.store.init_checkpoint(name, stream_name).await?;
    let mut checkpoint = ctx.store.read_checkpoint(name).await?;
    let state = nats::stream_state(&ctx.js, stream_name).await?;
    anyhow::ensure!(
        checkpoint <= state.last_sequence,
        "{name} has applied up to sequence {checkpoint} but stream {stream_name} ends at {}: \
         the stream was recreated; rebuild the read models into an empty database",
        state.last_sequence
    );
    // An emptied stream reports first = last + 1.
    if state.first_sequence > 0 && checkpoint + 1 < state.first_sequence {
        tracing::warn!(
            checkpoint_name = name,
            checkpoint,
            first = state.first_sequence,
            "the stream no longer holds the events after the checkpoint; going on from its first"
        );
        checkpoint = state.first_sequence - 1;
        ctx.store
            .advance_checkpoint(name, stream_name, checkpoint)
            .await?;
    }
    if let Ok(mut existing) = stream.get_consumer::<pull::Config>(consumer).await {
        let info = existing.info().await?;
        if info.delivered.stream_sequence == checkpoint && info.num_ack_pending == 0 {
            return Ok((existing, checkpoint));
        }
        tracing::info!(
            consumer,
            checkpoint,
            delivered = info.delivered.stream_sequence,
            "repositioning consumer at the checkpoint"
        );
        stream.delete_consumer(consumer).await?;
    }
    if checkpoint > 0 {
        config.deliver_policy = DeliverPolicy::ByStartSequence {
            start_sequence: checkpoint + 1,
        };
    }
    Ok((stream.create_consumer(config).await?, checkpoint))
}

/// The messages of a positioned consumer, taken in batches of what is ready.
pub struct Batches {
    messages: pull::Stream,
    max: usize,
}

impl Batches {
    pub async fn new(consumer: &PullConsumer, max: usize) -> anyhow::Result<Self> {
        let messages = consumer
            .stream()
            .max_messages_per_batch(max)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .context("subscribing to the consumer")?;
        Ok(Self {
            messages,
            max: max.max(1),
        })
    }

    /// Waits for a message, then takes what else is ready without lingering, up to the batch
    /// size. `None` on shutdown.
    pub async fn next(
        &mut self,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<Vec<jetstream::Message>>> {
        let first = loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                next = self.messages.next() => next,
            };
            match next {
                Some(Ok(message)) => break message,
                Some(Err(err)) if err.kind() == pull::MessagesErrorKind::MissingHeartbeat => {
                    tracing::debug!("heartbeat missed, still waiting");
                }
                Some(Err(err)) => return Err(err).context("reading the consumer"),
                None => anyhow::bail!("the consumer's message stream ended"),
            }
        };
        let mut batch = vec![first];
        // "Ready" includes messages already read from the socket by the connection task, so
        // give it a few turns before cutting the batch.
        let mut idle_turns = 0;
        while batch.len() < self.max && idle_turns < 3 {
            match self.messages.next().now_or_never() {
                Some(Some(Ok(message))) => {
                    batch.push(message);
                    idle_turns = 0;
                }
                Some(_) => break,
                None => {
                    idle_turns += 1;
                    tokio::task::yield_now().await;
                }
            }
        }
        Ok(Some(batch))
    }
}

/// The tenant token of a subject (`signals.<tenant>.…`).
pub fn subject_tenant(subject: &str) -> &str {
    subject
        .split('.')
        .nth(1)
        .unwrap_or(copilot_events::subjects::UNKNOWN_TENANT)
}

/// Keeps one checkpointed consumer running in this process: waits for its lease (one writer per
/// checkpoint across processes), runs `work` while holding it, and after a failure waits a
/// growing pause and runs it again (`work` repositions from the checkpoint). Returns when
/// `work` returns `Ok` or at shutdown.
pub async fn supervise<F, Fut>(
    ctx: &Context,
    name: &str,
    shutdown: &CancellationToken,
    mut work: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut backoff = Duration::from_millis(200);
    loop {
        let lease = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            lease = ctx.store.try_lease(name) => lease,
        };
        match lease {
            Ok(Some(_lease)) => {
                tracing::info!(consumer = name, "lease acquired");
                match work().await {
                    Ok(()) => return Ok(()),
                    Err(err) => tracing::warn!(
                        consumer = name,
                        error = format!("{err:#}"),
                        "consumer failed, repositioning"
                    ),
                }
            }
            Ok(None) => backoff = Duration::from_secs(1),
            Err(err) => tracing::warn!(consumer = name, error = %err, "cannot take the lease"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// The stream sequence of the next message of an in-order consumer, given the last one applied:
/// `None` when it is at or below (already applied; a redelivery), an error when it skips one.
/// The consumers cover whole streams, whose sequences have no holes (deletes are denied), so a
/// jump means a delivery went missing: the caller repositions rather than skip it.
pub fn next_sequence(message: &jetstream::Message, last: &mut u64) -> anyhow::Result<Option<u64>> {
    let seq = message
        .info()
        .map_err(|e| anyhow::anyhow!("message without JetStream metadata: {e}"))?
        .stream_sequence;
    if seq <= *last {
        return Ok(None);
    }
    anyhow::ensure!(
        seq == *last + 1,
        "expected sequence {} but received {seq}; repositioning",
        *last + 1
    );
    *last = seq;
    Ok(Some(seq))
}
