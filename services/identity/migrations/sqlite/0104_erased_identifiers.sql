-- Identifiers of erased customers: tombstones, so that an event seen before the erasure and replayed later
-- (a Resolve with that occurred_at) cannot re-create the person. Only a SHA-256 of type, namespace and
-- normalised value is kept, never the identifier; erased_at is when the erasure happened.
CREATE TABLE erased_identifiers (
    id_hash   TEXT   PRIMARY KEY,
    erased_at BIGINT NOT NULL
);
