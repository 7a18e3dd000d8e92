"""One client connection: drives its handshake engine and pipes bytes to and from the upstream.

Flow control couples the two sides (uvicorn ``FlowControl``, mitmproxy ``drain_writers``): when
one side's write buffer passes ``limits.buffer_size`` the other side stops being read, so memory
per connection stays bounded whatever the peers do. Reading the client also stops once what it
sent while the upstream connects passes ``limits.buffer_size`` and, in HTTP mode, while an
Upgrade or a refusal waits for the upstream; each of those is a separate cause in a
``flow.ReadGate``, so one ending never undoes another.
What the engine answers to the client's own records (KeyUpdate replies, alerts) is bounded
the same way: a client whose records were answered into its full write buffer is not read
until that buffer drains.

Half-close travels both ways: the client's close_notify (or FIN) becomes a FIN to the upstream;
the upstream's FIN becomes close_notify + FIN to the client; the connection ends when both
directions are done. It ends once, with an ``EndReason`` for the access log, either by
``_finish`` (what is buffered is still written, the client gets close_notify) or by ``_abort``
(both sockets dropped at once: a reset, a protocol error, a bug).

A connection ended with a final answer to a client that may still be sending (an alert after
its flight, a GOAWAY, a closing 400/403) lingers before it closes (``_close_client``): a close
with unread bytes would be a TCP reset, and a reset makes the client's kernel drop what it
had received but not read, the answer included.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import time
from functools import partial
from typing import TYPE_CHECKING, Final, Protocol, cast

from mtlsproxy import logs
from mtlsproxy.config.model import ForwardIdentity, Limits, Timeouts
from mtlsproxy.engine.clienthello import ClientHello
from mtlsproxy.engine.events import (
    ApplicationData,
    ClientHelloReceived,
    Event,
    HandshakeComplete,
    HandshakeFailed,
    PeerClosed,
    ProtocolError,
)
from mtlsproxy.engine.interface import Engine
from mtlsproxy.engine.selecting import SelectingEngine
from mtlsproxy.forwarding.http.local import GATEWAY_ERRORS, RequestRefusal
from mtlsproxy.forwarding.http.request import HTTPRefused
from mtlsproxy.forwarding.http2.bridge import Http2Bridge
from mtlsproxy.forwarding.http2.faults import Http2Fault
from mtlsproxy.forwarding.plan import PASSTHROUGH, plan
from mtlsproxy.proxy.flow import Pause, ReadGate
from mtlsproxy.proxy.http1_pool import Http1Pool
from mtlsproxy.proxy.upstream import connecting
from mtlsproxy.proxy.upstream import upstream_error_reason as _upstream_error_reason
from mtlsproxy.vocabulary.failures import Reason

if TYPE_CHECKING:
    from mtlsproxy.forwarding.http2.gateway import Http1Gateway
    from mtlsproxy.routing.routes import ServerRoute

# The upstream connect's task: the loop's connect, to its transport and protocol.
Connecting = asyncio.Task[tuple[asyncio.BaseTransport, asyncio.BaseProtocol]]

# What the engine is given of one read at a time (``ClientConnection._feed``): slices sized so
# that one takes about FEED_BUDGET seconds of engine work, from what the last one cost per
# byte. Application data costs nanoseconds a byte (a whole read is one slice); a KeyUpdate
# costs the native engine ~100 us for 27 bytes, and a 256 KiB read of them would hold the
# event loop, every other connection and /healthz included, for over a second.
FEED_BUDGET = 0.002
FIRST_SLICE: Final = 16 * 1024 + 5  # one record of the largest size and its header
MIN_SLICE: Final = 512
MAX_SLICE: Final = 1 << 30
_clock: Final = time.perf_counter  # a module name: one lookup fewer a read
# Bytes forwarded are added to the listener's counter once this many are unreported, and at
# close: a counter increment (a lock, a label lookup) per chunk cost more than the chunk's
# write on a keep-alive connection; a long transfer still shows in the counter as it goes.
COUNT_EVERY: Final = 1 << 20
# A lingering connection (``_close_client``) discards at most this much of what the client
# still sends, within ``timeouts.lingering``: a TLS 1.3 client's request sent with its Finished,
# the frames an HTTP/2 client had in flight, a request body. One that sends more is not owed
# more of our time; its connection is dropped (Go's net/http discards 256 KiB of an unread
# request body, nginx bounds only the time).
LINGER_BYTES: Final = 4 << 20


class EndReason(enum.StrEnum):
    """Why a connection ended: the access log's ``end``."""

    CLOSED = "closed"  # both directions done (close_notify or FIN each way)
    CLIENT_GONE = "client_gone"  # the client's socket went away, or its TLS session ended
    HANDSHAKE_FAILED = "handshake_failed"  # refused or failed before any byte went upstream
    HANDSHAKE_SHED = "handshake_shed"  # the oldest handshake when ``max_handshakes`` was reached
    TLS_ERROR = "tls_error"  # the established session broke (bad record, the client's alert)
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"  # connecting upstream failed or timed out
    UPSTREAM_CLOSED = "upstream_closed"  # the upstream connection closed before both were done
    UPSTREAM_RESET = "upstream_reset"  # the upstream connection failed (reset, error)
    # HTTP mode: a request with ambiguous framing, answered 400; or a request refused by
    # http_authorization whose answer closes (it asked to, or its content may never come)
    HTTP_REFUSED = "http_refused"
    HTTP2_ERROR = "http2_error"  # HTTP mode over HTTP/2: a connection error (GOAWAY)
    IDLE_TIMEOUT = "idle_timeout"  # no byte either way for ``timeouts.idle``
    DRAIN_TIMEOUT = "drain_timeout"  # still open when the shutdown's drain time ran out
    INTERNAL_ERROR = "internal_error"  # a bug while connecting upstream


