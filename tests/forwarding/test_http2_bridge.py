"""``forwarding.http2.Http2Bridge`` without sockets: an ``h2`` client and an ``h2`` server on
either side of it, bytes moved by hand. What it holds is bounded by the windows it advertises
(it grants WINDOW_UPDATE only for what the other side took), resets cross over with their
code, identity headers go on every stream, and GOAWAY drains."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import pytest
from h2.errors import ErrorCodes
from hpack import NeverIndexedHeaderTuple
from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame, RstStreamFrame

from mtlsproxy.config.model import Http2Settings
from mtlsproxy.forwarding.http2.bridge import Http2Bridge
from mtlsproxy.forwarding.http2.requests import HeaderRewriter

REQUEST = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"api"),
           (b":path", b"/upload")]  # fmt: skip
BUFFER = 128 * 1024
WINDOW = 16 * 1024


class Pipe:
    """client <-> bridge <-> upstream, each side a plain ``h2`` connection."""

    def __init__(self, settings: Http2Settings | None = None) -> None:
        rewriter = HeaderRewriter(
            [("X-Forwarded-Client-Cert", "Hash=abc")], remove=["x-ssl-client-verify"], keep=[]
        )
        self.now = 0.0
        self.bridge = Http2Bridge(
            settings or Http2Settings(initial_window_size=WINDOW), BUFFER, rewriter, None,
            lambda: self.now,
        )  # fmt: skip
        self.client = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.upstream = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.client.initiate_connection()
        self.upstream.initiate_connection()
        self.client_events: list[h2.events.Event] = []
        self.upstream_events: list[h2.events.Event] = []
        self.upstream.receive_data(self.bridge.preamble)
        self.move()

    def move(self) -> None:
        """Deliver everything pending, both ways, until nothing moves."""
        while True:
            moved = False
            if data := self.client.data_to_send():
                self.bridge.receive_client(data)
                moved = True
            if data := self.upstream.data_to_send():
                self.bridge.receive_upstream(data)
                moved = True
            if data := self.bridge.data_for_client():
                self.client_events += self.client.receive_data(data)
                moved = True
            if data := self.bridge.data_for_upstream():
                self.upstream_events += self.upstream.receive_data(data)
                moved = True
            if not moved:
                return

    def upstream_received(self) -> int:
        return sum(
            len(e.data) for e in self.upstream_events if isinstance(e, h2.events.DataReceived)
        )

    def send_all_the_client_can(self, stream_id: int, total: int) -> int:
        """Send up to ``total`` bytes, as far as the client's windows allow; returns how many."""
        sent = 0
        while sent < total:
            size = min(total - sent, self.client.local_flow_control_window(stream_id), 16384)
            if size <= 0:
                break
            self.client.send_data(stream_id, b"x" * size)
            sent += size
            self.move()
        return sent


def test_a_stalled_upstream_stops_the_client_at_the_windows_we_advertise() -> None:
    pipe = Pipe()
    pipe.client.send_headers(1, REQUEST)
    pipe.move()
    # The upstream reads nothing: it never acknowledges, so its window (64 KiB) fills.
    sent = pipe.send_all_the_client_can(1, 10 * BUFFER)
    received = pipe.upstream_received()
    assert received == 65_535  # the upstream's default stream window
    assert sent == received + WINDOW  # what waits in the bridge: our stream window, no more
    assert pipe.client.local_flow_control_window(1) == 0
    # The upstream drains: the bridge passes on what waited and grants the client more.
    pipe.upstream.acknowledge_received_data(received, 1)
    pipe.move()
    assert pipe.upstream_received() == sent
    assert pipe.client.local_flow_control_window(1) > 0


def test_the_connection_window_bounds_the_sum_over_streams() -> None:
    pipe = Pipe(Http2Settings(initial_window_size=BUFFER))
    streams = [1, 3, 5, 7]
    for stream_id in streams:
        pipe.client.send_headers(stream_id, REQUEST)
    pipe.move()
    held = sum(pipe.send_all_the_client_can(s, BUFFER) for s in streams)
    # at most the upstream's own connection window (64 KiB) plus ours (limits.buffer_size);
    # at least ours: h2 grants a connection WINDOW_UPDATE once half of it was passed on
    assert BUFFER <= held <= 65_535 + BUFFER


def test_identity_headers_replace_the_clients_on_every_stream() -> None:
    pipe = Pipe()
    forged = [(b"x-forwarded-client-cert", b"Hash=forged"), (b"x-ssl-client-verify", b"SUCCESS")]
    for stream_id in (1, 3):
        pipe.client.send_headers(stream_id, REQUEST + forged, end_stream=True)
    pipe.move()
    requests = [e for e in pipe.upstream_events if isinstance(e, h2.events.RequestReceived)]
    assert len(requests) == 2
    for request in requests:
        assert request.headers[:4] == REQUEST
        assert [(n, v) for n, v in request.headers if not n.startswith(b":")] == [
            (b"x-forwarded-client-cert", b"Hash=abc")
        ]


