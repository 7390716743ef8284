//! Plumbing every service shares, so each service crate holds only its own logic: settings,
//! logging, shutdown, the NATS connection and stream provisioning, authentication (webhook
//! tokens and JWTs), the one HTTP error type, request ids and Prometheus metrics.

pub mod append;
pub mod auth;
pub mod consume;
pub mod egress;
pub mod http;
pub mod metrics;
pub mod nats;
pub mod openapi;
pub mod ratelimit;
pub mod secrets;
pub mod settings;
pub mod shutdown;
pub mod taskqueue;
pub mod telemetry;
pub mod tokens;

pub use settings::Settings;

use std::sync::Arc;

/// Connections and shared state one process hands to each service it runs.
#[derive(Clone)]
pub struct Context {
    pub settings: Arc<Settings>,
    pub nats: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub store: copilot_store::Store,
    /// Whether this process needs Postgres to serve (`/readyz` fails without it). A
    /// gateway-only process does not: it authenticates from NATS and appends to NATS.
    pub needs_postgres: bool,
}

/// Refuses to start on settings that would otherwise be read as something safer than meant:
/// an egress allowance or a secrets key that does not parse.
pub fn check_settings(settings: &Settings) -> anyhow::Result<()> {
    egress::EgressPolicy::from_settings(settings).map_err(anyhow::Error::msg)?;
    secrets::SecretKeys::from_settings(settings)?;
    Ok(())
}

impl Context {
    /// Connects to NATS and Postgres as the settings say. Provisioning streams and running
    /// migrations are separate steps (`nats::provision`, `Store::migrate`).
    pub async fn connect(settings: Settings, service: &str) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        check_settings(&settings)?;
        let nats = nats::connect(&settings.nats.url(), service).await?;
        let js = nats::jetstream(nats.clone(), settings.nats.publish_timeout());
        let store = copilot_store::Store::connect(
            &settings.database.url(),
            settings.database.max_connections,
        )
        .await
        .with_context(|| {
            format!(
                "connecting to Postgres at {}",
                settings::redact(&settings.database.url())
            )
        })?;
        Ok(Self {
            settings: Arc::new(settings),
            nats,
            js,
            store,
            needs_postgres: true,
        })
    }

    /// Connects to NATS only; the Postgres pool is made but connects on first use, so the
    /// process starts and serves while Postgres is away. For the gateway alone.
    pub async fn connect_nats_only(settings: Settings, service: &str) -> anyhow::Result<Self> {
        check_settings(&settings)?;
        let nats = nats::connect(&settings.nats.url(), service).await?;
        let js = nats::jetstream(nats.clone(), settings.nats.publish_timeout());
        let store = copilot_store::Store::connect_lazy(
            &settings.database.url(),
            settings.database.max_connections,
        )?;
        Ok(Self {
            settings: Arc::new(settings),
            nats,
            js,
            store,
            needs_postgres: false,
        })
    }
}
