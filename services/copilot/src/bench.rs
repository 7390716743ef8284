//! `copilot bench ingest`: measures the ingest path on this machine against a nats-server and a
//! Postgres database of its own (nothing of a running system is touched):
//!
//! 1. gateway: realistic Alertmanager notifications POSTed concurrently, alerts/s acknowledged
//!    (every 202 means JetStream acked every alert of that webhook);
//! 2. raw JetStream: the same events appended straight from this process with async-nats
//!    (1024 acks in flight), and the gateway's share of that ceiling;
//! 3. projector: the backlog of both folded into Postgres, events/s;
//! 4. alert-to-row latency at steady rates: webhooks sent on a fixed schedule whether or not
//!    earlier ones were answered (open loop), each timed from when it was due until the
//!    projector's committed checkpoint covers its alerts (polled every 500 µs from a thread and
//!    connection of its own).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::message::PublishMessage;
use copilot_events::{Envelope, EventPayload, Headers, SignalReceived, SignalSource, subjects};
use copilot_projector::Projection;
use copilot_runtime::{Context, Settings};
use futures::{StreamExt as _, stream::FuturesUnordered};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::{
    app::{App, Services},
    local::{EphemeralNats, ScratchDatabase},
};

#[derive(clap::Args, Debug, Clone)]
pub struct IngestArgs {
    /// Webhooks sent in the throughput phase
    #[arg(long, default_value_t = 5_000)]
    pub webhooks: usize,
    /// Alerts per webhook (Alertmanager groups alerts into one notification)
    #[arg(long, default_value_t = 10)]
    pub alerts_per_webhook: usize,
    /// Webhooks in flight at once in the throughput phase
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Steady rates (alerts/s) at which to measure alert-to-row latency
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    pub rates: Vec<u32>,
    /// Seconds each latency rate runs
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Postgres server to create the scratch database on [default: DATABASE_URL's server, else the local one, over its Unix socket when it has one]
    #[arg(long, env = "COPILOT_BENCH_ADMIN_URL")]
    pub admin_url: Option<String>,
    /// Print the results as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct IngestReport {
    pub alerts: usize,
    pub gateway_alerts_per_sec: f64,
    pub raw_jetstream_events_per_sec: f64,
    pub gateway_share_of_raw: f64,
    pub projector_events: u64,
    pub projector_events_per_sec: f64,
    pub latency: Vec<LatencyReport>,
}

#[derive(Debug, Serialize)]
pub struct LatencyReport {
    pub target_alerts_per_sec: u32,
    pub achieved_alerts_per_sec: f64,
    pub webhooks: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The gateway's share: webhook sent to 202 (JetStream acked every alert).
    pub accepted_p50_ms: f64,
    pub accepted_p99_ms: f64,
    /// The floor under that share: the same events appended straight to JetStream at the same
    /// rate, open loop, from a connection of their own; due to every ack of a webhook's alerts.
    pub jetstream_p50_ms: f64,
    pub jetstream_p99_ms: f64,
}

/// A nats-server and a scratch database of the benchmark's own, and settings pointing at them;
/// both go away when the first two are dropped.
pub(crate) async fn scratch(
    settings: Settings,
    admin_url: Option<String>,
) -> anyhow::Result<(EphemeralNats, ScratchDatabase, Settings)> {
    let admin_url = admin_url.unwrap_or_else(|| match &settings.database.url {
        Some(url) => crate::local::with_database(url, "postgres"),
        None => crate::local::local_admin_url(),
    });
    let nats = EphemeralNats::start().await?;
    let db = ScratchDatabase::create(&admin_url, "copilot_bench").await?;
    eprintln!(
        "bench: nats-server on {}, scratch database {}",
        nats.url(),
        db.name
    );
    let mut settings = settings;
    settings.nats.url = Some(nats.url());
    settings.database.url = Some(db.url.clone());
    settings.http.listen = "127.0.0.1:0".parse()?;
    // A benchmark is one tenant sending as fast as it can: per-tenant limits would measure themselves.
    settings.limits.webhook_rate_per_sec = 0;
    settings.limits.api_rate_per_sec = 0;
    settings
        .jwt
        .secret
        .get_or_insert_with(|| copilot_runtime::auth::generate_secret().into());
    Ok((nats, db, settings))
}

/// Prints a benchmark's report: pretty JSON with `--json`, else as `print` lays it out.
pub(crate) fn emit<R: Serialize>(report: &R, json: bool, print: fn(&R)) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print(report);
    }
    Ok(())
}

