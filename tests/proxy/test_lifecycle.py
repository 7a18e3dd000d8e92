"""Kubernetes-grade shutdown and reload, on a real process: ``timeouts.shutdown_delay`` keeps
accepting while /readyz says 503, a changed YAML is reloaded without a SIGHUP, and a change
that needs a restart says so and keeps the running value."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtlsproxy.pki import PkiFiles
from tests.proxy.conftest import render_config
from tests.proxy.harness import Client, ProxyProcess, Upstream, eventually, refused_by

FRONTEND = "spiffe_id: spiffe://example.org/ns/prod/sa/frontend"


def reloads(process: ProxyProcess, trigger: str, result: str) -> float:
    for line in process.get("/metrics").splitlines():
        if line.startswith("mtlsproxy_config_reloads_total{") and (
            f'trigger="{trigger}"' in line and f'result="{result}"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def start(tmp_path: Path, pki: PkiFiles, upstream: Upstream) -> Iterator:
    started: list[ProxyProcess] = []

    def run(text: str) -> tuple[ProxyProcess, Path]:
        path = tmp_path / f"proxy-{len(started)}.yaml"
        path.write_text(text)
        process = ProxyProcess(path)
        started.append(process)
        return process, path

    yield run
    for process in started:
        if process.process.poll() is None:
            process.process.kill()
        process.process.wait()
        process.assert_no_traceback()


def config(pki: PkiFiles, upstream: Upstream, **options: object) -> str:
    return render_config(pki, f"127.0.0.1:{upstream.port}", log_level="info", **options)  # type: ignore[arg-type]


def test_shutdown_delay_keeps_accepting_while_not_ready(
    start, pki: PkiFiles, upstream: Upstream
) -> None:
    text = config(pki, upstream).replace("drain: 2s}", "drain: 2s, shutdown_delay: 1500ms}")
    process, _ = start(text)
    process.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert eventually(lambda: process.status("/readyz") == 503, timeout=1)
    # Endpoints still route here for a moment: new connections are served.
    assert Client(pki, process.port).roundtrip(b"late") == b"late"
    assert time.monotonic() - signalled < 1.5
    assert eventually(lambda: _refused(process.port), timeout=5)
    assert time.monotonic() - signalled >= 1.4
    assert process.process.wait(timeout=10) == 0


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_changed_yaml_is_reloaded_without_a_signal(
    start, pki: PkiFiles, upstream: Upstream
) -> None:
    text = config(pki, upstream, allow=[FRONTEND]) + "reload: {interval: 100ms}\n"
    process, path = start(text)
    assert Client(pki, process.port).roundtrip(b"a") == b"a"
    # A ConfigMap edit: write a new file and rename it over the old one.
    other = text.replace(FRONTEND, "subject_cn: intruder")
    staged = path.with_suffix(".new")
    staged.write_text(other)
    staged.replace(path)
    assert eventually(lambda: reloads(process, "config", "ok") == 1, timeout=10)
    assert refused_by(Client(pki, process.port)) != ""
    assert Client(pki, process.port, cert="client-other").roundtrip(b"b") == b"b"
    time.sleep(0.5)  # the unchanged file is not reloaded again
    assert reloads(process, "config", "ok") == 1


def test_a_broken_yaml_edit_is_refused_once_and_the_old_keeps_serving(
    start, pki: PkiFiles, upstream: Upstream
) -> None:
    text = config(pki, upstream) + "reload: {interval: 100ms}\n"
    process, path = start(text)
    path.write_text(text.replace("mode: require", "mode: requir"))
    assert eventually(lambda: reloads(process, "config", "failed") == 1, timeout=10)
    time.sleep(0.5)
    assert reloads(process, "config", "failed") == 1
    assert Client(pki, process.port).roundtrip(b"still") == b"still"


def test_a_start_only_setting_warns_and_keeps_its_value(
    start, pki: PkiFiles, upstream: Upstream
) -> None:
    text = config(pki, upstream)
    process, path = start(text)
    metrics_port = int(process.metrics.rsplit(":", 1)[1])
    path.write_text(
        text.replace("metrics:\n  listen: 127.0.0.1:0", "metrics:\n  listen: 127.0.0.1:1")
    )
    process.process.send_signal(signal.SIGHUP)
    warning = process.wait_for(r"(metrics \(.*\) changed: read at start only.*)")
    assert "takes effect at the next restart" in warning
    assert eventually(lambda: reloads(process, "config", "ok") == 1, timeout=10)
    assert process.status("/healthz") == 200  # still on the old port
    assert int(process.metrics.rsplit(":", 1)[1]) == metrics_port
