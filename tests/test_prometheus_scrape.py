"""A real Prometheus server scrapes a running proxy: the exposition is accepted end to end and
the handshakes made through the proxy are queryable (Debian package prometheus; skipped
without /usr/bin/prometheus)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mtlsproxy.pki import PkiFiles
from tests.proxy.harness import Client, RunningProxy, Upstream, eventually, start_proxy

PROMETHEUS = "/usr/bin/prometheus"
HANDSHAKES = 3
DEADLINE = 30.0  # seconds for Prometheus to start, scrape and answer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture
def proxy(tmp_path: Path, pki: PkiFiles) -> Iterator[RunningProxy]:
    upstream = Upstream()
    running = start_proxy(tmp_path, pki, upstream.port)
    try:
        yield running
    finally:
        running.stop()
        upstream.stop()


@pytest.fixture
def prometheus(tmp_path: Path, proxy: RunningProxy) -> Iterator[str]:
    """A Prometheus scraping the proxy's admin port every second; yields its base URL."""
    binary = shutil.which(PROMETHEUS)
    if binary is None:
        pytest.skip(f"{PROMETHEUS} is not installed (Debian package prometheus)")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "mtlsproxy",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{proxy.proxy.admin.port}"]}],
            }
        ],
    }
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    address = f"127.0.0.1:{free_port()}"
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address={address}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://{address}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    answer = get_json(url)
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def poll(base: str, expr: str, done: Any, deadline: float) -> list[dict[str, Any]]:
    """Query until ``done(result)`` or the deadline; connection errors while starting up are
    retried. Returns the last result."""
    result: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            result = query(base, expr)
        except (urllib.error.URLError, ConnectionError):
            result = []
        if done(result):
            break
        time.sleep(0.25)
    return result


@pytest.mark.slow
def test_prometheus_scrapes_the_handshakes(
    pki: PkiFiles, proxy: RunningProxy, prometheus: str, tmp_path: Path
) -> None:
    for _ in range(HANDSHAKES):
        assert Client(pki, proxy.port()).roundtrip(b"ping") == b"ping"
    assert eventually(lambda: proxy.handshakes(result="ok") >= HANDSHAKES)
    deadline = time.monotonic() + DEADLINE

    def counted(result: list[dict[str, Any]]) -> bool:
        return sum(float(r["value"][1]) for r in result) >= HANDSHAKES

    result = poll(prometheus, 'mtlsproxy_handshakes_total{result="ok"}', counted, deadline)
    log = (tmp_path / "prometheus.log").read_text(errors="replace")[-3000:]
    assert counted(result), f"no handshakes in Prometheus after {DEADLINE}s: {result}\n{log}"
    (series,) = result
    assert series["metric"]["job"] == "mtlsproxy"
    assert series["metric"]["listener"] == "api"
    assert (series["metric"]["step"], series["metric"]["reason"]) == ("none", "none")
    (up,) = query(prometheus, 'up{job="mtlsproxy"}')
    assert up["value"][1] == "1"
    buckets = query(prometheus, 'mtlsproxy_handshake_duration_seconds_count{phase="total"}')
    assert sum(float(b["value"][1]) for b in buckets) >= HANDSHAKES
