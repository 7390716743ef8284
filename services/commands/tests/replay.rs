//! The correlator's decider replays what the correlator appended before it was pure.
//!
//! `fixtures/correlator-decisions.txt` holds every decision (subject, then the envelope as
//! appended) the correlator service made for the scenario below, recorded from a real NATS and
//! Postgres run of the implementation that read and wrote its store while deciding: rolling and
//! fixed windows, HA duplicates, a stale firing, a resolve before its firing, a grace and an alert
//! after it, a storm in one batch, reopens inside and outside the window, the threshold, and a
//! person's review. Deciding the same signals in memory must give the same events, byte for
//! byte, so replaying existing streams re-decides identical events.

use chrono::{DateTime, Duration, Utc};
use copilot_commands::{
    correlation::Batch,
    incident::{By, IncidentEvent},
};
use copilot_events::{
    CorrelationRules, Envelope, Headers, IncidentState, Severity, SignalReceived, SignalSource,
    SignalStatus, WindowKind, derived_id,
};

const RECORDED: &str = include_str!("fixtures/correlator-decisions.txt");

fn at(text: &str) -> DateTime<Utc> {
    text.parse().unwrap()
}

fn signal(
    status: SignalStatus,
    name: &str,
    service: &str,
    severity: Severity,
    starts: &str,
    ends: Option<&str>,
) -> SignalReceived {
    let raw = serde_json::value::to_raw_value(&serde_json::json!({"n": name})).unwrap();
    SignalReceived {
        source: SignalSource::Alertmanager,
        status,
        fingerprint: format!("{name}-{service}"),
        labels: [
            ("alertname".to_owned(), name.to_owned()),
            ("service".to_owned(), service.to_owned()),
        ]
        .into(),
        annotations: Default::default(),
        starts_at: at(starts),
        ends_at: ends.map(at),
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

/// The correlator over the scenario's three tenants, each signal received one second after the
/// one before, as the recording appended them.
struct Replay {
    batch: Batch,
    received: i64,
    decided: Vec<String>,
}

impl Replay {
    fn rules(tenant: &str) -> CorrelationRules {
        match tenant {
            "acme" => CorrelationRules {
                resolve_grace_secs: 300,
                window_secs: 600,
                reopen_window_secs: 3600,
                ..CorrelationRules::default()
            },
            "globex" => CorrelationRules {
                resolve_grace_secs: 0,
                window_secs: 600,
                window_kind: WindowKind::Fixed,
                ..CorrelationRules::default()
            },
            _ => CorrelationRules {
                min_signals: 3,
                window_secs: 600,
                resolve_grace_secs: 0,
                reopen_window_secs: 600,
                ..CorrelationRules::default()
            },
        }
    }

    fn send(&mut self, tenant: &str, signal: SignalReceived) {
        self.received += 1;
        let received = at("2026-11-22T12:00:00Z") + Duration::seconds(self.received);
        let id = derived_id(received, &["golden", &self.received.to_string()]);
        let envelope = Envelope::with_id(id, tenant, &signal, received, Headers::default());
        for decision in self.batch.decide(&Self::rules(tenant), &envelope, &signal) {
            let bytes = decision.envelope.to_bytes();
            self.decided.push(format!(
                "{} {}",
                decision.subject,
                String::from_utf8(bytes).unwrap()
            ));
        }
    }
}

#[test]
fn deciding_the_recorded_signals_again_gives_the_recorded_events_byte_for_byte() {
    // Arrange
    use Severity::*;
    use SignalStatus::{Firing as F, Resolved as R};
    let mut r = Replay {
        batch: Batch::default(),
        received: 0,
        decided: Vec::new(),
    };
    let t = |hhmm: &str| format!("2026-11-22T{hhmm}:00Z");
    let end = Some("2026-11-22T10:00:00Z");

    // Act
    // acme: rolling window, joins, HA duplicates, the grace, an alert after it.
    r.send("acme", signal(F, "A1", "a", Warning, &t("08:00"), None));
    r.send("acme", signal(F, "A2", "a", Critical, &t("08:05"), None));
    r.send("acme", signal(F, "A1", "a", Warning, &t("08:00"), None));
    r.send("acme", signal(F, "A4", "a", Error, &t("08:14"), None));
    r.send("acme", signal(R, "A2", "a", Critical, &t("08:05"), end));
    r.send("acme", signal(R, "A1", "a", Warning, &t("08:00"), end));
    let a4_end = t("10:01");
    r.send(
        "acme",
        signal(R, "A4", "a", Error, &t("08:14"), Some(&a4_end)),
    );
    r.send("acme", signal(F, "A2", "a", Critical, &t("08:05"), None));
    r.send("acme", signal(F, "A3", "a", Warning, &t("10:20"), None));
    r.send("acme", signal(R, "G", "ghost", Critical, &t("08:00"), end));
    r.send("acme", signal(F, "G", "ghost", Critical, &t("08:00"), None));
    // A storm, then every alert of it resolved.
    for status in [F, R] {
        for i in 0..30 {
            let severity = if i == 7 { Critical } else { Info };
            let starts = t(&format!("08:{i:02}"));
            let ends = (status == R).then_some(end).flatten();
            r.send(
                "acme",
                signal(status, &format!("S{i}"), "storm", severity, &starts, ends),
            );
        }
    }
    // globex: fixed window, no grace, a reopen and a new incident after the reopen window.
    r.send("globex", signal(F, "B1", "b", Warning, &t("08:00"), None));
    r.send("globex", signal(F, "B2", "b", Error, &t("08:09"), None));
    r.send("globex", signal(F, "B3", "b", Info, &t("08:11"), None));
    r.send("globex", signal(R, "B1", "b", Warning, &t("08:00"), end));
    r.send("globex", signal(R, "B2", "b", Error, &t("08:09"), end));
    r.send("globex", signal(R, "B3", "b", Info, &t("08:11"), end));
    r.send("globex", signal(F, "B4", "b", Info, &t("10:30"), None));
    let b4_end = t("10:40");
    r.send(
        "globex",
        signal(R, "B4", "b", Info, &t("10:30"), Some(&b4_end)),
    );
    r.send("globex", signal(F, "B5", "b", Info, &t("13:00"), None));
    // initech: three signals within ten minutes.
    r.send("initech", signal(F, "C1", "c", Warning, &t("08:00"), None));
    r.send("initech", signal(F, "C2", "c", Warning, &t("08:20"), None));
    r.send("initech", signal(F, "C3", "c", Error, &t("08:21"), None));
    r.send("initech", signal(F, "C4", "c", Warning, &t("08:22"), None));
    r.send("initech", signal(F, "C5", "c", Critical, &t("08:23"), None));
    r.send("initech", signal(R, "C1", "c", Warning, &t("08:00"), end));
    r.send("initech", signal(F, "D1", "d", Warning, &t("08:00"), None));
    r.send("initech", signal(R, "D1", "d", Warning, &t("08:00"), end));
    r.send("initech", signal(F, "D2", "d", Warning, &t("08:01"), None));
    // A person resolves and reviews an incident; the next alert of its key opens a new one.
    r.send("acme", signal(F, "R1", "rev", Warning, &t("08:00"), None));
    let reviewed = r.decided.len();
    let incident = r.decided[reviewed - 1]
        .split(' ')
        .next()
        .and_then(|subject| subject.rsplit('.').next())
        .unwrap()
        .parse()
        .unwrap();
    let now = at("2026-11-26T11:09:30Z");
    for event in [
        IncidentEvent::Resolved {
            by: By::Person,
            at: now,
        },
        IncidentEvent::Transitioned {
            from: IncidentState::Resolved,
            to: IncidentState::Learned,
            at: now,
        },
    ] {
        assert!(r.batch.follow("acme", incident, &event));
    }
    r.send("acme", signal(F, "R2", "rev", Warning, &t("08:10"), None));

    // Assert
    let recorded: Vec<&str> = RECORDED.lines().collect();
    assert_eq!(r.decided.len(), recorded.len());
    for (i, (decided, recorded)) in r.decided.iter().zip(&recorded).enumerate() {
        assert_eq!(decided, recorded, "decision {i}");
    }
}
