-- High availability: the epoch (the create revision of the leader key in etcd) of the replica that leads. Every write
-- that starts or finishes a command, a sync or a recalculation checks it in its transaction, so a deposed leader
-- cannot write. One row at most.
CREATE TABLE ha_leader (
    singleton  BOOLEAN     PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    epoch      BIGINT      NOT NULL CHECK (epoch > 0),
    replica_id TEXT        NOT NULL,
    url        TEXT        NOT NULL,
    since      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The epoch a command ran under (NULL without high availability), so a new leader can tell the old leader's
-- unfinished commands.
ALTER TABLE agent_events ADD COLUMN epoch BIGINT;
