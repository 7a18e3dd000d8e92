"""Routes: a listener's policies by SNI, chosen from the parsed ClientHello.

Selection happens before any byte reaches OpenSSL, so each route's own ``SSLContext`` (own
session cache and ticket keys) runs the handshake, and the native engine's tickets are sealed
with a key derived for the route (``routing.tickets``): a session made under one route cannot
be resumed under another to skip its client-certificate policy.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from mtlsproxy.config.model import (
    CertificateKeyPair,
    ForwardIdentity,
    Listener,
    Route,
    UpstreamProtocol,
)
from mtlsproxy.engine.clienthello import ClientHello
from mtlsproxy.engine.native.tickets import TicketKey
from mtlsproxy.policy.decision import ClientPolicy, decide
from mtlsproxy.routing.contexts import build_ssl_context
from mtlsproxy.routing.tickets import ticket_key
from mtlsproxy.vocabulary.decision import Decision, Evidence
from mtlsproxy.vocabulary.identity import load_certificate


@dataclass(frozen=True, slots=True)
class ServerCredential:
    """One of our certificate chains (leaf first) with its private key, loaded once; the DER
    encoding is kept too, as the native engine sends it in every handshake."""

    chain: tuple[x509.Certificate, ...]
    key: PrivateKeyTypes
    chain_der: tuple[bytes, ...]

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @classmethod
    def load(cls, pair: CertificateKeyPair) -> ServerCredential:
        chain = tuple(x509.load_pem_x509_certificates(pair.certificate.read_bytes()))
        key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
        return cls(
            chain, key, tuple(cert.public_bytes(serialization.Encoding.DER) for cert in chain)
        )


RESUMABLE_CACHE_SIZE = 1024  # distinct client chains; a fleet presents few
_CHECKED_BY_OPENSSL = Evidence.CHECKED_BY_OPENSSL  # a module name: read on every handshake


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ServerRoute:
    """A route ready to serve: config, TLS context, compiled client policy, our credentials
    and ticket key (the engines' ``TLSRoute`` and ``NativeRoute``). ``wall_clock`` is the one
    place wall-clock time is read (certificates, ticket ages): the engines and the policy are
    handed ``now``."""

    config: Route
    ssl_context: ssl.SSLContext
    policy: ClientPolicy
    credentials: tuple[ServerCredential, ...] = ()  # in config order
    # The native engine's session-ticket key: this route's view of the keys (routing.tickets),
    # so a ticket never resumes on another route. None: the native engine issues no tickets.
    tickets: TicketKey | None = None
    wall_clock: Callable[[], datetime] = _utc_now
    # chain DER -> resumable_until's answer, for the chains this route issued tickets to
    _resumable: dict[tuple[bytes, ...], datetime | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    # Read on every connection: slots, where a property would be a Python call each time
    # (the upstream as the access line has it).
    name: str = field(init=False, repr=False, compare=False)
    upstream_address: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", self.config.name)
        object.__setattr__(self, "upstream_address", str(self.config.upstream))

    @classmethod
    def build(cls, route: Route, listener: str = "") -> ServerRoute:
        policy = ClientPolicy.compile(route.client_auth)
        verifier = policy.verifier
        return cls(
            config=route,
            ssl_context=build_ssl_context(
                route.tls,
                route.client_auth,
                [loaded.crl for loaded in verifier.crls] if verifier is not None else (),
                alpn=route_alpn(route),
            ),
            policy=policy,
            credentials=tuple(ServerCredential.load(pair) for pair in route.tls.certificates),
            tickets=ticket_key(route, listener),
        )

    @property
    def alpn(self) -> tuple[str, ...]:
        return route_alpn(self.config)

    @property
    def requests_client_certificate(self) -> bool:
        return self.policy.requests_certificate

    @property
    def client_ca_names(self) -> tuple[bytes, ...]:
        return self.policy.ca_names

    @property
    def record_padding(self) -> int:
        return self.config.tls.record_padding

    def decide(self, chain_der: Sequence[bytes], evidence: Evidence) -> Decision:
        """The policy's decision on this client, now (``policy.decision.decide``); the clock
        is not read for a chain OpenSSL checked, which nothing checks against it again."""
        if evidence is _CHECKED_BY_OPENSSL:
            return decide(self.policy, chain_der, None, evidence)
        return decide(self.policy, chain_der, self.wall_clock(), evidence)

    def resumable_until(self, chain_der: Sequence[bytes]) -> datetime | None:
        """Until when a session of the client that presented ``chain_der`` may be resumed:
        the earliest notAfter of the chain and of the client CA it names as issuer, and the
        earliest nextUpdate of the CRLs of the chain's issuers (CRL checks fail closed, so
        past it the chain would not verify). Read-only use of the compiled policy; cached per
        chain, for the life of the route (a reload of the CA or CRLs builds a new route)."""
        key = tuple(chain_der)
        if key in self._resumable:
            return self._resumable[key]
        try:
            chain = [load_certificate(der) for der in key]
        except ValueError:
            return datetime.min.replace(tzinfo=UTC)  # not resumable (never verified either)
        ends = [cert.not_valid_after_utc for cert in chain]
        verifier = self.policy.verifier
        if verifier is not None and chain:
            issuers = {cert.issuer for cert in chain}
            anchors = [ca for ca in verifier.ca_certificates if ca.subject in issuers]
            ends += [ca.not_valid_after_utc for ca in anchors]
            ends += [
                loaded.next_update
                for loaded in verifier.crls
                if loaded.next_update is not None and loaded.crl.issuer in issuers
            ]
        until = min(ends, default=None)
        if len(self._resumable) >= RESUMABLE_CACHE_SIZE:
            self._resumable.clear()
        self._resumable[key] = until
        return until


def route_alpn(route: Route) -> tuple[str, ...]:
    """The ALPN protocols a route accepts, in preference order. An HTTP-aware route offers
    what its ``upstream_protocol`` makes it speak (RFC 7301: offer what we speak): HTTP/1.1,
    HTTP/2, or both with ``h2`` first (RFC 9113 section 3.2)."""
    if route.forward_identity.mode is ForwardIdentity.HTTP:
        return HTTP_MODE_ALPN[route.forward_identity.upstream_protocol]
    return route.tls.alpn


HTTP_MODE_ALPN = {
    UpstreamProtocol.HTTP1: ("http/1.1",),
    UpstreamProtocol.H2C: ("h2",),
    UpstreamProtocol.AUTO: ("h2", "http/1.1"),
    UpstreamProtocol.H2_TO_HTTP1: ("h2", "http/1.1"),
}


class RouteTable:
    """SNI -> route: exact names first, then one-label ``*.`` wildcards, then the default."""

    def __init__(self, default: ServerRoute, routes: tuple[ServerRoute, ...] = ()) -> None:
        self.default = default
        self.routes = routes
        self._exact: dict[str, ServerRoute] = {}
        self._wildcard: dict[str, ServerRoute] = {}
        for route in routes:
            for pattern in route.config.sni:
                if pattern.startswith("*."):
                    self._wildcard[pattern[2:]] = route
                else:
                    self._exact[pattern] = route

    @classmethod
    def for_listener(cls, listener: Listener) -> RouteTable:
        return cls(
            ServerRoute.build(listener.default_route, listener.name),
            tuple(ServerRoute.build(route, listener.name) for route in listener.routes),
        )

    def all_routes(self) -> tuple[ServerRoute, ...]:
        return (self.default, *self.routes)

    def select(self, hello: ClientHello) -> ServerRoute:
        return self.select_name(hello.server_name)

    def select_name(self, name: str | None) -> ServerRoute:
        if name is None:
            return self.default
        route = self._exact.get(name)
        if route is not None:
            return route
        _, _, parent = name.partition(".")
        return self._wildcard.get(parent, self.default)
