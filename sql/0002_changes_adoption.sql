-- Change log for the long-poll hub, and adoption reports.

-- One row per committed change to a node's effective contribution. Written in the same
-- transaction as the change, with a NOTIFY carrying only the id: replicas read the rows after
-- the last id they processed, so bursts coalesce and a missed notification loses nothing.
CREATE TABLE changes (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    path         text NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX changes_committed_at_idx ON changes (committed_at);

-- The latest report of each instance polling a path, flushed in batches by each replica.
CREATE TABLE adoption (
    path            text NOT NULL,
    instance_id     text NOT NULL,
    principal       text NOT NULL,
    ip              text NOT NULL,
    app_process_ids text[] NOT NULL DEFAULT '{}',
    held            jsonb NOT NULL DEFAULT '{}'::jsonb,
    path_version    bigint NOT NULL,
    replica         text NOT NULL,
    last_seen       timestamptz NOT NULL,
    PRIMARY KEY (path, instance_id)
);
