//! Parsing of Alertmanager (`webhook_config`, payload versions 4 and 3) and Grafana (contact
//! point "webhook", version 1) notifications into `SignalReceived` payloads. Pure functions,
//! so every upstream fixture is a unit test away.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use copilot_events::{Severity, SignalReceived, SignalSource, SignalStatus};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Why a notification was refused. `Json` is a body that is not JSON at all (400); the rest are
/// JSON that is not a notification we understand (422).
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("body is not valid JSON: {0}")]
    Json(serde_json::Error),
    #[error("body is not a {kind} notification: {error}")]
    Shape {
        kind: &'static str,
        error: serde_json::Error,
    },
    #[error("unsupported {kind} payload version {version:?}{hint}")]
    Version {
        kind: &'static str,
        version: String,
        hint: &'static str,
    },
    #[error("the notification has no alerts")]
    NoAlerts,
    #[error("alert {index}: {reason}")]
    Alert { index: usize, reason: String },
}

/// An Alertmanager or Grafana notification: at least one alert, each with an RFC 3339
/// `startsAt`, and no NUL character in any string. Unknown keys are ignored.
#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(rename = "WebhookNotification")]
pub(crate) struct Notification<'a> {
    /// `4` or `3` (Alertmanager), `1` (Grafana); absent is taken as the route's.
    version: Option<String>,
    /// A string, or (from old senders) a number.
    #[serde(rename = "groupKey")]
    #[schemars(with = "Option<GroupKey>")]
    group_key: Option<serde_json::Value>,
    receiver: Option<String>,
    /// The alerts' status when they carry none.
    #[schemars(with = "Option<Status>")]
    status: Option<String>,
    /// The sender's URL; a relative `generatorURL` is joined with it.
    #[serde(rename = "externalURL")]
    external_url: Option<String>,
    #[serde(borrow)]
    #[schemars(with = "Vec<Alert>", length(min = 1))]
    alerts: Vec<&'a RawValue>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(rename = "WebhookAlert")]
struct Alert {
    /// Absent: the notification's.
    #[schemars(with = "Option<Status>")]
    status: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    /// When the alert started (RFC 3339); with the fingerprint, what makes it one alert instance.
    #[serde(rename = "startsAt")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    starts_at: Option<String>,
    /// RFC 3339; empty, or Go's zero time, while it fires.
    #[serde(rename = "endsAt")]
    ends_at: Option<String>,
    #[serde(rename = "generatorURL")]
    generator_url: Option<String>,
    /// Absent or empty: a hash of the labels.
    fingerprint: Option<String>,
    /// Grafana's evaluated values.
    values: Option<BTreeMap<String, serde_json::Value>>,
}

/// An alert's status (documentation only: parsed as a string, to name a wrong one in a 422).
#[derive(schemars::JsonSchema)]
#[schemars(rename = "WebhookAlertStatus")]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum Status {
    Firing,
    Resolved,
}

/// A group key (documentation only).
#[derive(schemars::JsonSchema)]
#[schemars(rename = "WebhookGroupKey")]
#[serde(untagged)]
#[allow(dead_code)]
enum GroupKey {
    Text(String),
    Number(serde_json::Number),
}

/// Parses one notification body into one payload per alert, in the order received.
pub fn parse(source: SignalSource, body: &[u8]) -> Result<Vec<SignalReceived>, ParseError> {
    let name = source.as_str();
    let value: &RawValue = serde_json::from_slice(body).map_err(ParseError::Json)?;
    let notification: Notification = serde_json::from_str(value.get())
        .map_err(|error| ParseError::Shape { kind: name, error })?;
    check_version(source, notification.version.as_deref())?;
    if notification.alerts.is_empty() {
        return Err(ParseError::NoAlerts);
    }
    let group_key = notification.group_key.as_ref().and_then(|key| match key {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    });
    let default_status = notification.status.as_deref();
    notification
        .alerts
        .iter()
        .enumerate()
        .map(|(index, raw)| {
            let alert: Alert = serde_json::from_str(raw.get()).map_err(|e| ParseError::Alert {
                index,
                reason: e.to_string(),
            })?;
            signal(
                source,
                alert,
                raw,
                default_status,
                &notification,
                group_key.clone(),
            )
            .map_err(|reason| ParseError::Alert { index, reason })
        })
        .collect()
}

