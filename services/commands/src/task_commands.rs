//! Task commands over JetStream: create, cancel, and what workers and the supervisor ask of a
//! task (claim, heartbeat, progress, log, complete, fail). The task's lifecycle is read back from
//! its own subject on TASKS and decided by the pure aggregate ([`crate::tasks::Task`]); events are
//! appended at the subject's last sequence, so two deciders racing on one task cannot both win.
//!
//! Dispatch: each unfinished task has exactly one message on the work queue (`TASKQUEUE`) for its
//! whole life. A claim is its delivery, the lease the consumer's `AckWait`, a heartbeat an
//! in-progress ack; it is acked when the task ends, and nak'd with the backoff as delay when an
//! attempt fails and is retried. A redelivery of a message whose task is still running means the
//! holder's lease ran out: the attempt is expired and the task retried.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, stream::DirectGetErrorKind};
use chrono::{DateTime, Utc};
use copilot_events::{
    Envelope, Event, Headers, TaskCreated, TaskLogged, TaskProgressed, has_forbidden_control,
    subjects,
};
use copilot_runtime::{append::AppendError, taskqueue};
use futures::StreamExt as _;
use uuid::Uuid;

use crate::CommandError;
use crate::tasks::{HeartbeatAnswer, Task, TaskCommand, TaskError, TaskStatus, validate_new};

/// A task as asked for.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub kind: String,
    pub input: serde_json::Value,
    pub priority: u8,
    pub timeout_secs: u32,
    pub max_attempts: u32,
    pub incident_id: Option<Uuid>,
}

/// The work-queue message of a task.
#[derive(serde::Serialize, serde::Deserialize)]
struct QueueEntry {
    task_id: Uuid,
}

/// An attempt a worker now holds, and the handle of its queue message (the lease).
#[derive(Debug, Clone)]
pub struct Claim {
    pub task: Task,
    pub input: serde_json::Value,
    pub incident_id: Option<Uuid>,
    /// The queue message's ack subject: heartbeats, completion and failure answer through it.
    pub lease: String,
    /// How long the lease holds without a heartbeat: the queue consumer's own `AckWait`, which
    /// may predate the `task_lease_secs` setting. Heartbeat well within it.
    pub lease_secs: u32,
}

fn conflict(err: TaskError) -> CommandError {
    CommandError::Conflict(err.to_string())
}

/// Creates a task and queues it; returns its id.
pub async fn create_task(
    js: &jetstream::Context,
    tenant: &str,
    actor: &str,
    new: NewTask,
    headers: Headers,
) -> Result<Uuid, CommandError> {
    validate_new(&new.kind, new.priority, new.timeout_secs, new.max_attempts)
        .map_err(|(field, why)| CommandError::Invalid(format!("{field}: {why}")))?;
    if serde_json::to_vec(&new.input).map_or(0, |v| v.len()) > 256 * 1024 {
        return Err(CommandError::Invalid(
            "input: must be at most 256 KiB of JSON".into(),
        ));
    }
    let task_id = Uuid::now_v7();
    let created = TaskCreated {
        task_id,
        kind: new.kind.clone(),
        input: new.input,
        priority: new.priority,
        timeout_secs: new.timeout_secs,
        max_attempts: new.max_attempts,
        incident_id: new.incident_id,
        actor: actor.to_owned(),
    };
    let envelope = Envelope::with_id(task_id, tenant, &created, Utc::now(), headers);
    copilot_runtime::append::append_event(js, subjects::task(tenant, task_id), &envelope, Some(0))
        .await?;
    taskqueue::provision(js)
        .await
        .map_err(|e| CommandError::Append(AppendError::Unavailable(format!("{e:#}"))))?;
    let message = jetstream::message::PublishMessage::build()
        .payload(
            serde_json::to_vec(&QueueEntry { task_id })
                .expect("serializes")
                .into(),
        )
        .message_id(task_id.to_string());
    copilot_runtime::append::append(
        js,
        taskqueue::subject(tenant, new.priority, &new.kind),
        message,
    )
    .await?;
    Ok(task_id)
}

