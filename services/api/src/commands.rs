//! Commands that append events. A command decides from what it can read, appends, and leaves
//! the read models to the projector; optimistic concurrency on the aggregate's subject makes a
//! race lose cleanly.

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use chrono::Utc;
use copilot_events::{
    Envelope, EventPayload, Headers, TenantCreated, WebhookTokenIssued, is_valid_slug, subjects,
};
use copilot_runtime::auth::NewWebhookToken;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0:?} is not a valid tenant slug: use 1-63 of a-z, 0-9 and -, not starting with -")]
    InvalidSlug(String),
    #[error("tenant {0:?} already exists")]
    TenantExists(String),
    #[error("the event store did not take the event: {0}")]
    Append(String),
}

/// A created tenant and its first webhook token (shown once).
pub struct CreatedTenant {
    pub slug: String,
    pub token_id: Uuid,
    pub webhook_token: String,
    /// Stream sequence of the last event appended, for waiting on the projection.
    pub last_seq: u64,
}

/// Appends `TenantCreated` (only if the tenant's subject is empty, so two concurrent creations
/// of one slug cannot both win) and `WebhookTokenIssued`.
pub async fn create_tenant(
    js: &jetstream::Context,
    slug: &str,
    name: &str,
    actor: &str,
    request_id: Option<String>,
) -> Result<CreatedTenant, CommandError> {
    if !is_valid_slug(slug) {
        return Err(CommandError::InvalidSlug(slug.to_owned()));
    }
    let now = Utc::now();
    let headers = Headers {
        request_id,
        ..Headers::default()
    };
    let created = TenantCreated {
        slug: slug.to_owned(),
        name: name.to_owned(),
        created_by: actor.to_owned(),
    };
    let envelope = Envelope::new(slug, &created, now, headers.clone());
    let message = PublishMessage::build()
        .payload(envelope.to_bytes().into())
        .header(subjects::HEADER_EVENT_TYPE, TenantCreated::TYPE)
        .message_id(envelope.id.to_string())
        .expected_last_subject_sequence(0);
    match append(js, subjects::tenant(slug), message).await {
        Err(AppendError::Conflict) => return Err(CommandError::TenantExists(slug.to_owned())),
        Err(AppendError::Other(e)) => return Err(CommandError::Append(e)),
        Ok(_) => {}
    }
    let (token_id, webhook_token, last_seq) = issue_webhook_token(js, slug, actor, headers).await?;
    Ok(CreatedTenant {
        slug: slug.to_owned(),
        token_id,
        webhook_token,
        last_seq,
    })
}

/// Issues a new webhook token for a tenant; returns its id, the secret (shown once) and the
/// stream sequence of the event.
pub async fn issue_webhook_token(
    js: &jetstream::Context,
    tenant: &str,
    actor: &str,
    headers: Headers,
) -> Result<(Uuid, String, u64), CommandError> {
    let token = NewWebhookToken::generate();
    let issued = WebhookTokenIssued {
        token_id: Uuid::now_v7(),
        token_hash: token.hash,
        prefix: token.prefix,
        issued_by: actor.to_owned(),
    };
    let envelope = Envelope::new(tenant, &issued, Utc::now(), headers);
    let message = PublishMessage::build()
        .payload(envelope.to_bytes().into())
        .header(subjects::HEADER_EVENT_TYPE, WebhookTokenIssued::TYPE)
        .message_id(envelope.id.to_string());
    let seq = append(js, subjects::tenant_tokens(tenant), message)
        .await
        .map_err(AppendError::unexpected)?;
    Ok((issued.token_id, token.secret, seq))
}

enum AppendError {
    Conflict,
    Other(String),
}

impl AppendError {
    /// For appends without an expected sequence, where a conflict cannot happen.
    fn unexpected(self) -> CommandError {
        match self {
            Self::Conflict => CommandError::Append("unexpected sequence conflict".into()),
            Self::Other(e) => CommandError::Append(e),
        }
    }
}

async fn append(
    js: &jetstream::Context,
    subject: String,
    message: PublishMessage,
) -> Result<u64, AppendError> {
    let ack = js
        .send_publish(subject, message)
        .await
        .map_err(|e| AppendError::Other(e.to_string()))?
        .await;
    match ack {
        Ok(ack) => Ok(ack.sequence),
        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Err(AppendError::Conflict),
        Err(e) => Err(AppendError::Other(e.to_string())),
    }
}

/// Revokes a webhook token; the gateway refuses it once the projector has applied the event.
pub async fn revoke_webhook_token(
    js: &jetstream::Context,
    tenant: &str,
    token_id: Uuid,
    actor: &str,
    headers: Headers,
) -> Result<u64, CommandError> {
    let revoked = copilot_events::WebhookTokenRevoked {
        token_id,
        revoked_by: actor.to_owned(),
    };
    let envelope = Envelope::new(tenant, &revoked, Utc::now(), headers);
    let message = PublishMessage::build()
        .payload(envelope.to_bytes().into())
        .header(
            subjects::HEADER_EVENT_TYPE,
            copilot_events::WebhookTokenRevoked::TYPE,
        )
        .message_id(envelope.id.to_string());
    append(js, subjects::tenant_tokens(tenant), message)
        .await
        .map_err(AppendError::unexpected)
}
