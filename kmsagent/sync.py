"""The sync loop: one long poll per path, values fetched from AWS, the cache swapped whole.

Per path: fetch the effective set, read every value it needs that is not cached yet (all
concurrently), build the new :class:`~kmsagent.state.PathView` and publish it by replacing
one reference. Then hold a long poll reporting what this instance (and each application
process) holds; kmsd answers it with the new effective set the moment the path changes.
Those reports go in full only when they changed since kmsd took them; otherwise a poll
carries their digest (:mod:`kmsagent.reports`), and a digest kmsd does not hold is answered
at once so that the next poll sends them in full.

Failures never empty the cache: kmsd away, AWS away or a value refused, the last good view
stays served and the loop retries with jittered exponential backoff. A full re-sync of the
metadata every ``resync_s`` (jittered) is the safety net against any missed change; it costs
no AWS call unless a version is new, since a version's value never changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from kmsagent.aws import FetchFailed, Reader
from kmsagent.creds import CredentialsError
from kmsagent.pacing import MAX_SERVER_DELAY_S, MIN_POLL_INTERVAL_S, poll_wait
from kmsagent.reports import reported_processes, watch_body
from kmsagent.state import (
    BadDocument,
    PathView,
    Plain,
    ProcessReads,
    ValueKey,
    build_view,
    fetches,
    keys_of,
    missing,
)
from kmsagent.upstream import Kmsd, Refused, Unavailable

log = structlog.get_logger(__name__)

_rng = random.Random()  # noqa: S311 - jitter, not a secret

BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 15.0
REFUSED_RETRY_S = 30.0  # a missing binding is fixed by a person: no need to hurry
REPORT_DEBOUNCE_S = 1.0  # re-poll at most this often to report new process reads


@dataclass(frozen=True, slots=True)
class SyncConfig:
    instance_id: str
    poll_timeout_s: float = 120.0
    resync_s: float = 300.0


class Backoff:
    """Exponential backoff with 'equal jitter': never zero, never in lock-step with others."""

    def __init__(self, base: float = BACKOFF_BASE_S, cap: float = BACKOFF_CAP_S) -> None:
        self._base = base
        self._cap = cap
        self._failures = 0

    def next(self, hint: float | None = None) -> float:
        step = min(self._cap, self._base * 2**self._failures)
        self._failures += 1
        delay = step / 2 + _rng.uniform(0, step / 2)
        # kmsd's hint is already bounded (pacing.retry_after); bound it again, whoever calls.
        return float(max(delay, min(hint or 0.0, MAX_SERVER_DELAY_S)))

    def reset(self) -> None:
        self._failures = 0


@dataclass(eq=False)
class PathState:
    """One served path: its published view and how fresh it is known to be."""

    path: str
    view: PathView | None = None
    upstream: str = "starting"  # ok | unreachable | refused | starting
    error: str | None = None
    confirmed_at: float | None = None  # monotonic time kmsd last vouched for the view
    polling: bool = False  # a poll is held by kmsd right now (changes would arrive at once)
    local_watchers: int = 0  # applications' long polls waiting on this path
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    report_changed: asyncio.Event = field(default_factory=asyncio.Event)
    reports_taken: str | None = None  # digest of the reports kmsd last answered a poll for

    def age(self, now: float) -> float | None:
        """Seconds the view may have been missing a change: 0 while kmsd holds our poll."""
        if self.view is None or self.confirmed_at is None:
            return None
        if self.polling and self.upstream == "ok":
            return 0.0
        return max(0.0, now - self.confirmed_at)


class Agent:
    """Every path this agent serves, the value cache, and the loops that keep them fresh."""

    def __init__(
        self,
        paths: list[str],
        config: SyncConfig,
        kmsd: Kmsd,
        reader: Reader,
        *,
        clock: Callable[[], float] = time.monotonic,
        credentials_info: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self.config = config
        self.kmsd = kmsd
        self.reader = reader
        self.clock = clock
        self.credentials_info = credentials_info
        self.paths = {p: PathState(p) for p in paths}
        self.values: dict[ValueKey, Plain] = {}
        self.reads = ProcessReads()
        self.stats = {"swaps": 0, "polls": 0, "resyncs": 0, "errors": 0}
        self._refreshing: asyncio.Future[None] | None = None
        # What /healthz reports besides unsynced paths (a template that fails to render).
        self.problems: dict[str, str] = {}

    # -- the loops ---------------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for state in self.paths.values():
                group.create_task(self._loop(state), name=f"sync {state.path}")

    async def _loop(self, state: PathState) -> None:
        backoff = Backoff()
        resync_at = 0.0
        started: float | None = None
        while True:
            # However fast kmsd answers (or fails), requests for a path start this far apart.
            interval = MIN_POLL_INTERVAL_S * _rng.uniform(1.0, 1.2)
            wait = poll_wait(started, self.clock(), interval)
            if wait > 0:
                await asyncio.sleep(wait)
            started = self.clock()
            try:
                if state.view is None or self.clock() >= resync_at:
                    await self._sync(state)
                    resync_at = self.clock() + self.config.resync_s * _rng.uniform(0.9, 1.1)
                else:
                    hold = min(self.config.poll_timeout_s, max(1.0, resync_at - self.clock()))
                    await self._poll(state, hold)
                backoff.reset()
            except Unavailable as exc:
                await self._failed(state, "unreachable", str(exc), backoff.next(exc.retry_after))
            except Refused as exc:
                await self._failed(state, "refused", str(exc), REFUSED_RETRY_S)
            except (FetchFailed, CredentialsError, BadDocument) as exc:
                # kmsd is fine; AWS or the host's credentials are not. Keep the last good set.
                await self._failed(state, "ok", str(exc), backoff.next())
            except Exception as exc:  # a bug must not stop serving the cache
                await self._failed(state, state.upstream, f"unexpected {type(exc).__name__}", 5.0)

    async def _failed(self, state: PathState, upstream: str, error: str, delay: float) -> None:
        state.upstream, state.error = upstream, error
        self.stats["errors"] += 1
        log.warning("sync_failed", path=state.path, upstream=upstream, error=error, retry_in=delay)
        await asyncio.sleep(delay)

    async def _sync(self, state: PathState) -> None:
        """A full re-sync: the effective set from kmsd, then any value not cached yet."""
        doc = await self.kmsd.effective(state.path)
        self._confirmed(state)
        self.stats["resyncs"] += 1
        await self._adopt(state, doc)

    async def _poll(self, state: PathState, hold: float) -> None:
        state.report_changed.clear()
        body, digest = watch_body(self.report(state), state.reports_taken)
        poll = asyncio.ensure_future(self.kmsd.watch(body, hold))
        state.polling = True
        self.stats["polls"] += 1
        try:
            while not poll.done():
                reported = asyncio.ensure_future(state.report_changed.wait())
                try:
                    await asyncio.wait({poll, reported}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    reported.cancel()
                if state.report_changed.is_set() and not poll.done():
                    # An application read a version kmsd has not heard of: hang up and poll
                    # again with the news (at most once per REPORT_DEBOUNCE_S). An answer that
                    # arrives meanwhile is taken at once: a change never waits out the debounce.
                    await asyncio.wait({poll}, timeout=REPORT_DEBOUNCE_S)
                    if not poll.done():
                        poll.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await poll
                        return
            doc = poll.result()
        except Refused as exc:
            if "reports_digest" not in body or exc.status not in (400, 409):
                raise
            # 409: kmsd does not hold these reports (its buffer on another replica, a forgotten
            # instance); 400: a kmsd from before digests. Send them in full on the next poll.
            state.reports_taken = None
            log.info("reports_requested", path=state.path, status=exc.status)
            return
        finally:
            state.polling = False
            if not poll.done():
                poll.cancel()
        state.reports_taken = digest  # answered: kmsd holds these reports
        self._confirmed(state)
        if doc is not None:
            await self._adopt(state, doc)

    def _confirmed(self, state: PathState) -> None:
        state.confirmed_at = self.clock()
        state.upstream = "ok"
        state.error = None

    async def _adopt(self, state: PathState, doc: dict[str, Any], *, newer: bool = False) -> None:
        """Fetch what ``doc`` needs; publish the whole new view, or keep the old one.

        ``newer``: publish only a view newer than the one served by then (a refresh racing
        the sync loop must not put back what the loop has just replaced)."""
        if state.view is not None and doc.get("hash") == state.view.hash:
            if doc.get("path_version") != state.view.path_version:
                self.publish(state, build_view(doc, self.values))  # same set, newer version
            return
        # Hold on to the cached values this set uses: another path's swap may prune the cache
        # while this one waits for AWS.
        have = {f.key: self.values[f.key] for f in fetches(doc) if f.key in self.values}
        values, failures = await self.reader.read_all(missing(doc, have))
        self.values.update(values)  # a version's value never changes: keep what arrived
        if failures:
            raise failures[0]
        view = build_view(doc, {**have, **values})
        if newer and state.view is not None and state.view.path_version >= view.path_version:
            return
        self.publish(state, view)

    async def sync_once(self) -> None:
        """One full sync of every path, failures raised (``kmsagent render --once``)."""
        for state in self.paths.values():
            await self._sync(state)

    async def refresh_all(self) -> None:
        """Ask kmsd for every path's effective set now and serve whatever is newer (the
        compat API's ``refreshNow``). Concurrent callers share one round of requests; a
        failure leaves the cache as it is, which is what the sync loop goes on serving."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._refresh_all())
        await asyncio.shield(self._refreshing)

    async def _refresh_all(self) -> None:
        for state in self.paths.values():
            try:
                doc = await self.kmsd.effective(state.path)
                version = doc.get("path_version")
                if state.view is None or (
                    isinstance(version, int) and version > state.view.path_version
                ):
                    await self._adopt(state, doc, newer=True)
            except (Unavailable, Refused, FetchFailed, CredentialsError, BadDocument) as exc:
                log.info("refresh_failed", path=state.path, error=type(exc).__name__)

    def publish(self, state: PathState, view: PathView) -> None:
        before = state.view
        state.view = view  # the swap: one reference, read once by every local request
        self.stats["swaps"] += 1
        changed, state.changed = state.changed, asyncio.Event()
        changed.set()  # wakes the applications' local long polls
        keep = keys_of(s.view for s in self.paths.values() if s.view is not None)
        for key in [k for k in self.values if k not in keep]:
            del self.values[key]
        log.info(
            "path_updated",
            path=view.path,
            path_version=view.path_version,
            secrets=len(view.secrets),
            previous_version=before.path_version if before else None,
        )

    def report(self, state: PathState) -> dict[str, Any]:
        """The whole watch body: what this instance and its applications' processes hold."""
        view = state.view
        return {
            "path": state.path,
            "path_version": view.path_version if view else 0,
            "instance_id": self.config.instance_id,
            "held": view.held() if view else {},
            "versions": view.holding() if view else {},
            "processes": reported_processes(self.reads.report(state.path, self.clock())),
        }
