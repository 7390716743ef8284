//! The hypothesis service: for every incident that opens or gains evidence, gather what an SRE
//! would look at and propose two to five competing root-cause hypotheses, each with a
//! calibrated confidence and citations to the exact evidence behind it.
//!
//! Several instances share one durable consumer of INCIDENTS; each event that changes an
//! incident's evidence marks it due in `hypothesis_schedule` (debounced: a settle delay, then at
//! most one run per incident per minimum interval), and whichever instance claims it first runs
//! the engine. The answer is a `HypothesesProposed` event on the incident's subject, carrying the
//! evidence snapshot and digests so that what the copilot believed, and why, can always be read
//! back; a model call is also recorded as telemetry (`ModelCallRecorded`).

pub mod builtin;
pub mod concurrent;
pub mod evidence;
pub mod llm;
pub mod metrics;
pub mod trust;

use std::time::{Duration, Instant};

use crate::evidence::MetricSummary;

use anyhow::Context as _;
use chrono::Utc;
use copilot_events::{
    Envelope, Event, EventPayload, Headers, HypothesesProposed, Hypothesis, ModelCallRecorded,
    TenantIntegrations, TokenUsage, TraceParent, derived_id, subjects,
};
use copilot_runtime::{Context, Settings, egress::EgressPolicy, metrics::Metrics, nats};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use evidence::{EvidenceInput, EvidenceSet, IncidentFacts, PastIncident, SignalFacts};
use llm::LlmConfig;

/// Which engine answers.
#[derive(Debug, Clone)]
pub enum Engine {
    /// The deterministic rules only.
    Builtin,
    /// A model first; the rules when it fails, times out or answers unusably.
    Llm(LlmConfig),
}

impl Engine {
    /// The tenant's own model when it set one, else the global one, else the built-in engine.
    /// A tenant's model is called under the egress policy, with the key from the tenant's own
    /// secret (or, legacy, a variable the operator allows tenants to name), never anything else.
    pub async fn for_tenant(
        ctx: &Context,
        tenant: &str,
        integrations: &TenantIntegrations,
        egress: &EgressPolicy,
    ) -> Self {
        let settings = &ctx.settings;
        let Some(llm) = &integrations.llm else {
            return Self::from_settings(settings);
        };
        let (api_key, key_error) = match tenant_key(ctx, tenant, llm).await {
            Ok(key) => (key, None),
            Err(reason) => {
                tracing::warn!(tenant, reason, "the tenant's model key is unavailable");
                (None, Some(reason))
            }
        };
        Self::Llm(LlmConfig {
            base_url: llm.base_url.clone(),
            model: llm.model.clone(),
            api_key,
            timeout: Duration::from_millis(
                llm.timeout_ms.unwrap_or(settings.hypothesis.llm.timeout_ms),
            ),
            egress: Some(egress.clone()),
            key_error,
        })
    }

    pub fn from_settings(settings: &Settings) -> Self {
        match (
            &settings.hypothesis.llm.base_url,
            &settings.hypothesis.llm.model,
        ) {
            (Some(base_url), Some(model)) => {
                Self::Llm(LlmConfig {
                    base_url: base_url.clone(),
                    model: model.clone(),
                    api_key: settings.hypothesis.llm.api_key.as_ref().map(|k| {
                        copilot_runtime::settings::ExposeSecret::expose_secret(k).to_owned()
                    }),
                    timeout: Duration::from_millis(settings.hypothesis.llm.timeout_ms),
                    egress: None,
                    key_error: None,
                })
            }
            _ => Self::Builtin,
        }
    }
}

/// The API key of a tenant's model: its secret opened with the platform's keys, or the value of
/// a variable the operator allows tenants to name; `Err` says why there is none to send, in words
/// fit for the tenant (what only the operator should see is logged).
async fn tenant_key(
    ctx: &Context,
    tenant: &str,
    llm: &copilot_events::TenantLlm,
) -> Result<Option<String>, String> {
    if let Some(name) = &llm.api_key_secret {
        let secret = copilot_runtime::secrets::open_tenant_secret(ctx, tenant, name).await?;
        if let Some(bound) = &secret.origin
            && copilot_runtime::egress::origin_of(&llm.base_url).as_ref() != Some(bound)
        {
            return Err(format!(
                "secret {name:?} may only be sent to {bound}, and llm.base_url points elsewhere"
            ));
        }
        return Ok(Some(secret.value));
    }
    if let Some(name) = &llm.api_key_env {
        return copilot_runtime::secrets::tenant_env(
            &ctx.settings,
            tenant,
            "llm.api_key_env",
            name,
        )
        .map(Some);
    }
    Ok(None)
}

