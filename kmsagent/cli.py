"""``kmsagent run``: the agent every host runs (see docs/agent.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import grp
import logging
import os
import signal
import socket
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog
from aiohttp import web

from kmsagent.api import local_app
from kmsagent.aws import FetchFailed, Reader
from kmsagent.compat_http import compat_app
from kmsagent.creds import (
    DEFAULT_CREDENTIALS_FILE,
    MODES,
    CredentialsConfig,
    CredentialsError,
    FileCredentials,
    credentials_session,
    frozen,
)
from kmsagent.environ import EnvError, parse_spec
from kmsagent.memory import trim_when_serving
from kmsagent.state import BadDocument, PathView
from kmsagent.sync import Agent, SyncConfig
from kmsagent.templates import Renderer, TemplateError, TemplateSpec, follow, load_config
from kmsagent.tokens import compat_token, read_token
from kmsagent.upstream import Kmsd, Refused, Unavailable
from kmsd.aws.login import sts_endpoint_from_env
from kmsd.cli.parsing import VersionAction
from kmsd.domain.names import NodePath
from kmsd.errors import InvalidInput
from kmsd.logs import configure

if TYPE_CHECKING:  # kmsagent.supervise is imported by exec only: half a MiB for every agent
    from kmsagent.supervise import ExecConfig

log = structlog.get_logger("kmsagent")

DEFAULT_SOCKET = "/run/kmsagent/agent.sock"
DEFAULT_TOKEN_FILE = "/run/kmsagent/token"
IMDS_DEFAULT = "http://169.254.169.254"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kmsagent", description="kmsd's agent for every host")
    p.add_argument("--version", action=VersionAction)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="sync the given paths and serve them locally")
    _agent_options(run, socket=DEFAULT_SOCKET)
    run_exec = sub.add_parser(
        "exec",
        help="run a command with secrets as environment variables, following changes",
        description="kmsagent exec --path P [--env NAME=SECRET[.FIELD]]... [--env-all] "
        "-- COMMAND ARGS...",
    )
    _agent_options(run_exec, socket="")
    render = sub.add_parser(
        "render", help="sync once, render the templates and exit (init containers, cron)"
    )
    _agent_options(render, socket="")
    render.add_argument("--once", action="store_true", required=True, help="(the only mode)")
    run_exec.add_argument(
        "--env", action="append", default=[], metavar="NAME=SECRET[.FIELD]", help="repeatable"
    )
    run_exec.add_argument(
        "--env-all", action="store_true", help="every secret (JSON objects: one per field)"
    )
    run_exec.add_argument(
        "--on-change", default="restart", help="restart (default), signal:NAME, or none"
    )
    run_exec.add_argument(
        "--restart-jitter", type=float, default=30.0, help="random delay before a restart, s"
    )
    run_exec.add_argument("--grace", type=float, default=10.0, help="SIGTERM to SIGKILL, s")
    run_exec.add_argument("command_argv", nargs=argparse.REMAINDER, metavar="-- COMMAND ARGS")
    return p


def _agent_options(run: argparse.ArgumentParser, *, socket: str) -> None:
    env = os.environ.get
    run.add_argument("--path", action="append", required=True, help="namespace/app[/node...]")
    run.add_argument("--kmsd-addr", default=env("KMSD_ADDR"), help="default: $KMSD_ADDR")
    run.add_argument("--server-id", default=env("KMSD_SERVER_ID"), help="$KMSD_SERVER_ID")
    run.add_argument("--credentials", choices=MODES, default=env("KMSAGENT_CREDENTIALS", "auto"))
    run.add_argument("--credentials-file", default=DEFAULT_CREDENTIALS_FILE)
    run.add_argument("--profile", default="default", help="section of the credentials file")
    run.add_argument("--web-identity-token-file", default=env("AWS_WEB_IDENTITY_TOKEN_FILE"))
    run.add_argument("--role-arn", default=env("AWS_ROLE_ARN"))
    run.add_argument("--role-session-name", default=env("AWS_ROLE_SESSION_NAME"))
    run.add_argument(
        "--region", default=env("AWS_REGION") or env("AWS_DEFAULT_REGION") or "us-east-1"
    )
    run.add_argument("--socket", default=socket, help="Unix socket ('' to disable)")
    run.add_argument("--socket-mode", default="0660", help="octal, default 0660")
    run.add_argument("--socket-group", default=None, help="group owning the socket")
    run.add_argument("--listen-port", type=int, default=0, help="also serve 127.0.0.1:PORT")
    run.add_argument(
        "--token-file", default=DEFAULT_TOKEN_FILE, help="for --listen-port, --sm-compat-port"
    )
    run.add_argument(
        "--sm-compat-port",
        type=int,
        default=env("KMSAGENT_SM_COMPAT_PORT", "0"),  # argparse applies type= to it
        help="serve AWS's Secrets Manager Agent API and SDK reads on 127.0.0.1:PORT (AWS: 2773)",
    )
    run.add_argument(
        "--no-sm-compat-sdk",
        dest="sm_compat_sdk",
        action="store_false",
        help="on the compat port, serve AWS's agent API only (it demands the token), no SDK reads",
    )
    run.add_argument("--instance-id", default=env("KMSAGENT_INSTANCE_ID"))
    run.add_argument("--poll-timeout", type=float, default=120.0, help="seconds per long poll")
    run.add_argument("--resync-interval", type=float, default=300.0, help="full re-sync, s")
    run.add_argument("--log-format", choices=("json", "console"), default="json")
    run.add_argument(
        "--template",
        action="append",
        default=[],
        metavar="SRC:DEST[:MODE[:COMMAND]]",
        help="render a Jinja2 template to a file on each change (repeatable)",
    )
    run.add_argument("--config", help="a TOML file with [[template]] blocks")


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    configure(args.log_format, logging.INFO)
    try:
        for path in args.path:
            if NodePath.parse(path).is_namespace:
                raise InvalidInput(f"{path!r} is a namespace; give namespace/application[/...]")
        if not args.kmsd_addr or not args.server_id:
            raise InvalidInput("set --kmsd-addr and --server-id (or KMSD_ADDR, KMSD_SERVER_ID)")
        # Before anything else: a token file that cannot be trusted stops the start-up.
        args.token = read_token(Path(args.token_file)) if args.listen_port else None
        args.compat_token = compat_token(args.token_file) if args.sm_compat_port else None
        args.exec_config = exec_config(args) if args.command == "exec" else None
        specs = [TemplateSpec.parse(t) for t in args.template]
        specs += load_config(Path(args.config)) if args.config else []
        if args.command == "render" and not specs:
            raise InvalidInput("kmsagent render: give --template or --config")
        args.renderer = Renderer(specs) if specs else None
        status = asyncio.run(run(args))
    except (
        InvalidInput,
        CredentialsError,
        OSError,
        EnvError,
        TemplateError,
    ) as exc:
        print(f"kmsagent: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(status)


def exec_config(args: argparse.Namespace) -> ExecConfig:
    from kmsagent.supervise import ExecConfig, Policy, PolicyError

    argv = list(args.command_argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise InvalidInput("kmsagent exec: give the command after --")
    if not args.env and not args.env_all:
        raise InvalidInput("kmsagent exec: give --env NAME=SECRET[.FIELD] or --env-all")
    try:
        policy = Policy.parse(args.on_change)
    except PolicyError as exc:
        raise InvalidInput(str(exc)) from None
    return ExecConfig(
        argv=argv,
        specs=[parse_spec(e) for e in args.env],
        everything=args.env_all,
        policy=policy,
        jitter_s=max(0.0, args.restart_jitter),
        grace_s=max(0.0, args.grace),
    )


async def _supervise(agent: Agent, config: ExecConfig) -> int:
    from kmsagent.supervise import Supervisor

    return await Supervisor(agent, config).run()


async def run(args: argparse.Namespace) -> int:
    """Sync and serve until SIGTERM (``run``) or until the command ends (``exec``); the exit
    status."""
    creds = CredentialsConfig(
        mode=args.credentials,
        file=args.credentials_file,
        profile=args.profile,
        token_file=args.web_identity_token_file,
        role_arn=args.role_arn,
        session_name=args.role_session_name,
    )
    session = credentials_session(creds)
    instance_id = args.instance_id or await instance_identity(args.credentials)
    stop = asyncio.Event()
    if args.exec_config is None:  # exec forwards these signals to its command instead
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
        Reader(session, args.region) as reader,
    ):
        kmsd = Kmsd(
            args.kmsd_addr,
            args.server_id,
            credentials=lambda: frozen(session),
            region=args.region,
            sts_endpoint=sts_endpoint_from_env(args.region, os.environ),
            http=http,
        )
        agent = Agent(
            args.path,
            SyncConfig(
                instance_id=instance_id,
                poll_timeout_s=args.poll_timeout,
                resync_s=args.resync_interval,
            ),
            kmsd,
            reader,
            credentials_info=lambda: _describe(creds, session),
        )
        if args.command == "render":
            try:
                await agent.sync_once()
            except (Unavailable, Refused, FetchFailed, BadDocument) as exc:
                print(f"kmsagent: {exc}", file=sys.stderr)
                return 1
            ok = await args.renderer.render_all(_views(agent))
            for what, problem in args.renderer.problems().items():
                print(f"kmsagent: {what}: {problem}", file=sys.stderr)
            return 0 if ok else 1
        runners = await _listen(agent, args)
        log.info("kmsagent_started", paths=args.path, instance_id=instance_id, mode=creds.mode)
        syncing = asyncio.create_task(agent.run(), name="sync")
        rendering = asyncio.create_task(follow(agent, args.renderer)) if args.renderer else syncing
        trimming = asyncio.create_task(trim_when_serving(agent))
        stopping: asyncio.Task[Any] = asyncio.create_task(
            stop.wait() if args.exec_config is None else _supervise(agent, args.exec_config)
        )
        status = 0
        try:
            await asyncio.wait({syncing, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if args.exec_config is not None and stopping.done():
                status = stopping.result()
        finally:
            syncing.cancel()
            rendering.cancel()
            trimming.cancel()
            stopping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await syncing
            for runner in runners:
                await runner.cleanup()
            if args.socket:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(args.socket)
        log.info("kmsagent_stopped")
    return status


def _views(agent: Agent) -> list[PathView]:
    return [s.view for s in agent.paths.values() if s.view is not None]


def _describe(creds: CredentialsConfig, session: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"mode": creds.mode}
    loaded = session._credentials  # what aiobotocore resolved, if anything yet
    if isinstance(loaded, FileCredentials):
        info |= {"file": creds.file, "reloads": loaded.reloads, "key_id": _masked(loaded)}
    elif loaded is not None:
        info["method"] = getattr(loaded, "method", None)
    return info


def _masked(creds: FileCredentials) -> str:
    key = str(creds.access_key)
    return "*" * max(0, len(key) - 4) + key[-4:]


async def _listen(agent: Agent, args: argparse.Namespace) -> list[web.AppRunner]:
    runners = []
    if args.socket:
        runner = web.AppRunner(local_app(agent), access_log=None, handle_signals=False)
        await runner.setup()
        await web.SockSite(runner, _unix_socket(args)).start()
        runners.append(runner)
    if args.listen_port:
        runner = web.AppRunner(local_app(agent, token=args.token), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.listen_port).start()
        runners.append(runner)
    if args.sm_compat_port:
        app = compat_app(agent, args.compat_token, sdk=args.sm_compat_sdk)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, _loopback_socket(args.sm_compat_port)).start()
        runners.append(runner)
    return runners


def _loopback_socket(port: int) -> socket.socket:
    """127.0.0.1:PORT; every answer leaves with an IP TTL of 1, so it cannot leave the host."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 1)  # accepted sockets inherit it
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _unix_socket(args: argparse.Namespace) -> socket.socket:
    """Bind the socket with its final mode from the first instant (umask, then chmod)."""
    path = Path(args.socket)
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()  # left by a previous run that was killed
    mode = int(args.socket_mode, 8)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, mode)
    if args.socket_group:
        os.chown(path, -1, grp.getgrnam(args.socket_group).gr_gid)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def instance_identity(mode: str) -> str:
    """The EC2 instance id (IMDSv2) on EC2, else the pod's name, else the host name."""
    if mode in ("auto", "imds") and os.environ.get("AWS_EC2_METADATA_DISABLED") != "true":
        base = os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", IMDS_DEFAULT).rstrip("/")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            timeout = aiohttp.ClientTimeout(total=1.0 if mode == "auto" else 5.0)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                async with http.put(
                    f"{base}/latest/api/token",
                    headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
                ) as resp:
                    resp.raise_for_status()
                    token = await resp.text()
                async with http.get(
                    f"{base}/latest/meta-data/instance-id",
                    headers={"X-aws-ec2-metadata-token": token},
                ) as resp:
                    resp.raise_for_status()
                    return (await resp.text()).strip()
    return os.environ.get("POD_NAME") or socket.gethostname()
