//! The read and command API: JSON over the read models for the caller's tenant only, and the
//! tenant administration routes.
//!
//! Who may call what is decided in one place, [`POLICY`]: every route's method and template with
//! the access it needs. A layer checks it before any handler runs, so a handler cannot forget;
//! a route without an entry is refused. The tenant comes from the token's claims, never from
//! the request, and every read runs in a transaction that row-level security confines to that
//! tenant, so a token of one tenant cannot name another tenant's data (it gets 404, as for data
//! that does not exist).

pub mod admin;
pub mod incidents;
pub mod page;
pub mod secrets;
pub mod signals;

use std::sync::Arc;

use axum::{
    Router,
    extract::{FromRef, FromRequestParts, MatchedPath, RawPathParams, Request, State},
    http::{Method, header, request::Parts},
    middleware::Next,
    response::Response,
    routing::{get, post, put},
};
use copilot_events::Role;
use copilot_runtime::{
    Context, Settings,
    auth::{Claims, Jwt},
    egress::EgressPolicy,
    http::{Actor, ApiError},
    ratelimit::{AuthFailureLimiter, TenantLimiter},
    secrets::SecretKeys,
};
use copilot_store::Tx;
use tokio_util::sync::CancellationToken;

/// What a route needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A user of the tenant whose role is at least this.
    Tenant(Role),
    /// A platform operator's token.
    Platform,
    /// A platform operator, or an admin of the tenant the path's `{slug}` names.
    PlatformOrTenantAdmin,
}

/// Every API route and who may call it. The README's role table is this table.
pub const POLICY: &[(Method, &str, Access)] = &[
    (Method::GET, "/v1/me", Access::Tenant(Role::Viewer)),
    (Method::GET, "/v1/signals", Access::Tenant(Role::Viewer)),
    (
        Method::GET,
        "/v1/signals/{id}",
        Access::Tenant(Role::Viewer),
    ),
    (Method::GET, "/v1/incidents", Access::Tenant(Role::Viewer)),
    (
        Method::GET,
        "/v1/incidents/{id}",
        Access::Tenant(Role::Viewer),
    ),
    (
        Method::GET,
        "/v1/incidents/{id}/timeline",
        Access::Tenant(Role::Viewer),
    ),
    (
        Method::GET,
        "/v1/incidents/{id}/hypotheses",
        Access::Tenant(Role::Viewer),
    ),
    (
        Method::POST,
        "/v1/incidents/{id}/transitions",
        Access::Tenant(Role::Engineer),
    ),
    (
        Method::POST,
        "/v1/incidents/{id}/assign",
        Access::Tenant(Role::Engineer),
    ),
    (
        Method::POST,
        "/v1/incidents/{id}/notes",
        Access::Tenant(Role::Engineer),
    ),
    (
        Method::POST,
        "/v1/incidents/{id}/hypotheses/{hid}/verdict",
        Access::Tenant(Role::Engineer),
    ),
    (Method::GET, "/v1/stats", Access::Tenant(Role::Viewer)),
    (
        Method::GET,
        "/v1/settings/correlation",
        Access::Tenant(Role::Viewer),
    ),
    (
        Method::PUT,
        "/v1/settings/correlation",
        Access::Tenant(Role::Admin),
    ),
    (
        Method::GET,
        "/v1/settings/integrations",
        Access::Tenant(Role::Viewer),
    ),
    (
        Method::PUT,
        "/v1/settings/integrations",
        Access::Tenant(Role::Admin),
    ),
    (
        Method::GET,
        "/v1/settings/retention",
        Access::Tenant(Role::Viewer),
    ),
    (
        Method::PUT,
        "/v1/settings/retention",
        Access::Tenant(Role::Admin),
    ),
    (
        Method::GET,
        "/v1/settings/secrets",
        Access::Tenant(Role::Admin),
    ),
    (
        Method::PUT,
        "/v1/settings/secrets/{name}",
        Access::Tenant(Role::Admin),
    ),
    (
        Method::DELETE,
        "/v1/settings/secrets/{name}",
        Access::Tenant(Role::Admin),
    ),
    (Method::GET, "/v1/audit", Access::Tenant(Role::Admin)),
    (Method::GET, "/v1/admin/tenants", Access::Platform),
    (Method::POST, "/v1/admin/tenants", Access::Platform),
    (
        Method::GET,
        "/v1/admin/tenants/{slug}",
        Access::PlatformOrTenantAdmin,
    ),
    (
        Method::POST,
        "/v1/admin/tenants/{slug}/suspend",
        Access::Platform,
    ),
    (
        Method::POST,
        "/v1/admin/tenants/{slug}/resume",
        Access::Platform,
    ),
    (
        Method::GET,
        "/v1/admin/tenants/{slug}/tokens",
        Access::PlatformOrTenantAdmin,
    ),
    (
        Method::POST,
        "/v1/admin/tenants/{slug}/tokens",
        Access::PlatformOrTenantAdmin,
    ),
    (
        Method::POST,
        "/v1/admin/tenants/{slug}/tokens/{token_id}/revoke",
        Access::PlatformOrTenantAdmin,
    ),
    (
        Method::POST,
        "/v1/admin/tenants/{slug}/tokens/{token_id}/rotate",
        Access::PlatformOrTenantAdmin,
    ),
    (
        Method::GET,
        "/v1/admin/tenants/{slug}/users",
        Access::PlatformOrTenantAdmin,
    ),
    (
        Method::POST,
        "/v1/admin/tenants/{slug}/users",
        Access::PlatformOrTenantAdmin,
    ),
    (
        Method::PATCH,
        "/v1/admin/tenants/{slug}/users/{user_id}",
        Access::PlatformOrTenantAdmin,
    ),
    (
        Method::DELETE,
        "/v1/admin/tenants/{slug}/users/{user_id}",
        Access::PlatformOrTenantAdmin,
    ),
];

