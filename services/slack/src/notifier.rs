//! One Slack thread per incident, kept current. The notifier follows INCIDENTS: when an incident
//! opens it posts the incident's summary to the tenant's channel (`chat.postMessage`) and
//! records the message on the incident's own subject (`SlackMessagePosted`); later events are
//! told in the thread, coalesced (a storm of signals joining is one reply), and the summary is
//! replaced in place (`chat.update`). Quiet mode keeps only the summary.
//!
//! Nothing is posted twice on a redelivery, a restart or a replay: before acting on an incident
//! it has not seen, the notifier waits until the incidents projection holds every event of the
//! incident's subject (its last sequence), then reads what was posted from `incident_events`;
//! events at or before the recorded `through_seq` are not told again. The one window left is a
//! crash between Slack's answer and the append of its record (milliseconds), where a post can
//! repeat; Slack's `chat.postMessage` has no idempotency key to close it.
//!
//! One process notifies at a time (a Postgres advisory-lock lease, as a projection). Each
//! tenant has its own queue and task, so a tenant whose token is broken, or who is waiting out a
//! 429, never holds up another; its errors are counted, recorded as its last Slack error (shown
//! in `GET /v1/settings/integrations`) and the events are acknowledged: nothing is retried
//! forever.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::jetstream;
use copilot_commands::slack_link::tenant_slack;
use copilot_events::{
    Envelope, Event, Headers, SLACK_NOTIFIER, SlackMessagePosted, TenantSlack, derived_id, subjects,
};
use copilot_runtime::{Context, nats};
use copilot_store::{SlackThread, checkpoints};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    blocks,
    webapi::{SlackError, WebApi},
};

/// The lease and the durable consumer's name.
const NAME: &str = "slack-notifier";
/// How long the notifier waits for more of a burst before telling it.
const COALESCE: Duration = Duration::from_millis(250);
/// The most events told in one round for a tenant.
const ROUND_MAX: usize = 500;
/// How long a tenant's Slack settings are trusted before they are read again.
const SETTINGS_TTL: Duration = Duration::from_secs(2);
/// When a round that failed for a passing reason is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(10);
/// How long the notifier waits for the incidents projection to hold an incident's events.
const PROJECTION_WAIT: Duration = Duration::from_secs(20);

