"""The ClientHello's extensions: their code points, the values a TLS 1.3 server needs from
them (key shares, PSK offers) and the strict parsers of their bodies.

Every parser takes one extension's body, consumes it exactly and raises ``DecodeError`` (bad
framing) or ``HandshakeError`` at ``client_hello`` (framed but invalid); the ClientHello
parser (:mod:`mtlsproxy.engine.clienthello`) turns a ``DecodeError`` into ``decode_error``.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Final

from mtlsproxy.engine.records import Buffer, DecodeError
from mtlsproxy.vocabulary.failures import Alert, HandshakeError, Reason, Step
from mtlsproxy.vocabulary.frozen import quick_init

# RFC 1035 section 2.3.4 / RFC 6066 section 3: a DNS host name of at most 253 characters (255
# octets on the wire minus the length octets), labels of 1..63 characters.
MAX_HOST_NAME_SIZE: Final = 253
MAX_LABEL_SIZE: Final = 63
_LABEL: Final = rb"[A-Za-z0-9-]{1,%d}" % MAX_LABEL_SIZE
# Dot-separated labels, no empty label and no trailing dot: one match for the whole name.
_HOST_NAME_RE: Final = re.compile(rb"(?:%s\.)*%s" % (_LABEL, _LABEL))


class ExtensionType:
    """Extension code points we parse (IANA "TLS ExtensionType Values")."""

    SERVER_NAME: Final = 0x0000  # RFC 6066 section 3
    SUPPORTED_GROUPS: Final = 0x000A  # RFC 8446 section 4.2.7
    EC_POINT_FORMATS: Final = 0x000B  # RFC 8422 section 5.1.2
    SIGNATURE_ALGORITHMS: Final = 0x000D  # RFC 8446 section 4.2.3
    ALPN: Final = 0x0010  # RFC 7301 section 3.1
    PRE_SHARED_KEY: Final = 0x0029  # RFC 8446 section 4.2.11
    EARLY_DATA: Final = 0x002A  # RFC 8446 section 4.2.10
    SUPPORTED_VERSIONS: Final = 0x002B  # RFC 8446 section 4.2.1
    COOKIE: Final = 0x002C  # RFC 8446 section 4.2.2
    PADDING: Final = 0x0015  # RFC 7685
    PSK_KEY_EXCHANGE_MODES: Final = 0x002D  # RFC 8446 section 4.2.9
    KEY_SHARE: Final = 0x0033  # RFC 8446 section 4.2.8


def is_grease(value: int) -> bool:
    """RFC 8701 section 2: GREASE values are 0x0A0A, 0x1A1A, ..., 0xFAFA (and 0x0A.. 0xFA for
    single-byte fields, which we do not need here)."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


@quick_init
@dataclass(frozen=True, slots=True)
class KeyShareEntry:
    """One ``KeyShareEntry`` (RFC 8446 section 4.2.8): a group and its public value."""

    group: int
    key_exchange: bytes

    def __repr__(self) -> str:
        return f"KeyShareEntry(0x{self.group:04x}, <{len(self.key_exchange)} bytes>)"


@quick_init
@dataclass(frozen=True, slots=True, repr=False)
class OfferedPsks:
    """The client's pre_shared_key extension (RFC 8446 section 4.2.11). ``binders_size`` is
    the size of the length-prefixed binders list, which ends the ClientHello (pre_shared_key is
    the last extension): the binders are computed over the ClientHello without those bytes."""

    identities: tuple[tuple[bytes, int], ...]  # (identity, obfuscated_ticket_age)
    binders: tuple[bytes, ...]
    binders_size: int

    def __repr__(self) -> str:  # tickets and binders stay out of logs
        return f"OfferedPsks({len(self.identities)} identities)"


_unpack_two_uint16: Final = struct.Struct(">HH").unpack


def malformed(detail: str, alert: Alert = Alert.DECODE_ERROR) -> HandshakeError:
    return HandshakeError(Step.CLIENT_HELLO, Reason.MALFORMED, detail, alert)


