-- mfp-storage schema, version 2: the durable inbox. Documented in src/lib.rs ("Schema").
-- A message stays here from the commit of its channel advance (same transaction) until its
-- recipient's handler has returned; what is left at a restart is delivered again.

CREATE TABLE inbox (
    id             INTEGER PRIMARY KEY,
    -- No reference to channels: a closed channel's row is deleted when one of its agents
    -- goes, and a message it carried to the other agent must still be delivered.
    channel_id     BLOB    NOT NULL CHECK (length(channel_id) = 16),
    recipient      BLOB    NOT NULL REFERENCES agents (agent_id) ON DELETE CASCADE,
    step           INTEGER NOT NULL CHECK (step >= 0),
    message_id     BLOB    NOT NULL CHECK (length(message_id) = 16),
    correlation_id BLOB    NOT NULL CHECK (length(correlation_id) = 8),
    sender         BLOB    NOT NULL CHECK (length(sender) = 32),
    payload        BLOB    NOT NULL, -- encrypted
    created_at     INTEGER NOT NULL,
    UNIQUE (channel_id, step)
);
CREATE INDEX inbox_recipient ON inbox (recipient, id);

UPDATE mfp_schema SET version = 2 WHERE id = 1;
