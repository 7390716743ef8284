//! Settings for every service, from flags or environment variables (flags win). One tree serves
//! all services so that `copilot up` and the separate services read the same names.
//!
//! The tree is nested per concern (`settings.nats`, `settings.database`, `settings.http`,
//! `settings.jwt`, `settings.limits`, `settings.tenancy`, `settings.projector`,
//! `settings.correlator`, `settings.hypothesis`), each a `clap::Args` struct flattened into
//! [`Settings`]. The nesting is for the code only: every flag, environment variable, value name
//! and argument id keeps the flat name it always had (`--nats-url`, `NATS_URL`, `<NATS_URL>`,
//! `nats_url`), so operators' configurations keep working and `copilot --help` shows the same
//! entries, grouped by concern. A field whose name differs from its flag therefore spells out
//! `id`, `long` and `value_name`; the tests below hold every name to the flat list.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

pub use secrecy::{ExposeSecret, SecretString};

/// A secret setting: held so that printing the settings (`{:?}`) shows `[REDACTED]`.
fn secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value.to_owned()))
}

/// Default NATS URL when `NATS_URL` is not set.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// Default Postgres URL when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/copilot";

#[derive(clap::Args, Debug, Clone)]
pub struct Settings {
    #[command(flatten)]
    pub nats: NatsSettings,

    #[command(flatten)]
    pub database: DatabaseSettings,

    #[command(flatten)]
    pub http: HttpSettings,

    #[command(flatten)]
    pub jwt: JwtSettings,

    #[command(flatten)]
    pub limits: LimitSettings,

    #[command(flatten)]
    pub tenancy: TenancySettings,

    #[command(flatten)]
    pub projector: ProjectorSettings,

    #[command(flatten)]
    pub correlator: CorrelatorSettings,

    #[command(flatten)]
    pub hypothesis: HypothesisSettings,

    #[command(flatten)]
    pub slack: SlackSettings,

    #[command(flatten)]
    pub tasks: TaskSettings,

    /// Where `copilot up` keeps its local NATS and Postgres data and its generated secret
    #[arg(
        long,
        env = "COPILOT_DATA_DIR",
        default_value = ".copilot",
        global = true
    )]
    pub data_dir: PathBuf,

    /// Log format: auto (text when standard error is a terminal, JSON lines otherwise), json or text
    #[arg(
        long,
        env = "COPILOT_LOG_FORMAT",
        default_value = "auto",
        global = true
    )]
    pub log_format: crate::telemetry::LogFormat,

    /// Faults the tests inject; compiled only with the `faults` feature (see [`Faults`]).
    #[cfg(feature = "faults")]
    #[arg(skip)]
    pub faults: Faults,
}

/// The NATS connection.
#[derive(clap::Args, Debug, Clone)]
pub struct NatsSettings {
    /// NATS server with JetStream [default: nats://127.0.0.1:4222; `copilot up` starts one if none answers]
    #[arg(
        id = "nats_url",
        long = "nats-url",
        value_name = "NATS_URL",
        env = "NATS_URL",
        global = true
    )]
    pub url: Option<String>,

    /// How long the gateway waits for JetStream to acknowledge an append before answering 503, in milliseconds
    #[arg(
        long,
        env = "COPILOT_PUBLISH_TIMEOUT_MS",
        default_value_t = 5000,
        global = true
    )]
    pub publish_timeout_ms: u64,
}

impl NatsSettings {
    /// The configured URL, or [`DEFAULT_NATS_URL`].
    pub fn url(&self) -> String {
        self.url
            .clone()
            .unwrap_or_else(|| DEFAULT_NATS_URL.to_owned())
    }

    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }
}

/// The Postgres database of the read models.
#[derive(clap::Args, Debug, Clone)]
pub struct DatabaseSettings {
    /// Postgres database for the read models [default: postgres://postgres@127.0.0.1:5432/copilot; `copilot up` starts one if none answers]
    #[arg(
        id = "database_url",
        long = "database-url",
        value_name = "DATABASE_URL",
        env = "DATABASE_URL",
        global = true
    )]
    pub url: Option<String>,

    /// Postgres connections per process
    #[arg(
        id = "db_max_connections",
        long = "db-max-connections",
        value_name = "DB_MAX_CONNECTIONS",
        env = "COPILOT_DB_MAX_CONNECTIONS",
        default_value_t = 16,
        global = true
    )]
    pub max_connections: u32,
}

impl DatabaseSettings {
    /// The configured URL, or [`DEFAULT_DATABASE_URL`].
    pub fn url(&self) -> String {
        self.url
            .clone()
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned())
    }
}

/// The HTTP server every process runs (routes, or health and metrics alone).
#[derive(clap::Args, Debug, Clone)]
pub struct HttpSettings {
    /// Address the HTTP server listens on
    #[arg(
        long,
        env = "COPILOT_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: SocketAddr,

