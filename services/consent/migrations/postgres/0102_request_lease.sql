-- Data-subject requests are carried on until done: a runner holds a request while it works on it (until
-- lease_until, milliseconds since the epoch), so a request left unfinished by a stopped process, or failed
-- at a service that could not be reached, is taken up again by the retrier, by one runner at a time.
ALTER TABLE consent_requests ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0;
