"""Odd certificates and CRLs for the verifier tests: every field a test may need to bend.

``mtlsproxy.pki`` mints conforming material; this builds what a careless or hostile CA might
issue (missing or wrong keyUsage, name constraints, scoped and delta CRLs, duplicate
extensions, weak keys). Nothing here is used by the proxy itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)
DEFAULT = object()  # "the conforming value" for an argument that also takes None (omit)

Key = Any  # any private key cryptography can sign with


def ku(
    *, ca: bool, digital_signature: bool | None = None, crl_sign: bool | None = None, **kw: bool
):
    """A keyUsage: a CA's signs certificates and CRLs, a leaf's signs (handshakes)."""
    return x509.KeyUsage(
        digital_signature=(not ca) if digital_signature is None else digital_signature,
        content_commitment=False,
        key_encipherment=kw.get("key_encipherment", False),
        data_encipherment=False,
        key_agreement=kw.get("key_agreement", False),
        key_cert_sign=ca,
        crl_sign=ca if crl_sign is None else crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def name(cn: str, **extra: str) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else []
    if "email" in extra:
        attributes.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, extra["email"]))
    return x509.Name(attributes)


def hash_for(key: Key) -> hashes.HashAlgorithm | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def cert(
    subject: x509.Name | str,
    key: Key,
    issuer: x509.Certificate | None = None,
    issuer_key: Key | None = None,
    *,
    ca: bool = False,
    path_length: int | None = None,
    key_usage: Any = DEFAULT,
    eku: Any = DEFAULT,
    sans: Sequence[x509.GeneralName] = (),
    name_constraints: x509.NameConstraints | None = None,
    crl_dp: Sequence[x509.DistributionPoint] | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    extra: Iterable[tuple[x509.ExtensionType, bool]] = (),
    serial: int | None = None,
) -> x509.Certificate:
    """A certificate; self-signed when ``issuer`` is None. ``key_usage``/``eku``: DEFAULT is
    the conforming value, None omits the extension."""
    subject = name(subject) if isinstance(subject, str) else subject
    signer = key if issuer_key is None else issuer_key
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.subject)
        .public_key(public)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(not_before or NOW - timedelta(hours=1))
        .not_valid_after(not_after or NOW + 30 * DAY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )
    )
    usage = ku(ca=ca) if key_usage is DEFAULT else key_usage
    if usage is not None:
        builder = builder.add_extension(usage, critical=True)
    usages = (() if ca else (ExtendedKeyUsageOID.CLIENT_AUTH,)) if eku is DEFAULT else eku
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if name_constraints is not None:
        builder = builder.add_extension(name_constraints, critical=True)
    if crl_dp is not None:
        builder = builder.add_extension(x509.CRLDistributionPoints(list(crl_dp)), critical=False)
    for extension, critical in extra:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, hash_for(signer))


def crl(
    issuer: x509.Certificate,
    issuer_key: Key,
    revoked: Iterable[int] = (),
    *,
    next_update: datetime | None = None,
    number: int = 1,
    number_critical: bool = False,
    scope: x509.IssuingDistributionPoint | None = None,
    delta_of: int | None = None,
    extra: Iterable[tuple[x509.ExtensionType, bool]] = (),
) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(NOW - timedelta(hours=1))
        .next_update(next_update or NOW + 7 * DAY)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
        .add_extension(x509.CRLNumber(number), critical=number_critical)
    )
    if scope is not None:
        builder = builder.add_extension(scope, critical=True)
    if delta_of is not None:
        builder = builder.add_extension(x509.DeltaCRLIndicator(delta_of), critical=True)
    for extension, critical in extra:
        builder = builder.add_extension(extension, critical=critical)
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(NOW - timedelta(hours=1))
            .build()
        )
    return builder.sign(issuer_key, hash_for(issuer_key))


def idp(
    *,
    uri: str | None = None,
    only_user: bool = False,
    only_ca: bool = False,
    reasons: frozenset[x509.ReasonFlags] | None = None,
    indirect: bool = False,
) -> x509.IssuingDistributionPoint:
    return x509.IssuingDistributionPoint(
        full_name=[x509.UniformResourceIdentifier(uri)] if uri else None,
        relative_name=None,
        only_contains_user_certs=only_user,
        only_contains_ca_certs=only_ca,
        only_some_reasons=reasons,
        indirect_crl=indirect,
        only_contains_attribute_certs=False,
    )


def dp(uri: str, reasons: frozenset[x509.ReasonFlags] | None = None) -> x509.DistributionPoint:
    return x509.DistributionPoint([x509.UniformResourceIdentifier(uri)], None, reasons, None)


_KEYS: dict[str, list[Key]] = {}


def key(kind: str = "ec256", index: int = 0) -> Key:
    """A private key from a per-process pool (RSA and DSA generation is slow)."""
    pool = _KEYS.setdefault(kind, [])
    while len(pool) <= index:
        pool.append(_generate(kind))
    return pool[index]


def _generate(kind: str) -> Key:
    if kind.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[3:]))
    curves = {"ec192": ec.SECP192R1, "ec224": ec.SECP224R1, "ec256": ec.SECP256R1}
    curves |= {"ec384": ec.SECP384R1, "ec521": ec.SECP521R1, "k256": ec.SECP256K1}
    if kind in curves:
        return ec.generate_private_key(curves[kind]())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind.startswith("dsa"):
        return dsa.generate_private_key(int(kind[3:]))
    raise ValueError(kind)


# DER surgery, for what CertificateBuilder refuses to build (a duplicate extension).


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(body)) + body


def _element(der: bytes, at: int) -> int:
    """The offset just past the DER element starting at ``at``."""
    length, header = der[at + 1], 2
    if length & 0x80:
        count = length & 0x7F
        length, header = int.from_bytes(der[at + 2 : at + 2 + count], "big"), 2 + count
    return at + header + length


def with_duplicate_eku(leaf_key: Key, issuer: x509.Certificate, issuer_key: Key) -> bytes:
    """DER of a properly signed leaf carrying the extendedKeyUsage extension twice."""
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    twin = x509.UnrecognizedExtension(x509.ObjectIdentifier("2.5.29.99"), eku.public_bytes())
    template = cert("dup", leaf_key, issuer, issuer_key, extra=[(twin, False)])
    tbs = template.tbs_certificate_bytes.replace(b"\x06\x03\x55\x1d\x63", b"\x06\x03\x55\x1d\x25")
    der = template.public_bytes(Encoding.DER)
    start = 2 + (der[1] & 0x7F if der[1] & 0x80 else 0)  # past the outer SEQUENCE header
    algorithm_at = _element(der, start)
    algorithm = der[algorithm_at : _element(der, algorithm_at)]
    if isinstance(issuer_key, ec.EllipticCurvePrivateKey):
        signature = issuer_key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    else:
        raise TypeError("an EC issuer key, please")
    return _tlv(0x30, tbs + algorithm + _tlv(0x03, b"\x00" + signature))
