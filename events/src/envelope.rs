use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::admin::{
    TenantResumed, TenantRetentionSet, TenantSecretRemoved, TenantSecretSet, TenantSuspended,
    UserAdded, UserRemoved, UserUpdated,
};
use crate::hypotheses::{
    HypothesesProposed, HypothesisVerdictGiven, IncidentLinked, ModelCallRecorded,
};
use crate::incidents::{
    CorrelationRulesSet, IncidentAssigned, IncidentNoteAdded, IncidentOpened, IncidentReopened,
    IncidentResolved, IncidentTransitioned, SignalAttached, SignalResolved, TenantIntegrationsSet,
};
use crate::payloads::{SignalReceived, TenantCreated, WebhookTokenIssued, WebhookTokenRevoked};
use crate::slack::SlackMessagePosted;
use crate::tasks::{
    TaskCancelled, TaskClaimed, TaskCompleted, TaskCreated, TaskFailed, TaskLeaseExpired,
    TaskLogged, TaskOutcomeRefused, TaskProgressed, TaskReleased, TaskRetried, WorkerGone,
    WorkerHeartbeatRecorded, WorkerRegistered, WorkerTokenIssued, WorkerTokenRevoked,
};

/// One event payload type: its name and version on the wire.
pub trait EventPayload: Serialize + DeserializeOwned + JsonSchema {
    /// Past-tense name carried in the envelope's `type`.
    const TYPE: &'static str;
    /// Schema version carried in the envelope's `version`; bumped on a breaking change.
    const VERSION: u32;
}

/// The envelope every event travels in. The payload is kept as raw JSON so that a consumer
/// can route on `type`/`version` first and so that raw fields inside it keep their exact bytes.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Envelope {
    /// UUIDv7 (time-ordered), or a deterministic UUID for events derived from other events.
    pub id: Uuid,
    /// Event type, e.g. `SignalReceived`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Version of the payload's schema.
    pub version: u32,
    /// Tenant slug; also the second token of the subject.
    pub tenant: String,
    /// When the thing the event describes happened (for an alert: when the webhook arrived).
    pub occurred_at: DateTime<Utc>,
    /// When the event was appended.
    pub recorded_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// The HTTP request id (`X-Request-Id`) that caused the event, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// W3C `traceparent` of the request or event that caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Who asked for it, for events a person or a tool commanded (a user id, `cli`, `up`);
    /// absent for what the system derived itself. The audit log is built from these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The network address the command came from, when it came over HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_addr: Option<String>,
    #[schemars(with = "serde_json::Value")]
    pub payload: Box<RawValue>,
}

/// Metadata a producer attaches to an event besides its payload.
#[derive(Debug, Clone, Default)]
pub struct Headers {
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    pub request_id: Option<String>,
    pub traceparent: Option<String>,
    pub actor: Option<String>,
    pub source_addr: Option<String>,
}

/// Every event type this build understands, decoded.
#[derive(Debug, Clone)]
pub enum Event {
    SignalReceived(SignalReceived),
    TenantCreated(TenantCreated),
    WebhookTokenIssued(WebhookTokenIssued),
    WebhookTokenRevoked(WebhookTokenRevoked),
    CorrelationRulesSet(CorrelationRulesSet),
    TenantIntegrationsSet(TenantIntegrationsSet),
    IncidentOpened(IncidentOpened),
    SignalAttached(SignalAttached),
    SignalResolved(SignalResolved),
    IncidentResolved(IncidentResolved),
    IncidentReopened(IncidentReopened),
    IncidentTransitioned(IncidentTransitioned),
    IncidentAssigned(IncidentAssigned),
    IncidentNoteAdded(IncidentNoteAdded),
    HypothesesProposed(HypothesesProposed),
    HypothesisVerdictGiven(HypothesisVerdictGiven),
    ModelCallRecorded(ModelCallRecorded),
    TenantSuspended(TenantSuspended),
    TenantResumed(TenantResumed),
    TenantRetentionSet(TenantRetentionSet),
    UserAdded(UserAdded),
    UserUpdated(UserUpdated),
    UserRemoved(UserRemoved),
    TenantSecretSet(TenantSecretSet),
    TenantSecretRemoved(TenantSecretRemoved),
    IncidentLinked(IncidentLinked),
    SlackMessagePosted(SlackMessagePosted),
    TaskCreated(TaskCreated),
    TaskClaimed(TaskClaimed),
    TaskProgressed(TaskProgressed),
    TaskLogged(TaskLogged),
    TaskCompleted(TaskCompleted),
    TaskFailed(TaskFailed),
    TaskLeaseExpired(TaskLeaseExpired),
    TaskRetried(TaskRetried),
    TaskCancelled(TaskCancelled),
    TaskOutcomeRefused(TaskOutcomeRefused),
    TaskReleased(TaskReleased),
    WorkerRegistered(WorkerRegistered),
    WorkerHeartbeatRecorded(WorkerHeartbeatRecorded),
    WorkerGone(WorkerGone),
    WorkerTokenIssued(WorkerTokenIssued),
    WorkerTokenRevoked(WorkerTokenRevoked),
}

