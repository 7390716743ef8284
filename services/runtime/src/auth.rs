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

/// Prefix of every worker token: a worker's credential on the worker routes, never a webhook's.
pub const WORKER_TOKEN_PREFIX: &str = "cpk_";

impl NewWebhookToken {
    pub fn generate() -> Self {
        Self::with_prefix(WEBHOOK_TOKEN_PREFIX)
    }

    /// A new token of another kind (`WORKER_TOKEN_PREFIX`), made and stored the same way.
    pub fn with_prefix(prefix: &str) -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let secret = format!(
            "{prefix}{}",
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
    /// The user the token speaks for: a user id of `tenant` (see the `users` read model).
    pub sub: String,
    pub tenant: String,
    /// The most the token may do; the user's current role caps it.
    pub role: Role,
    pub iss: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// A platform operator's token: administers tenants (`/v1/admin/...`), reads no tenant's data.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub platform: bool,
    /// Which incarnation of the user the token speaks for: the stream sequence of the
    /// `UserAdded` that created them. A user removed and added again under the same id is
    /// another incarnation, and the old token is refused whatever the timing. Tokens from an
    /// identity provider carry none; theirs must be issued after the user was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub useq: Option<u64>,
}

/// The tenant claim of platform tokens: not a valid slug, so it can name no tenant's data.
pub const PLATFORM_TENANT: &str = "_platform";

/// Algorithms an operator may pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum JwtAlgorithm {
    #[value(name = "HS256")]
    Hs256,
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "EdDSA")]
    EdDsa,
}

impl JwtAlgorithm {
    fn algorithm(self) -> Algorithm {
        match self {
            Self::Hs256 => Algorithm::HS256,
            Self::Rs256 => Algorithm::RS256,
            Self::EdDsa => Algorithm::EdDSA,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error(
        "no JWT key configured: set COPILOT_JWT_SECRET (HS256, at least 32 bytes), or COPILOT_JWT_PUBLIC_KEY / COPILOT_JWT_JWKS with COPILOT_JWT_ALGORITHM"
    )]
    MissingKey,
    #[error("the JWT secret is {0} bytes; use at least 32")]
    WeakSecret(usize),
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{what} is not a usable {algorithm:?} key: {source}")]
    BadKey {
        what: String,
        algorithm: JwtAlgorithm,
        source: jsonwebtoken::errors::Error,
    },
    #[error("the JWKS file is not valid: {0}")]
    BadJwks(serde_json::Error),
    #[error(
        "this copilot only verifies {0:?} tokens: set COPILOT_JWT_PRIVATE_KEY to issue them, or issue them with your identity provider"
    )]
    CannotIssue(JwtAlgorithm),
    #[error("the token names key {0:?}, which is not configured")]
    UnknownKid(String),
    #[error("the token names no key (`kid`) and several are configured")]
    MissingKid,
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
}

/// How API tokens are verified (and, where a private key or secret is at hand, issued).
#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub algorithm: JwtAlgorithm,
    /// HS256 secret.
    pub secret: Option<String>,
    /// PEM public key (RS256, EdDSA).
    pub public_key: Option<std::path::PathBuf>,
    /// JWKS file: keys by `kid`, for rotation.
    pub jwks: Option<std::path::PathBuf>,
    /// PEM private key to issue RS256/EdDSA tokens with.
    pub private_key: Option<std::path::PathBuf>,
    /// `kid` written into issued tokens.
    pub kid: Option<String>,
    pub issuer: String,
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

impl JwtConfig {
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            algorithm: settings.jwt.algorithm,
            secret: settings
                .jwt
                .secret
                .as_ref()
                .map(|s| secrecy::ExposeSecret::expose_secret(s).to_owned()),
            public_key: settings.jwt.public_key.clone(),
            jwks: settings.jwt.jwks.clone(),
            private_key: settings.jwt.private_key.clone(),
            kid: settings.jwt.kid.clone(),
            issuer: settings.jwt.issuer.clone(),
            audience: settings.jwt.audience.clone(),
            leeway_secs: settings.jwt.leeway_secs,
        }
    }
}

