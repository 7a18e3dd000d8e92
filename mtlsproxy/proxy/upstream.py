"""The upstream side of a proxied connection: a plain TCP or unix-socket stream.

The upstream protocol decides nothing: it reports what the upstream did to its owner, the
client connection, through ``UpstreamOwner``. The interface is defined here, below the
connection that implements it, so this module needs nothing from the rest of the proxy.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any, Protocol, cast

from mtlsproxy.config.model import Upstream


class UpstreamOwner(Protocol):
    """What the upstream connection reports, and to whom (``ClientConnection``)."""

    def upstream_data(self, data: bytes) -> None:
        """The upstream sent ``data`` for the client."""

    def upstream_eof(self) -> None:
        """The upstream will send no more (its FIN); it may still read."""

    def upstream_lost(self, exc: Exception | None) -> None:
        """The upstream connection is gone (``exc`` set: reset or error)."""

    def upstream_backpressure(self, full: bool) -> None:
        """The upstream's write buffer passed its high-water mark (``full``), or drained."""


class UpstreamProtocol(asyncio.Protocol):
    """Hands everything to the client connection that owns it."""

    # ``data_received`` is the owner's ``upstream_data`` itself, an instance attribute (the
    # loops look it up on the instance; uvloop keeps the bound method): no frame of ours in
    # between, once for every read of the upstream.
    __slots__ = ("_owner", "data_received")

    def __init__(self, owner: UpstreamOwner) -> None:
        self._owner = owner
        self.data_received: Callable[[bytes], None] = owner.upstream_data  # type: ignore[assignment]

    def eof_received(self) -> bool:
        self._owner.upstream_eof()
        return True  # half-close: the client may still be sending

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner.upstream_lost(exc)

    # The upstream reads slower than the client writes: the owner stops reading the client.
    def pause_writing(self) -> None:
        self._owner.upstream_backpressure(True)

    def resume_writing(self) -> None:
        self._owner.upstream_backpressure(False)


def connecting(
    loop: asyncio.AbstractEventLoop, upstream: Upstream, owner: UpstreamOwner
) -> Coroutine[Any, Any, tuple[asyncio.BaseTransport, asyncio.BaseProtocol]]:
    """The loop's connect to ``upstream``, to be awaited by the caller (a coroutine of ours
    around it would be one more frame and step per connection); raises ``OSError``.

    A TCP upstream gets ``TCP_NODELAY`` from the loop (uvloop and asyncio both set it on the
    TCP transports they create): the proxy forwards what it has at once, and asking for the
    transport's socket to set it again cost ~30 us a connection."""
    factory = partial(UpstreamProtocol, owner)
    if upstream.unix_path is not None:
        return loop.create_unix_connection(factory, str(upstream.unix_path))
    assert upstream.host is not None and upstream.port is not None  # validated: one or the other
    return loop.create_connection(factory, upstream.host, upstream.port)


async def open_upstream(
    loop: asyncio.AbstractEventLoop, upstream: Upstream, owner: UpstreamOwner, timeout: float
) -> asyncio.Transport:
    """Connect within ``timeout`` seconds; raises ``OSError`` or ``TimeoutError``. (The
    proxy's client connections await ``connecting`` and cancel it from their own timer.)"""
    async with asyncio.timeout(timeout):
        transport, _ = await connecting(loop, upstream, owner)
    return cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it


def upstream_error_reason(exc: BaseException) -> str:
    """The ``reason`` label of a failed upstream connect."""
    if isinstance(exc, TimeoutError):
        return "connect_timeout"
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ENOENT:
        return "connect_refused"
    return "connect_error"
