"""TLS 1.3 record framing and record protection (RFC 8446 sections 5.1-5.5).

Sans-I/O. :class:`RecordReader` splits a byte stream into :class:`Record` values (TLSPlaintext
or TLSCiphertext framing, section 5.1) and rejects oversize records as soon as their header
arrives, so it never holds more than one partial record beyond what the caller has fed and not
yet drained. :class:`RecordProtection` is one direction's AEAD state (section 5.2): it turns
``(content type, content)`` into a TLSCiphertext record and back, with the per-record nonce of
section 5.3, the padding of section 5.4 and the key-usage limits of section 5.5.

Every peer-caused failure raises :class:`~mtlsproxy.engine.native.alerts.TLSAlert` carrying
the alert the RFC requires:

- record longer than 2^14 (plaintext) / 2^14 + 256 (ciphertext), or decrypted
  TLSInnerPlaintext longer than 2^14 + 1: ``record_overflow`` (sections 5.1, 5.2, 5.4);
- AEAD authentication failure (including a ciphertext shorter than the tag):
  ``bad_record_mac`` (section 5.2);
- no non-zero octet in the decrypted plaintext, an inner content type other than alert,
  handshake or application_data, a zero-length handshake or alert record, or an outer type
  other than application_data on a protected record: ``unexpected_message`` (sections 5, 5.4);
- a sequence number that would wrap (section 5.3) or, when encrypting, the AES-GCM usage limit
  (section 5.5) reached without a key update: ``internal_error``: the engine must rekey first
  (see :attr:`RecordProtection.needs_key_update`).

Misuse by the caller (content too long to fit one record, unknown content type to send) raises
``ValueError``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Final, NamedTuple

from cryptography.exceptions import InvalidTag
from mypy_extensions import mypyc_attr

from mtlsproxy.engine.native.alerts import TLSAlert
from mtlsproxy.engine.native.key_schedule import derive_traffic_keys, next_traffic_secret
from mtlsproxy.engine.native.suites import CipherSuite
from mtlsproxy.engine.records import (
    MAX_PLAINTEXT_RECORD,
    RECORD_HEADER_SIZE,
    ContentType,
    parse_record_header,
)
from mtlsproxy.vocabulary.failures import Alert

# Section 5.1: TLSPlaintext.length MUST NOT exceed 2^14.
MAX_PLAINTEXT_LENGTH: Final = MAX_PLAINTEXT_RECORD
# Section 5.4: "the full encoded TLSInnerPlaintext MUST NOT exceed 2^14 + 1 octets".
MAX_INNER_PLAINTEXT_LENGTH: Final = MAX_PLAINTEXT_LENGTH + 1
# Section 5.2: TLSCiphertext.length "MUST NOT exceed 2^14 + 256 bytes".
MAX_CIPHERTEXT_LENGTH: Final = MAX_PLAINTEXT_LENGTH + 256

# Section 5.3: the 64-bit sequence number must not wrap. Records use 0 .. 2^64 - 2; reaching
# 2^64 - 1 stops the direction (one short of the wrap, so the counter never takes its maximum).
SEQUENCE_NUMBER_LIMIT: Final = 2**64 - 1

# When needs_key_update turns True: well before the hard limits, so that a KeyUpdate (section
# 4.6.3) can be sent and take effect. AES-GCM: 2^24 records against the section 5.5 limit of
# 2^24.5; ChaCha20-Poly1305 (no AE limit within 2^64 records): half the sequence space.
AES_GCM_KEY_UPDATE_THRESHOLD: Final = 2**24
SEQUENCE_KEY_UPDATE_THRESHOLD: Final = 2**63

LEGACY_RECORD_VERSION: Final = 0x0303

_PROTECTED_TYPE: Final = ContentType.APPLICATION_DATA
_PROTECTED_OCTET: Final = int(_PROTECTED_TYPE)  # a plain int: no IntEnum __index__ per pack
_INNER_TYPES: Final = frozenset(
    (ContentType.ALERT, ContentType.HANDSHAKE, ContentType.APPLICATION_DATA)
)
_OUTER_TYPES: Final = frozenset(
    (
        ContentType.CHANGE_CIPHER_SPEC,
        ContentType.ALERT,
        ContentType.HANDSHAKE,
        ContentType.APPLICATION_DATA,
    )
)
_CIPHERTEXT_HEADER_PREFIX: Final = bytes((_PROTECTED_TYPE, 0x03, 0x03))
_APPLICATION_DATA_TYPE: Final = bytes((ContentType.APPLICATION_DATA,))  # the inner type octet


_RECORD_HEADER: Final = struct.Struct(">BHH")


class Record(NamedTuple):
    """One TLSPlaintext or TLSCiphertext record (RFC 8446 sections 5.1, 5.2)."""

    content_type: int
    legacy_record_version: int
    fragment: bytes

    def header(self) -> bytes:
        """The 5-byte record header, the AEAD additional data of section 5.2."""
        return _RECORD_HEADER.pack(
            self.content_type, self.legacy_record_version, len(self.fragment)
        )


class InnerPlaintext(NamedTuple):
    """A decrypted record: TLSInnerPlaintext.type and .content, padding removed (5.2, 5.4)."""

    content_type: int
    content: bytes


# A NamedTuple's own constructor is a Python function (~0.5 us a call); the records read and
# the plaintexts decrypted on every record's path are made by tuple.__new__ directly, which
# builds the same object from a tuple of its fields in C.
_new_record: Final[Callable[[tuple[int, int, bytes]], Record]] = partial(tuple.__new__, Record)
_new_inner_plaintext: Final[Callable[[tuple[int, bytes]], InnerPlaintext]] = partial(
    tuple.__new__, InnerPlaintext
)


def encode_record(
    content_type: int, fragment: bytes, legacy_record_version: int = LEGACY_RECORD_VERSION
) -> bytes:
    """A TLSPlaintext record (section 5.1); ``fragment`` must fit one record."""
    if len(fragment) > MAX_PLAINTEXT_LENGTH:
        raise ValueError(f"fragment of {len(fragment)} bytes exceeds 2^14")
    return (
        bytes((content_type,))
        + legacy_record_version.to_bytes(2, "big")
        + len(fragment).to_bytes(2, "big")
        + fragment
    )


def _check_header(content_type: int, length: int) -> None:
    # Section 5: "If a TLS implementation receives an unexpected record type, it MUST terminate
    # the connection with an "unexpected_message" alert."
    if content_type not in _OUTER_TYPES:
        raise TLSAlert(Alert.UNEXPECTED_MESSAGE, f"record of unknown content type {content_type}")
    # Protected records travel as application_data (section 5.2); TLS 1.3 never sends
    # unprotected application data, so every other type is held to the TLSPlaintext limit.
    limit = MAX_CIPHERTEXT_LENGTH if content_type == _PROTECTED_TYPE else MAX_PLAINTEXT_LENGTH
    if length > limit:
        raise TLSAlert(
            Alert.RECORD_OVERFLOW, f"record of {length} bytes exceeds the limit of {limit}"
        )


def parse_record(data: bytes) -> Record:
    """Exactly one record from ``data`` (header checks as :class:`RecordReader`).

    ``TLSAlert(DECODE_ERROR)`` if ``data`` is not one complete record.
    """
    if len(data) < RECORD_HEADER_SIZE:
        raise TLSAlert(Alert.DECODE_ERROR, "record shorter than its header")
    header = parse_record_header(data)
    _check_header(header.content_type, header.length)
    if len(data) != RECORD_HEADER_SIZE + header.length:
        raise TLSAlert(Alert.DECODE_ERROR, "record length does not match its header")
    return Record(header.content_type, header.legacy_record_version, bytes(data[5:]))


class RecordReader:
    """Split a byte stream into records (RFC 8446 section 5.1), incrementally.

    ``feed`` appends bytes; ``next_record`` returns the next complete record or ``None``. A
    header is validated as soon as its 5 bytes are present (unknown content type:
    ``unexpected_message``; over-length: ``record_overflow``), so a peer cannot make the
    reader wait for more than one maximum-size record. ``legacy_record_version`` is returned
    but not checked: section 5.1 says it "MUST be ignored for all purposes" (it still enters
    the AEAD additional data as received).

    :meth:`open_application_data` is the established connection's fast path: every complete
    protected record in one call, decrypted into one buffer.
    """

    __slots__ = ("_data", "_head", "_pos")

    def __init__(self) -> None:
        self._data = b""
        self._pos = 0
        # The record that straddled the last two reads, completed from the newer one as far as
        # it has arrived (at most one record: see ``feed``); b"" when no record straddles.
        self._head = b""

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet returned as records."""
        return len(self._head) + len(self._data) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        # Immutable bytes and an offset: records leave as slices, and a feed copies only the
        # record left incomplete by the read before (at most 2^14 + 261 bytes, plus the bytes
        # of this read that complete it), never the read itself. Concatenating leftover and
        # read copied every byte once more, in a fresh allocation of the read's size: the
        # native engine's bulk path spent an eighth of its time there.
        data = bytes(data)  # the same object when it is bytes already
        rest = self._data[self._pos :]
        head = self._head + rest if self._head else rest
        taken = _completing(head, data) if head else 0
        if taken < 0:  # records left unread (the engine drains them all): keep it simple
            self._head, self._data, self._pos = b"", head + data, 0
            return
        self._head = head + data[:taken] if head else b""
        self._data, self._pos = data, taken

    def next_record(self) -> Record | None:
        if self._head:
            head = self._head
            if len(head) < RECORD_HEADER_SIZE:
                return None
            header = parse_record_header(head)
            _check_header(header.content_type, header.length)
            if len(head) < RECORD_HEADER_SIZE + header.length:
                return None  # ``feed`` took all of the read: nothing follows in ``_data``
            self._head = b""
            return Record(header.content_type, header.legacy_record_version, head[5:])
        data = self._data
        pos = self._pos
        if len(data) - pos < RECORD_HEADER_SIZE:
            if pos == len(data) and data:
                # All read: let the read go (an idle connection would keep its last one,
                # up to 256 KiB after a bulk transfer).
                self._data, self._pos = b"", 0
            return None
        # The header as a plain tuple, and _check_header only off the common case (a protected
        # record within its limit): two calls per handshake record fewer.
        content_type, version, length = _RECORD_HEADER.unpack_from(data, pos)
        if content_type != _PROTECTED_OCTET or length > MAX_CIPHERTEXT_LENGTH:
            _check_header(content_type, length)
        start = pos + RECORD_HEADER_SIZE
        end = start + length
        if end > len(data):
            return None
        self._pos = end
        return _new_record((content_type, version, data[start:end]))

    def open_record(self, protection: RecordProtection, data: bytes) -> bytes | None:
        """The data path's common read in one call: nothing is buffered and ``data`` is one
        whole protected record of application data (``RecordProtection.open_record``): its
        content. None for anything else, with nothing read: the caller ``feed``s ``data``."""
        if self._head or self._pos != len(self._data):
            return None
        return protection.open_record(data)

    def open_application_data(
        self, protection: RecordProtection, contents: list[bytes | memoryview]
    ) -> InnerPlaintext | None:
        """Decrypt the complete records buffered, as many as carry application data with
        bytes in it, appending their contents to ``contents`` as one buffer (no object nor
        copy per record); then the first that does not, decrypted and consumed, is returned
        (an alert, a KeyUpdate, an empty record: the caller handles it as ``decrypt``'s
        result). None: no complete record is left, or the next one has a header that only
        ``next_record`` and ``decrypt`` report properly (they raise its alert).

        What was decrypted before a record that fails is in ``contents`` when the alert is
        raised: it was read before whatever ends the session."""
        if self._head:  # the record that straddled two reads goes the one-record way
            record = self.next_record()
            if record is None:
                return None
            inner = protection.decrypt(record)
            if inner.content_type != ContentType.APPLICATION_DATA or not inner.content:
                return inner
            contents.append(inner.content)
        data = self._data
        spans = _protected_spans(data, self._pos, protection.suite.tag_length)
        if not spans:
            return None
        end = spans[-1][1]
        spans.reverse()  # taken from the end as they are consumed
        try:
            return protection.open_records(data, spans, contents)
        finally:  # a record that failed is consumed too, as by next_record and decrypt
            if spans:
                self._pos = spans[-1][0]
            elif end == len(data):
                self._data, self._pos = b"", 0  # all read: the read is let go
            else:
                self._pos = end


