"""``kmsagent exec``: run one command with secrets in its environment, and follow changes.

The command is the agent's only child, in a process group of its own: signals sent to the
agent (SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2, SIGQUIT) are forwarded to it, and its exit
status becomes the agent's (128 + N when a signal ended it). Its environment is rendered from
the current versions (:mod:`kmsagent.environ`); when a change alters it, the ``--on-change``
policy applies: ``restart`` (SIGTERM, ``--grace`` seconds, SIGKILL, then start again, after a
random delay up to ``--restart-jitter`` so that a fleet does not restart at once),
``signal:NAME`` (e.g. ``signal:HUP``) or ``none``. A pending version never alters it (only
current versions are used), so a rotation restarts applications once, at promotion.

The child counts in adoption as ``PID@START`` with the versions its environment came from, so
rotation gates see exactly what it holds, without the application knowing kmsd exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from kmsagent.environ import EnvSpec, render
from kmsagent.peers import process_id
from kmsagent.sync import Agent

log = structlog.get_logger(__name__)

FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGQUIT,
)
KEEPALIVE_S = 60.0  # re-note the child's reads well within ProcessReads' forget_after
_rng = random.Random()  # noqa: S311 - jitter, not a secret


class PolicyError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Policy:
    action: str  # restart | signal | none
    signal: signal.Signals | None = None

    @staticmethod
    def parse(text: str) -> Policy:
        if text in ("restart", "none"):
            return Policy(text)
        kind, _, name = text.partition(":")
        if kind == "signal" and name:
            try:
                return Policy("signal", signal.Signals[f"SIG{name.upper().removeprefix('SIG')}"])
            except KeyError:
                pass
        raise PolicyError(f"--on-change {text!r}: restart, none or signal:NAME (signal:HUP)")


@dataclass(frozen=True, slots=True)
class ExecConfig:
    argv: Sequence[str]
    specs: Sequence[EnvSpec]
    everything: bool
    policy: Policy
    jitter_s: float = 30.0
    grace_s: float = 10.0


def exit_status(returncode: int) -> int:
    """A child ended by signal N exits the agent with 128 + N, as a shell would."""
    return 128 - returncode if returncode < 0 else returncode


class Supervisor:
    def __init__(self, agent: Agent, config: ExecConfig) -> None:
        self.agent = agent
        self.config = config
        self.child: asyncio.subprocess.Process | None = None
        self.child_id: str | None = None
        self.env: dict[str, str] = {}
        self.used: dict[str, dict[str, str]] = {}
        self.starts = 0
        self._stopping = False

    async def run(self) -> int:
        """Start the command once every path has a view; return its exit status."""
        await self._ready()
        self.env, self.used = self._render()
        await self._start()
        loop = asyncio.get_running_loop()
        for sig in FORWARDED:
            loop.add_signal_handler(sig, self._forward, sig)
        try:
            return await self._watch()
        finally:
            for sig in FORWARDED:
                loop.remove_signal_handler(sig)

    async def _ready(self) -> None:
        while any(s.view is None for s in self.agent.paths.values()):
            waits = [
                asyncio.ensure_future(s.changed.wait())
                for s in self.agent.paths.values()
                if s.view is None
            ]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    def _render(self) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
        views = [s.view for s in self.agent.paths.values() if s.view is not None]
        return render(views, self.config.specs, everything=self.config.everything)

    def _forward(self, sig: signal.Signals) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            self._stopping = True
        if self.child is not None and self.child.returncode is None:
            self.child.send_signal(sig)

    async def _start(self) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("KMSAGENT_")}
        self.child = await asyncio.create_subprocess_exec(
            *self.config.argv, env={**base, **self.env}, process_group=0
        )
        self.starts += 1
        self.child_id = process_id(self.child.pid) or str(self.child.pid)
        self._note_reads()
        log.info("exec_started", pid=self.child.pid, starts=self.starts, variables=len(self.env))

    def _note_reads(self) -> None:
        """What the child holds, as if it had read it through the agent."""
        assert self.child_id is not None
        for path, read in self.used.items():
            state = self.agent.paths.get(path)
            if state is not None and self.agent.reads.record(
                path, self.child_id, read, self.agent.clock()
            ):
                state.report_changed.set()

    async def _watch(self) -> int:
        assert self.child is not None
        while True:
            exited = asyncio.ensure_future(self.child.wait())
            changed = [asyncio.ensure_future(s.changed.wait()) for s in self.agent.paths.values()]
            try:
                done, _ = await asyncio.wait(
                    {exited, *changed}, timeout=KEEPALIVE_S, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for task in (exited, *changed):
                    if not task.done():
                        task.cancel()
            if exited in done or self.child.returncode is not None:
                status = exit_status(await self.child.wait())
                log.info("exec_exited", status=status)
                return status
            if not done:
                self._note_reads()  # keep the child's reads from being forgotten
                continue
            await self._changed()

    async def _changed(self) -> None:
        env, used = self._render()
        if env == self.env:
            return  # a change the environment does not show (a pending version, metadata)
        policy = self.config.policy
        log.info("exec_environment_changed", action=policy.action)
        if policy.action == "none" or self._stopping:
            return
        assert self.child is not None
        if policy.action == "signal":
            assert policy.signal is not None
            self.child.send_signal(policy.signal)
            return
        delay = _rng.uniform(0, self.config.jitter_s) if self.config.jitter_s > 0 else 0.0
        if delay:
            log.info("exec_restart_in", seconds=round(delay, 3))
            with contextlib.suppress(TimeoutError):
                # The child may end by itself meanwhile: then its status is the answer.
                await asyncio.wait_for(asyncio.shield(self.child.wait()), delay)
            if self.child.returncode is not None:
                return
            env, used = self._render()  # changes that arrived meanwhile are taken in too
        await self._stop_child()
        if self._stopping:
            return
        self._forget()
        self.env, self.used = env, used
        await self._start()

    async def _stop_child(self) -> None:
        assert self.child is not None
        with contextlib.suppress(ProcessLookupError):
            self.child.terminate()
        try:
            await asyncio.wait_for(self.child.wait(), self.config.grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.child.kill()
            await self.child.wait()

    def _forget(self) -> None:
        if self.child_id is not None:
            for path in self.used:
                self.agent.reads.forget(path, self.child_id)