fn check_version(source: SignalSource, version: Option<&str>) -> Result<(), ParseError> {
    let (accepted, hint): (&[&str], &str) = match source {
        SignalSource::Alertmanager => (
            &["4", "3"],
            "; this endpoint takes Alertmanager versions 4 and 3 (Grafana's version 1 goes to /v1/webhooks/grafana)",
        ),
        SignalSource::Grafana => (
            &["1"],
            "; this endpoint takes Grafana version 1 (Alertmanager goes to /v1/webhooks/alertmanager)",
        ),
    };
    match version {
        None => Ok(()),
        Some(v) if accepted.contains(&v) => Ok(()),
        Some(v) => Err(ParseError::Version {
            kind: source.as_str(),
            version: v.to_owned(),
            hint,
        }),
    }
}

fn signal(
    source: SignalSource,
    alert: Alert,
    raw: &RawValue,
    default_status: Option<&str>,
    notification: &Notification,
    group_key: Option<String>,
) -> Result<SignalReceived, String> {
    let status = match alert.status.as_deref().or(default_status) {
        Some("firing") | None => SignalStatus::Firing,
        Some("resolved") => SignalStatus::Resolved,
        Some(other) => {
            return Err(format!(
                "status {other:?} is neither \"firing\" nor \"resolved\""
            ));
        }
    };
    let starts_at = timestamp(alert.starts_at.as_deref().ok_or("startsAt is missing")?)
        .map_err(|e| format!("startsAt: {e}"))?;
    let ends_at = match alert.ends_at.as_deref() {
        None | Some("") => None,
        Some(text) => {
            Some(timestamp(text).map_err(|e| format!("endsAt: {e}"))?).filter(|t| !is_zero_time(t))
        }
    };
    let fingerprint = match alert.fingerprint {
        Some(fp) if !fp.is_empty() => fp,
        _ => label_fingerprint(&alert.labels),
    };
    let generator_url = alert
        .generator_url
        .filter(|url| !url.is_empty())
        .map(|url| absolute_url(&url, notification.external_url.as_deref()));
    let severity = ["severity", "priority", "level"]
        .iter()
        .find_map(|k| alert.labels.get(*k))
        .map(|v| Severity::from_label(v))
        .unwrap_or(Severity::Unknown);
    let service = [
        "service",
        "service_name",
        "app",
        "application",
        "app_kubernetes_io_name",
        "job",
    ]
    .iter()
    .find_map(|k| alert.labels.get(*k).filter(|v| !v.is_empty()))
    .cloned();
    let title = alert
        .annotations
        .get("summary")
        .or_else(|| alert.annotations.get("title"))
        .or_else(|| alert.labels.get("alertname"))
        .filter(|t| !t.is_empty())
        .cloned()
        .unwrap_or_else(|| "untitled alert".to_owned());
    let strings = alert
        .labels
        .iter()
        .chain(alert.annotations.iter())
        .flat_map(|(k, v)| [k, v])
        .chain([&fingerprint])
        .chain(generator_url.iter())
        .chain(group_key.iter())
        .chain(notification.receiver.iter());
    if strings.into_iter().any(|s| s.contains('\0'))
        || alert
            .values
            .as_ref()
            .is_some_and(|v| v.iter().any(|(k, v)| k.contains('\0') || has_nul(v)))
    {
        return Err("contains a NUL character (\\u0000), which cannot be stored".into());
    }
    Ok(SignalReceived {
        source,
        status,
        fingerprint,
        labels: alert.labels,
        annotations: alert.annotations,
        starts_at,
        ends_at,
        generator_url,
        group_key,
        receiver: notification.receiver.clone(),
        severity,
        service,
        title,
        values: alert.values,
        raw: raw.to_owned(),
    })
}

