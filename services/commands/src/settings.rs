//! A tenant's settings: correlation rules, integrations (Prometheus, model, Slack) and retention.
//! Integrations are checked for what they would make the copilot do on the tenant's behalf
//! before anything is appended.

use async_nats::jetstream;
use copilot_events::{
    CorrelationRules, CorrelationRulesSet, EventPayload, Headers, TenantIntegrations,
    TenantIntegrationsSet, TenantRetention, TenantRetentionSet, subjects,
};
use copilot_runtime::{Settings, egress::EgressPolicy};
use copilot_store::Store;

use crate::{CommandError, append_on, invalid};

async fn append_setting<P: EventPayload>(
    js: &jetstream::Context,
    tenant: &str,
    event: &P,
    headers: Headers,
) -> Result<u64, CommandError> {
    append_on(js, subjects::tenant(tenant), tenant, event, headers).await
}

/// Sets the tenant's correlation rules; they apply to signals decided after.
pub async fn set_rules(
    js: &jetstream::Context,
    tenant: &str,
    rules: CorrelationRules,
    actor: &str,
    headers: Headers,
) -> Result<u64, CommandError> {
    rules.validate().map_err(invalid)?;
    let event = CorrelationRulesSet {
        rules,
        set_by: actor.to_owned(),
    };
    append_setting(js, tenant, &event, headers).await
}

/// Sets how long the tenant's data is kept.
pub async fn set_retention(
    js: &jetstream::Context,
    tenant: &str,
    retention: TenantRetention,
    actor: &str,
    headers: Headers,
) -> Result<u64, CommandError> {
    retention.validate().map_err(invalid)?;
    let event = TenantRetentionSet {
        retention,
        set_by: actor.to_owned(),
    };
    append_setting(js, tenant, &event, headers).await
}

/// Sets the tenant's integrations, once what they make the copilot do passes: every URL the
/// egress policy (a literal internal address, or a name that resolves to one now; names are
/// checked again at every call), every secret named stored by the tenant (and, if bound to an
/// origin, used there only), and an environment variable only where the operator allows it for
/// this tenant, so a tenant can never make the copilot send a secret the tenant did not provide.
#[allow(clippy::too_many_arguments)]
pub async fn set_integrations(
    js: &jetstream::Context,
    store: &Store,
    settings: &Settings,
    egress: &EgressPolicy,
    tenant: &str,
    integrations: TenantIntegrations,
    actor: &str,
    headers: Headers,
) -> Result<u64, CommandError> {
    integrations.validate().map_err(invalid)?;
    for (field, url) in integrations.urls() {
        egress
            .check_url_resolved(url)
            .await
            .map_err(|e| invalid(format!("{field}: {e}")))?;
    }
    for name in integrations.env_names() {
        if !settings.tenancy.tenant_env_allowed(tenant, name) {
            return Err(invalid(format!(
                "settings may not name the copilot's environment variable {name:?}: store the value with PUT /v1/settings/secrets/{{name}} and name that secret instead"
            )));
        }
    }
    let names = integrations.secret_names();
    if !names.is_empty() {
        let stored = store.list_secrets(tenant).await?;
        if let Some(missing) = names.iter().find(|n| !stored.iter().any(|s| s.name == **n)) {
            return Err(invalid(format!(
                "no secret named {missing:?}: store it first with PUT /v1/settings/secrets/{missing}"
            )));
        }
        // A secret bound to an origin is sent there only.
        let bound = |name: &str| {
            stored
                .iter()
                .find(|s| s.name == name)
                .and_then(|s| s.origin.clone())
        };
        let sent_to = [
            integrations
                .llm
                .as_ref()
                .and_then(|l| Some((l.api_key_secret.as_deref()?, l.base_url.as_str()))),
            integrations.slack.as_ref().and_then(|s| {
                Some((
                    s.bot_token_secret.as_deref()?,
                    settings.slack.slack_api_url.as_str(),
                ))
            }),
        ];
        for (name, url) in sent_to.into_iter().flatten() {
            if let Some(bound) = bound(name)
                && copilot_runtime::egress::origin_of(url).as_deref() != Some(bound.as_str())
            {
                return Err(invalid(format!(
                    "secret {name:?} may only be sent to {bound}; it would be sent to {url}"
                )));
            }
        }
    }
    let event = TenantIntegrationsSet {
        integrations,
        set_by: actor.to_owned(),
    };
    append_setting(js, tenant, &event, headers).await
}
