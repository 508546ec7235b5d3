-- mfp-storage schema, version 4: resets and confirmations of cross-runtime channels.
-- Documented in src/lib.rs ("Schema"). Rows of version 3 keep their values: a channel
-- never reset has no reset id (its message ids stay what they were), and a channel stored
-- before counts as confirmed (version 3 kept that mark in memory only).

-- The id of the channel's latest reset with its peer, mixed into the ids of the messages
-- after it (not secret); NULL if the channel was never reset.
ALTER TABLE remote_channels ADD COLUMN reset_id BLOB CHECK (reset_id IS NULL OR length(reset_id) = 16);
-- 1 while this runtime accepted the channel and its opener has not confirmed storing it.
ALTER TABLE remote_channels ADD COLUMN unconfirmed INTEGER NOT NULL DEFAULT 0 CHECK (unconfirmed IN (0, 1));

-- The inbox: a reset channel starts its steps again at 0, so a message from before the
-- reset and one from after may share (channel_id, step) while the first is not handled
-- yet. Both are kept (they differ by message id); a removal takes the one stored first
-- (the lowest id), which its recipient handles first. SQLite cannot change a table's
-- constraints in place: the table is rebuilt, ids and rows kept.
CREATE TABLE inbox_v4 (
    id             INTEGER PRIMARY KEY,
    channel_id     BLOB    NOT NULL CHECK (length(channel_id) = 16),
    recipient      BLOB    NOT NULL REFERENCES agents (agent_id) ON DELETE CASCADE,
    step           INTEGER NOT NULL CHECK (step >= 0),
    message_id     BLOB    NOT NULL CHECK (length(message_id) = 16),
    correlation_id BLOB    NOT NULL CHECK (length(correlation_id) = 8),
    sender         BLOB    NOT NULL CHECK (length(sender) = 32),
    payload        BLOB    NOT NULL, -- encrypted
    created_at     INTEGER NOT NULL,
    UNIQUE (channel_id, step, message_id)
);
INSERT INTO inbox_v4 (id, channel_id, recipient, step, message_id, correlation_id, sender, payload, created_at)
    SELECT id, channel_id, recipient, step, message_id, correlation_id, sender, payload, created_at FROM inbox;
DROP TABLE inbox;
ALTER TABLE inbox_v4 RENAME TO inbox;
CREATE INDEX inbox_recipient ON inbox (recipient, id);

UPDATE mfp_schema SET version = 4 WHERE id = 1;
