"""Bad input, odd timing and failing upstreams: each ends in a clean close or alert, a counted
metric and no byte to the upstream, never a hang or an unbounded buffer."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

import h11
import pytest

from mtlsproxy.pki import PkiFiles
from tests.proxy.harness import (
    Client,
    MemoryClient,
    Upstream,
    eventually,
    read_until_closed,
    refused_by,
    send_raw,
    sha256,
)


def test_client_hello_one_byte_at_a_time(make_proxy, pki: PkiFiles, upstream: Upstream) -> None:
    proxy = make_proxy("require")
    client = MemoryClient(pki, proxy.port())
    hello = client.client_hello()
    for byte in hello:
        client.sock.sendall(bytes([byte]))
        time.sleep(0.0005)
    client.finish_handshake()
    client.send(b"split hello")
    client.close_notify()
    data, clean = client.receive_all()
    assert data == b"split hello" and clean
    assert proxy.handshakes(result="ok") == 1


@pytest.mark.parametrize(
    ("payload", "answer"),
    [
        (os.urandom(512), b""),
        (b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", b""),  # a ServerHello where a hello goes
        (b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", b"HTTP/1.1 400 Bad Request"),
    ],
    ids=["garbage", "wrong-handshake-message", "plain-http"],
)
def test_not_a_client_hello_is_closed_and_counted(
    make_proxy, upstream: Upstream, payload: bytes, answer: bytes
) -> None:
    proxy = make_proxy("require")
    response = send_raw(proxy.port(), payload)
    if answer:
        assert response.startswith(answer)
        assert b"TLS" in response
    else:
        assert not response.startswith(b"HTTP") and len(response) <= 7  # nothing or one alert
    failed = proxy.handshakes(result="failed", step="client_hello")
    assert failed == 1
    assert upstream.connections == 0


def test_garbage_reasons(make_proxy, upstream: Upstream) -> None:
    proxy = make_proxy("require")
    for payload in (b"\x00\x01\x02 hello?", b"GET / HTTP/1.0\r\n\r\n"):
        send_raw(proxy.port(), payload)
    # Malformed TLS: a ClientHello whose body ends inside its random.
    send_raw(proxy.port(), b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03\x00\x00")
    assert proxy.handshakes(reason="not_tls") == 2
    assert proxy.handshakes(reason="malformed") == 1


def test_truncated_client_hello_then_eof(make_proxy, pki: PkiFiles, upstream: Upstream) -> None:
    proxy = make_proxy("require")
    client = MemoryClient(pki, proxy.port())
    client.sock.sendall(client.client_hello()[:60])
    client.sock.shutdown(socket.SHUT_WR)
    assert read_until_closed(client.sock) == b""
    client.close()
    assert proxy.handshakes(result="failed", step="client_hello", reason="peer_closed") == 1


@pytest.mark.parametrize("sent", ["nothing", "truncated-hello", "hello-only"])
def test_silent_client_times_out(make_proxy, pki: PkiFiles, upstream: Upstream, sent) -> None:
    proxy = make_proxy("require", handshake_timeout="300ms")
    client = MemoryClient(pki, proxy.port())
    hello = client.client_hello()
    if sent == "truncated-hello":
        client.sock.sendall(hello[:60])
    elif sent == "hello-only":
        client.sock.sendall(hello)
    started = time.monotonic()
    read_until_closed(client.sock)
    assert time.monotonic() - started < 3
    client.close()
    step = {"nothing": "client_hello", "truncated-hello": "client_hello"}.get(
        sent, "client_certificate"
    )
    assert proxy.handshakes(result="failed", step=step, reason="timeout") == 1
    assert proxy.active_connections() == 0


def test_upstream_down(make_proxy, pki: PkiFiles) -> None:
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    proxy = make_proxy("require", upstream_address=f"127.0.0.1:{closed_port}")
    assert refused_by(Client(pki, proxy.port())) != ""
    assert proxy.handshakes(result="ok") == 1
    assert proxy.sample("mtlsproxy_upstream_errors_total", reason="connect_refused") == 1


def test_upstream_closing_early(make_proxy, pki: PkiFiles) -> None:
    def hang_up(sock: socket.socket, server: Upstream) -> None:
        sock.sendall(b"bye\n")
        sock.close()

    early = Upstream(hang_up)
    try:
        proxy = make_proxy("require", upstream_address=f"127.0.0.1:{early.port}")
        client = MemoryClient(pki, proxy.port())
        client.sock.sendall(client.client_hello())
        client.finish_handshake()
        data, clean = client.receive_all()
        client.close()
    finally:
        early.stop()
    assert data == b"bye\n"
    assert clean, "the upstream's FIN should become close_notify"


def test_half_close_both_ways(make_proxy, pki: PkiFiles, upstream: Upstream) -> None:
    """The client's close_notify becomes a FIN upstream; the echo upstream answers after that
    FIN, and the answer still reaches the client, followed by close_notify."""
    proxy = make_proxy("require")
    client = MemoryClient(pki, proxy.port())
    client.sock.sendall(client.client_hello())
    client.finish_handshake()
    payload = os.urandom(300_000)
    client.send(payload)
    client.close_notify()
    data, clean = client.receive_all()
    client.close()
    assert sha256(data) == sha256(payload)
    assert clean


@pytest.mark.slow
def test_64_mib_each_way(make_proxy, pki: PkiFiles, upstream: Upstream) -> None:
    proxy = make_proxy("require")
    size = 64 * 1024 * 1024
    payload = os.urandom(1024 * 1024) * (size // (1024 * 1024))
    client = MemoryClient(pki, proxy.port())
    client.sock.sendall(client.client_hello())
    client.finish_handshake()
    echoed = client.exchange(payload)
    client.close()
    assert len(echoed) == size
    assert sha256(echoed) == sha256(payload)
    assert proxy.sample("mtlsproxy_bytes_total", direction="client_to_upstream") == size
    assert proxy.sample("mtlsproxy_bytes_total", direction="upstream_to_client") == size


def test_slow_upstream_pauses_the_client(make_proxy, pki: PkiFiles) -> None:
    """An upstream that does not read: the proxy stops reading the client instead of
    buffering; what it took is bounded by its buffer plus the kernel's socket buffers."""
    release = threading.Event()

    def stalled(sock: socket.socket, server: Upstream) -> None:
        release.wait(10)
        while sock.recv(1 << 20):
            pass

    slow = Upstream(stalled)
    try:
        proxy = make_proxy("require", upstream_address=f"127.0.0.1:{slow.port}")
        with Client(pki, proxy.port()).connect() as tls:
            tls.settimeout(2)
            sent = 0
            block = b"x" * 65536
            with pytest.raises(TimeoutError):
                while sent < 256 * 1024 * 1024:
                    tls.sendall(block)
                    sent += len(block)
            taken = proxy.sample("mtlsproxy_bytes_total", direction="client_to_upstream")
            release.set()
    finally:
        slow.stop()
    assert taken < 32 * 1024 * 1024, f"the proxy took {taken} bytes from the client"


