//! What each projection does with the events of one batch, before writing them in bulk.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use copilot_events::{
    Envelope, Event, IncidentState, ModelCallRecorded, Role, SignalReceived, is_system_actor,
};
use copilot_runtime::consume::subject_tenant;
use copilot_store::{
    AttachedSignal, AuditRow, HypothesisRow, IncidentEventRow, NewIncident, NewTaskRow,
    ProposalRow, SignalRow, StateChange, Store, TaskChange, TenantRow, TenantSetting,
    TokenRevocation, TokenRow, Tx, UsageRow, UserChange, UserRow, WorkerTokenRow,
};
use uuid::Uuid;

use crate::Projection;

pub(crate) enum Fold {
    /// One row per alert instance; several notifications of one instance in a batch merge.
    Signals {
        rows: HashMap<Uuid, SignalRow>,
        events: usize,
    },
    /// Tenant administration, applied in order.
    Tenants(Vec<TenantChange>),
    /// Incident events, applied in order.
    Incidents(Vec<IncidentChange>),
    /// Model calls, one usage row each.
    Telemetry(Vec<(u64, String, ModelCallRecorded)>),
    /// Task and worker events, applied in order.
    Tasks(Vec<Stamped>),
}

/// An event with where and when it happened, applied on its own.
pub(crate) struct Stamped {
    seq: u64,
    tenant: String,
    at: DateTime<Utc>,
    event: Event,
    /// The audit row of a person's command on a task (created, cancelled), written with it.
    audit: Option<Box<Audit>>,
}

pub(crate) enum TenantChange {
    Created(TenantRow),
    TokenIssued(TokenRow),
    TokenRevoked(TokenRevocation),
    Suspended {
        tenant: String,
        by: String,
        reason: String,
        at: DateTime<Utc>,
        seq: u64,
    },
    Resumed {
        tenant: String,
        seq: u64,
    },
    UserAdded {
        tenant: String,
        user: copilot_events::UserAdded,
        at: DateTime<Utc>,
        seq: u64,
    },
    UserUpdated {
        tenant: String,
        change: copilot_events::UserUpdated,
        at: DateTime<Utc>,
        seq: u64,
    },
    UserRemoved {
        tenant: String,
        user_id: String,
    },
    Audit(Audit),
    /// A worker token issued or revoked.
    WorkerToken(Stamped),
    Setting {
        setting: TenantSetting,
        tenant: String,
        value: String,
        set_by: String,
        at: DateTime<Utc>,
        seq: u64,
    },
}

/// One incident event with what the timeline keeps of it.
pub(crate) struct IncidentChange {
    seq: u64,
    event_id: Uuid,
    tenant: String,
    incident_id: Uuid,
    actor: String,
    request_id: Option<String>,
    at: DateTime<Utc>,
    payload: String,
    event: Event,
    audit: Option<Audit>,
}

/// A command as the audit log keeps it: any event whose envelope names an actor.
pub(crate) struct Audit {
    event_id: Uuid,
    tenant: String,
    at: DateTime<Utc>,
    actor: String,
    action: &'static str,
    target: String,
    request_id: Option<String>,
    source_addr: Option<String>,
    details: String,
}

impl Audit {
    fn of(envelope: &Envelope, event: &Event) -> Option<Self> {
        let actor = envelope.actor.clone()?;
        let target = match event {
            Event::TenantCreated(_) | Event::TenantSuspended(_) | Event::TenantResumed(_) => {
                format!("tenant:{}", envelope.tenant)
            }
            Event::CorrelationRulesSet(_) => "settings:correlation".to_owned(),
            Event::TenantIntegrationsSet(_) => "settings:integrations".to_owned(),
            Event::TenantRetentionSet(_) => "settings:retention".to_owned(),
            Event::WebhookTokenIssued(e) => format!("token:{}", e.token_id),
            Event::WebhookTokenRevoked(e) => format!("token:{}", e.token_id),
            Event::UserAdded(e) => format!("user:{}", e.user_id),
            Event::UserUpdated(e) => format!("user:{}", e.user_id),
            Event::UserRemoved(e) => format!("user:{}", e.user_id),
            Event::TenantSecretSet(e) => format!("secret:{}", e.name),
            Event::WorkerTokenIssued(e) => format!("worker_token:{}", e.token_id),
            Event::WorkerTokenRevoked(e) => format!("worker_token:{}", e.token_id),
            Event::TenantSecretRemoved(e) => format!("secret:{}", e.name),
            Event::TaskCreated(e) => format!("task:{}", e.task_id),
            Event::TaskCancelled(e) => format!("task:{}", e.task_id),
            other => match incident_of(other) {
                Some((id, _)) => format!("incident:{id}"),
                None => return None,
            },
        };
        // What changed, less what must not be repeated: a token's hash stays in its own table.
        let mut details: serde_json::Value =
            serde_json::from_str(envelope.payload.get()).unwrap_or_default();
        if let Some(map) = details.as_object_mut() {
            map.remove("token_hash");
        }
        Some(Self {
            event_id: envelope.id,
            tenant: envelope.tenant.clone(),
            at: envelope.recorded_at,
            actor,
            action: event.name(),
            target,
            request_id: envelope.request_id.clone(),
            source_addr: envelope.source_addr.clone(),
            details: details.to_string(),
        })
    }

