//! What the API answers: its own response types, built from the store's rows.
//!
//! The store's rows are how the read models are queried; these are the HTTP contract, with the
//! documentation the OpenAPI document carries (`schemas/openapi.json`, `schemas/http/`). A
//! column added to a row reaches no answer until it is added here: each conversion names every
//! field of its row, so a new one does not compile until it is either shown or left out on
//! purpose.
//!
//! The schema names are the ones the document has always used (`TenantView`, `SignalView`…), so
//! clients generated from it keep their names.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use copilot_store as store;
use serde::Serialize;
use uuid::Uuid;

/// Converts a list of rows into their views.
pub(crate) fn all<R, V: From<R>>(rows: Vec<R>) -> Vec<V> {
    rows.into_iter().map(V::from).collect()
}

/// A signal as the API shows it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SignalView {
    pub id: Uuid,
    pub fingerprint: String,
    pub source: String,
    pub status: String,
    pub severity: String,
    pub service: Option<String>,
    pub title: String,
    pub labels: serde_json::Value,
    pub annotations: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<serde_json::Value>,
    pub generator_url: Option<String>,
    pub group_key: Option<String>,
    pub receiver: Option<String>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: Option<DateTime<Utc>>,
    pub first_received_at: DateTime<Utc>,
    pub last_received_at: DateTime<Utc>,
    pub notification_count: i32,
    /// The alert exactly as the source last sent it, byte for byte; only on single-signal reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Value>")]
    pub raw: Option<Box<serde_json::value::RawValue>>,
}

impl From<store::SignalView> for SignalView {
    fn from(row: store::SignalView) -> Self {
        let store::SignalView {
            id,
            fingerprint,
            source,
            status,
            severity,
            service,
            title,
            labels,
            annotations,
            values,
            generator_url,
            group_key,
            receiver,
            starts_at,
            ends_at,
            first_received_at,
            last_received_at,
            notification_count,
            raw,
        } = row;
        Self {
            id,
            fingerprint,
            source,
            status,
            severity,
            service,
            title,
            labels,
            annotations,
            values,
            generator_url,
            group_key,
            receiver,
            starts_at,
            ends_at,
            first_received_at,
            last_received_at,
            notification_count,
            raw,
        }
    }
}

/// An incident as the API lists it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct IncidentSummary {
    pub id: Uuid,
    pub title: String,
    pub service: Option<String>,
    pub key: String,
    pub severity: String,
    pub state: String,
    pub assignee: Option<String>,
    pub labels: serde_json::Value,
    pub signal_count: i32,
    pub firing_count: i32,
    pub reopen_count: i32,
    pub opened_at: DateTime<Utc>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub mitigated_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// The incident's version: pass it back as `If-Match` to make a command fail (409) if
    /// anything changed since it was read.
    pub version: i64,
    /// The correlation rule that opened it, in words.
    pub rule: String,
}

impl From<store::IncidentSummary> for IncidentSummary {
    fn from(row: store::IncidentSummary) -> Self {
        let store::IncidentSummary {
            id,
            title,
            service,
            key,
            severity,
            state,
            assignee,
            labels,
            signal_count,
            firing_count,
            reopen_count,
            opened_at,
            acknowledged_at,
            mitigated_at,
            resolved_at,
            updated_at,
            version,
            rule,
            // Only for ordering and the severity cursor.
            severity_rank: _,
        } = row;
        Self {
            id,
            title,
            service,
            key,
            severity,
            state,
            assignee,
            labels,
            signal_count,
            firing_count,
            reopen_count,
            opened_at,
            acknowledged_at,
            mitigated_at,
            resolved_at,
            updated_at,
            version,
            rule,
        }
    }
}

/// A signal of an incident, with why it joined.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct IncidentSignalView {
    pub signal_id: Uuid,
    pub fingerprint: String,
    pub title: String,
    pub severity: String,
    pub status: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: Option<DateTime<Utc>>,
    pub attached_at: DateTime<Utc>,
    pub explanation: String,
}

impl From<store::IncidentSignalView> for IncidentSignalView {
    fn from(row: store::IncidentSignalView) -> Self {
        let store::IncidentSignalView {
            signal_id,
            fingerprint,
            title,
            severity,
            status,
            starts_at,
            ends_at,
            attached_at,
            explanation,
        } = row;
        Self {
            signal_id,
            fingerprint,
            title,
            severity,
            status,
            starts_at,
            ends_at,
            attached_at,
            explanation,
        }
    }
}

/// A note someone added to an incident.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct IncidentNoteView {
    pub note_id: Uuid,
    pub author: String,
    pub text: String,
    pub created_at: DateTime<Utc>,
}

impl From<store::IncidentNoteView> for IncidentNoteView {
    fn from(row: store::IncidentNoteView) -> Self {
        let store::IncidentNoteView {
            note_id,
            author,
            text,
            created_at,
        } = row;
        Self {
            note_id,
            author,
            text,
            created_at,
        }
    }
}

