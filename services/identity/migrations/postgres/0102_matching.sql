-- Probabilistic matching: source records, matching runs and the review queue of possible matches.
CREATE TABLE source_records (
    source       TEXT NOT NULL,
    record_id    TEXT NOT NULL,
    kind         TEXT NOT NULL,
    data         TEXT NOT NULL,             -- hex of the SourceRecord protobuf as submitted
    updated_at   BIGINT NOT NULL,
    customer_id  TEXT,                      -- set by the run that clustered it (may be an alias later)
    run_id       TEXT NOT NULL DEFAULT '',
    match_weight DOUBLE PRECISION,
    PRIMARY KEY (source, record_id)
);
CREATE INDEX source_records_customer ON source_records (customer_id);

CREATE TABLE matching_runs (
    id          TEXT PRIMARY KEY,
    state       TEXT NOT NULL,              -- running | succeeded | failed | cancelled
    started_at  BIGINT NOT NULL,
    data        TEXT NOT NULL,              -- hex of the MatchingRun protobuf
    params      TEXT NOT NULL DEFAULT ''    -- JSON of the trained parameters (succeeded runs)
);
CREATE INDEX matching_runs_started ON matching_runs (started_at);

CREATE TABLE review_tasks (
    id              TEXT PRIMARY KEY,
    run_id          TEXT NOT NULL,
    state           TEXT NOT NULL,          -- open | same | different | obsolete
    match_weight    DOUBLE PRECISION NOT NULL,
    left_source     TEXT NOT NULL,
    left_record_id  TEXT NOT NULL,
    right_source    TEXT NOT NULL,
    right_record_id TEXT NOT NULL,
    data            TEXT NOT NULL,          -- hex of the ReviewTask protobuf
    created_at      BIGINT NOT NULL
);
CREATE INDEX review_tasks_state ON review_tasks (state, match_weight);
