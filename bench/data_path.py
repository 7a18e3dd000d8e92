"""The proxy's own work for one keep-alive request, in process: instructions or microseconds.

A real ``ClientConnection`` with the native engine completes a real mutual-TLS 1.3 handshake
with Python's ``ssl`` (memory BIOs); its two transports and its event loop are stand-ins (no
socket, no system call, no uvloop), so what is counted is the Python path a request takes
through the proxy: the client's 1 KiB record in (``data_received``: decrypt, write upstream)
and the upstream's 1 KiB answer out (``upstream_data``: encrypt, write to the client). The
client's records are made before the count and its answers checked after it.

    python bench/data_path.py 20000                  # microseconds per request (noisy)
    for n in 1000 3000; do valgrind --tool=callgrind --collect-atstart=no \\
        --toggle-collect=builtin_sorted --callgrind-out-file=/dev/null \\
        python bench/data_path.py $n; done           # (collected at 3000 - at 1000) / 2000

The requests run inside one ``sorted()`` call, the C function the count is switched on for:
what callgrind collects is the requests and nothing else. ``--part read`` or ``write`` runs one
direction only. The read slices' time budget is lifted (callgrind would otherwise make every
read look costly: see ``valgrind_site``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import ssl
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from engine import client_context, route  # bench/engine.py

from mtlsproxy import pki
from mtlsproxy.config.model import Limits, Timeouts
from mtlsproxy.engine.selecting import SelectingEngine
from mtlsproxy.policy.model import ClientAuthMode
from mtlsproxy.proxy import connection
from mtlsproxy.routing.routes import RouteTable

REQUEST = 1024


class Handle:
    def cancel(self) -> None:
        pass


class Loop:
    """The calls a connection makes on its loop; its timers never fire here."""

    time = staticmethod(time.monotonic)

    def call_later(self, *_: object) -> Handle:
        return Handle()

    call_at = call_soon = call_later

    def create_task(self, coroutine: Any) -> SimpleNamespace:
        coroutine.close()  # the upstream connect: ``_upstream_connected`` is called instead
        return SimpleNamespace(done=lambda: True, cancel=lambda: None)


class Transport:
    """A socket that takes every write at once."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.write = self.written.append  # a C call, as uvloop's write

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name in ("peername", "sockname") else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def established(directory: Path) -> tuple[connection.ClientConnection, Transport, Transport, Any]:
    """A connection past its handshake and upstream connect, its two transports, the client."""
    files = pki.init(directory)
    server_route = route(files, ClientAuthMode.REQUIRE, allow=False)
    table = RouteTable(server_route)

    def nothing(*_: object, **__: object) -> None:
        return None

    runtime = SimpleNamespace(
        name="bench", timeouts=Timeouts(), limits=Limits(),
        new_engine=lambda peer: SelectingEngine(table.select, time.perf_counter),
        admit_connection=lambda connection, peer: True, handshake_done=nothing,
        release_connection=nothing, observe_handshake=nothing, observe_connection=nothing,
        observe_upstream_connect=nothing, observe_upstream_error=nothing, count_bytes=nothing,
    )  # fmt: skip
    proxy = connection.ClientConnection(cast(Any, runtime), cast(Any, Loop()))
    client_side, upstream_side = Transport(), Transport()
    proxy.connection_made(cast(Any, client_side))
    context = client_context(files, True, ssl.TLSVersion.TLSv1_3)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    for _ in range(5):
        with contextlib.suppress(ssl.SSLWantReadError):
            client.do_handshake()
        proxy.data_received(outgoing.read())  # the hello, then the flight up to Finished
        incoming.write(b"".join(client_side.written))  # the answer, then a session ticket
        client_side.written.clear()
        if proxy._outcome is not None:
            break
    if proxy._outcome is None or not proxy._engine or not proxy._engine.handshake_complete:
        raise SystemExit(f"the handshake did not complete: {proxy._outcome}")
    proxy._upstream_connected(server_route, cast(Any, upstream_side), 0.0)
    return proxy, client_side, upstream_side, (client, incoming, outgoing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("requests", type=int)
    parser.add_argument("--part", choices=("both", "read", "write"), default="both")
    args = parser.parse_args()
    connection.FEED_BUDGET = 3600.0
    with tempfile.TemporaryDirectory() as directory:
        proxy, client_side, upstream_side, (client, incoming, outgoing) = established(
            Path(directory)
        )
        run(args, proxy, client_side, upstream_side, client, incoming, outgoing)


def run(
    args: argparse.Namespace,
    proxy: connection.ClientConnection,
    client_side: Transport,
    upstream_side: Transport,
    client: Any,
    incoming: ssl.MemoryBIO,
    outgoing: ssl.MemoryBIO,
) -> None:
    payload = os.urandom(REQUEST)
    records = []
    for _ in range(args.requests):
        client.write(payload)
        records.append(outgoing.read())
    read, write = args.part in ("both", "read"), args.part in ("both", "write")

    def request(index: int) -> int:
        if read:
            proxy.data_received(records[index])
        if write:
            proxy.upstream_data(payload)
        return 0

    started = time.perf_counter()
    sorted(range(args.requests), key=request)  # callgrind: --toggle-collect=builtin_sorted
    spent = time.perf_counter() - started
    if read:
        assert upstream_side.written == [payload] * args.requests
    if write:
        incoming.write(b"".join(client_side.written))
        answers = b""
        while len(answers) < REQUEST * args.requests:
            answers += client.read(REQUEST)
        assert answers == payload * args.requests
    print(f"{spent / args.requests * 1e6:.2f} us per request ({args.requests}, {args.part})")


if __name__ == "__main__":
    main()
