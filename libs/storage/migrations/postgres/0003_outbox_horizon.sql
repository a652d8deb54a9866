-- Shared by every service database: how far the outbox retention pruned the feed. One row per topic
-- that lost rows: the highest pruned sequence of that topic, so that a consumer filtering on rare topics
-- is only told it fell behind when a row it would have read is gone. The feed's horizon (every row at or
-- below it is pruned) is the largest through_sequence. Sequences are never reused (BIGSERIAL).
CREATE TABLE outbox_horizon (
    topic            TEXT    PRIMARY KEY,
    through_sequence BIGINT  NOT NULL,
    -- The created_at cutoff of the prune that last moved this row, and when it ran (ms since the epoch).
    pruned_before    BIGINT  NOT NULL,
    pruned_at        BIGINT  NOT NULL
);

-- The pruner looks for the newest row older than the cutoff.
CREATE INDEX outbox_created_at ON outbox (created_at);
