//! `copilot bench slack`: how long `/copilot` slash commands take to answer while alerts pour in,
//! beside the same commands on the same system with no alerts coming (the peer, measured in the
//! same run), and against Slack's 3-second limit. Everything `copilot up` runs is running,
//! the Slack notifier included, against a stand-in for Slack's Web API served by the bench, on a
//! scratch nats-server and database of its own.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use axum::{Json, Router, routing::post};
use copilot_commands::{NewUser, SecretValue};
use copilot_events::{Headers, Role, TenantIntegrations, TenantSlack};
use copilot_runtime::{Settings, secrets::SecretKeys};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::json;

use crate::app::{App, Services};

const TEAM: &str = "TBENCH";
const SLACK_USER: &str = "UBENCH";
const SIGNING: &str = "bench-signing-secret";

#[derive(clap::Args, Debug, Clone)]
pub struct SlackArgs {
    /// Alertmanager webhooks per second during the loaded phase (2 alerts each)
    #[arg(long, default_value_t = 200)]
    pub webhook_rate: u32,
    /// Slash commands per second, in each phase (`incidents`, `incident <id>`, `note <id> …` in turn)
    #[arg(long, default_value_t = 10)]
    pub command_rate: u32,
    /// Seconds each phase lasts
    #[arg(long, default_value_t = 30)]
    pub secs: u64,
    /// Postgres server to create the scratch database on [default: DATABASE_URL's server, else the local one]
    #[arg(long, env = "COPILOT_BENCH_ADMIN_URL")]
    pub admin_url: Option<String>,
    /// Print the results as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct Phase {
    pub commands: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Per command: (`incidents`, `incident`, `note`) p99 in ms.
    pub p99_by_command_ms: [f64; 3],
    /// INCIDENTS appends refused during the phase (a command that lost a race to another event
    /// on its incident's subject, and decided again).
    pub incident_append_conflicts: u64,
}

#[derive(Debug, Serialize)]
pub struct SlackReport {
    pub webhook_rate: u32,
    pub command_rate: u32,
    pub secs: u64,
    /// Webhooks answered 202 during the loaded phase, per second.
    pub webhooks_accepted_per_sec: f64,
    /// Commands with no alerts coming: the peer.
    pub idle: Phase,
    /// Commands while the webhooks arrive.
    pub loaded: Phase,
    /// Loaded p99 over idle p99.
    pub p99_ratio_to_idle: f64,
    /// Loaded p99 over Slack's 3 s.
    pub p99_share_of_slack_limit: f64,
    /// Web API calls the notifier made during the run (posts and updates).
    pub notifier_calls: u64,
}

pub async fn slack(settings: Settings, args: SlackArgs) -> anyhow::Result<()> {
    let (_nats, _db, mut settings) =
        crate::bench::scratch(settings, args.admin_url.clone()).await?;
    let calls = Arc::new(AtomicU64::new(0));
    let fake = fake_slack(calls.clone()).await?;
    settings.slack.slack_api_url = format!("{fake}/api");
    settings.slack.slack_response_url_prefix = format!("{fake}/");
    settings.tenancy.secrets_key = Some(copilot_runtime::secrets::generate_key("bench").into());
    let report = run(settings, &args, calls).await?;
    crate::bench::emit(&report, args.json, print_report)
}

