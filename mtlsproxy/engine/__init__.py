"""Sans-I/O handshake engines: bytes in, bytes out, typed events; no asyncio, no sockets."""
