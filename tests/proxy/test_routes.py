"""SNI routes: several client-certificate policies and upstreams behind one listener.

The listener requires a verified client certificate; ``public.example.org`` and
``open.example.org`` are one-way TLS; ``*.internal.example.org`` admits only the frontend's
SPIFFE ID; ``billing.example.org`` forwards to an upstream of its own. Each connection is
checked three ways: what the client sees, which upstream got its bytes, and the
``mtlsproxy_handshakes_total`` sample (with its ``route`` label) the proxy counted.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from mtlsproxy.pki import PkiFiles, issue_leaf, new_key, write_pem
from tests.proxy.harness import RunningProxy, Upstream, echo_through, eventually

CONFIG = """\
listeners:
  - name: edge
    listen: 127.0.0.1:0
    tls:
      certificates:
        - {{certificate: {certs}/sni.crt, key: {certs}/sni.key}}
    client_auth:
      mode: require
      ca: {pki}/client-ca.pem
      crl: {pki}/crls.pem
    upstream: 127.0.0.1:{main}
    timeouts: {{handshake: 5s, connect: 2s, idle: 60s, drain: 2s}}
    routes:
      - sni: public.example.org
        client_auth: {{mode: none}}
      - name: open
        sni: open.example.org
        client_auth: {{mode: none}}
      - name: internal
        sni: "*.internal.example.org"
        client_auth:
          allow:
            - spiffe_id: spiffe://example.org/ns/prod/sa/frontend
      - name: billing
        sni: billing.example.org
        upstream: 127.0.0.1:{billing}
metrics:
  listen: 127.0.0.1:0
log:
  format: text
  level: debug
