use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, QueryBuilder, Row as _, postgres::PgRow};
use uuid::Uuid;

use crate::{Result, Store, Tx};

/// One alert instance, folded from one or more notifications of one batch, ready to upsert.
/// JSON columns are carried as serialized text and cast by Postgres.
#[derive(Debug, Clone)]
pub struct SignalRow {
    pub id: Uuid,
    pub tenant: String,
    pub fingerprint: String,
    pub starts_at: DateTime<Utc>,
    pub source: String,
    pub status: String,
    pub severity: String,
    pub service: Option<String>,
    pub title: String,
    pub labels: String,
    pub annotations: String,
    pub values: Option<String>,
    pub generator_url: Option<String>,
    pub group_key: Option<String>,
    pub receiver: Option<String>,
    pub ends_at: Option<DateTime<Utc>>,
    pub first_received_at: DateTime<Utc>,
    pub last_received_at: DateTime<Utc>,
    pub notification_count: i32,
    pub raw: String,
    pub last_event_id: Uuid,
    pub last_request_id: Option<String>,
    pub last_seq: u64,
}

/// Signal rows as one array per column, for `UNNEST`; built by moving the rows' fields.
#[derive(Default)]
struct SignalColumns {
    id: Vec<Uuid>,
    tenant: Vec<String>,
    fingerprint: Vec<String>,
    starts_at: Vec<DateTime<Utc>>,
    source: Vec<String>,
    status: Vec<String>,
    severity: Vec<String>,
    service: Vec<Option<String>>,
    title: Vec<String>,
    labels: Vec<String>,
    annotations: Vec<String>,
    values: Vec<Option<String>>,
    generator_url: Vec<Option<String>>,
    group_key: Vec<Option<String>>,
    receiver: Vec<Option<String>>,
    ends_at: Vec<Option<DateTime<Utc>>>,
    first_received_at: Vec<DateTime<Utc>>,
    last_received_at: Vec<DateTime<Utc>>,
    notification_count: Vec<i32>,
    raw: Vec<String>,
    last_event_id: Vec<Uuid>,
    last_request_id: Vec<Option<String>>,
    last_seq: Vec<i64>,
}

impl From<Vec<SignalRow>> for SignalColumns {
    fn from(rows: Vec<SignalRow>) -> Self {
        let mut c = SignalColumns::default();
        for r in rows {
            c.id.push(r.id);
            c.tenant.push(r.tenant);
            c.fingerprint.push(r.fingerprint);
            c.starts_at.push(r.starts_at);
            c.source.push(r.source);
            c.status.push(r.status);
            c.severity.push(r.severity);
            c.service.push(r.service);
            c.title.push(r.title);
            c.labels.push(r.labels);
            c.annotations.push(r.annotations);
            c.values.push(r.values);
            c.generator_url.push(r.generator_url);
            c.group_key.push(r.group_key);
            c.receiver.push(r.receiver);
            c.ends_at.push(r.ends_at);
            c.first_received_at.push(r.first_received_at);
            c.last_received_at.push(r.last_received_at);
            c.notification_count.push(r.notification_count);
            c.raw.push(r.raw);
            c.last_event_id.push(r.last_event_id);
            c.last_request_id.push(r.last_request_id);
            c.last_seq.push(r.last_seq as i64);
        }
        c
    }
}

/// A signal as the API reads it (and answers it, as its own `views::SignalView`).
#[derive(Debug, Clone)]
pub struct SignalView {
    pub id: Uuid,
    pub fingerprint: String,
    pub source: String,
    pub status: String,
    pub severity: String,
    pub service: Option<String>,
    pub title: String,
    pub labels: serde_json::Value,
    pub annotations: serde_json::Value,
    pub values: Option<serde_json::Value>,
    pub generator_url: Option<String>,
    pub group_key: Option<String>,
    pub receiver: Option<String>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: Option<DateTime<Utc>>,
    pub first_received_at: DateTime<Utc>,
    pub last_received_at: DateTime<Utc>,
    pub notification_count: i32,
    /// The alert exactly as the source last sent it, byte for byte; only on single-signal reads.
    pub raw: Option<Box<serde_json::value::RawValue>>,
}

