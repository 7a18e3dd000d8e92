"""The upstream side of an HTTP/2 client in ``h2-to-http/1.1`` mode: an HTTP/1.1 connection
per active stream, behind one transport-like object.

``Http1Pool`` takes the place of the one upstream transport of ``ClientConnection`` (which
writes the bridge's h2c bytes into it and reads the answers through ``upstream_data``, as
from an h2c upstream), so the connection's code is the same in this mode; the pool feeds
those bytes to the sans-I/O ``forwarding.http2.gateway.Http1Gateway`` and holds the
upstream connections the gateway asks for, one per stream it translates, at most
``http2.max_concurrent_streams`` (the gateway's SETTINGS bound the bridge's streams), each
closed once its exchange is over.

Per upstream connection: its connect is bounded by ``timeouts.connect`` (a timeout is a 504
on that stream, any other failure a 502, counted as ``upstream_errors_total`` like the other
modes', a response that does not parse or is cut short as ``bad_response``); its write
buffer full stops taking the stream's request content from the gateway,
so its window is not given back to the client (RFC 9113 section 5.2); a response waiting
past ``limits.buffer_size`` for the client's window stops reading it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Protocol

from mtlsproxy.forwarding.http2.gateway import Http1Gateway
from mtlsproxy.proxy.upstream import open_upstream, upstream_error_reason

if TYPE_CHECKING:
    from mtlsproxy.config.model import Limits, Timeouts
    from mtlsproxy.routing.routes import ServerRoute


class PoolOwner(Protocol):
    def upstream_data(self, data: bytes) -> None: ...


class PoolRuntime(Protocol):
    @property
    def timeouts(self) -> Timeouts: ...
    @property
    def limits(self) -> Limits: ...
    def observe_upstream_error(self, route: str, reason: str) -> None: ...


class _Leg:
    """One stream's upstream connection (an ``UpstreamOwner``)."""

    __slots__ = ("full", "pool", "stream_id", "task", "transport")

    def __init__(self, pool: Http1Pool, stream_id: int) -> None:
        self.pool = pool
        self.stream_id = stream_id
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.full = False

    def upstream_data(self, data: bytes) -> None:
        self.pool.gateway.response(self.stream_id, data)
        self.pool.service()

    def upstream_eof(self) -> None:
        self.pool.gateway.upstream_closed(self.stream_id)
        self.pool.service()

    def upstream_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pool.gateway.upstream_closed(self.stream_id)
        self.pool.service()

    def upstream_backpressure(self, full: bool) -> None:
        self.full = full
        if not full:
            self.pool.service()


class Http1Pool:
    """The transport-like upstream of one client connection in ``h2-to-http/1.1`` mode."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        route: ServerRoute,
        gateway: Http1Gateway,
        owner: PoolOwner,
        runtime: PoolRuntime,
    ) -> None:
        self._loop = loop
        self._route = route
        self.gateway = gateway
        self._owner = owner
        self._runtime = runtime
        self._legs: dict[int, _Leg] = {}
        self._out = bytearray()  # for the owner, delivered from the loop (no re-entry)
        self._delivery: asyncio.Handle | None = None
        self._closing = False
        self._paused = False  # the owner stopped reading us: the client is slow

    # What ClientConnection calls on its upstream transport

    def write(self, data: bytes | memoryview) -> None:
        if self._closing:
            return
        self.gateway.receive(bytes(data))
        self.service()

    def close(self) -> None:
        self._closing = True
        for leg in list(self._legs.values()):
            self._close_leg(leg)
        if self._delivery is not None:
            self._delivery.cancel()

    abort = close

    def is_closing(self) -> bool:
        return self._closing

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        self.close()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        return None

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def pause_reading(self) -> None:
        self._paused = True
        for leg in self._legs.values():
            if leg.transport is not None:
                leg.transport.pause_reading()

    def resume_reading(self) -> None:
        self._paused = False
        self.service()

    # Moving bytes

    def service(self) -> None:
        """After anything happened: hand the gateway's frames to the owner, open and close
        upstream connections, write what waits for them, pause or resume their reading."""
        if self._closing:
            return
        gateway = self.gateway
        for _ in range(gateway.take_bad_responses()):
            self._runtime.observe_upstream_error(self._route.name, "bad_response")
        for stream_id in gateway.take_opens():
            leg = self._legs[stream_id] = _Leg(self, stream_id)
            leg.task = self._loop.create_task(self._connect(leg))
        for stream_id in gateway.take_closed():
            leg = self._legs.pop(stream_id, None)
            if leg is not None:
                self._close_leg(leg)
        for leg in self._legs.values():
            transport = leg.transport
            if transport is None or transport.is_closing():
                continue
            if not leg.full:
                data = gateway.request_data(leg.stream_id)
                if data:
                    transport.write(data)
            if self._paused or gateway.backlog(leg.stream_id) > gateway.max_backlog:
                transport.pause_reading()
            else:
                transport.resume_reading()
        out = gateway.data_to_send()  # last: taking request data gave windows back
        if out:
            self._out += out
            if self._delivery is None:
                self._delivery = self._loop.call_soon(self._deliver)

    def _deliver(self) -> None:
        self._delivery = None
        if self._closing or not self._out:
            return
        data, self._out = bytes(self._out), bytearray()
        self._owner.upstream_data(data)

    async def _connect(self, leg: _Leg) -> None:
        runtime = self._runtime
        try:
            transport = await open_upstream(
                self._loop, self._route.config.upstream, leg, runtime.timeouts.connect
            )
        except (OSError, TimeoutError) as exc:
            reason = upstream_error_reason(exc)
            runtime.observe_upstream_error(self._route.name, reason)
            leg.task = None
            self.gateway.upstream_failed(leg.stream_id, 504 if reason == "connect_timeout" else 502)
            self.service()
            return
        leg.task = None
        if self._closing or self._legs.get(leg.stream_id) is not leg:
            transport.close()
            return
        transport.set_write_buffer_limits(high=runtime.limits.buffer_size)
        leg.transport = transport
        self.service()

    def _close_leg(self, leg: _Leg) -> None:
        if leg.task is not None:
            leg.task.cancel()
            leg.task = None
        if leg.transport is not None:
            with contextlib.suppress(Exception):
                leg.transport.close()
