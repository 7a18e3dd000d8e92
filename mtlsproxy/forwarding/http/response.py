"""The upstream-to-client direction of HTTP mode: read, never modified, to answer one question.

That question is whether the upstream accepted the pending Upgrade/CONNECT request, which
``request.RequestRewriter`` holds the client's later bytes for. Those bytes are only safe to
pass raw once the upstream switched protocols; if it refused, they are more HTTP requests and
must be rewritten like the rest (else a second request could carry a forged identity header).

``ResponseTracker`` pairs each response with the request it answers, in order, and follows the
response framing (Content-Length, chunked, until close) so that content the client chose,
reflected by the upstream, is never read as a ``101``. Anything it cannot follow makes it give
up, never raise: the pending upgrade is then refused, the safe answer, and the bytes still
flow. Its class docstring has the rules and how the proxy wires it to the rewriter.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from dataclasses import dataclass

import httptools

from mtlsproxy.forwarding.http.request import MAX_HEAD_BYTES, OWS, strict

MAX_OUTSTANDING_REQUESTS = 1000
"""Requests sent upstream and not yet answered that ``ResponseTracker`` queues; past that it
gives up (see ``ResponseTracker``). Pipelining deeper than this is not something clients do."""


_STATUS_LINE_START = b"HTTP/1."
_BARE_LF = re.compile(rb"(?<!\r)\n")
_CHUNK_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r\n")


@dataclass(frozen=True, slots=True)
class UpgradeDecision:
    """The upstream's answer to the pending Upgrade/CONNECT request: pass ``accepted`` to
    ``RequestRewriter.resolve_upgrade``. ``status`` is the final response's status code, or
    ``None`` when the tracker could not read the answer (which is always a refusal)."""

    accepted: bool
    status: int | None


class _Phase(enum.Enum):
    HEAD = "head"  # between responses, or in a head (1xx included)
    BODY = "body"  # Content-Length content
    CHUNK_SIZE = "chunk_size"
    CHUNK_DATA = "chunk_data"
    CHUNK_CRLF = "chunk_crlf"
    TRAILERS = "trailers"
    UNTIL_CLOSE = "until_close"  # content delimited by the connection closing
    STOPPED = "stopped"  # upgraded, or given up


class _Unreadable(Exception):
    """The upstream stream is not HTTP/1.1 the tracker can follow."""


class _ResponseHead:
    """httptools protocol collecting one response head."""

    def __init__(self) -> None:
        self.fields: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True


class ResponseTracker:
    """Follows one connection's upstream-to-client responses to answer the rewriter's pending
    Upgrade/CONNECT request. Sans-I/O and observe-only: the proxy forwards every upstream byte
    to the client unchanged and also hands it to ``feed``.

    The proxy calls ``request_sent(method, upgrade)`` for every request head the rewriter emits,
    in order, before those bytes reach the upstream (pass it through ``RequestRewriter``'s
    ``on_request``), and ``feed(data)`` with every upstream-to-client chunk. Responses are
    paired with requests in order (RFC 9112 section 9.3.2); a 1xx other than 101 is interim;
    the final response to an Upgrade request is accepted if 101, to a CONNECT if 2xx (RFC 9110
    sections 7.8, 9.3.6), refused otherwise. ``feed`` returns that ``UpgradeDecision`` from
    the call that completes the response's head (a refusal's content may still follow; the
    tracker goes on reading it). After an accepted upgrade the tracker stops reading: the rest
    is another protocol.

    Framing (RFC 9112 section 6.3): no content after a response to HEAD or a 1xx, 204 or 304;
    then a final ``chunked`` Transfer-Encoding, then Content-Length, else content until the
    connection closes (the tracker then reads nothing more: an upgrade requested behind such a
    response is never answered, as the upstream closes). Reading the content with the right
    framing is what stops a body the client chose (reflected by the upstream) from being read
    as a ``101``. llhttp (``httptools``) cannot be told that a response answers HEAD (httptools
    ignores what ``on_headers_complete`` returns) nor say where in a chunk a message ended, so
    the tracker delimits messages itself and hands each complete head to a fresh, strict
    ``httptools.HttpResponseParser``; chunked framing it reads itself.

    Giving up: a response the tracker cannot read (not HTTP/1.0 or 1.1, a head or chunk line or
    trailer section over ``max_head_bytes``, invalid framing, a bare LF as a line end, a
    response with no request outstanding, a 101 to a request that did not ask to upgrade, more
    than ``max_outstanding`` requests unanswered) never raises: the tracker stops reading
    (``broken``) and the pending upgrade, now or later, is refused (``UpgradeDecision(False,
    None)``), which is the safe answer (the held bytes are then read as HTTP requests and
    rewritten). The proxy itself goes on forwarding both directions.

    Bounded: content is skipped without being buffered; at most ``max_head_bytes`` of a head,
    chunk line or trailer section are kept, and at most ``max_outstanding`` requests queued.

    Wiring (``forwarding.plan.Forwarding`` is this, for the proxy)::

        tracker = ResponseTracker()
        early: list[UpgradeDecision] = []

        def on_request(method: bytes, upgrade: bool) -> None:
            decision = tracker.request_sent(method, upgrade)
            if decision is not None:  # the tracker gave up earlier: refused at once
                early.append(decision)

        rewriter = RequestRewriter(inject, on_request=on_request)

        def to_upstream(data: bytes) -> None:  # rewriter output; settle what it decided
            upstream.write(data)
            while early:
                upstream.write(rewriter.resolve_upgrade(early.pop().accepted))

        # client -> upstream:  to_upstream(rewriter.feed(data))
        # upstream -> client:  client.write(data)
        #                      if (decision := tracker.feed(data)) is not None:
        #                          to_upstream(rewriter.resolve_upgrade(decision.accepted))
    """

    def __init__(
        self,
        *,
        max_head_bytes: int = MAX_HEAD_BYTES,
        max_outstanding: int = MAX_OUTSTANDING_REQUESTS,
    ) -> None:
        self._max_head_bytes = max_head_bytes
        self._max_outstanding = max_outstanding
        self._requests: deque[tuple[bytes, bool]] = deque()
        self._phase = _Phase.HEAD
        self._buffer = bytearray()
        self._remaining = 0  # content bytes left (BODY, CHUNK_DATA), CRLF bytes (CHUNK_CRLF)
        self._upgraded = False
        self._broken = False
        self._decision: UpgradeDecision | None = None

    @property
    def upgraded(self) -> bool:
        """An upgrade was accepted; the tracker reads nothing more."""
        return self._upgraded

    @property
    def broken(self) -> bool:
        """The tracker gave up reading (see the class docstring)."""
        return self._broken

    @property
    def idle(self) -> bool:
        """Every request sent was answered in full, so the upstream's next byte would belong to
        a request not sent yet: the place for the proxy's own answer to a refused request.
        False once the tracker stopped reading (it cannot tell) and during content delimited
        by the connection closing."""
        return self._phase is _Phase.HEAD and not self._requests and not self._buffer

    @property
    def outstanding(self) -> int:
        """Requests sent and not yet finally answered."""
        return len(self._requests)

    def request_sent(self, method: bytes, upgrade: bool) -> UpgradeDecision | None:
        """A request head went upstream. Returns a refusal at once for an Upgrade/CONNECT
        request the tracker can no longer answer (it gave up, or stopped after an accepted
        upgrade); ``None`` otherwise, the answer then coming from ``feed``."""
        if self._requests and self._requests[-1][1]:
            raise RuntimeError("a request was sent while an upgrade was pending")
        if self._phase is not _Phase.STOPPED and len(self._requests) >= self._max_outstanding:
            self._give_up()
        if self._phase is _Phase.STOPPED:
            return UpgradeDecision(accepted=False, status=None) if upgrade else None
        self._requests.append((bytes(method), upgrade))
        return None

    def feed(self, data: bytes) -> UpgradeDecision | None:
        """Bytes from the upstream (as forwarded to the client). Returns the decision on the
        pending upgrade once its final response's head is complete, else ``None``. Never
        raises for what the upstream sent."""
        view = memoryview(data)
        position = 0
        try:
            while position < len(view) and self._phase not in (
                _Phase.STOPPED,
                _Phase.UNTIL_CLOSE,
            ):
                position = self._step(view, position)
        except _Unreadable:
            self._give_up()
        decision, self._decision = self._decision, None
        return decision

    # -- reading -------------------------------------------------------------------------------

    def _step(self, view: memoryview, position: int) -> int:
        phase = self._phase
        if phase is _Phase.HEAD:
            if not self._buffer:  # empty lines between messages are tolerated, as llhttp does
                while position < len(view) and view[position] in b"\r\n":
                    position += 1
                if position == len(view):
                    return position
            position, head = self._collect(view, position, b"\r\n\r\n")
            if head is not None:
                self._on_head(head)
            elif not _STATUS_LINE_START.startswith(self._buffer[: len(_STATUS_LINE_START)]):
                raise _Unreadable("not an HTTP/1.x response")  # at once, not at the limit
            return position
        if phase is _Phase.BODY or phase is _Phase.CHUNK_DATA:
            taken = min(self._remaining, len(view) - position)
            self._remaining -= taken
            if not self._remaining:
                if phase is _Phase.BODY:
                    self._phase = _Phase.HEAD
                else:
                    self._phase, self._remaining = _Phase.CHUNK_CRLF, 2
            return position + taken
        if phase is _Phase.CHUNK_CRLF:
            if view[position] != b"\r\n"[2 - self._remaining]:
                raise _Unreadable("no CRLF after chunk data")
            self._remaining -= 1
            if not self._remaining:
                self._phase = _Phase.CHUNK_SIZE
            return position + 1
        if phase is _Phase.CHUNK_SIZE:
            position, line = self._collect(view, position, b"\r\n")
            if line is not None:
                match = _CHUNK_SIZE_LINE.fullmatch(line)
                if match is None:
                    raise _Unreadable("invalid chunk size line")
                size = int(match[1], 16)
                if size:
                    self._phase, self._remaining = _Phase.CHUNK_DATA, size
                else:  # the CRLF just read starts the search for the trailer section's end
                    self._phase = _Phase.TRAILERS
                    self._buffer += b"\r\n"
            return position
        if phase is _Phase.TRAILERS:
            position, trailers = self._collect(view, position, b"\r\n\r\n")
            if trailers is not None:
                self._phase = _Phase.HEAD
            return position
        raise AssertionError(phase)  # pragma: no cover

    def _collect(self, view: memoryview, position: int, end: bytes) -> tuple[int, bytes | None]:
        """Buffer up to and including ``end``: the new position and, once ``end`` was read,
        everything buffered (the buffer is then empty again)."""
        buffer = self._buffer
        before = len(buffer)
        buffer += view[position : position + self._max_head_bytes - before]
        found = buffer.find(end, max(0, before - len(end) + 1))
        if _BARE_LF.search(buffer, before, len(buffer) if found < 0 else found + len(end)):
            raise _Unreadable("a bare LF")  # RFC 9112 section 2.2; llhttp's strict mode
        if found < 0:
            if len(buffer) >= self._max_head_bytes:
                raise _Unreadable(f"line or head larger than {self._max_head_bytes} bytes")
            return len(view), None
        found += len(end)
        collected = bytes(buffer[:found])
        buffer.clear()
        return position + found - before, collected

    def _on_head(self, raw: bytes) -> None:
        head = _ResponseHead()
        parser = strict(httptools.HttpResponseParser(head))
        try:
            parser.feed_data(raw)
        except httptools.HttpParserUpgrade:
            pass  # a 101 with Upgrade and Connection: upgrade, after its head
        except httptools.HttpParserError:
            if not head.complete:  # else only llhttp's pause after a 101 without them
                raise _Unreadable("malformed response head") from None
        if not head.complete:
            raise _Unreadable("malformed response head")
        status = parser.get_status_code()
        version = parser.get_http_version()
        if version not in ("1.0", "1.1") or not 100 <= status <= 599:
            raise _Unreadable(f"HTTP/{version} {status}")
        if not self._requests:
            raise _Unreadable("a response with no request outstanding")
        method, upgrade = self._requests[0]
        if 100 <= status < 200 and status != 101:
            return  # interim: the final response to the same request follows
        self._requests.popleft()
        if status == 101 or (method == b"CONNECT" and 200 <= status < 300):
            # The connection now carries another protocol: nothing more to read. A 101 to
            # CONNECT, or to a request that did not ask for it, is refused, and unreadable.
            accepted = upgrade and (status == 101) != (method == b"CONNECT")
            if upgrade:
                self._decision = UpgradeDecision(accepted=accepted, status=status)
            if not accepted:
                raise _Unreadable(f"{status} to {method.decode('latin-1')}")
            self._upgraded = True
            self._stop()
            return
        if upgrade:
            self._decision = UpgradeDecision(accepted=False, status=status)
        lengths = [v for n, v in head.fields if n.lower() == b"content-length"]
        codings = b",".join(v for n, v in head.fields if n.lower() == b"transfer-encoding")
        if method == b"HEAD" or status in (204, 304):
            return
        if codings:
            if version == "1.0":  # RFC 9112 section 6.1: faulty framing
                raise _Unreadable("Transfer-Encoding in HTTP/1.0")
            last = codings.rsplit(b",", 1)[-1].strip(OWS).lower()
            self._phase = _Phase.CHUNK_SIZE if last == b"chunked" else _Phase.UNTIL_CLOSE
        elif lengths:  # llhttp refused several, or one that is not 1*DIGIT
            self._remaining = int(lengths[0])
            if self._remaining:
                self._phase = _Phase.BODY
        else:
            self._phase = _Phase.UNTIL_CLOSE

    def _stop(self) -> None:
        self._phase = _Phase.STOPPED
        self._requests.clear()
        self._buffer = bytearray()

    def _give_up(self) -> None:
        """Stop reading; refuse the pending upgrade (it is always the last request queued: the
        rewriter emits nothing after it until it is resolved)."""
        if self._decision is None and self._requests and self._requests[-1][1]:
            self._decision = UpgradeDecision(accepted=False, status=None)
        self._broken = True
        self._stop()
