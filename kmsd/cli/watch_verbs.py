"""kmsctl watch, kmsctl adoption [forget]: the long-poll side of kmsd, seen from a terminal.

``watch`` is an *observer*: it polls like an agent but tells kmsd so (``"role": "observer"``),
and rotation gates do not wait for it. It outlives the replica it talks to: when the server
goes away (refused, reset, a 5xx from a load balancer, 503/429 with ``Retry-After`` from a
replica that is stopping or whose change feed is down) it says so once on stderr, retries with
capped, jittered backoff (or after ``Retry-After`` when the server names a time), signs in
again if its token is refused, and polls on from the ``path_version`` it held, so a change
made while it was away is printed as soon as it is back.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any
from urllib.parse import urlencode

from kmsd.cli import parsing
from kmsd.cli.client import Client, CliError, HttpError, Unreachable, quote_path, transient
from kmsd.cli.output import Subparsers, emit, emit_stream, print_table
from kmsd.domain.backoff import Backoff

# First retry after 0.2 s (a replica restarting behind a load balancer is often back at once),
# doubling to 10 s: a watch left running through a long outage still notices the return soon.
RETRY_INITIAL_S = 0.2
RETRY_CAP_S = 10.0
# Retry-After is honoured as given, up to this: a typo in a proxy must not park a watch for
# a day.
RETRY_AFTER_MAX_S = 300.0
# How long a watch request may take beyond the hold kmsd was asked for.
CLIENT_SLACK_S = 30


def _say(message: str) -> None:
    print(f"kmsctl: {message}", file=sys.stderr, flush=True)


class _Outage:
    """Tracks whether the server is lost, so that losing and regaining it are one line each."""

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self.since: float | None = None

    def lost(self, why: str, pause: float, *, asked: bool) -> None:
        if self.since is None:
            self.since = time.monotonic()
            when = f"after {pause:.0f} s as it asks" if asked else "with backoff"
            _say(f"lost kmsd at {self.addr} ({why}); reconnecting {when}")

    def regained(self, version: int) -> None:
        if self.since is not None:
            away = time.monotonic() - self.since
            _say(f"back on kmsd at {self.addr} after {away:.1f} s (path_version={version})")
            self.since = None


def _refuses_role(exc: HttpError) -> bool:
    """A 400 naming ``role`` as an unknown field: this kmsd predates observers."""
    return exc.status == 400 and "unknown field" in exc.detail and "'role'" in exc.detail


def cmd_watch(c: Client, args: argparse.Namespace) -> None:
    """Long-poll a path and print each new version; reconnect whenever the server goes away."""
    c.timeout = args.timeout + CLIENT_SLACK_S
    # The first look fails fast: a wrong address, path or permission is a mistake to report,
    # not an outage to wait out.
    current = c.call("GET", f"/v1/effective/{quote_path(args.path)}")["path_version"]
    version = current if args.version is None else args.version
    _say(f"watching {args.path} from path_version={version}")
    body: dict[str, Any] = {
        "path": args.path,
        "instance_id": args.instance_id or f"kmsctl-{os.getpid()}",
        "role": "observer",
    }
    backoff = Backoff(RETRY_INITIAL_S, RETRY_CAP_S)
    outage = _Outage(c.addr)
    while True:
        # While the server is lost, ask for a short poll: its answer (at once) is the proof
        # that the server is back, instead of a hold that says nothing for a minute or more.
        hold = 0 if outage.since is not None else args.timeout
        try:
            doc = c.call("POST", f"/v1/watch?timeout={hold}", {**body, "path_version": version})
        except Unreachable as exc:
            pause = backoff.next()
            outage.lost(exc.reason, pause, asked=False)
            time.sleep(pause)
            continue
        except HttpError as exc:
            if _refuses_role(exc) and "role" in body:
                # A kmsd from before observers refuses the field: watch as a plain instance.
                del body["role"]
                _say("this kmsd does not know observers; rotation gates will count this watch")
                continue
            if not transient(exc):
                raise
            asked = exc.retry_after is not None
            if exc.retry_after is not None:
                pause = min(exc.retry_after, RETRY_AFTER_MAX_S)
            else:
                pause = backoff.next()
            outage.lost(str(exc).partition(":")[0], pause, asked=asked)
            time.sleep(pause)
            continue
        backoff.reset()
        if doc is None:  # 304: the hold ran out with nothing new
            outage.regained(version)
            continue
        version = doc["path_version"]
        outage.regained(version)
        emit_stream(
            args,
            doc,
            lambda d: print(
                f"{d['path']} path_version={d['path_version']} "
                f"hash={d['hash'][:16]} secrets={len(d['secrets'])}"
            ),
        )
        if args.once:
            return


def _instance_rows(rows: list[dict[str, Any]]) -> None:
    print_table(
        [
            (
                i["instance_id"],
                i["ip"],
                str(i["path_version"]),
                i["last_seen"],
                "stale" if i["stale"] else "live",
                ",".join(i["app_process_ids"]),
            )
            for i in rows
        ],
        ("INSTANCE", "IP", "PATH_VERSION", "LAST SEEN", "STATE", "PROCESSES"),
    )


def render_adoption(d: dict[str, Any]) -> None:
    """The adoption answer as text: counts, versions and holders, instances, observers."""
    n = d["counts"]
    observers = f", {n['observers']} observer(s)" if n.get("observers") else ""
    print(
        f"{d['path']}: {n['instances']} instance(s), {n['live']} live, {n['stale']} stale"
        f"{observers} (stale = not seen for {d['stale_after_s']} s)"
    )
    rows = [
        (
            s["name"],
            v["version_id"],
            v["stage"] or "-",
            str(v["live"]),
            str(v["stale"]),
            ", ".join(v["instances"]),
        )
        for s in d["secrets"]
        for v in s["versions"]
    ]
    print_table(rows, ("SECRET", "VERSION", "STAGE", "LIVE", "STALE", "INSTANCES"))
    if d["instances"]:
        print()
        _instance_rows(d["instances"])
    if d.get("observers"):
        print()
        print("observers (kmsctl watch and the like; rotation gates do not wait for them):")
        _instance_rows(d["observers"])


def _forget(c: Client, args: argparse.Namespace, path: str, instance: str) -> None:
    query = urlencode({"instance": instance})
    doc = c.call("DELETE", f"/v1/adoption/{quote_path(path)}?{query}")
    emit(
        args,
        doc,
        lambda d: print(
            f"forgot instance {d.get('instance_id', instance)} at {d.get('path', path)}: "
            "it no longer counts in adoption or rotation gates until it polls again"
        ),
    )


def cmd_adoption(c: Client, args: argparse.Namespace) -> None:
    """``adoption PATH`` shows; ``adoption forget PATH INSTANCE`` drops a gone instance."""
    words = args.words
    if words[0] == "forget":
        if len(words) != 3:
            raise CliError("usage: kmsctl adoption forget PATH INSTANCE")
        _forget(c, args, words[1], words[2])
        return
    if len(words) != 1:
        raise CliError("usage: kmsctl adoption PATH, or kmsctl adoption forget PATH INSTANCE")
    emit(args, c.call("GET", f"/v1/adoption/{quote_path(words[0])}"), render_adoption)


def add_watch_verbs(sub: Subparsers) -> None:
    p = sub.add_parser(
        "adoption",
        help="which instances hold which versions; 'forget PATH INSTANCE' drops one",
        usage="kmsctl adoption [-o {text,json,jsonl}] PATH\n"
        "       kmsctl adoption [-o {text,json,jsonl}] forget PATH INSTANCE",
        description="Show which instances hold which versions of a path's secrets, or "
        "forget an instance that is gone (it stops counting in rotation gates).",
    )
    p.add_argument("words", nargs="+", metavar="PATH | forget PATH INSTANCE")
    p.set_defaults(func=cmd_adoption)

    p = sub.add_parser(
        "watch",
        help="long-poll a path and print each change (json, jsonl: one compact line each)",
    )
    p.add_argument("path")
    p.add_argument("--version", type=int, help="path_version you hold (default: the current one)")
    p.add_argument(
        "--timeout",
        type=parsing.seconds,
        default=90,
        help="hold time asked of kmsd: seconds, or e.g. 2m (default 90)",
    )
    p.add_argument("--instance-id", help="reported in adoption (default kmsctl-PID)")
    p.add_argument("--once", action="store_true", help="exit after the first change")
    p.set_defaults(func=cmd_watch)