/// The access a route needs, if the table has it. `HEAD` is a `GET` without the body.
pub fn access_of(method: &Method, route: &str) -> Option<Access> {
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    POLICY
        .iter()
        .find(|(m, r, _)| m == method && *r == route)
        .map(|(_, _, access)| *access)
}

#[derive(Clone)]
pub struct Api {
    pub ctx: Context,
    pub jwt: Arc<Jwt>,
    limiter: Option<Arc<TenantLimiter>>,
    user_limiter: Option<Arc<TenantLimiter>>,
    auth_failures: Option<Arc<AuthFailureLimiter>>,
    /// Where tenant-given URLs may point.
    pub egress: Arc<EgressPolicy>,
    /// The platform's keys for tenant secrets, when the operator configured them.
    pub secrets: Option<Arc<SecretKeys>>,
}

impl Api {
    /// A read transaction that row-level security confines to `tenant`.
    pub async fn tenant_tx(&self, tenant: &str) -> Result<Tx<'static>, ApiError> {
        self.ctx
            .store
            .begin_tenant(tenant)
            .await
            .map_err(ApiError::from)
    }
}

impl FromRef<Api> for Arc<Jwt> {
    fn from_ref(api: &Api) -> Self {
        api.jwt.clone()
    }
}

/// The authenticated caller of a request: the token's claims, with `role` lowered to the
/// user's current role (a token never does more than its user may now).
#[derive(Debug, Clone)]
pub struct Caller(pub Claims);

impl Caller {
    /// Whether the caller may administer tenant `slug`: a platform operator, or its admin.
    pub fn administers(&self, slug: &str) -> bool {
        self.0.platform || (self.0.tenant == slug && self.0.role == Role::Admin)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthorized("missing `Authorization: Bearer <JWT>`".into()))
    }
}

fn bearer(parts: &axum::http::HeaderMap) -> Result<&str, ApiError> {
    parts
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::Unauthorized("missing `Authorization: Bearer <JWT>`".into()))
}

