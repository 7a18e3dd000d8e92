"""TLS 1.3 cipher suites and (EC)DHE named groups, on ``cryptography`` primitives.

Cipher suites (RFC 8446 section 9.1 and appendix B.4): each names an AEAD and the hash used by
HKDF and the transcript. The three supported here are the mandatory TLS_AES_128_GCM_SHA256 and
the recommended TLS_AES_256_GCM_SHA384 and TLS_CHACHA20_POLY1305_SHA256. All use a 12-byte
per-record nonce (section 5.3: iv_length is the larger of 8 and the AEAD's N_MIN, 12 for all
three) and a 16-byte tag.

Named groups (RFC 8446 sections 4.2.7, 4.2.8.2 and 7.4): x25519 (0x001D), secp256r1 (0x0017)
and secp384r1 (0x0018). A :class:`KeyShare` is one ephemeral private key; ``public_bytes`` is the
KeyShareEntry.key_exchange encoding (32 raw bytes for x25519, an uncompressed point for the NIST
curves) and ``exchange`` validates the peer's share and returns the shared secret, raising
:class:`~mtlsproxy.engine.native.alerts.TLSAlert` with ``illegal_parameter`` for an invalid
share.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mtlsproxy.engine.native.alerts import TLSAlert
from mtlsproxy.vocabulary.failures import Alert


class CipherSuiteId(enum.IntEnum):
    """TLS 1.3 CipherSuite code points (RFC 8446 appendix B.4)."""

    TLS_AES_128_GCM_SHA256 = 0x1301
    TLS_AES_256_GCM_SHA384 = 0x1302
    TLS_CHACHA20_POLY1305_SHA256 = 0x1303


class AEAD(Protocol):
    """The slice of ``cryptography``'s AEAD classes the record layer uses (RFC 5116)."""

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...

    def decrypt_into(
        self, nonce: bytes, data: memoryview, associated_data: memoryview, buf: memoryview
    ) -> int: ...


class HashObject(Protocol):
    """A running ``hashlib`` hash (the transcript hash of RFC 8446 section 4.4.1)."""

    @property
    def digest_size(self) -> int: ...

    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...

    def copy(self) -> HashObject: ...


# RFC 8446 section 5.5: "For AES-GCM, up to 2^24.5 full-size records (about 24 million) may be
# encrypted on a given connection while keeping a safety margin of approximately 2^-57 for
# Authenticated Encryption (AE) security." floor(2^24.5) = 23_726_566.
AES_GCM_RECORD_LIMIT: Final = 23_726_566


@dataclass(frozen=True, slots=True)
class CipherSuite:
    """One TLS 1.3 cipher suite: AEAD, key and IV sizes, and the HKDF / transcript hash.

    ``record_limit`` is the section 5.5 limit on records encrypted under one key, or ``None``
    where the 64-bit sequence number is the only bound (ChaCha20-Poly1305: "the record sequence
    number would wrap before the safety limit is reached").
    """

    id: CipherSuiteId
    hash_name: str  # hashlib / hmac digest name
    hash_factory: Callable[[], HashObject]
    hash_length: int
    key_length: int
    aead_factory: Callable[[bytes], AEAD]
    record_limit: int | None
    iv_length: int = 12
    tag_length: int = 16
    # The IANA name, a plain attribute: every handshake's completion event reads it (an enum
    # member's ``name`` is two Python calls).
    name: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", self.id.name)

    def new_hash(self) -> HashObject:
        """An empty running hash for this suite's transcript (RFC 8446 section 4.4.1)."""
        return self.hash_factory()

    def new_aead(self, key: bytes) -> AEAD:
        """The AEAD keyed with a write key from section 7.3."""
        if len(key) != self.key_length:
            raise ValueError(f"{self.name} needs a {self.key_length}-byte key, got {len(key)}")
        return self.aead_factory(key)


TLS_AES_128_GCM_SHA256: Final = CipherSuite(
    CipherSuiteId.TLS_AES_128_GCM_SHA256,
    "sha256",
    hashlib.sha256,
    32,
    16,
    AESGCM,
    AES_GCM_RECORD_LIMIT,
)
TLS_AES_256_GCM_SHA384: Final = CipherSuite(
    CipherSuiteId.TLS_AES_256_GCM_SHA384,
    "sha384",
    hashlib.sha384,
    48,
    32,
    AESGCM,
    AES_GCM_RECORD_LIMIT,
)
TLS_CHACHA20_POLY1305_SHA256: Final = CipherSuite(
    CipherSuiteId.TLS_CHACHA20_POLY1305_SHA256,
    "sha256",
    hashlib.sha256,
    32,
    32,
    ChaCha20Poly1305,
    None,
)

CIPHER_SUITES: Final[dict[int, CipherSuite]] = {
    suite.id: suite
    for suite in (TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256)
}


def get_cipher_suite(code: int) -> CipherSuite | None:
    """The supported suite with this code point, or ``None``."""
    return CIPHER_SUITES.get(code)


class NamedGroup(enum.IntEnum):
    """Supported (EC)DHE groups (RFC 8446 section 4.2.7)."""

    SECP256R1 = 0x0017
    SECP384R1 = 0x0018
    X25519 = 0x001D


