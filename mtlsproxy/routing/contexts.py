"""Route settings -> ``ssl.SSLContext``, built once per route at load, never per connection."""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mtlsproxy.config.model import TLSSettings, TLSVersion
from mtlsproxy.policy.model import ClientAuth, ClientAuthMode

# TLS 1.2: forward secrecy (ECDHE) and AEAD only, as Mozilla's "intermediate" profile.
# TLS 1.3 suites are all AEAD with (EC)DHE and are left at OpenSSL's defaults.
# @SECLEVEL=2 whatever the system's OpenSSL default: 2048-bit RSA, 256-bit EC keys at least,
# for our certificates and for every certificate of a client's chain (as the native verifier).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:@SECLEVEL=2"

_MIN_VERSIONS = {
    TLSVersion.TLS1_2: ssl.TLSVersion.TLSv1_2,
    TLSVersion.TLS1_3: ssl.TLSVersion.TLSv1_3,
}


def build_ssl_context(
    tls: TLSSettings,
    client_auth: ClientAuth,
    crls: Sequence[x509.CertificateRevocationList] = (),
    alpn: Sequence[str] = (),
) -> ssl.SSLContext:
    """One server context: our certificates (several key types at once: OpenSSL keeps one per
    type and picks by the client's signature_algorithms), versions, suites and client policy."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _MIN_VERSIONS[tls.min_version]
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= (
        ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    )
    # One TLS 1.3 ticket per full handshake, not OpenSSL's 2 (as Go's crypto/tls): a client
    # resumes with its latest ticket, and each ticket costs OpenSSL 3.0 a copy of the session
    # made by encoding and decoding it, the client's certificate included (~1.5 M instructions,
    # a seventh of a mutual-TLS handshake).
    context.num_tickets = 1
    for pair in tls.certificates:
        context.load_cert_chain(pair.certificate, pair.key)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    if client_auth.mode is not ClientAuthMode.NONE:
        _apply_client_auth(context, client_auth, crls)
    return context


def _apply_client_auth(
    context: ssl.SSLContext,
    client_auth: ClientAuth,
    crls: Sequence[x509.CertificateRevocationList],
) -> None:
    assert client_auth.ca is not None  # config validation guarantees it
    # Audit mode admits a client without a certificate (counted as would_refuse).
    required = client_auth.mode is ClientAuthMode.REQUIRE and client_auth.enforce
    context.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
    context.load_verify_locations(cafile=client_auth.ca)
    if crls:
        # OpenSSL's file lookup reads PEM only, and CRLs may come as DER: re-encode them.
        _load_pem_into(context, b"".join(crl.public_bytes(Encoding.PEM) for crl in crls))
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN


def _load_pem_into(context: ssl.SSLContext, pem: bytes) -> None:
    """``load_verify_locations`` from memory. ``cadata`` takes certificates only, so the PEM
    goes through an anonymous in-memory file: nothing is written to disk, which keeps the
    container's read-only root filesystem read-only."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("mtlsproxy-crls")
        try:
            os.write(fd, pem)
            context.load_verify_locations(cafile=f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.NamedTemporaryFile(suffix=".pem") as bundle:  # pragma: no cover - not Linux
        bundle.write(pem)
        bundle.flush()
        context.load_verify_locations(cafile=bundle.name)
