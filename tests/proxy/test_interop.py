"""Real TLS clients other than Python's against the proxy: ``openssl s_client``, ``curl`` and
``gnutls-cli``, plus hand-made ClientHellos for what modern clients refuse to send.

Each test checks what the client sees (echoed bytes, an alert, an exit code), what reached the
upstream, and the ``mtlsproxy_handshakes_total`` sample the proxy counted.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import struct
from collections.abc import Iterator

import pytest

from mtlsproxy.pki import PkiFiles
from tests.proxy.harness import (
    Client,
    Interaction,
    RunningProxy,
    Upstream,
    curl,
    eventually,
    http_ok,
    interact,
    send_raw,
    start_proxy,
)

LINE = b"interop-line-7f3a\n"
MODES = ("none", "request", "require")
MISSING = {"result": "failed", "step": "client_certificate", "reason": "client_cert_missing"}


@pytest.fixture(scope="module")
def http_upstream() -> Iterator[Upstream]:
    server = Upstream(behaviour=http_ok(b"hello from the upstream\n"))
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["openssl", "native"])
def proxies(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    pki: PkiFiles,
    echo: Upstream,
    http_upstream: Upstream,
) -> Iterator[dict[str, RunningProxy]]:
    """One proxy per mode in front of the echo upstream, and "http": require, HTTP upstream.
    Shared by the module's tests, which therefore compare counters before and after."""
    directory = tmp_path_factory.mktemp("interop")
    engine = request.param
    running = {mode: start_proxy(directory, pki, echo.port, mode, engine=engine) for mode in MODES}
    running["http"] = start_proxy(directory, pki, http_upstream.port, name="http", engine=engine)
    yield running
    for proxy in running.values():
        proxy.stop()


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")


class Counter:
    """``mtlsproxy_handshakes_total`` matching ``labels``, read now and compared later."""

    def __init__(self, proxy: RunningProxy, **labels: str) -> None:
        self.proxy, self.labels = proxy, labels
        self.before = proxy.handshakes(**labels)

    def grew_by_one(self) -> bool:
        return eventually(lambda: self.proxy.handshakes(**self.labels) == self.before + 1)


def s_client(
    port: int, pki: PkiFiles, *args: str, cert: str | None = "client", quiet: bool = True
) -> Interaction:
    """``openssl s_client`` sending LINE and waiting for the echo (or for the client to quit)."""
    need("openssl")
    command = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}"]
    command += ["-CAfile", str(pki.ca_cert), "-verify_return_error", "-servername", "localhost"]
    if cert is not None:
        command += ["-cert", str(pki.directory / f"{cert}.crt")]
        command += ["-key", str(pki.directory / f"{cert}.key")]
    if quiet:
        command.append("-quiet")
    return interact([*command, *args], stdin=LINE, until=LINE.strip())


def gnutls_cli(port: int, pki: PkiFiles, cert: str | None = "client") -> Interaction:
    need("gnutls-cli")
    command = ["gnutls-cli", "--x509cafile", str(pki.ca_cert), "--port", str(port)]
    if cert is not None:
        command += ["--x509certfile", str(pki.directory / f"{cert}.crt")]
        command += ["--x509keyfile", str(pki.directory / f"{cert}.key")]
    return interact([*command, "localhost"], stdin=LINE, until=LINE.strip())


# openssl s_client


@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
def test_s_client_with_certificate_is_echoed(
    proxies: dict[str, RunningProxy], pki: PkiFiles, echo: Upstream, version: str
) -> None:
    proxy = proxies["require"]
    ok = Counter(proxy, result="ok", route="default")
    received = echo.received
    run = s_client(proxy.port(), pki, version)
    assert LINE.strip() in run.stdout, run.output
    assert echo.received == received + len(LINE)
    assert ok.grew_by_one()