impl Event {
    /// The incident an incident event is about, and who acted: the person or the copilot's
    /// component (`system:correlator`, `system:hypothesis`). `None` for other events.
    pub fn incident(&self) -> Option<(Uuid, &str)> {
        use crate::incidents::CORRELATOR;
        const HYPOTHESIS: &str = "system:hypothesis";
        Some(match self {
            Self::IncidentOpened(e) => (e.incident_id, CORRELATOR),
            Self::SignalAttached(e) => (e.incident_id, CORRELATOR),
            Self::SignalResolved(e) => (e.incident_id, CORRELATOR),
            Self::IncidentResolved(e) => (e.incident_id, e.actor.as_str()),
            Self::IncidentReopened(e) => (e.incident_id, e.actor.as_str()),
            Self::IncidentTransitioned(e) => (e.incident_id, e.actor.as_str()),
            Self::IncidentAssigned(e) => (e.incident_id, e.actor.as_str()),
            Self::IncidentNoteAdded(e) => (e.incident_id, e.actor.as_str()),
            Self::HypothesesProposed(e) => (e.incident_id, HYPOTHESIS),
            Self::HypothesisVerdictGiven(e) => (e.incident_id, e.actor.as_str()),
            Self::IncidentLinked(e) => (e.incident_id, e.actor.as_str()),
            Self::SlackMessagePosted(e) => (e.incident_id, crate::SLACK_NOTIFIER),
            _ => return None,
        })
    }

    /// The event's type name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::SignalReceived(_) => SignalReceived::TYPE,
            Self::TenantCreated(_) => TenantCreated::TYPE,
            Self::WebhookTokenIssued(_) => WebhookTokenIssued::TYPE,
            Self::WebhookTokenRevoked(_) => WebhookTokenRevoked::TYPE,
            Self::CorrelationRulesSet(_) => CorrelationRulesSet::TYPE,
            Self::TenantIntegrationsSet(_) => TenantIntegrationsSet::TYPE,
            Self::IncidentOpened(_) => IncidentOpened::TYPE,
            Self::SignalAttached(_) => SignalAttached::TYPE,
            Self::SignalResolved(_) => SignalResolved::TYPE,
            Self::IncidentResolved(_) => IncidentResolved::TYPE,
            Self::IncidentReopened(_) => IncidentReopened::TYPE,
            Self::IncidentTransitioned(_) => IncidentTransitioned::TYPE,
            Self::IncidentAssigned(_) => IncidentAssigned::TYPE,
            Self::IncidentNoteAdded(_) => IncidentNoteAdded::TYPE,
            Self::HypothesesProposed(_) => HypothesesProposed::TYPE,
            Self::HypothesisVerdictGiven(_) => HypothesisVerdictGiven::TYPE,
            Self::ModelCallRecorded(_) => ModelCallRecorded::TYPE,
            Self::TenantSuspended(_) => TenantSuspended::TYPE,
            Self::TenantResumed(_) => TenantResumed::TYPE,
            Self::TenantRetentionSet(_) => TenantRetentionSet::TYPE,
            Self::UserAdded(_) => UserAdded::TYPE,
            Self::UserUpdated(_) => UserUpdated::TYPE,
            Self::UserRemoved(_) => UserRemoved::TYPE,
            Self::TenantSecretSet(_) => TenantSecretSet::TYPE,
            Self::TenantSecretRemoved(_) => TenantSecretRemoved::TYPE,
            Self::IncidentLinked(_) => IncidentLinked::TYPE,
            Self::SlackMessagePosted(_) => SlackMessagePosted::TYPE,
            Self::TaskCreated(_) => TaskCreated::TYPE,
            Self::TaskClaimed(_) => TaskClaimed::TYPE,
            Self::TaskProgressed(_) => TaskProgressed::TYPE,
            Self::TaskLogged(_) => TaskLogged::TYPE,
            Self::TaskCompleted(_) => TaskCompleted::TYPE,
            Self::TaskFailed(_) => TaskFailed::TYPE,
            Self::TaskLeaseExpired(_) => TaskLeaseExpired::TYPE,
            Self::TaskRetried(_) => TaskRetried::TYPE,
            Self::TaskCancelled(_) => TaskCancelled::TYPE,
            Self::TaskOutcomeRefused(_) => TaskOutcomeRefused::TYPE,
            Self::TaskReleased(_) => TaskReleased::TYPE,
            Self::WorkerRegistered(_) => WorkerRegistered::TYPE,
            Self::WorkerHeartbeatRecorded(_) => WorkerHeartbeatRecorded::TYPE,
            Self::WorkerGone(_) => WorkerGone::TYPE,
            Self::WorkerTokenIssued(_) => WorkerTokenIssued::TYPE,
            Self::WorkerTokenRevoked(_) => WorkerTokenRevoked::TYPE,
        }
    }
}

