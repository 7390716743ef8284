//! The task read models: `tasks`, `task_logs`, `workers` (folded from TASKS) and `worker_tokens`
//! (folded from TENANTS), and their reads. Every change to a row is guarded by the stream
//! sequence it carries, so a redelivered event never moves a row backwards.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{Result, Store, Tx};

/// A task as created.
pub struct NewTaskRow<'a> {
    pub tenant: &'a str,
    pub task_id: Uuid,
    pub kind: &'a str,
    pub priority: u8,
    pub timeout_secs: u32,
    pub max_attempts: u32,
    pub incident_id: Option<Uuid>,
    pub input: &'a serde_json::Value,
    pub created_by: &'a str,
    pub at: DateTime<Utc>,
    pub seq: u64,
}

/// What one task event changes in its row.
pub enum TaskChange<'a> {
    Claimed {
        attempt: u32,
        worker_id: Uuid,
    },
    Progressed {
        percent: u8,
        message: Option<&'a str>,
    },
    Completed {
        result: &'a serde_json::Value,
    },
    Failed {
        reason: &'a str,
        last: bool,
    },
    LeaseExpired,
    Retried {
        not_before: DateTime<Utc>,
    },
    Cancelled {
        by: &'a str,
    },
    OutcomeRefused,
    /// The attempt `attempt` was handed back unfinished and does not count.
    Released {
        attempt: u32,
    },
}

/// A task as the read model holds it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TaskSummary {
    pub task_id: Uuid,
    pub kind: String,
    pub status: String,
    pub priority: i16,
    pub timeout_secs: i32,
    pub max_attempts: i32,
    pub attempt: i32,
    pub worker_id: Option<Uuid>,
    pub incident_id: Option<Uuid>,
    pub input: serde_json::Value,
    pub result: Option<serde_json::Value>,
    pub reasons: serde_json::Value,
    pub progress: Option<i16>,
    pub progress_message: Option<String>,
    pub refused_outcomes: i32,
    pub lease_expiries: i32,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub claimed_at: Option<DateTime<Utc>>,
    pub not_before: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub cancelled_by: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// Filters of `GET /v1/tasks`.
#[derive(Debug, Default, Clone)]
pub struct TaskFilter {
    pub status: Option<String>,
    pub kind: Option<String>,
    pub incident_id: Option<Uuid>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// Keyset cursor of the task listing (newest first): the last row's creation and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskCursor {
    pub at: DateTime<Utc>,
    pub id: Uuid,
}

/// One log line of a task.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TaskLogLine {
    pub seq: i64,
    pub line_no: i32,
    pub attempt: i32,
    pub at: DateTime<Utc>,
    pub line: String,
}

/// A worker as the read model holds it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WorkerView {
    pub worker_id: Uuid,
    pub name: String,
    pub kinds: serde_json::Value,
    pub capacity: i32,
    pub registered_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub holding: serde_json::Value,
    pub gone_at: Option<DateTime<Utc>>,
    pub gone_reason: Option<String>,
}

/// A worker token as listed (never its hash).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WorkerTokenView {
    pub token_id: Uuid,
    pub prefix: String,
    pub name: String,
    pub issued_by: String,
    pub issued_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
}

/// A worker token as issued.
pub struct WorkerTokenRow<'a> {
    pub token_id: Uuid,
    pub tenant: &'a str,
    pub token_hash: &'a str,
    pub prefix: &'a str,
    pub name: &'a str,
    pub issued_by: &'a str,
    pub at: DateTime<Utc>,
    pub seq: u64,
}

const TASK_COLUMNS: &str = "task_id, kind, status, priority, timeout_secs, max_attempts, attempt,
    worker_id, incident_id, input, result, reasons, progress, progress_message, refused_outcomes,
    lease_expiries, created_by, created_at, claimed_at, not_before, finished_at, cancelled_by,
    updated_at";

