//! Stream names and subject builders. No other crate spells a subject or a stream name.

/// Alerts from every source, one message per alert instance notification.
pub const SIGNALS: &str = "SIGNALS";
/// Tenant administration: creation, tokens, settings.
pub const TENANTS: &str = "TENANTS";
/// Incident decisions and lifecycle commands, one subject per incident.
pub const INCIDENTS: &str = "INCIDENTS";
/// Analyst questions and replays.
pub const QUERIES: &str = "QUERIES";
/// Usage and pipeline telemetry (model calls, costs).
pub const TELEMETRY: &str = "TELEMETRY";
/// Background tasks, one subject per task.
pub const TASKS: &str = "TASKS";
/// Events a consumer could not apply, parked with the reason.
pub const DEADLETTERS: &str = "DEADLETTERS";

/// Every stream the system defines, in the order they are provisioned.
pub const ALL_STREAMS: [&str; 7] = [
    SIGNALS,
    TENANTS,
    INCIDENTS,
    QUERIES,
    TELEMETRY,
    TASKS,
    DEADLETTERS,
];

/// The stream a subject belongs to (its first token, upper-cased), if it is one of ours.
pub fn stream_of(subject: &str) -> Option<&'static str> {
    let first = subject.split('.').next()?;
    ALL_STREAMS
        .into_iter()
        .find(|stream| stream.eq_ignore_ascii_case(first))
}

/// Filter matching every subject of a stream (`signals.>`).
pub fn all(stream: &str) -> String {
    format!("{}.>", stream.to_ascii_lowercase())
}

/// `signals.<tenant>.<source>`
pub fn signal(tenant: &str, source: &str) -> String {
    format!("signals.{tenant}.{source}")
}

/// `tenants.<tenant>.tenant`: the tenant aggregate (creation, suspension, settings).
pub fn tenant(tenant: &str) -> String {
    format!("tenants.{tenant}.tenant")
}

/// `tenants.<tenant>.worker_tokens`: worker tokens issued and revoked.
pub fn tenant_worker_tokens(tenant: &str) -> String {
    format!("tenants.{tenant}.worker_tokens")
}

/// `tenants.<tenant>.tokens`: webhook tokens issued and revoked.
pub fn tenant_tokens(tenant: &str) -> String {
    format!("tenants.{tenant}.tokens")
}

/// `tenants.<tenant>.users`: people of the tenant and their roles.
pub fn tenant_users(tenant: &str) -> String {
    format!("tenants.{tenant}.users")
}

/// `tenants.<tenant>.secrets`: tenant secrets stored and removed (names, versions and
/// fingerprints only; values never travel in events).
pub fn tenant_secrets(tenant: &str) -> String {
    format!("tenants.{tenant}.secrets")
}

/// `incidents.<tenant>.<incident>`: every event of one incident, decisions and commands alike.
pub fn incident(tenant: &str, incident: uuid::Uuid) -> String {
    format!("incidents.{tenant}.{incident}")
}

/// `telemetry.<tenant>.<kind>`, e.g. `telemetry.acme.model_calls`.
pub fn telemetry(tenant: &str, kind: &str) -> String {
    format!("telemetry.{tenant}.{kind}")
}

/// `deadletters.<tenant>.<consumer>`: where a consumer parks an event it cannot apply. The tenant is
/// `_unknown` when the event was too broken to say.
pub fn dead_letter(tenant: &str, consumer: &str) -> String {
    format!("deadletters.{tenant}.{consumer}")
}

/// The JetStream key-value bucket the gateway authenticates webhooks from: webhook token hashes
/// to their tenant and revocation, tenants to their suspension, written from TENANTS by the
/// tokens projection (see `copilot_runtime::tokens`).
pub const TOKENS_BUCKET: &str = "WEBHOOK_TOKENS";

/// Key of the tokens projection's checkpoint in [`TOKENS_BUCKET`]: the last TENANTS sequence
/// applied. No token hash or tenant slug can spell it.
pub const TOKENS_CHECKPOINT_KEY: &str = "_checkpoint";

/// `token.<hash>`: a webhook token by the hex blake3 hash of its value.
pub fn token_key(token_hash: &str) -> String {
    format!("token.{token_hash}")
}

/// `token-id.<uuid>`: which hash a token id has (a revocation names the id).
pub fn token_id_key(token_id: uuid::Uuid) -> String {
    format!("token-id.{token_id}")
}

