"""What the forwarders tell the upstream about one admitted TLS connection.

Built once per connection by the proxy from ``HandshakeComplete`` and the socket addresses, read
by both forwarders (``proxy_protocol.encode_v2`` and ``http.headers.identity_headers``), so the
PROXY header and the HTTP headers can never disagree.

The algorithm names follow HAProxy, whose PROXY v2 TLVs the upstreams already parse:
``PP2_SUBTYPE_SSL_SIG_ALG`` is OpenSSL's short name of the certificate's signature algorithm
(``OBJ_nid2sn``: ``RSA-SHA256``, ``ecdsa-with-SHA256``, ``ED25519``) and
``PP2_SUBTYPE_SSL_KEY_ALG`` is the key type followed by its size in bits (``RSA2048``,
``EC256``); HAProxy omits the TLV for a key type outside RSA, EC and DSA, and so do we.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa

from mtlsproxy.vocabulary.identity import PeerIdentity, load_certificate

Address = tuple[str, int] | str | None
"""``(host, port)`` for TCP over IPv4/IPv6, a path (``""`` when unnamed) for a unix socket,
``None`` when unknown."""

# OpenSSL short names (crypto/objects/objects.txt) by signature algorithm OID.
_OPENSSL_SIG_SHORT_NAMES: dict[str, str] = {
    "1.2.840.113549.1.1.4": "RSA-MD5",
    "1.2.840.113549.1.1.5": "RSA-SHA1",
    "1.2.840.113549.1.1.14": "RSA-SHA224",
    "1.2.840.113549.1.1.11": "RSA-SHA256",
    "1.2.840.113549.1.1.12": "RSA-SHA384",
    "1.2.840.113549.1.1.13": "RSA-SHA512",
    "1.2.840.113549.1.1.10": "RSASSA-PSS",
    "1.2.840.10045.4.1": "ecdsa-with-SHA1",
    "1.2.840.10045.4.3.1": "ecdsa-with-SHA224",
    "1.2.840.10045.4.3.2": "ecdsa-with-SHA256",
    "1.2.840.10045.4.3.3": "ecdsa-with-SHA384",
    "1.2.840.10045.4.3.4": "ecdsa-with-SHA512",
    "1.3.101.112": "ED25519",
    "1.3.101.113": "ED448",
    "1.2.840.10040.4.3": "DSA-SHA1",
    "2.16.840.1.101.3.4.3.1": "dsa_with_SHA224",
    "2.16.840.1.101.3.4.3.2": "dsa_with_SHA256",
}


def signature_algorithm_name(certificate_der: bytes) -> str | None:
    """OpenSSL's short name of the certificate's signature algorithm, as HAProxy sends it in
    ``PP2_SUBTYPE_SSL_SIG_ALG``; ``None`` for an algorithm OpenSSL has no name for, or bytes that
    are not a certificate."""
    try:
        cert = load_certificate(certificate_der)
    except ValueError:
        return None
    return _OPENSSL_SIG_SHORT_NAMES.get(cert.signature_algorithm_oid.dotted_string)


def key_algorithm_name(certificate_der: bytes) -> str | None:
    """Key type and size of the certificate's public key as HAProxy sends it in
    ``PP2_SUBTYPE_SSL_KEY_ALG`` (``"%s%d"`` of RSA/EC/DSA and ``EVP_PKEY_bits``): ``RSA2048``,
    ``EC256``, ``EC521``, ``DSA2048``; ``None`` for other key types (Ed25519...) or bytes that
    are not a certificate."""
    try:
        key = load_certificate(certificate_der).public_key()
    except ValueError:
        return None
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC{key.curve.key_size}"
    if isinstance(key, dsa.DSAPublicKey):
        return f"DSA{key.key_size}"
    return None


@dataclass(frozen=True, slots=True)
class ForwardedTLS:
    """One admitted connection, as the upstream is told about it.

    ``identity`` and ``certificate_der`` describe the client's leaf certificate (both ``None``
    for an anonymous client); ``verified`` is true only when that certificate passed
    verification and the allow-list (false in audit mode for a client that would have been
    refused, and for an anonymous client). ``session_reused``: the certificate was presented in
    an earlier handshake of a resumed session (PROXY v2 ``PP2_CLIENT_CERT_SESS`` without
    ``PP2_CLIENT_CERT_CONN``). ``server_certificate_der`` is our own leaf that the handshake used:
    HAProxy's ``SSL_SIG_ALG`` and ``SSL_KEY_ALG`` describe the certificate "presented by the
    frontend" (doc/proxy-protocol.txt, section 2.2.5), not the client's.
    """

    client_address: Address
    server_address: Address
    sni: str | None
    alpn: str | None
    version: str  # "TLSv1.3", as ssl.SSLObject.version() names it
    cipher: str  # OpenSSL name, e.g. "TLS_AES_128_GCM_SHA256"
    identity: PeerIdentity | None
    certificate_der: bytes | None
    verified: bool
    session_reused: bool = False
    server_certificate_der: bytes | None = None

    @property
    def client_certificate_presented(self) -> bool:
        return self.certificate_der is not None or self.identity is not None

    @property
    def client_verified(self) -> bool:
        """A certificate was presented and verified: the only case an upstream may trust it."""
        return self.verified and self.client_certificate_presented

    @property
    def signature_algorithm(self) -> str | None:
        """HAProxy's ``SSL_SIG_ALG`` for this connection (our certificate's)."""
        der = self.server_certificate_der
        return signature_algorithm_name(der) if der is not None else None

    @property
    def key_algorithm(self) -> str | None:
        """HAProxy's ``SSL_KEY_ALG`` for this connection (our certificate's)."""
        der = self.server_certificate_der
        return key_algorithm_name(der) if der is not None else None
