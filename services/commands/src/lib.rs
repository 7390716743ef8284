//! The write side: every command the product has, once. A command takes typed input and an
//! actor, validates it, decides from what it can read, appends its event through the one append
//! path, and leaves the read models to the projector; optimistic concurrency on the aggregate's
//! subject makes a race lose cleanly. The API, the CLI and every surface to come (Slack, tasks)
//! call these and only translate their own input and output, so the same bad input gets the
//! same answer everywhere: [`CommandError`]'s message, which the API sends as its problem detail.

mod incidents;
mod secrets;
mod settings;
pub mod slack_link;
mod task_commands;
mod tenants;
mod tokens;
mod users;
mod workers;

pub use incidents::{Appended, IncidentAction, IncidentCommand, run as run_incident_command};
pub use secrets::{MAX_SECRET_BYTES, SecretValue, StoredSecret, remove_secret, set_secret};
pub use settings::{set_integrations, set_retention, set_rules};
pub use task_commands::{
    Claim, NewTask, cancel_task, claim_next, create_task, decide_task, finish_task, heartbeat_task,
    load_task, release_task, report_task,
};
pub use tenants::{
    CreatedTenant, FIRST_ADMIN, NewTenant, create_tenant, first_admin, resume_tenant,
    suspend_tenant,
};
pub use tokens::{
    IssuedWebhookToken, MAX_GRACE_SECS, RotatedToken, issue_webhook_token, revoke_webhook_token,
    rotate_webhook_token,
};
pub use users::{NewUser, UserChange, add_user, remove_user, update_user};
pub use workers::{
    IssuedWorkerToken, MAX_CAPACITY, NewWorker, issue_worker_token, live_worker, register_worker,
    revoke_worker_token, worker_gone, worker_heartbeat,
};

pub mod correlation;
pub mod incident;
pub mod tasks;

use async_nats::jetstream::{self, message::PublishMessage};
use chrono::Utc;
use copilot_events::{Envelope, EventPayload, Headers};
use copilot_runtime::{
    append::{self, AppendError},
    http::ApiError,
    secrets::SecretsError,
};
use copilot_store::StoreError;
use uuid::Uuid;

/// Why a command was not carried out. Its message is what a person reads, from the API (as the
/// problem's detail) and from the CLI alike.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The input breaks a rule of its field; nothing was appended (422).
    #[error("{0}")]
    Invalid(String),
    #[error("{0:?} is not a valid tenant slug: use 1-63 of a-z, 0-9 and -, not starting with -")]
    InvalidSlug(String),
    /// What the command names does not exist (404): `tenant`, `user`, `token`, `secret`.
    #[error("no such {0}")]
    NotFound(&'static str),
    /// The command does not fit what is there now (409).
    #[error("{0}")]
    Conflict(String),
    #[error("tenant {0:?} already exists")]
    TenantExists(String),
    /// The actor may not give this command (403).
    #[error("{0}")]
    Forbidden(String),
    /// Something that should not be (a stored value this build cannot read): a bug (500).
    #[error("{0}")]
    Internal(String),
    /// Tenant secrets need a key the operator has not configured (503).
    #[error(
        "tenant secrets are not enabled on this copilot: its operator must set COPILOT_SECRETS_KEY or COPILOT_SECRETS_KEY_FILE"
    )]
    SecretsDisabled,
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The one mapping of a command's failure to an HTTP answer.
impl From<CommandError> for ApiError {
    fn from(err: CommandError) -> Self {
        match err {
            CommandError::Invalid(_) | CommandError::InvalidSlug(_) => {
                ApiError::Unprocessable(err.to_string())
            }
            CommandError::NotFound(_) => ApiError::NotFound,
            CommandError::Forbidden(_) => ApiError::Forbidden(err.to_string()),
            CommandError::Internal(e) => ApiError::Internal(anyhow::anyhow!(e)),
            CommandError::Conflict(_) | CommandError::TenantExists(_) => {
                ApiError::Conflict(err.to_string())
            }
            CommandError::SecretsDisabled => ApiError::Unavailable {
                detail: err.to_string(),
                retry_after_secs: 60,
            },
            CommandError::Append(e) => ApiError::from(e),
            CommandError::Store(e) => ApiError::from(e),
            CommandError::Secrets(e) => ApiError::Internal(anyhow::anyhow!(e)),
        }
    }
}

fn invalid(message: impl Into<String>) -> CommandError {
    CommandError::Invalid(message.into())
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

/// 404 unless tenant `slug` exists.
async fn existing_tenant(store: &copilot_store::Store, slug: &str) -> Result<(), CommandError> {
    if copilot_events::is_valid_slug(slug) && store.tenant_exists(slug).await? {
        Ok(())
    } else {
        Err(CommandError::NotFound("tenant"))
    }
}