/// Why an event could not be decoded. Every variant is permanent: retrying will not help, so a
/// consumer parks the event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("envelope is not valid: {0}")]
    Envelope(serde_json::Error),
    #[error("unknown event type {event_type} version {version}")]
    UnknownType { event_type: String, version: u32 },
    #[error("payload of {event_type} v{version} is not valid: {source}")]
    Payload {
        event_type: String,
        version: u32,
        source: serde_json::Error,
    },
}

impl Envelope {
    /// Wraps a payload in a new envelope with a fresh UUIDv7. `occurred_at` comes from the caller;
    /// `recorded_at` is the same instant for events recorded as they happen.
    pub fn new<P: EventPayload>(
        tenant: &str,
        payload: &P,
        occurred_at: DateTime<Utc>,
        headers: Headers,
    ) -> Self {
        Self::with_id(Uuid::now_v7(), tenant, payload, occurred_at, headers)
    }

    /// Wraps a payload with a caller-chosen id (deterministic ids for derived events).
    pub fn with_id<P: EventPayload>(
        id: Uuid,
        tenant: &str,
        payload: &P,
        occurred_at: DateTime<Utc>,
        headers: Headers,
    ) -> Self {
        let payload = serde_json::value::to_raw_value(payload)
            .expect("event payloads serialize: they hold only maps, strings and numbers");
        Self {
            id,
            event_type: P::TYPE.to_owned(),
            version: P::VERSION,
            tenant: tenant.to_owned(),
            occurred_at,
            recorded_at: occurred_at,
            correlation_id: headers.correlation_id,
            causation_id: headers.causation_id,
            request_id: headers.request_id,
            traceparent: headers.traceparent,
            actor: headers.actor,
            source_addr: headers.source_addr,
            payload,
        }
    }

    /// Serializes the envelope for publishing.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serializes")
    }

    /// Parses an envelope from a message body.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(bytes).map_err(DecodeError::Envelope)
    }

    /// Decodes the payload into the event it names. Older versions are upcast here, before typed
    /// decoding, so only the newest Rust type of each event exists.
    pub fn decode(&self) -> Result<Event, DecodeError> {
        fn typed<P: EventPayload>(env: &Envelope) -> Result<P, DecodeError> {
            serde_json::from_str(env.payload.get()).map_err(|source| DecodeError::Payload {
                event_type: env.event_type.clone(),
                version: env.version,
                source,
            })
        }
        macro_rules! decode {
            ($($t:ident),*) => {
                match (self.event_type.as_str(), self.version) {
                    $(($t::TYPE, $t::VERSION) => typed(self).map(Event::$t),)*
                    (other, version) => Err(DecodeError::UnknownType {
                        event_type: other.to_owned(),
                        version,
                    }),
                }
            };
        }
        decode!(
            SignalReceived,
            TenantCreated,
            WebhookTokenIssued,
            WebhookTokenRevoked,
            CorrelationRulesSet,
            TenantIntegrationsSet,
            IncidentOpened,
            SignalAttached,
            SignalResolved,
            IncidentResolved,
            IncidentReopened,
            IncidentTransitioned,
            IncidentAssigned,
            IncidentNoteAdded,
            HypothesesProposed,
            HypothesisVerdictGiven,
            ModelCallRecorded,
            TenantSuspended,
            TenantResumed,
            TenantRetentionSet,
            UserAdded,
            UserUpdated,
            UserRemoved,
            TenantSecretSet,
            TenantSecretRemoved,
            IncidentLinked,
            SlackMessagePosted,
            TaskCreated,
            TaskClaimed,
            TaskProgressed,
            TaskLogged,
            TaskCompleted,
            TaskFailed,
            TaskLeaseExpired,
            TaskRetried,
            TaskCancelled,
            TaskOutcomeRefused,
            TaskReleased,
            WorkerRegistered,
            WorkerHeartbeatRecorded,
            WorkerGone,
            WorkerTokenIssued,
            WorkerTokenRevoked
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payloads::TenantCreated;

    #[test]
    fn an_envelope_round_trips_and_decodes_to_its_event() {
        let payload = TenantCreated {
            slug: "acme".into(),
            name: "Acme".into(),
            created_by: "cli".into(),
        };
        let at = "2026-01-01T00:00:00Z".parse().unwrap();
        let env = Envelope::new("acme", &payload, at, Headers::default());

        let back = Envelope::from_slice(&env.to_bytes()).unwrap();

        assert_eq!(back.event_type, "TenantCreated");
        assert!(matches!(back.decode().unwrap(), Event::TenantCreated(t) if t == payload));
    }

    #[test]
    fn an_unknown_event_type_is_a_decode_error_not_a_panic() {
        let raw = br#"{"id":"0190b0a0-0000-7000-8000-000000000000","type":"Nope","version":1,
            "tenant":"a","occurred_at":"2026-01-01T00:00:00Z","recorded_at":"2026-01-01T00:00:00Z","payload":{}}"#;
        let env = Envelope::from_slice(raw).unwrap();
        assert!(matches!(env.decode(), Err(DecodeError::UnknownType { .. })));
    }
}
