"""The upstream-to-client response tracker: when the final answer to an Upgrade/CONNECT request
arrives, whatever came before it, at every split of the stream; and no exception, only a
refusal, for a stream that is not HTTP."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtlsproxy.forwarding.http.request import HTTPRefused, RequestRewriter
from mtlsproxy.forwarding.http.response import ResponseTracker, UpgradeDecision

ACCEPTED_101 = UpgradeDecision(accepted=True, status=101)
GAVE_UP = UpgradeDecision(accepted=False, status=None)

OK_LENGTH = b"HTTP/1.1 200 OK\r\nContent-Length: 31\r\n\r\nHTTP/1.1 101 Switching Prot\r\n\r\n"
OK_CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nHTTP/\r\n1a\r\n1.1 101 Switching Prot\r\n\r\n\r\n"
    b"0\r\nTrailer: x\r\n\r\n"
)
SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
BARE_101 = b"HTTP/1.1 101 Switching Protocols\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
HEAD_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"  # no content: answers a HEAD
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 36\r\n\r\n" + SWITCHING[:36]
FRAME = b"\x81\x05hello"  # what follows a 101: another protocol


def tracker_after(*requests: tuple[bytes, bool]) -> ResponseTracker:
    tracker = ResponseTracker()
    for method, upgrade in requests:
        assert tracker.request_sent(method, upgrade) is None
    return tracker


def decisions_at_each_byte(
    requests: list[tuple[bytes, bool]], stream: bytes
) -> list[tuple[int, UpgradeDecision]]:
    tracker = tracker_after(*requests)
    found = []
    for i in range(len(stream)):
        decision = tracker.feed(stream[i : i + 1])
        if decision is not None:
            found.append((i, decision))
    return found


def assert_every_split(
    requests: list[tuple[bytes, bool]], stream: bytes, expected: UpgradeDecision, at: int
) -> None:
    """One decision, ``expected``, from whichever feed holds byte ``at``, however cut."""
    assert decisions_at_each_byte(requests, stream) == [(at, expected)]
    for cut in range(len(stream) + 1):
        tracker = tracker_after(*requests)
        first, second = tracker.feed(stream[:cut]), tracker.feed(stream[cut:])
        assert (first, second) == ((expected, None) if cut > at else (None, expected)), cut


# -- accepted only once the answer to the upgrade arrives -------------------------------------


@pytest.mark.parametrize("first", [OK_LENGTH, OK_CHUNKED], ids=["content-length", "chunked"])
def test_pipelined_get_then_upgrade(first: bytes) -> None:
    requests = [(b"GET", False), (b"GET", True)]
    stream = first + SWITCHING + FRAME
    # The first response's content spells a 101: it is content, not an answer.
    assert_every_split(requests, stream, ACCEPTED_101, len(first) + len(SWITCHING) - 1)
    tracker = tracker_after(*requests)
    assert tracker.feed(first) is None and tracker.outstanding == 1
    assert tracker.feed(SWITCHING + FRAME) == ACCEPTED_101
    assert tracker.upgraded and not tracker.broken
    assert tracker.feed(b"not HTTP at all\r\n\r\n") is None and not tracker.broken


def test_head_response_has_no_content() -> None:
    requests = [(b"HEAD", False), (b"GET", True)]
    stream = HEAD_OK + BARE_101 + FRAME
    assert_every_split(requests, stream, ACCEPTED_101, len(HEAD_OK) + len(BARE_101) - 1)
    # Read as a GET's, the same response would swallow the 101 as its content.
    assert tracker_after((b"GET", False), (b"GET", True)).feed(stream) is None


def test_no_content_statuses_and_empty_lines_between_responses() -> None:
    stream = (
        b"HTTP/1.1 204 No Content\r\n\r\n"
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n"
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok\r\n" + SWITCHING
    )
    requests = [(b"GET", False)] * 3 + [(b"GET", True)]
    assert_every_split(requests, stream, ACCEPTED_101, len(stream) - 1)


def test_interim_responses_then_101() -> None:
    early_hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    stream = CONTINUE + early_hints + SWITCHING
    assert_every_split([(b"GET", True)], stream, ACCEPTED_101, len(stream) - 1)
    tracker = tracker_after((b"GET", True))
    assert tracker.feed(CONTINUE) is None and tracker.outstanding == 1


def test_refused_upgrade_with_content_keeps_reading() -> None:
    requests = [(b"GET", True)]
    refused = UpgradeDecision(accepted=False, status=400)
    # Decided with the head; its content (which spells a 101) is then skipped.
    assert_every_split(requests, BAD_REQUEST, refused, BAD_REQUEST.index(b"\r\n\r\n") + 3)
    tracker = tracker_after(*requests)
    assert tracker.feed(BAD_REQUEST) == refused
    assert tracker.request_sent(b"GET", False) is None
    assert tracker.request_sent(b"GET", True) is None
    assert tracker.feed(OK_LENGTH + BARE_101) == ACCEPTED_101 and not tracker.broken


def test_upgrade_answered_200_is_refused() -> None:
    tracker = tracker_after((b"GET", True))
    assert tracker.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") == UpgradeDecision(
        accepted=False, status=200
    )
    assert not tracker.broken and not tracker.upgraded


def test_connect() -> None:
    established = b"HTTP/1.1 200 Connection Established\r\n\r\n"
    stream = CONTINUE + established + b"\x16\x03\x01 tunnelled"
    accepted = UpgradeDecision(accepted=True, status=200)
    assert_every_split([(b"CONNECT", True)], stream, accepted, len(CONTINUE + established) - 1)
    tracker = tracker_after((b"CONNECT", True))
    denied = b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"
    assert tracker.feed(denied) == UpgradeDecision(accepted=False, status=407)
    assert not tracker.broken


# -- never an exception, a refusal instead ----------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
        b"\x00" * 100_000,
        b"HTTP/2.0 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nFolded: a\r\n b\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",  # to a GET that did not ask
        b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",  # one too many
    ],
)
def test_unreadable_stream_refuses_the_upgrade(garbage: bytes) -> None:
    tracker = tracker_after((b"GET", False), (b"GET", True))
    if garbage.endswith(b"No Content\r\n\r\n"):
        tracker = tracker_after((b"GET", False))
        assert tracker.feed(garbage) is None and tracker.broken
        return
    assert tracker.feed(garbage) == GAVE_UP
    assert tracker.broken and not tracker.upgraded
    assert tracker.feed(SWITCHING) is None
    # Later upgrades cannot be answered any more: refused at once.
    assert tracker.request_sent(b"GET", True) == GAVE_UP
    assert tracker.request_sent(b"GET", False) is None


def test_unreadable_byte_by_byte_is_refused_once() -> None:
    found = decisions_at_each_byte([(b"GET", True)], b"SSH-2.0-OpenSSH_9.6\r\n")
    assert found == [(0, GAVE_UP)]
    found = decisions_at_each_byte([(b"GET", True)], b"HTTP/1.1 200 OK\nX: y\n\n")
    assert [decision for _, decision in found] == [GAVE_UP]


def test_101_to_connect_is_refused() -> None:
    tracker = tracker_after((b"CONNECT", True))
    assert tracker.feed(BARE_101) == UpgradeDecision(accepted=False, status=101)
    assert tracker.broken


def test_bounded_head_and_queue() -> None:
    tracker = ResponseTracker(max_head_bytes=64)
    tracker.request_sent(b"GET", True)
    head = b"HTTP/1.1 101 OK\r\n" + b"X: y\r\n" * 7 + b"\r\n"
    assert len(head) == 61 and tracker.feed(head) == ACCEPTED_101
    tracker = ResponseTracker(max_head_bytes=64)
    tracker.request_sent(b"GET", True)
    assert tracker.feed(head[:-2] + b"X: y\r\n\r\n") == GAVE_UP

    tracker = ResponseTracker(max_outstanding=3)
    for _ in range(3):
        assert tracker.request_sent(b"GET", False) is None
    assert tracker.request_sent(b"GET", True) == GAVE_UP and tracker.broken


def test_large_content_is_skipped_not_buffered() -> None:
    size = 8 * 1024 * 1024
    tracker = tracker_after((b"GET", False), (b"GET", True))
    assert tracker.feed(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size) is None
    content = b"HTTP/1.1 101 \r\n\r\n" * (size // 17) + b"x" * (size % 17)
    assert tracker.feed(content) is None
    assert tracker.feed(BARE_101) == ACCEPTED_101


def test_a_request_after_a_pending_upgrade_is_a_programming_error() -> None:
    tracker = tracker_after((b"GET", True))
    with pytest.raises(RuntimeError):
        tracker.request_sent(b"GET", False)


# -- with the rewriter ------------------------------------------------------------------------

WS = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
HEAD = b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n"
CONNECT = b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"
SPOOF = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-Client-Cert: By=evil\r\n\r\n"


def test_on_request_reports_each_head_in_order() -> None:
    seen: list[tuple[bytes, bool]] = []
    rewriter = RequestRewriter([], on_request=lambda m, u: seen.append((m, u)))
    rewriter.feed(GET + HEAD + WS + GET)
    assert seen == [(b"GET", False), (b"HEAD", False), (b"GET", True)]
    assert rewriter.upgrade_pending
    rewriter.resolve_upgrade(False)  # the held GET is emitted now
    assert seen[3:] == [(b"GET", False)]
    rewriter.feed(CONNECT)
    assert seen[4:] == [(b"CONNECT", True)]


class Proxy:
    """The wiring from ResponseTracker's docstring, with the two sockets as lists."""

    def __init__(self) -> None:
        self.tracker = ResponseTracker()
        self.early: list[UpgradeDecision] = []
        self.rewriter = RequestRewriter(
            [("X-Forwarded-Client-Cert", "By=us")], on_request=self.on_request
        )
        self.upstream = bytearray()
        self.client = bytearray()

    def on_request(self, method: bytes, upgrade: bool) -> None:
        decision = self.tracker.request_sent(method, upgrade)
        if decision is not None:
            self.early.append(decision)

    def to_upstream(self, data: bytes) -> None:
        self.upstream += data
        while self.early:
            self.upstream += self.rewriter.resolve_upgrade(self.early.pop().accepted)

    def from_client(self, data: bytes) -> None:
        self.to_upstream(self.rewriter.feed(data))

    def from_upstream(self, data: bytes) -> None:
        self.client += data
        decision = self.tracker.feed(data)
        if decision is not None:
            self.to_upstream(self.rewriter.resolve_upgrade(decision.accepted))


