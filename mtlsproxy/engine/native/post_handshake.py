"""After the client's Finished: the handshake messages it may still send, i.e. KeyUpdate.

Theory of operation
-------------------
RFC 8446 section 4.6: a server that does not ask for post-handshake authentication accepts
only KeyUpdate (4.6.3) from the client after its Finished; NewSessionTicket is the server's and
anything else is ``unexpected_message``, refused from the message's first byte so that nothing
is buffered for it. Each KeyUpdate renews our read key and must end its record (section 5.1:
"Handshake messages MUST NOT span key changes"). A request for ours is owed, not written at
once: one KeyUpdate, written before our next application data record, answers every request
made while we were silent (section 4.6.3; OpenSSL answers at its next write too). The engine
keeps the owed flag, so nothing grows while the client sends requests and does not read.
"""

from __future__ import annotations

from mtlsproxy.engine.events import Tracer, note
from mtlsproxy.engine.native import messages as msgs
from mtlsproxy.engine.native.alerts import TLSAlert
from mtlsproxy.engine.native.limits import UselessRecords
from mtlsproxy.engine.native.record_layer import RecordProtection
from mtlsproxy.engine.records import ContentType, HandshakeType
from mtlsproxy.vocabulary.failures import Alert


def receive(
    content: bytes,
    messages: msgs.HandshakeAssembler,
    read: RecordProtection,
    useless: UselessRecords,
    trace: Tracer | None,
) -> tuple[RecordProtection, bool]:
    """One post-handshake handshake record's ``content``: ``(read protection to use next,
    whether the client requested our KeyUpdate)``."""
    messages.feed(content)
    if messages.next_type not in (None, HandshakeType.KEY_UPDATE):
        raise TLSAlert(
            Alert.UNEXPECTED_MESSAGE, f"post-handshake message of type {messages.next_type}"
        )
    requested = False
    while (message := messages.next_message()) is not None:
        if message.msg_type != HandshakeType.KEY_UPDATE:
            raise TLSAlert(
                Alert.UNEXPECTED_MESSAGE, f"post-handshake message of type {message.msg_type}"
            )
        update_requested = msgs.decode_key_update(message.body)
        note(trace, "<-", "KeyUpdate", update_requested=update_requested)
        if messages.pending:
            raise TLSAlert(Alert.UNEXPECTED_MESSAGE, "bytes follow a KeyUpdate in its record")
        useless.key_update()
        read = read.next_generation()
        requested |= update_requested
    return read, requested


def key_update(write: RecordProtection, trace: Tracer | None) -> tuple[bytes, RecordProtection]:
    """Our KeyUpdate (never requesting the client's) under ``write``, and the protection that
    follows it (section 7.2)."""
    note(trace, "->", "KeyUpdate", update_requested=False)
    record = write.encrypt(ContentType.HANDSHAKE, msgs.key_update(False))
    return record, write.next_generation()
