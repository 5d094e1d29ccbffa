DROP FUNCTION IF EXISTS slot_each(jsonb);
DROP TABLE IF EXISTS agent_events;
DROP TYPE IF EXISTS event_outcome;
DROP TYPE IF EXISTS event_action;
