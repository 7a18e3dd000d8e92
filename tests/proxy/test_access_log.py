"""One structured line per connection at close, JSON by default, never key material."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtlsproxy.pki import PkiFiles
from tests.proxy.conftest import render_config
from tests.proxy.harness import Client, ProxyProcess, Upstream, eventually, refused_by


@pytest.fixture
def json_proxy(tmp_path: Path, pki: PkiFiles, upstream: Upstream) -> Iterator[ProxyProcess]:
    text = render_config(pki, f"127.0.0.1:{upstream.port}", log_level="info")
    path = tmp_path / "proxy.yaml"
    path.write_text(text.replace("format: text", "format: json"))
    process = ProxyProcess(path)
    yield process
    process.process.terminate()
    process.process.wait(timeout=10)
    process.assert_no_traceback()


def access_lines(process: ProxyProcess) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in process.lines if line.startswith("{")]
    return [line for line in lines if line["msg"] == "access"]


def test_an_admitted_connection(json_proxy: ProxyProcess, pki: PkiFiles) -> None:
    assert Client(pki, json_proxy.port).roundtrip(b"12345") == b"12345"
    assert eventually(lambda: len(access_lines(json_proxy)) == 1)
    (line,) = access_lines(json_proxy)
    assert line["listener"] == "api" and line["route"] == "default"
    assert line["result"] == "ok" and line["engine"] == "openssl"
    assert line["sni"] == "localhost"
    assert line["version"] == "TLSv1.3" and str(line["cipher"]).startswith("TLS_")
    assert line["client_spiffe_id"] == "spiffe://example.org/ns/prod/sa/frontend"
    assert line["client_subject"] == "CN=frontend"
    assert len(str(line["client_sha256"])) == 64 and line["client_serial"]
    assert line["bytes_in"] == 5 and line["bytes_out"] == 5
    assert line["end"] == "closed"
    assert str(line["upstream"]).startswith("127.0.0.1:")
    for phase in ("client_hello", "server_flight", "client_flight", "verify", "total"):
        assert float(line[f"{phase}_ms"]) >= 0  # type: ignore[arg-type]
    assert float(line["duration_ms"]) > 0  # type: ignore[arg-type]
    assert str(line["peer"]).startswith("127.0.0.1:")


def test_a_refused_connection(json_proxy: ProxyProcess, pki: PkiFiles) -> None:
    assert refused_by(Client(pki, json_proxy.port, cert="client-expired")) != ""
    assert eventually(lambda: len(access_lines(json_proxy)) == 1)
    (line,) = access_lines(json_proxy)
    assert line["result"] == "failed"
    assert line["step"] == "client_verify" and line["reason"] == "client_cert_expired"
    assert line["end"] == "handshake_failed" and line["bytes_in"] == 0
    assert line["upstream"] is None


def test_no_secrets_in_any_log_line(json_proxy: ProxyProcess, pki: PkiFiles) -> None:
    Client(pki, json_proxy.port).roundtrip(b"x")
    refused_by(Client(pki, json_proxy.port, cert=None))
    assert eventually(lambda: len(access_lines(json_proxy)) == 2)
    everything = "".join(json_proxy.lines)
    assert "PRIVATE KEY" not in everything and "BEGIN" not in everything
    for key_file in (pki.server_key, pki.client_key):
        body = "".join(key_file.read_text().splitlines()[1:-1])
        assert body[:40] not in everything
