"""Per-operation costs of the native TLS 1.3 engine's crypto building blocks.

Measures what one handshake and one bulk record cost in ``mtlsproxy.engine.native``, next to
the bare ``cryptography`` calls underneath, so overhead of the Python layer is visible:

- key exchange: key generation + shared secret per group (x25519, P-256, P-384);
- HKDF-Expand-Label x 12 (about one handshake's worth): the native implementation (``hmac.new``
  with a cached HkdfLabel prefix) against ``cryptography``'s ``HKDFExpand``, and the floors
  (HkdfLabel prebuilt) of ``HKDFExpand``, ``hmac.new`` and ``hmac.digest``;
- a whole server-side key schedule (handshake + application + resumption secrets, traffic keys
  for four directions, both Finished values);
- record protection: seal and open of one full 16 KiB record per suite, against raw AEAD calls.

Best-of-``--runs`` medians per operation (``timeit``), microseconds.

    python bench/native_crypto.py [--runs 5] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import statistics
import timeit
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from mtlsproxy.engine.native import (
    TLS_AES_128_GCM_SHA256,
    TLS_AES_256_GCM_SHA384,
    TLS_CHACHA20_POLY1305_SHA256,
    CipherSuite,
    KeySchedule,
    NamedGroup,
    RecordProtection,
    derive_traffic_keys,
    generate_key_share,
    hkdf_expand_label,
    parse_record,
)

# Twelve (label, length) pairs, roughly one handshake's HKDF-Expand-Label calls.
LABELS = [
    (b"derived", 32),
    (b"c hs traffic", 32),
    (b"s hs traffic", 32),
    (b"key", 16),
    (b"iv", 12),
    (b"finished", 32),
    (b"derived", 32),
    (b"c ap traffic", 32),
    (b"s ap traffic", 32),
    (b"exp master", 32),
    (b"key", 16),
    (b"iv", 12),
]
SECRET = bytes(range(32))
CONTEXT = bytes(32)


def _info(label: bytes, length: int) -> bytes:
    full = b"tls13 " + label
    return length.to_bytes(2, "big") + bytes((len(full),)) + full + bytes((32,)) + CONTEXT


INFOS = [_info(label, length) for label, length in LABELS]


def labels_native() -> None:
    for label, length in LABELS:
        hkdf_expand_label("sha256", SECRET, label, CONTEXT, length)


def labels_cryptography() -> None:
    for label, length in LABELS:
        HKDFExpand(hashes.SHA256(), length, _info(label, length)).derive(SECRET)


def labels_cryptography_prebuilt() -> None:
    for info, (_, length) in zip(INFOS, LABELS, strict=True):
        HKDFExpand(hashes.SHA256(), length, info).derive(SECRET)


def labels_hmac_prebuilt() -> None:
    for info, (_, length) in zip(INFOS, LABELS, strict=True):
        hmac.new(SECRET, info + b"\x01", "sha256").digest()[:length]


def labels_hmac_digest_prebuilt() -> None:
    for info, (_, length) in zip(INFOS, LABELS, strict=True):
        hmac.digest(SECRET, info + b"\x01", hashlib.sha256)[:length]


def key_exchange(group: NamedGroup) -> Callable[[], None]:
    peer = generate_key_share(group).public_bytes()

    def run() -> None:
        generate_key_share(group).exchange(peer)

    return run


def key_schedule() -> None:
    suite = TLS_AES_128_GCM_SHA256
    ks = KeySchedule(suite)
    ks.update_transcript(b"\x01" * 200)
    ks.update_transcript(b"\x02" * 90)
    ks.derive_handshake_secrets(SECRET)
    derive_traffic_keys(suite, ks.client_handshake_traffic_secret)
    derive_traffic_keys(suite, ks.server_handshake_traffic_secret)
    ks.update_transcript(b"\x08" * 1500)
    finished = ks.server_finished_verify_data()
    ks.update_transcript(b"\x14\x00\x00\x20" + finished)
    ks.derive_application_secrets()
    derive_traffic_keys(suite, ks.client_application_traffic_secret)
    derive_traffic_keys(suite, ks.server_application_traffic_secret)
    ks.verify_client_finished(ks.client_finished_verify_data())
    ks.update_transcript(b"\x14\x00\x00\x20" + finished)
    ks.derive_resumption_master_secret()


def record_cases(suite: CipherSuite) -> list[tuple[str, Callable[[], object]]]:
    """Seal and open one full (2^14-byte) application-data record, native and raw AEAD."""
    payload = bytes(2**14)
    sender = RecordProtection.from_secret(suite, bytes(suite.hash_length))
    receiver = RecordProtection.from_secret(suite, bytes(suite.hash_length))
    record = parse_record(sender.encrypt(23, payload))
    aead = suite.new_aead(bytes(suite.key_length))
    nonce, header, inner = bytes(12), record.header(), payload + b"\x17"
    sealed = aead.encrypt(nonce, inner, header)

    def open_record() -> None:
        receiver._sequence = 0  # reopen the same record: same nonce each time
        receiver.decrypt(record)

    short = suite.name.removeprefix("TLS_")
    return [
        (f"seal 16 KiB record {short}", lambda: sender.encrypt(23, payload)),
        (f"open 16 KiB record {short}", open_record),
        (f"  raw AEAD encrypt 16 KiB {short}", lambda: aead.encrypt(nonce, inner, header)),
        (f"  raw AEAD decrypt 16 KiB {short}", lambda: aead.decrypt(nonce, sealed, header)),
    ]


def measure(func: Callable[[], object], runs: int, scale: float) -> float:
    """Median over ``runs`` of the per-call time in microseconds (autoranged batches)."""
    timer = timeit.Timer(func)
    number, _ = timer.autorange()
    number = max(1, int(number * scale))
    return statistics.median(timer.repeat(runs, number)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="batch size multiplier")
    args = parser.parse_args()
    rows: list[tuple[str, float]] = []

    def row(name: str, func: Callable[[], object]) -> None:
        rows.append((name, measure(func, args.runs, args.scale)))
        print(f"{name:<58} {rows[-1][1]:10.2f} us", flush=True)

    for group in (NamedGroup.X25519, NamedGroup.SECP256R1, NamedGroup.SECP384R1):
        row(f"key exchange {group.name.lower()}: keygen + exchange", key_exchange(group))
    row("12 x HKDF-Expand-Label, native (hmac.new, cached prefix)", labels_native)
    row("12 x HKDF-Expand-Label, cryptography HKDFExpand", labels_cryptography)
    row("  12 x HKDFExpand, HkdfLabel prebuilt", labels_cryptography_prebuilt)
    row("  12 x hmac.new, HkdfLabel prebuilt", labels_hmac_prebuilt)
    row("  12 x hmac.digest, HkdfLabel prebuilt", labels_hmac_digest_prebuilt)
    row("full key schedule + traffic keys + 2 Finished", key_schedule)

    for suite in (TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256):
        for name, func in record_cases(suite):
            row(name, func)


if __name__ == "__main__":
    main()
