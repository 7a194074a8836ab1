-- Rotations: a persisted state machine per secret (kmsd.domain.rotation), driven by the
-- scheduler's leader; every transition is an event, delivered to webhooks through an outbox.

CREATE TABLE rotations (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    secret_id       bigint NOT NULL REFERENCES secrets (id) ON DELETE CASCADE,
    phase           text NOT NULL
                    CHECK (phase IN ('pending', 'promoted', 'done', 'aborted', 'rolled_back')),
    mode            text NOT NULL CHECK (mode IN ('auto', 'manual')),
    paused          boolean NOT NULL DEFAULT false,
    leaked          boolean NOT NULL DEFAULT false,
    gate_timeout_s  integer NOT NULL CHECK (gate_timeout_s > 0),
    old_version     text NOT NULL,
    new_version     text NOT NULL,
    -- A transition whose SM labels may not be in place yet: the driver finishes it first.
    labels_pending  boolean NOT NULL DEFAULT false,
    timed_out       boolean NOT NULL DEFAULT false,
    phase_since     timestamptz NOT NULL,
    -- The secret's expiry, spec and public key before the rotation and with its new version:
    -- promotion applies ``secret_after``, a rollback restores ``secret_before``.
    secret_before   jsonb NOT NULL DEFAULT '{}'::jsonb,
    secret_after    jsonb NOT NULL DEFAULT '{}'::jsonb,
    started_by      text NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
-- One rotation in flight per secret.
CREATE UNIQUE INDEX rotations_one_active ON rotations (secret_id)
    WHERE phase IN ('pending', 'promoted');
CREATE INDEX rotations_started_at_idx ON rotations (started_at DESC);

CREATE TABLE rotation_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rotation_id bigint NOT NULL REFERENCES rotations (id) ON DELETE CASCADE,
    action      text NOT NULL,
    phase       text NOT NULL,   -- the phase after the event
    actor       text NOT NULL,   -- a principal ARN, or 'kmsd' for automatic steps
    forced      boolean NOT NULL DEFAULT false,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX rotation_events_rotation_idx ON rotation_events (rotation_id, id);

-- An application's webhook: a signed JSON event per rotation transition of a secret it owns
-- or references. The HMAC key is kmsd's own (it signs, the receiver verifies), shown once.
CREATE TABLE webhooks (
    app_path    text PRIMARY KEY,
    url         text NOT NULL,
    hmac_key    text NOT NULL,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Deliveries, in order per application: the next one waits until the one before succeeded.
CREATE TABLE webhook_deliveries (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    app_path    text NOT NULL,
    event_id    bigint NOT NULL REFERENCES rotation_events (id) ON DELETE CASCADE,
    payload     jsonb NOT NULL,
    attempts    integer NOT NULL DEFAULT 0,
    next_at     timestamptz NOT NULL DEFAULT now(),
    last_error  text,
    delivered_at timestamptz
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (app_path, id)
    WHERE delivered_at IS NULL;

-- One-time console sign-in links (kmsctl console): only the code's sha256 is kept.
CREATE TABLE console_codes (
    code_hash   text PRIMARY KEY,
    principal   text NOT NULL,
    expires_at  timestamptz NOT NULL,
    ip          text NOT NULL,   -- the address that asked: the link works from there only
    used_at     timestamptz
);

-- Every version of each secret an agent holds (the owner's pending and previous too), so a
-- rotation's first gate can tell who already has the pending version.
ALTER TABLE adoption ADD COLUMN versions jsonb NOT NULL DEFAULT '{}'::jsonb;
