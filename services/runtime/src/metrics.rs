//! Prometheus metrics of the process. One registry per process: every service run by
//! `copilot up` reports into it, and each service's `/metrics` shows all of it. Label sets are
//! bounded: route templates, not paths; streams and projections, not tenants.

use std::sync::OnceLock;

use prometheus::{
    CounterVec, Encoder as _, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub http_requests_total: IntCounterVec,
    pub http_request_duration_seconds: HistogramVec,
    pub http_requests_in_flight: IntGauge,
    /// Appends to JetStream by stream and outcome (`ok`, `duplicate`, `error`).
    pub events_appended_total: IntCounterVec,
    /// Events applied to read models, by projection.
    pub events_projected_total: IntCounterVec,
    /// Events parked as dead letters, by projection.
    pub events_dead_lettered_total: IntCounterVec,
    /// Requests refused with 429, by scope (`webhooks`, `api`).
    pub rate_limited_total: IntCounterVec,
    /// Failed authentications, by scope (`webhooks`, `api`).
    pub auth_failures_total: IntCounterVec,
    /// Connections to tenant-given URLs refused by the egress policy.
    pub egress_refused_total: prometheus::IntCounter,
    /// Messages the consumer has not yet delivered, as of the last delivery (JetStream's `pending`).
    pub consumer_pending_messages: IntGaugeVec,
    /// Stream sequence of the last event a projection committed.
    pub projection_checkpoint_sequence: IntGaugeVec,
    /// Messages delivered to a consumer and not yet acknowledged.
    pub consumer_ack_pending_messages: IntGaugeVec,
    /// When the newest event a projection applied happened (Unix seconds).
    pub projection_last_event_timestamp_seconds: GaugeVec,
    /// Now minus the newest applied event's time while events wait; 0 when caught up.
    pub projection_lag_seconds: GaugeVec,
    /// Decisions the correlator appended, by event type.
    pub correlator_decisions_total: IntCounterVec,
    /// Model calls by engine and outcome.
    pub model_calls_total: IntCounterVec,
    /// Model tokens by engine and kind (prompt, completion).
    pub model_tokens_total: IntCounterVec,
    pub model_call_duration_seconds: HistogramVec,
    /// Estimated cost of model calls in USD, by engine.
    pub model_cost_usd_total: CounterVec,
    /// Proposals appended, by engine.
    pub hypotheses_proposed_total: IntCounterVec,
    /// Hypotheses dropped for citing evidence they were not given, by engine.
    pub hypothesis_citations_dropped_total: IntCounterVec,
    /// Slack Web API calls by method and outcome (`ok`, `ratelimited`, or Slack's error).
    pub slack_calls_total: IntCounterVec,
}