/// A task as its events say, with the creation and the subject's last sequence; `None` when
/// the tenant has no such task.
pub async fn load_task(
    js: &jetstream::Context,
    tenant: &str,
    task_id: Uuid,
) -> Result<Option<(Task, TaskCreated, u64)>, CommandError> {
    let unavailable = |e: String| CommandError::Append(AppendError::Unavailable(e));
    let stream = js
        .get_stream(subjects::TASKS)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let subject = subjects::task(tenant, task_id);
    let mut events: Vec<(Event, DateTime<Utc>)> = Vec::new();
    let mut created = None;
    let mut next = 1;
    let mut last = 0;
    loop {
        let message = match stream
            .direct_get_next_for_subject(subject.as_str(), Some(next))
            .await
        {
            Ok(message) => message,
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => break,
            Err(e) => return Err(unavailable(e.to_string())),
        };
        last = message.sequence;
        next = message.sequence + 1;
        let envelope = Envelope::from_slice(&message.payload)
            .map_err(|e| CommandError::Internal(e.to_string()))?;
        let event = envelope
            .decode()
            .map_err(|e| CommandError::Internal(e.to_string()))?;
        if let Event::TaskCreated(c) = &event {
            created = Some(c.clone());
        }
        events.push((event, envelope.occurred_at));
    }
    let Some(created) = created else {
        return Ok(None);
    };
    let task = Task::fold(events.iter().map(|(e, at)| (e, *at))).expect("created is folded");
    Ok(Some((task, created, last)))
}

/// Decides `command` on the task and appends what it decided; a lost race decides again.
/// Returns the task after the events and the events.
pub async fn decide_task(
    js: &jetstream::Context,
    tenant: &str,
    task_id: Uuid,
    command: &TaskCommand,
    headers: &Headers,
) -> Result<(Task, Vec<Event>), CommandError> {
    decide_task_checked(js, tenant, task_id, command, headers, |_| Ok(())).await
}

