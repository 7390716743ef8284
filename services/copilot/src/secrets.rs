//! `copilot secrets`: the operator's side of tenant secrets. Generate a sealing key, store a
//! tenant's secret from a variable or stdin, move settings that still name environment
//! variables onto tenant secrets, and re-seal every secret after a key rotation.

use std::io::Read as _;

use anyhow::Context as _;
use copilot_commands as commands;
use copilot_runtime::{
    Context, Settings,
    secrets::{Sealed, SecretKeys, generate_key},
};

use crate::cli::SecretsCommand;

use crate::admin::ACTOR;

fn headers() -> copilot_events::Headers {
    copilot_events::Headers {
        actor: Some(ACTOR.to_owned()),
        ..Default::default()
    }
}

fn keys(settings: &Settings) -> anyhow::Result<SecretKeys> {
    SecretKeys::from_settings(settings)?.context(
        "no secrets key: set COPILOT_SECRETS_KEY or COPILOT_SECRETS_KEY_FILE (`copilot secrets new-key` prints one), or run `copilot up` once so it generates one in the data directory",
    )
}

pub async fn run(settings: Settings, command: SecretsCommand) -> anyhow::Result<()> {
    match command {
        SecretsCommand::NewKey { id } => {
            println!("{}", generate_key(&id));
            Ok(())
        }
        SecretsCommand::Set {
            tenant,
            name,
            from_env,
            origin,
        } => {
            let value = match from_env {
                Some(var) => {
                    std::env::var(&var).with_context(|| format!("the variable {var} is not set"))?
                }
                None => {
                    let mut value = String::new();
                    std::io::stdin()
                        .read_to_string(&mut value)
                        .context("reading the secret from stdin")?;
                    value.trim_end_matches(['\n', '\r']).to_owned()
                }
            };
            let keys = keys(&settings)?;
            let ctx = Context::connect(settings, "cli").await?;
            crate::app::prepare(&ctx).await?;
            let stored = commands::set_secret(
                &ctx.js,
                &ctx.store,
                Some(&keys),
                &tenant,
                &name,
                commands::SecretValue {
                    value: &value,
                    origin: origin.as_deref(),
                },
                ACTOR,
                headers(),
            )
            .await?;
            println!(
                "secret {} of {tenant} stored: version {}, fingerprint {}",
                stored.name, stored.version, stored.fingerprint
            );
            Ok(())
        }
        SecretsCommand::List { tenant } => {
            let ctx = Context::connect(settings, "cli").await?;
            let secrets = ctx.store.list_secrets(&tenant).await?;
            println!(
                "{:<24} {:>7} {:<12} {:<20} SET AT",
                "NAME", "VERSION", "FINGERPRINT", "SET BY"
            );
            for s in secrets {
                println!(
                    "{:<24} {:>7} {:<12} {:<20} {}",
                    s.name,
                    s.version,
                    s.fingerprint,
                    s.set_by,
                    s.set_at.to_rfc3339()
                );
            }
            Ok(())
        }
        SecretsCommand::Remove { tenant, name } => {
            let ctx = Context::connect(settings, "cli").await?;
            commands::remove_secret(&ctx.js, &ctx.store, &tenant, &name, ACTOR, headers()).await?;
            println!("secret {name} of {tenant} removed");
            Ok(())
        }
        SecretsCommand::ImportEnv => import_env(settings).await,
        SecretsCommand::Rekey => rekey(settings).await,
    }
}

