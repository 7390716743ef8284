//! The correlator's decider: what a signal means for the incidents of its key, decided in
//! memory from the states it touches, without I/O. The correlator service loads those states
//! for a batch, runs [`Batch::decide`] for each signal in order (later signals see what earlier
//! ones changed), appends the decisions and saves the changes.
//!
//! Times are the alerts' own (`startsAt`, or `endsAt` for a resolve), never the wall clock, and
//! every decision's id is derived from what was decided, so deciding the same stream again gives
//! the same events, id for id and byte for byte: a crash between append and commit re-decides
//! copies that JetStream or the projector drop.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Duration, Utc};
use copilot_events::{
    CORRELATOR, CorrelationRules, Envelope, EventPayload, Headers, IncidentOpened,
    IncidentReopened, IncidentResolved, IncidentState, Severity, SignalAttached, SignalReceived,
    SignalResolved, SignalStatus, TraceParent, WindowKind, derived_id, subjects,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::incident::{By, Incident, IncidentEvent, evolve};

/// An event the correlator decided to append.
#[derive(Debug, Clone)]
pub struct Decision {
    pub subject: String,
    pub envelope: Envelope,
}

impl Decision {
    /// A decision about `incident`, its id derived from the tenant, the incident, the event type
    /// and `parts`, so deciding it again yields the same id.
    pub fn new<P: EventPayload>(
        tenant: &str,
        incident: Uuid,
        payload: &P,
        at: DateTime<Utc>,
        parts: &[&str],
        cause: Option<&Envelope>,
    ) -> Self {
        let incident_text = incident.to_string();
        let mut all = vec!["decision", tenant, &incident_text, P::TYPE];
        all.extend_from_slice(parts);
        let id = derived_id(at, &all);
        let headers = Headers {
            correlation_id: Some(incident),
            causation_id: cause.map(|c| c.id),
            request_id: cause.and_then(|c| c.request_id.clone()),
            // The decision continues its cause's trace, as a span derived from its own id.
            traceparent: cause
                .and_then(|c| c.traceparent.as_deref())
                .and_then(TraceParent::parse)
                .map(|t| t.child(id.as_bytes()).to_string()),
            // The correlator's own decision: no person to audit.
            ..Headers::default()
        };
        Self {
            subject: subjects::incident(tenant, incident),
            envelope: Envelope::with_id(id, tenant, payload, at, headers),
        }
    }
}

/// The correlation key of a signal under `rules`, and the rule in words.
pub fn correlation_key(rules: &CorrelationRules, signal: &SignalReceived) -> (String, String) {
    let fallback = || match &signal.group_key {
        Some(group) => format!("group={group}"),
        None => format!("fingerprint={}", signal.fingerprint),
    };
    if rules.group_by.is_empty() {
        let rule = "the first of the labels service, job, app, namespace (else the group key)";
        let key = CorrelationRules::DEFAULT_CHAIN
            .iter()
            .find_map(|label| {
                signal
                    .labels
                    .get(*label)
                    .filter(|v| !v.is_empty())
                    .map(|v| format!("{label}={v}"))
            })
            .unwrap_or_else(fallback);
        (key, rule.to_owned())
    } else {
        let parts: Vec<String> = rules
            .group_by
            .iter()
            .filter_map(|label| signal.labels.get(label).map(|v| format!("{label}={v}")))
            .collect();
        let rule = format!(
            "the labels {} (else the group key)",
            rules.group_by.join(", ")
        );
        let key = if parts.is_empty() {
            fallback()
        } else {
            parts.join(",")
        };
        (key, rule)
    }
}

/// An alert instance as the correlator last saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalRecord {
    pub tenant: String,
    pub signal_id: Uuid,
    /// The incident it joined; `None` while it waits for its key's threshold, or when it
    /// arrived already resolved.
    pub incident_id: Option<Uuid>,
    pub key: String,
    pub status: SignalStatus,
    pub severity: Severity,
    /// When it started (firing) or ended (arrived resolved).
    pub at: DateTime<Utc>,
    /// While it waits for its key's threshold: what attaching it will need.
    pub pending: Option<Waiting>,
}

/// What a waiting signal needs for its `SignalAttached` once its key's threshold is reached.
/// Stored as JSON while it waits; the field names are that format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Waiting {
    pub fingerprint: String,
    pub title: String,
    pub severity: Severity,
    pub starts_at: DateTime<Utc>,
    pub service: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub received_at: DateTime<Utc>,
}

/// The states one signal touches.
#[derive(Debug, Clone, Copy, Default)]
pub struct Touched<'a> {
    /// The correlator's record of this alert instance, if it saw it before.
    pub known: Option<&'a SignalRecord>,
    /// The incident that record joined.
    pub joined: Option<&'a Incident>,
    /// The newest incident of the signal's key (by opening, then id).
    pub latest: Option<&'a Incident>,
    /// The signals of its key waiting for the threshold, oldest first.
    pub pending: &'a [&'a SignalRecord],
}

/// What deciding one signal gives: the events to append, in order, and the states to save.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub decisions: Vec<Decision>,
    pub incidents: Vec<Incident>,
    pub signals: Vec<SignalRecord>,
}

