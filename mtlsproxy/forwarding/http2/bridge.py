"""One HTTP/2 client connection bridged to one h2c upstream connection, stream by stream.

``Http2Bridge`` is sans-I/O: the proxy feeds it what each side sent (``receive_client``,
``receive_upstream``) and writes what ``data_for_client`` and ``data_for_upstream`` return; after
each call it takes the refused requests (``take_refusals``: counted and logged like HTTP/1.1's)
and the connection errors (``take_faults``), and ends the connection once ``closed``.

The client side is an ``h2`` server connection, the upstream side an ``h2`` client connection
speaking h2c with prior knowledge (RFC 9113 section 3.3). Each client stream that passes the
path rules opens one upstream stream; a refused one gets the proxy's answer (``requests``) and
never reaches the upstream (in audit mode, a refusal not ``enforced``, it is forwarded and only
reported through ``take_refusals``).

Flow control (RFC 9113 section 5.2): DATA received from one side is handed to the other side's
connection only as far as that side's window allows; the rest waits in the stream, and the
sender gets its window back (WINDOW_UPDATE) only for what was passed on. What waits is therefore
bounded by the windows we advertise: ``http2.initial_window_size`` per stream, and
``limits.buffer_size`` per connection and direction.

Resets (section 6.4) cross over: a client's RST_STREAM resets the upstream stream and the other
way round, with the same error code. More than ``http2.max_resets`` client streams reset (by the
client, or by us for its stream errors) within ``http2.reset_interval`` seconds end the
connection with GOAWAY ENHANCE_YOUR_CALM (the rapid reset attack, CVE-2023-44487). A connection
error of either side (section 5.4.1: ``h2`` has queued the GOAWAY) ends both, with a
``faults.Http2Fault``. ``go_away`` (the proxy draining) sends GOAWAY NO_ERROR to the client,
refuses streams it opens after that (REFUSED_STREAM, safe to retry: section 8.7) and lets the
open ones finish.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from h2.config import H2Configuration
from h2.connection import (
    ConnectionInputs,
    ConnectionState,
    H2Connection,
    H2ConnectionStateMachine,
)
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    InformationalResponseReceived,
    RemoteSettingsChanged,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import NoAvailableStreamIDError, ProtocolError, StreamClosedError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame

from mtlsproxy.config.model import Http2Settings
from mtlsproxy.forwarding.http.local import RequestRefusal
from mtlsproxy.forwarding.http2.faults import FaultReason, Http2Fault, Side, classify
from mtlsproxy.forwarding.http2.frames import BoundedFrameBuffer
from mtlsproxy.forwarding.http2.requests import (
    Header,
    HeaderRewriter,
    RequestHead,
    gateway_error_headers,
    refusal_headers,
    sensitive,
)

DEFAULT_WINDOW = 65_535  # RFC 9113 section 6.9.2: every window starts here
# Authorizes one request (method, target) for this connection's client: None admits it.
Authorize = Callable[[bytes, bytes], RequestRefusal | None]


@dataclass(slots=True)
class _Pending:
    """What one side sent on a stream that the other side's window has not taken yet."""

    data: bytearray = field(default_factory=bytearray)
    end: bool = False  # END_STREAM follows the data
    trailers: list[Header] | None = None  # sent with END_STREAM after the data
    done: bool = False  # END_STREAM was passed on


@dataclass(slots=True)
class _Stream:
    """A client stream and the upstream stream it was mapped to (None: answered by us)."""

    client_id: int
    upstream_id: int | None
    head: RequestHead | None = None  # what an answer of ours needs of the request
    to_upstream: _Pending = field(default_factory=_Pending)
    to_client: _Pending = field(default_factory=_Pending)

    def stream_id(self, side: Side) -> int | None:
        return self.client_id if side is Side.CLIENT else self.upstream_id

    def pending(self, to: Side) -> _Pending:
        return self.to_client if to is Side.CLIENT else self.to_upstream

    @property
    def finished(self) -> bool:
        return self.to_client.done and (self.to_upstream.done or self.upstream_id is None)


def _code_name(code: int) -> str:
    """An error code's name (RFC 9113 section 7), or its number when it has none."""
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)


def _other(side: Side) -> Side:
    return Side.UPSTREAM if side is Side.CLIENT else Side.CLIENT


