"""The route's ``SSLContext`` (``routing.contexts``): what OpenSSL sends after a handshake."""

from __future__ import annotations

import contextlib
import dataclasses
import ssl
from pathlib import Path

from mtlsproxy.config.model import CertificateKeyPair, Route, TLSSettings, Upstream
from mtlsproxy.pki import PkiFiles
from mtlsproxy.policy.model import ClientAuth, ClientAuthMode
from mtlsproxy.routing.routes import ServerRoute

NEW_SESSION_TICKET = 4  # HandshakeType (RFC 8446 section 4)


def mutual_route(pki: PkiFiles) -> ServerRoute:
    client_auth = ClientAuth(ClientAuthMode.REQUIRE, pki.client_ca_bundle, pki.crl_bundle, ())
    tls = TLSSettings((CertificateKeyPair(pki.server_cert, pki.server_key),))
    return ServerRoute.build(Route("default", (), tls, client_auth, Upstream("127.0.0.1", 1)))


def handshake(
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    session: ssl.SSLSession | None = None,
) -> ssl.SSLObject:
    """A full in-memory handshake; the client reads what the server sent after it (the
    tickets) before returning."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(
        to_client, to_server, server_hostname="localhost", session=session
    )
    server = server_context.wrap_bio(server_in, server_out, server_side=True)
    for _ in range(10):
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        server_in.write(to_server.read())
        to_client.write(server_out.read())
        if client.version() and server.version() and not to_client.pending:
            break
    with contextlib.suppress(ssl.SSLWantReadError):
        client.read(1)
    return client


def test_one_tls13_ticket_per_full_handshake_and_it_resumes(pki: PkiFiles) -> None:
    """One ticket, not OpenSSL's default two (each costs a copy of the session with the
    client's certificate): a client resumes with its latest ticket anyway."""
    context = mutual_route(pki).ssl_context
    client_context = ssl.create_default_context(cafile=str(pki.ca_cert))
    client_context.minimum_version = ssl.TLSVersion.TLSv1_3
    client_context.load_cert_chain(pki.client_cert, pki.client_key)
    received: list[object] = []
    # The message callback is CPython's debugging hook: the only way to see each message.
    client_context._msg_callback = (  # type: ignore[attr-defined]
        lambda _conn, direction, _version, _kind, message, _data: received.append(
            (direction, message)
        )
    )
    first = handshake(context, client_context)
    assert received.count(("read", NEW_SESSION_TICKET)) == 1
    assert first.session is not None and first.session.has_ticket
    resumed = handshake(context, client_context, first.session)
    assert resumed.session_reused


def test_a_route_names_itself_and_its_upstream_as_the_config_says(pki: PkiFiles) -> None:
    """``name`` and ``upstream_address`` are set once from the config (read on every
    connection), and follow it through ``dataclasses.replace``."""
    route = mutual_route(pki)
    assert route.name == "default" and route.upstream_address == "127.0.0.1:1"
    for upstream, text in (
        (Upstream("::1", 8080), "[::1]:8080"),
        (Upstream(unix_path=Path("/run/app.sock")), "unix:/run/app.sock"),
    ):
        config = dataclasses.replace(route.config, name="api", upstream=upstream)
        moved = dataclasses.replace(route, config=config)
        assert moved.name == "api" and moved.upstream_address == text
