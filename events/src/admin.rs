//! Tenant administration beyond creation: suspension, people and their roles, retention. All of
//! these travel on the TENANTS stream, so the tenants projection (and the audit log built from
//! it) sees every change to who may do what.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::envelope::EventPayload;
use crate::payloads::Role;

/// The tenant was suspended: its webhooks are refused with 403 and append nothing until it is
/// resumed. Its data stays readable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TenantSuspended {
    pub reason: String,
    pub suspended_by: String,
}

impl EventPayload for TenantSuspended {
    const TYPE: &'static str = "TenantSuspended";
    const VERSION: u32 = 1;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TenantResumed {
    pub resumed_by: String,
}

impl EventPayload for TenantResumed {
    const TYPE: &'static str = "TenantResumed";
    const VERSION: u32 = 1;
}

/// A person of a tenant. `user_id` is what their JWTs carry as `sub`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UserAdded {
    pub user_id: String,
    pub email: String,
    pub display_name: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack_user_id: Option<String>,
    pub added_by: String,
}

impl EventPayload for UserAdded {
    const TYPE: &'static str = "UserAdded";
    const VERSION: u32 = 1;
}

/// Some of a user's fields changed; the ones absent stay as they were.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UserUpdated {
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack_user_id: Option<String>,
    pub updated_by: String,
}

impl EventPayload for UserUpdated {
    const TYPE: &'static str = "UserUpdated";
    const VERSION: u32 = 1;
}

/// The user is gone: their tokens stop working at once, whatever their expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UserRemoved {
    pub user_id: String,
    pub removed_by: String,
}

impl EventPayload for UserRemoved {
    const TYPE: &'static str = "UserRemoved";
    const VERSION: u32 = 1;
}

/// How long a tenant's data is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantRetention {
    /// Days resolved signals are kept.
    #[schemars(range(min = 1, max = 3650))]
    pub signals_days: u32,
    /// Days resolved incidents are kept.
    #[schemars(range(min = 1, max = 3650))]
    pub incidents_days: u32,
}

impl Default for TenantRetention {
    fn default() -> Self {
        Self {
            signals_days: 90,
            incidents_days: 365,
        }
    }
}

