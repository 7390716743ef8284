//! The incident read models (`incidents`, `incident_signals`, `incident_notes`,
//! `incident_events`, `correlation_rules`): the projector's writes, one per event kind, and the
//! API's reads.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use crate::{Result, Store, Tx};

/// A tenant's settings, one read model each, set through events on the tenant's subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantSetting {
    /// `CorrelationRulesSet`: how the correlator groups the tenant's signals.
    CorrelationRules,
    /// `TenantIntegrationsSet`: the tenant's Prometheus and model.
    Integrations,
    /// `TenantRetentionSet`: how long the tenant's data is kept.
    Retention,
}

impl TenantSetting {
    fn table(self) -> (&'static str, &'static str) {
        match self {
            Self::CorrelationRules => ("correlation_rules", "rules"),
            Self::Integrations => ("tenant_integrations", "integrations"),
            Self::Retention => ("tenant_retention", "retention"),
        }
    }
}

/// One incident event as the timeline keeps it.
#[derive(Debug, Clone)]
pub struct IncidentEventRow<'a> {
    pub event_id: Uuid,
    pub tenant: &'a str,
    pub incident_id: Uuid,
    pub seq: u64,
    pub event_type: &'a str,
    pub actor: &'a str,
    pub request_id: Option<&'a str>,
    pub occurred_at: DateTime<Utc>,
    pub payload: &'a str,
}

/// A new incident.
#[derive(Debug, Clone)]
pub struct NewIncident<'a> {
    pub tenant: &'a str,
    pub id: Uuid,
    pub key: &'a str,
    pub title: &'a str,
    pub service: Option<&'a str>,
    pub severity: &'a str,
    pub severity_rank: i16,
    pub labels: &'a str,
    pub rule: &'a str,
    pub opened_at: DateTime<Utc>,
    pub seq: u64,
}

/// A signal joining an incident.
#[derive(Debug, Clone)]
pub struct AttachedSignal<'a> {
    pub tenant: &'a str,
    pub incident_id: Uuid,
    pub signal_id: Uuid,
    pub fingerprint: &'a str,
    pub title: &'a str,
    pub severity: &'a str,
    pub starts_at: DateTime<Utc>,
    pub explanation: &'a str,
    pub incident_severity: &'a str,
    pub incident_severity_rank: i16,
    pub at: DateTime<Utc>,
    pub seq: u64,
}

/// What a lifecycle event does to an incident's row.
#[derive(Debug, Clone)]
pub struct StateChange<'a> {
    pub tenant: &'a str,
    pub incident_id: Uuid,
    pub state: &'a str,
    /// A person acted: the first such moment is when the incident was acknowledged.
    pub by_person: bool,
    pub reopened: bool,
    pub at: DateTime<Utc>,
    pub seq: u64,
}

/// An incident as the API reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct IncidentSummary {
    pub id: Uuid,
    pub title: String,
    pub service: Option<String>,
    pub key: String,
    pub severity: String,
    pub state: String,
    pub assignee: Option<String>,
    pub labels: serde_json::Value,
    pub signal_count: i32,
    pub firing_count: i32,
    pub reopen_count: i32,
    pub opened_at: DateTime<Utc>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub mitigated_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// The incident's version: pass it back as `If-Match` to make a command fail (409) if
    /// anything changed since it was read.
    pub version: i64,
    /// The correlation rule that opened it, in words.
    pub rule: String,
    /// Orders the severity sort and its cursor; never shown.
    pub severity_rank: i16,
}

/// A signal of an incident, with why it joined.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct IncidentSignalView {
    pub signal_id: Uuid,
    pub fingerprint: String,
    pub title: String,
    pub severity: String,
    pub status: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: Option<DateTime<Utc>>,
    pub attached_at: DateTime<Utc>,
    pub explanation: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct IncidentNoteView {
    pub note_id: Uuid,
    pub author: String,
    pub text: String,
    pub created_at: DateTime<Utc>,
}

/// One entry of an incident's timeline.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TimelineEntry {
    pub event_id: Uuid,
    pub seq: i64,
    #[sqlx(rename = "type")]
    pub event_type: String,
    pub actor: String,
    pub request_id: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub payload: serde_json::Value,
}

