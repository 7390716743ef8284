//! The built-in engine: deterministic rules over the same evidence the model would see. It is
//! what runs out of the box, and what answers when the model fails or times out. Each rule reads
//! what an SRE would look for first (a rollout just before onset, a dependency several services
//! share, saturation before the errors, crash loops, a failing node, an expiry, a past incident
//! that looks the same) and cites only evidence that was given.

use std::collections::{BTreeMap, BTreeSet};

use chrono::Duration;
use copilot_events::{CauseKind, Hypothesis};

use crate::{
    concurrent::{self, DependencyKind, Relation},
    evidence::{self, EvidenceInput, EvidenceSet, SignalFacts},
    trust::hypothesis_id,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Trait {
    Rollout,
    Saturation,
    Errors,
    Crash,
    Infra,
    Expiry,
    Dependency,
}

const WORDS: [(Trait, &[&str]); 7] = [
    (
        Trait::Rollout,
        &[
            "deploy",
            "rollout",
            "roll out",
            "release",
            "replicasmismatch",
            "new version",
            "configreload",
            "config change",
            "canary",
            "generationmismatch",
            "image changed",
        ],
    ),
    (
        Trait::Saturation,
        &[
            "cpu",
            "memory",
            "disk",
            "saturat",
            "throttl",
            "filedescriptor",
            "file descriptor",
            "pool exhausted",
            "connectionpool",
            "too many connections",
            "highload",
            "inode",
            "swap",
            "heap",
            "queue full",
            "diskfull",
            "fillingup",
            "filling up",
        ],
    ),
    (
        Trait::Errors,
        &[
            "error",
            "5xx",
            "latency",
            "slow",
            "availability",
            "slo",
            "burn",
            "timeout",
            "apdex",
            "failure",
            "unavailable",
            "failing",
        ],
    ),
    (
        Trait::Crash,
        &[
            "crashloop",
            "crash loop",
            "restart",
            "oomkill",
            "oom kill",
            "terminated",
            "backoff",
        ],
    ),
    (
        Trait::Infra,
        &[
            "nodedown",
            "node down",
            "nodenotready",
            "node not ready",
            "hostdown",
            "host down",
            "unreachable",
            "network",
            "packet",
            "dns",
            "zone",
            "kubelet",
            "nodeunreachable",
        ],
    ),
    (
        Trait::Expiry,
        &["cert", "ssl", "tls", "expir", "credential", "quota"],
    ),
    (
        Trait::Dependency,
        &[
            "database",
            "postgres",
            "mysql",
            "redis",
            "kafka",
            "rabbitmq",
            "upstream",
            "dependency",
            "connection refused",
            "memcached",
            "elasticsearch",
            "dbdown",
        ],
    ),
];

/// Labels that name what a service depends on.
pub const DEPENDENCY_LABELS: [&str; 10] = [
    "dependency",
    "upstream",
    "peer_service",
    "db",
    "database",
    "datastore",
    "backend",
    "target_service",
    "destination_service",
    "downstream",
];

/// Labels that name where a service runs.
const PLACEMENT_LABELS: [&str; 5] = [
    "node",
    "host",
    "zone",
    "availability_zone",
    "kubernetes_node",
];

fn traits(s: &SignalFacts) -> BTreeSet<Trait> {
    let mut text = s.alertname.to_lowercase();
    for key in ["summary", "description", "message"] {
        if let Some(v) = s.annotations.get(key) {
            text.push(' ');
            text.push_str(&v.to_lowercase());
        }
    }
    WORDS
        .iter()
        .filter(|(_, words)| words.iter().any(|w| text.contains(w)))
        .map(|(t, _)| *t)
        .collect()
}

/// Only the ids of `signals` that are in the evidence the engine was given.
fn cite<'a>(set: &EvidenceSet, signals: impl IntoIterator<Item = &'a SignalFacts>) -> Vec<String> {
    signals
        .into_iter()
        .map(|s| evidence::signal_id(s.id))
        .filter(|id| set.contains(id))
        .take(6)
        .collect()
}

struct Candidate {
    cause: CauseKind,
    component: Option<String>,
    score: f64,
    evidence: Vec<String>,
    title: String,
    reasoning: String,
    next_step: String,
}

impl Candidate {
    fn into_hypothesis(self) -> Hypothesis {
        Hypothesis {
            id: hypothesis_id(self.cause, self.component.as_deref()),
            cause: self.cause,
            component: self.component,
            title: self.title,
            confidence: self.score,
            evidence: self.evidence,
            reasoning: self.reasoning,
            next_step: self.next_step,
        }
    }
}

