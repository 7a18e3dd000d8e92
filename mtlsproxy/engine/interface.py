"""What the proxy needs from a handshake engine, and what an engine needs from a route.

The proxy drives an engine only through ``Engine``; a second engine (the native TLS 1.3 one)
plugs in by implementing it. Time comes from an injected clock, never from the engine itself,
so that phase timings and the handshake deadline are deterministic in tests (aioquic's ``now``).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from typing import Protocol

from mtlsproxy.engine.clienthello import ClientHello
from mtlsproxy.engine.events import Event
from mtlsproxy.vocabulary.decision import Decision, Evidence

Clock = Callable[[], float]


class TLSRoute(Protocol):
    """One route's TLS material and client-certificate policy, chosen from the ClientHello."""

    @property
    def name(self) -> str: ...

    @property
    def ssl_context(self) -> ssl.SSLContext: ...

    @property
    def requests_client_certificate(self) -> bool: ...

    def decide(self, chain_der: Sequence[bytes], evidence: Evidence) -> Decision:
        """The route's client-certificate policy on the chain the client presented (leaf
        first; empty: none), now: seed steps 5 and 6 after what ``evidence`` says the TLS
        stack already checked (``policy.decision.decide``)."""
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
