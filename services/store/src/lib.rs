//! The read-model store. All SQL of the system lives here, one function per query, so that a
//! schema change is one file away from every statement it affects. Writes take the caller's
//! transaction, or (`commit_signals`) are one statement that moves the checkpoint too: a
//! projection's rows and its checkpoint commit together or not at all.

mod audit;
mod correlator;
mod hypotheses;
mod incidents;
mod secrets;
mod signals;
mod slack;
mod tasks;
mod tenants;
mod users;

pub use audit::{AuditCursor, AuditEntry, AuditFilter, AuditRow};
pub use correlator::{CorrelatorIncident, CorrelatorSignal};
pub use hypotheses::{
    ConcurrentIncidentRow, HypothesisClaim, HypothesisRow, HypothesisView, IncidentLink,
    IncidentSignalFacts, ProposalRow, ProposalView, SimilarIncident, UsageRow,
};
pub use incidents::{
    AttachedSignal, IncidentCursor, IncidentEventRow, IncidentFilter, IncidentNoteView,
    IncidentSignalView, IncidentSort, IncidentStats, IncidentSummary, NewIncident, StateChange,
    TenantSetting, TimelineEntry,
};
pub use secrets::{SecretMeta, SecretRow};
pub use signals::{SignalCursor, SignalFilter, SignalRow, SignalView};
pub use slack::{SlackStatus, SlackThread};
pub use tasks::{
    NewTaskRow, TaskChange, TaskCursor, TaskFilter, TaskLogLine, TaskSummary, WorkerTokenRow,
    WorkerTokenView, WorkerView,
};
pub use tenants::{
    GrafanaReaderError, TenantRow, TenantView, TokenOwner, TokenRevocation, TokenRow, TokenView,
};
pub use users::{UserChange, UserRow, UserView};

use sqlx::{Connection as _, PgConnection, PgPool, Postgres, Transaction, postgres::PgPoolOptions};

/// A transaction on the read-model database.
pub type Tx<'a> = Transaction<'a, Postgres>;

/// The migrations of every read model, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// Postgres refused the data itself (SQLSTATE class 22, data exception; 23, a constraint
    /// violated; 54, a limit exceeded): retrying the same rows will fail again, so the event
    /// behind them is poison. Transient classes (connection, 40 rollbacks) are not.
    pub fn is_data_error(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Database(db)) => db.code().is_some_and(|code| {
                code.starts_with("22") || code.starts_with("23") || code.starts_with("54")
            }),
            _ => false,
        }
    }

    /// The database could not be reached or is going away (connection lost or refused, pool
    /// timed out, server shutting down or not yet accepting connections): nothing is wrong with
    /// the request, and the same one should succeed once Postgres is back.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Database(
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed,
            ) => true,
            // 08: connection exception, less 08P01 (protocol violation: a client bug, not an
            // outage); 57P01-57P03: admin or crash shutdown, cannot connect now; 53300: too many
            // connections.
            Self::Database(sqlx::Error::Database(db)) => db.code().is_some_and(|code| {
                (code.starts_with("08") && code != "08P01")
                    || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
            }),
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

/// An event a projection could not apply, with why.
pub struct DeadLetter<'a> {
    pub projection: &'a str,
    /// The tenant of the subject the event was read from.
    pub tenant: &'a str,
    pub stream: &'a str,
    pub seq: u64,
    pub subject: &'a str,
    pub reason: &'a str,
    pub body: &'a [u8],
}

/// Exclusive right to run one projection, held as a Postgres session advisory lock on a
/// connection of its own; dropping the lease closes the connection and frees the lock.
pub struct Lease {
    _conn: PgConnection,
}