/// [`decide_task`], refusing with `check`'s error (nothing appended) when the task as read for
/// the decision does not pass it.
async fn decide_task_checked(
    js: &jetstream::Context,
    tenant: &str,
    task_id: Uuid,
    command: &TaskCommand,
    headers: &Headers,
    check: impl Fn(&Task) -> Result<(), CommandError>,
) -> Result<(Task, Vec<Event>), CommandError> {
    for _ in 0..5 {
        let (task, _, last) = load_task(js, tenant, task_id)
            .await?
            .ok_or(CommandError::NotFound("task"))?;
        check(&task)?;
        let events = task.decide(command).map_err(conflict)?;
        let now = Utc::now();
        match append_events(js, tenant, task_id, &events, last, headers, now).await {
            Ok(()) => {
                count(&task, &events, now);
                let task = events.iter().fold(task, |t, e| t.evolve(e, now));
                return Ok((task, events));
            }
            Err(AppendError::Conflict) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(CommandError::Conflict(
        "the task kept changing; try again".into(),
    ))
}

/// Counts what a decision did, and times claims (since the task was ready) and attempts (since
/// their claim), for the task as it was before the decision.
fn count(task: &Task, events: &[Event], now: DateTime<Utc>) {
    let metrics = taskqueue::TaskMetrics::global();
    let kind = task.kind.as_str();
    let since = |at: Option<DateTime<Utc>>| {
        at.map(|at| (now - at).num_milliseconds().max(0) as f64 / 1000.0)
    };
    for event in events {
        if let Event::TaskClaimed(_) = event
            && let Some(waited) = since(task.queued_at)
        {
            metrics
                .claim_latency_seconds
                .with_label_values(&[kind])
                .observe(waited);
        }
        if let Event::TaskCompleted(_) | Event::TaskFailed(_) = event
            && let Some(ran) = since(task.claimed_at)
        {
            metrics.run_seconds.with_label_values(&[kind]).observe(ran);
        }
        match event {
            Event::TaskClaimed(_) => metrics.claims_total.with_label_values(&[kind]).inc(),
            Event::TaskLeaseExpired(_) => metrics
                .lease_expiries_total
                .with_label_values(&[kind])
                .inc(),
            Event::TaskCompleted(_) => metrics.outcome(kind, "succeeded"),
            Event::TaskRetried(_) => metrics.outcome(kind, "retried"),
            Event::TaskFailed(f) if f.last => metrics.outcome(kind, "failed"),
            Event::TaskCancelled(_) => metrics.outcome(kind, "cancelled"),
            Event::TaskOutcomeRefused(_) => metrics.outcome(kind, "refused"),
            Event::TaskReleased(_) => metrics.outcome(kind, "released"),
            _ => {}
        }
    }
}

async fn append_events(
    js: &jetstream::Context,
    tenant: &str,
    task_id: Uuid,
    events: &[Event],
    mut last: u64,
    headers: &Headers,
    now: DateTime<Utc>,
) -> Result<(), AppendError> {
    for event in events {
        let envelope = envelope_of(tenant, event, now, headers.clone());
        last = copilot_runtime::append::append_event(
            js,
            subjects::task(tenant, task_id),
            &envelope,
            Some(last),
        )
        .await?;
    }
    Ok(())
}

fn envelope_of(tenant: &str, event: &Event, now: DateTime<Utc>, headers: Headers) -> Envelope {
    macro_rules! wrap {
        ($($t:ident),*) => {
            match event {
                $(Event::$t(p) => Envelope::new(tenant, p, now, headers),)*
                other => unreachable!("the task aggregate does not decide {}", other.name()),
            }
        };
    }
    wrap!(
        TaskClaimed,
        TaskCompleted,
        TaskFailed,
        TaskLeaseExpired,
        TaskRetried,
        TaskCancelled,
        TaskOutcomeRefused,
        TaskReleased
    )
}

/// Cancels a queued or running task; a running attempt learns it on its next heartbeat.
pub async fn cancel_task(
    js: &jetstream::Context,
    tenant: &str,
    task_id: Uuid,
    actor: &str,
    headers: Headers,
) -> Result<Task, CommandError> {
    let command = TaskCommand::Cancel {
        actor: actor.to_owned(),
    };
    Ok(decide_task(js, tenant, task_id, &command, &headers)
        .await?
        .0)
}

/// Answers a queue message through its ack subject. Only ack subjects of this tenant's task
/// queue consumers are accepted, so a worker cannot make the copilot publish elsewhere.
/// Whether `lease` is the ack subject of a delivery by one of `tenant`'s own queue consumers:
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`, naming
/// the consumer exactly (a prefix would let tenant `acme` answer for `acme-p1`'s consumers).
fn lease_of(tenant: &str, lease: &str) -> bool {
    let tokens: Vec<&str> = lease.split('.').collect();
    let own = (0..=crate::tasks::MAX_PRIORITY)
        .any(|p| tokens.get(3) == Some(&subjects::task_queue_consumer(tenant, p).as_str()));
    own && tokens.len() == 9
        && tokens[..3] == ["$JS", "ACK", subjects::TASK_QUEUE]
        && tokens[4..]
            .iter()
            .all(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
}

/// The delivery a lease (an ack subject) names: the message's stream sequence and its delivery
/// count, so a redelivery of the same message (after a hand-back) is another lease.
fn lease_delivery(lease: &str) -> Option<(u64, u64)> {
    let mut tokens = lease.split('.').skip(4);
    let delivered = tokens.next()?.parse().ok()?;
    let seq = tokens.next()?.parse().ok()?;
    Some((seq, delivered))
}

/// Decides a worker's outcome or hand-back of an attempt through `lease`: refused with 422
/// (nothing appended) for a lease that is not this tenant's or not the running attempt's own
/// delivery (another task's, of the same tenant), so a worker cannot answer for a delivery it
/// does not hold. `None` when the attempt was no longer the worker's (recorded as refused).
async fn decide_outcome(
    js: &jetstream::Context,
    tenant: &str,
    task_id: Uuid,
    lease: &str,
    command: &TaskCommand,
    worker: Uuid,
    attempt: u32,
) -> Result<Option<Task>, CommandError> {
    if !lease_of(tenant, lease) {
        return Err(CommandError::Invalid(
            "lease: not a lease of this tenant".into(),
        ));
    }
    let own_lease = |task: &Task| {
        if task.held_by(worker, attempt) && !task.lease_is(lease_delivery(lease)) {
            return Err(CommandError::Invalid(
                "lease: not the lease of this attempt".into(),
            ));
        }
        Ok(())
    };
    let (task, events) =
        decide_task_checked(js, tenant, task_id, command, &Headers::default(), own_lease).await?;
    if matches!(events.first(), Some(Event::TaskOutcomeRefused(_))) {
        return Ok(None);
    }
    Ok(Some(task))
}

/// A failure's or hand-back's reason: 1 to 10,000 bytes of text.
fn check_reason(reason: &str) -> Result<(), CommandError> {
    if reason.trim().is_empty() || reason.len() > 10_000 || has_forbidden_control(reason) {
        return Err(CommandError::Invalid(
            "reason: must be 1 to 10000 bytes of text".into(),
        ));
    }
    Ok(())
}

async fn answer(
    js: &jetstream::Context,
    tenant: &str,
    lease: &str,
    kind: AckKind,
) -> Result<(), CommandError> {
    if !lease_of(tenant, lease) {
        return Err(CommandError::Invalid(
            "lease: not a lease of this tenant".into(),
        ));
    }
    js.client()
        .publish(lease.to_owned(), kind.into())
        .await
        .map_err(|e| CommandError::Append(AppendError::Unavailable(e.to_string())))
}

fn delay_until(due: DateTime<Utc>) -> Duration {
    (due - Utc::now()).to_std().unwrap_or_default()
}

/// Claims the next task of `kinds` for `worker`, highest priority first, waiting up to `wait`.
/// `lease` is the queue consumers' `AckWait` when this call creates them
/// (the `task_lease_secs` setting in production).
pub async fn claim_next(
    js: &jetstream::Context,
    tenant: &str,
    worker: Uuid,
    kinds: &[String],
    wait: Duration,
    lease: Duration,
) -> Result<Option<Claim>, CommandError> {
    let deadline = tokio::time::Instant::now() + wait;
    let unavailable = |e: String| CommandError::Append(AppendError::Unavailable(e));
    loop {
        // Only the priorities holding an attempt of these kinds are fetched from.
        let ready = taskqueue::ready_priorities(js, tenant, kinds)
            .await
            .map_err(|e| unavailable(format!("{e:#}")))?;
        for priority in ready {
            let consumer = taskqueue::consumer(js, tenant, priority, lease)
                .await
                .map_err(|e| unavailable(format!("{e:#}")))?;
            // The lease in force is the consumer's own `AckWait`, which may predate the setting.
            let ack_wait = consumer.cached_info().config.ack_wait;
            // `expires` bounds the request on the client too: a no-wait fetch whose status never came
            // back would otherwise wait for ever.
            let fetched = consumer
                .fetch()
                .max_messages(1)
                .expires(FETCH_EXPIRES)
                .messages()
                .await;
            let mut batch = match fetched {
                Ok(batch) => batch,
                Err(e) => {
                    taskqueue::forget(js, tenant, priority);
                    return Err(unavailable(e.to_string()));
                }
            };
            while let Some(message) = batch.next().await {
                // A consumer deleted (or its stream recreated) answers with an error status
                // here: forget the cached handle so the next claim asks the server again.
                let message = message.map_err(|e| {
                    taskqueue::forget(js, tenant, priority);
                    unavailable(e.to_string())
                })?;
                if let Some(claim) = consider(js, tenant, worker, kinds, &message, ack_wait).await?
                {
                    return Ok(Some(claim));
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(CLAIM_POLL).await;
    }
}

/// The longest one fetch from a priority the queue says is ready waits.
const FETCH_EXPIRES: Duration = Duration::from_millis(100);

/// How often a waiting claim looks at the queue again.
const CLAIM_POLL: Duration = Duration::from_millis(50);

/// Decides what to do with one delivered queue message: claim it, put it back for later, or
/// drop it because its task has ended.
async fn consider(
    js: &jetstream::Context,
    tenant: &str,
    worker: Uuid,
    kinds: &[String],
    message: &jetstream::Message,
    ack_wait: Duration,
) -> Result<Option<Claim>, CommandError> {
    let Some(lease) = message.reply.as_ref().map(|r| r.to_string()) else {
        return Ok(None);
    };
    let Ok(entry) = serde_json::from_slice::<QueueEntry>(&message.payload) else {
        answer(js, tenant, &lease, AckKind::Term).await?;
        return Ok(None);
    };
    let Some((mut task, created, _)) = load_task(js, tenant, entry.task_id).await? else {
        answer(js, tenant, &lease, AckKind::Term).await?;
        return Ok(None);
    };
    let headers = Headers::default();
    if task.status == TaskStatus::Running {
        // Only one message per task exists: delivered again, it means the lease ran out.
        let expire = TaskCommand::ExpireLease { now: Utc::now() };
        match decide_task(js, tenant, task.id, &expire, &headers).await {
            Ok((after, _)) => task = after,
            // Not running after all (it ended, or failed between the load and the decision):
            // decide on it as it is now, so the message is answered, never left to redeliver.
            Err(CommandError::Conflict(_)) => match load_task(js, tenant, entry.task_id).await? {
                Some((now, _, _)) => task = now,
                None => return Ok(None),
            },
            Err(e) => return Err(e),
        }
    }
    if task.status.is_final() {
        answer(js, tenant, &lease, AckKind::Ack).await?;
        return Ok(None);
    }
    if !kinds.contains(&task.kind) {
        answer(
            js,
            tenant,
            &lease,
            AckKind::Nak(Some(Duration::from_millis(200))),
        )
        .await?;
        return Ok(None);
    }
    if let Some(due) = task.not_before.filter(|due| *due > Utc::now()) {
        answer(js, tenant, &lease, AckKind::Nak(Some(delay_until(due)))).await?;
        return Ok(None);
    }
    let claim = TaskCommand::Claim {
        worker,
        lease_secs: ack_wait.as_secs().max(1) as u32,
        queue_delivery: lease_delivery(&lease),
        now: Utc::now(),
    };
    match decide_task(js, tenant, task.id, &claim, &headers).await {
        Ok((task, _)) => Ok(Some(Claim {
            task,
            input: created.input,
            incident_id: created.incident_id,
            lease,
            lease_secs: ack_wait.as_secs().max(1) as u32,
        })),
        Err(CommandError::Conflict(why)) => {
            tracing::debug!(tenant, task = %entry.task_id, why, "task not claimable");
            answer(
                js,
                tenant,
                &lease,
                AckKind::Nak(Some(Duration::from_millis(500))),
            )
            .await?;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// A heartbeat for an attempt: extends the lease while the worker holds it, and says stop when
/// the task was cancelled, timed out, or is no longer this worker's.
pub async fn heartbeat_task(
    js: &jetstream::Context,
    tenant: &str,
    worker: Uuid,
    task_id: Uuid,
    attempt: u32,
    lease: &str,
) -> Result<HeartbeatAnswer, CommandError> {
    let (task, _, _) = load_task(js, tenant, task_id)
        .await?
        .ok_or(CommandError::NotFound("task"))?;
    let mut answer_now = task.heartbeat(worker, attempt);
    if answer_now == HeartbeatAnswer::Continue && !task.lease_is(lease_delivery(lease)) {
        // Not this attempt's message: nothing is extended.
        answer_now = HeartbeatAnswer::Lost;
    }
    match answer_now {
        HeartbeatAnswer::Continue => {
            if task.deadline().is_some_and(|d| Utc::now() >= d) {
                let timeout = TaskCommand::TimeOut { now: Utc::now() };
                let (after, _) =
                    decide_task(js, tenant, task_id, &timeout, &Headers::default()).await?;
                settle_queue(js, tenant, lease, &after).await?;
                return Ok(HeartbeatAnswer::Lost);
            }
            answer(js, tenant, lease, AckKind::Progress).await?;
        }
        // Only the attempt's own message is acked: a lease of another task stays untouched.
        // A task cancelled before any claim has no delivery to compare: its message is acked
        // when the queue next delivers it.
        HeartbeatAnswer::Cancel
            if task.queue_delivery.is_some() && task.lease_is(lease_delivery(lease)) =>
        {
            answer(js, tenant, lease, AckKind::Ack).await?
        }
        HeartbeatAnswer::Cancel | HeartbeatAnswer::Lost => {}
    }
    Ok(answer_now)
}

/// After an attempt ended: ack the queue message when the task ended, or hand it back with the
/// backoff as delay when it will be retried.
async fn settle_queue(
    js: &jetstream::Context,
    tenant: &str,
    lease: &str,
    task: &Task,
) -> Result<(), CommandError> {
    if task.status.is_final() {
        answer(js, tenant, lease, AckKind::Ack).await
    } else {
        let delay = task.not_before.map(delay_until).unwrap_or_default();
        answer(js, tenant, lease, AckKind::Nak(Some(delay))).await
    }
}

/// The outcome a worker reports for an attempt it holds. `Ok(false)`: refused (the attempt is
/// not the worker's any more), and recorded.
pub async fn finish_task(
    js: &jetstream::Context,
    tenant: &str,
    worker: Uuid,
    task_id: Uuid,
    attempt: u32,
    lease: &str,
    outcome: Result<serde_json::Value, String>,
) -> Result<bool, CommandError> {
    let command = match outcome {
        Ok(result) => TaskCommand::Complete {
            worker,
            attempt,
            result,
        },
        Err(reason) => {
            check_reason(&reason)?;
            TaskCommand::Fail {
                worker,
                attempt,
                reason,
                now: Utc::now(),
            }
        }
    };
    let Some(task) = decide_outcome(js, tenant, task_id, lease, &command, worker, attempt).await?
    else {
        return Ok(false);
    };
    settle_queue(js, tenant, lease, &task).await?;
    Ok(true)
}

/// Hands back an attempt the worker holds but will not finish (it is stopping): the task is
/// queued again at once without counting the attempt. `false` when the attempt was no longer the
/// worker's (recorded as refused).
pub async fn release_task(
    js: &jetstream::Context,
    tenant: &str,
    worker: Uuid,
    task_id: Uuid,
    attempt: u32,
    lease: &str,
    reason: &str,
) -> Result<bool, CommandError> {
    check_reason(reason)?;
    let command = TaskCommand::Release {
        worker,
        attempt,
        reason: reason.to_owned(),
    };
    if decide_outcome(js, tenant, task_id, lease, &command, worker, attempt)
        .await?
        .is_none()
    {
        return Ok(false);
    }
    answer(js, tenant, lease, AckKind::Nak(None)).await?;
    Ok(true)
}

/// Progress and log lines of a running attempt, on the task's log subject.
#[allow(clippy::too_many_arguments)]
pub async fn report_task(
    js: &jetstream::Context,
    tenant: &str,
    worker: Uuid,
    task_id: Uuid,
    attempt: u32,
    progress: Option<(u8, Option<String>)>,
    lines: Vec<String>,
) -> Result<(), CommandError> {
    if lines.len() > 1000 || lines.iter().any(|l| l.len() > 8192) {
        return Err(CommandError::Invalid(
            "lines: at most 1000 lines of at most 8192 bytes".into(),
        ));
    }
    // Only the worker running this attempt writes its log: not another tenant's worker (the
    // task is not found in its tenant), not a worker whose attempt is over.
    let (task, _, _) = load_task(js, tenant, task_id)
        .await?
        .ok_or(CommandError::NotFound("task"))?;
    if task.status != TaskStatus::Running || task.attempt != attempt || task.worker != Some(worker)
    {
        return Err(CommandError::Conflict(
            "the attempt is not this worker's (it ended, its lease ran out, or another worker runs it)"
                .into(),
        ));
    }
    let now = Utc::now();
    let subject = subjects::task_log(tenant, task_id);
    if let Some((percent, message)) = progress {
        if percent > 100 {
            return Err(CommandError::Invalid("percent: must be 0 to 100".into()));
        }
        let payload = TaskProgressed {
            task_id,
            attempt,
            percent,
            message,
        };
        let envelope = Envelope::new(tenant, &payload, now, Headers::default());
        copilot_runtime::append::append_event(js, subject.clone(), &envelope, None).await?;
    }
    if !lines.is_empty() {
        let payload = TaskLogged {
            task_id,
            attempt,
            lines,
        };
        let envelope = Envelope::new(tenant, &payload, now, Headers::default());
        copilot_runtime::append::append_event(js, subject, &envelope, None).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::lease_of;

    #[test]
    fn a_lease_is_only_ever_one_of_the_tenants_own_consumers_deliveries() {
        let lease =
            |consumer: &str| format!("$JS.ACK.TASKQUEUE.{consumer}.1.42.7.1733280000000000000.0");

        assert!(lease_of("acme", &lease("tq-acme-p5")));
        assert!(
            !lease_of("acme", &lease("tq-acme-p1-p0")),
            "tenant acme-p1's consumer"
        );
        assert!(!lease_of("acme", &lease("tq-globex-p5")));
        assert!(!lease_of("acme", "$JS.ACK.TASKQUEUE.tq-acme-p5.>"));
        assert!(!lease_of(
            "acme",
            &lease("tq-acme-p5").replace("TASKQUEUE", "SIGNALS")
        ));
        assert!(!lease_of("acme", "_INBOX.anything"));
    }
}