pub async fn ingest(settings: Settings, args: IngestArgs) -> anyhow::Result<()> {
    let (_nats, _db, settings) = scratch(settings, args.admin_url.clone()).await?;
    let report = run(settings, &args).await?;
    emit(&report, args.json, print_report)
}

async fn run(settings: Settings, args: &IngestArgs) -> anyhow::Result<IngestReport> {
    let app = App::start(settings, Services::HttpOnly).await?;
    let ctx = app.ctx.clone();
    let tenant = crate::cli::create_tenant(&ctx, "bench", "Bench", "bench").await?;
    let url = format!("{}/v1/webhooks/alertmanager", app.url());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let alerts = args.webhooks * args.alerts_per_webhook;

    // 1. Gateway throughput.
    let bodies: Vec<Vec<u8>> = (0..args.webhooks)
        .map(|i| notification(i, args.alerts_per_webhook, 0))
        .collect();
    let (gateway_secs, _) = drive_gateway(
        &client,
        &url,
        &tenant.webhook_token,
        bodies,
        args.concurrency,
        "gateway",
    )
    .await?;

    // 2. The same events straight to JetStream.
    let events = raw_events(args.webhooks, args.alerts_per_webhook, 0);
    let bar = progress(events.len() as u64, "raw jetstream");
    let started = Instant::now();
    let mut acks = FuturesUnordered::new();
    for (subject, id, payload) in events {
        let message = PublishMessage::build()
            .payload(payload.into())
            .message_id(id);
        acks.push(ctx.js.send_publish(subject, message).await?.into_future());
        if acks.len() >= 1024 {
            acks.next()
                .await
                .expect("not empty")
                .context("raw append")?;
            bar.inc(1);
        }
    }
    while let Some(ack) = acks.next().await {
        ack.context("raw append")?;
        bar.inc(1);
    }
    let raw_secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();

    // 3. Projector on the backlog.
    let target = last_seq(&ctx).await?;
    let bar = progress(target, "projector");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let projector = tokio::spawn(copilot_projector::serve(ctx.clone(), shutdown.clone()));
    loop {
        let at = ctx
            .store
            .read_checkpoint(Projection::Signals.name())
            .await?;
        bar.set_position(at);
        if at >= target {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let projector_secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();

    // 4. Alert-to-row latency at steady rates, with the projector running.
    let mut latency = Vec::new();
    for (round, rate) in args.rates.iter().enumerate() {
        latency.push(steady(&ctx, &url, &tenant.webhook_token, *rate, args, round + 1).await?);
    }
    shutdown.cancel();
    let _ = projector.await;
    app.stop().await;

    Ok(IngestReport {
        alerts,
        gateway_alerts_per_sec: alerts as f64 / gateway_secs,
        raw_jetstream_events_per_sec: alerts as f64 / raw_secs,
        gateway_share_of_raw: raw_secs / gateway_secs,
        projector_events: target,
        projector_events_per_sec: target as f64 / projector_secs,
        latency,
    })
}

/// POSTs `bodies` with `concurrency` in flight; every answer must be 202. Returns the seconds it
/// took and the latency of each webhook (µs).
pub(crate) async fn drive_gateway(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    bodies: Vec<Vec<u8>>,
    concurrency: usize,
    label: &str,
) -> anyhow::Result<(f64, Histogram<u64>)> {
    let bar = progress(bodies.len() as u64, label);
    let mut latency = latency_histogram();
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut sent = bodies.into_iter();
    loop {
        while in_flight.len() < concurrency {
            let Some(body) = sent.next() else { break };
            let request = client
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body);
            in_flight.push(async move {
                let at = Instant::now();
                (request.send().await, at.elapsed())
            });
        }
        let Some((result, took)) = in_flight.next().await else {
            break;
        };
        let response = result.context("posting a webhook")?;
        anyhow::ensure!(
            response.status() == 202,
            "the gateway answered {}",
            response.status()
        );
        latency.record(took.as_micros().max(1) as u64).ok();
        bar.inc(1);
    }
    let secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    Ok((secs, latency))
}

async fn steady(
    ctx: &Context,
    url: &str,
    token: &str,
    rate: u32,
    args: &IngestArgs,
    round: usize,
) -> anyhow::Result<LatencyReport> {
    let per_webhook = args.alerts_per_webhook as u64;
    let (count, interval) = schedule(rate, args);
    let base = last_seq(ctx).await?;
    // (when the webhook was due, a stream sequence its alerts cannot be past), as 202s arrive.
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, u64)>();
    // The watcher runs on a thread and connection of its own, polling the checkpoint every
    // 500 µs: fine enough to measure milliseconds, light enough not to take the system's CPU.
    let watcher = {
        let url = ctx.settings.database.url();
        std::thread::spawn(move || -> anyhow::Result<Histogram<u64>> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let store = copilot_store::Store::connect(&url, 1).await?;
                let mut histogram = latency_histogram();
                let mut waiting = Vec::new();
                let mut closed = false;
                while !(closed && waiting.is_empty()) {
                    loop {
                        match sent_rx.try_recv() {
                            Ok(item) => waiting.push(item),
                            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                                closed = true;
                                break;
                            }
                        }
                    }
                    if waiting.is_empty() {
                        std::thread::sleep(Duration::from_micros(500));
                        continue;
                    }
                    let at = store.read_checkpoint(Projection::Signals.name()).await?;
                    let now = Instant::now();
                    waiting.retain(|(due, seq)| {
                        if *seq > at {
                            return true;
                        }
                        histogram
                            .record(now.duration_since(*due).as_micros().max(1) as u64)
                            .ok();
                        false
                    });
                    std::thread::sleep(Duration::from_micros(500));
                }
                anyhow::Ok(histogram)
            })
        })
    };
    let bar = progress(count, &format!("latency @ {rate}/s"));
    let (url, token, progress_bar) = (url.to_owned(), token.to_owned(), bar.clone());
    let started_webhooks = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (accepted, elapsed) = open_loop(
        count,
        interval,
        || async {
            Ok(reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()?)
        },
        move |client, i, due| {
            let request = client
                .post(&url)
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(notification(i as usize, per_webhook as usize, round));
            started_webhooks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (started_webhooks, sent_tx, bar) = (
                started_webhooks.clone(),
                sent_tx.clone(),
                progress_bar.clone(),
            );
            async move {
                let response = request.send().await?;
                anyhow::ensure!(
                    response.status() == 202,
                    "the gateway answered {}",
                    response.status()
                );
                // Only webhooks already sent can have appended, so this one's alerts are at or
                // below the last alert of all of them: exact when they do not overlap, else a
                // little later, which can only lengthen the latency.
                let sent = started_webhooks.load(std::sync::atomic::Ordering::SeqCst);
                let _ = sent_tx.send((due, base + sent * per_webhook));
                bar.inc(1);
                Ok(())
            }
        },
    )
    .await?;
    let histogram = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || watcher.join()),
    )
    .await
    .context("the projector did not catch up within 60s")??
    .map_err(|_| anyhow::anyhow!("the latency watcher panicked"))??;
    bar.finish_and_clear();
    let floor = jetstream_steady(ctx, rate, args, round).await?;
    Ok(LatencyReport {
        target_alerts_per_sec: rate,
        achieved_alerts_per_sec: (count * per_webhook) as f64 / elapsed,
        webhooks: count,
        p50_ms: ms(histogram.value_at_quantile(0.50)),
        p99_ms: ms(histogram.value_at_quantile(0.99)),
        max_ms: ms(histogram.max()),
        accepted_p50_ms: ms(accepted.value_at_quantile(0.50)),
        accepted_p99_ms: ms(accepted.value_at_quantile(0.99)),
        jetstream_p50_ms: ms(floor.value_at_quantile(0.50)),
        jetstream_p99_ms: ms(floor.value_at_quantile(0.99)),
    })
}

