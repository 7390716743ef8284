//! Task routes: create, read and cancel tasks. The routes only translate: every decision is the
//! task commands' (`copilot_commands::create_task`, `cancel_task`), and a task is read back from
//! its own events, so a task is visible the moment it is created.

use axum::{
    Json,
    extract::{Path, State, rejection::JsonRejection},
    http::StatusCode,
};
use copilot_commands::{NewTask, tasks::Task};
use copilot_runtime::http::{ApiError, EventOrigin};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Api, Caller, incidents::body};

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
    /// A kind some worker runs: `promql.snapshot`, `hypotheses.refresh`.
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

/// A task as its events say.
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
    /// Every failed attempt's reason, in order.
    pub reasons: Vec<String>,
}

fn view(task: Task, created: copilot_events::TaskCreated) -> TaskView {
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
        reasons: task.reasons,
    }
}

async fn read(api: &Api, tenant: &str, id: Uuid) -> Result<TaskView, ApiError> {
    let (task, created, _) = copilot_commands::load_task(&api.ctx.js, tenant, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(view(task, created))
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
    Ok((StatusCode::CREATED, Json(read(&api, tenant, id).await?)))
}

pub async fn get(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    Ok(Json(read(&api, &caller.0.tenant, id).await?))
}

pub async fn cancel(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
    origin: EventOrigin,
) -> Result<Json<TaskView>, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    let tenant = &caller.0.tenant;
    copilot_commands::cancel_task(&api.ctx.js, tenant, id, &caller.0.sub, origin.0).await?;
    Ok(Json(read(&api, tenant, id).await?))
}
