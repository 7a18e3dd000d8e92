"""TLS 1.3 signature schemes for CertificateVerify (RFC 8446 sections 4.2.3 and 4.4.3).

Supported: ecdsa_secp256r1_sha256, ecdsa_secp384r1_sha384, ed25519, rsa_pss_rsae_sha256/384/512
(RSA keys in rsaEncryption certificates) and rsa_pss_pss_sha256/384/512 (RSASSA-PSS
certificates). PKCS#1 v1.5 and SHA-1 schemes are not allowed in CertificateVerify (section
4.4.3) and are never chosen or accepted.

:func:`choose_credential` picks our certificate and scheme from the client's
signature_algorithms, preferring ECDSA, then Ed25519, then RSA-PSS. :func:`signed_content`
builds the section 4.4.3 input; :func:`sign` and :func:`verify` apply a scheme; a signature that
does not verify is ``decrypt_error``, a scheme that does not fit the key ``illegal_parameter``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Final, Protocol, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from mtlsproxy.engine.native.alerts import TLSAlert
from mtlsproxy.vocabulary.failures import Alert


class SignatureScheme(enum.IntEnum):
    ECDSA_SECP256R1_SHA256 = 0x0403
    ECDSA_SECP384R1_SHA384 = 0x0503
    ED25519 = 0x0807
    RSA_PSS_RSAE_SHA256 = 0x0804
    RSA_PSS_RSAE_SHA384 = 0x0805
    RSA_PSS_RSAE_SHA512 = 0x0806
    RSA_PSS_PSS_SHA256 = 0x0809
    RSA_PSS_PSS_SHA384 = 0x080A
    RSA_PSS_PSS_SHA512 = 0x080B


# Our preference, and what we offer in CertificateRequest.signature_algorithms.
SUPPORTED_SCHEMES: Final[tuple[SignatureScheme, ...]] = (
    SignatureScheme.ECDSA_SECP256R1_SHA256,
    SignatureScheme.ECDSA_SECP384R1_SHA384,
    SignatureScheme.ED25519,
    SignatureScheme.RSA_PSS_RSAE_SHA256,
    SignatureScheme.RSA_PSS_RSAE_SHA384,
    SignatureScheme.RSA_PSS_RSAE_SHA512,
    SignatureScheme.RSA_PSS_PSS_SHA256,
    SignatureScheme.RSA_PSS_PSS_SHA384,
    SignatureScheme.RSA_PSS_PSS_SHA512,
)

_HASHES: Final[dict[SignatureScheme, type[hashes.HashAlgorithm]]] = {
    SignatureScheme.ECDSA_SECP256R1_SHA256: hashes.SHA256,
    SignatureScheme.ECDSA_SECP384R1_SHA384: hashes.SHA384,
    SignatureScheme.RSA_PSS_RSAE_SHA256: hashes.SHA256,
    SignatureScheme.RSA_PSS_RSAE_SHA384: hashes.SHA384,
    SignatureScheme.RSA_PSS_RSAE_SHA512: hashes.SHA512,
    SignatureScheme.RSA_PSS_PSS_SHA256: hashes.SHA256,
    SignatureScheme.RSA_PSS_PSS_SHA384: hashes.SHA384,
    SignatureScheme.RSA_PSS_PSS_SHA512: hashes.SHA512,
}
# The ECDSA signature algorithm of each ECDSA scheme (immutable: built once, not per call).
_ECDSA: Final = {
    SignatureScheme.ECDSA_SECP256R1_SHA256: ec.ECDSA(hashes.SHA256()),
    SignatureScheme.ECDSA_SECP384R1_SHA384: ec.ECDSA(hashes.SHA384()),
}
_CURVES: Final = {
    SignatureScheme.ECDSA_SECP256R1_SHA256: "secp256r1",
    SignatureScheme.ECDSA_SECP384R1_SHA384: "secp384r1",
}
# Each curve's schemes, from _CURVES (a client's key is looked up once per handshake).
_EC_SCHEMES: Final = {
    curve: tuple(s for s, name in _CURVES.items() if name == curve) for curve in _CURVES.values()
}
# The schemes by code point: a dict lookup, where SignatureScheme(code) is an enum call.
_SCHEMES_BY_CODE: Final[dict[int, SignatureScheme]] = {
    int(scheme): scheme for scheme in SignatureScheme
}
_RSAE: Final = (
    SignatureScheme.RSA_PSS_RSAE_SHA256,
    SignatureScheme.RSA_PSS_RSAE_SHA384,
    SignatureScheme.RSA_PSS_RSAE_SHA512,
)
_PSS: Final = (
    SignatureScheme.RSA_PSS_PSS_SHA256,
    SignatureScheme.RSA_PSS_PSS_SHA384,
    SignatureScheme.RSA_PSS_PSS_SHA512,
)

# SubjectPublicKeyInfo algorithm of an RSASSA-PSS key (RFC 4055 section 3.1).
RSASSA_PSS_OID: Final = x509.ObjectIdentifier("1.2.840.113549.1.1.10")

SERVER_CONTEXT: Final = b"TLS 1.3, server CertificateVerify"
CLIENT_CONTEXT: Final = b"TLS 1.3, client CertificateVerify"


# Section 4.4.3: what precedes the transcript hash in the signed content, per side.
_SERVER_PREFIX: Final = b" " * 64 + SERVER_CONTEXT + b"\x00"
_CLIENT_PREFIX: Final = b" " * 64 + CLIENT_CONTEXT + b"\x00"


def signed_content(transcript_hash: bytes, *, server: bool) -> bytes:
    """Section 4.4.3: 64 spaces, the context string, a zero byte, then the transcript hash."""
    return (_SERVER_PREFIX if server else _CLIENT_PREFIX) + transcript_hash


_EC: Final = "ec"
_ED25519: Final = "ed25519"
_RSA: Final = "rsa"
_UNKNOWN: Final = "unknown"


_families: Final[dict[type, str | None]] = {}  # a few key classes: cryptography's, per algorithm


def _family_of_type(key_type: type) -> str | None:
    """The key family of a key class (private or public), or None; per class, not per call
    (an ABC isinstance costs a microsecond each)."""
    family = _families.get(key_type, _UNKNOWN)
    if family is _UNKNOWN:
        if issubclass(key_type, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
            family = _EC
        elif issubclass(key_type, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
            family = _ED25519
        elif issubclass(key_type, rsa.RSAPrivateKey | rsa.RSAPublicKey):
            family = _RSA
        else:
            family = None
        _families[key_type] = family
    return family


def schemes_for_key(key: object, *, pss_certificate: bool = False) -> tuple[SignatureScheme, ...]:
    """The schemes a key (private or public) can sign or verify with, in our preference.

    ``pss_certificate``: the certificate's key is RSASSA-PSS (rsa_pss_pss_*), not
    rsaEncryption (rsa_pss_rsae_*) - section 4.2.3.
    """
    family = _family_of_type(type(key))
    if family is _EC:
        return _EC_SCHEMES.get(key.curve.name, ())  # type: ignore[attr-defined]
    if family is _ED25519:
        return (SignatureScheme.ED25519,)
    if family is _RSA:
        return _PSS if pss_certificate else _RSAE
    return ()


class _Credential(Protocol):
    @property
    def chain(self) -> tuple[x509.Certificate, ...]: ...

    @property
    def key(self) -> object: ...


C = TypeVar("C", bound=_Credential)


def _family_rank(scheme: SignatureScheme) -> int:
    if scheme in _CURVES:
        return 0
    if scheme is SignatureScheme.ED25519:
        return 1
    return 2


_FAMILY_RANK: Final = {scheme: _family_rank(scheme) for scheme in SignatureScheme}


def usable_schemes(credentials: Sequence[C]) -> tuple[tuple[C, frozenset[SignatureScheme]], ...]:
    """Each credential with the schemes its key can sign with (computed once per route)."""
    return tuple(
        (
            credential,
            frozenset(
                schemes_for_key(
                    credential.key,
                    pss_certificate=credential.chain[0].public_key_algorithm_oid == RSASSA_PSS_OID,
                )
            ),
        )
        for credential in credentials
    )


def choose_credential(
    credentials: Sequence[C], client_schemes: Sequence[int]
) -> tuple[C, SignatureScheme] | None:
    """Our credential and scheme for the client's signature_algorithms, or ``None``.

    ECDSA first, then Ed25519, then RSA-PSS; within a family, the client's order. Credentials
    keep config order among equals.
    """
    return choose_usable(usable_schemes(credentials), client_schemes)


def choose_usable(
    usable: Sequence[tuple[C, frozenset[SignatureScheme]]], client_schemes: Sequence[int]
) -> tuple[C, SignatureScheme] | None:
    """:func:`choose_credential` on :func:`usable_schemes`' answer."""
    known = _SCHEMES_BY_CODE
    offered = [known[s] for s in client_schemes if s in known]
    best: tuple[tuple[int, int, int], C, SignatureScheme] | None = None
    for index, (credential, schemes) in enumerate(usable):
        for position, scheme in enumerate(offered):
            if scheme in schemes:
                rank = (_FAMILY_RANK[scheme], index, position)
                if best is None or rank < best[0]:
                    best = (rank, credential, scheme)
    return None if best is None else (best[1], best[2])


