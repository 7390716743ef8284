//! Tenant administration (`/v1/admin/...`): tenants, their webhook tokens and their users, and
//! each tenant's audit log (`/v1/audit`). Commands append to the TENANTS stream and answer once
//! the projector has applied them, so what they change is in force when they return: a revoked
//! token is refused by every gateway within the second its token cache lives.

use std::time::Duration;

use axum::{
    Json,
    extract::{Path, Query, State, rejection::JsonRejection, rejection::QueryRejection},
    http::StatusCode,
};
use chrono::{DateTime, Utc};
use copilot_events::{Role, is_valid_slug};
use copilot_runtime::http::{ApiError, EventOrigin};
use copilot_store::{self as store, AuditCursor, AuditFilter, checkpoints};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use copilot_commands as commands;

use crate::{
    Api, Caller,
    incidents::{bad, body},
    views::{self, AuditEntry, TenantView, TokenView, UserView},
};

/// How long a command waits for the projector to apply its event before answering anyway.
const PROJECTION_WAIT: Duration = Duration::from_secs(5);

/// Waits until the tenants projection has applied the event appended at `seq`, so what the
/// command changed is in force when it answers. After [`PROJECTION_WAIT`], or at once if Postgres
/// cannot be read, it answers anyway: `false` says the effect may not be visible yet. Never an
/// error: the command is recorded, and an answer telling the client to retry would record it twice.
async fn applied(api: &Api, seq: u64) -> bool {
    let store = &api.ctx.store;
    match store
        .wait_for_checkpoint(checkpoints::TENANTS, seq, PROJECTION_WAIT, |_| {})
        .await
    {
        Ok(reached) => reached,
        Err(err) => {
            tracing::warn!(seq, error = %err, "cannot see whether a command was applied");
            false
        }
    }
}

/// An error reading the result of a command already recorded: not "unavailable, retry", since a
/// retry would record the command again.
fn after_append(err: ApiError) -> ApiError {
    match err {
        ApiError::Unavailable { detail, .. } => ApiError::Internal(anyhow::anyhow!(
            "the command was recorded but its result cannot be read: {detail}"
        )),
        other => other,
    }
}