/// Issues and verifies API tokens with one pinned algorithm. The algorithm comes from
/// configuration, never from the token: a token whose header names another is refused before
/// any key is tried, so `alg: none` and HS256-signed-with-the-public-key confusions fail.
pub struct Jwt {
    algorithm: JwtAlgorithm,
    encoding: Option<EncodingKey>,
    kid: Option<String>,
    /// The key for tokens without `kid`.
    default_key: Option<DecodingKey>,
    /// Keys by `kid`.
    keys: std::collections::HashMap<String, DecodingKey>,
    validation: Validation,
    issuer: String,
    audience: String,
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, JwtError> {
    std::fs::read(path).map_err(|source| JwtError::Read {
        path: path.display().to_string(),
        source,
    })
}

impl Jwt {
    pub fn from_settings(settings: &Settings) -> Result<Self, JwtError> {
        Self::new(&JwtConfig::from_settings(settings))
    }

    pub fn new(config: &JwtConfig) -> Result<Self, JwtError> {
        let algorithm = config.algorithm;
        let bad = |what: String| {
            move |source| JwtError::BadKey {
                what,
                algorithm,
                source,
            }
        };
        let mut default_key = None;
        let mut encoding = None;
        match algorithm {
            JwtAlgorithm::Hs256 => {
                if let Some(secret) = &config.secret {
                    if secret.len() < 32 {
                        return Err(JwtError::WeakSecret(secret.len()));
                    }
                    default_key = Some(DecodingKey::from_secret(secret.as_bytes()));
                    encoding = Some(EncodingKey::from_secret(secret.as_bytes()));
                }
            }
            JwtAlgorithm::Rs256 | JwtAlgorithm::EdDsa => {
                let rsa = algorithm == JwtAlgorithm::Rs256;
                if let Some(path) = &config.public_key {
                    let pem = read(path)?;
                    let key = if rsa {
                        DecodingKey::from_rsa_pem(&pem)
                    } else {
                        DecodingKey::from_ed_pem(&pem)
                    };
                    default_key = Some(key.map_err(bad(path.display().to_string()))?);
                }
                if let Some(path) = &config.private_key {
                    let pem = read(path)?;
                    let key = if rsa {
                        EncodingKey::from_rsa_pem(&pem)
                    } else {
                        EncodingKey::from_ed_pem(&pem)
                    };
                    encoding = Some(key.map_err(bad(path.display().to_string()))?);
                }
            }
        }
        let mut keys = std::collections::HashMap::new();
        if let Some(path) = &config.jwks {
            let set: jsonwebtoken::jwk::JwkSet =
                serde_json::from_slice(&read(path)?).map_err(JwtError::BadJwks)?;
            for jwk in &set.keys {
                // A key published for another algorithm is not a key for this one.
                if jwk
                    .common
                    .key_algorithm
                    .is_some_and(|a| a.to_string() != format!("{:?}", algorithm.algorithm()))
                {
                    continue;
                }
                let Some(kid) = jwk.common.key_id.clone() else {
                    continue;
                };
                let key = DecodingKey::from_jwk(jwk).map_err(bad(format!("JWKS key {kid:?}")))?;
                keys.insert(kid, key);
            }
        }
        if default_key.is_none() && keys.is_empty() {
            return Err(JwtError::MissingKey);
        }
        let mut validation = Validation::new(algorithm.algorithm());
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = config.leeway_secs;
        Ok(Self {
            algorithm,
            encoding,
            kid: config.kid.clone(),
            default_key,
            keys,
            validation,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
        })
    }

    /// HS256 with one secret and the default leeway, for tools and tests.
    pub fn hs256(secret: &[u8], issuer: &str, audience: &str) -> Result<Self, JwtError> {
        Self::new(&JwtConfig {
            algorithm: JwtAlgorithm::Hs256,
            secret: Some(String::from_utf8_lossy(secret).into_owned()),
            public_key: None,
            jwks: None,
            private_key: None,
            kid: None,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            leeway_secs: 30,
        })
    }

    /// Whether this copilot holds a key to issue tokens with.
    pub fn can_issue(&self) -> bool {
        self.encoding.is_some()
    }

