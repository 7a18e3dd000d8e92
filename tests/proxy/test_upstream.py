"""The upstream connection: what the loop gives it that the proxy no longer sets itself."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop

from mtlsproxy.config.model import Upstream
from mtlsproxy.proxy.upstream import open_upstream


class Owner:
    def upstream_data(self, data: bytes) -> None: ...
    def upstream_eof(self) -> None: ...
    def upstream_lost(self, exc: Exception | None) -> None: ...
    def upstream_backpressure(self, full: bool) -> None: ...


async def _nodelay() -> int:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport = await open_upstream(loop, Upstream("127.0.0.1", port), Owner(), 5.0)
    try:
        return transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        transport.close()
        server.close()


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop])
def test_tcp_upstream_has_nodelay(loop_factory) -> None:
    """Both loops set TCP_NODELAY on the TCP transports they create (open_upstream relies on
    it: a request forwarded waits for no ACK)."""
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        assert runner.run(_nodelay()) != 0
