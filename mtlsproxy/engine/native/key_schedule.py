"""The TLS 1.3 key schedule (RFC 8446 sections 4.4.1, 4.4.4 and 7.1-7.3).

The primitives follow section 7.1::

    HKDF-Extract(salt, IKM)                        (RFC 5869: HMAC-Hash(salt, IKM))
    HKDF-Expand-Label(Secret, Label, Context, Length) =
        HKDF-Expand(Secret, HkdfLabel, Length)
        struct {
            uint16 length = Length;
            opaque label<7..255> = "tls13 " + Label;
            opaque context<0..255> = Context;
        } HkdfLabel;
    Derive-Secret(Secret, Label, Messages) =
        HKDF-Expand-Label(Secret, Label, Transcript-Hash(Messages), Hash.length)

They are implemented directly on :mod:`hmac` (OpenSSL's HMAC): every TLS 1.3 output is at most
one hash output long (keys, IVs, secrets), so HKDF-Expand is a single HMAC call, and the
constant HkdfLabel prefix is cached per label. ``bench/native_crypto.py`` compares this with
``cryptography``'s ``HKDFExpand`` (which needs the encoded HkdfLabel built first anyway).

:class:`KeySchedule` drives one connection's secrets through the section 7.1 diagram (early ->
handshake -> master) from a running :class:`Transcript` (section 4.4.1). Secrets are plain
``bytes`` attributes for the record layer to use; no ``repr`` or exception message of this
module ever contains one.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from mtlsproxy.engine.native.alerts import TLSAlert
from mtlsproxy.engine.native.suites import CipherSuite, HashObject
from mtlsproxy.vocabulary.failures import Alert

_HASH_LENGTHS: Final = {"sha256": 32, "sha384": 48}

_LABEL_PREFIX: Final = b"tls13 "


# hmac.new's signature, OpenSSL's object: the hot paths below call it inline (one call fewer).
_openssl_hmac_new: Callable[[bytes, bytes, str], Any]
try:  # OpenSSL's HMAC object, as hmac.new uses it, without hmac.HMAC's Python wrapper
    from _hashlib import hmac_new as _openssl_hmac_new
except ImportError:  # pragma: no cover - a Python built without OpenSSL's hashlib
    _openssl_hmac_new = hmac.new
_hmac_new: Final = _openssl_hmac_new  # Final: compiled code reads it without a dict lookup


def _hmac(key: bytes, message: bytes, hash_name: str) -> bytes:
    # OpenSSL's HMAC with a digest *name*: the fastest of the constant-time options measured on
    # Python 3.11 (bench/native_crypto.py: hmac.digest and cryptography's HKDFExpand were
    # slower per call in every run). hmac.new(...) is a Python class around _hashlib.hmac_new
    # (the same OpenSSL HMAC_CTX): calling that directly saves ~0.8 us of ~2 per call, and a
    # handshake makes two dozen. A pure-Python HMAC over bytes.translate is faster still but
    # indexes a table with key bytes, so it is not used.
    return _hmac_new(key, message, hash_name).digest()


def hkdf_extract(hash_name: str, salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract (RFC 5869 section 2.2, used by RFC 8446 section 7.1): HMAC(salt, IKM).

    An empty ``salt`` is the same HMAC key as RFC 5869's "string of HashLen zeros" (HMAC pads
    keys with zeros), which is also what section 7.1 writes as ``0``.
    """
    return _hmac(salt, ikm, hash_name)


@functools.lru_cache(maxsize=64)
def _label_prefix(label: bytes, length: int) -> bytes:
    """HkdfLabel.length and .label, encoded (RFC 8446 section 7.1); labels are few and fixed."""
    full_label_length = len(_LABEL_PREFIX) + len(label)
    if not 7 <= full_label_length <= 255 or not 0 < length < 65536:
        raise ValueError("HKDF-Expand-Label label or length out of range")
    return length.to_bytes(2, "big") + bytes((full_label_length,)) + _LABEL_PREFIX + label


@functools.lru_cache(maxsize=64)
def _empty_context_info(label: bytes, length: int) -> bytes:
    """HkdfLabel with an empty context, then HKDF-Expand's first counter byte."""
    return _label_prefix(label, length) + b"\x00\x01"


@functools.lru_cache(maxsize=64)
def _secret_info_head(label: bytes, hash_length: int) -> bytes:
    """Derive-Secret's HkdfLabel up to its context: the length and label, then the length of
    a Transcript-Hash (Hash.length) as the context's length octet (section 7.1)."""
    return _label_prefix(label, hash_length) + bytes((hash_length,))


