"""Session resumption of the native engine (RFC 8446 sections 2.2, 4.2.11, 4.6.1), in memory
with a real Python ``ssl`` client: tickets, binders, the re-check of the client on resumption,
and tickets that must not resume (another route, tampered, expired)."""

from __future__ import annotations

import dataclasses
import ssl
from datetime import UTC, datetime, timedelta

import pytest

from mtlsproxy.engine.events import TraceRecord
from mtlsproxy.engine.native.tickets import TICKET_LIFETIME, TicketKey, TicketState
from mtlsproxy.engine.selecting import SelectingEngine
from mtlsproxy.pki import PkiFiles
from mtlsproxy.policy.authorize import AllowList
from mtlsproxy.policy.decision import ClientPolicy
from mtlsproxy.policy.model import AllowKind, AllowRule, ClientAuthMode
from mtlsproxy.routing.routes import RouteTable, ServerRoute
from mtlsproxy.vocabulary.failures import Alert, Reason, Step
from tests.engine.native.harness import (
    FakeClock,
    Outcome,
    build_route,
    client_context,
    run_handshake,
)

REQUIRE, REQUEST, NONE = ClientAuthMode.REQUIRE, ClientAuthMode.REQUEST, ClientAuthMode.NONE


def engine(route: ServerRoute) -> SelectingEngine:
    return SelectingEngine(RouteTable(route).select, FakeClock())  # type: ignore[arg-type]


class _Resuming:
    """An SSLContext stand-in whose wrap_bio offers ``session`` (run_handshake calls only
    wrap_bio)."""

    def __init__(self, ctx: ssl.SSLContext, session: ssl.SSLSession) -> None:
        self._ctx = ctx
        self._session = session

    def wrap_bio(
        self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_hostname: str
    ) -> ssl.SSLObject:
        return self._ctx.wrap_bio(
            incoming, outgoing, server_hostname=server_hostname, session=self._session
        )


def _resuming(ctx: ssl.SSLContext, session: ssl.SSLSession) -> ssl.SSLContext:
    return _Resuming(ctx, session)  # type: ignore[return-value]


def connect(
    route: ServerRoute, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None, **kw: object
) -> Outcome:
    """A handshake (offering ``session``); run_handshake's ping and read after it let the
    client take the ticket."""
    client = ctx if session is None else _resuming(ctx, session)
    return run_handshake(engine(route), client, **kw)  # type: ignore[arg-type]


def session_of(out: Outcome) -> ssl.SSLSession:
    assert out.client is not None and out.complete is not None, out.events
    session = out.client.session
    assert session is not None and session.has_ticket
    return session


@pytest.fixture
def require(pki: PkiFiles) -> ServerRoute:
    return build_route(pki, REQUIRE)


def test_resumption_keeps_identity_and_skips_the_certificates(
    require: ServerRoute, pki: PkiFiles
) -> None:
    ctx = client_context(pki)
    first = connect(require, ctx)
    assert first.complete is not None and not first.complete.session_reused
    session = session_of(first)
    assert 0 < session.ticket_lifetime_hint <= TICKET_LIFETIME
    second = connect(require, ctx, session)
    complete = second.complete
    assert complete is not None, second.events
    assert complete.session_reused and second.client is not None and second.client.session_reused
    assert complete.identity is not None and complete.identity.subject_cn == "frontend"
    assert complete.identity == first.complete.identity
    assert complete.client_certificate == first.complete.client_certificate
    assert complete.verified and complete.would_refuse is None
    assert second.received() == b"ping" and second.client_error is None
    # A resumed session gets a ticket too, and it resumes again.
    third = connect(require, ctx, session_of(second))
    assert third.complete is not None and third.complete.session_reused


@pytest.mark.parametrize("mode", [REQUEST, NONE])
def test_resumption_without_a_client_certificate(pki: PkiFiles, mode: ClientAuthMode) -> None:
    route = build_route(pki, mode)
    ctx = client_context(pki, cert=None)
    session = session_of(connect(route, ctx))
    out = connect(route, ctx, session)
    assert out.complete is not None and out.complete.session_reused
    assert out.complete.identity is None and out.complete.client_certificate is None


def test_ticket_from_another_route_is_ignored(require: ServerRoute, pki: PkiFiles) -> None:
    """Every route of the process shares the keyring, each through its own derived key."""
    ctx = client_context(pki)
    session = session_of(connect(require, ctx))
    config = dataclasses.replace(require.config, name="other")
    other = ServerRoute.build(config)
    out = connect(other, ctx, session)
    assert out.complete is not None and not out.complete.session_reused
    assert out.client is not None and not out.client.session_reused
    assert out.complete.identity is not None  # a full handshake with the certificate
    # The same route in another listener is another route too.
    elsewhere = ServerRoute.build(require.config, "another-listener")
    out = connect(elsewhere, ctx, session)
    assert out.complete is not None and not out.complete.session_reused


def test_a_rebuilt_route_keeps_resuming(require: ServerRoute, pki: PkiFiles) -> None:
    """A reload builds the routes again; the process keyring stays, and the resumed client's
    chain is verified again with what the reload loaded."""
    ctx = client_context(pki)
    session = session_of(connect(require, ctx))
    out = connect(build_route(pki, REQUIRE), ctx, session)
    assert out.complete is not None and out.complete.session_reused


