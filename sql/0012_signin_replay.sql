-- Single-use sign-ins: the SHA-256 of each accepted-for-forwarding SigV4 signature.

-- A signed GetCallerIdentity is good for 15 minutes (X-Amz-Date skew); without this table one
-- captured request signed in as many times as its holder liked, from anywhere. kmsd inserts
-- the key before forwarding to STS; ON CONFLICT DO NOTHING RETURNING tells a first use from a
-- replay atomically, on every replica. Only a hash is stored. A row is useless once its
-- request is stale, so expired rows are deleted by the housekeeping of the reconciler loop.
CREATE TABLE signin_seen (
    sig_hash    bytea PRIMARY KEY,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX signin_seen_expires_idx ON signin_seen (expires_at);
