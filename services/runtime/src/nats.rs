//! The NATS connection and the provisioning of streams and consumers from `nats/`.
//! The definitions are JSON in the JetStream API format, embedded at build time, so the binary
//! needs no files beside it and an operator can read exactly what is applied.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull, stream};
use copilot_events::subjects;

/// Stream definitions, `(name, JSON)`.
pub const STREAM_DEFINITIONS: [(&str, &str); 7] = [
    (
        subjects::SIGNALS,
        include_str!("../../../nats/streams/SIGNALS.json"),
    ),
    (
        subjects::TENANTS,
        include_str!("../../../nats/streams/TENANTS.json"),
    ),
    (
        subjects::INCIDENTS,
        include_str!("../../../nats/streams/INCIDENTS.json"),
    ),
    (
        subjects::QUERIES,
        include_str!("../../../nats/streams/QUERIES.json"),
    ),
    (
        subjects::TELEMETRY,
        include_str!("../../../nats/streams/TELEMETRY.json"),
    ),
    (
        subjects::TASKS,
        include_str!("../../../nats/streams/TASKS.json"),
    ),
    (
        subjects::DEADLETTERS,
        include_str!("../../../nats/streams/DEADLETTERS.json"),
    ),
];

/// Durable consumer of the signals projection.
pub const CONSUMER_PROJECTOR_SIGNALS: &str = "projector-signals";
/// Durable consumer of the tenants projection.
pub const CONSUMER_PROJECTOR_TENANTS: &str = "projector-tenants";
/// Durable consumer of the incidents projection.
pub const CONSUMER_PROJECTOR_INCIDENTS: &str = "projector-incidents";
/// Durable consumer of the correlator's signal decisions.
pub const CONSUMER_CORRELATOR_SIGNALS: &str = "correlator-signals";
/// Durable consumer through which the correlator follows lifecycle commands.
pub const CONSUMER_CORRELATOR_INCIDENTS: &str = "correlator-incidents";

/// Durable consumer of the usage projection.
pub const CONSUMER_PROJECTOR_TELEMETRY: &str = "projector-telemetry";
/// Durable consumer of the tasks projection.
pub const CONSUMER_PROJECTOR_TASKS: &str = "projector-tasks";
/// Durable consumer every hypothesis service instance shares.
pub const CONSUMER_HYPOTHESIS: &str = "hypothesis";
/// Durable consumer of the Slack notifier.
pub const CONSUMER_SLACK_NOTIFIER: &str = "slack-notifier";

/// Consumer definitions, `(stream, JSON)`.
pub const CONSUMER_DEFINITIONS: [(&str, &str); 10] = [
    (
        subjects::SIGNALS,
        include_str!("../../../nats/consumers/SIGNALS.projector-signals.json"),
    ),
    (
        subjects::TENANTS,
        include_str!("../../../nats/consumers/TENANTS.projector-tenants.json"),
    ),
    (
        subjects::INCIDENTS,
        include_str!("../../../nats/consumers/INCIDENTS.projector-incidents.json"),
    ),
    (
        subjects::SIGNALS,
        include_str!("../../../nats/consumers/SIGNALS.correlator-signals.json"),
    ),
    (
        subjects::INCIDENTS,
        include_str!("../../../nats/consumers/INCIDENTS.correlator-incidents.json"),
    ),
    (
        subjects::TELEMETRY,
        include_str!("../../../nats/consumers/TELEMETRY.projector-telemetry.json"),
    ),
    (
        subjects::INCIDENTS,
        include_str!("../../../nats/consumers/INCIDENTS.hypothesis.json"),
    ),
    (
        subjects::TENANTS,
        include_str!("../../../nats/consumers/TENANTS.tokens-kv.json"),
    ),
    (
        subjects::TASKS,
        include_str!("../../../nats/consumers/TASKS.projector-tasks.json"),
    ),
    (
        subjects::INCIDENTS,
        include_str!("../../../nats/consumers/INCIDENTS.slack-notifier.json"),
    ),
];

/// The messages of a durable consumer the streams' provisioning made, which several processes
/// may share (the hypothesis service's, the Slack notifier's), with heartbeats so a lost
/// connection is noticed.
pub async fn shared_messages(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
) -> anyhow::Result<pull::Stream> {
    let consumer = js
        .get_stream(stream)
        .await?
        .get_consumer::<pull::Config>(consumer)
        .await
        .map_err(|e| anyhow::anyhow!("consumer {consumer} (run `copilot streams apply`): {e}"))?;
    Ok(consumer
        .stream()
        .heartbeat(std::time::Duration::from_secs(5))
        .expires(std::time::Duration::from_secs(30))
        .messages()
        .await?)
}