def test_credentials_go_upstream_never_indexed_and_end_stream_rides_on_the_last_frame() -> None:
    """The bridge sends without h2's outbound normalization: it keeps authorization and short
    cookies out of the HPACK tables itself, and passes END_STREAM on the frame that carried it
    instead of adding an empty DATA frame."""
    pipe = Pipe()
    secrets = [(b"authorization", b"Bearer t"), (b"cookie", b"s=1"), (b"x-other", b"v")]
    pipe.client.send_headers(1, REQUEST + secrets, end_stream=True)
    pipe.move()
    (request,) = [e for e in pipe.upstream_events if isinstance(e, h2.events.RequestReceived)]
    assert request.stream_ended is not None  # HEADERS with END_STREAM, no DATA frame
    fields = {name: header for name, header in ((h[0], h) for h in request.headers)}
    assert isinstance(fields[b"authorization"], NeverIndexedHeaderTuple)
    assert isinstance(fields[b"cookie"], NeverIndexedHeaderTuple)
    assert not isinstance(fields[b"x-other"], NeverIndexedHeaderTuple)
    pipe.upstream.send_headers(1, [(b":status", b"200"), (b"authorization", b"x")])
    pipe.upstream.send_data(1, b"ok", end_stream=True)
    pipe.move()
    (response,) = [e for e in pipe.client_events if isinstance(e, h2.events.ResponseReceived)]
    assert isinstance(response.headers[1], NeverIndexedHeaderTuple)
    data = [e for e in pipe.client_events if isinstance(e, h2.events.DataReceived)]
    assert [(e.data, e.stream_ended is not None) for e in data] == [(b"ok", True)]


def test_a_reset_stream_gives_back_the_connection_window_of_what_waited() -> None:
    pipe = Pipe()
    pipe.client.send_headers(1, REQUEST)
    pipe.move()
    sent = pipe.send_all_the_client_can(1, 10 * BUFFER)  # 64 KiB passed on, 16 KiB waiting
    assert pipe.client.outbound_flow_control_window < BUFFER - sent + 65_535
    pipe.upstream.reset_stream(1, ErrorCodes.CANCEL)
    pipe.move()
    # all of it is given back: passed on (the upstream took it) or dropped (waited in us)
    assert pipe.client.outbound_flow_control_window == BUFFER


def test_an_upstream_reset_reaches_the_client_with_its_code() -> None:
    pipe = Pipe()
    pipe.client.send_headers(1, REQUEST)
    pipe.move()
    pipe.upstream.reset_stream(1, ErrorCodes.REFUSED_STREAM)
    pipe.move()
    resets = [e for e in pipe.client_events if isinstance(e, h2.events.StreamReset)]
    assert [(r.stream_id, r.error_code) for r in resets] == [(1, ErrorCodes.REFUSED_STREAM)]


def frames(data: bytes) -> list[Frame]:
    out = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        out.append(frame)
        data = data[9 + length :]
    return out


def test_go_away_lets_open_streams_finish_and_refuses_new_ones() -> None:
    pipe = Pipe()
    pipe.client.send_headers(1, REQUEST, end_stream=True)
    pipe.move()
    pipe.bridge.go_away()
    # read as frames: h2's own client takes no frame of an open stream after a GOAWAY
    (goaway,) = frames(pipe.bridge.data_for_client())
    assert isinstance(goaway, GoAwayFrame)
    assert (goaway.error_code, goaway.last_stream_id) == (ErrorCodes.NO_ERROR, 1)
    pipe.client.send_headers(3, REQUEST, end_stream=True)  # too late
    pipe.bridge.receive_client(pipe.client.data_to_send())
    (refused,) = frames(pipe.bridge.data_for_client())
    assert isinstance(refused, RstStreamFrame) and refused.stream_id == 3
    assert refused.error_code == ErrorCodes.REFUSED_STREAM
    assert not pipe.bridge.idle  # stream 1 is still open
    pipe.upstream.send_headers(1, [(b":status", b"200")], end_stream=True)
    pipe.bridge.receive_upstream(pipe.upstream.data_to_send())
    (answer,) = frames(pipe.bridge.data_for_client())
    assert isinstance(answer, HeadersFrame) and "END_STREAM" in answer.flags
    assert pipe.bridge.idle


def test_rapid_resets_end_the_connection_with_enhance_your_calm() -> None:
    pipe = Pipe(Http2Settings(max_resets=5, reset_interval=1.0))
    for n in range(5):  # spread over time: within the rate
        pipe.now += 0.5
        stream_id = 1 + 2 * n
        pipe.client.send_headers(stream_id, REQUEST)
        pipe.client.reset_stream(stream_id, ErrorCodes.CANCEL)
        pipe.move()
    assert not pipe.bridge.closed
    for n in range(5, 12):  # all at once
        stream_id = 1 + 2 * n
        pipe.client.send_headers(stream_id, REQUEST)
        pipe.client.reset_stream(stream_id, ErrorCodes.CANCEL)
    pipe.move()
    assert pipe.bridge.closed
    (fault,) = pipe.bridge.take_faults()
    assert fault.reason == "rapid_reset"
    goaway = [e for e in pipe.client_events if isinstance(e, h2.events.ConnectionTerminated)]
    assert goaway[-1].error_code == ErrorCodes.ENHANCE_YOUR_CALM