/// A model call as it went, for telemetry.
#[derive(Debug, Clone)]
pub struct ModelCall {
    pub model: String,
    pub outcome: &'static str,
    pub usage: TokenUsage,
    pub latency: Duration,
}

/// What an engine concluded about one incident (before it becomes an event).
#[derive(Debug, Clone)]
pub struct Conclusion {
    pub engine: &'static str,
    pub model: Option<String>,
    pub fallback_reason: Option<String>,
    pub prompt_digest: String,
    pub evidence: EvidenceSet,
    pub hypotheses: Vec<Hypothesis>,
    pub inconclusive: bool,
    /// Hypotheses the answering engine offered, before the trust rules.
    pub offered: u32,
    pub dropped_for_citations: u32,
    pub usage: TokenUsage,
    pub latency: Duration,
    pub call: Option<ModelCall>,
}

/// What an engine answered, before the trust rules.
#[derive(Debug, Clone)]
pub struct Answer {
    pub hypotheses: Vec<Hypothesis>,
    pub inconclusive: bool,
    /// Confidence to keep for causes nobody named (more when the evidence is thin).
    pub reserve: f64,
    pub usage: TokenUsage,
    pub prompt_digest: String,
    pub model: Option<String>,
}

/// An engine: reads the budgeted evidence and answers with ranked, cited hypotheses. The two
/// implementations are the built-in rules ([`BuiltinEngine`]) and any OpenAI-compatible model
/// ([`LlmConfig`]); [`conclude`] asks one and falls back to the rules.
pub trait HypothesisEngine: Sync {
    /// `builtin` or `llm`, as recorded in the proposal.
    fn name(&self) -> &'static str;
    fn propose(
        &self,
        input: &EvidenceInput,
        set: &EvidenceSet,
    ) -> impl std::future::Future<Output = Result<Answer, llm::LlmError>> + Send;
}

/// The deterministic rules of [`builtin`]; never fails.
pub struct BuiltinEngine;

impl HypothesisEngine for BuiltinEngine {
    fn name(&self) -> &'static str {
        "builtin"
    }

    async fn propose(
        &self,
        input: &EvidenceInput,
        set: &EvidenceSet,
    ) -> Result<Answer, llm::LlmError> {
        let (hypotheses, reserve) = builtin::propose(input, set);
        Ok(Answer {
            hypotheses,
            inconclusive: false,
            reserve,
            usage: TokenUsage::default(),
            prompt_digest: set.digest(),
            model: None,
        })
    }
}

impl HypothesisEngine for LlmConfig {
    fn name(&self) -> &'static str {
        "llm"
    }

    async fn propose(
        &self,
        input: &EvidenceInput,
        set: &EvidenceSet,
    ) -> Result<Answer, llm::LlmError> {
        let answer = llm::propose(self, input, set).await?;
        Ok(Answer {
            reserve: if answer.inconclusive { 0.5 } else { 0.1 },
            hypotheses: answer.hypotheses,
            inconclusive: answer.inconclusive,
            usage: answer.usage,
            prompt_digest: answer.prompt_digest,
            model: Some(self.model.clone()),
        })
    }
}

/// Runs the engine over the gathered facts: evidence budgeted, the answer (or, when the model
/// fails, the built-in engine's) through the trust rules.
pub async fn conclude(engine: &Engine, input: &EvidenceInput, budget_tokens: usize) -> Conclusion {
    let started = Instant::now();
    let set = evidence::assemble(input, budget_tokens);
    let (mut fallback_reason, mut call) = (None, None);
    let mut answered = None;
    if let Engine::Llm(config) = engine {
        let result = config.propose(input, &set).await;
        let (outcome, usage) = match &result {
            Ok(answer) => ("ok", answer.usage),
            Err(err) => (err.outcome(), err.usage()),
        };
        call = Some(ModelCall {
            model: config.model.clone(),
            outcome,
            usage,
            latency: started.elapsed(),
        });
        match result {
            Ok(answer) => answered = Some((config.name(), answer)),
            Err(err) => {
                tracing::warn!(error = %err, "model call failed; the built-in engine answers");
                fallback_reason = Some(err.to_string());
            }
        }
    }
    let (name, answer) = match answered {
        Some(answered) => answered,
        None => (
            BuiltinEngine.name(),
            BuiltinEngine
                .propose(input, &set)
                .await
                .expect("the built-in engine does not fail"),
        ),
    };
    let trusted = trust::finalize(answer.hypotheses, &set, answer.reserve);
    Conclusion {
        engine: name,
        model: answer.model,
        fallback_reason,
        prompt_digest: answer.prompt_digest,
        evidence: set,
        hypotheses: trusted.hypotheses,
        inconclusive: answer.inconclusive || trusted.inconclusive,
        offered: trusted.offered,
        dropped_for_citations: trusted.dropped_for_citations,
        usage: answer.usage,
        latency: started.elapsed(),
        call,
    }
}

