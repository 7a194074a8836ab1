"""A bare aiohttp long-poll server: the floor that ``longpoll.py`` compares kmsd's fan-out with.

``POST /watch`` parses the same JSON body as kmsd's ``/v1/watch`` and waits on one
``asyncio.Event`` per path; ``POST /release?path=P`` sets it (and installs a fresh one for the
next round) and every waiter answers with a small JSON document shaped like kmsd's.
``GET /held`` counts waiting polls; ``GET /set_at`` gives the ``time.monotonic_ns()`` of the
last ``set()``, the bare server's equivalent of kmsd's commit returning. No auth, no logging, no
metrics: that is the point.

Usage: python bench/_longpoll_bare.py PORT
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import orjson
from aiohttp import web

EVENTS = web.AppKey("events", dict)
HELD = web.AppKey("held", list)
VERSIONS = web.AppKey("versions", dict)
SET_AT = web.AppKey("set_at", list)


async def watch(request: web.Request) -> web.Response:
    doc = orjson.loads(await request.read())
    path = doc["path"]
    event = request.app[EVENTS].setdefault(path, asyncio.Event())
    held = request.app[HELD]
    held[0] += 1
    try:
        await event.wait()
    finally:
        held[0] -= 1
    body = {
        "path": path,
        "path_version": request.app[VERSIONS].get(path, 0),
        "hash": "0123456789abcdef",
        "secrets": [],
    }
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def release(request: web.Request) -> web.Response:
    path = request.query["path"]
    events = request.app[EVENTS]
    request.app[VERSIONS][path] = request.app[VERSIONS].get(path, 0) + 1
    event = events.pop(path, None)
    request.app[SET_AT][0] = time.monotonic_ns()
    if event is not None:
        event.set()
    return web.Response(text="ok")


async def held(request: web.Request) -> web.Response:
    return web.Response(text=str(request.app[HELD][0]))


async def set_at(request: web.Request) -> web.Response:
    return web.Response(text=str(request.app[SET_AT][0]))


async def serve(port: int) -> None:
    app = web.Application()
    app[EVENTS] = {}
    app[HELD] = [0]
    app[VERSIONS] = {}
    app[SET_AT] = [0]
    app.router.add_post("/watch", watch)
    app.router.add_post("/release", release)
    app.router.add_get("/held", held)
    app.router.add_get("/set_at", set_at)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