    async fn write(&self, store: &Store, tx: &mut Tx<'_>) -> copilot_store::Result<()> {
        store
            .insert_audit(
                tx,
                &AuditRow {
                    event_id: self.event_id,
                    tenant: &self.tenant,
                    at: self.at,
                    actor: &self.actor,
                    action: self.action,
                    target: &self.target,
                    request_id: self.request_id.as_deref(),
                    source_addr: self.source_addr.as_deref(),
                    details: &self.details,
                },
            )
            .await
    }
}

impl Fold {
    pub fn new(projection: Projection) -> Self {
        match projection {
            Projection::Signals => Self::Signals {
                rows: HashMap::new(),
                events: 0,
            },
            Projection::Tenants => Self::Tenants(Vec::new()),
            Projection::Incidents => Self::Incidents(Vec::new()),
            Projection::Telemetry => Self::Telemetry(Vec::new()),
            Projection::Tasks => Self::Tasks(Vec::new()),
        }
    }

    /// Events folded so far.
    pub fn len(&self) -> usize {
        match self {
            Self::Signals { events, .. } => *events,
            // An audit row travels with the event it records, not as an event of its own.
            Self::Tenants(changes) => changes
                .iter()
                .filter(|c| !matches!(c, TenantChange::Audit(_)))
                .count(),
            Self::Incidents(changes) => changes.len(),
            Self::Telemetry(calls) => calls.len(),
            Self::Tasks(events) => events.len(),
        }
    }

