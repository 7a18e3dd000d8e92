"""SIGHUP reloads the whole YAML: changed policy applies to new handshakes, listeners come and
go, unchanged ones keep their socket; a broken config keeps the old one serving."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtlsproxy.pki import PkiFiles
from tests.proxy.conftest import render_config
from tests.proxy.harness import Client, ProxyProcess, Upstream, eventually, refused_by


def reloads(process: ProxyProcess, result: str) -> float:
    total = 0.0
    for line in process.get("/metrics").splitlines():
        if line.startswith("mtlsproxy_config_reloads_total{") and f'result="{result}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return tmp_path / "proxy.yaml"


@pytest.fixture
def running(config_file: Path, pki: PkiFiles, upstream: Upstream) -> Iterator[ProxyProcess]:
    config_file.write_text(render_config(pki, f"127.0.0.1:{upstream.port}", log_level="info"))
    process = ProxyProcess(config_file)
    yield process
    if process.process.poll() is None:
        process.process.kill()
    process.process.wait()
    process.assert_no_traceback()


def test_broken_yaml_keeps_the_old_config(
    running: ProxyProcess, config_file: Path, pki: PkiFiles
) -> None:
    config_file.write_text(config_file.read_text().replace("mode: require", "mode: requir"))
    running.process.send_signal(signal.SIGHUP)
    assert eventually(lambda: reloads(running, "failed") == 1, timeout=10)
    assert Client(pki, running.port).roundtrip(b"still") == b"still"
    assert refused_by(Client(pki, running.port, cert=None)) != ""


def test_new_policy_applies_to_new_handshakes(
    running: ProxyProcess, config_file: Path, pki: PkiFiles, upstream: Upstream
) -> None:
    open_connection = Client(pki, running.port).connect()
    open_connection.sendall(b"a")
    assert open_connection.recv(1) == b"a"
    allow = ["spiffe_id: spiffe://example.org/ns/dev/sa/intruder"]
    text = render_config(pki, f"127.0.0.1:{upstream.port}", allow=allow, log_level="info")
    # Same listener and address (port 0 means the socket is kept, not re-bound).
    config_file.write_text(text)
    running.process.send_signal(signal.SIGHUP)
    assert eventually(lambda: reloads(running, "ok") == 1, timeout=10)
    assert refused_by(Client(pki, running.port)) != ""  # frontend is no longer allowed
    assert Client(pki, running.port, cert="client-other").roundtrip(b"in") == b"in"
    # The connection opened under the old policy goes on.
    open_connection.sendall(b"b")
    assert open_connection.recv(1) == b"b"
    open_connection.close()


def test_listeners_added_and_removed(
    running: ProxyProcess, config_file: Path, pki: PkiFiles, upstream: Upstream
) -> None:
    first_port = running.port
    base = render_config(pki, f"127.0.0.1:{upstream.port}", log_level="info")
    second = render_config(pki, f"127.0.0.1:{upstream.port}", name="second", mode="none")
    listener_block = second.split("listeners:\n", 1)[1].split("metrics:", 1)[0]
    config_file.write_text(base.replace("metrics:", listener_block + "metrics:", 1))
    running.process.send_signal(signal.SIGHUP)
    new_port = int(running.wait_for(r"listening on 127\.0\.0\.1:(\d+)"))
    assert new_port != first_port
    assert Client(pki, new_port, cert=None).roundtrip(b"one-way") == b"one-way"
    assert Client(pki, first_port).roundtrip(b"kept") == b"kept"
    # Remove the first listener: it stops accepting.
    config_file.write_text(second)
    running.process.send_signal(signal.SIGHUP)
    assert eventually(lambda: reloads(running, "ok") == 2, timeout=10)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", first_port), timeout=2).close()
    assert Client(pki, new_port, cert=None).roundtrip(b"still") == b"still"
