"""The HTTP/1.1 request rewriter: injection on every request, refusal of ambiguous framing, and
a round trip through an independent parser (h11)."""

from __future__ import annotations

from itertools import pairwise

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtlsproxy.forwarding.http.request import MAX_HEAD_BYTES, HTTPRefused, RequestRewriter

INJECT = [("X-Forwarded-Client-Cert", "Hash=ab;URI=spiffe://x")]
XFCC_LINE = b"X-Forwarded-Client-Cert: Hash=ab;URI=spiffe://x\r\n"

GET = b"GET /a?b=1 HTTP/1.1\r\nHost: api\r\nAccept: */*\r\n\r\n"
GET_OUT = b"GET /a?b=1 HTTP/1.1\r\nHost: api\r\nAccept: */*\r\n" + XFCC_LINE + b"\r\n"
POST = b"POST /p HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\n\r\nhello"
POST_OUT = b"POST /p HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\n" + XFCC_LINE + b"\r\nhello"


def rewriter() -> RequestRewriter:
    return RequestRewriter(INJECT)


def test_keep_alive_requests_each_get_the_header() -> None:
    r = rewriter()
    assert r.feed(GET) == GET_OUT
    assert r.feed(POST) == POST_OUT
    assert r.feed(GET) == GET_OUT


def test_pipelined_requests_in_one_feed() -> None:
    assert rewriter().feed(GET + POST + GET) == GET_OUT + POST_OUT + GET_OUT


def test_every_split_point_gives_the_same_output() -> None:
    stream = POST + GET
    for cut in range(len(stream) + 1):
        r = rewriter()
        assert r.feed(stream[:cut]) + r.feed(stream[cut:]) == POST_OUT + GET_OUT, cut
    r = rewriter()
    assert b"".join(r.feed(stream[i : i + 1]) for i in range(len(stream))) == POST_OUT + GET_OUT


@pytest.mark.parametrize(
    "spoof",
    [
        b"X-Forwarded-Client-Cert: By=evil\r\n",
        b"x-forwarded-client-cert: By=evil\r\n",
        b"X-FORWARDED-CLIENT-CERT:\t By=evil \t\r\n",
        b"x-Forwarded-client-CERT:By=evil\r\n",
        b"X-SSL-Client-Verify: SUCCESS\r\nX-SSL-Client-S-DN: CN=admin\r\n",
        b"X-SSL-Client-SPIFFE-ID: spiffe://evil\r\nx-ssl-client-fingerprint: 00\r\n",
    ],
)
def test_spoofed_identity_headers_are_removed(spoof: bytes) -> None:
    request = b"GET / HTTP/1.1\r\nHost: api\r\n" + spoof + b"X-Other: kept\r\n\r\n"
    out = rewriter().feed(request * 2)
    assert b"evil" not in out and b"admin" not in out and b"SUCCESS" not in out
    assert out.count(XFCC_LINE) == 2 and out.count(b"X-Other: kept\r\n") == 2


def test_anonymous_client_still_has_spoofs_removed() -> None:
    out = RequestRewriter([]).feed(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Client-Cert: x\r\n\r\n"
    )
    assert out == b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


OVER = MAX_HEAD_BYTES + 2 * 4096 + 1
SMUGGLING = {
    "CL.TE": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
    "TE.CL": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
    "TE.TE list": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
    "TE.TE twice": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: x\r\n\r\n",
    "TE space before colon": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
    "TE gzip": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    "TE in HTTP/1.0": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "TE obfuscated": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
    "duplicate CL": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
    b"Content-Length: 5\r\n\r\nhello",
    "CL list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
    "CL plus": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
    "CL negative": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    "CL overflow": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
    "obs-fold tab": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n",
    "bare LF": b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
    "bare LF request line": b"GET / HTTP/1.1\nHost: a\r\n\r\n",
    "bare CR": b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
    "NUL in value": b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
    "NUL in name": b"GET / HTTP/1.1\r\nHost: a\r\nX\x00: b\r\n\r\n",
    "DEL in value": b"GET / HTTP/1.1\r\nHost: a\r\nX: \x7f\r\n\r\n",
    "space in name": b"GET / HTTP/1.1\r\nHost: a\r\nX Y: b\r\n\r\n",
    "no Host": b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
    "two Hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "HTTP/0.9": b"GET /\r\n\r\n",
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "HTTP/1.2": b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
    "unknown method": b"FOO / HTTP/1.1\r\nHost: a\r\n\r\n",
    "space in target": b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
    "bad chunk size": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "chunk without CRLF": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabcX\r\n0\r\n\r\n",
    "data after close": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "upgrade with body": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n"
    b"Upgrade: websocket\r\nContent-Length: 3\r\n\r\nabc",
    "CONNECT with body": b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n",
    "too many fields": b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 100 + b"\r\n",
    # Over the limit plus two 4 KiB slices: refused whatever the reads look like.
    "oversized value": b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * OVER + b"\r\n\r\n",
    "oversized head": b"GET / HTTP/1.1\r\nHost: a\r\n" + (b"X: " + b"v" * 2000 + b"\r\n") * 40,
    "oversized trailer": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"1\r\na\r\n0\r\nT: " + b"t" * OVER,
    "oversized chunk extension": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
    b"\r\n1;e=" + b"x" * OVER,
}