def _completing(head: bytes, data: bytes) -> int:
    """How many bytes of ``data`` complete the record ``head`` starts (all of ``data`` when
    it does not; -1 when ``head`` holds more than that record). A header announcing more
    than any record may hold takes no more than the limit plus one: ``next_record`` rejects
    it from the header alone."""
    if len(head) < RECORD_HEADER_SIZE:
        header = head + data[: RECORD_HEADER_SIZE - len(head)]
        if len(header) < RECORD_HEADER_SIZE:
            return len(data)
    else:
        header = head
    length = min((header[3] << 8) | header[4], MAX_CIPHERTEXT_LENGTH + 1)
    missing = RECORD_HEADER_SIZE + length - len(head)
    return -1 if missing < 0 else min(missing, len(data))


def _protected_spans(data: bytes, pos: int, tag_length: int) -> list[tuple[int, int]]:
    """``(start, end)`` of the complete records from ``pos`` on that are protected records of
    a length that can decrypt to a valid TLSInnerPlaintext, up to the first that is not
    (incomplete, another outer type, too long or too short: ``next_record`` and ``decrypt``
    have the words, and the order of the checks, for those)."""
    spans = []
    size = len(data)
    longest = MAX_INNER_PLAINTEXT_LENGTH + tag_length
    while size - pos >= RECORD_HEADER_SIZE and data[pos] == _PROTECTED_TYPE:
        length = (data[pos + 3] << 8) | data[pos + 4]
        end = pos + RECORD_HEADER_SIZE + length
        if not tag_length < length <= longest or end > size:
            break
        spans.append((pos, end))
        pos = end
    return spans


