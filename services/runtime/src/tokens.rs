//! The webhook tokens projection: TENANTS folded into the JetStream key-value bucket
//! [`subjects::TOKENS_BUCKET`], which the gateway reads (through a watch, into memory) to
//! authenticate webhooks. It needs NATS alone, so intake keeps working while Postgres is away.
//!
//! Entries (JSON):
//! - `token.<hash>` → [`TokenEntry`]: tenant, token id, when it was issued, when it stops working;
//! - `token-id.<uuid>` → [`TokenIdEntry`]: the hash of a token id (a revocation names the id);
//! - `tenant.<slug>` → [`TenantEntry`]: whether the tenant is suspended;
//! - [`subjects::TOKENS_CHECKPOINT_KEY`] → the last TENANTS sequence applied.
//!
//! Every entry records the stream sequence of the event that last set it, and a write is a
//! compare-and-set on the entry's revision that only moves that sequence forward, so applying an
//! event twice, or two processes applying the same events, gives the same entries. The durable
//! consumer (`tokens-kv`, `max_ack_pending: 1`) hands out one event at a time across every
//! process running this projection, in stream order, and acks after the writes. Times come from
//! the events (a revocation's `effective_at`, else when it was recorded), never the clock, so
//! deleting the bucket and replaying TENANTS gives the same entries.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull},
    kv,
};
use chrono::{DateTime, Utc};
use copilot_events::{Envelope, Event, subjects};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::nats;

/// Durable consumer of the tokens projection.
pub const CONSUMER: &str = "tokens-kv";

/// A webhook token, by its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEntry {
    pub tenant: String,
    pub token_id: Uuid,
    /// When it was issued (the event's time).
    pub issued_at: DateTime<Utc>,
    /// When it stops (or stopped) working; the earliest revocation recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
    /// Stream sequence of the event that last set this entry.
    pub seq: u64,
}

impl TokenEntry {
    /// Revoked with effect at or before `now`.
    pub fn revoked(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_some_and(|at| at <= now)
    }
}

/// The hash of a token id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenIdEntry {
    pub token_hash: String,
    pub tenant: String,
    pub seq: u64,
}

/// A tenant's intake status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantEntry {
    pub suspended: bool,
    pub seq: u64,
}

/// The bucket's stream, as a key-value bucket is laid out (`KV_<bucket>` on `$KV.<bucket>.>`,
/// one value per key, rollups allowed, deletes denied, direct gets): created as a stream rather
/// than through `create_key_value`, whose account query nats-server 2.9 answers in a shape
/// async-nats 0.51 does not parse.
pub fn bucket_stream_config() -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: format!("KV_{}", subjects::TOKENS_BUCKET),
        description: Some(
            "Webhook token hashes to tenant and revocation, tenants to suspension; folded from \
             TENANTS by the tokens projection"
                .to_owned(),
        ),
        subjects: vec![format!("$KV.{}.>", subjects::TOKENS_BUCKET)],
        max_messages_per_subject: 1,
        max_bytes: -1,
        max_message_size: -1,
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    }
}

/// The bucket, created when missing (idempotent; several processes may race).
pub async fn bucket(js: &jetstream::Context) -> anyhow::Result<kv::Store> {
    if let Ok(store) = js.get_key_value(subjects::TOKENS_BUCKET).await {
        return Ok(store);
    }
    if let Err(err) = js.create_stream(bucket_stream_config()).await {
        tracing::debug!(error = %err, "creating the tokens bucket (another process may have)");
    }
    js.get_key_value(subjects::TOKENS_BUCKET)
        .await
        .context("opening the webhook tokens bucket")
}

/// Reads the last TENANTS sequence the bucket has applied (0 when none).
pub async fn checkpoint(store: &kv::Store) -> anyhow::Result<u64> {
    Ok(read::<u64>(store, subjects::TOKENS_CHECKPOINT_KEY)
        .await?
        .map(|(seq, _)| seq)
        .unwrap_or(0))
}

