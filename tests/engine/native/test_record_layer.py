"""Record framing and protection (RFC 8446 sections 5.1-5.5)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtlsproxy.engine.native import (
    MAX_CIPHERTEXT_LENGTH,
    MAX_INNER_PLAINTEXT_LENGTH,
    MAX_PLAINTEXT_LENGTH,
    NO_PADDING,
    SEQUENCE_NUMBER_LIMIT,
    TLS_AES_128_GCM_SHA256,
    TLS_AES_256_GCM_SHA384,
    TLS_CHACHA20_POLY1305_SHA256,
    CipherSuite,
    InnerPlaintext,
    PaddingPolicy,
    Record,
    RecordProtection,
    RecordReader,
    TLSAlert,
    encode_record,
    pad_to_multiple,
    parse_record,
)
from mtlsproxy.engine.native.key_schedule import derive_traffic_keys
from mtlsproxy.vocabulary.failures import Alert

SUITES = [TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256]
SUITE_IDS = [suite.name for suite in SUITES]
HANDSHAKE, ALERT, APPLICATION_DATA = 22, 21, 23

# RFC 8448 section 3 protected records (the JSON holds only keys and plaintext messages).
# The client's encrypted Finished ("{client} send handshake record: complete record"):
RFC8448_CLIENT_FINISHED_RECORD = bytes.fromhex(
    "170303003575ec4dc238cce60b298044a71e219c56cc77b0517fe9b93c7a4bfc44d87f38f80338ac98fc46"
    "deb384bd1caeacab6867d726c40546"
)
# The server's encrypted flight (EncryptedExtensions..Finished, 674-byte fragment): its header
# and first 19 ciphertext bytes, and its 16-byte GCM tag (which authenticates all the rest).
RFC8448_SERVER_FLIGHT_HEAD = bytes.fromhex("17030302a2d1ff334a56f5bff6594a07cc87b580233f500f")
RFC8448_SERVER_FLIGHT_TAG = bytes.fromhex("bf0253fe5175be898e750edc53370d2b")
SERVER_FLIGHT = ("EncryptedExtensions", "Certificate", "CertificateVerify", "ServerFinished")


def pair(
    suite: CipherSuite, padding: PaddingPolicy = NO_PADDING, secret: bytes | None = None
) -> tuple[RecordProtection, RecordProtection]:
    secret = secret if secret is not None else bytes(range(suite.hash_length))
    return (
        RecordProtection.from_secret(suite, secret, padding=padding),
        RecordProtection.from_secret(suite, secret),
    )


def seal_raw(protection: RecordProtection, inner: bytes, sequence: int = 0) -> Record:
    """A record sealed with ``protection``'s key at ``sequence`` around an arbitrary inner
    plaintext, bypassing every check ``encrypt`` makes (to build malformed records)."""
    suite = protection.suite
    length = len(inner) + suite.tag_length
    header = bytes((23, 3, 3)) + length.to_bytes(2, "big")
    nonce = (protection._iv ^ sequence).to_bytes(12, "big")
    return parse_record(header + protection._aead.encrypt(nonce, inner, header))


def alert_of(call: object, *args: object) -> Alert:
    with pytest.raises(TLSAlert) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value.alert


# --- RFC 8448 -------------------------------------------------------------------------------


def test_rfc8448_server_flight_record(
    rfc8448_secrets: dict[str, bytes], rfc8448_messages: dict[str, bytes]
) -> None:
    flight = b"".join(rfc8448_messages[name] for name in SERVER_FLIGHT)
    server = RecordProtection(
        TLS_AES_128_GCM_SHA256,
        rfc8448_secrets["server_handshake_write_key"],
        rfc8448_secrets["server_handshake_write_iv"],
    )
    record = server.encrypt(HANDSHAKE, flight)
    assert len(record) == 5 + 0x02A2
    assert record.startswith(RFC8448_SERVER_FLIGHT_HEAD)
    assert record.endswith(RFC8448_SERVER_FLIGHT_TAG)
    client_view = RecordProtection.from_secret(
        TLS_AES_128_GCM_SHA256, rfc8448_secrets["server_handshake_traffic_secret"]
    )
    assert client_view.decrypt(parse_record(record)) == InnerPlaintext(HANDSHAKE, flight)


def test_rfc8448_client_finished_record(
    rfc8448_secrets: dict[str, bytes], rfc8448_messages: dict[str, bytes]
) -> None:
    server_view = RecordProtection.from_secret(
        TLS_AES_128_GCM_SHA256, rfc8448_secrets["client_handshake_traffic_secret"]
    )
    inner = server_view.decrypt(parse_record(RFC8448_CLIENT_FINISHED_RECORD))
    assert inner == InnerPlaintext(HANDSHAKE, rfc8448_messages["ClientFinished"])
    client = RecordProtection(
        TLS_AES_128_GCM_SHA256,
        rfc8448_secrets["client_handshake_write_key"],
        rfc8448_secrets["client_handshake_write_iv"],
    )
    assert client.encrypt(HANDSHAKE, rfc8448_messages["ClientFinished"]) == (
        RFC8448_CLIENT_FINISHED_RECORD
    )


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("suite", SUITES, ids=SUITE_IDS)
@pytest.mark.parametrize("block", [0, 1, 32, 256, 4096, MAX_INNER_PLAINTEXT_LENGTH])
def test_round_trip(suite: CipherSuite, block: int) -> None:
    sender, receiver = pair(suite, pad_to_multiple(block))
    messages = [
        (APPLICATION_DATA, b""),
        (HANDSHAKE, b"\x14\x00\x00\x00"),
        (ALERT, b"\x01\x00"),
        (APPLICATION_DATA, b"x" * 1000),
        (APPLICATION_DATA, bytes(range(256)) * 64),  # 2^14: full size
    ]
    for sequence, (content_type, content) in enumerate(messages):
        assert sender.sequence_number == receiver.sequence_number == sequence
        wire = sender.encrypt(content_type, content)
        inner_length = len(wire) - 5 - suite.tag_length
        assert wire[:3] == b"\x17\x03\x03"
        assert int.from_bytes(wire[3:5], "big") == len(wire) - 5
        assert len(content) + 1 <= inner_length <= MAX_INNER_PLAINTEXT_LENGTH
        if block > 1:
            assert inner_length % block == 0 or inner_length == MAX_INNER_PLAINTEXT_LENGTH
        else:
            assert inner_length == len(content) + 1
        assert receiver.decrypt(parse_record(wire)) == (content_type, content)


def test_padding_policy() -> None:
    assert NO_PADDING.padding_length(100) == 0
    assert PaddingPolicy(1).padding_length(100) == 0
    assert pad_to_multiple(64).padding_length(63) == 0
    assert pad_to_multiple(64).padding_length(64) == 63
    assert pad_to_multiple(1000).padding_length(MAX_PLAINTEXT_LENGTH) == 0  # capped at 2^14+1
    assert pad_to_multiple(1000).padding_length(16000) == MAX_INNER_PLAINTEXT_LENGTH - 16001
    with pytest.raises(ValueError):
        PaddingPolicy(-1)
    with pytest.raises(ValueError):
        PaddingPolicy(MAX_INNER_PLAINTEXT_LENGTH + 1)


@given(st.integers(0, MAX_PLAINTEXT_LENGTH), st.integers(0, MAX_INNER_PLAINTEXT_LENGTH))
def test_padding_never_exceeds_record_limit(content_length: int, block: int) -> None:
    padding = PaddingPolicy(block).padding_length(content_length)
    assert padding >= 0
    assert content_length + 1 + padding <= MAX_INNER_PLAINTEXT_LENGTH


@pytest.mark.parametrize("suite", SUITES, ids=SUITE_IDS)
def test_nonce_is_iv_xor_sequence(suite: CipherSuite) -> None:
    key, iv = bytes(range(suite.key_length)), bytes(range(100, 112))
    sender = RecordProtection(suite, key, iv)
    sender.encrypt(APPLICATION_DATA, b"first")
    wire = sender.encrypt(APPLICATION_DATA, b"second")
    nonce = bytes(a ^ b for a, b in zip(iv, (1).to_bytes(12, "big"), strict=True))
    assert wire[5:] == suite.new_aead(key).encrypt(nonce, b"second\x17", wire[:5])


def test_encrypt_fragmented() -> None:
    sender, receiver = pair(TLS_AES_128_GCM_SHA256)
    data = bytes(range(256)) * 160  # 40960 bytes: 3 records
    reader = RecordReader()
    reader.feed(sender.encrypt_fragmented(APPLICATION_DATA, data))
    received = []
    while (record := reader.next_record()) is not None:
        received.append(receiver.decrypt(record).content)
    assert [len(part) for part in received] == [16384, 16384, 8192]
    assert b"".join(received) == data
    assert sender.encrypt_fragmented(APPLICATION_DATA, b"")  # one empty record
    with pytest.raises(ValueError):
        sender.encrypt_fragmented(APPLICATION_DATA, data, max_fragment=MAX_PLAINTEXT_LENGTH + 1)


@pytest.mark.parametrize("suite", SUITES, ids=SUITE_IDS)
def test_from_secret_is_the_constructor_on_the_derived_key_and_iv(suite: CipherSuite) -> None:
    secret = bytes(range(suite.hash_length))
    built = RecordProtection.from_secret(suite, secret)
    key, iv = derive_traffic_keys(suite, secret)
    direct = RecordProtection(suite, key, iv, traffic_secret=secret)
    for content in (b"one", b"two" * 100):
        assert built.encrypt(HANDSHAKE, content) == direct.encrypt(HANDSHAKE, content)
    assert built.needs_key_update is direct.needs_key_update is False
    with pytest.raises(ValueError):
        RecordProtection(suite, key[:-1], iv)


def test_encrypt_fragmented_one_record_is_encrypt() -> None:
    sender, _ = pair(TLS_AES_128_GCM_SHA256)
    other, _ = pair(TLS_AES_128_GCM_SHA256)
    for size in (1, 2500, MAX_PLAINTEXT_LENGTH):  # a handshake flight: one record
        data = bytes(size)
        assert sender.encrypt_fragmented(HANDSHAKE, data) == other.encrypt(HANDSHAKE, data)
    two = sender.encrypt_fragmented(HANDSHAKE, bytes(3), max_fragment=2)
    assert len(two) == (5 + 2 + 1 + 16) + (5 + 1 + 1 + 16)  # two records


def test_encrypt_rejects_caller_errors() -> None:
    sender, _ = pair(TLS_AES_128_GCM_SHA256)
    with pytest.raises(ValueError):
        sender.encrypt(APPLICATION_DATA, bytes(MAX_PLAINTEXT_LENGTH + 1))
    with pytest.raises(ValueError):
        sender.encrypt(20, b"\x01")  # change_cipher_spec is never protected
    with pytest.raises(ValueError):
        sender.encrypt(HANDSHAKE, b"")
    assert sender.sequence_number == 0


# --- failures -------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", SUITES, ids=SUITE_IDS)
def test_tampering_is_bad_record_mac(suite: CipherSuite) -> None:
    sender, _ = pair(suite)
    wire = sender.encrypt(APPLICATION_DATA, b"attack at dawn")
    for position in (1, 2, 5, 6, len(wire) - 17, len(wire) - 1):
        tampered = bytearray(wire)
        tampered[position] ^= 0x80
        receiver = pair(suite)[1]
        assert alert_of(receiver.decrypt, parse_record(bytes(tampered))) is Alert.BAD_RECORD_MAC
    truncated = wire[:3] + (len(wire) - 6).to_bytes(2, "big") + wire[5:-1]
    assert alert_of(pair(suite)[1].decrypt, parse_record(truncated)) is Alert.BAD_RECORD_MAC


def test_replay_and_reorder_are_bad_record_mac() -> None:
    sender, receiver = pair(TLS_CHACHA20_POLY1305_SHA256)
    first = parse_record(sender.encrypt(APPLICATION_DATA, b"one"))
    second = parse_record(sender.encrypt(APPLICATION_DATA, b"two"))
    assert alert_of(pair(TLS_CHACHA20_POLY1305_SHA256)[1].decrypt, second) is Alert.BAD_RECORD_MAC
    receiver.decrypt(first)
    assert alert_of(receiver.decrypt, first) is Alert.BAD_RECORD_MAC


@pytest.mark.parametrize("length", [0, 1, 15, 16, 17])
def test_too_short_ciphertext_is_bad_record_mac(length: int) -> None:
    _, receiver = pair(TLS_AES_128_GCM_SHA256)
    assert alert_of(receiver.decrypt, Record(23, 0x0303, bytes(length))) is Alert.BAD_RECORD_MAC


def test_oversize_ciphertext_is_record_overflow() -> None:
    _, receiver = pair(TLS_AES_128_GCM_SHA256)
    big = Record(23, 0x0303, bytes(MAX_CIPHERTEXT_LENGTH + 1))
    assert alert_of(receiver.decrypt, big) is Alert.RECORD_OVERFLOW
    # The largest legal length gets as far as the AEAD.
    legal = Record(23, 0x0303, bytes(MAX_CIPHERTEXT_LENGTH))
    assert alert_of(receiver.decrypt, legal) is Alert.BAD_RECORD_MAC


def test_oversize_inner_plaintext_is_record_overflow() -> None:
    _, receiver = pair(TLS_AES_128_GCM_SHA256)
    record = seal_raw(receiver, b"x" * MAX_PLAINTEXT_LENGTH + b"\x17\x00")  # 2^14 + 2
    assert len(record.fragment) <= MAX_CIPHERTEXT_LENGTH
    assert alert_of(receiver.decrypt, record) is Alert.RECORD_OVERFLOW


def test_padded_full_size_record_is_accepted() -> None:
    _, receiver = pair(TLS_AES_128_GCM_SHA256)
    record = seal_raw(receiver, b"\x16" * 100 + b"\x16" + bytes(MAX_PLAINTEXT_LENGTH - 100))
    assert receiver.decrypt(record) == (HANDSHAKE, b"\x16" * 100)


@pytest.mark.parametrize(
    "inner",
    [
        b"",  # no content type at all
        bytes(1),
        bytes(300),  # all-zero padding
        b"hello\x14",  # change_cipher_spec inside protection
        b"hello\x63\x00\x00",  # unknown inner type 99
        b"\x16",  # zero-length handshake
        b"\x15\x00\x00",  # zero-length alert, padded
    ],
)
def test_bad_inner_plaintext_is_unexpected_message(inner: bytes) -> None:
    _, receiver = pair(TLS_AES_256_GCM_SHA384)
    assert alert_of(receiver.decrypt, seal_raw(receiver, inner)) is Alert.UNEXPECTED_MESSAGE


def test_empty_application_data_is_accepted() -> None:
    _, receiver = pair(TLS_AES_256_GCM_SHA384)
    assert receiver.decrypt(seal_raw(receiver, b"\x17" + bytes(50))) == (APPLICATION_DATA, b"")


def test_unprotected_content_type_on_decrypt_is_unexpected_message() -> None:
    sender, receiver = pair(TLS_AES_128_GCM_SHA256)
    wire = sender.encrypt(HANDSHAKE, b"\x14\x00\x00\x00")
    record = Record(HANDSHAKE, 0x0303, parse_record(wire).fragment)
    assert alert_of(receiver.decrypt, record) is Alert.UNEXPECTED_MESSAGE


# --- sequence numbers and key usage ---------------------------------------------------------


@pytest.mark.parametrize("suite", SUITES, ids=SUITE_IDS)
def test_sequence_number_never_wraps(suite: CipherSuite) -> None:
    sender, receiver = pair(suite)
    last = SEQUENCE_NUMBER_LIMIT - 1  # 2^64 - 2, the last usable sequence number
    receiver._sequence = last
    record = seal_raw(receiver, b"last\x17", last)
    assert receiver.decrypt(record) == (APPLICATION_DATA, b"last")
    assert receiver.sequence_number == SEQUENCE_NUMBER_LIMIT
    assert alert_of(receiver.decrypt, record) is Alert.INTERNAL_ERROR
    sender._sequence = last
    if suite.record_limit is None:
        assert sender.encrypt(APPLICATION_DATA, b"last") == (record.header() + record.fragment)
    assert alert_of(sender.encrypt, APPLICATION_DATA, b"more") is Alert.INTERNAL_ERROR
    assert sender.needs_key_update and receiver.needs_key_update


@pytest.mark.parametrize("suite", [TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384])
def test_aes_gcm_key_usage_limit(suite: CipherSuite) -> None:
    sender, receiver = pair(suite)
    assert suite.record_limit == 23_726_566
    sender._sequence = 2**24 - 1
    assert not sender.needs_key_update
    sender.encrypt(APPLICATION_DATA, b"x")
    assert sender.needs_key_update  # time to send a KeyUpdate
    sender._sequence = suite.record_limit - 1
    sender.encrypt(APPLICATION_DATA, b"x")  # the last record section 5.5 allows
    assert alert_of(sender.encrypt, APPLICATION_DATA, b"x") is Alert.INTERNAL_ERROR
    # Receiving past the limit still works (the limit binds the sender); the engine sees
    # needs_key_update and asks the peer to rekey.
    receiver._sequence = suite.record_limit
    record = seal_raw(receiver, b"late\x17", suite.record_limit)
    assert receiver.decrypt(record) == (APPLICATION_DATA, b"late")
    assert receiver.needs_key_update


def test_chacha20_needs_no_early_key_update() -> None:
    sender, _ = pair(TLS_CHACHA20_POLY1305_SHA256)
    sender._sequence = 2**40
    sender.encrypt(APPLICATION_DATA, b"x")
    assert not sender.needs_key_update


@pytest.mark.parametrize("suite", SUITES, ids=SUITE_IDS)
def test_next_generation(suite: CipherSuite) -> None:
    sender, receiver = pair(suite, pad_to_multiple(64))
    receiver.decrypt(parse_record(sender.encrypt(APPLICATION_DATA, b"gen 0")))
    new_sender, new_receiver = sender.next_generation(), receiver.next_generation()
    assert new_sender.sequence_number == new_receiver.sequence_number == 0
    assert new_sender.padding == pad_to_multiple(64)
    wire = new_sender.encrypt(APPLICATION_DATA, b"gen 1")
    assert alert_of(receiver.decrypt, parse_record(wire)) is Alert.BAD_RECORD_MAC
    assert new_receiver.decrypt(parse_record(wire)) == (APPLICATION_DATA, b"gen 1")
    bare = RecordProtection(suite, bytes(suite.key_length), bytes(12))
    with pytest.raises(ValueError):
        bare.next_generation()


def test_repr_hides_keys() -> None:
    sender, _ = pair(TLS_AES_128_GCM_SHA256)
    assert repr(sender) == "RecordProtection(TLS_AES_128_GCM_SHA256, sequence_number=0)"


def test_bad_iv_length() -> None:
    with pytest.raises(ValueError):
        RecordProtection(TLS_AES_128_GCM_SHA256, bytes(16), bytes(8))


# --- framing --------------------------------------------------------------------------------


def test_reader_reassembles_records_split_anywhere() -> None:
    records = [
        encode_record(HANDSHAKE, b"\x01\x00\x00\x01x"),
        encode_record(20, b"\x01"),
        b"\x17\x03\x03\x00\x20" + bytes(32),
    ]
    stream = b"".join(records)
    reader = RecordReader()
    got: list[Record] = []
    for index in range(len(stream)):
        reader.feed(stream[index : index + 1])
        while (record := reader.next_record()) is not None:
            got.append(record)
    assert [r.header() + r.fragment for r in got] == records
    assert reader.buffered == 0


def test_reader_rejects_oversize_header_before_body() -> None:
    reader = RecordReader()
    reader.feed(b"\x17\x03\x03" + (MAX_CIPHERTEXT_LENGTH + 1).to_bytes(2, "big"))
    assert alert_of(reader.next_record) is Alert.RECORD_OVERFLOW
    reader = RecordReader()
    reader.feed(b"\x16\x03\x03" + (MAX_PLAINTEXT_LENGTH + 1).to_bytes(2, "big"))
    assert alert_of(reader.next_record) is Alert.RECORD_OVERFLOW
    reader = RecordReader()
    reader.feed(b"\x17\x03\x03" + MAX_CIPHERTEXT_LENGTH.to_bytes(2, "big"))
    assert reader.next_record() is None


def test_reader_rejects_unknown_content_type() -> None:
    reader = RecordReader()
    reader.feed(b"\x18\x03\x03\x00\x01\x01")  # heartbeat
    assert alert_of(reader.next_record) is Alert.UNEXPECTED_MESSAGE


def test_parse_record_needs_exactly_one_record() -> None:
    one = encode_record(HANDSHAKE, b"abc")
    assert parse_record(one) == Record(HANDSHAKE, 0x0303, b"abc")
    assert alert_of(parse_record, one[:4]) is Alert.DECODE_ERROR
    assert alert_of(parse_record, one[:-1]) is Alert.DECODE_ERROR
    assert alert_of(parse_record, one + b"\x00") is Alert.DECODE_ERROR
    with pytest.raises(ValueError):
        encode_record(HANDSHAKE, bytes(MAX_PLAINTEXT_LENGTH + 1))


# --- fuzzing --------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.sampled_from(range(len(SUITES))))
def test_fuzz_reader_and_decrypt_raise_only_tls_alert(data: bytes, suite_index: int) -> None:
    _, receiver = pair(SUITES[suite_index])
    reader = RecordReader()
    reader.feed(data)
    try:
        while (record := reader.next_record()) is not None:
            receiver.decrypt(record)
    except TLSAlert as error:
        assert isinstance(error.alert, Alert)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 255), st.integers(0, 0xFFFF), st.binary(max_size=MAX_CIPHERTEXT_LENGTH + 8))
def test_fuzz_decrypt_arbitrary_record(content_type: int, version: int, fragment: bytes) -> None:
    _, receiver = pair(TLS_AES_128_GCM_SHA256)
    with pytest.raises(TLSAlert):
        receiver.decrypt(Record(content_type, version, fragment))


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.data())
def test_fuzz_sealed_inner_plaintext(inner: bytes, data: st.DataObject) -> None:
    """Authentic records with arbitrary inner plaintexts: decrypt returns or raises TLSAlert."""
    suite = data.draw(st.sampled_from(SUITES))
    _, receiver = pair(suite)
    try:
        content_type, content = receiver.decrypt(seal_raw(receiver, inner))
    except TLSAlert as error:
        assert error.alert is Alert.UNEXPECTED_MESSAGE
    else:
        assert inner.rstrip(b"\x00") == content + bytes((content_type,))


# --- the established data path: every complete record in one call ---------------------------


def _drain_one_by_one(
    reader: RecordReader, receiver: RecordProtection, read: bytes, out: list
) -> None:
    reader.feed(read)
    while (record := reader.next_record()) is not None:
        _note(out, receiver.decrypt(record))


def _drain_batched(
    reader: RecordReader, receiver: RecordProtection, read: bytes, out: list
) -> None:
    """As the engine's established loop: the batch, then the one-record way when it stops."""
    reader.feed(read)
    while True:
        contents: list[bytes | memoryview] = []
        try:
            inner = reader.open_application_data(receiver, contents)
        finally:
            for content in contents:
                _note(out, InnerPlaintext(APPLICATION_DATA, bytes(content)))
        if inner is not None:
            _note(out, inner)
            continue
        record = reader.next_record()
        if record is None:
            return
        _note(out, receiver.decrypt(record))


