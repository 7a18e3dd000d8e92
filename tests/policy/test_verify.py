"""ClientVerifier: every development client gets exactly the documented reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from mtlsproxy.pki import PkiFiles, issue_leaf, make_ca, make_crl, new_key, write_pem
from mtlsproxy.policy.model import ClientAuth, ClientAuthMode
from mtlsproxy.policy.verify import CertificateRejected, ClientVerifier
from mtlsproxy.vocabulary.failures import Alert, Reason

NOW = datetime.now(UTC)


def chain_of(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


@pytest.fixture(scope="module")
def verifier(pki: PkiFiles) -> ClientVerifier:
    return ClientVerifier.from_policy(
        ClientAuth(ClientAuthMode.REQUIRE, ca=pki.client_ca_bundle, crl=pki.crl_bundle)
    )


@pytest.mark.parametrize("client", ["client_cert", "client_other_cert"])
def test_valid_clients_verify(pki: PkiFiles, verifier: ClientVerifier, client: str) -> None:
    chain = chain_of(getattr(pki, client))
    verified = verifier.verify(chain, NOW)
    assert verified.chain[0] == chain[0]
    assert verified.chain[-1] == chain_of(pki.ca_cert)[0]
    assert verified.identity.sha256 == chain[0].fingerprint(hashes.SHA256()).hex()


def test_intermediate_chain_builds_three_certificates(
    pki: PkiFiles, verifier: ClientVerifier
) -> None:
    leaf, inter = chain_of(pki.client_intermediate_cert)
    verified = verifier.verify([leaf, inter], NOW)
    assert verified.chain == (leaf, inter, chain_of(pki.ca_cert)[0])
    assert verified.identity.spiffe_id == "spiffe://example.org/ns/prod/sa/frontend"


@pytest.mark.parametrize(
    ("client", "reason", "alert"),
    [
        ("client_expired_cert", Reason.CLIENT_CERT_EXPIRED, Alert.CERTIFICATE_EXPIRED),
        ("client_notyet_cert", Reason.CLIENT_CERT_NOT_YET_VALID, Alert.BAD_CERTIFICATE),
        ("client_revoked_cert", Reason.CLIENT_CERT_REVOKED, Alert.CERTIFICATE_REVOKED),
        ("client_wrong_eku_cert", Reason.CLIENT_CERT_BAD_USAGE, Alert.UNSUPPORTED_CERTIFICATE),
        ("client_untrusted_cert", Reason.CLIENT_CERT_UNTRUSTED, Alert.UNKNOWN_CA),
    ],
)
def test_bad_clients_get_their_reason(
    pki: PkiFiles, verifier: ClientVerifier, client: str, reason: Reason, alert: Alert
) -> None:
    with pytest.raises(CertificateRejected) as caught:
        verifier.verify(chain_of(getattr(pki, client)), NOW)
    assert caught.value.reason is reason
    assert caught.value.alert is alert
    assert "CN=frontend" in caught.value.detail


def test_intermediate_not_sent_is_untrusted(pki: PkiFiles, verifier: ClientVerifier) -> None:
    leaf, _ = chain_of(pki.client_intermediate_cert)
    with pytest.raises(CertificateRejected) as caught:
        verifier.verify([leaf], NOW)
    assert caught.value.reason is Reason.CLIENT_CERT_UNTRUSTED


def test_empty_chain_is_missing(verifier: ClientVerifier) -> None:
    with pytest.raises(CertificateRejected) as caught:
        verifier.verify([], NOW)
    assert caught.value.reason is Reason.CLIENT_CERT_MISSING


def test_is_revoked(pki: PkiFiles, verifier: ClientVerifier) -> None:
    assert verifier.is_revoked(chain_of(pki.client_revoked_cert)[0])
    assert not verifier.is_revoked(chain_of(pki.client_cert)[0])


def test_crls_are_exposed_with_next_update(pki: PkiFiles, verifier: ClientVerifier) -> None:
    assert [c.issuer for c in verifier.crls] == [
        "CN=mtlsproxy development root CA",
        "CN=mtlsproxy development client intermediate CA",
    ]
    assert [c.anchored for c in verifier.crls] == [True, False]
    for loaded in verifier.crls:
        assert loaded.next_update is not None and loaded.next_update > NOW
    assert verifier.ca_certificates == tuple(chain_of(pki.ca_cert))


def test_revoked_intermediate_is_revoked(tmp_path: Path) -> None:
    """A CRL issued by the root can revoke the intermediate: the whole path is checked."""
    root_key, inter_key = new_key(), new_key()
    root = make_ca("root", root_key)
    inter = make_ca("inter", inter_key, issuer=root, issuer_key=root_key, path_length=0)
    leaf = issue_leaf(new_key(), inter, inter_key, common_name="svc")
    crl = make_crl(root, root_key, [inter.serial_number], next_update=NOW + timedelta(days=1))
    auth = ClientAuth(
        ClientAuthMode.REQUIRE,
        ca=write_pem(tmp_path / "ca.pem", root),
        crl=write_pem(tmp_path / "crl.pem", crl),
    )
    with pytest.raises(CertificateRejected) as caught:
        ClientVerifier.from_policy(auth).verify([leaf, inter], NOW)
    assert caught.value.reason is Reason.CLIENT_CERT_REVOKED
    assert "CN=inter" in caught.value.detail


def test_expired_intermediate_is_expired(tmp_path: Path) -> None:
    root_key, inter_key = new_key(), new_key()
    root = make_ca("root", root_key)
    inter = make_ca(
        "inter",
        inter_key,
        issuer=root,
        issuer_key=root_key,
        not_before=NOW - timedelta(days=10),
        not_after=NOW - timedelta(days=1),
    )
    leaf = issue_leaf(new_key(), inter, inter_key, common_name="svc")
    verifier = ClientVerifier([root])
    with pytest.raises(CertificateRejected) as caught:
        verifier.verify([leaf, inter], NOW)
    assert caught.value.reason is Reason.CLIENT_CERT_EXPIRED
    assert "CN=inter" in caught.value.detail


def test_forged_signature_is_invalid() -> None:
    root_key = new_key()
    root = make_ca("root", root_key)
    forged = issue_leaf(new_key(), root, new_key(), common_name="svc")  # root's name, other key
    with pytest.raises(CertificateRejected) as caught:
        ClientVerifier([root]).verify([forged], NOW)
    assert caught.value.reason is Reason.CLIENT_CERT_INVALID


def test_leaf_without_san_or_eku_verifies() -> None:
    """mTLS clients named by CN only are accepted (the Web PKI profile would demand a SAN)."""
    root_key = new_key()
    root = make_ca("root", root_key)
    leaf = issue_leaf(new_key(), root, root_key, common_name="billing", usage="none")
    verified = ClientVerifier([root]).verify([leaf], NOW)
    assert verified.identity.subject_cn == "billing"
    assert verified.identity.uris == ()


def test_crl_with_bad_signature_is_rejected_at_load(pki: PkiFiles, tmp_path: Path) -> None:
    (root,) = chain_of(pki.ca_cert)
    forged = make_crl(root, new_key(), [1], next_update=NOW + timedelta(days=1))
    crl = write_pem(tmp_path / "forged.crl", forged)
    auth = ClientAuth(ClientAuthMode.REQUIRE, ca=pki.client_ca_bundle, crl=crl)
    with pytest.raises(ValueError, match="not signed by that CA's key"):
        ClientVerifier.from_policy(auth)


def test_der_crl_file_with_two_crls(pki: PkiFiles, tmp_path: Path) -> None:
    der = b"".join(
        x509.load_pem_x509_crl(p.read_bytes()).public_bytes(serialization.Encoding.DER)
        for p in (pki.ca_crl, pki.intermediate_crl)
    )
    (tmp_path / "crls.der").write_bytes(der)
    auth = ClientAuth(ClientAuthMode.REQUIRE, ca=pki.client_ca_bundle, crl=tmp_path / "crls.der")
    verifier = ClientVerifier.from_policy(auth)
    assert len(verifier.crls) == 2
    assert verifier.is_revoked(chain_of(pki.client_revoked_cert)[0])


@pytest.mark.parametrize("content", [b"", b"garbage", b"-----BEGIN X509 CRL-----\nxx\n"])
def test_unreadable_crl_files_fail_at_load(pki: PkiFiles, tmp_path: Path, content: bytes) -> None:
    (tmp_path / "bad.crl").write_bytes(content)
    auth = ClientAuth(ClientAuthMode.REQUIRE, ca=pki.client_ca_bundle, crl=tmp_path / "bad.crl")
    with pytest.raises(ValueError, match=r"bad\.crl"):
        ClientVerifier.from_policy(auth)


def test_missing_ca_bundle_fails_at_load(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        ClientVerifier.from_policy(ClientAuth(ClientAuthMode.REQUIRE, ca=tmp_path / "nope.pem"))
