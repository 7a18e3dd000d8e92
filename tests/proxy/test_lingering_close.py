"""Lingering close: a refused client that keeps sending still reads why it was refused.

A TLS 1.3 client sends its request right after its Finished, before the server's verdict. If
the proxy closed its socket with those bytes unread, Linux would answer with a TCP reset, and
a reset makes the client's kernel drop what it received but had not read yet: the alert that
says why. The proxy half-closes instead and reads (and discards) what the client still sends
for a bounded time, so the alert and the FIN arrive in order and the client sees the alert.
"""

from __future__ import annotations

import contextlib
import select
import ssl
import time

import pytest

from mtlsproxy.pki import PkiFiles
from mtlsproxy.proxy.connection import LINGER_BYTES
from tests.proxy.conftest import ProxyFactory
from tests.proxy.harness import MemoryClient, Upstream, eventually

ALLOW = "spiffe_id: spiffe://example.org/ns/prod/sa/frontend"
PAYLOAD = 1 << 20  # the request the client sends after its Finished, unread by the proxy


def refusal_after_a_large_request(client: MemoryClient, size: int = PAYLOAD) -> str:
    """Finish the handshake, send ``size`` bytes of application data at once (as much as
    the socket takes, while reading what comes back), then read: the ``ssl`` reason of the
    alert that came back, or the name of the error that ended the connection instead."""
    client.finish_handshake()
    client.tls.write(b"x" * size)
    pending = memoryview(client.outgoing.read())
    sock = client.sock
    sock.setblocking(False)
    received = bytearray()
    try:
        while pending:
            readable, writable, _ = select.select([sock], [sock], [], 10)
            if not readable and not writable:
                return "TimeoutError"
            if writable:
                with contextlib.suppress(BlockingIOError):
                    pending = pending[sock.send(pending[: 256 * 1024]) :]
            if readable:
                received += sock.recv(65536)  # kept for after the sending, as a client would
        sock.setblocking(True)
        sock.settimeout(10)
        client.incoming.write(bytes(received))
        while True:
            try:
                if not client.tls.read(65536):
                    return "closed"
            except ssl.SSLWantReadError:
                data = sock.recv(65536)
                if not data:
                    client.incoming.write_eof()
                else:
                    client.incoming.write(data)
    except ssl.SSLError as error:
        return error.reason or str(error)
    except OSError as error:
        return type(error).__name__
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("cert", "alert"),
    [
        ("client-other", "TLSV1_ALERT_ACCESS_DENIED"),
        (None, "TLSV13_ALERT_CERTIFICATE_REQUIRED"),
    ],
)
def test_a_refused_client_that_keeps_sending_reads_the_alert(
    make_proxy: ProxyFactory, pki: PkiFiles, upstream: Upstream, cert: str | None, alert: str
) -> None:
    proxy = make_proxy(allow=[ALLOW], engine="native", min_version="1.3")
    for _ in range(3):
        client = MemoryClient(pki, proxy.port(), cert=cert)
        client.sock.sendall(client.client_hello())
        assert refusal_after_a_large_request(client) == alert
    assert upstream.connections == 0 and upstream.received == 0  # nothing discarded went on


def refused_and_handshaken(pki: PkiFiles, port: int) -> MemoryClient:
    """A client without a certificate, its TLS 1.3 handshake done: the proxy's verdict (the
    alert, then lingering) is on its way."""
    client = MemoryClient(pki, port, cert=None)
    client.sock.sendall(client.client_hello())
    client.finish_handshake()
    return client


def test_a_silent_refused_client_lingers_counted_then_is_closed(
    make_proxy: ProxyFactory, pki: PkiFiles
) -> None:
    """A client that neither reads nor closes holds its place in ``max_connections`` for
    ``timeouts.lingering``, no longer; the alert and the FIN were there to read all along."""
    proxy = make_proxy(allow=[ALLOW], engine="native", min_version="1.3", lingering="1s")
    client = refused_and_handshaken(pki, proxy.port())
    try:
        started = time.monotonic()
        time.sleep(0.3)
        assert proxy.active_connections() == 1  # lingering, still counted
        assert eventually(lambda: proxy.active_connections() == 0, timeout=5)
        assert 0.8 < time.monotonic() - started < 4
        client.sock.settimeout(5)
        with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
            client.receive_all()
    finally:
        client.sock.close()


def test_a_refused_client_that_closes_ends_the_lingering(
    make_proxy: ProxyFactory, pki: PkiFiles
) -> None:
    """The client read the alert and closed: the connection closes then, not at the end
    of ``timeouts.lingering``."""
    proxy = make_proxy(allow=[ALLOW], engine="native", min_version="1.3", lingering="30s")
    client = refused_and_handshaken(pki, proxy.port())
    client.sock.settimeout(5)
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
        client.receive_all()
    client.sock.close()
    assert eventually(lambda: proxy.active_connections() == 0, timeout=5)


def test_a_client_sending_past_the_bound_is_dropped(
    make_proxy: ProxyFactory, pki: PkiFiles, upstream: Upstream
) -> None:
    """Lingering discards at most ``LINGER_BYTES``: a client that sends more is dropped long
    before ``timeouts.lingering``, and none of it went anywhere."""
    proxy = make_proxy(allow=[ALLOW], engine="native", min_version="1.3", lingering="30s")
    client = refused_and_handshaken(pki, proxy.port())
    chunk = b"y" * (1 << 20)
    sent = 0
    client.sock.settimeout(10)
    started = time.monotonic()
    with contextlib.suppress(OSError):
        while sent < 4 * LINGER_BYTES:
            client.sock.sendall(chunk)  # raw bytes: lingering does not even parse them
            sent += len(chunk)
    client.sock.close()
    assert sent < 4 * LINGER_BYTES
    assert eventually(lambda: proxy.active_connections() == 0, timeout=5)
    assert time.monotonic() - started < 10
    assert upstream.connections == 0 and upstream.received == 0


def test_a_handshake_that_timed_out_closes_at_once(make_proxy: ProxyFactory, pki: PkiFiles) -> None:
    """A client too slow to finish its ClientHello is a silent peer, not one owed an answer
    it might miss: its connection ends when the handshake times out, without lingering."""
    proxy = make_proxy(engine="native", handshake_timeout="0.5s", lingering="30s")
    client = MemoryClient(pki, proxy.port())
    try:
        client.sock.sendall(client.client_hello()[:20])  # part of a hello, then nothing
        started = time.monotonic()
        assert eventually(lambda: proxy.active_connections() == 0, timeout=10)
        assert time.monotonic() - started < 5
    finally:
        client.sock.close()
