"""Hostile clients over real sockets: a client that floods records the engine answers and never
reads. Memory stays bounded, good clients keep being served."""

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
from tests.proxy.harness import Client, RunningProxy, Upstream, eventually

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


@pytest.mark.parametrize("engine", ["openssl", "native"])
def test_a_client_that_never_reads_its_key_update_replies_is_paused(
    make_proxy, pki: PkiFiles, upstream: Upstream, engine: str
) -> None:
    """KeyUpdate(update_requested) by the thousand, nothing read: each is answered (both
    engines), the answers stay within ``buffer_size`` plus one read's worth, the client stops
    being read; once it reads, the proxy reads it again and the session still works."""
    proxy = make_proxy("require", engine=engine, log_level="info")
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
