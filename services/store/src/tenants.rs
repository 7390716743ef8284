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