def test_proxy_upgrade_accepted_after_a_head_response() -> None:
    proxy = Proxy()
    proxy.from_client(HEAD + WS + FRAME)
    assert proxy.rewriter.upgrade_pending and FRAME not in proxy.upstream
    proxy.from_upstream(HEAD_OK)
    assert proxy.rewriter.upgrade_pending
    proxy.from_upstream(SWITCHING + FRAME)
    assert proxy.rewriter.upgraded and proxy.upstream.endswith(FRAME)
    assert proxy.client == HEAD_OK + SWITCHING + FRAME  # forwarded unchanged


def test_proxy_upgrade_refused_rewrites_the_held_request() -> None:
    proxy = Proxy()
    proxy.from_client(WS + SPOOF)
    proxy.from_upstream(BAD_REQUEST)
    assert not proxy.rewriter.upgrade_pending and not proxy.rewriter.upgraded
    assert b"evil" not in proxy.upstream and proxy.upstream.count(b"By=us") == 2
    assert proxy.tracker.outstanding == 1  # the rewritten GET /x


def test_proxy_with_an_unreadable_upstream_refuses_at_once() -> None:
    proxy = Proxy()
    proxy.from_client(GET)
    proxy.from_upstream(b"SSH-2.0-OpenSSH_9.6\r\n")
    proxy.from_client(WS + SPOOF)  # refused without waiting for the upstream
    assert not proxy.rewriter.upgrade_pending and b"evil" not in proxy.upstream
    with pytest.raises(HTTPRefused):  # the frame after it is read as a request: it is not
        proxy.from_client(WS + FRAME)
    assert not proxy.rewriter.upgraded


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.sampled_from([b"", OK_CHUNKED[:60], CONTINUE, HEAD_OK, OK_LENGTH[:40]]),
    chunks=st.lists(st.binary(max_size=40), max_size=6),
    method=st.sampled_from([b"GET", b"HEAD", b"CONNECT"]),
)
def test_random_bytes_never_raise(prefix: bytes, chunks: list[bytes], method: bytes) -> None:
    tracker = tracker_after((method, False), (b"GET", True))
    decisions = [tracker.feed(prefix)] + [tracker.feed(chunk) for chunk in chunks]
    assert len([d for d in decisions if d is not None]) <= 1
