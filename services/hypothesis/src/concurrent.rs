//! What else was burning: the tenant's other incidents open around this one's onset, and how
//! each relates to it. Incidents are grouped by service, so when the cause sits in a database,
//! DNS, a node or a zone, the incident of the service that shows the errors holds none of it;
//! this module recognises dependencies (from the alert names of the kube-prometheus,
//! node-exporter and common exporter mixins, and from labels and words), topology shared with
//! this incident, and words that name the other incident's service, so the evidence and the
//! engines can connect them. Pure: no I/O, so the eval runs it as the service does.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::evidence::{EvidenceInput, SignalFacts};

/// How far from this incident's onset another incident counts as concurrent (either side).
pub const WINDOW_MINUTES: i64 = 15;

/// Another incident of the tenant, open around this one's onset, with its first alerts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConcurrentIncident {
    pub id: Uuid,
    pub title: String,
    pub service: Option<String>,
    pub state: String,
    pub opened_at: DateTime<Utc>,
    /// Its earliest alerts (a handful), which say what it is.
    #[serde(default)]
    pub signals: Vec<SignalFacts>,
}

/// What a service depends on, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DependencyKind {
    Database,
    Cache,
    Dns,
    Queue,
    LoadBalancer,
    Storage,
    Network,
    Node,
    Cluster,
}

impl DependencyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Database => "database",
            Self::Cache => "cache",
            Self::Dns => "DNS server",
            Self::Queue => "queue",
            Self::LoadBalancer => "load balancer",
            Self::Storage => "storage",
            Self::Network => "network",
            Self::Node => "node",
            Self::Cluster => "cluster",
        }
    }

    /// Infrastructure rather than a service other services call.
    pub fn is_infrastructure(self) -> bool {
        matches!(self, Self::Network | Self::Node | Self::Cluster)
    }
}

/// Alert-name prefixes of well-known mixins (lower-cased), by the dependency they describe.
const ALERT_PREFIXES: [(&str, DependencyKind); 44] = [
    ("postgres", DependencyKind::Database),
    ("pg_", DependencyKind::Database),
    ("pgbouncer", DependencyKind::Database),
    ("mysql", DependencyKind::Database),
    ("mariadb", DependencyKind::Database),
    ("mongodb", DependencyKind::Database),
    ("cassandra", DependencyKind::Database),
    ("clickhouse", DependencyKind::Database),
    ("cockroach", DependencyKind::Database),
    ("mssql", DependencyKind::Database),
    ("elasticsearch", DependencyKind::Database),
    ("redis", DependencyKind::Cache),
    ("memcached", DependencyKind::Cache),
    ("coredns", DependencyKind::Dns),
    ("kubedns", DependencyKind::Dns),
    ("dns", DependencyKind::Dns),
    ("kafka", DependencyKind::Queue),
    ("rabbitmq", DependencyKind::Queue),
    ("nats", DependencyKind::Queue),
    ("sqs", DependencyKind::Queue),
    ("pulsar", DependencyKind::Queue),
    ("haproxy", DependencyKind::LoadBalancer),
    ("nginxingress", DependencyKind::LoadBalancer),
    ("envoy", DependencyKind::LoadBalancer),
    ("traefik", DependencyKind::LoadBalancer),
    ("loadbalancer", DependencyKind::LoadBalancer),
    ("ceph", DependencyKind::Storage),
    ("minio", DependencyKind::Storage),
    ("kubepersistentvolume", DependencyKind::Storage),
    ("nfs", DependencyKind::Storage),
    ("nodenetwork", DependencyKind::Network),
    ("blackboxprobe", DependencyKind::Network),
    ("networkpartition", DependencyKind::Network),
    ("kubenodenotready", DependencyKind::Node),
    ("kubenodeunreachable", DependencyKind::Node),
    ("kubeletdown", DependencyKind::Node),
    ("nodedown", DependencyKind::Node),
    ("hostdown", DependencyKind::Node),
    ("node", DependencyKind::Node),
    ("kubeapidown", DependencyKind::Cluster),
    ("kubeapierrorbudgetburn", DependencyKind::Cluster),
    ("kubecontrollermanagerdown", DependencyKind::Cluster),
    ("kubeschedulerdown", DependencyKind::Cluster),
    ("etcd", DependencyKind::Cluster),
];

