"""Throttled logs (kmsd.domain.throttle, kmsd.logs.Throttled) and the loop exception handler."""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from aiohttp.http_exceptions import BadHttpMessage
from structlog.testing import capture_logs

from kmsd.domain.throttle import Throttle
from kmsd.logs import AIOHTTP_LOGGER, AiohttpRecords, LoopExceptions, Throttled

CANARY = "canary-2b7e91"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A loop to hand to the handler (it never uses it)."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


# -- Throttle ----------------------------------------------------------------------------------


def test_the_first_occurrence_passes_and_repeats_within_the_interval_are_counted() -> None:
    throttle: Throttle[str] = Throttle(interval_s=10)
    assert throttle.admit("emfile", 0.0) == 0
    assert [throttle.admit("emfile", t) for t in (1.0, 5.0, 9.99)] == [None, None, None]
    assert throttle.admit("emfile", 10.0) == 3  # the next line says how many were dropped
    assert throttle.admit("emfile", 10.5) is None
    assert throttle.admit("emfile", 30.0) == 1


def test_keys_are_throttled_apart() -> None:
    throttle: Throttle[str] = Throttle(interval_s=10)
    assert throttle.admit("a", 0.0) == 0
    assert throttle.admit("b", 0.0) == 0
    assert throttle.admit("a", 1.0) is None


def test_the_number_of_keys_is_bounded_forgetting_the_quietest() -> None:
    throttle: Throttle[int] = Throttle(interval_s=10, max_keys=2)
    throttle.admit(1, 0.0)
    throttle.admit(2, 1.0)
    throttle.admit(3, 2.0)  # 1 has been quiet longest: forgotten
    assert throttle.admit(1, 3.0) == 0
    assert throttle.admit(3, 3.0) is None


@pytest.mark.parametrize(("interval", "keys"), [(0, 1), (-1, 1), (1, 0)])
def test_a_throttle_needs_an_interval_and_room(interval: float, keys: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        Throttle[str](interval, keys)


# -- Throttled ---------------------------------------------------------------------------------


def test_throttled_lines_carry_the_count_of_those_dropped(clock: Clock) -> None:
    throttled = Throttled(interval_s=10, clock=clock)
    with capture_logs() as logs:
        for _ in range(500):
            throttled.log("kmsd.conn", logging.WARNING, "accept_failed", error="OSError")
        throttled.log("kmsd.conn", logging.WARNING, "connection_shed")  # another kind
        clock.now += 10
        throttled.log("kmsd.conn", logging.WARNING, "accept_failed", error="OSError")
    assert [(e["event"], e.get("suppressed")) for e in logs] == [
        ("accept_failed", None),
        ("connection_shed", None),
        ("accept_failed", 499),
    ]


# -- asyncio's exception handler ---------------------------------------------------------------


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


@pytest.mark.parametrize(
    ("message", "event"),
    [
        ("Task exception was never retrieved", "loop_task_exception_unretrieved"),
        (f"Exception in callback Handle(data_received, b'{CANARY}')", "loop_callback_failed"),
        ("socket.accept() out of system resource", "loop_accept_out_of_resources"),
        (f"Fatal read error on socket transport {CANARY}", "loop_transport_failed"),
        (f"something new {CANARY}", "loop_exception"),
        (None, "loop_exception"),
    ],
)
def test_loop_reports_are_a_fixed_event_and_the_exceptions_class(
    loop: asyncio.AbstractEventLoop, message: str | None, event: str
) -> None:
    context: dict[str, Any] = {
        "message": message,
        "exception": _raised(ValueError(f"Authorization: Bearer {CANARY}")),
        "task": f"<Task body={CANARY}>",
    }
    with capture_logs() as logs:
        LoopExceptions(Throttled())(loop, context)
    (line,) = logs
    assert line["event"] == event
    assert line["error"] == "ValueError"
    assert line["raised_at"].endswith(".py:" + line["raised_at"].rsplit(":", 1)[1])
    assert CANARY not in repr(line)


def test_loop_reports_name_an_oserrors_errno_and_are_throttled(
    loop: asyncio.AbstractEventLoop, clock: Clock
) -> None:
    handler = LoopExceptions(Throttled(interval_s=10, clock=clock))
    emfile = OSError(errno.EMFILE, "Too many open files")
    context = {"message": "socket.accept() out of system resource", "exception": emfile}
    with capture_logs() as logs:
        for _ in range(4096):  # what one tick of asyncio's own accept loop reported
            handler(loop, context)
    assert logs == [
        {
            "event": "loop_accept_out_of_resources",
            "error": "OSError",
            "errno": "EMFILE",
            "log_level": "error",
        }
    ]


def test_a_loop_with_the_handler_logs_an_unretrieved_task_exception_without_its_text() -> None:
    async def fail() -> None:
        raise RuntimeError(CANARY)

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(LoopExceptions(Throttled()))
        task = asyncio.create_task(fail())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert task.done()
        del task  # never retrieved: reported when collected

    with capture_logs() as logs:
        asyncio.run(main())
    assert {e["event"] for e in logs} == {"loop_task_exception_unretrieved"}
    assert CANARY not in repr(logs)


# -- aiohttp's records -------------------------------------------------------------------------


@pytest.fixture
def aiohttp_handler(clock: Clock) -> Iterator[logging.Logger]:
    logger = logging.getLogger(AIOHTTP_LOGGER + ".server")
    handler = AiohttpRecords(Throttled(interval_s=10, clock=clock))
    logger.addHandler(handler)
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        structlog.reset_defaults()


def test_aiohttp_records_are_throttled(aiohttp_handler: logging.Logger, clock: Clock) -> None:
    def parse_error() -> None:
        try:
            raise BadHttpMessage(CANARY)
        except BadHttpMessage:
            aiohttp_handler.exception("Error handling request from %s", CANARY)

    with capture_logs() as logs:
        for _ in range(100):
            parse_error()
        clock.now += 10
        parse_error()
    assert [(e["event"], e["error"], e.get("suppressed")) for e in logs] == [
        ("http_parse_error", "BadHttpMessage", None),
        ("http_parse_error", "BadHttpMessage", 99),
    ]
    assert CANARY not in repr(logs)
