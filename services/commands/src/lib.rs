//! The write side: commands that append events. A command validates its input, decides from
//! what it can read, appends, and leaves the read models to the projector; optimistic
//! concurrency on the aggregate's subject makes a race lose cleanly. The API, the CLI and every
//! surface to come (Slack, tasks) call these and only translate their own input and output.

pub mod correlation;
pub mod incident;

use async_nats::jetstream::{self, message::PublishMessage};
use chrono::Utc;
use copilot_events::{
    Envelope, EventPayload, Headers, Role, TenantCreated, TenantResumed, TenantSecretRemoved,
    TenantSecretSet, TenantSuspended, UserAdded, UserRemoved, UserUpdated, WebhookTokenIssued,
    WebhookTokenRevoked, is_valid_secret_name, is_valid_slug, subjects,
};
use copilot_runtime::{
    append::{self, AppendError},
    auth::NewWebhookToken,
    secrets::{SecretKeys, SecretsError},
};
use copilot_store::{SecretRow, Store, StoreError};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0:?} is not a valid tenant slug: use 1-63 of a-z, 0-9 and -, not starting with -")]
    InvalidSlug(String),
    #[error("tenant {0:?} already exists")]
    TenantExists(String),
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error("{0}")]
    InvalidSecret(String),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Largest secret value, in bytes.
pub const MAX_SECRET_BYTES: usize = 8192;

/// A stored secret as its event tells it: never the value.
pub struct StoredSecret {
    pub name: String,
    pub version: u32,
    pub fingerprint: String,
    pub origin: Option<String>,
    pub seq: u64,
}

/// A secret's value and, optionally, the only origin it may be sent to.
pub struct SecretValue<'a> {
    pub value: &'a str,
    pub origin: Option<&'a str>,
}

/// Seals `value` with the platform's key and stores it as tenant secret `name` (replacing any
/// value it had, with the next version), then appends `TenantSecretSet` with the version and
/// fingerprint only. The row commits only once the event is appended, so the audit log never
/// misses a value that is in force.
#[allow(clippy::too_many_arguments)]
pub async fn set_secret(
    js: &jetstream::Context,
    store: &Store,
    keys: &SecretKeys,
    tenant: &str,
    name: &str,
    secret: SecretValue<'_>,
    actor: &str,
    headers: Headers,
) -> Result<StoredSecret, CommandError> {
    let value = secret.value;
    let origin = match secret.origin {
        Some(given) => Some(copilot_runtime::egress::origin_of(given).ok_or_else(|| {
            CommandError::InvalidSecret(format!(
                "origin {given:?} is not an http(s) origin such as https://api.openai.com"
            ))
        })?),
        None => None,
    };
    if !is_valid_secret_name(name) {
        return Err(CommandError::InvalidSecret(format!(
            "{name:?} is not a valid secret name: use 1-64 of a-z, 0-9, - and _, starting with a letter"
        )));
    }
    // What an HTTP header can carry as a bearer token or a signing key: visible ASCII. A line
    // break would make the request that sends it impossible to build.
    if value.is_empty()
        || value.len() > MAX_SECRET_BYTES
        || !value.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(CommandError::InvalidSecret(format!(
            "a secret's value is 1-{MAX_SECRET_BYTES} visible ASCII characters (no spaces, line breaks or control characters)"
        )));
    }
    let mut tx = store.begin().await?;
    let version = store.next_secret_version(&mut tx, tenant, name).await?;
    let sealed = keys.seal(tenant, name, version as u32, value);
    let row = SecretRow {
        name: name.to_owned(),
        version,
        key_id: sealed.key_id,
        nonce: sealed.nonce,
        ciphertext: sealed.ciphertext,
        fingerprint: keys.fingerprint(tenant, name, value),
        origin,
    };
    store
        .put_secret(&mut tx, tenant, &row, actor, Utc::now())
        .await?;
    let event = TenantSecretSet {
        name: name.to_owned(),
        version: version as u32,
        fingerprint: row.fingerprint.clone(),
        origin: row.origin.clone(),
        set_by: actor.to_owned(),
    };
    let seq = append_then_commit(js, tx, tenant, &event, headers).await?;
    Ok(StoredSecret {
        name: row.name,
        version: event.version,
        fingerprint: row.fingerprint,
        origin: row.origin,
        seq,
    })
}