/// Decides what one signal means, from the states it touches.
///
/// A firing alert seen before is a repeat (or a stale copy after its resolve, Alertmanager in HA
/// mode): nothing. A new one joins its key's open incident within the window (rolling: since
/// the last signal; fixed: since the opening), reopens its key's resolved incident within the
/// reopen window, or opens an incident (with `min_signals` > 1, once that many signals of the
/// key arrived within the window; until then it waits). A reviewed incident is never joined nor
/// reopened. An attached alert's resolve is a `SignalResolved`; the last one starts the grace,
/// or resolves the incident when there is none. A resolve before the firing is remembered, so
/// the late firing changes nothing.
pub fn decide(
    touched: Touched<'_>,
    rules: &CorrelationRules,
    envelope: &Envelope,
    signal: &SignalReceived,
) -> Outcome {
    let tenant = envelope.tenant.as_str();
    let signal_id = signal.instance_id(tenant);
    let mut out = Outcome::default();
    match signal.status {
        SignalStatus::Firing => {
            if touched.known.is_none() {
                fire(touched, rules, envelope, signal, signal_id, &mut out);
            }
        }
        SignalStatus::Resolved => {
            let at = signal.ends_at.unwrap_or(envelope.occurred_at);
            match touched.known {
                Some(known) if known.status == SignalStatus::Firing => {
                    let mut record = known.clone();
                    record.status = SignalStatus::Resolved;
                    record.pending = None;
                    if let Some(incident) = touched.joined
                        && record.incident_id == Some(incident.id)
                    {
                        resolve_signal(
                            incident.clone(),
                            rules,
                            envelope,
                            signal,
                            &record,
                            at,
                            &mut out,
                        );
                    }
                    out.signals.push(record);
                }
                Some(_) => {}
                None => out.signals.push(SignalRecord {
                    tenant: tenant.to_owned(),
                    signal_id,
                    incident_id: None,
                    key: correlation_key(rules, signal).0,
                    status: SignalStatus::Resolved,
                    severity: signal.severity,
                    at,
                    pending: None,
                }),
            }
        }
    }
    out
}

fn window_words(rules: &CorrelationRules) -> String {
    let kind = match rules.window_kind {
        WindowKind::Rolling => "rolling",
        WindowKind::Fixed => "fixed",
    };
    format!("{kind} {} window", human(rules.window_secs as i64))
}

