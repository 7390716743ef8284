//! Settings for every service, from flags or environment variables (flags win). One struct
//! serves all services so that `copilot up` and the separate services read the same names.

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
    /// NATS server with JetStream [default: nats://127.0.0.1:4222; `copilot up` starts one if none answers]
    #[arg(long, env = "NATS_URL", global = true)]
    pub nats_url: Option<String>,

    /// Postgres database for the read models [default: postgres://postgres@127.0.0.1:5432/copilot; `copilot up` starts one if none answers]
    #[arg(long, env = "DATABASE_URL", global = true)]
    pub database_url: Option<String>,

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

    /// HS256 secret for API JWTs (at least 32 bytes); `copilot up` generates and keeps one in the data directory when unset
    #[arg(
        long,
        env = "COPILOT_JWT_SECRET",
        value_parser = secret,
        hide_env_values = true,
        global = true
    )]
    pub jwt_secret: Option<SecretString>,

    /// JWT algorithm, pinned: tokens naming another are refused
    #[arg(
        long,
        env = "COPILOT_JWT_ALGORITHM",
        default_value = "HS256",
        global = true
    )]
    pub jwt_algorithm: crate::auth::JwtAlgorithm,

    /// PEM public key verifying RS256 or EdDSA tokens
    #[arg(long, env = "COPILOT_JWT_PUBLIC_KEY", global = true)]
    pub jwt_public_key: Option<PathBuf>,

    /// JWKS file of verification keys chosen by the token's `kid` (rotation; `oct` keys for HS256)
    #[arg(long, env = "COPILOT_JWT_JWKS", global = true)]
    pub jwt_jwks: Option<PathBuf>,

    /// PEM private key to issue RS256 or EdDSA tokens with; without it the copilot only verifies
    #[arg(long, env = "COPILOT_JWT_PRIVATE_KEY", global = true)]
    pub jwt_private_key: Option<PathBuf>,

    /// `kid` written into the tokens this copilot issues
    #[arg(long, env = "COPILOT_JWT_KID", global = true)]
    pub jwt_kid: Option<String>,

    /// Clock skew tolerated on `exp` and `nbf`, in seconds
    #[arg(
        long,
        env = "COPILOT_JWT_LEEWAY_SECS",
        default_value_t = 30,
        global = true
    )]
    pub jwt_leeway_secs: u64,

    /// JWT issuer (`iss`) issued and required
    #[arg(
        long,
        env = "COPILOT_JWT_ISSUER",
        default_value = "copilot",
        global = true
    )]
    pub jwt_issuer: String,

    /// JWT audience (`aud`) issued and required
    #[arg(
        long,
        env = "COPILOT_JWT_AUDIENCE",
        default_value = "copilot-api",
        global = true
    )]
    pub jwt_audience: String,

    /// Largest webhook body accepted, in bytes
    #[arg(long, env = "COPILOT_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024, global = true)]
    pub max_body_bytes: usize,

    /// How long a client may take to send a request's headers, in milliseconds (0: no limit)
    #[arg(
        long,
        env = "COPILOT_HTTP_HEADER_TIMEOUT_MS",
        default_value_t = 10_000,
        global = true
    )]
    pub http_header_timeout_ms: u64,

    /// How long a client may take to send a request's body, in milliseconds (0: no limit)
    #[arg(
        long,
        env = "COPILOT_HTTP_BODY_TIMEOUT_MS",
        default_value_t = 30_000,
        global = true
    )]
    pub http_body_timeout_ms: u64,

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

    /// How long the gateway waits for JetStream to acknowledge an append before answering 503, in milliseconds
    #[arg(
        long,
        env = "COPILOT_PUBLISH_TIMEOUT_MS",
        default_value_t = 5000,
        global = true
    )]
    pub publish_timeout_ms: u64,

    /// Most events the projector applies in one transaction
    #[arg(
        long,
        env = "COPILOT_PROJECTOR_BATCH",
        default_value_t = 1000,
        global = true
    )]
    pub projector_batch: usize,

    /// How often the correlator looks for incidents whose resolve grace has run out, in milliseconds
    #[arg(
        long,
        env = "COPILOT_CORRELATOR_TICK_MS",
        default_value_t = 1000,
        global = true
    )]
    pub correlator_tick_ms: u64,

    /// The hypothesis service runs at most once per incident per this many seconds
    #[arg(
        long,
        env = "COPILOT_HYPOTHESIS_MIN_INTERVAL_SECS",
        default_value_t = 60,
        global = true
    )]
    pub hypothesis_min_interval_secs: u64,

    /// How long the hypothesis service waits after an incident's first new event, so that a storm's
    /// alerts arrive before it looks, in milliseconds
    #[arg(
        long,
        env = "COPILOT_HYPOTHESIS_SETTLE_MS",
        default_value_t = 5000,
        global = true
    )]
    pub hypothesis_settle_ms: u64,

    /// Most evidence (in estimated tokens) given to an engine; the least relevant is left out
    #[arg(
        long,
        env = "COPILOT_HYPOTHESIS_BUDGET_TOKENS",
        default_value_t = 6000,
        global = true
    )]
    pub hypothesis_budget_tokens: usize,

    /// OpenAI-compatible base URL (with /v1) of a model for hypotheses; unset: the built-in engine only
    #[arg(long, env = "COPILOT_LLM_BASE_URL", global = true)]
    pub llm_base_url: Option<String>,

    /// Model name sent to the endpoint
    #[arg(long, env = "COPILOT_LLM_MODEL", global = true)]
    pub llm_model: Option<String>,

    /// API key sent as a bearer token (never logged)
    #[arg(
        long,
        env = "COPILOT_LLM_API_KEY",
        value_parser = secret,
        global = true,
        hide_env_values = true
    )]
    pub llm_api_key: Option<SecretString>,

    /// Time the model gets before the built-in engine answers instead, in milliseconds
    #[arg(
        long,
        env = "COPILOT_LLM_TIMEOUT_MS",
        default_value_t = 30000,
        global = true
    )]
    pub llm_timeout_ms: u64,

    /// Price per 1k prompt tokens in USD, for the cost estimate of each call
    #[arg(
        long,
        env = "COPILOT_LLM_PRICE_PROMPT_PER_1K",
        default_value_t = 0.0,
        global = true
    )]
    pub llm_price_prompt_per_1k: f64,

    /// Price per 1k completion tokens in USD
    #[arg(
        long,
        env = "COPILOT_LLM_PRICE_COMPLETION_PER_1K",
        default_value_t = 0.0,
        global = true
    )]
    pub llm_price_completion_per_1k: f64,

    /// Prometheus to fetch metric evidence from (a tenant's own setting wins); unset: no metrics
    #[arg(long, env = "COPILOT_PROMETHEUS_URL", global = true)]
    pub prometheus_url: Option<String>,

    /// JSON file of PromQL templates (`[{"name", "query"}]`, `{service}` replaced) [default: built in]
    #[arg(long, env = "COPILOT_PROMETHEUS_QUERIES", global = true)]
    pub prometheus_queries: Option<PathBuf>,

    /// Benchmarks only: serve HTTP without the instrumentation layer, to measure its cost.
    #[arg(skip = true)]
    pub http_instrumentation: bool,

    /// Fault injection for tests: the correlator fails after appending its decisions and before
    /// committing them, as a crash there would.
    #[arg(skip)]
    pub fault_correlator_crash_after_append: bool,

    /// Postgres connections per process
    #[arg(
        long,
        env = "COPILOT_DB_MAX_CONNECTIONS",
        default_value_t = 16,
        global = true
    )]
    pub db_max_connections: u32,

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
}