/// Deletes tenant secret `name` and appends `TenantSecretRemoved`; `None` when there was none.
pub async fn remove_secret(
    js: &jetstream::Context,
    store: &Store,
    tenant: &str,
    name: &str,
    actor: &str,
    headers: Headers,
) -> Result<Option<u64>, CommandError> {
    let mut tx = store.begin().await?;
    if !store.delete_secret(&mut tx, tenant, name).await? {
        return Ok(None);
    }
    let event = TenantSecretRemoved {
        name: name.to_owned(),
        removed_by: actor.to_owned(),
    };
    append_then_commit(js, tx, tenant, &event, headers)
        .await
        .map(Some)
}

/// Appends a secret's event on the tenant's secrets subject, then commits the row written in
/// `tx`: the row is in force only once its event is recorded.
async fn append_then_commit<P: EventPayload>(
    js: &jetstream::Context,
    tx: copilot_store::Tx<'_>,
    tenant: &str,
    event: &P,
    headers: Headers,
) -> Result<u64, CommandError> {
    let seq = append_on(js, subjects::tenant_secrets(tenant), tenant, event, headers).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(seq)
}

/// The first user of a new tenant: an admin whose id its first JWT carries.
pub const FIRST_ADMIN: &str = "admin";

/// A created tenant's first webhook token (the secret is shown once), and the stream sequence of
/// the creation's last event, which a caller can wait for the projector to reach.
pub struct CreatedTenant {
    pub token_id: Uuid,
    pub webhook_token: String,
    pub seq: u64,
}

/// A new webhook token: its id, the secret (shown once) and the sequence of its event.
pub struct IssuedWebhookToken {
    pub token_id: Uuid,
    pub webhook_token: String,
    pub seq: u64,
}

/// The `UserAdded` of a tenant's first admin ([`FIRST_ADMIN`]), with `email` or a placeholder.
pub fn first_admin(tenant: &str, email: Option<&str>, actor: &str) -> UserAdded {
    UserAdded {
        user_id: FIRST_ADMIN.to_owned(),
        email: email
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{FIRST_ADMIN}@{tenant}.invalid")),
        display_name: "Administrator".to_owned(),
        role: Role::Admin,
        slack_user_id: None,
        added_by: actor.to_owned(),
    }
}

/// Appends `TenantCreated` (only if the tenant's subject is empty, so two concurrent creations
/// of one slug cannot both win), `WebhookTokenIssued`, and `UserAdded` for its first admin
/// ([`FIRST_ADMIN`], with `admin_email` or a placeholder address).
pub async fn create_tenant(
    js: &jetstream::Context,
    slug: &str,
    name: &str,
    admin_email: Option<&str>,
    headers: Headers,
) -> Result<CreatedTenant, CommandError> {
    if !is_valid_slug(slug) {
        return Err(CommandError::InvalidSlug(slug.to_owned()));
    }
    let actor = headers
        .actor
        .clone()
        .unwrap_or_else(|| copilot_events::system_actor("cli"));
    let actor = actor.as_str();
    let created = TenantCreated {
        slug: slug.to_owned(),
        name: name.to_owned(),
        created_by: actor.to_owned(),
    };
    let message = event_message(slug, &created, headers.clone()).expected_last_subject_sequence(0);
    match append(js, subjects::tenant(slug), message).await {
        Err(AppendError::Conflict) => return Err(CommandError::TenantExists(slug.to_owned())),
        Err(e) => return Err(CommandError::Append(e)),
        Ok(_) => {}
    }
    let token = issue_webhook_token(js, slug, actor, headers.clone()).await?;
    let admin = first_admin(slug, admin_email, actor);
    let seq = add_user(js, slug, &admin, headers).await?;
    Ok(CreatedTenant {
        token_id: token.token_id,
        webhook_token: token.webhook_token,
        seq,
    })
}

