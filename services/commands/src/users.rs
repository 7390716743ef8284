//! People of a tenant: added with their role, changed, removed; a tenant always keeps an admin.

use async_nats::jetstream;
use copilot_events::{
    Headers, Role, UserAdded, UserRemoved, UserUpdated, is_plausible_email, is_valid_name,
    is_valid_user_id, subjects,
};
use copilot_store::Store;

use crate::{CommandError, append_on, existing_tenant, invalid};

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
    existing_tenant(store, tenant).await?;
    let mut tx = store.begin().await?;
    match store.find_user(&mut tx, tenant, user_id).await? {
        Some(_) => Ok(()),
        None => Err(CommandError::NotFound("user")),
    }
}

/// 409 when the change would leave the tenant without an admin.
async fn keep_an_admin(store: &Store, tenant: &str, user_id: &str) -> Result<(), CommandError> {
    let mut tx = store.begin().await?;
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
    existing_tenant(store, tenant).await?;
    let mut tx = store.begin().await?;
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
    append_on(js, subjects::tenant_users(tenant), tenant, &event, headers).await
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
    append_on(js, subjects::tenant_users(tenant), tenant, &event, headers).await
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
    existing_user(store, tenant, user_id).await?;
    keep_an_admin(store, tenant, user_id).await?;
    let event = UserRemoved {
        user_id: user_id.to_owned(),
        removed_by: actor.to_owned(),
    };
    append_on(js, subjects::tenant_users(tenant), tenant, &event, headers).await
}
