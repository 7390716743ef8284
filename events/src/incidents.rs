//! Incident events: the correlator's decisions and the lifecycle commands, all on the incident's
//! one subject (`incidents.<tenant>.<incident>`), so a command can append with JetStream's
//! expected-last-subject-sequence and lose a race cleanly. Also the tenant's correlation rules,
//! which travel on the tenant's subject.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{EventPayload, Severity};

/// The actor of decisions the correlator makes. Events recorded before actors were namespaced
/// say `correlator`; compare with [`crate::is_system_actor`], not with this.
pub const CORRELATOR: &str = "system:correlator";

/// Where an incident stands. `resolved` can be reopened; `learned` and `inconclusive` close the
/// review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum IncidentState {
    Detected,
    Acknowledged,
    Investigating,
    Mitigated,
    Resolved,
    Learned,
    Inconclusive,
}

impl IncidentState {
    pub const ALL: [IncidentState; 7] = [
        Self::Detected,
        Self::Acknowledged,
        Self::Investigating,
        Self::Mitigated,
        Self::Resolved,
        Self::Learned,
        Self::Inconclusive,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Detected => "detected",
            Self::Acknowledged => "acknowledged",
            Self::Investigating => "investigating",
            Self::Mitigated => "mitigated",
            Self::Resolved => "resolved",
            Self::Learned => "learned",
            Self::Inconclusive => "inconclusive",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }

    /// Still needs someone: neither resolved nor reviewed.
    pub fn is_open(self) -> bool {
        !matches!(self, Self::Resolved | Self::Learned | Self::Inconclusive)
    }

    /// The states a person may move an incident to from this one. From `resolved`, going back to
    /// `investigating` is a reopen.
    pub fn allowed_next(self) -> &'static [IncidentState] {
        use IncidentState::*;
        match self {
            Detected => &[Acknowledged, Investigating, Mitigated, Resolved],
            Acknowledged => &[Investigating, Mitigated, Resolved],
            Investigating => &[Mitigated, Resolved],
            Mitigated => &[Investigating, Resolved],
            Resolved => &[Investigating, Learned, Inconclusive],
            Learned | Inconclusive => &[],
        }
    }
}

/// How the correlator groups a tenant's signals into incidents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorrelationRules {
    /// Labels whose values together form the correlation key. Empty: the default chain, the first
    /// of `service`, `job`, `app`, `namespace` the alert has, else the source's group key.
    #[serde(default)]
    pub group_by: Vec<String>,
    /// How long an incident takes new signals of its key, in seconds.
    #[serde(default = "defaults::window_secs")]
    pub window_secs: u64,
    /// `rolling`: the window restarts with each signal; `fixed`: it runs from the incident's opening.
    #[serde(default)]
    pub window_kind: WindowKind,
    /// Signals of one key needed within the window before an incident opens.
    #[serde(default = "defaults::min_signals")]
    pub min_signals: u32,
    /// A signal this long after its key's incident resolved reopens it; later, it opens a new one.
    #[serde(default = "defaults::reopen_window_secs")]
    pub reopen_window_secs: u64,
    /// Once every attached alert has resolved, the incident resolves after this many seconds
    /// without a new firing one.
    #[serde(default = "defaults::resolve_grace_secs")]
    pub resolve_grace_secs: u64,
}

mod defaults {
    pub fn window_secs() -> u64 {
        30 * 60
    }
    pub fn min_signals() -> u32 {
        1
    }
    pub fn reopen_window_secs() -> u64 {
        60 * 60
    }
    pub fn resolve_grace_secs() -> u64 {
        5 * 60
    }
}

impl Default for CorrelationRules {
    fn default() -> Self {
        Self {
            group_by: Vec::new(),
            window_secs: defaults::window_secs(),
            window_kind: WindowKind::Rolling,
            min_signals: defaults::min_signals(),
            reopen_window_secs: defaults::reopen_window_secs(),
            resolve_grace_secs: defaults::resolve_grace_secs(),
        }
    }
}