/// Issues a new webhook token for a tenant.
pub async fn issue_webhook_token(
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

/// A command's event, ready to append: a new envelope, its id as `Nats-Msg-Id` (a retried
/// publish of the same message is dropped), and the event headers.
pub fn event_message<P: EventPayload>(
    tenant: &str,
    payload: &P,
    headers: Headers,
) -> PublishMessage {
    command_event(tenant, payload, headers).message
}

/// A command's event with its id and type, for answers that name what was appended.
pub struct CommandEvent {
    pub message: PublishMessage,
    pub id: Uuid,
    pub event_type: &'static str,
}

pub fn command_event<P: EventPayload>(tenant: &str, payload: &P, headers: Headers) -> CommandEvent {
    let envelope = Envelope::new(tenant, payload, Utc::now(), headers);
    CommandEvent {
        message: append::message(&envelope),
        id: envelope.id,
        event_type: P::TYPE,
    }
}

/// Appends a command's message; returns its stream sequence.
pub async fn append(
    js: &jetstream::Context,
    subject: String,
    message: PublishMessage,
) -> Result<u64, AppendError> {
    append::append(js, subject, message)
        .await
        .map(|ack| ack.sequence)
}

/// Revokes a webhook token, at once or at `effective_at`; gateways refuse it from then, once
/// the projector has applied the event (their token cache lives one second).
pub async fn revoke_webhook_token(
    js: &jetstream::Context,
    tenant: &str,
    token_id: Uuid,
    effective_at: Option<chrono::DateTime<Utc>>,
    actor: &str,
    headers: Headers,
) -> Result<u64, CommandError> {
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

/// Appends one event on `subject` without an expected sequence; returns its stream sequence,
/// which a caller can wait for the projector to reach.
pub async fn append_on<P: EventPayload>(
    js: &jetstream::Context,
    subject: String,
    tenant: &str,
    payload: &P,
    headers: Headers,
) -> Result<u64, CommandError> {
    let message = event_message(tenant, payload, headers);
    Ok(append(js, subject, message).await?)
}

pub async fn suspend_tenant(
    js: &jetstream::Context,
    tenant: &str,
    reason: &str,
    actor: &str,
    headers: Headers,
) -> Result<u64, CommandError> {
    let event = TenantSuspended {
        reason: reason.to_owned(),
        suspended_by: actor.to_owned(),
    };
    append_on(js, subjects::tenant(tenant), tenant, &event, headers).await
}

pub async fn resume_tenant(
    js: &jetstream::Context,
    tenant: &str,
    actor: &str,
    headers: Headers,
) -> Result<u64, CommandError> {
    let event = TenantResumed {
        resumed_by: actor.to_owned(),
    };
    append_on(js, subjects::tenant(tenant), tenant, &event, headers).await
}

pub async fn add_user(
    js: &jetstream::Context,
    tenant: &str,
    user: &UserAdded,
    headers: Headers,
) -> Result<u64, CommandError> {
    append_on(js, subjects::tenant_users(tenant), tenant, user, headers).await
}

pub async fn update_user(
    js: &jetstream::Context,
    tenant: &str,
    change: &UserUpdated,
    headers: Headers,
) -> Result<u64, CommandError> {
    append_on(js, subjects::tenant_users(tenant), tenant, change, headers).await
}

pub async fn remove_user(
    js: &jetstream::Context,
    tenant: &str,
    removal: &UserRemoved,
    headers: Headers,
) -> Result<u64, CommandError> {
    append_on(js, subjects::tenant_users(tenant), tenant, removal, headers).await
}