def test_anonymous_ticket_cannot_skip_a_required_certificate(pki: PkiFiles) -> None:
    """A route that turns from request to require (same key: as if its ticket were kept) must
    not admit the certificate-less session: the decision refuses no certificate in require mode."""
    request = build_route(pki, REQUEST)
    ctx = client_context(pki, cert=None)
    session = session_of(connect(request, ctx))
    config = dataclasses.replace(
        request.config,
        client_auth=dataclasses.replace(request.config.client_auth, mode=REQUIRE),
    )
    require = dataclasses.replace(
        request, config=config, policy=ClientPolicy.compile(config.client_auth)
    )
    out = connect(require, ctx, session)
    assert out.complete is None
    failed = out.failed
    assert failed is not None and failed.alert is Alert.CERTIFICATE_REQUIRED
    assert out.client_error is not None


def test_resumed_client_is_checked_again(require: ServerRoute, pki: PkiFiles) -> None:
    """The allow-list changed (as a stand-in for revocation or expiry): access_denied."""
    ctx = client_context(pki)
    session = session_of(connect(require, ctx))
    other_rule = AllowRule(AllowKind.SPIFFE_ID, "spiffe://example.org/ns/prod/sa/someone-else")
    policy = dataclasses.replace(require.policy, allow_list=AllowList((other_rule,)))
    stricter = dataclasses.replace(require, policy=policy)
    out = connect(stricter, ctx, session)
    assert out.complete is None
    failed = out.failed
    assert failed is not None and failed.step is Step.AUTHORIZE
    assert failed.alert is Alert.ACCESS_DENIED
    assert out.client_error is not None and "ACCESS_DENIED" in out.client_error


def test_expired_ticket_is_ignored(require: ServerRoute, pki: PkiFiles) -> None:
    ctx = client_context(pki)
    session = session_of(connect(require, ctx))
    # The route's wall clock is the engine's only one: a later "now" ages the ticket out.
    later = dataclasses.replace(
        require, wall_clock=lambda: datetime.now(UTC) + timedelta(seconds=TICKET_LIFETIME + 1)
    )
    out = connect(later, ctx, session)
    assert out.complete is not None and not out.complete.session_reused


def _psk_extension_offset(data: bytes) -> int:
    """Where the last extension (pre_shared_key) of the ClientHello record in data starts."""
    index = data.rfind(b"\x00\x29")
    assert index > 0
    return index


def test_tampered_binder_is_decrypt_error(require: ServerRoute, pki: PkiFiles) -> None:
    ctx = client_context(pki)
    session = session_of(connect(require, ctx))

    def tamper(n: int, data: bytes) -> bytes:
        if n != 0:
            return data
        return data[:-1] + bytes((data[-1] ^ 1,))  # the last binder's last byte

    out = connect(require, ctx, session, tamper=tamper)
    failed = out.failed
    assert failed is not None and failed.alert is Alert.DECRYPT_ERROR, out.events
    assert failed.step is Step.SERVER_HELLO
    assert out.complete is None


def test_tampered_ticket_is_ignored(require: ServerRoute, pki: PkiFiles) -> None:
    """The ticket does not open: the server answers with a full handshake (its Certificate,
    no pre_shared_key). The client's own transcript has the untampered ClientHello, so the
    handshake then fails, which is what any tampering does."""
    ctx = client_context(pki)
    session = session_of(connect(require, ctx))

    def tamper(n: int, data: bytes) -> bytes:
        if n != 0:
            return data
        # pre_shared_key: type(2) length(2) identities_length(2) identity_length(2) identity
        at = _psk_extension_offset(data) + 8 + 20
        return data[:at] + bytes((data[at] ^ 1,)) + data[at + 1 :]

    records: list[TraceRecord] = []
    server = SelectingEngine(RouteTable(require).select, FakeClock(), records.append)
    out = run_handshake(server, _resuming(ctx, session), tamper=tamper)
    hello = next(r for r in records if r.message == "ServerHello")
    assert hello.fields["resumed"] is False
    assert any(r.message == "Certificate" and r.direction == "->" for r in records)
    failed = out.failed
    # The client, whose transcript differs, refuses our flight: not a decrypt_error of ours.
    assert failed is not None and failed.reason is Reason.CLIENT_ALERT, out.events


def test_ticket_key_seals_for_its_route_only() -> None:
    state = TicketState(b"k" * 32, 0x1301, 1000, 7200, 5, "h2", "a", (b"\x30\x00",), 900)
    key = TicketKey("a")
    ticket = key.seal(state)
    assert ticket is not None
    opened = key.open(ticket)
    assert opened == state and "k" * 8 not in repr(opened)
    assert TicketKey("a").open(ticket) is None
    assert key.open(ticket[:-1] + bytes((ticket[-1] ^ 1,))) is None
    assert key.open(b"") is None
    assert key.seal(dataclasses.replace(state, chain=(b"x" * 20_000,))) is None


def test_audit_admission_that_would_refuse_gets_no_ticket(pki: PkiFiles) -> None:
    route = build_route(pki, REQUIRE, enforce=False)
    out = connect(route, client_context(pki, cert="client-other"))
    assert out.complete is not None and out.complete.would_refuse is not None
    assert out.client is not None
    session = out.client.session
    assert session is None or not session.has_ticket
