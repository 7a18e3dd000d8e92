"""What is loaded, as data for the admin endpoint's ``/certs`` (Envoy's ``/certs``,
ghostunnel's ``/_status``): every route's server certificates, client CAs and CRLs, with the
dates that matter. Public material only: never a key."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from mtlsproxy.routing.routes import RouteTable, ServerRoute


def certificates_document(tables: Iterable[tuple[str, RouteTable]], now: datetime) -> dict:
    """``{"listeners": [{"name", "routes": [{"name", "server_certificates", "client_cas",
    "crls"}]}]}``; every certificate with subject, issuer, serial, key type, SANs, validity
    and the seconds until it expires (negative once expired)."""
    return {
        "listeners": [
            {"name": name, "routes": [_route(route, now) for route in table.all_routes()]}
            for name, table in tables
        ]
    }


def _route(route: ServerRoute, now: datetime) -> dict:
    verifier = route.policy.verifier
    return {
        "name": route.name,
        "sni": list(route.config.sni),
        "client_auth": str(route.config.client_auth.mode),
        "server_certificates": [
            {**_certificate(credential.leaf, now), "chain_length": len(credential.chain)}
            for credential in route.credentials
        ],
        "client_cas": [_certificate(ca, now) for ca in verifier.ca_certificates]
        if verifier is not None
        else [],
        "crls": [
            {
                "issuer": loaded.issuer,
                "file": str(loaded.source),
                "this_update": _time(loaded.crl.last_update_utc),
                "next_update": _time(loaded.next_update) if loaded.next_update else None,
                "revoked": len(loaded.crl),
            }
            for loaded in (verifier.crls if verifier is not None else ())
        ],
    }


def _certificate(cert: x509.Certificate, now: datetime) -> dict:
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": f"{cert.serial_number:x}",
        "key_type": _key_type(cert),
        "sans": _sans(cert),
        "not_before": _time(cert.not_valid_before_utc),
        "not_after": _time(cert.not_valid_after_utc),
        "expires_in_seconds": int((cert.not_valid_after_utc - now).total_seconds()),
    }


def _key_type(cert: x509.Certificate) -> str:
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return type(key).__name__.removesuffix("PublicKey")
    return type(key).__name__


def _sans(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    return [f"{type(name).__name__}:{name.value}" for name in san]


def _time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