    /// Folds one event in. An `Err` is a reason to park it: it will never apply.
    pub fn add(&mut self, seq: u64, subject: &str, envelope: &Envelope) -> Result<(), String> {
        if subject_tenant(subject) != envelope.tenant {
            return Err(format!(
                "envelope tenant {:?} does not match subject {subject:?}",
                envelope.tenant
            ));
        }
        let event = envelope.decode().map_err(|e| e.to_string())?;
        let tenant = envelope.tenant.clone();
        let at = envelope.occurred_at;
        // A tenant command's audit row is recorded after the event itself, and only if it
        // applies (a parked event is no command); an incident's travels with its change.
        let (tenant_audit, audit) = match (&*self, Audit::of(envelope, &event)) {
            (Self::Tenants(_), audit) => (audit, None),
            (_, audit) => (None, audit),
        };
        match (&mut *self, event) {
            (Self::Signals { rows, events }, Event::SignalReceived(signal)) => {
                *events += 1;
                let row = signal_row(seq, &tenant, envelope, signal)?;
                match rows.get_mut(&row.id) {
                    Some(existing) => merge(existing, row),
                    None => {
                        rows.insert(row.id, row);
                    }
                }
            }
            (Self::Tenants(changes), Event::TenantCreated(created)) => {
                if created.slug != tenant {
                    return Err("TenantCreated slug differs from the envelope tenant".into());
                }
                changes.push(TenantChange::Created(TenantRow {
                    slug: created.slug,
                    name: created.name,
                    created_by: created.created_by,
                    created_at: at,
                    seq,
                }));
            }
            (Self::Tenants(changes), Event::WebhookTokenIssued(issued)) => {
                changes.push(TenantChange::TokenIssued(TokenRow {
                    token_id: issued.token_id,
                    tenant,
                    token_hash: issued.token_hash,
                    prefix: issued.prefix,
                    issued_by: issued.issued_by,
                    issued_at: at,
                    seq,
                }))
            }
            (Self::Tenants(changes), Event::WebhookTokenRevoked(revoked)) => {
                changes.push(TenantChange::TokenRevoked(TokenRevocation {
                    token_id: revoked.token_id,
                    tenant,
                    revoked_by: revoked.revoked_by,
                    revoked_at: revoked.effective_at.unwrap_or(at),
                    seq,
                }))
            }
            (Self::Tenants(changes), Event::TenantSuspended(e)) => {
                changes.push(TenantChange::Suspended {
                    tenant,
                    by: e.suspended_by,
                    reason: e.reason,
                    at,
                    seq,
                })
            }
            (Self::Tenants(changes), Event::TenantResumed(_)) => {
                changes.push(TenantChange::Resumed { tenant, seq })
            }
            (Self::Tenants(changes), Event::UserAdded(user)) => {
                changes.push(TenantChange::UserAdded {
                    tenant,
                    user,
                    at,
                    seq,
                })
            }
            (Self::Tenants(changes), Event::UserUpdated(change)) => {
                changes.push(TenantChange::UserUpdated {
                    tenant,
                    change,
                    at,
                    seq,
                })
            }
            (Self::Tenants(changes), Event::UserRemoved(e)) => {
                changes.push(TenantChange::UserRemoved {
                    tenant,
                    user_id: e.user_id,
                })
            }
            (Self::Tenants(changes), Event::TenantRetentionSet(set)) => {
                changes.push(TenantChange::Setting {
                    setting: TenantSetting::Retention,
                    tenant,
                    value: json(&set.retention),
                    set_by: set.set_by,
                    at,
                    seq,
                })
            }
            (Self::Tenants(changes), Event::CorrelationRulesSet(set)) => {
                changes.push(TenantChange::Setting {
                    setting: TenantSetting::CorrelationRules,
                    tenant,
                    value: json(&set.rules),
                    set_by: set.set_by,
                    at,
                    seq,
                })
            }
            (Self::Tenants(changes), Event::TenantIntegrationsSet(set)) => {
                changes.push(TenantChange::Setting {
                    setting: TenantSetting::Integrations,
                    tenant,
                    value: json(&set.integrations),
                    set_by: set.set_by,
                    at,
                    seq,
                })
            }
            // The secret itself is in its own table, written by the command; the stream keeps
            // who changed which secret when, for the audit log.
            (Self::Tenants(_), Event::TenantSecretSet(_) | Event::TenantSecretRemoved(_)) => {}
            (
                Self::Tenants(changes),
                event @ (Event::WorkerTokenIssued(_) | Event::WorkerTokenRevoked(_)),
            ) => changes.push(TenantChange::WorkerToken(Stamped {
                seq,
                tenant,
                at,
                event,
                audit: None,
            })),
            (Self::Tasks(events), event) if task_event(&event) => {
                events.push(Stamped {
                    seq,
                    tenant,
                    at,
                    event,
                    audit: audit.map(Box::new),
                });
            }
            (Self::Telemetry(calls), Event::ModelCallRecorded(call)) => {
                calls.push((seq, tenant, call));
            }
            (Self::Incidents(changes), event) => {
                let (incident_id, actor) = incident_of(&event)
                    .ok_or_else(|| format!("{} does not belong on this stream", event.name()))?;
                if subject.rsplit('.').next() != Some(incident_id.to_string().as_str()) {
                    return Err(format!(
                        "{} for incident {incident_id} on another incident's subject {subject:?}",
                        event.name()
                    ));
                }
                changes.push(IncidentChange {
                    seq,
                    event_id: envelope.id,
                    tenant,
                    incident_id,
                    actor: actor.to_owned(),
                    request_id: envelope.request_id.clone(),
                    at,
                    payload: envelope.payload.get().to_owned(),
                    event,
                    audit,
                });
            }
            (_, other) => {
                return Err(format!("{} does not belong on this stream", other.name()));
            }
        }
        if let (Self::Tenants(changes), Some(audit)) = (self, tenant_audit) {
            changes.push(TenantChange::Audit(audit));
        }
        Ok(())
    }

