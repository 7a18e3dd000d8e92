"""HTTP/2 in HTTP mode (``forward_identity: http`` on a connection that negotiated ``h2``).

``bridge.Http2Bridge`` pairs two ``h2`` connections, a server one for the client and a client
one for the upstream (h2c with prior knowledge, RFC 9113 section 3.3), and maps each client
stream to an upstream stream. ``requests`` rewrites a request's header block (identity headers
in, the client's copies out) and builds the proxy's own answers; ``frames`` bounds what one
frame or header block may make us buffer; ``faults`` names why a connection was ended. Sans-I/O
like the rest of ``forwarding``: bytes in, bytes out, typed records; the proxy writes.
"""
