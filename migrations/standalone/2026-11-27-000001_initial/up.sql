-- Standalone mode: the classic Backend.AI tables the supervisor reads and writes, in `public`, plus the
-- per-access-key concurrency table (Backend.AI keeps those counts in Redis). The daemon's own objects (the audit
-- trail, ...) are in migrations/own, in a schema of their own.

CREATE TYPE agentstatus AS ENUM ('ALIVE', 'LOST', 'RESTARTING', 'TERMINATED');

CREATE TABLE scaling_groups (
    name        VARCHAR(64)  PRIMARY KEY,
    description VARCHAR(512),
    is_active   BOOLEAN      NOT NULL DEFAULT TRUE,
    created_at  TIMESTAMPTZ  NOT NULL DEFAULT now(),
    driver      VARCHAR(64)  NOT NULL DEFAULT 'static',
    scheduler   VARCHAR(64)  NOT NULL DEFAULT 'fifo'
);

CREATE TABLE agents (
    id                            VARCHAR(64)  PRIMARY KEY CHECK (id <> ''),
    status                        agentstatus  NOT NULL DEFAULT 'ALIVE',
    status_changed                TIMESTAMPTZ,
    region                        VARCHAR(64)  NOT NULL,
    scaling_group                 VARCHAR(64)  NOT NULL DEFAULT 'default'
                                  REFERENCES scaling_groups (name) ON UPDATE CASCADE ON DELETE RESTRICT,
    schedulable                   BOOLEAN      NOT NULL DEFAULT TRUE,
    available_slots               JSONB        NOT NULL DEFAULT '{}',
    occupied_slots                JSONB        NOT NULL DEFAULT '{}',
    addr                          VARCHAR(128) NOT NULL,
    public_host                   VARCHAR(256),
    public_key                    VARCHAR(40),
    first_contact                 TIMESTAMPTZ  DEFAULT now(),
    lost_at                       TIMESTAMPTZ,
    version                       VARCHAR(64)  NOT NULL,
    architecture                  VARCHAR(32)  NOT NULL,
    compute_plugins               JSONB        NOT NULL DEFAULT '{}',
    auto_terminate_abusing_kernel BOOLEAN      NOT NULL DEFAULT FALSE
);
CREATE INDEX agents_status_idx ON agents (status);
CREATE INDEX agents_region_idx ON agents (region);
CREATE INDEX agents_scaling_group_idx ON agents (scaling_group);

CREATE TABLE sessions (
    id                 UUID         PRIMARY KEY,
    name               VARCHAR(64),
    session_type       VARCHAR(64)  NOT NULL DEFAULT 'INTERACTIVE'
                       CHECK (session_type IN ('INTERACTIVE', 'BATCH', 'INFERENCE', 'SYSTEM')),
    access_key         VARCHAR(20),
    status             VARCHAR(64)  NOT NULL DEFAULT 'PENDING'
                       CHECK (status IN ('PENDING', 'SCHEDULED', 'PREPARING', 'PULLING', 'PREPARED', 'CREATING',
                                         'RUNNING', 'RESTARTING', 'RUNNING_DEGRADED', 'TERMINATING', 'TERMINATED',
                                         'ERROR', 'CANCELLED')),
    scaling_group_name VARCHAR(64),
    occupying_slots    JSONB        NOT NULL DEFAULT '{}',
    requested_slots    JSONB        NOT NULL DEFAULT '{}',
    agent_ids          TEXT[],
    created_at         TIMESTAMPTZ  NOT NULL DEFAULT now(),
    status_changed     TIMESTAMPTZ,
    terminated_at      TIMESTAMPTZ
);
CREATE INDEX sessions_status_idx ON sessions (status);
CREATE INDEX sessions_access_key_idx ON sessions (access_key);

CREATE TABLE kernels (
    id              UUID         PRIMARY KEY,
    session_id      UUID         NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    session_type    VARCHAR(64)  NOT NULL DEFAULT 'INTERACTIVE'
                    CHECK (session_type IN ('INTERACTIVE', 'BATCH', 'INFERENCE', 'SYSTEM')),
    cluster_role    VARCHAR(16)  NOT NULL DEFAULT 'main',
    scaling_group   VARCHAR(64),
    agent           VARCHAR(64)  REFERENCES agents (id) ON DELETE SET NULL,
    agent_addr      VARCHAR(128),
    access_key      VARCHAR(20),
    image           VARCHAR(512),
    architecture    VARCHAR(32)  NOT NULL DEFAULT 'x86_64',
    container_id    VARCHAR(64),
    occupied_slots  JSONB        NOT NULL DEFAULT '{}',
    requested_slots JSONB        NOT NULL DEFAULT '{}',
    status          VARCHAR(64)  NOT NULL DEFAULT 'PENDING'
                    CHECK (status IN ('PENDING', 'SCHEDULED', 'PREPARING', 'BUILDING', 'PULLING', 'PREPARED',
                                      'CREATING', 'RUNNING', 'RESTARTING', 'RESIZING', 'SUSPENDED', 'TERMINATING',
                                      'TERMINATED', 'ERROR', 'CANCELLED')),
    status_changed  TIMESTAMPTZ,
    status_info     VARCHAR(64),
    created_at      TIMESTAMPTZ  NOT NULL DEFAULT now(),
    terminated_at   TIMESTAMPTZ
);
-- Sync reads one agent's kernels by status; recalculation scans by session.
CREATE INDEX kernels_agent_status_idx ON kernels (agent, status);
CREATE INDEX kernels_session_id_idx ON kernels (session_id);
CREATE INDEX kernels_status_idx ON kernels (status);

CREATE TABLE keypairs (
    access_key    VARCHAR(20)  PRIMARY KEY CHECK (length(access_key) >= 8),
    secret_key    VARCHAR(64)  NOT NULL CHECK (length(secret_key) >= 16),
    user_id       VARCHAR(256),
    is_active     BOOLEAN      NOT NULL DEFAULT TRUE,
    is_superadmin BOOLEAN      NOT NULL DEFAULT FALSE,
    description   VARCHAR(512),
    created_at    TIMESTAMPTZ  NOT NULL DEFAULT now(),
    last_used     TIMESTAMPTZ
);

-- Concurrency per access key, written by recalculation (Backend.AI keeps these in Redis).
CREATE TABLE keypair_resource_usage (
    access_key            VARCHAR(20) PRIMARY KEY,
    concurrency_used      INTEGER     NOT NULL DEFAULT 0 CHECK (concurrency_used >= 0),
    sftp_concurrency_used INTEGER     NOT NULL DEFAULT 0 CHECK (sftp_concurrency_used >= 0),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);
