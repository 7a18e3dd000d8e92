"""Certificate rotation without dropping a handshake, and reloads that refuse bad material."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mtlsproxy.pki import PkiFiles, issue_leaf, new_key, write_pem
from tests.proxy.harness import Client, RunningProxy, Upstream, eventually

CONFIG = """\
listeners:
  - name: api
    listen: 127.0.0.1:0
    tls:
      certificates:
        - {{certificate: {certs}/server.crt, key: {certs}/server.key}}
    client_auth:
      mode: require
      ca: {pki}/client-ca.pem
      crl: {pki}/crls.pem
    upstream: 127.0.0.1:{upstream}
metrics:
  listen: 127.0.0.1:0
reload:
  interval: 100ms
log:
  format: text
  level: warning
"""


def mint_server(pki_files: PkiFiles, directory: Path) -> int:
    """A new server certificate and key from the development CA; returns its serial."""
    ca = x509.load_pem_x509_certificate(pki_files.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki_files.ca_key.read_bytes(), None)
    key = new_key()
    cert = issue_leaf(
        key, ca, ca_key, common_name="localhost", dns_names=["localhost"], usage="server"
    )  # type: ignore[arg-type]
    directory.mkdir(parents=True, exist_ok=True)
    write_pem(directory / "server.crt", cert)
    write_pem(directory / "server.key", key)
    return int(cert.serial_number)


def swap_data_link(certs: Path, version: str) -> None:
    """What kubelet does to a mounted Secret: a new ``..<timestamp>`` directory, then an
    atomic rename of the ``..data`` symlink onto it."""
    temporary = certs / "..data_tmp"
    temporary.symlink_to(version)
    os.replace(temporary, certs / "..data")


def served_serial(pki_files: PkiFiles, port: int) -> int:
    with Client(pki_files, port).connect() as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


class HandshakeLoop:
    """Handshakes back to back from a thread, counting failures, until stopped."""

    def __init__(self, pki_files: PkiFiles, port: int) -> None:
        self.client = Client(pki_files, port)
        self.ok = self.failed = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                assert self.client.roundtrip(b"x") == b"x"
                self.ok += 1
            except (OSError, AssertionError) as error:
                self.failed += 1
                self.errors.append(repr(error))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture
def k8s_certs(tmp_path: Path, pki: PkiFiles) -> tuple[Path, int]:
    certs = tmp_path / "certs"
    serial = mint_server(pki, certs / "..2026_11_28_01")
    (certs / "..data").symlink_to("..2026_11_28_01")
    for name in ("server.crt", "server.key"):
        (certs / name).symlink_to(f"..data/{name}")
    return certs, serial


@pytest.fixture
def rotating_proxy(
    tmp_path: Path, pki: PkiFiles, upstream: Upstream, k8s_certs: tuple[Path, int]
) -> Iterator[RunningProxy]:
    certs, _ = k8s_certs
    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG.format(certs=certs, pki=pki.directory, upstream=upstream.port))
    proxy = RunningProxy(path)
    yield proxy
    proxy.stop()


def test_kubernetes_secret_swap_under_load(
    rotating_proxy: RunningProxy, pki: PkiFiles, k8s_certs: tuple[Path, int]
) -> None:
    certs, first = k8s_certs
    port = rotating_proxy.port()
    assert served_serial(pki, port) == first
    loop = HandshakeLoop(pki, port)
    try:
        time.sleep(0.3)
        second = mint_server(pki, certs / "..2026_11_28_02")
        swap_data_link(certs, "..2026_11_28_02")
        swapped = time.monotonic()
        assert eventually(lambda: served_serial(pki, port) == second, timeout=5)
        seen_after = time.monotonic() - swapped
        time.sleep(0.3)
    finally:
        loop.stop()
    assert loop.failed == 0, loop.errors[:3]
    assert loop.ok > 10
    assert seen_after < 2  # the interval is 100 ms
    assert rotating_proxy.sample("mtlsproxy_config_reloads_total", result="ok") >= 1


def test_write_then_rename_with_a_mismatched_moment(
    rotating_proxy: RunningProxy, pki: PkiFiles, k8s_certs: tuple[Path, int], tmp_path: Path
) -> None:
    """cert-manager-style: each file written aside and renamed in place, one after the other.
    Between the two renames the pair does not match: that state is refused, the old pair
    keeps serving, and the new pair is taken once complete."""
    certs, first = k8s_certs
    port = rotating_proxy.port()
    staging = tmp_path / "staging"
    second = mint_server(pki, staging)
    loop = HandshakeLoop(pki, port)
    try:
        os.replace(staging / "server.crt", certs / "..2026_11_28_01" / "server.crt")
        time.sleep(0.5)  # several polls see a certificate with the wrong key
        assert served_serial(pki, port) == first
        os.replace(staging / "server.key", certs / "..2026_11_28_01" / "server.key")
        assert eventually(lambda: served_serial(pki, port) == second, timeout=5)
    finally:
        loop.stop()
    assert loop.failed == 0, loop.errors[:3]
    assert rotating_proxy.sample("mtlsproxy_config_reloads_total", result="failed") >= 1


def test_bad_material_is_refused_and_the_old_keeps_serving(
    rotating_proxy: RunningProxy, pki: PkiFiles, k8s_certs: tuple[Path, int], tmp_path: Path
) -> None:
    certs, first = k8s_certs
    port = rotating_proxy.port()
    live = certs / "..2026_11_28_01"
    for bad_key in (pki.client_key.read_bytes(), b"-----BEGIN PRIVATE KEY-----\nMIIE"):
        failed_before = rotating_proxy.sample("mtlsproxy_config_reloads_total", result="failed")
        (tmp_path / "bad.key").write_bytes(bad_key)
        original = live / "server.key"
        backup = tmp_path / "good.key"
        shutil.copy(original, backup)
        os.replace(tmp_path / "bad.key", original)
        assert eventually(
            lambda before=failed_before: (
                rotating_proxy.sample("mtlsproxy_config_reloads_total", result="failed") > before
            ),
            timeout=5,
        )
        assert served_serial(pki, port) == first
        os.replace(backup, original)
    # An expired certificate is refused too.
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    key = serialization.load_pem_private_key((live / "server.key").read_bytes(), None)
    now = datetime.now(UTC)
    expired = issue_leaf(
        key, ca, ca_key, common_name="localhost", dns_names=["localhost"], usage="server",
        not_before=now - timedelta(days=10), not_after=now - timedelta(days=1),
    )  # type: ignore[arg-type]  # fmt: skip
    failed_before = rotating_proxy.sample("mtlsproxy_config_reloads_total", result="failed")
    write_pem(tmp_path / "expired.crt", expired)
    os.replace(tmp_path / "expired.crt", live / "server.crt")
    assert eventually(
        lambda: (
            rotating_proxy.sample("mtlsproxy_config_reloads_total", result="failed") > failed_before
        ),
        timeout=5,
    )
    assert served_serial(pki, port) == first


def test_open_connections_survive_a_rotation(
    rotating_proxy: RunningProxy, pki: PkiFiles, k8s_certs: tuple[Path, int]
) -> None:
    certs, _ = k8s_certs
    port = rotating_proxy.port()
    with Client(pki, port).connect() as tls:
        tls.sendall(b"before")
        assert tls.recv(6) == b"before"
        second = mint_server(pki, certs / "..2026_11_28_02")
        swap_data_link(certs, "..2026_11_28_02")
        assert eventually(lambda: served_serial(pki, port) == second, timeout=5)
        tls.sendall(b"after")
        assert tls.recv(5) == b"after"


def test_sessions_from_before_a_rotation_do_a_full_handshake(
    rotating_proxy: RunningProxy, pki: PkiFiles, k8s_certs: tuple[Path, int]
) -> None:
    """New material means a new TLS context, so its ticket keys are new: sessions resumed
    after a CA or CRL change are verified afresh."""
    certs, _ = k8s_certs
    port = rotating_proxy.port()
    client = Client(pki, port, maximum_version=ssl.TLSVersion.TLSv1_2)
    context = client.context()

    def connect(session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        return context.wrap_socket(raw, server_hostname="localhost", session=session)

    with connect() as tls:
        session = tls.session
    with connect(session) as tls:
        assert tls.session_reused
    second = mint_server(pki, certs / "..2026_11_28_02")
    swap_data_link(certs, "..2026_11_28_02")
    assert eventually(lambda: served_serial(pki, port) == second, timeout=5)
    with connect(session) as tls:
        assert not tls.session_reused