async fn read<T: DeserializeOwned>(
    store: &kv::Store,
    key: &str,
) -> anyhow::Result<Option<(T, u64)>> {
    let Some(entry) = store.entry(key).await? else {
        return Ok(None);
    };
    if entry.operation != kv::Operation::Put {
        return Ok(None);
    }
    let value = serde_json::from_slice(&entry.value)
        .with_context(|| format!("entry {key} of the tokens bucket is not what it should be"))?;
    Ok(Some((value, entry.revision)))
}

/// Sets `key` to what `change` makes of its current value, unless the event at `seq` (or a
/// later one) already set it. A compare-and-set on the revision read, retried when another
/// writer got in between.
async fn write<T, F>(store: &kv::Store, key: &str, change: F) -> anyhow::Result<()>
where
    T: Serialize + DeserializeOwned,
    F: Fn(Option<T>) -> Option<T>,
{
    for _ in 0..20 {
        let current = read::<T>(store, key).await?;
        let revision = current.as_ref().map(|(_, r)| *r);
        let Some(value) = change(current.map(|(v, _)| v)) else {
            return Ok(());
        };
        let bytes: bytes::Bytes = serde_json::to_vec(&value)?.into();
        let written = match revision {
            Some(revision) => store
                .update(key, bytes, revision)
                .await
                .map(|_| ())
                .map_err(|e| (e.kind() == kv::UpdateErrorKind::WrongLastRevision, e.into())),
            None => store.create(key, bytes).await.map(|_| ()).map_err(|e| {
                (
                    e.kind() == kv::CreateErrorKind::AlreadyExists,
                    anyhow::Error::from(e),
                )
            }),
        };
        match written {
            Ok(()) => return Ok(()),
            Err((true, _)) => continue,
            Err((false, err)) => return Err(err.context(format!("writing {key}"))),
        }
    }
    anyhow::bail!("writing {key}: too many concurrent writers")
}

/// Applies one TENANTS event, recorded at stream sequence `seq`, to the bucket. Events that
/// concern neither tokens nor suspension change nothing.
pub async fn apply(store: &kv::Store, seq: u64, envelope: &Envelope) -> anyhow::Result<()> {
    let tenant = envelope.tenant.clone();
    let at = envelope.occurred_at;
    let event = match envelope.decode() {
        Ok(event) => event,
        Err(err) => {
            tracing::warn!(seq, error = %err, "tokens projection: event not understood, skipped");
            return Ok(());
        }
    };
    match event {
        Event::WebhookTokenIssued(issued) => {
            let id_entry = TokenIdEntry {
                token_hash: issued.token_hash.clone(),
                tenant: tenant.clone(),
                seq,
            };
            write(
                store,
                &subjects::token_id_key(issued.token_id),
                |current: Option<TokenIdEntry>| {
                    newer(current.as_ref().map(|c| c.seq), seq).then(|| id_entry.clone())
                },
            )
            .await?;
            let entry = TokenEntry {
                tenant,
                token_id: issued.token_id,
                issued_at: at,
                revoked_at: None,
                seq,
            };
            write(
                store,
                &subjects::token_key(&issued.token_hash),
                |current: Option<TokenEntry>| {
                    newer(current.as_ref().map(|c| c.seq), seq).then(|| entry.clone())
                },
            )
            .await?;
        }
        Event::WebhookTokenRevoked(revoked) => {
            let Some((id, _)) =
                read::<TokenIdEntry>(store, &subjects::token_id_key(revoked.token_id)).await?
            else {
                return Ok(());
            };
            if id.tenant != tenant {
                return Ok(());
            }
            let revoked_at = revoked.effective_at.unwrap_or(at);
            write(
                store,
                &subjects::token_key(&id.token_hash),
                |current: Option<TokenEntry>| {
                    let mut entry = current?;
                    if entry.seq >= seq || entry.tenant != tenant {
                        return None;
                    }
                    entry.revoked_at =
                        Some(entry.revoked_at.map_or(revoked_at, |r| r.min(revoked_at)));
                    entry.seq = seq;
                    Some(entry)
                },
            )
            .await?;
        }
        Event::TenantSuspended(_) | Event::TenantResumed(_) => {
            let suspended = matches!(event, Event::TenantSuspended(_));
            write(
                store,
                &subjects::tenant_status_key(&tenant),
                |current: Option<TenantEntry>| {
                    newer(current.as_ref().map(|c| c.seq), seq)
                        .then_some(TenantEntry { suspended, seq })
                },
            )
            .await?;
        }
        _ => {}
    }
    Ok(())
}