impl Metrics {
    /// The process-wide metrics.
    pub fn global() -> &'static Metrics {
        static METRICS: OnceLock<Metrics> = OnceLock::new();
        METRICS.get_or_init(Metrics::new)
    }

    fn new() -> Self {
        let registry = Registry::new();
        let http_requests_total = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests answered, by service, route template, method and status",
            ),
            &["service", "route", "method", "status"],
        )
        .unwrap();
        let http_request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time to answer an HTTP request",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["service", "route", "method", "status"],
        )
        .unwrap();
        let http_requests_in_flight = IntGauge::new(
            "http_requests_in_flight",
            "HTTP requests being answered now",
        )
        .unwrap();
        let events_appended_total = IntCounterVec::new(
            Opts::new(
                "events_appended_total",
                "Events appended to JetStream, by stream and outcome",
            ),
            &["stream", "outcome"],
        )
        .unwrap();
        let events_projected_total = IntCounterVec::new(
            Opts::new(
                "events_projected_total",
                "Events applied to Postgres read models, by projection",
            ),
            &["projection"],
        )
        .unwrap();
        let events_dead_lettered_total = IntCounterVec::new(
            Opts::new(
                "events_dead_lettered_total",
                "Events a projection could not apply and parked",
            ),
            &["projection"],
        )
        .unwrap();
        let rate_limited_total = IntCounterVec::new(
            Opts::new(
                "rate_limited_total",
                "Requests refused because their tenant was over its rate limit",
            ),
            &["scope"],
        )
        .unwrap();
        let auth_failures_total = IntCounterVec::new(
            Opts::new(
                "auth_failures_total",
                "Requests refused because their credentials were missing, wrong or revoked",
            ),
            &["scope"],
        )
        .unwrap();
        let egress_refused_total = prometheus::IntCounter::new(
            "egress_refused_total",
            "Connections to tenant-given URLs refused because they reach an internal address",
        )
        .unwrap();
        let consumer_pending_messages = IntGaugeVec::new(
            Opts::new(
                "consumer_pending_messages",
                "Messages a consumer has yet to receive (its lag)",
            ),
            &["consumer"],
        )
        .unwrap();
        let projection_checkpoint_sequence = IntGaugeVec::new(
            Opts::new(
                "projection_checkpoint_sequence",
                "Stream sequence a projection has committed up to",
            ),
            &["projection"],
        )
        .unwrap();
        let consumer_ack_pending_messages = IntGaugeVec::new(
            Opts::new(
                "consumer_ack_pending_messages",
                "Messages delivered to a consumer and not yet acknowledged",
            ),
            &["consumer"],
        )
        .unwrap();
        let projection_last_event_timestamp_seconds = GaugeVec::new(
            Opts::new(
                "projection_last_event_timestamp_seconds",
                "When the newest event a projection applied happened",
            ),
            &["projection"],
        )
        .unwrap();
        let projection_lag_seconds = GaugeVec::new(
            Opts::new(
                "projection_lag_seconds",
                "Now minus the newest applied event's time while events wait (0 when caught up)",
            ),
            &["projection"],
        )
        .unwrap();
        let correlator_decisions_total = IntCounterVec::new(
            Opts::new(
                "correlator_decisions_total",
                "Decisions the correlator appended, by kind (event type)",
            ),
            &["kind"],
        )
        .unwrap();
        let model_calls_total = IntCounterVec::new(
            Opts::new("model_calls_total", "Model calls, by engine and outcome"),
            &["engine", "outcome"],
        )
        .unwrap();
        let model_tokens_total = IntCounterVec::new(
            Opts::new("model_tokens_total", "Model tokens, by engine and kind"),
            &["engine", "kind"],
        )
        .unwrap();
        let model_call_duration_seconds = HistogramVec::new(
            HistogramOpts::new("model_call_duration_seconds", "Time a model call took")
                .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            &["engine"],
        )
        .unwrap();
        let model_cost_usd_total = CounterVec::new(
            Opts::new(
                "model_cost_usd_total",
                "Estimated cost of model calls in USD (from the configured prices), by engine",
            ),
            &["engine"],
        )
        .unwrap();
        let hypotheses_proposed_total = IntCounterVec::new(
            Opts::new(
                "hypotheses_proposed_total",
                "Hypothesis proposals appended, by engine",
            ),
            &["engine"],
        )
        .unwrap();
        let hypothesis_citations_dropped_total = IntCounterVec::new(
            Opts::new(
                "hypothesis_citations_dropped_total",
                "Hypotheses dropped for citing evidence they were not given, by engine",
            ),
            &["engine"],
        )
        .unwrap();
        let slack_calls_total = IntCounterVec::new(
            Opts::new(
                "slack_calls_total",
                "Slack Web API calls by method and outcome (ok, ratelimited, or Slack's error such as invalid_auth or channel_not_found)",
            ),
            &["method", "outcome"],
        )
        .unwrap();
        for collector in [
            Box::new(http_requests_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_request_duration_seconds.clone()),
            Box::new(http_requests_in_flight.clone()),
            Box::new(events_appended_total.clone()),
            Box::new(events_projected_total.clone()),
            Box::new(events_dead_lettered_total.clone()),
            Box::new(rate_limited_total.clone()),
            Box::new(auth_failures_total.clone()),
            Box::new(egress_refused_total.clone()),
            Box::new(consumer_pending_messages.clone()),
            Box::new(projection_checkpoint_sequence.clone()),
            Box::new(consumer_ack_pending_messages.clone()),
            Box::new(projection_last_event_timestamp_seconds.clone()),
            Box::new(projection_lag_seconds.clone()),
            Box::new(correlator_decisions_total.clone()),
            Box::new(model_calls_total.clone()),
            Box::new(model_tokens_total.clone()),
            Box::new(model_call_duration_seconds.clone()),
            Box::new(model_cost_usd_total.clone()),
            Box::new(hypotheses_proposed_total.clone()),
            Box::new(hypothesis_citations_dropped_total.clone()),
            Box::new(slack_calls_total.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Self {
            registry,
            http_requests_total,
            http_request_duration_seconds,
            http_requests_in_flight,
            events_appended_total,
            events_projected_total,
            events_dead_lettered_total,
            rate_limited_total,
            auth_failures_total,
            egress_refused_total,
            consumer_pending_messages,
            projection_checkpoint_sequence,
            consumer_ack_pending_messages,
            projection_last_event_timestamp_seconds,
            projection_lag_seconds,
            correlator_decisions_total,
            model_calls_total,
            model_tokens_total,
            model_call_duration_seconds,
            model_cost_usd_total,
            hypotheses_proposed_total,
            hypothesis_citations_dropped_total,
            slack_calls_total,
        }
    }

    /// Counts one append's outcome on the stream of `subject`.
    pub fn appended<E>(
        &self,
        subject: &str,
        ack: &Result<async_nats::jetstream::publish::PublishAck, E>,
    ) {
        let stream = copilot_events::subjects::stream_of(subject).unwrap_or("other");
        let outcome = match ack {
            Ok(ack) if ack.duplicate => "duplicate",
            Ok(_) => "ok",
            Err(_) => "error",
        };
        self.events_appended_total
            .with_label_values(&[stream, outcome])
            .inc();
    }

    /// Registers a collector an area keeps in its own module (see [`crate::taskqueue`]'s
    /// metrics), so it is rendered with the rest.
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) {
        self.registry
            .register(collector)
            .expect("metric names are unique");
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding metrics to memory cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}
