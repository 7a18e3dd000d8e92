"""What the proxy needs from a handshake engine, and what an engine needs from a route.

The proxy drives an engine only through ``Engine``; a second engine (the native TLS 1.3 one)
plugs in by implementing it. Time comes from injected clocks, never from the engine itself, so
that phase timings, the handshake deadline and ticket ages are deterministic in tests
(aioquic's ``now``): ``Clock`` (monotonic seconds) times the phases, and a route's
``wall_clock`` dates tickets and certificates.

The engine states what it needs from a route as protocols (``TLSRoute``, ``NativeRoute``,
``Credential``); ``routing.routes.ServerRoute`` satisfies them, and the engine never imports
the routing layer.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from mtlsproxy.engine.clienthello import ClientHello
from mtlsproxy.engine.events import Event
from mtlsproxy.engine.native.tickets import TicketKey
from mtlsproxy.vocabulary.decision import Decision, Evidence

Clock = Callable[[], float]


class Credential(Protocol):
    """One of our certificate chains with its private key (``ServerCredential``)."""

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """Leaf first."""
        ...

    @property
    def chain_der(self) -> tuple[bytes, ...]:
        """The chain's DER encodings, leaf first (what a Certificate message carries)."""
        ...

    @property
    def key(self) -> PrivateKeyTypes: ...

    @property
    def leaf(self) -> x509.Certificate: ...


class TLSRoute(Protocol):
    """One route's TLS material and client-certificate policy, chosen from the ClientHello."""

    @property
    def name(self) -> str: ...

    @property
    def ssl_context(self) -> ssl.SSLContext: ...

    @property
    def credentials(self) -> Sequence[Credential]:
        """Our certificates, in config order (empty: only the SSLContext has them)."""
        ...

    @property
    def requests_client_certificate(self) -> bool: ...

    def decide(self, chain_der: Sequence[bytes], evidence: Evidence) -> Decision:
        """The route's client-certificate policy on the chain the client presented (leaf
        first; empty: none), now: seed steps 5 and 6 after what ``evidence`` says the TLS
        stack already checked (``policy.decision.decide``)."""
        ...


class NativeRoute(TLSRoute, Protocol):
    """What the native TLS 1.3 engine needs beyond ``TLSRoute``: the material it signs with,
    what it asks of clients and the ticket key it seals sessions with."""

    @property
    def client_ca_names(self) -> Sequence[bytes]:
        """DER DistinguishedNames for CertificateRequest's certificate_authorities."""
        ...

    @property
    def tickets(self) -> TicketKey | None:
        """The route's session-ticket key; None: no tickets are issued or accepted."""
        ...

    @property
    def alpn(self) -> Sequence[str]:
        """ALPN protocols in server preference order."""
        ...

    @property
    def record_padding(self) -> int:
        """Pad our protected records to a multiple of this many bytes (0: no padding)."""
        ...

    @property
    def wall_clock(self) -> Callable[[], datetime]:
        """Now, as an aware datetime: the one clock tickets are dated and aged with."""
        ...

    def resumable_until(self, chain_der: Sequence[bytes]) -> datetime | None:
        """Until when a session of the client that presented ``chain_der`` may be resumed:
        the earliest end of what its verification relied on (notAfter, CRL nextUpdate);
        None: no such bound."""
        ...


RouteSelector = Callable[[ClientHello], TLSRoute]


class Engine(Protocol):
    """Bytes in, bytes out, typed events. No sockets, no event loop, no clock reads."""

    def receive(self, data: bytes) -> list[Event]:
        """Feed bytes from the client; returns what happened because of them."""
        ...

    def receive_eof(self) -> list[Event]:
        """The client's TCP stream ended."""
        ...

    def handle_timeout(self) -> list[Event]:
        """The handshake deadline passed; fails the handshake if it is still running."""
        ...

    def send(self, data: bytes) -> None:
        """Encrypt application bytes for the client (only after ``HandshakeComplete``)."""
        ...

    def close(self) -> None:
        """Send close_notify: we will write no more."""
        ...

    def data_to_send(self) -> bytes:
        """Bytes to write to the client now (records, alerts); empty when there are none."""
        ...

    @property
    def handshake_complete(self) -> bool: ...

    @property
    def route(self) -> TLSRoute | None:
        """The route chosen from the ClientHello (None before it was parsed)."""
        ...

    @property
    def name(self) -> str:
        """Which engine runs the connection (a metric label and log field)."""
        ...
