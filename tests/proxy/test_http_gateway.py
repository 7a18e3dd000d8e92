"""HTTP mode behaves like an HTTP proxy: an upstream that is down answers 502, one that does
not answer 504 (per stream to an HTTP/2 client), and the client's address goes upstream in
X-Forwarded-For, X-Forwarded-Proto and Forwarded when asked, with the client's own copies
removed unless it is a verified gateway the listener trusts."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import h11
import pytest

from mtlsproxy.pki import PkiFiles
from tests.proxy.conftest import ProxyFactory
from tests.proxy.harness import Client, ProxyProcess, RunningProxy, eventually, read_until_closed
from tests.proxy.http2_harness import H2Client
from tests.proxy.test_access_log import access_lines
from tests.proxy.test_forwarding import HTTPUpstream, http_proxy, read_responses
from tests.proxy.test_http2 import ENGINES, http2_config

HTTP = "{mode: http, forwarded: [x-forwarded-for, x-forwarded-proto, forwarded]}"
TRUSTING = HTTP[:-1] + ", trust_forwarded: true}"
SPOOF = (
    b"GET / HTTP/1.1\r\nHost: api\r\nX-Forwarded-For: 203.0.113.9\r\n"
    b"X-Forwarded-Proto: http\r\nForwarded: for=203.0.113.9\r\n\r\n"
)


def response_of(data: bytes) -> h11.Response:
    connection = h11.Connection(h11.CLIENT)
    connection.send(h11.Request(method="GET", target="/", headers=[("Host", "api")]))
    connection.receive_data(data)
    event = connection.next_event()
    assert isinstance(event, h11.Response), data
    return event


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def unanswering() -> Iterator[int]:
    """A port whose accept queue is full: a connect to it hangs until the proxy's timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    yield port
    for filler in fillers:
        filler.close()
    server.close()


def test_an_upstream_that_is_down_answers_502(make_proxy: ProxyFactory, pki: PkiFiles) -> None:
    proxy = make_proxy(upstream_address=f"127.0.0.1:{closed_port()}", forward_identity="http")
    with Client(pki, proxy.port()).connect() as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
        answer = read_until_closed(tls)
    response = response_of(answer)
    assert response.status_code == 502
    assert (b"connection", b"close") in response.headers
    assert answer.endswith(b"cannot be reached\n")
    assert proxy.sample("mtlsproxy_upstream_errors_total", reason="connect_refused") == 1


def test_an_upstream_that_does_not_answer_504(
    make_proxy: ProxyFactory, pki: PkiFiles, unanswering: int
) -> None:
    proxy = make_proxy(upstream_address=f"127.0.0.1:{unanswering}", forward_identity="http")
    with Client(pki, proxy.port()).connect() as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
        answer = read_until_closed(tls, timeout=10)  # the config's connect timeout is 2 s
    assert response_of(answer).status_code == 504
    assert proxy.sample("mtlsproxy_upstream_errors_total", reason="connect_timeout") == 1


def test_l4_forwarding_closes_without_an_http_answer(
    make_proxy: ProxyFactory, pki: PkiFiles
) -> None:
    proxy = make_proxy(upstream_address=f"127.0.0.1:{closed_port()}")
    with Client(pki, proxy.port()).connect() as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
        assert read_until_closed(tls) == b""


def test_forwarded_headers_replace_the_clients_own(make_proxy: ProxyFactory, pki: PkiFiles) -> None:
    upstream = HTTPUpstream()
    try:
        proxy = http_proxy(make_proxy, upstream, mode="require", forward_identity=HTTP)
        with Client(pki, proxy.port()).connect() as tls:
            tls.sendall(SPOOF)
            (response,) = read_responses(tls, 1)
        assert response.startswith(b"HTTP/1.1 200")
        assert upstream.header(0, b"x-forwarded-for") == [b"127.0.0.1"]
        assert upstream.header(0, b"x-forwarded-proto") == [b"https"]
        assert upstream.header(0, b"forwarded") == [b"for=127.0.0.1;proto=https"]
    finally:
        upstream.stop()


