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
pub mod tasks;
pub mod views;
pub mod workers;

use std::sync::Arc;

use aide::axum::ApiRouter;
use axum::{
    Router,
    extract::{FromRef, FromRequestParts, MatchedPath, RawPathParams, Request, State},
    http::{Method, header, request::Parts},
    middleware::Next,
    response::Response,
};
use copilot_events::Role;
use copilot_runtime::openapi::OperationExt as _;
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
use uuid::Uuid;

/// What a route needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A user of the tenant whose role is at least this.
    Tenant(Role),
    /// A platform operator's token.
    Platform,
    /// A platform operator, or an admin of the tenant the path's `{slug}` names.
    PlatformOrTenantAdmin,
    /// A worker, with one of its tenant's worker tokens (`cpk_…`), not a JWT.
    Worker,
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
    (Method::POST, "/v1/slack/link", Access::Tenant(Role::Viewer)),
    (Method::POST, "/v1/tasks", Access::Tenant(Role::Engineer)),
    (Method::GET, "/v1/tasks", Access::Tenant(Role::Viewer)),
    (Method::GET, "/v1/tasks/{id}", Access::Tenant(Role::Viewer)),
    (
        Method::DELETE,
        "/v1/tasks/{id}",
        Access::Tenant(Role::Engineer),
    ),
    (
        Method::GET,
        "/v1/tasks/{id}/logs",
        Access::Tenant(Role::Viewer),
    ),
    (Method::GET, "/v1/workers", Access::Tenant(Role::Viewer)),
    (
        Method::GET,
        "/v1/workers/{id}",
        Access::Tenant(Role::Viewer),
    ),
    (
        Method::GET,
        "/v1/worker-tokens",
        Access::Tenant(Role::Admin),
    ),
    (
        Method::POST,
        "/v1/worker-tokens",
        Access::Tenant(Role::Admin),
    ),
    (
        Method::DELETE,
        "/v1/worker-tokens/{id}",
        Access::Tenant(Role::Admin),
    ),
    (Method::POST, "/v1/workers/register", Access::Worker),
    (Method::POST, "/v1/workers/heartbeat", Access::Worker),
    (Method::POST, "/v1/workers/claim", Access::Worker),
    (Method::POST, "/v1/workers/gone", Access::Worker),
    (Method::POST, "/v1/tasks/{id}/report", Access::Worker),
    (Method::POST, "/v1/tasks/{id}/complete", Access::Worker),
    (Method::POST, "/v1/tasks/{id}/fail", Access::Worker),
    (Method::POST, "/v1/tasks/{id}/release", Access::Worker),
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

