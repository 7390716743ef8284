-- Links people confirmed between incidents (IncidentLinked events, kept in incident_events like
-- every incident event) are read both ways: from the incident that was caused (its own rows)
-- and from the one that caused it, which this index finds.
CREATE INDEX incident_events_links ON incident_events (tenant, (payload->>'related_incident_id'))
    WHERE type = 'IncidentLinked';
