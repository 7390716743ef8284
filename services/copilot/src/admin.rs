//! `copilot tenants|token|webhook-token|users`: tenant administration from the command line.
//! Each command runs the same command of `copilot-commands` as the admin API (with `system:cli` as
//! the actor) and returns once the projector has applied it, so its effect is in force when it
//! exits.

use std::time::Duration;

use anyhow::Context as _;
use copilot_api::views::TenantView;
use copilot_commands::{self as commands, FIRST_ADMIN};
use copilot_events::{Headers, Role};
use copilot_projector::{Projection, catch_up};
use copilot_runtime::{Context, Settings, auth::Jwt};

use crate::cli::{TenantsCommand, TokenCommand, UsersCommand, WebhookTokenCommand};

/// The actor of the CLI's commands, namespaced so no user can be mistaken for it.
pub(crate) const ACTOR: &str = "system:cli";

pub(crate) fn headers() -> Headers {
    Headers {
        actor: Some(ACTOR.to_owned()),
        ..Headers::default()
    }
}

pub(crate) async fn connect(settings: Settings) -> anyhow::Result<Context> {
    let ctx = Context::connect(settings, "cli").await?;
    crate::app::prepare(&ctx).await?;
    Ok(ctx)
}

async fn settle(ctx: &Context) -> anyhow::Result<()> {
    catch_up(ctx, Projection::Tenants, Duration::from_secs(30))
        .await
        .context("waiting for the change to be projected")
}

pub(crate) async fn ensure_tenant(ctx: &Context, slug: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        ctx.store.tenant_exists(slug).await?,
        "tenant {slug:?} does not exist (see `copilot tenants list`)"
    );
    Ok(())
}

/// A JWT for user `user_id` of `tenant`, bound to the user's current incarnation (so it stops
/// working if the user is removed, even if someone is added again under the same id).
pub async fn user_token(
    ctx: &Context,
    jwt: &Jwt,
    tenant: &str,
    user_id: &str,
    role: Role,
    ttl: Duration,
) -> anyhow::Result<String> {
    let mut tx = ctx.store.begin().await?;
    let user = ctx
        .store
        .find_user(&mut tx, tenant, user_id)
        .await?
        .with_context(|| format!("{user_id:?} is not a user of {tenant}"))?;
    let current: Role = user.role.parse().map_err(anyhow::Error::msg)?;
    Ok(jwt.issue(user_id, tenant, user.incarnation(), role.min(current), ttl)?)
}

