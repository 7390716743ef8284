-- Incidents. Two kinds of tables: the correlator's own state (correlator_*), written only by the
-- correlator in the same transaction as its checkpoint; and the incident read models, written
-- only by the projector from the INCIDENTS stream.

-- A tenant's correlation rules (from CorrelationRulesSet on the TENANTS stream; projector).
CREATE TABLE correlation_rules (
    tenant   text PRIMARY KEY,
    rules    jsonb       NOT NULL,
    set_by   text        NOT NULL,
    set_at   timestamptz NOT NULL,
    last_seq bigint      NOT NULL
);

-- Correlator state: each incident it opened, by correlation key.
CREATE TABLE correlator_incidents (
    tenant         text        NOT NULL,
    id             uuid        NOT NULL,
    key            text        NOT NULL,
    -- open | resolved | closed (reviewed: never reopened by signals)
    state          text        NOT NULL,
    opened_at      timestamptz NOT NULL, -- signal clock: the opening alert's startsAt
    window_from    timestamptz NOT NULL, -- where its window starts: the opening or the last reopen
    last_signal_at timestamptz NOT NULL,
    resolved_at    timestamptz,
    -- set when the last firing alert resolved; the incident resolves once this has passed
    resolve_due    timestamptz,
    generation     integer     NOT NULL, -- reopens so far
    firing         integer[]   NOT NULL, -- attached alerts still firing, by severity rank (0-4)
    top_rank       smallint    NOT NULL, -- highest severity rank ever attached
    PRIMARY KEY (tenant, id)
);
CREATE INDEX correlator_incidents_key ON correlator_incidents (tenant, key, opened_at DESC);
CREATE INDEX correlator_incidents_due ON correlator_incidents (resolve_due) WHERE resolve_due IS NOT NULL;

-- Correlator state: every alert instance it has seen, and the incident it joined (NULL while it
-- waits for its key's threshold, or when it arrived already resolved).
CREATE TABLE correlator_signals (
    tenant        text        NOT NULL,
    signal_id     uuid        NOT NULL,
    incident_id   uuid,
    key           text        NOT NULL,
    status        text        NOT NULL,
    severity_rank smallint    NOT NULL,
    at            timestamptz NOT NULL,
    -- what SignalAttached needs, kept while the signal waits for its key's threshold
    pending       jsonb,
    PRIMARY KEY (tenant, signal_id)
);
CREATE INDEX correlator_signals_incident ON correlator_signals (tenant, incident_id) WHERE incident_id IS NOT NULL;
CREATE INDEX correlator_signals_pending ON correlator_signals (tenant, key, at) WHERE pending IS NOT NULL;

-- Read model: one row per incident.
CREATE TABLE incidents (
    tenant           text        NOT NULL,
    id               uuid        NOT NULL,
    key              text        NOT NULL,
    title            text        NOT NULL,
    service          text,
    severity         text        NOT NULL,
    severity_rank    smallint    NOT NULL,
    state            text        NOT NULL,
    labels           jsonb       NOT NULL,
    rule             text        NOT NULL,
    assignee         text,
    signal_count     integer     NOT NULL,
    firing_count     integer     NOT NULL,
    reopen_count     integer     NOT NULL,
    opened_at        timestamptz NOT NULL,
    acknowledged_at  timestamptz,
    mitigated_at     timestamptz,
    resolved_at      timestamptz,
    updated_at       timestamptz NOT NULL,
    last_seq         bigint      NOT NULL, -- stream sequence of its last event: the version
    search           tsvector GENERATED ALWAYS AS
                         (to_tsvector('simple', title || ' ' || coalesce(service, '') || ' ' || key)) STORED,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX incidents_newest ON incidents (tenant, opened_at DESC, id DESC);
CREATE INDEX incidents_state ON incidents (tenant, state, opened_at DESC, id DESC);
CREATE INDEX incidents_severity ON incidents (tenant, severity_rank DESC, opened_at DESC, id DESC);
CREATE INDEX incidents_updated ON incidents (tenant, updated_at DESC, id DESC);
-- Open incidents are few among many resolved ones: their own indexes, for `open=true`.
CREATE INDEX incidents_open_newest ON incidents (tenant, opened_at DESC, id DESC)
    WHERE state NOT IN ('resolved', 'learned', 'inconclusive');
CREATE INDEX incidents_open_severity ON incidents (tenant, severity_rank DESC, opened_at DESC, id DESC)
    WHERE state NOT IN ('resolved', 'learned', 'inconclusive');
CREATE INDEX incidents_search ON incidents USING gin (search);
CREATE INDEX incidents_labels ON incidents USING gin (labels jsonb_path_ops);

-- Read model: the signals of each incident and why each joined.
CREATE TABLE incident_signals (
    tenant      text        NOT NULL,
    incident_id uuid        NOT NULL,
    signal_id   uuid        NOT NULL,
    fingerprint text        NOT NULL,
    title       text        NOT NULL,
    severity    text        NOT NULL,
    status      text        NOT NULL,
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz,
    attached_at timestamptz NOT NULL,
    explanation text        NOT NULL,
    last_seq    bigint      NOT NULL,
    PRIMARY KEY (tenant, incident_id, signal_id)
);

CREATE TABLE incident_notes (
    tenant      text        NOT NULL,
    incident_id uuid        NOT NULL,
    note_id     uuid        NOT NULL,
    author      text        NOT NULL,
    text        text        NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant, incident_id, note_id)
);

-- Read model: every event of every incident, for the timeline. Keyed by the envelope id, so a
-- copy of a decision that outlived JetStream's duplicate window is recognised and skipped.
CREATE TABLE incident_events (
    event_id    uuid PRIMARY KEY,
    tenant      text        NOT NULL,
    incident_id uuid        NOT NULL,
    seq         bigint      NOT NULL,
    type        text        NOT NULL,
    actor       text        NOT NULL,
    request_id  text,
    occurred_at timestamptz NOT NULL,
    payload     jsonb       NOT NULL
);
CREATE INDEX incident_events_incident ON incident_events (tenant, incident_id, seq);
