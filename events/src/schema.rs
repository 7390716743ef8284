//! JSON Schemas generated from the Rust types: every event here, and (through `named` and
//! `check_dir`) the HTTP bodies in the `copilot` crate. `schemas/` holds the committed copies;
//! a test fails when they drift, and `UPDATE_SCHEMAS=1 cargo test` rewrites them.

use std::path::Path;

use schemars::{JsonSchema, schema_for};

use crate::{
    CorrelationRulesSet, Envelope, EventPayload, HypothesesProposed, HypothesisVerdictGiven,
    IncidentAssigned, IncidentLinked, IncidentNoteAdded, IncidentOpened, IncidentReopened,
    IncidentResolved, IncidentTransitioned, ModelCallRecorded, SignalAttached, SignalReceived,
    SignalResolved, TenantCreated, TenantIntegrationsSet, TenantResumed, TenantRetentionSet,
    TenantSecretRemoved, TenantSecretSet, TenantSuspended, UserAdded, UserRemoved, UserUpdated,
    WebhookTokenIssued, WebhookTokenRevoked,
};

fn payload<P: EventPayload>() -> (String, String) {
    named::<P>(&format!("{}.v{}.json", P::TYPE, P::VERSION))
}

/// The schema of `T` as a file: (file name, pretty JSON with a final newline).
pub fn named<T: JsonSchema>(name: &str) -> (String, String) {
    let schema = serde_json::to_value(schema_for!(T)).expect("schema serializes");
    let mut text = serde_json::to_string_pretty(&schema).expect("json serializes");
    text.push('\n');
    (name.to_owned(), text)
}

/// Every event schema file: (file name, contents).
pub fn all() -> Vec<(String, String)> {
    vec![
        named::<Envelope>("Envelope.json"),
        payload::<SignalReceived>(),
        payload::<TenantCreated>(),
        payload::<WebhookTokenIssued>(),
        payload::<WebhookTokenRevoked>(),
        payload::<CorrelationRulesSet>(),
        payload::<TenantIntegrationsSet>(),
        payload::<IncidentOpened>(),
        payload::<SignalAttached>(),
        payload::<SignalResolved>(),
        payload::<IncidentResolved>(),
        payload::<IncidentReopened>(),
        payload::<IncidentTransitioned>(),
        payload::<IncidentAssigned>(),
        payload::<IncidentNoteAdded>(),
        payload::<HypothesesProposed>(),
        payload::<HypothesisVerdictGiven>(),
        payload::<ModelCallRecorded>(),
        payload::<TenantSuspended>(),
        payload::<TenantResumed>(),
        payload::<TenantRetentionSet>(),
        payload::<UserAdded>(),
        payload::<UserUpdated>(),
        payload::<UserRemoved>(),
        payload::<TenantSecretSet>(),
        payload::<TenantSecretRemoved>(),
        payload::<IncidentLinked>(),
        payload::<crate::SlackMessagePosted>(),
        payload::<crate::tasks::TaskCreated>(),
        payload::<crate::tasks::TaskClaimed>(),
        payload::<crate::tasks::TaskProgressed>(),
        payload::<crate::tasks::TaskLogged>(),
        payload::<crate::tasks::TaskCompleted>(),
        payload::<crate::tasks::TaskFailed>(),
        payload::<crate::tasks::TaskLeaseExpired>(),
        payload::<crate::tasks::TaskRetried>(),
        payload::<crate::tasks::TaskCancelled>(),
        payload::<crate::tasks::TaskOutcomeRefused>(),
        payload::<crate::tasks::TaskReleased>(),
        payload::<crate::tasks::WorkerRegistered>(),
        payload::<crate::tasks::WorkerHeartbeatRecorded>(),
        payload::<crate::tasks::WorkerGone>(),
        payload::<crate::tasks::WorkerTokenIssued>(),
        payload::<crate::tasks::WorkerTokenRevoked>(),
    ]
}

/// Compares `files` with `dir` and returns the names that differ; with `UPDATE_SCHEMAS` set it
/// writes them instead and returns none.
pub fn check_dir(dir: &Path, files: Vec<(String, String)>) -> Vec<String> {
    let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
    if update {
        std::fs::create_dir_all(dir).expect("creating the schema directory");
    }
    let mut stale = Vec::new();
    for (name, contents) in files {
        let path = dir.join(&name);
        if update {
            std::fs::write(&path, &contents).expect("writing a schema");
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(contents.as_str()) {
            stale.push(name);
        }
    }
    stale
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    #[test]
    fn schemas_on_disk_match_the_rust_types() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas/events");

        let stale = super::check_dir(&dir, super::all());

        assert!(
            stale.is_empty(),
            "schemas/events is stale for {stale:?}; run `UPDATE_SCHEMAS=1 cargo test -p copilot-events` and commit the result"
        );
    }
}
