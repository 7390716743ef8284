//! The gateway: turns Alertmanager and Grafana webhooks into `SignalReceived` events on
//! JetStream. It answers 202 only once JetStream has acknowledged every alert of the webhook,
//! and 503 with `Retry-After` when it cannot, so the sender retries and nothing acknowledged is
//! lost. Each event's `Nats-Msg-Id` is derived from what makes the notification unique, so a
//! retried webhook is dropped by the stream's duplicate window.

mod auth;
pub mod parse;

use std::sync::Arc;

use aide::{
    axum::{ApiRouter, routing::post_with},
    openapi::OpenApi,
    transform::TransformOperation,
};
use async_nats::{HeaderMap as NatsHeaders, jetstream::message::PublishMessage};
use axum::{
    Json, Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
};
use chrono::Utc;
use copilot_events::{Envelope, Headers, SignalReceived, SignalSource, subjects};
use copilot_runtime::{
    Context, Settings,
    append::AppendError,
    http::ApiError,
    metrics::Metrics,
    openapi::{OperationExt as _, WEBHOOK_BASIC, WEBHOOK_TOKEN},
    ratelimit::{AuthFailureLimiter, TenantLimiter},
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// Seconds a sender should wait before retrying when JetStream is unavailable.
const RETRY_AFTER_SECS: u64 = 5;
/// Appends whose acks are awaited together.
const ACK_WINDOW: usize = 256;
/// Room for the message headers (msg id, request id, event type) under the server's max payload.
const HEADER_ALLOWANCE: usize = 1024;

#[derive(Clone)]
pub struct Gateway {
    ctx: Context,
    tokens: Arc<auth::TokenView>,
    /// Stops the bucket watch once the last clone of the router is dropped.
    _watch: Arc<tokio_util::sync::DropGuard>,
    limiter: Option<Arc<TenantLimiter>>,
    auth_failures: Option<Arc<AuthFailureLimiter>>,
}

/// The answer to an accepted webhook.
#[derive(Debug, Serialize, schemars::JsonSchema)]
#[schemars(rename = "WebhookAccepted")]
pub struct Accepted {
    /// Alerts in the webhook, all durably appended.
    pub accepted: usize,
    /// How many of them JetStream already had (a retried or repeated notification).
    pub duplicates: usize,
}

/// The webhook routes, to be served alone or beside the other services.
pub fn router(ctx: Context) -> Router {
    let limiter = TenantLimiter::new(
        "webhooks",
        ctx.settings.limits.webhook_rate_per_sec,
        ctx.settings.limits.webhook_burst,
    )
    .map(Arc::new);
    let auth_failures =
        AuthFailureLimiter::new("webhooks", ctx.settings.limits.auth_failures_per_min)
            .map(Arc::new);
    let tokens = Arc::new(auth::TokenView::default());
    let stop_watch = CancellationToken::new();
    tokio::spawn({
        let (tokens, js, stop) = (tokens.clone(), ctx.js.clone(), stop_watch.clone());
        async move { tokens.watch(js, stop).await }
    });
    let gateway = Gateway {
        ctx,
        tokens,
        _watch: Arc::new(stop_watch.drop_guard()),
        limiter,
        auth_failures,
    };
    copilot_runtime::http::service_routes("gateway", Router::from(routes().with_state(gateway)))
}

/// The webhook routes, documented (see `copilot_runtime::openapi`).
fn routes() -> ApiRouter<Gateway> {
    ApiRouter::new()
        .api_route(
            "/v1/webhooks/alertmanager",
            post_with(alertmanager, |op| {
                webhook(op)
                    .id("alertmanagerWebhook")
                    .summary("Alertmanager's webhook_config")
                    .description(
                        "Payload versions 4 and 3. Appends one `SignalReceived` per alert and \
                         answers once JetStream acknowledged every one; a repeated notification's \
                         alerts are counted as duplicates. A 4xx appends nothing.",
                    )
            }),
        )
        .api_route(
            "/v1/webhooks/grafana",
            post_with(grafana, |op| {
                webhook(op)
                    .id("grafanaWebhook")
                    .summary("Grafana's webhook contact point")
                    .description(
                        "Payload version 1 (`values` an object or null; a relative `generatorURL` \
                         is joined with `externalURL`). Otherwise as the Alertmanager route.",
                    )
            }),
        )
}

/// What both webhook routes take and answer.
fn webhook(op: TransformOperation<'_>) -> TransformOperation<'_> {
    op.tag("webhooks")
        .secured(&[WEBHOOK_TOKEN, WEBHOOK_BASIC])
        .input::<Json<parse::Notification<'static>>>()
        .response_with::<202, Json<Accepted>, _>(|r| {
            r.description("Every alert is appended (or was already)")
        })
        .problem(400, "The body is not JSON")
        .problem(
            401,
            "No token, or a wrong or revoked one (also when Basic auth names another tenant than the token's)",
        )
        .problem(403, "The tenant is suspended")
        .problem(
            413,
            "The body is over the limit, or one alert makes an event larger than the NATS server takes",
        )
        .problem(415, "The body is not sent as JSON")
        .problem(
            422,
            "JSON that is not a notification of this route's versions; the detail says which alert and why",
        )
        .problem(
            429,
            "Over the tenant's webhook rate, or the sender's address has spent its failed authentications",
        )
        .problem(
            503,
            "JetStream did not take the alerts in time (`Retry-After: 5`), or the webhook tokens cannot be read from it (`Retry-After: 1`)",
        )
}

/// Adds the webhook routes to an OpenAPI document.
pub fn describe(doc: &mut OpenApi) {
    let _ = routes().finish_api(doc);
}

/// Runs the gateway alone: webhooks, health and metrics on `settings.http.listen`, and the
/// tokens projection (any number of processes may run it). Needs NATS alone: it neither
/// connects to Postgres to start nor fails readiness without it.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let ctx = Context::connect_nats_only(settings, "gateway").await?;
    let tokens = tokio::spawn(copilot_runtime::tokens::serve(
        ctx.js.clone(),
        shutdown.clone(),
    ));
    let timeouts = copilot_runtime::http::ServerTimeouts::from_settings(&ctx.settings);
    let doc = copilot_runtime::openapi::document(&[&describe]);
    let app = copilot_runtime::http::finish(
        router(ctx.clone())
            .merge(copilot_runtime::http::health_routes(ctx.clone()))
            .merge(copilot_runtime::openapi::serve(&doc)),
    );
    let served =
        copilot_runtime::http::serve(ctx.settings.http.listen, app, timeouts, shutdown).await;
    let _ = tokens.await;
    served
}

async fn alertmanager(
    State(gw): State<Gateway>,
    req: Request,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    gw.intake(SignalSource::Alertmanager, req).await
}

async fn grafana(
    State(gw): State<Gateway>,
    req: Request,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    gw.intake(SignalSource::Grafana, req).await
}

impl Gateway {
    async fn intake(
        &self,
        source: SignalSource,
        req: Request,
    ) -> Result<(StatusCode, Json<Accepted>), ApiError> {
        let (parts, body) = req.into_parts();
        let source_addr = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        let limited = self.auth_failures.as_deref().zip(source_addr);
        let tenant = self
            .tokens
            .authenticate(&self.ctx.js, &parts.headers, limited)
            .await?;
        if let Some(limiter) = &self.limiter {
            limiter.check(&tenant)?;
        }
        check_content_type(&parts.headers)?;
        let body = read_body(&parts.headers, body, &self.ctx.settings).await?;
        let signals = parse::parse(source, &body).map_err(|e| match e {
            parse::ParseError::Json(_) => ApiError::BadRequest(e.to_string()),
            _ => ApiError::Unprocessable(e.to_string()),
        })?;
        let headers = copilot_runtime::http::event_headers(&parts.extensions);
        let duplicates = self.append(&tenant, source, &signals, headers).await?;
        tracing::debug!(
            tenant,
            source = source.as_str(),
            alerts = signals.len(),
            duplicates,
            "webhook accepted"
        );
        Ok((
            StatusCode::ACCEPTED,
            Json(Accepted {
                accepted: signals.len(),
                duplicates,
            }),
        ))
    }

    /// Appends every signal and waits for every acknowledgement; returns how many were duplicates.
    async fn append(
        &self,
        tenant: &str,
        source: SignalSource,
        signals: &[SignalReceived],
        headers: Headers,
    ) -> Result<usize, ApiError> {
        let metrics = Metrics::global();
        let unavailable = |detail: String| {
            metrics
                .events_appended_total
                .with_label_values(&[subjects::SIGNALS, "error"])
                .inc_by(signals.len() as u64);
            ApiError::Unavailable {
                detail,
                retry_after_secs: RETRY_AFTER_SECS,
            }
        };
        if self.ctx.nats.connection_state() != async_nats::connection::State::Connected {
            tracing::warn!(tenant, "jetstream unreachable, refusing webhook");
            return Err(unavailable(
                "the event store is unreachable; retry later".into(),
            ));
        }
        let subject = subjects::signal(tenant, source.as_str());
        let now = Utc::now();
        let messages: Vec<(bytes::Bytes, NatsHeaders, String)> = signals
            .iter()
            .map(|signal| {
                let envelope = Envelope::new(tenant, signal, now, headers.clone());
                (
                    envelope.to_bytes().into(),
                    copilot_runtime::nats::event_headers(&envelope),
                    signal.message_id(tenant),
                )
            })
            .collect();
        // An event the server can never take is the sender's problem (413), not a reason to
        // have it retry forever; check them all before appending any.
        let max_payload = self.ctx.nats.server_info().max_payload;
        if let Some((index, m)) = messages
            .iter()
            .enumerate()
            .find(|(_, (payload, _, _))| payload.len() + HEADER_ALLOWANCE > max_payload)
        {
            return Err(ApiError::PayloadTooLarge(format!(
                "alert {index} makes an event of {} bytes; the event store takes at most {max_payload}",
                m.0.len()
            )));
        }
        // Acks are awaited a window at a time, so one huge webhook cannot hold every in-flight
        // permit of the connection; the whole append gives up with 503 at the publish timeout.
        let deadline = tokio::time::Instant::now() + self.ctx.settings.nats.publish_timeout();
        let mut duplicates = 0;
        let mut pending = messages.into_iter().peekable();
        while pending.peek().is_some() {
            let window: Vec<_> = pending.by_ref().take(ACK_WINDOW).collect();
            let appended =
                tokio::time::timeout_at(deadline, self.append_window(&subject, window)).await;
            match appended {
                Ok(Ok(window_duplicates)) => duplicates += window_duplicates,
                Ok(Err(error)) => {
                    tracing::warn!(tenant, %error, "webhook not appended");
                    return Err(unavailable(
                        "the event store did not acknowledge the alerts; retry later".into(),
                    ));
                }
                Err(_) => {
                    tracing::warn!(tenant, "webhook append timed out");
                    return Err(unavailable(
                        "the event store did not acknowledge the alerts in time; retry later"
                            .into(),
                    ));
                }
            }
        }
        Ok(duplicates)
    }

    /// Publishes one window of messages and waits for all their acks; returns the duplicates.
    async fn append_window(
        &self,
        subject: &str,
        window: Vec<(bytes::Bytes, NatsHeaders, String)>,
    ) -> Result<usize, AppendError> {
        let messages = window
            .into_iter()
            .map(|(payload, headers, id)| {
                let message = PublishMessage::build()
                    .payload(payload)
                    .headers(headers)
                    .message_id(id);
                (subject.to_owned(), message)
            })
            .collect();
        let acks = copilot_runtime::append::append_all(&self.ctx.js, messages).await?;
        Ok(acks.iter().filter(|ack| ack.duplicate).count())
    }
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "expected Content-Type application/json, got {:?}",
            content_type
        )))
    }
}

async fn read_body(
    headers: &HeaderMap,
    body: Body,
    settings: &Settings,
) -> Result<bytes::Bytes, ApiError> {
    let limit = settings.http.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge(format!(
            "the body exceeds the limit of {limit} bytes"
        )));
    }
    let deadline = copilot_runtime::http::ServerTimeouts::from_settings(settings).body;
    copilot_runtime::http::read_body_within(body, limit, deadline).await
}