def host_name(raw: bytes) -> str:
    """RFC 6066 section 3: an ASCII DNS host name without a trailing dot; returned lowercased."""
    if not raw or len(raw) > MAX_HOST_NAME_SIZE:
        raise malformed(f"server_name of {len(raw)} bytes is not a valid host name")
    if not _HOST_NAME_RE.fullmatch(raw):
        raise malformed("server_name is not a valid DNS host name")
    return raw.decode("ascii").lower()


def parse_server_name(body: bytes) -> str | None:
    """RFC 6066 section 3: ServerNameList server_name_list<1..2^16-1>; at most one host_name."""
    size = len(body)
    if (
        size > 5
        and body[2] == 0
        and _unpack_two_uint16(body[:2] + body[3:5]) == (size - 2, size - 5)
    ):
        # The usual list: one host_name filling it, read without a Buffer.
        return host_name(body[5:])
    buf = Buffer(body)  # the strict reading: several names, or what is wrong
    found: str | None = None
    with buf.pull_block(2, minimum=1):
        while not buf.eof():
            name_type = buf.pull_uint8()
            name = buf.pull_vector_bytes(2, minimum=1)
            if name_type == 0:
                if found is not None:
                    raise malformed("server_name lists two host names")
                found = host_name(name)
    if not buf.eof():
        raise DecodeError("trailing bytes after server_name_list")
    return found


def parse_alpn(body: bytes) -> tuple[str, ...]:
    """RFC 7301 section 3.1: ProtocolName protocol_name_list<2..2^16-1>, names <1..2^8-1>."""
    usual = _usual_alpn(body)
    return usual if usual is not None else _read_alpn(body)


def _usual_alpn(body: bytes) -> tuple[str, ...] | None:
    """``parse_alpn`` for a well-formed list, read by offsets; None for anything else."""
    size = len(body)
    if size < 4 or (body[0] << 8) | body[1] != size - 2:
        return None
    names: list[str] = []
    pos = 2
    while pos < size:
        end = pos + 1 + body[pos]
        if end == pos + 1 or end > size:
            return None
        names.append(body[pos + 1 : end].decode("latin-1"))
        pos = end
    return tuple(names)


def _read_alpn(body: bytes) -> tuple[str, ...]:
    """``parse_alpn``'s strict reading, which names what is wrong."""
    buf = Buffer(body)
    names: list[str] = []
    with buf.pull_block(2, minimum=2):
        while not buf.eof():
            names.append(buf.pull_vector_bytes(1, minimum=1).decode("latin-1"))
    if not buf.eof():
        raise DecodeError("trailing bytes after protocol_name_list")
    return tuple(names)


def parse_key_share(body: bytes) -> tuple[KeyShareEntry, ...]:
    """RFC 8446 section 4.2.8: KeyShareEntry client_shares<0..2^16-1>, key_exchange<1..>."""
    size = len(body)
    if size >= 2 and int.from_bytes(body[:2], "big") == size - 2:
        # Well-formed shares are read without a Buffer; anything else by the strict reading.
        shares: list[KeyShareEntry] = []
        pos = 2
        while pos + 4 <= size:
            group, length = _unpack_two_uint16(body[pos : pos + 4])
            end = pos + 4 + length
            if not length or end > size:
                break
            shares.append(KeyShareEntry(group, body[pos + 4 : end]))
            pos = end
        if pos == size:
            return tuple(shares)
    buf = Buffer(body)
    entries: list[KeyShareEntry] = []
    with buf.pull_block(2):
        while not buf.eof():
            group = buf.pull_uint16()
            entries.append(KeyShareEntry(group, buf.pull_vector_bytes(2, minimum=1)))
    if not buf.eof():
        raise DecodeError("trailing bytes after client_shares")
    return tuple(entries)


def parse_pre_shared_key(body: bytes) -> OfferedPsks:
    """RFC 8446 section 4.2.11: OfferedPsks, identities<7..2^16-1>, binders<33..2^16-1>."""
    usual = _one_psk(body)
    return usual if usual is not None else _read_pre_shared_key(body)


