"""HTTP/2 clients to an HTTP/1.1 upstream: each request stream as one HTTP/1.1 exchange.

``Http1Gateway`` stands where an h2c upstream would stand behind ``bridge.Http2Bridge``: the
bridge keeps everything about the client's connection (its ``h2`` server connection, the
limits and abuse protections, the path rules, the identity headers added and the client's
copies removed) and writes its upstream HTTP/2 connection into ``receive``; the gateway, an
``h2`` server connection kept in memory, answers it from ``data_to_send``. Nothing of the
client side is duplicated here: a stream reaches the gateway only once the bridge admitted and
rewrote it.

Each request stream becomes an HTTP/1.1 request on an upstream connection of its own
(``take_opens``; the proxy opens it and writes ``request_data``):

- the request line from ``:method`` and ``:path``, ``Host`` from ``:authority`` (RFC 9113
  section 8.3.1), the other fields as they are (names are lower case: RFC 9110 section 5.1
  makes them case-insensitive), several ``cookie`` fields joined with "; " (RFC 9113 section
  8.2.3), ``connection: close``: the connection serves this one exchange;
- the content with the ``content-length`` the client declared (``h2`` checked the DATA
  against it: RFC 9113 section 8.1.1), or chunked (RFC 9112 section 7.1) when it declared
  none; ``content-length: 0`` for a POST, PUT or PATCH without content (RFC 9110 section 8.6);
- trailers are dropped (RFC 9110 section 6.5.1 lets a recipient discard them).

The response is parsed strictly (``httptools``, every leniency off, as ``forwarding.http``
does), its connection-specific fields removed (RFC 9113 section 8.2.2), and sent back as
HEADERS and DATA on the stream; no content after a response to HEAD, nor a 204 or 304 (RFC
9110 section 6.4.1); 1xx responses are not passed on (``100 Continue`` concerns the
connection that is ours). A response that does not parse is a 502 (or the stream reset when
its head was sent); an unreachable upstream a 502, a connect timeout a 504
(``upstream_failed``): one stream's failure is not the connection's.

Flow control (RFC 9113 section 5.2): the request's DATA is acknowledged (its window given
back to the bridge, and so to the client) only when the proxy takes it to write it
(``request_data``), which it does not while that upstream's write buffer is full; the response
waits in the stream while the bridge's window is closed, and the proxy stops reading that
upstream while ``backlog`` is past its bound.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import httptools
from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    Event,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError

from mtlsproxy.config.model import Http2Settings
from mtlsproxy.forwarding.http.request import MAX_HEAD_BYTES, strict
from mtlsproxy.forwarding.http2.bridge import new_connection
from mtlsproxy.forwarding.http2.requests import Header

# RFC 9113 section 8.2.2: meaningless (and malformed) on HTTP/2.
CONNECTION_FIELDS = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te")
)
_EXPECTS_CONTENT = frozenset((b"POST", b"PUT", b"PATCH"))
_HEAD_SLICE = 4096  # bytes fed to llhttp at a time until a response head is complete


class _Unreadable(Exception):
    """The upstream's response broke HTTP/1.1 (or came as an upgrade)."""


class _Response:
    """httptools protocol collecting one response for its exchange."""

    def __init__(self, exchange: _Exchange) -> None:
        self.exchange = exchange
        self.headers: list[Header] = []
        self.head_bytes = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value)
        if self.head_bytes > MAX_HEAD_BYTES:
            raise _Unreadable("response head too large")
        self.headers.append((name.lower(), value.strip(b" \t")))

    def on_headers_complete(self) -> None:
        self.exchange.on_head(self)

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        if not (exchange.response_done or exchange.complete):  # HEAD: what follows is not ours
            exchange.body += body

    def on_message_complete(self) -> None:
        self.exchange.on_complete()


@dataclass(slots=True)
class _Exchange:
    stream_id: int
    method: bytes
    out: bytearray = field(default_factory=bytearray)  # HTTP/1.1 bytes for the upstream
    unacked: int = 0  # flow-controlled bytes in ``out`` not yet given back
    chunked: bool = False
    parser: httptools.HttpResponseParser | None = None
    status: int = 0
    head: list[Header] | None = None  # the response head to send, once complete
    head_sent: bool = False
    body: bytearray = field(default_factory=bytearray)  # response content waiting for window
    complete: bool = False  # the response ended (END_STREAM follows the content)
    framed: bool = True  # content-length or chunked: else the content ends with the connection
    response_done: bool = False  # END_STREAM sent, or the stream reset: nothing more to do
    head_fed: int = 0  # bytes fed to the parser before the response head was complete

    def on_head(self, response: _Response) -> None:
        assert self.parser is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            if status == 101:
                raise _Unreadable("101 to a request without Upgrade")
            response.headers = []  # RFC 9110 section 15.2: not passed on
            return
        connection = {
            token.strip().lower()
            for name, value in response.headers
            if name == b"connection"
            for token in value.split(b",")
        }
        drop = CONNECTION_FIELDS | connection
        headers = [(b":status", str(status).encode())]
        headers += [(n, v) for n, v in response.headers if n not in drop]
        names = {n for n, _ in response.headers}
        self.framed = b"content-length" in names or b"transfer-encoding" in names
        self.status = status
        self.head = headers
        if self.method == b"HEAD" or status in (204, 304):
            self.complete = True  # RFC 9110 section 6.4.1: no content

    def on_complete(self) -> None:
        if self.head is not None:
            self.complete = True


