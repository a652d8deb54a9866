-- The deterministic identity graph: customers, their identifiers, merges and splits with evidence.
CREATE TABLE customers (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL DEFAULT 'person',
    created_at  BIGINT NOT NULL,
    -- set when this customer was merged into another: this id is then an alias of merged_into
    merged_into TEXT,
    merged_at   BIGINT
);
CREATE INDEX customers_merged_into ON customers (merged_into);

CREATE TABLE identifiers (
    id_type     TEXT NOT NULL,
    namespace   TEXT NOT NULL DEFAULT '',
    value       TEXT NOT NULL,
    customer_id TEXT NOT NULL REFERENCES customers (id),
    source      TEXT NOT NULL DEFAULT '',
    first_seen  BIGINT NOT NULL,
    last_seen   BIGINT NOT NULL,
    PRIMARY KEY (id_type, namespace, value)
);
CREATE INDEX identifiers_customer ON identifiers (customer_id);

-- One row per merge or split, with its evidence as JSON.
CREATE TABLE graph_changes (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,             -- merge | split | attach | refusal
    customer_id TEXT NOT NULL,             -- the survivor of a merge, the customer split
    other_id    TEXT,                      -- the merged-away customer, or the customer split off
    rule        TEXT NOT NULL,
    source      TEXT NOT NULL DEFAULT '',
    event_id    TEXT NOT NULL DEFAULT '',
    evidence    TEXT NOT NULL,             -- JSON
    undone_by   TEXT,                      -- the split that undid this merge
    created_at  BIGINT NOT NULL
);
CREATE INDEX graph_changes_customer ON graph_changes (customer_id, created_at);
CREATE INDEX graph_changes_other ON graph_changes (other_id);