    /// URL users reach the HTTP server at, used in printed instructions [default: http://<listen>]
    #[arg(long, env = "COPILOT_PUBLIC_URL", global = true)]
    pub public_url: Option<String>,

    /// Largest webhook body accepted, in bytes
    #[arg(long, env = "COPILOT_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024, global = true)]
    pub max_body_bytes: usize,

    /// How long a client may take to send a request's headers, in milliseconds (0: no limit)
    #[arg(
        id = "http_header_timeout_ms",
        long = "http-header-timeout-ms",
        value_name = "HTTP_HEADER_TIMEOUT_MS",
        env = "COPILOT_HTTP_HEADER_TIMEOUT_MS",
        default_value_t = 10_000,
        global = true
    )]
    pub header_timeout_ms: u64,

    /// How long a client may take to send a request's body, in milliseconds (0: no limit)
    #[arg(
        id = "http_body_timeout_ms",
        long = "http-body-timeout-ms",
        value_name = "HTTP_BODY_TIMEOUT_MS",
        env = "COPILOT_HTTP_BODY_TIMEOUT_MS",
        default_value_t = 30_000,
        global = true
    )]
    pub body_timeout_ms: u64,

    /// Benchmarks only: serve HTTP without the instrumentation layer, to measure its cost.
    #[arg(skip = true)]
    pub instrumentation: bool,
}

impl HttpSettings {
    /// Where users reach the server, without a trailing slash: the configured public URL, or
    /// `http://<listen>`.
    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
            .trim_end_matches('/')
            .to_owned()
    }
}

/// API tokens: how they are signed, verified and what they must claim.
#[derive(clap::Args, Debug, Clone)]
pub struct JwtSettings {
    /// HS256 secret for API JWTs (at least 32 bytes); `copilot up` generates and keeps one in the data directory when unset
    #[arg(
        id = "jwt_secret",
        long = "jwt-secret",
        value_name = "JWT_SECRET",
        env = "COPILOT_JWT_SECRET",
        value_parser = secret,
        hide_env_values = true,
        global = true
    )]
    pub secret: Option<SecretString>,

    /// JWT algorithm, pinned: tokens naming another are refused
    #[arg(
        id = "jwt_algorithm",
        long = "jwt-algorithm",
        value_name = "JWT_ALGORITHM",
        env = "COPILOT_JWT_ALGORITHM",
        default_value = "HS256",
        global = true
    )]
    pub algorithm: crate::auth::JwtAlgorithm,

    /// PEM public key verifying RS256 or EdDSA tokens
    #[arg(
        id = "jwt_public_key",
        long = "jwt-public-key",
        value_name = "JWT_PUBLIC_KEY",
        env = "COPILOT_JWT_PUBLIC_KEY",
        global = true
    )]
    pub public_key: Option<PathBuf>,

    /// JWKS file of verification keys chosen by the token's `kid` (rotation; `oct` keys for HS256)
    #[arg(
        id = "jwt_jwks",
        long = "jwt-jwks",
        value_name = "JWT_JWKS",
        env = "COPILOT_JWT_JWKS",
        global = true
    )]
    pub jwks: Option<PathBuf>,

    /// PEM private key to issue RS256 or EdDSA tokens with; without it the copilot only verifies
    #[arg(
        id = "jwt_private_key",
        long = "jwt-private-key",
        value_name = "JWT_PRIVATE_KEY",
        env = "COPILOT_JWT_PRIVATE_KEY",
        global = true
    )]
    pub private_key: Option<PathBuf>,

    /// `kid` written into the tokens this copilot issues
    #[arg(
        id = "jwt_kid",
        long = "jwt-kid",
        value_name = "JWT_KID",
        env = "COPILOT_JWT_KID",
        global = true
    )]
    pub kid: Option<String>,

    /// Clock skew tolerated on `exp` and `nbf`, in seconds
    #[arg(
        id = "jwt_leeway_secs",
        long = "jwt-leeway-secs",
        value_name = "JWT_LEEWAY_SECS",
        env = "COPILOT_JWT_LEEWAY_SECS",
        default_value_t = 30,
        global = true
    )]
    pub leeway_secs: u64,

    /// JWT issuer (`iss`) issued and required
    #[arg(
        id = "jwt_issuer",
        long = "jwt-issuer",
        value_name = "JWT_ISSUER",
        env = "COPILOT_JWT_ISSUER",
        default_value = "copilot",
        global = true
    )]
    pub issuer: String,

    /// JWT audience (`aud`) issued and required
    #[arg(
        id = "jwt_audience",
        long = "jwt-audience",
        value_name = "JWT_AUDIENCE",
        env = "COPILOT_JWT_AUDIENCE",
        default_value = "copilot-api",
        global = true
    )]
    pub audience: String,
}

