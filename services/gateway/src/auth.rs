//! Webhook authentication: `Authorization: Bearer <token>`, or Basic with the tenant slug as
//! user and the token as password (what Alertmanager's `basic_auth` and Grafana's contact point
//! send). Tokens are resolved from the JetStream key-value bucket the tokens projection keeps
//! (`copilot_runtime::tokens`), never from Postgres: a task watches the bucket into memory, so a
//! lookup is a memory read, and a revocation or a suspension reaches every gateway as soon as
//! the bucket records it. Revocation times and suspension are checked at request time.

use std::{
    collections::HashMap,
    sync::{
        RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, kv};
use axum::http::{HeaderMap, header};
use base64::Engine as _;
use chrono::Utc;
use copilot_events::subjects;
use copilot_runtime::{
    auth::hash_token,
    http::ApiError,
    ratelimit::AuthFailureLimiter,
    tokens::{TenantEntry, TokenEntry},
};
use futures::StreamExt as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const CACHE_MAX_ENTRIES: usize = 10_000;
/// How long a token that authenticated stays known good: a source over its failed-auth budget
/// still has such tokens looked up (so a sender behind the same address as a guesser keeps
/// delivering), and only unknown ones refused unseen.
const KNOWN_GOOD_TTL: Duration = Duration::from_secs(600);
/// How long an unknown token waits for the bucket to catch up with TENANTS (a token issued a
/// moment ago may not have reached this gateway yet).
const CATCH_UP_WAIT: Duration = Duration::from_secs(2);

/// The bucket as this process last saw it.
#[derive(Default)]
pub struct TokenView {
    tokens: RwLock<HashMap<String, TokenEntry>>,
    tenants: RwLock<HashMap<String, TenantEntry>>,
    /// The last TENANTS sequence the bucket had applied, as watched.
    checkpoint: AtomicU64,
    /// Whether the watch has delivered the bucket's values as they were when it started.
    loaded: AtomicBool,
    changed: Notify,
    known_good: RwLock<HashMap<String, Instant>>,
}

impl TokenView {
    /// Whether the bucket has been read into memory (the gateway can authenticate).
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Keeps the view current until `shutdown`: watches the bucket (its values, then every
    /// change), watching again after NATS comes back or the bucket is recreated.
    pub async fn watch(&self, js: jetstream::Context, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let watched = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.watch_once(&js) => r,
            };
            if let Err(err) = watched {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "watching the webhook tokens bucket"
                );
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn watch_once(&self, js: &jetstream::Context) -> anyhow::Result<()> {
        let store = copilot_runtime::tokens::bucket(js).await?;
        let mut watch = store.watch_with_history(">").await?;
        if store.status().await?.values() == 0 {
            self.mark_loaded();
        }
        while let Some(entry) = watch.next().await {
            let entry = entry?;
            self.record(&entry);
            if entry.delta == 0 {
                self.mark_loaded();
            }
        }
        anyhow::bail!("the watch of the webhook tokens bucket ended")
    }

    fn mark_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }

    fn record(&self, entry: &kv::Entry) {
        if entry.operation != kv::Operation::Put {
            return;
        }
        let key = entry.key.as_str();
        let value = &entry.value;
        if key == subjects::TOKENS_CHECKPOINT_KEY {
            if let Ok(seq) = serde_json::from_slice::<u64>(value) {
                self.checkpoint.fetch_max(seq, Ordering::AcqRel);
            }
        } else if let Some(hash) = key.strip_prefix("token.") {
            if let Ok(token) = serde_json::from_slice::<TokenEntry>(value) {
                let mut tokens = self.tokens.write().expect("tokens lock");
                tokens.insert(hash.to_owned(), token);
            }
        } else if let Some(tenant) = key.strip_prefix("tenant.")
            && let Ok(status) = serde_json::from_slice::<TenantEntry>(value)
        {
            let mut tenants = self.tenants.write().expect("tenants lock");
            tenants.insert(tenant.to_owned(), status);
        }
        self.changed.notify_waiters();
    }

    /// The tenant the request's credentials belong to, or the error to answer (401 for
    /// credentials that are missing, wrong or revoked; 403 for a suspended tenant; 429 for
    /// unknown credentials from a source past its failed-auth budget; 503 while the bucket
    /// cannot be read from NATS). Failures are counted against the source.
    pub async fn authenticate(
        &self,
        js: &jetstream::Context,
        headers: &HeaderMap,
        limited: Option<(&AuthFailureLimiter, std::net::IpAddr)>,
    ) -> Result<String, ApiError> {
        let hash = credentials(headers).map(|(_, token)| hash_token(&token));
        if let Some((limiter, source)) = limited
            && !hash.as_ref().is_ok_and(|h| self.is_known_good(h))
        {
            limiter.admit(source)?;
        }
        let result = self.lookup(js, headers).await;
        match (&result, limited) {
            (Ok(_), _) => {
                if let Ok(hash) = hash {
                    self.remember_good(hash);
                }
            }
            (Err(ApiError::Unauthorized(_)), Some((limiter, source))) => limiter.failed(source),
            _ => {}
        }
        result
    }

    fn is_known_good(&self, hash: &str) -> bool {
        let known = self.known_good.read().expect("known-good lock");
        known
            .get(hash)
            .is_some_and(|at| at.elapsed() < KNOWN_GOOD_TTL)
    }

    fn remember_good(&self, hash: String) {
        let mut known = self.known_good.write().expect("known-good lock");
        if known.len() >= CACHE_MAX_ENTRIES {
            known.retain(|_, at| at.elapsed() < KNOWN_GOOD_TTL);
        }
        if known.len() < CACHE_MAX_ENTRIES {
            known.insert(hash, Instant::now());
        }
    }

    fn token(&self, hash: &str) -> Option<TokenEntry> {
        self.tokens.read().expect("tokens lock").get(hash).cloned()
    }

    fn suspended(&self, tenant: &str) -> bool {
        self.tenants
            .read()
            .expect("tenants lock")
            .get(tenant)
            .is_some_and(|t| t.suspended)
    }

    /// Waits (a little) until the watched bucket has applied everything TENANTS held when asked,
    /// so a token issued a moment ago is known. 503 when NATS cannot say.
    async fn catch_up(&self, js: &jetstream::Context) -> Result<(), ApiError> {
        let unavailable = || ApiError::Unavailable {
            detail: "the webhook tokens cannot be read from the event store; retry shortly".into(),
            retry_after_secs: 1,
        };
        let target = copilot_runtime::nats::stream_state(js, subjects::TENANTS)
            .await
            .map_err(|err| {
                tracing::warn!(error = %err, "cannot read the TENANTS stream's state");
                unavailable()
            })?
            .last_sequence;
        let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
        loop {
            let changed = self.changed.notified();
            if self.loaded() && self.checkpoint.load(Ordering::Acquire) >= target {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                // Not caught up in time: answer from what is known (a projection that is not
                // running must not turn every unknown token into a 503).
                return if self.loaded() {
                    Ok(())
                } else {
                    Err(unavailable())
                };
            }
        }
    }

    async fn lookup(
        &self,
        js: &jetstream::Context,
        headers: &HeaderMap,
    ) -> Result<String, ApiError> {
        let (user, token) = credentials(headers)?;
        let hash = hash_token(&token);
        let owner = match self.token(&hash) {
            Some(owner) if self.loaded() => Some(owner),
            _ => {
                self.catch_up(js).await?;
                self.token(&hash)
            }
        };
        // Credentials that do not fit together are refused before anything about the token's
        // tenant is told, and without naming it: a caller who knows a token but not its tenant
        // learns nothing more.
        match owner {
            Some(owner) if user.as_ref().is_some_and(|u| *u != owner.tenant) => {
                Err(ApiError::Unauthorized(
                    "the basic-auth user must be the tenant the token belongs to".into(),
                ))
            }
            Some(owner) if owner.revoked(Utc::now()) => Err(ApiError::Unauthorized(
                "the webhook token has been revoked".into(),
            )),
            Some(owner) if self.suspended(&owner.tenant) => Err(ApiError::Forbidden(
                "the token's tenant is suspended; its webhooks are refused until it is resumed"
                    .into(),
            )),
            Some(owner) => Ok(owner.tenant),
            None => Err(ApiError::Unauthorized("unknown webhook token".into())),
        }
    }
}

/// `(basic-auth user, token)` from the Authorization header.
fn credentials(headers: &HeaderMap) -> Result<(Option<String>, String), ApiError> {
    let missing = || {
        ApiError::Unauthorized(
            "missing credentials: send `Authorization: Bearer <webhook token>` or basic auth with the tenant as user".into(),
        )
    };
    let value = headers.get(header::AUTHORIZATION).ok_or_else(missing)?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::Unauthorized("the Authorization header is not ASCII".into()))?;
    let (scheme, rest) = value.split_once(' ').ok_or_else(missing)?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        return Ok((None, rest.to_owned()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| {
                ApiError::Unauthorized("basic credentials are not valid base64 UTF-8".into())
            })?;
        if let Some((user, password)) = decoded.split_once(':')
            && !password.is_empty()
        {
            return Ok((Some(user.to_owned()), password.to_owned()));
        }
        return Err(ApiError::Unauthorized(
            "basic credentials need `tenant:token`".into(),
        ));
    }
    Err(missing())
}
