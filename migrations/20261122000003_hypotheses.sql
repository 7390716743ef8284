-- Hypotheses. The hypothesis service's own scheduling state (hypothesis_schedule, written only by
-- it), and the read models the projector folds from HypothesesProposed, HypothesisVerdictGiven
-- (INCIDENTS) and ModelCallRecorded (TELEMETRY).

-- A tenant's integrations (TenantIntegrationsSet on TENANTS): its Prometheus and its model.
-- Holds no secret: the model's key is named by an environment variable.
CREATE TABLE tenant_integrations (
    tenant       text PRIMARY KEY,
    integrations jsonb       NOT NULL,
    set_by       text        NOT NULL,
    set_at       timestamptz NOT NULL,
    last_seq     bigint      NOT NULL
);

-- When each incident is next due for hypotheses: debounced so that a storm costs a bounded number
-- of engine runs (at most one per incident per minimum interval).
CREATE TABLE hypothesis_schedule (
    tenant        text        NOT NULL,
    incident_id   uuid        NOT NULL,
    due_at        timestamptz,
    claimed_until timestamptz,
    last_run_at   timestamptz,
    runs          integer     NOT NULL DEFAULT 0,
    traceparent   text, -- of the latest event that made it due; the proposal continues that trace
    PRIMARY KEY (tenant, incident_id)
);
CREATE INDEX hypothesis_schedule_due ON hypothesis_schedule (due_at) WHERE due_at IS NOT NULL;

-- Read model: every proposal, with its evidence snapshot and what changed.
CREATE TABLE hypothesis_proposals (
    tenant       text        NOT NULL,
    incident_id  uuid        NOT NULL,
    proposal_id  uuid        NOT NULL,
    seq          bigint      NOT NULL,
    engine       text        NOT NULL,
    model        text,
    inconclusive boolean     NOT NULL,
    proposed_at  timestamptz NOT NULL,
    payload      jsonb       NOT NULL,
    PRIMARY KEY (tenant, incident_id, proposal_id)
);
CREATE INDEX hypothesis_proposals_incident ON hypothesis_proposals (tenant, incident_id, seq DESC);

-- Read model: the hypotheses of every proposal, ranked.
CREATE TABLE hypotheses (
    tenant        text             NOT NULL,
    incident_id   uuid             NOT NULL,
    proposal_id   uuid             NOT NULL,
    hypothesis_id text             NOT NULL,
    rank          integer          NOT NULL,
    cause         text             NOT NULL,
    component     text,
    title         text             NOT NULL,
    confidence    double precision NOT NULL,
    evidence      jsonb            NOT NULL,
    reasoning     text             NOT NULL,
    next_step     text             NOT NULL,
    change        text,
    PRIMARY KEY (tenant, incident_id, proposal_id, hypothesis_id)
);

-- Read model: what people said of a hypothesis (the latest verdict counts).
CREATE TABLE hypothesis_verdicts (
    tenant        text        NOT NULL,
    incident_id   uuid        NOT NULL,
    hypothesis_id text        NOT NULL,
    verdict       text        NOT NULL,
    note          text,
    actor         text        NOT NULL,
    given_at      timestamptz NOT NULL,
    last_seq      bigint      NOT NULL,
    PRIMARY KEY (tenant, incident_id, hypothesis_id)
);

ALTER TABLE incidents ADD COLUMN current_proposal uuid;

-- Read model: every model call (TELEMETRY).
CREATE TABLE usage_events (
    call_id           uuid PRIMARY KEY,
    tenant            text             NOT NULL,
    incident_id       uuid             NOT NULL,
    engine            text             NOT NULL,
    model             text             NOT NULL,
    outcome           text             NOT NULL,
    prompt_tokens     integer          NOT NULL,
    completion_tokens integer          NOT NULL,
    latency_ms        bigint           NOT NULL,
    cost_usd          double precision NOT NULL,
    at                timestamptz      NOT NULL,
    seq               bigint           NOT NULL
);
CREATE INDEX usage_events_tenant ON usage_events (tenant, at DESC);
