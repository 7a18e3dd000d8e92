"""PROXY v2 headers, decoded by an independent implementation (the ``proxy-protocol`` package,
whose checksum check uses the ``crc32c`` C library)."""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from ipaddress import IPv4Address, IPv6Address

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from proxyprotocol import ProxyProtocolChecksumError
from proxyprotocol.result import ProxyResult, ProxyResultIPv4, ProxyResultIPv6, ProxyResultUnix
from proxyprotocol.tlv import ProxyProtocolTLV
from proxyprotocol.v2 import ProxyProtocolV2

from mtlsproxy.forwarding.proxy_protocol import (
    MAX_PAYLOAD,
    ProxyHeaderTooLarge,
    crc32c_checksum,
    encode_v2,
)
from mtlsproxy.forwarding.tls_info import key_algorithm_name, signature_algorithm_name
from tests.forwarding.support import SPIFFE_ID, Certs, forwarded


def decode(header: bytes) -> ProxyResult:
    return ProxyProtocolV2().unpack(header)


def test_crc32c_known_answers() -> None:
    assert crc32c_checksum(b"123456789") == 0xE3069283  # RFC 3720 B.4 check value
    assert crc32c_checksum(b"") == 0
    assert crc32c_checksum(b"\x00" * 32) == 0x8A9136AA  # RFC 3720 B.4 test vector


def test_verified_client_ipv4(certs: Certs) -> None:
    info = forwarded(certs)
    result = decode(encode_v2(info))
    assert isinstance(result, ProxyResultIPv4)
    assert result.source == (IPv4Address("192.0.2.10"), 51000)
    assert result.dest == (IPv4Address("192.0.2.1"), 8443)
    tlv = result.tlv
    assert tlv.alpn == b"http/1.1"
    assert tlv.authority == "api.example.org"
    ssl = tlv.ssl
    assert ssl.has_ssl and ssl.has_cert_conn and ssl.has_cert_sess
    assert ssl.verified and ssl.verify == 0
    assert ssl.version == "TLSv1.3"
    assert ssl.cn == "frontend"
    assert ssl.cipher == "TLS_AES_128_GCM_SHA256"
    assert ssl.sig_alg == "ecdsa-with-SHA256"
    assert ssl.key_alg == "EC256"
    assert tlv[0xE0] == SPIFFE_ID.encode()
    assert tlv[0xE1] == hashlib.sha256(certs.client_der).digest()
    assert 0x28 not in ssl


def test_anonymous_client_has_no_identity(certs: Certs) -> None:
    tlv = decode(encode_v2(forwarded(certs, anonymous=True), include_certificate=True)).tlv
    ssl = tlv.ssl
    assert ssl.has_ssl and not ssl.has_cert_conn and not ssl.has_cert_sess
    assert not ssl.verified  # "zero if the client presented a certificate and it was verified"
    assert ssl.cn is None
    assert {0xE0, 0xE1}.isdisjoint(tlv) and 0x28 not in ssl


def test_audit_mode_client_is_not_verified(certs: Certs) -> None:
    ssl = decode(encode_v2(forwarded(certs, verified=False))).tlv.ssl
    assert ssl.has_cert_conn and ssl.verify == 1 and ssl.cn == "frontend"


def test_resumed_session_sets_cert_sess_only(certs: Certs) -> None:
    ssl = decode(encode_v2(forwarded(certs, session_reused=True))).tlv.ssl
    assert ssl.has_cert_sess and not ssl.has_cert_conn and ssl.verified


def test_ipv6_and_ipv4_mapped(certs: Certs) -> None:
    result = decode(encode_v2(forwarded(certs, client=("2001:db8::7", 443), server=("::1", 1))))
    assert isinstance(result, ProxyResultIPv6)
    assert result.source == (IPv6Address("2001:db8::7"), 443)
    assert result.dest == (IPv6Address("::1"), 1)
    # A dual-stack listener reports an IPv4 client as ::ffff:a.b.c.d: sent as plain IPv4.
    mapped = forwarded(certs, client=("::ffff:192.0.2.10", 5), server=("192.0.2.1", 6))
    assert isinstance(decode(encode_v2(mapped)), ProxyResultIPv4)
    mixed = decode(encode_v2(forwarded(certs, client=("192.0.2.10", 5), server=("::1", 6))))
    assert isinstance(mixed, ProxyResultIPv6)
    assert mixed.source == (IPv6Address("::ffff:192.0.2.10"), 5)


def test_unix_socket(certs: Certs) -> None:
    result = decode(encode_v2(forwarded(certs, client="", server="/run/mtlsproxy.sock")))
    assert isinstance(result, ProxyResultUnix)
    assert result.source == "" and result.dest == "/run/mtlsproxy.sock"
    assert result.tlv.ssl.cn == "frontend"