def _drain_read_whole_first(
    reader: RecordReader, receiver: RecordProtection, read: bytes, out: list
) -> None:
    """As the engine's established receive: a read that is one record of application data
    in one call (``open_record``), anything else the batched way."""
    content = reader.open_record(receiver, read)
    if content is not None:
        _note(out, InnerPlaintext(APPLICATION_DATA, content))
    else:
        _drain_batched(reader, receiver, read, out)


def _note(out: list, inner: InnerPlaintext) -> None:
    """Application data with bytes in it as one growing run; anything else as it came."""
    if inner.content_type == APPLICATION_DATA and inner.content:
        if out and out[-1][0] == "data":
            out[-1] = ("data", out[-1][1] + inner.content)
        else:
            out.append(("data", inner.content))
    else:
        out.append(("record", inner.content_type, bytes(inner.content)))


def _received(stream: bytes, cuts: list[int], suite: CipherSuite, drain: object) -> list:
    _, receiver = pair(suite)
    reader = RecordReader()
    out: list = []
    bounds = [0, *sorted(cuts), len(stream)]
    try:
        for start, end in itertools.pairwise(bounds):
            drain(reader, receiver, stream[start:end], out)  # type: ignore[operator]
    except TLSAlert as error:
        out.append(("alert", error.alert))
    out.append(("sequence", receiver.sequence_number, "buffered", reader.buffered))
    return out


