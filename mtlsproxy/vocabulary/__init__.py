"""The words every layer shares: handshake steps, failure reasons, alerts, refusals, and the
client's identity. The bottom layer: it imports nothing else of mtlsproxy."""
