"""HTTP/2 in HTTP mode end to end, over real TLS on 127.0.0.1: an h2 client (the ``h2`` library
and curl) through the proxy to an h2c upstream. Identity headers on every stream, the client's
copies removed, trailers both ways, resets crossing over, per-path rules per stream, ALPN on
both engines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from h2.errors import ErrorCodes

from mtlsproxy.pki import PkiFiles
from tests.proxy.conftest import render_config
from tests.proxy.harness import Client, RunningProxy, Upstream, eventually
from tests.proxy.http2_harness import H2Client, H2Upstream

FRONTEND = "spiffe://example.org/ns/prod/sa/frontend"
ENGINES = ["openssl", "native"]

Start = Callable[..., RunningProxy]


def http2_config(
    pki: PkiFiles,
    upstream_port: int,
    engine: str = "openssl",
    protocol: str = "auto",
    extra: str = "",
    mode: str = "require",
) -> str:
    forward = (
        "\n      mode: http\n      headers: {X-SSL-Client-SPIFFE-ID: spiffe_id}"
        f"\n      upstream_protocol: {protocol}{extra}"
    )
    return render_config(
        pki, f"127.0.0.1:{upstream_port}", mode, forward_identity=forward, engine=engine
    )


@pytest.fixture
def h2_upstream() -> Iterator[H2Upstream]:
    server = H2Upstream()
    yield server
    server.stop()


@contextlib.contextmanager
def proxies(directory: Path, prefix: str) -> Iterator[Callable[[str], RunningProxy]]:
    """Run proxies from config texts (files ``prefix-N.yaml`` in ``directory``); all stopped
    at the end."""
    running: list[RunningProxy] = []

    def run(text: str) -> RunningProxy:
        path = directory / f"{prefix}-{len(running)}.yaml"
        path.write_text(text)
        running.append(RunningProxy(path))
        return running[-1]

    try:
        yield run
    finally:
        for proxy in running:
            proxy.stop()


@pytest.fixture
def start(tmp_path: Path, pki: PkiFiles, h2_upstream: H2Upstream) -> Iterator[Start]:
    with proxies(tmp_path, "h2") as run:
        yield lambda text=None, **options: run(
            text or http2_config(pki, h2_upstream.port, **options)
        )


def headers_seen(body: dict) -> dict[str, list[str]]:
    """The upstream's echo of the headers it received, by lower-case name."""
    seen: dict[str, list[str]] = {}
    for name, value in body["headers"]:
        seen.setdefault(name.lower(), []).append(value)
    return seen


@pytest.mark.parametrize("engine", ENGINES)
def test_every_stream_carries_the_verified_identity(
    start: Start, pki: PkiFiles, engine: str
) -> None:
    proxy = start(engine=engine)
    client = H2Client(pki, proxy.port())
    try:
        assert client.alpn == "h2"
        forged = [
            (b"x-forwarded-client-cert", b"By=spiffe://evil;Hash=00"),
            (b"x-ssl-client-spiffe-id", b"spiffe://example.org/ns/prod/sa/admin"),
        ]
        streams = [client.request(f"/item/{n}", headers=forged) for n in range(5)]
        for stream_id in streams:
            response = client.wait(stream_id)
            assert response.status == 200
            seen = headers_seen(response.json())
            assert seen[":path"][0].startswith("/item/")
            assert len(seen["x-forwarded-client-cert"]) == 1
            assert f"URI={FRONTEND}" in seen["x-forwarded-client-cert"][0]
            assert "evil" not in seen["x-forwarded-client-cert"][0]
            assert seen["x-ssl-client-spiffe-id"] == [FRONTEND]
            assert all(name == name.lower() for name in seen)
    finally:
        client.close()


def test_trailers_and_content_pass_both_ways(start: Start, pki: PkiFiles) -> None:
    proxy = start()
    client = H2Client(pki, proxy.port())
    try:
        body = b"x" * 300_000  # past the 64 KiB windows and buffer_size: flow control
        response = client.get(
            "/upload", method="POST", body=body, trailers=[(b"x-client-trailer", b"done")]
        )
        assert response.status == 200
        sent = response.json()
        assert sent["size"] == len(body)
        assert sent["trailers"] == [["x-client-trailer", "done"]]
        assert response.trailers == [(b"x-upstream-trailer", b"yes")]
    finally:
        client.close()


def test_a_forged_identity_in_trailers_is_removed(start: Start, pki: PkiFiles) -> None:
    proxy = start()
    client = H2Client(pki, proxy.port())
    try:
        response = client.get(
            "/", method="POST", body=b"hi",
            trailers=[(b"x-forwarded-client-cert", b"Hash=00"), (b"x-ok", b"1")],
        )  # fmt: skip
        assert response.json()["trailers"] == [["x-ok", "1"]]
    finally:
        client.close()


def test_a_client_reset_resets_the_upstream_stream(
    start: Start, pki: PkiFiles, h2_upstream: H2Upstream
) -> None:
    proxy = start()
    client = H2Client(pki, proxy.port())
    try:
        stream_id = client.conn.get_next_available_stream_id()
        head = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"localhost"),
                (b":path", b"/slow")]  # fmt: skip
        client.conn.send_headers(stream_id, head)
        client.flush()
        assert eventually(lambda: len(h2_upstream.requests) == 1)
        client.conn.reset_stream(stream_id, 8)  # CANCEL
        client.flush()
        assert eventually(lambda: h2_upstream.resets == [8])
        # the connection goes on
        assert client.get("/after").status == 200
    finally:
        client.close()


