"""Hostile HTTP/2 clients, each over a real TLS socket, each refused and counted: the connection
ends with GOAWAY and the error code RFC 9113 asks for, ``mtlsproxy_http2_connection_errors_total``
counts it with its reason, and (except where the request was already well formed) the upstream
never sees the request. Frames are built with ``h2``'s own frame and HPACK libraries."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from h2.errors import ErrorCodes
from hpack import Encoder
from hyperframe.frame import ContinuationFrame, DataFrame, HeadersFrame, PingFrame

from mtlsproxy.pki import PkiFiles
from tests.proxy.harness import RunningProxy, eventually
from tests.proxy.http1_upstream import H1Upstream
from tests.proxy.http2_harness import H2Client, H2Upstream
from tests.proxy.test_hostile import BUFFER_SIZE, client_side, small_kernel_buffers
from tests.proxy.test_http2 import http2_config

LIMITS = (
    "\n      http2: {max_concurrent_streams: 10, max_header_list_size: 4096, "
    "max_resets: 20, reset_interval: 10s}"
)
REQUEST = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost"),
           (b":path", b"/")]  # fmt: skip


# The client side is the bridge's in both modes: an h2c upstream, or HTTP/1.1 through the gateway.
@pytest.fixture(scope="module", params=["auto", "h2-to-http/1.1"])
def h2_upstream(request: pytest.FixtureRequest) -> Iterator[H2Upstream]:
    server = H2Upstream() if request.param == "auto" else H1Upstream()
    server.protocol = request.param  # type: ignore[attr-defined]
    yield server  # type: ignore[misc]
    server.stop()


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory, pki: PkiFiles, h2_upstream: H2Upstream
) -> Iterator[RunningProxy]:
    path: Path = tmp_path_factory.mktemp("abuse") / "h2-abuse.yaml"
    protocol = h2_upstream.protocol  # type: ignore[attr-defined]
    text = http2_config(pki, h2_upstream.port, engine="native", protocol=protocol, extra=LIMITS)
    path.write_text(text)
    running = RunningProxy(path)
    yield running
    running.stop()


Attack = Callable[[H2Client], None]


def refused(
    proxy: RunningProxy,
    pki: PkiFiles,
    h2_upstream: H2Upstream,
    attack: Attack,
    reason: str,
    code: ErrorCodes,
    reaches_upstream: bool = False,
) -> None:
    """Run ``attack`` on a fresh connection: GOAWAY ``code``, closed, counted as ``reason``.

    The GOAWAY arrives even when the attack left bytes the proxy never processed: the proxy
    lingers (half-close, discard what still comes) instead of closing with them unread, which
    would be a TCP reset that drops the GOAWAY at the client."""
    before = proxy.sample("mtlsproxy_http2_connection_errors_total", side="client", reason=reason)
    requests = len(h2_upstream.requests)
    client = H2Client(pki, proxy.port(), strict=False)
    try:
        attack(client)
        client.read_until_closed()
    finally:
        client.close()
    assert client.goaway is not None, "no GOAWAY"
    assert client.goaway.error_code == code
    counted = before + 1
    assert eventually(
        lambda: (
            proxy.sample("mtlsproxy_http2_connection_errors_total", side="client", reason=reason)
            == counted
        )
    )
    if not reaches_upstream:
        assert len(h2_upstream.requests) == requests


def rapid_reset(client: H2Client) -> None:
    """CVE-2023-44487: open streams and reset them at once, many times."""
    for _ in range(40):
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(stream_id, REQUEST)
        client.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
    client.flush()


def continuation_flood(frames: int, size: int) -> Attack:
    """CVE-2024-27316 class: a header block that never ends (no END_HEADERS)."""

    def attack(client: H2Client) -> None:
        block = Encoder().encode(REQUEST)
        continuation = ContinuationFrame(1, b"\x40" * size).serialize()
        # in one write: the proxy closes after the frame it refuses, and frames still on
        # their way then would make the client's kernel discard the GOAWAY (a reset)
        client.send_raw(HeadersFrame(1, block).serialize() + continuation * frames)

    return attack


def hpack_bomb(client: H2Client) -> None:
    """A small block that decodes into a large header list: one large field indexed once,
    then referenced from the dynamic table (one byte a reference)."""
    field = (b"x-bomb", b"a" * 3000)
    block = Encoder().encode([*REQUEST, *[field] * 30])
    assert len(block) < 4096  # under the encoded bound: the decoded bound refuses it
    client.send_raw(HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]).serialize())


def send_headers(headers: list[tuple[bytes, bytes]], body: bytes = b"") -> Attack:
    def attack(client: H2Client) -> None:
        client.conn.send_headers(1, headers, end_stream=not body)
        if body:
            client.conn.send_data(1, body, end_stream=True)
        client.flush()

    return attack


def too_many_streams(client: H2Client) -> None:
    for _ in range(11):
        client.conn.send_headers(client.conn.get_next_available_stream_id(), REQUEST)
    client.flush()


def oversized_frame(client: H2Client) -> None:
    """A DATA frame header announcing 1 MiB: refused at the header, before any payload."""
    client.send_raw((1 << 20).to_bytes(3, "big") + b"\x00\x00" + (1).to_bytes(4, "big"))


def test_rapid_reset_gets_enhance_your_calm(
    proxy: RunningProxy, pki: PkiFiles, h2_upstream: H2Upstream
) -> None:
    refused(proxy, pki, h2_upstream, rapid_reset, "rapid_reset", ErrorCodes.ENHANCE_YOUR_CALM,
            reaches_upstream=True)  # fmt: skip


@pytest.mark.parametrize(
    ("frames", "size"), [(3, 16_384), (65, 1)], ids=["large-block", "endless-block"]
)
def test_a_continuation_flood_is_refused(
    proxy: RunningProxy, pki: PkiFiles, h2_upstream: H2Upstream, frames: int, size: int
) -> None:
    code = ErrorCodes.ENHANCE_YOUR_CALM if size > 1 else ErrorCodes.PROTOCOL_ERROR
    attack = continuation_flood(frames, size)
    refused(proxy, pki, h2_upstream, attack, "header_block_too_large", code)


def test_an_hpack_bomb_is_refused(
    proxy: RunningProxy, pki: PkiFiles, h2_upstream: H2Upstream
) -> None:
    refused(proxy, pki, h2_upstream, hpack_bomb, "header_list_too_large",
            ErrorCodes.ENHANCE_YOUR_CALM)  # fmt: skip


MALFORMED = {
    "custom-pseudo-header": [*REQUEST, (b":custom", b"1")],
    "no-path": REQUEST[:3],
    "duplicate-path": [*REQUEST, (b":path", b"/again")],
    "pseudo-after-regular": [*REQUEST[:3], (b"x-a", b"1"), REQUEST[3]],
    "response-pseudo-header": [*REQUEST, (b":status", b"200")],
    "uppercase-name": [*REQUEST, (b"X-Upper", b"1")],
    "connection": [*REQUEST, (b"connection", b"keep-alive")],
    "keep-alive": [*REQUEST, (b"keep-alive", b"timeout=5")],
    "transfer-encoding": [*REQUEST, (b"transfer-encoding", b"chunked")],
    "upgrade": [*REQUEST, (b"upgrade", b"h2c")],
    "proxy-connection": [*REQUEST, (b"proxy-connection", b"close")],
    "te-not-trailers": [*REQUEST, (b"te", b"gzip")],
}


@pytest.mark.parametrize("headers", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_and_connection_specific_headers_are_refused(
    proxy: RunningProxy, pki: PkiFiles, h2_upstream: H2Upstream, headers: list
) -> None:
    refused(proxy, pki, h2_upstream, send_headers(headers), "malformed_headers",
            ErrorCodes.PROTOCOL_ERROR)  # fmt: skip


def test_content_length_disagreeing_with_data_is_refused(
    proxy: RunningProxy, pki: PkiFiles, h2_upstream: H2Upstream
) -> None:
    post = [(b":method", b"POST"), *REQUEST[1:], (b"content-length", b"10")]
    refused(proxy, pki, h2_upstream, send_headers(post, b"12345"), "content_length",
            ErrorCodes.PROTOCOL_ERROR, reaches_upstream=True)  # fmt: skip


def test_streams_past_max_concurrent_streams_are_refused(
    proxy: RunningProxy, pki: PkiFiles, h2_upstream: H2Upstream
) -> None:
    refused(proxy, pki, h2_upstream, too_many_streams, "too_many_streams",
            ErrorCodes.PROTOCOL_ERROR, reaches_upstream=True)  # fmt: skip


def test_a_frame_longer_than_max_frame_size_is_refused_at_its_header(
    proxy: RunningProxy, pki: PkiFiles, h2_upstream: H2Upstream
) -> None:
    refused(proxy, pki, h2_upstream, oversized_frame, "frame_too_large",
            ErrorCodes.FRAME_SIZE_ERROR)  # fmt: skip


def past_the_window(client: H2Client) -> None:
    """DATA past the windows, as raw frames: 160 KiB where a stalled upstream (64 KiB) and
    our stream window (64 KiB) leave room for 128 KiB whatever the proxy reads at a time."""
    post = [(b":method", b"POST"), *REQUEST[1:]]
    client.conn.send_headers(1, post)
    client.flush()
    client.send_raw(DataFrame(1, b"x" * 16_384).serialize() * 10)


def test_data_past_the_flow_control_window_is_refused(tmp_path: Path, pki: PkiFiles) -> None:
    stalled = H2Upstream(acknowledge=False)
    path = tmp_path / "stalled.yaml"
    path.write_text(http2_config(pki, stalled.port))
    proxy = RunningProxy(path)
    try:
        refused(proxy, pki, stalled, past_the_window, "flow_control",
                ErrorCodes.FLOW_CONTROL_ERROR, reaches_upstream=True)  # fmt: skip
    finally:
        proxy.stop()
        stalled.stop()


def test_a_well_behaved_client_is_unaffected(proxy: RunningProxy, pki: PkiFiles) -> None:
    client = H2Client(pki, proxy.port())
    try:
        for _ in range(15):  # a few cancellations are normal
            stream_id = client.request("/cancel-me", method="POST", body=b"x")
            client.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
            client.flush()
        assert client.get("/after").status == 200
    finally:
        client.close()


def test_a_ping_flood_from_a_client_that_never_reads_is_paused(
    proxy: RunningProxy, pki: PkiFiles
) -> None:
    """h2 answers every PING (and SETTINGS) itself: a client that sends them by the thousand
    and reads nothing is paused once the answers pass ``limits.buffer_size`` (the engine's
    ``Pause.CLIENT_WRITE_FULL``), so they cannot pile up in memory."""
    small_kernel_buffers(proxy)
    client = H2Client(pki, proxy.port())
    try:
        assert eventually(lambda: len(proxy.proxy.listeners[0].connections) == 1)
        pings = b"".join(PingFrame(0, n.to_bytes(8, "big")).serialize() for n in range(1000))
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # stalls soon
        client.sock.settimeout(3)  # stalled: not read for 3 s (a slow proxy reads sooner)
        largest, stalled = 0, False
        for _ in range(100):  # 100,000 PINGs at most
            try:
                client.sock.sendall(pings)
            except TimeoutError:
                stalled = True  # the proxy stopped reading us
                break
            largest = max(largest, client_side(proxy)[0])
        buffered, paused = client_side(proxy)
        assert max(largest, buffered) <= BUFFER_SIZE + 64 * 1024
        assert stalled and paused, (stalled, paused, largest, buffered)
    finally:
        client.close()
