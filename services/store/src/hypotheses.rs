//! Hypotheses: the hypothesis service's schedule and evidence reads, the projector's writes of
//! proposals, verdicts and model-call usage, and the API's reads of them.

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use crate::{Result, Store, Tx};

/// An incident one hypothesis instance is working on, until `claimed_until`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HypothesisClaim {
    pub tenant: String,
    pub incident_id: Uuid,
    pub claimed_until: DateTime<Utc>,
    /// Of the latest event that made it due.
    pub traceparent: Option<String>,
}

/// An alert of an incident with what the evidence needs of it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct IncidentSignalFacts {
    pub signal_id: Uuid,
    pub title: String,
    pub severity: String,
    pub status: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: Option<DateTime<Utc>>,
    pub service: Option<String>,
    pub labels: Option<serde_json::Value>,
    pub annotations: Option<serde_json::Value>,
    pub values: Option<serde_json::Value>,
}

/// A past incident that looks like another, with how it ended.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SimilarIncident {
    pub id: Uuid,
    pub title: String,
    pub service: Option<String>,
    pub state: String,
    pub opened_at: DateTime<Utc>,
    pub notes: Option<String>,
    pub confirmed: Option<String>,
    pub rank: f32,
}

/// Another incident of the tenant open around an incident's onset.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConcurrentIncidentRow {
    pub id: Uuid,
    pub title: String,
    pub service: Option<String>,
    pub state: String,
    pub opened_at: DateTime<Utc>,
}

/// A link a person confirmed between two incidents (see `IncidentLinked`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct IncidentLink {
    pub other: Uuid,
    pub relation: String,
    pub hypothesis_id: Option<String>,
    pub actor: String,
    pub occurred_at: DateTime<Utc>,
}

/// A proposal as the projector records it.
#[derive(Debug, Clone)]
pub struct ProposalRow<'a> {
    pub tenant: &'a str,
    pub incident_id: Uuid,
    pub proposal_id: Uuid,
    pub seq: u64,
    pub engine: &'a str,
    pub model: Option<&'a str>,
    pub inconclusive: bool,
    pub at: DateTime<Utc>,
    pub payload: &'a str,
}

/// One ranked hypothesis of a proposal.
#[derive(Debug, Clone)]
pub struct HypothesisRow<'a> {
    pub hypothesis_id: &'a str,
    pub rank: i32,
    pub cause: &'a str,
    pub component: Option<&'a str>,
    pub title: &'a str,
    pub confidence: f64,
    pub evidence: &'a str,
    pub reasoning: &'a str,
    pub next_step: &'a str,
    pub change: Option<&'a str>,
}

/// A hypothesis as the API reads it, with the latest verdict on it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HypothesisView {
    pub hypothesis_id: String,
    pub rank: i32,
    pub cause: String,
    pub component: Option<String>,
    pub title: String,
    pub confidence: f64,
    pub evidence: serde_json::Value,
    pub reasoning: String,
    pub next_step: String,
    /// Since the proposal before: new, strengthened, weakened or unchanged.
    pub change: Option<String>,
    pub verdict: Option<String>,
    pub verdict_by: Option<String>,
}

/// One proposal with its hypotheses, for `GET /v1/incidents/{id}/hypotheses`.
#[derive(Debug, Clone)]
pub struct ProposalView {
    pub proposal_id: Uuid,
    pub engine: String,
    pub model: Option<String>,
    pub proposed_at: DateTime<Utc>,
    pub inconclusive: bool,
    /// The whole `HypothesesProposed` event: evidence snapshot, digests, usage, changes.
    pub event: serde_json::Value,
    pub hypotheses: Vec<HypothesisView>,
}

/// One model call, as recorded from the TELEMETRY stream.
#[derive(Debug, Clone)]
pub struct UsageRow<'a> {
    pub call_id: Uuid,
    pub tenant: &'a str,
    pub incident_id: Uuid,
    pub engine: &'a str,
    pub model: &'a str,
    pub outcome: &'a str,
    pub prompt_tokens: i32,
    pub completion_tokens: i32,
    pub latency_ms: i64,
    pub cost_usd: f64,
    pub at: DateTime<Utc>,
    pub seq: u64,
}

