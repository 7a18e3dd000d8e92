"""Requests refused by ``http_authorization`` in the rewriter and the forwarding plan: never
forwarded, their content skipped, answered in their place, what follows held until then; and
the labels of the 400 refusals."""

from __future__ import annotations

import pytest

from mtlsproxy.forwarding.http.local import RequestRefusal
from mtlsproxy.forwarding.http.request import (
    AMBIGUOUS_FRAMING,
    MALFORMED,
    TOO_LARGE,
    HTTPRefused,
    RequestRewriter,
)
from mtlsproxy.forwarding.plan import Forwarding

DENIED = RequestRefusal(403, "not_verified", "admin", "rule admin requires a verified client")


def authorize(method: bytes, target: bytes) -> RequestRefusal | None:
    return DENIED if target.startswith(b"/admin") else None


def rewriter(calls: list[tuple[bytes, bool]] | None = None) -> RequestRewriter:
    on_request = (lambda m, u: calls.append((m, u))) if calls is not None else None
    return RequestRewriter([], on_request=on_request, authorize=authorize)


GET = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
ADMIN = b"GET /admin HTTP/1.1\r\nHost: h\r\n\r\n"
ADMIN_POST = b"POST /admin HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world"
ADMIN_CHUNKED = (
    b"POST /admin/x?y HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: t\r\n\r\n"
)


def test_a_refused_request_is_answered_in_its_place() -> None:
    calls: list[tuple[bytes, bool]] = []
    r = rewriter(calls)
    assert r.feed(GET + ADMIN + GET) == GET  # the first only: the third waits for the answer
    assert calls == [(b"GET", False)]
    answer = r.answer
    assert answer is not None and not answer.close
    assert answer.response.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert b"Connection: close" not in answer.response
    assert answer.refusal.method == "GET" and answer.refusal.target == "/admin"
    assert r.take_refusals() == [answer.refusal] and r.take_refusals() == []
    assert r.feed(GET) == b""  # still waiting
    assert r.answered() == GET + GET
    assert calls == [(b"GET", False)] * 3  # made when the heads were released
    assert r.answer is None
    assert r.feed(GET) == GET


@pytest.mark.parametrize("refused", [ADMIN_POST, ADMIN_CHUNKED], ids=["length", "chunked"])
def test_the_content_of_a_refused_request_is_skipped_at_every_split(refused: bytes) -> None:
    stream = GET + refused + GET
    for cut in range(len(stream) + 1):
        r = rewriter()
        out = r.feed(stream[:cut]) + r.feed(stream[cut:])
        assert out == GET, cut
        assert r.answered() == GET, cut
        assert r.answer is None


def test_several_answers_wait_in_order() -> None:
    r = rewriter()
    assert r.feed(ADMIN + GET + ADMIN + GET) == b""
    first = r.answer
    assert r.answered() == GET
    assert r.answer is not None and r.answer is not first
    assert r.answered() == GET
    assert len(r.take_refusals()) == 2


def test_head_gets_no_body() -> None:
    r = rewriter()
    r.feed(b"HEAD /admin HTTP/1.1\r\nHost: h\r\n\r\n")
    answer = r.answer
    assert answer is not None and answer.response.endswith(b"\r\n\r\n")
    assert b"Content-Length: " in answer.response


