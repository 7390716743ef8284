//! What each projection does with the events of one batch, before writing them in bulk.

use std::collections::HashMap;

use copilot_events::{Envelope, Event, SignalReceived};
use copilot_store::{SignalRow, Store, TenantRow, TokenRevocation, TokenRow, Tx};
use uuid::Uuid;

use crate::{Projection, subject_tenant};

pub(crate) enum Fold {
    /// One row per alert instance; several notifications of one instance in a batch merge.
    Signals {
        rows: HashMap<Uuid, SignalRow>,
        events: usize,
    },
    /// Tenant administration, applied in order.
    Tenants(Vec<TenantChange>),
}

pub(crate) enum TenantChange {
    Created(TenantRow),
    TokenIssued(TokenRow),
    TokenRevoked(TokenRevocation),
}

impl Fold {
    pub fn new(projection: Projection) -> Self {
        match projection {
            Projection::Signals => Self::Signals {
                rows: HashMap::new(),
                events: 0,
            },
            Projection::Tenants => Self::Tenants(Vec::new()),
        }
    }

    /// Events folded so far.
    pub fn len(&self) -> usize {
        match self {
            Self::Signals { events, .. } => *events,
            Self::Tenants(changes) => changes.len(),
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
        match (self, event) {
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
                    revoked_at: at,
                    seq,
                }))
            }
            (_, other) => {
                return Err(format!(
                    "{} does not belong on this stream",
                    event_name(&other)
                ));
            }
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
                    }
                }
                Ok(())
            }
        }
    }
}

fn event_name(event: &Event) -> &'static str {
    match event {
        Event::SignalReceived(_) => "SignalReceived",
        Event::TenantCreated(_) => "TenantCreated",
        Event::WebhookTokenIssued(_) => "WebhookTokenIssued",
        Event::WebhookTokenRevoked(_) => "WebhookTokenRevoked",
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

/// A payload map as JSON text, for a `::jsonb` cast in the bulk upsert.
fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("maps of strings and numbers serialize")
}
