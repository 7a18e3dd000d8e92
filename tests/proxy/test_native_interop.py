"""The native TLS 1.3 engine over real sockets with openssl s_client and gnutls-cli: every
cipher suite and group, HelloRetryRequest, KeyUpdate both ways, and the alerts only the native
engine can send. (The policy table and the general interop tests run on both engines too.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtlsproxy.pki import PkiFiles
from tests.proxy.harness import RunningProxy, Upstream, interact, start_proxy

LINE = b"through the native engine\n"
SUITES = ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]
GROUPS = {"x25519": "X25519", "P-256": "prime256v1", "P-384": "secp384r1"}


@pytest.fixture(scope="module")
def native(
    tmp_path_factory: pytest.TempPathFactory, pki: PkiFiles, echo: Upstream
) -> Iterator[RunningProxy]:
    allow = ["spiffe_id: spiffe://example.org/ns/prod/sa/frontend"]
    directory = tmp_path_factory.mktemp("native")
    proxy = start_proxy(directory, pki, echo.port, "require", allow=allow, engine="native")
    yield proxy
    proxy.stop()


def s_client(proxy: RunningProxy, pki: PkiFiles, *args: str, cert: str | None = "client",
             stdin: bytes = LINE, until: bytes = LINE.strip()) -> str:  # fmt: skip
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    return interact([*s_client_command(proxy, pki, cert), *args], stdin=stdin, until=until).output


def s_client_command(proxy: RunningProxy, pki: PkiFiles, cert: str | None) -> list[str]:
    command = ["openssl", "s_client", "-connect", f"127.0.0.1:{proxy.port()}"]
    command += ["-CAfile", str(pki.ca_cert), "-verify_return_error", "-servername", "localhost"]
    if cert is not None:
        command += ["-cert", str(pki.directory / f"{cert}.crt")]
        command += ["-key", str(pki.directory / f"{cert}.key")]
    return command


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("group", list(GROUPS))
def test_every_suite_and_group(native: RunningProxy, pki: PkiFiles, suite: str, group: str) -> None:
    output = s_client(native, pki, "-ciphersuites", suite, "-groups", group)
    assert LINE.strip().decode() in output
    assert f"Cipher is {suite}" in output
    assert GROUPS[group] in output or group in output  # "Server Temp Key: X25519" / "prime256v1"


def test_hello_retry_request(native: RunningProxy, pki: PkiFiles) -> None:
    """The client's only key share is X448, which we do not do: we ask for P-256 again."""
    output = s_client(native, pki, "-groups", "X448:P-256")
    assert LINE.strip().decode() in output
    assert "prime256v1" in output


def test_no_common_group_is_a_handshake_failure(native: RunningProxy, pki: PkiFiles) -> None:
    before = native.handshakes(result="failed", reason="no_shared_cipher")
    output = s_client(native, pki, "-groups", "X448", until=b"")
    assert "handshake failure" in output
    assert native.handshakes(result="failed", reason="no_shared_cipher") == before + 1


@pytest.mark.parametrize("command", [b"k\n", b"K\n"], ids=["update", "update-requested"])
def test_key_update(native: RunningProxy, pki: PkiFiles, command: bytes) -> None:
    """s_client's k (KeyUpdate) and K (KeyUpdate, update_requested: we must answer with ours).
    s_client reads a command only as a line of its own in one read: the lines go one by one."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    process = subprocess.Popen(s_client_command(native, pki, "client"), stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    assert process.stdin is not None and process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    output = b""

    def send_and_wait(line: bytes, expect: bytes) -> None:
        nonlocal output
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(line)
        process.stdin.flush()
        deadline = time.monotonic() + 10
        while expect not in output and time.monotonic() < deadline:
            output += process.stdout.read() or b""
            time.sleep(0.02)

    try:
        send_and_wait(b"before\n", b"before")
        send_and_wait(command, b"KEYUPDATE")
        send_and_wait(b"after the key update\n", b"after the key update")
    finally:
        process.kill()
        process.wait()
    assert b"KEYUPDATE" in output
    assert output.count(b"after the key update") >= 1


def test_missing_certificate_gets_certificate_required(native: RunningProxy, pki) -> None:
    output = s_client(native, pki, cert=None, until=b"")
    assert "certificate required" in output


def test_identity_refusal_gets_access_denied(native: RunningProxy, pki: PkiFiles) -> None:
    """Inside the handshake: the client reads why, and nothing reaches the upstream."""
    before = native.handshakes(result="refused", step="authorize")
    output = s_client(native, pki, cert="client-other", until=b"")
    assert "access denied" in output
    assert native.handshakes(result="refused", step="authorize") == before + 1


def test_tls12_client_is_served_through_openssl(native: RunningProxy, pki: PkiFiles) -> None:
    output = s_client(native, pki, "-tls1_2")
    assert LINE.strip().decode() in output


@pytest.mark.parametrize(
    "priority", ["NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+CHACHA20-POLY1305",
                 "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-256-GCM:-GROUP-ALL:+GROUP-SECP384R1"],
    ids=["chacha20", "aes256-p384"],
)  # fmt: skip
def test_gnutls_cli(native: RunningProxy, pki: PkiFiles, priority: str) -> None:
    if shutil.which("gnutls-cli") is None:
        pytest.skip("gnutls-cli is not installed")
    command = ["gnutls-cli", "--x509cafile", str(pki.ca_cert), "--port", str(native.port()),
               "--x509certfile", str(pki.client_cert), "--x509keyfile", str(pki.client_key),
               "--priority", priority, "localhost"]  # fmt: skip
    output = interact(command, stdin=LINE, until=LINE.strip()).output
    assert LINE.strip().decode() in output
    assert "TLS1.3" in output


def test_session_resumption(native: RunningProxy, pki: PkiFiles, tmp_path: Path) -> None:
    """A NewSessionTicket after the full handshake; the second connection resumes with it (no
    certificates, the client re-checked) and still reaches the upstream."""
    session = tmp_path / "session.pem"
    first = s_client(native, pki, "-sess_out", str(session))
    assert LINE.strip().decode() in first and "New, TLSv1.3" in first
    assert session.exists()
    resumed = native.sample("mtlsproxy_tls_resumed_sessions_total")
    second = s_client(native, pki, "-sess_in", str(session))
    assert "Reused, TLSv1.3" in second
    assert LINE.strip().decode() in second
    assert native.sample("mtlsproxy_tls_resumed_sessions_total") == resumed + 1
