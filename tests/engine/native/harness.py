"""In-memory drivers for the engines: a Python ``ssl`` client over MemoryBIOs (bench/engine.py's
pattern), routes built from the development PKI, and helpers to read the outcome."""

from __future__ import annotations

import itertools
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mtlsproxy import pki
from mtlsproxy.config.model import (
    CertificateKeyPair,
    ForwardIdentity,
    IdentityForwarding,
    Route,
    TLSSettings,
    Upstream,
)
from mtlsproxy.engine.events import (
    ApplicationData,
    Event,
    HandshakeComplete,
    HandshakeFailed,
)
from mtlsproxy.engine.interface import Engine
from mtlsproxy.policy.model import AllowKind, AllowRule, ClientAuth, ClientAuthMode
from mtlsproxy.routing.routes import RouteTable, ServerRoute


class FakeClock:
    """A deterministic clock: every reading advances by one millisecond."""

    def __init__(self) -> None:
        self._ticks = itertools.count()

    def __call__(self) -> float:
        return next(self._ticks) / 1000


def build_route(
    files: pki.PkiFiles,
    mode: ClientAuthMode = ClientAuthMode.REQUIRE,
    *,
    allow: bool = True,
    enforce: bool = True,
    alpn: tuple[str, ...] = (),
    http: bool = False,
    rsa: bool = False,
    crl: bool = True,
) -> ServerRoute:
    rules = (AllowRule(AllowKind.SPIFFE_ID, pki.FRONTEND_SPIFFE_ID),) if allow else ()
    client_auth = (
        ClientAuth(mode, files.client_ca_bundle, files.crl_bundle if crl else None, rules, enforce)
        if mode is not ClientAuthMode.NONE
        else ClientAuth()
    )
    pair = (
        CertificateKeyPair(files.server_rsa_cert, files.server_rsa_key)
        if rsa
        else CertificateKeyPair(files.server_cert, files.server_key)
    )
    tls = TLSSettings((pair,), alpn=alpn)
    forward = IdentityForwarding(mode=ForwardIdentity.HTTP) if http else IdentityForwarding()
    route = Route("default", (), tls, client_auth, Upstream("127.0.0.1", 1), forward)
    return ServerRoute.build(route)


def client_context(
    files: pki.PkiFiles,
    cert: str | None = "client",
    *,
    version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
    alpn: Sequence[str] = (),
    keylog: Path | None = None,
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(files.ca_cert))
    context.minimum_version = context.maximum_version = version
    if cert is not None:
        stem = cert.replace("-", "_")
        context.load_cert_chain(getattr(files, f"{stem}_cert"), getattr(files, f"{stem}_key"))
    if alpn:
        context.set_alpn_protocols(list(alpn))
    if keylog is not None:
        context.keylog_filename = str(keylog)
    return context


@dataclass
class Outcome:
    events: list[Event] = field(default_factory=list)
    client_error: str | None = None  # the SSLError reason the client saw, if any
    client_done: bool = False  # the client's do_handshake() returned
    client: ssl.SSLObject | None = None
    client_in: ssl.MemoryBIO | None = None
    client_out: ssl.MemoryBIO | None = None

    @property
    def complete(self) -> HandshakeComplete | None:
        return next((e for e in self.events if isinstance(e, HandshakeComplete)), None)

    @property
    def failed(self) -> HandshakeFailed | None:
        return next((e for e in self.events if isinstance(e, HandshakeFailed)), None)

    def received(self) -> bytes:
        return b"".join(e.data for e in self.events if isinstance(e, ApplicationData))


def run_handshake(
    engine: Engine,
    client_ctx: ssl.SSLContext,
    *,
    chunk: int | None = None,
    tamper: Callable[[int, bytes], bytes] | None = None,
    ping: bool = True,
) -> Outcome:
    """Drive a Python client against ``engine`` until both go quiet.

    ``chunk`` splits every client write into pieces of that size; ``tamper(n, data)`` may
    rewrite the client's n-th write. With ``ping``, once the client's handshake is done it
    writes b"ping" and reads, so an alert the server sent after the client's Finished (TLS 1.3)
    surfaces as ``client_error``.
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    outcome = Outcome(client=client, client_in=incoming, client_out=outgoing)
    writes = 0
    pinged = False
    for _ in range(20):
        progressed = False
        # The ping goes in a write after the client's flight (a client sending data in the
        # same write as its Finished is covered separately).
        ready_to_ping = outcome.client_done
        if not outcome.client_done and outcome.client_error is None:
            try:
                client.do_handshake()
                outcome.client_done = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                outcome.client_error = exc.reason or str(exc)
        if ready_to_ping and ping and not pinged and outcome.client_error is None:
            pinged = True
            try:
                client.write(b"ping")
            except ssl.SSLError as exc:
                outcome.client_error = exc.reason or str(exc)
        data = outgoing.read()
        if data:
            progressed = True
            if tamper is not None:
                data = tamper(writes, data)
            writes += 1
            pieces = (
                [data]
                if chunk is None
                else [data[i : i + chunk] for i in range(0, len(data), chunk)]
            )
            for piece in pieces:
                outcome.events += engine.receive(piece)
        answer = engine.data_to_send()
        if answer:
            progressed = True
            incoming.write(answer)
            if outcome.client_done and outcome.client_error is None:
                try:
                    client.read(1024)
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError as exc:
                    outcome.client_error = exc.reason or str(exc)
        if not progressed and (pinged or not ping or not outcome.client_done):
            break
    return outcome


def table(route: ServerRoute) -> RouteTable:
    return RouteTable(route)