class Http1Gateway:
    """An in-memory h2c upstream for ``Http2Bridge`` that speaks HTTP/1.1 upstream (see the
    module). ``stream_ids`` are those of the bridge's upstream connection."""

    def __init__(self, settings: Http2Settings, buffer_size: int) -> None:
        window = min(settings.initial_window_size, buffer_size)
        self._h2 = new_connection(settings, window, buffer_size, server=True)
        self._buffer_size = buffer_size
        self._exchanges: dict[int, _Exchange] = {}
        self._opens: list[int] = []
        self._closed: list[int] = []
        self._bad_responses = 0  # counted by the proxy (``take_bad_responses``)
        self.broken = False  # the bridge broke HTTP/2: it ends the connection itself

    # From and to the bridge

    def receive(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            events = self._h2.receive_data(data)
        except ProtocolError:
            self.broken = True
            return
        for event in events:
            self._dispatch(event)

    def data_to_send(self) -> bytes:
        return self._h2.data_to_send()

    # From and to the proxy's upstream connections

    def take_opens(self) -> list[int]:
        """Streams that need an upstream connection now."""
        opens, self._opens = self._opens, []
        return opens

    def take_closed(self) -> list[int]:
        """Streams whose upstream connection has nothing more to do: close it."""
        closed, self._closed = self._closed, []
        return closed

    def take_bad_responses(self) -> int:
        """Responses given up on since the last call (unparsable, or cut short)."""
        count, self._bad_responses = self._bad_responses, 0
        return count

    def request_data(self, stream_id: int) -> bytes:
        """What to write to ``stream_id``'s upstream; its window goes back to the bridge."""
        exchange = self._exchanges.get(stream_id)
        if exchange is None or not exchange.out:
            return b""
        data = bytes(exchange.out)
        exchange.out.clear()
        if exchange.unacked:
            with contextlib.suppress(ProtocolError):
                self._h2.acknowledge_received_data(exchange.unacked, stream_id)
            exchange.unacked = 0
        return data

    def backlog(self, stream_id: int) -> int:
        """Response bytes waiting for the bridge's window on ``stream_id``."""
        exchange = self._exchanges.get(stream_id)
        return len(exchange.body) if exchange is not None else 0

    @property
    def max_backlog(self) -> int:
        return self._buffer_size

    def response(self, stream_id: int, data: bytes) -> None:
        """Bytes the upstream of ``stream_id`` sent."""
        exchange = self._exchanges.get(stream_id)
        if exchange is None or exchange.response_done or exchange.complete:
            return
        assert exchange.parser is not None
        try:
            # llhttp holds a header line until it ends: until the head is complete, feed it in
            # slices and count them, so one endless line cannot grow past MAX_HEAD_BYTES.
            at = 0
            while exchange.head is None and at < len(data):
                if exchange.head_fed > MAX_HEAD_BYTES:
                    raise _Unreadable("response head too large")
                piece = data[at : at + _HEAD_SLICE]
                exchange.head_fed += len(piece)
                at += len(piece)
                exchange.parser.feed_data(piece)
            if at < len(data):
                exchange.parser.feed_data(data[at:] if at else data)
        except (httptools.HttpParserError, _Unreadable):
            self._unreadable(exchange)
            return
        self._pump(exchange)

    def upstream_failed(self, stream_id: int, status: int) -> None:
        """No connection to the upstream (502, or 504 when the connect timed out)."""
        exchange = self._exchanges.get(stream_id)
        if exchange is not None:
            self._answer(exchange, status)

    def upstream_closed(self, stream_id: int) -> None:
        """The upstream of ``stream_id`` closed: the end of unframed content, else too early."""
        exchange = self._exchanges.get(stream_id)
        if exchange is None or exchange.response_done or exchange.complete:
            return
        if exchange.head is not None and not exchange.framed:
            exchange.complete = True
            self._pump(exchange)
        else:
            self._unreadable(exchange)

    # Events of the bridge's upstream connection

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, RequestReceived):
            self._on_request(event)
        elif isinstance(event, DataReceived):
            exchange = self._exchanges.get(event.stream_id)
            size = event.flow_controlled_length or 0
            if exchange is None or exchange.response_done:
                with contextlib.suppress(ProtocolError):
                    self._h2.acknowledge_received_data(size, event.stream_id)
                return
            data = event.data or b""
            if exchange.chunked and data:
                exchange.out += b"%x\r\n%b\r\n" % (len(data), data)
            else:
                exchange.out += data
            exchange.unacked += size
        elif isinstance(event, StreamEnded):
            exchange = self._exchanges.get(event.stream_id)
            if exchange is not None and exchange.chunked:
                exchange.out += b"0\r\n\r\n"  # trailers dropped: RFC 9110 section 6.5.1
        elif isinstance(event, StreamReset):
            exchange = self._exchanges.pop(event.stream_id, None)
            if exchange is not None:
                exchange.response_done = True
                self._closed.append(event.stream_id)
        elif isinstance(event, WindowUpdated | RemoteSettingsChanged):
            for exchange in list(self._exchanges.values()):
                self._pump(exchange)

    def _on_request(self, event: RequestReceived) -> None:
        stream_id = event.stream_id
        exchange = _Exchange(stream_id, b"")
        self._exchanges[stream_id] = exchange
        head, chunked = request_head(event.headers or [], event.stream_ended is not None)
        if head is None:  # CONNECT: no HTTP/1.1 request carries it here
            exchange.method = b"CONNECT"
            self._answer(exchange, 501)
            return
        exchange.method = head.split(b" ", 1)[0]
        exchange.chunked = chunked
        exchange.out += head
        exchange.parser = strict(httptools.HttpResponseParser(_Response(exchange)))
        self._opens.append(stream_id)

    # Answers

    def _unreadable(self, exchange: _Exchange) -> None:
        self._bad_responses += 1
        if exchange.head_sent:
            self._reset(exchange, ErrorCodes.INTERNAL_ERROR)
        else:
            self._answer(exchange, 502)

    def _answer(self, exchange: _Exchange, status: int) -> None:
        """The proxy's own answer on the stream (it ends the exchange)."""
        body = b"" if exchange.method == b"HEAD" else _REASONS.get(status, b"error") + b"\n"
        exchange.head = [
            (b":status", str(status).encode()),
            (b"content-type", b"text/plain"),
            (b"content-length", str(len(body)).encode()),
        ]
        exchange.body = bytearray(body)
        exchange.complete = True
        exchange.head_sent = False
        self._pump(exchange)

    def _pump(self, exchange: _Exchange) -> None:
        """Send what the bridge's window takes: the head, the content, END_STREAM."""
        if exchange.response_done or exchange.head is None:
            return
        h2, stream_id = self._h2, exchange.stream_id
        try:
            if not exchange.head_sent:
                end = exchange.complete and not exchange.body
                h2.send_headers(stream_id, exchange.head, end_stream=end)
                exchange.head_sent = True
                if end:
                    self._done(exchange)
                    return
            while exchange.body:
                size = min(
                    len(exchange.body),
                    h2.local_flow_control_window(stream_id),
                    h2.max_outbound_frame_size,
                )
                if size <= 0:
                    return
                chunk = bytes(exchange.body[:size])
                del exchange.body[:size]
                h2.send_data(stream_id, chunk, end_stream=exchange.complete and not exchange.body)
                if exchange.complete and not exchange.body:
                    self._done(exchange)
                    return
            if exchange.complete:
                h2.end_stream(stream_id)
                self._done(exchange)
        except (StreamClosedError, ProtocolError):
            self._done(exchange)

    def _reset(self, exchange: _Exchange, code: ErrorCodes) -> None:
        with contextlib.suppress(ProtocolError):
            self._h2.reset_stream(exchange.stream_id, code)
        self._done(exchange)

    def _done(self, exchange: _Exchange) -> None:
        exchange.response_done = True
        exchange.body.clear()
        if self._exchanges.pop(exchange.stream_id, None) is not None:
            self._closed.append(exchange.stream_id)
            if exchange.unacked:  # the request's content not taken: its window comes back
                with contextlib.suppress(ProtocolError):
                    self._h2.acknowledge_received_data(exchange.unacked, exchange.stream_id)


