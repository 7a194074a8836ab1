-- Bindings: an IAM principal pattern, a path prefix ('*' for everything), a permission, and
-- optional CIDRs the calls must come from. Sessions remember the IP that signed in.

CREATE TABLE bindings (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    principal  text NOT NULL,
    prefix     text NOT NULL,
    permission text NOT NULL CHECK (permission IN ('read', 'view', 'edit', 'rotate', 'admin')),
    cidrs      text[] NOT NULL DEFAULT '{}',
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (principal, prefix, permission)
);
