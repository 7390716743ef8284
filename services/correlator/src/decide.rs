//! One signal, one decision. Times are the alert's own (its `startsAt`, or `endsAt` for a
//! resolve), never the wall clock, so re-deciding the same stream gives the same incidents.

use chrono::{DateTime, Duration, Utc};
use copilot_events::{
    CORRELATOR, CorrelationRules, Envelope, EventPayload, Headers, IncidentOpened,
    IncidentReopened, IncidentResolved, IncidentState, Severity, SignalAttached, SignalReceived,
    SignalResolved, SignalStatus, TraceParent, WindowKind, derived_id, subjects,
};
use copilot_store::{CorrelatorIncident, CorrelatorSignal, Store, Tx};
use uuid::Uuid;

/// An event the correlator decided to append.
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

fn severity_of(rank: i16) -> Severity {
    [
        Severity::Unknown,
        Severity::Info,
        Severity::Warning,
        Severity::Error,
        Severity::Critical,
    ]
    .get(rank.clamp(0, 4) as usize)
    .copied()
    .unwrap_or(Severity::Unknown)
}

/// What a waiting signal needs for its `SignalAttached` once its key's threshold is reached.
#[derive(serde::Serialize, serde::Deserialize)]
struct Waiting {
    fingerprint: String,
    title: String,
    severity: Severity,
    starts_at: DateTime<Utc>,
    service: Option<String>,
    labels: std::collections::BTreeMap<String, String>,
    received_at: DateTime<Utc>,
}

/// Decides what one signal means and records it in the correlator's state (inside `tx`).
pub async fn decide(
    store: &Store,
    tx: &mut Tx<'_>,
    rules: &CorrelationRules,
    envelope: &Envelope,
    signal: &SignalReceived,
    out: &mut Vec<Decision>,
) -> copilot_store::Result<()> {
    let tenant = envelope.tenant.as_str();
    let signal_id = signal.instance_id(tenant);
    let known = store.correlator_signal(tx, tenant, signal_id).await?;
    match signal.status {
        SignalStatus::Firing => {
            // A repeat, or a stale firing after the resolve (Alertmanager HA): nothing new.
            if known.is_some() {
                return Ok(());
            }
            fire(store, tx, rules, envelope, signal, signal_id, out).await
        }
        SignalStatus::Resolved => {
            let at = signal.ends_at.unwrap_or(envelope.occurred_at);
            match known {
                Some(mut s) if s.status == "firing" => {
                    s.status = "resolved".into();
                    s.pending = None;
                    store.save_correlator_signal(tx, &s).await?;
                    if let Some(incident_id) = s.incident_id {
                        resolve_signal(
                            store,
                            tx,
                            rules,
                            envelope,
                            signal,
                            incident_id,
                            (signal_id, s.severity_rank),
                            at,
                            out,
                        )
                        .await?;
                    }
                    Ok(())
                }
                Some(_) => Ok(()),
                None => {
                    // Resolved before it was ever seen firing (out-of-order delivery): remember
                    // it, so the late firing copy changes nothing.
                    let (key, _) = correlation_key(rules, signal);
                    store
                        .save_correlator_signal(
                            tx,
                            &CorrelatorSignal {
                                tenant: tenant.to_owned(),
                                signal_id,
                                incident_id: None,
                                key,
                                status: "resolved".into(),
                                severity_rank: signal.severity as i16,
                                at,
                                pending: None,
                            },
                        )
                        .await
                }
            }
        }
    }
}

