"""Hostile clients over real sockets: a client that floods records the engine answers and never
reads, a slowloris of trickling ClientHellos, too many handshakes at once. Memory stays
bounded, good clients keep being served."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mtlsproxy.pki import PkiFiles
from tests.engine.native.tls13_client import APPLICATION_DATA, MiniClient
from tests.proxy.harness import Client, MemoryClient, RunningProxy, Upstream, eventually

BUFFER_SIZE = 64 * 1024  # conftest's limits.buffer_size
SMALL_SOCKET_BUFFER = 4096  # the kernel doubles it; pinned, it no longer grows


def mini_client(pki: PkiFiles) -> MiniClient:
    certs = x509.load_pem_x509_certificates(pki.client_cert.read_bytes())
    key = serialization.load_pem_private_key(pki.client_key.read_bytes(), None)
    chain = [c.public_bytes(serialization.Encoding.DER) for c in certs]
    return MiniClient(chain=chain, key=key)


def established(pki: PkiFiles, port: int) -> tuple[MiniClient, socket.socket]:
    """A raw TLS 1.3 session (the test client builds any record) with small socket buffers,
    so that what the client does not read piles up in the proxy, not the kernel, and a proxy
    that stops reading stops the client's sends soon."""
    client = mini_client(pki)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_SOCKET_BUFFER)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(5)
    sock.sendall(client.client_hello())
    while not client.server_finished:
        data = sock.recv(65536)
        assert data, "closed during the handshake"
        client.receive(data)
    sock.sendall(client.flight())
    return client, sock


def small_kernel_buffers(proxy: RunningProxy) -> None:
    """Accepted sockets inherit the listener's buffer sizes: small and fixed, the kernel takes
    a few KiB of what the client does not read, and the proxy's transport buffers the rest."""
    listening = proxy.proxy.listeners[0].server.sockets[0]  # type: ignore[union-attr]
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_SOCKET_BUFFER)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_SOCKET_BUFFER)


def client_side(proxy: RunningProxy) -> tuple[int, bool]:
    """The one connection's client write buffer and whether its client is not being read
    (nothing goes upstream here, so no other cause can hold: ``Pause.CLIENT_WRITE_FULL``)."""

    async def look() -> tuple[int, bool]:
        (connection,) = proxy.proxy.listeners[0].connections
        transport = connection._transport
        assert transport is not None
        return transport.get_write_buffer_size(), connection._client_reading.paused

    return proxy._call(look())  # type: ignore[no-any-return]


def test_a_client_that_never_reads_its_key_update_replies_is_paused(
    make_proxy, pki: PkiFiles, upstream: Upstream
) -> None:
    """KeyUpdate(update_requested) by the thousand, nothing read: OpenSSL answers each, the
    answers stay within ``buffer_size`` plus one read's worth, the client stops being read;
    once it reads, the proxy reads it again and the session still works. (The native engine
    owes one answer however many requests, and ends the session after 32: next test.)"""
    proxy = make_proxy("require", engine="openssl", log_level="info")
    small_kernel_buffers(proxy)
    client, sock = established(pki, proxy.port())
    assert eventually(lambda: upstream.connections == 1)
    sock.setblocking(False)
    records, pending, largest, stalled = 0, b"", 0, False
    while records < 40_000:  # ~1 MiB of records; some 30k fill what is unbounded otherwise
        if not pending:
            pending = b"".join(client.key_update(requested=True) for _ in range(500))
            records += 500
        if not select.select([], [sock], [], 0.5)[1]:
            stalled = True  # the proxy stopped reading us
            break
        pending = pending[sock.send(pending) :]
        largest = max(largest, client_side(proxy)[0])
    buffered, paused = client_side(proxy)
    largest = max(largest, buffered)
    assert largest <= BUFFER_SIZE + 32 * 1024, f"{largest} bytes of answers held for the client"
    assert stalled and paused, f"the client was read all along ({records} KeyUpdates)"

    # It reads: the proxy drains what it held, reads the client again, and the session works.
    deadline = time.monotonic() + 20
    ping_sent = False
    while len(client.app_data) < len(b"still here") and time.monotonic() < deadline:
        if not pending and not ping_sent:
            pending, ping_sent = client.seal(b"still here", APPLICATION_DATA), True
        readable, writable, _ = select.select([sock], [sock] if pending else [], [], 1)
        if readable:
            data = sock.recv(1 << 20)
            assert data, "the proxy closed the connection"
            client.receive(data)
        if writable:
            pending = pending[sock.send(pending) :]
    assert bytes(client.app_data) == b"still here"
    assert len(client.key_updates) >= records // 30  # answered (OpenSSL coalesces some)
    assert client_side(proxy) == (0, False)
    sock.close()