/// Filters of `GET /v1/incidents`; all optional, combined with AND.
#[derive(Debug, Clone, Default)]
pub struct IncidentFilter {
    pub state: Option<String>,
    /// Only incidents not resolved or reviewed.
    pub open: Option<bool>,
    pub severity: Option<String>,
    pub service: Option<String>,
    /// `(label, value)` the incident's labels contain.
    pub label: Option<(String, String)>,
    /// Opened at or after.
    pub since: Option<DateTime<Utc>>,
    /// Opened before.
    pub until: Option<DateTime<Utc>>,
    /// Words of the title, service or key.
    pub text: Option<String>,
}

/// Orders of `GET /v1/incidents`, each with a keyset cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncidentSort {
    #[default]
    Newest,
    Oldest,
    Severity,
    Updated,
}

/// Position after the last row of a page: the sort's key values of that row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncidentCursor {
    pub rank: i16,
    pub at: DateTime<Utc>,
    pub id: Uuid,
}

impl IncidentCursor {
    pub fn after(sort: IncidentSort, last: &IncidentSummary) -> Self {
        Self {
            rank: last.severity_rank,
            at: if sort == IncidentSort::Updated {
                last.updated_at
            } else {
                last.opened_at
            },
            id: last.id,
        }
    }
}

/// The figures of `GET /v1/stats`.
#[derive(Debug, Clone)]
pub struct IncidentStats {
    /// Incidents not yet resolved, by severity (now, whatever the range).
    pub open_by_severity: std::collections::BTreeMap<String, i64>,
    /// Of incidents opened in the range:
    pub incidents: i64,
    pub signals: i64,
    /// Signals per incident: how many alerts one incident spared someone.
    pub noise_reduction: Option<f64>,
    /// Mean seconds from opening to the first human action.
    pub mtta_secs: Option<f64>,
    /// Mean seconds from opening to resolution, of those resolved.
    pub mttr_secs: Option<f64>,
}

const SUMMARY_COLUMNS: &str = "id, title, service, key, severity, state, assignee, labels, signal_count, \
     firing_count, reopen_count, opened_at, acknowledged_at, mitigated_at, resolved_at, updated_at, \
     last_seq AS version, rule, severity_rank";

