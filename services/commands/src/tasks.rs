//! The task aggregate: one state machine for a task's attempts, whoever drives them (a person
//! creating or cancelling, a worker claiming and reporting, the supervisor expiring leases and
//! timing attempts out). Pure: no clock, no store, no NATS; times are given. [`Task::decide`]
//! turns a command into the events to append, or a typed refusal; [`Task::evolve`] folds what
//! happened. A worker's outcome for an attempt it no longer holds is not an error to the
//! aggregate: it is decided into a recorded [`TaskOutcomeRefused`], and the caller answers 409.

use chrono::{DateTime, Duration, Utc};
use copilot_events::{
    Event, TaskCancelled, TaskClaimed, TaskCompleted, TaskCreated, TaskFailed, TaskLeaseExpired,
    TaskOutcomeRefused, TaskReleased, TaskRetried,
};
use uuid::Uuid;

/// Kinds this build knows how to run. Adding a kind is one entry here and one handler in the
/// native worker (`copilot worker`, `services/copilot/src/worker.rs`). `echo` answers its input:
/// it checks a worker end to end and is what the tasks bench dispatches.
pub const KINDS: &[&str] = &["promql.snapshot", "hypotheses.refresh", "echo"];

pub const MAX_PRIORITY: u8 = 9;
pub const MAX_TIMEOUT_SECS: u32 = 86_400;
pub const MAX_ATTEMPTS: u32 = 20;
/// First retry waits this long; each next one twice as long, up to [`MAX_BACKOFF_SECS`].
pub const BASE_BACKOFF_SECS: i64 = 2;
pub const MAX_BACKOFF_SECS: i64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// A task as its aggregate.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: Uuid,
    pub kind: String,
    pub priority: u8,
    pub timeout_secs: u32,
    pub max_attempts: u32,
    pub status: TaskStatus,
    /// The attempt running, or the last one run (0 before any claim).
    pub attempt: u32,
    /// The worker holding the running attempt.
    pub worker: Option<Uuid>,
    pub claimed_at: Option<DateTime<Utc>>,
    /// A queued retry does not run before this.
    pub not_before: Option<DateTime<Utc>>,
    /// When the task last became ready to claim (created, or a retry's backoff over), when
    /// folded from events with their times.
    pub queued_at: Option<DateTime<Utc>>,
    /// When it was created, when folded from events with their times.
    pub created_at: Option<DateTime<Utc>>,
    /// Every failed attempt's reason, in order.
    pub reasons: Vec<String>,
    /// The work-queue delivery of the running attempt (stream sequence, delivery count), as
    /// claimed.
    pub queue_delivery: Option<(u64, u64)>,
}

/// What may be asked of a task.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskCommand {
    Claim {
        worker: Uuid,
        lease_secs: u32,
        /// The queue delivery of this claim: stream sequence and delivery count.
        queue_delivery: Option<(u64, u64)>,
        now: DateTime<Utc>,
    },
    Complete {
        worker: Uuid,
        attempt: u32,
        result: serde_json::Value,
    },
    Fail {
        worker: Uuid,
        attempt: u32,
        reason: String,
        now: DateTime<Utc>,
    },
    /// The worker holding the attempt hands it back unfinished (it is stopping): queued again
    /// at once, and the attempt does not count.
    Release {
        worker: Uuid,
        attempt: u32,
        reason: String,
    },
    /// The supervisor saw the holder's lease run out.
    ExpireLease {
        now: DateTime<Utc>,
    },
    /// The supervisor saw the attempt run past the task's timeout.
    TimeOut {
        now: DateTime<Utc>,
    },
    Cancel {
        actor: String,
    },
}

/// Why a command does not apply to the task as it is (409).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    #[error("the task is {0}")]
    NotQueued(&'static str),
    #[error("the task is not due before {0}")]
    NotDue(DateTime<Utc>),
    #[error("the task is already {0}")]
    Finished(&'static str),
    #[error("the task is not running")]
    NotRunning,
    #[error("the attempt has not run past its timeout")]
    NotTimedOut,
}

/// What the worker is told on a heartbeat for an attempt it reports holding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatAnswer {
    /// Keep going; the lease is extended.
    Continue,
    /// Stop: the task was cancelled.
    Cancel,
    /// Stop: the attempt is no longer this worker's (lease expired, timed out, retried).
    Lost,
}