impl CorrelationRules {
    /// The labels the default rule tries, in order.
    pub const DEFAULT_CHAIN: [&'static str; 4] = ["service", "job", "app", "namespace"];

    /// Why these rules cannot be used, if they cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.group_by.len() > 10 {
            return Err("group_by takes at most 10 labels".into());
        }
        if self
            .group_by
            .iter()
            .any(|l| l.is_empty() || l.len() > 128 || l.chars().any(char::is_control))
        {
            return Err("group_by labels must be 1-128 printable characters".into());
        }
        if !(60..=7 * 24 * 3600).contains(&self.window_secs) {
            return Err("window_secs must be between 60 and 604800".into());
        }
        if !(1..=10_000).contains(&self.min_signals) {
            return Err("min_signals must be between 1 and 10000".into());
        }
        if self.reopen_window_secs > 30 * 24 * 3600 {
            return Err("reopen_window_secs must be at most 2592000".into());
        }
        if self.resolve_grace_secs > 24 * 3600 {
            return Err("resolve_grace_secs must be at most 86400".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WindowKind {
    #[default]
    Rolling,
    Fixed,
}

/// A tenant's correlation rules were set; they apply to signals the correlator decides on after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CorrelationRulesSet {
    pub rules: CorrelationRules,
    pub set_by: String,
}

impl EventPayload for CorrelationRulesSet {
    const TYPE: &'static str = "CorrelationRulesSet";
    const VERSION: u32 = 1;
}

/// Where a tenant's hypotheses look for metrics and which model they ask. Secrets never travel
/// in events: a model's API key is named by the tenant secret that holds it
/// (`PUT /v1/settings/secrets/{name}`), sealed in Postgres and sent only to this tenant's model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantIntegrations {
    /// Prometheus base URL for metric evidence.
    #[serde(default)]
    pub prometheus_url: Option<String>,
    /// An OpenAI-compatible model for this tenant's hypotheses.
    #[serde(default)]
    pub llm: Option<TenantLlm>,
    /// The tenant's Slack workspace, for slash commands and notifications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<TenantSlack>,
}

/// A Slack workspace. Its signing secret is a tenant secret, named here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantSlack {
    /// Slack team (workspace) id, e.g. `T0123ABCD`.
    pub team_id: String,
    /// Name of the tenant secret that holds the app's signing secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<String>,
    /// Legacy: an environment variable of the copilot's processes. Honoured only when the
    /// operator lists it in `COPILOT_TENANT_ENV_ALLOW`; use `signing_secret` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret_env: Option<String>,
    /// The channel incidents are posted to, one thread each (a channel id such as `C0123ABCD`,
    /// or `#name`). Without it (or without a bot token), nothing is posted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Name of the tenant secret that holds the app's bot token (`xoxb-…`), sent only to the
    /// operator's Slack Web API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot_token_secret: Option<String>,
    /// Legacy: an environment variable holding the bot token, honoured only when the operator
    /// lists it in `COPILOT_TENANT_ENV_ALLOW`; use `bot_token_secret` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot_token_env: Option<String>,
    /// Quiet mode: only the incident's summary message, kept current; no thread replies.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quiet: bool,
}

impl TenantSlack {
    /// Whether incidents are to be posted: a channel and a bot token are named.
    pub fn notifies(&self) -> bool {
        self.channel.is_some() && (self.bot_token_secret.is_some() || self.bot_token_env.is_some())
    }
}