_REASONS = {502: b"bad gateway", 504: b"gateway timeout", 501: b"not implemented"}


def request_head(headers: list[Header], ended: bool) -> tuple[bytes | None, bool]:
    """An HTTP/2 request's header block as an HTTP/1.1 request head (see the module), and
    whether its content goes chunked; None for CONNECT (RFC 9113 section 8.5)."""
    method = path = authority = b""
    fields: list[Header] = []
    cookies: list[bytes] = []
    host = b""
    length = False
    for name, value in headers:
        if name == b":method":
            method = value
        elif name == b":path":
            path = value
        elif name == b":authority":
            authority = value
        elif name.startswith(b":"):
            continue
        elif name == b"cookie":
            cookies.append(value)
        elif name == b"host":
            host = value
        elif name in CONNECTION_FIELDS:
            continue
        else:
            length = length or name == b"content-length"
            fields.append((name, value))
    if method == b"CONNECT":
        return None, False
    lines = [b"%b %b HTTP/1.1" % (method, path or b"/"), b"host: " + (authority or host)]
    lines += [name + b": " + value for name, value in fields]
    if cookies:
        lines.append(b"cookie: " + b"; ".join(cookies))
    chunked = not ended and not length
    if chunked:
        lines.append(b"transfer-encoding: chunked")
    elif ended and not length and method in _EXPECTS_CONTENT:
        lines.append(b"content-length: 0")
    lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n", chunked
