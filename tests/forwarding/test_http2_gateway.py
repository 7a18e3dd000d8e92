"""``Http1Gateway`` sans-I/O: an HTTP/2 request stream as an HTTP/1.1 request, the HTTP/1.1
response back as HEADERS and DATA, and the per-stream failures (RFC 9113 section 8.3.1,
RFC 9110 sections 6.4.1 and 6.5.1)."""

from __future__ import annotations

import h2.events
from h2.connection import H2Connection

from mtlsproxy.config.model import Http2Settings
from mtlsproxy.forwarding.http2.bridge import new_connection
from mtlsproxy.forwarding.http2.gateway import Http1Gateway, request_head

GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"app"), (b":path", b"/x")]


def pair() -> tuple[Http1Gateway, H2Connection]:
    settings = Http2Settings()
    gateway = Http1Gateway(settings, 1 << 20)
    client = new_connection(settings, 65_535, 1 << 20, server=False)
    gateway.receive(client.data_to_send())
    client.receive_data(gateway.data_to_send())
    gateway.receive(client.data_to_send())
    client.receive_data(gateway.data_to_send())
    return gateway, client


def events(gateway: Http1Gateway, client: H2Connection) -> list[object]:
    return list(client.receive_data(gateway.data_to_send()))


def test_the_request_head_and_its_framing() -> None:
    headers = [*GET, (b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"te", b"trailers")]
    head, chunked = request_head(headers, ended=True)
    assert head == (
        b"GET /x HTTP/1.1\r\nhost: app\r\ncookie: a=1; b=2\r\nconnection: close\r\n\r\n"
    )
    assert not chunked
    post = [(b":method", b"POST"), *GET[1:]]
    assert request_head(post, ended=False)[1] is True
    assert b"content-length: 0" in (request_head(post, ended=True)[0] or b"")
    assert request_head([*post, (b"content-length", b"3")], ended=False)[1] is False
    assert request_head([(b":method", b"CONNECT"), (b":authority", b"a:1")], True)[0] is None


def test_a_response_becomes_headers_and_data_and_head_has_no_content() -> None:
    gateway, client = pair()
    stream = client.get_next_available_stream_id()
    client.send_headers(stream, [(b":method", b"HEAD"), *GET[1:]], end_stream=True)
    gateway.receive(client.data_to_send())
    assert gateway.take_opens() == [stream]
    assert gateway.request_data(stream).startswith(b"HEAD /x HTTP/1.1\r\n")
    gateway.response(
        stream, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n"
    )
    seen = events(gateway, client)
    response = next(e for e in seen if isinstance(e, h2.events.ResponseReceived))
    assert response.headers == [(b":status", b"200"), (b"content-length", b"5")]
    assert any(isinstance(e, h2.events.StreamEnded) for e in seen)
    assert gateway.take_closed() == [stream]


def test_an_unparsable_response_is_a_502_and_a_short_one_a_reset() -> None:
    gateway, client = pair()
    first = client.get_next_available_stream_id()
    client.send_headers(first, GET, end_stream=True)
    second = client.get_next_available_stream_id()
    client.send_headers(second, GET, end_stream=True)
    gateway.receive(client.data_to_send())
    gateway.response(first, b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")
    gateway.response(second, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    gateway.upstream_closed(second)
    seen = events(gateway, client)
    statuses = {
        e.stream_id: dict(e.headers)[b":status"]
        for e in seen
        if isinstance(e, h2.events.ResponseReceived)
    }
    assert statuses == {first: b"502", second: b"200"}
    assert [e.stream_id for e in seen if isinstance(e, h2.events.StreamReset)] == [second]
    assert gateway.take_bad_responses() == 2


def test_an_unreachable_upstream_is_a_502_or_504_on_its_stream_only() -> None:
    gateway, client = pair()
    stream = client.get_next_available_stream_id()
    client.send_headers(stream, GET, end_stream=True)
    gateway.receive(client.data_to_send())
    gateway.upstream_failed(stream, 504)
    seen = events(gateway, client)
    response = next(e for e in seen if isinstance(e, h2.events.ResponseReceived))
    assert dict(response.headers)[b":status"] == b"504"
    assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in seen)


def test_a_response_head_that_never_ends_is_bounded() -> None:
    """One header line that never ends is refused once the head passes MAX_HEAD_BYTES (plus a
    slice), however it is split: the parser never holds more (502, counted)."""
    from mtlsproxy.forwarding.http.request import MAX_HEAD_BYTES

    gateway, client = pair()
    stream = client.get_next_available_stream_id()
    client.send_headers(stream, GET, end_stream=True)
    gateway.receive(client.data_to_send())
    gateway.response(stream, b"HTTP/1.1 200 OK\r\nX-Endless: ")
    fed = 0
    while fed < 4 * MAX_HEAD_BYTES and gateway.take_bad_responses() == 0:
        gateway.response(stream, b"a" * 1000)
        fed += 1000
    assert fed <= MAX_HEAD_BYTES + 8192
    seen = events(gateway, client)
    response = next(e for e in seen if isinstance(e, h2.events.ResponseReceived))
    assert dict(response.headers)[b":status"] == b"502"


def test_a_whole_response_in_one_read_is_not_counted_as_head() -> None:
    """The head bound counts head bytes only: a small head and a large body in one read pass."""
    gateway, client = pair()
    stream = client.get_next_available_stream_id()
    client.send_headers(stream, GET, end_stream=True)
    gateway.receive(client.data_to_send())
    body = b"b" * 200_000
    gateway.response(stream, b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + body)
    assert gateway.take_bad_responses() == 0
    seen = events(gateway, client)
    response = next(e for e in seen if isinstance(e, h2.events.ResponseReceived))
    assert dict(response.headers)[b":status"] == b"200"
