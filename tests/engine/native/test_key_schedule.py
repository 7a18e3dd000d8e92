"""The key schedule against RFC 8448 section 3 (Simple 1-RTT Handshake), RFC 8446 7.1-7.3."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from mtlsproxy.engine.native import (
    TLS_AES_128_GCM_SHA256,
    TLS_AES_256_GCM_SHA384,
    KeySchedule,
    KeyScheduleError,
    Phase,
    TLSAlert,
    Transcript,
    derive_traffic_keys,
    finished_key,
    finished_verify_data,
    hkdf_expand_label,
    hkdf_extract,
    next_traffic_secret,
    verify_finished,
)
from mtlsproxy.vocabulary.failures import Alert, Reason, Step

SUITE = TLS_AES_128_GCM_SHA256
SERVER_FLIGHT = ("EncryptedExtensions", "Certificate", "CertificateVerify")


def run_handshake(secrets: dict[str, bytes], messages: dict[str, bytes]) -> KeySchedule:
    """The RFC 8448 handshake through the key schedule, checking both Finished values."""
    ks = KeySchedule(SUITE)
    ks.update_transcript(messages["ClientHello"])
    ks.update_transcript(messages["ServerHello"])
    ks.derive_handshake_secrets(secrets["shared_secret"])
    for name in SERVER_FLIGHT:
        ks.update_transcript(messages[name])
    assert ks.server_finished_verify_data() == messages["ServerFinished"][4:]
    ks.update_transcript(messages["ServerFinished"])
    ks.derive_application_secrets()
    assert ks.client_finished_verify_data() == messages["ClientFinished"][4:]
    ks.verify_client_finished(messages["ClientFinished"][4:])
    ks.update_transcript(messages["ClientFinished"])
    ks.derive_resumption_master_secret()
    return ks


@pytest.fixture
def schedule(rfc8448_secrets: dict[str, bytes], rfc8448_messages: dict[str, bytes]) -> KeySchedule:
    return run_handshake(rfc8448_secrets, rfc8448_messages)


# JSON key -> KeySchedule attribute.
SECRETS = {
    "early_secret": "early_secret",
    "derived_early_secret": "derived_early_secret",
    "handshake_secret": "handshake_secret",
    "client_handshake_traffic_secret": "client_handshake_traffic_secret",
    "server_handshake_traffic_secret": "server_handshake_traffic_secret",
    "derived_handshake_secret": "derived_handshake_secret",
    "master_secret": "master_secret",
    "client_application_traffic_secret_0": "client_application_traffic_secret",
    "server_application_traffic_secret_0": "server_application_traffic_secret",
    "exporter_master_secret": "exporter_master_secret",
    "resumption_master_secret": "resumption_master_secret",
}

# JSON key prefix -> (traffic secret attribute).
TRAFFIC_KEYS = {
    "server_handshake_write": "server_handshake_traffic_secret",
    "client_handshake_write": "client_handshake_traffic_secret",
    "client_application_write": "client_application_traffic_secret",
}


def test_every_json_secret_is_checked(rfc8448_secrets: dict[str, bytes]) -> None:
    keys = set(SECRETS)
    keys |= {f"{prefix}_{part}" for prefix in TRAFFIC_KEYS for part in ("key", "iv")}
    keys |= {"server_finished_key", "client_finished_key", "shared_secret"}
    keys |= {
        f"{side}_{kind}_key" for side in ("client", "server") for kind in ("private", "public")
    }
    assert set(rfc8448_secrets) == keys  # test_suites.py covers the key shares


@pytest.mark.parametrize("json_key", sorted(SECRETS))
def test_rfc8448_secret(
    schedule: KeySchedule, rfc8448_secrets: dict[str, bytes], json_key: str
) -> None:
    assert getattr(schedule, SECRETS[json_key]) == rfc8448_secrets[json_key]


@pytest.mark.parametrize("prefix", sorted(TRAFFIC_KEYS))
def test_rfc8448_traffic_keys(
    schedule: KeySchedule, rfc8448_secrets: dict[str, bytes], prefix: str
) -> None:
    keys = derive_traffic_keys(SUITE, getattr(schedule, TRAFFIC_KEYS[prefix]))
    assert keys.key == rfc8448_secrets[f"{prefix}_key"]
    assert keys.iv == rfc8448_secrets[f"{prefix}_iv"]
    assert "bytes>" in repr(keys) and keys.key.hex() not in repr(keys)


@pytest.mark.parametrize("side", ["client", "server"])
def test_rfc8448_finished_keys(
    schedule: KeySchedule, rfc8448_secrets: dict[str, bytes], side: str
) -> None:
    base_key = getattr(schedule, f"{side}_handshake_traffic_secret")
    assert finished_key(SUITE, base_key) == rfc8448_secrets[f"{side}_finished_key"]


def test_rfc8448_server_finished_standalone(
    rfc8448_secrets: dict[str, bytes], rfc8448_messages: dict[str, bytes]
) -> None:
    transcript = Transcript(SUITE)
    for name in ("ClientHello", "ServerHello", *SERVER_FLIGHT):
        transcript.update(rfc8448_messages[name])
    verify_data = finished_verify_data(
        SUITE, rfc8448_secrets["server_handshake_traffic_secret"], transcript.digest()
    )
    assert verify_data == rfc8448_messages["ServerFinished"][4:]
    verify_finished(
        SUITE, rfc8448_secrets["server_handshake_traffic_secret"], transcript.digest(), verify_data
    )


def test_client_finished_mismatch_is_decrypt_error(
    rfc8448_secrets: dict[str, bytes], rfc8448_messages: dict[str, bytes]
) -> None:
    ks = KeySchedule(SUITE)
    for name in ("ClientHello", "ServerHello"):
        ks.update_transcript(rfc8448_messages[name])
    ks.derive_handshake_secrets(rfc8448_secrets["shared_secret"])
    for name in (*SERVER_FLIGHT, "ServerFinished"):
        ks.update_transcript(rfc8448_messages[name])
    ks.derive_application_secrets()
    good = rfc8448_messages["ClientFinished"][4:]
    bad = good[:-1] + bytes((good[-1] ^ 1,))
    with pytest.raises(TLSAlert) as caught:
        ks.verify_client_finished(bad)
    assert caught.value.alert is Alert.DECRYPT_ERROR
    error = caught.value.to_handshake_error(Step.CLIENT_FINISHED)
    assert error.alert is Alert.DECRYPT_ERROR and error.reason is Reason.MALFORMED
    with pytest.raises(TLSAlert) as caught:
        ks.verify_client_finished(good[:-1])
    assert caught.value.alert is Alert.DECODE_ERROR
    ks.verify_client_finished(good)  # the failed checks changed nothing


def test_finished_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    data = finished_verify_data(SUITE, bytes(32), bytes(32))
    verify_finished(SUITE, bytes(32), bytes(32), data)
    assert calls == [(data, data)]


def test_key_update_secret(schedule: KeySchedule) -> None:
    """RFC 8446 section 7.2: application_traffic_secret_N+1 = HKDF-Expand-Label(..., "traffic
    upd", "", Hash.length); checked against an independent HKDF-Expand."""
    secret_0 = schedule.server_application_traffic_secret
    info = b"\x00\x20\x11tls13 traffic upd\x00"
    expected = HKDFExpand(hashes.SHA256(), 32, info).derive(secret_0)
    assert next_traffic_secret(SUITE, secret_0) == expected
    assert schedule.next_server_application_secret() == expected
    assert schedule.server_application_traffic_secret == expected
    assert schedule.next_server_application_secret() == next_traffic_secret(SUITE, expected)
    client_0 = schedule.client_application_traffic_secret
    assert schedule.next_client_application_secret() == next_traffic_secret(SUITE, client_0)


@pytest.mark.parametrize("length", [1, 12, 16, 32, 33, 48, 64, 100, 255])
@pytest.mark.parametrize("hash_name", ["sha256", "sha384"])
def test_hkdf_expand_label_matches_cryptography(hash_name: str, length: int) -> None:
    secret = bytes(range(48))
    label, context = b"c hs traffic", b"\x01" * 32
    info = (
        length.to_bytes(2, "big")
        + bytes((6 + len(label),))
        + b"tls13 "
        + label
        + bytes((len(context),))
        + context
    )
    algorithm = hashes.SHA256() if hash_name == "sha256" else hashes.SHA384()
    expected = HKDFExpand(algorithm, length, info).derive(secret)
    assert hkdf_expand_label(hash_name, secret, label, context, length) == expected


def test_hkdf_expand_label_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        hkdf_expand_label("sha256", bytes(32), b"x" * 250, b"", 32)
    with pytest.raises(ValueError):
        hkdf_expand_label("sha256", bytes(32), b"key", b"c" * 256, 32)
    with pytest.raises(ValueError):
        hkdf_expand_label("sha256", bytes(32), b"key", b"", 255 * 32 + 1)


def test_hkdf_extract_zero_salt_equals_empty_salt() -> None:
    assert hkdf_extract("sha256", bytes(32), b"ikm") == hkdf_extract("sha256", b"", b"ikm")


def test_sha384_schedule_runs_end_to_end() -> None:
    ks = KeySchedule(TLS_AES_256_GCM_SHA384)
    ks.update_transcript(b"\x01\x00\x00\x00")
    ks.derive_handshake_secrets(bytes(48))
    assert len(ks.server_handshake_traffic_secret) == 48
    keys = derive_traffic_keys(TLS_AES_256_GCM_SHA384, ks.server_handshake_traffic_secret)
    assert (len(keys.key), len(keys.iv)) == (32, 12)
    assert len(ks.server_finished_verify_data()) == 48


def test_out_of_order_use_is_a_key_schedule_error() -> None:
    ks = KeySchedule(SUITE)
    assert ks.phase is Phase.EARLY
    with pytest.raises(KeyScheduleError, match="master_secret is not derived"):
        _ = ks.master_secret
    with pytest.raises(KeyScheduleError):
        ks.derive_application_secrets()
    with pytest.raises(KeyScheduleError):
        ks.server_finished_verify_data()
    with pytest.raises(KeyScheduleError):
        ks.next_client_application_secret()
    ks.derive_handshake_secrets(bytes(32))
    with pytest.raises(KeyScheduleError):
        ks.derive_handshake_secrets(bytes(32))
    with pytest.raises(KeyScheduleError):
        ks.verify_client_finished(bytes(32))


def test_repr_never_shows_secrets(schedule: KeySchedule) -> None:
    text = repr(schedule)
    assert text == "KeySchedule(TLS_AES_128_GCM_SHA256, phase=RESUMPTION)"
    assert schedule.master_secret.hex() not in text


def test_psk_changes_early_secret() -> None:
    assert KeySchedule(SUITE, psk=b"\x01" * 32).early_secret != KeySchedule(SUITE).early_secret


def test_transcript_message_hash_after_hello_retry_request() -> None:
    """RFC 8446 section 4.4.1: ClientHello1 is replaced by message_hash(Hash(ClientHello1))."""
    client_hello = b"\x01\x00\x00\x02hi"
    transcript = Transcript(SUITE)
    transcript.update(client_hello)
    fork = transcript.copy()
    transcript.replace_with_message_hash()
    transcript.update(b"hrr")
    inner = hashlib.sha256(client_hello).digest()
    assert transcript.digest() == hashlib.sha256(b"\xfe\x00\x00\x20" + inner + b"hrr").digest()
    assert fork.digest() == hashlib.sha256(client_hello).digest()
