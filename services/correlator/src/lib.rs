//! The correlator: turns signals into incidents, every decision an event.
//!
//! It reads SIGNALS in order and, for each new alert instance, decides: open an incident, attach
//! to its key's incident, reopen a resolved one, or wait for the key's threshold. It follows the
//! lifecycle events people append (a hand resolve, a reopen, a review), so its next decision for
//! that key is a reopen or a new incident.
//!
//! The deciding itself is pure and lives in `copilot-commands` (`correlation` for signals,
//! `incident` for the aggregate and its lifecycle); this crate is the I/O around it. For a batch
//! of signals it loads the states the batch touches from its `correlator_*` tables, decides every
//! signal in memory (each on the state the earlier ones left), appends the decisions, then saves
//! what changed together with its checkpoint in one transaction. Every event it appends has a
//! deterministic id (also its `Nats-Msg-Id`), so a crash between append and commit re-decides
//! the same events and JetStream drops the copies, and the projector skips a copy that outlived
//! the duplicate window.

mod state;

use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};

use anyhow::Context as _;
use async_nats::jetstream;
use chrono::Utc;
use copilot_commands::{correlation, incident::IncidentEvent};
use copilot_events::{CorrelationRules, Envelope, Event, SignalReceived, subjects};
use copilot_runtime::{
    Context, Settings,
    consume::{self, Batches},
    metrics::Metrics,
    nats,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use copilot_commands::correlation::{Decision, correlation_key};

use copilot_store::checkpoints::{
    CORRELATOR_LIFECYCLE as LIFECYCLE_CHECKPOINT, CORRELATOR_SIGNALS as SIGNALS_CHECKPOINT,
};

/// Runs the correlator alone until `shutdown`, with health and metrics on `settings.http.listen`.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let ctx = Context::connect(settings, "correlator").await?;
    copilot_runtime::http::with_health(ctx.clone(), shutdown.clone(), serve(ctx, shutdown)).await
}

/// Runs the correlator's three loops until `shutdown`: signal decisions, lifecycle following and
/// the resolve timer.
pub async fn serve(ctx: Context, shutdown: CancellationToken) -> anyhow::Result<()> {
    let signals = consume::supervise(&ctx, SIGNALS_CHECKPOINT, &shutdown, || {
        follow_signals(&ctx, &shutdown)
    });
    let lifecycle = consume::supervise(&ctx, LIFECYCLE_CHECKPOINT, &shutdown, || {
        follow_lifecycle(&ctx, &shutdown)
    });
    let timer = resolve_timer(&ctx, &shutdown);
    tokio::try_join!(signals, lifecycle, timer)?;
    Ok(())
}

/// A tenant's rules, re-read at most once a second.
struct RulesCache {
    rules: HashMap<String, (tokio::time::Instant, CorrelationRules)>,
}

impl RulesCache {
    fn new() -> Self {
        Self {
            rules: HashMap::new(),
        }
    }

    async fn get(&mut self, ctx: &Context, tenant: &str) -> anyhow::Result<CorrelationRules> {
        if let Some((at, rules)) = self.rules.get(tenant)
            && at.elapsed() < Duration::from_secs(1)
        {
            return Ok(rules.clone());
        }
        let stored = ctx
            .store
            .tenant_setting(
                &mut ctx.store.begin().await?,
                copilot_store::TenantSetting::CorrelationRules,
                tenant,
            )
            .await?;
        let rules = match stored {
            Some(json) => serde_json::from_value(json).unwrap_or_else(|err| {
                tracing::warn!(tenant, error = %err, "stored correlation rules unreadable; using the defaults");
                CorrelationRules::default()
            }),
            None => CorrelationRules::default(),
        };
        self.rules.insert(
            tenant.to_owned(),
            (tokio::time::Instant::now(), rules.clone()),
        );
        Ok(rules)
    }
}

async fn follow_signals(ctx: &Context, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let (consumer, mut checkpoint) = consume::position(
        ctx,
        subjects::SIGNALS,
        nats::CONSUMER_CORRELATOR_SIGNALS,
        SIGNALS_CHECKPOINT,
    )
    .await?;
    let mut batches = Batches::new(&consumer, ctx.settings.projector.batch).await?;
    let mut rules = RulesCache::new();
    while let Some(batch) = batches.next(shutdown).await? {
        checkpoint = decide_batch(ctx, &mut rules, batch, checkpoint).await?;
    }
    Ok(())
}

