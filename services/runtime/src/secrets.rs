//! Tenant secrets at rest: values a tenant writes (a model's API key, a Slack signing secret)
//! and nobody reads back. Each is sealed with XChaCha20-Poly1305 under a key the platform holds
//! (`COPILOT_SECRETS_KEY` or `COPILOT_SECRETS_KEY_FILE`), bound to its tenant, name and version
//! as associated data so a sealed value copied to another tenant's row does not open. Keys have
//! ids: the first key seals, every key listed opens, so an operator rotates by putting a new key
//! first, running `copilot secrets rekey`, then dropping the old one.

use std::collections::HashMap;

use base64::Engine as _;
use chacha20poly1305::{
    KeyInit as _, XChaCha20Poly1305, XNonce,
    aead::{Aead as _, Payload},
};
use rand::RngCore as _;

/// Why secrets cannot be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "no secrets key is configured: set COPILOT_SECRETS_KEY or COPILOT_SECRETS_KEY_FILE (`copilot secrets new-key` prints one)"
    )]
    NoKey,
    #[error("the secrets key {0:?} is not `id:base64 of 32 bytes`")]
    BadKey(String),
    #[error("reading the secrets key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the secret was sealed with key {0:?}, which is not configured")]
    UnknownKey(String),
    #[error("the secret does not open with key {0:?} (tampered with, or moved from another row)")]
    Corrupt(String),
}

/// A sealed value as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// The platform's secrets keys: the first seals, all open.
pub struct SecretKeys {
    primary: String,
    keys: HashMap<String, XChaCha20Poly1305>,
    /// Derived from the sealing key: fingerprints cannot be computed, nor guessed at, without it.
    fingerprint_key: [u8; 32],
}

impl std::fmt::Debug for SecretKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&String> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("SecretKeys")
            .field("primary", &self.primary)
            .field("ids", &ids)
            .finish()
    }
}

impl SecretKeys {
    /// Parses `id:base64,id:base64` (or one per line); the first is the sealing key.
    pub fn parse(spec: &str) -> Result<Self, SecretsError> {
        let mut primary: Option<(String, [u8; 32])> = None;
        let mut keys = HashMap::new();
        for item in spec
            .split([',', '\n'])
            .map(str::trim)
            .filter(|i| !i.is_empty() && !i.starts_with('#'))
        {
            // Name the key by its id only: what follows it, or a line without one, may be key
            // material, and this error is logged.
            let id_of = |item: &str| match item.split_once(':') {
                Some((id, _)) => id.to_owned(),
                None => "(a line without an id)".to_owned(),
            };
            let bad = || SecretsError::BadKey(id_of(item));
            let (id, b64) = item.split_once(':').ok_or_else(bad)?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b64.trim()))
                .map_err(|_| bad())?;
            if bytes.len() != 32 || id.is_empty() || id.len() > 64 {
                return Err(bad());
            }
            let cipher = XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| bad())?;
            if primary.is_none() {
                let material: [u8; 32] = bytes.as_slice().try_into().map_err(|_| bad())?;
                primary = Some((id.to_owned(), material));
            }
            keys.insert(id.to_owned(), cipher);
        }
        let (primary, material) = primary.ok_or(SecretsError::NoKey)?;
        Ok(Self {
            primary,
            keys,
            fingerprint_key: blake3::derive_key("copilot tenant secret fingerprint v1", &material),
        })
    }

    /// The keys the settings name, if any.
    pub fn from_settings(settings: &crate::Settings) -> Result<Option<Self>, SecretsError> {
        if let Some(spec) = &settings.tenancy.secrets_key {
            return Self::parse(secrecy::ExposeSecret::expose_secret(spec)).map(Some);
        }
        if let Some(path) = &settings.tenancy.secrets_key_file {
            let text = std::fs::read_to_string(path).map_err(|source| SecretsError::Read {
                path: path.display().to_string(),
                source,
            })?;
            return Self::parse(&text).map(Some);
        }
        Ok(None)
    }

    /// What tells two values of a secret apart in events, the audit log and `GET`: 12 hex digits
    /// of a digest keyed by the platform over the tenant, name and value. Without the platform's
    /// key nobody can test a guess of the value against it; it differs between tenants for the
    /// same value, and after a key rotation for the same value too.
    pub fn fingerprint(&self, tenant: &str, name: &str, value: &str) -> String {
        let mut hasher = blake3::Hasher::new_keyed(&self.fingerprint_key);
        for part in [tenant, name, value] {
            hasher.update(part.as_bytes());
            hasher.update(&[0]);
        }
        hasher.finalize().to_hex()[..12].to_owned()
    }

    /// The id of the key new values are sealed with.
    pub fn primary_id(&self) -> &str {
        &self.primary
    }

    pub fn seal(&self, tenant: &str, name: &str, version: u32, value: &str) -> Sealed {
        let cipher = &self.keys[&self.primary];
        let mut nonce = [0u8; 24];
        rand::rng().fill_bytes(&mut nonce);
        let aad = associated_data(tenant, name, version);
        let ciphertext = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: value.as_bytes(),
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 seals any length a request can carry");
        Sealed {
            key_id: self.primary.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    pub fn open(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
        sealed: &Sealed,
    ) -> Result<String, SecretsError> {
        let cipher = self
            .keys
            .get(&sealed.key_id)
            .ok_or_else(|| SecretsError::UnknownKey(sealed.key_id.clone()))?;
        let corrupt = || SecretsError::Corrupt(sealed.key_id.clone());
        let nonce: [u8; 24] = sealed.nonce.as_slice().try_into().map_err(|_| corrupt())?;
        let aad = associated_data(tenant, name, version);
        let plain = cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| corrupt())?;
        String::from_utf8(plain).map_err(|_| corrupt())
    }
}