class Http2Bridge:
    """One client HTTP/2 connection and its h2c upstream connection (see the module)."""

    def __init__(
        self,
        settings: Http2Settings,
        buffer_size: int,
        rewriter: HeaderRewriter,
        authorize: Authorize | None,
        clock: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._rewriter = rewriter
        self._authorize = authorize
        self._clock = clock
        window = min(settings.initial_window_size, buffer_size)
        self._client = new_connection(settings, window, buffer_size, server=True)
        self._upstream = new_connection(settings, window, buffer_size, server=False)
        self._streams: dict[Side, dict[int, _Stream]] = {Side.CLIENT: {}, Side.UPSTREAM: {}}
        self._resets: collections.deque[float] = collections.deque()
        self._refusals: list[RequestRefusal] = []
        self._faults: list[Http2Fault] = []
        self._to_client = b""  # frames of ours written outside h2's state machine (go_away)
        self._last_stream: int | None = None  # set by go_away: streams above it are refused
        self._upstream_gone = False
        self.unreachable: int | None = None  # the status every request gets: no upstream
        self.closed = False  # a connection error: write what is pending, then end both

    # What the proxy calls

    @property
    def preamble(self) -> bytes:
        """The upstream connection's preface (RFC 9113 section 3.4), written on connect."""
        return self._upstream.data_to_send()

    def receive_client(self, data: bytes | memoryview) -> None:
        self._receive(Side.CLIENT, data)

    def receive_upstream(self, data: bytes) -> None:
        self._receive(Side.UPSTREAM, data)

    def data_for_client(self) -> bytes:
        out, self._to_client = self._to_client + self._client.data_to_send(), b""
        return out

    def data_for_upstream(self) -> bytes:
        return self._upstream.data_to_send()

    def take_refusals(self) -> list[RequestRefusal]:
        refusals, self._refusals = self._refusals, []
        return refusals

    def take_faults(self) -> list[Http2Fault]:
        faults, self._faults = self._faults, []
        return faults

    @property
    def idle(self) -> bool:
        """After ``go_away`` or the upstream's GOAWAY: every stream finished."""
        return (self._last_stream is not None or self._upstream_gone) and not self._streams[
            Side.CLIENT
        ]

    def go_away(self) -> None:
        """Draining: GOAWAY NO_ERROR naming the last stream we take (RFC 9113 section 6.8);
        streams opened after it are refused, those before it finish."""
        if self._last_stream is not None or self.closed:
            return
        self._last_stream = self._client.highest_inbound_stream_id
        frame = GoAwayFrame(0, last_stream_id=self._last_stream, error_code=ErrorCodes.NO_ERROR)
        self._to_client += self._client.data_to_send() + frame.serialize()

    def upstream_unreachable(self, status: int) -> None:
        """No upstream connection could be made: every request is answered ``status`` (502;
        504 when the connect timed out), as an HTTP/1.1 client is, both those received and
        those that follow, until ``go_away`` (the proxy calls it after a while: a client
        that waits for our SETTINGS before its first request, as gRPC does, sends it only
        after the connect has failed)."""
        if self.closed or self.unreachable is not None:
            return
        self.unreachable = status
        for stream in list(self._streams[Side.CLIENT].values()):
            if stream.upstream_id is None or stream.head is None:
                continue  # answered by us already
            del self._streams[Side.UPSTREAM][stream.upstream_id]
            del self._streams[Side.CLIENT][stream.client_id]
            self._answer(stream.client_id, *gateway_error_headers(stream.head, status))

    def upstream_closed(self) -> None:
        """The upstream connection ended: its open streams can get no answer."""
        self._upstream_gone = True
        for stream in list(self._streams[Side.CLIENT].values()):
            if stream.upstream_id is not None:
                self._reset(Side.CLIENT, stream, ErrorCodes.INTERNAL_ERROR)
        self.go_away()

    # Events

    def _receive(self, side: Side, data: bytes | memoryview) -> None:
        if self.closed:
            return
        connection = self._connection(side)
        try:
            events = connection.receive_data(data)
        except ProtocolError as error:  # h2 queued its GOAWAY
            self._fail(classify(side, error))
            return
        for event in events:
            try:
                self._dispatch(side, event)
            except ProtocolError as error:  # passing it on broke a rule of the other side
                with contextlib.suppress(ProtocolError):
                    connection.close_connection(ErrorCodes.INTERNAL_ERROR)
                self._fail(classify(side, error))
            if self.closed:
                return

    def _dispatch(self, side: Side, event: Event) -> None:
        if isinstance(event, RequestReceived) and side is Side.CLIENT:
            self._on_request(event)
        elif isinstance(event, ResponseReceived | InformationalResponseReceived):
            self._on_response(event.stream_id, event.headers, event)
        elif isinstance(event, DataReceived):
            self._on_data(side, event)
        elif isinstance(event, TrailersReceived):
            self._on_trailers(side, event.stream_id, event.headers)
        elif isinstance(event, StreamEnded):
            self._on_end(side, event.stream_id)
        elif isinstance(event, StreamReset):
            self._on_reset(side, event)
        elif isinstance(event, WindowUpdated) and event.stream_id:
            self._pump_stream(side, event.stream_id)  # more window on that stream only
        elif isinstance(event, WindowUpdated | RemoteSettingsChanged):
            self._pump_all(side)  # more window to send to ``side``
        elif isinstance(event, ConnectionTerminated):
            self._on_goaway(side, event)

    def _on_request(self, event: RequestReceived) -> None:
        client_id, headers = event.stream_id, event.headers
        if self._last_stream is not None and client_id > self._last_stream:
            self._client.reset_stream(client_id, ErrorCodes.REFUSED_STREAM)
            return
        head = RequestHead.of(headers)
        refusal = self._authorize(head.method, head.target) if self._authorize else None
        if refusal is not None and refusal.enforced:
            self._refuse(client_id, head, head.refusal(refusal))
            return
        if refusal is not None:  # audit mode: forwarded below, only reported
            self._refusals.append(head.refusal(refusal))
        if self.unreachable is not None:
            self._answer(client_id, *gateway_error_headers(head, self.unreachable))
            return
        end = event.stream_ended is not None  # END_STREAM on the HEADERS: one frame, not two
        try:
            upstream_id = self._upstream.get_next_available_stream_id()
            self._upstream.send_headers(upstream_id, self._rewriter.request(headers), end)
        except (ProtocolError, NoAvailableStreamIDError):  # the upstream's stream limit
            self._client.reset_stream(client_id, ErrorCodes.REFUSED_STREAM)
            return
        stream = _Stream(client_id, upstream_id, head)
        stream.to_upstream.done = end  # the StreamEnded that follows finds it passed on
        self._streams[Side.CLIENT][client_id] = stream
        self._streams[Side.UPSTREAM][upstream_id] = stream

    def _refuse(self, client_id: int, head: RequestHead, refusal: RequestRefusal) -> None:
        """Answer a request the path rules refused: it never reaches the upstream."""
        self._refusals.append(refusal)
        self._answer(client_id, *refusal_headers(head, refusal))

    def _answer(self, client_id: int, headers: list[Header], body: bytes) -> None:
        """Our own response on a client stream: ``headers``, and ``body`` as the client's window
        takes it (none: the headers end the stream)."""
        if not body:
            self._client.send_headers(client_id, headers, end_stream=True)
            return
        self._client.send_headers(client_id, headers)
        stream = _Stream(client_id, None)
        stream.to_client.data += body
        stream.to_client.end = True
        self._streams[Side.CLIENT][client_id] = stream
        self._pump(stream, Side.CLIENT)

    def _on_response(
        self,
        upstream_id: int,
        headers: list[Header],
        event: ResponseReceived | InformationalResponseReceived,
    ) -> None:
        stream = self._streams[Side.UPSTREAM].get(upstream_id)
        if stream is None:
            return
        end = isinstance(event, ResponseReceived) and event.stream_ended is not None
        headers = sensitive(headers)
        self._send(stream, Side.CLIENT, lambda c, i: c.send_headers(i, headers, end_stream=end))
        if end:
            stream.to_client.done = True
            self._forget_if_finished(stream)

    def _on_data(self, side: Side, event: DataReceived) -> None:
        source = self._connection(side)
        stream = self._streams[side].get(event.stream_id)
        size = event.flow_controlled_length or 0
        data = event.data or b""
        if stream is None or stream.stream_id(_other(side)) is None:
            source.acknowledge_received_data(size, event.stream_id)  # refused: dropped
            return
        if size > len(data):  # padding: nothing to pass on, so its window comes back now
            source.acknowledge_received_data(size - len(data), event.stream_id)
        pending = stream.pending(_other(side))
        pending.data += data
        if event.stream_ended is not None:  # END_STREAM goes on the last DATA frame passed on
            pending.end = True
        self._pump(stream, _other(side))

    def _on_trailers(self, side: Side, stream_id: int, headers: list[Header]) -> None:
        stream = self._streams[side].get(stream_id)
        if stream is not None:
            rewriter = self._rewriter
            trailers = rewriter.trailers(headers) if side is Side.CLIENT else sensitive(headers)
            stream.pending(_other(side)).trailers = trailers

    def _on_end(self, side: Side, stream_id: int) -> None:
        stream = self._streams[side].get(stream_id)
        if stream is None or stream.stream_id(_other(side)) is None:
            return
        pending = stream.pending(_other(side))
        if not pending.done:
            pending.end = True
            self._pump(stream, _other(side))

    def _on_reset(self, side: Side, event: StreamReset) -> None:
        # The client's own resets, and those h2 made for its stream errors ("MadeYouReset",
        # CVE-2025-8671: malformed frames that make the server reset), count alike.
        if side is Side.CLIENT and self._too_many_resets():
            return
        stream = self._streams[side].get(event.stream_id)
        if stream is None:
            return
        self._drop(stream)
        other = _other(side)
        other_id = stream.stream_id(other)
        if other_id is not None:
            code = event.error_code if event.remote_reset else ErrorCodes.CANCEL
            self._reset_quietly(other, other_id, code)

    def _too_many_resets(self) -> bool:
        """Rapid reset (CVE-2023-44487): past ``max_resets`` client resets within
        ``reset_interval`` seconds the connection ends with ENHANCE_YOUR_CALM."""
        now = self._clock()
        resets = self._resets
        resets.append(now)
        while resets and resets[0] <= now - self._settings.reset_interval:
            resets.popleft()
        if len(resets) <= self._settings.max_resets:
            return False
        detail = f"more than {self._settings.max_resets} stream resets within "
        detail += f"{self._settings.reset_interval:g} s"
        self._client.close_connection(ErrorCodes.ENHANCE_YOUR_CALM)
        self._fail(Http2Fault(Side.CLIENT, FaultReason.RAPID_RESET, detail, 11))
        return True

    def _on_goaway(self, side: Side, event: ConnectionTerminated) -> None:
        code = int(event.error_code or 0)
        if code != ErrorCodes.NO_ERROR:
            detail = f"GOAWAY {_code_name(code)}"
            if event.additional_data:
                detail += f": {event.additional_data[:100]!r}"
            self._fail(Http2Fault(side, FaultReason.PEER_GOAWAY, detail, code))
            return
        if side is Side.UPSTREAM:  # streams it did not take may be retried (section 6.8)
            last = event.last_stream_id or 0
            for stream in list(self._streams[Side.UPSTREAM].values()):
                if stream.upstream_id is not None and stream.upstream_id > last:
                    self._reset(Side.CLIENT, stream, ErrorCodes.REFUSED_STREAM)
            self._upstream_gone = True
            self.go_away()

    # Moving data

    def _pump_all(self, to: Side) -> None:
        for stream in list(self._streams[to].values()):
            self._pump(stream, to)

    def _pump_stream(self, to: Side, stream_id: int) -> None:
        stream = self._streams[to].get(stream_id)
        if stream is not None:
            self._pump(stream, to)

    def _pump(self, stream: _Stream, to: Side) -> None:
        """Pass on what waits for ``to`` as far as its windows allow, then END_STREAM or the
        trailers; the sender gets back the window of what was passed on."""
        pending = stream.pending(to)
        if pending.done or not (pending.data or pending.end):  # nothing waits: the usual case
            return
        send_id = stream.stream_id(to)
        if send_id is None:
            return
        sender, receiver = self._connection(to), self._connection(_other(to))
        from_id = stream.stream_id(_other(to))
        ended = False
        try:
            while pending.data:
                size = min(
                    len(pending.data),
                    sender.local_flow_control_window(send_id),
                    sender.max_outbound_frame_size,
                )
                if size <= 0:
                    return
                chunk = bytes(pending.data[:size])
                del pending.data[:size]
                ended = pending.end and pending.trailers is None and not pending.data
                sender.send_data(send_id, chunk, end_stream=ended)
                if from_id is not None:
                    receiver.acknowledge_received_data(size, from_id)
            if ended:
                pass
            elif pending.trailers is not None and pending.end:
                sender.send_headers(send_id, pending.trailers, end_stream=True)
            elif pending.end:
                sender.end_stream(send_id)
            else:
                return
        except StreamClosedError:  # ``to`` reset it meanwhile: its reset event cleans up
            self._give_back(stream, to)
        pending.done = True
        self._forget_if_finished(stream)

    def _send(self, stream: _Stream, to: Side, action: Callable[[H2Connection, int], None]) -> None:
        stream_id = stream.stream_id(to)
        if stream_id is None:
            return
        with contextlib.suppress(StreamClosedError):
            action(self._connection(to), stream_id)

    def _reset(self, side: Side, stream: _Stream, code: ErrorCodes) -> None:
        """Reset ``stream`` on ``side`` and forget it on both."""
        self._drop(stream)
        stream_id = stream.stream_id(side)
        if stream_id is not None:
            self._reset_quietly(side, stream_id, code)

    def _reset_quietly(self, side: Side, stream_id: int, code: int) -> None:
        with contextlib.suppress(ProtocolError):  # already closed on that side
            self._connection(side).reset_stream(stream_id, code)

    def _forget_if_finished(self, stream: _Stream) -> None:
        if stream.finished:
            self._drop(stream)

    def _drop(self, stream: _Stream) -> None:
        """Forget ``stream`` on both sides, giving back what waited in it."""
        self._streams[Side.CLIENT].pop(stream.client_id, None)
        if stream.upstream_id is not None:
            self._streams[Side.UPSTREAM].pop(stream.upstream_id, None)
        for to in Side:
            self._give_back(stream, to)

    def _give_back(self, stream: _Stream, to: Side) -> None:
        """Drop what waits for ``to`` and return its window to the sender's connection: DATA
        counts against the connection window even on a stream that is gone (RFC 9113
        section 6.9), so without this every reset with data waiting would shrink it for good."""
        pending = stream.pending(to)
        sender = _other(to)
        from_id = stream.stream_id(sender)
        if pending.data and from_id is not None:
            with contextlib.suppress(ProtocolError):
                self._connection(sender).acknowledge_received_data(len(pending.data), from_id)
        pending.data.clear()

    def _fail(self, fault: Http2Fault) -> None:
        """A connection error: GOAWAY to the side that made it (h2 queued it, or we did),
        GOAWAY to the other; the proxy ends the connection once this is written."""
        self._faults.append(fault)
        self.closed = True
        other = self._connection(_other(fault.side))
        code = ErrorCodes.NO_ERROR if fault.side is Side.CLIENT else ErrorCodes.INTERNAL_ERROR
        with contextlib.suppress(ProtocolError):
            other.close_connection(code)

    def _connection(self, side: Side) -> H2Connection:
        return self._client if side is Side.CLIENT else self._upstream


class _GoawayKeepsStreams(H2ConnectionStateMachine):
    """h2's connection states, except that a GOAWAY received leaves the connection open: a
    graceful GOAWAY (RFC 9113 section 6.8) ends no stream up to its last_stream_id, and h2
    would refuse their remaining frames. New streams are refused by the bridge itself."""

    def process_input(self, input_: ConnectionInputs) -> list[Event]:
        if input_ is ConnectionInputs.RECV_GOAWAY and self.state is not ConnectionState.CLOSED:
            return []
        return super().process_input(input_)


def new_connection(settings: Http2Settings, window: int, buffer: int, server: bool) -> H2Connection:
    """One side's ``h2`` connection with our SETTINGS (RFC 9113 section 6.5.2), the header
    list bound enforced from the first frame, and a connection window of ``buffer``."""
    config = H2Configuration(
        client_side=not server,
        header_encoding=None,
        validate_inbound_headers=True,
        normalize_inbound_headers=False,
        validate_outbound_headers=False,
        # what we send was validated on the way in, or is ours: see ``requests.sensitive``
        normalize_outbound_headers=False,
    )
    connection = H2Connection(config)
    connection.state_machine = _GoawayKeepsStreams()
    connection.incoming_buffer = BoundedFrameBuffer(
        2 * settings.max_header_list_size, server=server
    )
    values: dict[SettingCodes | int, int] = {
        SettingCodes.MAX_CONCURRENT_STREAMS: settings.max_concurrent_streams,
        SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_header_list_size,
        SettingCodes.INITIAL_WINDOW_SIZE: window,
        SettingCodes.ENABLE_PUSH: 0,
    }
    connection.local_settings = Settings(client=not server, initial_values=values)
    connection.decoder.max_header_list_size = settings.max_header_list_size
    connection.initiate_connection()
    if buffer > DEFAULT_WINDOW:
        connection.increment_flow_control_window(buffer - DEFAULT_WINDOW)
    return connection
