//! Rate limits: a token bucket per tenant and per user (governor's GCRA), and a budget of failed
//! authentications per source address, per process. A tenant or user over its limit gets 429
//! with `Retry-After`; the others are unaffected. A user's bucket is checked before the tenant's
//! and is smaller, so one user's burst cannot spend the whole tenant's. Limits are per
//! instance, so N gateways let a tenant through at N times the rate: size them per instance.

use std::{
    collections::HashMap,
    net::IpAddr,
    num::NonZeroU32,
    sync::Mutex,
    time::{Duration, Instant},
};

use governor::{DefaultKeyedRateLimiter, Quota, clock::Clock as _};

use crate::{http::ApiError, metrics::Metrics};

pub struct TenantLimiter {
    limiter: DefaultKeyedRateLimiter<String>,
    /// What is limited, the metric's `scope` label: `webhooks`, `api` or `api_user`.
    scope: &'static str,
    /// What a key names, in the refusal: `tenant` or `user`.
    what: &'static str,
}

impl TenantLimiter {
    /// `None` (no limit) when `per_second` is 0.
    pub fn new(scope: &'static str, per_second: u32, burst: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
        Some(Self {
            limiter: governor::RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            scope,
            what: "tenant",
        })
    }

    /// A limiter whose keys are users (`tenant/user`).
    pub fn per_user(scope: &'static str, per_second: u32, burst: u32) -> Option<Self> {
        Self::new(scope, per_second, burst).map(|l| Self { what: "user", ..l })
    }

    /// Takes one request from `key`'s bucket, or answers 429.
    pub fn check(&self, key: &str) -> Result<(), ApiError> {
        let tenant = key;
        let key = key.to_owned();
        match self.limiter.check_key(&key) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
                Metrics::global()
                    .rate_limited_total
                    .with_label_values(&[self.scope])
                    .inc();
                tracing::warn!(key = tenant, scope = self.scope, "rate limited");
                // Tenants are few and known (keys are authenticated slugs), but drop idle ones
                // now and then so the map holds only the active.
                if self.limiter.len() > 10_000 {
                    self.limiter.retain_recent();
                }
                Err(ApiError::TooManyRequests {
                    detail: format!(
                        "{} {tenant} is over its {} rate limit; retry after the time in Retry-After",
                        self.what, self.scope
                    ),
                    retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
                })
            }
        }
    }
}

/// A budget of failed authentications per source address (an IPv6 source counts by its /64, so
/// rotating addresses inside one network does not reset it): `per_minute` failures, refilled
/// evenly. While a source has none left, credentials it sends that are not already known good are
/// refused with 429 before they are looked up, so guessing tokens costs the guesser time and the
/// copilot no database work; credentials known good keep working, so senders sharing an address
/// (behind a NAT or a proxy) with a guesser are not locked out.
pub struct AuthFailureLimiter {
    per_minute: f64,
    scope: &'static str,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

/// Sources tracked at most; past it, sources whose budget is full again are forgotten.
const MAX_SOURCES: usize = 100_000;

impl AuthFailureLimiter {
    /// `None` (no limit) when `per_minute` is 0.
    pub fn new(scope: &'static str, per_minute: u32) -> Option<Self> {
        (per_minute > 0).then(|| Self {
            per_minute: f64::from(per_minute),
            scope,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    fn level(&self, tokens: f64, since: Instant, now: Instant) -> f64 {
        (tokens + now.duration_since(since).as_secs_f64() * self.per_minute / 60.0)
            .min(self.per_minute)
    }

    /// 429 when `source` has spent its failures; otherwise nothing is taken.
    pub fn admit(&self, source: IpAddr) -> Result<(), ApiError> {
        let source = network_of(source);
        let now = Instant::now();
        let buckets = self.buckets.lock().expect("auth failure buckets");
        let Some(&(tokens, since)) = buckets.get(&source) else {
            return Ok(());
        };
        let level = self.level(tokens, since, now);
        if level >= 1.0 {
            return Ok(());
        }
        Metrics::global()
            .rate_limited_total
            .with_label_values(&[&format!("{}_auth_failures", self.scope)])
            .inc();
        let wait = Duration::from_secs_f64((1.0 - level) * 60.0 / self.per_minute);
        Err(ApiError::TooManyRequests {
            detail: "too many failed authentications from this address; retry after the time in Retry-After".into(),
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        })
    }

    /// Records a failed authentication from `source`.
    pub fn failed(&self, source: IpAddr) {
        let source = network_of(source);
        Metrics::global()
            .auth_failures_total
            .with_label_values(&[self.scope])
            .inc();
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("auth failure buckets");
        if buckets.len() >= MAX_SOURCES {
            let full = self.per_minute;
            buckets.retain(|_, (tokens, since)| {
                (*tokens + now.duration_since(*since).as_secs_f64() * full / 60.0) < full
            });
        }
        let level = buckets
            .get(&source)
            .map(|&(tokens, since)| self.level(tokens, since, now))
            .unwrap_or(self.per_minute);
        buckets.insert(source, ((level - 1.0).max(0.0), now));
    }
}

/// The key a source counts under: the address, or for IPv6 its /64.
fn network_of(source: IpAddr) -> IpAddr {
    match source {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        IpAddr::V6(v6) => IpAddr::V4(v6.to_ipv4_mapped().expect("mapped")),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_over_its_burst_is_refused_and_others_are_not() {
        let limiter = TenantLimiter::new("api", 1, 3).unwrap();
        for _ in 0..3 {
            limiter.check("acme").unwrap();
        }
        let refused = limiter.check("acme").unwrap_err();
        assert!(matches!(
            refused,
            ApiError::TooManyRequests { retry_after_secs, .. } if retry_after_secs >= 1
        ));
        assert!(limiter.check("globex").is_ok());
        assert!(TenantLimiter::new("api", 0, 10).is_none());
    }

    #[test]
    fn a_source_that_spent_its_failures_is_refused_and_others_are_not() {
        let limiter = AuthFailureLimiter::new("api", 3).unwrap();
        let (attacker, other): (IpAddr, IpAddr) = (
            "203.0.113.9".parse().unwrap(),
            "198.51.100.1".parse().unwrap(),
        );

        for _ in 0..3 {
            limiter.admit(attacker).unwrap();
            limiter.failed(attacker);
        }

        assert!(matches!(
            limiter.admit(attacker),
            Err(ApiError::TooManyRequests { retry_after_secs, .. }) if retry_after_secs >= 1
        ));
        assert!(limiter.admit(other).is_ok());
        assert!(AuthFailureLimiter::new("api", 0).is_none());
    }

    #[test]
    fn an_ipv6_source_counts_by_its_network_so_rotating_addresses_does_not_help() {
        let limiter = AuthFailureLimiter::new("api", 2).unwrap();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().unwrap();

        limiter.failed(a);
        limiter.failed(b);

        assert!(limiter.admit(a).is_err());
        assert!(limiter.admit(elsewhere).is_ok());
    }
}
