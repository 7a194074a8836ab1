"""``kmsd serve | migrate | dev``.

Start-up failures an operator can act on (configuration, a database that stays unreachable or
refuses kmsd, a port in use) end the process with one ``kmsd: ...`` line on stderr and a
non-zero status, never a traceback. Anything unexpected is also one line, with the traceback
kept in the structured log (one JSON line) for whoever debugs it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import sys
from collections.abc import Awaitable, Callable

import asyncpg
import structlog
from aiohttp import web

from kmsd.app import create_app
from kmsd.cli import parsing
from kmsd.config import DEFAULT_PORT, Settings
from kmsd.db import grants
from kmsd.db.connect import DatabaseStartError, describe, redact_dsn, wait_for_database
from kmsd.db.migrate import migrate
from kmsd.domain.profile import load_profile
from kmsd.errors import ConfigError
from kmsd.http.server import GuardedSite, guard_for, limits_fields
from kmsd.logs import LoopExceptions, configure

log = structlog.get_logger("kmsd")

LISTEN_BACKLOG = 4096
# How long serve and migrate wait for PostgreSQL to accept a connection: long enough for a
# database started beside kmsd (compose, a pod, a reboot), short enough that a wrong address
# is reported within a minute.
DEFAULT_WAIT_DB_S = 60.0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 128 + 2


class StartupFailed(Exception):
    """kmsd could not start; the message is the one line the operator reads."""


async def serve_until_signalled(
    settings: Settings, on_ready: Callable[[], Awaitable[None] | None] | None = None
) -> None:
    """Run the app until SIGINT or SIGTERM, then shut down cleanly."""
    loop = asyncio.get_running_loop()
    # asyncio's own reports ("Task exception was never retrieved", ...) would print the repr
    # of a task or callback, request bytes among them: a fixed event and the class instead.
    loop.set_exception_handler(LoopExceptions())
    # handler_cancellation: a client that hangs up mid-poll cancels its handler, which removes
    # its waiter at once instead of leaving it held until its deadline.
    runner = web.AppRunner(
        create_app(settings), access_log=None, handle_signals=False, handler_cancellation=True
    )
    try:
        await runner.setup()
    except ConfigError:
        # E.g. migrations pending for a role that may not apply them: the message says it all.
        await _cleanup_quietly(runner)
        raise
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # The database went away again, or refused a migration: what we know, in one line.
        await _cleanup_quietly(runner)
        raise StartupFailed(
            f"start-up failed: {describe(exc, settings.database_url)} "
            f"({redact_dsn(settings.database_url)})"
        ) from None
    # Everything built so far (modules, botocore's service models, the app) lives as long as
    # the process: take it out of the collector's sight, so that full collections with
    # 10,000 held polls scan only what the polls allocate (bench/README.md: 0.4 s pauses).
    gc.collect()
    gc.freeze()
    # kmsd's own accept loop (kmsd.http.server): a cap on connections below the descriptor
    # limit, header and body timeouts, shedding of connections that only wait on their client.
    # A fleet reconnecting after a restart arrives at once; the default backlog (128) drops
    # connects and costs each dropped client a one-second SYN retry.
    guard, cap = guard_for(settings)
    site = GuardedSite(
        runner, settings.listen_host, settings.listen_port, guard, backlog=LISTEN_BACKLOG
    )
    try:
        await site.start()
    except OSError as exc:
        await _cleanup_quietly(runner)
        raise StartupFailed(
            f"cannot listen on {settings.listen_host}:{settings.listen_port}: {exc.strerror or exc}"
        ) from None
    if cap.within_fd_limit:
        log.info("connection_limits", **limits_fields(cap, settings))
    else:
        # Still serving: at the limit, accept() failures are met by shedding and back-off.
        log.warning("connection_limits_above_fd_limit", **limits_fields(cap, settings))
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("kmsd_listening", host=settings.listen_host, port=settings.listen_port)
    if on_ready is not None:
        maybe = on_ready()
        if maybe is not None:
            await maybe
    await stop.wait()
    log.info("kmsd_stopping")
    await runner.cleanup()


async def _cleanup_quietly(runner: web.AppRunner) -> None:
    """Close what start-up opened; a second failure must not hide the first."""
    with contextlib.suppress(Exception):
        await runner.cleanup()


async def _serve(settings: Settings, wait_db_s: float) -> None:
    await wait_for_database(settings.database_url, wait_db_s)
    await serve_until_signalled(settings)


async def _migrate_only(settings: Settings, wait_db_s: float, grant_to: str | None) -> None:
    await wait_for_database(settings.database_url, wait_db_s)
    try:
        conn = await asyncpg.connect(settings.database_url)
        try:
            applied = await migrate(conn)
            if grant_to is not None:
                await grants.grant_to(conn, grant_to)
        finally:
            await conn.close()
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise StartupFailed(f"migration failed: {describe(exc, settings.database_url)}") from None
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")
    if grant_to is not None:
        print(f"granted {grant_to} kmsd's runtime privileges (and no others)")


def _say(message: str) -> None:
    with contextlib.suppress(OSError):
        print(f"kmsd: {message}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = parsing.CliParser(prog="kmsd", description=__doc__.split("\n", 1)[0])
    parsing.add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="run kmsd (configuration from KMSD_* environment variables)"
    )
    mig = sub.add_parser("migrate", help="apply pending database migrations and exit")
    mig.add_argument(
        "--grant-to",
        metavar="ROLE",
        help="then give ROLE, the role kmsd serves as, exactly the privileges it needs "
        "(its rows, append-only audit trail, no ownership); run as the tables' owner",
    )
    for p in (serve, mig):
        p.add_argument(
            "--wait-db",
            type=parsing.seconds_float,
            default=DEFAULT_WAIT_DB_S,
            metavar="DURATION",
            help="keep trying to reach PostgreSQL this long before giving up: seconds, or e.g. "
            f"2m (default {DEFAULT_WAIT_DB_S:g}; 0: one attempt)",
        )
    dev = sub.add_parser("dev", help="run kmsd with embedded PostgreSQL and moto's AWS server")
    dev.add_argument("--port", type=int, default=DEFAULT_PORT)
    dev.add_argument(
        "--data-dir",
        default="./.kmsd-dev",
        help="PostgreSQL data, moto's recording and the env file (exported as KMSD_DEV_DIR)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parsing.autocomplete(parser)
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED


def _run_dev(args: argparse.Namespace) -> int:
    from kmsd.cli.dev import run_dev

    try:
        return run_dev(args.port, args.data_dir)
    except StartupFailed as exc:
        _say(str(exc))
    except Exception as exc:  # embedded PostgreSQL or moto refused to start, or a bug
        _say(f"dev mode failed: {type(exc).__name__}: {exc}")
    return EXIT_FAILED


def _run(args: argparse.Namespace) -> int:
    if args.command == "dev":
        return _run_dev(args)
    try:
        settings = Settings.from_env()
        load_profile(settings.security_profile)  # refuse to start on a broken profile
    except ConfigError as exc:
        _say(str(exc))
        return EXIT_CONFIG
    configure(settings.log_format)
    try:
        if args.command == "migrate":
            asyncio.run(_migrate_only(settings, args.wait_db, args.grant_to))
        else:
            asyncio.run(_serve(settings, args.wait_db))
    except (DatabaseStartError, StartupFailed, ConfigError) as exc:
        # ConfigError here: a migration file whose checksum differs from the one applied,
        # migrations pending for a role that may not apply them, a role --grant-to refuses.
        _say(str(exc))
        return EXIT_FAILED
    except Exception as exc:
        log.exception("startup_failed", error=type(exc).__name__)
        _say(
            f"failed: {describe(exc, settings.database_url)} "
            "(the startup_failed log line has the traceback)"
        )
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
