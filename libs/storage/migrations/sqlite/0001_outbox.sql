-- Shared by every service database: the transactional outbox and the cursors of the feeds this
-- service consumes. Service migrations are numbered from 0100 so they never collide with these.
CREATE TABLE outbox (
    sequence     INTEGER PRIMARY KEY AUTOINCREMENT,
    topic        TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    payload_type TEXT    NOT NULL,
    payload      BLOB    NOT NULL,
    created_at   INTEGER NOT NULL
);
CREATE INDEX outbox_topic_sequence ON outbox (topic, sequence);

CREATE TABLE consumer_cursors (
    consumer   TEXT    PRIMARY KEY,
    position   INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
