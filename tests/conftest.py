"""Fixtures shared by the whole suite."""

from __future__ import annotations

import pytest

from mtlsproxy.pki import PkiFiles, init


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiFiles:
    """The development PKI (``mtlsproxy.pki.init``), minted once per test session.

    Read-only: a test that needs odd certificates mints its own with the ``mtlsproxy.pki``
    building blocks instead of touching these files.
    """
    return init(tmp_path_factory.mktemp("pki"))
