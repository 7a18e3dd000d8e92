"""A development PKI: a root CA, an intermediate, server and client certificates, CRLs.

Everything here is for demos and tests (``mtlsproxy pki init``), never for production keys:
private keys are written unencrypted. The certificates are nevertheless real and conforming
(RFC 5280): CAs carry basicConstraints, keyUsage and key identifiers, leaves carry SANs and an
extended key usage, and CRLs carry the authority key identifier and a CRL number, so that
OpenSSL, Go, rustls and ``cryptography.x509.verification`` all accept them.

The building blocks (``new_key``, ``make_ca``, ``issue_leaf``, ``make_crl``, ``write_pem``)
are public so tests can mint odd certificates of their own; ``init`` writes the standard set.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
KeyKind = Literal["ec256", "ec384", "rsa2048", "ed25519"]
Usage = Literal["client", "server", "both", "none"]
PemObject = x509.Certificate | x509.CertificateRevocationList | PrivateKey

ROOT_CA_NAME = "mtlsproxy development root CA"
INTERMEDIATE_CA_NAME = "mtlsproxy development client intermediate CA"
ROGUE_CA_NAME = "rogue CA (not trusted by anyone)"

# Backdating absorbs clock skew between the machine that mints and the one that verifies.
_BACKDATE = timedelta(hours=1)
_CA_LIFETIME = timedelta(days=3650)
_LEAF_LIFETIME = timedelta(days=365)

_EKUS: dict[Usage, tuple[x509.ObjectIdentifier, ...]] = {
    "client": (ExtendedKeyUsageOID.CLIENT_AUTH,),
    "server": (ExtendedKeyUsageOID.SERVER_AUTH,),
    "both": (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
    "none": (),
}


def new_key(kind: KeyKind = "ec256") -> PrivateKey:
    """A fresh private key. ECDSA keys are generated in microseconds, RSA in tens of ms."""
    if kind == "ec256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ec384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "rsa2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key kind {kind!r}")


def _hash_for(key: PrivateKey) -> hashes.HashAlgorithm | None:
    # Ed25519 signs the message itself (RFC 8410 section 6): no separate digest.
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _validity(
    not_before: datetime | None, not_after: datetime | None, lifetime: timedelta
) -> tuple[datetime, datetime]:
    start = not_before if not_before is not None else datetime.now(UTC) - _BACKDATE
    return start, not_after if not_after is not None else start + lifetime


def _authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """AKI = the issuer's SKI (RFC 5280 section 4.2.1.1), so path builders can pick the key."""
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def make_ca(
    name: str,
    key: PrivateKey,
    *,
    issuer: x509.Certificate | None = None,
    issuer_key: PrivateKey | None = None,
    path_length: int | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> x509.Certificate:
    """A CA certificate: self-signed when ``issuer`` is None, else signed by ``issuer_key``.

    basicConstraints is critical with cA true (RFC 5280 section 4.2.1.9) and keyUsage allows
    only keyCertSign and cRLSign (section 4.2.1.3): the CA signs certificates and CRLs, nothing
    else. ``path_length`` 0 means the CA may issue only end-entity certificates.
    """
    if (issuer is None) != (issuer_key is None):
        raise ValueError("issuer and issuer_key go together")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start, end = _validity(not_before, not_after, _CA_LIFETIME)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    aki = (
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        if issuer is None
        else _authority_key_id(issuer)
    )
    signer = key if issuer_key is None else issuer_key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_key_usage(key_cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(aki, critical=False)
    )
    return builder.sign(signer, _hash_for(signer))


def _key_usage(*, key_cert_sign: bool = False, key_encipherment: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not key_cert_sign,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=key_cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def issue_leaf(
    key: PrivateKey,
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    *,
    common_name: str | None = None,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    uris: Sequence[str] = (),
    usage: Usage = "client",
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    serial: int | None = None,
) -> x509.Certificate:
    """An end-entity certificate for ``key`` signed by ``issuer_key``.

    ``usage`` picks the extended key usage (RFC 5280 section 4.2.1.12): ``none`` omits the
    extension, which verifiers read as "any usage". The SAN extension is omitted when no name is
    given, and is marked critical when the subject is empty (section 4.2.1.6).
    """
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    sans += [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    start, end = _validity(not_before, not_after, _LEAF_LIFETIME)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(key_encipherment=isinstance(key, rsa.RSAPrivateKey)), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(_authority_key_id(issuer), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=not attributes)
    if _EKUS[usage]:
        builder = builder.add_extension(x509.ExtendedKeyUsage(_EKUS[usage]), critical=False)
    return builder.sign(issuer_key, _hash_for(issuer_key))


def make_crl(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    revoked_serials: Iterable[int],
    *,
    next_update: datetime,
    last_update: datetime | None = None,
    number: int = 1,
) -> x509.CertificateRevocationList:
    """A CRL signed by ``ca_key``, carrying the AKI and CRL number that RFC 5280 sections 5.2.1
    and 5.2.3 require of conforming issuers."""
    this_update = last_update if last_update is not None else datetime.now(UTC) - _BACKDATE
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(_authority_key_id(ca_cert), critical=False)
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for serial in revoked_serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(this_update)
            .build()
        )
    return builder.sign(ca_key, _hash_for(ca_key))


def _pem(obj: PemObject) -> bytes:
    if isinstance(obj, x509.Certificate | x509.CertificateRevocationList):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_pem(path: Path, *objects: PemObject) -> Path:
    """Write ``objects`` as concatenated PEM blocks, in order.

    A file holding a private key is created with mode 0o600 (and an existing one is narrowed to
    it) before any byte is written, so the key is never readable by others even briefly.
    """
    secret = any(
        not isinstance(o, x509.Certificate | x509.CertificateRevocationList) for o in objects
    )
    mode = 0o600 if secret else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(b"".join(_pem(o) for o in objects))
    return path


@dataclass(frozen=True, slots=True)
class PkiFiles:
    """The files ``init`` writes, by role. Each ``X_cert`` (``X.crt``) has its ``X_key``.

    Leaf ``.crt`` files hold the leaf only, except ``client-intermediate.crt`` which holds the
    leaf then the intermediate (the chain a client sends). ``PkiFiles.at(directory)`` names the
    files of a PKI written earlier.
    """

    directory: Path
    ca_cert: Path  # root CA "mtlsproxy development root CA"
    ca_key: Path
    intermediate_cert: Path  # issued by the root, path length 0; issues client-intermediate
    intermediate_key: Path
    rogue_ca_cert: Path  # trusted by nobody; issues client-untrusted
    rogue_ca_key: Path
    server_cert: Path  # ECDSA P-256, SANs = hosts, serverAuth
    server_key: Path
    server_rsa_cert: Path  # RSA 2048, same names
    server_rsa_key: Path
    client_cert: Path  # CN frontend, spiffe://example.org/ns/prod/sa/frontend
    client_key: Path
    client_other_cert: Path  # valid, CN intruder, in no example allow-list
    client_other_key: Path
    client_expired_cert: Path
    client_expired_key: Path
    client_notyet_cert: Path
    client_notyet_key: Path
    client_revoked_cert: Path  # listed in ca.crl
    client_revoked_key: Path
    client_wrong_eku_cert: Path  # EKU serverAuth only
    client_wrong_eku_key: Path
    client_untrusted_cert: Path  # issued by the rogue CA
    client_untrusted_key: Path
    client_intermediate_cert: Path  # leaf, then the intermediate
    client_intermediate_key: Path
    ca_crl: Path  # by the root; lists client-revoked
    intermediate_crl: Path  # by the intermediate; empty
    crl_bundle: Path  # crls.pem: ca.crl and intermediate.crl in one PEM file
    client_ca_bundle: Path  # client-ca.pem: the root only (intermediates come from clients)

    @classmethod
    def at(cls, directory: Path) -> PkiFiles:
        files: dict[str, Path] = {}
        for stem in (*_CAS, *_LEAVES):
            attr = stem.replace("-", "_")
            files[f"{attr}_cert"] = directory / f"{stem}.crt"
            files[f"{attr}_key"] = directory / f"{stem}.key"
        return cls(
            directory=directory,
            ca_crl=directory / "ca.crl",
            intermediate_crl=directory / "intermediate.crl",
            crl_bundle=directory / "crls.pem",
            client_ca_bundle=directory / "client-ca.pem",
            **files,
        )


_CAS = ("ca", "intermediate", "rogue-ca")
_LEAVES = (
    "server",
    "server-rsa",
    "client",
    "client-other",
    "client-expired",
    "client-notyet",
    "client-revoked",
    "client-wrong-eku",
    "client-untrusted",
    "client-intermediate",
)

FRONTEND_SPIFFE_ID = "spiffe://example.org/ns/prod/sa/frontend"
FRONTEND_DNS = "frontend.internal.example.org"


def init(
    directory: Path,
    *,
    hosts: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
    now: datetime | None = None,
) -> PkiFiles:
    """Create ``directory`` (if needed) and write the development PKI into it.

    ``hosts`` become the server certificates' SANs (IP literals as IP SANs); the first one is
    also their CN. ``now`` anchors every validity window, so tests can mint a PKI "in the past".
    """
    now = now if now is not None else datetime.now(UTC)
    directory.mkdir(parents=True, exist_ok=True)
    start = now - _BACKDATE
    leaf_end = start + _LEAF_LIFETIME

    ca_key = new_key()
    ca = make_ca(ROOT_CA_NAME, ca_key, not_before=start, not_after=start + _CA_LIFETIME)
    inter_key = new_key()
    inter = make_ca(
        INTERMEDIATE_CA_NAME,
        inter_key,
        issuer=ca,
        issuer_key=ca_key,
        path_length=0,
        not_before=start,
        not_after=start + _CA_LIFETIME / 2,
    )
    rogue_key = new_key()
    rogue = make_ca(ROGUE_CA_NAME, rogue_key, not_before=start, not_after=start + _CA_LIFETIME)

    server = partial(
        issue_leaf,
        issuer=ca,
        issuer_key=ca_key,
        common_name=hosts[0] if hosts else None,
        dns_names=[h for h in hosts if not _is_ip(h)],
        ip_addresses=[h for h in hosts if _is_ip(h)],
        usage="server",
        not_before=start,
        not_after=leaf_end,
    )
    frontend = partial(
        issue_leaf,
        issuer=ca,
        issuer_key=ca_key,
        common_name="frontend",
        uris=[FRONTEND_SPIFFE_ID],
        dns_names=[FRONTEND_DNS],
        not_before=start,
        not_after=leaf_end,
    )
    keys = {stem: new_key("rsa2048" if stem == "server-rsa" else "ec256") for stem in _LEAVES}
    certs: dict[str, tuple[x509.Certificate, ...]] = {
        "server": (server(keys["server"]),),
        "server-rsa": (server(keys["server-rsa"]),),
        "client": (frontend(keys["client"]),),
        "client-other": (
            frontend(
                keys["client-other"],
                common_name="intruder",
                uris=["spiffe://example.org/ns/dev/sa/intruder"],
                dns_names=["intruder.dev.example.org"],
            ),
        ),
        "client-expired": (
            frontend(
                keys["client-expired"],
                not_before=now - timedelta(days=30),
                not_after=now - timedelta(days=1),
            ),
        ),
        "client-notyet": (
            frontend(
                keys["client-notyet"],
                not_before=now + timedelta(days=1),
                not_after=now + timedelta(days=1) + _LEAF_LIFETIME,
            ),
        ),
        "client-revoked": (frontend(keys["client-revoked"]),),
        "client-wrong-eku": (frontend(keys["client-wrong-eku"], usage="server"),),
        "client-untrusted": (
            frontend(keys["client-untrusted"], issuer=rogue, issuer_key=rogue_key),
        ),
        "client-intermediate": (
            frontend(keys["client-intermediate"], issuer=inter, issuer_key=inter_key),
            inter,
        ),
    }
    for stem, chain in certs.items():
        write_pem(directory / f"{stem}.crt", *chain)
        write_pem(directory / f"{stem}.key", keys[stem])

    next_update = now + timedelta(days=7)
    revoked = [certs["client-revoked"][0].serial_number]
    ca_crl = make_crl(ca, ca_key, revoked, next_update=next_update, last_update=start)
    inter_crl = make_crl(inter, inter_key, [], next_update=next_update, last_update=start)
    for name, objects in {
        "ca.crt": (ca,),
        "ca.key": (ca_key,),
        "intermediate.crt": (inter,),
        "intermediate.key": (inter_key,),
        "rogue-ca.crt": (rogue,),
        "rogue-ca.key": (rogue_key,),
        "ca.crl": (ca_crl,),
        "intermediate.crl": (inter_crl,),
        "crls.pem": (ca_crl, inter_crl),
        "client-ca.pem": (ca,),
    }.items():
        write_pem(directory / name, *objects)
    return PkiFiles.at(directory)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
