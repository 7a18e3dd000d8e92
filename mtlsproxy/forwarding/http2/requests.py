"""One HTTP/2 request's header block on its way upstream, and the proxy's own answers.

``HeaderRewriter`` does to every request stream what ``http.request.RequestRewriter`` does to
an HTTP/1.1 head: fields the client sent under a name we own are removed (the sanitized
identity headers and whatever we inject, except the ``keep`` list fields of a trusted gateway),
then ours are appended, lower-cased (RFC 9113 section 8.2.1: field names are lower case on
HTTP/2). Trailers lose the same names and get nothing: a trailer is where a client would put a
field we own after the head was checked. Connection-specific fields and pseudo-header rules
(RFC 9113 sections 8.2.2, 8.3) are enforced by ``h2`` before a block reaches us.

The bridge's connections send header blocks without ``h2``'s outbound normalization (which
lower-cases names, strips whitespace and connection fields: all refused on the way in, and our
own fields are written normalized), so ``sensitive`` keeps its one rule that matters: fields
carrying credentials are sent never-indexed (RFC 7541 section 7.1.3), kept out of the HPACK
tables, as ``h2`` would (its ``_secure_headers``: authorization, proxy-authorization and a
cookie under 20 bytes).

A request refused by ``http_authorization`` gets ``refusal_headers``: a 403 (or 400 for an unsafe
path) with a short text body, or for a gRPC request (``content-type: application/grpc...``) a
trailers-only response with ``grpc-status: 7`` PERMISSION_DENIED (3 INVALID_ARGUMENT for an unsafe
path), as gRPC clients read the status from trailers, not from ``:status``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from hpack import NeverIndexedHeaderTuple

from mtlsproxy.forwarding.http.local import GATEWAY_ERRORS, RequestRefusal, refusal_body

Header = tuple[bytes, bytes]

GRPC_PERMISSION_DENIED = 7  # grpc/doc/statuscodes.md
GRPC_INVALID_ARGUMENT = 3
GRPC_UNAVAILABLE = 14


@dataclass(frozen=True, slots=True)
class RequestHead:
    """What the path rules and the log need of a request's pseudo-headers."""

    method: bytes
    target: bytes  # :path, or :authority for CONNECT (which has no :path)
    grpc: bool

    @classmethod
    def of(cls, headers: Sequence[Header]) -> RequestHead:
        method = path = authority = content_type = b""
        for name, value in headers:  # one pass, on every request
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name == b"content-type":
                content_type = value
                break  # h2 validated the block: pseudo-headers come first
        target = path or authority
        return cls(method, target, content_type.startswith(b"application/grpc"))

    def refusal(self, refusal: RequestRefusal) -> RequestRefusal:
        """``refusal`` with this request's method and target for the log line."""
        return refusal.of_request(self.method, self.target)


class HeaderRewriter:
    """Rewrites request header blocks: ``inject`` computed once per connection."""

    def __init__(
        self, inject: Iterable[tuple[str, str]], remove: Iterable[str], keep: Iterable[str]
    ) -> None:
        self._inject = tuple(
            (name.lower().encode("ascii"), value.strip().encode("latin-1"))
            for name, value in inject
        )
        kept = {name.lower().encode("ascii") for name in keep}
        owned = {name.lower().encode("ascii") for name in remove}
        self._remove = frozenset(owned | {name for name, _ in self._inject}) - kept
        self._trailer_remove = frozenset(owned | {name for name, _ in self._inject})

    def request(self, headers: Sequence[Header]) -> list[Header]:
        """A request's header block for the upstream: pseudo-headers first, as sent (a field
        the client sent never-indexed stays so), the credentials never-indexed, in one pass."""
        remove = self._remove
        out = [
            (_never_indexed(header) if header[0] in _SENSITIVE else header)
            for header in headers
            if header[0] not in remove
        ]
        out.extend(self._inject)
        return out

    def trailers(self, headers: Sequence[Header]) -> list[Header]:
        remove = self._trailer_remove
        return sensitive([header for header in headers if header[0] not in remove])


_SENSITIVE = frozenset((b"authorization", b"proxy-authorization", b"cookie"))


def _never_indexed(header: Header) -> Header:
    name, value = header
    if name == b"cookie" and len(value) >= 20:  # h2's rule: a long cookie is hard to guess
        return header
    return NeverIndexedHeaderTuple(name, value)


def sensitive(headers: list[Header]) -> list[Header]:
    """``headers`` with the credentials never-indexed (see the module); the same list when
    there are none, the usual case."""
    if not any(name in _SENSITIVE for name, _ in headers):
        return headers
    return [_never_indexed(header) if header[0] in _SENSITIVE else header for header in headers]


def refusal_headers(head: RequestHead, refusal: RequestRefusal) -> tuple[list[Header], bytes]:
    """The proxy's answer to a refused request: response headers and body (b"": the headers
    end the stream; for gRPC a trailers-only response, gRPC over HTTP/2's "Trailers-Only")."""
    grpc_status = GRPC_INVALID_ARGUMENT if refusal.status == 400 else GRPC_PERMISSION_DENIED
    return _answer(head, refusal.status, refusal_body(refusal), grpc_status)


def gateway_error_headers(head: RequestHead, status: int) -> tuple[list[Header], bytes]:
    """The proxy's answer to a request whose upstream could not be reached: ``status`` 502, or
    504 when the connect timed out, with the HTTP/1.1 answer's text; for gRPC UNAVAILABLE, the
    status gRPC gives both (its HTTP to gRPC status mapping), trailers-only."""
    return _answer(head, status, GATEWAY_ERRORS[status][1], GRPC_UNAVAILABLE)


def _answer(
    head: RequestHead, status: int, body: bytes, grpc_status: int
) -> tuple[list[Header], bytes]:
    if head.grpc:
        message = quote(body.decode().strip(), safe=" :/.,")
        return [
            (b":status", b"200"),
            (b"content-type", b"application/grpc"),
            (b"grpc-status", str(grpc_status).encode()),
            (b"grpc-message", message.encode("ascii")),
        ], b""
    headers = [(b":status", str(status).encode()), (b"content-type", b"text/plain")]
    if head.method == b"HEAD":  # no content (RFC 9110 section 9.3.2)
        return headers, b""
    return [*headers, (b"content-length", str(len(body)).encode())], body
