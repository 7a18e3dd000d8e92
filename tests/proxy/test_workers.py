"""``workers: 2``: both serve, one /metrics sums them, a killed worker is replaced, SIGTERM
drains them all."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtlsproxy.pki import PkiFiles
from tests.proxy.conftest import render_config
from tests.proxy.harness import Client, ProxyProcess, Upstream, eventually


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def metric_sum(process: ProxyProcess, name: str, **labels: str) -> float:
    total = 0.0
    for line in process.get("/metrics").splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def worker_pids(process: ProxyProcess) -> dict[int, int]:
    pids: dict[int, int] = {}
    for line in process.lines:
        if match := re.search(r"worker (\d+) started \(pid (\d+)\)", line):
            pids[int(match.group(1))] = int(match.group(2))
    return pids


@pytest.fixture
def workers(tmp_path: Path, pki: PkiFiles, upstream: Upstream) -> Iterator[ProxyProcess]:
    port = free_port()
    text = render_config(
        pki, f"127.0.0.1:{upstream.port}", log_level="info", listen=f"127.0.0.1:{port}"
    )
    path = tmp_path / "proxy.yaml"
    path.write_text("workers: 2\n" + text)
    process = ProxyProcess(path)
    assert eventually(lambda: process.status("/readyz") == 200, timeout=20)
    yield process
    if process.process.poll() is None:
        process.process.terminate()
        process.process.wait(timeout=15)
    process.assert_no_traceback()
    for pid in worker_pids(process).values():  # none should be left; make sure
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_two_workers_serve_and_metrics_sum_both(workers: ProxyProcess, pki: PkiFiles) -> None:
    assert len(worker_pids(workers)) == 2
    count = 40
    for index in range(count):
        assert Client(pki, workers.port).roundtrip(b"%d" % index) == b"%d" % index
    assert eventually(
        lambda: metric_sum(workers, "mtlsproxy_handshakes_total", result="ok") == count
    )
    # Each worker wrote its own values: the sum is over both processes.
    files = [name for name in os.listdir(_multiprocess_dir(workers)) if name.startswith("counter")]
    assert len(files) == 2, files
    # The supervisor's own process_* series, and no _created series.
    assert metric_sum(workers, "process_resident_memory_bytes") > 1024 * 1024
    assert "_created" not in workers.get("/metrics")


def _multiprocess_dir(process: ProxyProcess) -> Path:
    """Where the workers write their metric values (from a worker's environment)."""
    worker = next(iter(worker_pids(process).values()))
    environ = Path("/proc", str(worker), "environ").read_bytes().split(b"\0")
    for item in environ:
        if item.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
            return Path(item.split(b"=", 1)[1].decode())
    raise AssertionError("no PROMETHEUS_MULTIPROC_DIR in the worker's environment")


def test_a_killed_worker_is_replaced(workers: ProxyProcess, pki: PkiFiles) -> None:
    victim = worker_pids(workers)[0]
    os.kill(victim, signal.SIGKILL)
    replacement = int(workers.wait_for(r"worker 0 started \(pid (\d+)\)", timeout=10))
    assert replacement != victim
    assert eventually(lambda: workers.status("/readyz") == 200, timeout=10)
    for _ in range(10):
        assert Client(pki, workers.port).roundtrip(b"ok") == b"ok"


def test_sigterm_drains_every_worker(workers: ProxyProcess, pki: PkiFiles) -> None:
    tls = Client(pki, workers.port).connect()
    tls.sendall(b"x")
    assert tls.recv(1) == b"x"
    pids = list(worker_pids(workers).values())
    workers.process.send_signal(signal.SIGTERM)
    assert eventually(lambda: workers.status("/readyz") == 503, timeout=5)
    tls.sendall(b"y")  # the open connection still works while draining
    assert tls.recv(1) == b"y"
    tls.close()
    assert workers.process.wait(timeout=15) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_workers_exit_when_the_supervisor_is_killed(workers: ProxyProcess) -> None:
    pids = list(worker_pids(workers).values())
    workers.process.kill()
    workers.process.wait()

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie is gone too: its parent died and init has not reaped it yet.
        return Path("/proc", str(pid), "stat").read_text().split()[2] == "Z"

    assert eventually(lambda: all(gone(pid) for pid in pids), timeout=10)
