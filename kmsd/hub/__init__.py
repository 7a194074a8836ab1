"""The long-poll hub: held polls keyed by path, woken by PostgreSQL LISTEN/NOTIFY."""
