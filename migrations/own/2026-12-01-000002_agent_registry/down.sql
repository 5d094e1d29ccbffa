-- An enum label cannot be dropped: the type is rebuilt without them (their rows go first).
DELETE FROM agent_events WHERE action::text IN ('register', 'update', 'deregister', 'liveness');
ALTER TYPE event_action RENAME TO event_action_old;
CREATE TYPE event_action AS ENUM ('start', 'stop', 'restart', 'sync', 'observe');
ALTER TABLE agent_events ALTER COLUMN action TYPE event_action USING action::text::event_action;
DROP TYPE event_action_old;