def test_streams_go_on_after_a_graceful_goaway_from_the_upstream() -> None:
    pipe = Pipe()
    pipe.client.send_headers(1, REQUEST, end_stream=True)
    pipe.client.send_headers(3, REQUEST, end_stream=True)
    pipe.move()
    # The upstream will take no stream after 1: stream 3 may be retried by the client.
    pipe.bridge.receive_upstream(GoAwayFrame(0, last_stream_id=1).serialize())
    pipe.upstream.send_headers(1, [(b":status", b"200")], end_stream=True)
    pipe.bridge.receive_upstream(pipe.upstream.data_to_send())
    sent = frames(pipe.bridge.data_for_client())
    kinds = [(type(f).__name__, f.stream_id) for f in sent]
    assert ("RstStreamFrame", 3) in kinds and ("GoAwayFrame", 0) in kinds
    assert ("HeadersFrame", 1) in kinds
    assert not pipe.bridge.take_faults()


@pytest.mark.parametrize(("code", "name"), [(ErrorCodes.ENHANCE_YOUR_CALM, "ENHANCE_YOUR_CALM"),
                                            (0x99, "153")])  # fmt: skip
def test_an_upstream_goaway_with_an_error_ends_the_connection(code: int, name: str) -> None:
    pipe = Pipe()
    pipe.client.send_headers(1, REQUEST, end_stream=True)
    pipe.move()
    pipe.bridge.receive_upstream(GoAwayFrame(0, last_stream_id=1, error_code=code).serialize())
    assert pipe.bridge.closed
    (fault,) = pipe.bridge.take_faults()
    assert (fault.side, fault.reason, fault.detail) == ("upstream", "peer_goaway", f"GOAWAY {name}")
    (goaway,) = frames(pipe.bridge.data_for_client())
    assert isinstance(goaway, GoAwayFrame) and goaway.error_code == ErrorCodes.INTERNAL_ERROR


GRPC = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"api"),
        (b":path", b"/pkg.Service/Call"), (b"content-type", b"application/grpc")]  # fmt: skip
GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"api"), (b":path", b"/")]


def client_received(pipe: Pipe) -> tuple[dict[int, dict[bytes, bytes]], dict[int, bytes]]:
    """The response headers (trailers-only included) and the body of each stream."""
    heads: dict[int, dict[bytes, bytes]] = {}
    bodies: dict[int, bytes] = {}
    for event in pipe.client_events:
        if isinstance(event, h2.events.ResponseReceived):
            heads[event.stream_id] = dict(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            bodies[event.stream_id] = bodies.get(event.stream_id, b"") + event.data
    return heads, bodies


@pytest.mark.parametrize(("status", "text"), [(502, b"cannot be reached"), (504, b"in time")])
def test_an_unreachable_upstream_answers_each_request_until_goaway(
    status: int, text: bytes
) -> None:
    """Every request is answered as an HTTP/1.1 client is (gRPC: UNAVAILABLE, trailers-only;
    a HEAD without content): those sent while the upstream was tried and those after, until
    ``go_away`` names the last of them."""
    pipe = Pipe()
    get = pipe.client.get_next_available_stream_id()
    pipe.client.send_headers(get, GET, end_stream=True)
    head = pipe.client.get_next_available_stream_id()
    pipe.client.send_headers(head, [(b":method", b"HEAD"), *GET[1:]], end_stream=True)
    pipe.bridge.receive_client(pipe.client.data_to_send())
    pipe.bridge.upstream_unreachable(status)
    late = pipe.client.get_next_available_stream_id()
    pipe.client.send_headers(late, GRPC)  # its message never sent: answered all the same
    pipe.bridge.receive_client(pipe.client.data_to_send())
    pipe.client_events += pipe.client.receive_data(pipe.bridge.data_for_client())
    heads, bodies = client_received(pipe)
    assert heads[get][b":status"] == str(status).encode() and text in bodies[get]
    assert heads[head][b":status"] == str(status).encode() and head not in bodies
    assert heads[late][b"grpc-status"] == b"14" and text in heads[late][b"grpc-message"]
    assert not pipe.bridge.idle  # more requests may come, and get the same answer
    pipe.bridge.go_away()
    assert pipe.bridge.idle
    pipe.client_events += pipe.client.receive_data(pipe.bridge.data_for_client())
    (goaway,) = [e for e in pipe.client_events if isinstance(e, h2.events.ConnectionTerminated)]
    assert goaway.error_code == ErrorCodes.NO_ERROR and goaway.last_stream_id == late
