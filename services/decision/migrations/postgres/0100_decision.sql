-- The decision service: offers with every saved version, placements, contact policies, the decision log
-- with the offers each decision ranked, outcomes (idempotent by outcome id) and the bandit's counts.
-- Times are milliseconds since the Unix epoch; protobuf bodies are the stored form of each definition.
CREATE TABLE offers (
    offer_id   TEXT    PRIMARY KEY,
    version    BIGINT NOT NULL,
    archived   BIGINT NOT NULL DEFAULT 0,
    body       BYTEA    NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE offer_versions (
    offer_id   TEXT    NOT NULL,
    version    BIGINT NOT NULL,
    body       BYTEA    NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT    NOT NULL,
    PRIMARY KEY (offer_id, version)
);

CREATE TABLE placements (
    kind BIGINT PRIMARY KEY,
    body BYTEA    NOT NULL
);

CREATE TABLE contact_policies (
    policy_id TEXT PRIMARY KEY,
    body      BYTEA NOT NULL
);

CREATE TABLE decisions (
    decision_id   TEXT    PRIMARY KEY,
    customer_id   TEXT    NOT NULL,
    placement     BIGINT NOT NULL,
    channel       BIGINT NOT NULL,
    campaign_id   TEXT    NOT NULL DEFAULT '',
    experiment_id TEXT    NOT NULL DEFAULT '',
    arm           TEXT    NOT NULL DEFAULT '',
    holdout       BIGINT NOT NULL DEFAULT 0,
    -- The bandit segment the decision learned in ('' when not segmented).
    segment       TEXT    NOT NULL DEFAULT '',
    -- 1 when the decision reached the customer: a non-message placement showed it, or delivery sent it.
    sent          BIGINT NOT NULL DEFAULT 0,
    decided_at    BIGINT NOT NULL,
    -- The offers that were ranked (space-separated ids), for off-policy evaluation.
    candidates    TEXT    NOT NULL DEFAULT '',
    body          BYTEA    NOT NULL
);
CREATE INDEX decisions_customer ON decisions (customer_id, decided_at);
CREATE INDEX decisions_campaign ON decisions (campaign_id, decided_at);
CREATE INDEX decisions_experiment ON decisions (experiment_id, decided_at);
CREATE INDEX decisions_time ON decisions (placement, decided_at);

CREATE TABLE decision_offers (
    decision_id        TEXT    NOT NULL,
    offer_id           TEXT    NOT NULL,
    rank               BIGINT NOT NULL,
    -- The estimated probability that this offer was among those returned, and that it came first.
    choice_probability DOUBLE PRECISION    NOT NULL,
    first_probability  DOUBLE PRECISION    NOT NULL,
    decided_at         BIGINT NOT NULL,
    PRIMARY KEY (decision_id, offer_id)
);
CREATE INDEX decision_offers_offer ON decision_offers (offer_id, decided_at);

CREATE TABLE outcomes (
    outcome_id    TEXT    PRIMARY KEY,
    decision_id   TEXT    NOT NULL DEFAULT '',
    customer_id   TEXT    NOT NULL DEFAULT '',
    offer_id      TEXT    NOT NULL DEFAULT '',
    kind          BIGINT NOT NULL,
    revenue_minor BIGINT NOT NULL DEFAULT 0,
    currency      TEXT    NOT NULL DEFAULT '',
    occurred_at   BIGINT NOT NULL,
    recorded_at   BIGINT NOT NULL
);
CREATE INDEX outcomes_decision ON outcomes (decision_id, kind);
CREATE INDEX outcomes_customer ON outcomes (customer_id);

-- Thompson sampling: trials and successes per offer and segment ('' when not segmented).
CREATE TABLE bandit_arms (
    offer_id  TEXT    NOT NULL,
    segment   TEXT    NOT NULL,
    trials    BIGINT NOT NULL DEFAULT 0,
    successes BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (offer_id, segment)
);

-- Campaigns and experiments, as their protobuf bodies. `running_since` is when the campaign last started
-- running (scheduled runs are the cron occurrences after it).
CREATE TABLE campaigns (
    campaign_id   TEXT    PRIMARY KEY,
    state         BIGINT NOT NULL,
    running_since BIGINT NOT NULL DEFAULT 0,
    body          BYTEA    NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE TABLE experiments (
    experiment_id TEXT PRIMARY KEY,
    body          BYTEA NOT NULL
);

-- Durable timers of triggered campaigns: one pending timer per campaign and customer (a newer trigger
-- moves it). A worker claims due timers with a lease; a timer is fired once: its decision id and the
-- delivery idempotency key derive from the timer id, so a worker that died mid-way is finished by the next
-- without a second decision or send.
CREATE TABLE campaign_timers (
    timer_id       TEXT    PRIMARY KEY,
    campaign_id    TEXT    NOT NULL,
    customer_id    TEXT    NOT NULL,
    -- pending, done, skipped, failed
    state          TEXT    NOT NULL,
    due_at         BIGINT NOT NULL,
    trigger_event  BYTEA    NOT NULL,
    lease_owner    TEXT    NOT NULL DEFAULT '',
    lease_until    BIGINT NOT NULL DEFAULT 0,
    attempts       BIGINT NOT NULL DEFAULT 0,
    detail         TEXT    NOT NULL DEFAULT '',
    decision_id    TEXT    NOT NULL DEFAULT '',
    message_id     TEXT    NOT NULL DEFAULT '',
    created_at     BIGINT NOT NULL,
    fired_at       BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX campaign_timers_pending ON campaign_timers (campaign_id, customer_id) WHERE state = 'pending';
CREATE INDEX campaign_timers_due ON campaign_timers (state, due_at);
CREATE INDEX campaign_timers_customer ON campaign_timers (customer_id);

-- Runs of scheduled campaigns, one per cron occurrence, claimed with a lease and resumed from `cursor`
-- (the last segment member done) after a crash.
CREATE TABLE campaign_runs (
    campaign_id   TEXT    NOT NULL,
    scheduled_for BIGINT NOT NULL,
    -- running, done
    state         TEXT    NOT NULL,
    cursor        TEXT    NOT NULL DEFAULT '',
    lease_owner   TEXT    NOT NULL DEFAULT '',
    lease_until   BIGINT NOT NULL DEFAULT 0,
    decided       BIGINT NOT NULL DEFAULT 0,
    sent          BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, scheduled_for)
);
