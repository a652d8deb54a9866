-- The profile store: one row per customer with traits and computed traits, the event timeline, and
-- aliases of customers identity merged away.
CREATE TABLE profiles (
    customer_id TEXT PRIMARY KEY,
    traits      TEXT   NOT NULL DEFAULT '{}',   -- JSON: name -> value
    trait_meta  TEXT   NOT NULL DEFAULT '{}',   -- JSON: name -> {at, source}
    computed    TEXT   NOT NULL DEFAULT '{}',   -- JSON: computed::Computed
    segments    TEXT   NOT NULL DEFAULT '[]',   -- JSON: segment ids the customer is in
    version     BIGINT NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_id TEXT   NOT NULL,
    message_id  TEXT   NOT NULL UNIQUE,
    -- the customer the event was first resolved to, so a split can move it back
    origin_customer_id TEXT NOT NULL,
    name        TEXT   NOT NULL,
    occurred_at BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    properties  TEXT   NOT NULL DEFAULT '{}',
    context     TEXT   NOT NULL DEFAULT '{}'
);
CREATE INDEX events_customer_time ON events (customer_id, occurred_at);
CREATE INDEX events_name_time ON events (name, occurred_at);

-- customer ids identity merged away, and their survivor
CREATE TABLE profile_aliases (
    customer_id TEXT PRIMARY KEY,
    survivor    TEXT NOT NULL
);
CREATE INDEX profile_aliases_survivor ON profile_aliases (survivor);

-- Segments: a CEL rule over the profile; membership kept up to date on every change.
CREATE TABLE segments (
    id          TEXT PRIMARY KEY,
    name        TEXT   NOT NULL UNIQUE,
    rule        TEXT   NOT NULL,
    description TEXT   NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE segment_members (
    segment_id  TEXT   NOT NULL,
    customer_id TEXT   NOT NULL,
    since       BIGINT NOT NULL,
    PRIMARY KEY (segment_id, customer_id)
);
CREATE INDEX segment_members_customer ON segment_members (customer_id);
