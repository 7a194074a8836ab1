"""kmsctl secret ..., datakey ...: writing secrets, generating keys, reading their metadata."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from typing import Any

from kmsd.cli import parsing
from kmsd.cli.client import Client, CliError, quote_path, read_input
from kmsd.cli.output import MISSING, Subparsers, cell, emit, print_table
from kmsd.domain.profile import SIZED, USES


def _pair(text: str) -> tuple[str, str]:
    key, sep, val = text.partition("=")
    if not sep:
        raise CliError(f"--tag takes KEY=VALUE, got {text!r}")
    return key, val


def cmd_secret_put(c: Client, args: argparse.Namespace) -> None:
    body: dict[str, Any]
    if args.file is not None:
        data = read_input(args.file, "--file")
        body = {"kind": "binary", "value_b64": base64.b64encode(data).decode()}
    else:
        raw = sys.stdin.read() if args.json == "-" else args.json
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CliError(f"--json is not valid JSON: {exc.msg} at position {exc.pos}") from None
        body = {"kind": "json", "value": value}
    if args.description:
        body["description"] = args.description
    if args.tag:
        body["tags"] = dict(_pair(t) for t in args.tag)
    if args.expires_at:
        body["expires_at"] = args.expires_at
    doc = c.call("PUT", f"/v1/secrets/{quote_path(args.path)}/{quote_path(args.name)}", body)
    verb = "created" if doc["created"] else "new version of"
    emit(
        args,
        doc,
        lambda d: print(f"{verb} {d['path']}/{d['name']} ({d['kind']}): version {d['version_id']}"),
    )


def spec_text(spec: dict[str, Any] | None) -> str:
    """A generated key's spec in one phrase: ``signing RSA-PSS 3072 bits, 365-day lifetime``."""
    if not spec:
        return MISSING
    size = spec.get("size")
    unit = "characters" if SIZED.get(str(spec.get("algorithm"))) == "length" else "bits"
    sized = f" {size} {unit}" if size else ""
    lifetime = spec.get("lifetime_days")
    life = f", {lifetime}-day lifetime" if lifetime else ""
    return f"{spec.get('use', '?')} {spec.get('algorithm', '?')}{sized}{life}"


def cmd_secret_generate(c: Client, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"use": args.use}
    for field, value in (
        ("algorithm", args.algorithm),
        ("length", args.length),
        ("lifetime_days", args.lifetime),
    ):
        if value is not None:
            body[field] = value
    doc = c.call("POST", f"/v1/generate/{quote_path(args.path)}/{quote_path(args.name)}", body)
    emit(
        args,
        doc,
        lambda d: print(
            f"generated {d['path']}/{d['name']}: {spec_text(d.get('generated'))}, "
            f"version {d['version_id']}, expires {cell(d.get('expires_at'))}"
        ),
    )


def cmd_secret_expiring(c: Client, args: argparse.Namespace) -> None:
    doc = c.call("GET", f"/v1/expiring?days={args.days}")
    emit(
        args,
        doc,
        lambda d: print_table(
            [(f"{s['path']}/{s['name']}", s["kind"], s["expires_at"]) for s in d["secrets"]],
            ("SECRET", "KIND", "EXPIRES"),
        ),
        items="secrets",
    )


def render_secret(d: dict[str, Any]) -> None:
    """A secret's metadata as text: every field, ``-`` where it has none, then its versions."""
    tags = d.get("tags") or {}
    by = f" by {d['created_by']}" if d.get("created_by") else ""
    fields: list[tuple[str, str]] = [
        ("kind", cell(d.get("kind"))),
        ("arn", cell(d.get("sm_arn"))),
        ("description", cell(d.get("description"))),
        ("tags", ", ".join(f"{k}={v}" for k, v in sorted(tags.items())) or MISSING),
        ("expires", cell(d.get("expires_at"))),
        ("created", f"{cell(d.get('created_at'))}{by}"),
        ("updated", cell(d.get("updated_at"))),
        ("generated", spec_text(d.get("generated"))),
    ]
    if d.get("cmk_arn"):
        every = f", a new key every {d['period_days']} days" if d.get("period_days") else ""
        fields.append(("data key", f"under {d['cmk_arn']}{every}"))
    pem = (d.get("public_key_pem") or "").strip()
    fields.append(("public key", "" if pem else MISSING))
    print(f"{d['path']}/{d['name']}")
    width = max(len(label) for label, _ in fields) + 1
    for label, value in fields:
        print(f"  {(label + ':').ljust(width)} {value}".rstrip())
    for line in pem.splitlines():
        print(f"    {line}")
    print()
    print_table(
        [
            (v.get("version_id"), v.get("stage"), v.get("created_at"), v.get("created_by"))
            for v in d.get("versions", [])
        ],
        ("VERSION", "STAGE", "CREATED", "BY"),
    )


