//! Worker routes. The worker protocol (a worker token, `Authorization: Bearer cpk_…`): register,
//! heartbeat (which also extends the leases of the tasks held and says which to stop), claim
//! with a long poll, and report progress, log lines and the outcome of an attempt. People read
//! workers with their JWTs, and admins issue and revoke worker tokens. Every route translates
//! to the commands crate's task and worker commands, as the native `copilot worker` does.

use axum::{
    Json,
    extract::{Path, State, rejection::JsonRejection},
    http::StatusCode,
};
use chrono::{DateTime, Utc};
use copilot_commands::{CommandError, tasks::HeartbeatAnswer};
use copilot_runtime::http::{ApiError, EventOrigin};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Api, Caller, incidents::body};

/// An id in the path; anything else names nothing (404).
fn path_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::NotFound)
}

/// The longest a claim waits for a task.
pub const MAX_CLAIM_WAIT_SECS: u32 = 30;

/// A worker announcing itself.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    /// A name people recognise (host, pool).
    pub name: String,
    /// The kinds it runs.
    pub kinds: Vec<String>,
    /// How many tasks it runs at once (1 to 64, default 1).
    #[serde(default = "one")]
    pub capacity: u32,
}

fn one() -> u32 {
    1
}

/// What a registered worker needs to know.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Registered {
    pub worker_id: Uuid,
    /// A held task is lost after this long without a heartbeat.
    pub lease_secs: u64,
    /// Heartbeat at least this often.
    pub heartbeat_secs: u64,
}

pub async fn register(
    State(api): State<Api>,
    caller: Caller,
    origin: EventOrigin,
    payload: Result<Json<RegisterBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Registered>), ApiError> {
    let b = body(payload)?;
    let worker = copilot_commands::NewWorker {
        name: b.name,
        kinds: b.kinds,
        capacity: b.capacity,
    };
    let worker_id =
        copilot_commands::register_worker(&api.ctx.js, &caller.0.tenant, worker, origin.0).await?;
    let lease_secs = api.ctx.settings.tasks.task_lease_secs;
    Ok((
        StatusCode::CREATED,
        Json(Registered {
            worker_id,
            lease_secs,
            heartbeat_secs: (lease_secs / 3).max(1),
        }),
    ))
}

/// A task a worker holds, as its claim gave it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeldTask {
    pub task_id: Uuid,
    pub attempt: u32,
    /// The claim's `lease`.
    pub lease: String,
}

/// A worker is alive, holding these tasks.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    pub worker_id: Uuid,
    #[serde(default)]
    pub tasks: Vec<HeldTask>,
}

/// What to do with one held task.
#[derive(Debug, Serialize, JsonSchema)]
pub struct HeldTaskAnswer {
    pub task_id: Uuid,
    /// `continue` (the lease is extended), `cancel` (the task was cancelled: stop) or `lost`
    /// (the attempt is no longer this worker's: its lease ran out, or it timed out; stop, and
    /// its outcome would be refused).
    #[schemars(extend("enum" = ["continue", "cancel", "lost"]))]
    pub action: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct HeartbeatAnswerBody {
    pub tasks: Vec<HeldTaskAnswer>,
}

pub async fn heartbeat(
    State(api): State<Api>,
    caller: Caller,
    payload: Result<Json<HeartbeatBody>, JsonRejection>,
) -> Result<Json<HeartbeatAnswerBody>, ApiError> {
    let b = body(payload)?;
    let tenant = &caller.0.tenant;
    let js = &api.ctx.js;
    copilot_commands::worker_heartbeat(
        js,
        tenant,
        b.worker_id,
        b.tasks.iter().map(|t| t.task_id).collect(),
    )
    .await?;
    let mut answers = Vec::with_capacity(b.tasks.len());
    for held in b.tasks {
        // Each held task is answered on its own: one unknown task or a malformed lease must not
        // keep the others' leases from being extended.
        let answer = match copilot_commands::heartbeat_task(
            js,
            tenant,
            b.worker_id,
            held.task_id,
            held.attempt,
            &held.lease,
        )
        .await
        {
            Ok(answer) => answer,
            Err(
                CommandError::NotFound(_) | CommandError::Invalid(_) | CommandError::Conflict(_),
            ) => HeartbeatAnswer::Lost,
            Err(e) => return Err(e.into()),
        };
        answers.push(HeldTaskAnswer {
            task_id: held.task_id,
            action: match answer {
                HeartbeatAnswer::Continue => "continue",
                HeartbeatAnswer::Cancel => "cancel",
                HeartbeatAnswer::Lost => "lost",
            }
            .to_owned(),
        });
    }
    Ok(Json(HeartbeatAnswerBody { tasks: answers }))
}

/// A worker asking for work.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    pub worker_id: Uuid,
    /// Only these of its kinds (default: every kind it registered).
    pub kinds: Option<Vec<String>>,
    /// How long to wait for a task, 0 to 30 seconds (default 20).
    pub wait_secs: Option<u32>,
}