def sign(private_key: object, scheme: SignatureScheme, content: bytes) -> bytes:
    """Sign ``content`` (from :func:`signed_content`) with ``scheme``."""
    return signer(private_key, scheme)(content)


def signer(private_key: object, scheme: SignatureScheme) -> Callable[[bytes], bytes]:
    """``sign`` with this key and scheme, as one call taking the content: the key's own
    ``sign`` with the scheme's algorithm bound (the route cache keeps one per credential and
    scheme, so a handshake neither checks the key's type nor builds the algorithm)."""
    if scheme in _CURVES and isinstance(private_key, ec.EllipticCurvePrivateKey):
        return partial(private_key.sign, signature_algorithm=_ECDSA[scheme])
    if isinstance(private_key, ed25519.Ed25519PrivateKey) and scheme is SignatureScheme.ED25519:
        return private_key.sign
    if isinstance(private_key, rsa.RSAPrivateKey) and scheme in _HASHES:
        algorithm = _HASHES[scheme]()
        # Section 4.2.3: "The length of the Salt MUST be equal to the length of the output of
        # the digest algorithm."
        pss = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=algorithm.digest_size)
        return partial(private_key.sign, padding=pss, algorithm=algorithm)
    raise ValueError(f"{scheme!r} does not fit a {type(private_key).__name__}")


