"""Per-path authorization end to end, over real sockets: one listener in ``client_auth.mode:
request`` in front of an h11 upstream, ``/admin`` for one allowed identity, ``/api`` for any
verified client, ``/public`` for anyone. Refused requests get the proxy's 403 in their place,
never reach the upstream, and the connection goes on; encoded paths are refused with 400."""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mtlsproxy.pki import PkiFiles
from tests.proxy.conftest import render_config
from tests.proxy.harness import (
    Client,
    MemoryClient,
    ProxyProcess,
    RunningProxy,
    eventually,
    read_until_closed,
)
from tests.proxy.test_forwarding import HTTPUpstream, read_responses

FRONTEND = "spiffe://example.org/ns/prod/sa/frontend"

AUTHORIZATION = f"""\
    http_authorization:
      rules:
        - name: admin
          prefix: /admin
          require: verified
          allow:
            - spiffe_id: {FRONTEND}
        - name: api
          prefix: /api
          require: verified
        - name: public
          prefix: /public
          require: any
      default: deny
"""

Start = Callable[..., RunningProxy]


def config_text(pki: PkiFiles, upstream: HTTPUpstream, engine: str = "openssl") -> str:
    text = render_config(
        pki, f"127.0.0.1:{upstream.port}", "request", forward_identity="http", engine=engine
    )
    return text.replace(
        "    forward_identity: http\n", "    forward_identity: http\n" + AUTHORIZATION
    )


@pytest.fixture
def http_upstream() -> Iterator[HTTPUpstream]:
    server = HTTPUpstream()
    yield server
    server.stop()


@pytest.fixture
def start(tmp_path: Path, pki: PkiFiles, http_upstream: HTTPUpstream) -> Iterator[Start]:
    running: list[RunningProxy] = []

    def factory(engine: str = "openssl") -> RunningProxy:
        path = tmp_path / f"paths-{len(running)}.yaml"
        path.write_text(config_text(pki, http_upstream, engine))
        running.append(RunningProxy(path))
        return running[-1]

    yield factory
    for proxy in running:
        proxy.stop()


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: api\r\n\r\n".encode("latin-1")


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def ask(pki: PkiFiles, port: int, cert: str | None, *paths: str) -> list[int]:
    """The status of each path, asked in turn on one keep-alive connection."""
    statuses = []
    with Client(pki, port, cert=cert).connect() as tls:
        for path in paths:
            tls.sendall(get(path))
            (response,) = read_responses(tls, 1)
            statuses.append(status(response))
    return statuses


PATHS = ("/admin/users", "/api/items", "/public/index.html", "/elsewhere")


@pytest.mark.parametrize("engine", ["openssl", "native"])
@pytest.mark.parametrize(
    ("cert", "expected"),
    [
        ("client", [200, 200, 200, 403]),  # the allowed identity
        ("client-other", [403, 200, 200, 403]),  # verified, not on /admin's list
        (None, [403, 403, 200, 403]),  # anonymous
    ],
    ids=["allowed", "verified", "anonymous"],
)
def test_each_client_gets_what_its_rules_say(
    start: Start,
    http_upstream: HTTPUpstream,
    pki: PkiFiles,
    engine: str,
    cert: str | None,
    expected: list[int],
) -> None:
    proxy = start(engine)
    assert ask(pki, proxy.port(), cert, *PATHS) == expected
    forwarded = [r.target.decode() for r in http_upstream.requests]
    assert forwarded == [p for p, s in zip(PATHS, expected, strict=True) if s == 200]


def test_a_refused_request_never_reaches_the_upstream_and_keep_alive_goes_on(
    start: Start, http_upstream: HTTPUpstream, pki: PkiFiles
) -> None:
    proxy = start()
    with Client(pki, proxy.port(), cert=None).connect() as tls:
        secret = b"POST /admin/users HTTP/1.1\r\nHost: api\r\nContent-Length: 6\r\n\r\nsecret"
        chunked = (
            b"POST /api/x HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"6\r\nhidden\r\n0\r\n\r\n"
        )
        # Pipelined, in one write: each answer comes in its request's place.
        tls.sendall(get("/public/1") + secret + get("/public/2") + chunked + get("/public/3"))
        responses = read_responses(tls, 5)
        assert [status(r) for r in responses] == [200, 403, 200, 403, 200]
        assert responses[0].endswith(b"ok 1") and responses[2].endswith(b"ok 2")
        assert responses[4].endswith(b"ok 3")
        assert b"Forbidden: this path needs a verified client certificate" in responses[1]
        assert b"Connection: close" not in responses[1]
        tls.sendall(get("/admin", "HEAD"))  # no body in the answer to HEAD
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += tls.recv(1)
        assert status(head) == 403 and b"Content-Length: " in head
        tls.sendall(get("/public/4"))
        assert read_responses(tls, 1)[0].endswith(b"ok 4")
    assert [r.target for r in http_upstream.requests] == [b"/public/%d" % i for i in range(1, 5)]
    assert b"secret" not in http_upstream.raw and b"hidden" not in http_upstream.raw


