"""``mtlsproxy run`` as a process: SIGTERM stops accepting, open connections finish (up to the
drain timeout), /readyz turns 503 while /healthz stays 200, then the process exits 0."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtlsproxy.pki import PkiFiles
from tests.proxy.conftest import render_config
from tests.proxy.harness import Client, MemoryClient, ProxyProcess, Upstream


@pytest.fixture
def proxy_process(tmp_path: Path, pki: PkiFiles, upstream: Upstream) -> Iterator[ProxyProcess]:
    config = tmp_path / "proxy.yaml"
    config.write_text(render_config(pki, f"127.0.0.1:{upstream.port}", log_level="info"))
    running = ProxyProcess(config)
    yield running
    if running.process.poll() is None:
        running.process.kill()
    running.process.wait()
    running.assert_no_traceback()


def test_sigterm_drains_open_connections(proxy_process: ProxyProcess, pki: PkiFiles) -> None:
    client = MemoryClient(pki, proxy_process.port)
    client.sock.sendall(client.client_hello())
    client.finish_handshake()
    assert proxy_process.status("/readyz") == 200

    proxy_process.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while proxy_process.status("/readyz") != 503 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy_process.status("/readyz") == 503
    assert proxy_process.status("/healthz") == 200
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy_process.port), timeout=2).close()

    # The open connection keeps working while the proxy drains.
    payload = b"still here" * 1000
    assert client.exchange(payload) == payload
    client.close_notify()
    client.receive_all()
    client.close()
    assert proxy_process.process.wait(timeout=5) == 0


def test_drain_timeout_ends_lingering_connections(
    proxy_process: ProxyProcess, pki: PkiFiles
) -> None:
    tls = Client(pki, proxy_process.port).connect()
    tls.sendall(b"x")
    assert tls.recv(1) == b"x"
    started = time.monotonic()
    proxy_process.process.send_signal(signal.SIGTERM)
    assert proxy_process.process.wait(timeout=10) == 0
    assert 1.5 < time.monotonic() - started < 6  # the config's drain timeout is 2 s
    assert tls.recv(10) == b""  # close_notify, not a reset
    tls.close()
