"""kmsagent: the per-host agent that fetches secret values straight from AWS (docs/agent.md)."""
