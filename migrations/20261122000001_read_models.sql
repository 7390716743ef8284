-- Read models of the event backbone. Only the projector writes these tables; every row carries
-- the stream sequence of the last event applied to it (last_seq), so a replay or a redelivery
-- can never move a row backwards.

CREATE TABLE projection_checkpoints (
    projection text PRIMARY KEY,
    stream     text   NOT NULL,
    last_seq   bigint NOT NULL
);

CREATE TABLE tenants (
    slug       text PRIMARY KEY,
    name       text        NOT NULL,
    created_by text        NOT NULL,
    created_at timestamptz NOT NULL,
    last_seq   bigint      NOT NULL
);

CREATE TABLE webhook_tokens (
    token_id   uuid PRIMARY KEY,
    tenant     text        NOT NULL,
    token_hash text        NOT NULL UNIQUE,
    prefix     text        NOT NULL,
    issued_by  text        NOT NULL,
    issued_at  timestamptz NOT NULL,
    revoked_at timestamptz,
    revoked_by text,
    last_seq   bigint      NOT NULL
);
CREATE INDEX webhook_tokens_tenant ON webhook_tokens (tenant, issued_at);

-- One row per alert instance: a tenant's fingerprint firing from one starts_at. The id is
-- derived from exactly those three (SignalReceived::instance_id) and begins with starts_at in
-- milliseconds, so the one index, (tenant, id), serves lookups, newest-first pages and upserts.
CREATE TABLE signals (
    id                 uuid        NOT NULL,
    tenant             text        NOT NULL,
    fingerprint        text        NOT NULL,
    starts_at          timestamptz NOT NULL,
    source             text        NOT NULL,
    status             text        NOT NULL,
    severity           text        NOT NULL,
    service            text,
    title              text        NOT NULL,
    labels             jsonb       NOT NULL,
    annotations        jsonb       NOT NULL,
    "values"           jsonb,
    generator_url      text,
    group_key          text,
    receiver           text,
    ends_at            timestamptz,
    first_received_at  timestamptz NOT NULL,
    last_received_at   timestamptz NOT NULL,
    notification_count integer     NOT NULL,
    raw                json        NOT NULL, -- json, not jsonb: the alert's bytes exactly as received
    last_event_id      uuid        NOT NULL,
    last_request_id    text,
    last_seq           bigint      NOT NULL,
    PRIMARY KEY (tenant, id)
);

-- Events a projection could not apply, parked with the reason (also published to the
-- DEADLETTERS stream). Written in the same transaction that moves the checkpoint past them.
CREATE TABLE dead_letters (
    projection text   NOT NULL,
    tenant     text   NOT NULL, -- from the subject the event was read on
    stream     text   NOT NULL,
    seq        bigint NOT NULL,
    subject    text   NOT NULL,
    reason     text   NOT NULL,
    body       bytea  NOT NULL,
    PRIMARY KEY (projection, seq)
);