/// A Slack channel as `chat.postMessage` takes one: an id (`C…`, `G…`) or `#name`.
fn valid_channel(channel: &str) -> bool {
    let id = channel.len() > 1
        && channel.len() <= 32
        && channel.starts_with(['C', 'G'])
        && channel
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    let name = channel.strip_prefix('#').is_some_and(|n| {
        !n.is_empty()
            && n.len() <= 80
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
    });
    id || name
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantLlm {
    /// Base URL including `/v1`.
    pub base_url: String,
    pub model: String,
    /// Milliseconds before the built-in engine answers instead [default: the global setting].
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Name of the tenant secret that holds the API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret: Option<String>,
    /// Legacy: an environment variable of the copilot's processes that holds the API key.
    /// Honoured only when the operator lists it in `COPILOT_TENANT_ENV_ALLOW`; use
    /// `api_key_secret` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
}

fn valid_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://"))
        && url.len() <= 2048
        && url.len() > "https://".len()
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// An environment variable name as the copilot accepts one: A-Z, 0-9 and `_`, not starting
/// with a digit, at most 128 characters.
fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// A reference to a secret: a tenant secret's name, or (legacy) an environment variable.
fn check_secret_ref(field: &str, secret: Option<&str>, env: Option<&str>) -> Result<(), String> {
    if secret.is_some() && env.is_some() {
        return Err(format!("set {field}_secret or {field}_env, not both"));
    }
    if secret.is_some_and(|n| !crate::is_valid_secret_name(n)) {
        return Err(format!(
            "{field}_secret must name a tenant secret (a-z, 0-9, - and _, starting with a letter)"
        ));
    }
    if env.is_some_and(|n| !valid_env_name(n)) {
        return Err(format!(
            "{field}_env must name an environment variable (A-Z, 0-9, _)"
        ));
    }
    Ok(())
}

impl TenantIntegrations {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.prometheus_url
            && !valid_url(url)
        {
            return Err("prometheus_url must be an http(s) URL".into());
        }
        if let Some(llm) = &self.llm {
            if !valid_url(&llm.base_url) {
                return Err("llm.base_url must be an http(s) URL (with /v1)".into());
            }
            if llm.model.trim().is_empty()
                || llm.model.len() > 200
                || llm.model.chars().any(char::is_control)
            {
                return Err("llm.model must be 1-200 characters without control characters".into());
            }
            if llm
                .timeout_ms
                .is_some_and(|t| !(1_000..=300_000).contains(&t))
            {
                return Err("llm.timeout_ms must be between 1000 and 300000".into());
            }
            check_secret_ref(
                "llm.api_key",
                llm.api_key_secret.as_deref(),
                llm.api_key_env.as_deref(),
            )?;
        }
        if let Some(slack) = &self.slack {
            let team_ok = slack.team_id.len() <= 32
                && slack.team_id.starts_with(['T', 'E'])
                && slack.team_id.len() > 1
                && slack
                    .team_id
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
            if !team_ok {
                return Err("slack.team_id must be a Slack team id such as T0123ABCD".into());
            }
            check_secret_ref(
                "slack.signing",
                slack.signing_secret.as_deref(),
                slack.signing_secret_env.as_deref(),
            )?;
            check_secret_ref(
                "slack.bot_token",
                slack.bot_token_secret.as_deref(),
                slack.bot_token_env.as_deref(),
            )?;
            if slack.channel.as_deref().is_some_and(|c| !valid_channel(c)) {
                return Err(
                    "slack.channel must be a channel id such as C0123ABCD or a #name".into(),
                );
            }
        }
        Ok(())
    }

    /// The tenant secrets these settings name.
    pub fn secret_names(&self) -> Vec<&str> {
        let llm = self.llm.as_ref().and_then(|l| l.api_key_secret.as_deref());
        let slack = self.slack.iter().flat_map(|s| {
            [s.signing_secret.as_deref(), s.bot_token_secret.as_deref()]
                .into_iter()
                .flatten()
        });
        llm.into_iter().chain(slack).collect()
    }

    /// The environment variables these settings name (legacy references, which the operator
    /// must allow).
    pub fn env_names(&self) -> Vec<&str> {
        let llm = self.llm.as_ref().and_then(|l| l.api_key_env.as_deref());
        let slack = self.slack.iter().flat_map(|s| {
            [s.signing_secret_env.as_deref(), s.bot_token_env.as_deref()]
                .into_iter()
                .flatten()
        });
        llm.into_iter().chain(slack).collect()
    }

    /// The URLs these settings make the copilot call.
    pub fn urls(&self) -> Vec<(&'static str, &str)> {
        let prometheus = self
            .prometheus_url
            .as_deref()
            .map(|u| ("prometheus_url", u));
        let llm = self
            .llm
            .as_ref()
            .map(|l| ("llm.base_url", l.base_url.as_str()));
        prometheus.into_iter().chain(llm).collect()
    }
}

