"""Sans-I/O handshake engines: bytes in, bytes out, typed events; no asyncio, no sockets."""

from __future__ import annotations

import importlib


def engine_build() -> str:
    """``mypyc`` when the engine's modules run compiled (setup.py builds them where it can),
    ``python`` when they run as Python source."""
    module = importlib.import_module("mtlsproxy.engine.native.engine")
    return "python" if (module.__file__ or "").endswith(".py") else "mypyc"