/// The caller is the authorization layer's; the document's security requirement says what it needs.
impl aide::OperationInput for Caller {}

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
    if access == Access::Worker {
        return authenticate_worker(api, bearer(headers)?).await;
    }
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
            Access::Worker => {
                return Err(ApiError::Forbidden(
                    "this route takes a worker token, not a user's JWT".into(),
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

/// A worker's token: one of a tenant's live worker tokens. The worker acts as
/// `worker-token:<id>` of that tenant, on the worker routes only.
async fn authenticate_worker(api: &Api, token: &str) -> Result<Claims, ApiError> {
    use copilot_runtime::auth::{WORKER_TOKEN_PREFIX, hash_token};
    if !token.starts_with(WORKER_TOKEN_PREFIX) {
        return Err(if api.jwt.verify(token).is_ok() {
            ApiError::Forbidden(format!(
                "this route takes a worker token ({WORKER_TOKEN_PREFIX}…), not a user's JWT"
            ))
        } else {
            ApiError::Unauthorized("the worker token is invalid or revoked".into())
        });
    }
    let (tenant, token_id) = api
        .ctx
        .store
        .worker_token_by_hash(&hash_token(token))
        .await?
        .ok_or_else(|| ApiError::Unauthorized("the worker token is invalid or revoked".into()))?;
    Ok(Claims {
        sub: format!("worker-token:{token_id}"),
        tenant,
        role: Role::Viewer,
        iss: String::new(),
        aud: String::new(),
        iat: 0,
        exp: 0,
        nbf: None,
        platform: false,
        useq: None,
    })
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
    let limits = &settings.limits;
    let limiter =
        TenantLimiter::new("api", limits.api_rate_per_sec, limits.api_burst).map(Arc::new);
    let user_limiter = TenantLimiter::per_user(
        "api_user",
        limits.api_user_rate_per_sec,
        limits.api_user_burst,
    )
    .map(Arc::new);
    let auth_failures = AuthFailureLimiter::new("api", limits.auth_failures_per_min).map(Arc::new);
    let egress = EgressPolicy::in_force(settings);
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
    let routes = Router::from(
        routes()
            .route_layer(axum::middleware::from_fn_with_state(api.clone(), authorize))
            .with_state(api),
    );
    copilot_runtime::http::service_routes("api", routes)
}

/// The API's routes with their documentation. Who may call each is [`POLICY`]'s, which
/// [`describe`] writes into the document with the errors every route answers.
fn routes() -> ApiRouter<Api> {
    use aide::axum::routing::{delete_with, get_with, patch_with, post_with, put_with};
    use axum::Json;
    use copilot_events::{CorrelationRules, TenantIntegrations, TenantRetention};
    use docs::*;

    ApiRouter::new()
        .api_route(
            "/v1/me",
            get_with(admin::me, |op| {
                op.id("me")
                    .summary("Who the token speaks for, with the role in force now")
                    .tag("administration")
            }),
        )
        .api_route(
            "/v1/signals",
            get_with(signals::list, |op| {
                op.id("listSignals")
                    .summary("The tenant's alert instances, newest `startsAt` first")
                    .tag("signals")
                    .problem(400, QUERY_400)
            }),
        )
        .api_route(
            "/v1/signals/{id}",
            get_with(signals::get, |op| {
                op.id("getSignal")
                    .summary("One alert instance, with the alert as last received (`raw`)")
                    .tag("signals")
                    .path_param::<Uuid>("id", "The signal's id")
                    .problem(404, "No such signal of the tenant")
            }),
        )
        .api_route(
            "/v1/incidents",
            get_with(incidents::list, |op| {
                op.id("listIncidents")
                    .summary("The tenant's incidents")
                    .tag("incidents")
                    .problem(400, QUERY_400)
            }),
        )
        .api_route(
            "/v1/incidents/{id}",
            get_with(incidents::get, |op| {
                op.id("getIncident")
                    .summary("One incident with its signals, notes and current hypotheses")
                    .tag("incidents")
                    .path_param::<Uuid>("id", INCIDENT_ID)
                    .problem(404, NO_INCIDENT)
            }),
        )
        .api_route(
            "/v1/incidents/{id}/timeline",
            get_with(incidents::timeline, |op| {
                op.id("incidentTimeline")
                    .summary("Every event of the incident in stream order")
                    .tag("incidents")
                    .path_param::<Uuid>("id", INCIDENT_ID)
                    .problem(404, NO_INCIDENT)
            }),
        )
        .api_route(
            "/v1/incidents/{id}/transitions",
            post_with(incidents::transition, |op| {
                command(op)
                    .id("transitionIncident")
                    .summary("Moves the incident to another state")
                    .problem(
                        409,
                        "The move is not allowed from the current state (the detail names the allowed ones), `If-Match` is stale, or the incident changed while the command was decided",
                    )
            }),
        )
        .api_route(
            "/v1/incidents/{id}/assign",
            post_with(incidents::assign, |op| {
                command(op)
                    .id("assignIncident")
                    .summary("Assigns the incident (`null` unassigns)")
            }),
        )
        .api_route(
            "/v1/incidents/{id}/notes",
            post_with(incidents::note, |op| {
                command(op)
                    .id("addIncidentNote")
                    .summary("Adds a note to the incident")
            }),
        )
        .api_route(
            "/v1/incidents/{id}/hypotheses",
            get_with(incidents::hypotheses, |op| {
                op.id("incidentHypotheses")
                    .summary("The current proposal in full; with `history=true`, every earlier one too")
                    .tag("incidents")
                    .path_param::<Uuid>("id", INCIDENT_ID)
                    .problem(400, QUERY_400)
                    .problem(404, NO_INCIDENT)
            }),
        )
        .api_route(
            "/v1/incidents/{id}/hypotheses/{hid}/verdict",
            post_with(incidents::verdict, |op| {
                command(op)
                    .id("giveVerdict")
                    .summary("Confirms or refutes a hypothesis any proposal of the incident named")
                    .path_param::<String>("hid", "The hypothesis' id")
                    .problem(404, "No such incident, or no proposal of it named this hypothesis")
            }),
        )
        .api_route(
            "/v1/stats",
            get_with(incidents::stats, |op| {
                op.id("stats")
                    .summary("Open incidents by severity; counts, noise reduction, MTTA and MTTR of the incidents opened in `since`..`until`")
                    .tag("incidents")
                    .problem(400, "A query parameter does not parse, or `since` is not before `until`")
            }),
        )
        .api_route(
            "/v1/settings/correlation",
            get_with(incidents::get_rules, |op| {
                op.id("getCorrelationRules")
                    .summary("The tenant's correlation rules (the defaults if none were set)")
                    .tag("settings")
            })
            .put_with(incidents::set_rules, |op| {
                op.id("setCorrelationRules")
                    .summary("Sets the tenant's correlation rules")
                    .tag("settings")
                    .response_with::<202, Json<CorrelationRules>, _>(|r| r.description("Recorded; the correlator applies them from its next decision"))
                    .problem(422, "Unknown fields, or values out of range")
            }),
        )
        .api_route(
            "/v1/settings/integrations",
            get_with(incidents::get_integrations, |op| {
                op.id("getIntegrations")
                    .summary("The tenant's Prometheus URL, model and Slack workspace")
                    .tag("settings")
            })
            .put_with(incidents::set_integrations, |op| {
                op.id("setIntegrations")
                    .summary("Sets the tenant's integrations")
                    .tag("settings")
                    .response_with::<202, Json<TenantIntegrations>, _>(|r| r.description("Recorded"))
                    .problem(
                        422,
                        "A URL the egress policy refuses, a secret not stored, an environment variable the operator does not allow, or a key in the body",
                    )
            }),
        )
        .api_route(
            "/v1/settings/retention",
            get_with(incidents::get_retention, |op| {
                op.id("getRetention")
                    .summary("How long the tenant's data is kept")
                    .tag("settings")
            })
            .put_with(incidents::set_retention, |op| {
                op.id("setRetention")
                    .summary("Sets the retention (recorded, not yet enforced)")
                    .tag("settings")
                    .response_with::<202, Json<TenantRetention>, _>(|r| r.description("Recorded"))
                    .problem(422, "A value out of 1-3650 days")
            }),
        )
        .api_route(
            "/v1/settings/secrets",
            get_with(secrets::list, |op| {
                op.id("listSecrets")
                    .summary("The tenant's secrets: names, versions, fingerprints; never a value")
                    .tag("settings")
            }),
        )
        .api_route(
            "/v1/settings/secrets/{name}",
            put_with(secrets::put, |op| {
                op.id("putSecret")
                    .summary("Seals and stores a value as the secret's next version")
                    .description("Nobody can read a value back.")
                    .tag("settings")
                    .path_param_with("name", SECRET_NAME, secret_name())
                    .problem(422, "An invalid name, value or origin")
                    .problem(503, "The operator has set no secrets key, or NATS or Postgres cannot take the write")
            })
            .delete_with(secrets::delete, |op| {
                op.id("deleteSecret")
                    .summary("Deletes the secret; settings naming it stop sending it")
                    .tag("settings")
                    .path_param_with("name", SECRET_NAME, secret_name())
                    .response_with::<204, (), _>(|r| r.description("Deleted"))
                    .problem(404, "There was no such secret")
            }),
        )
        .api_route(
            "/v1/audit",
            get_with(admin::audit, |op| {
                op.id("audit")
                    .summary("The tenant's audit log, newest first")
                    .tag("administration")
                    .problem(400, QUERY_400)
            }),
        )
        .api_route(
            "/v1/admin/tenants",
            get_with(admin::list_tenants, |op| {
                op.id("listTenants")
                    .summary("Every tenant with its state, active token and user counts")
                    .tag("administration")
            })
            .post_with(admin::create_tenant, |op| {
                op.id("createTenant")
                    .summary("Creates a tenant, its first webhook token (shown once) and its first admin, user `admin`")
                    .tag("administration")
                    .response_with::<201, Json<admin::CreatedTenant>, _>(|r| r.description("Created and in force"))
                    .response_with::<202, Json<admin::CreatedTenant>, _>(|r| {
                        r.description("Recorded, but not yet applied when the answer was due")
                    })
                    .problem(409, "The tenant exists")
                    .problem(422, "An invalid slug, name or email")
            }),
        )
        .api_route(
            "/v1/admin/tenants/{slug}",
            get_with(admin::show_tenant, |op| {
                tenant(op).id("getTenant").summary("One tenant")
            }),
        )
        .api_route(
            "/v1/admin/tenants/{slug}/suspend",
            post_with(admin::suspend, |op| {
                tenant(op)
                    .id("suspendTenant")
                    .summary("Suspends the tenant's intake: its webhooks get 403 until resumed")
                    .problem(422, "An invalid reason")
            }),
        )
        .api_route(
            "/v1/admin/tenants/{slug}/resume",
            post_with(admin::resume, |op| {
                tenant(op).id("resumeTenant").summary("Lifts a suspension")
            }),
        )
        .api_route(
            "/v1/admin/tenants/{slug}/tokens",
            get_with(admin::list_tokens, |op| {
                tenant(op)
                    .id("listWebhookTokens")
                    .summary("The tenant's webhook tokens: id, prefix, issued, revoked; never the hash")
            })
            .post_with(admin::issue_token, |op| {
                tenant(op)
                    .id("issueWebhookToken")
                    .summary("Issues another webhook token (shown once); the others keep working")
                    .response_with::<201, Json<admin::IssuedToken>, _>(|r| r.description("Issued"))
            }),
        )
        .api_route(
            "/v1/admin/tenants/{slug}/tokens/{token_id}/revoke",
            post_with(admin::revoke_token, |op| {
                tenant(op)
                    .id("revokeWebhookToken")
                    .summary("Revokes the token; every gateway refuses it within a second")
                    .path_param::<Uuid>("token_id", TOKEN_ID)
                    .problem(404, "No such tenant or token")
            }),
        )
        .api_route(
            "/v1/admin/tenants/{slug}/tokens/{token_id}/rotate",
            post_with(admin::rotate_token, |op| {
                tenant(op)
                    .id("rotateWebhookToken")
                    .summary("Issues a new token and revokes this one when the grace ends")
                    .path_param::<Uuid>("token_id", TOKEN_ID)
                    .with(optional_body)
                    .response_with::<201, Json<admin::IssuedToken>, _>(|r| r.description("Issued; the old token works until `replaces.revoked_at`"))
                    .problem(404, "No such tenant or token")
                    .problem(409, "The token is already revoked")
                    .problem(422, "`grace_seconds` over 30 days")
            }),
        )
        .api_route(
            "/v1/admin/tenants/{slug}/users",
            get_with(admin::list_users, |op| {
                tenant(op).id("listUsers").summary("The tenant's users")
            })
            .post_with(admin::add_user, |op| {
                tenant(op)
                    .id("addUser")
                    .summary("Adds a user; `user_id` is what the user's JWTs carry as `sub`")
                    .response_with::<200, Json<views::UserView>, _>(|r| r.description("Added"))
                    .problem(409, "The user id or the email is taken")
                    .problem(422, "An invalid user id, email, name, role or Slack id")
            }),
        )
        .api_route(
            "/v1/admin/tenants/{slug}/users/{user_id}",
            patch_with(admin::update_user, |op| {
                tenant(op)
                    .id("updateUser")
                    .summary("Changes a user's role, name or Slack id; a demotion applies to tokens already issued")
                    .path_param::<String>("user_id", USER_ID)
                    .response_with::<200, Json<views::UserView>, _>(|r| r.description("Changed"))
                    .problem(404, "No such tenant or user")
                    .problem(409, "The change would demote the tenant's last admin")
                    .problem(422, "Nothing to change, or an invalid name, role or Slack id")
            })
            .delete_with(admin::remove_user, |op| {
                tenant(op)
                    .id("removeUser")
                    .summary("Removes the user: their tokens stop working at once")
                    .path_param::<String>("user_id", USER_ID)
                    .response_with::<204, (), _>(|r| r.description("Removed"))
                    .problem(404, "No such tenant or user")
                    .problem(409, "The user is the tenant's last admin")
            }),
        )
        .api_route(
            "/v1/slack/link",
            post_with(admin::link_slack, |op| {
                op.id("linkSlack")
                    .summary("Links the Slack account of a `/copilot link` code to the caller, or (an admin) to any user")
                    .tag("administration")
                    .response_with::<200, Json<views::UserView>, _>(|r| r.description("Linked"))
                    .problem(403, "Linking another user needs the admin role")
                    .problem(404, "No such user")
                    .problem(409, "That Slack account is linked to another user")
                    .problem(422, "The code is not valid or has expired, or the tenant has no Slack workspace")
            }),
        )
        .api_route(
            "/v1/tasks",
            post_with(tasks::create, |op| {
                op.id("createTask")
                    .summary("Creates a task and queues it for a worker")
                    .tag("tasks")
                    .response_with::<201, Json<tasks::TaskView>, _>(|r| r.description("Queued"))
                    .problem(422, "An unknown kind, or a field out of range (named)")
            })
            .get_with(tasks::list, |op| {
                op.id("listTasks")
                    .summary("The tenant's tasks, newest first, by status, kind, incident and time")
                    .tag("tasks")
                    .problem(400, QUERY_400)
            }),
        )
        .api_route(
            "/v1/tasks/{id}",
            get_with(tasks::get, |op| {
                op.id("getTask")
                    .summary("One task: status, attempt, progress, result, every failure's reason")
                    .tag("tasks")
                    .path_param::<Uuid>("id", TASK_ID)
                    .problem(404, "No such task")
            })
            .delete_with(tasks::cancel, |op| {
                op.id("cancelTask")
                    .summary("Cancels a queued or running task; a running attempt learns it on its next heartbeat")
                    .tag("tasks")
                    .path_param::<Uuid>("id", TASK_ID)
                    .problem(404, "No such task")
                    .problem(409, "The task already ended")
            }),
        )
        .api_route(
            "/v1/tasks/{id}/logs",
            get_with(tasks::logs, |op| {
                op.id("taskLogs")
                    .summary("A task's log lines; with `follow=true`, new lines as server-sent events until the task ends")
                    .tag("tasks")
                    .path_param::<Uuid>("id", TASK_ID)
                    .response_with::<200, Json<tasks::TaskLogPage>, _>(|r| {
                        r.description("A page of lines (or, with `follow=true`, `text/event-stream`: `line` events, then `end`)")
                    })
                    .problem(400, QUERY_400)
                    .problem(404, "No such task")
            }),
        )
        .api_route(
            "/v1/tasks/{id}/report",
            post_with(workers::report, |op| {
                op.id("reportTask")
                    .summary("Worker: progress and log lines of an attempt")
                    .tag("workers")
                    .path_param::<Uuid>("id", TASK_ID)
                    .response_with::<202, (), _>(|r| r.description("Recorded"))
                    .problem(422, "A percent over 100, or too many or too long lines")
            }),
        )
        .api_route(
            "/v1/tasks/{id}/complete",
            post_with(workers::complete, |op| {
                op.id("completeTask")
                    .summary("Worker: the attempt it holds succeeded, with its result")
                    .tag("workers")
                    .path_param::<Uuid>("id", TASK_ID)
                    .problem(404, "No such task")
                    .problem(409, "The attempt is no longer the worker's: refused, and recorded")
                    .problem(422, "The lease is not one of this tenant's")
            }),
        )
        .api_route(
            "/v1/tasks/{id}/fail",
            post_with(workers::fail, |op| {
                op.id("failTask")
                    .summary("Worker: the attempt it holds failed; retried with backoff until its attempts run out")
                    .tag("workers")
                    .path_param::<Uuid>("id", TASK_ID)
                    .problem(404, "No such task")
                    .problem(409, "The attempt is no longer the worker's: refused, and recorded")
                    .problem(422, "No reason, or a lease that is not one of this tenant's")
            }),
        )
        .api_route(
            "/v1/tasks/{id}/release",
            post_with(workers::release, |op| {
                op.id("releaseTask")
                    .summary("Worker: hands back an attempt it will not finish; queued again at once, the attempt not counted")
                    .tag("workers")
                    .path_param::<Uuid>("id", TASK_ID)
                    .problem(404, "No such task")
                    .problem(409, "The attempt is no longer the worker's: refused, and recorded")
                    .problem(422, "A lease that is not one of this tenant's")
            }),
        )
        .api_route(
            "/v1/workers",
            get_with(workers::list, |op| {
                op.id("listWorkers")
                    .summary("The tenant's workers: online, stale or offline from their last heartbeat")
                    .tag("workers")
            }),
        )
        .api_route(
            "/v1/workers/{id}",
            get_with(workers::get, |op| {
                op.id("getWorker")
                    .summary("One worker")
                    .tag("workers")
                    .path_param::<Uuid>("id", "The worker's id")
                    .problem(404, "No such worker")
            }),
        )
        .api_route(
            "/v1/workers/register",
            post_with(workers::register, |op| {
                op.id("registerWorker")
                    .summary("Worker: announces itself with the kinds it runs")
                    .tag("workers")
                    .response_with::<201, Json<workers::Registered>, _>(|r| r.description("Registered"))
                    .problem(422, "No kinds, an unknown kind, or a capacity out of range")
            }),
        )
        .api_route(
            "/v1/workers/heartbeat",
            post_with(workers::heartbeat, |op| {
                op.id("workerHeartbeat")
                    .summary("Worker: alive; extends the leases of the tasks it holds and says which to stop")
                    .tag("workers")
                    .problem(404, "No such worker or task")
                    .problem(409, "The worker has gone")
            }),
        )
        .api_route(
            "/v1/workers/claim",
            post_with(workers::claim, |op| {
                op.id("claimTask")
                    .summary("Worker: the next task of its kinds, highest priority first, waiting up to `wait_secs`")
                    .tag("workers")
                    .response_with::<200, Json<workers::ClaimedTask>, _>(|r| r.description("Claimed"))
                    .response_with::<204, (), _>(|r| r.description("Nothing to do within the wait"))
                    .problem(404, "No such worker")
                    .problem(409, "The worker has gone")
                    .problem(422, "A kind it did not register, or a wait over 30 s")
            }),
        )
        .api_route(
            "/v1/workers/gone",
            post_with(workers::gone, |op| {
                op.id("workerGone")
                    .summary("Worker: stopping (drained)")
                    .tag("workers")
                    .response_with::<204, (), _>(|r| r.description("Recorded"))
                    .problem(404, "No such worker")
                    .problem(409, "The worker has gone already")
            }),
        )
        .api_route(
            "/v1/worker-tokens",
            get_with(workers::list_tokens, |op| {
                op.id("listWorkerTokens")
                    .summary("The tenant's worker tokens (never their secrets)")
                    .tag("workers")
            })
            .post_with(workers::issue_token, |op| {
                op.id("issueWorkerToken")
                    .summary("Issues a worker token; the secret is shown this once")
                    .tag("workers")
                    .response_with::<201, Json<workers::IssuedWorkerToken>, _>(|r| r.description("Issued"))
                    .problem(422, "A name that is empty or over 100 characters")
            }),
        )
        .api_route(
            "/v1/worker-tokens/{id}",
            delete_with(workers::revoke_token, |op| {
                op.id("revokeWorkerToken")
                    .summary("Revokes a worker token at once")
                    .tag("workers")
                    .path_param::<Uuid>("id", "The worker token's id")
                    .response_with::<204, (), _>(|r| r.description("Revoked"))
                    .problem(404, "No such token")
                    .problem(409, "Already revoked")
            }),
        )
}

/// Adds the API's routes to an OpenAPI document: each operation with the JWT it needs, who may
/// call it (from [`POLICY`]) and the errors every route of its kind answers.
///
/// # Panics
/// When a documented route is missing from [`POLICY`] (the authorization layer would refuse it).
pub fn describe(doc: &mut aide::openapi::OpenApi) {
    use copilot_runtime::openapi::{JWT, WORKER_TOKEN, add_problem, operations_mut};

    let _ = routes().finish_api(doc);
    for (path, method, op) in operations_mut(doc) {
        let access = access_of(&method.parse().expect("a method"), &path)
            .unwrap_or_else(|| panic!("{method} {path} is documented but not in POLICY"));
        let (who, forbidden) = match access {
            Access::Tenant(role) => (
                format!(
                    "a user of the tenant whose role is {} or higher",
                    role.as_str()
                ),
                format!(
                    "The caller's role is below {}, or the token is a platform operator's",
                    role.as_str()
                ),
            ),
            Access::Platform => (
                "a platform operator".to_owned(),
                "The token is not a platform operator's".to_owned(),
            ),
            Access::PlatformOrTenantAdmin => (
                "a platform operator, or an admin of the tenant `{slug}` names".to_owned(),
                "The caller is neither a platform operator nor an admin".to_owned(),
            ),
            Access::Worker => (
                "a worker, with one of the tenant's worker tokens (`cpk_…`)".to_owned(),
                "The token is a user's JWT, not a worker token".to_owned(),
            ),
        };
        let access_line = format!("Who may call it: {who}.");
        op.description = Some(match op.description.take() {
            Some(d) => format!("{d}\n\n{access_line}"),
            None => access_line,
        });
        let scheme = if access == Access::Worker {
            WORKER_TOKEN
        } else {
            JWT
        };
        op.security = vec![[(scheme.to_owned(), Vec::new())].into_iter().collect()];
        let takes_body = matches!(method, "POST" | "PUT" | "PATCH");
        add_problem(
            op,
            400,
            Some(if takes_body {
                "A NUL character in the path or query, or a body that is not JSON"
            } else {
                "A NUL character in the path or query"
            }),
            false,
        );
        add_problem(op, 401, None, false);
        add_problem(op, 403, Some(&forbidden), false);
        if access == Access::PlatformOrTenantAdmin {
            add_problem(op, 404, Some("No such tenant, or another tenant's"), false);
        }
        if takes_body {
            add_problem(
                op,
                413,
                Some(
                    "The body is over 1 MiB, or the event it makes is larger than JetStream takes",
                ),
                false,
            );
            if op.request_body.is_some() {
                add_problem(op, 415, None, false);
            }
            add_problem(
                op,
                422,
                Some(
                    "The body is JSON but not an object of this route's fields, or a string in it holds a NUL or control character",
                ),
                false,
            );
        }
        add_problem(op, 429, None, false);
        add_problem(op, 503, None, false);
    }
}

/// What the route definitions share.
mod docs {
    use aide::transform::TransformOperation;
    use copilot_runtime::openapi::OperationExt as _;
    use schemars::json_schema;
    use uuid::Uuid;

    pub const QUERY_400: &str = "A query parameter does not parse or is out of range";
    pub const INCIDENT_ID: &str = "The incident's id";
    pub const NO_INCIDENT: &str = "No such incident of the tenant";
    pub const TOKEN_ID: &str = "The webhook token's id";
    pub const TASK_ID: &str = "The task's id";
    pub const USER_ID: &str = "The user's id (their JWTs' `sub`)";
    pub const SECRET_NAME: &str = "The secret's name, as settings name it (`llm.api_key_secret`)";

    /// What a secret's name may be (`copilot_events::is_valid_secret_name`).
    pub fn secret_name() -> schemars::Schema {
        json_schema!({"type": "string", "pattern": "^[a-z][a-z0-9_-]{0,63}$"})
    }

    /// A lifecycle command on an incident.
    pub fn command(op: TransformOperation<'_>) -> TransformOperation<'_> {
        op.tag("incidents")
            .path_param::<Uuid>("id", INCIDENT_ID)
            .header_param(
                "If-Match",
                "The incident version the command was decided on (`\"42\"`): a stale one is a 409 instead of a decision on the newer state",
                json_schema!({"type": "string", "pattern": "^\"?[0-9]{1,19}\"?$"}),
            )
            .response_with::<202, axum::Json<crate::incidents::Accepted>, _>(|r| {
                r.description("Appended: the event and the incident's new version")
            })
            .problem(404, NO_INCIDENT)
            .problem(
                409,
                "`If-Match` is stale, or the incident changed while the command was decided",
            )
            .problem(400, "A NUL character in the path or query, a body that is not JSON, or an `If-Match` that is not a version")
    }

    /// A route of a tenant's administration.
    pub fn tenant(op: TransformOperation<'_>) -> TransformOperation<'_> {
        op.tag("administration")
            .path_param::<String>("slug", "The tenant's slug")
            .problem(404, "No such tenant, or another tenant's")
    }

    /// The request body may be left out.
    pub fn optional_body(mut op: TransformOperation<'_>) -> TransformOperation<'_> {
        if let Some(aide::openapi::ReferenceOr::Item(body)) = &mut op.inner_mut().request_body {
            body.required = false;
        }
        op
    }
}

/// Runs the API alone: its routes, health and metrics on `settings.http.listen`.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let jwt = Arc::new(Jwt::from_settings(&settings)?);
    let ctx = Context::connect(settings, "api").await?;
    let timeouts = copilot_runtime::http::ServerTimeouts::from_settings(&ctx.settings);
    let doc = copilot_runtime::openapi::document(&[&describe]);
    let app = copilot_runtime::http::finish(
        router(ctx.clone(), jwt)
            .merge(copilot_runtime::http::health_routes(ctx.clone()))
            .merge(copilot_runtime::openapi::serve(&doc)),
    );
    copilot_runtime::http::serve(ctx.settings.http.listen, app, timeouts, shutdown).await
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
    fn every_route_of_the_policy_is_documented_with_its_errors_and_nothing_else_is() {
        let mut doc = copilot_runtime::openapi::document(&[&describe]);

        let documented: Vec<(String, String)> = copilot_runtime::openapi::operations_mut(&mut doc)
            .into_iter()
            .filter(|(path, _, _)| {
                path.starts_with("/v1/") && path != copilot_runtime::openapi::PATH
            })
            .map(|(path, method, op)| {
                let statuses = op
                    .responses
                    .as_ref()
                    .map(|r| r.responses.len())
                    .unwrap_or(0);
                assert!(
                    statuses >= 6,
                    "{method} {path} documents {statuses} answers"
                );
                (method.to_owned(), path)
            })
            .collect();

        let mut policy: Vec<(String, String)> = POLICY
            .iter()
            .map(|(method, route, _)| (method.to_string(), (*route).to_owned()))
            .collect();
        let mut documented = documented;
        policy.sort();
        documented.sort();
        assert_eq!(documented, policy);
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