    /// A signed token for user `sub` of `tenant` with at most `role`, valid for `ttl`, bound to
    /// the user's incarnation `user_seq` (the `added_seq` of the users read model; `None` only
    /// for users projected before it was recorded).
    pub fn issue(
        &self,
        sub: &str,
        tenant: &str,
        user_seq: Option<u64>,
        role: Role,
        ttl: std::time::Duration,
    ) -> Result<String, JwtError> {
        self.sign(sub, tenant, user_seq, role, ttl, false)
    }

    /// A platform operator's token (tenant administration only).
    pub fn issue_platform(&self, sub: &str, ttl: std::time::Duration) -> Result<String, JwtError> {
        self.sign(sub, PLATFORM_TENANT, None, Role::Admin, ttl, true)
    }

    fn sign(
        &self,
        sub: &str,
        tenant: &str,
        useq: Option<u64>,
        role: Role,
        ttl: std::time::Duration,
        platform: bool,
    ) -> Result<String, JwtError> {
        let encoding = self
            .encoding
            .as_ref()
            .ok_or(JwtError::CannotIssue(self.algorithm))?;
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: sub.to_owned(),
            tenant: tenant.to_owned(),
            role,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            exp: now + ttl.as_secs(),
            nbf: Some(now),
            platform,
            useq,
        };
        let mut header = Header::new(self.algorithm.algorithm());
        header.kid = self.kid.clone();
        Ok(jsonwebtoken::encode(&header, &claims, encoding)?)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        let header = jsonwebtoken::decode_header(token)?;
        if header.alg != self.algorithm.algorithm() {
            return Err(JwtError::Invalid(
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm.into(),
            ));
        }
        let key = match &header.kid {
            Some(kid) => match self.keys.get(kid) {
                Some(key) => key,
                // A kid the JWKS does not hold may still be the one key configured by PEM or secret.
                None if self.kid.as_deref() == Some(kid) || self.keys.is_empty() => self
                    .default_key
                    .as_ref()
                    .ok_or_else(|| JwtError::UnknownKid(kid.clone()))?,
                None => return Err(JwtError::UnknownKid(kid.clone())),
            },
            None => match (&self.default_key, self.keys.len()) {
                (Some(key), _) => key,
                (None, 1) => self.keys.values().next().expect("one key"),
                (None, _) => return Err(JwtError::MissingKid),
            },
        };
        Ok(jsonwebtoken::decode::<Claims>(token, key, &self.validation)?.claims)
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

    const MINUTE: Duration = Duration::from_secs(60);

    fn keys(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/testkeys")
            .join(name)
    }

    fn config(algorithm: JwtAlgorithm) -> JwtConfig {
        JwtConfig {
            algorithm,
            secret: None,
            public_key: None,
            jwks: None,
            private_key: None,
            kid: None,
            issuer: "copilot".into(),
            audience: "copilot-api".into(),
            leeway_secs: 0,
        }
    }

    fn hs(secret: &str) -> Jwt {
        Jwt::new(&JwtConfig {
            secret: Some(secret.into()),
            ..config(JwtAlgorithm::Hs256)
        })
        .unwrap()
    }

    fn rsa(private: &str, public: &str) -> Jwt {
        Jwt::new(&JwtConfig {
            public_key: Some(keys(public)),
            private_key: Some(keys(private)),
            ..config(JwtAlgorithm::Rs256)
        })
        .unwrap()
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    /// A token with any header and claims, signed (HS256) with `key`, or unsigned for `none`.
    fn forge(header: &str, claims: &serde_json::Value, key: Option<&[u8]>) -> String {
        use hmac::Mac as _;
        let signing_input = format!("{}.{}", b64(header), b64(&claims.to_string()));
        let signature = match key {
            Some(key) => {
                let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
                mac.update(signing_input.as_bytes());
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
            }
            None => String::new(),
        };
        format!("{signing_input}.{signature}")
    }

    fn claims_now(offset_exp: i64, nbf: Option<i64>, aud: &str) -> serde_json::Value {
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let mut c = serde_json::json!({"sub": "mallory", "tenant": "acme", "role": "admin",
            "iss": "copilot", "aud": aud, "iat": now, "exp": now + offset_exp});
        if let Some(nbf) = nbf {
            c["nbf"] = (now + nbf).into();
        }
        c
    }

    #[test]
    fn an_issued_token_verifies_with_its_claims() {
        let jwt = hs(&"s".repeat(32));
        let token = jwt
            .issue("alice", "acme", Some(1), Role::Engineer, MINUTE)
            .unwrap();
        let claims = jwt.verify(&token).unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.tenant.as_str(), claims.role),
            ("alice", "acme", Role::Engineer)
        );
        assert!(!claims.platform);
        assert!(
            jwt.verify(&jwt.issue_platform("ops", MINUTE).unwrap())
                .unwrap()
                .platform
        );
    }