/// Slack's Web API as the notifier sees it: every call answered `ok` at once.
async fn fake_slack(calls: Arc<AtomicU64>) -> anyhow::Result<String> {
    let app = Router::new().route(
        "/api/{method}",
        post(move |Json(body): Json<serde_json::Value>| {
            let calls = calls.clone();
            async move {
                let n = calls.fetch_add(1, Ordering::Relaxed);
                Json(json!({"ok": true, "channel": body["channel"], "ts": format!("1765000000.{n:06}")}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

async fn run(
    settings: Settings,
    args: &SlackArgs,
    calls: Arc<AtomicU64>,
) -> anyhow::Result<SlackReport> {
    let keys = SecretKeys::from_settings(&settings)?.context("a secrets key")?;
    let app = App::start(settings, Services::All).await?;
    let ctx = app.ctx.clone();
    let tenant = crate::cli::create_tenant(&ctx, "bench", "Bench", "bench").await?;
    for (name, value) in [("slack-signing", SIGNING), ("slack-bot", "xoxb-bench")] {
        let secret = SecretValue {
            value,
            origin: None,
        };
        copilot_commands::set_secret(
            &ctx.js,
            &ctx.store,
            Some(&keys),
            "bench",
            name,
            secret,
            "bench",
            Headers::default(),
        )
        .await?;
    }
    let integrations = TenantIntegrations {
        slack: Some(TenantSlack {
            team_id: TEAM.into(),
            signing_secret: Some("slack-signing".into()),
            signing_secret_env: None,
            channel: Some("CBENCH".into()),
            bot_token_secret: Some("slack-bot".into()),
            bot_token_env: None,
            quiet: false,
        }),
        ..TenantIntegrations::default()
    };
    let egress = copilot_runtime::egress::EgressPolicy::in_force(&ctx.settings);
    copilot_commands::set_integrations(
        &ctx.js,
        &ctx.store,
        &ctx.settings,
        &egress,
        "bench",
        integrations,
        "bench",
        Headers::default(),
    )
    .await?;
    let user = NewUser {
        user_id: "sre".into(),
        email: "sre@bench.example".into(),
        display_name: "SRE".into(),
        role: Role::Engineer,
        slack_user_id: Some(SLACK_USER.into()),
    };
    copilot_commands::add_user(
        &ctx.js,
        &ctx.store,
        "bench",
        user,
        "bench",
        Headers::default(),
    )
    .await?;
    copilot_projector::catch_up(
        &ctx,
        copilot_projector::Projection::Tenants,
        Duration::from_secs(30),
    )
    .await?;
    let url = app.url();
    let webhooks = format!("{url}/v1/webhooks/alertmanager");
    let client = reqwest::Client::new();
    // One incident to look at and write notes on before anything is timed.
    let first = crate::bench::notification(0, 2, 1);
    let r = client
        .post(&webhooks)
        .bearer_auth(&tenant.webhook_token)
        .header("content-type", "application/json")
        .body(first)
        .send()
        .await?;
    anyhow::ensure!(r.status() == 202, "the gateway answered {}", r.status());
    let incident = wait_for_incident(&ctx).await?;

    // Warm-up, not counted: connections, caches and the first plans.
    let warm = SlackArgs {
        secs: 2,
        ..args.clone()
    };
    commands(&client, &url, &incident, &warm, "warm-up").await?;
    let idle = commands(&client, &url, &incident, args, "idle").await?;

    let load = {
        let (webhooks, token) = (webhooks.clone(), tenant.webhook_token.clone());
        let (rate, secs) = (args.webhook_rate.max(1), args.secs);
        tokio::spawn(async move { send_webhooks(&webhooks, &token, rate, secs).await })
    };
    let loaded = commands(&client, &url, &incident, args, "loaded").await?;
    let accepted = load.await.context("the webhook sender panicked")??;
    app.stop().await;
    let p99_ratio_to_idle = loaded.p99_ms / idle.p99_ms.max(0.001);
    Ok(SlackReport {
        webhook_rate: args.webhook_rate,
        command_rate: args.command_rate,
        secs: args.secs,
        webhooks_accepted_per_sec: accepted as f64 / args.secs as f64,
        p99_share_of_slack_limit: loaded.p99_ms / 3000.0,
        p99_ratio_to_idle,
        idle,
        loaded,
        notifier_calls: calls.load(Ordering::Relaxed),
    })
}

async fn wait_for_incident(ctx: &copilot_runtime::Context) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut tx = ctx.store.begin_tenant("bench").await?;
        let found = ctx
            .store
            .list_incidents(
                &mut tx,
                "bench",
                &copilot_store::IncidentFilter::default(),
                copilot_store::IncidentSort::Newest,
                None,
                1,
            )
            .await?;
        if let Some(incident) = found.first() {
            return Ok(incident.id.simple().to_string()[..8].to_owned());
        }
        anyhow::ensure!(Instant::now() < deadline, "no incident opened within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Webhooks at `rate`/s for `secs`, open loop, each a new group of 2 alerts; how many got 202.
async fn send_webhooks(url: &str, token: &str, rate: u32, secs: u64) -> anyhow::Result<u64> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let accepted = Arc::new(AtomicU64::new(0));
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let count = rate as u64 * secs;
    let started = Instant::now();
    let mut sent = tokio::task::JoinSet::new();
    for i in 0..count {
        tokio::time::sleep_until((started + interval * i as u32).into()).await;
        let request = client
            .post(url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(crate::bench::notification(i as usize + 1, 2, 2));
        let accepted = accepted.clone();
        sent.spawn(async move {
            if let Ok(r) = request.send().await
                && r.status() == 202
            {
                accepted.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while sent.join_next().await.is_some() {}
    Ok(accepted.load(Ordering::Relaxed))
}

/// Signed slash commands at `command_rate`/s for `secs`, in turn `incidents`, `incident <id>`
/// and `note <id> …`, each timed from when it was due to its answer.
async fn commands(
    client: &reqwest::Client,
    url: &str,
    incident: &str,
    args: &SlackArgs,
    label: &str,
) -> anyhow::Result<Phase> {
    let count = args.command_rate.max(1) as u64 * args.secs;
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.command_rate.max(1)));
    let bar = crate::bench::progress(count, label);
    let refused = || {
        copilot_runtime::metrics::Metrics::global()
            .events_appended_total
            .with_label_values(&["INCIDENTS", "error"])
            .get()
    };
    let refused_before = refused();
    let started = Instant::now();
    let mut running = tokio::task::JoinSet::new();
    for i in 0..count {
        let due = started + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let kind = (i % 3) as usize;
        let text = match kind {
            0 => "incidents".to_owned(),
            1 => format!("incident {incident}"),
            _ => format!("note {incident} bench note {i}"),
        };
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("team_id", TEAM)
            .append_pair("user_id", SLACK_USER)
            .append_pair("command", "/copilot")
            .append_pair("text", &text)
            .append_pair("response_url", "https://hooks.slack.com/commands/x")
            .finish()
            .into_bytes();
        let at = chrono::Utc::now().timestamp();
        let signature = copilot_slack::verify::sign(SIGNING.as_bytes(), at, &body);
        let request = client
            .post(format!("{url}/v1/slack/commands"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", at.to_string())
            .header("x-slack-signature", signature)
            .body(body);
        running.spawn(async move {
            let response = request.send().await.context("a slash command")?;
            anyhow::ensure!(
                response.status() == 200,
                "a slash command answered {}",
                response.status()
            );
            let answer: serde_json::Value = response.json().await?;
            let text = answer["text"].as_str().unwrap_or_default();
            anyhow::ensure!(
                !text.contains("try again") && !text.contains("not linked"),
                "a slash command answered {text:?}"
            );
            anyhow::Ok((kind, due.elapsed()))
        });
        bar.inc(1);
    }
    let mut all = crate::bench::latency_histogram();
    let mut by_kind = [
        crate::bench::latency_histogram(),
        crate::bench::latency_histogram(),
        crate::bench::latency_histogram(),
    ];
    while let Some(done) = running.join_next().await {
        let (kind, took) = done.context("a slash command panicked")??;
        let micros = took.as_micros().max(1) as u64;
        all.record(micros).ok();
        by_kind[kind].record(micros).ok();
    }
    bar.finish_and_clear();
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(Phase {
        commands: all.len(),
        p50_ms: ms(&all, 0.5),
        p99_ms: ms(&all, 0.99),
        max_ms: all.max() as f64 / 1000.0,
        p99_by_command_ms: [
            ms(&by_kind[0], 0.99),
            ms(&by_kind[1], 0.99),
            ms(&by_kind[2], 0.99),
        ],
        incident_append_conflicts: refused() - refused_before,
    })
}

fn print_report(r: &SlackReport) {
    println!(
        "slack: /copilot commands at {}/s for {} s, idle and under {} webhooks/s (2 alerts each), everything running",
        r.command_rate, r.secs, r.webhook_rate
    );
    for (name, p) in [("idle", &r.idle), ("loaded", &r.loaded)] {
        println!(
            "  {name:<7} {:>5} commands  p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms  (p99 incidents {:.1}, incident {:.1}, note {:.1} ms; {} appends decided twice)",
            p.commands,
            p.p50_ms,
            p.p99_ms,
            p.max_ms,
            p.p99_by_command_ms[0],
            p.p99_by_command_ms[1],
            p.p99_by_command_ms[2],
            p.incident_append_conflicts
        );
    }
    println!(
        "  loaded p99 is {:.2}× idle and {:.3} of Slack's 3 s; webhooks accepted {:.0}/s; notifier made {} Slack calls",
        r.p99_ratio_to_idle,
        r.p99_share_of_slack_limit,
        r.webhooks_accepted_per_sec,
        r.notifier_calls
    );
}