/// Runs the notifier until `shutdown`: waits for the lease, then follows INCIDENTS; restarts
/// after a failure.
pub async fn serve(ctx: Context, shutdown: CancellationToken) -> anyhow::Result<()> {
    let api = Arc::new(WebApi::new(&ctx.settings.slack.slack_api_url));
    loop {
        let outcome = match ctx.store.try_lease(NAME).await {
            Ok(Some(_lease)) => follow(&ctx, &api, &shutdown).await,
            Ok(None) => Ok(()),
            Err(error) => Err(error.into()),
        };
        if let Err(error) = outcome {
            tracing::warn!(
                error = format!("{error:#}"),
                "slack notifier failed; restarting"
            );
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// One delivered incident event.
struct Delivered {
    seq: u64,
    envelope: Envelope,
    event: Event,
    incident: Uuid,
    message: jetstream::Message,
}

/// A tenant's Slack settings, as last read.
struct Cached {
    slack: Option<TenantSlack>,
    read: Instant,
}

async fn follow(
    ctx: &Context,
    api: &Arc<WebApi>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut messages =
        nats::shared_messages(&ctx.js, subjects::INCIDENTS, nats::CONSUMER_SLACK_NOTIFIER).await?;
    let mut settings: HashMap<String, Cached> = HashMap::new();
    let mut tenants: HashMap<String, mpsc::UnboundedSender<Delivered>> = HashMap::new();
    let stop = shutdown.child_token();
    let _stop_tenants = stop.clone().drop_guard();
    loop {
        let Some(message) = nats::next_shared(&mut messages, shutdown).await? else {
            return Ok(());
        };
        let seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        let decoded = Envelope::from_slice(&message.payload)
            .ok()
            .and_then(|envelope| {
                let event = envelope.decode().ok()?;
                let (incident, _) = event.incident()?;
                (!matches!(event, Event::SlackMessagePosted(_)))
                    .then_some((envelope, event, incident))
            });
        let Some((envelope, event, incident)) = decoded else {
            ack(&message).await;
            continue;
        };
        let tenant = envelope.tenant.clone();
        let fresh = settings
            .get(&tenant)
            .is_some_and(|c| c.read.elapsed() < SETTINGS_TTL);
        if !fresh {
            let slack = tenant_slack(ctx, &tenant).await?;
            settings.insert(
                tenant.clone(),
                Cached {
                    slack,
                    read: Instant::now(),
                },
            );
        }
        if !settings[&tenant]
            .slack
            .as_ref()
            .is_some_and(TenantSlack::notifies)
        {
            ack(&message).await;
            continue;
        }
        let delivered = Delivered {
            seq,
            envelope,
            event,
            incident,
            message,
        };
        let queue = tenants.entry(tenant.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(tenant_worker(
                ctx.clone(),
                api.clone(),
                tenant.clone(),
                rx,
                stop.clone(),
            ));
            tx
        });
        if let Err(returned) = queue.send(delivered) {
            // The tenant's task ended (it only does on shutdown): let the event come again.
            tenants.remove(&tenant);
            let _ = returned
                .0
                .message
                .ack_with(jetstream::AckKind::Nak(None))
                .await;
        }
    }
}

async fn ack(message: &jetstream::Message) {
    if let Err(error) = message.ack().await {
        tracing::debug!(%error, "slack notifier ack failed; the event will come again");
    }
}

/// Tells one tenant's events in rounds: what arrived within a short pause of the first, grouped
/// by incident, then acknowledged.
async fn tenant_worker(
    ctx: Context,
    api: Arc<WebApi>,
    tenant: String,
    mut queue: mpsc::UnboundedReceiver<Delivered>,
    stop: CancellationToken,
) {
    let mut threads: HashMap<Uuid, SlackThread> = HashMap::new();
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return hand_back(Vec::new(), queue).await,
            d = queue.recv() => match d { Some(d) => d, None => return },
        };
        let mut round = vec![first];
        let until = tokio::time::Instant::now() + COALESCE;
        while round.len() < ROUND_MAX {
            match tokio::time::timeout_at(until, queue.recv()).await {
                Ok(Some(d)) => round.push(d),
                Ok(None) | Err(_) => break,
            }
        }
        let told = tokio::select! {
            _ = stop.cancelled() => return hand_back(round, queue).await,
            told = tell(&ctx, &api, &tenant, &round, &mut threads) => told,
        };
        let again = match told {
            Ok(()) => {
                if let Err(error) = ctx.store.record_slack_ok(&tenant).await {
                    tracing::warn!(tenant, %error, "recording slack's status failed");
                }
                false
            }
            Err(failure) => {
                tracing::warn!(
                    tenant,
                    error = failure.why,
                    again = failure.again,
                    "slack notification failed"
                );
                if let Err(e) = ctx.store.record_slack_error(&tenant, &failure.why).await {
                    tracing::warn!(tenant, error = %e, "recording slack's status failed");
                }
                failure.again
            }
        };
        for delivered in &round {
            if again {
                let nak = jetstream::AckKind::Nak(Some(RETRY_AFTER));
                if let Err(error) = delivered.message.ack_with(nak).await {
                    tracing::debug!(%error, "slack notifier nak failed; the event will come again");
                }
            } else {
                ack(&delivered.message).await;
            }
        }
    }
}

/// On a stop (shutdown, or the notifier restarting after a failure), what was taken but not
/// told is handed back at once rather than after the consumer's ack wait.
async fn hand_back(round: Vec<Delivered>, mut queue: mpsc::UnboundedReceiver<Delivered>) {
    queue.close();
    let mut rest = round;
    while let Some(d) = queue.recv().await {
        rest.push(d);
    }
    for d in rest {
        let _ = d.message.ack_with(jetstream::AckKind::Nak(None)).await;
    }
}

