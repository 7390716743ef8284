-- The correlator's incidents keep the lifecycle state of the incident aggregate
-- (copilot_commands::incident), spelt as the read model spells it (detected, acknowledged,
-- investigating, mitigated, resolved, learned, inconclusive), instead of the phases open, resolved
-- and closed. The correlator now follows every transition a person makes, so the state it keeps is
-- the incident's. Rows written before take the read model's state where it is in the same phase,
-- else the first state of their phase: the correlator decides on the phase alone, so either is
-- right for it.
UPDATE correlator_incidents c SET state = CASE c.state
    WHEN 'open' THEN coalesce(
        (SELECT i.state FROM incidents i WHERE i.tenant = c.tenant AND i.id = c.id
            AND i.state IN ('detected', 'acknowledged', 'investigating', 'mitigated')),
        'detected')
    ELSE coalesce(
        (SELECT i.state FROM incidents i WHERE i.tenant = c.tenant AND i.id = c.id
            AND i.state IN ('learned', 'inconclusive')),
        'learned')
    END
WHERE c.state IN ('open', 'closed');