fn human(secs: i64) -> String {
    match secs {
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn fire(
    touched: Touched<'_>,
    rules: &CorrelationRules,
    envelope: &Envelope,
    signal: &SignalReceived,
    signal_id: Uuid,
    out: &mut Outcome,
) {
    let tenant = envelope.tenant.as_str();
    let (key, rule) = correlation_key(rules, signal);
    let at = signal.starts_at;
    let window = Duration::seconds(rules.window_secs as i64);
    let mut record = SignalRecord {
        tenant: tenant.to_owned(),
        signal_id,
        incident_id: None,
        key: key.clone(),
        status: SignalStatus::Firing,
        severity: signal.severity,
        at,
        pending: None,
    };
    let waiting = Waiting {
        fingerprint: signal.fingerprint.clone(),
        title: signal.title.clone(),
        severity: signal.severity,
        starts_at: signal.starts_at,
        service: signal.service.clone(),
        labels: signal.labels.clone(),
        received_at: envelope.occurred_at,
    };
    if let Some(latest) = touched.latest {
        let mut incident = latest.clone();
        // The grace ran out before this alert: resolve first, exactly as the timer would (same
        // event id), so the decision does not depend on whether the timer got there first.
        let mut resolved_first = false;
        if incident.state.is_open() && incident.resolve_due.is_some_and(|due| due <= at) {
            out.decisions.extend(resolve_after_grace(&mut incident));
            resolved_first = true;
        }
        let since = match rules.window_kind {
            WindowKind::Rolling => incident.last_signal_at.max(incident.window_from),
            WindowKind::Fixed => incident.window_from,
        };
        let reopen_until = incident
            .resolved_at
            .map(|r| r + Duration::seconds(rules.reopen_window_secs as i64));
        let joins = incident.state.is_open() && at <= since + window;
        let reopens = incident.state == IncidentState::Resolved
            && reopen_until.is_some_and(|until| at <= until);
        if joins || reopens {
            let explanation = if joins {
                format!(
                    "same key {key} (rule: {rule}) within the {} of the incident's {}",
                    window_words(rules),
                    match rules.window_kind {
                        WindowKind::Rolling => "last signal",
                        WindowKind::Fixed => "opening",
                    }
                )
            } else {
                format!(
                    "same key {key} (rule: {rule}), {} after the incident resolved, within its {} reopen window",
                    human(
                        (at - incident.resolved_at.unwrap_or(at))
                            .num_seconds()
                            .max(0)
                    ),
                    human(rules.reopen_window_secs as i64)
                )
            };
            if reopens {
                let signal_text = signal_id.to_string();
                out.decisions.push(Decision::new(
                    tenant,
                    incident.id,
                    &IncidentReopened {
                        incident_id: incident.id,
                        actor: CORRELATOR.to_owned(),
                        reason: format!("a new alert of {key} fired within the reopen window"),
                        to: IncidentState::Detected,
                        signal_id: Some(signal_id),
                        note: None,
                    },
                    envelope.occurred_at,
                    &[&signal_text],
                    Some(envelope),
                ));
                incident = incident.evolve(&IncidentEvent::Reopened {
                    by: By::System,
                    to: IncidentState::Detected,
                    at,
                });
            }
            incident = incident.evolve(&IncidentEvent::SignalAttached {
                severity: record.severity,
                starts_at: at,
            });
            record.incident_id = Some(incident.id);
            attach(
                &incident,
                signal_id,
                &waiting,
                explanation,
                envelope,
                &mut out.decisions,
            );
            out.signals.push(record);
            out.incidents.push(incident);
            return;
        }
        if resolved_first {
            out.incidents.push(incident);
        }
    }
    // A new incident, once the key has enough signals within the window.
    let mut group = Vec::new();
    if rules.min_signals > 1 {
        // Those that fell out of the window are forgotten.
        let since = at - window;
        for waiting_signal in touched.pending {
            let mut waiting_signal = (*waiting_signal).clone();
            if waiting_signal.at < since {
                waiting_signal.pending = None;
                out.signals.push(waiting_signal);
            } else {
                group.push(waiting_signal);
            }
        }
        if (group.len() as u32 + 1) < rules.min_signals {
            record.pending = Some(waiting);
            out.signals.push(record);
            return;
        }
    }
    let first_at = group.first().map_or(at, |s| s.at.min(at));
    let incident_id = derived_id(
        first_at,
        &["incident", tenant, &key, &signal_id.to_string()],
    );
    let severity = group
        .iter()
        .map(|s| s.severity)
        .fold(signal.severity, Severity::max);
    let threshold = if rules.min_signals > 1 {
        format!(
            ", once {} signals arrived within the {}",
            rules.min_signals,
            window_words(rules)
        )
    } else {
        String::new()
    };
    let rule_words = format!("correlated by {rule}, {}{threshold}", window_words(rules));
    out.decisions.push(Decision::new(
        tenant,
        incident_id,
        &IncidentOpened {
            incident_id,
            key: key.clone(),
            title: signal.title.clone(),
            service: signal.service.clone(),
            severity,
            labels: signal.labels.clone(),
            rule: rule_words,
        },
        envelope.occurred_at,
        &[],
        Some(envelope),
    ));
    let mut incident = evolve(
        None,
        &IncidentEvent::Opened {
            tenant: tenant.to_owned(),
            incident_id,
            key: key.clone(),
            at: first_at,
        },
    )
    .expect("an opening opens");
    for mut waiting_signal in group {
        let Some(w) = waiting_signal.pending.take() else {
            continue;
        };
        incident = incident.evolve(&IncidentEvent::SignalAttached {
            severity: waiting_signal.severity,
            starts_at: waiting_signal.at,
        });
        waiting_signal.incident_id = Some(incident_id);
        let explanation = format!(
            "key {key} (rule: {rule}) waited for {} signals within the {}",
            rules.min_signals,
            window_words(rules)
        );
        attach(
            &incident,
            waiting_signal.signal_id,
            &w,
            explanation,
            envelope,
            &mut out.decisions,
        );
        out.signals.push(waiting_signal);
    }
    incident = incident.evolve(&IncidentEvent::SignalAttached {
        severity: record.severity,
        starts_at: at,
    });
    record.incident_id = Some(incident_id);
    let explanation = if rules.min_signals > 1 {
        format!(
            "signal {} of key {key} (rule: {rule}) within the {}: the threshold opened the incident",
            rules.min_signals,
            window_words(rules)
        )
    } else {
        format!("first signal of key {key} (rule: {rule}): opened the incident")
    };
    attach(
        &incident,
        signal_id,
        &waiting,
        explanation,
        envelope,
        &mut out.decisions,
    );
    out.signals.push(record);
    out.incidents.push(incident);
}

/// The `SignalAttached` of a signal that joined `incident` (already folded in).
fn attach(
    incident: &Incident,
    signal_id: Uuid,
    w: &Waiting,
    explanation: String,
    cause: &Envelope,
    out: &mut Vec<Decision>,
) {
    let signal_text = signal_id.to_string();
    out.push(Decision::new(
        &incident.tenant,
        incident.id,
        &SignalAttached {
            incident_id: incident.id,
            signal_id,
            fingerprint: w.fingerprint.clone(),
            title: w.title.clone(),
            severity: w.severity,
            starts_at: w.starts_at,
            incident_severity: incident.severity(),
            explanation,
        },
        cause.occurred_at,
        &[&signal_text],
        Some(cause),
    ));
}

fn resolve_signal(
    incident: Incident,
    rules: &CorrelationRules,
    envelope: &Envelope,
    signal: &SignalReceived,
    record: &SignalRecord,
    at: DateTime<Utc>,
    out: &mut Outcome,
) {
    let tenant = envelope.tenant.as_str();
    let grace = Duration::seconds(rules.resolve_grace_secs as i64);
    let mut incident = incident.evolve(&IncidentEvent::SignalResolved {
        severity: record.severity,
        at,
        grace,
    });
    let signal_text = record.signal_id.to_string();
    out.decisions.push(Decision::new(
        tenant,
        incident.id,
        &SignalResolved {
            incident_id: incident.id,
            signal_id: record.signal_id,
            ends_at: signal.ends_at,
            incident_severity: incident.severity(),
            firing_left: incident.firing.total(),
        },
        envelope.occurred_at,
        &[&signal_text],
        Some(envelope),
    ));
    if rules.resolve_grace_secs == 0 && incident.is_quiet() {
        let generation = incident.generation.to_string();
        out.decisions.push(Decision::new(
            tenant,
            incident.id,
            &IncidentResolved {
                incident_id: incident.id,
                actor: CORRELATOR.to_owned(),
                reason: "every attached alert resolved".to_owned(),
                note: None,
            },
            envelope.occurred_at,
            &["resolved", &generation],
            Some(envelope),
        ));
        incident = incident.evolve(&IncidentEvent::Resolved {
            by: By::System,
            at: at + grace,
        });
    }
    out.incidents.push(incident);
}

/// The resolve of an open incident whose grace ran out after its last alert resolved. The timer
/// and a later alert decide it alike: same time (the end of the grace), same id. `None` when
/// nothing is due (or the incident is no longer open: then nothing is due any more).
pub fn resolve_after_grace(incident: &mut Incident) -> Option<Decision> {
    let due = incident.resolve_due?;
    if !incident.state.is_open() {
        incident.resolve_due = None;
        return None;
    }
    let generation = incident.generation.to_string();
    let decision = Decision::new(
        &incident.tenant,
        incident.id,
        &IncidentResolved {
            incident_id: incident.id,
            actor: CORRELATOR.to_owned(),
            reason: "every attached alert resolved and none fired again within the grace period"
                .to_owned(),
            note: None,
        },
        due,
        &["resolved", &generation],
        None,
    );
    *incident = incident.clone().evolve(&IncidentEvent::Resolved {
        by: By::System,
        at: due,
    });
    Some(decision)
}

type TenantKey = (String, String);
type TenantId = (String, Uuid);

/// The correlator's state for one batch: what the store held for the signals and keys the batch
/// touches, and every change deciding them made, so each signal is decided on the state its
/// predecessors left. Load into it the records of the batch's signals, the waiting signals of
/// its keys, the newest incident of each key and the incidents its known signals joined; then
/// decide each signal in order; then save [`Batch::changes`]. A batch of people's lifecycle
/// events holds just their incidents, and [`Batch::follow`]s each event.
#[derive(Debug, Default)]
pub struct Batch {
    signals: HashMap<TenantId, SignalRecord>,
    incidents: HashMap<TenantId, Incident>,
    /// The newest incident of each key, as the store orders them (opening, then id).
    latest: HashMap<TenantKey, Uuid>,
    /// The waiting signals of each key, oldest first.
    pending: HashMap<TenantKey, BTreeSet<(DateTime<Utc>, Uuid)>>,
    changed_signals: BTreeSet<TenantId>,
    changed_incidents: BTreeSet<TenantId>,
}

/// The states a batch changed, to save.
#[derive(Debug, Default)]
pub struct Changes {
    pub incidents: Vec<Incident>,
    pub signals: Vec<SignalRecord>,
}

impl Batch {
    /// A batch over the states loaded for it.
    pub fn new(
        signals: impl IntoIterator<Item = SignalRecord>,
        incidents: impl IntoIterator<Item = Incident>,
    ) -> Self {
        let mut batch = Self::default();
        for incident in incidents {
            batch.put_incident(incident);
        }
        for signal in signals {
            batch.put_signal(signal);
        }
        batch.changed_incidents.clear();
        batch.changed_signals.clear();
        batch
    }

    /// Decides one signal on the batch's state and records what changed.
    pub fn decide(
        &mut self,
        rules: &CorrelationRules,
        envelope: &Envelope,
        signal: &SignalReceived,
    ) -> Vec<Decision> {
        let tenant = envelope.tenant.as_str();
        let signal_id = signal.instance_id(tenant);
        let key = (tenant.to_owned(), correlation_key(rules, signal).0);
        let known = self.signals.get(&(tenant.to_owned(), signal_id));
        let joined = known
            .and_then(|s| s.incident_id)
            .and_then(|id| self.incidents.get(&(tenant.to_owned(), id)));
        let latest = self
            .latest
            .get(&key)
            .and_then(|id| self.incidents.get(&(tenant.to_owned(), *id)));
        let pending: Vec<&SignalRecord> = self
            .pending
            .get(&key)
            .into_iter()
            .flatten()
            .filter_map(|(_, id)| self.signals.get(&(tenant.to_owned(), *id)))
            .collect();
        let touched = Touched {
            known,
            joined,
            latest,
            pending: &pending,
        };
        let outcome = decide(touched, rules, envelope, signal);
        for incident in outcome.incidents {
            self.put_incident(incident);
        }
        for record in outcome.signals {
            self.put_signal(record);
        }
        outcome.decisions
    }

    /// Folds a person's lifecycle event into incident `incident_id` of `tenant`, as the
    /// correlator follows them (its own decisions it folds as it makes them); `false` when the
    /// batch does not hold that incident.
    pub fn follow(&mut self, tenant: &str, incident_id: Uuid, event: &IncidentEvent) -> bool {
        match self.incidents.get(&(tenant.to_owned(), incident_id)) {
            Some(incident) => {
                let incident = incident.clone().evolve(event);
                self.put_incident(incident);
                true
            }
            None => false,
        }
    }

    /// The incident `id` of `tenant` as the batch has it now.
    pub fn incident(&self, tenant: &str, id: Uuid) -> Option<&Incident> {
        self.incidents.get(&(tenant.to_owned(), id))
    }

    /// The correlator's record of signal `id` of `tenant` as the batch has it now.
    pub fn signal(&self, tenant: &str, id: Uuid) -> Option<&SignalRecord> {
        self.signals.get(&(tenant.to_owned(), id))
    }

    /// Every state the batch changed, each once, in key order.
    pub fn changes(&self) -> Changes {
        Changes {
            incidents: self
                .changed_incidents
                .iter()
                .filter_map(|k| self.incidents.get(k).cloned())
                .collect(),
            signals: self
                .changed_signals
                .iter()
                .filter_map(|k| self.signals.get(k).cloned())
                .collect(),
        }
    }

    fn put_incident(&mut self, incident: Incident) {
        let key = (incident.tenant.clone(), incident.key.clone());
        let newer = match self
            .latest
            .get(&key)
            .and_then(|id| self.incidents.get(&(incident.tenant.clone(), *id)))
        {
            Some(latest) => (incident.opened_at, incident.id) >= (latest.opened_at, latest.id),
            None => true,
        };
        if newer {
            self.latest.insert(key, incident.id);
        }
        let id = (incident.tenant.clone(), incident.id);
        self.changed_incidents.insert(id.clone());
        self.incidents.insert(id, incident);
    }

    fn put_signal(&mut self, record: SignalRecord) {
        let id = (record.tenant.clone(), record.signal_id);
        if let Some(old) = self.signals.get(&id)
            && old.pending.is_some()
            && let Some(waiting) = self.pending.get_mut(&(old.tenant.clone(), old.key.clone()))
        {
            waiting.remove(&(old.at, old.signal_id));
        }
        if record.pending.is_some() {
            self.pending
                .entry((record.tenant.clone(), record.key.clone()))
                .or_default()
                .insert((record.at, record.signal_id));
        }
        self.changed_signals.insert(id.clone());
        self.signals.insert(id, record);
    }
}

#[cfg(test)]
mod tests {
    use copilot_events::{Event, IncidentTransitioned, SignalSource};

    use super::*;

    const RULE: &str = "the first of the labels service, job, app, namespace (else the group key)";

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    /// An alert `name` of `service`, firing since `starts` (`HH:MM` on 2026-11-22).
    fn alert(name: &str, service: &str, severity: Severity, starts: &str) -> SignalReceived {
        let raw = serde_json::value::to_raw_value(&serde_json::json!({"alertname": name})).unwrap();
        SignalReceived {
            source: SignalSource::Alertmanager,
            status: SignalStatus::Firing,
            fingerprint: format!("{name}-{service}"),
            labels: [
                ("alertname".to_owned(), name.to_owned()),
                ("service".to_owned(), service.to_owned()),
            ]
            .into(),
            annotations: Default::default(),
            starts_at: at(&format!("2026-11-22T{starts}:00Z")),
            ends_at: None,
            generator_url: None,
            group_key: Some("{}:{}".into()),
            receiver: None,
            severity,
            service: Some(service.to_owned()),
            title: format!("{name} on {service}"),
            values: None,
            raw,
        }
    }

    /// The same alert, resolved at `ends` (`HH:MM`).
    fn resolved(signal: &SignalReceived, ends: &str) -> SignalReceived {
        SignalReceived {
            status: SignalStatus::Resolved,
            ends_at: Some(at(&format!("2026-11-22T{ends}:00Z"))),
            ..signal.clone()
        }
    }

    fn minutes(window: u64) -> u64 {
        window * 60
    }

    /// The correlator's decider over one tenant's state, fed one signal at a time as the service
    /// feeds a batch; each signal is received one second after the one before.
    struct Correlator {
        batch: Batch,
        rules: CorrelationRules,
        received: i64,
    }

    impl Correlator {
        fn given(rules: CorrelationRules) -> Self {
            Self {
                batch: Batch::default(),
                rules,
                received: 0,
            }
        }

        /// Signals already decided, whatever they decided.
        fn after(mut self, signals: &[&SignalReceived]) -> Self {
            for signal in signals {
                self.decide(signal);
            }
            self
        }

        fn decide(&mut self, signal: &SignalReceived) -> Vec<Decision> {
            self.received += 1;
            let received = at("2026-11-22T12:00:00Z") + Duration::seconds(self.received);
            let id = derived_id(received, &["test", &self.received.to_string()]);
            let envelope = Envelope::with_id(id, "acme", signal, received, Headers::default());
            self.batch.decide(&self.rules, &envelope, signal)
        }

        /// The events deciding `signal` appends, decoded from what would be appended.
        fn when(&mut self, signal: &SignalReceived) -> Vec<Event> {
            self.decide(signal)
                .iter()
                .map(|d| d.envelope.decode().expect("a decision decodes"))
                .collect()
        }

        /// The newest incident of `service`.
        fn incident(&self, service: &str) -> &Incident {
            let id = self.batch.latest[&("acme".to_owned(), format!("service={service}"))];
            self.batch.incident("acme", id).unwrap()
        }

        /// A person's lifecycle event, folded as the correlator follows it.
        fn person(&mut self, service: &str, event: IncidentEvent) {
            let id = self.incident(service).id;
            assert!(self.batch.follow("acme", id, &event));
        }
    }

    fn names(events: &[Event]) -> Vec<&'static str> {
        events.iter().map(Event::name).collect()
    }

    fn attached(event: &Event) -> &SignalAttached {
        match event {
            Event::SignalAttached(e) => e,
            other => panic!("a SignalAttached, not {}", other.name()),
        }
    }

    #[test]
    fn a_new_alert_opens_an_incident_and_attaches_itself_saying_why() {
        // Arrange
        let mut correlator = Correlator::given(CorrelationRules::default());
        let down = alert("Down", "api", Severity::Critical, "08:00");

        // Act
        let events = correlator.when(&down);

        // Assert
        let [
            Event::IncidentOpened(opened),
            Event::SignalAttached(attached),
        ] = events.as_slice()
        else {
            panic!("opened and attached: {:?}", names(&events));
        };
        let signal_id = down.instance_id("acme");
        let incident_id = derived_id(
            at("2026-11-22T08:00:00Z"),
            &["incident", "acme", "service=api", &signal_id.to_string()],
        );
        assert_eq!(
            opened,
            &IncidentOpened {
                incident_id,
                key: "service=api".into(),
                title: "Down on api".into(),
                service: Some("api".into()),
                severity: Severity::Critical,
                labels: down.labels.clone(),
                rule: format!("correlated by {RULE}, rolling 30m window"),
            }
        );
        assert_eq!(
            attached,
            &SignalAttached {
                incident_id,
                signal_id,
                fingerprint: "Down-api".into(),
                title: "Down on api".into(),
                severity: Severity::Critical,
                starts_at: down.starts_at,
                incident_severity: Severity::Critical,
                explanation: format!(
                    "first signal of key service=api (rule: {RULE}): opened the incident"
                ),
            }
        );
    }

    #[test]
    fn an_alert_within_the_rolling_window_of_the_incidents_last_signal_joins_it() {
        // Arrange: 30-minute rolling window; 08:50 is past the opening's window, not the last
        // signal's.
        let mut correlator = Correlator::given(CorrelationRules::default()).after(&[
            &alert("A", "api", Severity::Warning, "08:00"),
            &alert("B", "api", Severity::Warning, "08:25"),
        ]);
        let opened = correlator.incident("api").id;

        // Act
        let events = correlator.when(&alert("C", "api", Severity::Error, "08:50"));

        // Assert
        let [Event::SignalAttached(joined)] = events.as_slice() else {
            panic!("one SignalAttached: {:?}", names(&events));
        };
        assert_eq!(joined.incident_id, opened);
        assert_eq!(joined.incident_severity, Severity::Error);
        assert_eq!(
            joined.explanation,
            format!(
                "same key service=api (rule: {RULE}) within the rolling 30m window of the incident's last signal"
            )
        );
    }

    #[test]
    fn an_alert_past_the_fixed_window_of_the_opening_opens_a_new_incident() {
        // Arrange
        let rules = CorrelationRules {
            window_kind: WindowKind::Fixed,
            ..CorrelationRules::default()
        };
        let mut correlator =
            Correlator::given(rules).after(&[&alert("A", "api", Severity::Warning, "08:00")]);
        let first = correlator.incident("api").id;

        // Act
        let within = correlator.when(&alert("B", "api", Severity::Warning, "08:29"));
        let past = correlator.when(&alert("C", "api", Severity::Warning, "08:31"));

        // Assert
        assert_eq!(attached(&within[0]).incident_id, first);
        assert_eq!(
            attached(&within[0]).explanation,
            format!(
                "same key service=api (rule: {RULE}) within the fixed 30m window of the incident's opening"
            )
        );
        assert_eq!(names(&past), ["IncidentOpened", "SignalAttached"]);
        assert_ne!(attached(&past[1]).incident_id, first);
        assert_eq!(
            correlator.incident("api").id,
            attached(&past[1]).incident_id
        );
    }

    #[test]
    fn the_threshold_opens_an_incident_only_at_the_nth_signal_within_the_window() {
        // Arrange: three signals within ten minutes; the first falls out of the window.
        let rules = CorrelationRules {
            min_signals: 3,
            window_secs: minutes(10),
            ..CorrelationRules::default()
        };
        let first = alert("A", "db", Severity::Warning, "08:00");
        let second = alert("B", "db", Severity::Warning, "08:20");
        let third = alert("C", "db", Severity::Error, "08:21");
        let mut correlator = Correlator::given(rules);
        let waited: Vec<Vec<Event>> = [&first, &second, &third]
            .into_iter()
            .map(|s| correlator.when(s))
            .collect();

        // Act
        let events = correlator.when(&alert("D", "db", Severity::Warning, "08:22"));

        // Assert
        assert!(waited.iter().all(Vec::is_empty), "two in the window wait");
        assert_eq!(
            names(&events),
            [
                "IncidentOpened",
                "SignalAttached",
                "SignalAttached",
                "SignalAttached"
            ]
        );
        let Event::IncidentOpened(opened) = &events[0] else {
            unreachable!()
        };
        assert_eq!(opened.severity, Severity::Error);
        assert_eq!(
            opened.rule,
            format!(
                "correlated by {RULE}, rolling 10m window, once 3 signals arrived within the rolling 10m window"
            )
        );
        assert_eq!(
            events[1..]
                .iter()
                .map(|e| attached(e).signal_id)
                .collect::<Vec<_>>(),
            [
                second.instance_id("acme"),
                third.instance_id("acme"),
                alert("D", "db", Severity::Warning, "08:22").instance_id("acme")
            ]
        );
        assert_eq!(
            attached(&events[1]).explanation,
            format!(
                "key service=db (rule: {RULE}) waited for 3 signals within the rolling 10m window"
            )
        );
        assert_eq!(
            attached(&events[3]).explanation,
            format!(
                "signal 3 of key service=db (rule: {RULE}) within the rolling 10m window: the threshold opened the incident"
            )
        );
        let forgotten = correlator
            .batch
            .signal("acme", first.instance_id("acme"))
            .unwrap();
        assert_eq!((forgotten.incident_id, &forgotten.pending), (None, &None));
    }

    #[test]
    fn a_signal_after_the_resolve_reopens_the_incident_inside_the_reopen_window() {
        // Arrange: no grace; the alert resolves at 10:00.
        let rules = CorrelationRules {
            resolve_grace_secs: 0,
            ..CorrelationRules::default()
        };
        let down = alert("Down", "api", Severity::Critical, "08:00");
        let mut correlator = Correlator::given(rules).after(&[&down]);
        let resolve = correlator.when(&resolved(&down, "10:00"));
        let incident = correlator.incident("api").id;
        let again = alert("Down", "api", Severity::Critical, "10:20");

        // Act
        let events = correlator.when(&again);

        // Assert
        assert_eq!(names(&resolve), ["SignalResolved", "IncidentResolved"]);
        let [
            Event::IncidentReopened(reopened),
            Event::SignalAttached(joined),
        ] = events.as_slice()
        else {
            panic!("reopened and attached: {:?}", names(&events));
        };
        assert_eq!(
            reopened,
            &IncidentReopened {
                incident_id: incident,
                actor: CORRELATOR.into(),
                reason: "a new alert of service=api fired within the reopen window".into(),
                to: IncidentState::Detected,
                signal_id: Some(again.instance_id("acme")),
                note: None,
            }
        );
        assert_eq!(
            joined.explanation,
            format!(
                "same key service=api (rule: {RULE}), 20m after the incident resolved, within its 1h reopen window"
            )
        );
        let state = correlator.incident("api");
        assert_eq!(
            (state.state, state.generation),
            (IncidentState::Detected, 1)
        );
    }

    #[test]
    fn a_signal_after_the_reopen_window_opens_a_new_incident() {
        // Arrange
        let rules = CorrelationRules {
            resolve_grace_secs: 0,
            ..CorrelationRules::default()
        };
        let down = alert("Down", "api", Severity::Critical, "08:00");
        let mut correlator = Correlator::given(rules).after(&[&down, &resolved(&down, "10:00")]);
        let first = correlator.incident("api").id;

        // Act: an hour and a minute after the resolve.
        let events = correlator.when(&alert("Down", "api", Severity::Critical, "11:01"));

        // Assert
        assert_eq!(names(&events), ["IncidentOpened", "SignalAttached"]);
        assert_ne!(attached(&events[1]).incident_id, first);
        let old = correlator.batch.incident("acme", first).unwrap();
        assert_eq!(old.state, IncidentState::Resolved);
    }

    #[test]
    fn the_last_alert_resolving_starts_the_grace_and_an_alert_after_it_resolves_then_reopens() {
        // Arrange: a five-minute grace from 10:00.
        let down = alert("Down", "queue", Severity::Critical, "08:00");
        let mut correlator = Correlator::given(CorrelationRules::default()).after(&[&down]);
        let resolve = correlator.when(&resolved(&down, "10:00"));
        let waiting = correlator.incident("queue").clone();

        // Act
        let events = correlator.when(&alert("Down", "queue", Severity::Critical, "10:20"));

        // Assert: nothing resolves until the grace ran out; then the resolve is dated at its end
        // and is the very event the timer would have appended.
        let [Event::SignalResolved(ended)] = resolve.as_slice() else {
            panic!("one SignalResolved: {:?}", names(&resolve));
        };
        assert_eq!(
            (ended.firing_left, ended.incident_severity),
            (0, Severity::Critical)
        );
        assert_eq!(waiting.resolve_due, Some(at("2026-11-22T10:05:00Z")));
        assert_eq!(
            names(&events),
            ["IncidentResolved", "IncidentReopened", "SignalAttached"]
        );
        let Event::IncidentResolved(by_correlator) = &events[0] else {
            unreachable!()
        };
        assert_eq!(
            by_correlator.reason,
            "every attached alert resolved and none fired again within the grace period"
        );
        let by_timer = resolve_after_grace(&mut waiting.clone()).unwrap();
        let mut replay = Correlator::given(CorrelationRules::default()).after(&[&down]);
        replay.decide(&resolved(&down, "10:00"));
        let first = replay.decide(&alert("Down", "queue", Severity::Critical, "10:20"));
        assert_eq!(first[0].envelope.id, by_timer.envelope.id);
        assert_eq!(first[0].envelope.occurred_at, at("2026-11-22T10:05:00Z"));
    }

    #[test]
    fn an_alert_within_the_grace_keeps_the_incident_open_and_nothing_is_due() {
        // Arrange: a window long enough for 10:03 to join.
        let rules = CorrelationRules {
            window_secs: minutes(240),
            ..CorrelationRules::default()
        };
        let down = alert("Down", "queue", Severity::Critical, "08:00");
        let mut correlator = Correlator::given(rules).after(&[&down, &resolved(&down, "10:00")]);

        // Act
        let events = correlator.when(&alert("Slow", "queue", Severity::Warning, "10:03"));

        // Assert
        assert_eq!(names(&events), ["SignalAttached"]);
        let mut incident = correlator.incident("queue").clone();
        assert_eq!(incident.resolve_due, None);
        assert!(resolve_after_grace(&mut incident).is_none());
        assert_eq!(incident.state, IncidentState::Detected);
    }

    #[test]
    fn ha_duplicates_of_a_firing_alert_attach_nothing() {
        // Arrange
        let down = alert("Down", "web", Severity::Error, "08:00");
        let mut correlator = Correlator::given(CorrelationRules::default()).after(&[&down]);

        // Act
        let copy = correlator.when(&down);

        // Assert
        assert!(copy.is_empty());
        assert_eq!(correlator.incident("web").firing.total(), 1);
    }

    #[test]
    fn a_stale_firing_after_the_resolve_changes_nothing() {
        // Arrange
        let down = alert("Down", "web", Severity::Error, "08:00");
        let mut correlator = Correlator::given(CorrelationRules::default())
            .after(&[&down, &resolved(&down, "10:00")]);
        let before = correlator.incident("web").clone();

        // Act
        let stale = correlator.when(&down);

        // Assert
        assert!(stale.is_empty());
        assert_eq!(correlator.incident("web"), &before);
    }

    #[test]
    fn a_resolve_before_the_firing_is_remembered_and_the_late_firing_opens_nothing() {
        // Arrange
        let late = alert("Late", "ghost", Severity::Critical, "08:00");
        let mut correlator = Correlator::given(CorrelationRules::default());
        let early = correlator.when(&resolved(&late, "10:00"));

        // Act
        let events = correlator.when(&late);

        // Assert
        assert!(early.is_empty());
        assert!(events.is_empty());
        let record = correlator
            .batch
            .signal("acme", late.instance_id("acme"))
            .unwrap();
        assert_eq!(
            (record.status, record.incident_id),
            (SignalStatus::Resolved, None)
        );
    }

    #[test]
    fn the_correlator_never_joins_nor_reopens_an_incident_a_person_reviewed() {
        // Arrange: resolved and reviewed by hand, well inside the window.
        let down = alert("Down", "pay", Severity::Critical, "08:00");
        let mut correlator = Correlator::given(CorrelationRules::default()).after(&[&down]);
        let reviewed = correlator.incident("pay").id;
        correlator.person(
            "pay",
            IncidentEvent::Resolved {
                by: By::Person,
                at: at("2026-11-22T08:05:00Z"),
            },
        );
        correlator.person(
            "pay",
            IncidentEvent::Transitioned {
                from: IncidentState::Resolved,
                to: IncidentState::Learned,
                at: at("2026-11-22T08:06:00Z"),
            },
        );

        // Act
        let events = correlator.when(&alert("Down2", "pay", Severity::Critical, "08:10"));
        let late_resolve = correlator.when(&resolved(&down, "08:15"));

        // Assert: a new incident; the reviewed one only records its alert's end.
        assert_eq!(names(&events), ["IncidentOpened", "SignalAttached"]);
        assert_ne!(attached(&events[1]).incident_id, reviewed);
        assert_eq!(names(&late_resolve), ["SignalResolved"]);
        let old = correlator.batch.incident("acme", reviewed).unwrap();
        assert_eq!(old.state, IncidentState::Learned);
        assert_eq!(old.resolve_due, None);
    }

    #[test]
    fn a_hand_resolved_incident_is_reopened_by_its_keys_next_alert_within_the_window() {
        // Arrange
        let down = alert("Down", "pay", Severity::Critical, "08:00");
        let mut correlator = Correlator::given(CorrelationRules::default()).after(&[&down]);
        correlator.person(
            "pay",
            IncidentEvent::Resolved {
                by: By::Person,
                at: at("2026-11-22T08:05:00Z"),
            },
        );

        // Act
        let events = correlator.when(&alert("Down2", "pay", Severity::Critical, "08:30"));

        // Assert
        assert_eq!(names(&events), ["IncidentReopened", "SignalAttached"]);
        assert!(
            attached(&events[1])
                .explanation
                .contains("25m after the incident resolved")
        );
    }

    #[test]
    fn severity_is_the_highest_of_the_firing_alerts() {
        // Arrange
        let warning = alert("Slow", "web", Severity::Warning, "08:00");
        let critical = alert("Down", "web", Severity::Critical, "08:01");
        let mut correlator =
            Correlator::given(CorrelationRules::default()).after(&[&warning, &critical]);

        // Act
        let events = correlator.when(&resolved(&critical, "09:00"));

        // Assert
        let [Event::SignalResolved(ended)] = events.as_slice() else {
            panic!("one SignalResolved: {:?}", names(&events));
        };
        assert_eq!(
            ended,
            &SignalResolved {
                incident_id: correlator.incident("web").id,
                signal_id: critical.instance_id("acme"),
                ends_at: Some(at("2026-11-22T09:00:00Z")),
                incident_severity: Severity::Warning,
                firing_left: 1,
            }
        );
    }

    #[test]
    fn later_signals_of_a_batch_see_what_earlier_ones_decided_and_each_change_is_saved_once() {
        // Arrange: nothing stored yet.
        let mut correlator = Correlator::given(CorrelationRules::default());
        let storm: Vec<SignalReceived> = (0..5)
            .map(|i| alert(&format!("A{i}"), "storm", Severity::Warning, "08:00"))
            .collect();

        // Act
        let events: Vec<Event> = storm.iter().flat_map(|s| correlator.when(s)).collect();

        // Assert
        assert_eq!(names(&events)[..2], ["IncidentOpened", "SignalAttached"]);
        assert_eq!(names(&events).len(), 6, "one opening, five attachments");
        let changes = correlator.batch.changes();
        assert_eq!(changes.incidents.len(), 1);
        assert_eq!(changes.incidents[0].firing.total(), 5);
        assert_eq!(changes.signals.len(), 5);
    }

    #[test]
    fn deciding_the_same_signals_again_gives_the_same_events_byte_for_byte() {
        // Arrange
        let down = alert("Down", "api", Severity::Critical, "08:00");
        let signals = [
            down.clone(),
            alert("Slow", "api", Severity::Warning, "08:10"),
            resolved(&down, "09:00"),
        ];
        let run = || {
            let mut correlator = Correlator::given(CorrelationRules::default());
            signals
                .iter()
                .flat_map(|s| correlator.decide(s))
                .map(|d| (d.subject, d.envelope.to_bytes()))
                .collect::<Vec<_>>()
        };

        // Act
        let first = run();
        let second = run();

        // Assert
        assert_eq!(first, second);
        let attached = &Correlator::given(CorrelationRules::default()).decide(&down)[1];
        let incident = attached.envelope.correlation_id.unwrap();
        assert_eq!(
            attached.envelope.id,
            derived_id(
                attached.envelope.occurred_at,
                &[
                    "decision",
                    "acme",
                    &incident.to_string(),
                    "SignalAttached",
                    &down.instance_id("acme").to_string()
                ]
            )
        );
    }

    #[test]
    fn deciding_twice_gives_the_same_event_ids() {
        let at = at("2026-11-22T08:00:00Z");
        let incident = Uuid::nil();
        let payload = IncidentResolved {
            incident_id: incident,
            actor: CORRELATOR.into(),
            reason: "r".into(),
            note: None,
        };

        let a = Decision::new("acme", incident, &payload, at, &["1"], None);
        let b = Decision::new("acme", incident, &payload, at, &["1"], None);
        let c = Decision::new("acme", incident, &payload, at, &["2"], None);

        assert_eq!(a.envelope.id, b.envelope.id);
        assert_ne!(a.envelope.id, c.envelope.id);
        assert_eq!(a.subject, format!("incidents.acme.{incident}"));
    }

    #[test]
    fn the_default_rule_falls_back_from_service_to_job_app_namespace_then_group_key() {
        let rules = CorrelationRules::default();
        let key = |labels: &[(&str, &str)]| {
            let signal = SignalReceived {
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                group_key: Some("{}:g".into()),
                ..alert("X", "x", Severity::Info, "08:00")
            };
            correlation_key(&rules, &signal).0
        };

        assert_eq!(key(&[("service", "api"), ("job", "x")]), "service=api");
        assert_eq!(key(&[("job", "node"), ("app", "y")]), "job=node");
        assert_eq!(key(&[("app", "web")]), "app=web");
        assert_eq!(key(&[("namespace", "prod")]), "namespace=prod");
        assert_eq!(key(&[("alertname", "X")]), "group={}:g");
    }

    #[test]
    fn tenant_rules_key_on_every_listed_label_present() {
        let rules = CorrelationRules {
            group_by: vec!["cluster".into(), "alertname".into()],
            ..CorrelationRules::default()
        };
        let signal = |labels: &[(&str, &str)]| SignalReceived {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            group_key: None,
            fingerprint: "fp".into(),
            ..alert("X", "x", Severity::Info, "08:00")
        };

        let (key, rule) =
            correlation_key(&rules, &signal(&[("alertname", "Down"), ("cluster", "eu")]));

        assert_eq!(key, "cluster=eu,alertname=Down");
        assert!(rule.contains("cluster, alertname"));
        assert_eq!(
            correlation_key(&rules, &signal(&[("service", "x")])).0,
            "fingerprint=fp"
        );
    }

    #[test]
    fn a_persons_transition_is_folded_as_the_read_model_folds_it() {
        // Arrange
        let mut correlator = Correlator::given(CorrelationRules::default()).after(&[&alert(
            "Down",
            "api",
            Severity::Critical,
            "08:00",
        )]);
        let event = Event::IncidentTransitioned(IncidentTransitioned {
            incident_id: correlator.incident("api").id,
            from: IncidentState::Detected,
            to: IncidentState::Acknowledged,
            actor: "bob".into(),
            note: None,
        });

        // Act
        let change = IncidentEvent::of(&event, at("2026-11-22T09:00:00Z")).unwrap();
        correlator.person("api", change);

        // Assert
        assert_eq!(
            correlator.incident("api").state,
            IncidentState::Acknowledged
        );
    }
}