/// Checks a new task's fields; the error names the field.
pub fn validate_new(
    kind: &str,
    priority: u8,
    timeout_secs: u32,
    max_attempts: u32,
) -> Result<(), (&'static str, String)> {
    if !KINDS.contains(&kind) {
        return Err((
            "kind",
            format!("unknown kind {kind:?}; known: {}", KINDS.join(", ")),
        ));
    }
    if priority > MAX_PRIORITY {
        return Err(("priority", format!("priority must be 0 to {MAX_PRIORITY}")));
    }
    if timeout_secs == 0 || timeout_secs > MAX_TIMEOUT_SECS {
        return Err((
            "timeout_secs",
            format!("timeout_secs must be 1 to {MAX_TIMEOUT_SECS}"),
        ));
    }
    if max_attempts == 0 || max_attempts > MAX_ATTEMPTS {
        return Err((
            "max_attempts",
            format!("max_attempts must be 1 to {MAX_ATTEMPTS}"),
        ));
    }
    Ok(())
}

/// How long a retry after failed attempt `attempt` (1-based) waits.
pub fn backoff(attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(16);
    Duration::seconds((BASE_BACKOFF_SECS << exp).min(MAX_BACKOFF_SECS))
}

impl Task {
    /// The task as created.
    pub fn created(event: &TaskCreated) -> Self {
        Self {
            id: event.task_id,
            kind: event.kind.clone(),
            priority: event.priority,
            timeout_secs: event.timeout_secs,
            max_attempts: event.max_attempts,
            status: TaskStatus::Queued,
            attempt: 0,
            worker: None,
            claimed_at: None,
            not_before: None,
            queued_at: None,
            created_at: None,
            reasons: Vec::new(),
            queue_delivery: None,
        }
    }