/// Words in a service or job name that say what it is.
const NAME_WORDS: [(&str, DependencyKind); 16] = [
    ("postgres", DependencyKind::Database),
    ("pgbouncer", DependencyKind::Database),
    ("mysql", DependencyKind::Database),
    ("mongo", DependencyKind::Database),
    ("-db", DependencyKind::Database),
    ("database", DependencyKind::Database),
    ("redis", DependencyKind::Cache),
    ("memcached", DependencyKind::Cache),
    ("coredns", DependencyKind::Dns),
    ("kube-dns", DependencyKind::Dns),
    ("kafka", DependencyKind::Queue),
    ("rabbitmq", DependencyKind::Queue),
    ("haproxy", DependencyKind::LoadBalancer),
    ("ingress", DependencyKind::LoadBalancer),
    ("ceph", DependencyKind::Storage),
    ("etcd", DependencyKind::Cluster),
];

/// Phrases in an error message that point at a dependency of a kind: what a client says when
/// its database is full, its resolver fails or its peer refuses it.
pub const SYMPTOM_PHRASES: [(&str, DependencyKind); 14] = [
    ("too many clients", DependencyKind::Database),
    ("too many connections", DependencyKind::Database),
    ("remaining connection slots", DependencyKind::Database),
    ("connection pool", DependencyKind::Database),
    ("deadlock", DependencyKind::Database),
    ("lookup ", DependencyKind::Dns),
    ("no such host", DependencyKind::Dns),
    ("servfail", DependencyKind::Dns),
    ("server misbehaving", DependencyKind::Dns),
    ("name resolution", DependencyKind::Dns),
    ("connection refused", DependencyKind::Network),
    ("connection reset", DependencyKind::Network),
    ("no route to host", DependencyKind::Network),
    ("broker not available", DependencyKind::Queue),
];

/// Labels that say where something runs, most specific first. `cluster` and `region` are
/// shared by whole fleets, so they count only when several services share them.
pub const TOPOLOGY_LABELS: [&str; 8] = [
    "node",
    "kubernetes_node",
    "host",
    "instance",
    "zone",
    "availability_zone",
    "cluster",
    "region",
];

/// Whether a shared value of this label is specific enough to tie two services together.
pub fn specific(label: &str) -> bool {
    !matches!(label, "cluster" | "region")
}

/// The host of an `instance` label (`10.0.3.4:9100` → `10.0.3.4`); other labels as they are.
fn topology_value(label: &str, value: &str) -> String {
    if label == "instance" {
        value
            .rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(value, |(host, _)| host)
            .to_owned()
    } else {
        value.to_owned()
    }
}

/// The text an alert speaks: its name and its summary, description and message, lower-cased.
pub fn text_of(s: &SignalFacts) -> String {
    let mut text = s.alertname.to_lowercase();
    for key in ["summary", "description", "message", "title"] {
        if let Some(v) = s.annotations.get(key) {
            text.push(' ');
            text.push_str(&v.to_lowercase());
        }
    }
    text
}

/// The dependency an alert describes, from its name (mixins), its job or service name.
pub fn dependency_of_signal(s: &SignalFacts) -> Option<DependencyKind> {
    let name = s.alertname.to_lowercase();
    ALERT_PREFIXES
        .iter()
        .find(|(prefix, _)| name.starts_with(prefix))
        .map(|(_, kind)| *kind)
        .or_else(|| {
            [
                s.service.as_deref(),
                s.labels.get("job").map(String::as_str),
            ]
            .into_iter()
            .flatten()
            .find_map(dependency_of_name)
        })
}

/// The dependency a service or job name says it is (`postgres-main`, `coredns`).
pub fn dependency_of_name(name: &str) -> Option<DependencyKind> {
    let name = name.to_lowercase();
    NAME_WORDS
        .iter()
        .find(|(word, _)| name.contains(word))
        .map(|(_, kind)| *kind)
}