@pytest.mark.parametrize(("cert", "kept"), [("client", True), (None, False)])
def test_a_trusted_verified_gateway_keeps_its_list(
    make_proxy: ProxyFactory, pki: PkiFiles, cert: str | None, kept: bool
) -> None:
    """trust_forwarded keeps a verified client's X-Forwarded-For and Forwarded lists (ours
    last); an anonymous client's are removed even then. X-Forwarded-Proto is always ours."""
    upstream = HTTPUpstream()
    try:
        proxy = http_proxy(make_proxy, upstream, mode="request", forward_identity=TRUSTING)
        with Client(pki, proxy.port(), cert=cert).connect() as tls:
            tls.sendall(SPOOF)
            read_responses(tls, 1)
        forwarded_for = upstream.header(0, b"x-forwarded-for")
        expected = [b"203.0.113.9", b"127.0.0.1"] if kept else [b"127.0.0.1"]
        assert forwarded_for == expected
        assert upstream.header(0, b"x-forwarded-proto") == [b"https"]
        assert upstream.header(0, b"forwarded")[-1] == b"for=127.0.0.1;proto=https"
        assert len(upstream.header(0, b"forwarded")) == (2 if kept else 1)
    finally:
        upstream.stop()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("upstream", "status", "text", "reason"),
    [
        ("down", 502, b"cannot be reached\n", "connect_refused"),
        ("unanswering", 504, b"did not answer in time\n", "connect_timeout"),
    ],
)
def test_http2_requests_get_the_gateway_error_each(
    tmp_path: Path,
    pki: PkiFiles,
    request: pytest.FixtureRequest,
    engine: str,
    upstream: str,
    status: int,
    text: bytes,
    reason: str,
) -> None:
    """An HTTP/2 client is answered per stream as an HTTP/1.1 one is: a refused connect
    fails within a millisecond, often before the client's first request arrives, and a
    hanging one after the config's 2 s; the requests the client sends after its handshake
    are answered all the same, and GOAWAY then names the last of them."""
    port = closed_port() if upstream == "down" else request.getfixturevalue(upstream)
    config = tmp_path / "h2.yaml"
    config.write_text(http2_config(pki, port, engine=engine, protocol="h2c"))
    proxy = RunningProxy(config)
    client = H2Client(pki, proxy.port())
    try:
        streams = [client.request(f"/item/{n}") for n in range(3)]
        for stream_id in streams:
            response = client.wait(stream_id)
            assert response.status == status and response.body.endswith(text)
        client.read_until_closed()
        assert client.goaway is not None
        assert client.goaway.error_code == 0 and client.goaway.last_stream_id == streams[-1]
        assert proxy.sample("mtlsproxy_upstream_errors_total", reason=reason) == 1
    finally:
        client.close()
        proxy.stop()


def test_http2_client_gone_while_the_upstream_is_down(tmp_path: Path, pki: PkiFiles) -> None:
    """The client closes during the window of answers: the connection ends at once (not when
    the window closes), logged as the upstream's failure, with no traceback."""
    config = tmp_path / "h2.yaml"
    text = http2_config(pki, closed_port(), engine="native", protocol="h2c")
    config.write_text(text.replace("format: text", "format: json"))
    process = ProxyProcess(config)
    try:
        client = H2Client(pki, process.port)
        assert client.wait(client.request("/")).status == 502
        client.close()
        assert eventually(lambda: len(access_lines(process)) == 1, timeout=1.5)  # < lingering
        (line,) = access_lines(process)
        assert line["end"] == "upstream_unavailable" and line["upstream"] is not None
    finally:
        process.process.terminate()
        process.process.wait(timeout=10)
    process.assert_no_traceback()
