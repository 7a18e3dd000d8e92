"""What every handshake on a route repeats, computed once per route.

A route's Certificate message (per credential), CertificateRequest, EncryptedExtensions (per
ALPN answer), padding policy, each credential's usable signature schemes and its signer per
scheme depend only on the route object, which is immutable (a reload builds new routes).
:func:`for_route` keeps them in a :class:`RouteFlightCache` per route *object*: the cache is
keyed by the route's identity and holds the route itself, so an entry is only ever returned for
that very object (never for an equal-looking route, never across routes). The one thing in it
that comes from clients is the parsed leaf certificates of the route's recent clients
(:meth:`RouteFlightCache.peer_certificate`): an immutable ``x509.Certificate`` keyed by its
exact DER bytes, so what it returns is what parsing those bytes would return (cryptography
keeps the certificate's parsed public key on the object, which is what a repeat client saves);
it decides nothing (the policy still decides on every chain and the CertificateVerify is still
checked). Likewise the credential and signature scheme chosen for a client's
signature_algorithms list (:meth:`RouteFlightCache.choose`), keyed by the exact list: a
function of the route's credentials and that list only.

Routes are frozen, slotted dataclasses without a weakref slot, so the cache holds them
strongly; it is bounded (``MAX_ROUTES``, oldest dropped first), which bounds how long a
replaced route stays alive after a reload.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from cryptography import x509

from mtlsproxy.engine.interface import Credential, NativeRoute
from mtlsproxy.engine.native import messages as msgs
from mtlsproxy.engine.native import signatures as sigs
from mtlsproxy.engine.native.record_layer import PaddingPolicy, pad_to_multiple
from mtlsproxy.vocabulary.identity import load_certificate

MAX_ROUTES = 256
MAX_PEER_CERTIFICATES = 256  # per route: distinct client leaves, a fleet presents few
MAX_SCHEME_LISTS: Final = 64  # per route: distinct signature_algorithms lists, one per client stack


class RouteFlightCache:
    """One route's precomputed flight pieces (see the module docstring)."""

    __slots__ = (
        "_chosen",
        "_encrypted_extensions",
        "_peer_certificates",
        "certificate_messages",
        "certificate_request",
        "credential_schemes",
        "padding",
        "signers",
    )

    def __init__(self, route: NativeRoute) -> None:
        credentials: Sequence[Credential] = route.credentials
        self.credential_schemes = sigs.usable_schemes(credentials)
        # Keyed by credential identity: the credential objects are the route's own.
        self.certificate_messages = {
            id(credential): msgs.certificate(credential.chain_der) for credential in credentials
        }
        # Each credential's signer per scheme it can sign with, keyed as certificate_messages
        # and the scheme: what CertificateVerify calls (section 4.4.3).
        self.signers = {
            (id(credential), scheme): sigs.signer(credential.key, scheme)
            for credential, schemes in self.credential_schemes
            for scheme in schemes
        }
        self.certificate_request = (
            msgs.certificate_request(sigs.SUPPORTED_SCHEMES, list(route.client_ca_names))
            if route.requests_client_certificate
            else None
        )
        self.padding: PaddingPolicy = pad_to_multiple(route.record_padding)
        self._encrypted_extensions: dict[str | None, bytes] = {}
        self._peer_certificates: dict[bytes, x509.Certificate] = {}
        self._chosen: dict[tuple[int, ...], tuple[Credential, sigs.SignatureScheme] | None] = {}

    def choose(
        self, client_schemes: tuple[int, ...]
    ) -> tuple[Credential, sigs.SignatureScheme] | None:
        """``sigs.choose_usable`` on this route's credentials for the client's
        signature_algorithms, remembered for the route's last ``MAX_SCHEME_LISTS`` distinct
        lists (the answer depends on nothing else)."""
        try:
            return self._chosen[client_schemes]
        except KeyError:
            pass
        chosen = sigs.choose_usable(self.credential_schemes, client_schemes)
        if len(self._chosen) >= MAX_SCHEME_LISTS:
            del self._chosen[next(iter(self._chosen))]
        self._chosen[client_schemes] = chosen
        return chosen

    def encrypted_extensions(self, alpn: str | None) -> bytes:
        """EncryptedExtensions for ``alpn`` (one of the route's protocols, or None)."""
        message = self._encrypted_extensions.get(alpn)
        if message is None:
            message = self._encrypted_extensions[alpn] = msgs.encrypted_extensions(alpn)
        return message

    def peer_certificate(self, der: bytes) -> x509.Certificate:
        """``load_certificate(der)`` (``ValueError`` included), remembered for
        the route's last ``MAX_PEER_CERTIFICATES`` distinct leaves."""
        certificate = self._peer_certificates.get(der)
        if certificate is None:
            certificate = load_certificate(der)
            if len(self._peer_certificates) >= MAX_PEER_CERTIFICATES:
                del self._peer_certificates[next(iter(self._peer_certificates))]
            self._peer_certificates[der] = certificate
        return certificate


_CACHES: dict[int, tuple[NativeRoute, RouteFlightCache]] = {}


def for_route(route: NativeRoute) -> RouteFlightCache:
    """The cache of this route object (built on first use)."""
    entry = _CACHES.get(id(route))
    if entry is not None and entry[0] is route:
        return entry[1]
    cache = RouteFlightCache(route)
    if len(_CACHES) >= MAX_ROUTES:
        del _CACHES[next(iter(_CACHES))]
    _CACHES[id(route)] = (route, cache)
    return cache