/// Decides one batch of signals: the states it touches loaded (incidents locked) in the
/// batch's transaction, every signal decided in memory, the decisions appended (and
/// acknowledged by JetStream), then the changed states saved and the transaction committed with
/// the checkpoint.
async fn decide_batch(
    ctx: &Context,
    rules: &mut RulesCache,
    batch: Vec<jetstream::Message>,
    from: u64,
) -> anyhow::Result<u64> {
    let store = &ctx.store;
    let mut tx = store.begin_batch().await?;
    let checkpoint = store.checkpoint(&mut tx, SIGNALS_CHECKPOINT).await?;
    anyhow::ensure!(
        checkpoint == from,
        "the correlator checkpoint is at {checkpoint}, expected {from}: another writer?"
    );
    let mut last = from;
    let mut signals: Vec<(u64, Envelope, SignalReceived)> = Vec::with_capacity(batch.len());
    for message in &batch {
        let Some(seq) = consume::next_sequence(message, &mut last)? else {
            continue;
        };
        let signal = Envelope::from_slice(&message.payload)
            .map_err(|e| e.to_string())
            .and_then(|env| match env.decode() {
                Ok(Event::SignalReceived(signal)) => Ok((env, signal)),
                Ok(other) => Err(format!("{} on the signals stream", other.name())),
                Err(e) => Err(e.to_string()),
            });
        let (envelope, signal) = match signal {
            Ok(decoded) => decoded,
            Err(reason) => {
                // The projector parks it as a dead letter; here it simply decides nothing.
                tracing::warn!(
                    seq,
                    reason,
                    "signal skipped: not a decodable SignalReceived"
                );
                continue;
            }
        };
        if consume::subject_tenant(&message.subject) != envelope.tenant {
            tracing::warn!(
                seq,
                "signal skipped: envelope tenant differs from its subject"
            );
            continue;
        }
        signals.push((seq, envelope, signal));
    }
    // One reading of each tenant's rules for the whole batch: the keys loaded are the keys
    // decided on.
    let mut tenant_rules: HashMap<String, CorrelationRules> = HashMap::new();
    for (_, envelope, _) in &signals {
        if !tenant_rules.contains_key(&envelope.tenant) {
            let found = rules.get(ctx, &envelope.tenant).await?;
            tenant_rules.insert(envelope.tenant.clone(), found);
        }
    }
    let wanted: Vec<state::Wanted> = signals
        .iter()
        .map(|(_, envelope, signal)| state::Wanted {
            tenant: envelope.tenant.clone(),
            signal_id: signal.instance_id(&envelope.tenant),
            key: correlation_key(&tenant_rules[&envelope.tenant], signal).0,
        })
        .collect();
    let mut decided = state::load(store, &mut tx, &wanted).await?;
    let mut decisions = Vec::new();
    for (seq, envelope, signal) in &signals {
        let span = tracing::info_span!("correlate", seq, tenant = %envelope.tenant);
        let cause = envelope
            .traceparent
            .as_deref()
            .and_then(copilot_events::TraceParent::parse);
        copilot_runtime::telemetry::set_parent(&span, cause.as_ref());
        let rules = &tenant_rules[&envelope.tenant];
        let mut these = span.in_scope(|| decided.decide(rules, envelope, signal));
        // With spans exported, the decisions continue the correlation span itself.
        if let Some(exported) = copilot_runtime::telemetry::exported_traceparent(&span) {
            for d in &mut these {
                d.envelope.traceparent = Some(exported.to_string());
            }
        }
        decisions.append(&mut these);
    }
    append(ctx, &decisions).await?;
    // Test-only (the `faults` feature): a crash between the append and the commit.
    #[cfg(feature = "faults")]
    if ctx.settings.faults.correlator_crash_after_append && !decisions.is_empty() {
        anyhow::bail!("fault injected: crashing after the append, before the commit");
    }
    state::save(store, &mut tx, &decided.changes()).await?;
    store
        .set_checkpoint(&mut tx, SIGNALS_CHECKPOINT, subjects::SIGNALS, last)
        .await?;
    tx.commit().await.context("committing the decisions")?;
    if let Some(message) = batch.last()
        && let Err(err) = message.ack().await
    {
        tracing::debug!(error = %err, "ack failed; the checkpoint covers it");
    }
    count(&decisions);
    if !decisions.is_empty() {
        let trace_ids: BTreeSet<String> = decisions
            .iter()
            .filter_map(|d| d.envelope.traceparent.as_deref())
            .filter_map(copilot_events::TraceParent::parse)
            .map(|t| t.trace_id_hex())
            .take(10)
            .collect();
        tracing::info!(
            signals = batch.len(),
            decisions = decisions.len(),
            checkpoint = last,
            trace_ids = ?trace_ids,
            "signals decided"
        );
    }
    Ok(last)
}