impl Store {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(std::time::Duration::from_secs(5))
            // A connection in steady use is known to be alive; pinging it on every acquire
            // would add a round trip to every batch and request. One idle for a while (the
            // server may have restarted since) is still checked first.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > std::time::Duration::from_secs(1) {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect(url)
            .await?;
        Ok(Self { pool })
    }

    /// A pool that connects on first use: making it needs no server.
    pub fn connect_lazy(url: &str, max_connections: u32) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_lazy(url)?;
        Ok(Self { pool })
    }

    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn begin(&self) -> Result<Tx<'static>> {
        Ok(self.pool.begin().await?)
    }

    /// A read transaction confined to one tenant by row-level security: it runs as the
    /// `copilot_tenant` role with `copilot.tenant` set, both for this transaction only, so rows
    /// of any other tenant are invisible to every query in it, filtered or not. The API reads
    /// through these.
    pub async fn begin_tenant(&self, tenant: &str) -> Result<Tx<'static>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "SELECT set_config('role', 'copilot_tenant', true), set_config('copilot.tenant', $1, true)",
        )
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
        Ok(tx)
    }

    /// A transaction for one projection batch. Its commit does not wait for the WAL flush
    /// (`synchronous_commit = off`): a Postgres crash may forget the last batches, but it forgets
    /// their checkpoint with them, and the projector repositions its consumer at the checkpoint
    /// it finds, so the stream delivers them again. Nothing is lost or applied twice; the fsync
    /// simply leaves the path every alert waits on.
    pub async fn begin_batch(&self) -> Result<Tx<'static>> {
        // One round trip for both.
        Ok(self
            .pool
            .begin_with("BEGIN; SET LOCAL synchronous_commit = off")
            .await?)
    }

    /// A savepoint inside `tx`: committing it keeps its writes, dropping it undoes them.
    pub async fn savepoint<'a>(tx: &'a mut Tx<'_>) -> Result<Tx<'a>> {
        Ok(sqlx::Connection::begin(&mut **tx).await?)
    }

    /// Tries to become the one writer of `projection`. `None` when another process holds it.
    pub async fn try_lease(&self, projection: &str) -> Result<Option<Lease>> {
        let mut conn = self.pool.acquire().await?.detach();
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
            .bind(format!("copilot.projection.{projection}"))
            .fetch_one(&mut conn)
            .await?;
        if got {
            Ok(Some(Lease { _conn: conn }))
        } else {
            conn.close().await.ok();
            Ok(None)
        }
    }

    /// The stream sequence `projection` has applied up to (0 when it has applied nothing).
    pub async fn checkpoint(&self, tx: &mut Tx<'_>, projection: &str) -> Result<u64> {
        let seq: Option<i64> = sqlx::query_scalar(
            "SELECT last_seq FROM projection_checkpoints WHERE projection = $1 FOR UPDATE",
        )
        .bind(projection)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(seq.unwrap_or(0) as u64)
    }

    /// Waits until projection `name` has applied stream sequence `seq` (polling its checkpoint),
    /// for at most `timeout`; whether it did. What a command waits on to answer with its effect
    /// in force, and what a benchmark or tool waits on to see a projection caught up.
    pub async fn wait_for_checkpoint(
        &self,
        name: &str,
        seq: u64,
        timeout: std::time::Duration,
        mut progress: impl FnMut(u64),
    ) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let at = self.read_checkpoint(name).await?;
            progress(at);
            if at >= seq {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// The checkpoint outside a transaction, for readers that wait on a projection.
    pub async fn read_checkpoint(&self, projection: &str) -> Result<u64> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT last_seq FROM projection_checkpoints WHERE projection = $1")
                .bind(projection)
                .fetch_optional(&self.pool)
                .await?;
        Ok(seq.unwrap_or(0) as u64)
    }

    /// Makes sure the projection has a checkpoint row, so that `checkpoint` can lock it and
    /// `move_checkpoint` and `commit_signals` can move it.
    pub async fn init_checkpoint(&self, projection: &str, stream: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO projection_checkpoints (projection, stream, last_seq) VALUES ($1, $2, 0)
             ON CONFLICT (projection) DO NOTHING",
        )
        .bind(projection)
        .bind(stream)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Moves a checkpoint forward outside a batch: when the stream no longer holds the events
    /// after it (they were removed by the stream's limits), there is nothing to fold there.
    pub async fn advance_checkpoint(&self, projection: &str, stream: &str, seq: u64) -> Result<()> {
        let mut tx = self.begin().await?;
        self.set_checkpoint(&mut tx, projection, stream, seq)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn set_checkpoint(
        &self,
        tx: &mut Tx<'_>,
        projection: &str,
        stream: &str,
        seq: u64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO projection_checkpoints (projection, stream, last_seq) VALUES ($1, $2, $3)
             ON CONFLICT (projection) DO UPDATE SET last_seq = excluded.last_seq
             WHERE projection_checkpoints.last_seq < excluded.last_seq",
        )
        .bind(projection)
        .bind(stream)
        .bind(seq as i64)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Moves a batch's checkpoint from `from` to `to` in the batch's transaction. `false` when
    /// the checkpoint is not at `from`: another writer got in, and the batch must be abandoned.
    /// One statement both checks and moves it, so a batch costs no extra round trip to lock it
    /// first; a second writer waits on the row here and then finds it moved.
    pub async fn move_checkpoint(
        &self,
        tx: &mut Tx<'_>,
        projection: &str,
        from: u64,
        to: u64,
    ) -> Result<bool> {
        let moved = sqlx::query(
            "UPDATE projection_checkpoints SET last_seq = $3 WHERE projection = $1 AND last_seq = $2",
        )
        .bind(projection)
        .bind(from as i64)
        .bind(to as i64)
        .execute(&mut **tx)
        .await?;
        Ok(moved.rows_affected() == 1)
    }

    /// Parks an event a projection could not apply.
    pub async fn insert_dead_letter(&self, tx: &mut Tx<'_>, letter: &DeadLetter<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO dead_letters (projection, tenant, stream, seq, subject, reason, body)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (projection, seq) DO NOTHING",
        )
        .bind(letter.projection)
        .bind(letter.tenant)
        .bind(letter.stream)
        .bind(letter.seq as i64)
        .bind(letter.subject)
        .bind(letter.reason)
        .bind(letter.body)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// blake3 over the rows of a read-model table in key order: two databases with equal
    /// checksums hold the same rows. Used to prove a rebuild equals the live model.
    pub async fn checksum(&self, table: ReadModel) -> Result<String> {
        let (name, key) = table.name_and_key();
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT t::text FROM {name} t ORDER BY {key}"
        )))
        .fetch_all(&self.pool)
        .await?;
        let mut hasher = blake3::Hasher::new();
        for row in rows {
            hasher.update(row.as_bytes());
            hasher.update(b"\n");
        }
        Ok(hasher.finalize().to_hex().to_string())
    }
}