impl Store {
    /// Records an incident event for the timeline; `false` if its id is already recorded (a
    /// copy that outlived the duplicate window), in which case it must not be applied again.
    pub async fn record_incident_event(
        &self,
        tx: &mut Tx<'_>,
        e: &IncidentEventRow<'_>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO incident_events (event_id, tenant, incident_id, seq, type, actor, request_id, occurred_at, payload)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb) ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(e.event_id)
        .bind(e.tenant)
        .bind(e.incident_id)
        .bind(e.seq as i64)
        .bind(e.event_type)
        .bind(e.actor)
        .bind(e.request_id)
        .bind(e.occurred_at)
        .bind(e.payload)
        .execute(&mut **tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn insert_incident(&self, tx: &mut Tx<'_>, i: &NewIncident<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO incidents (tenant, id, key, title, service, severity, severity_rank, state, labels, rule,
                 signal_count, firing_count, reopen_count, opened_at, updated_at, last_seq)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'detected', $8::jsonb, $9, 0, 0, 0, $10, $10, $11)
             ON CONFLICT (tenant, id) DO NOTHING",
        )
        .bind(i.tenant)
        .bind(i.id)
        .bind(i.key)
        .bind(i.title)
        .bind(i.service)
        .bind(i.severity)
        .bind(i.severity_rank)
        .bind(i.labels)
        .bind(i.rule)
        .bind(i.opened_at)
        .bind(i.seq as i64)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn attach_incident_signal(
        &self,
        tx: &mut Tx<'_>,
        s: &AttachedSignal<'_>,
    ) -> Result<()> {
        let inserted = sqlx::query(
            "INSERT INTO incident_signals (tenant, incident_id, signal_id, fingerprint, title, severity, status,
                 starts_at, attached_at, explanation, last_seq)
             VALUES ($1, $2, $3, $4, $5, $6, 'firing', $7, $8, $9, $10)
             ON CONFLICT (tenant, incident_id, signal_id) DO NOTHING",
        )
        .bind(s.tenant)
        .bind(s.incident_id)
        .bind(s.signal_id)
        .bind(s.fingerprint)
        .bind(s.title)
        .bind(s.severity)
        .bind(s.starts_at)
        .bind(s.at)
        .bind(s.explanation)
        .bind(s.seq as i64)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        sqlx::query(
            "UPDATE incidents SET signal_count = signal_count + $3, firing_count = firing_count + $3,
                 severity = $4, severity_rank = $5, updated_at = greatest(updated_at, $6), last_seq = $7
             WHERE tenant = $1 AND id = $2",
        )
        .bind(s.tenant)
        .bind(s.incident_id)
        .bind(inserted as i32)
        .bind(s.incident_severity)
        .bind(s.incident_severity_rank)
        .bind(s.at)
        .bind(s.seq as i64)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn resolve_incident_signal(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        incident_id: Uuid,
        signal_id: Uuid,
        ends_at: Option<DateTime<Utc>>,
        (severity, rank): (&str, i16),
        at: DateTime<Utc>,
        seq: u64,
    ) -> Result<()> {
        let changed = sqlx::query(
            "UPDATE incident_signals SET status = 'resolved', ends_at = $4, last_seq = $5
             WHERE tenant = $1 AND incident_id = $2 AND signal_id = $3 AND status = 'firing'",
        )
        .bind(tenant)
        .bind(incident_id)
        .bind(signal_id)
        .bind(ends_at)
        .bind(seq as i64)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        sqlx::query(
            "UPDATE incidents SET firing_count = firing_count - $3, severity = $4, severity_rank = $5,
                 updated_at = greatest(updated_at, $6), last_seq = $7
             WHERE tenant = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(incident_id)
        .bind(changed as i32)
        .bind(severity)
        .bind(rank)
        .bind(at)
        .bind(seq as i64)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Moves an incident to a state, keeping when it was first acknowledged and mitigated and
    /// when it last resolved. A decision of the correlator never overrides a person's review
    /// (`learned`, `inconclusive`), and its reopen applies only to a resolved incident; either way
    /// the incident's version moves to the event. These are the lifecycle rules of the incident
    /// aggregate (`copilot_commands::incident::Incident::evolve`), applied here in SQL so the
    /// projector writes without reading; a test there checks the two agree.
    pub async fn change_incident_state(&self, tx: &mut Tx<'_>, c: &StateChange<'_>) -> Result<()> {
        sqlx::query(
            "UPDATE incidents SET state = $3,
                 acknowledged_at = CASE WHEN $4 THEN coalesce(acknowledged_at, $6) ELSE acknowledged_at END,
                 mitigated_at = CASE WHEN $3 = 'mitigated' THEN coalesce(mitigated_at, $6) ELSE mitigated_at END,
                 resolved_at = CASE WHEN $3 = 'resolved' THEN $6
                                    WHEN $3 IN ('learned', 'inconclusive') THEN resolved_at ELSE NULL END,
                 reopen_count = reopen_count + CASE WHEN $5 THEN 1 ELSE 0 END
             WHERE tenant = $1 AND id = $2
               AND ($4 OR state NOT IN ('learned', 'inconclusive'))
               AND ($4 OR NOT $5 OR state = 'resolved')",
        )
        .bind(c.tenant)
        .bind(c.incident_id)
        .bind(c.state)
        .bind(c.by_person)
        .bind(c.reopened)
        .bind(c.at)
        .execute(&mut **tx)
        .await?;
        self.touch_incident(tx, c.tenant, c.incident_id, c.at, c.seq)
            .await
    }

    /// Moves an incident's version (and update time) to an event of its subject, whatever the
    /// event did: commands append at the version they read, so it must track the subject.
    pub async fn touch_incident(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        incident_id: Uuid,
        at: DateTime<Utc>,
        seq: u64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE incidents SET updated_at = greatest(updated_at, $3), last_seq = greatest(last_seq, $4)
             WHERE tenant = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(incident_id)
        .bind(at)
        .bind(seq as i64)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Moves an incident's version to an event of its subject that changes nothing people see
    /// (a Slack message recorded), leaving its update time.
    pub async fn move_incident_version(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        incident_id: Uuid,
        seq: u64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE incidents SET last_seq = greatest(last_seq, $3) WHERE tenant = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(incident_id)
        .bind(seq as i64)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Records who the incident is assigned to (`None`: nobody).
    pub async fn assign_incident(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        incident_id: Uuid,
        assignee: Option<&str>,
        at: DateTime<Utc>,
        seq: u64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE incidents SET assignee = $3, updated_at = greatest(updated_at, $4), last_seq = $5
             WHERE tenant = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(incident_id)
        .bind(assignee)
        .bind(at)
        .bind(seq as i64)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn add_incident_note(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        incident_id: Uuid,
        note_id: Uuid,
        author: &str,
        text: &str,
        at: DateTime<Utc>,
        seq: u64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO incident_notes (tenant, incident_id, note_id, author, text, created_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(incident_id)
        .bind(note_id)
        .bind(author)
        .bind(text)
        .bind(at)
        .execute(&mut **tx)
        .await?;
        self.touch_incident(tx, tenant, incident_id, at, seq).await
    }

    /// Records a tenant setting (the projector, from its `…Set` event).
    #[allow(clippy::too_many_arguments)]
    pub async fn set_tenant_setting(
        &self,
        tx: &mut Tx<'_>,
        setting: TenantSetting,
        tenant: &str,
        value: &str,
        set_by: &str,
        at: DateTime<Utc>,
        seq: u64,
    ) -> Result<()> {
        let (table, column) = setting.table();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} (tenant, {column}, set_by, set_at, last_seq) VALUES ($1, $2::jsonb, $3, $4, $5)
             ON CONFLICT (tenant) DO UPDATE SET {column} = excluded.{column}, set_by = excluded.set_by,
                 set_at = excluded.set_at, last_seq = excluded.last_seq
             WHERE {table}.last_seq < excluded.last_seq"
        )))
        .bind(tenant)
        .bind(value)
        .bind(set_by)
        .bind(at)
        .bind(seq as i64)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// A tenant setting as JSON, if the tenant set it.
    pub async fn tenant_setting(
        &self,
        tx: &mut Tx<'_>,
        setting: TenantSetting,
        tenant: &str,
    ) -> Result<Option<serde_json::Value>> {
        let (table, column) = setting.table();
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT {column} FROM {table} WHERE tenant = $1"
        )))
        .bind(tenant)
        .fetch_optional(&mut **tx)
        .await?)
    }

    /// A page of a tenant's incidents in `sort` order, after `cursor`. A text filter matches only
    /// in a tenant transaction ([`Store::begin_tenant`]).
    pub async fn list_incidents(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        filter: &IncidentFilter,
        sort: IncidentSort,
        cursor: Option<IncidentCursor>,
        limit: u32,
    ) -> Result<Vec<IncidentSummary>> {
        let mut q = list_query("", tenant, filter, sort, cursor, limit);
        Ok(q.build_query_as().fetch_all(&mut **tx).await?)
    }

    /// `EXPLAIN (ANALYZE, BUFFERS)` of `list_incidents`, one line per plan line; for the benchmark.
    pub async fn explain_list_incidents(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        filter: &IncidentFilter,
        sort: IncidentSort,
        limit: u32,
    ) -> Result<Vec<String>> {
        let mut q = list_query(
            "EXPLAIN (ANALYZE, BUFFERS) ",
            tenant,
            filter,
            sort,
            None,
            limit,
        );
        let rows: Vec<(String,)> = q.build_query_as().fetch_all(&mut **tx).await?;
        Ok(rows.into_iter().map(|(line,)| line).collect())
    }

    pub async fn get_incident(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        id: Uuid,
    ) -> Result<Option<IncidentSummary>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {SUMMARY_COLUMNS} FROM incidents WHERE tenant = $1 AND id = $2"
        )))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?)
    }

    pub async fn incident_signals(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        id: Uuid,
    ) -> Result<Vec<IncidentSignalView>> {
        Ok(sqlx::query_as(
            "SELECT signal_id, fingerprint, title, severity, status, starts_at, ends_at, attached_at, explanation
             FROM incident_signals WHERE tenant = $1 AND incident_id = $2 ORDER BY last_seq, signal_id",
        )
        .bind(tenant)
        .bind(id)
        .fetch_all(&mut **tx)
        .await?)
    }

    pub async fn incident_notes(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        id: Uuid,
    ) -> Result<Vec<IncidentNoteView>> {
        Ok(sqlx::query_as(
            "SELECT note_id, author, text, created_at FROM incident_notes
             WHERE tenant = $1 AND incident_id = $2 ORDER BY created_at, note_id",
        )
        .bind(tenant)
        .bind(id)
        .fetch_all(&mut **tx)
        .await?)
    }

    pub async fn incident_timeline(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        id: Uuid,
    ) -> Result<Vec<TimelineEntry>> {
        Ok(sqlx::query_as(
            "SELECT event_id, seq, type, actor, request_id, occurred_at, payload FROM incident_events
             WHERE tenant = $1 AND incident_id = $2 ORDER BY seq",
        )
        .bind(tenant)
        .bind(id)
        .fetch_all(&mut **tx)
        .await?)
    }

    pub async fn incident_stats(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<IncidentStats> {
        let open: Vec<(String, i64)> = sqlx::query_as(
            "SELECT severity, count(*) FROM incidents
             WHERE tenant = $1 AND state NOT IN ('resolved', 'learned', 'inconclusive') GROUP BY severity",
        )
        .bind(tenant)
        .fetch_all(&mut **tx)
        .await?;
        let (incidents, signals, mtta, mttr): (i64, i64, Option<f64>, Option<f64>) =
            sqlx::query_as(
                "SELECT count(*), coalesce(sum(signal_count), 0)::int8,
                    avg(extract(epoch FROM acknowledged_at - opened_at))::float8,
                    avg(extract(epoch FROM resolved_at - opened_at))::float8
                 FROM incidents WHERE tenant = $1 AND opened_at >= $2 AND opened_at < $3",
            )
            .bind(tenant)
            .bind(since)
            .bind(until)
            .fetch_one(&mut **tx)
            .await?;
        Ok(IncidentStats {
            open_by_severity: open.into_iter().collect(),
            incidents,
            signals,
            noise_reduction: (incidents > 0).then(|| signals as f64 / incidents as f64),
            mtta_secs: mtta,
            mttr_secs: mttr,
        })
    }

    /// Fills a tenant's incident read models with `incidents` synthetic incidents of
    /// `signals_per` signals each, spread over a year across 200 services, for the list benchmark
    /// (`copilot bench incidents`). Never used by the running system.
    pub async fn seed_bench_incidents(
        &self,
        tenant: &str,
        incidents: i64,
        signals_per: i32,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO incidents (tenant, id, key, title, service, severity, severity_rank, state, labels, rule,
                 signal_count, firing_count, reopen_count, opened_at, acknowledged_at, resolved_at, updated_at, last_seq)
             SELECT $1, md5($1 || i)::uuid, 'service=svc' || (i % 200),
                 (ARRAY['HighErrorRate','HighLatencyP99','PodCrashLooping','DiskFull','TargetDown'])[1 + i % 5] || ' on svc' || (i % 200),
                 'svc' || (i % 200),
                 (ARRAY['unknown','info','warning','error','critical'])[1 + i % 5], i % 5,
                 CASE WHEN i % 10 = 0 THEN 'detected' WHEN i % 10 = 1 THEN 'investigating' ELSE 'resolved' END,
                 jsonb_build_object('service', 'svc' || (i % 200), 'cluster', 'c' || (i % 7), 'team', 't' || (i % 13)),
                 'bench', $3, 0, 0, at, at + interval '4 minutes', at + interval '40 minutes', at, i
             FROM generate_series(1, $2) AS i,
                 LATERAL (SELECT timestamptz '2026-01-01' + (i * interval '5 minutes') AS at) t",
        )
        .bind(tenant)
        .bind(incidents)
        .bind(signals_per)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO incident_signals (tenant, incident_id, signal_id, fingerprint, title, severity, status,
                 starts_at, ends_at, attached_at, explanation, last_seq)
             SELECT $1, md5($1 || i)::uuid, md5($1 || i || '-' || j)::uuid, md5(i || '-' || j), 'alert ' || j,
                 'warning', 'resolved', at, at + interval '30 minutes', at, 'bench', j
             FROM generate_series(1, $2) AS i, generate_series(1, $3) AS j,
                 LATERAL (SELECT timestamptz '2026-01-01' + (i * interval '5 minutes') AS at) t",
        )
        .bind(tenant)
        .bind(incidents)
        .bind(signals_per)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        sqlx::query("ANALYZE incidents").execute(&self.pool).await?;
        sqlx::query("ANALYZE incident_signals")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// `(incidents, signals attached)` of a tenant.
    pub async fn incident_totals(&self, tenant: &str) -> Result<(i64, i64)> {
        Ok(sqlx::query_as(
            "SELECT count(*), coalesce(sum(signal_count), 0)::int8 FROM incidents WHERE tenant = $1",
        )
        .bind(tenant)
        .fetch_one(&self.pool)
        .await?)
    }
}

