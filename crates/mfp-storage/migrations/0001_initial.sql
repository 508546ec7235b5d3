-- mfp-storage schema, version 1. Documented in src/lib.rs ("Schema").
-- Runs in one transaction (sqlx migrator); the application id marks the file as ours.

PRAGMA application_id = 1296453715; -- 0x4D465053, ASCII "MFPS"

CREATE TABLE mfp_schema (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    application TEXT    NOT NULL CHECK (application = 'mfp-storage'),
    version     INTEGER NOT NULL CHECK (version >= 1)
);
INSERT INTO mfp_schema (id, application, version) VALUES (1, 'mfp-storage', 1);

CREATE TABLE mfp_keys (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    salt       BLOB    NOT NULL CHECK (length(salt) = 32),
    key_id     BLOB    NOT NULL CHECK (length(key_id) = 8),
    key_check  BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    rotated_at INTEGER
);

CREATE TABLE runtime_meta (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    identity      BLOB    NOT NULL CHECK (length(identity) = 32),
    deployment_id BLOB    NOT NULL,
    instance_id   BLOB    NOT NULL,
    agent_counter INTEGER NOT NULL CHECK (agent_counter >= 0),
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

CREATE TABLE agents (
    agent_id          BLOB    PRIMARY KEY CHECK (length(agent_id) = 32),
    name              TEXT,
    state             TEXT    NOT NULL CHECK (state IN ('bound', 'active', 'quarantined', 'terminated')),
    quarantine_reason TEXT    NOT NULL DEFAULT '',
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);
-- Names are unique among agents that are not terminated.
CREATE UNIQUE INDEX agents_name ON agents (name) WHERE name IS NOT NULL AND state <> 'terminated';
CREATE INDEX agents_state ON agents (state);

CREATE TABLE channels (
    channel_id               BLOB    PRIMARY KEY CHECK (length(channel_id) = 16),
    agent_a                  BLOB    NOT NULL REFERENCES agents (agent_id),
    agent_b                  BLOB    NOT NULL REFERENCES agents (agent_id),
    depth                    INTEGER NOT NULL CHECK (depth BETWEEN 2 AND 256),
    status                   TEXT    NOT NULL CHECK (status IN ('active', 'quarantined', 'closed')),
    step                     INTEGER NOT NULL CHECK (step >= 0),
    -- Encrypted; NULL exactly when the channel is closed (its state is wiped).
    local_state              BLOB,
    validation_failure_count INTEGER NOT NULL DEFAULT 0 CHECK (validation_failure_count BETWEEN 0 AND 4294967295),
    created_at               INTEGER NOT NULL,
    updated_at               INTEGER NOT NULL,
    CHECK ((status = 'closed') = (local_state IS NULL))
);
CREATE INDEX channels_agent_a ON channels (agent_a);
CREATE INDEX channels_agent_b ON channels (agent_b);
CREATE INDEX channels_status ON channels (status);

CREATE TABLE sg_cache (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    sg_value   BLOB    NOT NULL, -- encrypted
    updated_at INTEGER NOT NULL
);

CREATE TABLE bilateral_channels (
    bilateral_id     BLOB    PRIMARY KEY CHECK (length(bilateral_id) = 32),
    runtime_id_local BLOB    NOT NULL CHECK (length(runtime_id_local) = 32),
    runtime_id_peer  BLOB    NOT NULL CHECK (length(runtime_id_peer) = 32),
    ratchet_state    BLOB    NOT NULL, -- encrypted
    shared_prng_seed BLOB    NOT NULL, -- encrypted
    step             INTEGER NOT NULL CHECK (step >= 0),
    status           TEXT    NOT NULL CHECK (status IN ('active', 'recovery', 'suspended')),
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX bilateral_channels_peer ON bilateral_channels (runtime_id_peer);

CREATE TABLE pending_outbound (
    id           INTEGER PRIMARY KEY CHECK (id >= 0),
    bilateral_id BLOB    NOT NULL REFERENCES bilateral_channels (bilateral_id) ON DELETE CASCADE,
    channel_id   BLOB    NOT NULL CHECK (length(channel_id) = 16),
    step         INTEGER NOT NULL CHECK (step >= 0),
    wire         BLOB    NOT NULL, -- encrypted
    created_at   INTEGER NOT NULL
);
CREATE INDEX pending_outbound_bilateral ON pending_outbound (bilateral_id, id);