/// An attempt the worker now holds.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ClaimedTask {
    pub task_id: Uuid,
    pub kind: String,
    pub attempt: u32,
    pub input: serde_json::Value,
    pub incident_id: Option<Uuid>,
    pub timeout_secs: u32,
    /// Opaque: send it back with heartbeats and the outcome.
    pub lease: String,
    /// The lease runs out after this long without a heartbeat (the queue's own, which may
    /// differ from what registration said): heartbeat at least every third of it.
    pub lease_secs: u32,
}

pub async fn claim(
    State(api): State<Api>,
    caller: Caller,
    payload: Result<Json<ClaimBody>, JsonRejection>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    let b = body(payload)?;
    let tenant = &caller.0.tenant;
    let wait = b.wait_secs.unwrap_or(20);
    if wait > MAX_CLAIM_WAIT_SECS {
        return Err(ApiError::Unprocessable(format!(
            "wait_secs: must be 0 to {MAX_CLAIM_WAIT_SECS}"
        )));
    }
    let registered = copilot_commands::live_worker(&api.ctx.js, tenant, b.worker_id).await?;
    let kinds = match b.kinds {
        Some(kinds) => {
            if let Some(other) = kinds.iter().find(|k| !registered.kinds.contains(k)) {
                return Err(ApiError::Unprocessable(format!(
                    "kinds: the worker did not register {other:?}"
                )));
            }
            kinds
        }
        None => registered.kinds,
    };
    let claim = copilot_commands::claim_next(
        &api.ctx.js,
        tenant,
        b.worker_id,
        &kinds,
        std::time::Duration::from_secs(u64::from(wait)),
        api.ctx.settings.tasks.lease(),
    )
    .await?;
    Ok(match claim {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(c) => Json(ClaimedTask {
            task_id: c.task.id,
            kind: c.task.kind,
            attempt: c.task.attempt,
            input: c.input,
            incident_id: c.incident_id,
            timeout_secs: c.task.timeout_secs,
            lease: c.lease,
            lease_secs: c.lease_secs,
        })
        .into_response(),
    })
}

/// Progress and log lines of an attempt.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportBody {
    /// The worker running the attempt.
    pub worker_id: Uuid,
    pub attempt: u32,
    /// 0 to 100.
    pub percent: Option<u8>,
    pub message: Option<String>,
    /// Up to 1000 lines of up to 8 KiB.
    #[serde(default)]
    pub lines: Vec<String>,
}

pub async fn report(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
    payload: Result<Json<ReportBody>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let id = path_id(&id)?;
    let b = body(payload)?;
    let progress = b.percent.map(|p| (p, b.message));
    copilot_commands::report_task(
        &api.ctx.js,
        &caller.0.tenant,
        b.worker_id,
        id,
        b.attempt,
        progress,
        b.lines,
    )
    .await?;
    Ok(StatusCode::ACCEPTED)
}

/// The outcome of an attempt the worker holds.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutcomeBody {
    pub worker_id: Uuid,
    pub attempt: u32,
    /// The claim's `lease`.
    pub lease: String,
    /// With `complete`: what the task produced.
    #[serde(default)]
    pub result: serde_json::Value,
    /// With `fail`: why (1 to 10,000 bytes).
    pub reason: Option<String>,
}

