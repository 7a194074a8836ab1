"""The service layer: operations that span PostgreSQL and AWS (writes and their reconciler,
rotations, the leader's scheduler, webhooks, generated keys and data keys).

Handlers in ``kmsd.http`` call into here; this layer calls ``kmsd.db`` and ``kmsd.aws`` and
takes its decisions from the pure ``kmsd.domain``.
"""
