//! `copilot bench incidents`: the incident path on this machine, against a nats-server and a
//! Postgres database of its own:
//!
//! 1. correlator: a storm of alerts across many services, appended to SIGNALS beforehand, decided
//!    into incidents by the correlator alone, signals/s;
//! 2. projector: the decisions folded into the incident read models by the incidents projection
//!    alone, events/s (and signals/s);
//! 3. reads: `GET /v1/incidents` over HTTP against a read model of 100k incidents and 1M signals
//!    (synthetic rows), p50/p99 per kind of query, and the plan of the main query.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::message::PublishMessage;
use copilot_events::{Envelope, Headers, Role, SignalSource, subjects};
use copilot_projector::Projection;
use copilot_runtime::{Context, Settings, nats};
use copilot_store::{IncidentFilter, IncidentSort};
use futures::{StreamExt as _, stream::FuturesUnordered};
use serde::Serialize;

use crate::{
    app::{App, Services},
    bench::{progress, scratch},
};

#[derive(clap::Args, Debug, Clone)]
pub struct IncidentsArgs {
    /// Alerts in the storm
    #[arg(long, default_value_t = 20_000)]
    pub storm: usize,
    /// Services the storm's alerts come from (one incident each, by the default rule)
    #[arg(long, default_value_t = 20)]
    pub services: usize,
    /// Incidents in the read model for the list queries
    #[arg(long, default_value_t = 100_000)]
    pub incidents: i64,
    /// Signals per incident in the read model for the list queries
    #[arg(long, default_value_t = 10)]
    pub signals_per_incident: i32,
    /// Requests per kind of list query
    #[arg(long, default_value_t = 300)]
    pub requests: usize,
    /// Postgres server to create the scratch database on [default: as for `bench ingest`]
    #[arg(long, env = "COPILOT_BENCH_ADMIN_URL")]
    pub admin_url: Option<String>,
    /// Print the results as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct IncidentsReport {
    pub storm_alerts: usize,
    pub incidents_opened: i64,
    pub correlator_signals_per_sec: f64,
    pub projector_events: u64,
    pub projector_events_per_sec: f64,
    pub projector_signals_per_sec: f64,
    pub read_model_incidents: i64,
    pub read_model_signals: i64,
    pub list: Vec<QueryLatency>,
    pub plan: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct QueryLatency {
    pub query: String,
    pub requests: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub async fn incidents(settings: Settings, args: IncidentsArgs) -> anyhow::Result<()> {
    let (_nats, _db, settings) = scratch(settings, args.admin_url.clone()).await?;
    let report = run(settings, &args).await?;
    crate::bench::emit(&report, args.json, print_report)
}

async fn run(settings: Settings, args: &IncidentsArgs) -> anyhow::Result<IncidentsReport> {
    let app = App::start(settings, Services::HttpOnly).await?;
    let ctx = app.ctx.clone();
    crate::cli::create_tenant(&ctx, "storm", "Storm", "bench").await?;
    crate::cli::create_tenant(&ctx, "bench", "Bench", "bench").await?;

    // The storm, appended straight to SIGNALS so that the correlator is timed alone.
    append_storm(&ctx, args).await?;
    let target = nats::stream_state(&ctx.js, subjects::SIGNALS)
        .await?
        .last_sequence;

    // 1. The correlator alone.
    let shutdown = tokio_util::sync::CancellationToken::new();
    let bar = progress(target, "correlator");
    let started = Instant::now();
    let correlator = tokio::spawn(copilot_correlator::serve(ctx.clone(), shutdown.clone()));
    wait_for(&ctx, "correlator-signals", target, &bar).await?;
    let correlator_secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    shutdown.cancel();
    correlator.await.context("the correlator panicked")??;

    // 2. The incidents projection alone.
    let decisions = nats::stream_state(&ctx.js, subjects::INCIDENTS)
        .await?
        .last_sequence;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let bar = progress(decisions, "projector");
    let started = Instant::now();
    let projector = tokio::spawn(copilot_projector::serve_only(
        ctx.clone(),
        &[Projection::Incidents],
        shutdown.clone(),
    ));
    wait_for(&ctx, Projection::Incidents.name(), decisions, &bar).await?;
    let projector_secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    shutdown.cancel();
    projector.await.context("the projector panicked")??;
    let (opened, attached) = ctx.store.incident_totals("storm").await?;
    anyhow::ensure!(
        attached as usize == args.storm,
        "the storm's {} alerts should all be attached, {attached} are",
        args.storm
    );

    // 3. List queries against a large read model.
    eprintln!(
        "bench: seeding {} incidents with {} signals each",
        args.incidents, args.signals_per_incident
    );
    ctx.store
        .seed_bench_incidents("bench", args.incidents, args.signals_per_incident)
        .await?;
    let (incidents, signals) = ctx.store.incident_totals("bench").await?;
    let jwt = crate::admin::user_token(
        &app.ctx,
        &app.jwt,
        "bench",
        copilot_commands::FIRST_ADMIN,
        Role::Viewer,
        Duration::from_secs(3600),
    )
    .await?;
    let client = reqwest::Client::new();
    let mut list = Vec::new();
    for query in [
        "limit=50",
        "limit=50&state=detected",
        "limit=50&open=true&sort=severity",
        "limit=50&service=svc42",
        "limit=50&label=cluster%3Dc3",
        "limit=50&q=crashlooping",
        "limit=50&since=2026-03-01T00:00:00Z&until=2026-04-01T00:00:00Z",
        "limit=50&sort=updated",
    ] {
        list.push(time_query(&client, &app.url(), &jwt, query, args.requests).await?);
    }
    let plan = ctx
        .store
        .explain_list_incidents(
            &mut ctx.store.begin().await?,
            "bench",
            &IncidentFilter::default(),
            IncidentSort::Newest,
            51,
        )
        .await?;
    app.stop().await;
    Ok(IncidentsReport {
        storm_alerts: args.storm,
        incidents_opened: opened,
        correlator_signals_per_sec: args.storm as f64 / correlator_secs,
        projector_events: decisions,
        projector_events_per_sec: decisions as f64 / projector_secs,
        projector_signals_per_sec: args.storm as f64 / projector_secs,
        read_model_incidents: incidents,
        read_model_signals: signals,
        list,
        plan,
    })
}

async fn wait_for(
    ctx: &Context,
    checkpoint: &str,
    target: u64,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let reached = ctx
        .store
        .wait_for_checkpoint(checkpoint, target, Duration::from_secs(600), |at| {
            bar.set_position(at)
        })
        .await?;
    anyhow::ensure!(reached, "{checkpoint} did not reach {target} in 10 minutes");
    Ok(())
}

/// `storm` firing alerts of tenant `storm`, round-robin across `services` services, in
/// notifications of 50 as Alertmanager would group them.
async fn append_storm(ctx: &Context, args: &IncidentsArgs) -> anyhow::Result<()> {
    let bar = progress(args.storm as u64, "storm");
    let subject = subjects::signal("storm", SignalSource::Alertmanager.as_str());
    let now = chrono::Utc::now();
    let mut acks = FuturesUnordered::new();
    let mut index = 0;
    while index < args.storm {
        let service = format!("svc{:03}", (index / 50) % args.services.max(1));
        let alerts: Vec<_> = (index..(index + 50).min(args.storm))
            .map(|i| {
                let severity = ["warning", "critical", "info"][i % 3];
                serde_json::json!({
                    "status": "firing",
                    "labels": {"alertname": format!("Alert{}", i % 97), "service": service,
                               "severity": severity, "pod": format!("pod-{i}")},
                    "annotations": {"summary": format!("alert {i} on {service}")},
                    "startsAt": "2026-11-22T08:00:00Z",
                    "endsAt": "0001-01-01T00:00:00Z",
                })
            })
            .collect();
        index += alerts.len();
        let body = serde_json::to_vec(&serde_json::json!({
            "version": "4", "status": "firing", "receiver": "copilot", "groupKey": format!("{{}}:{{service=\"{service}\"}}"),
            "alerts": alerts,
        }))?;
        for signal in copilot_gateway::parse::parse(SignalSource::Alertmanager, &body)
            .map_err(|e| anyhow::anyhow!("storm payload: {e:?}"))?
        {
            let id = signal.message_id("storm");
            let envelope = Envelope::new("storm", &signal, now, Headers::default());
            let message = PublishMessage::build()
                .headers(nats::event_headers(&envelope))
                .payload(envelope.to_bytes().into())
                .message_id(id);
            acks.push(
                ctx.js
                    .send_publish(subject.clone(), message)
                    .await?
                    .into_future(),
            );
            if acks.len() >= 1024 {
                acks.next()
                    .await
                    .expect("not empty")
                    .context("storm append")?;
                bar.inc(1);
            }
        }
    }
    while let Some(ack) = acks.next().await {
        ack.context("storm append")?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

async fn time_query(
    client: &reqwest::Client,
    base: &str,
    jwt: &str,
    query: &str,
    requests: usize,
) -> anyhow::Result<QueryLatency> {
    let url = format!("{base}/v1/incidents?{query}");
    let mut histogram = crate::bench::latency_histogram();
    let bar = progress(requests as u64, "list");
    for _ in 0..requests {
        let started = Instant::now();
        let response = client.get(&url).bearer_auth(jwt).send().await?;
        anyhow::ensure!(
            response.status() == 200,
            "{query}: the API answered {}",
            response.status()
        );
        response.bytes().await?;
        histogram
            .record(started.elapsed().as_micros().max(1) as u64)
            .ok();
        bar.inc(1);
    }
    bar.finish_and_clear();
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(QueryLatency {
        query: query.to_owned(),
        requests,
        p50_ms: ms(histogram.value_at_quantile(0.5)),
        p99_ms: ms(histogram.value_at_quantile(0.99)),
        max_ms: ms(histogram.max()),
    })
}

fn print_report(r: &IncidentsReport) {
    println!(
        "incident benchmark ({} alerts across services, {} incidents opened)",
        r.storm_alerts, r.incidents_opened
    );
    println!(
        "  correlator                 {:>10.0} signals/s",
        r.correlator_signals_per_sec
    );
    println!(
        "  projector (incidents)      {:>10.0} events/s ({} events, {:.0} signals/s)",
        r.projector_events_per_sec, r.projector_events, r.projector_signals_per_sec
    );
    println!(
        "  GET /v1/incidents over {} incidents and {} signals:",
        r.read_model_incidents, r.read_model_signals
    );
    for q in &r.list {
        println!(
            "    {:<80} p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms",
            q.query, q.p50_ms, q.p99_ms, q.max_ms
        );
    }
    println!("  plan of the main query (newest first, no filter):");
    for line in &r.plan {
        println!("    {line}");
    }
}