fn service_of(s: &SignalFacts) -> String {
    s.service
        .clone()
        .or_else(|| s.labels.get("job").cloned())
        .unwrap_or_else(|| "unknown".into())
}

/// Ranked candidate hypotheses (before the trust rules) and the confidence to keep in reserve.
pub fn propose(input: &EvidenceInput, set: &EvidenceSet) -> (Vec<Hypothesis>, f64) {
    let tagged: Vec<(&SignalFacts, BTreeSet<Trait>)> =
        input.signals.iter().map(|s| (s, traits(s))).collect();
    let with = |t: Trait| -> Vec<&SignalFacts> {
        let mut v: Vec<&SignalFacts> = tagged
            .iter()
            .filter(|(_, ts)| ts.contains(&t))
            .map(|(s, _)| *s)
            .collect();
        v.sort_by_key(|s| (s.starts_at, s.id));
        v
    };
    let earliest = |v: &[&SignalFacts]| v.iter().map(|s| s.starts_at).min();
    let errors = with(Trait::Errors);
    let services: BTreeSet<String> = input.signals.iter().map(service_of).collect();
    let mut out: Vec<Candidate> = Vec::new();

    // A rollout shortly before onset.
    let rollouts = with(Trait::Rollout);
    let others: Vec<&SignalFacts> = input
        .signals
        .iter()
        .filter(|s| !rollouts.iter().any(|r| r.id == s.id))
        .collect();
    if let Some(first) = rollouts.first() {
        let before =
            earliest(&others).is_none_or(|onset| first.starts_at <= onset + Duration::seconds(60));
        let mut cited = cite(set, rollouts.iter().copied());
        cited.extend(cite(set, errors.iter().copied().take(2)));
        out.push(Candidate {
            cause: CauseKind::Rollout,
            component: Some(service_of(first)),
            score: if before { 0.8 } else { 0.4 },
            evidence: cited,
            title: format!("A rollout of {} {} the symptoms", service_of(first), if before { "shortly before" } else { "around" }),
            reasoning: format!(
                "{} fired at {}{}",
                first.alertname,
                first.starts_at.format("%H:%M:%SZ"),
                if before { ", before the other alerts began" } else { ", after the first symptoms" }
            ),
            next_step: format!(
                "Compare the release time of {} with the onset; roll it back or diff the release and watch whether the errors stop",
                service_of(first)
            ),
        });
    }
    for m in input
        .metrics
        .iter()
        .filter(|m| m.name == "rollouts" && m.max > 0.0)
    {
        let id = evidence::metric_id(m);
        if set.contains(&id) {
            out.push(Candidate {
                cause: CauseKind::Rollout,
                component: Some(m.service.clone()),
                score: 0.7,
                evidence: vec![id],
                title: format!("A rollout of {} in the last hour", m.service),
                reasoning: format!(
                    "the rollout metric of {} changed {} times",
                    m.service, m.max
                ),
                next_step: format!(
                    "Check the deployment history of {} against the onset",
                    m.service
                ),
            });
        }
    }

    // A dependency several services share.
    let mut dependents: BTreeMap<String, Vec<&SignalFacts>> = BTreeMap::new();
    for s in &input.signals {
        for label in DEPENDENCY_LABELS {
            if let Some(dep) = s.labels.get(label) {
                dependents.entry(dep.clone()).or_default().push(s);
            }
        }
    }
    for (dep, signals) in &dependents {
        let affected: BTreeSet<String> = signals.iter().map(|s| service_of(s)).collect();
        if affected.len() >= 2 {
            out.push(Candidate {
                cause: CauseKind::SharedDependency,
                component: Some(dep.clone()),
                score: 0.6 + 0.08 * (affected.len().min(4) as f64),
                evidence: cite(set, signals.iter().copied()),
                title: format!("{dep}, which {} services share, is failing", affected.len()),
                reasoning: format!(
                    "alerts of {} all name {dep} as their dependency",
                    affected.into_iter().collect::<Vec<_>>().join(", ")
                ),
                next_step: format!("Check {dep}'s own health and its error and latency metrics; if it is healthy, this is refuted"),
            });
        }
    }
    let dependency_alerts = with(Trait::Dependency);
    if let Some(first) = dependency_alerts.first()
        && !dependents.values().any(|v| v.len() >= 2)
    {
        let component = first
            .labels
            .iter()
            .find(|(k, _)| DEPENDENCY_LABELS.contains(&k.as_str()))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| first.alertname.clone());
        let spread = services.len() >= 2;
        let mut cited = cite(set, dependency_alerts.iter().copied());
        cited.extend(cite(set, errors.iter().copied().take(3)));
        out.push(Candidate {
            cause: CauseKind::SharedDependency,
            component: Some(component.clone()),
            score: if spread { 0.7 } else { 0.45 },
            evidence: cited,
            title: format!("The dependency behind {} is failing", first.alertname),
            reasoning: format!(
                "{} points at a dependency{}",
                first.alertname,
                if spread {
                    ", and several services alert at once"
                } else {
                    ""
                }
            ),
            next_step: format!("Check {component} directly (health, connections, error log)"),
        });
    }

    // Saturation before errors.
    let saturation = with(Trait::Saturation);
    if let Some(first) = saturation.first() {
        let onset_errors = earliest(&errors);
        let (score, order) = match onset_errors {
            Some(e) if first.starts_at <= e => (0.75, "before the errors began"),
            Some(_) => (0.35, "after the errors began"),
            None => (0.55, "with no error alert yet"),
        };
        let mut cited = cite(set, saturation.iter().copied());
        cited.extend(cite(set, errors.iter().copied().take(2)));
        out.push(Candidate {
            cause: CauseKind::Saturation,
            component: Some(service_of(first)),
            score,
            evidence: cited,
            title: format!("{} ran out of a resource ({})", service_of(first), first.alertname),
            reasoning: format!("{} fired at {}, {order}", first.alertname, first.starts_at.format("%H:%M:%SZ")),
            next_step: format!(
                "Look at {}'s resource usage against its limits over the onset; adding capacity should clear the errors if this holds",
                service_of(first)
            ),
        });
    }
    for m in input
        .metrics
        .iter()
        .filter(|m| m.name == "saturation" && m.trend() > 0.2)
    {
        let id = evidence::metric_id(m);
        if set.contains(&id) {
            out.push(Candidate {
                cause: CauseKind::Saturation,
                component: Some(m.service.clone()),
                score: 0.6,
                evidence: vec![id],
                title: format!("{} is saturating", m.service),
                reasoning: format!(
                    "saturation of {} rose {:+.0}%",
                    m.service,
                    m.trend() * 100.0
                ),
                next_step: format!(
                    "Compare {}'s saturation with its limits and the error onset",
                    m.service
                ),
            });
        }
    }

    // Crash loops.
    let crashes = with(Trait::Crash);
    if let Some(first) = crashes.first() {
        out.push(Candidate {
            cause: CauseKind::CrashLoop,
            component: Some(service_of(first)),
            score: if crashes.len() >= 3 { 0.6 } else { 0.5 },
            evidence: cite(set, crashes.iter().copied()),
            title: format!("{} is crash-looping", service_of(first)),
            reasoning: format!(
                "{} crash or restart alerts, the first {}",
                crashes.len(),
                first.alertname
            ),
            next_step: format!(
                "Read the last logs and exit reason of {}'s crashing containers",
                service_of(first)
            ),
        });
    }

    // A failing node, host, zone or network.
    let infra = with(Trait::Infra);
    if let Some(first) = infra.first() {
        let placement = PLACEMENT_LABELS
            .iter()
            .find_map(|l| first.labels.get(*l).cloned())
            .or_else(|| first.labels.get("instance").cloned());
        let mut cited = cite(set, infra.iter().copied());
        cited.extend(cite(set, errors.iter().copied().take(2)));
        out.push(Candidate {
            cause: CauseKind::Infrastructure,
            component: placement.clone().or_else(|| Some(service_of(first))),
            score: if services.len() >= 2 { 0.75 } else { 0.55 },
            evidence: cited,
            title: format!(
                "Infrastructure under {} failed ({})",
                placement.as_deref().unwrap_or("the service"),
                first.alertname
            ),
            reasoning: format!("{} fired{}", first.alertname, if services.len() >= 2 { " and several services alert together" } else { "" }),
            next_step: "Check the node, host or network path named in the alert; services elsewhere should be healthy if this holds".into(),
        });
    }

    // An expiry.
    let expiries = with(Trait::Expiry);
    if let Some(first) = expiries.first() {
        out.push(Candidate {
            cause: CauseKind::Expiry,
            component: Some(service_of(first)),
            score: 0.8,
            evidence: cite(set, expiries.iter().copied()),
            title: format!(
                "Something of {} expired or ran out ({})",
                service_of(first),
                first.alertname
            ),
            reasoning: format!("{} names an expiry or quota", first.alertname),
            next_step:
                "Check the certificate, credential or quota the alert names and its expiry date"
                    .into(),
        });
    }

    concurrent_rules(input, set, &mut out);

    // The same as a past incident.
    if let Some(past) = input
        .similar
        .iter()
        .filter(|p| p.similarity >= 0.4)
        .max_by(|a, b| a.similarity.total_cmp(&b.similarity))
    {
        let id = evidence::incident_id(past.id);
        if set.contains(&id) {
            let resolved_like = past.resolution.is_some();
            out.push(Candidate {
                cause: CauseKind::Recurrence,
                component: past.service.clone(),
                score: 0.2 + 0.4 * past.similarity + if resolved_like { 0.1 } else { 0.0 },
                evidence: vec![id],
                title: format!("A recurrence of \"{}\"", past.title),
                reasoning: format!(
                    "a past incident with similarity {:.2}{}",
                    past.similarity,
                    past.resolution
                        .as_deref()
                        .map(|r| format!(", resolved by: {r}"))
                        .unwrap_or_default()
                ),
                next_step: "Apply what resolved the past incident and watch whether this one clears".into(),
            });
        }
    }

    if out.is_empty() && !errors.is_empty() {
        let first = errors[0];
        out.push(Candidate {
            cause: CauseKind::Other,
            component: Some(service_of(first)),
            score: 0.25,
            evidence: cite(set, errors.iter().copied()),
            title: format!("A fault in {} itself", service_of(first)),
            reasoning: "errors without a rollout, saturation, dependency or infrastructure signal in the evidence".into(),
            next_step: format!("Read {}'s error logs around the onset", service_of(first)),
        });
    }
    let thin = input.signals.len() < 2 && input.metrics.is_empty();
    let reserve = if thin { 0.4 } else { 0.1 };
    (
        out.into_iter().map(Candidate::into_hypothesis).collect(),
        reserve,
    )
}

