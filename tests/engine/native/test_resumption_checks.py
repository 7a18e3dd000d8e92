"""A resumed session is checked as much as a full handshake: the ticket keeps the client's whole
chain and the time it was authenticated, the route decides on that chain again
(``Evidence.RESUMED``), and a ticket lives no longer than what its handshake was verified with:
the chain's notAfter, the CRLs' nextUpdate, the authentication time plus ``max_age``, and
``TICKET_LIFETIME``. In memory, with a real Python ``ssl`` client."""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mtlsproxy import pki
from mtlsproxy.engine.native.tickets import TICKET_LIFETIME, TicketKey, TicketState
from mtlsproxy.pki import PkiFiles
from mtlsproxy.policy.model import ClientAuthMode
from mtlsproxy.routing.routes import ServerRoute
from mtlsproxy.vocabulary.decision import Decision, Evidence
from mtlsproxy.vocabulary.failures import Alert, Reason
from tests.engine.native.harness import Outcome, build_route, client_context
from tests.engine.native.test_resumption import connect, session_of

REQUIRE, NONE = ClientAuthMode.REQUIRE, ClientAuthMode.NONE


class Recording(TicketKey):
    """A route's ticket key that remembers every state it sealed."""

    def __init__(self, key: TicketKey, max_age: int | None = None) -> None:
        super().__init__(key.route, key._keyring, max_age=max_age or key.max_age)
        self.sealed: list[TicketState] = []

    def seal(self, state: TicketState) -> bytes | None:
        self.sealed.append(state)
        return super().seal(state)


def recording(route: ServerRoute, max_age: int | None = None) -> tuple[ServerRoute, Recording]:
    assert route.tickets is not None
    tickets = Recording(route.tickets, max_age)
    return dataclasses.replace(route, tickets=tickets), tickets


def at(route: ServerRoute, moment: datetime) -> ServerRoute:
    """The route with its wall clock (the engine's only one) fixed at ``moment``."""
    return dataclasses.replace(route, wall_clock=lambda: moment)


def seconds(moment: datetime) -> int:
    return int(moment.timestamp())


class Minted:
    """Client certificates and CRLs the standard PKI does not have, from its root CA."""

    def __init__(self, files: PkiFiles, directory: Path) -> None:
        self.files, self.directory = files, directory
        self.ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        self.ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), None)

    def client(self, not_after: datetime) -> tuple[ssl.SSLContext, x509.Certificate]:
        key = pki.new_key()
        cert = pki.issue_leaf(
            key, self.ca, self.ca_key,  # type: ignore[arg-type]
            common_name="frontend", uris=[pki.FRONTEND_SPIFFE_ID], not_after=not_after,
        )  # fmt: skip
        stem = self.directory / f"client-{cert.serial_number:x}"
        pki.write_pem(stem.with_suffix(".crt"), cert)
        pki.write_pem(stem.with_suffix(".key"), key)
        context = client_context(self.files, cert=None)
        context.load_cert_chain(stem.with_suffix(".crt"), stem.with_suffix(".key"))
        return context, cert

    def crl_route(
        self, route: ServerRoute, revoked: Sequence[int] = (), next_update: datetime | None = None
    ) -> ServerRoute:
        """``route`` with a CRL bundle of our own: the root's (``revoked``, ``next_update``)
        and the intermediate's from the PKI."""
        update = next_update or datetime.now(UTC) + timedelta(days=7)
        crl = pki.make_crl(self.ca, self.ca_key, revoked, next_update=update)  # type: ignore[arg-type]
        inter = x509.load_pem_x509_crl(self.files.intermediate_crl.read_bytes())
        path = self.directory / f"crls-{len(list(self.directory.iterdir()))}.pem"
        pki.write_pem(path, crl, inter)
        auth = dataclasses.replace(route.config.client_auth, crl=path)
        return ServerRoute.build(dataclasses.replace(route.config, client_auth=auth))


@pytest.fixture
def minted(pki: PkiFiles, tmp_path: Path) -> Minted:
    return Minted(pki, tmp_path)


def resumed(out: Outcome) -> bool:
    return out.complete is not None and out.complete.session_reused


# --- the lifetime bounds ------------------------------------------------------------------


