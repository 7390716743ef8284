//! Task and worker events, on the TASKS stream. A task is investigation or maintenance work that
//! takes longer than a request (a Prometheus snapshot, a hypotheses refresh); a worker is a
//! process that registered the kinds it runs and claims tasks through the work queue. These
//! events are the record of every attempt: the read models `tasks`, `task_logs` and `workers`
//! are folded from them, and a rebuild replays them.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::EventPayload;

/// A task was asked for. Its id is the aggregate id (`tasks.<tenant>.task.<id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskCreated {
    pub task_id: Uuid,
    /// A kind some worker runs, e.g. `promql.snapshot`.
    pub kind: String,
    /// The kind's own input, as given.
    pub input: serde_json::Value,
    /// 0 (lowest) to 9 (highest): higher runs first.
    pub priority: u8,
    /// An attempt running longer than this fails, even while its worker heartbeats.
    pub timeout_secs: u32,
    /// Attempts before the task fails for good.
    pub max_attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident_id: Option<Uuid>,
    pub actor: String,
}
impl EventPayload for TaskCreated {
    const TYPE: &'static str = "TaskCreated";
    const VERSION: u32 = 1;
}

/// A worker received the task from the work queue: attempt `attempt` runs, under a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskClaimed {
    pub task_id: Uuid,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub worker_id: Uuid,
    /// How long the claim holds without a heartbeat (the queue consumer's `AckWait`).
    pub lease_secs: u32,
    /// The stream sequence of the work-queue message claimed: only a lease naming it answers
    /// for this attempt. Absent in claims recorded before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_seq: Option<u64>,
    /// The delivery count of that message at this claim: with `queue_seq`, the one lease that
    /// answers for this attempt (a message handed back and delivered again is another lease).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_delivered: Option<u64>,
}
impl EventPayload for TaskClaimed {
    const TYPE: &'static str = "TaskClaimed";
    const VERSION: u32 = 1;
}

/// The running attempt reported how far it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskProgressed {
    pub task_id: Uuid,
    pub attempt: u32,
    /// 0 to 100.
    pub percent: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
impl EventPayload for TaskProgressed {
    const TYPE: &'static str = "TaskProgressed";
    const VERSION: u32 = 1;
}

/// The running attempt wrote log lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskLogged {
    pub task_id: Uuid,
    pub attempt: u32,
    pub lines: Vec<String>,
}
impl EventPayload for TaskLogged {
    const TYPE: &'static str = "TaskLogged";
    const VERSION: u32 = 1;
}

/// The attempt finished and the task succeeded with its result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskCompleted {
    pub task_id: Uuid,
    pub attempt: u32,
    pub worker_id: Uuid,
    pub result: serde_json::Value,
}
impl EventPayload for TaskCompleted {
    const TYPE: &'static str = "TaskCompleted";
    const VERSION: u32 = 1;
}

/// An attempt failed. `last` says the task failed for good (no attempt left); otherwise a
/// [`TaskRetried`] follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskFailed {
    pub task_id: Uuid,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<Uuid>,
    pub reason: String,
    pub last: bool,
}
impl EventPayload for TaskFailed {
    const TYPE: &'static str = "TaskFailed";
    const VERSION: u32 = 1;
}

/// The worker holding an attempt stopped heartbeating past its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskLeaseExpired {
    pub task_id: Uuid,
    pub attempt: u32,
    pub worker_id: Uuid,
}
impl EventPayload for TaskLeaseExpired {
    const TYPE: &'static str = "TaskLeaseExpired";
    const VERSION: u32 = 1;
}

/// The task is queued again for attempt `next_attempt`, not before `not_before` (the backoff).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskRetried {
    pub task_id: Uuid,
    pub next_attempt: u32,
    pub not_before: DateTime<Utc>,
}
impl EventPayload for TaskRetried {
    const TYPE: &'static str = "TaskRetried";
    const VERSION: u32 = 1;
}

/// A person cancelled the task; a running attempt learns it on its next heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskCancelled {
    pub task_id: Uuid,
    pub actor: String,
}
impl EventPayload for TaskCancelled {
    const TYPE: &'static str = "TaskCancelled";
    const VERSION: u32 = 1;
}

/// The worker running an attempt handed it back unfinished (it is stopping): the task is queued
/// again at once and the attempt does not count against `max_attempts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskReleased {
    pub task_id: Uuid,
    pub attempt: u32,
    pub worker_id: Uuid,
    pub reason: String,
}
impl EventPayload for TaskReleased {
    const TYPE: &'static str = "TaskReleased";
    const VERSION: u32 = 1;
}

/// A worker reported an outcome for an attempt it no longer holds (its lease expired, the task
/// was cancelled or timed out): refused, and recorded here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskOutcomeRefused {
    pub task_id: Uuid,
    pub attempt: u32,
    pub worker_id: Uuid,
    pub why: String,
}
impl EventPayload for TaskOutcomeRefused {
    const TYPE: &'static str = "TaskOutcomeRefused";
    const VERSION: u32 = 1;
}

/// A worker announced itself (`tasks.<tenant>.worker.<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerRegistered {
    pub worker_id: Uuid,
    pub name: String,
    pub kinds: Vec<String>,
    pub capacity: u32,
}
impl EventPayload for WorkerRegistered {
    const TYPE: &'static str = "WorkerRegistered";
    const VERSION: u32 = 1;
}

/// A worker was alive at `occurred_at`, holding these tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerHeartbeatRecorded {
    pub worker_id: Uuid,
    pub tasks: Vec<Uuid>,
}
impl EventPayload for WorkerHeartbeatRecorded {
    const TYPE: &'static str = "WorkerHeartbeatRecorded";
    const VERSION: u32 = 1;
}

/// A worker left (drained) or was declared gone after missing heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerGone {
    pub worker_id: Uuid,
    pub reason: String,
}
impl EventPayload for WorkerGone {
    const TYPE: &'static str = "WorkerGone";
    const VERSION: u32 = 1;
}

/// A worker token was issued (`tenants.<tenant>.worker_tokens`): a tenant's workers authenticate
/// with it on the worker routes. Like a webhook token, only its hash is ever kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerTokenIssued {
    pub token_id: Uuid,
    /// Hex blake3 hash of the token.
    pub token_hash: String,
    /// The first characters of the token, safe to display.
    pub prefix: String,
    /// What the token is for, as the admin named it (a host, a team's worker pool).
    pub name: String,
    pub issued_by: String,
}
impl EventPayload for WorkerTokenIssued {
    const TYPE: &'static str = "WorkerTokenIssued";
    const VERSION: u32 = 1;
}

/// A worker token stopped working.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerTokenRevoked {
    pub token_id: Uuid,
    pub revoked_by: String,
}
impl EventPayload for WorkerTokenRevoked {
    const TYPE: &'static str = "WorkerTokenRevoked";
    const VERSION: u32 = 1;
}
