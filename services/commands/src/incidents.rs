//! Commands on an incident by a person: a lifecycle move, assignment, a note, a verdict on a
//! hypothesis. Each is decided on the incident as the read model holds it and appended on the
//! incident's subject at the version decided on, so a command that lost a race to another
//! decides again (once) or, when the caller pinned a version (`If-Match`), is refused.

use std::time::Duration;

use async_nats::jetstream;
use chrono::Utc;
use copilot_events::{
    Envelope, Event, Headers, HypothesisVerdictGiven, IncidentAssigned, IncidentLinked,
    IncidentNoteAdded, IncidentState, Verdict, derived_id, has_forbidden_control, is_system_actor,
    subjects,
};
use copilot_runtime::append::AppendError;
use copilot_store::{IncidentSummary, Store};
use uuid::Uuid;

use crate::{CommandError, CommandEvent, append, command_event, incident, invalid};

/// How long a command waits for the projector to show a newer version of the incident.
const NEWER_VERSION_WAIT: Duration = Duration::from_secs(2);
/// How many times an unpinned command decides before a lost race is the caller's 409: an
/// incident in a storm gains events while a person acts on it.
const DECIDE_TRIES: u32 = 4;

/// The last sequence of the incident's subject, as JetStream has it now.
async fn subject_last(js: &jetstream::Context, tenant: &str, incident: Uuid) -> Option<u64> {
    let stream = js.get_stream(subjects::INCIDENTS).await.ok()?;
    stream
        .get_last_raw_message_by_subject(&subjects::incident(tenant, incident))
        .await
        .ok()
        .map(|m| m.sequence)
}

/// What a person asks of an incident.
#[derive(Debug, Clone)]
pub enum IncidentAction {
    /// Move along the lifecycle (`to` as the person wrote it), with an optional note.
    Transition {
        to: String,
        note: Option<String>,
    },
    /// Assign it (`None` unassigns).
    Assign {
        assignee: Option<String>,
    },
    Note {
        text: String,
    },
    /// A verdict on a hypothesis any proposal of the incident named.
    Verdict {
        hypothesis_id: String,
        verdict: Verdict,
        note: Option<String>,
    },
}

/// Who asks, of which incident, and at which version if they pinned one.
pub struct IncidentCommand<'a> {
    pub tenant: &'a str,
    pub incident_id: Uuid,
    pub actor: &'a str,
    pub headers: Headers,
    /// The version the caller decided on (`If-Match`); a different current version is a 409.
    pub pinned: Option<u64>,
}

/// What was appended: the event, its type, and the incident's new version.
pub struct Appended {
    pub event_id: Uuid,
    pub event_type: &'static str,
    pub version: u64,
}

fn text(name: &str, value: &str, max: usize) -> Result<(), CommandError> {
    if value.trim().is_empty() || value.len() > max || has_forbidden_control(value) {
        return Err(invalid(format!(
            "{name} must be 1 to {max} bytes of text without control characters (but tabs and line breaks)"
        )));
    }
    Ok(())
}

/// Checks what can be checked without the incident.
fn validate(action: &IncidentAction) -> Result<(), CommandError> {
    match action {
        IncidentAction::Transition { to, note } => {
            if IncidentState::parse(to).is_none() {
                return Err(invalid(format!(
                    "to must be one of {}",
                    IncidentState::ALL.map(|s| s.as_str()).join(", ")
                )));
            }
            note.as_deref().map_or(Ok(()), |n| text("note", n, 10_000))
        }
        IncidentAction::Assign { assignee } => assignee
            .as_deref()
            .map_or(Ok(()), |a| text("assignee", a, 256)),
        IncidentAction::Note { text: body } => text("text", body, 10_000),
        IncidentAction::Verdict { note, .. } => {
            note.as_deref().map_or(Ok(()), |n| text("note", n, 10_000))
        }
    }
}

