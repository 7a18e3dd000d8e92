"""What the proxy needs from a handshake engine, and what an engine needs from a route.

The proxy drives an engine only through ``Engine``; a second engine (the native TLS 1.3 one)
plugs in by implementing it. Time comes from an injected clock, never from the engine itself,
so that phase timings and the handshake deadline are deterministic in tests (aioquic's ``now``).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from mtlsproxy.engine.clienthello import ClientHello
from mtlsproxy.engine.events import Event, Refusal
from mtlsproxy.policy.identity import PeerIdentity

Clock = Callable[[], float]


class TLSRoute(Protocol):
    """One route's TLS material and client-certificate policy, chosen from the ClientHello."""

    @property
    def name(self) -> str: ...

    @property
    def ssl_context(self) -> ssl.SSLContext: ...

    @property
    def requests_client_certificate(self) -> bool: ...

    def admit(
        self, leaf_der: bytes | None, session_reused: bool, identity: PeerIdentity | None = None
    ) -> Admission:
        """Seed step 6 after the TLS checks: the client's identity (None when anonymous), or
        ``HandshakeError`` with step ``authorize`` or ``client_verify``."""
        ...


@dataclass(frozen=True, slots=True)
class Admission:
    """A route's decision on a client whose TLS handshake succeeded. ``would_refuse`` is set
    only in audit mode, for a client that enforcing would have refused."""

    identity: PeerIdentity | None
    verified: bool
    would_refuse: Refusal | None = None


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
