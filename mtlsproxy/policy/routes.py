"""Routes: a listener's policies by SNI, chosen from the parsed ClientHello.

Selection happens before any byte reaches OpenSSL, so each route's own ``SSLContext`` (own
session cache and ticket keys) runs the handshake: a session made under one route cannot be
resumed under another to skip its client-certificate policy.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from mtlsproxy.config.model import CertificateKeyPair, ForwardIdentity, Listener, Route
from mtlsproxy.engine.clienthello import ClientHello
from mtlsproxy.engine.errors import Alert, HandshakeError, Reason, Step
from mtlsproxy.engine.events import Refusal
from mtlsproxy.engine.interface import Admission
from mtlsproxy.engine.native.tickets import TicketKey
from mtlsproxy.policy.authorize import AllowList
from mtlsproxy.policy.contexts import build_ssl_context
from mtlsproxy.policy.identity import PeerIdentity
from mtlsproxy.policy.model import ClientAuthMode
from mtlsproxy.policy.verify import ClientVerifier


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


@dataclass(frozen=True, slots=True)
class ServerRoute:
    """A route ready to serve: config, TLS context and compiled policy (engine.TLSRoute)."""

    config: Route
    ssl_context: ssl.SSLContext
    allow_list: AllowList
    verifier: ClientVerifier | None
    credentials: tuple[ServerCredential, ...] = ()  # in config order
    # The native engine's session-ticket key: created with the route, so a reload rotates it
    # and a ticket never resumes on another route. None: the native engine issues no tickets.
    tickets: TicketKey | None = None

    @classmethod
    def build(cls, route: Route) -> ServerRoute:
        client_auth = route.client_auth
        verifier = (
            ClientVerifier.from_policy(client_auth)
            if client_auth.mode is not ClientAuthMode.NONE
            else None
        )
        return cls(
            config=route,
            ssl_context=build_ssl_context(
                route.tls,
                client_auth,
                [loaded.crl for loaded in verifier.crls] if verifier is not None else (),
                alpn=route_alpn(route),
            ),
            allow_list=AllowList(client_auth.allow),
            verifier=verifier,
            credentials=tuple(ServerCredential.load(pair) for pair in route.tls.certificates),
            tickets=TicketKey(route.name),
        )

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def alpn(self) -> tuple[str, ...]:
        return route_alpn(self.config)

    @property
    def requests_client_certificate(self) -> bool:
        return self.config.client_auth.mode is not ClientAuthMode.NONE

    def admit(
        self,
        leaf_der: bytes | None,
        session_reused: bool,
        identity: PeerIdentity | None = None,
    ) -> Admission:
        """Seed step 6, the part OpenSSL does not do: the identity allow-list, and for a
        resumed session the checks OpenSSL skips (revocation and validity, against the CRL and
        clock of now, not of the original handshake). In audit mode (``enforce: false``) a
        refusal is returned as ``would_refuse`` instead of raised. ``identity`` saves parsing
        the leaf again when the caller has it already."""
        try:
            if leaf_der is None:
                self._check_anonymous()
                return Admission(None, verified=False)
            if identity is None or session_reused:
                leaf = x509.load_der_x509_certificate(leaf_der)
                identity = identity or PeerIdentity.from_certificate(leaf)
                if session_reused:
                    self._recheck_resumed(leaf, identity)
            self._authorize(identity)
        except HandshakeError as error:
            if self.config.client_auth.enforce:
                raise
            refusal = Refusal(error.step, error.reason, error.detail)
            return Admission(identity, verified=False, would_refuse=refusal)
        return Admission(identity, verified=True)

    def _check_anonymous(self) -> None:
        if self.config.client_auth.mode is ClientAuthMode.REQUIRE:
            # OpenSSL enforces this in a full handshake (unless in audit mode); a resumed
            # session whose peer certificate went missing (CPython gh-160171) must not
            # become anonymous either.
            raise HandshakeError(
                Step.CLIENT_CERTIFICATE,
                Reason.CLIENT_CERT_MISSING,
                "the client sent no certificate and client_auth.mode is require",
                Alert.CERTIFICATE_REQUIRED,
            )

    def _authorize(self, identity: PeerIdentity) -> None:
        if self.allow_list and self.allow_list.match(identity) is None:
            raise HandshakeError(
                Step.AUTHORIZE,
                Reason.IDENTITY_NOT_ALLOWED,
                f"{identity.describe()} matches no client_auth.allow rule of route {self.name}",
                Alert.ACCESS_DENIED,
            )

    def _recheck_resumed(self, leaf: x509.Certificate, identity: PeerIdentity) -> None:
        now = datetime.now(UTC)
        if identity.not_after < now:
            raise HandshakeError(
                Step.CLIENT_VERIFY,
                Reason.CLIENT_CERT_EXPIRED,
                f"resumed session: {identity.describe()} expired at {identity.not_after}",
                Alert.CERTIFICATE_EXPIRED,
            )
        if self.verifier is not None and self.verifier.is_revoked(leaf):
            raise HandshakeError(
                Step.CLIENT_VERIFY,
                Reason.CLIENT_CERT_REVOKED,
                f"resumed session: {identity.describe()} is revoked",
                Alert.CERTIFICATE_REVOKED,
            )


def route_alpn(route: Route) -> tuple[str, ...]:
    """The ALPN protocols a route accepts, in preference order. An HTTP-aware route parses
    HTTP/1.1 only (RFC 7301: offer what we speak)."""
    if route.forward_identity.mode is ForwardIdentity.HTTP:
        return ("http/1.1",)
    return route.tls.alpn


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
            ServerRoute.build(listener.default_route),
            tuple(ServerRoute.build(route) for route in listener.routes),
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
