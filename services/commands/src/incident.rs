//! The incident aggregate: one type and one state machine for everything that changes an
//! incident, whoever changes it. The correlator folds its own decisions into it and follows
//! people's; the API decides people's lifecycle commands with it; the projector's read model
//! follows the same rules (see [`Incident::evolve`]).
//!
//! Pure: no clock, no store, no NATS. [`decide`] turns a person's lifecycle command into the
//! events to append, or a typed refusal; [`evolve`] folds what happened into the state. Times are
//! always given: the correlator's decisions count on the signal clock (when alerts started and
//! ended), so a replay decides the same; people's commands on when they were made.

use chrono::{DateTime, Duration, Utc};
use copilot_events::{
    Event, IncidentReopened, IncidentResolved, IncidentState, IncidentTransitioned, Severity,
    is_system_actor,
};
use uuid::Uuid;

/// An incident as its aggregate: where it stands in its lifecycle, and the bookkeeping the
/// correlator decides on (its window, its firing alerts by severity, its reopens, when it is due
/// to resolve).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    pub tenant: String,
    pub id: Uuid,
    /// The correlation key its signals share, e.g. `service=checkout`.
    pub key: String,
    pub state: IncidentState,
    /// When its first alert started (signal clock).
    pub opened_at: DateTime<Utc>,
    /// Where its window starts: the opening, or the last reopen.
    pub window_from: DateTime<Utc>,
    /// When its latest attached alert started.
    pub last_signal_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// Set while every attached alert has resolved and the grace runs: the incident resolves
    /// then unless an alert fires again.
    pub resolve_due: Option<DateTime<Utc>>,
    /// Reopens so far; a resolve's event id includes it, so each generation resolves once.
    pub generation: u32,
    /// Attached alerts still firing, by severity.
    pub firing: Firing,
    /// The highest severity ever attached.
    pub top: Severity,
}

/// Attached alerts still firing, counted by severity (index: `Severity as usize`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Firing(pub [u32; 5]);

impl Firing {
    pub fn add(&mut self, severity: Severity) {
        self.0[severity as usize] += 1;
    }

    /// One alert of `severity` stopped firing (never below zero).
    pub fn remove(&mut self, severity: Severity) {
        let count = &mut self.0[severity as usize];
        *count = count.saturating_sub(1);
    }

    pub fn total(&self) -> u32 {
        self.0.iter().sum()
    }

    /// The highest severity still firing.
    pub fn highest(&self) -> Option<Severity> {
        self.0
            .iter()
            .rposition(|count| *count > 0)
            .map(|index| Severity::ALL[index])
    }
}

/// Who made a change: a person, or the copilot itself (the correlator's decisions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    Person,
    System,
}

impl By {
    /// A recorded actor as who it is: `system:*` (and the bare names of older events) is the
    /// copilot.
    pub fn of(actor: &str) -> Self {
        if is_system_actor(actor) {
            Self::System
        } else {
            Self::Person
        }
    }
}

/// What happened to an incident, as the aggregate folds it: an INCIDENTS event with the facts it
/// counts on. Most come from the event alone ([`IncidentEvent::of`]); the correlator's opening
/// and a signal's resolve also need what only the correlator knows (when the opening alerts
/// started, the severity the resolved alert fired with, the tenant's grace), so it builds those
/// where it decides them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncidentEvent {
    /// `IncidentOpened`, its window starting `at` (the first opening alert's start).
    Opened {
        tenant: String,
        incident_id: Uuid,
        key: String,
        at: DateTime<Utc>,
    },
    /// `SignalAttached`: an alert of `severity` that started at `starts_at` joined.
    SignalAttached {
        severity: Severity,
        starts_at: DateTime<Utc>,
    },
    /// `SignalResolved`: an attached alert that fired with `severity` ended `at`. Once none
    /// fires, an open incident is due to resolve `grace` later.
    SignalResolved {
        severity: Severity,
        at: DateTime<Utc>,
        grace: Duration,
    },
    /// `IncidentResolved`, `at` its resolve time.
    Resolved { by: By, at: DateTime<Utc> },
    /// `IncidentReopened` into `to`, its window restarting `at`.
    Reopened {
        by: By,
        to: IncidentState,
        at: DateTime<Utc>,
    },
    /// `IncidentTransitioned` (always a person's).
    Transitioned {
        from: IncidentState,
        to: IncidentState,
        at: DateTime<Utc>,
    },
}

