"""mtlsproxy: a mutual-TLS sidecar reverse proxy with its own handshake engine."""

__version__ = "0.1.0"