class ListenerView(Protocol):
    """What a connection needs from the listener that accepted it (``ListenerRuntime``): its
    settings, an engine, a place in its connection count, and where observations go. Defined
    here so that the listener, which creates connections, is the only one of the two that
    imports the other."""

    name: str
    timeouts: Timeouts
    limits: Limits

    def new_engine(self, peer: str) -> Engine: ...
    def admit_connection(self, connection: ClientConnection, peer: object) -> bool: ...
    def handshake_done(self, connection: ClientConnection, completed: bool) -> None: ...
    def release_connection(self, connection: ClientConnection) -> None: ...
    def observe_handshake(
        self, peer: str, hello: ClientHello | None, event: HandshakeComplete | HandshakeFailed
    ) -> None: ...
    def observe_connection(self, record: logs.AccessRecord) -> None: ...
    def observe_upstream_connect(self, route: str, seconds: float) -> None: ...
    def observe_upstream_error(self, route: str, reason: str) -> None: ...
    def observe_refused_request(
        self, route: str, peer: str, refusal: RequestRefusal, outcome: HandshakeComplete | None
    ) -> None: ...
    def observe_http2_error(self, route: str, peer: str, fault: Http2Fault) -> None: ...
    def count_bytes(self, direction: str, count: int) -> None: ...