/// The tenant a path names, if it exists; 404 otherwise (also for slugs that cannot exist).
async fn tenant_of(api: &Api, slug: &str) -> Result<store::TenantView, ApiError> {
    if !is_valid_slug(slug) {
        return Err(ApiError::NotFound);
    }
    let mut tx = api.tenant_tx(slug).await?;
    api.ctx
        .store
        .get_tenant(&mut tx, slug)
        .await?
        .ok_or(ApiError::NotFound)
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Me {
    sub: String,
    tenant: String,
    role: Role,
    platform: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<UserView>,
}

/// `GET /v1/me`: who the token speaks for, and with which role now.
pub async fn me(State(api): State<Api>, caller: Caller) -> Result<Json<Me>, ApiError> {
    let mut tx = api.tenant_tx(&caller.0.tenant).await?;
    let user = api
        .ctx
        .store
        .find_user(&mut tx, &caller.0.tenant, &caller.0.sub)
        .await?;
    Ok(Json(Me {
        sub: caller.0.sub,
        tenant: caller.0.tenant,
        role: caller.0.role,
        platform: caller.0.platform,
        user: user.map(UserView::from),
    }))
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
#[schemars(rename = "{T}List")]
pub struct Items<T> {
    items: Vec<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

impl<T> Items<T> {
    /// Every row, as its view, in one page.
    pub(crate) fn all<R>(rows: Vec<R>) -> Json<Self>
    where
        T: From<R>,
    {
        Json(Self {
            items: views::all(rows),
            next_cursor: None,
        })
    }
}

pub async fn list_tenants(State(api): State<Api>) -> Result<Json<Items<TenantView>>, ApiError> {
    let mut tx = api.ctx.store.begin().await?;
    let tenants = api.ctx.store.list_tenants(&mut tx).await?;
    Ok(Items::all(tenants))
}

pub async fn show_tenant(
    State(api): State<Api>,
    Path(slug): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    Ok(Json(tenant_of(&api, &slug).await?.into()))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    slug: String,
    name: Option<String>,
    /// Email of the first admin (user id `admin`).
    admin_email: Option<String>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct CreatedTenant {
    tenant: String,
    /// Shown once; only its hash is kept.
    webhook_token: String,
    token_id: Uuid,
    /// The first admin's user id, for `copilot token issue --user`.
    admin_user: &'static str,
}

pub async fn create_tenant(
    State(api): State<Api>,
    caller: Caller,
    origin: EventOrigin,
    payload: Result<Json<NewTenant>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedTenant>), ApiError> {
    let b = body(payload)?;
    let actor = caller.0.sub.clone();
    let created = commands::create_tenant(
        &api.ctx.js,
        commands::NewTenant {
            slug: &b.slug,
            name: b.name.as_deref(),
            admin_email: b.admin_email.as_deref(),
        },
        &actor,
        origin.0,
    )
    .await?;
    let ready = applied(&api, created.seq).await;
    Ok((
        if ready {
            StatusCode::CREATED
        } else {
            StatusCode::ACCEPTED
        },
        Json(CreatedTenant {
            tenant: b.slug,
            webhook_token: created.webhook_token,
            token_id: created.token_id,
            admin_user: commands::FIRST_ADMIN,
        }),
    ))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SuspendBody {
    reason: String,
}

pub async fn suspend(
    State(api): State<Api>,
    caller: Caller,
    origin: EventOrigin,
    Path(slug): Path<String>,
    payload: Result<Json<SuspendBody>, JsonRejection>,
) -> Result<Json<TenantView>, ApiError> {
    let b = body(payload)?;
    let seq = commands::suspend_tenant(
        &api.ctx.js,
        &api.ctx.store,
        &slug,
        &b.reason,
        &caller.0.sub,
        origin.0,
    )
    .await?;
    applied(&api, seq).await;
    Ok(Json(
        tenant_of(&api, &slug).await.map_err(after_append)?.into(),
    ))
}

pub async fn resume(
    State(api): State<Api>,
    caller: Caller,
    origin: EventOrigin,
    Path(slug): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    let seq = commands::resume_tenant(&api.ctx.js, &api.ctx.store, &slug, &caller.0.sub, origin.0)
        .await?;
    applied(&api, seq).await;
    Ok(Json(
        tenant_of(&api, &slug).await.map_err(after_append)?.into(),
    ))
}

pub async fn list_tokens(
    State(api): State<Api>,
    Path(slug): Path<String>,
) -> Result<Json<Items<TokenView>>, ApiError> {
    tenant_of(&api, &slug).await?;
    let mut tx = api.tenant_tx(&slug).await?;
    let tokens = api.ctx.store.list_tokens(&mut tx, &slug).await?;
    Ok(Items::all(tokens))
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct IssuedToken {
    token_id: Uuid,
    /// Shown once; only its hash is kept.
    webhook_token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    replaces: Option<TokenView>,
}

async fn token_of(api: &Api, slug: &str, token_id: &str) -> Result<store::TokenView, ApiError> {
    let id = Uuid::parse_str(token_id).map_err(|_| ApiError::NotFound)?;
    let mut tx = api.tenant_tx(slug).await?;
    api.ctx
        .store
        .list_tokens(&mut tx, slug)
        .await?
        .into_iter()
        .find(|t| t.token_id == id)
        .ok_or(ApiError::NotFound)
}

async fn issue(
    api: &Api,
    slug: &str,
    caller: &Caller,
    origin: EventOrigin,
) -> Result<(Uuid, String), ApiError> {
    let issued =
        commands::issue_webhook_token(&api.ctx.js, &api.ctx.store, slug, &caller.0.sub, origin.0)
            .await?;
    if !applied(api, issued.seq).await {
        let token_id = issued.token_id;
        tracing::warn!(tenant = slug, %token_id, "a new token was not projected in time");
    }
    Ok((issued.token_id, issued.webhook_token))
}

pub async fn issue_token(
    State(api): State<Api>,
    caller: Caller,
    origin: EventOrigin,
    Path(slug): Path<String>,
) -> Result<(StatusCode, Json<IssuedToken>), ApiError> {
    let (token_id, webhook_token) = issue(&api, &slug, &caller, origin).await?;
    Ok((
        StatusCode::CREATED,
        Json(IssuedToken {
            token_id,
            webhook_token,
            replaces: None,
        }),
    ))
}

pub async fn revoke_token(
    State(api): State<Api>,
    caller: Caller,
    origin: EventOrigin,
    Path((slug, token_id)): Path<(String, String)>,
) -> Result<Json<TokenView>, ApiError> {
    let token = token_of(&api, &slug, &token_id).await?;
    revoke_now(&api, &slug, &caller, origin, token.token_id).await
}

/// Revokes a token at once and answers with it once the projector has recorded it.
async fn revoke_now(
    api: &Api,
    slug: &str,
    caller: &Caller,
    origin: EventOrigin,
    token_id: Uuid,
) -> Result<Json<TokenView>, ApiError> {
    let seq = commands::revoke_webhook_token(
        &api.ctx.js,
        &api.ctx.store,
        slug,
        token_id,
        None,
        &caller.0.sub,
        origin.0,
    )
    .await?;
    applied(api, seq).await;
    Ok(Json(
        token_of(api, slug, &token_id.to_string())
            .await
            .map_err(after_append)?
            .into(),
    ))
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    /// Seconds the old token keeps working, so senders can switch without a gap [default: 86400].
    grace_seconds: Option<u64>,
}

/// Issues a new token and revokes the old one after a grace period: both work meanwhile.
pub async fn rotate_token(
    State(api): State<Api>,
    caller: Caller,
    origin: EventOrigin,
    Path((slug, token_id)): Path<(String, String)>,
    payload: Result<Option<Json<RotateBody>>, JsonRejection>,
) -> Result<(StatusCode, Json<IssuedToken>), ApiError> {
    // No body is the defaults; a body that is not a `RotateBody` is a problem like any other.
    let grace = body(payload.map(Option::unwrap_or_default))?
        .grace_seconds
        .unwrap_or(86_400);
    let old = Uuid::parse_str(&token_id).map_err(|_| ApiError::NotFound)?;
    let rotated = commands::rotate_webhook_token(
        &api.ctx.js,
        &api.ctx.store,
        &slug,
        old,
        grace,
        &caller.0.sub,
        origin.0,
    )
    .await?;
    applied(&api, rotated.seq).await;
    let replaced = token_of(&api, &slug, &old.to_string())
        .await
        .map_err(after_append)?;
    Ok((
        StatusCode::CREATED,
        Json(IssuedToken {
            token_id: rotated.issued.token_id,
            webhook_token: rotated.issued.webhook_token,
            replaces: Some(replaced.into()),
        }),
    ))
}

pub async fn list_users(
    State(api): State<Api>,
    Path(slug): Path<String>,
) -> Result<Json<Items<UserView>>, ApiError> {
    tenant_of(&api, &slug).await?;
    let mut tx = api.tenant_tx(&slug).await?;
    let users = api.ctx.store.list_users(&mut tx, &slug).await?;
    Ok(Items::all(users))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// What the user's JWTs carry as `sub`.
    user_id: String,
    email: String,
    display_name: String,
    role: Role,
    slack_user_id: Option<String>,
}

async fn user_of(
    api: &Api,
    slug: &str,
    user_id: &str,
) -> Result<Option<store::UserView>, ApiError> {
    let mut tx = api.tenant_tx(slug).await?;
    api.ctx
        .store
        .find_user(&mut tx, slug, user_id)
        .await
        .map_err(ApiError::from)
}

pub async fn add_user(
    State(api): State<Api>,
    caller: Caller,
    origin: EventOrigin,
    Path(slug): Path<String>,
    payload: Result<Json<NewUser>, JsonRejection>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let b = body(payload)?;
    let user_id = b.user_id.clone();
    let user = commands::NewUser {
        user_id: b.user_id,
        email: b.email,
        display_name: b.display_name,
        role: b.role,
        slack_user_id: b.slack_user_id,
    };
    let seq = commands::add_user(
        &api.ctx.js,
        &api.ctx.store,
        &slug,
        user,
        &caller.0.sub,
        origin.0,
    )
    .await?;
    settled_user(&api, &slug, &user_id, seq).await
}

/// The user once the projector has applied the event at `seq`.
async fn settled_user(
    api: &Api,
    slug: &str,
    user_id: &str,
    seq: u64,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    applied(api, seq).await;
    match user_of(api, slug, user_id).await.map_err(after_append)? {
        Some(user) => Ok((StatusCode::OK, Json(user.into()))),
        None => Err(ApiError::NotFound),
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    role: Option<Role>,
    display_name: Option<String>,
    slack_user_id: Option<String>,
}

pub async fn update_user(
    State(api): State<Api>,
    caller: Caller,
    origin: EventOrigin,
    Path((slug, user_id)): Path<(String, String)>,
    payload: Result<Json<UserPatch>, JsonRejection>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let b = body(payload)?;
    let change = commands::UserChange {
        role: b.role,
        display_name: b.display_name,
        slack_user_id: b.slack_user_id,
    };
    let seq = commands::update_user(
        &api.ctx.js,
        &api.ctx.store,
        &slug,
        &user_id,
        change,
        &caller.0.sub,
        origin.0,
    )
    .await?;
    settled_user(&api, &slug, &user_id, seq).await
}

/// A link code from `/copilot link`, and whose account it links.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlackLink {
    /// The code `/copilot link` answered in Slack.
    code: String,
    /// The user to link [default: the caller]. Only an admin links someone else.
    user_id: Option<String>,
}

/// Links the Slack account of a `/copilot link` code to the caller (or, for an admin, to any
/// user of the tenant).
pub async fn link_slack(
    State(api): State<Api>,
    caller: Caller,
    origin: EventOrigin,
    payload: Result<Json<SlackLink>, JsonRejection>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let b = body(payload)?;
    let tenant = caller.0.tenant.clone();
    let user_id = b.user_id.unwrap_or_else(|| caller.0.sub.clone());
    if user_id != caller.0.sub && caller.0.role < Role::Admin {
        return Err(ApiError::Forbidden(
            "linking another user's Slack account needs the admin role".into(),
        ));
    }
    let (_, seq) = commands::slack_link::confirm_slack_link(
        &api.ctx,
        &api.ctx.js,
        &tenant,
        &b.code,
        &user_id,
        &caller.0.sub,
        origin.0,
    )
    .await?;
    match seq {
        Some(seq) => settled_user(&api, &tenant, &user_id, seq).await,
        None => match user_of(&api, &tenant, &user_id).await? {
            Some(user) => Ok((StatusCode::OK, Json(user.into()))),
            None => Err(ApiError::NotFound),
        },
    }
}

pub async fn remove_user(
    State(api): State<Api>,
    caller: Caller,
    origin: EventOrigin,
    Path((slug, user_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let seq = commands::remove_user(
        &api.ctx.js,
        &api.ctx.store,
        &slug,
        &user_id,
        &caller.0.sub,
        origin.0,
    )
    .await?;
    applied(&api, seq).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    actor: Option<String>,
    /// An event type, e.g. `WebhookTokenRevoked`.
    action: Option<String>,
    /// `incident:<id>`, `user:<id>`, `token:<id>`, `tenant:<slug>`, `settings:<name>`; a prefix
    /// ending in `:` matches every target of that kind.
    target: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// Audit entries a page holds when the caller does not say.
const DEFAULT_AUDIT_LIMIT: u32 = 100;

/// `GET /v1/audit`: the tenant's commands, newest first.
pub async fn audit(
    State(api): State<Api>,
    caller: Caller,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Items<AuditEntry>>, ApiError> {
    let Query(q) = query.map_err(|e| bad(e.body_text()))?;
    let limit = crate::page::limit(q.limit, DEFAULT_AUDIT_LIMIT)?;
    for (name, value) in [
        ("actor", &q.actor),
        ("action", &q.action),
        ("target", &q.target),
    ] {
        if value
            .as_ref()
            .is_some_and(|v| v.is_empty() || v.len() > 300)
        {
            return Err(bad(format!("{name} must be 1-300 characters")));
        }
    }
    let filter = AuditFilter {
        actor: q.actor,
        action: q.action,
        target: q.target,
        since: q.since,
        until: q.until,
        after: q.cursor.as_deref().map(decode_cursor).transpose()?,
        limit: limit as i64 + 1,
    };
    let mut tx = api.tenant_tx(&caller.0.tenant).await?;
    let mut items = api
        .ctx
        .store
        .list_audit(&mut tx, &caller.0.tenant, &filter)
        .await?;
    let next_cursor = crate::page::next(&mut items, limit, |e| {
        encode_cursor(AuditCursor {
            at: e.at,
            event_id: e.event_id,
        })
    });
    Ok(Json(Items {
        items: views::all(items),
        next_cursor,
    }))
}

fn encode_cursor(c: AuditCursor) -> String {
    crate::page::CursorWriter::default()
        .time(c.at)
        .id(c.event_id)
        .finish()
}

fn decode_cursor(text: &str) -> Result<AuditCursor, ApiError> {
    let mut reader = crate::page::CursorReader::new(text)?;
    let cursor = AuditCursor {
        at: reader.time()?,
        event_id: reader.id()?,
    };
    reader.done()?;
    Ok(cursor)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    #[test]
    fn an_audit_cursor_round_trips_and_garbage_is_refused() {
        let cursor = AuditCursor {
            at: DateTime::from_timestamp_micros(1_790_000_000_123_456).unwrap(),
            event_id: Uuid::now_v7(),
        };
        assert_eq!(decode_cursor(&encode_cursor(cursor)).unwrap(), cursor);
        assert!(decode_cursor("nope").is_err());
        assert!(
            decode_cursor(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0u8; 5]))
                .is_err()
        );
    }

    #[test]
    fn a_database_outage_after_a_command_was_recorded_is_a_500_that_does_not_invite_a_retry() {
        use axum::response::IntoResponse as _;
        // Arrange: the read of a recorded command's result failed as an outage would.
        let outage = ApiError::Unavailable {
            detail: "the database is unavailable; retry shortly".into(),
            retry_after_secs: 1,
        };

        // Act
        let response = after_append(outage).into_response();
        let not_found = after_append(ApiError::NotFound).into_response();

        // Assert: retrying would record the command twice, so nothing says to.
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.headers().get("retry-after").is_none());
        assert_eq!(not_found.status(), StatusCode::NOT_FOUND);
    }
}
