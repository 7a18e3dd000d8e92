"""One connection's forwarding plan: what the upstream is told about the client, and how.

``plan`` is called once, when the handshake completes, with the route's ``forward_identity``
settings, ``HandshakeComplete`` and the socket addresses. It builds the one ``ForwardedTLS``
record of the connection, so the PROXY v2 header and the HTTP headers can never disagree, and
returns a ``Forwarding`` the proxy consults on its data path: a preamble to write first (PROXY
v2), or the HTTP request rewriter wired to the response tracker and, when the route has
``http_authorization``, to its compiled path rules with this connection's client (requests
they refuse are answered by the proxy: ``http.local``); or, when the client negotiated
HTTP/2 (``upstream_protocol``), the ``http2.Http2Bridge`` with the same identity headers and
rules, its upstream preface as the preamble. ``none`` costs nothing on the data path: the
shared ``PASSTHROUGH``, no rewriter, no preamble.

Sans-I/O like the rest of ``forwarding``: bytes in, bytes out; the proxy does the writing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from cryptography import x509

from mtlsproxy.config.model import ForwardIdentity, IdentityForwarding, Limits, UpstreamProtocol
from mtlsproxy.engine.clienthello import ClientHello
from mtlsproxy.engine.events import HandshakeComplete
from mtlsproxy.forwarding.http.headers import (
    SANITIZED_HEADERS,
    forwarded_headers,
    identity_headers,
)
from mtlsproxy.forwarding.http.local import LocalAnswer, RequestRefusal
from mtlsproxy.forwarding.http.request import Authorize, RequestRewriter
from mtlsproxy.forwarding.http.response import ResponseTracker, UpgradeDecision
from mtlsproxy.forwarding.http2.bridge import Http2Bridge
from mtlsproxy.forwarding.http2.gateway import Http1Gateway
from mtlsproxy.forwarding.http2.requests import HeaderRewriter
from mtlsproxy.forwarding.proxy_protocol import encode_v2
from mtlsproxy.forwarding.tls_info import Address, ForwardedTLS
from mtlsproxy.policy.paths import PathAuthorization, compiled
from mtlsproxy.routing.routes import ServerRoute
from mtlsproxy.vocabulary.identity import PeerIdentity


class Forwarding:
    """One connection's forwarding: the bytes that open the upstream connection (PROXY v2)
    and, in HTTP mode, the request rewriter with the response tracker that tells it whether
    an Upgrade was accepted (until then the bytes after the Upgrade request are held).

    Requests refused by ``authorize`` (the route's ``http_authorization``) are answered by the
    proxy: after each ``to_upstream`` or ``from_upstream`` it counts ``take_refusals()`` and
    sends ``due_answer()`` while there is one, forwarding what ``answered()`` returns after
    each; while ``answer_pending`` it stops reading the client.

    ``http2``: the client negotiated HTTP/2; its bytes go through this bridge instead of the
    HTTP/1.1 rewriter, both ways (``forwarding.http2``); ``gateway``: its upstream side is
    served by this ``Http1Gateway`` (HTTP/1.1 upstream connections, one per stream) instead of
    an h2c connection."""

    def __init__(self, preamble: bytes = b"", rewriter_inject: list[tuple[str, str]] | None = None,
                 remove: frozenset[str] = SANITIZED_HEADERS,
                 keep: frozenset[str] = frozenset(),
                 authorize: Authorize | None = None,
                 http2: Http2Bridge | None = None,
                 gateway: Http1Gateway | None = None) -> None:  # fmt: skip
        self.preamble = preamble
        self.passthrough = rewriter_inject is None and http2 is None
        self.http2 = http2
        self.gateway = gateway
        self._decided: list[UpgradeDecision] = []  # decisions made before any response
        self._tracker = ResponseTracker()
        self._rewriter = RequestRewriter(
            rewriter_inject or [], remove=remove, keep=keep, on_request=self._on_request,
            authorize=authorize,
        )  # fmt: skip

    @property
    def speaks_http(self) -> bool:
        """The client's stream is parsed as HTTP/1.1: errors can be answered in HTTP/1.1."""
        return not self.passthrough and self.http2 is None

    def _on_request(self, method: bytes, upgrade: bool) -> None:
        decision = self._tracker.request_sent(method, upgrade)
        if decision is not None:  # the tracker gave up on the upstream's responses: refused
            self._decided.append(decision)

    @property
    def holding(self) -> bool:
        """Bytes after an Upgrade request wait for the upstream's answer: stop reading."""
        return self._rewriter.upgrade_pending

    def to_upstream(self, data: bytes | memoryview) -> bytes:
        """Client bytes -> bytes for the upstream. Raises ``HTTPRefused``."""
        return self._settle(self._rewriter.feed(bytes(data)))

    def _settle(self, out: bytes) -> bytes:
        """Add what the Upgrade decisions made while ``out`` was produced release."""
        while self._decided:
            out += self._rewriter.resolve_upgrade(self._decided.pop().accepted)
        return out

    @property
    def answer_pending(self) -> bool:
        """A refused request waits for its answer: read nothing more from the client."""
        return self._rewriter.answer is not None

    def due_answer(self) -> LocalAnswer | None:
        """The proxy's answer to a refused request, once the upstream has answered every
        request before it in full. While the tracker cannot follow the responses (content
        delimited by the close; a response it gave up on) it is never due: it waits for the
        upstream to close (``answer``)."""
        answer = self._rewriter.answer
        return answer if answer is not None and self._tracker.idle else None

    @property
    def answer(self) -> LocalAnswer | None:
        """The first answer not yet sent, due or not: when the upstream closed, it is due."""
        return self._rewriter.answer

    def answered(self) -> bytes:
        """The answer was sent: what the client sent after that request, for the upstream.
        Raises ``HTTPRefused``."""
        return self._settle(self._rewriter.answered())

    def take_refusals(self) -> list[RequestRefusal]:
        """Requests refused by ``http_authorization`` since the last call (to count, log)."""
        return self._rewriter.take_refusals()

    def from_upstream(self, data: bytes) -> bytes:
        """Observe upstream bytes (forwarded unchanged by the caller); returns held client
        bytes released by an Upgrade decision. Raises ``HTTPRefused``."""
        if self._tracker.upgraded:
            return b""
        decision = self._tracker.feed(data)
        if decision is None:
            return b""
        out = self._rewriter.resolve_upgrade(decision.accepted)
        while self._decided:
            out += self._rewriter.resolve_upgrade(self._decided.pop().accepted)
        return out


PASSTHROUGH = Forwarding()


def plan(
    settings: IdentityForwarding,
    route: ServerRoute,
    event: HandshakeComplete,
    hello: ClientHello | None,
    client_address: Address,
    server_address: Address,
    limits: Limits | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Forwarding:
    """``limits`` bounds an HTTP/2 bridge's windows (``buffer_size``); ``clock`` times its
    reset rate (``http2.max_resets``)."""
    if settings.mode is ForwardIdentity.NONE:
        return PASSTHROUGH
    info = ForwardedTLS(
        client_address=client_address,
        server_address=server_address,
        sni=hello.server_name if hello else None,
        alpn=event.alpn,
        version=event.version,
        cipher=event.cipher,
        identity=event.identity,
        certificate_der=event.client_certificate,
        verified=event.verified,
        session_reused=event.session_reused,
        server_certificate_der=event.server_certificate,
    )
    if settings.mode is ForwardIdentity.PROXY_PROTOCOL_V2:
        header = encode_v2(
            info, include_certificate=settings.include_certificate, crc32c=settings.crc32c
        )
        return Forwarding(preamble=header)
    inject = identity_headers(
        info, xfcc_fields=settings.xfcc_fields, by=_by(route), headers=settings.headers
    )
    inject += forwarded_headers(client_address, settings.forwarded)
    remove = SANITIZED_HEADERS | {name.lower() for name, _ in settings.headers}
    # A verified gateway's own X-Forwarded-For / Forwarded lists go on, ours appended; any
    # other client's are removed: what it says of itself proves nothing.
    trusted = settings.trust_forwarded and event.verified
    keep = frozenset({"x-forwarded-for", "forwarded"} if trusted else ())
    authorize = _authorize(route.config.http_authorization, event.identity, event.verified)
    if speaks_http2(settings, event.alpn):
        buffer_size = (limits or Limits()).buffer_size
        rewriter = HeaderRewriter(inject, remove, keep)
        bridge = Http2Bridge(settings.http2, buffer_size, rewriter, authorize, clock)
        gateway = None
        if settings.upstream_protocol is UpstreamProtocol.H2_TO_HTTP1:
            gateway = Http1Gateway(settings.http2, buffer_size)
        return Forwarding(preamble=bridge.preamble, http2=bridge, gateway=gateway)
    return Forwarding(rewriter_inject=inject, remove=remove, keep=keep, authorize=authorize)


def speaks_http2(settings: IdentityForwarding, alpn: str | None) -> bool:
    """HTTP mode serves the client HTTP/2 when it negotiated ``h2`` (``auto``), or always
    (``h2c``: ALPN offers ``h2`` alone; a client without ALPN is expected to know)."""
    if settings.upstream_protocol is UpstreamProtocol.H2C:
        return True
    both = (UpstreamProtocol.AUTO, UpstreamProtocol.H2_TO_HTTP1)
    return settings.upstream_protocol in both and alpn == "h2"


def _authorize(
    authorization: PathAuthorization, identity: PeerIdentity | None, verified: bool
) -> Authorize | None:
    """The route's path rules bound to this connection's client; None when there are none.
    In audit mode what they would refuse comes back not ``enforced``: forwarded, reported."""
    if not authorization.active:
        return None
    policy = compiled(authorization)

    def authorize(method: bytes, target: bytes) -> RequestRefusal | None:
        decision = policy.decide(
            method.decode("latin-1"), target.decode("latin-1"), identity, verified
        )
        if decision.admitted:
            return None
        assert decision.reason is not None
        return RequestRefusal(
            decision.status, decision.reason, decision.rule, decision.detail,
            enforced=decision.enforced,
        )  # fmt: skip

    return authorize


def _by(route: ServerRoute) -> str | None:
    """Our own URI SAN (SPIFFE ID) for XFCC's ``By``, as Envoy sends it."""
    for cert in (credential.leaf for credential in route.credentials):
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            continue
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        if uris:
            return uris[0]
    return None