/// The query of `list_incidents`, after `prefix` (empty, or an `EXPLAIN`).
fn list_query(
    prefix: &str,
    tenant: &str,
    filter: &IncidentFilter,
    sort: IncidentSort,
    cursor: Option<IncidentCursor>,
    limit: u32,
) -> QueryBuilder<Postgres> {
    let mut q: QueryBuilder<Postgres> = QueryBuilder::new(format!(
        "{prefix}SELECT {SUMMARY_COLUMNS} FROM incidents WHERE tenant = "
    ));
    q.push_bind(tenant);
    for (column, value) in [
        ("state", &filter.state),
        ("severity", &filter.severity),
        ("service", &filter.service),
    ] {
        if let Some(value) = value {
            q.push(format_args!(" AND {column} = "))
                .push_bind(value.clone());
        }
    }
    match filter.open {
        Some(true) => q.push(" AND state NOT IN ('resolved', 'learned', 'inconclusive')"),
        Some(false) => q.push(" AND state IN ('resolved', 'learned', 'inconclusive')"),
        None => &mut q,
    };
    if let Some((label, value)) = &filter.label {
        q.push(" AND labels @> jsonb_build_object(")
            .push_bind(label.clone())
            .push("::text, ")
            .push_bind(value.clone())
            .push("::text)");
    }
    if let Some(since) = filter.since {
        q.push(" AND opened_at >= ").push_bind(since);
    }
    if let Some(until) = filter.until {
        q.push(" AND opened_at < ").push_bind(until);
    }
    if let Some(text) = &filter.text {
        // Through the search function, so the GIN index serves it under row-level security
        // (migration 0005); it finds only the transaction's tenant's incidents.
        q.push(" AND id IN (SELECT copilot_incident_search(")
            .push_bind(text.clone())
            .push("))");
    }
    if let Some(c) = cursor {
        match sort {
            IncidentSort::Newest => q
                .push(" AND (opened_at, id) < (")
                .push_bind(c.at)
                .push(", ")
                .push_bind(c.id)
                .push(")"),
            IncidentSort::Oldest => q
                .push(" AND (opened_at, id) > (")
                .push_bind(c.at)
                .push(", ")
                .push_bind(c.id)
                .push(")"),
            IncidentSort::Updated => q
                .push(" AND (updated_at, id) < (")
                .push_bind(c.at)
                .push(", ")
                .push_bind(c.id)
                .push(")"),
            IncidentSort::Severity => q
                .push(" AND (severity_rank, opened_at, id) < (")
                .push_bind(c.rank)
                .push(", ")
                .push_bind(c.at)
                .push(", ")
                .push_bind(c.id)
                .push(")"),
        };
    }
    q.push(match sort {
        IncidentSort::Newest => " ORDER BY opened_at DESC, id DESC",
        IncidentSort::Oldest => " ORDER BY opened_at, id",
        IncidentSort::Updated => " ORDER BY updated_at DESC, id DESC",
        IncidentSort::Severity => " ORDER BY severity_rank DESC, opened_at DESC, id DESC",
    });
    q.push(" LIMIT ").push_bind(i64::from(limit));
    q
}
