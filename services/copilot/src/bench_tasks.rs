//! `copilot bench tasks`: tasks dispatched per second and claim latency with N native workers,
//! beside the floor measured in the same run (a bare JetStream work queue: publish, pull, ack,
//! with as many pullers), on a scratch nats-server and database of its own.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull, stream};
use copilot_commands::NewTask;
use copilot_events::Headers;
use copilot_runtime::Settings;
use futures::StreamExt as _;
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::app::{App, Services};

#[derive(clap::Args, Debug, Clone)]
pub struct TasksArgs {
    /// Tasks dispatched (kind `echo`, no sleep)
    #[arg(long, default_value_t = 2_000)]
    pub tasks: usize,
    /// Native workers, each running one task at a time
    #[arg(long, default_value_t = 4)]
    pub workers: u32,
    /// Then, with the workers idle: tasks created one at a time at this rate, for claim latency
    #[arg(long, default_value_t = 20)]
    pub rate: u32,
    /// How many tasks the steady phase creates
    #[arg(long, default_value_t = 200)]
    pub steady: usize,
    /// Postgres server to create the scratch database on [default: DATABASE_URL's server, else the local one]
    #[arg(long, env = "COPILOT_BENCH_ADMIN_URL")]
    pub admin_url: Option<String>,
    /// Print the results as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct TasksReport {
    pub tasks: usize,
    pub workers: u32,
    /// Tasks created (event appended and queued) per second, one creator.
    pub created_per_sec: f64,
    /// Tasks run to `succeeded` per second, from the first claim to the last completion.
    pub dispatched_per_sec: f64,
    /// Backlog: from the workers' start (or a task's creation, if later) to its claim.
    pub backlog_wait_p50_ms: f64,
    pub backlog_wait_p99_ms: f64,
    /// Steady phase: tasks created at `rate`/s into idle workers, creation to claim (event times).
    pub rate: u32,
    pub claim_latency_p50_ms: f64,
    pub claim_latency_p99_ms: f64,
    /// The floor: a bare JetStream work queue (publish, then as many pullers fetching and
    /// acking one message at a time), messages per second.
    pub raw_queue_per_sec: f64,
    /// `dispatched_per_sec` over `raw_queue_per_sec`.
    pub share_of_raw: f64,
}

pub async fn tasks(settings: Settings, args: TasksArgs) -> anyhow::Result<()> {
    let (_nats, _db, mut settings) =
        crate::bench::scratch(settings, args.admin_url.clone()).await?;
    settings.tasks.task_lease_secs = 30;
    let report = run(settings, &args).await?;
    crate::bench::emit(&report, args.json, print_report)
}

