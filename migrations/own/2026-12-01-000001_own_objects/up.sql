-- The daemon's own objects. They live in a schema of their own (database.own_schema, default agent_supervisor): the
-- daemon migrates with search_path set to it, so every unqualified name here lands there, and Backend.AI's alembic
-- never sees them. A database made by agent-supervisor 0.1 kept them in public: they are moved here.

-- The audit trail's closed vocabularies.
CREATE TYPE event_action AS ENUM ('start', 'stop', 'restart', 'sync', 'observe');
CREATE TYPE event_outcome AS ENUM ('running', 'succeeded', 'failed', 'rejected', 'unknown', 'interrupted', 'observed');

DO $migrate$
BEGIN
    IF current_schema() <> 'public' AND to_regclass('public.agent_events') IS NOT NULL THEN
        -- 0.1's audit trail: moved with its rows and indexes; 'queued' was never written.
        EXECUTE format('ALTER TABLE public.agent_events SET SCHEMA %I', current_schema());
        DROP INDEX agent_events_open_idx;
        ALTER TABLE agent_events DROP CONSTRAINT IF EXISTS agent_events_outcome_check;
        ALTER TABLE agent_events ALTER COLUMN outcome DROP DEFAULT;
        UPDATE agent_events SET outcome = 'interrupted', finished_at = coalesce(finished_at, now())
            WHERE outcome = 'queued';
        ALTER TABLE agent_events ALTER COLUMN outcome TYPE event_outcome USING outcome::event_outcome;
        ALTER TABLE agent_events ALTER COLUMN action TYPE event_action USING action::event_action;
    ELSE
        -- One row per audited event: a command's row is inserted when it starts ('running') and updated when it ends.
        CREATE TABLE agent_events (
            id           BIGSERIAL     PRIMARY KEY,
            agent_id     VARCHAR(64)   NOT NULL,
            action       event_action  NOT NULL,
            requester    VARCHAR(256)  NOT NULL,
            requested_at TIMESTAMPTZ   NOT NULL DEFAULT now(),
            started_at   TIMESTAMPTZ,
            finished_at  TIMESTAMPTZ,
            outcome      event_outcome NOT NULL,
            http_status  SMALLINT,
            detail       JSONB         NOT NULL DEFAULT '{}'
        );
        CREATE INDEX agent_events_agent_idx ON agent_events (agent_id, id DESC);
    END IF;
    CREATE INDEX agent_events_open_idx ON agent_events (id) WHERE outcome = 'running';

    IF current_schema() <> 'public' AND to_regprocedure('public.slot_each(jsonb)') IS NOT NULL THEN
        EXECUTE format('ALTER FUNCTION public.slot_each(jsonb) SET SCHEMA %I', current_schema());
    ELSE
        -- jsonb_each_text() is declared ROWS 100 while a resource slot map has about three keys; that estimate
        -- drives the planner into index-ordered nested loops at scale. A STRICT (hence non-inlined) wrapper carries
        -- the right estimate. Recalculation uses it in both modes.
        CREATE FUNCTION slot_each(jsonb) RETURNS TABLE (key text, value text)
            LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE ROWS 4
            AS 'SELECT * FROM jsonb_each_text($1)';
    END IF;
END
$migrate$;
