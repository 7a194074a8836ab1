"""kmsctl rotate ..., kmsctl app webhook, kmsctl console."""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import sys
import time
from datetime import UTC, datetime
from typing import Any

from kmsd.cli import parsing
from kmsd.cli.client import Client, CliError, quote_path, read_input, transient
from kmsd.cli.output import NONE, Subparsers, cell, emit, emit_stream, output_of
from kmsd.domain.backoff import Backoff

BAR_WIDTH = 30
FOLLOW_INTERVAL_S = 1.0
FOLLOW_RETRY_CAP_S = 10.0
FINAL_PHASES = ("done", "aborted", "rolled_back")
# One "adoption forget" line per straggler, up to this many; the rest are in --output json.
MAX_FORGET_HINTS = 5


def cmd_rotate_start(c: Client, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"path": args.path, "name": args.name}
    if args.generate:
        body["generate"] = True
    elif args.file is not None:
        data = read_input(args.file, "--file")
        body["value_b64"] = base64.b64encode(data).decode()
    else:
        raw = sys.stdin.read() if args.value == "-" else args.value
        try:
            body["value"] = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CliError(f"--value is not valid JSON: {exc.msg} at position {exc.pos}") from None
    if args.mode:
        body["mode"] = args.mode
    if args.gate_timeout:
        body["gate_timeout"] = args.gate_timeout
    if args.leaked:
        body["leaked"] = True
    doc = c.call("POST", "/v1/rotations", body)
    if args.follow:
        _follow(c, doc["id"], args)
        return
    emit(args, doc, render_status)


def _command(verb: str) -> Any:
    def run(c: Client, args: argparse.Namespace) -> None:
        body = {"force": True} if getattr(args, "force", False) else {}
        doc = c.call("POST", f"/v1/rotations/{args.id}/{verb}", body)
        emit(args, doc, render_status)

    return run


def cmd_rotate_status(c: Client, args: argparse.Namespace) -> None:
    if args.id is None:
        doc = c.call("GET", "/v1/rotations?active=true")
        emit(args, doc, _print_list, items="rotations")
        return
    if args.follow:
        _follow(c, args.id, args)
        return
    emit(args, c.call("GET", f"/v1/rotations/{args.id}"), render_status)


def _follow(c: Client, rotation_id: int, args: argparse.Namespace) -> None:
    """Redraw the status every second until the rotation is over (in place on a terminal;
    elsewhere one block per change; with json or jsonl one compact line per change)."""
    live = output_of(args) == "text" and sys.stdout.isatty()
    last = None
    backoff = Backoff(FOLLOW_INTERVAL_S, FOLLOW_RETRY_CAP_S)
    while True:
        try:
            doc = c.call("GET", f"/v1/rotations/{rotation_id}")
        except CliError as exc:
            # A rolling restart of kmsd must not end the operator's view of the rotation.
            if not transient(exc):
                raise
            if not backoff.attempts:
                print(f"kmsctl: {exc}; retrying", file=sys.stderr, flush=True)
            time.sleep(backoff.next())
            continue
        if backoff.attempts:
            print("kmsctl: kmsd answers again", file=sys.stderr, flush=True)
            backoff.reset()
        shown = {k: v for k, v in doc.items() if k not in ("phase_since",)}
        if shown != last:
            if live:
                sys.stdout.write("\x1b[H\x1b[2J")
            emit_stream(args, doc, render_status)
            last = shown
        if doc["phase"] in FINAL_PHASES:
            return
        time.sleep(FOLLOW_INTERVAL_S)


def cmd_rotate_list(c: Client, args: argparse.Namespace) -> None:
    query = f"?path={quote_path(args.path)}" if args.path else ""
    emit(args, c.call("GET", f"/v1/rotations{query}"), _print_list, items="rotations")


def _print_list(doc: dict[str, Any]) -> None:
    rows = doc["rotations"]
    if not rows:
        print(NONE)
        return
    for r in rows:
        flags = ",".join(f for f in ("paused", "leaked", "timed_out") if r.get(f))
        print(
            f"#{r['id']:<5} {r['path']}/{r['name']:<20} {r['phase']:<12} "
            f"{r['mode']:<6} {flags:<16} started {r['started_at'][:19]}"
        )


