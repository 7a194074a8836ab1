"""kmsctl verbs for people who run kmsd: whoami, access, app bind, iam-policy, audit, outbox."""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import urlencode

from kmsd.cli import parsing
from kmsd.cli.client import Client, CliError, quote_path
from kmsd.cli.output import Subparsers, emit, output_of, print_table
from kmsd.cli.rotate_verbs import add_webhook_verb


def cmd_whoami(c: Client, args: argparse.Namespace) -> None:
    doc = c.call("GET", "/v1/auth/whoami")

    def text(d: dict[str, Any]) -> None:
        print(f"{d['principal']}{' (bootstrap admin)' if d['admin'] else ''} from {d['source_ip']}")
        print_table(
            [
                (str(b["id"]), b["path"], b["permission"], b["principal"], ",".join(b["cidrs"]))
                for b in d["bindings"]
            ],
            ("ID", "PATH", "PERMISSION", "PATTERN", "CIDRS"),
        )

    emit(args, doc, text)


def _grant(c: Client, args: argparse.Namespace, principal: str, path: str, permission: str) -> None:
    cidrs = args.cidr or []
    body = {"principal": principal, "path": path, "permission": permission, "cidrs": cidrs}
    emit(
        args,
        c.call("POST", "/v1/bindings", body),
        lambda d: print(
            f"binding {d['id']}: {d['principal']} may {d['permission']} {d['path']}"
            + (f" from {', '.join(d['cidrs'])}" if d["cidrs"] else "")
        ),
    )


def cmd_access_grant(c: Client, args: argparse.Namespace) -> None:
    _grant(c, args, args.principal, args.path, args.permission)


def cmd_app_bind(c: Client, args: argparse.Namespace) -> None:
    _grant(c, args, args.role, args.app, "read")


def cmd_access_revoke(c: Client, args: argparse.Namespace) -> None:
    doc = c.call("DELETE", f"/v1/bindings/{args.id}") or {"id": args.id, "revoked": True}
    emit(args, doc, lambda _: print(f"binding {args.id} revoked"))


def cmd_access_list(c: Client, args: argparse.Namespace) -> None:
    doc = c.call("GET", "/v1/bindings?" + urlencode({"path": args.path}))
    emit(
        args,
        doc,
        lambda d: print_table(
            [
                (str(b["id"]), b["path"], b["permission"], b["principal"], ",".join(b["cidrs"]))
                for b in d["bindings"]
            ],
            ("ID", "PATH", "PERMISSION", "PATTERN", "CIDRS"),
        ),
        items="bindings",
    )


def cmd_iam_policy(c: Client, args: argparse.Namespace) -> None:
    if args.target == "server":
        doc = c.call("GET", "/v1/iam-policy/server")
    else:
        if not args.path:
            raise CliError(f"iam-policy {args.target} needs PATH (namespace/application[/...])")
        if args.target == "drift":
            doc = c.call("GET", f"/v1/iam-policy/drift/{quote_path(args.path)}")
            if output_of(args) == "text":
                print(drift_text(doc))
                return
        else:
            query = [("shape", args.shape)] + [("source_cidr", n) for n in args.source_cidr or []]
            doc = c.call("GET", f"/v1/iam-policy/app/{quote_path(args.path)}?{urlencode(query)}")
    # A policy is JSON whatever the output: text and json print it indented, jsonl on one line.
    print(json.dumps(doc, indent=2) if output_of(args) != "jsonl" else json.dumps(doc))


def drift_text(doc: dict[str, Any]) -> str:
    """Whether the hosts' policy last fetched still covers the application, for people."""
    fetched = f"{doc['path']}: the policy fetched {doc.get('fetched_at')} ({doc.get('shape')})"
    if doc.get("fetched_at") is None:
        head = f"{doc['path']}: no policy fetched through kmsd yet; apply: kmsctl iam-policy app"
    elif doc["needs_reapply"]:
        head = f"{fetched} must be applied again"
    else:
        head = f"{fetched} still covers it"
    lines = [head]
    lines += [f"  not covered: {arn}" for arn in doc.get("uncovered") or []]
    lines += [f"  added since: {name}" for name in doc.get("added_since") or []]
    return "\n".join(lines)


