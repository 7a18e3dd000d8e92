"""Audit mode for per-path rules (``http_authorization.enforce: false``) end to end, over real
TLS with real clients (Python ssl, curl, h2, grpcio): a request the rules would refuse reaches
the upstream unchanged, with the identity headers, and is counted in
``mtlsproxy_http_requests_would_refuse_total`` and logged once as would-refuse; an unsafe path
is still refused with 400; with ``enforce: true`` nothing changes."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from mtlsproxy.pki import PkiFiles
from tests.proxy.harness import Client, ProxyProcess, RunningProxy, eventually
from tests.proxy.http2_harness import H2Client, H2Upstream
from tests.proxy.test_forwarding import HTTPUpstream, read_responses
from tests.proxy.test_grpc import (
    EchoService,
    client_credentials,
    grpc_config,
    method,
    service,
    verified,
)
from tests.proxy.test_http2 import http2_config
from tests.proxy.test_http2_paths import GRPC, RULES, h2_upstream
from tests.proxy.test_path_authorization import (
    PATHS,
    ask,
    config_text,
    curl_status,
    get,
    http_upstream,
    status,
)

__all__ = ["h2_upstream", "http_upstream", "service"]  # the fixtures, shared

WOULD = "mtlsproxy_http_requests_would_refuse_total"
REFUSED = "mtlsproxy_http_requests_refused_total"
AUDIT = "    http_authorization:\n      enforce: false\n"
ENFORCE = "    http_authorization:\n      enforce: true\n"

Start = Callable[..., RunningProxy]


def audited(text: str, switch: str = AUDIT) -> str:
    assert "    http_authorization:\n" in text
    return text.replace("    http_authorization:\n", switch, 1)


@pytest.fixture
def start(tmp_path: Path, pki: PkiFiles, http_upstream: HTTPUpstream) -> Iterator[Start]:
    running: list[RunningProxy] = []

    def factory(engine: str = "openssl", switch: str = AUDIT) -> RunningProxy:
        path = tmp_path / f"audit-{len(running)}.yaml"
        path.write_text(audited(config_text(pki, http_upstream, engine), switch))
        running.append(RunningProxy(path))
        return running[-1]

    yield factory
    for proxy in running:
        proxy.stop()


@pytest.mark.parametrize("engine", ["openssl", "native"])
def test_what_the_rules_would_refuse_reaches_the_upstream_and_is_counted(
    start: Start, http_upstream: HTTPUpstream, pki: PkiFiles, engine: str
) -> None:
    proxy = start(engine)
    assert ask(pki, proxy.port(), None, *PATHS) == [200, 200, 200, 200]
    assert ask(pki, proxy.port(), "client-other", "/admin/users") == [200]
    assert [r.target.decode() for r in http_upstream.requests] == [*PATHS, "/admin/users"]
    # The identity headers go on as usual: the upstream learns who it is serving.
    (xfcc,) = http_upstream.header(4, b"x-forwarded-client-cert")
    assert b"URI=spiffe://example.org/ns/dev/sa/intruder" in xfcc
    labels = {"listener": "api", "route": "default"}
    assert eventually(lambda: proxy.sample(WOULD) == 4)
    assert proxy.sample(WOULD, **labels, rule="admin", reason="not_verified") == 1
    assert proxy.sample(WOULD, **labels, rule="admin", reason="identity_not_allowed") == 1
    assert proxy.sample(WOULD, **labels, rule="api", reason="not_verified") == 1
    assert proxy.sample(WOULD, **labels, rule="default", reason="denied") == 1
    assert proxy.sample(REFUSED) == 0


def test_the_content_of_a_would_refuse_request_is_forwarded(
    start: Start, http_upstream: HTTPUpstream, pki: PkiFiles
) -> None:
    proxy = start()
    with Client(pki, proxy.port(), cert=None).connect() as tls:
        secret = b"POST /admin/users HTTP/1.1\r\nHost: api\r\nContent-Length: 6\r\n\r\nsecret"
        tls.sendall(get("/public/1") + secret + get("/public/2"))
        assert [status(r) for r in read_responses(tls, 3)] == [200, 200, 200]
    assert [r.target for r in http_upstream.requests] == [b"/public/1", b"/admin/users",
                                                          b"/public/2"]  # fmt: skip
    assert b"secret" in http_upstream.raw


def test_an_unsafe_path_is_still_refused_in_audit_mode(
    start: Start, http_upstream: HTTPUpstream, pki: PkiFiles
) -> None:
    proxy = start()
    with Client(pki, proxy.port(), cert="client").connect() as tls:
        tls.sendall(get("/%61dmin") + get("/public/after"))
        refused, after = read_responses(tls, 2)
    assert refused.startswith(b"HTTP/1.1 400 Bad Request\r\n") and status(after) == 200
    assert [r.target for r in http_upstream.requests] == [b"/public/after"]
    assert eventually(lambda: proxy.sample(REFUSED, rule="none", reason="unsafe_path") == 1)
    assert proxy.sample(WOULD) == 0


def test_enforce_true_refuses_as_before(
    start: Start, http_upstream: HTTPUpstream, pki: PkiFiles
) -> None:
    proxy = start(switch=ENFORCE)
    assert ask(pki, proxy.port(), None, *PATHS) == [403, 403, 200, 403]
    assert [r.target.decode() for r in http_upstream.requests] == ["/public/index.html"]
    assert eventually(lambda: proxy.sample(REFUSED) == 3)
    assert proxy.sample(WOULD) == 0


@pytest.mark.parametrize(("path", "expected"), [("/admin", "200"), ("/%61dmin", "400")])
def test_curl(start: Start, pki: PkiFiles, path: str, expected: str) -> None:
    proxy = start()
    assert curl_status(pki, proxy.port(), path, None) == expected


def test_a_would_refuse_request_is_logged_once_with_the_identity_rule_and_reason(
    tmp_path: Path, pki: PkiFiles, http_upstream: HTTPUpstream
) -> None:
    path = tmp_path / "json.yaml"
    text = audited(config_text(pki, http_upstream)).replace("format: text", "format: json")
    path.write_text(text.replace("level: debug", "level: info"))
    process = ProxyProcess(path)
    try:
        with Client(pki, process.port, cert="client-other").connect() as tls:
            tls.sendall(get("/admin/secret?x=1") + get("/api/ok"))
            assert [status(r) for r in read_responses(tls, 2)] == [200, 200]

        def lines() -> list[dict[str, object]]:
            parsed = [json.loads(line) for line in process.lines if line.startswith("{")]
            return [line for line in parsed if str(line["msg"]).startswith("HTTP request")]

        assert eventually(lambda: len(lines()) >= 1)
        (line,) = lines()  # once, and nothing for the admitted /api/ok
        assert str(line["msg"]).startswith("HTTP request would be refused with 403")
        assert "audit mode" in str(line["msg"])
        assert line["level"] == "info" and line["result"] == "would_refuse"
        assert line["status"] == 403 and line["rule"] == "admin"
        assert line["reason"] == "identity_not_allowed"
        assert line["method"] == "GET" and line["target"] == "/admin/secret?x=1"
        assert line["client_spiffe_id"] == "spiffe://example.org/ns/dev/sa/intruder"
        assert line["verified"] is True and line["route"] == "default"
    finally:
        process.process.terminate()
        process.process.wait(timeout=10)
        process.assert_no_traceback()


# -- HTTP/2 and gRPC -------------------------------------------------------------------------


def h2_proxy(tmp_path: Path, pki: PkiFiles, upstream: H2Upstream, switch: str) -> RunningProxy:
    rules = RULES.replace("    http_authorization:\n", switch)
    path = tmp_path / "h2-audit.yaml"
    path.write_text(http2_config(pki, upstream.port, mode="request", extra="\n" + rules.rstrip()))
    return RunningProxy(path)


def test_http2_streams_the_rules_would_refuse_reach_the_upstream(
    tmp_path: Path, pki: PkiFiles, h2_upstream: H2Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = h2_proxy(tmp_path, pki, h2_upstream, AUDIT)
    logger = logging.getLogger("mtlsproxy")  # whether or not it propagates (logs.configure)
    logger.addHandler(caplog.handler)
    client = H2Client(pki, proxy.port(), cert="client-other")
    try:
        plain = client.get("/echo.Admin/Drop", method="POST", body=b"secret")
        call = client.get("/elsewhere", method="POST", headers=GRPC, body=b"\0\0\0\0\0")
        assert plain.status == 200 and call.status == 200
        assert call.header(b"grpc-status") is None or call.header(b"grpc-status") != b"7"
        forwarded = [dict(headers) for headers in h2_upstream.requests]
        assert [h[b":path"] for h in forwarded] == [b"/echo.Admin/Drop", b"/elsewhere"]
        assert forwarded[0][b"x-ssl-client-spiffe-id"] == b"spiffe://example.org/ns/dev/sa/intruder"
        assert eventually(lambda: proxy.sample(WOULD) == 2)
        assert proxy.sample(WOULD, rule="admin-service", reason="identity_not_allowed") == 1
        assert proxy.sample(WOULD, rule="default", reason="denied") == 1
        assert proxy.sample(REFUSED) == 0
        lines = [r for r in caplog.records if "would be refused" in r.getMessage()]
        fields = [line.__dict__.get("fields", {}) for line in lines]
        assert [(f["rule"], f["reason"], f["target"]) for f in fields] == [
            ("admin-service", "identity_not_allowed", "/echo.Admin/Drop"),
            ("default", "denied", "/elsewhere"),
        ]
        assert all(f["result"] == "would_refuse" for f in fields)
        assert all(f["client_subject"] == "CN=intruder" for f in fields)
    finally:
        logger.removeHandler(caplog.handler)
        client.close()
        proxy.stop()


def test_http2_enforce_true_refuses_as_before(
    tmp_path: Path, pki: PkiFiles, h2_upstream: H2Upstream
) -> None:
    proxy = h2_proxy(tmp_path, pki, h2_upstream, ENFORCE)
    client = H2Client(pki, proxy.port(), cert="client-other")
    try:
        assert client.get("/echo.Admin/Drop").status == 403
        assert h2_upstream.requests == []
        assert eventually(lambda: proxy.sample(REFUSED) == 1)
        assert proxy.sample(WOULD) == 0
    finally:
        client.close()
        proxy.stop()


@pytest.mark.parametrize("enforce", [False, True], ids=["audit", "enforce"])
def test_a_grpc_call_the_rules_would_refuse(
    tmp_path: Path, pki: PkiFiles, service: tuple[EchoService, int], enforce: bool
) -> None:
    """A real grpcio client: in audit mode the call the default denies is served (and
    counted); enforced, it fails with PERMISSION_DENIED, as before."""
    text = grpc_config(pki, service[1], "native", "auto")
    deny = f"    http_authorization:\n      enforce: {str(enforce).lower()}\n      default: deny\n"
    text = text.replace("    forward_identity:", deny + "    forward_identity:", 1)
    path = tmp_path / "grpc-audit.yaml"
    path.write_text(text)
    proxy = RunningProxy(path)
    try:
        with grpc.secure_channel(f"localhost:{proxy.port()}", client_credentials(pki)) as channel:
            call = channel.unary_unary(method("Unary"))
            if enforce:
                with pytest.raises(grpc.RpcError) as error:
                    call(b"hello", timeout=10)
                assert error.value.code() is grpc.StatusCode.PERMISSION_DENIED
            else:
                assert verified(call(b"hello", timeout=10))
        counter, other = (REFUSED, WOULD) if enforce else (WOULD, REFUSED)
        assert eventually(lambda: proxy.sample(counter, rule="default", reason="denied") == 1)
        assert proxy.sample(other) == 0
    finally:
        proxy.stop()
