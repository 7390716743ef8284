-- Grafana reads the read models as one login role per tenant. Each such role is a member of
-- copilot_grafana and named in grafana_readers with its tenant; the policies below show it that
-- tenant's rows only. The tenant comes from the login (session_user), which the reader cannot
-- change, not from a setting it could SET. Secrets, token hashes and the copilot's own state are
-- not granted. `copilot tenants grafana-reader SLUG` makes or adopts such a role.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'copilot_grafana') THEN
        CREATE ROLE copilot_grafana NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN
        NULL;
END
$$;

CREATE TABLE grafana_readers (
    role_name  text PRIMARY KEY,
    tenant     text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION copilot_grafana_tenant() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT tenant FROM grafana_readers WHERE role_name = session_user
$$;
REVOKE ALL ON FUNCTION copilot_grafana_tenant() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION copilot_grafana_tenant() TO copilot_grafana;
GRANT USAGE ON SCHEMA public TO copilot_grafana;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY[
        'signals', 'correlation_rules', 'incidents', 'incident_signals', 'incident_notes',
        'incident_events', 'tenant_integrations', 'hypothesis_proposals', 'hypotheses',
        'hypothesis_verdicts', 'usage_events', 'users', 'tenant_retention', 'audit_log', 'tasks',
        'task_logs', 'workers', 'slack_status'
    ] LOOP
        EXECUTE format('GRANT SELECT ON %I TO copilot_grafana', t);
        EXECUTE format(
            'CREATE POLICY grafana_reader ON %I FOR SELECT TO copilot_grafana
                 USING (tenant = copilot_grafana_tenant())', t);
    END LOOP;
END
$$;

GRANT SELECT ON tenants TO copilot_grafana;
CREATE POLICY grafana_reader ON tenants FOR SELECT TO copilot_grafana
    USING (slug = copilot_grafana_tenant());