/// A tenant's integrations were set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TenantIntegrationsSet {
    pub integrations: TenantIntegrations,
    pub set_by: String,
}

impl EventPayload for TenantIntegrationsSet {
    const TYPE: &'static str = "TenantIntegrationsSet";
    const VERSION: u32 = 1;
}

/// The correlator opened an incident for a correlation key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IncidentOpened {
    pub incident_id: Uuid,
    /// The correlation key, e.g. `service=checkout`.
    pub key: String,
    pub title: String,
    pub service: Option<String>,
    pub severity: Severity,
    /// Labels of the signal that opened it.
    pub labels: BTreeMap<String, String>,
    /// The rule in words.
    pub rule: String,
}

impl EventPayload for IncidentOpened {
    const TYPE: &'static str = "IncidentOpened";
    const VERSION: u32 = 1;
}

/// A signal (an alert instance) joined an incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SignalAttached {
    pub incident_id: Uuid,
    pub signal_id: Uuid,
    pub fingerprint: String,
    pub title: String,
    pub severity: Severity,
    pub starts_at: DateTime<Utc>,
    /// The incident's severity after this signal: the highest of its firing signals.
    pub incident_severity: Severity,
    /// Why this signal joined: which rule, which key, which window.
    pub explanation: String,
}

impl EventPayload for SignalAttached {
    const TYPE: &'static str = "SignalAttached";
    const VERSION: u32 = 1;
}

/// An attached alert resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SignalResolved {
    pub incident_id: Uuid,
    pub signal_id: Uuid,
    pub ends_at: Option<DateTime<Utc>>,
    pub incident_severity: Severity,
    /// Attached alerts still firing.
    pub firing_left: u32,
}

impl EventPayload for SignalResolved {
    const TYPE: &'static str = "SignalResolved";
    const VERSION: u32 = 1;
}

/// The incident resolved: by the correlator once every alert had resolved for the grace period,
/// or by a person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IncidentResolved {
    pub incident_id: Uuid,
    pub actor: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl EventPayload for IncidentResolved {
    const TYPE: &'static str = "IncidentResolved";
    const VERSION: u32 = 1;
}

/// A resolved incident was reopened: by a new signal of its key within the reopen window, or by
/// a person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IncidentReopened {
    pub incident_id: Uuid,
    pub actor: String,
    pub reason: String,
    /// The state it reopens into.
    pub to: IncidentState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl EventPayload for IncidentReopened {
    const TYPE: &'static str = "IncidentReopened";
    const VERSION: u32 = 1;
}

/// A person moved the incident along its lifecycle (other than resolving or reopening it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IncidentTransitioned {
    pub incident_id: Uuid,
    pub from: IncidentState,
    pub to: IncidentState,
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl EventPayload for IncidentTransitioned {
    const TYPE: &'static str = "IncidentTransitioned";
    const VERSION: u32 = 1;
}

/// The incident was assigned to someone (or unassigned, with `assignee: null`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IncidentAssigned {
    pub incident_id: Uuid,
    pub assignee: Option<String>,
    pub actor: String,
}