def verify(certificate: x509.Certificate, scheme: int, signature: bytes, content: bytes) -> None:
    """Check a peer's CertificateVerify signature with its leaf certificate's key.

    ``illegal_parameter`` for a scheme we do not support or that does not fit the key;
    ``decrypt_error`` for a signature that does not verify (section 4.4.3).
    """
    known = _SCHEMES_BY_CODE.get(scheme)
    if known is None:
        raise TLSAlert(Alert.ILLEGAL_PARAMETER, f"unsupported signature scheme 0x{scheme:04x}")
    try:
        # Any: the family below stands for the key's type (an ABC isinstance per call costs).
        public_key: Any = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise TLSAlert(Alert.BAD_CERTIFICATE, "the certificate's public key is unusable") from None
    family = _family_of_type(type(public_key))
    # Only an RSA key has two kinds of certificate (section 4.2.3).
    pss = family is _RSA and certificate.public_key_algorithm_oid == RSASSA_PSS_OID
    if known not in schemes_for_key(public_key, pss_certificate=pss):
        raise TLSAlert(
            Alert.ILLEGAL_PARAMETER, f"signature scheme {known.name.lower()} does not fit the key"
        )
    try:
        if family is _EC:
            public_key.verify(signature, content, _ECDSA[known])
        elif family is _ED25519:
            public_key.verify(signature, content)
        elif family is _RSA:
            algorithm = _HASHES[known]()
            pss_padding = padding.PSS(
                mgf=padding.MGF1(algorithm), salt_length=algorithm.digest_size
            )
            public_key.verify(signature, content, pss_padding, algorithm)
        else:  # pragma: no cover - schemes_for_key returned nothing for other key types
            raise TLSAlert(Alert.ILLEGAL_PARAMETER, "unsupported key type")
    except InvalidSignature:
        raise TLSAlert(Alert.DECRYPT_ERROR, "CertificateVerify signature does not verify") from None