/// `tenant.<slug>`: whether a tenant is suspended.
pub fn tenant_status_key(tenant: &str) -> String {
    format!("tenant.{tenant}")
}

/// Tenant to use in a subject when a broken event does not name one.
pub const UNKNOWN_TENANT: &str = "_unknown";

/// NATS header carrying the HTTP request id that caused an event.
pub const HEADER_REQUEST_ID: &str = "X-Request-Id";
/// NATS header carrying the W3C trace context of the event.
pub const HEADER_TRACEPARENT: &str = "traceparent";
/// NATS header carrying the event type, so a consumer can route without parsing the body.
pub const HEADER_EVENT_TYPE: &str = "Copilot-Event-Type";
/// NATS header on a dead letter: why it was parked.
pub const HEADER_DEAD_LETTER_REASON: &str = "Copilot-Dead-Letter-Reason";
/// NATS header on a dead letter: the stream and sequence it came from.
pub const HEADER_DEAD_LETTER_ORIGIN: &str = "Copilot-Dead-Letter-Origin";

/// `tasks.<tenant>.task.<id>`: every event of one task.
pub fn task(tenant: &str, task: uuid::Uuid) -> String {
    format!("tasks.{tenant}.task.{task}")
}

/// `tasks.<tenant>.task.<id>.log`: progress and log lines of one task, apart from its
/// lifecycle so that deciding on a task reads only its lifecycle.
pub fn task_log(tenant: &str, task: uuid::Uuid) -> String {
    format!("tasks.{tenant}.task.{task}.log")
}

/// `tasks.<tenant>.worker.<id>`: every event of one worker.
pub fn worker(tenant: &str, worker: uuid::Uuid) -> String {
    format!("tasks.{tenant}.worker.{worker}")
}

/// The work-queue stream: what is ready to run, one message per queued attempt. Not an event
/// stream (its messages are task ids, removed when acked), so it is not in [`ALL_STREAMS`].
pub const TASK_QUEUE: &str = "TASKQUEUE";

/// `taskqueue.<tenant>.p<priority>.<kind>`: a queued attempt, by priority and kind, so a worker's
/// consumer filters on its kinds and is served the highest priority first.
pub fn task_queue(tenant: &str, priority: u8, kind: &str) -> String {
    format!("taskqueue.{tenant}.p{priority}.{kind}")
}

/// `taskqueue.<tenant>.p<priority>.>`: every queued attempt of a tenant at one priority.
pub fn task_queue_priority(tenant: &str, priority: u8) -> String {
    format!("taskqueue.{tenant}.p{priority}.>")
}

/// `taskqueue.<tenant>.>`: every queued attempt of a tenant.
pub fn task_queue_tenant(tenant: &str) -> String {
    format!("taskqueue.{tenant}.>")
}

/// The priority and kind of one of `tenant`'s queue subjects (the inverse of [`task_queue`]).
pub fn task_queue_parts<'a>(tenant: &str, subject: &'a str) -> Option<(u8, &'a str)> {
    let rest = subject.strip_prefix(&format!("taskqueue.{tenant}.p"))?;
    let (priority, kind) = rest.split_once('.')?;
    Some((priority.parse().ok()?, kind))
}

/// The durable consumer of a tenant's queued attempts at one priority, `tq-<tenant>-p<priority>`.
pub fn task_queue_consumer(tenant: &str, priority: u8) -> String {
    format!("tq-{tenant}-p{priority}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_subject_gives_back_its_priority_and_its_dotted_kind() {
        let subject = task_queue("acme", 7, "promql.snapshot");

        assert_eq!(
            task_queue_parts("acme", &subject),
            Some((7, "promql.snapshot"))
        );
        assert_eq!(task_queue_parts("acm", &subject), None);
        assert_eq!(task_queue_parts("acme", "taskqueue.acme.px.echo"), None);
    }

    #[test]
    fn subjects_put_the_tenant_second() {
        assert_eq!(signal("acme", "alertmanager"), "signals.acme.alertmanager");
        assert_eq!(tenant("acme"), "tenants.acme.tenant");
        assert_eq!(tenant_tokens("acme"), "tenants.acme.tokens");
        assert_eq!(
            dead_letter("acme", "projector-signals"),
            "deadletters.acme.projector-signals"
        );
        assert_eq!(all(SIGNALS), "signals.>");
        assert_eq!(stream_of("incidents.acme.x"), Some(INCIDENTS));
        assert_eq!(stream_of("nope.acme"), None);
    }
}
