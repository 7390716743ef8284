//! The correlator's state in the store, as the deciders' types: loading what a batch touches,
//! saving what it changed, and the conversions between the `correlator_*` rows and
//! [`Incident`] and [`SignalRecord`]. All SQL stays in `copilot-store`.

use std::collections::BTreeSet;

use anyhow::Context as _;
use copilot_commands::{
    correlation::{Batch, Changes, SignalRecord, Waiting},
    incident::{Firing, Incident},
};
use copilot_events::{IncidentState, Severity, SignalStatus};
use copilot_store::{CorrelatorIncident, CorrelatorSignal, Store, Tx};
use uuid::Uuid;

/// What one signal of a batch needs loaded: its tenant, its instance id and its correlation key.
pub(crate) struct Wanted {
    pub tenant: String,
    pub signal_id: Uuid,
    pub key: String,
}

/// Loads (and locks, for incidents) what a batch's signals touch: their records, the waiting
/// signals of their keys, the newest incident of each key and the incidents their records
/// joined.
pub(crate) async fn load(
    store: &Store,
    tx: &mut Tx<'_>,
    wanted: &[Wanted],
) -> anyhow::Result<Batch> {
    if wanted.is_empty() {
        return Ok(Batch::default());
    }
    let ids: Vec<(String, Uuid)> = wanted
        .iter()
        .map(|w| (w.tenant.clone(), w.signal_id))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let keys: Vec<(String, String)> = wanted
        .iter()
        .map(|w| (w.tenant.clone(), w.key.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let known = store.correlator_signals(tx, &ids).await?;
    let pending = store.pending_correlator_signals(tx, &keys).await?;
    let mut incident_ids: BTreeSet<(String, Uuid)> = store
        .latest_correlator_incident_ids(tx, &keys)
        .await?
        .into_iter()
        .collect();
    incident_ids.extend(
        known
            .iter()
            .filter_map(|s| s.incident_id.map(|id| (s.tenant.clone(), id))),
    );
    let incidents = lock(store, tx, incident_ids.into_iter().collect::<Vec<_>>()).await?;
    let records = known
        .into_iter()
        .chain(pending)
        .map(record_of)
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Batch::new(records, incidents))
}

/// Loads and locks incidents by (tenant, id).
pub(crate) async fn lock(
    store: &Store,
    tx: &mut Tx<'_>,
    ids: Vec<(String, Uuid)>,
) -> anyhow::Result<Vec<Incident>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    store
        .lock_correlator_incidents(tx, &ids)
        .await?
        .into_iter()
        .map(incident_of)
        .collect()
}

/// Saves what a batch changed.
pub(crate) async fn save(store: &Store, tx: &mut Tx<'_>, changes: &Changes) -> anyhow::Result<()> {
    let signals: Vec<CorrelatorSignal> = changes.signals.iter().map(signal_row).collect();
    store.save_correlator_signals(tx, &signals).await?;
    for incident in &changes.incidents {
        store
            .save_correlator_incident(tx, &incident_row(incident))
            .await?;
    }
    Ok(())
}

/// An incident row as the aggregate. Rows an older correlator wrote name a phase (`open`,
/// `closed`) rather than a state; they read as its first state.
pub(crate) fn incident_of(row: CorrelatorIncident) -> anyhow::Result<Incident> {
    let state = match row.state.as_str() {
        "open" => IncidentState::Detected,
        "closed" => IncidentState::Learned,
        other => IncidentState::parse(other).with_context(|| {
            format!(
                "incident {} of tenant {} has an unknown correlator state {other:?}",
                row.id, row.tenant
            )
        })?,
    };
    let mut firing = Firing::default();
    for (count, stored) in firing.0.iter_mut().zip(&row.firing) {
        *count = (*stored).max(0) as u32;
    }
    Ok(Incident {
        tenant: row.tenant,
        id: row.id,
        key: row.key,
        state,
        opened_at: row.opened_at,
        window_from: row.window_from,
        last_signal_at: row.last_signal_at,
        resolved_at: row.resolved_at,
        resolve_due: row.resolve_due,
        generation: row.generation.max(0) as u32,
        firing,
        top: Severity::from_rank(row.top_rank),
    })
}

pub(crate) fn incident_row(incident: &Incident) -> CorrelatorIncident {
    CorrelatorIncident {
        tenant: incident.tenant.clone(),
        id: incident.id,
        key: incident.key.clone(),
        state: incident.state.as_str().to_owned(),
        opened_at: incident.opened_at,
        window_from: incident.window_from,
        last_signal_at: incident.last_signal_at,
        resolved_at: incident.resolved_at,
        resolve_due: incident.resolve_due,
        generation: incident.generation as i32,
        firing: incident.firing.0.iter().map(|c| *c as i32).collect(),
        top_rank: incident.top.rank(),
    }
}

/// A signal row as the decider's record. A waiting signal whose stored attachment cannot be
/// read waits no more: it could never be attached.
fn record_of(row: CorrelatorSignal) -> anyhow::Result<SignalRecord> {
    let status = match row.status.as_str() {
        "firing" => SignalStatus::Firing,
        "resolved" => SignalStatus::Resolved,
        other => anyhow::bail!(
            "signal {} of tenant {} has an unknown correlator status {other:?}",
            row.signal_id,
            row.tenant
        ),
    };
    let pending = row.pending.and_then(|json| {
        serde_json::from_value::<Waiting>(json)
            .inspect_err(|err| {
                tracing::warn!(
                    tenant = %row.tenant,
                    signal_id = %row.signal_id,
                    error = %err,
                    "waiting signal unreadable; it no longer waits"
                );
            })
            .ok()
    });
    Ok(SignalRecord {
        tenant: row.tenant,
        signal_id: row.signal_id,
        incident_id: row.incident_id,
        key: row.key,
        status,
        severity: Severity::from_rank(row.severity_rank),
        at: row.at,
        pending,
    })
}

fn signal_row(record: &SignalRecord) -> CorrelatorSignal {
    CorrelatorSignal {
        tenant: record.tenant.clone(),
        signal_id: record.signal_id,
        incident_id: record.incident_id,
        key: record.key.clone(),
        status: record.status.as_str().to_owned(),
        severity_rank: record.severity.rank(),
        at: record.at,
        pending: record
            .pending
            .as_ref()
            .map(|w| serde_json::to_value(w).expect("a waiting signal serializes")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incident_row_round_trips_and_older_phases_read_as_their_first_state() {
        // Arrange
        let at = "2026-11-22T08:00:00Z".parse().unwrap();
        let row = CorrelatorIncident {
            tenant: "acme".into(),
            id: Uuid::nil(),
            key: "service=api".into(),
            state: "mitigated".into(),
            opened_at: at,
            window_from: at,
            last_signal_at: at,
            resolved_at: None,
            resolve_due: Some(at),
            generation: 2,
            firing: vec![0, 1, 0, 3, 0],
            top_rank: 4,
        };

        // Act
        let incident = incident_of(row.clone()).unwrap();
        let open = incident_of(CorrelatorIncident {
            state: "open".into(),
            ..row.clone()
        })
        .unwrap();
        let closed = incident_of(CorrelatorIncident {
            state: "closed".into(),
            ..row.clone()
        })
        .unwrap();

        // Assert
        assert_eq!(incident_row(&incident), row);
        assert_eq!(incident.severity(), Severity::Error);
        assert_eq!(open.state, IncidentState::Detected);
        assert_eq!(closed.state, IncidentState::Learned);
        assert!(
            incident_of(CorrelatorIncident {
                state: "bogus".into(),
                ..row
            })
            .is_err()
        );
    }
}