    pub async fn write(self, store: &Store, tx: &mut Tx<'_>) -> copilot_store::Result<()> {
        match self {
            Self::Signals { rows, .. } => {
                store.upsert_signals(tx, rows.into_values().collect()).await
            }
            Self::Tenants(changes) => {
                for change in changes {
                    match change {
                        TenantChange::Created(row) => store.insert_tenant(tx, &row).await?,
                        TenantChange::TokenIssued(row) => store.insert_token(tx, &row).await?,
                        TenantChange::TokenRevoked(row) => store.revoke_token(tx, &row).await?,
                        TenantChange::Suspended {
                            tenant,
                            by,
                            reason,
                            at,
                            seq,
                        } => {
                            store
                                .suspend_tenant(tx, &tenant, &by, &reason, at, seq)
                                .await?
                        }
                        TenantChange::Resumed { tenant, seq } => {
                            store.resume_tenant(tx, &tenant, seq).await?
                        }
                        TenantChange::UserAdded {
                            tenant,
                            user,
                            at,
                            seq,
                        } => {
                            let role = user.role.as_str();
                            store
                                .insert_user(
                                    tx,
                                    &UserRow {
                                        tenant: &tenant,
                                        user_id: &user.user_id,
                                        email: &user.email,
                                        display_name: &user.display_name,
                                        role,
                                        slack_user_id: user.slack_user_id.as_deref(),
                                        added_by: &user.added_by,
                                        at,
                                        seq,
                                    },
                                )
                                .await?
                        }
                        TenantChange::UserUpdated {
                            tenant,
                            change,
                            at,
                            seq,
                        } => {
                            let role = change.role.map(Role::as_str);
                            store
                                .update_user(
                                    tx,
                                    &UserChange {
                                        tenant: &tenant,
                                        user_id: &change.user_id,
                                        role,
                                        display_name: change.display_name.as_deref(),
                                        slack_user_id: change.slack_user_id.as_deref(),
                                        at,
                                        seq,
                                    },
                                )
                                .await?
                        }
                        TenantChange::UserRemoved { tenant, user_id } => {
                            store.remove_user(tx, &tenant, &user_id).await?
                        }
                        TenantChange::Audit(audit) => audit.write(store, tx).await?,
                        TenantChange::WorkerToken(e) => apply_task_event(store, tx, e).await?,
                        TenantChange::Setting {
                            setting,
                            tenant,
                            value,
                            set_by,
                            at,
                            seq,
                        } => {
                            store
                                .set_tenant_setting(tx, setting, &tenant, &value, &set_by, at, seq)
                                .await?
                        }
                    }
                }
                Ok(())
            }
            Self::Incidents(changes) => {
                for change in changes {
                    apply_incident(store, tx, change).await?;
                }
                Ok(())
            }
            Self::Tasks(events) => {
                for e in events {
                    apply_task_event(store, tx, e).await?;
                }
                Ok(())
            }
            Self::Telemetry(calls) => {
                for (seq, tenant, c) in calls {
                    store
                        .insert_usage(
                            tx,
                            &UsageRow {
                                call_id: c.call_id,
                                tenant: &tenant,
                                incident_id: c.incident_id,
                                engine: &c.engine,
                                model: &c.model,
                                outcome: &c.outcome,
                                prompt_tokens: c.usage.prompt_tokens as i32,
                                completion_tokens: c.usage.completion_tokens as i32,
                                latency_ms: c.latency_ms as i64,
                                cost_usd: c.cost_usd,
                                at: c.at,
                                seq,
                            },
                        )
                        .await?;
                }
                Ok(())
            }
        }
    }
}

/// Whether an event belongs on TASKS.
fn task_event(event: &Event) -> bool {
    matches!(
        event,
        Event::TaskCreated(_)
            | Event::TaskClaimed(_)
            | Event::TaskProgressed(_)
            | Event::TaskLogged(_)
            | Event::TaskCompleted(_)
            | Event::TaskFailed(_)
            | Event::TaskLeaseExpired(_)
            | Event::TaskRetried(_)
            | Event::TaskCancelled(_)
            | Event::TaskOutcomeRefused(_)
            | Event::TaskReleased(_)
            | Event::WorkerRegistered(_)
            | Event::WorkerHeartbeatRecorded(_)
            | Event::WorkerGone(_)
    )
}

