//! Task routes: create, list, read, cancel and follow the logs of tasks (people, with their
//! JWTs). The routes only translate: every decision is the task commands' (`copilot_commands::
//! create_task`, `cancel_task`), and reads come from the `tasks` and `task_logs` read models,
//! waited for after a command so a caller sees its own effect.

use std::time::Duration;

use axum::{
    Json,
    extract::{Path, Query, State, rejection::JsonRejection, rejection::QueryRejection},
    http::StatusCode,
    response::{IntoResponse, Response, sse},
};
use chrono::{DateTime, Utc};
use copilot_commands::{NewTask, tasks::Task};
use copilot_runtime::http::{ApiError, EventOrigin};
use copilot_store::{TaskCursor, TaskFilter, TaskSummary, checkpoints};
use futures::StreamExt as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    Api, Caller,
    incidents::{bad, body},
    page,
};

/// How long a command's answer waits for the tasks projection to show its effect.
const PROJECTION_WAIT: Duration = Duration::from_secs(5);
/// How often a followed log looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// The longest a log is followed in one request; the client reconnects with its cursor.
const FOLLOW_FOR: Duration = Duration::from_secs(3600);

fn default_priority() -> u8 {
    5
}
fn default_timeout() -> u32 {
    600
}
fn default_attempts() -> u32 {
    3
}

/// A task to run.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTaskBody {
    /// A kind some worker runs: `promql.snapshot`, `hypotheses.refresh`, `echo`.
    pub kind: String,
    /// The kind's input.
    #[serde(default)]
    pub input: serde_json::Value,
    /// 0 to 9, higher first (default 5).
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// An attempt running longer fails (default 600).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u32,
    /// Attempts before the task fails for good (default 3).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    pub incident_id: Option<Uuid>,
}

/// A task.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TaskView {
    pub id: Uuid,
    pub kind: String,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    pub priority: u8,
    pub timeout_secs: u32,
    pub max_attempts: u32,
    /// The attempt running, or the last one run (0 before any).
    pub attempt: u32,
    pub worker_id: Option<Uuid>,
    pub incident_id: Option<Uuid>,
    pub input: serde_json::Value,
    /// What the worker answered, once the task succeeded.
    pub result: Option<serde_json::Value>,
    /// Every failed attempt's reason, in order.
    pub reasons: Vec<String>,
    /// The running attempt's last progress, 0 to 100.
    pub progress: Option<u8>,
    pub progress_message: Option<String>,
    /// Outcomes reported by workers that no longer held their attempt (refused).
    pub refused_outcomes: u32,
    pub lease_expiries: u32,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub claimed_at: Option<DateTime<Utc>>,
    /// A retry waiting for its backoff is not claimed before this.
    pub not_before: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub cancelled_by: Option<String>,
}

impl From<TaskSummary> for TaskView {
    fn from(t: TaskSummary) -> Self {
        Self {
            id: t.task_id,
            kind: t.kind,
            status: t.status,
            priority: t.priority as u8,
            timeout_secs: t.timeout_secs as u32,
            max_attempts: t.max_attempts as u32,
            attempt: t.attempt as u32,
            worker_id: t.worker_id,
            incident_id: t.incident_id,
            input: t.input,
            result: t.result,
            reasons: serde_json::from_value(t.reasons).unwrap_or_default(),
            progress: t.progress.map(|p| p as u8),
            progress_message: t.progress_message,
            refused_outcomes: t.refused_outcomes as u32,
            lease_expiries: t.lease_expiries as u32,
            created_by: t.created_by,
            created_at: t.created_at,
            claimed_at: t.claimed_at,
            not_before: t.not_before,
            finished_at: t.finished_at,
            cancelled_by: t.cancelled_by,
        }
    }
}

/// The task as its own events say, for when the projection has not caught up: what the events
/// of its lifecycle give (no result, progress or refusal counts, which the read model keeps).
fn from_events(task: Task, created: copilot_events::TaskCreated) -> TaskView {
    TaskView {
        id: task.id,
        kind: task.kind,
        status: task.status.as_str().to_owned(),
        priority: task.priority,
        timeout_secs: task.timeout_secs,
        max_attempts: task.max_attempts,
        attempt: task.attempt,
        worker_id: task.worker,
        incident_id: created.incident_id,
        input: created.input,
        result: None,
        reasons: task.reasons,
        progress: None,
        progress_message: None,
        refused_outcomes: 0,
        lease_expiries: 0,
        created_by: created.actor,
        created_at: task.created_at.unwrap_or_default(),
        claimed_at: task.claimed_at,
        not_before: task.not_before,
        finished_at: None,
        cancelled_by: None,
    }
}

