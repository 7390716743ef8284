use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{Result, Store, Tx};

pub struct TenantRow {
    pub slug: String,
    pub name: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub seq: u64,
}

pub struct TokenRow {
    pub token_id: Uuid,
    pub tenant: String,
    pub token_hash: String,
    pub prefix: String,
    pub issued_by: String,
    pub issued_at: DateTime<Utc>,
    pub seq: u64,
}

pub struct TokenRevocation {
    pub token_id: Uuid,
    pub tenant: String,
    pub revoked_by: String,
    pub revoked_at: DateTime<Utc>,
    pub seq: u64,
}

/// Who a webhook token belongs to, and whether it may be used now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenOwner {
    pub tenant: String,
    pub token_id: Uuid,
    /// Revoked with effect at or before now.
    pub revoked: bool,
    /// The tenant is suspended.
    pub suspended: bool,
}

/// A tenant as administrators see it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TenantView {
    pub slug: String,
    pub name: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub suspended_at: Option<DateTime<Utc>>,
    pub suspended_by: Option<String>,
    pub suspend_reason: Option<String>,
    /// Webhook tokens that work now or until a scheduled revocation.
    pub active_tokens: i64,
    pub users: i64,
}

/// A webhook token as listed: never its hash.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenView {
    pub token_id: Uuid,
    pub prefix: String,
    pub issued_by: String,
    pub issued_at: DateTime<Utc>,
    /// When it stopped (or will stop) working.
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
    pub active: bool,
}

const TENANT_VIEW: &str =
    "SELECT t.slug, t.name, t.created_by, t.created_at, t.suspended_at, t.suspended_by,
        t.suspend_reason,
        (SELECT count(*) FROM webhook_tokens w WHERE w.tenant = t.slug
            AND (w.revoked_at IS NULL OR w.revoked_at > now())) AS active_tokens,
        (SELECT count(*) FROM users u WHERE u.tenant = t.slug) AS users
     FROM tenants t";

impl Store {
    pub async fn insert_tenant(&self, tx: &mut Tx<'_>, row: &TenantRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO tenants (slug, name, created_by, created_at, last_seq) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (slug) DO NOTHING",
        )
        .bind(&row.slug)
        .bind(&row.name)
        .bind(&row.created_by)
        .bind(row.created_at)
        .bind(row.seq as i64)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn insert_token(&self, tx: &mut Tx<'_>, row: &TokenRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO webhook_tokens (token_id, tenant, token_hash, prefix, issued_by, issued_at, last_seq)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (token_id) DO NOTHING",
        )
        .bind(row.token_id)
        .bind(&row.tenant)
        .bind(&row.token_hash)
        .bind(&row.prefix)
        .bind(&row.issued_by)
        .bind(row.issued_at)
        .bind(row.seq as i64)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn revoke_token(&self, tx: &mut Tx<'_>, row: &TokenRevocation) -> Result<()> {
        sqlx::query(
            "UPDATE webhook_tokens
             SET revoked_at = LEAST(COALESCE(revoked_at, 'infinity'), $3), revoked_by = $4, last_seq = $5
             WHERE token_id = $1 AND tenant = $2 AND last_seq < $5",
        )
        .bind(row.token_id)
        .bind(&row.tenant)
        .bind(row.revoked_at)
        .bind(&row.revoked_by)
        .bind(row.seq as i64)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The tenant a webhook token hash belongs to, if any.
    pub async fn find_token(&self, token_hash: &str) -> Result<Option<TokenOwner>> {
        let row: Option<(String, Uuid, bool, bool)> = sqlx::query_as(
            "SELECT w.tenant, w.token_id, COALESCE(w.revoked_at <= now(), false),
                    t.suspended_at IS NOT NULL
             FROM webhook_tokens w LEFT JOIN tenants t ON t.slug = w.tenant
             WHERE w.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            row.map(|(tenant, token_id, revoked, suspended)| TokenOwner {
                tenant,
                token_id,
                revoked,
                suspended,
            }),
        )
    }

    pub async fn tenant_exists(&self, slug: &str) -> Result<bool> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants WHERE slug = $1)")
                .bind(slug)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Whether the projector has recorded a token (used to wait for a command's effect).
    pub async fn token_exists(&self, token_id: Uuid) -> Result<bool> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM webhook_tokens WHERE token_id = $1)")
                .bind(token_id)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn suspend_tenant(
        &self,
        tx: &mut Tx<'_>,
        slug: &str,
        by: &str,
        reason: &str,
        at: DateTime<Utc>,
        seq: u64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE tenants SET suspended_at = $2, suspended_by = $3, suspend_reason = $4, last_seq = $5
             WHERE slug = $1 AND last_seq < $5",
        )
        .bind(slug)
        .bind(at)
        .bind(by)
        .bind(reason)
        .bind(seq as i64)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn resume_tenant(&self, tx: &mut Tx<'_>, slug: &str, seq: u64) -> Result<()> {
        sqlx::query(
            "UPDATE tenants SET suspended_at = NULL, suspended_by = NULL, suspend_reason = NULL,
                    last_seq = $2
             WHERE slug = $1 AND last_seq < $2",
        )
        .bind(slug)
        .bind(seq as i64)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Every tenant, by slug.
    pub async fn list_tenants(&self, tx: &mut Tx<'_>) -> Result<Vec<TenantView>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{TENANT_VIEW} ORDER BY t.slug"
        )))
        .fetch_all(&mut **tx)
        .await?)
    }

    pub async fn get_tenant(&self, tx: &mut Tx<'_>, slug: &str) -> Result<Option<TenantView>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{TENANT_VIEW} WHERE t.slug = $1"
        )))
        .bind(slug)
        .fetch_optional(&mut **tx)
        .await?)
    }

    /// A tenant's webhook tokens, newest first.
    pub async fn list_tokens(&self, tx: &mut Tx<'_>, tenant: &str) -> Result<Vec<TokenView>> {
        Ok(sqlx::query_as(
            "SELECT token_id, prefix, issued_by, issued_at, revoked_at, revoked_by,
                    (revoked_at IS NULL OR revoked_at > now()) AS active
             FROM webhook_tokens WHERE tenant = $1 ORDER BY issued_at DESC, token_id DESC",
        )
        .bind(tenant)
        .fetch_all(&mut **tx)
        .await?)
    }
}

