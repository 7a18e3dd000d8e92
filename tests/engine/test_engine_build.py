"""The modules setup.py compiles (the engine, the proxy's connection path) as it builds them:
compiled by mypyc, or Python source.

The same tests run in both builds (CI runs one suite compiled and one as Python). These check
that a compiled module is never older than its source (an edited source with a stale
extension beside it would test the old code), that a build that was expected to compile did,
and that the modules keep type-checking, which is what lets mypyc compile them.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from mtlsproxy.engine import engine_build

ROOT = Path(__file__).resolve().parents[2]


def setup_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mtlsproxy_setup", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines the build; builds only when run as a script
    return module


def module_name(source: str) -> str:
    return source.removesuffix(".py").replace("/", ".")


SETUP = setup_script()
COMPILED = SETUP.compiled_modules()


def test_setup_compiles_the_engine_but_not_its_openssl_half() -> None:
    names = {module_name(source) for source in COMPILED}
    assert "mtlsproxy.engine.native.engine" in names
    assert "mtlsproxy.engine.native.record_layer" in names
    assert "mtlsproxy.engine.clienthello" in names
    assert "mtlsproxy.engine.openssl" not in names  # drives ssl.SSLObject: nothing to gain


def test_setup_compiles_the_connection_path_but_not_what_runs_once() -> None:
    names = {module_name(source) for source in COMPILED}
    for per_connection in ("proxy.connection", "proxy.flow", "logs", "metric_updates"):
        assert f"mtlsproxy.{per_connection}" in names
    for once in ("proxy.server", "supervisor", "config.load", "cli"):
        assert f"mtlsproxy.{once}" not in names


def test_no_coroutine_is_compiled() -> None:
    """A compiled coroutine that is cancelled passes the cancellation on with the
    three-argument ``throw()``, deprecated since Python 3.12 (mypyc issue 1214): a warning
    at each cancelled upstream connect now, a failure once Python removes it."""
    coroutines = [
        f"{source}:{node.lineno} {node.name}"
        for source in COMPILED
        for node in ast.walk(ast.parse((ROOT / source).read_text()))
        if isinstance(node, ast.AsyncFunctionDef)
    ]
    assert not coroutines


# Module constants that stay plain names on purpose: knobs that tests and benchmarks set on
# the module (a compiled module reads a Final from its C variable, so setting the module's
# attribute would not reach it).
TUNABLE = {
    "mtlsproxy/engine/native/route_cache.py": {"MAX_ROUTES", "MAX_PEER_CERTIFICATES", "_CACHES"},
    "mtlsproxy/proxy/connection.py": {"FEED_BUDGET"},  # bench/data_path.py, valgrind_site
}


def test_compiled_module_constants_are_final() -> None:
    """A module name that is not ``Final`` is a dict lookup each time compiled code reads it
    (mypyc's ``CPyDict_GetItem`` on the module's globals); a ``Final`` one is a C variable,
    and an int literal is inlined. The engine read ~230 such names a handshake before they
    were made ``Final``. Constants here: UPPER_CASE names assigned at module level."""
    plain = []
    for source in COMPILED:
        for node in ast.parse((ROOT / source).read_text()).body:
            if isinstance(node, ast.Assign) and "TypeVar(" not in ast.unparse(node.value):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
                if any(isinstance(t, ast.Tuple) for t in node.targets):
                    names += [
                        e.id for t in node.targets if isinstance(t, ast.Tuple)
                        for e in t.elts if isinstance(e, ast.Name)
                    ]  # fmt: skip
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if "Final" in ast.unparse(node.annotation):
                    continue
                names = [node.target.id]
            else:
                continue
            plain += [
                f"{source}:{node.lineno} {name}"
                for name in names
                if name.lstrip("_").isupper() and name not in TUNABLE.get(source, ())
            ]
    assert not plain


def test_a_compiled_module_is_not_older_than_its_source() -> None:
    stale = []
    for source in COMPILED:
        module = importlib.import_module(module_name(source))
        built = Path(module.__file__ or "")
        if built.suffix != ".py" and built.stat().st_mtime < (ROOT / source).stat().st_mtime:
            stale.append(source)
    assert not stale, f"edited since compiled, rebuild with `pip install -e .`: {stale}"


def test_no_extension_is_left_from_an_earlier_build() -> None:
    """An extension module beside a source that the build no longer compiles would still be
    imported instead of it (pip leaves it there): delete it."""
    compiled = {str(Path(source).with_suffix("")) for source in COMPILED}
    leftovers = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "mtlsproxy").rglob("*.so")
        if str(path.relative_to(ROOT)).split(".")[0] not in compiled
    ]
    assert not leftovers, f"not built by setup.py any more, delete: {leftovers}"


def test_the_build_is_one_thing() -> None:
    """Every listed module compiled, or none: a half-built engine is a build error."""
    kinds = {
        Path(importlib.import_module(module_name(source)).__file__ or "").suffix == ".py"
        for source in COMPILED
    }
    assert len(kinds) == 1


@pytest.mark.skipif(
    os.environ.get("MTLSPROXY_EXPECT_COMPILED") != "1",
    reason="MTLSPROXY_EXPECT_COMPILED=1 (CI's first run) asks for the compiled build",
)
def test_the_engine_was_compiled_where_asked() -> None:
    assert engine_build() == "mypyc"


def test_the_compiled_modules_type_check() -> None:
    """mypy's check of the build (setup.py), with the runtime dependencies' own types."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", *SETUP.MYPY_OPTIONS, "--no-incremental", *COMPILED],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