/// The outcome as recorded.
#[derive(Debug, Serialize, JsonSchema)]
pub struct OutcomeAnswer {
    pub task_id: Uuid,
    pub accepted: bool,
}

async fn finish(
    api: &Api,
    caller: &Caller,
    id: Uuid,
    b: OutcomeBody,
    outcome: Result<serde_json::Value, String>,
) -> Result<Json<OutcomeAnswer>, ApiError> {
    let accepted = copilot_commands::finish_task(
        &api.ctx.js,
        &caller.0.tenant,
        b.worker_id,
        id,
        b.attempt,
        &b.lease,
        outcome,
    )
    .await?;
    accepted_or_conflict(id, accepted)
}

/// The answer to an outcome or a hand-back: 409 when the attempt was no longer the worker's.
fn accepted_or_conflict(id: Uuid, accepted: bool) -> Result<Json<OutcomeAnswer>, ApiError> {
    if !accepted {
        return Err(ApiError::Conflict(
            "the attempt is no longer this worker's (its lease ran out, it timed out, or the task was cancelled); what it reported was recorded as refused".into(),
        ));
    }
    Ok(Json(OutcomeAnswer {
        task_id: id,
        accepted,
    }))
}

pub async fn complete(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
    payload: Result<Json<OutcomeBody>, JsonRejection>,
) -> Result<Json<OutcomeAnswer>, ApiError> {
    let id = path_id(&id)?;
    let mut b = body(payload)?;
    let result = std::mem::take(&mut b.result);
    finish(&api, &caller, id, b, Ok(result)).await
}

pub async fn fail(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
    payload: Result<Json<OutcomeBody>, JsonRejection>,
) -> Result<Json<OutcomeAnswer>, ApiError> {
    let id = path_id(&id)?;
    let mut b = body(payload)?;
    let reason = b
        .reason
        .take()
        .ok_or_else(|| ApiError::Unprocessable("reason: say why the attempt failed".into()))?;
    finish(&api, &caller, id, b, Err(reason)).await
}

/// Hands back an attempt the worker holds but will not finish (it is stopping): queued again
/// at once for another worker, the attempt not counted. `reason` is optional.
pub async fn release(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
    payload: Result<Json<OutcomeBody>, JsonRejection>,
) -> Result<Json<OutcomeAnswer>, ApiError> {
    let id = path_id(&id)?;
    let b = body(payload)?;
    let reason = b
        .reason
        .unwrap_or_else(|| "handed back by its worker".into());
    // The command checks the reason as it checks a failure's (422 naming the field).
    let accepted = copilot_commands::release_task(
        &api.ctx.js,
        &caller.0.tenant,
        b.worker_id,
        id,
        b.attempt,
        &b.lease,
        &reason,
    )
    .await?;
    accepted_or_conflict(id, accepted)
}

/// A worker stopping.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GoneBody {
    pub worker_id: Uuid,
    /// Why (default `drained`).
    pub reason: Option<String>,
}