/// Why a round could not be told, and whether to try it again.
struct Failure {
    why: String,
    /// Slack unreachable or rate limited, the projection behind, NATS or Postgres failing:
    /// the round comes again later. Otherwise (Slack refused: a bad token, a missing channel;
    /// no usable settings) it is given up, as trying again would fail the same way.
    again: bool,
}

impl Failure {
    fn again(why: impl Into<String>) -> Self {
        Self {
            why: why.into(),
            again: true,
        }
    }

    fn given_up(why: impl Into<String>) -> Self {
        Self {
            why: why.into(),
            again: false,
        }
    }

    fn slack(method: &str, error: SlackError) -> Self {
        let again = !matches!(error, SlackError::Api(_));
        Self {
            why: format!("{method}: {}", error.code()),
            again,
        }
    }
}

impl From<String> for Failure {
    fn from(why: String) -> Self {
        Self::again(why)
    }
}

/// Tells a round of a tenant's events in Slack. Stops at the first failure.
async fn tell(
    ctx: &Context,
    api: &WebApi,
    tenant: &str,
    round: &[Delivered],
    threads: &mut HashMap<Uuid, SlackThread>,
) -> Result<(), Failure> {
    // Settings may have changed since the event was routed: read them as they are now.
    let slack = tenant_slack(ctx, tenant)
        .await
        .map_err(|e| format!("reading the tenant's slack settings: {e:#}"))?
        .filter(TenantSlack::notifies)
        .ok_or_else(|| Failure::given_up("slack notifications are not set up"))?;
    let token = bot_token(ctx, tenant, &slack)
        .await
        .map_err(Failure::given_up)?;
    let channel = slack.channel.as_deref().unwrap_or_default();
    let mut order: Vec<Uuid> = Vec::new();
    for d in round {
        if !order.contains(&d.incident) {
            order.push(d.incident);
        }
    }
    for incident in order {
        let events: Vec<&Delivered> = round.iter().filter(|d| d.incident == incident).collect();
        let through = events.iter().map(|d| d.seq).max().unwrap_or(0);
        let thread = match threads.get(&incident) {
            Some(thread) => thread.clone(),
            None => posted(ctx, tenant, incident).await?,
        };
        caught_up(ctx, through).await?;
        let new: Vec<&Delivered> = events
            .into_iter()
            .filter(|d| d.seq > thread.through_seq)
            .collect();
        if new.is_empty() {
            threads.insert(incident, thread);
            continue;
        }
        let Some(message) = crate::incident_message(ctx, tenant, incident)
            .await
            .map_err(|e| format!("reading the incident: {e}"))?
        else {
            tracing::warn!(tenant, %incident, "an incident to tell in slack is not in the read model");
            continue;
        };
        let thread = match &thread.summary {
            None if new
                .iter()
                .any(|d| matches!(d.event, Event::IncidentOpened(_))) =>
            {
                let (channel, ts) = api
                    .post_message(&token, channel, None, &message)
                    .await
                    .map_err(|e| Failure::slack("chat.postMessage", e))?;
                let opened = new[0].envelope.occurred_at;
                record(ctx, tenant, incident, &channel, &ts, None, through, opened).await?;
                SlackThread {
                    summary: Some((channel, ts)),
                    through_seq: through,
                }
            }
            // Opened before Slack was set up: `/copilot incident` shows it on request.
            None => thread,
            Some((channel, ts)) => {
                let events: Vec<Event> = new.iter().map(|d| d.event.clone()).collect();
                let mut through_seq = thread.through_seq;
                if !slack.quiet
                    && let Some(text) = blocks::changes(&events)
                {
                    let (_, reply_ts) = api
                        .post_message(&token, channel, Some(ts), &blocks::reply(&text))
                        .await
                        .map_err(|e| Failure::slack("chat.postMessage", e))?;
                    let at = new[new.len() - 1].envelope.occurred_at;
                    record(
                        ctx,
                        tenant,
                        incident,
                        channel,
                        &reply_ts,
                        Some(ts),
                        through,
                        at,
                    )
                    .await?;
                    through_seq = through;
                }
                api.update(&token, channel, ts, &message)
                    .await
                    .map_err(|e| Failure::slack("chat.update", e))?;
                SlackThread {
                    summary: thread.summary.clone(),
                    through_seq,
                }
            }
        };
        threads.insert(incident, thread);
    }
    Ok(())
}

