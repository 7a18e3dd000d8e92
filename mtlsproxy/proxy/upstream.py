"""The upstream side of a proxied connection: a plain TCP or unix-socket stream."""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, cast

from mtlsproxy.config.model import Upstream

if TYPE_CHECKING:
    from mtlsproxy.proxy.connection import ClientConnection


class UpstreamProtocol(asyncio.Protocol):
    """Hands everything to the client connection that owns it."""

    def __init__(self, client: ClientConnection) -> None:
        self._client = client

    def data_received(self, data: bytes) -> None:
        self._client.from_upstream(data)

    def eof_received(self) -> bool:
        self._client.upstream_eof()
        return True  # half-close: the client may still be sending

    def connection_lost(self, exc: Exception | None) -> None:
        self._client.upstream_lost(exc)

    # The upstream reads slower than the client writes: stop reading the client.
    def pause_writing(self) -> None:
        self._client.pause_client_reading()

    def resume_writing(self) -> None:
        self._client.resume_client_reading()


async def open_upstream(
    loop: asyncio.AbstractEventLoop,
    upstream: Upstream,
    client: ClientConnection,
    timeout: float,
) -> asyncio.Transport:
    """Connect within ``timeout`` seconds; raises ``OSError`` or ``TimeoutError``."""
    async with asyncio.timeout(timeout):
        if upstream.unix_path is not None:
            transport, _ = await loop.create_unix_connection(
                lambda: UpstreamProtocol(client), str(upstream.unix_path)
            )
        else:
            transport, _ = await loop.create_connection(
                lambda: UpstreamProtocol(client), upstream.host, upstream.port
            )
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
