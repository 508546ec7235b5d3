-- mfp-storage schema, version 3: cross-runtime channels and their outbound log. Documented
-- in src/lib.rs ("Schema"). Only adds tables: rows of version 2 stay as they are.
-- (`inbox.sender` has no reference to `agents`, so a delivery from an agent of a peer runtime
-- needs no change there.)

CREATE TABLE remote_channels (
    channel_id               BLOB    PRIMARY KEY CHECK (length(channel_id) = 16),
    -- The agent of this runtime.
    local_agent              BLOB    NOT NULL REFERENCES agents (agent_id),
    -- The peer runtime and its agent: no reference, they are not stored here.
    peer_runtime             BLOB    NOT NULL CHECK (length(peer_runtime) = 32),
    remote_agent             BLOB    NOT NULL CHECK (length(remote_agent) = 32),
    depth                    INTEGER NOT NULL CHECK (depth BETWEEN 2 AND 256),
    status                   TEXT    NOT NULL CHECK (status IN ('active', 'quarantined', 'closed')),
    -- The outbound chain (step of the next message sent).
    tx_step                  INTEGER NOT NULL CHECK (tx_step >= 0),
    tx_ratchet               BLOB,   -- encrypted
    tx_prng_seed             BLOB,   -- encrypted
    -- The inbound chain (step of the next message expected).
    rx_step                  INTEGER NOT NULL CHECK (rx_step >= 0),
    rx_ratchet               BLOB,   -- encrypted
    rx_prng_seed             BLOB,   -- encrypted
    validation_failure_count INTEGER NOT NULL DEFAULT 0 CHECK (validation_failure_count BETWEEN 0 AND 4294967295),
    -- A rotation of the inbound chain accepted and not yet seen in a message: its X25519
    -- secret, encrypted; NULL when none (always NULL once closed).
    rx_rotation              BLOB,
    created_at               INTEGER NOT NULL,
    updated_at               INTEGER NOT NULL,
    -- The four secrets are NULL exactly when the channel is closed (its chains are wiped).
    CHECK ((status = 'closed') = (tx_ratchet IS NULL)),
    CHECK ((status = 'closed') = (tx_prng_seed IS NULL)),
    CHECK ((status = 'closed') = (rx_ratchet IS NULL)),
    CHECK ((status = 'closed') = (rx_prng_seed IS NULL)),
    CHECK (status <> 'closed' OR rx_rotation IS NULL)
);
CREATE INDEX remote_channels_local_agent ON remote_channels (local_agent);
CREATE INDEX remote_channels_peer ON remote_channels (peer_runtime);

-- Messages sealed on a cross-runtime channel and not acknowledged by the peer yet.
CREATE TABLE remote_outbound (
    channel_id   BLOB    NOT NULL REFERENCES remote_channels (channel_id) ON DELETE CASCADE,
    step         INTEGER NOT NULL CHECK (step >= 0),
    peer_runtime BLOB    NOT NULL CHECK (length(peer_runtime) = 32),
    wire         BLOB    NOT NULL, -- encrypted
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (channel_id, step)
) WITHOUT ROWID;

-- Peer runtimes: the greatest handshake timestamp accepted from each, so a recorded
-- handshake message 1 stays refused across restarts (not secret: stored in clear).
CREATE TABLE peers (
    runtime_id      BLOB    PRIMARY KEY CHECK (length(runtime_id) = 32),
    handshake_secs  INTEGER NOT NULL CHECK (handshake_secs >= 0),
    handshake_nanos INTEGER NOT NULL CHECK (handshake_nanos BETWEEN 0 AND 999999999),
    updated_at      INTEGER NOT NULL
) WITHOUT ROWID;

UPDATE mfp_schema SET version = 3 WHERE id = 1;
