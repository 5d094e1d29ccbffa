DROP INDEX agent_events_open_idx;
ALTER TABLE agent_events ALTER COLUMN action TYPE VARCHAR(32) USING action::text;
ALTER TABLE agent_events ALTER COLUMN outcome TYPE VARCHAR(16) USING outcome::text;
ALTER TABLE agent_events ALTER COLUMN outcome SET DEFAULT 'queued';
ALTER TABLE agent_events ADD CONSTRAINT agent_events_outcome_check
    CHECK (outcome IN ('queued', 'running', 'succeeded', 'failed', 'rejected', 'unknown', 'interrupted', 'observed'));
CREATE INDEX agent_events_open_idx ON agent_events (outcome) WHERE outcome IN ('queued', 'running');
DROP TYPE event_outcome;
DROP TYPE event_action;
