"""Fixtures of the forwarding tests."""

from __future__ import annotations

import pytest

from tests.forwarding.support import Certs, make_certs


@pytest.fixture(scope="session")
def certs() -> Certs:
    return make_certs()