"""

PUBLIC = "public_example_org"  # the route name derived from its first SNI
V12, V13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
VERSIONS = pytest.mark.parametrize("version", [V12, V13], ids=["tls12", "tls13"])
OK = ("ok", "none", "none")
MISSING = ("failed", "client_certificate", "client_cert_missing")
NOT_ALLOWED = ("refused", "authorize", "identity_not_allowed")


@dataclass
class Edge:
    proxy: RunningProxy
    main: Upstream
    billing: Upstream
    pki: PkiFiles

    def context(self, cert: str | None, version: ssl.TLSVersion) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.minimum_version = context.maximum_version = version
        if cert is not None:
            directory = self.pki.directory
            context.load_cert_chain(directory / f"{cert}.crt", directory / f"{cert}.key")
        return context

    def connect(
        self, context: ssl.SSLContext, sni: str | None, session: ssl.SSLSession | None = None
    ) -> ssl.SSLSocket:
        """A TLS connection sending ``sni`` (None: no server_name, no hostname check)."""
        context.check_hostname = sni is not None
        raw = socket.create_connection(("127.0.0.1", self.proxy.port()), timeout=5)
        try:
            return context.wrap_socket(raw, server_hostname=sni, session=session)
        except BaseException:
            raw.close()
            raise

    def handshakes(self, route: str, outcome: tuple[str, str, str]) -> float:
        result, step, reason = outcome
        return self.proxy.handshakes(route=route, result=result, step=step, reason=reason)

    def resumed(self) -> float:
        return self.proxy.sample("mtlsproxy_tls_resumed_sessions_total")


def attempt(edge: Edge, context: ssl.SSLContext, sni: str | None, payload: bytes) -> bool:
    """True when ``payload`` came back through the proxy, False when the client was refused."""
    try:
        with edge.connect(context, sni) as tls:
            return echo_through(tls, payload) == payload
    except (ssl.SSLError, ConnectionError):
        return False


@pytest.fixture(scope="module")
def sni_certs(tmp_path_factory: pytest.TempPathFactory, pki: PkiFiles) -> Path:
    """A server certificate for every name the routes serve, issued by the development root."""
    directory = tmp_path_factory.mktemp("sni-certs")
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    key = new_key()
    names = ["localhost", "*.example.org", "*.internal.example.org", "*.b.internal.example.org"]
    leaf = issue_leaf(key, ca, ca_key, common_name="edge", dns_names=names, usage="server")  # type: ignore[arg-type]
    write_pem(directory / "sni.crt", leaf)
    write_pem(directory / "sni.key", key)
    return directory


@pytest.fixture(scope="module")
def edge(
    tmp_path_factory: pytest.TempPathFactory, pki: PkiFiles, sni_certs: Path
) -> Iterator[Edge]:
    main, billing = Upstream(), Upstream()
    path = tmp_path_factory.mktemp("routes") / "edge.yaml"
    path.write_text(
        CONFIG.format(certs=sni_certs, pki=pki.directory, main=main.port, billing=billing.port)
    )
    proxy = RunningProxy(path)
    yield Edge(proxy, main, billing, pki)
    proxy.stop()
    main.stop()
    billing.stop()


# sni, client certificate -> route, outcome, upstream ("main", "billing", or None: refused)
CASES = [
    ("public.example.org", None, PUBLIC, OK, "main"),
    ("public.example.org", "client-other", PUBLIC, OK, "main"),
    ("Public.Example.ORG", None, PUBLIC, OK, "main"),  # SNI is case-insensitive
    (None, None, "default", MISSING, None),
    (None, "client", "default", OK, "main"),
    ("localhost", None, "default", MISSING, None),
    ("api.example.org", "client-other", "default", OK, "main"),  # no allow-list on default
    ("a.internal.example.org", "client", "internal", OK, "main"),
    ("a.internal.example.org", "client-other", "internal", NOT_ALLOWED, None),
    ("a.internal.example.org", None, "internal", MISSING, None),
    # A *. wildcard matches exactly one label: deeper names and the parent fall to default.
    ("a.b.internal.example.org", "client-other", "default", OK, "main"),
    ("a.b.internal.example.org", None, "default", MISSING, None),
    ("billing.example.org", "client", "billing", OK, "billing"),
    ("billing.example.org", None, "billing", MISSING, None),
]


@VERSIONS
@pytest.mark.parametrize(
    ("sni", "cert", "route", "outcome", "target"),
    CASES,
    ids=[f"{sni or 'no-sni'}-{cert or 'no-cert'}" for sni, cert, *_ in CASES],
)
def test_route_policy_and_upstream(
    edge: Edge,
    sni: str | None,
    cert: str | None,
    route: str,
    outcome: tuple[str, str, str],
    target: str | None,
    version: ssl.TLSVersion,
) -> None:
    before = edge.handshakes(route, outcome)
    received = {"main": edge.main.received, "billing": edge.billing.received}
    payload = f"to-{route}-{sni}".encode()

    admitted = attempt(edge, edge.context(cert, version), sni, payload)

    assert admitted == (target is not None)
    assert eventually(lambda: edge.handshakes(route, outcome) == before + 1), (route, outcome)
    for name, upstream in (("main", edge.main), ("billing", edge.billing)):
        grew = upstream.received - received[name]
        assert grew == (len(payload) if name == target else 0), name


def test_parent_of_a_wildcard_is_not_matched(edge: Edge) -> None:
    """``*.internal.example.org`` does not cover ``internal.example.org`` itself."""
    context = edge.context("client-other", V13)
    context.check_hostname = False  # the certificate's *.example.org covers it anyway
    before = edge.handshakes("default", OK)
    assert attempt(edge, context, "internal.example.org", b"parent")
    assert eventually(lambda: edge.handshakes("default", OK) == before + 1)


# Session resumption never crosses routes: each route's SSLContext has its own session cache
# and ticket keys, so a session (and the policy decision it carries) stays with its route.


def first_session(edge: Edge, context: ssl.SSLContext, sni: str) -> ssl.SSLSession:
    with edge.connect(context, sni) as tls:
        # TLS 1.3 tickets arrive after the handshake: reading the echo processes them.
        assert echo_through(tls, b"first") == b"first"
        assert not tls.session_reused
        session = tls.session
    assert session is not None
    return session


def resume(
    edge: Edge, context: ssl.SSLContext, sni: str, session: ssl.SSLSession
) -> tuple[bool, bool]:
    """(reused, admitted) for a connection to ``sni`` offering ``session``."""
    try:
        with edge.connect(context, sni, session=session) as tls:
            reused = tls.session_reused
            return reused, echo_through(tls, b"again") == b"again"
    except (ssl.SSLError, ConnectionError):
        return False, False


@VERSIONS
def test_session_resumes_on_its_own_route(edge: Edge, version: ssl.TLSVersion) -> None:
    context = edge.context(None, version)
    session = first_session(edge, context, "public.example.org")
    resumed = edge.resumed()
    assert resume(edge, context, "public.example.org", session) == (True, True)
    assert eventually(lambda: edge.resumed() == resumed + 1)


@VERSIONS
def test_session_does_not_resume_on_another_open_route(edge: Edge, version: ssl.TLSVersion) -> None:
    context = edge.context(None, version)
    session = first_session(edge, context, "public.example.org")
    resumed, ok = edge.resumed(), edge.handshakes("open", OK)
    assert resume(edge, context, "open.example.org", session) == (False, True)
    assert eventually(lambda: edge.handshakes("open", OK) == ok + 1)
    assert edge.resumed() == resumed


@VERSIONS
@pytest.mark.parametrize("sni", ["localhost", "a.internal.example.org", "billing.example.org"])
def test_session_from_open_route_cannot_skip_a_certificate(
    edge: Edge, version: ssl.TLSVersion, sni: str
) -> None:
    """A session made without a certificate on a one-way route, offered to a route that
    requires one: a full handshake, and the client without a certificate is refused."""
    context = edge.context(None, version)
    session = first_session(edge, context, "public.example.org")
    route = {"localhost": "default", "billing.example.org": "billing"}.get(sni, "internal")
    resumed, missing = edge.resumed(), edge.handshakes(route, MISSING)
    received = edge.main.received + edge.billing.received
    assert resume(edge, context, sni, session) == (False, False)
    assert eventually(lambda: edge.handshakes(route, MISSING) == missing + 1)
    assert edge.resumed() == resumed
    assert edge.main.received + edge.billing.received == received


@VERSIONS
def test_session_from_default_cannot_skip_the_allow_list(
    edge: Edge, version: ssl.TLSVersion
) -> None:
    """client-other is admitted by the default route (no allow-list); its session must not
    carry it past ``*.internal.example.org``'s allow-list."""
    context = edge.context("client-other", version)
    session = first_session(edge, context, "localhost")
    assert resume(edge, context, "localhost", session) == (True, True)  # resumable at home
    resumed, refused = edge.resumed(), edge.handshakes("internal", NOT_ALLOWED)
    assert resume(edge, context, "a.internal.example.org", session) == (False, False)
    assert eventually(lambda: edge.handshakes("internal", NOT_ALLOWED) == refused + 1)
    assert edge.resumed() == resumed


@VERSIONS
def test_session_resumes_on_the_same_wildcard_route(edge: Edge, version: ssl.TLSVersion) -> None:
    """Two names of one route share its context: resumption across them is allowed, and the
    allow-list is checked again on the resumed session."""
    context = edge.context("client", version)
    session = first_session(edge, context, "a.internal.example.org")
    assert resume(edge, context, "b.internal.example.org", session) == (True, True)
