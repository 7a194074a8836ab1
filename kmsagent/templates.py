"""Rendered files: Jinja2 templates filled with the effective secrets, written atomically.

``--template SRC:DEST[:MODE[:COMMAND]]`` (or ``[[template]]`` blocks in ``--config FILE``:
``source``, ``destination``, ``mode``, ``command``, ``user``, ``group``). A template sees
``secrets.NAME`` - a JSON secret parsed (``{{ secrets.db.password }}``), another secret as its
text, a binary one as base64 - and ``path``, the path it comes from. Data keys are not offered
(their plaintext belongs in memory, not in files).

Templates run in Jinja2's immutable sandbox with undefined names as errors: a template cannot
call into Python, change what it is given, or silently render an empty password. A file is
written (temporary file in the same folder, fsync, rename, then the folder fsynced; mode 0600
unless given) only when its rendered content changes, and COMMAND (e.g. ``systemctl reload
nginx``) runs after each such write. A template that fails leaves the old file in place; the
failure shows on ``/healthz`` (503) and ``/metrics`` until a render succeeds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import grp
import hashlib
import os
import pwd
import shlex
import tempfile
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from kmsagent.state import PathView

if TYPE_CHECKING:
    from kmsagent.sync import Agent

log = structlog.get_logger(__name__)

COMMAND_TIMEOUT_S = 60.0


class TemplateError(ValueError):
    """A template option or config block that cannot be used (never carries a value)."""


@dataclass(frozen=True, slots=True)
class TemplateSpec:
    source: Path
    destination: Path
    mode: int = 0o600
    command: tuple[str, ...] = ()
    user: str | None = None
    group: str | None = None

    @staticmethod
    def parse(text: str) -> TemplateSpec:
        """``SRC:DEST[:MODE[:COMMAND]]``; COMMAND may itself hold colons."""
        parts = text.split(":", 3)
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise TemplateError(f"--template {text!r}: expected SRC:DEST[:MODE[:COMMAND]]")
        mode = _mode(parts[2], text) if len(parts) > 2 and parts[2] else 0o600
        command = tuple(shlex.split(parts[3])) if len(parts) > 3 else ()
        return TemplateSpec(Path(parts[0]), Path(parts[1]), mode, command)


def _mode(text: str, where: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise TemplateError(f"{where}: the mode must be octal, e.g. 0640") from None
    if not 0 <= mode <= 0o777:
        raise TemplateError(f"{where}: the mode must be between 0000 and 0777")
    return mode


def load_config(path: Path) -> list[TemplateSpec]:
    """``[[template]]`` blocks of a TOML file."""
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TemplateError(f"--config {path}: {exc}") from None
    specs = []
    for n, block in enumerate(doc.get("template", []), 1):
        where = f"--config {path}, template {n}"
        if not isinstance(block, dict) or not {"source", "destination"} <= set(block):
            raise TemplateError(f"{where}: needs source and destination")
        unknown = set(block) - {"source", "destination", "mode", "command", "user", "group"}
        if unknown:
            raise TemplateError(f"{where}: unknown keys {sorted(unknown)}")
        command = block.get("command", [])
        if isinstance(command, str):
            command = shlex.split(command)
        specs.append(
            TemplateSpec(
                Path(block["source"]),
                Path(block["destination"]),
                _mode(str(block.get("mode", "0600")), where),
                tuple(str(c) for c in command),
                block.get("user"),
                block.get("group"),
            )
        )
    return specs


def context(views: Iterable[PathView]) -> dict[str, Any]:
    """What a template sees: ``secrets`` (later paths' names win) and ``path``."""
    secrets: dict[str, Any] = {}
    paths = []
    for view in views:
        paths.append(view.path)
        for name, secret in view.secrets.items():
            version = secret.current
            if secret.kind == "datakey" or version is None:
                continue
            value = version.value
            if isinstance(value, bytes):
                secrets[name] = base64.b64encode(value).decode("ascii")
            elif secret.kind == "json":
                try:
                    secrets[name] = orjson.loads(value)
                except orjson.JSONDecodeError:
                    secrets[name] = value
            else:
                secrets[name] = value
    return {"secrets": secrets, "path": paths[0] if len(paths) == 1 else paths}


@functools.cache
def _environment() -> Any:
    """Jinja2's immutable sandbox, loaded on first use: an agent without templates does not
    carry it (the agent's memory is a budget)."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
    )


def render_text(source: str, ctx: Mapping[str, Any]) -> str:
    """Render one template (``jinja2.TemplateError`` on any failure)."""
    return str(_environment().from_string(source).render(ctx))


def write_atomically(spec: TemplateSpec, content: bytes) -> None:
    """Temporary file beside the destination, fsync, rename, folder fsync: never half-written."""
    folder = spec.destination.parent
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{spec.destination.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), spec.mode)
            if spec.user is not None or spec.group is not None:
                uid = pwd.getpwnam(spec.user).pw_uid if spec.user else -1
                gid = grp.getgrnam(spec.group).gr_gid if spec.group else -1
                os.fchown(out.fileno(), uid, gid)
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, spec.destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Renderer:
    """Every template of one agent: rendered on each change, written when their text changes."""

    def __init__(self, specs: list[TemplateSpec]) -> None:
        self.specs = specs
        self.digests: dict[Path, str] = {}
        self.errors: dict[Path, str] = {}  # rendering or writing failed: the old file stays
        self.command_errors: dict[Path, str] = {}  # written, but its command failed
        self.writes = 0
        self.failures = 0

    async def render_all(self, views: list[PathView]) -> bool:
        """Render every template; True when all of them rendered (written or unchanged)."""
        ctx = context(views)
        ok = True
        for spec in self.specs:
            ok = await self._one(spec, ctx) and ok
        return ok

    async def _one(self, spec: TemplateSpec, ctx: Mapping[str, Any]) -> bool:
        import jinja2

        try:
            text = render_text(spec.source.read_text(), ctx)
        except (OSError, jinja2.TemplateError) as exc:
            # The exception's text may quote the template (never a value: values are only in
            # the context); the class and the template's name are enough to act on.
            return self._failed(spec, f"{type(exc).__name__} rendering {spec.source}")
        content = text.encode()
        digest = hashlib.sha256(content).hexdigest()
        if self.digests.get(spec.destination) == digest and spec.destination.exists():
            self.errors.pop(spec.destination, None)
            return True
        try:
            await asyncio.to_thread(write_atomically, spec, content)
        except (OSError, KeyError) as exc:
            return self._failed(spec, f"{type(exc).__name__} writing {spec.destination}")
        self.digests[spec.destination] = digest
        self.errors.pop(spec.destination, None)
        self.writes += 1
        log.info("template_rendered", destination=str(spec.destination))
        if spec.command:
            await self._run(spec)
        return True

    def _failed(self, spec: TemplateSpec, error: str) -> bool:
        self.errors[spec.destination] = error
        self.failures += 1
        log.warning("template_failed", destination=str(spec.destination), error=error)
        return False

    def problems(self) -> dict[str, str]:
        """What ``/healthz`` reports while it lasts: ``template DEST`` -> what went wrong."""
        found = {**self.command_errors, **self.errors}
        return {f"template {dest}": error for dest, error in sorted(found.items())}

    async def _run(self, spec: TemplateSpec) -> None:
        where = spec.destination
        try:
            proc = await asyncio.create_subprocess_exec(*spec.command)
            status = await asyncio.wait_for(proc.wait(), COMMAND_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            self.command_errors[where] = f"command {spec.command[0]}: {type(exc).__name__}"
            log.warning("template_command_failed", destination=str(where))
            return
        if status != 0:
            self.command_errors[where] = f"command {spec.command[0]} exited {status}"
            log.warning("template_command_failed", destination=str(where), status=status)
            return
        self.command_errors.pop(where, None)


async def follow(agent: Agent, renderer: Renderer) -> None:
    """Render once every path has a view, then again after each change (for ``run``)."""
    while True:
        waits = [asyncio.ensure_future(s.changed.wait()) for s in agent.paths.values()]
        views = [s.view for s in agent.paths.values() if s.view is not None]
        if len(views) == len(agent.paths):
            await renderer.render_all(views)
            agent.problems = renderer.problems()
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