class KeyShare(Protocol):
    """One ephemeral (EC)DHE key pair for one handshake (RFC 8446 sections 4.2.8, 7.4)."""

    @property
    def group(self) -> NamedGroup: ...

    def public_bytes(self) -> bytes:
        """The KeyShareEntry.key_exchange value (section 4.2.8.2)."""
        ...

    def exchange(self, peer_key_exchange: bytes) -> bytes:
        """Validate the peer's key_exchange value and return the shared secret (section 7.4).

        Raises ``TLSAlert(ILLEGAL_PARAMETER)`` for a share of the wrong length or not on the
        curve, or (x25519) one that yields the all-zero secret.
        """
        ...


X25519_KEY_LENGTH: Final = 32


class X25519KeyShare:
    """An X25519 key share (RFC 8446 sections 4.2.8.2 and 7.4.2; RFC 7748)."""

    __slots__ = ("_private_key", "_public_bytes")

    group = NamedGroup.X25519

    def __init__(self, private_key: x25519.X25519PrivateKey | None = None) -> None:
        self._private_key = private_key or x25519.X25519PrivateKey.generate()
        self._public_bytes = self._private_key.public_key().public_bytes_raw()

    def __repr__(self) -> str:
        return "X25519KeyShare(<private>)"

    def public_bytes(self) -> bytes:
        return self._public_bytes

    def exchange(self, peer_key_exchange: bytes) -> bytes:
        if len(peer_key_exchange) != X25519_KEY_LENGTH:
            raise TLSAlert(
                Alert.ILLEGAL_PARAMETER,
                f"x25519 key share of {len(peer_key_exchange)} bytes, expected 32",
            )
        peer = x25519.X25519PublicKey.from_public_bytes(peer_key_exchange)
        try:
            shared = self._private_key.exchange(peer)
        except ValueError:
            # OpenSSL refuses to return the all-zero output of a small-order point.
            shared = bytes(X25519_KEY_LENGTH)
        # RFC 8446 section 7.4.2: "For X25519 and X448, implementations MUST check whether the
        # computed Diffie-Hellman shared secret is the all-zero value and abort if so".
        if not any(shared):
            raise TLSAlert(Alert.ILLEGAL_PARAMETER, "x25519 key share yields the all-zero secret")
        return shared


class ECDHKeyShare:
    """A secp256r1 or secp384r1 key share (RFC 8446 sections 4.2.8.2 and 7.4.2).

    The encoding is UncompressedPointRepresentation: ``0x04 || X || Y``, each coordinate padded
    to the curve's size (65 bytes for P-256, 97 for P-384). The shared secret is the
    x-coordinate of the ECDH result, padded to the coordinate size (section 7.4.2), which is
    what ``cryptography``'s ``ECDH`` exchange returns.
    """

    __slots__ = ("_curve", "_point_length", "_private_key", "_public_bytes", "group")

    _CURVES: dict[NamedGroup, tuple[Callable[[], ec.EllipticCurve], int]] = {
        NamedGroup.SECP256R1: (ec.SECP256R1, 65),
        NamedGroup.SECP384R1: (ec.SECP384R1, 97),
    }

    def __init__(
        self, group: NamedGroup, private_key: ec.EllipticCurvePrivateKey | None = None
    ) -> None:
        try:
            curve_factory, self._point_length = self._CURVES[group]
        except KeyError:
            raise ValueError(f"{group!r} is not an elliptic-curve group") from None
        self.group = group
        self._curve = curve_factory()
        if private_key is None:
            private_key = ec.generate_private_key(self._curve)
        elif private_key.curve.name != self._curve.name:
            raise ValueError(f"private key is on {private_key.curve.name}, not {self._curve.name}")
        self._private_key = private_key
        self._public_bytes = private_key.public_key().public_bytes(
            Encoding.X962, PublicFormat.UncompressedPoint
        )

    def __repr__(self) -> str:
        return f"ECDHKeyShare({self.group.name}, <private>)"

    def public_bytes(self) -> bytes:
        return self._public_bytes

    def exchange(self, peer_key_exchange: bytes) -> bytes:
        # Section 4.2.8.2: TLS 1.3 has a single point format; a compressed point (or the
        # one-byte encoding of the point at infinity) is simply the wrong length or form.
        if len(peer_key_exchange) != self._point_length or peer_key_exchange[0] != 0x04:
            raise TLSAlert(
                Alert.ILLEGAL_PARAMETER,
                f"{self.group.name.lower()} key share is not a {self._point_length}-byte"
                " uncompressed point",
            )
        try:
            # Validates coordinates in range and on the curve (section 4.2.8.2's three steps).
            peer = ec.EllipticCurvePublicKey.from_encoded_point(self._curve, peer_key_exchange)
            return self._private_key.exchange(ec.ECDH(), peer)
        except ValueError:
            raise TLSAlert(
                Alert.ILLEGAL_PARAMETER, f"{self.group.name.lower()} key share is not on the curve"
            ) from None


GROUPS: Final[dict[int, Callable[[], KeyShare]]] = {
    NamedGroup.X25519: X25519KeyShare,
    NamedGroup.SECP256R1: lambda: ECDHKeyShare(NamedGroup.SECP256R1),
    NamedGroup.SECP384R1: lambda: ECDHKeyShare(NamedGroup.SECP384R1),
}


def generate_key_share(group: int) -> KeyShare:
    """A fresh ephemeral key share for a supported ``group``; ``ValueError`` otherwise."""
    try:
        factory = GROUPS[group]
    except KeyError:
        raise ValueError(f"unsupported named group 0x{group:04x}") from None
    return factory()
