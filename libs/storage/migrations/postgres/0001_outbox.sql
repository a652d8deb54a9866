-- Shared by every service schema: the transactional outbox and the cursors of the feeds this
-- service consumes. Service migrations are numbered from 0100 so they never collide with these.
CREATE TABLE outbox (
    sequence     BIGSERIAL PRIMARY KEY,
    topic        TEXT      NOT NULL,
    key          TEXT      NOT NULL,
    payload_type TEXT      NOT NULL,
    payload      BYTEA     NOT NULL,
    created_at   BIGINT    NOT NULL
);
CREATE INDEX outbox_topic_sequence ON outbox (topic, sequence);

CREATE TABLE consumer_cursors (
    consumer   TEXT   PRIMARY KEY,
    position   BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