pub async fn tenants(settings: Settings, command: TenantsCommand) -> anyhow::Result<()> {
    match command {
        TenantsCommand::Create {
            slug,
            name,
            admin_email,
            json,
        } => {
            let jwt = Jwt::from_settings(&settings)?;
            let ctx = connect(settings).await?;
            let tenant = commands::NewTenant {
                slug: &slug,
                name: name.as_deref(),
                admin_email: admin_email.as_deref(),
            };
            let created = commands::create_tenant(&ctx.js, tenant, ACTOR, headers()).await?;
            settle(&ctx).await?;
            let admin = user_token(
                &ctx,
                &jwt,
                &slug,
                FIRST_ADMIN,
                Role::Admin,
                Duration::from_secs(30 * 24 * 3600),
            )
            .await
            .unwrap_or_else(|e| format!("(none: {e})"));
            if json {
                println!(
                    "{}",
                    serde_json::json!({"tenant": slug, "webhook_token": created.webhook_token,
                        "token_id": created.token_id, "admin_user": FIRST_ADMIN, "admin_jwt": admin})
                );
            } else {
                println!("tenant {slug} created, with user {FIRST_ADMIN} (admin)");
                println!("webhook token (shown once): {}", created.webhook_token);
                println!("admin JWT (30 days):        {admin}");
            }
        }
        TenantsCommand::List { json } => {
            let ctx = connect(settings).await?;
            let mut tx = ctx.store.begin().await?;
            let tenants = ctx.store.list_tenants(&mut tx).await?;
            if json {
                // The same JSON as `GET /v1/admin/tenants` answers in `items`.
                let tenants: Vec<TenantView> = tenants.into_iter().map(Into::into).collect();
                println!("{}", serde_json::to_string_pretty(&tenants)?);
            } else {
                println!(
                    "{:<24} {:<10} {:>6} {:>6}  created",
                    "tenant", "state", "tokens", "users"
                );
                for t in tenants {
                    let state = if t.suspended_at.is_some() {
                        "suspended"
                    } else {
                        "active"
                    };
                    println!(
                        "{:<24} {:<10} {:>6} {:>6}  {}",
                        t.slug,
                        state,
                        t.active_tokens,
                        t.users,
                        t.created_at.format("%Y-%m-%d %H:%M")
                    );
                }
            }
        }
        TenantsCommand::GrafanaReader {
            slug,
            role,
            password,
        } => {
            let role = role.unwrap_or_else(|| format!("grafana_{}", slug.replace('-', "_")));
            anyhow::ensure!(
                !role.is_empty()
                    && role.len() <= 63
                    && role.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                    && role
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "--role must be 1-63 of a-z, 0-9 and _, not starting with a digit"
            );
            let ctx = connect(settings).await?;
            anyhow::ensure!(
                ctx.store.tenant_exists(&slug).await?,
                "tenant {slug:?} does not exist"
            );
            let generated = copilot_runtime::auth::generate_secret();
            let made_with = ctx
                .store
                .grafana_reader(&role, password.as_deref(), &generated, &slug)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "{} {role}: reads tenant {slug}'s read models only",
                if made_with.is_some() {
                    "made"
                } else {
                    "adopted"
                }
            );
            if let Some(password) = made_with {
                println!("password (shown once): {password}");
            }
            println!(
                "in Grafana: a PostgreSQL datasource with user {role} on database {}",
                ctx.store.database_name().await?
            );
        }
        TenantsCommand::Show { slug } => {
            let ctx = connect(settings).await?;
            let mut tx = ctx.store.begin_tenant(&slug).await?;
            let tenant = ctx
                .store
                .get_tenant(&mut tx, &slug)
                .await?
                .with_context(|| format!("tenant {slug:?} does not exist"))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&TenantView::from(tenant))?
            );
        }
        TenantsCommand::Suspend { slug, reason } => {
            let ctx = connect(settings).await?;
            commands::suspend_tenant(&ctx.js, &ctx.store, &slug, &reason, ACTOR, headers()).await?;
            settle(&ctx).await?;
            println!(
                "tenant {slug} suspended: its webhooks are refused until `copilot tenants resume {slug}`"
            );
        }
        TenantsCommand::Resume { slug } => {
            let ctx = connect(settings).await?;
            commands::resume_tenant(&ctx.js, &ctx.store, &slug, ACTOR, headers()).await?;
            settle(&ctx).await?;
            println!("tenant {slug} resumed");
        }
    }
    Ok(())
}

pub async fn token(settings: Settings, command: TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::Issue {
        tenant,
        user,
        role,
        platform,
        ttl_hours,
    } = command;
    let jwt = Jwt::from_settings(&settings)?;
    let ttl = Duration::from_secs(ttl_hours * 3600);
    if platform {
        println!("{}", jwt.issue_platform(&user, ttl)?);
        return Ok(());
    }
    let tenant = tenant.context("--tenant is required")?;
    let ctx = Context::connect(settings, "cli").await?;
    ensure_tenant(&ctx, &tenant).await?;
    let mut tx = ctx.store.begin().await?;
    let found = ctx
        .store
        .find_user(&mut tx, &tenant, &user)
        .await?
        .with_context(|| {
            format!("{user:?} is not a user of {tenant}: add them with `copilot users add --tenant {tenant} {user} ...`")
        })?;
    let current: Role = found.role.parse().map_err(anyhow::Error::msg)?;
    println!(
        "{}",
        jwt.issue(
            &user,
            &tenant,
            found.incarnation(),
            role.unwrap_or(current).min(current),
            ttl
        )?
    );
    Ok(())
}

