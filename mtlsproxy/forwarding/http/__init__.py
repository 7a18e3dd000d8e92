"""HTTP/1.1 identity forwarding: the client's identity in every request, never spoofable.

Three sans-I/O pieces, one per concern. ``request`` rewrites the client-to-upstream stream: it
parses every request strictly, refuses any whose framing could be read two ways (smuggling),
drops the identity headers the client sent and appends ours. ``headers`` computes ours, once
per connection, from ``ForwardedTLS``. ``response`` reads the upstream-to-client stream, which
passes unchanged, only to learn whether an Upgrade/CONNECT request was accepted: until then
the rewriter holds what the client sent after it, because only an accepted upgrade makes those
bytes another protocol rather than more requests to rewrite.

``forwarding.plan.Forwarding`` wires the three together for one connection.
"""
