"""Secrets as environment variables, for ``kmsagent exec`` (pure: no I/O).

``--env NAME=SECRET[.FIELD]`` sets one variable: a JSON secret's field (strings as they are,
anything else as JSON), a whole JSON secret as its JSON text, a binary secret as base64.
``--env-all`` sets one variable per field of every JSON object secret (``SECRET_FIELD``,
upper-cased, every character outside ``A-Z 0-9 _`` made ``_``), other JSON secrets and binary
ones as one variable each. Only current versions are used: a pending version (a rotation in
progress) never changes the environment; its promotion does.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from kmsagent.state import PathView, Secret

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNSAFE = re.compile(r"[^A-Z0-9_]")


class EnvError(ValueError):
    """A ``--env`` that cannot be honoured; names the variable and the secret, never a value."""


@dataclass(frozen=True, slots=True)
class EnvSpec:
    variable: str
    secret: str
    field: str | None = None


def parse_spec(text: str) -> EnvSpec:
    """``NAME=SECRET`` or ``NAME=SECRET.FIELD``."""
    variable, sep, source = text.partition("=")
    if not sep or not _NAME.fullmatch(variable) or not source:
        raise EnvError(f"--env {text!r}: expected NAME=SECRET or NAME=SECRET.FIELD")
    secret, _, field = source.partition(".")
    if not secret:
        raise EnvError(f"--env {text!r}: the secret's name is missing")
    return EnvSpec(variable, secret, field or None)


def variable_name(*parts: str) -> str:
    """``db`` + ``password`` -> ``DB_PASSWORD``; a leading digit gets a ``_`` in front."""
    name = _UNSAFE.sub("_", "_".join(parts).upper())
    return f"_{name}" if name[:1].isdigit() else name


def _text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _decoded(secret: Secret) -> tuple[Any, str] | None:
    """The current value: (parsed JSON or None, the text form); None without a current one."""
    version = secret.current
    if version is None:
        return None
    if isinstance(version.value, bytes):
        return None, base64.b64encode(version.value).decode("ascii")
    try:
        return orjson.loads(version.value), version.value
    except orjson.JSONDecodeError:
        return None, version.value


def _find(views: Iterable[PathView], name: str) -> Secret | None:
    for view in views:
        secret = view.secrets.get(name)
        if secret is not None and secret.kind != "datakey":
            return secret
    return None


def render(
    views: Iterable[PathView], specs: Iterable[EnvSpec], *, everything: bool
) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """The variables, and per path the version of each secret they came from (for adoption)."""
    views = list(views)
    env: dict[str, str] = {}
    used: dict[str, dict[str, str]] = {}

    def note(view_path: str, secret: Secret) -> None:
        version = secret.current
        if version is not None:
            used.setdefault(view_path, {})[secret.name] = version.version_id

    if everything:
        for view in views:
            for name, secret in sorted(view.secrets.items()):
                decoded = None if secret.kind == "datakey" else _decoded(secret)
                if decoded is None:
                    continue
                parsed, text = decoded
                if isinstance(parsed, dict):
                    for key, value in parsed.items():
                        env[variable_name(name, str(key))] = _text(value)
                else:
                    env[variable_name(name)] = text
                note(view.path, secret)
    for spec in specs:
        found = _find(views, spec.secret)
        decoded = None if found is None else _decoded(found)
        if found is None or decoded is None:
            raise EnvError(f"--env {spec.variable}: no secret {spec.secret!r} with a value")
        parsed, text = decoded
        if spec.field is None:
            env[spec.variable] = text
        elif isinstance(parsed, Mapping) and spec.field in parsed:
            env[spec.variable] = _text(parsed[spec.field])
        else:
            raise EnvError(f"--env {spec.variable}: {spec.secret!r} has no field {spec.field!r}")
        path = next(v.path for v in views if v.secrets.get(spec.secret) is found)
        note(path, found)
    return env, used
