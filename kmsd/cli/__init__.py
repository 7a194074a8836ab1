"""Command lines: ``kmsd`` (serve, migrate, dev) and ``kmsctl`` (the operator's client)."""
