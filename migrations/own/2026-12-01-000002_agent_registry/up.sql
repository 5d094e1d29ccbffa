-- Standalone mode's agent registry and liveness: registrations, updates and removals of agents, and their liveness
-- transitions (ALIVE <-> LOST), are audited too.
ALTER TYPE event_action ADD VALUE IF NOT EXISTS 'register';
ALTER TYPE event_action ADD VALUE IF NOT EXISTS 'update';
ALTER TYPE event_action ADD VALUE IF NOT EXISTS 'deregister';
ALTER TYPE event_action ADD VALUE IF NOT EXISTS 'liveness';