/// Applies one task, worker or worker-token event to its row.
async fn apply_task_event(store: &Store, tx: &mut Tx<'_>, e: Stamped) -> copilot_store::Result<()> {
    let Stamped {
        seq,
        tenant,
        at,
        event,
        audit,
    } = e;
    if let Some(audit) = &audit {
        audit.write(store, tx).await?;
    }
    let tenant = tenant.as_str();
    let (task_id, change) = match &event {
        Event::TaskCreated(c) => {
            return store
                .insert_task(
                    tx,
                    &NewTaskRow {
                        tenant,
                        task_id: c.task_id,
                        kind: &c.kind,
                        priority: c.priority,
                        timeout_secs: c.timeout_secs,
                        max_attempts: c.max_attempts,
                        incident_id: c.incident_id,
                        input: &c.input,
                        created_by: &c.actor,
                        at,
                        seq,
                    },
                )
                .await;
        }
        Event::TaskLogged(l) => {
            return store
                .insert_task_log(tx, tenant, l.task_id, l.attempt, &l.lines, at, seq)
                .await;
        }
        Event::WorkerRegistered(w) => {
            return store
                .register_worker(
                    tx,
                    tenant,
                    w.worker_id,
                    &w.name,
                    &w.kinds,
                    w.capacity,
                    at,
                    seq,
                )
                .await;
        }
        Event::WorkerHeartbeatRecorded(w) => {
            return store
                .worker_seen(tx, tenant, w.worker_id, &w.tasks, at, seq)
                .await;
        }
        Event::WorkerGone(w) => {
            return store
                .worker_gone(tx, tenant, w.worker_id, &w.reason, at, seq)
                .await;
        }
        Event::WorkerTokenIssued(t) => {
            return store
                .insert_worker_token(
                    tx,
                    &WorkerTokenRow {
                        token_id: t.token_id,
                        tenant,
                        token_hash: &t.token_hash,
                        prefix: &t.prefix,
                        name: &t.name,
                        issued_by: &t.issued_by,
                        at,
                        seq,
                    },
                )
                .await;
        }
        Event::WorkerTokenRevoked(t) => {
            return store
                .revoke_worker_token(tx, tenant, t.token_id, &t.revoked_by, at, seq)
                .await;
        }
        Event::TaskClaimed(c) => (
            c.task_id,
            TaskChange::Claimed {
                attempt: c.attempt,
                worker_id: c.worker_id,
            },
        ),
        Event::TaskProgressed(p) => (
            p.task_id,
            TaskChange::Progressed {
                percent: p.percent,
                message: p.message.as_deref(),
            },
        ),
        Event::TaskCompleted(c) => (c.task_id, TaskChange::Completed { result: &c.result }),
        Event::TaskFailed(f) => (
            f.task_id,
            TaskChange::Failed {
                reason: &f.reason,
                last: f.last,
            },
        ),
        Event::TaskLeaseExpired(l) => (l.task_id, TaskChange::LeaseExpired),
        Event::TaskRetried(r) => (
            r.task_id,
            TaskChange::Retried {
                not_before: r.not_before,
            },
        ),
        Event::TaskCancelled(c) => (c.task_id, TaskChange::Cancelled { by: &c.actor }),
        Event::TaskOutcomeRefused(r) => (r.task_id, TaskChange::OutcomeRefused),
        Event::TaskReleased(r) => (r.task_id, TaskChange::Released { attempt: r.attempt }),
        _ => return Ok(()),
    };
    store
        .update_task(tx, tenant, task_id, &change, at, seq)
        .await
}

/// The incident an incident event is about, and who acted.
fn incident_of(event: &Event) -> Option<(Uuid, &str)> {
    event.incident()
}