fn newer(current: Option<u64>, seq: u64) -> bool {
    current.is_none_or(|c| c < seq)
}

/// Moves the checkpoint to `seq` (never back).
async fn advance(store: &kv::Store, seq: u64) -> anyhow::Result<()> {
    write(
        store,
        subjects::TOKENS_CHECKPOINT_KEY,
        |current: Option<u64>| newer(current, seq).then_some(seq),
    )
    .await
}

/// Keeps the tokens projection running until `shutdown`, starting again after a failure (NATS
/// away, the bucket deleted for a rebuild). Any number of processes may run it.
pub async fn serve(js: jetstream::Context, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match project(&js, &shutdown).await {
            Ok(()) => return Ok(()),
            Err(err) => tracing::warn!(
                error = format!("{err:#}"),
                "tokens projection failed, starting again"
            ),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn project(js: &jetstream::Context, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let store = bucket(js).await?;
    let mut last = checkpoint(&store).await?;
    let stream = js.get_stream(subjects::TENANTS).await?;
    let (_, mut config) =
        nats::consumer_definition(CONSUMER).context("no definition for the tokens consumer")?;
    let consumer = match stream.get_consumer::<pull::Config>(CONSUMER).await {
        Ok(mut existing) => {
            let acked = existing.info().await?.ack_floor.stream_sequence;
            if acked > last {
                // Acked beyond what the bucket holds: the bucket was deleted (a rebuild).
                tracing::info!(
                    checkpoint = last,
                    acked,
                    "repositioning the tokens consumer"
                );
                stream.delete_consumer(CONSUMER).await?;
                None
            } else {
                Some(existing)
            }
        }
        Err(_) => None,
    };
    let consumer = match consumer {
        Some(consumer) => consumer,
        None => {
            if last > 0 {
                config.deliver_policy = DeliverPolicy::ByStartSequence {
                    start_sequence: last + 1,
                };
            }
            stream.create_consumer(config).await?
        }
    };
    let mut messages = consumer
        .stream()
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .context("subscribing to the tokens consumer")?;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            next = messages.next() => next,
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(err)) if err.kind() == pull::MessagesErrorKind::MissingHeartbeat => continue,
            Some(Err(err)) => return Err(err).context("reading the tokens consumer"),
            None => anyhow::bail!("the tokens consumer's message stream ended"),
        };
        let seq = message
            .info()
            .map_err(|e| anyhow::anyhow!("message without JetStream metadata: {e}"))?
            .stream_sequence;
        if seq > last {
            // Another process may have applied some (they share the consumer): the bucket's
            // checkpoint says how far.
            last = last.max(checkpoint(&store).await?);
        }
        if seq > last {
            anyhow::ensure!(
                seq == last + 1,
                "tokens projection: expected sequence {} but received {seq}",
                last + 1
            );
            match Envelope::from_slice(&message.payload) {
                Ok(envelope) => apply(&store, seq, &envelope).await?,
                Err(err) => {
                    tracing::warn!(seq, error = %err, "tokens projection: not an envelope, skipped")
                }
            }
            advance(&store, seq).await?;
            last = seq;
        }
        message
            .ack()
            .await
            .map_err(|e| anyhow::anyhow!("acking sequence {seq}: {e}"))?;
    }
}