/// Runs the service alone until `shutdown`, with health and metrics on `settings.http.listen`.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let ctx = Context::connect(settings, "hypothesis").await?;
    copilot_runtime::http::with_health(ctx.clone(), shutdown.clone(), serve(ctx, shutdown)).await
}

/// Runs the scheduler (following INCIDENTS) and the worker until `shutdown`.
pub async fn serve(ctx: Context, shutdown: CancellationToken) -> anyhow::Result<()> {
    tokio::try_join!(follow(&ctx, &shutdown), work(&ctx, &shutdown))?;
    Ok(())
}

fn interval(secs: u64) -> chrono::Duration {
    chrono::Duration::seconds(secs as i64)
}

/// Marks incidents due as their evidence changes. Restarts after a failure.
async fn follow(ctx: &Context, shutdown: &CancellationToken) -> anyhow::Result<()> {
    loop {
        match follow_once(ctx, shutdown).await {
            Ok(()) => return Ok(()),
            Err(err) => tracing::warn!(
                error = format!("{err:#}"),
                "hypothesis scheduler failed; restarting"
            ),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn follow_once(ctx: &Context, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let mut messages =
        nats::shared_messages(&ctx.js, subjects::INCIDENTS, nats::CONSUMER_HYPOTHESIS).await?;
    let settle = chrono::Duration::milliseconds(ctx.settings.hypothesis.settle_ms as i64);
    let min_interval = interval(ctx.settings.hypothesis.min_interval_secs);
    loop {
        let Some(message) = nats::next_shared(&mut messages, shutdown).await? else {
            return Ok(());
        };
        let due = Envelope::from_slice(&message.payload).ok().and_then(|env| {
            // What changes an incident's evidence: its opening, a new signal, a reopening.
            let event = env.decode().ok().filter(|e| {
                matches!(
                    e,
                    Event::IncidentOpened(_)
                        | Event::SignalAttached(_)
                        | Event::IncidentReopened(_)
                )
            })?;
            let (incident, _) = event.incident()?;
            Some((incident, env))
        });
        if let Some((incident, env)) = due {
            ctx.store
                .schedule_hypotheses(
                    &env.tenant,
                    incident,
                    Utc::now(),
                    (settle, min_interval),
                    env.traceparent.as_deref(),
                )
                .await?;
        }
        if let Err(err) = message.ack().await {
            tracing::debug!(error = %err, "ack failed; the event will be seen again");
        }
    }
}

/// Claims due incidents and proposes hypotheses for them. A failed run is retried later; no
/// failure here stops the process.
async fn work(ctx: &Context, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let min_interval = interval(ctx.settings.hypothesis.min_interval_secs);
    // Long enough for the slowest model call; another instance takes over after it.
    let hold =
        chrono::Duration::milliseconds(ctx.settings.hypothesis.llm.timeout_ms as i64 * 2 + 10_000);
    let retry = chrono::Duration::seconds(10);
    loop {
        let claimed = match ctx.store.claim_due_hypotheses(Utc::now(), hold).await {
            Ok(claimed) => claimed,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the hypothesis schedule");
                None
            }
        };
        let Some(claim) = claimed else {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            continue;
        };
        let span = tracing::info_span!("hypothesize", tenant = %claim.tenant, incident = %claim.incident_id);
        let cause = claim.traceparent.as_deref().and_then(TraceParent::parse);
        copilot_runtime::telemetry::set_parent(&span, cause.as_ref());
        let outcome = propose(ctx, &claim).instrument(span).await;
        let finished = match &outcome {
            Ok(true) => {
                ctx.store
                    .finish_hypotheses(&claim, Utc::now(), min_interval)
                    .await
            }
            Ok(false) | Err(_) => {
                if let Err(err) = &outcome {
                    tracing::warn!(
                        tenant = claim.tenant,
                        incident = %claim.incident_id,
                        error = format!("{err:#}"),
                        "proposing hypotheses failed; retrying later"
                    );
                }
                ctx.store.retry_hypotheses(&claim, Utc::now() + retry).await
            }
        };
        if let Err(err) = finished {
            tracing::warn!(error = %err, "cannot record a hypothesis run; its claim will expire");
        }
    }
}

/// A tenant's integrations (defaults when it set none, or when they cannot be read back).
pub async fn integrations(ctx: &Context, tenant: &str) -> anyhow::Result<TenantIntegrations> {
    Ok(ctx
        .store
        .tenant_setting(
            &mut ctx.store.begin().await?,
            copilot_store::TenantSetting::Integrations,
            tenant,
        )
        .await?
        .and_then(|json| serde_json::from_value(json).ok())
        .unwrap_or_default())
}

/// The task kind whose results are metric snapshots of an incident.
pub const SNAPSHOT_KIND: &str = "promql.snapshot";

/// Where a tenant's metric evidence comes from: its own Prometheus (under the egress policy),
/// else the operator's, else none.
pub fn metrics_source<'a>(
    ctx: &'a Context,
    integrations: &'a TenantIntegrations,
) -> Option<MetricsSource<'a>> {
    match (
        &integrations.prometheus_url,
        &ctx.settings.hypothesis.prometheus_url,
    ) {
        (Some(url), _) => Some(MetricsSource {
            url,
            egress: Some(EgressPolicy::in_force(&ctx.settings)),
        }),
        (None, Some(url)) => Some(MetricsSource { url, egress: None }),
        (None, None) => None,
    }
}

