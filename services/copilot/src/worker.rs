//! The native worker (`copilot worker`, and inside `copilot up`): claims tasks of the kinds built
//! in, runs them, heartbeats while they run and reports their outcome, through the same task
//! commands the worker routes translate to. It registers once per tenant it serves (a worker is
//! a tenant's), runs up to `capacity` tasks per tenant at once, and on shutdown stops claiming,
//! lets what runs finish within the drain time and hands back what is left (`TaskReleased`: queued
//! again at once for another worker, the attempt not counted).
//!
//! Kinds: `promql.snapshot` (the incident's metrics from the tenant's Prometheus, kept as the
//! task's result, which the hypothesis service then uses as evidence), `hypotheses.refresh`
//! (makes the incident due for hypotheses now and waits for the new proposal), `echo` (answers
//! its input after `sleep_ms`; checks a worker end to end, and is what the tasks bench runs).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use anyhow::Context as _;
use chrono::Utc;
use copilot_commands::{Claim, CommandError, tasks::HeartbeatAnswer};
use copilot_events::Headers;
use copilot_runtime::Context;
use serde_json::{Value, json};
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What a worker runs, and for whom.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    /// Tenants to serve (repeat the flag); none: every tenant, including ones created later
    #[arg(long = "tenant")]
    pub tenants: Vec<String>,
    /// Kinds to run [default: every built-in kind]
    #[arg(long = "kind", value_parser = clap::builder::PossibleValuesParser::new(copilot_commands::tasks::KINDS))]
    pub kinds: Vec<String>,
    /// Tasks run at once, per tenant
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub capacity: u32,
    /// The name people see in `GET /v1/workers` [default: the host name]
    #[arg(long)]
    pub name: Option<String>,
    /// On shutdown, how long running tasks get to finish before they are handed back (failed, so
    /// another worker retries them)
    #[arg(long, default_value_t = 30)]
    pub drain_secs: u64,
}

impl Default for WorkerArgs {
    fn default() -> Self {
        Self {
            tenants: Vec::new(),
            kinds: Vec::new(),
            capacity: 4,
            name: None,
            drain_secs: 30,
        }
    }
}

/// Runs a worker on its own (`copilot worker`), with health and metrics on the listen address.
pub async fn run(
    settings: copilot_runtime::Settings,
    args: WorkerArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ctx = Context::connect(settings, "worker").await?;
    copilot_runtime::taskqueue::provision(&ctx.js).await?;
    copilot_runtime::http::with_health(ctx.clone(), shutdown.clone(), serve(ctx, args, shutdown))
        .await
}

