"""TLS record-layer helpers for the plaintext start of a connection.

Sans-I/O: bytes in, parsed values out; no sockets, no asyncio, no clock. The reader here only
understands the *plaintext* records that open a handshake (RFC 8446 section 5.1, RFC 5246
section 6.2.1): everything after the first key change is OpenSSL's (or the native engine's)
business.

``Buffer`` is a small cursor over immutable bytes in the style of aioquic's ``tls.py``:
``pull_uint8/16/24/32``, ``pull_bytes`` and ``pull_block`` (a length-prefixed vector that must be
consumed exactly). Running past the end of the data or of the enclosing block raises
``DecodeError``; callers turn that into a ``HandshakeError`` for their step.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from functools import partial
from typing import Final, NamedTuple

from mtlsproxy.vocabulary.failures import Alert, HandshakeError, Reason, Step

# RFC 8446 section 5.1: ContentType type (1) + ProtocolVersion legacy_record_version (2) +
# uint16 length (2).
RECORD_HEADER_SIZE: Final = 5

# RFC 8446 section 5.1: "The length MUST NOT exceed 2^14 bytes. An endpoint that receives a
# record that exceeds this length MUST terminate the connection with a "record_overflow"
# alert." (RFC 5246 section 6.2.1 has the same limit for TLSPlaintext.) The 2^14 + 256 allowance
# is for *ciphertext* only; the records read here are plaintext, so we are strict.
MAX_PLAINTEXT_RECORD: Final = 2**14

# RFC 8446 section 4: HandshakeType msg_type (1) + uint24 length (3).
HANDSHAKE_HEADER_SIZE: Final = 4

# The major byte of every TLS (1.0 through 1.3) ProtocolVersion: {3, x}. SSL 2.0 used {0, 2}.
TLS_MAJOR_VERSION: Final = 0x03


class ContentType(enum.IntEnum):
    """TLS record content types (RFC 8446 section 5.1, RFC 5246 section 6.2.1)."""

    CHANGE_CIPHER_SPEC = 20
    ALERT = 21
    HANDSHAKE = 22
    APPLICATION_DATA = 23
    HEARTBEAT = 24  # RFC 6520; never acceptable before a handshake completes


# The members the per-record paths compare with, as plain module names: on Python 3.11 a
# member looked up on its enum class costs ~0.2 us (``EnumType`` attribute access), a global
# name ~0.02 us, and every record of a handshake is compared with several.
CHANGE_CIPHER_SPEC: Final = ContentType.CHANGE_CIPHER_SPEC
ALERT: Final = ContentType.ALERT
HANDSHAKE: Final = ContentType.HANDSHAKE
APPLICATION_DATA: Final = ContentType.APPLICATION_DATA


class HandshakeType(enum.IntEnum):
    """Handshake message types (RFC 8446 section 4, RFC 5246 section 7.4)."""

    HELLO_REQUEST = 0
    CLIENT_HELLO = 1
    SERVER_HELLO = 2
    NEW_SESSION_TICKET = 4
    END_OF_EARLY_DATA = 5
    ENCRYPTED_EXTENSIONS = 8
    CERTIFICATE = 11
    SERVER_KEY_EXCHANGE = 12
    CERTIFICATE_REQUEST = 13
    SERVER_HELLO_DONE = 14
    CERTIFICATE_VERIFY = 15
    CLIENT_KEY_EXCHANGE = 16
    FINISHED = 20
    KEY_UPDATE = 24
    MESSAGE_HASH = 254


class DecodeError(Exception):
    """A read ran past the end of the data or of its enclosing length-prefixed block."""


class _Block:
    """The ``with`` statement of :meth:`Buffer.pull_block` (a plain class: a generator-based
    context manager costs microseconds, and the decoders open one per vector)."""

    __slots__ = ("_buf", "_end", "_saved_end")

    def __init__(self, buf: Buffer, end: int, saved_end: int) -> None:
        self._buf, self._end, self._saved_end = buf, end, saved_end

    def __enter__(self) -> int:
        return self._end - self._buf._pos

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is not None:
            return  # the reads inside failed: the buffer is abandoned with the error
        buf = self._buf
        if buf._pos != self._end:
            raise DecodeError(f"{self._end - buf._pos} trailing bytes inside a vector")
        buf._end = self._saved_end


class Buffer:
    """A read cursor over ``bytes`` (aioquic ``tls.Buffer`` style, read side only).

    ``end`` is the current read limit; ``pull_block`` narrows it to a vector's extent and checks
    on exit that the vector was consumed exactly, so every length prefix is verified against
    what it encloses.
    """

    __slots__ = ("_data", "_end", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0
        self._end = len(data)

    def tell(self) -> int:
        return self._pos

    def remaining(self) -> int:
        return self._end - self._pos

    def eof(self) -> bool:
        return self._pos >= self._end

    def _take(self, size: int) -> int:
        start = self._pos
        if size < 0 or start + size > self._end:
            raise DecodeError(f"read of {size} bytes at offset {start} runs past {self._end}")
        self._pos = start + size
        return start

    def pull_bytes(self, size: int) -> bytes:
        start = self._take(size)
        return self._data[start : start + size]

    def pull_uint8(self) -> int:
        return self._data[self._take(1)]

    def pull_uint16(self) -> int:
        start = self._take(2)
        return (self._data[start] << 8) | self._data[start + 1]

    def pull_uint24(self) -> int:
        start = self._take(3)
        return int.from_bytes(self._data[start : start + 3], "big")

    def pull_uint32(self) -> int:
        start = self._take(4)
        return int.from_bytes(self._data[start : start + 4], "big")

    def pull_uint(self, size: int) -> int:
        start = self._pos
        end = start + size
        if size < 0 or end > self._end:
            raise DecodeError(f"read of {size} bytes at offset {start} runs past {self._end}")
        self._pos = end
        data = self._data
        if size == 2:
            return (data[start] << 8) | data[start + 1]
        if size == 1:
            return data[start]
        return int.from_bytes(data[start:end], "big")

    def pull_block(self, length_size: int, *, minimum: int = 0) -> _Block:
        """Read a ``length_size``-byte length prefix and restrict reads to that many bytes,
        for the body of a ``with`` statement (which gets the length).

        RFC 8446 section 3.4 vectors: ``opaque x<minimum..2^(8*length_size)-1>``. Raises
        ``DecodeError`` if the vector is shorter than ``minimum``, runs past the enclosing
        block, or is not fully consumed by the body of the ``with`` statement.
        """
        start, end = self._pull_vector_span(length_size, minimum)
        self._pos = start
        saved_end = self._end
        self._end = end
        return _Block(self, end, saved_end)

    def _pull_vector_span(self, length_size: int, minimum: int) -> tuple[int, int]:
        """``pull_block`` without the context manager, for vectors read in one go (the hot
        path of ClientHello parsing: a generator-based ``with`` costs microseconds)."""
        pos = self._pos
        start = pos + length_size
        limit = self._end
        if start > limit:
            raise DecodeError(f"read of {length_size} bytes at offset {pos} runs past {limit}")
        data = self._data
        if length_size == 2:
            length = (data[pos] << 8) | data[pos + 1]
        elif length_size == 1:
            length = data[pos]
        else:
            length = int.from_bytes(data[pos:start], "big")
        if length < minimum:
            raise DecodeError(f"vector of {length} bytes is shorter than its minimum {minimum}")
        end = start + length
        if end > limit:
            raise DecodeError(f"vector of {length} bytes runs past its enclosing block")
        self._pos = end
        return start, end

    def pull_vector_bytes(self, length_size: int, *, minimum: int = 0) -> bytes:
        """An ``opaque x<minimum..2^(8*length_size)-1>`` vector's contents."""
        start, end = self._pull_vector_span(length_size, minimum)
        return self._data[start:end]

    def pull_uint16_list(self, length_size: int, *, minimum: int = 0) -> tuple[int, ...]:
        """A vector of uint16 values (cipher suites, groups, signature schemes, versions)."""
        start, end = self._pull_vector_span(length_size, minimum)
        if (end - start) % 2:
            raise DecodeError(f"list of uint16 values has odd length {end - start}")
        return struct.unpack(f">{(end - start) // 2}H", self._data[start:end])