@pytest.mark.parametrize(
    "request_",
    [
        b"GET /admin HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"GET /admin HTTP/1.0\r\n\r\n",
        b"POST /admin HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    ],
    ids=["connection close", "http/1.0", "expect 100-continue"],
)
def test_an_answer_closes_when_the_request_cannot_be_followed(request_: bytes) -> None:
    r = rewriter()
    assert r.feed(request_ + GET) == b""
    answer = r.answer
    assert answer is not None and answer.close
    assert b"Connection: close\r\n" in answer.response
    assert r.feed(b"anything at all, even \x00 garbage") == b""  # nothing more is read


def test_http_10_keep_alive_stays_open() -> None:
    r = rewriter()
    r.feed(b"GET /admin HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert r.answer is not None and not r.answer.close


def test_a_refused_upgrade_goes_on_as_http() -> None:
    upgrade = (
        b"GET /admin/ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    r = rewriter()
    assert r.feed(upgrade + GET) == b""
    assert not r.upgrade_pending
    assert r.answered() == GET


def test_an_upgrade_behind_an_answer_is_held_then_sent() -> None:
    calls: list[tuple[bytes, bool]] = []
    upgrade = b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    r = rewriter(calls)
    assert r.feed(ADMIN + upgrade + b"frame") == b""
    assert r.upgrade_pending and calls == []
    assert r.answered() == upgrade
    assert calls == [(b"GET", True)]
    assert r.resolve_upgrade(True) == b"frame"


def test_smuggling_after_an_answer_is_still_refused() -> None:
    r = rewriter()
    with pytest.raises(HTTPRefused) as refused:
        r.feed(
            ADMIN + b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        )
    assert refused.value.forward == b"" and refused.value.label == AMBIGUOUS_FRAMING
    assert r.answer is None  # the connection ends with the 400


@pytest.mark.parametrize(
    ("stream", "label"),
    [
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n",
         AMBIGUOUS_FRAMING),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
         AMBIGUOUS_FRAMING),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", MALFORMED),
        (b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n", MALFORMED),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", TOO_LARGE),
    ],
)  # fmt: skip
def test_400_refusals_have_a_bounded_label(stream: bytes, label: str) -> None:
    with pytest.raises(HTTPRefused) as refused:
        RequestRewriter([]).feed(stream)
    assert refused.value.label == label
    assert (refused.value.refusal.rule, refused.value.refusal.reason) == ("none", label)


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_the_answer_is_due_once_the_upstream_answered_everything_before_it() -> None:
    plan = Forwarding(rewriter_inject=[], authorize=authorize)
    assert plan.to_upstream(GET + ADMIN + GET) == GET
    assert plan.answer_pending and plan.due_answer() is None  # the first GET is unanswered
    plan.from_upstream(OK[:-1])
    assert plan.due_answer() is None  # its content is not complete yet
    plan.from_upstream(OK[-1:])
    answer = plan.due_answer()
    assert answer is not None and answer.refusal.rule == "admin"
    assert plan.answered() == GET
    assert not plan.answer_pending
    assert plan.to_upstream(ADMIN) == b""
    assert plan.due_answer() is None  # the second GET is unanswered
    plan.from_upstream(OK)
    assert plan.due_answer() is not None


def test_an_answer_waits_for_a_response_delimited_by_the_close() -> None:
    plan = Forwarding(rewriter_inject=[], authorize=authorize)
    plan.to_upstream(GET + ADMIN)
    plan.from_upstream(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
    assert plan.due_answer() is None and plan.answer is not None


WOULD = RequestRefusal(403, "denied", "admin", "rule admin denies every client", enforced=False)


def test_a_request_refused_in_audit_mode_is_forwarded_and_reported_once() -> None:
    """Audit mode: the head and content go on unchanged, no answer is queued, and the
    would-refusal comes out of ``take_refusals`` (the one path to counting and logging)."""
    calls: list[tuple[bytes, bool]] = []
    r = RequestRewriter(
        [("X-Client", "c")], on_request=lambda m, u: calls.append((m, u)),
        authorize=lambda m, t: WOULD if t.startswith(b"/admin") else None,
    )  # fmt: skip
    out = r.feed(GET + ADMIN_POST + GET)
    assert out.count(b"X-Client: c\r\n") == 3
    admin = ADMIN_POST.replace(b"\r\n\r\n", b"\r\nX-Client: c\r\n\r\n")
    assert admin in out and out.endswith(b"hello world" + GET[:-2] + b"X-Client: c\r\n\r\n")
    assert r.answer is None and calls == [(b"GET", False), (b"POST", False), (b"GET", False)]
    (refusal,) = r.take_refusals()
    assert not refusal.enforced and refusal.method == "POST" and refusal.target == "/admin"
    assert refusal.rule == "admin" and refusal.reason == "denied"
    assert r.take_refusals() == []