impl IncidentEvent {
    /// The aggregate's view of a recorded event that says all it needs, `at` being the
    /// envelope's time: `SignalAttached` and the lifecycle events (`IncidentResolved`,
    /// `IncidentReopened`, `IncidentTransitioned`). `None` for the rest: assignments, notes and
    /// hypotheses do not change the aggregate, and `IncidentOpened` and `SignalResolved` are
    /// folded by the correlator where it decides them.
    pub fn of(event: &Event, at: DateTime<Utc>) -> Option<Self> {
        Some(match event {
            Event::SignalAttached(e) => Self::SignalAttached {
                severity: e.severity,
                starts_at: e.starts_at,
            },
            Event::IncidentResolved(e) => Self::Resolved {
                by: By::of(&e.actor),
                at,
            },
            Event::IncidentReopened(e) => Self::Reopened {
                by: By::of(&e.actor),
                to: e.to,
                at,
            },
            Event::IncidentTransitioned(e) => Self::Transitioned {
                from: e.from,
                to: e.to,
                at,
            },
            _ => return None,
        })
    }

    /// Whether a person made it (the correlator follows those; its own it folds as it decides).
    pub fn by_person(&self) -> bool {
        match self {
            Self::Resolved { by, .. } | Self::Reopened { by, .. } => *by == By::Person,
            Self::Transitioned { .. } => true,
            Self::Opened { .. } | Self::SignalAttached { .. } | Self::SignalResolved { .. } => {
                false
            }
        }
    }
}

/// Reviewed: `learned` or `inconclusive`. A review is a person's last word: nothing the
/// copilot decides changes it.
pub fn is_reviewed(state: IncidentState) -> bool {
    matches!(state, IncidentState::Learned | IncidentState::Inconclusive)
}

/// The three phases the rules care about: open (someone still needs to act), resolved, reviewed.
fn phase(state: IncidentState) -> u8 {
    if state.is_open() {
        0
    } else if is_reviewed(state) {
        2
    } else {
        1
    }
}

/// Folds one event into an incident's state; `None` is no incident yet. An incident opens
/// once: an `Opened` for an incident that exists changes nothing, and other events need one.
pub fn evolve(state: Option<Incident>, event: &IncidentEvent) -> Option<Incident> {
    match (state, event) {
        (
            None,
            IncidentEvent::Opened {
                tenant,
                incident_id,
                key,
                at,
            },
        ) => Some(Incident {
            tenant: tenant.clone(),
            id: *incident_id,
            key: key.clone(),
            state: IncidentState::Detected,
            opened_at: *at,
            window_from: *at,
            last_signal_at: *at,
            resolved_at: None,
            resolve_due: None,
            generation: 0,
            firing: Firing::default(),
            top: Severity::Unknown,
        }),
        (None, _) => None,
        (Some(incident), event) => Some(incident.evolve(event)),
    }
}

