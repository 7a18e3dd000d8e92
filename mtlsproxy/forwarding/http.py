"""Identity headers for HTTP/1.1 upstreams, injected into every request, never spoofable.

``RequestRewriter`` is a sans-I/O rewriter of the client-to-upstream byte stream: it parses the
requests with llhttp (through ``httptools``) in strict mode, drops every header field the
client sent under a name we own (``X-Forwarded-Client-Cert`` and the ``X-SSL-Client-*`` family
by default, plus whatever we inject), appends our own, and re-serializes each request head in a
canonical form. The upstream therefore only ever sees framing that we parsed ourselves: any
message whose framing could be read two ways is refused (``HTTPRefused``, a 400) before a byte
of it is forwarded, which is what defeats request smuggling (RFC 9112 section 11.2).

What is refused, with the rule:

- a Content-Length together with Transfer-Encoding (RFC 9112 section 6.3, rule 3: "ought to
  be handled as an error"), several Content-Length fields or one that is not ``1*DIGIT``
  (section 6.3, rule 5: ``+5``, ``5, 5``);
- a Transfer-Encoding other than a single ``chunked`` (section 6.3, rule 4 requires chunked
  last; codings before it are legal but no upstream we front decodes them), and any
  Transfer-Encoding in an HTTP/1.0 request (section 6.1: "MUST treat the message as if the
  framing is faulty");
- obsolete line folding (section 5.2), a bare CR or LF in the head (section 2.2), a header
  name that is not a token or a value with a control character (RFC 9110 section 5.5),
  whitespace between a field name and the colon (RFC 9112 section 5.1);
- an HTTP version other than 1.0 and 1.1 (HTTP/0.9 has no head to put an identity in; the
  HTTP/2 preface belongs on a connection that negotiated ``h2``), an unknown method;
- no Host, or several, in HTTP/1.1 (RFC 9112 section 3.2: a server "MUST respond with a 400");
- an Upgrade or CONNECT request with content (the upstream may read it as content while we
  would pass it as the new protocol);
- data after a request that closes the connection (RFC 9112 section 9.6);
- heads over ``MAX_HEAD_BYTES`` or ``MAX_HEADER_FIELDS``.

Bodies: Content-Length bodies pass unchanged. Chunked bodies are re-chunked: the content passes
unchanged, in chunks as it arrives; chunk extensions and trailer fields are dropped (a trailer
is where a client could otherwise put a field we own, after we checked the head; RFC 9110
section 6.5.1 lets a proxy discard trailers). ``Expect: 100-continue`` passes through (the
``100 Continue`` comes back on the raw upstream-to-client direction).

Upgrade (WebSocket, RFC 9110 section 7.8) and CONNECT (section 9.3.6): after the head of such a
request, the bytes that follow are *held* (``upgrade_pending``) until the proxy, having read
the upstream's answer to that request, calls ``resolve_upgrade``: on ``101 Switching
Protocols`` (or a 2xx to CONNECT) they and everything after pass raw (``upgraded``); on any
other status the upstream goes on reading HTTP requests, so we do too, and the held bytes are
parsed and rewritten like the rest. Passing them raw at once would let a client whose upgrade
the upstream refuses send a second request with a forged ``X-Forwarded-Client-Cert``. A
WebSocket client waits for the server's answer before sending (RFC 6455 section 4.1), so
holding costs it nothing; ``MAX_HELD_BYTES`` bounds what an early CONNECT tunnel may send.

``ResponseTracker`` reads the upstream-to-client direction (which is forwarded raw, never
modified) only to produce that answer: the rewriter's ``on_request`` hook tells it each request
head that went upstream, and its ``feed`` returns an ``UpgradeDecision`` once the final response
to the pending Upgrade/CONNECT request has arrived (see its docstring for how the proxy wires
the two together).
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import quote

import httptools
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mtlsproxy.forwarding.tls_info import ForwardedTLS

MAX_HEAD_BYTES = 64 * 1024
"""Request line plus header fields, and any run of chunk framing or trailers without content.
Apache's LimitRequestFieldSize is 8 KiB a field and 100 fields; Node's --max-http-header-size
is 16 KiB; HAProxy's tune.bufsize is 16 KiB; nginx's large_client_header_buffers 4 x 8 KiB.
64 KiB admits every head those accept. Counted in the ``_SLICE``s handed to llhttp that end
without content progress (so only framing bytes are counted): a head is never refused at or
below the limit, and always refused above the limit plus two slices (8 KiB), the partial slices
at its start and end. Bounding it also bounds what httptools buffers of an unfinished field."""

MAX_HEADER_FIELDS = 100
"""Apache's LimitRequestFields and Go's net/http http2 default; h11 has none, nginx none."""

MAX_HELD_BYTES = 64 * 1024
"""What a client may send after an Upgrade/CONNECT head before the upstream answers it."""

MAX_OUTSTANDING_REQUESTS = 1000
"""Requests sent upstream and not yet answered that ``ResponseTracker`` queues; past that it
gives up (see ``ResponseTracker``). Pipelining deeper than this is not something clients do."""

_SLICE = 4096  # bytes handed to llhttp at a time, the granularity of MAX_HEAD_BYTES

XFCC = "x-forwarded-client-cert"
SSL_CLIENT_VERIFY = "X-SSL-Client-Verify"
SSL_CLIENT_S_DN = "X-SSL-Client-S-DN"
SSL_CLIENT_FINGERPRINT = "X-SSL-Client-Fingerprint"
SSL_CLIENT_SPIFFE_ID = "X-SSL-Client-SPIFFE-ID"

SANITIZED_HEADERS: frozenset[str] = frozenset(
    name.lower()
    for name in (
        XFCC,
        SSL_CLIENT_VERIFY,
        SSL_CLIENT_S_DN,
        SSL_CLIENT_FINGERPRINT,
        SSL_CLIENT_SPIFFE_ID,
    )
)
"""Removed from every request by default: every name this module can inject, whether or not
it injects it on this connection (an anonymous client gets no XFCC, so it must not be able to
send one)."""

XFCC_FIELDS: frozenset[str] = frozenset({"by", "hash", "subject", "uri", "dns", "cert"})
DEFAULT_XFCC_FIELDS: tuple[str, ...] = ("by", "hash", "subject", "uri", "dns")
"""Envoy's ``forward_client_cert_details: SANITIZE_SET`` with ``set_current_client_cert_details``
of Subject, URI and DNS (and Envoy always adds By and Hash)."""

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 section 5.6.2
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")  # RFC 9110 section 5.5, field-value
_DIGITS = re.compile(rb"[0-9]+")  # RFC 9112 section 6.3, rule 5: Content-Length = 1*DIGIT
_OWS = b" \t"


ParserT = TypeVar("ParserT", httptools.HttpRequestParser, httptools.HttpResponseParser)


def _strict(parser: ParserT) -> ParserT:
    """Every llhttp leniency off. That is llhttp's default; said explicitly so that a future
    default cannot turn one on (httptools >= 0.6.2 exposes them)."""
    parser.set_dangerous_leniencies(
        lenient_headers=False,
        lenient_chunked_length=False,
        lenient_keep_alive=False,
        lenient_transfer_encoding=False,
        lenient_version=False,
        lenient_data_after_close=False,
        lenient_optional_lf_after_cr=False,
        lenient_optional_cr_before_lf=False,
        lenient_optional_crlf_after_chunk=False,
        lenient_spaces_after_chunk_size=False,
    )
    return parser


class HTTPRefused(Exception):
    """The request stream cannot be forwarded safely; answer ``status`` and close.

    ``forward`` is what the failing ``feed`` call produced before the refused point (complete
    requests, and the head and content so far of a request whose chunked framing then failed):
    it may be sent upstream before the connection is closed, or dropped. A head that was refused
    is never in it.
    """

    def __init__(self, reason: str, *, status: int = 400, forward: bytes = b"") -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason
        self.forward = forward


class _State(enum.Enum):
    HTTP = "http"
    UPGRADE_PENDING = "upgrade_pending"
    UPGRADED = "upgraded"
    REFUSED = "refused"


class _Violation(Exception):
    """Raised from a parser callback; becomes ``HTTPRefused``."""


class RequestRewriter:
    """Rewrites one connection's client-to-upstream HTTP/1.1 stream (see the module docstring).

    ``inject``: header fields appended to every request, computed once per connection (see
    ``identity_headers``). ``remove``: lowercase names dropped from every request first; the
    injected names are always added to it. ``feed`` returns the bytes to send upstream; after
    it raised ``HTTPRefused`` every later call raises it again.

    ``on_request(method, upgrade)`` is called once for each request head emitted, in order, as
    it is emitted (during the ``feed`` or ``resolve_upgrade`` call whose result contains it):
    ``method`` as sent (``b"GET"``), ``upgrade`` true for an Upgrade/CONNECT request, i.e. the
    one after which ``upgrade_pending`` becomes true. Its return value is ignored; it must not
    raise (an exception in it is turned into ``HTTPRefused``). This is what feeds
    ``ResponseTracker.request_sent``.
    """

    def __init__(
        self,
        inject: Sequence[tuple[str, str]],
        *,
        remove: Iterable[str] = SANITIZED_HEADERS,
        max_head_bytes: int = MAX_HEAD_BYTES,
        max_header_fields: int = MAX_HEADER_FIELDS,
        max_held_bytes: int = MAX_HELD_BYTES,
        on_request: Callable[[bytes, bool], object] | None = None,
    ) -> None:
        injected = []
        for name, value in inject:
            raw_name, raw_value = name.encode("ascii"), value.encode("latin-1")
            if not _TOKEN.fullmatch(raw_name) or not _FIELD_VALUE.fullmatch(raw_value):
                raise ValueError(f"not a valid header field: {name!r}: {value!r}")
            injected.append(raw_name + b": " + raw_value.strip(_OWS) + b"\r\n")
        self._injected = b"".join(injected)
        self._remove = frozenset(n.lower().encode("ascii") for n in remove) | frozenset(
            name.lower().encode("ascii") for name, _ in inject
        )
        self._max_head_bytes = max_head_bytes
        self._max_header_fields = max_header_fields
        self._max_held_bytes = max_held_bytes
        self._on_request = on_request
        self._state = _State.HTTP
        self._held = bytearray()
        self._refusal: HTTPRefused | None = None
        self._new_parser()

    @property
    def upgrade_pending(self) -> bool:
        """An Upgrade/CONNECT head was forwarded; later bytes wait for ``resolve_upgrade``."""
        return self._state is _State.UPGRADE_PENDING

    @property
    def upgraded(self) -> bool:
        """The connection switched protocols: everything now passes raw."""
        return self._state is _State.UPGRADED

    def feed(self, data: bytes) -> bytes:
        """Bytes from the client in, bytes for the upstream out (possibly empty)."""
        if self._state is _State.UPGRADED:
            return bytes(data)
        if self._state is _State.REFUSED:
            assert self._refusal is not None
            raise HTTPRefused(self._refusal.reason, status=self._refusal.status)
        if self._state is _State.UPGRADE_PENDING:
            self._held += data
            if len(self._held) > self._max_held_bytes:
                self._refuse("too much data before the upgrade was answered", bytearray())
            return b""
        return self._parse(bytes(data))

    def resolve_upgrade(self, accepted: bool) -> bytes:
        """The upstream answered the pending Upgrade/CONNECT request: ``accepted`` when it
        switched protocols (101, or 2xx to CONNECT). Returns the held bytes to send upstream:
        raw when accepted, rewritten as HTTP requests otherwise (may raise ``HTTPRefused``)."""
        if self._state is not _State.UPGRADE_PENDING:
            raise RuntimeError("no upgrade is pending")
        held, self._held = bytes(self._held), bytearray()
        if accepted:
            self._state = _State.UPGRADED
            return held
        self._state = _State.HTTP
        self._new_parser()
        return self._parse(held)

    # -- parsing -------------------------------------------------------------------------------

    def _new_parser(self) -> None:
        self._parser = _strict(httptools.HttpRequestParser(self))
        self._in_head = False
        self._framing_bytes = 0
        self._progress = False

    def _parse(self, data: bytes) -> bytes:
        self._out = bytearray()
        view = memoryview(data)
        position = 0
        while position < len(view):
            piece = view[position : position + _SLICE]
            position += len(piece)
            self._progress = False
            try:
                self._parser.feed_data(piece)
            except httptools.HttpParserUpgrade as upgrade:
                self._state = _State.UPGRADE_PENDING
                self._held += piece[upgrade.args[0] :]
                self._held += view[position:]
                if len(self._held) > self._max_held_bytes:
                    self._refuse("too much data before the upgrade was answered", self._out)
                break
            except httptools.HttpParserError as error:
                cause = error.__context__
                reason = str(cause) if isinstance(cause, _Violation) else str(error)
                self._refuse(reason or "malformed request", self._out)
            self._framing_bytes = 0 if self._progress else self._framing_bytes + len(piece)
            if self._framing_bytes > self._max_head_bytes:
                what = "request head" if self._in_head else "chunk framing or trailer"
                self._refuse(f"{what} larger than {self._max_head_bytes} bytes", self._out)
        out, self._out = bytes(self._out), bytearray()
        return out

    def _refuse(self, reason: str, produced: bytearray) -> None:
        self._state = _State.REFUSED
        self._refusal = HTTPRefused(reason)
        self._held = bytearray()
        raise HTTPRefused(reason, forward=bytes(produced))

    # -- llhttp callbacks (httptools calls these by name) --------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._url = b""
        self._fields: list[tuple[bytes, bytes]] = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:  # a trailer field: dropped (module docstring)
            return
        if len(self._fields) >= self._max_header_fields:
            raise _Violation(f"more than {self._max_header_fields} header fields")
        if not _TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            raise _Violation("invalid header field")
        self._fields.append((name, value.strip(_OWS)))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._progress = True
        version = self._parser.get_http_version()
        if version not in ("1.0", "1.1"):
            raise _Violation(f"unsupported HTTP version {version}")
        lengths = [v for n, v in self._fields if n.lower() == b"content-length"]
        codings = [v for n, v in self._fields if n.lower() == b"transfer-encoding"]
        hosts = sum(1 for n, _ in self._fields if n.lower() == b"host")
        if len(lengths) > 1 or (lengths and not _DIGITS.fullmatch(lengths[0])):
            raise _Violation("invalid or repeated Content-Length")
        if codings and (lengths or version == "1.0"):
            raise _Violation("Transfer-Encoding with Content-Length or in HTTP/1.0")
        if len(codings) > 1 or (codings and codings[0].lower() != b"chunked"):
            raise _Violation("Transfer-Encoding other than chunked")
        if version == "1.1" and hosts != 1:
            raise _Violation("HTTP/1.1 request without exactly one Host")
        self._chunked = bool(codings)
        has_content = self._chunked or (bool(lengths) and int(lengths[0]) > 0)
        upgrade = self._parser.should_upgrade()
        if upgrade and has_content:
            raise _Violation("Upgrade or CONNECT request with content")
        method = self._parser.get_method()
        head = bytearray(b"%s %s HTTP/%s\r\n" % (method, self._url, version.encode()))
        for name, value in self._fields:
            if name.lower() not in self._remove:
                head += b"%s: %s\r\n" % (name, value)
        head += self._injected
        head += b"\r\n"
        self._out += head
        if self._on_request is not None:
            self._on_request(method, upgrade)

    def on_body(self, body: bytes) -> None:
        self._progress = True
        if self._chunked:
            self._out += b"%x\r\n%s\r\n" % (len(body), body)
        else:
            self._out += body

    def on_message_complete(self) -> None:
        self._progress = True
        if self._chunked:
            self._out += b"0\r\n\r\n"


# -- the upstream's answers -------------------------------------------------------------------

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

    Wiring::

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
        parser = _strict(httptools.HttpResponseParser(head))
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
            last = codings.rsplit(b",", 1)[-1].strip(_OWS).lower()
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


# -- identity headers -------------------------------------------------------------------------


def _header_safe(text: str) -> str:
    """Percent-encode what may not appear in a header value (controls, DEL, non-ASCII: RFC 9110
    section 5.5 leaves obs-text to be treated as opaque data, so UTF-8 goes encoded)."""
    return "".join(
        c if " " <= c <= "~" else quote(c, safe="", encoding="utf-8", errors="replace")
        for c in text
    )


def _xfcc_quote(value: str, *, always: bool = False) -> str:
    """Envoy's XFCC rule: a value containing ``,``, ``;`` or ``=`` (or a quote) is
    double-quoted, with ``"`` and ``\\`` escaped by a backslash."""
    value = _header_safe(value)
    if always or any(c in value for c in ',;="'):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def xfcc_value(
    info: ForwardedTLS, *, fields: Collection[str] = DEFAULT_XFCC_FIELDS, by: str | None = None
) -> str | None:
    """One ``X-Forwarded-Client-Cert`` element in Envoy's format, or ``None`` unless the client
    presented a certificate that was verified (an audit-mode client that would have been
    refused gets none: the upstream must not mistake it for a verified one).

    ``fields`` selects from ``by`` (our own URI SAN, given as ``by``), ``hash`` (SHA-256 of the
    leaf DER, hex), ``subject`` (RFC 4514, always quoted as Envoy does), ``uri`` and ``dns``
    (one pair per SAN), ``cert`` (the URL-encoded PEM, quoted). Keys in Envoy's order.
    """
    unknown = set(fields) - XFCC_FIELDS
    if unknown:
        raise ValueError(f"unknown XFCC fields: {sorted(unknown)}")
    identity = info.identity
    if not info.client_verified or identity is None:
        return None
    pairs = []
    if "by" in fields and by is not None:
        pairs.append("By=" + _xfcc_quote(by))
    if "hash" in fields:
        pairs.append("Hash=" + identity.sha256)
    if "cert" in fields and info.certificate_der is not None:
        pem = x509.load_der_x509_certificate(info.certificate_der).public_bytes(Encoding.PEM)
        pairs.append('Cert="' + quote(pem, safe="") + '"')
    if "subject" in fields:
        pairs.append("Subject=" + _xfcc_quote(identity.subject, always=True))
    if "uri" in fields:
        pairs.extend("URI=" + _xfcc_quote(uri) for uri in identity.uris)
    if "dns" in fields:
        pairs.extend("DNS=" + _xfcc_quote(name) for name in identity.dns_names)
    return ";".join(pairs)