    #[test]
    fn a_token_signed_with_another_key_is_refused() {
        let forged = hs(&"x".repeat(32))
            .issue("mallory", "acme", Some(1), Role::Admin, MINUTE)
            .unwrap();
        assert!(hs(&"s".repeat(32)).verify(&forged).is_err());

        let other_rsa = rsa("rsa_b.pem", "rsa_b.pub.pem")
            .issue("mallory", "acme", Some(1), Role::Admin, MINUTE)
            .unwrap();
        assert!(
            rsa("rsa_a.pem", "rsa_a.pub.pem")
                .verify(&other_rsa)
                .is_err()
        );
    }

    #[test]
    fn alg_none_is_refused_whatever_the_claims() {
        let none = forge(
            r#"{"alg":"none","typ":"JWT"}"#,
            &claims_now(60, None, "copilot-api"),
            None,
        );
        assert!(hs(&"s".repeat(32)).verify(&none).is_err());
        assert!(rsa("rsa_a.pem", "rsa_a.pub.pem").verify(&none).is_err());
    }

    #[test]
    fn an_hs256_token_signed_with_the_rsa_public_key_is_refused() {
        // The classic confusion: a verifier that takes the algorithm from the token would check
        // this HMAC with the public key as the secret, and accept it.
        let public = std::fs::read(keys("rsa_a.pub.pem")).unwrap();
        let confused = forge(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            &claims_now(60, None, "copilot-api"),
            Some(&public),
        );
        let err = rsa("rsa_a.pem", "rsa_a.pub.pem")
            .verify(&confused)
            .unwrap_err();
        assert!(err.to_string().contains("InvalidAlgorithm"), "{err}");
    }

    #[test]
    fn expired_and_not_yet_valid_tokens_are_refused_outside_the_leeway() {
        let secret = "s".repeat(32);
        let strict = hs(&secret);
        let expired = forge(
            r#"{"alg":"HS256"}"#,
            &claims_now(-5, None, "copilot-api"),
            Some(secret.as_bytes()),
        );
        let early = forge(
            r#"{"alg":"HS256"}"#,
            &claims_now(600, Some(120), "copilot-api"),
            Some(secret.as_bytes()),
        );
        assert!(strict.verify(&expired).is_err());
        assert!(strict.verify(&early).is_err());

        let lenient = Jwt::new(&JwtConfig {
            secret: Some(secret.clone()),
            leeway_secs: 10,
            ..config(JwtAlgorithm::Hs256)
        })
        .unwrap();
        assert!(
            lenient.verify(&expired).is_ok(),
            "5 s late is inside 10 s of leeway"
        );
        assert!(lenient.verify(&early).is_err(), "2 minutes early is not");
    }