    /// Folds every event of one task, in order, into its state (`None` before `TaskCreated`).
    pub fn fold<'a>(events: impl IntoIterator<Item = (&'a Event, DateTime<Utc>)>) -> Option<Self> {
        let mut state: Option<Self> = None;
        for (event, at) in events {
            state = match (state, event) {
                (None, Event::TaskCreated(created)) => Some(Self {
                    queued_at: Some(at),
                    created_at: Some(at),
                    ..Self::created(created)
                }),
                (Some(task), event) => Some(task.evolve(event, at)),
                (None, _) => None,
            };
        }
        state
    }

    /// Applies one event that happened at `at`.
    pub fn evolve(mut self, event: &Event, at: DateTime<Utc>) -> Self {
        match event {
            Event::TaskClaimed(e) => {
                self.status = TaskStatus::Running;
                self.attempt = e.attempt;
                self.worker = Some(e.worker_id);
                self.claimed_at = Some(at);
                self.queue_delivery = e.queue_seq.zip(e.queue_delivered);
                self.not_before = None;
            }
            Event::TaskCompleted(_) => {
                self.status = TaskStatus::Succeeded;
                self.worker = None;
            }
            Event::TaskFailed(e) => {
                self.reasons.push(e.reason.clone());
                self.worker = None;
                // Queued again at once: the `TaskRetried` that follows sets the backoff, and a
                // task whose retry was never appended (the append failed between the two) is
                // still claimable rather than running with no worker for ever.
                self.status = if e.last {
                    TaskStatus::Failed
                } else {
                    TaskStatus::Queued
                };
                if !e.last {
                    self.queued_at = Some(at);
                }
            }
            Event::TaskRetried(e) => {
                self.status = TaskStatus::Queued;
                self.not_before = Some(e.not_before);
                self.queued_at = Some(e.not_before);
            }
            Event::TaskCancelled(_) => {
                self.status = TaskStatus::Cancelled;
                self.worker = None;
            }
            Event::TaskReleased(e) => {
                // The next claim runs the same attempt number again: it did not count.
                self.status = TaskStatus::Queued;
                self.worker = None;
                self.attempt = e.attempt.saturating_sub(1);
                self.queued_at = Some(at);
                self.not_before = None;
            }
            _ => {}
        }
        self
    }

    /// Whether a lease's delivery (stream sequence, delivery count) is the running attempt's
    /// own; a claim recorded without one (before it was kept) accepts any lease of the tenant.
    pub fn lease_is(&self, lease: Option<(u64, u64)>) -> bool {
        self.queue_delivery.is_none() || self.queue_delivery == lease
    }

    /// Whether `worker` holds attempt `attempt` now.
    pub fn held_by(&self, worker: Uuid, attempt: u32) -> bool {
        self.status == TaskStatus::Running && self.worker == Some(worker) && self.attempt == attempt
    }

    /// What a heartbeat from `worker` for `attempt` is answered.
    pub fn heartbeat(&self, worker: Uuid, attempt: u32) -> HeartbeatAnswer {
        if self.held_by(worker, attempt) {
            HeartbeatAnswer::Continue
        } else if self.status == TaskStatus::Cancelled {
            HeartbeatAnswer::Cancel
        } else {
            HeartbeatAnswer::Lost
        }
    }

    /// When the running attempt times out.
    pub fn deadline(&self) -> Option<DateTime<Utc>> {
        (self.status == TaskStatus::Running)
            .then_some(self.claimed_at?)
            .map(|at| at + Duration::seconds(i64::from(self.timeout_secs)))
    }

    /// Decides a command into the events to append.
    pub fn decide(&self, command: &TaskCommand) -> Result<Vec<Event>, TaskError> {
        let id = self.id;
        match command {
            TaskCommand::Claim {
                worker,
                lease_secs,
                queue_delivery,
                now,
            } => {
                if self.status != TaskStatus::Queued {
                    return Err(TaskError::NotQueued(self.status.as_str()));
                }
                if let Some(due) = self.not_before.filter(|due| due > now) {
                    return Err(TaskError::NotDue(due));
                }
                Ok(vec![Event::TaskClaimed(TaskClaimed {
                    task_id: id,
                    attempt: self.attempt + 1,
                    worker_id: *worker,
                    lease_secs: *lease_secs,
                    queue_seq: queue_delivery.map(|(seq, _)| seq),
                    queue_delivered: queue_delivery.map(|(_, delivered)| delivered),
                })])
            }
            TaskCommand::Complete {
                worker,
                attempt,
                result,
            } => {
                if let Some(refused) = self.refuse(*worker, *attempt) {
                    return Ok(vec![refused]);
                }
                Ok(vec![Event::TaskCompleted(TaskCompleted {
                    task_id: id,
                    attempt: *attempt,
                    worker_id: *worker,
                    result: result.clone(),
                })])
            }
            TaskCommand::Fail {
                worker,
                attempt,
                reason,
                now,
            } => {
                if let Some(refused) = self.refuse(*worker, *attempt) {
                    return Ok(vec![refused]);
                }
                Ok(self.fail_attempt(Some(*worker), reason.clone(), *now))
            }
            TaskCommand::Release {
                worker,
                attempt,
                reason,
            } => {
                if let Some(refused) = self.refuse(*worker, *attempt) {
                    return Ok(vec![refused]);
                }
                Ok(vec![Event::TaskReleased(TaskReleased {
                    task_id: id,
                    attempt: *attempt,
                    worker_id: *worker,
                    reason: reason.clone(),
                })])
            }
            TaskCommand::ExpireLease { now } => {
                let Some(worker) = self.worker.filter(|_| self.status == TaskStatus::Running)
                else {
                    return Err(TaskError::NotRunning);
                };
                let mut events = vec![Event::TaskLeaseExpired(TaskLeaseExpired {
                    task_id: id,
                    attempt: self.attempt,
                    worker_id: worker,
                })];
                events.extend(self.fail_attempt(
                    Some(worker),
                    format!("attempt {}: lease of worker {worker} expired", self.attempt),
                    *now,
                ));
                Ok(events)
            }
            TaskCommand::TimeOut { now } => {
                let deadline = self.deadline().ok_or(TaskError::NotRunning)?;
                if *now < deadline {
                    return Err(TaskError::NotTimedOut);
                }
                Ok(self.fail_attempt(
                    self.worker,
                    format!(
                        "attempt {}: timed out after {}s",
                        self.attempt, self.timeout_secs
                    ),
                    *now,
                ))
            }
            TaskCommand::Cancel { actor } => {
                if self.status.is_final() {
                    return Err(TaskError::Finished(self.status.as_str()));
                }
                Ok(vec![Event::TaskCancelled(TaskCancelled {
                    task_id: id,
                    actor: actor.clone(),
                })])
            }
        }
    }

    /// The recorded refusal of an outcome from a worker that does not hold the attempt.
    fn refuse(&self, worker: Uuid, attempt: u32) -> Option<Event> {
        if self.held_by(worker, attempt) {
            return None;
        }
        let why = match self.status {
            TaskStatus::Cancelled => "the task was cancelled".to_owned(),
            status if status.is_final() => format!("the task is already {}", status.as_str()),
            _ if self.attempt != attempt => format!(
                "attempt {attempt} is over (lease expired or timed out); attempt {} is current",
                self.attempt
            ),
            _ => "the worker does not hold this attempt".to_owned(),
        };
        Some(Event::TaskOutcomeRefused(TaskOutcomeRefused {
            task_id: self.id,
            attempt,
            worker_id: worker,
            why,
        }))
    }

    /// The running attempt failed: retried with backoff, or the task fails for good.
    fn fail_attempt(&self, worker: Option<Uuid>, reason: String, now: DateTime<Utc>) -> Vec<Event> {
        let last = self.attempt >= self.max_attempts;
        let mut events = vec![Event::TaskFailed(TaskFailed {
            task_id: self.id,
            attempt: self.attempt,
            worker_id: worker,
            reason,
            last,
        })];
        if !last {
            events.push(Event::TaskRetried(TaskRetried {
                task_id: self.id,
                next_attempt: self.attempt + 1,
                not_before: now + backoff(self.attempt),
            }));
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn new_task(max_attempts: u32, timeout_secs: u32) -> Task {
        Task::created(&TaskCreated {
            task_id: Uuid::from_u128(1),
            kind: "promql.snapshot".into(),
            input: serde_json::json!({}),
            priority: 5,
            timeout_secs,
            max_attempts,
            incident_id: None,
            actor: "u1".into(),
        })
    }

    fn apply(task: Task, command: TaskCommand, now: DateTime<Utc>) -> (Task, Vec<Event>) {
        let events = task.decide(&command).expect("command applies");
        let task = events.iter().fold(task, |t, e| t.evolve(e, now));
        (task, events)
    }

    fn claim(worker: u128, now: i64) -> TaskCommand {
        TaskCommand::Claim {
            worker: Uuid::from_u128(worker),
            lease_secs: 30,
            queue_delivery: None,
            now: at(now),
        }
    }

    #[test]
    fn a_claimed_task_completes_when_its_holder_reports_success() {
        let (task, _) = apply(new_task(3, 60), claim(7, 0), at(0));

        let (task, events) = apply(
            task,
            TaskCommand::Complete {
                worker: Uuid::from_u128(7),
                attempt: 1,
                result: serde_json::json!({"ok": true}),
            },
            at(5),
        );

        assert!(matches!(events[..], [Event::TaskCompleted(_)]));
        assert_eq!(task.status, TaskStatus::Succeeded);
    }

    #[test]
    fn a_released_attempt_is_queued_at_once_and_does_not_count_against_max_attempts() {
        let (task, _) = apply(new_task(1, 60), claim(7, 0), at(0));

        let (task, events) = apply(
            task,
            TaskCommand::Release {
                worker: Uuid::from_u128(7),
                attempt: 1,
                reason: "draining".into(),
            },
            at(1),
        );
        let late = task
            .decide(&TaskCommand::Complete {
                worker: Uuid::from_u128(7),
                attempt: 1,
                result: serde_json::json!(1),
            })
            .unwrap();
        let (again, _) = apply(task, claim(8, 1), at(1));

        assert!(matches!(events[..], [Event::TaskReleased(_)]));
        assert!(matches!(late[..], [Event::TaskOutcomeRefused(_)]));
        assert_eq!(again.status, TaskStatus::Running);
        assert_eq!(again.attempt, 1, "the only attempt runs again");
    }

    #[test]
    fn a_failed_attempt_whose_retry_was_never_appended_is_still_claimable() {
        let (task, _) = apply(new_task(3, 60), claim(7, 0), at(0));
        let events = task
            .decide(&TaskCommand::Fail {
                worker: Uuid::from_u128(7),
                attempt: 1,
                reason: "boom".into(),
                now: at(1),
            })
            .unwrap();

        // Only the failure got appended; the append of its retry failed.
        let task = task.evolve(&events[0], at(1));

        assert_eq!(task.status, TaskStatus::Queued);
        assert!(task.decide(&claim(8, 2)).is_ok());
    }

    #[test]
    fn failures_are_retried_with_growing_backoff_then_fail_for_good_keeping_every_reason() {
        let mut task = new_task(3, 60);
        let mut now = 0;
        for attempt in 1..=3 {
            task = apply(task, claim(7, now), at(now)).0;
            let (next, events) = apply(
                task,
                TaskCommand::Fail {
                    worker: Uuid::from_u128(7),
                    attempt,
                    reason: format!("boom {attempt}"),
                    now: at(now),
                },
                at(now),
            );
            task = next;
            if attempt < 3 {
                let Event::TaskRetried(retry) = &events[1] else {
                    panic!("expected a retry, got {events:?}")
                };
                assert_eq!(retry.not_before, at(now) + backoff(attempt));
                assert_eq!(
                    task.decide(&claim(7, now)).unwrap_err(),
                    TaskError::NotDue(retry.not_before)
                );
                now += backoff(attempt).num_seconds();
            } else {
                assert_eq!(events.len(), 1, "no retry after the last attempt");
            }
        }

        assert_eq!(task.status, TaskStatus::Failed);
        assert_eq!(task.reasons, ["boom 1", "boom 2", "boom 3"]);
        assert!(backoff(1) < backoff(2));
        assert_eq!(backoff(30), Duration::seconds(MAX_BACKOFF_SECS));
    }

    #[test]
    fn a_late_completion_after_the_lease_expired_is_refused_and_recorded() {
        let (task, _) = apply(new_task(3, 60), claim(7, 0), at(0));
        let (task, expired) = apply(task, TaskCommand::ExpireLease { now: at(31) }, at(31));
        assert!(matches!(expired[0], Event::TaskLeaseExpired(_)));
        let (task, _) = apply(task, claim(8, 40), at(40));

        let events = task
            .decide(&TaskCommand::Complete {
                worker: Uuid::from_u128(7),
                attempt: 1,
                result: serde_json::json!(null),
            })
            .unwrap();

        assert!(
            matches!(&events[..], [Event::TaskOutcomeRefused(r)] if r.attempt == 1 && r.why.contains("attempt 2 is current"))
        );
        assert_eq!(task.heartbeat(Uuid::from_u128(7), 1), HeartbeatAnswer::Lost);
        assert_eq!(
            task.heartbeat(Uuid::from_u128(8), 2),
            HeartbeatAnswer::Continue
        );
    }

    #[test]
    fn an_attempt_past_its_timeout_fails_even_while_its_worker_heartbeats() {
        let (task, _) = apply(new_task(1, 10), claim(7, 0), at(0));
        assert_eq!(
            task.decide(&TaskCommand::TimeOut { now: at(9) })
                .unwrap_err(),
            TaskError::NotTimedOut
        );

        let (task, events) = apply(task, TaskCommand::TimeOut { now: at(10) }, at(10));

        assert!(
            matches!(&events[..], [Event::TaskFailed(f)] if f.last && f.reason.contains("timed out after 10s"))
        );
        assert_eq!(task.status, TaskStatus::Failed);
    }

    #[test]
    fn cancel_ends_a_queued_or_running_task_and_the_worker_learns_it_on_its_heartbeat() {
        let (queued, _) = apply(
            new_task(3, 60),
            TaskCommand::Cancel { actor: "u1".into() },
            at(0),
        );
        assert_eq!(queued.status, TaskStatus::Cancelled);
        assert_eq!(
            queued.decide(&claim(7, 1)).unwrap_err(),
            TaskError::NotQueued("cancelled")
        );

        let (running, _) = apply(new_task(3, 60), claim(7, 0), at(0));
        let (running, _) = apply(running, TaskCommand::Cancel { actor: "u1".into() }, at(1));

        assert_eq!(
            running.heartbeat(Uuid::from_u128(7), 1),
            HeartbeatAnswer::Cancel
        );
        assert!(matches!(
            &running.decide(&TaskCommand::Complete {
                worker: Uuid::from_u128(7),
                attempt: 1,
                result: serde_json::json!(1)
            }).unwrap()[..],
            [Event::TaskOutcomeRefused(r)] if r.why == "the task was cancelled"
        ));
        assert_eq!(
            running
                .decide(&TaskCommand::Cancel { actor: "u1".into() })
                .unwrap_err(),
            TaskError::Finished("cancelled")
        );
    }

    #[test]
    fn a_running_task_cannot_be_claimed_twice() {
        let (task, _) = apply(new_task(3, 60), claim(7, 0), at(0));

        assert_eq!(
            task.decide(&claim(8, 0)).unwrap_err(),
            TaskError::NotQueued("running")
        );
    }

    #[test]
    fn new_tasks_are_checked_field_by_field() {
        assert!(validate_new("promql.snapshot", 9, 60, 3).is_ok());
        assert_eq!(validate_new("nope", 0, 60, 3).unwrap_err().0, "kind");
        assert_eq!(
            validate_new("promql.snapshot", 10, 60, 3).unwrap_err().0,
            "priority"
        );
        assert_eq!(
            validate_new("promql.snapshot", 1, 0, 3).unwrap_err().0,
            "timeout_secs"
        );
        assert_eq!(
            validate_new("promql.snapshot", 1, 60, 0).unwrap_err().0,
            "max_attempts"
        );
    }
}