impl Incident {
    /// This incident after `event`. The lifecycle rules are those of the read model (the
    /// projector's `change_incident_state`): the copilot never changes a reviewed incident and
    /// reopens only a resolved one; a person's resolve or reopen always applies. One more guard
    /// matters only to the correlator, which folds its own decisions before it sees people's
    /// earlier events: a person's transition applies when the incident is still in the phase
    /// the person saw (open, resolved) or when it closes the review; otherwise the correlator's
    /// later decision stands. In stream order a transition always finds its `from`, so the read
    /// model and this agree.
    pub fn evolve(mut self, event: &IncidentEvent) -> Self {
        match *event {
            IncidentEvent::Opened { .. } => {}
            IncidentEvent::SignalAttached {
                severity,
                starts_at,
            } => {
                self.last_signal_at = self.last_signal_at.max(starts_at);
                self.firing.add(severity);
                self.top = self.top.max(severity);
                self.resolve_due = None;
            }
            IncidentEvent::SignalResolved {
                severity,
                at,
                grace,
            } => {
                self.firing.remove(severity);
                if self.is_quiet() {
                    self.resolve_due = Some(at + grace);
                }
            }
            IncidentEvent::Resolved { by, at } => {
                self.resolve_due = None;
                if by == By::Person || !is_reviewed(self.state) {
                    self.state = IncidentState::Resolved;
                    self.resolved_at = Some(at);
                }
            }
            IncidentEvent::Reopened { by, to, at } => {
                if by == By::System && self.state != IncidentState::Resolved {
                    return self;
                }
                self.state = to;
                self.resolved_at = None;
                self.resolve_due = None;
                self.generation += 1;
                match by {
                    // From the alert that reopened it.
                    By::System => self.window_from = at,
                    // From when the person reopened it, never back (their clock is the wall
                    // clock; the alerts' may be behind).
                    By::Person => {
                        self.window_from = self.window_from.max(at);
                        self.last_signal_at = self.last_signal_at.max(at);
                    }
                }
            }
            IncidentEvent::Transitioned { from, to, at } => {
                if !(is_reviewed(to) || phase(self.state) == phase(from)) {
                    return self;
                }
                self.state = to;
                if to == IncidentState::Resolved {
                    self.resolved_at = Some(at);
                } else if to.is_open() {
                    self.resolved_at = None;
                }
                if !to.is_open() {
                    self.resolve_due = None;
                }
            }
        }
        self
    }

    /// Open with no attached alert firing: what starts the resolve grace.
    pub fn is_quiet(&self) -> bool {
        self.state.is_open() && self.firing.total() == 0
    }

    /// The highest severity among its firing alerts; when none fires, the highest it had.
    pub fn severity(&self) -> Severity {
        self.firing.highest().unwrap_or(self.top)
    }

    /// Decides a person's lifecycle command on this incident (see [`decide`]).
    pub fn decide(&self, command: &Command) -> Result<Vec<Event>, LifecycleError> {
        decide(self.id, self.state, command)
    }
}

/// A person's lifecycle command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Move the incident to `to`: along the lifecycle, to `resolved` (a resolve), or from
    /// `resolved` back to `investigating` (a reopen).
    Transition {
        to: IncidentState,
        actor: String,
        note: Option<String>,
    },
    /// Resolve it by hand.
    Resolve { actor: String, note: Option<String> },
    /// Reopen a resolved incident into `investigating`.
    Reopen { actor: String, note: Option<String> },
}

/// Why a lifecycle command was refused. The texts are the API's answers (409).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    #[error(
        "an incident in state {} can move to {}; not to {}",
        .from.as_str(),
        allowed_words(*.from),
        .to.as_str()
    )]
    NotAllowed {
        from: IncidentState,
        to: IncidentState,
    },
    #[error("only a resolved incident can be reopened; this one is {}", .state.as_str())]
    NotResolved { state: IncidentState },
}

fn allowed_words(from: IncidentState) -> String {
    let allowed: Vec<&str> = from.allowed_next().iter().map(|s| s.as_str()).collect();
    if allowed.is_empty() {
        "nothing (its review is closed)".to_owned()
    } else {
        allowed.join(", ")
    }
}

