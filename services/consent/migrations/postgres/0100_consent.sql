-- The consent ledger: append-only entries (the encoded rapport.consent.v1.ConsentEntry in `body`, with
-- the columns needed to find them). Nothing is updated in place; erasure deletes.
CREATE TABLE consent_entries (
    seq                  BIGSERIAL PRIMARY KEY,
    entry_id             TEXT    NOT NULL UNIQUE,
    recorded_customer_id TEXT    NOT NULL,
    cp_type              BIGINT  NOT NULL,
    cp_value             TEXT    NOT NULL,
    channel              BIGINT  NOT NULL,
    purpose              TEXT    NOT NULL,
    status               BIGINT  NOT NULL,
    occurred_at          BIGINT  NOT NULL,
    recorded_at          BIGINT  NOT NULL,
    recorded_by          TEXT    NOT NULL,
    idempotency_key      TEXT    NOT NULL,
    body                 BYTEA   NOT NULL
);
CREATE INDEX consent_entries_customer ON consent_entries (recorded_customer_id, channel, purpose);
CREATE INDEX consent_entries_contact_point ON consent_entries (cp_value, cp_type);
CREATE UNIQUE INDEX consent_entries_idempotency ON consent_entries (recorded_by, idempotency_key)
    WHERE idempotency_key <> '';

-- Customer ids merged away (from identity's feed): their entries count for `customer_id`.
CREATE TABLE consent_aliases (
    alias_id    TEXT    PRIMARY KEY,
    customer_id TEXT    NOT NULL,
    merge_id    TEXT    NOT NULL,
    merged_at   BIGINT  NOT NULL
);
CREATE INDEX consent_aliases_customer ON consent_aliases (customer_id);

-- Suppressions of contact points; `cp_value` becomes a hash when the holder is erased.
CREATE TABLE consent_suppressions (
    seq            BIGSERIAL PRIMARY KEY,
    suppression_id TEXT    NOT NULL UNIQUE,
    cp_type        BIGINT  NOT NULL,
    cp_value       TEXT    NOT NULL,
    channel        BIGINT  NOT NULL,
    reason         BIGINT  NOT NULL,
    customer_id    TEXT    NOT NULL,
    created_at     BIGINT  NOT NULL,
    expires_at     BIGINT,
    removed_at     BIGINT,
    body           BYTEA   NOT NULL
);
CREATE INDEX consent_suppressions_contact_point ON consent_suppressions (cp_value, cp_type);

-- Spent single-use tokens.
CREATE TABLE consent_used_tokens (
    token_id TEXT    PRIMARY KEY,
    kind     TEXT    NOT NULL,
    used_at  BIGINT  NOT NULL
);

-- The token signing key when none is configured (generated on first start).
CREATE TABLE consent_keys (
    name   TEXT PRIMARY KEY,
    secret TEXT NOT NULL
);

-- Erased customers: tombstones, so that replayed events cannot re-create their consents.
CREATE TABLE consent_erased (
    customer_id TEXT    PRIMARY KEY,
    erased_at   BIGINT  NOT NULL
);