@pytest.mark.parametrize("engine", ["openssl", "native"])
def test_an_uploading_client_is_not_paused_by_the_download_it_does_not_read(
    make_proxy, pki: PkiFiles, engine: str
) -> None:
    """The pause is for answers to the client's own records. The upstream's bytes filling the
    client's write buffer stop the upstream (``CLIENT_FULL``), never the client's upload: an
    upstream that reads while it writes gets the whole upload from a client that reads nothing
    until it is done."""
    upload = 4 * 1024 * 1024

    def download_while_reading(sock: socket.socket, server: Upstream) -> None:
        def blast() -> None:
            with contextlib.suppress(OSError):
                for _ in range(64):
                    sock.sendall(b"d" * 256 * 1024)

        threading.Thread(target=blast, daemon=True).start()
        with contextlib.suppress(OSError):
            while data := sock.recv(1 << 20):
                server.received += len(data)

    busy = Upstream(download_while_reading)
    try:
        proxy = make_proxy("require", upstream_address=f"127.0.0.1:{busy.port}", engine=engine)
        small_kernel_buffers(proxy)
        with Client(pki, proxy.port()).connect() as tls:
            tls.settimeout(10)
            block = b"u" * 64 * 1024
            for _ in range(upload // len(block)):
                tls.sendall(block)
            assert eventually(lambda: busy.received == upload, timeout=10), busy.received
    finally:
        busy.stop()


def stalled_hello(pki: PkiFiles, port: int) -> socket.socket:
    """A connection that sent the first bytes of a ClientHello and nothing more."""
    hello = MemoryClient(pki, port)
    hello.sock.sendall(hello.client_hello()[:20])
    return hello.sock


def is_closed(sock: socket.socket, timeout: float) -> bool:
    """Whether the proxy closed ``sock`` within ``timeout`` seconds (it sends nothing else)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_max_handshakes_sheds_the_oldest_handshake(
    make_proxy, pki: PkiFiles, upstream: Upstream
) -> None:
    proxy = make_proxy("require", max_handshakes=3, handshake_timeout="10s", log_level="info")
    port = proxy.port()
    sessions = [Client(pki, port).connect() for _ in range(3)]  # admitted: not handshakes
    stalled = []
    for count in range(4, 7):
        stalled.append(stalled_hello(pki, port))
        assert eventually(lambda n=count: proxy.active_connections() == n)
    try:
        # A good client makes four handshakes in flight: the oldest stalled one goes.
        assert Client(pki, port).roundtrip(b"first") == b"first"
        assert is_closed(stalled[0], timeout=2)
        assert not any(is_closed(sock, timeout=0.1) for sock in stalled[1:])
        assert proxy.sample("mtlsproxy_connections_rejected_total", reason="handshake_shed") == 1
        # Three in flight again (the good one is done), then one more: the next oldest goes.
        stalled.append(stalled_hello(pki, port))
        assert Client(pki, port).roundtrip(b"second") == b"second"
        assert is_closed(stalled[1], timeout=2)
        assert not any(is_closed(sock, timeout=0.1) for sock in stalled[2:])
        assert proxy.sample("mtlsproxy_connections_rejected_total", reason="handshake_shed") == 2
        # Established sessions were never candidates.
        for session in sessions:
            session.sendall(b"alive")
            assert session.recv(5) == b"alive"
    finally:
        for sock in (*sessions, *stalled):
            sock.close()


def test_a_flood_of_trickling_hellos_leaves_room_for_good_clients(
    make_proxy, pki: PkiFiles, upstream: Upstream
) -> None:
    """More slowloris connections than ``max_handshakes``: the handshakes in flight never
    pass the limit and every good client gets through."""
    proxy = make_proxy("require", max_handshakes=8, handshake_timeout="10s", log_level="info")
    port = proxy.port()
    attackers: list[socket.socket] = []
    try:
        for round_ in range(5):
            attackers += [stalled_hello(pki, port) for _ in range(10)]
            assert Client(pki, port).roundtrip(b"good %d" % round_) == b"good %d" % round_
            # Open now: the attackers' handshakes, shed down to the limit.
            assert eventually(lambda: proxy.active_connections() <= 8)
        shed = proxy.sample("mtlsproxy_connections_rejected_total", reason="handshake_shed")
        assert shed >= 50 - 8
    finally:
        for sock in attackers:
            sock.close()


def test_the_handshake_timeout_counts_from_accept(
    make_proxy, pki: PkiFiles, upstream: Upstream
) -> None:
    """A client trickling its ClientHello, a byte every half second, is cut at
    ``timeouts.handshake`` after accept, however recent its last byte."""
    proxy = make_proxy("require", handshake_timeout="2s", log_level="info")
    client = MemoryClient(pki, proxy.port())
    hello = client.client_hello()
    started = time.monotonic()
    closed_after = None
    for byte in hello:
        with contextlib.suppress(OSError):
            client.sock.sendall(bytes([byte]))
        if is_closed(client.sock, timeout=0.5):
            closed_after = time.monotonic() - started
            break
    client.close()
    assert closed_after is not None and 1.8 <= closed_after <= 3.0, closed_after
    assert proxy.handshakes(result="failed", step="client_hello", reason="timeout") == 1


def test_max_handshakes_setting(tmp_path, pki: PkiFiles) -> None:
    """``limits.max_handshakes``: 1024 unless set, a positive integer."""
    from mtlsproxy.config import ConfigError, load_config
    from tests.proxy.conftest import render_config

    path = tmp_path / "proxy.yaml"
    path.write_text(render_config(pki, "127.0.0.1:9", max_handshakes=7))
    assert load_config(path).listeners[0].limits.max_handshakes == 7
    path.write_text(render_config(pki, "127.0.0.1:9").replace(" max_handshakes: 100,", ""))
    assert load_config(path).listeners[0].limits.max_handshakes == 1024
    path.write_text(render_config(pki, "127.0.0.1:9", max_handshakes=0))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (problem,) = caught.value.problems
    assert problem.key_path == "listeners[0].limits.max_handshakes"
    assert "at least 1" in problem.message


def test_a_key_update_flood_ends_a_native_session(
    make_proxy, pki: PkiFiles, upstream: Upstream
) -> None:
    """The native engine answers a run of KeyUpdate requests once, and past 32 without
    application data in between ends the session with unexpected_message: nothing piles up."""
    proxy = make_proxy("require", engine="native", log_level="info")
    client, sock = established(pki, proxy.port())
    assert eventually(lambda: upstream.connections == 1)
    with contextlib.suppress(OSError):
        sock.sendall(b"".join(client.key_update(requested=True) for _ in range(200)))
    received = b""
    with contextlib.suppress(OSError):
        while data := sock.recv(65536):
            received += data
    client.receive(received)
    assert len(client.key_updates) <= 1
    assert client.alerts and client.alerts[-1] == 10  # unexpected_message
    assert eventually(lambda: not proxy.proxy.listeners[0].connections)
    sock.close()


def test_a_burst_of_costly_records_does_not_hold_the_event_loop(
    make_proxy, pki: PkiFiles, upstream: Upstream
) -> None:
    """Thousands of KeyUpdates in one read (OpenSSL answers every one): fed a slice at a time,
    they keep the event loop (other connections, /healthz) turning every few ms."""
    proxy = make_proxy("require", engine="openssl", log_level="info")
    client, sock = established(pki, proxy.port())
    burst = b"".join(client.key_update(requested=True) for _ in range(6000))  # 162 KB
    gaps: list[float] = []

    def tick(last: float) -> None:
        now = time.perf_counter()
        gaps.append(now - last)
        if len(gaps) < 1000:
            proxy.loop.call_later(0.005, tick, now)

    proxy.loop.call_soon_threadsafe(tick, time.perf_counter())
    with contextlib.suppress(TimeoutError):
        sock.sendall(burst)
    assert eventually(lambda: client_side(proxy)[1] or len(gaps) > 300, timeout=20)
    sock.close()
    assert max(gaps) < 0.25, f"the event loop stood still for {max(gaps):.3f} s"