/// The rules that look past this incident: a dependency's own incident, a zone, node or host
/// several services share, every target of one job down at once, and a dependency the alerts'
/// own words name. An incident that merely happened at the same time is never blamed: something
/// must tie it to this one (its name in our alerts, our symptoms matching what it is, or a
/// specific place both run in).
fn concurrent_rules(input: &EvidenceInput, set: &EvidenceSet, out: &mut Vec<Candidate>) {
    let relations = concurrent::relate(input);
    let ours = input
        .incident
        .service
        .clone()
        .unwrap_or_else(|| "this service".into());
    let errors: Vec<&SignalFacts> = input
        .signals
        .iter()
        .filter(|s| {
            traits(s).contains(&Trait::Errors)
                || !concurrent::symptoms(std::slice::from_ref(*s)).is_empty()
        })
        .collect();

    // A dependency's own incident, begun first, that our alerts name or whose failure they show.
    let mut named_dependency = false;
    for r in relations.iter().filter(|r| {
        r.first()
            && r.dependency.is_some_and(|d| !d.is_infrastructure())
            && (r.named || !r.symptoms.is_empty())
    }) {
        let id = evidence::concurrent_id(r.incident.id);
        if !set.contains(&id) {
            continue;
        }
        let kind = r.dependency.expect("filtered on a dependency");
        let name = suspect(r);
        let mut cited = vec![id];
        cited.extend(cite(set, errors.iter().copied().take(3)));
        let score: f64 = 0.6
            + if r.named { 0.15 } else { 0.0 }
            + if r.symptoms.is_empty() { 0.0 } else { 0.1 }
            + if r.offset_secs < -30 { 0.05 } else { 0.0 };
        named_dependency = true;
        out.push(Candidate {
            cause: CauseKind::SharedDependency,
            component: Some(name.clone()),
            score: score.min(0.9),
            evidence: cited,
            title: format!("{name} ({}) is failing, and {ours} depends on it", kind.as_str()),
            reasoning: format!("the incident on {name} {}", r.reason()),
            next_step: format!(
                "Work the {name} incident first; if {ours}'s errors stop as {name} recovers, this holds"
            ),
        });
    }

    // A zone, node or host that several services' incidents share, opened together.
    let mut scopes: BTreeMap<(&'static str, String), Vec<&Relation<'_>>> = BTreeMap::new();
    for r in relations.iter().filter(|r| r.offset_secs.abs() <= 300) {
        for (label, value) in &r.shared {
            scopes.entry((label, value.clone())).or_default().push(r);
        }
    }
    for ((label, value), related) in scopes {
        let services: BTreeSet<String> = related
            .iter()
            .filter_map(|r| r.incident.service.clone())
            .chain(input.incident.service.clone())
            .collect();
        let needed = if concurrent::specific(label) { 2 } else { 3 };
        if services.len() < needed {
            continue;
        }
        let mut cited: Vec<String> = related
            .iter()
            .map(|r| evidence::concurrent_id(r.incident.id))
            .filter(|id| set.contains(id))
            .take(4)
            .collect();
        if cited.is_empty() {
            continue;
        }
        cited.extend(cite(
            set,
            input
                .signals
                .iter()
                .filter(|s| {
                    concurrent::topology(std::slice::from_ref(*s)).contains(&(label, value.clone()))
                })
                .take(2),
        ));
        let infra = related
            .iter()
            .any(|r| r.dependency.is_some_and(DependencyKind::is_infrastructure));
        let score =
            0.55 + 0.1 * (services.len() - 1).min(3) as f64 + if infra { 0.05 } else { 0.0 }
                - if concurrent::specific(label) {
                    0.0
                } else {
                    0.15
                };
        let scope = match label {
            "node" | "kubernetes_node" => format!("node {value}"),
            "host" | "instance" => format!("host {value}"),
            "zone" | "availability_zone" => format!("zone {value}"),
            other => format!("{other} {value}"),
        };
        out.push(Candidate {
            cause: CauseKind::Infrastructure,
            component: Some(scope.clone()),
            score: score.min(0.9),
            evidence: cited,
            title: format!(
                "Something in {scope} failed: {} services there alert together",
                services.len()
            ),
            reasoning: format!(
                "{} opened within minutes of each other, all in {scope}",
                services.into_iter().collect::<Vec<_>>().join(", ")
            ),
            next_step: format!(
                "Check {scope} itself (node conditions, the zone's status, its network); services outside it should be healthy if this holds"
            ),
        });
    }

    // Every target of one job down at once.
    for (job, down) in concurrent::targets_down(&input.signals) {
        let instances: BTreeSet<&str> = down
            .iter()
            .filter_map(|s| s.labels.get("instance").map(String::as_str))
            .collect();
        out.push(Candidate {
            cause: CauseKind::Infrastructure,
            component: Some(format!("job {job}")),
            score: (0.65 + 0.05 * instances.len().min(4) as f64).min(0.85),
            evidence: cite(set, down.iter().copied()),
            title: format!(
                "{} targets of job {job} are down at once ({}): their hosts, or the network between them and Prometheus",
                instances.len(),
                instances.iter().copied().collect::<Vec<_>>().join(", ")
            ),
            reasoning: format!(
                "{} fired for {} instances of {job} together; one target failing alone would be that target, all of them at once is what they share",
                down[0].alertname,
                instances.len()
            ),
            next_step: format!(
                "Reach the hosts of job {job} directly (ping, ssh); if they answer, check the network path and the scrape config from Prometheus"
            ),
        });
    }

    // A dependency the alerts' own words name, with no incident of its own.
    if !named_dependency {
        let services: BTreeSet<String> = input.signals.iter().map(service_of).collect();
        let mut seen = BTreeSet::new();
        for (phrase, kind) in concurrent::symptoms(&input.signals) {
            if kind == DependencyKind::Network || !seen.insert(kind) {
                continue;
            }
            let saying: Vec<&SignalFacts> = input
                .signals
                .iter()
                .filter(|s| concurrent::text_of(s).contains(phrase))
                .collect();
            let component = saying
                .iter()
                .find_map(|s| {
                    DEPENDENCY_LABELS
                        .iter()
                        .find_map(|l| s.labels.get(*l).cloned())
                })
                .unwrap_or_else(|| kind.as_str().to_owned());
            out.push(Candidate {
                cause: CauseKind::SharedDependency,
                component: Some(component.clone()),
                score: if services.len() >= 2 { 0.7 } else { 0.6 },
                evidence: cite(set, saying.iter().copied()),
                title: format!(
                    "{component} is failing: the alerts say \"{}\"",
                    phrase.trim()
                ),
                reasoning: format!(
                    "\"{}\" is what a client says when its {} fails",
                    phrase.trim(),
                    kind.as_str()
                ),
                next_step: format!(
                    "Check the {} the error names directly (its health, its logs, its limits)",
                    kind.as_str()
                ),
            });
        }
    }
}

/// The plain name of what another incident is about: its service, or its first alert's job or
/// instance.
fn suspect(r: &Relation<'_>) -> String {
    r.incident
        .service
        .clone()
        .or_else(|| {
            r.incident
                .signals
                .first()
                .and_then(|s| s.labels.get("job").or(s.labels.get("instance")).cloned())
        })
        .unwrap_or_else(|| r.incident.title.clone())
}
