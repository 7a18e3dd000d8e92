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
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection, Iterable, Sequence
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
    """

    def __init__(
        self,
        inject: Sequence[tuple[str, str]],
        *,
        remove: Iterable[str] = SANITIZED_HEADERS,
        max_head_bytes: int = MAX_HEAD_BYTES,
        max_header_fields: int = MAX_HEADER_FIELDS,
        max_held_bytes: int = MAX_HELD_BYTES,
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
        self._parser = httptools.HttpRequestParser(self)
        # All off, which is llhttp's default; said explicitly so that a future default cannot
        # turn one on (httptools >= 0.6.2 exposes them).
        self._parser.set_dangerous_leniencies(
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
        if self._parser.should_upgrade() and has_content:
            raise _Violation("Upgrade or CONNECT request with content")
        method = self._parser.get_method()
        head = bytearray(b"%s %s HTTP/%s\r\n" % (method, self._url, version.encode()))
        for name, value in self._fields:
            if name.lower() not in self._remove:
                head += b"%s: %s\r\n" % (name, value)
        head += self._injected
        head += b"\r\n"
        self._out += head

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


def ssl_client_headers(info: ForwardedTLS) -> list[tuple[str, str]]:
    """nginx-style headers (as ``proxy_set_header X-SSL-Client-Verify $ssl_client_verify``...).

    ``X-SSL-Client-Verify`` is ``SUCCESS``, ``NONE`` (no certificate) or ``FAILED`` (audit mode:
    presented but refused); only ``SUCCESS`` comes with ``X-SSL-Client-S-DN`` (RFC 4514, as
    nginx's ``$ssl_client_s_dn`` since 1.11.6), ``X-SSL-Client-Fingerprint`` (SHA-256 lowercase
    hex; nginx's ``$ssl_client_fingerprint`` is SHA-1) and ``X-SSL-Client-SPIFFE-ID``.
    """
    identity = info.identity
    if not info.client_certificate_presented:
        return [(SSL_CLIENT_VERIFY, "NONE")]
    if not info.client_verified or identity is None:
        return [(SSL_CLIENT_VERIFY, "FAILED")]
    headers = [
        (SSL_CLIENT_VERIFY, "SUCCESS"),
        (SSL_CLIENT_S_DN, _header_safe(identity.subject)),
        (SSL_CLIENT_FINGERPRINT, identity.sha256),
    ]
    if identity.spiffe_id is not None:
        headers.append((SSL_CLIENT_SPIFFE_ID, _header_safe(identity.spiffe_id)))
    return headers


def identity_headers(
    info: ForwardedTLS,
    *,
    xfcc_fields: Collection[str] | None = DEFAULT_XFCC_FIELDS,
    by: str | None = None,
    ssl_headers: bool = False,
) -> list[tuple[str, str]]:
    """The ``inject`` list for ``RequestRewriter``: XFCC (unless ``xfcc_fields`` is ``None``)
    and, with ``ssl_headers``, the nginx-style set."""
    headers = []
    if xfcc_fields is not None:
        value = xfcc_value(info, fields=xfcc_fields, by=by)
        if value is not None:
            headers.append(("X-Forwarded-Client-Cert", value))
    if ssl_headers:
        headers.extend(ssl_client_headers(info))
    return headers