/// The task after a command: from the read model once it shows the task's last event, from
/// the events when the projection is slow.
async fn read_after_command(api: &Api, tenant: &str, id: Uuid) -> Result<TaskView, ApiError> {
    let (task, created, last) = copilot_commands::load_task(&api.ctx.js, tenant, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let store = &api.ctx.store;
    if store
        .wait_for_checkpoint(checkpoints::TASKS, last, PROJECTION_WAIT, |_| {})
        .await?
        && let Some(row) = store
            .get_task(&mut api.tenant_tx(tenant).await?, tenant, id)
            .await?
    {
        return Ok(row.into());
    }
    Ok(from_events(task, created))
}

pub async fn create(
    State(api): State<Api>,
    caller: Caller,
    origin: EventOrigin,
    payload: Result<Json<CreateTaskBody>, JsonRejection>,
) -> Result<(StatusCode, Json<TaskView>), ApiError> {
    let b = body(payload)?;
    let tenant = &caller.0.tenant;
    let new = NewTask {
        kind: b.kind,
        input: b.input,
        priority: b.priority,
        timeout_secs: b.timeout_secs,
        max_attempts: b.max_attempts,
        incident_id: b.incident_id,
    };
    let id =
        copilot_commands::create_task(&api.ctx.js, tenant, &caller.0.sub, new, origin.0).await?;
    Ok((
        StatusCode::CREATED,
        Json(read_after_command(&api, tenant, id).await?),
    ))
}

fn task_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::NotFound)
}

pub async fn get(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    let tenant = &caller.0.tenant;
    let id = task_id(&id)?;
    let store = &api.ctx.store;
    match store
        .get_task(&mut api.tenant_tx(tenant).await?, tenant, id)
        .await?
    {
        Some(row) => Ok(Json(row.into())),
        // Created a moment ago and not projected yet: its events are the truth.
        None => Ok(Json(read_after_command(&api, tenant, id).await?)),
    }
}

pub async fn cancel(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
    origin: EventOrigin,
) -> Result<Json<TaskView>, ApiError> {
    let id = task_id(&id)?;
    let tenant = &caller.0.tenant;
    copilot_commands::cancel_task(&api.ctx.js, tenant, id, &caller.0.sub, origin.0).await?;
    Ok(Json(read_after_command(&api, tenant, id).await?))
}

/// Filters of the task listing.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(rename = "TaskQuery")]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    #[schemars(extend("enum" = ["queued", "running", "succeeded", "failed", "cancelled"]))]
    status: Option<String>,
    kind: Option<String>,
    incident_id: Option<Uuid>,
    /// Created at or after.
    since: Option<DateTime<Utc>>,
    /// Created before.
    until: Option<DateTime<Utc>>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// 1 to 500 [default: 50].
    limit: Option<u32>,
}

/// A page of tasks, newest first.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TaskPage {
    items: Vec<TaskView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

const STATUSES: [&str; 5] = ["queued", "running", "succeeded", "failed", "cancelled"];

pub async fn list(
    State(api): State<Api>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<TaskPage>, ApiError> {
    let Query(q) = query.map_err(|e| bad(e.body_text()))?;
    if let Some(status) = q.status.as_deref()
        && !STATUSES.contains(&status)
    {
        return Err(bad(format!(
            "status must be one of {}",
            STATUSES.join(", ")
        )));
    }
    let limit = page::limit(q.limit, page::DEFAULT_LIMIT)?;
    let cursor = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let filter = TaskFilter {
        status: q.status,
        kind: q.kind,
        incident_id: q.incident_id,
        since: q.since,
        until: q.until,
    };
    let tenant = &caller.0.tenant;
    let mut items = api
        .ctx
        .store
        .list_tasks(
            &mut api.tenant_tx(tenant).await?,
            tenant,
            &filter,
            cursor,
            limit + 1,
        )
        .await?;
    let next_cursor = page::next(&mut items, limit, |last| {
        encode_cursor(TaskCursor {
            at: last.created_at,
            id: last.task_id,
        })
    });
    Ok(Json(TaskPage {
        items: items.into_iter().map(TaskView::from).collect(),
        next_cursor,
    }))
}

fn encode_cursor(c: TaskCursor) -> String {
    page::CursorWriter::default().time(c.at).id(c.id).finish()
}

fn decode_cursor(text: &str) -> Result<TaskCursor, ApiError> {
    let mut reader = page::CursorReader::new(text)?;
    let cursor = TaskCursor {
        at: reader.time()?,
        id: reader.id()?,
    };
    reader.done()?;
    Ok(cursor)
}

/// Which lines of a task's log.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(rename = "TaskLogQuery")]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// The `next_cursor` of the previous page (or the `id` of the last server-sent event; a
    /// `Last-Event-ID` header, as an EventSource sends when it reconnects, wins).
    after: Option<String>,
    /// 1 to 500 lines [default: 500].
    limit: Option<u32>,
    /// Keep the response open and send new lines as server-sent events (`text/event-stream`):
    /// one `line` event per line, then an `end` event with the task's final status.
    #[serde(default)]
    follow: bool,
}