# nginx-style headers, as ``proxy_set_header X-SSL-Client-Verify $ssl_client_verify`` ...
NGINX_STYLE_HEADERS: tuple[tuple[str, str], ...] = (
    (SSL_CLIENT_VERIFY, "verify"),
    (SSL_CLIENT_S_DN, "subject"),
    (SSL_CLIENT_FINGERPRINT, "sha256"),
    (SSL_CLIENT_SPIFFE_ID, "spiffe_id"),
)


def identity_field(info: ForwardedTLS, field: str) -> str | None:
    """One identity field for a header (``forward_identity.headers``), ``None`` to omit it.

    ``verify`` is ``SUCCESS``, ``NONE`` (no certificate) or ``FAILED`` (audit mode: presented
    but refused), like nginx's ``$ssl_client_verify``. The others (``subject`` RFC 4514 as
    ``$ssl_client_s_dn``, ``sha256`` lowercase hex where nginx's fingerprint is SHA-1,
    ``spiffe_id``, ``serial``, ``cn``, ``uri`` and ``dns`` comma-separated) are sent for a
    verified client only.
    """
    if field == "verify":
        if not info.client_certificate_presented:
            return "NONE"
        return "SUCCESS" if info.client_verified else "FAILED"
    identity = info.identity
    if not info.client_verified or identity is None:
        return None
    values = {
        "subject": identity.subject,
        "sha256": identity.sha256,
        "spiffe_id": identity.spiffe_id,
        "serial": identity.serial,
        "cn": identity.subject_cn,
        "uri": ",".join(identity.uris) or None,
        "dns": ",".join(identity.dns_names) or None,
    }
    value = values[field]
    return _header_safe(value) if value is not None else None


def identity_headers(
    info: ForwardedTLS,
    *,
    xfcc_fields: Collection[str] | None = DEFAULT_XFCC_FIELDS,
    by: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> list[tuple[str, str]]:
    """The ``inject`` list for ``RequestRewriter``: XFCC (unless ``xfcc_fields`` is ``None``
    or the client is not verified), then ``headers`` (name -> ``identity_field`` name)."""
    inject = []
    if xfcc_fields is not None:
        value = xfcc_value(info, fields=xfcc_fields, by=by)
        if value is not None:
            inject.append(("X-Forwarded-Client-Cert", value))
    for name, field in headers:
        value = identity_field(info, field)
        if value is not None:
            inject.append((name, value))
    return inject