def test_unknown_address_is_unspec_with_tlvs(certs: Certs) -> None:
    header = encode_v2(forwarded(certs, client=None), crc32c=True)
    assert header[12:14] == b"\x21\x00"  # PROXY command, AF_UNSPEC: TLVs are still read
    tlv = ProxyProtocolTLV(header[16:])
    assert tlv.ssl.cn == "frontend"
    assert tlv.verify_checksum(header[:16])


def test_without_sni_and_alpn(certs: Certs) -> None:
    tlv = decode(encode_v2(forwarded(certs, sni=None, alpn=None))).tlv
    assert tlv.alpn is None and tlv.authority is None and tlv.ssl.verified


@pytest.mark.parametrize("anonymous", [False, True])
def test_certificate_and_crc32c(certs: Certs, anonymous: bool) -> None:
    info = forwarded(certs, anonymous=anonymous)
    header = encode_v2(info, include_certificate=True, crc32c=True)
    tlv = decode(header).tlv  # raises ProxyProtocolChecksumError on a wrong checksum
    assert tlv.crc32c is not None
    assert tlv.ssl.get(0x28) == (None if anonymous else certs.client_der)
    at = header.index(b"\x03\x00\x04", 16 + 12)  # after the addresses, ALPN and SNI
    zeroed = header[: at + 3] + b"\x00" * 4 + header[at + 7 :]
    assert struct.unpack("!I", header[at + 3 : at + 7])[0] == crc32c_checksum(zeroed)
    assert tlv.crc32c == crc32c_checksum(zeroed)


def test_corrupted_header_fails_the_checksum(certs: Certs) -> None:
    header = bytearray(encode_v2(forwarded(certs), crc32c=True))
    header[20] ^= 0x01  # a bit of the source address
    with pytest.raises(ProxyProtocolChecksumError):
        decode(bytes(header))


def test_length_field_matches(certs: Certs) -> None:
    header = encode_v2(forwarded(certs), include_certificate=True, crc32c=True)
    assert header[:12] == b"\r\n\r\n\x00\r\nQUIT\n"
    assert struct.unpack("!H", header[14:16])[0] == len(header) - 16


def test_oversized_certificate_is_dropped(certs: Certs) -> None:
    info = dataclasses.replace(forwarded(certs), certificate_der=b"\x30" * (MAX_PAYLOAD - 100))
    header = encode_v2(info, include_certificate=True, crc32c=True)
    tlv = decode(header).tlv
    assert 0x28 not in tlv.ssl and len(tlv[0xE1]) == 32
    assert len(header) - 16 <= MAX_PAYLOAD


def test_certificate_that_just_fits_is_kept(certs: Certs) -> None:
    info = dataclasses.replace(forwarded(certs), identity=None)
    base = len(encode_v2(info, crc32c=True)) - 16
    size = MAX_PAYLOAD - base - 3
    big = dataclasses.replace(info, certificate_der=b"\x30" * size)
    header = encode_v2(big, include_certificate=True, crc32c=True)
    assert len(header) == 16 + MAX_PAYLOAD
    assert decode(header).tlv.ssl[0x28] == big.certificate_der


def test_header_that_cannot_fit_is_refused(certs: Certs) -> None:
    with pytest.raises(ProxyHeaderTooLarge):
        encode_v2(dataclasses.replace(forwarded(certs), sni="a" * 70000))
    with pytest.raises(ProxyHeaderTooLarge):
        encode_v2(dataclasses.replace(forwarded(certs), sni="a" * 65000, alpn="b" * 600))


@pytest.mark.parametrize(
    ("client", "server"),
    [
        (("not-an-ip", 1), ("192.0.2.1", 2)),
        (("192.0.2.1", 70000), ("192.0.2.1", 2)),
        ("/" + "x" * 200, "/run/a.sock"),
    ],
)
def test_bad_addresses_raise_value_error(certs: Certs, client: object, server: object) -> None:
    info = dataclasses.replace(forwarded(certs), client_address=client, server_address=server)
    with pytest.raises(ValueError):
        encode_v2(info)


def test_algorithm_names_as_haproxy(certs: Certs) -> None:
    ec_der = certs.server_ec.public_bytes(Encoding.DER)
    rsa_der = certs.server_rsa.public_bytes(Encoding.DER)
    assert signature_algorithm_name(ec_der) == "ecdsa-with-SHA256"
    assert key_algorithm_name(ec_der) == "EC256"
    assert signature_algorithm_name(rsa_der) == "ecdsa-with-SHA256"  # signed by the EC CA
    assert key_algorithm_name(rsa_der) == "RSA2048"
    assert signature_algorithm_name(b"junk") is None
    assert key_algorithm_name(b"junk") is None
    info = dataclasses.replace(forwarded(certs), server_certificate_der=rsa_der)
    assert decode(encode_v2(info)).tlv.ssl.key_alg == "RSA2048"
    no_server_cert = dataclasses.replace(info, server_certificate_der=None)
    ssl = decode(encode_v2(no_server_cert)).tlv.ssl
    assert ssl.sig_alg is None and ssl.key_alg is None