/// Authenticates the caller and checks [`POLICY`] for the matched route, before the handler.
async fn authorize(
    State(api): State<Api>,
    matched: Option<MatchedPath>,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let route = matched.as_ref().map(|m| m.as_str()).unwrap_or_default();
    let access = access_of(req.method(), route).ok_or_else(|| {
        tracing::warn!(route, method = %req.method(), "route has no access policy");
        ApiError::Forbidden("this route has no access policy".into())
    })?;
    let source = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let slug = params.as_ref().ok().and_then(|p| {
        p.iter()
            .find(|(name, _)| *name == "slug")
            .map(|(_, v)| v.to_owned())
    });
    let mut claims = match authenticate(&api, req.headers(), access, slug).await {
        Ok(claims) => claims,
        // A token that verifies costs a guesser nothing to have refused; one that does not is
        // counted against its source, which past its budget gets 429 (see AuthFailureLimiter).
        // Good tokens from the same source keep working.
        Err(err @ ApiError::Unauthorized(_)) => {
            if let (Some(limiter), Some(source)) = (&api.auth_failures, source) {
                limiter.admit(source)?;
                limiter.failed(source);
            }
            return Err(err);
        }
        Err(err) => return Err(err),
    };
    if let Some(limiter) = &api.user_limiter
        && !claims.platform
    {
        limiter.check(&format!("{}/{}", claims.tenant, claims.sub))?;
    }
    if let Some(limiter) = &api.limiter {
        limiter.check(&claims.tenant)?;
    }
    let deadline = copilot_runtime::http::ServerTimeouts::from_settings(&api.ctx.settings).body;
    let mut req = checked_input(req, deadline).await?;
    if claims.platform {
        // An operator is never mistaken for a tenant's user of the same name, in the audit
        // log or anywhere else an actor is recorded.
        claims.sub = format!("platform:{}", claims.sub);
    }
    req.extensions_mut().insert(Actor(claims.sub.clone()));
    req.extensions_mut().insert(Caller(claims));
    Ok(next.run(req).await)
}

/// The caller's claims, checked against the users read model and the route's access: 401 for
/// a token that is not (or no longer) good, 403 for a caller who may not do this, 404 for
/// another tenant's administration.
async fn authenticate(
    api: &Api,
    headers: &axum::http::HeaderMap,
    access: Access,
    slug: Option<String>,
) -> Result<Claims, ApiError> {
    let mut claims = api
        .jwt
        .verify(bearer(headers)?)
        .map_err(|_| ApiError::Unauthorized("the token is invalid or expired".into()))?;
    if claims.platform {
        if matches!(access, Access::Tenant(_)) {
            return Err(ApiError::Forbidden(
                "a platform token administers tenants and reads no tenant's data; use a user's token"
                    .into(),
            ));
        }
    } else {
        let mut tx = api.ctx.store.begin().await?;
        let user = api
            .ctx
            .store
            .find_user(&mut tx, &claims.tenant, &claims.sub)
            .await?
            .ok_or_else(|| {
                ApiError::Unauthorized("the token's user does not exist (or was removed)".into())
            })?;
        if !bound_to(&claims, &user) {
            return Err(ApiError::Unauthorized(
                "the token was issued for an earlier user of this id; issue a new one".into(),
            ));
        }
        let current: Role = user.role.parse().map_err(|e: String| {
            ApiError::Internal(anyhow::anyhow!("stored role of {}: {e}", user.user_id))
        })?;
        claims.role = claims.role.min(current);
        let needed = match access {
            Access::Tenant(role) => role,
            Access::Platform => {
                return Err(ApiError::Forbidden(
                    "this needs a platform operator's token".into(),
                ));
            }
            Access::PlatformOrTenantAdmin => {
                if slug.as_deref() != Some(claims.tenant.as_str()) {
                    // Another tenant's administration is as invisible as its data.
                    return Err(ApiError::NotFound);
                }
                Role::Admin
            }
        };
        if claims.role < needed {
            return Err(ApiError::Forbidden(
                format!("this needs the {needed:?} role or higher").to_lowercase(),
            ));
        }
    }
    Ok(claims)
}

/// Whether a user token speaks for this incarnation of its user. A token the copilot issued
/// names the incarnation (`useq`, the sequence of the `UserAdded`); one from an identity
/// provider names none, and must then have been issued after the second the user was added, so
/// a token of a removed user cannot pass for a new user of the same id, whatever the timing.
fn bound_to(claims: &Claims, user: &copilot_store::UserView) -> bool {
    match (claims.useq, user.incarnation()) {
        (Some(token), Some(current)) => token == current,
        // A user projected before incarnations were recorded: nothing to compare a bound token
        // with but the time.
        (Some(_), None) | (None, _) => (claims.iat as i64) > user.added_at.timestamp(),
    }
}

/// Largest API request body.
const MAX_API_BODY: usize = 1024 * 1024;