def _read_pre_shared_key(body: bytes) -> OfferedPsks:
    """``parse_pre_shared_key``'s strict reading: several offers, or what is wrong."""
    buf = Buffer(body)
    identities: list[tuple[bytes, int]] = []
    with buf.pull_block(2, minimum=7):
        while not buf.eof():
            identity = buf.pull_vector_bytes(2, minimum=1)
            identities.append((identity, buf.pull_uint32()))  # obfuscated_ticket_age
    binders_start = buf.tell()
    binders: list[bytes] = []
    with buf.pull_block(2, minimum=33):
        while not buf.eof():
            binders.append(buf.pull_vector_bytes(1, minimum=32))
    if not buf.eof():
        raise DecodeError("trailing bytes after OfferedPsks")
    if len(identities) != len(binders):
        raise malformed(
            f"pre_shared_key has {len(identities)} identities but {len(binders)} binders",
            Alert.ILLEGAL_PARAMETER,
        )
    return OfferedPsks(tuple(identities), tuple(binders), len(body) - binders_start)


def _one_psk(body: bytes) -> OfferedPsks | None:
    """``parse_pre_shared_key`` for the usual offer, read by offsets: one identity (a ticket)
    and its binder, each filling its list; None for anything else."""
    size = len(body)
    if size < 2:
        return None
    binders_start = 2 + int.from_bytes(body[:2], "big")  # after identities<7..2^16-1>
    # PskIdentity: identity<1..2^16-1>, then uint32 obfuscated_ticket_age
    identity_end = 4 + int.from_bytes(body[2:4], "big")
    if identity_end == 4 or identity_end + 4 != binders_start or binders_start + 3 > size:
        return None
    # binders<33..2^16-1> holding one PskBinderEntry<32..255>
    binder_length = body[binders_start + 2]
    if (
        binder_length < 32
        or int.from_bytes(body[binders_start : binders_start + 2], "big") != 1 + binder_length
        or binders_start + 3 + binder_length != size
    ):
        return None
    age = int.from_bytes(body[identity_end:binders_start], "big")
    return OfferedPsks(
        ((body[4:identity_end], age),), (body[binders_start + 3 :],), size - binders_start
    )


# uint16 vectors of up to 127 values by count (cipher suites, groups, signature schemes,
# versions, extension types): no format string is made and looked up per vector.
UINT16_VECTORS: Final = tuple(struct.Struct(f">{count}H") for count in range(128))


def uint16_vector(data: bytes) -> tuple[int, ...]:
    """The uint16 values that fill ``data`` (of even length)."""
    count = len(data) >> 1
    if count < len(UINT16_VECTORS):
        return UINT16_VECTORS[count].unpack(data)
    return struct.unpack(f">{count}H", data)


def whole(body: bytes, length_size: int, minimum: int) -> tuple[int, ...]:
    """A list extension's uint16 values: the vector is the whole body (RFC 8446 section 3.4)."""
    length = int.from_bytes(body[:length_size], "big")
    if len(body) == length_size + length and length >= minimum and not length % 2:
        # The well-formed case without a Buffer (every ClientHello has three of these).
        return uint16_vector(body[length_size:])
    buf = Buffer(body)  # the strict reading, which names what is wrong
    values = buf.pull_uint16_list(length_size, minimum=minimum)
    if not buf.eof():
        raise DecodeError("trailing bytes after a list extension")
    return values


def parse_uint8_list(body: bytes, minimum: int) -> bytes:
    """An ``opaque x<minimum..2^8-1>`` extension body holding only that vector."""
    if body and len(body) == body[0] + 1 and body[0] >= minimum:
        return body[1:]  # well-formed, without a Buffer
    buf = Buffer(body)  # the strict reading, which names what is wrong
    values = buf.pull_vector_bytes(1, minimum=minimum)
    if not buf.eof():
        raise DecodeError("trailing bytes after a list extension")
    return values
