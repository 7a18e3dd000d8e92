"""The admin endpoint: probes, the Prometheus exposition, and what one handshake adds to it."""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Iterator

import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from mtlsproxy.engine import engine_build
from mtlsproxy.pki import PkiFiles
from tests.proxy.conftest import ProxyFactory
from tests.proxy.harness import (
    Client,
    RunningProxy,
    Upstream,
    eventually,
    send_raw,
    start_proxy,
)


@pytest.fixture(scope="module")
def admin_proxy(tmp_path_factory: pytest.TempPathFactory, pki: PkiFiles) -> Iterator[RunningProxy]:
    upstream = Upstream()
    proxy = start_proxy(tmp_path_factory.mktemp("admin"), pki, upstream.port)
    yield proxy
    proxy.stop()
    upstream.stop()


def request(proxy: RunningProxy, method: str, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", proxy.proxy.admin.port, timeout=5)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def raw_exchange(proxy: RunningProxy, data: bytes) -> bytes:
    """Send ``data`` to the admin port, half-close, and read until it closes."""
    return send_raw(proxy.proxy.admin.port, data, half_close=True, timeout=10)


# Probes and request handling


@pytest.mark.parametrize(("path", "body"), [("/healthz", b"ok\n"), ("/readyz", b"ready\n")])
def test_probes_answer_200(admin_proxy: RunningProxy, path: str, body: bytes) -> None:
    assert request(admin_proxy, "GET", path) == (200, body)


def test_probe_query_string_is_ignored(admin_proxy: RunningProxy) -> None:
    assert request(admin_proxy, "GET", "/healthz?verbose=1")[0] == 200


@pytest.mark.parametrize("path", ["/", "/metricsx", "/healthz/extra", "/../metrics"])
def test_other_paths_are_404(admin_proxy: RunningProxy, path: str) -> None:
    assert request(admin_proxy, "GET", path)[0] == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_other_methods_are_405(admin_proxy: RunningProxy, method: str) -> None:
    assert request(admin_proxy, method, "/metrics")[0] == 405


def test_head_answers_like_get(admin_proxy: RunningProxy) -> None:
    assert request(admin_proxy, "HEAD", "/healthz") == (200, b"")


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x00\x05hello",  # a TLS record, then EOF before any request head
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",  # a head cut short by EOF
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n",  # a head larger than the 8 KiB bound
    ],
    ids=["tls-bytes", "truncated-head", "oversized-head"],
)
def test_garbage_gets_400_or_close(admin_proxy: RunningProxy, garbage: bytes) -> None:
    answer = raw_exchange(admin_proxy, garbage)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert request(admin_proxy, "GET", "/healthz")[0] == 200