impl Store {
    /// Marks an incident due for hypotheses: after `settle` from now, and no sooner than
    /// `min_interval` after its last run. An incident already due keeps its time.
    pub async fn schedule_hypotheses(
        &self,
        tenant: &str,
        incident_id: Uuid,
        now: DateTime<Utc>,
        (settle, min_interval): (Duration, Duration),
        traceparent: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO hypothesis_schedule (tenant, incident_id, due_at, traceparent) VALUES ($1, $2, $3 + $4, $6)
             ON CONFLICT (tenant, incident_id) DO UPDATE SET
                 traceparent = coalesce(excluded.traceparent, hypothesis_schedule.traceparent),
                 due_at = CASE
                 WHEN hypothesis_schedule.due_at IS NOT NULL THEN hypothesis_schedule.due_at
                 ELSE greatest($3 + $4, hypothesis_schedule.last_run_at + $5) END",
        )
        .bind(tenant)
        .bind(incident_id)
        .bind(now)
        .bind(settle)
        .bind(min_interval)
        .bind(traceparent)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Makes an incident due for hypotheses now, whatever its settle time or last run (a
    /// `hypotheses.refresh` task asked for it).
    pub async fn refresh_hypotheses(
        &self,
        tenant: &str,
        incident_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO hypothesis_schedule (tenant, incident_id, due_at) VALUES ($1, $2, $3)
             ON CONFLICT (tenant, incident_id) DO UPDATE SET due_at = excluded.due_at",
        )
        .bind(tenant)
        .bind(incident_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Claims the incident most overdue for hypotheses, for `hold` (another instance takes it
    /// over if this one dies); `None` when nothing is due. An incident claimed by another
    /// instance is not due until that claim ends or expires.
    pub async fn claim_due_hypotheses(
        &self,
        now: DateTime<Utc>,
        hold: Duration,
    ) -> Result<Option<HypothesisClaim>> {
        Ok(sqlx::query_as(
            "UPDATE hypothesis_schedule SET claimed_until = $1 + $2, due_at = NULL
             WHERE (tenant, incident_id) = (
                 SELECT tenant, incident_id FROM hypothesis_schedule
                 WHERE (due_at <= $1 AND (claimed_until IS NULL OR claimed_until < $1))
                    OR (due_at IS NULL AND claimed_until < $1)
                 ORDER BY coalesce(due_at, claimed_until) LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING tenant, incident_id, claimed_until, traceparent",
        )
        .bind(now)
        .bind(hold)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Records a finished run, if the claim is still this one's; events that arrived meanwhile
    /// wait at least `min_interval`.
    pub async fn finish_hypotheses(
        &self,
        claim: &HypothesisClaim,
        now: DateTime<Utc>,
        min_interval: Duration,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE hypothesis_schedule SET claimed_until = NULL, last_run_at = $4, runs = runs + 1,
                 due_at = CASE WHEN due_at IS NOT NULL THEN greatest(due_at, $4 + $5) END
             WHERE tenant = $1 AND incident_id = $2 AND claimed_until = $3",
        )
        .bind(&claim.tenant)
        .bind(claim.incident_id)
        .bind(claim.claimed_until)
        .bind(now)
        .bind(min_interval)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Gives a claim back after a failed run: due again at `at` (or sooner if already due).
    pub async fn retry_hypotheses(&self, claim: &HypothesisClaim, at: DateTime<Utc>) -> Result<()> {
        sqlx::query(
            "UPDATE hypothesis_schedule SET claimed_until = NULL,
                 due_at = CASE WHEN due_at IS NOT NULL THEN least(due_at, $4) ELSE $4 END
             WHERE tenant = $1 AND incident_id = $2 AND claimed_until = $3",
        )
        .bind(&claim.tenant)
        .bind(claim.incident_id)
        .bind(claim.claimed_until)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// How many times the engine ran for an incident.
    pub async fn hypothesis_runs(&self, tenant: &str, incident_id: Uuid) -> Result<i32> {
        Ok(sqlx::query_scalar(
            "SELECT coalesce((SELECT runs FROM hypothesis_schedule WHERE tenant = $1 AND incident_id = $2), 0)",
        )
        .bind(tenant)
        .bind(incident_id)
        .fetch_one(&self.pool)
        .await?)
    }

    /// An incident's alerts with their labels and annotations (from `signals`), earliest first.
    pub async fn incident_signal_facts(
        &self,
        tenant: &str,
        incident_id: Uuid,
        limit: i64,
    ) -> Result<Vec<IncidentSignalFacts>> {
        Ok(sqlx::query_as(
            "SELECT i.signal_id, i.title, i.severity, coalesce(s.status, i.status) AS status, i.starts_at,
                    coalesce(s.ends_at, i.ends_at) AS ends_at, s.service, s.labels, s.annotations, s.\"values\"
             FROM incident_signals i LEFT JOIN signals s ON s.tenant = i.tenant AND s.id = i.signal_id
             WHERE i.tenant = $1 AND i.incident_id = $2 ORDER BY i.starts_at, i.signal_id LIMIT $3",
        )
        .bind(tenant)
        .bind(incident_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The tenant's other incidents that were open within `window_minutes` of this one's opening
    /// (opened before its end, not resolved before its start), the closest in time first.
    pub async fn concurrent_incidents(
        &self,
        tenant: &str,
        incident_id: Uuid,
        window_minutes: i64,
        limit: i64,
    ) -> Result<Vec<ConcurrentIncidentRow>> {
        Ok(sqlx::query_as(
            "WITH me AS (SELECT opened_at FROM incidents WHERE tenant = $1 AND id = $2),
                  w AS (SELECT opened_at - make_interval(mins => $3::int) AS since,
                               opened_at + make_interval(mins => $3::int) AS until, opened_at FROM me)
             SELECT i.id, i.title, i.service, i.state, i.opened_at
             FROM incidents i, w
             WHERE i.tenant = $1 AND i.id <> $2
               AND i.opened_at <= w.until AND i.opened_at >= w.since - interval '1 day'
               AND (i.resolved_at IS NULL OR i.resolved_at >= w.since)
             ORDER BY abs(extract(epoch FROM i.opened_at - w.opened_at)), i.id LIMIT $4",
        )
        .bind(tenant)
        .bind(incident_id)
        .bind(window_minutes as i32)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Incidents of the tenant opened before this one whose title, service or key share words with `words`,
    /// most similar first, with their notes and the hypothesis people confirmed.
    pub async fn similar_incidents(
        &self,
        tenant: &str,
        incident_id: Uuid,
        words: &str,
        limit: i64,
    ) -> Result<Vec<SimilarIncident>> {
        Ok(sqlx::query_as(
            "WITH q AS (SELECT to_tsquery('simple', string_agg(quote_literal(w), ' | ')) AS q
                        FROM regexp_split_to_table(lower($3), '[^a-z0-9_-]+') AS w WHERE length(w) > 2)
             SELECT i.id, i.title, i.service, i.state, i.opened_at,
                    (SELECT string_agg(n.text, ' / ' ORDER BY n.created_at) FROM incident_notes n
                      WHERE n.tenant = i.tenant AND n.incident_id = i.id) AS notes,
                    (SELECT string_agg(DISTINCT h.title, ' / ') FROM hypothesis_verdicts v
                       JOIN hypotheses h ON h.tenant = v.tenant AND h.incident_id = v.incident_id
                        AND h.hypothesis_id = v.hypothesis_id
                      WHERE v.tenant = i.tenant AND v.incident_id = i.id AND v.verdict = 'confirmed') AS confirmed,
                    ts_rank(i.search, q.q) AS rank
             FROM incidents i, q
             WHERE i.tenant = $1 AND i.id <> $2 AND q.q IS NOT NULL AND i.search @@ q.q
               AND i.opened_at < (SELECT opened_at FROM incidents WHERE tenant = $1 AND id = $2)
             ORDER BY rank DESC, i.opened_at DESC LIMIT $4",
        )
        .bind(tenant)
        .bind(incident_id)
        .bind(words)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn insert_proposal(
        &self,
        tx: &mut Tx<'_>,
        p: &ProposalRow<'_>,
        hypotheses: &[HypothesisRow<'_>],
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO hypothesis_proposals (tenant, incident_id, proposal_id, seq, engine, model, inconclusive, proposed_at, payload)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb) ON CONFLICT DO NOTHING",
        )
        .bind(p.tenant)
        .bind(p.incident_id)
        .bind(p.proposal_id)
        .bind(p.seq as i64)
        .bind(p.engine)
        .bind(p.model)
        .bind(p.inconclusive)
        .bind(p.at)
        .bind(p.payload)
        .execute(&mut **tx)
        .await?;
        for h in hypotheses {
            sqlx::query(
                "INSERT INTO hypotheses (tenant, incident_id, proposal_id, hypothesis_id, rank, cause, component, title,
                     confidence, evidence, reasoning, next_step, change)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11, $12, $13) ON CONFLICT DO NOTHING",
            )
            .bind(p.tenant)
            .bind(p.incident_id)
            .bind(p.proposal_id)
            .bind(h.hypothesis_id)
            .bind(h.rank)
            .bind(h.cause)
            .bind(h.component)
            .bind(h.title)
            .bind(h.confidence)
            .bind(h.evidence)
            .bind(h.reasoning)
            .bind(h.next_step)
            .bind(h.change)
            .execute(&mut **tx)
            .await?;
        }
        sqlx::query(
            "UPDATE incidents SET current_proposal = $3, updated_at = greatest(updated_at, $4), last_seq = $5
             WHERE tenant = $1 AND id = $2",
        )
        .bind(p.tenant)
        .bind(p.incident_id)
        .bind(p.proposal_id)
        .bind(p.at)
        .bind(p.seq as i64)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn record_verdict(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        incident_id: Uuid,
        hypothesis_id: &str,
        verdict: &str,
        note: Option<&str>,
        actor: &str,
        at: DateTime<Utc>,
        seq: u64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO hypothesis_verdicts (tenant, incident_id, hypothesis_id, verdict, note, actor, given_at, last_seq)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (tenant, incident_id, hypothesis_id) DO UPDATE SET verdict = excluded.verdict,
                 note = excluded.note, actor = excluded.actor, given_at = excluded.given_at, last_seq = excluded.last_seq
             WHERE hypothesis_verdicts.last_seq < excluded.last_seq",
        )
        .bind(tenant)
        .bind(incident_id)
        .bind(hypothesis_id)
        .bind(verdict)
        .bind(note)
        .bind(actor)
        .bind(at)
        .bind(seq as i64)
        .execute(&mut **tx)
        .await?;
        self.touch_incident(tx, tenant, incident_id, at, seq).await
    }

    pub async fn insert_usage(&self, tx: &mut Tx<'_>, u: &UsageRow<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO usage_events (call_id, tenant, incident_id, engine, model, outcome, prompt_tokens,
                 completion_tokens, latency_ms, cost_usd, at, seq)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (call_id) DO NOTHING",
        )
        .bind(u.call_id)
        .bind(u.tenant)
        .bind(u.incident_id)
        .bind(u.engine)
        .bind(u.model)
        .bind(u.outcome)
        .bind(u.prompt_tokens)
        .bind(u.completion_tokens)
        .bind(u.latency_ms)
        .bind(u.cost_usd)
        .bind(u.at)
        .bind(u.seq as i64)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// `(calls, prompt tokens, completion tokens)` of a tenant's model calls by outcome.
    pub async fn usage_by_outcome(&self, tenant: &str) -> Result<Vec<(String, i64, i64, i64)>> {
        Ok(sqlx::query_as(
            "SELECT outcome, count(*), coalesce(sum(prompt_tokens), 0)::int8, coalesce(sum(completion_tokens), 0)::int8
             FROM usage_events WHERE tenant = $1 GROUP BY outcome ORDER BY outcome",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The hypotheses of one proposal with their verdicts, best first.
    pub async fn proposal_hypotheses(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        incident_id: Uuid,
        proposal_id: Uuid,
    ) -> Result<Vec<HypothesisView>> {
        Ok(sqlx::query_as(
            "SELECT h.hypothesis_id, h.rank, h.cause, h.component, h.title, h.confidence, h.evidence, h.reasoning,
                    h.next_step, h.change, v.verdict, v.actor AS verdict_by
             FROM hypotheses h LEFT JOIN hypothesis_verdicts v
               ON v.tenant = h.tenant AND v.incident_id = h.incident_id AND v.hypothesis_id = h.hypothesis_id
             WHERE h.tenant = $1 AND h.incident_id = $2 AND h.proposal_id = $3 ORDER BY h.rank",
        )
        .bind(tenant)
        .bind(incident_id)
        .bind(proposal_id)
        .fetch_all(&mut **tx)
        .await?)
    }

    /// An incident's proposals, newest first (only the newest unless `history`).
    pub async fn incident_proposals(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        incident_id: Uuid,
        history: bool,
    ) -> Result<Vec<ProposalView>> {
        type Row = (
            Uuid,
            String,
            Option<String>,
            DateTime<Utc>,
            bool,
            serde_json::Value,
        );
        let rows: Vec<Row> =
            sqlx::query_as(
                "SELECT proposal_id, engine, model, proposed_at, inconclusive, payload FROM hypothesis_proposals
                 WHERE tenant = $1 AND incident_id = $2 ORDER BY seq DESC LIMIT $3",
            )
            .bind(tenant)
            .bind(incident_id)
            .bind(if history { i64::MAX } else { 1 })
            .fetch_all(&mut **tx)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (proposal_id, engine, model, proposed_at, inconclusive, event) in rows {
            out.push(ProposalView {
                hypotheses: self
                    .proposal_hypotheses(tx, tenant, incident_id, proposal_id)
                    .await?,
                proposal_id,
                engine,
                model,
                proposed_at,
                inconclusive,
                event,
            });
        }
        Ok(out)
    }

    /// Whether any proposal of the incident named this hypothesis.
    pub async fn hypothesis_exists(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        incident_id: Uuid,
        hypothesis_id: &str,
    ) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM hypotheses WHERE tenant = $1 AND incident_id = $2 AND hypothesis_id = $3)",
        )
        .bind(tenant)
        .bind(incident_id)
        .bind(hypothesis_id)
        .fetch_one(&mut **tx)
        .await?)
    }

    /// The concurrent incidents a hypothesis cites, as the newest proposal that named it holds
    /// them in its evidence snapshot.
    pub async fn hypothesis_cited_incidents(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        incident_id: Uuid,
        hypothesis_id: &str,
    ) -> Result<Vec<Uuid>> {
        Ok(sqlx::query_scalar(
            "WITH h AS (SELECT h.evidence, p.payload FROM hypotheses h
                          JOIN hypothesis_proposals p ON p.tenant = h.tenant
                           AND p.incident_id = h.incident_id AND p.proposal_id = h.proposal_id
                         WHERE h.tenant = $1 AND h.incident_id = $2 AND h.hypothesis_id = $3
                         ORDER BY p.seq DESC LIMIT 1)
             SELECT DISTINCT (e->>'incident')::uuid FROM h,
                    jsonb_array_elements(h.payload->'evidence') e
             WHERE e->>'kind' = 'concurrent_incident' AND e ? 'incident' AND h.evidence ? (e->>'id')",
        )
        .bind(tenant)
        .bind(incident_id)
        .bind(hypothesis_id)
        .fetch_all(&mut **tx)
        .await?)
    }

    /// Links people confirmed between this incident and others, both ways: (the other
    /// incident, `caused_by` when this one was caused by it or `caused` when it caused the
    /// other, the hypothesis, who).
    pub async fn incident_links(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        incident_id: Uuid,
    ) -> Result<Vec<IncidentLink>> {
        Ok(sqlx::query_as(
            "SELECT CASE WHEN incident_id = $2 THEN (payload->>'related_incident_id')::uuid
                         ELSE incident_id END AS other,
                    CASE WHEN incident_id = $2 THEN 'caused_by' ELSE 'caused' END AS relation,
                    payload->>'hypothesis_id' AS hypothesis_id, actor, occurred_at
             FROM incident_events
             WHERE tenant = $1 AND type = 'IncidentLinked'
               AND (incident_id = $2 OR payload->>'related_incident_id' = $2::text)
             ORDER BY seq",
        )
        .bind(tenant)
        .bind(incident_id)
        .fetch_all(&mut **tx)
        .await?)
    }
}