/// Rate limits: per tenant, per user, and on failed authentications per source address.
#[derive(clap::Args, Debug, Clone)]
pub struct LimitSettings {
    /// Webhook requests per second allowed per tenant on each gateway (0: no limit)
    #[arg(
        long,
        env = "COPILOT_WEBHOOK_RATE_PER_SEC",
        default_value_t = 500,
        global = true
    )]
    pub webhook_rate_per_sec: u32,

    /// Webhook requests a tenant may send at once above the rate
    #[arg(
        long,
        env = "COPILOT_WEBHOOK_BURST",
        default_value_t = 2000,
        global = true
    )]
    pub webhook_burst: u32,

    /// API requests per second allowed per tenant on each API process (0: no limit)
    #[arg(
        long,
        env = "COPILOT_API_RATE_PER_SEC",
        default_value_t = 100,
        global = true
    )]
    pub api_rate_per_sec: u32,

    /// API requests a tenant may send at once above the rate
    #[arg(long, env = "COPILOT_API_BURST", default_value_t = 400, global = true)]
    pub api_burst: u32,

    /// API requests per second allowed per user on each API process, inside the tenant's (0: no limit)
    #[arg(
        long,
        env = "COPILOT_API_USER_RATE_PER_SEC",
        default_value_t = 40,
        global = true
    )]
    pub api_user_rate_per_sec: u32,

    /// API requests one user may send at once above their rate
    #[arg(
        long,
        env = "COPILOT_API_USER_BURST",
        default_value_t = 150,
        global = true
    )]
    pub api_user_burst: u32,

    /// Failed authentications (webhooks and API) allowed per source address per minute; past it, that address gets 429 until its budget refills (0: no limit)
    #[arg(
        long,
        env = "COPILOT_AUTH_FAILURES_PER_MIN",
        default_value_t = 30,
        global = true
    )]
    pub auth_failures_per_min: u32,
}

/// Where Slack is: its Web API and the origin of the `response_url`s its requests carry (the
/// copilot answers a slash command or a button there, and nowhere else, whatever a request says).
#[derive(clap::Args, Debug, Clone)]
pub struct SlackSettings {
    /// Slack's Web API base URL
    #[arg(
        long,
        env = "COPILOT_SLACK_API_URL",
        default_value = "https://slack.com/api",
        global = true
    )]
    pub slack_api_url: String,

    /// The only URL prefix a request's `response_url` may have for the copilot to answer there
    #[arg(
        long,
        env = "COPILOT_SLACK_RESPONSE_URL_PREFIX",
        default_value = "https://hooks.slack.com/",
        global = true
    )]
    pub slack_response_url_prefix: String,
}

/// Task dispatch.
#[derive(clap::Args, Debug, Clone)]
pub struct TaskSettings {
    /// How long a claimed task is a worker's without a heartbeat before another worker gets it, in seconds; fixed for a tenant's queue when its consumers are first made
    #[arg(
        long,
        env = "COPILOT_TASK_LEASE_SECS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(2..=3600),
        global = true
    )]
    pub task_lease_secs: u64,
}

impl TaskSettings {
    pub fn lease(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.task_lease_secs)
    }
}

/// What tenants are given: the addresses their URLs may reach, the environment variables their
/// legacy settings may name, and the keys that seal their secrets.
#[derive(clap::Args, Debug, Clone)]
pub struct TenancySettings {
    /// Hosts and CIDRs that tenant-given URLs (Prometheus, models) may reach although they are loopback, private, link-local or metadata addresses, comma-separated (e.g. `10.0.0.0/8,prometheus.internal`) [default: none; `copilot up` allows loopback]
    #[arg(long, env = "COPILOT_EGRESS_ALLOW", global = true)]
    pub egress_allow: Option<String>,

    /// Environment variables a tenant may still name in legacy settings (`llm.api_key_env`, `slack.signing_secret_env`), as `tenant=VARIABLE` pairs, comma-separated; the copilot's own variables are never allowed [default: none; tenants store secrets instead]
    #[arg(long, env = "COPILOT_TENANT_ENV_ALLOW", global = true)]
    pub tenant_env_allow: Option<String>,

    /// Keys that seal tenant secrets in Postgres: `id:base64-of-32-bytes`, comma-separated, the first seals and all open (rotation); `copilot up` generates one in the data directory when unset
    #[arg(
        long,
        env = "COPILOT_SECRETS_KEY",
        value_parser = secret,
        hide_env_values = true,
        global = true
    )]
    pub secrets_key: Option<SecretString>,

    /// File holding the secrets keys, one `id:base64` per line, the first sealing (instead of COPILOT_SECRETS_KEY)
    #[arg(long, env = "COPILOT_SECRETS_KEY_FILE", global = true)]
    pub secrets_key_file: Option<PathBuf>,
}