fn has_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(has_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn timestamp(text: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc))
}

/// Go's zero time, which Alertmanager and Grafana send for "not ended".
fn is_zero_time(t: &DateTime<Utc>) -> bool {
    t.timestamp() <= -62_135_596_800
}

/// blake3 of the sorted label set, as 16 hex characters like Alertmanager's own fingerprints.
pub fn label_fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut hasher = blake3::Hasher::new();
    for (name, value) in labels {
        hasher.update(name.as_bytes());
        hasher.update(&[0xff]);
        hasher.update(value.as_bytes());
        hasher.update(&[0xff]);
    }
    hasher.finalize().to_hex()[..16].to_owned()
}

/// Grafana may send a relative `generatorURL` (`?orgId=1`, `/alerting/...`); join it with the
/// notification's `externalURL`.
fn absolute_url(url: &str, base: Option<&str>) -> String {
    if url.contains("://") {
        return url.to_owned();
    }
    let Some(base) = base.filter(|b| !b.is_empty()) else {
        return url.to_owned();
    };
    let base = base.trim_end_matches('/');
    if url.starts_with('/') || url.starts_with('?') || url.starts_with('#') {
        format!("{base}{url}")
    } else {
        format!("{base}/{url}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../../../shared/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
    }

    #[test]
    fn alertmanager_v4_with_fingerprints_keeps_them_and_derives_fields() {
        let signals = parse(
            SignalSource::Alertmanager,
            &fixture("alertmanager-v4-firing-2alerts-oncall.json"),
        )
        .unwrap();

        assert_eq!(signals.len(), 2);
        let first = &signals[0];
        assert_eq!(first.status, SignalStatus::Firing);
        assert!(!first.fingerprint.is_empty());
        assert_eq!(
            first.group_key.as_deref(),
            Some("{}:{alertname=\"InstanceDown\"}")
        );
        assert_eq!(first.ends_at, None, "the zero endsAt means still firing");
        assert_eq!(
            first.generator_url, None,
            "an empty generatorURL is no link"
        );
    }

    #[test]
    fn alertmanager_v3_with_a_numeric_group_key_is_tolerated_without_losing_digits() {
        let signals = parse(
            SignalSource::Alertmanager,
            &fixture("alertmanager-v3-legacy-numeric-groupkey-alerta.json"),
        )
        .unwrap();

        let s = &signals[0];
        assert_eq!(s.group_key.as_deref(), Some("5615590933959184469"));
        assert_eq!(s.severity, Severity::Critical);
        assert_eq!(s.service.as_deref(), Some("System"));
        assert_eq!(s.title, "Connect fail");
        assert_eq!(s.starts_at.to_rfc3339(), "2016-08-01T10:27:08.008+00:00");
    }

    #[test]
    fn alerts_without_status_or_fingerprint_take_the_notification_status_and_a_label_hash() {
        let signals = parse(
            SignalSource::Alertmanager,
            &fixture("alertmanager-v4-firing-1alert-minimal-msteams.json"),
        )
        .unwrap();

        let s = &signals[0];
        assert_eq!(s.status, SignalStatus::Firing);
        assert_eq!(s.fingerprint, label_fingerprint(&s.labels));
        assert_eq!(s.fingerprint.len(), 16);
    }

    #[test]
    fn the_raw_alert_is_kept_byte_for_byte() {
        let body = fixture("alertmanager-v4-firing-1alert-minimal-msteams.json");
        let text = String::from_utf8(body.clone()).unwrap();
        let signals = parse(SignalSource::Alertmanager, &body).unwrap();
        assert!(
            text.contains(signals[0].raw.get()),
            "raw alert must be a verbatim slice of the body"
        );
    }

    #[test]
    fn grafana_relative_generator_urls_are_joined_with_the_external_url() {
        let signals = parse(
            SignalSource::Grafana,
            &fixture("grafana-v1-firing-1alert-grafana12-keep.json"),
        )
        .unwrap();

        let s = &signals[0];
        assert_eq!(
            s.generator_url.as_deref(),
            Some("https://grafana.example.com?orgId=1")
        );
        assert_eq!(s.fingerprint, "c4edaaf9f9f839b0");
        assert_eq!(s.values.as_ref().unwrap()["B"], serde_json::json!(22));
    }

    #[test]
    fn grafana_null_values_and_both_doc_alerts_parse() {
        let one = parse(
            SignalSource::Grafana,
            &fixture("grafana-v1-firing-1alert-alerting-test.json"),
        )
        .unwrap();
        assert_eq!(one[0].values, None);
        let two = parse(
            SignalSource::Grafana,
            &fixture("grafana-v1-firing-2alerts-docs.json"),
        )
        .unwrap();
        assert_eq!(two.len(), 2);
    }

    #[test]
    fn the_label_fingerprint_ignores_label_order_but_not_values() {
        let a: BTreeMap<_, _> = [
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "2".to_owned()),
        ]
        .into();
        let mut b = a.clone();
        assert_eq!(label_fingerprint(&a), label_fingerprint(&b));
        b.insert("b".into(), "3".into());
        assert_ne!(label_fingerprint(&a), label_fingerprint(&b));
    }

    #[test]
    fn wrong_versions_shapes_and_fields_are_refused_with_a_reason() {
        let grafana = fixture("grafana-v1-firing-2alerts-docs.json");
        assert!(matches!(
            parse(SignalSource::Alertmanager, &grafana),
            Err(ParseError::Version { .. })
        ));
        assert!(matches!(
            parse(SignalSource::Alertmanager, b"{\"alerts\": 3}"),
            Err(ParseError::Shape { .. })
        ));
        assert!(matches!(
            parse(SignalSource::Alertmanager, b"{\"alerts\": []}"),
            Err(ParseError::NoAlerts)
        ));
        assert!(matches!(
            parse(
                SignalSource::Alertmanager,
                b"{\"alerts\": [{\"labels\":{}}]}"
            ),
            Err(ParseError::Alert { index: 0, .. })
        ));
        assert!(matches!(
            parse(
                SignalSource::Alertmanager,
                br#"{"alerts": [{"startsAt":"2026-01-01T00:00:00Z","labels":{"a":1}}]}"#
            ),
            Err(ParseError::Alert { .. })
        ));
        assert!(matches!(
            parse(
                SignalSource::Alertmanager,
                br#"{"alerts": [{"startsAt":"yesterday"}]}"#
            ),
            Err(ParseError::Alert { .. })
        ));
        assert!(matches!(
            parse(SignalSource::Alertmanager, b"{\"alerts\": ["),
            Err(ParseError::Json(_))
        ));
    }

    #[test]
    fn nul_characters_which_postgres_cannot_store_are_refused() {
        let label =
            br#"{"alerts": [{"startsAt":"2026-01-01T00:00:00Z","labels":{"a":"x\u0000y"}}]}"#;
        let value =
            br#"{"alerts": [{"startsAt":"2026-01-01T00:00:00Z","values":{"A":["\u0000"]}}]}"#;
        let fine =
            br#"{"alerts": [{"startsAt":"2026-01-01T00:00:00Z","labels":{"a":"x\\u0000y"}}]}"#;

        assert!(matches!(
            parse(SignalSource::Alertmanager, label),
            Err(ParseError::Alert { index: 0, .. })
        ));
        assert!(matches!(
            parse(SignalSource::Grafana, value),
            Err(ParseError::Alert { index: 0, .. })
        ));
        assert!(
            parse(SignalSource::Alertmanager, fine).is_ok(),
            "an escaped backslash is not a NUL"
        );
    }
}
