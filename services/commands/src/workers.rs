//! Worker commands: a worker registers the kinds it runs, heartbeats while alive and says when it
//! goes; a tenant admin issues and revokes the worker tokens workers authenticate with. A worker is
//! its own subject on TASKS (`tasks.<tenant>.worker.<id>`), folded into the `workers` read model.

use async_nats::jetstream::{self, stream::DirectGetErrorKind};
use copilot_events::{
    Envelope, Event, Headers, WorkerGone, WorkerHeartbeatRecorded, WorkerRegistered,
    WorkerTokenIssued, WorkerTokenRevoked, has_forbidden_control, subjects,
};
use copilot_runtime::{
    append::AppendError,
    auth::{NewWebhookToken, WORKER_TOKEN_PREFIX},
};
use copilot_store::{Store, checkpoints};
use uuid::Uuid;

use crate::{CommandError, append_on, existing_tenant, invalid, tasks::KINDS};

/// Most tasks one worker may say it runs at once.
pub const MAX_CAPACITY: u32 = 64;

/// How long issuing a token waits for it to work (its projection).
const TOKEN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A worker as it announces itself.
#[derive(Debug, Clone)]
pub struct NewWorker {
    pub name: String,
    pub kinds: Vec<String>,
    pub capacity: u32,
}

fn check_name(field: &str, name: &str) -> Result<(), CommandError> {
    if name.trim().is_empty() || name.chars().count() > 100 || has_forbidden_control(name) {
        return Err(invalid(format!("{field}: must be 1 to 100 characters")));
    }
    Ok(())
}

/// Registers a worker; returns its id.
pub async fn register_worker(
    js: &jetstream::Context,
    tenant: &str,
    worker: NewWorker,
    headers: Headers,
) -> Result<Uuid, CommandError> {
    check_name("name", &worker.name)?;
    if worker.kinds.is_empty() {
        return Err(invalid("kinds: name at least one kind"));
    }
    if let Some(unknown) = worker.kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
        return Err(invalid(format!(
            "kinds: unknown kind {unknown:?}; known: {}",
            KINDS.join(", ")
        )));
    }
    if worker.capacity == 0 || worker.capacity > MAX_CAPACITY {
        return Err(invalid(format!("capacity: must be 1 to {MAX_CAPACITY}")));
    }
    let worker_id = Uuid::now_v7();
    let mut kinds = worker.kinds;
    kinds.sort();
    kinds.dedup();
    let registered = WorkerRegistered {
        worker_id,
        name: worker.name,
        kinds,
        capacity: worker.capacity,
    };
    append_on(
        js,
        subjects::worker(tenant, worker_id),
        tenant,
        &registered,
        headers,
    )
    .await?;
    Ok(worker_id)
}

/// A live worker's registration: 404 when the tenant has no such worker, 409 when it has gone.
pub async fn live_worker(
    js: &jetstream::Context,
    tenant: &str,
    worker_id: Uuid,
) -> Result<WorkerRegistered, CommandError> {
    let unavailable = |e: String| CommandError::Append(AppendError::Unavailable(e));
    let stream = js
        .get_stream(subjects::TASKS)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let subject = subjects::worker(tenant, worker_id);
    let decode = |payload: &[u8]| {
        Envelope::from_slice(payload)
            .and_then(|e| e.decode())
            .map_err(|e| CommandError::Internal(e.to_string()))
    };
    let first = match stream
        .direct_get_next_for_subject(subject.as_str(), None)
        .await
    {
        Ok(message) => decode(&message.payload)?,
        Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => {
            return Err(CommandError::NotFound("worker"));
        }
        Err(e) => return Err(unavailable(e.to_string())),
    };
    let Event::WorkerRegistered(registered) = first else {
        return Err(CommandError::Internal(format!(
            "worker {worker_id} does not begin with its registration"
        )));
    };
    let last = stream
        .direct_get_last_for_subject(subject.as_str())
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    if matches!(decode(&last.payload)?, Event::WorkerGone(_)) {
        return Err(CommandError::Conflict(
            "the worker has gone; register again".into(),
        ));
    }
    Ok(registered)
}

/// Records that a worker is alive and which tasks it holds.
pub async fn worker_heartbeat(
    js: &jetstream::Context,
    tenant: &str,
    worker_id: Uuid,
    tasks: Vec<Uuid>,
) -> Result<(), CommandError> {
    live_worker(js, tenant, worker_id).await?;
    let beat = WorkerHeartbeatRecorded { worker_id, tasks };
    append_on(
        js,
        subjects::worker(tenant, worker_id),
        tenant,
        &beat,
        Headers::default(),
    )
    .await?;
    Ok(())
}

/// Records that a worker stopped (drained, or was told to).
pub async fn worker_gone(
    js: &jetstream::Context,
    tenant: &str,
    worker_id: Uuid,
    reason: &str,
) -> Result<(), CommandError> {
    live_worker(js, tenant, worker_id).await?;
    let gone = WorkerGone {
        worker_id,
        reason: reason.to_owned(),
    };
    append_on(
        js,
        subjects::worker(tenant, worker_id),
        tenant,
        &gone,
        Headers::default(),
    )
    .await?;
    Ok(())
}

/// A new worker token: its id and the secret, shown once.
pub struct IssuedWorkerToken {
    pub token_id: Uuid,
    pub worker_token: String,
    pub prefix: String,
}

/// Issues a worker token, and answers once it works.
pub async fn issue_worker_token(
    js: &jetstream::Context,
    store: &Store,
    tenant: &str,
    name: &str,
    actor: &str,
    headers: Headers,
) -> Result<IssuedWorkerToken, CommandError> {
    existing_tenant(store, tenant).await?;
    check_name("name", name)?;
    let token = NewWebhookToken::with_prefix(WORKER_TOKEN_PREFIX);
    let issued = WorkerTokenIssued {
        token_id: Uuid::now_v7(),
        token_hash: token.hash,
        prefix: token.prefix.clone(),
        name: name.to_owned(),
        issued_by: actor.to_owned(),
    };
    let seq = append_on(
        js,
        subjects::tenant_worker_tokens(tenant),
        tenant,
        &issued,
        headers,
    )
    .await?;
    store
        .wait_for_checkpoint(checkpoints::TENANTS, seq, TOKEN_WAIT, |_| {})
        .await?;
    Ok(IssuedWorkerToken {
        token_id: issued.token_id,
        worker_token: token.secret,
        prefix: token.prefix,
    })
}

/// Revokes a worker token at once: 404 for a token the tenant does not have, 409 when revoked.
pub async fn revoke_worker_token(
    js: &jetstream::Context,
    store: &Store,
    tenant: &str,
    token_id: Uuid,
    actor: &str,
    headers: Headers,
) -> Result<(), CommandError> {
    existing_tenant(store, tenant).await?;
    let mut tx = store.begin_tenant(tenant).await?;
    let token = store
        .list_worker_tokens(&mut tx, tenant)
        .await?
        .into_iter()
        .find(|t| t.token_id == token_id)
        .ok_or(CommandError::NotFound("token"))?;
    drop(tx);
    if token.revoked_at.is_some() {
        return Err(CommandError::Conflict(
            "the token is already revoked".into(),
        ));
    }
    let revoked = WorkerTokenRevoked {
        token_id,
        revoked_by: actor.to_owned(),
    };
    let seq = append_on(
        js,
        subjects::tenant_worker_tokens(tenant),
        tenant,
        &revoked,
        headers,
    )
    .await?;
    store
        .wait_for_checkpoint(checkpoints::TENANTS, seq, TOKEN_WAIT, |_| {})
        .await?;
    Ok(())
}
