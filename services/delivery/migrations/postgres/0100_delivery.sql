-- The send queue, one row per message: its request, where it is in the queue (lease, next attempt), the
-- hand-off mark that makes a crash between hand-off and record recoverable, and its public status.
CREATE TABLE delivery_messages (
    seq              BIGSERIAL PRIMARY KEY,
    message_id       TEXT    NOT NULL UNIQUE,
    idempotency_key  TEXT    NOT NULL UNIQUE,
    customer_id      TEXT    NOT NULL,
    channel          BIGINT    NOT NULL,
    message_class    BIGINT    NOT NULL,
    purpose          TEXT    NOT NULL,
    -- The address or number; emptied by erasure.
    recipient        TEXT    NOT NULL,
    template_id      TEXT    NOT NULL,
    template_version BIGINT    NOT NULL,
    locale           TEXT    NOT NULL,
    -- The encoded SendRequest (data, inline content); emptied by erasure.
    request          BYTEA   NOT NULL,
    decision_id      TEXT    NOT NULL,
    offer_id         TEXT    NOT NULL,
    campaign_id      TEXT    NOT NULL,
    status           BIGINT    NOT NULL,
    provider         TEXT    NOT NULL DEFAULT '',
    attempts         BIGINT    NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT    NOT NULL,
    lease_owner      TEXT,
    lease_until      BIGINT,
    -- Set just before the irrevocable step of a hand-off (the final dot of SMTP DATA): the provider it
    -- went to and when. A message found with a mark and no outcome was interrupted there.
    handoff_provider TEXT,
    handoff_at       BIGINT,
    subject          TEXT    NOT NULL DEFAULT '',
    last_error       TEXT    NOT NULL DEFAULT '',
    dead             BIGINT    NOT NULL DEFAULT 0,
    created_at       BIGINT    NOT NULL,
    updated_at       BIGINT    NOT NULL
);
CREATE INDEX delivery_messages_due ON delivery_messages (next_attempt_at) WHERE status IN (1, 2);
CREATE INDEX delivery_messages_customer ON delivery_messages (customer_id, seq);
CREATE INDEX delivery_messages_dead ON delivery_messages (seq) WHERE dead = 1;

-- Every status a message went through, with the provider's answer or the reason.
CREATE TABLE delivery_history (
    seq        BIGSERIAL PRIMARY KEY,
    message_id TEXT    NOT NULL,
    status     BIGINT    NOT NULL,
    at         BIGINT    NOT NULL,
    detail     TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX delivery_history_message ON delivery_history (message_id, seq);

-- Templates: every saved version is kept (messages name the version they were rendered with).
CREATE TABLE delivery_templates (
    template_id TEXT    NOT NULL,
    version     BIGINT    NOT NULL,
    channel     BIGINT    NOT NULL,
    body        BYTEA   NOT NULL,
    updated_at  BIGINT    NOT NULL,
    PRIMARY KEY (template_id, version)
);

-- Call-centre tasks: the queue agents work from.
CREATE TABLE delivery_tasks (
    task_id     TEXT    PRIMARY KEY,
    message_id  TEXT    NOT NULL UNIQUE,
    customer_id TEXT    NOT NULL,
    phone       TEXT    NOT NULL DEFAULT '',
    script      TEXT    NOT NULL,
    offer_id    TEXT    NOT NULL,
    decision_id TEXT    NOT NULL,
    due_at      BIGINT    NOT NULL,
    state       BIGINT    NOT NULL,
    agent_id    TEXT    NOT NULL DEFAULT '',
    outcome     TEXT    NOT NULL DEFAULT '',
    notes       TEXT    NOT NULL DEFAULT '',
    created_at  BIGINT    NOT NULL,
    updated_at  BIGINT    NOT NULL
);
CREATE INDEX delivery_tasks_due ON delivery_tasks (state, due_at);

-- In-app inboxes.
CREATE TABLE delivery_inbox (
    message_id  TEXT    PRIMARY KEY,
    customer_id TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    html        TEXT    NOT NULL,
    text        TEXT    NOT NULL,
    created_at  BIGINT    NOT NULL,
    read_at     BIGINT
);
CREATE INDEX delivery_inbox_customer ON delivery_inbox (customer_id, created_at);

-- Direct mail: the rows of each print-house run (the CSV and its manifest are written from them).
CREATE TABLE delivery_direct_mail (
    message_id  TEXT    PRIMARY KEY,
    provider    TEXT    NOT NULL,
    run_id      TEXT    NOT NULL DEFAULT '',
    customer_id TEXT    NOT NULL,
    row_json    TEXT    NOT NULL,
    created_at  BIGINT    NOT NULL
);
CREATE INDEX delivery_direct_mail_run ON delivery_direct_mail (provider, run_id);

-- Keys generated on first start (the tracking-link key), shared by replicas.
CREATE TABLE delivery_keys (
    name   TEXT PRIMARY KEY,
    secret TEXT NOT NULL
);