/// The dependency an incident is, if its alerts or service say so.
pub fn dependency_of(c: &ConcurrentIncident) -> Option<DependencyKind> {
    c.signals
        .iter()
        .find_map(dependency_of_signal)
        .or_else(|| c.service.as_deref().and_then(dependency_of_name))
}

/// Symptom phrases (and their kinds) in this incident's alerts.
pub fn symptoms(signals: &[SignalFacts]) -> BTreeSet<(&'static str, DependencyKind)> {
    let texts: Vec<String> = signals.iter().map(text_of).collect();
    SYMPTOM_PHRASES
        .iter()
        .filter(|(phrase, _)| texts.iter().any(|t| t.contains(phrase)))
        .copied()
        .collect()
}

/// Topology (label, value) pairs of a set of alerts.
pub fn topology(signals: &[SignalFacts]) -> BTreeSet<(&'static str, String)> {
    let mut out = BTreeSet::new();
    for s in signals {
        for label in TOPOLOGY_LABELS {
            if let Some(v) = s.labels.get(label).filter(|v| !v.is_empty()) {
                out.insert((label, topology_value(label, v)));
            }
        }
    }
    out
}

/// How another incident relates to this one.
#[derive(Debug, Clone)]
pub struct Relation<'a> {
    pub incident: &'a ConcurrentIncident,
    /// Seconds from this incident's onset to the other's (negative: it began first).
    pub offset_secs: i64,
    pub dependency: Option<DependencyKind>,
    /// Topology values both share.
    pub shared: Vec<(&'static str, String)>,
    /// This incident's alerts name the other's service (or a host of it).
    pub named: bool,
    /// Symptom phrases in this incident that point at the other's kind of dependency.
    pub symptoms: Vec<&'static str>,
}

impl Relation<'_> {
    /// It began before this one (or within a minute after: alerts of a cause and its effects
    /// fire close together).
    pub fn first(&self) -> bool {
        self.offset_secs <= 60
    }

    /// Whether anything ties it to this incident beyond happening at the same time.
    pub fn tied(&self) -> bool {
        self.named
            || !self.symptoms.is_empty()
            || self.shared.iter().any(|(label, _)| specific(label))
    }

    /// Why it relates, in plain words, for evidence and for `GET /v1/incidents/{id}`.
    pub fn reason(&self) -> String {
        let mut parts = Vec::new();
        let minutes = self.offset_secs.abs() / 60;
        parts.push(match self.offset_secs {
            s if s < -30 => format!("began {}m before this one", minutes.max(1)),
            s if s > 30 => format!("began {}m after this one", minutes.max(1)),
            _ => "began at the same time".to_owned(),
        });
        if let Some(kind) = self.dependency {
            parts.push(format!("is a {}", kind.as_str()));
        }
        if self.named {
            parts.push("is named in this incident's alerts".to_owned());
        }
        if !self.symptoms.is_empty() {
            parts.push(format!(
                "matches the symptoms \"{}\"",
                self.symptoms.join("\", \"")
            ));
        }
        if !self.shared.is_empty() {
            let shared: Vec<String> = self
                .shared
                .iter()
                .map(|(l, v)| format!("{l}={v}"))
                .collect();
            parts.push(format!("shares {}", shared.join(", ")));
        }
        parts.join("; ")
    }

    /// How much it probably says about this incident's cause (0-1), for ranking evidence.
    pub fn relevance(&self) -> f64 {
        let mut r = 0.3;
        if self.first() {
            r += 0.1;
        }
        if self.dependency.is_some() {
            r += 0.15;
        }
        if self.named {
            r += 0.2;
        }
        if !self.symptoms.is_empty() {
            r += 0.1;
        }
        r += 0.08
            * self
                .shared
                .iter()
                .filter(|(l, _)| specific(l))
                .count()
                .min(2) as f64;
        r.min(0.92)
    }
}

/// This incident's onset: its earliest alert, or when it opened.
pub fn onset(input: &EvidenceInput) -> DateTime<Utc> {
    input
        .signals
        .iter()
        .map(|s| s.starts_at)
        .min()
        .unwrap_or(input.incident.opened_at)
}