@pytest.mark.parametrize(
    ("version", "alert"),
    [("-tls1_3", "certificate required"), ("-tls1_2", "handshake failure")],
)
def test_s_client_without_certificate_is_refused(
    proxies: dict[str, RunningProxy], pki: PkiFiles, echo: Upstream, version: str, alert: str
) -> None:
    proxy = proxies["require"]
    missing = Counter(proxy, **MISSING)
    received, connections = echo.received, echo.connections
    run = s_client(proxy.port(), pki, version, cert=None)
    assert run.returncode not in (None, 0), run.output
    assert alert in run.output, run.output
    if version == "-tls1_3":
        assert "alert number 116" in run.output
    assert LINE.strip() not in run.stdout
    assert echo.received == received, "a client without a certificate reached the upstream"
    assert echo.connections == connections
    assert missing.grew_by_one()


@pytest.mark.parametrize("mode", ["none", "request"])
def test_s_client_without_certificate_admitted_when_optional(
    proxies: dict[str, RunningProxy], pki: PkiFiles, echo: Upstream, mode: str
) -> None:
    received = echo.received
    run = s_client(proxies[mode].port(), pki, cert=None)
    assert LINE.strip() in run.stdout, run.output
    assert echo.received == received + len(LINE)


@pytest.mark.parametrize(
    ("args", "key_bits", "signature"),
    [
        ((), "256", "ECDSA"),
        (("-tls1_2",), "256", "ECDSA"),
        # The client accepts only RSA-PSS signatures from the server; its own (ECDSA)
        # certificate still signs with ECDSA.
        (
            ("-sigalgs", "rsa_pss_rsae_sha256", "-client_sigalgs", "ecdsa_secp256r1_sha256"),
            "2048",
            "RSA-PSS",
        ),
        (("-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"), "2048", "RSA"),
    ],
    ids=["tls13-default", "tls12-default", "tls13-rsa-pss-only", "tls12-ecdhe-rsa-only"],
)
def test_server_certificate_chosen_by_client_capabilities(
    proxies: dict[str, RunningProxy],
    pki: PkiFiles,
    args: tuple[str, ...],
    key_bits: str,
    signature: str,
) -> None:
    run = s_client(proxies["require"].port(), pki, *args, quiet=False)
    assert LINE.strip() in run.stdout, run.output
    assert f"Server public key is {key_bits} bit" in run.output, run.output
    assert f"Peer signature type: {signature}" in run.output, run.output


# curl against an HTTP upstream


def test_curl_with_certificate_gets_the_upstream_body(
    proxies: dict[str, RunningProxy], pki: PkiFiles, http_upstream: Upstream
) -> None:
    need("curl")
    proxy = proxies["http"]
    ok = Counter(proxy, result="ok")
    received = http_upstream.received
    result = curl(proxy.port(), pki, "--cert", str(pki.client_cert), "--key", str(pki.client_key))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from the upstream\n"
    assert http_upstream.received > received
    assert ok.grew_by_one()


def test_curl_without_certificate_fails(
    proxies: dict[str, RunningProxy], pki: PkiFiles, http_upstream: Upstream
) -> None:
    need("curl")
    proxy = proxies["http"]
    missing = Counter(proxy, **MISSING)
    connections = http_upstream.connections
    result = curl(proxy.port(), pki)
    assert result.returncode in (35, 56), (result.returncode, result.stderr)
    assert result.stdout == ""
    assert http_upstream.connections == connections
    assert missing.grew_by_one()


# gnutls-cli


def test_gnutls_cli_with_certificate_is_echoed(
    proxies: dict[str, RunningProxy], pki: PkiFiles, echo: Upstream
) -> None:
    proxy = proxies["require"]
    ok = Counter(proxy, result="ok")
    received = echo.received
    run = gnutls_cli(proxy.port(), pki)
    assert LINE.strip() in run.stdout, run.output
    assert echo.received == received + len(LINE)
    assert ok.grew_by_one()


def test_gnutls_cli_without_certificate_is_refused(
    proxies: dict[str, RunningProxy], pki: PkiFiles, echo: Upstream
) -> None:
    proxy = proxies["require"]
    missing = Counter(proxy, **MISSING)
    received = echo.received
    run = gnutls_cli(proxy.port(), pki, cert=None)
    assert LINE.strip() not in run.stdout, run.output
    assert run.returncode is not None, "gnutls-cli was still connected: " + run.output
    assert echo.received == received
    assert missing.grew_by_one()


