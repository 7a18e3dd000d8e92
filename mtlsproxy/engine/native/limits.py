"""How much a client may make the engine do for nothing: the named limits, and their counter.

Theory of operation
-------------------
RFC 8446 lets a peer send records that carry nothing (empty application data, section 5.1; a
``user_canceled`` alert we ignore; the one CCS and rejected 0-RTT records before its Finished,
sections 4.2.10 and appendix D.4) and KeyUpdates at will (section 4.6.3). Each costs us a
decryption and an event-loop turn and gives the connection nothing, so, as OpenSSL, BoringSSL
and Go do, we count them and end the connection with ``unexpected_message`` past a limit. A
record that moves the connection on (application data with bytes in it, handshake bytes before
the client's Finished) resets the counts.

Replies are coalesced where the engine owes them: a requested KeyUpdate is answered once, before
our next application data record (the engine keeps a flag, not bytes), so ``data_to_send`` does
not grow with what a client sends while it does not read.
"""

from __future__ import annotations

from typing import Final

from mtlsproxy.engine.native.alerts import TLSAlert
from mtlsproxy.vocabulary.failures import Alert

# Consecutive records that carry nothing. OpenSSL's MAX_EMPTY_RECORDS is 32 (ssl/record,
# SSL_R_RECORD_TOO_SMALL with unexpected_message); Go's maxUselessRecords is 16 (crypto/tls
# common.go, unexpected_message). We take OpenSSL's value: the differential tests compare us
# with OpenSSL.
MAX_USELESS_RECORDS: Final = 32

# KeyUpdates received with no application data between them: BoringSSL's kMaxKeyUpdates is 32
# (ssl/tls13_both.cc, unexpected_message); OpenSSL's MAX_KEY_UPDATE_MESSAGES is 32 too.
MAX_KEY_UPDATES_WITHOUT_DATA: Final = 32


class UselessRecords:
    """The counts of records that gave the connection nothing, since the last that did."""

    __slots__ = ("_key_updates", "_useless")

    def __init__(self) -> None:
        self._useless = 0
        self._key_updates = 0

    def progress(self) -> None:
        """A record moved the connection on: application data with bytes in it, or handshake
        bytes before the client's Finished."""
        self._useless = 0
        self._key_updates = 0

    def nothing(self, what: str) -> None:
        """A record that carried nothing (``what`` names it for the detail)."""
        self._useless += 1
        if self._useless > MAX_USELESS_RECORDS:
            raise TLSAlert(
                Alert.UNEXPECTED_MESSAGE,
                f"more than {MAX_USELESS_RECORDS} records in a row carry nothing (last: {what})",
            )

    def key_update(self) -> None:
        self._key_updates += 1
        if self._key_updates > MAX_KEY_UPDATES_WITHOUT_DATA:
            raise TLSAlert(
                Alert.UNEXPECTED_MESSAGE,
                f"more than {MAX_KEY_UPDATES_WITHOUT_DATA} KeyUpdates without application data",
            )