impl TenancySettings {
    /// Whether `tenant`'s settings may name environment variable `name` (legacy secret
    /// references): only a pair the operator listed, and never one of the variables that hold
    /// the platform's own secrets or a cloud's credentials, whatever the list says.
    pub fn tenant_env_allowed(&self, tenant: &str, name: &str) -> bool {
        const NEVER: &[&str] = &[
            "COPILOT_", "OPENAI_", "AWS_", "GOOGLE_", "AZURE_", "PG", "NATS_",
        ];
        const NEVER_EXACT: &[&str] = &["DATABASE_URL", "HOME", "PATH", "USER"];
        if NEVER.iter().any(|p| name.starts_with(p)) || NEVER_EXACT.contains(&name) {
            return false;
        }
        self.tenant_env_allow.as_deref().is_some_and(|list| {
            list.split(',')
                .filter_map(|pair| pair.trim().split_once('='))
                .any(|(t, n)| t.trim() == tenant && n.trim() == name)
        })
    }
}

/// The projector (read models).
#[derive(clap::Args, Debug, Clone)]
pub struct ProjectorSettings {
    /// Most events the projector applies in one transaction
    #[arg(
        id = "projector_batch",
        long = "projector-batch",
        value_name = "PROJECTOR_BATCH",
        env = "COPILOT_PROJECTOR_BATCH",
        default_value_t = 1000,
        global = true
    )]
    pub batch: usize,
}

/// The correlator (signals into incidents). Its batches are as large as the projector's
/// (`settings.projector.batch`).
#[derive(clap::Args, Debug, Clone)]
pub struct CorrelatorSettings {
    /// How often the correlator looks for incidents whose resolve grace has run out, in milliseconds
    #[arg(
        id = "correlator_tick_ms",
        long = "correlator-tick-ms",
        value_name = "CORRELATOR_TICK_MS",
        env = "COPILOT_CORRELATOR_TICK_MS",
        default_value_t = 1000,
        global = true
    )]
    pub tick_ms: u64,
}

/// The hypothesis service: when it looks, how much evidence it gives an engine, the model it may
/// ask and the Prometheus it may query.
#[derive(clap::Args, Debug, Clone)]
pub struct HypothesisSettings {
    /// The hypothesis service runs at most once per incident per this many seconds
    #[arg(
        id = "hypothesis_min_interval_secs",
        long = "hypothesis-min-interval-secs",
        value_name = "HYPOTHESIS_MIN_INTERVAL_SECS",
        env = "COPILOT_HYPOTHESIS_MIN_INTERVAL_SECS",
        default_value_t = 60,
        global = true
    )]
    pub min_interval_secs: u64,

    /// How long the hypothesis service waits after an incident's first new event, so that a storm's
    /// alerts arrive before it looks, in milliseconds
    #[arg(
        id = "hypothesis_settle_ms",
        long = "hypothesis-settle-ms",
        value_name = "HYPOTHESIS_SETTLE_MS",
        env = "COPILOT_HYPOTHESIS_SETTLE_MS",
        default_value_t = 5000,
        global = true
    )]
    pub settle_ms: u64,

    /// Most evidence (in estimated tokens) given to an engine; the least relevant is left out
    #[arg(
        id = "hypothesis_budget_tokens",
        long = "hypothesis-budget-tokens",
        value_name = "HYPOTHESIS_BUDGET_TOKENS",
        env = "COPILOT_HYPOTHESIS_BUDGET_TOKENS",
        default_value_t = 6000,
        global = true
    )]
    pub budget_tokens: usize,

    #[command(flatten)]
    pub llm: LlmSettings,

    /// Prometheus to fetch metric evidence from (a tenant's own setting wins); unset: no metrics
    #[arg(long, env = "COPILOT_PROMETHEUS_URL", global = true)]
    pub prometheus_url: Option<String>,

    /// JSON file of PromQL templates (`[{"name", "query"}]`, `{service}` replaced) [default: built in]
    #[arg(long, env = "COPILOT_PROMETHEUS_QUERIES", global = true)]
    pub prometheus_queries: Option<PathBuf>,
}

