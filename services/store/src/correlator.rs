//! The correlator's own state: the incidents it opened per correlation key and every alert
//! instance it has seen. Only the correlator writes these tables, in the transaction that moves
//! its checkpoint, so a crash re-decides exactly what it had not committed. It loads what a batch
//! of signals touches in a few statements, decides in memory, and saves what changed.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{Result, Store, Tx};

/// An incident as the correlator tracks it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct CorrelatorIncident {
    pub tenant: String,
    pub id: Uuid,
    pub key: String,
    /// Its lifecycle state, as the read model spells it (`detected` … `inconclusive`).
    pub state: String,
    pub opened_at: DateTime<Utc>,
    /// Where its window starts: the opening, or the last reopen.
    pub window_from: DateTime<Utc>,
    pub last_signal_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolve_due: Option<DateTime<Utc>>,
    pub generation: i32,
    /// Attached alerts still firing, by severity rank (index 0-4).
    pub firing: Vec<i32>,
    /// Highest severity rank ever attached.
    pub top_rank: i16,
}

/// An alert instance as the correlator last saw it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct CorrelatorSignal {
    pub tenant: String,
    pub signal_id: Uuid,
    pub incident_id: Option<Uuid>,
    pub key: String,
    /// `firing` or `resolved`.
    pub status: String,
    pub severity_rank: i16,
    pub at: DateTime<Utc>,
    /// While it waits for its key's threshold: what attaching it will need.
    pub pending: Option<serde_json::Value>,
}

impl Store {
    /// The correlator's records of these alert instances, those it has seen (`ids` distinct).
    pub async fn correlator_signals(
        &self,
        tx: &mut Tx<'_>,
        ids: &[(String, Uuid)],
    ) -> Result<Vec<CorrelatorSignal>> {
        let (tenants, signal_ids): (Vec<&str>, Vec<Uuid>) =
            ids.iter().map(|(t, id)| (t.as_str(), *id)).unzip();
        Ok(sqlx::query_as(
            "SELECT s.tenant, s.signal_id, s.incident_id, s.key, s.status, s.severity_rank, s.at, s.pending
             FROM correlator_signals s
             JOIN UNNEST($1::text[], $2::uuid[]) AS w(tenant, signal_id)
               ON s.tenant = w.tenant AND s.signal_id = w.signal_id",
        )
        .bind(tenants)
        .bind(signal_ids)
        .fetch_all(&mut **tx)
        .await?)
    }

    /// Signals of these keys (tenant, key; distinct) waiting for their key's threshold, oldest
    /// first.
    pub async fn pending_correlator_signals(
        &self,
        tx: &mut Tx<'_>,
        keys: &[(String, String)],
    ) -> Result<Vec<CorrelatorSignal>> {
        let (tenants, keys): (Vec<&str>, Vec<&str>) =
            keys.iter().map(|(t, k)| (t.as_str(), k.as_str())).unzip();
        Ok(sqlx::query_as(
            "SELECT s.tenant, s.signal_id, s.incident_id, s.key, s.status, s.severity_rank, s.at, s.pending
             FROM correlator_signals s
             JOIN UNNEST($1::text[], $2::text[]) AS k(tenant, key)
               ON s.tenant = k.tenant AND s.key = k.key
             WHERE s.pending IS NOT NULL
             ORDER BY s.tenant, s.key, s.at, s.signal_id",
        )
        .bind(tenants)
        .bind(keys)
        .fetch_all(&mut **tx)
        .await?)
    }