async fn run(settings: Settings, args: &TasksArgs) -> anyhow::Result<TasksReport> {
    let app = App::start(settings, Services::All).await?;
    let ctx = app.ctx.clone();
    crate::cli::create_tenant(&ctx, "bench", "Bench", "bench").await?;
    let raw_queue_per_sec = raw_queue(&ctx.js, args.tasks, args.workers).await?;

    // Created first, all at once, so that dispatch is timed alone.
    let bar = crate::bench::progress(args.tasks as u64, "create");
    let started = Instant::now();
    for _ in 0..args.tasks {
        copilot_commands::create_task(&ctx.js, "bench", "bench", echo(), Headers::default())
            .await?;
        bar.inc(1);
    }
    let created_per_sec = args.tasks as f64 / started.elapsed().as_secs_f64();
    bar.finish_and_clear();

    let shutdown = CancellationToken::new();
    let bar = crate::bench::progress(args.tasks as u64, "dispatch");
    let workers: Vec<_> = (0..args.workers)
        .map(|i| {
            let worker = crate::worker::WorkerArgs {
                tenants: vec!["bench".into()],
                kinds: vec!["echo".into()],
                capacity: 1,
                name: Some(format!("bench-{i}")),
                drain_secs: 5,
            };
            tokio::spawn(crate::worker::serve(ctx.clone(), worker, shutdown.clone()))
        })
        .collect();
    let filter = copilot_store::TaskFilter {
        status: Some("succeeded".into()),
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    let succeeded = loop {
        let mut tx = ctx.store.begin_tenant("bench").await?;
        let done = ctx
            .store
            .list_tasks(&mut tx, "bench", &filter, None, args.tasks as u32 + 1)
            .await?;
        bar.set_position(done.len() as u64);
        if done.len() >= args.tasks {
            break done;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {} tasks succeeded within 10 minutes",
            done.len(),
            args.tasks
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    bar.finish_and_clear();

    // Steady: one task every 1/rate s into idle workers; creation to claim is the claim latency.
    let steady_from = chrono::Utc::now();
    let mut ticks =
        tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1))));
    for _ in 0..args.steady {
        ticks.tick().await;
        copilot_commands::create_task(&ctx.js, "bench", "bench", echo(), Headers::default())
            .await?;
    }
    let everything = args.tasks + args.steady;
    let steady = loop {
        let mut tx = ctx.store.begin_tenant("bench").await?;
        let done = ctx
            .store
            .list_tasks(&mut tx, "bench", &filter, None, everything as u32 + 1)
            .await?;
        if done.len() >= everything {
            break done
                .into_iter()
                .filter(|t| t.created_at >= steady_from)
                .collect::<Vec<_>>();
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {everything} tasks succeeded within 10 minutes",
            done.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut latencies: Vec<f64> = steady
        .iter()
        .filter_map(|t| Some((t.claimed_at? - t.created_at).num_microseconds()? as f64 / 1000.0))
        .collect();
    latencies.sort_by(f64::total_cmp);
    shutdown.cancel();
    for w in workers {
        w.await.context("a worker panicked")??;
    }
    let first_claim = succeeded
        .iter()
        .filter_map(|t| t.claimed_at)
        .min()
        .context("no claim")?;
    let last_done = succeeded
        .iter()
        .filter_map(|t| t.finished_at)
        .max()
        .context("no completion")?;
    let dispatch_secs = ((last_done - first_claim).num_milliseconds().max(1)) as f64 / 1000.0;
    // Claim latency counts from the later of creation and the workers' start: every task was
    // created before any worker ran.
    let mut waits: Vec<f64> = succeeded
        .iter()
        .filter_map(|t| {
            let from = t.created_at.max(first_claim);
            Some((t.claimed_at? - from).num_microseconds()? as f64 / 1000.0)
        })
        .collect();
    waits.sort_by(f64::total_cmp);
    let at = |q: f64| quantile(&waits, q);
    let dispatched_per_sec = args.tasks as f64 / dispatch_secs;
    app.stop().await;
    Ok(TasksReport {
        tasks: args.tasks,
        workers: args.workers,
        created_per_sec,
        dispatched_per_sec,
        backlog_wait_p50_ms: at(0.5),
        backlog_wait_p99_ms: at(0.99),
        rate: args.rate,
        claim_latency_p50_ms: quantile(&latencies, 0.5),
        claim_latency_p99_ms: quantile(&latencies, 0.99),
        raw_queue_per_sec,
        share_of_raw: dispatched_per_sec / raw_queue_per_sec,
    })
}

/// The floor: `n` messages through a bare work-queue stream, `pullers` consumers of one durable
/// fetching and acking one at a time, as a worker claims.
async fn raw_queue(js: &jetstream::Context, n: usize, pullers: u32) -> anyhow::Result<f64> {
    let stream = js
        .get_or_create_stream(stream::Config {
            name: "BENCHQUEUE".into(),
            subjects: vec!["benchqueue.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await?;
    for i in 0..n {
        js.publish("benchqueue.x", format!("{i}").into())
            .await?
            .await?;
    }
    let consumer: jetstream::consumer::Consumer<pull::Config> = stream
        .get_or_create_consumer(
            "bench",
            pull::Config {
                durable_name: Some("bench".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await?;
    let started = Instant::now();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut pulls = tokio::task::JoinSet::new();
    for _ in 0..pullers {
        let (consumer, done) = (consumer.clone(), done.clone());
        pulls.spawn(async move {
            while done.load(std::sync::atomic::Ordering::Relaxed) < n {
                let mut batch = consumer
                    .fetch()
                    .max_messages(1)
                    .expires(Duration::from_millis(100))
                    .messages()
                    .await?;
                while let Some(message) = batch.next().await {
                    let message = message.map_err(|e| anyhow::anyhow!(e))?;
                    message.double_ack().await.map_err(|e| anyhow::anyhow!(e))?;
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = pulls.join_next().await {
        r??;
    }
    let per_sec = n as f64 / started.elapsed().as_secs_f64();
    js.delete_stream("BENCHQUEUE").await?;
    Ok(per_sec)
}

fn print_report(r: &TasksReport) {
    println!(
        "tasks: {} echo tasks, {} native workers (one task at a time each)",
        r.tasks, r.workers
    );
    println!("  created             {:>10.0} tasks/s", r.created_per_sec);
    println!(
        "  dispatched          {:>10.0} tasks/s  ({:.2} of the bare work queue)",
        r.dispatched_per_sec, r.share_of_raw
    );
    println!(
        "  backlog wait        p50 {:.1} ms, p99 {:.1} ms (workers' start to claim)",
        r.backlog_wait_p50_ms, r.backlog_wait_p99_ms
    );
    println!(
        "  claim latency       p50 {:.1} ms, p99 {:.1} ms (created at {}/s into idle workers)",
        r.claim_latency_p50_ms, r.claim_latency_p99_ms, r.rate
    );
    println!(
        "  floor: bare JetStream work queue {:>10.0} msgs/s (publish, pull one, ack)",
        r.raw_queue_per_sec
    );
}

fn echo() -> NewTask {
    NewTask {
        kind: "echo".into(),
        input: json!({}),
        priority: 5,
        timeout_secs: 60,
        max_attempts: 1,
        incident_id: None,
    }
}

/// The `q` quantile of sorted values (0 when there are none).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