/// The operator's OpenAI-compatible model for hypotheses (a tenant's own settings win).
#[derive(clap::Args, Debug, Clone)]
pub struct LlmSettings {
    /// OpenAI-compatible base URL (with /v1) of a model for hypotheses; unset: the built-in engine only
    #[arg(
        id = "llm_base_url",
        long = "llm-base-url",
        value_name = "LLM_BASE_URL",
        env = "COPILOT_LLM_BASE_URL",
        global = true
    )]
    pub base_url: Option<String>,

    /// Model name sent to the endpoint
    #[arg(
        id = "llm_model",
        long = "llm-model",
        value_name = "LLM_MODEL",
        env = "COPILOT_LLM_MODEL",
        global = true
    )]
    pub model: Option<String>,

    /// API key sent as a bearer token (never logged)
    #[arg(
        id = "llm_api_key",
        long = "llm-api-key",
        value_name = "LLM_API_KEY",
        env = "COPILOT_LLM_API_KEY",
        value_parser = secret,
        global = true,
        hide_env_values = true
    )]
    pub api_key: Option<SecretString>,

    /// Time the model gets before the built-in engine answers instead, in milliseconds
    #[arg(
        id = "llm_timeout_ms",
        long = "llm-timeout-ms",
        value_name = "LLM_TIMEOUT_MS",
        env = "COPILOT_LLM_TIMEOUT_MS",
        default_value_t = 30000,
        global = true
    )]
    pub timeout_ms: u64,

    /// Price per 1k prompt tokens in USD, for the cost estimate of each call
    #[arg(
        id = "llm_price_prompt_per_1k",
        long = "llm-price-prompt-per-1k",
        value_name = "LLM_PRICE_PROMPT_PER_1K",
        env = "COPILOT_LLM_PRICE_PROMPT_PER_1K",
        default_value_t = 0.0,
        global = true
    )]
    pub price_prompt_per_1k: f64,

    /// Price per 1k completion tokens in USD
    #[arg(
        id = "llm_price_completion_per_1k",
        long = "llm-price-completion-per-1k",
        value_name = "LLM_PRICE_COMPLETION_PER_1K",
        env = "COPILOT_LLM_PRICE_COMPLETION_PER_1K",
        default_value_t = 0.0,
        global = true
    )]
    pub price_completion_per_1k: f64,
}

/// Faults injected by tests, in the settings so that each test's system has its own.
///
/// Compiled only with the `faults` feature of `copilot-runtime`, which only the end-to-end tests
/// enable (through `copilot-correlator/faults`, as a dev-dependency of `copilot-e2e`): `cargo
/// build -p copilot` and the release image have neither these fields nor the code that acts on
/// them. Cargo unifies features per build, though: one `cargo test --workspace` (or a `cargo
/// build --workspace --all-targets`) compiles every crate of the workspace, the `copilot` binary
/// included, with the feature on. Nothing sets a fault from flags or the environment, so such a
/// binary still behaves as a production one; build releases with `-p copilot`.
#[cfg(feature = "faults")]
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// The correlator fails after appending its decisions and before committing them, as a
    /// crash there would.
    pub correlator_crash_after_append: bool,
}

impl Settings {
    /// Settings with every default, for tests and tools that fill in what they need.
    pub fn defaults() -> Self {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            settings: Settings,
        }
        <Wrapper as clap::Parser>::try_parse_from(["copilot"])
            .expect("defaults parse")
            .settings
    }
}