@pytest.mark.parametrize("path", ["/healthz", "/metrics"])
def test_head_response_has_no_body(admin_proxy: RunningProxy, path: str) -> None:
    answer = raw_exchange(admin_proxy, f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == b""


@pytest.mark.parametrize(
    "head",
    [b"\r\n\r\n", b"GET\r\n\r\n", b"\x16\x03\x01junk\r\n\r\n"],
    ids=["empty", "no-path", "binary"],
)
def test_malformed_request_line_is_400(admin_proxy: RunningProxy, head: bytes) -> None:
    assert raw_exchange(admin_proxy, head).startswith(b"HTTP/1.1 400 ")


def test_slow_client_does_not_block_probes(admin_proxy: RunningProxy) -> None:
    """A client trickling a request head holds only its own connection."""
    address = ("127.0.0.1", admin_proxy.proxy.admin.port)
    with socket.create_connection(address, timeout=10) as slow:
        slow.sendall(b"GET /hea")
        started = time.monotonic()
        assert request(admin_proxy, "GET", "/healthz")[0] == 200
        assert request(admin_proxy, "GET", "/readyz")[0] == 200
        assert time.monotonic() - started < 2
        slow.sendall(b"lthz HTTP/1.1\r\n\r\n")
        assert slow.recv(65536).startswith(b"HTTP/1.1 200 ")


# The exposition


def families(proxy: RunningProxy) -> dict[str, list]:  # type: ignore[type-arg]
    """Family name -> samples, parsed by prometheus_client's own parser."""
    return {f.name: f.samples for f in text_string_to_metric_families(proxy.metrics_text())}


def test_metrics_content_type(admin_proxy: RunningProxy) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", admin_proxy.proxy.admin.port, timeout=5)
    connection.request("GET", "/metrics")
    response = connection.getresponse()
    assert response.status == 200
    # prometheus_client's text format (0.0.4, or 1.0.0 in newer releases), never OpenMetrics
    # unless asked.
    assert response.getheader("Content-Type", "").startswith("text/plain; version=")
    connection.close()


def test_exposition_has_build_info_and_certificate_expiry(
    admin_proxy: RunningProxy, pki: PkiFiles
) -> None:
    found = families(admin_proxy)
    (build,) = found["mtlsproxy_build_info"]
    assert build.value == 1
    assert build.labels["engine"] == "openssl"
    assert build.labels["engine_build"] == engine_build() in ("mypyc", "python")
    assert build.labels["openssl"] == ssl.OPENSSL_VERSION
    assert build.labels["version"]
    expiry = found["mtlsproxy_certificate_expiry_timestamp_seconds"]
    roles = {(s.labels["role"], s.labels["subject"]) for s in expiry}
    assert ("server", "CN=localhost") in roles
    assert ("client_ca", "CN=mtlsproxy development root CA") in roles
    now = time.time()
    assert all(now < s.value < now + 11 * 365 * 86400 for s in expiry)
    # An ECDSA and an RSA server certificate share a subject: the serial keeps them apart.
    leaves = [
        x509.load_pem_x509_certificate(p.read_bytes())
        for p in (pki.server_cert, pki.server_rsa_cert)
    ]
    serials = [s.labels["serial"] for s in expiry if s.labels["role"] == "server"]
    assert sorted(serials) == sorted(f"{leaf.serial_number:x}" for leaf in leaves)


def test_exposition_has_process_metrics_and_no_created_series(admin_proxy: RunningProxy) -> None:
    found = families(admin_proxy)
    assert found["process_resident_memory_bytes"][0].value > 1024 * 1024
    assert found["process_cpu_seconds"][0].value > 0
    names = {sample.name for samples in found.values() for sample in samples}
    assert not [name for name in names if name.endswith("_created")]


def test_one_handshake_in_the_exposition(
    make_proxy: ProxyFactory, pki: PkiFiles, upstream: Upstream
) -> None:
    proxy = make_proxy("require")
    payload = b"x" * 1234
    assert Client(pki, proxy.port()).roundtrip(payload) == payload
    assert eventually(
        lambda: (
            proxy.sample("mtlsproxy_bytes_total", direction="client_to_upstream") == len(payload)
        )
    )
    assert proxy.sample("mtlsproxy_bytes_total", direction="upstream_to_client") == len(payload)
    assert upstream.received == len(payload)
    assert proxy.sample("mtlsproxy_connections_total", listener="api") == 1
    for phase in ("client_hello", "server_flight", "client_flight", "verify", "total"):
        count = proxy.sample("mtlsproxy_handshake_duration_seconds_count", phase=phase)
        assert count == 1, phase
    total = proxy.sample("mtlsproxy_handshake_duration_seconds_sum", phase="total")
    assert 0 < total < 5
    assert proxy.handshakes(result="ok", route="default") == 1
    assert proxy.sample("mtlsproxy_tls_sessions_total", version="TLSv1.3") == 1
    assert proxy.sample("mtlsproxy_client_auth_total", presented="true", verified="true") == 1
    assert eventually(lambda: proxy.sample("mtlsproxy_connections_active") == 0)


def test_no_client_controlled_label_values(admin_proxy: RunningProxy, pki: PkiFiles) -> None:
    """SNI, ALPN and the client's certificate never become label values (cardinality, and a
    client must not be able to write into the operator's metrics)."""
    port = admin_proxy.port()
    marker = "evil-unique-name-123"
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.check_hostname = False
    context.set_alpn_protocols([f"{marker}-alpn"])
    context.load_cert_chain(pki.client_other_cert, pki.client_other_key)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=f"{marker}.example.org") as tls,
    ):
        tls.sendall(b"ping")
        assert tls.recv(4) == b"ping"
    # Refused ones too: no certificate, and a certificate no CA vouches for.
    for cert in (None, "client-untrusted"):
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        context.check_hostname = False
        if cert is not None:
            context.load_cert_chain(pki.directory / f"{cert}.crt", pki.directory / f"{cert}.key")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            try:
                with context.wrap_socket(raw, server_hostname=f"{marker}-{cert}.example.org") as t:
                    t.sendall(b"ping")
                    t.recv(4)
            except (ssl.SSLError, ConnectionError):
                pass
    assert eventually(lambda: admin_proxy.handshakes(result="failed") >= 2)
    text = admin_proxy.metrics_text()
    assert marker not in text
    for leaked in ("intruder", "127.0.0.1", "rogue", "frontend"):
        assert leaked not in text, leaked