/// The incident's metrics around its onset: each query template (`templates`, or the
/// operator's, or the built-in ones) for each of its services (up to 5), from 30 minutes before
/// the first alert to now.
pub async fn incident_metrics(
    ctx: &Context,
    source: &MetricsSource<'_>,
    incident: &copilot_store::IncidentSummary,
    signals: &[SignalFacts],
    templates: Option<Vec<metrics::QueryTemplate>>,
) -> anyhow::Result<Vec<MetricSummary>> {
    let templates = match (templates, &ctx.settings.hypothesis.prometheus_queries) {
        (Some(templates), _) => templates,
        (None, Some(path)) => metrics::templates_from_file(path).with_context(|| {
            format!("reading the Prometheus query templates {}", path.display())
        })?,
        (None, None) => metrics::default_templates(),
    };
    let mut services: Vec<String> = signals
        .iter()
        .filter_map(|s| s.service.clone())
        .chain(incident.service.clone())
        .collect();
    services.sort();
    services.dedup();
    services.truncate(5);
    let onset = signals
        .iter()
        .map(|s| s.starts_at)
        .min()
        .unwrap_or(incident.opened_at);
    let end = Utc::now().max(onset + chrono::Duration::minutes(5));
    Ok(metrics::fetch(
        source.url,
        source.egress.as_ref(),
        &templates,
        &services,
        onset - chrono::Duration::minutes(30),
        end,
        Duration::from_secs(5),
    )
    .await)
}

/// Where metric evidence comes from: a Prometheus and, for a tenant's own, the egress policy.
pub struct MetricsSource<'a> {
    pub url: &'a str,
    pub egress: Option<EgressPolicy>,
}