/// Refuses what no handler should see: a NUL in the query string (Postgres cannot compare text
/// with one, so it would fail as a 500), a body that is JSON but not an object (serde accepts
/// `[]` for a struct whose fields all have defaults), and a body with a NUL or another control
/// character (but tab and line breaks) in any string: Postgres refuses NUL, so such a command
/// would be appended and then dead-lettered by the projector, never taking effect; ANSI escapes
/// would reach terminals through the audit log.
async fn checked_input(req: Request, deadline: std::time::Duration) -> Result<Request, ApiError> {
    let uri = req.uri();
    if uri.path().contains("%00") || uri.query().is_some_and(|q| q.contains("%00")) {
        return Err(ApiError::BadRequest(
            "paths and query parameters may not contain NUL characters".into(),
        ));
    }
    if req.method() == Method::GET || req.method() == Method::DELETE {
        return Ok(req);
    }
    let (parts, body) = req.into_parts();
    let bytes = copilot_runtime::http::read_body_within(body, MAX_API_BODY, deadline).await?;
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None | Some(b'{') => {}
        Some(_) if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok() => {
            return Err(ApiError::Unprocessable(
                "the body must be a JSON object".into(),
            ));
        }
        Some(_) => return Err(ApiError::BadRequest("the body is not valid JSON".into())),
    }
    if !bytes.iter().all(u8::is_ascii_whitespace) {
        // What cannot be read as JSON values (nested too deep, a number out of range) is not
        // let through unchecked: no command takes such a body anyway.
        let value = serde_json::from_slice::<serde_json::Value>(&bytes)
            .map_err(|_| ApiError::BadRequest("the body is not valid JSON".into()))?;
        if let Some(path) = control_character_at(&value, String::new()) {
            return Err(ApiError::Unprocessable(format!(
                "{path} contains a NUL or control character; only tab and line breaks are allowed"
            )));
        }
    }
    Ok(Request::from_parts(parts, axum::body::Body::from(bytes)))
}

/// The JSON path of the first string (value or key) holding a forbidden control character.
fn control_character_at(value: &serde_json::Value, path: String) -> Option<String> {
    use copilot_events::has_forbidden_control;
    let here = || {
        if path.is_empty() {
            "the body".to_owned()
        } else {
            path.clone()
        }
    };
    match value {
        serde_json::Value::String(s) => has_forbidden_control(s).then(here),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| control_character_at(item, format!("{}[{i}]", here()))),
        serde_json::Value::Object(map) => map.iter().find_map(|(key, item)| {
            let at = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            if has_forbidden_control(key) {
                return Some(format!("a field name in {}", here()));
            }
            control_character_at(item, at)
        }),
        _ => None,
    }
}

