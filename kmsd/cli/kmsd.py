"""``kmsd serve | migrate | dev``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
from collections.abc import Awaitable, Callable

import asyncpg
import structlog
from aiohttp import web

from kmsd.app import create_app
from kmsd.config import DEFAULT_PORT, Settings
from kmsd.db.migrate import migrate
from kmsd.domain.profile import load_profile
from kmsd.errors import ConfigError
from kmsd.logs import configure

log = structlog.get_logger("kmsd")

LISTEN_BACKLOG = 4096


async def serve_until_signalled(
    settings: Settings, on_ready: Callable[[], Awaitable[None] | None] | None = None
) -> None:
    """Run the app until SIGINT or SIGTERM, then shut down cleanly."""
    # handler_cancellation: a client that hangs up mid-poll cancels its handler, which removes
    # its waiter at once instead of leaving it held until its deadline.
    runner = web.AppRunner(
        create_app(settings), access_log=None, handle_signals=False, handler_cancellation=True
    )
    await runner.setup()
    # Everything built so far (modules, botocore's service models, the app) lives as long as
    # the process: take it out of the collector's sight, so that full collections with
    # 10,000 held polls scan only what the polls allocate (bench/README.md: 0.4 s pauses).
    gc.collect()
    gc.freeze()
    # A fleet reconnecting after a restart arrives at once; the default backlog (128) drops
    # connects and costs each dropped client a one-second SYN retry.
    site = web.TCPSite(runner, settings.listen_host, settings.listen_port, backlog=LISTEN_BACKLOG)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
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


async def _migrate_only(settings: Settings) -> None:
    conn = await asyncpg.connect(settings.database_url)
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kmsd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run kmsd (configuration from KMSD_* environment variables)")
    sub.add_parser("migrate", help="apply pending database migrations and exit")
    dev = sub.add_parser("dev", help="run kmsd with embedded PostgreSQL and moto's AWS server")
    dev.add_argument("--port", type=int, default=DEFAULT_PORT)
    dev.add_argument("--data-dir", default="./.kmsd-dev")
    args = parser.parse_args(argv)

    if args.command == "dev":
        from kmsd.cli.dev import run_dev

        return run_dev(args.port, args.data_dir)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"kmsd: {exc}", file=sys.stderr)
        return 2
    try:
        load_profile(settings.security_profile)  # refuse to start on a broken profile
    except ConfigError as exc:
        print(f"kmsd: {exc}", file=sys.stderr)
        return 2
    configure(settings.log_format)
    if args.command == "migrate":
        asyncio.run(_migrate_only(settings))
        return 0
    asyncio.run(serve_until_signalled(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
