//! Tenant secrets: stored sealed, never read back, announced by name, version and fingerprint.

use async_nats::jetstream;
use chrono::Utc;
use copilot_events::{
    EventPayload, Headers, TenantSecretRemoved, TenantSecretSet, is_valid_secret_name, subjects,
};
use copilot_runtime::secrets::SecretKeys;
use copilot_store::{SecretRow, Store, StoreError};

use crate::{CommandError, append_on, invalid};

/// Largest secret value, in bytes.
pub const MAX_SECRET_BYTES: usize = 8192;

/// A stored secret as its event tells it: never the value.
pub struct StoredSecret {
    pub name: String,
    pub version: u32,
    pub fingerprint: String,
    pub origin: Option<String>,
    pub seq: u64,
}

/// A secret's value and, optionally, the only origin it may be sent to.
pub struct SecretValue<'a> {
    pub value: &'a str,
    pub origin: Option<&'a str>,
}

/// Seals `value` with the platform's key and stores it as tenant secret `name` (replacing any
/// value it had, with the next version), then appends `TenantSecretSet` with the version and
/// fingerprint only. The row commits only once the event is appended, so the audit log never
/// misses a value that is in force.
#[allow(clippy::too_many_arguments)]
pub async fn set_secret(
    js: &jetstream::Context,
    store: &Store,
    keys: Option<&SecretKeys>,
    tenant: &str,
    name: &str,
    secret: SecretValue<'_>,
    actor: &str,
    headers: Headers,
) -> Result<StoredSecret, CommandError> {
    let keys = keys.ok_or(CommandError::SecretsDisabled)?;
    let value = secret.value;
    let origin = match secret.origin {
        Some(given) => Some(copilot_runtime::egress::origin_of(given).ok_or_else(|| {
            invalid(format!(
                "origin {given:?} is not an http(s) origin such as https://api.openai.com"
            ))
        })?),
        None => None,
    };
    if !is_valid_secret_name(name) {
        return Err(invalid(format!(
            "{name:?} is not a valid secret name: use 1-64 of a-z, 0-9, - and _, starting with a letter"
        )));
    }
    // What an HTTP header can carry as a bearer token or a signing key: visible ASCII. A line
    // break would make the request that sends it impossible to build.
    if value.is_empty()
        || value.len() > MAX_SECRET_BYTES
        || !value.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(invalid(format!(
            "a secret's value is 1-{MAX_SECRET_BYTES} visible ASCII characters (no spaces, line breaks or control characters)"
        )));
    }
    crate::existing_tenant(store, tenant).await?;
    let mut tx = store.begin().await?;
    let version = store.next_secret_version(&mut tx, tenant, name).await?;
    let sealed = keys.seal(tenant, name, version as u32, value);
    let row = SecretRow {
        name: name.to_owned(),
        version,
        key_id: sealed.key_id,
        nonce: sealed.nonce,
        ciphertext: sealed.ciphertext,
        fingerprint: keys.fingerprint(tenant, name, value),
        origin,
    };
    store
        .put_secret(&mut tx, tenant, &row, actor, Utc::now())
        .await?;
    let event = TenantSecretSet {
        name: name.to_owned(),
        version: version as u32,
        fingerprint: row.fingerprint.clone(),
        origin: row.origin.clone(),
        set_by: actor.to_owned(),
    };
    let seq = append_then_commit(js, tx, tenant, &event, headers).await?;
    Ok(StoredSecret {
        name: row.name,
        version: event.version,
        fingerprint: row.fingerprint,
        origin: row.origin,
        seq,
    })
}

/// Deletes tenant secret `name` and appends `TenantSecretRemoved`; 404 when there is none.
pub async fn remove_secret(
    js: &jetstream::Context,
    store: &Store,
    tenant: &str,
    name: &str,
    actor: &str,
    headers: Headers,
) -> Result<u64, CommandError> {
    let mut tx = store.begin().await?;
    if !store.delete_secret(&mut tx, tenant, name).await? {
        return Err(CommandError::NotFound("secret"));
    }
    let event = TenantSecretRemoved {
        name: name.to_owned(),
        removed_by: actor.to_owned(),
    };
    append_then_commit(js, tx, tenant, &event, headers).await
}

/// Appends a secret's event on the tenant's secrets subject, then commits the row written in
/// `tx`: the row is in force only once its event is recorded.
async fn append_then_commit<P: EventPayload>(
    js: &jetstream::Context,
    tx: copilot_store::Tx<'_>,
    tenant: &str,
    event: &P,
    headers: Headers,
) -> Result<u64, CommandError> {
    let seq = append_on(js, subjects::tenant_secrets(tenant), tenant, event, headers).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(seq)
}
