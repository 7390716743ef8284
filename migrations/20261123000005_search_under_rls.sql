-- Full-text search under row-level security. `@@` is not leakproof, so in a transaction confined
-- by the policies Postgres may not use the GIN index on incidents.search and scans the tenant's
-- incidents instead (200 ms at 100k incidents). This function runs as the tables' owner, whom the
-- policies do not restrict, so the index serves it; it takes the tenant from the very setting
-- the policies compare with, never from its caller, so it can return no other tenant's ids.
-- Outside a tenant transaction (no setting) it returns nothing.
CREATE FUNCTION copilot_incident_search(query text) RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT id FROM incidents
    WHERE tenant = current_setting('copilot.tenant', true)
      AND search @@ plainto_tsquery('simple', query)
$$;
REVOKE ALL ON FUNCTION copilot_incident_search(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION copilot_incident_search(text) TO copilot_tenant;