class ClientConnection(asyncio.Protocol):
    """The downstream (client) side of one proxied connection; the ``UpstreamOwner`` of its
    upstream connection."""

    # Slots: an idle connection is mostly this object (a dict of ~35 entries was ~1.2 KiB).
    __slots__ = (
        "_answered",
        "_bytes_in",
        "_bytes_out",
        "_client_done",
        "_client_reading",
        "_connect_expired",
        "_counted_in",
        "_counted_out",
        "_early_data",
        "_end",
        "_ended_at",
        "_engine",
        "_eof_pending",
        "_feeding",
        "_forwarding",
        "_hello",
        "_last_activity",
        "_linger_left",
        "_loop",
        "_opened",
        "_outcome",
        "_peer",
        "_peer_address",
        "_quickack_set",
        "_refusal_timer",
        "_refused_request",
        "_runtime",
        "_slice",
        "_sni",
        "_timer",
        "_transport",
        "_unfed",
        "_upstream",
        "_upstream_address",
        "_upstream_done",
        "_upstream_reading",
        "_upstream_task",
    )

    def __init__(self, runtime: ListenerView, loop: asyncio.AbstractEventLoop) -> None:
        self._runtime = runtime
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._engine: Engine | None = None
        self._peer = "-"
        # The parsed ClientHello (up to 64 KiB of lists) lives until the handshake's outcome is
        # logged and planned; the access log at close needs only its server name.
        self._hello: ClientHello | None = None
        self._sni: str | None = None
        self._upstream: asyncio.Transport | None = None
        self._upstream_task: Connecting | None = None
        self._early_data: list[bytes | memoryview] = []  # decrypted before upstream connected
        self._forwarding = PASSTHROUGH  # forward_identity: PROXY v2 preamble, HTTP rewriter
        self._refused_request: HTTPRefused | None = None
        self._refusal_timer: asyncio.TimerHandle | None = None
        self._client_reading = ReadGate()
        self._upstream_reading = ReadGate()
        self._client_done = False  # the client sent close_notify or FIN
        self._upstream_done = False  # the upstream sent FIN
        self._end: EndReason | None = None  # why the connection ended; None while it is open
        self._ended_at = 0.0  # when (monotonic): the access log's duration leaves out lingering
        self._linger_left = 0  # bytes the lingering connection still discards; 0: not lingering
        # The one deadline of the connection at a time: the handshake's, then the upstream
        # connect's, then the idle check's (``_timer_fired`` knows which by the state); once
        # ended, the lingering's (``_close_client``).
        self._timer: asyncio.TimerHandle | None = None
        self._connect_expired = False
        self._peer_address: object = None  # as the transport gave it, for ``plan()``
        self._last_activity = self._loop.time()
        self._opened = time.monotonic()
        # For the access log line at close.
        self._outcome: HandshakeComplete | HandshakeFailed | None = None
        self._bytes_in = self._bytes_out = 0
        self._counted_in = self._counted_out = 0  # what the listener's counter has of them
        self._answered = 0  # bytes the engine wrote to the client (``_flush``)
        self._upstream_address: str | None = None
        self._quickack_set = False
        self._unfed = b""  # read from the client, not yet given to the engine (``_feed``)
        self._slice = FIRST_SLICE
        self._eof_pending = False
        self._feeding: asyncio.Handle | None = None

    # Client side: asyncio.Protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = transport = cast(asyncio.Transport, transport)
        self._peer_address = peer = transport.get_extra_info("peername")
        self._peer = _format_address(peer)
        if not self._runtime.admit_connection(self, peer):
            transport.abort()
            return
        self._client_reading.attach(transport)
        transport.set_write_buffer_limits(high=self._runtime.limits.buffer_size)
        self._engine = self._runtime.new_engine(self._peer)
        self._timer = self._loop.call_later(self._runtime.timeouts.handshake, self._timer_fired)

    def data_received(self, data: bytes) -> None:
        if self._engine is None or self._end is not None:
            if self._linger_left:
                self._discard(len(data))
            return
        self._last_activity = self._loop.time()
        self._unfed = self._unfed + data if self._unfed else data
        self._feed()

    def _feed(self) -> None:
        """Give the engine what was read, a slice at a time, for about ``FEED_BUDGET`` at a
        time: the rest waits for a later turn of the event loop (the client is not read
        meanwhile, ``Pause.FEEDING``), so that records that are costly to process delay other
        connections by a slice, not by a read. Answers piling up stop the feeding until the
        client drains them (``resume_writing`` feeds the rest)."""
        self._feeding = None
        engine = self._engine
        assert engine is not None
        started = began = _clock()
        while (data := self._unfed) and self._end is None:
            reading = self._client_reading
            if reading.causes and reading.holds(Pause.CLIENT_WRITE_FULL):
                return
            size, length = self._slice, len(data)
            if length <= size:
                self._unfed = b""
            else:
                data, self._unfed, length = data[:size], data[size:], size
            answered = self._answered
            self._handle(engine.receive(data))
            now = _clock()
            spent = now - began
            # The size follows the cost per byte when the slice was all it could be, or when
            # one of its size would take more than the budget at this cost; a read that fits
            # in it, and would fit at this cost, leaves it as it is (no division a read).
            if length == size or spent * size > FEED_BUDGET * length:
                fitting = int(length * FEED_BUDGET / spent) if spent > 0 else MAX_SLICE
                self._slice = min(max(fitting, MIN_SLICE), MAX_SLICE)
            if not self._is_open():
                return
            if self._answered != answered:
                self._pause_if_answers_pile_up()
            if self._unfed and now - started >= FEED_BUDGET:
                self._client_reading.pause(Pause.FEEDING)
                self._feed_later()
                return
            began = now
        if self._eof_pending and self._end is None:
            self._eof_pending = False
            self._handle(engine.receive_eof())
        if self._client_reading.causes:
            self._client_reading.resume(Pause.FEEDING)

    def _pause_if_answers_pile_up(self) -> None:
        """Stop reading a client whose records were just answered (KeyUpdate replies, alerts)
        into a write buffer past ``limits.buffer_size``: it is not reading them. What it may
        hold past the limit is the answer to one slice of a read (``_feed``). Called only
        when that slice was answered: upstream bytes never count here (they are bounded by
        ``CLIENT_FULL``), so a client that sends only application data is never stopped by
        its own write buffer, and its reads cost no write-buffer query."""
        assert self._transport is not None
        if self._transport.get_write_buffer_size() > self._runtime.limits.buffer_size:
            self._client_reading.pause(Pause.CLIENT_WRITE_FULL)

    def _feed_later(self) -> None:
        if self._feeding is None:
            self._feeding = self._loop.call_soon(self._feed)

    def eof_received(self) -> bool:
        if self._linger_left:
            return False  # the client read our FIN and closed: close (the transport does)
        if self._unfed:
            self._eof_pending = True  # after what is still to be fed (``_feed``)
        elif self._engine is not None and self._end is None:
            self._handle(self._engine.receive_eof())
        return True  # keep our side writable: the upstream may still be answering

    def connection_lost(self, exc: Exception | None) -> None:
        self._abort(EndReason.CLIENT_GONE)  # unless it already ended
        self._linger_left = 0
        self._cancel_timer()  # the lingering's deadline
        self._count_bytes()
        if self._engine is not None and self._end is not None:  # admitted: its access log line
            record = logs.AccessRecord(
                listener=self._runtime.name,
                engine=self._engine.name,
                peer=self._peer,
                sni=self._sni,
                outcome=self._outcome,
                bytes_in=self._bytes_in,
                bytes_out=self._bytes_out,
                duration=self._ended_at - self._opened,
                end=self._end,  # a StrEnum: its value, without the enum's property call
                upstream=self._upstream_address,
            )
            self._runtime.observe_connection(record)
        self._runtime.release_connection(self)

    # The client reads slower than the upstream writes: stop reading the upstream.
    def pause_writing(self) -> None:
        self._upstream_reading.pause(Pause.CLIENT_FULL)

    def resume_writing(self) -> None:
        self._upstream_reading.resume(Pause.CLIENT_FULL)
        self._client_reading.resume(Pause.CLIENT_WRITE_FULL)
        if self._unfed and self._end is None:
            self._feed_later()

    # Engine events

    def _handle(self, events: list[Event]) -> None:
        self._flush()
        for event in events:
            if isinstance(event, ApplicationData):
                self._to_upstream(event.data)
            elif isinstance(event, ClientHelloReceived):
                self._hello, self._sni = event.hello, event.hello.server_name
            elif isinstance(event, HandshakeComplete):
                self._on_handshake_complete(event)
            elif isinstance(event, HandshakeFailed):
                self._on_handshake_failed(event)
            elif isinstance(event, PeerClosed):
                self._on_client_closed(event.clean)
            elif isinstance(event, ProtocolError):
                logs.event(logging.INFO, "tls error", peer=self._peer, detail=event.detail)
                self._abort(EndReason.TLS_ERROR)

    def _flush(self) -> None:
        assert self._engine is not None and self._transport is not None
        out = self._engine.data_to_send()
        if out and not self._transport.is_closing():
            self._answered += len(out)
            self._transport.write(out)
        if not self._quickack_set and self._engine.handshake_complete:
            # The first flush after the client's Finished: a session ticket, when there is
            # one, carries the ACK the client waits for; else it is sent at once.
            self._quickack_set = True
            if not out:
                self._ack_the_client_finished_at_once()

    def _ack_the_client_finished_at_once(self) -> None:
        """Acknowledge the client's Finished without the delayed-ACK wait.

        A client with Nagle's algorithm on (Python's ssl, many libraries) holds its first
        request until its Finished is acknowledged; with nothing of ours to carry the ACK (no
        session ticket: none to a client admitted in audit mode, none from a route that issues
        none) the kernel waits its delayed-ACK time, 40 ms on Linux. Entering quick-ACK mode
        sends an ACK that is due at once (Linux's ``TCP_QUICKACK``). Only then: the socket
        object and the option cost three system calls a connection.
        """
        sock = self._transport.get_extra_info("socket") if self._transport else None
        if sock is not None and hasattr(socket, "TCP_QUICKACK"):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)

    def _on_handshake_complete(self, event: HandshakeComplete) -> None:
        self._outcome = event
        if isinstance(self._engine, SelectingEngine) and self._engine.chosen is not None:
            # From here on the selecting engine only passes every call through to the engine
            # it chose: the data path calls that one, two calls fewer a record each way.
            self._engine = self._engine.chosen
        self._cancel_timer()
        self._runtime.handshake_done(self, completed=True)
        self._runtime.observe_handshake(self._peer, self._hello, event)
        assert self._engine is not None and self._transport is not None
        # The engine was built with this listener's RouteTable: its routes are ServerRoutes.
        route = cast("ServerRoute", self._engine.route)
        self._upstream_address = route.upstream_address
        settings = route.config.forward_identity
        if settings.mode is not ForwardIdentity.NONE:  # else passthrough: no addresses needed
            self._forwarding = plan(
                settings, route, event, self._hello, _address(self._peer_address),
                _address(self._transport.get_extra_info("sockname")),
                self._runtime.limits, time.monotonic,
            )  # fmt: skip
        self._hello = None
        # What the client sends meanwhile waits for the upstream (``_to_upstream``); the
        # client is not paused up front: a pause and a resume per connection cost two
        # event-loop calls and two epoll changes, and most clients send one request first.
        self._connect_upstream(route)
        self._timer = self._loop.call_later(self._runtime.timeouts.connect, self._timer_fired)

    def _on_handshake_failed(self, event: HandshakeFailed) -> None:
        self._outcome = event
        self._cancel_timer()
        self._runtime.handshake_done(self, completed=False)
        self._runtime.observe_handshake(self._peer, self._hello, event)
        self._hello = None
        self._finish(EndReason.HANDSHAKE_FAILED)

    def _timer_fired(self) -> None:
        """The connection's deadline passed: the handshake's (no outcome yet), the upstream
        connect's (handshake done, no upstream yet), or it is time to check for idleness."""
        self._timer = None
        if self._engine is None or self._end is not None:
            return
        task = self._upstream_task
        if self._outcome is None:
            self._handle(self._engine.handle_timeout())
        elif self._upstream is None and task is not None and not task.done():
            self._connect_expired = True  # _upstream_connect_done reports a timeout
            task.cancel()
        elif self._upstream is None and (bridge := self._forwarding.http2) is not None:
            assert bridge.unreachable is not None  # the one way here without an upstream
            bridge.go_away()
            self._pass_http2(bridge)
            self._finish(EndReason.UPSTREAM_UNAVAILABLE)
        else:
            self._check_idle()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # Upstream side

    def _connect_upstream(self, route: ServerRoute) -> None:
        """Start the upstream connect: the connection's one task (``_upstream_connect_done``
        takes its outcome), or, for h2-to-http/1.1, its pool of connections, one per stream
        later (``_open_pool``). The deadline is the connection's timer (``_timer_fired``), not
        a timeout context of its own: one timer per connection. The loop's own coroutine in a
        task and a callback, not a coroutine of ours: this module is compiled, and a compiled
        coroutine that is cancelled passes the cancellation on with the three-argument
        ``throw()`` that Python 3.12 deprecated (mypyc issue 1214)."""
        started = self._loop.time()
        gateway = self._forwarding.gateway
        if gateway is not None:
            self._loop.call_soon(self._open_pool, route, gateway, started)
            return
        task = self._loop.create_task(connecting(self._loop, route.config.upstream, self))
        task.add_done_callback(partial(self._upstream_connect_done, route, started))
        self._upstream_task = task

    def _open_pool(self, route: ServerRoute, gateway: Http1Gateway, started: float) -> None:
        try:
            pool = Http1Pool(self._loop, route, gateway, self, self._runtime)
            self._upstream_connected(route, cast(asyncio.Transport, pool), started)
        except Exception:
            self._connect_failed_by_a_bug()

    def _upstream_connect_done(self, route: ServerRoute, started: float, task: Connecting) -> None:
        try:
            if task.cancelled():
                if self._connect_expired:
                    seconds = self._runtime.timeouts.connect
                    timeout = TimeoutError(f"no connection within {seconds:g} s")
                    self._upstream_unavailable(route, timeout)
                return  # else the connection ended
            failure = task.exception()
            if failure is None:
                connected, _ = task.result()
                self._upstream_connected(route, cast(asyncio.Transport, connected), started)
            elif isinstance(failure, OSError):
                self._upstream_unavailable(route, failure)
            else:
                raise failure
        except Exception:
            self._connect_failed_by_a_bug()

    def _connect_failed_by_a_bug(self) -> None:
        """In an ``except`` block: a bug must end this connection, not leave it hanging."""
        logs.log.exception("internal error while connecting upstream", extra={"fields": {}})
        self._abort(EndReason.INTERNAL_ERROR)

    def _upstream_unavailable(self, route: ServerRoute, exc: OSError) -> None:
        runtime = self._runtime
        reason = _upstream_error_reason(exc)
        runtime.observe_upstream_error(route.name, reason)
        logs.event(
            logging.WARNING,
            f"upstream {route.config.upstream} unavailable: {reason}",
            listener=runtime.name,
            route=route.name,
            peer=self._peer,
            error=str(exc),
        )
        # As an HTTP proxy answers: 504 when the connect timed out, else 502.
        status = 504 if reason == "connect_timeout" else 502
        bridge = self._forwarding.http2
        if self._forwarding.speaks_http and self._engine is not None:
            self._engine.send(_gateway_error(status))
        elif bridge is not None and self._engine is not None:
            self._answer_http2_unreachable(bridge, status)
            return
        self._finish(EndReason.UPSTREAM_UNAVAILABLE)

    def _answer_http2_unreachable(self, bridge: Http2Bridge, status: int) -> None:
        """HTTP/2: every request is answered ``status``, those the client sent meanwhile and
        those it sends for ``timeouts.lingering`` more; then GOAWAY names the last one and
        the connection ends (``_timer_fired``), so that the client's next connection tries
        the upstream again."""
        for data in self._early_data:
            bridge.receive_client(data)
        self._early_data.clear()
        bridge.upstream_unreachable(status)
        self._cancel_timer()
        self._timer = self._loop.call_later(self._runtime.timeouts.lingering, self._timer_fired)
        self._client_reading.resume(Pause.CONNECTING)
        self._exchange_http2(bridge)

    def _upstream_connected(
        self, route: ServerRoute, transport: asyncio.Transport, started: float
    ) -> None:
        if self._end is not None:
            transport.close()
            return
        runtime = self._runtime
        # The connect's deadline stays the connection's one timer: when it passes,
        # ``_timer_fired`` checks for idleness and sets the next deadline from the last
        # activity (a timer fewer per connection). Only an idle timeout shorter than the
        # connect's needs its deadline now.
        if runtime.timeouts.idle < runtime.timeouts.connect:
            self._cancel_timer()
            self._schedule_idle_check()
        self._upstream_task = None  # done: an idle connection does not keep the task
        runtime.observe_upstream_connect(route.name, self._loop.time() - started)
        transport.set_write_buffer_limits(high=runtime.limits.buffer_size)
        self._upstream = transport
        self._upstream_reading.attach(transport)
        if self._forwarding.preamble:
            transport.write(self._forwarding.preamble)
        for data in self._early_data:
            self._write_upstream(data)
        self._early_data.clear()
        if self._forwarding.http2 is not None:  # it may have answered the upstream already
            self._exchange_http2(self._forwarding.http2)
        if self._client_done:
            self._end_upstream_writing()  # and the client, done, is not read again
        else:
            self._client_reading.resume(Pause.CONNECTING)

    def _to_upstream(self, data: bytes | memoryview) -> None:
        self._bytes_in += len(data)
        if self._bytes_in - self._counted_in >= COUNT_EVERY:
            self._count_bytes()
        upstream = self._upstream
        if upstream is None:
            bridge = self._forwarding.http2
            if bridge is not None and bridge.unreachable is not None:
                bridge.receive_client(data)  # answered by the bridge itself
                self._exchange_http2(bridge)
                return
            self._early_data.append(data)
            # All it sent so far waits here: at most buffer_size and one read.
            if self._bytes_in > self._runtime.limits.buffer_size:
                self._client_reading.pause(Pause.CONNECTING)
        elif self._forwarding.passthrough:  # the common case, without a call more
            upstream.write(data)
        else:
            self._write_upstream(data)

    def _write_upstream(self, data: bytes | memoryview) -> None:
        assert self._upstream is not None
        forwarding = self._forwarding
        if forwarding.passthrough:
            self._upstream.write(data)
            return
        if forwarding.http2 is not None:
            forwarding.http2.receive_client(data)
            self._exchange_http2(forwarding.http2)
            return
        if self._refused_request is not None:
            return  # nothing after a refused request reaches the upstream
        try:
            out = forwarding.to_upstream(data)
        except HTTPRefused as refused:
            self._refuse_request(refused)
            return
        if out:
            self._upstream.write(out)
        self._answer_requests()
        if forwarding.holding:
            self._client_reading.pause(Pause.UPGRADE_PENDING)  # until the upstream answers

    def _refuse_request(self, refused: HTTPRefused) -> None:
        """A request with ambiguous framing (smuggling) is never forwarded. What came before
        it is; the upstream's write side is closed so that it answers those requests and
        closes, and then the client gets the 400 after their responses, in order."""
        assert self._upstream is not None
        self._refused_request = refused
        self._observe_refused(refused.refusal)
        if refused.forward:
            self._upstream.write(refused.forward)
        self._client_reading.pause(Pause.REFUSED)
        self._upstream_write_eof()
        self._refusal_timer = self._loop.call_later(
            self._runtime.timeouts.connect, self._send_refusal
        )

    def _observe_refused(self, refusal: RequestRefusal) -> None:
        route = self._engine.route if self._engine else None
        outcome = self._outcome if isinstance(self._outcome, HandshakeComplete) else None
        name = route.name if route else "none"
        self._runtime.observe_refused_request(name, self._peer, refusal, outcome)

    def _answer_requests(self) -> None:
        """HTTP mode: answer the requests ``http_authorization`` refused (403, or 400 for an
        unsafe path), each once the upstream has answered every request before it; what the
        client sent after one is not read, nor forwarded, until its answer is sent."""
        forwarding = self._forwarding
        held = forwarding.answer_pending
        while self._refused_request is None and self._end is None and self._engine is not None:
            for refusal in forwarding.take_refusals():
                self._observe_refused(refusal)
            answer = forwarding.due_answer()
            if answer is None:
                break
            self._engine.send(answer.response)
            self._flush()
            if answer.close:
                self._finish(EndReason.HTTP_REFUSED)
                return
            try:
                out = forwarding.answered()
            except HTTPRefused as refused:
                self._refuse_request(refused)
                return
            if out and self._upstream is not None:
                self._upstream.write(out)
            if forwarding.holding:  # an Upgrade request was held behind the answer
                self._client_reading.pause(Pause.UPGRADE_PENDING)
        if forwarding.answer_pending:
            self._client_reading.pause(Pause.REFUSED)
        elif self._refused_request is None:
            self._client_reading.resume(Pause.REFUSED)
            if held and self._client_done and self._end is None:
                self._end_upstream_writing()  # held back by the answers (_on_client_closed)

    def _send_refusal(self) -> None:
        """Answer the refused request (once the upstream finished, or gave up on it)."""
        if self._refused_request is None or self._engine is None or self._end is not None:
            return
        if self._refusal_timer is not None:
            self._refusal_timer.cancel()
        self._engine.send(_bad_request(self._refused_request))
        self._refused_request = None
        self._finish(EndReason.HTTP_REFUSED)

    def upstream_data(self, data: bytes) -> None:
        """UpstreamOwner: the upstream sent ``data`` for the client."""
        engine = self._engine
        if self._end is not None or engine is None:
            return
        if not engine.handshake_complete:
            # The TLS session ended under us (the client's EOF without close_notify is fatal
            # to OpenSSL 3, an alert, a protocol error): nothing more can reach the client.
            self._finish(EndReason.CLIENT_GONE)
            return
        self._last_activity = self._loop.time()
        self._bytes_out += len(data)
        if self._bytes_out - self._counted_out >= COUNT_EVERY:
            self._count_bytes()
        forwarding = self._forwarding
        if forwarding.http2 is not None:
            forwarding.http2.receive_upstream(data)
            self._exchange_http2(forwarding.http2)
            return
        engine.send(data)
        self._flush()
        if not forwarding.passthrough:
            self._observe_response(data)

    def _exchange_http2(self, bridge: Http2Bridge) -> None:
        """HTTP/2 (the bridge's seam): what ``_pass_http2`` does, then end the connection
        after an error, or once its last stream finished after a GOAWAY."""
        self._pass_http2(bridge)
        if bridge.closed:
            self._finish(EndReason.HTTP2_ERROR)
        elif bridge.idle:
            self._finish(_http2_end(bridge))

    def _pass_http2(self, bridge: Http2Bridge) -> None:
        """Write what the bridge has for each side; count and log the requests it refused
        and its connection errors."""
        for refusal in bridge.take_refusals():
            self._observe_refused(refusal)
        for fault in bridge.take_faults():
            route = self._engine.route if self._engine else None
            self._runtime.observe_http2_error(route.name if route else "none", self._peer, fault)
        to_client = bridge.data_for_client()
        engine = self._engine
        if to_client and engine is not None and self._end is None and engine.handshake_complete:
            engine.send(to_client)
            self._flush()
        if self._upstream is not None:  # else kept until connected (the first exchange there)
            to_upstream = bridge.data_for_upstream()
            if to_upstream:
                self._upstream.write(to_upstream)

    def go_away(self) -> None:
        """Draining: an HTTP/2 client is told to open no more streams (GOAWAY)."""
        bridge = self._forwarding.http2
        if bridge is not None and self._end is None and self._upstream is not None:
            bridge.go_away()
            self._exchange_http2(bridge)

    def _observe_response(self, data: bytes) -> None:
        """HTTP mode: an Upgrade answered releases (or re-parses) the client's held bytes."""
        forwarding = self._forwarding
        was_holding = forwarding.holding
        try:
            released = forwarding.from_upstream(data)
        except HTTPRefused as refused:
            self._refuse_request(refused)
            return
        if released and self._upstream is not None:
            self._upstream.write(released)
        self._answer_requests()
        if was_holding and not forwarding.holding:
            self._client_reading.resume(Pause.UPGRADE_PENDING)

    def _count_bytes(self) -> None:
        """Add the bytes forwarded since the last call to the listener's counters."""
        runtime = self._runtime
        if self._bytes_in > self._counted_in:
            runtime.count_bytes("client_to_upstream", self._bytes_in - self._counted_in)
            self._counted_in = self._bytes_in
        if self._bytes_out > self._counted_out:
            runtime.count_bytes("upstream_to_client", self._bytes_out - self._counted_out)
            self._counted_out = self._bytes_out

    def upstream_eof(self) -> None:
        """UpstreamOwner: the upstream will send no more; tell the client, keep reading it."""
        self._upstream_done = True
        if self._end is not None or self._engine is None or self._transport is None:
            return
        if self._refused_request is not None:
            self._send_refusal()
            return
        if self._forwarding.http2 is not None:
            self._forwarding.http2.upstream_closed()
            self._exchange_http2(self._forwarding.http2)
            self._finish(EndReason.UPSTREAM_CLOSED)
            return
        forwarding = self._forwarding
        # A refused request's answer waited for content delimited by the close (HTTP mode;
        # passthrough never parses a request, and skipping it saves two Python calls).
        answer = None if forwarding.passthrough else forwarding.answer
        if answer is not None:
            self._engine.send(answer.response)
            self._finish(EndReason.HTTP_REFUSED)
            return
        self._engine.close()
        self._flush()
        if self._client_done:
            self._finish(EndReason.CLOSED)
        elif self._transport.can_write_eof():
            self._transport.write_eof()

    def upstream_lost(self, exc: Exception | None) -> None:
        """UpstreamOwner: the upstream connection is gone."""
        self._upstream = None
        if exc is not None:
            route = self._engine.route if self._engine else None
            self._runtime.observe_upstream_error(route.name if route else "none", "reset")
        if exc is not None:
            self._abort(EndReason.UPSTREAM_RESET)
        else:
            self._finish(EndReason.UPSTREAM_CLOSED)

    def upstream_backpressure(self, full: bool) -> None:
        """UpstreamOwner: the upstream reads slower than the client writes (``full``), or
        caught up."""
        if full:
            self._client_reading.pause(Pause.UPSTREAM_FULL)
        else:
            self._client_reading.resume(Pause.UPSTREAM_FULL)

    # Closing

    def _on_client_closed(self, clean: bool) -> None:
        self._client_done = True
        if not clean:
            logs.event(logging.DEBUG, "client closed without close_notify", peer=self._peer)
        bridge = self._forwarding.http2
        if bridge is not None:
            self._finish(_http2_end(bridge))  # HTTP/2 has no half-close: the connection is over
        elif self._upstream_done:
            self._finish(EndReason.CLOSED)
        elif self._upstream is not None:
            self._end_upstream_writing()

    def _end_upstream_writing(self) -> None:
        """The client is done: so is the upstream's request stream, once the requests held
        behind a local answer are forwarded (``_answer_requests`` calls this again then)."""
        forwarding = self._forwarding
        if forwarding.passthrough or not forwarding.answer_pending:
            self._upstream_write_eof()

    def _upstream_write_eof(self) -> None:
        assert self._upstream is not None
        if self._upstream.can_write_eof():
            self._upstream.write_eof()
        else:
            self._upstream.close()

    def shed(self) -> None:
        """``max_handshakes`` reached and this is the oldest handshake: drop it at once."""
        self._abort(EndReason.HANDSHAKE_SHED)

    def shutdown(self) -> None:
        """Drain timeout reached: end the connection now, with close_notify if possible; one
        still lingering is dropped (the proxy is stopping)."""
        if self._linger_left:
            self._stop_lingering()
        else:
            self._finish(EndReason.DRAIN_TIMEOUT)

    def _finish(self, end: EndReason) -> None:
        """End gracefully: close_notify to the client if its session is up, and both sockets
        closed once what is buffered for them is written."""
        if not self._ended(end):
            return
        if self._upstream is not None:
            self._upstream.close()
        if self._transport is not None:
            if self._engine is not None:
                if self._engine.handshake_complete:
                    self._engine.close()
                self._flush()
            self._close_client(end)

    def _close_client(self, end: EndReason) -> None:
        """Close the client's socket after its last bytes, lingering when it is owed an answer
        and may still be sending: FIN (``write_eof``, once the buffer is written), then read
        and discard what it sends, so that the close is not a reset that drops the answer at
        the client, until it closes too, ``timeouts.lingering`` passes or ``LINGER_BYTES``
        were discarded (nginx ``lingering_close``, Go net/http). Not for a client that is
        gone or done sending, nor when nothing is owed to it: timeouts (a silent or too slow
        client, idle or in its handshake) and the end of a drain close at once. The
        connection keeps its place in the listener's count (``max_connections``) until
        ``connection_lost``."""
        transport = self._transport
        assert transport is not None
        seconds = self._runtime.timeouts.lingering
        if (
            seconds <= 0
            or end in _NOTHING_OWED
            or (
                isinstance(self._outcome, HandshakeFailed)
                and self._outcome.reason is Reason.TIMEOUT
            )
            or self._client_done
            or transport.is_closing()
            or not transport.can_write_eof()
        ):
            transport.close()
            return
        transport.write_eof()
        self._linger_left = LINGER_BYTES
        self._timer = self._loop.call_later(seconds, self._stop_lingering)
        # Whatever paused the reading (the upstream's connect, a refusal pending) is moot now.
        self._client_reading = ReadGate()
        transport.resume_reading()

    def _discard(self, size: int) -> None:
        """Lingering: ``size`` bytes the client sent are dropped (never fed to the engine)."""
        self._linger_left = max(0, self._linger_left - size)
        if not self._linger_left:
            self._stop_lingering()

    def _stop_lingering(self) -> None:
        """Lingering is over (time, bytes, shutdown): drop the socket, whatever is buffered.
        Its answer had the lingering time to arrive; a client still sending that much is not
        waiting for it."""
        self._timer = None
        self._linger_left = 0
        if self._transport is not None:
            self._transport.abort()

    def _abort(self, end: EndReason) -> None:
        """End at once: both sockets dropped with whatever is buffered for them."""
        if not self._ended(end):
            return
        if self._upstream is not None:
            self._upstream.abort()
        if self._transport is not None:
            self._transport.abort()

    def _is_open(self) -> bool:
        """Not ended yet. A call, where an earlier ``self._end is None`` in the same function
        would be trusted across the call that ended it: by mypy, which then calls the test
        unreachable, and by the compiled module, which checks ``_end`` is the None it was."""
        return self._end is None

    def _ended(self, end: EndReason) -> bool:
        """Record why the connection ends and stop its timers and its upstream connect;
        false if it had already ended."""
        if self._end is not None:
            return False
        self._end = end
        self._ended_at = time.monotonic()
        self._cancel_timer()
        if self._feeding is not None:
            self._feeding.cancel()
        self._unfed = b""
        if self._upstream_task is not None and not self._upstream_task.done():
            self._upstream_task.cancel()
        return True

    def _schedule_idle_check(self) -> None:
        deadline = self._last_activity + self._runtime.timeouts.idle
        self._timer = self._loop.call_at(deadline, self._timer_fired)

    def _check_idle(self) -> None:
        if self._end is not None:
            return
        if self._loop.time() - self._last_activity >= self._runtime.timeouts.idle:
            logs.event(logging.INFO, "idle timeout", listener=self._runtime.name, peer=self._peer)
            self._finish(EndReason.IDLE_TIMEOUT)
        else:
            self._schedule_idle_check()


