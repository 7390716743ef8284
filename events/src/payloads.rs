use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::envelope::EventPayload;

/// Where a signal came from; also the last token of its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SignalSource {
    Alertmanager,
    Grafana,
}

impl SignalSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alertmanager => "alertmanager",
            Self::Grafana => "grafana",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SignalStatus {
    Firing,
    Resolved,
}

impl SignalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Firing => "firing",
            Self::Resolved => "resolved",
        }
    }
}

/// Severity normalised from the alert's `severity` (or `priority`) label, so that `P1`, `page`
/// and `critical` sort together.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Unknown,
    Info,
    Warning,
    Error,
    Critical,
}

impl Severity {
    /// Every severity, least first: its index is its rank.
    pub const ALL: [Self; 5] = [
        Self::Unknown,
        Self::Info,
        Self::Warning,
        Self::Error,
        Self::Critical,
    ];

    /// Every severity's name, most severe first, for messages that list them.
    pub fn names() -> String {
        Self::ALL
            .iter()
            .rev()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The rank stored and sorted on (0 unknown … 4 critical).
    pub fn rank(self) -> i16 {
        self as i16
    }

    /// The severity of a stored rank; ranks out of range are clamped.
    pub fn from_rank(rank: i16) -> Self {
        Self::ALL[rank.clamp(0, 4) as usize]
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Error => "error",
            Self::Critical => "critical",
        }
    }

    /// Derives a severity from a label value as sources and teams spell it.
    pub fn from_label(value: &str) -> Self {
        match value.trim().to_ascii_lowercase().as_str() {
            "critical" | "crit" | "page" | "fatal" | "emergency" | "alert" | "p0" | "p1"
            | "sev0" | "sev1" | "sev-1" | "disaster" => Self::Critical,
            "error" | "err" | "high" | "major" | "p2" | "sev2" | "sev-2" => Self::Error,
            "warning" | "warn" | "medium" | "minor" | "average" | "p3" | "sev3" | "sev-3" => {
                Self::Warning
            }
            "info" | "informational" | "information" | "low" | "notice" | "none" | "p4" | "p5"
            | "sev4" | "sev-4" | "debug" => Self::Info,
            _ => Self::Unknown,
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "unknown" => Self::Unknown,
            "info" => Self::Info,
            "warning" => Self::Warning,
            "error" => Self::Error,
            "critical" => Self::Critical,
            _ => return None,
        })
    }
}

/// One alert instance as one notification reported it. A webhook with n alerts yields n events.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SignalReceived {
    pub source: SignalSource,
    pub status: SignalStatus,
    /// The upstream fingerprint, or blake3 of the sorted label set when the source sent none.
    pub fingerprint: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub starts_at: DateTime<Utc>,
    /// `None` while firing (Alertmanager sends the zero time `0001-01-01T00:00:00Z`).
    pub ends_at: Option<DateTime<Utc>>,
    /// Absolute link back to the alert's source; relative Grafana links are joined with `externalURL`.
    pub generator_url: Option<String>,
    /// The notification's group key, as a string whatever type the source sent.
    pub group_key: Option<String>,
    pub receiver: Option<String>,
    pub severity: Severity,
    pub service: Option<String>,
    pub title: String,
    /// Grafana's evaluated query values (`values`), when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<BTreeMap<String, serde_json::Value>>,
    /// The alert object exactly as received, byte for byte.
    #[schemars(with = "serde_json::Value")]
    pub raw: Box<RawValue>,
}

impl SignalReceived {
    /// The `Nats-Msg-Id` of this notification: tenant, source, fingerprint, status and
    /// `startsAt`, so a re-sent webhook is dropped by the stream while a resolve is not.
    pub fn message_id(&self, tenant: &str) -> String {
        crate::message_id(&[
            tenant,
            self.source.as_str(),
            &self.fingerprint,
            self.status.as_str(),
            &self
                .starts_at
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        ])
    }