@pytest.mark.parametrize(
    "request_",
    [
        b"GET /admin HTTP/1.0\r\n\r\n",
        b"GET /admin HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n",
        b"POST /admin HTTP/1.1\r\nHost: api\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    ],
    ids=["http/1.0", "connection close", "expect 100-continue"],
)
def test_the_answer_closes_when_the_request_cannot_be_followed(
    start: Start, http_upstream: HTTPUpstream, pki: PkiFiles, request_: bytes
) -> None:
    proxy = start()
    with Client(pki, proxy.port(), cert=None).connect() as tls:
        tls.sendall(request_)
        answer = read_until_closed(tls)
    assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert b"\r\nConnection: close\r\n" in answer
    assert http_upstream.requests == []


BYPASSES = [
    "/%61dmin",
    "/%2561dmin",
    "/public/../admin",
    "/public/%2e%2e/admin",
    "/public%2f..%2fadmin",
    "/./admin",
    "//admin",
    "/public\\..\\admin",
    "/public;/../admin",
    "/;x/admin",
    "http://api/admin",
    "*",
]


@pytest.mark.parametrize("target", BYPASSES)
def test_encoded_paths_are_refused_with_400_and_the_connection_goes_on(
    start: Start, http_upstream: HTTPUpstream, pki: PkiFiles, target: str
) -> None:
    proxy = start()
    with Client(pki, proxy.port(), cert="client-other").connect() as tls:
        tls.sendall(get(target) + get("/public/after"))
        refused, after = read_responses(tls, 2)
    assert refused.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"not a normalized path" in refused
    assert status(after) == 200
    assert [r.target for r in http_upstream.requests] == [b"/public/after"]
    assert proxy.sample("mtlsproxy_http_requests_refused_total", rule="none",
                        reason="unsafe_path") == 1  # fmt: skip


def test_the_refusals_are_counted_by_rule_and_reason(
    start: Start, http_upstream: HTTPUpstream, pki: PkiFiles
) -> None:
    proxy = start()
    ask(pki, proxy.port(), None, "/admin", "/api", "/api/2", "/nowhere", "/public")
    ask(pki, proxy.port(), "client-other", "/admin", "/api")
    refused = "mtlsproxy_http_requests_refused_total"
    labels = {"listener": "api", "route": "default"}
    assert proxy.sample(refused, **labels, rule="admin", reason="not_verified") == 1
    assert proxy.sample(refused, **labels, rule="admin", reason="identity_not_allowed") == 1
    assert proxy.sample(refused, **labels, rule="api", reason="not_verified") == 2
    assert proxy.sample(refused, **labels, rule="default", reason="denied") == 1
    assert proxy.sample(refused) == 5
    # The 400 for ambiguous framing keeps its own reason and closes the connection.
    with Client(pki, proxy.port(), cert="client").connect() as tls:
        tls.sendall(
            b"POST /api HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
        )
        assert read_until_closed(tls).startswith(b"HTTP/1.1 400")
    assert proxy.sample(refused, rule="none", reason="ambiguous_framing") == 1


def curl_status(pki: PkiFiles, port: int, path: str, cert: str | None) -> str:
    command = [
        "curl", "-sS", "--max-time", "10", "--cacert", str(pki.ca_cert), "--path-as-is",
        "-o", "/dev/null", "-w", "%{http_code}", f"https://localhost:{port}{path}",
    ]  # fmt: skip
    if cert is not None:
        command[1:1] = ["--cert", str(pki.directory / f"{cert}.crt"),
                        "--key", str(pki.directory / f"{cert}.key")]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=20).stdout


@pytest.mark.parametrize(
    ("path", "cert", "expected"),
    [
        ("/admin", "client", "200"),
        ("/admin", "client-other", "403"),
        ("/admin", None, "403"),
        ("/api/x", "client-other", "200"),
        ("/api/x", None, "403"),
        ("/public", None, "200"),
        ("/public/../admin", None, "400"),
        ("/%61dmin", None, "400"),
    ],
)
def test_curl(start: Start, pki: PkiFiles, path: str, cert: str | None, expected: str) -> None:
    proxy = start()
    assert curl_status(pki, proxy.port(), path, cert) == expected