fn count(decisions: &[Decision]) {
    let metrics = Metrics::global();
    for d in decisions {
        metrics
            .correlator_decisions_total
            .with_label_values(&[d.envelope.event_type.as_str()])
            .inc();
    }
}

/// Appends decisions in order and waits until JetStream has every one. Ids are deterministic,
/// so a decision appended before a crash is dropped as a duplicate when re-decided.
async fn append(ctx: &Context, decisions: &[Decision]) -> anyhow::Result<()> {
    let messages = decisions
        .iter()
        .map(|d| {
            (
                d.subject.clone(),
                copilot_runtime::append::message(&d.envelope),
            )
        })
        .collect();
    copilot_runtime::append::append_all(&ctx.js, messages)
        .await
        .context("appending decisions")?;
    Ok(())
}

/// Follows the lifecycle events people append (resolves, reopens, transitions, reviews) and
/// folds them into the incidents it keeps, so its next decision for their keys starts from
/// where people left them. Its own decisions it folded as it made them.
async fn follow_lifecycle(ctx: &Context, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let (consumer, mut last) = consume::position(
        ctx,
        subjects::INCIDENTS,
        nats::CONSUMER_CORRELATOR_INCIDENTS,
        LIFECYCLE_CHECKPOINT,
    )
    .await?;
    let mut batches = Batches::new(&consumer, ctx.settings.projector.batch).await?;
    while let Some(batch) = batches.next(shutdown).await? {
        let store = &ctx.store;
        let mut tx = store.begin_batch().await?;
        let checkpoint = store.checkpoint(&mut tx, LIFECYCLE_CHECKPOINT).await?;
        anyhow::ensure!(
            checkpoint == last,
            "the lifecycle checkpoint moved: another writer?"
        );
        let mut changes: Vec<((String, Uuid), IncidentEvent)> = Vec::new();
        for message in &batch {
            if consume::next_sequence(message, &mut last)?.is_none() {
                continue;
            }
            let Ok(envelope) = Envelope::from_slice(&message.payload) else {
                continue;
            };
            let Ok(event) = envelope.decode() else {
                continue;
            };
            // A person's lifecycle moves only (the correlator's own decisions it already holds).
            if !matches!(
                event,
                Event::IncidentResolved(_)
                    | Event::IncidentReopened(_)
                    | Event::IncidentTransitioned(_)
            ) {
                continue;
            }
            let Some((incident_id, _)) = event.incident() else {
                continue;
            };
            if let Some(change) = IncidentEvent::of(&event, envelope.occurred_at)
                && change.by_person()
            {
                changes.push(((envelope.tenant, incident_id), change));
            }
        }
        let ids: BTreeSet<(String, Uuid)> = changes.iter().map(|(id, _)| id.clone()).collect();
        let incidents = state::lock(store, &mut tx, ids.into_iter().collect()).await?;
        let mut followed = correlation::Batch::new([], incidents);
        for ((tenant, incident_id), change) in &changes {
            // An incident the correlator never opened is not its to follow.
            followed.follow(tenant, *incident_id, change);
        }
        state::save(store, &mut tx, &followed.changes()).await?;
        store
            .set_checkpoint(&mut tx, LIFECYCLE_CHECKPOINT, subjects::INCIDENTS, last)
            .await?;
        tx.commit().await?;
        if let Some(message) = batch.last() {
            message.ack().await.ok();
        }
    }
    Ok(())
}

/// Resolves incidents whose alerts have all resolved and stayed so for the tenant's grace.
async fn resolve_timer(ctx: &Context, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_millis(
        ctx.settings.correlator.tick_ms.max(1),
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        if let Err(err) = resolve_due(ctx).await {
            tracing::warn!(error = format!("{err:#}"), "resolving due incidents failed");
        }
    }
}

async fn resolve_due(ctx: &Context) -> anyhow::Result<()> {
    let store = &ctx.store;
    let mut tx = store.begin().await?;
    let due = store
        .due_correlator_incidents(&mut tx, Utc::now(), 100)
        .await?;
    if due.is_empty() {
        return Ok(());
    }
    let mut decisions = Vec::new();
    for row in due {
        let mut incident = state::incident_of(row)?;
        decisions.extend(correlation::resolve_after_grace(&mut incident));
        store
            .save_correlator_incident(&mut tx, &state::incident_row(&incident))
            .await?;
    }
    append(ctx, &decisions).await?;
    tx.commit().await?;
    count(&decisions);
    Ok(())
}
