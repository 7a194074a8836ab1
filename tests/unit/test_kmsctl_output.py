"""What kmsctl prints: text, json, jsonl; streams as JSON lines; no None; "none" when empty."""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kmsd.cli import kmsctl, rotate_verbs
from kmsd.cli.admin_verbs import cmd_whoami
from kmsd.cli.client import save_cached_token
from kmsd.cli.output import emit, print_table
from kmsd.cli.rotate_verbs import _print_list, render_status
from kmsd.cli.secret_verbs import render_secret, spec_text
from kmsd.cli.tree_verbs import render_effective

LISTING = {"rotations": [{"id": 1, "phase": "done"}, {"id": 2, "phase": "pending"}]}


def _args(output: str) -> argparse.Namespace:
    return argparse.Namespace(output=output)


@pytest.mark.parametrize(
    ("output", "items", "expected"),
    [
        ("text", "rotations", ["TEXT"]),
        ("json", "rotations", json.dumps(LISTING, indent=2, sort_keys=True).splitlines()),
        ("jsonl", "rotations", ['{"id":1,"phase":"done"}', '{"id":2,"phase":"pending"}']),
        # Not a listing: jsonl is the whole answer on one line.
        ("jsonl", None, [json.dumps(LISTING, separators=(",", ":"), sort_keys=True)]),
    ],
)
def test_emit(
    output: str, items: str | None, expected: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    emit(_args(output), LISTING, lambda _: print("TEXT"), items=items)
    assert capsys.readouterr().out.splitlines() == expected


def test_an_empty_listing_in_jsonl_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    emit(_args("jsonl"), {"rotations": []}, lambda _: print("TEXT"), items="rotations")
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("render", "doc"),
    [
        (lambda d: print_table([], ("A", "B")), {}),
        (_print_list, {"rotations": []}),
        (render_effective,
         {"path": "prod/pay", "path_version": 3, "hash": "ab" * 32, "secrets": []}),
    ],
)  # fmt: skip
def test_empty_listings_say_none(
    render: Callable[[dict[str, Any]], None],
    doc: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    render(doc)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "none"
    assert not any(line.split()[:2] == ["A", "B"] or "NAME" in line for line in lines)


def test_a_missing_cell_is_a_dash_and_a_blank_one_stays_blank(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print_table([("x", None, "")], ("A", "B", "C"))
    assert capsys.readouterr().out.splitlines()[1].split() == ["x", "-"]


GENERATED = {
    "path": "prod/pay",
    "name": "signing",
    "kind": "json",
    "sm_arn": "arn:aws:secretsmanager:us-east-1:1:secret:kmsd/prod/pay/signing-abc",
    "description": "webhook signatures",
    "tags": {"team": "pay", "env": "prod"},
    "created_by": "arn:aws:iam::1:user/op",
    "created_at": "2025-01-02T03:04:05+00:00",
    "updated_at": "2025-01-02T03:04:05+00:00",
    "expires_at": "2026-01-02T03:04:05+00:00",
    "generated": {"use": "signing", "algorithm": "RSA-PSS", "size": 3072, "lifetime_days": 365},
    "public_key_pem": "-----BEGIN PUBLIC KEY-----\nMIIBojANBg\n-----END PUBLIC KEY-----\n",
    "cmk_arn": None,
    "period_days": None,
    "versions": [
        {"version_id": "v-1", "stage": "current", "created_at": "2025-01-02", "created_by": "op"}
    ],
}
# A hand-made secret as an older or terser kmsd may answer: nulls and absent fields.
BARE = {
    "path": "prod/pay",
    "name": "db",
    "kind": "json",
    "sm_arn": None,
    "description": "",
    "tags": {},
    "expires_at": None,
    "generated": None,
    "public_key_pem": None,
    "versions": [{"version_id": "v-1", "stage": None, "created_at": None, "created_by": None}],
}


def _fields(out: str) -> dict[str, str]:
    """The ``  label: value`` lines of a secret's text (not the indented public key)."""
    fields = {}
    for line in out.splitlines()[1:]:
        label, sep, value = line.partition(":")
        if sep and line.startswith("  ") and not line.startswith("    "):
            fields[label.strip()] = value.strip()
    return fields


def test_secret_show_prints_every_field(capsys: pytest.CaptureFixture[str]) -> None:
    render_secret(GENERATED)
    out = capsys.readouterr().out
    fields = _fields(out)
    assert out.splitlines()[0] == "prod/pay/signing"
    assert fields["kind"] == "json"
    assert fields["expires"] == "2026-01-02T03:04:05+00:00"
    assert fields["description"] == "webhook signatures"
    assert fields["tags"] == "env=prod, team=pay"
    assert fields["generated"] == "signing RSA-PSS 3072 bits, 365-day lifetime"
    assert "    -----BEGIN PUBLIC KEY-----" in out.splitlines()
    assert "    MIIBojANBg" in out.splitlines()
    assert "data key" not in fields  # not a data key: no line about one
    assert "v-1" in out


def test_secret_show_never_prints_none(capsys: pytest.CaptureFixture[str]) -> None:
    render_secret(BARE)
    out = capsys.readouterr().out
    assert "None" not in out
    fields = _fields(out)
    for label in ("arn", "description", "tags", "expires", "generated", "public key"):
        assert fields[label] == "-", label


def test_secret_show_of_a_data_key(capsys: pytest.CaptureFixture[str]) -> None:
    render_secret({**BARE, "cmk_arn": "arn:aws:kms:us-east-1:1:key/k", "period_days": 182})
    assert _fields(capsys.readouterr().out)["data key"] == (
        "under arn:aws:kms:us-east-1:1:key/k, a new key every 182 days"
    )


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        (None, "-"),
        ({"use": "password", "algorithm": "password", "size": 32, "lifetime_days": 90},
         "password password 32 characters, 90-day lifetime"),
        ({"use": "signing", "algorithm": "Ed25519", "size": None, "lifetime_days": 365},
         "signing Ed25519, 365-day lifetime"),
    ],
)  # fmt: skip
def test_spec_text(spec: dict[str, Any] | None, text: str) -> None:
    assert spec_text(spec) == text