def add_iam_policy_verb(sub: Subparsers) -> None:
    p = sub.add_parser("iam-policy", help="least-privilege IAM policies (JSON), and their drift")
    p.add_argument("target", choices=("app", "server", "drift"))
    p.add_argument("path", nargs="?", help="for app and drift: namespace/application[/child...]")
    p.add_argument("--source-cidr", action="append", help="hosts' networks (aws:SourceIp)")
    p.add_argument(
        "--shape",
        choices=("prefix", "exact"),
        default="prefix",
        help="prefix: covers the application's future secrets (default); exact: listed ARNs",
    )
    p.set_defaults(func=cmd_iam_policy)


def add_whoami_verb(sub: Subparsers) -> None:
    sub.add_parser("whoami", help="your principal and its bindings").set_defaults(func=cmd_whoami)


def add_access_verbs(sub: Subparsers) -> None:
    access = sub.add_parser("access", help="bindings: who may do what under which path")
    asub = access.add_subparsers(dest="verb", required=True)
    p = asub.add_parser("grant", help="bind a principal pattern to a path prefix")
    p.add_argument("principal", help="arn:aws:iam::ACCOUNT:role/NAME ('*' only in NAME)")
    p.add_argument("path", help="path prefix, or '*' for everything")
    p.add_argument("permission", choices=("read", "view", "edit", "rotate", "admin"))
    p.add_argument("--cidr", action="append", help="calls must come from here (repeatable)")
    p.set_defaults(func=cmd_access_grant)
    p = asub.add_parser("revoke", help="remove a binding by id")
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_access_revoke)
    p = asub.add_parser("list", help="bindings at or under a path")
    p.add_argument("path", nargs="?", default="*")
    p.set_defaults(func=cmd_access_list)
    app = sub.add_parser("app", help="applications")
    appsub = app.add_subparsers(dest="verb", required=True)
    p = appsub.add_parser("bind", help="let an application's hosts read it (a read binding)")
    p.add_argument("app", help="NAMESPACE/APP")
    p.add_argument("--role", required=True, help="the hosts' IAM role ARN (pattern)")
    p.add_argument("--cidr", action="append", help="the hosts' networks (repeatable)")
    p.set_defaults(func=cmd_app_bind)
    add_webhook_verb(appsub)


def cmd_audit_list(c: Client, args: argparse.Namespace) -> None:
    params = {
        k: v
        for k, v in (
            ("principal", args.principal),
            ("path", args.path),
            ("action", args.action),
            ("since", args.since),
            ("until", args.until),
            ("outcome", args.outcome),
            ("limit", str(args.limit)),
        )
        if v
    }
    doc = c.call("GET", "/v1/audit?" + urlencode(params))

    def text(d: dict[str, Any]) -> None:
        print_table(
            [
                (
                    str(r["seq"]),
                    r["at"],
                    r["principal"] if r["principal"] != "-" else f"({r['claimed'] or 'anonymous'})",
                    r["source_ip"],
                    r["action"],
                    r["target"],
                    r["outcome"],
                    str(r["status"]),
                )
                for r in d["rows"]
            ],
            ("SEQ", "AT", "PRINCIPAL", "IP", "ACTION", "TARGET", "OUTCOME", "STATUS"),
        )

    emit(args, doc, text, items="rows")