/// Gathers the facts of one incident from the read models, and from Prometheus when the tenant
/// or the process names one. `None` while the incident is not in the read model yet.
pub async fn gather(
    ctx: &Context,
    tenant: &str,
    incident_id: Uuid,
    prometheus: Option<MetricsSource<'_>>,
) -> anyhow::Result<Option<EvidenceInput>> {
    let store = &ctx.store;
    let Some(incident) = store
        .get_incident(&mut store.begin().await?, tenant, incident_id)
        .await?
    else {
        return Ok(None);
    };
    let signals: Vec<SignalFacts> = store
        .incident_signal_facts(tenant, incident_id, 500)
        .await?
        .into_iter()
        .map(signal_facts)
        .collect();
    let mut metrics = match prometheus {
        Some(source) => incident_metrics(ctx, &source, &incident, &signals, None).await?,
        None => Vec::new(),
    };
    // Snapshots that `promql.snapshot` tasks took for the incident: what Prometheus said then,
    // kept after its own retention, for series the live query did not answer.
    for (_, _, result) in store
        .incident_task_results(
            &mut store.begin().await?,
            tenant,
            incident_id,
            SNAPSHOT_KIND,
            3,
        )
        .await?
    {
        let taken: Vec<MetricSummary> = result
            .get("metrics")
            .and_then(|m| serde_json::from_value(m.clone()).ok())
            .unwrap_or_default();
        for summary in taken {
            if !metrics
                .iter()
                .any(|m| m.name == summary.name && m.service == summary.service)
            {
                metrics.push(summary);
            }
        }
    }
    let words = format!(
        "{} {} {}",
        incident.title,
        incident.service.as_deref().unwrap_or(""),
        incident.key
    );
    let similar = store
        .similar_incidents(tenant, incident_id, &words, 5)
        .await?
        .into_iter()
        .map(|p| PastIncident {
            id: p.id,
            title: p.title,
            service: p.service,
            state: p.state,
            opened_at: p.opened_at,
            resolution: match (p.confirmed, p.notes) {
                (Some(c), Some(n)) => Some(format!("confirmed cause: {c}; notes: {n}")),
                (Some(c), None) => Some(format!("confirmed cause: {c}")),
                (None, notes) => notes,
            },
            // ts_rank of a few shared words lands near 0.1; scale it into 0-1.
            similarity: (f64::from(p.rank) * 5.0).min(1.0),
        })
        .collect();
    let mut concurrent = Vec::new();
    for c in store
        .concurrent_incidents(tenant, incident_id, concurrent::WINDOW_MINUTES, 10)
        .await?
    {
        let signals = store
            .incident_signal_facts(tenant, c.id, 5)
            .await?
            .into_iter()
            .map(signal_facts)
            .collect();
        concurrent.push(concurrent::ConcurrentIncident {
            id: c.id,
            title: c.title,
            service: c.service,
            state: c.state,
            opened_at: c.opened_at,
            signals,
        });
    }
    Ok(Some(EvidenceInput {
        incident: IncidentFacts {
            id: incident.id,
            title: incident.title,
            service: incident.service,
            key: incident.key,
            opened_at: incident.opened_at,
        },
        signals,
        similar,
        metrics,
        concurrent,
    }))
}

/// An alert of an incident as the read model holds it, as evidence facts.
pub fn signal_facts(s: copilot_store::IncidentSignalFacts) -> SignalFacts {
    let labels: std::collections::BTreeMap<String, String> = s
        .labels
        .and_then(|l| serde_json::from_value(l).ok())
        .unwrap_or_default();
    SignalFacts {
        id: s.signal_id,
        alertname: labels
            .get("alertname")
            .cloned()
            .unwrap_or_else(|| s.title.clone()),
        service: s.service,
        severity: s.severity,
        status: s.status,
        starts_at: s.starts_at,
        ends_at: s.ends_at,
        labels,
        annotations: s
            .annotations
            .and_then(|a| serde_json::from_value(a).ok())
            .unwrap_or_default(),
        values: s.values,
    }
}

