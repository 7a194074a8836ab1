-- Writes kept in order, a fenced scheduler leader, observers apart from serving instances.

-- Every write of a secret (an outbox intent) and every rotation step that moves its current
-- version draws from one sequence. ``secrets.current_seq`` is the number of the write or step
-- that made the current version current: an intent resolved late, whose number is lower, was
-- overtaken by an acknowledged write and must never become current (kmsd.domain.writes).
CREATE SEQUENCE write_seq;
ALTER TABLE sm_outbox ADD COLUMN seq bigint NOT NULL DEFAULT nextval('write_seq');
ALTER TABLE secrets ADD COLUMN current_seq bigint NOT NULL DEFAULT 0;

-- Leadership: the scheduler's leader holds a session advisory lock and, with it, the epoch it
-- bumped on taking over. Every leader-only change runs ``kmsd_check_fence(epoch)`` in its
-- transaction: the row lock (FOR SHARE) makes a takeover wait for leader transactions in
-- flight, and a deposed leader's late change is refused (SQLSTATE KF001) instead of applied.
CREATE TABLE leadership (
    name     text PRIMARY KEY,
    epoch    bigint NOT NULL,
    holder   text NOT NULL,
    since    timestamptz NOT NULL DEFAULT now()
);
INSERT INTO leadership (name, epoch, holder) VALUES ('scheduler', 0, '');

CREATE FUNCTION kmsd_check_fence(fence bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    current_epoch bigint;
BEGIN
    SELECT epoch INTO current_epoch FROM leadership WHERE name = 'scheduler' FOR SHARE;
    IF current_epoch IS DISTINCT FROM fence THEN
        RAISE EXCEPTION 'fenced: leadership epoch % is not the current %', fence, current_epoch
            USING ERRCODE = 'KF001';
    END IF;
END
$$;

-- A delivery is claimed (by the leader's epoch) before it is sent, so two leaders never both
-- send it; a claim older than the send timeout is free again (the sender died mid-way).
ALTER TABLE webhook_deliveries ADD COLUMN claimed_epoch bigint;
ALTER TABLE webhook_deliveries ADD COLUMN claimed_at timestamptz;

-- What kind of instance polls: 'serving' instances (agents) hold values and count in rotation
-- gates; 'observer' ones (kmsctl watch, dashboards) only watch and are shown apart.
ALTER TABLE adoption ADD COLUMN role text NOT NULL DEFAULT 'serving'
    CHECK (role IN ('serving', 'observer'));