/// Moves every tenant's settings that name an environment variable the operator allows that
/// tenant (`COPILOT_TENANT_ENV_ALLOW`) onto a tenant secret holding that variable's value as this
/// process sees it, and points the settings at the secret. A variable not allowed is skipped and
/// named: settings a tenant wrote during an attack (`COPILOT_JWT_SECRET`) must not become its
/// secret.
async fn import_env(settings: Settings) -> anyhow::Result<()> {
    let keys = keys(&settings)?;
    let ctx = Context::connect(settings, "cli").await?;
    crate::app::prepare(&ctx).await?;
    let tenants = ctx
        .store
        .list_tenants(&mut ctx.store.begin().await?)
        .await?;
    let egress = copilot_runtime::egress::EgressPolicy::from_settings(&ctx.settings)
        .map_err(anyhow::Error::msg)?;
    let mut moved = 0;
    for tenant in tenants.iter().map(|t| t.slug.as_str()) {
        let mut integrations = copilot_hypothesis::integrations(&ctx, tenant).await?;
        let mut changed = false;
        let allowed = |var: &str| {
            let ok = ctx.settings.tenancy.tenant_env_allowed(tenant, var);
            if !ok {
                println!(
                    "{tenant}: skipped {var}: not allowed for {tenant} in COPILOT_TENANT_ENV_ALLOW"
                );
            }
            ok
        };
        if let Some(llm) = &mut integrations.llm
            && let Some(var) = llm.api_key_env.clone()
            && allowed(&var)
        {
            store_var(&ctx, &keys, tenant, "llm-api-key", &var).await?;
            llm.api_key_env = None;
            llm.api_key_secret = Some("llm-api-key".into());
            changed = true;
        }
        if let Some(slack) = &mut integrations.slack
            && let Some(var) = slack.signing_secret_env.clone()
            && allowed(&var)
        {
            store_var(&ctx, &keys, tenant, "slack-signing-secret", &var).await?;
            slack.signing_secret_env = None;
            slack.signing_secret = Some("slack-signing-secret".into());
            changed = true;
        }
        if changed {
            // The settings as any other writer sets them, every check included (a URL the
            // egress policy refuses stays refused).
            commands::set_integrations(
                &ctx.js,
                &ctx.store,
                &ctx.settings,
                &egress,
                tenant,
                integrations,
                ACTOR,
                headers(),
            )
            .await
            .with_context(|| format!("setting {tenant}'s integrations"))?;
            moved += 1;
        }
    }
    println!("{moved} tenant(s) moved from environment variables to tenant secrets");
    Ok(())
}

async fn store_var(
    ctx: &Context,
    keys: &SecretKeys,
    tenant: &str,
    name: &str,
    var: &str,
) -> anyhow::Result<()> {
    let value = std::env::var(var).with_context(|| {
        format!("tenant {tenant} names variable {var}, which is not set for this command: run it where the services run")
    })?;
    let stored = commands::set_secret(
        &ctx.js,
        &ctx.store,
        Some(keys),
        tenant,
        name,
        commands::SecretValue {
            value: &value,
            origin: None,
        },
        ACTOR,
        headers(),
    )
    .await?;
    println!(
        "{tenant}: {var} stored as secret {name} (fingerprint {})",
        stored.fingerprint
    );
    Ok(())
}

/// Re-seals every secret not sealed with the first key, so the older keys can be dropped.
async fn rekey(settings: Settings) -> anyhow::Result<()> {
    let keys = keys(&settings)?;
    let ctx = Context::connect(settings, "cli").await?;
    let primary = keys.primary_id().to_owned();
    let bar = indicatif::ProgressBar::new_spinner().with_message("re-sealing tenant secrets");
    let mut resealed = 0u64;
    loop {
        let page = ctx
            .store
            .secrets_sealed_with_other_keys(&primary, 500)
            .await?;
        if page.is_empty() {
            break;
        }
        for (tenant, row) in page {
            let sealed = Sealed {
                key_id: row.key_id,
                nonce: row.nonce,
                ciphertext: row.ciphertext,
            };
            let version = row.version as u32;
            let value = keys
                .open(&tenant, &row.name, version, &sealed)
                .with_context(|| format!("secret {} of {tenant}", row.name))?;
            let fresh = keys.seal(&tenant, &row.name, version, &value);
            // A secret replaced meanwhile is already sealed with the new key.
            ctx.store
                .reseal_secret(
                    &tenant,
                    &row.name,
                    row.version,
                    &fresh.key_id,
                    &fresh.nonce,
                    &fresh.ciphertext,
                )
                .await?;
            resealed += 1;
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    println!(
        "{resealed} secret(s) re-sealed with key {primary}; keys listed after it can now be removed"
    );
    Ok(())
}
