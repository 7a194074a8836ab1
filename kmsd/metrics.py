"""Prometheus metrics, in a registry owned by the app (no module-level globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Wake and lag buckets in seconds: the targets are single-digit milliseconds.
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kmsd_http_requests_total",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "kmsd_http_request_duration_seconds",
            "HTTP request latency by route",
            ["route"],
            registry=self.registry,
        )
        self.logins = Counter(
            "kmsd_logins_total",
            "Sign-in attempts by outcome",
            ["outcome"],
            registry=self.registry,
        )

        self.held_polls = Gauge(
            "kmsd_watch_held_polls", "Long polls currently held", registry=self.registry
        )
        self.wakes = Counter(
            "kmsd_watch_wakes_total",
            "Held polls answered because their path changed",
            registry=self.registry,
        )
        self.wake_seconds = Histogram(
            "kmsd_watch_wake_seconds",
            "Time to reload changed paths and answer their waiters, per change batch",
            buckets=FAST_BUCKETS,
            registry=self.registry,
        )
        self.notify_lag = Histogram(
            "kmsd_watch_notify_lag_seconds",
            "Commit of a change to its processing by this replica",
            buckets=FAST_BUCKETS,
            registry=self.registry,
        )
        self.listen_reconnects = Counter(
            "kmsd_listen_reconnects_total",
            "LISTEN connection re-established",
            registry=self.registry,
        )
        self.adoption_flush_size = Histogram(
            "kmsd_adoption_flush_size",
            "Adoption reports written per flush",
            buckets=(1, 10, 100, 1000, 10000, 100000),
            registry=self.registry,
        )

        self.scheduler_leader = Gauge(
            "kmsd_scheduler_leader",
            "1 while this replica runs the rotation scheduler",
            registry=self.registry,
        )
        self.outbox_quarantined = Gauge(
            "kmsd_outbox_quarantined",
            "Writes in doubt the reconciler gave up on after repeated failures (see sm_outbox)",
            registry=self.registry,
        )
        self.scheduler_epoch = Gauge(
            "kmsd_scheduler_epoch",
            "The leadership epoch this replica holds (0 when it does not lead)",
            registry=self.registry,
        )
        self.leadership_lost = Counter(
            "kmsd_scheduler_leadership_lost_total",
            "Times this replica stopped leading, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.expiring_hand_made = Gauge(
            "kmsd_secrets_expiring_hand_made",
            "Hand-made secrets expiring within the report window (they cannot rotate themselves)",
            registry=self.registry,
        )

        # Set by the leader's rotation driver each pass (other replicas show nothing).
        self.rotations = Gauge(
            "kmsd_rotations_in_progress",
            "Rotations in progress by phase and flag (waiting, paused, timed_out)",
            ["phase", "state"],
            registry=self.registry,
        )
        self.rotation_stragglers = Gauge(
            "kmsd_rotation_gate_waiting_instances",
            "Live instances the rotations' current gates wait for, all rotations together",
            registry=self.registry,
        )
        self.rotation_transitions = Counter(
            "kmsd_rotation_transitions",
            "Rotation transitions applied by this replica",
            ["action", "forced"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
