"""One real ``kmsd serve`` for the whole hostile-input suite, its log captured to a file.

The server runs on the real embedded PostgreSQL and moto's server (the session fixtures of
tests/conftest.py), with the settings a careful operator would use:

- ``KMSD_ALLOWED_CIDRS=127.0.0.1/32,127.0.0.2/32``: the suite's callers connect from those two;
  the fence cases connect from 127.0.0.3, a client outside the fence (every 127/8 address is
  this host, so no proxy or header is needed to be another client).
- ``KMSD_WEBHOOK_ALLOWED_CIDRS=127.0.0.77/32``: the one receiver a webhook may reach (the
  redirect case); every hostile URL points elsewhere.

Principals (IAM users in moto) and what they are bound to, set up once:

=========  ============================  =============================================
name       binding                       used by
=========  ============================  =============================================
admin      KMSD_ADMINS                   setup; tokens and console session cases
rotator    rotate on sec/pay             rotations with values (class 6)
victim     read on sec/pay               adoption slot owner (class 5)
attacker   read on sec/pay               adoption takeover (class 5)
outsider   edit on sec/other only        what it cannot see is 'not found' (class 10)
=========  ============================  =============================================

Every token issued here and every canary a case carries is a leak marker: test_leaks.py (run
last) looks for them in the log, the audit trail, /metrics and the console pages fetched.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import pytest

from tests.conftest import REGION, SERVER_ID, Identity, free_port
from tests.e2e.harness import BIN, Replica, wait_until
from tests.security.signing import signed_body
from tests.security.wire import Answer, Case, Req, Result, Tally, canary_for, exchange

APP = "sec/pay"  # the application most cases aim at
OTHER = "sec/other"  # the outsider's own application
CLIENT = "127.0.0.1"
SECOND_CLIENT = "127.0.0.2"  # inside the fence: "another address"
OUTSIDE = "127.0.0.3"  # outside KMSD_ALLOWED_CIDRS
WEBHOOK_RECEIVER = "127.0.0.77"
PRINCIPALS = {"rotator": "rotate", "victim": "read", "attacker": "read"}
TALLY_KEY = pytest.StashKey[Tally]()


def hole(case: Case, reason: str) -> Any:
    """``case`` as a known hole: expected to fail today, and to fail the suite once it passes."""
    return pytest.param(case, marks=pytest.mark.xfail(strict=True, reason=reason))


def cases_in(table: list[Any]) -> list[Any]:
    """The cases of a table, unwrapped from the ``pytest.param`` of the marked ones."""
    return [
        entry.values[0] if isinstance(entry, type(pytest.param())) else entry for entry in table
    ]


class LoggedKmsd(Replica):
    """``kmsd serve`` with stdout and stderr (its whole log) appended to one file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("ab") as sink:
            self.proc = subprocess.Popen(
                [str(BIN / "kmsd"), "serve"],
                env={**env, "KMSD_LISTEN": f"127.0.0.1:{self.port}"},
                cwd=log.parent,  # not the source tree: PYTHONPATH alone says which kmsd runs
                stdout=sink,
                stderr=sink,
            )
        wait_until(self.healthy, f"kmsd serve on {self.port} ({log})")


