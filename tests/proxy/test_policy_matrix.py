"""The policy table (docs/handshake.md), end to end: every client_auth mode x every kind of
client certificate x TLS 1.2 and 1.3, with a real Python ``ssl`` client, and the metric it
leaves."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtlsproxy.pki import PkiFiles
from tests.proxy.conftest import render_config
from tests.proxy.harness import Client, RunningProxy, Upstream, refused_by

ALLOW = "spiffe_id: spiffe://example.org/ns/prod/sa/frontend"

# (client certificate, mode) -> expected (result, step, reason); ok is ("ok", "none", "none").
OK = ("ok", "none", "none")
VERIFY_FAILURES = {
    "client-untrusted": "client_cert_untrusted",
    "client-expired": "client_cert_expired",
    "client-notyet": "client_cert_not_yet_valid",
    "client-revoked": "client_cert_revoked",
    "client-wrong-eku": "client_cert_bad_usage",
}
CERTS = ["client", None, "client-intermediate", "client-other", *VERIFY_FAILURES]


def expected(mode: str, cert: str | None) -> tuple[str, str, str]:
    if mode == "none" or cert in ("client", "client-intermediate"):
        return OK
    if cert is None:
        if mode == "request":
            return OK
        return ("failed", "client_certificate", "client_cert_missing")
    if cert == "client-other":
        return ("refused", "authorize", "identity_not_allowed")
    return ("failed", "client_verify", VERIFY_FAILURES[cert])


@pytest.fixture(scope="module", params=["openssl", "native"])
def proxies(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    pki: PkiFiles,
    echo: Upstream,
) -> Iterator[dict[str, RunningProxy]]:
    """The three modes, on each engine (the native one hands TLS 1.2 clients to OpenSSL)."""
    directory: Path = tmp_path_factory.mktemp("matrix")
    running = {}
    for mode in ("none", "request", "require"):
        path = directory / f"{mode}.yaml"
        allow = [ALLOW] if mode != "none" else None
        address = f"127.0.0.1:{echo.port}"
        text = render_config(pki, address, mode, allow=allow, name=mode, engine=request.param)
        path.write_text(text)
        running[mode] = RunningProxy(path)
    yield running
    for proxy in running.values():
        proxy.stop()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize("cert", CERTS, ids=lambda c: c or "no-cert")
@pytest.mark.parametrize("mode", ["none", "request", "require"])
def test_policy_table(
    proxies: dict[str, RunningProxy],
    pki: PkiFiles,
    echo: Upstream,
    mode: str,
    cert: str | None,
    version: ssl.TLSVersion,
) -> None:
    proxy = proxies[mode]
    result, step, reason = expected(mode, cert)
    before = proxy.handshakes(result=result, step=step, reason=reason)
    received_before = echo.received
    client = Client(pki, proxy.port(), cert=cert, maximum_version=version, minimum_version=version)

    outcome = refused_by(client)

    if result == "ok":
        assert outcome == ""
    else:
        assert outcome != "", "the client was admitted"
        assert echo.received == received_before, "a refused client reached upstream"
    assert proxy.handshakes(result=result, step=step, reason=reason) == before + 1
    tls_version = "TLSv1.3" if version is ssl.TLSVersion.TLSv1_3 else "TLSv1.2"
    if result == "ok":
        assert proxy.sample("mtlsproxy_tls_sessions_total", version=tls_version) >= 1


def test_refusals_carry_the_right_alert(proxies: dict[str, RunningProxy], pki: PkiFiles) -> None:
    """The alert a refused client reads names the cause (TLS 1.3: after its own Finished)."""
    port = proxies["require"].port()
    cases = {
        None: "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "client-expired": "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "client-revoked": "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "client-untrusted": "TLSV1_ALERT_UNKNOWN_CA",
        "client-wrong-eku": "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    }
    for cert, alert in cases.items():
        assert refused_by(Client(pki, port, cert=cert)) == alert, cert
    tls12 = Client(pki, port, cert="client-other", maximum_version=ssl.TLSVersion.TLSv1_2)
    assert refused_by(tls12) == "TLSV1_ALERT_ACCESS_DENIED"
    # Under TLS 1.3 only the native engine can say why (SSLObject cannot send an alert).
    tls13 = refused_by(Client(pki, port, cert="client-other"))
    native = proxies["require"].config.listeners[0].engine == "native"
    assert tls13 == ("TLSV1_ALERT_ACCESS_DENIED" if native else "closed")