/// What was posted about an incident, once the incidents projection holds all its events.
async fn posted(ctx: &Context, tenant: &str, incident: Uuid) -> Result<SlackThread, String> {
    let last = ctx
        .js
        .get_stream(subjects::INCIDENTS)
        .await
        .map_err(|e| format!("reading the incident's subject: {e}"))?
        .get_last_raw_message_by_subject(&subjects::incident(tenant, incident))
        .await
        .map_err(|e| format!("reading the incident's subject: {e}"))?
        .sequence;
    caught_up(ctx, last).await?;
    ctx.store
        .slack_thread(tenant, incident)
        .await
        .map_err(|e| format!("reading what was posted: {e}"))
}

/// Waits until the incidents projection has applied `seq`.
async fn caught_up(ctx: &Context, seq: u64) -> Result<(), String> {
    let done = ctx
        .store
        .wait_for_checkpoint(checkpoints::INCIDENTS, seq, PROJECTION_WAIT, |_| {})
        .await
        .map_err(|e| format!("reading the incidents projection's checkpoint: {e}"))?;
    done.then_some(())
        .ok_or_else(|| "the incidents projection is behind; will tell it later".into())
}

/// Records a posted message on the incident's subject, with a deterministic id so a repeat is
/// the same event.
#[allow(clippy::too_many_arguments)]
async fn record(
    ctx: &Context,
    tenant: &str,
    incident: Uuid,
    channel: &str,
    ts: &str,
    thread_ts: Option<&str>,
    through_seq: u64,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), String> {
    let id = match thread_ts {
        None => derived_id(at, &["slack-summary", tenant, &incident.to_string()]),
        Some(_) => derived_id(
            at,
            &[
                "slack-reply",
                tenant,
                &incident.to_string(),
                &through_seq.to_string(),
            ],
        ),
    };
    let event = SlackMessagePosted {
        incident_id: incident,
        channel: channel.to_owned(),
        ts: ts.to_owned(),
        thread_ts: thread_ts.map(str::to_owned),
        through_seq,
    };
    let headers = Headers {
        actor: Some(SLACK_NOTIFIER.to_owned()),
        ..Headers::default()
    };
    let envelope = Envelope::with_id(id, tenant, &event, chrono::Utc::now(), headers);
    copilot_runtime::append::append_event(
        &ctx.js,
        subjects::incident(tenant, incident),
        &envelope,
        None,
    )
    .await
    .map(|_| ())
    .map_err(|e| format!("recording the slack message: {e}"))
}

/// The tenant's bot token, from its secret (sent only to the operator's Slack API, and only if
/// the secret is bound to no other origin) or an operator-allowed variable.
async fn bot_token(ctx: &Context, tenant: &str, slack: &TenantSlack) -> Result<String, String> {
    match (&slack.bot_token_secret, &slack.bot_token_env) {
        (Some(name), _) => {
            let secret = copilot_runtime::secrets::open_tenant_secret(ctx, tenant, name).await?;
            let api = copilot_runtime::egress::origin_of(&ctx.settings.slack.slack_api_url);
            match &secret.origin {
                Some(bound) if api.as_deref() != Some(bound.as_str()) => Err(format!(
                    "secret {name:?} may only be sent to {bound}, not to Slack's API"
                )),
                _ => Ok(secret.value),
            }
        }
        (None, Some(name)) => {
            copilot_runtime::secrets::tenant_env(&ctx.settings, tenant, "slack.bot_token_env", name)
        }
        (None, None) => Err("slack.bot_token_secret names no secret".into()),
    }
    .map_err(|e| format!("bot token: {e}"))
}
