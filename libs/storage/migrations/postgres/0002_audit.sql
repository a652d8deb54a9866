-- Shared by every service database: the audit log of reads and changes of personal data (profile reads,
-- exports, erasures). Append-only: no API changes it, and the database refuses updates and deletes.
CREATE TABLE audit_log (
    id          BIGSERIAL PRIMARY KEY,
    at          BIGINT NOT NULL,
    principal   TEXT   NOT NULL,
    action      TEXT   NOT NULL,
    customer_id TEXT   NOT NULL,
    detail      TEXT   NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_customer ON audit_log (customer_id, at);

CREATE FUNCTION audit_log_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