impl EventPayload for IncidentAssigned {
    const TYPE: &'static str = "IncidentAssigned";
    const VERSION: u32 = 1;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IncidentNoteAdded {
    pub incident_id: Uuid,
    pub note_id: Uuid,
    pub text: String,
    pub actor: String,
}

impl EventPayload for IncidentNoteAdded {
    const TYPE: &'static str = "IncidentNoteAdded";
    const VERSION: u32 = 1;
}

/// A deterministic id for something derived from events (an incident, a decision): the first 48
/// bits are `at` in milliseconds, so ids sort by time, the rest blake3 of the parts.
pub fn derived_id(at: DateTime<Utc>, parts: &[&str]) -> Uuid {
    let digest = crate::digest(parts);
    let millis = at.timestamp_millis().clamp(0, (1 << 48) - 1) as u64;
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    bytes[6..].copy_from_slice(&digest.as_bytes()[..10]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_left_out_of_a_settings_body_take_their_defaults() {
        let rules: CorrelationRules = serde_json::from_str(r#"{"min_signals": 3}"#).unwrap();

        assert_eq!(rules.min_signals, 3);
        assert_eq!(rules.window_secs, 1800);
        assert_eq!(rules.window_kind, WindowKind::Rolling);
        assert!(rules.validate().is_ok());
    }

    #[test]
    fn rules_out_of_range_are_refused_with_the_field_named() {
        let rules = CorrelationRules {
            window_secs: 5,
            ..CorrelationRules::default()
        };
        assert!(rules.validate().unwrap_err().contains("window_secs"));
        assert!(serde_json::from_str::<CorrelationRules>(r#"{"windw_secs": 60}"#).is_err());
    }

    #[test]
    fn resolved_incidents_reopen_only_into_investigation_and_reviews_are_final() {
        use IncidentState::*;
        assert!(Resolved.allowed_next().contains(&Investigating));
        assert!(!Detected.allowed_next().contains(&Learned));
        assert!(Learned.allowed_next().is_empty());
        assert_eq!(IncidentState::parse("mitigated"), Some(Mitigated));
        assert_eq!(IncidentState::parse("closed"), None);
    }

    #[test]
    fn integrations_take_urls_and_secret_names_never_a_key() {
        let ok: TenantIntegrations = serde_json::from_str(
            r#"{"prometheus_url": "http://prom:9090", "llm": {"base_url": "https://api.openai.com/v1", "model": "gpt-4o-mini", "api_key_secret": "openai"}}"#,
        )
        .unwrap();
        assert!(ok.validate().is_ok());
        assert_eq!(ok.secret_names(), ["openai"]);
        // Settings stored before tenant secrets existed still read, and name their variable.
        let legacy: TenantIntegrations = serde_json::from_str(
            r#"{"llm": {"base_url": "https://x/v1", "model": "m", "api_key_env": "ACME_OPENAI_KEY"}, "slack": {"team_id": "T1", "signing_secret_env": "ACME_SLACK"}}"#,
        )
        .unwrap();
        assert_eq!(legacy.env_names(), ["ACME_OPENAI_KEY", "ACME_SLACK"]);
        assert!(
            serde_json::from_str::<TenantIntegrations>(
                r#"{"llm": {"base_url": "https://x/v1", "model": "m", "api_key": "sk-secret"}}"#
            )
            .is_err()
        );
        let bad = |json: &str| {
            serde_json::from_str::<TenantIntegrations>(json)
                .unwrap()
                .validate()
                .is_err()
        };
        assert!(bad(r#"{"prometheus_url": "file:///etc/passwd"}"#));
        assert!(bad(
            r#"{"llm": {"base_url": "https://x/v1", "model": "m", "api_key_env": "sk-abc"}}"#
        ));
        assert!(bad(
            r#"{"llm": {"base_url": "https://x/v1", "model": "m", "timeout_ms": 5}}"#
        ));
        assert!(bad(
            r#"{"llm": {"base_url": "https://x/v1", "model": "m\u0000x"}}"#
        ));
        assert!(bad(
            r#"{"llm": {"base_url": "https://x/v1", "model": "\u001b[31mm"}}"#
        ));
        assert!(bad(
            r#"{"llm": {"base_url": "https://x/v1", "model": "m", "api_key_secret": "Bad Name"}}"#
        ));
        assert!(bad(
            r#"{"llm": {"base_url": "https://x/v1", "model": "m", "api_key_secret": "a", "api_key_env": "A"}}"#
        ));
    }

    #[test]
    fn derived_ids_are_stable_and_sort_by_time() {
        let early: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let late: DateTime<Utc> = "2026-01-02T00:00:00Z".parse().unwrap();
        assert_eq!(derived_id(early, &["a"]), derived_id(early, &["a"]));
        assert!(derived_id(early, &["z"]) < derived_id(late, &["a"]));
    }
}