/// One entry of an incident's timeline.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct TimelineEntry {
    pub event_id: Uuid,
    pub seq: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub actor: String,
    pub request_id: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub payload: serde_json::Value,
}

impl From<store::TimelineEntry> for TimelineEntry {
    fn from(row: store::TimelineEntry) -> Self {
        let store::TimelineEntry {
            event_id,
            seq,
            event_type,
            actor,
            request_id,
            occurred_at,
            payload,
        } = row;
        Self {
            event_id,
            seq,
            event_type,
            actor,
            request_id,
            occurred_at,
            payload,
        }
    }
}

/// `GET /v1/stats`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct IncidentStats {
    /// Incidents not yet resolved, by severity (now, whatever the range).
    pub open_by_severity: BTreeMap<String, i64>,
    /// Of incidents opened in the range:
    pub incidents: i64,
    pub signals: i64,
    /// Signals per incident: how many alerts one incident spared someone.
    pub noise_reduction: Option<f64>,
    /// Mean seconds from opening to the first human action.
    pub mtta_secs: Option<f64>,
    /// Mean seconds from opening to resolution, of those resolved.
    pub mttr_secs: Option<f64>,
}

impl From<store::IncidentStats> for IncidentStats {
    fn from(row: store::IncidentStats) -> Self {
        let store::IncidentStats {
            open_by_severity,
            incidents,
            signals,
            noise_reduction,
            mtta_secs,
            mttr_secs,
        } = row;
        Self {
            open_by_severity,
            incidents,
            signals,
            noise_reduction,
            mtta_secs,
            mttr_secs,
        }
    }
}

/// A hypothesis as the API shows it, with the latest verdict on it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct HypothesisView {
    #[serde(rename = "id")]
    pub hypothesis_id: String,
    pub rank: i32,
    pub cause: String,
    pub component: Option<String>,
    pub title: String,
    pub confidence: f64,
    pub evidence: serde_json::Value,
    pub reasoning: String,
    pub next_step: String,
    /// Since the proposal before: new, strengthened, weakened or unchanged.
    pub change: Option<String>,
    pub verdict: Option<String>,
    pub verdict_by: Option<String>,
}

impl From<store::HypothesisView> for HypothesisView {
    fn from(row: store::HypothesisView) -> Self {
        let store::HypothesisView {
            hypothesis_id,
            rank,
            cause,
            component,
            title,
            confidence,
            evidence,
            reasoning,
            next_step,
            change,
            verdict,
            verdict_by,
        } = row;
        Self {
            hypothesis_id,
            rank,
            cause,
            component,
            title,
            confidence,
            evidence,
            reasoning,
            next_step,
            change,
            verdict,
            verdict_by,
        }
    }
}

/// One proposal with its hypotheses, for `GET /v1/incidents/{id}/hypotheses`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ProposalView {
    pub proposal_id: Uuid,
    pub engine: String,
    pub model: Option<String>,
    pub proposed_at: DateTime<Utc>,
    pub inconclusive: bool,
    /// The whole `HypothesesProposed` event: evidence snapshot, digests, usage, changes.
    pub event: serde_json::Value,
    pub hypotheses: Vec<HypothesisView>,
}

impl From<store::ProposalView> for ProposalView {
    fn from(row: store::ProposalView) -> Self {
        let store::ProposalView {
            proposal_id,
            engine,
            model,
            proposed_at,
            inconclusive,
            event,
            hypotheses,
        } = row;
        Self {
            proposal_id,
            engine,
            model,
            proposed_at,
            inconclusive,
            event,
            hypotheses: all(hypotheses),
        }
    }
}

/// A tenant as administrators see it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct TenantView {
    pub slug: String,
    pub name: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub suspended_at: Option<DateTime<Utc>>,
    pub suspended_by: Option<String>,
    pub suspend_reason: Option<String>,
    /// Webhook tokens that work now or until a scheduled revocation.
    pub active_tokens: i64,
    pub users: i64,
}

impl From<store::TenantView> for TenantView {
    fn from(row: store::TenantView) -> Self {
        let store::TenantView {
            slug,
            name,
            created_by,
            created_at,
            suspended_at,
            suspended_by,
            suspend_reason,
            active_tokens,
            users,
        } = row;
        Self {
            slug,
            name,
            created_by,
            created_at,
            suspended_at,
            suspended_by,
            suspend_reason,
            active_tokens,
            users,
        }
    }
}

/// A webhook token as listed: never its hash.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct TokenView {
    pub token_id: Uuid,
    pub prefix: String,
    pub issued_by: String,
    pub issued_at: DateTime<Utc>,
    /// When it stopped (or will stop) working.
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
    pub active: bool,
}