/// The next message of a shared consumer's stream, skipping missed heartbeats; `None` once
/// `shutdown` is cancelled.
pub async fn next_shared(
    messages: &mut pull::Stream,
    shutdown: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Option<jetstream::Message>> {
    use futures::StreamExt as _;
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            m = messages.next() => m,
        };
        return match message {
            Some(Ok(m)) => Ok(Some(m)),
            Some(Err(err)) if err.kind() == pull::MessagesErrorKind::MissingHeartbeat => continue,
            Some(Err(err)) => Err(err.into()),
            None => anyhow::bail!("the consumer's message stream ended"),
        };
    }
}

/// The definition of a durable consumer by name.
pub fn consumer_definition(name: &str) -> Option<(&'static str, pull::Config)> {
    CONSUMER_DEFINITIONS.iter().find_map(|(stream, json)| {
        let config: pull::Config = serde_json::from_str(json).ok()?;
        (config.durable_name.as_deref() == Some(name)).then_some((*stream, config))
    })
}

/// The NATS headers every event carries besides its `Nats-Msg-Id`: its type, so a consumer can
/// route without parsing, and the request id that caused it, so one request can be followed.
pub fn event_headers(envelope: &copilot_events::Envelope) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(subjects::HEADER_EVENT_TYPE, envelope.event_type.as_str());
    if let Some(request_id) = &envelope.request_id {
        headers.insert(subjects::HEADER_REQUEST_ID, request_id.as_str());
    }
    if let Some(traceparent) = &envelope.traceparent {
        headers.insert(subjects::HEADER_TRACEPARENT, traceparent.as_str());
    }
    headers
}

/// A stream's state now (message count, first and last sequence).
pub async fn stream_state(js: &jetstream::Context, stream: &str) -> anyhow::Result<stream::State> {
    let mut stream = js.get_stream(stream).await?;
    Ok(stream.info().await?.state.clone())
}

/// Connects to NATS, failing within a few seconds with a clear message when nothing answers.
/// Once connected, the client reconnects forever in the background.
pub async fn connect(url: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name(format!("copilot-{name}"))
        .connection_timeout(Duration::from_secs(3))
        .max_reconnects(None)
        .client_capacity(65_536)
        .connect(url)
        .await
        .with_context(|| format!("connecting to NATS at {url} (is nats-server -js running?)"))
}

/// A JetStream context whose requests and awaited acks give up after `timeout`, so that a
/// caller can answer 503 instead of hanging when JetStream is away.
pub fn jetstream(client: async_nats::Client, timeout: Duration) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(timeout)
        .max_ack_inflight(16_384)
        .backpressure_on_inflight(true)
        .build(client)
}

/// What applying one definition did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Created,
    Updated,
    Unchanged,
}

/// Applies every stream and consumer definition and the webhook tokens bucket: creates what is
/// missing, updates what differs, leaves the rest. Safe to run at every start and from several
/// processes at once.
pub async fn provision(js: &jetstream::Context) -> anyhow::Result<Vec<(String, Applied)>> {
    let mut report = Vec::new();
    for (name, json) in STREAM_DEFINITIONS {
        let config: stream::Config = serde_json::from_str(json)
            .with_context(|| format!("nats/streams/{name}.json is not a stream config"))?;
        let applied = apply_stream(js, config)
            .await
            .with_context(|| format!("applying stream {name}"))?;
        report.push((format!("stream {name}"), applied));
    }
    for (stream_name, json) in CONSUMER_DEFINITIONS {
        let config: pull::Config = serde_json::from_str(json).with_context(|| {
            format!("a consumer definition of {stream_name} is not a pull consumer config")
        })?;
        let name = config
            .durable_name
            .clone()
            .context("consumer definitions must be durable")?;
        let applied = apply_consumer(js, stream_name, config)
            .await
            .with_context(|| format!("applying consumer {stream_name}/{name}"))?;
        report.push((format!("consumer {stream_name}/{name}"), applied));
    }
    let existed = js.get_key_value(subjects::TOKENS_BUCKET).await.is_ok();
    crate::tokens::bucket(js)
        .await
        .context("applying the webhook tokens bucket")?;
    let queue_existed = js.get_stream(subjects::TASK_QUEUE).await.is_ok();
    crate::taskqueue::provision(js).await?;
    report.push((
        format!("stream {}", subjects::TASK_QUEUE),
        if queue_existed {
            Applied::Unchanged
        } else {
            Applied::Created
        },
    ));
    report.push((
        format!("bucket {}", subjects::TOKENS_BUCKET),
        if existed {
            Applied::Unchanged
        } else {
            Applied::Created
        },
    ));
    Ok(report)
}

