"""The ClientHello: a strict, bounded, incremental parser (fingerprints: ``fingerprints.py``).

``ClientHelloReader`` is fed the first bytes of a connection in any split. It keeps every byte
unchanged in ``buffered`` (to be replayed into OpenSSL), decides "this is not TLS" from the first
bytes, reassembles the ClientHello across records (RFC 8446 section 5.1) and parses it
(RFC 8446 section 4.1.2) into a frozen ``ClientHello``. A hello as clients send it (whole in
its first record, every extension in its usual form) is read by offsets in one pass; anything
else by the record reader and the strict reading, which name every refusal. Every failure is a
``HandshakeError`` at ``Step.CLIENT_HELLO``: ``not_tls``, ``malformed`` or
``unsupported_version``. Nothing else escapes, memory is bounded by ``max_size`` and work is
linear in the bytes received.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial
from typing import Final, cast

from mtlsproxy.engine import fingerprints
from mtlsproxy.engine.hello_extensions import (
    UINT16_VECTORS,
    ExtensionType,
    KeyShareEntry,
    OfferedPsks,
    host_name,
    is_grease,
    malformed,
    parse_alpn,
    parse_key_share,
    parse_pre_shared_key,
    parse_server_name,
    parse_uint8_list,
    whole,
)
from mtlsproxy.engine.records import (
    HANDSHAKE_HEADER_SIZE,
    MAX_PLAINTEXT_RECORD,
    RECORD_HEADER_SIZE,
    TLS_MAJOR_VERSION,
    Buffer,
    ContentType,
    DecodeError,
    HandshakeReader,
    HandshakeType,
)
from mtlsproxy.vocabulary.failures import Alert, HandshakeError, Reason, Step
from mtlsproxy.vocabulary.frozen import quick_init

# The default cap on the whole ClientHello *including record headers*. Real ClientHellos are
# 200-2000 bytes; post-quantum key shares (X25519MLKEM768, 1216 bytes) plus large PSK tickets
# stay under ~8 KiB. OpenSSL's own limit for a ClientHello message is 128 KiB
# (SSL3_RT_MAX_PLAIN_LENGTH * 8 for the handshake buffer); we are stricter because we buffer
# before OpenSSL sees anything.
MAX_CLIENT_HELLO_SIZE: Final = 64 * 1024

# RFC 8446 section 4.1.2: opaque legacy_session_id<0..32>; Random random (32 bytes).
RANDOM_SIZE: Final = 32
MAX_SESSION_ID_SIZE: Final = 32

# ProtocolVersion values (RFC 8446 section 4.2.1, RFC 5246 appendix A.1, RFC 6101).
SSL3: Final = 0x0300
TLS1_0: Final = 0x0301
TLS1_1: Final = 0x0302
TLS1_2: Final = 0x0303
TLS1_3: Final = 0x0304

# An SSL 2.0-format ClientHello (RFC 5246 appendix E.2): uint16 msg_length with the top bit
# set, uint8 msg_type (1: client_hello), uint16 version: five bytes decide how to refuse it.
SSL2_HEADER_SIZE: Final = 5
SSL2_CLIENT_HELLO: Final = 1

# RFC 8446 section 4.1.2: what a second ClientHello may change: "the client MUST send the same
# ClientHello without modification, except" key_share (replaced), early_data (removed), cookie
# (added), pre_shared_key (updated) and padding (RFC 7685: added, removed, resized).
RETRY_MAY_CHANGE: Final = frozenset(
    (
        ExtensionType.KEY_SHARE,
        ExtensionType.EARLY_DATA,
        ExtensionType.COOKIE,
        ExtensionType.PRE_SHARED_KEY,
        ExtensionType.PADDING,
    )
)

# HTTP request methods whose presence at the start of a "TLS" connection means a plaintext
# HTTP client hit the TLS port (RFC 9110 section 9, RFC 9113 section 3.4 for the h2 preface).
HTTP_METHODS: Final = (
    b"GET ",
    b"POST ",
    b"HEAD ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"CONNECT ",
    b"PATCH ",
    b"TRACE ",
    b"PRI ",
)


@quick_init
@dataclass(frozen=True, slots=True, weakref_slot=True)
class ClientHello:
    """A parsed ClientHello (RFC 8446 section 4.1.2; RFC 5246 section 7.4.1.2).

    The fields are parsed from the extensions, whose raw bodies are not kept: the proxy keeps
    the hello for the connection's life (its log lines), and a client may send 60 KB of
    extensions no one reads. ``extension_type_codes`` keeps their types in wire order, GREASE
    included (2 bytes each; the fingerprints need them). GREASE values stay in the tuples (they
    are what the client sent) and are skipped by the fingerprints. ``key_shares`` and
    ``offered_psks`` carry what a TLS 1.3 server needs of those extensions, so no engine parses
    the hello a second time. What a second ClientHello must repeat is :func:`retry_digest` of
    the message, computed only when a HelloRetryRequest is sent.
    """

    legacy_version: int
    random: bytes
    session_id: bytes
    cipher_suites: tuple[int, ...]
    compression_methods: bytes
    extension_type_codes: bytes  # the extension types in wire order, uint16 each
    server_name: str | None = None
    alpn_protocols: tuple[str, ...] = ()
    supported_versions: tuple[int, ...] = ()
    supported_groups: tuple[int, ...] = ()
    signature_algorithms: tuple[int, ...] = ()
    key_shares: tuple[KeyShareEntry, ...] = ()
    has_key_share: bool = False  # the extension is present (it may list no share)
    psk_key_exchange_modes: tuple[int, ...] = ()
    offered_psks: OfferedPsks | None = None
    has_early_data: bool = False
    ec_point_formats: bytes = b""

    @property
    def key_share_groups(self) -> tuple[int, ...]:
        return tuple(entry.group for entry in self.key_shares)

    @property
    def has_pre_shared_key(self) -> bool:
        return self.offered_psks is not None

    @property
    def offered_versions(self) -> tuple[int, ...]:
        """RFC 8446 section 4.2.1: supported_versions if present, else legacy_version alone."""
        return self.supported_versions if self.supported_versions else (self.legacy_version,)

    @property
    def offers_tls13(self) -> bool:
        return TLS1_3 in self.supported_versions

    @property
    def max_version(self) -> int:
        """The highest non-GREASE version offered."""
        return max(
            (v for v in self.offered_versions if not is_grease(v)), default=self.legacy_version
        )

    @property
    def extension_types(self) -> tuple[int, ...]:
        codes = self.extension_type_codes
        return struct.unpack(f">{len(codes) // 2}H", codes)

    def ja4(self) -> str:
        """The FoxIO JA4 fingerprint (:func:`mtlsproxy.engine.fingerprints.ja4`)."""
        return fingerprints.ja4(self)

    def ja3_string(self) -> str:
        return fingerprints.ja3_string(self)

    def ja3(self) -> str:
        return fingerprints.ja3(self)

    def trace_fields(self) -> dict[str, object]:
        """What a handshake trace shows of this hello (the seed note's ClientHello dump)."""
        return {
            "versions": [f"0x{v:04x}" for v in self.offered_versions],
            "cipher_suites": [f"0x{c:04x}" for c in self.cipher_suites],
            "groups": [f"0x{g:04x}" for g in self.supported_groups],
            "key_shares": [f"0x{g:04x}" for g in self.key_share_groups],
            "signature_algorithms": [f"0x{a:04x}" for a in self.signature_algorithms],
            "sni": self.server_name,
            "alpn": list(self.alpn_protocols),
            "session_id_length": len(self.session_id),
            "psk": self.has_pre_shared_key,
            "early_data": self.has_early_data,
            "ja4": self.ja4(),
        }


def parse_client_hello(body: bytes) -> ClientHello:
    """Parse a ClientHello message body (without the 4-byte handshake header).

    RFC 8446 section 4.1.2 (and RFC 5246 section 7.4.1.2, where the extensions block may be
    absent). Raises ``HandshakeError`` (``malformed`` or ``unsupported_version``) and nothing
    else. A hello as clients send it is read by offsets (:func:`_usual_hello`); anything else,
    every refusal included, by the strict reading.
    """
    hello = _usual_hello(body)
    if hello is not None:
        return hello
    try:
        hello = _read_client_hello(body)
    except DecodeError as exc:
        raise malformed(f"ClientHello does not decode: {exc}") from None
    _check_version(hello)
    return hello


_UINT16: Final = struct.Struct(">H")
_EXTENSION_HEADER: Final = struct.Struct(">HH")
_UNPACK_UINT16: Final = _UINT16.unpack_from
# also a KeyShareEntry's group, length
_UNPACK_EXTENSION_HEADER: Final = _EXTENSION_HEADER.unpack_from

_NULL_COMPRESSION: Final = b"\x00"
# The fields the extensions fill, in order, as a hello without any of them has them.
_NO_EXTENSION: Final = cast(
    "tuple[str | None, tuple[str, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...], "
    "tuple[KeyShareEntry, ...], bool, tuple[int, ...], OfferedPsks | None, bool, bytes]",
    tuple(field.default for field in fields(ClientHello)[6:]),
)

# The extension types the usual reading compares with, as module names (on Python 3.11 a class
# attribute costs ~170 instructions more a read, and each extension is compared with several).
_ALPN: Final = ExtensionType.ALPN
_EC_POINT_FORMATS: Final = ExtensionType.EC_POINT_FORMATS
_KEY_SHARE: Final = ExtensionType.KEY_SHARE
_PRE_SHARED_KEY: Final = ExtensionType.PRE_SHARED_KEY
_PSK_KEY_EXCHANGE_MODES: Final = ExtensionType.PSK_KEY_EXCHANGE_MODES
_SERVER_NAME: Final = ExtensionType.SERVER_NAME
_SIGNATURE_ALGORITHMS: Final = ExtensionType.SIGNATURE_ALGORITHMS
_SUPPORTED_GROUPS: Final = ExtensionType.SUPPORTED_GROUPS
_SUPPORTED_VERSIONS: Final = ExtensionType.SUPPORTED_VERSIONS
_UINT16_LISTS: Final = frozenset((_SUPPORTED_GROUPS, _SIGNATURE_ALGORITHMS))  # length: uint16
_UINT8_LISTS: Final = frozenset((_PSK_KEY_EXCHANGE_MODES, _EC_POINT_FORMATS))  # opaque<1..2^8-1>


def _usual_hello(body: bytes) -> ClientHello | None:
    """``parse_client_hello`` for a hello as clients send it, read by offsets in one pass:
    exactly null compression, an extensions block, each extension kept in its usual form (one
    host name, vectors filling their extension), no type twice, pre_shared_key last, a version
    we speak. None for anything else, which the strict reading then accepts or refuses: this
    never raises, so that the strict reading names every error (both readings agree:
    tests/engine/test_fast_readings.py). Key shares, ALPN and PSK offers go through their
    parsers' own fast readings."""
    size = len(body)
    try:
        # legacy_version, random, legacy_session_id<0..32>, cipher_suites<2..2^16-2>
        session_id_end = 35 + body[34]
        suites_start = session_id_end + 2
        suites_end = suites_start + ((body[session_id_end] << 8) | body[session_id_end + 1])
        count = suites_end - suites_start
        if (
            body[34] > MAX_SESSION_ID_SIZE
            or count < 2
            or count & 1
            or body[suites_end] != 1  # legacy_compression_methods: one method, null
            or body[suites_end + 1] != 0
        ):
            return None
        cipher_suites = UINT16_VECTORS[count >> 1].unpack(body[suites_start:suites_end])
        pos = suites_end + 4  # past the compression methods and the extensions' length
        if pos + ((body[pos - 2] << 8) | body[pos - 1]) != size:
            return None
        types: list[int] = []
        (
            server_name, alpn_protocols, supported_versions, supported_groups,
            signature_algorithms, key_shares, has_key_share, psk_modes, offered_psks,
            has_early_data, ec_point_formats,
        ) = _NO_EXTENSION  # fmt: skip
        while pos < size:
            ext_type, length = _UNPACK_EXTENSION_HEADER(body, pos)
            start = pos + 4
            pos = start + length
            types.append(ext_type)
            if ext_type not in _KEPT_EXTENSIONS:
                continue
            if ext_type in _UINT16_LISTS:
                count = length - 2  # a uint16 vector<2..2^16-1> filling the extension
                if count < 2 or count & 1 or ((body[start] << 8) | body[start + 1]) != count:
                    return None
                values = UINT16_VECTORS[count >> 1].unpack(body[start + 2 : pos])
                if ext_type == _SUPPORTED_GROUPS:
                    supported_groups = values
                else:
                    signature_algorithms = values
            elif ext_type == _SERVER_NAME:  # one host_name filling the list
                if (
                    length <= 5
                    or body[start + 2] != 0
                    or ((body[start] << 8) | body[start + 1]) != length - 2
                    or ((body[start + 3] << 8) | body[start + 4]) != length - 5
                ):
                    return None
                server_name = host_name(body[start + 5 : pos])
            elif ext_type == _SUPPORTED_VERSIONS:
                count = length - 1  # versions<2..254>
                if count < 2 or count & 1 or body[start] != count:
                    return None
                supported_versions = UINT16_VECTORS[count >> 1].unpack(body[start + 1 : pos])
            elif ext_type == _KEY_SHARE:
                key_shares = parse_key_share(body[start:pos])
                has_key_share = True
            elif ext_type == _ALPN:
                alpn_protocols = parse_alpn(body[start:pos])
            elif ext_type in _UINT8_LISTS:
                if length < 2 or body[start] != length - 1:  # an opaque<1..2^8-1> filling it
                    return None
                if ext_type == _EC_POINT_FORMATS:
                    ec_point_formats = body[start + 1 : pos]
                else:
                    psk_modes = tuple(body[start + 1 : pos])
            elif ext_type == _PRE_SHARED_KEY:
                if pos != size:  # not the last extension
                    return None
                offered_psks = parse_pre_shared_key(body[start:pos])
            elif length:  # early_data, empty in a ClientHello
                return None
            else:
                has_early_data = True
        legacy_version = (body[0] << 8) | body[1]
        if (
            pos != size
            or len(set(types)) != len(types)
            or legacy_version <= SSL3
            or not (
                TLS1_3 in supported_versions or TLS1_2 in supported_versions
                if supported_versions
                else legacy_version >= TLS1_2
            )
        ):
            return None
        return ClientHello(
            legacy_version,
            body[2:34],
            body[35:session_id_end],
            cipher_suites,
            _NULL_COMPRESSION,
            UINT16_VECTORS[len(types)].pack(*types),
            server_name,
            alpn_protocols,
            supported_versions,
            supported_groups,
            signature_algorithms,
            key_shares,
            has_key_share,
            psk_modes,
            offered_psks,
            has_early_data,
            ec_point_formats,
        )
    except (IndexError, struct.error, DecodeError, HandshakeError):
        return None  # a read past the end, or a refusal: the strict reading names it


def retry_digest(message: bytes) -> bytes:
    """SHA-256 over what a second ClientHello must repeat (RFC 8446 section 4.1.2): every field
    before the extensions and every extension not in ``RETRY_MAY_CHANGE``, in wire order.
    ``message``: a ClientHello ``parse_client_hello`` accepted, its 4-byte header included.
    Only a HelloRetryRequest needs it, so no hello pays for it at parse time."""
    body = message[HANDSHAKE_HEADER_SIZE:]
    fixed_end = 35 + body[34]  # after legacy_session_id
    fixed_end += 2 + ((body[fixed_end] << 8) | body[fixed_end + 1])  # cipher_suites
    fixed_end += 1 + body[fixed_end]  # legacy_compression_methods
    digest = hashlib.sha256(body[:fixed_end])
    # Adjacent extensions are hashed as one run of bytes (one update per run rather than per
    # extension: the same digest).
    run_start = run_end = 0
    if fixed_end < len(body):  # RFC 5246 allows the extensions block to be absent
        for ext_type, ext_start, ext_end in _split_extensions(body, fixed_end):
            if ext_type not in RETRY_MAY_CHANGE:
                if ext_start != run_end:
                    digest.update(body[run_start:run_end])
                    run_start = ext_start
                run_end = ext_end
    digest.update(body[run_start:run_end])
    return digest.digest()


def _split_extensions(body: bytes, start: int) -> list[tuple[int, int, int]]:
    """``Extension extensions<8..2^16-1>`` from ``start`` to the end of ``body``, as
    ``(type, start, end)`` of each extension's raw bytes (type and length included); the
    framing checks of ``Buffer.pull_block`` and ``pull_vector_bytes``, inline."""
    size = len(body)
    if size - start < 2:
        raise DecodeError(f"read of 2 bytes at offset {start} runs past {size}")
    (length,) = _UNPACK_UINT16(body, start)
    pos = start + 2
    end = pos + length
    if end > size:
        raise DecodeError(f"vector of {length} bytes runs past its enclosing block")
    spans: list[tuple[int, int, int]] = []
    while pos < end:
        if end - pos < 4:
            raise DecodeError(f"read of 2 bytes at offset {pos + 2} runs past {end}")
        ext_type, ext_length = _UNPACK_EXTENSION_HEADER(body, pos)
        stop = pos + 4 + ext_length
        if stop > end:
            raise DecodeError(f"vector of {ext_length} bytes runs past its enclosing block")
        spans.append((ext_type, pos, stop))
        pos = stop
    if end != size:
        raise DecodeError(f"{size - end} trailing bytes after the extensions")
    return spans


def _check_extension_order(types: list[int]) -> None:
    """RFC 8446 section 4.2: "There MUST NOT be more than one extension of the same type in a
    given extension block"; section 4.2.11: pre_shared_key "MUST be the last extension"."""
    if len(set(types)) == len(types) and (
        ExtensionType.PRE_SHARED_KEY not in types or types[-1] == ExtensionType.PRE_SHARED_KEY
    ):
        return
    seen: set[int] = set()
    for index, ext_type in enumerate(types):
        if ext_type in seen:
            raise malformed(f"duplicate extension 0x{ext_type:04x}", Alert.ILLEGAL_PARAMETER)
        seen.add(ext_type)
        if ext_type == ExtensionType.PRE_SHARED_KEY and index != len(types) - 1:
            raise malformed("pre_shared_key is not the last extension", Alert.ILLEGAL_PARAMETER)


def _read_client_hello(body: bytes) -> ClientHello:
    """The strict reading: a ``Buffer`` over the fixed fields, every extension framed and
    ordered before any is parsed, each kept one by its own strict parser."""
    buf = Buffer(body)
    legacy_version = buf.pull_uint16()
    random = buf.pull_bytes(RANDOM_SIZE)
    session_id = buf.pull_vector_bytes(1)
    if len(session_id) > MAX_SESSION_ID_SIZE:
        raise malformed(f"legacy_session_id of {len(session_id)} bytes exceeds 32")
    # CipherSuite cipher_suites<2..2^16-2>
    cipher_suites = buf.pull_uint16_list(2, minimum=2)
    # opaque legacy_compression_methods<1..2^8-1>; must include null (0) for TLS 1.2 and be
    # exactly [0] for TLS 1.3 (checked by OpenSSL against the negotiated version).
    compression_methods = buf.pull_vector_bytes(1, minimum=1)
    if 0 not in compression_methods:
        raise malformed("compression methods do not include null", Alert.ILLEGAL_PARAMETER)

    # RFC 5246 allows the extensions block to be absent entirely.
    spans = _split_extensions(body, buf.tell()) if not buf.eof() else []
    types = [span[0] for span in spans]
    _check_extension_order(types)

    parsed: dict[str, object] = {}
    for ext_type, ext_start, ext_end in spans:
        field = _FIELD_PARSERS.get(ext_type)
        if field is not None:
            name, parse = field
            parsed[name] = parse(body[ext_start + 4 : ext_end])
    if "key_shares" in parsed:
        parsed["has_key_share"] = True  # the extension is there, even listing no share

    return ClientHello(
        legacy_version=legacy_version,
        random=random,
        session_id=session_id,
        cipher_suites=cipher_suites,
        compression_methods=compression_methods,
        extension_type_codes=struct.pack(f">{len(types)}H", *types),
        **parsed,  # type: ignore[arg-type]
    )


def _early_data(body: bytes) -> bool:
    # RFC 8446 section 4.2.10: empty in the ClientHello.
    if body:
        raise DecodeError("early_data extension is not empty")
    return True


# The extensions the ClientHello keeps a field of: the field's name and how the body is parsed
# (functools.partial rather than lambdas: one Python call fewer per extension).
_FIELD_PARSERS: Final[dict[int, tuple[str, Callable[[bytes], object]]]] = {
    ExtensionType.SERVER_NAME: ("server_name", parse_server_name),
    ExtensionType.ALPN: ("alpn_protocols", parse_alpn),
    # ProtocolVersion versions<2..254>
    ExtensionType.SUPPORTED_VERSIONS: (
        "supported_versions",
        partial(whole, length_size=1, minimum=2),
    ),
    # NamedGroup named_group_list<2..2^16-1>
    ExtensionType.SUPPORTED_GROUPS: ("supported_groups", partial(whole, length_size=2, minimum=2)),
    # SignatureScheme supported_signature_algorithms<2..2^16-2>
    ExtensionType.SIGNATURE_ALGORITHMS: (
        "signature_algorithms",
        partial(whole, length_size=2, minimum=2),
    ),
    ExtensionType.KEY_SHARE: ("key_shares", parse_key_share),
    # PskKeyExchangeMode ke_modes<1..255>
    ExtensionType.PSK_KEY_EXCHANGE_MODES: (
        "psk_key_exchange_modes",
        lambda b: tuple(parse_uint8_list(b, 1)),
    ),
    ExtensionType.PRE_SHARED_KEY: ("offered_psks", parse_pre_shared_key),
    ExtensionType.EARLY_DATA: ("has_early_data", _early_data),
    # ECPointFormat ec_point_format_list<1..2^8-1>
    ExtensionType.EC_POINT_FORMATS: ("ec_point_formats", partial(parse_uint8_list, minimum=1)),
}
_KEPT_EXTENSIONS: Final = frozenset(_FIELD_PARSERS)


def _refuse_legacy_version(version: int, detail: str) -> HandshakeError:
    """OpenSSL's refusal of a hello whose legacy_version is SSL 3.0 or older, even with
    supported_versions offering TLS 1.3 (ssl_choose_server_version: BAD_LEGACY_VERSION), a
    choice appendix D leaves to the server: protocol_version, said in the client's version's
    terms, so handshake_failure for SSL 3.0, which has no protocol_version alert (RFC 6101
    section 5.4.2; OpenSSL's ssl3_alert_code)."""
    alert = Alert.HANDSHAKE_FAILURE if version == SSL3 else Alert.PROTOCOL_VERSION
    return HandshakeError(Step.CLIENT_HELLO, Reason.UNSUPPORTED_VERSION, detail, alert)


def _check_version(hello: ClientHello) -> None:
    """We speak TLS 1.2 and 1.3 only (RFC 8446 section 4.2.1, RFC 8996)."""
    if hello.legacy_version <= SSL3:
        raise _refuse_legacy_version(
            hello.legacy_version, f"legacy_version 0x{hello.legacy_version:04x} is SSL 3.0 or older"
        )
    versions = hello.supported_versions
    if versions:
        if TLS1_3 in versions or TLS1_2 in versions:
            return  # the common case, without a look at each version
        if not any(v >= TLS1_2 and not is_grease(v) for v in versions):
            raise HandshakeError(
                Step.CLIENT_HELLO,
                Reason.UNSUPPORTED_VERSION,
                "supported_versions offers nothing at or above TLS 1.2",
                Alert.PROTOCOL_VERSION,
            )
    elif hello.legacy_version < TLS1_2:
        raise HandshakeError(
            Step.CLIENT_HELLO,
            Reason.UNSUPPORTED_VERSION,
            f"client offers at most version 0x{hello.legacy_version:04x}",
            Alert.PROTOCOL_VERSION,
        )


def _lone_client_hello(data: bytes, max_size: int) -> bytes | None:
    """The ClientHello message (header included) when ``data`` opens with a handshake record
    holding exactly one whole ClientHello, as nearly every client sends it: the common case,
    without the record reader. None for anything else (more records, fragments, a bad header),
    which the record reader handles and names (RFC 8446 section 5.1)."""
    if (
        len(data) < RECORD_HEADER_SIZE + HANDSHAKE_HEADER_SIZE
        or data[0] != ContentType.HANDSHAKE
        or data[1] != TLS_MAJOR_VERSION
        or data[RECORD_HEADER_SIZE] != HandshakeType.CLIENT_HELLO
    ):
        return None
    length = (data[3] << 8) | data[4]
    end = RECORD_HEADER_SIZE + length
    message_length = int.from_bytes(data[6:9], "big")
    if (
        length > MAX_PLAINTEXT_RECORD
        or end > min(len(data), max_size)
        or HANDSHAKE_HEADER_SIZE + message_length != length
    ):
        return None
    return data[RECORD_HEADER_SIZE:end]


class ClientHelloReader:
    """Read the ClientHello from the first bytes of a connection, fed in any split.

    ``feed(data)`` returns the ``ClientHello`` once complete, ``None`` while more bytes are
    needed, and raises ``HandshakeError`` (step ``client_hello``) otherwise; after a failure it
    raises the same error again. Feeding after the ClientHello was returned raises
    ``RuntimeError``. ``buffered`` is every byte fed, unchanged, for replay into OpenSSL; it may
    extend past the ClientHello (e.g. a TLS 1.3 client's CCS and early data in the same read),
    ``hello_size`` says where the ClientHello's records end.

    Bounds: the ClientHello's records, headers included, may total at most ``max_size`` bytes;
    the reader never buffers more than ``max_size`` bytes before it either returns the
    ClientHello or fails (plus, on success, the rest of the final ``feed`` chunk).
    """

    def __init__(self, max_size: int = MAX_CLIENT_HELLO_SIZE) -> None:
        self._max_size = max_size
        # Every byte fed: the first chunk itself when it holds the whole hello (no copy).
        self._buffered: bytes | bytearray = bytearray()
        # The record reader, made only for a hello that is not whole in the first chunk.
        self._records: HandshakeReader | None = None
        self._hello: ClientHello | None = None
        self._message = b""
        self._hello_size = 0
        self._error: HandshakeError | None = None
        self._refused_version: int | None = None  # the client's version, when refused for it

    @property
    def buffered(self) -> bytes:
        return bytes(self._buffered)

    @property
    def hello_size(self) -> int:
        """Bytes of ``buffered`` that are the ClientHello's records (0 until it is complete)."""
        return self._hello_size

    @property
    def message(self) -> bytes:
        """The ClientHello handshake message, 4-byte header included, as the transcript hash
        of RFC 8446 section 4.4.1 needs it (empty until it is complete)."""
        return self._message

    @property
    def alert_record_version(self) -> int:
        """The record version of the alert that refuses these bytes, as ``openssl s_server``
        writes it. A refused version is echoed (the hello's legacy_version, or an SSL 2.0
        hello's TLS version), so that an old client reads the alert in its own terms;
        TLS 1.3's 0x0304 is 0x0303 on the wire, as in every TLS 1.3 record. Any other alert
        says 0x0303 (RFC 8446 section 5.1: 0x0301 is for an initial ClientHello only)."""
        version = self._refused_version
        return TLS1_2 if version is None or version == TLS1_3 else version

    @property
    def looks_like_http(self) -> bool:
        """True when the bytes start with an HTTP method token (a plaintext client)."""
        head = bytes(self._buffered[:16])
        return head.startswith(HTTP_METHODS)

    def feed(self, data: bytes | bytearray | memoryview) -> ClientHello | None:
        if self._hello is not None:
            raise RuntimeError("ClientHelloReader.feed() called after the ClientHello")
        if self._error is not None:
            raise self._error
        try:
            return self._feed(bytes(data))
        except HandshakeError as exc:
            self._error = exc
            raise

    def _feed(self, data: bytes) -> ClientHello | None:
        before = len(self._buffered)
        if not before and (lone := _lone_client_hello(data, self._max_size)) is not None:
            self._buffered = data
            return self._parse(lone, RECORD_HEADER_SIZE + len(lone))
        self._buffered += data  # the bytearray: only a lone hello's chunk is kept as bytes
        if before < SSL2_HEADER_SIZE and not self._check_first_bytes():
            return None  # an SSL 2.0 header is not whole yet
        records = self._records
        if records is None:
            self._records = records = HandshakeReader(
                Step.CLIENT_HELLO,
                max_message_size=max(
                    0, self._max_size - RECORD_HEADER_SIZE - HANDSHAKE_HEADER_SIZE
                ),
            )
        room = max(0, self._max_size - before)
        records.feed(data[:room])

        message = records.read_message()
        if message is None:
            msg_type, length = records.pending_header()
            if msg_type is not None and msg_type != HandshakeType.CLIENT_HELLO:
                raise self._wrong_type(msg_type)
            if length is not None and (
                length + HANDSHAKE_HEADER_SIZE + RECORD_HEADER_SIZE > self._max_size
            ):
                raise malformed(
                    f"ClientHello of {length} bytes exceeds the limit of {self._max_size}"
                )
            if len(self._buffered) > self._max_size:
                raise malformed(f"no complete ClientHello in the first {self._max_size} bytes")
            return None
        if message.msg_type != HandshakeType.CLIENT_HELLO:
            raise self._wrong_type(message.msg_type)
        if records.fragment_pending:
            # RFC 8446 section 5.1: handshake messages MUST NOT span key changes; nothing may
            # follow the ClientHello in its record (the next client flight waits for ours).
            raise malformed("bytes follow the ClientHello in its last record")
        return self._parse(message.raw, records.consumed)

    def _parse(self, message: bytes, hello_size: int) -> ClientHello:
        """Parse the whole ClientHello ``message`` (header included), whose records are the
        first ``hello_size`` bytes."""
        body = message[HANDSHAKE_HEADER_SIZE:]
        try:
            self._hello = parse_client_hello(body)
        except HandshakeError as error:
            if error.reason is Reason.UNSUPPORTED_VERSION:  # legacy_version opens the body
                self._refused_version = int.from_bytes(body[:2], "big")
            raise
        self._message = message
        self._hello_size = hello_size
        return self._hello

    def _wrong_type(self, msg_type: int) -> HandshakeError:
        return malformed(
            f"first handshake message has type {msg_type}, not ClientHello",
            Alert.UNEXPECTED_MESSAGE,
        )

    def _check_first_bytes(self) -> bool:
        """RFC 8446 section 5.1: a TLS connection opens with a handshake record, {0x16, 0x03}.
        False while an SSL 2.0 record header is not whole (its version decides the alert)."""
        first = self._buffered[0] if self._buffered else None
        if first is not None and first & 0x80:
            return self._check_sslv2_hello()
        if first is not None and first != ContentType.HANDSHAKE:
            if self.looks_like_http:
                detail = "plaintext HTTP request on a TLS port"
            else:
                detail = f"first byte 0x{first:02x} is not a TLS handshake record"
            raise HandshakeError(Step.CLIENT_HELLO, Reason.NOT_TLS, detail)
        if len(self._buffered) >= 2 and self._buffered[1] != TLS_MAJOR_VERSION:
            raise HandshakeError(
                Step.CLIENT_HELLO,
                Reason.NOT_TLS,
                f"record version major byte 0x{self._buffered[1]:02x} is not TLS",
            )
        return True

    def _check_sslv2_hello(self) -> bool:
        """An SSL 2.0-format ClientHello (RFC 5246 appendix E.2: a 2-byte length with the top
        bit set, msg_type 1, version) cannot offer TLS 1.3 and is no TLS 1.2 we serve: refused
        with the alert OpenSSL sends for it, not a bare close. Anything else is not TLS."""
        head = self._buffered[:SSL2_HEADER_SIZE]
        if len(head) >= 3 and head[2] != SSL2_CLIENT_HELLO:
            raise HandshakeError(
                Step.CLIENT_HELLO, Reason.NOT_TLS, f"first byte 0x{head[0]:02x} is not TLS"
            )
        if len(head) < SSL2_HEADER_SIZE:
            return False
        version = int.from_bytes(head[3:5], "big")
        if version >> 8 == TLS_MAJOR_VERSION:  # OpenSSL refuses SSL 2.0 itself unechoed
            self._refused_version = version
        raise _refuse_legacy_version(
            version, f"SSLv2-format ClientHello (version 0x{version:04x}); TLS 1.2 and 1.3 only"
        )
