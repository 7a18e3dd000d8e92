"""``upstream_protocol: h2-to-http/1.1`` end to end over real TLS: HTTP/2 clients (the ``h2``
library and curl) through the proxy to an HTTP/1.1 upstream (``h11``). Identity headers on
every stream, concurrent streams each answered, content with and without content-length,
HEAD and 204, an unreachable upstream answered per stream, path rules per stream."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mtlsproxy.pki import PkiFiles
from tests.proxy.harness import Client, RunningProxy, Upstream, eventually
from tests.proxy.http1_upstream import H1Upstream
from tests.proxy.http2_harness import H2Client
from tests.proxy.test_http2 import curl_http2, headers_seen, http2_config, proxies

FRONTEND = "spiffe://example.org/ns/prod/sa/frontend"
PROTOCOL = "h2-to-http/1.1"

Start = Callable[..., RunningProxy]


@pytest.fixture
def h1_upstream() -> Iterator[H1Upstream]:
    server = H1Upstream()
    yield server
    server.stop()


@pytest.fixture
def start(tmp_path: Path, pki: PkiFiles, h1_upstream: H1Upstream) -> Iterator[Start]:
    with proxies(tmp_path, "h2h1") as run:
        yield lambda port=None, **options: run(
            http2_config(pki, port or h1_upstream.port, protocol=PROTOCOL, **options)
        )


@pytest.mark.parametrize("engine", ["openssl", "native"])
def test_concurrent_streams_each_get_their_answer_with_the_identity(
    start: Start, pki: PkiFiles, engine: str
) -> None:
    proxy = start(engine=engine)
    client = H2Client(pki, proxy.port())
    try:
        assert client.alpn == "h2"
        forged = [(b"x-ssl-client-spiffe-id", b"spiffe://example.org/ns/prod/sa/admin")]
        streams = {client.request(f"/item/{n}", headers=forged): n for n in range(6)}
        for stream_id, n in streams.items():
            response = client.wait(stream_id)
            assert response.status == 200
            seen = response.json()
            assert seen["target"] == f"/item/{n}"
            headers = headers_seen(seen)
            assert headers["host"] == ["localhost"]
            assert headers["x-ssl-client-spiffe-id"] == [FRONTEND]
            assert len(headers["x-forwarded-client-cert"]) == 1
            assert f"URI={FRONTEND}" in headers["x-forwarded-client-cert"][0]
    finally:
        client.close()


def test_content_with_and_without_length_head_and_204(start: Start, pki: PkiFiles) -> None:
    proxy = start()
    client = H2Client(pki, proxy.port())
    try:
        body = b"x" * 100_000
        sized = client.request(
            "/sized", "POST", headers=[(b"content-length", str(len(body)).encode())], body=body
        )
        unsized = client.request("/unsized", "POST", body=body)
        head = client.request("/head", "HEAD")
        empty = client.request("/no-content")
        seen = client.wait(sized).json()
        assert (seen["size"], seen["chunked"]) == (len(body), False)
        seen = client.wait(unsized).json()
        assert (seen["size"], seen["chunked"]) == (len(body), True)
        response = client.wait(head)
        assert response.status == 200 and response.body == b""
        assert response.header(b"content-length") is not None
        response = client.wait(empty)
        assert response.status == 204 and response.body == b""
        assert client.get("/after").status == 200  # the connection is still usable
    finally:
        client.close()


def test_an_unreachable_upstream_is_a_502_per_stream(start: Start, pki: PkiFiles) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    proxy = start(port=port)
    client = H2Client(pki, proxy.port())
    try:
        for _ in range(3):
            response = client.get("/")
            assert response.status == 502
        assert not client.closed
    finally:
        client.close()


def test_http1_clients_still_get_http1(start: Start, pki: PkiFiles) -> None:
    proxy = start()
    with Client(pki, proxy.port()).connect() as tls:
        assert tls.selected_alpn_protocol() is None  # offered none: served as HTTP/1.1
        tls.sendall(b"GET /h1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200")


def test_path_rules_refuse_per_stream(start: Start, pki: PkiFiles, h1_upstream: H1Upstream) -> None:
    rules = (
        "\n    http_authorization:\n      rules:\n        - name: public\n"
        "          prefix: /public\n          require: any\n      default: deny"
    )
    proxy = start(extra=rules)
    client = H2Client(pki, proxy.port())
    try:
        refused = client.request("/admin")
        admitted = client.request("/public")
        assert client.wait(refused).status == 403
        assert client.wait(admitted).status == 200
        assert [seen["target"] for seen in h1_upstream.requests] == ["/public"]
    finally:
        client.close()


def test_curl_http2_with_a_client_certificate(start: Start, pki: PkiFiles) -> None:
    proxy = start(engine="native")
    seen = curl_http2(pki, proxy.port(), "/via-curl")
    assert seen["target"] == "/via-curl"
    headers = headers_seen(seen)
    assert len(headers["x-forwarded-client-cert"]) == 1
    assert f"URI={FRONTEND}" in headers["x-forwarded-client-cert"][0]


def test_a_response_that_does_not_parse_is_a_502_and_counted(start: Start, pki: PkiFiles) -> None:
    def garbage(sock: socket.socket, server: Upstream) -> None:
        sock.recv(65536)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n")

    broken = Upstream(garbage)
    try:
        proxy = start(port=broken.port)
        client = H2Client(pki, proxy.port())
        try:
            assert client.get("/").status == 502
            assert client.get("/again").status == 502
            assert not client.closed
        finally:
            client.close()
        assert eventually(
            lambda: proxy.sample("mtlsproxy_upstream_errors_total", reason="bad_response") == 2
        )
    finally:
        broken.stop()
