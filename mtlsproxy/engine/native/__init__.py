"""The native TLS 1.3 server engine: handshake, key schedule, records, on ``cryptography``.

Pure Python on the ``cryptography`` primitives, sans-I/O (bytes in, bytes out; no sockets, no
clock of its own). This package exports the foundation; the engine is
:class:`.engine.NativeEngine`, built by :mod:`mtlsproxy.engine.selecting`. Modules:

- :mod:`.alerts`: :class:`TLSAlert`, the one exception these modules raise for peer-caused
  failures; it carries the alert to send (RFC 8446 section 6) and converts to the engine's
  :class:`~mtlsproxy.vocabulary.failures.HandshakeError`.
- :mod:`.suites`: the three TLS 1.3 cipher suites (RFC 8446 section 9.1, appendix B.4) and the
  named groups x25519, secp256r1, secp384r1 (sections 4.2.7, 4.2.8.2, 7.4).
- :mod:`.key_schedule`: HKDF-Extract, HKDF-Expand-Label, Derive-Secret, the transcript hash and
  the key schedule (sections 4.4.1, 4.4.4, 7.1-7.3).
- :mod:`.record_layer`: record framing and AEAD record protection (sections 5.1-5.5).
- :mod:`.limits`: the named limits on records that carry nothing and on KeyUpdates.
- :mod:`.messages`: handshake messages, our encoders and bounded decoders of the client's
  (section 4).
- :mod:`.signatures`: signature schemes, the choice of our credential, CertificateVerify
  content (section 4.4.3).
- :mod:`.tickets`: sealed, stateless session tickets; keyrings (a key file, or random) seen by
  each route through its own derived key (section 4.6.1).
- :mod:`.states`: the handshake states, each carrying its data and its seed step.
- :mod:`.handshake_records`: the client's records before its Finished (CCS, plaintext
  alerts, rejected early data).
- :mod:`.server_flight`: negotiation, HelloRetryRequest, our flight (sections 4.1-4.4).
- :mod:`.client_flight`: the client's Certificate, CertificateVerify and Finished.
- :mod:`.resumption`: PSK acceptance and binder, ticket issuing (sections 2.2, 4.2.11, 4.6.1).
- :mod:`.post_handshake`: the client's KeyUpdates and ours (section 4.6.3).
- :mod:`.engine`: :class:`~.engine.NativeEngine`, the connection: records in and out, the
  state gate, application data, KeyUpdate, failures.
"""

from __future__ import annotations

from mtlsproxy.engine.native.alerts import TLSAlert
from mtlsproxy.engine.native.key_schedule import (
    KeySchedule,
    KeyScheduleError,
    Phase,
    TrafficKeys,
    Transcript,
    derive_secret,
    derive_traffic_keys,
    finished_key,
    finished_verify_data,
    hkdf_expand_label,
    hkdf_extract,
    next_traffic_secret,
    verify_finished,
)
from mtlsproxy.engine.native.record_layer import (
    MAX_CIPHERTEXT_LENGTH,
    MAX_INNER_PLAINTEXT_LENGTH,
    MAX_PLAINTEXT_LENGTH,
    NO_PADDING,
    SEQUENCE_NUMBER_LIMIT,
    InnerPlaintext,
    PaddingPolicy,
    Record,
    RecordProtection,
    RecordReader,
    encode_record,
    pad_to_multiple,
    parse_record,
)
from mtlsproxy.engine.native.suites import (
    CIPHER_SUITES,
    GROUPS,
    TLS_AES_128_GCM_SHA256,
    TLS_AES_256_GCM_SHA384,
    TLS_CHACHA20_POLY1305_SHA256,
    CipherSuite,
    CipherSuiteId,
    ECDHKeyShare,
    KeyShare,
    NamedGroup,
    X25519KeyShare,
    generate_key_share,
    get_cipher_suite,
)

__all__ = [
    "CIPHER_SUITES",
    "GROUPS",
    "MAX_CIPHERTEXT_LENGTH",
    "MAX_INNER_PLAINTEXT_LENGTH",
    "MAX_PLAINTEXT_LENGTH",
    "NO_PADDING",
    "SEQUENCE_NUMBER_LIMIT",
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "CipherSuite",
    "CipherSuiteId",
    "ECDHKeyShare",
    "InnerPlaintext",
    "KeySchedule",
    "KeyScheduleError",
    "KeyShare",
    "NamedGroup",
    "PaddingPolicy",
    "Phase",
    "Record",
    "RecordProtection",
    "RecordReader",
    "TLSAlert",
    "TrafficKeys",
    "Transcript",
    "X25519KeyShare",
    "derive_secret",
    "derive_traffic_keys",
    "encode_record",
    "finished_key",
    "finished_verify_data",
    "generate_key_share",
    "get_cipher_suite",
    "hkdf_expand_label",
    "hkdf_extract",
    "next_traffic_secret",
    "pad_to_multiple",
    "parse_record",
    "verify_finished",
]