@dataclass
class Target:
    """The kmsd under attack, the suite's principals and what every case is checked against."""

    kmsd: LoggedKmsd
    dsn: str
    moto: str
    sm_prefix: str
    tally: Tally
    tokens: dict[str, str] = field(default_factory=dict)
    identities: dict[str, Identity] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)  # other placeholders (ids)
    canaries: dict[str, str] = field(default_factory=dict)  # canary -> case id
    pages: list[tuple[str, bytes]] = field(default_factory=list)  # console pages fetched
    under_test: str = ""

    # -- placeholders and sending ---------------------------------------------------------

    def fill(self, case_id: str) -> dict[str, str]:
        canary = canary_for(case_id)
        self.canaries[canary] = case_id
        return {**self.tokens, **self.values, "canary": canary}

    def send(self, req: Req | Callable[[Target], Req], case_id: str) -> Answer:
        if not isinstance(req, Req):
            req = req(self)  # built when the case runs: e.g. a freshly signed sign-in
        return exchange(self.kmsd.port, req.render(self.fill(case_id)), source=req.source)

    def sign_in(self, who: Identity) -> str:
        answer = exchange(
            self.kmsd.port,
            Req("POST", "/v1/auth/aws/login", body=signed_body(who, self.moto)).render({}),
        )
        assert answer.status == 200, answer
        return str(answer.json()["token"])

    def markers(self) -> dict[str, str]:
        """Every string that must never leak: tokens (by name) and canaries (by case)."""
        return {**{t: f"token {n}" for n, t in self.tokens.items()}, **self.canaries}

    def leaked_in(self, text: bytes | str) -> list[str]:
        data = text.encode("utf-8", "replace") if isinstance(text, str) else text
        return [where for m, where in self.markers().items() if m.encode() in data]

    def log_size(self) -> int:
        return self.kmsd.log.stat().st_size

    def log_since(self, offset: int) -> bytes:
        with self.kmsd.log.open("rb") as f:
            f.seek(offset)
            return f.read()

    # -- the check every request case gets ---------------------------------------------------

    def check(self, klass: str, case: Case, after: Callable[[], list[str]] | None = None) -> Answer:
        """Send ``case``; record it in the tally; assert its status, problem body and no leak.

        ``after`` names what the refused request left behind (it must be nothing).
        """
        offset = self.log_size()
        answer = self.send(case.request, case.id)
        in_log = self.leaked_in(self.log_since(offset))
        echoed = self.leaked_in(answer.body)
        left = after() if after else []
        problem = answer.content_type == "application/problem+json"
        right = answer.status == case.status and problem and not left
        self.tally.record(
            klass,
            Result(
                case.id,
                refused=right and not in_log and not echoed,
                accepted=0 < answer.status < 400,
                server_error=answer.status >= 500,
                detail=f"{answer.status} {answer.content_type} {answer.body[:160]!r}"
                + (f" leaked: log {in_log} answer {echoed}" if in_log or echoed else "")
                + (f" left behind: {left}" if left else ""),
            ),
        )
        assert answer.status == case.status, (answer.status, answer.body[:300])
        assert not left, f"the refused request left behind: {left}"
        assert problem, answer.headers
        assert answer.json()["status"] == case.status
        assert not in_log, f"in kmsd's log: {in_log}"
        assert not echoed, f"quoted back in the answer: {echoed}: {answer.body[:200]!r}"
        return answer

    def outcome(self, klass: str, case_id: str, *, held: bool, accepted: bool, detail: str) -> None:
        """Record a scenario case (not one request): ``held`` when the defence held."""
        self.tally.record(
            klass,
            Result(case_id, refused=held, accepted=accepted, server_error=False, detail=detail),
        )

    # -- setup through the ordinary API ------------------------------------------------------

    def call(self, method: str, path: str, body: Any = None, *, who: str = "api") -> Any:
        """An honest call with the token named ``who``; fails the test on any error."""
        req = urllib.request.Request(
            self.kmsd.addr + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {self.tokens[who]}",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: {exc.code} {exc.read()[:300]!r}") from None

    def page(self, path: str, who: str = "console") -> bytes:
        """A console page as the admin's browser fetches it (cookie); kept for the leak check."""
        answer = exchange(
            self.kmsd.port,
            Req("GET", path, headers=[("Cookie", f"kmsd_console={self.tokens[who]}")]).render({}),
        )
        assert answer.status == 200, (path, answer.status, answer.body[:200])
        self.pages.append((path, answer.body))
        return answer.body

    def db(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async def run() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.dsn)
            try:
                return list(await conn.fetch(query, *args))
            finally:
                await conn.close()

        return asyncio.run(run())


def console_session(target: Target, who: str = "api") -> str:
    """Open a console link of ``who`` as a browser would; return the session (``kmsdc.``...)."""
    link = target.call("POST", "/v1/console/links", who=who)["path"]
    answer = exchange(target.kmsd.port, Req("GET", link).render({}))
    assert answer.status == 303, answer
    cookie = answer.headers["set-cookie"].split(";")[0]
    name, _, value = cookie.partition("=")
    assert name == "kmsd_console", cookie
    return value


