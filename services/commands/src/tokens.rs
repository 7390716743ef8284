//! Webhook tokens: issued (the secret shown once), revoked at once or after a grace, rotated.

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use copilot_events::{Headers, WebhookTokenIssued, WebhookTokenRevoked, subjects};
use copilot_runtime::auth::NewWebhookToken;
use copilot_store::{Store, TokenView};
use uuid::Uuid;

use crate::{CommandError, append_on, existing_tenant, invalid};

/// The longest grace a rotated token keeps working: 30 days.
pub const MAX_GRACE_SECS: u64 = 30 * 24 * 3600;

/// A new webhook token: its id, the secret (shown once) and the sequence of its event.
pub struct IssuedWebhookToken {
    pub token_id: Uuid,
    pub webhook_token: String,
    pub seq: u64,
}

/// A rotation: the new token, and the sequence of the old one's (deferred) revocation.
pub struct RotatedToken {
    pub issued: IssuedWebhookToken,
    pub replaced: Uuid,
    pub until: DateTime<Utc>,
    pub seq: u64,
}

/// Issues another webhook token for a tenant (the secret is shown once); its others keep working.
pub async fn issue_webhook_token(
    js: &jetstream::Context,
    store: &Store,
    tenant: &str,
    actor: &str,
    headers: Headers,
) -> Result<IssuedWebhookToken, CommandError> {
    existing_tenant(store, tenant).await?;
    issue_token(js, tenant, actor, headers).await
}

/// Issues a token for a tenant known to exist (one being created, not yet projected).
pub(crate) async fn issue_token(
    js: &jetstream::Context,
    tenant: &str,
    actor: &str,
    headers: Headers,
) -> Result<IssuedWebhookToken, CommandError> {
    let token = NewWebhookToken::generate();
    let issued = WebhookTokenIssued {
        token_id: Uuid::now_v7(),
        token_hash: token.hash,
        prefix: token.prefix,
        issued_by: actor.to_owned(),
    };
    let seq = append_on(
        js,
        subjects::tenant_tokens(tenant),
        tenant,
        &issued,
        headers,
    )
    .await?;
    Ok(IssuedWebhookToken {
        token_id: issued.token_id,
        webhook_token: token.secret,
        seq,
    })
}

/// The tenant's token `token_id`, or 404.
async fn token_of(store: &Store, tenant: &str, token_id: Uuid) -> Result<TokenView, CommandError> {
    existing_tenant(store, tenant).await?;
    let mut tx = store.begin_tenant(tenant).await?;
    store
        .list_tokens(&mut tx, tenant)
        .await?
        .into_iter()
        .find(|t| t.token_id == token_id)
        .ok_or(CommandError::NotFound("token"))
}

/// Revokes a webhook token of the tenant, at once or at `effective_at`; gateways refuse it from
/// then, once the projector has applied the event (their token cache lives one second).
pub async fn revoke_webhook_token(
    js: &jetstream::Context,
    store: &Store,
    tenant: &str,
    token_id: Uuid,
    effective_at: Option<DateTime<Utc>>,
    actor: &str,
    headers: Headers,
) -> Result<u64, CommandError> {
    token_of(store, tenant, token_id).await?;
    let revoked = WebhookTokenRevoked {
        token_id,
        revoked_by: actor.to_owned(),
        effective_at,
    };
    append_on(
        js,
        subjects::tenant_tokens(tenant),
        tenant,
        &revoked,
        headers,
    )
    .await
}

/// Issues a new token and revokes `token_id` once `grace_secs` have passed: both work meanwhile,
/// so senders switch without a gap.
#[allow(clippy::too_many_arguments)]
pub async fn rotate_webhook_token(
    js: &jetstream::Context,
    store: &Store,
    tenant: &str,
    token_id: Uuid,
    grace_secs: u64,
    actor: &str,
    headers: Headers,
) -> Result<RotatedToken, CommandError> {
    if grace_secs > MAX_GRACE_SECS {
        return Err(invalid(format!(
            "grace_seconds must be at most {MAX_GRACE_SECS} (30 days)"
        )));
    }
    let old = token_of(store, tenant, token_id).await?;
    if !old.active {
        return Err(CommandError::Conflict(
            "the token is already revoked; issue a new one instead".into(),
        ));
    }
    let issued = issue_token(js, tenant, actor, headers.clone()).await?;
    let until = Utc::now() + chrono::Duration::seconds(grace_secs as i64);
    let seq =
        revoke_webhook_token(js, store, tenant, token_id, Some(until), actor, headers).await?;
    Ok(RotatedToken {
        issued,
        replaced: token_id,
        until,
        seq,
    })
}
