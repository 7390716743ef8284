//! Linking a Slack account to a tenant user from Slack: `/copilot link` gives the Slack user a
//! one-time code, which the tenant user it belongs to (or an admin, for anyone) confirms with
//! `POST /v1/slack/link`. The code names the Slack user and when it expires, signed with the
//! workspace's signing secret (HMAC-SHA256), so nothing is stored until it is confirmed; it
//! links one Slack account to one user, and once that account is linked a second confirmation
//! is refused.

use async_nats::jetstream;
use copilot_events::{Headers, TenantIntegrations, TenantSlack};
use copilot_runtime::Context;
use copilot_store::TenantSetting;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::{CommandError, UserChange, invalid, update_user};

/// How long a link code may be confirmed.
pub const LINK_CODE_SECS: i64 = 15 * 60;

/// The tenant's Slack settings, if it set any.
pub async fn tenant_slack(
    ctx: &Context,
    tenant: &str,
) -> Result<Option<TenantSlack>, CommandError> {
    let mut tx = ctx.store.begin().await?;
    let json = ctx
        .store
        .tenant_setting(&mut tx, TenantSetting::Integrations, tenant)
        .await?;
    Ok(json
        .and_then(|j| serde_json::from_value::<TenantIntegrations>(j).ok())
        .and_then(|i| i.slack))
}

/// The workspace's signing secret: the tenant secret its settings name, or (legacy) a variable
/// the operator allows this tenant.
pub async fn signing_secret(
    ctx: &Context,
    tenant: &str,
    slack: &TenantSlack,
) -> Result<String, String> {
    match (&slack.signing_secret, &slack.signing_secret_env) {
        (Some(name), _) => copilot_runtime::secrets::open_tenant_secret(ctx, tenant, name)
            .await
            .map(|s| s.value),
        (None, Some(name)) => copilot_runtime::secrets::tenant_env(
            &ctx.settings,
            tenant,
            "slack.signing_secret_env",
            name,
        ),
        (None, None) => Err("slack.signing_secret names no secret".into()),
    }
}

fn mac(secret: &str, tenant: &str, team: &str, slack_user: &str, expires: i64) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    for part in [
        "copilot-slack-link",
        tenant,
        team,
        slack_user,
        &expires.to_string(),
    ] {
        mac.update(part.as_bytes());
        mac.update(&[0]);
    }
    mac.finalize().into_bytes()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A code that links `slack_user` of the tenant's workspace, valid until `now` plus
/// [`LINK_CODE_SECS`].
pub fn link_code(secret: &str, tenant: &str, team: &str, slack_user: &str, now: i64) -> String {
    let expires = now + LINK_CODE_SECS;
    format!(
        "{slack_user}.{expires}.{}",
        mac(secret, tenant, team, slack_user, expires)
    )
}

/// The Slack user a code links, if it is this workspace's, unexpired and unaltered.
fn check_code(
    secret: &str,
    tenant: &str,
    team: &str,
    code: &str,
    now: i64,
) -> Result<String, String> {
    let refused = || "this link code is not valid: run /copilot link again".to_owned();
    let mut parts = code.trim().split('.');
    let (Some(user), Some(expires), Some(given), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refused());
    };
    let expires: i64 = expires.parse().map_err(|_| refused())?;
    let expected = mac(secret, tenant, team, user, expires);
    let same = expected.len() == given.len()
        && expected
            .bytes()
            .zip(given.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err(refused());
    }
    if now > expires {
        return Err("this link code has expired: run /copilot link again".into());
    }
    Ok(user.to_owned())
}

/// Links the Slack account a code names to `user_id`: the same `UserUpdated` an admin's change
/// appends, with the confirming person as its actor. The Slack user id, and the event's
/// sequence (`None` when that account was linked to this user already).
pub async fn confirm_slack_link(
    ctx: &Context,
    js: &jetstream::Context,
    tenant: &str,
    code: &str,
    user_id: &str,
    actor: &str,
    headers: Headers,
) -> Result<(String, Option<u64>), CommandError> {
    let slack = tenant_slack(ctx, tenant)
        .await?
        .ok_or_else(|| invalid("this tenant has no Slack workspace set"))?;
    let secret = signing_secret(ctx, tenant, &slack)
        .await
        .map_err(|e| CommandError::Internal(format!("the slack signing secret: {e}")))?;
    let slack_user = check_code(
        &secret,
        tenant,
        &slack.team_id,
        code,
        chrono::Utc::now().timestamp(),
    )
    .map_err(invalid)?;
    let linked = {
        let mut tx = ctx.store.begin().await?;
        ctx.store
            .user_by_slack_id(&mut tx, tenant, &slack_user)
            .await?
    };
    match linked {
        Some(user) if user.user_id == user_id => return Ok((slack_user, None)),
        Some(user) => {
            return Err(CommandError::Conflict(format!(
                "Slack account {slack_user} is already linked to user {:?}",
                user.user_id
            )));
        }
        None => {}
    }
    let change = UserChange {
        role: None,
        display_name: None,
        slack_user_id: Some(slack_user.clone()),
    };
    let seq = update_user(js, &ctx.store, tenant, user_id, change, actor, headers).await?;
    Ok((slack_user, Some(seq)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_code_checks_for_its_workspace_until_it_expires_and_not_once_altered() {
        let code = link_code("secret", "acme", "T1", "U2CERLKJA", 1_000);

        assert_eq!(
            check_code("secret", "acme", "T1", &code, 1_000 + LINK_CODE_SECS),
            Ok("U2CERLKJA".to_owned())
        );
        assert!(
            check_code("secret", "acme", "T1", &code, 1_001 + LINK_CODE_SECS)
                .unwrap_err()
                .contains("expired")
        );
        assert!(check_code("other", "acme", "T1", &code, 1_000).is_err());
        assert!(check_code("secret", "globex", "T1", &code, 1_000).is_err());
        assert!(check_code("secret", "acme", "T2", &code, 1_000).is_err());
        let other_user = code.replacen("U2CERLKJA", "UOTHER", 1);
        assert!(check_code("secret", "acme", "T1", &other_user, 1_000).is_err());
        let later = code.replacen(&(1_000 + LINK_CODE_SECS).to_string(), "999999999999", 1);
        assert!(check_code("secret", "acme", "T1", &later, 1_000).is_err());
        assert!(check_code("secret", "acme", "T1", "garbage", 1_000).is_err());
    }
}
