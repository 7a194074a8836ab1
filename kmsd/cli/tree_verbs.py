"""kmsctl node ..., share, ref ..., effective: the tree and what applies where."""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import urlencode

from kmsd.cli.client import Client, quote_path
from kmsd.cli.output import NONE, Subparsers, emit, print_table


def cmd_node_create(c: Client, args: argparse.Namespace) -> None:
    suffix = "?parents=true" if args.parents else ""
    doc = c.call("PUT", f"/v1/nodes/{quote_path(args.path)}{suffix}")
    emit(
        args,
        doc,
        lambda d: print(
            f"created {', '.join(d['created'])}" if d["created"] else f"{args.path} exists"
        ),
    )


def render_node(d: dict[str, Any]) -> None:
    print(f"{d['path']} ({d['level']})")
    print(f"  children: {', '.join(d['children']) or '-'}")
    print(f"  secrets:  {', '.join(d['secrets']) or '-'}")


def cmd_node_show(c: Client, args: argparse.Namespace) -> None:
    emit(args, c.call("GET", f"/v1/nodes/{quote_path(args.path)}"), render_node)


def cmd_node_list(c: Client, args: argparse.Namespace) -> None:
    doc = c.call("GET", "/v1/nodes")
    emit(args, doc, lambda d: print("\n".join(d["namespaces"]) or NONE), items="namespaces")


def cmd_node_delete(c: Client, args: argparse.Namespace) -> None:
    suffix = "?recursive=true" if args.recursive else ""
    doc = c.call("DELETE", f"/v1/nodes/{quote_path(args.path)}{suffix}")
    emit(
        args,
        doc,
        lambda d: print(
            f"deleted {d['path']} ({d['secrets_deleted']} secret(s) scheduled for deletion)"
        ),
    )


def cmd_share(c: Client, args: argparse.Namespace) -> None:
    secret = f"{args.path}/{args.name}"
    if args.remove:
        query = urlencode(
            {"secret": secret, "to": args.to, "remove_refs": str(args.remove_refs).lower()}
        )
        doc = c.call("DELETE", f"/v1/shares?{query}")
        emit(
            args,
            doc,
            lambda d: print(
                f"unshared {secret} from {args.to} ({d['removed_refs']} reference(s) removed)"
            ),
        )
        return
    doc = c.call("POST", "/v1/shares", {"secret": secret, "to": args.to})
    emit(args, doc, lambda _: print(f"shared {secret} with {args.to}"))


def cmd_ref_create(c: Client, args: argparse.Namespace) -> None:
    ref = f"{quote_path(args.path)}/{quote_path(args.local_name)}"
    doc = c.call("PUT", f"/v1/refs/{ref}", {"target": args.target})
    emit(args, doc, lambda d: print(f"{d['path']}/{d['name']} -> {d['target']}"))


def cmd_ref_delete(c: Client, args: argparse.Namespace) -> None:
    doc = c.call("DELETE", f"/v1/refs/{quote_path(args.path)}/{quote_path(args.local_name)}")
    emit(args, doc, lambda _: print(f"removed reference {args.path}/{args.local_name}"))


def render_effective(d: dict[str, Any]) -> None:
    print(f"{d['path']}  path_version={d['path_version']}  hash={d['hash'][:16]}")
    rows = []
    for s in d["secrets"]:
        current = next((v["version_id"] for v in s["versions"] if v["stage"] == "current"), "-")
        shadowed = ", ".join(s["overrides"]) if s.get("overrides") else ""
        rows.append((s["name"], s["kind"], s["source"], current, shadowed))
    print_table(rows, ("NAME", "KIND", "SOURCE", "CURRENT VERSION", "OVERRIDES"))


def cmd_effective(c: Client, args: argparse.Namespace) -> None:
    doc = c.call("GET", f"/v1/effective/{quote_path(args.path)}")
    emit(args, doc, render_effective, items="secrets")


def add_node_verbs(sub: Subparsers) -> None:
    node = sub.add_parser("node", help="namespaces, applications and child nodes")
    nsub = node.add_subparsers(dest="verb", required=True)
    p = nsub.add_parser("create", help="create a node")
    p.add_argument("path")
    p.add_argument("-p", "--parents", action="store_true", help="create missing ancestors")
    p.set_defaults(func=cmd_node_create)
    p = nsub.add_parser("show", help="show a node's children and secrets")
    p.add_argument("path")
    p.set_defaults(func=cmd_node_show)
    nsub.add_parser("list", help="list namespaces").set_defaults(func=cmd_node_list)
    p = nsub.add_parser("delete", help="delete a node")
    p.add_argument("path")
    p.add_argument("--recursive", action="store_true", help="also delete its children and secrets")
    p.set_defaults(func=cmd_node_delete)


def add_sharing_verbs(sub: Subparsers) -> None:
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


def add_effective_verb(sub: Subparsers) -> None:
    p = sub.add_parser("effective", help="show a path's effective set")
    p.add_argument("path")
    p.set_defaults(func=cmd_effective)