@mypyc_attr(allow_interpreted_subclasses=True)  # a strategy: other policies subclass it
@dataclass(frozen=True, slots=True)
class PaddingPolicy:
    """How much zero padding to add to each protected record (RFC 8446 section 5.4).

    ``block_size`` 0 (or 1) adds none; ``N`` pads the TLSInnerPlaintext (content + type octet)
    to the next multiple of ``N``, capped at the 2^14 + 1 octet limit, so ciphertext lengths
    reveal the content length only to a granularity of ``N``.
    """

    block_size: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.block_size <= MAX_INNER_PLAINTEXT_LENGTH:
            raise ValueError(f"padding block size {self.block_size} out of range")

    def padding_length(self, content_length: int) -> int:
        """Zero octets to append after the content type for ``content_length`` bytes."""
        block = self.block_size
        if block <= 1:
            return 0
        inner = content_length + 1
        target = min(-(-inner // block) * block, MAX_INNER_PLAINTEXT_LENGTH)
        return target - inner


NO_PADDING: Final = PaddingPolicy()


def pad_to_multiple(block_size: int) -> PaddingPolicy:
    """A policy padding each TLSInnerPlaintext to a multiple of ``block_size`` octets."""
    return PaddingPolicy(block_size)


class RecordProtection:
    """One direction's record protection under one traffic key (RFC 8446 sections 5.2-5.5).

    Build it from a traffic secret with :meth:`from_secret` (keys per section 7.3) or from a
    key and IV directly. The sequence number starts at 0 and increases by one per record
    (section 5.3); the per-record nonce is the IV XOR the left-padded sequence number.

    :attr:`needs_key_update` turns True well before the limits (AES-GCM: after 2^24 records,
    against section 5.5's 2^24.5; ChaCha20-Poly1305: after 2^63); the engine then sends a
    KeyUpdate (section 4.6.3; requesting one from the peer for a receiving direction) and
    switches to :meth:`next_generation`. Encrypting past the AES-GCM limit, or either direction
    reaching sequence number 2^64 - 1, raises ``TLSAlert(INTERNAL_ERROR)``. Decryption is not
    held to the section 5.5 limit: that limit bounds what the *sender* encrypts, and refusing a
    peer that does not rekey would only break long transfers.
    """

    __slots__ = (
        "_aead",
        "_encrypt_limit",
        "_iv",
        "_key_update_threshold",
        "_sequence",
        "_traffic_secret",
        "padding",
        "suite",
    )

    def __init__(
        self,
        suite: CipherSuite,
        key: bytes,
        iv: bytes,
        *,
        traffic_secret: bytes | None = None,
        padding: PaddingPolicy = NO_PADDING,
    ) -> None:
        if len(iv) != suite.iv_length:
            raise ValueError(f"{suite.name} needs a {suite.iv_length}-byte IV, got {len(iv)}")
        if len(key) != suite.key_length:
            raise ValueError(f"{suite.name} needs a {suite.key_length}-byte key, got {len(key)}")
        self.suite = suite
        self.padding = padding
        self._aead = suite.aead_factory(key)
        self._iv = int.from_bytes(iv, "big")
        self._sequence = 0
        self._traffic_secret = traffic_secret
        if suite.record_limit is None:
            self._encrypt_limit = SEQUENCE_NUMBER_LIMIT
            self._key_update_threshold = SEQUENCE_KEY_UPDATE_THRESHOLD
        else:
            self._encrypt_limit = suite.record_limit
            self._key_update_threshold = AES_GCM_KEY_UPDATE_THRESHOLD

    @classmethod
    def from_secret(
        cls, suite: CipherSuite, traffic_secret: bytes, *, padding: PaddingPolicy = NO_PADDING
    ) -> RecordProtection:
        """Protection keyed from a traffic secret (``[sender]_write_key``/``_iv``, 7.3)."""
        key, iv = derive_traffic_keys(suite, traffic_secret)
        return cls(suite, key, iv, traffic_secret=traffic_secret, padding=padding)

    def __repr__(self) -> str:
        return f"RecordProtection({self.suite.name}, sequence_number={self._sequence})"

    @property
    def sequence_number(self) -> int:
        """The sequence number of the next record (section 5.3)."""
        return self._sequence

    @property
    def needs_key_update(self) -> bool:
        """True once this key has protected enough records that it should be replaced (5.5)."""
        return self._sequence >= self._key_update_threshold

    def next_generation(self) -> RecordProtection:
        """The same direction under application_traffic_secret_N+1 (sections 4.6.3, 7.2),
        with the sequence number back at 0 (section 5.3)."""
        if self._traffic_secret is None:
            raise ValueError("next_generation needs protection built with from_secret")
        return RecordProtection.from_secret(
            self.suite, next_traffic_secret(self.suite, self._traffic_secret), padding=self.padding
        )

    def _nonce(self) -> bytes:
        # Section 5.3: the sequence number, left-padded to iv_length, XOR the static IV.
        return (self._iv ^ self._sequence).to_bytes(12, "big")

    def encrypt(self, content_type: int, content: bytes) -> bytes:
        """One TLSCiphertext record carrying ``content`` of ``content_type`` (section 5.2)."""
        if content_type not in _INNER_TYPES:
            raise ValueError(f"content type {content_type} cannot be sent protected")
        if len(content) > MAX_PLAINTEXT_LENGTH:
            raise ValueError(f"content of {len(content)} bytes does not fit one record")
        if not content and content_type != ContentType.APPLICATION_DATA:
            raise ValueError("handshake and alert records must not be empty (section 5.4)")
        if self._sequence >= self._encrypt_limit:
            raise TLSAlert(
                Alert.INTERNAL_ERROR,
                f"write key exhausted after {self._sequence} records without a key update",
            )
        if self.padding.block_size > 1:
            padding = self.padding.padding_length(len(content))
            inner = b"".join((content, bytes((content_type,)), bytes(padding)))
        else:  # no padding (section 5.4 makes it optional): no call for its length
            inner = content + bytes((content_type,))
        length = len(inner) + self.suite.tag_length
        header = _CIPHERTEXT_HEADER_PREFIX + length.to_bytes(2, "big")
        # Section 5.3's nonce inline (the IV XOR the sequence number, left-padded).
        sealed = self._aead.encrypt((self._iv ^ self._sequence).to_bytes(12, "big"), inner, header)
        self._sequence += 1
        return header + sealed

    def seal_application_data(self, content: bytes | memoryview) -> bytes | None:
        """``encrypt(APPLICATION_DATA, content)`` for the data path (``content`` of 1 to 2^14
        bytes): the same record, without the checks that cannot fail for it and with no call
        per step (a keep-alive request's answer is one record: this is most of what the engine
        does for it). None, with nothing sealed, once the key should be replaced
        (``needs_key_update``): the caller sends a KeyUpdate first."""
        sequence = self._sequence
        if sequence >= self._key_update_threshold:  # below the encrypt limit until then
            return None
        if self.padding.block_size > 1:
            return self.encrypt(ContentType.APPLICATION_DATA, bytes(content))
        inner = b"".join((content, _APPLICATION_DATA_TYPE))
        header = _CIPHERTEXT_HEADER_PREFIX + (len(inner) + self.suite.tag_length).to_bytes(2, "big")
        sealed = self._aead.encrypt((self._iv ^ sequence).to_bytes(12, "big"), inner, header)
        self._sequence = sequence + 1
        return header + sealed

    def encrypt_fragmented(
        self, content_type: int, data: bytes, max_fragment: int = MAX_PLAINTEXT_LENGTH
    ) -> bytes:
        """``data`` split into records of at most ``max_fragment`` content bytes (5.1)."""
        if not 0 < max_fragment <= MAX_PLAINTEXT_LENGTH:
            raise ValueError(f"fragment size {max_fragment} out of range")
        if len(data) <= max_fragment:  # a handshake flight is one record: no generator, join
            return self.encrypt(content_type, data)
        return b"".join(
            self.encrypt(content_type, data[start : start + max_fragment])
            for start in range(0, len(data), max_fragment)
        )

    def decrypt(self, record: Record) -> InnerPlaintext:
        """Deprotect one TLSCiphertext record (sections 5.2, 5.4); see the module docstring
        for the alerts raised."""
        if record.content_type != _PROTECTED_TYPE:
            raise TLSAlert(
                Alert.UNEXPECTED_MESSAGE,
                f"record of content type {record.content_type} where a protected record"
                " was expected",
            )
        fragment = record.fragment
        if len(fragment) > MAX_CIPHERTEXT_LENGTH:
            raise TLSAlert(
                Alert.RECORD_OVERFLOW, f"protected record of {len(fragment)} bytes exceeds 2^14+256"
            )
        if self._sequence >= SEQUENCE_NUMBER_LIMIT:
            raise TLSAlert(Alert.INTERNAL_ERROR, "read sequence number exhausted")
        if len(fragment) < self.suite.tag_length:
            raise TLSAlert(Alert.BAD_RECORD_MAC, "protected record too short")
        # Section 5.2's additional data (the record header) and 5.3's nonce, inline: one call
        # per handshake record fewer each.
        header = _RECORD_HEADER.pack(_PROTECTED_OCTET, record.legacy_record_version, len(fragment))
        try:
            inner = self._aead.decrypt(
                (self._iv ^ self._sequence).to_bytes(12, "big"), fragment, header
            )
        except InvalidTag:
            raise TLSAlert(Alert.BAD_RECORD_MAC, "record authentication failed") from None
        self._sequence += 1
        if len(inner) > MAX_INNER_PLAINTEXT_LENGTH:
            raise TLSAlert(
                Alert.RECORD_OVERFLOW, f"decrypted record of {len(inner)} bytes exceeds 2^14+1"
            )
        if len(inner) > 1 and inner[-1] in _INNER_TYPES:
            # Unpadded, with content: what _inner_plaintext allows at once (one call per
            # record fewer; the client's flight is three or four records).
            return _new_inner_plaintext((inner[-1], inner[:-1]))
        return _inner_plaintext(inner)

    def open_record(self, data: bytes) -> bytes | None:
        """The content of ``data`` when it is exactly one protected record (section 5.2) whose
        TLSInnerPlaintext is application data with bytes in it and no padding (section 5.4):
        a keep-alive request is one read of one such record. None for anything else, the
        sequence number left as it was: ``decrypt`` and ``open_records`` read it again and
        raise what they find (a failed authentication included), so this path has no checks
        of its own to keep in step with theirs, only the conditions of its one case."""
        length = len(data) - RECORD_HEADER_SIZE
        tag = self.suite.tag_length
        sequence = self._sequence
        if (
            not tag + 1 < length <= MAX_INNER_PLAINTEXT_LENGTH + tag
            or data[0] != _PROTECTED_OCTET
            or (data[3] << 8 | data[4]) != length
            or sequence >= SEQUENCE_NUMBER_LIMIT
        ):
            return None
        try:
            inner = self._aead.decrypt(
                (self._iv ^ sequence).to_bytes(12, "big"),
                data[RECORD_HEADER_SIZE:],
                data[:RECORD_HEADER_SIZE],
            )
        except InvalidTag:
            return None
        if inner[-1] != _PROTECTED_OCTET:
            return None
        self._sequence = sequence + 1
        return inner[:-1]

    def open_records(
        self, data: bytes, spans: list[tuple[int, int]], contents: list[bytes | memoryview]
    ) -> InnerPlaintext | None:
        """Decrypt the records of ``data`` at ``spans`` (complete protected records whose
        lengths the caller checked, last first: each is popped as it is consumed, a failing
        one included) into one buffer while they carry application data with bytes in it;
        that buffer's filled part goes to ``contents``. Returns the ``InnerPlaintext`` of the
        record that stopped it, when one carried something else.

        The checks are ``decrypt``'s (sequence, authentication, length, padding, content
        type). Each record is decrypted in place behind the one before, its content type
        octet overwritten by the next: one allocation per call, not three per record."""
        tag = self.suite.tag_length
        # The spans are contiguous, last first: their records' plaintexts fit in this.
        buffer = bytearray(spans[0][1] - spans[-1][0] - (RECORD_HEADER_SIZE + tag) * len(spans))
        view, source = memoryview(buffer), memoryview(data)
        decrypt_into, iv, sequence = self._aead.decrypt_into, self._iv, self._sequence
        filled = 0
        inner: InnerPlaintext | None = None
        try:
            while spans:
                start, end = spans.pop()
                if sequence >= SEQUENCE_NUMBER_LIMIT:
                    raise TLSAlert(Alert.INTERNAL_ERROR, "read sequence number exhausted")
                size = end - start - RECORD_HEADER_SIZE - tag
                try:
                    decrypt_into(
                        (iv ^ sequence).to_bytes(12, "big"),
                        source[start + RECORD_HEADER_SIZE : end],
                        source[start : start + RECORD_HEADER_SIZE],
                        view[filled : filled + size],
                    )
                except InvalidTag:
                    raise TLSAlert(Alert.BAD_RECORD_MAC, "record authentication failed") from None
                sequence += 1
                last = filled + size - 1
                if size > 1 and buffer[last] == ContentType.APPLICATION_DATA:
                    filled = last  # the common record: no padding, content before the type
                    continue
                inner = _inner_plaintext(bytes(view[filled : filled + size]))
                if inner.content_type == ContentType.APPLICATION_DATA and inner.content:
                    # padded: the content moves down over its padding and type octet
                    buffer[filled : filled + len(inner.content)] = inner.content
                    filled += len(inner.content)
                    inner = None
                    continue
                break
        finally:
            self._sequence = sequence
            view.release()
            source.release()
            if filled:
                contents.append(memoryview(buffer)[:filled])
        return inner


def _inner_plaintext(inner: bytes) -> InnerPlaintext:
    """A decrypted TLSInnerPlaintext's content type and content (section 5.4): what the
    checks of ``RecordProtection.decrypt`` allow."""
    # Section 5.4: scan from the end for the first non-zero octet: the content type. (The
    # scan runs over authenticated plaintext only; unpadded records skip the copy.)
    if inner and inner[-1]:
        content_type, content = inner[-1], inner[:-1]
    else:
        unpadded = inner.rstrip(b"\x00")
        if not unpadded:
            raise TLSAlert(Alert.UNEXPECTED_MESSAGE, "protected record has no content type")
        content_type, content = unpadded[-1], unpadded[:-1]
    if content_type not in _INNER_TYPES:
        raise TLSAlert(
            Alert.UNEXPECTED_MESSAGE, f"protected record of inner content type {content_type}"
        )
    if not content and content_type != ContentType.APPLICATION_DATA:
        raise TLSAlert(Alert.UNEXPECTED_MESSAGE, "empty handshake or alert record (section 5.4)")
    return _new_inner_plaintext((content_type, content))
