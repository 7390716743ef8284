//! Tenant secrets (`/v1/settings/secrets`): an admin writes a value (a model's API key, a Slack
//! signing secret) and nobody reads it back, not even that admin. Settings name a secret
//! (`llm.api_key_secret`); the copilot sends it only to that tenant's own integration. Reads
//! list names, versions and fingerprints.

use axum::{
    Json,
    extract::{Path, State, rejection::JsonRejection},
    http::StatusCode,
};
use copilot_commands as commands;
use copilot_runtime::http::{ApiError, EventOrigin};
use serde::{Deserialize, Serialize};

use crate::{Api, Caller, admin::Items, incidents::body, views::SecretMeta};

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretBody {
    /// The secret's value: 1-8192 visible ASCII characters. Never shown again.
    #[schemars(length(min = 1, max = 8192), regex(pattern = r"^[!-~]+$"))]
    pub value: String,
    /// The only origin (`https://host[:port]`) the copilot may send it to; settings pointing
    /// elsewhere cannot use it [default: wherever the tenant's settings point].
    #[serde(default)]
    pub origin: Option<String>,
}

/// What a write answers: never the value.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct SecretStored {
    pub name: String,
    pub version: u32,
    pub fingerprint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// `GET /v1/settings/secrets`: the tenant's secrets, without their values.
pub async fn list(
    State(api): State<Api>,
    caller: Caller,
) -> Result<Json<Items<SecretMeta>>, ApiError> {
    let secrets = api.ctx.store.list_secrets(&caller.0.tenant).await?;
    Ok(Items::all(secrets))
}

/// `PUT /v1/settings/secrets/{name}`: stores a value (a new version when there was one).
pub async fn put(
    State(api): State<Api>,
    caller: Caller,
    origin: EventOrigin,
    Path(name): Path<String>,
    payload: Result<Json<SecretBody>, JsonRejection>,
) -> Result<Json<SecretStored>, ApiError> {
    let SecretBody {
        value,
        origin: bound_to,
    } = body(payload)?;
    let stored = commands::set_secret(
        &api.ctx.js,
        &api.ctx.store,
        api.secrets.as_deref(),
        &caller.0.tenant,
        &name,
        commands::SecretValue {
            value: &value,
            origin: bound_to.as_deref(),
        },
        &caller.0.sub,
        origin.0,
    )
    .await?;
    Ok(Json(SecretStored {
        name: stored.name,
        version: stored.version,
        fingerprint: stored.fingerprint,
        origin: stored.origin,
    }))
}

/// `DELETE /v1/settings/secrets/{name}`: settings that name it stop sending it.
pub async fn delete(
    State(api): State<Api>,
    caller: Caller,
    origin: EventOrigin,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    commands::remove_secret(
        &api.ctx.js,
        &api.ctx.store,
        &caller.0.tenant,
        &name,
        &caller.0.sub,
        origin.0,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
