-- Generated secrets keep their spec (use, algorithm, size, lifetime) and, for key pairs, the
-- public half: neither is secret, both are useful to operators and to rotation.
ALTER TABLE secrets ADD COLUMN spec jsonb;
ALTER TABLE secrets ADD COLUMN public_key text;
