-- Source records of erased customers: tombstones, so that a re-submission of the same source and record id
-- cannot re-create the person. Only a SHA-256 of source and record id is kept, not the id itself.
CREATE TABLE erased_records (
    record_hash TEXT PRIMARY KEY,
    erased_at   BIGINT NOT NULL
);
CREATE INDEX erased_records_at ON erased_records (erased_at);
