"""The native engine's handshake states: types that carry their data (rustls style).

Theory of operation
-------------------
Each state is a small frozen object holding exactly what the next step needs, so that nothing
is "set once the client's Certificate came" on the engine and read elsewhere: the client's
leaf exists only in the states after its Certificate, the policy's decision only where it was
made, the resumed ticket only on the resumed path. Every state names the seed step
(``vocabulary.failures.Step``) the handshake is waiting for in it: a failure, an alert or a
timeout in that state is reported at that step, with no bookkeeping elsewhere.

The flow (RFC 8446 section 2, full handshake and resumption; never 0-RTT)::

    Negotiating --HelloRetryRequest--> RetryRequested --second ClientHello--+
        |                                                                   |
        +-- our flight (CertificateRequest) --> ExpectCertificate <---------+
        |                                          | empty: ExpectFinished
        |                                          v
        |                                   ExpectCertificateVerify
        |                                          v
        +-- our flight (no request, or resumed) -> ExpectFinished --> Established

Any state may go to ``Closed``. :data:`TRANSITIONS` is the gate the engine's ``_set_state``
checks every change against (CPython ``sslproto``'s ``_set_state``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import ClassVar, NamedTuple

from cryptography import x509

from mtlsproxy.engine.clienthello import ClientHello
from mtlsproxy.engine.native.key_schedule import KeySchedule, Transcript
from mtlsproxy.engine.native.suites import CipherSuite
from mtlsproxy.engine.native.tickets import TicketState
from mtlsproxy.engine.records import HandshakeType
from mtlsproxy.vocabulary.decision import Decision
from mtlsproxy.vocabulary.failures import Step
from mtlsproxy.vocabulary.frozen import quick_init


class Negotiated(NamedTuple):
    """What our flight settled: the suite, the key schedule (transcript inside), the ALPN
    protocol and our leaf (DER) that authenticates the session. The repr hides the keys.

    Immutable like the states; a named tuple, so that each handshake makes it in one C call
    (``new_negotiated``) rather than through a frozen dataclass's ``__init__``."""

    suite: CipherSuite
    schedule: KeySchedule
    alpn: str | None
    server_certificate: bytes | None

    def __repr__(self) -> str:
        return f"Negotiated({self.suite.name}, alpn={self.alpn!r})"


new_negotiated: Callable[[tuple[CipherSuite, KeySchedule, str | None, bytes | None]], Negotiated]
new_negotiated = partial(tuple.__new__, Negotiated)


class State:
    """A handshake state. ``step``: the seed step we wait for in it (None: not handshaking)."""

    __slots__ = ()
    step: ClassVar[Step | None] = None
    name: ClassVar[str] = "state"

    @property
    def leaf_der(self) -> bytes | None:
        """The client's leaf certificate, once known in this state (from its Certificate or,
        resuming, from the ticket)."""
        return None


@dataclass(frozen=True, slots=True)
class Negotiating(State):
    """The ClientHello is whole; we are choosing parameters and writing our answer."""

    step: ClassVar[Step] = Step.SERVER_HELLO
    name: ClassVar[str] = "negotiating"


@quick_init
@dataclass(frozen=True, slots=True, repr=False)
class RetryRequested(State):
    """HelloRetryRequest sent (section 4.1.4): the second ClientHello must carry exactly a
    share of ``group``, keep ``suite`` and repeat what ``first_digest`` covers
    (``clienthello.retry_digest``); the transcript holds message_hash(CH1) and HRR."""

    step: ClassVar[Step] = Step.SERVER_HELLO
    name: ClassVar[str] = "retry_requested"
    first: ClientHello
    suite: CipherSuite
    group: int
    transcript: Transcript
    first_digest: bytes


class ClientFlightState(State):
    """Our flight is out; each of these expects one message of the client's flight."""

    __slots__ = ()
    expects: ClassVar[HandshakeType]
    negotiated: Negotiated


@quick_init
@dataclass(frozen=True, slots=True, repr=False)
class ExpectCertificate(ClientFlightState):
    """We sent a CertificateRequest: the client's Certificate comes first (section 4.4.2)."""

    step: ClassVar[Step] = Step.CLIENT_CERTIFICATE
    name: ClassVar[str] = "expect_certificate"
    expects: ClassVar[HandshakeType] = HandshakeType.CERTIFICATE
    negotiated: Negotiated


@quick_init
@dataclass(frozen=True, slots=True, repr=False)
class ExpectCertificateVerify(ClientFlightState):
    """The client presented ``leaf``; its CertificateVerify must prove it holds the key
    (section 4.4.3). ``decision`` is the policy's on its chain, acted on after the proof."""

    step: ClassVar[Step] = Step.CLIENT_VERIFY
    name: ClassVar[str] = "expect_certificate_verify"
    expects: ClassVar[HandshakeType] = HandshakeType.CERTIFICATE_VERIFY
    negotiated: Negotiated
    leaf: x509.Certificate
    client_leaf_der: bytes
    decision: Decision
    client_chain_der: tuple[bytes, ...] = ()  # leaf first, as sent: what a ticket keeps

    @property
    def leaf_der(self) -> bytes | None:
        return self.client_leaf_der


@quick_init
@dataclass(frozen=True, slots=True, repr=False)
class ExpectFinished(ClientFlightState):
    """The client's Finished ends its flight (section 4.4.4). ``decision``: the policy's,
    when the client answered a CertificateRequest; ``resumed``: the ticket of a resumed
    session, whose client is checked again after the Finished."""

    step: ClassVar[Step] = Step.CLIENT_FINISHED
    name: ClassVar[str] = "expect_finished"
    expects: ClassVar[HandshakeType] = HandshakeType.FINISHED
    negotiated: Negotiated
    client_leaf_der: bytes | None = None
    decision: Decision | None = None
    resumed: TicketState | None = None
    client_chain_der: tuple[bytes, ...] = ()

    @property
    def leaf_der(self) -> bytes | None:
        return self.client_leaf_der


@quick_init
@dataclass(frozen=True, slots=True, repr=False)
class Established(State):
    """The client is admitted; application data and KeyUpdates flow (section 4.6.3)."""

    name: ClassVar[str] = "established"
    negotiated: Negotiated
    client_leaf_der: bytes | None
    client_chain_der: tuple[bytes, ...] = ()
    resumed: TicketState | None = None  # the ticket a resumed session came from

    @property
    def leaf_der(self) -> bytes | None:
        return self.client_leaf_der


@dataclass(frozen=True, slots=True)
class Closed(State):
    """Failed, or the session ended: nothing more is read."""

    name: ClassVar[str] = "closed"


# The states without data, one object each.
NEGOTIATING = Negotiating()
CLOSED = Closed()

# Which state may follow which; Closed may follow any.
TRANSITIONS: dict[type[State], tuple[type[State], ...]] = {
    Negotiating: (RetryRequested, ExpectCertificate, ExpectFinished),
    RetryRequested: (ExpectCertificate, ExpectFinished),
    ExpectCertificate: (ExpectCertificateVerify, ExpectFinished),
    ExpectCertificateVerify: (ExpectFinished,),
    ExpectFinished: (Established,),
    Established: (),
    Closed: (),
}