def bar(held: int, live: int, stale: int, width: int = BAR_WIDTH) -> str:
    """``[#########.....]`` for held of live, with stale instances shown apart."""
    filled = round(width * held / live) if live else width
    return f"[{'#' * filled}{'.' * (width - filled)}] {held}/{live} live" + (
        f", {stale} stale" if stale else ""
    )


def render_status(doc: dict[str, Any]) -> None:
    """The rotation as an operator reads it in a terminal: phase, gate bar, stragglers."""
    now = datetime.now(UTC)
    width = min(BAR_WIDTH, max(10, shutil.get_terminal_size((80, 24)).columns - 40))
    flags = [f for f in ("paused", "leaked", "timed_out") if doc.get(f)]
    print(
        f"rotation #{doc['id']}  {doc['path']}/{doc['name']}  {doc['phase'].upper()}"
        f"  mode={doc['mode']}" + (f"  [{', '.join(flags)}]" if flags else "")
    )
    print(f"  new {cell(doc.get('new_version'))}  old {cell(doc.get('old_version'))}")
    gate = doc.get("gate")
    if gate:
        counts = gate["counts"]
        who = "owners hold pending" if gate["gate"] == 1 else "everyone serves new"
        state = "MET" if gate["met"] else "waiting"
        print(
            f"  gate {gate['gate']} ({who}): "
            f"{bar(counts['held'], counts['live'], counts['stale'], width)}  {state}"
        )
        for label, rows in (("waiting for", gate["waiting"]), ("stale", gate["stale"])):
            for r in rows:
                procs = ", ".join(f"pid {p}: {v}" for p, v in r["processes"].items())
                goes_stale = (
                    f"  stale {_when(r['stale_at'], now)}"
                    if label == "waiting for" and r.get("stale_at")
                    else ""
                )
                print(
                    f"    {label:<11} {r['instance_id']} ({r['role']}, {r['path']}, {r['ip']}) "
                    f"serves {r['current']} last seen {r['last_seen'][:19]}"
                    + goes_stale
                    + (f"  [{procs}]" if procs else "")
                )
        if not gate["met"] and gate["waiting"] and doc["phase"] not in FINAL_PHASES:
            _print_hints(doc["id"], gate["waiting"])
    for e in doc.get("events", [])[-5:]:
        forced = " FORCED" if e["forced"] else ""
        print(f"  {e['at'][:19]}  {e['action']}{forced}  by {cell(e.get('actor'))}")


def _when(iso: str, now: datetime) -> str:
    """``at 12:03:04 (in 4m10s)`` for an ISO time; the text as given if it does not parse."""
    try:
        at = datetime.fromisoformat(iso)
    except ValueError:
        return f"at {iso}"
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    left = int((at - now).total_seconds())
    clock = at.astimezone(UTC).strftime("%H:%M:%S UTC")
    if left <= 0:
        return f"at {clock} (due now)"
    minutes, seconds = divmod(left, 60)
    hours, minutes = divmod(minutes, 60)
    span = (
        f"{hours}h{minutes:02d}m"
        if hours
        else f"{minutes}m{seconds:02d}s"
        if minutes
        else f"{seconds}s"
    )
    return f"at {clock} (in {span})"


def _print_hints(rotation_id: int, waiting: list[dict[str, Any]]) -> None:
    """What the operator can do about a gate that waits: wait, force it, or forget the gone."""
    print("  the gate waits for the instances above; you can:")
    if any(r.get("stale_at") for r in waiting):
        print("    wait: a straggler that no longer polls stops counting when it goes stale")
    shown = waiting[:MAX_FORGET_HINTS]
    commands = [
        (f"kmsctl rotate advance {rotation_id} --force", "go on without them (audited)"),
        *(
            (
                f"kmsctl adoption forget {r['path']} {r['instance_id']}",
                "drop an instance that is gone",
            )
            for r in shown
        ),
    ]
    width = max(len(command) for command, _ in commands)
    for command, why in commands:
        print(f"    {command.ljust(width)}  # {why}")
    if len(waiting) > len(shown):
        print(
            f"    ... and {len(waiting) - len(shown)} more "
            f"(kmsctl rotate status {rotation_id} --output json)"
        )