/// Why a Grafana reader role cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum GrafanaReaderError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] crate::StoreError),
}

impl Store {
    /// The name of the database the copilot's read models are in.
    pub async fn database_name(&self) -> Result<String> {
        Ok(sqlx::query_scalar("SELECT current_database()::text")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Makes `role` a login that reads `tenant`'s read models only (see the `grafana_readers`
    /// migration). An existing role is adopted, keeping its password unless `password` is
    /// given, unless it can do more than read (a superuser, a role maker, the copilot's own
    /// login or roles); a new one is made with `password`, else `new_role_password`. Returns the
    /// password a new role was made with (`None`: an existing one was adopted).
    pub async fn grafana_reader<'a>(
        &self,
        role: &str,
        password: Option<&'a str>,
        new_role_password: &'a str,
        tenant: &str,
    ) -> std::result::Result<Option<&'a str>, GrafanaReaderError> {
        let refused = |why: String| Err(GrafanaReaderError::Refused(why));
        let mut tx = self.begin().await?;
        let existing: Option<(bool, bool, bool)> = sqlx::query_as(
            "SELECT rolsuper, rolcreaterole, rolname = current_user FROM pg_roles WHERE rolname = $1",
        )
        .bind(role)
        .fetch_optional(&mut *tx)
        .await
        .map_err(crate::StoreError::from)?;
        if matches!(existing, Some((true, _, _) | (_, true, _) | (_, _, true)))
            || role.starts_with("pg_")
            || role.starts_with("copilot_")
        {
            return refused(format!(
                "role {role:?} can do more than read: name a role of its own for Grafana"
            ));
        }
        // Identifiers and the password are quoted by Postgres's own `format` (%I, %L).
        let mut formats: Vec<(&str, Option<&str>)> = Vec::new();
        let made_with = existing
            .is_none()
            .then(|| password.unwrap_or(new_role_password));
        match (made_with, password) {
            (Some(p), _) => formats.push((
                "SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)",
                Some(p),
            )),
            (None, Some(p)) => formats.push((
                "SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)",
                Some(p),
            )),
            (None, None) => {}
        }
        formats.push((
            "SELECT format('GRANT copilot_grafana TO %I', $1::text)",
            None,
        ));
        formats.push((
            "SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), $1::text)",
            None,
        ));
        let mut ddl: Vec<String> = Vec::new();
        for (format, password) in formats {
            let mut query = sqlx::query_scalar(sqlx::AssertSqlSafe(format)).bind(role);
            if let Some(password) = password {
                query = query.bind(password);
            }
            ddl.push(
                query
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(crate::StoreError::from)?,
            );
        }
        for statement in ddl {
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&mut *tx)
                .await
                .map_err(crate::StoreError::from)?;
        }
        sqlx::query(
            "INSERT INTO grafana_readers (role_name, tenant) VALUES ($1, $2)
             ON CONFLICT (role_name) DO UPDATE SET tenant = $2",
        )
        .bind(role)
        .bind(tenant)
        .execute(&mut *tx)
        .await
        .map_err(crate::StoreError::from)?;
        tx.commit().await.map_err(crate::StoreError::from)?;
        Ok(made_with)
    }
}