def test_the_answer_waits_for_the_upstream_to_answer_what_came_before(
    tmp_path: Path, pki: PkiFiles
) -> None:
    """An upstream that answers late: the 403 still comes after its response."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    path = tmp_path / "slow.yaml"
    path.write_text(config_text(pki, type("U", (), {"port": port})()))  # type: ignore[arg-type]
    proxy = RunningProxy(path)
    try:
        with Client(pki, proxy.port(), cert=None).connect() as tls:
            tls.sendall(get("/public/slow") + get("/admin") + get("/public/next"))
            upstream, _ = listener.accept()
            with upstream:
                upstream.settimeout(5)
                first = upstream.recv(65536)
                assert first.startswith(b"GET /public/slow ") and b"/public/next" not in first
                tls.settimeout(0.3)
                with pytest.raises((TimeoutError, ssl.SSLError, socket.timeout)):
                    tls.recv(1)  # nothing yet: the 403 may not overtake the first answer
                tls.settimeout(5)
                upstream.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
                second = upstream.recv(65536)  # released once the 403 was sent
                assert second.startswith(b"GET /public/next ")
                upstream.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext")
                responses = read_responses(tls, 3)
        assert [status(r) for r in responses] == [200, 403, 200]
        assert responses[0].endswith(b"slow") and responses[2].endswith(b"next")
    finally:
        listener.close()
        proxy.stop()


def test_a_refusal_is_logged_with_the_client_identity(
    tmp_path: Path, pki: PkiFiles, http_upstream: HTTPUpstream
) -> None:
    path = tmp_path / "json.yaml"
    text = config_text(pki, http_upstream).replace("format: text", "format: json")
    path.write_text(text.replace("level: debug", "level: info"))
    process = ProxyProcess(path)
    try:
        with Client(pki, process.port, cert="client-other").connect() as tls:
            tls.sendall(get("/admin/secret?x=1"))
            read_responses(tls, 1)

        def refusals() -> list[dict[str, object]]:
            lines = [json.loads(line) for line in process.lines if line.startswith("{")]
            return [line for line in lines if str(line["msg"]).startswith("HTTP request refused")]

        assert eventually(lambda: len(refusals()) == 1)
        (line,) = refusals()
        assert line["level"] == "info"
        assert line["status"] == 403 and line["rule"] == "admin"
        assert line["reason"] == "identity_not_allowed"
        assert line["method"] == "GET" and line["target"] == "/admin/secret?x=1"
        assert line["client_spiffe_id"] == "spiffe://example.org/ns/dev/sa/intruder"
        assert line["verified"] is True and line["route"] == "default"
        assert str(line["peer"]).startswith("127.0.0.1:")
    finally:
        process.process.terminate()
        process.process.wait(timeout=10)
        process.assert_no_traceback()


def test_requests_after_an_answer_still_go_when_the_client_closes_at_once(
    start: Start, http_upstream: HTTPUpstream, pki: PkiFiles
) -> None:
    """The client's close_notify comes with its requests: the upstream's write side is closed
    only after the requests held behind the answer were forwarded."""
    proxy = start()
    client = MemoryClient(pki, proxy.port(), cert=None)
    try:
        client.sock.sendall(client.client_hello())
        client.finish_handshake()
        client.tls.write(get("/public/1") + get("/admin") + get("/public/2"))
        client.close_notify()
        received, _ = client.receive_all()
    finally:
        client.close()
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", received)]
    assert statuses == [200, 403, 200], received
    assert [r.target for r in http_upstream.requests] == [b"/public/1", b"/public/2"]


def test_a_websocket_upgrade_behind_an_answer(
    start: Start, http_upstream: HTTPUpstream, pki: PkiFiles
) -> None:
    proxy = start()
    upgrade = (
        b"GET /public/ws HTTP/1.1\r\nHost: api\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with Client(pki, proxy.port(), cert=None).connect() as tls:
        tls.sendall(get("/public/1") + get("/admin") + upgrade)
        first, refused = read_responses(tls, 2)
        assert (status(first), status(refused)) == (200, 403)
        switching = b""
        while not switching.endswith(b"\r\n\r\n"):
            switching += tls.recv(1)
        assert switching.startswith(b"HTTP/1.1 101 ")
        tls.sendall(b"raw frame")
        assert tls.recv(9) == b"raw frame"  # echoed: the connection switched protocols
    assert [r.target for r in http_upstream.requests] == [b"/public/1", b"/public/ws"]