impl From<store::TokenView> for TokenView {
    fn from(row: store::TokenView) -> Self {
        let store::TokenView {
            token_id,
            prefix,
            issued_by,
            issued_at,
            revoked_at,
            revoked_by,
            active,
        } = row;
        Self {
            token_id,
            prefix,
            issued_by,
            issued_at,
            revoked_at,
            revoked_by,
            active,
        }
    }
}

/// A user of a tenant.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct UserView {
    /// What the user's JWTs carry as `sub`.
    pub user_id: String,
    pub email: String,
    pub display_name: String,
    pub role: String,
    pub slack_user_id: Option<String>,
    pub added_by: String,
    pub added_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<store::UserView> for UserView {
    fn from(row: store::UserView) -> Self {
        let store::UserView {
            user_id,
            email,
            display_name,
            role,
            slack_user_id,
            added_by,
            added_at,
            updated_at,
            // Which incarnation tokens are bound to; checked by the authorization layer, never shown.
            added_seq: _,
        } = row;
        Self {
            user_id,
            email,
            display_name,
            role,
            slack_user_id,
            added_by,
            added_at,
            updated_at,
        }
    }
}

/// What anyone may know of a secret: never its value.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SecretMeta {
    pub name: String,
    pub version: i32,
    pub fingerprint: String,
    /// The only origin the value may be sent to, if it is bound to one.
    pub origin: Option<String>,
    pub set_by: String,
    pub set_at: DateTime<Utc>,
}

impl From<store::SecretMeta> for SecretMeta {
    fn from(row: store::SecretMeta) -> Self {
        let store::SecretMeta {
            name,
            version,
            fingerprint,
            origin,
            set_by,
            set_at,
        } = row;
        Self {
            name,
            version,
            fingerprint,
            origin,
            set_by,
            set_at,
        }
    }
}

/// One command as the tenant's audit log keeps it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct AuditEntry {
    pub event_id: Uuid,
    pub at: DateTime<Utc>,
    pub actor: String,
    /// The event type, e.g. `WebhookTokenRevoked`.
    pub action: String,
    /// What it acted on: `incident:<id>`, `user:<id>`, `token:<id>`, `tenant:<slug>`,
    /// `settings:<name>` or `secret:<name>`.
    pub target: String,
    pub request_id: Option<String>,
    pub source_addr: Option<String>,
    /// What changed: the event's payload, with secrets and hashes left out.
    pub details: serde_json::Value,
}

