"""Session resumption of the native engine: accepting a PSK offer, issuing a ticket.

Theory of operation
-------------------
RFC 8446 sections 2.2, 4.2.11 and 4.6.1, on the sealed tickets of :mod:`.tickets`.

Issuing (:func:`issue_ticket`): after a handshake (full or resumed) whose client was admitted
without ``would_refuse``, one NewSessionTicket goes out, sealed with the route's ``TicketKey``
(so a ticket resumes on its own route only). It carries the client's whole chain and the time
the client was authenticated with it: now after a full handshake, the original time after a
resumption, so that resuming again never extends an authentication. It lives until the
earliest of:

* ``TICKET_LIFETIME`` from now;
* the authentication time plus the route's ``max_age`` (``tls.session_tickets.max_age``);
* the earliest notAfter of the client's chain and of the CA it chains to, and the earliest
  nextUpdate of the CRLs that cover it (``route.resumable_until``): a ticket never outlives
  what its full handshake was verified with.

No ticket when any of these is already past, or the state would not fit a ticket.

Accepting (:func:`accept_psk`): a ClientHello offering psk_dhe_ke and a ticket that opens, is
within its lifetime (by our clock and, with ``AGE_TOLERANCE``, by the client's), whose
authentication is within the route's ``max_age`` now and that fits the negotiated suite's hash
resumes: the first such identity is selected. Its binder must verify (``decrypt_error``
otherwise, compared in constant time); any other unusable ticket is skipped, which means a full
handshake. psk_ke (no ECDHE) is never accepted. After the client's Finished, the route decides
on the ticket's chain with ``Evidence.RESUMED`` (:mod:`.client_flight`).

Both directions take ``now`` (wall-clock seconds) from the engine, which reads the route's
``wall_clock``: nothing here reads a clock.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from typing import Final

from mtlsproxy.engine.clienthello import ClientHello
from mtlsproxy.engine.events import Tracer, note
from mtlsproxy.engine.interface import NativeRoute
from mtlsproxy.engine.native import messages as msgs
from mtlsproxy.engine.native.alerts import TLSAlert
from mtlsproxy.engine.native.key_schedule import binder_key, finished_verify_data, psk_early_secret
from mtlsproxy.engine.native.states import Established
from mtlsproxy.engine.native.suites import CIPHER_SUITES, CipherSuite
from mtlsproxy.engine.native.tickets import AGE_TOLERANCE, TICKET_LIFETIME, TicketState
from mtlsproxy.vocabulary.decision import Decision
from mtlsproxy.vocabulary.failures import Alert
from mtlsproxy.vocabulary.frozen import quick_init

PSK_DHE_KE: Final = 1  # section 4.2.9; psk_ke (0) is never accepted
TICKET_NONCE: Final = b"\x00"  # one ticket per connection: the nonce only has to be unique in it


@quick_init
@dataclass(frozen=True, slots=True, repr=False)
class Resumption:
    """The offered PSK we accept: its position in the client's list, the ticket state and the
    PSK's Early Secret (section 7.1: the binder was checked with it, the schedule starts
    from it). The repr hides the secret."""

    index: int
    state: TicketState
    early_secret: bytes

    def __repr__(self) -> str:
        return f"Resumption(index={self.index}, {self.state!r})"


def accept_psk(
    hello: ClientHello, message: bytes, suite: CipherSuite, route: NativeRoute, now: int
) -> Resumption | None:
    """The first offered ticket we can resume under ``suite``, or None (a full handshake).

    ``message`` is the ClientHello with its header, for the binder's partial transcript.
    Raises ``TLSAlert(decrypt_error)`` when the chosen ticket's binder does not verify."""
    tickets = route.tickets
    offered = hello.offered_psks
    if tickets is None or offered is None or PSK_DHE_KE not in hello.psk_key_exchange_modes:
        return None
    for index, (identity, obfuscated_age) in enumerate(offered.identities):
        state = tickets.open(identity)
        if state is None:
            continue
        ticket_suite = CIPHER_SUITES.get(state.suite)  # get_cipher_suite, one call fewer
        if ticket_suite is None or ticket_suite.hash_name != suite.hash_name:
            continue
        client_age_ms = (obfuscated_age - state.age_add) % (1 << 32)
        if (
            not 0 <= now - state.issued <= state.lifetime
            or client_age_ms > (state.lifetime + AGE_TOLERANCE) * 1000
            or now - state.authenticated_at > tickets.max_age
        ):
            continue
        truncated = message[: len(message) - offered.binders_size]
        early_secret = psk_early_secret(suite, state.psk)
        check_binder(suite, early_secret, truncated, offered.binders[index])
        return Resumption(index, state, early_secret)
    return None


def check_binder(suite: CipherSuite, early_secret: bytes, truncated: bytes, binder: bytes) -> None:
    """Section 4.2.11.2: HMAC(finished_key(binder_key), Transcript-Hash(truncated CH)), the
    binder key from the PSK's ``early_secret``."""
    digest = suite.hash_factory()  # suite.new_hash(), one call fewer
    digest.update(truncated)
    expected = finished_verify_data(suite, binder_key(suite, early_secret), digest.digest())
    if not hmac.compare_digest(expected, binder):
        raise TLSAlert(Alert.DECRYPT_ERROR, "the PSK binder does not verify")


def issue_ticket(
    route: NativeRoute,
    session: Established,
    decision: Decision,
    now: int,
    trace: Tracer | None = None,
) -> bytes | None:
    """One NewSessionTicket message (section 4.6.1) for an established session, living no
    longer than the module docstring says; None when the route issues none, the session may
    not be resumed any more or the state would not fit a ticket."""
    tickets = route.tickets
    if tickets is None:
        return None
    chain = session.client_chain_der
    resumed = session.resumed
    authenticated_at = resumed.authenticated_at if resumed is not None else now
    ends = [now + TICKET_LIFETIME, authenticated_at + tickets.max_age]
    if chain:
        if decision.identity is None:
            return None
        ends.append(int(decision.identity.not_after.timestamp()))
        until = route.resumable_until(chain)
        if until is not None:
            ends.append(int(until.timestamp()))
    lifetime = min(ends) - now
    if lifetime <= 0:
        return None
    negotiated = session.negotiated
    psk = negotiated.schedule.ticket_psk(TICKET_NONCE)
    age_add = int.from_bytes(os.urandom(4), "big")
    state = TicketState(
        psk, negotiated.suite.id, now, lifetime, age_add, negotiated.alpn, tickets.route, chain,
        authenticated_at,
    )  # fmt: skip
    ticket = tickets.seal(state)
    if ticket is None:
        return None
    if trace is not None:
        note(trace, "->", "NewSessionTicket", lifetime=lifetime)
    return msgs.new_session_ticket(lifetime, age_add, TICKET_NONCE, ticket)
