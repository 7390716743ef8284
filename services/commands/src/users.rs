//! People of a tenant: added with their role, changed, removed; a tenant always keeps an admin.

use async_nats::jetstream;
use copilot_events::{
    Headers, Role, UserAdded, UserRemoved, UserUpdated, is_plausible_email, is_valid_name,
    is_valid_user_id, subjects,
};
use std::time::Duration;

use async_nats::jetstream::stream::LastRawMessageErrorKind;
use copilot_runtime::append::AppendError;
use copilot_store::{Store, checkpoints};

use crate::{CommandError, append, event_message, existing_tenant, invalid};

/// How long a command waits for the tenants projection to hold the people it decides on.
const PEOPLE_WAIT: Duration = Duration::from_secs(5);

/// 404 unless the tenant exists; then the sequence of the last event on its users subject, once
/// the read model holds it:
/// the version a command on people decides on and appends at, so two commands deciding on the
/// same people (two demotions of the last two admins) cannot both win.
async fn people_version(
    js: &jetstream::Context,
    store: &Store,
    tenant: &str,
) -> Result<u64, CommandError> {
    existing_tenant(store, tenant).await?;
    let unavailable = |e: String| CommandError::Append(AppendError::Unavailable(e));
    let stream = js
        .get_stream(subjects::TENANTS)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let seq = match stream
        .get_last_raw_message_by_subject(&subjects::tenant_users(tenant))
        .await
    {
        Ok(message) => message.sequence,
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => 0,
        Err(e) => return Err(unavailable(e.to_string())),
    };
    store
        .wait_for_checkpoint(checkpoints::TENANTS, seq, PEOPLE_WAIT, |_| {})
        .await?;
    Ok(seq)
}

/// Appends a change to the tenant's people at the version it was decided on.
async fn append_at<P: copilot_events::EventPayload>(
    js: &jetstream::Context,
    tenant: &str,
    version: u64,
    event: &P,
    headers: Headers,
) -> Result<u64, CommandError> {
    let message = event_message(tenant, event, headers).expected_last_subject_sequence(version);
    match append(js, subjects::tenant_users(tenant), message).await {
        Err(AppendError::Conflict) => Err(CommandError::Conflict(
            "the tenant's people changed while this command was decided: retry it".into(),
        )),
        other => Ok(other?),
    }
}

/// A person to add.
pub struct NewUser {
    /// What the user's JWTs carry as `sub`.
    pub user_id: String,
    pub email: String,
    pub display_name: String,
    pub role: Role,
    pub slack_user_id: Option<String>,
}

/// Fields of a user to change; `None` keeps what is there.
#[derive(Default)]
pub struct UserChange {
    pub role: Option<Role>,
    pub display_name: Option<String>,
    pub slack_user_id: Option<String>,
}

fn check_display_name(name: &str) -> Result<(), CommandError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(invalid(
            "display_name must be 1-200 characters without control characters",
        ))
    }
}

fn check_slack_id(id: Option<&str>) -> Result<(), CommandError> {
    match id {
        Some(id)
            if !(id.len() <= 32
                && id.len() > 1
                && id
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())) =>
        {
            Err(invalid(
                "slack_user_id must be a Slack user id such as U0123ABCD",
            ))
        }
        _ => Ok(()),
    }
}

/// 404 unless `user_id` is a user of the tenant.
async fn existing_user(store: &Store, tenant: &str, user_id: &str) -> Result<(), CommandError> {
    let mut tx = store.begin_tenant(tenant).await?;
    match store.find_user(&mut tx, tenant, user_id).await? {
        Some(_) => Ok(()),
        None => Err(CommandError::NotFound("user")),
    }
}

/// 409 when the change would leave the tenant without an admin.
async fn keep_an_admin(store: &Store, tenant: &str, user_id: &str) -> Result<(), CommandError> {
    let mut tx = store.begin_tenant(tenant).await?;
    if store.is_last_admin(&mut tx, tenant, user_id).await? {
        return Err(CommandError::Conflict(
            "this is the tenant's last admin: make another user admin first".into(),
        ));
    }
    Ok(())
}

/// Adds a user: ids, emails and names of the right shape, no second user of one id or email.
pub async fn add_user(
    js: &jetstream::Context,
    store: &Store,
    tenant: &str,
    user: NewUser,
    actor: &str,
    headers: Headers,
) -> Result<u64, CommandError> {
    if !is_valid_user_id(&user.user_id) {
        return Err(invalid(
            "user_id must be 1-128 of letters, digits and . _ @ + -, and not a name reserved for the copilot itself",
        ));
    }
    if !is_plausible_email(&user.email) {
        return Err(invalid("email is not an email address"));
    }
    check_display_name(&user.display_name)?;
    check_slack_id(user.slack_user_id.as_deref())?;
    let version = people_version(js, store, tenant).await?;
    let mut tx = store.begin_tenant(tenant).await?;
    if store
        .find_user(&mut tx, tenant, &user.user_id)
        .await?
        .is_some()
    {
        return Err(CommandError::Conflict(format!(
            "user {:?} already exists",
            user.user_id
        )));
    }
    if store.user_email_taken(&mut tx, tenant, &user.email).await? {
        return Err(CommandError::Conflict(format!(
            "{:?} is another user's email",
            user.email
        )));
    }
    drop(tx);
    let event = UserAdded {
        user_id: user.user_id,
        email: user.email,
        display_name: user.display_name,
        role: user.role,
        slack_user_id: user.slack_user_id,
        added_by: actor.to_owned(),
    };
    append_at(js, tenant, version, &event, headers).await
}

/// Changes a user's role, name or Slack id; a demotion may not leave the tenant without an
/// admin.
pub async fn update_user(
    js: &jetstream::Context,
    store: &Store,
    tenant: &str,
    user_id: &str,
    change: UserChange,
    actor: &str,
    headers: Headers,
) -> Result<u64, CommandError> {
    if change.role.is_none() && change.display_name.is_none() && change.slack_user_id.is_none() {
        return Err(invalid(
            "name at least one of role, display_name, slack_user_id",
        ));
    }
    if let Some(name) = &change.display_name {
        check_display_name(name)?;
    }
    check_slack_id(change.slack_user_id.as_deref())?;
    let version = people_version(js, store, tenant).await?;
    existing_user(store, tenant, user_id).await?;
    if change.role.is_some_and(|r| r != Role::Admin) {
        keep_an_admin(store, tenant, user_id).await?;
    }
    let event = UserUpdated {
        user_id: user_id.to_owned(),
        role: change.role,
        display_name: change.display_name,
        slack_user_id: change.slack_user_id,
        updated_by: actor.to_owned(),
    };
    append_at(js, tenant, version, &event, headers).await
}

/// Removes a user: their tokens stop working at once. The last admin stays.
pub async fn remove_user(
    js: &jetstream::Context,
    store: &Store,
    tenant: &str,
    user_id: &str,
    actor: &str,
    headers: Headers,
) -> Result<u64, CommandError> {
    let version = people_version(js, store, tenant).await?;
    existing_user(store, tenant, user_id).await?;
    keep_an_admin(store, tenant, user_id).await?;
    let event = UserRemoved {
        user_id: user_id.to_owned(),
        removed_by: actor.to_owned(),
    };
    append_at(js, tenant, version, &event, headers).await
}