/// Applies one incident event: recorded in the timeline first, and skipped if its id was
/// recorded before (a decision re-appended after the stream's duplicate window).
async fn apply_incident(
    store: &Store,
    tx: &mut Tx<'_>,
    c: IncidentChange,
) -> copilot_store::Result<()> {
    let recorded = store
        .record_incident_event(
            tx,
            &IncidentEventRow {
                event_id: c.event_id,
                tenant: &c.tenant,
                incident_id: c.incident_id,
                seq: c.seq,
                event_type: c.event.name(),
                actor: &c.actor,
                request_id: c.request_id.as_deref(),
                occurred_at: c.at,
                payload: &c.payload,
            },
        )
        .await?;
    if !recorded {
        tracing::info!(event_id = %c.event_id, seq = c.seq, "incident event already applied; skipped");
        return store
            .touch_incident(tx, &c.tenant, c.incident_id, c.at, c.seq)
            .await;
    }
    if let Some(audit) = &c.audit {
        audit.write(store, tx).await?;
    }
    let tenant = c.tenant.as_str();
    let state = |state: IncidentState, by_person: bool, reopened: bool| StateChange {
        tenant,
        incident_id: c.incident_id,
        state: state.as_str(),
        by_person,
        reopened,
        at: c.at,
        seq: c.seq,
    };
    match &c.event {
        Event::IncidentOpened(e) => {
            store
                .insert_incident(
                    tx,
                    &NewIncident {
                        tenant,
                        id: e.incident_id,
                        key: &e.key,
                        title: &e.title,
                        service: e.service.as_deref(),
                        severity: e.severity.as_str(),
                        severity_rank: e.severity.rank(),
                        labels: &json(&e.labels),
                        rule: &e.rule,
                        opened_at: c.at,
                        seq: c.seq,
                    },
                )
                .await
        }
        Event::SignalAttached(e) => {
            store
                .attach_incident_signal(
                    tx,
                    &AttachedSignal {
                        tenant,
                        incident_id: e.incident_id,
                        signal_id: e.signal_id,
                        fingerprint: &e.fingerprint,
                        title: &e.title,
                        severity: e.severity.as_str(),
                        starts_at: e.starts_at,
                        explanation: &e.explanation,
                        incident_severity: e.incident_severity.as_str(),
                        incident_severity_rank: e.incident_severity.rank(),
                        at: c.at,
                        seq: c.seq,
                    },
                )
                .await
        }
        Event::SignalResolved(e) => {
            store
                .resolve_incident_signal(
                    tx,
                    tenant,
                    e.incident_id,
                    e.signal_id,
                    e.ends_at,
                    (e.incident_severity.as_str(), e.incident_severity.rank()),
                    c.at,
                    c.seq,
                )
                .await
        }
        Event::IncidentResolved(e) => {
            let by_person = !is_system_actor(&e.actor);
            store
                .change_incident_state(tx, &state(IncidentState::Resolved, by_person, false))
                .await
        }
        Event::IncidentReopened(e) => {
            let by_person = !is_system_actor(&e.actor);
            store
                .change_incident_state(tx, &state(e.to, by_person, true))
                .await
        }
        Event::IncidentTransitioned(e) => {
            store
                .change_incident_state(tx, &state(e.to, true, false))
                .await
        }
        Event::IncidentAssigned(e) => {
            store
                .assign_incident(
                    tx,
                    tenant,
                    e.incident_id,
                    e.assignee.as_deref(),
                    c.at,
                    c.seq,
                )
                .await
        }
        Event::IncidentNoteAdded(e) => {
            store
                .add_incident_note(
                    tx,
                    tenant,
                    e.incident_id,
                    e.note_id,
                    &e.actor,
                    &e.text,
                    c.at,
                    c.seq,
                )
                .await
        }
        Event::HypothesesProposed(e) => {
            let rows: Vec<(String, String)> = e
                .hypotheses
                .iter()
                .map(|h| {
                    let change = e
                        .changes
                        .iter()
                        .find(|c| c.hypothesis_id == h.id)
                        .map(|c| json(&c.change).trim_matches('"').to_owned())
                        .unwrap_or_default();
                    (json(&h.evidence), change)
                })
                .collect();
            let hypotheses: Vec<HypothesisRow> = e
                .hypotheses
                .iter()
                .zip(&rows)
                .enumerate()
                .map(|(rank, (h, (evidence, change)))| HypothesisRow {
                    hypothesis_id: &h.id,
                    rank: rank as i32 + 1,
                    cause: h.cause.as_str(),
                    component: h.component.as_deref(),
                    title: &h.title,
                    confidence: h.confidence,
                    evidence,
                    reasoning: &h.reasoning,
                    next_step: &h.next_step,
                    change: (!change.is_empty()).then_some(change.as_str()),
                })
                .collect();
            store
                .insert_proposal(
                    tx,
                    &ProposalRow {
                        tenant,
                        incident_id: e.incident_id,
                        proposal_id: e.proposal_id,
                        seq: c.seq,
                        engine: &e.engine,
                        model: e.model.as_deref(),
                        inconclusive: e.inconclusive,
                        at: c.at,
                        payload: &c.payload,
                    },
                    &hypotheses,
                )
                .await
        }
        Event::HypothesisVerdictGiven(e) => {
            store
                .record_verdict(
                    tx,
                    tenant,
                    e.incident_id,
                    &e.hypothesis_id,
                    e.verdict.as_str(),
                    e.note.as_deref(),
                    &e.actor,
                    c.at,
                    c.seq,
                )
                .await
        }
        // Nothing else of the incident changes, but its version follows its subject, which
        // commands append at.
        Event::IncidentLinked(_) => {
            store
                .touch_incident(tx, tenant, c.incident_id, c.at, c.seq)
                .await
        }
        Event::SlackMessagePosted(_) => {
            store
                .move_incident_version(tx, tenant, c.incident_id, c.seq)
                .await
        }
        _ => Ok(()),
    }
}