def cmd_app_webhook(c: Client, args: argparse.Namespace) -> None:
    if args.delete:
        doc = c.call("DELETE", f"/v1/webhooks/{quote_path(args.app)}")
        emit(
            args,
            doc or {"app": args.app, "deleted": True},
            lambda _: print(f"webhook of {args.app} removed"),
        )
        return
    if not args.url:
        raise CliError("give --url URL (or --delete)")
    doc = c.call("PUT", f"/v1/webhooks/{quote_path(args.app)}", {"url": args.url})
    emit(
        args,
        doc,
        lambda d: print(
            f"webhook of {d['app']}: {d['url']}\n"
            f"HMAC key (shown once; verify X-Kmsd-Signature with it): {d['hmac_key']}"
        ),
    )


def cmd_console(c: Client, args: argparse.Namespace) -> None:
    doc = c.call("POST", "/v1/console/links")
    url = c.addr + doc["path"]
    if args.rotation is not None:
        url += f"&next=/ui/rotations/{args.rotation}"
    emit(
        args,
        {**doc, "url": url},
        lambda d: print(f"{d['url']}\n(one use, until {d['expires_at'][:19]})"),
    )


def add_rotate_verbs(sub: Subparsers) -> None:
    rotate = sub.add_parser("rotate", help="rotate a secret through pending -> current -> revoked")
    rsub = rotate.add_subparsers(dest="verb", required=True)
    p = rsub.add_parser("start", help="add the new version as pending")
    p.add_argument("path")
    p.add_argument("name")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--value", help="the new JSON value; '-' reads stdin")
    src.add_argument("--file", help="the new binary value from a file; '-' reads stdin")
    src.add_argument("--generate", action="store_true", help="by the secret's stored spec")
    p.add_argument("--mode", choices=("auto", "manual"), help="default manual (leaked: auto)")
    p.add_argument(
        "--gate-timeout", type=parsing.gate_timeout, help="e.g. 15m, 2h (default 1h; leaked: 5m)"
    )
    p.add_argument("--leaked", action="store_true", help="auto mode, short gate timeout")
    p.add_argument("--follow", action="store_true", help="then show progress until it ends")
    p.set_defaults(func=cmd_rotate_start)
    for verb, text in (
        ("advance", "take the next step (promote, then revoke)"),
        ("pause", "stop automatic steps"),
        ("resume", "allow automatic steps again"),
        ("abort", "before promotion: drop the pending version"),
        ("rollback", "after promotion or revocation: the old version is current again"),
    ):
        p = rsub.add_parser(verb, help=text)
        p.add_argument("id", type=int)
        if verb == "advance":
            p.add_argument("--force", action="store_true", help="past an unmet gate (audited)")
        p.set_defaults(func=_command(verb))
    p = rsub.add_parser("status", help="progress of one rotation, or the active ones")
    p.add_argument("id", type=int, nargs="?")
    p.add_argument("--follow", action="store_true", help="redraw every second until it ends")
    p.set_defaults(func=cmd_rotate_status)
    p = rsub.add_parser("list", help="recent rotations")
    p.add_argument("--path")
    p.set_defaults(func=cmd_rotate_list)

    p = sub.add_parser("console", help="a one-time link to the web console")
    p.add_argument("--rotation", type=int, help="open this rotation's dashboard")
    p.set_defaults(func=cmd_console)


def add_webhook_verb(app_sub: Subparsers) -> None:
    p = app_sub.add_parser("webhook", help="signed rotation events for an application")
    p.add_argument("app", help="namespace/application")
    p.add_argument("--url", help="where to POST events")
    p.add_argument("--delete", action="store_true")
    p.set_defaults(func=cmd_app_webhook)
