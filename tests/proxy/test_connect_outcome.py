"""What a connection does with its upstream connect's outcome (``_upstream_connect_done``,
and ``_open_pool`` for h2-to-http/1.1), for the outcomes a real upstream cannot be made to
give on cue: a bug in the connect, and a connect cancelled because the connection ended."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any, NoReturn, cast

import pytest

from mtlsproxy.proxy.connection import ClientConnection, EndReason, ListenerView


class ClientTransport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


def connection(loop: asyncio.AbstractEventLoop) -> tuple[ClientConnection, ClientTransport]:
    runtime = SimpleNamespace(name="test", timeouts=SimpleNamespace(connect=1.0))
    opened = ClientConnection(cast(ListenerView, runtime), loop)
    transport = ClientTransport()
    opened._transport = cast(Any, transport)
    return opened, transport


async def outcome(failure: BaseException | None) -> asyncio.Task[Any]:
    async def connect() -> NoReturn:
        if failure is None:
            await asyncio.sleep(3600)
        raise cast(BaseException, failure)

    task = asyncio.get_running_loop().create_task(connect())
    await asyncio.sleep(0)
    if failure is None:
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return task


def test_a_bug_in_the_connect_ends_the_connection_as_internal_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def run() -> tuple[ClientConnection, ClientTransport]:
        opened, transport = connection(asyncio.get_running_loop())
        task = await outcome(KeyError("a bug"))
        opened._upstream_connect_done(cast(Any, None), 0.0, task)
        return opened, transport

    with caplog.at_level(logging.ERROR, logger="mtlsproxy"):
        opened, transport = asyncio.run(run())
    assert opened._end is EndReason.INTERNAL_ERROR and transport.aborted
    assert "internal error while connecting upstream" in caplog.text
    assert "KeyError" in caplog.text  # the traceback of the bug, for its report


def test_a_bug_while_opening_the_http1_pool_ends_the_connection_as_internal_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def run() -> tuple[ClientConnection, ClientTransport]:
        opened, transport = connection(asyncio.get_running_loop())
        # the runtime has no idle timeout: a bug once the pool exists (_upstream_connected)
        opened._open_pool(cast(Any, None), cast(Any, object()), 0.0)
        return opened, transport

    with caplog.at_level(logging.ERROR, logger="mtlsproxy"):
        opened, transport = asyncio.run(run())
    assert opened._end is EndReason.INTERNAL_ERROR and transport.aborted
    assert "internal error while connecting upstream" in caplog.text
    assert "AttributeError" in caplog.text


def test_a_connect_cancelled_by_the_connections_end_is_not_reported() -> None:
    async def run() -> tuple[ClientConnection, ClientTransport]:
        opened, transport = connection(asyncio.get_running_loop())
        opened._end = EndReason.CLIENT_GONE  # the end cancelled the connect
        opened._upstream_connect_done(cast(Any, None), 0.0, await outcome(None))
        return opened, transport

    opened, transport = asyncio.run(run())
    assert opened._end is EndReason.CLIENT_GONE and not transport.aborted