def hkdf_expand_label(
    hash_name: str, secret: bytes, label: bytes, context: bytes, length: int
) -> bytes:
    """HKDF-Expand-Label (RFC 8446 section 7.1) with ``"tls13 "`` prefixed to ``label``."""
    if len(context) > 255:
        raise ValueError("HKDF-Expand-Label context longer than 255 bytes")
    hash_length = _HASH_LENGTHS[hash_name]
    if length <= hash_length:
        # RFC 5869 section 2.3 with N = 1: T(1) = HMAC(PRK, info || 0x01).
        if context:
            info = _label_prefix(label, length) + bytes((len(context),)) + context + b"\x01"
        else:  # keys, IVs, finished keys: the whole input is a constant of label and length
            info = _empty_context_info(label, length)
        return _hmac_new(secret, info, hash_name).digest()[:length]
    info = _label_prefix(label, length) + bytes((len(context),)) + context
    if length > 255 * hash_length:
        raise ValueError("HKDF-Expand output too long")
    blocks: list[bytes] = []
    block = b""
    for counter in range(1, -(-length // hash_length) + 1):
        block = _hmac(secret, block + info + bytes((counter,)), hash_name)
        blocks.append(block)
    return b"".join(blocks)[:length]


@functools.cache
def _empty_hash(hash_name: str) -> bytes:
    """Transcript-Hash of no messages (the "derived" steps of section 7.1): a constant."""
    return hashlib.new(hash_name).digest()


@functools.cache
def _no_psk_early_secrets(hash_name: str) -> tuple[bytes, bytes]:
    """Early Secret and its "derived" secret without a PSK (section 7.1, PSK = zeros): both
    are constants of the hash, computed once instead of two HMACs per handshake."""
    zeros = bytes(_HASH_LENGTHS[hash_name])
    early = hkdf_extract(hash_name, zeros, zeros)
    return early, derive_secret(hash_name, early, b"derived", _empty_hash(hash_name))


def psk_early_secret(suite: CipherSuite, psk: bytes) -> bytes:
    """Early Secret = HKDF-Extract(0, PSK) (section 7.1), the root of a resumption's schedule
    and of its binder key (section 4.2.11.2)."""
    # HKDF-Extract inline (once per resumption): HMAC(salt = zeros, IKM = PSK).
    return _hmac_new(bytes(suite.hash_length), psk, suite.hash_name).digest()


def binder_key(suite: CipherSuite, early_secret: bytes) -> bytes:
    """``res binder`` key: Derive-Secret(Early Secret, "res binder", "") (section 7.1)."""
    name = suite.hash_name
    return derive_secret(name, early_secret, b"res binder", _empty_hash(name))


def derive_secret(hash_name: str, secret: bytes, label: bytes, transcript_hash: bytes) -> bytes:
    """Derive-Secret (RFC 8446 section 7.1), given Transcript-Hash(Messages) already computed.

    The output is Hash.length, so HKDF-Expand is one HMAC over HkdfLabel and the counter 0x01
    (RFC 5869 section 2.3, N = 1), as in ``hkdf_expand_label``, in one call."""
    hash_length = len(transcript_hash)
    if hash_length != _HASH_LENGTHS[hash_name]:
        raise ValueError("Derive-Secret context is not a Transcript-Hash of this hash")
    info = _secret_info_head(label, hash_length) + transcript_hash + b"\x01"
    return _hmac_new(secret, info, hash_name).digest()


class TrafficKeys(NamedTuple):
    """A write key and IV (RFC 8446 section 7.3). Its ``repr`` hides both."""

    key: bytes
    iv: bytes

    def __repr__(self) -> str:
        return f"TrafficKeys(key=<{len(self.key)} bytes>, iv=<{len(self.iv)} bytes>)"


# NamedTuple's own constructor is a Python function: tuple.__new__ builds the same object in C
# (four per handshake).
_new_traffic_keys: Final[Callable[[tuple[bytes, bytes]], TrafficKeys]] = functools.partial(
    tuple.__new__, TrafficKeys
)


def derive_traffic_keys(suite: CipherSuite, traffic_secret: bytes) -> TrafficKeys:
    """RFC 8446 section 7.3: ``[sender]_write_key`` and ``[sender]_write_iv`` of a secret."""
    # HKDF-Expand-Label inline (four protections per handshake): with an empty context and an
    # output no longer than the hash (every suite's key and IV), it is one HMAC over a
    # constant, truncated (see hkdf_expand_label).
    # Both HMACs have the traffic secret as their key: keyed once and copied (OpenSSL's HMAC
    # keying costs more than the copy), about a third of the function's time.
    name, key_length, iv_length = suite.hash_name, suite.key_length, suite.iv_length
    key_mac = _hmac_new(traffic_secret, b"", name)
    iv_mac = key_mac.copy()
    key_mac.update(_empty_context_info(b"key", key_length))
    iv_mac.update(_empty_context_info(b"iv", iv_length))
    return _new_traffic_keys((key_mac.digest()[:key_length], iv_mac.digest()[:iv_length]))


def next_traffic_secret(suite: CipherSuite, traffic_secret: bytes) -> bytes:
    """RFC 8446 section 7.2: application_traffic_secret_N+1 (after a KeyUpdate)."""
    return hkdf_expand_label(
        suite.hash_name, traffic_secret, b"traffic upd", b"", suite.hash_length
    )


def finished_key(suite: CipherSuite, base_key: bytes) -> bytes:
    """RFC 8446 section 4.4.4: HKDF-Expand-Label(BaseKey, "finished", "", Hash.length)."""
    return hkdf_expand_label(suite.hash_name, base_key, b"finished", b"", suite.hash_length)


def finished_verify_data(suite: CipherSuite, base_key: bytes, transcript_hash: bytes) -> bytes:
    """RFC 8446 section 4.4.4: verify_data = HMAC(finished_key, Transcript-Hash(...)).

    ``base_key`` is the sender's handshake traffic secret (or, for post-handshake
    authentication, its application traffic secret).
    """
    name = suite.hash_name
    key = _hmac_new(base_key, _empty_context_info(b"finished", suite.hash_length), name).digest()
    return _hmac_new(key, transcript_hash, name).digest()  # finished_key inline: calls fewer


def verify_finished(
    suite: CipherSuite, base_key: bytes, transcript_hash: bytes, verify_data: bytes
) -> None:
    """Check a received Finished.verify_data in constant time (RFC 8446 section 4.4.4).

    Raises ``TLSAlert(DECODE_ERROR)`` if the value is not Hash.length bytes (a malformed
    message) and ``TLSAlert(DECRYPT_ERROR)`` if it is wrong: "Recipients of Finished messages
    MUST verify that the contents are correct and if incorrect MUST terminate the connection
    with a "decrypt_error" alert."
    """
    if len(verify_data) != suite.hash_length:
        raise TLSAlert(
            Alert.DECODE_ERROR,
            f"Finished of {len(verify_data)} bytes, expected {suite.hash_length}",
        )
    expected = finished_verify_data(suite, base_key, transcript_hash)
    if not hmac.compare_digest(expected, verify_data):
        raise TLSAlert(Alert.DECRYPT_ERROR, "Finished verify_data does not match")


class Transcript:
    """The running transcript hash (RFC 8446 section 4.4.1).

    ``update`` adds one complete handshake message, header included; ``digest`` is
    Transcript-Hash of everything so far, taken from a ``copy()`` so the hash keeps running.
    """

    __slots__ = ("_hash", "_suite")

    def __init__(self, suite: CipherSuite, running: HashObject | None = None) -> None:
        """``running``: the hash to continue (``copy``), else a new one."""
        self._suite = suite
        # suite.hash_factory(): suite.new_hash(), one call fewer
        self._hash: HashObject = running if running is not None else suite.hash_factory()

    def update(self, message: bytes) -> None:
        self._hash.update(message)

    def digest(self) -> bytes:
        return self._hash.copy().digest()

    def copy(self) -> Transcript:
        return Transcript(self._suite, self._hash.copy())

    def replace_with_message_hash(self) -> None:
        """After a HelloRetryRequest (section 4.4.1): the transcript so far (ClientHello1) is
        replaced by the synthetic ``message_hash`` message holding its hash::

            Transcript-Hash(ClientHello1, HelloRetryRequest, ... Mn) =
                Hash(message_hash ||        /* Handshake type */
                     00 00 Hash.length  ||  /* Handshake message length (bytes) */
                     Hash(ClientHello1) ||  /* Hash of ClientHello1 */
                     HelloRetryRequest  || ... || Mn)
        """
        client_hello_hash = self._hash.digest()
        self._hash = self._suite.new_hash()
        self._hash.update(bytes((254, 0, 0, len(client_hello_hash))) + client_hello_hash)


def _both_sides(
    secret: bytes, client_label: bytes, server_label: bytes, transcript_hash: bytes, name: str
) -> tuple[bytes, bytes]:
    """Derive-Secret (section 7.1) of the client's and the server's label over one transcript
    hash: a pair of traffic secrets (one HMAC keyed with ``secret``, copied for the second
    side, as in ``derive_traffic_keys``)."""
    length = len(transcript_hash)
    tail = transcript_hash + b"\x01"
    client = _hmac_new(secret, b"", name)
    server = client.copy()
    client.update(_secret_info_head(client_label, length) + tail)
    server.update(_secret_info_head(server_label, length) + tail)
    return client.digest(), server.digest()


class KeyScheduleError(Exception):
    """The key schedule was driven out of order or asked for a secret not yet derived.

    A bug in the caller, never something a peer can cause: it maps to ``internal_error``.
    """


class Phase(enum.IntEnum):
    """How far down the RFC 8446 section 7.1 diagram a :class:`KeySchedule` has gone."""

    EARLY = 0  # Early Secret known
    HANDSHAKE = 1  # Handshake Secret and the handshake traffic secrets known
    APPLICATION = 2  # Master Secret, application traffic and exporter secrets known
    RESUMPTION = 3  # resumption_master_secret known


# The members as module names for the methods below: a member looked up on its enum class costs
# ~0.2 us on Python 3.11, and a handshake checks the phase a dozen times. Final: compiled code
# reads each from a C variable, not the module's dict.
_EARLY: Final = Phase.EARLY
_HANDSHAKE: Final = Phase.HANDSHAKE
_APPLICATION: Final = Phase.APPLICATION
_RESUMPTION: Final = Phase.RESUMPTION
_NEXT_PHASE: Final = {phase: Phase(phase + 1) for phase in Phase if phase < _RESUMPTION}


# The secrets a KeySchedule derives, in the order of the section 7.1 diagram: each is a slot,
# unset until derived (reading it earlier raises KeyScheduleError, see KeySchedule.__getattr__).
_SECRET_NAMES: Final = (
    "early_secret",
    "derived_early_secret",
    "handshake_secret",
    "client_handshake_traffic_secret",
    "server_handshake_traffic_secret",
    "derived_handshake_secret",
    "master_secret",
    "client_application_traffic_secret",
    "server_application_traffic_secret",
    "resumption_master_secret",
)


class KeySchedule:
    """One connection's TLS 1.3 key schedule (RFC 8446 section 7.1), without 0-RTT.

    Drive it in handshake order, feeding every handshake message (4-byte header included) to
    :meth:`update_transcript` as it is sent or received::

        ks = KeySchedule(suite)                       # Early Secret (PSK or zeros)
        ks.update_transcript(client_hello); ks.update_transcript(server_hello)
        ks.derive_handshake_secrets(ecdhe_shared_secret)       # [cs] hs traffic secrets
        ... EncryptedExtensions, CertificateRequest, Certificate, CertificateVerify
        verify_data = ks.server_finished_verify_data()
        ks.update_transcript(server_finished)
        ks.derive_application_secrets()               # [cs] ap traffic secret 0
        ... client Certificate, CertificateVerify
        ks.verify_client_finished(received_verify_data)
        ks.update_transcript(client_finished)
        ks.derive_resumption_master_secret()

    Each traffic secret feeds :func:`derive_traffic_keys` (section 7.3) or directly
    ``RecordProtection.from_secret``. :meth:`next_client_application_secret` and
    :meth:`next_server_application_secret` advance the application secrets on KeyUpdate
    (section 7.2). ``exporter_master_secret`` is derived when first read: a handshake never
    needs it (no exporter is offered), so it costs nothing unless asked for.

    The secrets are slots, read at C speed on the handshake's path; one not derived yet is an
    unset slot, which :meth:`__getattr__` turns into :class:`KeyScheduleError` (naming the
    secret, never showing a value).

    ``update_transcript(messages)`` adds one or more complete handshake messages (headers
    included) to the transcript. It is the running hash's own ``update``, bound when the
    schedule is made (seven messages a handshake, no Python frame each): the transcript's hash
    is never replaced afterwards (the only replacement, section 4.4.1's ``message_hash`` after
    a HelloRetryRequest, happens before the ServerHello and so before any schedule).
    """

    __slots__ = (
        *_SECRET_NAMES,
        "_application_hash",
        "_exporter_master_secret",
        "_hash_name",
        "_phase",
        "suite",
        "transcript",
        "update_transcript",
    )
    _exporter_master_secret: bytes  # unset until first read

    def __init__(
        self,
        suite: CipherSuite,
        psk: bytes | None = None,
        transcript: Transcript | None = None,
        *,
        early_secret: bytes | None = None,
    ) -> None:
        """``early_secret``: ``psk_early_secret(suite, psk)`` when the caller has it already
        (a resumption checked its binder with it), in place of ``psk``."""
        self.suite = suite
        self._hash_name = suite.hash_name
        self.transcript = transcript if transcript is not None else Transcript(suite)
        self.update_transcript: Callable[[bytes], None] = self.transcript._hash.update
        if early_secret is None and psk:
            early_secret = psk_early_secret(suite, psk)
        if early_secret is None:  # no PSK: the zeros of section 7.1
            self.early_secret, self.derived_early_secret = _no_psk_early_secrets(suite.hash_name)
        else:  # its "derived" secret too: the handshake secrets always come next
            self.early_secret = early_secret
            self.derived_early_secret = self._derive(
                early_secret, b"derived", _empty_hash(suite.hash_name)
            )
        self._phase = _EARLY

    def __getattr__(self, name: str) -> bytes:
        # Only called when normal lookup fails: an unset slot, i.e. a secret not derived yet.
        if name in _SECRET_NAMES:
            raise KeyScheduleError(f"{name} is not derived yet")
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"KeySchedule({self.suite.name}, phase={self._phase.name})"

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def exporter_master_secret(self) -> bytes:
        """``exp master`` over ClientHello...server Finished (section 7.1), derived on first
        read from the transcript hash kept at :meth:`derive_application_secrets`."""
        if self._phase < _APPLICATION:
            raise KeyScheduleError("exporter_master_secret is not derived yet")
        try:
            return self._exporter_master_secret
        except AttributeError:
            secret = self._derive(self.master_secret, b"exp master", self._application_hash)
            self._exporter_master_secret = secret
            return secret

    def transcript_hash(self) -> bytes:
        return self.transcript._hash.copy().digest()  # Transcript.digest, one call fewer

    def _advance(self, expected: Phase) -> None:
        if self._phase is not expected:
            raise KeyScheduleError(f"key schedule is at {self._phase.name}, not {expected.name}")
        self._phase = _NEXT_PHASE[expected]

    def _derive(self, secret: bytes, label: bytes, transcript_hash: bytes) -> bytes:
        """Derive-Secret (section 7.1) over a transcript hash of this schedule's own hash:
        ``derive_secret`` without its length check (seven per handshake)."""
        info = _secret_info_head(label, len(transcript_hash)) + transcript_hash + b"\x01"
        return _hmac_new(secret, info, self._hash_name).digest()

    def derive_handshake_secrets(self, shared_secret: bytes) -> None:
        """Handshake Secret and ``[cs] hs traffic`` over ClientHello...ServerHello (7.1)."""
        # Once per handshake each, these methods write out their steps (``_advance``,
        # ``hkdf_extract``, ``_derive``, ``transcript_hash``) inline: a Python frame per step
        # fewer on the path every handshake takes (the error paths still go through them).
        if self._phase is not _EARLY:
            self._advance(_EARLY)  # raises
        self._phase = _HANDSHAKE
        name = self._hash_name
        secret = self.handshake_secret = _hmac_new(
            self.derived_early_secret, shared_secret, name
        ).digest()  # HKDF-Extract
        self.client_handshake_traffic_secret, self.server_handshake_traffic_secret = _both_sides(
            secret, b"c hs traffic", b"s hs traffic", self.transcript._hash.copy().digest(), name
        )

    def derive_application_secrets(self) -> None:
        """Master Secret and ``[cs] ap traffic`` over ClientHello...server Finished (section
        7.1; ``exp master`` on first read). Call after adding the server Finished."""
        if self._phase is not _HANDSHAKE:
            self._advance(_HANDSHAKE)  # raises
        self._phase = _APPLICATION
        name = self._hash_name
        empty = _empty_hash(name)
        length = len(empty)
        derived = self.derived_handshake_secret = _hmac_new(
            self.handshake_secret, _secret_info_head(b"derived", length) + empty + b"\x01", name
        ).digest()
        master = self.master_secret = _hmac_new(derived, bytes(length), name).digest()
        transcript_hash = self._application_hash = self.transcript._hash.copy().digest()
        secrets = _both_sides(master, b"c ap traffic", b"s ap traffic", transcript_hash, name)
        self.client_application_traffic_secret, self.server_application_traffic_secret = secrets

    def derive_resumption_master_secret(self) -> None:
        """``res master`` over ClientHello...client Finished (section 7.1)."""
        if self._phase is not _APPLICATION:
            self._advance(_APPLICATION)  # raises
        self._phase = _RESUMPTION
        transcript_hash = self.transcript._hash.copy().digest()
        info = _secret_info_head(b"res master", len(transcript_hash)) + transcript_hash + b"\x01"
        secret = _hmac_new(self.master_secret, info, self._hash_name).digest()
        self.resumption_master_secret = secret

    def ticket_psk(self, nonce: bytes) -> bytes:
        """Section 4.6.1: the PSK of the ticket with ``ticket_nonce`` ``nonce``,
        HKDF-Expand-Label(resumption_master_secret, "resumption", nonce, Hash.length); the
        resumption_master_secret is derived first when it was not yet."""
        if self._phase is not _RESUMPTION:
            self.derive_resumption_master_secret()
        return hkdf_expand_label(
            self._hash_name, self.resumption_master_secret, b"resumption", nonce,
            self.suite.hash_length,
        )  # fmt: skip

    def _require(self, phase: Phase) -> None:
        if self._phase is not phase:
            raise KeyScheduleError(f"key schedule is at {self._phase.name}, not {phase.name}")

    def server_finished_verify_data(self) -> bytes:
        """The server Finished.verify_data over the transcript so far (section 4.4.4)."""
        if self._phase is not _HANDSHAKE:
            self._require(_HANDSHAKE)  # raises
        return finished_verify_data(
            self.suite, self.server_handshake_traffic_secret, self.transcript._hash.copy().digest()
        )

    def client_finished_verify_data(self) -> bytes:
        """The client Finished.verify_data over the transcript so far (section 4.4.4)."""
        self._require(_APPLICATION)
        return finished_verify_data(
            self.suite, self.client_handshake_traffic_secret, self.transcript_hash()
        )

    def verify_server_finished(self, verify_data: bytes) -> None:
        """Constant-time check of a received server Finished (client role; section 4.4.4)."""
        self._require(_HANDSHAKE)
        verify_finished(
            self.suite, self.server_handshake_traffic_secret, self.transcript_hash(), verify_data
        )

    def verify_client_finished(self, verify_data: bytes) -> None:
        """Constant-time check of a received client Finished (server role; section 4.4.4).

        Raises ``TLSAlert(DECRYPT_ERROR)`` on a mismatch, ``TLSAlert(DECODE_ERROR)`` on a
        wrong length.
        """
        if self._phase is not _APPLICATION:
            self._require(_APPLICATION)  # raises
        verify_finished(
            self.suite,
            self.client_handshake_traffic_secret,
            self.transcript._hash.copy().digest(),
            verify_data,
        )

    def next_client_application_secret(self) -> bytes:
        """Advance and return client_application_traffic_secret_N+1 (section 7.2)."""
        if self._phase < _APPLICATION:
            raise KeyScheduleError("application traffic secrets are not derived yet")
        secret = next_traffic_secret(self.suite, self.client_application_traffic_secret)
        self.client_application_traffic_secret = secret
        return secret

    def next_server_application_secret(self) -> bytes:
        """Advance and return server_application_traffic_secret_N+1 (section 7.2)."""
        if self._phase < _APPLICATION:
            raise KeyScheduleError("application traffic secrets are not derived yet")
        secret = next_traffic_secret(self.suite, self.server_application_traffic_secret)
        self.server_application_traffic_secret = secret
        return secret


_NSS_LABELS: Final = {
    "CLIENT_HANDSHAKE_TRAFFIC_SECRET": "client_handshake_traffic_secret",
    "SERVER_HANDSHAKE_TRAFFIC_SECRET": "server_handshake_traffic_secret",
    "CLIENT_TRAFFIC_SECRET_0": "client_application_traffic_secret",
    "SERVER_TRAFFIC_SECRET_0": "server_application_traffic_secret",
    "EXPORTER_SECRET": "exporter_master_secret",
}


def nss_key_log(schedule: KeySchedule) -> dict[str, bytes]:
    """NSS key-log labels -> the secrets ``schedule`` has derived so far, for tests that
    compare with a client's key log. Never log the result."""
    secrets: dict[str, bytes] = {}
    for label, attribute in _NSS_LABELS.items():
        try:
            secrets[label] = getattr(schedule, attribute)
        except KeyScheduleError:  # not derived yet
            continue
    return secrets
