-- Whether a tenant's Slack is working: the notifier's last error and last success. This is the
-- state of a side effect, not a read model: it is written by the Slack notifier as it calls
-- Slack, shown in GET /v1/settings/integrations, and not rebuilt from the streams (a rebuild
-- never calls Slack). What the copilot posted is on the incidents' subjects
-- (SlackMessagePosted, kept in incident_events).
CREATE TABLE slack_status (
    tenant         text PRIMARY KEY,
    last_error     text,
    last_error_at  timestamptz,
    errors_total   bigint      NOT NULL DEFAULT 0,
    last_ok_at     timestamptz
);

GRANT SELECT ON slack_status TO copilot_tenant;
ALTER TABLE slack_status ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON slack_status TO copilot_tenant
    USING (tenant = current_setting('copilot.tenant', true));

CREATE INDEX incident_events_slack ON incident_events (tenant, incident_id)
    WHERE type = 'SlackMessagePosted';