async fn find(
    store: &Store,
    tenant: &str,
    incident_id: Uuid,
) -> Result<IncidentSummary, CommandError> {
    let mut tx = store.begin_tenant(tenant).await?;
    store
        .get_incident(&mut tx, tenant, incident_id)
        .await?
        .ok_or(CommandError::NotFound("incident"))
}

/// The incident once the read model holds its version `version` or a later one (waiting up to
/// [`NEWER_VERSION_WAIT`]; then whatever it has). Its own version is watched, not the stream's
/// checkpoint: any other incident's event moves that.
async fn at_least(
    store: &Store,
    tenant: &str,
    incident_id: Uuid,
    version: u64,
) -> Result<IncidentSummary, CommandError> {
    let deadline = tokio::time::Instant::now() + NEWER_VERSION_WAIT;
    loop {
        let incident = find(store, tenant, incident_id).await?;
        if incident.version as u64 >= version || tokio::time::Instant::now() >= deadline {
            return Ok(incident);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After a confirmed verdict on a hypothesis that cites other incidents open at the same time,
/// records that this incident was caused by them (`IncidentLinked`, one per incident, with ids
/// derived from the verdict so a retry adds nothing). Returns the incident's version after the
/// links. The verdict stands whatever happens here: a link that cannot be appended is logged.
async fn link_causes(
    js: &jetstream::Context,
    store: &Store,
    command: &IncidentCommand<'_>,
    hypothesis_id: &str,
    verdict_id: Uuid,
    mut version: u64,
) -> u64 {
    let tenant = command.tenant;
    let cited = async {
        let mut tx = store.begin_tenant(tenant).await?;
        store
            .hypothesis_cited_incidents(&mut tx, tenant, command.incident_id, hypothesis_id)
            .await
    };
    let related = match cited.await {
        Ok(related) => related,
        Err(error) => {
            tracing::warn!(%error, tenant, incident = %command.incident_id, "reading the incidents a confirmed hypothesis cites failed");
            return version;
        }
    };
    for related_incident_id in related {
        let payload = IncidentLinked {
            incident_id: command.incident_id,
            related_incident_id,
            relation: "caused_by".into(),
            hypothesis_id: hypothesis_id.to_owned(),
            actor: command.actor.to_owned(),
        };
        let now = Utc::now();
        let id = derived_id(
            now,
            &[
                "link",
                &verdict_id.to_string(),
                &related_incident_id.to_string(),
            ],
        );
        let envelope = Envelope::with_id(id, tenant, &payload, now, command.headers.clone());
        // Not at an expected sequence: the link's id makes a repeat nothing, and another event
        // on the subject meanwhile (a Slack message recorded) must not lose it.
        let message = copilot_runtime::append::message(&envelope);
        match append(js, subjects::incident(tenant, command.incident_id), message).await {
            Ok(seq) => version = version.max(seq),
            Err(error) => {
                tracing::warn!(%error, tenant, incident = %command.incident_id, related = %related_incident_id, "recording a confirmed incident link failed");
                break;
            }
        }
    }
    version
}

/// The event `action` decides on `incident`.
fn decide(
    command: &IncidentCommand<'_>,
    action: &IncidentAction,
    incident: &IncidentSummary,
) -> Result<CommandEvent, CommandError> {
    let (tenant, actor, headers) = (command.tenant, command.actor, command.headers.clone());
    Ok(match action {
        IncidentAction::Transition { to, note } => {
            let to = IncidentState::parse(to).expect("validated");
            let from = IncidentState::parse(&incident.state).ok_or_else(|| {
                CommandError::Internal(format!(
                    "incident {} has an unknown stored state {:?}",
                    incident.id, incident.state
                ))
            })?;
            let lifecycle = incident::Command::Transition {
                to,
                actor: actor.to_owned(),
                note: note.clone(),
            };
            let decided = incident::decide(incident.id, from, &lifecycle)
                .map_err(|refused| CommandError::Conflict(refused.to_string()))?;
            match decided.as_slice() {
                [Event::IncidentResolved(e)] => command_event(tenant, e, headers),
                [Event::IncidentReopened(e)] => command_event(tenant, e, headers),
                [Event::IncidentTransitioned(e)] => command_event(tenant, e, headers),
                other => unreachable!("a transition decides one lifecycle event, not {other:?}"),
            }
        }
        IncidentAction::Assign { assignee } => {
            let payload = IncidentAssigned {
                incident_id: incident.id,
                assignee: assignee.clone(),
                actor: actor.to_owned(),
            };
            command_event(tenant, &payload, headers)
        }
        IncidentAction::Note { text } => {
            let payload = IncidentNoteAdded {
                incident_id: incident.id,
                note_id: Uuid::now_v7(),
                text: text.clone(),
                actor: actor.to_owned(),
            };
            command_event(tenant, &payload, headers)
        }
        IncidentAction::Verdict {
            hypothesis_id,
            verdict,
            note,
        } => {
            let payload = HypothesisVerdictGiven {
                incident_id: incident.id,
                hypothesis_id: hypothesis_id.clone(),
                verdict: *verdict,
                note: note.clone(),
                actor: actor.to_owned(),
            };
            command_event(tenant, &payload, headers)
        }
    })
}

/// Decides `action` on the incident and appends its event at the version decided on. Without
/// a pinned version, a lost race waits for the projector once and decides again.
pub async fn run(
    js: &jetstream::Context,
    store: &Store,
    command: IncidentCommand<'_>,
    action: IncidentAction,
) -> Result<Appended, CommandError> {
    validate(&action)?;
    if is_system_actor(command.actor) {
        return Err(CommandError::Forbidden(format!(
            "the subject {:?} is reserved for the copilot's own decisions",
            command.actor
        )));
    }
    let tenant = command.tenant;
    let mut incident = find(store, tenant, command.incident_id).await?;
    if let IncidentAction::Verdict { hypothesis_id, .. } = &action {
        let mut tx = store.begin_tenant(tenant).await?;
        if !store
            .hypothesis_exists(&mut tx, tenant, incident.id, hypothesis_id)
            .await?
        {
            return Err(CommandError::NotFound("hypothesis"));
        }
    }
    if let Some(version) = command.pinned
        && version > incident.version as u64
    {
        // A version from a command's answer the projector has not applied yet.
        incident = at_least(store, tenant, incident.id, version).await?;
    }
    for attempt in 0..DECIDE_TRIES {
        if let Some(version) = command.pinned
            && version != incident.version as u64
        {
            return Err(CommandError::Conflict(format!(
                "the incident is at version {}, not {version}: reload it and decide again",
                incident.version
            )));
        }
        let event = decide(&command, &action, &incident)?;
        let message = event
            .message
            .expected_last_subject_sequence(incident.version as u64);
        match append(js, subjects::incident(tenant, incident.id), message).await {
            Ok(version) => {
                let version = match &action {
                    IncidentAction::Verdict {
                        hypothesis_id,
                        verdict: Verdict::Confirmed,
                        ..
                    } => link_causes(js, store, &command, hypothesis_id, event.id, version).await,
                    _ => version,
                };
                return Ok(Appended {
                    event_id: event.id,
                    event_type: event.event_type,
                    version,
                });
            }
            Err(AppendError::Conflict)
                if command.pinned.is_none() && attempt + 1 < DECIDE_TRIES =>
            {
                // Decided again on the incident as its subject now ends (the correlator, the
                // hypothesis service or the Slack notifier may have appended meanwhile).
                let newer = subject_last(js, tenant, incident.id)
                    .await
                    .unwrap_or(incident.version as u64 + 1);
                incident = at_least(store, tenant, incident.id, newer).await?;
            }
            Err(AppendError::Conflict) => {
                return Err(CommandError::Conflict(
                    "the incident changed while this command was decided: reload it and decide again"
                        .into(),
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    unreachable!("the loop returns on its last attempt")
}
