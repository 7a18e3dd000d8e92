"""Once the handshake is over, no engine keeps the ClientHello: not the parsed hello, not its
bytes, not the reader that assembled them (a 64 KiB hello would otherwise be held for the
connection's life)."""

from __future__ import annotations

import gc
import ssl
import tracemalloc
import weakref

import pytest

from mtlsproxy.engine.events import ClientHelloReceived, HandshakeComplete
from mtlsproxy.engine.openssl import OpenSSLEngine
from mtlsproxy.engine.selecting import SelectingEngine
from mtlsproxy.pki import PkiFiles
from mtlsproxy.policy.model import ClientAuthMode
from mtlsproxy.routing.routes import RouteTable, ServerRoute
from tests.engine.native.harness import FakeClock, build_route, client_context, run_handshake
from tests.engine.native.test_engine import mini

BIG = ((0xFF00, bytes(60_000)),)  # one 60 KB extension of an unassigned type


@pytest.fixture(scope="module")
def route(pki: PkiFiles) -> ServerRoute:
    return build_route(pki, ClientAuthMode.REQUIRE)


def native_connection(route: ServerRoute, pki: PkiFiles) -> tuple[SelectingEngine, weakref.ref]:
    server = SelectingEngine(RouteTable(route).select, FakeClock())
    client = mini(pki, extra_extensions=BIG)
    events = server.receive(client.client_hello())
    received = events[0]
    assert isinstance(received, ClientHelloReceived)
    hello = weakref.ref(received.hello)
    client.receive(server.data_to_send())
    assert isinstance(server.receive(client.flight())[0], HandshakeComplete)
    server.data_to_send()
    return server, hello


def test_the_native_path_drops_the_hello(route, pki) -> None:
    server, hello = native_connection(route, pki)
    gc.collect()
    assert hello() is None, gc.get_referrers(hello())
    assert server._reader is None


def test_the_openssl_path_drops_the_hello(route, pki) -> None:
    server = SelectingEngine(RouteTable(route).select, FakeClock())
    outcome = run_handshake(server, client_context(pki, version=ssl.TLSVersion.TLSv1_2))
    assert outcome.complete is not None and server.delegated
    received = outcome.events[0]
    assert isinstance(received, ClientHelloReceived)
    hello = weakref.ref(received.hello)
    outcome.events.clear()
    del received
    gc.collect()
    assert hello() is None
    openssl = server.chosen
    assert isinstance(openssl, OpenSSLEngine)
    assert openssl._hello_reader is None and server._reader is None


def test_memory_held_per_connection_after_a_large_hello(route, pki) -> None:
    """tracemalloc: twenty established connections that each sent a 60 KB ClientHello hold
    what connections with an ordinary hello hold, within a few KiB."""
    native_connection(route, pki)  # warm caches
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = [native_connection(route, pki)[0] for _ in range(20)]
        gc.collect()
        per_connection = (tracemalloc.get_traced_memory()[0] - before) / len(held)
    finally:
        tracemalloc.stop()
    assert per_connection < 24 * 1024, per_connection
