"""RFC 8448 section 3 ("Simple 1-RTT Handshake") values.

``rfc8448_simple_1rtt.json`` is a verbatim copy of shared/specs/rfc8448-simple-1rtt.json, kept
beside the tests so the suite is self-contained.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SPEC = Path(__file__).with_name("rfc8448_simple_1rtt.json")


def _section(name: str) -> dict[str, bytes]:
    raw = json.loads(SPEC.read_text())
    return {key: bytes.fromhex(value) for key, value in raw[name].items()}


@pytest.fixture(scope="session")
def rfc8448_secrets() -> dict[str, bytes]:
    return _section("secrets")


@pytest.fixture(scope="session")
def rfc8448_messages() -> dict[str, bytes]:
    return _section("handshake_messages")
