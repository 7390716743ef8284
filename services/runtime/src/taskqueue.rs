//! The task work queue: a JetStream work-queue stream (`TASKQUEUE`) holding one message per task
//! attempt ready to run, and one durable pull consumer per tenant and priority. A claim is a
//! delivery, the lease is the consumer's `AckWait`, a heartbeat is an in-progress ack, completion
//! is the ack; a message whose lease runs out is delivered again to another worker.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull, stream};
use copilot_events::subjects;

/// The stream definition, embedded like the others in `nats/`.
pub const DEFINITION: &str = include_str!("../../../nats/streams/TASKQUEUE.json");

/// Creates the work-queue stream if it is missing.
pub async fn provision(js: &jetstream::Context) -> anyhow::Result<stream::Stream> {
    let config: stream::Config =
        serde_json::from_str(DEFINITION).context("nats/streams/TASKQUEUE.json")?;
    js.get_or_create_stream(config)
        .await
        .context("creating the task work queue")
}

type Consumer = jetstream::consumer::Consumer<pull::Config>;

/// Consumers by server, tenant and priority.
type ConsumerCache = std::sync::Mutex<std::collections::HashMap<(String, String, u8), Consumer>>;

/// Consumers already made or looked up, by server, tenant and priority: a claim scans up to ten
/// priorities, and asking the server for each consumer on every scan cost two API calls apiece.
fn cache() -> &'static ConsumerCache {
    static CACHE: std::sync::OnceLock<ConsumerCache> = std::sync::OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn cache_key(js: &jetstream::Context, tenant: &str, priority: u8) -> (String, String, u8) {
    (
        js.client().server_info().server_id,
        tenant.to_owned(),
        priority,
    )
}

/// The durable consumer of one tenant's attempts at one priority, made with the given lease if
/// it does not exist yet (an existing consumer keeps its own: see its `ack_wait`). Cached per
/// process; [`forget`] drops an entry whose consumer failed.
pub async fn consumer(
    js: &jetstream::Context,
    tenant: &str,
    priority: u8,
    lease: Duration,
) -> anyhow::Result<Consumer> {
    let key = cache_key(js, tenant, priority);
    if let Some(cached) = cache().lock().expect("cache lock").get(&key) {
        return Ok(cached.clone());
    }
    let consumer = make_consumer(js, tenant, priority, lease).await?;
    cache()
        .lock()
        .expect("cache lock")
        .insert(key, consumer.clone());
    Ok(consumer)
}

/// Drops a cached consumer (after a fetch from it failed), so the next claim asks the server.
pub fn forget(js: &jetstream::Context, tenant: &str, priority: u8) {
    cache()
        .lock()
        .expect("cache lock")
        .remove(&cache_key(js, tenant, priority));
}

/// The priorities, highest first, at which the tenant's queue holds an attempt of one of
/// `kinds` (delivered or not): one stream-info request instead of a fetch per priority.
pub async fn ready_priorities(
    js: &jetstream::Context,
    tenant: &str,
    kinds: &[String],
) -> anyhow::Result<Vec<u8>> {
    use futures::TryStreamExt as _;
    let stream = js
        .get_stream_no_info(subjects::TASK_QUEUE)
        .await
        .context("the task work queue")?;
    let subjects: Vec<(String, usize)> = stream
        .info_with_subjects(subjects::task_queue_tenant(tenant))
        .await
        .context("reading the task work queue's subjects")?
        .try_collect()
        .await
        .context("reading the task work queue's subjects")?;
    let mut ready: Vec<u8> = subjects
        .iter()
        .filter(|(_, count)| *count > 0)
        .filter_map(|(subject, _)| subjects::task_queue_parts(tenant, subject))
        .filter(|(_, kind)| kinds.iter().any(|k| k == kind))
        .map(|(priority, _)| priority)
        .collect();
    ready.sort_unstable_by(|a, b| b.cmp(a));
    ready.dedup();
    Ok(ready)
}

