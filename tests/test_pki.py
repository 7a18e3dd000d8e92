"""The development PKI: real certificates that OpenSSL accepts too."""

from __future__ import annotations

import shutil
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from mtlsproxy.pki import ROOT_CA_NAME, PkiFiles, init

openssl = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(openssl is None, reason="openssl is not installed")


def certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def test_every_file_exists_and_keys_are_private(pki: PkiFiles) -> None:
    for name in PkiFiles.__dataclass_fields__:
        path: Path = getattr(pki, name)
        assert path.exists(), name
        if name.endswith("_key"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
            assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert PkiFiles.at(pki.directory) == pki


def test_root_ca_profile(pki: PkiFiles) -> None:
    (ca,) = certs(pki.ca_cert)
    assert ca.subject.rfc4514_string() == f"CN={ROOT_CA_NAME}"
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = ca.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert certs(pki.client_ca_bundle) == [ca]


def test_intermediate_has_path_length_zero(pki: PkiFiles) -> None:
    (inter,) = certs(pki.intermediate_cert)
    assert inter.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert certs(pki.client_intermediate_cert)[1] == inter


def test_server_certificates(pki: PkiFiles) -> None:
    for path, key_type in (
        (pki.server_cert, ec.EllipticCurvePublicKey),
        (pki.server_rsa_cert, rsa.RSAPublicKey),
    ):
        (leaf,) = certs(path)
        assert isinstance(leaf.public_key(), key_type)
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == ["localhost"]
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_validity_windows_follow_now(tmp_path: Path) -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    files = init(tmp_path, hosts=("svc.example",), now=now)
    (expired,) = certs(files.client_expired_cert)
    (notyet,) = certs(files.client_notyet_cert)
    assert expired.not_valid_after_utc == now - timedelta(days=1)
    assert notyet.not_valid_before_utc == now + timedelta(days=1)
    (server,) = certs(files.server_cert)
    assert server.not_valid_before_utc < now < server.not_valid_after_utc


def test_crl_lists_the_revoked_client(pki: PkiFiles) -> None:
    crl = x509.load_pem_x509_crl(pki.ca_crl.read_bytes())
    (ca,) = certs(pki.ca_cert)
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    (revoked,) = certs(pki.client_revoked_cert)
    assert crl.get_revoked_certificate_by_serial_number(revoked.serial_number) is not None
    assert len(crl) == 1
    assert len(x509.load_pem_x509_crl(pki.intermediate_crl.read_bytes())) == 0


def run_openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert openssl is not None
    return subprocess.run(
        [openssl, "verify", *map(str, args)], capture_output=True, text=True, check=False
    )


@needs_openssl
@pytest.mark.parametrize("client", ["client_cert", "client_other_cert", "client_revoked_cert"])
def test_openssl_accepts_clients(pki: PkiFiles, client: str) -> None:
    result = run_openssl("-purpose", "sslclient", "-CAfile", pki.ca_cert, getattr(pki, client))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_openssl
def test_openssl_accepts_intermediate_chain(pki: PkiFiles) -> None:
    result = run_openssl(
        "-purpose", "sslclient", "-CAfile", pki.ca_cert, "-untrusted", pki.intermediate_cert,
        pki.client_intermediate_cert,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@needs_openssl
def test_openssl_accepts_servers(pki: PkiFiles) -> None:
    for server in (pki.server_cert, pki.server_rsa_cert):
        result = run_openssl("-purpose", "sslserver", "-CAfile", pki.ca_cert, server)
        assert result.returncode == 0, result.stdout + result.stderr


@needs_openssl
@pytest.mark.parametrize(
    ("client", "error"),
    [
        ("client_expired_cert", "error 10 "),  # X509_V_ERR_CERT_HAS_EXPIRED
        ("client_notyet_cert", "error 9 "),  # X509_V_ERR_CERT_NOT_YET_VALID
        ("client_wrong_eku_cert", "error 26 "),  # X509_V_ERR_INVALID_PURPOSE
        ("client_untrusted_cert", "error 20 "),  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    ],
)
def test_openssl_rejects_bad_clients(pki: PkiFiles, client: str, error: str) -> None:
    result = run_openssl("-purpose", "sslclient", "-CAfile", pki.ca_cert, getattr(pki, client))
    assert result.returncode != 0
    assert error in result.stdout + result.stderr


@needs_openssl
def test_openssl_crl_check_flags_the_revoked_client(pki: PkiFiles) -> None:
    args = ("-crl_check", "-CRLfile", pki.ca_crl, "-CAfile", pki.ca_cert)
    assert run_openssl(*args, pki.client_cert).returncode == 0
    result = run_openssl(*args, pki.client_revoked_cert)
    assert result.returncode != 0
    assert "error 23 " in result.stdout + result.stderr  # X509_V_ERR_CERT_REVOKED