/// One log line of a task.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TaskLogLineView {
    pub attempt: u32,
    pub at: DateTime<Utc>,
    pub line: String,
    /// Where this line is: pass as `after` to read what follows.
    pub cursor: String,
}

/// A page of a task's log, oldest first.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TaskLogPage {
    pub lines: Vec<TaskLogLineView>,
    /// What to pass as `after` for the lines that follow (also when there are none yet).
    pub next_cursor: String,
    /// The task's status when read: once final and the page is short, the log is complete.
    pub status: String,
}

fn log_cursor((seq, line): (i64, i32)) -> String {
    format!("{seq}.{line}")
}

fn parse_log_cursor(text: &str) -> Result<(i64, i32), ApiError> {
    text.split_once('.')
        .and_then(|(s, l)| Some((s.parse().ok()?, l.parse().ok()?)))
        .ok_or_else(|| bad("after must be a cursor this API gave"))
}

/// One page of the log after `after`, with the task's status as read in the same transaction.
async fn log_page(
    api: &Api,
    tenant: &str,
    id: Uuid,
    after: (i64, i32),
    limit: u32,
) -> Result<TaskLogPage, ApiError> {
    let store = &api.ctx.store;
    let mut tx = api.tenant_tx(tenant).await?;
    let task = store
        .get_task(&mut tx, tenant, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let lines = store.task_log(&mut tx, tenant, id, after, limit).await?;
    let next = lines.last().map_or(after, |l| (l.seq, l.line_no));
    Ok(TaskLogPage {
        lines: lines
            .into_iter()
            .map(|l| TaskLogLineView {
                cursor: log_cursor((l.seq, l.line_no)),
                attempt: l.attempt as u32,
                at: l.at,
                line: l.line,
            })
            .collect(),
        next_cursor: log_cursor(next),
        status: task.status,
    })
}

pub async fn logs(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| bad(e.body_text()))?;
    let id = task_id(&id)?;
    let limit = page::limit(q.limit, page::MAX_LIMIT)?;
    // A browser's EventSource reconnects with the id of the last event it got, not the query's
    // cursor: resume from there rather than replaying the whole log.
    let resumed = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let after = resumed
        .or(q.after)
        .as_deref()
        .map(parse_log_cursor)
        .transpose()?
        .unwrap_or((0, -1));
    let tenant = caller.0.tenant.clone();
    let first = log_page(&api, &tenant, id, after, limit).await?;
    if !q.follow {
        return Ok(Json(first).into_response());
    }
    let events = follow(api, tenant, id, first, limit);
    Ok(sse::Sse::new(events)
        .keep_alive(sse::KeepAlive::default())
        .into_response())
}

/// The log as server-sent events: the lines there are, then new ones as they are projected,
/// until the task has ended and its last lines are sent.
fn follow(
    api: Api,
    tenant: String,
    id: Uuid,
    first: TaskLogPage,
    limit: u32,
) -> impl futures::Stream<Item = Result<sse::Event, std::convert::Infallible>> {
    let started = tokio::time::Instant::now();
    futures::stream::unfold((Some(first), false), move |(page, ended)| {
        let (api, tenant) = (api.clone(), tenant.clone());
        async move {
            if ended {
                return None;
            }
            let mut page = page?;
            loop {
                let finished = STATUSES[2..].contains(&page.status.as_str());
                if !page.lines.is_empty() || finished {
                    let complete = finished && page.lines.len() < limit as usize;
                    let mut events: Vec<sse::Event> = page
                        .lines
                        .drain(..)
                        .map(|l| {
                            sse::Event::default()
                                .event("line")
                                .id(l.cursor.clone())
                                .json_data(&l)
                                .expect("a log line serializes")
                        })
                        .collect();
                    if complete {
                        events.push(
                            sse::Event::default()
                                .event("end")
                                .data(serde_json::json!({"status": page.status}).to_string()),
                        );
                    }
                    let after = parse_log_cursor(&page.next_cursor).ok()?;
                    let next = (!complete).then_some(()).map(|_| TaskLogPage {
                        lines: Vec::new(),
                        next_cursor: log_cursor(after),
                        status: String::from("running"),
                    });
                    return Some((
                        futures::stream::iter(events.into_iter().map(Ok)),
                        (next, complete),
                    ));
                }
                if started.elapsed() > FOLLOW_FOR {
                    return None;
                }
                tokio::time::sleep(FOLLOW_POLL).await;
                let after = parse_log_cursor(&page.next_cursor).ok()?;
                page = log_page(&api, &tenant, id, after, limit).await.ok()?;
            }
        }
    })
    .flatten()
}