@pytest.mark.parametrize("name", SMUGGLING)
def test_ambiguous_requests_are_refused(name: str) -> None:
    attack = SMUGGLING[name]
    for chunks in ([GET + attack + GET], [GET, attack, GET], [bytes([b]) for b in GET + attack]):
        r = rewriter()
        forwarded_bytes = b""
        with pytest.raises(HTTPRefused) as refused:
            for chunk in chunks:
                forwarded_bytes += r.feed(chunk)
        assert refused.value.status == 400
        forwarded_bytes += refused.value.forward
        # Only the request before the attack got through, and nothing can follow.
        assert forwarded_bytes.startswith(GET_OUT)
        rest = forwarded_bytes[len(GET_OUT) :]
        if name == "data after close":  # the closing request itself is fine
            rest = rest.removeprefix(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n")
            rest = rest.removeprefix(XFCC_LINE + b"\r\n")
        assert b"SMUGGLED" not in rest and b"GET" not in rest
        if not name.startswith(("bad chunk", "chunk without", "oversized trailer", "oversized c")):
            assert rest == b"", name  # a refused head is never forwarded
        with pytest.raises(HTTPRefused):
            r.feed(GET)


def test_head_just_under_the_limit_passes() -> None:
    padding = MAX_HEAD_BYTES - 200
    request = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * padding + b"\r\n\r\n"
    out = rewriter().feed(request)
    assert out.endswith(XFCC_LINE + b"\r\n") and len(out) > padding
    r = rewriter()
    assert b"".join(r.feed(request[i : i + 1000]) for i in range(0, len(request), 1000)) == out


def test_chunked_body_with_extensions_is_rechunked_and_trailers_dropped() -> None:
    request = (
        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n6;x\r\n world\r\n0\r\n"
        b"X-Forwarded-Client-Cert: By=evil\r\nTrailer-Field: t\r\n\r\n"
    )
    out = rewriter().feed(request + GET)
    assert out == (
        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n" + XFCC_LINE + b"\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n" + GET_OUT
    )


def test_expect_100_continue_forwards_the_head_before_the_body() -> None:
    r = rewriter()
    head = b"PUT /f HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    assert r.feed(head) == head[:-2] + XFCC_LINE + b"\r\n"
    assert r.feed(b"abc") == b"abc"
    assert r.feed(GET) == GET_OUT


def test_head_request_and_http_1_0() -> None:
    r = rewriter()
    assert r.feed(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n") == (
        b"HEAD / HTTP/1.1\r\nHost: a\r\n" + XFCC_LINE + b"\r\n"
    )
    assert r.feed(GET) == GET_OUT
    one_oh = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    assert rewriter().feed(one_oh + GET) == one_oh[:-2] + XFCC_LINE + b"\r\n" + GET_OUT


UPGRADE = (
    b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
UPGRADE_OUT = UPGRADE[:-2] + XFCC_LINE + b"\r\n"
FRAME = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"  # RFC 6455 5.7: masked "Hello"


def test_websocket_upgrade_accepted_passes_the_rest_raw() -> None:
    r = rewriter()
    assert r.feed(GET + UPGRADE + FRAME[:4]) == GET_OUT + UPGRADE_OUT
    assert r.upgrade_pending and not r.upgraded
    assert r.feed(FRAME[4:]) == b""
    assert r.resolve_upgrade(True) == FRAME
    assert r.upgraded and not r.upgrade_pending
    assert (
        r.feed(b"X-Forwarded-Client-Cert: raw now\r\n") == b"X-Forwarded-Client-Cert: raw now\r\n"
    )


def test_refused_upgrade_keeps_parsing_http() -> None:
    """The upstream answered 400 to the upgrade: it reads the next bytes as HTTP, so do we."""
    r = rewriter()
    spoof = b"GET /admin HTTP/1.1\r\nHost: a\r\nX-Forwarded-Client-Cert: By=evil\r\n\r\n"
    assert r.feed(UPGRADE + spoof) == UPGRADE_OUT
    assert r.resolve_upgrade(False) == b"GET /admin HTTP/1.1\r\nHost: a\r\n" + XFCC_LINE + b"\r\n"
    assert not r.upgraded and not r.upgrade_pending
    assert r.feed(GET) == GET_OUT
    with pytest.raises(RuntimeError):
        r.resolve_upgrade(True)


def test_connect_tunnel() -> None:
    r = rewriter()
    head = b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n"
    assert r.feed(head + b"\x16\x03\x01") == head[:-2] + XFCC_LINE + b"\r\n"
    assert r.resolve_upgrade(True) == b"\x16\x03\x01"
    assert r.feed(b"\x00\xff") == b"\x00\xff"


def test_held_bytes_are_bounded() -> None:
    r = RequestRewriter(INJECT, max_held_bytes=10)
    r.feed(UPGRADE + b"x" * 10)
    with pytest.raises(HTTPRefused):
        r.feed(b"y")
    with pytest.raises(HTTPRefused):
        rewriter().feed(UPGRADE + b"z" * (64 * 1024 + 1))


@pytest.mark.parametrize(
    "inject",
    [[("Bad Name", "v")], [("X-Ok", "line\r\nX-Evil: 1")], [("X-Ok", "nul\x00")], [("X", "é€")]],
)
def test_invalid_injected_headers_are_rejected(inject: list[tuple[str, str]]) -> None:
    with pytest.raises(ValueError):
        RequestRewriter(inject)


# -- properties -------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_random_bytes_only_ever_raise_http_refused(chunks: list[bytes]) -> None:
    r = rewriter()
    try:
        for chunk in chunks:
            r.feed(chunk)
        if r.upgrade_pending:
            r.resolve_upgrade(False)
    except HTTPRefused:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_random_bytes_after_a_valid_prefix(chunks: list[bytes]) -> None:
    r = rewriter()
    r.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    try:
        for chunk in chunks:
            r.feed(chunk)
    except HTTPRefused:
        pass


_TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_field_names = st.text(_TOKEN_CHARS, min_size=1, max_size=12).filter(
    lambda n: (
        n.lower()
        not in {"host", "content-length", "transfer-encoding", "connection", "upgrade", "expect"}
    )
)
_field_values = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20)
_requests = st.tuples(
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789/-._~%?=&", max_size=20).map(lambda t: "/" + t),
    st.lists(st.tuples(_field_names, _field_values), max_size=6),
    st.binary(max_size=80),
    st.booleans(),
)


def _encode(request: tuple[str, str, list[tuple[str, str]], bytes, bool]) -> bytes:
    method, target, fields, body, chunked = request
    head = f"{method} {target} HTTP/1.1\r\nHost: api\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in fields)
    if chunked:
        head += "Transfer-Encoding: chunked\r\n\r\n"
        middle = len(body) // 2
        parts = [p for p in (body[:middle], body[middle:]) if p]
        framed = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
        return head.encode() + framed
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_requests, min_size=1, max_size=4), st.data())
def test_round_trip_through_an_independent_parser(
    requests: list[tuple[str, str, list[tuple[str, str]], bytes, bool]], data: st.DataObject
) -> None:
    stream = b"".join(_encode(request) for request in requests)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    r = RequestRewriter([*INJECT, ("X-SSL-Client-Verify", "SUCCESS")])
    out = b"".join(r.feed(stream[a:b]) for a, b in pairwise([0, *cuts, len(stream)]))
    server = h11.Connection(h11.SERVER)
    server.receive_data(out)
    for method, target, fields, body, _chunked in requests:
        event = server.next_event()
        assert isinstance(event, h11.Request)
        assert event.method == method.encode() and event.target == target.encode()
        headers = [(n.decode(), v.decode()) for n, v in event.headers.raw_items()]
        expected = [(n, v) for n, v in fields if n.lower() not in {"x-forwarded-client-cert"}]
        expected = [(n, v) for n, v in expected if not n.lower().startswith("x-ssl-client-")]
        assert [
            h
            for h in headers
            if h[0].lower() not in {"host", "content-length", "transfer-encoding"}
        ] == [
            *expected,
            ("X-Forwarded-Client-Cert", "Hash=ab;URI=spiffe://x"),
            ("X-SSL-Client-Verify", "SUCCESS"),
        ]
        received = b""
        while isinstance(event := server.next_event(), h11.Data):
            received += event.data
        assert isinstance(event, h11.EndOfMessage)
        assert received == body
        server.send(h11.Response(status_code=204, headers=[]))
        server.send(h11.EndOfMessage())
        server.start_next_cycle()
    assert server.next_event() is h11.NEED_DATA
