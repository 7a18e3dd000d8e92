"""A client with Nagle's algorithm on (Python's ``ssl``, many libraries) holds its first request
until its Finished is acknowledged. When nothing of ours follows the Finished (no session
ticket: the native engine issues none to a client admitted in audit mode, ``would_refuse``),
only quick-ACK mode keeps the kernel's delayed ACK (40 ms on Linux) out of every connection's
first exchange (``ClientConnection._ack_the_client_flight_at_once``)."""

from __future__ import annotations

import socket
import ssl
import statistics
import sys
import time

import pytest

from mtlsproxy.pki import PkiFiles
from tests.proxy.conftest import ProxyFactory
from tests.proxy.harness import Client, echo_through

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="delayed ACK timing is Linux's"
)


def first_exchange_seconds(client: Client) -> float:
    """Connect, handshake, and one byte echoed through the upstream, Nagle left on."""
    raw = socket.create_connection(("127.0.0.1", client.port), timeout=10)
    assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
    started = time.perf_counter()
    with client.context().wrap_socket(raw, server_hostname="localhost") as tls:
        assert echo_through(tls, b"x") == b"x"
        return time.perf_counter() - started


@pytest.mark.parametrize(
    ("engine", "cert", "result"),
    [
        ("native", "client-other", "would_refuse"),  # no ticket: the ACK is sent at once
        ("native", "client", "ok"),  # a ticket carries the ACK
        ("openssl", "client", "ok"),  # OpenSSL's ticket carries it
    ],
)
def test_no_delayed_ack_wait_before_the_first_request(
    make_proxy: ProxyFactory, pki: PkiFiles, engine: str, cert: str, result: str
) -> None:
    allow = ["spiffe_id: spiffe://example.org/ns/prod/sa/frontend"]
    proxy = make_proxy(mode="require", allow=allow, enforce=False, engine=engine)
    client = Client(pki, proxy.port(), cert=cert, minimum_version=ssl.TLSVersion.TLSv1_3)
    first_exchange_seconds(client)  # warm-up
    median = statistics.median(first_exchange_seconds(client) for _ in range(7))
    assert proxy.handshakes(result=result) == 8
    # ~2-6 ms on a loaded machine; a delayed ACK alone is 40 ms.
    assert median < 0.030, f"median first exchange {median * 1000:.1f} ms"
