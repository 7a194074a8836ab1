"""What the ``attempt`` row of a change names as its target (pure).

A change's attempt row is written before its handler runs (nothing changes unless it is
recorded), so it cannot wait for the handler to say what it acts on. Most changes name their
target in the URL (``{path}``, ``{ref}``); the others name it in their body, their query or by
an id. This table says where, per action, and builds the same text the handler later gives the
outcome row, so that ``audit list --path`` finds both rows of a call:

- body or query fields: the node path, ``PATH/NAME`` of a secret, or the bindings' prefix;
- an id in the URL: ``{noun} {id}`` (``binding 7``, ``rotation 3: advance``), led by the path
  it concerns when the caller knows it (a binding's prefix, from the bindings in memory).

Text that does not parse names no target (the handler refuses the call with 400 anyway).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kmsd.domain.access import ROOT
from kmsd.domain.names import NodePath, check_segment
from kmsd.errors import InvalidInput

Fields = Mapping[str, Any]


def _path(raw: object) -> str:
    return str(NodePath.parse(raw)) if isinstance(raw, str) else ""


def _prefix(raw: object) -> str:
    return ROOT if raw == ROOT else _path(raw)


def _secret(raw: object) -> str:
    if not isinstance(raw, str) or "/" not in raw:
        return ""
    path, _, name = raw.rpartition("/")
    return f"{NodePath.parse(path)}/{check_segment(name)}"


def _path_and_name(doc: Fields) -> str:
    name = doc.get("name")
    return f"{_path(doc.get('path'))}/{check_segment(name)}" if isinstance(name, str) else ""


# action -> target from the JSON body.
FROM_BODY: dict[str, Callable[[Fields], str]] = {
    "binding.grant": lambda doc: _prefix(doc.get("path")),
    "share.create": lambda doc: _secret(doc.get("secret")),
    "rotation.start": _path_and_name,
}
# action -> target from the query (and the URL's path, if any).
FROM_QUERY: dict[str, Callable[[Fields, Fields], str]] = {
    "share.delete": lambda params, query: _secret(query.get("secret")),
    "adoption.forget": lambda params, query: (
        f"{_path(params.get('path'))} instance {query['instance']}" if query.get("instance") else ""
    ),
}


def reads_body(action: str) -> bool:
    """Whether the attempt row of ``action`` takes its target from the body."""
    return action in FROM_BODY


def attempt_target(
    action: str,
    params: Fields,
    query: Fields,
    body: Fields | None = None,
    known_path: str | None = None,
) -> str:
    """The target of ``action``'s attempt row, or "" when the call names none that parses.

    ``params`` are the URL's match, ``body`` the parsed JSON body (when ``reads_body``), and
    ``known_path`` the path an id stands for, when the caller could tell cheaply.
    """
    try:
        if action in FROM_BODY:
            return FROM_BODY[action](body or {})
        if action in FROM_QUERY:
            return FROM_QUERY[action](params, query)
    except InvalidInput:
        return ""
    if "id" in params:
        noun = action.partition(".")[0]
        target = f"{noun} {params['id']}"
        if "verb" in params:
            target += f": {params['verb']}"
        return f"{known_path} {target}" if known_path else target
    return str(params.get("path") or params.get("ref") or "")
