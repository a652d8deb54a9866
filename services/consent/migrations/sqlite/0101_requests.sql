-- Data-subject requests (export, erasure) with their legal deadline, state, steps per service and result.
CREATE TABLE consent_requests (
    request_id  TEXT    PRIMARY KEY,
    kind        INTEGER NOT NULL,
    state       INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    due_at      INTEGER NOT NULL,
    body        BLOB    NOT NULL,
    result      BLOB
);
CREATE INDEX consent_requests_due ON consent_requests (due_at);
