"""Telling the upstream who the client is: sans-I/O forwarders (bytes in, bytes out).

``tls_info.ForwardedTLS`` is the one record both forwarders read; ``proxy_protocol`` encodes it
as a PROXY protocol v2 header, ``http`` injects it into every HTTP/1.1 request after removing
whatever the client claimed under the same names, ``http2`` into every HTTP/2 stream. ``plan``
decides, once per connection, which of them the route asked for and hands the proxy the
result.
"""

from mtlsproxy.forwarding.tls_info import ForwardedTLS

__all__ = ["ForwardedTLS"]
