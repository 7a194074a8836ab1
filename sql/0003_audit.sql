-- The audit trail: append-only (enforced here) and hash-chained.
--
-- Each row stores hash = sha256(prev_hash || canonical JSON of the row). The chain head (last
-- seq and hash) is one row that writers lock FOR UPDATE, so replicas writing at once still
-- produce one unbroken chain. Deployments that use a separate, least-privilege database role
-- for kmsd should grant it only INSERT and SELECT on audit_log (see docs/audit.md).

CREATE TABLE audit_log (
    seq        bigint PRIMARY KEY,
    at         timestamptz NOT NULL,
    request_id text NOT NULL,
    replica    text NOT NULL,
    principal  text NOT NULL,
    claimed    text NOT NULL,
    source_ip  text NOT NULL,
    action     text NOT NULL,
    target     text NOT NULL,
    outcome    text NOT NULL,
    status     smallint NOT NULL,
    prev_hash  bytea NOT NULL,
    hash       bytea NOT NULL
);
CREATE INDEX audit_log_at_idx ON audit_log (at);
CREATE INDEX audit_log_principal_idx ON audit_log (principal, at);
CREATE INDEX audit_log_target_idx ON audit_log (target text_pattern_ops);

CREATE TABLE audit_head (
    id   boolean PRIMARY KEY DEFAULT true CHECK (id),
    seq  bigint NOT NULL,
    hash bytea NOT NULL
);
INSERT INTO audit_head (seq, hash) VALUES (0, decode(repeat('00', 32), 'hex'));

CREATE FUNCTION audit_log_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();
CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();
