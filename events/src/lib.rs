//! The event contract of the copilot.
//!
//! Every component talks to every other through events appended to JetStream, so this crate owns
//! everything two components must agree on: the envelope, the payload of each event type and its
//! version, the subjects and stream names, the message-id rules that make appends idempotent, and
//! the JSON Schemas generated from those types (`schemas/`, checked by a test).

mod admin;
mod envelope;
mod hypotheses;
mod incidents;
mod payloads;
pub mod schema;
mod slack;
pub mod subjects;
mod tasks;
mod trace;

pub use admin::{
    RESERVED_USER_IDS, SYSTEM_ACTOR_PREFIX, TenantResumed, TenantRetention, TenantRetentionSet,
    TenantSecretRemoved, TenantSecretSet, TenantSuspended, UserAdded, UserRemoved, UserUpdated,
    has_forbidden_control, is_plausible_email, is_system_actor, is_valid_name,
    is_valid_secret_name, is_valid_user_id, system_actor,
};
pub use envelope::{DecodeError, Envelope, Event, EventPayload, Headers};
pub use hypotheses::{
    CauseKind, Evidence, EvidenceKind, HypothesesProposed, Hypothesis, HypothesisChange,
    HypothesisChangeKind, HypothesisVerdictGiven, IncidentLinked, ModelCallRecorded, TokenUsage,
    Verdict,
};
pub use incidents::{
    CORRELATOR, CorrelationRules, CorrelationRulesSet, IncidentAssigned, IncidentNoteAdded,
    IncidentOpened, IncidentReopened, IncidentResolved, IncidentState, IncidentTransitioned,
    SignalAttached, SignalResolved, TenantIntegrations, TenantIntegrationsSet, TenantLlm,
    TenantSlack, WindowKind, derived_id,
};
pub use payloads::{
    Role, Severity, SignalReceived, SignalSource, SignalStatus, TenantCreated, WebhookTokenIssued,
    WebhookTokenRevoked,
};
pub use slack::{SLACK_NOTIFIER, SlackMessagePosted};
pub use tasks::{
    TaskCancelled, TaskClaimed, TaskCompleted, TaskCreated, TaskFailed, TaskLeaseExpired,
    TaskLogged, TaskOutcomeRefused, TaskProgressed, TaskReleased, TaskRetried, WorkerGone,
    WorkerHeartbeatRecorded, WorkerRegistered, WorkerTokenIssued, WorkerTokenRevoked,
};
pub use trace::TraceParent;

/// A deterministic `Nats-Msg-Id`: blake3 over the parts, in hex.
pub fn message_id(parts: &[&str]) -> String {
    digest(parts).to_hex().to_string()
}

/// blake3 over the parts, each followed by a NUL so that `("ab", "c")` and `("a", "bc")` differ.
pub fn digest(parts: &[&str]) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update(&[0]);
    }
    hasher.finalize()
}

/// A tenant slug: 1 to 63 characters of `a-z`, `0-9` and `-`, starting with a letter or digit.
/// Slugs travel in subjects, so they must be a single valid subject token.
pub fn is_valid_slug(slug: &str) -> bool {
    !slug.is_empty()
        && slug.len() <= 63
        && !slug.starts_with('-')
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_differ_when_parts_shift_across_a_boundary() {
        assert_ne!(message_id(&["ab", "c"]), message_id(&["a", "bc"]));
        assert_eq!(message_id(&["a", "b"]), message_id(&["a", "b"]));
    }

    #[test]
    fn slugs_accept_subject_safe_names_only() {
        assert!(is_valid_slug("default"));
        assert!(is_valid_slug("team-7"));
        for bad in ["", "-x", "A", "a.b", "a b", "a*", "a>", &"x".repeat(64)] {
            assert!(!is_valid_slug(bad), "{bad:?} should be refused");
        }
    }
}
