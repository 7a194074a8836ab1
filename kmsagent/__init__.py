"""kmsagent: the per-host agent that fetches secret values straight from AWS (see issue 6)."""