def test_a_first_rotation_without_an_old_version_prints_no_none(
    capsys: pytest.CaptureFixture[str],
) -> None:
    render_status(
        {
            "id": 1,
            "path": "prod/pay",
            "name": "db",
            "phase": "pending",
            "mode": "manual",
            "new_version": "v-2",
            "old_version": None,
            "gate": None,
            "events": [{"at": "2025-01-02T03:04:05", "action": "start", "forced": False}],
        }
    )
    out = capsys.readouterr().out
    assert "None" not in out
    assert "old -" in out


# -- streams and listings against a small HTTP server ----------------------------------------


class _Script:
    """Answers by method and path, each a list consumed in order (the last one repeats)."""

    def __init__(self, answers: dict[tuple[str, str], list[Any]]) -> None:
        self.answers = answers

    def next(self, method: str, path: str) -> Any:
        queue = self.answers[(method, path.split("?", 1)[0])]
        return queue.pop(0) if len(queue) > 1 else queue[0]


@pytest.fixture
def kmsd_stub(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Callable[[dict[tuple[str, str], list[Any]]], None]]:
    """A loopback HTTP server answering kmsctl's calls from a script; a cached token for it."""
    script = _Script({})

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            body = json.dumps(script.next(self.command, self.path)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer  # http.server's naming

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    addr = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("KMSD_ADDR", addr)
    monkeypatch.setenv("KMSD_SERVER_ID", "test")
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    save_cached_token(addr, "a-token", later)

    def use(answers: dict[tuple[str, str], list[Any]]) -> None:
        script.answers = answers

    yield use
    server.shutdown()
    server.server_close()


def _rotation(phase: str) -> dict[str, Any]:
    return {
        "id": 7,
        "path": "prod/pay",
        "name": "db",
        "phase": phase,
        "mode": "auto",
        "new_version": "v-2",
        "old_version": "v-1",
        "gate": None,
        "events": [],
    }


@pytest.mark.parametrize("output", ["json", "jsonl"])
@pytest.mark.parametrize("before", [True, False])
def test_rotate_status_follow_streams_one_json_object_per_line(
    output: str,
    before: bool,
    kmsd_stub: Callable[[dict[tuple[str, str], list[Any]]], None],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(rotate_verbs, "FOLLOW_INTERVAL_S", 0.001)
    phases = ["pending", "pending", "promoted", "done"]
    kmsd_stub({("GET", "/v1/rotations/7"): [_rotation(p) for p in phases]})
    flag = ["-o", output]
    argv = [*flag, "rotate", "status", "7", "--follow"] if before else [
        "rotate", "status", "7", "--follow", *flag
    ]  # fmt: skip
    assert kmsctl.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["phase"] for line in lines] == ["pending", "promoted", "done"]


@pytest.mark.parametrize("output", ["json", "jsonl"])
def test_watch_streams_one_json_object_per_line(
    output: str,
    kmsd_stub: Callable[[dict[tuple[str, str], list[Any]]], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    changed = {"path": "prod/pay", "path_version": 4, "hash": "cd" * 32, "secrets": []}
    kmsd_stub(
        {
            ("GET", "/v1/effective/prod/pay"): [{**changed, "path_version": 3}],
            ("POST", "/v1/watch"): [changed],
        }
    )
    assert kmsctl.main(["watch", "prod/pay", "--once", "--timeout", "1m", "-o", output]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == changed


def test_jsonl_lists_one_item_per_line(
    kmsd_stub: Callable[[dict[tuple[str, str], list[Any]]], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    kmsd_stub({("GET", "/v1/rotations"): [LISTING]})
    assert kmsctl.main(["rotate", "list", "-o", "jsonl"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == LISTING["rotations"]


def test_whoami_with_no_bindings_says_none(
    kmsd_stub: Callable[[dict[tuple[str, str], list[Any]]], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    doc = {"principal": "arn:aws:iam::1:user/op", "admin": True, "source_ip": "::1", "bindings": []}
    kmsd_stub({("GET", "/v1/auth/whoami"): [doc]})
    assert kmsctl.main(["whoami"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "arn:aws:iam::1:user/op (bootstrap admin) from ::1",
        "none",
    ]
    assert cmd_whoami  # the verb under test