    /// Inserts or updates the correlator's records of alert instances, in one statement
    /// (`signals` distinct by tenant and id).
    pub async fn save_correlator_signals(
        &self,
        tx: &mut Tx<'_>,
        signals: &[CorrelatorSignal],
    ) -> Result<()> {
        if signals.is_empty() {
            return Ok(());
        }
        let pending: Vec<Option<String>> = signals
            .iter()
            .map(|s| s.pending.as_ref().map(|p| p.to_string()))
            .collect();
        sqlx::query(
            "INSERT INTO correlator_signals (tenant, signal_id, incident_id, key, status, severity_rank, at, pending)
             SELECT tenant, signal_id, incident_id, key, status, severity_rank, at, pending::jsonb
             FROM UNNEST($1::text[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::int2[],
                 $7::timestamptz[], $8::text[])
               AS u(tenant, signal_id, incident_id, key, status, severity_rank, at, pending)
             ON CONFLICT (tenant, signal_id) DO UPDATE SET incident_id = excluded.incident_id,
                 status = excluded.status, severity_rank = excluded.severity_rank, at = excluded.at,
                 pending = excluded.pending",
        )
        .bind(signals.iter().map(|s| s.tenant.as_str()).collect::<Vec<_>>())
        .bind(signals.iter().map(|s| s.signal_id).collect::<Vec<_>>())
        .bind(signals.iter().map(|s| s.incident_id).collect::<Vec<_>>())
        .bind(signals.iter().map(|s| s.key.as_str()).collect::<Vec<_>>())
        .bind(signals.iter().map(|s| s.status.as_str()).collect::<Vec<_>>())
        .bind(signals.iter().map(|s| s.severity_rank).collect::<Vec<_>>())
        .bind(signals.iter().map(|s| s.at).collect::<Vec<_>>())
        .bind(pending)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The newest incident of each of these keys (tenant, key; by opening, then id), as
    /// (tenant, id). Only the correlator's signal loop creates incidents, so what this finds
    /// stays the newest until that loop commits.
    pub async fn latest_correlator_incident_ids(
        &self,
        tx: &mut Tx<'_>,
        keys: &[(String, String)],
    ) -> Result<Vec<(String, Uuid)>> {
        let (tenants, keys): (Vec<&str>, Vec<&str>) =
            keys.iter().map(|(t, k)| (t.as_str(), k.as_str())).unzip();
        Ok(sqlx::query_as(
            "SELECT i.tenant, i.id
             FROM UNNEST($1::text[], $2::text[]) AS k(tenant, key)
             CROSS JOIN LATERAL (
                 SELECT tenant, id FROM correlator_incidents c
                 WHERE c.tenant = k.tenant AND c.key = k.key
                 ORDER BY opened_at DESC, id DESC LIMIT 1
             ) i",
        )
        .bind(tenants)
        .bind(keys)
        .fetch_all(&mut **tx)
        .await?)
    }

    /// These incidents (tenant, id), locked until the transaction ends (in key order, so writers
    /// lock alike): the resolve timer and the lifecycle follower wait for the signal loop's
    /// commit, and it for theirs.
    pub async fn lock_correlator_incidents(
        &self,
        tx: &mut Tx<'_>,
        ids: &[(String, Uuid)],
    ) -> Result<Vec<CorrelatorIncident>> {
        let (tenants, incident_ids): (Vec<&str>, Vec<Uuid>) =
            ids.iter().map(|(t, id)| (t.as_str(), *id)).unzip();
        Ok(sqlx::query_as(
            "SELECT tenant, id, key, state, opened_at, window_from, last_signal_at, resolved_at, resolve_due, generation, firing, top_rank
             FROM correlator_incidents
             WHERE (tenant, id) IN (SELECT * FROM UNNEST($1::text[], $2::uuid[]))
             ORDER BY tenant, id FOR UPDATE",
        )
        .bind(tenants)
        .bind(incident_ids)
        .fetch_all(&mut **tx)
        .await?)
    }

    pub async fn save_correlator_incident(
        &self,
        tx: &mut Tx<'_>,
        i: &CorrelatorIncident,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO correlator_incidents (tenant, id, key, state, opened_at, last_signal_at, resolved_at, resolve_due,
                 generation, firing, top_rank, window_from)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (tenant, id) DO UPDATE SET state = excluded.state, window_from = excluded.window_from,
                 last_signal_at = excluded.last_signal_at, resolved_at = excluded.resolved_at,
                 resolve_due = excluded.resolve_due, generation = excluded.generation,
                 firing = excluded.firing, top_rank = excluded.top_rank",
        )
        .bind(&i.tenant)
        .bind(i.id)
        .bind(&i.key)
        .bind(&i.state)
        .bind(i.opened_at)
        .bind(i.last_signal_at)
        .bind(i.resolved_at)
        .bind(i.resolve_due)
        .bind(i.generation)
        .bind(&i.firing)
        .bind(i.top_rank)
        .bind(i.window_from)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Open incidents whose grace after their last alert resolved has run out by `now`.
    pub async fn due_correlator_incidents(
        &self,
        tx: &mut Tx<'_>,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<CorrelatorIncident>> {
        Ok(sqlx::query_as(
            "SELECT tenant, id, key, state, opened_at, window_from, last_signal_at, resolved_at, resolve_due, generation, firing, top_rank
             FROM correlator_incidents WHERE resolve_due IS NOT NULL AND resolve_due <= $1
             ORDER BY resolve_due LIMIT $2 FOR UPDATE",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&mut **tx)
        .await?)
    }
}