pub async fn webhook_tokens(
    settings: Settings,
    command: WebhookTokenCommand,
) -> anyhow::Result<()> {
    let ctx = connect(settings).await?;
    match command {
        WebhookTokenCommand::List { tenant } => {
            ensure_tenant(&ctx, &tenant).await?;
            let mut tx = ctx.store.begin_tenant(&tenant).await?;
            println!(
                "{:<36}  {:<12} {:<8} {:<17} revoked",
                "token id", "prefix", "active", "issued"
            );
            for t in ctx.store.list_tokens(&mut tx, &tenant).await? {
                println!(
                    "{}  {:<12} {:<8} {:<17} {}",
                    t.token_id,
                    t.prefix,
                    t.active,
                    t.issued_at.format("%Y-%m-%d %H:%M"),
                    t.revoked_at.map(|r| r.to_rfc3339()).unwrap_or_default()
                );
            }
        }
        WebhookTokenCommand::Issue { tenant } => {
            let issued =
                commands::issue_webhook_token(&ctx.js, &ctx.store, &tenant, ACTOR, headers())
                    .await?;
            let (id, secret) = (issued.token_id, issued.webhook_token);
            settle(&ctx).await?;
            println!("token {id} (shown once): {secret}");
        }
        WebhookTokenCommand::Revoke { tenant, token_id } => {
            commands::revoke_webhook_token(
                &ctx.js,
                &ctx.store,
                &tenant,
                token_id,
                None,
                ACTOR,
                headers(),
            )
            .await?;
            settle(&ctx).await?;
            println!("token {token_id} revoked: gateways refuse it within a second");
        }
        WebhookTokenCommand::Rotate {
            tenant,
            token_id,
            grace_hours,
        } => {
            let rotated = commands::rotate_webhook_token(
                &ctx.js,
                &ctx.store,
                &tenant,
                token_id,
                grace_hours * 3600,
                ACTOR,
                headers(),
            )
            .await?;
            let (id, secret) = (rotated.issued.token_id, rotated.issued.webhook_token);
            let until = rotated.until;
            settle(&ctx).await?;
            println!("new token {id} (shown once): {secret}");
            println!(
                "token {token_id} keeps working until {}",
                until.to_rfc3339()
            );
        }
    }
    Ok(())
}

pub async fn users(settings: Settings, command: UsersCommand) -> anyhow::Result<()> {
    let ctx = connect(settings).await?;
    match command {
        UsersCommand::List { tenant } => {
            ensure_tenant(&ctx, &tenant).await?;
            let mut tx = ctx.store.begin_tenant(&tenant).await?;
            for u in ctx.store.list_users(&mut tx, &tenant).await? {
                println!(
                    "{:<24} {:<9} {:<32} {}",
                    u.user_id, u.role, u.email, u.display_name
                );
            }
        }
        UsersCommand::Add {
            tenant,
            user_id,
            email,
            name,
            role,
            slack_user_id,
        } => {
            let user = commands::NewUser {
                user_id: user_id.clone(),
                email,
                display_name: name,
                role,
                slack_user_id,
            };
            commands::add_user(&ctx.js, &ctx.store, &tenant, user, ACTOR, headers()).await?;
            settle(&ctx).await?;
            println!(
                "user {user_id} added to {tenant}; issue a token with `copilot token issue --tenant {tenant} --user {user_id}`"
            );
        }
        UsersCommand::SetRole {
            tenant,
            user_id,
            role,
        } => {
            let change = commands::UserChange {
                role: Some(role),
                ..Default::default()
            };
            commands::update_user(
                &ctx.js,
                &ctx.store,
                &tenant,
                &user_id,
                change,
                ACTOR,
                headers(),
            )
            .await?;
            settle(&ctx).await?;
            println!("user {user_id} of {tenant} is now {role:?}");
        }
        UsersCommand::Remove { tenant, user_id } => {
            commands::remove_user(&ctx.js, &ctx.store, &tenant, &user_id, ACTOR, headers()).await?;
            settle(&ctx).await?;
            println!("user {user_id} removed from {tenant}: their tokens no longer work");
        }
    }
    Ok(())
}