async fn fire(
    store: &Store,
    tx: &mut Tx<'_>,
    rules: &CorrelationRules,
    envelope: &Envelope,
    signal: &SignalReceived,
    signal_id: Uuid,
    out: &mut Vec<Decision>,
) -> copilot_store::Result<()> {
    let tenant = envelope.tenant.as_str();
    let (key, rule) = correlation_key(rules, signal);
    let at = signal.starts_at;
    let window = Duration::seconds(rules.window_secs as i64);
    let mut record = CorrelatorSignal {
        tenant: tenant.to_owned(),
        signal_id,
        incident_id: None,
        key: key.clone(),
        status: "firing".into(),
        severity_rank: signal.severity as i16,
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
    if let Some(mut incident) = store.latest_correlator_incident(tx, tenant, &key).await? {
        // The grace ran out before this alert: resolve first, exactly as the timer would (same
        // event id), so the decision does not depend on whether the timer got there first.
        if incident.state == "open" && incident.resolve_due.is_some_and(|due| due <= at) {
            out.push(resolve_after_grace(&mut incident));
        }
        let since = match rules.window_kind {
            WindowKind::Rolling => incident.last_signal_at.max(incident.window_from),
            WindowKind::Fixed => incident.window_from,
        };
        let reopen_until = incident
            .resolved_at
            .map(|r| r + Duration::seconds(rules.reopen_window_secs as i64));
        let joins = incident.state == "open" && at <= since + window;
        let reopens = incident.state == "resolved" && reopen_until.is_some_and(|until| at <= until);
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
                incident.generation += 1;
                incident.state = "open".into();
                incident.resolved_at = None;
                incident.window_from = at;
                let signal_text = signal_id.to_string();
                out.push(Decision::new(
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
            }
            incident.last_signal_at = incident.last_signal_at.max(at);
            incident.resolve_due = None;
            add_firing(&mut incident, record.severity_rank);
            record.incident_id = Some(incident.id);
            store.save_correlator_signal(tx, &record).await?;
            store.save_correlator_incident(tx, &incident).await?;
            let severity = severity_now(&incident);
            attach(
                tenant,
                incident.id,
                signal_id,
                &waiting,
                severity,
                explanation,
                envelope,
                out,
            );
            return Ok(());
        }
    }
    // A new incident, once the key has enough signals within the window.
    let mut group = Vec::new();
    if rules.min_signals > 1 {
        let fresh = store
            .take_fresh_pending(tx, tenant, &key, at - window)
            .await?;
        if (fresh.len() as u32 + 1) < rules.min_signals {
            record.pending = Some(serde_json::to_value(&waiting).expect("serializes"));
            return store.save_correlator_signal(tx, &record).await;
        }
        group = fresh;
    }
    let first_at = group.first().map_or(at, |s| s.at.min(at));
    let incident_id = derived_id(
        first_at,
        &["incident", tenant, &key, &signal_id.to_string()],
    );
    let mut severity_rank = signal.severity as i16;
    for s in &group {
        severity_rank = severity_rank.max(s.severity_rank);
    }
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
    out.push(Decision::new(
        tenant,
        incident_id,
        &IncidentOpened {
            incident_id,
            key: key.clone(),
            title: signal.title.clone(),
            service: signal.service.clone(),
            severity: severity_of(severity_rank),
            labels: signal.labels.clone(),
            rule: rule_words,
        },
        envelope.occurred_at,
        &[],
        Some(envelope),
    ));
    let mut incident = CorrelatorIncident {
        tenant: tenant.to_owned(),
        id: incident_id,
        key: key.clone(),
        state: "open".into(),
        opened_at: first_at,
        window_from: first_at,
        last_signal_at: at.max(group.iter().map(|s| s.at).max().unwrap_or(at)),
        resolved_at: None,
        resolve_due: None,
        generation: 0,
        firing: vec![0; 5],
        top_rank: 0,
    };
    for mut waiting_signal in group {
        let Some(w) = waiting_signal
            .pending
            .take()
            .and_then(|p| serde_json::from_value::<Waiting>(p).ok())
        else {
            continue;
        };
        add_firing(&mut incident, waiting_signal.severity_rank);
        waiting_signal.incident_id = Some(incident_id);
        store.save_correlator_signal(tx, &waiting_signal).await?;
        let explanation = format!(
            "key {key} (rule: {rule}) waited for {} signals within the {}",
            rules.min_signals,
            window_words(rules)
        );
        attach(
            tenant,
            incident_id,
            waiting_signal.signal_id,
            &w,
            severity_now(&incident),
            explanation,
            envelope,
            out,
        );
    }
    add_firing(&mut incident, record.severity_rank);
    store.save_correlator_incident(tx, &incident).await?;
    record.incident_id = Some(incident_id);
    store.save_correlator_signal(tx, &record).await?;
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
        tenant,
        incident_id,
        signal_id,
        &waiting,
        severity_now(&incident),
        explanation,
        envelope,
        out,
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn attach(
    tenant: &str,
    incident_id: Uuid,
    signal_id: Uuid,
    w: &Waiting,
    incident_severity: Severity,
    explanation: String,
    cause: &Envelope,
    out: &mut Vec<Decision>,
) {
    let signal_text = signal_id.to_string();
    out.push(Decision::new(
        tenant,
        incident_id,
        &SignalAttached {
            incident_id,
            signal_id,
            fingerprint: w.fingerprint.clone(),
            title: w.title.clone(),
            severity: w.severity,
            starts_at: w.starts_at,
            incident_severity,
            explanation,
        },
        cause.occurred_at,
        &[&signal_text],
        Some(cause),
    ));
}

fn add_firing(incident: &mut CorrelatorIncident, rank: i16) {
    let rank = rank.clamp(0, 4);
    incident.firing.resize(5, 0);
    incident.firing[rank as usize] += 1;
    incident.top_rank = incident.top_rank.max(rank);
}

fn remove_firing(incident: &mut CorrelatorIncident, rank: i16) {
    incident.firing.resize(5, 0);
    let count = &mut incident.firing[rank.clamp(0, 4) as usize];
    *count = (*count - 1).max(0);
}

/// The highest severity among the incident's firing alerts; when none fires, the highest it had.
fn severity_now(incident: &CorrelatorIncident) -> Severity {
    let firing = incident
        .firing
        .iter()
        .rposition(|count| *count > 0)
        .map(|rank| rank as i16);
    severity_of(firing.unwrap_or(incident.top_rank))
}

#[allow(clippy::too_many_arguments)]
async fn resolve_signal(
    store: &Store,
    tx: &mut Tx<'_>,
    rules: &CorrelationRules,
    envelope: &Envelope,
    signal: &SignalReceived,
    incident_id: Uuid,
    (signal_id, rank): (Uuid, i16),
    at: DateTime<Utc>,
    out: &mut Vec<Decision>,
) -> copilot_store::Result<()> {
    let tenant = envelope.tenant.as_str();
    let Some(mut incident) = store.correlator_incident(tx, tenant, incident_id).await? else {
        return Ok(());
    };
    remove_firing(&mut incident, rank);
    let firing: i32 = incident.firing.iter().sum();
    let signal_text = signal_id.to_string();
    out.push(Decision::new(
        tenant,
        incident_id,
        &SignalResolved {
            incident_id,
            signal_id,
            ends_at: signal.ends_at,
            incident_severity: severity_now(&incident),
            firing_left: firing as u32,
        },
        envelope.occurred_at,
        &[&signal_text],
        Some(envelope),
    ));
    if firing > 0 || incident.state != "open" {
        return store.save_correlator_incident(tx, &incident).await;
    }
    let due = at + Duration::seconds(rules.resolve_grace_secs as i64);
    if rules.resolve_grace_secs == 0 {
        incident.state = "resolved".into();
        incident.resolved_at = Some(due);
        incident.resolve_due = None;
        let generation = incident.generation.to_string();
        out.push(Decision::new(
            tenant,
            incident_id,
            &IncidentResolved {
                incident_id,
                actor: CORRELATOR.to_owned(),
                reason: "every attached alert resolved".to_owned(),
                note: None,
            },
            envelope.occurred_at,
            &["resolved", &generation],
            Some(envelope),
        ));
    } else {
        incident.resolve_due = Some(due);
    }
    store.save_correlator_incident(tx, &incident).await
}

/// Records a lifecycle change a person made: `resolved` (with when), `open` or `closed`.
pub async fn follow(
    store: &Store,
    tx: &mut Tx<'_>,
    tenant: &str,
    incident_id: Uuid,
    state: &str,
    at: Option<DateTime<Utc>>,
) -> copilot_store::Result<()> {
    let Some(mut incident) = store.correlator_incident(tx, tenant, incident_id).await? else {
        return Ok(());
    };
    incident.state = state.to_owned();
    incident.resolve_due = None;
    match state {
        "resolved" => incident.resolved_at = at,
        "open" => {
            // Reopened by hand: its windows start again from then.
            incident.resolved_at = None;
            incident.generation += 1;
            if let Some(at) = at {
                incident.window_from = incident.window_from.max(at);
                incident.last_signal_at = incident.last_signal_at.max(at);
            }
        }
        _ => {}
    }
    store.save_correlator_incident(tx, &incident).await
}

/// The resolve of an open incident whose grace ran out after its last alert resolved. The timer
/// and a later alert decide it alike: same time (the end of the grace), same id.
pub fn resolve_after_grace(incident: &mut CorrelatorIncident) -> Decision {
    let due = incident
        .resolve_due
        .take()
        .expect("only incidents with a resolve due are resolved after their grace");
    let generation = incident.generation.to_string();
    incident.state = "resolved".into();
    incident.resolved_at = Some(due);
    Decision::new(
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
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(labels: &[(&str, &str)], group_key: Option<&str>) -> SignalReceived {
        let raw = serde_json::value::to_raw_value(&serde_json::json!({})).unwrap();
        SignalReceived {
            source: copilot_events::SignalSource::Alertmanager,
            status: SignalStatus::Firing,
            fingerprint: "fp".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: Default::default(),
            starts_at: "2026-11-22T08:00:00Z".parse().unwrap(),
            ends_at: None,
            generator_url: None,
            group_key: group_key.map(str::to_owned),
            receiver: None,
            severity: Severity::Warning,
            service: None,
            title: "t".into(),
            values: None,
            raw,
        }
    }

    #[test]
    fn the_default_rule_falls_back_from_service_to_job_app_namespace_then_group_key() {
        let rules = CorrelationRules::default();
        let key =
            |labels: &[(&str, &str)]| correlation_key(&rules, &signal(labels, Some("{}:g"))).0;

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

        let (key, rule) = correlation_key(
            &rules,
            &signal(&[("alertname", "Down"), ("cluster", "eu")], None),
        );

        assert_eq!(key, "cluster=eu,alertname=Down");
        assert!(rule.contains("cluster, alertname"));
        assert_eq!(
            correlation_key(&rules, &signal(&[("service", "x")], None)).0,
            "fingerprint=fp"
        );
    }

    #[test]
    fn deciding_twice_gives_the_same_event_ids() {
        let at = "2026-11-22T08:00:00Z".parse().unwrap();
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
}
