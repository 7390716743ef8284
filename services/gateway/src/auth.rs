//! Webhook authentication: `Authorization: Bearer <token>`, or Basic with the tenant slug as
//! user and the token as password (what Alertmanager's `basic_auth` and Grafana's contact point
//! send). Lookups are cached for one second, so a revoked token, or a suspended tenant, is
//! refused within a second of the projector recording it, on every gateway, without a query
//! per request.

use std::{
    collections::HashMap,
    sync::RwLock,
    time::{Duration, Instant},
};

use axum::http::{HeaderMap, header};
use base64::Engine as _;
use copilot_runtime::{auth::hash_token, http::ApiError, ratelimit::AuthFailureLimiter};
use copilot_store::{Store, TokenOwner};

const CACHE_TTL: Duration = Duration::from_secs(1);
const CACHE_MAX_ENTRIES: usize = 10_000;
/// How long a token that authenticated stays known good: a source over its failed-auth budget
/// still has such tokens looked up (so a sender behind the same address as a guesser keeps
/// delivering), and only unknown ones refused unseen.
const KNOWN_GOOD_TTL: Duration = Duration::from_secs(600);

#[derive(Default)]
pub struct TokenCache {
    entries: RwLock<HashMap<String, (Option<TokenOwner>, Instant)>>,
    known_good: RwLock<HashMap<String, Instant>>,
}

impl TokenCache {
    /// The tenant the request's credentials belong to, or the error to answer (401 for
    /// credentials that are missing, wrong or revoked; 429 for unknown credentials from a
    /// source past its failed-auth budget; 503 while Postgres cannot be reached). Failures are
    /// counted against the source.
    pub async fn authenticate(
        &self,
        store: &Store,
        headers: &HeaderMap,
        limited: Option<(&AuthFailureLimiter, std::net::IpAddr)>,
    ) -> Result<String, ApiError> {
        let hash = credentials(headers).map(|(_, token)| hash_token(&token));
        if let Some((limiter, source)) = limited
            && !hash.as_ref().is_ok_and(|h| self.is_known_good(h))
        {
            limiter.admit(source)?;
        }
        let result = self.lookup(store, headers).await;
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

    async fn lookup(&self, store: &Store, headers: &HeaderMap) -> Result<String, ApiError> {
        let (user, token) = credentials(headers)?;
        let hash = hash_token(&token);
        let owner = match self.cached(&hash) {
            Some(owner) => owner,
            None => {
                let owner = store.find_token(&hash).await?;
                self.remember(hash, owner.clone());
                owner
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
            Some(owner) if owner.revoked => Err(ApiError::Unauthorized(
                "the webhook token has been revoked".into(),
            )),
            Some(owner) if owner.suspended => Err(ApiError::Forbidden(
                "the token's tenant is suspended; its webhooks are refused until it is resumed"
                    .into(),
            )),
            Some(owner) => Ok(owner.tenant),
            None => Err(ApiError::Unauthorized("unknown webhook token".into())),
        }
    }

    fn cached(&self, hash: &str) -> Option<Option<TokenOwner>> {
        let entries = self.entries.read().expect("token cache lock");
        entries
            .get(hash)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(owner, _)| owner.clone())
    }

    fn remember(&self, hash: String, owner: Option<TokenOwner>) {
        let mut entries = self.entries.write().expect("token cache lock");
        if entries.len() >= CACHE_MAX_ENTRIES {
            entries.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
        }
        if entries.len() < CACHE_MAX_ENTRIES {
            entries.insert(hash, (owner, Instant::now()));
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