fn signal_row(
    seq: u64,
    tenant: &str,
    envelope: &Envelope,
    signal: SignalReceived,
) -> Result<SignalRow, String> {
    Ok(SignalRow {
        id: signal.instance_id(tenant),
        tenant: tenant.to_owned(),
        fingerprint: signal.fingerprint,
        starts_at: signal.starts_at,
        source: signal.source.as_str().to_owned(),
        status: signal.status.as_str().to_owned(),
        severity: signal.severity.as_str().to_owned(),
        service: signal.service,
        title: signal.title,
        labels: json(&signal.labels),
        annotations: json(&signal.annotations),
        values: signal.values.as_ref().map(json),
        generator_url: signal.generator_url,
        group_key: signal.group_key,
        receiver: signal.receiver,
        ends_at: signal.ends_at,
        first_received_at: envelope.occurred_at,
        last_received_at: envelope.occurred_at,
        notification_count: 1,
        raw: signal.raw.get().to_owned(),
        last_event_id: envelope.id,
        last_request_id: envelope.request_id.clone(),
        last_seq: seq,
    })
}

/// Merges a later notification of the same alert instance into the row, as the upsert would.
fn merge(existing: &mut SignalRow, later: SignalRow) {
    let resolved = existing.status == "resolved" || later.status == "resolved";
    let count = existing.notification_count + later.notification_count;
    let first = existing.first_received_at.min(later.first_received_at);
    let last = existing.last_received_at.max(later.last_received_at);
    let ends_at = existing.ends_at.max(later.ends_at);
    *existing = SignalRow {
        status: if resolved {
            "resolved".into()
        } else {
            later.status
        },
        notification_count: count,
        first_received_at: first,
        last_received_at: last,
        ends_at,
        ..later
    };
}

/// A payload map as JSON text, for a `::json` cast in the bulk upsert.
fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("maps of strings and numbers serialize")
}

#[cfg(test)]
mod tests {
    use copilot_events::{Headers, TenantCreated, subjects};

    use super::*;

    #[test]
    fn a_tenant_command_counts_as_one_event_though_it_also_writes_an_audit_row() {
        // Arrange: a tenant creation a person ran, so it carries an actor and is audited.
        let created = TenantCreated {
            slug: "acme".into(),
            name: "Acme".into(),
            created_by: "alice".into(),
        };
        let headers = Headers {
            actor: Some("alice".into()),
            ..Headers::default()
        };
        let envelope = Envelope::new("acme", &created, Utc::now(), headers);
        let mut fold = Fold::new(Projection::Tenants);

        // Act
        fold.add(1, &subjects::tenant("acme"), &envelope).unwrap();

        // Assert: two changes (the tenant, its audit row), one event.
        let Fold::Tenants(changes) = &fold else {
            panic!("a tenants fold")
        };
        assert_eq!(changes.len(), 2);
        assert_eq!(fold.len(), 1);
    }
}