def kmsd_under_test(env: dict[str, str], cwd: Path) -> str:
    """Where the server's ``kmsd`` package comes from (PYTHONPATH may point at another tree)."""
    done = subprocess.run(
        [sys.executable, "-c", "import kmsd, os; print(os.path.dirname(kmsd.__file__))"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@pytest.fixture(scope="session")
def tally(request: pytest.FixtureRequest) -> Tally:
    found = Tally()
    request.config.stash[TALLY_KEY] = found
    return found


@pytest.fixture(scope="package")  # stopped once the suite's last case (the leak check) ran
def target(
    fresh_database: Any,
    moto_endpoint: str,
    admin: Identity,
    make_user: Any,
    tally: Tally,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Target]:
    run = uuid.uuid4().hex[:8]
    dsn = fresh_database(f"security_{run}")
    kms = boto3.client("kms", endpoint_url=moto_endpoint, region_name=REGION)
    mac_key = kms.create_key(KeyUsage="GENERATE_VERIFY_MAC", KeySpec="HMAC_256")["KeyMetadata"]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KMSD_")},
        "KMSD_DATABASE_URL": dsn,
        "KMSD_SERVER_ID": SERVER_ID,
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_DEFAULT_REGION": REGION,
        "KMSD_ADMINS": admin.arn,
        "KMSD_LOG_FORMAT": "json",
        "KMSD_SM_PREFIX": f"sec-{run}/",
        "KMSD_ALLOWED_CIDRS": f"{CLIENT}/32,{SECOND_CLIENT}/32",
        "KMSD_WEBHOOK_ALLOWED_CIDRS": f"{WEBHOOK_RECEIVER}/32",
        "KMSD_WEBHOOK_MAC_KEY": mac_key["Arn"],  # webhook keys derive from a KMS HMAC key
        "KMSD_ROTATION_TICK": "0.2",  # webhook deliveries go out within a fifth of a second
    }
    log = tmp_path_factory.mktemp("security") / "kmsd.log"
    kmsd = LoggedKmsd(env, log)
    target = Target(kmsd, dsn, moto_endpoint, env["KMSD_SM_PREFIX"], tally)
    target.under_test = kmsd_under_test(env, log.parent)
    tally.under_test = target.under_test
    target.identities["admin"] = admin
    try:
        target.tokens["api"] = target.sign_in(admin)
        target.call("PUT", f"/v1/nodes/{APP}?parents=true")
        target.call("PUT", f"/v1/nodes/{OTHER}?parents=true")
        for name, permission in {**PRINCIPALS, "outsider": "edit"}.items():
            who: Identity = make_user(f"sec-{name}-{run}")
            prefix = OTHER if name == "outsider" else APP
            body = {"principal": who.arn, "path": prefix, "permission": permission}
            target.call("POST", "/v1/bindings", body)
            target.identities[name] = who
            target.tokens[name] = target.sign_in(who)
        target.tokens["console"] = console_session(target)
        yield target
    finally:
        kmsd.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The leak check reads what every other case left behind: it runs after all of them
    (right after the suite's last case, so the suite's kmsd stops before other tests run)."""
    last = [i for i in items if i.nodeid.startswith("tests/security/test_leaks.py")]
    for item in last:
        items.remove(item)
    ours = [n for n, i in enumerate(items) if i.nodeid.startswith("tests/security/")]
    at = ours[-1] + 1 if ours else len(items)
    items[at:at] = last


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    tally = config.stash.get(TALLY_KEY, None)
    if tally is None or not tally.classes:
        return
    write = terminalreporter.write_line
    terminalreporter.section("hostile-input suite")
    write(f"kmsd under test: {tally.under_test}")
    write(f"{'class':<28} {'cases':>5} {'refused':>7} {'accepted':>8} {'5xx':>4}")
    for klass, cases, refused, accepted, errors in tally.rows():
        write(f"{klass:<28} {cases:>5} {refused:>7} {accepted:>8} {errors:>4}")
    for klass, results in tally.classes.items():
        for r in results:
            if not r.refused:
                write(f"  NOT REFUSED  {klass} / {r.case}: {r.detail}")
    if out := os.environ.get("KMSD_SECURITY_TALLY"):  # a CI artefact, when asked for
        Path(out).write_text(
            json.dumps({k: [vars(r) for r in v] for k, v in tally.classes.items()}, indent=1)
        )