pub async fn gone(
    State(api): State<Api>,
    caller: Caller,
    payload: Result<Json<GoneBody>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let b = body(payload)?;
    let reason = b.reason.unwrap_or_else(|| "drained".into());
    copilot_commands::worker_gone(&api.ctx.js, &caller.0.tenant, b.worker_id, &reason).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A worker as people see it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct WorkerView {
    pub id: Uuid,
    pub name: String,
    pub kinds: Vec<String>,
    pub capacity: u32,
    /// `online` (heard from within its lease), `stale` (within five leases) or `offline`
    /// (silent longer, or gone).
    #[schemars(extend("enum" = ["online", "stale", "offline"]))]
    pub status: String,
    pub registered_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    /// The tasks it said it held at its last heartbeat.
    pub holding: Vec<Uuid>,
    pub gone_at: Option<DateTime<Utc>>,
    pub gone_reason: Option<String>,
}

fn worker_view(w: copilot_store::WorkerView, lease_secs: u64, now: DateTime<Utc>) -> WorkerView {
    let silent = (now - w.last_seen_at).num_seconds().max(0) as u64;
    let status = if w.gone_at.is_some() || silent > lease_secs * 5 {
        "offline"
    } else if silent > lease_secs {
        "stale"
    } else {
        "online"
    };
    WorkerView {
        id: w.worker_id,
        name: w.name,
        kinds: serde_json::from_value(w.kinds).unwrap_or_default(),
        capacity: w.capacity as u32,
        status: status.to_owned(),
        registered_at: w.registered_at,
        last_seen_at: w.last_seen_at,
        holding: serde_json::from_value(w.holding).unwrap_or_default(),
        gone_at: w.gone_at,
        gone_reason: w.gone_reason,
    }
}

pub async fn list(
    State(api): State<Api>,
    caller: Caller,
) -> Result<Json<Vec<WorkerView>>, ApiError> {
    let tenant = &caller.0.tenant;
    let lease = api.ctx.settings.tasks.task_lease_secs;
    let now = Utc::now();
    let workers = api
        .ctx
        .store
        .list_workers(&mut api.tenant_tx(tenant).await?, tenant)
        .await?;
    Ok(Json(
        workers
            .into_iter()
            .map(|w| worker_view(w, lease, now))
            .collect(),
    ))
}

pub async fn get(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<WorkerView>, ApiError> {
    let id = path_id(&id)?;
    let tenant = &caller.0.tenant;
    let worker = api
        .ctx
        .store
        .get_worker(&mut api.tenant_tx(tenant).await?, tenant, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(worker_view(
        worker,
        api.ctx.settings.tasks.task_lease_secs,
        Utc::now(),
    )))
}

/// A worker token to issue.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueTokenBody {
    /// What the token is for (a host, a pool), 1 to 100 characters.
    pub name: String,
}

/// A new worker token: the secret is shown this once.
#[derive(Debug, Serialize, JsonSchema)]
pub struct IssuedWorkerToken {
    pub token_id: Uuid,
    pub worker_token: String,
    pub prefix: String,
}

/// A worker token as listed (never the secret).
#[derive(Debug, Serialize, JsonSchema)]
pub struct WorkerTokenView {
    pub token_id: Uuid,
    pub prefix: String,
    pub name: String,
    pub issued_by: String,
    pub issued_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
}

impl From<copilot_store::WorkerTokenView> for WorkerTokenView {
    fn from(t: copilot_store::WorkerTokenView) -> Self {
        Self {
            token_id: t.token_id,
            prefix: t.prefix,
            name: t.name,
            issued_by: t.issued_by,
            issued_at: t.issued_at,
            revoked_at: t.revoked_at,
            revoked_by: t.revoked_by,
        }
    }
}

pub async fn issue_token(
    State(api): State<Api>,
    caller: Caller,
    origin: EventOrigin,
    payload: Result<Json<IssueTokenBody>, JsonRejection>,
) -> Result<(StatusCode, Json<IssuedWorkerToken>), ApiError> {
    let b = body(payload)?;
    let issued = copilot_commands::issue_worker_token(
        &api.ctx.js,
        &api.ctx.store,
        &caller.0.tenant,
        &b.name,
        &caller.0.sub,
        origin.0,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(IssuedWorkerToken {
            token_id: issued.token_id,
            worker_token: issued.worker_token,
            prefix: issued.prefix,
        }),
    ))
}

pub async fn list_tokens(
    State(api): State<Api>,
    caller: Caller,
) -> Result<Json<Vec<WorkerTokenView>>, ApiError> {
    let tenant = &caller.0.tenant;
    let tokens = api
        .ctx
        .store
        .list_worker_tokens(&mut api.tenant_tx(tenant).await?, tenant)
        .await?;
    Ok(Json(tokens.into_iter().map(Into::into).collect()))
}

pub async fn revoke_token(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
    origin: EventOrigin,
) -> Result<StatusCode, ApiError> {
    let id = path_id(&id)?;
    copilot_commands::revoke_worker_token(
        &api.ctx.js,
        &api.ctx.store,
        &caller.0.tenant,
        id,
        &caller.0.sub,
        origin.0,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
