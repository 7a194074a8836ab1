-- Sharing: the owner of a secret lets another application reference it; a reference puts the
-- secret into the referencing application's tree under a local name. A shared secret that is
-- still referenced cannot be deleted (RESTRICT): unshare or remove the references first.
CREATE TABLE shares (
    secret_id  bigint NOT NULL REFERENCES secrets (id) ON DELETE CASCADE,
    app_path   text NOT NULL,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (secret_id, app_path)
);

CREATE TABLE refs (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    node_id    bigint NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    local_name text NOT NULL,
    secret_id  bigint NOT NULL REFERENCES secrets (id) ON DELETE RESTRICT,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (node_id, local_name)
);
CREATE INDEX refs_secret_idx ON refs (secret_id);
