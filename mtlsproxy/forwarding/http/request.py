"""The client-to-upstream direction of HTTP mode: every request re-serialized, never smuggled.

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

Each refusal has a bounded ``label`` for the metric: ``ambiguous_framing`` (the message's length
could be read two ways), ``too_large`` (a limit), ``malformed`` (anything else).

Authorization (``authorize``, the route's ``http_authorization``): a request the callback
refuses is well framed, so it is not an ``HTTPRefused``. Its head is not forwarded and its
content is read and dropped; the rewriter queues a ``local.LocalAnswer`` (``answer``) in the
refused request's place and keeps everything it produces after it until the proxy has sent the
answer and called ``answered`` (module ``local`` says when that is). The connection goes on
unless the answer closes it; after one that does, nothing more is read. A refusal that is not
``enforced`` (audit mode) is forwarded like an admitted request and only reported, through
``take_refusals`` like the others, so the proxy counts and logs both in one place.

Bodies: Content-Length bodies pass unchanged. Chunked bodies are re-chunked: the content passes
unchanged, in chunks as it arrives; chunk extensions and trailer fields are dropped (a trailer
is where a client could otherwise put a field we own, after we checked the head; RFC 9110
section 6.5.1 lets a proxy discard trailers). ``Expect: 100-continue`` passes through (the
``100 Continue`` comes back on the raw upstream-to-client direction).

Upgrade (WebSocket, RFC 9110 section 7.8) and CONNECT (section 9.3.6): after the head of such a
request, the bytes that follow are *held* (``upgrade_pending``) until the proxy, having read
the upstream's answer to that request (``response.ResponseTracker``), calls
``resolve_upgrade``: on ``101 Switching Protocols`` (or a 2xx to CONNECT) they and everything
after pass raw (``upgraded``); on any other status the upstream goes on reading HTTP requests,
so we do too, and the held bytes are parsed and rewritten like the rest. Passing them raw at
once would let a client whose upgrade the upstream refuses send a second request with a forged
``X-Forwarded-Client-Cert``. A WebSocket client waits for the server's answer before sending
(RFC 6455 section 4.1), so holding costs it nothing; ``MAX_HELD_BYTES`` bounds what an early
CONNECT tunnel may send.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import httptools

from mtlsproxy.forwarding.http.headers import SANITIZED_HEADERS
from mtlsproxy.forwarding.http.local import LocalAnswer, RequestRefusal, local_answer

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

_SLICE = 4096  # bytes handed to llhttp at a time, the granularity of MAX_HEAD_BYTES

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 section 5.6.2
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")  # RFC 9110 section 5.5, field-value
_DIGITS = re.compile(rb"[0-9]+")  # RFC 9112 section 6.3, rule 5: Content-Length = 1*DIGIT
OWS = b" \t"  # RFC 9110 section 5.6.3, optional whitespace

# The ``label`` of an ``HTTPRefused``: the ``reason`` of http_requests_refused_total.
AMBIGUOUS_FRAMING, MALFORMED, TOO_LARGE = "ambiguous_framing", "malformed", "too_large"
_FRAMING_WORDS = ("content-length", "transfer-encoding", "chunk")  # in llhttp's messages

Authorize = Callable[[bytes, bytes], RequestRefusal | None]
"""(method, request-target as sent) of a well-framed request head -> a refusal, or None to
forward the request."""


ParserT = TypeVar("ParserT", httptools.HttpRequestParser, httptools.HttpResponseParser)


def strict(parser: ParserT) -> ParserT:
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

    def __init__(
        self, reason: str, *, status: int = 400, forward: bytes = b"", label: str = MALFORMED
    ) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason
        self.forward = forward
        self.label = label

    @property
    def refusal(self) -> RequestRefusal:
        """For the metric and the log line; no rule decided it."""
        return RequestRefusal(self.status, self.label, "none", self.reason)


class _State(enum.Enum):
    HTTP = "http"
    UPGRADE_PENDING = "upgrade_pending"
    UPGRADED = "upgraded"
    REFUSED = "refused"


class _Violation(Exception):
    """Raised from a parser callback; becomes ``HTTPRefused``."""

    def __init__(self, message: str, label: str = MALFORMED) -> None:
        super().__init__(message)
        self.label = label


@dataclass(slots=True)
class _Pending:
    """A local answer not yet sent, and what the rewriter produced after it."""

    answer: LocalAnswer
    after: bytearray = field(default_factory=bytearray)
    requests: list[tuple[bytes, bool]] = field(default_factory=list)  # their on_request calls


class RequestRewriter:
    """Rewrites one connection's client-to-upstream HTTP/1.1 stream (see the module docstring).

    ``inject``: header fields appended to every request, computed once per connection (see
    ``identity_headers``). ``remove``: lowercase names dropped from every request first; the
    injected names are always added to it, except those in ``keep``: list-valued fields
    (X-Forwarded-For) whose incoming lines stay, ours following them as the list's last
    element (RFC 9110 section 5.3). ``feed`` returns the bytes to send upstream; after
    it raised ``HTTPRefused`` every later call raises it again.

    ``on_request(method, upgrade)`` is called once for each request head emitted, in order, as
    it is emitted (during the ``feed`` or ``resolve_upgrade`` call whose result contains it):
    ``method`` as sent (``b"GET"``), ``upgrade`` true for an Upgrade/CONNECT request, i.e. the
    one after which ``upgrade_pending`` becomes true. Its return value is ignored; it must not
    raise (an exception in it is turned into ``HTTPRefused``). This is what feeds
    ``ResponseTracker.request_sent``.

    ``authorize(method, target)``: called for every well-framed request head (see the module
    docstring); a refused request gets a ``LocalAnswer``, sent by the proxy when ``answer`` is
    it, after which ``answered`` returns what followed it.
    """

    def __init__(
        self,
        inject: Sequence[tuple[str, str]],
        *,
        remove: Iterable[str] = SANITIZED_HEADERS,
        keep: Iterable[str] = (),
        max_head_bytes: int = MAX_HEAD_BYTES,
        max_header_fields: int = MAX_HEADER_FIELDS,
        max_held_bytes: int = MAX_HELD_BYTES,
        on_request: Callable[[bytes, bool], object] | None = None,
        authorize: Authorize | None = None,
    ) -> None:
        injected = []
        for name, value in inject:
            raw_name, raw_value = name.encode("ascii"), value.encode("latin-1")
            if not _TOKEN.fullmatch(raw_name) or not _FIELD_VALUE.fullmatch(raw_value):
                raise ValueError(f"not a valid header field: {name!r}: {value!r}")
            injected.append(raw_name + b": " + raw_value.strip(OWS) + b"\r\n")
        self._injected = b"".join(injected)
        self._remove = (
            frozenset(n.lower().encode("ascii") for n in remove)
            | frozenset(name.lower().encode("ascii") for name, _ in inject)
        ) - frozenset(n.lower().encode("ascii") for n in keep)
        self._max_head_bytes = max_head_bytes
        self._max_header_fields = max_header_fields
        self._max_held_bytes = max_held_bytes
        self._on_request = on_request
        self._authorize = authorize
        self._state = _State.HTTP
        self._held = bytearray()
        self._refusal: HTTPRefused | None = None
        self._answers: deque[_Pending] = deque()  # local answers not yet sent, in order
        self._refusals: list[RequestRefusal] = []  # not yet taken by the proxy
        self._skip = False  # the request being read was answered locally: drop its content
        self._closing = False  # an answer that ends the connection is queued: read no more
        self._new_parser()

    @property
    def upgrade_pending(self) -> bool:
        """An Upgrade/CONNECT head was forwarded; later bytes wait for ``resolve_upgrade``."""
        return self._state is _State.UPGRADE_PENDING

    @property
    def upgraded(self) -> bool:
        """The connection switched protocols: everything now passes raw."""
        return self._state is _State.UPGRADED

    @property
    def answer(self) -> LocalAnswer | None:
        """The first local answer not yet sent; what came after its request waits for it."""
        return self._answers[0].answer if self._answers else None

    def answered(self) -> bytes:
        """The proxy sent ``answer``: returns what the rewriter produced after it, up to the
        next answer, for the upstream (``on_request`` is called for its request heads now)."""
        pending = self._answers.popleft()
        if self._on_request is not None:
            for method, upgrade in pending.requests:
                self._on_request(method, upgrade)
        return bytes(pending.after)

    def take_refusals(self) -> list[RequestRefusal]:
        """The requests refused by ``authorize`` since the last call, in order."""
        refusals, self._refusals = self._refusals, []
        return refusals

    def feed(self, data: bytes) -> bytes:
        """Bytes from the client in, bytes for the upstream out (possibly empty)."""
        if self._state is _State.REFUSED:
            assert self._refusal is not None
            raise HTTPRefused(
                self._refusal.reason, status=self._refusal.status, label=self._refusal.label
            )
        if self._closing:
            return b""
        if self._state is _State.UPGRADED:
            return bytes(data)
        if self._state is _State.UPGRADE_PENDING:
            self._held += data
            if len(self._held) > self._max_held_bytes:
                self._refuse(
                    "too much data before the upgrade was answered", bytearray(), TOO_LARGE
                )
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
        self._parser = strict(httptools.HttpRequestParser(self))
        self._in_head = False
        self._framing_bytes = 0
        self._progress = False

    def _parse(self, data: bytes) -> bytes:
        self._out = bytearray()
        while data:
            data = self._parse_some(data)
        out, self._out = bytes(self._out), bytearray()
        return out

    def _parse_some(self, data: bytes) -> bytes:
        """Parse ``data``. Returns what is left for a new parser when an Upgrade/CONNECT
        request was answered locally (llhttp stops after it; the client goes on in HTTP)."""
        view = memoryview(data)
        position = 0
        while position < len(view) and not self._closing:
            piece = view[position : position + _SLICE]
            position += len(piece)
            self._progress = False
            try:
                self._parser.feed_data(piece)
            except httptools.HttpParserUpgrade as upgrade:
                rest = bytes(piece[upgrade.args[0] :]) + bytes(view[position:])
                if self._closing:
                    return b""
                if self._skip:
                    self._new_parser()
                    return rest
                self._state = _State.UPGRADE_PENDING
                self._held += rest
                if len(self._held) > self._max_held_bytes:
                    self._refuse(
                        "too much data before the upgrade was answered", self._out, TOO_LARGE
                    )
                return b""
            except httptools.HttpParserError as error:
                if self._closing:  # after an answer that ends the connection: nothing is read
                    return b""
                cause = error.__context__
                if isinstance(cause, _Violation):
                    reason, label = str(cause), cause.label
                else:
                    reason = str(error) or "malformed request"
                    framing = any(word in reason.lower() for word in _FRAMING_WORDS)
                    label = AMBIGUOUS_FRAMING if framing else MALFORMED
                self._refuse(reason, self._out, label)
            self._framing_bytes = 0 if self._progress else self._framing_bytes + len(piece)
            if self._framing_bytes > self._max_head_bytes:
                what = "request head" if self._in_head else "chunk framing or trailer"
                self._refuse(
                    f"{what} larger than {self._max_head_bytes} bytes", self._out, TOO_LARGE
                )
        return b""

    def _refuse(self, reason: str, produced: bytearray, label: str) -> None:
        self._state = _State.REFUSED
        self._refusal = HTTPRefused(reason, label=label)
        self._held = bytearray()
        self._answers.clear()  # the connection ends with the 400: nothing after it is sent
        raise HTTPRefused(reason, forward=bytes(produced), label=label)

    def _emit(self, data: bytes | bytearray) -> None:
        """Output in order: for the upstream now, or after the last local answer queued."""
        if self._answers:
            self._answers[-1].after += data
        else:
            self._out += data

    def _emitted(self, method: bytes, upgrade: bool) -> None:
        if self._answers:
            self._answers[-1].requests.append((method, upgrade))
        elif self._on_request is not None:
            self._on_request(method, upgrade)

    def _answer_locally(self, refusal: RequestRefusal, method: bytes, has_content: bool) -> None:
        """Queue the answer to the request whose head was just read; drop its content."""
        expects_continue = any(
            n.lower() == b"expect" and v.lower() == b"100-continue" for n, v in self._fields
        )
        # A client waiting for 100 Continue may never send the content it announced: the
        # next request could not be found, so that answer closes (RFC 9110 section 10.1.1).
        close = not self._parser.should_keep_alive() or (has_content and expects_continue)
        refusal = refusal.of_request(method, self._url)
        answer = local_answer(refusal, close=close, head_only=method == b"HEAD")
        self._answers.append(_Pending(answer))
        self._refusals.append(refusal)
        self._skip = True
        self._closing = close

    # -- llhttp callbacks (httptools calls these by name) --------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._skip = False
        self._url = b""
        self._fields: list[tuple[bytes, bytes]] = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:  # a trailer field: dropped (module docstring)
            return
        if len(self._fields) >= self._max_header_fields:
            raise _Violation(f"more than {self._max_header_fields} header fields", TOO_LARGE)
        if not _TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            raise _Violation("invalid header field")
        self._fields.append((name, value.strip(OWS)))

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
            raise _Violation("invalid or repeated Content-Length", AMBIGUOUS_FRAMING)
        if codings and (lengths or version == "1.0"):
            raise _Violation(
                "Transfer-Encoding with Content-Length or in HTTP/1.0", AMBIGUOUS_FRAMING
            )
        if len(codings) > 1 or (codings and codings[0].lower() != b"chunked"):
            raise _Violation("Transfer-Encoding other than chunked", AMBIGUOUS_FRAMING)
        if version == "1.1" and hosts != 1:
            raise _Violation("HTTP/1.1 request without exactly one Host")
        self._chunked = bool(codings)
        has_content = self._chunked or (bool(lengths) and int(lengths[0]) > 0)
        upgrade = self._parser.should_upgrade()
        if upgrade and has_content:
            raise _Violation("Upgrade or CONNECT request with content", AMBIGUOUS_FRAMING)
        method = self._parser.get_method()
        if self._authorize is not None:
            refusal = self._authorize(method, self._url)
            if refusal is not None and refusal.enforced:
                self._answer_locally(refusal, method, has_content)
                return
            if refusal is not None:  # audit mode: forwarded below, only reported
                self._refusals.append(refusal.of_request(method, self._url))
        head = bytearray(b"%s %s HTTP/%s\r\n" % (method, self._url, version.encode()))
        for name, value in self._fields:
            if name.lower() not in self._remove:
                head += b"%s: %s\r\n" % (name, value)
        head += self._injected
        head += b"\r\n"
        self._emit(head)
        self._emitted(method, upgrade)

    def on_body(self, body: bytes) -> None:
        self._progress = True
        if self._skip:
            return
        if self._chunked:
            self._emit(b"%x\r\n%s\r\n" % (len(body), body))
        else:
            self._emit(body)

    def on_message_complete(self) -> None:
        self._progress = True
        if self._chunked and not self._skip:
            self._emit(b"0\r\n\r\n")
