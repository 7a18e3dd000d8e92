"""The per-connection forwarding plan: nothing for ``none``, a PROXY v2 preamble, or the HTTP
rewriter wired to the response tracker (an Upgrade's later bytes held until it is answered)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

from mtlsproxy.config.model import ForwardIdentity, IdentityForwarding
from mtlsproxy.engine.events import HandshakeComplete, HandshakeTimings
from mtlsproxy.forwarding.plan import PASSTHROUGH, Forwarding, plan
from mtlsproxy.forwarding.proxy_protocol import SIGNATURE
from mtlsproxy.policy.paths import PathAuthorization
from mtlsproxy.routing.routes import ServerRoute
from mtlsproxy.vocabulary.identity import PeerIdentity
from tests.forwarding.support import SPIFFE_ID, Certs

WS = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
FRAME = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"


def forwarding(certs: Certs, mode: ForwardIdentity) -> Forwarding:
    # plan reads only the route's credentials; a leaf with a URI SAN gives XFCC its By.
    route = cast(
        ServerRoute,
        SimpleNamespace(
            credentials=(SimpleNamespace(leaf=certs.client),),
            config=SimpleNamespace(http_authorization=PathAuthorization()),
        ),
    )
    event = HandshakeComplete(
        route="default",
        version="TLSv1.3",
        cipher="TLS_AES_128_GCM_SHA256",
        alpn=None,
        client_certificate_presented=True,
        identity=PeerIdentity.from_certificate(certs.client),
        session_reused=False,
        timings=HandshakeTimings(),
        client_certificate=certs.client_der,
        verified=True,
    )
    settings = IdentityForwarding(mode=mode)
    return plan(settings, route, event, None, ("192.0.2.10", 51000), ("192.0.2.1", 8443))


def test_none_is_the_shared_passthrough(certs: Certs) -> None:
    plan = forwarding(certs, ForwardIdentity.NONE)
    assert plan is PASSTHROUGH and plan.passthrough and plan.preamble == b""


def test_proxy_protocol_is_a_preamble_only(certs: Certs) -> None:
    plan = forwarding(certs, ForwardIdentity.PROXY_PROTOCOL_V2)
    assert plan.passthrough and plan.preamble.startswith(SIGNATURE)


def test_http_injects_and_holds_after_an_upgrade_until_it_is_answered(certs: Certs) -> None:
    plan = forwarding(certs, ForwardIdentity.HTTP)
    assert not plan.passthrough and plan.preamble == b""
    sent = plan.to_upstream(WS + FRAME)
    assert f"By={SPIFFE_ID};".encode() in sent and FRAME not in sent
    assert plan.holding
    assert plan.from_upstream(SWITCHING) == FRAME  # released raw
    assert not plan.holding
    assert plan.to_upstream(FRAME) == FRAME