impl Store {
    pub async fn insert_task(&self, tx: &mut Tx<'_>, t: &NewTaskRow<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO tasks (tenant, task_id, kind, status, priority, timeout_secs, max_attempts,
                 incident_id, input, created_by, created_at, updated_at, last_seq)
             VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, $10, $10, $11)
             ON CONFLICT (tenant, task_id) DO NOTHING",
        )
        .bind(t.tenant)
        .bind(t.task_id)
        .bind(t.kind)
        .bind(i16::from(t.priority))
        .bind(t.timeout_secs as i32)
        .bind(t.max_attempts as i32)
        .bind(t.incident_id)
        .bind(t.input)
        .bind(t.created_by)
        .bind(t.at)
        .bind(t.seq as i64)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Applies one task event to its row, unless the row already holds a later one.
    pub async fn update_task(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        task_id: Uuid,
        change: &TaskChange<'_>,
        at: DateTime<Utc>,
        seq: u64,
    ) -> Result<()> {
        // $1 tenant, $2 task, $3 at, $4 seq; the change's own values follow.
        let set = match change {
            TaskChange::Claimed { .. } => {
                "status = 'running', attempt = $5, worker_id = $6, claimed_at = $3,
                 not_before = NULL, progress = NULL, progress_message = NULL"
            }
            TaskChange::Progressed { .. } => "progress = $5, progress_message = $6",
            TaskChange::Completed { .. } => {
                "status = 'succeeded', result = $5, worker_id = NULL, finished_at = $3"
            }
            TaskChange::Failed { last: true, .. } => {
                "status = 'failed', reasons = reasons || jsonb_build_array($5::text),
                 worker_id = NULL, finished_at = $3"
            }
            // Queued again at once, as the aggregate says: the `TaskRetried` that follows sets
            // the backoff, and a retry never appended leaves the task claimable, not running.
            TaskChange::Failed { last: false, .. } => {
                "status = 'queued', reasons = reasons || jsonb_build_array($5::text), worker_id = NULL"
            }
            TaskChange::LeaseExpired => "lease_expiries = lease_expiries + 1",
            TaskChange::Retried { .. } => "status = 'queued', not_before = $5",
            TaskChange::Cancelled { .. } => {
                "status = 'cancelled', cancelled_by = $5, worker_id = NULL, finished_at = $3"
            }
            TaskChange::OutcomeRefused => "refused_outcomes = refused_outcomes + 1",
            // The attempt did not count: the next claim runs the same number again.
            TaskChange::Released { .. } => {
                "status = 'queued', attempt = $5, worker_id = NULL, not_before = NULL,
                 progress = NULL, progress_message = NULL"
            }
        };
        let sql = format!(
            "UPDATE tasks SET {set}, updated_at = $3, last_seq = $4
             WHERE tenant = $1 AND task_id = $2 AND last_seq < $4"
        );
        let q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(task_id)
            .bind(at)
            .bind(seq as i64);
        let q = match change {
            TaskChange::Claimed { attempt, worker_id } => q.bind(*attempt as i32).bind(*worker_id),
            TaskChange::Progressed { percent, message } => {
                q.bind(i16::from(*percent)).bind(*message)
            }
            TaskChange::Completed { result } => q.bind(*result),
            TaskChange::Failed { reason, .. } => q.bind(*reason),
            TaskChange::Retried { not_before } => q.bind(*not_before),
            TaskChange::Cancelled { by } => q.bind(*by),
            TaskChange::Released { attempt } => q.bind(attempt.saturating_sub(1) as i32),
            TaskChange::LeaseExpired | TaskChange::OutcomeRefused => q,
        };
        q.execute(&mut **tx).await?;
        Ok(())
    }

    /// The lines of one `TaskLogged`, numbered in order.
    #[allow(clippy::too_many_arguments)]
    pub async fn insert_task_log(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        task_id: Uuid,
        attempt: u32,
        lines: &[String],
        at: DateTime<Utc>,
        seq: u64,
    ) -> Result<()> {
        let numbers: Vec<i32> = (0..lines.len() as i32).collect();
        sqlx::query(
            "INSERT INTO task_logs (tenant, task_id, seq, line_no, attempt, at, line)
             SELECT $1, $2, $3, n, $4, $5, l FROM UNNEST($6::int[], $7::text[]) AS u(n, l)
             ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(task_id)
        .bind(seq as i64)
        .bind(attempt as i32)
        .bind(at)
        .bind(&numbers)
        .bind(lines)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// A page of a tenant's tasks, newest first, after `cursor`.
    pub async fn list_tasks(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        filter: &TaskFilter,
        cursor: Option<TaskCursor>,
        limit: u32,
    ) -> Result<Vec<TaskSummary>> {
        let mut q =
            sqlx::QueryBuilder::new(format!("SELECT {TASK_COLUMNS} FROM tasks WHERE tenant = "));
        q.push_bind(tenant);
        if let Some(status) = &filter.status {
            q.push(" AND status = ").push_bind(status);
        }
        if let Some(kind) = &filter.kind {
            q.push(" AND kind = ").push_bind(kind);
        }
        if let Some(incident) = filter.incident_id {
            q.push(" AND incident_id = ").push_bind(incident);
        }
        if let Some(since) = filter.since {
            q.push(" AND created_at >= ").push_bind(since);
        }
        if let Some(until) = filter.until {
            q.push(" AND created_at < ").push_bind(until);
        }
        if let Some(c) = cursor {
            q.push(" AND (created_at, task_id) < (")
                .push_bind(c.at)
                .push(", ")
                .push_bind(c.id)
                .push(")");
        }
        q.push(" ORDER BY created_at DESC, task_id DESC LIMIT ")
            .push_bind(i64::from(limit));
        Ok(q.build_query_as().fetch_all(&mut **tx).await?)
    }

    pub async fn get_task(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        task_id: Uuid,
    ) -> Result<Option<TaskSummary>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE tenant = $1 AND task_id = $2"
        )))
        .bind(tenant)
        .bind(task_id)
        .fetch_optional(&mut **tx)
        .await?)
    }

    /// A task's log lines after `(seq, line_no)`, in order.
    pub async fn task_log(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        task_id: Uuid,
        after: (i64, i32),
        limit: u32,
    ) -> Result<Vec<TaskLogLine>> {
        Ok(sqlx::query_as(
            "SELECT seq, line_no, attempt, at, line FROM task_logs
             WHERE tenant = $1 AND task_id = $2 AND (seq, line_no) > ($3, $4)
             ORDER BY seq, line_no LIMIT $5",
        )
        .bind(tenant)
        .bind(task_id)
        .bind(after.0)
        .bind(after.1)
        .bind(i64::from(limit))
        .fetch_all(&mut **tx)
        .await?)
    }

    /// The results of an incident's finished tasks of one kind, newest first.
    pub async fn incident_task_results(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        incident_id: Uuid,
        kind: &str,
        limit: u32,
    ) -> Result<Vec<(Uuid, DateTime<Utc>, serde_json::Value)>> {
        Ok(sqlx::query_as(
            "SELECT task_id, finished_at, result FROM tasks
             WHERE tenant = $1 AND incident_id = $2 AND kind = $3 AND status = 'succeeded'
             ORDER BY finished_at DESC, task_id DESC LIMIT $4",
        )
        .bind(tenant)
        .bind(incident_id)
        .bind(kind)
        .bind(i64::from(limit))
        .fetch_all(&mut **tx)
        .await?)
    }

    /// Tasks waiting for a worker, by kind, across tenants (for the queue-depth metric).
    pub async fn task_queue_depth(&self) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT kind, count(*) FROM tasks WHERE status = 'queued' GROUP BY kind ORDER BY kind",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn register_worker(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        worker_id: Uuid,
        name: &str,
        kinds: &[String],
        capacity: u32,
        at: DateTime<Utc>,
        seq: u64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO workers (tenant, worker_id, name, kinds, capacity, registered_at,
                 last_seen_at, last_seq)
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7)
             ON CONFLICT (tenant, worker_id) DO UPDATE SET name = excluded.name,
                 kinds = excluded.kinds, capacity = excluded.capacity,
                 registered_at = excluded.registered_at, last_seen_at = excluded.last_seen_at,
                 gone_at = NULL, gone_reason = NULL, last_seq = excluded.last_seq
             WHERE workers.last_seq < excluded.last_seq",
        )
        .bind(tenant)
        .bind(worker_id)
        .bind(name)
        .bind(serde_json::json!(kinds))
        .bind(capacity as i32)
        .bind(at)
        .bind(seq as i64)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn worker_seen(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        worker_id: Uuid,
        holding: &[Uuid],
        at: DateTime<Utc>,
        seq: u64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE workers SET last_seen_at = $3, holding = $4, last_seq = $5
             WHERE tenant = $1 AND worker_id = $2 AND last_seq < $5",
        )
        .bind(tenant)
        .bind(worker_id)
        .bind(at)
        .bind(serde_json::json!(holding))
        .bind(seq as i64)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn worker_gone(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        worker_id: Uuid,
        reason: &str,
        at: DateTime<Utc>,
        seq: u64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE workers SET gone_at = $3, gone_reason = $4, holding = '[]', last_seq = $5
             WHERE tenant = $1 AND worker_id = $2 AND last_seq < $5",
        )
        .bind(tenant)
        .bind(worker_id)
        .bind(at)
        .bind(reason)
        .bind(seq as i64)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    const WORKER_COLUMNS: &str = "worker_id, name, kinds, capacity, registered_at, last_seen_at,
        holding, gone_at, gone_reason";

    /// A tenant's workers, most recently seen first.
    pub async fn list_workers(&self, tx: &mut Tx<'_>, tenant: &str) -> Result<Vec<WorkerView>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM workers WHERE tenant = $1 ORDER BY last_seen_at DESC, worker_id",
            Self::WORKER_COLUMNS
        )))
        .bind(tenant)
        .fetch_all(&mut **tx)
        .await?)
    }

    pub async fn get_worker(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        worker_id: Uuid,
    ) -> Result<Option<WorkerView>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM workers WHERE tenant = $1 AND worker_id = $2",
            Self::WORKER_COLUMNS
        )))
        .bind(tenant)
        .bind(worker_id)
        .fetch_optional(&mut **tx)
        .await?)
    }

    pub async fn insert_worker_token(&self, tx: &mut Tx<'_>, t: &WorkerTokenRow<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO worker_tokens (token_id, tenant, token_hash, prefix, name, issued_by,
                 issued_at, last_seq)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (token_id) DO NOTHING",
        )
        .bind(t.token_id)
        .bind(t.tenant)
        .bind(t.token_hash)
        .bind(t.prefix)
        .bind(t.name)
        .bind(t.issued_by)
        .bind(t.at)
        .bind(t.seq as i64)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn revoke_worker_token(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        token_id: Uuid,
        by: &str,
        at: DateTime<Utc>,
        seq: u64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE worker_tokens SET revoked_at = $3, revoked_by = $4, last_seq = $5
             WHERE tenant = $1 AND token_id = $2 AND last_seq < $5 AND revoked_at IS NULL",
        )
        .bind(tenant)
        .bind(token_id)
        .bind(at)
        .bind(by)
        .bind(seq as i64)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn list_worker_tokens(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
    ) -> Result<Vec<WorkerTokenView>> {
        Ok(sqlx::query_as(
            "SELECT token_id, prefix, name, issued_by, issued_at, revoked_at, revoked_by
             FROM worker_tokens WHERE tenant = $1 ORDER BY issued_at DESC, token_id DESC",
        )
        .bind(tenant)
        .fetch_all(&mut **tx)
        .await?)
    }

    /// The tenant and id of the live worker token with this hash. Read before any tenant is
    /// known (the token is what names it), so it reads across tenants.
    pub async fn worker_token_by_hash(&self, hash: &str) -> Result<Option<(String, Uuid)>> {
        Ok(sqlx::query_as(
            "SELECT tenant, token_id FROM worker_tokens
             WHERE token_hash = $1 AND revoked_at IS NULL",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?)
    }
}