/// Filters of `GET /v1/signals`; all optional, combined with AND.
#[derive(Debug, Clone, Default)]
pub struct SignalFilter {
    pub status: Option<String>,
    pub source: Option<String>,
    pub service: Option<String>,
    pub severity: Option<String>,
    /// Alerts that started at or after.
    pub since: Option<DateTime<Utc>>,
    /// Alerts that started before.
    pub until: Option<DateTime<Utc>>,
}

/// Position after the last row of a page. Pages run newest first by id, which begins with
/// the alert's `starts_at` in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalCursor {
    pub id: Uuid,
}

const VIEW_COLUMNS: &str = "id, fingerprint, source, status, severity, service, title, labels, annotations, \"values\", \
     generator_url, group_key, receiver, starts_at, ends_at, first_received_at, last_received_at, notification_count";

fn view(row: &PgRow, with_raw: bool) -> std::result::Result<SignalView, sqlx::Error> {
    Ok(SignalView {
        id: row.try_get("id")?,
        fingerprint: row.try_get("fingerprint")?,
        source: row.try_get("source")?,
        status: row.try_get("status")?,
        severity: row.try_get("severity")?,
        service: row.try_get("service")?,
        title: row.try_get("title")?,
        labels: row.try_get("labels")?,
        annotations: row.try_get("annotations")?,
        values: row.try_get("values")?,
        generator_url: row.try_get("generator_url")?,
        group_key: row.try_get("group_key")?,
        receiver: row.try_get("receiver")?,
        starts_at: row.try_get("starts_at")?,
        ends_at: row.try_get("ends_at")?,
        first_received_at: row.try_get("first_received_at")?,
        last_received_at: row.try_get("last_received_at")?,
        notification_count: row.try_get("notification_count")?,
        raw: if with_raw {
            let text: String = row.try_get("raw")?;
            Some(
                serde_json::value::RawValue::from_string(text)
                    .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            )
        } else {
            None
        },
    })
}

/// The signal upsert over one array per column ($1 to $23, as [`bind_columns`] binds them);
/// `guard` is a `WHERE` on the whole batch, or empty.
fn upsert_sql(guard: &str) -> String {
    format!(
        r#"INSERT INTO signals AS s (id, tenant, fingerprint, starts_at, source, status, severity, service, title,
               labels, annotations, "values", generator_url, group_key, receiver, ends_at, first_received_at,
               last_received_at, notification_count, raw, last_event_id, last_request_id, last_seq)
           SELECT id, tenant, fingerprint, starts_at, source, status, severity, service, title,
               labels::json, annotations::json, vals::json, generator_url, group_key, receiver, ends_at,
               first_received_at, last_received_at, notification_count, raw, last_event_id,
               last_request_id, last_seq
           FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::text[],
               $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[],
               $16::timestamptz[], $17::timestamptz[], $18::timestamptz[], $19::int4[], $20::text[], $21::uuid[],
               $22::text[], $23::int8[])
             AS u(id, tenant, fingerprint, starts_at, source, status, severity, service, title, labels,
               annotations, vals, generator_url, group_key, receiver, ends_at, first_received_at,
               last_received_at, notification_count, raw, last_event_id, last_request_id, last_seq)
           {guard}
           ON CONFLICT (tenant, id) DO UPDATE SET
               status = CASE WHEN s.status = 'resolved' OR excluded.status = 'resolved'
                             THEN 'resolved' ELSE excluded.status END,
               ends_at = GREATEST(s.ends_at, excluded.ends_at),
               severity = excluded.severity,
               service = excluded.service,
               title = excluded.title,
               labels = excluded.labels,
               annotations = excluded.annotations,
               "values" = excluded."values",
               generator_url = excluded.generator_url,
               group_key = excluded.group_key,
               receiver = excluded.receiver,
               first_received_at = LEAST(s.first_received_at, excluded.first_received_at),
               last_received_at = GREATEST(s.last_received_at, excluded.last_received_at),
               notification_count = s.notification_count + excluded.notification_count,
               raw = excluded.raw,
               last_event_id = excluded.last_event_id,
               last_request_id = excluded.last_request_id,
               last_seq = excluded.last_seq
           WHERE s.last_seq < excluded.last_seq"#
    )
}

