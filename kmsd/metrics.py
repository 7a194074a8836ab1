"""Prometheus metrics, in a registry owned by the app (no module-level globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


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

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
