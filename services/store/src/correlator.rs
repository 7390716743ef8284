//! The correlator's own state: the incidents it opened per correlation key and every alert
//! instance it has seen. Only the correlator writes these tables, in the transaction that moves
//! its checkpoint, so a crash re-decides exactly what it had not committed.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{Result, Store, Tx};

/// An incident as the correlator tracks it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct CorrelatorIncident {
    pub tenant: String,
    pub id: Uuid,
    pub key: String,
    /// `open`, `resolved` or `closed`.
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
    pub async fn correlator_signal(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        signal_id: Uuid,
    ) -> Result<Option<CorrelatorSignal>> {
        Ok(sqlx::query_as(
            "SELECT tenant, signal_id, incident_id, key, status, severity_rank, at, pending
             FROM correlator_signals WHERE tenant = $1 AND signal_id = $2",
        )
        .bind(tenant)
        .bind(signal_id)
        .fetch_optional(&mut **tx)
        .await?)
    }

    pub async fn save_correlator_signal(
        &self,
        tx: &mut Tx<'_>,
        s: &CorrelatorSignal,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO correlator_signals (tenant, signal_id, incident_id, key, status, severity_rank, at, pending)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (tenant, signal_id) DO UPDATE SET incident_id = excluded.incident_id,
                 status = excluded.status, severity_rank = excluded.severity_rank, at = excluded.at,
                 pending = excluded.pending",
        )
        .bind(&s.tenant)
        .bind(s.signal_id)
        .bind(s.incident_id)
        .bind(&s.key)
        .bind(&s.status)
        .bind(s.severity_rank)
        .bind(s.at)
        .bind(&s.pending)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Signals of a key waiting for its threshold, oldest first; those before `since` are
    /// forgotten first (they fell out of the window).
    pub async fn take_fresh_pending(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        key: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<CorrelatorSignal>> {
        sqlx::query(
            "UPDATE correlator_signals SET pending = NULL
             WHERE tenant = $1 AND key = $2 AND pending IS NOT NULL AND at < $3",
        )
        .bind(tenant)
        .bind(key)
        .bind(since)
        .execute(&mut **tx)
        .await?;
        Ok(sqlx::query_as(
            "SELECT tenant, signal_id, incident_id, key, status, severity_rank, at, pending
             FROM correlator_signals WHERE tenant = $1 AND key = $2 AND pending IS NOT NULL
             ORDER BY at, signal_id",
        )
        .bind(tenant)
        .bind(key)
        .fetch_all(&mut **tx)
        .await?)
    }

    /// The newest incident the correlator opened for a key.
    pub async fn latest_correlator_incident(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        key: &str,
    ) -> Result<Option<CorrelatorIncident>> {
        Ok(sqlx::query_as(
            "SELECT tenant, id, key, state, opened_at, window_from, last_signal_at, resolved_at, resolve_due, generation, firing, top_rank
             FROM correlator_incidents WHERE tenant = $1 AND key = $2
             ORDER BY opened_at DESC, id DESC LIMIT 1 FOR UPDATE",
        )
        .bind(tenant)
        .bind(key)
        .fetch_optional(&mut **tx)
        .await?)
    }

    pub async fn correlator_incident(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        id: Uuid,
    ) -> Result<Option<CorrelatorIncident>> {
        Ok(sqlx::query_as(
            "SELECT tenant, id, key, state, opened_at, window_from, last_signal_at, resolved_at, resolve_due, generation, firing, top_rank
             FROM correlator_incidents WHERE tenant = $1 AND id = $2 FOR UPDATE",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut **tx)
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
