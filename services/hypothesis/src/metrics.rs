//! Metric evidence from Prometheus: a configurable set of PromQL templates per service (error
//! ratio, latency quantile, saturation, restarts, rollouts), run as range queries around the
//! incident's onset and summarised to numbers and a trend before they reach any engine.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::evidence::MetricSummary;

/// One PromQL template; `{service}` is replaced by the service's name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryTemplate {
    /// `error_ratio`, `latency_p99`, `saturation`, `restarts`, `rollouts` are understood by the
    /// built-in engine; other names are evidence for the model.
    pub name: String,
    pub query: String,
}

/// Templates for services instrumented the common way (HTTP RED metrics, cAdvisor,
/// kube-state-metrics). Override with a JSON file (`COPILOT_PROMETHEUS_QUERIES`).
pub fn default_templates() -> Vec<QueryTemplate> {
    let t = |name: &str, query: &str| QueryTemplate {
        name: name.into(),
        query: query.into(),
    };
    vec![
        t(
            "error_ratio",
            r#"sum(rate(http_requests_total{service="{service}",code=~"5.."}[5m])) / sum(rate(http_requests_total{service="{service}"}[5m]))"#,
        ),
        t(
            "latency_p99",
            r#"histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{service="{service}"}[5m])))"#,
        ),
        t(
            "saturation",
            r#"sum(rate(container_cpu_cfs_throttled_periods_total{container="{service}"}[5m])) / sum(rate(container_cpu_cfs_periods_total{container="{service}"}[5m]))"#,
        ),
        t(
            "restarts",
            r#"sum(increase(kube_pod_container_status_restarts_total{container="{service}"}[15m]))"#,
        ),
        t(
            "rollouts",
            r#"sum(changes(kube_deployment_status_observed_generation{deployment="{service}"}[1h]))"#,
        ),
    ]
}

/// Reads templates from a JSON file (an array of `{"name", "query"}`).
pub fn templates_from_file(path: &std::path::Path) -> anyhow::Result<Vec<QueryTemplate>> {
    let text = std::fs::read_to_string(path)?;
    let templates: Vec<QueryTemplate> = serde_json::from_str(&text)?;
    anyhow::ensure!(
        templates
            .iter()
            .all(|t| !t.name.is_empty() && !t.query.is_empty()),
        "every query template needs a name and a query"
    );
    Ok(templates)
}

/// A service name as it may appear inside a PromQL string literal.
fn safe(service: &str) -> bool {
    !service.is_empty()
        && service
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// Summarises one series: first, last, min, max and when it first rose by a fifth.
pub fn summarise(
    name: &str,
    service: &str,
    query: &str,
    samples: &[(f64, f64)],
) -> Option<MetricSummary> {
    let values: Vec<(f64, f64)> = samples
        .iter()
        .copied()
        .filter(|(_, v)| v.is_finite())
        .collect();
    let (first, last) = (values.first()?.1, values.last()?.1);
    let min = values.iter().map(|(_, v)| *v).fold(f64::INFINITY, f64::min);
    let max = values
        .iter()
        .map(|(_, v)| *v)
        .fold(f64::NEG_INFINITY, f64::max);
    let threshold = if first.abs() > f64::EPSILON {
        first * 1.2
    } else {
        f64::EPSILON
    };
    let rose_at = values
        .iter()
        .find(|(_, v)| *v > threshold)
        .and_then(|(t, _)| DateTime::from_timestamp_millis((t * 1000.0) as i64));
    Some(MetricSummary {
        name: name.into(),
        service: service.into(),
        query: query.into(),
        first,
        last,
        min,
        max,
        rose_at,
    })
}

/// Runs every template for every service over `[start, end]`; a query that fails or returns
/// nothing is skipped (and logged), never fatal.
pub async fn fetch(
    url: &str,
    egress: Option<&copilot_runtime::egress::EgressPolicy>,
    templates: &[QueryTemplate],
    services: &[String],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    timeout: Duration,
) -> Vec<MetricSummary> {
    let builder = match egress {
        Some(policy) => {
            if let Err(err) = policy.check_url(url) {
                copilot_runtime::metrics::Metrics::global()
                    .egress_refused_total
                    .inc();
                tracing::warn!(error = %err, "the tenant's Prometheus URL is refused; no metric evidence");
                return Vec::new();
            }
            policy.client_builder()
        }
        None => reqwest::Client::builder(),
    };
    let client = match builder.timeout(timeout).build() {
        Ok(http) => match prometheus_http_query::Client::from(http, url) {
            Ok(client) => client,
            Err(err) => {
                tracing::warn!(url, error = %err, "the Prometheus URL is not usable");
                return Vec::new();
            }
        },
        Err(_) => return Vec::new(),
    };
    let span = (end - start).num_seconds().max(60);
    let step = (span as f64 / 60.0).max(1.0);
    let mut out = Vec::new();
    for service in services.iter().filter(|s| safe(s)) {
        for template in templates {
            let query = template.query.replace("{service}", service);
            let result = client
                .query_range(&query, start.timestamp(), end.timestamp(), step)
                .get()
                .await;
            let data = match result {
                Ok(result) => result.into_inner().0,
                Err(err) => {
                    if std::error::Error::source(&err)
                        .is_some_and(copilot_runtime::egress::is_refusal)
                    {
                        tracing::warn!(
                            "the tenant's Prometheus resolves to an internal address; no metric evidence"
                        );
                        return out;
                    }
                    tracing::debug!(query, error = %err, "metric query failed");
                    continue;
                }
            };
            let Some(series) = data.as_matrix().and_then(|m| m.first()) else {
                continue;
            };
            let samples: Vec<(f64, f64)> = series
                .samples()
                .iter()
                .map(|s| (s.timestamp(), s.value()))
                .collect();
            if let Some(summary) = summarise(&template.name, service, &query, &samples) {
                out.push(summary);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_is_summarised_to_its_range_and_when_it_rose() {
        let samples = [
            (1000.0, 0.01),
            (1060.0, 0.011),
            (1120.0, 0.05),
            (1180.0, 0.2),
        ];

        let s = summarise("error_ratio", "api", "q", &samples).unwrap();

        assert_eq!((s.first, s.last, s.min, s.max), (0.01, 0.2, 0.01, 0.2));
        assert_eq!(s.rose_at.unwrap().timestamp(), 1120);
        assert!(s.trend() > 10.0);
        assert!(summarise("x", "api", "q", &[]).is_none());
    }

    #[test]
    fn service_names_that_could_break_out_of_a_promql_string_are_not_queried() {
        assert!(safe("checkout-v2"));
        assert!(!safe(r#"x"} or vector(1) #"#));
        assert!(!safe(""));
    }
}
