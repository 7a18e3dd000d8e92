"""The words every layer shares: handshake steps, failure reasons, alerts, refusals, and the
client's identity (and ``frozen.quick_init``, how their frozen records are built cheaply). The
bottom layer: it imports nothing else of mtlsproxy."""
