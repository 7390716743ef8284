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
//! 429, never holds up another; its backlog is bounded ([`BACKLOG_MAX`]: past it, events are
//! acknowledged untold, and the summaries catch up with the incidents' next events), so it cannot
//! fill the shared consumer's pending limit either. Slack's refusals are counted, recorded as the
//! tenant's last Slack error (shown in `GET /v1/settings/integrations`) and the incident's events
//! acknowledged; a passing failure (Slack unreachable, the projection behind) hands the round back
//! for later, up to the consumer's delivery limit: nothing is retried forever.

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
/// The most events a tenant may have waiting to be told.
pub const BACKLOG_MAX: usize = 2_000;
/// On a stop, how long a round being told may finish (so a post is recorded, not cut off).
const STOP_GRACE: Duration = Duration::from_secs(5);
/// What a tenant is shown when the copilot itself (not Slack) failed; the logs say what.
const INTERNAL: &str =
    "the copilot could not tell Slack just now (its operator's logs say why); it will try again";

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

/// A tenant's queue and how many events wait in it.
struct TenantQueue {
    tx: mpsc::UnboundedSender<Delivered>,
    waiting: Arc<std::sync::atomic::AtomicUsize>,
}

async fn follow(
    ctx: &Context,
    api: &Arc<WebApi>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let stop = shutdown.child_token();
    let mut workers = tokio::task::JoinSet::new();
    let outcome = dispatch(ctx, api, shutdown, &stop, &mut workers).await;
    // Each tenant's task finishes (or hands back) what it holds before this returns.
    stop.cancel();
    let grace = STOP_GRACE + Duration::from_secs(5);
    if tokio::time::timeout(grace, async {
        while workers.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!("slack notifier tasks did not stop in time; their events come again later");
    }
    outcome
}

/// Routes each incident event to its tenant's queue (or acknowledges it: not an incident's
/// event, the notifier's own record, a tenant that does not notify, a backlog that is full).
async fn dispatch(
    ctx: &Context,
    api: &Arc<WebApi>,
    shutdown: &CancellationToken,
    stop: &CancellationToken,
    workers: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    let mut messages =
        nats::shared_messages(&ctx.js, subjects::INCIDENTS, nats::CONSUMER_SLACK_NOTIFIER).await?;
    let mut settings: HashMap<String, Cached> = HashMap::new();
    let mut tenants: HashMap<String, TenantQueue> = HashMap::new();
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
            match tenant_slack(ctx, &tenant).await {
                Ok(slack) => {
                    let read = Instant::now();
                    settings.insert(tenant.clone(), Cached { slack, read });
                }
                Err(error) => {
                    tracing::warn!(tenant, %error, "reading a tenant's slack settings failed");
                    nak_later(&message).await;
                    continue;
                }
            }
        }
        if !settings[&tenant]
            .slack
            .as_ref()
            .is_some_and(TenantSlack::notifies)
        {
            ack(&message).await;
            continue;
        }
        let queue = tenants.entry(tenant.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let waiting = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            workers.spawn(tenant_worker(
                ctx.clone(),
                api.clone(),
                tenant.clone(),
                rx,
                waiting.clone(),
                stop.clone(),
            ));
            TenantQueue { tx, waiting }
        });
        if queue.waiting.load(Ordering::Relaxed) >= BACKLOG_MAX {
            tracing::warn!(
                tenant,
                seq,
                "slack backlog full; an incident event is not told"
            );
            ack(&message).await;
            continue;
        }
        queue.waiting.fetch_add(1, Ordering::Relaxed);
        let delivered = Delivered {
            seq,
            envelope,
            event,
            incident,
            message,
        };
        if let Err(returned) = queue.tx.send(delivered) {
            // The tenant's task ended (it only does on a stop): let the event come again.
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

/// Hands an event back to come again after [`RETRY_AFTER`].
async fn nak_later(message: &jetstream::Message) {
    let nak = jetstream::AckKind::Nak(Some(RETRY_AFTER));
    if let Err(error) = message.ack_with(nak).await {
        tracing::debug!(%error, "slack notifier nak failed; the event will come again");
    }
}

/// Tells one tenant's events in rounds: what arrived within a short pause of the first, grouped
/// by incident, then acknowledged.
async fn tenant_worker(
    ctx: Context,
    api: Arc<WebApi>,
    tenant: String,
    mut queue: mpsc::UnboundedReceiver<Delivered>,
    waiting: Arc<std::sync::atomic::AtomicUsize>,
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
        waiting.fetch_sub(round.len(), std::sync::atomic::Ordering::Relaxed);
        let outcome = {
            let telling = tell(&ctx, &api, &tenant, &round, &mut threads);
            tokio::pin!(telling);
            tokio::select! {
                outcome = &mut telling => Some(outcome),
                // A stop lets the round finish briefly, so a post is not cut off before its
                // record; past that it is handed back.
                _ = stop.cancelled() => tokio::time::timeout(STOP_GRACE, &mut telling).await.ok(),
            }
        };
        let Some(outcome) = outcome else {
            return hand_back(round, queue).await;
        };
        let status = match &outcome.refused {
            None => ctx.store.record_slack_ok(&tenant).await,
            Some(why) => ctx.store.record_slack_error(&tenant, why).await,
        };
        if let Err(error) = status {
            tracing::warn!(tenant, %error, "recording slack's status failed");
        }
        for delivered in &round {
            if outcome.again.contains(&delivered.incident) {
                nak_later(&delivered.message).await;
            } else {
                ack(&delivered.message).await;
            }
        }
        if stop.is_cancelled() {
            return hand_back(Vec::new(), queue).await;
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

/// Why an incident's events could not be told, and whether to try them again.
struct Failure {
    /// For the logs.
    why: String,
    /// For the tenant (its last Slack error): Slack's own error, or its settings' problem, or
    /// [`INTERNAL`] when the copilot itself failed.
    shown: String,
    /// Slack unreachable or rate limited, the projection behind, NATS or Postgres failing:
    /// the events come again later. Otherwise (Slack refused: a bad token, a missing channel;
    /// no usable settings) they are given up, as trying again would fail the same way.
    again: bool,
}

impl Failure {
    fn internal(why: impl Into<String>) -> Self {
        Self {
            why: why.into(),
            shown: INTERNAL.into(),
            again: true,
        }
    }

    fn settings(why: impl Into<String>) -> Self {
        let why = why.into();
        Self {
            shown: why.clone(),
            why,
            again: false,
        }
    }

    fn slack(method: &str, error: SlackError) -> Self {
        let again = !matches!(error, SlackError::Api(_));
        Self {
            why: format!("{method}: {error}"),
            shown: format!("{method}: {}", error.code()),
            again,
        }
    }
}

impl From<String> for Failure {
    fn from(why: String) -> Self {
        Self::internal(why)
    }
}

/// What telling a round came to.
#[derive(Default)]
struct Outcome {
    /// The incidents whose events come again later.
    again: Vec<Uuid>,
    /// The first failure the tenant is shown, if any.
    refused: Option<String>,
}

impl Outcome {
    fn failed(&mut self, tenant: &str, incident: Option<Uuid>, failure: Failure) {
        tracing::warn!(
            tenant,
            incident = ?incident,
            error = failure.why,
            again = failure.again,
            "slack notification failed"
        );
        if failure.again {
            self.again.extend(incident);
        }
        self.refused.get_or_insert(failure.shown);
    }
}

/// Tells a round of a tenant's events in Slack, incident by incident: one incident's failure
/// does not keep the others untold, but a passing failure (Slack unreachable, rate limited)
/// hands the rest of the round back with it.
async fn tell(
    ctx: &Context,
    api: &WebApi,
    tenant: &str,
    round: &[Delivered],
    threads: &mut HashMap<Uuid, SlackThread>,
) -> Outcome {
    let mut outcome = Outcome::default();
    let mut order: Vec<Uuid> = Vec::new();
    for d in round {
        if !order.contains(&d.incident) {
            order.push(d.incident);
        }
    }
    // Settings may have changed since the events were routed: read them as they are now.
    let slack = match tenant_slack(ctx, tenant).await {
        Ok(Some(slack)) if slack.notifies() => slack,
        Ok(_) => {
            let failure = Failure::settings("slack notifications are not set up");
            outcome.failed(tenant, None, failure);
            return outcome;
        }
        Err(error) => {
            let failure =
                Failure::internal(format!("reading the tenant's slack settings: {error}"));
            outcome.failed(tenant, None, failure);
            outcome.again = order;
            return outcome;
        }
    };
    let token = match bot_token(ctx, tenant, &slack).await {
        Ok(token) => token,
        Err(why) => {
            outcome.failed(tenant, None, Failure::settings(why));
            return outcome;
        }
    };
    for (i, incident) in order.iter().enumerate() {
        let events: Vec<&Delivered> = round.iter().filter(|d| d.incident == *incident).collect();
        let told = tell_incident(
            ctx, api, tenant, &slack, &token, *incident, &events, threads,
        );
        if let Err(failure) = told.await {
            let again = failure.again;
            outcome.failed(tenant, Some(*incident), failure);
            if again {
                outcome.again.extend(&order[i + 1..]);
                break;
            }
        }
    }
    outcome
}

/// Tells one incident's events of a round: its summary posted when it opens, else a reply in
/// its thread (unless quiet) and the summary updated in place. What is posted is remembered in
/// `threads` as soon as it is recorded, so a failure after it never posts it again.
#[allow(clippy::too_many_arguments)]
async fn tell_incident(
    ctx: &Context,
    api: &WebApi,
    tenant: &str,
    slack: &TenantSlack,
    token: &str,
    incident: Uuid,
    events: &[&Delivered],
    threads: &mut HashMap<Uuid, SlackThread>,
) -> Result<(), Failure> {
    let channel = slack.channel.as_deref().unwrap_or_default();
    // Posts to one channel are paced per tenant and channel as configured.
    let pace = format!("{tenant}/{channel}");
    let through = events.iter().map(|d| d.seq).max().unwrap_or(0);
    let thread = match threads.get(&incident) {
        Some(thread) => thread.clone(),
        None => posted(ctx, tenant, incident).await?,
    };
    caught_up(ctx, through).await?;
    // A redelivery of an event still queued is the same event, told once.
    let mut seen = std::collections::HashSet::new();
    let new: Vec<&Delivered> = events
        .iter()
        .copied()
        .filter(|d| d.seq > thread.through_seq && seen.insert(d.seq))
        .collect();
    if new.is_empty() {
        threads.insert(incident, thread);
        return Ok(());
    }
    let Some(message) = crate::incident_message(ctx, tenant, incident)
        .await
        .map_err(|e| format!("reading the incident: {e}"))?
    else {
        tracing::warn!(tenant, %incident, "an incident to tell in slack is not in the read model");
        return Ok(());
    };
    match &thread.summary {
        None if new
            .iter()
            .any(|d| matches!(d.event, Event::IncidentOpened(_))) =>
        {
            let (channel, ts) = api
                .post_message(token, &pace, channel, None, &message)
                .await
                .map_err(|e| Failure::slack("chat.postMessage", e))?;
            let opened = new[0].envelope.occurred_at;
            let recorded =
                record(ctx, tenant, incident, &channel, &ts, None, through, opened).await;
            threads.insert(
                incident,
                SlackThread {
                    summary: Some((channel, ts)),
                    through_seq: through,
                },
            );
            recorded?;
        }
        // Opened before Slack was set up: `/copilot incident` shows it on request.
        None => {
            threads.insert(incident, thread);
        }
        Some((channel, ts)) => {
            let events: Vec<Event> = new.iter().map(|d| d.event.clone()).collect();
            if !slack.quiet
                && let Some(text) = blocks::changes(&events)
            {
                let (_, reply_ts) = api
                    .post_message(token, &pace, channel, Some(ts), &blocks::reply(&text))
                    .await
                    .map_err(|e| Failure::slack("chat.postMessage", e))?;
                let at = new[new.len() - 1].envelope.occurred_at;
                let recorded = record(
                    ctx,
                    tenant,
                    incident,
                    channel,
                    &reply_ts,
                    Some(ts),
                    through,
                    at,
                )
                .await;
                threads.insert(
                    incident,
                    SlackThread {
                        summary: thread.summary.clone(),
                        through_seq: through,
                    },
                );
                recorded?;
            } else {
                threads.insert(incident, thread.clone());
            }
            api.update(token, channel, ts, &message)
                .await
                .map_err(|e| Failure::slack("chat.update", e))?;
        }
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