def cmd_audit_verify(c: Client, args: argparse.Namespace) -> None:
    doc = c.call("POST", "/v1/audit/verify")

    def text(d: dict[str, Any]) -> None:
        if d["ok"]:
            print(f"audit chain intact: {d['checked']} row(s) verified")
        else:
            print(
                f"audit chain BROKEN at seq {d['first_broken_seq']} "
                f"({d['checked']} row(s) before it verified)"
            )

    emit(args, doc, text)
    if not doc["ok"]:
        raise CliError(f"audit row {doc['first_broken_seq']} does not match the chain")


def add_audit_verbs(sub: Subparsers) -> None:
    audit = sub.add_parser("audit", help="the audit trail")
    asub = audit.add_subparsers(dest="verb", required=True)
    p = asub.add_parser("list", help="recent audit rows, newest first")
    p.add_argument("--principal", help="exact principal ARN")
    p.add_argument("--path", help="target path (and everything below it)")
    p.add_argument("--action", help="e.g. secret.put, auth.login, watch")
    p.add_argument("--outcome", choices=("allowed", "denied", "rejected", "error", "attempt"))
    for bound in ("--since", "--until"):
        p.add_argument(
            bound,
            type=parsing.time_ago,
            help="ISO 8601 time with zone, or a duration ago (90d, 12h, 15m)",
        )
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=cmd_audit_list)
    p = asub.add_parser("verify", help="walk the hash chain, name the first bad row")
    p.set_defaults(func=cmd_audit_verify)


def cmd_outbox_list(c: Client, args: argparse.Namespace) -> None:
    query = "?quarantined=true" if args.quarantined else ""
    doc = c.call("GET", f"/v1/outbox{query}")

    def text(d: dict[str, Any]) -> None:
        if not d["writes"]:
            print("no write in doubt" if not args.quarantined else "no quarantined write")
            return
        print_table(
            [
                (
                    str(w["id"]),
                    w["op"],
                    f"{w['path']}/{w['name']}" if w["path"] else w["sm_name"],
                    w["version_id"] or "-",
                    w["created_at"],
                    str(w["attempts"]),
                    w["last_error"] or "-",
                    "quarantined" if w["quarantined"] else "in doubt",
                )
                for w in d["writes"]
            ],
            ("ID", "OP", "SECRET", "VERSION", "SINCE", "ATTEMPTS", "LAST ERROR", "STATE"),
        )
        if any(w["quarantined"] for w in d["writes"]):
            print(
                f"\nquarantined: failed {d['quarantine_after']} reconcile passes; check the secret "
                "in SM, then: kmsctl outbox retry ID, or kmsctl outbox discard ID"
            )

    emit(args, doc, text, items="writes")


def cmd_outbox_retry(c: Client, args: argparse.Namespace) -> None:
    doc = c.call("POST", f"/v1/outbox/{args.id}/retry")
    emit(args, doc, lambda d: print(f"write {d['id']} is back with the reconciler"))


def cmd_outbox_discard(c: Client, args: argparse.Namespace) -> None:
    doc = c.call("DELETE", f"/v1/outbox/{args.id}")
    emit(
        args,
        doc,
        lambda d: print(f"write {d['id']} discarded: its version never becomes current"),
    )


def add_outbox_verbs(sub: Subparsers) -> None:
    outbox = sub.add_parser("outbox", help="writes in doubt and the ones the reconciler gave up")
    osub = outbox.add_subparsers(dest="verb", required=True)
    p = osub.add_parser("list", help="writes in doubt, oldest first")
    p.add_argument("--quarantined", action="store_true", help="only quarantined writes")
    p.set_defaults(func=cmd_outbox_list)
    for verb, func, text in (
        ("retry", cmd_outbox_retry, "give a quarantined write back to the reconciler"),
        ("discard", cmd_outbox_discard, "drop a quarantined write (it never becomes current)"),
    ):
        p = osub.add_parser(verb, help=text)
        p.add_argument("id", type=_outbox_id, help="the write's ID (kmsctl outbox list)")
        p.set_defaults(func=func)


def _outbox_id(text: str) -> str:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"not a write id: {text!r}")
    return text
