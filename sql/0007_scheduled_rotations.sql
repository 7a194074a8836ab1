-- The scheduler claims a secret's rotation for one expiry before it rotates: with a single
-- leader this is a belt, but a leader that lost its lock mid-rotation must not let the next
-- one rotate the same secret again for the same expiry.
CREATE TABLE scheduled_rotations (
    secret_id  bigint NOT NULL REFERENCES secrets (id) ON DELETE CASCADE,
    for_expiry timestamptz NOT NULL,
    claimed_by text NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    done       boolean NOT NULL DEFAULT false,
    PRIMARY KEY (secret_id, for_expiry)
);
