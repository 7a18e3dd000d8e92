"""HTTP/2 on both sides of the proxy for tests: an h2c upstream and a raw h2-over-TLS client.

``H2Upstream`` answers every request with 200, a JSON body of the request's header fields as it
received them (pseudo-headers included), the request content's length and its trailers, and
trailers of its own (``x-upstream-trailer``). It records the streams the proxy reset.
``H2Client`` drives an ``h2`` client connection over a real TLS socket with ALPN ``h2``, so a
test can send what no well-behaved client would (hostile frames, raw bytes).
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from mtlsproxy.pki import PkiFiles
from tests.proxy.harness import Upstream

Headers = list[tuple[bytes, bytes]]


class H2Upstream(Upstream):
    """An h2c (prior knowledge) server on 127.0.0.1, answering as the module says."""

    def __init__(self, acknowledge: bool = True) -> None:
        self.acknowledge = acknowledge  # False: never grants window back (a stalled app)
        self.received = 0  # DATA bytes, all streams
        self.requests: list[Headers] = []
        self.resets: list[int] = []  # error codes of RST_STREAM frames received
        self.lock = threading.Lock()
        super().__init__(_serve_h2)


def _serve_h2(sock: socket.socket, server: Upstream) -> None:
    assert isinstance(server, H2Upstream)
    config = h2.config.H2Configuration(client_side=False, header_encoding=None)
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    streams: dict[int, dict] = {}
    with contextlib.suppress(OSError, h2.exceptions.ProtocolError):
        while data := sock.recv(65536):
            for event in conn.receive_data(data):
                _H2Handler.event(server, conn, streams, event)
            sock.sendall(conn.data_to_send())


class _H2Handler:
    @staticmethod
    def event(
        server: H2Upstream, conn: h2.connection.H2Connection, streams: dict, event: object
    ) -> None:
        if isinstance(event, h2.events.RequestReceived):
            streams[event.stream_id] = {"headers": event.headers, "size": 0, "trailers": []}
            with server.lock:
                server.requests.append(list(event.headers))
        elif isinstance(event, h2.events.DataReceived):
            streams[event.stream_id]["size"] += len(event.data)
            with server.lock:
                server.received += len(event.data)
            if server.acknowledge:
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.TrailersReceived):
            streams[event.stream_id]["trailers"] = event.headers
        elif isinstance(event, h2.events.StreamEnded):
            stream = streams.pop(event.stream_id)
            # reset by a later frame of the same read: nothing to answer
            with contextlib.suppress(h2.exceptions.ProtocolError):
                _H2Handler._answer(conn, event.stream_id, stream)
        elif isinstance(event, h2.events.StreamReset):
            streams.pop(event.stream_id, None)
            with server.lock:
                server.resets.append(int(event.error_code))

    @staticmethod
    def _answer(conn: h2.connection.H2Connection, stream_id: int, stream: dict) -> None:
        def text(pairs: Headers) -> list[list[str]]:
            return [[n.decode(), v.decode()] for n, v in pairs]

        body = json.dumps({
            "headers": text(stream["headers"]),
            "size": stream["size"],
            "trailers": text(stream["trailers"]),
        }).encode()  # fmt: skip
        conn.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"application/json")])
        conn.send_data(stream_id, body)
        conn.send_headers(stream_id, [(b"x-upstream-trailer", b"yes")], end_stream=True)


@dataclass
class Response:
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    trailers: Headers = field(default_factory=list)
    reset: int | None = None  # the RST_STREAM error code, if the stream was reset

    @property
    def status(self) -> int:
        return int(dict(self.headers)[b":status"])

    def header(self, name: bytes) -> bytes | None:
        return dict(self.headers + self.trailers).get(name)

    def json(self) -> dict:
        return json.loads(self.body)


class H2Client:
    """An HTTP/2 client over TLS with a client certificate; raw access for hostile tests."""

    def __init__(
        self,
        pki: PkiFiles,
        port: int,
        cert: str | None = "client",
        strict: bool = True,
        alpn: bool = True,
    ) -> None:
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        if alpn:  # else HTTP/2 with prior knowledge
            context.set_alpn_protocols(["h2"])
        if cert is not None:
            context.load_cert_chain(pki.directory / f"{cert}.crt", pki.directory / f"{cert}.key")
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        self.alpn = self.sock.selected_alpn_protocol()
        # strict=False: send whatever headers a test asks for (malformed ones included)
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=strict,
            normalize_outbound_headers=strict,
        )
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        self.flush()
        self.responses: dict[int, Response] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False

    def flush(self) -> None:
        """Send what h2 has; a proxy that closed already makes ``closed`` true instead."""
        out = self.conn.data_to_send()
        if out:
            try:
                self.sock.sendall(out)
            except OSError:
                self.closed = True

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are; a proxy that already closed is what hostile tests expect."""
        with contextlib.suppress(OSError):
            self.sock.sendall(data)

    def send_while_window(self, stream_id: int, data: bytes, wait: float = 0.5) -> int:
        """Send what the windows allow, reading WINDOW_UPDATEs, until none came for ``wait``
        seconds; returns how much was sent."""
        sent = 0
        self.sock.settimeout(wait)
        while sent < len(data):
            size = min(
                len(data) - sent,
                self.conn.local_flow_control_window(stream_id),
                self.conn.max_outbound_frame_size,
            )
            if size > 0:
                self.conn.send_data(stream_id, data[sent : sent + size])
                self.flush()
                sent += size
                continue
            try:
                self.read_once()
            except TimeoutError:
                break
        return sent

    def request(
        self,
        path: str = "/",
        method: str = "GET",
        headers: Headers = (),  # type: ignore[assignment]
        body: bytes = b"",
        trailers: Headers = (),  # type: ignore[assignment]
    ) -> int:
        """Send one request; returns its stream id."""
        stream_id = self.conn.get_next_available_stream_id()
        head = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", b"localhost"),
            (b":path", path.encode()),
            *headers,
        ]
        ends_here = not body and not trailers
        self.conn.send_headers(stream_id, head, end_stream=ends_here)
        self.responses[stream_id] = Response()
        self.sock.settimeout(10)
        while body:  # as far as the proxy's windows allow, then wait for WINDOW_UPDATE
            size = min(
                len(body),
                self.conn.local_flow_control_window(stream_id),
                self.conn.max_outbound_frame_size,
            )
            if size == 0:
                self.flush()
                self.read_once()
                continue
            chunk, body = body[:size], body[size:]
            self.conn.send_data(stream_id, chunk, end_stream=not body and not trailers)
        if trailers:
            self.conn.send_headers(stream_id, list(trailers), end_stream=True)
        self.flush()
        return stream_id

    def get(self, path: str = "/", **options: object) -> Response:
        stream_id = self.request(path, **options)  # type: ignore[arg-type]
        return self.wait(stream_id)

    def wait(self, stream_id: int, timeout: float = 10) -> Response:
        """Read until ``stream_id`` ended or was reset (or the connection closed)."""
        self.sock.settimeout(timeout)
        while not self._done(stream_id) and not self.closed:
            self.read_once()
        return self.responses[stream_id]

    def read_until_closed(self, timeout: float = 10) -> None:
        self.sock.settimeout(timeout)
        while not self.closed:
            self.read_once()

    def _done(self, stream_id: int) -> bool:
        response = self.responses[stream_id]
        return response.reset is not None or getattr(response, "ended", False)

    def read_once(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (ConnectionError, ssl.SSLError):
            data = b""
        if not data:
            self.closed = True
            return
        for event in self.conn.receive_data(data):
            self._event(event)
        self.flush()

    def _event(self, event: object) -> None:
        stream_id = getattr(event, "stream_id", None)
        response = self.responses.get(stream_id) if stream_id else None
        if isinstance(event, h2.events.ResponseReceived) and response:
            response.headers = list(event.headers)
        elif isinstance(event, h2.events.DataReceived) and response:
            response.body += event.data
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.TrailersReceived) and response:
            response.trailers = list(event.headers)
        elif isinstance(event, h2.events.StreamEnded) and response:
            response.ended = True  # type: ignore[attr-defined]
        elif isinstance(event, h2.events.StreamReset) and response:
            response.reset = int(event.error_code)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