RECORD_KINDS = st.one_of(
    st.tuples(st.just("data"), st.integers(0, MAX_PLAINTEXT_LENGTH)),
    st.tuples(st.just("data"), st.integers(1, 40)),
    st.tuples(st.just("alert"), st.just(0)),
    st.tuples(st.just("handshake"), st.integers(1, 8)),
    st.tuples(st.just("plaintext"), st.integers(1, 8)),  # a record that is not protected
    st.tuples(st.just("tampered"), st.integers(1, 100)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(RECORD_KINDS, max_size=12), st.data())
def test_batched_records_read_as_one_by_one(kinds: list[tuple[str, int]], data) -> None:
    """Differential: the batch path, and the whole-record read before it, give the same
    contents, records, alert and sequence number as the one-record path, for any records
    (padded or not) fed in any split, a read per record included."""
    suite = data.draw(st.sampled_from(SUITES))
    block = data.draw(st.sampled_from([0, 0, 16, 256]))
    sender, _ = pair(suite, pad_to_multiple(block))
    records: list[bytes] = []
    for kind, size in kinds:
        if kind == "data":
            records.append(sender.encrypt(APPLICATION_DATA, bytes([size % 251]) * size))
        elif kind == "alert":
            records.append(sender.encrypt(ALERT, b"\x01\x00"))
        elif kind == "handshake":
            records.append(sender.encrypt(HANDSHAKE, b"\x18" * size))
        elif kind == "plaintext":
            records.append(encode_record(HANDSHAKE, b"\x01" * size))
        else:
            record = bytearray(sender.encrypt(APPLICATION_DATA, b"t" * size))
            record[-1] ^= 1
            records.append(bytes(record))
    stream = b"".join(records)
    if data.draw(st.booleans()):  # a read per record, as keep-alive requests come
        cuts = list(itertools.accumulate(len(record) for record in records))
    else:
        cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=6))
    one_by_one = _received(stream, cuts, suite, _drain_one_by_one)
    assert _received(stream, cuts, suite, _drain_batched) == one_by_one
    assert _received(stream, cuts, suite, _drain_read_whole_first) == one_by_one


