"""The client's records before its Finished: what to drop, what to decrypt, what to act on.

Theory of operation
-------------------
Between its ClientHello and its Finished a client may send, besides its handshake messages
(RFC 8446 section 5, appendix D.4, section 4.2.10):

* unencrypted change_cipher_spec records of value 0x01 (middlebox compatibility), dropped:
  appendix D.4 speaks of one, OpenSSL drops any number, and so do we (the engine counts them
  among the records that carry nothing, ``limits.MAX_USELESS_RECORDS``, as OpenSSL does);
* a plaintext alert, until its first protected record decrypts (a client that could not
  process our ServerHello has no keys);
* 0-RTT data we reject: before a HelloRetryRequest's answer, plaintext-framed application
  data; after our ServerHello, records that fail to decrypt under the handshake key until
  the first one that does. Both are skipped up to ``MAX_SKIPPED_EARLY_DATA`` bytes, and only
  when the ClientHello offered early_data.

:class:`HandshakeRecords` keeps these record-level facts, which do not depend on the
handshake state, and hands the engine only what it must act on: handshake bytes or an alert.
"""

from __future__ import annotations

from typing import Final

from mtlsproxy.engine.native.alerts import TLSAlert
from mtlsproxy.engine.native.record_layer import Record, RecordProtection
from mtlsproxy.engine.records import (
    ALERT,
    APPLICATION_DATA,
    CHANGE_CIPHER_SPEC,
    HANDSHAKE,
    ContentType,
)
from mtlsproxy.vocabulary.failures import Alert

# Section 4.2.10: a server that rejects 0-RTT skips the client's early data "up to the
# configured max_early_data_size"; we never accept any, so this only bounds the skipping.
MAX_SKIPPED_EARLY_DATA: Final = 64 * 1024


class HandshakeRecords:
    """One connection's records until the client's Finished (see the module docstring)."""

    __slots__ = ("_decrypted_any", "_early_data_budget")

    def __init__(self, early_data: bool) -> None:
        self._decrypted_any = False
        self._early_data_budget = MAX_SKIPPED_EARLY_DATA if early_data else 0

    def second_hello(self) -> None:
        """A second ClientHello may not offer early data (section 4.1.2): none is skipped."""
        self._early_data_budget = 0

    def open(
        self, record: Record, read: RecordProtection | None
    ) -> tuple[ContentType, bytes] | None:
        """``(HANDSHAKE or ALERT, content)`` to act on, or None for a record dropped.

        ``read``: the client's handshake traffic protection once our flight is out; None while
        a HelloRetryRequest waits for its answer (everything is plaintext then)."""
        content_type = record.content_type
        if content_type == CHANGE_CIPHER_SPEC:
            # Section 5: an unencrypted CCS of value 0x01 is dropped before the client's
            # Finished; anything else is unexpected_message.
            if record.fragment != b"\x01":
                raise TLSAlert(Alert.UNEXPECTED_MESSAGE, "unexpected change_cipher_spec record")
            return None
        if content_type == ALERT and not self._decrypted_any:
            # A client that could not process our ServerHello alerts in plaintext.
            return ALERT, record.fragment
        if read is None:
            if content_type == HANDSHAKE:
                if not record.fragment:
                    # Section 5.1: "Implementations MUST NOT send zero-length fragments of
                    # Handshake types"; Go answers unexpected_message, as we do.
                    raise TLSAlert(Alert.UNEXPECTED_MESSAGE, "zero-length handshake record")
                return HANDSHAKE, record.fragment
            if content_type == APPLICATION_DATA:
                self._skip_early_data(record, keyed=False)
                return None
        elif content_type == APPLICATION_DATA:
            try:
                inner = read.decrypt(record)
            except TLSAlert as alert:
                if alert.alert is Alert.BAD_RECORD_MAC and not self._decrypted_any:
                    self._skip_early_data(record, keyed=True)  # rejected 0-RTT data
                    return None
                raise
            self._decrypted_any = True
            if inner.content_type == ALERT:
                return ALERT, inner.content
            if inner.content_type != HANDSHAKE:
                raise TLSAlert(Alert.UNEXPECTED_MESSAGE, "application data before the Finished")
            return HANDSHAKE, inner.content
        raise TLSAlert(
            Alert.UNEXPECTED_MESSAGE, f"unexpected record of content type {content_type}"
        )

    def _skip_early_data(self, record: Record, *, keyed: bool) -> None:
        if len(record.fragment) > self._early_data_budget:
            raise TLSAlert(
                Alert.BAD_RECORD_MAC if keyed else Alert.UNEXPECTED_MESSAGE,
                "a protected record that is not the client's handshake flight",
            )
        self._early_data_budget -= len(record.fragment)