/// How many webhooks a steady rate sends and how far apart: `rate` alerts/s for `--seconds`.
fn schedule(rate: u32, args: &IngestArgs) -> (u64, Duration) {
    let per_webhook = args.alerts_per_webhook as u64;
    let count = (u64::from(rate) * args.seconds / per_webhook).max(1);
    let interval = Duration::from_secs_f64(per_webhook as f64 / f64::from(rate));
    (count, interval)
}

/// Runs `count` tasks on a fixed schedule, one every `interval`, open loop: each starts when due,
/// whether or not earlier ones have finished, and is timed from when it was due until it finishes
/// (µs). A sender that waited for each answer would send less exactly when the system is slow, and
/// hide that slowness (coordinated omission). Runs on a thread and runtime of its own, as a
/// sender that is another process would: a busy worker of the system's runtime delays the
/// system, not the schedule. The schedule is kept by the thread's own sleeps, since tokio's timer
/// ticks in whole milliseconds and would add up to one to every measurement. `setup` makes what
/// the tasks share (a client, a connection) on that runtime. Returns the times and the seconds
/// the schedule took.
async fn open_loop<S, Setup, SetupFut, Task, TaskFut>(
    count: u64,
    interval: Duration,
    setup: Setup,
    mut task: Task,
) -> anyhow::Result<(Histogram<u64>, f64)>
where
    S: Send + 'static,
    Setup: FnOnce() -> SetupFut + Send + 'static,
    SetupFut: std::future::Future<Output = anyhow::Result<S>>,
    Task: FnMut(&S, u64, Instant) -> TaskFut + Send + 'static,
    TaskFut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let sender = std::thread::spawn(move || -> anyhow::Result<(Histogram<u64>, f64)> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let shared = runtime.block_on(setup())?;
        let _entered = runtime.enter();
        let mut in_flight = tokio::task::JoinSet::new();
        let started = Instant::now();
        for i in 0..count {
            let due = started + interval * i as u32;
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let work = task(&shared, i, due);
            in_flight.spawn(async move { work.await.map(|()| due.elapsed()) });
        }
        let elapsed = started.elapsed().as_secs_f64();
        drop(task);
        runtime.block_on(async move {
            let mut times = latency_histogram();
            while let Some(took) = in_flight.join_next().await {
                let took = took.context("a sender task panicked")??;
                times.record(took.as_micros().max(1) as u64).ok();
            }
            anyhow::Ok((times, elapsed))
        })
    });
    tokio::task::spawn_blocking(move || sender.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the sender thread panicked"))?
}