def test_without_a_certificate_a_ticket_lives_ticket_lifetime(pki: PkiFiles) -> None:
    route, tickets = recording(build_route(pki, NONE))
    session_of(connect(route, client_context(pki, cert=None)))
    (state,) = tickets.sealed
    assert state.lifetime == TICKET_LIFETIME and state.chain == ()
    assert state.authenticated_at == state.issued


def test_a_ticket_keeps_the_whole_chain(pki: PkiFiles) -> None:
    route, tickets = recording(build_route(pki, REQUIRE, allow=False))
    session = session_of(connect(route, client_context(pki, cert="client-intermediate")))
    chain = [c.public_bytes(serialization.Encoding.DER) for c in x509.load_pem_x509_certificates(
        pki.client_intermediate_cert.read_bytes())]  # fmt: skip
    (state,) = tickets.sealed
    assert state.chain == tuple(chain) and len(chain) == 2
    assert 0 < session.ticket_lifetime_hint == state.lifetime == TICKET_LIFETIME


def test_max_age_bounds_the_ticket_and_resuming_never_extends_it(pki: PkiFiles) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    route, tickets = recording(build_route(pki, REQUIRE), max_age=600)
    ctx = client_context(pki)
    session = session_of(connect(at(route, now), ctx))
    assert session.ticket_lifetime_hint == 600
    # 500 s later: resumed, and the new ticket ends where the first authentication does
    out = connect(at(route, now + timedelta(seconds=500)), ctx, session)
    assert resumed(out)
    first, second = tickets.sealed
    assert second.authenticated_at == first.authenticated_at == seconds(now)
    assert second.issued == seconds(now) + 500 and second.lifetime == 100
    # and a ticket issued on that resumed session keeps the first authentication time again
    third_out = connect(at(route, now + timedelta(seconds=550)), ctx, session_of(out))
    assert resumed(third_out)
    assert tickets.sealed[-1].authenticated_at == seconds(now)
    assert tickets.sealed[-1].lifetime == 50
    # at max_age exactly the session is over: no ticket at all
    last = connect(at(route, now + timedelta(seconds=600)), ctx, session_of(third_out))
    assert resumed(last) and len(tickets.sealed) == 3


def test_a_lower_max_age_applies_to_tickets_already_issued(pki: PkiFiles) -> None:
    now = datetime.now(UTC)
    route, _ = recording(build_route(pki, REQUIRE), max_age=3600)
    ctx = client_context(pki)
    session = session_of(connect(at(route, now), ctx))
    stricter, _ = recording(route, max_age=300)
    out = connect(at(stricter, now + timedelta(seconds=400)), ctx, session)
    assert out.complete is not None and not resumed(out)  # a full handshake
    assert resumed(connect(at(route, now + timedelta(seconds=400)), ctx, session))


def test_the_chain_not_after_bounds_the_ticket(pki: PkiFiles, minted: Minted) -> None:
    now = datetime.now(UTC)
    ctx, cert = minted.client(not_after=now + timedelta(seconds=900))
    route, tickets = recording(build_route(pki, REQUIRE))
    session = session_of(connect(at(route, now), ctx))
    (state,) = tickets.sealed
    assert state.lifetime == seconds(cert.not_valid_after_utc) - seconds(now) <= 900
    assert session.ticket_lifetime_hint == state.lifetime


def test_the_crl_next_update_bounds_the_ticket(pki: PkiFiles, minted: Minted) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    route = minted.crl_route(build_route(pki, REQUIRE), next_update=now + timedelta(seconds=1200))
    route, tickets = recording(route)
    session_of(connect(at(route, now), client_context(pki)))
    (state,) = tickets.sealed
    assert state.lifetime == 1200


def test_resumable_until_is_the_earliest_end_of_what_verified_the_chain(pki: PkiFiles) -> None:
    route = build_route(pki, REQUIRE)
    chain = x509.load_pem_x509_certificates(pki.client_intermediate_cert.read_bytes())
    root = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    crls = [x509.load_pem_x509_crl(f.read_bytes()) for f in (pki.ca_crl, pki.intermediate_crl)]
    ends = [c.not_valid_after_utc for c in (*chain, root)]
    ends += [crl.next_update_utc for crl in crls if crl.next_update_utc is not None]
    der = [c.public_bytes(serialization.Encoding.DER) for c in chain]
    assert route.resumable_until(der) == min(ends)
    assert route.resumable_until(()) is None
    assert route.resumable_until([b"not a certificate"]) == datetime.min.replace(tzinfo=UTC)
    assert build_route(pki, REQUIRE, crl=False).resumable_until(der) == min(ends[:3])


