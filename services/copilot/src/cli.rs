//! The command line. Each subcommand parses its flags and calls into a library; settings come
//! from flags or environment variables (see `copilot --help` and the README's table).

use std::{path::Path, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use copilot_events::Role;
use copilot_runtime::{Context, Settings, telemetry};
use tokio_util::sync::CancellationToken;

use crate::{
    app::{App, Services},
    local::Local,
};

/// Incident copilot: Alertmanager and Grafana webhooks into JetStream, read models in Postgres.
#[derive(Parser, Debug)]
#[command(name = "copilot", version)]
pub struct Cli {
    #[command(flatten)]
    pub settings: Settings,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run everything in one process on one port: migrate, apply streams, start the gateway,
    /// projector and API; start local NATS and Postgres when none answer and none are configured
    Up,
    /// Run the webhook gateway alone
    Gateway,
    /// Run the projector alone
    Projector,
    /// Run the correlator (signals into incidents) alone
    Correlator,
    /// Run the hypothesis service (incidents into root-cause hypotheses) alone
    Hypothesis,
    /// Run the read API alone
    Api,
    /// Run the native task worker: claims tasks of its kinds (promql.snapshot, hypotheses.refresh,
    /// echo) for every tenant or those named, heartbeats while they run, drains on Ctrl-C.
    /// `copilot up` runs one for every tenant
    Worker(crate::worker::WorkerArgs),
    /// Tasks for operators: list, show, follow logs, cancel
    Tasks {
        #[command(subcommand)]
        command: crate::tasks::TasksCommand,
    },
    /// Apply the database migrations
    Migrate,
    /// JetStream stream and consumer definitions
    Streams {
        #[command(subcommand)]
        command: StreamsCommand,
    },
    /// Tenant administration
    Tenants {
        #[command(subcommand)]
        command: TenantsCommand,
    },
    /// API tokens (JWTs)
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Webhook tokens: list, issue, revoke, rotate
    WebhookToken {
        #[command(subcommand)]
        command: WebhookTokenCommand,
    },
    /// Tenant secrets (model keys, Slack signing secrets): sealing keys, storing, rotation
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// People of a tenant and their roles
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Evaluations of the copilot's judgement on known cases
    Eval {
        #[command(subcommand)]
        command: EvalCommand,
    },
    /// Benchmarks against real NATS and Postgres
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// The copilot in Slack: the app manifest, and the Slack routes alone
    Slack {
        #[command(subcommand)]
        command: SlackCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum SlackCommand {
    /// Print the Slack app manifest (JSON) to paste at api.slack.com/apps → Create New App → From
    /// a manifest: the /copilot slash command and the buttons' interactivity URL at --public-url
    Manifest {
        /// The tenant the app is for (its name shows in the app's name)
        #[arg(long)]
        tenant: String,
        /// Where Slack reaches this copilot, e.g. https://copilot.example.com
        #[arg(long)]
        public_url: String,
    },
    /// Serve the Slack routes (/v1/slack/commands, /v1/slack/interactions) and run the notifier
    /// (one thread per incident in each tenant's channel) alone; `copilot up` runs them with
    /// everything else
    Serve,
}

#[derive(Subcommand, Debug)]
pub enum StreamsCommand {
    /// Create or update every stream and consumer in nats/ (idempotent)
    Apply,
}

#[derive(Subcommand, Debug)]
pub enum TenantsCommand {
    /// Create a tenant and its first admin (user `admin`); prints its webhook token (shown once)
    /// and the admin's JWT
    Create {
        /// Tenant slug: 1-63 of a-z, 0-9 and -
        slug: String,
        /// Display name [default: the slug]
        #[arg(long)]
        name: Option<String>,
        /// Email of the first admin [default: admin@<slug>.invalid]
        #[arg(long)]
        admin_email: Option<String>,
        /// Print JSON for scripts
        #[arg(long)]
        json: bool,
    },
    /// List every tenant
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one tenant
    Show { slug: String },
    /// Suspend a tenant: its webhooks get 403 and append nothing until it is resumed
    Suspend {
        slug: String,
        /// Why, for the audit log
        #[arg(long)]
        reason: String,
    },
    /// Resume a suspended tenant
    Resume { slug: String },
    /// Make (or adopt) a Postgres login that reads this tenant's read models and nothing else,
    /// for Grafana's Postgres datasource; prints the role and, when it made one, its password
    GrafanaReader {
        slug: String,
        /// The login's name [default: grafana_<slug>, with - as _]
        #[arg(long)]
        role: Option<String>,
        /// Its password [default: a new random one for a new role; an adopted role keeps its own]
        #[arg(long, env = "COPILOT_GRAFANA_DB_PASSWORD")]
        password: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Issue an API JWT for a user of a tenant (or, with --platform, a platform operator's)
    Issue {
        #[arg(long, required_unless_present = "platform")]
        tenant: Option<String>,
        /// The user the token speaks for (its `sub`)
        #[arg(long, default_value = copilot_commands::FIRST_ADMIN)]
        user: String,
        /// The most the token may do [default: the user's role]; the user's role caps it
        #[arg(long)]
        role: Option<Role>,
        /// A platform operator's token: administers tenants, reads no tenant's data
        #[arg(long, conflicts_with_all = ["tenant", "role"])]
        platform: bool,
        /// Validity in hours
        #[arg(long, default_value_t = 24)]
        ttl_hours: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum WebhookTokenCommand {
    /// List a tenant's webhook tokens (prefix and dates only)
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Issue another webhook token (shown once); the others keep working
    Issue {
        #[arg(long)]
        tenant: String,
    },
    /// Revoke a webhook token at once
    Revoke {
        #[arg(long)]
        tenant: String,
        token_id: uuid::Uuid,
    },
    /// Issue a new token and revoke this one after a grace period
    Rotate {
        #[arg(long)]
        tenant: String,
        token_id: uuid::Uuid,
        /// Hours the old token keeps working
        #[arg(long, default_value_t = 24)]
        grace_hours: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum UsersCommand {
    /// List a tenant's users
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Add a user
    Add {
        #[arg(long)]
        tenant: String,
        /// What the user's JWTs carry as `sub`
        user_id: String,
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "viewer")]
        role: Role,
        #[arg(long)]
        slack_user_id: Option<String>,
    },
    /// Change a user's role
    SetRole {
        #[arg(long)]
        tenant: String,
        user_id: String,
        role: Role,
    },
    /// Remove a user: their tokens stop working at once
    Remove {
        #[arg(long)]
        tenant: String,
        user_id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SecretsCommand {
    /// Print a new sealing key (`id:base64`) for COPILOT_SECRETS_KEY or its file; to rotate, put
    /// it first in the list, run `copilot secrets rekey`, then drop the old key
    NewKey {
        /// The key's id, recorded beside every secret it seals
        #[arg(long, default_value_t = chrono::Utc::now().format("k%Y%m%d").to_string())]
        id: String,
    },
    /// Store a tenant secret, read from stdin (or a variable); its value is never shown again
    Set {
        #[arg(long)]
        tenant: String,
        /// The name settings refer to it by (`llm.api_key_secret`)
        name: String,
        /// Read the value from this environment variable instead of stdin
        #[arg(long)]
        from_env: Option<String>,
        /// The only origin the value may be sent to (e.g. https://api.openai.com)
        #[arg(long)]
        origin: Option<String>,
    },
    /// List a tenant's secrets: names, versions and fingerprints, never values
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Delete a tenant secret; settings that name it stop sending it
    Remove {
        #[arg(long)]
        tenant: String,
        name: String,
    },
    /// Move settings that name environment variables (`llm.api_key_env`,
    /// `slack.signing_secret_env`) onto tenant secrets holding their values as this command
    /// sees them
    ImportEnv,
    /// Re-seal every secret with the first key, after a new key was put first
    Rekey,
}

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// Run an engine over a directory of scenario cases; print top-1/top-3 accuracy, citation
    /// validity and expected calibration error
    Hypotheses(crate::eval::EvalArgs),
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Webhook ingest: gateway vs raw JetStream throughput, projector rate, alert-to-row latency
    Ingest(crate::bench::IngestArgs),
    /// Incidents: correlator and projector throughput on a storm, list latency on 100k incidents
    Incidents(crate::bench_incidents::IncidentsArgs),
    /// The gateway with and without instrumentation (metrics, request ids, trace context)
    Instrumentation(crate::bench::InstrumentationArgs),
    /// Tasks: dispatch rate and claim latency with N native workers, beside a bare JetStream work queue
    Tasks(crate::bench_tasks::TasksArgs),
    /// Slack: slash-command answer times idle and under a webhook load, everything running
    Slack(crate::bench_slack::SlackArgs),
}

/// Runs a parsed command line; errors are printed with their causes.
pub async fn main(cli: Cli) -> ExitCode {
    // Services log what they do; one-shot commands only what goes wrong.
    let quiet = !matches!(
        cli.command,
        Command::Up
            | Command::Gateway
            | Command::Projector
            | Command::Correlator
            | Command::Hypothesis
            | Command::Api
            | Command::Worker(_)
            // Measured as it runs in production: the request spans exist at `info`.
            | Command::Bench {
                command: BenchCommand::Instrumentation(_)
            }
    );
    telemetry::init(cli.settings.log_format, if quiet { "warn" } else { "info" });
    let result = dispatch(cli).await;
    telemetry::shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let mut settings = cli.settings;
    let shutdown = copilot_runtime::shutdown::on_signal();
    match cli.command {
        Command::Up => up(settings, shutdown).await,
        Command::Gateway => copilot_gateway::run(settings, shutdown).await,
        Command::Projector => copilot_projector::run(settings, shutdown).await,
        Command::Correlator => copilot_correlator::run(settings, shutdown).await,
        Command::Hypothesis => {
            load_secrets_key(&mut settings, false)?;
            copilot_hypothesis::run(settings, shutdown).await
        }
        Command::Eval {
            command: EvalCommand::Hypotheses(args),
        } => crate::eval::hypotheses(&settings, args).await,
        Command::Api => {
            load_keys(&mut settings)?;
            copilot_api::run(settings, shutdown).await
        }
        Command::Worker(args) => {
            load_secrets_key(&mut settings, false)?;
            crate::worker::run(settings, args, shutdown).await
        }
        Command::Tasks { command } => crate::tasks::run(settings, command).await,
        Command::Migrate => {
            let ctx = Context::connect(settings, "cli").await?;
            ctx.store.migrate().await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Streams {
            command: StreamsCommand::Apply,
        } => {
            let ctx = Context::connect(settings, "cli").await?;
            for (what, applied) in copilot_runtime::nats::provision(&ctx.js).await? {
                println!("{what}: {applied:?}");
            }
            Ok(())
        }
        Command::Tenants { command } => {
            load_keys(&mut settings)?;
            crate::admin::tenants(settings, command).await
        }
        Command::Token { command } => {
            load_keys(&mut settings)?;
            crate::admin::token(settings, command).await
        }
        Command::WebhookToken { command } => crate::admin::webhook_tokens(settings, command).await,
        Command::Users { command } => crate::admin::users(settings, command).await,
        Command::Secrets { command } => {
            load_keys(&mut settings)?;
            crate::secrets::run(settings, command).await
        }
        Command::Bench {
            command: BenchCommand::Ingest(args),
        } => crate::bench::ingest(settings, args).await,
        Command::Bench {
            command: BenchCommand::Incidents(args),
        } => crate::bench_incidents::incidents(settings, args).await,
        Command::Bench {
            command: BenchCommand::Instrumentation(args),
        } => crate::bench::instrumentation(settings, args).await,
        Command::Bench {
            command: BenchCommand::Tasks(args),
        } => crate::bench_tasks::tasks(settings, args).await,
        Command::Bench {
            command: BenchCommand::Slack(args),
        } => crate::bench_slack::slack(settings, args).await,
        Command::Slack {
            command: SlackCommand::Manifest { tenant, public_url },
        } => {
            anyhow::ensure!(
                public_url.starts_with("https://") || public_url.starts_with("http://"),
                "--public-url must be the http(s) URL Slack reaches this copilot at, e.g. https://copilot.example.com"
            );
            println!(
                "{}",
                serde_json::to_string_pretty(&copilot_slack::manifest(&tenant, &public_url))?
            );
            eprintln!(
                "next: create the app from this manifest and install it; store its signing secret with \
                 `PUT /v1/settings/secrets/slack-signing` and name it in the tenant's integrations: \
                 {{\"slack\": {{\"team_id\": \"T…\", \"signing_secret\": \"slack-signing\"}}}}; \
                 then link people by their Slack user id (slack_user_id)"
            );
            Ok(())
        }
        Command::Slack {
            command: SlackCommand::Serve,
        } => {
            load_secrets_key(&mut settings, false)?;
            copilot_slack::run(settings, shutdown).await
        }
    }
}

/// Creates a tenant and waits until the projector has recorded it, so its token works at once.
pub async fn create_tenant(
    ctx: &Context,
    slug: &str,
    name: &str,
    actor: &str,
) -> anyhow::Result<copilot_commands::CreatedTenant> {
    let headers = copilot_events::Headers {
        actor: Some(actor.to_owned()),
        ..Default::default()
    };
    let tenant = copilot_commands::NewTenant {
        slug,
        name: Some(name),
        admin_email: None,
    };
    let created = copilot_commands::create_tenant(&ctx.js, tenant, actor, headers).await?;
    copilot_projector::catch_up(
        ctx,
        copilot_projector::Projection::Tenants,
        Duration::from_secs(30),
    )
    .await
    .context("waiting for the tenant to be projected")?;
    Ok(created)
}

/// The `default` tenant's webhook token for `copilot up` to print: the one kept in the data
/// directory while it is still valid, otherwise a new one (creating the tenant on first start).
pub async fn default_tenant_token(ctx: &Context, data_dir: &Path) -> anyhow::Result<String> {
    use copilot_projector::{Projection, catch_up};
    // The read model may be behind the stream (a fresh database over an old stream).
    catch_up(ctx, Projection::Tenants, Duration::from_secs(30)).await?;
    let token_path = data_dir.join(DEFAULT_TOKEN_FILE);
    if !ctx.store.tenant_exists(DEFAULT_TENANT).await? {
        let created = create_tenant(ctx, DEFAULT_TENANT, "Default", UP_ACTOR).await?;
        write_private(&token_path, &created.webhook_token)?;
        return Ok(created.webhook_token);
    }
    ensure_first_admin(ctx).await?;
    if let Ok(kept) = std::fs::read_to_string(&token_path) {
        let kept = kept.trim().to_owned();
        let owner = ctx
            .store
            .find_token(&copilot_runtime::auth::hash_token(&kept))
            .await?;
        if owner.is_some_and(|o| o.tenant == DEFAULT_TENANT && !o.revoked) {
            return Ok(kept);
        }
    }
    let token = copilot_commands::issue_webhook_token(
        &ctx.js,
        &ctx.store,
        DEFAULT_TENANT,
        UP_ACTOR,
        copilot_events::Headers {
            actor: Some(UP_ACTOR.to_owned()),
            ..Default::default()
        },
    )
    .await?;
    let token = token.webhook_token;
    catch_up(ctx, Projection::Tenants, Duration::from_secs(30)).await?;
    write_private(&token_path, &token)?;
    Ok(token)
}

/// Gives a `default` tenant created before users existed its admin user, so the JWT `up` prints
/// (for user `admin`) works.
async fn ensure_first_admin(ctx: &Context) -> anyhow::Result<()> {
    use copilot_commands::FIRST_ADMIN;
    let mut tx = ctx.store.begin().await?;
    if ctx
        .store
        .find_user(&mut tx, DEFAULT_TENANT, FIRST_ADMIN)
        .await?
        .is_some()
    {
        return Ok(());
    }
    drop(tx);
    let admin = copilot_commands::first_admin(DEFAULT_TENANT, None, UP_ACTOR);
    let headers = copilot_events::Headers {
        actor: Some(UP_ACTOR.to_owned()),
        ..Default::default()
    };
    let admin = copilot_commands::NewUser {
        user_id: admin.user_id,
        email: admin.email,
        display_name: admin.display_name,
        role: admin.role,
        slack_user_id: None,
    };
    copilot_commands::add_user(
        &ctx.js,
        &ctx.store,
        DEFAULT_TENANT,
        admin,
        UP_ACTOR,
        headers,
    )
    .await?;
    copilot_projector::catch_up(
        ctx,
        copilot_projector::Projection::Tenants,
        Duration::from_secs(30),
    )
    .await?;
    Ok(())
}

/// The actor `copilot up` records its own commands under.
const UP_ACTOR: &str = "system:up";
const SECRET_FILE: &str = "jwt-secret";
const SECRETS_KEY_FILE: &str = "secrets-key";
/// What `copilot up` lets tenant URLs reach when the operator says nothing: this machine.
const LAPTOP_EGRESS: &str = "127.0.0.0/8,::1";
const DEFAULT_TOKEN_FILE: &str = "default-webhook-token";
pub(crate) const DEFAULT_TENANT: &str = "default";

/// Uses `COPILOT_JWT_SECRET` when set; otherwise the secret kept in the data directory,
/// generated there (mode 0600) when `create` is set.
pub(crate) fn load_secret(settings: &mut Settings, create: bool) -> anyhow::Result<()> {
    let keyed_otherwise = settings.jwt.algorithm != copilot_runtime::auth::JwtAlgorithm::Hs256
        || settings.jwt.jwks.is_some();
    if settings.jwt.secret.is_some() || keyed_otherwise {
        return Ok(());
    }
    let path = settings.data_dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(secret) => settings.jwt.secret = Some(secret.trim().to_owned().into()),
        Err(_) if create => {
            let secret = copilot_runtime::auth::generate_secret();
            write_private(&path, &secret)?;
            settings.jwt.secret = Some(secret.into());
        }
        Err(_) => anyhow::bail!(
            "no JWT secret: set COPILOT_JWT_SECRET, or run `copilot up` once so it generates {}",
            path.display()
        ),
    }
    Ok(())
}

/// Uses the configured secrets key; otherwise the one kept in the data directory, generated
/// there (mode 0600) when `create` is set. Returns a note for the operator when it generated one.
pub(crate) fn load_secrets_key(
    settings: &mut Settings,
    create: bool,
) -> anyhow::Result<Option<String>> {
    if settings.tenancy.secrets_key.is_some() || settings.tenancy.secrets_key_file.is_some() {
        return Ok(None);
    }
    let path = settings.data_dir.join(SECRETS_KEY_FILE);
    let mut note = None;
    if !path.exists() {
        if !create {
            return Ok(None);
        }
        let key = copilot_runtime::secrets::generate_key(
            &chrono::Utc::now().format("k%Y%m%d").to_string(),
        );
        write_private(&path, &format!("{key}\n"))?;
        note = Some(format!(
            "generated the key that seals tenant secrets in {} (back it up: secrets stored with it cannot be read without it)",
            path.display()
        ));
    }
    settings.tenancy.secrets_key_file = Some(path);
    Ok(note)
}

/// Both keys a process may find in the data directory: the JWT secret and the secrets key.
pub(crate) fn load_keys(settings: &mut Settings) -> anyhow::Result<()> {
    load_secret(settings, false)?;
    load_secrets_key(settings, false)?;
    Ok(())
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

async fn up(mut settings: Settings, stop: CancellationToken) -> anyhow::Result<()> {
    let mut local = Local::resolve(&mut settings).await?;
    load_secret(&mut settings, true)?;
    local.notes.extend(load_secrets_key(&mut settings, true)?);
    if settings.tenancy.egress_allow.is_none() {
        settings.tenancy.egress_allow = Some(LAPTOP_EGRESS.to_owned());
        local.notes.push(format!(
            "tenant-given URLs (Prometheus, models) may reach this machine's loopback addresses ({LAPTOP_EGRESS}), as on a laptop; set COPILOT_EGRESS_ALLOW (empty: public addresses only) on a shared deployment"
        ));
    }
    let data_dir = settings.data_dir.clone();
    let public_url = settings.http.public_url.clone();
    let result = async {
        let app = App::start(settings, Services::All).await?;
        let base = public_url.unwrap_or_else(|| app.url());
        let token = default_tenant_token(&app.ctx, &data_dir).await?;
        let jwt = crate::admin::user_token(
            &app.ctx,
            &app.jwt,
            DEFAULT_TENANT,
            copilot_commands::FIRST_ADMIN,
            Role::Admin,
            Duration::from_secs(30 * 24 * 3600),
        )
        .await
        .unwrap_or_else(|e| format!("(none: {e})"));
        for note in &local.notes {
            eprintln!("{note}");
        }
        println!("{}", banner(&base, &token, &jwt));
        // The native worker, for every tenant, beside everything else.
        let worker = tokio::spawn(crate::worker::serve(
            app.ctx.clone(),
            crate::worker::WorkerArgs::default(),
            stop.clone(),
        ));
        let result = app.run_until(stop.clone()).await;
        stop.cancel();
        worker.await.context("the worker panicked")??;
        result
    }
    .await;
    local.stop().await;
    result
}

fn banner(base: &str, token: &str, jwt: &str) -> String {
    format!(
        r#"
copilot is up on {base}

  Alertmanager webhook  {base}/v1/webhooks/alertmanager
  Grafana webhook       {base}/v1/webhooks/grafana
  tenant                {DEFAULT_TENANT}
  webhook token         {token}
  admin JWT (30 days)   {jwt}

Alertmanager (alertmanager.yml):

  receivers:
    - name: copilot
      webhook_configs:
        - url: {base}/v1/webhooks/alertmanager
          send_resolved: true
          http_config:
            authorization:
              credentials: {token}

Try it:

  curl -sS -X POST {base}/v1/webhooks/alertmanager \
    -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \
    -d '{{"version":"4","status":"firing","receiver":"copilot","alerts":[{{"status":"firing","labels":{{"alertname":"HighErrorRate","service":"checkout","severity":"critical"}},"annotations":{{"summary":"checkout 5xx above 5%"}},"startsAt":"2026-01-01T00:00:00Z"}}]}}'

  curl -sS {base}/v1/signals -H 'Authorization: Bearer {jwt}'
  curl -sS {base}/v1/incidents -H 'Authorization: Bearer {jwt}'
"#
    )
}
