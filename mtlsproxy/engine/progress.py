"""What both engines report about a handshake in progress, written once.

Theory of operation
-------------------
An engine reports a handshake through two things: where it got to (the seed step it was
waiting for when it stopped) and how long each phase took. Both engines, and the selecting
engine that reads the ClientHello before either exists, share one :class:`PhaseMarks` per
connection: the accept time is read when the connection's first engine is built, so an
engine chosen later (after the ClientHello) still measures from the accept.

The words are shared too: a client that closes, times out or sends an alert is described by
the same sentences whichever engine saw it, and an alert the client sends is classified in
one place (:func:`peer_alert_error`), so that ``client_rejected_server_cert`` means the same
thing on every dashboard.
"""

from __future__ import annotations

from typing import Final

from mtlsproxy.engine.events import HandshakeFailed, HandshakeTimings
from mtlsproxy.engine.interface import Clock
from mtlsproxy.vocabulary.failures import Alert, HandshakeError, Reason, Step
from mtlsproxy.vocabulary.identity import PeerIdentity

# Alerts a client sends when it does not accept our certificate (seed step 3). Only after our
# flight (which carries the certificate) do they mean that.
CLIENT_REJECTS_SERVER_CERT: Final = frozenset(
    {
        Alert.BAD_CERTIFICATE,
        Alert.UNSUPPORTED_CERTIFICATE,
        Alert.CERTIFICATE_REVOKED,
        Alert.CERTIFICATE_EXPIRED,
        Alert.CERTIFICATE_UNKNOWN,
        Alert.UNKNOWN_CA,
    }
)


class PhaseMarks:
    """The clock readings a handshake's phases are measured from (``HandshakeTimings``).

    ``accept`` is read at construction; ``hello``, ``flight``, ``answer`` and ``end`` when the
    engine reaches them (None: not reached). ``verify`` is the engine's own work on the
    client's answer: summed over the calls that carried it (:meth:`begin_work` /
    :meth:`end_work`), or the one call that completed the handshake (``mark_end(work_since)``,
    all OpenSSL lets us see).
    """

    __slots__ = ("_busy_since", "accept", "answer", "clock", "end", "flight", "hello", "verify")

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.accept = clock()
        self.hello: float | None = None
        self.flight: float | None = None
        self.answer: float | None = None
        self.end: float | None = None
        self.verify: float | None = None
        self._busy_since: float | None = None

    def mark_hello(self) -> None:
        self.hello = self.clock()

    def mark_flight(self) -> None:
        self.flight = self.clock()

    def mark_answer(self) -> None:
        """Bytes of the client's answer to our flight arrived (the first time counts)."""
        if self.flight is not None and self.answer is None:
            self.answer = self.clock()

    def begin_work(self) -> None:
        """A call carrying the client's answer starts; its work counts until :meth:`end_work`
        or :meth:`mark_end`."""
        now = self.clock()
        if self.answer is None:
            self.answer = now
        if self.verify is None:
            self.verify = 0.0
        self._busy_since = now

    def end_work(self) -> None:
        """The call ends with the handshake still waiting for the client."""
        if self._busy_since is not None:
            self.verify = (self.verify or 0.0) + self.clock() - self._busy_since
            self._busy_since = None

    def mark_end(self, work_since: float | None = None) -> None:
        """The handshake ended (complete or failed). ``work_since``: the engine's work on the
        client's answer is the time since then; otherwise the current call's work is added."""
        self.end = end = self.clock()
        if work_since is not None:
            self.verify = end - work_since
        elif self._busy_since is not None:
            self.verify = (self.verify or 0.0) + end - self._busy_since
            self._busy_since = None

    def waiting_step(self, after_flight: Step) -> Step:
        """The seed step a handshake that stopped now was waiting for, as far as the marks
        tell: the ClientHello, our answer to it, then ``after_flight`` (the engine knows)."""
        if self.hello is None:
            return Step.CLIENT_HELLO
        if self.flight is None:
            return Step.SERVER_HELLO
        return after_flight

    def timings(self) -> HandshakeTimings:
        return HandshakeTimings.from_marks(
            self.accept, self.hello, self.flight, self.answer, self.end, self.verify
        )


def peer_closed(step: Step) -> HandshakeError:
    return HandshakeError(step, Reason.PEER_CLOSED, "the client closed during the handshake")


def timed_out(step: Step) -> HandshakeError:
    return HandshakeError(step, Reason.TIMEOUT, "the client did not finish the handshake in time")


def internal_error(step: Step, exc: Exception) -> HandshakeError:
    """A bug of ours, named by its type only (its message may carry anything)."""
    return HandshakeError(
        step, Reason.INTERNAL_ERROR, f"internal error ({type(exc).__name__})", Alert.INTERNAL_ERROR
    )


def peer_alert_error(
    alert: Alert | None, name: str, waiting: Step, *, flight_sent: bool
) -> HandshakeError:
    """The handshake error for an alert the client sent (``name``: its lowercase name, or
    ``#n`` for a description we do not know). A certificate complaint after our flight is
    seed step 3 (``client_rejected_server_cert``); close_notify is the client closing; anything
    else fails the step we were waiting for."""
    if alert is Alert.CLOSE_NOTIFY:
        return peer_closed(waiting)
    if flight_sent and alert in CLIENT_REJECTS_SERVER_CERT:
        return HandshakeError(
            Step.SERVER_CERTIFICATE,
            Reason.CLIENT_REJECTED_SERVER_CERT,
            f"the client rejected our certificate with alert {name}",
        )
    reason = Reason.UNSUPPORTED_VERSION if alert is Alert.PROTOCOL_VERSION else Reason.CLIENT_ALERT
    return HandshakeError(waiting, reason, f"the client sent alert {name}")


def handshake_failed(
    error: HandshakeError,
    marks: PhaseMarks,
    route: str | None,
    *,
    alert: Alert | None,
    client_certificate_presented: bool = False,
    identity: PeerIdentity | None = None,
    version: str | None = None,
) -> HandshakeFailed:
    """The ``HandshakeFailed`` event for ``error`` (``alert``: the one actually sent)."""
    return HandshakeFailed(
        step=error.step,
        reason=error.reason,
        detail=error.detail,
        alert=alert,
        route=route,
        timings=marks.timings(),
        client_certificate_presented=client_certificate_presented,
        identity=identity,
        version=version,
    )