impl Settings {
    pub fn nats_url(&self) -> String {
        self.nats_url
            .clone()
            .unwrap_or_else(|| DEFAULT_NATS_URL.to_owned())
    }

    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned())
    }

    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }

    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
            .trim_end_matches('/')
            .to_owned()
    }

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
    use super::*;

    #[test]
    fn printing_the_settings_never_shows_a_secret() {
        let mut settings = Settings::defaults();
        settings.jwt_secret = Some("jwt-secret-value-0123456789abcdef".to_owned().into());
        settings.llm_api_key = Some("sk-llm-key-value".to_owned().into());
        settings.secrets_key = Some("k1:c2VhbGluZy1rZXk=".to_owned().into());

        let printed = format!("{settings:?}");

        for secret in ["jwt-secret-value", "sk-llm-key-value", "c2VhbGluZy1rZXk"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
    }

    #[test]
    fn a_tenant_may_name_only_the_variables_listed_for_it_and_never_the_platforms() {
        let mut settings = Settings::defaults();
        settings.tenant_env_allow =
            Some("acme=ACME_OPENAI_KEY, acme=COPILOT_JWT_SECRET,globex=DATABASE_URL".into());

        assert!(settings.tenant_env_allowed("acme", "ACME_OPENAI_KEY"));
        assert!(!settings.tenant_env_allowed("globex", "ACME_OPENAI_KEY"));
        assert!(!settings.tenant_env_allowed("acme", "COPILOT_JWT_SECRET"));
        assert!(!settings.tenant_env_allowed("globex", "DATABASE_URL"));
        assert!(!Settings::defaults().tenant_env_allowed("acme", "ACME_OPENAI_KEY"));
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
