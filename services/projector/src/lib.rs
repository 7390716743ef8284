//! The projector: folds the streams into the Postgres read models.
//!
//! Each projection is one writer at a time (a Postgres advisory-lock lease), reading its durable
//! pull consumer. It takes whatever messages are ready (up to a batch), applies them in one
//! transaction with bulk statements, stores the last stream sequence in the same transaction and
//! acks only after commit. A batch of signals, the hot path, is a single statement: one round
//! trip instead of four. The Postgres checkpoint is the truth: on start, and after any failure,
//! the durable consumer is repositioned to the message after the checkpoint, so a crash between
//! commit and ack, a lost ack or a dropped database never skips or doubles an event.
//! An event that cannot be applied is parked (row in `dead_letters`, message on the DEADLETTERS
//! stream, a metric, a log line) and the events behind it go on.

mod fold;

use std::{collections::BTreeSet, time::Duration};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::PullConsumer};
use copilot_events::{Envelope, subjects};
use copilot_runtime::{
    Context, Settings,
    consume::{self, subject_tenant},
    metrics::Metrics,
    nats,
};
use copilot_store::checkpoints;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use fold::Fold;

/// The read models the projector maintains, each from one stream through one durable consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projection {
    Tenants,
    Signals,
    Incidents,
    Telemetry,
    Tasks,
}

impl Projection {
    pub const ALL: [Projection; 5] = [
        Self::Tenants,
        Self::Signals,
        Self::Incidents,
        Self::Telemetry,
        Self::Tasks,
    ];

    /// Name of the projection, its checkpoint key and its lease.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tenants => checkpoints::TENANTS,
            Self::Signals => checkpoints::SIGNALS,
            Self::Incidents => checkpoints::INCIDENTS,
            Self::Telemetry => checkpoints::TELEMETRY,
            Self::Tasks => checkpoints::TASKS,
        }
    }

    pub fn stream(self) -> &'static str {
        match self {
            Self::Tenants => subjects::TENANTS,
            Self::Signals => subjects::SIGNALS,
            Self::Incidents => subjects::INCIDENTS,
            Self::Telemetry => subjects::TELEMETRY,
            Self::Tasks => subjects::TASKS,
        }
    }

    pub fn consumer(self) -> &'static str {
        match self {
            Self::Tenants => nats::CONSUMER_PROJECTOR_TENANTS,
            Self::Signals => nats::CONSUMER_PROJECTOR_SIGNALS,
            Self::Incidents => nats::CONSUMER_PROJECTOR_INCIDENTS,
            Self::Telemetry => nats::CONSUMER_PROJECTOR_TELEMETRY,
            Self::Tasks => nats::CONSUMER_PROJECTOR_TASKS,
        }
    }
}

/// Runs the projector alone until `shutdown`, with health and metrics on `settings.http.listen`:
/// the Postgres read models and the webhook tokens bucket (`copilot_runtime::tokens`).
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let ctx = Context::connect(settings, "projector").await?;
    let work = async {
        tokio::try_join!(
            serve(ctx.clone(), shutdown.clone()),
            copilot_runtime::tokens::serve(ctx.js.clone(), shutdown.clone()),
        )
        .map(|_| ())
    };
    copilot_runtime::http::with_health(ctx.clone(), shutdown.clone(), work).await
}

/// Runs every projection until `shutdown`.
pub async fn serve(ctx: Context, shutdown: CancellationToken) -> anyhow::Result<()> {
    serve_only(ctx, &Projection::ALL, shutdown).await
}

/// Runs some projections until `shutdown` (benchmarks time one alone).
pub async fn serve_only(
    ctx: Context,
    projections: &[Projection],
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = Metrics::global();
    for p in projections {
        // Present from the start at 0, so the first parked event is an increase Prometheus sees.
        metrics
            .events_dead_lettered_total
            .with_label_values(&[p.name()]);
    }
    let tasks = projections
        .iter()
        .map(|p| follow(ctx.clone(), *p, shutdown.clone()));
    let watch = watch_consumers(&ctx, projections, &shutdown);
    tokio::try_join!(futures::future::try_join_all(tasks), watch)?;
    Ok(())
}