/// The checkpoint names of the projections: what a writer waits on to see its event applied.
/// The projector owns the projections; their names live here, with the checkpoints, so a
/// reader need not depend on the projector to wait for one.
pub mod checkpoints {
    pub const TENANTS: &str = "tenants";
    pub const SIGNALS: &str = "signals";
    pub const INCIDENTS: &str = "incidents";
    pub const TELEMETRY: &str = "telemetry";
    pub const TASKS: &str = "tasks";
    /// The correlator's position in SIGNALS.
    pub const CORRELATOR_SIGNALS: &str = "correlator-signals";
    /// The correlator's position in INCIDENTS (people's lifecycle moves it follows).
    pub const CORRELATOR_LIFECYCLE: &str = "correlator-incidents";
}

/// The tables that are not read models, and why: what the copilot keeps besides what it folds
/// from the streams. Every other table is a [`ReadModel`], compared after a rebuild; a test
/// fails for a table in neither list, so a new one cannot be forgotten.
pub const NOT_READ_MODELS: [(&str, &str); 9] = [
    ("_sqlx_migrations", "the migrations applied"),
    (
        "projection_checkpoints",
        "each projection's position, committed with its rows",
    ),
    (
        "dead_letters",
        "events a projection parked, with why; replayable, not folded",
    ),
    (
        "correlator_signals",
        "the correlator's working state, saved with its checkpoint",
    ),
    (
        "correlator_incidents",
        "the correlator's working state, saved with its checkpoint",
    ),
    (
        "hypothesis_schedule",
        "when each incident is due for hypotheses (operational)",
    ),
    (
        "tenant_secrets",
        "sealed secret values, which never travel in events",
    ),
    (
        "slack_status",
        "whether each tenant's Slack works, as the notifier last found it",
    ),
    (
        "grafana_readers",
        "the database roles Grafana reads a tenant as, made by the CLI",
    ),
];

/// The read-model tables, for checksums.
#[derive(Debug, Clone, Copy)]
pub enum ReadModel {
    Tenants,
    WebhookTokens,
    Signals,
    CorrelationRules,
    Incidents,
    IncidentSignals,
    IncidentNotes,
    IncidentEvents,
    HypothesisProposals,
    Hypotheses,
    HypothesisVerdicts,
    UsageEvents,
    TenantIntegrations,
    Users,
    TenantRetention,
    AuditLog,
    Tasks,
    TaskLogs,
    Workers,
    WorkerTokens,
}

impl ReadModel {
    pub const ALL: [ReadModel; 20] = [
        Self::Tenants,
        Self::WebhookTokens,
        Self::Signals,
        Self::CorrelationRules,
        Self::Incidents,
        Self::IncidentSignals,
        Self::IncidentNotes,
        Self::IncidentEvents,
        Self::HypothesisProposals,
        Self::Hypotheses,
        Self::HypothesisVerdicts,
        Self::UsageEvents,
        Self::TenantIntegrations,
        Self::Users,
        Self::TenantRetention,
        Self::AuditLog,
        Self::Tasks,
        Self::TaskLogs,
        Self::Workers,
        Self::WorkerTokens,
    ];
    /// The task read models, which the projector folds from the TASKS stream.
    pub const TASKS: [ReadModel; 3] = [Self::Tasks, Self::TaskLogs, Self::Workers];
    /// The incident read models, which the projector folds from the INCIDENTS stream.
    pub const INCIDENTS: [ReadModel; 7] = [
        Self::Incidents,
        Self::IncidentSignals,
        Self::IncidentNotes,
        Self::IncidentEvents,
        Self::HypothesisProposals,
        Self::Hypotheses,
        Self::HypothesisVerdicts,
    ];