/// Binds the rows as the arrays $1 to $23 of [`upsert_sql`].
fn bind_columns(query: PgQuery<'_>, rows: Vec<SignalRow>) -> PgQuery<'_> {
    let c = SignalColumns::from(rows);
    query
        .bind(c.id)
        .bind(c.tenant)
        .bind(c.fingerprint)
        .bind(c.starts_at)
        .bind(c.source)
        .bind(c.status)
        .bind(c.severity)
        .bind(c.service)
        .bind(c.title)
        .bind(c.labels)
        .bind(c.annotations)
        .bind(c.values)
        .bind(c.generator_url)
        .bind(c.group_key)
        .bind(c.receiver)
        .bind(c.ends_at)
        .bind(c.first_received_at)
        .bind(c.last_received_at)
        .bind(c.notification_count)
        .bind(c.raw)
        .bind(c.last_event_id)
        .bind(c.last_request_id)
        .bind(c.last_seq)
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

impl Store {
    /// Upserts folded signal rows. A repeated notification adds to the count and moves
    /// `last_received_at`; `resolved` is sticky for an alert instance (Alertmanager in HA mode
    /// can deliver a stale `firing` after the `resolved`); a row never moves back to an older event.
    /// The caller guarantees one row per id.
    pub async fn upsert_signals(&self, tx: &mut Tx<'_>, rows: Vec<SignalRow>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        static UPSERT: LazyLock<String> = LazyLock::new(|| upsert_sql(""));
        bind_columns(sqlx::query(sqlx::AssertSqlSafe(UPSERT.as_str())), rows)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// A batch of the signals projection in one statement and so one round trip, committed on
    /// its own: upserts `rows` (as [`Store::upsert_signals`]) and moves `projection`'s checkpoint
    /// from `from` to `to`, without waiting for the commit to be flushed (as
    /// [`Store::begin_batch`]). Nothing is written unless the checkpoint was at `from`; returns
    /// whether it was (if not, another writer got in).
    pub async fn commit_signals(
        &self,
        rows: Vec<SignalRow>,
        projection: &str,
        from: u64,
        to: u64,
    ) -> Result<bool> {
        static COMMIT: LazyLock<String> = LazyLock::new(|| {
            format!(
                "WITH durability AS (SELECT set_config('synchronous_commit', 'off', true)),
                      moved AS (UPDATE projection_checkpoints SET last_seq = $26
                                 WHERE projection = $24 AND last_seq = $25 RETURNING 1),
                      upserted AS ({})
                 SELECT EXISTS (SELECT 1 FROM moved) AND (SELECT count(*) FROM durability) = 1",
                upsert_sql("WHERE EXISTS (SELECT 1 FROM moved)")
            )
        });
        let row = bind_columns(sqlx::query(sqlx::AssertSqlSafe(COMMIT.as_str())), rows)
            .bind(projection)
            .bind(from as i64)
            .bind(to as i64)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// A page of a tenant's signals, newest first, after `cursor`.
    pub async fn list_signals(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        filter: &SignalFilter,
        cursor: Option<SignalCursor>,
        limit: u32,
    ) -> Result<Vec<SignalView>> {
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new(format!(
            "SELECT {VIEW_COLUMNS} FROM signals WHERE tenant = "
        ));
        q.push_bind(tenant);
        for (column, value) in [
            ("status", &filter.status),
            ("source", &filter.source),
            ("service", &filter.service),
            ("severity", &filter.severity),
        ] {
            if let Some(value) = value {
                q.push(format_args!(" AND {column} = "))
                    .push_bind(value.clone());
            }
        }
        if let Some(since) = filter.since {
            q.push(" AND starts_at >= ").push_bind(since);
        }
        if let Some(until) = filter.until {
            q.push(" AND starts_at < ").push_bind(until);
        }
        if let Some(c) = cursor {
            q.push(" AND id < ").push_bind(c.id);
        }
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(limit));
        let rows = q.build().fetch_all(&mut **tx).await?;
        Ok(rows
            .iter()
            .map(|r| view(r, false))
            .collect::<std::result::Result<_, _>>()?)
    }

    /// One signal of a tenant; `None` for another tenant's signal as for a missing one.
    pub async fn get_signal(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        id: Uuid,
    ) -> Result<Option<SignalView>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {VIEW_COLUMNS}, raw FROM signals WHERE tenant = $1 AND id = $2"
        )))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(row.map(|r| view(&r, true)).transpose()?)
    }
}