    /// The id of the alert instance this notification is about: the same for every
    /// notification of one tenant's fingerprint firing from one `starts_at`, whatever the order
    /// or number of notifications, so replays give the same ids. Laid out like a UUIDv7 (version
    /// 8, custom): the first 48 bits are `starts_at` in milliseconds, the rest blake3 of tenant,
    /// fingerprint and `starts_at`, so ids sort by when the alert started and a B-tree on them
    /// takes new alerts at its right edge.
    pub fn instance_id(&self, tenant: &str) -> Uuid {
        let starts_at = self
            .starts_at
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        crate::incidents::derived_id(
            self.starts_at,
            &["signal", tenant, &self.fingerprint, &starts_at],
        )
    }
}

impl EventPayload for SignalReceived {
    const TYPE: &'static str = "SignalReceived";
    const VERSION: u32 = 1;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TenantCreated {
    pub slug: String,
    pub name: String,
    /// Who created it: `cli`, `up`, or a user id.
    pub created_by: String,
}

impl EventPayload for TenantCreated {
    const TYPE: &'static str = "TenantCreated";
    const VERSION: u32 = 1;
}

/// A webhook token. Only its blake3 hash and a short prefix (to tell tokens apart) are recorded;
/// the token itself is shown once, to whoever issued it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WebhookTokenIssued {
    pub token_id: Uuid,
    /// Hex blake3 hash of the token.
    pub token_hash: String,
    /// The first characters of the token, safe to display.
    pub prefix: String,
    pub issued_by: String,
}

impl EventPayload for WebhookTokenIssued {
    const TYPE: &'static str = "WebhookTokenIssued";
    const VERSION: u32 = 1;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WebhookTokenRevoked {
    pub token_id: Uuid,
    pub revoked_by: String,
    /// When the token stops working; absent means at once. A rotation revokes the old token
    /// some time after issuing the new one, so senders can switch without a gap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_at: Option<DateTime<Utc>>,
}

impl EventPayload for WebhookTokenRevoked {
    const TYPE: &'static str = "WebhookTokenRevoked";
    const VERSION: u32 = 1;
}

/// A role in a tenant, ordered by what it may do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Engineer,
    Admin,
}

impl Role {
    /// The role as the API, tokens and the `users` table spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Engineer => "engineer",
            Self::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Self::Viewer),
            "engineer" => Ok(Self::Engineer),
            "admin" => Ok(Self::Admin),
            other => Err(format!(
                "unknown role {other:?}: expected viewer, engineer or admin"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(fingerprint: &str, starts_at: &str) -> SignalReceived {
        SignalReceived {
            source: SignalSource::Alertmanager,
            status: SignalStatus::Firing,
            fingerprint: fingerprint.into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            starts_at: starts_at.parse().unwrap(),
            ends_at: None,
            generator_url: None,
            group_key: None,
            receiver: None,
            severity: Severity::Unknown,
            service: None,
            title: "t".into(),
            values: None,
            raw: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
        }
    }

    #[test]
    fn instance_ids_are_deterministic_distinct_and_ordered_by_start() {
        let early = signal("a", "2026-11-22T08:00:00Z");
        let late = signal("a", "2026-11-22T09:00:00Z");

        assert_eq!(early.instance_id("t"), early.instance_id("t"));
        assert_ne!(
            early.instance_id("t"),
            early.instance_id("u"),
            "tenants never share an id"
        );
        assert_ne!(
            early.instance_id("t"),
            signal("b", "2026-11-22T08:00:00Z").instance_id("t")
        );
        assert!(early.instance_id("t") < late.instance_id("t"));
        assert!(signal("a", "0001-01-01T00:00:00Z").instance_id("t") < early.instance_id("t"));
    }

    #[test]
    fn severities_are_normalised_from_common_spellings() {
        assert_eq!(Severity::from_label("P1"), Severity::Critical);
        assert_eq!(Severity::from_label("page"), Severity::Critical);
        assert_eq!(Severity::from_label(" Warning "), Severity::Warning);
        assert_eq!(Severity::from_label("high"), Severity::Error);
        assert_eq!(Severity::from_label("low"), Severity::Info);
        assert_eq!(Severity::from_label("whatever"), Severity::Unknown);
        assert!(Severity::Critical > Severity::Warning);
    }
}
