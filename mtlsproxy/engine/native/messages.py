"""TLS 1.3 handshake messages: encoders for what we send, bounded decoders for what we read.

RFC 8446 section 4. Every encoder returns the complete handshake message, 4-byte header
(``HandshakeType msg_type; uint24 length``) included, ready for the transcript and the record
layer. Every decoder takes the message *body* and raises
:class:`~mtlsproxy.engine.native.alerts.TLSAlert` (``decode_error`` unless the RFC names
another alert) for anything it cannot accept; nothing else escapes for peer input.

The server side uses: :func:`server_hello`, :func:`hello_retry_request`,
:func:`encrypted_extensions`, :func:`certificate_request`, :func:`certificate`,
:func:`certificate_verify`, :func:`finished`, :func:`new_session_ticket`, :func:`key_update`,
and reads the client's Certificate, CertificateVerify, Finished and KeyUpdate with the
``decode_*`` functions and :class:`HandshakeAssembler`. The ClientHello, its key shares and its
PSK offers included, is parsed once, by :mod:`mtlsproxy.engine.clienthello`, for both engines.
The client-side encoders and the ServerHello / EncryptedExtensions / CertificateRequest
decoders exist for tests (a minimal in-memory client) and round trips.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Final, NamedTuple

from mtlsproxy.engine.hello_extensions import ExtensionType, KeyShareEntry
from mtlsproxy.engine.native.alerts import TLSAlert
from mtlsproxy.engine.records import Buffer, DecodeError, HandshakeType, MessageAssembler
from mtlsproxy.vocabulary.failures import Alert

TLS13: Final = 0x0304
LEGACY_VERSION: Final = 0x0303

# Section 4.1.3: HelloRetryRequest is a ServerHello whose random is SHA-256("HelloRetryRequest").
HELLO_RETRY_REQUEST_RANDOM: Final = hashlib.sha256(b"HelloRetryRequest").digest()

# Extension code points used here beyond those the ClientHello parser names (IANA registry).
EXT_COOKIE: Final = 0x002C  # section 4.2.2
EXT_CERTIFICATE_AUTHORITIES: Final = 0x002F  # section 4.2.4
EXT_SIGNATURE_ALGORITHMS_CERT: Final = 0x0032  # section 4.2.3

# The types of the messages every handshake writes, as module names: a member looked up on its
# enum class costs ~0.2 us on Python 3.11.
_SERVER_HELLO: Final = HandshakeType.SERVER_HELLO
_CERTIFICATE_VERIFY: Final = HandshakeType.CERTIFICATE_VERIFY
_FINISHED: Final = HandshakeType.FINISHED
_NEW_SESSION_TICKET: Final = HandshakeType.NEW_SESSION_TICKET

# Bounds on what a client may send us (the reassembly cap bounds the whole message too).
MAX_HANDSHAKE_MESSAGE: Final = 64 * 1024  # body bytes of one reassembled handshake message
MAX_CERTIFICATES: Final = 16  # entries in the client's Certificate (leaf + intermediates)

# KeyUpdateRequest (section 4.6.3).
UPDATE_NOT_REQUESTED: Final = 0
UPDATE_REQUESTED: Final = 1


def _decode_error(detail: str) -> TLSAlert:
    return TLSAlert(Alert.DECODE_ERROR, detail)


class _decoding:
    """Turn a ``DecodeError`` (short read, bad vector length) into ``decode_error`` (a plain
    class: a generator-based context manager costs microseconds per message)."""

    __slots__ = ("_what",)

    def __init__(self, what: str) -> None:
        self._what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if isinstance(exc, DecodeError):
            raise _decode_error(f"{self._what} does not decode: {exc}") from None


# Encoding helpers (section 3: vectors carry a length prefix of 1, 2 or 3 bytes)


def vector(data: bytes, length_size: int) -> bytes:
    if len(data) >= 1 << (8 * length_size):
        raise ValueError(f"vector of {len(data)} bytes does not fit a {length_size}-byte length")
    return len(data).to_bytes(length_size, "big") + data


def uint16_list(values: Iterable[int], length_size: int = 2) -> bytes:
    values = tuple(values)
    return vector(struct.pack(f">{len(values)}H", *values), length_size)


def extensions_block(extensions: Sequence[tuple[int, bytes]]) -> bytes:
    """``Extension extensions<0..2^16-1>``, each ``(type, extension_data<0..2^16-1>)``."""
    return vector(b"".join(t.to_bytes(2, "big") + vector(body, 2) for t, body in extensions), 2)


def handshake(msg_type: int, body: bytes) -> bytes:
    """A handshake message: type, uint24 length, body (section 4)."""
    if len(body) >= 1 << 24:
        raise ValueError("handshake message too long")
    return ((msg_type << 24) | len(body)).to_bytes(4, "big") + body  # one int, one bytes


def _parse_extensions(buf: Buffer) -> tuple[tuple[int, bytes], ...]:
    """An extension block; duplicates are ``illegal_parameter`` (section 4.2)."""
    extensions: list[tuple[int, bytes]] = []
    seen: set[int] = set()
    with buf.pull_block(2):
        while not buf.eof():
            ext_type = buf.pull_uint16()
            if ext_type in seen:
                raise TLSAlert(Alert.ILLEGAL_PARAMETER, f"duplicate extension 0x{ext_type:04x}")
            seen.add(ext_type)
            extensions.append((ext_type, buf.pull_vector_bytes(2)))
    return tuple(extensions)


def _end(buf: Buffer, what: str) -> None:
    if not buf.eof():
        raise _decode_error(f"{buf.remaining()} trailing bytes after {what}")


def extension_body(extensions: Sequence[tuple[int, bytes]], ext_type: int) -> bytes | None:
    for found, body in extensions:
        if found == ext_type:
            return body
    return None


# ServerHello and HelloRetryRequest (sections 4.1.3, 4.1.4)


def server_hello(
    random: bytes,
    session_id: bytes,
    cipher_suite: int,
    group: int,
    key_exchange: bytes,
    selected_identity: int | None = None,
) -> bytes:
    """ServerHello for TLS 1.3: supported_versions (0x0304), our key_share entry and, when a
    PSK was accepted, pre_shared_key with its selected_identity (section 4.2.11).

    Written on every handshake, so encoded in one pass (``_server_hello`` is the same layout
    through the generic helpers, for the HelloRetryRequest)."""
    if len(random) != 32 or len(session_id) > 32:
        raise ValueError("bad random or legacy_session_id")
    extensions = [
        _SUPPORTED_VERSIONS_TLS13,
        # KeyShareServerHello (4.2.8): extension type and length, group, key_exchange<1..>
        _KEY_SHARE_HEADER.pack(
            ExtensionType.KEY_SHARE, 4 + len(key_exchange), group, len(key_exchange)
        ),
        key_exchange,
    ]
    if selected_identity is not None:
        extensions.append(_PRE_SHARED_KEY.pack(ExtensionType.PRE_SHARED_KEY, 2, selected_identity))
    block = b"".join(extensions)
    size = 2 + 32 + 1 + len(session_id) + 5 + len(block)
    return b"".join((
        ((_SERVER_HELLO << 24) | size).to_bytes(4, "big"),  # the header (``handshake``)
        _LEGACY_VERSION_BYTES, random, bytes((len(session_id),)), session_id,
        _SUITE_COMPRESSION_LENGTH.pack(cipher_suite, 0, len(block)), block,
    ))  # fmt: skip


_SUPPORTED_VERSIONS_TLS13: Final = struct.pack(">HHH", ExtensionType.SUPPORTED_VERSIONS, 2, TLS13)
_KEY_SHARE_HEADER: Final = struct.Struct(">HHHH")
_PRE_SHARED_KEY: Final = struct.Struct(">HHH")
_LEGACY_VERSION_BYTES: Final = LEGACY_VERSION.to_bytes(2, "big")
_SUITE_COMPRESSION_LENGTH: Final = struct.Struct(">HBH")  # cipher_suite, legacy_compression, length
# a SignatureScheme (an IntEnum: packed without a to_bytes call)
_SCHEME: Final = struct.Struct(">H")


def hello_retry_request(
    session_id: bytes, cipher_suite: int, selected_group: int, cookie: bytes | None = None
) -> bytes:
    """HelloRetryRequest: the special random, supported_versions and the selected group
    (``KeyShareHelloRetryRequest``), plus a cookie when given (section 4.1.4)."""
    extensions = [
        (ExtensionType.SUPPORTED_VERSIONS, TLS13.to_bytes(2, "big")),
        (ExtensionType.KEY_SHARE, selected_group.to_bytes(2, "big")),
    ]
    if cookie is not None:
        extensions.append((EXT_COOKIE, vector(cookie, 2)))
    return _server_hello(HELLO_RETRY_REQUEST_RANDOM, session_id, cipher_suite, extensions)


def _server_hello(
    random: bytes, session_id: bytes, cipher_suite: int, extensions: list[tuple[int, bytes]]
) -> bytes:
    if len(random) != 32 or len(session_id) > 32:
        raise ValueError("bad random or legacy_session_id")
    body = (
        LEGACY_VERSION.to_bytes(2, "big")
        + random
        + vector(session_id, 1)
        + cipher_suite.to_bytes(2, "big")
        + b"\x00"  # legacy_compression_method
        + extensions_block(extensions)
    )
    return handshake(_SERVER_HELLO, body)


@dataclass(frozen=True, slots=True)
class ServerHello:
    random: bytes
    session_id: bytes
    cipher_suite: int
    extensions: tuple[tuple[int, bytes], ...]

    @property
    def is_retry_request(self) -> bool:
        return self.random == HELLO_RETRY_REQUEST_RANDOM

    @property
    def selected_version(self) -> int | None:
        body = extension_body(self.extensions, ExtensionType.SUPPORTED_VERSIONS)
        return int.from_bytes(body, "big") if body is not None and len(body) == 2 else None

    @property
    def key_share(self) -> KeyShareEntry | None:
        """The server's share (ServerHello) or, for a HelloRetryRequest, the selected group
        with empty key_exchange."""
        body = extension_body(self.extensions, ExtensionType.KEY_SHARE)
        if body is None:
            return None
        with _decoding("key_share"):
            buf = Buffer(body)
            group = buf.pull_uint16()
            exchange = b"" if self.is_retry_request else buf.pull_vector_bytes(2, minimum=1)
            _end(buf, "key_share")
        return KeyShareEntry(group, exchange)


def decode_server_hello(body: bytes) -> ServerHello:
    with _decoding("ServerHello"):
        buf = Buffer(body)
        buf.pull_uint16()
        random = buf.pull_bytes(32)
        session_id = buf.pull_vector_bytes(1)
        suite = buf.pull_uint16()
        if buf.pull_uint8() != 0:
            raise TLSAlert(Alert.ILLEGAL_PARAMETER, "non-null compression method")
        extensions = _parse_extensions(buf)
        _end(buf, "ServerHello")
    return ServerHello(random, session_id, suite, extensions)


# EncryptedExtensions (section 4.3.1)


def encrypted_extensions(alpn: str | None = None) -> bytes:
    """EncryptedExtensions; ALPN (RFC 7301 section 3.1: exactly one name) when negotiated.
    early_data is never included: 0-RTT is not accepted."""
    extensions = []
    if alpn is not None:
        extensions.append((ExtensionType.ALPN, vector(vector(alpn.encode("latin-1"), 1), 2)))
    return handshake(HandshakeType.ENCRYPTED_EXTENSIONS, extensions_block(extensions))


@dataclass(frozen=True, slots=True)
class EncryptedExtensions:
    extensions: tuple[tuple[int, bytes], ...]

    @property
    def alpn(self) -> str | None:
        body = extension_body(self.extensions, ExtensionType.ALPN)
        if body is None:
            return None
        with _decoding("ALPN"):
            buf = Buffer(body)
            with buf.pull_block(2):
                name = buf.pull_vector_bytes(1, minimum=1)
            _end(buf, "ALPN")
        return name.decode("latin-1")


def decode_encrypted_extensions(body: bytes) -> EncryptedExtensions:
    with _decoding("EncryptedExtensions"):
        buf = Buffer(body)
        extensions = _parse_extensions(buf)
        _end(buf, "EncryptedExtensions")
    return EncryptedExtensions(extensions)


# CertificateRequest (section 4.3.2)


def certificate_request(
    signature_schemes: Sequence[int], authorities: Sequence[bytes] = (), context: bytes = b""
) -> bytes:
    """CertificateRequest: ``certificate_request_context`` (empty in a handshake),
    signature_algorithms, and certificate_authorities (DER ``DistinguishedName`` values,
    section 4.2.4) when given."""
    extensions = [(ExtensionType.SIGNATURE_ALGORITHMS, uint16_list(signature_schemes))]
    if authorities:
        names = b"".join(vector(name, 2) for name in authorities)
        extensions.append((EXT_CERTIFICATE_AUTHORITIES, vector(names, 2)))
    body = vector(context, 1) + extensions_block(extensions)
    return handshake(HandshakeType.CERTIFICATE_REQUEST, body)


@dataclass(frozen=True, slots=True)
class CertificateRequest:
    context: bytes
    signature_schemes: tuple[int, ...]
    authorities: tuple[bytes, ...]


def decode_certificate_request(body: bytes) -> CertificateRequest:
    with _decoding("CertificateRequest"):
        buf = Buffer(body)
        context = buf.pull_vector_bytes(1)
        extensions = _parse_extensions(buf)
        _end(buf, "CertificateRequest")
        schemes: tuple[int, ...] = ()
        authorities: list[bytes] = []
        for ext_type, ext_body in extensions:
            ext = Buffer(ext_body)
            if ext_type == ExtensionType.SIGNATURE_ALGORITHMS:
                schemes = ext.pull_uint16_list(2, minimum=2)
            elif ext_type == EXT_CERTIFICATE_AUTHORITIES:
                with ext.pull_block(2, minimum=3):
                    while not ext.eof():
                        authorities.append(ext.pull_vector_bytes(2, minimum=1))
            else:
                continue
            _end(ext, "a CertificateRequest extension")
    if not schemes:
        raise TLSAlert(Alert.MISSING_EXTENSION, "CertificateRequest without signature_algorithms")
    return CertificateRequest(context, schemes, tuple(authorities))


# Certificate (section 4.4.2)


def certificate(chain_der: Sequence[bytes], context: bytes = b"") -> bytes:
    """Certificate: the context and one CertificateEntry (X.509 DER, no extensions) per
    certificate, leaf first."""
    entries = b"".join(vector(der, 3) + vector(b"", 2) for der in chain_der)
    return handshake(HandshakeType.CERTIFICATE, vector(context, 1) + vector(entries, 3))


class CertificateMessage(NamedTuple):
    """A decoded Certificate (a named tuple: one per mutual-TLS handshake, made in C)."""

    context: bytes
    chain: tuple[bytes, ...]  # DER, leaf first; empty when the client has no certificate


_new_certificate_message: Final[Callable[[tuple[bytes, tuple[bytes, ...]]], CertificateMessage]] = (
    partial(tuple.__new__, CertificateMessage)
)


def decode_certificate(body: bytes, max_certificates: int = MAX_CERTIFICATES) -> CertificateMessage:
    """The peer's Certificate. At most ``max_certificates`` entries (``bad_certificate``
    beyond); the body itself is bounded by the reassembly cap. We request no extension a
    CertificateEntry may answer (section 4.4.2: they "MUST correspond to ones from the
    server's CertificateRequest"), so any is unsolicited: ``unsupported_extension`` (4.2)."""
    usual = _usual_certificate(body, max_certificates)
    return usual if usual is not None else _read_certificate(body, max_certificates)


def _read_certificate(body: bytes, max_certificates: int) -> CertificateMessage:
    """``decode_certificate``'s strict reading, which names what is wrong."""
    chain: list[bytes] = []
    with _decoding("Certificate"):
        buf = Buffer(body)
        context = buf.pull_vector_bytes(1)
        with buf.pull_block(3):
            while not buf.eof():
                if len(chain) >= max_certificates:
                    raise TLSAlert(
                        Alert.BAD_CERTIFICATE,
                        f"more than {max_certificates} certificates in the chain",
                    )
                chain.append(buf.pull_vector_bytes(3, minimum=1))
                if buf.pull_vector_bytes(2):
                    raise TLSAlert(
                        Alert.UNSUPPORTED_EXTENSION,
                        "an extension in a CertificateEntry that we did not request",
                    )
        _end(buf, "Certificate")
    return CertificateMessage(context, tuple(chain))


def _usual_certificate(body: bytes, max_certificates: int) -> CertificateMessage | None:
    """``decode_certificate`` for a well-formed Certificate whose entries carry no extension,
    read by offsets (this message comes with every mutual-TLS handshake); None for anything
    else, left to the strict reading."""
    size = len(body)
    start = 1 + body[0] if body else size
    pos = start + 3
    if pos > size or pos + int.from_bytes(body[start:pos], "big") != size:
        return None
    chain: list[bytes] = []
    while pos < size:
        length = int.from_bytes(body[pos : pos + 3], "big")
        end = pos + 3 + length
        # cert_data<1..2^24-1>, then extensions<0..2^16-1>, which must be empty here
        if (
            len(chain) >= max_certificates
            or not length
            or end + 2 > size
            or body[end : end + 2] != b"\x00\x00"
        ):
            return None
        chain.append(body[pos + 3 : end])
        pos = end + 2
    return _new_certificate_message((body[1:start], tuple(chain)))


# CertificateVerify (section 4.4.3)


def certificate_verify(scheme: int, signature: bytes) -> bytes:
    # Written on every full handshake: the header, scheme and signature<0..2^16-1> length in
    # one pack (struct.error past 2^16 - 1 bytes, as vector's ValueError).
    size = len(signature)
    return _CERTIFICATE_VERIFY_HEAD.pack((_CERTIFICATE_VERIFY << 24) | (4 + size), scheme, size) + (
        signature
    )


_CERTIFICATE_VERIFY_HEAD: Final = struct.Struct(">IHH")  # header, scheme, signature length


def decode_certificate_verify(body: bytes) -> tuple[int, bytes]:
    """``(SignatureScheme, signature)``."""
    if len(body) > 4 and int.from_bytes(body[2:4], "big") == len(body) - 4:
        # Well-formed (a scheme, then signature<1..2^16-1> filling the body), read by offsets:
        # this message comes with every mutual-TLS handshake. Anything else: the strict reading.
        return int.from_bytes(body[:2], "big"), body[4:]
    return _read_certificate_verify(body)


def _read_certificate_verify(body: bytes) -> tuple[int, bytes]:
    """``decode_certificate_verify``'s strict reading, which names what is wrong."""
    with _decoding("CertificateVerify"):
        buf = Buffer(body)
        scheme = buf.pull_uint16()
        signature = buf.pull_vector_bytes(2, minimum=1)
        _end(buf, "CertificateVerify")
    return scheme, signature


# Finished (section 4.4.4)


def finished(verify_data: bytes) -> bytes:
    return ((_FINISHED << 24) | len(verify_data)).to_bytes(4, "big") + verify_data  # at most 48


def decode_finished(body: bytes, hash_length: int) -> bytes:
    if len(body) != hash_length:
        raise _decode_error(f"Finished of {len(body)} bytes, expected {hash_length}")
    return body


# KeyUpdate (section 4.6.3)


# NewSessionTicket (section 4.6.1)


def new_session_ticket(lifetime: int, age_add: int, nonce: bytes, ticket: bytes) -> bytes:
    """NewSessionTicket without extensions (no early_data: 0-RTT is never offered)."""
    # Every admitted client gets one: the header, lifetime, age_add and the nonce's length in
    # one pack (struct.error for a nonce or ticket too long for its length prefix).
    size = 13 + len(nonce) + len(ticket)  # 4 + 4 + 1 + nonce + 2 + ticket + 2
    return b"".join((
        _TICKET_HEAD.pack((_NEW_SESSION_TICKET << 24) | size, lifetime, age_add, len(nonce)),
        nonce, _UINT16.pack(len(ticket)), ticket,
        b"\x00\x00",  # the empty extensions block, written out
    ))  # fmt: skip


# header, ticket_lifetime, ticket_age_add, nonce length
_TICKET_HEAD: Final = struct.Struct(">IIIB")
_UINT16: Final = struct.Struct(">H")


def key_update(update_requested: bool) -> bytes:
    return handshake(HandshakeType.KEY_UPDATE, bytes((int(update_requested),)))


def decode_key_update(body: bytes) -> bool:
    """Whether the peer requests our KeyUpdate; other values are ``illegal_parameter``."""
    if len(body) != 1:
        raise _decode_error(f"KeyUpdate of {len(body)} bytes")
    if body[0] not in (UPDATE_NOT_REQUESTED, UPDATE_REQUESTED):
        raise TLSAlert(Alert.ILLEGAL_PARAMETER, f"KeyUpdate request value {body[0]}")
    return body[0] == UPDATE_REQUESTED


# ClientHello (client side, for tests and tools)


def client_hello(
    random: bytes,
    session_id: bytes,
    cipher_suites: Sequence[int],
    extensions: Sequence[tuple[int, bytes]],
) -> bytes:
    body = (
        LEGACY_VERSION.to_bytes(2, "big")
        + random
        + vector(session_id, 1)
        + uint16_list(cipher_suites)
        + b"\x01\x00"
        + extensions_block(extensions)
    )
    return handshake(HandshakeType.CLIENT_HELLO, body)


def key_share_extension(entries: Sequence[tuple[int, bytes]]) -> bytes:
    """KeyShareClientHello body."""
    return vector(b"".join(g.to_bytes(2, "big") + vector(k, 2) for g, k in entries), 2)


# Reassembly of protected handshake messages (section 5.1)


class HandshakeAssembler(MessageAssembler):
    """The engine-wide :class:`~mtlsproxy.engine.records.MessageAssembler`, bounded by
    ``MAX_HANDSHAKE_MESSAGE`` and speaking this package's error: an oversize length is
    ``decode_error``."""

    __slots__ = ()

    def __init__(self, max_size: int = MAX_HANDSHAKE_MESSAGE) -> None:
        super().__init__(max_size, _decode_error)
