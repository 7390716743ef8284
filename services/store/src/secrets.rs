//! Tenant secrets, sealed. Not a read model: written by the secrets command itself (the values
//! never travel in events) and read only by the services that send them, never under the
//! tenant role.

use chrono::{DateTime, Utc};

use crate::{Result, Store, Tx};

/// A sealed secret as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SecretRow {
    pub name: String,
    pub version: i32,
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub fingerprint: String,
    /// The only origin the value may be sent to, if it is bound to one.
    pub origin: Option<String>,
}

/// What anyone may know of a secret: never its value.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SecretMeta {
    pub name: String,
    pub version: i32,
    pub fingerprint: String,
    /// The only origin the value may be sent to, if it is bound to one.
    pub origin: Option<String>,
    pub set_by: String,
    pub set_at: DateTime<Utc>,
}

impl Store {
    /// The version the next value of a secret gets (1 for a new one; deleted ones keep
    /// counting). Takes a transaction lock on the secret's name first, so two writers of one
    /// secret, even a new one, take turns.
    pub async fn next_secret_version(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        name: &str,
    ) -> Result<i32> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 7))")
            .bind(tenant)
            .bind(name)
            .execute(&mut **tx)
            .await?;
        let current: Option<i32> = sqlx::query_scalar(
            "SELECT version FROM tenant_secrets WHERE tenant = $1 AND name = $2",
        )
        .bind(tenant)
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(current.unwrap_or(0) + 1)
    }

    /// Stores (or replaces) a sealed secret.
    pub async fn put_secret(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        row: &SecretRow,
        set_by: &str,
        at: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO tenant_secrets (tenant, name, version, key_id, nonce, ciphertext, fingerprint,
                                         origin, set_by, set_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $10, $8, $9)
             ON CONFLICT (tenant, name) DO UPDATE SET version = EXCLUDED.version,
                 key_id = EXCLUDED.key_id, nonce = EXCLUDED.nonce, ciphertext = EXCLUDED.ciphertext,
                 fingerprint = EXCLUDED.fingerprint, origin = EXCLUDED.origin,
                 set_by = EXCLUDED.set_by, set_at = EXCLUDED.set_at, deleted_at = NULL",
        )
        .bind(tenant)
        .bind(&row.name)
        .bind(row.version)
        .bind(&row.key_id)
        .bind(&row.nonce)
        .bind(&row.ciphertext)
        .bind(&row.fingerprint)
        .bind(set_by)
        .bind(at)
        .bind(&row.origin)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Deletes a secret's value (its row stays, emptied, to keep its version count); whether
    /// there was one.
    pub async fn delete_secret(&self, tx: &mut Tx<'_>, tenant: &str, name: &str) -> Result<bool> {
        let deleted = sqlx::query(
            "UPDATE tenant_secrets SET nonce = '', ciphertext = '', deleted_at = now()
             WHERE tenant = $1 AND name = $2 AND deleted_at IS NULL",
        )
        .bind(tenant)
        .bind(name)
        .execute(&mut **tx)
        .await?;
        Ok(deleted.rows_affected() == 1)
    }

    /// A sealed secret of a tenant, to be opened by a service that sends it.
    pub async fn sealed_secret(&self, tenant: &str, name: &str) -> Result<Option<SecretRow>> {
        Ok(sqlx::query_as(
            "SELECT name, version, key_id, nonce, ciphertext, fingerprint, origin
             FROM tenant_secrets WHERE tenant = $1 AND name = $2 AND deleted_at IS NULL",
        )
        .bind(tenant)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// A tenant's secrets, without their values.
    pub async fn list_secrets(&self, tenant: &str) -> Result<Vec<SecretMeta>> {
        Ok(sqlx::query_as(
            "SELECT name, version, fingerprint, origin, set_by, set_at
             FROM tenant_secrets WHERE tenant = $1 AND deleted_at IS NULL ORDER BY name",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Sealed secrets not sealed with `key_id`, a page at a time, for re-sealing after a key
    /// rotation: (tenant, row).
    pub async fn secrets_sealed_with_other_keys(
        &self,
        key_id: &str,
        limit: i64,
    ) -> Result<Vec<(String, SecretRow)>> {
        #[derive(sqlx::FromRow)]
        struct Tenanted {
            tenant: String,
            #[sqlx(flatten)]
            row: SecretRow,
        }
        let rows: Vec<Tenanted> = sqlx::query_as(
            "SELECT tenant, name, version, key_id, nonce, ciphertext, fingerprint, origin
             FROM tenant_secrets WHERE key_id <> $1 AND deleted_at IS NULL
             ORDER BY tenant, name LIMIT $2",
        )
        .bind(key_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|t| (t.tenant, t.row)).collect())
    }

    /// Replaces a secret's sealing (same value, version and fingerprint) if it is still the
    /// version that was read; whether it was.
    pub async fn reseal_secret(
        &self,
        tenant: &str,
        name: &str,
        version: i32,
        key_id: &str,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<bool> {
        let updated = sqlx::query(
            "UPDATE tenant_secrets SET key_id = $4, nonce = $5, ciphertext = $6
             WHERE tenant = $1 AND name = $2 AND version = $3",
        )
        .bind(tenant)
        .bind(name)
        .bind(version)
        .bind(key_id)
        .bind(nonce)
        .bind(ciphertext)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }
}
