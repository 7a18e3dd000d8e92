"""Builds mtlsproxy, compiling its per-connection modules with mypyc where it can.

The handshake engine (``mtlsproxy/engine``: the ClientHello reader, the native TLS 1.3 server,
its records) and the proxy's connection path (the client connection's callbacks, their flow
control, the listener's bookkeeping, the access line and the metric updates) are plain, fully
typed Python. mypyc compiles the same source to C extension modules, which run a connection's
Python with fewer instructions (bench/README.md, "The compiled engine"). Where that cannot
happen (no C compiler or Python headers, or ``MTLSPROXY_PURE_PYTHON=1`` in the environment)
the build goes on and the modules run as Python: the same code, the same behaviour, slower.
``mtlsproxy version`` says which one runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the tests read this file for its list, without setuptools installed
    from setuptools import Extension

ENGINE = Path("mtlsproxy", "engine")
# The OpenSSL engine (it drives ssl.SSLObject: nothing to gain), the interface's protocols, the
# package modules, and states.py, whose dataclass hierarchy (ClassVar steps) mypyc's classes
# cannot express; the rest of the engine's modules are compiled.
NOT_COMPILED = {
    *(ENGINE / name for name in ("__init__.py", "interface.py", "openssl.py")),
    ENGINE / "openssl_failures.py",
    *(ENGINE / "native" / name for name in ("__init__.py", "states.py")),
}


# What every connection runs outside the engine; the rest of the proxy (configuration, the
# supervisor, HTTP mode's parsers, the admin server) runs once or only where it is configured.
# No coroutines: a compiled one that is cancelled passes the cancellation on with the
# three-argument throw() that Python 3.12 deprecated (mypyc issue 1214), so the upstream
# protocol's module, which has the pool's connect, stays Python (its callbacks run once or
# twice a connection; an upstream read goes straight to the compiled connection).
CONNECTION_PATH = [
    Path("mtlsproxy", "proxy", "connection.py"),
    Path("mtlsproxy", "proxy", "flow.py"),
    Path("mtlsproxy", "proxy", "listener.py"),
    Path("mtlsproxy", "logs.py"),
    Path("mtlsproxy", "metric_updates.py"),
]
# mypy's options for the build and for the tests' check of it. --warn-unreachable: a test of an
# attribute that mypy takes as already decided (narrowed by an earlier test, across a call that
# changed it) is dead code to mypy and a failing type check at run time in a compiled module.
MYPY_OPTIONS = ["--follow-imports=silent", "--warn-unreachable"]


def compiled_modules() -> list[str]:
    """The source files that mypyc compiles."""
    sources = sorted([*ENGINE.glob("*.py"), *(ENGINE / "native").glob("*.py")])
    return [str(path) for path in [*sources, *CONNECTION_PATH] if path not in NOT_COMPILED]


def compiled_extensions() -> list[Extension]:
    """mypyc's extension modules, or none (the Python modules then run)."""
    if os.environ.get("MTLSPROXY_PURE_PYTHON", "") not in ("", "0"):
        return []
    try:
        from mypyc.build import mypycify

        # Only the listed modules are checked for errors; the ones they import are read for
        # their types (follow-imports=silent). The build environment has no runtime
        # dependencies: their objects are typed Any here (the tests' mypy check has them).
        options = [*MYPY_OPTIONS, "--ignore-missing-imports"]
        extensions = mypycify([*options, *compiled_modules()], group_name="mtlsproxy_compiled")
    except (Exception, SystemExit) as error:  # mypyc missing, or the types do not check
        print(f"mtlsproxy: nothing is compiled ({error})", file=sys.stderr)
        return []
    for extension in extensions:
        extension.optional = True  # a failed C build leaves the Python modules in use
    return extensions


if __name__ == "__main__":  # as pip's build backend runs it; tests import it for the list
    from setuptools import setup

    setup(ext_modules=compiled_extensions())
