//! The read API: JSON over the read models for the caller's tenant only. Every route takes a
//! JWT; the tenant comes from its claims, never from the request, so a token of one tenant
//! cannot name another tenant's data (it gets 404, as for data that does not exist).

pub mod commands;
pub mod incidents;
pub mod signals;

use std::sync::Arc;

use axum::{
    Router,
    extract::{FromRef, FromRequestParts},
    http::{header, request::Parts},
    routing::{get, post},
};
use copilot_events::Role;
use copilot_runtime::{
    Context, Settings,
    auth::{Claims, Jwt},
    http::ApiError,
};
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct Api {
    pub ctx: Context,
    pub jwt: Arc<Jwt>,
}

impl FromRef<Api> for Arc<Jwt> {
    fn from_ref(api: &Api) -> Self {
        api.jwt.clone()
    }
}

/// The authenticated caller of a request.
pub struct Caller(pub Claims);

impl Caller {
    /// Refuses callers below `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.0.role >= role {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                format!("this needs the {role:?} role or higher").to_lowercase(),
            ))
        }
    }
}

impl<S> FromRequestParts<S> for Caller
where
    Arc<Jwt>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let jwt = Arc::<Jwt>::from_ref(state);
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| {
                ApiError::Unauthorized("missing `Authorization: Bearer <JWT>`".into())
            })?;
        let claims = jwt
            .verify(token.trim())
            .map_err(|_| ApiError::Unauthorized("the token is invalid or expired".into()))?;
        Ok(Caller(claims))
    }
}

/// The read routes, to be served alone or beside the other services.
pub fn router(ctx: Context, jwt: Arc<Jwt>) -> Router {
    Router::new()
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
        .with_state(Api { ctx, jwt })
}

/// Runs the API alone: read routes, health and metrics on `settings.listen`.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let jwt = Arc::new(Jwt::from_settings(&settings)?);
    let ctx = Context::connect(settings, "api").await?;
    let app = copilot_runtime::http::finish(
        router(ctx.clone(), jwt).merge(copilot_runtime::http::health_routes(ctx.clone())),
    );
    copilot_runtime::http::serve(ctx.settings.listen, app, shutdown).await
}
