//! HTTP plumbing shared by every service: the one error type (RFC 9457 problem JSON that never
//! leaks internals), request ids, request metrics, and the health and metrics routes.

use std::time::Instant;

use axum::{
    Json, Router,
    extract::{MatchedPath, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use tracing::Instrument as _;

use crate::{Context, metrics::Metrics};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The request id of the current request (from `X-Request-Id`, or generated).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The W3C trace context of a request: the caller's trace (or a new one) with this request's
/// own span id. Events the request appends carry it.
#[derive(Debug, Clone, Copy)]
pub struct Trace(pub copilot_events::TraceParent);

/// Who an authenticated request speaks for (a user id), set by the API's authorization layer.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

/// The headers of the events a request causes: its request id and trace context, and for a
/// command by someone, who and from which address (what the audit log records).
pub fn event_headers(extensions: &axum::http::Extensions) -> copilot_events::Headers {
    let actor = extensions.get::<Actor>().map(|a| a.0.clone());
    copilot_events::Headers {
        request_id: extensions.get::<RequestId>().map(|r| r.0.clone()),
        traceparent: extensions.get::<Trace>().map(|t| t.0.to_string()),
        source_addr: actor.as_ref().and_then(|_| {
            extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip().to_string())
        }),
        actor,
        ..copilot_events::Headers::default()
    }
}

/// Extractor of [`event_headers`] for handlers that append events.
pub struct EventOrigin(pub copilot_events::Headers);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for EventOrigin {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(event_headers(&parts.extensions)))
    }
}

/// Every error an HTTP handler can answer with. Each maps to one status and a problem body;
/// `Internal` logs its cause and tells the client only that something failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The command lost a race or does not fit the resource's current state.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{detail}")]
    TooManyRequests {
        detail: String,
        retry_after_secs: u64,
    },
    #[error("{detail}")]
    Unavailable {
        detail: String,
        retry_after_secs: u64,
    },
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

/// A store failure: `Unavailable` (503, retry in a second) when Postgres cannot be reached, so
/// clients and Alertmanager retry instead of reporting a bug; `Internal` otherwise.
impl From<copilot_store::StoreError> for ApiError {
    fn from(err: copilot_store::StoreError) -> Self {
        if err.is_unavailable() {
            tracing::warn!(error = %err, "database unavailable");
            Self::Unavailable {
                detail: "the database is unavailable; retry shortly".into(),
                retry_after_secs: 1,
            }
        } else {
            Self::Internal(err.into())
        }
    }
}

/// An append JetStream did not take: 409 for a lost race, 413 for an event too large, 503 with
/// `Retry-After` when the event store is unavailable, 500 for a stream that is missing.
impl From<crate::append::AppendError> for ApiError {
    fn from(err: crate::append::AppendError) -> Self {
        use crate::append::AppendError;
        match err {
            AppendError::Conflict => Self::Conflict(
                "it changed while this command was decided: reload it and decide again".into(),
            ),
            AppendError::TooLarge(_) => {
                Self::PayloadTooLarge("the event is larger than the event store accepts".into())
            }
            AppendError::NoStream(e) => Self::Internal(anyhow::anyhow!(e)),
            AppendError::Unavailable(e) => {
                tracing::warn!(error = %e, "event store unavailable");
                Self::Unavailable {
                    detail: "the event store did not take the command; retry".into(),
                    retry_after_secs: 1,
                }
            }
        }
    }
}

