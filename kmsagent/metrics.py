"""``/metrics`` of the agent: cache age, versions and upstream state per path, read at scrape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from kmsagent.sync import Agent

UPSTREAM_STATES = ("ok", "unreachable", "refused", "starting")


class AgentCollector(Collector):  # type: ignore[misc]
    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        agent = self._agent
        now = agent.clock()
        age = GaugeMetricFamily(
            "kmsagent_cache_age_seconds",
            "Seconds the path's cache may have missed a change (0 while kmsd holds the poll)",
            labels=["path"],
        )
        version = GaugeMetricFamily(
            "kmsagent_path_version", "Path version the agent serves", labels=["path"]
        )
        upstream = GaugeMetricFamily(
            "kmsagent_upstream", "1 for the path's current upstream state", labels=["path", "state"]
        )
        secrets = GaugeMetricFamily(
            "kmsagent_secrets", "Secrets served for the path", labels=["path"]
        )
        watchers = GaugeMetricFamily(
            "kmsagent_local_watchers", "Applications' long polls held", labels=["path"]
        )
        for path, state in sorted(agent.paths.items()):
            watchers.add_metric([path], state.local_watchers)
            a = state.age(now)
            if a is not None:
                age.add_metric([path], a)
            if state.view is not None:
                version.add_metric([path], state.view.path_version)
                secrets.add_metric([path], len(state.view.secrets))
            for s in UPSTREAM_STATES:
                upstream.add_metric([path, s], 1.0 if state.upstream == s else 0.0)
        yield from (age, version, upstream, secrets, watchers)
        events = CounterMetricFamily(
            "kmsagent_sync_events", "Sync loop events by kind", labels=["kind"]
        )
        for kind, count in sorted(agent.stats.items()):
            events.add_metric([kind], count)
        yield events
        aws = CounterMetricFamily("kmsagent_aws_reads", "Values read from AWS")
        aws.add_metric([], agent.reader.calls)
        yield aws
        yield CounterMetricFamily("kmsagent_logins", "Sign-ins to kmsd", value=agent.kmsd.logins)
        problems = GaugeMetricFamily(
            "kmsagent_problems",
            "1 per problem /healthz reports (a failing template)",
            labels=["what"],
        )
        for what in sorted(agent.problems):
            problems.add_metric([what], 1.0)
        yield problems


def registry_for(agent: Agent) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent))
    return registry
