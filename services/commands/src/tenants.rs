//! Tenants: creation (with the first webhook token and admin), suspension and resumption.

use async_nats::jetstream;
use copilot_events::{
    Headers, Role, TenantCreated, TenantResumed, TenantSuspended, UserAdded, is_plausible_email,
    is_valid_name, is_valid_slug, subjects,
};
use copilot_runtime::append::AppendError;
use copilot_store::Store;
use uuid::Uuid;

use crate::{
    CommandError, append, append_on, event_message, existing_tenant, invalid, tokens::issue_token,
};

/// The first user of a new tenant: an admin whose id its first JWT carries.
pub const FIRST_ADMIN: &str = "admin";

/// A tenant to create.
pub struct NewTenant<'a> {
    pub slug: &'a str,
    /// The display name [default: the slug].
    pub name: Option<&'a str>,
    /// Email of the first admin [default: a placeholder].
    pub admin_email: Option<&'a str>,
}

/// A created tenant's first webhook token (the secret is shown once), and the stream sequence of
/// the creation's last event, which a caller can wait for the projector to reach.
pub struct CreatedTenant {
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
    tenant: NewTenant<'_>,
    actor: &str,
    headers: Headers,
) -> Result<CreatedTenant, CommandError> {
    let slug = tenant.slug;
    if !is_valid_slug(slug) {
        return Err(CommandError::InvalidSlug(slug.to_owned()));
    }
    let name = tenant.name.unwrap_or(slug);
    if !is_valid_name(name) {
        return Err(invalid(
            "name must be 1-200 characters without control characters",
        ));
    }
    if let Some(email) = tenant.admin_email
        && !is_plausible_email(email)
    {
        return Err(invalid("admin_email is not an email address"));
    }
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
    let token = issue_token(js, slug, actor, headers.clone()).await?;
    let admin = first_admin(slug, tenant.admin_email, actor);
    let seq = append_on(js, subjects::tenant_users(slug), slug, &admin, headers).await?;
    Ok(CreatedTenant {
        token_id: token.token_id,
        webhook_token: token.webhook_token,
        seq,
    })
}

/// Suspends a tenant: its webhooks are refused until it is resumed.
pub async fn suspend_tenant(
    js: &jetstream::Context,
    store: &Store,
    tenant: &str,
    reason: &str,
    actor: &str,
    headers: Headers,
) -> Result<u64, CommandError> {
    if !is_valid_name(reason) {
        return Err(invalid(
            "reason must be 1-200 characters without control characters",
        ));
    }
    existing_tenant(store, tenant).await?;
    let event = TenantSuspended {
        reason: reason.to_owned(),
        suspended_by: actor.to_owned(),
    };
    append_on(js, subjects::tenant(tenant), tenant, &event, headers).await
}

pub async fn resume_tenant(
    js: &jetstream::Context,
    store: &Store,
    tenant: &str,
    actor: &str,
    headers: Headers,
) -> Result<u64, CommandError> {
    existing_tenant(store, tenant).await?;
    let event = TenantResumed {
        resumed_by: actor.to_owned(),
    };
    append_on(js, subjects::tenant(tenant), tenant, &event, headers).await
}
