"""Certificates and ``ForwardedTLS`` records for the forwarding tests, minted in memory."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mtlsproxy.forwarding import ForwardedTLS
from mtlsproxy.pki import issue_leaf, make_ca, new_key
from mtlsproxy.vocabulary.identity import PeerIdentity

SPIFFE_ID = "spiffe://example.org/ns/prod/sa/frontend"


@dataclass(frozen=True)
class Certs:
    client: x509.Certificate
    server_ec: x509.Certificate
    server_rsa: x509.Certificate

    @property
    def client_der(self) -> bytes:
        return self.client.public_bytes(Encoding.DER)


def make_certs() -> Certs:
    ca_key = new_key("ec256")
    ca = make_ca("forwarding test CA", ca_key)
    client = issue_leaf(
        new_key("ec256"),
        ca,
        ca_key,
        common_name="frontend",
        uris=[SPIFFE_ID, "https://id.example.org/frontend"],
        dns_names=["frontend.internal", "fe.internal"],
    )
    server_ec = issue_leaf(new_key("ec256"), ca, ca_key, common_name="api", usage="server")
    rsa_key = new_key("rsa2048")
    server_rsa = issue_leaf(rsa_key, ca, ca_key, common_name="api", usage="server")
    return Certs(client, server_ec, server_rsa)


def forwarded(
    certs: Certs,
    *,
    anonymous: bool = False,
    verified: bool = True,
    client: tuple[str, int] | str | None = ("192.0.2.10", 51000),
    server: tuple[str, int] | str | None = ("192.0.2.1", 8443),
    sni: str | None = "api.example.org",
    alpn: str | None = "http/1.1",
    session_reused: bool = False,
) -> ForwardedTLS:
    return ForwardedTLS(
        client_address=client,
        server_address=server,
        sni=sni,
        alpn=alpn,
        version="TLSv1.3",
        cipher="TLS_AES_128_GCM_SHA256",
        identity=None if anonymous else PeerIdentity.from_certificate(certs.client),
        certificate_der=None if anonymous else certs.client_der,
        verified=verified and not anonymous,
        session_reused=session_reused,
        server_certificate_der=certs.server_ec.public_bytes(Encoding.DER),
    )