# Clients the policy cannot serve: old versions, weak suites, distrust of our certificate


def legacy_client_hello(version: int = 0x0302) -> bytes:
    """A TLS 1.1-style ClientHello: ``legacy_version`` ``version``, no supported_versions,
    CBC suites only, as an old client sends it (one record)."""
    suites = [0xC013, 0xC014, 0xC009, 0xC00A, 0x002F, 0x0035]
    groups = b"\x00\x0a\x00\x06\x00\x04\x00\x17\x00\x18"  # supported_groups: P-256, P-384
    points = b"\x00\x0b\x00\x02\x01\x00"  # ec_point_formats: uncompressed
    extensions = groups + points
    body = struct.pack("!H", version) + os.urandom(32) + b"\x00"
    body += struct.pack("!H", 2 * len(suites)) + struct.pack(f"!{len(suites)}H", *suites)
    body += b"\x01\x00" + struct.pack("!H", len(extensions)) + extensions
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def is_protocol_version_alert(answer: bytes) -> bool:
    """One fatal protocol_version alert record (any record version 0x0301..0x0303)."""
    return len(answer) == 7 and answer[0] == 0x15 and answer[3:] == b"\x00\x02\x02\x46"


@pytest.mark.parametrize("version", [0x0301, 0x0302])
def test_tls10_and_tls11_client_hellos_are_refused(
    proxies: dict[str, RunningProxy], echo: Upstream, version: int
) -> None:
    proxy = proxies["require"]
    refused = Counter(proxy, result="failed", step="client_hello", reason="unsupported_version")
    connections = echo.connections
    answer = send_raw(proxy.port(), legacy_client_hello(version))
    # RFC 8996 section 5: "MUST respond with a protocol_version alert message and close".
    assert is_protocol_version_alert(answer), answer.hex()
    assert refused.grew_by_one()
    assert echo.connections == connections


def test_openssl_tls11_client_is_refused(proxies: dict[str, RunningProxy], pki: PkiFiles) -> None:
    proxy = proxies["require"]
    refused = Counter(proxy, result="failed", step="client_hello", reason="unsupported_version")
    run = s_client(proxy.port(), pki, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    if "no protocols available" in run.output:
        pytest.skip("this OpenSSL build refuses to send a TLS 1.1 ClientHello")
    assert run.returncode not in (None, 0), run.output
    assert "alert protocol version" in run.output, run.output
    assert LINE.strip() not in run.stdout
    assert refused.grew_by_one()


@pytest.mark.parametrize("cipher", ["AES128-SHA256", "AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-SHA"])
def test_tls12_client_without_ecdhe_aead_suites_is_refused(
    proxies: dict[str, RunningProxy], pki: PkiFiles, echo: Upstream, cipher: str
) -> None:
    proxy = proxies["require"]
    refused = Counter(proxy, result="failed", step="server_hello", reason="no_shared_cipher")
    connections = echo.connections
    run = s_client(proxy.port(), pki, "-tls1_2", "-cipher", f"{cipher}@SECLEVEL=0")
    assert run.returncode not in (None, 0), run.output
    assert "handshake failure" in run.output, run.output
    assert echo.connections == connections
    assert refused.grew_by_one()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_client_distrusting_our_certificate_is_counted(
    proxies: dict[str, RunningProxy], pki: PkiFiles, echo: Upstream, version: ssl.TLSVersion
) -> None:
    proxy = proxies["require"]
    rejected = Counter(
        proxy, result="failed", step="server_certificate", reason="client_rejected_server_cert"
    )
    connections = echo.connections
    context = ssl.create_default_context(cafile=str(pki.rogue_ca_cert))
    context.minimum_version = context.maximum_version = version
    context.load_cert_chain(pki.client_cert, pki.client_key)
    with (
        socket.create_connection(("127.0.0.1", proxy.port()), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(raw, server_hostname="localhost")
    assert rejected.grew_by_one()
    assert echo.connections == connections
    # The same proxy still serves a client that trusts it.
    assert Client(pki, proxy.port(), maximum_version=version).roundtrip(b"ok") == b"ok"