/// A URL with its password replaced, safe to log or print.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    #[derive(clap::Parser)]
    #[command(name = "copilot")]
    struct Cli {
        #[command(flatten)]
        settings: Settings,
    }

    /// Every setting's flag and environment variable, as operators write them. Nesting the
    /// settings in the code must never change one.
    const NAMES: &[(&str, &str)] = &[
        ("nats-url", "NATS_URL"),
        ("publish-timeout-ms", "COPILOT_PUBLISH_TIMEOUT_MS"),
        ("database-url", "DATABASE_URL"),
        ("db-max-connections", "COPILOT_DB_MAX_CONNECTIONS"),
        ("listen", "COPILOT_LISTEN"),
        ("public-url", "COPILOT_PUBLIC_URL"),
        ("max-body-bytes", "COPILOT_MAX_BODY_BYTES"),
        ("http-header-timeout-ms", "COPILOT_HTTP_HEADER_TIMEOUT_MS"),
        ("http-body-timeout-ms", "COPILOT_HTTP_BODY_TIMEOUT_MS"),
        ("jwt-secret", "COPILOT_JWT_SECRET"),
        ("jwt-algorithm", "COPILOT_JWT_ALGORITHM"),
        ("jwt-public-key", "COPILOT_JWT_PUBLIC_KEY"),
        ("jwt-jwks", "COPILOT_JWT_JWKS"),
        ("jwt-private-key", "COPILOT_JWT_PRIVATE_KEY"),
        ("jwt-kid", "COPILOT_JWT_KID"),
        ("jwt-leeway-secs", "COPILOT_JWT_LEEWAY_SECS"),
        ("jwt-issuer", "COPILOT_JWT_ISSUER"),
        ("jwt-audience", "COPILOT_JWT_AUDIENCE"),
        ("webhook-rate-per-sec", "COPILOT_WEBHOOK_RATE_PER_SEC"),
        ("webhook-burst", "COPILOT_WEBHOOK_BURST"),
        ("api-rate-per-sec", "COPILOT_API_RATE_PER_SEC"),
        ("api-burst", "COPILOT_API_BURST"),
        ("api-user-rate-per-sec", "COPILOT_API_USER_RATE_PER_SEC"),
        ("api-user-burst", "COPILOT_API_USER_BURST"),
        ("auth-failures-per-min", "COPILOT_AUTH_FAILURES_PER_MIN"),
        ("egress-allow", "COPILOT_EGRESS_ALLOW"),
        ("tenant-env-allow", "COPILOT_TENANT_ENV_ALLOW"),
        ("secrets-key", "COPILOT_SECRETS_KEY"),
        ("secrets-key-file", "COPILOT_SECRETS_KEY_FILE"),
        ("projector-batch", "COPILOT_PROJECTOR_BATCH"),
        ("correlator-tick-ms", "COPILOT_CORRELATOR_TICK_MS"),
        (
            "hypothesis-min-interval-secs",
            "COPILOT_HYPOTHESIS_MIN_INTERVAL_SECS",
        ),
        ("hypothesis-settle-ms", "COPILOT_HYPOTHESIS_SETTLE_MS"),
        (
            "hypothesis-budget-tokens",
            "COPILOT_HYPOTHESIS_BUDGET_TOKENS",
        ),
        ("llm-base-url", "COPILOT_LLM_BASE_URL"),
        ("llm-model", "COPILOT_LLM_MODEL"),
        ("llm-api-key", "COPILOT_LLM_API_KEY"),
        ("llm-timeout-ms", "COPILOT_LLM_TIMEOUT_MS"),
        ("llm-price-prompt-per-1k", "COPILOT_LLM_PRICE_PROMPT_PER_1K"),
        (
            "llm-price-completion-per-1k",
            "COPILOT_LLM_PRICE_COMPLETION_PER_1K",
        ),
        ("prometheus-url", "COPILOT_PROMETHEUS_URL"),
        ("prometheus-queries", "COPILOT_PROMETHEUS_QUERIES"),
        ("data-dir", "COPILOT_DATA_DIR"),
        ("log-format", "COPILOT_LOG_FORMAT"),
        ("slack-api-url", "COPILOT_SLACK_API_URL"),
        (
            "slack-response-url-prefix",
            "COPILOT_SLACK_RESPONSE_URL_PREFIX",
        ),
        ("task-lease-secs", "COPILOT_TASK_LEASE_SECS"),
    ];

    #[test]
    fn every_setting_keeps_its_flag_variable_and_value_name() {
        let command = Cli::command();
        let settings: Vec<_> = command
            .get_arguments()
            .filter(|arg| arg.get_env().is_some())
            .collect();
        let actual: BTreeSet<(String, String)> = settings
            .iter()
            .map(|arg| {
                (
                    arg.get_long().expect("a flag").to_owned(),
                    arg.get_env().unwrap().to_str().unwrap().to_owned(),
                )
            })
            .collect();
        let expected: BTreeSet<(String, String)> = NAMES
            .iter()
            .map(|(long, env)| (long.to_string(), env.to_string()))
            .collect();
        assert_eq!(actual, expected);
        assert_eq!(settings.len(), NAMES.len(), "a flag named twice");
        // `--help` shows `--nats-url <NATS_URL>`, as it did when the settings were flat.
        for arg in settings {
            let long = arg.get_long().unwrap();
            let flat = long.replace('-', "_");
            assert_eq!(arg.get_id().as_str(), flat, "--{long}");
            assert_eq!(
                arg.get_value_names().unwrap(),
                [flat.to_uppercase()],
                "--{long}"
            );
            assert!(arg.is_global_set(), "--{long} is global");
        }
    }

    #[test]
    fn the_readmes_configuration_table_names_every_variable() {
        let readme = include_str!("../../../README.md");
        let table = readme
            .split_once("## Configuration")
            .expect("a Configuration section")
            .1
            .split_once("\n## ")
            .map_or(readme, |(section, _)| section);
        for (long, env) in NAMES {
            assert!(
                table.contains(&format!("`{env}`")),
                "{env} not in the README"
            );
            // The two price flags share one abbreviated cell (`--llm-price-…`).
            if !long.starts_with("llm-price-") {
                assert!(
                    table.contains(&format!("`--{long}`")),
                    "--{long} not in the README"
                );
            }
        }
    }

    #[test]
    fn flags_land_in_their_nested_fields() {
        let s = Cli::try_parse_from([
            "copilot",
            "--nats-url=nats://n:1",
            "--publish-timeout-ms=11",
            "--database-url=postgres://d/db",
            "--db-max-connections=12",
            "--listen=127.0.0.1:9",
            "--public-url=https://copilot.example/",
            "--max-body-bytes=13",
            "--http-header-timeout-ms=14",
            "--http-body-timeout-ms=15",
            "--jwt-secret=jwt-secret-value",
            "--jwt-algorithm=EdDSA",
            "--jwt-public-key=/k/pub.pem",
            "--jwt-jwks=/k/jwks.json",
            "--jwt-private-key=/k/key.pem",
            "--jwt-kid=k1",
            "--jwt-leeway-secs=16",
            "--jwt-issuer=iss",
            "--jwt-audience=aud",
            "--webhook-rate-per-sec=17",
            "--webhook-burst=18",
            "--api-rate-per-sec=19",
            "--api-burst=20",
            "--api-user-rate-per-sec=21",
            "--api-user-burst=22",
            "--auth-failures-per-min=23",
            "--egress-allow=10.0.0.0/8",
            "--tenant-env-allow=acme=ACME_KEY",
            "--secrets-key=k1:c2VhbGluZw==",
            "--secrets-key-file=/k/secrets",
            "--projector-batch=24",
            "--correlator-tick-ms=25",
            "--hypothesis-min-interval-secs=26",
            "--hypothesis-settle-ms=27",
            "--hypothesis-budget-tokens=28",
            "--llm-base-url=http://llm/v1",
            "--llm-model=m",
            "--llm-api-key=sk-key",
            "--llm-timeout-ms=29",
            "--llm-price-prompt-per-1k=0.5",
            "--llm-price-completion-per-1k=1.5",
            "--prometheus-url=http://prom",
            "--prometheus-queries=/q.json",
            "--data-dir=/data",
            "--log-format=json",
        ])
        .unwrap()
        .settings;

        assert_eq!(s.nats.url(), "nats://n:1");
        assert_eq!(s.nats.publish_timeout(), Duration::from_millis(11));
        assert_eq!(s.database.url(), "postgres://d/db");
        assert_eq!(s.database.max_connections, 12);
        assert_eq!(s.http.listen, "127.0.0.1:9".parse().unwrap());
        assert_eq!(s.http.public_url(), "https://copilot.example");
        assert_eq!(s.http.max_body_bytes, 13);
        assert_eq!(s.http.header_timeout_ms, 14);
        assert_eq!(s.http.body_timeout_ms, 15);
        assert!(s.http.instrumentation, "only benchmarks turn it off");
        let jwt = &s.jwt;
        assert_eq!(
            jwt.secret.as_ref().unwrap().expose_secret(),
            "jwt-secret-value"
        );
        assert_eq!(jwt.algorithm, crate::auth::JwtAlgorithm::EdDsa);
        assert_eq!(jwt.public_key, Some("/k/pub.pem".into()));
        assert_eq!(jwt.jwks, Some("/k/jwks.json".into()));
        assert_eq!(jwt.private_key, Some("/k/key.pem".into()));
        assert_eq!(jwt.kid.as_deref(), Some("k1"));
        assert_eq!(jwt.leeway_secs, 16);
        assert_eq!(jwt.issuer, "iss");
        assert_eq!(jwt.audience, "aud");
        let limits = &s.limits;
        assert_eq!(
            [
                limits.webhook_rate_per_sec,
                limits.webhook_burst,
                limits.api_rate_per_sec,
                limits.api_burst,
                limits.api_user_rate_per_sec,
                limits.api_user_burst,
                limits.auth_failures_per_min,
            ],
            [17, 18, 19, 20, 21, 22, 23]
        );
        let tenancy = &s.tenancy;
        assert_eq!(tenancy.egress_allow.as_deref(), Some("10.0.0.0/8"));
        assert!(tenancy.tenant_env_allowed("acme", "ACME_KEY"));
        assert_eq!(
            tenancy.secrets_key.as_ref().unwrap().expose_secret(),
            "k1:c2VhbGluZw=="
        );
        assert_eq!(tenancy.secrets_key_file, Some("/k/secrets".into()));
        assert_eq!(s.projector.batch, 24);
        assert_eq!(s.correlator.tick_ms, 25);
        let hypothesis = &s.hypothesis;
        assert_eq!(hypothesis.min_interval_secs, 26);
        assert_eq!(hypothesis.settle_ms, 27);
        assert_eq!(hypothesis.budget_tokens, 28);
        assert_eq!(hypothesis.llm.base_url.as_deref(), Some("http://llm/v1"));
        assert_eq!(hypothesis.llm.model.as_deref(), Some("m"));
        assert_eq!(
            hypothesis.llm.api_key.as_ref().unwrap().expose_secret(),
            "sk-key"
        );
        assert_eq!(hypothesis.llm.timeout_ms, 29);
        assert_eq!(hypothesis.llm.price_prompt_per_1k, 0.5);
        assert_eq!(hypothesis.llm.price_completion_per_1k, 1.5);
        assert_eq!(hypothesis.prometheus_url.as_deref(), Some("http://prom"));
        assert_eq!(hypothesis.prometheus_queries, Some("/q.json".into()));
        assert_eq!(s.data_dir, PathBuf::from("/data"));
        assert_eq!(s.log_format, crate::telemetry::LogFormat::Json);
    }

    /// Environment variables are read as the process starts; setting them in a running test
    /// would race the other tests reading them, so this test runs itself again in a child
    /// process with the variables set.
    #[test]
    fn environment_variables_land_in_their_nested_fields() {
        const CHILD: &str = "COPILOT_SETTINGS_TEST_CHILD";
        const NAME: &str = "settings::tests::environment_variables_land_in_their_nested_fields";
        if std::env::var_os(CHILD).is_none() {
            let output = std::process::Command::new(std::env::current_exe().unwrap())
                .args([NAME, "--exact", "--test-threads=1"])
                .env(CHILD, "1")
                .envs([
                    ("NATS_URL", "nats://from-env:4222"),
                    ("DATABASE_URL", "postgres://from-env/db"),
                    ("COPILOT_DB_MAX_CONNECTIONS", "3"),
                    ("COPILOT_HTTP_BODY_TIMEOUT_MS", "4"),
                    ("COPILOT_JWT_AUDIENCE", "env-audience"),
                    ("COPILOT_API_USER_BURST", "5"),
                    ("COPILOT_TENANT_ENV_ALLOW", "acme=ACME_KEY"),
                    ("COPILOT_SECRETS_KEY", "k1:ZW52"),
                    ("COPILOT_PROJECTOR_BATCH", "6"),
                    ("COPILOT_CORRELATOR_TICK_MS", "7"),
                    ("COPILOT_HYPOTHESIS_SETTLE_MS", "8"),
                    ("COPILOT_LLM_API_KEY", "sk-from-env"),
                    ("COPILOT_LLM_PRICE_COMPLETION_PER_1K", "0.25"),
                    ("COPILOT_PROMETHEUS_URL", "http://prom-from-env"),
                    ("COPILOT_DATA_DIR", "/env-data"),
                ])
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success() && stdout.contains("1 passed"),
                "{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            return;
        }
        let s = Settings::defaults();
        assert_eq!(s.nats.url(), "nats://from-env:4222");
        assert_eq!(s.database.url(), "postgres://from-env/db");
        assert_eq!(s.database.max_connections, 3);
        assert_eq!(s.http.body_timeout_ms, 4);
        assert_eq!(s.jwt.audience, "env-audience");
        assert_eq!(s.limits.api_user_burst, 5);
        assert!(s.tenancy.tenant_env_allowed("acme", "ACME_KEY"));
        assert_eq!(s.tenancy.secrets_key.unwrap().expose_secret(), "k1:ZW52");
        assert_eq!(s.projector.batch, 6);
        assert_eq!(s.correlator.tick_ms, 7);
        assert_eq!(s.hypothesis.settle_ms, 8);
        assert_eq!(
            s.hypothesis.llm.api_key.unwrap().expose_secret(),
            "sk-from-env"
        );
        assert_eq!(s.hypothesis.llm.price_completion_per_1k, 0.25);
        assert_eq!(
            s.hypothesis.prometheus_url.as_deref(),
            Some("http://prom-from-env")
        );
        assert_eq!(s.data_dir, PathBuf::from("/env-data"));
    }

    #[test]
    fn printing_the_settings_never_shows_a_secret() {
        let mut settings = Settings::defaults();
        settings.jwt.secret = Some("jwt-secret-value-0123456789abcdef".to_owned().into());
        settings.hypothesis.llm.api_key = Some("sk-llm-key-value".to_owned().into());
        settings.tenancy.secrets_key = Some("k1:c2VhbGluZy1rZXk=".to_owned().into());

        let printed = format!("{settings:?}");

        for secret in ["jwt-secret-value", "sk-llm-key-value", "c2VhbGluZy1rZXk"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
    }

    #[test]
    fn a_tenant_may_name_only_the_variables_listed_for_it_and_never_the_platforms() {
        let mut tenancy = Settings::defaults().tenancy;
        tenancy.tenant_env_allow =
            Some("acme=ACME_OPENAI_KEY, acme=COPILOT_JWT_SECRET,globex=DATABASE_URL".into());

        assert!(tenancy.tenant_env_allowed("acme", "ACME_OPENAI_KEY"));
        assert!(!tenancy.tenant_env_allowed("globex", "ACME_OPENAI_KEY"));
        assert!(!tenancy.tenant_env_allowed("acme", "COPILOT_JWT_SECRET"));
        assert!(!tenancy.tenant_env_allowed("globex", "DATABASE_URL"));
        assert!(
            !Settings::defaults()
                .tenancy
                .tenant_env_allowed("acme", "ACME_OPENAI_KEY")
        );
    }

    #[test]
    fn redact_hides_the_password_and_keeps_the_rest() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }
}