impl From<store::AuditEntry> for AuditEntry {
    fn from(row: store::AuditEntry) -> Self {
        let store::AuditEntry {
            event_id,
            at,
            actor,
            action,
            target,
            request_id,
            source_addr,
            details,
        } = row;
        Self {
            event_id,
            at,
            actor,
            action,
            target,
            request_id,
            source_addr,
            details,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn at() -> DateTime<Utc> {
        "2026-11-22T08:00:00.123456Z".parse().unwrap()
    }

    #[test]
    fn a_signal_leaves_out_absent_values_and_raw_and_keeps_raw_byte_for_byte() {
        let id = Uuid::nil();
        let row = |values: Option<serde_json::Value>, raw: Option<&str>| store::SignalView {
            id,
            fingerprint: "fp".into(),
            source: "alertmanager".into(),
            status: "firing".into(),
            severity: "critical".into(),
            service: None,
            title: "t".into(),
            labels: json!({}),
            annotations: json!({}),
            values,
            generator_url: None,
            group_key: None,
            receiver: None,
            starts_at: at(),
            ends_at: None,
            first_received_at: at(),
            last_received_at: at(),
            notification_count: 1,
            raw: raw.map(|r| serde_json::value::RawValue::from_string(r.into()).unwrap()),
        };

        let listed = serde_json::to_string(&SignalView::from(row(None, None))).unwrap();
        let read = serde_json::to_string(&SignalView::from(row(
            Some(json!({"B": 1})),
            Some("{ \"z\" : 1,\"a\":[ ] }"),
        )))
        .unwrap();

        let t = "2026-11-22T08:00:00.123456Z";
        let common = format!(
            r#""id":"{id}","fingerprint":"fp","source":"alertmanager","status":"firing","severity":"critical","service":null,"title":"t","labels":{{}},"annotations":{{}}"#
        );
        let times = format!(
            r#""generator_url":null,"group_key":null,"receiver":null,"starts_at":"{t}","ends_at":null,"first_received_at":"{t}","last_received_at":"{t}","notification_count":1"#
        );
        assert_eq!(listed, format!("{{{common},{times}}}"));
        assert_eq!(
            read,
            format!(r#"{{{common},"values":{{"B":1}},{times},"raw":{{ "z" : 1,"a":[ ] }}}}"#)
        );
    }

    #[test]
    fn what_only_the_store_needs_is_never_shown() {
        let user = store::UserView {
            user_id: "frank".into(),
            email: "frank@acme.test".into(),
            display_name: "Frank".into(),
            role: "admin".into(),
            slack_user_id: None,
            added_by: "alice".into(),
            added_at: at(),
            updated_at: at(),
            added_seq: Some(7),
        };
        let incident = store::IncidentSummary {
            id: Uuid::nil(),
            title: "t".into(),
            service: None,
            key: "k".into(),
            severity: "error".into(),
            state: "detected".into(),
            assignee: None,
            labels: json!({}),
            signal_count: 1,
            firing_count: 1,
            reopen_count: 0,
            opened_at: at(),
            acknowledged_at: None,
            mitigated_at: None,
            resolved_at: None,
            updated_at: at(),
            version: 42,
            rule: "r".into(),
            severity_rank: 3,
        };

        let user = serde_json::to_value(UserView::from(user)).unwrap();
        let incident = serde_json::to_value(IncidentSummary::from(incident)).unwrap();

        assert!(user.get("added_seq").is_none());
        assert_eq!(user["user_id"], "frank");
        assert!(incident.get("severity_rank").is_none());
        assert_eq!(incident["version"], 42);
    }

    #[test]
    fn renamed_fields_keep_their_wire_names() {
        let entry = store::TimelineEntry {
            event_id: Uuid::nil(),
            seq: 7,
            event_type: "IncidentOpened".into(),
            actor: "system:correlator".into(),
            request_id: None,
            occurred_at: at(),
            payload: json!({}),
        };
        let hypothesis = store::HypothesisView {
            hypothesis_id: "h1".into(),
            rank: 1,
            cause: "c".into(),
            component: None,
            title: "t".into(),
            confidence: 0.5,
            evidence: json!([]),
            reasoning: "r".into(),
            next_step: "n".into(),
            change: None,
            verdict: None,
            verdict_by: None,
        };

        let entry = serde_json::to_value(TimelineEntry::from(entry)).unwrap();
        let hypothesis = serde_json::to_value(HypothesisView::from(hypothesis)).unwrap();

        assert_eq!(entry["type"], "IncidentOpened");
        assert!(entry.get("event_type").is_none());
        assert_eq!(hypothesis["id"], "h1");
        assert!(hypothesis.get("hypothesis_id").is_none());
    }
}

/// A tenant's integrations as set, and whether they work. `status` is the copilot's, read-only:
/// a body sent back to `PUT /v1/settings/integrations` may carry it, and it is ignored there.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct IntegrationsView {
    pub prometheus_url: Option<String>,
    pub llm: Option<copilot_events::TenantLlm>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slack: Option<copilot_events::TenantSlack>,
    pub status: IntegrationsStatus,
}

impl IntegrationsView {
    pub fn new(
        integrations: copilot_events::TenantIntegrations,
        slack: Option<store::SlackStatus>,
    ) -> Self {
        let copilot_events::TenantIntegrations {
            prometheus_url,
            llm,
            slack: slack_settings,
        } = integrations;
        Self {
            prometheus_url,
            llm,
            slack: slack_settings,
            status: IntegrationsStatus {
                slack: slack.map(SlackStatusView::from),
            },
        }
    }
}

/// Whether the integrations work, as the copilot last found them.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct IntegrationsStatus {
    /// `null` until the copilot has called the tenant's Slack.
    pub slack: Option<SlackStatusView>,
}

/// Whether the tenant's Slack works: its last error (Slack's code, such as `invalid_auth`,
/// `channel_not_found` or `not_in_channel`, or what else went wrong) and its last success.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SlackStatusView {
    /// No error since the last call that worked.
    pub working: bool,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub errors_total: i64,
    pub last_ok_at: Option<DateTime<Utc>>,
}

impl From<store::SlackStatus> for SlackStatusView {
    fn from(row: store::SlackStatus) -> Self {
        let store::SlackStatus {
            last_error,
            last_error_at,
            errors_total,
            last_ok_at,
        } = row;
        Self {
            working: match (last_error_at, last_ok_at) {
                (None, _) => true,
                (Some(error), Some(ok)) => ok > error,
                (Some(_), None) => false,
            },
            last_error,
            last_error_at,
            errors_total,
            last_ok_at,
        }
    }
}

/// The body of `PUT /v1/settings/integrations`: the integrations, with any `status` a client
/// read from `GET` and sent back dropped (it is the copilot's, not a setting).
#[derive(Debug, Clone, schemars::JsonSchema)]
#[schemars(transparent)]
pub struct IntegrationsInput(pub copilot_events::TenantIntegrations);

impl<'de> serde::Deserialize<'de> for IntegrationsInput {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut body = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        body.remove("status");
        serde_json::from_value(serde_json::Value::Object(body))
            .map(Self)
            .map_err(serde::de::Error::custom)
    }
}