def test_max_connections(make_proxy, pki: PkiFiles, upstream: Upstream) -> None:
    proxy = make_proxy("require", max_connections=2)
    first, second = Client(pki, proxy.port()).connect(), Client(pki, proxy.port()).connect()
    try:
        assert refused_by(Client(pki, proxy.port())) != ""
        assert proxy.sample("mtlsproxy_connections_rejected_total", reason="max_connections") == 1
    finally:
        first.close()
        second.close()
    deadline = time.monotonic() + 5
    while proxy.active_connections() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert Client(pki, proxy.port()).roundtrip(b"again") == b"again"


def test_idle_timeout(make_proxy, pki: PkiFiles, upstream: Upstream) -> None:
    proxy = make_proxy("require", idle_timeout="300ms")
    client = MemoryClient(pki, proxy.port())
    client.sock.sendall(client.client_hello())
    client.finish_handshake()
    client.send(b"hi")
    started = time.monotonic()
    data, clean = client.receive_all()
    client.close()
    assert data == b"hi" and clean
    assert 0.2 < time.monotonic() - started < 3


def test_idle_timeout_longer_than_the_connect_timeout(
    make_proxy, pki: PkiFiles, upstream: Upstream
) -> None:
    """The connect's deadline (2 s) stays the connection's timer once connected: its passing
    ends nothing, the idle deadline counts from the last byte either way."""
    proxy = make_proxy("require", idle_timeout="2500ms")
    client = MemoryClient(pki, proxy.port())
    client.sock.sendall(client.client_hello())
    client.finish_handshake()
    client.send(b"hi")
    time.sleep(1.5)
    client.send(b"again")  # past the connect deadline's check, not idle for 2.5 s yet
    last = time.monotonic()
    data, clean = client.receive_all()
    client.close()
    assert data == b"hiagain" and clean
    assert 2.2 < time.monotonic() - last < 4.5


def test_unix_socket_upstream(make_proxy, pki: PkiFiles, tmp_path) -> None:
    path = tmp_path / "app.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()

    def serve_one() -> None:
        conn, _ = listener.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data.upper())

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    try:
        proxy = make_proxy("require", upstream_address=f"unix:{path}")
        assert Client(pki, proxy.port()).roundtrip(b"over a unix socket") == b"OVER A UNIX SOCKET"
    finally:
        listener.close()
    thread.join(timeout=5)


def test_upstream_answer_after_a_ragged_client_eof(make_proxy, pki: PkiFiles) -> None:
    """The client ends its TCP stream without close_notify, then the upstream answers: OpenSSL
    3 treats that EOF as fatal, so the answer cannot be sent; the connection ends cleanly,
    counted in the access log, with no error escaping the event loop."""

    def slow_echo(sock: socket.socket, server: Upstream) -> None:
        data = sock.recv(65536)
        time.sleep(0.3)
        with contextlib.suppress(OSError):
            sock.sendall(data)
        sock.close()

    slow = Upstream(slow_echo)
    try:
        proxy = make_proxy("require", upstream_address=f"127.0.0.1:{slow.port}")
        client = MemoryClient(pki, proxy.port())
        client.sock.sendall(client.client_hello())
        client.finish_handshake()
        client.send(b"a request, then a FIN without close_notify")
        time.sleep(0.1)
        client.sock.shutdown(socket.SHUT_WR)
        read_until_closed(client.sock)
        client.close()
        assert eventually(lambda: proxy.active_connections() == 0, timeout=5)
    finally:
        slow.stop()


def test_the_plain_http_answer_is_a_well_formed_response(make_proxy) -> None:
    """An HTTP client parses our 400 exactly: its Content-Length is its body's length."""

    proxy = make_proxy("require")
    response = send_raw(proxy.port(), b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "localhost")]))
    client.send(h11.EndOfMessage())
    client.receive_data(response)
    client.receive_data(b"")
    head, body, end = client.next_event(), client.next_event(), client.next_event()
    assert isinstance(head, h11.Response) and head.status_code == 400
    assert isinstance(body, h11.Data) and body.data.endswith(b"a client certificate\n")
    assert isinstance(end, h11.EndOfMessage)
