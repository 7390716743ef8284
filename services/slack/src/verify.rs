//! Slack's request signing (v0): `X-Slack-Signature` is `v0=` and the hex HMAC-SHA256, keyed by
//! the app's signing secret, of `v0:{X-Slack-Request-Timestamp}:{raw body}`. A request whose
//! timestamp is more than five minutes off is refused, so a captured request cannot be replayed.

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// How far a request's timestamp may be from now.
pub const MAX_SKEW_SECS: i64 = 300;

/// Why a request is not Slack's. Answered to the sender as one generic 401 whatever the reason;
/// the reason is for the logs and the tenant's last Slack error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the request carries no X-Slack-Request-Timestamp or X-Slack-Signature header")]
    MissingHeaders,
    #[error("the request's timestamp is not a number of seconds")]
    BadTimestamp,
    #[error("the request's timestamp is more than five minutes from now")]
    Stale,
    #[error("the request's signature is not v0= and 64 hex digits")]
    BadSignature,
    #[error("the request's signature does not match its body and the workspace's signing secret")]
    Mismatch,
}

/// The headers Slack signs with, as they came (either may be missing).
pub struct Signed<'a> {
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// What can be refused without a secret: missing headers, a timestamp that is not a number or
/// is stale, a signature that is not `v0=` and 64 hex digits. Returns the signature's bytes.
pub fn fresh(signed: &Signed<'_>, now: i64) -> Result<Vec<u8>, Refused> {
    let (Some(timestamp), Some(signature)) = (signed.timestamp, signed.signature) else {
        return Err(Refused::MissingHeaders);
    };
    let at: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| Refused::BadTimestamp)?;
    if (now - at).abs() > MAX_SKEW_SECS {
        return Err(Refused::Stale);
    }
    signature
        .strip_prefix("v0=")
        .and_then(hex)
        .ok_or(Refused::BadSignature)
}

/// Checks the headers and the timestamp first (a stale request is refused whatever its
/// signature), then the signature in constant time.
pub fn verify(secret: &[u8], signed: &Signed<'_>, body: &[u8], now: i64) -> Result<(), Refused> {
    let expected = fresh(signed, now)?;
    let timestamp = signed.timestamp.unwrap_or_default();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(b"v0:");
    mac.update(timestamp.trim().as_bytes());
    mac.update(b":");
    mac.update(body);
    mac.verify_slice(&expected).map_err(|_| Refused::Mismatch)
}

/// Signs a body as Slack does: what a test or a local tool sends.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("v0={hex}")
}

/// 32 bytes from 64 hex digits.
fn hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 {
        return None;
    }
    (0..64)
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `../shared/fixtures/slack-signing-test-vector.json`, from slackapi/python-slack-sdk.
    fn vector() -> serde_json::Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/fixtures/slack-signing-test-vector.json"
        );
        serde_json::from_str(
            &std::fs::read_to_string(path).expect("the shared fixtures are beside the repository"),
        )
        .unwrap()
    }

    fn body() -> Vec<u8> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/fixtures/slack-slash-command-body.txt"
        );
        std::fs::read(path).unwrap()
    }

    fn check(v: &serde_json::Value, body: &[u8], now: i64, secret: &str) -> Result<(), Refused> {
        let signed = Signed {
            timestamp: v["headers"]["X-Slack-Request-Timestamp"].as_str(),
            signature: v["headers"]["X-Slack-Signature"].as_str(),
        };
        verify(secret.as_bytes(), &signed, body, now)
    }

    #[test]
    fn the_upstream_test_vector_verifies_and_signs_to_the_same_signature() {
        let v = vector();
        let now = v["clock_now_for_validity_check"].as_i64().unwrap();
        let secret = v["signing_secret"].as_str().unwrap();

        assert_eq!(body(), v["body"].as_str().unwrap().as_bytes());
        assert_eq!(check(&v, &body(), now, secret), Ok(()));
        assert_eq!(
            sign(secret.as_bytes(), now, &body()),
            v["expected_signature"]
        );
    }

    #[test]
    fn an_altered_body_a_wrong_secret_or_a_stale_timestamp_is_refused() {
        let v = vector();
        let now = v["clock_now_for_validity_check"].as_i64().unwrap();
        let secret = v["signing_secret"].as_str().unwrap();
        let mut suffixed = body();
        suffixed.extend_from_slice(b"------");
        let mut flipped = body();
        flipped[10] ^= 1;

        assert_eq!(check(&v, &suffixed, now, secret), Err(Refused::Mismatch));
        assert_eq!(check(&v, &flipped, now, secret), Err(Refused::Mismatch));
        assert_eq!(
            check(&v, &body(), now, "not-the-secret"),
            Err(Refused::Mismatch)
        );
        assert_eq!(
            check(&v, &body(), now + MAX_SKEW_SECS + 1, secret),
            Err(Refused::Stale)
        );
        assert_eq!(
            check(&v, &body(), now - MAX_SKEW_SECS - 1, secret),
            Err(Refused::Stale)
        );
        assert_eq!(check(&v, &body(), now + MAX_SKEW_SECS, secret), Ok(()));
    }

    #[test]
    fn missing_or_malformed_headers_are_refused_before_any_hashing() {
        let body = body();
        let refused = |timestamp, signature| {
            verify(
                b"s",
                &Signed {
                    timestamp,
                    signature,
                },
                &body,
                1_531_420_618,
            )
        };

        assert_eq!(refused(None, Some("v0=00")), Err(Refused::MissingHeaders));
        assert_eq!(
            refused(Some("1531420618"), None),
            Err(Refused::MissingHeaders)
        );
        assert_eq!(
            refused(Some("yesterday"), Some("v0=00")),
            Err(Refused::BadTimestamp)
        );
        assert_eq!(
            refused(Some("1531420618"), Some("v1=abc")),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            refused(Some("1531420618"), Some(&format!("v0={}", "zz".repeat(32)))),
            Err(Refused::BadSignature)
        );
    }
}
