//! Per-tenant rate limits: a token bucket per tenant (governor's GCRA), per process. A tenant
//! over its limit gets 429 with `Retry-After`; the others are unaffected. Limits are per
//! instance, so N gateways let a tenant through at N times the rate: size them per instance.

use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, clock::Clock as _};

use crate::{http::ApiError, metrics::Metrics};

pub struct TenantLimiter {
    limiter: DefaultKeyedRateLimiter<String>,
    /// What is limited, the metric's `scope` label: `webhooks` or `api`.
    scope: &'static str,
}

impl TenantLimiter {
    /// `None` (no limit) when `per_second` is 0.
    pub fn new(scope: &'static str, per_second: u32, burst: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
        Some(Self {
            limiter: governor::RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            scope,
        })
    }

    /// Takes one request from `tenant`'s bucket, or answers 429.
    pub fn check(&self, tenant: &str) -> Result<(), ApiError> {
        let key = tenant.to_owned();
        match self.limiter.check_key(&key) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
                Metrics::global()
                    .rate_limited_total
                    .with_label_values(&[self.scope])
                    .inc();
                tracing::warn!(tenant, scope = self.scope, "rate limited");
                // Tenants are few and known (keys are authenticated slugs), but drop idle ones
                // now and then so the map holds only the active.
                if self.limiter.len() > 10_000 {
                    self.limiter.retain_recent();
                }
                Err(ApiError::TooManyRequests {
                    detail: format!(
                        "tenant {tenant} is over its {} rate limit; retry after the time in Retry-After",
                        self.scope
                    ),
                    retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
                })
            }
        }
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
}
