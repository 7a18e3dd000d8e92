"""Per-path rules (``http_authorization``) on HTTP/2, stream by stream, over real TLS: a refused
stream gets the proxy's 403 (a trailers-only ``grpc-status: 7`` for gRPC), never reaches the
upstream, is counted and logged, and the connection's other streams go on. gRPC service and
method rules are path rules: ``/package.Service/Method``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mtlsproxy.pki import PkiFiles
from tests.proxy.harness import RunningProxy, eventually
from tests.proxy.http2_harness import H2Client, H2Upstream
from tests.proxy.test_http2 import FRONTEND, http2_config

RULES = f"""\
    http_authorization:
      rules:
        - name: admin-service
          prefix: /echo.Admin/
          require: verified
          allow:
            - spiffe_id: {FRONTEND}
        - name: echo-unary
          exact: /echo.Echo/Unary
          methods: [POST]
          require: verified
        - name: public
          prefix: /public
          require: any
      default: deny
"""
GRPC = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]


@pytest.fixture
def h2_upstream() -> Iterator[H2Upstream]:
    server = H2Upstream()
    yield server
    server.stop()


@pytest.fixture
def proxy(tmp_path: Path, pki: PkiFiles, h2_upstream: H2Upstream) -> Iterator[RunningProxy]:
    text = http2_config(pki, h2_upstream.port, mode="request", extra="\n" + RULES.rstrip())
    path = tmp_path / "h2-paths.yaml"
    path.write_text(text)
    running = RunningProxy(path)
    yield running
    running.stop()


@pytest.mark.parametrize(
    ("cert", "expected"),
    [
        ("client", {"/echo.Admin/Drop": 200, "/echo.Echo/Unary": 200, "/public/x": 200}),
        ("client-other", {"/echo.Admin/Drop": 403, "/echo.Echo/Unary": 200, "/public/x": 200}),
        (None, {"/echo.Admin/Drop": 403, "/echo.Echo/Unary": 403, "/public/x": 200}),
    ],
    ids=["allowed", "verified", "anonymous"],
)
def test_each_stream_is_decided_by_its_path(
    proxy: RunningProxy,
    pki: PkiFiles,
    h2_upstream: H2Upstream,
    cert: str | None,
    expected: dict[str, int],
) -> None:
    client = H2Client(pki, proxy.port(), cert=cert)
    try:
        statuses = {}
        for path in [*expected, "/elsewhere"]:
            response = client.get(path, method="POST", body=b"secret")
            statuses[path] = response.status
            if response.status == 403:
                assert response.body.startswith(b"Forbidden")
        assert statuses == {**expected, "/elsewhere": 403}
        forwarded = [dict(headers)[b":path"].decode() for headers in h2_upstream.requests]
        assert forwarded == [path for path, status in expected.items() if status == 200]
    finally:
        client.close()


def test_a_refused_grpc_call_gets_permission_denied_in_trailers_only(
    proxy: RunningProxy, pki: PkiFiles, h2_upstream: H2Upstream
) -> None:
    client = H2Client(pki, proxy.port(), cert="client-other")
    try:
        refused = client.get("/echo.Admin/Drop", method="POST", headers=GRPC, body=b"\0\0\0\0\0")
        assert refused.status == 200
        assert refused.header(b"grpc-status") == b"7"
        assert refused.body == b"" and refused.trailers == []  # trailers-only
        allowed = client.get("/echo.Echo/Unary", method="POST", headers=GRPC, body=b"\0\0\0\0\0")
        assert allowed.status == 200 and allowed.header(b"x-upstream-trailer") == b"yes"
        assert [dict(h)[b":path"] for h in h2_upstream.requests] == [b"/echo.Echo/Unary"]
    finally:
        client.close()
    counted = {"rule": "admin-service", "reason": "identity_not_allowed"}
    assert eventually(lambda: proxy.sample("mtlsproxy_http_requests_refused_total", **counted) == 1)


def test_a_refused_request_is_logged_with_the_identity(
    proxy: RunningProxy, pki: PkiFiles, caplog: pytest.LogCaptureFixture
) -> None:
    client = H2Client(pki, proxy.port(), cert="client-other")
    try:
        assert client.get("/echo.Admin/Drop").status == 403
    finally:
        client.close()
    lines = [r for r in caplog.records if "HTTP request refused with 403" in r.getMessage()]
    assert lines
    fields = lines[0].__dict__.get("fields", {})
    assert fields.get("target") == "/echo.Admin/Drop" and fields.get("method") == "GET"
    assert fields.get("rule") == "admin-service"
    assert fields.get("client_subject") == "CN=intruder"


def test_a_refused_head_request_gets_no_content(proxy: RunningProxy, pki: PkiFiles) -> None:
    client = H2Client(pki, proxy.port(), cert=None)
    try:
        response = client.get("/echo.Admin/Drop", method="HEAD")
        assert response.status == 403 and response.body == b""
        assert client.get("/public/after").status == 200  # the connection goes on
    finally:
        client.close()
