"""The typed events a handshake engine emits (h11 / aioquic style: plain frozen data)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mtlsproxy.engine.clienthello import ClientHello
from mtlsproxy.vocabulary.failures import Alert, Reason, Refusal, Step
from mtlsproxy.vocabulary.frozen import quick_init
from mtlsproxy.vocabulary.identity import PeerIdentity


@quick_init
@dataclass(frozen=True, slots=True)
class HandshakeTimings:
    """Seconds spent in each handshake phase (the handshake phases of docs/handshake.md).

    ``client_hello``: accept to complete ClientHello. ``server_flight``: ClientHello to our
    flight written. ``client_flight``: our flight to the client's answer (a network round trip
    plus the client's work). ``verify``: the engine's work on the client's answer: certificate
    chain, CertificateVerify, Finished and the identity policy. ``total``: accept to the end.
    A phase that was not reached is ``None``.
    """

    client_hello: float | None = None
    server_flight: float | None = None
    client_flight: float | None = None
    verify: float | None = None
    total: float | None = None

    @classmethod
    def from_marks(
        cls,
        accept: float,
        hello: float | None,
        flight: float | None,
        answer: float | None,
        end: float | None,
        verify: float | None,
    ) -> HandshakeTimings:
        """The phases from an engine's clock readings (None: not reached). Every handshake
        ends here, so the spans are written out rather than one call each."""
        return cls(
            None if hello is None else hello - accept,
            None if hello is None or flight is None else flight - hello,
            None if flight is None or answer is None else answer - flight,
            verify,
            None if end is None else end - accept,
        )

    def as_dict(self) -> dict[str, float]:
        return {
            name: value
            for name in ("client_hello", "server_flight", "client_flight", "verify", "total")
            if (value := getattr(self, name)) is not None
        }


@quick_init
@dataclass(frozen=True, slots=True)
class ClientHelloReceived:
    """Seed step 1 done: the ClientHello is parsed and a route chosen from it."""

    hello: ClientHello
    route: str


@quick_init
@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    """Seed steps 2-8 done and the client admitted; application data may flow.

    ``verified`` is true when a client certificate was presented, verified and allowed.
    ``would_refuse`` is set in audit mode (``client_auth.enforce: false``) for a client the
    policy would have refused: it is admitted, but its identity is forwarded as unverified.
    ``server_certificate`` is our leaf (DER) that authenticates this session: the one the native
    engine chose and sent (on resumption, where none is sent, the one this hello would get), or
    the one OpenSSL used, inferred (``openssl.server_certificate``); None without credentials.
    """

    route: str
    version: str
    cipher: str
    alpn: str | None
    client_certificate_presented: bool
    identity: PeerIdentity | None  # None: anonymous (mode none, or request without a cert)
    session_reused: bool
    timings: HandshakeTimings
    client_certificate: bytes | None = None  # the leaf, DER
    verified: bool = False
    would_refuse: Refusal | None = None
    server_certificate: bytes | None = None  # our leaf, DER

    @property
    def result(self) -> str:
        return "ok" if self.would_refuse is None else "would_refuse"


@quick_init
@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    """The handshake ended without admitting the client; nothing reaches the upstream.

    ``refused`` is true when the TLS handshake itself succeeded but the verified identity is
    not allowed (result ``refused``); otherwise the result is ``failed``.
    """

    step: Step
    reason: Reason
    detail: str
    alert: Alert | None
    route: str | None
    timings: HandshakeTimings
    client_certificate_presented: bool = False
    identity: PeerIdentity | None = None
    version: str | None = None

    @property
    def result(self) -> str:
        return "refused" if self.reason is Reason.IDENTITY_NOT_ALLOWED else "failed"


@quick_init
@dataclass(frozen=True, slots=True)
class ApplicationData:
    """Decrypted bytes from the client (seed step 9); a view of a buffer nobody reuses."""

    data: bytes | memoryview


@quick_init
@dataclass(frozen=True, slots=True)
class PeerClosed:
    """The client will send no more. ``clean``: it sent close_notify; otherwise the TCP stream
    ended without one (a "ragged" EOF, which may be a truncation attack, so it is reported)."""

    clean: bool


@quick_init
@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The established TLS session broke (bad record, alert from the client...)."""

    detail: str


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """One step of a handshake trace (debug level): a message ``<-`` from the client or
    ``->`` to it, with its key fields; never key material."""

    direction: str
    message: str
    fields: dict[str, object]


Tracer = Callable[[TraceRecord], None]


def note(trace: Tracer | None, direction: str, message: str, **fields: object) -> None:
    """Add one step to a handshake trace, if one is being taken."""
    if trace is not None:
        trace(TraceRecord(direction, message, fields))


Event = (
    ClientHelloReceived
    | HandshakeComplete
    | HandshakeFailed
    | ApplicationData
    | PeerClosed
    | ProtocolError
)