class RecordHeader(NamedTuple):
    """A TLSPlaintext header (RFC 8446 section 5.1)."""

    content_type: int
    legacy_record_version: int
    length: int


def parse_record_header(data: bytes | bytearray, offset: int = 0) -> RecordHeader:
    """Decode the 5-byte record header at ``offset``; ``data`` must hold at least 5 bytes there."""
    return RecordHeader._make(_RECORD_HEADER.unpack_from(data, offset))


_RECORD_HEADER: Final = struct.Struct(">BHH")  # content type, legacy_record_version, length


class Message(NamedTuple):
    """One reassembled handshake message (RFC 8446 section 4): its type, its body and the raw
    bytes, 4-byte header included (what the transcript hash of section 4.4.1 takes)."""

    msg_type: int
    body: bytes
    raw: bytes


# NamedTuple's own constructor is a Python function (~0.5 us a call): every message is made by
# tuple.__new__ directly, which builds the same object in C.
_new_message: Final[Callable[[tuple[int, bytes, bytes]], Message]] = partial(tuple.__new__, Message)


class MessageAssembler:
    """Handshake messages from handshake-record contents, in any fragmentation (section 5.1).

    The one reassembler: :class:`HandshakeReader` feeds it the plaintext records that open a
    connection, the native engine the decrypted contents of protected ones. ``feed`` appends
    one record's content; ``next_message`` returns the next whole message or ``None``. A
    declared length above ``max_size`` raises ``DecodeError`` as soon as the 4-byte header is
    known (each caller names the alert, ``error`` makes the exception from its detail), so the
    buffer never holds more than one maximum message plus one record.
    """

    __slots__ = ("_data", "_error", "_max_size")

    def __init__(self, max_size: int, error: Callable[[str], Exception] = DecodeError) -> None:
        self._data = bytearray()
        self._max_size = max_size
        self._error = error

    def __len__(self) -> int:
        return len(self._data)

    @property
    def pending(self) -> bool:
        """Bytes of an incomplete message are buffered."""
        return bool(self._data)

    @property
    def next_type(self) -> int | None:
        """The type of the message being assembled, as soon as its first byte is known."""
        return self._data[0] if self._data else None

    def head(self) -> bytes:
        """The buffered start of the next message's header (up to 4 bytes)."""
        return bytes(self._data[:HANDSHAKE_HEADER_SIZE])

    def feed(self, content: bytes | bytearray | memoryview) -> None:
        self._data += content

    def wanted(self) -> int:
        """How many buffered bytes the next message needs: its header until the header is
        known, then the whole message. Raises ``DecodeError`` for an oversize length."""
        data = self._data
        if len(data) < HANDSHAKE_HEADER_SIZE:
            return HANDSHAKE_HEADER_SIZE
        length = int.from_bytes(data[1:4], "big")
        if length > self._max_size:
            raise self._error(
                f"handshake message of {length} bytes exceeds the limit of {self._max_size}"
            )
        return HANDSHAKE_HEADER_SIZE + length

    def next_message(self) -> Message | None:
        if not self._data:  # nothing buffered: how every flight's last call ends
            return None
        end = self.wanted()
        if len(self._data) < end:  # also while the header itself is incomplete
            return None
        raw = bytes(self._data[:end])
        del self._data[:end]
        return _new_message((raw[0], raw[HANDSHAKE_HEADER_SIZE:], raw))