/// Every few seconds, reads each consumer's pending and ack-pending counts from JetStream, and
/// each projection's lag: now minus the newest event it applied, while events wait (0 when none
/// do). Read from JetStream rather than left from the last batch, so a stuck projection shows.
async fn watch_consumers(
    ctx: &Context,
    projections: &[Projection],
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let metrics = Metrics::global();
    let consumers: Vec<(&str, String)> = nats::CONSUMER_DEFINITIONS
        .iter()
        .filter_map(|(stream, json)| {
            let config: async_nats::jetstream::consumer::pull::Config =
                serde_json::from_str(json).ok()?;
            Some((*stream, config.durable_name?))
        })
        .collect();
    let mut kinds_seen = BTreeSet::new();
    loop {
        if projections.contains(&Projection::Tasks) {
            queue_depth(ctx, &mut kinds_seen).await;
        }
        for (stream, name) in &consumers {
            let (stream, name) = (*stream, name.clone());
            let info = async {
                let stream = ctx.js.get_stream(stream).await.ok()?;
                let mut consumer = stream
                    .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&name)
                    .await
                    .ok()?;
                consumer.info().await.ok().cloned()
            }
            .await;
            let Some(info) = info else { continue };
            metrics
                .consumer_pending_messages
                .with_label_values(&[name.as_str()])
                .set(info.num_pending as i64);
            metrics
                .consumer_ack_pending_messages
                .with_label_values(&[name.as_str()])
                .set(info.num_ack_pending as i64);
            if let Some(p) = projections.iter().find(|p| p.consumer() == name) {
                let newest = metrics
                    .projection_last_event_timestamp_seconds
                    .with_label_values(&[p.name()])
                    .get();
                let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
                let waiting = info.num_pending + info.num_ack_pending as u64;
                let lag = if waiting > 0 && newest > 0.0 {
                    (now - newest).max(0.0)
                } else {
                    0.0
                };
                metrics
                    .projection_lag_seconds
                    .with_label_values(&[p.name()])
                    .set(lag);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// Sets the task queue depth by kind from the read model; a kind no longer waiting reads 0.
async fn queue_depth(ctx: &Context, kinds_seen: &mut BTreeSet<String>) {
    let gauge = &copilot_runtime::taskqueue::TaskMetrics::global().queue_depth;
    match ctx.store.task_queue_depth().await {
        Ok(depths) => {
            for kind in kinds_seen.iter() {
                if !depths.iter().any(|(k, _)| k == kind) {
                    gauge.with_label_values(&[kind.as_str()]).set(0);
                }
            }
            for (kind, depth) in depths {
                gauge.with_label_values(&[kind.as_str()]).set(depth);
                kinds_seen.insert(kind);
            }
        }
        Err(err) => tracing::debug!(error = %err, "cannot read the task queue depth"),
    }
}

/// Applies everything the stream holds now and returns. When another process holds the
/// projection's lease, waits until that process has caught up instead. For commands that must
/// see their own effect (`copilot tenants create`) whether or not a projector is running.
pub async fn catch_up(
    ctx: &Context,
    projection: Projection,
    timeout: Duration,
) -> anyhow::Result<()> {
    let target = nats::stream_state(&ctx.js, projection.stream())
        .await?
        .last_sequence;
    let too_slow = || {
        format!(
            "the {} projection did not reach sequence {target} within {timeout:?}",
            projection.name()
        )
    };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if ctx.store.read_checkpoint(projection.name()).await? >= target {
            return Ok(());
        }
        if let Some(_lease) = ctx.store.try_lease(projection.name()).await? {
            let never = CancellationToken::new();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            return tokio::time::timeout(left, project(ctx, projection, &never, Some(target)))
                .await
                .with_context(too_slow)?;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, too_slow());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Keeps one projection running under its lease, repositioning after a failure.
async fn follow(
    ctx: Context,
    projection: Projection,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    consume::supervise(&ctx, projection.name(), &shutdown, || {
        project(&ctx, projection, &shutdown, None)
    })
    .await
}

/// Projects while holding the lease, until shutdown or, with `until`, until that sequence is applied.
async fn project(
    ctx: &Context,
    projection: Projection,
    shutdown: &CancellationToken,
    until: Option<u64>,
) -> anyhow::Result<()> {
    let (consumer, folded_to) = position(ctx, projection).await?;
    if until.is_some_and(|target| target <= folded_to) {
        return Ok(());
    }
    // Two stages: while one batch commits, the next is read and folded. Whatever ends the
    // loop, the commit in flight is awaited, so no write outlives the lease.
    let mut committing = None;
    let result = pipeline(
        ctx,
        projection,
        shutdown,
        until,
        consumer,
        folded_to,
        &mut committing,
    )
    .await;
    let committed = match committing {
        Some(task) => task
            .await
            .context("a batch commit panicked")
            .and_then(|r| r),
        None => Ok(()),
    };
    result.and(committed)
}

/// A batch commit in flight; dropping it (the projection was cancelled) aborts it, and the
/// transaction rolls back, so no write outlives the lease.
type Commit = tokio_util::task::AbortOnDropHandle<anyhow::Result<()>>;

async fn pipeline(
    ctx: &Context,
    projection: Projection,
    shutdown: &CancellationToken,
    until: Option<u64>,
    consumer: PullConsumer,
    mut folded_to: u64,
    committing: &mut Option<Commit>,
) -> anyhow::Result<()> {
    let mut batches = consume::Batches::new(&consumer, ctx.settings.projector.batch).await?;
    loop {
        let Some(batch) = batches.next(shutdown).await? else {
            return Ok(());
        };
        let from = folded_to;
        // Folding a full batch takes milliseconds of CPU: off the async workers, so the
        // gateway and API sharing them in `copilot up` are not held up behind it.
        let prepared = tokio::task::spawn_blocking(move || prepare(projection, batch, from))
            .await
            .context("folding a batch panicked")??;
        folded_to = prepared.last;
        if let Some(previous) = committing.take() {
            previous.await.context("a batch commit panicked")??;
        }
        let span = tracing::info_span!("project", projection = projection.name(), from);
        copilot_runtime::telemetry::set_parent(&span, prepared.first_trace.as_ref());
        *committing = Some(tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
            commit(ctx.clone(), projection, prepared, from).instrument(span),
        )));
        if until.is_some_and(|target| folded_to >= target) {
            return Ok(());
        }
    }
}

async fn position(ctx: &Context, projection: Projection) -> anyhow::Result<(PullConsumer, u64)> {
    consume::position(
        ctx,
        projection.stream(),
        projection.consumer(),
        projection.name(),
    )
    .await
}

struct Parked {
    seq: u64,
    subject: String,
    reason: String,
    body: bytes::Bytes,
}

impl Parked {
    fn new(seq: u64, message: &jetstream::Message, reason: String) -> Self {
        Self {
            seq,
            subject: message.subject.to_string(),
            reason,
            body: message.payload.clone(),
        }
    }

    /// The tenant of the subject it was read on (never the envelope's, which may lie).
    fn tenant(&self) -> &str {
        let tenant = subject_tenant(&self.subject);
        if copilot_events::is_valid_slug(tenant) {
            tenant
        } else {
            subjects::UNKNOWN_TENANT
        }
    }
}

/// A batch folded in memory, ready to commit.
struct Prepared {
    fold: Fold,
    parked: Vec<Parked>,
    /// Sequence of the last message of the batch: the checkpoint once it commits.
    last: u64,
    /// Messages the consumer had yet to deliver after this batch.
    pending: Option<u64>,
    request_ids: BTreeSet<String>,
    /// Trace ids of the batch's events (up to 10), so one alert can be followed in the logs.
    trace_ids: BTreeSet<String>,
    /// The first event's trace context: the batch's span continues it when spans are exported.
    first_trace: Option<copilot_events::TraceParent>,
    /// When the newest event of the batch happened, for the lag metric.
    newest: Option<chrono::DateTime<chrono::Utc>>,
    messages: Vec<jetstream::Message>,
    /// Time spent folding.
    fold_time: Duration,
}

/// Folds a batch in memory, skipping what is at or below `from` (already applied).
fn prepare(
    projection: Projection,
    messages: Vec<jetstream::Message>,
    from: u64,
) -> anyhow::Result<Prepared> {
    let started = std::time::Instant::now();
    let mut fold = Fold::new(projection);
    let mut parked = Vec::new();
    let mut last = from;
    let mut pending = None;
    let mut request_ids = BTreeSet::new();
    let mut newest = None;
    let mut trace_ids = BTreeSet::new();
    let mut first_trace = None;
    for message in &messages {
        let info = message
            .info()
            .map_err(|e| anyhow::anyhow!("message without JetStream metadata: {e}"))?;
        pending = Some(info.pending);
        let Some(seq) = consume::next_sequence(message, &mut last)? else {
            continue;
        };
        let subject = message.subject.as_str();
        let outcome = Envelope::from_slice(&message.payload)
            .map_err(|e| e.to_string())
            .and_then(|envelope| {
                newest = newest.max(Some(envelope.occurred_at));
                if trace_ids.len() < 10
                    && let Some(trace) = envelope
                        .traceparent
                        .as_deref()
                        .and_then(copilot_events::TraceParent::parse)
                {
                    first_trace.get_or_insert(trace);
                    trace_ids.insert(trace.trace_id_hex());
                }
                fold.add(seq, subject, &envelope)
                    .map(|()| envelope.request_id)
            });
        match outcome {
            Ok(request_id) => {
                if request_ids.len() < 10
                    && let Some(id) = request_id
                {
                    request_ids.insert(id);
                }
            }
            Err(reason) => parked.push(Parked::new(seq, message, reason)),
        }
    }
    Ok(Prepared {
        fold,
        parked,
        last,
        pending,
        request_ids,
        trace_ids,
        first_trace,
        newest,
        messages,
        fold_time: started.elapsed(),
    })
}

/// Commits a prepared batch in one transaction with its checkpoint, then acks its messages.
/// `from` is the checkpoint the batch was folded on; if the database says otherwise another
/// writer got in, and the batch is abandoned (the caller repositions).
async fn commit(
    ctx: Context,
    projection: Projection,
    prepared: Prepared,
    from: u64,
) -> anyhow::Result<()> {
    let name = projection.name();
    let store = &ctx.store;
    let Prepared {
        fold,
        parked,
        last,
        pending,
        request_ids,
        trace_ids,
        newest,
        messages,
        fold_time,
        ..
    } = prepared;
    let started = std::time::Instant::now();
    let mut parked = parked;
    let batch = (&messages[..], from, last);
    // For a single statement, writing and committing are one: `write_us` is all of it.
    let (applied, written, single_statement) = match fold {
        // The hot path, a batch of signals with nothing to park: one statement, one round trip.
        Fold::Signals { rows, events } if parked.is_empty() => {
            let rows = rows.into_values().collect();
            match store.commit_signals(rows, name, from, last).await {
                Ok(moved) => {
                    ensure_moved(moved, name, from)?;
                    (events, started.elapsed(), true)
                }
                Err(err) if err.is_data_error() => {
                    refused(name, &err);
                    let (applied, written) =
                        transaction(&ctx, projection, None, batch, &mut parked, started).await?;
                    (applied, written, false)
                }
                Err(err) => return Err(err.into()),
            }
        }
        fold => {
            let (applied, written) =
                transaction(&ctx, projection, Some(fold), batch, &mut parked, started).await?;
            (applied, written, false)
        }
    };
    let committed = started.elapsed();
    // The consumer acks cumulatively (`ack_policy: all`) and this is its one writer, reading in
    // order: acking the batch's last message acks the batch.
    if let Some(message) = messages.last()
        && let Err(err) = message.ack().await
    {
        tracing::debug!(projection = name, error = %err, "ack failed; the checkpoint covers it");
    }
    let metrics = Metrics::global();
    metrics
        .events_projected_total
        .with_label_values(&[name])
        .inc_by(applied as u64);
    metrics
        .projection_checkpoint_sequence
        .with_label_values(&[name])
        .set(last as i64);
    if let Some(newest) = newest {
        metrics
            .projection_last_event_timestamp_seconds
            .with_label_values(&[name])
            .set(newest.timestamp_millis() as f64 / 1000.0);
    }
    if let Some(pending) = pending {
        metrics
            .consumer_pending_messages
            .with_label_values(&[projection.consumer()])
            .set(pending as i64);
    }
    if !parked.is_empty() {
        metrics
            .events_dead_lettered_total
            .with_label_values(&[name])
            .inc_by(parked.len() as u64);
    }
    tracing::info!(
        projection = name,
        events = messages.len(),
        applied,
        parked = parked.len(),
        checkpoint = last,
        request_ids = ?request_ids,
        trace_ids = ?trace_ids,
        fold_us = fold_time.as_micros() as u64,
        write_us = written.as_micros() as u64,
        commit_us = (committed - written).as_micros() as u64,
        single_statement,
        "batch projected"
    );
    Ok(())
}

/// Writes a batch in one transaction with its dead letters and checkpoint. With `fold` `None`
/// (the database refused it whole), or when the database refuses it, applies its events one by
/// one and parks those refused. `batch` is the messages and the checkpoint they move `from` and
/// `to`. Returns how many events applied and when the writes (not the commit) were done.
async fn transaction(
    ctx: &Context,
    projection: Projection,
    fold: Option<Fold>,
    (messages, from, last): (&[jetstream::Message], u64, u64),
    parked: &mut Vec<Parked>,
    started: std::time::Instant,
) -> anyhow::Result<(usize, Duration)> {
    let name = projection.name();
    let store = &ctx.store;
    let mut tx = store.begin_batch().await?;
    let applied = match fold {
        Some(fold) => {
            let fold_len = fold.len();
            match fold.write(store, &mut tx).await {
                Ok(()) => fold_len,
                Err(err) if err.is_data_error() => {
                    refused(name, &err);
                    drop(tx);
                    tx = store.begin_batch().await?;
                    one_by_one(store, &mut tx, projection, messages, from, parked).await?
                }
                Err(err) => return Err(err.into()),
            }
        }
        None => one_by_one(store, &mut tx, projection, messages, from, parked).await?,
    };
    let written = started.elapsed();
    for p in parked.iter() {
        let letter = copilot_store::DeadLetter {
            projection: name,
            tenant: p.tenant(),
            stream: projection.stream(),
            seq: p.seq,
            subject: &p.subject,
            reason: &p.reason,
            body: &p.body,
        };
        store.insert_dead_letter(&mut tx, &letter).await?;
        if projection == Projection::Incidents
            && let Some(incident) = p
                .subject
                .rsplit('.')
                .next()
                .and_then(|id| uuid::Uuid::parse_str(id).ok())
        {
            // Commands append at the version they read: it must follow the subject even past
            // an event that could not be applied.
            let at = chrono::DateTime::<chrono::Utc>::MIN_UTC;
            store
                .touch_incident(&mut tx, p.tenant(), incident, at, p.seq)
                .await?;
        }
        park(ctx, projection, p).await?;
    }
    // Checked last, in the same statement that moves it: if another writer got in, nothing
    // of this batch commits (the caller repositions).
    ensure_moved(
        store.move_checkpoint(&mut tx, name, from, last).await?,
        name,
        from,
    )?;
    tx.commit().await.context("committing the batch")?;
    Ok((applied, written))
}

fn ensure_moved(moved: bool, name: &str, from: u64) -> anyhow::Result<()> {
    anyhow::ensure!(
        moved,
        "the {name} checkpoint is no longer at {from}: another writer?"
    );
    Ok(())
}

fn refused(projection: &str, err: &copilot_store::StoreError) {
    tracing::warn!(
        projection,
        error = %err,
        "the database refused a batch; applying its events one by one"
    );
}

/// Applies a batch's events each in its own savepoint, parking those the database refuses.
/// Slow, and only used when the batch as a whole was refused. Returns how many applied.
async fn one_by_one(
    store: &copilot_store::Store,
    tx: &mut copilot_store::Tx<'static>,
    projection: Projection,
    messages: &[jetstream::Message],
    from: u64,
    parked: &mut Vec<Parked>,
) -> anyhow::Result<usize> {
    let mut applied = 0;
    for message in messages {
        let seq = message
            .info()
            .map_err(|e| anyhow::anyhow!("message without JetStream metadata: {e}"))?
            .stream_sequence;
        if seq <= from || parked.iter().any(|p| p.seq == seq) {
            continue;
        }
        let single = prepare(projection, vec![message.clone()], seq - 1)?;
        if !single.parked.is_empty() {
            parked.extend(single.parked);
            continue;
        }
        let mut savepoint = copilot_store::Store::savepoint(tx).await?;
        match single.fold.write(store, &mut savepoint).await {
            Ok(()) => {
                savepoint.commit().await?;
                applied += 1;
            }
            Err(err) if err.is_data_error() => {
                savepoint.rollback().await?;
                parked.push(Parked::new(
                    seq,
                    message,
                    format!("refused by the database: {err}"),
                ));
            }
            Err(err) => return Err(err.into()),
        }
    }
    parked.sort_by_key(|p| p.seq);
    Ok(applied)
}

/// Publishes a parked event to the DEADLETTERS stream, with why and where it came from.
async fn park(ctx: &Context, projection: Projection, parked: &Parked) -> anyhow::Result<()> {
    tracing::warn!(
        projection = projection.name(),
        seq = parked.seq,
        subject = parked.subject,
        tenant = parked.tenant(),
        reason = parked.reason,
        "event parked as a dead letter"
    );
    let tenant = parked.tenant();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        subjects::HEADER_DEAD_LETTER_REASON,
        parked.reason.replace(['\r', '\n'], " ").as_str(),
    );
    headers.insert(
        subjects::HEADER_DEAD_LETTER_ORIGIN,
        format!("{}:{}:{}", projection.stream(), parked.seq, parked.subject).as_str(),
    );
    let message = jetstream::message::PublishMessage::build()
        .payload(parked.body.clone())
        .headers(headers)
        .message_id(format!(
            "{}:{}:{}",
            projection.name(),
            projection.stream(),
            parked.seq
        ));
    copilot_runtime::append::append(
        &ctx.js,
        subjects::dead_letter(tenant, projection.consumer()),
        message,
    )
    .await
    .context("publishing a dead letter")?;
    Ok(())
}
