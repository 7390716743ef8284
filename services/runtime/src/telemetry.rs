//! Logging and tracing. Logs are human-readable text when standard error is a terminal and JSON
//! lines otherwise (one object per event, with the span's fields such as the request and trace
//! ids), unless a format is asked for; `RUST_LOG` filters as usual. When
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are also exported over OTLP/HTTP (protobuf),
//! parented on the W3C trace context that travels with every event; when it is not, no exporter,
//! layer or thread exists.

use std::{io::IsTerminal as _, sync::OnceLock};

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{EnvFilter, Layer as _, fmt, prelude::*};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text for a person at a terminal, JSON lines for anything else (a file, a pipe, a
    /// collector), decided by where standard error goes.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

impl LogFormat {
    /// The format logs are written in when standard error is (`terminal`) or is not a terminal:
    /// `Auto` picks text or JSON, an explicit format stays.
    pub fn resolve(self, terminal: bool) -> Self {
        match self {
            Self::Auto if terminal => Self::Text,
            Self::Auto => Self::Json,
            explicit => explicit,
        }
    }
}

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether spans are exported (an OTLP endpoint was configured at start).
pub fn exporting() -> bool {
    PROVIDER.get().is_some()
}

fn otlp_layer<S>() -> Option<impl tracing_subscriber::Layer<S>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok()?;
    if endpoint.trim().is_empty() {
        return None;
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(exporter) => exporter,
        Err(err) => {
            eprintln!("warning: OTLP export disabled: {err}");
            return None;
        }
    };
    // `OTEL_SERVICE_NAME` (read by the default resource) names separate services apart.
    let resource = if std::env::var_os("OTEL_SERVICE_NAME").is_some() {
        opentelemetry_sdk::Resource::builder().build()
    } else {
        opentelemetry_sdk::Resource::builder()
            .with_service_name("copilot")
            .build()
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("copilot");
    PROVIDER.set(provider).ok()?;
    Some(tracing_opentelemetry::layer().with_tracer(tracer))
}

/// Installs the global subscriber, writing to standard error. Calling it twice is harmless (the
/// second call does nothing). `level` is the default when `RUST_LOG` is unset.
pub fn init(format: LogFormat, level: &str) {
    let logs = match format.resolve(std::io::stderr().is_terminal()) {
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        // `Auto` was resolved above.
        LogFormat::Text | LogFormat::Auto => fmt::layer().with_writer(std::io::stderr).boxed(),
    };
    install(logs, level);
}

/// Installs the global subscriber for tests: text through the test harness's output capture, so
/// a passing test's logs are kept out of the way and a failing test's are shown with it. Every
/// test of a process calls it; the first call wins. `level` as for [`init`].
pub fn init_for_tests(level: &str) {
    install(fmt::layer().with_test_writer().boxed(), level);
}

fn install(
    logs: Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>,
    level: &str,
) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},sqlx=warn,async_nats=warn")));
    let registry = tracing_subscriber::registry().with(logs).with(filter);
    let _ = match otlp_layer() {
        Some(otlp) => registry.with(otlp).try_init(),
        None => registry.try_init(),
    };
}

/// Flushes and stops the span exporter, if there is one.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.force_flush();
        let _ = provider.shutdown();
    }
}

/// The trace context of `span` as exported, when spans are exported: what the events a span
/// causes should carry, so that the exported spans link up.
pub fn exported_traceparent(span: &tracing::Span) -> Option<copilot_events::TraceParent> {
    if !exporting() {
        return None;
    }
    let context = span.context();
    let otel = context.span();
    let sc = otel.span_context();
    sc.is_valid().then(|| copilot_events::TraceParent {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        flags: sc.trace_flags().to_u8(),
    })
}

/// Makes `span` a child of the remote span a `traceparent` names, when spans are exported.
pub fn set_parent(span: &tracing::Span, traceparent: Option<&copilot_events::TraceParent>) {
    if !exporting() {
        return;
    }
    if let Some(tp) = traceparent {
        let remote = SpanContext::new(
            TraceId::from_bytes(tp.trace_id),
            SpanId::from_bytes(tp.span_id),
            TraceFlags::new(tp.flags),
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
}

#[cfg(test)]
mod tests {
    use super::LogFormat;

    #[test]
    fn auto_is_text_at_a_terminal_and_json_elsewhere_and_an_explicit_format_stays() {
        assert_eq!(LogFormat::Auto.resolve(true), LogFormat::Text);
        assert_eq!(LogFormat::Auto.resolve(false), LogFormat::Json);
        for terminal in [true, false] {
            assert_eq!(LogFormat::Json.resolve(terminal), LogFormat::Json);
            assert_eq!(LogFormat::Text.resolve(terminal), LogFormat::Text);
        }
    }
}