/// A histogram of latencies in µs, from 1 µs to a minute, to 3 significant digits.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// Appends the events of `rate`'s webhooks straight to JetStream on the same schedule as
/// `steady`, open loop, from a thread, runtime and NATS connection of its own (as another
/// process would); returns each webhook's time from due to its last ack (µs).
async fn jetstream_steady(
    ctx: &Context,
    rate: u32,
    args: &IngestArgs,
    round: usize,
) -> anyhow::Result<Histogram<u64>> {
    let per_webhook = args.alerts_per_webhook;
    let (count, interval) = schedule(rate, args);
    let webhooks: Vec<Vec<_>> = raw_events(count as usize, per_webhook, 100 + round)
        .chunks(per_webhook)
        .map(<[_]>::to_vec)
        .collect();
    let nats_url = ctx.settings.nats.url();
    let bar = progress(count, &format!("jetstream @ {rate}/s"));
    let progress_bar = bar.clone();
    let mut webhooks = webhooks.into_iter();
    let (latency, _) = open_loop(
        count,
        interval,
        || async move {
            Ok(async_nats::jetstream::new(
                async_nats::connect(&nats_url).await?,
            ))
        },
        move |js, _, _| {
            let events = webhooks.next().unwrap_or_default();
            let (js, bar) = (js.clone(), progress_bar.clone());
            async move {
                let mut acks = Vec::with_capacity(events.len());
                for (subject, id, payload) in events {
                    let message = PublishMessage::build()
                        .payload(payload.into())
                        .message_id(id);
                    acks.push(js.send_publish(subject, message).await?);
                }
                for ack in acks {
                    ack.await?;
                }
                bar.inc(1);
                Ok(())
            }
        },
    )
    .await?;
    bar.finish_and_clear();
    Ok(latency)
}

async fn last_seq(ctx: &Context) -> anyhow::Result<u64> {
    Ok(
        copilot_runtime::nats::stream_state(&ctx.js, subjects::SIGNALS)
            .await?
            .last_sequence,
    )
}

const SERVICES: [&str; 20] = [
    "checkout",
    "payments",
    "search",
    "cart",
    "catalog",
    "auth",
    "gateway",
    "orders",
    "inventory",
    "shipping",
    "email",
    "notifications",
    "recommendations",
    "reviews",
    "pricing",
    "billing",
    "profile",
    "ads",
    "media",
    "reports",
];
const ALERTS: [(&str, &str); 5] = [
    ("HighErrorRate", "critical"),
    ("HighLatencyP99", "warning"),
    ("PodCrashLooping", "critical"),
    ("CPUThrottlingHigh", "info"),
    ("KubeDeploymentReplicasMismatch", "warning"),
];

