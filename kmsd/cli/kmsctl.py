"""``kmsctl``: the operator's client, signing in with the ambient AWS identity.

Reads ``KMSD_ADDR`` and ``KMSD_SERVER_ID``; AWS credentials, region and the STS endpoint come
from the usual AWS sources (environment, profile, instance role).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import sys
from typing import Any
from urllib.parse import urlencode

from kmsd.cli.admin_verbs import (
    add_access_verbs,
    add_audit_verbs,
    add_outbox_verbs,
    cmd_iam_policy,
    cmd_whoami,
)
from kmsd.cli.client import (
    Client,
    CliError,
    forget_cached_token,
    quote_path,
    read_input,
    save_cached_token,
)
from kmsd.cli.output import Subparsers, emit, print_table, read_verb
from kmsd.cli.rotate_verbs import add_rotate_verbs
from kmsd.cli.watch_verbs import add_watch_verbs
from kmsd.domain.profile import USES


def cmd_login(c: Client, args: argparse.Namespace) -> None:
    """Sign in and cache the token: later commands act as this principal until it expires."""
    doc = c.login()
    save_cached_token(c.addr, doc["token"], doc["expires_at"])
    doc.pop("token", None)  # never print a bearer token by default
    emit(args, doc, lambda d: print(f"signed in as {d['principal']} until {d['expires_at']}"))


def cmd_node_create(c: Client, args: argparse.Namespace) -> None:
    suffix = "?parents=true" if args.parents else ""
    doc = c.call("PUT", f"/v1/nodes/{quote_path(args.path)}{suffix}")
    print(f"created {', '.join(doc['created'])}" if doc["created"] else f"{args.path} exists")


def cmd_node_show(c: Client, args: argparse.Namespace) -> None:
    doc = c.call("GET", f"/v1/nodes/{quote_path(args.path)}")

    def text(d: dict[str, Any]) -> None:
        print(f"{d['path']} ({d['level']})")
        print(f"  children: {', '.join(d['children']) or '-'}")
        print(f"  secrets:  {', '.join(d['secrets']) or '-'}")

    emit(args, doc, text)


def cmd_node_list(c: Client, args: argparse.Namespace) -> None:
    doc = c.call("GET", "/v1/nodes")
    emit(args, doc, lambda d: print("\n".join(d["namespaces"]) or "(no namespaces)"))


def cmd_node_delete(c: Client, args: argparse.Namespace) -> None:
    suffix = "?recursive=true" if args.recursive else ""
    doc = c.call("DELETE", f"/v1/nodes/{quote_path(args.path)}{suffix}")
    print(f"deleted {doc['path']} ({doc['secrets_deleted']} secret(s) scheduled for deletion)")


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
    spec = doc["generated"]
    size = f" {spec['size']}" if spec["size"] else ""
    print(
        f"generated {doc['path']}/{doc['name']}: {spec['use']} {spec['algorithm']}{size}, "
        f"version {doc['version_id']}, expires {doc['expires_at']}"
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
    )


def cmd_share(c: Client, args: argparse.Namespace) -> None:
    secret = f"{args.path}/{args.name}"
    if args.remove:
        query = urlencode(
            {"secret": secret, "to": args.to, "remove_refs": str(args.remove_refs).lower()}
        )
        doc = c.call("DELETE", f"/v1/shares?{query}")
        print(f"unshared {secret} from {args.to} ({doc['removed_refs']} reference(s) removed)")
        return
    c.call("POST", "/v1/shares", {"secret": secret, "to": args.to})
    print(f"shared {secret} with {args.to}")


def cmd_ref_create(c: Client, args: argparse.Namespace) -> None:
    ref = f"{quote_path(args.path)}/{quote_path(args.local_name)}"
    doc = c.call("PUT", f"/v1/refs/{ref}", {"target": args.target})
    print(f"{doc['path']}/{doc['name']} -> {doc['target']}")


def cmd_ref_delete(c: Client, args: argparse.Namespace) -> None:
    c.call("DELETE", f"/v1/refs/{quote_path(args.path)}/{quote_path(args.local_name)}")
    print(f"removed reference {args.path}/{args.local_name}")


def cmd_datakey_create(c: Client, args: argparse.Namespace) -> None:
    body = {"cmk": args.cmk, "period_days": args.period}
    doc = c.call("POST", f"/v1/datakeys/{quote_path(args.path)}/{quote_path(args.name)}", body)
    verb = "created" if doc["created"] else "new period for"
    print(
        f"{verb} {doc['path']}/{doc['name']}: data key {doc['version_id']} under "
        f"{doc['cmk_arn']} (every {doc['period_days']} days)"
    )


def _pair(text: str) -> tuple[str, str]:
    key, sep, val = text.partition("=")
    if not sep:
        raise CliError(f"--tag takes KEY=VALUE, got {text!r}")
    return key, val


def cmd_secret_show(c: Client, args: argparse.Namespace) -> None:
    doc = c.call("GET", f"/v1/secrets/{quote_path(args.path)}/{quote_path(args.name)}")

    def text(d: dict[str, Any]) -> None:
        print(f"{d['path']}/{d['name']} ({d['kind']}) {d['sm_arn']}")
        print_table(
            [
                (v["version_id"], v["stage"], v["created_at"], v["created_by"])
                for v in d["versions"]
            ],
            ("VERSION", "STAGE", "CREATED", "BY"),
        )

    emit(args, doc, text)


def cmd_secret_delete(c: Client, args: argparse.Namespace) -> None:
    c.call("DELETE", f"/v1/secrets/{quote_path(args.path)}/{quote_path(args.name)}")
    print(f"deleted {args.path}/{args.name} (SM deletion scheduled)")


def cmd_effective(c: Client, args: argparse.Namespace) -> None:
    doc = c.call("GET", f"/v1/effective/{quote_path(args.path)}")

    def text(d: dict[str, Any]) -> None:
        print(f"{d['path']}  path_version={d['path_version']}  hash={d['hash'][:16]}")
        rows = []
        for s in d["secrets"]:
            current = next((v["version_id"] for v in s["versions"] if v["stage"] == "current"), "-")
            shadowed = ", ".join(s["overrides"]) if s["overrides"] else ""
            rows.append((s["name"], s["kind"], s["source"], current, shadowed))
        print_table(rows, ("NAME", "KIND", "SOURCE", "CURRENT VERSION", "OVERRIDES"))

    emit(args, doc, text)


def _add_node_verbs(sub: Subparsers) -> None:
    node = sub.add_parser("node", help="namespaces, applications and child nodes")
    nsub = node.add_subparsers(dest="verb", required=True)
    p = nsub.add_parser("create", help="create a node")
    p.add_argument("path")
    p.add_argument("-p", "--parents", action="store_true", help="create missing ancestors")
    p.set_defaults(func=cmd_node_create)
    p = read_verb(nsub.add_parser("show", help="show a node's children and secrets"))
    p.add_argument("path")
    p.set_defaults(func=cmd_node_show)
    read_verb(nsub.add_parser("list", help="list namespaces")).set_defaults(func=cmd_node_list)
    p = nsub.add_parser("delete", help="delete a node")
    p.add_argument("path")
    p.add_argument("--recursive", action="store_true", help="also delete its children and secrets")
    p.set_defaults(func=cmd_node_delete)


def _add_secret_verbs(sub: Subparsers) -> None:
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
    p.add_argument("--expires-at", help="ISO 8601 time with zone")
    read_verb(p).set_defaults(func=cmd_secret_put)
    p = ssub.add_parser("generate", help="generate a key by the security profile (to SM only)")
    p.add_argument("path")
    p.add_argument("name")
    p.add_argument("--use", required=True, choices=USES)
    p.add_argument("--algorithm", help="one the profile allows for the use (default: its first)")
    p.add_argument("--length", type=int, help="bits (RSA, HMAC) or characters (password)")
    p.add_argument("--lifetime", type=int, help="days (default and maximum from the profile)")
    p.set_defaults(func=cmd_secret_generate)
    p = read_verb(
        ssub.add_parser(
            "expiring", help="hand-made secrets expiring soon (generated ones rotate themselves)"
        )
    )
    p.add_argument("--days", type=int, default=30)
    p.set_defaults(func=cmd_secret_expiring)
    p = read_verb(ssub.add_parser("show", help="show a secret's metadata and versions"))
    p.add_argument("path")
    p.add_argument("name")
    p.set_defaults(func=cmd_secret_show)
    p = ssub.add_parser("delete", help="delete a secret (SM deletion is recoverable for a while)")
    p.add_argument("path")
    p.add_argument("name")
    p.set_defaults(func=cmd_secret_delete)


def cmd_logout(c: Client, args: argparse.Namespace) -> None:
    forget_cached_token(c.addr)
    print(f"forgot the cached token for {c.addr}")


def _add_datakey_verbs(sub: Subparsers) -> None:
    datakey = sub.add_parser("datakey", help="KMS data keys (ciphertext only)")
    dsub = datakey.add_subparsers(dest="verb", required=True)
    p = dsub.add_parser("create", help="create a data key, or add the next period's key")
    p.add_argument("path")
    p.add_argument("name")
    p.add_argument("--cmk", required=True, help="KMS key id, ARN or alias")
    p.add_argument("--period", type=int, default=182, help="days between keys (default 182)")
    p.set_defaults(func=cmd_datakey_create)


def _add_sharing_verbs(sub: Subparsers) -> None:
    p = sub.add_parser("share", help="let another application reference a secret")
    p.add_argument("path")
    p.add_argument("name")
    p.add_argument("--to", required=True, help="NAMESPACE/APP")
    p.add_argument("--remove", action="store_true", help="unshare instead")
    p.add_argument(
        "--remove-refs",
        action="store_true",
        help="with --remove: also delete that application's references",
    )
    p.set_defaults(func=cmd_share)
    ref = sub.add_parser("ref", help="references to secrets shared with this application")
    rsub = ref.add_subparsers(dest="verb", required=True)
    p = rsub.add_parser("create", help="put a shared secret into this tree under a local name")
    p.add_argument("path")
    p.add_argument("local_name")
    p.add_argument("--target", required=True, help="PATH/NAME of the shared secret")
    p.set_defaults(func=cmd_ref_create)
    p = rsub.add_parser("delete", help="remove a reference")
    p.add_argument("path")
    p.add_argument("local_name")
    p.set_defaults(func=cmd_ref_delete)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kmsctl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    read_verb(
        sub.add_parser("login", help="sign in with your AWS identity and cache the token")
    ).set_defaults(func=cmd_login)
    sub.add_parser("logout", help="forget the cached token").set_defaults(func=cmd_logout)
    _add_node_verbs(sub)
    _add_secret_verbs(sub)
    add_audit_verbs(sub)
    add_outbox_verbs(sub)
    _add_datakey_verbs(sub)
    _add_sharing_verbs(sub)
    add_access_verbs(sub)
    add_rotate_verbs(sub)
    p = sub.add_parser("iam-policy", help="least-privilege IAM policies (JSON)")
    p.add_argument("target", choices=("app", "server"))
    p.add_argument("path", nargs="?", help="for app: namespace/application[/child...]")
    p.add_argument("--source-cidr", action="append", help="hosts' networks (aws:SourceIp)")
    p.add_argument("--output", choices=("json",), default="json")
    p.set_defaults(func=cmd_iam_policy)
    read_verb(sub.add_parser("whoami", help="your principal and its bindings")).set_defaults(
        func=cmd_whoami
    )

    p = read_verb(sub.add_parser("effective", help="show a path's effective set"))
    p.add_argument("path")
    p.set_defaults(func=cmd_effective)

    add_watch_verbs(sub)
    return parser


# Exit statuses: 1 for every reported failure; as a shell reports death by a signal otherwise.
EXIT_FAILED = 1
EXIT_SIGPIPE = 128 + 13  # stdout went away (`kmsctl audit list | head -1`): quiet
EXIT_INTERRUPTED = 128 + 2  # Ctrl-C


def _say(message: str) -> None:
    """One line on stderr, even if stderr itself is gone."""
    with contextlib.suppress(OSError):
        print(f"kmsctl: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run one verb; every failure is one ``kmsctl: ...`` line on stderr, never a traceback."""
    try:
        args = build_parser().parse_args(argv)
        args.func(Client.from_env(), args)
        # Flush here, not at interpreter exit, so that a closed pipe is caught below.
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`| head -1`): as the Python docs advise, point stdout at
        # /dev/null so the flush at exit cannot fail again, and say nothing.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_SIGPIPE
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED
    except CliError as exc:
        _say(str(exc))
        return EXIT_FAILED
    except OSError as exc:  # a file or terminal error no verb turned into a sentence
        where = f" ({exc.filename})" if exc.filename else ""
        _say(f"{exc.strerror or exc}{where}")
        return EXIT_FAILED
    except Exception as exc:
        # A bug, or an answer of a shape this kmsctl does not know (an older or newer kmsd).
        _say(
            f"unexpected {type(exc).__name__}: {exc} (kmsctl {_version()}, kmsd at "
            f"{os.environ.get('KMSD_ADDR', '?')}); please report it"
        )
        return EXIT_FAILED
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kmsd")
    except PackageNotFoundError:
        return "dev"


if __name__ == "__main__":
    sys.exit(main())