def test_batched_read_is_one_buffer_and_keeps_data_before_a_bad_record() -> None:
    sender, receiver = pair(TLS_AES_128_GCM_SHA256)
    good = b"".join(sender.encrypt(APPLICATION_DATA, bytes([i]) * 5000) for i in range(4))
    bad = bytearray(sender.encrypt(APPLICATION_DATA, b"x" * 10))
    bad[-1] ^= 1
    reader = RecordReader()
    reader.feed(good + bytes(bad))
    contents: list[bytes | memoryview] = []
    assert alert_of(reader.open_application_data, receiver, contents) is Alert.BAD_RECORD_MAC
    assert len(contents) == 1  # four records, one buffer
    assert bytes(contents[0]) == b"".join(bytes([i]) * 5000 for i in range(4))
    assert receiver.sequence_number == 4


def test_reader_copies_only_the_straddling_record() -> None:
    """A read that completes a record and brings more keeps the rest in place."""
    sender, receiver = pair(TLS_AES_128_GCM_SHA256)
    records = [sender.encrypt(APPLICATION_DATA, bytes([i]) * 3000) for i in range(3)]
    stream = b"".join(records)
    reader = RecordReader()
    reader.feed(stream[:100])
    read = stream[100:]
    reader.feed(read)
    assert reader._data is read  # not copied: only the first record's 3000-odd bytes were
    assert len(reader._head) == len(records[0])
    contents: list[bytes | memoryview] = []
    assert reader.open_application_data(receiver, contents) is None
    assert b"".join(bytes(c) for c in contents) == bytes(3000) + b"\x01" * 3000 + b"\x02" * 3000
    assert reader.buffered == 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, MAX_PLAINTEXT_LENGTH), min_size=1, max_size=4),
    st.sampled_from([0, 1, 64]),
    st.sampled_from(range(len(SUITES))),
    st.booleans(),
)
def test_seal_application_data_is_encrypt(
    sizes: list[int], block: int, suite_index: int, as_view: bool
) -> None:
    """The data path's record is ``encrypt``'s, byte for byte, record after record."""
    suite = SUITES[suite_index]
    one, other = pair(suite, pad_to_multiple(block))[0], pair(suite, pad_to_multiple(block))[0]
    for size in sizes:
        content = bytes([size % 251]) * size
        sealed = one.seal_application_data(memoryview(content) if as_view else content)
        assert sealed == other.encrypt(APPLICATION_DATA, content)
    assert one.sequence_number == other.sequence_number == len(sizes)


