-- Data-subject requests (export, erasure) with their legal deadline, state, steps per service and result.
CREATE TABLE consent_requests (
    request_id  TEXT    PRIMARY KEY,
    kind        BIGINT  NOT NULL,
    state       BIGINT  NOT NULL,
    received_at BIGINT  NOT NULL,
    due_at      BIGINT  NOT NULL,
    body        BYTEA   NOT NULL,
    result      BYTEA
);
CREATE INDEX consent_requests_due ON consent_requests (due_at);
