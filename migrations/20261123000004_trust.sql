-- Tenants, people and trust: suspension, users, retention, the audit log, and row-level
-- security so that a tenant-scoped transaction cannot see another tenant's rows even when a
-- query forgets its tenant filter.

ALTER TABLE tenants
    ADD COLUMN suspended_at   timestamptz,
    ADD COLUMN suspended_by   text,
    ADD COLUMN suspend_reason text;

-- People of a tenant; user_id is what their JWTs carry as `sub`.
CREATE TABLE users (
    tenant        text        NOT NULL,
    user_id       text        NOT NULL,
    email         text        NOT NULL,
    display_name  text        NOT NULL,
    role          text        NOT NULL CHECK (role IN ('viewer', 'engineer', 'admin')),
    slack_user_id text,
    added_by      text        NOT NULL,
    added_at      timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    last_seq      bigint      NOT NULL,
    PRIMARY KEY (tenant, user_id)
);
CREATE UNIQUE INDEX users_email ON users (tenant, lower(email));

CREATE TABLE tenant_retention (
    tenant    text PRIMARY KEY,
    retention jsonb       NOT NULL,
    set_by    text        NOT NULL,
    set_at    timestamptz NOT NULL,
    last_seq  bigint      NOT NULL
);

-- Every command anyone gave, from the events themselves (those whose envelope names an actor).
-- Keyed by event id, so a replay or a copy of an event makes no second row.
CREATE TABLE audit_log (
    event_id    uuid        PRIMARY KEY,
    tenant      text        NOT NULL,
    at          timestamptz NOT NULL,
    actor       text        NOT NULL,
    action      text        NOT NULL,
    target      text        NOT NULL,
    request_id  text,
    source_addr text,
    details     jsonb       NOT NULL
);
CREATE INDEX audit_log_newest ON audit_log (tenant, at DESC, event_id DESC);

-- Row-level security. The API reads as copilot_tenant, inside a transaction that names the
-- tenant (Store::begin_tenant): every policy compares the row's tenant to that name, so a row of
-- another tenant is invisible whatever the query says. Every copilot process must connect as
-- the tables' owner (the role that ran these migrations): the policies do not restrict the owner,
-- so the projector, correlator and hypothesis service work across tenants, while any other role
-- would see no rows at all. The role is cluster-wide; several databases (or concurrent migrations) may
-- try to create it, so a duplicate is not an error.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'copilot_tenant') THEN
        CREATE ROLE copilot_tenant NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN
        NULL;
    WHEN insufficient_privilege THEN
        RAISE EXCEPTION 'the copilot needs a role copilot_tenant it can switch to: as a superuser run CREATE ROLE copilot_tenant NOLOGIN; GRANT copilot_tenant TO %;', current_user;
END
$$;

-- The owner must be able to SET ROLE copilot_tenant: membership before PostgreSQL 16, the SET
-- option from 16 on (a CREATEROLE creator otherwise gets ADMIN only).
DO $$
DECLARE
    v16 boolean := current_setting('server_version_num')::int >= 160000;
BEGIN
    IF v16 AND NOT pg_has_role(current_user, 'copilot_tenant', 'SET') THEN
        EXECUTE format('GRANT copilot_tenant TO %I WITH SET TRUE', current_user);
    ELSIF NOT v16 AND NOT pg_has_role(current_user, 'copilot_tenant', 'MEMBER') THEN
        EXECUTE format('GRANT copilot_tenant TO %I', current_user);
    END IF;
EXCEPTION
    WHEN unique_violation THEN
        NULL;
    WHEN insufficient_privilege THEN
        RAISE EXCEPTION 'the copilot cannot switch to role copilot_tenant: as a superuser run GRANT copilot_tenant TO %;', current_user;
END
$$;

GRANT USAGE ON SCHEMA public TO copilot_tenant;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY[
        'webhook_tokens', 'signals', 'dead_letters', 'correlation_rules', 'incidents',
        'incident_signals', 'incident_notes', 'incident_events', 'tenant_integrations',
        'hypothesis_proposals', 'hypotheses', 'hypothesis_verdicts', 'usage_events', 'users',
        'tenant_retention', 'audit_log'
    ] LOOP
        EXECUTE format('GRANT SELECT ON %I TO copilot_tenant', t);
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I TO copilot_tenant
                 USING (tenant = current_setting(''copilot.tenant'', true))', t);
    END LOOP;
END
$$;

GRANT SELECT ON tenants TO copilot_tenant;
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants TO copilot_tenant
    USING (slug = current_setting('copilot.tenant', true));