fn associated_data(tenant: &str, name: &str, version: u32) -> Vec<u8> {
    format!("copilot-secret\0{tenant}\0{name}\0{version}").into_bytes()
}

/// A new random key line, `id:base64`, for `COPILOT_SECRETS_KEY` or its file.
pub fn generate_key(id: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{id}:{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// A tenant's secret, opened: its value and the one origin it may be sent to, if bound.
pub struct OpenedSecret {
    pub value: String,
    pub origin: Option<String>,
}

/// Opens tenant secret `name` with the platform's keys. `Err` says why it cannot, in words fit
/// for the tenant; what only the operator should see is logged.
pub async fn open_tenant_secret(
    ctx: &crate::Context,
    tenant: &str,
    name: &str,
) -> Result<OpenedSecret, String> {
    let unopenable = |err: &dyn std::fmt::Display| {
        tracing::warn!(tenant, secret = name, error = %err, "a tenant secret cannot be opened");
        format!("secret {name:?} cannot be opened on this copilot (its operator's logs say why)")
    };
    let keys = SecretKeys::from_settings(&ctx.settings)
        .map_err(|e| unopenable(&e))?
        .ok_or_else(|| unopenable(&"no secrets key is configured"))?;
    let row = ctx
        .store
        .sealed_secret(tenant, name)
        .await
        .map_err(|_| format!("secret {name:?} could not be read"))?
        .ok_or_else(|| format!("secret {name:?} is not stored"))?;
    let sealed = Sealed {
        key_id: row.key_id,
        nonce: row.nonce,
        ciphertext: row.ciphertext,
    };
    let value = keys
        .open(tenant, name, row.version as u32, &sealed)
        .map_err(|e| unopenable(&e))?;
    Ok(OpenedSecret {
        value,
        origin: row.origin,
    })
}

/// The value of environment variable `name` for a tenant's legacy `field` setting, if the
/// operator allows this tenant to name it.
pub fn tenant_env(
    settings: &crate::Settings,
    tenant: &str,
    field: &str,
    name: &str,
) -> Result<String, String> {
    if !settings.tenancy.tenant_env_allowed(tenant, name) {
        return Err(format!(
            "{field} names {name:?}, which the operator does not allow tenants to use; store the value as a tenant secret"
        ));
    }
    std::env::var(name).map_err(|_| format!("variable {name:?} is not set"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_for_its_tenant_name_and_version() {
        let keys = SecretKeys::parse(&generate_key("k1")).unwrap();

        let sealed = keys.seal("acme", "openai", 1, "sk-live-123");

        assert_ne!(sealed.ciphertext, b"sk-live-123");
        assert_eq!(
            keys.open("acme", "openai", 1, &sealed).unwrap(),
            "sk-live-123"
        );
        assert!(matches!(
            keys.open("globex", "openai", 1, &sealed),
            Err(SecretsError::Corrupt(_))
        ));
        assert!(keys.open("acme", "other", 1, &sealed).is_err());
        assert!(keys.open("acme", "openai", 2, &sealed).is_err());
    }

    #[test]
    fn after_rotation_the_new_key_seals_and_the_old_one_still_opens() {
        let old = generate_key("old");
        let before = SecretKeys::parse(&old).unwrap();
        let sealed_before = before.seal("acme", "openai", 1, "v1");

        let after = SecretKeys::parse(&format!("{},{old}", generate_key("new"))).unwrap();
        let sealed_after = after.seal("acme", "openai", 2, "v2");

        assert_eq!(after.primary_id(), "new");
        assert_eq!(sealed_after.key_id, "new");
        assert_eq!(
            after.open("acme", "openai", 1, &sealed_before).unwrap(),
            "v1"
        );
        assert!(matches!(
            before.open("acme", "openai", 2, &sealed_after),
            Err(SecretsError::UnknownKey(id)) if id == "new"
        ));
    }

    #[test]
    fn malformed_keys_are_refused_without_echoing_them() {
        let err = SecretKeys::parse("k1:c2hvcnQ=").unwrap_err().to_string();
        assert!(err.contains("k1") && !err.contains("c2hvcnQ"), "{err}");
        let key_without_id = generate_key("x").split_once(':').unwrap().1.to_owned();
        let err = SecretKeys::parse(&key_without_id).unwrap_err().to_string();
        assert!(!err.contains(&key_without_id[..8]), "{err}");
        assert!(matches!(SecretKeys::parse(""), Err(SecretsError::NoKey)));
    }

    #[test]
    fn fingerprints_tell_values_apart_and_need_the_platforms_key() {
        let keys = SecretKeys::parse(&generate_key("k1")).unwrap();
        let other = SecretKeys::parse(&generate_key("k1")).unwrap();

        let a = keys.fingerprint("acme", "openai", "sk-1");

        assert_eq!(a.len(), 12);
        assert_eq!(a, keys.fingerprint("acme", "openai", "sk-1"));
        assert_ne!(a, keys.fingerprint("acme", "openai", "sk-2"));
        assert_ne!(a, keys.fingerprint("globex", "openai", "sk-1"));
        assert_ne!(a, other.fingerprint("acme", "openai", "sk-1"));
    }
}
