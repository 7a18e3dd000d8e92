"""What one native handshake asks of the record layer, N times, for callgrind (issue 10).

Per iteration (TLS_AES_128_GCM_SHA256): four ``RecordProtection.from_secret`` (RFC 8446
section 7.3), a 2500-byte server flight through ``encrypt_fragmented`` (section 5.2), a
``RecordReader`` fed a ClientHello record and the client's protected flight, three
``next_record`` (section 5.1), one ``decrypt`` (sections 5.2, 5.3) and a 200-byte ticket
``encrypt``. Per handshake: (total at N=300 - total at N=100) / 200, see bench/README.md.

    python bench/record_layer_loop.py N
"""

from __future__ import annotations

import sys

from mtlsproxy.engine.native.record_layer import RecordProtection, RecordReader
from mtlsproxy.engine.native.suites import TLS_AES_128_GCM_SHA256 as SUITE
from mtlsproxy.engine.records import ContentType

HANDSHAKE = ContentType.HANDSHAKE
SECRET = b"s" * SUITE.hash_length
CLIENT_HELLO_RECORD = b"\x16\x03\x01\x00\x04abcd"


def main() -> None:
    n = int(sys.argv[1])
    # The client's Certificate .. Finished, one record under its handshake traffic key.
    client_flight = RecordProtection.from_secret(SUITE, SECRET).encrypt(HANDSHAKE, b"c" * 1200)
    for _ in range(n):
        handshake_write = RecordProtection.from_secret(SUITE, SECRET)
        handshake_read = RecordProtection.from_secret(SUITE, SECRET)
        application_write = RecordProtection.from_secret(SUITE, SECRET)
        RecordProtection.from_secret(SUITE, SECRET)  # the client's application traffic key
        handshake_write.encrypt_fragmented(HANDSHAKE, b"f" * 2500)
        reader = RecordReader()
        reader.feed(CLIENT_HELLO_RECORD + client_flight)
        reader.next_record()
        record = reader.next_record()
        assert record is not None
        handshake_read.decrypt(record)
        reader.next_record()
        application_write.encrypt(HANDSHAKE, b"t" * 200)


if __name__ == "__main__":
    main()
