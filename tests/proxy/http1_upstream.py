"""An HTTP/1.1 upstream (``h11``) for the ``h2-to-http/1.1`` tests.

``H1Upstream`` answers every request with 200 and a JSON body: the method, target, header
fields as received, the request content's length and whether it came chunked. ``/no-content``
gets a 204, ``/slow`` waits a second first; HEAD gets the head a GET would (a
``content-length``, no content). It counts the connections it was given (``connections``).
"""

from __future__ import annotations

import contextlib
import json
import socket
import time

import h11

from tests.proxy.harness import Upstream


class H1Upstream(Upstream):
    def __init__(self) -> None:
        self.requests: list[dict] = []
        super().__init__(_serve_h1)


def _serve_h1(sock: socket.socket, server: Upstream) -> None:
    assert isinstance(server, H1Upstream)
    conn = h11.Connection(h11.SERVER)
    request: h11.Request | None = None
    size = 0
    with contextlib.suppress(OSError, h11.ProtocolError):
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = sock.recv(65536)
                conn.receive_data(data)
                if not data:
                    return
                continue
            if isinstance(event, h11.Request):
                request, size = event, 0
            elif isinstance(event, h11.Data):
                size += len(event.data)
            elif isinstance(event, h11.EndOfMessage) and request is not None:
                _answer(sock, conn, server, request, size)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                return


def _answer(
    sock: socket.socket, conn: h11.Connection, server: H1Upstream, request: h11.Request, size: int
) -> None:
    headers = [[n.decode(), v.decode()] for n, v in request.headers.raw_items()]
    seen = {
        "method": request.method.decode(),
        "target": request.target.decode(),
        "headers": headers,
        "size": size,
        "chunked": any(n.lower() == "transfer-encoding" for n, _ in headers),
    }
    server.requests.append(seen)
    if request.target == b"/slow":
        time.sleep(1)
    if request.target == b"/no-content":
        sock.sendall(conn.send(h11.Response(status_code=204, headers=[])))
        sock.sendall(conn.send(h11.EndOfMessage()))
        return
    body = json.dumps(seen).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    sock.sendall(conn.send(h11.Response(status_code=200, headers=head)))
    if request.method != b"HEAD":
        sock.sendall(conn.send(h11.Data(data=body)))
    sock.sendall(conn.send(h11.EndOfMessage()))