    #[test]
    fn a_token_for_another_audience_or_issuer_is_refused() {
        let secret = "s".repeat(32);
        let other_aud = forge(
            r#"{"alg":"HS256"}"#,
            &claims_now(60, None, "elsewhere"),
            Some(secret.as_bytes()),
        );
        assert!(hs(&secret).verify(&other_aud).is_err());
        let mut c = claims_now(60, None, "copilot-api");
        c["iss"] = "someone-else".into();
        assert!(
            hs(&secret)
                .verify(&forge(r#"{"alg":"HS256"}"#, &c, Some(secret.as_bytes())))
                .is_err()
        );
    }

    #[test]
    fn rs256_and_eddsa_tokens_verify_with_their_public_keys() {
        let jwt = rsa("rsa_a.pem", "rsa_a.pub.pem");
        let token = jwt
            .issue("alice", "acme", Some(1), Role::Viewer, MINUTE)
            .unwrap();
        assert_eq!(jwt.verify(&token).unwrap().sub, "alice");

        let ed = Jwt::new(&JwtConfig {
            public_key: Some(keys("ed_a.pub.pem")),
            private_key: Some(keys("ed_a.pem")),
            ..config(JwtAlgorithm::EdDsa)
        })
        .unwrap();
        let token = ed
            .issue("bob", "acme", Some(1), Role::Viewer, MINUTE)
            .unwrap();
        assert_eq!(ed.verify(&token).unwrap().sub, "bob");
        // An RS256 verifier refuses an EdDSA token: the algorithm is pinned.
        assert!(jwt.verify(&token).is_err());
    }

    #[test]
    fn a_verify_only_copilot_says_it_cannot_issue() {
        let jwt = Jwt::new(&JwtConfig {
            public_key: Some(keys("rsa_a.pub.pem")),
            ..config(JwtAlgorithm::Rs256)
        })
        .unwrap();
        assert!(!jwt.can_issue());
        assert!(matches!(
            jwt.issue("a", "acme", Some(1), Role::Viewer, MINUTE),
            Err(JwtError::CannotIssue(JwtAlgorithm::Rs256))
        ));
    }

    #[test]
    fn jwks_keys_rotate_by_kid() {
        let verifier = Jwt::new(&JwtConfig {
            jwks: Some(keys("rsa.jwks.json")),
            ..config(JwtAlgorithm::Rs256)
        })
        .unwrap();
        let signer = |private: &str, kid: &str| {
            Jwt::new(&JwtConfig {
                private_key: Some(keys(private)),
                public_key: Some(keys(&private.replace(".pem", ".pub.pem"))),
                kid: Some(kid.into()),
                ..config(JwtAlgorithm::Rs256)
            })
            .unwrap()
            .issue("alice", "acme", Some(1), Role::Viewer, MINUTE)
            .unwrap()
        };
        assert!(verifier.verify(&signer("rsa_a.pem", "rsa-a")).is_ok());
        assert!(verifier.verify(&signer("rsa_b.pem", "rsa-b")).is_ok());
        // Key b's token claiming to be key a: the signature does not match key a.
        assert!(verifier.verify(&signer("rsa_b.pem", "rsa-a")).is_err());
        assert!(matches!(
            verifier.verify(&signer("rsa_a.pem", "retired")),
            Err(JwtError::UnknownKid(kid)) if kid == "retired"
        ));
        assert!(matches!(
            verifier.verify(
                &rsa("rsa_a.pem", "rsa_a.pub.pem")
                    .issue("a", "acme", Some(1), Role::Viewer, MINUTE)
                    .unwrap()
            ),
            Err(JwtError::MissingKid)
        ));

        let hs_jwks = Jwt::new(&JwtConfig {
            jwks: Some(keys("hs.jwks.json")),
            ..config(JwtAlgorithm::Hs256)
        })
        .unwrap();
        let old = forge(
            r#"{"alg":"HS256","kid":"hs-old"}"#,
            &claims_now(60, None, "copilot-api"),
            Some(&[b'o'; 32]),
        );
        let swapped = forge(
            r#"{"alg":"HS256","kid":"hs-new"}"#,
            &claims_now(60, None, "copilot-api"),
            Some(&[b'o'; 32]),
        );
        assert!(hs_jwks.verify(&old).is_ok());
        assert!(hs_jwks.verify(&swapped).is_err());
    }

    #[test]
    fn short_secrets_and_missing_keys_are_refused_at_start() {
        assert!(matches!(
            Jwt::hs256(b"short", "i", "a"),
            Err(JwtError::WeakSecret(5))
        ));
        assert!(matches!(
            Jwt::new(&config(JwtAlgorithm::Rs256)),
            Err(JwtError::MissingKey)
        ));
        assert!(matches!(
            Jwt::new(&JwtConfig {
                public_key: Some(keys("ed_a.pub.pem")),
                ..config(JwtAlgorithm::Rs256)
            }),
            Err(JwtError::BadKey { .. })
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