/// A realistic Alertmanager v4 notification: one group of `alerts` firing alerts for one
/// service, each with the labels and annotations kube-prometheus rules carry. `salt` keeps
/// alert instances of different runs apart.
pub(crate) fn notification(index: usize, alerts: usize, salt: usize) -> Vec<u8> {
    let service = SERVICES[index % SERVICES.len()];
    let (alertname, severity) = ALERTS[(index / SERVICES.len()) % ALERTS.len()];
    let alerts: Vec<_> = (0..alerts)
        .map(|i| {
            let pod = format!("{service}-{index:x}-{i}");
            serde_json::json!({
                "status": "firing",
                "labels": {
                    "alertname": alertname, "service": service, "severity": severity, "namespace": "prod",
                    "pod": pod, "instance": format!("10.0.{}.{}:8080", index % 250, i), "job": service,
                    "cluster": "eu-west-1", "prometheus": "monitoring/k8s", "run": salt.to_string(),
                },
                "annotations": {
                    "summary": format!("{alertname} on {service}"),
                    "description": format!("{pod} of {service} has been in {alertname} for more than 5 minutes."),
                    "runbook_url": format!("https://runbooks.example.com/{alertname}"),
                },
                "startsAt": "2026-11-22T08:00:00.000Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": format!("http://prometheus:9090/graph?g0.expr=up%7Bjob%3D%22{service}%22%7D"),
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "version": "4", "status": "firing", "receiver": "copilot", "truncatedAlerts": 0,
        "groupKey": format!("{{}}:{{alertname=\"{alertname}\", service=\"{service}\"}}"),
        "groupLabels": {"alertname": alertname, "service": service},
        "commonLabels": {"alertname": alertname, "service": service, "severity": severity},
        "commonAnnotations": {}, "externalURL": "http://alertmanager:9093", "alerts": alerts,
    }))
    .expect("json serializes")
}

/// The events the gateway would append for `webhooks` notifications (`salt` as in
/// [`notification`]), for another tenant so they are new: `(subject, Nats-Msg-Id, envelope bytes)`.
fn raw_events(webhooks: usize, per_webhook: usize, salt: usize) -> Vec<(String, String, Vec<u8>)> {
    let tenant = "bench-raw";
    let subject = subjects::signal(tenant, SignalSource::Alertmanager.as_str());
    let now = chrono::Utc::now();
    (0..webhooks)
        .flat_map(|i| {
            copilot_gateway::parse::parse(
                SignalSource::Alertmanager,
                &notification(i, per_webhook, salt),
            )
            .expect("bench payloads parse")
        })
        .map(|signal: SignalReceived| {
            let id = signal.message_id(tenant);
            let envelope = Envelope::new(tenant, &signal, now, Headers::default());
            debug_assert_eq!(envelope.event_type, SignalReceived::TYPE);
            (subject.clone(), id, envelope.to_bytes())
        })
        .collect()
}

pub(crate) fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>18} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

