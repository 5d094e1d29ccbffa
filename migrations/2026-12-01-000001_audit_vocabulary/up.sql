-- The audit trail's closed vocabularies become enum types, as agents.status is. 'queued' was never written: a
-- command's row is inserted when it starts ('running').
CREATE TYPE event_action AS ENUM ('start', 'stop', 'restart', 'sync', 'observe');
CREATE TYPE event_outcome AS ENUM ('running', 'succeeded', 'failed', 'rejected', 'unknown', 'interrupted', 'observed');

DROP INDEX agent_events_open_idx;
ALTER TABLE agent_events DROP CONSTRAINT agent_events_outcome_check;
ALTER TABLE agent_events ALTER COLUMN outcome DROP DEFAULT;
UPDATE agent_events SET outcome = 'interrupted', finished_at = coalesce(finished_at, now()) WHERE outcome = 'queued';
ALTER TABLE agent_events ALTER COLUMN outcome TYPE event_outcome USING outcome::event_outcome;
ALTER TABLE agent_events ALTER COLUMN action TYPE event_action USING action::event_action;
CREATE INDEX agent_events_open_idx ON agent_events (id) WHERE outcome = 'running';
