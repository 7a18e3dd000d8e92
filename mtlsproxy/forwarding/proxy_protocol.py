"""PROXY protocol version 2 header carrying the client's address and TLS identity.

The format is HAProxy's doc/proxy-protocol.txt (section 2.2): a 16-byte fixed part, the
addresses, then TLVs (one byte type, two bytes big-endian length, value). What we send:

======================  =====  ==================================================================
TLV                     type   value
======================  =====  ==================================================================
PP2_TYPE_ALPN           0x01   the negotiated ALPN protocol (absent when none)
PP2_TYPE_AUTHORITY      0x02   the SNI host name, UTF-8 (absent when the client sent none)
PP2_TYPE_SSL            0x20   ``client`` (1 byte), ``verify`` (4 bytes, big-endian), sub-TLVs:
  PP2_SUBTYPE_SSL_VERSION 0x21   "TLSv1.3" or "TLSv1.2" (always)
  PP2_SUBTYPE_SSL_CN      0x22   the client certificate's subject commonName, UTF-8 (when any)
  PP2_SUBTYPE_SSL_CIPHER  0x23   OpenSSL cipher name (always)
  PP2_SUBTYPE_SSL_SIG_ALG 0x24   our certificate's signature algorithm, "ecdsa-with-SHA256"
  PP2_SUBTYPE_SSL_KEY_ALG 0x25   our certificate's key, "EC256" / "RSA2048" (as HAProxy)
  PP2_SUBTYPE_SSL_CLIENT_CERT 0x28  the client's leaf, DER (``include_certificate=True``)
mtlsproxy SPIFFE ID     0xE0   the client's SPIFFE ID, else its first URI SAN, UTF-8
mtlsproxy SHA-256       0xE1   SHA-256 of the client's leaf certificate DER, 32 raw bytes
======================  =====  ==================================================================

With ``crc32c=True``, ``PP2_TYPE_CRC32C`` (0x03) carries the CRC32C of the whole header computed
with its own 4-byte value zeroed (section 2.2.4), big-endian. TLVs are sent in ascending type
order, CRC32C included: receivers that re-serialize the TLVs to verify the checksum (the Python
``proxy-protocol`` package does) sort them so.

``client`` has ``PP2_CLIENT_SSL`` (0x01) always, and with a client certificate
``PP2_CLIENT_CERT_SESS`` (0x04) plus ``PP2_CLIENT_CERT_CONN`` (0x02) unless the session was
resumed. ``verify`` is 0 only for a certificate that was presented and verified; it is 1 for an
anonymous client and for one admitted in audit mode that would have been refused: an upstream
must check ``verify == 0`` before trusting CN, 0xE0 or 0xE1, which are sent in both cases.

The client certificate is the ``PP2_SUBTYPE_SSL_CLIENT_CERT`` (0x28) sub-TLV that HAProxy
defines next to ``SSL_GROUP`` (0x26) and ``SSL_SIG_SCHEME`` (0x27), and that ghostunnel's
``tls-full`` mode sends. The SPIFFE ID and fingerprint use the custom range
(``PP2_TYPE_MIN_CUSTOM``..``MAX_CUSTOM``, 0xE0-0xEF, "reserved for application-specific data").

Addresses: TCP over IPv4 (0x11) or IPv6 (0x21; an IPv4 address next to an IPv6 one is sent
IPv4-mapped), stream over UNIX (0x31, 108-byte NUL-padded paths), and ``UNSPEC`` (0x00) with the
PROXY command when an address is unknown, so that the TLVs still reach the upstream (a LOCAL
command tells the receiver to discard the block).

The length field is 16 bits, so a header is at most 16 + 65535 bytes. When the certificate does
not fit it is left out (the SHA-256 TLV still identifies it); a header that does not fit
without it raises ``ProxyHeaderTooLarge``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct

from mtlsproxy.forwarding.tls_info import Address, ForwardedTLS

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
VERSION_PROXY = 0x21  # version 2 (high nibble), PROXY command (low nibble)
MAX_PAYLOAD = 0xFFFF  # the 16-bit length field: what follows the 16-byte fixed part

# Address family (high nibble) and transport protocol (low nibble), section 2.2.
FAMILY_UNSPEC = 0x00
FAMILY_TCP4 = 0x11
FAMILY_TCP6 = 0x21
FAMILY_UNIX_STREAM = 0x31
UNIX_PATH_SIZE = 108  # sun_path, as the specification fixes it

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
PP2_TYPE_MTLSPROXY_SPIFFE_ID = 0xE0
PP2_TYPE_MTLSPROXY_SHA256 = 0xE1
PP2_SUBTYPE_SSL_CLIENT_CERT = 0x28

PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04

_CRC32C_TLV_SIZE = 3 + 4


class ProxyHeaderTooLarge(ValueError):
    """The header cannot be encoded within the 16-bit length field even without the
    certificate (a certificate name or SNI beyond any sensible size)."""


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c_checksum(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, RFC 3720 appendix B.4), the
    checksum ``PP2_TYPE_CRC32C`` carries. Pure Python: a header is checksummed once per
    connection and is a few kilobytes (65 KiB at most)."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _tlv(kind: int, value: bytes) -> bytes:
    if len(value) > MAX_PAYLOAD:
        raise ProxyHeaderTooLarge(f"TLV 0x{kind:02X} is {len(value)} bytes")
    return struct.pack("!BH", kind, len(value)) + value


def _ip(address: tuple[str, int]) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    ip = ipaddress.ip_address(address[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    port = address[1]
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range: {port}")
    return ip, port


def _unix_path(path: str) -> bytes:
    raw = path.encode("utf-8", "surrogateescape")
    if len(raw) > UNIX_PATH_SIZE:
        raise ValueError(f"unix socket path longer than {UNIX_PATH_SIZE} bytes: {path!r}")
    return raw.ljust(UNIX_PATH_SIZE, b"\x00")


def _addresses(client: Address, server: Address) -> tuple[int, bytes]:
    """The family byte and the address block (section 2.2, ``union proxy_addr``)."""
    if isinstance(client, tuple) and isinstance(server, tuple):
        (src, sport), (dst, dport) = _ip(client), _ip(server)
        if src.version == dst.version == 4:
            return FAMILY_TCP4, src.packed + dst.packed + struct.pack("!HH", sport, dport)
        src6 = src if src.version == 6 else ipaddress.IPv6Address(f"::ffff:{src}")
        dst6 = dst if dst.version == 6 else ipaddress.IPv6Address(f"::ffff:{dst}")
        return FAMILY_TCP6, src6.packed + dst6.packed + struct.pack("!HH", sport, dport)
    if isinstance(client, str) and isinstance(server, str):
        return FAMILY_UNIX_STREAM, _unix_path(client) + _unix_path(server)
    return FAMILY_UNSPEC, b""


def _ssl_tlv(info: ForwardedTLS, certificate: bytes | None = None) -> bytes:
    client = PP2_CLIENT_SSL
    if info.client_certificate_presented:
        client |= PP2_CLIENT_CERT_SESS
        if not info.session_reused:
            client |= PP2_CLIENT_CERT_CONN
    verify = 0 if info.client_verified else 1
    subs = [_tlv(PP2_SUBTYPE_SSL_VERSION, info.version.encode("ascii"))]
    if info.identity is not None and info.identity.subject_cn is not None:
        subs.append(_tlv(PP2_SUBTYPE_SSL_CN, info.identity.subject_cn.encode("utf-8")))
    subs.append(_tlv(PP2_SUBTYPE_SSL_CIPHER, info.cipher.encode("ascii")))
    if (sig_alg := info.signature_algorithm) is not None:
        subs.append(_tlv(PP2_SUBTYPE_SSL_SIG_ALG, sig_alg.encode("ascii")))
    if (key_alg := info.key_algorithm) is not None:
        subs.append(_tlv(PP2_SUBTYPE_SSL_KEY_ALG, key_alg.encode("ascii")))
    if certificate is not None:
        subs.append(_tlv(PP2_SUBTYPE_SSL_CLIENT_CERT, certificate))
    return _tlv(PP2_TYPE_SSL, struct.pack("!BI", client, verify) + b"".join(subs))


def _identity_tlvs(info: ForwardedTLS) -> list[bytes]:
    tlvs = []
    identity = info.identity
    if identity is not None:
        uri = identity.spiffe_id or next(iter(identity.uris), None)
        if uri is not None:
            tlvs.append(_tlv(PP2_TYPE_MTLSPROXY_SPIFFE_ID, uri.encode("utf-8")))
    if info.certificate_der is not None:
        digest = hashlib.sha256(info.certificate_der).digest()
    elif identity is not None:
        digest = bytes.fromhex(identity.sha256)
    else:
        return tlvs
    tlvs.append(_tlv(PP2_TYPE_MTLSPROXY_SHA256, digest))
    return tlvs


def encode_v2(
    info: ForwardedTLS, *, include_certificate: bool = False, crc32c: bool = False
) -> bytes:
    """The PROXY v2 header for one connection (layout in the module docstring).

    ``include_certificate`` adds the client's leaf DER (SSL sub-TLV 0x28) when there is one and
    it fits;
    ``crc32c`` appends ``PP2_TYPE_CRC32C`` computed over the whole header with its own value
    zeroed (section 2.2.4). Raises ``ValueError`` for an address that cannot be encoded (bad IP,
    port, or a unix path over 108 bytes) and ``ProxyHeaderTooLarge`` when even the header
    without the certificate exceeds the length field.
    """
    family, addresses = _addresses(info.client_address, info.server_address)
    leading = b""  # the TLVs with a type below PP2_TYPE_CRC32C
    if info.alpn is not None:
        leading += _tlv(PP2_TYPE_ALPN, info.alpn.encode("ascii"))
    if info.sni is not None:
        leading += _tlv(PP2_TYPE_AUTHORITY, info.sni.encode("utf-8"))
    identity = b"".join(_identity_tlvs(info))
    ssl = _ssl_tlv(info)
    checksum = _CRC32C_TLV_SIZE if crc32c else 0
    size = len(addresses) + len(leading) + checksum + len(ssl) + len(identity)
    certificate = info.certificate_der
    if (
        include_certificate
        and certificate is not None
        and size + 3 + len(certificate) <= MAX_PAYLOAD
    ):
        ssl = _ssl_tlv(info, certificate)
        size += 3 + len(certificate)
    trailing = ssl + identity
    if size > MAX_PAYLOAD:
        raise ProxyHeaderTooLarge(f"PROXY v2 header payload of {size} bytes")
    head = SIGNATURE + struct.pack("!BBH", VERSION_PROXY, family, size) + addresses + leading
    if not crc32c:
        return head + trailing
    zeroed = head + struct.pack("!BHI", PP2_TYPE_CRC32C, 4, 0) + trailing
    value = crc32c_checksum(zeroed)
    return head + struct.pack("!BHI", PP2_TYPE_CRC32C, 4, value) + trailing
