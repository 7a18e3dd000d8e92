"""Tests of the native TLS 1.3 engine building blocks (mtlsproxy.engine.native)."""
