"""Cipher suites and named groups (RFC 8446 sections 4.2.7, 4.2.8.2, 7.4, appendix B.4)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mtlsproxy.engine.native import (
    CIPHER_SUITES,
    GROUPS,
    TLS_AES_128_GCM_SHA256,
    TLS_AES_256_GCM_SHA384,
    TLS_CHACHA20_POLY1305_SHA256,
    CipherSuite,
    ECDHKeyShare,
    NamedGroup,
    TLSAlert,
    X25519KeyShare,
    generate_key_share,
    get_cipher_suite,
)
from mtlsproxy.vocabulary.failures import Alert


@pytest.mark.parametrize(
    ("suite", "code", "hash_name", "hash_length", "key_length", "aead", "limited"),
    [
        (TLS_AES_128_GCM_SHA256, 0x1301, "sha256", 32, 16, AESGCM, True),
        (TLS_AES_256_GCM_SHA384, 0x1302, "sha384", 48, 32, AESGCM, True),
        (TLS_CHACHA20_POLY1305_SHA256, 0x1303, "sha256", 32, 32, ChaCha20Poly1305, False),
    ],
)
def test_cipher_suite_parameters(
    suite: CipherSuite,
    code: int,
    hash_name: str,
    hash_length: int,
    key_length: int,
    aead: type,
    limited: bool,
) -> None:
    assert get_cipher_suite(code) is suite and CIPHER_SUITES[code] is suite
    assert (suite.hash_name, suite.hash_length, suite.key_length) == (
        hash_name,
        hash_length,
        key_length,
    )
    assert (suite.iv_length, suite.tag_length) == (12, 16)
    assert suite.new_hash().digest_size == hash_length
    assert isinstance(suite.new_aead(bytes(key_length)), aead)
    assert (suite.record_limit is not None) is limited
    with pytest.raises(ValueError):
        suite.new_aead(bytes(key_length + 1))


def test_aes_gcm_record_limit_is_two_to_the_24_5() -> None:
    assert TLS_AES_128_GCM_SHA256.record_limit == int(2**24.5)


def test_unknown_suite_and_group() -> None:
    assert get_cipher_suite(0x1304) is None  # TLS_AES_128_CCM_SHA256: not offered
    with pytest.raises(ValueError, match="0x001e"):
        generate_key_share(0x001E)  # x448


def test_rfc8448_x25519(rfc8448_secrets: dict[str, bytes]) -> None:
    server = X25519KeyShare(
        x25519.X25519PrivateKey.from_private_bytes(rfc8448_secrets["server_private_key"])
    )
    client = X25519KeyShare(
        x25519.X25519PrivateKey.from_private_bytes(rfc8448_secrets["client_private_key"])
    )
    assert server.public_bytes() == rfc8448_secrets["server_public_key"]
    assert client.public_bytes() == rfc8448_secrets["client_public_key"]
    shared = rfc8448_secrets["shared_secret"]
    assert server.exchange(client.public_bytes()) == shared
    assert client.exchange(server.public_bytes()) == shared


@pytest.mark.parametrize(
    ("group", "share_length", "secret_length"),
    [(NamedGroup.X25519, 32, 32), (NamedGroup.SECP256R1, 65, 32), (NamedGroup.SECP384R1, 97, 48)],
)
def test_group_round_trip(group: NamedGroup, share_length: int, secret_length: int) -> None:
    a, b = generate_key_share(group), GROUPS[group]()
    assert a.group is group and b.group is group
    assert len(a.public_bytes()) == share_length
    if group is not NamedGroup.X25519:
        assert a.public_bytes()[0] == 0x04
    secret = a.exchange(b.public_bytes())
    assert len(secret) == secret_length and secret == b.exchange(a.public_bytes())
    assert "private" in repr(a)


def _alert(share: object, peer: bytes) -> Alert:
    with pytest.raises(TLSAlert) as caught:
        share.exchange(peer)  # type: ignore[attr-defined]
    return caught.value.alert


# RFC 7748 / "May the Fourth" small-order X25519 points: all give the all-zero shared secret.
X25519_SMALL_ORDER = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


@pytest.mark.parametrize("peer", X25519_SMALL_ORDER)
def test_x25519_all_zero_shared_secret_is_illegal_parameter(peer: bytes) -> None:
    assert _alert(X25519KeyShare(), peer) is Alert.ILLEGAL_PARAMETER


@pytest.mark.parametrize("length", [0, 31, 33, 65])
def test_x25519_wrong_length_is_illegal_parameter(length: int) -> None:
    assert _alert(X25519KeyShare(), b"\x09" * length) is Alert.ILLEGAL_PARAMETER


def _p_curve(group: NamedGroup) -> ec.EllipticCurve:
    return ec.SECP256R1() if group is NamedGroup.SECP256R1 else ec.SECP384R1()


@pytest.mark.parametrize("group", [NamedGroup.SECP256R1, NamedGroup.SECP384R1])
def test_ecdh_invalid_shares_are_illegal_parameter(group: NamedGroup) -> None:
    share = ECDHKeyShare(group)
    peer_key = ec.generate_private_key(_p_curve(group)).public_key()
    good = peer_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    compressed = peer_key.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    size = (len(good) - 1) // 2
    off_curve = good[:-1] + bytes((good[-1] ^ 1,))
    out_of_range = b"\x04" + b"\xff" * (2 * size)
    zero_point = b"\x04" + bytes(2 * size)
    bad_form = b"\x05" + good[1:]
    other = NamedGroup.SECP384R1 if group is NamedGroup.SECP256R1 else NamedGroup.SECP256R1
    wrong_curve = ECDHKeyShare(other).public_bytes()
    for peer in (
        b"",
        b"\x00",
        compressed,
        off_curve,
        out_of_range,
        zero_point,
        bad_form,
        wrong_curve,
        good + b"\x00",
    ):
        assert _alert(share, peer) is Alert.ILLEGAL_PARAMETER, peer.hex()
    assert len(share.exchange(good)) == size


def test_ecdh_share_rejects_mismatched_private_key() -> None:
    with pytest.raises(ValueError):
        ECDHKeyShare(NamedGroup.SECP256R1, ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(ValueError):
        ECDHKeyShare(NamedGroup.X25519)
