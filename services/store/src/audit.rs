use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{Result, Store, Tx};

/// One command as the audit log keeps it.
pub struct AuditRow<'a> {
    pub event_id: Uuid,
    pub tenant: &'a str,
    pub at: DateTime<Utc>,
    pub actor: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub request_id: Option<&'a str>,
    pub source_addr: Option<&'a str>,
    /// JSON text of what changed, with secrets and hashes left out.
    pub details: &'a str,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditEntry {
    pub event_id: Uuid,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub request_id: Option<String>,
    pub source_addr: Option<String>,
    pub details: serde_json::Value,
}

/// Where the last page ended (newest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditCursor {
    pub at: DateTime<Utc>,
    pub event_id: Uuid,
}

#[derive(Debug, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    /// Matches the target exactly, or every target under it (`incident:` matches all incidents).
    pub target: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub after: Option<AuditCursor>,
    pub limit: i64,
}

impl Store {
    pub async fn insert_audit(&self, tx: &mut Tx<'_>, row: &AuditRow<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (event_id, tenant, at, actor, action, target, request_id,
                                    source_addr, details)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb) ON CONFLICT DO NOTHING",
        )
        .bind(row.event_id)
        .bind(row.tenant)
        .bind(row.at)
        .bind(row.actor)
        .bind(row.action)
        .bind(row.target)
        .bind(row.request_id)
        .bind(row.source_addr)
        .bind(row.details)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// A page of a tenant's audit log, newest first.
    pub async fn list_audit(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        f: &AuditFilter,
    ) -> Result<Vec<AuditEntry>> {
        let mut q = sqlx::QueryBuilder::new(
            "SELECT event_id, at, actor, action, target, request_id, source_addr, details
             FROM audit_log WHERE tenant = ",
        );
        q.push_bind(tenant);
        if let Some(actor) = &f.actor {
            q.push(" AND actor = ").push_bind(actor);
        }
        if let Some(action) = &f.action {
            q.push(" AND action = ").push_bind(action);
        }
        if let Some(target) = &f.target {
            q.push(" AND (target = ").push_bind(target);
            q.push(" OR (right(")
                .push_bind(target)
                .push(", 1) = ':' AND starts_with(target, ")
                .push_bind(target)
                .push(")))");
        }
        if let Some(since) = f.since {
            q.push(" AND at >= ").push_bind(since);
        }
        if let Some(until) = f.until {
            q.push(" AND at < ").push_bind(until);
        }
        if let Some(after) = f.after {
            q.push(" AND (at, event_id) < (")
                .push_bind(after.at)
                .push(", ")
                .push_bind(after.event_id)
                .push(")");
        }
        q.push(" ORDER BY at DESC, event_id DESC LIMIT ")
            .push_bind(f.limit);
        Ok(q.build_query_as().fetch_all(&mut **tx).await?)
    }
}