/// Decides a person's lifecycle command on an incident in `state`: the events to append, or why
/// not. It needs only where the incident stands, so a caller that reads the read model (a fold
/// of the same events) decides as one holding the whole aggregate would. The allowed moves are
/// [`IncidentState::allowed_next`]; a move to `resolved` is an `IncidentResolved`, one from
/// `resolved` back to `investigating` an `IncidentReopened`, any other an `IncidentTransitioned`.
pub fn decide(
    incident_id: Uuid,
    state: IncidentState,
    command: &Command,
) -> Result<Vec<Event>, LifecycleError> {
    let (to, actor, note) = match command {
        Command::Transition { to, actor, note } => (*to, actor, note),
        Command::Resolve { actor, note } => (IncidentState::Resolved, actor, note),
        Command::Reopen { actor, note } => {
            if state != IncidentState::Resolved {
                return Err(LifecycleError::NotResolved { state });
            }
            (IncidentState::Investigating, actor, note)
        }
    };
    if !state.allowed_next().contains(&to) {
        return Err(LifecycleError::NotAllowed { from: state, to });
    }
    let actor = actor.clone();
    let note = note.clone();
    Ok(vec![match (state, to) {
        (_, IncidentState::Resolved) => Event::IncidentResolved(IncidentResolved {
            incident_id,
            actor,
            reason: "resolved by hand".into(),
            note,
        }),
        (IncidentState::Resolved, IncidentState::Investigating) => {
            Event::IncidentReopened(IncidentReopened {
                incident_id,
                actor,
                reason: "reopened by hand".into(),
                to,
                signal_id: None,
                note,
            })
        }
        (from, to) => Event::IncidentTransitioned(IncidentTransitioned {
            incident_id,
            from,
            to,
            actor,
            note,
        }),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    /// An incident of key `service=api` opened at 08:00 with one warning firing, in `state`.
    fn incident_in(state: IncidentState) -> Incident {
        let opened = evolve(
            None,
            &IncidentEvent::Opened {
                tenant: "acme".into(),
                incident_id: Uuid::nil(),
                key: "service=api".into(),
                at: at("2026-11-22T08:00:00Z"),
            },
        )
        .unwrap()
        .evolve(&IncidentEvent::SignalAttached {
            severity: Severity::Warning,
            starts_at: at("2026-11-22T08:00:00Z"),
        });
        Incident { state, ..opened }
    }

    fn transition(to: IncidentState) -> Command {
        Command::Transition {
            to,
            actor: "bob".into(),
            note: Some("looking".into()),
        }
    }

    #[test]
    fn a_person_acknowledging_a_detected_incident_records_the_transition() {
        // Arrange
        let incident = incident_in(IncidentState::Detected);

        // Act
        let events = incident
            .decide(&transition(IncidentState::Acknowledged))
            .unwrap();

        // Assert
        let [Event::IncidentTransitioned(e)] = events.as_slice() else {
            panic!("one IncidentTransitioned: {events:?}");
        };
        assert_eq!(
            e,
            &IncidentTransitioned {
                incident_id: incident.id,
                from: IncidentState::Detected,
                to: IncidentState::Acknowledged,
                actor: "bob".into(),
                note: Some("looking".into()),
            }
        );
    }

    #[test]
    fn resolving_by_hand_is_an_incident_resolved_whether_asked_as_a_transition_or_a_resolve() {
        // Arrange
        let incident = incident_in(IncidentState::Mitigated);
        let resolve = Command::Resolve {
            actor: "bob".into(),
            note: Some("looking".into()),
        };

        // Act
        let as_transition = incident.decide(&transition(IncidentState::Resolved));
        let as_resolve = incident.decide(&resolve);

        // Assert
        let expected = IncidentResolved {
            incident_id: incident.id,
            actor: "bob".into(),
            reason: "resolved by hand".into(),
            note: Some("looking".into()),
        };
        for events in [as_transition.unwrap(), as_resolve.unwrap()] {
            let [Event::IncidentResolved(e)] = events.as_slice() else {
                panic!("one IncidentResolved: {events:?}");
            };
            assert_eq!(e, &expected);
        }
    }

    #[test]
    fn reopening_a_resolved_incident_is_an_incident_reopened_into_investigation() {
        // Arrange
        let incident = incident_in(IncidentState::Resolved);
        let reopen = Command::Reopen {
            actor: "bob".into(),
            note: Some("looking".into()),
        };

        // Act
        let as_transition = incident.decide(&transition(IncidentState::Investigating));
        let as_reopen = incident.decide(&reopen);

        // Assert
        let expected = IncidentReopened {
            incident_id: incident.id,
            actor: "bob".into(),
            reason: "reopened by hand".into(),
            to: IncidentState::Investigating,
            signal_id: None,
            note: Some("looking".into()),
        };
        for events in [as_transition.unwrap(), as_reopen.unwrap()] {
            let [Event::IncidentReopened(e)] = events.as_slice() else {
                panic!("one IncidentReopened: {events:?}");
            };
            assert_eq!(e, &expected);
        }
    }

    #[test]
    fn a_move_the_state_does_not_allow_is_refused_naming_the_allowed_states() {
        // Arrange
        let incident = incident_in(IncidentState::Acknowledged);

        // Act
        let refused = incident
            .decide(&transition(IncidentState::Learned))
            .unwrap_err();

        // Assert
        assert_eq!(
            refused,
            LifecycleError::NotAllowed {
                from: IncidentState::Acknowledged,
                to: IncidentState::Learned
            }
        );
        assert_eq!(
            refused.to_string(),
            "an incident in state acknowledged can move to investigating, mitigated, resolved; not to learned"
        );
    }

    #[test]
    fn a_reviewed_incident_can_move_nowhere() {
        // Arrange
        let incident = incident_in(IncidentState::Inconclusive);

        // Act
        let refused = incident
            .decide(&transition(IncidentState::Investigating))
            .unwrap_err();

        // Assert
        assert_eq!(
            refused.to_string(),
            "an incident in state inconclusive can move to nothing (its review is closed); not to investigating"
        );
    }

    #[test]
    fn only_a_resolved_incident_can_be_reopened() {
        // Arrange
        let incident = incident_in(IncidentState::Mitigated);
        let reopen = Command::Reopen {
            actor: "bob".into(),
            note: None,
        };

        // Act
        let refused = incident.decide(&reopen).unwrap_err();

        // Assert
        assert_eq!(
            refused,
            LifecycleError::NotResolved {
                state: IncidentState::Mitigated
            }
        );
        assert_eq!(
            refused.to_string(),
            "only a resolved incident can be reopened; this one is mitigated"
        );
    }

    #[test]
    fn a_review_by_a_person_is_never_overridden_by_the_correlator() {
        // Arrange: reviewed while its resolve was (wrongly) still due.
        let reviewed = Incident {
            resolve_due: Some(at("2026-11-22T10:05:00Z")),
            resolved_at: Some(at("2026-11-22T09:00:00Z")),
            ..incident_in(IncidentState::Learned)
        };

        // Act
        let resolved = reviewed.clone().evolve(&IncidentEvent::Resolved {
            by: By::System,
            at: at("2026-11-22T10:05:00Z"),
        });
        let reopened = reviewed.clone().evolve(&IncidentEvent::Reopened {
            by: By::System,
            to: IncidentState::Detected,
            at: at("2026-11-22T10:20:00Z"),
        });

        // Assert: still learned, resolved when it was; nothing is due any more.
        assert_eq!(resolved.state, IncidentState::Learned);
        assert_eq!(resolved.resolved_at, reviewed.resolved_at);
        assert_eq!(resolved.resolve_due, None);
        assert_eq!(
            reopened, reviewed,
            "the correlator reopens only a resolved incident"
        );
    }

    #[test]
    fn a_persons_reopen_always_applies_and_restarts_the_window_from_then_never_back() {
        // Arrange
        let resolved = Incident {
            resolved_at: Some(at("2026-11-22T09:00:00Z")),
            last_signal_at: at("2026-11-22T08:30:00Z"),
            ..incident_in(IncidentState::Resolved)
        };

        // Act
        let later = resolved.clone().evolve(&IncidentEvent::Reopened {
            by: By::Person,
            to: IncidentState::Investigating,
            at: at("2026-11-22T11:00:00Z"),
        });
        let earlier = resolved.clone().evolve(&IncidentEvent::Reopened {
            by: By::Person,
            to: IncidentState::Investigating,
            at: at("2026-11-22T07:00:00Z"),
        });

        // Assert
        assert_eq!(later.state, IncidentState::Investigating);
        assert_eq!(later.generation, 1);
        assert_eq!(later.resolved_at, None);
        assert_eq!(later.window_from, at("2026-11-22T11:00:00Z"));
        assert_eq!(later.last_signal_at, at("2026-11-22T11:00:00Z"));
        assert_eq!(earlier.window_from, resolved.window_from);
        assert_eq!(earlier.last_signal_at, resolved.last_signal_at);
    }

    #[test]
    fn a_persons_move_between_open_states_is_dropped_once_the_correlator_resolved_the_incident() {
        // Arrange: the correlator resolved it (a later decision of its own) before it followed
        // the acknowledgement a person made while it was open.
        let resolved = Incident {
            resolved_at: Some(at("2026-11-22T10:05:00Z")),
            ..incident_in(IncidentState::Resolved)
        };
        let acknowledged = IncidentEvent::Transitioned {
            from: IncidentState::Detected,
            to: IncidentState::Acknowledged,
            at: at("2026-11-22T10:00:00Z"),
        };

        // Act
        let after = resolved.clone().evolve(&acknowledged);
        let while_open = incident_in(IncidentState::Detected).evolve(&acknowledged);

        // Assert
        assert_eq!(after, resolved);
        assert_eq!(while_open.state, IncidentState::Acknowledged);
    }

    #[test]
    fn the_last_attached_alert_resolving_starts_the_grace_only_while_the_incident_is_open() {
        // Arrange
        let open = incident_in(IncidentState::Acknowledged);
        let resolved = incident_in(IncidentState::Resolved);
        let ended = IncidentEvent::SignalResolved {
            severity: Severity::Warning,
            at: at("2026-11-22T10:00:00Z"),
            grace: Duration::minutes(5),
        };

        // Act
        let open = open.evolve(&ended);
        let resolved = resolved.evolve(&ended);

        // Assert
        assert_eq!(open.firing.total(), 0);
        assert_eq!(open.resolve_due, Some(at("2026-11-22T10:05:00Z")));
        assert_eq!(open.severity(), Severity::Warning, "the highest it had");
        assert_eq!(resolved.resolve_due, None);
    }

    #[test]
    fn recorded_lifecycle_events_fold_as_their_payload_and_time_say() {
        // Arrange
        let now = at("2026-11-26T11:00:00Z");
        let by_hand = Event::IncidentResolved(IncidentResolved {
            incident_id: Uuid::nil(),
            actor: "bob".into(),
            reason: "resolved by hand".into(),
            note: None,
        });
        let by_correlator = Event::IncidentResolved(IncidentResolved {
            incident_id: Uuid::nil(),
            actor: copilot_events::CORRELATOR.into(),
            reason: "every attached alert resolved".into(),
            note: None,
        });

        // Act
        let person = IncidentEvent::of(&by_hand, now).unwrap();
        let system = IncidentEvent::of(&by_correlator, now).unwrap();

        // Assert
        assert_eq!(
            person,
            IncidentEvent::Resolved {
                by: By::Person,
                at: now
            }
        );
        assert!(person.by_person());
        assert!(!system.by_person());
        let folded = incident_in(IncidentState::Detected).evolve(&person);
        assert_eq!(folded.state, IncidentState::Resolved);
        assert_eq!(folded.resolved_at, Some(now));
    }

    /// The read model's rule (`change_incident_state`'s WHERE): a change applies when a person
    /// made it, or when the incident is not reviewed and the change is not a reopen of an
    /// incident that is not resolved.
    fn read_model_applies(state: IncidentState, by_person: bool, reopen: bool) -> bool {
        by_person || (!is_reviewed(state) && (!reopen || state == IncidentState::Resolved))
    }

    #[test]
    fn the_lifecycle_rules_of_evolve_are_those_of_the_read_model() {
        let when = at("2026-11-22T10:00:00Z");
        for state in IncidentState::ALL {
            for by in [By::Person, By::System] {
                for reopen in [false, true] {
                    // Arrange
                    let before = Incident {
                        resolved_at: Some(at("2026-11-22T09:00:00Z")),
                        ..incident_in(state)
                    };
                    let event = if reopen {
                        IncidentEvent::Reopened {
                            by,
                            to: IncidentState::Detected,
                            at: when,
                        }
                    } else {
                        IncidentEvent::Resolved { by, at: when }
                    };

                    // Act
                    let after = before.clone().evolve(&event);

                    // Assert
                    let applied = if reopen {
                        after.generation == before.generation + 1
                    } else {
                        after.resolved_at == Some(when)
                    };
                    assert_eq!(
                        applied,
                        read_model_applies(state, by == By::Person, reopen),
                        "{state:?} {by:?} reopen={reopen}"
                    );
                }
            }
        }
    }
}
