"""``/certs`` and ``/status`` on the admin endpoint: what is loaded and running, as JSON, for
one process and for a supervisor with workers; public material only."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from mtlsproxy.pki import PkiFiles
from tests.proxy.conftest import render_config
from tests.proxy.harness import (
    Client,
    ProxyProcess,
    RunningProxy,
    Upstream,
    eventually,
    start_proxy,
)
from tests.proxy.test_workers import free_port


def get_json(base: str, path: str) -> dict:
    with urllib.request.urlopen(f"{base}{path}", timeout=5) as response:
        assert response.headers["Content-Type"] == "application/json"
        return json.loads(response.read())


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, pki: PkiFiles) -> Iterator[RunningProxy]:
    upstream = Upstream()
    running = start_proxy(tmp_path_factory.mktemp("documents"), pki, upstream.port)
    yield running
    running.stop()
    upstream.stop()


def test_certs_lists_every_loaded_certificate(proxy: RunningProxy, pki: PkiFiles) -> None:
    document = get_json(proxy.metrics_url.removesuffix("/metrics"), "/certs")
    ((listener),) = document["listeners"]
    (route,) = listener["routes"]
    assert (listener["name"], route["name"], route["client_auth"]) == ("api", "default", "require")
    server = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    served = {c["serial"]: c for c in route["server_certificates"]}
    assert f"{server.serial_number:x}" in served
    assert {c["key_type"] for c in served.values()} == {"EC secp256r1", "RSA 2048"}
    ecdsa = served[f"{server.serial_number:x}"]
    assert ecdsa["subject"] == "CN=localhost" and "DNSName:localhost" in ecdsa["sans"]
    assert 0 < ecdsa["expires_in_seconds"] <= 11 * 365 * 86400
    (ca,) = route["client_cas"]
    assert ca["subject"] == "CN=mtlsproxy development root CA"
    issuers = {crl["issuer"] for crl in route["crls"]}
    assert "CN=mtlsproxy development root CA" in issuers
    assert all(crl["next_update"] > crl["this_update"] for crl in route["crls"])
    text = json.dumps(document)
    assert "PRIVATE KEY" not in text and "BEGIN" not in text


def test_status_describes_the_process(proxy: RunningProxy, pki: PkiFiles) -> None:
    assert Client(pki, proxy.port()).roundtrip(b"x") == b"x"
    status = get_json(proxy.metrics_url.removesuffix("/metrics"), "/status")
    assert status["ready"] is True and status["draining"] is False
    (listener,) = status["listeners"]
    assert listener["address"] == f"127.0.0.1:{proxy.port()}"
    assert listener["engine"] == "openssl" and listener["routes"] == ["default"]
    assert status["uptime_seconds"] > 0 and status["version"]


def test_a_supervisor_serves_both_documents(tmp_path: Path, pki: PkiFiles) -> None:
    upstream = Upstream()
    port = free_port()
    text = render_config(
        pki, f"127.0.0.1:{upstream.port}", log_level="info", listen=f"127.0.0.1:{port}"
    )
    path = tmp_path / "proxy.yaml"
    path.write_text("workers: 2\n" + text)
    process = ProxyProcess(path)
    try:
        assert eventually(lambda: process.status("/readyz") == 200, timeout=20)
        base = process.metrics.removesuffix("/metrics")
        status = get_json(base, "/status")
        assert [w["slot"] for w in status["workers"]] == [0, 1]
        assert all(w["running"] and w["ready"] for w in status["workers"])
        certs = get_json(base, "/certs")
        assert certs["listeners"][0]["routes"][0]["server_certificates"]
    finally:
        process.process.terminate()
        process.process.wait(timeout=20)
        upstream.stop()
    process.assert_no_traceback()
