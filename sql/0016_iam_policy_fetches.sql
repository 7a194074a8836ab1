-- Drift of hosts' IAM policies: the last policy fetched for each node (an application or a node
-- below it), in which shape, with which networks, by whom. GET /v1/iam-policy/drift/{path}
-- compares it with the policy the node needs now and names the secrets added since. The
-- document holds ARNs and conditions, never a value.
CREATE TABLE iam_policy_fetches (
    node_id      bigint PRIMARY KEY REFERENCES nodes (id) ON DELETE CASCADE,
    shape        text NOT NULL CHECK (shape IN ('prefix', 'exact')),
    source_cidrs text[] NOT NULL DEFAULT '{}',
    policy       jsonb NOT NULL,
    fetched_by   text NOT NULL,
    fetched_at   timestamptz NOT NULL DEFAULT now()
);