/// Serves the tenants `args` names (or every tenant, looking for new ones every 10 s) until
/// `shutdown`, then drains.
pub async fn serve(
    ctx: Context,
    args: WorkerArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let args = Arc::new(WorkerArgs {
        kinds: if args.kinds.is_empty() {
            copilot_commands::tasks::KINDS
                .iter()
                .map(|k| (*k).to_owned())
                .collect()
        } else {
            args.kinds.clone()
        },
        name: Some(args.name.clone().unwrap_or_else(host_name)),
        ..args
    });
    // Tenants named on the command line must exist: a typo would otherwise be served for ever.
    if !args.tenants.is_empty() {
        let known = all_tenants(&ctx).await?;
        if let Some(unknown) = args.tenants.iter().find(|t| !known.contains(t)) {
            anyhow::bail!(
                "no tenant {unknown:?} (or it is suspended); `copilot tenants list` shows them"
            );
        }
    }
    // Each tenant served with a stop of its own: a tenant suspended (or deleted) is drained, and
    // a tenant whose loop ended (it could not register) is started again on the next pass.
    let mut serving: BTreeMap<String, (tokio::task::JoinHandle<()>, CancellationToken)> =
        BTreeMap::new();
    loop {
        let wanted = match all_tenants(&ctx).await {
            Ok(known) if args.tenants.is_empty() => known,
            Ok(known) => args
                .tenants
                .iter()
                .filter(|t| known.contains(t))
                .cloned()
                .collect(),
            Err(err) => {
                tracing::warn!(error = format!("{err:#}"), "cannot list tenants");
                serving.keys().cloned().collect()
            }
        };
        serving.retain(|tenant, (handle, stop)| {
            if !wanted.contains(tenant) {
                stop.cancel();
            }
            !handle.is_finished()
        });
        for tenant in wanted {
            if serving.contains_key(&tenant) {
                continue;
            }
            let stop = shutdown.child_token();
            let (ctx, args, tenant_stop) = (ctx.clone(), args.clone(), stop.clone());
            let slot = tenant.clone();
            let handle = tokio::spawn(async move {
                if let Err(err) = serve_tenant(&ctx, &tenant, &args, &tenant_stop).await {
                    tracing::error!(tenant, error = format!("{err:#}"), "worker stopped");
                }
            });
            serving.insert(slot, (handle, stop));
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
    for (_, (handle, _)) in serving {
        let _ = handle.await;
    }
    Ok(())
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "copilot-worker".to_owned())
}

async fn all_tenants(ctx: &Context) -> anyhow::Result<Vec<String>> {
    let mut tx = ctx.store.begin().await?;
    Ok(ctx
        .store
        .list_tenants(&mut tx)
        .await?
        .into_iter()
        .filter(|t| t.suspended_at.is_none())
        .map(|t| t.slug)
        .collect())
}

/// What one tenant's worker holds: task id → (attempt, lease).
type Held = Arc<Mutex<BTreeMap<Uuid, (u32, String)>>>;

async fn serve_tenant(
    ctx: &Context,
    tenant: &str,
    args: &WorkerArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let js = &ctx.js;
    let worker_id = register(ctx, tenant, args, shutdown).await?;
    tracing::info!(tenant, worker = %worker_id, kinds = ?args.kinds, "worker registered");
    let held: Held = Arc::default();
    let slots = Arc::new(Semaphore::new(args.capacity as usize));
    let beat = heartbeat_every(ctx);
    let heartbeats = {
        let (ctx, tenant, held) = (ctx.clone(), tenant.to_owned(), held.clone());
        tokio::spawn(async move {
            loop {
                let tasks: Vec<Uuid> = held.lock().await.keys().copied().collect();
                if let Err(err) =
                    copilot_commands::worker_heartbeat(&ctx.js, &tenant, worker_id, tasks).await
                {
                    tracing::warn!(tenant, error = %err, "worker heartbeat failed");
                }
                // Beats on while draining (it is aborted once the drain is over), so a
                // draining worker still shows online.
                tokio::time::sleep(beat).await;
            }
        })
    };
    let running = CancellationToken::new();
    let mut attempts = tokio::task::JoinSet::new();
    while !shutdown.is_cancelled() {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        // Never raced against shutdown: a claim dropped after its `TaskClaimed` was appended
        // would be lost until the lease ran out, costing an attempt. It waits a second at most.
        let claimed = copilot_commands::claim_next(
            js,
            tenant,
            worker_id,
            &args.kinds,
            Duration::from_secs(1),
            ctx.settings.tasks.lease(),
        )
        .await;
        let claim = match claimed {
            Ok(Some(claim)) => claim,
            Ok(None) => continue,
            Err(err) => {
                tracing::warn!(tenant, error = %err, "claiming failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        held.lock()
            .await
            .insert(claim.task.id, (claim.task.attempt, claim.lease.clone()));
        let (ctx, tenant, held, stop) = (
            ctx.clone(),
            tenant.to_owned(),
            held.clone(),
            running.clone(),
        );
        attempts.spawn(async move {
            let task_id = claim.task.id;
            attempt(&ctx, &tenant, worker_id, claim, &stop).await;
            held.lock().await.remove(&task_id);
            drop(permit);
        });
    }
    // Draining: what runs gets `drain_secs` to finish, then is handed back.
    let drained = tokio::time::timeout(Duration::from_secs(args.drain_secs), async {
        while attempts.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        running.cancel();
        while attempts.join_next().await.is_some() {}
    }
    heartbeats.abort();
    if let Err(err) = copilot_commands::worker_gone(js, tenant, worker_id, "drained").await {
        tracing::warn!(tenant, error = %err, "cannot record the worker's leaving");
    }
    Ok(())
}

async fn register(
    ctx: &Context,
    tenant: &str,
    args: &WorkerArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<Uuid> {
    loop {
        let worker = copilot_commands::NewWorker {
            name: args.name.clone().unwrap_or_default(),
            kinds: args.kinds.clone(),
            capacity: args.capacity,
        };
        match copilot_commands::register_worker(&ctx.js, tenant, worker, Headers::default()).await {
            Ok(id) => return Ok(id),
            Err(CommandError::Invalid(why)) => anyhow::bail!("cannot register: {why}"),
            Err(err) => {
                tracing::warn!(tenant, error = %err, "cannot register; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => anyhow::bail!("stopped before registering"),
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    }
}

/// A third of the lease: two heartbeats may be lost before the lease runs out.
fn heartbeat_every(ctx: &Context) -> Duration {
    (ctx.settings.tasks.lease() / 3).max(Duration::from_millis(200))
}

/// Runs one attempt: the kind's handler beside a heartbeat that extends the lease and stops the
/// handler when the task is cancelled, timed out or lost; then reports the outcome.
async fn attempt(
    ctx: &Context,
    tenant: &str,
    worker: Uuid,
    claim: Claim,
    drain: &CancellationToken,
) {
    let (task_id, attempt) = (claim.task.id, claim.task.attempt);
    let lease = claim.lease.clone();
    let js = &ctx.js;
    let work = run_kind(ctx, tenant, worker, &claim);
    tokio::pin!(work);
    // A third of this claim's own lease, which may differ from the setting.
    let beat =
        (Duration::from_secs(u64::from(claim.lease_secs)) / 3).max(Duration::from_millis(200));
    let outcome = loop {
        tokio::select! {
            outcome = &mut work => break Some(outcome),
            _ = drain.cancelled() => {
                // Handed back, not failed: another worker runs it at once, and the attempt
                // does not count against the task's max_attempts.
                match copilot_commands::release_task(
                    js,
                    tenant,
                    worker,
                    task_id,
                    attempt,
                    &lease,
                    "the worker stopped (drained) before the attempt finished",
                )
                .await
                {
                    Ok(_) => {}
                    Err(err) => tracing::warn!(tenant, task = %task_id, error = %err, "cannot hand the attempt back; it returns after its lease"),
                }
                break None;
            }
            _ = tokio::time::sleep(beat) => {
                match copilot_commands::heartbeat_task(js, tenant, worker, task_id, attempt, &lease).await {
                    Ok(HeartbeatAnswer::Continue) => {}
                    Ok(answer) => {
                        tracing::info!(tenant, task = %task_id, ?answer, "attempt stopped");
                        break None;
                    }
                    Err(err) => tracing::warn!(tenant, task = %task_id, error = %err, "task heartbeat failed"),
                }
            }
        }
    };
    if let Some(outcome) = outcome {
        match copilot_commands::finish_task(js, tenant, worker, task_id, attempt, &lease, outcome)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(tenant, task = %task_id, "outcome refused: the attempt was lost")
            }
            Err(err) => tracing::warn!(tenant, task = %task_id, error = %err, "cannot report"),
        }
    }
}

/// Runs the kind's handler; an `Err` is the attempt's failure reason.
async fn run_kind(
    ctx: &Context,
    tenant: &str,
    worker: Uuid,
    claim: &Claim,
) -> Result<Value, String> {
    let log = |lines: Vec<String>| {
        copilot_commands::report_task(
            &ctx.js,
            tenant,
            worker,
            claim.task.id,
            claim.task.attempt,
            None,
            lines,
        )
    };
    let result = match claim.task.kind.as_str() {
        "echo" => echo(&claim.input).await,
        "promql.snapshot" => snapshot(ctx, tenant, claim).await,
        "hypotheses.refresh" => refresh(ctx, tenant, claim).await,
        other => Err(anyhow::anyhow!("this worker does not run {other:?}")),
    };
    match result {
        Ok((value, lines)) => {
            if !lines.is_empty() {
                let _ = log(lines).await;
            }
            Ok(value)
        }
        Err(err) => Err(format!("{err:#}")),
    }
}

/// `echo`: `{"sleep_ms": N, "fail": "why"?, …}` answers its input after N ms (at most 10
/// minutes), or fails with `fail`.
async fn echo(input: &Value) -> anyhow::Result<(Value, Vec<String>)> {
    let sleep = input
        .get("sleep_ms")
        .and_then(Value::as_u64)
        .unwrap_or(0)
        .min(600_000);
    tokio::time::sleep(Duration::from_millis(sleep)).await;
    if let Some(why) = input.get("fail").and_then(Value::as_str) {
        anyhow::bail!("{why}");
    }
    Ok((input.clone(), vec![format!("echoed after {sleep} ms")]))
}

fn incident_of(claim: &Claim) -> anyhow::Result<Uuid> {
    claim
        .incident_id
        .context("this kind needs the task's incident_id")
}

/// `promql.snapshot`: the incident's metrics from the tenant's Prometheus (input
/// `{"queries": [{"name", "query"}]}` to choose them; `{service}` is each of its services).
async fn snapshot(
    ctx: &Context,
    tenant: &str,
    claim: &Claim,
) -> anyhow::Result<(Value, Vec<String>)> {
    let incident_id = incident_of(claim)?;
    let store = &ctx.store;
    let incident = store
        .get_incident(&mut store.begin().await?, tenant, incident_id)
        .await?
        .context("no such incident (or it is not projected yet)")?;
    let signals: Vec<copilot_hypothesis::evidence::SignalFacts> = store
        .incident_signal_facts(tenant, incident_id, 500)
        .await?
        .into_iter()
        .map(copilot_hypothesis::signal_facts)
        .collect();
    let integrations = copilot_hypothesis::integrations(ctx, tenant).await?;
    let source = copilot_hypothesis::metrics_source(ctx, &integrations)
        .context("the tenant has no Prometheus (integrations.prometheus_url) and the operator set none (COPILOT_PROMETHEUS_URL)")?;
    let templates = claim
        .input
        .get("queries")
        .map(|q| serde_json::from_value(q.clone()))
        .transpose()
        .context("input.queries must be a list of {\"name\", \"query\"}")?;
    // A tenant's own queries run only against its own Prometheus: the operator's is shared by
    // every tenant, and a query of one tenant's choosing there could read another's series.
    if templates.is_some() && integrations.prometheus_url.is_none() {
        anyhow::bail!(
            "input.queries needs the tenant's own Prometheus (integrations.prometheus_url); against the operator's, only the built-in queries run"
        );
    }
    let metrics =
        copilot_hypothesis::incident_metrics(ctx, &source, &incident, &signals, templates).await?;
    let lines = metrics
        .iter()
        .map(|m| {
            format!(
                "{} {}: {} → {} (max {})",
                m.name, m.service, m.first, m.last, m.max
            )
        })
        .collect();
    Ok((
        json!({"incident_id": incident_id, "taken_at": Utc::now(), "metrics": metrics}),
        lines,
    ))
}

/// `hypotheses.refresh`: makes the incident due now and waits (within the task's timeout) for
/// the hypothesis service's new proposal.
async fn refresh(
    ctx: &Context,
    tenant: &str,
    claim: &Claim,
) -> anyhow::Result<(Value, Vec<String>)> {
    let incident_id = incident_of(claim)?;
    let store = &ctx.store;
    store
        .get_incident(&mut store.begin().await?, tenant, incident_id)
        .await?
        .context("no such incident (or it is not projected yet)")?;
    let before = latest_proposal(store, tenant, incident_id).await?;
    store
        .refresh_hypotheses(tenant, incident_id, Utc::now())
        .await?;
    loop {
        let now = latest_proposal(store, tenant, incident_id).await?;
        if now.is_some() && now != before {
            return Ok((
                json!({"incident_id": incident_id, "proposal_id": now}),
                vec![format!("new proposal {}", now.unwrap_or_default())],
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn latest_proposal(
    store: &copilot_store::Store,
    tenant: &str,
    incident_id: Uuid,
) -> anyhow::Result<Option<Uuid>> {
    let mut tx = store.begin().await?;
    Ok(store
        .incident_proposals(&mut tx, tenant, incident_id, false)
        .await?
        .into_iter()
        .next()
        .map(|p| p.proposal_id))
}
