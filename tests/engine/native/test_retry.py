"""The second ClientHello (RFC 8446 section 4.1.2): "the client MUST send the same ClientHello
without modification, except as follows": the key share replaced by one of the group the
HelloRetryRequest asked for, early_data removed, a cookie added, pre_shared_key updated, padding
changed. Anything else changed is illegal_parameter."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from mtlsproxy.engine.events import HandshakeComplete, HandshakeFailed
from mtlsproxy.engine.native import messages as msgs
from mtlsproxy.engine.native.suites import NamedGroup
from mtlsproxy.pki import PkiFiles
from mtlsproxy.policy.model import ClientAuthMode
from mtlsproxy.routing.routes import ServerRoute
from mtlsproxy.vocabulary.failures import Alert, Step
from tests.engine.native.harness import build_route
from tests.engine.native.test_engine import engine, mini, mini_handshake
from tests.engine.native.tls13_client import MiniClient

EXT_PADDING = 0x0015  # RFC 7685
EXT_COOKIE = 0x002C  # RFC 8446 section 4.2.2


@pytest.fixture(scope="module")
def route(pki: PkiFiles) -> ServerRoute:
    return build_route(pki, ClientAuthMode.REQUIRE)


def change(**fields: object) -> Callable[[MiniClient], None]:
    def apply(client: MiniClient) -> None:
        for name, value in fields.items():
            setattr(client, name, value(client) if callable(value) else value)

    return apply


ILLEGAL = {
    "random": change(random=lambda _: os.urandom(32)),
    "legacy_version": change(legacy_version=0x0301),
    "session_id": change(session_id=b"\x07" * 32),
    "cipher_suites": change(suites=lambda c: (*c.suites, 0x1304)),
    "alpn": change(alpn=("h2",)),
    "signature_algorithms": change(signature_schemes=lambda c: c.signature_schemes[:-1]),
    "supported_groups": change(groups=(NamedGroup.X25519, NamedGroup.SECP256R1)),
    "server_name": change(server_name="other.example"),
    "an extension added": change(extra_extensions=((0x4444, b"new"),)),
    "an extension changed": change(extra_extensions=((0x4444, b"two"),)),
}

LEGAL = {
    "nothing": change(),
    "padding added": change(extra_extensions=((EXT_PADDING, bytes(200)),)),
    "cookie added": change(extra_extensions=((EXT_COOKIE, msgs.vector(b"c" * 16, 2)),)),
}


def second_hello_outcome(route: ServerRoute, pki: PkiFiles, on_retry, first_extra=()) -> list:
    server = engine(route)
    client = mini(pki, share_groups=(), on_retry=on_retry, extra_extensions=first_extra)
    events = mini_handshake(server, client)
    assert client.retry_group == NamedGroup.X25519
    if client.server_finished:
        events += server.receive(client.flight())
    return events


@pytest.mark.parametrize("what", list(ILLEGAL))
def test_a_second_client_hello_that_changes_what_it_may_not(route, pki, what: str) -> None:
    first_extra = ((0x4444, b"one"),) if what == "an extension changed" else ()
    events = second_hello_outcome(route, pki, ILLEGAL[what], first_extra)
    failed = events[-1]
    assert isinstance(failed, HandshakeFailed), events
    assert (failed.step, failed.alert) == (Step.SERVER_HELLO, Alert.ILLEGAL_PARAMETER), failed


@pytest.mark.parametrize("what", list(LEGAL))
def test_a_second_client_hello_with_the_changes_it_may_make(route, pki, what: str) -> None:
    first_extra = ((EXT_PADDING, bytes(50)),) if what == "padding added" else ()
    events = second_hello_outcome(route, pki, LEGAL[what], first_extra)
    assert any(isinstance(e, HandshakeComplete) for e in events), events


def test_padding_removed_and_early_data_dropped(route, pki) -> None:
    """early_data in the first hello only (MiniClient drops it after a HelloRetryRequest)."""
    events = second_hello_outcome(
        route, pki, change(extra_extensions=()), first_extra=((EXT_PADDING, bytes(80)),)
    )
    assert any(isinstance(e, HandshakeComplete) for e in events), events
