"""Signature schemes for CertificateVerify (RFC 8446 sections 4.2.3, 4.4.3)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from cryptography import x509

from mtlsproxy import pki
from mtlsproxy.engine.native import signatures as sigs
from mtlsproxy.engine.native.alerts import TLSAlert
from mtlsproxy.engine.native.signatures import SignatureScheme as S
from mtlsproxy.vocabulary.failures import Alert

HASH = bytes(range(32))


@dataclass(frozen=True)
class Credential:
    chain: tuple[x509.Certificate, ...]
    key: object


def credential(kind: pki.KeyKind) -> Credential:
    ca_key = pki.new_key()
    ca = pki.make_ca("test CA", ca_key)
    key = pki.new_key(kind)
    return Credential((pki.issue_leaf(key, ca, ca_key, common_name=kind),), key)


@pytest.fixture(scope="module")
def creds() -> dict[str, Credential]:
    return {kind: credential(kind) for kind in ("ec256", "ec384", "ed25519", "rsa2048")}


def test_signed_content_layout() -> None:
    server = sigs.signed_content(HASH, server=True)
    assert server == b" " * 64 + b"TLS 1.3, server CertificateVerify" + b"\x00" + HASH
    client = sigs.signed_content(HASH, server=False)
    assert client[64:97] == b"TLS 1.3, client CertificateVerify"


@pytest.mark.parametrize(
    ("kind", "scheme"),
    [
        ("ec256", S.ECDSA_SECP256R1_SHA256),
        ("ec384", S.ECDSA_SECP384R1_SHA384),
        ("ed25519", S.ED25519),
        ("rsa2048", S.RSA_PSS_RSAE_SHA256),
        ("rsa2048", S.RSA_PSS_RSAE_SHA384),
        ("rsa2048", S.RSA_PSS_RSAE_SHA512),
    ],
)
def test_sign_verify_round_trip(creds: dict[str, Credential], kind: str, scheme: S) -> None:
    cred = creds[kind]
    content = sigs.signed_content(HASH, server=False)
    signature = sigs.sign(cred.key, scheme, content)
    sigs.verify(cred.chain[0], scheme, signature, content)
    bad = bytearray(signature)
    bad[len(bad) // 2] ^= 1
    with pytest.raises(TLSAlert) as info:
        sigs.verify(cred.chain[0], scheme, bytes(bad), content)
    assert info.value.alert is Alert.DECRYPT_ERROR
    # The same signature over the server's context string does not verify either.
    with pytest.raises(TLSAlert):
        sigs.verify(cred.chain[0], scheme, signature, sigs.signed_content(HASH, server=True))


def test_scheme_must_fit_the_key(creds: dict[str, Credential]) -> None:
    content = sigs.signed_content(HASH, server=False)
    signature = sigs.sign(creds["ec256"].key, S.ECDSA_SECP256R1_SHA256, content)
    for scheme in (S.ECDSA_SECP384R1_SHA384, S.RSA_PSS_RSAE_SHA256, S.RSA_PSS_PSS_SHA256):
        with pytest.raises(TLSAlert) as info:
            sigs.verify(creds["ec256"].chain[0], scheme, signature, content)
        assert info.value.alert is Alert.ILLEGAL_PARAMETER
    for legacy in (0x0401, 0x0201, 0x0603):  # rsa_pkcs1_sha256, rsa_pkcs1_sha1, P-521
        with pytest.raises(TLSAlert) as info:
            sigs.verify(creds["ec256"].chain[0], legacy, signature, content)
        assert info.value.alert is Alert.ILLEGAL_PARAMETER
    with pytest.raises(ValueError):
        sigs.sign(creds["ec256"].key, S.ED25519, content)


def test_choose_prefers_ecdsa_then_ed25519_then_rsa(creds: dict[str, Credential]) -> None:
    rsa, ed, ec = creds["rsa2048"], creds["ed25519"], creds["ec256"]
    everything = [S.RSA_PSS_RSAE_SHA256, S.ED25519, S.ECDSA_SECP256R1_SHA256]
    assert sigs.choose_credential([rsa, ed, ec], everything) == (ec, S.ECDSA_SECP256R1_SHA256)
    assert sigs.choose_credential([rsa, ed], everything) == (ed, S.ED25519)
    assert sigs.choose_credential([rsa], everything) == (rsa, S.RSA_PSS_RSAE_SHA256)
    # Only schemes the client offers count; within RSA-PSS, the client's order.
    assert sigs.choose_credential([rsa, ec], [S.RSA_PSS_RSAE_SHA512, S.RSA_PSS_RSAE_SHA256]) == (
        rsa,
        S.RSA_PSS_RSAE_SHA512,
    )
    assert sigs.choose_credential([ec], [S.ECDSA_SECP384R1_SHA384, 0x0401]) is None
    assert sigs.choose_credential([creds["ec384"]], [S.ECDSA_SECP384R1_SHA384]) == (
        creds["ec384"],
        S.ECDSA_SECP384R1_SHA384,
    )
    assert sigs.choose_credential([], everything) is None


def test_schemes_for_key(creds: dict[str, Credential]) -> None:
    assert sigs.schemes_for_key(creds["ec256"].key) == (S.ECDSA_SECP256R1_SHA256,)
    assert sigs.schemes_for_key(creds["rsa2048"].key.public_key(), pss_certificate=True) == (
        S.RSA_PSS_PSS_SHA256,
        S.RSA_PSS_PSS_SHA384,
        S.RSA_PSS_PSS_SHA512,
    )
    assert sigs.schemes_for_key(object()) == ()
