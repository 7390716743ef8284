//! Authentication: per-tenant webhook tokens (stored only as blake3 hashes) and the JWTs of the
//! read and command APIs (HS256, algorithm pinned by configuration, never taken from the token).

use base64::Engine as _;
use copilot_events::Role;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};

use crate::Settings;

/// Prefix of every webhook token, so a leaked one is recognisable (and greppable by scanners).
pub const WEBHOOK_TOKEN_PREFIX: &str = "cpw_";
/// How many characters of a token are kept in the clear to tell tokens apart.
const DISPLAY_PREFIX_LEN: usize = 12;

/// A newly generated webhook token. `secret` is shown once and never stored.
pub struct NewWebhookToken {
    pub secret: String,
    pub hash: String,
    pub prefix: String,
}

impl NewWebhookToken {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let secret = format!(
            "{WEBHOOK_TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
        Self {
            hash: hash_token(&secret),
            prefix: secret[..DISPLAY_PREFIX_LEN].to_owned(),
            secret,
        }
    }
}

/// The stored form of a webhook token.
pub fn hash_token(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

/// Claims of an API token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub tenant: String,
    pub role: Role,
    pub iss: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("no JWT secret configured: set COPILOT_JWT_SECRET (at least 32 bytes)")]
    MissingSecret,
    #[error("the JWT secret is {0} bytes; use at least 32")]
    WeakSecret(usize),
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
}

/// Issues and verifies API tokens with one pinned algorithm and key.
pub struct Jwt {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
}

impl Jwt {
    pub fn from_settings(settings: &Settings) -> Result<Self, JwtError> {
        let secret = settings
            .jwt_secret
            .as_deref()
            .ok_or(JwtError::MissingSecret)?;
        Self::hs256(
            secret.as_bytes(),
            &settings.jwt_issuer,
            &settings.jwt_audience,
        )
    }

    pub fn hs256(secret: &[u8], issuer: &str, audience: &str) -> Result<Self, JwtError> {
        if secret.len() < 32 {
            return Err(JwtError::WeakSecret(secret.len()));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 30;
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        })
    }

    /// A signed token for `sub` in `tenant` with `role`, valid for `ttl`.
    pub fn issue(&self, sub: &str, tenant: &str, role: Role, ttl: std::time::Duration) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: sub.to_owned(),
            tenant: tenant.to_owned(),
            role,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            exp: now + ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing with a valid key cannot fail")
    }

    pub fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        Ok(jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)?.claims)
    }
}

/// Generates a random secret suitable for `COPILOT_JWT_SECRET`.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 48];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn jwt() -> Jwt {
        Jwt::hs256(&[7u8; 32], "copilot", "copilot-api").unwrap()
    }

    #[test]
    fn an_issued_token_verifies_with_its_claims() {
        let token = jwt().issue("alice", "acme", Role::Engineer, Duration::from_secs(60));
        let claims = jwt().verify(&token).unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.tenant.as_str(), claims.role),
            ("alice", "acme", Role::Engineer)
        );
    }

    #[test]
    fn tokens_signed_with_another_key_or_audience_or_alg_none_are_refused() {
        let other = Jwt::hs256(&[8u8; 32], "copilot", "copilot-api").unwrap();
        let forged = other.issue("mallory", "acme", Role::Admin, Duration::from_secs(60));
        assert!(jwt().verify(&forged).is_err());

        let other_aud = Jwt::hs256(&[7u8; 32], "copilot", "elsewhere").unwrap();
        assert!(
            jwt()
                .verify(&other_aud.issue("a", "acme", Role::Admin, Duration::from_secs(60)))
                .is_err()
        );

        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let now = jsonwebtoken::get_current_timestamp();
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&format!(
                r#"{{"sub":"m","tenant":"acme","role":"admin","iss":"copilot","aud":"copilot-api","iat":{now},"exp":{}}}"#,
                now + 60
            ))
        );
        assert!(jwt().verify(&none).is_err());
    }

    #[test]
    fn an_expired_token_is_refused() {
        let token = jwt().issue("alice", "acme", Role::Viewer, Duration::from_secs(0));
        let mut strict = jwt();
        strict.validation.leeway = 0;
        std::thread::sleep(Duration::from_millis(1100));
        assert!(strict.verify(&token).is_err());
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(matches!(
            Jwt::hs256(b"short", "i", "a"),
            Err(JwtError::WeakSecret(5))
        ));
    }

    #[test]
    fn webhook_tokens_are_random_and_stored_only_as_their_hash() {
        let a = NewWebhookToken::generate();
        let b = NewWebhookToken::generate();
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.hash, hash_token(&a.secret));
        assert!(a.secret.starts_with(&a.prefix) && a.prefix.len() < a.secret.len());
    }
}