async fn make_consumer(
    js: &jetstream::Context,
    tenant: &str,
    priority: u8,
    lease: Duration,
) -> anyhow::Result<Consumer> {
    let stream = provision(js).await?;
    let name = subjects::task_queue_consumer(tenant, priority);
    stream
        .get_or_create_consumer(
            &name,
            pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: subjects::task_queue_priority(tenant, priority),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: lease,
                max_deliver: -1,
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("creating the task queue consumer {name}"))
}

/// The queue subject of an attempt (re-exported for callers that only know the runtime).
pub fn subject(tenant: &str, priority: u8, kind: &str) -> String {
    subjects::task_queue(tenant, priority, kind)
}

/// Task metrics: claims, outcomes and lease expiries by kind.
pub struct TaskMetrics {
    /// Attempts claimed, by kind.
    pub claims_total: prometheus::IntCounterVec,
    /// Outcomes by kind: `succeeded`, `retried`, `failed`, `cancelled`, `refused` (a late
    /// outcome from a worker that lost its attempt).
    pub outcomes_total: prometheus::IntCounterVec,
    /// Attempts whose worker stopped heartbeating past the lease, by kind.
    pub lease_expiries_total: prometheus::IntCounterVec,
    /// From queued (created, or due again after a retry's backoff) to claimed, by kind.
    pub claim_latency_seconds: prometheus::HistogramVec,
    /// From claimed to the attempt's end (completed, failed, timed out, lease expired), by kind.
    pub run_seconds: prometheus::HistogramVec,
    /// Tasks waiting for a worker, by kind, across tenants (read from the `tasks` read model).
    pub queue_depth: prometheus::IntGaugeVec,
}

impl TaskMetrics {
    /// The process's task metrics, registered with [`crate::metrics::Metrics`] on first use.
    pub fn global() -> &'static TaskMetrics {
        static METRICS: std::sync::OnceLock<TaskMetrics> = std::sync::OnceLock::new();
        METRICS.get_or_init(|| {
            let counter = |name: &str, help: &str| {
                prometheus::IntCounterVec::new(prometheus::Opts::new(name, help), &["kind"])
                    .expect("valid metric")
            };
            let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
                prometheus::HistogramVec::new(
                    prometheus::HistogramOpts::new(name, help).buckets(buckets),
                    &["kind"],
                )
                .expect("valid metric")
            };
            let metrics = TaskMetrics {
                claim_latency_seconds: histogram(
                    "copilot_task_claim_latency_seconds",
                    "Time from a task being ready to a worker claiming it",
                    vec![
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    ],
                ),
                run_seconds: histogram(
                    "copilot_task_run_seconds",
                    "Time an attempt ran, from its claim to its end",
                    vec![0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0],
                ),
                queue_depth: prometheus::IntGaugeVec::new(
                    prometheus::Opts::new(
                        "copilot_task_queue_depth",
                        "Tasks waiting for a worker, across tenants",
                    ),
                    &["kind"],
                )
                .expect("valid metric"),
                claims_total: counter("copilot_task_claims_total", "Task attempts claimed"),
                outcomes_total: prometheus::IntCounterVec::new(
                    prometheus::Opts::new("copilot_task_outcomes_total", "Task attempt outcomes"),
                    &["kind", "outcome"],
                )
                .expect("valid metric"),
                lease_expiries_total: counter(
                    "copilot_task_lease_expiries_total",
                    "Task attempts whose lease ran out",
                ),
            };
            let global = crate::metrics::Metrics::global();
            global.register(Box::new(metrics.claims_total.clone()));
            global.register(Box::new(metrics.outcomes_total.clone()));
            global.register(Box::new(metrics.lease_expiries_total.clone()));
            global.register(Box::new(metrics.claim_latency_seconds.clone()));
            global.register(Box::new(metrics.run_seconds.clone()));
            global.register(Box::new(metrics.queue_depth.clone()));
            metrics
        })
    }

    /// Counts one outcome of a task of `kind`.
    pub fn outcome(&self, kind: &str, outcome: &str) {
        self.outcomes_total
            .with_label_values(&[kind, outcome])
            .inc();
    }
}