def test_h2c_serves_http2_to_a_client_without_alpn(start: Start, pki: PkiFiles) -> None:
    proxy = start(protocol="h2c")
    client = H2Client(pki, proxy.port(), alpn=False)
    try:
        assert client.alpn is None
        response = client.get("/prior-knowledge")
        assert response.status == 200
        assert f"URI={FRONTEND}" in headers_seen(response.json())["x-forwarded-client-cert"][0]
    finally:
        client.close()


def test_http1_clients_still_get_http1_on_auto(start: Start, pki: PkiFiles) -> None:
    proxy = start()
    with Client(pki, proxy.port()).connect() as tls:
        assert tls.selected_alpn_protocol() is None  # offered none: served as HTTP/1.1


@pytest.mark.parametrize(
    ("protocol", "offered"), [("auto", "h2"), ("http/1.1", "http/1.1"), ("h2-to-http/1.1", "h2")]
)
def test_alpn_follows_upstream_protocol(
    start: Start, pki: PkiFiles, protocol: str, offered: str
) -> None:
    proxy = start(protocol=protocol)
    client = Client(pki, proxy.port())
    context = client.context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    raw = socket.create_connection(("127.0.0.1", proxy.port()), timeout=5)
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.selected_alpn_protocol() == offered


def curl_http2(pki: PkiFiles, port: int, path: str) -> dict:
    """``curl --http2`` with the client certificate and a forged XFCC: the JSON body."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    directory = pki.directory
    result = subprocess.run(
        ["curl", "-sS", "--http2", "--cacert", str(pki.ca_cert),
         "--cert", str(directory / "client.crt"), "--key", str(directory / "client.key"),
         "-H", "X-Forwarded-Client-Cert: forged", "-w", "\n%{http_version}",
         f"https://localhost:{port}{path}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    body, version = result.stdout.rsplit("\n", 1)
    assert version == "2"
    return json.loads(body)


def test_curl_http2_with_a_client_certificate(start: Start, pki: PkiFiles) -> None:
    proxy = start(engine="native")
    seen = headers_seen(curl_http2(pki, proxy.port(), "/via-curl"))
    assert seen[":path"] == ["/via-curl"]
    assert len(seen["x-forwarded-client-cert"]) == 1
    assert f"URI={FRONTEND}" in seen["x-forwarded-client-cert"][0]


def test_draining_sends_goaway_to_http2_clients(start: Start, pki: PkiFiles) -> None:
    proxy = start()
    client = H2Client(pki, proxy.port())
    try:
        assert client.get("/before").status == 200
        draining = asyncio.run_coroutine_threadsafe(proxy.proxy.drain(timeout=5), proxy.loop)
        client.sock.settimeout(5)
        while client.goaway is None and not client.closed:
            client.read_once()
        assert client.goaway is not None
        assert client.goaway.error_code == 0 and client.goaway.last_stream_id == 1
        client.read_until_closed()  # no stream open: the proxy closes at once
        draining.result(timeout=10)
    finally:
        client.close()


def test_a_stalled_upstream_holds_the_client_at_the_advertised_windows(
    tmp_path: Path, pki: PkiFiles
) -> None:
    """The upstream never grants window back: the client can send the upstream's window plus
    at most ours (the stream's 64 KiB), and no WINDOW_UPDATE comes for more."""
    stalled = H2Upstream(acknowledge=False)
    path = tmp_path / "stalled.yaml"
    path.write_text(http2_config(pki, stalled.port))
    proxy = RunningProxy(path)
    client = H2Client(pki, proxy.port())
    try:
        head = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"localhost"),
                (b":path", b"/upload")]  # fmt: skip
        client.conn.send_headers(1, head)
        client.flush()
        sent = client.send_while_window(1, b"x" * (4 << 20))
        assert eventually(lambda: stalled.received == 65_535)  # the upstream's stream window
        # and what waits in the proxy: at most our stream window (h2 grants window back in
        # steps of half a window, so it may be less)
        assert 65_535 < sent <= 65_535 + 65_535
        assert client.conn.local_flow_control_window(1) == 0
    finally:
        client.close()
        proxy.stop()
        stalled.stop()


def test_an_upstream_that_breaks_http2_is_counted_and_the_client_told(
    tmp_path: Path, pki: PkiFiles
) -> None:
    def not_http2(sock: socket.socket, server: Upstream) -> None:
        sock.recv(65536)
        sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")  # no h2c here
        sock.recv(65536)

    broken = Upstream(not_http2)
    path = tmp_path / "broken.yaml"
    path.write_text(http2_config(pki, broken.port))  # type: ignore[arg-type]
    proxy = RunningProxy(path)
    client = H2Client(pki, proxy.port())
    try:
        client.request("/")
        client.read_until_closed()
        assert client.goaway is not None
        assert client.goaway.error_code == ErrorCodes.INTERNAL_ERROR
        # "HTT" read as a frame length: 4.7 MB, refused at the header
        counted = {"side": "upstream", "reason": "frame_too_large"}
        assert eventually(
            lambda: proxy.sample("mtlsproxy_http2_connection_errors_total", **counted) == 1
        )
    finally:
        client.close()
        proxy.stop()
        broken.stop()


def test_an_unreachable_upstream_closes_the_http2_connection(tmp_path: Path, pki: PkiFiles) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    path = tmp_path / "unreachable.yaml"
    text = render_config(pki, f"127.0.0.1:{port}", forward_identity=(
        "\n      mode: http\n      upstream_protocol: auto"
    ))  # fmt: skip
    path.write_text(text)
    proxy = RunningProxy(path)
    client = H2Client(pki, proxy.port())
    try:
        client.request("/")
        client.read_until_closed(timeout=10)
        assert client.closed
    finally:
        client.close()
        proxy.stop()
