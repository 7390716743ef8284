//! Evidence: the facts an experienced SRE would look at, each with a stable id a hypothesis can
//! cite, ranked by relevance and cut to a token budget (the least relevant go first, and how
//! many went is recorded).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use copilot_events::{Evidence, EvidenceKind};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::concurrent::{self, ConcurrentIncident};

/// The incident the evidence is about.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IncidentFacts {
    pub id: Uuid,
    pub title: String,
    pub service: Option<String>,
    pub key: String,
    pub opened_at: DateTime<Utc>,
}

/// One alert of the incident.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignalFacts {
    pub id: Uuid,
    pub alertname: String,
    pub service: Option<String>,
    pub severity: String,
    pub status: String,
    pub starts_at: DateTime<Utc>,
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub values: Option<serde_json::Value>,
}

/// A past incident of the tenant that looks like this one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PastIncident {
    pub id: Uuid,
    pub title: String,
    pub service: Option<String>,
    pub state: String,
    pub opened_at: DateTime<Utc>,
    /// How it was resolved: its notes and the hypothesis people confirmed, if any.
    #[serde(default)]
    pub resolution: Option<String>,
    /// 0-1.
    pub similarity: f64,
}

/// A metric, already summarised to numbers and a trend.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricSummary {
    /// The template's name: `error_ratio`, `latency_p99`, `saturation`, `restarts`, `rollouts`.
    pub name: String,
    pub service: String,
    pub query: String,
    pub first: f64,
    pub last: f64,
    pub min: f64,
    pub max: f64,
    /// When the value first rose above its starting level by a fifth or more, if it did.
    #[serde(default)]
    pub rose_at: Option<DateTime<Utc>>,
}

impl MetricSummary {
    /// Relative change from first to last.
    pub fn trend(&self) -> f64 {
        if self.first.abs() < f64::EPSILON {
            if self.last.abs() < f64::EPSILON {
                0.0
            } else {
                1.0
            }
        } else {
            (self.last - self.first) / self.first.abs()
        }
    }
}

/// Everything gathered for one incident, before budgeting.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvidenceInput {
    pub incident: IncidentFacts,
    pub signals: Vec<SignalFacts>,
    #[serde(default)]
    pub similar: Vec<PastIncident>,
    #[serde(default)]
    pub metrics: Vec<MetricSummary>,
    /// The tenant's other incidents open around this one's onset (see [`crate::concurrent`]).
    #[serde(default)]
    pub concurrent: Vec<ConcurrentIncident>,
}

/// The evidence an engine is given, most relevant first.
#[derive(Debug, Clone)]
pub struct EvidenceSet {
    pub items: Vec<Evidence>,
    pub left_out: u32,
}

impl EvidenceSet {
    pub fn contains(&self, id: &str) -> bool {
        self.items.iter().any(|e| e.id == id)
    }

    /// blake3 over the snapshot, in order.
    pub fn digest(&self) -> String {
        let bytes = serde_json::to_vec(&self.items).expect("evidence serializes");
        blake3::hash(&bytes).to_hex().to_string()
    }
}

pub fn signal_id(id: Uuid) -> String {
    format!("sig-{}", &id.simple().to_string()[20..])
}

pub fn incident_id(id: Uuid) -> String {
    format!("inc-{}", &id.simple().to_string()[20..])
}

/// Another incident open at the same time (not `inc-`: a past incident may be the same one).
pub fn concurrent_id(id: Uuid) -> String {
    format!("conc-{}", &id.simple().to_string()[20..])
}

pub fn metric_id(m: &MetricSummary) -> String {
    format!("metric-{}-{}", m.name, m.service)
}

pub fn runbook_id(url: &str) -> String {
    format!("runbook-{}", &blake3::hash(url.as_bytes()).to_hex()[..10])
}

fn severity_rank(severity: &str) -> f64 {
    f64::from(
        copilot_events::Severity::parse(severity)
            .unwrap_or(copilot_events::Severity::Unknown)
            .rank(),
    )
}

/// Rough tokens of a text (4 bytes a token, as the usual tokenizers average on English and JSON).
pub fn tokens(text: &str) -> usize {
    text.len().div_ceil(4)
}

fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Turns the gathered facts into evidence items and keeps the most relevant within
/// `budget_tokens`.
pub fn assemble(input: &EvidenceInput, budget_tokens: usize) -> EvidenceSet {
    let mut items = Vec::new();
    let onset = input
        .signals
        .iter()
        .map(|s| s.starts_at)
        .min()
        .unwrap_or(input.incident.opened_at);
    let mut runbooks = BTreeMap::new();
    for s in &input.signals {
        let labels = s
            .labels
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "alertname" | "severity"))
            .map(|(k, v)| format!("{k}={}", clip(v, 120)))
            .collect::<Vec<_>>()
            .join(", ");
        let labels = clip(&labels, 600);
        let annotations = s
            .annotations
            .iter()
            .filter(|(k, _)| !k.starts_with("runbook"))
            .map(|(k, v)| format!("{k}: {}", clip(v, 300)))
            .collect::<Vec<_>>()
            .join("; ");
        let offset = (s.starts_at - onset).num_seconds();
        let mut detail = format!(
            "{} {} alert, started {} (onset{}), {}",
            s.status,
            s.severity,
            s.starts_at.format("%Y-%m-%dT%H:%M:%SZ"),
            if offset == 0 {
                String::new()
            } else {
                format!(" +{offset}s")
            },
            labels
        );
        if !annotations.is_empty() {
            detail.push_str(&format!(". {annotations}"));
        }
        if let Some(values) = &s.values {
            detail.push_str(&format!(". values: {}", clip(&values.to_string(), 200)));
        }
        // The earliest and most severe alerts say most about the cause.
        let earliness = 1.0 / (1.0 + (offset.max(0) as f64) / 300.0);
        items.push(Evidence {
            id: signal_id(s.id),
            kind: EvidenceKind::Signal,
            title: format!(
                "{} on {}",
                s.alertname,
                s.service.as_deref().unwrap_or("(no service)")
            ),
            detail,
            relevance: (0.4 + 0.08 * severity_rank(&s.severity) + 0.28 * earliness).min(1.0),
            incident: None,
        });
        for (k, url) in &s.annotations {
            if k.starts_with("runbook") && url.starts_with("http") {
                runbooks
                    .entry(url.clone())
                    .or_insert_with(|| s.alertname.clone());
            }
        }
    }
    for (url, alertname) in runbooks {
        items.push(Evidence {
            id: runbook_id(&url),
            kind: EvidenceKind::Runbook,
            title: format!("runbook for {alertname}"),
            detail: url,
            relevance: 0.35,
            incident: None,
        });
    }
    for p in &input.similar {
        items.push(Evidence {
            id: incident_id(p.id),
            kind: EvidenceKind::SimilarIncident,
            title: format!("past incident: {}", p.title),
            detail: format!(
                "opened {}, {}, service {}; similarity {:.2}; resolution: {}",
                p.opened_at.format("%Y-%m-%d"),
                p.state,
                p.service.as_deref().unwrap_or("-"),
                p.similarity,
                p.resolution
                    .as_deref()
                    .map(|r| clip(r, 400))
                    .unwrap_or_else(|| "not recorded".into())
            ),
            relevance: (0.3 + 0.6 * p.similarity).min(0.95),
            incident: Some(p.id),
        });
    }
    for m in &input.metrics {
        let trend = m.trend();
        items.push(Evidence {
            id: metric_id(m),
            kind: EvidenceKind::Metric,
            title: format!("{} of {}", m.name, m.service),
            detail: format!(
                "from {:.4} to {:.4} (min {:.4}, max {:.4}, {:+.0}%){}; query {}",
                m.first,
                m.last,
                m.min,
                m.max,
                trend * 100.0,
                m.rose_at
                    .map(|at| format!(", rose at {}", at.format("%H:%M:%SZ")))
                    .unwrap_or_default(),
                m.query
            ),
            relevance: (0.5 + trend.abs().min(1.0) * 0.4).min(0.95),
            incident: None,
        });
    }
    for relation in concurrent::relate(input) {
        let c = relation.incident;
        let alerts = c
            .signals
            .iter()
            .take(3)
            .map(|s| {
                let said = ["summary", "description", "message"]
                    .iter()
                    .find_map(|k| s.annotations.get(*k))
                    .map(|text| format!(": {}", clip(text.trim(), 160)))
                    .unwrap_or_default();
                format!("{} ({}){said}", s.alertname, s.severity)
            })
            .collect::<Vec<_>>()
            .join("; ");
        items.push(Evidence {
            id: concurrent_id(c.id),
            kind: EvidenceKind::ConcurrentIncident,
            title: format!(
                "concurrent incident on {}: {}",
                c.service.as_deref().unwrap_or("(no service)"),
                clip(&c.title, 120)
            ),
            detail: clip(
                &format!(
                    "It {}. Opened {}, {}. Alerts: {}",
                    relation.reason(),
                    c.opened_at.format("%Y-%m-%dT%H:%M:%SZ"),
                    c.state,
                    if alerts.is_empty() {
                        "none loaded".into()
                    } else {
                        alerts
                    }
                ),
                900,
            ),
            relevance: relation.relevance(),
            incident: Some(c.id),
        });
    }
    items.sort_by(|a, b| {
        b.relevance
            .total_cmp(&a.relevance)
            .then_with(|| a.id.cmp(&b.id))
    });
    let mut kept = Vec::new();
    let mut used = 0;
    let mut left_out = 0;
    for item in items {
        let cost = tokens(&item.title) + tokens(&item.detail) + 8;
        if used + cost <= budget_tokens {
            used += cost;
            kept.push(item);
        } else {
            left_out += 1;
        }
    }
    EvidenceSet {
        items: kept,
        left_out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(n: u128, alertname: &str, severity: &str, minute: u32) -> SignalFacts {
        SignalFacts {
            id: Uuid::from_u128(n),
            alertname: alertname.into(),
            service: Some("api".into()),
            severity: severity.into(),
            status: "firing".into(),
            starts_at: format!("2026-11-22T08:{minute:02}:00Z").parse().unwrap(),
            ends_at: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::from([(
                "runbook_url".to_owned(),
                "https://runbooks.example.com/x".to_owned(),
            )]),
            values: None,
        }
    }

    fn input(signals: Vec<SignalFacts>) -> EvidenceInput {
        EvidenceInput {
            incident: IncidentFacts {
                id: Uuid::nil(),
                title: "t".into(),
                service: Some("api".into()),
                key: "service=api".into(),
                opened_at: "2026-11-22T08:00:00Z".parse().unwrap(),
            },
            signals,
            similar: vec![],
            metrics: vec![],
            concurrent: vec![],
        }
    }

    #[test]
    fn a_tight_budget_keeps_the_earliest_most_severe_alerts_and_counts_the_rest() {
        let signals = (0..40)
            .map(|i| {
                signal(
                    i,
                    &format!("Alert{i}"),
                    if i == 0 { "critical" } else { "warning" },
                    (i % 60) as u32,
                )
            })
            .collect();

        let set = assemble(&input(signals), 300);

        assert!(set.items.len() < 40);
        assert_eq!(
            set.items.len() as u32 + set.left_out,
            41,
            "40 alerts and one runbook"
        );
        assert_eq!(set.items[0].id, signal_id(Uuid::from_u128(0)));
        let used: usize = set
            .items
            .iter()
            .map(|e| tokens(&e.title) + tokens(&e.detail) + 8)
            .sum();
        assert!(used <= 300);
    }

    #[test]
    fn evidence_ids_are_stable_and_runbooks_are_listed_once() {
        let a = assemble(
            &input(vec![signal(1, "A", "error", 0), signal(2, "B", "error", 1)]),
            10_000,
        );
        let b = assemble(
            &input(vec![signal(1, "A", "error", 0), signal(2, "B", "error", 1)]),
            10_000,
        );

        assert_eq!(a.digest(), b.digest());
        assert_eq!(
            a.items
                .iter()
                .filter(|e| e.kind == EvidenceKind::Runbook)
                .count(),
            1
        );
    }
}
