ALTER TABLE agent_events DROP COLUMN epoch;
DROP TABLE ha_leader;