    /// The table's name.
    pub fn table(self) -> &'static str {
        self.name_and_key().0
    }

    fn name_and_key(self) -> (&'static str, &'static str) {
        match self {
            Self::Tenants => ("tenants", "slug"),
            Self::WebhookTokens => ("webhook_tokens", "token_id"),
            Self::Signals => ("signals", "id"),
            Self::CorrelationRules => ("correlation_rules", "tenant"),
            Self::Incidents => ("incidents", "tenant, id"),
            Self::IncidentSignals => ("incident_signals", "tenant, incident_id, signal_id"),
            Self::IncidentNotes => ("incident_notes", "tenant, incident_id, note_id"),
            Self::IncidentEvents => ("incident_events", "event_id"),
            Self::HypothesisProposals => {
                ("hypothesis_proposals", "tenant, incident_id, proposal_id")
            }
            Self::Hypotheses => (
                "hypotheses",
                "tenant, incident_id, proposal_id, hypothesis_id",
            ),
            Self::HypothesisVerdicts => {
                ("hypothesis_verdicts", "tenant, incident_id, hypothesis_id")
            }
            Self::UsageEvents => ("usage_events", "call_id"),
            Self::TenantIntegrations => ("tenant_integrations", "tenant"),
            Self::Users => ("users", "tenant, user_id"),
            Self::TenantRetention => ("tenant_retention", "tenant"),
            Self::AuditLog => ("audit_log", "event_id"),
            Self::Tasks => ("tasks", "tenant, task_id"),
            Self::TaskLogs => ("task_logs", "tenant, task_id, seq, line_no"),
            Self::Workers => ("workers", "tenant, worker_id"),
            Self::WorkerTokens => ("worker_tokens", "token_id"),
        }
    }
}

/// Creates database `name` on the server `admin_url` points at, unless it exists. For
/// `copilot up` and the test harness, which bring their own database.
pub async fn ensure_database(admin_url: &str, name: &str) -> Result<()> {
    let mut conn = PgConnection::connect(admin_url).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let quoted = name.replace('"', "\"\"");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{quoted}\"")))
            .execute(&mut conn)
            .await?;
    }
    conn.close().await?;
    Ok(())
}

/// Drops database `name` (closing other sessions on it), if it exists.
pub async fn drop_database(admin_url: &str, name: &str) -> Result<()> {
    let mut conn = PgConnection::connect(admin_url).await?;
    let quoted = name.replace('"', "\"\"");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{quoted}\" WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await?;
    conn.close().await?;
    Ok(())
}

impl Store {
    /// The tables of the database's public schema.
    pub async fn tables(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Why each event a projection parked was parked, in stream order.
    pub async fn dead_letter_reasons(&self, projection: &str) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar(
                "SELECT reason FROM dead_letters WHERE projection = $1 ORDER BY seq",
            )
            .bind(projection)
            .fetch_all(&self.pool)
            .await?,
        )
    }

    /// Dead letters a projection has parked.
    pub async fn count_dead_letters(&self, projection: &str) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE projection = $1")
                .bind(projection)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// `(alert instances, notifications)` recorded for a tenant.
    pub async fn signal_totals(&self, tenant: &str) -> Result<(i64, i64)> {
        Ok(sqlx::query_as(
            "SELECT count(*), coalesce(sum(notification_count), 0)::int8 FROM signals WHERE tenant = $1",
        )
        .bind(tenant)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The request id of the last notification applied to a signal.
    pub async fn signal_request_id(&self, tenant: &str, id: uuid::Uuid) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT last_request_id FROM signals WHERE tenant = $1 AND id = $2")
                .bind(tenant)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
                .flatten(),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::StoreError;

    /// An error Postgres answered with, as sqlx reports it, by SQLSTATE alone.
    #[derive(Debug)]
    struct Answered(&'static str);

    impl std::fmt::Display for Answered {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for Answered {}

    impl sqlx::error::DatabaseError for Answered {
        fn message(&self) -> &str {
            "answered"
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn answered(code: &'static str) -> StoreError {
        StoreError::Database(sqlx::Error::Database(Box::new(Answered(code))))
    }

    #[test]
    fn only_an_outage_counts_as_the_database_being_unavailable() {
        // Connection failure, connection refused, admin shutdown, cannot connect now, too many
        // connections; and no connection from the pool in time.
        for code in ["08006", "08001", "57P01", "57P03", "53300"] {
            assert!(answered(code).is_unavailable(), "{code}");
        }
        assert!(StoreError::Database(sqlx::Error::PoolTimedOut).is_unavailable());
        // Protocol violation (a client bug), unique violation, bad data, serialization failure,
        // unknown table: retrying the same request would not help.
        for code in ["08P01", "23505", "22021", "40001", "42P01"] {
            assert!(!answered(code).is_unavailable(), "{code}");
        }
        assert!(!StoreError::Database(sqlx::Error::RowNotFound).is_unavailable());
    }
}
