"""Application data through each engine, cut at random places: every byte comes out, in order.

A regression test for the OpenSSL engine's single-buffer read: OpenSSL keeps an incomplete
record it took from the BIO, so the plaintext of one receive can exceed the ciphertext the BIO
still holds; data was left behind until the next receive (and lost at the end of a stream).
"""

from __future__ import annotations

import contextlib
import os
import random
import ssl

import pytest

from mtlsproxy.engine.events import ApplicationData, PeerClosed
from mtlsproxy.engine.openssl import OpenSSLEngine
from mtlsproxy.engine.selecting import SelectingEngine
from mtlsproxy.pki import PkiFiles
from tests.engine.native.harness import FakeClock, build_route, client_context, table


@pytest.mark.parametrize(
    "engine_class", [OpenSSLEngine, SelectingEngine], ids=["openssl", "native"]
)
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_byte_comes_out(
    pki: PkiFiles, engine_class: type, version: ssl.TLSVersion, seed: int
) -> None:
    engine = engine_class(table(build_route(pki)).select, FakeClock())
    context = client_context(pki, "client")
    context.minimum_version = context.maximum_version = version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    for _ in range(6):
        with contextlib.suppress(ssl.SSLWantReadError):
            client.do_handshake()
            break
        engine.receive(outgoing.read())
        incoming.write(engine.data_to_send())
    engine.receive(outgoing.read())
    assert engine.handshake_complete
    payload = os.urandom(1024 * 1024 + 777)
    client.write(payload)
    with contextlib.suppress(ssl.SSLWantReadError):
        client.unwrap()  # close_notify after the data
    wire = outgoing.read()
    rng = random.Random(seed)
    received, closed, offset = bytearray(), False, 0
    while offset < len(wire):
        size = rng.choice([1, 5, 100, 4096, 16411, 70000, 300000])
        for event in engine.receive(wire[offset : offset + size]):
            if isinstance(event, ApplicationData):
                received += event.data
            closed |= isinstance(event, PeerClosed)
        offset += size
    assert bytes(received) == payload
    assert closed