# --- the client checked again on resumption -----------------------------------------------


class DecisionSpy:
    """A route whose decisions are recorded (everything else is the route's)."""

    def __init__(self, route: ServerRoute) -> None:
        self._route = route
        self.calls: list[tuple[tuple[bytes, ...], Evidence]] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._route, name)

    def decide(self, chain_der: Sequence[bytes], evidence: Evidence) -> Decision:
        self.calls.append((tuple(chain_der), evidence))
        return self._route.decide(chain_der, evidence)


def test_resumption_decides_on_the_whole_chain(pki: PkiFiles) -> None:
    route = build_route(pki, REQUIRE, allow=False)
    ctx = client_context(pki, cert="client-intermediate")
    session = session_of(connect(route, ctx))
    spy = DecisionSpy(route)
    out = connect(spy, ctx, session)  # type: ignore[arg-type]
    assert resumed(out)
    ((chain, evidence),) = spy.calls
    assert evidence is Evidence.RESUMED and len(chain) == 2
    assert out.complete is not None and out.complete.client_certificate == chain[0]


def test_a_client_revoked_since_is_refused_on_resumption(pki: PkiFiles, minted: Minted) -> None:
    route = minted.crl_route(build_route(pki, REQUIRE))
    ctx = client_context(pki)
    session = session_of(connect(route, ctx))
    serial = x509.load_pem_x509_certificate(pki.client_cert.read_bytes()).serial_number
    revoked = minted.crl_route(route, revoked=[serial])  # the same route, reloaded
    out = connect(revoked, ctx, session)
    failed = out.failed
    assert failed is not None and failed.reason is Reason.CLIENT_CERT_REVOKED, out.events
    assert failed.alert is Alert.CERTIFICATE_REVOKED and out.complete is None


def test_an_intermediate_revoked_since_is_refused_on_resumption(
    pki: PkiFiles, minted: Minted
) -> None:
    route = minted.crl_route(build_route(pki, REQUIRE, allow=False))
    ctx = client_context(pki, cert="client-intermediate")
    session = session_of(connect(route, ctx))
    inter = x509.load_pem_x509_certificate(pki.intermediate_cert.read_bytes())
    revoked = minted.crl_route(route, revoked=[inter.serial_number])
    out = connect(revoked, ctx, session)
    assert out.complete is None and out.failed is not None, out.events
    assert out.failed.reason is Reason.CLIENT_CERT_REVOKED


def test_an_expired_client_does_not_resume(pki: PkiFiles, minted: Minted) -> None:
    """Past the chain's notAfter the ticket is over: a full handshake, which refuses it."""
    now = datetime.now(UTC)
    ctx, _ = minted.client(not_after=now + timedelta(seconds=900))
    route = build_route(pki, REQUIRE)
    session = session_of(connect(at(route, now), ctx))
    out = connect(at(route, now + timedelta(seconds=901)), ctx, session)
    assert out.complete is None
    failed = out.failed
    assert failed is not None and failed.reason is Reason.CLIENT_CERT_EXPIRED, out.events


def test_a_crl_past_its_next_update_ends_resumption(pki: PkiFiles, minted: Minted) -> None:
    """Past the nextUpdate of a CRL of the chain, the ticket is over: a full handshake, whose
    CRL check fails closed."""
    now = datetime.now(UTC)
    route = minted.crl_route(build_route(pki, REQUIRE), next_update=now + timedelta(hours=1))
    ctx = client_context(pki)
    session = session_of(connect(at(route, now), ctx))
    later: Callable[[int], ServerRoute] = lambda s: at(route, now + timedelta(seconds=s))  # noqa: E731
    assert resumed(connect(later(3500), ctx, session))
    out = connect(later(3601), ctx, session)
    assert out.complete is None
    failed = out.failed
    assert failed is not None and failed.reason is Reason.CLIENT_CERT_UNTRUSTED, out.events