async fn apply_stream(js: &jetstream::Context, wanted: stream::Config) -> anyhow::Result<Applied> {
    match js.get_stream(&wanted.name).await {
        Ok(mut existing) => {
            let current = existing.info().await?.config.clone();
            if same_stream(&current, &wanted) {
                Ok(Applied::Unchanged)
            } else {
                js.update_stream(&wanted).await?;
                Ok(Applied::Updated)
            }
        }
        Err(err)
            if matches!(
                err.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref e)
                    if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            js.create_stream(wanted).await?;
            Ok(Applied::Created)
        }
        Err(err) => Err(err.into()),
    }
}

/// Compares the fields a definition sets; the server fills in others we do not manage.
fn same_stream(current: &stream::Config, wanted: &stream::Config) -> bool {
    current.subjects == wanted.subjects
        && current.description == wanted.description
        && current.duplicate_window == wanted.duplicate_window
        && current.max_age == wanted.max_age
        && current.max_bytes == wanted.max_bytes
        && current.max_messages == wanted.max_messages
        && current.max_message_size == wanted.max_message_size
        && current.allow_direct == wanted.allow_direct
        && current.deny_delete == wanted.deny_delete
        && current.deny_purge == wanted.deny_purge
        && current.discard == wanted.discard
}

async fn apply_consumer(
    js: &jetstream::Context,
    stream_name: &str,
    wanted: pull::Config,
) -> anyhow::Result<Applied> {
    let stream = js.get_stream(stream_name).await?;
    let name = wanted.durable_name.clone().unwrap_or_default();
    match stream.get_consumer::<pull::Config>(&name).await {
        Ok(mut existing) => {
            let current = existing.info().await?.config.clone();
            let same = current.description == wanted.description
                && current.ack_policy == wanted.ack_policy
                && current.ack_wait == wanted.ack_wait
                && current.max_deliver == wanted.max_deliver
                && current.max_ack_pending == wanted.max_ack_pending
                && current.filter_subject == wanted.filter_subject;
            if same {
                Ok(Applied::Unchanged)
            } else {
                // Recreated rather than updated: its start position may differ from the
                // definition's (a projector positions it at its checkpoint), and a running
                // projector repositions a consumer that disappears under it.
                stream.delete_consumer(&name).await?;
                stream.create_consumer(wanted).await?;
                Ok(Applied::Updated)
            }
        }
        Err(_) => {
            stream.create_consumer(wanted).await?;
            Ok(Applied::Created)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_definition_parses_and_uses_only_what_nats_server_2_9_understands() {
        for (name, json) in STREAM_DEFINITIONS {
            let config: stream::Config = serde_json::from_str(json).unwrap();
            assert_eq!(config.name, name);
            assert_eq!(config.storage, stream::StorageType::File);
            assert!(
                config.duplicate_window >= Duration::from_secs(120),
                "{name} needs a duplicate window"
            );
            assert_eq!(config.subjects, vec![subjects::all(name)]);
            let value: serde_json::Value = serde_json::from_str(json).unwrap();
            for newer in [
                "metadata",
                "first_seq",
                "subject_transform",
                "compression",
                "consumer_limits",
            ] {
                assert!(
                    value.get(newer).is_none(),
                    "{name} uses {newer}, which 2.9 ignores"
                );
            }
        }
        for (stream_name, json) in CONSUMER_DEFINITIONS {
            let config: pull::Config = serde_json::from_str(json).unwrap();
            let (_, stream_json) = STREAM_DEFINITIONS
                .iter()
                .find(|(n, _)| *n == stream_name)
                .unwrap();
            let stream: stream::Config = serde_json::from_str(stream_json).unwrap();
            assert!(
                stream.deny_delete && stream.deny_purge,
                "{stream_name} is projected: its sequences must have no holes"
            );
            assert!(config.durable_name.is_some());
            assert_eq!(config.filter_subject, subjects::all(stream_name));
            let value: serde_json::Value = serde_json::from_str(json).unwrap();
            assert!(
                value.get("filter_subjects").is_none(),
                "2.9 ignores filter_subjects"
            );
        }
    }
}