/// How every concurrent incident relates to this one, most relevant first.
pub fn relate(input: &EvidenceInput) -> Vec<Relation<'_>> {
    let onset = onset(input);
    let ours = topology(&input.signals);
    let texts: Vec<String> = input.signals.iter().map(text_of).collect();
    let dependency_labels: BTreeSet<String> = input
        .signals
        .iter()
        .flat_map(|s| {
            crate::builtin::DEPENDENCY_LABELS
                .iter()
                .filter_map(|l| s.labels.get(*l).map(|v| v.to_lowercase()))
        })
        .collect();
    let our_symptoms = symptoms(&input.signals);
    let mut out: Vec<Relation<'_>> = input
        .concurrent
        .iter()
        .filter(|c| c.id != input.incident.id)
        // Incidents open when they are decided, alerts start when their senders say: windows
        // compare incidents with incidents, order compares alerts with alerts.
        .filter(|c| c.opened_at <= input.incident.opened_at + Duration::minutes(WINDOW_MINUTES))
        .map(|c| {
            let their_onset = c
                .signals
                .iter()
                .map(|s| s.starts_at)
                .min()
                .unwrap_or(c.opened_at);
            let theirs = topology(&c.signals);
            let shared: Vec<(&'static str, String)> = ours.intersection(&theirs).cloned().collect();
            let dependency = dependency_of(c);
            let names: Vec<String> = c
                .service
                .iter()
                .cloned()
                .chain(
                    theirs
                        .iter()
                        .filter(|(l, _)| matches!(*l, "host" | "instance"))
                        .map(|(_, v)| v.clone()),
                )
                .map(|n| n.to_lowercase())
                .filter(|n| n.len() >= 4)
                .collect();
            let named = names.iter().any(|n| {
                dependency_labels.contains(n) || texts.iter().any(|t| t.contains(n.as_str()))
            });
            let symptoms = our_symptoms
                .iter()
                .filter(|(_, kind)| {
                    dependency == Some(*kind)
                        || (*kind == DependencyKind::Network
                            && dependency.is_some_and(|d| d != DependencyKind::Cluster))
                })
                .map(|(phrase, _)| phrase.trim())
                .collect();
            Relation {
                incident: c,
                offset_secs: (their_onset - onset).num_seconds(),
                dependency,
                shared,
                named,
                symptoms,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.relevance()
            .total_cmp(&a.relevance())
            .then_with(|| a.offset_secs.cmp(&b.offset_secs))
            .then_with(|| a.incident.id.cmp(&b.incident.id))
    });
    out
}

/// Targets of one job that are all down at once, by job: `InstanceDown`/`TargetDown` alerts of
/// two or more instances.
pub fn targets_down(signals: &[SignalFacts]) -> BTreeMap<String, Vec<&SignalFacts>> {
    let mut by_job: BTreeMap<String, Vec<&SignalFacts>> = BTreeMap::new();
    for s in signals.iter().filter(|s| s.status == "firing") {
        let name = s.alertname.to_lowercase();
        if matches!(
            name.as_str(),
            "instancedown" | "targetdown" | "upmetricdown"
        ) && let Some(job) = s.labels.get("job")
        {
            by_job.entry(job.clone()).or_default().push(s);
        }
    }
    by_job.retain(|_, v| {
        let instances: BTreeSet<&str> = v
            .iter()
            .filter_map(|s| s.labels.get("instance").map(String::as_str))
            .collect();
        instances.len() >= 2
    });
    by_job
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::IncidentFacts;

    fn signal(
        alertname: &str,
        service: &str,
        at: &str,
        labels: &[(&str, &str)],
        text: &str,
    ) -> SignalFacts {
        SignalFacts {
            id: Uuid::new_v4(),
            alertname: alertname.into(),
            service: Some(service.into()),
            severity: "critical".into(),
            status: "firing".into(),
            starts_at: at.parse().unwrap(),
            ends_at: None,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: [("description".to_owned(), text.to_owned())].into(),
            values: None,
        }
    }

    fn input(ours: Vec<SignalFacts>, others: Vec<(&str, Vec<SignalFacts>)>) -> EvidenceInput {
        EvidenceInput {
            incident: IncidentFacts {
                id: Uuid::nil(),
                title: "t".into(),
                service: Some("checkout".into()),
                key: "service=checkout".into(),
                opened_at: ours[0].starts_at,
            },
            signals: ours,
            similar: vec![],
            metrics: vec![],
            concurrent: others
                .into_iter()
                .map(|(service, signals)| ConcurrentIncident {
                    id: Uuid::new_v4(),
                    title: format!("{} on {service}", signals[0].alertname),
                    service: Some(service.into()),
                    state: "open".into(),
                    opened_at: signals[0].starts_at,
                    signals,
                })
                .collect(),
        }
    }

    #[test]
    fn mixin_alert_names_and_service_names_say_what_a_dependency_is() {
        let at = "2026-11-22T08:00:00Z";
        let kind =
            |name: &str, service: &str| dependency_of_signal(&signal(name, service, at, &[], ""));

        assert_eq!(kind("CoreDNSErrorsHigh", "x"), Some(DependencyKind::Dns));
        assert_eq!(
            kind("PostgresqlTooManyConnections", "x"),
            Some(DependencyKind::Database)
        );
        assert_eq!(kind("KubeNodeNotReady", "x"), Some(DependencyKind::Node));
        assert_eq!(
            kind("HighErrorRate", "redis-sessions"),
            Some(DependencyKind::Cache)
        );
        assert_eq!(kind("HighErrorRate", "checkout"), None);
    }

    #[test]
    fn a_named_dependency_that_began_first_is_tied_and_ranked_above_a_bystander() {
        let ours = vec![signal(
            "HighErrorRate",
            "checkout",
            "2026-11-22T08:02:00Z",
            &[("cluster", "prod")],
            "pq: sorry, too many clients already (orders-db)",
        )];
        let db = vec![signal(
            "PostgresqlDown",
            "orders-db",
            "2026-11-22T08:00:00Z",
            &[],
            "",
        )];
        let bystander = vec![signal(
            "HighErrorRate",
            "billing",
            "2026-11-22T08:01:00Z",
            &[("cluster", "prod")],
            "NullPointerException",
        )];
        let input = input(ours, vec![("billing", bystander), ("orders-db", db)]);

        let relations = relate(&input);

        assert_eq!(relations[0].incident.service.as_deref(), Some("orders-db"));
        assert!(relations[0].named && relations[0].first() && relations[0].tied());
        assert_eq!(relations[0].symptoms, vec!["too many clients"]);
        assert_eq!(relations[0].offset_secs, -120);
        let billing = &relations[1];
        assert_eq!(billing.shared, vec![("cluster", "prod".to_owned())]);
        assert!(!billing.tied(), "a fleet-wide cluster label ties nothing");
        assert!(relations[0].relevance() > billing.relevance());
    }

    #[test]
    fn an_instance_label_is_compared_by_its_host_and_a_late_incident_is_left_out() {
        let ours = vec![signal(
            "HighErrorRate",
            "api",
            "2026-11-22T08:00:00Z",
            &[("instance", "10.0.0.7:8080")],
            "",
        )];
        let same_host = vec![signal(
            "HighErrorRate",
            "worker",
            "2026-11-22T08:01:00Z",
            &[("instance", "10.0.0.7:9100")],
            "",
        )];
        let much_later = vec![signal(
            "HighErrorRate",
            "search",
            "2026-11-22T09:00:00Z",
            &[],
            "",
        )];
        let input = input(ours, vec![("worker", same_host), ("search", much_later)]);

        let relations = relate(&input);

        assert_eq!(relations.len(), 1);
        assert_eq!(
            relations[0].shared,
            vec![("instance", "10.0.0.7".to_owned())]
        );
        assert!(relations[0].tied());
    }

    #[test]
    fn one_target_down_is_not_a_job_wide_failure_but_two_are() {
        let at = "2026-11-22T08:00:00Z";
        let down = |instance: &str| {
            signal(
                "InstanceDown",
                "node",
                at,
                &[("job", "node"), ("instance", instance)],
                "",
            )
        };

        assert!(targets_down(&[down("a:9100")]).is_empty());
        assert!(targets_down(&[down("a:9100"), down("a:9100")]).is_empty());
        assert_eq!(
            targets_down(&[down("a:9100"), down("b:9100")])["node"].len(),
            2
        );
    }
}
