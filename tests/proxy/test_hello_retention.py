"""The proxy keeps no ClientHello past the handshake: a client's 64 KiB of offered lists cost
nothing for the life of its connection (the access log keeps the server name only)."""

from __future__ import annotations

from mtlsproxy.pki import PkiFiles
from tests.proxy.harness import Client, RunningProxy, eventually


def held(proxy: RunningProxy) -> list[tuple[object, object]]:
    async def look() -> list[tuple[object, object]]:
        return [(c._hello, c._sni) for c in proxy.proxy.listeners[0].connections]

    return proxy._call(look())  # type: ignore[no-any-return]


def test_an_admitted_connection_holds_only_the_server_name(make_proxy, pki: PkiFiles) -> None:
    for engine in ("openssl", "native"):
        proxy = make_proxy("require", engine=engine, log_level="info")
        with Client(pki, proxy.port()).connect() as tls:
            tls.sendall(b"x")
            assert tls.recv(1) == b"x"
            assert eventually(lambda p=proxy: held(p) == [(None, "localhost")]), held(proxy)
