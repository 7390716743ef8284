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

/// Who a webhook token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenOwner {
    pub tenant: String,
    pub token_id: Uuid,
    pub revoked: bool,
}

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
            "UPDATE webhook_tokens SET revoked_at = $3, revoked_by = $4, last_seq = $5
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
        let row: Option<(String, Uuid, bool)> = sqlx::query_as(
            "SELECT tenant, token_id, revoked_at IS NOT NULL FROM webhook_tokens WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(tenant, token_id, revoked)| TokenOwner {
            tenant,
            token_id,
            revoked,
        }))
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
}
