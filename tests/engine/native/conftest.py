"""RFC 8448 section 3 ("Simple 1-RTT Handshake") values.

``rfc8448_simple_1rtt.json`` holds the values of RFC 8448 section 3, as JSON (every secret and
Finished value recomputes from the messages), kept beside the tests.
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