def cmd_secret_show(c: Client, args: argparse.Namespace) -> None:
    doc = c.call("GET", f"/v1/secrets/{quote_path(args.path)}/{quote_path(args.name)}")
    emit(args, doc, render_secret)


def cmd_secret_delete(c: Client, args: argparse.Namespace) -> None:
    doc = c.call("DELETE", f"/v1/secrets/{quote_path(args.path)}/{quote_path(args.name)}")
    emit(args, doc, lambda _: print(f"deleted {args.path}/{args.name} (SM deletion scheduled)"))


def cmd_datakey_create(c: Client, args: argparse.Namespace) -> None:
    body = {"cmk": args.cmk, "period_days": args.period}
    doc = c.call("POST", f"/v1/datakeys/{quote_path(args.path)}/{quote_path(args.name)}", body)
    verb = "created" if doc["created"] else "new period for"
    emit(
        args,
        doc,
        lambda d: print(
            f"{verb} {d['path']}/{d['name']}: data key {d['version_id']} under "
            f"{d['cmk_arn']} (every {d['period_days']} days)"
        ),
    )


def add_secret_verbs(sub: Subparsers) -> None:
    secret = sub.add_parser("secret", help="secrets and their versions")
    ssub = secret.add_subparsers(dest="verb", required=True)
    p = ssub.add_parser("put", help="create a secret or add a version (value goes to SM only)")
    p.add_argument("path")
    p.add_argument("name")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--json", help="a JSON object; '-' reads it from stdin (keeps it out of shell history)"
    )
    src.add_argument("--file", help="a file stored as a binary secret; '-' reads stdin")
    p.add_argument("--description", default="")
    p.add_argument("--tag", action="append", help="KEY=VALUE (repeatable)")
    p.add_argument(
        "--expires-at",
        type=parsing.time_ahead,
        help="ISO 8601 time with zone, or a duration from now (90d, 12h)",
    )
    p.set_defaults(func=cmd_secret_put)
    p = ssub.add_parser("generate", help="generate a key by the security profile (to SM only)")
    p.add_argument("path")
    p.add_argument("name")
    p.add_argument("--use", required=True, type=str.lower, choices=USES)
    p.add_argument(
        "--algorithm",
        type=parsing.algorithm,
        help="one the profile allows for the use (default: its first); any case, or an alias "
        "such as rsa, hmac, ec",
    )
    p.add_argument("--length", type=int, help="bits (RSA, HMAC) or characters (password)")
    p.add_argument(
        "--lifetime",
        type=parsing.days,
        help="whole days, e.g. 90 or 90d or 12w (default and maximum from the profile)",
    )
    p.set_defaults(func=cmd_secret_generate)
    p = ssub.add_parser(
        "expiring", help="hand-made secrets expiring soon (generated ones rotate themselves)"
    )
    p.add_argument(
        "--within",
        "--days",
        dest="days",
        type=parsing.days,
        default=30,
        help="whole days, e.g. 30 or 30d or 4w (default 30)",
    )
    p.set_defaults(func=cmd_secret_expiring)
    p = ssub.add_parser("show", help="show a secret's metadata and versions")
    p.add_argument("path")
    p.add_argument("name")
    p.set_defaults(func=cmd_secret_show)
    p = ssub.add_parser("delete", help="delete a secret (SM deletion is recoverable for a while)")
    p.add_argument("path")
    p.add_argument("name")
    p.set_defaults(func=cmd_secret_delete)


def add_datakey_verbs(sub: Subparsers) -> None:
    datakey = sub.add_parser("datakey", help="KMS data keys (ciphertext only)")
    dsub = datakey.add_subparsers(dest="verb", required=True)
    p = dsub.add_parser("create", help="create a data key, or add the next period's key")
    p.add_argument("path")
    p.add_argument("name")
    p.add_argument("--cmk", required=True, help="KMS key id, ARN or alias")
    p.add_argument(
        "--period",
        type=parsing.days,
        default=182,
        help="whole days between keys, e.g. 182 or 26w (default 182)",
    )
    p.set_defaults(func=cmd_datakey_create)