def _http2_end(bridge: Http2Bridge) -> EndReason:
    """How an HTTP/2 connection that ends without an error ended, for the access log."""
    return EndReason.CLOSED if bridge.unreachable is None else EndReason.UPSTREAM_UNAVAILABLE


# Ends after which the client is not owed a lingering close: it is gone, it was silent for
# ``timeouts.idle``, or the proxy is stopping.
_NOTHING_OWED: Final = frozenset(
    (EndReason.CLIENT_GONE, EndReason.IDLE_TIMEOUT, EndReason.DRAIN_TIMEOUT)
)


def _format_address(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address) if address else "-"


def _address(address: object) -> tuple[str, int] | None:
    """``(host, port)`` of a socket address (IPv6 ones carry flow info and scope too)."""
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None


def _bad_request(refused: HTTPRefused) -> bytes:
    body = b"Bad Request: the request's framing is ambiguous or malformed; it was not forwarded\n"
    return _http_error(refused.status, b"Bad Request", body)


def _gateway_error(status: int) -> bytes:
    phrase, body = GATEWAY_ERRORS[status]
    return _http_error(status, phrase, body)


def _http_error(status: int, phrase: bytes, body: bytes) -> bytes:
    """A complete response that ends the connection (RFC 9112 section 9.6)."""
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (status, phrase, len(body), body)
    )