class HandshakeReader:
    """Reassemble plaintext handshake messages from TLS records, incrementally and bounded.

    RFC 8446 section 5.1: handshake messages may be coalesced into one record or fragmented
    across several; records of other content types may not be interleaved with a fragmented
    message, and zero-length handshake fragments are forbidden. This reader accepts *only*
    handshake records: the plaintext opening of a connection has nothing else in it that we
    must look at.

    ``feed(data)`` appends bytes; ``read_message()`` returns the next complete message or
    ``None``. Work per byte is constant (records are parsed once, the buffer is compacted
    lazily), so feeding in any split is linear in the total. Errors raise ``HandshakeError`` for
    ``step`` with ``Reason.MALFORMED``.
    """

    def __init__(self, step: Step, *, max_message_size: int) -> None:
        self._step = step
        self._data = bytearray()  # received bytes not yet parsed as complete records
        self._pos = 0  # start of the first unparsed record in _data
        # Handshake bytes from complete records, not yet returned as messages.
        self._messages = MessageAssembler(max_message_size)
        self._consumed = 0  # input bytes that belong to complete records

    @property
    def consumed(self) -> int:
        """How many fed bytes form complete records that have been parsed."""
        return self._consumed

    @property
    def fragment_pending(self) -> bool:
        """True when complete records hold handshake bytes not yet returned as a message."""
        return self._messages.pending

    def _fail(self, detail: str, alert: Alert = Alert.DECODE_ERROR) -> HandshakeError:
        return HandshakeError(self._step, Reason.MALFORMED, detail, alert)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._data += data

    def _check_record_header(self, header: RecordHeader) -> None:
        if header.content_type != ContentType.HANDSHAKE:
            raise self._fail(
                f"record of content type {header.content_type} where a handshake record was"
                " expected",
                Alert.UNEXPECTED_MESSAGE,
            )
        if header.legacy_record_version >> 8 != TLS_MAJOR_VERSION:
            raise self._fail(f"record version 0x{header.legacy_record_version:04x} is not TLS")
        if header.length > MAX_PLAINTEXT_RECORD:
            raise self._fail(f"record of {header.length} bytes exceeds 2^14", Alert.RECORD_OVERFLOW)
        if header.length == 0:
            # RFC 8446 section 5.1: "Implementations MUST NOT send zero-length fragments of
            # Handshake types".
            raise self._fail("zero-length handshake record")

    def pending_header(self) -> tuple[int | None, int | None]:
        """``(msg_type, length)`` of the message being assembled, as far as bytes are known.

        Looks at returned-record fragments and at the body of a record still arriving, so a
        caller can reject a wrong message type or an oversize length before the rest arrives.
        Also validates an incomplete record's header as soon as its 5 bytes are present.
        """
        head = self._messages.head()
        if len(head) < HANDSHAKE_HEADER_SIZE and len(self._data) - self._pos >= RECORD_HEADER_SIZE:
            header = parse_record_header(self._data, self._pos)
            self._check_record_header(header)
            start = self._pos + RECORD_HEADER_SIZE
            available = min(header.length, len(self._data) - start)
            head += self._data[start : start + min(available, HANDSHAKE_HEADER_SIZE - len(head))]
        msg_type = head[0] if head else None
        length = int.from_bytes(head[1:4], "big") if len(head) >= HANDSHAKE_HEADER_SIZE else None
        return msg_type, length

    def _pull_records(self, wanted: int) -> None:
        """Move complete records into the assembler until it holds ``wanted`` bytes."""
        data = self._data
        while len(self._messages) < wanted:
            pos = self._pos
            if len(data) - pos < RECORD_HEADER_SIZE:
                break
            header = parse_record_header(data, pos)
            self._check_record_header(header)
            end = pos + RECORD_HEADER_SIZE + header.length
            if end > len(data):
                break
            self._messages.feed(data[pos + RECORD_HEADER_SIZE : end])
            self._consumed += end - pos
            self._pos = end
        # Compact lazily so that many tiny records do not make the reader quadratic.
        if self._pos and self._pos * 2 >= len(data):
            del data[: self._pos]
            self._pos = 0

    def read_message(self) -> Message | None:
        """The next complete handshake message, or ``None`` if more bytes are needed.

        Records are pulled only as far as the message needs, so ``consumed`` ends where the
        message's last record ends."""
        try:
            self._pull_records(HANDSHAKE_HEADER_SIZE)
            self._pull_records(self._messages.wanted())
            return self._messages.next_message()
        except DecodeError as exc:
            raise self._fail(str(exc)) from None