/// An RFC 9457 problem body, the shape of every error answer.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Problem {
    /// `urn:copilot:problem:<slug>`, stable per kind of error.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What went wrong, for a person; never internals.
    pub detail: String,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            Self::NotFound => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            Self::PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            Self::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            Self::Unprocessable(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-payload",
                "Invalid payload",
            ),
            Self::TooManyRequests { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
            ),
            Self::Unavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.parts();
        if let Self::Internal(err) = &self {
            tracing::error!(error = format!("{err:#}"), "request failed");
        }
        let body = Problem {
            kind: format!("urn:copilot:problem:{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
        };
        let mut response = (status, Json(body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Self::Unavailable {
            retry_after_secs, ..
        }
        | Self::TooManyRequests {
            retry_after_secs, ..
        } = self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Assigns the request id, runs the request inside a span carrying it, records the request
/// metrics under the route template, and echoes the id in `X-Request-Id`.
pub async fn observe(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let caller = req
        .headers()
        .get(TRACEPARENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(copilot_events::TraceParent::parse);
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = bounded_method(req.method());
    let span = tracing::info_span!(
        "http",
        request_id = %id,
        trace_id = tracing::field::Empty,
        %method,
        route = %route
    );
    // With spans exported, the request's own span is what events continue; otherwise a span id
    // of our own under the caller's trace (or a new trace).
    crate::telemetry::set_parent(&span, caller.as_ref());
    let trace = crate::telemetry::exported_traceparent(&span).unwrap_or_else(|| {
        caller
            .map(|caller| caller.child(id.as_bytes()))
            .unwrap_or_else(copilot_events::TraceParent::generate)
    });
    span.record("trace_id", tracing::field::display(trace.trace_id_hex()));
    req.extensions_mut().insert(Trace(trace));
    let metrics = Metrics::global();
    let in_flight = InFlight::enter(metrics);
    let started = Instant::now();
    let mut response = next.run(req).instrument(span).await;
    drop(in_flight);
    let status = response.status();
    let service = response
        .extensions()
        .get::<ServiceName>()
        .map_or("runtime", |s| s.0);
    metrics
        .http_request_duration_seconds
        .with_label_values(&[service, &route, method, status.as_str()])
        .observe(started.elapsed().as_secs_f64());
    metrics
        .http_requests_total
        .with_label_values(&[service, &route, method, status.as_str()])
        .inc();
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    if let Ok(value) = HeaderValue::from_str(&trace.to_string()) {
        response.headers_mut().insert(TRACEPARENT_HEADER, value);
    }
    response
}

const TRACEPARENT_HEADER: &str = "traceparent";

/// A request being answered; leaves the in-flight gauge when dropped, also when the client went
/// away and the request's future was dropped half way.
struct InFlight(&'static Metrics);

impl InFlight {
    fn enter(metrics: &'static Metrics) -> Self {
        metrics.http_requests_in_flight.inc();
        Self(metrics)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.http_requests_in_flight.dec();
    }
}

/// The method as a bounded label: anything but the standard methods is `other`.
fn bounded_method(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The service that answered, the metrics' `service` label: set by [`service_routes`], so the
/// label is the same in `copilot up` as when the services run apart; `runtime` for the shared
/// routes and fallbacks.
#[derive(Clone, Copy)]
struct ServiceName(&'static str);

/// Marks `router`'s routes as `service`'s, for the metrics.
pub fn service_routes(service: &'static str, router: Router) -> Router {
    router.route_layer(axum::middleware::map_response(
        move |mut response: axum::response::Response| async move {
            response.extensions_mut().insert(ServiceName(service));
            response
        },
    ))
}

/// Adds the shared layers and fallbacks to a service's routes: request ids and metrics on every
/// route (route layer so the template is known), problem JSON for unknown routes and methods.
pub fn finish(router: Router) -> Router {
    finish_with(router, true)
}

/// [`finish`], optionally without the instrumentation layer (request ids, trace context,
/// metrics): only for measuring what that layer costs (`copilot bench instrumentation`).
pub fn finish_with(router: Router, instrumented: bool) -> Router {
    let router = router
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .fallback(|| async { ApiError::NotFound });
    if instrumented {
        router.layer(axum::middleware::from_fn(observe))
    } else {
        router
    }
}

/// `/healthz` (the process is up), `/readyz` (NATS and Postgres answer), `/metrics`.
pub fn health_routes(ctx: Context) -> Router {
    Router::from(health_api().with_state(ctx))
}

/// The health routes, documented (see [`crate::openapi`]).
pub fn health_api() -> aide::axum::ApiRouter<Context> {
    use aide::axum::routing::get_with;
    aide::axum::ApiRouter::new()
        .api_route(
            "/healthz",
            get_with(healthz, |op| {
                op.id("healthz")
                    .summary("The process is up")
                    .description("Needs no credentials.")
                    .tag("health")
            }),
        )
        .api_route(
            "/readyz",
            get_with(readyz, |op| {
                op.id("readyz")
                    .summary("NATS and Postgres answer")
                    .description(
                        "Needs no credentials. A gateway-only process needs NATS alone: it \
                         reports Postgres but is ready without it.",
                    )
                    .tag("health")
                    .response_with::<200, Json<Readiness>, _>(|r| {
                        r.description("NATS and Postgres answer")
                    })
                    .response_with::<503, Json<Readiness>, _>(|r| {
                        r.description("NATS or Postgres does not answer; `checks` says which")
                    })
            }),
        )
        .api_route(
            "/metrics",
            get_with(metrics, |op| {
                op.id("metrics")
                    .summary("Prometheus metrics")
                    .description("Needs no credentials.")
                    .tag("health")
                    .response_with::<200, String, _>(|r| {
                        r.description("Prometheus text exposition format 0.0.4")
                    })
                    .with(|mut op| {
                        // The exposition format's own media type, as served.
                        if let Some(aide::openapi::ReferenceOr::Item(ok)) =
                            op.inner_mut().responses.as_mut().and_then(|r| {
                                r.responses.get_mut(&aide::openapi::StatusCode::Code(200))
                            })
                        {
                            let media = ok.content.drain(..).map(|(_, m)| m).next();
                            ok.content
                                .insert(METRICS_CONTENT_TYPE.into(), media.unwrap_or_default());
                        }
                        op
                    })
            }),
        )
}

const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /healthz`.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: &'static str,
}

async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

async fn metrics() -> ([(header::HeaderName, &'static str); 1], String) {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        Metrics::global().render(),
    )
}

/// `GET /readyz`: whether the process can serve, and which dependency it cannot reach.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Readiness {
    pub status: ReadyStatus,
    pub checks: ReadinessChecks,
}

#[derive(Serialize, schemars::JsonSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum ReadyStatus {
    Ready,
    Unavailable,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct ReadinessChecks {
    pub nats: Reachability,
    pub postgres: Reachability,
}

#[derive(Serialize, schemars::JsonSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum Reachability {
    Ok,
    Unreachable,
}

impl From<bool> for Reachability {
    fn from(ok: bool) -> Self {
        if ok { Self::Ok } else { Self::Unreachable }
    }
}

async fn readyz(State(ctx): State<Context>) -> (StatusCode, Json<Readiness>) {
    let nats_ok = ctx.nats.connection_state() == async_nats::connection::State::Connected;
    // A process that does not need Postgres (the gateway alone) reports it without waiting on
    // it and is ready with NATS alone.
    let pg_ok = if ctx.needs_postgres {
        ctx.store.ping().await.is_ok()
    } else {
        tokio::time::timeout(std::time::Duration::from_millis(500), ctx.store.ping())
            .await
            .is_ok_and(|r| r.is_ok())
    };
    let ready = nats_ok && (pg_ok || !ctx.needs_postgres);
    let body = Readiness {
        status: if ready {
            ReadyStatus::Ready
        } else {
            ReadyStatus::Unavailable
        },
        checks: ReadinessChecks {
            nats: nats_ok.into(),
            postgres: pg_ok.into(),
        },
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// Runs a worker (a service without routes of its own) beside `/healthz`, `/readyz` and
/// `/metrics` on `settings.http.listen`, so that every process can be scraped and probed.
pub async fn with_health<F>(
    ctx: Context,
    shutdown: tokio_util::sync::CancellationToken,
    work: F,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let addr = ctx.settings.http.listen;
    let timeouts = ServerTimeouts::from_settings(&ctx.settings);
    let health = serve(addr, finish(health_routes(ctx)), timeouts, shutdown);
    tokio::try_join!(work, health)?;
    Ok(())
}

/// How long a client may take to send a request: its headers, then its body. A client that
/// trickles bytes (slow loris) is cut off instead of holding a connection and a task forever.
#[derive(Debug, Clone, Copy)]
pub struct ServerTimeouts {
    pub header_read: std::time::Duration,
    pub body: std::time::Duration,
}

impl ServerTimeouts {
    pub fn from_settings(settings: &crate::Settings) -> Self {
        Self {
            header_read: std::time::Duration::from_millis(settings.http.header_timeout_ms),
            body: std::time::Duration::from_millis(settings.http.body_timeout_ms),
        }
    }
}

/// Reads a whole request body of at most `limit` bytes within `deadline` (zero: no deadline).
/// The server's body timeout is per frame, so a client trickling a byte at a time would get
/// past it; this bounds the whole body.
pub async fn read_body_within(
    body: axum::body::Body,
    limit: usize,
    deadline: std::time::Duration,
) -> Result<bytes::Bytes, ApiError> {
    let read = async {
        axum::body::to_bytes(body, limit).await.map_err(|e| {
            if std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            {
                ApiError::PayloadTooLarge(format!("the body exceeds the limit of {limit} bytes"))
            } else {
                ApiError::BadRequest("the request body could not be read".into())
            }
        })
    };
    if deadline.is_zero() {
        return read.await;
    }
    tokio::time::timeout(deadline, read)
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::BadRequest(format!(
                "the body did not arrive within {} ms",
                deadline.as_millis()
            )))
        })
}

/// Binds `addr` and serves `app` until `shutdown`.
pub async fn serve(
    addr: std::net::SocketAddr,
    app: Router,
    timeouts: ServerTimeouts,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("binding {addr} (is another copilot running? set COPILOT_LISTEN)")
    })?;
    serve_on(listener, app, timeouts, shutdown).await
}

/// Serves `app` on a bound listener until `shutdown`, then lets requests in flight finish.
/// Each request carries its peer address (`ConnectInfo`), for the audit log.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    app: Router,
    timeouts: ServerTimeouts,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt as _;
    tracing::info!(addr = %listener.local_addr()?, "http listening");
    // Zero turns a timeout off (benchmarks measure what each costs).
    let app = if timeouts.body.is_zero() {
        app
    } else {
        app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            timeouts.body,
        ))
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if !timeouts.header_read.is_zero() {
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(timeouts.header_read);
    }
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                app.clone().oneshot(req.map(axum::body::Body::new))
            });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }
    // Requests in flight get a moment to finish; then the connections are dropped.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), graceful.shutdown()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_that_cannot_reach_postgres_answers_503_with_retry_after() {
        let lost = copilot_store::StoreError::Database(sqlx::Error::PoolTimedOut);

        let response = ApiError::from(lost).into_response();

        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn any_other_store_failure_answers_500_without_its_cause() {
        let bug = copilot_store::StoreError::Database(sqlx::Error::ColumnNotFound("secret".into()));

        let error = ApiError::from(bug);

        assert!(matches!(error, ApiError::Internal(_)));
        assert_eq!(error.to_string(), "internal error");
        assert_eq!(
            error.into_response().status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