/// The API routes, to be served alone or beside the other services.
pub fn router(ctx: Context, jwt: Arc<Jwt>) -> Router {
    let settings = &ctx.settings;
    let limiter =
        TenantLimiter::new("api", settings.api_rate_per_sec, settings.api_burst).map(Arc::new);
    let user_limiter = TenantLimiter::per_user(
        "api_user",
        settings.api_user_rate_per_sec,
        settings.api_user_burst,
    )
    .map(Arc::new);
    let auth_failures =
        AuthFailureLimiter::new("api", settings.auth_failures_per_min).map(Arc::new);
    // Settings are checked when the process starts (`copilot_runtime::check_settings`); should
    // they still not parse here, the safe reading is the strictest.
    let egress = EgressPolicy::from_settings(settings).unwrap_or_else(|err| {
        tracing::error!(error = %err, "egress policy unreadable; tenant URLs reach public addresses only");
        EgressPolicy::strict()
    });
    let secrets = SecretKeys::from_settings(settings).unwrap_or_else(|err| {
        tracing::error!(error = %err, "secrets keys unreadable; tenant secrets are disabled");
        None
    });
    let api = Api {
        ctx,
        jwt,
        limiter,
        user_limiter,
        auth_failures,
        egress: Arc::new(egress),
        secrets: secrets.map(Arc::new),
    };
    let routes = Router::new()
        .route("/v1/me", get(admin::me))
        .route("/v1/signals", get(signals::list))
        .route("/v1/signals/{id}", get(signals::get))
        .route("/v1/incidents", get(incidents::list))
        .route("/v1/incidents/{id}", get(incidents::get))
        .route("/v1/incidents/{id}/timeline", get(incidents::timeline))
        .route(
            "/v1/incidents/{id}/transitions",
            post(incidents::transition),
        )
        .route("/v1/incidents/{id}/assign", post(incidents::assign))
        .route("/v1/incidents/{id}/notes", post(incidents::note))
        .route("/v1/incidents/{id}/hypotheses", get(incidents::hypotheses))
        .route(
            "/v1/incidents/{id}/hypotheses/{hid}/verdict",
            post(incidents::verdict),
        )
        .route("/v1/stats", get(incidents::stats))
        .route(
            "/v1/settings/correlation",
            get(incidents::get_rules).put(incidents::set_rules),
        )
        .route(
            "/v1/settings/integrations",
            get(incidents::get_integrations).put(incidents::set_integrations),
        )
        .route(
            "/v1/settings/retention",
            get(incidents::get_retention).put(incidents::set_retention),
        )
        .route("/v1/settings/secrets", get(secrets::list))
        .route(
            "/v1/settings/secrets/{name}",
            put(secrets::put).delete(secrets::delete),
        )
        .route("/v1/audit", get(admin::audit))
        .route(
            "/v1/admin/tenants",
            get(admin::list_tenants).post(admin::create_tenant),
        )
        .route("/v1/admin/tenants/{slug}", get(admin::show_tenant))
        .route("/v1/admin/tenants/{slug}/suspend", post(admin::suspend))
        .route("/v1/admin/tenants/{slug}/resume", post(admin::resume))
        .route(
            "/v1/admin/tenants/{slug}/tokens",
            get(admin::list_tokens).post(admin::issue_token),
        )
        .route(
            "/v1/admin/tenants/{slug}/tokens/{token_id}/revoke",
            post(admin::revoke_token),
        )
        .route(
            "/v1/admin/tenants/{slug}/tokens/{token_id}/rotate",
            post(admin::rotate_token),
        )
        .route(
            "/v1/admin/tenants/{slug}/users",
            get(admin::list_users).post(admin::add_user),
        )
        .route(
            "/v1/admin/tenants/{slug}/users/{user_id}",
            axum::routing::patch(admin::update_user).delete(admin::remove_user),
        )
        .route_layer(axum::middleware::from_fn_with_state(api.clone(), authorize))
        .with_state(api);
    copilot_runtime::http::service_routes("api", routes)
}

/// Runs the API alone: its routes, health and metrics on `settings.listen`.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let jwt = Arc::new(Jwt::from_settings(&settings)?);
    let ctx = Context::connect(settings, "api").await?;
    let timeouts = copilot_runtime::http::ServerTimeouts::from_settings(&ctx.settings);
    let app = copilot_runtime::http::finish(
        router(ctx.clone(), jwt).merge(copilot_runtime::http::health_routes(ctx.clone())),
    );
    copilot_runtime::http::serve(ctx.settings.listen, app, timeouts, shutdown).await
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone as _, Utc};

    use super::*;

    fn user(added_seq: Option<i64>) -> copilot_store::UserView {
        let at = Utc.timestamp_opt(1_790_000_000, 0).unwrap();
        copilot_store::UserView {
            user_id: "frank".into(),
            email: "frank@acme.test".into(),
            display_name: "Frank".into(),
            role: "admin".into(),
            slack_user_id: None,
            added_by: "alice".into(),
            added_at: at,
            updated_at: at,
            added_seq,
        }
    }

    fn claims(useq: Option<u64>, iat: u64) -> Claims {
        Claims {
            sub: "frank".into(),
            tenant: "acme".into(),
            role: Role::Admin,
            iss: "copilot".into(),
            aud: "copilot-api".into(),
            iat,
            exp: iat + 60,
            nbf: None,
            platform: false,
            useq,
        }
    }

    #[test]
    fn a_token_bound_to_an_earlier_incarnation_is_refused_however_late_it_was_issued() {
        let added = 1_790_000_000;

        assert!(bound_to(&claims(Some(7), added), &user(Some(7))));
        assert!(!bound_to(&claims(Some(5), added + 3600), &user(Some(7))));
    }

    #[test]
    fn a_token_without_an_incarnation_must_be_issued_after_the_second_its_user_was_added() {
        let added = 1_790_000_000;

        assert!(bound_to(&claims(None, added + 1), &user(Some(7))));
        assert!(!bound_to(&claims(None, added), &user(Some(7))));
        assert!(!bound_to(&claims(None, added - 1), &user(None)));
        assert!(bound_to(&claims(Some(3), added + 1), &user(None)));
    }
}
