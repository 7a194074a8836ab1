-- The secret tree, secret metadata (never values), the SM write outbox and sign-in sessions.

-- One global change counter. A node's changed_seq is bumped whenever its own secrets change;
-- the path_version of a path is the largest changed_seq along its chain (application down to
-- the path), so it rises exactly when something in that path's effective set changes, and a
-- recreated path always starts above every version it had before.
CREATE SEQUENCE kmsd_change_seq;

CREATE TABLE nodes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    parent_id   bigint REFERENCES nodes (id) ON DELETE CASCADE,
    path        text NOT NULL UNIQUE,
    name        text NOT NULL,
    depth       smallint NOT NULL CHECK (depth BETWEEN 1 AND 6),
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    changed_seq bigint NOT NULL DEFAULT nextval('kmsd_change_seq'),
    CHECK ((depth = 1) = (parent_id IS NULL))
);
CREATE INDEX nodes_parent_idx ON nodes (parent_id);
-- Subtree scans use "path = $1 OR path LIKE $1 || '/%'".
CREATE INDEX nodes_path_prefix_idx ON nodes (path text_pattern_ops);

CREATE TABLE secrets (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    node_id     bigint NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    name        text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('json', 'binary')),
    sm_name     text NOT NULL UNIQUE,
    sm_arn      text NOT NULL,
    description text NOT NULL DEFAULT '',
    tags        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    UNIQUE (node_id, name)
);

CREATE TABLE secret_versions (
    secret_id  bigint NOT NULL REFERENCES secrets (id) ON DELETE CASCADE,
    version_id text NOT NULL,
    stage      text NOT NULL
               CHECK (stage IN ('pending', 'current', 'previous', 'revoked', 'deprecated')),
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (secret_id, version_id)
);
-- At most one version per secret holds each of the live stages.
CREATE UNIQUE INDEX secret_versions_one_live_stage
    ON secret_versions (secret_id, stage) WHERE stage IN ('pending', 'current', 'previous');

-- Work that must reach SM even if kmsd dies half-way. A 'put' row is written (and committed)
-- before the SM call and removed in the transaction that records the metadata; a row left
-- behind means "SM may hold a version we have not recorded": the reconciler asks SM (by the
-- version id, which is the SM ClientRequestToken) and either records it or drops the row.
-- A 'delete' row is written in the same transaction that removes the metadata.
-- Rows hold metadata only, never a value.
CREATE TABLE sm_outbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    op          text NOT NULL CHECK (op IN ('put', 'delete')),
    sm_name     text NOT NULL,
    version_id  text,
    intent      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    attempts    integer NOT NULL DEFAULT 0,
    last_error  text
);

CREATE TABLE sessions (
    token_hash  bytea PRIMARY KEY,
    principal   text NOT NULL,
    caller_arn  text NOT NULL,
    source_ip   text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX sessions_expires_idx ON sessions (expires_at);