/// Proposes hypotheses for one incident and appends them (and the model call's telemetry).
/// `false` when the incident is not in the read model yet (the run is retried).
async fn propose(ctx: &Context, claim: &copilot_store::HypothesisClaim) -> anyhow::Result<bool> {
    let (tenant, incident_id) = (claim.tenant.as_str(), claim.incident_id);
    let trace = claim.traceparent.as_deref().and_then(TraceParent::parse);
    let integrations = integrations(ctx, tenant).await?;
    let egress = EgressPolicy::in_force(&ctx.settings);
    let engine = Engine::for_tenant(ctx, tenant, &integrations, &egress).await;
    let prometheus = metrics_source(ctx, &integrations);
    let Some(input) = gather(ctx, tenant, incident_id, prometheus).await? else {
        return Ok(false);
    };
    let previous = ctx
        .store
        .incident_proposals(&mut ctx.store.begin().await?, tenant, incident_id, false)
        .await?
        .into_iter()
        .next();
    let conclusion = conclude(&engine, &input, ctx.settings.hypothesis.budget_tokens).await;
    let before: Vec<Hypothesis> = previous
        .as_ref()
        .and_then(|p| serde_json::from_value::<HypothesesProposed>(p.event.clone()).ok())
        .map(|p| p.hypotheses)
        .unwrap_or_default();
    let now = Utc::now();
    let supersedes = previous.map(|p| p.proposal_id);
    let evidence_digest = conclusion.evidence.digest();
    // Deciding again on the same evidence after the same proposal (a run whose claim expired)
    // yields the same id, which JetStream and the projector drop as a copy.
    let proposal_id = derived_id(
        input.incident.opened_at,
        &[
            "proposal",
            tenant,
            &incident_id.to_string(),
            &evidence_digest,
            &supersedes.map(|s| s.to_string()).unwrap_or_default(),
            conclusion.engine,
        ],
    );
    let event = HypothesesProposed {
        incident_id,
        proposal_id,
        engine: conclusion.engine.to_owned(),
        model: conclusion.model.clone(),
        fallback_reason: conclusion.fallback_reason.clone(),
        prompt_digest: conclusion.prompt_digest.clone(),
        evidence_digest,
        evidence_left_out: conclusion.evidence.left_out,
        evidence: conclusion.evidence.items.clone(),
        changes: trust::changes(&before, &conclusion.hypotheses),
        hypotheses: conclusion.hypotheses.clone(),
        inconclusive: conclusion.inconclusive,
        dropped_for_citations: conclusion.dropped_for_citations,
        usage: conclusion.usage,
        latency_ms: conclusion.latency.as_millis() as u64,
        supersedes,
    };
    let metrics = Metrics::global();
    if let Some(call) = &conclusion.call {
        let cost = (f64::from(call.usage.prompt_tokens)
            * ctx.settings.hypothesis.llm.price_prompt_per_1k
            + f64::from(call.usage.completion_tokens)
                * ctx.settings.hypothesis.llm.price_completion_per_1k)
            / 1000.0;
        let call_id = derived_id(
            input.incident.opened_at,
            &["model-call", tenant, &proposal_id.to_string()],
        );
        let record = ModelCallRecorded {
            call_id,
            incident_id,
            engine: "llm".into(),
            model: call.model.clone(),
            outcome: call.outcome.into(),
            usage: call.usage,
            latency_ms: call.latency.as_millis() as u64,
            cost_usd: cost,
            at: now,
        };
        let subject = subjects::telemetry(tenant, "model_calls");
        publish(ctx, tenant, subject, call_id, &record, now, trace).await?;
        metrics
            .model_calls_total
            .with_label_values(&["llm", call.outcome])
            .inc();
        metrics
            .model_tokens_total
            .with_label_values(&["llm", "prompt"])
            .inc_by(u64::from(call.usage.prompt_tokens));
        metrics
            .model_tokens_total
            .with_label_values(&["llm", "completion"])
            .inc_by(u64::from(call.usage.completion_tokens));
        metrics
            .model_call_duration_seconds
            .with_label_values(&["llm"])
            .observe(call.latency.as_secs_f64());
        metrics
            .model_cost_usd_total
            .with_label_values(&["llm"])
            .inc_by(cost);
    }
    let subject = subjects::incident(tenant, incident_id);
    publish(ctx, tenant, subject, proposal_id, &event, now, trace).await?;
    metrics
        .hypotheses_proposed_total
        .with_label_values(&[conclusion.engine])
        .inc();
    metrics
        .hypothesis_citations_dropped_total
        .with_label_values(&[conclusion.engine])
        .inc_by(u64::from(conclusion.dropped_for_citations));
    tracing::info!(
        tenant,
        %incident_id,
        engine = conclusion.engine,
        hypotheses = event.hypotheses.len(),
        inconclusive = event.inconclusive,
        dropped = event.dropped_for_citations,
        trace_id = trace.map(|t| t.trace_id_hex()).unwrap_or_default(),
        "hypotheses proposed"
    );
    Ok(true)
}

async fn publish<P: EventPayload>(
    ctx: &Context,
    tenant: &str,
    subject: String,
    id: Uuid,
    payload: &P,
    at: chrono::DateTime<Utc>,
    trace: Option<TraceParent>,
) -> anyhow::Result<()> {
    let headers = Headers {
        traceparent: copilot_runtime::telemetry::exported_traceparent(&tracing::Span::current())
            .or_else(|| trace.map(|t| t.child(id.as_bytes())))
            .map(|t| t.to_string()),
        ..Headers::default()
    };
    let envelope = Envelope::with_id(id, tenant, payload, at, headers);
    copilot_runtime::append::append_event(&ctx.js, subject, &envelope, None)
        .await
        .context("appending to JetStream")?;
    Ok(())
}