fn print_report(r: &IngestReport) {
    println!(
        "ingest benchmark ({} alerts in realistic Alertmanager notifications)",
        r.alerts
    );
    println!(
        "  gateway, acked by JetStream   {:>10.0} alerts/s",
        r.gateway_alerts_per_sec
    );
    println!(
        "  raw JetStream append          {:>10.0} events/s",
        r.raw_jetstream_events_per_sec
    );
    println!(
        "  gateway / raw                 {:>10.2}",
        r.gateway_share_of_raw
    );
    println!(
        "  projector into Postgres       {:>10.0} events/s ({} events)",
        r.projector_events_per_sec, r.projector_events
    );
    for l in &r.latency {
        println!(
            "  alert-to-row @ {:>5}/s (got {:>6.0}/s, {} webhooks)  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (of which webhook to 202: p50 {:.2} ms  p99 {:.2} ms; JetStream alone: p50 {:.2} ms  p99 {:.2} ms)",
            l.target_alerts_per_sec,
            l.achieved_alerts_per_sec,
            l.webhooks,
            l.p50_ms,
            l.p99_ms,
            l.max_ms,
            l.accepted_p50_ms,
            l.accepted_p99_ms,
            l.jetstream_p50_ms,
            l.jetstream_p99_ms
        );
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct InstrumentationArgs {
    /// Webhooks per round and mode
    #[arg(long, default_value_t = 2_000)]
    pub webhooks: usize,
    /// Alerts per webhook
    #[arg(long, default_value_t = 10)]
    pub alerts_per_webhook: usize,
    /// Webhooks in flight at once
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Rounds; each runs both modes, in alternating order
    #[arg(long, default_value_t = 4)]
    pub rounds: usize,
    /// Postgres server to create the scratch database on [default: as for `bench ingest`]
    #[arg(long, env = "COPILOT_BENCH_ADMIN_URL")]
    pub admin_url: Option<String>,
    /// Print the results as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct InstrumentationReport {
    pub alerts_per_round: usize,
    pub rounds: usize,
    pub instrumented_alerts_per_sec: f64,
    pub bare_alerts_per_sec: f64,
    pub instrumented_p99_ms: f64,
    pub bare_p99_ms: f64,
    /// Throughput lost to request ids, trace context and metrics, in percent.
    pub throughput_overhead_percent: f64,
    pub p99_overhead_percent: f64,
}

/// `copilot bench instrumentation`: the gateway with and without its instrumentation layer
/// (request ids, W3C trace context, HTTP metrics), side by side in one process against the same
/// NATS and database, rounds alternating which goes first.
pub async fn instrumentation(settings: Settings, args: InstrumentationArgs) -> anyhow::Result<()> {
    let (_nats, _db, settings) = scratch(settings, args.admin_url.clone()).await?;
    let mut bare_settings = settings.clone();
    bare_settings.http.instrumentation = false;
    let instrumented = App::start(settings, Services::HttpOnly).await?;
    let bare = App::start(bare_settings, Services::HttpOnly).await?;
    let tenant = crate::cli::create_tenant(&instrumented.ctx, "bench", "Bench", "bench").await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let mut totals = [(0.0f64, latency_histogram()), (0.0, latency_histogram())];
    for round in 0..args.rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for mode in order {
            let app = if mode == 0 { &instrumented } else { &bare };
            let salt = 1_000 + round * 2 + mode;
            let bodies = (0..args.webhooks)
                .map(|i| notification(i, args.alerts_per_webhook, salt))
                .collect();
            let label = if mode == 0 { "instrumented" } else { "bare" };
            let (secs, latency) = drive_gateway(
                &client,
                &format!("{}/v1/webhooks/alertmanager", app.url()),
                &tenant.webhook_token,
                bodies,
                args.concurrency,
                label,
            )
            .await?;
            totals[mode].0 += secs;
            totals[mode].1.add(&latency).ok();
        }
    }
    instrumented.stop().await;
    bare.stop().await;
    let alerts = (args.webhooks * args.alerts_per_webhook * args.rounds) as f64;
    let rate = |mode: usize| alerts / totals[mode].0;
    let p99 = |mode: usize| totals[mode].1.value_at_quantile(0.99) as f64 / 1000.0;
    let report = InstrumentationReport {
        alerts_per_round: args.webhooks * args.alerts_per_webhook,
        rounds: args.rounds,
        instrumented_alerts_per_sec: rate(0),
        bare_alerts_per_sec: rate(1),
        instrumented_p99_ms: p99(0),
        bare_p99_ms: p99(1),
        throughput_overhead_percent: (rate(1) - rate(0)) / rate(1) * 100.0,
        p99_overhead_percent: (p99(0) - p99(1)) / p99(1) * 100.0,
    };
    emit(&report, args.json, print_instrumentation)
}

fn print_instrumentation(report: &InstrumentationReport) {
    println!(
        "gateway with and without instrumentation ({} rounds of {} alerts each)",
        report.rounds, report.alerts_per_round
    );
    println!(
        "  instrumented  {:>8.0} alerts/s   p99 {:>6.2} ms per webhook",
        report.instrumented_alerts_per_sec, report.instrumented_p99_ms
    );
    println!(
        "  bare          {:>8.0} alerts/s   p99 {:>6.2} ms per webhook",
        report.bare_alerts_per_sec, report.bare_p99_ms
    );
    println!(
        "  overhead      {:>7.1}% throughput, {:+.1}% p99",
        report.throughput_overhead_percent, report.p99_overhead_percent
    );
}