def test_seal_application_data_declines_once_the_key_is_worn() -> None:
    """Past ``needs_key_update`` the data path seals nothing (the engine sends a KeyUpdate
    first, then the record under the new key)."""
    sender, _ = pair(TLS_AES_128_GCM_SHA256)
    sender._sequence = 2**24 - 1
    assert sender.seal_application_data(b"x") is not None
    assert sender.needs_key_update and sender.sequence_number == 2**24
    assert sender.seal_application_data(b"x") is None
    assert sender.sequence_number == 2**24


def test_reader_fed_again_before_it_was_drained() -> None:
    """Records left unread when more comes (the engine drains every read, a caller need
    not): nothing is lost or reordered, whatever was straddling."""
    records = [encode_record(HANDSHAKE, bytes([i]) * (100 + i)) for i in range(6)]
    stream = b"".join(records)
    for first in range(1, len(stream)):
        for second in (first + 1, first + 150, len(stream)):
            reader = RecordReader()
            reader.feed(stream[:first])
            got = [reader.next_record()]  # one taken, the rest left in the reader
            reader.feed(stream[first:second])
            reader.feed(stream[second:])
            while (record := reader.next_record()) is not None:
                got.append(record)
            got = [r for r in got if r is not None]
            assert [r.header() + r.fragment for r in got] == records, (first, second)
            assert reader.buffered == 0