impl TenantRetention {
    pub fn validate(&self) -> Result<(), String> {
        for (name, days) in [
            ("signals_days", self.signals_days),
            ("incidents_days", self.incidents_days),
        ] {
            if !(1..=3650).contains(&days) {
                return Err(format!("{name} must be between 1 and 3650"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TenantRetentionSet {
    pub retention: TenantRetention,
    pub set_by: String,
}

impl EventPayload for TenantRetentionSet {
    const TYPE: &'static str = "TenantRetentionSet";
    const VERSION: u32 = 1;
}

/// A tenant secret was stored (or replaced). The value itself never travels in an event: it is
/// sealed in Postgres with the platform's key; the event carries only what tells versions apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TenantSecretSet {
    /// The secret's name, as settings refer to it (`llm.api_key_secret`).
    pub name: String,
    /// 1 for the first value, one more for each replacement.
    pub version: u32,
    /// A short keyed digest of the value, to tell values apart without revealing them.
    pub fingerprint: String,
    /// The only origin (`https://host[:port]`) the copilot may send the value to, when the
    /// writer bound it to one: settings that point elsewhere cannot use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    pub set_by: String,
}

impl EventPayload for TenantSecretSet {
    const TYPE: &'static str = "TenantSecretSet";
    const VERSION: u32 = 1;
}

/// A tenant secret was deleted; settings that name it stop sending it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TenantSecretRemoved {
    pub name: String,
    pub removed_by: String,
}

impl EventPayload for TenantSecretRemoved {
    const TYPE: &'static str = "TenantSecretRemoved";
    const VERSION: u32 = 1;
}

/// A tenant secret's name: 1-64 characters of `a-z`, `0-9`, `-` and `_`, starting with a letter.
pub fn is_valid_secret_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Prefix of the actors that are the copilot itself (`system:correlator`, `system:cli`). A user id
/// cannot contain `:`, so no person can be recorded as one of them.
pub const SYSTEM_ACTOR_PREFIX: &str = "system:";

/// Ids no user may take: the bare names the copilot's own components were recorded under
/// before actors were namespaced, and names that read as the system in an audit log.
pub const RESERVED_USER_IDS: &[&str] = &[
    "correlator",
    "cli",
    "up",
    "system",
    "platform",
    "hypothesis",
    "projector",
    "gateway",
    "api",
    "copilot",
    "root",
];

/// The actor a component of the copilot records its own events under.
pub fn system_actor(component: &str) -> String {
    format!("{SYSTEM_ACTOR_PREFIX}{component}")
}

/// The bare names the copilot's components were recorded under before actors were namespaced.
const LEGACY_SYSTEM_ACTORS: &[&str] = &["correlator", "cli", "up"];

/// Whether an actor is the copilot itself rather than a person: `system:*`, or one of the bare
/// names events recorded before actors were namespaced (`correlator`, `cli`, `up`). Other
/// reserved ids are only refused for new users; someone who already had one stays a person.
pub fn is_system_actor(actor: &str) -> bool {
    actor.starts_with(SYSTEM_ACTOR_PREFIX) || LEGACY_SYSTEM_ACTORS.contains(&actor)
}

/// A user id: what a JWT's `sub` carries. 1-128 characters of letters, digits and `.@_+-`, and
/// not one of the [`RESERVED_USER_IDS`] (any case).
pub fn is_valid_user_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@+-".contains(&b))
        && !RESERVED_USER_IDS.contains(&id.to_ascii_lowercase().as_str())
}

/// Whether a string of a command holds a character no field may: NUL, or any other control
/// character but tab, line feed and carriage return (ANSI escapes, backspace, C1 controls).
pub fn has_forbidden_control(s: &str) -> bool {
    s.chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
}

/// A plausible email address: one `@` with something either side, no spaces or controls, at most
/// 254 characters. Delivery is the only real test; this keeps garbage out.
pub fn is_plausible_email(email: &str) -> bool {
    email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && matches!(email.split_once('@'), Some((local, domain)) if !local.is_empty() && domain.contains('.') && !domain.contains('@') && !domain.starts_with('.') && !domain.ends_with('.'))
}

/// A display name or free text field: 1-200 characters without control characters.
pub fn is_valid_name(name: &str) -> bool {
    !name.trim().is_empty() && name.chars().count() <= 200 && !name.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_emails_and_names_are_checked_for_shape() {
        assert!(is_valid_user_id("alice@example.com"));
        assert!(is_valid_user_id("u-123_x.y+z"));
        assert!(!is_valid_user_id(""));
        assert!(!is_valid_user_id("a b"));
        assert!(!is_valid_user_id("a'; DROP TABLE users;--"));
        assert!(!is_valid_user_id(&"a".repeat(129)));
        for reserved in ["correlator", "cli", "up", "System", "PLATFORM"] {
            assert!(!is_valid_user_id(reserved), "{reserved} is reserved");
        }
        assert!(!is_valid_user_id("system:correlator"));

        assert!(is_plausible_email("alice@example.com"));
        assert!(!is_plausible_email("alice"));
        assert!(!is_plausible_email("@example.com"));
        assert!(!is_plausible_email("a@b"));
        assert!(!is_plausible_email("a@@b.c"));
        assert!(!is_plausible_email("a @b.c"));

        assert!(is_valid_name("Alice Smith"));
        assert!(!is_valid_name("  "));
        assert!(!is_valid_name("a\u{0}b"));
        assert!(!is_valid_name(&"x".repeat(201)));
    }

    #[test]
    fn system_actors_are_namespaced_and_the_old_bare_names_still_count() {
        assert_eq!(system_actor("correlator"), "system:correlator");
        assert!(is_system_actor("system:cli"));
        assert!(is_system_actor("correlator"));
        assert!(!is_system_actor("alice"));
        // Reserved for new users, but a person who already had the id stays a person.
        assert!(!is_system_actor("api"));
    }

    #[test]
    fn control_characters_other_than_line_breaks_and_tabs_are_forbidden() {
        assert!(has_forbidden_control("gpt\u{0}4"));
        assert!(has_forbidden_control("\u{1b}[31mred"));
        assert!(has_forbidden_control("a\u{85}b"));
        assert!(!has_forbidden_control("line one\nline two\tindented\r\n"));
    }

    #[test]
    fn secret_names_are_lowercase_identifiers() {
        assert!(is_valid_secret_name("openai"));
        assert!(is_valid_secret_name("slack-signing_2"));
        for bad in ["", "1abc", "A", "a b", "a.b", &"x".repeat(65)] {
            assert!(!is_valid_secret_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn retention_outside_one_day_to_ten_years_is_refused() {
        assert!(TenantRetention::default().validate().is_ok());
        let zero = TenantRetention {
            signals_days: 0,
            ..TenantRetention::default()
        };
        assert!(zero.validate().unwrap_err().contains("signals_days"));
        let long = TenantRetention {
            incidents_days: 4000,
            ..TenantRetention::default()
        };
        assert!(long.validate().unwrap_err().contains("incidents_days"));
    }
}
